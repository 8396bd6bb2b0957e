//! Q2_K: 84 bytes per 256 weights: a 4-bit scale and min per 16-weight sub-block, 2-bit
//! levels, and the super-block's f16 `d` and `dmin`. Weight = d*sc*l - dmin*m.

use super::search::{
    make_qkx2_quants, make_qkx3_quants, make_qkx_lanes, make_qp_quants, nearest_int, MinSearch,
};
use super::{pack_2bit, sum_squares, QK_K};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 2-bit K-quant.
pub struct Q2K;

/// One Q2_K super-block (ggml's `block_q2_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    /// Per 16-weight sub-block: scale level in the low nibble, min level in the high one.
    pub scales: [u8; QK_K / 16],
    /// 2-bit levels: per 128 weights, 32 bytes; byte `i` holds weights `i`, `i + 32`,
    /// `i + 64`, `i + 96` from the low bits up.
    pub qs: [u8; QK_K / 4],
    /// Scale of the sub-block scales.
    pub d: Half,
    /// Scale of the sub-block mins.
    pub dmin: Half,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

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
#[inline(always)]
fn requantize(x: &[f32], y: &BlockQ2K, l: &mut [u8; QK_K]) {
    let (dm, mm) = (y.d.to_f32(), y.dmin.to_f32());
    for j in 0..QK_K / 16 {
        let d = dm * (y.scales[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (y.scales[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
        }
    }
}

/// ggml's `quantize_row_q2_K_ref` for one super-block; `LANES` runs the sixteen sub-blocks'
/// searches side by side ([`make_qkx_lanes`]), else one after another.
#[inline(always)]
fn quantize_block_ref<const LANES: bool>(x: &[f32], y: &mut BlockQ2K) {
    let x = &x[..QK_K];
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let q4scale = 15.0f32;
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    if LANES {
        let weights: [f32; QK_K] = std::array::from_fn(|i| x[i].abs());
        scales = make_qkx_lanes::<16, 16, false>(3, x, &weights, &mut l, &mut mins, REF_SEARCH);
    } else {
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let mut weights = [0.0f32; 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            scales[j] =
                make_qkx2_quants(3, xs, &weights, &mut l[16 * j..], &mut mins[j], REF_SEARCH);
        }
    }
    for j in 0..16 {
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
            y.scales[j] = nearest_int(iscale * scales[j]) as u8;
        }
        y.d = Half::from_f32(max_scale / q4scale);
    } else {
        y.scales.fill(0);
        y.d = Half::from_f32(0.0);
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            y.scales[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        y.dmin = Half::from_f32(max_min / q4scale);
    } else {
        y.dmin = Half::from_f32(0.0);
    }
    requantize(x, y, &mut l);
    pack_2bit(&l, &mut y.qs);
}

/// ggml's `quantize_row_q2_K_impl` for one super-block; `LANES` as in
/// [`quantize_block_ref`].
#[inline(always)]
fn quantize_block_imatrix<const LANES: bool>(x: &[f32], y: &mut BlockQ2K, qw: &[f32]) {
    let (x, qw) = (&x[..QK_K], &qw[..QK_K]);
    let mut l = [0u8; QK_K];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let sigma2 = sum_squares(x) / QK_K as f32;
    let mut weight = [0.0f32; QK_K];
    for i in 0..QK_K {
        weight[i] = qw[i] * (sigma2 + x[i] * x[i]).sqrt();
    }
    for j in 0..16 {
        for &w in &weight[16 * j..16 * j + 16] {
            sw[j] += w;
        }
    }
    if LANES {
        scales = make_qkx_lanes::<16, 16, true>(3, x, &weight, &mut l, &mut mins, IMATRIX_SEARCH);
    } else {
        for j in 0..16 {
            let (xs, ws) = (&x[16 * j..16 * j + 16], &weight[16 * j..16 * j + 16]);
            scales[j] = make_qkx3_quants(3, xs, ws, &mut l[16 * j..], &mut mins[j], IMATRIX_SEARCH);
        }
    }
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    y.d = Half::from_f32(dm);
    y.dmin = Half::from_f32(mm);
    for j in 0..16 {
        y.scales[j] = ls[j] | (lm[j] << 4);
    }
    requantize(x, y, &mut l);
    pack_2bit(&l, &mut y.qs);
}

/// A row; `LANES` runs each super-block's sub-block searches side by side. A loop rather
/// than a closure, so that the SIMD paths compile all of it for their target features.
#[inline(always)]
fn row<const LANES: bool>(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
    let blocks = crate::as_blocks_mut::<BlockQ2K>(dst).iter_mut();
    for (i, (x, y)) in src.chunks_exact(QK_K).zip(blocks).enumerate() {
        match imatrix {
            None => quantize_block_ref::<LANES>(x, y),
            Some(q) => quantize_block_imatrix::<LANES>(x, y, &q[i * QK_K..(i + 1) * QK_K]),
        }
    }
}

x86_paths! {
    /// [`row`] with the sub-block searches in lanes.
    fn row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        super::row::<true>(src, dst, imatrix)
    }
}

impl BlockFormat for Q2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockQ2K>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        dispatch!(simd,
            neon => neon::row(src, dst, imatrix),
            avx512 => avx512::row(src, dst, imatrix),
            avx2 => avx2::row(src, dst, imatrix),
            scalar => row::<false>(src, dst, imatrix),
        )
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ2K>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            let min = b.dmin.to_f32();
            let mut out = 0;
            let mut is = 0;
            for n in 0..2 {
                let q = &b.qs[32 * n..32 * n + 32];
                for shift in [0u32, 2, 4, 6] {
                    for half in 0..2 {
                        let sc = b.scales[is];
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
        as_blocks::<BlockQ2K>(row)
            .iter()
            .position(|b| b.d.is_non_finite() || b.dmin.is_non_finite())
    }
}
