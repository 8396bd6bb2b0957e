//! IQ1_M: 56 bytes per 256 weights (1.75 bits per weight). Each group of 8 weights is a point
//! of IQ1_S's 2048-point ternary lattice (8 low bits in `qs`, 3 high bits and the sign of its
//! own shift `delta` = ±0.125 in a nibble of `qh`); each 16-weight sub-block a 3-bit scale; the
//! super-block an f16 scale spread over the top nibbles of the four `u16` of `scales`. Weight =
//! `d * (2*scale + 1) * (grid + delta)`. ggml's `quantize_row_iq1_m_impl` (importance weights
//! optional).

use super::block_weights;
use super::iq1_s::IQ1S_DELTA;
use super::lattice::{
    c_max, pack, sorted_order, sum_squares, Abort, Kind, Lattice, Lookup, IQ1S_GRID,
};
use crate::fp::Half;
use crate::kquants::search::nearest_int;
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::{compiled_for, pass_bits, Lanes};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// ggml's `GROUP_MAX_EPS_IQ1_M`.
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;
/// Weights per sub-block (`IQ1M_BLOCK_SIZE`).
const BLOCK: usize = 16;

/// The 1.75-bit ternary lattice i-quant.
pub struct Iq1M;

/// One IQ1_M super-block (ggml's `block_iq1_m`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq1M {
    /// The low 8 bits of each group's grid index.
    pub qs: [u8; QK_K / 8],
    /// Per group a nibble: the 3 high bits of the grid index, then the sign of the shift.
    pub qh: [u8; QK_K / 16],
    /// Four little-endian `u16`: 3-bit sub-block scales (four per `u16`, bits 0..12) and one
    /// nibble of the f16 super-block scale each (bits 12..16).
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(size_of::<BlockIq1M>() == 56);

impl BlockIq1M {
    fn sc(&self) -> [u16; 4] {
        std::array::from_fn(|i| u16::from_le_bytes([self.scales[2 * i], self.scales[2 * i + 1]]))
    }

    fn set_sc(&mut self, sc: [u16; 4]) {
        for (o, v) in self.scales.chunks_exact_mut(2).zip(sc) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// The super-block scale's f16 bits (ggml's `iq1m_scale_t`).
    fn scale_bits(&self) -> u16 {
        let sc = self.sc();
        (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)
    }
}

/// Spreads the f16 bits `s` over the top nibbles of the four scale words.
fn put_scale_bits(sc: &mut [u16; 4], s: u16) {
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
}

fn quantize_block(lanes: Option<Lanes>, xbl: &[f32], y: &mut BlockIq1M, qw: Option<&[f32]>) {
    let lat = Lattice::get(Kind::Iq1);
    // With lanes, the whole block is compiled for their level (the boundary search with 8
    // candidates `i2` side by side: measured faster than 16 with AVX-512 too).
    let done = match lanes {
        None => quantize_block_impl(None, lat, xbl, y, qw),
        Some(l) => compiled_for(l, || quantize_block_impl(lanes, lat, xbl, y, qw)),
    };
    if done.is_err() {
        *y = bytemuck::Zeroable::zeroed();
        let mut sc = [0u16; 4];
        put_scale_bits(&mut sc, 0x7e00);
        y.set_sc(sc);
    }
}

/// ggml's `quantize_row_iq1_m_impl` for one super-block; with `lanes`, the boundary search
/// runs `N` candidates side by side ([`search_boundaries_lanes`]).
#[inline(always)]
fn quantize_block_impl(
    lanes: Option<Lanes>,
    lat: &Lattice,
    xbl: &[f32],
    y: &mut BlockIq1M,
    quant_weights: Option<&[f32]>,
) -> Result<(), Abort> {
    let x_p: [f32; 3] = [-1.0 + IQ1S_DELTA, IQ1S_DELTA, 1.0 + IQ1S_DELTA];
    let x_m: [f32; 3] = [-1.0 - IQ1S_DELTA, -IQ1S_DELTA, 1.0 - IQ1S_DELTA];
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let mut scales = [0.0f32; QK_K / BLOCK];
    let mut l = [0i8; BLOCK];
    let mut index = [0usize; BLOCK / 8];
    let mut shifts = [0usize; QK_K / BLOCK];
    // Which shift each of a sub-block's two groups uses for the combination k: 0 (+,+),
    // 1 (+,-), 2 (-,+), 3 (-,-).
    let xx_of = |k: usize, group: usize| -> [f32; 3] {
        let plus = if group == 0 {
            k < 2
        } else {
            k.is_multiple_of(2)
        };
        if plus {
            x_p
        } else {
            x_m
        }
    };

    *y = bytemuck::Zeroable::zeroed();
    let mut max_scale = 0.0f32;
    let sigma2 = 2.0 * sum_squares(xbl) / QK_K as f32;
    // ggml computes each sub-block's weights twice (the search, the super-block scale), the
    // same values both times: once here.
    let weights: [f32; QK_K] = block_weights(xbl, quant_weights, sigma2);

    for ib in 0..QK_K / BLOCK {
        let xb = &xbl[BLOCK * ib..BLOCK * ib + BLOCK];
        let weight: &[f32; BLOCK] = weights[BLOCK * ib..BLOCK * ib + BLOCK]
            .try_into()
            .unwrap_or(&[0.0; BLOCK]);
        let mut max = xb[0].abs();
        for i in 1..BLOCK {
            max = c_max(max, xb[i].abs());
        }
        if max < GROUP_MAX_EPS_IQ1_M {
            scales[ib] = 0.0;
            shifts[ib] = 0;
            l = [1; BLOCK];
            continue;
        }
        let idx: [usize; BLOCK] = sorted_order(xb);
        let best_score = -f32::MAX;
        let mut scale = max;
        let mut besti1 = -1i32;
        let mut besti2 = -1i32;
        let mut best_k = -1i32;
        {
            // Prefix sums per half of the sub-block (each half has its own shift).
            let mut px = [[0.0f32; BLOCK + 1]; 2];
            let mut pw = [[0.0f32; BLOCK + 1]; 2];
            // The running sums in registers, each step a select (the half is random: a branch
            // would mispredict).
            let (mut sx, mut sw) = ([0.0f32; 2], [0.0f32; 2]);
            for j in 0..BLOCK {
                let i = idx[j];
                let lo = i < BLOCK / 2;
                let (a, w) = (weight[i] * xb[i], weight[i]);
                sx = if lo {
                    [sx[0] + a, sx[1]]
                } else {
                    [sx[0], sx[1] + a]
                };
                sw = if lo {
                    [sw[0] + w, sw[1]]
                } else {
                    [sw[0], sw[1] + w]
                };
                for h in 0..2 {
                    px[h][j + 1] = sx[h];
                    pw[h][j + 1] = sw[h];
                }
            }
            let txs = [px[0][BLOCK], px[1][BLOCK]];
            let tws = [pw[0][BLOCK], pw[1][BLOCK]];
            let p2 = x_p[2];
            let m2 = x_m[2];
            let cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1];
            let cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2];
            let cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1];
            let cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2];
            let c = Coefficients {
                txs,
                tws,
                p2,
                m2,
                cp1,
                cp2,
                cm1,
                cm2,
            };
            let mut best = Best {
                score: best_score,
                scale,
                i1: besti1,
                i2: besti2,
                k: best_k,
            };
            match lanes {
                None => search_boundaries(&px, &pw, &c, &mut best),
                Some(lanes) => search_boundaries_lanes(lanes, &px, &pw, &c, &mut best),
            }
            (scale, besti1, besti2, best_k) = (best.scale, best.i1, best.i2, best.k);
        }
        if besti1 < 0 || besti2 < 0 || best_k < 0 {
            scales[ib] = 0.0;
            shifts[ib] = 0;
            l = [1; BLOCK];
            continue;
        }
        let (b1, b2) = (besti1 as usize, besti2 as usize);
        for j in 0..b1 {
            l[idx[j]] = 0;
        }
        for j in b1..b2 {
            l[idx[j]] = 1;
        }
        for j in b2..BLOCK {
            l[idx[j]] = 2;
        }
        let mut best_k = best_k as usize;
        if scale < 0.0 {
            for v in &mut l {
                *v = 2 - *v;
            }
            scale = -scale;
            best_k = 3 - best_k;
        }
        let mut all_on_grid = true;
        for k in 0..BLOCK / 8 {
            let xx = xx_of(best_k, k);
            let u = pack(&l[8 * k..]);
            index[k] = match lat.lookup(u) {
                Lookup::On(g) => g,
                Lookup::Off(nb) => {
                    all_on_grid = false;
                    lat.best_neighbour_iq1(
                        lanes,
                        nb,
                        &xb[8 * k..],
                        &weight[8 * k..],
                        scale,
                        &xx,
                        &mut l[8 * k..8 * k + 8],
                    )
                    .ok_or(Abort)?
                }
            };
        }
        if !all_on_grid {
            let mut sumqx_f = 0.0f32;
            let mut sumq2_f = 0.0f32;
            for k in 0..BLOCK / 8 {
                let xx = xx_of(best_k, k);
                let pg = &lat.grid[index[k]];
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[((pg[j] - 1) / 2) as usize];
                    sumqx_f += w * q * xb[8 * k + j];
                    sumq2_f += w * q * q;
                }
            }
            if sumqx_f > 0.0 && sumq2_f > 0.0 {
                scale = sumqx_f / sumq2_f;
            }
        }
        y.qs[2 * ib] = (index[0] & 255) as u8;
        y.qs[2 * ib + 1] = (index[1] & 255) as u8;
        y.qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        // ggml's GGML_ASSERT(scale >= 0).
        if scale.is_nan() || scale < 0.0 {
            return Err(Abort);
        }
        scales[ib] = scale;
        shifts[ib] = best_k;
        max_scale = c_max(max_scale, scale);
    }

    if max_scale == 0.0 {
        return Ok(());
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let mut sumqx_f = 0.0f32;
    let mut sumq2_f = 0.0f32;
    for ib in 0..QK_K / BLOCK {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        y.qh[ib] |= MASKS[shifts[ib]];
        let xb = &xbl[BLOCK * ib..BLOCK * ib + BLOCK];
        let weight = &weights[BLOCK * ib..BLOCK * ib + BLOCK];
        for k in 0..BLOCK / 8 {
            let xx = xx_of(shifts[ib], k);
            let g = y.qs[2 * ib + k] as usize + (((y.qh[ib] as usize) << (8 - 4 * k)) & 0x700);
            let pg = &lat.grid[g];
            for j in 0..8 {
                let w = weight[8 * k + j];
                let q = xx[((pg[j] - 1) / 2) as usize] * (2 * l + 1) as f32;
                sumqx_f += w * q * xb[8 * k + j];
                sumq2_f += w * q * q;
            }
        }
    }
    if sumq2_f > 0.0 {
        d = sumqx_f / sumq2_f;
    }
    put_scale_bits(&mut sc, Half::from_f32(d * 1.1125).bits());
    y.set_sc(sc);
    Ok(())
}

/// The constants of the boundary search's sums.
struct Coefficients {
    txs: [f32; 2],
    tws: [f32; 2],
    p2: f32,
    m2: f32,
    cp1: f32,
    cp2: f32,
    cm1: f32,
    cm2: f32,
}

/// The best fit so far of the boundary search.
struct Best {
    score: f32,
    scale: f32,
    i1: i32,
    i2: i32,
    k: i32,
}

impl Coefficients {
    /// The four candidates' `(sumqx, sumq2)` at boundaries `i1`, `i2` (the two halves' shifts
    /// `++`, `+-`, `-+`, `--`), from the prefix sums `px[h][i]`, `pw[h][i]` (`x1`, `w1` at
    /// `i1`; `x2`, `w2` at `i2`), as ggml computes them.
    #[inline(always)]
    fn sums(&self, x1: [f32; 2], w1: [f32; 2], x2: [f32; 2], w2: [f32; 2]) -> [(f32, f32); 4] {
        let mut qx_p = [0.0f32; 2];
        let mut qx_m = [0.0f32; 2];
        let mut q2_p = [0.0f32; 2];
        let mut q2_m = [0.0f32; 2];
        for h in 0..2 {
            let sx = x1[h] + x2[h];
            qx_p[h] = self.txs[h] * self.p2 - sx;
            qx_m[h] = self.txs[h] * self.m2 - sx;
            q2_p[h] = self.tws[h] * self.p2 * self.p2 + w1[h] * self.cp1 + w2[h] * self.cp2;
            q2_m[h] = self.tws[h] * self.m2 * self.m2 + w1[h] * self.cm1 + w2[h] * self.cm2;
        }
        [
            (qx_p[0] + qx_p[1], q2_p[0] + q2_p[1]),
            (qx_p[0] + qx_m[1], q2_p[0] + q2_m[1]),
            (qx_m[0] + qx_p[1], q2_m[0] + q2_p[1]),
            (qx_m[0] + qx_m[1], q2_m[0] + q2_m[1]),
        ]
    }
}

impl Best {
    /// ggml's `if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2)` update.
    #[inline(always)]
    fn offer(&mut self, (sumqx, sumq2): (f32, f32), i1: usize, i2: usize, k: usize) {
        if sumq2 > 0.0 && sumqx * sumqx > self.score * sumq2 {
            self.scale = sumqx / sumq2;
            self.score = self.scale * sumqx;
            self.i1 = i1 as i32;
            self.i2 = i2 as i32;
            self.k = k as i32;
        }
    }
}

/// ggml's search of the boundaries `i1 <= i2` between the levels of the sorted weights, for
/// the four combinations of the halves' shifts.
fn search_boundaries(
    px: &[[f32; BLOCK + 1]; 2],
    pw: &[[f32; BLOCK + 1]; 2],
    c: &Coefficients,
    best: &mut Best,
) {
    for i1 in 0..=BLOCK {
        for i2 in i1..=BLOCK {
            let sums = c.sums(
                [px[0][i1], px[1][i1]],
                [pw[0][i1], pw[1][i1]],
                [px[0][i2], px[1][i2]],
                [pw[0][i2], pw[1][i2]],
            );
            for k in 0..4 {
                best.offer(sums[k], i1, i2, k);
            }
        }
    }
}

/// Candidates `i2` side by side in [`search_boundaries_lanes`] (with AVX-512, 16 measured
/// slower).
const N: usize = 8;
/// Room past `BLOCK + 1` in the padded prefix sums of [`search_boundaries_lanes`].
const PAD: usize = N;

/// [`search_boundaries`] with `N` consecutive candidates `i2` side by side: for each `i1`, the
/// four combinations' sums of `N` values of `i2` (each as ggml computes it, in ggml's order),
/// and one bit per candidate that passes the test against the best score so far. The first
/// passing candidate in ggml's order (`i2`, then the combination) is the next winner; after
/// it, only the later candidates are tested again, against the new score. Candidates that
/// fail are never offered, which changes nothing: a failed test leaves the best as it was.
#[inline(always)]
fn search_boundaries_lanes(
    lanes: Lanes,
    px: &[[f32; BLOCK + 1]; 2],
    pw: &[[f32; BLOCK + 1]; 2],
    c: &Coefficients,
    best: &mut Best,
) {
    // Padded so that every chunk reads whole arrays; lanes past BLOCK are never offered.
    let mut ppx = [[0.0f32; BLOCK + 1 + PAD]; 2];
    let mut ppw = [[0.0f32; BLOCK + 1 + PAD]; 2];
    for h in 0..2 {
        ppx[h][..BLOCK + 1].copy_from_slice(&px[h]);
        ppw[h][..BLOCK + 1].copy_from_slice(&pw[h]);
    }
    // The products of `Coefficients::sums` that do not depend on the boundaries.
    let tp: [f32; 2] = std::array::from_fn(|h| c.txs[h] * c.p2);
    let tm: [f32; 2] = std::array::from_fn(|h| c.txs[h] * c.m2);
    let wp: [f32; 2] = std::array::from_fn(|h| c.tws[h] * c.p2 * c.p2);
    let wm: [f32; 2] = std::array::from_fn(|h| c.tws[h] * c.m2 * c.m2);
    for i1 in 0..=BLOCK {
        let x1 = [px[0][i1], px[1][i1]];
        // `tws*v2*v2 + pw[i1]*c1`, the first two terms of ggml's `q2` sums.
        let bp: [f32; 2] = std::array::from_fn(|h| wp[h] + pw[h][i1] * c.cp1);
        let bm: [f32; 2] = std::array::from_fn(|h| wm[h] + pw[h][i1] * c.cm1);
        let mut i2 = i1;
        while i2 <= BLOCK {
            // Lanes past `BLOCK` are no candidates.
            let valid = ((1u32 << N.min(BLOCK + 1 - i2)) - 1) * 0x0101_0101;
            // The four combinations' sums, combination `k` at `N*k..N*k + N`.
            let mut qx = [0.0f32; 4 * N];
            let mut q2 = [0.0f32; 4 * N];
            let window = |a: &[f32; BLOCK + 1 + PAD]| -> [f32; N] {
                a[i2..i2 + N].try_into().unwrap_or([0.0; N])
            };
            let (x2a, x2b) = (window(&ppx[0]), window(&ppx[1]));
            let (w2a, w2b) = (window(&ppw[0]), window(&ppw[1]));
            for j in 0..N {
                let sxa = x1[0] + x2a[j];
                let sxb = x1[1] + x2b[j];
                let (qx_pa, qx_ma) = (tp[0] - sxa, tm[0] - sxa);
                let (qx_pb, qx_mb) = (tp[1] - sxb, tm[1] - sxb);
                let (q2_pa, q2_ma) = (bp[0] + w2a[j] * c.cp2, bm[0] + w2a[j] * c.cm2);
                let (q2_pb, q2_mb) = (bp[1] + w2b[j] * c.cp2, bm[1] + w2b[j] * c.cm2);
                qx[j] = qx_pa + qx_pb;
                qx[N + j] = qx_pa + qx_mb;
                qx[2 * N + j] = qx_ma + qx_pb;
                qx[3 * N + j] = qx_ma + qx_mb;
                q2[j] = q2_pa + q2_pb;
                q2[N + j] = q2_pa + q2_mb;
                q2[2 * N + j] = q2_ma + q2_pb;
                q2[3 * N + j] = q2_ma + q2_mb;
            }
            // The window's last winner, if any candidate beats the best score so far.
            if let Some((c, scale, score)) = window_winner(lanes, &qx, &q2, valid, best.score) {
                *best = Best {
                    score,
                    scale,
                    i1: i1 as i32,
                    i2: (i2 + c % N) as i32,
                    k: (c / N) as i32,
                };
            }
            i2 += N;
        }
    }
}

/// The last winner of one window of [`search_boundaries_lanes`] against the best score
/// `start`, in ggml's order (`i2`, then the combination): the candidate `N*k + j` with its
/// scale and score, or `None` when no candidate passes. `qx`, `q2`: the candidates' `sumqx`,
/// `sumq2`; `valid`: one bit per candidate (`N*k + j`) that may be offered.
#[inline(always)]
fn window_winner(
    lanes: Lanes,
    qx: &[f32; 4 * N],
    q2: &[f32; 4 * N],
    valid: u32,
    start: f32,
) -> Option<(usize, f32, f32)> {
    let pass = |score: f32| pass_bits(lanes, qx, q2, score);
    let mut mask = pass(start) & valid;
    if mask == 0 {
        return None;
    }
    // Each candidate's scale and score as `Best::offer` would compute them, and its
    // `sumqx*sumqx`, side by side, so that the chain of winners below waits on no
    // division.
    let mut scale = [0.0f32; 4 * N];
    let mut score = [0.0f32; 4 * N];
    let mut qx2 = [0.0f32; 4 * N];
    for c in 0..4 * N {
        scale[c] = qx[c] / q2[c];
        score[c] = scale[c] * qx[c];
        qx2[c] = qx[c] * qx[c];
    }
    let winner = match chain_of_winners(&qx2, q2, &score, mask, start) {
        Chain::Winner(c) => Some(c),
        Chain::Unchanged => None,
        Chain::Fell => {
            // A winner's score fell below the score that the mask was tested
            // against (a rounding of its division): a candidate outside the mask might
            // pass against it, so the chain runs again, each step testing every later
            // candidate against the new score.
            let mut winner = None;
            while mask != 0 {
                // The first in ggml's order (least `j`, then least `k`) is the next
                // winner.
                let any = mask | mask >> 8 | mask >> 16 | mask >> 24;
                let j = (any & 0xff).trailing_zeros() as usize;
                let k = ((mask >> j) & 0x0101_0101).trailing_zeros() as usize / 8;
                winner = Some(N * k + j);
                // Only the candidates after it are left (a later `i2`, or the same
                // one and a later combination).
                let later_i2 = ((0xffu32 << (j + 1)) & 0xff) * 0x0101_0101;
                let same_i2 = ((1u32 << j) * 0x0101_0101) & (u64::MAX << (8 * (k + 1))) as u32;
                mask = pass(score[N * k + j]) & valid & (later_i2 | same_i2);
            }
            winner
        }
    };
    winner.map(|c| (c, scale[c], score[c]))
}

/// What [`chain_of_winners`] found.
enum Chain {
    /// The last winner, candidate `N*k + j`.
    Winner(usize),
    /// No candidate passed.
    Unchanged,
    /// A winner's score fell below the starting score: the chain must be run again, testing
    /// the candidates outside the mask too.
    Fell,
}

/// Bit `4*j + k` set for each bit `N*k + j` of a byte `k` of a mask: the candidates in ggml's
/// order (`i2`, then the combination).
const SPREAD: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            if b & (1 << j) != 0 {
                t[b] |= 1 << (4 * j);
            }
            j += 1;
        }
        b += 1;
    }
    t
};

/// The chain of winners of one window of [`search_boundaries_lanes`]: `mask` (bit `N*k + j`)
/// holds the candidates that pass against `start` (ggml's test, `q2 > 0` included); each is
/// tested again in ggml's order against the score of the last winner, as ggml's loop would.
///
/// The candidates outside the mask need no test while the score stays at or above `start`:
/// they failed `qx2 > start*q2` with `q2 > 0`, and a rounded product only grows with its
/// factor. A winner's score is `(qx/q2)*qx` rounded twice, which could fall just below
/// `start`; then this gives [`Chain::Fell`] and the caller runs the full chain. The test of
/// the candidates in the mask waits only on the last score: a multiply, a compare and a
/// select per candidate.
#[inline(always)]
fn chain_of_winners(
    qx2: &[f32; 4 * N],
    q2: &[f32; 4 * N],
    score: &[f32; 4 * N],
    mask: u32,
    start: f32,
) -> Chain {
    const { assert!(N == 8) };
    let mut order = in_ggml_order(mask);
    let mut s = start;
    let mut winner = usize::MAX;
    // Whether every score the candidates were tested against was at or above `start`.
    let mut held = true;
    // Only `s` goes from one candidate to the next: a multiply, a compare and a select.
    while order != 0 {
        let b = order.trailing_zeros();
        order &= order - 1;
        let c = ORDER_TO_CANDIDATE[b as usize];
        let pass = qx2[c] > s * q2[c];
        // Passing or not is a coin toss: a branch would mispredict.
        s = std::hint::select_unpredictable(pass, score[c], s);
        winner = std::hint::select_unpredictable(pass, c, winner);
        held &= s >= start;
    }
    match (held, winner) {
        (false, _) => Chain::Fell,
        (true, usize::MAX) => Chain::Unchanged,
        (true, c) => Chain::Winner(c),
    }
}

/// A mask of candidates (bit `N*k + j`) with bit `4*j + k` for each: in ggml's order.
#[inline(always)]
fn in_ggml_order(mask: u32) -> u32 {
    SPREAD[(mask & 0xff) as usize]
        | SPREAD[((mask >> 8) & 0xff) as usize] << 1
        | SPREAD[((mask >> 16) & 0xff) as usize] << 2
        | SPREAD[(mask >> 24) as usize] << 3
}

/// The candidate `N*k + j` at bit `4*j + k` of [`chain_of_winners`]'s order.
const ORDER_TO_CANDIDATE: [usize; 4 * N] = {
    let mut t = [0usize; 4 * N];
    let mut b = 0;
    while b < 4 * N {
        t[b] = N * (b % 4) + b / 4;
        b += 1;
    }
    t
};

impl BlockFormat for Iq1M {
    const TYPE: GgmlType = GgmlType::IQ1_M;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq1M>();

    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        for_each_superblock(src, dst, imatrix, |x, y, qw| {
            quantize_block(lanes, x, y, qw)
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq1M>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let sc = b.sc();
            let d = Half(b.scale_bits().to_le_bytes()).to_f32();
            for ib in 0..QK_K / 32 {
                let s = sc[ib / 2];
                let dl1 = d * (2 * ((s >> (6 * (ib % 2))) & 0x7) + 1) as f32;
                let dl2 = d * (2 * ((s >> (6 * (ib % 2) + 3)) & 0x7) + 1) as f32;
                let qs = &b.qs[4 * ib..4 * ib + 4];
                let qh = &b.qh[2 * ib..2 * ib + 2];
                let idx = [
                    qs[0] as usize | (((qh[0] as usize) << 8) & 0x700),
                    qs[1] as usize | (((qh[0] as usize) << 4) & 0x700),
                    qs[2] as usize | (((qh[1] as usize) << 8) & 0x700),
                    qs[3] as usize | (((qh[1] as usize) << 4) & 0x700),
                ];
                let delta = [
                    if qh[0] & 0x08 != 0 {
                        -IQ1S_DELTA
                    } else {
                        IQ1S_DELTA
                    },
                    if qh[0] & 0x80 != 0 {
                        -IQ1S_DELTA
                    } else {
                        IQ1S_DELTA
                    },
                    if qh[1] & 0x08 != 0 {
                        -IQ1S_DELTA
                    } else {
                        IQ1S_DELTA
                    },
                    if qh[1] & 0x80 != 0 {
                        -IQ1S_DELTA
                    } else {
                        IQ1S_DELTA
                    },
                ];
                for l in 0..4 {
                    let dl = if l < 2 { dl1 } else { dl2 };
                    let grid = IQ1S_GRID[idx[l]].to_le_bytes();
                    let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    for j in 0..8 {
                        out[j] = dl * (grid[j] as i8 as f32 + delta[l]);
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIq1M>(row)
            .iter()
            .position(|b| crate::fp::f16_is_non_finite(b.scale_bits()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's loop over one window: every valid candidate offered in ggml's order.
    fn reference(
        qx: &[f32; 4 * N],
        q2: &[f32; 4 * N],
        valid: u32,
        start: f32,
    ) -> Option<(usize, f32, f32)> {
        let mut best = Best {
            score: start,
            scale: 0.0,
            i1: -1,
            i2: -1,
            k: -1,
        };
        for j in 0..N {
            for k in 0..4 {
                let c = N * k + j;
                if valid >> c & 1 == 1 {
                    best.offer((qx[c], q2[c]), c, 0, 0);
                }
            }
        }
        (best.i1 >= 0).then_some((best.i1 as usize, best.scale, best.score))
    }

    /// The windowed chain of winners finds ggml's last winner on near-ties (candidates a few
    /// ulps apart, the start score a few ulps from theirs), where a winner's score does fall
    /// below the start and the full chain must run again (checked to happen).
    #[test]
    fn window_winner_is_ggmls_on_near_ties() {
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let nudge =
            |v: f32, r: u64| f32::from_bits((v.to_bits() as i64 + (r % 7) as i64 - 3) as u32);
        // Every SIMD level of this CPU (none at scalar: that runs `search_boundaries`).
        let levels: Vec<Lanes> = crate::Simd::available()
            .into_iter()
            .filter_map(Lanes::of)
            .collect();
        let mut fell = 0;
        for trial in 0..20_000 {
            let unit = |r: u64| (r >> 40) as f32 / (1u64 << 24) as f32;
            let (mut bx, mut bq) = (unit(next()) * 4.0 - 2.0, unit(next()) * 2.0 + 0.25);
            let mut start = nudge((bx / bq) * bx, next());
            if trial % 2 == 0 {
                // A candidate that passes against `start` with a score just below it.
                loop {
                    let (x, q) = (unit(next()) * 4.0 - 2.0, unit(next()) * 2.0 + 0.25);
                    let score = (x / q) * x;
                    let above = f32::from_bits(score.to_bits() + 1);
                    if score > 0.0 && x * x > above * q {
                        (bx, bq, start) = (x, q, above);
                        break;
                    }
                }
            }
            let mut qx: [f32; 4 * N] = std::array::from_fn(|_| nudge(bx, next()));
            let mut q2: [f32; 4 * N] = std::array::from_fn(|_| nudge(bq, next()));
            if trial % 2 == 0 {
                // Exactly that candidate somewhere (the others a few ulps from it).
                let c = (next() % 32) as usize;
                (qx[c], q2[c]) = (bx, bq);
            }
            if trial % 4 == 0 {
                // Only that candidate passes against `start`, and a later one (in ggml's
                // order) only against the lower score of the first: found by the full chain.
                let below = (bx / bq) * bx;
                let (x, q) = loop {
                    let q = unit(next()) * 2.0 + 0.25;
                    let x = nudge((start * q).sqrt(), next());
                    if x * x > below * q && x * x <= start * q {
                        break (x, q);
                    }
                };
                let first = (next() % 31) as usize;
                let later = first + 1 + (next() % (31 - first as u64)) as usize;
                qx = [0.0; 4 * N];
                (qx[ORDER_TO_CANDIDATE[first]], q2[ORDER_TO_CANDIDATE[first]]) = (bx, bq);
                (qx[ORDER_TO_CANDIDATE[later]], q2[ORDER_TO_CANDIDATE[later]]) = (x, q);
                let want = Some((ORDER_TO_CANDIDATE[later], x / q, (x / q) * x));
                for &lanes in &levels {
                    let got = window_winner(lanes, &qx, &q2, u32::MAX, start);
                    assert_eq!(got, want, "trial {trial} at {lanes:?}");
                }
            }
            if trial % 5 == 1 {
                q2[(next() % 32) as usize] = 0.0;
            }
            if trial % 11 == 1 {
                start = -f32::MAX;
            }
            let valid = if trial % 3 == 0 && trial % 4 != 0 {
                (next() as u32) | 1
            } else {
                u32::MAX
            };
            let want = reference(&qx, &q2, valid, start);
            for &lanes in &levels {
                let got = window_winner(lanes, &qx, &q2, valid, start);
                assert_eq!(
                    got.map(|(c, a, b)| (c, a.to_bits(), b.to_bits())),
                    want.map(|(c, a, b)| (c, a.to_bits(), b.to_bits())),
                    "trial {trial} at {lanes:?}"
                );
            }
            // How often the fast chain gives up, on this window's mask.
            let mask = (0..4 * N).fold(0u32, |m, c| {
                let pass = q2[c] > 0.0 && qx[c] * qx[c] > start * q2[c];
                m | (u32::from(pass) << c)
            }) & valid;
            let score: [f32; 4 * N] = std::array::from_fn(|c| (qx[c] / q2[c]) * qx[c]);
            let qx2: [f32; 4 * N] = std::array::from_fn(|c| qx[c] * qx[c]);
            if matches!(
                chain_of_winners(&qx2, &q2, &score, mask, start),
                Chain::Fell
            ) {
                fell += 1;
            }
        }
        assert!(fell > 0, "no window fell below its start score");
    }
}
