//! `kiln bench`'s results as llama-bench's Markdown table and as CSV.

use super::{failure_line, file_label};
use crate::llama::raw::{backends, cpu_features_line, cpu_info};
use crate::runner::bench::{mean, stddev};
use crate::runner::BenchResult;

fn mib(b: u64) -> String {
    format!("{:.2}", b as f64 / 1024.0 / 1024.0)
}

/// A markdown table like llama-bench's: `model | model type | size | params | backend | [ngl |]
/// threads | [n_batch | n_ubatch | type_k | type_v | fa |] test | t/s`, then kiln's columns
/// (bits per weight, load time, KV cache, peak RSS). Optional columns appear, as in
/// llama-bench, when some result differs from llama-bench's default or the results differ among
/// themselves. The model column is the file name (kiln compares files of one model); "model
/// type" is llama-bench's model column (`llama_model_desc`: "gemma3 270M Q4_K - Medium"). A
/// file that failed in its worker process is a row with "failed" in the t/s column, and its
/// reason below the table. A footer names the CPU, the backends and the CPU backend's features
/// the results were measured with (this process's for results that do not say).
pub fn to_markdown(results: &[BenchResult]) -> String {
    // (cpu_info, backends, cpu_features) of a result, this process's where it has none (a
    // result read from an older JSON).
    let here = std::cell::OnceCell::new();
    let machine = |r: &BenchResult| -> (String, String, String) {
        let h = here.get_or_init(|| (cpu_info(), backends(), cpu_features_line()));
        let or = |v: &str, d: &str| {
            if v.is_empty() {
                d.to_string()
            } else {
                v.to_string()
            }
        };
        (
            or(&r.cpu_info, &h.0),
            or(&r.backends, &h.1),
            or(&r.cpu_features, &h.2),
        )
    };
    let measured: Vec<&BenchResult> = results.iter().filter(|r| r.error.is_none()).collect();
    let varies = |f: &dyn Fn(&BenchResult) -> String, default: &str| {
        measured.iter().any(|r| f(r) != default) || measured.windows(2).any(|w| f(w[0]) != f(w[1]))
    };
    let gpu = results.iter().any(|r| machine(r).1 != "CPU");
    // (header, width; negative: left-aligned, value)
    type Col<'a> = (&'static str, i32, Box<dyn Fn(&BenchResult) -> String + 'a>);
    let mut cols: Vec<Col> = vec![
        ("model", -30, Box::new(|r| file_label(&r.model_filename))),
        ("model type", -24, Box::new(|r| r.model_type.clone())),
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
        ("backend", -10, Box::new(|r| machine(r).1)),
    ];
    if gpu {
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
        for (h, w, f) in &cols {
            // A failed file has its name, its machine and "failed"; nothing was measured.
            let v = match (&r.error, *h) {
                (None, _) | (Some(_), "model" | "backend") => f(r),
                (Some(_), "t/s") => "failed".to_string(),
                (Some(_), _) => String::new(),
            };
            // a '|' inside a value would split the cell
            out += &cell(&v.replace('|', "\\|"), *w);
        }
        out += "\n";
    }
    let failed: Vec<&BenchResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        out += "\nfailed:\n";
        for r in failed {
            out += &failure_line(&r.model_filename, r.error.as_deref().unwrap_or_default());
            out += "\n";
        }
    }
    let n_cpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // One footer per machine and build among the results (one, unless results were merged).
    let mut machines: Vec<(String, String, String)> = Vec::new();
    for m in results.iter().map(&machine) {
        if !machines.contains(&m) {
            machines.push(m);
        }
    }
    if machines.is_empty() {
        machines.push(
            here.get_or_init(|| (cpu_info(), backends(), cpu_features_line()))
                .clone(),
        );
    }
    for (cpu, backend, features) in machines {
        out += &format!(
            "\nmachine: {cpu}, {n_cpu} logical CPUs; backend: {backend}\n\
             llama.cpp CPU backend features: {features}\n"
        );
    }
    out
}

/// CSV: a header and one row per result. llama-bench's field names (and order) first, then
/// kiln's. Every value is quoted, as llama-bench's CSV does; `samples_ns`/`samples_ts` are
/// `;`-separated lists. `error` is empty for a measured result.
pub fn to_csv(results: &[BenchResult]) -> String {
    const FIELDS: [&str; 31] = [
        "cpu_info",
        "backends",
        "model_filename",
        "model_type",
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
        "cpu_features",
        "error",
    ];
    let quote = |s: String| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = FIELDS.join(",");
    out += "\n";
    for r in results {
        let ns: Vec<f64> = r.samples_ns.iter().map(|&x| x as f64).collect();
        let values = [
            r.cpu_info.clone(),
            r.backends.clone(),
            r.model_filename.clone(),
            r.model_type.clone(),
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
            r.cpu_features.clone(),
            r.error.clone().unwrap_or_default(),
        ];
        debug_assert_eq!(values.len(), FIELDS.len());
        out += &values.map(quote).join(",");
        out += "\n";
    }
    out
}

/// `kiln bench TARGET --draft DRAFT`'s table: one row per target and draft, `target | draft |
/// threads | draft max | tokens | plain t/s | draft t/s | speed-up | acceptance | accepted/step
/// | same output`, failed pairs below it with their reason, and a line saying what was measured.
pub fn draft_to_markdown(results: &[crate::runner::bench::draft::DraftResult]) -> String {
    let header = [
        "target",
        "draft",
        "threads",
        "draft max",
        "tokens",
        "plain t/s",
        "draft t/s",
        "speed-up",
        "acceptance",
        "accepted/step",
        "same output",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in results {
        let mut row = vec![
            file_label(&r.target_filename),
            file_label(&r.draft_filename),
        ];
        if r.error.is_some() {
            row.extend(std::iter::repeat_n("-".to_string(), 8));
            row.push("failed".into());
        } else {
            row.extend([
                r.n_threads.to_string(),
                r.draft_max.to_string(),
                r.tokens_generated.to_string(),
                format!("{:.2}", r.plain_ts),
                format!("{:.2}", r.draft_ts),
                format!("{:.2}x", r.speedup),
                format!("{:.1}%", 100.0 * r.acceptance),
                format!("{:.2}", r.mean_accepted),
                if r.identical { "yes" } else { "NO" }.into(),
            ]);
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let cells: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &format!(
        "|{}|\n",
        widths
            .iter()
            .enumerate()
            .map(|(i, &w)| if i < 2 {
                format!(":{}", "-".repeat(w + 1))
            } else {
                format!("{}:", "-".repeat(w + 1))
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        out += &line(r);
    }
    if let Some(r) = results.iter().find(|r| r.error.is_none()) {
        out += &format!(
            "\ngreedy generation of {} tokens after each of {} prompts of {} tokens from the \
             bundled text; t/s: generated tokens / wall time of generation (prompts not timed); \
             acceptance: accepted / drafted tokens\n",
            r.n_gen, r.n_prompts, r.prompt_len
        );
    }
    for r in results {
        if let Some(e) = &r.error {
            out += &failure_line(&r.target_filename, e);
            out += "\n";
        }
    }
    out
}
