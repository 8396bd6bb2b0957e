//! IQ3_S: 110 bytes per 256 weights (3.4375 bits per weight). Each group of 4 weights is a
//! point of a 512-entry grid (8 bits in `qs`, the ninth in `qh`), every weight has its own sign
//! bit, each 32-weight sub-block a 4-bit scale; the super-block an f16 `d`.
//! Weight = d * (1 + 2*scale) * grid value * sign.
//!
//! Quantization follows ggml's `quantize_row_iq3_s_impl` with 32-weight sub-blocks (the same
//! code with and without importance weights; without them the weight of a column is `x^2`),
//! including its habit of not advancing the `qs`/`signs` write position past an all-zero
//! sub-block, so that the next sub-block's indices and signs land in its slot.

use super::block_weights;
use super::grid3::{c_max, iq3s_lattice, search_sub_block, SearchParams, IQ3S_GRID};
use crate::fp::Half;
use crate::kquants::search::nearest_int;
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::Lanes;
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 3.44-bit i-quant.
pub struct Iq3S;

/// One IQ3_S super-block (ggml's `block_iq3_s`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq3S {
    /// Super-block scale.
    pub d: Half,
    /// Low 8 bits of each group's grid index.
    pub qs: [u8; QK_K / 4],
    /// Ninth bit of the grid indices: bit `g % 8` of byte `g / 8` for group `g`.
    pub qh: [u8; QK_K / 32],
    /// One sign bit per weight.
    pub signs: [u8; QK_K / 8],
    /// 4-bit sub-block scales, two per byte (low nibble first).
    pub scales: [u8; QK_K / 64],
}
const _: () = assert!(size_of::<BlockIq3S>() == 110);

const PARAMS: SearchParams = SearchParams {
    trials: 9,
    on_grid_at_start: false,
    refine_all: true,
};

/// Quantizes one super-block; `false` where ggml would abort (weights so large that the
/// search's errors overflow), leaving the block to be marked invalid.
fn quantize_block(lanes: Option<Lanes>, x: &[f32], y: &mut BlockIq3S, qw: Option<&[f32]>) -> bool {
    let lat = iq3s_lattice();
    *y = bytemuck::Zeroable::zeroed();
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut sumx2 = 0.0f32;
    for &v in &x[..QK_K] {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    // ggml's write positions in qs and signs: they advance only past a non-zero sub-block.
    let mut qs_at = 0;
    let mut signs_at = 0;
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..32 * ib + 32];
        let weight: [f32; 32] = block_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2);
        let waux = weight.map(f32::sqrt);
        let mut xval = [0.0f32; 32];
        let mut block_signs = [0u8; 4];
        for k in 0..4 {
            let mut s = 0u8;
            for i in 0..8 {
                let v = xb[8 * k + i];
                if v >= 0.0 {
                    xval[8 * k + i] = v;
                } else {
                    xval[8 * k + i] = -v;
                    s |= 1 << i;
                }
            }
            block_signs[k] = s;
        }
        let mut max = xval[0];
        for &v in &xval[1..] {
            max = c_max(max, v);
        }
        if max == 0.0 {
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
                *s = !*s;
            }
        }
        for k in 0..8 {
            let g = indices[k];
            y.qs[qs_at + k] = g as u8;
            let at = ib * 8 + k;
            y.qh[at / 8] |= ((g >> 8) << (at % 8)) as u8;
        }
        qs_at += 8;
        y.signs[signs_at..signs_at + 4].copy_from_slice(&block_signs);
        signs_at += 4;
        if scale.is_nan() {
            return false; // after the flip only NaN fails ggml's GGML_ASSERT(scale >= 0), which aborts
        }
        scales[ib] = scale;
        max_scale = c_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return true;
    }
    let d = max_scale / 31.0;
    y.d = Half::from_f32(d * 1.033);
    let id = 1.0 / d;
    for ib in (0..QK_K / 32).step_by(2) {
        let l1 = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
        let l2 = nearest_int(0.5 * (id * scales[ib + 1] - 1.0)).clamp(0, 15);
        y.scales[ib / 2] = (l1 | (l2 << 4)) as u8;
    }
    true
}

impl BlockFormat for Iq3S {
    const TYPE: GgmlType = GgmlType::IQ3_S;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq3S>();

    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        for_each_superblock(src, dst, imatrix, |x, y: &mut BlockIq3S, qw| {
            if !quantize_block(lanes, x, y, qw) {
                y.d = Half(0x7c00u16.to_le_bytes()); // refused by first_invalid_block
            }
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq3S>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for ib in 0..QK_K / 32 {
                let sc = b.scales[ib / 2] >> (4 * (ib % 2)) & 0xf;
                let db = d * (1 + 2 * sc as i32) as f32;
                let qh = b.qh[ib] as usize;
                let qs = &b.qs[8 * ib..8 * ib + 8];
                let signs = &b.signs[4 * ib..4 * ib + 4];
                for l in 0..4 {
                    let g1 = &IQ3S_GRID[qs[2 * l] as usize | ((qh << (8 - 2 * l)) & 256)];
                    let g2 = &IQ3S_GRID[qs[2 * l + 1] as usize | ((qh << (7 - 2 * l)) & 256)];
                    let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    for j in 0..4 {
                        let s1 = if signs[l] & (1 << j) != 0 { -1.0 } else { 1.0 };
                        let s2 = if signs[l] & (1 << (j + 4)) != 0 {
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
        as_blocks::<BlockIq3S>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
