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
        let mut p = quantize::prepare(input, &o)?;
        // One pass writes every file in one tensor order: llama-quantize's (a checkpoint's
        // own precision alone is written in convert_hf_to_gguf.py's order by `kiln quantize`).
        p.jobs
            .sort_by(|a, b| crate::plan::llama_order(&a.name, &b.name));
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
            shards: None,
        })
        .collect();
    pipeline::run_many(prepared[0].input.as_ref(), &outputs, opts.force, false)?;
    let convert_seconds = t0.elapsed().as_secs_f64();
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
                batched: Vec::new(),
                eval: None,
                draft: None,
                error: None,
            }
        })
        .collect();
    variants.extend(opts.extra.iter().map(|f| extra_row(f)));
    for mut row in variants {
        let label = row.r#type.clone();
        if row.error.is_none() && !(opts.skip_bench && opts.skip_eval) {
            let job = MeasureJob {
                reference: Some(ref_path.clone()),
                bench: (!opts.skip_bench).then(|| opts.bench.clone()),
                batched: (!opts.skip_bench && !opts.bench.parallel.is_empty())
                    .then(|| opts.bench.clone()),
                eval: (!opts.skip_eval).then(|| opts.eval.clone()),
                // the draft's own row has nothing to gain from itself
                draft: draft
                    .clone()
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
