//! Importance matrices from llama-imatrix, in both of its file formats, turned into the
//! per-column weights llama-quantize hands to ggml (tools/quantize/quantize.cpp,
//! `load_imatrix`): GGUF files hold `<tensor>.in_sum2` and `<tensor>.counts`, weight =
//! sum / count per matrix; legacy files hold (sum / count) * ncall per tensor, weight =
//! value / ncall.

use crate::gguf::{Array, GgufFile, TypeId, Value};
use crate::overrides::{KvOverride, KvValue};
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use std::collections::HashMap;
use std::path::Path;

/// Tensor name to importance weights.
pub type Imatrix = HashMap<String, Vec<f32>>;

pub fn load(path: &Path) -> Result<Imatrix> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let m = if bytes.starts_with(b"GGUF") {
        drop(bytes);
        load_gguf(path)?
    } else {
        parse_legacy(&bytes)
            .with_context(|| format!("{}: not a valid imatrix file", path.display()))?
    };
    for (name, v) in &m {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: entry {name} holds a non-finite value {} at column {i}",
                path.display(),
                v[i]
            );
        }
    }
    Ok(m)
}

fn load_gguf(path: &Path) -> Result<Imatrix> {
    let g = GgufFile::open(path)?;
    let f32_of = |name: &str| -> Result<Option<Vec<f32>>> {
        let Some(t) = g.find(name) else {
            return Ok(None);
        };
        if t.ty != TypeId::of(GgmlType::F32) {
            bail!("{}: {name} is {}, not f32", path.display(), t.ty.label());
        }
        Ok(Some(
            g.data(t)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    };
    let mut out = Imatrix::new();
    for t in g.tensors() {
        let Some(base) = t.name.strip_suffix(".in_sum2") else {
            continue;
        };
        let sums = f32_of(&t.name)?.unwrap_or_default();
        let Some(counts) = f32_of(&format!("{base}.counts"))? else {
            bail!("{}: {base} has sums but no counts", path.display());
        };
        if counts.is_empty() || sums.len() % counts.len() != 0 {
            bail!(
                "{}: {base}: {} sums do not split into {} matrices",
                path.display(),
                sums.len(),
                counts.len()
            );
        }
        // llama-imatrix writes in_sum2 as [n, matrices] (1-D for one matrix) and counts as [1,
        // matrices]: sums shaped for another number of matrices (experts) than there are
        // counts are a damaged file, not something to reinterpret.
        let n_mat = t.dims.get(1).copied().unwrap_or(1);
        if t.dims.len() <= 2 && n_mat != counts.len() as u64 {
            bail!(
                "{}: {base}: in_sum2 holds sums for {n_mat} matrices (experts) of {} columns, but there are {} counts",
                path.display(),
                t.dims[0],
                counts.len()
            );
        }
        let ne0 = sums.len() / counts.len();
        let mut e = vec![0f32; sums.len()];
        for (j, c) in counts.iter().enumerate() {
            let count = c.round() as i64 as f32;
            for i in 0..ne0 {
                e[j * ne0 + i] = if count > 0.0 {
                    sums[j * ne0 + i] / count
                } else {
                    1.0
                };
            }
        }
        out.insert(base.to_string(), e);
    }
    // llama.cpp refuses counts without sums too ("mismatched sums and counts").
    if let Some(t) = g.tensors().iter().find(|t| {
        t.name
            .strip_suffix(".counts")
            .is_some_and(|base| !out.contains_key(base))
    }) {
        bail!(
            "{}: {} has no matching .in_sum2 (mismatched sums and counts)",
            path.display(),
            t.name
        );
    }
    if out.is_empty() {
        bail!(
            "{}: no importance data (no *.in_sum2 tensors)",
            path.display()
        );
    }
    Ok(out)
}

/// The keys llama-quantize adds (as kv overrides, after the user's) when it quantizes with the
/// importance matrix in `path`, of which `n_entries` entries are used (after
/// --include-weights/--exclude-weights): `quantize.imatrix.file` (the path as given),
/// `quantize.imatrix.dataset` (the first dataset the file names, if any),
/// `quantize.imatrix.entries_count`, and `quantize.imatrix.chunks_count` (when the file says
/// a positive number). Strings are cut to 127 bytes, as llama.cpp's override values are.
pub fn quantize_keys(path: &Path, n_entries: usize) -> Result<Vec<KvOverride>> {
    let (datasets, chunks) = provenance(path)?;
    let cut = |s: &str| -> String {
        let mut n = s.len().min(127);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s[..n].to_string()
    };
    let mut out = vec![KvOverride {
        key: "quantize.imatrix.file".into(),
        value: KvValue::Str(cut(&path.to_string_lossy())),
    }];
    if let Some(d) = datasets.first() {
        out.push(KvOverride {
            key: "quantize.imatrix.dataset".into(),
            value: KvValue::Str(cut(d)),
        });
    }
    out.push(KvOverride {
        key: "quantize.imatrix.entries_count".into(),
        value: KvValue::Int(n_entries as i64),
    });
    if chunks > 0 {
        out.push(KvOverride {
            key: "quantize.imatrix.chunks_count".into(),
            value: KvValue::Int(chunks as i64),
        });
    }
    Ok(out)
}

/// The datasets and chunk count an imatrix file records (common's `common_imatrix_load`): for a
/// GGUF file its `imatrix.datasets` and `imatrix.chunk_count` keys, for a legacy file the
/// optional trailer after the entries (an i32 chunk count, then an i32 length and the dataset
/// name).
fn provenance(path: &Path) -> Result<(Vec<String>, i32)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.starts_with(b"GGUF") {
        drop(bytes);
        let g = GgufFile::open(path)?;
        let md = g.metadata();
        let datasets = match md.get("imatrix.datasets") {
            Some(Value::Array(Array::Str(v))) => v.clone(),
            _ => Vec::new(),
        };
        let chunks = md
            .get("imatrix.chunk_count")
            .and_then(|v| v.as_int())
            .map_or(0, |n| n as u32 as i32);
        return Ok((datasets, chunks));
    }
    let (_, mut p) = parse_legacy_at(&bytes)
        .with_context(|| format!("{}: not a valid imatrix file", path.display()))?;
    // C reads into zero-initialised ints and keeps what a short read left there (a short read
    // ends the trailer: nothing is left for what follows).
    let int = |p: &mut usize| -> Option<i32> {
        let rest = bytes.get(*p..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        let mut v = [0u8; 4];
        let n = rest.len().min(4);
        v[..n].copy_from_slice(&rest[..n]);
        *p += n;
        Some(i32::from_le_bytes(v))
    };
    let Some(chunks) = int(&mut p) else {
        return Ok((Vec::new(), 0));
    };
    let mut datasets = Vec::new();
    if let Some(len) = int(&mut p) {
        if len > 0 {
            if let Some(name) = bytes.get(p..p + len as usize) {
                let name = name.split(|&c| c == 0).next().unwrap_or_default();
                datasets.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok((datasets, chunks))
}

/// The legacy binary format (llama-imatrix before GGUF).
pub fn parse_legacy(b: &[u8]) -> Result<Imatrix> {
    parse_legacy_at(b).map(|(m, _)| m)
}

/// [`parse_legacy`], and the offset where the entries end.
fn parse_legacy_at(b: &[u8]) -> Result<(Imatrix, usize)> {
    // `n` bytes at `*p`, or an error saying where the file ends.
    let take = |p: &mut usize, n: usize, what: &dyn Fn() -> String| -> Result<&[u8]> {
        let s = b
            .get(*p..p.saturating_add(n))
            .with_context(|| format!("truncated at offset {p} reading {}", what()))?;
        *p += n;
        Ok(s)
    };
    let int = |p: &mut usize, what: &dyn Fn() -> String| -> Result<i32> {
        let s = take(p, 4, what)?;
        Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut p = 0usize;
    let n = int(&mut p, &|| "the entry count".into())?;
    if n < 1 {
        bail!("entry count is {n}");
    }
    let mut out = Imatrix::new();
    for k in 0..n {
        let len = int(&mut p, &|| format!("name length of entry {k}"))?;
        if len < 0 {
            bail!("entry {k}: negative name length");
        }
        let name = take(&mut p, len as usize, &|| format!("the name of entry {k}"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let ncall = int(&mut p, &|| format!("call count of entry {k}"))?;
        let nval = int(&mut p, &|| format!("value count of entry {k}"))?;
        if nval < 1 {
            bail!("entry {name}: {nval} values");
        }
        let bytes = take(&mut p, nval as usize * 4, &|| {
            format!("the values of {name}")
        })?;
        let vals: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .map(|x| {
                if ncall > 0 {
                    x / ncall as i64 as f32
                } else {
                    x
                }
            })
            .collect();
        out.insert(name, vals);
    }
    Ok((out, p))
}

/// The legacy format's bytes for `(name, ncall, stored values)` entries, the inverse of
/// [`parse_legacy`] (without the optional trailing chunk count and dataset name). Values are
/// written as stored: llama-imatrix stored (sum / count) * ncall.
pub fn encode_legacy(entries: &[(&str, i32, &[f32])]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
    for (name, ncall, vals) in entries {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&ncall.to_le_bytes());
        b.extend_from_slice(&(vals.len() as i32).to_le_bytes());
        for v in *vals {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_values_are_divided_by_the_call_count() {
        let b = encode_legacy(&[("blk.0.attn_q.weight", 4, &[8.0, 2.0]), ("x", 0, &[3.0])]);
        let m = parse_legacy(&b).unwrap();
        assert_eq!(m["blk.0.attn_q.weight"], vec![2.0, 0.5]);
        assert_eq!(m["x"], vec![3.0]);
    }

    #[test]
    fn truncated_legacy_files_are_errors_at_every_cut() {
        let b = encode_legacy(&[("blk.0.attn_q.weight", 4, &[8.0, 2.0, 1.0])]);
        for cut in 0..b.len() {
            assert!(parse_legacy(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
