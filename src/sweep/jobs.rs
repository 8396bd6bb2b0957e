//! A sweep split into independent jobs, for sweeps that outgrow one machine:
//! `kiln sweep --plan -o DIR INPUT ...` writes the jobs, `kiln sweep --job N DIR` runs one,
//! `kiln report DIR` merges whatever results exist into the usual report.
//!
//! The folder:
//! - `plan.json`: the sweep (input, model, reference, settings) and its variants in report
//!   order ([`SweepPlan`]).
//! - `jobs/N.json`: job N, self-contained ([`SweepJob`]): which variant, converted from which
//!   input with which settings, measured against which reference.
//! - `results/N.json`: what job N found ([`JobResult`]: the report row, the conversion time,
//!   the machine), written atomically when the job ends.
//! - the GGUF files, as a one-process sweep writes them, and the reference's cached
//!   log-probabilities beside the reference.
//!
//! The shared step is done by `--plan`: it converts the reference (and the `--draft` type),
//! which every job measures against, in one pass. Each job then converts its own variant with
//! the same code as a one-process sweep (so the file is byte-identical), measures it in a
//! worker process, and writes its result. A job whose result is already there (for the same
//! job, without an error) is skipped, so a job array can be re-run as a whole after a failure.
//! Jobs running at once on one reference compute its log-probabilities at most once each and
//! write them atomically; running the reference's job (job 0) first lets the others read them.

use super::{
    assemble, convert_all, extra_row, measure_row, model_name, prepare_variant, resolve_types,
    variant_file_name, variant_row, Machine, SweepOptions, SweepReport, SweepRow,
};
use crate::plan::FileType;
use crate::runner::bench::draft::DraftOptions;
use crate::runner::worker::DraftJob;
use crate::runner::{BenchOptions, EvalOptions};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The version of the plan, job and result files.
const FORMAT: u32 = 1;

/// What every job of a sweep shares: [`SweepOptions`] without the folder, the types and the
/// worker, paths absolute.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub allow_requantize: bool,
    pub imatrix: Option<PathBuf>,
    pub bench: BenchOptions,
    pub eval: EvalOptions,
    pub skip_bench: bool,
    pub skip_eval: bool,
    /// `--draft T`'s options (the draft file is the plan's `draft_file`).
    pub draft: Option<DraftOptions>,
    /// No thread count was given: each job uses all cores of the machine it runs on.
    pub auto_threads: bool,
}

/// One variant: a row of the report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Variant {
    /// The row's label: the file type's name ("Q4_K_M"), or an added file's stem.
    pub label: String,
    /// The file type this variant is converted to; None for a file added with `--add`.
    pub ftype: Option<String>,
    /// The GGUF: a name in the sweep folder, or an added file's absolute path.
    pub file: String,
    pub is_reference: bool,
    /// Whether the job converts it (false: `--plan` did, or it was made elsewhere).
    pub convert: bool,
}

/// `plan.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepPlan {
    pub kiln_sweep_plan: u32,
    pub input: PathBuf,
    pub model: String,
    /// The reference's file type name ("F16").
    pub reference: String,
    /// The reference's GGUF, a name in the sweep folder.
    pub reference_file: String,
    /// The speculative-decoding draft's GGUF (`--draft T`), a name in the sweep folder.
    pub draft_file: Option<String>,
    /// Seconds `--plan` spent converting the shared variants.
    pub convert_seconds: f64,
    pub settings: Settings,
    /// Job N is `variants[N]`.
    pub variants: Vec<Variant>,
}

/// `jobs/N.json`: everything job N needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepJob {
    pub kiln_sweep_job: u32,
    pub index: usize,
    pub n_jobs: usize,
    pub input: PathBuf,
    pub model: String,
    pub reference_file: String,
    pub draft_file: Option<String>,
    pub settings: Settings,
    pub variant: Variant,
}

/// `results/N.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    pub kiln_sweep_result: u32,
    /// The job as it ran (a result for another plan's job N is not this plan's).
    pub job: SweepJob,
    pub row: SweepRow,
    /// Seconds converting this variant (0 when it was not converted by the job).
    pub convert_seconds: f64,
    pub machine: Machine,
}

pub fn plan_path(dir: &Path) -> PathBuf {
    dir.join("plan.json")
}

pub fn job_path(dir: &Path, n: usize) -> PathBuf {
    dir.join("jobs").join(format!("{n}.json"))
}

pub fn result_path(dir: &Path, n: usize) -> PathBuf {
    dir.join("results").join(format!("{n}.json"))
}

/// Whether `dir` holds a planned sweep.
pub fn is_planned(dir: &Path) -> bool {
    plan_path(dir).is_file()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Writes `value` as JSON to `path` through a temporary file in the same folder, renamed at
/// the end (so a reader sees the old file or the whole new one).
fn write_json_atomically<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-")
        .suffix(".json.partial")
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot write", dir.display()))?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    std::io::Write::write_all(&mut tmp, b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {}", path.display(), e.error))?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a kiln {what}", path.display()))
}

/// What `--plan` did.
pub struct Planned {
    pub plan: SweepPlan,
    pub n_jobs: usize,
}

/// `kiln sweep --plan`: checks and plans every variant as a sweep does, converts the shared
/// variants (the reference and the draft) in one pass, and writes `plan.json` and one
/// `jobs/N.json` per variant into `opts.out_dir`. A folder already planned is refused without
/// `opts.force` (with it, its old jobs and results are removed).
pub fn plan(input: &Path, opts: &SweepOptions, progress: &mut dyn FnMut(&str)) -> Result<Planned> {
    let dir = &opts.out_dir;
    if !opts.target_bpw.is_empty() {
        bail!("--target-bpw is not planned as jobs yet: run the budget mixes in a plain `kiln sweep`, or `kiln quantize --target-bpw` and add the files with --add");
    }
    if is_planned(dir) && !opts.force {
        bail!(
            "{}: already holds a planned sweep (use --force to plan it again; its results are then removed)",
            dir.display()
        );
    }
    let (types, reference) = resolve_types(opts)?;
    let input = absolute(input);
    let model = model_name(&input);
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    // Every variant is planned (and so checked) now, as a one-process sweep does before it
    // converts anything; the shared ones are converted.
    let prepared: Vec<_> = types
        .iter()
        .map(|&t| prepare_variant(&input, opts, &model, t))
        .collect::<Result<_>>()?;
    let draft_type = opts.draft.as_ref().map(|d| d.0);
    let shared: Vec<_> = types
        .iter()
        .zip(prepared)
        .filter(|(t, _)| **t == reference || Some(**t) == draft_type)
        .map(|(_, p)| p)
        .collect();
    progress(&format!(
        "converting the shared variants ({}) of {}",
        shared
            .iter()
            .map(|p| p.target.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        input.display()
    ));
    let convert_seconds = convert_all(&shared, opts.force)?;
    drop(shared);

    let mut variants: Vec<Variant> = types
        .iter()
        .map(|&t| Variant {
            label: t.name().to_string(),
            ftype: Some(t.name().to_string()),
            file: variant_file_name(&model, t),
            is_reference: t == reference,
            convert: !(t == reference || Some(t) == draft_type),
        })
        .collect();
    for f in &opts.extra {
        let row = extra_row(f);
        variants.push(Variant {
            label: row.r#type,
            ftype: None,
            file: absolute(f).display().to_string(),
            is_reference: false,
            convert: false,
        });
    }
    let auto_threads = opts.bench.threads.is_empty();
    let mut eval = opts.eval.clone();
    for p in [&mut eval.text, &mut eval.questions, &mut eval.cache_dir]
        .into_iter()
        .flatten()
    {
        *p = absolute(p);
    }
    let settings = Settings {
        allow_requantize: opts.allow_requantize,
        imatrix: opts.imatrix.as_deref().map(absolute),
        bench: opts.bench.clone(),
        eval,
        skip_bench: opts.skip_bench,
        skip_eval: opts.skip_eval,
        draft: opts.draft.as_ref().map(|d| d.1.clone()),
        auto_threads,
    };
    let plan = SweepPlan {
        kiln_sweep_plan: FORMAT,
        input: input.clone(),
        model: model.clone(),
        reference: reference.name().to_string(),
        reference_file: variant_file_name(&model, reference),
        draft_file: draft_type.map(|t| variant_file_name(&model, t)),
        convert_seconds,
        settings,
        variants,
    };
    // A new plan: the old one's jobs and results go.
    for sub in ["jobs", "results"] {
        let d = dir.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .with_context(|| format!("{}: cannot remove the old plan's files", d.display()))?;
        }
    }
    let n_jobs = plan.variants.len();
    for (index, v) in plan.variants.iter().enumerate() {
        let job = SweepJob {
            kiln_sweep_job: FORMAT,
            index,
            n_jobs,
            input: plan.input.clone(),
            model: plan.model.clone(),
            reference_file: plan.reference_file.clone(),
            draft_file: plan.draft_file.clone(),
            settings: plan.settings.clone(),
            variant: v.clone(),
        };
        write_json_atomically(&job_path(dir, index), &job)?;
    }
    write_json_atomically(&plan_path(dir), &plan)?;
    Ok(Planned { plan, n_jobs })
}

/// The sweep options a job measures with (the folder `dir`, a worker process per file), and
/// the draft's options.
fn job_options(dir: &Path, s: &Settings) -> (SweepOptions, Option<DraftOptions>) {
    let mut bench = s.bench.clone();
    let mut eval = s.eval.clone();
    let mut draft = s.draft.clone();
    if s.auto_threads {
        bench.threads = BenchOptions::default().threads;
        eval.threads = EvalOptions::default().threads;
        if let Some(o) = &mut draft {
            o.threads = DraftOptions::default().threads;
        }
    }
    let opts = SweepOptions {
        types: Vec::new(),
        out_dir: dir.to_path_buf(),
        reference: None,
        allow_requantize: s.allow_requantize,
        imatrix: s.imatrix.clone(),
        // the job owns its variant's file
        force: true,
        bench,
        eval,
        skip_bench: s.skip_bench,
        skip_eval: s.skip_eval,
        extra: Vec::new(),
        worker: std::env::current_exe().ok(),
        draft: None,
        target_bpw: Vec::new(),
    };
    (opts, draft)
}

/// A finished job's result, when it is there, belongs to `job` and has no error.
pub fn done(dir: &Path, job: &SweepJob) -> Option<JobResult> {
    let r: JobResult = read_json(&result_path(dir, job.index), "sweep result").ok()?;
    let same = serde_json::to_value(&r.job).ok()? == serde_json::to_value(job).ok()?;
    (same && r.row.error.is_none()).then_some(r)
}

/// What `--job` did.
pub enum JobOutcome {
    /// Already done by an earlier run: its result.
    Skipped(JobResult),
    Ran(JobResult),
}

/// `kiln sweep --job N DIR`: converts job N's variant (unless `--plan` did or it was made
/// elsewhere), measures it against the reference in a worker process, and writes
/// `results/N.json`. Skipped when that result is there already (without `force`). A variant
/// llama.cpp cannot measure is a result with an error, as in a one-process sweep; an error
/// before (the plan, the conversion) is this function's error and writes no result.
pub fn run_job(
    dir: &Path,
    n: usize,
    force: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<JobOutcome> {
    if !is_planned(dir) {
        bail!(
            "{}: no planned sweep here (no plan.json; write one with kiln sweep --plan -o {} INPUT ...)",
            dir.display(),
            dir.display()
        );
    }
    let path = job_path(dir, n);
    if !path.is_file() {
        let plan: SweepPlan = read_json(&plan_path(dir), "sweep plan")?;
        bail!(
            "{}: no job {n}; this sweep has jobs 0 to {}",
            dir.display(),
            plan.variants.len() as i64 - 1
        );
    }
    let job: SweepJob = read_json(&path, "sweep job")?;
    if job.kiln_sweep_job != FORMAT || job.index != n {
        bail!("{}: job file of another version or index", path.display());
    }
    if !force {
        if let Some(r) = done(dir, &job) {
            return Ok(JobOutcome::Skipped(r));
        }
    }
    let (opts, draft_options) = job_options(dir, &job.settings);
    let v = &job.variant;
    let mut convert_seconds = 0.0;
    let row = match &v.ftype {
        Some(name) => {
            let t = FileType::parse(name)?;
            let p = prepare_variant(&job.input, &opts, &job.model, t)?;
            if v.convert {
                progress(&format!(
                    "job {n}: converting {} to {}",
                    job.input.display(),
                    p.target.display()
                ));
                convert_seconds = convert_all(std::slice::from_ref(&p), true)?;
                progress(&format!("converted in {convert_seconds:.1} s"));
            } else if !p.target.is_file() {
                bail!(
                    "{}: missing; kiln sweep --plan converts it (plan the sweep again)",
                    p.target.display()
                );
            }
            variant_row(t, &p, v.is_reference)
        }
        None => extra_row(Path::new(&v.file)),
    };
    let ref_path = dir.join(&job.reference_file);
    if !ref_path.is_file() {
        bail!(
            "{}: the reference is missing; kiln sweep --plan converts it (plan the sweep again)",
            ref_path.display()
        );
    }
    let draft = match (&job.draft_file, draft_options) {
        (Some(f), Some(o)) => Some(DraftJob {
            draft: dir.join(f),
            options: o,
        }),
        _ => None,
    };
    progress(&format!("job {n}: measuring {}", row.file));
    let row = measure_row(row, &opts, &ref_path, draft.as_ref(), progress);
    let r = JobResult {
        kiln_sweep_result: FORMAT,
        job,
        row,
        convert_seconds,
        machine: Machine::this(),
    };
    write_json_atomically(&result_path(dir, n), &r)?;
    Ok(JobOutcome::Ran(r))
}

/// `kiln report DIR` on a planned sweep: the report of every job's result that exists (in
/// plan order), a job without one as a row saying so; and how many jobs have results.
pub fn merge(dir: &Path) -> Result<(SweepReport, usize)> {
    let plan: SweepPlan = read_json(&plan_path(dir), "sweep plan")?;
    let reference = FileType::parse(&plan.reference)?;
    let (opts, _) = job_options(dir, &plan.settings);
    let mut rows = Vec::with_capacity(plan.variants.len());
    let mut machine = None;
    let mut convert_seconds = plan.convert_seconds;
    let mut n_done = 0;
    for (n, v) in plan.variants.iter().enumerate() {
        let job: Option<SweepJob> = read_json(&job_path(dir, n), "sweep job").ok();
        let result: Option<JobResult> = read_json(&result_path(dir, n), "sweep result").ok();
        let current = match (&job, result) {
            (Some(j), Some(r))
                if serde_json::to_value(&r.job).ok() == serde_json::to_value(j).ok() =>
            {
                Some(r)
            }
            _ => None,
        };
        match current {
            Some(r) => {
                n_done += 1;
                convert_seconds += r.convert_seconds;
                machine.get_or_insert(r.machine);
                rows.push(r.row);
            }
            None => {
                let file = if v.ftype.is_some() {
                    dir.join(&v.file).display().to_string()
                } else {
                    v.file.clone()
                };
                rows.push(SweepRow {
                    r#type: v.label.clone(),
                    file,
                    is_reference: v.is_reference,
                    file_size: 0,
                    bits_per_weight: 0.0,
                    n_params: 0,
                    bench: Vec::new(),
                    batched: Vec::new(),
                    eval: None,
                    draft: None,
                    error: Some(format!(
                        "job {n} has no result yet (kiln sweep --job {n} {})",
                        dir.display()
                    )),
                });
            }
        }
    }
    let rep = assemble(
        &plan.input,
        plan.model,
        reference,
        &opts,
        machine.unwrap_or_else(Machine::this),
        convert_seconds,
        rows,
    );
    Ok((rep, n_done))
}
