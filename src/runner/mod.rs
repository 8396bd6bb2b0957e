//! The runner: measures GGUF variants on llama.cpp (through `llama-cpp-2`), the way llama.cpp's
//! own tools do. `bench` is llama-bench (pp/tg tokens per second, repetitions, memory);
//! `eval` is llama-perplexity (perplexity, KL divergence to a reference, same-top-token rate)
//! plus a small question-answering task check; `imatrix` is llama-imatrix (importance matrices
//! for quantization).

pub mod bench;
pub mod calibrate;
pub mod eval;
pub mod imatrix;
pub mod sensitivity;
pub mod worker;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What `kiln bench` varies (each list is one axis of the test matrix, as llama-bench's
/// comma-separated options are).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchOptions {
    /// Prompt lengths for pp tests (llama-bench -p; 0 disables).
    pub n_prompt: Vec<u32>,
    /// Generation lengths for tg tests (llama-bench -n; 0 disables).
    pub n_gen: Vec<u32>,
    /// Repetitions per test (llama-bench -r).
    pub repetitions: u32,
    pub threads: Vec<u32>,
    /// Logical batch sizes (llama-bench -b).
    pub batch: Vec<u32>,
    /// Physical batch sizes (llama-bench -ub).
    pub ubatch: Vec<u32>,
    /// KV cache types: "f16", "q8_0", "q4_0", "f32" (llama-bench -ctk/-ctv, the same for both).
    pub cache_type: Vec<String>,
    /// Flash attention off/on (llama-bench -fa).
    pub flash_attn: Vec<bool>,
    /// Layers offloaded to a GPU (llama-bench -ngl); only meaningful with the `cuda` feature.
    pub n_gpu_layers: Vec<u32>,
    /// Sequences decoding at once for llama-batched-bench's measurement (its -npl; empty: none,
    /// the llama-bench tests only). See [`bench::batched`].
    #[serde(default)]
    pub parallel: Vec<u32>,
    /// llama-batched-bench's -pps: one prompt shared by all sequences, copied to the others
    /// with `llama_memory_seq_cp`, instead of one prompt per sequence.
    #[serde(default)]
    pub pp_shared: bool,
    /// The batched measurement's context, all sequences together (llama-batched-bench's -c,
    /// its `n_kv_max`; a setting that needs more is skipped, as there). 0: the smallest that
    /// holds every setting, `max(npl) * max(pp + tg)`.
    #[serde(default)]
    pub parallel_ctx: u32,
    /// The kiln executable: when set, each file is measured in a child process (`kiln
    /// measure-worker`, see [`worker`](crate::runner::worker)), so that a file which makes llama.cpp abort (a
    /// GGML_ASSERT) or refuse it becomes one failed result instead of ending the run. None: in
    /// this process, where such a file is an error (an abort ends the process). Never
    /// serialized: a worker's job runs in the worker.
    #[serde(skip)]
    pub worker: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            n_prompt: vec![512],
            n_gen: vec![128],
            repetitions: 5,
            threads: vec![default_threads()],
            batch: vec![2048],
            ubatch: vec![512],
            cache_type: vec!["f16".into()],
            flash_attn: vec![false],
            n_gpu_layers: vec![99],
            parallel: Vec::new(),
            pp_shared: false,
            parallel_ctx: 0,
            worker: None,
        }
    }
}

/// One test of one file, with llama-bench's field names (plus kiln's own), in llama-bench's
/// order. A file measured in a worker process that failed is one result with `error` set, its
/// machine fields and `model_filename`/`file_size`, and zeros elsewhere.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    /// The CPU as ggml's CPU device describes it (llama-bench's `cpu_info`).
    #[serde(default)]
    pub cpu_info: String,
    /// The ggml backends compiled in, as llama-bench names them ("CPU", "CUDA").
    #[serde(default)]
    pub backends: String,
    pub model_filename: String,
    /// llama.cpp's description of the model, `llama_model_desc` (llama-bench's `model_type`):
    /// "gemma3 270M Q4_K - Medium".
    #[serde(default)]
    pub model_type: String,
    /// Bytes of tensor data (llama-bench's model_size).
    pub model_size: u64,
    pub model_n_params: u64,
    pub n_threads: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub type_k: String,
    pub type_v: String,
    pub flash_attn: bool,
    pub n_gpu_layers: u32,
    pub n_prompt: u32,
    pub n_gen: u32,
    /// "pp512", "tg128".
    pub test: String,
    /// Mean of the per-repetition tokens per second.
    pub avg_ts: f64,
    /// Sample standard deviation of the per-repetition tokens per second.
    pub stddev_ts: f64,
    pub samples_ts: Vec<f64>,
    /// Per-repetition wall times in nanoseconds.
    pub samples_ns: Vec<u64>,
    // kiln's own fields
    pub file_size: u64,
    pub bits_per_weight: f64,
    pub load_ms: f64,
    /// Bytes of the model's weight buffers as llama.cpp reports them.
    pub model_buffer_bytes: u64,
    /// Bytes of the KV cache for this test's context.
    pub kv_cache_bytes: u64,
    /// Peak resident memory of the process after this test (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Tokens actually generated/processed per repetition (equals n_prompt or n_gen).
    pub tokens_counted: u64,
    /// The features ggml's CPU backend was built with (its registry's
    /// `ggml_backend_get_features`; `=value` where the value is not 1): "SSE3 SSSE3 AVX AVX2
    /// F16C FMA BMI2 OPENMP REPACK". They say which matmul kernels llama.cpp ran.
    #[serde(default)]
    pub cpu_features: String,
    /// Why this file has no figures: llama.cpp refused it or aborted on it in its worker
    /// process. Absent for a measured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One row of llama-batched-bench: `pl` sequences, each with a prompt of `pp` tokens (or one
/// prompt shared by all, `is_pp_shared`) and `tg` generated tokens decoded together, one token
/// per sequence per step. The fields up to `speed` are llama-batched-bench's JSONL fields, with
/// its names and definitions (see [`bench::batched`]); kiln's own follow.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BatchedResult {
    /// Cells of the context, all sequences together (`llama_n_ctx`).
    pub n_kv_max: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    /// 0 or 1 (llama-batched-bench writes its `flash_attn_type`; kiln's is never "auto").
    pub flash_attn: i32,
    /// 0 or 1.
    pub is_pp_shared: i32,
    pub n_gpu_layers: u32,
    pub n_threads: u32,
    pub n_threads_batch: u32,
    /// Prompt tokens per sequence.
    pub pp: u32,
    /// Tokens generated per sequence.
    pub tg: u32,
    /// Sequences decoding at once.
    pub pl: u32,
    /// Cells the setting fills: `pl * (pp + tg)` (with a shared prompt too, since each
    /// sequence keeps its copy of it in its own stream).
    pub n_kv: u32,
    /// Seconds to process the prompt(s), one batch split into `n_batch` chunks.
    pub t_pp: f64,
    /// Prompt tokens per second: `(is_pp_shared ? pp : pl * pp) / t_pp`.
    pub speed_pp: f64,
    /// Seconds of the `tg` generation steps, each decoding `pl` tokens.
    pub t_tg: f64,
    /// Generated tokens per second, all sequences together: `pl * tg / t_tg`.
    pub speed_tg: f64,
    /// `t_pp + t_tg`.
    pub t: f64,
    /// `((is_pp_shared ? pp : pl * pp) + pl * tg) / t`.
    pub speed: f64,
    // kiln's own fields
    #[serde(default)]
    pub model_filename: String,
    /// The K and V cache type.
    #[serde(default)]
    pub type_k: String,
    /// Generated tokens per second of one sequence: `speed_tg / pl`.
    #[serde(default)]
    pub speed_tg_per_seq: f64,
    /// Bytes of KV cache the setting needs: `n_kv` cells, `pl` streams of `pp + tg` (memory.rs's
    /// accounting, per stream).
    #[serde(default)]
    pub kv_cache_bytes: u64,
    /// Bytes of KV cache the context allocated (`n_kv_max` cells).
    #[serde(default)]
    pub kv_cache_bytes_allocated: u64,
    /// Prompt tokens submitted in the timed prompt phase, counted as they were added.
    #[serde(default)]
    pub tokens_counted_pp: u64,
    /// Tokens submitted in the timed generation phase, counted as they were added.
    #[serde(default)]
    pub tokens_counted_tg: u64,
    /// Why this file has no figures (as [`BenchResult::error`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Options of `kiln eval`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Text for perplexity/KLD (default: the bundled text).
    pub text: Option<PathBuf>,
    /// Question set, JSONL of {"question": ..., "answer": ...} (default: the bundled set).
    pub questions: Option<PathBuf>,
    /// Context size per chunk (llama-perplexity -c).
    pub n_ctx: u32,
    /// At most this many chunks (llama-perplexity --chunks; 0 = all).
    pub max_chunks: u32,
    pub threads: u32,
    /// Tokens generated per answer at most.
    pub max_answer_tokens: u32,
    /// Where the reference's logits are cached (default: beside the reference file).
    pub cache_dir: Option<PathBuf>,
    /// The kiln executable: when set, each file is evaluated in a child process (`kiln
    /// measure-worker`), so that a file which makes llama.cpp abort becomes one failed result.
    /// None: in this process. Never serialized.
    #[serde(skip)]
    pub worker: Option<PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            text: None,
            questions: None,
            n_ctx: 512,
            max_chunks: 0,
            threads: default_threads(),
            max_answer_tokens: 32,
            cache_dir: None,
            worker: None,
        }
    }
}

/// Quality of one file against the reference. A file evaluated in a worker process that failed
/// is one result with `error` set and zeros elsewhere.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EvalResult {
    pub model_filename: String,
    pub n_chunks: u32,
    pub n_ctx: u32,
    /// Tokens scored (llama-perplexity scores the second half of each chunk).
    pub n_tokens_scored: u64,
    pub ppl: f64,
    pub ppl_stderr: f64,
    /// Mean KL divergence from the reference's distribution to this file's (llama-perplexity
    /// --kl-divergence's "Mean KLD").
    pub kld_mean: f64,
    pub kld_stderr: f64,
    /// 99th percentile of the per-token KLD ("KLD_99").
    pub kld_p99: f64,
    /// Share of tokens whose top token equals the reference's ("Same top p"), in percent.
    pub same_top_pct: f64,
    /// Task check: share of answers containing the expected answer, percent.
    pub task_contains_pct: f64,
    /// Task check: share of answers identical to the reference's answer, percent.
    pub task_same_as_reference_pct: f64,
    pub task_questions: u32,
    /// Generated tokens per second over all answers (generated tokens / generation time).
    pub task_gen_ts: f64,
    pub task_tokens_generated: u64,
    /// Why this file has no figures: llama.cpp refused it or aborted on it in its worker
    /// process. Absent for a measured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The file name of a result's path (the whole path when it has none).
pub(crate) fn file_label(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// The runner's default thread count: every core the process may use (4 when unknown).
pub fn default_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(4)
}
