//! The runner's commands (llama.cpp, the default `llama` feature): `kiln bench`, `eval`,
//! `sweep`, `report`, `llama-quantize`, and the hidden `measure-worker` that bench, eval and
//! sweep run each file in.

use std::path::{Path, PathBuf};

/// Progress: one line per step on stderr (stdout stays for the results).
fn progress_line() -> impl FnMut(&str) {
    |l: &str| eprintln!("kiln: {l}")
}

#[derive(clap::Args)]
pub struct BenchFlags {
    /// Threads, comma-separated for several (default: all cores).
    #[arg(short = 't', long, value_delimiter = ',')]
    pub threads: Vec<u32>,
    /// Prompt lengths for pp tests (0 disables).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<u32>,
    /// Generation lengths for tg tests (0 disables).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<u32>,
    /// Repetitions per test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: u32,
    /// Logical batch sizes.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_delimiter = ',',
        default_value = "2048"
    )]
    pub batch: Vec<u32>,
    /// Physical batch sizes.
    #[arg(
        long = "ubatch-size",
        visible_alias = "ub",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub ubatch: Vec<u32>,
    /// KV cache types (f16, q8_0, q4_0, f32).
    #[arg(
        long = "cache-type",
        visible_alias = "ctk",
        value_delimiter = ',',
        default_value = "f16"
    )]
    pub cache_type: Vec<String>,
    /// Flash attention, 0 or 1 (comma-separated for both).
    #[arg(
        long = "flash-attn",
        visible_alias = "fa",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub flash_attn: Vec<u8>,
    /// Layers offloaded to a GPU (with the `cuda` feature).
    #[arg(
        long = "n-gpu-layers",
        visible_alias = "ngl",
        value_delimiter = ',',
        default_value = "99"
    )]
    pub n_gpu_layers: Vec<u32>,
    /// Sequences decoding at once, comma-separated (llama-batched-bench's -npl): measure as
    /// llama-batched-bench does, with -p prompt tokens and -n generated tokens per sequence.
    /// `kiln sweep` adds these rows to the report.
    #[arg(long, value_delimiter = ',')]
    pub parallel: Vec<u32>,
    /// With --parallel: one prompt shared by all sequences (llama-batched-bench's -pps).
    #[arg(long, requires = "parallel")]
    pub pps: bool,
    /// With --parallel: the context, all sequences together (llama-batched-bench's -c); 0: the
    /// smallest that holds every setting.
    #[arg(long, default_value_t = 0, requires = "parallel")]
    pub parallel_ctx: u32,
}

impl BenchFlags {
    fn options(&self) -> kiln::runner::BenchOptions {
        let mut o = kiln::runner::BenchOptions::default();
        if !self.threads.is_empty() {
            o.threads = self.threads.clone();
        }
        o.n_prompt = self.n_prompt.clone();
        o.n_gen = self.n_gen.clone();
        o.repetitions = self.repetitions;
        o.batch = self.batch.clone();
        o.ubatch = self.ubatch.clone();
        o.cache_type = self.cache_type.clone();
        o.flash_attn = self.flash_attn.iter().map(|&f| f != 0).collect();
        o.n_gpu_layers = self.n_gpu_layers.clone();
        o.parallel = self.parallel.clone();
        o.pp_shared = self.pps;
        o.parallel_ctx = self.parallel_ctx;
        o
    }
}

impl BenchFlags {
    /// Speculative decoding's options (`--draft`): the first -n and -t, and the first -ngl.
    fn draft_options(
        &self,
        draft_max: u32,
    ) -> anyhow::Result<kiln::runner::bench::draft::DraftOptions> {
        let d = kiln::runner::bench::draft::DraftOptions::default();
        let o = kiln::runner::bench::draft::DraftOptions {
            draft_max,
            n_gen: self.n_gen.first().copied().unwrap_or(d.n_gen),
            threads: self.threads.first().copied().unwrap_or(d.threads),
            n_gpu_layers: self.n_gpu_layers.first().copied().unwrap_or(d.n_gpu_layers),
            ..d
        };
        if o.n_gen == 0 {
            anyhow::bail!("--draft: -n must be at least 1");
        }
        Ok(o)
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub flags: BenchFlags,
    /// One JSON document (a list of results, llama-bench's field names) on stdout; with
    /// --parallel, one JSON object per line (llama-batched-bench's JSONL field names, then kiln's).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV on stdout.
    #[arg(long)]
    pub csv: bool,
    /// Speculative decoding instead of the pp/tg matrix: greedy generation by each file with
    /// this GGUF (a smaller quantization of the same model) as its draft, against the file's
    /// own greedy generation, on prompts from the bundled text (uses the first -n and -t).
    #[arg(long, value_name = "GGUF", conflicts_with = "csv")]
    pub draft: Option<PathBuf>,
    /// Tokens drafted per step at most (with --draft).
    #[arg(long, default_value_t = 8, requires = "draft")]
    pub draft_max: u32,
    /// Budget mixes to add, in bits per weight (`kiln quantize --target-bpw X` for each,
    /// comma-separated); the chart draws them as kiln's curve beside the fixed mixes.
    #[arg(long, value_delimiter = ',', value_name = "X,...")]
    pub target_bpw: Vec<f64>,
}

#[derive(clap::Args)]
pub struct EvalFlags {
    /// Text for perplexity and KLD (default: the bundled text).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Questions, JSONL of {"question", "answer"} (default: the bundled set).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// Context size of each perplexity chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub n_ctx: u32,
    /// At most this many chunks (0: all).
    #[arg(long, default_value_t = 0)]
    pub chunks: u32,
    /// Where the reference's logits are cached (default: beside the reference).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Perplexity and KL divergence only, as llama-perplexity measures them: no questions
    /// (the task columns stay empty).
    #[arg(long, conflicts_with = "questions")]
    pub no_questions: bool,
}

impl EvalFlags {
    fn options(&self, threads: Option<u32>) -> kiln::runner::EvalOptions {
        let d = kiln::runner::EvalOptions::default();
        kiln::runner::EvalOptions {
            text: self.text.clone(),
            questions: self.questions.clone(),
            n_ctx: self.n_ctx,
            max_chunks: self.chunks,
            threads: threads.unwrap_or(d.threads),
            cache_dir: self.cache_dir.clone(),
            max_answer_tokens: if self.no_questions {
                0
            } else {
                d.max_answer_tokens
            },
            ..d
        }
    }
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The reference GGUF (usually the f32 or f16 variant).
    #[arg(long)]
    pub reference: PathBuf,
    #[command(flatten)]
    pub flags: EvalFlags,
    #[arg(long)]
    pub threads: Option<u32>,
    /// One JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ImatrixArgs {
    /// The model: a GGUF, usually at the highest precision available, or a checkpoint folder
    /// (or .safetensors file), converted to a temporary GGUF at the precision of its weights
    /// (f32, bf16 or f16) beside the output and removed afterwards.
    pub model: PathBuf,
    /// The calibration text (UTF-8), as llama-imatrix -f.
    #[arg(long = "text", short = 'f')]
    pub text: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    pub n_ctx: u32,
    /// At most this many chunks (default: all).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<u32>,
    /// Also collect output.weight (llama-imatrix --process-output).
    #[arg(long)]
    pub process_output: bool,
    /// The importance matrix to write (llama-imatrix's GGUF format; replaced if it exists).
    #[arg(short = 'o', long = "output", default_value = "imatrix.gguf")]
    pub output: PathBuf,
}

/// `kiln imatrix`: llama-imatrix's importance matrix, computed on llama.cpp.
pub fn imatrix(a: ImatrixArgs) -> anyhow::Result<()> {
    let mut p = progress_line();
    let d = kiln::runner::imatrix::ImatrixOptions::default();
    let o = kiln::runner::imatrix::ImatrixOptions {
        n_ctx: a.n_ctx,
        max_chunks: a.chunks,
        threads: a.threads.unwrap_or(d.threads),
        process_output: a.process_output,
    };
    kiln::pipeline::stop_on_signals();
    let (s, _) = kiln::runner::calibrate::imatrix_of(&a.model, &a.text, &a.output, &o, &mut p)?;
    eprintln!(
        "kiln: {}: {} weights, {} chunks of {} tokens ({} tokens), final PPL {:.4}, {:.1}s",
        a.output.display(),
        s.n_entries,
        s.n_chunks,
        a.n_ctx,
        s.n_tokens,
        s.ppl,
        s.seconds
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct SweepArgs {
    /// Checkpoint folder, .safetensors file, or .gguf file (with --job: the planned sweep's
    /// folder).
    pub input: PathBuf,
    /// Do not measure: write the sweep into the -o folder as independent jobs (plan.json,
    /// jobs/N.json, one per variant) after converting the variants every job needs (the
    /// reference, the draft), for `kiln sweep --job N DIR` on any machine and then `kiln report
    /// DIR`.
    #[arg(long, requires = "out", conflicts_with = "job")]
    pub plan: bool,
    /// Run job N of the sweep planned in the folder INPUT: convert its variant, measure it and
    /// write results/N.json (skipped when there already; --force runs it again). The settings
    /// are the plan's.
    #[arg(long, value_name = "N", conflicts_with_all = ["types", "out", "reference", "imatrix", "extra", "draft"])]
    pub job: Option<usize>,
    /// Types to produce and measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f16,q8_0,q6_K,q5_K_M,q4_K_M,q3_K_M,q2_K"
    )]
    pub types: Vec<String>,
    /// Report folder (default: <name>-sweep beside the input).
    #[arg(short = 'o', long)]
    pub out: Option<PathBuf>,
    /// Reference type (default: the highest-precision of --types).
    #[arg(long)]
    pub reference: Option<String>,
    #[arg(long)]
    pub allow_requantize: bool,
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Overwrite GGUF files already in the report folder.
    #[arg(long)]
    pub force: bool,
    /// A GGUF made elsewhere (llama-quantize, a download) to measure beside kiln's variants,
    /// against the same reference; repeatable. A file llama.cpp refuses is reported, not fatal.
    #[arg(long = "add", value_name = "GGUF")]
    pub extra: Vec<PathBuf>,
    /// Also measure each variant's greedy generation with the variant of this type (say the
    /// smallest, q2_K) as its speculative-decoding draft, as `kiln bench --draft` does (uses the
    /// first -n and -t); the type is converted too when not in --types.
    #[arg(long, value_name = "TYPE")]
    pub draft: Option<String>,
    /// Tokens drafted per step at most (with --draft).
    #[arg(long, default_value_t = 8, requires = "draft")]
    pub draft_max: u32,
    /// Budget mixes to add, in bits per weight (`kiln quantize --target-bpw X` for each,
    /// comma-separated); the chart draws them as kiln's curve beside the fixed mixes.
    #[arg(long, value_delimiter = ',', value_name = "X,...")]
    pub target_bpw: Vec<f64>,
    #[command(flatten)]
    pub bench: BenchFlags,
    #[command(flatten)]
    pub eval: EvalFlags,
}

/// `kiln bench`: each file in its own worker process (`kiln measure-worker`), so that a file
/// llama.cpp refuses or aborts on is a failed row rather than the end of the run. The table
/// (or JSON, CSV) holds every file; the exit status is 1 when any file failed, as llama-bench's
/// is when it cannot measure a file.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let mut p = progress_line();
    if let Some(draft) = &a.draft {
        return bench_draft(&a, draft, &mut p);
    }
    let mut o = a.flags.options();
    o.worker = Some(worker_exe()?);
    if !o.parallel.is_empty() {
        return bench_batched(&a, &o);
    }
    let r = kiln::runner::bench::run(&a.files, &o, &mut p)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if a.csv {
        print!("{}", kiln::report::bench_table::to_csv(&r));
    } else {
        print!("{}", kiln::report::bench_table::to_markdown(&r));
    }
    let failed: Vec<&str> = r
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.model_filename.as_str())
        .collect();
    any_failed(&failed, a.files.len())
}

/// `kiln bench --parallel`: llama-batched-bench's measurement, each file in its own worker.
fn bench_batched(a: &BenchArgs, o: &kiln::runner::BenchOptions) -> anyhow::Result<()> {
    use kiln::report::batched_table;
    if a.csv {
        anyhow::bail!("bench: --csv is not available with --parallel (use --json for JSONL)");
    }
    let mut p = progress_line();
    let r = kiln::runner::bench::run_batched(&a.files, o, &mut p)?;
    if a.json {
        print!("{}", batched_table::to_jsonl(&r));
    } else {
        print!("{}", batched_table::to_markdown(&r));
    }
    let failed: Vec<&str> = r
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.model_filename.as_str())
        .collect();
    any_failed(&failed, a.files.len())
}

/// `kiln bench TARGET... --draft DRAFT`: each target with the draft, in its own worker process.
fn bench_draft(a: &BenchArgs, draft: &Path, p: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    use kiln::runner::bench::draft;
    let o = a.flags.draft_options(a.draft_max)?;
    let r = draft::run_all(&a.files, draft, &o, Some(&worker_exe()?), p)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", kiln::report::bench_table::draft_to_markdown(&r));
    }
    let failed: Vec<&str> = r
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.target_filename.as_str())
        .collect();
    any_failed(&failed, a.files.len())
}

/// `kiln eval`: as `kiln bench`, each file in its own worker process; exit status 1 when any
/// file failed.
pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let mut p = progress_line();
    let mut o = a.flags.options(a.threads);
    o.worker = Some(worker_exe()?);
    let r = kiln::runner::eval::run(&a.files, &a.reference, &o, &mut p)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", kiln::report::eval_table::to_markdown(&r));
    }
    let failed: Vec<&str> = r
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.model_filename.as_str())
        .collect();
    any_failed(&failed, a.files.len())
}

/// This executable, which the runner starts again as `kiln measure-worker`.
fn worker_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find kiln's own executable for its workers: {e}"))
}

/// The run's error when some files failed (their rows say why).
fn any_failed(failed: &[&str], n_files: usize) -> anyhow::Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} of {n_files} files failed (their rows and reasons are above): {}",
        failed.len(),
        failed.join(", ")
    )
}

pub fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    use kiln::plan::FileType;
    kiln::pipeline::stop_on_signals();
    if let Some(n) = a.job {
        return sweep_job(&a.input, n, a.force);
    }
    let types: Vec<FileType> = a
        .types
        .iter()
        .map(|t| FileType::parse(t))
        .collect::<anyhow::Result<_>>()?;
    let out = match a.out {
        Some(o) => o,
        None => {
            let d = kiln::quantize::default_output(&a.input, FileType::F32);
            let name = d
                .file_name()
                .map(|n| n.to_string_lossy().replace("-F32.gguf", "-sweep"))
                .unwrap_or_else(|| "sweep".into());
            d.with_file_name(name)
        }
    };
    let threads = a.bench.threads.first().copied();
    let opts = kiln::sweep::SweepOptions {
        types,
        out_dir: out.clone(),
        reference: a.reference.as_deref().map(FileType::parse).transpose()?,
        allow_requantize: a.allow_requantize,
        imatrix: a.imatrix,
        force: a.force,
        bench: a.bench.options(),
        eval: a.eval.options(threads),
        skip_bench: false,
        skip_eval: false,
        extra: a.extra,
        worker: std::env::current_exe().ok(),
        draft: match &a.draft {
            Some(t) => Some((FileType::parse(t)?, a.bench.draft_options(a.draft_max)?)),
            None => None,
        },
        target_bpw: a.target_bpw,
    };
    let mut p = progress_line();
    if a.plan {
        return sweep_plan(&a.input, &opts);
    }
    let rep = kiln::sweep::run(&a.input, &opts, &mut p)?;
    kiln::report::write(&rep, &out)?;
    print!("{}", kiln::report::markdown(&rep));
    println!("\nreport: {}", out.join("report.md").display());
    Ok(())
}

/// `kiln sweep --plan -o DIR INPUT ...`: the jobs, and how to run them.
fn sweep_plan(input: &Path, opts: &kiln::sweep::SweepOptions) -> anyhow::Result<()> {
    let mut p = progress_line();
    let planned = kiln::sweep::jobs::plan(input, opts, &mut p)?;
    let dir = opts.out_dir.display();
    println!(
        "{dir}: {} jobs planned (reference {}):",
        planned.n_jobs, planned.plan.reference
    );
    for (n, v) in planned.plan.variants.iter().enumerate() {
        println!("  job {n}: {}", v.label);
    }
    println!(
        "run each with `kiln sweep --job N {dir}` (N = 0 to {}), then `kiln report {dir}`",
        planned.n_jobs - 1
    );
    Ok(())
}

/// `kiln sweep --job N DIR`.
fn sweep_job(dir: &Path, n: usize, force: bool) -> anyhow::Result<()> {
    use kiln::sweep::jobs::{self, JobOutcome};
    let mut p = progress_line();
    let (r, ran) = match jobs::run_job(dir, n, force, &mut p)? {
        JobOutcome::Skipped(r) => (r, false),
        JobOutcome::Ran(r) => (r, true),
    };
    let path = jobs::result_path(dir, n);
    match (&r.row.error, ran) {
        (_, false) => println!(
            "job {n} ({}): already done, {} (--force runs it again)",
            r.row.r#type,
            path.display()
        ),
        (None, true) => println!("job {n} ({}): done, {}", r.row.r#type, path.display()),
        (Some(e), true) => {
            anyhow::bail!(
                "job {n} ({}): not measured ({}): {e}",
                r.row.r#type,
                path.display()
            )
        }
    }
    Ok(())
}

pub fn measure_worker() -> anyhow::Result<()> {
    kiln::runner::worker::serve(&mut progress_line())
}

pub fn report(dir: &Path) -> anyhow::Result<()> {
    if kiln::sweep::jobs::is_planned(dir) {
        let (rep, done) = kiln::sweep::jobs::merge(dir)?;
        kiln::report::write(&rep, dir)?;
        print!("{}", kiln::report::markdown(&rep));
        println!(
            "\nreport: {} ({done} of {} jobs have results)",
            dir.join("report.md").display(),
            rep.rows.len()
        );
        return Ok(());
    }
    let p = dir.join("report.json");
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let rep: kiln::sweep::SweepReport = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a kiln report: {e}", p.display()))?;
    kiln::report::write(&rep, dir)
}

pub fn llama_quantize(
    input: &Path,
    output: &Path,
    ty: &str,
    threads: i32,
    allow_requantize: bool,
    imatrix: Option<&Path>,
) -> anyhow::Result<()> {
    let f = kiln::plan::FileType::parse(ty)?;
    let mut o = kiln::llama::ReferenceOptions {
        threads,
        allow_requantize,
        ..Default::default()
    };
    if let Some(path) = imatrix {
        // Read as `kiln quantize --imatrix` reads it (sums divided by counts, as
        // llama-quantize's load_imatrix does), and recorded as llama-quantize records it.
        let mut entries: Vec<(String, Vec<f32>)> = kiln::imatrix::load(path)?.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut file = kiln::llama::ImatrixFile::default();
        for kv in kiln::imatrix::quantize_keys(path, entries.len())? {
            match (kv.key.as_str(), kv.value) {
                ("quantize.imatrix.file", kiln::overrides::KvValue::Str(s)) => file.name = s,
                ("quantize.imatrix.dataset", kiln::overrides::KvValue::Str(s)) => {
                    file.datasets.push(s)
                }
                ("quantize.imatrix.chunks_count", kiln::overrides::KvValue::Int(n)) => {
                    file.chunk_count = n as i32
                }
                _ => {}
            }
        }
        o.imatrix = Some(entries);
        o.imatrix_file = Some(file);
    }
    kiln::llama::reference_quantize(input, output, f.id(), &o)
}
