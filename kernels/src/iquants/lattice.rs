//! The lattice machinery shared by IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M: ggml's grid tables
//! (data files extracted from ggml's sources by `kiln-fixtures iq-grids`, never typed by hand)
//! and the index map and neighbour lists that ggml's `iq2xs_init_impl` builds from them, the
//! same lists built here on first use by a faster route ([`neighbour_lists`]).
//!
//! A grid point is 8 levels `l` in 0..=2, 2 bits each in a `u16` (the `kgrid_*` tables); the
//! quantizers work with the odd values `2*l + 1`. The dequantizers read the `*_grid` tables of
//! `ggml-common.h` instead: the same points as 8 bytes (IQ2: 0x08, 0x19, 0x2b; IQ1: -1, 0, 1).

use crate::kquants::search::nearest_int;
use crate::simd::iq::{grid_nearest, Lanes, CODES_PAD};
use std::sync::OnceLock;

/// Reads `N` little-endian `u64`s at compile time; the file must hold exactly that many.
const fn le_u64s<const N: usize>(b: &[u8]) -> [u64; N] {
    assert!(b.len() == N * 8, "grid file has the wrong size");
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        let mut v = 0u64;
        let mut k = 0;
        while k < 8 {
            v |= (b[8 * i + k] as u64) << (8 * k);
            k += 1;
        }
        out[i] = v;
        i += 1;
    }
    out
}

/// Reads `N` little-endian `u16`s at compile time; the file must hold exactly that many.
const fn le_u16s<const N: usize>(b: &[u8]) -> [u16; N] {
    assert!(b.len() == N * 2, "grid file has the wrong size");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < N {
        out[i] = b[2 * i] as u16 | (b[2 * i + 1] as u16) << 8;
        i += 1;
    }
    out
}

/// Reads `N` bytes at compile time; the file must hold exactly that many.
const fn bytes<const N: usize>(b: &[u8]) -> [u8; N] {
    assert!(b.len() == N, "table file has the wrong size");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = b[i];
        i += 1;
    }
    out
}

/// ggml-common.h's `iq2xxs_grid`: IQ2_XXS's 256 points, one byte per weight.
pub static IQ2XXS_GRID: [u64; 256] = le_u64s(include_bytes!("grids/iq2xxs_grid.bin"));
/// ggml-common.h's `iq2xs_grid`: IQ2_XS's 512 points.
pub static IQ2XS_GRID: [u64; 512] = le_u64s(include_bytes!("grids/iq2xs_grid.bin"));
/// ggml-common.h's `iq2s_grid`: IQ2_S's 1024 points.
pub static IQ2S_GRID: [u64; 1024] = le_u64s(include_bytes!("grids/iq2s_grid.bin"));
/// ggml-common.h's `iq1s_grid`: IQ1_S's and IQ1_M's 2048 points, one `i8` (-1, 0, 1) per weight.
pub static IQ1S_GRID: [u64; 2048] = le_u64s(include_bytes!("grids/iq1s_grid.bin"));
/// ggml-common.h's `ksigns_iq2xs`: 7 stored sign bits -> 8 sign bits (the 8th makes the parity
/// even).
pub static KSIGNS_IQ2XS: [u8; 128] = bytes(include_bytes!("grids/ksigns_iq2xs.bin"));
/// ggml-common.h's `kmask_iq2xs`: bit `j` selects weight `j`'s sign.
pub const KMASK_IQ2XS: [u8; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// `iq2xs_init_impl`'s `kgrid_2bit_256` (IQ2_XXS's search grid).
pub static KGRID_2BIT_256: [u16; 256] = le_u16s(include_bytes!("grids/kgrid_2bit_256.bin"));
/// `iq2xs_init_impl`'s `kgrid_2bit_512` (IQ2_XS).
pub static KGRID_2BIT_512: [u16; 512] = le_u16s(include_bytes!("grids/kgrid_2bit_512.bin"));
/// `iq2xs_init_impl`'s `kgrid_2bit_1024` (IQ2_S).
pub static KGRID_2BIT_1024: [u16; 1024] = le_u16s(include_bytes!("grids/kgrid_2bit_1024.bin"));
/// `iq2xs_init_impl`'s `kgrid_1bit_2048` (IQ1_S and IQ1_M).
pub static KGRID_1BIT_2048: [u16; 2048] = le_u16s(include_bytes!("grids/kgrid_1bit_2048.bin"));

/// Size of ggml's index map: every 8-digit base-4 index up to 0xAAAA (all levels 2), plus one.
const KMAP_SIZE: usize = 43692;

/// Which of ggml's four lattices (`iq2_data[gindex]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// IQ2_XXS: 256 points, 2 distance shells of neighbours.
    Iq2Xxs,
    /// IQ2_XS: 512 points, 2 shells.
    Iq2Xs,
    /// IQ2_S: 1024 points, 1 shell.
    Iq2S,
    /// IQ1_S and IQ1_M: 2048 points, 3 shells.
    Iq1,
}

impl Kind {
    fn packed(self) -> &'static [u16] {
        match self {
            Kind::Iq2Xxs => &KGRID_2BIT_256,
            Kind::Iq2Xs => &KGRID_2BIT_512,
            Kind::Iq2S => &KGRID_2BIT_1024,
            Kind::Iq1 => &KGRID_1BIT_2048,
        }
    }

    /// `nwant`: how many distinct distances of neighbours each off-grid point keeps.
    fn shells(self) -> usize {
        match self {
            Kind::Iq1 => 3,
            Kind::Iq2S => 1,
            Kind::Iq2Xxs | Kind::Iq2Xs => 2,
        }
    }
}

/// One lattice as `iq2xs_init_impl` builds it.
pub struct Lattice {
    /// `kgrid_q2xs`: each point's 8 values `2*l + 1`.
    pub grid: Vec<[i8; 8]>,
    /// `kmap_q2xs`: packed index -> grid index, or `-(offset + 1)` of its neighbour list.
    map: Vec<i32>,
    /// `kneighbors_q2xs`: per off-grid index, a count and then that many grid indices, nearest
    /// first (ties by grid index); see [`neighbour_lists`].
    neighbours: Vec<u16>,
    /// Beside each entry of `neighbours`, that grid point's packed levels (for the SIMD
    /// searches).
    codes: Vec<u16>,
}

/// The nearest grid points of an off-grid index: grid indices and, at the same positions,
/// their packed levels.
#[derive(Clone, Copy, Debug)]
pub struct Neighbours<'a> {
    /// Grid indices, nearest first.
    pub index: &'a [u16],
    /// Each one's packed levels (2 bits per weight, weight 0 lowest), followed by
    /// [`CODES_PAD`] more entries, so that SIMD loads of whole vectors stay inside.
    pub codes: &'a [u16],
}

/// Where a packed index lies.
pub enum Lookup<'a> {
    /// On the grid, at this index.
    On(usize),
    /// Off the grid; its nearest grid points, nearest first.
    Off(Neighbours<'a>),
}

/// Level values `2*l + 1` of the IQ2 grids, indexed by `k & 3` (3 is never a level).
const IQ2_LEVELS: [f32; 16] = [
    1.0, 3.0, 5.0, 0.0, 1.0, 3.0, 5.0, 0.0, 1.0, 3.0, 5.0, 0.0, 1.0, 3.0, 5.0, 0.0,
];

impl Lattice {
    fn build(kind: Kind) -> Lattice {
        let packed = kind.packed();
        let nwant = kind.shells();
        let grid: Vec<[i8; 8]> = packed
            .iter()
            .map(|&p| std::array::from_fn(|i| (2 * ((p >> (2 * i)) & 3) + 1) as i8))
            .collect();
        let mut map = vec![-1i32; KMAP_SIZE];
        for (i, g) in grid.iter().enumerate() {
            let mut index = 0usize;
            for (k, &v) in g.iter().enumerate() {
                index |= (((v - 1) / 2) as usize) << (2 * k);
            }
            map[index] = i as i32;
        }
        let neighbours = neighbour_lists(packed, &mut map, nwant);
        // Each point's packed levels beside its entry (count slots hold no point).
        let mut codes = vec![0u16; neighbours.len() + CODES_PAD];
        let mut k = 0;
        while k < neighbours.len() {
            let n = neighbours[k] as usize;
            for e in k + 1..k + 1 + n {
                codes[e] = packed[neighbours[e] as usize];
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

    /// The lattice of `kind`, built on first use.
    pub fn get(kind: Kind) -> &'static Lattice {
        static L: [OnceLock<Lattice>; 4] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let slot = match kind {
            Kind::Iq2Xxs => 0,
            Kind::Iq2Xs => 1,
            Kind::Iq1 => 2,
            Kind::Iq2S => 3,
        };
        L[slot].get_or_init(|| Lattice::build(kind))
    }

    /// Looks up a packed index (8 levels of 2 bits, each at most 2).
    #[inline]
    pub fn lookup(&self, u: u16) -> Lookup<'_> {
        let m = self.map[u as usize];
        if m >= 0 {
            Lookup::On(m as usize)
        } else {
            let start = (-m - 1) as usize;
            let n = self.neighbours[start] as usize;
            let at = start + 1..start + 1 + n;
            Lookup::Off(Neighbours {
                index: &self.neighbours[at.clone()],
                codes: &self.codes[at.start..at.end + CODES_PAD],
            })
        }
    }

    /// The grid index of a packed index that must be on the grid (`None` where ggml aborts
    /// with "found point not on grid").
    #[inline]
    pub fn on_grid(&self, u: u16) -> Option<usize> {
        let m = *self.map.get(u as usize)?;
        (m >= 0).then_some(m as usize)
    }

    /// ggml's `iq2_find_best_neighbour`: the neighbour nearest to `xval` at `scale` in the
    /// weighted squared distance (the first of equals); writes its levels into `l`. `None`
    /// where ggml aborts (every distance NaN or infinite). With `lanes`, the search runs in
    /// SIMD lanes (same answer).
    pub(crate) fn best_neighbour(
        &self,
        lanes: Option<Lanes>,
        neighbours: Neighbours<'_>,
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        l: &mut [i8],
    ) -> Option<usize> {
        let g = match lanes {
            None => nearest_neighbour(&self.grid, neighbours.index, xval, weight, scale)?,
            Some(lanes) => {
                let p = grid_nearest::<8, 2>(
                    lanes,
                    &IQ2_LEVELS,
                    neighbours.index.len(),
                    neighbours.codes,
                    xval,
                    weight,
                    scale,
                )?;
                neighbours.index[p] as usize
            }
        };
        for i in 0..8 {
            l[i] = (self.grid[g][i] - 1) / 2;
        }
        Some(g)
    }

    /// Rounds a group of 8 magnitudes to levels at `id` (1/scale, ggml's
    /// `nearest_int(0.5f*(id*xval[i]-1))` clamped to `0..=2`) and, where that point is off the
    /// grid, moves it to its best neighbour at `scale` ([`Self::best_neighbour`]): the step
    /// every IQ2 search repeats per group. Writes the levels into `l` and returns whether the
    /// rounded point was on the grid.
    pub(crate) fn snap_group(
        &self,
        lanes: Option<Lanes>,
        id: f32,
        scale: f32,
        xval: &[f32],
        weight: &[f32],
        l: &mut [i8],
    ) -> Result<bool, Abort> {
        const KMAX_Q: i32 = 3;
        for i in 0..8 {
            l[i] = nearest_int(0.5 * (id * xval[i] - 1.0)).clamp(0, KMAX_Q - 1) as i8;
        }
        match self.lookup(pack(l)) {
            Lookup::On(_) => Ok(true),
            Lookup::Off(nb) => {
                self.best_neighbour(lanes, nb, xval, weight, scale, l)
                    .ok_or(Abort)?;
                Ok(false)
            }
        }
    }

    /// ggml's `iq1_find_best_neighbour2`: the neighbour whose values `xg[level]` at `scale`
    /// are nearest to `xval` (the first of equals); writes its levels into `l`. `None` where
    /// ggml would fall into its full-grid fallback (every distance NaN or at least FLT_MAX):
    /// that fallback reads past its 8 inputs and then aborts, so no valid output exists.
    /// With `lanes`, the search runs in SIMD lanes (same answer).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn best_neighbour_iq1(
        &self,
        lanes: Option<Lanes>,
        neighbours: Neighbours<'_>,
        xval: &[f32],
        weight: &[f32],
        scale: f32,
        xg: &[f32; 3],
        l: &mut [i8],
    ) -> Option<usize> {
        if let Some(lanes) = lanes {
            let levels: [f32; 16] = std::array::from_fn(|k| xg.get(k & 3).copied().unwrap_or(0.0));
            let p = grid_nearest::<8, 2>(
                lanes,
                &levels,
                neighbours.index.len(),
                neighbours.codes,
                xval,
                weight,
                scale,
            )?;
            let g = neighbours.index[p] as usize;
            for i in 0..8 {
                l[i] = (self.grid[g][i] - 1) / 2;
            }
            return Some(g);
        }
        let mut best_score = f32::MAX;
        let mut grid_index = None;
        for &j in neighbours.index {
            let pg = &self.grid[j as usize];
            let mut d2 = 0.0f32;
            for i in 0..8 {
                let q = xg[((pg[i] - 1) / 2) as usize];
                let w = weight[i];
                let diff = scale * q - xval[i];
                d2 += w * diff * diff;
            }
            if d2 < best_score {
                best_score = d2;
                grid_index = Some(j as usize);
            }
        }
        let g = grid_index?;
        for i in 0..8 {
            l[i] = (self.grid[g][i] - 1) / 2;
        }
        Some(g)
    }
}

/// Whether every 2-bit digit of a packed index is a level (0..=2): the only indices the
/// quantizers look up, as each clamps its levels to 0..=2.
#[inline]
fn is_reachable(i: usize) -> bool {
    // A digit 3 has both of its bits set.
    (i & (i >> 1) & 0x5555) == 0
}

/// `kneighbors_q2xs` as `iq2xs_init_impl` builds it, for the indices the quantizers can look
/// up ([`is_reachable`]); writes `-(offset + 1)` of each list into `map`. ggml sorts all grid
/// points by (squared distance, grid index) and keeps those at the `nwant` smallest distinct
/// distances; a squared distance here is 4 times a number in 0..=32 (each of the 8 digits
/// contributes 0, 1 or 4), so the same lists come from a count per distance and one pass
/// over the grid in index order. Entry 0 is an empty list (count 0) that the indices with a
/// digit 3 point to: ggml builds lists for them too, but nothing ever reads those.
fn neighbour_lists(packed: &[u16], map: &mut [i32], nwant: usize) -> Vec<u16> {
    const SHELLS: usize = 33;
    // dist4[a * 256 + b]: the squared distance / 4 between the 4 digits packed in bytes a, b.
    let mut dist4 = vec![0u8; 256 * 256];
    for a in 0..256usize {
        for b in 0..256usize {
            let mut d = 0;
            for k in 0..4 {
                let e = ((a >> (2 * k)) & 3) as i32 - ((b >> (2 * k)) & 3) as i32;
                d += e * e;
            }
            dist4[a * 256 + b] = d as u8;
        }
    }
    let lo: Vec<u8> = packed.iter().map(|&p| p as u8).collect();
    let hi: Vec<u8> = packed.iter().map(|&p| (p >> 8) as u8).collect();
    let mut dist = vec![0u8; packed.len()];
    let mut neighbours = vec![0u16];
    for i in 0..map.len() {
        if map[i] >= 0 {
            continue;
        }
        if !is_reachable(i) {
            map[i] = -1;
            continue;
        }
        let row_lo = &dist4[(i & 255) * 256..][..256];
        let row_hi = &dist4[((i >> 8) & 255) * 256..][..256];
        let mut count = [0u16; SHELLS];
        for ((d, &l), &h) in dist.iter_mut().zip(&lo).zip(&hi) {
            *d = row_lo[l as usize] + row_hi[h as usize];
            count[*d as usize] += 1;
        }
        // Where each of the `nwant` nearest shells starts in the list; farther ones get none.
        let mut at = [u16::MAX; SHELLS];
        let mut n = 0u16;
        let mut found = 0;
        for s in 0..SHELLS {
            if count[s] > 0 && found < nwant {
                at[s] = n;
                n += count[s];
                found += 1;
            }
        }
        let start = neighbours.len();
        map[i] = -(start as i32 + 1);
        neighbours.push(n);
        neighbours.resize(start + 1 + n as usize, 0);
        let list = &mut neighbours[start + 1..];
        for (j, &d) in dist.iter().enumerate() {
            let a = &mut at[d as usize];
            if *a != u16::MAX {
                list[*a as usize] = j as u16;
                *a += 1;
            }
        }
    }
    neighbours
}

/// The search ggml's `iq2_find_best_neighbour` and `iq3_find_best_neighbour` share, for grids of
/// any dimension `D` (points stored as `2*level + 1`): the neighbour with the least weighted
/// squared error `sum w[i]*(scale*q[i] - x[i])^2` (accumulated in ggml's order), the first of
/// equals. `None` where every error is NaN or at least `f32::MAX` (ggml then aborts).
#[inline]
pub fn nearest_neighbour<const D: usize>(
    grid: &[[i8; D]],
    neighbours: &[u16],
    xval: &[f32],
    weight: &[f32],
    scale: f32,
) -> Option<usize> {
    let mut best_d2 = f32::MAX;
    let mut grid_index = None;
    for &j in neighbours {
        let pg = &grid[j as usize];
        let mut d2 = 0.0f32;
        for i in 0..D {
            let diff = scale * pg[i] as f32 - xval[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            grid_index = Some(j as usize);
        }
    }
    grid_index
}

/// Where ggml stops with an assertion (a search that finds no grid point, a NaN scale): the
/// block gets a NaN scale, which `first_invalid_block` reports as an overflow.
#[derive(Debug)]
pub struct Abort;

/// Largest-level search of 16 weights (two groups of 8) shared by IQ2_XS and IQ2_S, from
/// `float best = 0` to the refit of the off-grid groups in ggml's `quantize_row_iq2_xs_impl`
/// (identical in `quantize_row_iq2_s_impl`). `xval` are the magnitudes, `max` their largest;
/// leaves the levels in `l` and returns the scale.
pub(crate) fn search_16(
    lanes: Option<Lanes>,
    lat: &Lattice,
    xval: &[f32; 16],
    weight: &[f32; 16],
    waux: &[f32; 16],
    max: f32,
    l: &mut [i8; 16],
) -> Result<f32, Abort> {
    const KMAX_Q: i32 = 3;
    let mut laux = [0i8; 16];
    let mut best = 0.0f32;
    let mut scale = max / (2 * KMAX_Q - 1) as f32;
    let mut is_on_grid = [true; 2];
    let mut is_on_grid_aux = [true; 2];
    for is in -9i32..=9 {
        let id = ((2 * KMAX_Q - 1) as f32 + is as f32 * 0.1f32) / max;
        let this_scale = 1.0 / id;
        for k in 0..2 {
            let g = 8 * k..8 * k + 8;
            is_on_grid_aux[k] = lat.snap_group(
                lanes,
                id,
                this_scale,
                &xval[g.clone()],
                &waux[g.clone()],
                &mut laux[g],
            )?;
        }
        let (sumqx, sumq2) = weighted_sums(weight, xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            *l = laux;
            is_on_grid = is_on_grid_aux;
        }
    }
    let n_not_ongrid = is_on_grid.iter().filter(|&&on| !on).count();
    if n_not_ongrid > 0 && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..2 {
            if is_on_grid[k] {
                continue;
            }
            let g = 8 * k..8 * k + 8;
            lat.snap_group(
                lanes,
                id,
                scale,
                &xval[g.clone()],
                &waux[g.clone()],
                &mut l[g],
            )?;
        }
        let (sumqx, sumq2) = weighted_sums(weight, xval, l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    Ok(scale)
}

/// `sumqx += w*xval[i]*q; sumq2 += w*q*q` with `q = 2*l + 1`, in ggml's order.
#[inline]
pub fn weighted_sums(weight: &[f32], xval: &[f32], l: &[i8]) -> (f32, f32) {
    let mut sumqx = 0.0f32;
    let mut sumq2 = 0.0f32;
    for i in 0..l.len() {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// ggml's `MAX(a, b)`: `a > b ? a : b` (not `f32::max`, which differs for NaN).
#[inline]
pub fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The weights' positions sorted by value, ties in position order: ggml's
/// `qsort(pairs, n, 2*sizeof(float), iq1_sort_helper)`, which glibc runs as a merge sort
/// ([`sorted_order_merge`]; the comparator looks at the value only, and -0.0 equals 0.0).
///
/// Without NaN the comparator is a total preorder and the merge sort is stable, so a weight's
/// place is the number of weights below it plus the number of equal ones before it: counted
/// for all weights side by side, with no branches. With a NaN (equal to everything, so no
/// consistent order) it runs glibc's merge sort step by step.
#[inline(always)]
pub fn sorted_order<const N: usize>(xb: &[f32]) -> [usize; N] {
    let x: &[f32; N] = match xb.get(..N).and_then(|x| <&[f32; N]>::try_from(x).ok()) {
        Some(x) if !x.iter().any(|v| v.is_nan()) => x,
        _ => return sorted_order_merge(xb),
    };
    let mut idx = [0usize; N];
    for i in 0..N {
        let xi = x[i];
        let mut rank = 0u32;
        for j in 0..N {
            rank += ((x[j] < xi) | ((x[j] == xi) & (j < i))) as u32;
        }
        idx[rank as usize % N] = i;
    }
    idx
}

/// glibc's `qsort` (`msort_with_tmp`: halves of `n/2` and `n - n/2` sorted in turn, then
/// merged taking the left element wherever the comparator says `<= 0`) with ggml's
/// `iq1_sort_helper` (`l < r ? -1 : l > r ? 1 : 0`).
fn sorted_order_merge<const N: usize>(xb: &[f32]) -> [usize; N] {
    fn msort(idx: &mut [usize], tmp: &mut [usize], x: &[f32]) {
        let n = idx.len();
        if n <= 1 {
            return;
        }
        let n1 = n / 2;
        let (b1, b2) = idx.split_at_mut(n1);
        msort(b1, tmp, x);
        msort(b2, tmp, x);
        let (mut i, mut j, mut o) = (0, 0, 0);
        while i < b1.len() && j < b2.len() {
            // cmp(b1, b2) <= 0 unless b1 > b2.
            if x[b1[i]] > x[b2[j]] {
                tmp[o] = b2[j];
                j += 1;
            } else {
                tmp[o] = b1[i];
                i += 1;
            }
            o += 1;
        }
        // What is left of the second half is in place already.
        tmp[o..o + b1.len() - i].copy_from_slice(&b1[i..]);
        o += b1.len() - i;
        idx[..o].copy_from_slice(&tmp[..o]);
    }
    let mut idx: [usize; N] = std::array::from_fn(|i| i);
    let mut tmp = [0usize; N];
    msort(&mut idx, &mut tmp, xb);
    idx
}

/// The packed index of 8 levels (ggml's `u |= L[i] << 2*i`).
#[inline]
pub fn pack(l: &[i8]) -> u16 {
    let mut u = 0u16;
    for i in 0..8 {
        u |= (l[i] as u16) << (2 * i);
    }
    u
}

/// Sum of squares in ggml's (sequential) order.
#[inline]
pub fn sum_squares(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The search grids (ggml-quants.c) and the dequantization grids (ggml-common.h) are the
    /// same points: levels 0, 1, 2 are bytes 0x08, 0x19, 0x2b for IQ2 and -1, 0, 1 for IQ1.
    #[test]
    fn search_grids_are_the_dequantization_grids() {
        let pairs: [(&[u16], &[u64], [u8; 3]); 4] = [
            (&KGRID_2BIT_256, &IQ2XXS_GRID, [0x08, 0x19, 0x2b]),
            (&KGRID_2BIT_512, &IQ2XS_GRID, [0x08, 0x19, 0x2b]),
            (&KGRID_2BIT_1024, &IQ2S_GRID, [0x08, 0x19, 0x2b]),
            (&KGRID_1BIT_2048, &IQ1S_GRID, [0xff, 0x00, 0x01]),
        ];
        for (packed, grid, values) in pairs {
            for (&p, &g) in packed.iter().zip(grid) {
                for i in 0..8 {
                    let l = (p >> (2 * i)) & 3;
                    assert!(l < 3, "level 3 in {p:#x}");
                    assert_eq!(values[l as usize], (g >> (8 * i)) as u8, "{p:#x} vs {g:#x}");
                }
            }
        }
    }

    #[test]
    fn ksigns_make_even_parity() {
        for (i, &s) in KSIGNS_IQ2XS.iter().enumerate() {
            assert_eq!(s & 127, i as u8);
            assert_eq!(s.count_ones() % 2, 0);
        }
    }

    #[test]
    fn every_grid_point_maps_to_itself_and_others_have_neighbours() {
        for kind in [Kind::Iq2Xxs, Kind::Iq2Xs, Kind::Iq2S, Kind::Iq1] {
            let lat = Lattice::get(kind);
            for (i, &p) in kind.packed().iter().enumerate() {
                assert_eq!(lat.on_grid(p), Some(i));
            }
            let mut off = 0;
            for u in 0..KMAP_SIZE as u16 {
                if let Lookup::Off(n) = lat.lookup(u) {
                    // Only the indices with a digit 3 (which no quantizer produces) have none.
                    assert_eq!(n.index.is_empty(), !is_reachable(u as usize), "{u:#x}");
                    for (&j, &c) in n.index.iter().zip(n.codes) {
                        assert_eq!(c, kind.packed()[j as usize]);
                    }
                    off += 1;
                }
            }
            assert_eq!(off, KMAP_SIZE - kind.packed().len());
            assert_eq!((0..KMAP_SIZE).filter(|&i| is_reachable(i)).count(), 6561);
        }
    }

    /// The counting order is glibc's merge sort's, on ties (also -0.0 against 0.0),
    /// infinities, subnormals; with NaN the merge sort runs (and does not panic). Where the
    /// order is total, the merge sort is the standard library's stable sort.
    #[test]
    fn sorted_order_is_the_stable_sort() {
        let mut next = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let specials = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            f32::NAN,
        ];
        for round in 0..20000 {
            let mut x = [0.0f32; 32];
            for v in &mut x {
                let r = next();
                *v = match r % 4 {
                    0 => specials[(r >> 8) as usize % (specials.len() - (round % 2))],
                    1 => ((r >> 8) % 5) as f32 - 2.0,
                    _ => f32::from_bits((r >> 16) as u32 & 0x807f_ffff | 0x3f00_0000),
                };
            }
            assert_eq!(
                sorted_order::<32>(&x),
                sorted_order_merge::<32>(&x),
                "{x:?}"
            );
            assert_eq!(
                sorted_order::<16>(&x),
                sorted_order_merge::<16>(&x),
                "{x:?}"
            );
        }
    }

    /// ggml's construction in `iq2xs_init_impl`, step by step: every grid point's squared
    /// distance to the index's point, `qsort` by (distance, grid index) (`iq2_compare_func`, a
    /// total order, so any correct sort gives the same sequence), then the prefix up to the
    /// `nwant`-th distinct distance.
    fn ggml_neighbours(kind: Kind, i: usize) -> Vec<u16> {
        let packed = kind.packed();
        let pos: [i32; 8] = std::array::from_fn(|k| 2 * ((i >> (2 * k)) & 3) as i32 + 1);
        let mut dist2: Vec<(i32, i32)> = packed
            .iter()
            .enumerate()
            .map(|(j, &p)| {
                let mut d2 = 0;
                for k in 0..8 {
                    let pg = 2 * ((p >> (2 * k)) & 3) as i32 + 1;
                    d2 += (pg - pos[k]) * (pg - pos[k]);
                }
                (d2, j as i32)
            })
            .collect();
        dist2.sort();
        let mut out = Vec::new();
        let mut d2 = dist2[0].0;
        let mut nhave = 1;
        for &(d, j) in &dist2 {
            if d > d2 {
                if nhave == kind.shells() {
                    break;
                }
                d2 = d;
                nhave += 1;
            }
            out.push(j as u16);
        }
        out
    }

    /// The neighbour lists are exactly ggml's, order included, for every index a quantizer
    /// can look up, in all four lattices.
    #[test]
    fn neighbour_lists_are_ggml_s() {
        for kind in [Kind::Iq2Xxs, Kind::Iq2Xs, Kind::Iq2S, Kind::Iq1] {
            let lat = Lattice::get(kind);
            let mut lists = 0;
            for u in 0..KMAP_SIZE {
                if !is_reachable(u) {
                    continue;
                }
                if let Lookup::Off(n) = lat.lookup(u as u16) {
                    assert_eq!(n.index, &ggml_neighbours(kind, u)[..], "{kind:?} {u:#x}");
                    lists += 1;
                }
            }
            assert_eq!(lists, 6561 - kind.packed().len(), "{kind:?}");
        }
    }
}
