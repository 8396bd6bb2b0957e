//! The converter's commands: `kiln quantize` and `kiln inspect`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    // The help lists the names `FileType::parse` accepts, generated from its table.
    #[arg(long = "type", short = 't', help = kiln::plan::FileType::help_text(),
          required_unless_present_any = ["target_bpw", "target_size"])]
    pub ty: Option<String>,
    /// Instead of --type: choose every tensor's type to minimise the measured, predicted loss
    /// within this many bits per weight (tensor data over weights).
    #[arg(long, value_name = "X", conflicts_with_all = ["ty", "target_size"])]
    pub target_bpw: Option<f64>,
    /// Instead of --type: the best mix whose whole file fits this size (3.5GiB, 900MB, or a
    /// byte count).
    #[arg(long, value_name = "SIZE", conflicts_with = "ty")]
    pub target_size: Option<String>,
    /// With --target-bpw/--target-size: the types the budget may choose, comma-separated
    /// (q4_K,iq3_S,...) or groups: float, legacy, k, i, ternary, all (default: all; f32 is
    /// always allowed).
    #[arg(long, value_name = "LIST")]
    pub budget_types: Option<String>,
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
    /// Compute the importance matrix first, from this text (UTF-8, at least one chunk of 512
    /// tokens), as `kiln imatrix` does with llama-imatrix's defaults (a checkpoint is converted
    /// to a temporary GGUF at its own precision for it, and removed), keep it beside the output
    /// as <output name>.imatrix.gguf, and quantize with it. Needs llama.cpp.
    #[arg(long, value_name = "TEXT", conflicts_with = "imatrix")]
    pub calibrate: Option<PathBuf>,
    /// With --target-bpw/--target-size: calibrate the loss model by the model's measured
    /// sensitivity: for each tensor group (attn_q, ffn_down, token_embd, ...), the mean KLD of
    /// the model with that group at about 4.5 bits per weight and the rest at the input's
    /// precision, measured on a text through llama.cpp as `kiln eval` does, over what the loss
    /// model predicts; each group's losses are scaled by that factor before solving. The text
    /// is --sensitivity-text, else the --calibrate text. Needs llama.cpp.
    #[arg(long)]
    pub calibrate_sensitivity: bool,
    /// The text for --calibrate-sensitivity (UTF-8, at least two chunks of tokens).
    #[arg(long, value_name = "FILE", requires = "calibrate_sensitivity")]
    pub sensitivity_text: Option<PathBuf>,
    /// At most this many chunks of the sensitivity text per measurement.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        requires = "calibrate_sensitivity"
    )]
    pub sensitivity_chunks: u32,
    /// Tokens per chunk of the sensitivity text (llama-perplexity's -c).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 512,
        requires = "calibrate_sensitivity"
    )]
    pub sensitivity_ctx: u32,
    /// Type for output.weight.
    #[arg(long)]
    pub output_tensor_type: Option<String>,
    /// Type for token_embd.weight.
    #[arg(long)]
    pub token_embedding_type: Option<String>,
    /// Leave output.weight in its input type.
    #[arg(long)]
    pub leave_output_tensor: bool,
    /// Type for the tensors whose name PATTERN matches (a regex searched in the name, as
    /// llama-quantize's: `attn_v=q8_0`, `blk\.[0-3]\.ffn_down=q6_K`); repeatable, the first
    /// matching rule wins. It replaces the mix's choice (not --output-tensor-type's or
    /// --token-embedding-type's), and rows the type cannot hold fall back as the mix's do
    /// (q4_K -> q5_0, ...). As in llama-quantize, rules apply only when --type is a quantized
    /// type (not f32, f16, bf16).
    #[arg(long, value_name = "PATTERN=TYPE")]
    pub tensor_type: Vec<String>,
    /// A file of PATTERN=TYPE rules separated by spaces or newlines (as --tensor-type, in
    /// place on the command line).
    #[arg(long, value_name = "FILE")]
    pub tensor_type_file: Vec<PathBuf>,
    /// Use the importance matrix only for tensors whose name contains NAME (repeatable).
    #[arg(long, value_name = "NAME")]
    pub include_weights: Vec<String>,
    /// Do not use the importance matrix for tensors whose name contains NAME (repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude_weights: Vec<String>,
    /// Set a metadata key in the output: TYPE is int (written as u32, as llama-quantize
    /// does), float (f32), bool (true/false) or str (at most 127 bytes); repeatable.
    #[arg(long, value_name = "KEY=TYPE:VALUE")]
    pub override_kv: Vec<String>,
    /// Remove these layers (blocks); the remaining ones are renumbered, the block count and
    /// the importance matrix follow.
    #[arg(long, value_name = "L0,L1,...")]
    pub prune_layers: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Leave out kiln's integrity check (two metadata keys that `kiln inspect --verify`
    /// checks), for a file byte-identical to llama-quantize's.
    #[arg(long)]
    pub no_checksum: bool,
    /// Write a split GGUF (llama-gguf-split's format: NAME-00001-of-0000N.gguf ...), each shard
    /// holding at most SIZE of tensor data: a whole number and M (10^6 bytes) or G (10^9).
    #[arg(long, value_name = "SIZE", conflicts_with_all = ["split_max_tensors", "keep_split"])]
    pub split_max_size: Option<String>,
    /// Write a split GGUF of at most N tensors per shard.
    #[arg(long, value_name = "N", conflicts_with = "keep_split")]
    pub split_max_tensors: Option<usize>,
    /// For a split GGUF input (given by its first shard): write the output in the same
    /// shards, as llama-quantize --keep-split does.
    #[arg(long)]
    pub keep_split: bool,
    /// Print the plan (tensors, types, sizes) without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Block search: `ggml` (the default: llama.cpp's bytes) or `thorough` (the same block
    /// formats, so llama.cpp reads them, with a lower importance-weighted error: more
    /// candidate scales, least-squares refinement; q4_0, q5_0, q8_0, q2_K..q6_K; slower). The
    /// budget solver (--target-bpw/--target-size) then measures with it too.
    #[arg(long, value_name = "ggml|thorough", default_value = "ggml")]
    pub search: String,
    /// The command-line positions of --tensor-type (false) and --tensor-type-file (true)
    /// values, filled from clap's indices: llama-quantize applies the rules in that order.
    #[arg(skip)]
    pub rule_order: Vec<(usize, bool)>,
}

impl QuantizeArgs {
    /// Records where each --tensor-type and --tensor-type-file value stood on the command line.
    pub fn note_rule_order(&mut self, m: &clap::ArgMatches) {
        let mut v: Vec<(usize, bool)> = Vec::new();
        for (id, file) in [("tensor_type", false), ("tensor_type_file", true)] {
            if let Some(ix) = m.indices_of(id) {
                v.extend(ix.map(|i| (i, file)));
            }
        }
        v.sort_unstable();
        self.rule_order = v;
    }

    /// The --tensor-type rules in command-line order, files expanded in place.
    fn rules(&self) -> anyhow::Result<Vec<kiln::overrides::TensorTypeRule>> {
        use kiln::overrides::TensorTypeRule;
        let (mut t, mut f) = (self.tensor_type.iter(), self.tensor_type_file.iter());
        let mut order = self.rule_order.clone();
        if order.len() != self.tensor_type.len() + self.tensor_type_file.len() {
            // Not parsed from a command line: options first, then files.
            order = (self.tensor_type.iter().map(|_| (0, false)))
                .chain(self.tensor_type_file.iter().map(|_| (0, true)))
                .collect();
        }
        let mut rules = Vec::new();
        for (_, file) in order {
            if file {
                if let Some(p) = f.next() {
                    rules.extend(TensorTypeRule::parse_file(p)?);
                }
            } else if let Some(a) = t.next() {
                rules.push(TensorTypeRule::parse(a)?);
            }
        }
        Ok(rules)
    }
}

pub fn quantize(a: QuantizeArgs) -> anyhow::Result<()> {
    use kiln::quantize as q;
    if let Some(n) = a.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let target = match (a.target_bpw, &a.target_size) {
        (Some(b), _) => Some(kiln::budget::Target::Bpw(b)),
        (None, Some(s)) => Some(kiln::budget::Target::Bytes(kiln::budget::parse_size(s)?)),
        (None, None) => None,
    };
    anyhow::ensure!(
        a.budget_types.is_none() || target.is_some(),
        "--budget-types chooses among types for --target-bpw/--target-size; give one of them"
    );
    let ftype = match (&a.ty, target) {
        (Some(t), _) => kiln::plan::FileType::parse(t)?,
        (None, Some(_)) => kiln::plan::FileType::Q8_0,
        (None, None) => anyhow::bail!("--type is required (or --target-bpw / --target-size)"),
    };
    let mut opts = q::Options::new(ftype);
    opts.tensor_types = a.rules()?;
    opts.include_weights = a.include_weights.clone();
    opts.exclude_weights = a.exclude_weights.clone();
    opts.kv_overrides = a
        .override_kv
        .iter()
        .map(|s| kiln::overrides::KvOverride::parse(s))
        .collect::<anyhow::Result<_>>()?;
    opts.prune_layers = a
        .prune_layers
        .as_deref()
        .map(kiln::overrides::parse_prune_layers)
        .transpose()?
        .unwrap_or_default();
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
    opts.split = match (&a.split_max_size, a.split_max_tensors) {
        (Some(s), _) => Some(kiln::gguf::split::SplitLimit::Bytes(
            kiln::gguf::split::parse_size(s)?,
        )),
        (None, Some(0)) => anyhow::bail!("--split-max-tensors must be at least 1"),
        (None, Some(n)) => Some(kiln::gguf::split::SplitLimit::Tensors(n)),
        (None, None) => None,
    };
    opts.keep_split = a.keep_split;
    opts.dry_run = a.dry_run;
    opts.search = kiln::kernels::Search::parse(&a.search).ok_or_else(|| {
        anyhow::anyhow!(
            "--search {}: not a block search (one of: {})",
            a.search,
            kiln::kernels::Search::NAMES.join(", ")
        )
    })?;
    let sensitivity = match (a.calibrate_sensitivity, target) {
        (false, _) => None,
        (true, None) => anyhow::bail!(
            "--calibrate-sensitivity calibrates the budget mixes: use it with --target-bpw or --target-size"
        ),
        (true, Some(_)) => {
            let text = a.sensitivity_text.clone().or_else(|| a.calibrate.clone());
            let Some(text) = text else {
                anyhow::bail!(
                    "--calibrate-sensitivity needs a text to measure the model on: --sensitivity-text FILE (or --calibrate TEXT)"
                );
            };
            Some(sensitivity_options(
                text,
                a.sensitivity_ctx,
                a.sensitivity_chunks,
                a.threads,
            )?)
        }
    };
    let start = std::time::Instant::now();
    kiln::pipeline::stop_on_signals();
    if let Some(text) = &a.calibrate {
        if a.dry_run {
            eprintln!(
                "kiln: --dry-run: not calibrating on {} (the plan below is without an importance matrix)",
                text.display()
            );
        } else {
            opts.imatrix = Some(calibrate(&a.input, a.threads, text, &opts)?);
        }
    }
    if let Some(target) = target {
        let mopts = kiln::budget::MeasureOptions {
            types: a
                .budget_types
                .as_deref()
                .map(kiln::budget::parse_types)
                .transpose()?,
            ..Default::default()
        };
        return quantize_budget(&a.input, &opts, target, &mopts, sensitivity.as_ref(), start);
    }
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
    let files = q::output_files(&p);
    if files.len() > 1 || p.shards.is_some() {
        for f in &files {
            println!("{}", f.display());
        }
    }
    println!(
        "{}: {} tensors, {} bytes ({:.2} MiB), {:.3} bits per weight, {:.1} s",
        if files.len() == 1 {
            files[0].display().to_string()
        } else {
            format!("{} shards", files.len())
        },
        s.tensors,
        s.file_size,
        s.file_size as f64 / 1048576.0,
        s.bytes_written as f64 * 8.0 / s.n_elements.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--target-bpw` / `--target-size`: measure, solve, then write (or print the plan).
fn quantize_budget(
    input: &std::path::Path,
    opts: &kiln::quantize::Options,
    target: kiln::budget::Target,
    mopts: &kiln::budget::MeasureOptions,
    sensitivity: Option<&Sensitivity>,
    start: std::time::Instant,
) -> anyhow::Result<()> {
    use kiln::budget;
    if !opts.dry_run {
        if let Some(o) = &opts.output {
            kiln::gguf::writer::check_target(o, opts.force)?;
        }
    }
    let p = budget::start(input, opts)?;
    let pins = budget::pinned(&p, opts)?;
    let mut tensors = budget::measure_except(&p, mopts, &pins)?;
    if let Some(s) = sensitivity {
        budget::check_fits(input, &p, opts, &tensors, target)?;
        let factors = measure_sensitivity(input, &p, &tensors, s)?;
        print!("{}", budget::describe_factors(&factors));
        budget::apply_factors(&mut tensors, &factors);
    }
    let (p, plan) = budget::finish(input, p, opts, tensors, target)?;
    for n in &p.notes {
        eprintln!("kiln: {n}");
    }
    let sampled = plan
        .tensors
        .iter()
        .filter(|t| t.rows_measured < t.n_rows)
        .count();
    if sampled > 0 {
        eprintln!(
            "kiln: {sampled} large tensors measured on evenly spaced rows (about {} weights each)",
            mopts.sample_weights
        );
    }
    if opts.dry_run {
        print!("{}", budget::describe(&p, &plan)?);
        return Ok(());
    }
    let s = kiln::quantize::execute(
        &p,
        opts.force,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )?;
    anyhow::ensure!(
        s.file_size == plan.file_size,
        "internal: {} has {} bytes, the plan predicted {}",
        p.target.display(),
        s.file_size,
        plan.file_size
    );
    println!(
        "{}: budget {}: {} tensors, {} bytes ({:.2} MiB), {:.4} bits per weight reached, predicted loss {:.4e}, {:.1} s",
        p.target.display(),
        target.describe(),
        s.tensors,
        s.file_size,
        s.file_size as f64 / 1048576.0,
        plan.bpw(),
        plan.predicted_loss,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "llama")]
type Sensitivity = kiln::runner::sensitivity::SensitivityOptions;
#[cfg(not(feature = "llama"))]
type Sensitivity = ();

/// `--calibrate-sensitivity`'s options; the text is checked here, before any work.
#[cfg(feature = "llama")]
fn sensitivity_options(
    text: PathBuf,
    n_ctx: u32,
    chunks: u32,
    threads: Option<usize>,
) -> anyhow::Result<Sensitivity> {
    anyhow::ensure!(chunks >= 2, "--sensitivity-chunks must be at least 2");
    anyhow::ensure!(n_ctx >= 8, "--sensitivity-ctx must be at least 8");
    let mut o = kiln::runner::sensitivity::SensitivityOptions::new(text);
    o.max_chunks = chunks;
    o.n_ctx = n_ctx;
    if let Some(n) = threads {
        o.threads = n as u32;
    }
    kiln::runner::sensitivity::check_text(&o)?;
    Ok(o)
}

#[cfg(not(feature = "llama"))]
fn sensitivity_options(
    _: PathBuf,
    _: u32,
    _: u32,
    _: Option<usize>,
) -> anyhow::Result<Sensitivity> {
    anyhow::bail!(
        "--calibrate-sensitivity runs the model on llama.cpp, and this kiln was built without it \
         (--no-default-features)"
    )
}

/// `--calibrate-sensitivity`: every group's factor, measured.
#[cfg(feature = "llama")]
fn measure_sensitivity(
    input: &std::path::Path,
    p: &kiln::quantize::Prepared,
    tensors: &[kiln::budget::TensorChoices],
    s: &Sensitivity,
) -> anyhow::Result<Vec<kiln::budget::GroupFactor>> {
    let near = match p.target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    println!(
        "sensitivity on {} (at most {} chunks of {} tokens): each group at about 4.5 bits per weight, the rest at the input's precision; measured = its mean KLD minus the KLD with nothing degraded, predicted = the loss model's, factor = measured / predicted",
        s.text.display(),
        s.max_chunks,
        s.n_ctx
    );
    kiln::runner::sensitivity::measure(input, p, tensors, &near, s, &mut |l| eprintln!("kiln: {l}"))
}

#[cfg(not(feature = "llama"))]
fn measure_sensitivity(
    _: &std::path::Path,
    _: &kiln::quantize::Prepared,
    _: &[kiln::budget::TensorChoices],
    _: &Sensitivity,
) -> anyhow::Result<Vec<kiln::budget::GroupFactor>> {
    anyhow::bail!("--calibrate-sensitivity needs llama.cpp")
}

/// `--calibrate TEXT`: checks the conversion's plan and the output as a run would (so a bad
/// option or an existing output is refused before minutes of calibration), then computes the
/// importance matrix; its path.
#[cfg(feature = "llama")]
fn calibrate(
    input: &std::path::Path,
    threads: Option<usize>,
    text: &std::path::Path,
    opts: &kiln::quantize::Options,
) -> anyhow::Result<PathBuf> {
    let mut check = opts.clone();
    check.dry_run = true;
    // --include/--exclude-weights select entries of the matrix still to be made.
    if check.include_weights.is_empty() || check.exclude_weights.is_empty() {
        check.include_weights.clear();
        check.exclude_weights.clear();
    }
    let p = kiln::quantize::prepare(input, &check)?;
    kiln::gguf::writer::check_target(&p.target, opts.force)?;
    let target = p.target.clone();
    drop(p);
    let c = kiln::runner::calibrate::calibrate(
        input,
        text,
        &target,
        opts.force,
        threads.map(|n| n as u32),
        &mut |l| eprintln!("kiln: {l}"),
    )?;
    let s = &c.summary;
    println!(
        "calibration text {}: {} tokens, {} chunks of {} tokens used ({} tokens){}; importance matrix {} ({} weights)",
        text.display(),
        s.text_tokens,
        s.n_chunks,
        kiln::runner::imatrix::ImatrixOptions::default().n_ctx,
        s.n_tokens,
        c.converted
            .map(|t| format!(", on a temporary {t} conversion"))
            .unwrap_or_default(),
        c.imatrix.display(),
        s.n_entries
    );
    Ok(c.imatrix)
}

/// Without llama.cpp there is nothing to run the model on.
#[cfg(not(feature = "llama"))]
fn calibrate(
    _: &std::path::Path,
    _: Option<usize>,
    _: &std::path::Path,
    _: &kiln::quantize::Options,
) -> anyhow::Result<PathBuf> {
    anyhow::bail!(
        "--calibrate runs the model on llama.cpp, and this kiln was built without it \
         (--no-default-features); compute the importance matrix elsewhere and pass --imatrix"
    )
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
