//! Measuring one file (bench, then eval) in this process or in a child process
//! `kiln measure-worker`: the job it reads as JSON on stdin, the result it writes as JSON on
//! stdout, and spawning and watching that child. `kiln sweep` measures each variant this way,
//! and `kiln bench` and `kiln eval` each file, so that a file which makes llama.cpp abort (a
//! GGML_ASSERT calls `abort()`, which no Rust code survives) ends only its worker and becomes
//! that file's error, with llama.cpp's last words.

use crate::runner::bench::draft::{DraftOptions, DraftResult};
use crate::runner::bench::CRand;
use crate::runner::{
    bench, eval, BatchedResult, BenchOptions, BenchResult, EvalOptions, EvalResult,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One file's measurement: what `kiln measure-worker` reads on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MeasureJob {
    pub file: PathBuf,
    /// The reference GGUF the evaluation compares against (needed with `eval`).
    pub reference: Option<PathBuf>,
    pub bench: Option<BenchOptions>,
    /// llama-batched-bench's measurement with these options (their `parallel`), after the bench.
    #[serde(default)]
    pub batched: Option<BenchOptions>,
    pub eval: Option<EvalOptions>,
    /// llama-bench's token generator, as the previous file left it, so that files benched in
    /// separate workers draw the tokens one llama-bench process draws. None: unseeded (seed 1).
    #[serde(default)]
    pub rng: Option<CRand>,
    /// Speculative decoding of `file` (the target) with a draft model.
    #[serde(default)]
    pub draft: Option<DraftJob>,
}

/// `kiln bench TARGET --draft DRAFT`'s part of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DraftJob {
    pub draft: PathBuf,
    pub options: DraftOptions,
}

impl MeasureJob {
    /// A job for `file` that measures nothing yet.
    pub fn new(file: &Path) -> MeasureJob {
        MeasureJob {
            file: file.to_path_buf(),
            reference: None,
            bench: None,
            batched: None,
            eval: None,
            rng: None,
            draft: None,
        }
    }
}

/// What a measurement found: what `kiln measure-worker` writes on stdout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub bench: Vec<BenchResult>,
    /// llama-batched-bench's rows (with the job's `batched`).
    #[serde(default)]
    pub batched: Vec<BatchedResult>,
    pub eval: Option<EvalResult>,
    pub error: Option<String>,
    /// The token generator after the benchmark (for the next file's job).
    #[serde(default)]
    pub rng: Option<CRand>,
    /// The speculative-decoding measurement, when the job asked for one.
    #[serde(default)]
    pub draft: Option<DraftResult>,
}

/// Benches and evaluates one file in this process (the bench first, then the batched
/// measurement; nothing more after an error).
pub fn measure(job: &MeasureJob, progress: &mut dyn FnMut(&str)) -> Measured {
    let mut m = Measured::default();
    let name = job.file.display().to_string();
    if let Some(b) = &job.bench {
        progress(&format!("bench {name}"));
        reset_peak_rss();
        let mut rng = job.rng.clone().unwrap_or_else(|| CRand::new(1));
        match bench::run_from(std::slice::from_ref(&job.file), b, &mut rng, &mut |l| {
            progress(l)
        }) {
            Ok(b) => m.bench = b,
            Err(e) => m.error = Some(format!("{e:#}")),
        }
        m.rng = Some(rng);
    }
    if let (Some(b), None) = (&job.batched, &m.error) {
        progress(&format!("batched bench {name}"));
        match bench::run_batched_from(std::slice::from_ref(&job.file), b, &mut |l| progress(l)) {
            Ok(r) => m.batched = r,
            Err(e) => m.error = Some(format!("{e:#}")),
        }
    }
    if let (Some(d), None) = (&job.draft, &m.error) {
        progress(&format!("bench {name} with draft {}", d.draft.display()));
        match bench::draft::run(&job.file, &d.draft, &d.options, &mut |l| progress(l)) {
            Ok(r) => m.draft = Some(r),
            Err(e) => m.error = Some(format!("{e:#}")),
        }
    }
    if let (Some(e), None) = (&job.eval, &m.error) {
        match &job.reference {
            None => m.error = Some(format!("{name}: evaluation without a reference")),
            Some(reference) => {
                progress(&format!("eval {name} against {}", reference.display()));
                match eval::run(std::slice::from_ref(&job.file), reference, e, &mut |l| {
                    progress(l)
                }) {
                    Ok(mut r) => m.eval = r.pop(),
                    Err(e) => m.error = Some(format!("{e:#}")),
                }
            }
        }
    }
    m
}

/// [`measure`] in a child process `exe measure-worker`: its progress lines are passed on, and
/// a child that dies (llama.cpp's GGML_ASSERT aborts, a crash) gives an error with its last
/// words instead of taking the caller (the sweep, the bench, the eval) down. The job's options are
/// sent without their `worker`, so the child measures in itself.
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
                .map(|l| format!(": {}", short_source_paths(l.trim())))
                .unwrap_or_default();
            failed(format!(
                "{}: llama.cpp {how} while measuring it{said}",
                job.file.display()
            ))
        }
        Err(e) => failed(format!("measuring {}: {e}", job.file.display())),
    }
}

/// llama.cpp's message with the source path of its GGML_ASSERT cut to the part inside
/// llama.cpp ("/root/.cargo/registry/.../llama.cpp/src/llama-model.cpp:1363: GGML_ASSERT(...)"
/// -> "llama.cpp/src/llama-model.cpp:1363: GGML_ASSERT(...)").
fn short_source_paths(line: &str) -> String {
    match line.find("/llama.cpp/") {
        Some(i) if !line[..i].contains(' ') => line[i + 1..].to_string(),
        _ => line.to_string(),
    }
}

/// Resets the process's peak resident memory (VmHWM) to its current value, so that each
/// variant's benchmark reports its own peak (Linux: writing 5 to /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The worker's side (`kiln measure-worker`): reads one [`MeasureJob`] as JSON from stdin,
/// measures it, and prints the [`Measured`] as JSON on stdout.
pub fn serve(progress: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
    let job: MeasureJob = serde_json::from_str(&input)?;
    let m = measure(&job, progress);
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}
