//! kiln-kernels: the ggml block formats, quantized and dequantized byte for byte as ggml does.
//!
//! Each format is a type implementing [`BlockFormat`]: it knows its block size in weights and
//! bytes, how to quantize one row (with or without per-column importance weights) and how to
//! dequantize one. [`quantize`] and [`dequantize`] check the call and run many rows in parallel
//! with rayon; [`GgmlType`] does the same for a format chosen at run time (by id or name).
//!
//! Layout of the crate:
//! - [`fp`]: f32 <-> f16/bf16 conversions exactly as ggml does them
//! - [`float`]: the unquantized formats F32, F16, BF16
//! - [`legacy`]: the 32-weight block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, one file each
//!   (and Q1_0, Q2_0, of the same simple shape with 128- and 64-weight blocks)
//! - [`kquants`]: the 256-weight super-block formats Q2_K .. Q6_K, one file each, and their
//!   scale searches
//! - [`iquants`]: the i-quants (non-linear levels IQ4_NL, IQ4_XS; lattice grids IQ3_XXS, IQ3_S,
//!   IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, with their grids as data files under
//!   `iquants/grids/` and the neighbour searches), one file each
//! - [`ternary`]: the ternary formats TQ1_0 and TQ2_0
//! - [`mxfp4`]: the MXFP4 format, E2M1 codes under an E8M0 scale
//! - [`refine`]: the opt-in thorough block search (`--search thorough`): the same formats,
//!   a lower importance-weighted error, never worse than ggml's block by block
//! - [`rows`]: argument checks and the parallel row driver
//! - [`simd`](mod@simd): the SIMD level chosen at run time ([`Simd`]: scalar, AVX2, AVX-512),
//!   every level byte-identical
//! - [`format`](mod@format): the registry of formats, one line each, which generates [`GgmlType`] (ggml's
//!   type ids and names) and the dispatch to the formats at run time
//!
//! Each quantized format's block is a `#[repr(C)]` struct of byte fields (alignment 1, so a
//! row's bytes are viewed as blocks at any offset), with its size checked at compile time.

// The kernels index blocks the way ggml's C does (x[16*j + i], L[j + l + 32], ...): keeping the
// same index arithmetic makes them easy to check against ggml line by line.
#![allow(clippy::needless_range_loop)]

pub mod float;
pub mod format;
pub mod fp;
pub mod iquants;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
pub mod refine;
pub mod rows;
pub mod simd;
pub mod ternary;

/// The tests' xorshift64 generator: each call returns the next state (a non-zero `seed`).
#[cfg(test)]
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

pub use format::GgmlType;
pub use refine::Search;
pub use rows::{dequantize, quantize, quantize_at, KernelError};
pub use simd::Simd;

/// One ggml block format.
///
/// The row functions are the unchecked core: they assume `src.len()` is a whole number of
/// blocks, `dst` is exactly the row's byte size and `imatrix` (when given) has one weight per
/// column. Call them through [`quantize`]/[`dequantize`] (or [`GgmlType`]) which check all that.
pub trait BlockFormat: Send + Sync + 'static {
    /// The ggml type this format writes.
    const TYPE: GgmlType;
    /// Weights per block.
    const BLOCK_WEIGHTS: usize;
    /// Bytes per block.
    const BLOCK_BYTES: usize;
    /// Whether the format is a block quantization (false for F32, F16, BF16).
    const QUANTIZED: bool = true;
    /// Whether importance weights change the output (ggml ignores them for Q8_0 and the
    /// float formats).
    const USES_IMATRIX: bool = Self::QUANTIZED;
    /// Whether ggml refuses to quantize without importance weights
    /// (`ggml_quantize_requires_imatrix`: IQ2_XXS, IQ2_XS, IQ1_S).
    const REQUIRES_IMATRIX: bool = false;
    /// Whether the format has SIMD kernels ([`quantize_row_at`](Self::quantize_row_at) looks
    /// at the level), so that tests run each level against ggml.
    const SIMD_PATHS: bool = false;

    /// Quantizes one row. `imatrix`, when given, holds one importance weight per column and
    /// selects ggml's `quantize_<type>` path instead of `quantize_row_<type>_ref`.
    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>);

    /// [`quantize_row`](Self::quantize_row) with the kernels of SIMD level `simd` (a level
    /// this CPU lacks runs the highest one it has below it). Every level writes the same
    /// bytes; formats without SIMD kernels ignore the level.
    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let _ = simd;
        Self::quantize_row(src, dst, imatrix)
    }

    /// [`quantize_row_at`](Self::quantize_row_at) of a row not yet known to be finite: the
    /// column of its first NaN or infinity instead (`dst` is then unspecified). Formats may
    /// fuse the check into their own pass over the row (F32: one pass that checks and copies).
    fn quantize_row_checked(
        simd: Simd,
        src: &[f32],
        dst: &mut [u8],
        imatrix: Option<&[f32]>,
    ) -> Option<usize> {
        if let Some(column) = crate::rows::first_non_finite(src) {
            return Some(column);
        }
        Self::quantize_row_at(simd, src, dst, imatrix);
        None
    }

    /// Dequantizes one row (`src` holds whole blocks, `dst` their weights).
    fn dequantize_row(src: &[u8], dst: &mut [f32]);

    /// Checks a quantized row the way ggml's `ggml_validate_row_data` does (scales and values
    /// must be finite). Returns the index of the first bad block.
    fn first_invalid_block(_row: &[u8]) -> Option<usize> {
        None
    }

    /// Bytes taken by a row of `n` weights (`n` a multiple of the block size).
    fn row_bytes(n: usize) -> usize {
        n / Self::BLOCK_WEIGHTS * Self::BLOCK_BYTES
    }
}

/// Views a row's bytes as blocks. Block structs hold only byte fields (alignment 1), so this
/// works at any offset; `bytes` must be a whole number of blocks (the row functions' contract).
#[inline]
pub(crate) fn as_blocks<B: bytemuck::Pod>(bytes: &[u8]) -> &[B] {
    const { assert!(std::mem::align_of::<B>() == 1) };
    bytemuck::cast_slice(bytes)
}

/// [`as_blocks`] for writing.
#[inline]
pub(crate) fn as_blocks_mut<B: bytemuck::Pod>(bytes: &mut [u8]) -> &mut [B] {
    const { assert!(std::mem::align_of::<B>() == 1) };
    bytemuck::cast_slice_mut(bytes)
}
