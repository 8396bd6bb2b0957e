//! IQ2_XXS: 66 bytes per 256 weights (2.0625 bits per weight). Each group of 8 weights is a
//! point of a 256-point lattice (8 bits) and 7 sign bits (the 8th sign makes the parity even);
//! each 32-weight sub-block a 4-bit scale; the super-block an f16 `d`. Weight =
//! `d * (0.5 + scale) * 0.25 * grid * sign`. ggml's `quantize_row_iq2_xxs_impl`, which needs
//! importance weights.

use super::lattice::{
    c_max, pack, sum_squares, weighted_sums, Abort, Kind, Lattice, IQ2XXS_GRID, KMASK_IQ2XS,
    KSIGNS_IQ2XS,
};
use crate::fp::Half;
use crate::kquants::search::{make_qp_quants, nearest_int, GROUP_MAX_EPS};
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::Lanes;
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 2.06-bit lattice i-quant.
pub struct Iq2Xxs;

/// One IQ2_XXS super-block (ggml's `block_iq2_xxs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq2Xxs {
    /// Super-block scale.
    pub d: Half,
    /// Per 32 weights, two little-endian `u32`: four grid indices (a byte each), then four
    /// 7-bit sign groups (bits 0..28) and the 4-bit scale (bits 28..32).
    pub qs: [u8; QK_K / 4],
}
const _: () = assert!(size_of::<BlockIq2Xxs>() == 66);

const KMAX_Q: i32 = 3;

/// A NaN scale: where ggml aborts, kiln writes a block its validation rejects.
pub(crate) const NAN_HALF: Half = Half([0x00, 0x7e]);

fn quantize_block(lanes: Option<Lanes>, xbl: &[f32], y: &mut BlockIq2Xxs, qw: &[f32]) {
    let lat = Lattice::get(Kind::Iq2Xxs);
    if quantize_block_impl(lanes, lat, xbl, y, qw).is_err() {
        *y = bytemuck::Zeroable::zeroed();
        y.d = NAN_HALF;
    }
}

fn quantize_block_impl(
    lanes: Option<Lanes>,
    lat: &Lattice,
    xbl: &[f32],
    y: &mut BlockIq2Xxs,
    qw: &[f32],
) -> Result<(), Abort> {
    let mut scales = [0.0f32; QK_K / 32];
    let mut weight = [0.0f32; 32];
    let mut xval = [0.0f32; 32];
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut waux = [0.0f32; 32];
    let mut block_signs = [0u8; 4];
    let mut q2 = [0u32; 2 * (QK_K / 32)];

    y.d = Half::from_f32(0.0);
    let mut max_scale = 0.0f32;
    let sigma2 = sum_squares(xbl) / QK_K as f32;

    for ib in 0..QK_K / 32 {
        let xb = &xbl[32 * ib..32 * ib + 32];
        let qw = &qw[32 * ib..32 * ib + 32];
        for i in 0..32 {
            weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
        }
        for i in 0..32 {
            waux[i] = weight[i].sqrt();
        }
        for k in 0..4 {
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
        for i in 1..32 {
            max = c_max(max, xval[i]);
        }
        if max < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            l = [0; 32];
            continue;
        }
        let mut lq = [0u8; 32];
        let mut scale = make_qp_quants(KMAX_Q + 1, &xval, &mut lq, &weight);
        for i in 0..32 {
            l[i] = lq[i] as i8;
        }
        let eff_max = scale * KMAX_Q as f32;
        if eff_max <= 0.0 {
            scales[ib] = 0.0;
            l = [0; 32];
            continue;
        }
        let mut best = 0.0f32;
        for is in -6i32..=6 {
            let id = ((2 * KMAX_Q - 1) as f32 + is as f32 * 0.1f32) / eff_max;
            let this_scale = 1.0 / id;
            for k in 0..4 {
                let g = 8 * k..8 * k + 8;
                lat.snap_group(
                    lanes,
                    id,
                    this_scale,
                    &xval[g.clone()],
                    &waux[g.clone()],
                    &mut laux[g],
                )?;
            }
            let (sumqx, sumq2) = weighted_sums(&weight, &xval, &laux);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                l = laux;
            }
        }
        if scale > 0.0 {
            let id = 1.0 / scale;
            for k in 0..4 {
                let g = 8 * k..8 * k + 8;
                lat.snap_group(
                    lanes,
                    id,
                    scale,
                    &xval[g.clone()],
                    &waux[g.clone()],
                    &mut l[g],
                )?;
            }
            let (sumqx, sumq2) = weighted_sums(&weight, &xval, &l);
            if sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        if scale < 0.0 {
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s & 127;
            }
        }
        for k in 0..4 {
            let grid_index = lat.on_grid(pack(&l[8 * k..])).ok_or(Abort)?;
            q2[2 * ib] |= (grid_index as u32) << (8 * k);
            q2[2 * ib + 1] |= (block_signs[k] as u32) << (7 * k);
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
    for ib in 0..QK_K / 32 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
        q2[2 * ib + 1] |= (l as u32) << 28;
    }
    for (o, v) in y.qs.chunks_exact_mut(4).zip(q2) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

impl BlockFormat for Iq2Xxs {
    const TYPE: GgmlType = GgmlType::IQ2_XXS;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq2Xxs>();
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
        for_each_superblock(src, dst, Some(imatrix), |x, y: &mut BlockIq2Xxs, qw| {
            if let Some(qw) = qw {
                quantize_block(lanes, x, y, qw)
            }
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq2Xxs>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for ib32 in 0..QK_K / 32 {
                let q = &b.qs[8 * ib32..8 * ib32 + 8];
                let aux1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
                let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
                for l in 0..4 {
                    let grid = IQ2XXS_GRID[q[l] as usize].to_le_bytes();
                    let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                    let out = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                    for j in 0..8 {
                        let sign = if signs & KMASK_IQ2XS[j] != 0 {
                            -1.0
                        } else {
                            1.0
                        };
                        out[j] = db * grid[j] as f32 * sign;
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIq2Xxs>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
