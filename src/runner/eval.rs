//! `kiln eval`: the quality of GGUF variants against a reference GGUF, measured on llama.cpp the
//! way `llama-perplexity` measures it, plus a small question-answering task check.
//!
//! **Perplexity and KL divergence** follow `tools/perplexity/perplexity.cpp` (`perplexity()` with
//! `--kl-divergence-base`, then `kl_divergence()`):
//!
//! - The text is tokenized once, with BOS when the vocabulary adds it. It must hold at least
//!   `2 * n_ctx` tokens (llama-perplexity's minimum). It is cut into `n_chunk = tokens / n_ctx`
//!   chunks of `n_ctx` tokens (at most `max_chunks`). Chunks are decoded as llama-perplexity
//!   decodes them with its default `-b 2048`: `n_seq = max(1, 2048/n_ctx)` chunks side by side,
//!   one sequence each, in a context of `n_seq * n_ctx` cells (f16 KV cache, flash attention
//!   auto, physical batch 512), the KV cache cleared before each group, batches of
//!   `min(2048, n_seq * n_ctx)` tokens, each chunk's first token replaced by BOS when the
//!   vocabulary adds BOS. Only the second half is scored: the logits at positions
//!   `first = n_ctx/2` to `n_ctx - 2` predict the next token, so a chunk scores
//!   `n_ctx - 1 - n_ctx/2` tokens. (Batch composition changes llama.cpp's logits in the last
//!   bits, so the layout is copied, not only the definitions.)
//! - The reference's distributions are stored exactly as llama-perplexity's
//!   `--kl-divergence-base` file stores them: per scored token, the log-softmax quantized to
//!   uint16 between `max - 16` and `max` with a per-token scale and minimum (see [`cache`]).
//!   The cache file *is* such a file: `llama-perplexity --kl-divergence-base FILE
//!   --kl-divergence` reads it.
//! - For each model, per scored token: NLL = `max + log(sum exp(l - max)) - l[tok]`; KLD =
//!   `sum_i p_ref,i (log p_ref,i - log p_i)` over the reference's dequantized log-probabilities
//!   above -16; "same top" when the model's argmax equals the reference's (dequantized) argmax.
//!   PPL = exp(mean NLL) with stderr `PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1))`;
//!   mean KLD with the same uncertainty; KLD_99 = the 99th percentile of the per-token KLD,
//!   interpolated between sorted neighbours as llama-perplexity does; all in the same f32/f64
//!   arithmetic as the C++ (f32 where it uses float, f64 sums, `expf`/`log` from the same libm).
//!
//! **Task check**: each model answers every question greedily after the prompt
//! `"Question: {q}\nAnswer:"`, stopping at a newline, an end-of-generation token or
//! `max_answer_tokens`. Reported: the share of answers that contain the expected answer
//! (case-insensitive), the share identical to the reference's answer, and the generation speed.
//!
//! The reference's log-probabilities and answers are computed once and cached on disk (keyed by
//! the reference file's size, mtime and the sha256 of its first MiB, by the text and by the
//! options), under `EvalOptions::cache_dir` or beside the reference.
//!
//! Checked against llama-perplexity itself (built from the llama.cpp tools source, same ggml
//! flags; `tests/eval.rs` with `KILN_LLAMA_PERPLEXITY` set): the cache file is byte-identical to
//! its `--kl-divergence-base` file for n_ctx 128 (16 sequences per batch), 512 (groups of 4 and
//! 3) and 3000 (two batches per chunk), and PPL, KLD, KLD_99 and same-top agree to every printed
//! digit.
//!
//! Where kiln differs from llama-perplexity: it refuses (rather than logs and continues) a model
//! whose vocabulary size or tokenization of the text differs from the reference's; it computes
//! KLD_99 even below 100 scored tokens (llama-perplexity prints no percentiles then); per-token
//! values are summed in token order (llama-perplexity's worker threads add partial sums in
//! whatever order they finish, which moves the last bits of a sum).

use super::{EvalOptions, EvalResult};
use crate::llama;
use anyhow::{anyhow, bail, ensure, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io::{BufReader, BufWriter, Read, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The bundled default text for perplexity (original English prose, about 16 KB).
pub fn default_text() -> &'static str {
    include_str!("../../fixtures/eval/text.txt")
}

/// The bundled default question set (JSONL of `{"question": ..., "answer": ...}`).
pub fn default_questions() -> &'static str {
    include_str!("../../fixtures/eval/questions.jsonl")
}

/// llama-perplexity's logical batch size (`-b`, default 2048).
const N_BATCH_MAX: u32 = 2048;
/// llama-perplexity's physical batch size (`-ub`, default 512).
const N_UBATCH_MAX: u32 = 512;

// ---------------------------------------------------------------------------------------------
// Questions

/// One question of the task check.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question: String,
    /// Accepted answers (an answer counts when it contains any of them, case-insensitive).
    pub answers: Vec<String>,
}

/// Parses a question set: one JSON object per line, `{"question": "...", "answer": "..."}`;
/// `answer` may also be a list of accepted answers. Blank lines are skipped; other fields are
/// ignored. Errors name `source` and the line.
pub fn parse_questions(text: &str, source: &str) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{source}: line {n}: not a JSON object: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("{source}: line {n}: expected a JSON object"))?;
        let question = match obj.get("question") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(serde_json::Value::String(_)) => bail!("{source}: line {n}: empty \"question\""),
            Some(_) => bail!("{source}: line {n}: \"question\" must be a string"),
            None => bail!("{source}: line {n}: missing \"question\""),
        };
        let answers: Vec<String> = match obj.get("answer") {
            Some(serde_json::Value::String(s)) => vec![s.trim().to_string()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                        anyhow!("{source}: line {n}: \"answer\" list must hold strings")
                    })
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                bail!("{source}: line {n}: \"answer\" must be a string or a list of strings")
            }
            None => bail!("{source}: line {n}: missing \"answer\""),
        };
        if answers.is_empty() || answers.iter().any(|a| a.is_empty()) {
            bail!("{source}: line {n}: empty \"answer\"");
        }
        out.push(Question { question, answers });
    }
    if out.is_empty() {
        bail!("{source}: no questions");
    }
    Ok(out)
}

/// The prompt of the task check.
pub fn prompt(question: &str) -> String {
    format!("Question: {question}\nAnswer:")
}

// ---------------------------------------------------------------------------------------------
// llama-perplexity's arithmetic, one scored token at a time

/// ggml's `nearest_int` (round half to even through the float mantissa), as perplexity.cpp has it.
#[inline]
fn nearest_int(f: f32) -> i32 {
    let val = f + 12582912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// u16 slots per scored token in a base file: `2*((n_vocab + 1)/2) + 4` (two f32 then the
/// quantized log-probabilities, padded to an even count).
pub fn record_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// `log_softmax(n_vocab, logits, log_prob, tok)` of perplexity.cpp (the `--kl-divergence-base`
/// writer): fills `out` (`record_len(n_vocab)` slots) with scale, min log-prob and the quantized
/// log-probabilities; returns the token's NLL as it computes it.
pub fn quantize_log_softmax(logits: &[f32], out: &mut [u16], tok: usize) -> f64 {
    let mut max_logit = logits[0];
    let mut min_logit = logits[0];
    for &l in &logits[1..] {
        // std::max / std::min
        if max_logit < l {
            max_logit = l;
        }
        if l < min_logit {
            min_logit = l;
        }
    }
    let floor = max_logit - 16.0;
    if min_logit < floor {
        min_logit = floor;
    }
    let mut sum_exp = 0.0f64;
    for &l in logits {
        sum_exp += (l - max_logit).exp() as f64;
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min_logit - max_logit - log_sum_exp;
    let scale = (max_logit - min_logit) / 65535.0f32;
    let sb = scale.to_le_bytes();
    let mb = min_log_prob.to_le_bytes();
    out[0] = u16::from_le_bytes([sb[0], sb[1]]);
    out[1] = u16::from_le_bytes([sb[2], sb[3]]);
    out[2] = u16::from_le_bytes([mb[0], mb[1]]);
    out[3] = u16::from_le_bytes([mb[2], mb[3]]);
    let q = &mut out[4..4 + logits.len()];
    if scale != 0.0 {
        let inv_scale = 1.0f32 / scale;
        for (o, &l) in q.iter_mut().zip(logits) {
            *o = if l > min_logit {
                nearest_int(inv_scale * (l - min_logit)) as u16
            } else {
                0
            };
        }
    } else {
        q.fill(0);
    }
    (max_logit + log_sum_exp - logits[tok]) as f64
}

/// Scale and min log-prob of a base record.
#[inline]
fn record_header(rec: &[u16]) -> (f32, f32) {
    let s = [rec[0].to_le_bytes(), rec[1].to_le_bytes()];
    let m = [rec[2].to_le_bytes(), rec[3].to_le_bytes()];
    (
        f32::from_le_bytes([s[0][0], s[0][1], s[1][0], s[1][1]]),
        f32::from_le_bytes([m[0][0], m[0][1], m[1][0], m[1][1]]),
    )
}

/// What one scored token contributes (the per-token part of perplexity.cpp's
/// `log_softmax(n_vocab, logits, base_log_prob, tok, kld)`).
#[derive(Clone, Copy, Debug)]
pub struct TokenScore {
    pub nll: f32,
    pub nll_base: f32,
    pub kld: f64,
    pub same_top: bool,
    pub p_diff: f32,
}

/// Scores one token of a model (`logits`) against the reference's record `base`.
pub fn score_token(logits: &[f32], base: &[u16], tok: usize) -> TokenScore {
    let n_vocab = logits.len();
    let mut max_logit = logits[0];
    let mut imax = 0usize;
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > max_logit {
            max_logit = l;
            imax = i;
        }
    }
    let mut sum_exp = 0.0f64;
    for &l in logits {
        sum_exp += (l - max_logit).exp() as f64;
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let (scale, min_log_prob) = record_header(base);
    let q = &base[4..4 + n_vocab];

    let nll = max_logit + log_sum_exp - logits[tok];
    let nll_base = -(scale * q[tok] as f32 + min_log_prob);

    let max_logit = max_logit + log_sum_exp;
    let mut sum = 0.0f64;
    let mut imax_base = 0usize;
    let mut p_log_base_max = 0.0f32;
    for i in 0..n_vocab {
        let p_log_base = scale * q[i] as f32 + min_log_prob;
        if i == 0 || p_log_base > p_log_base_max {
            p_log_base_max = p_log_base;
            imax_base = i;
        }
        if p_log_base > -16.0 {
            let p_base = p_log_base.exp();
            sum += (p_base * (p_log_base - logits[i] + max_logit)) as f64;
        }
    }
    let p_base = (-nll_base).exp();
    let p = (-nll).exp();
    TokenScore {
        nll,
        nll_base,
        kld: sum,
        same_top: imax == imax_base,
        p_diff: p - p_base,
    }
}

/// perplexity.cpp's `kl_divergence_result`, accumulated token by token in order.
#[derive(Clone, Debug, Default)]
pub struct KldAccum {
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub sum_nll_base: f64,
    pub sum_nll_base2: f64,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    pub max_p_diff: f32,
    pub n_same_top: u64,
    pub count: u64,
    /// Per-token KLD as f32 (perplexity.cpp's `kld_values`), for the percentiles.
    pub kld_values: Vec<f32>,
}

impl KldAccum {
    pub fn add(&mut self, s: &TokenScore) {
        self.sum_nll += s.nll as f64;
        self.sum_nll2 += (s.nll * s.nll) as f64;
        self.sum_nll_base += s.nll_base as f64;
        self.sum_nll_base2 += (s.nll_base * s.nll_base) as f64;
        self.sum_nll_nll_base += (s.nll * s.nll_base) as f64;
        self.sum_kld += s.kld;
        self.sum_kld2 += s.kld * s.kld;
        if s.same_top {
            self.n_same_top += 1;
        }
        self.sum_p_diff += s.p_diff as f64;
        let p_diff2 = (s.p_diff * s.p_diff) as f64;
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.max_p_diff = self.max_p_diff.max(s.p_diff.abs());
        self.count += 1;
        self.kld_values.push(s.kld as f32);
    }

    /// (PPL, its uncertainty) of the model, from its own logits ("Mean PPL(Q)").
    pub fn ppl(&self) -> (f64, f64) {
        let (m, u) = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count);
        let ppl = m.exp();
        (ppl, ppl * u)
    }

    /// (mean KLD, its uncertainty).
    pub fn kld(&self) -> (f64, f64) {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
    }

    /// Share of tokens with the reference's top token, 0..1.
    pub fn same_top(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.n_same_top as f64 / self.count as f64
    }

    /// A percentile of the per-token KLD (`fraction` 0.99 is KLD_99).
    pub fn kld_percentile(&self, fraction: f32) -> f64 {
        let mut v = self.kld_values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, fraction) as f64
    }
}

/// perplexity.cpp's `mean_and_uncertainty`.
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: u64) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let f = sum / count as f64;
    let df = sum2 / count as f64 - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// perplexity.cpp's `percentile` lambda over sorted values (f32 interpolation).
pub fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let mut p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    (1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// The cache

pub mod cache {
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

    use super::record_len;
    use anyhow::{bail, Context, Result};
    use std::io::{Read, Write};
    use std::path::Path;

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
}

/// Identity of the reference file: size, mtime and the sha256 of its first MiB.
fn file_identity(path: &Path) -> Result<Vec<u8>> {
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

fn hex16(d: &[u8]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn cache_dir(reference: &Path, opts: &EvalOptions) -> PathBuf {
    match &opts.cache_dir {
        Some(d) => d.clone(),
        None => match reference.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Writes `bytes` to `path` through a temporary file in the same folder (renamed when
/// complete).
fn write_atomically(
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

// ---------------------------------------------------------------------------------------------
// Decoding chunks

/// How llama-perplexity lays out its decoding for a context of `n_ctx`: `n_seq` chunks side by
/// side in one batch (`n_seq = max(1, n_batch / n_ctx)` with its default `-b 2048`), each in its
/// own sequence of a context of `n_seq * n_ctx` cells, and batches of `n_batch` tokens.
#[derive(Clone, Copy, Debug)]
struct Layout {
    n_ctx: usize,
    n_seq: usize,
    n_batch: usize,
}

impl Layout {
    fn new(n_ctx: u32) -> Layout {
        let n_ctx = n_ctx as usize;
        let n_seq = (N_BATCH_MAX as usize / n_ctx).max(1);
        Layout {
            n_ctx,
            n_seq,
            n_batch: (N_BATCH_MAX as usize).min(n_seq * n_ctx),
        }
    }
    fn first(&self) -> usize {
        self.n_ctx / 2
    }
    fn n_scored(&self) -> usize {
        self.n_ctx - 1 - self.first()
    }
}

fn ppl_context<'m>(model: &'m LlamaModel, l: &Layout, threads: u32) -> Result<LlamaContext<'m>> {
    let total = (l.n_seq * l.n_ctx) as u32;
    let p = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_batch(l.n_batch as u32)
        .with_n_ubatch((l.n_batch as u32).min(N_UBATCH_MAX))
        .with_n_seq_max(l.n_seq as u32)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32)
        .with_swa_full(false);
    model
        .new_context(llama::backend(), p)
        .map_err(|e| anyhow!("llama.cpp context (n_ctx {total}): {e}"))
}

/// Decodes a group of consecutive chunks (`tokens`: `n_seq_batch * n_ctx` of them) as
/// llama-perplexity does: the KV cache cleared, chunk `s` in sequence `s`, its first token
/// replaced by `bos` when the vocabulary adds BOS, logits requested from position `n_ctx/2` on.
/// Calls `f(s, rows)` for each chunk with the logits of its scored positions (`n_ctx/2 ..
/// n_ctx-1`, one row of n_vocab per position).
fn with_group_logits(
    ctx: &mut LlamaContext,
    l: &Layout,
    tokens: &[i32],
    bos: Option<i32>,
    n_vocab: usize,
    mut f: impl FnMut(usize, &[&[f32]]) -> Result<()>,
) -> Result<()> {
    let n_ctx = l.n_ctx;
    let first = l.first();
    let n_seq_batch = tokens.len() / n_ctx;
    let num_batches = n_ctx.div_ceil(l.n_batch);
    ctx.clear_kv_cache();
    let mut batch = LlamaBatch::new(l.n_batch, n_seq_batch as i32);
    // n_seq_batch is 1 whenever num_batches > 1 (n_ctx > n_batch).
    let mut owned: Vec<f32> = Vec::new();
    for j in 0..num_batches {
        let batch_start = j * l.n_batch;
        let size = (n_ctx - batch_start).min(l.n_batch);
        batch.clear();
        for s in 0..n_seq_batch {
            for k in 0..size {
                let pos = batch_start + k;
                let tok = match (pos, bos) {
                    (0, Some(b)) => b,
                    _ => tokens[s * n_ctx + pos],
                };
                batch.add(LlamaToken(tok), pos as i32, &[s as i32], pos >= first)?;
            }
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        if num_batches > 1 {
            for k in 0..size {
                if batch_start + k >= first {
                    owned.extend_from_slice(ctx.get_logits_ith(k as i32));
                }
            }
        }
    }
    let n_scored = l.n_scored();
    for s in 0..n_seq_batch {
        let rows: Vec<&[f32]> = if num_batches > 1 {
            owned.chunks_exact(n_vocab).take(n_scored).collect()
        } else {
            (0..n_scored)
                .map(|r| ctx.get_logits_ith((s * n_ctx + first + r) as i32))
                .collect()
        };
        for r in &rows {
            ensure!(
                r.len() == n_vocab,
                "llama.cpp returned {} logits, expected {n_vocab}",
                r.len()
            );
        }
        f(s, &rows)?;
    }
    Ok(())
}

/// Scores one chunk's rows against the reference's records, in parallel, accumulated in order.
fn score_chunk(rows: &[&[f32]], base: &[u16], nv: usize, tokens: &[i32], acc: &mut KldAccum) {
    let scores: Vec<TokenScore> = rows
        .par_iter()
        .enumerate()
        .map(|(i, row)| score_token(row, &base[i * nv..(i + 1) * nv], tokens[i + 1] as usize))
        .collect();
    for s in &scores {
        acc.add(s);
    }
}

fn bos_of(model: &LlamaModel, path: &Path) -> Result<Option<i32>> {
    let v = model.vocab();
    if v.should_add_eos() {
        bail!(
            "{}: the vocabulary appends EOS to every text; llama-perplexity refuses such models too",
            path.display()
        );
    }
    Ok(if v.should_add_bos() {
        Some(v.bos().0)
    } else {
        None
    })
}

/// Tokenizes the text as llama-perplexity does (BOS per the vocabulary, no special parsing).
fn tokenize_text(model: &LlamaModel, text: &str) -> Vec<i32> {
    llama::tokenize(model, text, true)
        .into_iter()
        .map(|t| t as i32)
        .collect()
}

/// Builds the reference's base file (streamed to disk chunk by chunk); when `self_acc` is given,
/// also scores the reference against its own records (what `--kl-divergence` on the base model
/// gives), from the same logits.
#[allow(clippy::too_many_arguments)]
fn build_base(
    model: &LlamaModel,
    reference: &Path,
    text: &str,
    text_source: &str,
    opts: &EvalOptions,
    path: &Path,
    mut self_acc: Option<&mut KldAccum>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let n_ctx = opts.n_ctx as usize;
    let tokens = tokenize_text(model, text);
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{text_source}: the text tokenizes to {} tokens; a context of {n_ctx} needs at least {} \
             (two contexts, as llama-perplexity requires): give a longer text or a smaller n_ctx",
            tokens.len(),
            2 * n_ctx
        );
    }
    let mut n_chunk = tokens.len() / n_ctx;
    if opts.max_chunks > 0 {
        n_chunk = n_chunk.min(opts.max_chunks as usize);
    }
    let n_vocab = model.n_vocab() as usize;
    let bos = bos_of(model, reference)?;
    let header = cache::Header {
        n_ctx: opts.n_ctx,
        n_vocab: n_vocab as i32,
        n_chunk: n_chunk as i32,
        tokens: tokens[..n_chunk * n_ctx].to_vec(),
    };
    let nv = record_len(n_vocab);
    let l = Layout::new(opts.n_ctx);
    let first = l.first();
    let mut ctx = ppl_context(model, &l, opts.threads)?;
    let mut rec = vec![0u16; header.chunk_slots()];
    write_atomically(path, |w| {
        header.write(w)?;
        for i in (0..n_chunk).step_by(l.n_seq) {
            let n_seq_batch = l.n_seq.min(n_chunk - i);
            progress(&format!(
                "reference {}: chunks {}-{} of {n_chunk}",
                file_name(reference),
                i + 1,
                i + n_seq_batch
            ));
            let group = &header.tokens[i * n_ctx..(i + n_seq_batch) * n_ctx];
            with_group_logits(&mut ctx, &l, group, bos, n_vocab, |s, rows| {
                let chunk = &group[s * n_ctx..(s + 1) * n_ctx];
                rec.par_chunks_mut(nv)
                    .zip(rows.par_iter())
                    .enumerate()
                    .for_each(|(i, (out, row))| {
                        quantize_log_softmax(row, out, chunk[first + i + 1] as usize);
                    });
                if let Some(acc) = self_acc.as_deref_mut() {
                    score_chunk(rows, &rec, nv, &chunk[first..], acc);
                }
                cache::write_u16s(w, &rec)
            })
            .with_context(|| format!("{}", reference.display()))?;
        }
        Ok(())
    })
}

/// An open base file, read chunk by chunk.
struct BaseReader {
    header: cache::Header,
    r: BufReader<std::fs::File>,
    path: PathBuf,
}

impl BaseReader {
    fn open(path: &Path) -> Result<BaseReader> {
        let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
        let len = f.metadata()?.len();
        let mut r = BufReader::with_capacity(1 << 20, f);
        let header = cache::Header::read(&mut r, len, path)?;
        Ok(BaseReader {
            header,
            r,
            path: path.to_path_buf(),
        })
    }
}

/// Scores `model` against the base file at `base_path`.
fn score_model(
    model: &LlamaModel,
    file: &Path,
    base_path: &Path,
    text: &str,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<KldAccum> {
    let mut base = BaseReader::open(base_path)?;
    let h = base.header.clone();
    let n_vocab = model.n_vocab() as usize;
    if n_vocab != h.n_vocab as usize {
        bail!(
            "{}: vocabulary of {n_vocab} tokens, the reference's has {}",
            file.display(),
            h.n_vocab
        );
    }
    let ours = tokenize_text(model, text);
    if ours.len() < h.tokens.len() || ours[..h.tokens.len()] != h.tokens[..] {
        bail!(
            "{}: tokenizes the text differently from the reference",
            file.display()
        );
    }
    let bos = bos_of(model, file)?;
    let n_ctx = h.n_ctx as usize;
    let n_chunk = h.n_chunk as usize;
    let l = Layout::new(h.n_ctx);
    let first = l.first();
    let nv = record_len(n_vocab);
    let mut ctx = ppl_context(model, &l, opts.threads)?;
    let mut rec = vec![0u16; h.chunk_slots()];
    let mut acc = KldAccum::default();
    for i in (0..n_chunk).step_by(l.n_seq) {
        let n_seq_batch = l.n_seq.min(n_chunk - i);
        progress(&format!(
            "{}: chunks {}-{} of {n_chunk}",
            file_name(file),
            i + 1,
            i + n_seq_batch
        ));
        let group = &h.tokens[i * n_ctx..(i + n_seq_batch) * n_ctx];
        with_group_logits(&mut ctx, &l, group, bos, n_vocab, |s, rows| {
            cache::read_u16s(&mut base.r, &mut rec)
                .with_context(|| format!("{}: reading chunk {}", base.path.display(), i + s + 1))?;
            let chunk = &group[s * n_ctx..(s + 1) * n_ctx];
            score_chunk(rows, &rec, nv, &chunk[first..], &mut acc);
            Ok(())
        })
        .with_context(|| format!("{}", file.display()))?;
    }
    Ok(acc)
}

// ---------------------------------------------------------------------------------------------
// The task check

/// One model's answers.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    pub texts: Vec<String>,
    /// Tokens generated, stop tokens (newline, end of generation) included.
    pub tokens: u64,
    /// Single-token decodes made while answering (each yields the next token).
    pub decodes: u64,
    /// Time of those decodes and of picking the tokens they yield (prompt processing excluded).
    pub decode_time: Duration,
}

/// Answers every question greedily ("Question: ...\nAnswer:" completion, stop at a newline, an
/// end-of-generation token or `max_tokens`).
pub fn answer(
    model: &LlamaModel,
    questions: &[Question],
    max_tokens: u32,
    threads: u32,
) -> Result<Answers> {
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| llama::tokenize(model, &prompt(&q.question), true))
        .collect();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
    let n_ctx = (longest + max_tokens as usize + 1) as u32;
    let p = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(longest as u32)
        .with_n_ubatch((longest as u32).min(N_UBATCH_MAX))
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = model
        .new_context(llama::backend(), p)
        .map_err(|e| anyhow!("llama.cpp context: {e}"))?;
    let vocab = model.vocab();
    let mut out = Answers::default();
    let mut batch = LlamaBatch::new(longest, 1);
    for prompt in &prompts {
        ctx.clear_kv_cache();
        batch.clear();
        for (i, &t) in prompt.iter().enumerate() {
            batch.add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        let mut next =
            LlamaToken(llama::argmax(ctx.get_logits_ith(prompt.len() as i32 - 1)) as i32);
        let mut bytes: Vec<u8> = Vec::new();
        let mut n = 0u32;
        let t0 = Instant::now();
        loop {
            n += 1;
            if vocab.is_eog(next) {
                break;
            }
            bytes.extend(vocab.token_to_piece(next, false, None));
            if bytes.contains(&b'\n') || n >= max_tokens {
                break;
            }
            batch.clear();
            batch.add(next, prompt.len() as i32 + n as i32 - 1, &[0], true)?;
            ctx.decode(&mut batch)
                .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
            out.decodes += 1;
            next = LlamaToken(llama::argmax(ctx.get_logits_ith(0)) as i32);
        }
        out.decode_time += t0.elapsed();
        out.tokens += n as u64;
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        out.texts
            .push(String::from_utf8_lossy(&bytes[..end]).trim().to_string());
    }
    Ok(out)
}

/// Whether `answer` contains one of the expected answers (case-insensitive).
pub fn is_correct(answer: &str, q: &Question) -> bool {
    let a = answer.to_lowercase();
    q.answers.iter().any(|e| a.contains(&e.to_lowercase()))
}

fn answers_key(ref_id: &[u8], questions: &[Question], max_tokens: u32) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"kiln-eval-answers v1\0");
    h.update(ref_id);
    h.update(max_tokens.to_le_bytes());
    for q in questions {
        h.update(q.question.as_bytes());
        h.update([0u8]);
    }
    h.finalize().to_vec()
}

fn read_answers(path: &Path, n: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let a: Vec<String> = v
        .get("answers")?
        .as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect::<Option<_>>()?;
    (a.len() == n).then_some(a)
}

// ---------------------------------------------------------------------------------------------
// kiln eval

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Evaluates `files` against `reference` (the reference itself may be among `files`: it is then
/// scored against its own cached distributions, which gives a KLD of the cache's quantization
/// floor, below 1e-6, and 100% same top, as llama-perplexity does for the base model).
pub fn run(
    files: &[PathBuf],
    reference: &Path,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<EvalResult>> {
    if files.is_empty() {
        bail!("no files to evaluate");
    }
    if opts.n_ctx < 8 {
        bail!("n_ctx {} is too small (at least 8)", opts.n_ctx);
    }
    if opts.threads == 0 {
        bail!("threads must be at least 1");
    }
    let (text, text_source) = match &opts.text {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the text", p.display()))?,
            p.display().to_string(),
        ),
        None => (default_text().to_string(), "the bundled text".to_string()),
    };
    let questions = match &opts.questions {
        Some(p) => {
            let s = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the questions", p.display()))?;
            parse_questions(&s, &p.display().to_string())?
        }
        None => parse_questions(default_questions(), "the bundled questions")?,
    };
    let task = opts.max_answer_tokens > 0;
    for f in files.iter().chain([&reference.to_path_buf()]) {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
        // A file that is not GGUF fails here, before minutes of work on the others.
        drop(crate::gguf::GgufFile::open(f)?);
    }

    // The reference's distributions.
    let ref_id = file_identity(reference)?;
    let key = {
        let mut h = Sha256::new();
        h.update(b"kiln-eval-kld v1\0");
        h.update(&ref_id);
        h.update(Sha256::digest(text.as_bytes()));
        h.update(opts.n_ctx.to_le_bytes());
        h.update(opts.max_chunks.to_le_bytes());
        h.finalize()
    };
    let dir = cache_dir(reference, opts);
    let base_path = dir.join(format!(
        "{}.kiln-kld-{}.bin",
        file_name(reference),
        hex16(&key)
    ));
    let answers_path = dir.join(format!(
        "{}.kiln-answers-{}.json",
        file_name(reference),
        hex16(&answers_key(&ref_id, &questions, opts.max_answer_tokens))
    ));
    let ref_in_files = files.iter().any(|f| same_file(f, reference));
    let mut ref_model: Option<LlamaModel> = None;
    let mut ref_self: Option<KldAccum> = None;
    match BaseReader::open(&base_path) {
        Ok(b) if b.header.n_ctx == opts.n_ctx => {
            progress(&format!(
                "reference: using cached log-probabilities {}",
                base_path.display()
            ));
        }
        other => {
            if let Err(e) = other {
                if base_path.exists() {
                    progress(&format!("reference: cache unusable ({e:#}); recomputing"));
                }
            }
            progress(&format!(
                "reference {}: computing log-probabilities -> {}",
                file_name(reference),
                base_path.display()
            ));
            let m = llama::load(reference)?;
            let mut acc = KldAccum::default();
            build_base(
                &m,
                reference,
                &text,
                &text_source,
                opts,
                &base_path,
                ref_in_files.then_some(&mut acc),
                progress,
            )?;
            if ref_in_files {
                ref_self = Some(acc);
            }
            ref_model = Some(m);
        }
    }
    let header = BaseReader::open(&base_path)?.header;

    // The reference's answers.
    let mut ref_answers_fresh: Option<Answers> = None;
    let ref_answers: Vec<String> = if !task {
        Vec::new()
    } else if let Some(a) = read_answers(&answers_path, questions.len()) {
        progress(&format!(
            "reference: using cached answers {}",
            answers_path.display()
        ));
        a
    } else {
        progress(&format!(
            "reference {}: answering {} questions",
            file_name(reference),
            questions.len()
        ));
        let m = match ref_model.take() {
            Some(m) => m,
            None => llama::load(reference)?,
        };
        let a = answer(&m, &questions, opts.max_answer_tokens, opts.threads)
            .with_context(|| format!("{}", reference.display()))?;
        let doc = serde_json::json!({
            "kiln_eval_answers": 1,
            "reference": reference.display().to_string(),
            "max_answer_tokens": opts.max_answer_tokens,
            "questions": questions.iter().map(|q| q.question.clone()).collect::<Vec<_>>(),
            "answers": a.texts,
        });
        write_atomically(&answers_path, |w| {
            serde_json::to_writer_pretty(&mut *w, &doc)?;
            Ok(())
        })?;
        let texts = a.texts.clone();
        ref_answers_fresh = Some(a);
        texts
    };
    drop(ref_model);

    let mut results = Vec::with_capacity(files.len());
    for file in files {
        let is_ref = same_file(file, reference);
        let model = llama::load(file)?;
        let acc = match (is_ref, ref_self.as_ref()) {
            (true, Some(acc)) => acc.clone(),
            _ => score_model(&model, file, &base_path, &text, opts, progress)?,
        };
        let answers = if !task {
            Answers::default()
        } else if let (true, Some(a)) = (is_ref, ref_answers_fresh.as_ref()) {
            a.clone()
        } else {
            progress(&format!(
                "{}: answering {} questions",
                file_name(file),
                questions.len()
            ));
            answer(&model, &questions, opts.max_answer_tokens, opts.threads)
                .with_context(|| format!("{}", file.display()))?
        };
        drop(model);
        let (ppl, ppl_stderr) = acc.ppl();
        let (kld_mean, kld_stderr) = acc.kld();
        let nq = if task { questions.len() } else { 0 };
        let pct = |k: usize| {
            if nq == 0 {
                0.0
            } else {
                100.0 * k as f64 / nq as f64
            }
        };
        let correct = answers
            .texts
            .iter()
            .zip(&questions)
            .filter(|(a, q)| is_correct(a, q))
            .count();
        let same = answers
            .texts
            .iter()
            .zip(&ref_answers)
            .filter(|(a, b)| a == b)
            .count();
        let secs = answers.decode_time.as_secs_f64();
        results.push(EvalResult {
            model_filename: file.display().to_string(),
            n_chunks: header.n_chunk as u32,
            n_ctx: header.n_ctx,
            n_tokens_scored: acc.count,
            ppl,
            ppl_stderr,
            kld_mean,
            kld_stderr,
            kld_p99: acc.kld_percentile(0.99),
            same_top_pct: 100.0 * acc.same_top(),
            task_contains_pct: pct(correct),
            task_same_as_reference_pct: pct(same),
            task_questions: nq as u32,
            task_gen_ts: if secs > 0.0 {
                answers.decodes as f64 / secs
            } else {
                0.0
            },
            task_tokens_generated: answers.tokens,
        });
    }
    Ok(results)
}

/// `x`, or 0 when it prints as zero at `decimals` (no "-0.000000" for the reference's KLD).
fn no_neg_zero(x: f64, decimals: i32) -> f64 {
    if x.abs() < 0.5 * 10f64.powi(-decimals) {
        0.0
    } else {
        x
    }
}

/// The results as a Markdown table, with the measurement's conditions below it.
pub fn to_markdown(results: &[EvalResult]) -> String {
    let mut s = String::new();
    s.push_str(
        "| model | PPL | Mean KLD | KLD_99 | Same top p | task: correct | task: same as ref | \
         answer t/s | tokens gen |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let name = file_name(Path::new(&r.model_filename));
        let p = r.same_top_pct / 100.0;
        let p_unc = if r.n_tokens_scored > 1 {
            100.0 * (p * (1.0 - p) / (r.n_tokens_scored - 1) as f64).sqrt()
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "| {name} | {:.4} ± {:.4} | {:.6} ± {:.6} | {:.6} | {:.3} ± {:.3} % | {:.1} % | {:.1} % | {:.1} | {} |",
            r.ppl,
            r.ppl_stderr,
            no_neg_zero(r.kld_mean, 6),
            r.kld_stderr,
            no_neg_zero(r.kld_p99, 6),
            r.same_top_pct,
            p_unc,
            r.task_contains_pct,
            r.task_same_as_reference_pct,
            r.task_gen_ts,
            r.task_tokens_generated
        );
    }
    if let Some(r) = results.first() {
        let _ = writeln!(
            s,
            "\nPerplexity and KLD as llama-perplexity computes them: {} chunks of n_ctx {}, {} tokens \
             scored (the second half of each chunk), KLD against the reference's cached \
             distributions. Task check: {} questions, greedy \"Question: ...\\nAnswer:\" \
             completions; answer t/s = single-token decodes per second while answering (prompt \
             processing excluded).",
            r.n_chunks, r.n_ctx, r.n_tokens_scored, r.task_questions
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.4), 2);
        assert_eq!(nearest_int(65534.6), 65535);
    }

    #[test]
    fn percentile_interpolates_like_llama_perplexity() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        let v = [0.0f32, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
    }

    #[test]
    fn quantized_record_round_trips_and_self_kld_is_tiny() {
        let logits: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 101) as f32) * 0.17 - 3.0)
            .collect();
        let mut rec = vec![0u16; record_len(logits.len())];
        let nll = quantize_log_softmax(&logits, &mut rec, 5);
        let s = score_token(&logits, &rec, 5);
        assert!((s.nll as f64 - nll).abs() < 1e-6);
        assert!((s.nll_base - s.nll).abs() < 1e-3);
        assert!(s.kld.abs() < 1e-6, "{}", s.kld);
        assert!(s.same_top);
    }
}
