//! Q5_K: 176 bytes per 256 weights: the scale header of Q4_K ([`ScalesK4`]), the levels'
//! fifth bits, their low 4 bits. Weight = d*sc*l - dmin*m.

use super::q4_k::{requantize, row, sub_scales, BlockK4, ScalesK4};
use super::search::MinSearch;
use super::QK_K;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 5-bit K-quant.
pub struct Q5K;

/// One Q5_K super-block (ggml's `block_q5_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    /// `d`, `dmin` and the sub-block scales and mins.
    pub head: ScalesK4,
    /// Fifth bits: per 64 weights, one bit pair of byte `k` for weights `k` and `k + 32`.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits, laid out as Q4_K's levels.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

const REF_SEARCH: MinSearch = MinSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

/// Re-derives a super-block's levels from its stored scales and packs them.
#[inline(always)]
fn finish(x: &[f32], y: &mut BlockQ5K, l: &mut [u8; QK_K]) {
    requantize(x, &y.head, l, 31);
    let (qh, ql) = (&mut y.qh, &mut y.qs);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (k, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * k + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

impl BlockK4 for BlockQ5K {
    const NMAX: i32 = 31;
    const REF_SEARCH: MinSearch = REF_SEARCH;
    const CAP_LEVELS: bool = true;

    #[inline(always)]
    fn head(&mut self) -> &mut ScalesK4 {
        &mut self.head
    }

    #[inline(always)]
    fn finish(&mut self, x: &[f32], l: &mut [u8; QK_K]) {
        finish(x, self, l)
    }
}

x86_paths! {
    /// [`row`] with the sub-block searches in lanes.
    fn row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        super::row::<BlockQ5K, true>(src, dst, imatrix)
    }
}

impl BlockFormat for Q5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockQ5K>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        dispatch!(simd,
            neon => neon::row(src, dst, imatrix),
            avx512 => avx512::row(src, dst, imatrix),
            avx2 => avx2::row(src, dst, imatrix),
            scalar => row::<BlockQ5K, false>(src, dst, imatrix),
        )
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ5K>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let s = sub_scales(&b.head);
            let qh = &b.qh;
            let (mut u1, mut u2) = (1u8, 2u8);
            for n in 0..4 {
                let ql = &b.qs[32 * n..32 * n + 32];
                let (d1, m1) = s[2 * n];
                let (d2, m2) = s[2 * n + 1];
                for l in 0..32 {
                    let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[64 * n + l] = d1 * ((ql[l] & 0xF) as i32 + h1) as f32 - m1;
                    y[64 * n + 32 + l] = d2 * ((ql[l] >> 4) as i32 + h2) as f32 - m2;
                }
                u1 <<= 2;
                u2 <<= 2;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ5K>(row)
            .iter()
            .position(|b| b.head.is_non_finite())
    }
}
