//! Q1_0: 1 bit per weight, 18 bytes per 128 weights. Weight = +d or -d by the weight's sign,
//! `d` the block's mean magnitude (ggml's `quantize_row_q1_0_ref`; ggml ignores importance
//! weights for this format).

use crate::fp::Half;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType};
use std::mem::size_of;

/// Weights per Q1_0 block.
pub const QK1_0: usize = 128;

/// The 1-bit sign format.
pub struct Q1_0;

/// One Q1_0 block (ggml's `block_q1_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ1_0 {
    /// Scale: the mean magnitude of the block's weights.
    pub d: Half,
    /// Signs: bit `j % 8` of byte `j / 8` is set when weight `j` is >= 0.
    pub qs: [u8; QK1_0 / 8],
}
const _: () = assert!(size_of::<BlockQ1_0>() == 18);

impl BlockFormat for Q1_0 {
    const TYPE: GgmlType = GgmlType::Q1_0;
    const BLOCK_WEIGHTS: usize = QK1_0;
    const BLOCK_BYTES: usize = size_of::<BlockQ1_0>();
    const USES_IMATRIX: bool = false;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (x, b) in src
            .chunks_exact(QK1_0)
            .zip(as_blocks_mut::<BlockQ1_0>(dst).iter_mut())
        {
            // Sequential sum: the order changes the rounding.
            let mut sum_abs = 0.0f32;
            for &v in x {
                sum_abs += v.abs();
            }
            b.d = Half::from_f32(sum_abs / QK1_0 as f32);
            b.qs = [0; QK1_0 / 8];
            for (j, &v) in x.iter().enumerate() {
                if v >= 0.0 {
                    b.qs[j / 8] |= 1 << (j % 8);
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ1_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK1_0))
        {
            let d = b.d.to_f32();
            let neg_d = -d;
            for (j, o) in y.iter_mut().enumerate() {
                *o = if (b.qs[j / 8] >> (j % 8)) & 1 != 0 {
                    d
                } else {
                    neg_d
                };
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ1_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
