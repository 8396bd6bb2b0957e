//! The converter's commands: `kiln quantize` and `kiln inspect`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    // The help lists the names `FileType::parse` accepts, generated from its table.
    #[arg(long = "type", short = 't', help = kiln::plan::FileType::help_text())]
    pub ty: String,
    /// Checkpoint folder, .safetensors file, or .gguf file.
    pub input: PathBuf,
    /// Output file (default: <name>-<TYPE>.gguf beside the input).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Allow requantizing tensors that are already quantized.
    #[arg(long)]
    pub allow_requantize: bool,
    /// No mixture: every quantizable tensor gets TYPE's base type.
    #[arg(long)]
    pub pure: bool,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Type for output.weight.
    #[arg(long)]
    pub output_tensor_type: Option<String>,
    /// Type for token_embd.weight.
    #[arg(long)]
    pub token_embedding_type: Option<String>,
    /// Leave output.weight in its input type.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Leave out kiln's integrity check (two metadata keys that `kiln inspect --verify`
    /// checks), for a file byte-identical to llama-quantize's.
    #[arg(long)]
    pub no_checksum: bool,
    /// Print the plan (tensors, types, sizes) without writing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
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
    opts.dry_run = a.dry_run;
    let start = std::time::Instant::now();
    kiln::pipeline::stop_on_signals();
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

pub fn inspect(file: &std::path::Path, json: bool, verify: bool) -> anyhow::Result<()> {
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
pub fn ignore_sigxfsz() {
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
