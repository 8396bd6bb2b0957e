//! x86-64 kernels of the i-quants' searches with AVX2 ([`avx2`]) and AVX-512 ([`avx512`]),
//! called through [`super::iq`]. Each gives exactly what the scalar code gives: lanes run
//! across independent trial scales, weights or grid points; each lane accumulates its sums in
//! ggml's order with separate multiplies and adds.

use crate::iquants::iq4_nl::KVALUES_IQ4NL;

/// `kvalues_iq4nl` as floats, and shifted by one (`[k]` holds level `k + 1`; the last is
/// padding), for the lookups of a lane's two candidate levels.
const IQ4_LO: [f32; 16] = {
    let mut t = [0.0f32; 16];
    let mut k = 0;
    while k < 16 {
        t[k] = KVALUES_IQ4NL[k] as f32;
        k += 1;
    }
    t
};
const IQ4_HI: [f32; 16] = {
    let mut t = [0.0f32; 16];
    let mut k = 0;
    while k < 15 {
        t[k] = KVALUES_IQ4NL[k + 1] as f32;
        k += 1;
    }
    t[15] = KVALUES_IQ4NL[15] as f32;
    t
};

/// IQ4_NL's levels with AVX2.
pub(crate) mod avx2 {
    use super::{IQ4_HI, IQ4_LO};
    use std::arch::x86_64::*;

    /// ggml's `best_index_int8(16, kvalues_iq4nl, x)` in 8 lanes: the level index and the
    /// level as a float.
    ///
    /// The bisection ends at the `ml` with `val[ml] <= x < val[ml + 1]`, which is the number
    /// of levels 1..=14 that `x` is not below (a NaN is below none, so it ends at 14 as the
    /// bisection does); then `x - val[ml] < val[ml + 1] - x` picks the lower one. Values at or
    /// beyond the outer levels reach the same answer as ggml's early returns (0 and 15).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn iq4_nearest(x: __m256) -> (__m256i, __m256) {
        let mut ml = _mm256_setzero_si256();
        for k in 1..15 {
            let not_below = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(IQ4_LO[k]));
            ml = _mm256_sub_epi32(ml, _mm256_castps_si256(not_below));
        }
        // SAFETY: the tables hold 16 floats; unaligned loads.
        let (lo_a, lo_b, hi_a, hi_b) = unsafe {
            (
                _mm256_loadu_ps(IQ4_LO.as_ptr()),
                _mm256_loadu_ps(IQ4_LO.as_ptr().add(8)),
                _mm256_loadu_ps(IQ4_HI.as_ptr()),
                _mm256_loadu_ps(IQ4_HI.as_ptr().add(8)),
            )
        };
        let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(ml, _mm256_set1_epi32(7)));
        let lo = _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(lo_a, ml),
            _mm256_permutevar8x32_ps(lo_b, ml),
            upper,
        );
        let hi = _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(hi_a, ml),
            _mm256_permutevar8x32_ps(hi_b, ml),
            upper,
        );
        let take_lo = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(x, lo), _mm256_sub_ps(hi, x));
        let index = _mm256_add_epi32(
            _mm256_add_epi32(ml, _mm256_set1_epi32(1)),
            _mm256_castps_si256(take_lo),
        );
        (index, _mm256_blendv_ps(hi, lo, take_lo))
    }

    /// See [`iq4_trial_sums`](crate::simd::iq::iq4_trial_sums): trials 0..8 and 8..16 in two
    /// vectors.
    #[target_feature(enable = "avx2")]
    pub(crate) fn iq4_trial_sums(
        xb: &[f32; 32],
        weight: &[f32; 32],
        ids: &[f32; 16],
    ) -> ([f32; 16], [f32; 16]) {
        // SAFETY: `ids` holds 16 floats; unaligned loads.
        let id = unsafe {
            [
                _mm256_loadu_ps(ids.as_ptr()),
                _mm256_loadu_ps(ids.as_ptr().add(8)),
            ]
        };
        let mut sumqx = [_mm256_setzero_ps(); 2];
        let mut sumq2 = [_mm256_setzero_ps(); 2];
        for j in 0..32 {
            let x = _mm256_set1_ps(xb[j]);
            let w = _mm256_set1_ps(weight[j]);
            for h in 0..2 {
                let (_, q) = iq4_nearest(_mm256_mul_ps(id[h], x));
                let wq = _mm256_mul_ps(w, q);
                sumqx[h] = _mm256_add_ps(sumqx[h], _mm256_mul_ps(wq, x));
                sumq2[h] = _mm256_add_ps(sumq2[h], _mm256_mul_ps(wq, q));
            }
        }
        let mut out = ([0.0f32; 16], [0.0f32; 16]);
        // SAFETY: each output holds 16 floats; unaligned stores.
        unsafe {
            for h in 0..2 {
                _mm256_storeu_ps(out.0.as_mut_ptr().add(8 * h), sumqx[h]);
                _mm256_storeu_ps(out.1.as_mut_ptr().add(8 * h), sumq2[h]);
            }
        }
        out
    }

    /// See [`iq4_indices`](crate::simd::iq::iq4_indices).
    #[target_feature(enable = "avx2")]
    pub(crate) fn iq4_indices(x: &[f32; 32], id: f32) -> [u8; 32] {
        let vid = _mm256_set1_ps(id);
        let mut idx = [0i32; 32];
        for h in 0..4 {
            // SAFETY: `x` and `idx` hold 32 values; unaligned load and store.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(8 * h));
                let (i, _) = iq4_nearest(_mm256_mul_ps(vid, v));
                _mm256_storeu_si256(idx.as_mut_ptr().add(8 * h).cast(), i);
            }
        }
        idx.map(|i| i as u8)
    }
    /// See [`pass_bits`](crate::simd::iq::pass_bits): 8 candidates per vector.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn pass_bits<const N: usize>(qx: &[f32; N], q2: &[f32; N], score: f32) -> u32 {
        let s = _mm256_set1_ps(score);
        let mut m = 0u32;
        for c in 0..N / 8 {
            // SAFETY: `c * 8 + 8 <= N`; unaligned loads.
            let (x, w) = unsafe {
                (
                    _mm256_loadu_ps(qx.as_ptr().add(8 * c)),
                    _mm256_loadu_ps(q2.as_ptr().add(8 * c)),
                )
            };
            let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(w, _mm256_setzero_ps());
            let better = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(x, x), _mm256_mul_ps(s, w));
            m |= (_mm256_movemask_ps(_mm256_and_ps(pos, better)) as u32) << (8 * c);
        }
        m
    }
}

/// IQ4_NL's levels with AVX-512.
pub(crate) mod avx512 {
    use super::{IQ4_HI, IQ4_LO};
    use std::arch::x86_64::*;

    /// [`avx2::iq4_nearest`](super::avx2) in 16 lanes, the levels looked up with one
    /// permute each.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn iq4_nearest(x: __m512, lo_t: __m512, hi_t: __m512) -> (__m512i, __m512) {
        let one = _mm512_set1_epi32(1);
        let mut ml = _mm512_setzero_si512();
        for k in 1..15 {
            let not_below = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(IQ4_LO[k]));
            ml = _mm512_mask_add_epi32(ml, not_below, ml, one);
        }
        let lo = _mm512_permutexvar_ps(ml, lo_t);
        let hi = _mm512_permutexvar_ps(ml, hi_t);
        let take_lo = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_sub_ps(x, lo), _mm512_sub_ps(hi, x));
        let mu = _mm512_add_epi32(ml, one);
        let index = _mm512_mask_sub_epi32(mu, take_lo, mu, one);
        (index, _mm512_mask_blend_ps(take_lo, hi, lo))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tables() -> (__m512, __m512) {
        // SAFETY: the tables hold 16 floats; unaligned loads.
        unsafe {
            (
                _mm512_loadu_ps(IQ4_LO.as_ptr()),
                _mm512_loadu_ps(IQ4_HI.as_ptr()),
            )
        }
    }

    /// See [`iq4_trial_sums`](crate::simd::iq::iq4_trial_sums): the 16 trials in one vector.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn iq4_trial_sums(
        xb: &[f32; 32],
        weight: &[f32; 32],
        ids: &[f32; 16],
    ) -> ([f32; 16], [f32; 16]) {
        let (lo_t, hi_t) = tables();
        // SAFETY: `ids` holds 16 floats; unaligned load.
        let id = unsafe { _mm512_loadu_ps(ids.as_ptr()) };
        let mut sumqx = _mm512_setzero_ps();
        let mut sumq2 = _mm512_setzero_ps();
        for j in 0..32 {
            let x = _mm512_set1_ps(xb[j]);
            let (_, q) = iq4_nearest(_mm512_mul_ps(id, x), lo_t, hi_t);
            let wq = _mm512_mul_ps(_mm512_set1_ps(weight[j]), q);
            sumqx = _mm512_add_ps(sumqx, _mm512_mul_ps(wq, x));
            sumq2 = _mm512_add_ps(sumq2, _mm512_mul_ps(wq, q));
        }
        let mut out = ([0.0f32; 16], [0.0f32; 16]);
        // SAFETY: each output holds 16 floats; unaligned stores.
        unsafe {
            _mm512_storeu_ps(out.0.as_mut_ptr(), sumqx);
            _mm512_storeu_ps(out.1.as_mut_ptr(), sumq2);
        }
        out
    }

    /// See [`pass_bits`](crate::simd::iq::pass_bits): 8 candidates per vector, as AVX2's
    /// kernel, with the compares into mask registers. The callers write their candidates with
    /// 8-lane stores just before: a 16-lane load of two such stores waits for both to reach the
    /// cache (no store forwarding), which measured slower.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl")]
    pub(crate) fn pass_bits<const N: usize>(qx: &[f32; N], q2: &[f32; N], score: f32) -> u32 {
        let s = _mm256_set1_ps(score);
        let mut m = 0u32;
        for c in 0..N / 8 {
            // SAFETY: `c * 8 + 8 <= N`; unaligned loads.
            let (x, w) = unsafe {
                (
                    _mm256_loadu_ps(qx.as_ptr().add(8 * c)),
                    _mm256_loadu_ps(q2.as_ptr().add(8 * c)),
                )
            };
            let pos = _mm256_cmp_ps_mask::<_CMP_GT_OQ>(w, _mm256_setzero_ps());
            let better = _mm256_mask_cmp_ps_mask::<_CMP_GT_OQ>(
                pos,
                _mm256_mul_ps(x, x),
                _mm256_mul_ps(s, w),
            );
            m |= (better as u32) << (8 * c);
        }
        m
    }

    /// See [`iq4_indices`](crate::simd::iq::iq4_indices).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) fn iq4_indices(x: &[f32; 32], id: f32) -> [u8; 32] {
        let (lo_t, hi_t) = tables();
        let vid = _mm512_set1_ps(id);
        let mut out = [0u8; 32];
        for h in 0..2 {
            // SAFETY: `x` holds 32 floats and `out` 32 bytes; unaligned load and store.
            unsafe {
                let v = _mm512_loadu_ps(x.as_ptr().add(16 * h));
                let (i, _) = iq4_nearest(_mm512_mul_ps(vid, v), lo_t, hi_t);
                _mm_storeu_si128(out.as_mut_ptr().add(16 * h).cast(), _mm512_cvtepi32_epi8(i));
            }
        }
        out
    }
}

// The lattice searches' nearest neighbour in lanes, one grid point per lane, for grids of `D`
// dimensions whose levels are packed `BITS` bits each in a `u16` code.
//
// ggml's error of a point, `d2 += w[i]*diff*diff` with `diff = scale*q[i] - x[i]` summed over
// `i` in order, only ever adds terms that depend on `(i, level)`: the kernels compute each
// dimension's terms for every level once (lanes across levels, the same operations as ggml),
// look them up per point with a permute, and add them in ggml's order. The point kept is the
// first of the least errors below `f32::MAX` (ggml's `if (d2 < best)` from `FLT_MAX`).

/// The lattice searches' nearest neighbour with AVX2, eight points per vector.
pub(crate) mod avx2_grid {
    use std::arch::x86_64::*;

    /// The smallest position `pos` among the lanes holding the least of `best` (each lane's
    /// least error, or `f32::MAX` where none was below it); `None` when every lane is
    /// `f32::MAX`. With `one_vector`, lane `k` holds position `k`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn first_min(best: __m256, pos: __m256i, one_vector: bool) -> Option<usize> {
        let m = _mm_min_ps(
            _mm256_castps256_ps128(best),
            _mm256_extractf128_ps::<1>(best),
        );
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_shuffle_ps::<1>(m, m));
        let min = _mm_cvtss_f32(m);
        if min.partial_cmp(&f32::MAX) != Some(std::cmp::Ordering::Less) {
            return None;
        }
        let at_min = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(best, _mm256_set1_ps(min)));
        if one_vector {
            // Lane k holds position k.
            let m = _mm256_movemask_ps(_mm256_castsi256_ps(at_min)) as u32;
            return Some(m.trailing_zeros() as usize);
        }
        let p = _mm256_blendv_epi8(_mm256_set1_epi32(i32::MAX), pos, at_min);
        let p = _mm_min_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
        let p = _mm_min_epi32(p, _mm_shuffle_epi32::<0b01_00_11_10>(p));
        let p = _mm_min_epi32(p, _mm_shuffle_epi32::<0b10_11_00_01>(p));
        Some(_mm_cvtsi128_si32(p) as usize)
    }

    /// The position in `codes[..n]` of the point nearest `xval` at `scale` (see the comment
    /// above the module). `levels[k]` is the value of level `k & (2^BITS - 1)`; `codes` holds
    /// at least `n` rounded up to 8 entries (those past `n` are never chosen).
    #[target_feature(enable = "avx2")]
    pub(crate) fn nearest<const D: usize, const BITS: u32>(
        levels: &[f32; 16],
        n: usize,
        codes: &[u16],
        xval: &[f32],
        weight: &[f32],
        scale: f32,
    ) -> Option<usize> {
        // SAFETY: `levels` holds 16 floats; unaligned load.
        let q = _mm256_mul_ps(_mm256_set1_ps(scale), unsafe {
            _mm256_loadu_ps(levels.as_ptr())
        });
        let mut terms = [_mm256_setzero_ps(); D];
        for i in 0..D {
            let diff = _mm256_sub_ps(q, _mm256_set1_ps(xval[i]));
            terms[i] = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(weight[i]), diff), diff);
        }
        let mut best = _mm256_set1_ps(f32::MAX);
        let mut best_pos = _mm256_set1_epi32(-1);
        let mut pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let limit = _mm256_set1_epi32(n as i32);
        let mut start = 0;
        while start < n {
            let chunk = &codes[start..start + 8];
            // SAFETY: `chunk` holds 8 u16; unaligned load.
            let c = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) });
            let mut d2 = _mm256_setzero_ps();
            for i in 0..D {
                let idx = _mm256_srlv_epi32(c, _mm256_set1_epi32((BITS as usize * i) as i32));
                d2 = _mm256_add_ps(d2, _mm256_permutevar8x32_ps(terms[i], idx));
            }
            let valid = _mm256_cmpgt_epi32(limit, pos);
            let less = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(d2, best));
            let take = _mm256_and_si256(less, valid);
            best = _mm256_blendv_ps(best, d2, _mm256_castsi256_ps(take));
            best_pos = _mm256_blendv_epi8(best_pos, pos, take);
            pos = _mm256_add_epi32(pos, _mm256_set1_epi32(8));
            start += 8;
        }
        first_min(best, best_pos, n <= 8)
    }
}

/// The lattice searches' nearest neighbour with AVX-512, sixteen points per vector.
pub(crate) mod avx512_grid {
    use std::arch::x86_64::*;

    /// See [`avx2_grid::nearest`](super::avx2_grid::nearest): 16 points per vector.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) fn nearest<const D: usize, const BITS: u32>(
        levels: &[f32; 16],
        n: usize,
        codes: &[u16],
        xval: &[f32],
        weight: &[f32],
        scale: f32,
    ) -> Option<usize> {
        // SAFETY: `levels` holds 16 floats; unaligned load.
        let q = _mm512_mul_ps(_mm512_set1_ps(scale), unsafe {
            _mm512_loadu_ps(levels.as_ptr())
        });
        let mut terms = [_mm512_setzero_ps(); D];
        for i in 0..D {
            let diff = _mm512_sub_ps(q, _mm512_set1_ps(xval[i]));
            terms[i] = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(weight[i]), diff), diff);
        }
        let mut best = _mm512_set1_ps(f32::MAX);
        let mut best_pos = _mm512_set1_epi32(-1);
        let mut pos = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let limit = _mm512_set1_epi32(n as i32);
        let mut start = 0;
        while start < n {
            let chunk = &codes[start..start + 16];
            // SAFETY: `chunk` holds 16 u16; unaligned load.
            let c = _mm512_cvtepu16_epi32(unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) });
            let mut d2 = _mm512_setzero_ps();
            for i in 0..D {
                let idx = _mm512_srlv_epi32(c, _mm512_set1_epi32((BITS as usize * i) as i32));
                d2 = _mm512_add_ps(d2, _mm512_permutexvar_ps(idx, terms[i]));
            }
            let valid = _mm512_cmpgt_epi32_mask(limit, pos);
            let take = _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(valid, d2, best);
            best = _mm512_mask_blend_ps(take, best, d2);
            best_pos = _mm512_mask_blend_epi32(take, best_pos, pos);
            pos = _mm512_add_epi32(pos, _mm512_set1_epi32(16));
            start += 16;
        }
        let min = _mm512_reduce_min_ps(best);
        if min.partial_cmp(&f32::MAX) != Some(std::cmp::Ordering::Less) {
            return None;
        }
        let at_min = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(best, _mm512_set1_ps(min));
        if n <= 16 {
            // One vector: lane k holds position k.
            return Some(at_min.trailing_zeros() as usize);
        }
        Some(_mm512_mask_reduce_min_epi32(at_min, best_pos) as usize)
    }
}

/// Runs `f` with AVX2 enabled (see [`compiled_for`](crate::simd::iq::compiled_for)).
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Runs `f` with AVX-512 enabled (see [`compiled_for`](crate::simd::iq::compiled_for)).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
pub(crate) fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}
