use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// kiln: Hugging Face checkpoints to GGUF at every precision, measured on llama.cpp.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a Hugging Face checkpoint (folder or .safetensors file) or a GGUF file to GGUF
    /// at TYPE, choosing each tensor's type as llama-quantize does.
    Quantize(QuantizeArgs),
    /// Measure speed and memory of GGUF files on llama.cpp, as llama-bench does.
    Bench(BenchArgs),
    /// Measure quality against a reference GGUF: perplexity, KL divergence, same top token
    /// (as llama-perplexity --kl-divergence does) and a question-answering check.
    Eval(EvalArgs),
    /// Convert a checkpoint to several types in one pass, bench and evaluate every variant
    /// against the highest-precision one, and write a report folder (markdown, JSON, CSV, chart).
    Sweep(SweepArgs),
    /// Write a sweep's report files (report.md, report.csv, chart.svg, chart.png) again from
    /// its report.json.
    Report { dir: PathBuf },
    /// Internal: measure one sweep variant (a JSON job on stdin, the result as JSON on stdout),
    /// so that a llama.cpp abort ends only this process.
    #[command(hide = true)]
    MeasureWorker,
    /// Print a GGUF file's metadata and tensors.
    Inspect {
        file: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Also read every tensor and check it against the checksum kiln wrote into the file
        /// (exit 1 naming the damaged tensor).
        #[arg(long)]
        verify: bool,
    },
    /// Quantize a deterministic weight matrix to every format with kiln and with ggml, and
    /// compare bytes, error and time.
    /// The bundled default: write the fixture checkpoint (Llama, SentencePiece tokenizer),
    /// convert it to several types, check every tensor against llama.cpp's own quantizer, have
    /// llama.cpp load and run each file, and print sizes.
    Demo {
        /// Folder for the fixture and the GGUF files.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Types to convert to.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "f16,q8_0,q6_K,q5_K_M,q4_K_M,q4_0,q3_K_M,q2_K"
        )]
        types: Vec<String>,
    },
    /// Run llama.cpp's own quantizer (llama_model_quantize, what llama-quantize calls) on a
    /// GGUF file, for side-by-side comparisons.
    LlamaQuantize {
        input: PathBuf,
        output: PathBuf,
        /// llama.cpp's type name (q4_K_M, ...).
        #[arg(long = "type", short = 't')]
        ty: String,
        /// Threads (default: all cores).
        #[arg(long, default_value_t = 0)]
        threads: i32,
        #[arg(long)]
        allow_requantize: bool,
    },
    /// Write a deterministic Llama checkpoint (Llama 2 SentencePiece vocabulary, random
    /// weights) of a chosen size, for tests and benchmarks.
    MakeFixture {
        dir: PathBuf,
        #[arg(long, default_value_t = 256)]
        hidden: usize,
        #[arg(long, default_value_t = 640)]
        intermediate: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 8)]
        heads: usize,
        #[arg(long, default_value_t = 4)]
        kv_heads: usize,
    },
    /// Quantize a deterministic weight matrix to every format with kiln and with ggml, and
    /// compare bytes, error and time.
    KernelsDemo {
        /// Rows of the matrix.
        #[arg(long, default_value_t = 1024)]
        rows: usize,
        /// Columns of the matrix (a multiple of 256 so every format applies).
        #[arg(long, default_value_t = 4096)]
        cols: usize,
    },
}

#[derive(clap::Args)]
struct QuantizeArgs {
    /// llama.cpp's type name, case-insensitive: f32, f16, bf16, q8_0, q6_K, q5_K_M, q5_K_S,
    /// q5_1, q5_0, q4_K_M, q4_K_S, q4_1, q4_0, q3_K_L, q3_K_M, q3_K_S, q2_K (q4_K, q5_K, q3_K
    /// mean their _M mix).
    #[arg(long = "type", short = 't')]
    ty: String,
    /// Checkpoint folder, .safetensors file, or .gguf file.
    input: PathBuf,
    /// Output file (default: <name>-<TYPE>.gguf beside the input).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Allow requantizing tensors that are already quantized.
    #[arg(long)]
    allow_requantize: bool,
    /// No mixture: every quantizable tensor gets TYPE's base type.
    #[arg(long)]
    pure: bool,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat).
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Type for output.weight.
    #[arg(long)]
    output_tensor_type: Option<String>,
    /// Type for token_embd.weight.
    #[arg(long)]
    token_embedding_type: Option<String>,
    /// Leave output.weight in its input type.
    #[arg(long)]
    leave_output_tensor: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Leave out kiln's integrity check (two metadata keys that `kiln inspect --verify`
    /// checks), for a file byte-identical to llama-quantize's.
    #[arg(long)]
    no_checksum: bool,
    /// Print the plan (tensors, types, sizes) without writing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct BenchFlags {
    /// Threads, comma-separated for several (default: all cores).
    #[arg(short = 't', long, value_delimiter = ',')]
    threads: Vec<u32>,
    /// Prompt lengths for pp tests (0 disables).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<u32>,
    /// Generation lengths for tg tests (0 disables).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<u32>,
    /// Repetitions per test.
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: u32,
    /// Logical batch sizes.
    #[arg(
        short = 'b',
        long = "batch-size",
        value_delimiter = ',',
        default_value = "2048"
    )]
    batch: Vec<u32>,
    /// Physical batch sizes.
    #[arg(
        long = "ubatch-size",
        visible_alias = "ub",
        value_delimiter = ',',
        default_value = "512"
    )]
    ubatch: Vec<u32>,
    /// KV cache types (f16, q8_0, q4_0, f32).
    #[arg(
        long = "cache-type",
        visible_alias = "ctk",
        value_delimiter = ',',
        default_value = "f16"
    )]
    cache_type: Vec<String>,
    /// Flash attention, 0 or 1 (comma-separated for both).
    #[arg(
        long = "flash-attn",
        visible_alias = "fa",
        value_delimiter = ',',
        default_value = "0"
    )]
    flash_attn: Vec<u8>,
    /// Layers offloaded to a GPU (with the `cuda` feature).
    #[arg(
        long = "n-gpu-layers",
        visible_alias = "ngl",
        value_delimiter = ',',
        default_value = "99"
    )]
    n_gpu_layers: Vec<u32>,
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
        o
    }
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    flags: BenchFlags,
    /// One JSON document (a list of results, llama-bench's field names) on stdout.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV on stdout.
    #[arg(long)]
    csv: bool,
}

#[derive(clap::Args)]
struct EvalFlags {
    /// Text for perplexity and KLD (default: the bundled text).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Questions, JSONL of {"question", "answer"} (default: the bundled set).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// Context size of each perplexity chunk.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    n_ctx: u32,
    /// At most this many chunks (0: all).
    #[arg(long, default_value_t = 0)]
    chunks: u32,
    /// Where the reference's logits are cached (default: beside the reference).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
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
            ..d
        }
    }
}

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The reference GGUF (usually the f32 or f16 variant).
    #[arg(long)]
    reference: PathBuf,
    #[command(flatten)]
    flags: EvalFlags,
    #[arg(long)]
    threads: Option<u32>,
    /// One JSON document on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SweepArgs {
    /// Checkpoint folder, .safetensors file, or .gguf file.
    input: PathBuf,
    /// Types to produce and measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f16,q8_0,q6_K,q5_K_M,q4_K_M,q3_K_M,q2_K"
    )]
    types: Vec<String>,
    /// Report folder (default: <name>-sweep beside the input).
    #[arg(short = 'o', long)]
    out: Option<PathBuf>,
    /// Reference type (default: the highest-precision of --types).
    #[arg(long)]
    reference: Option<String>,
    #[arg(long)]
    allow_requantize: bool,
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Overwrite GGUF files already in the report folder.
    #[arg(long)]
    force: bool,
    /// A GGUF made elsewhere (llama-quantize, a download) to measure beside kiln's variants,
    /// against the same reference; repeatable. A file llama.cpp refuses is reported, not fatal.
    #[arg(long = "add", value_name = "GGUF")]
    extra: Vec<PathBuf>,
    #[command(flatten)]
    bench: BenchFlags,
    #[command(flatten)]
    eval: EvalFlags,
}

/// Progress: one line per step on stderr (stdout stays for the results).
fn progress_line() -> impl FnMut(&str) {
    |l: &str| eprintln!("kiln: {l}")
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let mut p = progress_line();
    let r = kiln::runner::bench::run(&a.files, &a.flags.options(), &mut p)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if a.csv {
        print!("{}", kiln::runner::bench::to_csv(&r));
    } else {
        print!("{}", kiln::runner::bench::to_markdown(&r));
    }
    Ok(())
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let mut p = progress_line();
    let r = kiln::runner::eval::run(&a.files, &a.reference, &a.flags.options(a.threads), &mut p)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", kiln::runner::eval::to_markdown(&r));
    }
    Ok(())
}

fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    use kiln::plan::FileType;
    kiln::convert::stop_on_signals();
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
    };
    let mut p = progress_line();
    let rep = kiln::sweep::run(&a.input, &opts, &mut p)?;
    kiln::report::write(&rep, &out)?;
    print!("{}", kiln::report::markdown(&rep));
    println!("\nreport: {}", out.join("report.md").display());
    Ok(())
}

fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    use kiln::quantize as q;
    if let Some(n) = a.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let mut opts = q::Options::new(kiln::plan::FileType::parse(&a.ty)?);
    opts.output = a.output;
    opts.force = a.force;
    opts.allow_requantize = a.allow_requantize;
    opts.pure = a.pure;
    opts.imatrix = a.imatrix;
    opts.output_tensor_type = a
        .output_tensor_type
        .as_deref()
        .map(q::parse_ggml_type)
        .transpose()?;
    opts.token_embedding_type = a
        .token_embedding_type
        .as_deref()
        .map(q::parse_ggml_type)
        .transpose()?;
    opts.leave_output_tensor = a.leave_output_tensor;
    opts.checksum = !a.no_checksum;
    let start = std::time::Instant::now();
    kiln::convert::stop_on_signals();
    let p = q::prepare(&a.input, &opts)?;
    for n in &p.notes {
        eprintln!("kiln: {n}");
    }
    if a.dry_run {
        print!("{}", q::describe(&p)?);
        return Ok(());
    }
    let s = q::execute(
        &p,
        opts.force,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    println!(
        "{}: {} tensors, {} bytes ({:.2} MiB), {:.3} bits per weight, {:.1} s",
        p.target.display(),
        s.tensors,
        s.file_size,
        s.file_size as f64 / 1048576.0,
        s.bytes_written as f64 * 8.0 / s.n_elements.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn measure_worker() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
    let job: kiln::sweep::MeasureJob = serde_json::from_str(&input)?;
    let mut p = progress_line();
    let m = kiln::sweep::measure(&job, &mut p);
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn inspect(file: &std::path::Path, json: bool, verify: bool) -> anyhow::Result<()> {
    let g = kiln::gguf::GgufFile::open(file)?;
    let verdict = if verify {
        Some(kiln::gguf::checksum::verify(&g)?)
    } else {
        None
    };
    if json {
        let mut j = kiln::inspect::to_json(&g);
        if let Some(v) = &verdict {
            j["checksum"] = kiln::inspect::verdict_json(v);
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print!("{}", kiln::inspect::to_text(&g)?);
        if let Some(v) = &verdict {
            println!("{}", kiln::inspect::verdict_text(v));
        }
    }
    Ok(())
}

/// Ignores SIGXFSZ, so a write past the file-size limit (`ulimit -f`) fails with EFBIG and
/// the normal error path removes the temporary file, instead of the signal killing the
/// process and leaving a `*.partial` file behind.
fn ignore_sigxfsz() {
    #[cfg(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64"
        )
    ))]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGXFSZ: i32 = 25;
        const SIG_IGN: usize = 1;
        // Safety: installs the ignore disposition for one signal; no handler code runs.
        unsafe {
            signal(SIGXFSZ, SIG_IGN);
        }
    }
}

fn main() -> ExitCode {
    ignore_sigxfsz();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quantize(a) => quantize(a),
        Command::Bench(a) => bench(a),
        Command::Eval(a) => eval(a),
        Command::Sweep(a) => sweep(a),
        Command::Report { dir } => (|| {
            let p = dir.join("report.json");
            let text =
                std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let rep: kiln::sweep::SweepReport = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a kiln report: {e}", p.display()))?;
            kiln::report::write(&rep, &dir)
        })(),
        Command::Inspect { file, json, verify } => inspect(&file, json, verify),
        Command::MeasureWorker => measure_worker(),
        Command::Demo { out, types } => convert_demo(&out, &types),
        Command::KernelsDemo { rows, cols } => demo(rows, cols),
        Command::LlamaQuantize {
            input,
            output,
            ty,
            threads,
            allow_requantize,
        } => kiln::plan::FileType::parse(&ty).and_then(|f| {
            let o = kiln::llama::ReferenceOptions {
                threads,
                allow_requantize,
                ..Default::default()
            };
            kiln::llama::reference_quantize(&input, &output, f.id(), &o)
        }),
        Command::MakeFixture {
            dir,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
        } => {
            let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/llama2-tokenizer.model");
            let mut spec = kiln::fixture::llama_spm_default(tok);
            spec.hidden = hidden;
            spec.intermediate = intermediate;
            spec.layers = layers;
            spec.heads = heads;
            spec.kv_heads = kv_heads;
            spec.head_dim = hidden / heads.max(1);
            kiln::fixture::write_checkpoint(&spec, &dir)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn convert_demo(out: &std::path::Path, types: &[String]) -> anyhow::Result<()> {
    let types: Vec<kiln::plan::FileType> = types
        .iter()
        .map(|t| kiln::plan::FileType::parse(t))
        .collect::<anyhow::Result<_>>()?;
    let tok =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama2-tokenizer.model");
    std::fs::create_dir_all(out)?;
    println!(
        "kiln demo: the fixture checkpoint (Llama, 4 layers, hidden 256, FFN 640, Llama 2 SentencePiece vocab, BF16, 2 shards) -> {}\n",
        out.display()
    );
    println!("| type | file | bytes | bits/weight | kiln s | llama.cpp s | tensors identical to llama.cpp | llama.cpp generates |");
    println!("|---|---|---:|---:|---:|---:|---|---|");
    let rows = kiln::demo::run_conversion(out, &tok, &types)?;
    let mut ok = true;
    for r in &rows {
        ok &= r.identical;
        println!(
            "| {} | {} | {} | {:.3} | {:.2} | {:.2} | {} | {} tokens |",
            r.ftype,
            r.path.display(),
            r.bytes,
            r.bits_per_weight,
            r.kiln_s,
            r.llama_s,
            if r.identical { "yes" } else { "NO" },
            r.generated
        );
    }
    println!("\nkiln s: checkpoint -> GGUF in one pass; llama.cpp s: llama_model_quantize from the F32 GGUF (the second half of llama.cpp's two-step path).");
    anyhow::ensure!(ok, "some files differ from llama.cpp's");

    // Then the sweep: bench and evaluate every type against the highest-precision one.
    let report_dir = out.join("fixture-llama-sweep");
    println!("\nkiln sweep of the fixture -> {}\n", report_dir.display());
    let opts = kiln::sweep::SweepOptions {
        types,
        out_dir: report_dir.clone(),
        reference: None,
        allow_requantize: false,
        imatrix: None,
        force: true,
        bench: kiln::runner::BenchOptions {
            n_prompt: vec![128],
            n_gen: vec![32],
            repetitions: 3,
            ..Default::default()
        },
        eval: kiln::runner::EvalOptions {
            n_ctx: 256,
            max_answer_tokens: 16,
            ..Default::default()
        },
        extra: Vec::new(),
        worker: std::env::current_exe().ok(),
        skip_bench: false,
        skip_eval: false,
    };
    let mut p = progress_line();
    let rep = kiln::sweep::run(&out.join("fixture-llama"), &opts, &mut p)?;
    kiln::report::write(&rep, &report_dir)?;
    print!("{}", kiln::report::markdown(&rep));
    println!(
        "\nreport: {} (and report.json, report.csv, chart.svg, chart.png)",
        report_dir.join("report.md").display()
    );
    println!("The fixture has random weights: its perplexity is high and its answers are noise; the point is the measurement.");
    Ok(())
}

fn demo(rows: usize, cols: usize) -> anyhow::Result<()> {
    println!(
        "kiln demo: a {rows} x {cols} synthetic weight matrix, kiln on {} threads vs ggml on 1\n",
        rayon::current_num_threads()
    );
    println!("| type | bytes | bits/weight | RMSE | bytes identical to ggml | kiln ms | ggml ms |");
    println!("|---|---:|---:|---:|---|---:|---:|");
    let mut all_identical = true;
    for r in kiln::demo::run(rows, cols)? {
        all_identical &= r.identical;
        println!(
            "| {} | {} | {:.4} | {:.3e} | {} | {:.1} | {:.1} |",
            r.ty,
            r.bytes,
            r.bytes as f64 * 8.0 / (rows * cols) as f64,
            r.rmse,
            if r.identical { "yes" } else { "NO" },
            r.kiln_ms,
            r.ggml_ms
        );
    }
    anyhow::ensure!(all_identical, "some formats differ from ggml");
    Ok(())
}
