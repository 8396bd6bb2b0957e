use clap::{Parser, Subcommand};
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
    /// Quantize a deterministic weight matrix to every format with kiln and with ggml, and
    /// compare bytes, error and time.
    Demo {
        /// Rows of the matrix.
        #[arg(long, default_value_t = 1024)]
        rows: usize,
        /// Columns of the matrix (a multiple of 256 so every format applies).
        #[arg(long, default_value_t = 4096)]
        cols: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { rows, cols } => demo(rows, cols),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
