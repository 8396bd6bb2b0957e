//! Scalar conversions between f32 and the 16-bit float formats, bit for bit as ggml does them.
//!
//! ggml converts with its own portable routines (`ggml_compute_fp32_to_fp16` and
//! `ggml_compute_fp32_to_bf16` in `ggml-impl.h`) rather than the CPU's instructions. Both round to
//! nearest even; they differ from other libraries only in how a NaN comes out, which is part of
//! the byte-for-byte contract, so they are ported here rather than taken from the `half` crate.

/// f32 to IEEE half, exactly as ggml's `ggml_compute_fp32_to_fp16`.
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// IEEE half to f32 (exact; every half is an f32).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    let exp_offset: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;

    let magic_mask: u32 = 126 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;

    let denormalized_cutoff: u32 = 1 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized_value.to_bits()
        } else {
            normalized_value.to_bits()
        };
    f32::from_bits(result)
}

/// f32 to bfloat16, round to nearest even, NaN forced quiet (ggml's `ggml_compute_fp32_to_bf16`).
#[inline]
pub fn f32_to_bf16(f: f32) -> u16 {
    let i = f.to_bits();
    if (i & 0x7fff_ffff) > 0x7f80_0000 {
        return ((i >> 16) | 64) as u16;
    }
    (i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16
}

/// bfloat16 to f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// True when a half is infinite or NaN (exponent all ones).
#[inline]
pub fn f16_is_non_finite(h: u16) -> bool {
    h & 0x7c00 == 0x7c00
}

/// True when a bfloat16 is infinite or NaN.
#[inline]
pub fn bf16_is_non_finite(h: u16) -> bool {
    h & 0x7f80 == 0x7f80
}

/// Reads a little-endian u16 at `at`.
#[inline]
pub(crate) fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// A little-endian IEEE half as stored in a block: two bytes, alignment 1, so that a block
/// struct holding it can be viewed at any byte offset (a Q4_0 block is 18 bytes; GGUF tensors
/// and rows start at any block boundary).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Half(pub [u8; 2]);

impl Half {
    /// The half nearest `v`, rounded as ggml does ([`f32_to_f16`]).
    #[inline]
    pub fn from_f32(v: f32) -> Half {
        Half(f32_to_f16(v).to_le_bytes())
    }

    /// The stored bits.
    #[inline]
    pub fn bits(self) -> u16 {
        u16::from_le_bytes(self.0)
    }

    /// The value as f32 (exact).
    #[inline]
    pub fn to_f32(self) -> f32 {
        f16_to_f32(self.bits())
    }

    /// True when the half is infinite or NaN.
    #[inline]
    pub fn is_non_finite(self) -> bool {
        f16_is_non_finite(self.bits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip_of_every_half_is_exact() {
        for h in 0..=u16::MAX {
            if f16_is_non_finite(h) && h & 0x03ff != 0 {
                continue; // NaNs: ggml canonicalises them to 0x7E00
            }
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "half {h:#06x}");
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even_like_ieee() {
        let mut x = 1.0e-8f32;
        while x < 70000.0 {
            for v in [x, -x, x * 1.000_03, x * 0.999_97] {
                assert_eq!(
                    f32_to_f16(v),
                    half::f16::from_f32(v).to_bits(),
                    "value {v:e}"
                );
            }
            x *= 1.0137;
        }
        assert_eq!(f32_to_f16(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16(1.0e6), 0x7C00);
    }

    #[test]
    fn bf16_matches_half_crate_for_finite_values() {
        let mut x = 1.0e-30f32;
        while x < 1.0e30 {
            assert_eq!(
                f32_to_bf16(x),
                half::bf16::from_f32(x).to_bits(),
                "value {x:e}"
            );
            x *= 1.31;
        }
    }
}
