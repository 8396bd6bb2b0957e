//! aarch64 NEON kernels of the i-quants' searches, called through [`super::iq`]: the AVX2
//! kernels of `iq_x86.rs` with four lanes per vector. Each gives exactly what the scalar code
//! gives: lanes run across independent trial scales, weights or grid points; each lane
//! accumulates its sums in ggml's order with separate multiplies and adds (`vmulq_f32`, then
//! `vaddq_f32`; never the fused `vfmaq`/`vmlaq`).

use crate::iquants::iq4_nl::KVALUES_IQ4NL;
use std::arch::aarch64::*;

/// `kvalues_iq4nl` as floats, and shifted by one (`[k]` holds level `k + 1`; the last is
/// padding), for the lookups of a lane's two candidate levels.
const IQ4_LO: [f32; 16] = {
    let mut t = [0.0f32; 16];
    let mut k = 0;
    while k < 16 {
        t[k] = KVALUES_IQ4NL[k] as f32;
        k += 1;
    }
    t
};
const IQ4_HI: [f32; 16] = {
    let mut t = [0.0f32; 16];
    let mut k = 0;
    while k < 15 {
        t[k] = KVALUES_IQ4NL[k + 1] as f32;
        k += 1;
    }
    t[15] = KVALUES_IQ4NL[15] as f32;
    t
};

/// Sixteen floats as a byte table for `vqtbl4q_u8`.
#[inline]
#[target_feature(enable = "neon")]
fn table(t: &[f32; 16]) -> uint8x16x4_t {
    let p = t.as_ptr();
    // SAFETY: `t` holds 16 floats.
    unsafe {
        uint8x16x4_t(
            vreinterpretq_u8_f32(vld1q_f32(p)),
            vreinterpretq_u8_f32(vld1q_f32(p.add(4))),
            vreinterpretq_u8_f32(vld1q_f32(p.add(8))),
            vreinterpretq_u8_f32(vld1q_f32(p.add(12))),
        )
    }
}

/// `t[idx]` per lane, for indices 0..16.
#[inline]
#[target_feature(enable = "neon")]
fn lookup(t: uint8x16x4_t, idx: uint32x4_t) -> float32x4_t {
    // Byte b of lane k reads byte 4 * idx[k] + b of the table.
    let bytes = vaddq_u32(
        vmulq_n_u32(vshlq_n_u32::<2>(idx), 0x0101_0101),
        vdupq_n_u32(0x0302_0100),
    );
    vreinterpretq_f32_u8(vqtbl4q_u8(t, vreinterpretq_u8_u32(bytes)))
}

/// ggml's `best_index_int8(16, kvalues_iq4nl, x)` in 4 lanes: the level index and the level
/// as a float (see `iq_x86.rs`'s `iq4_nearest`: `ml` counts the levels 1..=14 that `x` is not
/// below, a NaN being below none, then the nearer of levels `ml` and `ml + 1`, the lower one
/// unless the upper is strictly nearer).
#[inline]
#[target_feature(enable = "neon")]
fn iq4_nearest(
    x: float32x4_t,
    lo_t: uint8x16x4_t,
    hi_t: uint8x16x4_t,
) -> (uint32x4_t, float32x4_t) {
    let mut ml = vdupq_n_u32(0);
    for k in 1..15 {
        let below = vcltq_f32(x, vdupq_n_f32(IQ4_LO[k]));
        // Not below: the mask's complement is all ones, which subtracts as +1.
        ml = vsubq_u32(ml, vmvnq_u32(below));
    }
    let lo = lookup(lo_t, ml);
    let hi = lookup(hi_t, ml);
    let take_lo = vcltq_f32(vsubq_f32(x, lo), vsubq_f32(hi, x));
    // ml + 1, less one where the lower level is taken (the mask is all ones there).
    let index = vaddq_u32(vaddq_u32(ml, vdupq_n_u32(1)), take_lo);
    (index, vbslq_f32(take_lo, lo, hi))
}

/// See [`iq4_trial_sums`](crate::simd::iq::iq4_trial_sums): the 16 trials in four vectors.
#[target_feature(enable = "neon")]
pub(crate) fn iq4_trial_sums(
    xb: &[f32; 32],
    weight: &[f32; 32],
    ids: &[f32; 16],
) -> ([f32; 16], [f32; 16]) {
    let (lo_t, hi_t) = (table(&IQ4_LO), table(&IQ4_HI));
    let mut id = [vdupq_n_f32(0.0); 4];
    for (h, idh) in id.iter_mut().enumerate() {
        // SAFETY: `ids` holds 16 floats.
        *idh = unsafe { vld1q_f32(ids.as_ptr().add(4 * h)) };
    }
    let mut sumqx = [vdupq_n_f32(0.0); 4];
    let mut sumq2 = [vdupq_n_f32(0.0); 4];
    for j in 0..32 {
        let x = vdupq_n_f32(xb[j]);
        let w = vdupq_n_f32(weight[j]);
        for h in 0..4 {
            let (_, q) = iq4_nearest(vmulq_f32(id[h], x), lo_t, hi_t);
            let wq = vmulq_f32(w, q);
            sumqx[h] = vaddq_f32(sumqx[h], vmulq_f32(wq, x));
            sumq2[h] = vaddq_f32(sumq2[h], vmulq_f32(wq, q));
        }
    }
    let mut out = ([0.0f32; 16], [0.0f32; 16]);
    // SAFETY: each output holds 16 floats.
    unsafe {
        for h in 0..4 {
            vst1q_f32(out.0.as_mut_ptr().add(4 * h), sumqx[h]);
            vst1q_f32(out.1.as_mut_ptr().add(4 * h), sumq2[h]);
        }
    }
    out
}

/// See [`iq4_indices`](crate::simd::iq::iq4_indices).
#[target_feature(enable = "neon")]
pub(crate) fn iq4_indices(x: &[f32; 32], id: f32) -> [u8; 32] {
    let (lo_t, hi_t) = (table(&IQ4_LO), table(&IQ4_HI));
    let vid = vdupq_n_f32(id);
    let mut idx = [0u32; 32];
    for h in 0..8 {
        // SAFETY: `x` and `idx` hold 32 values.
        unsafe {
            let v = vld1q_f32(x.as_ptr().add(4 * h));
            let (i, _) = iq4_nearest(vmulq_f32(vid, v), lo_t, hi_t);
            vst1q_u32(idx.as_mut_ptr().add(4 * h), i);
        }
    }
    idx.map(|i| i as u8)
}

/// The lattice searches' nearest neighbour, four grid points per vector (see the comment
/// above `avx2_grid` in `iq_x86.rs`: each dimension's error terms for every level computed
/// once, with ggml's operations, looked up per point and added in ggml's order; the point
/// kept is the first of the least errors below `f32::MAX`). `levels[k]` is the value of level
/// `k & (2^BITS - 1)`; `codes` holds at least `n` rounded up to 4 entries (those past `n` are
/// never chosen).
#[target_feature(enable = "neon")]
pub(crate) fn grid_nearest<const D: usize, const BITS: u32>(
    levels: &[f32; 16],
    n: usize,
    codes: &[u16],
    xval: &[f32],
    weight: &[f32],
    scale: f32,
) -> Option<usize> {
    let vscale = vdupq_n_f32(scale);
    let mut q = [vdupq_n_f32(0.0); 4];
    for (h, qh) in q.iter_mut().enumerate() {
        // SAFETY: `levels` holds 16 floats.
        *qh = vmulq_f32(vscale, unsafe { vld1q_f32(levels.as_ptr().add(4 * h)) });
    }
    let mut terms = [[0.0f32; 16]; D];
    for i in 0..D {
        let (x, w) = (vdupq_n_f32(xval[i]), vdupq_n_f32(weight[i]));
        for h in 0..4 {
            let diff = vsubq_f32(q[h], x);
            let t = vmulq_f32(vmulq_f32(w, diff), diff);
            // SAFETY: `terms[i]` holds 16 floats.
            unsafe { vst1q_f32(terms[i].as_mut_ptr().add(4 * h), t) };
        }
    }
    let mut tables = [table(&[0.0; 16]); D];
    for i in 0..D {
        tables[i] = table(&terms[i]);
    }
    let mask = vdupq_n_u32(15);
    let mut best = vdupq_n_f32(f32::MAX);
    let mut best_pos = vdupq_n_u32(u32::MAX);
    const LANE: [u32; 4] = [0, 1, 2, 3];
    // SAFETY: four u32 values.
    let mut pos = unsafe { vld1q_u32(LANE.as_ptr()) };
    let limit = vdupq_n_u32(n as u32);
    let codes = &codes[..n.div_ceil(4) * 4];
    for chunk in codes.chunks_exact(4) {
        // SAFETY: `chunk` holds 4 u16.
        let c = vmovl_u16(unsafe { vld1_u16(chunk.as_ptr()) });
        let mut d2 = vdupq_n_f32(0.0);
        for (i, t) in tables.iter().enumerate() {
            let shift = vdupq_n_s32(-((BITS as usize * i) as i32));
            let idx = vandq_u32(vshlq_u32(c, shift), mask);
            d2 = vaddq_f32(d2, lookup(*t, idx));
        }
        let take = vandq_u32(vcltq_f32(d2, best), vcltq_u32(pos, limit));
        best = vbslq_f32(take, d2, best);
        best_pos = vbslq_u32(take, pos, best_pos);
        pos = vaddq_u32(pos, vdupq_n_u32(4));
    }
    let min = vminvq_f32(best);
    if min.partial_cmp(&f32::MAX) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    let at_min = vceqq_f32(best, vdupq_n_f32(min));
    Some(vminvq_u32(vbslq_u32(at_min, best_pos, vdupq_n_u32(u32::MAX))) as usize)
}

/// Runs `f` with NEON enabled (see [`compiled_for`](crate::simd::iq::compiled_for)).
#[target_feature(enable = "neon")]
pub(crate) fn with_neon<R>(f: impl FnOnce() -> R) -> R {
    f()
}
