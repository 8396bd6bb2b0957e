//! The 3-bit lattice shared by IQ3_XXS and IQ3_S: ggml's grid tables (`iq3xxs_grid`,
//! `iq3s_grid`, data files extracted from ggml-common.h by `kiln-fixtures iq-grids`), the sign
//! table, and the search structures ggml's `iq3xs_init_impl` builds from the grids (the map
//! from a point of the full 8^4 lattice to its grid index, and for points off the grid the list
//! of nearest grid points), plus the sub-block search both formats run.
//!
//! A grid point is four levels 0..7. The dequantization tables store each level as a byte:
//! IQ3_XXS as 4, 12, 20, .., 52, 62 (`level = byte / 8`), IQ3_S as 1, 3, .., 15
//! (`level = byte / 2`). The search works on `2*level + 1` (ggml's `the_grid`).

use super::lattice::nearest_neighbour;
use crate::kquants::search::nearest_int;
use crate::simd::iq::{grid_nearest, Lanes, CODES_PAD};
use std::sync::OnceLock;

const fn entries<const N: usize>(bytes: &[u8]) -> [[u8; 4]; N] {
    assert!(bytes.len() == 4 * N);
    let mut out = [[0u8; 4]; N];
    let mut k = 0;
    while k < N {
        out[k] = [
            bytes[4 * k],
            bytes[4 * k + 1],
            bytes[4 * k + 2],
            bytes[4 * k + 3],
        ];
        k += 1;
    }
    out
}

/// IQ3_XXS's 256 grid points as the dequantizer multiplies them (ggml's `iq3xxs_grid`, the
/// bytes of each little-endian u32).
pub static IQ3XXS_GRID: [[u8; 4]; 256] = entries(include_bytes!("grids/iq3xxs_grid.bin"));

/// IQ3_S's 512 grid points (ggml's `iq3s_grid`).
pub static IQ3S_GRID: [[u8; 4]; 512] = entries(include_bytes!("grids/iq3s_grid.bin"));

/// ggml's `ksigns_iq2xs`: 7 sign bits and an eighth that makes the number of minus signs even.
pub const KSIGNS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = i as u8 | (((i as u32).count_ones() & 1) << 7) as u8;
        i += 1;
    }
    t
};

/// Size of the full lattice: four coordinates of 3 bits.
const KMAP_SIZE: usize = 4096;

/// The search structures of one grid, as `iq3xs_init_impl` builds them.
pub struct Lattice {
    /// Grid points as `2*level + 1` (ggml's `the_grid`).
    pub grid: Vec<[i8; 4]>,
    /// For each lattice point `u` (levels packed 3 bits each): its grid index when on the grid,
    /// otherwise `-(offset + 1)` into `neighbours`.
    map: Vec<i32>,
    /// For each off-grid point: a count `n`, then `n` grid indices (the nearest points, up to
    /// `nwant` distinct distances, sorted by distance and then index).
    neighbours: Vec<u16>,
    /// Beside each entry of `neighbours`, that grid point's lattice point (its levels packed 3
    /// bits each), for the SIMD searches.
    codes: Vec<u16>,
}

/// The nearest grid points of an off-grid lattice point: grid indices, nearest first, and
/// beside each its packed levels.
#[derive(Clone, Copy)]
struct Neighbours<'a> {
    index: &'a [u16],
    /// Each one's code, followed by [`CODES_PAD`] more entries, so that SIMD loads of whole
    /// vectors stay inside.
    codes: &'a [u16],
}

/// Level values `2*l + 1`, indexed by `k & 7`.
const LEVELS: [f32; 16] = [
    1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0,
];

impl Lattice {
    fn build(levels: &[[u8; 4]], nwant: usize) -> Lattice {
        let grid: Vec<[i8; 4]> = levels.iter().map(|p| p.map(|l| 2 * l as i8 + 1)).collect();
        let mut map = vec![-1i32; KMAP_SIZE];
        for (i, p) in levels.iter().enumerate() {
            let mut index = 0usize;
            for k in 0..4 {
                index |= (p[k] as usize) << (3 * k);
            }
            map[index] = i as i32;
        }
        let mut neighbours = Vec::new();
        let mut dist2: Vec<(i32, usize)> = Vec::with_capacity(grid.len());
        for i in 0..KMAP_SIZE {
            if map[i] >= 0 {
                continue;
            }
            let pos: [i32; 4] = std::array::from_fn(|k| 2 * ((i >> (3 * k)) & 7) as i32 + 1);
            dist2.clear();
            for (j, pg) in grid.iter().enumerate() {
                let mut d2 = 0;
                for k in 0..4 {
                    let d = pg[k] as i32 - pos[k];
                    d2 += d * d;
                }
                dist2.push((d2, j));
            }
            // ggml's qsort compares (distance, index): a total order, so any sort agrees.
            dist2.sort_unstable();
            let offset = neighbours.len();
            map[i] = -(offset as i32 + 1);
            neighbours.push(0u16);
            let mut d2 = dist2[0].0;
            let mut nhave = 1;
            for &(d, j) in &dist2 {
                if d > d2 {
                    if nhave == nwant {
                        break;
                    }
                    d2 = d;
                    nhave += 1;
                }
                neighbours.push(j as u16);
            }
            neighbours[offset] = (neighbours.len() - offset - 1) as u16;
        }
        // Each point's lattice point beside its entry (count slots hold no point).
        let mut codes = vec![0u16; neighbours.len() + CODES_PAD];
        let mut k = 0;
        while k < neighbours.len() {
            let n = neighbours[k] as usize;
            for e in k + 1..k + 1 + n {
                let p = &levels[neighbours[e] as usize];
                codes[e] =
                    p[0] as u16 | (p[1] as u16) << 3 | (p[2] as u16) << 6 | (p[3] as u16) << 9;
            }
            k += n + 1;
        }
        Lattice {
            grid,
            map,
            neighbours,
            codes,
        }
    }

    /// The grid index of lattice point `u`, or the list of its nearest grid points.
    #[inline]
    fn lookup(&self, u: usize) -> Result<usize, Neighbours<'_>> {
        let m = self.map[u];
        if m >= 0 {
            Ok(m as usize)
        } else {
            let offset = (-m - 1) as usize;
            let n = self.neighbours[offset] as usize;
            let at = offset + 1..offset + 1 + n;
            Err(Neighbours {
                index: &self.neighbours[at.clone()],
                codes: &self.codes[at.start..at.end + CODES_PAD],
            })
        }
    }

    /// The levels (0..7) of grid point `index`.
    #[inline]
    fn levels(&self, index: usize) -> [u8; 4] {
        self.grid[index].map(|q| ((q - 1) / 2) as u8)
    }
}

/// IQ3_XXS's lattice (`iq3xs_init_impl(256)`), built at first use.
pub fn iq3xxs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&IQ3XXS_GRID.map(|p| p.map(|b| b / 8)), 2))
}

/// IQ3_S's lattice (`iq3xs_init_impl(512)`), built at first use.
pub fn iq3s_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::build(&IQ3S_GRID.map(|p| p.map(|b| b / 2)), 3))
}

/// ggml's `iq3_find_best_neighbour`: the neighbour with the least weighted error at `scale`;
/// writes its levels into `l`. `None` where ggml would abort (every error NaN or infinite,
/// which only overflowing weights cause). With `lanes`, the search runs in SIMD lanes (same
/// answer).
#[inline]
fn find_best_neighbour(
    lanes: Option<Lanes>,
    lat: &Lattice,
    neighbours: Neighbours<'_>,
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    l: &mut [u8],
) -> Option<usize> {
    let g = match lanes {
        None => nearest_neighbour(&lat.grid, neighbours.index, xval, weight, scale)?,
        Some(lanes) => {
            let p = grid_nearest::<4, 3>(
                lanes,
                &LEVELS,
                neighbours.index.len(),
                neighbours.codes,
                xval,
                weight,
                scale,
            )?;
            neighbours.index[p] as usize
        }
    };
    l[..4].copy_from_slice(&lat.levels(g));
    Some(g)
}

/// How the two formats' sub-block searches differ.
pub(crate) struct SearchParams {
    /// Trial scales `is = -n..=n`.
    pub trials: i32,
    /// Whether sub-blocks count as on the grid before any trial wins (IQ3_XXS: yes).
    pub on_grid_at_start: bool,
    /// Whether the final pass re-derives every group (IQ3_S) or only off-grid ones (IQ3_XXS).
    pub refine_all: bool,
}

/// The search of one 32-weight sub-block in ggml's `quantize_row_iq3_xxs_impl` and
/// `quantize_row_iq3_s_impl`: 2*trials+1 trial scales, each group of 4 snapped to the grid
/// (or its best neighbour), the best weighted fit kept, then the off-grid groups re-derived at
/// the winning scale. `xval` are the magnitudes, `max` their largest; returns the scale and the
/// 8 grid indices, or `None` where ggml would abort (overflowing weights).
pub(crate) fn search_sub_block(
    lanes: Option<Lanes>,
    lat: &Lattice,
    p: &SearchParams,
    xval: &[f32; 32],
    weight: &[f32; 32],
    waux: &[f32; 32],
    max: f32,
) -> Option<(f32, [usize; 8])> {
    const KMAXQ: i32 = 8;
    let mut l = [0u8; 32];
    let mut laux = [0u8; 32];
    let mut best = 0.0f32;
    let mut scale = max / (2 * KMAXQ - 1) as f32;
    let mut on_grid = [p.on_grid_at_start; 8];
    let mut on_grid_aux = [false; 8];
    let snap = |id: f32, x: f32| nearest_int(0.5 * (id * x - 1.0)).clamp(0, KMAXQ - 1) as u8;
    let pack = |l: &[u8]| {
        (l[0] as usize) | (l[1] as usize) << 3 | (l[2] as usize) << 6 | (l[3] as usize) << 9
    };
    for is in -p.trials..=p.trials {
        let id = ((2 * KMAXQ - 1) as f32 + is as f32 * 0.2) / max;
        let this_scale = 1.0 / id;
        for k in 0..8 {
            for i in 0..4 {
                laux[4 * k + i] = snap(id, xval[4 * k + i]);
            }
            on_grid_aux[k] = true;
            if let Err(nb) = lat.lookup(pack(&laux[4 * k..])) {
                on_grid_aux[k] = false;
                find_best_neighbour(
                    lanes,
                    lat,
                    nb,
                    &xval[4 * k..],
                    &waux[4 * k..],
                    this_scale,
                    &mut laux[4 * k..],
                )?;
            }
        }
        let (sumqx, sumq2) = fit(weight, xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l = laux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid.iter().any(|&g| !g) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..8 {
            if !p.refine_all && on_grid[k] {
                continue;
            }
            let mut u = [0u8; 4];
            for i in 0..4 {
                u[i] = snap(id, xval[4 * k + i]);
            }
            let g = match lat.lookup(pack(&u)) {
                Ok(g) => g,
                Err(nb) => find_best_neighbour(
                    lanes,
                    lat,
                    nb,
                    &xval[4 * k..],
                    &waux[4 * k..],
                    scale,
                    &mut l[4 * k..],
                )?,
            };
            l[4 * k..4 * k + 4].copy_from_slice(&lat.levels(g));
        }
        let (sumqx, sumq2) = fit(weight, xval, &l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    let mut indices = [0usize; 8];
    for k in 0..8 {
        // Every group is on the grid by now; ggml aborts otherwise.
        indices[k] = lat.lookup(pack(&l[4 * k..])).ok()?;
    }
    Some((scale, indices))
}

/// The weighted sums of a fit of levels `l` to `xval`, in ggml's order.
#[inline]
fn fit(weight: &[f32; 32], xval: &[f32; 32], l: &[u8; 32]) -> (f32, f32) {
    let mut sumqx = 0.0f32;
    let mut sumq2 = 0.0f32;
    for i in 0..32 {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// ggml's `MAX(a, b)` for floats: `a > b ? a : b`.
#[inline(always)]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_hold_distinct_points_of_eight_levels() {
        for (lat, n) in [(iq3xxs_lattice(), 256), (iq3s_lattice(), 512)] {
            assert_eq!(lat.grid.len(), n);
            let on = lat.map.iter().filter(|&&m| m >= 0).count();
            assert_eq!(on, n, "every grid point has its own lattice point");
            for u in 0..KMAP_SIZE {
                if let Err(nb) = lat.lookup(u) {
                    assert!(!nb.index.is_empty());
                    for (&j, &c) in nb.index.iter().zip(nb.codes) {
                        let p = lat.levels(j as usize);
                        let code = p[0] as u16
                            | (p[1] as u16) << 3
                            | (p[2] as u16) << 6
                            | (p[3] as u16) << 9;
                        assert_eq!(c, code);
                    }
                }
            }
        }
        assert_eq!(KSIGNS[1], 129);
        assert_eq!(KSIGNS[3], 3);
        assert_eq!(KSIGNS[127], 255);
    }
}
