//! The scale searches shared by the K-quants (and by the legacy formats' importance-weighted
//! path): ports of ggml's `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants` and `make_qp_quants`.
//!
//! Every expression keeps ggml's order of operations and never fuses a multiply and an add:
//! the results feed roundings and comparisons, and the bytes must match ggml's.

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zeros.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest (ties to even) with ggml's magic-number trick. Exact for |x| < 2^22,
/// which every caller guarantees for finite input.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Trial scales evaluated side by side, one per lane. Each lane runs exactly the scalar
/// sequence of operations for its own trial (sums over the weights stay in ggml's order), so
/// the results are bit-identical; LLVM turns the lane loops into SIMD.
const LANES: usize = 4;

/// Symmetric quantization of `x` to `[-nmax, nmax-1]`, weighted least squares refinement over
/// 18 trial scales (`rmse_type == 1` in ggml). Writes `l + nmax` into `out` and returns the
/// scale. With `qw == None` the weights are `x*x`.
///
/// ggml tries the scales one after another; they do not depend on each other, so kiln computes
/// all of them in lanes and then makes ggml's comparisons in ggml's order.
pub fn make_qx_quants(nmax: i32, x: &[f32], out: &mut [i8], qw: Option<&[f32]>) -> f32 {
    match x.len() {
        16 => make_qx_quants_n::<16>(nmax, x, out, qw),
        32 => make_qx_quants_n::<32>(nmax, x, out, qw),
        _ => make_qx_quants_n::<0>(nmax, x, out, qw),
    }
}

#[inline(always)]
fn make_qx_quants_n<const N: usize>(
    nmax: i32,
    x: &[f32],
    out: &mut [i8],
    qw: Option<&[f32]>,
) -> f32 {
    // N == 0: any length (slower, bounds-checked); otherwise the compiler knows the length.
    let n = if N == 0 { x.len() } else { N };
    let x = &x[..n];
    let out = &mut out[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let mut w = [0.0f32; 32];
    let mut w_dyn = Vec::new();
    let w: &[f32] = if n <= 32 {
        for i in 0..n {
            w[i] = match qw {
                Some(q) => q[i],
                None => x[i] * x[i],
            };
        }
        &w[..n]
    } else {
        w_dyn.extend((0..n).map(|i| qw.map_or(x[i] * x[i], |q| q[i])));
        &w_dyn
    };
    let nmaxf = nmax as f32;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);

    let iscale0 = -nmaxf / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = level(iscale0, x[i]);
        out[i] = (l + nmax) as i8;
        let lf = l as f32;
        sumlx += w[i] * x[i] * lf;
        suml2 += w[i] * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;

    // The 18 trial scales, is = -9..=-1, 1..=9, in ggml's order, in lanes of LANES.
    let trials: [f32; 18] = std::array::from_fn(|k| {
        let is = if k < 9 { k as i32 - 9 } else { k as i32 - 8 };
        -(nmaxf + 0.1f32 * is as f32) / max
    });
    let mut winner: Option<f32> = None;
    for batch in trials.chunks(LANES) {
        let mut iscale = [0.0f32; LANES];
        iscale[..batch.len()].copy_from_slice(batch);
        let mut slx = [0.0f32; LANES];
        let mut sl2 = [0.0f32; LANES];
        for i in 0..n {
            let (xi, wi) = (x[i], w[i]);
            for k in 0..LANES {
                let lf = level(iscale[k], xi) as f32;
                slx[k] += wi * xi * lf;
                sl2[k] += wi * lf * lf;
            }
        }
        for k in 0..batch.len() {
            if sl2[k] > 0.0 && slx[k] * slx[k] > best * sl2[k] {
                scale = slx[k] / sl2[k];
                best = scale * slx[k];
                winner = Some(iscale[k]);
            }
        }
    }
    if let Some(iscale) = winner {
        for i in 0..n {
            out[i] = (nmax + level(iscale, x[i])) as i8;
        }
    }
    scale
}
/// [`make_qx_quants`] for `L` consecutive `N`-weight groups at once (`x`, `out` and `qw`
/// hold `N * L` values), one group per lane: each lane runs exactly the scalar sequence of
/// operations for its group (sums in ggml's order, the trial scales compared in ggml's
/// order), selects standing in for the branches, so levels and scales are bit-identical.
/// Returns the `L` scales. Each batch of trial scales accumulates side by side, which gives
/// the CPU independent chains to overlap.
#[inline(always)]
pub fn make_qx_quants_lanes<const N: usize, const L: usize>(
    nmax: i32,
    x: &[f32],
    out: &mut [i8],
    qw: Option<&[f32]>,
) -> [f32; L] {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if crate::simd::has_lanes() {
        use crate::simd::lanes::qx;
        let mut scales = [0.0f32; L];
        // SAFETY: the CPU has the lane searches' features (AVX2 or NEON, checked above).
        unsafe {
            match L {
                8 => qx::<N, 1>(nmax, x, out, qw, &mut scales),
                16 => qx::<N, 2>(nmax, x, out, qw, &mut scales),
                32 => qx::<N, 4>(nmax, x, out, qw, &mut scales),
                _ => return make_qx_quants_lanes_portable::<N, L>(nmax, x, out, qw),
            }
        }
        return scales;
    }
    make_qx_quants_lanes_portable::<N, L>(nmax, x, out, qw)
}

/// [`make_qx_quants_lanes`] in portable Rust (which the compiler vectorizes as it can).
#[inline(always)]
fn make_qx_quants_lanes_portable<const N: usize, const L: usize>(
    nmax: i32,
    x: &[f32],
    out: &mut [i8],
    qw: Option<&[f32]>,
) -> [f32; L] {
    const BATCH: usize = 6;
    let (x, out) = (&x[..N * L], &mut out[..N * L]);
    let mut xt = [[0.0f32; L]; N];
    let mut wt = [[0.0f32; L]; N];
    for k in 0..L {
        for i in 0..N {
            let v = x[N * k + i];
            xt[i][k] = v;
            wt[i][k] = match qw {
                Some(q) => q[N * k + i],
                None => v * v,
            };
        }
    }
    let mut amax = [0.0f32; L];
    let mut max = [0.0f32; L];
    for xi in &xt {
        for k in 0..L {
            let ax = xi[k].abs();
            let gt = ax > amax[k];
            amax[k] = if gt { ax } else { amax[k] };
            max[k] = if gt { xi[k] } else { max[k] };
        }
    }
    let nmaxf = nmax as f32;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Lanes of an all-zero group compute nonsense (infinite scales) that the end discards.
    let mut win: [f32; L] = std::array::from_fn(|k| -nmaxf / max[k]);
    let mut sumlx = [0.0f32; L];
    let mut suml2 = [0.0f32; L];
    for i in 0..N {
        for k in 0..L {
            let (xv, w) = (xt[i][k], wt[i][k]);
            let lf = level(win[k], xv) as f32;
            sumlx[k] += w * xv * lf;
            suml2[k] += w * lf * lf;
        }
    }
    let mut scale: [f32; L] = std::array::from_fn(|k| {
        if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        }
    });
    let mut best: [f32; L] = std::array::from_fn(|k| scale[k] * sumlx[k]);
    // The 18 trial scales, is = -9..=-1, 1..=9, in ggml's order, in batches of BATCH.
    for b in 0..18 / BATCH {
        let mut iscale = [[0.0f32; L]; BATCH];
        for t in 0..BATCH {
            let kt = b * BATCH + t;
            let is = if kt < 9 { kt as i32 - 9 } else { kt as i32 - 8 };
            for k in 0..L {
                iscale[t][k] = -(nmaxf + 0.1f32 * is as f32) / max[k];
            }
        }
        let mut slx = [[0.0f32; L]; BATCH];
        let mut sl2 = [[0.0f32; L]; BATCH];
        for i in 0..N {
            for t in 0..BATCH {
                for k in 0..L {
                    let (xv, w) = (xt[i][k], wt[i][k]);
                    let lf = level(iscale[t][k], xv) as f32;
                    slx[t][k] += w * xv * lf;
                    sl2[t][k] += w * lf * lf;
                }
            }
        }
        for t in 0..BATCH {
            for k in 0..L {
                let take = sl2[t][k] > 0.0 && slx[t][k] * slx[t][k] > best[k] * sl2[t][k];
                let s = slx[t][k] / sl2[t][k];
                scale[k] = if take { s } else { scale[k] };
                best[k] = if take { s * slx[t][k] } else { best[k] };
                win[k] = if take { iscale[t][k] } else { win[k] };
            }
        }
    }
    // The levels of the winning scale (the first one's when no trial won, as ggml keeps
    // them).
    for k in 0..L {
        let zero = amax[k] < GROUP_MAX_EPS;
        for i in 0..N {
            out[N * k + i] = if zero {
                0
            } else {
                (nmax + level(win[k], xt[i][k])) as i8
            };
        }
        if zero {
            scale[k] = 0.0;
        }
    }
    scale
}

/// Q3_K's symmetric search (`make_q3_quants` with `do_rmse`): start from the max-based scale
/// and move single values while the weighted error falls. Writes `l + nmax` into `out`.
/// Q3_K calls it on 16-weight sub-blocks only, which lets the compiler drop bounds checks.
pub fn make_q3_quants(nmax: i32, x: &[f32], out: &mut [i8]) -> f32 {
    const N: usize = 16;
    let n = N;
    let (x, out) = (&x[..N], &mut out[..N]);
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        out[i] = l as i8;
        let w = x[i] * x[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for o in out[..n].iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// [`make_q3_quants`] with `nmax == 4` for the sixteen 16-weight sub-blocks of a super-block
/// at once, one sub-block per lane: each lane runs exactly the scalar sequence of operations
/// for its sub-block (its sums in ggml's order), selects standing in for the branches, so the
/// levels and scales are bit-identical. Returns the sixteen scales, writes `l + 4` (or 0 for
/// an all-zero sub-block, as ggml leaves it) into `out`.
///
/// ggml stops a sub-block's refinement after a pass that changes nothing; here the passes go
/// on while any lane changes, which leaves a converged lane as it is (a pass that changed
/// nothing starts from the same state, so it changes nothing again).
///
/// [`make_q3_quants_lanes`] does the same for `L` sub-blocks of any number of super-blocks.
#[inline(always)]
pub fn make_q3_quants_x16(x: &[f32; 256], out: &mut [i8; 256]) -> [f32; 16] {
    make_q3_quants_lanes::<16>(x, out)
}

/// [`make_q3_quants_x16`] for `L` consecutive 16-weight sub-blocks (`x` and `out` hold
/// `16 * L` values): more lanes than a vector holds give the CPU independent chains of
/// dependent operations to overlap (each pass is a chain through a division per weight).
#[inline(always)]
pub fn make_q3_quants_lanes<const L: usize>(x: &[f32], out: &mut [i8]) -> [f32; L] {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if crate::simd::has_lanes() {
        use crate::simd::lanes::q3;
        let mut scales = [0.0f32; L];
        // SAFETY: the CPU has the lane searches' features (AVX2 or NEON, checked above).
        unsafe {
            match L {
                8 => q3::<1>(x, out, &mut scales),
                16 => q3::<2>(x, out, &mut scales),
                32 => q3::<4>(x, out, &mut scales),
                _ => return make_q3_quants_lanes_portable::<L>(x, out),
            }
        }
        return scales;
    }
    make_q3_quants_lanes_portable::<L>(x, out)
}

/// [`make_q3_quants_lanes`] in portable Rust.
#[inline(always)]
fn make_q3_quants_lanes_portable<const L: usize>(x: &[f32], out: &mut [i8]) -> [f32; L] {
    const NMAX: i32 = 4;
    let (x, out) = (&x[..16 * L], &mut out[..16 * L]);
    // xt[i][k]: weight i of sub-block k.
    let mut xt = [[0.0f32; L]; 16];
    for k in 0..L {
        for i in 0..16 {
            xt[i][k] = x[16 * k + i];
        }
    }
    let mut amax = [0.0f32; L];
    let mut max = [0.0f32; L];
    for xi in &xt {
        for k in 0..L {
            let ax = xi[k].abs();
            let gt = ax > amax[k];
            amax[k] = if gt { ax } else { amax[k] };
            max[k] = if gt { xi[k] } else { max[k] };
        }
    }
    // Lanes of an all-zero sub-block compute nonsense (their scale is infinite) that the end
    // discards; nothing here can trap or panic on it.
    let iscale: [f32; L] = std::array::from_fn(|k| -(NMAX as f32) / max[k]);
    let mut l = [[0.0f32; L]; 16];
    let mut sumlx = [0.0f32; L];
    let mut suml2 = [0.0f32; L];
    for i in 0..16 {
        for k in 0..L {
            let xv = xt[i][k];
            let lf = nearest_int(iscale[k] * xv).clamp(-NMAX, NMAX - 1) as f32;
            l[i][k] = lf;
            let w = xv * xv;
            sumlx[k] += w * xv * lf;
            suml2[k] += w * lf * lf;
        }
    }
    for _ in 0..5 {
        let mut changed = [false; L];
        for i in 0..16 {
            for k in 0..L {
                let xv = xt[i][k];
                let w = xv * xv;
                let li = l[i][k];
                let slx0 = sumlx[k] - w * xv * li;
                let sl20 = suml2[k] - w * li * li;
                let nl = nearest_int(xv * sl20 / slx0).clamp(-NMAX, NMAX - 1) as f32;
                let slx = slx0 + w * xv * nl;
                let sl2 = sl20 + w * nl * nl;
                let take = slx0 > 0.0
                    && nl != li
                    && sl2 > 0.0
                    && slx * slx * suml2[k] > sumlx[k] * sumlx[k] * sl2;
                l[i][k] = if take { nl } else { li };
                sumlx[k] = if take { slx } else { sumlx[k] };
                suml2[k] = if take { sl2 } else { suml2[k] };
                changed[k] |= take;
            }
        }
        if !changed.iter().any(|&c| c) {
            break;
        }
    }
    let mut scales = [0.0f32; L];
    for k in 0..L {
        let zero = amax[k] < GROUP_MAX_EPS;
        for i in 0..16 {
            out[16 * k + i] = if zero {
                0
            } else {
                (l[i][k] as i32 + NMAX) as i8
            };
        }
        scales[k] = if !zero && suml2[k] > 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
    }
    scales
}

/// Parameters of the scale-and-min grid searches.
#[derive(Clone, Copy)]
pub struct MinSearch {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Asymmetric quantization `x ~ scale*l - min` with `l` in `[0, nmax]` (ggml's
/// `make_qkx2_quants`). Writes `l` into `out`, the (positive) min into `the_min`, returns scale.
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut f32,
    p: MinSearch,
) -> f32 {
    make_qkx_sized::<false>(nmax, x, weights, out, the_min, p)
}

/// ggml's `make_qkx3_quants` with explicit weights: like [`make_qkx2_quants`] but guards the
/// trial quantization against a min that has moved up to the max.
pub fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut f32,
    p: MinSearch,
) -> f32 {
    make_qkx_sized::<true>(nmax, x, weights, out, the_min, p)
}

/// Picks a copy of the search specialised for the group size (16 or 32 in every caller).
fn make_qkx_sized<const QKX3: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut f32,
    p: MinSearch,
) -> f32 {
    match x.len() {
        16 => make_qkx::<16, QKX3>(nmax, x, weights, out, the_min, p),
        32 => make_qkx::<32, QKX3>(nmax, x, weights, out, the_min, p),
        _ => make_qkx::<0, QKX3>(nmax, x, weights, out, the_min, p),
    }
}

/// The grid search of `make_qkx2_quants` (`QKX3 == false`) and `make_qkx3_quants`.
///
/// ggml walks the trial steps in order, and a step that lowers the error moves `min`, which
/// every later step uses. kiln evaluates `LANES` consecutive steps at once with the current
/// `min`; the first of them that wins (in ggml's order) is taken and the search resumes right
/// after it with the new `min`, so every step is evaluated exactly as ggml evaluates it.
#[inline(always)]
fn make_qkx<const N: usize, const QKX3: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut f32,
    p: MinSearch,
) -> f32 {
    let n = if N == 0 { x.len() } else { N };
    let (x, weights, out) = (&x[..n], &weights[..n], &mut out[..n]);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if (QKX3 && max <= min) || (!QKX3 && max == min) {
        out.fill(0);
        *the_min = -min;
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        out[i] = l as u8;
        best_error += weights[i] * err(scale * l as f32 + min - x[i]);
    }
    if p.nstep < 1 {
        *the_min = -min;
        return scale;
    }
    // The level of one weight at one trial scale, as the trial loop computes it.
    let level = |iscale: f32, xm: f32| -> i32 {
        if QKX3 {
            // Both arms computed, then selected, so that the lanes vectorize.
            let v = iscale * xm;
            let r = nearest_int(if v < nmaxf { v } else { nmaxf });
            if v > 0.0 {
                r
            } else {
                0
            }
        } else {
            nearest_int(iscale * xm).clamp(0, nmax)
        }
    };
    let mut is = 0i32;
    while is <= p.nstep {
        let batch = ((p.nstep + 1 - is) as usize).min(LANES);
        let span = max - min;
        let iscales: [f32; LANES] =
            std::array::from_fn(|k| (p.rmin + p.rdelta * (is + k as i32) as f32 + nmaxf) / span);
        let mut sum_l = [0.0f32; LANES];
        let mut sum_l2 = [0.0f32; LANES];
        let mut sum_xl = [0.0f32; LANES];
        for i in 0..n {
            let (xi, w) = (x[i], weights[i]);
            let xm = xi - min;
            for k in 0..LANES {
                let lf = level(iscales[k], xm) as f32;
                sum_l[k] += w * lf;
                sum_l2[k] += w * lf * lf;
                sum_xl[k] += w * lf * xi;
            }
        }
        let mut this_scale = [0.0f32; LANES];
        let mut this_min = [0.0f32; LANES];
        let mut ok = [false; LANES];
        for k in 0..LANES {
            let d = sum_w * sum_l2[k] - sum_l[k] * sum_l[k];
            ok[k] = d > 0.0;
            let s = (sum_w * sum_xl[k] - sum_x * sum_l[k]) / d;
            let m = (sum_l2[k] * sum_x - sum_l[k] * sum_xl[k]) / d;
            (this_scale[k], this_min[k]) = if m > 0.0 {
                (sum_xl[k] / sum_l2[k], 0.0)
            } else {
                (s, m)
            };
        }
        let mut cur_error = [0.0f32; LANES];
        for i in 0..n {
            let (xi, w) = (x[i], weights[i]);
            let xm = xi - min;
            for k in 0..LANES {
                let lf = level(iscales[k], xm) as f32;
                cur_error[k] += w * err(this_scale[k] * lf + this_min[k] - xi);
            }
        }
        let mut advance = batch;
        for k in 0..batch {
            if ok[k] && cur_error[k] < best_error {
                for i in 0..n {
                    out[i] = level(iscales[k], x[i] - min) as u8;
                }
                best_error = cur_error[k];
                scale = this_scale[k];
                min = this_min[k];
                advance = k + 1;
                break;
            }
        }
        is += advance as i32;
    }
    *the_min = -min;
    scale
}
/// [`make_qkx2_quants`] (`QKX3 == false`) or [`make_qkx3_quants`] for `L` consecutive groups
/// of `N` weights at once (`x`, `weights` and `out` hold `N * L` values), one group per lane.
/// Each lane walks ggml's trial steps in ggml's order with its own current `min` (a winning
/// step moves it for the lane's later steps), its sums in ggml's order, selects standing in
/// for the branches: the levels, scales and mins are bit-identical to the scalar search's.
/// Writes the (positive) mins into `the_min`, returns the scales.
#[inline(always)]
pub fn make_qkx_lanes<const N: usize, const L: usize, const QKX3: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut [f32; L],
    p: MinSearch,
) -> [f32; L] {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    if crate::simd::has_lanes() {
        use crate::simd::lanes::qkx;
        let mut scales = [0.0f32; L];
        // SAFETY: the CPU has the lane searches' features (AVX2 or NEON, checked above).
        unsafe {
            match L {
                8 => qkx::<N, 1, QKX3>(nmax, x, weights, out, the_min, &mut scales, p),
                16 => qkx::<N, 2, QKX3>(nmax, x, weights, out, the_min, &mut scales, p),
                32 => qkx::<N, 4, QKX3>(nmax, x, weights, out, the_min, &mut scales, p),
                _ => {
                    return make_qkx_lanes_portable::<N, L, QKX3>(nmax, x, weights, out, the_min, p)
                }
            }
        }
        return scales;
    }
    make_qkx_lanes_portable::<N, L, QKX3>(nmax, x, weights, out, the_min, p)
}

/// [`make_qkx_lanes`] in portable Rust.
#[inline(always)]
fn make_qkx_lanes_portable<const N: usize, const L: usize, const QKX3: bool>(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    out: &mut [u8],
    the_min: &mut [f32; L],
    p: MinSearch,
) -> [f32; L] {
    let (x, weights, out) = (&x[..N * L], &weights[..N * L], &mut out[..N * L]);
    let mut xt = [[0.0f32; L]; N];
    let mut wt = [[0.0f32; L]; N];
    for k in 0..L {
        for i in 0..N {
            xt[i][k] = x[N * k + i];
            wt[i][k] = weights[N * k + i];
        }
    }
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x: [f32; L] = std::array::from_fn(|k| sum_w[k] * xt[0][k]);
    for i in 1..N {
        for k in 0..L {
            let (xv, w) = (xt[i][k], wt[i][k]);
            min[k] = if xv < min[k] { xv } else { min[k] };
            max[k] = if xv > max[k] { xv } else { max[k] };
            sum_w[k] += w;
            sum_x[k] += w * xv;
        }
    }
    let mut degenerate = [false; L];
    for k in 0..L {
        min[k] = if min[k] > 0.0 { 0.0 } else { min[k] };
        degenerate[k] = if QKX3 {
            max[k] <= min[k]
        } else {
            max[k] == min[k]
        };
    }
    let nmaxf = nmax as f32;
    let err = |diff: f32| if p.use_mad { diff.abs() } else { diff * diff };
    let init_level = |iscale: f32, xm: f32| nearest_int(iscale * xm).clamp(0, nmax);
    let level = |iscale: f32, xm: f32| -> i32 {
        if QKX3 {
            let v = iscale * xm;
            let r = nearest_int(if v < nmaxf { v } else { nmaxf });
            if v > 0.0 {
                r
            } else {
                0
            }
        } else {
            nearest_int(iscale * xm).clamp(0, nmax)
        }
    };
    // Degenerate lanes compute nonsense (an infinite scale) that the end discards.
    let iscale0: [f32; L] = std::array::from_fn(|k| nmaxf / (max[k] - min[k]));
    let min0 = min;
    let mut scale: [f32; L] = std::array::from_fn(|k| 1.0 / iscale0[k]);
    let mut best_error = [0.0f32; L];
    for i in 0..N {
        for k in 0..L {
            let l = init_level(iscale0[k], xt[i][k] - min0[k]) as f32;
            best_error[k] += wt[i][k] * err(scale[k] * l + min0[k] - xt[i][k]);
        }
    }
    // The winning step's scale and min (the levels are recomputed from them at the end).
    let mut won = [false; L];
    let mut win_iscale = [0.0f32; L];
    let mut win_min = [0.0f32; L];
    let steps = if p.nstep < 1 { 0 } else { p.nstep + 1 };
    for is in 0..steps {
        let iscale: [f32; L] =
            std::array::from_fn(|k| (p.rmin + p.rdelta * is as f32 + nmaxf) / (max[k] - min[k]));
        let mut sum_l = [0.0f32; L];
        let mut sum_l2 = [0.0f32; L];
        let mut sum_xl = [0.0f32; L];
        for i in 0..N {
            for k in 0..L {
                let (xv, w) = (xt[i][k], wt[i][k]);
                let lf = level(iscale[k], xv - min[k]) as f32;
                sum_l[k] += w * lf;
                sum_l2[k] += w * lf * lf;
                sum_xl[k] += w * lf * xv;
            }
        }
        let mut this_scale = [0.0f32; L];
        let mut this_min = [0.0f32; L];
        let mut ok = [false; L];
        for k in 0..L {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            ok[k] = d > 0.0;
            let s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            let m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            let clamp = m > 0.0;
            this_scale[k] = if clamp { sum_xl[k] / sum_l2[k] } else { s };
            this_min[k] = if clamp { 0.0 } else { m };
        }
        let mut cur_error = [0.0f32; L];
        for i in 0..N {
            for k in 0..L {
                let (xv, w) = (xt[i][k], wt[i][k]);
                let lf = level(iscale[k], xv - min[k]) as f32;
                cur_error[k] += w * err(this_scale[k] * lf + this_min[k] - xv);
            }
        }
        for k in 0..L {
            let take = ok[k] && cur_error[k] < best_error[k];
            won[k] |= take;
            win_iscale[k] = if take { iscale[k] } else { win_iscale[k] };
            win_min[k] = if take { min[k] } else { win_min[k] };
            best_error[k] = if take { cur_error[k] } else { best_error[k] };
            scale[k] = if take { this_scale[k] } else { scale[k] };
            min[k] = if take { this_min[k] } else { min[k] };
        }
    }
    for k in 0..L {
        for i in 0..N {
            let xv = xt[i][k];
            let l = if won[k] {
                level(win_iscale[k], xv - win_min[k])
            } else {
                init_level(iscale0[k], xv - min0[k])
            };
            out[N * k + i] = if degenerate[k] { 0 } else { l as u8 };
        }
        the_min[k] = -(if degenerate[k] { min0[k] } else { min[k] });
        scale[k] = if degenerate[k] { 0.0 } else { scale[k] };
    }
    scale
}

/// Quantizes non-negative values (sub-block scales or mins) to `[0, nmax]` with importance
/// weights (ggml's `make_qp_quants`). Writes the levels into `out`, returns the scale.
pub fn make_qp_quants(nmax: i32, x: &[f32], out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let (out, quant_weights) = (&mut out[..n], &quant_weights[..n]);
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * out[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        out[i] = l as u8;
        let w = quant_weights[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Reads sub-block `j`'s 6-bit scale and min from the 12 packed bytes of Q4_K/Q5_K.
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and mins into Q4_K/Q5_K's 12 bytes.
#[inline]
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}
