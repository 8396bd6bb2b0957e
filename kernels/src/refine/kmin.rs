//! The thorough search for the K-quants with mins, Q2_K, Q4_K and Q5_K: sub-blocks with an
//! unsigned integer scale and min (4 bits for Q2_K, 6 for Q4_K/Q5_K) under the super-block's
//! f16 `d` and `dmin`. Weight = d*sc*l - dmin*m.
//!
//! Per sub-block, a dense grid of trial scales (a step of 0.1 levels, from one level fewer to
//! two more than the range needs), each followed by two rounds of least squares for the
//! scale and min (the min kept at or below zero, as ggml does) and re-rounding. The scales and
//! the mins are then quantized by the breakpoint sweep ([`sym_scales`]), the scales weighted by
//! their curvature `sum w l^2`, the mins by `sum w`; from the best pair of candidates, and from
//! ggml's own block, a descent: each sub-block's (scale, min) moved by up to 1 step each,
//! levels re-rounded, then `d` and `dmin` refitted jointly by least squares given the integer
//! codes and rounded to f16, a few rounds.

use super::{f16_round, sym_scales, Thorough};
use crate::fp::Half;
use crate::kquants::q4_k::ref_weights;
use crate::kquants::search::{get_scale_min_k4, nearest_int, pack_scale_min_k4};
use crate::kquants::{pack_2bit, BlockQ2K, BlockQ4K, BlockQ5K, Q2K, Q4K, Q5K, QK_K};

/// Sub-block shape and ranges of a format.
#[derive(Clone, Copy)]
struct Params {
    /// Weights per sub-block.
    len: usize,
    /// Largest level.
    lmax: i32,
    /// Largest integer scale or min.
    smax: i32,
}

const Q2: Params = Params {
    len: 16,
    lmax: 3,
    smax: 15,
};
const Q4: Params = Params {
    len: 32,
    lmax: 15,
    smax: 63,
};
const Q5: Params = Params {
    len: 32,
    lmax: 31,
    smax: 63,
};

/// The level of `v` for reciprocal step `idl` and min `ml`: `clamp(round((v + ml) * idl), 0,
/// lmax)`.
#[inline]
fn level(v: f32, idl: f32, ml: f32, lmax: i32) -> i32 {
    if idl == 0.0 || !idl.is_finite() {
        return 0;
    }
    let q = (v + ml) * idl;
    if !q.is_finite() || q.abs() >= 4_000_000.0 {
        return if q > 0.0 { lmax } else { 0 };
    }
    nearest_int(q).clamp(0, lmax)
}

/// A sub-block's error with step `dl` and min `ml` (dequantized as `dl*l - ml`), levels into
/// `l`.
#[inline]
fn sub_error(x: &[f32], w: &[f32], dl: f32, ml: f32, lmax: i32, l: &mut [i32]) -> f64 {
    let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
    let mut e = 0.0f64;
    for i in 0..x.len() {
        let li = level(x[i], idl, ml, lmax);
        l[i] = li;
        let diff = x[i] as f64 - (dl * li as f32 - ml) as f64;
        e += w[i] as f64 * diff * diff;
    }
    e
}

/// The best continuous (scale, min) of a sub-block (min as a positive number subtracted), with
/// the curvatures `sum w l^2` and `sum w` that weight their quantization.
fn sub_search(x: &[f32], w: &[f32], lmax: i32) -> (f32, f32, f64, f64) {
    let n = x.len();
    let mut min = f32::MAX;
    let mut max = f32::MIN;
    let mut sw = 0.0f64;
    let mut sx = 0.0f64;
    for i in 0..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sw += w[i] as f64;
        sx += w[i] as f64 * x[i] as f64;
    }
    let min = min.min(0.0);
    if max.partial_cmp(&min) != Some(std::cmp::Ordering::Greater) || !(max - min).is_finite() {
        return (0.0, -min, 0.0, sw);
    }
    let lmaxf = lmax as f32;
    let mut best = (f64::INFINITY, 0.0f32, -min, 0.0f64);
    let mut l = [0i32; 32];
    let l = &mut l[..n];
    for k in 0..=30 {
        let iscale = (lmaxf - 1.0 + 0.1 * k as f32) / (max - min);
        for i in 0..n {
            l[i] = nearest_int(((x[i] - min) * iscale).clamp(-1.0, lmaxf + 1.0)).clamp(0, lmax);
        }
        for _ in 0..2 {
            let (mut sl, mut sll, mut sxl) = (0.0f64, 0.0f64, 0.0f64);
            for i in 0..n {
                let (wi, li) = (w[i] as f64, l[i] as f64);
                sl += wi * li;
                sll += wi * li * li;
                sxl += wi * li * x[i] as f64;
            }
            let det = sw * sll - sl * sl;
            if det <= 0.0 || sll <= 0.0 {
                break;
            }
            let mut s = (sw * sxl - sx * sl) / det;
            let mut m = (sll * sx - sl * sxl) / det;
            if m > 0.0 {
                m = 0.0;
                s = sxl / sll;
            }
            if s <= 0.0 {
                break;
            }
            let (s, m) = (s as f32, m as f32);
            let mut e = 0.0f64;
            for i in 0..n {
                let d = (s * l[i] as f32 + m - x[i]) as f64;
                e += w[i] as f64 * d * d;
            }
            if e < best.0 {
                best = (e, s, -m, sll);
            }
            let is = 1.0 / s;
            for i in 0..n {
                l[i] = level(x[i], is, -m, lmax);
            }
        }
    }
    (best.1, best.2, best.3, sw)
}

/// A super-block's codes: `d`, `dmin`, the integer scales and mins, the levels, the error.
#[derive(Clone)]
struct Codes {
    d: f32,
    dmin: f32,
    sc: [i32; 16],
    m: [i32; 16],
    l: [i32; QK_K],
    err: f64,
}

fn evaluate(
    x: &[f32],
    w: &[f32],
    d: f32,
    dmin: f32,
    sc: [i32; 16],
    m: [i32; 16],
    p: Params,
) -> Codes {
    let mut l = [0i32; QK_K];
    let mut err = 0.0;
    for j in 0..QK_K / p.len {
        let r = p.len * j..p.len * (j + 1);
        let (dl, ml) = (d * sc[j] as f32, dmin * m[j] as f32);
        err += sub_error(&x[r.clone()], &w[r.clone()], dl, ml, p.lmax, &mut l[r]);
    }
    Codes {
        d,
        dmin,
        sc,
        m,
        l,
        err,
    }
}

/// Coordinate descent from `c`: each sub-block's scale and min, then `d` and `dmin` jointly
/// by least squares.
fn descend(x: &[f32], w: &[f32], mut c: Codes, p: Params) -> Codes {
    let mut lt = [0i32; 32];
    let nsub = QK_K / p.len;
    for _ in 0..4 {
        let mut changed = false;
        for j in 0..nsub {
            let r = p.len * j..p.len * (j + 1);
            let (xs, ws) = (&x[r.clone()], &w[r.clone()]);
            let lt = &mut lt[..p.len];
            let (s0, m0) = (c.sc[j], c.m[j]);
            let e0 = sub_error(xs, ws, c.d * s0 as f32, c.dmin * m0 as f32, p.lmax, lt);
            let mut best = (e0, s0, m0);
            for s in (s0 - 1).max(0)..=(s0 + 1).min(p.smax) {
                for m in (m0 - 1).max(0)..=(m0 + 1).min(p.smax) {
                    if s == s0 && m == m0 {
                        continue;
                    }
                    let e = sub_error(xs, ws, c.d * s as f32, c.dmin * m as f32, p.lmax, lt);
                    if e < best.0 {
                        best = (e, s, m);
                    }
                }
            }
            if (best.1, best.2) != (s0, m0) {
                c.sc[j] = best.1;
                c.m[j] = best.2;
                changed = true;
            }
        }
        let before = c.err;
        c = evaluate(x, w, c.d, c.dmin, c.sc, c.m, p);
        // d and dmin by least squares given the integer codes: x ~ d*A - dmin*B.
        let (mut a, mut b, mut cc, mut pp, mut q) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for i in 0..QK_K {
            let j = i / p.len;
            let (aa, bb) = ((c.sc[j] * c.l[i]) as f64, c.m[j] as f64);
            let (wi, xi) = (w[i] as f64, x[i] as f64);
            a += wi * aa * aa;
            b += wi * aa * bb;
            cc += wi * bb * bb;
            pp += wi * xi * aa;
            q += wi * xi * bb;
        }
        let det = a * cc - b * b;
        let fit = if det > 0.0 {
            let d = (pp * cc - b * q) / det;
            let dm = (b * pp - a * q) / det;
            if dm >= 0.0 {
                Some((d, dm))
            } else if a > 0.0 {
                Some((pp / a, 0.0))
            } else {
                None
            }
        } else if a > 0.0 {
            let dm = c.dmin as f64;
            Some(((pp + b * dm) / a, dm))
        } else {
            None
        };
        if let Some((d, dm)) = fit {
            let (d, dm) = (f16_round(d as f32), f16_round(dm as f32));
            if d.is_finite() && dm.is_finite() && (d != c.d || dm != c.dmin) {
                let t = evaluate(x, w, d, dm, c.sc, c.m, p);
                if t.err < c.err {
                    c = t;
                    changed = true;
                }
            }
        }
        if !changed || c.err >= before {
            break;
        }
    }
    c
}

/// The thorough codes of one super-block; `start` is ggml's `(d, dmin, scales, mins)`.
fn search(
    x: &[f32],
    w: &[f32],
    p: Params,
    start: (f32, f32, [i32; 16], [i32; 16]),
) -> Option<Codes> {
    let nsub = QK_K / p.len;
    let mut s = [0.0f32; 16];
    let mut m = [0.0f32; 16];
    let mut ws = [0.0f32; 16];
    let mut wm = [0.0f32; 16];
    for j in 0..nsub {
        let r = p.len * j..p.len * (j + 1);
        let (sj, mj, cs, cm) = sub_search(&x[r.clone()], &w[r], p.lmax);
        (s[j], m[j], ws[j], wm[j]) = (sj, mj, cs as f32, cm as f32);
    }
    let (s, m, ws, wm) = (&s[..nsub], &m[..nsub], &ws[..nsub], &wm[..nsub]);
    let mut ds: Vec<f32> = sym_scales(s, ws, 0, p.smax, (0.6, 1.5), 3)
        .into_iter()
        .map(|c| f16_round(c.0))
        .collect();
    let mut dms: Vec<f32> = sym_scales(m, wm, 0, p.smax, (0.6, 1.5), 3)
        .into_iter()
        .map(|c| f16_round(c.0))
        .collect();
    if ds.is_empty() {
        ds.push(0.0);
    }
    if dms.is_empty() {
        dms.push(0.0);
    }
    let mut best: Option<Codes> = None;
    let consider = |c: Codes, best: &mut Option<Codes>| {
        if c.err.is_finite() && best.as_ref().is_none_or(|b| c.err < b.err) {
            *best = Some(c);
        }
    };
    let quant = |v: f32, d: f32| -> i32 {
        if d == 0.0 || !d.is_finite() {
            0
        } else {
            super::level(v, d, 0, p.smax)
        }
    };
    // Every pair of candidates evaluated; the descent from the best of them and from ggml's.
    for &d in &ds {
        for &dm in &dms {
            if !d.is_finite() || !dm.is_finite() {
                continue;
            }
            let sc: [i32; 16] = std::array::from_fn(|j| if j < nsub { quant(s[j], d) } else { 0 });
            let mi: [i32; 16] = std::array::from_fn(|j| if j < nsub { quant(m[j], dm) } else { 0 });
            consider(evaluate(x, w, d, dm, sc, mi, p), &mut best);
        }
    }
    let mut best = best.map(|c| descend(x, w, c, p));
    let (d0, dm0, sc0, m0) = start;
    if d0.is_finite() && dm0.is_finite() {
        let c = evaluate(x, w, d0, dm0, sc0, m0, p);
        consider(descend(x, w, c, p), &mut best);
    }
    best
}

/// ggml's `(d, dmin, scales, mins)` of a Q4_K/Q5_K head.
fn k4_start(h: &crate::kquants::ScalesK4) -> (f32, f32, [i32; 16], [i32; 16]) {
    let mut sc = [0i32; 16];
    let mut m = [0i32; 16];
    for j in 0..8 {
        let (a, b) = get_scale_min_k4(j, &h.scales);
        sc[j] = a as i32;
        m[j] = b as i32;
    }
    (h.d.to_f32(), h.dmin.to_f32(), sc, m)
}

fn k4_head(c: &Codes, h: &mut crate::kquants::ScalesK4) {
    let ls: [u8; 8] = std::array::from_fn(|j| c.sc[j] as u8);
    let lm: [u8; 8] = std::array::from_fn(|j| c.m[j] as u8);
    h.scales = pack_scale_min_k4(&ls, &lm);
    h.d = Half::from_f32(c.d);
    h.dmin = Half::from_f32(c.dmin);
}

/// Q4_K/Q5_K without an importance matrix: ggml's reference weights (`sqrt(mean square) + |x|`
/// per 32-weight sub-block).
fn k4_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
    match qw {
        Some(q) => w[..x.len()].copy_from_slice(&q[..x.len()]),
        None => {
            for (ws, xs) in w.chunks_exact_mut(32).zip(x.chunks_exact(32)) {
                ws.copy_from_slice(&ref_weights(xs));
            }
        }
    }
}

impl Thorough for Q4K {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        k4_weights(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let g: &BlockQ4K = bytemuck::from_bytes(ggml);
        let Some(c) = search(x, w, Q4, k4_start(&g.head)) else {
            return false;
        };
        let b: &mut BlockQ4K = bytemuck::from_bytes_mut(out);
        k4_head(&c, &mut b.head);
        for (n, j) in (0..QK_K).step_by(64).enumerate() {
            for k in 0..32 {
                b.qs[32 * n + k] = (c.l[j + k] as u8) | ((c.l[j + k + 32] as u8) << 4);
            }
        }
        true
    }
}

impl Thorough for Q5K {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        k4_weights(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let g: &BlockQ5K = bytemuck::from_bytes(ggml);
        let Some(c) = search(x, w, Q5, k4_start(&g.head)) else {
            return false;
        };
        let b: &mut BlockQ5K = bytemuck::from_bytes_mut(out);
        k4_head(&c, &mut b.head);
        b.qh = [0; QK_K / 8];
        let (mut m1, mut m2) = (1u8, 2u8);
        for (k, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = c.l[n + j] as u8;
                if l1 > 15 {
                    l1 -= 16;
                    b.qh[j] |= m1;
                }
                let mut l2 = c.l[n + j + 32] as u8;
                if l2 > 15 {
                    l2 -= 16;
                    b.qh[j] |= m2;
                }
                b.qs[32 * k + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
        true
    }
}

impl Thorough for Q2K {
    /// |x| without an importance matrix (the weights of ggml's reference search).
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        match qw {
            Some(q) => w[..x.len()].copy_from_slice(&q[..x.len()]),
            None => {
                for (wi, &v) in w.iter_mut().zip(x) {
                    *wi = v.abs();
                }
            }
        }
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let g: &BlockQ2K = bytemuck::from_bytes(ggml);
        let sc0 = std::array::from_fn(|j| (g.scales[j] & 0xF) as i32);
        let m0 = std::array::from_fn(|j| (g.scales[j] >> 4) as i32);
        let start = (g.d.to_f32(), g.dmin.to_f32(), sc0, m0);
        let Some(c) = search(x, w, Q2, start) else {
            return false;
        };
        let b: &mut BlockQ2K = bytemuck::from_bytes_mut(out);
        b.d = Half::from_f32(c.d);
        b.dmin = Half::from_f32(c.dmin);
        for j in 0..16 {
            b.scales[j] = (c.sc[j] as u8) | ((c.m[j] as u8) << 4);
        }
        let l: [u8; QK_K] = std::array::from_fn(|i| c.l[i] as u8);
        pack_2bit(&l, &mut b.qs);
        true
    }
}
