//! The reference's cached log-probabilities: a llama-perplexity `--kl-divergence-base` file,
//! byte for byte (native little-endian):
//!
//! ```text
//! "_logits_"                      8 bytes
//! n_ctx                           u32
//! n_vocab                         i32
//! n_chunk                         i32
//! tokens                          i32 x n_chunk*n_ctx   (the text's tokens, BOS included)
//! per chunk, per scored token     u16 x (2*((n_vocab+1)/2) + 4)
//!     [0..2]  scale (f32)         (max_logit - min_logit)/65535, min_logit >= max_logit - 16
//!     [2..4]  min_log_prob (f32)  min_logit - max_logit - log(sum exp(l - max_logit))
//!     [4..]   q_i (u16)           round((l_i - min_logit)/scale), 0 below min_logit
//! ```
//!
//! `n_ctx - 1 - n_ctx/2` scored tokens per chunk. log p_i = scale*q_i + min_log_prob.
//! The file name carries the cache key: `<reference file name>.kiln-kld-<16 hex>.bin`.
//!
//! Also here: the reference file's identity (the cache key's part), where the cache lives, and
//! writing a cache file atomically.

use super::record_len;
use crate::runner::EvalOptions;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

pub const MAGIC: &[u8; 8] = b"_logits_";

/// A base file's header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub n_ctx: u32,
    pub n_vocab: i32,
    pub n_chunk: i32,
    pub tokens: Vec<i32>,
}

impl Header {
    pub fn n_scored(&self) -> usize {
        let n = self.n_ctx as usize;
        n - 1 - n / 2
    }
    pub fn chunk_slots(&self) -> usize {
        self.n_scored() * record_len(self.n_vocab as usize)
    }
    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        20 + 4 * self.tokens.len() as u64 + 2 * self.n_chunk as u64 * self.chunk_slots() as u64
    }
    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&self.n_ctx.to_le_bytes())?;
        w.write_all(&self.n_vocab.to_le_bytes())?;
        w.write_all(&self.n_chunk.to_le_bytes())?;
        let mut buf = Vec::with_capacity(4 * self.tokens.len());
        for t in &self.tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        w.write_all(&buf)?;
        Ok(())
    }
    /// Reads and checks a header (`file_len`: the file's length, to catch truncation).
    pub fn read(r: &mut impl Read, file_len: u64, path: &Path) -> Result<Header> {
        let mut head = [0u8; 20];
        r.read_exact(&mut head)
            .with_context(|| format!("{}: truncated header", path.display()))?;
        if &head[..8] != MAGIC {
            bail!("{}: not a log-probability file", path.display());
        }
        let n_ctx = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        let n_vocab = i32::from_le_bytes([head[12], head[13], head[14], head[15]]);
        let n_chunk = i32::from_le_bytes([head[16], head[17], head[18], head[19]]);
        if n_ctx < 4 || n_vocab < 1 || n_chunk < 1 {
            bail!(
                "{}: bad header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})",
                path.display()
            );
        }
        let n_tok = n_ctx as u64 * n_chunk as u64;
        let mut h = Header {
            n_ctx,
            n_vocab,
            n_chunk,
            tokens: Vec::new(),
        };
        if 20 + 4 * n_tok > file_len {
            bail!("{}: truncated", path.display());
        }
        let mut buf = vec![0u8; 4 * n_tok as usize];
        r.read_exact(&mut buf)
            .with_context(|| format!("{}: truncated tokens", path.display()))?;
        h.tokens = buf
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if h.file_len() != file_len {
            bail!(
                "{}: {} bytes, expected {} for its header",
                path.display(),
                file_len,
                h.file_len()
            );
        }
        Ok(h)
    }
}

pub fn write_u16s(w: &mut impl Write, v: &[u16]) -> Result<()> {
    let mut buf = Vec::with_capacity(2 * v.len());
    for x in v {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    w.write_all(&buf)?;
    Ok(())
}

pub fn read_u16s(r: &mut impl Read, out: &mut [u16]) -> Result<()> {
    let mut buf = vec![0u8; 2 * out.len()];
    r.read_exact(&mut buf)?;
    for (o, b) in out.iter_mut().zip(buf.chunks_exact(2)) {
        *o = u16::from_le_bytes([b[0], b[1]]);
    }
    Ok(())
}

/// Identity of the reference file: size, mtime and the sha256 of its first MiB.
pub(super) fn file_identity(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut head = Vec::with_capacity(1 << 20);
    (&mut f)
        .take(1 << 20)
        .read_to_end(&mut head)
        .with_context(|| format!("{}", path.display()))?;
    let mut h = Sha256::new();
    h.update(meta.len().to_le_bytes());
    h.update(mtime.as_secs().to_le_bytes());
    h.update(mtime.subsec_nanos().to_le_bytes());
    h.update(Sha256::digest(&head));
    Ok(h.finalize().to_vec())
}

pub(super) fn hex16(d: &[u8]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub(super) fn cache_dir(reference: &Path, opts: &EvalOptions) -> PathBuf {
    match &opts.cache_dir {
        Some(d) => d.clone(),
        None => match reference.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    }
}

pub(super) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Writes `bytes` to `path` through a temporary file in the same folder (renamed when
/// complete).
pub(super) fn write_atomically(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<&mut std::fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-eval-")
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        f(&mut w)?;
        w.flush()?;
    }
    tmp.persist(path)
        .map_err(|e| anyhow!("{}: {}", path.display(), e.error))?;
    Ok(())
}
