//! The sweep's report data: one row per variant, the machine, and the whole report (what
//! report.json holds and the report's writers read).

use crate::runner::bench::draft::DraftResult;
use crate::runner::{BatchedResult, BenchOptions, BenchResult, EvalResult};
use serde::{Deserialize, Serialize};

/// One variant's line of the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepRow {
    /// llama.cpp's name of the file type, "Q4_K_M".
    pub r#type: String,
    pub file: String,
    pub is_reference: bool,
    pub file_size: u64,
    pub bits_per_weight: f64,
    pub n_params: u64,
    pub bench: Vec<BenchResult>,
    /// llama-batched-bench's rows (`kiln sweep --parallel`); empty without it and in reports
    /// written before it.
    #[serde(default)]
    pub batched: Vec<BatchedResult>,
    pub eval: Option<EvalResult>,
    /// Greedy generation with the sweep's draft variant (`kiln sweep --draft T`); None without
    /// it, for the draft's own row, and in reports written before it.
    #[serde(default)]
    pub draft: Option<DraftResult>,
    /// Why this variant has no figures (llama.cpp refused it, ...).
    pub error: Option<String>,
}

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<f64>().ok())
            })
            .map(|kb| kb / 1048576.0)
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib,
            os: std::env::consts::OS.to_string(),
        }
    }
}

/// Everything the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepReport {
    pub input: String,
    pub model: String,
    pub reference: String,
    pub machine: Machine,
    /// Seconds to write every variant in one pass over the input.
    pub convert_seconds: f64,
    pub bench_settings: BenchOptions,
    pub eval_n_ctx: u32,
    pub eval_text: String,
    pub rows: Vec<SweepRow>,
}
