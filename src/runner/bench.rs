//! `kiln bench`: llama-bench's measurements, through llama.cpp's C API (`llama_cpp_sys_2`).
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
//! [`kv_cache_bytes`]), `peak_rss_bytes` (`VmHWM` of `/proc/self/status` after the test; a
//! process-wide high-water mark, so it includes every earlier test of the run) and
//! `tokens_counted` (tokens decoded in each timed repetition, counted as they are submitted).
//!
//! Two settings have other defaults than llama-bench's: flash attention is on or off (kiln's
//! options have no "auto"; llama-bench's default is auto, which on the CPU means on), and `-ngl`
//! defaults to 99 (llama-bench: -1, all layers; the same on one GPU and meaningless on the CPU).

use super::{BenchOptions, BenchResult};
use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::time::Instant;

/// Runs every test of the matrix on every file. `progress` is called with a line of text per
/// finished test.
pub fn run(
    files: &[std::path::PathBuf],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchResult>> {
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
    if let Some(&q) = cache_types
        .iter()
        .find(|&&t| unsafe { sys::ggml_is_quantized(t) })
    {
        if opts.flash_attn.contains(&false) {
            bail!(
                "bench: the {} KV cache needs flash attention (llama.cpp quantizes the V cache \
                 only with it): use -fa 1 alone",
                type_name(q)
            );
        }
    }
    crate::llama::backend();
    // llama-bench's tokens come from the process's unseeded rand(), one sequence for the run.
    let mut rng = CRand::new(1);
    // Every file is checked before any is measured, so a typo in the last name fails at once.
    let sizes = files
        .iter()
        .map(|f| check_file(f))
        .collect::<Result<Vec<u64>>>()?;
    let mut out = Vec::new();
    for (file, &file_size) in files.iter().zip(&sizes) {
        for &ngl in &opts.n_gpu_layers {
            // one load per file and model-affecting setting, as llama-bench keeps its model
            let t0 = Instant::now();
            let model = Model::load(file, ngl)?;
            let load_ms = t0.elapsed().as_secs_f64() * 1e3;
            let info = ModelInfo::read(&model, file)?;
            for t in matrix(opts, &cache_types, ngl) {
                let r = run_test(&model, &info, &t, &mut rng)
                    .with_context(|| format!("{}: {}", file.display(), t.describe()))?;
                let result = BenchResult {
                    model_filename: file.display().to_string(),
                    model_size: info.model_size,
                    model_n_params: info.n_params,
                    n_threads: t.n_threads,
                    n_batch: t.n_batch,
                    n_ubatch: t.n_ubatch,
                    type_k: type_name(t.cache),
                    type_v: type_name(t.cache),
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
                };
                progress(&progress_line(&result));
                out.push(result);
            }
        }
    }
    Ok(out)
}

/// The tests for one loaded model, in llama-bench's order: batch, micro-batch, cache type,
/// flash attention, threads, then the pp tests and the tg tests.
fn matrix(o: &BenchOptions, cache_types: &[sys::ggml_type], ngl: u32) -> Vec<Test> {
    let mut v = Vec::new();
    for &n_batch in &o.batch {
        for &n_ubatch in &o.ubatch {
            for &cache in cache_types {
                for &flash_attn in &o.flash_attn {
                    for &n_threads in &o.threads {
                        let pp = o.n_prompt.iter().filter(|&&n| n > 0).map(|&n| (n, 0));
                        let tg = o.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n));
                        for (n_prompt, n_gen) in pp.chain(tg) {
                            v.push(Test {
                                n_prompt,
                                n_gen,
                                n_batch,
                                n_ubatch,
                                cache,
                                flash_attn,
                                n_threads,
                                n_gpu_layers: ngl,
                                repetitions: o.repetitions,
                            });
                        }
                    }
                }
            }
        }
    }
    v
}

fn check_options(o: &BenchOptions) -> Result<()> {
    let axes: [(&str, bool); 7] = [
        (
            "-p/-n (prompt and generation lengths)",
            o.n_prompt.is_empty() && o.n_gen.is_empty(),
        ),
        ("--threads", o.threads.is_empty()),
        ("-b (batch size)", o.batch.is_empty()),
        ("-ub (micro-batch size)", o.ubatch.is_empty()),
        ("-ctk/-ctv (cache type)", o.cache_type.is_empty()),
        ("-fa (flash attention)", o.flash_attn.is_empty()),
        ("-ngl (GPU layers)", o.n_gpu_layers.is_empty()),
    ];
    for (name, empty) in axes {
        if empty {
            bail!("bench: {name} has no value");
        }
    }
    if o.n_prompt.iter().chain(&o.n_gen).all(|&n| n == 0) {
        bail!("bench: nothing to measure (-p and -n are all 0)");
    }
    if o.repetitions == 0 {
        bail!("bench: -r (repetitions) must be at least 1");
    }
    for (name, v) in [
        ("--threads", &o.threads),
        ("-b (batch size)", &o.batch),
        ("-ub (micro-batch size)", &o.ubatch),
    ] {
        if v.iter().any(|&x| x == 0 || x > i32::MAX as u32) {
            bail!("bench: {name} must be between 1 and {}", i32::MAX);
        }
    }
    // n_ctx = n_prompt + n_gen must fit llama.cpp's u32 and the positions its i32.
    if o.n_prompt
        .iter()
        .chain(&o.n_gen)
        .any(|&n| n > i32::MAX as u32 / 2)
    {
        bail!("bench: -p/-n too large");
    }
    Ok(())
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

/// KV cache types llama-bench accepts for -ctk/-ctv.
fn parse_cache_type(s: &str) -> Result<sys::ggml_type> {
    const ALLOWED: [sys::ggml_type; 9] = [
        sys::GGML_TYPE_F32,
        sys::GGML_TYPE_F16,
        sys::GGML_TYPE_BF16,
        sys::GGML_TYPE_Q8_0,
        sys::GGML_TYPE_Q4_0,
        sys::GGML_TYPE_Q4_1,
        sys::GGML_TYPE_IQ4_NL,
        sys::GGML_TYPE_Q5_0,
        sys::GGML_TYPE_Q5_1,
    ];
    ALLOWED
        .iter()
        .copied()
        .find(|&t| type_name(t).eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<String> = ALLOWED.iter().map(|&t| type_name(t)).collect();
            anyhow!(
                "bench: unknown KV cache type {s:?} (one of {})",
                names.join(", ")
            )
        })
}

fn type_name(t: sys::ggml_type) -> String {
    let p = unsafe { sys::ggml_type_name(t) };
    if p.is_null() {
        return format!("type#{t}");
    }
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// One cell of the matrix.
struct Test {
    n_prompt: u32,
    n_gen: u32,
    n_batch: u32,
    n_ubatch: u32,
    cache: sys::ggml_type,
    flash_attn: bool,
    n_threads: u32,
    n_gpu_layers: u32,
    repetitions: u32,
}

impl Test {
    /// llama-bench's test name.
    fn name(&self) -> String {
        match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} (threads {}, n_batch {}, n_ubatch {}, cache {}, flash attention {}, ngl {})",
            self.name(),
            self.n_threads,
            self.n_batch,
            self.n_ubatch,
            type_name(self.cache),
            if self.flash_attn { "on" } else { "off" },
            self.n_gpu_layers
        )
    }
}

struct Measured {
    samples_ns: Vec<u64>,
    samples_ts: Vec<f64>,
    kv_cache_bytes: u64,
    tokens_counted: u64,
}

fn run_test(model: &Model, info: &ModelInfo, t: &Test, rng: &mut CRand) -> Result<Measured> {
    let mut cp = unsafe { sys::llama_context_default_params() };
    cp.n_ctx = t.n_prompt + t.n_gen;
    cp.n_batch = t.n_batch;
    cp.n_ubatch = t.n_ubatch;
    cp.type_k = t.cache;
    cp.type_v = t.cache;
    cp.offload_kqv = true;
    cp.flash_attn_type = if t.flash_attn {
        sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
    } else {
        sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
    };
    cp.embeddings = false;
    cp.op_offload = true;
    cp.swa_full = false;
    cp.n_threads = t.n_threads as i32;
    cp.n_threads_batch = t.n_threads as i32;
    let ctx = Ctx::new(model, cp, t.n_threads)
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
    unsafe { sys::llama_set_n_threads(ctx.ptr(), n_threads, n_threads) };
    let (n_vocab, bos) = ctx.vocab();
    let mut tokens: Vec<sys::llama_token> = vec![0; n_batch as usize];
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
        let pos0 = unsafe { sys::llama_memory_seq_pos_max(ctx.memory(), 0) } + 1;
        for (i, &tok) in tokens[..n_tokens].iter().enumerate() {
            batch.add(tok, pos0 + i as i32, i + 1 == n_tokens)?;
        }
        ctx.process(&mut batch, "prompt batch")?;
        decoded += n_tokens as u64;
        n_processed += n_tokens as u32;
    }
    unsafe { sys::llama_synchronize(ctx.ptr()) };
    Ok(decoded)
}

/// llama-bench's `test_gen`: `n_gen` single-token decodes (BOS first when the vocabulary adds
/// one, then random tokens), synchronizing after each. Returns the tokens decoded.
fn test_gen(ctx: &Ctx, n_gen: u32, n_threads: i32, rng: &mut CRand) -> Result<u64> {
    unsafe { sys::llama_set_n_threads(ctx.ptr(), n_threads, n_threads) };
    let (n_vocab, bos) = ctx.vocab();
    let mut token = match bos {
        Some(b) => b,
        None => rng.next() % n_vocab,
    };
    let mut batch = BatchExt::new(ctx)?;
    let pos0 = unsafe { sys::llama_memory_seq_pos_max(ctx.memory(), 0) } + 1;
    let mut decoded = 0u64;
    for i in 0..n_gen as i32 {
        batch.clear();
        batch.add(token, pos0 + i, true)?;
        ctx.process(&mut batch, "generation batch")?;
        unsafe { sys::llama_synchronize(ctx.ptr()) };
        decoded += 1;
        token = rng.next() % n_vocab;
    }
    Ok(decoded)
}

/// What llama.cpp says about a loaded model, plus the attention geometry that sizes its KV cache.
struct ModelInfo {
    model_size: u64,
    n_params: u64,
    /// Per layer: (K elements per cell, V elements per cell, sliding-window layer).
    layers: Vec<(i64, i64, bool)>,
    /// Sliding window in tokens (0: none).
    n_swa: u32,
}

impl ModelInfo {
    fn read(model: &Model, file: &Path) -> Result<ModelInfo> {
        let m = model.ptr();
        let model_size = unsafe { sys::llama_model_size(m) };
        let n_params = unsafe { sys::llama_model_n_params(m) };
        let n_layer = unsafe { sys::llama_model_n_layer(m) }.max(0) as usize;
        let n_embd = unsafe { sys::llama_model_n_embd(m) } as i64;
        let arch = model.meta("general.architecture").unwrap_or_default();
        let per_layer = |key: &str| -> Option<Vec<i64>> {
            let v = model.meta(&format!("{arch}.{key}"))?;
            let v = parse_ints(&v)?;
            Some(if v.len() == 1 { vec![v[0]; n_layer] } else { v })
        };
        let n_head = per_layer("attention.head_count").unwrap_or_else(|| vec![0; n_layer]);
        let n_head_kv = per_layer("attention.head_count_kv").unwrap_or_else(|| n_head.clone());
        let head0 = n_head.first().copied().unwrap_or(0);
        let default_head_dim = if head0 > 0 { n_embd / head0 } else { 0 };
        let scalar = |key: &str| -> Option<i64> {
            parse_ints(&model.meta(&format!("{arch}.{key}"))?)?
                .first()
                .copied()
        };
        let k_len = scalar("attention.key_length").unwrap_or(default_head_dim);
        let v_len = scalar("attention.value_length").unwrap_or(default_head_dim);
        // Sliding-window layers, as llama.cpp decides them for the architectures kiln writes
        // (Gemma 2: every other layer; Gemma 3: five of six, when a window is set), or as the
        // file's sliding_window_pattern says.
        let n_swa = scalar("attention.sliding_window").unwrap_or(0).max(0) as u32;
        let default_pattern = match arch.as_str() {
            "gemma2" => Some(2),
            "gemma3" if n_swa > 0 => Some(6),
            _ => None,
        };
        let swa: Vec<bool> = match (
            default_pattern,
            model.meta(&format!("{arch}.attention.sliding_window_pattern")),
        ) {
            (None, _) => vec![false; n_layer],
            (Some(_), Some(v)) if v.trim_start().starts_with('[') => {
                let bools: Vec<bool> = v
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|s| matches!(s.trim(), "true" | "1"))
                    .collect();
                (0..n_layer)
                    .map(|il| bools.get(il).copied().unwrap_or(false))
                    .collect()
            }
            (Some(p), v) => {
                let p = v.and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(p);
                (0..n_layer as u32)
                    .map(|il| p == 0 || il % p < p - 1)
                    .collect()
            }
        };
        let layers = (0..n_layer)
            .map(|il| {
                let kv = n_head_kv.get(il).copied().unwrap_or(0);
                (k_len * kv, v_len * kv, swa[il])
            })
            .collect();
        if n_layer == 0 {
            bail!("{}: llama.cpp reports no layers", file.display());
        }
        Ok(ModelInfo {
            model_size,
            n_params,
            layers,
            n_swa,
        })
    }
}

/// Integers of a metadata value as llama.cpp prints it: "8" or "[8, 8, 4]".
fn parse_ints(s: &str) -> Option<Vec<i64>> {
    let s = s.trim();
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner
        .split(',')
        .map(|x| x.trim().parse::<i64>().ok())
        .collect()
}

/// Bytes llama.cpp allocates for the KV cache of `ctx`: for every layer with key/value heads,
/// `ggml_row_size(type_k, n_embd_k_gqa) + ggml_row_size(type_v, n_embd_v_gqa)` per cell, times
/// the cells: the context size llama.cpp actually uses (`llama_n_ctx_seq`, which it pads to a
/// multiple of 256), or for sliding-window layers (Gemma 2/3; `swa_full` off, as llama-bench
/// sets it) `pad256(min(n_ctx, n_swa + n_ubatch))`. This is the sum llama.cpp logs as
/// `llama_kv_cache: size = ...`; llama.cpp's C API has no query for it. Architectures with other
/// memory (recurrent state, MLA, other sliding-window patterns) are sized as plain attention.
fn kv_cache_bytes_for(
    layers: &[(i64, i64, bool)],
    n_swa: u32,
    n_ctx: u32,
    n_ubatch: u32,
    type_k: sys::ggml_type,
    type_v: sys::ggml_type,
) -> u64 {
    let pad = |n: u64| n.div_ceil(256) * 256;
    let swa_cells = pad((n_ctx as u64).min(n_swa as u64 + n_ubatch as u64));
    layers
        .iter()
        .filter(|(k, v, _)| *k > 0 || *v > 0)
        .map(|&(k, v, swa)| {
            let cells = if swa && n_swa > 0 {
                swa_cells
            } else {
                n_ctx as u64
            };
            let per_cell = unsafe { sys::ggml_row_size(type_k, k) + sys::ggml_row_size(type_v, v) };
            per_cell as u64 * cells
        })
        .sum()
}

fn kv_cache_bytes(info: &ModelInfo, ctx: &Ctx) -> u64 {
    let (n_ctx, n_ubatch) = unsafe {
        (
            sys::llama_n_ctx_seq(ctx.ptr()),
            sys::llama_n_ubatch(ctx.ptr()),
        )
    };
    kv_cache_bytes_for(
        &info.layers,
        info.n_swa,
        n_ctx,
        n_ubatch,
        ctx.type_k,
        ctx.type_v,
    )
}

/// Peak resident memory of this process (`VmHWM`), bytes; 0 where /proc is absent.
fn peak_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation; 0 for fewer than two samples (as llama-bench).
fn stddev(xs: &[f64]) -> f64 {
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

fn file_label(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// C's `rand()` as glibc implements it (`random_r`, TYPE_3: an additive feedback generator over
/// 31 words), from `srand(seed)`. llama-bench never seeds, so its tokens come from seed 1.
pub struct CRand {
    s: [u32; 31],
    f: usize,
    r: usize,
}

impl CRand {
    pub fn new(seed: u32) -> CRand {
        let mut s = [0u32; 31];
        let seed = if seed == 0 { 1 } else { seed };
        s[0] = seed;
        let mut word = seed as i32 as i64;
        for x in s.iter_mut().skip(1) {
            let hi = word / 127_773;
            let lo = word % 127_773;
            word = 16_807 * lo - 2_836 * hi;
            if word < 0 {
                word += 2_147_483_647;
            }
            *x = word as u32;
        }
        let mut g = CRand { s, f: 3, r: 0 };
        for _ in 0..310 {
            g.next();
        }
        g
    }

    /// The next value, in [0, RAND_MAX = 2^31 - 1].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> i32 {
        self.s[self.f] = self.s[self.f].wrapping_add(self.s[self.r]);
        let out = self.s[self.f] >> 1;
        self.f = (self.f + 1) % 31;
        self.r = (self.r + 1) % 31;
        out as i32
    }
}

// ---- llama.cpp objects, freed on drop ----

struct Model(NonNull<sys::llama_model>);

impl Model {
    fn load(file: &Path, n_gpu_layers: u32) -> Result<Model> {
        let c = path_cstring(file)?;
        let mut mp = unsafe { sys::llama_model_default_params() };
        mp.n_gpu_layers = n_gpu_layers.min(i32::MAX as u32) as i32;
        crate::llama::clear_errors();
        let p = unsafe { sys::llama_model_load_from_file(c.as_ptr(), mp) };
        NonNull::new(p)
            .map(Model)
            .ok_or_else(|| crate::llama::refused(file))
    }

    fn ptr(&self) -> *mut sys::llama_model {
        self.0.as_ptr()
    }

    /// A metadata value as llama.cpp prints it, None when absent.
    fn meta(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        loop {
            let n = unsafe {
                sys::llama_model_meta_val_str(
                    self.ptr(),
                    k.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return None;
            }
            let n = n as usize;
            if n < buf.len() {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            buf.resize(n + 1, 0);
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { sys::llama_model_free(self.0.as_ptr()) }
    }
}

#[cfg(unix)]
fn path_cstring(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{}: path contains a NUL byte", p.display()))
}

#[cfg(not(unix))]
fn path_cstring(p: &Path) -> Result<CString> {
    let s = p
        .to_str()
        .ok_or_else(|| anyhow!("{}: path is not UTF-8", p.display()))?;
    CString::new(s).map_err(|_| anyhow!("{}: path contains a NUL byte", p.display()))
}

/// A context with its own ggml threadpool attached (dropped in that order: context first).
struct Ctx<'m> {
    ctx: NonNull<sys::llama_context>,
    pool: NonNull<sys::ggml_threadpool>,
    type_k: sys::ggml_type,
    type_v: sys::ggml_type,
    _model: std::marker::PhantomData<&'m Model>,
}

impl<'m> Ctx<'m> {
    fn new(model: &'m Model, cp: sys::llama_context_params, n_threads: u32) -> Result<Ctx<'m>> {
        let ctx = NonNull::new(unsafe { sys::llama_init_from_model(model.ptr(), cp) })
            .ok_or_else(|| anyhow!("llama_init_from_model failed"))?;
        // llama-bench's threadpool: default parameters (polling level 50, normal priority, not
        // strict, no CPU mask), set here explicitly.
        let mut tpp = unsafe { sys::ggml_threadpool_params_default(n_threads as i32) };
        tpp.poll = 50;
        tpp.strict_cpu = false;
        tpp.prio = sys::GGML_SCHED_PRIO_NORMAL;
        tpp.cpumask.fill(false);
        let pool = match NonNull::new(unsafe { sys::ggml_threadpool_new(&mut tpp) }) {
            Some(p) => p,
            None => {
                unsafe { sys::llama_free(ctx.as_ptr()) };
                bail!("cannot create a threadpool of {n_threads} threads");
            }
        };
        unsafe { sys::llama_attach_threadpool(ctx.as_ptr(), pool.as_ptr(), std::ptr::null_mut()) };
        Ok(Ctx {
            ctx,
            pool,
            type_k: cp.type_k,
            type_v: cp.type_v,
            _model: std::marker::PhantomData,
        })
    }

    fn ptr(&self) -> *mut sys::llama_context {
        self.ctx.as_ptr()
    }

    fn memory(&self) -> sys::llama_memory_t {
        unsafe { sys::llama_get_memory(self.ptr()) }
    }

    /// `llama_memory_clear(mem, false)`, as llama-bench between runs.
    fn clear(&self) {
        let m = self.memory();
        if !m.is_null() {
            unsafe { sys::llama_memory_clear(m, false) }
        }
    }

    /// (n_vocab, BOS when the vocabulary adds one).
    fn vocab(&self) -> (i32, Option<sys::llama_token>) {
        unsafe {
            let model = sys::llama_get_model(self.ptr());
            let vocab = sys::llama_model_get_vocab(model);
            let n = sys::llama_vocab_n_tokens(vocab).max(1);
            let bos = sys::llama_vocab_get_add_bos(vocab).then(|| sys::llama_vocab_bos(vocab));
            (n, bos)
        }
    }

    fn process(&self, batch: &mut BatchExt, what: &str) -> Result<()> {
        let rc = unsafe {
            sys::llama_process(self.ptr(), sys::LLAMA_PROCESS_TYPE_DECODE, batch.0.as_ptr())
        };
        if rc != 0 {
            bail!("llama.cpp failed to decode a {what} (llama_process returned {rc})");
        }
        Ok(())
    }
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        unsafe {
            sys::llama_free(self.ctx.as_ptr());
            sys::ggml_threadpool_free(self.pool.as_ptr());
        }
    }
}

/// A `llama_batch_ext` filled as `common_batch` fills it.
struct BatchExt(NonNull<sys::llama_batch_ext>);

impl BatchExt {
    fn new(ctx: &Ctx) -> Result<BatchExt> {
        NonNull::new(unsafe { sys::llama_batch_ext_init(ctx.ptr()) })
            .map(BatchExt)
            .ok_or_else(|| anyhow!("llama_batch_ext_init failed"))
    }

    fn clear(&mut self) {
        unsafe { sys::llama_batch_ext_clear(self.0.as_ptr()) }
    }

    fn add(&mut self, token: sys::llama_token, pos: i32, output: bool) -> Result<()> {
        let b = self.0.as_ptr();
        let idx = unsafe { sys::llama_batch_ext_add_token(b, 0, token) };
        if idx < 0 {
            bail!("cannot add token {token} to a batch (error {idx})");
        }
        // common_batch passes 4 positions (M-RoPE sections); text tokens use the first.
        let p: [sys::llama_pos; 4] = [pos, 0, 0, 0];
        unsafe {
            sys::llama_batch_ext_set_pos(b, idx, p.as_ptr());
            if output {
                sys::llama_batch_ext_set_output_logits(b, idx, true);
            }
        }
        Ok(())
    }
}

impl Drop for BatchExt {
    fn drop(&mut self) {
        unsafe { sys::llama_batch_ext_free(self.0.as_ptr()) }
    }
}

// ---- reports ----

/// The ggml backends compiled in, as llama-bench names them ("CPU" when there is no other).
fn backends() -> String {
    let mut names = Vec::new();
    let mut rpc = false;
    for i in 0..unsafe { sys::ggml_backend_reg_count() } {
        let reg = unsafe { sys::ggml_backend_reg_get(i) };
        if reg.is_null() {
            continue;
        }
        let p = unsafe { sys::ggml_backend_reg_name(reg) };
        if p.is_null() {
            continue;
        }
        let name = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if name.starts_with("RPC") {
            rpc |= unsafe { sys::ggml_backend_reg_dev_count(reg) } > 0;
        } else if name != "CPU" {
            names.push(name);
        }
    }
    if rpc {
        names.push("RPC".into());
    }
    if names.is_empty() {
        "CPU".into()
    } else {
        names.join(",")
    }
}

/// The CPU as ggml describes it (llama-bench's `cpu_info`).
fn cpu_info() -> String {
    unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
        if dev.is_null() {
            return "unknown CPU".into();
        }
        let p = sys::ggml_backend_dev_description(dev);
        if p.is_null() {
            return "unknown CPU".into();
        }
        CStr::from_ptr(p).to_string_lossy().trim().to_string()
    }
}

fn mib(b: u64) -> String {
    format!("{:.2}", b as f64 / 1024.0 / 1024.0)
}

/// A markdown table like llama-bench's: `model | size | params | backend | [ngl |] threads |
/// [n_batch | n_ubatch | type_k | type_v | fa |] test | t/s`, then kiln's columns (bits per
/// weight, load time, KV cache, peak RSS). Optional columns appear, as in llama-bench, when
/// some result differs from llama-bench's default or the results differ among themselves. The
/// model column is the file name (kiln compares files of one model). A footer names the CPU
/// and backend of this process.
pub fn to_markdown(results: &[BenchResult]) -> String {
    let backend = backends();
    let varies = |f: &dyn Fn(&BenchResult) -> String, default: &str| {
        results.iter().any(|r| f(r) != default) || results.windows(2).any(|w| f(&w[0]) != f(&w[1]))
    };
    // (header, width; negative: left-aligned, value)
    type Col = (&'static str, i32, Box<dyn Fn(&BenchResult) -> String>);
    let mut cols: Vec<Col> = vec![
        ("model", -30, Box::new(|r| file_label(&r.model_filename))),
        (
            "size",
            10,
            Box::new(|r| {
                if r.model_size < 1024 * 1024 * 1024 {
                    format!("{:.2} MiB", r.model_size as f64 / 1024.0 / 1024.0)
                } else {
                    format!("{:.2} GiB", r.model_size as f64 / 1024.0 / 1024.0 / 1024.0)
                }
            }),
        ),
        (
            "params",
            10,
            Box::new(|r| {
                if r.model_n_params < 1_000_000_000 {
                    format!("{:.2} M", r.model_n_params as f64 / 1e6)
                } else {
                    format!("{:.2} B", r.model_n_params as f64 / 1e9)
                }
            }),
        ),
        ("backend", -10, {
            let b = backend.clone();
            Box::new(move |_| b.clone())
        }),
    ];
    if backend != "CPU" {
        cols.push(("ngl", 3, Box::new(|r| r.n_gpu_layers.to_string())));
    }
    cols.push(("threads", 7, Box::new(|r| r.n_threads.to_string())));
    if varies(&|r| r.n_batch.to_string(), "2048") {
        cols.push(("n_batch", 7, Box::new(|r| r.n_batch.to_string())));
    }
    if varies(&|r| r.n_ubatch.to_string(), "512") {
        cols.push(("n_ubatch", 8, Box::new(|r| r.n_ubatch.to_string())));
    }
    if varies(&|r| r.type_k.clone(), "f16") {
        cols.push(("type_k", 6, Box::new(|r| r.type_k.clone())));
    }
    if varies(&|r| r.type_v.clone(), "f16") {
        cols.push(("type_v", 6, Box::new(|r| r.type_v.clone())));
    }
    if varies(&|r| u8::from(r.flash_attn).to_string(), "0") {
        cols.push(("fa", 3, Box::new(|r| u8::from(r.flash_attn).to_string())));
    }
    cols.push(("test", 15, Box::new(|r| r.test.clone())));
    cols.push((
        "t/s",
        20,
        Box::new(|r| format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts)),
    ));
    cols.push(("bpw", 6, Box::new(|r| format!("{:.2}", r.bits_per_weight))));
    cols.push(("load ms", 8, Box::new(|r| format!("{:.1}", r.load_ms))));
    cols.push(("KV MiB", 8, Box::new(|r| mib(r.kv_cache_bytes))));
    cols.push(("peak RSS MiB", 12, Box::new(|r| mib(r.peak_rss_bytes))));

    let cell = |s: &str, w: i32| {
        let n = w.unsigned_abs() as usize;
        if w < 0 {
            format!(" {s:<n$} |")
        } else {
            format!(" {s:>n$} |")
        }
    };
    let mut out = String::from("|");
    for (h, w, _) in &cols {
        out += &cell(h, *w);
    }
    out += "\n|";
    for (_, w, _) in &cols {
        let n = w.unsigned_abs() as usize;
        out += &format!(
            " {}{} |",
            "-".repeat(n.saturating_sub(1)),
            if *w > 0 { ':' } else { '-' }
        );
    }
    out += "\n";
    for r in results {
        out += "|";
        for (_, w, f) in &cols {
            // a '|' inside a value would split the cell
            out += &cell(&f(r).replace('|', "\\|"), *w);
        }
        out += "\n";
    }
    let n_cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    out += &format!(
        "\nmachine: {}, {n_cpu} logical CPUs; backend: {backend}\n",
        cpu_info()
    );
    out
}

/// CSV: a header and one row per result. llama-bench's field names (and order) first, then
/// kiln's. Every value is quoted, as llama-bench's CSV does; `samples_ns`/`samples_ts` are
/// `;`-separated lists.
pub fn to_csv(results: &[BenchResult]) -> String {
    const FIELDS: [&str; 26] = [
        "model_filename",
        "model_size",
        "model_n_params",
        "n_batch",
        "n_ubatch",
        "n_threads",
        "type_k",
        "type_v",
        "n_gpu_layers",
        "flash_attn",
        "n_prompt",
        "n_gen",
        "avg_ns",
        "stddev_ns",
        "avg_ts",
        "stddev_ts",
        "test",
        "samples_ns",
        "samples_ts",
        "file_size",
        "bits_per_weight",
        "load_ms",
        "model_buffer_bytes",
        "kv_cache_bytes",
        "peak_rss_bytes",
        "tokens_counted",
    ];
    let quote = |s: String| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = FIELDS.join(",");
    out += "\n";
    for r in results {
        let ns: Vec<f64> = r.samples_ns.iter().map(|&x| x as f64).collect();
        let values = [
            r.model_filename.clone(),
            r.model_size.to_string(),
            r.model_n_params.to_string(),
            r.n_batch.to_string(),
            r.n_ubatch.to_string(),
            r.n_threads.to_string(),
            r.type_k.clone(),
            r.type_v.clone(),
            r.n_gpu_layers.to_string(),
            u8::from(r.flash_attn).to_string(),
            r.n_prompt.to_string(),
            r.n_gen.to_string(),
            (mean(&ns) as u64).to_string(),
            (stddev(&ns) as u64).to_string(),
            format!("{:.6}", r.avg_ts),
            format!("{:.6}", r.stddev_ts),
            r.test.clone(),
            r.samples_ns
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(";"),
            r.samples_ts
                .iter()
                .map(|x| format!("{x:.6}"))
                .collect::<Vec<_>>()
                .join(";"),
            r.file_size.to_string(),
            format!("{:.6}", r.bits_per_weight),
            format!("{:.3}", r.load_ms),
            r.model_buffer_bytes.to_string(),
            r.kv_cache_bytes.to_string(),
            r.peak_rss_bytes.to_string(),
            r.tokens_counted.to_string(),
        ];
        debug_assert_eq!(values.len(), FIELDS.len());
        out += &values.map(quote).join(",");
        out += "\n";
    }
    out
}
