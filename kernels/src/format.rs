//! [`GgmlType`]: ggml's type ids, and the block formats chosen at run time.
//!
//! The `formats!` table below is the one registry of formats: one line each gives the enum
//! variant, ggml's type id, ggml's name, the block size in weights and bytes, and the type
//! implementing [`BlockFormat`]. It generates [`GgmlType`], [`GgmlType::ALL`], the names, the
//! id lookup and every run-time dispatch; the sizes are checked against the format's own at
//! compile time. Adding a format is its file (declared in `legacy/mod.rs`, `kquants/mod.rs`,
//! `iquants/mod.rs`, `ternary/mod.rs`, or `lib.rs`)
//! and one line here.

use crate::rows::{dequantize, quantize, quantize_at, KernelError};
use crate::{float, iquants, kquants, legacy, mxfp4, ternary};
use crate::{BlockFormat, Search, Simd};
use std::fmt;

/// Generates [`GgmlType`] and its dispatching methods from the table of formats.
macro_rules! formats {
    ($($variant:ident = $id:literal, $name:literal, $weights:literal x $bytes:literal, $format:ty;)*) => {
        /// ggml's `enum ggml_type` values for the formats kiln knows (the numbers GGUF files
        /// store).
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum GgmlType {
            $($variant = $id,)*
        }

        // Each line's sizes and type are the format's own.
        $(const _: () = assert!(
            <$format as BlockFormat>::BLOCK_WEIGHTS == $weights
                && <$format as BlockFormat>::BLOCK_BYTES == $bytes
                && <$format as BlockFormat>::TYPE as u32 == $id
        );)*

        impl GgmlType {
            /// Every type kiln can write, from most to fewest bits.
            pub const ALL: [GgmlType; [$($id),*].len()] = [$(GgmlType::$variant),*];

            /// ggml's name for the type (`ggml_type_name`): "f32", "q4_K", ...
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$variant => $name,)*
                }
            }

            /// The type with ggml's id `id`, if kiln knows it.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$variant),)*
                    _ => None,
                }
            }

            /// Weights per block.
            pub fn block_weights(self) -> usize {
                match self {
                    $(GgmlType::$variant => <$format as BlockFormat>::BLOCK_WEIGHTS,)*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> usize {
                match self {
                    $(GgmlType::$variant => <$format as BlockFormat>::BLOCK_BYTES,)*
                }
            }

            /// Whether the format is a block quantization (not F32/F16/BF16).
            pub fn is_quantized(self) -> bool {
                match self {
                    $(GgmlType::$variant => <$format as BlockFormat>::QUANTIZED,)*
                }
            }

            /// Whether an importance matrix changes this format's output (ggml ignores it for
            /// Q8_0 and the float formats).
            pub fn uses_imatrix(self) -> bool {
                match self {
                    $(GgmlType::$variant => <$format as BlockFormat>::USES_IMATRIX,)*
                }
            }

            /// Whether ggml refuses to quantize this format without an importance matrix
            /// (`ggml_quantize_requires_imatrix`); kiln refuses too
            /// ([`KernelError::ImatrixRequired`]).
            pub fn requires_imatrix(self) -> bool {
                match self {
                    $(GgmlType::$variant => <$format as BlockFormat>::REQUIRES_IMATRIX,)*
                }
            }

            /// Whether the format has SIMD kernels, whose every [`Simd`] level the oracle
            /// tests compare with ggml.
            pub fn has_simd_paths(self) -> bool {
                match self {
                    $(GgmlType::$variant => <$format as BlockFormat>::SIMD_PATHS,)*
                }
            }

            /// Quantizes `src` (rows of `n_per_row` weights) into `dst`, rows in parallel. See
            /// [`quantize`].
            pub fn quantize(
                self,
                src: &[f32],
                n_per_row: usize,
                imatrix: Option<&[f32]>,
                dst: &mut [u8],
            ) -> Result<usize, KernelError> {
                match self {
                    $(GgmlType::$variant => quantize::<$format>(src, n_per_row, imatrix, dst),)*
                }
            }

            /// [`GgmlType::quantize`] with the kernels of SIMD level `simd` (same bytes at
            /// every level). See [`quantize_at`].
            pub fn quantize_at(
                self,
                simd: Simd,
                src: &[f32],
                n_per_row: usize,
                imatrix: Option<&[f32]>,
                dst: &mut [u8],
            ) -> Result<usize, KernelError> {
                match self {
                    $(GgmlType::$variant => quantize_at::<$format>(simd, src, n_per_row, imatrix, dst),)*
                }
            }

            /// Dequantizes `src` (rows of `n_per_row` weights) into `dst`. See [`dequantize`].
            pub fn dequantize(
                self,
                src: &[u8],
                n_per_row: usize,
                dst: &mut [f32],
            ) -> Result<usize, KernelError> {
                match self {
                    $(GgmlType::$variant => dequantize::<$format>(src, n_per_row, dst),)*
                }
            }
        }
    };
}

// The registry, in `ALL`'s order (most to fewest bits):
// variant = ggml id, ggml name, weights x bytes per block, implementation.
formats! {
    F32  = 0,  "f32",  1 x 4,     float::F32;
    F16  = 1,  "f16",  1 x 2,     float::F16;
    BF16 = 30, "bf16", 1 x 2,     float::BF16;
    Q8_0 = 8,  "q8_0", 32 x 34,   legacy::Q8_0;
    Q6_K = 14, "q6_K", 256 x 210, kquants::Q6K;
    Q5_1 = 7,  "q5_1", 32 x 24,   legacy::Q5_1;
    Q5_0 = 6,  "q5_0", 32 x 22,   legacy::Q5_0;
    Q5_K = 13, "q5_K", 256 x 176, kquants::Q5K;
    Q4_1 = 3,  "q4_1", 32 x 20,   legacy::Q4_1;
    Q4_0 = 2,  "q4_0", 32 x 18,   legacy::Q4_0;
    IQ4_NL = 20, "iq4_nl", 32 x 18, iquants::IQ4NL;
    Q4_K = 12, "q4_K", 256 x 144, kquants::Q4K;
    MXFP4 = 39, "mxfp4", 32 x 17, mxfp4::Mxfp4;
    IQ4_XS = 23, "iq4_xs", 256 x 136, iquants::IQ4XS;
    Q3_K = 11, "q3_K", 256 x 110, kquants::Q3K;
    IQ3_S = 21, "iq3_s", 256 x 110, iquants::Iq3S;
    IQ3_XXS = 18, "iq3_xxs", 256 x 98, iquants::Iq3Xxs;
    Q2_K = 10, "q2_K", 256 x 84,  kquants::Q2K;
    IQ2_S   = 22, "iq2_s",   256 x 82, iquants::Iq2S;
    IQ2_XS  = 17, "iq2_xs",  256 x 74, iquants::Iq2Xs;
    Q2_0 = 42, "q2_0", 64 x 18,   legacy::Q2_0;
    IQ2_XXS = 16, "iq2_xxs", 256 x 66, iquants::Iq2Xxs;
    TQ2_0 = 35, "tq2_0", 256 x 66, ternary::TQ2_0;
    IQ1_M   = 29, "iq1_m",   256 x 56, iquants::Iq1M;
    TQ1_0 = 34, "tq1_0", 256 x 54, ternary::TQ1_0;
    IQ1_S   = 19, "iq1_s",   256 x 50, iquants::Iq1S;
    Q1_0 = 41, "q1_0", 128 x 18,  legacy::Q1_0;
}

impl GgmlType {
    /// The type named `name`, case-insensitively ("Q4_K", "q4_k", "bf16").
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of a row of `n` weights, or `None` if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let bw = self.block_weights();
        n.is_multiple_of(bw).then(|| n / bw * self.block_bytes())
    }

    /// Bits per weight of the format.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_weights() as f64
    }

    /// [`GgmlType::quantize`] with block search `search`: [`Search::Ggml`] is `quantize`
    /// itself (ggml's bytes); [`Search::Thorough`] the search of [`crate::refine`] for the
    /// formats it covers.
    pub fn quantize_with(
        self,
        search: Search,
        src: &[f32],
        n_per_row: usize,
        imatrix: Option<&[f32]>,
        dst: &mut [u8],
    ) -> Result<usize, KernelError> {
        crate::refine::quantize(self, search, src, n_per_row, imatrix, dst)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_case_insensitively() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_name(&t.name().to_uppercase()), Some(t));
            assert_eq!(GgmlType::from_id(t as u32), Some(t));
        }
        assert_eq!(GgmlType::from_name("q4_K_M"), None);
    }
}
