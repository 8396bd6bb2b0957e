//! The sweep's report folder: report.md (a table and the chart), report.json, report.csv,
//! chart.svg and chart.png; its data model ([`model`]); and the tables of `kiln bench`
//! ([`bench_table`]) and `kiln eval` ([`eval_table`]).

pub mod batched_table;
pub mod bench_table;
pub mod chart;
pub mod eval_table;
pub mod model;

use anyhow::{Context, Result};
use model::{SweepReport, SweepRow};
use std::fmt::Write;
use std::path::Path;

pub(crate) use crate::runner::file_label;

/// A failed file's line below a table: its error, which names the file (its name first when
/// the error does not).
pub(crate) fn failure_line(path: &str, error: &str) -> String {
    if error.contains(path) {
        format!("- {error}")
    } else {
        format!("- {}: {error}", file_label(path))
    }
}

fn bench_ts(row: &SweepRow, prefix: &str) -> Option<(f64, f64, String)> {
    row.bench
        .iter()
        .find(|b| b.test.starts_with(prefix))
        .map(|b| (b.avg_ts, b.stddev_ts, b.test.clone()))
}

fn peak_mib(row: &SweepRow) -> Option<f64> {
    row.bench
        .iter()
        .map(|b| b.peak_rss_bytes)
        .max()
        .map(|b| b as f64 / 1048576.0)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

const COLUMNS: [&str; 13] = [
    "type",
    "size_mib",
    "bits_per_weight",
    "pp_ts",
    "pp_stddev",
    "tg_ts",
    "tg_stddev",
    "peak_mib",
    "ppl",
    "kld_mean",
    "kld_p99",
    "same_top_pct",
    "task_contains_pct",
];

fn cells(r: &SweepRow) -> Vec<String> {
    let pp = bench_ts(r, "pp");
    let tg = bench_ts(r, "tg");
    let e = r.eval.as_ref();
    vec![
        r.r#type.clone(),
        format!("{:.2}", r.file_size as f64 / 1048576.0),
        format!("{:.3}", r.bits_per_weight),
        opt(pp.as_ref().map(|p| p.0), 2),
        opt(pp.as_ref().map(|p| p.1), 2),
        opt(tg.as_ref().map(|p| p.0), 2),
        opt(tg.as_ref().map(|p| p.1), 2),
        opt(peak_mib(r), 1),
        opt(e.map(|e| e.ppl), 4),
        // The reference against itself can come out a rounding error below zero.
        opt(
            e.map(|e| {
                if e.kld_mean.abs() < 5e-7 {
                    0.0
                } else {
                    e.kld_mean
                }
            }),
            6,
        ),
        opt(e.map(|e| e.kld_p99), 6),
        opt(e.map(|e| e.same_top_pct), 2),
        opt(e.map(|e| e.task_contains_pct), 1),
    ]
}

/// report.csv: one row per variant.
pub fn csv(rep: &SweepReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{},task_same_as_reference_pct,is_reference,file,error",
        COLUMNS.join(",")
    );
    for r in &rep.rows {
        let q = |x: &str| format!("\"{}\"", x.replace('"', "\"\""));
        let e = r
            .eval
            .as_ref()
            .map(|e| format!("{:.1}", e.task_same_as_reference_pct))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{},{e},{},{},{}",
            cells(r).join(","),
            r.is_reference,
            q(&r.file),
            q(r.error.as_deref().unwrap_or(""))
        );
    }
    s
}

/// report.md: settings, the chart, the table, notes.
pub fn markdown(rep: &SweepReport) -> String {
    let mut s = String::new();
    let b = &rep.bench_settings;
    let _ = writeln!(s, "# kiln sweep: {}\n", rep.model);
    let _ = writeln!(s, "- input: `{}`", rep.input);
    let _ = writeln!(
        s,
        "- reference (KLD, same-top-token and task agreement are against it): {}",
        rep.reference
    );
    let _ = writeln!(
        s,
        "- machine: {}, {} cores, {:.0} GiB, {}",
        rep.machine.cpu, rep.machine.cores, rep.machine.memory_gib, rep.machine.os
    );
    let _ = writeln!(
        s,
        "- conversion: every variant in one pass over the input, {:.1} s",
        rep.convert_seconds
    );
    let _ = writeln!(
        s,
        "- speed: llama-bench's definitions, pp{} / tg{}, {} repetitions, {} threads, batch {}, ubatch {}, KV cache {}, flash attention {}",
        b.n_prompt.first().copied().unwrap_or(0),
        b.n_gen.first().copied().unwrap_or(0),
        b.repetitions,
        b.threads.first().copied().unwrap_or(0),
        b.batch.first().copied().unwrap_or(0),
        b.ubatch.first().copied().unwrap_or(0),
        b.cache_type.first().cloned().unwrap_or_default(),
        if b.flash_attn.first().copied().unwrap_or(false) { "on" } else { "off" }
    );
    let _ = writeln!(
        s,
        "- quality: llama-perplexity's definitions, context {}, text: {}\n",
        rep.eval_n_ctx, rep.eval_text
    );
    let _ = writeln!(s, "![quality against size](chart.svg)\n");
    let _ = writeln!(
        s,
        "| type | size MiB | bits/weight | pp t/s | tg t/s | peak MiB | PPL | mean KLD | KLD p99 | same top % | task correct % | task = reference % |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &rep.rows {
        let c = cells(r);
        let ts = |m: &str, d: &str| {
            if m == "-" {
                "-".to_string()
            } else {
                format!("{m} ± {d}")
            }
        };
        let same = r
            .eval
            .as_ref()
            .map(|e| format!("{:.1}", e.task_same_as_reference_pct))
            .unwrap_or_else(|| "-".into());
        let name = if r.is_reference {
            format!("{} (reference)", c[0])
        } else {
            c[0].clone()
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {same} |",
            c[1],
            c[2],
            ts(&c[3], &c[4]),
            ts(&c[5], &c[6]),
            c[7],
            c[8],
            c[9],
            c[10],
            c[11],
            c[12]
        );
    }
    batched_markdown(&mut s, rep);
    draft_markdown(&mut s, rep);
    let failed: Vec<&SweepRow> = rep.rows.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\nNot measured:\n");
        for r in failed {
            let _ = writeln!(
                s,
                "- {}: {}",
                r.r#type,
                r.error.as_deref().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        s,
        "\nReading it: pp is prompt tokens processed per second, tg generated tokens per second (mean ± standard \
         deviation over repetitions); peak MiB is the benchmark process's peak resident memory. Task tokens per second \
         count generated tokens only, so a variant that answers at greater length is not made to look slower. \
         Figures depend on the machine, thread count and prompt length above."
    );
    s
}

/// The batched table of the report (`kiln sweep --parallel`): per variant and number of
/// sequences B, llama-batched-bench's S_TG (generated tokens per second, all sequences together),
/// S_TG per sequence, and the KV cache the setting fills. Nothing when no row has batched
/// figures.
fn batched_markdown(s: &mut String, rep: &SweepReport) {
    if rep.rows.iter().all(|r| r.batched.is_empty()) {
        return;
    }
    let b = &rep.bench_settings;
    let _ = writeln!(
        s,
        "\nBatched generation (llama-batched-bench's definitions; {} prompt tokens {}, {} generated \
         per sequence):\n",
        b.n_prompt.first().copied().unwrap_or(0),
        if b.pp_shared {
            "shared by all sequences"
        } else {
            "per sequence"
        },
        b.n_gen.first().copied().unwrap_or(0),
    );
    let _ = writeln!(
        s,
        "| type | B | N_KV | S_PP t/s | S_TG t/s | S_TG/seq t/s | KV MiB |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &rep.rows {
        for x in r.batched.iter().filter(|x| x.error.is_none()) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.r#type,
                x.pl,
                x.n_kv,
                x.speed_pp,
                x.speed_tg,
                x.speed_tg_per_seq,
                x.kv_cache_bytes as f64 / 1048576.0
            );
        }
    }
}

/// The speculative-decoding table of the report (`kiln sweep --draft T`): each variant's
/// greedy generation with the sweep's draft variant, as `kiln bench --draft` prints it. Nothing
/// when no row has a draft figure.
fn draft_markdown(s: &mut String, rep: &SweepReport) {
    let results: Vec<_> = rep.rows.iter().filter_map(|r| r.draft.clone()).collect();
    let Some(first) = results.first() else {
        return;
    };
    let _ = writeln!(
        s,
        "\nSpeculative decoding (greedy; {} prompts of {} tokens from the bundled text, {} tokens \
         generated each; draft t/s is the speed with the draft, speed-up against the variant alone):\n",
        first.n_prompts, first.prompt_len, first.n_gen
    );
    s.push_str(&bench_table::draft_to_markdown(&results));
}

/// Writes the report folder's files.
pub fn write(rep: &SweepReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = dir.join(name);
        let tmp = dir.join(format!(".{name}.partial"));
        std::fs::write(&tmp, bytes).with_context(|| format!("{}: write failed", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("{}: rename failed", p.display()))
    };
    put("report.md", markdown(rep).as_bytes())?;
    put("report.json", serde_json::to_string_pretty(rep)?.as_bytes())?;
    put("report.csv", csv(rep).as_bytes())?;
    let points: Vec<chart::Point> = rep
        .rows
        .iter()
        .map(|r| chart::Point {
            label: r.r#type.clone(),
            size_mib: r.file_size as f64 / 1048576.0,
            bits_per_weight: r.bits_per_weight,
            kld: r.eval.as_ref().map(|e| e.kld_mean),
            tg_ts: bench_ts(r, "tg").map(|t| t.0),
            is_reference: r.is_reference,
        })
        .collect();
    let svg = chart::svg(
        &format!("{}: quality lost against size", rep.model),
        &points,
    );
    put("chart.svg", svg.as_bytes())?;
    put("chart.png", &chart::png(&svg)?)?;
    Ok(())
}
