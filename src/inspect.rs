//! `kiln inspect`: a GGUF file's metadata and tensors, as text or JSON.

use crate::gguf::checksum::Verdict;
use crate::gguf::{Array, GgufFile, Value};
use anyhow::Result;
use serde_json::{json, Value as Json};
use std::fmt::Write;

fn value_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::Str(s) => json!(s),
        Value::Array(a) => array_json(a),
    }
}

fn array_json(a: &Array) -> Json {
    match a {
        Array::U8(v) => json!(v),
        Array::I8(v) => json!(v),
        Array::U16(v) => json!(v),
        Array::I16(v) => json!(v),
        Array::U32(v) => json!(v),
        Array::I32(v) => json!(v),
        Array::U64(v) => json!(v),
        Array::I64(v) => json!(v),
        Array::F32(v) => json!(v),
        Array::F64(v) => json!(v),
        Array::Bool(v) => json!(v),
        Array::Str(v) => json!(v),
        Array::Array(v) => Json::Array(v.iter().map(array_json).collect()),
    }
}

/// Totals: parameters, tensor bytes, bits per weight.
pub fn totals(g: &GgufFile) -> (u64, u64, f64) {
    let n: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    let bytes: u64 = g.tensors().iter().map(|t| t.bytes).sum();
    let bpw = if n > 0 {
        bytes as f64 * 8.0 / n as f64
    } else {
        0.0
    };
    (n, bytes, bpw)
}

/// One JSON document: file, version, metadata, tensors (name, shape, type, offset, bytes),
/// totals.
pub fn to_json(g: &GgufFile) -> Json {
    let (n, bytes, bpw) = totals(g);
    let md: serde_json::Map<String, Json> = g
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_string(), value_json(v)))
        .collect();
    let tensors: Vec<Json> = g
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "shape": t.dims,
                "type": t.ty.label(),
                "offset": g.header.data_offset + t.offset,
                "bytes": t.bytes,
            })
        })
        .collect();
    json!({
        "file": g.path.display().to_string(),
        "version": g.header.version,
        "file_size": g.file_size(),
        "n_params": n,
        "tensor_bytes": bytes,
        "bits_per_weight": bpw,
        "alignment": g.header.alignment,
        "metadata": md,
        "tensors": tensors,
    })
}

/// The human-readable listing.
pub fn to_text(g: &GgufFile) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "{}: GGUF v{}, {} bytes",
        g.path.display(),
        g.header.version,
        g.file_size()
    )?;
    writeln!(s, "\nmetadata ({} keys):", g.metadata().len())?;
    for (k, v) in g.metadata().iter() {
        writeln!(s, "  {k} = {v}")?;
    }
    let w = g
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    writeln!(s, "\ntensors ({}):", g.tensors().len())?;
    writeln!(
        s,
        "  {:<w$}  {:>22}  {:<8}  {:>12}",
        "name", "shape", "type", "bytes"
    )?;
    for t in g.tensors() {
        let shape = t
            .dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        writeln!(
            s,
            "  {:<w$}  {:>22}  {:<8}  {:>12}",
            t.name,
            shape,
            t.ty.label(),
            t.bytes
        )?;
    }
    let (n, bytes, bpw) = totals(g);
    writeln!(
        s,
        "\n{n} parameters, {bytes} bytes of tensor data ({:.2} MiB), {bpw:.3} bits per weight",
        bytes as f64 / 1048576.0
    )?;
    Ok(s)
}

/// One line on what `--verify` found.
pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Ok { tensors, bytes } => format!(
            "checksum: ok ({tensors} tensors, {bytes} bytes of tensor data match what kiln wrote)"
        ),
        Verdict::Absent => {
            "checksum: none (not written by kiln, or with --no-checksum); the header reads correctly, the data was not checked".into()
        }
        Verdict::Stale => "checksum: not applicable (another tool rewrote this file and kept kiln's checksum keys, which describe other tensors); the header reads correctly, the data was not checked".into(),
    }
}

/// `--verify`'s finding in `--json` output.
pub fn verdict_json(v: &Verdict) -> Json {
    match v {
        Verdict::Ok { tensors, bytes } => {
            serde_json::json!({"status": "ok", "tensors": tensors, "bytes": bytes})
        }
        Verdict::Absent => serde_json::json!({"status": "absent"}),
        Verdict::Stale => serde_json::json!({"status": "stale"}),
    }
}
