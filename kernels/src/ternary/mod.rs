//! The ternary formats of BitNet b1.58 and TriLMs: TQ1_0 (1.6875 bits per weight, five trits
//! per byte) and TQ2_0 (2 bits per weight), 256 weights per block, levels -1, 0, 1 times the
//! block's largest magnitude. ggml's `quantize_row_tqN_0_ref`; ggml ignores importance weights
//! for both.

pub mod tq1_0;
pub mod tq2_0;

pub use tq1_0::{BlockTQ1_0, TQ1_0};
pub use tq2_0::{BlockTQ2_0, TQ2_0};

/// The block's largest magnitude and its reciprocal (0 for an all-zero block), as both formats
/// compute them.
#[inline]
fn scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        // C's MAX(amax, a): `amax > a ? amax : a`.
        amax = if amax > a { amax } else { a };
    }
    let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
    (amax, id)
}

/// The trit of a weight, `lroundf(v) + 1` converted to C's `int` as ggml computes it: 0, 1 or
/// 2 for |v| <= 1. glibc's `lroundf` gives `LONG_MIN` for NaN and values out of `long`'s range
/// (the reciprocal of a subnormal scale is infinite), and the `int` conversion keeps the low
/// 32 bits.
#[inline(always)]
fn trit(v: f32) -> i32 {
    let l: i64 = if v.is_nan() || v.abs() >= 9_223_372_036_854_775_808.0 {
        i64::MIN
    } else {
        v.round() as i64
    };
    l.wrapping_add(1) as i32
}
