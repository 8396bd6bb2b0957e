//! `kiln sweep`: convert one checkpoint to several types in one pass, bench and evaluate every
//! variant on llama.cpp against the highest-precision one, and write a report folder.

pub use crate::report::model::{Machine, SweepReport, SweepRow};
pub use crate::runner::worker::{measure, measure_isolated, MeasureJob, Measured};

use crate::pipeline::{self, Output};
use crate::plan::FileType;
use crate::quantize::{self, Options, Prepared};
use crate::runner::bench::draft::DraftOptions;
use crate::runner::worker::DraftJob;
use crate::runner::{BenchOptions, EvalOptions};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod jobs;

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
    /// (`kiln measure-worker`, [`crate::runner::worker`]), so that a file which makes llama.cpp abort (a GGML_ASSERT)
    /// becomes that variant's error instead of ending the sweep. None: in this process.
    pub worker: Option<PathBuf>,
    /// `--draft T`: also measure each variant's greedy generation with the type-T variant as
    /// its speculative-decoding draft (T is converted too when not among `types`).
    pub draft: Option<(FileType, DraftOptions)>,
    /// `--target-bpw X,...`: budget-mix variants (`kiln quantize --target-bpw X`), measured
    /// once and solved per budget, beside the fixed mixes.
    pub target_bpw: Vec<f64>,
}

/// The report's type label of a budget-mix variant (the chart draws these as kiln's curve).
pub fn budget_label(bpw: f64) -> String {
    format!("kiln budget {bpw} bpw")
}

/// The budget-mix variants: one measurement of the input, one plan and file per budget.
fn budget_variants(
    input: &Path,
    opts: &SweepOptions,
    model: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SweepRow>> {
    use crate::budget::{self, MeasureOptions, Target};
    let mut rows = Vec::new();
    if opts.target_bpw.is_empty() {
        return Ok(rows);
    }
    let mut o = Options::new(FileType::Q8_0);
    o.allow_requantize = opts.allow_requantize;
    o.imatrix = opts.imatrix.clone();
    o.force = opts.force;
    progress(&format!(
        "measuring every tensor's error at every type for {} budget mixes",
        opts.target_bpw.len()
    ));
    let measured = budget::measure(&budget::start(input, &o)?, &MeasureOptions::default())?;
    for &b in &opts.target_bpw {
        let mut ob = o.clone();
        ob.output = Some(opts.out_dir.join(format!("{model}-budget-{b}bpw.gguf")));
        let p = budget::start(input, &ob)?;
        let (p, plan) = budget::finish(input, p, &ob, measured.clone(), Target::Bpw(b))?;
        crate::gguf::writer::check_target(&p.target, opts.force)?;
        quantize::execute(&p, opts.force, false)?;
        progress(&format!(
            "{}: {:.3} bpw, predicted loss {:.3e}",
            budget_label(b),
            plan.bpw(),
            plan.predicted_loss
        ));
        rows.push(SweepRow {
            r#type: budget_label(b),
            file: p.target.display().to_string(),
            is_reference: false,
            file_size: plan.file_size,
            bits_per_weight: plan.bpw(),
            n_params: plan.n_elements,
            bench: Vec::new(),
            batched: Vec::new(),
            eval: None,
            draft: None,
            error: None,
        });
    }
    Ok(rows)
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
pub fn extra_row(file: &Path) -> SweepRow {
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
        batched: Vec::new(),
        eval: None,
        draft: None,
        error: None,
    };
    match crate::gguf::GgufFile::open(file) {
        Ok(g) => (row.n_params, _, row.bits_per_weight) = crate::inspect::totals(&g),
        Err(e) => row.error = Some(format!("{e:#}")),
    }
    row
}

/// The types a sweep makes (those asked for, the reference and the draft type, highest
/// precision first) and its reference.
pub fn resolve_types(opts: &SweepOptions) -> Result<(Vec<FileType>, FileType)> {
    if opts.types.is_empty() {
        bail!("--types names no type");
    }
    let mut types: Vec<FileType> = Vec::new();
    let draft_type = opts.draft.as_ref().map(|d| d.0);
    for &t in opts
        .types
        .iter()
        .chain(opts.reference.iter())
        .chain(draft_type.iter())
    {
        if !types.contains(&t) {
            types.push(t);
        }
    }
    types.sort_by_key(|&t| precision_rank(t));
    let reference = opts.reference.unwrap_or(types[0]);
    Ok((types, reference))
}

/// The model's name in the report and in its files' names: the input's name without a type
/// suffix ("Llama-3.2-1B").
pub fn model_name(input: &Path) -> String {
    let stem = quantize::default_output(input, FileType::F32);
    let stem = stem
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.trim_end_matches("-F32.gguf").to_string()
}

/// The file name of the type-`t` variant in the report folder.
pub fn variant_file_name(model: &str, t: FileType) -> String {
    format!("{model}-{}.gguf", t.name())
}

/// Plans the conversion of `input` to the type-`t` variant in the report folder (refused when
/// the file exists, without `force`).
pub fn prepare_variant(
    input: &Path,
    opts: &SweepOptions,
    model: &str,
    t: FileType,
) -> Result<Prepared> {
    let mut o = Options::new(t);
    o.output = Some(opts.out_dir.join(variant_file_name(model, t)));
    o.force = opts.force;
    o.allow_requantize = opts.allow_requantize;
    o.imatrix = opts.imatrix.clone();
    let mut p = quantize::prepare(input, &o)?;
    // Every variant in one tensor order: llama-quantize's (a checkpoint's own precision alone is
    // written in convert_hf_to_gguf.py's order by `kiln quantize`), so one pass writes them all.
    p.jobs
        .sort_by(|a, b| crate::plan::llama_order(&a.name, &b.name));
    crate::gguf::writer::check_target(&p.target, opts.force)?;
    Ok(p)
}

/// Writes prepared variants in one pass over the input; the seconds it took.
pub fn convert_all(prepared: &[Prepared], force: bool) -> Result<f64> {
    let Some(first) = prepared.first() else {
        return Ok(0.0);
    };
    let t0 = Instant::now();
    let outputs: Vec<Output> = prepared
        .iter()
        .map(|p| Output {
            jobs: &p.jobs,
            metadata: &p.metadata,
            target: &p.target,
            imatrix: p.imatrix.as_ref(),
            search: p.search,
            shards: None,
        })
        .collect();
    pipeline::run_many(first.input.as_ref(), &outputs, force, false)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// A converted variant's row, not measured yet: sizes from the plan and the written file.
pub fn variant_row(t: FileType, p: &Prepared, is_reference: bool) -> SweepRow {
    let n_params = p.n_elements();
    let data = p.data_bytes().unwrap_or(0);
    SweepRow {
        r#type: t.name().to_string(),
        file: p.target.display().to_string(),
        is_reference,
        file_size: std::fs::metadata(&p.target).map(|m| m.len()).unwrap_or(0),
        bits_per_weight: data as f64 * 8.0 / n_params.max(1) as f64,
        n_params,
        bench: Vec::new(),
        batched: Vec::new(),
        eval: None,
        draft: None,
        error: None,
    }
}

/// Benches and evaluates one row's file against the reference (in a worker process when
/// `opts.worker` is set) and fills in its figures or its error.
pub fn measure_row(
    mut row: SweepRow,
    opts: &SweepOptions,
    ref_path: &Path,
    draft: Option<&DraftJob>,
    progress: &mut dyn FnMut(&str),
) -> SweepRow {
    let label = row.r#type.clone();
    if row.error.is_none() && !(opts.skip_bench && opts.skip_eval) {
        let job = MeasureJob {
            reference: Some(ref_path.to_path_buf()),
            bench: (!opts.skip_bench).then(|| opts.bench.clone()),
            batched: (!opts.skip_bench && !opts.bench.parallel.is_empty())
                .then(|| opts.bench.clone()),
            eval: (!opts.skip_eval).then(|| opts.eval.clone()),
            // the draft's own row has nothing to gain from itself
            draft: draft
                .cloned()
                .filter(|d| d.draft != Path::new(&row.file) && !opts.skip_bench),
            ..MeasureJob::new(Path::new(&row.file))
        };
        let m = match &opts.worker {
            Some(exe) => measure_isolated(exe, &job, progress),
            None => measure(&job, progress),
        };
        row.bench = m.bench;
        row.batched = m.batched;
        row.eval = m.eval;
        row.draft = m.draft;
        row.error = m.error;
    }
    if let Some(e) = &row.error {
        progress(&format!("{label}: not measured: {e}"));
    }
    row
}

/// The report of a sweep's rows.
pub fn assemble(
    input: &Path,
    model: String,
    reference: FileType,
    opts: &SweepOptions,
    machine: Machine,
    convert_seconds: f64,
    rows: Vec<SweepRow>,
) -> SweepReport {
    SweepReport {
        input: input.display().to_string(),
        model,
        reference: reference.name().to_string(),
        machine,
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
    }
}

/// Runs the sweep. `progress` gets one line per step.
pub fn run(
    input: &Path,
    opts: &SweepOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<SweepReport> {
    let (types, reference) = resolve_types(opts)?;
    std::fs::create_dir_all(&opts.out_dir)?;

    // Convert every type in one pass.
    let model = model_name(input);
    let prepared: Vec<Prepared> = types
        .iter()
        .map(|&t| prepare_variant(input, opts, &model, t))
        .collect::<Result<_>>()?;
    progress(&format!(
        "converting {} to {} types in one pass",
        input.display(),
        types.len()
    ));
    let convert_seconds = convert_all(&prepared, opts.force)?;
    let budget_rows = budget_variants(input, opts, &model, progress)?;
    progress(&format!("converted in {convert_seconds:.1} s"));

    let ref_path = prepared[types.iter().position(|&t| t == reference).unwrap_or(0)]
        .target
        .clone();
    let draft = opts.draft.as_ref().map(|(t, o)| DraftJob {
        draft: prepared[types.iter().position(|x| x == t).unwrap_or(0)]
            .target
            .clone(),
        options: o.clone(),
    });
    let mut variants: Vec<SweepRow> = types
        .iter()
        .zip(&prepared)
        .map(|(&t, p)| variant_row(t, p, t == reference))
        .collect();
    variants.extend(budget_rows);
    variants.extend(opts.extra.iter().map(|f| extra_row(f)));
    let rows = variants
        .into_iter()
        .map(|row| measure_row(row, opts, &ref_path, draft.as_ref(), progress))
        .collect();
    Ok(assemble(
        input,
        model,
        reference,
        opts,
        Machine::this(),
        convert_seconds,
        rows,
    ))
}
