//! The opt-in thorough block search (`kiln quantize --search thorough`): the same block formats
//! as ggml's, so stock llama.cpp reads them, with a lower importance-weighted error.
//!
//! ggml's searches try a few trial scales (and mins) per group. The thorough search, in the
//! spirit of ik_llama.cpp's improved rounding:
//! - per group (a legacy block, a K-quant sub-block), sweeps every scale at which some weight's
//!   level changes (the exact breakpoints of the rounding, within a range) and takes, for each
//!   set of levels, the weighted least-squares optimal scale in closed form (for the formats
//!   with mins, a dense grid of trial scales with the least-squares scale and min, re-rounded
//!   and solved again);
//! - for the K-quants, quantizes the sub-block scales (and mins) to their 4/6/8 bits by the
//!   same weighted sweep, each sub-block weighted by how fast its error grows away from its own
//!   optimum, then improves the integer scales by coordinate descent (each sub-block's scale and
//!   min moved by up to 2 steps, its levels re-rounded) and the super-block `d` (and `dmin`) by
//!   the closed-form least-squares fit given all integer codes, rounded to f16 and re-rounded,
//!   a few rounds; the descent also starts from ggml's own block.
//!
//! Per block, ggml's result is kept unless the thorough candidate has a strictly lower weighted
//! error, both measured by one scalar function ([`block_error`]: the block dequantized by the
//! format's own dequantizer, bit-identical to ggml's, squared differences weighted and summed in
//! f64). The weights are the importance matrix's when one is given, else the weights ggml's own
//! search uses for that format without one ([`metric_weights`]). So the thorough search is never
//! worse, block by block, under those weights. It is scalar and deterministic: the bytes do not
//! depend on the SIMD level or the thread count.

mod kmin;
mod ksym;
mod legacy;

use crate::kquants::search::nearest_int;
use crate::rows::KernelError;
use crate::{BlockFormat, GgmlType};
use rayon::prelude::*;
use std::fmt;

/// Which block search writes the quantized blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Search {
    /// ggml's own search: byte-identical to llama.cpp (the default).
    #[default]
    Ggml,
    /// The thorough search of this module, for the formats [`supports`] lists; ggml's for the
    /// others.
    Thorough,
}

impl Search {
    /// The names `--search` accepts.
    pub const NAMES: [&'static str; 2] = ["ggml", "thorough"];

    /// The search named `name` ("ggml", "thorough"; case-insensitive).
    pub fn parse(name: &str) -> Option<Search> {
        match name.to_ascii_lowercase().as_str() {
            "ggml" => Some(Search::Ggml),
            "thorough" => Some(Search::Thorough),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Search::Ggml => "ggml",
            Search::Thorough => "thorough",
        }
    }
}

impl fmt::Display for Search {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the thorough search covers `ty` (for the others it writes ggml's blocks).
pub fn supports(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// A format the thorough search covers.
pub(crate) trait Thorough: BlockFormat {
    /// The error weights of one block of `x` (`qw`: the block's importance weights, if any).
    fn metric_weights(x: &[f32], qw: Option<&[f32]>, w: &mut [f32]);

    /// Writes the thorough candidate for block `x` (weights `w`) into `out`, given ggml's block
    /// `ggml` (a starting point). Returns false when there is no candidate (the block keeps
    /// ggml's bytes).
    fn search_block(x: &[f32], w: &[f32], ggml: &[u8], out: &mut [u8]) -> bool;
}

/// `$go!(F)` with the [`Thorough`] format `F` of the `GgmlType` `$ty`, or `$other` for a
/// format the thorough search does not cover: the one list of the formats it covers.
macro_rules! thorough_formats {
    ($ty:expr, $go:ident, $other:expr) => {
        match $ty {
            GgmlType::Q4_0 => $go!(crate::legacy::Q4_0),
            GgmlType::Q5_0 => $go!(crate::legacy::Q5_0),
            GgmlType::Q8_0 => $go!(crate::legacy::Q8_0),
            GgmlType::Q2_K => $go!(crate::kquants::Q2K),
            GgmlType::Q3_K => $go!(crate::kquants::Q3K),
            GgmlType::Q4_K => $go!(crate::kquants::Q4K),
            GgmlType::Q5_K => $go!(crate::kquants::Q5K),
            GgmlType::Q6_K => $go!(crate::kquants::Q6K),
            _ => $other,
        }
    };
}

/// The weights of [`Thorough::metric_weights`] for a block of format `ty` (the importance
/// weights when given, else the ones ggml's search uses for that format): what the thorough
/// search minimises and compares with ggml's block. `w` must hold one weight per value of `x`,
/// a whole block of `ty`. Returns false for a format the thorough search does not cover.
pub fn metric_weights(ty: GgmlType, x: &[f32], qw: Option<&[f32]>, w: &mut [f32]) -> bool {
    macro_rules! go {
        ($f:ty) => {{
            <$f as Thorough>::metric_weights(x, qw, w);
            true
        }};
    }
    thorough_formats!(ty, go, false)
}

/// Quantizes like [`GgmlType::quantize`] (same checks, same errors) with block search
/// `search`. With [`Search::Thorough`] each block of a covered format is the thorough
/// candidate when that has a strictly lower weighted error than ggml's block, else ggml's.
pub fn quantize(
    ty: GgmlType,
    search: Search,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<usize, KernelError> {
    let written = ty.quantize(src, n_per_row, imatrix, dst)?;
    if search == Search::Ggml {
        return Ok(written);
    }
    macro_rules! go {
        ($f:ty) => {
            refine_rows::<$f>(src, n_per_row, imatrix, &mut dst[..written])
        };
    }
    thorough_formats!(ty, go, ());
    Ok(written)
}

/// Improves ggml's rows in `dst` block by block, rows in parallel.
fn refine_rows<F: Thorough>(
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) {
    let row_bytes = F::row_bytes(n_per_row);
    src.par_chunks(n_per_row)
        .zip(dst.par_chunks_mut(row_bytes))
        .for_each(|(x, y)| refine_row::<F>(x, imatrix, y));
}

fn refine_row<F: Thorough>(src: &[f32], imatrix: Option<&[f32]>, dst: &mut [u8]) {
    let (bw, bb) = (F::BLOCK_WEIGHTS, F::BLOCK_BYTES);
    let mut w = vec![0.0f32; bw];
    let mut cand = vec![0u8; bb];
    let mut scratch = vec![0.0f32; bw];
    for (i, (x, y)) in src
        .chunks_exact(bw)
        .zip(dst.chunks_exact_mut(bb))
        .enumerate()
    {
        let qw = imatrix.map(|q| &q[i * bw..(i + 1) * bw]);
        F::metric_weights(x, qw, &mut w);
        if !F::search_block(x, &w, y, &mut cand) {
            continue;
        }
        if F::first_invalid_block(&cand).is_some() {
            continue;
        }
        let e_cand = block_error::<F>(x, &w, &cand, &mut scratch);
        let e_ggml = block_error::<F>(x, &w, y, &mut scratch);
        if e_cand < e_ggml {
            y.copy_from_slice(&cand);
        }
    }
}

/// The one error measure of the thorough search: block `q` dequantized by the format's own
/// dequantizer (bit-identical to ggml's), `sum w * (x - y)^2` in f64. NaN or infinite for a
/// block whose scales overflow (never "lower" than anything).
pub(crate) fn block_error<F: BlockFormat>(x: &[f32], w: &[f32], q: &[u8], y: &mut [f32]) -> f64 {
    F::dequantize_row(q, y);
    let mut e = 0.0f64;
    for ((&a, &b), &wi) in x.iter().zip(y.iter()).zip(w) {
        let d = a as f64 - b as f64;
        e += wi as f64 * d * d;
    }
    e
}

/// The weighted error of a block of `format`'s bytes `q` against `x` with weights `w` (one per
/// value), by [`block_error`]: what the thorough search compares. For tests and benches.
pub fn weighted_error(ty: GgmlType, x: &[f32], w: &[f32], q: &[u8]) -> f64 {
    let mut y = vec![0.0f32; x.len()];
    if ty.dequantize(q, x.len(), &mut y).is_err() {
        return f64::NAN;
    }
    x.iter()
        .zip(&y)
        .zip(w)
        .map(|((&a, &b), &wi)| {
            let d = a as f64 - b as f64;
            wi as f64 * d * d
        })
        .sum()
}

/// Rounds to f16 and back, as the formats store `d` and `dmin`.
#[inline]
pub(crate) fn f16_round(v: f32) -> f32 {
    crate::fp::Half::from_f32(v).to_f32()
}

/// The level of `v` at step `d` in `[lo, hi]` (0 when `d` is zero or not finite).
#[inline]
pub(crate) fn level(v: f32, d: f32, lo: i32, hi: i32) -> i32 {
    if d == 0.0 || !d.is_finite() {
        return 0.clamp(lo, hi);
    }
    let q = v / d;
    if !q.is_finite() {
        return if q > 0.0 { hi } else { lo };
    }
    if q.abs() >= 4_000_000.0 {
        return if q > 0.0 { hi } else { lo };
    }
    nearest_int(q).clamp(lo, hi)
}

/// The level of `v` at reciprocal step `id` in `[lo, hi]` (0 when `id` is zero or not
/// finite).
#[inline]
pub(crate) fn level_recip(v: f32, id: f32, lo: i32, hi: i32) -> i32 {
    if id == 0.0 || !id.is_finite() {
        return 0.clamp(lo, hi);
    }
    let q = v * id;
    if !q.is_finite() || q.abs() >= 4_000_000.0 {
        return if q > 0.0 { hi } else { lo };
    }
    nearest_int(q).clamp(lo, hi)
}

/// The best scales of a symmetric group: `x ~ s * l` with integer `l` in `[lo, hi]`, error
/// `sum w (x - s l)^2`, scales of both signs.
///
/// For each sign, the inverse scale `t` sweeps `[lo_frac, hi_frac] * L / amax` (`L` the larger
/// level magnitude); the levels `clamp(round(x t))` change only at the breakpoints
/// `(k - 1/2) / |x|`, and between two breakpoints the optimal scale for the fixed levels is the
/// closed-form `sum w x l / sum w l^2`, with error `sum w x^2 - (sum w x l)^2 / sum w l^2`.
/// Returns up to `keep` scales, best first, with `sum w l^2` at each (how fast the error grows
/// away from the optimum: `E(s) = E* + sum w l^2 (s - s*)^2`).
pub(crate) fn sym_scales(
    x: &[f32],
    w: &[f32],
    lo: i32,
    hi: i32,
    range: (f32, f32),
    keep: usize,
) -> Vec<(f32, f64)> {
    let n = x.len();
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    if amax.is_nan() || amax <= 0.0 || !amax.is_finite() {
        return Vec::new();
    }
    let lmag = hi.max(-lo) as f32;
    let t_lo = range.0 * lmag / amax;
    let t_hi = range.1 * lmag / amax;
    if !t_lo.is_finite() || !t_hi.is_finite() {
        return Vec::new();
    }
    // (score = (sum w x l)^2 / sum w l^2, scale, sum w l^2), best first.
    let mut best: Vec<(f64, f32, f64)> = Vec::with_capacity(keep + 1);
    let mut events: Vec<(f32, u32)> = Vec::new();
    let mut l = vec![0i32; n];
    for sigma in [1.0f32, -1.0] {
        let mut sxl = 0.0f64;
        let mut sll = 0.0f64;
        events.clear();
        for j in 0..n {
            let u = sigma * x[j];
            let lj = nearest_int(u * t_lo).clamp(lo, hi);
            l[j] = lj;
            sxl += w[j] as f64 * u as f64 * lj as f64;
            sll += w[j] as f64 * (lj as f64) * (lj as f64);
            if u > 0.0 {
                let mut k = lj + 1;
                while k <= hi {
                    let t = (k as f32 - 0.5) / u;
                    if t > t_hi {
                        break;
                    }
                    events.push((t, j as u32));
                    k += 1;
                }
            } else if u < 0.0 {
                let mut k = -lj + 1;
                while k <= -lo {
                    let t = (k as f32 - 0.5) / -u;
                    if t > t_hi {
                        break;
                    }
                    events.push((t, j as u32));
                    k += 1;
                }
            }
        }
        events.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let consider = |sxl: f64, sll: f64, best: &mut Vec<(f64, f32, f64)>| {
            if sll <= 0.0 || sxl <= 0.0 {
                return;
            }
            let score = sxl * sxl / sll;
            let s = sigma * (sxl / sll) as f32;
            if best.len() == keep && best.last().is_some_and(|b| b.0 >= score) {
                return;
            }
            if best.iter().any(|b| b.1 == s) {
                return;
            }
            let pos = best.iter().position(|b| b.0 < score).unwrap_or(best.len());
            best.insert(pos, (score, s, sll));
            best.truncate(keep);
        };
        consider(sxl, sll, &mut best);
        for &(_, j) in &events {
            let j = j as usize;
            let u = sigma * x[j];
            let old = l[j];
            let new = if u > 0.0 { old + 1 } else { old - 1 };
            l[j] = new;
            let wj = w[j] as f64;
            sxl += wj * u as f64 * (new - old) as f64;
            sll += wj * ((new * new - old * old) as f64);
            consider(sxl, sll, &mut best);
        }
    }
    best.into_iter().map(|b| (b.1, b.2)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heavy-tailed rows like a transformer's (Gaussian, a Student-t-like tail, outliers).
    fn heavy(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut next = move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..rows * cols)
            .map(|i| {
                let g = (-2.0 * (next().max(1e-12)).ln()).sqrt()
                    * (2.0 * std::f64::consts::PI * next()).cos();
                let t = g / (0.3 + next()).sqrt();
                let v = 0.02 * t * (1.0 + 0.5 * ((i % cols) as f64 * 0.01).sin());
                (if i % 1009 == 0 { v * 10.0 } else { v }) as f32
            })
            .collect()
    }

    #[test]
    fn thorough_never_worse_and_better_in_total() {
        let (rows, cols) = (16, 1024);
        let x = heavy(rows, cols, 7);
        let qw: Vec<f32> = (0..cols)
            .map(|i| 0.1 + ((i * 37) % 101) as f32 / 10.0)
            .collect();
        for ty in GgmlType::ALL.into_iter().filter(|t| supports(*t)) {
            for im in [None, Some(&qw[..])] {
                let rb = ty.row_bytes(cols).unwrap();
                let mut a = vec![0u8; rows * rb];
                let mut b = vec![0u8; rows * rb];
                quantize(ty, Search::Ggml, &x, cols, im, &mut a).unwrap();
                let t0 = std::time::Instant::now();
                quantize(ty, Search::Thorough, &x, cols, im, &mut b).unwrap();
                let dt = t0.elapsed();
                let (bw, bb) = (ty.block_weights(), ty.block_bytes());
                let (mut ea, mut eb) = (0.0, 0.0);
                let mut w = vec![0.0f32; bw];
                for (k, xb) in x.chunks(bw).enumerate() {
                    let c = (k * bw) % cols;
                    metric_weights(ty, xb, im.map(|q| &q[c..c + bw]), &mut w);
                    let e1 = weighted_error(ty, xb, &w, &a[k * bb..(k + 1) * bb]);
                    let e2 = weighted_error(ty, xb, &w, &b[k * bb..(k + 1) * bb]);
                    assert!(e2 <= e1, "{ty} block {k}: {e2} > {e1}");
                    ea += e1;
                    eb += e2;
                }
                eprintln!(
                    "{ty:>5} imatrix {:5}: weighted RMSE ratio {:.4} ({:.0} k weights/s)",
                    im.is_some(),
                    (eb / ea).sqrt(),
                    x.len() as f64 / dt.as_secs_f64() / 1e3
                );
                assert!(eb < ea, "{ty}");
            }
        }
    }
}
