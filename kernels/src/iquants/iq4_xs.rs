//! IQ4_XS: 136 bytes per 256 weights: eight 32-weight sub-blocks of IQ4_NL's non-linear
//! levels, each with a 6-bit scale (low 4 bits in `scales_l`, high 2 in `scales_h`), and the
//! super-block's f16 `d`. Weight = d*(ls-32)*kvalues_iq4nl[index].

use super::block_weights;
use super::iq4_nl::{indices_at, pack, scale_at, sigma2, KVALUES_IQ4NL, QK4_NL};
use crate::fp::Half;
use crate::kquants::search::nearest_int;
use crate::kquants::QK_K;
use crate::simd::iq::Lanes;
use crate::{as_blocks, as_blocks_mut, BlockFormat, GgmlType, Simd};
use std::mem::size_of;

/// The 4-bit non-linear super-block format.
pub struct IQ4XS;

/// One IQ4_XS super-block (ggml's `block_iq4_xs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4XS {
    /// Scale of the sub-block scales.
    pub d: Half,
    /// High 2 bits of sub-block `ib`'s scale at bits `2*ib` (a little-endian u16).
    pub scales_h: [u8; 2],
    /// Low 4 bits of sub-block `ib`'s scale in nibble `ib % 2` of byte `ib / 2`.
    pub scales_l: [u8; QK_K / 64],
    /// Indices, 16 bytes per sub-block, packed as IQ4_NL packs them.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockIQ4XS>() == 136);

const NB: usize = QK_K / QK4_NL;

fn quantize_block(lanes: Option<Lanes>, x: &[f32; QK_K], y: &mut BlockIQ4XS, qw: Option<&[f32]>) {
    let (xbs, _) = x.as_chunks::<QK4_NL>();
    let sigma2 = sigma2(x);
    let mut scales = [0.0f32; NB];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for ib in 0..NB {
        let xb = &xbs[ib];
        let w = block_weights::<QK4_NL>(xb, qw.map(|q| &q[ib * QK4_NL..(ib + 1) * QK4_NL]), sigma2);
        let d = scale_at(lanes, xb, &w);
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    y.d = Half::from_f32(d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    y.scales_l = [0; QK_K / 64];
    let mut l = [0u8; QK_K];
    for ib in 0..NB {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        l[ib * QK4_NL..(ib + 1) * QK4_NL].copy_from_slice(&indices_at(lanes, &xbs[ib], idl));
        let ls = (ls + 32) as u8;
        y.scales_l[ib / 2] |= (ls & 0xf) << (4 * (ib % 2));
        scales_h |= ((ls >> 4) as u16) << (2 * (ib % 8));
    }
    y.scales_h = scales_h.to_le_bytes();
    for i in 0..NB {
        pack(&l[32 * i..32 * i + 32], &mut y.qs[16 * i..16 * i + 16]);
    }
}

impl BlockFormat for IQ4XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const BLOCK_WEIGHTS: usize = QK_K;
    const BLOCK_BYTES: usize = size_of::<BlockIQ4XS>();
    const SIMD_PATHS: bool = true;

    fn quantize_row(src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        Self::quantize_row_at(Simd::active(), src, dst, imatrix)
    }

    fn quantize_row_at(simd: Simd, src: &[f32], dst: &mut [u8], imatrix: Option<&[f32]>) {
        let lanes = Lanes::of(simd);
        let (blocks, _) = src.as_chunks::<QK_K>();
        for (i, (x, y)) in blocks
            .iter()
            .zip(as_blocks_mut::<BlockIQ4XS>(dst).iter_mut())
            .enumerate()
        {
            quantize_block(lanes, x, y, imatrix.map(|q| &q[i * QK_K..(i + 1) * QK_K]));
        }
    }

    fn dequantize_row(src: &[u8], dst: &mut [f32]) {
        for (b, y) in as_blocks::<BlockIQ4XS>(src)
            .iter()
            .zip(dst.chunks_exact_mut(QK_K))
        {
            let d = b.d.to_f32();
            let scales_h = u16::from_le_bytes(b.scales_h);
            for ib in 0..NB {
                let ls = ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32
                    | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
                let dl = d * (ls - 32) as f32;
                let qs = &b.qs[16 * ib..16 * ib + 16];
                let y = &mut y[32 * ib..32 * ib + 32];
                for j in 0..16 {
                    y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
                    y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
                }
            }
        }
    }

    fn first_invalid_block(row: &[u8]) -> Option<usize> {
        as_blocks::<BlockIQ4XS>(row)
            .iter()
            .position(|b| b.d.is_non_finite())
    }
}
