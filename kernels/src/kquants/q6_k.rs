//! Q6_K: 210 bytes per 256 weights: the levels' low 4 bits, their high 2 bits, sixteen signed
//! 8-bit scales (one per 16-weight sub-block) and the super-block's f16 `d`.
//! Weight = d*sc*(l-32).

use super::search::{make_qx_quants, make_qx_quants_lanes, nearest_int, GROUP_MAX_EPS};
use super::{for_each_superblock, QK_K};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 6-bit K-quant.
pub struct Q6K;

/// One Q6_K super-block (ggml's `block_q6_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    /// Low 4 bits: per 128 weights, 64 bytes; byte `k` holds weights `k` (low nibble) and
    /// `k + 64` (high nibble).
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: per 128 weights, 32 bytes; byte `k` holds weights `k`, `k + 32`, `k + 64`,
    /// `k + 96` from the low bits up.
    pub qh: [u8; QK_K / 4],
    /// Signed scale of each 16-weight sub-block.
    pub scales: [i8; QK_K / 16],
    /// Scale of the sub-block scales.
    pub d: Half,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// One super-block, the sixteen sub-blocks searched one after another.
fn quantize_block(x: &[f32], y: &mut BlockQ6K, qw: Option<&[f32]>) {
    let mut li = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for ib in 0..16 {
        let w = qw.map(|q| &q[16 * ib..16 * ib + 16]);
        scales[ib] = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut li[16 * ib..], w);
    }
    finish_block(x, y, li, scales);
}

x86_paths! {
    /// The row with the sixteen sub-blocks' searches in lanes ([`make_qx_quants_lanes`]).
    fn row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        // A loop rather than a closure, so that all of it is compiled for this path's
        // target features.
        let blocks = crate::as_blocks_mut::<BlockQ6K>(dst).iter_mut();
        for (i, (x, y)) in src.chunks_exact(QK_K).zip(blocks).enumerate() {
            let qw = imatrix.map(|q| &q[i * QK_K..(i + 1) * QK_K]);
            let mut li = [0i8; QK_K];
            let scales = make_qx_quants_lanes::<16, 16>(32, x, &mut li, qw);
            finish_block(x, y, li, scales);
        }
    }
}

/// The rest of ggml's Q6_K quantization once the sub-blocks' levels and scales are known.
#[inline(always)]
fn finish_block(x: &[f32], y: &mut BlockQ6K, mut li: [i8; QK_K], scales: [f32; 16]) {
    let x = &x[..QK_K];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let scale = scales[ib];
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *y = bytemuck::Zeroable::zeroed();
        y.d = Half::from_f32(0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    y.d = Half::from_f32(1.0 / iscale);
    for ib in 0..16 {
        y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    let d_all = y.d.to_f32();
    for j in 0..16 {
        let d = d_all * y.scales[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            li[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    pack(&li.map(|v| v as u8), y);
}

/// Packs a super-block's 256 levels (0..=63) into its low 4 bits (`ql`) and high 2 bits (`qh`),
/// as ggml lays them out.
#[inline(always)]
pub(crate) fn pack(l: &[u8; QK_K], y: &mut BlockQ6K) {
    for (n, j) in (0..QK_K).step_by(128).enumerate() {
        for k in 0..32 {
            let q1 = l[j + k] & 0xF;
            let q2 = l[j + k + 32] & 0xF;
            let q3 = l[j + k + 64] & 0xF;
            let q4 = l[j + k + 96] & 0xF;
            y.ql[64 * n + k] = q1 | (q3 << 4);
            y.ql[64 * n + k + 32] = q2 | (q4 << 4);
            y.qh[32 * n + k] = (l[j + k] >> 4)
                | ((l[j + k + 32] >> 4) << 2)
                | ((l[j + k + 64] >> 4) << 4)
                | ((l[j + k + 96] >> 4) << 6);
        }
    }
}

impl BlockFormat for Q6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockQ6K>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        dispatch!(simd,
            neon => neon::row(src, dst, imatrix),
            avx512 => avx512::row(src, dst, imatrix),
            avx2 => avx2::row(src, dst, imatrix),
            scalar => for_each_superblock(src, dst, imatrix, |x, y: &mut BlockQ6K, qw| {
                quantize_block(x, y, qw);
            }),
        )
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ6K>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for n in 0..2 {
                let ql = &b.ql[64 * n..64 * n + 64];
                let qh = &b.qh[32 * n..32 * n + 32];
                let sc = &b.scales[8 * n..8 * n + 8];
                let y = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * sc[is] as f32 * q1 as f32;
                    y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                    y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                    y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ6K>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
