//! Q5_0: 5-bit symmetric, 22 bytes per 32 weights. Weight = d*(l-16), `l` in 0..31.

use super::{pack_q5, q5_level, signed_absmax, sym_imatrix_row, to_int, QK};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 5-bit symmetric legacy format.
pub struct Q5_0;

/// One Q5_0 block (ggml's `block_q5_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: Half,
    /// Fifth bits, a little-endian u32: bit `j` belongs to weight `j`.
    pub qh: [u8; 4],
    /// Low 4 bits: weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

#[inline(always)]
fn levels<const FINITE: bool>(x: &[f32], id: f32, l: &mut [u8; QK]) {
    let x = &x[..QK];
    for j in 0..QK {
        l[j] = (to_int::<FINITE>(x[j] * id + 16.5) as i8).min(31) as u8;
    }
}

/// ggml's `quantize_row_q5_0_ref`, portable.
fn ref_row(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src
        .chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ5_0>(dst).iter_mut())
    {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = Half::from_f32(d);
        let mut l = [0u8; QK];
        if id.is_finite() {
            levels::<true>(x, id, &mut l);
        } else {
            levels::<false>(x, id, &mut l);
        }
        pack_q5(|j| l[j], &mut b.qh, &mut b.qs);
    }
}

/// ggml's `quantize_row_q5_0_impl` with importance weights; `LANES` searches blocks side
/// by side.
#[inline(always)]
fn imatrix_row<const LANES: bool>(src: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = as_blocks_mut::<BlockQ5_0>(dst);
    sym_imatrix_row::<LANES>(16, src, qw, |ib, d, l| {
        if let Some(b) = blocks.get_mut(ib) {
            b.d = Half::from_f32(d);
            pack_q5(|j| l[j] as u8, &mut b.qh, &mut b.qs);
        }
    });
}

x86_paths! {
    /// [`ref_row`] with SIMD: the block's extreme by a reduction, its levels in lanes.
    fn ref_row(src: &[f32], dst: &mut [u8]) {
        for (x, b) in src
            .as_chunks::<QK>()
            .0
            .iter()
            .zip(as_blocks_mut::<BlockQ5_0>(dst).iter_mut())
        {
            let d = v::signed_absmax(x) / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = v::f16(d);
            let l = v::cap(v::trunc_levels::<false>(x, 0.0, id, 16.5), 31);
            (b.qh, b.qs) = v::q5_pack(l);
        }
    }

    /// [`imatrix_row`] with the blocks' searches in lanes.
    fn imatrix_row(src: &[f32], dst: &mut [u8], qw: &[f32]) {
        super::imatrix_row::<true>(src, dst, qw)
    }
}

impl BlockFormat for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = size_of::<BlockQ5_0>();
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
        for (b, y) in as_blocks::<BlockQ5_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = b.d.to_f32();
            let qh = u32::from_le_bytes(b.qh);
            for j in 0..QK / 2 {
                let (x0, x1) = q5_level(&b.qs, qh, j);
                y[j] = (x0 - 16) as f32 * d;
                y[j + QK / 2] = (x1 - 16) as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ5_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
