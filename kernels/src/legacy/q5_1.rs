//! Q5_1: 5-bit with a min, 24 bytes per 32 weights. Weight = d*l + m, `l` in 0..31.

use super::{asym_imatrix_block, asym_ref_header, pack_q5, q5_level, row_sigma2, to_int, QK};
use crate::fp::Half;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType};
use std::mem::size_of;

/// The 5-bit legacy format with a min.
pub struct Q5_1;

/// One Q5_1 block (ggml's `block_q5_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: Half,
    /// Min (added to every weight).
    pub m: Half,
    /// Fifth bits, a little-endian u32: bit `j` belongs to weight `j`.
    pub qh: [u8; 4],
    /// Low 4 bits: weight `j` in the low nibble of byte `j`, weight `j + 16` in the high one.
    pub qs: [u8; QK / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

#[inline(always)]
fn levels<const FINITE: bool>(x: &[f32], min: f32, id: f32, l: &mut [u8; QK]) {
    let x = &x[..QK];
    for j in 0..QK {
        l[j] = to_int::<FINITE>((x[j] - min) * id + 0.5) as u8;
    }
}

impl BlockFormat for Q5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = size_of::<BlockQ5_1>();

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let blocks = src
            .chunks_exact(QK)
            .zip(as_blocks_mut::<BlockQ5_1>(dst).iter_mut());
        match imatrix {
            None => {
                for (x, b) in blocks {
                    let (min, id) = asym_ref_header(31.0, x, &mut b.d, &mut b.m);
                    let mut l = [0u8; QK];
                    if id.is_finite() {
                        levels::<true>(x, min, id, &mut l);
                    } else {
                        levels::<false>(x, min, id, &mut l);
                    }
                    pack_q5(|j| l[j], &mut b.qh, &mut b.qs);
                }
            }
            Some(qw) => {
                let sigma2 = row_sigma2(src);
                for (ib, (x, b)) in blocks.enumerate() {
                    let (d, m, l) = asym_imatrix_block(31, x, &qw[ib * QK..], sigma2);
                    b.d = Half::from_f32(d);
                    b.m = Half::from_f32(m);
                    pack_q5(|j| l[j], &mut b.qh, &mut b.qs);
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ5_1>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = b.d.to_f32();
            let m = b.m.to_f32();
            let qh = u32::from_le_bytes(b.qh);
            for j in 0..QK / 2 {
                let (x0, x1) = q5_level(&b.qs, qh, j);
                y[j] = x0 as f32 * d + m;
                y[j + QK / 2] = x1 as f32 * d + m;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ5_1>(row)
            .iter()
            .position(|b| b.d.is_non_finite() || b.m.is_non_finite())
    }
}
