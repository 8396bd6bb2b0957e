//! The 32-weight block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Without importance weights these follow ggml's `quantize_row_*_ref` (one scale from the
//! block's extreme value); with them, ggml's `quantize_row_*_impl`, which searches the scale
//! (and min) that minimises the importance-weighted error, where the weight of column `j` is
//! `imatrix[j] * sqrt(sigma2 + x[j]^2)` and `sigma2` is the row's mean square.

use crate::fp::{f32_to_f16, first_bad_scale, get_f16, put_u16};
use crate::kquants::search::{make_qkx3_quants, make_qx_quants, MinSearch};
use crate::kquants::sum_squares;
use crate::{BlockFormat, GgmlType};

/// Weights per block of every legacy format.
pub const QK: usize = 32;

/// 4-bit symmetric, 18 bytes per 32 weights: `d` (f16), 16 bytes of nibbles.
pub struct Q4_0;
/// 4-bit with min, 20 bytes per 32 weights: `d`, `m` (f16), 16 bytes of nibbles.
pub struct Q4_1;
/// 5-bit symmetric, 22 bytes per 32 weights: `d`, 4 bytes of high bits, 16 of nibbles.
pub struct Q5_0;
/// 5-bit with min, 24 bytes per 32 weights: `d`, `m`, 4 bytes of high bits, 16 of nibbles.
pub struct Q5_1;
/// 8-bit symmetric, 34 bytes per 32 weights: `d` (f16), 32 signed bytes.
pub struct Q8_0;

/// The search settings ggml uses for the importance-weighted Q4_1/Q5_1 path.
const QKX3_LEGACY: MinSearch = MinSearch {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// C's float-to-integer conversion as x86 performs it (`cvttss2si`): truncation toward zero,
/// and the "integer indefinite" value `i32::MIN` for NaN and out-of-range input, where Rust's
/// `as` would saturate. It matters for blocks of subnormals, whose reciprocal scale is infinite.
#[inline(always)]
fn cvtt(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// Converts like [`cvtt`]; `FINITE` says the caller knows the value is in range (the
/// reciprocal scale was finite), where a plain `as` is the same and vectorizes.
#[inline(always)]
fn to_int<const FINITE: bool>(v: f32) -> i32 {
    if FINITE {
        v as i32
    } else {
        cvtt(v)
    }
}

/// Largest magnitude in the block and the value that has it (first one wins on ties).
#[inline]
///
/// Two passes instead of ggml's one: the largest magnitude (a max reduction, which vectorizes
/// and is exact in any order), then the first value that has it. Same result, no NaN here.
fn signed_absmax(x: &[f32]) -> f32 {
    let x = &x[..QK];
    let mut lanes = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            lanes[k] = if a > lanes[k] { a } else { lanes[k] };
        }
    }
    let amax = lanes.iter().fold(0.0f32, |m, &a| if a > m { a } else { m });
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The row's mean square, as ggml computes it for the importance weights.
fn row_sigma2(x: &[f32]) -> f32 {
    sum_squares(x) / x.len() as f32
}

#[inline]
fn importance(qw: &[f32], x: &[f32], sigma2: f32) -> [f32; QK] {
    let mut w = [0.0f32; QK];
    for j in 0..QK {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// `roundf` (halves away from zero) for |v| < 2^23, in integer and compare operations that
/// vectorize (without SSE4.1, `f32::round` is a library call).
#[inline(always)]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32; // truncation toward zero
    let frac = v - t as f32; // exact for |v| < 2^23
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Q4_1/Q5_1 without importance weights: writes `d` and `m` from the block's range; returns
/// the min and the reciprocal scale the levels are computed with.
#[inline]
fn asym_ref_header(levels: f32, x: &[f32], y: &mut [u8]) -> (f32, f32) {
    let (min, max) = min_max(x);
    let d = (max - min) / levels;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_u16(y, 0, f32_to_f16(d));
    put_u16(y, 2, f32_to_f16(min));
    (min, id)
}

/// Q4_1/Q5_1 with importance weights: searches scale and min, writes `d` and `m`, returns the
/// levels.
#[inline]
fn asym_imatrix_block(nmax: i32, x: &[f32], qw: &[f32], sigma2: f32, y: &mut [u8]) -> [u8; QK] {
    let w = importance(qw, x, sigma2);
    let mut l = [0u8; QK];
    let mut min = 0.0f32;
    let d = make_qkx3_quants(nmax, x, &w, &mut l, &mut min, QKX3_LEGACY);
    put_u16(y, 0, f32_to_f16(d));
    put_u16(y, 2, f32_to_f16(-min));
    l
}

#[inline(always)]
fn pack_q4_0<const FINITE: bool>(x: &[f32], id: f32, qs: &mut [u8]) {
    let (x, qs) = (&x[..QK], &mut qs[..QK / 2]);
    for j in 0..QK / 2 {
        let xi0 = (to_int::<FINITE>(x[j] * id + 8.5) as i8).min(15) as u8;
        let xi1 = (to_int::<FINITE>(x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        qs[j] = xi0 | (xi1 << 4);
    }
}

#[inline(always)]
fn pack_q4_1<const FINITE: bool>(x: &[f32], min: f32, id: f32, qs: &mut [u8]) {
    let (x, qs) = (&x[..QK], &mut qs[..QK / 2]);
    for j in 0..QK / 2 {
        let xi0 = (to_int::<FINITE>((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (to_int::<FINITE>((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
        qs[j] = xi0 | (xi1 << 4);
    }
}

#[inline(always)]
fn levels_q5_0<const FINITE: bool>(x: &[f32], id: f32, l: &mut [u8; QK]) {
    let x = &x[..QK];
    for j in 0..QK {
        l[j] = (to_int::<FINITE>(x[j] * id + 16.5) as i8).min(31) as u8;
    }
}

#[inline(always)]
fn levels_q5_1<const FINITE: bool>(x: &[f32], min: f32, id: f32, l: &mut [u8; QK]) {
    let x = &x[..QK];
    for j in 0..QK {
        l[j] = to_int::<FINITE>((x[j] - min) * id + 0.5) as u8;
    }
}

#[inline(always)]
fn levels_q8_0<const FINITE: bool>(x: &[f32], id: f32, qs: &mut [u8]) {
    let (x, qs) = (&x[..QK], &mut qs[..QK]);
    for j in 0..QK {
        let v = x[j] * id;
        qs[j] = if FINITE {
            round_half_away(v)
        } else {
            cvtt(v.round())
        } as u8;
    }
}

/// Packs 5-bit levels (low nibbles into 16 bytes, fifth bits into a u32) as Q5_0/Q5_1 store them.
#[inline]
fn pack_q5(levels: impl Fn(usize) -> u8, qh_out: &mut [u8], qs_out: &mut [u8]) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = levels(j);
        let xi1 = levels(j + QK / 2);
        qs_out[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 as u32 & 0x10) >> 4) << j;
        qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

#[inline]
fn q5_level(qs: &[u8], qh: u32, j: usize) -> (i32, i32) {
    let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
    let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
    (((qs[j] & 0x0F) | xh_0) as i32, ((qs[j] >> 4) | xh_1) as i32)
}

impl BlockFormat for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = 18;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let blocks = src
            .chunks_exact(QK)
            .zip(dst.chunks_exact_mut(Self::BLOCK_BYTES));
        match imatrix {
            None => {
                for (x, y) in blocks {
                    let d = signed_absmax(x) / -8.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    put_u16(y, 0, f32_to_f16(d));
                    if id.is_finite() {
                        pack_q4_0::<true>(x, id, &mut y[2..18]);
                    } else {
                        pack_q4_0::<false>(x, id, &mut y[2..18]);
                    }
                }
            }
            Some(qw) => {
                let sigma2 = row_sigma2(src);
                for (ib, (x, y)) in blocks.enumerate() {
                    let w = importance(&qw[ib * QK..], x, sigma2);
                    let mut l = [0i8; QK];
                    let d = make_qx_quants(8, x, &mut l, Some(&w));
                    put_u16(y, 0, f32_to_f16(d));
                    for j in 0..QK / 2 {
                        y[2 + j] = (l[j] as u8) | ((l[j + QK / 2] as u8) << 4);
                    }
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = get_f16(b, 0);
            for j in 0..QK / 2 {
                let q = b[2 + j];
                y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[0])
    }
}

impl BlockFormat for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = 20;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let blocks = src
            .chunks_exact(QK)
            .zip(dst.chunks_exact_mut(Self::BLOCK_BYTES));
        match imatrix {
            None => {
                for (x, y) in blocks {
                    let (min, id) = asym_ref_header(15.0, x, y);
                    if id.is_finite() {
                        pack_q4_1::<true>(x, min, id, &mut y[4..20]);
                    } else {
                        pack_q4_1::<false>(x, min, id, &mut y[4..20]);
                    }
                }
            }
            Some(qw) => {
                let sigma2 = row_sigma2(src);
                for (ib, (x, y)) in blocks.enumerate() {
                    let l = asym_imatrix_block(15, x, &qw[ib * QK..], sigma2, y);
                    for j in 0..QK / 2 {
                        y[4 + j] = l[j] | (l[j + QK / 2] << 4);
                    }
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = get_f16(b, 0);
            let m = get_f16(b, 2);
            for j in 0..QK / 2 {
                let q = b[4 + j];
                y[j] = (q & 0x0F) as f32 * d + m;
                y[j + QK / 2] = (q >> 4) as f32 * d + m;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[0, 2])
    }
}

impl BlockFormat for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = 22;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let blocks = src
            .chunks_exact(QK)
            .zip(dst.chunks_exact_mut(Self::BLOCK_BYTES));
        match imatrix {
            None => {
                for (x, y) in blocks {
                    let d = signed_absmax(x) / -16.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    put_u16(y, 0, f32_to_f16(d));
                    let (qh, qs) = y[2..].split_at_mut(4);
                    let mut l = [0u8; QK];
                    if id.is_finite() {
                        levels_q5_0::<true>(x, id, &mut l);
                    } else {
                        levels_q5_0::<false>(x, id, &mut l);
                    }
                    pack_q5(|j| l[j], qh, qs);
                }
            }
            Some(qw) => {
                let sigma2 = row_sigma2(src);
                for (ib, (x, y)) in blocks.enumerate() {
                    let w = importance(&qw[ib * QK..], x, sigma2);
                    let mut l = [0i8; QK];
                    let d = make_qx_quants(16, x, &mut l, Some(&w));
                    put_u16(y, 0, f32_to_f16(d));
                    let (qh, qs) = y[2..].split_at_mut(4);
                    pack_q5(|j| l[j] as u8, qh, qs);
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = get_f16(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..QK / 2 {
                let (x0, x1) = q5_level(&b[6..], qh, j);
                y[j] = (x0 - 16) as f32 * d;
                y[j + QK / 2] = (x1 - 16) as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[0])
    }
}

impl BlockFormat for Q5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = 24;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let blocks = src
            .chunks_exact(QK)
            .zip(dst.chunks_exact_mut(Self::BLOCK_BYTES));
        match imatrix {
            None => {
                for (x, y) in blocks {
                    let (min, id) = asym_ref_header(31.0, x, y);
                    let (qh, qs) = y[4..].split_at_mut(4);
                    let mut l = [0u8; QK];
                    if id.is_finite() {
                        levels_q5_1::<true>(x, min, id, &mut l);
                    } else {
                        levels_q5_1::<false>(x, min, id, &mut l);
                    }
                    pack_q5(|j| l[j], qh, qs);
                }
            }
            Some(qw) => {
                let sigma2 = row_sigma2(src);
                for (ib, (x, y)) in blocks.enumerate() {
                    let l = asym_imatrix_block(31, x, &qw[ib * QK..], sigma2, y);
                    let (qh, qs) = y[4..].split_at_mut(4);
                    pack_q5(|j| l[j], qh, qs);
                }
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = get_f16(b, 0);
            let m = get_f16(b, 2);
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..QK / 2 {
                let (x0, x1) = q5_level(&b[8..], qh, j);
                y[j] = x0 as f32 * d + m;
                y[j + QK / 2] = x1 as f32 * d + m;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[0, 2])
    }
}

impl BlockFormat for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK_WEIGHTS: usize = QK;
    const BLOCK_BYTES: usize = 34;

    /// ggml ignores importance weights for Q8_0; so does kiln.
    fn quantize_row(src: &[f32], dst: &mut [u8], _imatrix: Option<&[f32]>) {
        for (x, y) in src
            .chunks_exact(QK)
            .zip(dst.chunks_exact_mut(Self::BLOCK_BYTES))
        {
            let mut amax = 0.0f32;
            for &v in x {
                let a = v.abs();
                amax = if amax > a { amax } else { a };
            }
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            put_u16(y, 0, f32_to_f16(d));
            if id.is_finite() {
                levels_q8_0::<true>(x, id, &mut y[2..34]);
            } else {
                levels_q8_0::<false>(x, id, &mut y[2..34]);
            }
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in src
            .chunks_exact(Self::BLOCK_BYTES)
            .zip(dst.chunks_exact_mut(QK))
        {
            let d = get_f16(b, 0);
            for j in 0..QK {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        first_bad_scale(row, Self::BLOCK_BYTES, &[0])
    }
}
