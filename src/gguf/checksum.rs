//! kiln's integrity check in the files it writes: two metadata keys, last in the header.
//!
//! - `kiln.checksum.layout_xxh3_64` (u64): XXH3-64 of the tensor table (each tensor's name,
//!   dimensions and ggml type, in file order). It tells a stale check apart from damage: a
//!   tool that rewrites the file (llama-quantize copies every key) changes the table.
//! - `kiln.checksum.xxh3_64` (array of u64): XXH3-64 of each tensor's data bytes (padding
//!   excluded), in the order of the tensor table.
//!
//! Unknown keys are ignored by llama.cpp (and so by ollama and LM Studio), so checked files load
//! everywhere. [`GgufWriter`](super::writer::GgufWriter) fills in the values while it writes;
//! `kiln inspect --verify` recomputes them.

use super::reader::GgufFile;
use super::types::TypeId;
use super::value::{Array, Metadata, Value};
use anyhow::{bail, Result};
use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

pub const LAYOUT_KEY: &str = "kiln.checksum.layout_xxh3_64";
pub const DATA_KEY: &str = "kiln.checksum.xxh3_64";

/// The streaming hash of one tensor's data.
pub type Hasher = Xxh3Default;

/// Hash of the tensor table: names, dims and types in file order.
pub fn layout_hash<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u64], TypeId)>) -> u64 {
    let mut h = Xxh3Default::new();
    for (name, dims, ty) in tensors {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            h.update(&d.to_le_bytes());
        }
        h.update(&ty.0.to_le_bytes());
    }
    h.digest()
}

/// Adds the two keys, last, with placeholder values for `n_tensors` tensors (the writer fills
/// them in); removes a check carried over from an input file.
pub fn reserve(md: &mut Metadata, n_tensors: usize) {
    remove(md);
    md.set_last(LAYOUT_KEY, Value::U64(0));
    md.set_last(DATA_KEY, Value::Array(Array::U64(vec![0; n_tensors])));
}

/// Removes the check's keys (an input's check does not describe the output).
pub fn remove(md: &mut Metadata) {
    md.remove(LAYOUT_KEY);
    md.remove(DATA_KEY);
}

/// Whether `md` ends with the two keys reserved for `n_tensors` tensors.
pub fn is_reserved(md: &Metadata, n_tensors: usize) -> bool {
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    keys.ends_with(&[LAYOUT_KEY, DATA_KEY])
        && matches!(md.get(DATA_KEY), Some(Value::Array(Array::U64(v))) if v.len() == n_tensors)
}

/// What verifying a file found.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Every tensor matches.
    Ok { tensors: usize, bytes: u64 },
    /// The file carries no kiln check.
    Absent,
    /// The check describes another tensor table: the file was rewritten by a tool that kept
    /// kiln's keys, so there is nothing to check it against.
    Stale,
}

/// Recomputes the check of an open file. Damage is an error naming the first damaged tensor
/// and its byte range in the file.
pub fn verify(g: &GgufFile) -> Result<Verdict> {
    let md = g.metadata();
    let (Some(layout), Some(data)) = (md.get(LAYOUT_KEY), md.get(DATA_KEY)) else {
        return Ok(Verdict::Absent);
    };
    let (Value::U64(layout), Value::Array(Array::U64(data))) = (layout, data) else {
        bail!(
            "{}: {LAYOUT_KEY} / {DATA_KEY} have the wrong value types (damaged header?)",
            g.path.display()
        );
    };
    let tensors = g.tensors();
    let table = layout_hash(tensors.iter().map(|t| (t.name.as_str(), &t.dims[..], t.ty)));
    if data.len() != tensors.len() || table != *layout {
        return Ok(Verdict::Stale);
    }
    let bad = tensors
        .par_iter()
        .zip(data.par_iter())
        .enumerate()
        .filter(|(_, (t, &want))| xxh3_64(g.data(t)) != want)
        .map(|(i, _)| i)
        .min();
    if let Some(i) = bad {
        let t = &tensors[i];
        let start = g.header.data_offset + t.offset;
        bail!(
            "{}: tensor {} (bytes {start}..{} of the file) does not match the checksum kiln wrote: the file is damaged",
            g.path.display(),
            t.name,
            start + t.bytes
        );
    }
    Ok(Verdict::Ok {
        tensors: tensors.len(),
        bytes: tensors.iter().map(|t| t.bytes).sum(),
    })
}
