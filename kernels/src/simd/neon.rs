//! aarch64 NEON building blocks of the SIMD paths, each giving exactly what the scalar code
//! gives: one 32-weight block's statistics and levels (the legacy formats' row loops, compiled
//! for NEON by `x86_paths!`, call them as `v::...`); the K-quants' scale searches are in
//! [`neon_lanes`](super::neon_lanes).
//!
//! Levels come back as 32 bytes in an `int8x16x2_t`: each weight's float converted to an
//! integer the way C does on x86 (`cvttss2si`: truncation, `i32::MIN` for NaN and
//! out-of-range values, which kiln's scalar code reproduces), then truncated to its low byte.
//! NEON's own conversions saturate instead (`i32::MAX` for large values, 0 for NaN), so every
//! conversion here replaces the lanes outside `[-2^31, 2^31)` (and NaN) by `i32::MIN`.
//!
//! Multiplies and adds stay separate instructions (`vmulq_f32`, then `vaddq_f32`): NEON's
//! `vfmaq`/`vmlaq` are fused on aarch64 and are never used. Minimum and maximum are
//! compare-and-select where a lane keeps a running value (`FMIN`/`FMAX` order `-0.0` below
//! `0.0`, which Rust's `if v < min` does not), and `FMAX`/`FMIN` reductions only where the
//! result is a value whose zero sign does not matter or is fixed up afterwards.

use std::arch::aarch64::*;

/// `v` converted as x86's `cvttps2dq` does: truncation toward zero, `i32::MIN` for NaN and
/// values outside `[-2^31, 2^31)`.
#[inline]
#[target_feature(enable = "neon")]
fn cvtt(v: float32x4_t) -> int32x4_t {
    in_range_or_indefinite(v, vcvtq_s32_f32(v))
}

/// `t` where `v` is in `[-2^31, 2^31)`, `i32::MIN` elsewhere (and for NaN).
#[inline]
#[target_feature(enable = "neon")]
fn in_range_or_indefinite(v: float32x4_t, t: int32x4_t) -> int32x4_t {
    let lim = vdupq_n_f32(2_147_483_648.0);
    let ok = vandq_u32(vcgeq_f32(v, vnegq_f32(lim)), vcltq_f32(v, lim));
    vbslq_s32(ok, t, vdupq_n_s32(i32::MIN))
}

#[inline]
#[target_feature(enable = "neon")]
fn load8(x: &[f32; 32]) -> [float32x4_t; 8] {
    let p = x.as_ptr();
    let mut v = [vdupq_n_f32(0.0); 8];
    for (k, vk) in v.iter_mut().enumerate() {
        // SAFETY: `x` holds 32 floats, `4 * k + 4 <= 32`.
        *vk = unsafe { vld1q_f32(p.add(4 * k)) };
    }
    v
}

/// Bit `j` set where the 32-bit lane `j` of `m` is set.
#[inline]
#[target_feature(enable = "neon")]
fn mask4(m: uint32x4_t) -> u32 {
    const BITS: [u32; 4] = [1, 2, 4, 8];
    // SAFETY: four u32 values.
    let bits = unsafe { vld1q_u32(BITS.as_ptr()) };
    vaddvq_u32(vandq_u32(m, bits))
}

/// Bit `j` set where weight `j` equals `target` (as floats: both zeros match 0.0).
#[inline]
#[target_feature(enable = "neon")]
fn eq_mask(v: &[float32x4_t; 8], target: f32) -> u32 {
    let t = vdupq_n_f32(target);
    let mut m = 0u32;
    for (k, vk) in v.iter().enumerate() {
        m |= mask4(vceqq_f32(*vk, t)) << (4 * k);
    }
    m
}

#[inline]
#[target_feature(enable = "neon")]
fn abs8(v: [float32x4_t; 8]) -> [float32x4_t; 8] {
    let mut a = v;
    for ak in a.iter_mut() {
        *ak = vabsq_f32(*ak);
    }
    a
}

/// The largest of non-negative, non-NaN values (exact in any order).
#[inline]
#[target_feature(enable = "neon")]
fn hmax8(a: &[float32x4_t; 8]) -> f32 {
    let mut m = a[0];
    for ak in &a[1..] {
        m = vmaxq_f32(m, *ak);
    }
    vmaxvq_f32(m)
}

/// The first weight with the largest magnitude (0.0 when all are zero), as ggml's
/// `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` finds it.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn signed_absmax(x: &[f32; 32]) -> f32 {
    let a = abs8(load8(x));
    let amax = hmax8(&a);
    if amax == 0.0 {
        return 0.0;
    }
    x[eq_mask(&a, amax).trailing_zeros() as usize & 31]
}

/// The largest magnitude (ggml's `amax = MAX(amax, fabsf(v))`).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn amax(x: &[f32; 32]) -> f32 {
    hmax8(&abs8(load8(x)))
}

/// `(min, max)` as ggml's `if (v < min) min = v; if (v > max) max = v;` from
/// `FLT_MAX`/`-FLT_MAX` finds them: a zero extreme is the first zero, with its sign (the
/// reductions get the value right, and the sign of a zero is fixed up here).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn min_max(x: &[f32; 32]) -> (f32, f32) {
    let v = load8(x);
    let (mut lo, mut hi) = (v[0], v[0]);
    for vk in &v[1..] {
        lo = vminq_f32(lo, *vk);
        hi = vmaxq_f32(hi, *vk);
    }
    let (mut min, mut max) = (vminvq_f32(lo), vmaxvq_f32(hi));
    if min == 0.0 || max == 0.0 {
        let first_zero = x[eq_mask(&v, 0.0).trailing_zeros() as usize & 31];
        if min == 0.0 {
            min = first_zero;
        }
        if max == 0.0 {
            max = first_zero;
        }
    }
    (min, max)
}

/// Eight vectors of 32-bit integers to their low bytes, in weight order.
#[inline]
#[target_feature(enable = "neon")]
fn to_bytes(i: [int32x4_t; 8]) -> int8x16x2_t {
    let h = [
        vcombine_s16(vmovn_s32(i[0]), vmovn_s32(i[1])),
        vcombine_s16(vmovn_s32(i[2]), vmovn_s32(i[3])),
        vcombine_s16(vmovn_s32(i[4]), vmovn_s32(i[5])),
        vcombine_s16(vmovn_s32(i[6]), vmovn_s32(i[7])),
    ];
    int8x16x2_t(
        vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1])),
        vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3])),
    )
}

/// 32 levels `(int8_t)((x[j] - min) * id + bias)` (`SUB == false`: `x[j] * id + bias`),
/// converted as x86 C does (see the module's doc).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn trunc_levels<const SUB: bool>(
    x: &[f32; 32],
    min: f32,
    id: f32,
    bias: f32,
) -> int8x16x2_t {
    let (vmin, vid, vbias) = (vdupq_n_f32(min), vdupq_n_f32(id), vdupq_n_f32(bias));
    let v = load8(x);
    let mut i = [vdupq_n_s32(0); 8];
    for k in 0..8 {
        let v = if SUB { vsubq_f32(v[k], vmin) } else { v[k] };
        i[k] = cvtt(vaddq_f32(vmulq_f32(v, vid), vbias));
    }
    to_bytes(i)
}

/// 32 levels `(int8_t)roundf(x[j] * id)`: `FCVTAS` rounds halves away from zero as `roundf`
/// does, and equals the conversion of `roundf`'s result wherever that is in range (a float
/// below 2^31 never rounds up to 2^31: from 2^23 on every float is an integer); outside the
/// range, and for NaN, `i32::MIN` as x86 C gives.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn round_levels(x: &[f32; 32], id: f32) -> int8x16x2_t {
    let vid = vdupq_n_f32(id);
    let x = load8(x);
    let mut i = [vdupq_n_s32(0); 8];
    for k in 0..8 {
        let v = vmulq_f32(x[k], vid);
        i[k] = in_range_or_indefinite(v, vcvtaq_s32_f32(v));
    }
    to_bytes(i)
}

/// A per-byte shift left by four.
#[inline]
#[target_feature(enable = "neon")]
fn shl4(v: int8x16_t) -> uint8x16_t {
    vshlq_n_u8::<4>(vreinterpretq_u8_s8(v))
}

/// `l[j]` for the 32 levels, as signed bytes, capped at `cap` (`(int8_t)v` then
/// `MIN(cap, .)`), then packed two per byte: weight `j` in the low nibble of byte `j`, weight
/// `j + 16` in the high one (Q4_0, Q4_1).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn nibbles_capped(l: int8x16x2_t, cap: i8) -> [u8; 16] {
    let l = self::cap(l, cap);
    let packed = vorrq_u8(vreinterpretq_u8_s8(l.0), shl4(l.1));
    let mut out = [0u8; 16];
    // SAFETY: `out` holds 16 bytes.
    unsafe { vst1q_u8(out.as_mut_ptr(), packed) };
    out
}

/// Q5_0/Q5_1's packing of 32 five-bit levels: low nibbles as [`nibbles_capped`] (without the
/// cap, which the caller applies), and the fifth bits as a little-endian u32.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn q5_pack(l: int8x16x2_t) -> ([u8; 4], [u8; 16]) {
    let nib = vdupq_n_s8(0x0F);
    let (lo, hi) = (vandq_s8(l.0, nib), vandq_s8(l.1, nib));
    let mut qs = [0u8; 16];
    // SAFETY: `qs` holds 16 bytes.
    unsafe { vst1q_u8(qs.as_mut_ptr(), vorrq_u8(vreinterpretq_u8_s8(lo), shl4(hi))) };
    // Bit 4 of byte j to bit (j % 8), then the eight bytes of each half-vector summed (the
    // bits are distinct, so the sum is their OR).
    const SHIFTS: [i8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7];
    // SAFETY: sixteen i8 values.
    let shifts = unsafe { vld1q_s8(SHIFTS.as_ptr()) };
    let (b0, b1) = (fifth_bits(l.0, shifts), fifth_bits(l.1, shifts));
    let qh = [
        vaddv_u8(vget_low_u8(b0)),
        vaddv_u8(vget_high_u8(b0)),
        vaddv_u8(vget_low_u8(b1)),
        vaddv_u8(vget_high_u8(b1)),
    ];
    (qh, qs)
}

/// Bit 4 of each byte, shifted left by the byte's entry of `shifts`.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(v: int8x16_t, shifts: int8x16_t) -> uint8x16_t {
    let b = vandq_u8(vshrq_n_u8::<4>(vreinterpretq_u8_s8(v)), vdupq_n_u8(1));
    vshlq_u8(b, shifts)
}

/// The signed-byte minimum of each level and `cap`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn cap(l: int8x16x2_t, cap: i8) -> int8x16x2_t {
    let c = vdupq_n_s8(cap);
    int8x16x2_t(vminq_s8(l.0, c), vminq_s8(l.1, c))
}

/// Stores 32 levels.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn store32(l: int8x16x2_t, out: &mut [u8; 32]) {
    // SAFETY: `out` holds 32 bytes.
    unsafe {
        vst1q_u8(out.as_mut_ptr(), vreinterpretq_u8_s8(l.0));
        vst1q_u8(out.as_mut_ptr().add(16), vreinterpretq_u8_s8(l.1));
    }
}

/// f32 to IEEE half as ggml rounds it (the portable conversion: stable Rust has no NEON
/// half-precision vector type).
#[inline]
pub(crate) fn f16(v: f32) -> crate::fp::Half {
    crate::fp::Half::from_f32(v)
}
