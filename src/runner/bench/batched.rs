//! `kiln bench --parallel`: llama-batched-bench's measurement (`tools/batched-bench/
//! batched-bench.cpp`), several sequences decoding at once, step for step:
//!
//! - **Context.** One per model and setting (`-b`, `-ub`, cache type, `-fa`, `-t`; llama-batched-bench
//!   takes one of each), with `n_seq_max = max(npl)` and `kv_unified` off (its default), so that
//!   each sequence has its own stream of `n_ctx / n_seq_max` cells; no threadpool is attached (it
//!   attaches none). `n_ctx` is `--parallel-ctx` (its -c), or when that is 0 the smallest that
//!   holds every setting, `max(npl) * max(pp + tg)` (its -c 0 would take the model's training
//!   context). `n_kv_max = llama_n_ctx(ctx)`.
//! - **Tokens.** `rand() % n_vocab` (no BOS), from C's `rand()` as glibc implements it, unseeded:
//!   a fresh generator for each file, as each llama-batched-bench run is a fresh process.
//! - **Warm-up.** Once per context: 16 tokens at positions 0..15 of sequence 0, no outputs,
//!   decoded and synchronized.
//! - **Each setting** (loops pp, then tg, then pl, as there): skipped when `n_kv = pl * (pp + tg)`
//!   exceeds `n_kv_max` (llama-batched-bench's `n_ctx_req` without `-kvu`, with or without
//!   `-pps`), and also (kiln only) when one sequence's `pp + tg` exceeds its stream,
//!   `llama_n_ctx_seq`, where llama-batched-bench would fail to decode. One batch is built: `pp` tokens at positions 0..pp-1 for each sequence 0..pl-1 (for
//!   sequence 0 only with a shared prompt), output on each sequence's last token. The memory is
//!   cleared; the time is taken; the batch is decoded in chunks of `n_batch` tokens
//!   (`llama_process`, no synchronization between chunks), then `llama_synchronize`; the time is
//!   taken (T_PP). With a shared prompt, sequence 0 is copied to 1..pl-1
//!   (`llama_memory_seq_cp(mem, 0, i, -1, -1)`), one dummy token is decoded at position pp of
//!   sequence 0 to apply the copies, and removed (`llama_memory_seq_rm(mem, 0, pp, -1)`); this is
//!   outside both timings. Then `tg` steps, each one batch of `pl` tokens (one per sequence, at
//!   position pp + i, with output), decoded and synchronized (T_TG).
//! - **Figures**, llama-batched-bench's: `S_PP = (pps ? pp : pl*pp) / T_PP`, `S_TG = pl*tg /
//!   T_TG`, `T = T_PP + T_TG`, `S = ((pps ? pp : pl*pp) + pl*tg) / T`. llama-batched-bench
//!   computes them in `float` from microseconds; kiln in `f64` from nanoseconds.
//!
//! kiln adds the generation speed of one sequence (`S_TG / pl`), the KV cache bytes the setting
//! needs (`pl` streams of `pp + tg` cells, [`super::memory`]'s accounting) and those the context
//! allocated, and the tokens submitted in each timed phase, counted as they are added.

use super::crand::CRand;
use super::memory::{kv_cache_bytes, kv_cache_bytes_streams, ModelInfo};
use crate::llama::raw::{self, BatchExt, Ctx, CtxParams, GgmlTypeId, Model, Token};
use crate::runner::{BatchedResult, BenchOptions};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

/// llama.cpp's `LLAMA_MAX_SEQ`.
const MAX_SEQ: u32 = 256;

/// The batched options' checks (beyond those of the llama-bench matrix).
pub(super) fn check_options(o: &BenchOptions) -> Result<()> {
    if o.parallel.is_empty() {
        bail!("bench: --parallel has no value");
    }
    if o.parallel.iter().any(|&n| n == 0 || n > MAX_SEQ) {
        bail!(
            "bench: --parallel values must be between 1 and {MAX_SEQ} (llama.cpp's LLAMA_MAX_SEQ)"
        );
    }
    if o.n_prompt.is_empty() || o.n_gen.is_empty() {
        bail!("bench: --parallel needs -p and -n values");
    }
    if o.n_prompt.iter().chain(&o.n_gen).any(|&n| n == 0) {
        bail!("bench: with --parallel, -p (prompt tokens per sequence) and -n (tokens generated per sequence) must be at least 1");
    }
    let need = n_ctx_needed(o);
    if need > i32::MAX as u64 {
        bail!("bench: --parallel with these -p/-n needs a context of {need} cells, too large");
    }
    if o.parallel_ctx > i32::MAX as u32 {
        bail!("bench: --parallel-ctx too large");
    }
    Ok(())
}

/// `max(npl) * max(pp + tg)`: the context that holds every setting.
fn n_ctx_needed(o: &BenchOptions) -> u64 {
    let pl = o.parallel.iter().copied().max().unwrap_or(1) as u64;
    let len = o
        .n_prompt
        .iter()
        .flat_map(|&p| o.n_gen.iter().map(move |&g| p as u64 + g as u64))
        .max()
        .unwrap_or(0);
    pl * len
}

/// llama-batched-bench's `n_ctx_req` (without `-kvu`): the cells a setting fills.
pub fn n_kv(pp: u32, tg: u32, pl: u32) -> u64 {
    pl as u64 * (pp as u64 + tg as u64)
}

/// Measures every batched setting of `file` in this process.
pub(super) fn run_file(
    file: &Path,
    opts: &BenchOptions,
    cache_types: &[GgmlTypeId],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BatchedResult>> {
    let mut rng = CRand::new(1);
    let n_seq_max = opts.parallel.iter().copied().max().unwrap_or(1);
    let n_ctx = if opts.parallel_ctx > 0 {
        opts.parallel_ctx
    } else {
        n_ctx_needed(opts) as u32
    };
    let mut out = Vec::new();
    for &ngl in &opts.n_gpu_layers {
        let model = Model::load(file, ngl)?;
        let info = ModelInfo::read(&model, file)?;
        for &n_batch in &opts.batch {
            for &n_ubatch in &opts.ubatch {
                for &cache in cache_types {
                    for &flash_attn in &opts.flash_attn {
                        for &n_threads in &opts.threads {
                            let cp = CtxParams {
                                n_ctx,
                                n_batch,
                                n_ubatch,
                                type_kv: cache,
                                flash_attn,
                                n_threads,
                                n_seq_max,
                                threadpool: false,
                            };
                            let what = format!(
                                "{}: batched (threads {n_threads}, n_batch {n_batch}, n_ubatch \
                                 {n_ubatch}, cache {}, flash attention {}, ngl {ngl})",
                                file.display(),
                                raw::type_name(cache),
                                if flash_attn { "on" } else { "off" },
                            );
                            let rows = run_ctx(&model, &info, &cp, ngl, opts, &mut rng, progress)
                                .with_context(|| what.clone())?;
                            out.extend(rows.into_iter().map(|mut r| {
                                r.model_filename = file.display().to_string();
                                r
                            }));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// One context: the warm-up, then every (pp, tg, pl) in llama-batched-bench's order.
fn run_ctx(
    model: &Model,
    info: &ModelInfo,
    cp: &CtxParams,
    ngl: u32,
    opts: &BenchOptions,
    rng: &mut CRand,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BatchedResult>> {
    let ctx = Ctx::new(model, cp)
        .context("llama.cpp cannot create the context (KILN_LLAMA_LOG=1 shows its reason)")?;
    let (n_vocab, _) = ctx.vocab();
    let mut rand_token = || -> Token { rng.next() % n_vocab };
    let n_kv_max = ctx.n_ctx();
    let n_ctx_seq = ctx.n_ctx_seq();
    let n_batch = cp.n_batch as usize;
    let allocated = kv_cache_bytes(info, &ctx) * ctx.n_seq_max() as u64;
    // warm up
    let warm: Vec<Entry> = (0..16)
        .map(|i| Entry {
            token: rand_token(),
            pos: i,
            seq: 0,
            output: false,
        })
        .collect();
    decode(&ctx, &warm, n_batch, true)?;
    let mut out = Vec::new();
    for &pp in &opts.n_prompt {
        for &tg in &opts.n_gen {
            for &pl in &opts.parallel {
                let n_kv = n_kv(pp, tg, pl);
                if n_kv > n_kv_max as u64 || pp as u64 + tg as u64 > n_ctx_seq as u64 {
                    progress(&format!(
                        "batched pp {pp} tg {tg} pl {pl}: skipped, needs {n_kv} cells of the \
                         context's {n_kv_max}, {} per sequence of its {n_ctx_seq} (raise \
                         --parallel-ctx)",
                        pp + tg
                    ));
                    continue;
                }
                let shared = opts.pp_shared;
                let mut batch = Vec::new();
                for j in 0..(if shared { 1 } else { pl }) {
                    for i in 0..pp {
                        batch.push(Entry {
                            token: rand_token(),
                            pos: i as i32,
                            seq: j as i32,
                            output: i == pp - 1,
                        });
                    }
                }
                ctx.clear();
                let t_pp_start = Instant::now();
                let counted_pp = decode(&ctx, &batch, n_batch, false)?;
                ctx.synchronize();
                let t_pp = t_pp_start.elapsed().as_secs_f64();
                if shared {
                    for i in 1..pl as i32 {
                        ctx.seq_cp(0, i, -1, -1);
                    }
                    // run one dummy token to apply the memory copy
                    let dummy = [Entry {
                        token: rand_token(),
                        pos: pp as i32,
                        seq: 0,
                        output: true,
                    }];
                    decode(&ctx, &dummy, n_batch, true)?;
                    if !ctx.seq_rm(0, pp as i32, -1) {
                        bail!("llama.cpp cannot remove the dummy token of the shared prompt");
                    }
                }
                let t_tg_start = Instant::now();
                let mut counted_tg = 0;
                for i in 0..tg {
                    let step: Vec<Entry> = (0..pl)
                        .map(|j| Entry {
                            token: rand_token(),
                            pos: (pp + i) as i32,
                            seq: j as i32,
                            output: true,
                        })
                        .collect();
                    counted_tg += decode(&ctx, &step, n_batch, true)?;
                }
                let t_tg = t_tg_start.elapsed().as_secs_f64();
                let r = figures(pp, tg, pl, shared, t_pp, t_tg);
                let r = BatchedResult {
                    n_kv_max,
                    n_batch: cp.n_batch,
                    n_ubatch: cp.n_ubatch,
                    flash_attn: cp.flash_attn as i32,
                    n_gpu_layers: ngl,
                    n_threads: cp.n_threads,
                    n_threads_batch: cp.n_threads,
                    n_kv: n_kv as u32,
                    type_k: raw::type_name(cp.type_kv),
                    kv_cache_bytes: kv_cache_bytes_streams(
                        info,
                        pl,
                        pp + tg,
                        ctx.n_ubatch(),
                        ctx.type_k(),
                        ctx.type_v(),
                    ),
                    kv_cache_bytes_allocated: allocated,
                    tokens_counted_pp: counted_pp,
                    tokens_counted_tg: counted_tg,
                    ..r
                };
                progress(&format!(
                    "batched pp {pp} tg {tg} pl {pl}: S_PP {:.2} t/s, S_TG {:.2} t/s ({:.2} per \
                     sequence), S {:.2} t/s",
                    r.speed_pp, r.speed_tg, r.speed_tg_per_seq, r.speed
                ));
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// llama-batched-bench's figures from its two timings (seconds).
pub fn figures(pp: u32, tg: u32, pl: u32, shared: bool, t_pp: f64, t_tg: f64) -> BatchedResult {
    let (pp_f, tg_f, pl_f) = (pp as f64, tg as f64, pl as f64);
    let prompt_tokens = if shared { pp_f } else { pl_f * pp_f };
    let t = t_pp + t_tg;
    let speed_tg = pl_f * tg_f / t_tg;
    BatchedResult {
        is_pp_shared: shared as i32,
        pp,
        tg,
        pl,
        n_kv: n_kv(pp, tg, pl) as u32,
        t_pp,
        speed_pp: prompt_tokens / t_pp,
        t_tg,
        speed_tg,
        t,
        speed: (prompt_tokens + pl_f * tg_f) / t,
        speed_tg_per_seq: speed_tg / pl_f,
        ..Default::default()
    }
}

/// One entry of `common_batch`.
struct Entry {
    token: Token,
    pos: i32,
    seq: i32,
    output: bool,
}

/// llama-batched-bench's `decode_helper`: `entries` in chunks of `n_batch`, each one
/// `llama_process`, synchronizing after each when `synchronize`. Returns the tokens submitted.
fn decode(ctx: &Ctx, entries: &[Entry], n_batch: usize, synchronize: bool) -> Result<u64> {
    let mut batch = BatchExt::new(ctx)?;
    let mut submitted = 0u64;
    for chunk in entries.chunks(n_batch.max(1)) {
        batch.clear();
        for e in chunk {
            batch.add_seq(e.token, e.pos, e.seq, e.output)?;
            submitted += 1;
        }
        ctx.process(&mut batch, "batch")?;
        if synchronize {
            ctx.synchronize();
        }
    }
    Ok(submitted)
}
