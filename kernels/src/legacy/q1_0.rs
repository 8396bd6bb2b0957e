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

/// One block from its weights and their sum of magnitudes: the scale and the sign bits.
#[inline]
fn write_block(x: &[f32], sum_abs: f32, b: &mut BlockQ1_0) {
    b.d = Half::from_f32(sum_abs / QK1_0 as f32);
    for (q, x8) in b.qs.iter_mut().zip(x.chunks_exact(8)) {
        let mut byte = 0u8;
        for (bit, &v) in x8.iter().enumerate() {
            byte |= ((v >= 0.0) as u8) << bit;
        }
        *q = byte;
    }
}

impl BlockFormat for Q1_0 {
    const TYPE: GgmlType = GgmlType::Q1_0;
    const BLOCK_WEIGHTS: usize = QK1_0;
    const BLOCK_BYTES: usize = size_of::<BlockQ1_0>();
    const USES_IMATRIX: bool = false;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        // Each block's scale is a sequential sum (ggml's order: the order changes the
        // rounding), a chain of dependent adds; four blocks' chains side by side keep the
        // adder busy while each stays in ggml's order.
        let blocks = as_blocks_mut::<BlockQ1_0>(dst);
        let mut xs = src.chunks_exact(4 * QK1_0);
        let mut bs = blocks.chunks_exact_mut(4);
        for (x4, b4) in (&mut xs).zip(&mut bs) {
            let mut sum_abs = [0.0f32; 4];
            for j in 0..QK1_0 {
                for (k, s) in sum_abs.iter_mut().enumerate() {
                    *s += x4[k * QK1_0 + j].abs();
                }
            }
            for ((x, b), s) in x4.chunks_exact(QK1_0).zip(b4.iter_mut()).zip(sum_abs) {
                write_block(x, s, b);
            }
        }
        for (x, b) in xs
            .remainder()
            .chunks_exact(QK1_0)
            .zip(bs.into_remainder().iter_mut())
        {
            let mut sum_abs = 0.0f32;
            for &v in x {
                sum_abs += v.abs();
            }
            write_block(x, sum_abs, b);
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
