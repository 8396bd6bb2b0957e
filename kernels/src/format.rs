//! [`GgmlType`]: ggml's type ids, and the block formats chosen at run time.

use crate::float::{BF16, F16, F32};
use crate::kquants::{Q2K, Q3K, Q4K, Q5K, Q6K};
use crate::legacy::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::rows::{dequantize, quantize, KernelError};
use crate::BlockFormat;
use std::fmt;

/// ggml's `enum ggml_type` values for the formats kiln knows (the numbers GGUF files store).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
}

/// Calls `$body` with `$F` bound to the [`BlockFormat`] type of `$ty`.
macro_rules! dispatch {
    ($ty:expr, $F:ident => $body:expr) => {
        match $ty {
            GgmlType::F32 => {
                type $F = F32;
                $body
            }
            GgmlType::F16 => {
                type $F = F16;
                $body
            }
            GgmlType::BF16 => {
                type $F = BF16;
                $body
            }
            GgmlType::Q8_0 => {
                type $F = Q8_0;
                $body
            }
            GgmlType::Q4_0 => {
                type $F = Q4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $F = Q4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $F = Q5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $F = Q5_1;
                $body
            }
            GgmlType::Q2_K => {
                type $F = Q2K;
                $body
            }
            GgmlType::Q3_K => {
                type $F = Q3K;
                $body
            }
            GgmlType::Q4_K => {
                type $F = Q4K;
                $body
            }
            GgmlType::Q5_K => {
                type $F = Q5K;
                $body
            }
            GgmlType::Q6_K => {
                type $F = Q6K;
                $body
            }
        }
    };
}

impl GgmlType {
    /// Every type kiln can write, from most to fewest bits.
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q6_K,
        GgmlType::Q5_1,
        GgmlType::Q5_0,
        GgmlType::Q5_K,
        GgmlType::Q4_1,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
    ];

    /// ggml's name for the type (`ggml_type_name`): "f32", "q4_K", ...
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::BF16 => "bf16",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q2_K => "q2_K",
            GgmlType::Q3_K => "q3_K",
            GgmlType::Q4_K => "q4_K",
            GgmlType::Q5_K => "q5_K",
            GgmlType::Q6_K => "q6_K",
        }
    }

    /// The type with ggml's id `id`, if kiln knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// The type named `name`, case-insensitively ("Q4_K", "q4_k", "bf16").
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Weights per block.
    pub fn block_weights(self) -> usize {
        dispatch!(self, F => F::BLOCK_WEIGHTS)
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        dispatch!(self, F => F::BLOCK_BYTES)
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

    /// Whether the format is a block quantization (not F32/F16/BF16).
    pub fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// Whether an importance matrix changes this format's output (ggml ignores it for Q8_0 and
    /// the float formats).
    pub fn uses_imatrix(self) -> bool {
        self.is_quantized() && self != GgmlType::Q8_0
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
        dispatch!(self, F => quantize::<F>(src, n_per_row, imatrix, dst))
    }

    /// Dequantizes `src` (rows of `n_per_row` weights) into `dst`. See [`dequantize`].
    pub fn dequantize(
        self,
        src: &[u8],
        n_per_row: usize,
        dst: &mut [f32],
    ) -> Result<usize, KernelError> {
        dispatch!(self, F => dequantize::<F>(src, n_per_row, dst))
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
    fn block_sizes_match_ggml() {
        let expect = [
            (GgmlType::Q4_0, 18, 32),
            (GgmlType::Q4_1, 20, 32),
            (GgmlType::Q5_0, 22, 32),
            (GgmlType::Q5_1, 24, 32),
            (GgmlType::Q8_0, 34, 32),
            (GgmlType::Q2_K, 84, 256),
            (GgmlType::Q3_K, 110, 256),
            (GgmlType::Q4_K, 144, 256),
            (GgmlType::Q5_K, 176, 256),
            (GgmlType::Q6_K, 210, 256),
            (GgmlType::F16, 2, 1),
            (GgmlType::BF16, 2, 1),
            (GgmlType::F32, 4, 1),
        ];
        for (t, bytes, weights) in expect {
            assert_eq!(
                (t.block_bytes(), t.block_weights()),
                (bytes, weights),
                "{t}"
            );
        }
    }

    #[test]
    fn names_round_trip_case_insensitively() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_name(&t.name().to_uppercase()), Some(t));
            assert_eq!(GgmlType::from_id(t as u32), Some(t));
        }
        assert_eq!(GgmlType::from_name("q4_K_M"), None);
    }
}
