//! Q8_0: 8-bit symmetric, 34 bytes per 32 weights. Weight = d*q, `q` a signed byte.

use super::{cvtt, QK};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 8-bit legacy format.
pub struct Q8_0;

/// One Q8_0 block (ggml's `block_q8_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: Half,
    /// The weights' levels, signed bytes.
    pub qs: [i8; QK],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// `roundf` (halves away from zero) for |v| < 2^23, in integer and compare operations that
/// vectorize (without SSE4.1, `f32::round` is a library call).
#[inline(always)]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32; // truncation toward zero
    let frac = v - t as f32; // exact for |v| < 2^23
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

#[inline(always)]
fn levels<const FINITE: bool>(x: &[f32], id: f32, qs: &mut [i8; QK]) {
    let x = &x[..QK];
    for j in 0..QK {
        let v = x[j] * id;
        qs[j] = if FINITE {
            round_half_away(v)
        } else {
            cvtt(v.round())
        } as i8;
    }
}

/// ggml's `quantize_row_q8_0_ref`, portable.
fn ref_row(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src
        .chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ8_0>(dst).iter_mut())
    {
        let mut amax = 0.0f32;
        for &v in x {
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = Half::from_f32(d);
        if id.is_finite() {
            levels::<true>(x, id, &mut b.qs);
        } else {
            levels::<false>(x, id, &mut b.qs);
        }
    }
}

x86_paths! {
    /// [`ref_row`] with SIMD: the largest magnitude by a reduction, the levels in lanes
    /// (a block of subnormals, whose reciprocal scale is infinite, the portable way).
    fn ref_row(src: &[f32], dst: &mut [u8]) {
        for (x, b) in src
            .as_chunks::<QK>()
            .0
            .iter()
            .zip(as_blocks_mut::<BlockQ8_0>(dst).iter_mut())
        {
            let d = v::amax(x) / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = v::f16(d);
            if id.is_finite() {
                v::store32(v::round_levels(x, id), bytemuck::cast_mut(&mut b.qs));
            } else {
                levels::<false>(x, id, &mut b.qs);
            }
        }
    }
}

impl BlockFormat for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = size_of::<BlockQ8_0>();
    const SIMD_PATHS: bool = true;
    const USES_IMATRIX: bool = false;

    /// ggml ignores importance weights for Q8_0; so does kiln.
    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        dispatch!(simd,
            neon => neon::ref_row(src, dst),
            avx512 => avx512::ref_row(src, dst),
            avx2 => avx2::ref_row(src, dst),
            scalar => ref_row(src, dst),
        )
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ8_0>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = b.d.to_f32();
            for j in 0..QK {
                y[j] = b.qs[j] as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ8_0>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
