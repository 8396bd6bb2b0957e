//! Q2_K: 84 bytes per 256 weights. Layout: 16 bytes of 4-bit scale|min<<4 per 16-weight
//! sub-block, 64 bytes of 2-bit levels, `d` and `dmin` (f16). Weight = d*sc*l - dmin*m.

use super::search::{make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int, MinSearch};
use super::{for_each_superblock, pack_2bit, sum_squares, QK_K};
use crate::fp::{f32_to_f16, first_bad_scale, get_f16, put_u16};
use crate::{BlockFormat, GgmlType};

/// The 2-bit K-quant.
pub struct Q2K;

const QS: usize = 16;
const D: usize = 80;
const DMIN: usize = 82;

const REF_SEARCH: MinSearch = MinSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};
const IMATRIX_SEARCH: MinSearch = MinSearch {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// Re-derives the levels from the stored (rounded) scales, as ggml does after packing them.
fn requantize(x: &[f32], y: &[u8], dm: f32, mm: f32, l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 16 {
        let d = dm * (y[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (y[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
        }
    }
}

fn quantize_block_ref(x: &[f32], y: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let q4scale = 15.0f32;
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weights = [0.0f32; 16];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        scales[j] = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..], &mut mins[j], REF_SEARCH);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            y[j] = nearest_int(iscale * scales[j]) as u8;
        }
        put_u16(y, D, f32_to_f16(max_scale / q4scale));
    } else {
        y[..16].fill(0);
        put_u16(y, D, f32_to_f16(0.0));
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            y[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        put_u16(y, DMIN, f32_to_f16(max_min / q4scale));
    } else {
        put_u16(y, DMIN, f32_to_f16(0.0));
    }
    let (dm, mm) = (get_f16(y, D), get_f16(y, DMIN));
    requantize(x, y, dm, mm, &mut l);
    pack_2bit(&l, &mut y[QS..QS + 64]);
}

fn quantize_block_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let sigma2 = sum_squares(x) / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weight = [0.0f32; 16];
        for i in 0..16 {
            weight[i] = qw[16 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt();
        }
        for w in weight {
            sw[j] += w;
        }
        scales[j] = make_qkx3_quants(
            3,
            xs,
            &weight,
            &mut l[16 * j..],
            &mut mins[j],
            IMATRIX_SEARCH,
        );
    }
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    put_u16(y, D, f32_to_f16(dm));
    put_u16(y, DMIN, f32_to_f16(mm));
    for j in 0..16 {
        y[j] = ls[j] | (lm[j] << 4);
    }
    let (dm, mm) = (get_f16(y, D), get_f16(y, DMIN));
    requantize(x, y, dm, mm, &mut l);
    pack_2bit(&l, &mut y[QS..QS + 64]);
}

impl BlockFormat for Q2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = 84;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        for_each_superblock(src, dst, Self::BLOCK_BYTES, imatrix, |x, y, qw| match qw {
            None => quantize_block_ref(x, y),
            Some(qw) => quantize_block_imatrix(x, y, qw),
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = get_f16(b, D);
            let min = get_f16(b, DMIN);
            let mut out = 0;
            let mut is = 0;
            for n in 0..2 {
                let q = &b[QS + 32 * n..QS + 32 * n + 32];
                for shift in [0u32, 2, 4, 6] {
                    for half in 0..2 {
                        let sc = b[is];
                        is += 1;
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for l in 0..16 {
                            y[out] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                            out += 1;
                        }
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[D, DMIN])
    }
}
