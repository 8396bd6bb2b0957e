//! `kiln sweep`: convert one checkpoint to several types in one pass, bench and evaluate every
//! variant on llama.cpp against the highest-precision one, and write a report folder.

use crate::pipeline::{self, Output};
use crate::plan::FileType;
use crate::quantize::{self, Options, Prepared};
use crate::runner::{bench, eval, BenchOptions, BenchResult, EvalOptions, EvalResult};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `kiln sweep` takes.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub types: Vec<FileType>,
    /// The report folder (GGUF files go into it too).
    pub out_dir: PathBuf,
    /// The reference type (default: the highest-precision of `types`).
    pub reference: Option<FileType>,
    pub allow_requantize: bool,
    pub imatrix: Option<PathBuf>,
    pub force: bool,
    pub bench: BenchOptions,
    pub eval: EvalOptions,
    /// Skip the benchmark or the evaluation (the report leaves their columns empty).
    pub skip_bench: bool,
    pub skip_eval: bool,
    /// GGUF files made elsewhere (llama-quantize, a download) to measure beside kiln's
    /// variants, against the same reference.
    pub extra: Vec<PathBuf>,
    /// The kiln executable: when set, each variant is measured in a child process
    /// (`kiln measure-worker`), so that a file which makes llama.cpp abort (a GGML_ASSERT)
    /// becomes that variant's error instead of ending the sweep. None: in this process.
    pub worker: Option<PathBuf>,
}

/// One variant's measurement: what `kiln measure-worker` reads on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeasureJob {
    pub file: PathBuf,
    pub reference: PathBuf,
    pub bench: Option<BenchOptions>,
    pub eval: Option<EvalOptions>,
}

/// What a measurement found: what `kiln measure-worker` writes on stdout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub bench: Vec<BenchResult>,
    pub eval: Option<EvalResult>,
    pub error: Option<String>,
}

/// Benches and evaluates one file in this process (the bench first; no eval after an error).
pub fn measure(job: &MeasureJob, progress: &mut dyn FnMut(&str)) -> Measured {
    let mut m = Measured::default();
    let name = job.file.display().to_string();
    if let Some(b) = &job.bench {
        progress(&format!("bench {name}"));
        reset_peak_rss();
        match bench::run(std::slice::from_ref(&job.file), b, &mut |l| progress(l)) {
            Ok(b) => m.bench = b,
            Err(e) => m.error = Some(format!("{e:#}")),
        }
    }
    if let (Some(e), None) = (&job.eval, &m.error) {
        progress(&format!("eval {name} against {}", job.reference.display()));
        match eval::run(
            std::slice::from_ref(&job.file),
            &job.reference,
            e,
            &mut |l| progress(l),
        ) {
            Ok(mut r) => m.eval = r.pop(),
            Err(e) => m.error = Some(format!("{e:#}")),
        }
    }
    m
}

/// [`measure`] in a child process `exe measure-worker`: its progress lines are passed on, and
/// a child that dies (llama.cpp's GGML_ASSERT aborts, a crash) gives an error with its last
/// words instead of taking the sweep down.
pub fn measure_isolated(exe: &Path, job: &MeasureJob, progress: &mut dyn FnMut(&str)) -> Measured {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let failed = |why: String| Measured {
        error: Some(why),
        ..Default::default()
    };
    let child = Command::new(exe)
        .arg("measure-worker")
        // ggml's abort would otherwise attach gdb to print a backtrace.
        .env("GGML_NO_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return failed(format!("{}: cannot start: {e}", exe.display())),
    };
    let input = serde_json::to_vec(job).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&input);
    }
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut o) = stdout {
            let _ = std::io::Read::read_to_string(&mut o, &mut s);
        }
        s
    });
    let mut last: Vec<String> = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            match line.strip_prefix("kiln: ") {
                Some(l) => progress(l),
                None => {
                    last.push(line);
                    if last.len() > 20 {
                        last.remove(0);
                    }
                }
            }
        }
    }
    let status = child.wait();
    let out = reader.join().unwrap_or_default();
    match status {
        Ok(s) if s.success() => serde_json::from_str(&out).unwrap_or_else(|e| {
            failed(format!(
                "measuring {}: unreadable worker output: {e}",
                job.file.display()
            ))
        }),
        Ok(s) => {
            let how = {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    match s.signal() {
                        Some(6) => "aborted (SIGABRT)".to_string(),
                        Some(11) => "crashed (SIGSEGV)".to_string(),
                        Some(n) => format!("was killed by signal {n}"),
                        None => format!("exited with {s}"),
                    }
                }
                #[cfg(not(unix))]
                {
                    format!("exited with {s}")
                }
            };
            let said = last
                .iter()
                .rev()
                .find(|l| l.contains("GGML_ASSERT") || l.contains("error"))
                .or(last.last())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default();
            failed(format!(
                "{}: llama.cpp {how} while measuring it{said}",
                job.file.display()
            ))
        }
        Err(e) => failed(format!("measuring {}: {e}", job.file.display())),
    }
}

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
    pub eval: Option<EvalResult>,
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

/// Resets the process's peak resident memory (VmHWM) to its current value, so that each
/// variant's benchmark reports its own peak (Linux: writing 5 to /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The order of precision (highest first) used to pick the reference.
fn precision_rank(f: FileType) -> usize {
    FileType::ALL
        .iter()
        .position(|&g| g == f)
        .unwrap_or(usize::MAX)
}

/// The row of a GGUF made elsewhere, labelled with its file name; sizes come from its header,
/// and a file kiln cannot read is a row with that error.
fn extra_row(file: &Path) -> SweepRow {
    let label = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let mut row = SweepRow {
        r#type: label,
        file: file.display().to_string(),
        is_reference: false,
        file_size: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        bits_per_weight: 0.0,
        n_params: 0,
        bench: Vec::new(),
        eval: None,
        error: None,
    };
    match crate::gguf::GgufFile::open(file) {
        Ok(g) => (row.n_params, _, row.bits_per_weight) = crate::inspect::totals(&g),
        Err(e) => row.error = Some(format!("{e:#}")),
    }
    row
}

/// Runs the sweep. `progress` gets one line per step.
pub fn run(
    input: &Path,
    opts: &SweepOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SweepReport> {
    if opts.types.is_empty() {
        bail!("--types names no type");
    }
    let mut types: Vec<FileType> = Vec::new();
    for &t in opts.types.iter().chain(opts.reference.iter()) {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    types.sort_by_key(|&t| precision_rank(t));
    let reference = opts.reference.unwrap_or(types[0]);
    std::fs::create_dir_all(&opts.out_dir)?;

    // Convert every type in one pass.
    let stem = quantize::default_output(input, FileType::F32);
    let stem = stem
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model = stem.trim_end_matches("-F32.gguf").to_string();
    let mut prepared: Vec<Prepared> = Vec::new();
    for &t in &types {
        let mut o = Options::new(t);
        o.output = Some(opts.out_dir.join(format!("{model}-{}.gguf", t.name())));
        o.force = opts.force;
        o.allow_requantize = opts.allow_requantize;
        o.imatrix = opts.imatrix.clone();
        let p = quantize::prepare(input, &o)?;
        crate::gguf::writer::check_target(&p.target, opts.force)?;
        prepared.push(p);
    }
    progress(&format!(
        "converting {} to {} types in one pass",
        input.display(),
        types.len()
    ));
    let t0 = Instant::now();
    let outputs: Vec<Output> = prepared
        .iter()
        .map(|p| Output {
            jobs: &p.jobs,
            metadata: &p.metadata,
            target: &p.target,
            imatrix: p.imatrix.as_ref(),
        })
        .collect();
    pipeline::run_many(prepared[0].input.as_ref(), &outputs, opts.force, false)?;
    let convert_seconds = t0.elapsed().as_secs_f64();
    progress(&format!("converted in {convert_seconds:.1} s"));

    let ref_path = prepared[types.iter().position(|&t| t == reference).unwrap_or(0)]
        .target
        .clone();
    let mut rows = Vec::new();
    let mut variants: Vec<SweepRow> = types
        .iter()
        .zip(&prepared)
        .map(|(t, p)| {
            let n_params = p.n_elements();
            let data = p.data_bytes().unwrap_or(0);
            SweepRow {
                r#type: t.name().to_string(),
                file: p.target.display().to_string(),
                is_reference: *t == reference,
                file_size: std::fs::metadata(&p.target).map(|m| m.len()).unwrap_or(0),
                bits_per_weight: data as f64 * 8.0 / n_params.max(1) as f64,
                n_params,
                bench: Vec::new(),
                eval: None,
                error: None,
            }
        })
        .collect();
    variants.extend(opts.extra.iter().map(|f| extra_row(f)));
    for mut row in variants {
        let label = row.r#type.clone();
        if row.error.is_none() && !(opts.skip_bench && opts.skip_eval) {
            let job = MeasureJob {
                file: PathBuf::from(&row.file),
                reference: ref_path.clone(),
                bench: (!opts.skip_bench).then(|| opts.bench.clone()),
                eval: (!opts.skip_eval).then(|| opts.eval.clone()),
            };
            let m = match &opts.worker {
                Some(exe) => measure_isolated(exe, &job, progress),
                None => measure(&job, progress),
            };
            row.bench = m.bench;
            row.eval = m.eval;
            row.error = m.error;
        }
        if let Some(e) = &row.error {
            progress(&format!("{label}: not measured: {e}"));
        }
        rows.push(row);
    }
    Ok(SweepReport {
        input: input.display().to_string(),
        model,
        reference: reference.name().to_string(),
        machine: Machine::this(),
        convert_seconds,
        bench_settings: opts.bench.clone(),
        eval_n_ctx: opts.eval.n_ctx,
        eval_text: opts
            .eval
            .text
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "bundled default text (fixtures/eval/text.txt)".into()),
        rows,
    })
}
