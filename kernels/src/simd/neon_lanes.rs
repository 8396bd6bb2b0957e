//! The K-quants' scale searches with NEON vectors: the AVX2 `lanes` searches of x86-64
//! (`simd/x86.rs`) transcribed operation for operation, a vector of eight lanes being a pair of
//! `float32x4_t`. `V` vectors of eight lanes, one group of weights per lane (`8 * V` groups
//! side by side). Each lane runs exactly the sequence of operations of the portable lane
//! searches in [`search`](crate::kquants::search) (which are ggml's, per group): IEEE adds,
//! multiplies and divides in ggml's order (never fused: `vmulq_f32` then `vaddq_f32`), ggml's
//! `nearest_int` trick, comparisons with Rust's NaN behaviour, and selects for branches and
//! for minima and maxima (`FMIN`/`FMAX` would order `-0.0` below `0.0`, Rust's `if x < min`
//! does not). So the levels, scales and mins are bit-identical.

use crate::kquants::search::{MinSearch, GROUP_MAX_EPS};
use std::arch::aarch64::*;

/// Eight float lanes.
#[derive(Clone, Copy)]
struct F(float32x4_t, float32x4_t);

/// Eight 32-bit integer lanes.
#[derive(Clone, Copy)]
struct I(int32x4_t, int32x4_t);

/// Eight lane masks (all ones where true).
#[derive(Clone, Copy)]
struct M(uint32x4_t, uint32x4_t);

#[inline]
#[target_feature(enable = "neon")]
fn splat(v: f32) -> F {
    F(vdupq_n_f32(v), vdupq_n_f32(v))
}

#[inline]
#[target_feature(enable = "neon")]
fn zero() -> F {
    splat(0.0)
}

#[inline]
#[target_feature(enable = "neon")]
fn no() -> M {
    M(vdupq_n_u32(0), vdupq_n_u32(0))
}

#[inline]
#[target_feature(enable = "neon")]
fn add(a: F, b: F) -> F {
    F(vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn sub(a: F, b: F) -> F {
    F(vsubq_f32(a.0, b.0), vsubq_f32(a.1, b.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn mul(a: F, b: F) -> F {
    F(vmulq_f32(a.0, b.0), vmulq_f32(a.1, b.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn div(a: F, b: F) -> F {
    F(vdivq_f32(a.0, b.0), vdivq_f32(a.1, b.1))
}

/// `if mask { t } else { f }` per lane.
#[inline]
#[target_feature(enable = "neon")]
fn sel(m: M, t: F, f: F) -> F {
    F(vbslq_f32(m.0, t.0, f.0), vbslq_f32(m.1, t.1, f.1))
}

/// `if mask { t } else { f }` per lane, for integers.
#[inline]
#[target_feature(enable = "neon")]
fn sel_i(m: M, t: I, f: I) -> I {
    I(vbslq_s32(m.0, t.0, f.0), vbslq_s32(m.1, t.1, f.1))
}

/// `a > b` (false with a NaN, as in Rust).
#[inline]
#[target_feature(enable = "neon")]
fn gt(a: F, b: F) -> M {
    M(vcgtq_f32(a.0, b.0), vcgtq_f32(a.1, b.1))
}

/// `a < b` (false with a NaN).
#[inline]
#[target_feature(enable = "neon")]
fn lt(a: F, b: F) -> M {
    M(vcltq_f32(a.0, b.0), vcltq_f32(a.1, b.1))
}

/// `a <= b` (false with a NaN).
#[inline]
#[target_feature(enable = "neon")]
fn le(a: F, b: F) -> M {
    M(vcleq_f32(a.0, b.0), vcleq_f32(a.1, b.1))
}

/// `a == b` (false with a NaN).
#[inline]
#[target_feature(enable = "neon")]
fn eq(a: F, b: F) -> M {
    M(vceqq_f32(a.0, b.0), vceqq_f32(a.1, b.1))
}

/// `a != b` (true with a NaN, as in Rust).
#[inline]
#[target_feature(enable = "neon")]
fn ne(a: F, b: F) -> M {
    not(eq(a, b))
}

#[inline]
#[target_feature(enable = "neon")]
fn not(a: M) -> M {
    M(vmvnq_u32(a.0), vmvnq_u32(a.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn and(a: M, b: M) -> M {
    M(vandq_u32(a.0, b.0), vandq_u32(a.1, b.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn or(a: M, b: M) -> M {
    M(vorrq_u32(a.0, b.0), vorrq_u32(a.1, b.1))
}

/// Whether any lane is set.
#[inline]
#[target_feature(enable = "neon")]
fn any(a: M) -> bool {
    vmaxvq_u32(vorrq_u32(a.0, a.1)) != 0
}

/// `v` where the mask is clear, 0 where it is set.
#[inline]
#[target_feature(enable = "neon")]
fn zero_where(m: M, v: I) -> I {
    I(
        vbicq_s32(v.0, vreinterpretq_s32_u32(m.0)),
        vbicq_s32(v.1, vreinterpretq_s32_u32(m.1)),
    )
}

/// `v` where the mask is set, 0 elsewhere.
#[inline]
#[target_feature(enable = "neon")]
fn keep_where(m: M, v: I) -> I {
    I(
        vandq_s32(v.0, vreinterpretq_s32_u32(m.0)),
        vandq_s32(v.1, vreinterpretq_s32_u32(m.1)),
    )
}

#[inline]
#[target_feature(enable = "neon")]
fn abs(v: F) -> F {
    F(vabsq_f32(v.0), vabsq_f32(v.1))
}

/// `if a < b { a } else { b }` per lane (Rust's and x86's `minps` order).
#[inline]
#[target_feature(enable = "neon")]
fn min_sel(a: F, b: F) -> F {
    sel(lt(a, b), a, b)
}

/// `if a > b { a } else { b }` per lane.
#[inline]
#[target_feature(enable = "neon")]
fn max_sel(a: F, b: F) -> F {
    sel(gt(a, b), a, b)
}

/// ggml's `nearest_int`: `(v + 12582912).bits & 0x7fffff - 0x400000`.
#[inline]
#[target_feature(enable = "neon")]
fn nearest(v: F) -> I {
    let t = add(v, splat(12_582_912.0));
    let (m, o) = (vdupq_n_s32(0x007f_ffff), vdupq_n_s32(0x0040_0000));
    let one = |t: float32x4_t| vsubq_s32(vandq_s32(vreinterpretq_s32_f32(t), m), o);
    I(one(t.0), one(t.1))
}

/// `v.clamp(lo, hi)` for integers.
#[inline]
#[target_feature(enable = "neon")]
fn clamp(v: I, lo: i32, hi: i32) -> I {
    let (lo, hi) = (vdupq_n_s32(lo), vdupq_n_s32(hi));
    I(
        vminq_s32(vmaxq_s32(v.0, lo), hi),
        vminq_s32(vmaxq_s32(v.1, lo), hi),
    )
}

#[inline]
#[target_feature(enable = "neon")]
fn add_i(v: I, k: i32) -> I {
    let k = vdupq_n_s32(k);
    I(vaddq_s32(v.0, k), vaddq_s32(v.1, k))
}

/// Integer to float (exact: the levels are small).
#[inline]
#[target_feature(enable = "neon")]
fn to_f32(v: I) -> F {
    F(vcvtq_f32_s32(v.0), vcvtq_f32_s32(v.1))
}

/// Float to integer by truncation, for floats that hold small integers (the levels).
#[inline]
#[target_feature(enable = "neon")]
fn to_i32(v: F) -> I {
    I(vcvtq_s32_f32(v.0), vcvtq_s32_f32(v.1))
}

#[inline]
#[target_feature(enable = "neon")]
fn load(v: &[f32; 8]) -> F {
    // SAFETY: 8 floats.
    unsafe { F(vld1q_f32(v.as_ptr()), vld1q_f32(v.as_ptr().add(4))) }
}

#[inline]
#[target_feature(enable = "neon")]
fn store(v: F) -> [f32; 8] {
    let mut out = [0.0f32; 8];
    // SAFETY: 8 floats.
    unsafe {
        vst1q_f32(out.as_mut_ptr(), v.0);
        vst1q_f32(out.as_mut_ptr().add(4), v.1);
    }
    out
}

#[inline]
#[target_feature(enable = "neon")]
fn store_i(v: I) -> [i32; 8] {
    let mut out = [0i32; 8];
    // SAFETY: 8 integers.
    unsafe {
        vst1q_s32(out.as_mut_ptr(), v.0);
        vst1q_s32(out.as_mut_ptr().add(4), v.1);
    }
    out
}

/// `x` holds `8 * V` groups of `N` values, group `g` at `x[N * g..]`; returns vector `v`,
/// weight `i` as `t[v][i]`, lane `k` from group `8 * v + k`.
#[inline]
#[target_feature(enable = "neon")]
fn transpose<const N: usize, const V: usize>(x: &[f32]) -> [[F; N]; V] {
    let x = &x[..8 * V * N];
    let mut t = [[zero(); N]; V];
    for (v, tv) in t.iter_mut().enumerate() {
        for (i, ti) in tv.iter_mut().enumerate() {
            let lane: [f32; 8] = std::array::from_fn(|k| x[N * (8 * v + k) + i]);
            *ti = load(&lane);
        }
    }
    t
}

/// ggml's `max`/`amax` loop: the first value with the largest magnitude per lane.
#[inline]
#[target_feature(enable = "neon")]
fn signed_absmax<const N: usize>(x: &[F; N]) -> (F, F) {
    let mut amax = zero();
    let mut max = zero();
    for &xi in x {
        let ax = abs(xi);
        let g = gt(ax, amax);
        amax = sel(g, ax, amax);
        max = sel(g, xi, max);
    }
    (amax, max)
}

/// [`make_qkx_lanes`](crate::kquants::search::make_qkx_lanes) for `8 * V` groups of `N`
/// weights: writes the levels into `out` and the (positive) mins into `the_min`, the scales
/// into `scales` (each `8 * V` long, `out` `N * 8 * V`).
#[inline]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn qkx<const N: usize, const V: usize, const QKX3: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut [f32],
    scales: &mut [f32],
    p: MinSearch,
) {
    let xt = transpose::<N, V>(x);
    let wt = transpose::<N, V>(weights);
    let zero = zero();
    let nmaxf = nmax as f32;
    let vnmax = splat(nmaxf);
    let err = |d: F| if p.use_mad { abs(d) } else { mul(d, d) };
    let init_level = |iscale: F, xm: F| clamp(nearest(mul(iscale, xm)), 0, nmax);
    let level = |iscale: F, xm: F| {
        let v = mul(iscale, xm);
        if QKX3 {
            // nearest_int(v < nmax ? v : nmax), 0 unless v > 0.
            let r = nearest(min_sel(v, vnmax));
            keep_where(gt(v, zero), r)
        } else {
            clamp(nearest(v), 0, nmax)
        }
    };
    let mut min = [zero; V];
    let mut max = [zero; V];
    let mut sum_w = [zero; V];
    let mut sum_x = [zero; V];
    let mut degenerate = [no(); V];
    for v in 0..V {
        let (x, w) = (&xt[v], &wt[v]);
        let (mut mn, mut mx, mut sw) = (x[0], x[0], w[0]);
        let mut sx = mul(sw, x[0]);
        for i in 1..N {
            mn = min_sel(x[i], mn);
            mx = max_sel(x[i], mx);
            sw = add(sw, w[i]);
            sx = add(sx, mul(w[i], x[i]));
        }
        mn = sel(gt(mn, zero), zero, mn);
        degenerate[v] = if QKX3 { le(mx, mn) } else { eq(mx, mn) };
        (min[v], max[v], sum_w[v], sum_x[v]) = (mn, mx, sw, sx);
    }
    let min0 = min;
    let mut iscale0 = [zero; V];
    let mut scale = [zero; V];
    let mut best_error = [zero; V];
    for v in 0..V {
        iscale0[v] = div(vnmax, sub(max[v], min[v]));
        scale[v] = div(splat(1.0), iscale0[v]);
    }
    for i in 0..N {
        for v in 0..V {
            let xi = xt[v][i];
            let l = to_f32(init_level(iscale0[v], sub(xi, min0[v])));
            let diff = sub(add(mul(scale[v], l), min0[v]), xi);
            best_error[v] = add(best_error[v], mul(wt[v][i], err(diff)));
        }
    }
    let mut won = [no(); V];
    let mut win_iscale = [zero; V];
    let mut win_min = [zero; V];
    let steps = if p.nstep < 1 { 0 } else { p.nstep + 1 };
    let mut lf = [[zero; N]; V];
    for is in 0..steps {
        let num = splat(p.rmin + p.rdelta * is as f32 + nmaxf);
        let mut iscale = [zero; V];
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([zero; V], [zero; V], [zero; V]);
        for v in 0..V {
            iscale[v] = div(num, sub(max[v], min[v]));
        }
        for i in 0..N {
            for v in 0..V {
                let xi = xt[v][i];
                let l = to_f32(level(iscale[v], sub(xi, min[v])));
                lf[v][i] = l;
                let wl = mul(wt[v][i], l);
                sum_l[v] = add(sum_l[v], wl);
                sum_l2[v] = add(sum_l2[v], mul(wl, l));
                sum_xl[v] = add(sum_xl[v], mul(wl, xi));
            }
        }
        let mut this_scale = [zero; V];
        let mut this_min = [zero; V];
        let mut ok = [no(); V];
        for v in 0..V {
            let (sl, sl2, sxl) = (sum_l[v], sum_l2[v], sum_xl[v]);
            let d = sub(mul(sum_w[v], sl2), mul(sl, sl));
            ok[v] = gt(d, zero);
            let s = div(sub(mul(sum_w[v], sxl), mul(sum_x[v], sl)), d);
            let m = div(sub(mul(sl2, sum_x[v]), mul(sl, sxl)), d);
            let clamp_min = gt(m, zero);
            this_scale[v] = sel(clamp_min, div(sxl, sl2), s);
            this_min[v] = sel(clamp_min, zero, m);
        }
        let mut cur_error = [zero; V];
        for i in 0..N {
            for v in 0..V {
                let diff = sub(add(mul(this_scale[v], lf[v][i]), this_min[v]), xt[v][i]);
                cur_error[v] = add(cur_error[v], mul(wt[v][i], err(diff)));
            }
        }
        for v in 0..V {
            let take = and(ok[v], lt(cur_error[v], best_error[v]));
            if !any(take) {
                continue;
            }
            won[v] = or(won[v], take);
            win_iscale[v] = sel(take, iscale[v], win_iscale[v]);
            win_min[v] = sel(take, min[v], win_min[v]);
            best_error[v] = sel(take, cur_error[v], best_error[v]);
            scale[v] = sel(take, this_scale[v], scale[v]);
            min[v] = sel(take, this_min[v], min[v]);
        }
    }
    let (out, the_min, scales) = (
        &mut out[..N * 8 * V],
        &mut the_min[..8 * V],
        &mut scales[..8 * V],
    );
    for v in 0..V {
        let mut levels = [[0i32; 8]; N];
        for i in 0..N {
            let xi = xt[v][i];
            let lw = level(win_iscale[v], sub(xi, win_min[v]));
            let l0 = init_level(iscale0[v], sub(xi, min0[v]));
            let l = sel_i(won[v], lw, l0);
            levels[i] = store_i(zero_where(degenerate[v], l));
        }
        for k in 0..8 {
            for i in 0..N {
                out[N * (8 * v + k) + i] = levels[i][k] as u8;
            }
        }
        let m = store(sel(degenerate[v], min0[v], min[v]));
        let s = store(sel(degenerate[v], zero, scale[v]));
        for k in 0..8 {
            the_min[8 * v + k] = -m[k];
            scales[8 * v + k] = s[k];
        }
    }
}

/// [`make_qx_quants_lanes`](crate::kquants::search::make_qx_quants_lanes) for `8 * V`
/// groups of `N` weights: writes `l + nmax` into `out` (`N * 8 * V`), the scales into
/// `scales` (`8 * V`). `qw`: the importance weights, else `x * x`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn qx<const N: usize, const V: usize>(
    nmax: i32,
    x: &[f32],
    out: &mut [i8],
    qw: Option<&[f32]>,
    scales: &mut [f32],
) {
    const BATCH: usize = 6;
    let xt = transpose::<N, V>(x);
    let wt = match qw {
        Some(q) => transpose::<N, V>(q),
        None => {
            let mut w = xt;
            for wv in w.iter_mut() {
                for wi in wv.iter_mut() {
                    *wi = mul(*wi, *wi);
                }
            }
            w
        }
    };
    let zero = zero();
    let nmaxf = nmax as f32;
    let level = |iscale: F, x: F| clamp(nearest(mul(iscale, x)), -nmax, nmax - 1);
    let mut amax = [zero; V];
    let mut max = [zero; V];
    let mut win = [zero; V];
    let mut scale = [zero; V];
    let mut best = [zero; V];
    for v in 0..V {
        (amax[v], max[v]) = signed_absmax(&xt[v]);
        win[v] = div(splat(-nmaxf), max[v]);
    }
    // w * x, as ggml's `w*x[i]*l` computes it first.
    let mut wx = [[zero; N]; V];
    for v in 0..V {
        for i in 0..N {
            wx[v][i] = mul(wt[v][i], xt[v][i]);
        }
    }
    {
        let (mut sumlx, mut suml2) = ([zero; V], [zero; V]);
        for i in 0..N {
            for v in 0..V {
                let l = to_f32(level(win[v], xt[v][i]));
                sumlx[v] = add(sumlx[v], mul(wx[v][i], l));
                suml2[v] = add(suml2[v], mul(mul(wt[v][i], l), l));
            }
        }
        for v in 0..V {
            let nz = ne(suml2[v], zero);
            scale[v] = sel(nz, div(sumlx[v], suml2[v]), zero);
            best[v] = mul(scale[v], sumlx[v]);
        }
    }
    // The 18 trial scales, is = -9..=-1, 1..=9, in ggml's order, in batches.
    for b in 0..18 / BATCH {
        let mut iscale = [[zero; V]; BATCH];
        for (t, it) in iscale.iter_mut().enumerate() {
            let kt = b * BATCH + t;
            let is = if kt < 9 { kt as i32 - 9 } else { kt as i32 - 8 };
            let num = splat(-(nmaxf + 0.1f32 * is as f32));
            for v in 0..V {
                it[v] = div(num, max[v]);
            }
        }
        let (mut slx, mut sl2) = ([[zero; V]; BATCH], [[zero; V]; BATCH]);
        for i in 0..N {
            for t in 0..BATCH {
                for v in 0..V {
                    let l = to_f32(level(iscale[t][v], xt[v][i]));
                    slx[t][v] = add(slx[t][v], mul(wx[v][i], l));
                    sl2[t][v] = add(sl2[t][v], mul(mul(wt[v][i], l), l));
                }
            }
        }
        for t in 0..BATCH {
            for v in 0..V {
                let (sx, s2) = (slx[t][v], sl2[t][v]);
                let take = and(gt(s2, zero), gt(mul(sx, sx), mul(best[v], s2)));
                let s = div(sx, s2);
                scale[v] = sel(take, s, scale[v]);
                best[v] = sel(take, mul(s, sx), best[v]);
                win[v] = sel(take, iscale[t][v], win[v]);
            }
        }
    }
    let (out, scales) = (&mut out[..N * 8 * V], &mut scales[..8 * V]);
    for v in 0..V {
        let zero_group = lt(amax[v], splat(GROUP_MAX_EPS));
        let mut lt_ = [[0i32; 8]; N];
        for i in 0..N {
            let l = add_i(level(win[v], xt[v][i]), nmax);
            lt_[i] = store_i(zero_where(zero_group, l));
        }
        for k in 0..8 {
            for i in 0..N {
                out[N * (8 * v + k) + i] = lt_[i][k] as i8;
            }
        }
        let s = store(sel(zero_group, zero, scale[v]));
        scales[8 * v..8 * v + 8].copy_from_slice(&s);
    }
}

/// [`make_q3_quants_lanes`](crate::kquants::search::make_q3_quants_lanes) (`nmax == 4`)
/// for `8 * V` sub-blocks of 16 weights: writes `l + 4` (0 for an all-zero sub-block) into
/// `out` (`16 * 8 * V`), the scales into `scales` (`8 * V`).
///
/// A vector whose lanes all went through a pass without a change is left alone from then on
/// (another pass would change nothing), as ggml stops each sub-block's passes.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn q3<const V: usize>(x: &[f32], out: &mut [i8], scales: &mut [f32]) {
    const N: usize = 16;
    const NMAX: i32 = 4;
    let xt = transpose::<N, V>(x);
    let zero = zero();
    let mut amax = [zero; V];
    let mut sumlx = [zero; V];
    let mut suml2 = [zero; V];
    let mut l = [[zero; N]; V];
    let mut w = [[zero; N]; V];
    let mut wx = [[zero; N]; V];
    for v in 0..V {
        let max;
        (amax[v], max) = signed_absmax(&xt[v]);
        let iscale = div(splat(-(NMAX as f32)), max);
        for i in 0..N {
            let xi = xt[v][i];
            w[v][i] = mul(xi, xi);
            wx[v][i] = mul(w[v][i], xi);
            let li = to_f32(clamp(nearest(mul(iscale, xi)), -NMAX, NMAX - 1));
            l[v][i] = li;
            sumlx[v] = add(sumlx[v], mul(wx[v][i], li));
            suml2[v] = add(suml2[v], mul(mul(w[v][i], li), li));
        }
    }
    let mut active = [true; V];
    for _ in 0..5 {
        let mut changed = [no(); V];
        for i in 0..N {
            for v in 0..V {
                if !active[v] {
                    continue;
                }
                let (xi, wi, wxi, li) = (xt[v][i], w[v][i], wx[v][i], l[v][i]);
                let slx0 = sub(sumlx[v], mul(wxi, li));
                let sl20 = sub(suml2[v], mul(mul(wi, li), li));
                let nl = to_f32(clamp(nearest(div(mul(xi, sl20), slx0)), -NMAX, NMAX - 1));
                let slx = add(slx0, mul(wxi, nl));
                let sl2 = add(sl20, mul(mul(wi, nl), nl));
                let better = gt(
                    mul(mul(slx, slx), suml2[v]),
                    mul(mul(sumlx[v], sumlx[v]), sl2),
                );
                let take = and(and(gt(slx0, zero), ne(nl, li)), and(gt(sl2, zero), better));
                l[v][i] = sel(take, nl, li);
                sumlx[v] = sel(take, slx, sumlx[v]);
                suml2[v] = sel(take, sl2, suml2[v]);
                changed[v] = or(changed[v], take);
            }
        }
        for v in 0..V {
            active[v] = active[v] && any(changed[v]);
        }
        if !active.iter().any(|&a| a) {
            break;
        }
    }
    let (out, scales) = (&mut out[..N * 8 * V], &mut scales[..8 * V]);
    for v in 0..V {
        let zero_group = lt(amax[v], splat(GROUP_MAX_EPS));
        let mut lt_ = [[0i32; 8]; N];
        for i in 0..N {
            let li = add_i(to_i32(l[v][i]), NMAX);
            lt_[i] = store_i(zero_where(zero_group, li));
        }
        for k in 0..8 {
            for i in 0..N {
                out[N * (8 * v + k) + i] = lt_[i][k] as i8;
            }
        }
        let use_scale = and(not(zero_group), gt(suml2[v], zero));
        let s = store(sel(use_scale, div(sumlx[v], suml2[v]), zero));
        scales[8 * v..8 * v + 8].copy_from_slice(&s);
    }
}
