//! The thorough search for the symmetric K-quants Q3_K and Q6_K: sixteen 16-weight sub-blocks,
//! each with a signed integer scale (6 bits, offset by 32, for Q3_K; a signed byte for Q6_K)
//! under the super-block's f16 `d`. Weight = d*sc*l.
//!
//! Each sub-block's best continuous scale comes from the breakpoint sweep ([`sym_scales`]),
//! with its curvature `W = sum w l^2`; the sweep run again on the sixteen scales, weighted by
//! `W`, gives candidates for `d`. From the best candidate, and from ggml's own block, a descent:
//! each sub-block's integer scale moved by up to 2 steps (levels re-rounded), then `d` refitted
//! by least squares given every integer code and rounded to f16, a few rounds.

use super::{f16_round, level, level_recip, sym_scales, Thorough};
use crate::fp::Half;
use crate::kquants::{pack_2bit, q6_k, BlockQ3K, BlockQ6K, Q3K, Q6K, QK_K};

/// Level and scale ranges of a format.
#[derive(Clone, Copy)]
struct Params {
    lo: i32,
    hi: i32,
    slo: i32,
    shi: i32,
    range: (f32, f32),
}

const Q3: Params = Params {
    lo: -4,
    hi: 3,
    slo: -32,
    shi: 31,
    range: (0.3, 4.0),
};
const Q6: Params = Params {
    lo: -32,
    hi: 31,
    slo: -128,
    shi: 127,
    range: (0.85, 1.5),
};

/// Sub-block `j`'s error at step `dl` (levels re-rounded into `l`).
#[inline]
fn sub_error(x: &[f32], w: &[f32], dl: f32, p: Params, l: &mut [i32]) -> f64 {
    let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
    let mut e = 0.0f64;
    for i in 0..16 {
        let li = level_recip(x[i], idl, p.lo, p.hi);
        l[i] = li;
        let diff = x[i] as f64 - (dl * li as f32) as f64;
        e += w[i] as f64 * diff * diff;
    }
    e
}

/// A super-block's codes: `d`, the sixteen integer scales, the levels, and the error.
#[derive(Clone)]
struct Codes {
    d: f32,
    sc: [i32; 16],
    l: [i32; QK_K],
    err: f64,
}

fn evaluate(x: &[f32], w: &[f32], d: f32, sc: [i32; 16], p: Params) -> Codes {
    let mut l = [0i32; QK_K];
    let mut err = 0.0;
    for j in 0..16 {
        let r = 16 * j..16 * j + 16;
        err += sub_error(&x[r.clone()], &w[r.clone()], d * sc[j] as f32, p, &mut l[r]);
    }
    Codes { d, sc, l, err }
}

/// Coordinate descent from `c`: sub-block scales, then `d` by least squares.
fn descend(x: &[f32], w: &[f32], mut c: Codes, p: Params) -> Codes {
    let mut l16 = [0i32; 16];
    for _ in 0..4 {
        let mut changed = false;
        for j in 0..16 {
            let r = 16 * j..16 * j + 16;
            let (xs, ws) = (&x[r.clone()], &w[r.clone()]);
            let cur = c.sc[j];
            let mut best = (sub_error(xs, ws, c.d * cur as f32, p, &mut l16), cur);
            for s in (cur - 2).max(p.slo)..=(cur + 2).min(p.shi) {
                if s == cur {
                    continue;
                }
                let e = sub_error(xs, ws, c.d * s as f32, p, &mut l16);
                if e < best.0 {
                    best = (e, s);
                }
            }
            if best.1 != cur {
                c.sc[j] = best.1;
                changed = true;
            }
        }
        let before = c.err;
        c = evaluate(x, w, c.d, c.sc, p);
        // d by least squares given the integer codes q = sc * l.
        let (mut sxq, mut sqq) = (0.0f64, 0.0f64);
        for i in 0..QK_K {
            let q = (c.sc[i / 16] * c.l[i]) as f64;
            sxq += w[i] as f64 * x[i] as f64 * q;
            sqq += w[i] as f64 * q * q;
        }
        if sqq > 0.0 {
            let d = f16_round((sxq / sqq) as f32);
            if d.is_finite() && d != c.d {
                let t = evaluate(x, w, d, c.sc, p);
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

/// The thorough codes of one super-block; `start` is ggml's `(d, scales)`.
fn search(x: &[f32], w: &[f32], p: Params, start: (f32, [i32; 16])) -> Option<Codes> {
    let mut s = [0.0f32; 16];
    let mut cw = [0.0f32; 16];
    for j in 0..16 {
        let r = 16 * j..16 * j + 16;
        if let Some(&(sj, wj)) = sym_scales(&x[r.clone()], &w[r], p.lo, p.hi, p.range, 1).first() {
            s[j] = sj;
            cw[j] = wj as f32;
        }
    }
    let mut best: Option<Codes> = None;
    let consider = |c: Codes, best: &mut Option<Codes>| {
        if c.err.is_finite() && best.as_ref().is_none_or(|b| c.err < b.err) {
            *best = Some(c);
        }
    };
    for (dc, _) in sym_scales(&s, &cw, p.slo, p.shi, (0.6, 1.5), 4) {
        let d = f16_round(dc);
        if d == 0.0 || !d.is_finite() {
            continue;
        }
        let sc: [i32; 16] = std::array::from_fn(|j| level(s[j], d, p.slo, p.shi));
        consider(evaluate(x, w, d, sc, p), &mut best);
    }
    // The descent from the best candidate and from ggml's block.
    let mut best = best.map(|c| descend(x, w, c, p));
    let (d0, sc0) = start;
    if d0.is_finite() && d0 != 0.0 {
        let c = evaluate(x, w, d0, sc0, p);
        consider(descend(x, w, c, p), &mut best);
    }
    best
}

/// x*x without an importance matrix (the weights of ggml's `make_q3_quants` and of Q6_K's
/// `make_qx_quants`), else the importance weights.
fn squares_or(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
    match qw {
        Some(q) => w[..x.len()].copy_from_slice(&q[..x.len()]),
        None => {
            for (wi, &v) in w.iter_mut().zip(x) {
                *wi = v * v;
            }
        }
    }
}

/// Sub-block `j`'s signed scale (-32..31) from Q3_K's 12 packed bytes.
fn q3_scale(s: &[u8; 12], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let sc = lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
    sc as i32 - 32
}

impl Thorough for Q3K {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        squares_or(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let g: &BlockQ3K = bytemuck::from_bytes(ggml);
        let start = (
            g.d.to_f32(),
            std::array::from_fn(|j| q3_scale(&g.scales, j)),
        );
        let Some(c) = search(x, w, Q3, start) else {
            return false;
        };
        let b: &mut BlockQ3K = bytemuck::from_bytes_mut(out);
        b.d = Half::from_f32(c.d);
        let mut s = [0u8; 12];
        for j in 0..16 {
            let l = (c.sc[j] + 32) as u8;
            if j < 8 {
                s[j] = l & 0xF;
            } else {
                s[j - 8] |= (l & 0xF) << 4;
            }
            s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        b.scales = s;
        let mut l = [0u8; QK_K];
        let mut hmask = [0u8; QK_K / 8];
        for i in 0..QK_K {
            let v = (c.l[i] + 4) as u8;
            let hi = v > 3;
            hmask[i % 32] |= (hi as u8) << (i / 32);
            l[i] = if hi { v - 4 } else { v };
        }
        b.hmask = hmask;
        pack_2bit(&l, &mut b.qs);
        true
    }
}

impl Thorough for Q6K {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        squares_or(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let g: &BlockQ6K = bytemuck::from_bytes(ggml);
        let start = (g.d.to_f32(), std::array::from_fn(|j| g.scales[j] as i32));
        let Some(c) = search(x, w, Q6, start) else {
            return false;
        };
        let b: &mut BlockQ6K = bytemuck::from_bytes_mut(out);
        b.d = Half::from_f32(c.d);
        for j in 0..16 {
            b.scales[j] = c.sc[j] as i8;
        }
        q6_k::pack(&std::array::from_fn(|i| (c.l[i] + 32) as u8), b);
        true
    }
}
