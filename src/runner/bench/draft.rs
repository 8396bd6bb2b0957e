//! `kiln bench TARGET --draft DRAFT`: greedy speculative decoding with a draft model (usually a
//! smaller quantization of the same model), against the target's own greedy generation.
//!
//! **The algorithm** is llama.cpp's speculative decoding with greedy sampling
//! (`examples/speculative-simple` with `common/speculative.cpp`), kept simple:
//!
//! 1. Both models decode the prompt but its last token (`last`); `n_past` positions are in
//!    both KV caches.
//! 2. A step: the draft decodes the tokens it has not seen (the target's token of the previous
//!    step, and a drafted token it had not decoded yet) ending with `last`, then proposes `n`
//!    tokens greedily, one decode each (`n = min(draft_max, tokens still wanted - 1)`, so that
//!    a step never generates more than wanted; the draft never stops early on low confidence,
//!    unlike llama.cpp's `p_min`).
//! 3. The target decodes `last` and the `n` drafted tokens in **one batch** at positions
//!    `n_past ..= n_past + n`, with logits for each. The longest prefix of drafted tokens that
//!    equal the target's argmax at the position before them is accepted; then the target's own
//!    argmax after that prefix (at the first mismatch, or after all `n`) is appended. A step
//!    thus generates `accepted + 1` tokens, every one of them the target's greedy choice.
//! 4. The rejected positions are removed from both KV caches (`llama_memory_seq_rm`), the
//!    appended token becomes `last`, and steps go on until `n_gen` tokens are generated.
//!
//! Greedy is the argmax with the first index on a tie (what [`crate::llama::generate`] picks).
//! End-of-generation tokens do not stop generation: every run generates exactly `n_gen`
//! tokens, as llama-bench's tg tests do.
//!
//! **What is measured.** The bundled text ([`crate::runner::eval::default_text`]) is tokenized
//! by the target with BOS when its vocabulary adds one; `n_prompts` prompts of `prompt_len`
//! tokens are cut from it at evenly spaced offsets (`k * len / n_prompts`), each starting with
//! BOS when the vocabulary adds one (then `prompt_len - 1` text tokens). The draft must tokenize
//! the text identically (same vocabulary). For each prompt, with a fresh KV cache (cleared),
//! plain generation (the target alone, one token per decode, what llama-bench's tg does) and
//! speculative generation each produce `n_gen` tokens. The time of each is wall time from
//! after the prompt is decoded (by both models for the speculative run) to the last generated
//! token, `llama_synchronize`d; prompt processing is not timed. tokens/s = all prompts' tokens
//! / the sum of their times. One warmup (a prompt and one generated token on each model) comes
//! first. Reported: the speed of each, the speed-up (speculative / plain), the acceptance rate
//! (accepted drafted tokens / drafted tokens), the mean tokens accepted per step and whether the
//! speculative output equals the plain one for every prompt (it must: a mismatch is a bug, or
//! llama.cpp's batched and one-token decodes disagreeing on a near-tie argmax).
//!
//! Both contexts are kiln bench's defaults otherwise: f16 KV cache, flash attention off,
//! `n_ctx = n_batch = n_ubatch = prompt_len + n_gen + draft_max`, `-t` threads, one threadpool
//! for both (the draft's graphs run on the target's pool: two pools polling in turn on the same
//! cores cost more than they give).

use crate::llama::raw::{BatchExt, Ctx, CtxParams, Model, Token};
use crate::runner::file_label;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a speculative-decoding benchmark varies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DraftOptions {
    /// Tokens drafted per step at most (`--draft-max`).
    pub draft_max: u32,
    /// Tokens generated per prompt (`-n`).
    pub n_gen: u32,
    /// Prompts cut from the bundled text.
    pub n_prompts: u32,
    /// Tokens per prompt (BOS included).
    pub prompt_len: u32,
    pub threads: u32,
    /// Layers offloaded to a GPU (both models).
    pub n_gpu_layers: u32,
}

impl Default for DraftOptions {
    fn default() -> Self {
        DraftOptions {
            draft_max: 8,
            n_gen: 128,
            n_prompts: 4,
            prompt_len: 64,
            threads: crate::runner::default_threads(),
            n_gpu_layers: 99,
        }
    }
}

/// One target with one draft. A pair measured in a worker process that failed has `error` set
/// and zeros elsewhere.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DraftResult {
    pub target_filename: String,
    pub draft_filename: String,
    /// `llama_model_desc` of each.
    pub target_type: String,
    pub draft_type: String,
    pub n_threads: u32,
    pub draft_max: u32,
    pub n_prompts: u32,
    pub prompt_len: u32,
    /// Tokens generated per prompt.
    pub n_gen: u32,
    /// Tokens generated in all, by each of the two runs.
    pub tokens_generated: u64,
    /// Wall time of plain greedy generation (all prompts), nanoseconds.
    pub plain_ns: u64,
    /// Wall time of speculative generation (all prompts), nanoseconds.
    pub draft_ns: u64,
    /// Tokens per second of plain greedy generation by the target.
    pub plain_ts: f64,
    /// Tokens per second of speculative generation.
    pub draft_ts: f64,
    /// draft_ts / plain_ts.
    pub speedup: f64,
    /// Tokens the draft proposed.
    pub n_drafted: u64,
    /// Drafted tokens the target accepted.
    pub n_accepted: u64,
    /// n_accepted / n_drafted (0 when nothing was drafted).
    pub acceptance: f64,
    /// Target batches (steps) of the speculative runs.
    pub n_steps: u64,
    /// n_accepted / n_steps.
    pub mean_accepted: f64,
    /// Whether the speculative output equals the plain greedy output for every prompt.
    pub identical: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts of one speculative generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    pub drafted: u64,
    pub accepted: u64,
    pub steps: u64,
}

impl SpecStats {
    fn add(&mut self, o: SpecStats) {
        self.drafted += o.drafted;
        self.accepted += o.accepted;
        self.steps += o.steps;
    }
}

/// A target and a draft model loaded, each with its context.
pub struct Pair {
    // contexts before models: dropped first; the draft's before the target's, whose
    // threadpool it runs on
    draft_ctx: Ctx<'static>,
    target_ctx: Ctx<'static>,
    target: Box<Model>,
    draft: Box<Model>,
    opts: DraftOptions,
}

impl Pair {
    /// Loads both files (they may be the same file) and makes their contexts.
    pub fn load(target: &Path, draft: &Path, opts: &DraftOptions) -> Result<Pair> {
        if opts.draft_max == 0 {
            bail!("--draft-max must be at least 1");
        }
        if opts.prompt_len < 2 {
            bail!("prompts need at least 2 tokens");
        }
        let t = Box::new(Model::load(target, opts.n_gpu_layers)?);
        let d = Box::new(Model::load(draft, opts.n_gpu_layers)?);
        if t.n_vocab() != d.n_vocab() {
            bail!(
                "{} and {}: vocabularies of {} and {} tokens; a draft must share the target's",
                target.display(),
                draft.display(),
                t.n_vocab(),
                d.n_vocab()
            );
        }
        let n_ctx = opts.prompt_len + opts.n_gen + opts.draft_max + 1;
        let cp = CtxParams {
            n_ctx,
            n_batch: n_ctx,
            n_ubatch: n_ctx,
            type_kv: llama_cpp_sys_2::GGML_TYPE_F16,
            flash_attn: false,
            n_threads: opts.threads,
            n_seq_max: 1,
            threadpool: true,
        };
        let ctx = |m: &Model| -> Result<Ctx<'static>> {
            // Safety: the model is boxed (its address is fixed) and outlives the context: the
            // struct's fields drop the contexts first.
            let m: &'static Model = unsafe { &*(m as *const Model) };
            Ctx::new(m, &cp)
                .context("llama.cpp cannot create the context (KILN_LLAMA_LOG=1 shows its reason)")
        };
        let target_ctx = ctx(&t)?;
        let draft_ctx = ctx(&d)?;
        // Safety: the draft's context is dropped before the target's (the fields' order).
        unsafe { draft_ctx.share_threadpool_of(&target_ctx) };
        Ok(Pair {
            target_ctx,
            draft_ctx,
            target: t,
            draft: d,
            opts: opts.clone(),
        })
    }

    /// The prompts cut from `text` (see the module's documentation); the draft must tokenize
    /// it as the target does.
    pub fn prompts(&self, text: &str) -> Result<Vec<Vec<Token>>> {
        let toks = self.target.tokenize(text, true)?;
        if self.draft.tokenize(text, true)? != toks {
            bail!("the draft tokenizes the text differently from the target");
        }
        let (_, bos) = self.target_ctx.vocab();
        let len = self.opts.prompt_len as usize;
        let body = len - usize::from(bos.is_some());
        let text_toks = &toks[usize::from(bos.is_some() && toks.first() == bos.as_ref())..];
        let n = self.opts.n_prompts.max(1) as usize;
        if text_toks.len() < body * n {
            bail!(
                "the text has {} tokens, too few for {n} prompts of {len}",
                text_toks.len()
            );
        }
        Ok((0..n)
            .map(|k| {
                let off = (k * text_toks.len() / n).min(text_toks.len() - body);
                bos.into_iter()
                    .chain(text_toks[off..off + body].iter().copied())
                    .collect()
            })
            .collect())
    }

    /// Clears both caches and decodes `prompt` but its last token on both. Returns n_past.
    fn start(&self, prompt: &[Token], draft_too: bool) -> Result<i32> {
        let head = &prompt[..prompt.len() - 1];
        let mut ctxs = vec![&self.target_ctx];
        if draft_too {
            ctxs.push(&self.draft_ctx);
        }
        for c in ctxs {
            c.clear();
            if !head.is_empty() {
                let mut b = BatchExt::new(c)?;
                for (i, &t) in head.iter().enumerate() {
                    b.add(t, i as i32, false)?;
                }
                c.process(&mut b, "prompt batch")?;
            }
            c.synchronize();
        }
        Ok(head.len() as i32)
    }

    /// The target's greedy generation of `n` tokens after `prompt`, one token per decode
    /// (the prompt's last token on its own). Returns the tokens and the generation's wall time
    /// in ns (the prompt not included).
    pub fn greedy(&self, prompt: &[Token], n: usize) -> Result<(Vec<Token>, u64)> {
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        let mut pos = self.start(prompt, false)?;
        let ctx = &self.target_ctx;
        let t0 = Instant::now();
        let mut last = *prompt.last().unwrap();
        let mut out = Vec::with_capacity(n);
        let mut b = BatchExt::new(ctx)?;
        while out.len() < n {
            b.clear();
            b.add(last, pos, true)?;
            ctx.process(&mut b, "generation batch")?;
            last = ctx.argmax_ith(0)?;
            out.push(last);
            pos += 1;
        }
        ctx.synchronize();
        Ok((out, t0.elapsed().as_nanos() as u64))
    }

    /// Speculative generation of `n` tokens after `prompt` (the module's algorithm). Returns
    /// the tokens, the counts, and the generation's wall time in ns (prompt not included).
    pub fn speculative(&self, prompt: &[Token], n: usize) -> Result<(Vec<Token>, SpecStats, u64)> {
        if prompt.is_empty() {
            bail!("empty prompt");
        }
        let (tc, dc) = (&self.target_ctx, &self.draft_ctx);
        let mut n_past = self.start(prompt, true)?;
        let t0 = Instant::now();
        // every token so far: the prompt, then the generated ones; its last is `last`, at
        // position n_past, in neither cache yet
        let mut all: Vec<Token> = prompt.to_vec();
        let mut out: Vec<Token> = Vec::with_capacity(n);
        // positions 0..draft_past of `all` are in the draft's cache
        let mut draft_past = n_past;
        let mut stats = SpecStats::default();
        let mut tb = BatchExt::new(tc)?;
        let mut db = BatchExt::new(dc)?;
        let mut drafted: Vec<Token> = Vec::with_capacity(self.opts.draft_max as usize);
        while out.len() < n {
            let want = (self.opts.draft_max as usize).min(n - out.len() - 1);
            // the draft: catch up to `last`, then propose `want` tokens
            drafted.clear();
            if want > 0 {
                db.clear();
                for p in draft_past..=n_past {
                    db.add(all[p as usize], p, p == n_past)?;
                }
                dc.process(&mut db, "draft batch")?;
                let mut d = dc.argmax_ith(db_last(draft_past, n_past))?;
                drafted.push(d);
                while drafted.len() < want {
                    db.clear();
                    db.add(d, n_past + drafted.len() as i32, true)?;
                    dc.process(&mut db, "draft batch")?;
                    d = dc.argmax_ith(0)?;
                    drafted.push(d);
                }
                // in the draft's cache now: up to `last` and all drafted tokens but the last
                draft_past = n_past + drafted.len() as i32;
            }
            // the target: `last` and the drafted tokens in one batch, logits for each
            tb.clear();
            tb.add(all[n_past as usize], n_past, true)?;
            for (i, &d) in drafted.iter().enumerate() {
                tb.add(d, n_past + 1 + i as i32, true)?;
            }
            tc.process(&mut tb, "target batch")?;
            let mut accepted = 0;
            let next = loop {
                let t = tc.argmax_ith(accepted as i32)?;
                if accepted < drafted.len() && t == drafted[accepted] {
                    accepted += 1;
                } else {
                    break t;
                }
            };
            stats.drafted += drafted.len() as u64;
            stats.accepted += accepted as u64;
            stats.steps += 1;
            out.extend_from_slice(&drafted[..accepted]);
            out.push(next);
            all.extend_from_slice(&drafted[..accepted]);
            all.push(next);
            // kept in the target's cache: `last` and the accepted tokens
            n_past += accepted as i32 + 1;
            if !tc.seq_rm(0, n_past, -1) {
                bail!("llama.cpp cannot remove rejected tokens from the target's cache");
            }
            // the draft's cache holds up to draft_past - 1; keep what was accepted
            draft_past = draft_past.min(n_past);
            if !dc.seq_rm(0, draft_past, -1) {
                bail!("llama.cpp cannot remove rejected tokens from the draft's cache");
            }
        }
        tc.synchronize();
        Ok((out, stats, t0.elapsed().as_nanos() as u64))
    }

    /// One warmup (a prompt and a generated token on each model), then, for every prompt,
    /// plain and speculative generation of `n_gen` tokens.
    pub fn measure(&self, prompts: &[Vec<Token>]) -> Result<(SpecStats, u64, u64, bool)> {
        let n = self.opts.n_gen as usize;
        if let Some(p) = prompts.first() {
            self.greedy(p, 1)?;
            self.start(p, true)?;
            let mut b = BatchExt::new(&self.draft_ctx)?;
            b.add(p[p.len() - 1], p.len() as i32 - 1, true)?;
            self.draft_ctx.process(&mut b, "warmup")?;
            self.draft_ctx.synchronize();
        }
        let mut stats = SpecStats::default();
        let (mut plain_ns, mut spec_ns, mut identical) = (0u64, 0u64, true);
        for p in prompts {
            let (plain, ns) = self.greedy(p, n)?;
            plain_ns += ns;
            let (spec, s, ns) = self.speculative(p, n)?;
            spec_ns += ns;
            stats.add(s);
            identical &= plain == spec;
        }
        Ok((stats, plain_ns, spec_ns, identical))
    }

    /// The target's logits after `seq` (its cache cleared, `seq` decoded one token at a time as
    /// [`Pair::greedy`] decodes): to look at a position where two runs chose differently.
    pub fn target_logits(&self, seq: &[Token]) -> Result<Vec<f32>> {
        if seq.is_empty() {
            bail!("empty sequence");
        }
        let n_past = self.start(seq, false)?;
        let mut b = BatchExt::new(&self.target_ctx)?;
        b.add(seq[seq.len() - 1], n_past, true)?;
        self.target_ctx.process(&mut b, "batch")?;
        self.target_ctx.logits_ith(0)
    }

    /// `llama_model_desc` of the target and the draft.
    pub fn descs(&self) -> (String, String) {
        (self.target.desc(), self.draft.desc())
    }
}

/// The batch index of the draft's last catch-up token.
fn db_last(draft_past: i32, n_past: i32) -> i32 {
    n_past - draft_past
}

/// Measures `target` with `draft` in this process.
pub fn run(
    target: &Path,
    draft: &Path,
    opts: &DraftOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<DraftResult> {
    crate::llama::backend();
    let pair = Pair::load(target, draft, opts)?;
    let prompts = pair.prompts(crate::runner::eval::default_text())?;
    let (stats, plain_ns, draft_ns, identical) = pair.measure(&prompts)?;
    let (target_type, draft_type) = pair.descs();
    let tokens = prompts.len() as u64 * opts.n_gen as u64;
    let ts = |ns: u64| tokens as f64 * 1e9 / ns.max(1) as f64;
    let r = DraftResult {
        target_filename: target.display().to_string(),
        draft_filename: draft.display().to_string(),
        target_type,
        draft_type,
        n_threads: opts.threads,
        draft_max: opts.draft_max,
        n_prompts: prompts.len() as u32,
        prompt_len: opts.prompt_len,
        n_gen: opts.n_gen,
        tokens_generated: tokens,
        plain_ns,
        draft_ns,
        plain_ts: ts(plain_ns),
        draft_ts: ts(draft_ns),
        speedup: ts(draft_ns) / ts(plain_ns),
        n_drafted: stats.drafted,
        n_accepted: stats.accepted,
        acceptance: if stats.drafted > 0 {
            stats.accepted as f64 / stats.drafted as f64
        } else {
            0.0
        },
        n_steps: stats.steps,
        mean_accepted: if stats.steps > 0 {
            stats.accepted as f64 / stats.steps as f64
        } else {
            0.0
        },
        identical,
        error: None,
    };
    progress(&format!(
        "{} with draft {}: {:.2} -> {:.2} t/s (x{:.2}), acceptance {:.1}%{}",
        file_label(&r.target_filename),
        file_label(&r.draft_filename),
        r.plain_ts,
        r.draft_ts,
        r.speedup,
        100.0 * r.acceptance,
        if identical {
            ""
        } else {
            ", OUTPUT DIFFERS from plain greedy"
        }
    ));
    Ok(r)
}

/// Measures each target with `draft`, each pair in its own worker process when `worker` is set
/// (a pair llama.cpp aborts on is one result with `error`), else in this process.
pub fn run_all(
    targets: &[PathBuf],
    draft: &Path,
    opts: &DraftOptions,
    worker: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<DraftResult>> {
    use crate::runner::worker::{measure_isolated, DraftJob, MeasureJob};
    let mut out = Vec::new();
    for t in targets {
        match worker {
            None => out.push(run(t, draft, opts, progress)?),
            Some(exe) => {
                let job = MeasureJob {
                    draft: Some(DraftJob {
                        draft: draft.to_path_buf(),
                        options: opts.clone(),
                    }),
                    ..MeasureJob::new(t)
                };
                let m = measure_isolated(exe, &job, progress);
                match (m.draft, m.error) {
                    (Some(r), None) => out.push(r),
                    (_, e) => {
                        let e = e.unwrap_or_else(|| "the worker measured nothing".into());
                        progress(&format!("failed: {e}"));
                        out.push(DraftResult {
                            target_filename: t.display().to_string(),
                            draft_filename: draft.display().to_string(),
                            error: Some(e),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}
