//! `kiln bench`: llama-bench's measurements, through llama.cpp's C API (`llama_cpp_sys_2`, wrapped
//! in [`crate::llama::raw`]).
//!
//! Everything that decides the numbers follows llama-bench (`tools/llama-bench/llama-bench.cpp`)
//! step for step, so that the two agree on the same file and settings:
//!
//! - **Test matrix.** For each file and each `-ngl` the model is loaded once; then, in
//!   llama-bench's loop order (`-b`, `-ub`, cache type, `-fa`, `-t`), one test per `-p` value
//!   (`ppN`: N prompt tokens, no generation) and one per `-n` value (`tgN`: N generated tokens,
//!   no prompt). A 0 in `-p`/`-n` is skipped, as in llama-bench.
//! - **Context.** `llama_context_default_params()` with `n_ctx = n_prompt + n_gen`, `n_batch`,
//!   `n_ubatch`, `type_k = type_v`, `flash_attn_type` (enabled/disabled), `swa_full = false`,
//!   `embeddings = false`; a fresh context per test. A ggml threadpool of `-t` threads
//!   (`ggml_threadpool_params_default`: polling level 50, no CPU mask) is attached to the
//!   context, as llama-bench does; without one, ggml would start and join threads on every
//!   graph, which costs generation speed on small models.
//! - **Tokens.** C's `rand()` as glibc implements it, unseeded (seed 1) and shared by the whole
//!   run, exactly as llama-bench draws them: `rand() % n_vocab`, with BOS first when the
//!   vocabulary adds one. kiln draws the same token sequence as llama-bench for the same matrix.
//! - **pp.** The prompt is decoded in chunks of `n_batch` tokens (`llama_batch_ext` with
//!   positions after the last one in memory and output only on the last token, which is what
//!   `common_batch_get_one` builds), then `llama_synchronize`.
//! - **tg.** One token per `llama_process` call, with output, `llama_synchronize` after each.
//! - **Runs.** The KV memory is cleared (`llama_memory_clear(mem, false)`); a warmup (the whole
//!   prompt for pp, one token for tg); then `repetitions` times: clear the memory, take the time,
//!   run the test, take the time. Each repetition gives `t_ns` and
//!   `ts = (n_prompt + n_gen) * 1e9 / t_ns`; `avg_ts` is the mean of the `ts` and `stddev_ts`
//!   their sample standard deviation (0 for one repetition). llama-bench computes the standard
//!   deviation as `sqrt(sum(x^2)/(n-1) - mean^2*n/(n-1))`; kiln uses the two-pass form
//!   `sqrt(sum((x-mean)^2)/(n-1))`, which is the same number without the cancellation that can
//!   turn equal samples into NaN.
//!
//! kiln's own fields: `file_size` (the filesystem's), `bits_per_weight` (`model_size * 8 /
//! model_n_params`), `load_ms` (wall time of `llama_model_load_from_file`), `model_buffer_bytes`
//! (`llama_model_size`: the bytes of the weight tensors llama.cpp allocated, which is also
//! llama-bench's `model_size`; llama.cpp's C API has no per-buffer query), `kv_cache_bytes` (see
//! `memory::kv_cache_bytes_for`), `peak_rss_bytes` (`VmHWM` of `/proc/self/status` after the test; a
//! process-wide high-water mark, so it includes every earlier test of the process: of the file's
//! worker, or of the whole run in one process), `tokens_counted` (tokens decoded in each timed
//! repetition, counted as they are submitted) and `cpu_features` (the features ggml's CPU
//! backend was compiled with, from its registry's `ggml_backend_get_features`: which kernels the
//! numbers come from). llama-bench's `cpu_info`, `backends` and `model_type`
//! (`llama_model_desc`) are there too, so that two machines' or two builds' reports can be told
//! apart.
//!
//! **Isolation.** With `BenchOptions::worker` (what `kiln bench` sets) each file is measured in
//! its own `kiln measure-worker` process, so that a file on which llama.cpp aborts (a
//! GGML_ASSERT) is one failed result with llama.cpp's message, and the run goes on. The token
//! generator's state goes from one worker to the next, so the tokens are those of one process.
//!
//! **Batched.** With `--parallel` (`BenchOptions::parallel`), `kiln bench` measures as
//! llama-batched-bench does instead: several sequences decoding at once; see [`batched`].
//!
//! Two settings have other defaults than llama-bench's: flash attention is on or off (kiln's
//! options have no "auto"; llama-bench's default is auto, which on the CPU means on), and `-ngl`
//! defaults to 99 (llama-bench: -1, all layers; the same on one GPU and meaningless on the CPU).

pub mod batched;
mod crand;
pub mod draft;
mod matrix;
mod measure;
mod memory;

pub use crand::CRand;

use super::{BatchedResult, BenchOptions, BenchResult};
use crate::llama::raw::{self, Model};
use crate::runner::file_label;
use crate::runner::worker::{measure_isolated, MeasureJob};
use anyhow::{bail, Context, Result};
use matrix::{check_options, matrix, parse_cache_type};
use measure::run_test;
use memory::{peak_rss_bytes, ModelInfo};
use std::path::Path;
use std::time::Instant;

/// Runs every test of the matrix on every file. `progress` is called with a line of text per
/// finished test.
///
/// With `opts.worker` set, each file is measured in its own worker process (see
/// [`crate::runner::worker`]): options and files are checked here first, then a file that
/// llama.cpp refuses or aborts on becomes one result with `error` set, and the others are
/// measured as in one process (the token generator goes on from one worker to the next).
/// Without it, everything runs in this process and such a file is an error.
pub fn run(
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchResult>> {
    let mut rng = CRand::new(1);
    match &opts.worker {
        Some(exe) => run_isolated(exe, files, opts, &mut rng, progress),
        None => run_from(files, opts, &mut rng, progress),
    }
}

/// [`run`] in this process, drawing llama-bench's tokens from `rng` (llama-bench's come from
/// the process's unseeded `rand()`, one sequence for the run: `CRand::new(1)`).
pub fn run_from(
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
    rng: &mut CRand,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchResult>> {
    let (cache_types, sizes) = check(files, opts)?;
    let machine = MachineFields::this();
    let mut out = Vec::new();
    for (file, &file_size) in files.iter().zip(&sizes) {
        for &ngl in &opts.n_gpu_layers {
            // one load per file and model-affecting setting, as llama-bench keeps its model
            let t0 = Instant::now();
            let model = Model::load(file, ngl)?;
            let load_ms = t0.elapsed().as_secs_f64() * 1e3;
            let info = ModelInfo::read(&model, file)?;
            let model_type = model.desc();
            for t in matrix(opts, &cache_types, ngl) {
                let r = run_test(&model, &info, &t, rng)
                    .with_context(|| format!("{}: {}", file.display(), t.describe()))?;
                let result = BenchResult {
                    cpu_info: machine.cpu_info.clone(),
                    backends: machine.backends.clone(),
                    model_filename: file.display().to_string(),
                    model_type: model_type.clone(),
                    model_size: info.model_size,
                    model_n_params: info.n_params,
                    n_threads: t.n_threads,
                    n_batch: t.n_batch,
                    n_ubatch: t.n_ubatch,
                    type_k: raw::type_name(t.cache),
                    type_v: raw::type_name(t.cache),
                    flash_attn: t.flash_attn,
                    n_gpu_layers: ngl,
                    n_prompt: t.n_prompt,
                    n_gen: t.n_gen,
                    test: t.name(),
                    avg_ts: mean(&r.samples_ts),
                    stddev_ts: stddev(&r.samples_ts),
                    samples_ts: r.samples_ts,
                    samples_ns: r.samples_ns,
                    file_size,
                    bits_per_weight: if info.n_params > 0 {
                        info.model_size as f64 * 8.0 / info.n_params as f64
                    } else {
                        0.0
                    },
                    load_ms,
                    model_buffer_bytes: info.model_size,
                    kv_cache_bytes: r.kv_cache_bytes,
                    peak_rss_bytes: peak_rss_bytes(),
                    tokens_counted: r.tokens_counted,
                    cpu_features: machine.cpu_features.clone(),
                    error: None,
                };
                progress(&progress_line(&result));
                out.push(result);
            }
        }
    }
    Ok(out)
}

/// [`run`] with one worker process `exe` per file.
fn run_isolated(
    exe: &Path,
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
    rng: &mut CRand,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchResult>> {
    let (_, sizes) = check(files, opts)?;
    let machine = MachineFields::this();
    let mut out = Vec::new();
    for (file, &file_size) in files.iter().zip(&sizes) {
        let job = MeasureJob {
            bench: Some(opts.clone()),
            rng: Some(rng.clone()),
            ..MeasureJob::new(file)
        };
        let m = measure_isolated(exe, &job, progress);
        match m.error {
            None => {
                if let Some(r) = m.rng {
                    *rng = r;
                }
                out.extend(m.bench);
            }
            Some(e) => {
                progress(&format!("failed: {e}"));
                out.push(BenchResult {
                    cpu_info: machine.cpu_info.clone(),
                    backends: machine.backends.clone(),
                    model_filename: file.display().to_string(),
                    file_size,
                    cpu_features: machine.cpu_features.clone(),
                    error: Some(e),
                    ..Default::default()
                });
            }
        }
    }
    Ok(out)
}

/// llama-batched-bench's measurement ([`batched`]) of every file, for `opts.parallel`: with
/// `opts.worker` set, each file in its own worker process (a file llama.cpp refuses or aborts on
/// becomes one result with `error` set); without it, in this process.
pub fn run_batched(
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BatchedResult>> {
    let Some(exe) = &opts.worker else {
        return run_batched_from(files, opts, progress);
    };
    batched::check_options(opts)?;
    check(files, opts)?;
    let mut out = Vec::new();
    for file in files {
        let job = MeasureJob {
            batched: Some(opts.clone()),
            ..MeasureJob::new(file)
        };
        let m = measure_isolated(exe, &job, progress);
        match m.error {
            None => out.extend(m.batched),
            Some(e) => {
                progress(&format!("failed: {e}"));
                out.push(BatchedResult {
                    model_filename: file.display().to_string(),
                    error: Some(e),
                    ..Default::default()
                });
            }
        }
    }
    Ok(out)
}

/// [`run_batched`] in this process.
pub fn run_batched_from(
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BatchedResult>> {
    batched::check_options(opts)?;
    let (cache_types, _) = check(files, opts)?;
    let mut out = Vec::new();
    for file in files {
        out.extend(batched::run_file(file, opts, &cache_types, progress)?);
    }
    Ok(out)
}

/// The options and every file, checked before anything is measured (so that a typo in the last
/// name fails at once): the KV cache types and the files' sizes.
fn check(
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
) -> Result<(Vec<raw::GgmlTypeId>, Vec<u64>)> {
    check_options(opts)?;
    if files.is_empty() {
        bail!("no GGUF file to measure");
    }
    let cache_types = opts
        .cache_type
        .iter()
        .map(|s| parse_cache_type(s))
        .collect::<Result<Vec<_>>>()?;
    // llama.cpp refuses a quantized V cache without flash attention (llama-bench stops at that
    // test); say so before measuring anything.
    if let Some(&q) = cache_types.iter().find(|&&t| raw::is_quantized(t)) {
        if opts.flash_attn.contains(&false) {
            bail!(
                "bench: the {} KV cache needs flash attention (llama.cpp quantizes the V cache \
                 only with it): use -fa 1 alone",
                raw::type_name(q)
            );
        }
    }
    crate::llama::backend();
    let sizes = files
        .iter()
        .map(|f| check_file(f))
        .collect::<Result<Vec<u64>>>()?;
    Ok((cache_types, sizes))
}

/// What every result says about the machine and the llama.cpp build (llama-bench's `cpu_info`
/// and `backends`, and the CPU backend's features).
struct MachineFields {
    cpu_info: String,
    backends: String,
    cpu_features: String,
}

impl MachineFields {
    fn this() -> MachineFields {
        crate::llama::backend();
        MachineFields {
            cpu_info: raw::cpu_info(),
            backends: raw::backends(),
            cpu_features: raw::cpu_features_line(),
        }
    }
}

/// The file exists, is a regular file and a well-formed GGUF (kiln's checked reader, so that a
/// corrupt header is an error naming the file rather than whatever llama.cpp does with it).
/// Returns its size.
fn check_file(file: &Path) -> Result<u64> {
    let md = std::fs::metadata(file)
        .with_context(|| format!("{}: cannot read the file", file.display()))?;
    if !md.is_file() {
        bail!("{}: not a file", file.display());
    }
    drop(crate::gguf::GgufFile::open(file)?);
    Ok(md.len())
}

pub(crate) fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation; 0 for fewer than two samples (as llama-bench).
pub(crate) fn stddev(xs: &[f64]) -> f64 {
    if xs.len() <= 1 {
        return 0.0;
    }
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (xs.len() - 1) as f64).sqrt()
}

fn progress_line(r: &BenchResult) -> String {
    format!(
        "{}: {} threads={} b={} ub={} ctk={} fa={} ngl={}: {:.2} ± {:.2} t/s ({} reps)",
        file_label(&r.model_filename),
        r.test,
        r.n_threads,
        r.n_batch,
        r.n_ubatch,
        r.type_k,
        u8::from(r.flash_attn),
        r.n_gpu_layers,
        r.avg_ts,
        r.stddev_ts,
        r.samples_ns.len()
    )
}
