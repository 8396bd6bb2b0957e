//! IQ1_S: 50 bytes per 256 weights (1.5625 bits per weight). Each group of 8 weights is a point
//! of a 2048-point ternary lattice (-1, 0, 1; 8 low bits in `qs`, 3 high bits in `qh`); each
//! 32-weight sub-block a 3-bit scale and the sign of a shift `delta` = ±0.125 (in `qh`); the
//! super-block an f16 `d`. Weight = `d * (2*scale + 1) * (grid + delta)`. ggml's
//! `quantize_row_iq1_s_impl`, which needs importance weights.

use super::iq2_xxs::NAN_HALF;
use super::lattice::{
    c_max, pack, sorted_order, sum_squares, Abort, Kind, Lattice, Lookup, IQ1S_GRID,
};
use crate::fp::Half;
use crate::kquants::search::nearest_int;
use crate::kquants::{for_each_superblock, QK_K};
use crate::simd::iq::{compiled_for, Lanes};
use crate::{as_blocks, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// ggml's `IQ1S_DELTA` (and `IQ1M_DELTA`).
pub(crate) const IQ1S_DELTA: f32 = 0.125;
/// ggml's `GROUP_MAX_EPS_IQ1_S`.
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
/// Weights per sub-block (`IQ1S_BLOCK_SIZE`).
const BLOCK: usize = 32;

/// The 1.56-bit ternary lattice i-quant.
pub struct Iq1S;

/// One IQ1_S super-block (ggml's `block_iq1_s`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq1S {
    /// Super-block scale.
    pub d: Half,
    /// The low 8 bits of each group's grid index.
    pub qs: [u8; QK_K / 8],
    /// Per 32 weights a little-endian `u16`: the 3 high bits of the four grid indices (bits
    /// 0..12), the 3-bit scale (bits 12..15) and the sign of the shift (bit 15).
    pub qh: [u8; QK_K / 16],
}
const _: () = assert!(size_of::<BlockIq1S>() == 50);

fn quantize_block(lanes: Option<Lanes>, xbl: &[f32], y: &mut BlockIq1S, qw: &[f32]) {
    let lat = Lattice::get(Kind::Iq1);
    if quantize_block_impl(lanes, lat, xbl, y, qw).is_err() {
        *y = bytemuck::Zeroable::zeroed();
        y.d = NAN_HALF;
    }
}

fn quantize_block_impl(
    lanes: Option<Lanes>,
    lat: &Lattice,
    xbl: &[f32],
    y: &mut BlockIq1S,
    quant_weights: &[f32],
) -> Result<(), Abort> {
    let x_p: [f32; 3] = [-1.0 + IQ1S_DELTA, IQ1S_DELTA, 1.0 + IQ1S_DELTA];
    let x_m: [f32; 3] = [-1.0 - IQ1S_DELTA, -IQ1S_DELTA, 1.0 - IQ1S_DELTA];
    let mut scales = [0.0f32; QK_K / BLOCK];
    let mut weight = [0.0f32; BLOCK];
    let mut l = [0i8; BLOCK];
    let mut sumx = [0.0f32; BLOCK + 1];
    let mut sumw = [0.0f32; BLOCK + 1];
    let mut index = [0usize; BLOCK / 8];
    let mut shifts = [0i8; QK_K / BLOCK];
    let mut qh = [0u16; QK_K / BLOCK];

    y.d = Half::from_f32(0.0);
    y.qs = [0; QK_K / 8];
    let mut max_scale = 0.0f32;
    let sigma2 = 2.0 * sum_squares(xbl) / QK_K as f32;

    for ib in 0..QK_K / BLOCK {
        let xb = &xbl[BLOCK * ib..BLOCK * ib + BLOCK];
        let qw = &quant_weights[BLOCK * ib..BLOCK * ib + BLOCK];
        for i in 0..BLOCK {
            weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
        }
        let mut max = xb[0].abs();
        for i in 1..BLOCK {
            max = c_max(max, xb[i].abs());
        }
        if max < GROUP_MAX_EPS_IQ1_S {
            scales[ib] = 0.0;
            shifts[ib] = 1;
            l = [1; BLOCK];
            continue;
        }
        // ggml's exhaustive search of the two boundaries that split the sorted weights into
        // the levels -1, 0, 1, over prefix sums in sorted order.
        let idx: [usize; BLOCK] = sorted_order(xb);
        sumx[0] = 0.0;
        sumw[0] = 0.0;
        for j in 0..BLOCK {
            let i = idx[j];
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let mut best = Best {
            score: -f32::MAX,
            scale: max,
            i1: -1,
            i2: -1,
            shift: 0,
        };
        match lanes {
            None => search_boundaries(&sumx, &sumw, &x_p, &x_m, &mut best),
            Some(lanes) => compiled_for(lanes, || {
                search_boundaries_chunked(&sumx, &sumw, &x_p, &x_m, &mut best)
            }),
        }
        let Best {
            mut scale,
            i1: besti1,
            i2: besti2,
            shift: mut best_shift,
            ..
        } = best;
        if besti1 < 0 || besti2 < 0 || best_shift == 0 {
            scales[ib] = 0.0;
            shifts[ib] = 1;
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
        if scale < 0.0 {
            for v in &mut l {
                *v = 2 - *v;
            }
            scale = -scale;
            best_shift = -best_shift;
        }
        let mut all_on_grid = true;
        let xx = if best_shift == 1 { &x_p } else { &x_m };
        for k in 0..BLOCK / 8 {
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
                        xx,
                        &mut l[8 * k..8 * k + 8],
                    )
                    .ok_or(Abort)?
                }
            };
        }
        if !all_on_grid {
            let mut sumqx = 0.0f32;
            let mut sumq2 = 0.0f32;
            for k in 0..BLOCK / 8 {
                let pg = &lat.grid[index[k]];
                for j in 0..8 {
                    let w = weight[8 * k + j];
                    let q = xx[((pg[j] - 1) / 2) as usize];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        let mut h = 0u16;
        for k in 0..BLOCK / 8 {
            y.qs[(BLOCK / 8) * ib + k] = (index[k] & 255) as u8;
            h |= ((index[k] >> 8) << (3 * k)) as u16;
        }
        qh[ib] = h;
        // ggml's GGML_ASSERT(scale >= 0).
        if scale.is_nan() || scale < 0.0 {
            return Err(Abort);
        }
        scales[ib] = scale;
        shifts[ib] = best_shift;
        max_scale = c_max(max_scale, scale);
    }

    if max_scale != 0.0 {
        let d = max_scale / 15.0;
        y.d = Half::from_f32(d * 1.125);
        let id = 1.0 / d;
        for ib in 0..QK_K / BLOCK {
            let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
            if shifts[ib] == -1 {
                l |= 8;
            }
            qh[ib] |= (l as u16) << 12;
        }
    }
    for (o, v) in y.qh.chunks_exact_mut(2).zip(qh) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// The best fit so far of the boundary search.
struct Best {
    score: f32,
    scale: f32,
    i1: i32,
    i2: i32,
    shift: i8,
}

impl Best {
    /// ggml's `if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2)` update.
    #[inline(always)]
    fn offer(&mut self, sumqx: f32, sumq2: f32, i1: usize, i2: usize, shift: i8) {
        if sumq2 > 0.0 && sumqx * sumqx > self.score * sumq2 {
            self.scale = sumqx / sumq2;
            self.score = self.scale * sumqx;
            self.i1 = i1 as i32;
            self.i2 = i2 as i32;
            self.shift = shift;
        }
    }
}

/// ggml's search of the two boundaries `i1 <= i2` that split the sorted weights into the
/// levels `xs[0]`, `xs[1]`, `xs[2]`, for both shifts, from prefix sums in sorted order.
fn search_boundaries(
    sumx: &[f32; BLOCK + 1],
    sumw: &[f32; BLOCK + 1],
    x_p: &[f32; 3],
    x_m: &[f32; 3],
    best: &mut Best,
) {
    for i1 in 0..=BLOCK {
        for i2 in i1..=BLOCK {
            for (xs, shift) in [(x_p, 1i8), (x_m, -1)] {
                let sumqx = (sumx[i1] - sumx[0]) * xs[0]
                    + (sumx[i2] - sumx[i1]) * xs[1]
                    + (sumx[BLOCK] - sumx[i2]) * xs[2];
                let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                    + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                    + (sumw[BLOCK] - sumw[i2]) * xs[2] * xs[2];
                best.offer(sumqx, sumq2, i1, i2, shift);
            }
        }
    }
}

/// Candidates `i2` side by side in [`search_boundaries_chunked`].
const CHUNK: usize = 8;

/// [`search_boundaries`] with the sums of `CHUNK` consecutive `i2` computed side by side (each
/// as ggml computes it) and tested in lanes against the best score at the start of the chunk:
/// the best changes only where a candidate passes that test, so a chunk where none passes
/// holds no winner, and the others are offered one by one in ggml's order.
#[inline(always)]
fn search_boundaries_chunked(
    sumx: &[f32; BLOCK + 1],
    sumw: &[f32; BLOCK + 1],
    x_p: &[f32; 3],
    x_m: &[f32; 3],
    best: &mut Best,
) {
    // Padded so that every chunk reads whole arrays; lanes past BLOCK are never offered.
    let mut px = [0.0f32; BLOCK + 1 + CHUNK];
    let mut pw = [0.0f32; BLOCK + 1 + CHUNK];
    px[..BLOCK + 1].copy_from_slice(sumx);
    pw[..BLOCK + 1].copy_from_slice(sumw);
    let xs = [x_p, x_m];
    let shifts = [1i8, -1];
    for i1 in 0..=BLOCK {
        let a: [f32; 2] = std::array::from_fn(|s| (sumx[i1] - sumx[0]) * xs[s][0]);
        let aw: [f32; 2] = std::array::from_fn(|s| (sumw[i1] - sumw[0]) * xs[s][0] * xs[s][0]);
        let mut i2 = i1;
        while i2 <= BLOCK {
            let mut qx = [[0.0f32; CHUNK]; 2];
            let mut q2 = [[0.0f32; CHUNK]; 2];
            let cx: &[f32; CHUNK] = px[i2..i2 + CHUNK].try_into().unwrap_or(&[0.0; CHUNK]);
            let cw: &[f32; CHUNK] = pw[i2..i2 + CHUNK].try_into().unwrap_or(&[0.0; CHUNK]);
            for s in 0..2 {
                let x = xs[s];
                for k in 0..CHUNK {
                    qx[s][k] = a[s] + (cx[k] - sumx[i1]) * x[1] + (sumx[BLOCK] - cx[k]) * x[2];
                    q2[s][k] = aw[s]
                        + (cw[k] - sumw[i1]) * x[1] * x[1]
                        + (sumw[BLOCK] - cw[k]) * x[2] * x[2];
                }
            }
            // Without short-circuits, so that the test runs in lanes.
            let score = best.score;
            let mut pass = 0u32;
            for s in 0..2 {
                for k in 0..CHUNK {
                    let p = (q2[s][k] > 0.0) & (qx[s][k] * qx[s][k] > score * q2[s][k]);
                    pass |= (p as u32) << k;
                }
            }
            if pass != 0 {
                for k in 0..CHUNK.min(BLOCK + 1 - i2) {
                    for s in 0..2 {
                        best.offer(qx[s][k], q2[s][k], i1, i2 + k, shifts[s]);
                    }
                }
            }
            i2 += CHUNK;
        }
    }
}

impl BlockFormat for Iq1S {
    const TYPE: GgmlType = GgmlType::IQ1_S;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIq1S>();
    const REQUIRES_IMATRIX: bool = true;
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        // ggml refuses to run without importance weights; the checked entry points refuse
        // first, so the unchecked call writes zero blocks.
        let Some(imatrix) = imatrix else {
            dst.fill(0);
            return;
        };
        for_each_superblock(src, dst, Some(imatrix), |x, y: &mut BlockIq1S, qw| {
            if let Some(qw) = qw {
                quantize_block(lanes, x, y, qw)
            }
        });
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIq1S>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            for ib in 0..QK_K / 32 {
                let qh = u16::from_le_bytes([b.qh[2 * ib], b.qh[2 * ib + 1]]);
                let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
                let delta = if qh & 0x8000 != 0 {
                    -IQ1S_DELTA
                } else {
                    IQ1S_DELTA
                };
                for l in 0..4 {
                    let g = b.qs[4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
                    let grid = IQ1S_GRID[g].to_le_bytes();
                    let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                    for j in 0..8 {
                        out[j] = dl * (grid[j] as i8 as f32 + delta);
                    }
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIq1S>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
