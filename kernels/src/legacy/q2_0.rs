//! Q2_0: 2 bits per weight, 18 bytes per 64 weights. Weight = d*(q-1), `q` in 0..=3 (levels
//! -1, 0, 1, 2), `d` the block's largest magnitude (ggml's `quantize_row_q2_0_ref`; ggml
//! ignores importance weights for this format).

use super::cvtt;
use crate::fp::Half;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType};
use std::mem::size_of;

/// Weights per Q2_0 block.
pub const QK2_0: usize = 64;

/// The 2-bit format with levels -1, 0, 1, 2.
pub struct Q2_0;

/// One Q2_0 block (ggml's `block_q2_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2_0 {
    /// Scale: the block's largest magnitude.
    pub d: Half,
    /// Levels: weight `j` in bits `2*(j % 4)` of byte `j / 4`.
    pub qs: [u8; QK2_0 / 4],
}
const _: () = assert!(size_of::<BlockQ2_0>() == 18);

impl BlockFormat for Q2_0 {
    const TYPE: GgmlType = GgmlType::Q2_0;
    const BLOCK_WEIGHTS: usize = QK2_0;
    const BLOCK_BYTES: usize = size_of::<BlockQ2_0>();
    const USES_IMATRIX: bool = false;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (x, b) in src
            .chunks_exact(QK2_0)
            .zip(as_blocks_mut::<BlockQ2_0>(dst).iter_mut())
        {
            let mut amax = 0.0f32;
            for &v in x {
                let a = v.abs();
                if a > amax {
                    amax = a;
                }
            }
            let d = amax;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            b.d = Half::from_f32(d);
            b.qs = [0; QK2_0 / 4];
            for (j, &w) in x.iter().enumerate() {
                // C's `(int)roundf(w*id)`: the reciprocal of a subnormal scale is infinite,
                // where C's conversion gives INT_MIN (see `cvtt`).
                let q = cvtt((w * id).round()).wrapping_add(1).clamp(0, 3);
                b.qs[j / 4] |= (q as u8) << ((j % 4) * 2);
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ2_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK2_0))
        {
            let d = b.d.to_f32();
            for (j, o) in y.iter_mut().enumerate() {
                let q = (b.qs[j / 4] >> ((j % 4) * 2)) & 0x03;
                *o = (q as i32 - 1) as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ2_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
