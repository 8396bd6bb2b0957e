//! fp8 checkpoints (`quantization_config.quant_method = "fp8"`, as DeepSeek V3/R1 and the
//! Qwen3-FP8 releases ship): `F8_E4M3` weights, each with a `<name>_scale_inv` tensor of
//! scales, usually one per 128 x 128 block (`weight_block_size`).
//!
//! llama.cpp's converter (conversion/base.py `dequant_model`, `dequant_simple`) dequantizes
//! each weight as `weight.float() * scale.float()`, the scale repeated over its block (or,
//! without `weight_block_size`, broadcast from the end: one scale per tensor or per row): one
//! f32 multiplication of the exactly widened fp8 value, so the result is f32 and exact up to
//! that one rounding. kiln does the same multiplication per row while streaming (never the
//! whole tensor), so the dequantized rows are bit-identical to convert's.
//!
//! [`attach_scales`] pairs weights with their scales when a checkpoint is opened: the scale
//! tensors leave the tensor table and ride on their weights, a weight dequantizes only with its
//! scale, and every mismatch (a scale for no weight, an fp8 weight with no scale, a scale shape
//! the blocks do not give, another quant_method) is one error naming the tensor.

use super::safetensors::{to_f32, SrcDtype, SrcTensor};
use serde_json::Value as Json;

/// How a weight's scale tensor maps onto its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleLayout {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per row (rows counted across the outer dimensions).
    Row,
    /// One scale per `rows` x `cols` block of each [R, C] matrix: scale [.., ceil(R/rows),
    /// ceil(C/cols)].
    Block { rows: usize, cols: usize },
}

/// The scale of an fp8 weight.
#[derive(Clone, Debug)]
pub struct Fp8Scale {
    /// The `_scale_inv` tensor (F32, BF16 or F16).
    pub tensor: SrcTensor,
    pub layout: ScaleLayout,
}

/// The f32 value of an `F8_E4M3` (e4m3fn: no infinities, 0x7f/0xff NaN) byte, exactly.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = (b as u32 & 0x80) << 24;
    let exp = (b as u32 >> 3) & 0xf;
    let man = b as u32 & 0x7;
    let bits = if exp == 0xf && man == 0x7 {
        0x7fc0_0000
    } else if exp == 0 {
        if man == 0 {
            0
        } else {
            // Subnormal: man * 2^-9, renormalised.
            let shift = man.leading_zeros() - 28; // 1..=3 to bring the top bit to bit 3
            let m = (man << shift) & 0x7;
            let e = 127 - 6 - shift;
            (e << 23) | (m << 20)
        }
    } else {
        ((exp + 127 - 7) << 23) | (man << 20)
    };
    f32::from_bits(sign | bits)
}

/// The checkpoint's quantization, from config.json's `quantization_config`.
#[derive(Clone, Debug, PartialEq)]
pub enum Quantization {
    /// No `quantization_config` (or one without a quant_method): plain F32/F16/BF16 weights.
    None,
    /// `quant_method = "fp8"`, with `weight_block_size` when given.
    Fp8 { block: Option<[usize; 2]> },
}

/// Reads `quantization_config`; any quant_method but fp8 is an error naming it.
pub fn quantization(config: &Json) -> Result<Quantization, String> {
    let Some(qc) = config.get("quantization_config") else {
        return Ok(Quantization::None);
    };
    if qc.is_null() {
        return Ok(Quantization::None);
    }
    let Some(obj) = qc.as_object() else {
        return Err(format!("quantization_config is {qc}, not an object"));
    };
    let method = match obj.get("quant_method") {
        None | Some(Json::Null) => return Ok(Quantization::None),
        Some(Json::String(s)) => s.as_str(),
        Some(other) => {
            return Err(format!(
                "quantization_config.quant_method is {other}, not a string"
            ))
        }
    };
    // gpt-oss's released MXFP4 experts: its family reads the `*_blocks`/`*_scales` tensors
    // itself (src/arch/gptoss.rs checks the method and the tensors); nothing to pair here.
    if method == "mxfp4" {
        return Ok(Quantization::None);
    }
    if method != "fp8" {
        return Err(format!(
            "quantization_config.quant_method = {method:?}: kiln converts fp8 checkpoints (quant_method \"fp8\"), gpt-oss's MXFP4 release (\"mxfp4\") and unquantized F32/F16/BF16 ones, not {method:?}"
        ));
    }
    let block = match obj.get("weight_block_size") {
        None | Some(Json::Null) => None,
        Some(v) => {
            let dims: Option<Vec<usize>> = v.as_array().and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            });
            match dims.as_deref() {
                Some(&[r, c]) if r > 0 && c > 0 => Some([r, c]),
                _ => {
                    return Err(format!(
                        "quantization_config.weight_block_size is {v}, not two positive block sizes"
                    ))
                }
            }
        }
    };
    Ok(Quantization::Fp8 { block })
}

/// Whether a tensor's safetensors dtype is fp8 e4m3.
fn is_e4m3(t: &SrcTensor) -> bool {
    matches!(&t.dtype, Err(d) if d == "F8_E4M3") || t.dtype == Ok(SrcDtype::F8E4M3)
}

/// Pairs every fp8 weight with its `_scale_inv` tensor, as convert's `dequant_model` does for
/// quant_method fp8: the scales leave the table and ride on their weights (whose dtype becomes
/// [`SrcDtype::F8E4M3`]); the unused activation scales are dropped. `file_of` names a tensor's
/// file in messages. Without fp8 quantization the table is returned as it is.
pub fn attach_scales(
    q: &Quantization,
    tensors: Vec<SrcTensor>,
    file_of: impl Fn(&SrcTensor) -> String,
) -> Result<Vec<SrcTensor>, String> {
    let Quantization::Fp8 { block } = *q else {
        return Ok(tensors);
    };
    let mut scales: std::collections::HashMap<String, SrcTensor> = Default::default();
    let mut rest = Vec::with_capacity(tensors.len());
    for t in tensors {
        if let Some(w) = t.name.strip_suffix("_scale_inv") {
            if scales.insert(w.to_string(), t.clone()).is_some() {
                return Err(format!("{}: tensor {} appears twice", file_of(&t), t.name));
            }
        } else if t.name.ends_with(".activation_scale") || t.name.ends_with("_activation_scale") {
            // convert drops these (unused).
        } else {
            rest.push(t);
        }
    }
    for w in rest.iter_mut() {
        let Some(s) = scales.remove(&w.name) else {
            if is_e4m3(w) {
                return Err(format!(
                    "{}: tensor {} is F8_E4M3 but has no {}_scale_inv (quant_method fp8 needs one scale tensor per fp8 weight)",
                    file_of(w),
                    w.name,
                    w.name
                ));
            }
            continue;
        };
        if !is_e4m3(w) {
            let d = match &w.dtype {
                Ok(d) => d.name().to_string(),
                Err(d) => d.clone(),
            };
            return Err(format!(
                "{}: tensor {} has the scale {} but is {d}, not F8_E4M3",
                file_of(w),
                w.name,
                s.name
            ));
        }
        match s.dtype {
            Ok(SrcDtype::F32 | SrcDtype::BF16 | SrcDtype::F16) => {}
            _ => {
                let d = match &s.dtype {
                    Ok(d) => d.name().to_string(),
                    Err(d) => d.clone(),
                };
                return Err(format!(
                    "{}: scale tensor {} is {d}; kiln reads F32, BF16 and F16 scales",
                    file_of(&s),
                    s.name
                ));
            }
        }
        let layout = scale_layout(&w.shape, &s.shape, block).map_err(|want| {
            format!(
                "{}: scale tensor {} has shape {:?}, but its weight {} of shape {:?} needs {want}",
                file_of(&s),
                s.name,
                s.shape,
                w.name,
                w.shape
            )
        })?;
        w.dtype = Ok(SrcDtype::F8E4M3);
        w.scale = Some(Box::new(Fp8Scale { tensor: s, layout }));
    }
    if let Some((w, s)) = scales.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(format!(
            "{}: scale tensor {} has no weight {w} in the checkpoint",
            file_of(&s),
            s.name
        ));
    }
    Ok(rest)
}

/// The layout of a scale of shape `scale` for a weight of shape `weight` (PyTorch order), or
/// Err with the shape(s) it should have.
fn scale_layout(
    weight: &[usize],
    scale: &[usize],
    block: Option<[usize; 2]>,
) -> Result<ScaleLayout, String> {
    let n = weight.len();
    if n < 2 {
        return Err("a weight of at least 2 dimensions (fp8 scales cover matrices)".into());
    }
    let numel = scale.iter().fold(1usize, |a, &d| a.saturating_mul(d));
    match block {
        Some([br, bc]) => {
            let mut want = weight[..n - 2].to_vec();
            want.push(weight[n - 2].div_ceil(br));
            want.push(weight[n - 1].div_ceil(bc));
            if scale == want.as_slice() {
                Ok(ScaleLayout::Block { rows: br, cols: bc })
            } else {
                Err(format!(
                    "{want:?} (one scale per {br} x {bc} block of weight_block_size)"
                ))
            }
        }
        None => {
            let per_row = scale == &weight[..n - 1]
                || (scale.len() == n && scale[..n - 1] == weight[..n - 1] && scale[n - 1] == 1);
            if numel == 1 && scale.len() <= n {
                Ok(ScaleLayout::Tensor)
            } else if per_row {
                Ok(ScaleLayout::Row)
            } else {
                Err(format!(
                    "[1] (one per tensor) or {:?} (one per row), as there is no weight_block_size",
                    &weight[..n - 1]
                ))
            }
        }
    }
}

/// Decodes a scale tensor's bytes to f32 (its dtype was checked by [`attach_scales`]).
pub fn scale_values(s: &Fp8Scale, bytes: &[u8]) -> Vec<f32> {
    let dtype = s.tensor.dtype.clone().unwrap_or(SrcDtype::F32);
    let mut v = vec![0f32; bytes.len() / dtype.size()];
    to_f32(dtype, bytes, &mut v);
    v
}

/// The scale of element (`row`, `col`) of an fp8 weight of shape `shape` (rows counted across
/// the outer dimensions).
pub fn scale_at(
    layout: ScaleLayout,
    shape: &[usize],
    scales: &[f32],
    row: usize,
    col: usize,
) -> f32 {
    let n = shape.len();
    let i = match layout {
        ScaleLayout::Tensor => 0,
        ScaleLayout::Row => row,
        ScaleLayout::Block { rows: br, cols: bc } => {
            let r_per = shape[n - 2].max(1);
            let (outer, r) = (row / r_per, row % r_per);
            let (sr, sc) = (r_per.div_ceil(br), shape[n - 1].div_ceil(bc));
            outer * sr * sc + (r / br) * sc + col / bc
        }
    };
    scales.get(i).copied().unwrap_or(f32::NAN)
}

/// Dequantizes source row `row` of an fp8 weight of shape `shape` (rows counted across the
/// outer dimensions, each `codes.len()` wide) into `out`: `e4m3(code) * scale`, one f32
/// multiplication, as convert's `weight.float() * scale`.
pub fn dequant_row(
    layout: ScaleLayout,
    shape: &[usize],
    scales: &[f32],
    row: usize,
    codes: &[u8],
    out: &mut [f32],
) {
    let n = shape.len();
    let cols = shape[n - 1];
    let at = |i: usize| scales.get(i).copied().unwrap_or(f32::NAN);
    match layout {
        ScaleLayout::Tensor => {
            let s = at(0);
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = e4m3_to_f32(c) * s;
            }
        }
        ScaleLayout::Row => {
            let s = at(row);
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = e4m3_to_f32(c) * s;
            }
        }
        ScaleLayout::Block { rows: br, cols: bc } => {
            let r_per = shape[n - 2].max(1);
            let (outer, r) = (row / r_per, row % r_per);
            let (sr, sc) = (r_per.div_ceil(br), cols.div_ceil(bc));
            let base = outer * sr * sc + (r / br) * sc;
            for (j, (o, &c)) in out.iter_mut().zip(codes).enumerate() {
                *o = e4m3_to_f32(c) * at(base + j / bc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_decodes_every_code() {
        // Against the format's definition, in f64: (-1)^s 2^(e-7) (1 + m/8), subnormals
        // 2^-6 (m/8), 0x7f/0xff NaN.
        for b in 0..=255u8 {
            let (s, e, m) = (b >> 7, (b >> 3) & 15, b & 7);
            let v = e4m3_to_f32(b);
            if e == 15 && m == 7 {
                assert!(v.is_nan(), "{b:#x}");
                continue;
            }
            let mag = if e == 0 {
                (m as f64 / 8.0) * 2f64.powi(-6)
            } else {
                (1.0 + m as f64 / 8.0) * 2f64.powi(e as i32 - 7)
            };
            let want = if s == 1 { -mag } else { mag };
            assert_eq!(v as f64, want, "{b:#x}");
            assert_eq!(v.is_sign_negative(), s == 1, "{b:#x}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
    }

    #[test]
    fn scale_shapes() {
        let b = Some([128, 128]);
        assert_eq!(
            scale_layout(&[300, 256], &[3, 2], b),
            Ok(ScaleLayout::Block {
                rows: 128,
                cols: 128
            })
        );
        assert!(scale_layout(&[300, 256], &[2, 2], b).is_err());
        assert!(scale_layout(&[256], &[2], b).is_err());
        assert_eq!(
            scale_layout(&[4, 8, 256], &[4, 1, 2], b).map(|_| ()),
            Ok(())
        );
        assert_eq!(
            scale_layout(&[300, 256], &[1], None),
            Ok(ScaleLayout::Tensor)
        );
        assert_eq!(
            scale_layout(&[300, 256], &[300, 1], None),
            Ok(ScaleLayout::Row)
        );
        assert!(scale_layout(&[300, 256], &[3, 2], None).is_err());
    }

    #[test]
    fn other_quant_methods_are_named() {
        let c = serde_json::json!({"quantization_config": {"quant_method": "gptq", "bits": 4}});
        let e = quantization(&c).unwrap_err();
        assert!(e.contains("\"gptq\""), "{e}");
        let c = serde_json::json!({"quantization_config": {"quant_method": "fp8",
            "weight_block_size": [128, 128]}});
        assert_eq!(
            quantization(&c),
            Ok(Quantization::Fp8 {
                block: Some([128, 128])
            })
        );
    }
}
