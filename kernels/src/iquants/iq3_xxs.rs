//! IQ3_XXS: 98 bytes per 256 weights (3.0625 bits per weight). Each group of 4 weights is a
//! point of a 256-entry grid (one byte), each 8 weights carry 7 sign bits (the eighth makes the
//! number of minus signs even), each 32-weight sub-block a 4-bit scale; the super-block an f16
//! `d`. Weight = d * (0.5 + scale) * 0.5 * grid value * sign.
//!
//! Quantization follows ggml's `quantize_row_iq3_xxs_impl(256, ..)` (the same code with and
//! without importance weights; without them the weight of a column is `x^2`).

use super::block_weights;
use super::grid3::{c_max, iq3xxs_lattice, search_sub_block, SearchParams, IQ3XXS_GRID, KSIGNS};
use crate::fp::Half;
use crate::kquants::search::nearest_int;
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::Lanes;
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 3.06-bit i-quant.
pub struct Iq3Xxs;

/// One IQ3_XXS super-block (ggml's `block_iq3_xxs`, whose `qs[96]` is split here into its two
/// parts).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq3Xxs {
    /// Super-block scale.
    pub d: Half,
    /// Grid index of each group of 4 weights.
    pub qs: [u8; QK_K / 4],
    /// Per 32-weight sub-block, a little-endian u32: four 7-bit sign indices (bits 0..28, one
    /// per 8 weights) and the 4-bit scale (bits 28..32).
    pub scales_and_signs: [u8; QK_K / 8],
}
const _: () = assert!(size_of::<BlockIq3Xxs>() == 98);

/// ggml's `GROUP_MAX_EPS_IQ3_XXS`: a sub-block whose largest magnitude is below this is zero.
const GROUP_MAX_EPS_IQ3_XXS: f32 = 1e-8;

const PARAMS: SearchParams = SearchParams {
    trials: 15,
    on_grid_at_start: true,
    refine_all: false,
};

/// Quantizes one super-block; `false` where ggml would abort (weights so large that the
/// search's errors overflow), leaving the block to be marked invalid.
fn quantize_block(
    lanes: Option<Lanes>,
    x: &[f32],
    y: &mut BlockIq3Xxs,
    qw: Option<&[f32]>,
) -> bool {
    let lat = iq3xxs_lattice();
    y.d = Half::from_f32(0.0);
    let mut qs = [0u8; QK_K / 4];
    let mut sas = [0u32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut sumx2 = 0.0f32;
    for &v in &x[..QK_K] {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        let weight: [f32; 32] = block_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2);
        let waux = weight.map(f32::sqrt);
        let mut xval = [0.0f32; 32];
        let mut block_signs = [0u8; 4];
        for k in 0..4 {
            let mut nflip = 0;
            let mut s = 0u8;
            for i in 0..8 {
                let v = xb[8 * k + i];
                if v >= 0.0 {
                    xval[8 * k + i] = v;
                } else {
                    xval[8 * k + i] = -v;
                    nflip += 1;
                    s |= 1 << i;
                }
            }
            if nflip % 2 == 1 {
                let sq = |i: usize| weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                let mut imin = 0;
                let mut min = sq(0);
                for i in 1..8 {
                    let ax = sq(i);
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
        for &v in &xval[1..] {
            max = c_max(max, v);
        }
        if max < GROUP_MAX_EPS_IQ3_XXS {
            scales[ib] = 0.0;
            continue;
        }
        let Some((mut scale, indices)) =
            search_sub_block(lanes, lat, &PARAMS, &xval, &weight, &waux, max)
        else {
            return false;
        };
        if scale < 0.0 {
            scale = -scale;
            for s in &mut block_signs {
                *s = !*s & 127;
            }
        }
        for k in 0..8 {
            qs[8 * ib + k] = indices[k] as u8;
        }
        sas[ib] = block_signs[0] as u32
            | (block_signs[1] as u32) << 7
            | (block_signs[2] as u32) << 14
            | (block_signs[3] as u32) << 21;
        if scale.is_nan() {
            return false; // after the flip only NaN fails ggml's GGML_ASSERT(scale >= 0), which aborts
        }
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        y.qs = [0; QK_K / 4];
        y.scales_and_signs = [0; QK_K / 8];
        return true;
    }
    let d = max_scale / 31.0;
    y.d = Half::from_f32(d * 1.0125);
    let id = 1.0 / d;
    for ib in 0..QK_K / 32 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
        sas[ib] |= (l as u32) << 28;
    }
    y.qs = qs;
    for (o, s) in y.scales_and_signs.chunks_exact_mut(4).zip(sas) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    true
}

impl BlockFormat for Iq3Xxs {
    const TYPE: GgmlType = GgmlType::IQ3_XXS;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq3Xxs>();

    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        for_each_superblock(src, dst, imatrix, |x, y: &mut BlockIq3Xxs, qw| {
            if !quantize_block(lanes, x, y, qw) {
                y.d = Half(0x7c00u16.to_le_bytes()); // refused by first_invalid_block
            }
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq3Xxs>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for ib in 0..QK_K / 32 {
                let s = &b.scales_and_signs[4 * ib..4 * ib + 4];
                let aux32 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                let db = d * (0.5 + (aux32 >> 28) as f32) * 0.5;
                let qs = &b.qs[8 * ib..8 * ib + 8];
                for l in 0..4 {
                    let signs = KSIGNS[((aux32 >> (7 * l)) & 127) as usize];
                    let g1 = &IQ3XXS_GRID[qs[2 * l] as usize];
                    let g2 = &IQ3XXS_GRID[qs[2 * l + 1] as usize];
                    let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    for j in 0..4 {
                        let s1 = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                        let s2 = if signs & (1 << (j + 4)) != 0 {
                            -1.0
                        } else {
                            1.0
                        };
                        out[j] = db * g1[j] as f32 * s1;
                        out[j + 4] = db * g2[j] as f32 * s2;
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIq3Xxs>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
