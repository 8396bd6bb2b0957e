//! llama.cpp's split GGUF files (`llama-gguf-split`, `llama-quantize --keep-split`): a model in
//! `NAME-00001-of-0000N.gguf` ... `NAME-0000N-of-0000N.gguf`, each a complete GGUF file. The
//! first shard holds all the metadata; every shard holds `split.no` (u16, from 0),
//! `split.count` (u16) and `split.tensors.count` (i32, the tensors of all shards) after it, and
//! its own tensors. llama.cpp loads the model from the first shard and finds the others by name.
//!
//! Writing: [`assign`] cuts a tensor list as `llama-gguf-split --split` does, [`ShardedWriter`]
//! writes each shard as [`GgufWriter`] writes a file (temporary file, read back, renamed).
//! Reading: [`open_shards`] finds and checks every shard from the first.

use super::checksum;
use super::reader::{GgufFile, DEFAULT_ALIGNMENT};
use super::value::{Metadata, Value};
use super::writer::{GgufWriter, TensorEntry};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const SPLIT_NO: &str = "split.no";
pub const SPLIT_COUNT: &str = "split.count";
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// Where the output is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitLimit {
    /// `--split-max-size`: tensor data per shard (each tensor padded to 32 bytes; metadata not
    /// counted), in bytes.
    Bytes(u64),
    /// `--split-max-tensors`.
    Tensors(usize),
}

/// `--split-max-size` as llama-gguf-split reads it: a positive whole number followed by `M`
/// (10^6 bytes) or `G` (10^9 bytes).
pub fn parse_size(s: &str) -> Result<u64> {
    let (num, unit) = match s.chars().last() {
        Some('M') => (&s[..s.len() - 1], 1_000_000u64),
        Some('G') => (&s[..s.len() - 1], 1_000_000_000u64),
        _ => bail!(
            "--split-max-size {s:?}: give a size in M (megabytes) or G (gigabytes), as llama-gguf-split takes it (500M, 4G)"
        ),
    };
    let n: u64 = num.parse().ok().filter(|&n| n > 0).with_context(|| {
        format!("--split-max-size {s:?}: the size must be a positive whole number")
    })?;
    n.checked_mul(unit)
        .with_context(|| format!("--split-max-size {s:?}: too large"))
}

/// The shard of each tensor, in order: llama-gguf-split's `split_strategy` (a new shard when
/// the tensor would take the current one past the byte limit, or every N tensors). A tensor
/// larger than the byte limit alone is an error, as there.
pub fn assign(tensors: &[TensorEntry], limit: SplitLimit) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(tensors.len());
    let (mut shard, mut size, mut in_shard) = (0usize, 0u64, 0usize);
    for (i, t) in tensors.iter().enumerate() {
        let n = t.bytes.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        let cut = match limit {
            SplitLimit::Bytes(max) => size + n > max,
            SplitLimit::Tensors(k) => i > 0 && i % k.max(1) == 0,
        };
        if cut {
            if in_shard == 0 {
                bail!(
                    "--split-max-size: tensor {} alone is {} bytes, over the limit of {} bytes per shard",
                    t.name,
                    t.bytes,
                    match limit {
                        SplitLimit::Bytes(m) => m,
                        SplitLimit::Tensors(_) => 0,
                    }
                );
            }
            shard += 1;
            size = n;
            in_shard = 1;
        } else {
            size += n;
            in_shard += 1;
        }
        out.push(shard);
    }
    Ok(out)
}

/// `PREFIX-0000i-of-0000n.gguf` (llama_split_path, i from 0) for an output named
/// `PREFIX.gguf` (or `PREFIX`).
pub fn shard_path(target: &Path, i: usize, n: usize) -> PathBuf {
    let name = target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = name.strip_suffix(".gguf").unwrap_or(&name);
    target.with_file_name(format!("{prefix}-{:05}-of-{:05}.gguf", i + 1, n))
}

/// Shard `i` of `n`'s metadata: the whole of `md` in the first shard, nothing in the others,
/// then the three split keys (and kiln's checksum of the shard's own tensors last, when `md`
/// carries one).
pub fn shard_metadata(
    md: &Metadata,
    i: usize,
    n: usize,
    n_total: usize,
    n_here: usize,
) -> Metadata {
    let with_checksum = md.get(checksum::LAYOUT_KEY).is_some();
    let mut m = if i == 0 { md.clone() } else { Metadata::new() };
    checksum::remove(&mut m);
    for k in [SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS_COUNT] {
        m.remove(k);
    }
    m.set(SPLIT_NO, Value::U16(i as u16));
    m.set(SPLIT_COUNT, Value::U16(n as u16));
    m.set(SPLIT_TENSORS_COUNT, Value::I32(n_total as i32));
    if with_checksum {
        checksum::reserve(&mut m, n_here);
    }
    m
}

/// How one output is cut into shards: the shard of each tensor (in the output's order; the
/// shards' tensors are contiguous runs of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shards {
    pub of: Vec<usize>,
}

impl Shards {
    pub fn count(&self) -> usize {
        self.of.iter().max().map_or(1, |m| m + 1)
    }

    /// The file of each shard for an output named `target`.
    pub fn paths(&self, target: &Path) -> Vec<PathBuf> {
        let n = self.count();
        (0..n).map(|i| shard_path(target, i, n)).collect()
    }
}

/// Writes one output, whole or in shards, tensor data in header order (see [`GgufWriter`]).
pub struct ShardedWriter {
    writers: Vec<GgufWriter>,
    shard_of: Vec<usize>,
    current: usize,
    paths: Vec<PathBuf>,
}

impl ShardedWriter {
    pub fn create(
        target: &Path,
        force: bool,
        md: &Metadata,
        tensors: Vec<TensorEntry>,
        shards: Option<&Shards>,
    ) -> Result<Self> {
        let Some(shards) = shards else {
            let n = tensors.len();
            return Ok(ShardedWriter {
                writers: vec![GgufWriter::create(target, force, md, tensors)?],
                shard_of: vec![0; n],
                current: 0,
                paths: vec![target.to_path_buf()],
            });
        };
        if shards.of.len() != tensors.len() || shards.of.windows(2).any(|w| w[1] < w[0]) {
            bail!("internal: shards must be contiguous runs of the output's tensors");
        }
        let n = shards.count();
        if n > u16::MAX as usize {
            bail!("{n} shards: a split GGUF holds at most 65535");
        }
        let paths = shards.paths(target);
        for p in &paths {
            super::writer::check_target(p, force)?;
        }
        let mut writers = Vec::with_capacity(n);
        for (i, p) in paths.iter().enumerate() {
            let mine: Vec<TensorEntry> = tensors
                .iter()
                .zip(&shards.of)
                .filter(|(_, &s)| s == i)
                .map(|(t, _)| t.clone())
                .collect();
            if mine.is_empty() {
                bail!("internal: shard {} of {n} has no tensor", i + 1);
            }
            let m = shard_metadata(md, i, n, tensors.len(), mine.len());
            writers.push(GgufWriter::create(p, force, &m, mine)?);
        }
        Ok(ShardedWriter {
            writers,
            shard_of: shards.of.clone(),
            current: 0,
            paths,
        })
    }

    fn writer(&mut self) -> Result<&mut GgufWriter> {
        let s = *self
            .shard_of
            .get(self.current)
            .context("internal: data written past the last tensor")?;
        Ok(&mut self.writers[s])
    }

    /// Appends data of the current tensor.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer()?.write(bytes)
    }

    /// Ends the current tensor.
    pub fn end_tensor(&mut self) -> Result<()> {
        self.writer()?.end_tensor()?;
        self.current += 1;
        Ok(())
    }

    /// The files it writes.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Finishes every shard (each read back and renamed into place).
    pub fn finish(self) -> Result<()> {
        for w in self.writers {
            w.finish()?;
        }
        Ok(())
    }
}

/// A split GGUF's shards, opened from the first: every `NAME-0000i-of-0000N.gguf` beside it,
/// each checked to say it is shard i of N. A file without split keys is one shard.
pub fn open_shards(first: &Path) -> Result<Vec<GgufFile>> {
    let g = GgufFile::open(first)?;
    let md = g.metadata();
    let Some(count) = md.get(SPLIT_COUNT) else {
        return Ok(vec![g]);
    };
    let u16_of = |v: &Value| match v {
        Value::U16(x) => Some(*x as usize),
        _ => None,
    };
    let n = u16_of(count).with_context(|| {
        format!(
            "{}: {SPLIT_COUNT} is not a u16 (damaged split header?)",
            first.display()
        )
    })?;
    let no = md.get(SPLIT_NO).and_then(u16_of).with_context(|| {
        format!(
            "{}: {SPLIT_COUNT} = {n} but no u16 {SPLIT_NO}",
            first.display()
        )
    })?;
    if n <= 1 {
        return Ok(vec![g]);
    }
    if no != 0 {
        bail!(
            "{}: this is shard {} of {n} ({SPLIT_NO} = {no}); give the first shard, {}",
            first.display(),
            no + 1,
            first_shard_name(first, no, n)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "NAME-00001-of-...gguf".into())
        );
    }
    let prefix = split_prefix(first, 0, n).with_context(|| {
        format!(
            "{}: {SPLIT_COUNT} = {n}, but the file is not named NAME-00001-of-{n:05}.gguf, so its other shards cannot be found",
            first.display()
        )
    })?;
    let total = match md.get(SPLIT_TENSORS_COUNT) {
        Some(Value::I32(t)) if *t >= 0 => Some(*t as usize),
        _ => None,
    };
    let mut out = vec![g];
    for i in 1..n {
        let p = prefix.with_file_name(format!(
            "{}-{:05}-of-{n:05}.gguf",
            prefix.file_name().unwrap_or_default().to_string_lossy(),
            i + 1
        ));
        if !p.exists() {
            bail!(
                "{}: shard {} of {n} is missing ({} not found)",
                first.display(),
                i + 1,
                p.display()
            );
        }
        let s = GgufFile::open(&p)?;
        let sm = s.metadata();
        let sn = sm.get(SPLIT_COUNT).and_then(u16_of);
        let si = sm.get(SPLIT_NO).and_then(u16_of);
        if sn != Some(n) || si != Some(i) {
            bail!(
                "{}: says it is shard {} of {} ({SPLIT_NO} = {}, {SPLIT_COUNT} = {}), but by its name it is shard {} of {n}",
                p.display(),
                si.map_or("?".into(), |x| (x + 1).to_string()),
                sn.map_or("?".into(), |x| x.to_string()),
                si.map_or("missing".into(), |x| x.to_string()),
                sn.map_or("missing".into(), |x| x.to_string()),
                i + 1
            );
        }
        out.push(s);
    }
    let found: usize = out.iter().map(|g| g.tensors().len()).sum();
    if let Some(t) = total {
        if t != found {
            bail!(
                "{}: {SPLIT_TENSORS_COUNT} = {t}, but its {n} shards hold {found} tensors",
                first.display()
            );
        }
    }
    Ok(out)
}

/// `dir/NAME` of a path named `NAME-0000{i+1}-of-0000{n}.gguf`.
fn split_prefix(path: &Path, i: usize, n: usize) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let suffix = format!("-{:05}-of-{n:05}.gguf", i + 1);
    let prefix = name.strip_suffix(&suffix)?;
    (!prefix.is_empty()).then(|| path.with_file_name(prefix))
}

fn first_shard_name(path: &Path, i: usize, n: usize) -> Option<PathBuf> {
    split_prefix(path, i, n).map(|p| shard_path(&p, 0, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::TypeId;

    fn t(name: &str, bytes: u64) -> TensorEntry {
        TensorEntry {
            name: name.into(),
            dims: vec![bytes / 4],
            ty: TypeId(0),
            bytes,
        }
    }

    #[test]
    fn cuts_as_gguf_split_does() {
        let ts = [t("a", 100), t("b", 100), t("c", 100), t("d", 30)];
        // Sizes padded to 32: 128 each, 32 for d.
        assert_eq!(assign(&ts, SplitLimit::Bytes(256)).unwrap(), [0, 0, 1, 1]);
        assert_eq!(assign(&ts, SplitLimit::Bytes(300)).unwrap(), [0, 0, 1, 1]);
        assert_eq!(assign(&ts, SplitLimit::Bytes(400)).unwrap(), [0, 0, 0, 1]);
        assert_eq!(assign(&ts, SplitLimit::Tensors(2)).unwrap(), [0, 0, 1, 1]);
        assert_eq!(assign(&ts, SplitLimit::Tensors(3)).unwrap(), [0, 0, 0, 1]);
        assert!(assign(&ts, SplitLimit::Bytes(64)).is_err());
        assert_eq!(parse_size("500M").unwrap(), 500_000_000);
        assert_eq!(parse_size("4G").unwrap(), 4_000_000_000);
        assert!(parse_size("4").is_err() && parse_size("0M").is_err() && parse_size("xM").is_err());
        assert_eq!(
            shard_path(Path::new("d/m-Q4_K_M.gguf"), 0, 3),
            Path::new("d/m-Q4_K_M-00001-of-00003.gguf")
        );
        assert_eq!(
            split_prefix(Path::new("d/m-00002-of-00003.gguf"), 1, 3).unwrap(),
            Path::new("d/m")
        );
    }
}
