//! Run-time choice of the SIMD instruction set the kernels use.
//!
//! Every kernel with a SIMD path computes exactly what its scalar path computes: lanes run
//! across independent weights, blocks, sub-blocks or trial scales, never across the terms of a
//! sum whose order feeds a rounding, and a multiply is never fused with an add (ggml's
//! quantizers are compiled without FMA). So every [`Simd`] level writes the same bytes, which
//! the oracle tests check against ggml for every level this CPU supports.
//!
//! The level is chosen once per process ([`Simd::active`]): the best one the CPU supports,
//! unless the environment variable `KILN_SIMD` (`scalar`, `avx2`, `avx512`, `neon`) asks for
//! another one this CPU supports. The checked entry points also take a level explicitly
//! ([`quantize_at`](crate::rows::quantize_at), [`GgmlType::quantize_at`](crate::GgmlType::quantize_at)).

use std::fmt;
use std::sync::OnceLock;

pub(crate) mod iq;
#[cfg(target_arch = "aarch64")]
pub(crate) mod iq_neon;
#[cfg(target_arch = "x86_64")]
pub(crate) mod iq_x86;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_lanes;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// An instruction-set level of the kernels, lowest first within an architecture (x86-64:
/// scalar, AVX2, AVX-512; aarch64: scalar, NEON). Levels of different architectures do not
/// compare meaningfully: a CPU supports scalar and the levels of its own architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Simd {
    /// Portable Rust (which the compiler may still vectorize for the build's target CPU).
    Scalar,
    /// x86-64 with AVX2 and F16C (Haswell and later, Zen).
    Avx2,
    /// x86-64 with AVX-512 F, BW and VL on top of [`Simd::Avx2`] (Skylake-X and later, Zen 4).
    Avx512,
    /// aarch64 with NEON (Advanced SIMD; every aarch64 Linux CPU has it).
    Neon,
}

impl Simd {
    /// Every level, lowest first.
    pub const ALL: [Simd; 4] = [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Neon];

    /// The level's name as `KILN_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Neon => "neon",
        }
    }

    /// The level named `name` (case-insensitive), whether or not this CPU supports it.
    pub fn from_name(name: &str) -> Option<Simd> {
        Simd::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the level.
    #[inline]
    pub fn supported(self) -> bool {
        match self {
            Simd::Scalar => true,
            Simd::Avx2 => has_avx2(),
            Simd::Avx512 => has_avx512(),
            Simd::Neon => has_neon(),
        }
    }

    /// The levels this CPU supports, lowest first.
    pub fn available() -> Vec<Simd> {
        Simd::ALL.into_iter().filter(|s| s.supported()).collect()
    }

    /// The highest level this CPU supports.
    pub fn best() -> Simd {
        Simd::ALL
            .into_iter()
            .rev()
            .find(|s| s.supported())
            .unwrap_or(Simd::Scalar)
    }

    /// The level the kernels use: [`Simd::best`], or the one `KILN_SIMD` names when this CPU
    /// supports it (a level it does not support, such as AVX-512 on an AVX2 CPU or NEON on
    /// x86-64, gives [`Simd::best`]; an unknown name is ignored). Read once per process.
    pub fn active() -> Simd {
        static ACTIVE: OnceLock<Simd> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let best = Simd::best();
            std::env::var("KILN_SIMD")
                .ok()
                .and_then(|v| Simd::from_name(&v))
                .map_or(best, |asked| if asked.supported() { asked } else { best })
        })
    }
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// AVX2 and F16C (the AVX2 paths convert their scales to f16 with F16C).
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX-512 F, BW and VL, and everything [`has_avx2`] needs.
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// NEON (aarch64's Advanced SIMD, which the standard aarch64 targets have in their baseline;
/// checked at run time all the same, as the x86 levels are).
#[inline]
pub(crate) fn has_neon() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

// `lanes`: the K-quants' lane searches of this architecture, the NEON ones on aarch64, the
// AVX2 ones on x86-64 (the same functions, with the same signatures). Callable where
// [`has_lanes`].
#[cfg(target_arch = "aarch64")]
pub(crate) use neon_lanes as lanes;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::lanes;

/// Whether this CPU runs [`lanes`]: [`has_avx2`] on x86-64, [`has_neon`] on aarch64 (each is
/// false on the other architecture).
#[inline]
pub(crate) fn has_lanes() -> bool {
    has_avx2() || has_neon()
}

/// Runs the first arm whose level is `simd` and is supported by this CPU, else the scalar
/// arm. Each SIMD arm is an `unsafe` call of a `#[target_feature]` function: the check here is
/// what makes it sound, so a level handed in from outside can never run an instruction the
/// CPU lacks. The `neon =>` arm is optional: without it, aarch64 runs the scalar arm at every
/// level.
macro_rules! dispatch {
    ($simd:expr, neon => $neon:expr, avx512 => $avx512:expr, avx2 => $avx2:expr, scalar => $scalar:expr $(,)?) => {{
        let simd: $crate::simd::Simd = $simd;
        #[cfg(target_arch = "aarch64")]
        {
            if simd == $crate::simd::Simd::Neon && $crate::simd::has_neon() {
                // SAFETY: the CPU has NEON, which the NEON path is compiled for.
                #[allow(unused_unsafe)]
                unsafe {
                    $neon
                }
            } else {
                $scalar
            }
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            $crate::simd::dispatch!(simd, avx512 => $avx512, avx2 => $avx2, scalar => $scalar)
        }
    }};
    ($simd:expr, avx512 => $avx512:expr, avx2 => $avx2:expr, scalar => $scalar:expr $(,)?) => {{
        let simd: $crate::simd::Simd = $simd;
        #[cfg(target_arch = "x86_64")]
        {
            if simd == $crate::simd::Simd::Avx512 && $crate::simd::has_avx512() {
                // SAFETY: the CPU has every feature the AVX-512 path is compiled for.
                #[allow(unused_unsafe)]
                unsafe {
                    $avx512
                }
            } else if simd >= $crate::simd::Simd::Avx2 && $crate::simd::has_avx2() {
                // SAFETY: the CPU has every feature the AVX2 path is compiled for.
                #[allow(unused_unsafe)]
                unsafe {
                    $avx2
                }
            } else {
                $scalar
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = simd;
            $scalar
        }
    }};
}
pub(crate) use dispatch;

/// Emits two copies of row functions, compiled for AVX2 (`avx2::NAME`) and for AVX-512
/// (`avx512::NAME`), from one body that calls the building blocks as `v::...`; on aarch64, one
/// copy compiled for NEON (`neon::NAME`, building blocks from [`neon`]) instead. The body sees
/// the invoking module's items (`use super::*`).
macro_rules! x86_paths {
    ($($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {
        #[cfg(target_arch = "x86_64")]
        pub(crate) mod avx2 {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::simd::x86::avx2 as v;
            $(
                $(#[$meta])*
                #[target_feature(enable = "avx2,f16c")]
                pub(crate) fn $name($($arg: $ty),*) $body
            )*
        }
        #[cfg(target_arch = "x86_64")]
        pub(crate) mod avx512 {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::simd::x86::avx512 as v;
            $(
                $(#[$meta])*
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
                pub(crate) fn $name($($arg: $ty),*) $body
            )*
        }
        #[cfg(target_arch = "aarch64")]
        pub(crate) mod neon {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::simd::neon as v;
            $(
                $(#[$meta])*
                #[target_feature(enable = "neon")]
                pub(crate) fn $name($($arg: $ty),*) $body
            )*
        }
    };
}
pub(crate) use x86_paths;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_levels_are_ordered() {
        for s in Simd::ALL {
            assert_eq!(Simd::from_name(&s.name().to_uppercase()), Some(s));
        }
        assert_eq!(Simd::from_name("Neon"), Some(Simd::Neon));
        assert_eq!(Simd::from_name("sse"), None);
        assert!(Simd::Scalar < Simd::Avx2 && Simd::Avx2 < Simd::Avx512);
        assert!(Simd::Scalar < Simd::Neon);
        assert!(Simd::best().supported() && Simd::active().supported());
        #[cfg(target_arch = "aarch64")]
        assert_eq!(Simd::available(), [Simd::Scalar, Simd::Neon]);
        #[cfg(target_arch = "x86_64")]
        assert!(!Simd::available().contains(&Simd::Neon));
        assert!(Simd::available().contains(&Simd::Scalar));
        assert!(Simd::active() <= Simd::best());
    }

    /// Rows of the inputs that break quantizers, one family per row (each row `cols` long):
    /// Gaussian weights with outliers, zeros (and signed zeros), constant rows of each sign,
    /// one huge outlier per block, subnormals (alone and among zeros, whose reciprocal scale
    /// is infinite and whose products are NaN), large magnitudes, exact ties, sparse rows,
    /// blocks of very different scales, and outliers of 6e4 (the f16 mins allow no more) among small weights.
    fn hard_rows(cols: usize, seed: u64) -> Vec<f32> {
        // `next` and `gauss` draw from two generators of the same seed.
        let uniform = || {
            let mut bits = crate::xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            move || (bits() >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut next = uniform();
        let mut gauss_uniform = uniform();
        let mut gauss = move || {
            let (a, b) = (gauss_uniform(), gauss_uniform());
            (a + b - 1.0) * 1.7
        };
        let families = 14;
        let mut x = Vec::with_capacity(families * cols);
        for r in 0..families {
            let mut block_scale = 1.0f32;
            for i in 0..cols {
                let g = gauss();
                if i % 32 == 0 {
                    block_scale = 10f32.powi((i / 32 * 7 + r) as i32 % 10 - 6);
                }
                x.push(match r {
                    0 => g * if i % 97 == 0 { 0.24 } else { 0.02 },
                    1 => 0.0,
                    2 => {
                        if i % 3 == 0 {
                            -0.0
                        } else {
                            0.0
                        }
                    }
                    3 => 0.75,
                    4 => -1.5e-3,
                    5 => {
                        if i % 32 == (i / 32) % 32 {
                            g.signum() * 30.0 + g * 0.01
                        } else {
                            g * 0.01
                        }
                    }
                    6 => g * 1.0e-40,
                    7 => {
                        if i % 4 == 1 {
                            0.0
                        } else {
                            g * 1.0e-40
                        }
                    }
                    8 => g * 1.0e4,
                    9 => ((i * 7 + r) % 33) as f32 / 8.0 - 2.0,
                    10 => {
                        if i % 50 == 3 {
                            g
                        } else {
                            0.0
                        }
                    }
                    11 => g * block_scale,
                    12 => {
                        if i % 61 == 5 {
                            6.0e4 * g.signum()
                        } else {
                            g * 1.0e-3
                        }
                    }
                    _ => (next() * 2.0 - 1.0) * if i % 37 == 0 { 40.0 } else { 1.0 },
                });
            }
        }
        x
    }

    /// For each level this CPU supports, the rows (of `cols` weights) of `x` in which the
    /// level's bytes for `ty` differ from the scalar level's.
    pub(crate) fn rows_unlike_scalar(
        ty: crate::GgmlType,
        x: &[f32],
        cols: usize,
        imatrix: Option<&[f32]>,
    ) -> Vec<(Simd, Vec<usize>)> {
        let rows = x.len() / cols;
        let row_bytes = ty.row_bytes(cols).unwrap();
        let mut scalar = vec![0u8; rows * row_bytes];
        ty.quantize_at(Simd::Scalar, x, cols, imatrix, &mut scalar)
            .unwrap();
        Simd::available()
            .into_iter()
            .map(|simd| {
                let mut out = vec![0u8; rows * row_bytes];
                ty.quantize_at(simd, x, cols, imatrix, &mut out).unwrap();
                let bad = (0..rows)
                    .filter(|&r| {
                        let row = r * row_bytes..(r + 1) * row_bytes;
                        out[row.clone()] != scalar[row]
                    })
                    .collect();
                (simd, bad)
            })
            .collect()
    }

    /// Every level writes the scalar level's bytes for the legacy formats, the K-quants and the
    /// i-quants, with and without importance weights (where the format allows none), on [`hard_rows`], with rows whose block counts
    /// leave remainders after the paths' groups of blocks (16 legacy blocks per importance
    /// search, two K-quant super-blocks per Q3_K and Q4_K step). On x86-64 this compares
    /// AVX2 and AVX-512 with scalar (the oracle tests also compare them with ggml); on
    /// aarch64 (under qemu in `.ci/neon`), NEON with scalar.
    #[test]
    fn every_level_writes_the_scalar_bytes_on_hard_inputs() {
        use crate::GgmlType::*;
        let types = [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, IQ3_XXS,
            IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M,
        ];
        let (mut compared, mut expected) = (0, 0);
        let mut failures = Vec::new();
        for ty in types {
            assert!(ty.has_simd_paths(), "{ty}");
            // 35 legacy blocks (two groups of 16 and 3 more), 5 super-blocks (2 pairs and 1).
            let cols = if ty.block_weights() == 32 {
                35 * 32
            } else {
                5 * 256
            };
            // One seed for the i-quants, whose scalar searches are slow under qemu.
            let seeds = if ty.name().starts_with("iq") {
                1..2u64
            } else {
                1..3u64
            };
            let variants = if ty.requires_imatrix() { 1 } else { 2 };
            expected += seeds.clone().count() * variants * Simd::available().len();
            for seed in seeds {
                let x = hard_rows(cols, seed);
                let mut state = seed;
                let qw: Vec<f32> = (0..cols)
                    .map(|i| {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1);
                        let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0;
                        if i % 17 == 3 {
                            0.0
                        } else {
                            u * u + 1.0e-3
                        }
                    })
                    .collect();
                for imatrix in [None, Some(qw.as_slice())] {
                    if imatrix.is_none() && ty.requires_imatrix() {
                        continue;
                    }
                    for (simd, bad) in rows_unlike_scalar(ty, &x, cols, imatrix) {
                        if !bad.is_empty() {
                            failures.push(format!(
                                "{ty} at {simd}, imatrix {}, seed {seed}: rows (families) {bad:?}",
                                imatrix.is_some()
                            ));
                        }
                        compared += 1;
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "bytes differ from scalar:\n{}",
            failures.join("\n")
        );
        assert_eq!(compared, expected);
    }
}
