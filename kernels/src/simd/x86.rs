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

/// The K-quants' scale searches with explicit AVX2 vectors: `V` vectors of eight lanes, one
/// group of weights per lane (`8 * V` groups side by side). Each lane runs exactly the
/// sequence of operations of the portable lane searches in
/// [`search`](crate::kquants::search) (which are ggml's, per group): IEEE adds, multiplies and
/// divides in ggml's order, ggml's `nearest_int` trick, comparisons with the same NaN
/// behaviour as Rust's, blends for branches. So the levels, scales and mins are bit-identical.
///
/// The groups' weights are transposed on entry (weight `i` of every group in one vector), so
/// the sums over a group's weights run along the weights, in order, one lane per group; more
/// than one vector gives the CPU independent chains to overlap.
pub(crate) mod lanes {
    use crate::kquants::search::{MinSearch, GROUP_MAX_EPS};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn div(a: __m256, b: __m256) -> __m256 {
        _mm256_div_ps(a, b)
    }

    /// `if mask { t } else { f }` per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sel(mask: __m256, t: __m256, f: __m256) -> __m256 {
        _mm256_blendv_ps(f, t, mask)
    }

    /// `a > b` (false with a NaN, as in Rust).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn gt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)
    }

    /// `a < b` (false with a NaN).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lt(a: __m256, b: __m256) -> __m256 {
        _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn and(a: __m256, b: __m256) -> __m256 {
        _mm256_and_ps(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn abs(v: __m256) -> __m256 {
        _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
    }

    /// ggml's `nearest_int`: `(v + 12582912).bits & 0x7fffff - 0x400000`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn nearest(v: __m256) -> __m256i {
        let t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12_582_912.0)));
        _mm256_sub_epi32(
            _mm256_and_si256(t, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        )
    }

    /// `v.clamp(lo, hi)` for integers.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn clamp(v: __m256i, lo: i32, hi: i32) -> __m256i {
        _mm256_min_epi32(
            _mm256_max_epi32(v, _mm256_set1_epi32(lo)),
            _mm256_set1_epi32(hi),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn to_f32(v: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(v)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(v: &[f32; 8]) -> __m256 {
        // SAFETY: 8 floats; unaligned load.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store(v: __m256) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: 8 floats; unaligned store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store_i(v: __m256i) -> [i32; 8] {
        let mut out = [0i32; 8];
        // SAFETY: 8 integers; unaligned store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    }

    /// `x` holds `8 * V` groups of `N` values, group `g` at `x[N * g..]`; returns vector
    /// `v`, weight `i` as `t[v][i]`, lane `k` from group `8 * v + k`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose<const N: usize, const V: usize>(x: &[f32]) -> [[__m256; N]; V] {
        let x = &x[..8 * V * N];
        let mut t = [[_mm256_setzero_ps(); N]; V];
        for (v, tv) in t.iter_mut().enumerate() {
            for (i, ti) in tv.iter_mut().enumerate() {
                let lane: [f32; 8] = std::array::from_fn(|k| x[N * (8 * v + k) + i]);
                *ti = load(&lane);
            }
        }
        t
    }

    /// ggml's `max`/`amax` loop: the first value with the largest magnitude per lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn signed_absmax<const N: usize>(x: &[__m256; N]) -> (__m256, __m256) {
        let mut amax = _mm256_setzero_ps();
        let mut max = _mm256_setzero_ps();
        for &xi in x {
            let ax = abs(xi);
            let g = gt(ax, amax);
            amax = sel(g, ax, amax);
            max = sel(g, xi, max);
        }
        (amax, max)
    }

    /// [`make_qkx_lanes`](crate::kquants::search::make_qkx_lanes) for `8 * V` groups of `N`
    /// weights: writes the levels into `out` and the (positive) mins into `the_min`, the
    /// scales into `scales` (each `8 * V` long, `out` `N * 8 * V`).
    #[inline]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn qkx<const N: usize, const V: usize, const QKX3: bool>(
        nmax: i32,
        x: &[f32],
        weights: &[f32],
        out: &mut [u8],
        the_min: &mut [f32],
        scales: &mut [f32],
        p: MinSearch,
    ) {
        let xt = transpose::<N, V>(x);
        let wt = transpose::<N, V>(weights);
        let zero = _mm256_setzero_ps();
        let nmaxf = nmax as f32;
        let vnmax = splat(nmaxf);
        let err = |d: __m256| if p.use_mad { abs(d) } else { mul(d, d) };
        let init_level = |iscale: __m256, xm: __m256| clamp(nearest(mul(iscale, xm)), 0, nmax);
        let level = |iscale: __m256, xm: __m256| {
            let v = mul(iscale, xm);
            if QKX3 {
                // nearest_int(v < nmax ? v : nmax), 0 unless v > 0.
                let r = nearest(_mm256_min_ps(v, vnmax));
                _mm256_and_si256(r, _mm256_castps_si256(gt(v, zero)))
            } else {
                clamp(nearest(v), 0, nmax)
            }
        };
        let mut min = [zero; V];
        let mut max = [zero; V];
        let mut sum_w = [zero; V];
        let mut sum_x = [zero; V];
        let mut degenerate = [zero; V];
        for v in 0..V {
            let (x, w) = (&xt[v], &wt[v]);
            let (mut mn, mut mx, mut sw) = (x[0], x[0], w[0]);
            let mut sx = mul(sw, x[0]);
            for i in 1..N {
                mn = _mm256_min_ps(x[i], mn);
                mx = _mm256_max_ps(x[i], mx);
                sw = add(sw, w[i]);
                sx = add(sx, mul(w[i], x[i]));
            }
            mn = sel(gt(mn, zero), zero, mn);
            degenerate[v] = if QKX3 {
                _mm256_cmp_ps::<_CMP_LE_OQ>(mx, mn)
            } else {
                _mm256_cmp_ps::<_CMP_EQ_OQ>(mx, mn)
            };
            (min[v], max[v], sum_w[v], sum_x[v]) = (mn, mx, sw, sx);
        }
        let min0 = min;
        let mut iscale0 = [zero; V];
        let mut scale = [zero; V];
        let mut best_error = [zero; V];
        for v in 0..V {
            iscale0[v] = div(vnmax, sub(max[v], min[v]));
            scale[v] = div(splat(1.0), iscale0[v]);
        }
        for i in 0..N {
            for v in 0..V {
                let xi = xt[v][i];
                let l = to_f32(init_level(iscale0[v], sub(xi, min0[v])));
                let diff = sub(add(mul(scale[v], l), min0[v]), xi);
                best_error[v] = add(best_error[v], mul(wt[v][i], err(diff)));
            }
        }
        let mut won = [zero; V];
        let mut win_iscale = [zero; V];
        let mut win_min = [zero; V];
        let steps = if p.nstep < 1 { 0 } else { p.nstep + 1 };
        let mut lf = [[zero; N]; V];
        for is in 0..steps {
            let num = splat(p.rmin + p.rdelta * is as f32 + nmaxf);
            let mut iscale = [zero; V];
            let (mut sum_l, mut sum_l2, mut sum_xl) = ([zero; V], [zero; V], [zero; V]);
            for v in 0..V {
                iscale[v] = div(num, sub(max[v], min[v]));
            }
            for i in 0..N {
                for v in 0..V {
                    let xi = xt[v][i];
                    let l = to_f32(level(iscale[v], sub(xi, min[v])));
                    lf[v][i] = l;
                    let wl = mul(wt[v][i], l);
                    sum_l[v] = add(sum_l[v], wl);
                    sum_l2[v] = add(sum_l2[v], mul(wl, l));
                    sum_xl[v] = add(sum_xl[v], mul(wl, xi));
                }
            }
            let mut this_scale = [zero; V];
            let mut this_min = [zero; V];
            let mut ok = [zero; V];
            for v in 0..V {
                let (sl, sl2, sxl) = (sum_l[v], sum_l2[v], sum_xl[v]);
                let d = sub(mul(sum_w[v], sl2), mul(sl, sl));
                ok[v] = gt(d, zero);
                let s = div(sub(mul(sum_w[v], sxl), mul(sum_x[v], sl)), d);
                let m = div(sub(mul(sl2, sum_x[v]), mul(sl, sxl)), d);
                let clamp_min = gt(m, zero);
                this_scale[v] = sel(clamp_min, div(sxl, sl2), s);
                this_min[v] = sel(clamp_min, zero, m);
            }
            let mut cur_error = [zero; V];
            for i in 0..N {
                for v in 0..V {
                    let diff = sub(add(mul(this_scale[v], lf[v][i]), this_min[v]), xt[v][i]);
                    cur_error[v] = add(cur_error[v], mul(wt[v][i], err(diff)));
                }
            }
            for v in 0..V {
                let take = and(ok[v], lt(cur_error[v], best_error[v]));
                if _mm256_movemask_ps(take) == 0 {
                    continue;
                }
                won[v] = _mm256_or_ps(won[v], take);
                win_iscale[v] = sel(take, iscale[v], win_iscale[v]);
                win_min[v] = sel(take, min[v], win_min[v]);
                best_error[v] = sel(take, cur_error[v], best_error[v]);
                scale[v] = sel(take, this_scale[v], scale[v]);
                min[v] = sel(take, this_min[v], min[v]);
            }
        }
        let (out, the_min, scales) = (
            &mut out[..N * 8 * V],
            &mut the_min[..8 * V],
            &mut scales[..8 * V],
        );
        for v in 0..V {
            let mut levels = [[0i32; 8]; N];
            for i in 0..N {
                let xi = xt[v][i];
                let lw = level(win_iscale[v], sub(xi, win_min[v]));
                let l0 = init_level(iscale0[v], sub(xi, min0[v]));
                let l = _mm256_blendv_epi8(l0, lw, _mm256_castps_si256(won[v]));
                levels[i] = store_i(_mm256_andnot_si256(_mm256_castps_si256(degenerate[v]), l));
            }
            for k in 0..8 {
                for i in 0..N {
                    out[N * (8 * v + k) + i] = levels[i][k] as u8;
                }
            }
            let m = store(sel(degenerate[v], min0[v], min[v]));
            let s = store(sel(degenerate[v], zero, scale[v]));
            for k in 0..8 {
                the_min[8 * v + k] = -m[k];
                scales[8 * v + k] = s[k];
            }
        }
    }

    /// [`make_qx_quants_lanes`](crate::kquants::search::make_qx_quants_lanes) for `8 * V`
    /// groups of `N` weights: writes `l + nmax` into `out` (`N * 8 * V`), the scales into
    /// `scales` (`8 * V`). `qw`: the importance weights, else `x * x`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn qx<const N: usize, const V: usize>(
        nmax: i32,
        x: &[f32],
        out: &mut [i8],
        qw: Option<&[f32]>,
        scales: &mut [f32],
    ) {
        const BATCH: usize = 6;
        let xt = transpose::<N, V>(x);
        let wt = match qw {
            Some(q) => transpose::<N, V>(q),
            None => {
                let mut w = xt;
                for wv in w.iter_mut() {
                    for wi in wv.iter_mut() {
                        *wi = mul(*wi, *wi);
                    }
                }
                w
            }
        };
        let zero = _mm256_setzero_ps();
        let nmaxf = nmax as f32;
        let level = |iscale: __m256, x: __m256| clamp(nearest(mul(iscale, x)), -nmax, nmax - 1);
        let mut amax = [zero; V];
        let mut max = [zero; V];
        let mut win = [zero; V];
        let mut scale = [zero; V];
        let mut best = [zero; V];
        for v in 0..V {
            (amax[v], max[v]) = signed_absmax(&xt[v]);
            win[v] = div(splat(-nmaxf), max[v]);
        }
        // w * x, as ggml's `w*x[i]*l` computes it first.
        let mut wx = [[zero; N]; V];
        for v in 0..V {
            for i in 0..N {
                wx[v][i] = mul(wt[v][i], xt[v][i]);
            }
        }
        {
            let (mut sumlx, mut suml2) = ([zero; V], [zero; V]);
            for i in 0..N {
                for v in 0..V {
                    let l = to_f32(level(win[v], xt[v][i]));
                    sumlx[v] = add(sumlx[v], mul(wx[v][i], l));
                    suml2[v] = add(suml2[v], mul(mul(wt[v][i], l), l));
                }
            }
            for v in 0..V {
                let nz = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2[v], zero);
                scale[v] = sel(nz, div(sumlx[v], suml2[v]), zero);
                best[v] = mul(scale[v], sumlx[v]);
            }
        }
        // The 18 trial scales, is = -9..=-1, 1..=9, in ggml's order, in batches.
        for b in 0..18 / BATCH {
            let mut iscale = [[zero; V]; BATCH];
            for (t, it) in iscale.iter_mut().enumerate() {
                let kt = b * BATCH + t;
                let is = if kt < 9 { kt as i32 - 9 } else { kt as i32 - 8 };
                let num = splat(-(nmaxf + 0.1f32 * is as f32));
                for v in 0..V {
                    it[v] = div(num, max[v]);
                }
            }
            let (mut slx, mut sl2) = ([[zero; V]; BATCH], [[zero; V]; BATCH]);
            for i in 0..N {
                for t in 0..BATCH {
                    for v in 0..V {
                        let l = to_f32(level(iscale[t][v], xt[v][i]));
                        slx[t][v] = add(slx[t][v], mul(wx[v][i], l));
                        sl2[t][v] = add(sl2[t][v], mul(mul(wt[v][i], l), l));
                    }
                }
            }
            for t in 0..BATCH {
                for v in 0..V {
                    let (sx, s2) = (slx[t][v], sl2[t][v]);
                    let take = and(gt(s2, zero), gt(mul(sx, sx), mul(best[v], s2)));
                    let s = div(sx, s2);
                    scale[v] = sel(take, s, scale[v]);
                    best[v] = sel(take, mul(s, sx), best[v]);
                    win[v] = sel(take, iscale[t][v], win[v]);
                }
            }
        }
        let (out, scales) = (&mut out[..N * 8 * V], &mut scales[..8 * V]);
        for v in 0..V {
            let zero_group = lt(amax[v], splat(GROUP_MAX_EPS));
            let mut lt_ = [[0i32; 8]; N];
            for i in 0..N {
                let l = _mm256_add_epi32(level(win[v], xt[v][i]), _mm256_set1_epi32(nmax));
                lt_[i] = store_i(_mm256_andnot_si256(_mm256_castps_si256(zero_group), l));
            }
            for k in 0..8 {
                for i in 0..N {
                    out[N * (8 * v + k) + i] = lt_[i][k] as i8;
                }
            }
            let s = store(sel(zero_group, zero, scale[v]));
            scales[8 * v..8 * v + 8].copy_from_slice(&s);
        }
    }

    /// [`make_q3_quants_lanes`](crate::kquants::search::make_q3_quants_lanes) (`nmax == 4`)
    /// for `8 * V` sub-blocks of 16 weights: writes `l + 4` (0 for an all-zero sub-block)
    /// into `out` (`16 * 8 * V`), the scales into `scales` (`8 * V`).
    ///
    /// A vector whose lanes all went through a pass without a change is left alone from then
    /// on (another pass would change nothing), as ggml stops each sub-block's passes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn q3<const V: usize>(x: &[f32], out: &mut [i8], scales: &mut [f32]) {
        const N: usize = 16;
        const NMAX: i32 = 4;
        let xt = transpose::<N, V>(x);
        let zero = _mm256_setzero_ps();
        let mut amax = [zero; V];
        let mut sumlx = [zero; V];
        let mut suml2 = [zero; V];
        let mut l = [[zero; N]; V];
        let mut w = [[zero; N]; V];
        let mut wx = [[zero; N]; V];
        for v in 0..V {
            let max;
            (amax[v], max) = signed_absmax(&xt[v]);
            let iscale = div(splat(-(NMAX as f32)), max);
            for i in 0..N {
                let xi = xt[v][i];
                w[v][i] = mul(xi, xi);
                wx[v][i] = mul(w[v][i], xi);
                let li = to_f32(clamp(nearest(mul(iscale, xi)), -NMAX, NMAX - 1));
                l[v][i] = li;
                sumlx[v] = add(sumlx[v], mul(wx[v][i], li));
                suml2[v] = add(suml2[v], mul(mul(w[v][i], li), li));
            }
        }
        let mut active = [true; V];
        for _ in 0..5 {
            let mut changed = [zero; V];
            for i in 0..N {
                for v in 0..V {
                    if !active[v] {
                        continue;
                    }
                    let (xi, wi, wxi, li) = (xt[v][i], w[v][i], wx[v][i], l[v][i]);
                    let slx0 = sub(sumlx[v], mul(wxi, li));
                    let sl20 = sub(suml2[v], mul(mul(wi, li), li));
                    let nl = to_f32(clamp(nearest(div(mul(xi, sl20), slx0)), -NMAX, NMAX - 1));
                    let slx = add(slx0, mul(wxi, nl));
                    let sl2 = add(sl20, mul(mul(wi, nl), nl));
                    let better = gt(
                        mul(mul(slx, slx), suml2[v]),
                        mul(mul(sumlx[v], sumlx[v]), sl2),
                    );
                    let take = and(
                        and(gt(slx0, zero), _mm256_cmp_ps::<_CMP_NEQ_UQ>(nl, li)),
                        and(gt(sl2, zero), better),
                    );
                    l[v][i] = sel(take, nl, li);
                    sumlx[v] = sel(take, slx, sumlx[v]);
                    suml2[v] = sel(take, sl2, suml2[v]);
                    changed[v] = _mm256_or_ps(changed[v], take);
                }
            }
            for v in 0..V {
                active[v] = active[v] && _mm256_movemask_ps(changed[v]) != 0;
            }
            if !active.iter().any(|&a| a) {
                break;
            }
        }
        let (out, scales) = (&mut out[..N * 8 * V], &mut scales[..8 * V]);
        for v in 0..V {
            let zero_group = lt(amax[v], splat(GROUP_MAX_EPS));
            let mut lt_ = [[0i32; 8]; N];
            for i in 0..N {
                let li = _mm256_add_epi32(_mm256_cvttps_epi32(l[v][i]), _mm256_set1_epi32(NMAX));
                lt_[i] = store_i(_mm256_andnot_si256(_mm256_castps_si256(zero_group), li));
            }
            for k in 0..8 {
                for i in 0..N {
                    out[N * (8 * v + k) + i] = lt_[i][k] as i8;
                }
            }
            let use_scale = _mm256_andnot_ps(zero_group, gt(suml2[v], zero));
            let s = store(sel(use_scale, div(sumlx[v], suml2[v]), zero));
            scales[8 * v..8 * v + 8].copy_from_slice(&s);
        }
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
