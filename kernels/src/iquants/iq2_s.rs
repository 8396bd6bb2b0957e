//! IQ2_S: 82 bytes per 256 weights (2.5625 bits per weight). Each group of 8 weights is a point
//! of a 1024-point lattice (8 low bits in `qs`, 2 high bits in `qh`) and 8 explicit sign bits;
//! each 16-weight sub-block a 4-bit scale; the super-block an f16 `d`. Weight =
//! `d * (0.5 + scale) * 0.25 * grid * sign`. ggml's `quantize_row_iq2_s_impl` (importance
//! weights optional).

use super::iq2_xxs::NAN_HALF;
use super::lattice::{
    c_max, pack, search_16, sum_squares, Abort, Kind, Lattice, IQ2S_GRID, KMASK_IQ2XS,
};
use crate::fp::Half;
use crate::kquants::search::nearest_int;
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::Lanes;
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// ggml's `GROUP_MAX_EPS_IQ2_S`.
const GROUP_MAX_EPS_IQ2_S: f32 = 1e-8;

/// The 2.56-bit lattice i-quant.
pub struct Iq2S;

/// One IQ2_S super-block (ggml's `block_iq2_s`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq2S {
    /// Super-block scale.
    pub d: Half,
    /// The low 8 bits of each group's grid index (32 bytes), then each group's 8 signs
    /// (32 bytes).
    pub qs: [u8; QK_K / 4],
    /// Per 32 weights, the 2 high bits of the four grid indices.
    pub qh: [u8; QK_K / 32],
    /// Per 16-weight sub-block a 4-bit scale, two per byte (low nibble first).
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(size_of::<BlockIq2S>() == 82);

fn quantize_block(lanes: Option<Lanes>, xbl: &[f32], y: &mut BlockIq2S, qw: Option<&[f32]>) {
    let lat = Lattice::get(Kind::Iq2S);
    if quantize_block_impl(lanes, lat, xbl, y, qw).is_err() {
        *y = bytemuck::Zeroable::zeroed();
        y.d = NAN_HALF;
    }
}

fn quantize_block_impl(
    lanes: Option<Lanes>,
    lat: &Lattice,
    xbl: &[f32],
    y: &mut BlockIq2S,
    quant_weights: Option<&[f32]>,
) -> Result<(), Abort> {
    let mut scales = [0.0f32; QK_K / 16];
    let mut weight = [0.0f32; 16];
    let mut xval = [0.0f32; 16];
    let mut waux = [0.0f32; 16];
    let mut block_signs = [0u8; 2];

    *y = bytemuck::Zeroable::zeroed();
    y.d = Half::from_f32(0.0);
    let mut max_scale = 0.0f32;
    let sigma2 = 2.0 * sum_squares(xbl) / QK_K as f32;

    for ib in 0..QK_K / 16 {
        let xb = &xbl[16 * ib..16 * ib + 16];
        match quant_weights {
            Some(qw) => {
                let qw = &qw[16 * ib..16 * ib + 16];
                for i in 0..16 {
                    weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
                }
            }
            None => {
                for i in 0..16 {
                    weight[i] = 0.25 * sigma2 + xb[i] * xb[i];
                }
            }
        }
        for i in 0..16 {
            waux[i] = weight[i].sqrt();
        }
        for k in 0..2 {
            let mut s = 0u8;
            for i in 0..8 {
                if xb[8 * k + i] >= 0.0 {
                    xval[8 * k + i] = xb[8 * k + i];
                } else {
                    xval[8 * k + i] = -xb[8 * k + i];
                    s |= 1 << i;
                }
            }
            block_signs[k] = s;
        }
        let mut max = xval[0];
        for i in 1..16 {
            max = c_max(max, xval[i]);
        }
        let mut l = [0i8; 16];
        if max < GROUP_MAX_EPS_IQ2_S {
            scales[ib] = 0.0;
            continue;
        }
        let mut scale = search_16(lanes, lat, &xval, &weight, &waux, max, &mut l)?;
        if scale < 0.0 {
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s;
            }
        }
        for k in 0..2 {
            let grid_index = lat.on_grid(pack(&l[8 * k..])).ok_or(Abort)?;
            let i8 = 2 * ib + k;
            y.qs[i8] = (grid_index & 255) as u8;
            y.qh[i8 / 4] |= ((grid_index >> 8) << (2 * (i8 % 4))) as u8;
            y.qs[QK_K / 8 + i8] = block_signs[k];
        }
        // ggml's GGML_ASSERT(scale >= 0).
        if scale.is_nan() || scale < 0.0 {
            return Err(Abort);
        }
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }

    if max_scale == 0.0 {
        return Ok(());
    }
    let d = max_scale / 31.0;
    y.d = Half::from_f32(d * 0.9875);
    let id = 1.0 / d;
    for ib in 0..QK_K / 16 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
        if ib % 2 == 0 {
            y.scales[ib / 2] = l;
        } else {
            y.scales[ib / 2] |= l << 4;
        }
    }
    Ok(())
}

impl BlockFormat for Iq2S {
    const TYPE: GgmlType = GgmlType::IQ2_S;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq2S>();

    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        for_each_superblock(src, dst, imatrix, |x, y, qw| {
            quantize_block(lanes, x, y, qw)
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq2S>(src)
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
                    let dl = db[l / 2];
                    let qs = b.qs[4 * ib32 + l] as usize;
                    let high = ((b.qh[ib32] as usize) << (8 - 2 * l)) & 0x300;
                    let grid = IQ2S_GRID[qs | high].to_le_bytes();
                    let signs = b.qs[QK_K / 8 + 4 * ib32 + l];
                    let out = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                    for j in 0..8 {
                        let sign = if signs & KMASK_IQ2XS[j] != 0 {
                            -1.0
                        } else {
                            1.0
                        };
                        out[j] = dl * grid[j] as f32 * sign;
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIq2S>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
