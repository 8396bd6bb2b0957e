//! The thorough search for the symmetric legacy formats Q4_0, Q5_0 and Q8_0: one f16 scale per
//! 32 weights, levels in `[-8, 7]`, `[-16, 15]`, `[-127, 127]`.
//!
//! Candidates: the best scales of the breakpoint sweep ([`sym_scales`]) and ggml's own scale;
//! each rounded to f16, the levels re-rounded at that scale, the least-squares scale of those
//! levels taken, rounded again, until it stops moving; then the f16 neighbours of the best.

use super::{f16_round, level_recip, sym_scales, Thorough};
use crate::fp::{f16_to_f32, f32_to_f16, Half};
use crate::legacy::{BlockQ4_0, BlockQ5_0, BlockQ8_0, Q4_0, Q5_0, Q8_0, QK};

/// The weighted error of levels at step `d` (the legacy dequantization `l * d`).
#[inline]
fn error(x: &[f32], w: &[f32], d: f32, lo: i32, hi: i32, l: &mut [i32; QK]) -> f64 {
    let id = 1.0 / d;
    let mut e = 0.0f64;
    for j in 0..QK {
        let lj = level_recip(x[j], id, lo, hi);
        l[j] = lj;
        let diff = x[j] as f64 - (lj as f32 * d) as f64;
        e += w[j] as f64 * diff * diff;
    }
    e
}

/// The best f16 scale and its levels for a symmetric block, starting from the sweep's scales
/// and `start` (ggml's scale).
fn sym_block(
    x: &[f32],
    w: &[f32],
    lo: i32,
    hi: i32,
    range: (f32, f32),
    start: f32,
) -> Option<(f32, [i32; QK])> {
    let mut starts: Vec<f32> = sym_scales(x, w, lo, hi, range, 4)
        .into_iter()
        .map(|c| c.0)
        .collect();
    if starts.is_empty() {
        return None;
    }
    if start.is_finite() && start != 0.0 {
        starts.push(start);
    }
    let mut best: Option<(f64, f32, [i32; QK])> = None;
    let mut l = [0i32; QK];
    let take = |e: f64, d: f32, l: &[i32; QK], best: &mut Option<(f64, f32, [i32; QK])>| {
        if e.is_finite() && best.as_ref().is_none_or(|b| e < b.0) {
            *best = Some((e, d, *l));
        }
    };
    for s in starts {
        let mut d = f16_round(s);
        for _ in 0..4 {
            if d == 0.0 || !d.is_finite() {
                break;
            }
            let e = error(x, w, d, lo, hi, &mut l);
            take(e, d, &l, &mut best);
            let (mut sxl, mut sll) = (0.0f64, 0.0f64);
            for j in 0..QK {
                sxl += w[j] as f64 * x[j] as f64 * l[j] as f64;
                sll += w[j] as f64 * (l[j] as f64) * (l[j] as f64);
            }
            if sll <= 0.0 {
                break;
            }
            let next = f16_round((sxl / sll) as f32);
            if next == d {
                break;
            }
            d = next;
        }
    }
    let (_, d0, _) = best?;
    // The neighbouring f16 values of the best scale.
    let h = f32_to_f16(d0);
    for nb in [h.wrapping_sub(1), h.wrapping_add(1)] {
        let d = f16_to_f32(nb);
        if d.is_finite() && d != 0.0 && (d > 0.0) == (d0 > 0.0) {
            let e = error(x, w, d, lo, hi, &mut l);
            take(e, d, &l, &mut best);
        }
    }
    best.map(|b| (b.1, b.2))
}

/// Ones: ggml's reference path rounds every weight alike (no weights) without an imatrix.
fn legacy_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
    match qw {
        Some(q) => w[..x.len()].copy_from_slice(&q[..x.len()]),
        None => w[..x.len()].fill(1.0),
    }
}

/// ggml's scale of a legacy block (its first two bytes, `d`).
fn stored_d(block: &[u8]) -> f32 {
    Half([block[0], block[1]]).to_f32()
}

impl Thorough for Q4_0 {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        legacy_weights(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let Some((d, l)) = sym_block(x, w, -8, 7, (0.5, 4.0), stored_d(ggml)) else {
            return false;
        };
        let b: &mut BlockQ4_0 = bytemuck::from_bytes_mut(out);
        b.d = Half::from_f32(d);
        for j in 0..QK / 2 {
            b.qs[j] = ((l[j] + 8) as u8) | (((l[j + QK / 2] + 8) as u8) << 4);
        }
        true
    }
}

impl Thorough for Q5_0 {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        legacy_weights(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        let Some((d, l)) = sym_block(x, w, -16, 15, (0.5, 3.0), stored_d(ggml)) else {
            return false;
        };
        let b: &mut BlockQ5_0 = bytemuck::from_bytes_mut(out);
        b.d = Half::from_f32(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let (a, c) = ((l[j] + 16) as u32, (l[j + QK / 2] + 16) as u32);
            b.qs[j] = ((a & 0xF) | ((c & 0xF) << 4)) as u8;
            qh |= ((a >> 4) & 1) << j;
            qh |= ((c >> 4) & 1) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
        true
    }
}

impl Thorough for Q8_0 {
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) {
        legacy_weights(x, qw, w)
    }

    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool {
        // Levels within ggml's own [-127, 127] (never -128, which some dot products mishandle).
        let Some((d, l)) = sym_block(x, w, -127, 127, (0.97, 1.25), stored_d(ggml)) else {
            return false;
        };
        let b: &mut BlockQ8_0 = bytemuck::from_bytes_mut(out);
        b.d = Half::from_f32(d);
        for j in 0..QK {
            b.qs[j] = l[j] as i8;
        }
        true
    }
}
