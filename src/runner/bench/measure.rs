//! Measuring one test as llama-bench does: a fresh context, the warmup, the timed repetitions,
//! and llama-bench's `test_prompt` and `test_gen`.

use super::crand::CRand;
use super::matrix::Test;
use super::memory::{kv_cache_bytes, ModelInfo};
use crate::llama::raw::{BatchExt, Ctx, CtxParams, Model, Token};
use anyhow::{bail, Context, Result};
use std::time::Instant;

/// What one test measured.
pub(super) struct Measured {
    pub(super) samples_ns: Vec<u64>,
    pub(super) samples_ts: Vec<f64>,
    pub(super) kv_cache_bytes: u64,
    pub(super) tokens_counted: u64,
}

/// Runs one test on `model`: a fresh context, the warmup, then the timed repetitions.
pub(super) fn run_test(
    model: &Model,
    info: &ModelInfo,
    t: &Test,
    rng: &mut CRand,
) -> Result<Measured> {
    let cp = CtxParams {
        n_ctx: t.n_prompt + t.n_gen,
        n_batch: t.n_batch,
        n_ubatch: t.n_ubatch,
        type_kv: t.cache,
        flash_attn: t.flash_attn,
        n_threads: t.n_threads,
        n_seq_max: 1,
        threadpool: true,
    };
    let ctx = Ctx::new(model, &cp)
        .context("llama.cpp cannot create the context (KILN_LLAMA_LOG=1 shows its reason)")?;
    let kv_cache_bytes = kv_cache_bytes(info, &ctx);
    let n_threads = t.n_threads as i32;
    ctx.clear();
    // warmup
    if t.n_prompt > 0 {
        test_prompt(&ctx, t.n_prompt, t.n_batch, n_threads, rng)?;
    }
    if t.n_gen > 0 {
        test_gen(&ctx, 1, n_threads, rng)?;
    }
    let n_tokens = (t.n_prompt + t.n_gen) as u64;
    let mut samples_ns = Vec::with_capacity(t.repetitions as usize);
    let mut counted = None;
    for _ in 0..t.repetitions {
        ctx.clear();
        let start = Instant::now();
        let mut n = 0;
        if t.n_prompt > 0 {
            n += test_prompt(&ctx, t.n_prompt, t.n_batch, n_threads, rng)?;
        }
        if t.n_gen > 0 {
            n += test_gen(&ctx, t.n_gen, n_threads, rng)?;
        }
        let ns = (start.elapsed().as_nanos() as u64).max(1);
        samples_ns.push(ns);
        match counted {
            None => counted = Some(n),
            Some(c) if c != n => bail!("repetitions decoded {c} and {n} tokens"),
            _ => {}
        }
    }
    let samples_ts = samples_ns
        .iter()
        .map(|&ns| 1e9 * n_tokens as f64 / ns as f64)
        .collect();
    Ok(Measured {
        samples_ns,
        samples_ts,
        kv_cache_bytes,
        tokens_counted: counted.unwrap_or(0),
    })
}

/// llama-bench's `test_prompt`: `n_prompt` random tokens (BOS first when the vocabulary adds
/// one) in batches of `n_batch`. Returns the tokens decoded.
fn test_prompt(
    ctx: &Ctx,
    n_prompt: u32,
    n_batch: u32,
    n_threads: i32,
    rng: &mut CRand,
) -> Result<u64> {
    ctx.set_n_threads(n_threads);
    let (n_vocab, bos) = ctx.vocab();
    let mut tokens: Vec<Token> = vec![0; n_batch as usize];
    let mut n_processed = 0u32;
    let mut decoded = 0u64;
    while n_processed < n_prompt {
        let n_tokens = (n_prompt - n_processed).min(n_batch) as usize;
        tokens[0] = match bos {
            Some(b) if n_processed == 0 => b,
            _ => rng.next() % n_vocab,
        };
        for t in tokens.iter_mut().take(n_tokens).skip(1) {
            *t = rng.next() % n_vocab;
        }
        // common_batch_get_one: positions after the last one in memory, output on the last.
        let mut batch = BatchExt::new(ctx)?;
        let pos0 = ctx.seq_pos_max(0) + 1;
        for (i, &tok) in tokens[..n_tokens].iter().enumerate() {
            batch.add(tok, pos0 + i as i32, i + 1 == n_tokens)?;
        }
        ctx.process(&mut batch, "prompt batch")?;
        decoded += n_tokens as u64;
        n_processed += n_tokens as u32;
    }
    ctx.synchronize();
    Ok(decoded)
}

/// llama-bench's `test_gen`: `n_gen` single-token decodes (BOS first when the vocabulary adds
/// one, then random tokens), synchronizing after each. Returns the tokens decoded.
fn test_gen(ctx: &Ctx, n_gen: u32, n_threads: i32, rng: &mut CRand) -> Result<u64> {
    ctx.set_n_threads(n_threads);
    let (n_vocab, bos) = ctx.vocab();
    let mut token = match bos {
        Some(b) => b,
        None => rng.next() % n_vocab,
    };
    let mut batch = BatchExt::new(ctx)?;
    let pos0 = ctx.seq_pos_max(0) + 1;
    let mut decoded = 0u64;
    for i in 0..n_gen as i32 {
        batch.clear();
        batch.add(token, pos0 + i, true)?;
        ctx.process(&mut batch, "generation batch")?;
        ctx.synchronize();
        decoded += 1;
        token = rng.next() % n_vocab;
    }
    Ok(decoded)
}
