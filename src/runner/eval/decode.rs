//! Decoding chunks on llama.cpp as llama-perplexity does: its batch layout and contexts, the
//! scored logits of each chunk, building the reference's base file and scoring a model against
//! it.

use super::cache::{self, file_name, write_atomically};
use super::kld::{quantize_log_softmax, record_len, score_token, KldAccum, TokenScore};
use super::{N_BATCH_MAX, N_UBATCH_MAX};
use crate::llama;
use crate::runner::EvalOptions;
use anyhow::{anyhow, bail, ensure, Context, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use rayon::prelude::*;
use std::io::BufReader;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

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
pub(super) fn build_base(
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
pub(super) struct BaseReader {
    pub(super) header: cache::Header,
    r: BufReader<std::fs::File>,
    path: PathBuf,
}

impl BaseReader {
    pub(super) fn open(path: &Path) -> Result<BaseReader> {
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
pub(super) fn score_model(
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
