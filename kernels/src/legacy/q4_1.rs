//! Q4_1: 4-bit with a min, 20 bytes per 32 weights. Weight = d*l + m, `l` in 0..15.

use super::{asym_imatrix_row, asym_ref_header, to_int, QK};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 4-bit legacy format with a min.
pub struct Q4_1;

/// One Q4_1 block (ggml's `block_q4_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: Half,
    /// Min (added to every weight).
    pub m: Half,
    /// Levels: weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

#[inline(always)]
fn pack<const FINITE: bool>(x: &[f32], min: f32, id: f32, qs: &mut [u8; QK / 2]) {
    let x = &x[..QK];
    for j in 0..QK / 2 {
        let xi0 = (to_int::<FINITE>((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (to_int::<FINITE>((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        qs[j] = xi0 | (xi1 << 4);
    }
}

/// ggml's `quantize_row_q4_1_ref`, portable.
fn ref_row(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src
        .chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ4_1>(dst).iter_mut())
    {
        let (min, id) = asym_ref_header(15.0, x, &mut b.d, &mut b.m);
        if id.is_finite() {
            pack::<true>(x, min, id, &mut b.qs);
        } else {
            pack::<false>(x, min, id, &mut b.qs);
        }
    }
}

/// ggml's `quantize_row_q4_1_impl` with importance weights; `LANES` searches blocks side
/// by side.
#[inline(always)]
fn imatrix_row<const LANES: bool>(src: &[f32], dst: &mut [u8], qw: &[f32]) {
    let blocks = as_blocks_mut::<BlockQ4_1>(dst);
    asym_imatrix_row::<LANES>(15, src, qw, |ib, d, m, l| {
        if let Some(b) = blocks.get_mut(ib) {
            b.d = Half::from_f32(d);
            b.m = Half::from_f32(m);
            for j in 0..QK / 2 {
                b.qs[j] = l[j] | (l[j + QK / 2] << 4);
            }
        }
    });
}

x86_paths! {
    /// [`ref_row`] with SIMD: min and max by reductions (a zero extreme fixed up to ggml's
    /// first zero), the 32 levels in lanes.
    fn ref_row(src: &[f32], dst: &mut [u8]) {
        for (x, b) in src
            .as_chunks::<QK>()
            .0
            .iter()
            .zip(as_blocks_mut::<BlockQ4_1>(dst).iter_mut())
        {
            let (min, max) = v::min_max(x);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = v::f16(d);
            b.m = v::f16(min);
            b.qs = v::nibbles_capped(v::trunc_levels::<true>(x, min, id, 0.5), 15);
        }
    }

    /// [`imatrix_row`] with the blocks' searches in lanes.
    fn imatrix_row(src: &[f32], dst: &mut [u8], qw: &[f32]) {
        super::imatrix_row::<true>(src, dst, qw)
    }
}

impl BlockFormat for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = size_of::<BlockQ4_1>();
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
        for (b, y) in as_blocks::<BlockQ4_1>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = b.d.to_f32();
            let m = b.m.to_f32();
            for j in 0..QK / 2 {
                let q = b.qs[j];
                y[j] = (q & 0x0F) as f32 * d + m;
                y[j + QK / 2] = (q >> 4) as f32 * d + m;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ4_1>(row)
            .iter()
            .position(|b| b.d.is_non_finite() || b.m.is_non_finite())
    }
}
