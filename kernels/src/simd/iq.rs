//! The i-quants' SIMD kernels, called per block or per search from the formats' (portable)
//! code: each call is a coarse unit of work (a block's 16 trial scales, a neighbour search), so
//! the dispatch costs one match per call and the kernels themselves are compiled for their
//! level in `iq_x86.rs` (AVX2, AVX-512) and `iq_neon.rs` (NEON).
//!
//! A [`Lanes`] can only be made by [`Lanes::of`], after the CPU was checked for its level, which
//! is what makes the `unsafe` calls of the `#[target_feature]` kernels below sound. At
//! [`Simd::Scalar`] there is no `Lanes`, and the formats run their original scalar code.
//!
//! Every kernel gives exactly the scalar code's result: lanes run across trial scales, weights
//! or grid points, each lane's sums in ggml's order, multiplies never fused with adds.

use super::Simd;

/// A SIMD level this CPU supports, above scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lanes(Level);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Lanes {
    /// The highest level at or below `simd` that this CPU supports, or `None` for scalar.
    #[inline]
    pub(crate) fn of(simd: Simd) -> Option<Lanes> {
        #[cfg(target_arch = "x86_64")]
        {
            if simd == Simd::Avx512 && super::has_avx512() {
                return Some(Lanes(Level::Avx512));
            }
            if simd >= Simd::Avx2 && super::has_avx2() {
                return Some(Lanes(Level::Avx2));
            }
        }
        #[cfg(target_arch = "aarch64")]
        if simd == Simd::Neon && super::has_neon() {
            return Some(Lanes(Level::Neon));
        }
        let _ = simd;
        None
    }
}

/// IQ4_NL's and IQ4_XS's trial scales of one 32-weight block, one per lane: for each
/// `ids[t]`, `sumqx[t] = sum w*q*x` and `sumq2[t] = sum w*q*q` over the block in order, with
/// `q = kvalues_iq4nl[best_index(ids[t]*x)]` (ggml's `quantize_row_iq4_nl_impl` loops).
#[inline]
pub(crate) fn iq4_trial_sums(
    lanes: Lanes,
    xb: &[f32; 32],
    weight: &[f32; 32],
    ids: &[f32; 16],
) -> ([f32; 16], [f32; 16]) {
    match lanes.0 {
        // SAFETY: `Lanes` holds a level this CPU supports (checked in `Lanes::of`).
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { super::iq_x86::avx2::iq4_trial_sums(xb, weight, ids) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { super::iq_x86::avx512::iq4_trial_sums(xb, weight, ids) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Level::Neon => unsafe { super::iq_neon::iq4_trial_sums(xb, weight, ids) },
    }
}

/// `best_index(id * x[j])` (ggml's `best_index_int8` over `kvalues_iq4nl`) for 32 weights.
#[inline]
pub(crate) fn iq4_indices(lanes: Lanes, x: &[f32; 32], id: f32) -> [u8; 32] {
    match lanes.0 {
        // SAFETY: `Lanes` holds a level this CPU supports (checked in `Lanes::of`).
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { super::iq_x86::avx2::iq4_indices(x, id) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { super::iq_x86::avx512::iq4_indices(x, id) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Level::Neon => unsafe { super::iq_neon::iq4_indices(x, id) },
    }
}

/// The IQ1 boundary searches' test of `N` candidates against the best score so far, one bit
/// per lane: bit `j` is ggml's `sumq2 > 0 && sumqx*sumqx > best_score*sumq2` for `qx[j]`,
/// `q2[j]` (ordered comparisons: false with a NaN). `N` is a multiple of 8, at most 32.
#[inline(always)]
pub(crate) fn pass_bits<const N: usize>(
    lanes: Lanes,
    qx: &[f32; N],
    q2: &[f32; N],
    score: f32,
) -> u32 {
    const { assert!(N.is_multiple_of(8) && N <= 32) };
    match lanes.0 {
        // SAFETY: `Lanes` holds a level this CPU supports (checked in `Lanes::of`).
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { super::iq_x86::avx2::pass_bits(qx, q2, score) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { super::iq_x86::avx512::pass_bits(qx, q2, score) },
        // Portable lanes (the compiler vectorizes them with NEON, the aarch64 baseline).
        #[cfg(target_arch = "aarch64")]
        Level::Neon => (0..N).fold(0u32, |m, j| {
            let pass = q2[j] > 0.0 && qx[j] * qx[j] > score * q2[j];
            m | (u32::from(pass) << j)
        }),
    }
}

/// Entries that the code lists of [`grid_nearest`] hold past their `n` points, so that the
/// kernels load whole vectors.
pub(crate) const CODES_PAD: usize = 16;

/// The position in `codes[..n]` of the lattice point nearest `xval` at `scale`, as ggml's
/// `iq2_find_best_neighbour`, `iq3_find_best_neighbour` and `iq1_find_best_neighbour2` find
/// it: the first of the least errors `sum_i w[i]*diff*diff` (`diff = scale*q - x[i]`, summed
/// in order) that are below `f32::MAX`; `None` when there is none. Each code packs a point's
/// `D` levels, `BITS` bits each (dimension 0 lowest), and `levels[k]` is the value `q` of level
/// `k & (2^BITS - 1)`.
#[inline]
pub(crate) fn grid_nearest<const D: usize, const BITS: u32>(
    lanes: Lanes,
    levels: &[f32; 16],
    n: usize,
    codes: &[u16],
    xval: &[f32],
    weight: &[f32],
    scale: f32,
) -> Option<usize> {
    let (xval, weight) = (&xval[..D], &weight[..D]);
    // The kernels read whole vectors of codes; a short list is a bug, caught here.
    let codes = &codes[..n + CODES_PAD];
    match lanes.0 {
        // SAFETY: `Lanes` holds a level this CPU supports (checked in `Lanes::of`).
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe {
            super::iq_x86::avx2_grid::nearest::<D, BITS>(levels, n, codes, xval, weight, scale)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe {
            super::iq_x86::avx512_grid::nearest::<D, BITS>(levels, n, codes, xval, weight, scale)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Level::Neon => unsafe {
            super::iq_neon::grid_nearest::<D, BITS>(levels, n, codes, xval, weight, scale)
        },
    }
}

/// Runs `f` compiled for the level of `lanes`: its body is inlined into a `#[target_feature]`
/// function, for kernels written as plain element-wise loops over fixed-size arrays, which the
/// compiler vectorizes (each lane the same operations, so the same results; it never
/// reassociates a float sum or fuses a multiply and an add).
#[inline(always)]
pub(crate) fn compiled_for<R>(lanes: Lanes, f: impl FnOnce() -> R) -> R {
    match lanes.0 {
        // SAFETY: `Lanes` holds a level this CPU supports (checked in `Lanes::of`).
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { super::iq_x86::with_avx2(f) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { super::iq_x86::with_avx512(f) },
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        Level::Neon => unsafe { super::iq_neon::with_neon(f) },
    }
}

#[cfg(test)]
mod tests {
    use crate::simd::tests::rows_unlike_scalar;
    use crate::GgmlType;

    /// Every level writes the scalar level's bytes (which the oracle tests compare with ggml)
    /// for the i-quants, on weights with outliers, ties and zero runs, with and without
    /// importance weights.
    #[test]
    fn every_level_writes_the_scalar_bytes() {
        let cols = 512;
        let rows = 6;
        let mut bits = crate::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = || (bits() >> 40) as f32 / (1u64 << 24) as f32;
        let x: Vec<f32> = (0..rows * cols)
            .map(|i| match (i / 256) % 4 {
                0 => next() * 2.0 - 1.0,
                1 => ((next() * 7.0) as i32 - 3) as f32 * 0.25,
                2 if i % 3 == 0 => 0.0,
                _ => (next() - 0.5) * if i % 37 == 0 { 40.0 } else { 1.0 },
            })
            .collect();
        let qw: Vec<f32> = (0..cols).map(|_| next() * 3.0 + 0.01).collect();
        let iquants = [
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
            GgmlType::IQ3_XXS,
            GgmlType::IQ3_S,
            GgmlType::IQ2_XXS,
            GgmlType::IQ2_XS,
            GgmlType::IQ2_S,
            GgmlType::IQ1_S,
            GgmlType::IQ1_M,
        ];
        for ty in iquants {
            assert!(ty.has_simd_paths(), "{ty}");
            for imatrix in [None, Some(qw.as_slice())] {
                if imatrix.is_none() && ty.requires_imatrix() {
                    continue;
                }
                for (simd, bad) in rows_unlike_scalar(ty, &x, cols, imatrix) {
                    let imatrix = imatrix.is_some();
                    assert!(
                        bad.is_empty(),
                        "{ty} at {simd}, imatrix {imatrix}: rows {bad:?}"
                    );
                }
            }
        }
    }
}
