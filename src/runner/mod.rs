//! The runner: measures GGUF variants on llama.cpp (through `llama-cpp-2`), the way llama.cpp's
//! own tools do. `bench` is llama-bench (pp/tg tokens per second, repetitions, memory);
//! `eval` is llama-perplexity (perplexity, KL divergence to a reference, same-top-token rate)
//! plus a small question-answering task check.

pub mod bench;
pub mod eval;
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
            threads: vec![std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(4)],
            batch: vec![2048],
            ubatch: vec![512],
            cache_type: vec!["f16".into()],
            flash_attn: vec![false],
            n_gpu_layers: vec![99],
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
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(4),
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
