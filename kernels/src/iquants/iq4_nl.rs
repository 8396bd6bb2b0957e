//! IQ4_NL: 18 bytes per 32 weights, an f16 scale and 4-bit indices into a fixed non-linear
//! table of 16 levels. Weight = d*kvalues_iq4nl[index]. This file also holds the per-32-weight
//! scale search (ggml's `quantize_row_iq4_nl_impl`) that IQ4_XS shares.

use super::block_weights;
use crate::fp::Half;
use crate::kquants::search::GROUP_MAX_EPS;
use crate::simd::iq::{iq4_indices, iq4_trial_sums, Lanes};
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// Weights per IQ4_NL block (and per IQ4_XS sub-block).
pub const QK4_NL: usize = 32;

/// ggml's `kvalues_iq4nl`: the 16 levels, ascending. A test checks it against ggml by
/// dequantizing crafted blocks.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `ntry` for the quantizers `ggml_quantize_chunk` calls (with or without importance
/// weights): the trial scales `(itry + kvalues[0]) / max`, itry = -7..=7.
const NTRY: i32 = 7;

/// The 4-bit non-linear format.
pub struct IQ4NL;

/// One IQ4_NL block (ggml's `block_iq4_nl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4NL {
    /// Scale.
    pub d: Half,
    /// Indices: weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; QK4_NL / 2],
}
const _: () = assert!(size_of::<BlockIQ4NL>() == 18);

/// ggml's `best_index_int8` over [`KVALUES_IQ4NL`]: the index of the level nearest `x` (a
/// bisection; the upper one on ties, the last one for NaN).
#[inline(always)]
pub(crate) fn best_index(x: f32) -> u8 {
    let val = &KVALUES_IQ4NL;
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// `sigma2` of a super-block: its sum of squares (in order) times `2 / len`.
#[inline]
pub(crate) fn sigma2(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// The scale search of one 32-weight block (the loop body of ggml's
/// `quantize_row_iq4_nl_impl` with `ntry > 0`): returns the block's scale, 0 for a block
/// whose largest magnitude is below `GROUP_MAX_EPS`.
pub(crate) fn block_scale(xb: &[f32], weight: &[f32; QK4_NL]) -> f32 {
    let xb = &xb[..QK4_NL];
    let (amax, max) = signed_amax(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KVALUES_IQ4NL[0] as f32;
    let sums = |id: f32| {
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for j in 0..QK4_NL {
            let q = KVALUES_IQ4NL[best_index(id * xb[j]) as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let d = -max / v0;
    let (sumqx, sumq2) = sums(1.0 / d);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
        let (sumqx, sumq2) = sums(id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The largest magnitude and the first weight that has it (ggml's `if (ax > amax)` loop).
#[inline]
fn signed_amax(xb: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// [`block_scale`] with the 16 trial scales (the first guess and `itry = -7..=7`) computed side
/// by side in SIMD lanes, then compared in ggml's order.
pub(crate) fn block_scale_lanes(lanes: Lanes, xb: &[f32; QK4_NL], weight: &[f32; QK4_NL]) -> f32 {
    let (amax, max) = signed_amax(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KVALUES_IQ4NL[0] as f32;
    let d = -max / v0;
    let mut ids = [0.0f32; 16];
    ids[0] = 1.0 / d;
    for (t, itry) in (-NTRY..=NTRY).enumerate() {
        ids[t + 1] = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
    }
    let (sqx, sq2) = iq4_trial_sums(lanes, xb, weight, &ids);
    let mut d = if sq2[0] > 0.0 { sqx[0] / sq2[0] } else { 0.0 };
    let mut best = d * sqx[0];
    for t in 1..16 {
        if sq2[t] > 0.0 && sqx[t] * sqx[t] > best * sq2[t] {
            d = sqx[t] / sq2[t];
            best = d * sqx[t];
        }
    }
    d
}

/// A block's scale and its 32 indices: the scalar search, or the SIMD one at `lanes`.
#[inline]
pub(crate) fn scale_at(lanes: Option<Lanes>, xb: &[f32; QK4_NL], weight: &[f32; QK4_NL]) -> f32 {
    match lanes {
        Some(lanes) => block_scale_lanes(lanes, xb, weight),
        None => block_scale(xb, weight),
    }
}

/// `best_index(id * xb[j])` for a block's 32 weights, in lanes at `lanes`.
#[inline]
pub(crate) fn indices_at(lanes: Option<Lanes>, xb: &[f32; QK4_NL], id: f32) -> [u8; QK4_NL] {
    match lanes {
        Some(lanes) => iq4_indices(lanes, xb, id),
        None => xb.map(|v| best_index(id * v)),
    }
}

/// Packs 32 indices as IQ4_NL and IQ4_XS store them.
#[inline]
pub(crate) fn pack(l: &[u8], q4: &mut [u8]) {
    for j in 0..16 {
        q4[j] = l[j] | (l[16 + j] << 4);
    }
}

impl BlockFormat for IQ4NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const BLOCK_WEIGHTS: usize = QK4_NL;
    const BLOCK_BYTES: usize = size_of::<BlockIQ4NL>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        let (blocks, _) = src.as_chunks::<QK4_NL>();
        for (ib, (x, b)) in blocks
            .iter()
            .zip(as_blocks_mut::<BlockIQ4NL>(dst).iter_mut())
            .enumerate()
        {
            let qw = imatrix.map(|q| &q[ib * QK4_NL..(ib + 1) * QK4_NL]);
            let w = block_weights::<QK4_NL>(x, qw, sigma2(x));
            let scale = scale_at(lanes, x, &w);
            b.d = Half::from_f32(scale);
            let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            pack(&indices_at(lanes, x, id), &mut b.qs);
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIQ4NL>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK4_NL))
        {
            let d = b.d.to_f32();
            for j in 0..QK4_NL / 2 {
                y[j] = d * KVALUES_IQ4NL[(b.qs[j] & 0xf) as usize] as f32;
                y[j + QK4_NL / 2] = d * KVALUES_IQ4NL[(b.qs[j] >> 4) as usize] as f32;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIQ4NL>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
