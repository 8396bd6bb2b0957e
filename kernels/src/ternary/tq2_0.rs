//! TQ2_0: 66 bytes per 256 weights, four 2-bit trits per byte and the f16 scale.
//! Weight = d*(t-1).

use super::{scale, trit};
use crate::fp::Half;
use crate::kquants::QK_K;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType};
use std::mem::size_of;

/// The 2-bit ternary format.
#[allow(non_camel_case_types)]
pub struct TQ2_0;

/// One TQ2_0 block (ggml's `block_tq2_0`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockTQ2_0 {
    /// Per 128 weights, 32 bytes: byte `m` holds weights `m + 32n` in bits `2n` (n = 0..4).
    pub qs: [u8; QK_K / 4],
    /// Scale: the block's largest magnitude.
    pub d: Half,
}
const _: () = assert!(size_of::<BlockTQ2_0>() == 66);

impl BlockFormat for TQ2_0 {
    const TYPE: GgmlType = GgmlType::TQ2_0;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockTQ2_0>();
    const USES_IMATRIX: bool = false;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (x, b) in src
            .chunks_exact(QK_K)
            .zip(as_blocks_mut::<BlockTQ2_0>(dst).iter_mut())
        {
            let (d, id) = scale(x);
            b.d = Half::from_f32(d);
            for (j, x) in (0..QK_K / 4).step_by(32).zip(x.chunks_exact(128)) {
                for m in 0..32 {
                    let mut q = 0u8;
                    for n in 0..4 {
                        let xi = trit(x[m + n * 32] * id);
                        q = (q as i32).wrapping_add((xi & 3) << (2 * n)) as u8;
                    }
                    b.qs[j + m] = q;
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockTQ2_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for (j, y) in (0..QK_K / 4).step_by(32).zip(y.chunks_exact_mut(128)) {
                for l in 0..4 {
                    for m in 0..32 {
                        let q = ((b.qs[j + m] >> (l * 2)) & 3) as i8;
                        y[l * 32 + m] = (q - 1) as f32 * d;
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockTQ2_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
