//! The unquantized formats: F32 (a copy), F16 and BF16 (ggml's rounding), one weight per block.

use crate::fp::{
    bf16_is_non_finite, bf16_to_f32, f16_is_non_finite, f16_to_f32, f32_to_bf16, f32_to_f16,
    get_u16,
};
use crate::{BlockFormat, GgmlType, Simd};

/// Index of the first 16-bit value for which `bad` holds: one branch-free pass (it vectorizes),
/// then a search only when there is something to find.
#[inline]
fn first_non_finite_u16(row: &[u8], bad: fn(u16) -> bool) -> Option<usize> {
    let any = row
        .chunks_exact(2)
        .fold(false, |acc, b| acc | bad(u16::from_le_bytes([b[0], b[1]])));
    if !any {
        return None;
    }
    (0..row.len() / 2).find(|&i| bad(get_u16(row, 2 * i)))
}

/// 32-bit IEEE floats, stored as they are.
pub struct F32;
/// IEEE half floats, rounded to nearest even.
pub struct F16;
/// bfloat16, rounded to nearest even.
pub struct BF16;

impl BlockFormat for F32 {
    const TYPE: GgmlType = GgmlType::F32;
    const QUANTIZED: bool = false;
    const BLOCK_WEIGHTS: usize = 1;
    const BLOCK_BYTES: usize = 4;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        if cfg!(target_endian = "little") {
            dst.copy_from_slice(bytemuck::cast_slice(src));
        } else {
            for (o, v) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// The finiteness check and the copy in one pass (a separate check pass made the checked
    /// copy slower than a plain memcpy).
    fn quantize_row_checked(
        _simd: Simd,
        src: &[f32],
        dst: &mut [u8],
        imatrix: Option<&[f32]>,
    ) -> Option<usize> {
        let max = match bytemuck::try_cast_slice_mut::<u8, u32>(dst) {
            Ok(words) if cfg!(target_endian = "little") => copy_max_magnitude(src, words),
            _ => {
                let max = crate::rows::max_magnitude_bits(src);
                Self::quantize_row(src, dst, imatrix);
                max
            }
        };
        if max < 0x7f80_0000 {
            return None;
        }
        src.iter().position(|v| !v.is_finite())
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }

    // The input was checked finite, and a copy stays finite: nothing to validate.
}

/// Copies `src`'s bit patterns into `dst` (a little-endian target's f32 bytes) and returns the
/// largest magnitude's pattern ([`crate::rows::max_magnitude_bits`]): one branch-free pass
/// that vectorizes (loads, stores and a max in lanes).
#[inline]
fn copy_max_magnitude(src: &[f32], dst: &mut [u32]) -> u32 {
    let mut max = 0u32;
    for (d, s) in dst.iter_mut().zip(src) {
        let b = s.to_bits();
        *d = b;
        max = max.max(b & 0x7fff_ffff);
    }
    max
}

impl BlockFormat for F16 {
    const TYPE: GgmlType = GgmlType::F16;
    const QUANTIZED: bool = false;
    const BLOCK_WEIGHTS: usize = 1;
    const BLOCK_BYTES: usize = 2;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (o, v) in dst.chunks_exact_mut(2).zip(src) {
            o.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (i, o) in dst.iter_mut().enumerate() {
            *o = f16_to_f32(get_u16(src, 2 * i));
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_non_finite_u16(row, f16_is_non_finite)
    }
}

impl BlockFormat for BF16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const QUANTIZED: bool = false;
    const BLOCK_WEIGHTS: usize = 1;
    const BLOCK_BYTES: usize = 2;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (o, v) in dst.chunks_exact_mut(2).zip(src) {
            o.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (i, o) in dst.iter_mut().enumerate() {
            *o = bf16_to_f32(get_u16(src, 2 * i));
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_non_finite_u16(row, bf16_is_non_finite)
    }
}
