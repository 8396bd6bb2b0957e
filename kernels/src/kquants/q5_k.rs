//! Q5_K: 176 bytes per 256 weights. Layout: `d`, `dmin` (f16), 12 bytes of 6-bit scales and
//! mins (as Q4_K), 32 bytes of fifth bits, 128 bytes of low 4-bit levels.

use super::q4_k::{imatrix_scales, ref_scales, requantize, sub_scales, D, DMIN};
use super::search::MinSearch;
use super::{for_each_superblock, QK_K};
use crate::fp::first_bad_scale;
use crate::{BlockFormat, GgmlType};

/// The 5-bit K-quant.
pub struct Q5K;

const QH: usize = 16;
const QS: usize = 48;

const REF_SEARCH: MinSearch = MinSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: false,
};

impl BlockFormat for Q5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = 176;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        for_each_superblock(src, dst, Self::BLOCK_BYTES, imatrix, |x, y, qw| {
            let mut l = [0u8; QK_K];
            match qw {
                None => ref_scales(x, y, &mut l, 31, REF_SEARCH),
                Some(qw) => imatrix_scales(x, y, &mut l, 31, qw, true),
            }
            requantize(x, y, &mut l, 31);
            let (qh, ql) = y[QH..].split_at_mut(QS - QH);
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
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let s = sub_scales(b);
            let qh = &b[QH..QH + 32];
            let (mut u1, mut u2) = (1u8, 2u8);
            for n in 0..4 {
                let ql = &b[QS + 32 * n..QS + 32 * n + 32];
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
        first_bad_scale(row, Self::BLOCK_BYTES, &[D, DMIN])
    }
}
