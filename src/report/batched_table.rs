//! `kiln bench --parallel`'s results as llama-batched-bench prints them: its Markdown table
//! (one per file and setting, under its settings line) with kiln's columns after its own, and
//! its JSONL lines.

use super::{failure_line, file_label};
use crate::runner::BatchedResult;
use std::fmt::Write;

/// llama-batched-bench's table: `PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s |
/// T s | S t/s` (its widths and precisions), then kiln's `S_TG/seq t/s` (generation speed of one
/// sequence) and `KV MiB` (the KV cache the setting fills). One table per file and context
/// setting, under a line with llama-batched-bench's settings; failed files are listed below.
pub fn to_markdown(results: &[BatchedResult]) -> String {
    let mut s = String::new();
    let mut last: Option<String> = None;
    for r in results.iter().filter(|r| r.error.is_none()) {
        let head = format!(
            "{}: n_kv_max = {}, n_batch = {}, n_ubatch = {}, flash_attn = {}, is_pp_shared = {}, \
             n_gpu_layers = {}, n_threads = {}, n_threads_batch = {}, type_k = {}, KV allocated = \
             {} MiB",
            file_label(&r.model_filename),
            r.n_kv_max,
            r.n_batch,
            r.n_ubatch,
            r.flash_attn,
            r.is_pp_shared,
            r.n_gpu_layers,
            r.n_threads,
            r.n_threads_batch,
            r.type_k,
            mib(r.kv_cache_bytes_allocated),
        );
        if last.as_ref() != Some(&head) {
            if last.is_some() {
                s.push('\n');
            }
            let _ = writeln!(s, "{head}\n");
            let _ = writeln!(
                s,
                "|{:>6} | {:>6} | {:>4} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>8} | {:>12} | {:>8} |",
                "PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s",
                "S_TG/seq t/s", "KV MiB"
            );
            let _ = writeln!(
                s,
                "|{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}-|-{}:|-{}:|",
                "-".repeat(6),
                "-".repeat(6),
                "-".repeat(4),
                "-".repeat(6),
                "-".repeat(8),
                "-".repeat(8),
                "-".repeat(8),
                "-".repeat(8),
                "-".repeat(8),
                "-".repeat(8),
                "-".repeat(11),
                "-".repeat(7),
            );
            last = Some(head);
        }
        let _ = writeln!(
            s,
            "|{:>6} | {:>6} | {:>4} | {:>6} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} | {:>8.3} | {:>8.2} | {:>12.2} | {:>8} |",
            r.pp,
            r.tg,
            r.pl,
            r.n_kv,
            r.t_pp,
            r.speed_pp,
            r.t_tg,
            r.speed_tg,
            r.t,
            r.speed,
            r.speed_tg_per_seq,
            mib(r.kv_cache_bytes)
        );
    }
    let failed: Vec<&BatchedResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\nNot measured:\n");
        for r in failed {
            let _ = writeln!(
                s,
                "{}",
                failure_line(&r.model_filename, r.error.as_deref().unwrap_or_default())
            );
        }
    }
    s
}

/// One JSON object per line, llama-batched-bench's `-o jsonl` fields first, then kiln's.
pub fn to_jsonl(results: &[BatchedResult]) -> String {
    let mut s = String::new();
    for r in results {
        s += &serde_json::to_string(r).unwrap_or_default();
        s.push('\n');
    }
    s
}

fn mib(b: u64) -> String {
    format!("{:.2}", b as f64 / 1024.0 / 1024.0)
}
