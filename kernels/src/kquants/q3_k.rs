//! Q3_K: 110 bytes per 256 weights: the levels' high bits, their low 2 bits, sixteen 6-bit
//! signed scales (one per 16-weight sub-block) and the super-block's f16 `d`.
//! Weight = d*(sc-32)*(l-4).

use super::search::{make_q3_quants, make_qx_quants, make_qx_quants_lanes, nearest_int};
use super::{for_each_superblock, pack_2bit, sum_squares, QK_K};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 3-bit K-quant.
pub struct Q3K;

/// One Q3_K super-block (ggml's `block_q3_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    /// High bit of each level: bit `w / 32` of byte `w % 32` belongs to weight `w`.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits of the levels, packed as Q2_K's.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, offset by 32: the low 4 bits in the nibbles of bytes 0..8
    /// (sub-blocks 0..8 low, 8..16 high), the high 2 bits in bytes 8..12.
    pub scales: [u8; 12],
    /// Scale of the sub-block scales.
    pub d: Half,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// Packs sixteen 6-bit scale levels (0..63) into 12 bytes.
fn pack_scales(levels: impl Fn(usize) -> i32) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..16 {
        let l = levels(j);
        if j < 8 {
            s[j] = (l & 0xF) as u8;
        } else {
            s[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        let hi = l >> 4;
        s[j % 4 + 8] |= (hi << (2 * (j / 4))) as u8;
    }
    s
}

/// Sub-block `j`'s signed scale (-32..31) from the 12 packed bytes.
#[inline]
fn scale(s: &[u8; 12], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let sc = (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8;
    (sc as i32) - 32
}

/// Re-derives the levels from the stored scales, then writes hmask and the 2-bit levels.
/// Inlined, so that the SIMD paths get it compiled for their instruction set (the loops are
/// written to vectorize: 16 divisions by one `d`, then weight `w`'s high bit into bit
/// `w / 32` of `hmask[w % 32]`, as ggml's running `m`/`hm` pair does).
#[inline(always)]
fn requantize_and_pack(x: &[f32], y: &mut BlockQ3K, l: &mut [u8; QK_K]) {
    let x = &x[..QK_K];
    let d_all = y.d.to_f32();
    for j in 0..16 {
        let d = d_all * scale(&y.scales, j) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as u8;
        }
    }
    let mut hmask = [0u8; QK_K / 8];
    for k in 0..8 {
        for m in 0..QK_K / 8 {
            let v = l[32 * k + m];
            let hi = v > 3;
            hmask[m] |= (hi as u8) << k;
            l[32 * k + m] = if hi { v - 4 } else { v };
        }
    }
    y.hmask = hmask;
    pack_2bit(l, &mut y.qs);
}

/// ggml's `quantize_row_q3_K_ref` for one super-block, the sub-blocks searched one after
/// another.
fn quantize_block_ref(x: &[f32], y: &mut BlockQ3K) {
    let mut li = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut li[16 * j..]);
    }
    finish_block_ref(x, y, li, scales);
}

x86_paths! {
    /// ggml's `quantize_row_q3_K_impl` with the sub-blocks' searches in lanes.
    fn imatrix_row(src: &[f32], dst: &mut [u8], imatrix: &[f32]) {
        // A loop rather than a closure, so that all of it is compiled for this path's
        // target features.
        let blocks = crate::as_blocks_mut::<BlockQ3K>(dst).iter_mut();
        for (i, (x, y)) in src.chunks_exact(QK_K).zip(blocks).enumerate() {
            quantize_block_imatrix::<true>(x, y, &imatrix[i * QK_K..(i + 1) * QK_K]);
        }
    }

    /// ggml's `quantize_row_q3_K_ref` with the sixteen sub-blocks' searches in lanes
    /// ([`make_q3_quants_x16`](crate::kquants::search::make_q3_quants_x16)).
    fn ref_row(src: &[f32], dst: &mut [u8]) {
        // Two super-blocks at a time (32 lanes: two independent chains per instruction).
        let blocks = crate::as_blocks_mut::<BlockQ3K>(dst);
        let (pairs, rest) = src.as_chunks::<{ 2 * QK_K }>();
        let (block_pairs, last) = blocks.split_at_mut(pairs.len() * 2);
        for (x, y) in pairs.iter().zip(block_pairs.chunks_exact_mut(2)) {
            let mut li = [0i8; 2 * QK_K];
            let scales = crate::kquants::search::make_q3_quants_lanes::<32>(x, &mut li);
            for h in 0..2 {
                let lh: &[i8; QK_K] = li[h * QK_K..].first_chunk().unwrap_or(&[0; QK_K]);
                let sh: &[f32; 16] = scales[h * 16..].first_chunk().unwrap_or(&[0.0; 16]);
                finish_block_ref(&x[h * QK_K..(h + 1) * QK_K], &mut y[h], *lh, *sh);
            }
        }
        if let (Some(x), Some(y)) = (rest.first_chunk::<QK_K>(), last.first_mut()) {
            let mut li = [0i8; QK_K];
            let scales = crate::kquants::search::make_q3_quants_x16(x, &mut li);
            finish_block_ref(x, y, li, scales);
        }
    }
}

/// The rest of `quantize_row_q3_K_ref` once the sub-blocks' levels and scales are known.
#[inline(always)]
fn finish_block_ref(x: &[f32], y: &mut BlockQ3K, li: [i8; QK_K], scales: [f32; 16]) {
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for j in 0..16 {
        let s = scales[j].abs();
        if s > amax {
            amax = s;
            max_scale = scales[j];
        }
    }
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let packed = pack_scales(|j| {
            let l = nearest_int(iscale * scales[j]) as i8 as i32;
            l.clamp(-32, 31) + 32
        });
        y.scales = packed;
        y.d = Half::from_f32(1.0 / iscale);
    } else {
        y.scales.fill(0);
        y.d = Half::from_f32(0.0);
    }
    let mut l = li.map(|v| v as u8);
    requantize_and_pack(x, y, &mut l);
}

/// ggml's `quantize_row_q3_K_impl` for one super-block; `LANES` runs the sixteen
/// sub-blocks' searches side by side ([`make_qx_quants_lanes`]), else one after another.
#[inline(always)]
fn quantize_block_imatrix<const LANES: bool>(x: &[f32], y: &mut BlockQ3K, qw: &[f32]) {
    let (x, qw) = (&x[..QK_K], &qw[..QK_K]);
    let mut li = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let mut weight = [0.0f32; QK_K];
    for i in 0..QK_K {
        weight[i] = qw[i] * (sigma2 + x[i] * x[i]).sqrt();
    }
    for j in 0..16 {
        let mut sumw = 0.0f32;
        for &w in &weight[16 * j..16 * j + 16] {
            sumw += w;
        }
        sw[j] = sumw;
    }
    if LANES {
        scales = make_qx_quants_lanes::<16, 16>(4, x, &mut li, Some(&weight));
    } else {
        for j in 0..16 {
            let (xs, ws) = (&x[16 * j..16 * j + 16], &weight[16 * j..16 * j + 16]);
            scales[j] = make_qx_quants(4, xs, &mut li[16 * j..], Some(ws));
        }
    }
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(32, &scales, &mut ls, Some(&sw));
    y.scales = pack_scales(|j| ls[j] as i32);
    y.d = Half::from_f32(d_block);
    let mut l = li.map(|v| v as u8);
    requantize_and_pack(x, y, &mut l);
}

impl BlockFormat for Q3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockQ3K>();
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
                scalar => for_each_superblock(src, dst, None, |x, y: &mut BlockQ3K, _| {
                    quantize_block_ref(x, y)
                }),
            ),
            Some(imatrix) => dispatch!(simd,
                neon => neon::imatrix_row(src, dst, imatrix),
                avx512 => avx512::imatrix_row(src, dst, imatrix),
                avx2 => avx2::imatrix_row(src, dst, imatrix),
                scalar => for_each_superblock(src, dst, Some(imatrix), |x, y: &mut BlockQ3K, qw| {
                    if let Some(qw) = qw {
                        quantize_block_imatrix::<false>(x, y, qw)
                    }
                }),
            ),
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ3K>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d_all = b.d.to_f32();
            let hm = &b.hmask;
            let mut m = 1u8;
            let mut out = 0;
            let mut is = 0;
            for n in 0..2 {
                let q = &b.qs[32 * n..32 * n + 32];
                for shift in [0u32, 2, 4, 6] {
                    for half in 0..2 {
                        let dl = d_all * scale(&b.scales, is) as f32;
                        is += 1;
                        for l in 0..16 {
                            let k = l + 16 * half;
                            let low = ((q[k] >> shift) & 3) as i32;
                            let sub = if hm[k] & m != 0 { 0 } else { 4 };
                            y[out] = dl * (low - sub) as f32;
                            out += 1;
                        }
                    }
                    m <<= 1;
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ3K>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
