//! MXFP4 (OCP microscaling FP4, as gpt-oss ships it): 17 bytes per 32 weights, a shared
//! power-of-two scale (E8M0) and sixteen FP4 (E2M1) codes. Weight = kvalues_mxfp4[code] * 2^(e-128)
//! (the table holds the E2M1 values doubled, hence the half in the scale). ggml's
//! `quantize_row_mxfp4_ref`; ggml ignores importance weights for this format.

use crate::legacy::cvtt;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType};
use std::mem::size_of;

/// Weights per MXFP4 block.
pub const QK_MXFP4: usize = 32;

/// ggml's `kvalues_mxfp4` (`kvalues_fp4` in ggml-common.h): the E2M1 values, doubled. A test
/// checks it against ggml by dequantizing crafted blocks.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// The MXFP4 format.
pub struct Mxfp4;

/// One MXFP4 block (ggml's `block_mxfp4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockMxfp4 {
    /// The shared exponent (E8M0, bias 127).
    pub e: u8,
    /// Codes: weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; QK_MXFP4 / 2],
}
const _: () = assert!(size_of::<BlockMxfp4>() == 17);

/// ggml's `ggml_e8m0_to_fp32_half`: 2^(e-128) as f32 (subnormal for e < 2).
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e as u32) - 1) << 23
    };
    f32::from_bits(bits)
}

/// ggml's `best_index_mxfp4`: the code whose value times `e` is nearest `x` (the first on ties).
#[inline]
fn best_index(x: f32, e: f32) -> u8 {
    let mut best_index = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * e - x).abs();
    for i in 1..16 {
        let err = (KVALUES_MXFP4[i] as f32 * e - x).abs();
        if err < best_err {
            best_index = i as u8;
            best_err = err;
        }
    }
    best_index
}

impl BlockFormat for Mxfp4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const BLOCK_WEIGHTS: usize = QK_MXFP4;
    const BLOCK_BYTES: usize = size_of::<BlockMxfp4>();
    const USES_IMATRIX: bool = false;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (x, b) in src
            .chunks_exact(QK_MXFP4)
            .zip(as_blocks_mut::<BlockMxfp4>(dst).iter_mut())
        {
            let mut amax = 0.0f32;
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                }
            }
            // C's `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`: a 32-bit truncating conversion
            // whose low byte is kept, so exponents below the range wrap (as ggml's do).
            b.e = if amax > 0.0 {
                cvtt(amax.log2().floor() - 2.0 + 127.0) as u8
            } else {
                0
            };
            let d = e8m0_to_f32_half(b.e);
            for j in 0..QK_MXFP4 / 2 {
                let x0 = best_index(x[j], d);
                let x1 = best_index(x[QK_MXFP4 / 2 + j], d);
                b.qs[j] = x0 | (x1 << 4);
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockMxfp4>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_MXFP4))
        {
            let d = e8m0_to_f32_half(b.e);
            for j in 0..QK_MXFP4 / 2 {
                y[j] = KVALUES_MXFP4[(b.qs[j] & 0x0F) as usize] as f32 * d;
                y[j + QK_MXFP4 / 2] = KVALUES_MXFP4[(b.qs[j] >> 4) as usize] as f32 * d;
            }
        }
    }

    /// ggml's `validate_e_e8m0`: the exponent 0xff (NaN in E8M0) is invalid.
    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockMxfp4>(row)
            .iter()
            .position(|b| b.e == 0xff)
    }
}
