//! x86-64 building blocks of the SIMD paths: one 32-weight block's statistics and levels with
//! AVX2 ([`avx2`]) and AVX-512 ([`avx512`]), each giving exactly what the scalar code gives.
//!
//! The functions are `#[target_feature]` and `#[inline]`, so they inline into the formats'
//! row loops compiled for the same features (`x86_paths!`). Levels come back as 32 bytes in
//! an `__m256i`: each weight's float converted to an integer the way C does on x86
//! (`cvttss2si`: truncation, `i32::MIN` for NaN and out-of-range values), then truncated to
//! its low byte, which is what C's `(int8_t)` and `(uint8_t)` casts of a float do there.

/// Byte-level steps shared by both levels (AVX2 instructions, which the AVX-512 paths have
/// too).
pub(crate) mod bytes {
    use std::arch::x86_64::*;

    /// `l[j]` for the 32 levels, as signed bytes, capped at `cap` (`(int8_t)v` then
    /// `MIN(cap, .)`), then packed two per byte: weight `j` in the low nibble of byte `j`,
    /// weight `j + 16` in the high one (Q4_0, Q4_1).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn nibbles_capped(l: __m256i, cap: i8) -> [u8; 16] {
        let l = _mm256_min_epi8(l, _mm256_set1_epi8(cap));
        let lo = _mm256_castsi256_si128(l);
        let hi = _mm256_extracti128_si256::<1>(l);
        // A 16-bit shift moves each byte's top nibble into its neighbour's low nibble, which
        // the mask clears: a per-byte shift left by 4.
        let hi = _mm_and_si128(_mm_slli_epi16::<4>(hi), _mm_set1_epi8(0xF0u8 as i8));
        let mut out = [0u8; 16];
        // SAFETY: `out` holds 16 bytes; unaligned store.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_or_si128(lo, hi)) };
        out
    }

    /// Q5_0/Q5_1's packing of 32 five-bit levels: low nibbles as [`nibbles_capped`] (without
    /// the cap, which the caller applies), and the fifth bits as a little-endian u32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn q5_pack(l: __m256i) -> ([u8; 4], [u8; 16]) {
        let low = _mm256_and_si256(l, _mm256_set1_epi8(0x0F));
        let lo = _mm256_castsi256_si128(low);
        let hi = _mm_slli_epi16::<4>(_mm256_extracti128_si256::<1>(low));
        let mut qs = [0u8; 16];
        // SAFETY: `qs` holds 16 bytes; unaligned store.
        unsafe { _mm_storeu_si128(qs.as_mut_ptr().cast(), _mm_or_si128(lo, hi)) };
        // Bit 4 of each byte to bit 7 (what spills in from the byte below stays in bits 0-2).
        let qh = _mm256_movemask_epi8(_mm256_slli_epi16::<3>(l)) as u32;
        (qh.to_le_bytes(), qs)
    }

    /// The signed-byte minimum of each level and `cap`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn cap(l: __m256i, cap: i8) -> __m256i {
        _mm256_min_epi8(l, _mm256_set1_epi8(cap))
    }

    /// Stores 32 levels.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn store32(l: __m256i, out: &mut [u8; 32]) {
        // SAFETY: `out` holds 32 bytes; unaligned store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), l) }
    }

    /// f32 to IEEE half with the CPU's conversion (round to nearest even), which equals
    /// ggml's `ggml_compute_fp32_to_fp16` for every non-NaN value (tested in `fp`); the
    /// kernels never convert a NaN.
    #[inline]
    #[target_feature(enable = "f16c")]
    pub(crate) fn f16(v: f32) -> crate::fp::Half {
        let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v));
        crate::fp::Half((_mm_extract_epi16::<0>(h) as u16).to_le_bytes())
    }
}

/// AVX2 building blocks: a block is four vectors of eight weights.
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    pub(crate) use super::bytes::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load4(x: &[f32; 32]) -> [__m256; 4] {
        let p = x.as_ptr();
        // SAFETY: `x` holds 32 floats; unaligned loads.
        unsafe {
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn abs(v: __m256) -> __m256 {
        _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hmin(v: __m256) -> f32 {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_shuffle_ps::<1>(m, m));
        _mm_cvtss_f32(m)
    }

    /// Bit `j` set where weight `j` equals `target` (as floats: both zeros match 0.0).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn eq_mask(v: [__m256; 4], target: f32) -> u32 {
        let t = _mm256_set1_ps(target);
        let mut m = 0u32;
        for k in 0..4 {
            let e = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v[k], t)) as u32;
            m |= e << (8 * k);
        }
        m
    }

    /// The first weight with the largest magnitude (0.0 when all are zero), as ggml's
    /// `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` finds it.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn signed_absmax(x: &[f32; 32]) -> f32 {
        let v = load4(x);
        let a = [abs(v[0]), abs(v[1]), abs(v[2]), abs(v[3])];
        let amax = hmax(_mm256_max_ps(
            _mm256_max_ps(a[0], a[1]),
            _mm256_max_ps(a[2], a[3]),
        ));
        if amax == 0.0 {
            return 0.0;
        }
        let m = eq_mask(a, amax);
        x[m.trailing_zeros() as usize & 31]
    }

    /// The largest magnitude (ggml's `amax = MAX(amax, fabsf(v))`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn amax(x: &[f32; 32]) -> f32 {
        let v = load4(x);
        let a = [abs(v[0]), abs(v[1]), abs(v[2]), abs(v[3])];
        hmax(_mm256_max_ps(
            _mm256_max_ps(a[0], a[1]),
            _mm256_max_ps(a[2], a[3]),
        ))
    }

    /// `(min, max)` as ggml's `if (v < min) min = v; if (v > max) max = v;` from
    /// `FLT_MAX`/`-FLT_MAX` finds them: a zero extreme is the first zero, with its sign.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn min_max(x: &[f32; 32]) -> (f32, f32) {
        let v = load4(x);
        let mut min = hmin(_mm256_min_ps(
            _mm256_min_ps(v[0], v[1]),
            _mm256_min_ps(v[2], v[3]),
        ));
        let mut max = hmax(_mm256_max_ps(
            _mm256_max_ps(v[0], v[1]),
            _mm256_max_ps(v[2], v[3]),
        ));
        if min == 0.0 || max == 0.0 {
            let first_zero = x[eq_mask(v, 0.0).trailing_zeros() as usize & 31];
            if min == 0.0 {
                min = first_zero;
            }
            if max == 0.0 {
                max = first_zero;
            }
        }
        (min, max)
    }

    /// 32 levels `(int8_t)((x[j] - min) * id + bias)` (`SUB == false`: `x[j] * id + bias`).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn trunc_levels<const SUB: bool>(
        x: &[f32; 32],
        min: f32,
        id: f32,
        bias: f32,
    ) -> __m256i {
        let (vmin, vid, vbias) = (
            _mm256_set1_ps(min),
            _mm256_set1_ps(id),
            _mm256_set1_ps(bias),
        );
        let v = load4(x);
        let mut i = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = if SUB { _mm256_sub_ps(v[k], vmin) } else { v[k] };
            let q = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, vid), vbias));
            i[k] = _mm256_and_si256(q, _mm256_set1_epi32(0xFF));
        }
        to_bytes(i)
    }

    /// 32 levels `(int8_t)roundf(x[j] * id)` for a finite `id` (so `|x*id|` stays near the
    /// format's range): `roundf` rounds halves away from zero, done here on the truncated
    /// value and the (exact) fraction.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn round_levels(x: &[f32; 32], id: f32) -> __m256i {
        let vid = _mm256_set1_ps(id);
        let (half, mhalf) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
        let x = load4(x);
        let mut i = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = _mm256_mul_ps(x[k], vid);
            let t = _mm256_cvttps_epi32(v);
            let frac = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
            // Comparison masks are -1 where true: subtracting the first adds one.
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, mhalf));
            let r = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
            i[k] = _mm256_and_si256(r, _mm256_set1_epi32(0xFF));
        }
        to_bytes(i)
    }

    /// Four vectors of eight values 0..=255 to 32 bytes in weight order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn to_bytes(i: [__m256i; 4]) -> __m256i {
        let p01 = _mm256_packus_epi32(i[0], i[1]);
        let p23 = _mm256_packus_epi32(i[2], i[3]);
        let b = _mm256_packus_epi16(p01, p23);
        _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// AVX-512 building blocks: a block is two vectors of sixteen weights.
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    pub(crate) use super::bytes::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load2(x: &[f32; 32]) -> [__m512; 2] {
        let p = x.as_ptr();
        // SAFETY: `x` holds 32 floats; unaligned loads.
        unsafe { [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))] }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn eq_mask(v: [__m512; 2], target: f32) -> u32 {
        let t = _mm512_set1_ps(target);
        let lo = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v[0], t) as u32;
        let hi = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v[1], t) as u32;
        lo | (hi << 16)
    }

    /// See [`avx2::signed_absmax`](super::avx2::signed_absmax).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn signed_absmax(x: &[f32; 32]) -> f32 {
        let v = load2(x);
        let a = [_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])];
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(a[0], a[1]));
        if amax == 0.0 {
            return 0.0;
        }
        x[eq_mask(a, amax).trailing_zeros() as usize & 31]
    }

    /// See [`avx2::amax`](super::avx2::amax).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn amax(x: &[f32; 32]) -> f32 {
        let v = load2(x);
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])))
    }

    /// See [`avx2::min_max`](super::avx2::min_max).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn min_max(x: &[f32; 32]) -> (f32, f32) {
        let v = load2(x);
        let mut min = _mm512_reduce_min_ps(_mm512_min_ps(v[0], v[1]));
        let mut max = _mm512_reduce_max_ps(_mm512_max_ps(v[0], v[1]));
        if min == 0.0 || max == 0.0 {
            let first_zero = x[eq_mask(v, 0.0).trailing_zeros() as usize & 31];
            if min == 0.0 {
                min = first_zero;
            }
            if max == 0.0 {
                max = first_zero;
            }
        }
        (min, max)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn join(lo: __m512i, hi: __m512i) -> __m256i {
        // vpmovdb: each 32-bit integer truncated to its low byte.
        _mm256_set_m128i(_mm512_cvtepi32_epi8(hi), _mm512_cvtepi32_epi8(lo))
    }

    /// See [`avx2::trunc_levels`](super::avx2::trunc_levels).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) fn trunc_levels<const SUB: bool>(
        x: &[f32; 32],
        min: f32,
        id: f32,
        bias: f32,
    ) -> __m256i {
        let (vmin, vid, vbias) = (
            _mm512_set1_ps(min),
            _mm512_set1_ps(id),
            _mm512_set1_ps(bias),
        );
        let v = load2(x);
        let mut i = [_mm512_setzero_si512(); 2];
        for k in 0..2 {
            let v = if SUB { _mm512_sub_ps(v[k], vmin) } else { v[k] };
            i[k] = _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(v, vid), vbias));
        }
        join(i[0], i[1])
    }

    /// See [`avx2::round_levels`](super::avx2::round_levels).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) fn round_levels(x: &[f32; 32], id: f32) -> __m256i {
        let vid = _mm512_set1_ps(id);
        let (half, mhalf) = (_mm512_set1_ps(0.5), _mm512_set1_ps(-0.5));
        let one = _mm512_set1_epi32(1);
        let x = load2(x);
        let mut i = [_mm512_setzero_si512(); 2];
        for k in 0..2 {
            let v = _mm512_mul_ps(x[k], vid);
            let t = _mm512_cvttps_epi32(v);
            let frac = _mm512_sub_ps(v, _mm512_cvtepi32_ps(t));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
            let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(frac, mhalf);
            let t = _mm512_mask_add_epi32(t, up, t, one);
            i[k] = _mm512_mask_sub_epi32(t, down, t, one);
        }
        join(i[0], i[1])
    }
}

#[cfg(test)]
mod tests {
    use crate::fp::f32_to_f16;

    /// F16C's conversion is ggml's for every non-NaN f32 (the kernels never convert a NaN):
    /// a sweep over the bit patterns, both signs, every exponent, plus the edges.
    #[test]
    fn f16c_conversion_is_ggmls_for_non_nan_values() {
        if !crate::simd::has_avx2() {
            return;
        }
        let mut bits: Vec<u32> = (0..u32::MAX).step_by(4099).collect();
        bits.extend([
            0,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x477f_f000,
            0x477f_efff,
        ]);
        bits.extend((0x3300_0000u32..0x3900_0000).step_by(97)); // half subnormals and ties
        for b in bits {
            let v = f32::from_bits(b);
            if v.is_nan() {
                continue;
            }
            // SAFETY: the CPU has F16C (checked above).
            let h = unsafe { super::bytes::f16(v) };
            assert_eq!(h.bits(), f32_to_f16(v), "f32 bits {b:#010x}");
        }
    }
}
