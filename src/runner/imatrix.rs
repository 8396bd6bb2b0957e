//! `kiln imatrix`: an importance matrix computed on llama.cpp as `llama-imatrix` computes it
//! (`tools/imatrix/imatrix.cpp`), written in its GGUF format.
//!
//! - The text is read as llama's `-f` reads it (one trailing newline dropped), and tokenized
//!   once with BOS when the vocabulary adds it and without parsing special tokens (llama-imatrix
//!   without `--parse-special`). It is cut into `n_chunk = tokens / n_ctx` chunks of `n_ctx`
//!   tokens (at most `--chunks`); the tail is not used.
//! - Chunks are decoded with llama-imatrix's layout for its default `-b 2048`: `n_seq =
//!   max(1, 2048 / n_ctx)` chunks side by side, one sequence each, in a context of `n_seq *
//!   n_ctx` cells (physical batch 512, f16 KV cache, flash attention auto), the KV cache cleared
//!   before each group, each chunk's first token replaced by BOS when the vocabulary adds BOS,
//!   and logits requested for every token (so the last layer runs on every token, as there).
//! - llama.cpp's eval callback sees every matrix multiplication. Collected, as there: every
//!   `MUL_MAT_ID` (per expert: the squared input of each token routed to it, and a count per
//!   expert), and every `MUL_MAT` whose weight's name starts with `blk.`, whose input is f32
//!   and holds at least 16 rows (the output projection only with `process_output`). Squares are
//!   summed in f32 in llama-imatrix's order; a dense weight counts every input row once.
//! - The file: `general.type = "imatrix"`, `imatrix.datasets` (the text's path as given),
//!   `imatrix.chunk_count`, `imatrix.chunk_size` (= n_ctx), and per weight, in name order,
//!   `<name>.in_sum2` (f32, `[n_in, n_mat]`, the raw sums) and `<name>.counts` (f32, `[1,
//!   n_mat]`), written to a temporary file and renamed.
//! - Progress: the running perplexity of each chunk's second half (`n_ctx/2 .. n_ctx-2`
//!   predicting the next token), as llama-imatrix prints it.
//!
//! Where kiln differs: llama-imatrix needs `2 * n_ctx` tokens; kiln needs one chunk. It writes
//! the file once at the end (llama-imatrix also rewrites it every 10 chunks). Non-UTF-8 or empty
//! text is an error rather than bytes passed to the tokenizer.

use crate::gguf::writer::{GgufWriter, TensorEntry};
use crate::gguf::{Array, Metadata, TypeId, Value};
use crate::llama::raw::{
    Ctx, EvalObserver, MatMulAsk, MatMulInput, MatMulOp, Model, ObservedCtxParams,
};
use anyhow::{anyhow, bail, Context, Result};
use kiln_kernels::GgmlType;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// llama-imatrix's logical batch size (`-b`, default 2048).
const N_BATCH_MAX: usize = 2048;
/// llama-imatrix's physical batch size (`-ub`, default 512).
const N_UBATCH_MAX: usize = 512;

/// What `kiln imatrix` takes.
#[derive(Clone, Debug)]
pub struct ImatrixOptions {
    /// Tokens per chunk (llama-imatrix `-c`, default 512).
    pub n_ctx: u32,
    /// At most this many chunks (`--chunks`; None: all).
    pub max_chunks: Option<usize>,
    pub threads: u32,
    /// Also collect `output.weight` (llama-imatrix `--process-output`).
    pub process_output: bool,
}

impl Default for ImatrixOptions {
    fn default() -> Self {
        ImatrixOptions {
            n_ctx: 512,
            max_chunks: None,
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(4),
            process_output: false,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct ImatrixSummary {
    pub n_chunks: usize,
    /// Tokens decoded (`n_chunks * n_ctx`): each dense weight's count.
    pub n_tokens: usize,
    /// Tokens of the whole text (the tail past the last whole chunk, and chunks past
    /// `--chunks`, are not used).
    pub text_tokens: usize,
    /// Perplexity over the chunks' second halves.
    pub ppl: f64,
    /// Weights in the file.
    pub n_entries: usize,
    pub seconds: f64,
}

/// One weight's sums of squared inputs and its counts (one per matrix for experts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub values: Vec<f32>,
    pub counts: Vec<i64>,
}

/// llama-imatrix's `IMatrixCollector::collect_imatrix`.
#[derive(Default)]
struct Collector {
    stats: HashMap<String, Stats>,
    process_output: bool,
    chunk_size: i64,
    last_chunk: i64,
    error: Option<String>,
}

impl Collector {
    fn fail(&mut self, e: String) {
        self.error.get_or_insert(e);
    }

    fn note_chunks(&mut self, count: i64) {
        if self.chunk_size > 0 {
            self.last_chunk = self.last_chunk.max(count / self.chunk_size);
        }
    }

    fn collect(&mut self, m: &MatMulInput) {
        if self.error.is_some() {
            return;
        }
        let ne0 = m.ne[0];
        if ne0 <= 0 {
            return;
        }
        let n = ne0 as usize;
        match m.op {
            MatMulOp::Expert => {
                let n_as = m.weight_ne[2];
                let (n_ids, n_tokens) = m.ids_shape();
                if n_tokens != m.ne[2] || m.n_rows() != m.ne[1] * m.ne[2] {
                    return self.fail(format!(
                        "{}: unexpected MUL_MAT_ID shapes (input {:?}, ids {n_ids}x{n_tokens})",
                        m.weight, m.ne
                    ));
                }
                let e = self.stats.entry(m.weight.clone()).or_default();
                if e.counts.len() == 1 && n_as > 1 {
                    // a weight first seen in a dense multiplication: one count per expert
                    e.counts = vec![e.counts[0]; n_as as usize];
                }
                if e.values.is_empty() {
                    e.values = vec![0.0; n * n_as as usize];
                    e.counts = vec![0; n_as as usize];
                } else if e.values.len() != n * n_as as usize || e.counts.len() != n_as as usize {
                    let msg = format!(
                        "{}: inconsistent size ({} vs {})",
                        m.weight,
                        e.values.len(),
                        n * n_as as usize
                    );
                    return self.fail(msg);
                }
                let mut touched = vec![false; n_as as usize];
                for idx in 0..n_ids {
                    for row in 0..n_tokens {
                        let ex = m.expert(idx, row);
                        if ex < 0 || ex as i64 >= n_as {
                            let msg = format!("{}: expert id {ex} out of 0..{n_as}", m.weight);
                            return self.fail(msg);
                        }
                        let ex = ex as usize;
                        let x = m.row(idx % m.ne[1], row, 0);
                        let acc = &mut e.values[ex * n..(ex + 1) * n];
                        e.counts[ex] += 1;
                        touched[ex] = true;
                        for (a, &v) in acc.iter_mut().zip(x) {
                            *a += v * v;
                        }
                    }
                }
                let bad = (0..n_as as usize).any(|ex| {
                    touched[ex]
                        && e.values[ex * n..(ex + 1) * n]
                            .iter()
                            .any(|v| !v.is_finite())
                });
                let max = e.counts.iter().copied().max().unwrap_or(0);
                if bad {
                    return self.fail(format!("non-finite values in {}", m.weight));
                }
                self.note_chunks(max);
            }
            MatMulOp::Dense => {
                let n_mat = (m.weight_ne[2] * m.weight_ne[3]).max(1);
                let e = self.stats.entry(m.weight.clone()).or_default();
                // a single count per dense weight (llama-imatrix folds equal per-expert counts)
                if e.counts.len() > 1 && e.counts.iter().all(|&c| c == e.counts[0]) {
                    e.counts.truncate(1);
                }
                if e.values.is_empty() {
                    e.values = vec![0.0; n * n_mat as usize];
                    e.counts = vec![0];
                } else if e.values.len() != n * n_mat as usize {
                    let msg = format!(
                        "{}: inconsistent size ({} vs {})",
                        m.weight,
                        e.values.len(),
                        n * n_mat as usize
                    );
                    return self.fail(msg);
                }
                for i3 in 0..m.ne[3] {
                    for i2 in 0..m.ne[2] {
                        let mat = ((i3 % m.weight_ne[3].max(1)) * m.weight_ne[2]
                            + (i2 % m.weight_ne[2].max(1)))
                            as usize;
                        let acc = &mut e.values[mat * n..(mat + 1) * n];
                        for row in 0..m.ne[1] {
                            for (a, &v) in acc.iter_mut().zip(m.row(row, i2, i3)) {
                                *a += v * v;
                            }
                        }
                    }
                }
                if e.values.iter().any(|v| !v.is_finite()) {
                    return self.fail(format!("non-finite values in {}", m.weight));
                }
                for c in e.counts.iter_mut() {
                    *c += m.n_rows() / n_mat;
                }
                let max = e.counts.iter().copied().max().unwrap_or(0);
                self.note_chunks(max);
            }
        }
    }
}

/// The observer handed to llama.cpp: the shared collector.
struct Shared(Arc<Mutex<Collector>>);

impl EvalObserver for Shared {
    fn wants(&mut self, node: &MatMulAsk) -> bool {
        match node.op {
            MatMulOp::Expert => true,
            MatMulOp::Dense => {
                let process_output = self.0.lock().map(|c| c.process_output).unwrap_or(false);
                node.rows >= 16
                    && node.input_f32
                    && (node.weight.starts_with("blk.")
                        || (process_output && node.weight == "output.weight"))
            }
        }
    }

    fn observe(&mut self, input: &MatMulInput) {
        if let Ok(mut c) = self.0.lock() {
            c.collect(input);
        }
    }
}

/// The text as llama's `-f` reads it: UTF-8, one trailing newline dropped, not empty.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{}: cannot read the text", path.display()))?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{}: the text is not UTF-8 (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.ends_with('\n') {
        text.pop();
    }
    if text.trim().is_empty() {
        bail!("{}: the text is empty", path.display());
    }
    Ok(text)
}

/// The options' own checks (a chunk of at least 16 tokens, a thread, a chunk).
pub fn check_options(opts: &ImatrixOptions) -> Result<()> {
    if opts.n_ctx < 16 {
        bail!(
            "a chunk of {} tokens is too small (at least 16)",
            opts.n_ctx
        );
    }
    if opts.threads == 0 {
        bail!("threads must be at least 1");
    }
    if opts.max_chunks == Some(0) {
        bail!("--chunks must be at least 1");
    }
    Ok(())
}

/// `-log p(tok)` from a row of logits, as llama-perplexity's `log_softmax` computes it.
fn nll(logits: &[f32], tok: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    -((logits[tok] - max) as f64 - sum.ln())
}

/// Computes the importance matrix of `model` on the text at `text_path` and writes it to `out`
/// (replacing it). `progress` gets a line per group of chunks.
pub fn run(
    model_path: &Path,
    text_path: &Path,
    out: &Path,
    opts: &ImatrixOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ImatrixSummary> {
    let t0 = Instant::now();
    let n_ctx = opts.n_ctx as usize;
    check_options(opts)?;
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        bail!("{}: no such folder for the output", out_dir.display());
    }
    let text = read_text(text_path)?;
    if !model_path.is_file() {
        bail!("{}: no such file", model_path.display());
    }
    drop(crate::gguf::GgufFile::open(model_path)?);

    crate::llama::backend();
    let model = Model::load(model_path, 999)?;
    let tokens = model.tokenize(&text, true).with_context(|| {
        format!(
            "{}: tokenizing {}",
            model_path.display(),
            text_path.display()
        )
    })?;
    if tokens.len() < n_ctx {
        bail!(
            "{}: the text tokenizes to {} tokens, shorter than one chunk of {n_ctx}: give a \
             longer text or a smaller -c",
            text_path.display(),
            tokens.len()
        );
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunk = opts.max_chunks.map_or(n_chunk_max, |c| c.min(n_chunk_max));
    let n_seq = (N_BATCH_MAX / n_ctx).max(1);
    let n_batch = N_BATCH_MAX.min(n_seq * n_ctx);
    let num_batches = n_ctx.div_ceil(n_batch);

    let collector = Arc::new(Mutex::new(Collector {
        process_output: opts.process_output,
        chunk_size: n_ctx as i64,
        ..Default::default()
    }));
    let ctx = Ctx::new_observed(
        &model,
        &ObservedCtxParams {
            n_ctx: (n_seq * n_ctx) as u32,
            n_batch: n_batch as u32,
            n_ubatch: n_batch.min(N_UBATCH_MAX) as u32,
            n_seq_max: n_seq as u32,
            n_threads: opts.threads,
        },
        Box::new(Shared(collector.clone())),
    )
    .with_context(|| format!("{}", model_path.display()))?;
    if ctx.adds_eos() {
        bail!(
            "{}: the vocabulary appends EOS to every text; llama-imatrix refuses such models too",
            model_path.display()
        );
    }
    let (n_vocab, bos) = ctx.vocab();
    let n_vocab = n_vocab as usize;
    progress(&format!(
        "{}: {} tokens, {n_chunk} chunks of {n_ctx} ({n_seq} per batch)",
        text_path.display(),
        tokens.len()
    ));

    let first = n_ctx / 2;
    let mut nll_sum = 0f64;
    let mut count = 0usize;
    let mut batch = crate::llama::raw::BatchExt::new(&ctx)?;
    let mut owned: Vec<f32> = Vec::new();
    for i in (0..n_chunk).step_by(n_seq) {
        crate::pipeline::check_interrupted()?;
        let n_seq_batch = n_seq.min(n_chunk - i);
        let start = i * n_ctx;
        ctx.clear();
        owned.clear();
        for j in 0..num_batches {
            let batch_start = j * n_batch;
            let size = (n_ctx - batch_start).min(n_batch);
            batch.clear();
            for s in 0..n_seq_batch {
                for k in 0..size {
                    let pos = batch_start + k;
                    let tok = match (pos, bos) {
                        (0, Some(b)) => b,
                        _ => tokens[start + s * n_ctx + pos],
                    };
                    batch.add_seq(tok, pos as i32, s as i32, true)?;
                }
            }
            ctx.process(&mut batch, "chunk")
                .with_context(|| format!("{}: chunk {}", model_path.display(), i + 1))?;
            if let Some(e) = collector.lock().ok().and_then(|c| c.error.clone()) {
                bail!("{}: {e}", model_path.display());
            }
            if num_batches > 1 {
                for k in 0..size {
                    ctx.with_logits_ith(k as i32, |l| owned.extend_from_slice(l))?;
                }
            }
        }
        for s in 0..n_seq_batch {
            let chunk = &tokens[start + s * n_ctx..start + (s + 1) * n_ctx];
            for pos in first..n_ctx - 1 {
                let next = chunk[pos + 1] as usize;
                let v = if num_batches > 1 {
                    nll(&owned[pos * n_vocab..(pos + 1) * n_vocab], next)
                } else {
                    ctx.with_logits_ith((s * n_ctx + pos) as i32, |l| nll(l, next))?
                };
                nll_sum += v;
                count += 1;
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let done = i + n_seq_batch;
        let eta = elapsed / done as f64 * (n_chunk - done) as f64;
        progress(&format!(
            "chunks {done}/{n_chunk}  ppl {:.4}  {:.1}s elapsed, ~{:.0}s left",
            (nll_sum / count.max(1) as f64).exp(),
            elapsed,
            eta
        ));
    }
    drop(batch);
    drop(ctx);
    let c = Arc::try_unwrap(collector)
        .map_err(|_| anyhow!("internal: the collector is still shared"))?
        .into_inner()
        .map_err(|_| anyhow!("internal: the collector panicked"))?;
    if let Some(e) = c.error {
        bail!("{}: {e}", model_path.display());
    }
    if c.stats.is_empty() {
        bail!(
            "{}: llama.cpp multiplied by no weight matrix that llama-imatrix collects",
            model_path.display()
        );
    }
    let n_entries = c.stats.len();
    write(
        out,
        &c.stats,
        &text_path.display().to_string(),
        c.last_chunk as u32,
        n_ctx as u32,
    )?;
    Ok(ImatrixSummary {
        n_chunks: n_chunk,
        n_tokens: n_chunk * n_ctx,
        text_tokens: tokens.len(),
        ppl: (nll_sum / count.max(1) as f64).exp(),
        n_entries,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes `stats` in llama-imatrix's GGUF format (`save_imatrix`) to `out`, through a temporary
/// file renamed at the end.
pub fn write(
    out: &Path,
    stats: &HashMap<String, Stats>,
    dataset: &str,
    chunk_count: u32,
    chunk_size: u32,
) -> Result<()> {
    let mut md = Metadata::new();
    md.set_str("general.type", "imatrix");
    md.set(
        "imatrix.datasets",
        Value::Array(Array::Str(vec![dataset.to_string()])),
    );
    md.set_u32("imatrix.chunk_count", chunk_count);
    md.set_u32("imatrix.chunk_size", chunk_size);
    let mut names: Vec<&String> = stats
        .iter()
        .filter(|(_, s)| !s.values.is_empty() && !s.counts.is_empty())
        .map(|(n, _)| n)
        .collect();
    names.sort();
    let f32_ty = TypeId::of(GgmlType::F32);
    // llama-imatrix makes 2-D tensors [n, n_mat]; GGUF stores ggml_n_dims of them, which drops
    // a trailing 1 (a dense weight's entries are 1-D, an expert tensor's 2-D).
    let dims = |n: u64, nmat: u64| if nmat == 1 { vec![n] } else { vec![n, nmat] };
    let mut entries = Vec::with_capacity(names.len() * 2);
    for n in &names {
        let s = &stats[*n];
        let nmat = s.counts.len() as u64;
        entries.push(TensorEntry {
            name: format!("{n}.in_sum2"),
            dims: dims(s.values.len() as u64 / nmat, nmat),
            ty: f32_ty,
            bytes: s.values.len() as u64 * 4,
        });
        entries.push(TensorEntry {
            name: format!("{n}.counts"),
            dims: dims(1, nmat),
            ty: f32_ty,
            bytes: nmat * 4,
        });
    }
    let mut w = GgufWriter::create(out, true, &md, entries)?;
    let mut put = |vals: &mut dyn Iterator<Item = f32>| -> Result<()> {
        let bytes: Vec<u8> = vals.flat_map(|v| v.to_le_bytes()).collect();
        w.write(&bytes)?;
        w.end_tensor()
    };
    for n in &names {
        let s = &stats[*n];
        put(&mut s.values.iter().copied())?;
        put(&mut s.counts.iter().map(|&c| c as f32))?;
    }
    w.finish()
        .with_context(|| format!("{}: writing the importance matrix", out.display()))
}
