use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;
use cli::convert::QuantizeArgs;
#[cfg(feature = "llama")]
use cli::runner::{BenchArgs, EvalArgs, ImatrixArgs, SweepArgs};

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
    Quantize(Box<QuantizeArgs>),
    #[cfg(feature = "llama")]
    /// Measure speed and memory of GGUF files on llama.cpp, as llama-bench does.
    Bench(BenchArgs),
    #[cfg(feature = "llama")]
    /// Measure quality against a reference GGUF: perplexity, KL divergence, same top token
    /// (as llama-perplexity --kl-divergence does) and a question-answering check.
    Eval(EvalArgs),
    #[cfg(feature = "llama")]
    /// Compute an importance matrix for quantization on a text, as llama-imatrix does, in
    /// its GGUF format (for `kiln quantize --imatrix` and llama-quantize).
    Imatrix(ImatrixArgs),
    #[cfg(feature = "llama")]
    /// Convert a checkpoint to several types in one pass, bench and evaluate every variant
    /// against the highest-precision one, and write a report folder (markdown, JSON, CSV, chart).
    Sweep(Box<SweepArgs>),
    #[cfg(feature = "llama")]
    /// Write a sweep's report files (report.md, report.json, report.csv, chart.svg, chart.png):
    /// for a sweep planned with `kiln sweep --plan`, from the results of the jobs that have
    /// run; otherwise again from its report.json.
    Report { dir: PathBuf },
    #[cfg(feature = "llama")]
    /// Internal: measure one file for bench, eval or sweep (a JSON job on stdin, the result as
    /// JSON on stdout), so that a llama.cpp abort ends only this process.
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
    #[cfg(feature = "llama")]
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
        /// An importance matrix (llama-imatrix's GGUF or legacy .dat file), as llama-quantize's
        /// `--imatrix`: used for the types that take one, recorded in the output's metadata.
        #[arg(long)]
        imatrix: Option<PathBuf>,
    },
    /// Without llama.cpp: the runner's commands, answered with a clear error.
    #[cfg(not(feature = "llama"))]
    #[command(external_subcommand)]
    Other(Vec<String>),
}

fn main() -> ExitCode {
    cli::convert::ignore_sigxfsz();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let (Command::Quantize(a), Some(m)) =
        (&mut cli.command, matches.subcommand_matches("quantize"))
    {
        a.note_rule_order(m);
    }
    let result = match cli.command {
        Command::Quantize(a) => cli::convert::quantize(*a),
        Command::Inspect { file, json, verify } => cli::convert::inspect(&file, json, verify),
        #[cfg(feature = "llama")]
        Command::Bench(a) => cli::runner::bench(a),
        #[cfg(feature = "llama")]
        Command::Eval(a) => cli::runner::eval(a),
        #[cfg(feature = "llama")]
        Command::Imatrix(a) => cli::runner::imatrix(a),
        #[cfg(feature = "llama")]
        Command::Sweep(a) => cli::runner::sweep(*a),
        #[cfg(feature = "llama")]
        Command::Report { dir } => cli::runner::report(&dir),
        #[cfg(feature = "llama")]
        Command::MeasureWorker => cli::runner::measure_worker(),
        #[cfg(feature = "llama")]
        Command::LlamaQuantize {
            input,
            output,
            ty,
            threads,
            allow_requantize,
            imatrix,
        } => cli::runner::llama_quantize(
            &input,
            &output,
            &ty,
            threads,
            allow_requantize,
            imatrix.as_deref(),
        ),
        #[cfg(not(feature = "llama"))]
        Command::Other(args) => Err(anyhow::anyhow!(
            "`kiln {}` needs llama.cpp, and this kiln was built without it \
             (--no-default-features); rebuild with the default `llama` feature",
            args.first().map(String::as_str).unwrap_or("")
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
