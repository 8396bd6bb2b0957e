//! TQ1_0: 54 bytes per 256 weights. 240 weights as five trits per byte (a base-3 number scaled
//! to 0..=255 by ceiling division, so that a byte times 3^n, shifted, reads trit n), 16 as
//! four trits per byte, and the f16 scale. Weight = d*(t-1).

use super::{scale, trit};
use crate::fp::Half;
use crate::kquants::QK_K;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType};
use std::mem::size_of;

/// The 1.6875-bit ternary format.
#[allow(non_camel_case_types)]
pub struct TQ1_0;

/// One TQ1_0 block (ggml's `block_tq1_0`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockTQ1_0 {
    /// Five trits per byte: bytes 0..32 hold weights `m + 32n` (n = 0..5) of the first 160,
    /// bytes 32..48 weights `160 + m + 16n` of the next 80.
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    /// Four trits per byte: byte `j` holds weights `240 + j + 4m` (m = 0..4).
    pub qh: [u8; QK_K / 64],
    /// Scale: the block's largest magnitude.
    pub d: Half,
}
const _: () = assert!(size_of::<BlockTQ1_0>() == 54);

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// Packs five (or four, then shifted) trits into one byte as ggml does, in `uint8_t`
/// arithmetic, then ceiling-divides by 243 to spread them over a byte.
#[inline(always)]
fn pack(trits: impl Iterator<Item = i32>, shift: bool) -> u8 {
    let mut q = 0u8;
    for xi in trits {
        q = (q as i32 * 3) as u8;
        q = (q as i32).wrapping_add(xi) as u8;
    }
    if shift {
        q = (q as i32 * 3) as u8;
    }
    ((q as i32 * 256 + (243 - 1)) / 243) as u8
}

/// Trit `n` of a packed byte: 0, 1 or 2.
#[inline(always)]
fn unpack(byte: u8, n: usize) -> i16 {
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as i16
}

impl BlockFormat for TQ1_0 {
    const TYPE: GgmlType = GgmlType::TQ1_0;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockTQ1_0>();
    const USES_IMATRIX: bool = false;

    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (x, b) in src
            .chunks_exact(QK_K)
            .zip(as_blocks_mut::<BlockTQ1_0>(dst).iter_mut())
        {
            let (d, id) = scale(x);
            b.d = Half::from_f32(d);
            for m in 0..32 {
                b.qs[m] = pack((0..5).map(|n| trit(x[m + n * 32] * id)), false);
            }
            let x = &x[160..];
            for m in 0..16 {
                b.qs[32 + m] = pack((0..5).map(|n| trit(x[m + n * 16] * id)), false);
            }
            let x = &x[80..];
            for j in 0..4 {
                b.qh[j] = pack((0..4).map(|m| trit(x[j + m * 4] * id)), true);
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockTQ1_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            let mut k = 0;
            for n in 0..5 {
                for m in 0..32 {
                    y[k] = (unpack(b.qs[m], n) - 1) as f32 * d;
                    k += 1;
                }
            }
            for n in 0..5 {
                for m in 0..16 {
                    y[k] = (unpack(b.qs[32 + m], n) - 1) as f32 * d;
                    k += 1;
                }
            }
            for n in 0..4 {
                for j in 0..4 {
                    y[k] = (unpack(b.qh[j], n) - 1) as f32 * d;
                    k += 1;
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockTQ1_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
