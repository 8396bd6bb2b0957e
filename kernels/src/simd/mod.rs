//! Run-time choice of the SIMD instruction set the kernels use.
//!
//! Every kernel with a SIMD path computes exactly what its scalar path computes: lanes run
//! across independent weights, blocks, sub-blocks or trial scales, never across the terms of a
//! sum whose order feeds a rounding, and a multiply is never fused with an add (ggml's
//! quantizers are compiled without FMA). So every [`Simd`] level writes the same bytes, which
//! the oracle tests check against ggml for every level this CPU supports.
//!
//! The level is chosen once per process ([`Simd::active`]): the best one the CPU supports,
//! unless the environment variable `KILN_SIMD` (`scalar`, `avx2`, `avx512`) asks for a lower
//! one. The checked entry points also take a level explicitly
//! ([`quantize_at`](crate::rows::quantize_at), [`GgmlType::quantize_at`](crate::GgmlType::quantize_at)).

use std::fmt;
use std::sync::OnceLock;

pub(crate) mod iq;
#[cfg(target_arch = "x86_64")]
pub(crate) mod iq_x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// An instruction-set level of the kernels, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Simd {
    /// Portable Rust (which the compiler may still vectorize for the build's target CPU).
    Scalar,
    /// x86-64 with AVX2 and F16C (Haswell and later, Zen).
    Avx2,
    /// x86-64 with AVX-512 F, BW and VL on top of [`Simd::Avx2`] (Skylake-X and later, Zen 4).
    Avx512,
}

impl Simd {
    /// Every level, lowest first.
    pub const ALL: [Simd; 3] = [Simd::Scalar, Simd::Avx2, Simd::Avx512];

    /// The level's name as `KILN_SIMD` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
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

    /// The level the kernels use: [`Simd::best`], or the one `KILN_SIMD` names when that is
    /// lower (a level above what the CPU supports is lowered to [`Simd::best`]; an unknown
    /// name is ignored). Read once per process.
    pub fn active() -> Simd {
        static ACTIVE: OnceLock<Simd> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let best = Simd::best();
            std::env::var("KILN_SIMD")
                .ok()
                .and_then(|v| Simd::from_name(&v))
                .map_or(best, |asked| asked.min(best))
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

/// Runs the first arm whose level is `simd` and is supported by this CPU, else the scalar
/// arm. Each SIMD arm is an `unsafe` call of a `#[target_feature]` function: the check here is
/// what makes it sound, so a level handed in from outside can never run an instruction the
/// CPU lacks.
macro_rules! dispatch {
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
/// (`avx512::NAME`), from one body that calls the building blocks as `v::...`. The body sees
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
        assert_eq!(Simd::from_name("neon"), None);
        assert!(Simd::Scalar < Simd::Avx2 && Simd::Avx2 < Simd::Avx512);
        assert!(Simd::available().contains(&Simd::Scalar));
        assert!(Simd::active() <= Simd::best());
    }
}
