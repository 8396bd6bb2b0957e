//! IQ2_XS: 74 bytes per 256 weights (2.3125 bits per weight). Each group of 8 weights is a
//! `u16`: a point of a 512-point lattice (9 bits) and 7 sign bits (the 8th makes the parity
//! even); each 16-weight sub-block a 4-bit scale; the super-block an f16 `d`. Weight =
//! `d * (0.5 + scale) * 0.25 * grid * sign`. ggml's `quantize_row_iq2_xs_impl`, which needs
//! importance weights.

use super::iq2_xxs::NAN_HALF;
use super::lattice::{
    c_max, pack, search_16, sum_squares, Abort, Kind, Lattice, IQ2XS_GRID, KMASK_IQ2XS,
    KSIGNS_IQ2XS,
};
use crate::fp::Half;
use crate::kquants::search::{nearest_int, GROUP_MAX_EPS};
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::Lanes;
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 2.31-bit lattice i-quant.
pub struct Iq2Xs;

/// One IQ2_XS super-block (ggml's `block_iq2_xs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq2Xs {
    /// Super-block scale.
    pub d: Half,
    /// Per 8 weights a little-endian `u16`: grid index (bits 0..9), signs (bits 9..16).
    pub qs: [u8; QK_K / 4],
    /// Per 16-weight sub-block a 4-bit scale, two per byte (low nibble first).
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(size_of::<BlockIq2Xs>() == 74);

fn quantize_block(lanes: Option<Lanes>, xbl: &[f32], y: &mut BlockIq2Xs, qw: &[f32]) {
    let lat = Lattice::get(Kind::Iq2Xs);
    if quantize_block_impl(lanes, lat, xbl, y, qw).is_err() {
        *y = bytemuck::Zeroable::zeroed();
        y.d = NAN_HALF;
    }
}

fn quantize_block_impl(
    lanes: Option<Lanes>,
    lat: &Lattice,
    xbl: &[f32],
    y: &mut BlockIq2Xs,
    qw: &[f32],
) -> Result<(), Abort> {
    let mut scales = [0.0f32; QK_K / 16];
    let mut weight = [0.0f32; 16];
    let mut xval = [0.0f32; 16];
    let mut waux = [0.0f32; 16];
    let mut block_signs = [0u8; 2];
    let mut q2 = [0u16; 2 * (QK_K / 16)];

    y.d = Half::from_f32(0.0);
    y.scales = [0; QK_K / 32];
    let mut max_scale = 0.0f32;
    let sigma2 = sum_squares(xbl) / QK_K as f32;

    for ib in 0..QK_K / 16 {
        let xb = &xbl[16 * ib..16 * ib + 16];
        let qw = &qw[16 * ib..16 * ib + 16];
        for i in 0..16 {
            weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
        }
        for i in 0..16 {
            waux[i] = weight[i].sqrt();
        }
        for k in 0..2 {
            let mut nflip = 0;
            let mut s = 0u8;
            for i in 0..8 {
                if xb[8 * k + i] >= 0.0 {
                    xval[8 * k + i] = xb[8 * k + i];
                } else {
                    xval[8 * k + i] = -xb[8 * k + i];
                    nflip += 1;
                    s |= 1 << i;
                }
            }
            if nflip % 2 == 1 {
                let mut imin = 0;
                let mut min = weight[8 * k] * xb[8 * k] * xb[8 * k];
                for i in 1..8 {
                    let ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                    if ax < min {
                        min = ax;
                        imin = i;
                    }
                }
                xval[8 * k + imin] = -xval[8 * k + imin];
                s ^= 1 << imin;
            }
            block_signs[k] = s & 127;
        }
        let mut max = xval[0];
        for i in 1..16 {
            max = c_max(max, xval[i]);
        }
        let mut l = [0i8; 16];
        if max < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut scale = search_16(lanes, lat, &xval, &weight, &waux, max, &mut l)?;
        if scale < 0.0 {
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s & 127;
            }
        }
        for k in 0..2 {
            let grid_index = lat.on_grid(pack(&l[8 * k..])).ok_or(Abort)?;
            q2[2 * ib + k] = grid_index as u16 | (block_signs[k] as u16) << 9;
        }
        // ggml's GGML_ASSERT(scale >= 0).
        if scale.is_nan() || scale < 0.0 {
            return Err(Abort);
        }
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }

    if max_scale == 0.0 {
        y.qs = [0; QK_K / 4];
        return Ok(());
    }
    let d = max_scale / 31.0;
    y.d = Half::from_f32(d);
    let id = 1.0 / d;
    for ib in 0..QK_K / 16 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
        if ib % 2 == 0 {
            y.scales[ib / 2] = l;
        } else {
            y.scales[ib / 2] |= l << 4;
        }
    }
    for (o, v) in y.qs.chunks_exact_mut(2).zip(q2) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

impl BlockFormat for Iq2Xs {
    const TYPE: GgmlType = GgmlType::IQ2_XS;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq2Xs>();
    const REQUIRES_IMATRIX: bool = true;
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        // ggml refuses to run without importance weights; the checked entry points refuse
        // first, so the unchecked call writes zero blocks.
        let Some(imatrix) = imatrix else {
            dst.fill(0);
            return;
        };
        for_each_superblock(src, dst, Some(imatrix), |x, y: &mut BlockIq2Xs, qw| {
            if let Some(qw) = qw {
                quantize_block(lanes, x, y, qw)
            }
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq2Xs>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for ib32 in 0..QK_K / 32 {
                let db = [
                    d * (0.5 + (b.scales[ib32] & 0xf) as f32) * 0.25,
                    d * (0.5 + (b.scales[ib32] >> 4) as f32) * 0.25,
                ];
                for l in 0..4 {
                    let at = 2 * (4 * ib32 + l);
                    let q = u16::from_le_bytes([b.qs[at], b.qs[at + 1]]);
                    let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
                    let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                    let out = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                    for j in 0..8 {
                        let sign = if signs & KMASK_IQ2XS[j] != 0 {
                            -1.0
                        } else {
                            1.0
                        };
                        out[j] = db[l / 2] * grid[j] as f32 * sign;
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIq2Xs>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
