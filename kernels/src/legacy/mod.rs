//! The 32-weight block formats, one file each: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (and the sign
//! and 2-bit formats Q1_0, 128 weights, and Q2_0, 64 weights, which share their shape). This file
//! holds what they share: the conversions and block statistics of ggml's reference path, the
//! importance weights and the searches of its importance-weighted path, and the 5-bit packing.
//!
//! Without importance weights these follow ggml's `quantize_row_*_ref` (one scale from the
//! block's extreme value); with them, ggml's `quantize_row_*_impl`, which searches the scale
//! (and min) that minimises the importance-weighted error, where the weight of column `j` is
//! `imatrix[j] * sqrt(sigma2 + x[j]^2)` and `sigma2` is the row's mean square.

pub mod q1_0;
pub mod q2_0;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;

pub use q1_0::{BlockQ1_0, Q1_0};
pub use q2_0::{BlockQ2_0, Q2_0};
pub use q4_0::{BlockQ4_0, Q4_0};
pub use q4_1::{BlockQ4_1, Q4_1};
pub use q5_0::{BlockQ5_0, Q5_0};
pub use q5_1::{BlockQ5_1, Q5_1};
pub use q8_0::{BlockQ8_0, Q8_0};

use crate::fp::Half;
use crate::kquants::search::{
    make_qkx3_quants, make_qkx_lanes, make_qx_quants, make_qx_quants_lanes, MinSearch,
};
use crate::kquants::sum_squares;

/// Weights per block of every legacy format.
pub const QK: usize = 32;

/// The search settings ggml uses for the importance-weighted Q4_1/Q5_1 path.
const QKX3_LEGACY: MinSearch = MinSearch {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// C's float-to-integer conversion as x86 performs it (`cvttss2si`): truncation toward zero,
/// and the "integer indefinite" value `i32::MIN` for NaN and out-of-range input, where Rust's
/// `as` would saturate. It matters for blocks of subnormals, whose reciprocal scale is infinite.
#[inline(always)]
pub(crate) fn cvtt(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// Converts like [`cvtt`]; `FINITE` says the caller knows the value is in range (the
/// reciprocal scale was finite), where a plain `as` is the same and vectorizes.
#[inline(always)]
fn to_int<const FINITE: bool>(v: f32) -> i32 {
    if FINITE {
        v as i32
    } else {
        cvtt(v)
    }
}

/// Largest magnitude in the block and the value that has it (first one wins on ties).
///
/// Two passes instead of ggml's one: the largest magnitude (a max reduction, which vectorizes
/// and is exact in any order), then the first value that has it. Same result, no NaN here.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let x = &x[..QK];
    let mut lanes = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            lanes[k] = if a > lanes[k] { a } else { lanes[k] };
        }
    }
    let amax = lanes.iter().fold(0.0f32, |m, &a| if a > m { a } else { m });
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The row's mean square, as ggml computes it for the importance weights.
fn row_sigma2(x: &[f32]) -> f32 {
    sum_squares(x) / x.len() as f32
}

#[inline]
fn importance(qw: &[f32], x: &[f32], sigma2: f32) -> [f32; QK] {
    let mut w = [0.0f32; QK];
    for j in 0..QK {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// Q4_1/Q5_1 without importance weights: writes `d` and `m` from the block's range; returns
/// the min and the reciprocal scale the levels are computed with.
///
/// Kept out of line, as it was before the formats had a file each: inlined into the row loop
/// (the min/max chain fully unrolled for 32 weights) Q4_1 and Q5_1 measured ~5% slower.
#[inline(never)]
fn asym_ref_header(levels: f32, x: &[f32], d_out: &mut Half, m_out: &mut Half) -> (f32, f32) {
    let (min, max) = min_max(x);
    let d = (max - min) / levels;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    *d_out = Half::from_f32(d);
    *m_out = Half::from_f32(min);
    (min, id)
}

/// Blocks searched side by side on the SIMD paths of the importance-weighted rows.
const IMATRIX_LANES: usize = 16;

/// The importance-weighted searches of a row's blocks, shared by [`sym_imatrix_row`] and
/// [`asym_imatrix_row`]: the importance of each weight from the row's mean square, then, with
/// `LANES`, `group(store, first_block, x, w)` on each run of [`IMATRIX_LANES`] blocks, and
/// `block(store, block, x, w)` on each block left, in order. `store` is handed to both.
#[inline(always)]
fn imatrix_row<const LANES: bool, S>(
    src: &[f32],
    qw: &[f32],
    store: &mut S,
    group: impl Fn(&mut S, usize, &[f32], &[f32; IMATRIX_LANES * QK]),
    block: impl Fn(&mut S, usize, &[f32], &[f32; QK]),
) {
    const G: usize = IMATRIX_LANES;
    let sigma2 = row_sigma2(src);
    let nb = src.len() / QK;
    let mut ib = 0;
    if LANES {
        while ib + G <= nb {
            let x = &src[ib * QK..(ib + G) * QK];
            let mut w = [0.0f32; G * QK];
            for (b, wb) in w.as_chunks_mut::<QK>().0.iter_mut().enumerate() {
                *wb = importance(&qw[(ib + b) * QK..], &x[b * QK..], sigma2);
            }
            group(store, ib, x, &w);
            ib += G;
        }
    }
    while ib < nb {
        let x = &src[ib * QK..(ib + 1) * QK];
        let w = importance(&qw[ib * QK..], x, sigma2);
        block(store, ib, x, &w);
        ib += 1;
    }
}

/// The importance-weighted searches of a row of Q4_0/Q5_0 blocks (ggml's `make_qx_quants`
/// with `nmax`, `rmse_type == 1`): calls `store(block, d, levels)` for each block, in order.
/// `LANES` searches [`IMATRIX_LANES`] blocks side by side ([`make_qx_quants_lanes`]) and the
/// rest one by one; the results are the same.
#[inline(always)]
fn sym_imatrix_row<const LANES: bool>(
    nmax: i32,
    src: &[f32],
    qw: &[f32],
    mut store: impl FnMut(usize, f32, &[i8; QK]),
) {
    const G: usize = IMATRIX_LANES;
    imatrix_row::<LANES, _>(
        src,
        qw,
        &mut store,
        |store, ib, x, w| {
            let mut l = [0i8; G * QK];
            let d = make_qx_quants_lanes::<QK, G>(nmax, x, &mut l, Some(w));
            for (b, lb) in l.as_chunks::<QK>().0.iter().enumerate() {
                store(ib + b, d[b], lb);
            }
        },
        |store, ib, x, w| {
            let mut l = [0i8; QK];
            let d = make_qx_quants(nmax, x, &mut l, Some(w));
            store(ib, d, &l);
        },
    );
}

/// The importance-weighted searches of a row of Q4_1/Q5_1 blocks (ggml's
/// `make_qkx3_quants`): calls `store(block, d, m, levels)` for each block, in order, where
/// the stored min `m` is the negated min of the search. `LANES` searches [`IMATRIX_LANES`]
/// blocks side by side ([`make_qkx_lanes`]) and the rest one by one; the results are the same.
#[inline(always)]
fn asym_imatrix_row<const LANES: bool>(
    nmax: i32,
    src: &[f32],
    qw: &[f32],
    mut store: impl FnMut(usize, f32, f32, &[u8; QK]),
) {
    const G: usize = IMATRIX_LANES;
    imatrix_row::<LANES, _>(
        src,
        qw,
        &mut store,
        |store, ib, x, w| {
            let mut l = [0u8; G * QK];
            let mut mins = [0.0f32; G];
            let d = make_qkx_lanes::<QK, G, true>(nmax, x, w, &mut l, &mut mins, QKX3_LEGACY);
            for (b, lb) in l.as_chunks::<QK>().0.iter().enumerate() {
                store(ib + b, d[b], -mins[b], lb);
            }
        },
        |store, ib, x, w| {
            let mut l = [0u8; QK];
            let mut min = 0.0f32;
            let d = make_qkx3_quants(nmax, x, w, &mut l, &mut min, QKX3_LEGACY);
            store(ib, d, -min, &l);
        },
    );
}

/// Packs 5-bit levels (low nibbles into 16 bytes, fifth bits into a little-endian u32) as
/// Q5_0/Q5_1 store them.
#[inline]
fn pack_q5(levels: impl Fn(usize) -> u8, qh_out: &mut [u8; 4], qs_out: &mut [u8; QK / 2]) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = levels(j);
        let xi1 = levels(j + QK / 2);
        qs_out[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 as u32 & 0x10) >> 4) << j;
        qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
    }
    *qh_out = qh.to_le_bytes();
}

/// The 5-bit levels of weights `j` and `j + 16` from Q5_0/Q5_1's nibbles and fifth bits.
#[inline]
fn q5_level(qs: &[u8; QK / 2], qh: u32, j: usize) -> (i32, i32) {
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (((qs[j] & 0x0F) | xh_0) as i32, ((qs[j] >> 4) | xh_1) as i32)
}
