//! Q6_K: 210 bytes per 256 weights. Layout: 128 bytes of low 4-bit levels, 64 bytes of high
//! 2 bits, sixteen signed 8-bit scales (one per 16-weight sub-block), `d` (f16).
//! Weight = d*sc*(l-32).

use super::search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::{for_each_superblock, QK_K};
use crate::fp::{f32_to_f16, first_bad_scale, get_f16, put_u16};
use crate::{BlockFormat, GgmlType};

/// The 6-bit K-quant.
pub struct Q6K;

const QL: usize = 0;
const QH: usize = 128;
const SCALES: usize = 192;
const D: usize = 208;

fn quantize_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut li = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let w = qw.map(|q| &q[16 * ib..16 * ib + 16]);
        let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut li[16 * ib..], w);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        put_u16(y, D, f32_to_f16(0.0));
        return;
    }
    let iscale = -128.0 / max_scale;
    put_u16(y, D, f32_to_f16(1.0 / iscale));
    for ib in 0..16 {
        y[SCALES + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d_all = get_f16(y, D);
    for j in 0..16 {
        let d = d_all * (y[SCALES + j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            li[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let l = li.map(|v| v as u8);
    for (n, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            let q1 = l[j + k] & 0xF;
            let q2 = l[j + k + 32] & 0xF;
            let q3 = l[j + k + 64] & 0xF;
            let q4 = l[j + k + 96] & 0xF;
            y[QL + 64 * n + k] = q1 | (q3 << 4);
            y[QL + 64 * n + k + 32] = q2 | (q4 << 4);
            y[QH + 32 * n + k] = (l[j + k] >> 4)
                | ((l[j + k + 32] >> 4) << 2)
                | ((l[j + k + 64] >> 4) << 4)
                | ((l[j + k + 96] >> 4) << 6);
        }
    }
}

impl BlockFormat for Q6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = 210;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        for_each_superblock(src, dst, Self::BLOCK_BYTES, imatrix, |x, y, qw| {
            quantize_block(x, y, qw);
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = get_f16(b, D);
            for n in 0..2 {
                let ql = &b[QL + 64 * n..QL + 64 * n + 64];
                let qh = &b[QH + 32 * n..QH + 32 * n + 32];
                let sc = &b[SCALES + 8 * n..SCALES + 8 * n + 8];
                let y = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[D])
    }
}
