//! `kiln bench`'s results as llama-bench's Markdown table and as CSV.

use super::file_label;
use crate::llama::raw::{backends, cpu_info};
use crate::runner::bench::{mean, stddev};
use crate::runner::BenchResult;

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
