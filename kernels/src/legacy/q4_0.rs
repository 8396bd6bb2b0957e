//! Q4_0: 4-bit symmetric, 18 bytes per 32 weights. Weight = d*(l-8), `l` in 0..15.

use super::{signed_absmax, sym_imatrix_row, to_int, QK};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 4-bit symmetric legacy format.
pub struct Q4_0;

/// One Q4_0 block (ggml's `block_q4_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: Half,
    /// Levels: weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

#[inline(always)]
fn pack<const FINITE: bool>(x: &[f32], id: f32, qs: &mut [u8; QK / 2]) {
    let x = &x[..QK];
    for j in 0..QK / 2 {
        let xi0 = (to_int::<FINITE>(x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = (to_int::<FINITE>(x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        qs[j] = xi0 | (xi1 << 4);
    }
}

/// ggml's `quantize_row_q4_0_ref`, portable.
fn ref_row(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src
        .chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ4_0>(dst).iter_mut())
    {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = Half::from_f32(d);
        if id.is_finite() {
            pack::<true>(x, id, &mut b.qs);
        } else {
            pack::<false>(x, id, &mut b.qs);
        }
    }
}

/// ggml's `quantize_row_q4_0_impl` with importance weights; `LANES` searches blocks side
/// by side.
#[inline(always)]
fn imatrix_row<const LANES: bool>(src: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = as_blocks_mut::<BlockQ4_0>(dst);
    sym_imatrix_row::<LANES>(8, src, qw, |ib, d, l| {
        if let Some(b) = blocks.get_mut(ib) {
            b.d = Half::from_f32(d);
            for j in 0..QK / 2 {
                b.qs[j] = (l[j] as u8) | ((l[j + QK / 2] as u8) << 4);
            }
        }
    });
}

x86_paths! {
    /// [`ref_row`] with SIMD: the block's extreme by a reduction (exact in any order), its
    /// 32 levels in lanes.
    fn ref_row(src: &[f32], dst: &mut [u8]) {
        for (x, b) in src
            .as_chunks::<QK>()
            .0
            .iter()
            .zip(as_blocks_mut::<BlockQ4_0>(dst).iter_mut())
        {
            let d = v::signed_absmax(x) / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = v::f16(d);
            b.qs = v::nibbles_capped(v::trunc_levels::<false>(x, 0.0, id, 8.5), 15);
        }
    }

    /// [`imatrix_row`] with the blocks' searches in lanes.
    fn imatrix_row(src: &[f32], dst: &mut [u8], qw: &[f32]) {
        super::imatrix_row::<true>(src, dst, qw)
    }
}

impl BlockFormat for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = size_of::<BlockQ4_0>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        match imatrix {
            None => dispatch!(simd,
                neon => neon::ref_row(src, dst),
                avx512 => avx512::ref_row(src, dst),
                avx2 => avx2::ref_row(src, dst),
                scalar => ref_row(src, dst),
            ),
            Some(qw) => dispatch!(simd,
                neon => neon::imatrix_row(src, dst, qw),
                avx512 => avx512::imatrix_row(src, dst, qw),
                avx2 => avx2::imatrix_row(src, dst, qw),
                scalar => imatrix_row::<false>(src, dst, qw),
            ),
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ4_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = b.d.to_f32();
            for j in 0..QK / 2 {
                let q = b.qs[j];
                y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ4_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
