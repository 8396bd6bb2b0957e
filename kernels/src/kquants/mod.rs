//! The K-quants: 256-weight super-blocks of 16- or 32-weight sub-blocks, each sub-block with
//! its own quantized scale (and min), the super-block with f16 scales for those.
//!
//! Without importance weights each follows ggml's `quantize_row_qN_K_ref`; with them ggml's
//! `quantize_row_qN_K_impl`, where the weight of column `j` is
//! `imatrix[j] * sqrt(sigma2 + x[j]^2)` and `sigma2` comes from the super-block's mean square.

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod search;

pub use q2_k::{BlockQ2K, Q2K};
pub use q3_k::{BlockQ3K, Q3K};
pub use q4_k::{BlockQ4K, ScalesK4, Q4K};
pub use q5_k::{BlockQ5K, Q5K};
pub use q6_k::{BlockQ6K, Q6K};

use crate::as_blocks_mut;

/// Weights per super-block.
pub const QK_K: usize = 256;

/// Packs 2-bit levels of 256 weights into 64 bytes the way Q2_K and Q3_K store them.
#[inline]
pub(crate) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// Calls `f` on each super-block of a row with its output block and, when an importance
/// matrix is given, its 256 importance weights.
#[inline(always)]
pub(crate) fn for_each_superblock<B: bytemuck::Pod>(
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
    mut f: impl FnMut(&[f32], &mut B, Option<&[f32]>),
) {
    for (i, (x, y)) in src
        .chunks_exact(QK_K)
        .zip(as_blocks_mut::<B>(dst).iter_mut())
        .enumerate()
    {
        f(x, y, imatrix.map(|q| &q[i * QK_K..(i + 1) * QK_K]));
    }
}

/// Sum of squares, in ggml's order (sequential: the order changes the rounding).
#[inline]
pub(crate) fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}
