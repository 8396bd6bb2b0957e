//! Q4_K: 144 bytes per 256 weights: the super-block's f16 `d` and `dmin`, eight 6-bit scales
//! and mins (one pair per 32-weight sub-block), 4-bit levels. Weight = d*sc*l - dmin*m.
//!
//! The scale header ([`ScalesK4`]) and its searches are shared with Q5_K.

use super::search::{
    get_scale_min_k4, make_qkx2_quants, make_qkx3_quants, make_qkx_lanes, make_qp_quants,
    nearest_int, pack_scale_min_k4, MinSearch,
};
use super::{sum_squares, QK_K};
use crate::fp::Half;
use crate::simd::{dispatch, x86_paths};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 4-bit K-quant.
pub struct Q4K;

/// The first 16 bytes of a Q4_K or Q5_K super-block: the scales of its eight sub-blocks.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScalesK4 {
    /// Scale of the sub-block scales.
    pub d: Half,
    /// Scale of the sub-block mins.
    pub dmin: Half,
    /// Eight 6-bit scales and eight 6-bit mins (see [`get_scale_min_k4`]).
    pub scales: [u8; 12],
}
const _: () = assert!(size_of::<ScalesK4>() == 16);

impl ScalesK4 {
    /// True when `d` or `dmin` is infinite or NaN.
    pub(crate) fn is_non_finite(&self) -> bool {
        self.d.is_non_finite() || self.dmin.is_non_finite()
    }
}

/// One Q4_K super-block (ggml's `block_q4_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    /// `d`, `dmin` and the sub-block scales and mins.
    pub head: ScalesK4,
    /// 4-bit levels: per 64 weights, 32 bytes with weight `k` low and weight `k + 32` high.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

pub(crate) const IMATRIX_SEARCH: MinSearch = MinSearch {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// The sub-block weights of the reference path: `sqrt(mean square) + |x|`.
#[inline]
pub(crate) fn ref_weights(xs: &[f32]) -> [f32; 32] {
    let av_x = (sum_squares(xs) / 32.0).sqrt();
    let mut w = [0.0f32; 32];
    for (w, v) in w.iter_mut().zip(xs) {
        *w = av_x + v.abs();
    }
    w
}

/// [`ref_weights`] for the eight sub-blocks of a super-block side by side (each sum in
/// ggml's order) into `w`.
#[inline(always)]
fn ref_weights_x8(x: &[f32], w: &mut [f32]) {
    let (x, w) = (&x[..QK_K], &mut w[..QK_K]);
    let mut ss = [0.0f32; 8];
    for i in 0..32 {
        ss = std::array::from_fn(|j| ss[j] + x[32 * j + i] * x[32 * j + i]);
    }
    for j in 0..8 {
        let av_x = (ss[j] / 32.0).sqrt();
        for i in 0..32 {
            w[32 * j + i] = av_x + x[32 * j + i].abs();
        }
    }
}

/// The importance weights of a super-block's weights (`qw[i] * sqrt(sigma2 + x[i]^2)`) into
/// `w`, and their sums per sub-block into `sw`.
#[inline(always)]
fn imatrix_weights(x: &[f32], qw: &[f32], w: &mut [f32], sw: &mut [f32]) {
    let (x, qw, w, sw) = (&x[..QK_K], &qw[..QK_K], &mut w[..QK_K], &mut sw[..8]);
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    for i in 0..QK_K {
        w[i] = qw[i] * (sigma2 + x[i] * x[i]).sqrt();
    }
    for j in 0..8 {
        let mut sumw = 0.0f32;
        for &v in &w[32 * j..32 * j + 32] {
            sumw += v;
        }
        sw[j] = sumw;
    }
}

/// The scale headers of two consecutive super-blocks (`x`: 512 weights, `qw` their
/// importance weights), the sixteen sub-blocks' searches side by side in two vectors of
/// lanes; `l` gets the 512 levels of the searches. The same bytes as [`ref_scales`] and
/// [`imatrix_scales`] on each super-block.
#[inline(always)]
pub(crate) fn scales_x2(
    x: &[f32],
    qw: Option<&[f32]>,
    y: [&mut ScalesK4; 2],
    l: &mut [u8],
    nmax: i32,
    ref_search: MinSearch,
    cap_levels: bool,
) {
    let x = &x[..2 * QK_K];
    let mut w = [0.0f32; 2 * QK_K];
    let mut sw = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let scales = match qw {
        None => {
            for h in 0..2 {
                ref_weights_x8(&x[h * QK_K..], &mut w[h * QK_K..]);
            }
            make_qkx_lanes::<32, 16, false>(nmax, x, &w, l, &mut mins, ref_search)
        }
        Some(qw) => {
            for h in 0..2 {
                let (xh, qh) = (&x[h * QK_K..], &qw[h * QK_K..]);
                imatrix_weights(xh, qh, &mut w[h * QK_K..], &mut sw[8 * h..]);
            }
            make_qkx_lanes::<32, 16, true>(nmax, x, &w, l, &mut mins, IMATRIX_SEARCH)
        }
    };
    let (sc, mn, sw) = (
        scales.as_chunks::<8>().0,
        mins.as_chunks::<8>().0,
        sw.as_chunks::<8>().0,
    );
    for (h, y) in y.into_iter().enumerate() {
        match qw {
            None => ref_finish(y, &sc[h], &mn[h]),
            Some(_) => imatrix_finish(y, &sc[h], &mn[h], &sw[h], cap_levels),
        }
    }
}

/// Sub-block scales and mins of a super-block for the reference path, already quantized to
/// 6 bits and packed, with `d` and `dmin`. Shared with Q5_K, which differs only in `nmax` and
/// its search settings.
///
/// `LANES` runs the eight sub-blocks' searches side by side ([`make_qkx_lanes`]), else one
/// after another; the bytes are the same.
#[inline(always)]
pub(crate) fn ref_scales<const LANES: bool>(
    x: &[f32],
    y: &mut ScalesK4,
    l: &mut [u8; QK_K],
    nmax: i32,
    search: MinSearch,
) {
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    if LANES {
        let mut w = [0.0f32; QK_K];
        ref_weights_x8(x, &mut w);
        scales = make_qkx_lanes::<32, 8, false>(nmax, x, &w, l, &mut mins, search);
    } else {
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            let w = ref_weights(xs);
            scales[j] = make_qkx2_quants(nmax, xs, &w, &mut l[32 * j..], &mut mins[j], search);
        }
    }
    ref_finish(y, &scales, &mins);
}

/// The reference path's 6-bit scale and min levels, `d` and `dmin`, from the sub-blocks'
/// scales and mins.
#[inline(always)]
fn ref_finish(y: &mut ScalesK4, scales: &[f32; 8], mins: &[f32; 8]) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    y.scales = pack_scale_min_k4(&ls, &lm);
    y.d = Half::from_f32(max_scale / 63.0);
    y.dmin = Half::from_f32(max_min / 63.0);
}

/// The importance-weighted counterpart of [`ref_scales`] (shared with Q5_K).
///
/// `cap_levels` applies ggml's `MIN(63, ...)` to the scale levels, which Q5_K does and Q4_K
/// does not (it matters only in degenerate blocks, but the bytes must match).
#[inline(always)]
pub(crate) fn imatrix_scales<const LANES: bool>(
    x: &[f32],
    y: &mut ScalesK4,
    l: &mut [u8; QK_K],
    nmax: i32,
    qw: &[f32],
    cap_levels: bool,
) {
    let (x, qw) = (&x[..QK_K], &qw[..QK_K]);
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut sw = [0.0f32; 8];
    let mut w = [0.0f32; QK_K];
    imatrix_weights(x, qw, &mut w, &mut sw);
    if LANES {
        scales = make_qkx_lanes::<32, 8, true>(nmax, x, &w, l, &mut mins, IMATRIX_SEARCH);
    } else {
        for j in 0..8 {
            let (xs, ws) = (&x[32 * j..32 * j + 32], &w[32 * j..32 * j + 32]);
            scales[j] =
                make_qkx3_quants(nmax, xs, ws, &mut l[32 * j..], &mut mins[j], IMATRIX_SEARCH);
        }
    }
    imatrix_finish(y, &scales, &mins, &sw, cap_levels);
}

/// The importance-weighted path's scale and min levels, `d` and `dmin`, from the sub-blocks'
/// scales, mins and weight sums.
#[inline(always)]
fn imatrix_finish(
    y: &mut ScalesK4,
    scales: &[f32; 8],
    mins: &[f32; 8],
    sw: &[f32; 8],
    cap_levels: bool,
) {
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, scales, &mut ls, sw);
    let m_block = make_qp_quants(63, mins, &mut lm, sw);
    if cap_levels {
        for j in 0..8 {
            ls[j] = ls[j].min(63);
            lm[j] = lm[j].min(63);
        }
    }
    y.scales = pack_scale_min_k4(&ls, &lm);
    y.d = Half::from_f32(d_block);
    y.dmin = Half::from_f32(m_block);
}

/// Re-derives each sub-block's levels from the stored scales and mins.
#[inline(always)]
pub(crate) fn requantize(x: &[f32], y: &ScalesK4, l: &mut [u8; QK_K], nmax: i32) {
    let d_all = y.d.to_f32();
    let m_all = y.dmin.to_f32();
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &y.scales);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

/// The (d*sc, dmin*m) pairs of a Q4_K/Q5_K super-block for dequantization.
pub(crate) fn sub_scales(b: &ScalesK4) -> [(f32, f32); 8] {
    let d = b.d.to_f32();
    let min = b.dmin.to_f32();
    let mut out = [(0.0, 0.0); 8];
    for (j, o) in out.iter_mut().enumerate() {
        let (sc, m) = get_scale_min_k4(j, &b.scales);
        *o = (d * sc as f32, min * m as f32);
    }
    out
}

const REF_SEARCH: MinSearch = MinSearch {
    rmin: -1.0,
    rdelta: 0.1,
    nstep: 20,
    use_mad: false,
};

/// Re-derives a super-block's levels from its stored scales and packs them.
#[inline(always)]
fn finish(x: &[f32], y: &mut BlockQ4K, l: &mut [u8; QK_K]) {
    requantize(x, &y.head, l, 15);
    let q = &mut y.qs;
    for (n, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            q[32 * n + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// A super-block that starts with a [`ScalesK4`] header (Q4_K, Q5_K), for [`row`].
pub(crate) trait BlockK4: bytemuck::Pod {
    /// The levels' maximum.
    const NMAX: i32;
    /// ggml's search of the scales without importance weights.
    const REF_SEARCH: MinSearch;
    /// Whether ggml caps the importance-weighted scale levels at 63 (see [`imatrix_scales`]).
    const CAP_LEVELS: bool;
    /// The scale header.
    fn head(&mut self) -> &mut ScalesK4;
    /// Re-derives the super-block's levels from its stored scales and packs them.
    fn finish(&mut self, x: &[f32], l: &mut [u8; QK_K]);
}

impl BlockK4 for BlockQ4K {
    const NMAX: i32 = 15;
    const REF_SEARCH: MinSearch = REF_SEARCH;
    const CAP_LEVELS: bool = false;

    #[inline(always)]
    fn head(&mut self) -> &mut ScalesK4 {
        &mut self.head
    }

    #[inline(always)]
    fn finish(&mut self, x: &[f32], l: &mut [u8; QK_K]) {
        finish(x, self, l)
    }
}

/// A row of Q4_K or Q5_K super-blocks; `LANES` runs the sub-block searches of two
/// super-blocks side by side ([`scales_x2`]), the last one alone when their number is odd.
#[inline(always)]
pub(crate) fn row<B: BlockK4, const LANES: bool>(
    src: &[f32],
    dst: &mut [u8],
    imatrix: Option<&[f32]>,
) {
    // Loops rather than closures, so that the SIMD paths inline all of it (a closure
    // defined here would be compiled without their target features).
    let blocks = crate::as_blocks_mut::<B>(dst);
    let mut done = 0;
    if LANES {
        let pairs = src.as_chunks::<{ 2 * QK_K }>().0;
        for (ip, (x, ys)) in pairs.iter().zip(blocks.chunks_exact_mut(2)).enumerate() {
            let qw = imatrix.map(|q| &q[2 * ip * QK_K..2 * (ip + 1) * QK_K]);
            let mut l = [0u8; 2 * QK_K];
            if let [y0, y1] = ys {
                let heads = [y0.head(), y1.head()];
                scales_x2(x, qw, heads, &mut l, B::NMAX, B::REF_SEARCH, B::CAP_LEVELS);
                let (lh, _) = l.as_chunks_mut::<QK_K>();
                y0.finish(&x[..QK_K], &mut lh[0]);
                y1.finish(&x[QK_K..], &mut lh[1]);
            }
            done += 2;
        }
    }
    let rest = src.chunks_exact(QK_K).zip(blocks.iter_mut()).enumerate();
    for (i, (x, y)) in rest.skip(done) {
        let qw = imatrix.map(|q| &q[i * QK_K..(i + 1) * QK_K]);
        let mut l = [0u8; QK_K];
        match qw {
            None => ref_scales::<LANES>(x, y.head(), &mut l, B::NMAX, B::REF_SEARCH),
            Some(qw) => imatrix_scales::<LANES>(x, y.head(), &mut l, B::NMAX, qw, B::CAP_LEVELS),
        }
        y.finish(x, &mut l);
    }
}

x86_paths! {
    /// [`row`] with the sub-block searches in lanes.
    fn row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        super::row::<BlockQ4K, true>(src, dst, imatrix)
    }
}

impl BlockFormat for Q4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockQ4K>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        dispatch!(simd,
            neon => neon::row(src, dst, imatrix),
            avx512 => avx512::row(src, dst, imatrix),
            avx2 => avx2::row(src, dst, imatrix),
            scalar => row::<BlockQ4K, false>(src, dst, imatrix),
        )
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockQ4K>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let s = sub_scales(&b.head);
            for n in 0..4 {
                let q = &b.qs[32 * n..32 * n + 32];
                let (d1, m1) = s[2 * n];
                let (d2, m2) = s[2 * n + 1];
                for l in 0..32 {
                    y[64 * n + l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[64 * n + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockQ4K>(row)
            .iter()
            .position(|b| b.head.is_non_finite())
    }
}
