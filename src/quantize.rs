//! `kiln quantize`: from an input path and options to a plan (every tensor's source, type and
//! size, the output metadata) and then to a written file.

use crate::arch;
use crate::gguf::split::{self, Shards, SplitLimit};
use crate::gguf::writer::{file_size, TensorEntry};
use crate::gguf::{checksum, keys, GgufFile, Metadata, Value};
use crate::imatrix::{self, Imatrix};
use crate::job::{self, ConvertOrder, Job, TensorSource, Transform};
use crate::overrides::{self, KvOverride, KvValue, TensorTypeRule};
use crate::pipeline::{self, Summary};
use crate::plan::{self, FileType, ModelFacts, PlanOptions, PlanTensor};
use crate::source::gguf::SplitGguf;
use crate::source::{Checkpoint, Source};
use anyhow::{bail, Context, Result};
use kiln_kernels::{GgmlType, Search};
use std::path::{Path, PathBuf};

/// Everything `kiln quantize` takes.
#[derive(Clone, Debug)]
pub struct Options {
    pub ftype: FileType,
    pub output: Option<PathBuf>,
    pub force: bool,
    pub allow_requantize: bool,
    pub pure: bool,
    pub imatrix: Option<PathBuf>,
    pub output_tensor_type: Option<GgmlType>,
    pub token_embedding_type: Option<GgmlType>,
    pub leave_output_tensor: bool,
    /// `--tensor-type` / `--tensor-type-file` rules, in command-line order.
    pub tensor_types: Vec<TensorTypeRule>,
    /// `--include-weights`: only importance-matrix entries whose name contains one of these.
    pub include_weights: Vec<String>,
    /// `--exclude-weights`: no importance-matrix entry whose name contains one of these.
    pub exclude_weights: Vec<String>,
    /// `--override-kv`, in command-line order.
    pub kv_overrides: Vec<KvOverride>,
    /// `--prune-layers`, sorted and deduplicated.
    pub prune_layers: Vec<u32>,
    /// Write kiln's integrity check (see [`crate::gguf::checksum`]).
    pub checksum: bool,
    /// `--split-max-size` / `--split-max-tensors`: write a split GGUF.
    pub split: Option<SplitLimit>,
    /// `--keep-split`: a split GGUF input's output in the input's shards.
    pub keep_split: bool,
    /// Only the plan is wanted (`--dry-run`): what would refuse the conversion (a type kiln does
    /// not write, a missing importance matrix) becomes a note, as llama-quantize's dry run
    /// warns instead of failing.
    pub dry_run: bool,
    /// `--search`: the block search ([`Search::Ggml`], the default, writes llama.cpp's bytes;
    /// [`Search::Thorough`] the same formats with a lower weighted error). Not recorded in the
    /// output's metadata (llama.cpp has no key for it).
    pub search: Search,
}

impl Options {
    pub fn new(ftype: FileType) -> Self {
        Options {
            ftype,
            output: None,
            force: false,
            allow_requantize: false,
            pure: false,
            imatrix: None,
            output_tensor_type: None,
            token_embedding_type: None,
            leave_output_tensor: false,
            tensor_types: Vec::new(),
            include_weights: Vec::new(),
            exclude_weights: Vec::new(),
            kv_overrides: Vec::new(),
            prune_layers: Vec::new(),
            checksum: true,
            split: None,
            keep_split: false,
            dry_run: false,
            search: Search::Ggml,
        }
    }
}

/// A conversion ready to run.
pub struct Prepared {
    pub input: Box<dyn Source>,
    pub jobs: Vec<Job>,
    pub metadata: Metadata,
    pub target: PathBuf,
    pub imatrix: Option<Imatrix>,
    pub notes: Vec<String>,
    /// A split output: the shard of each job (files from [`Shards::paths`] of `target`).
    pub shards: Option<Shards>,
    /// The block search ([`Options::search`]).
    pub search: Search,
}

impl Prepared {
    pub fn entries(&self) -> Result<Vec<TensorEntry>> {
        self.jobs.iter().map(|j| j.entry()).collect()
    }
    pub fn file_size(&self) -> Result<u64> {
        Ok(file_size(&self.metadata, &self.entries()?))
    }
    pub fn n_elements(&self) -> u64 {
        self.jobs.iter().map(|j| j.n_elements()).sum()
    }
    pub fn data_bytes(&self) -> Result<u64> {
        self.jobs.iter().map(|j| j.out_bytes()).sum()
    }
}

/// Known type suffixes stripped from an input's name before adding the new one.
fn strip_type_suffix(stem: &str) -> &str {
    for f in FileType::ALL {
        for sep in ['-', '.', '_'] {
            let suffix = format!("{sep}{}", f.name());
            if stem.len() > suffix.len() && stem.to_ascii_uppercase().ends_with(&suffix) {
                return &stem[..stem.len() - suffix.len()];
            }
        }
    }
    stem
}

/// `<name>-<TYPE>.gguf` beside the input (a checkpoint folder's name for folders and
/// .safetensors files).
pub fn default_output(input: &Path, ftype: FileType) -> PathBuf {
    let abs = std::path::absolute(input).unwrap_or_else(|_| input.to_path_buf());
    let base = if abs.is_dir() {
        abs.clone()
    } else if abs.extension().is_some_and(|e| e == "safetensors") {
        abs.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| abs.clone())
    } else {
        abs.with_extension("")
    };
    let stem = base
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = format!("{}-{}.gguf", strip_type_suffix(&stem), ftype.name());
    base.parent().unwrap_or(Path::new(".")).join(name)
}

fn is_gguf(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn facts_from_gguf(md: &Metadata, path: &Path) -> Result<ModelFacts> {
    let arch = md
        .get("general.architecture")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: no general.architecture", path.display()))?
        .to_string();
    let int = |key: &str| -> Option<u32> {
        match md.get(&format!("{arch}.{key}"))? {
            Value::Array(crate::gguf::Array::U32(v)) => v.first().copied(),
            Value::Array(crate::gguf::Array::I32(v)) => v.first().map(|&x| x as u32),
            v => v.as_int().map(|x| x as u32),
        }
    };
    let n_layer =
        int("block_count").with_context(|| format!("{}: no {arch}.block_count", path.display()))?;
    let n_head = int("attention.head_count").unwrap_or(0);
    let n_head_kv = int("attention.head_count_kv").unwrap_or(n_head);
    Ok(ModelFacts {
        is_70b: crate::arch::is_70b(&arch, n_layer, n_head, n_head_kv),
        n_expert: int("expert_count").unwrap_or(0),
        arch,
        n_layer,
        n_head,
        n_head_kv,
    })
}

/// What llama.cpp's loader reads with the `--override-kv` values in place: an int override of
/// the block or head counts changes the counts the mixes look at (as it changes llama.cpp's
/// hparams); other types are ignored there with a warning, as here.
fn override_facts(mut f: ModelFacts, kv: &[KvOverride]) -> ModelFacts {
    for o in kv {
        let KvValue::Int(i) = o.value else { continue };
        let v = i as u32;
        let Some(key) = o.key.strip_prefix(&format!("{}.", f.arch)) else {
            continue;
        };
        match key {
            "block_count" => f.n_layer = v,
            "attention.head_count" => f.n_head = v,
            "attention.head_count_kv" => f.n_head_kv = v,
            _ => continue,
        }
        f.is_70b = arch::is_70b(&f.arch, f.n_layer, f.n_head, f.n_head_kv);
    }
    f
}

/// Plans the conversion of `input` (folder, .safetensors file or .gguf file).
pub fn prepare(input_path: &Path, opts: &Options) -> Result<Prepared> {
    if !input_path.exists() {
        bail!("{}: no such file or folder", input_path.display());
    }
    let target = opts
        .output
        .clone()
        .unwrap_or_else(|| default_output(input_path, opts.ftype));
    if !opts.include_weights.is_empty() && !opts.exclude_weights.is_empty() {
        bail!("--include-weights and --exclude-weights cannot be used together");
    }
    if opts.imatrix.is_none()
        && !(opts.include_weights.is_empty() && opts.exclude_weights.is_empty())
    {
        bail!("--include-weights and --exclude-weights select importance-matrix entries; they need --imatrix");
    }
    let mut notes = Vec::new();
    let mut imatrix = match &opts.imatrix {
        Some(p) => Some(imatrix::load(p)?),
        None => None,
    };
    if let Some(m) = &mut imatrix {
        let before = m.len();
        overrides::filter_imatrix(m, &opts.include_weights, &opts.exclude_weights);
        if m.len() != before {
            notes.push(format!(
                "importance matrix: {} of its {before} entries kept by --include-weights/--exclude-weights",
                m.len()
            ));
        }
    }
    if imatrix.as_ref().is_some_and(|m| m.is_empty()) {
        // llama-quantize then passes no importance matrix at all.
        notes.push("no importance-matrix entry is left: quantizing without one".into());
        imatrix = None;
    }
    // What llama-quantize records of the importance matrix it used (after the user's overrides).
    let imatrix_keys = match (&opts.imatrix, &imatrix) {
        (Some(p), Some(m)) => imatrix::quantize_keys(p, m.len())?,
        _ => Vec::new(),
    };
    let popts = PlanOptions {
        pure: opts.pure,
        output_tensor_type: opts.output_tensor_type,
        token_embedding_type: opts.token_embedding_type,
        leave_output_tensor: opts.leave_output_tensor,
        has_imatrix: imatrix.is_some(),
        tensor_types: opts.tensor_types.clone(),
    };
    if !opts.tensor_types.is_empty() && !opts.ftype.default_type().is_quantized() {
        notes.push(format!(
            "--tensor-type has no effect on {} (llama.cpp applies it to quantized file types only)",
            opts.ftype
        ));
    }
    // Where convert_hf_to_gguf.py would write each tensor of a checkpoint (by output name).
    let mut convert_order: Option<std::collections::HashMap<String, ConvertOrder>> = None;
    // A split GGUF input: the shard of each input tensor (for --keep-split).
    let mut input_shards: Option<Vec<usize>> = None;
    let (input, mut metadata, mut jobs, facts) = if is_gguf(input_path) {
        let mut shards = split::open_shards(input_path)?;
        let g = if shards.len() == 1 {
            GgufInput::One(shards.remove(0))
        } else {
            notes.push(format!(
                "split GGUF input: {} shards, {} tensors",
                shards.len(),
                shards.iter().map(|s| s.tensors().len()).sum::<usize>()
            ));
            let s = SplitGguf::new(shards);
            input_shards = Some(s.shard_of());
            GgufInput::Split(s)
        };
        let facts = facts_from_gguf(g.metadata(), input_path)?;
        if let Some(family) = arch::by_gguf_name(&facts.arch) {
            // The file's own keys against its tensors, as llama.cpp's loader will see them.
            let path = input_path.display().to_string();
            let labels = arch::shapes::GgufLabels {
                path: &path,
                arch: &facts.arch,
            };
            let tensors: Vec<(String, Vec<u64>)> = g
                .tensors()
                .map(|t| (t.name.clone(), t.dims.clone()))
                .collect();
            arch::shapes::check(family, g.metadata(), &labels, &tensors)?;
        }
        let mut md = g.metadata().clone();
        for k in ["split.no", "split.count", "split.tensors.count"] {
            md.remove(k);
        }
        let jobs: Vec<Job> = g
            .tensors()
            .enumerate()
            .map(|(i, t)| Job {
                name: t.name.clone(),
                dims: t.dims.clone(),
                input_type: t.ty,
                out_type: t.ty,
                fallback_from: None,
                source: TensorSource::Input {
                    index: i,
                    transform: Transform::None,
                },
            })
            .collect();
        (g.into_source(), md, jobs, facts)
    } else {
        let ck = Checkpoint::open(input_path)?;
        let conv = arch::prepare(&ck, opts.ftype)?;
        notes.extend(conv.notes);
        let keys = job::convert_order(&conv.jobs, &ck.convert_ranks());
        convert_order = Some(conv.jobs.iter().map(|j| j.name.clone()).zip(keys).collect());
        (
            Box::new(ck) as Box<dyn Source>,
            conv.metadata,
            conv.jobs,
            conv.facts,
        )
    };
    if opts.keep_split && opts.split.is_some() {
        bail!("--keep-split writes the input's shards; it cannot be combined with --split-max-size or --split-max-tensors");
    }
    // llama-quantize's order: its loader's (`weights_map`), or with --keep-split the input's
    // (shard by shard, in file order), in which it also chooses the types.
    if !(opts.keep_split && input_shards.is_some()) {
        jobs.sort_by(|a, b| plan::llama_order(&a.name, &b.name));
    }
    let mut pruner = overrides::Pruner::new(&opts.prune_layers);
    if !opts.prune_layers.is_empty() {
        let n = facts.n_layer;
        if let Some(&bad) = opts.prune_layers.iter().find(|&&l| l >= n) {
            bail!(
                "--prune-layers: layer {bad} does not exist; {} has {n} layers (0 to {})",
                input_path.display(),
                n as i64 - 1
            );
        }
        if opts.prune_layers.len() as u32 >= n {
            bail!(
                "--prune-layers: pruning all {n} layers of {} leaves no model",
                input_path.display()
            );
        }
        let mut kept = Vec::with_capacity(jobs.len());
        for mut j in jobs {
            if let Some(name) = pruner.rename(&j.name) {
                if let Some(m) = &mut convert_order {
                    if let Some(k) = m.remove(&j.name) {
                        m.insert(name.clone(), k);
                    }
                }
                j.name = name;
                kept.push(j);
            }
        }
        jobs = kept;
        notes.push(format!(
            "--prune-layers: removed {} of {n} layers, {} left, renumbered",
            opts.prune_layers.len(),
            pruner.block_count()
        ));
        // Each remaining tensor takes the importance data of its original block.
        if let Some(m) = &imatrix {
            let remapped: Imatrix = jobs
                .iter()
                .filter_map(|j| {
                    let v = m.get(&pruner.imatrix_name(&j.name))?;
                    Some((j.name.clone(), v.clone()))
                })
                .collect();
            imatrix = Some(remapped);
        }
    }
    let facts = override_facts(facts, &opts.kv_overrides);
    let pts: Vec<PlanTensor> = jobs
        .iter()
        .map(|j| PlanTensor {
            name: j.name.clone(),
            dims: j.dims.clone(),
            input_type: j.input_type,
        })
        .collect();
    let choices = plan::choose_types(opts.ftype, &facts, &pts, &popts)?;
    for (j, c) in jobs.iter_mut().zip(choices) {
        j.out_type = c.ty;
        j.fallback_from = c.fallback_from;
        if matches!(j.source, TensorSource::Mxfp4(_)) && !opts.ftype.default_type().is_quantized() {
            // convert_hf_to_gguf.py writes an MX checkpoint's experts as MXFP4 whatever the
            // float output type (changing them is llama-quantize's requantization).
            j.out_type = j.input_type;
            j.fallback_from = None;
        }
        if j.out_type != j.input_type && j.out_type.row_bytes(j.dims[0]).is_none() {
            // llama.cpp: "no tensor type fallback is defined for type q1_0" (or an abort, for
            // an explicit --output-tensor-type that does not fit).
            let (bw, _) = j.out_type.block().unwrap_or((1, 0));
            bail!(
                "{}: tensor {} has rows of {} weights, not a multiple of {}'s block of {bw}, and llama.cpp defines no fallback type for {} (llama-quantize refuses it too)",
                input_path.display(),
                j.name,
                j.dims[0],
                j.out_type.label(),
                j.out_type.label()
            );
        }
        if j.out_type != j.input_type && !opts.allow_requantize {
            if let Some(k) = j.input_type.kiln().filter(|k| k.is_quantized()) {
                bail!(
                    "{}: tensor {} is already quantized ({k}); requantizing loses quality, pass --allow-requantize to do it anyway",
                    input_path.display(),
                    j.name
                );
            }
            if j.input_type.kiln().is_none() {
                bail!(
                    "{}: tensor {} is {}; requantizing it needs --allow-requantize",
                    input_path.display(),
                    j.name,
                    j.input_type.label()
                );
            }
        }
    }
    // The types are chosen in llama.cpp's loader order (the mixes count tensors as they come).
    // A file at a checkpoint's own precision is what convert_hf_to_gguf.py writes, in its
    // order; a quantized file is what llama-quantize writes, in the loader's order (its
    // `weights_map`), as it stands.
    let convert_form = convert_order.is_some() && !opts.ftype.default_type().is_quantized();
    if let Some(m) = convert_order.filter(|_| !opts.ftype.default_type().is_quantized()) {
        jobs.sort_by_key(|j| m.get(&j.name).copied());
    }
    // convert writes a tensor's shape as the checkpoint has it (ERNIE's [1, E] score bias stays
    // {E, 1}); llama-quantize (ggml's gguf writer) writes ggml_n_dims dimensions, trailing
    // ones dropped.
    if !convert_form {
        for j in jobs.iter_mut() {
            while j.dims.len() > 1 && j.dims.last() == Some(&1) {
                j.dims.pop();
            }
        }
    }
    let problems = refusals(&jobs, opts.ftype, imatrix.as_ref());
    if opts.dry_run {
        notes.extend(problems.iter().map(|p| format!("warning: {p}")));
    } else if !problems.is_empty() {
        bail!("{}: {}", input_path.display(), problems.join("; "));
    }
    if let Some(m) = &imatrix {
        for j in &jobs {
            let Some(v) = m.get(&j.name) else { continue };
            if j.out_type == j.input_type || j.out_type.kiln().is_none_or(|k| !k.uses_imatrix()) {
                continue;
            }
            // llama.cpp: one row of importance per expert (ne[0] * ne[2] values; a 2-D
            // tensor's ne[2] is 1).
            let n_expert = j.dims.get(2).copied().unwrap_or(1);
            if v.len() as u64 != j.dims[0] * n_expert {
                if j.name == "token_embd.weight" {
                    continue;
                }
                bail!(
                    "{}: importance data for {} has {} values, the tensor's rows have {}{} (an imatrix for another model?)",
                    opts.imatrix.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    j.name,
                    v.len(),
                    j.dims[0],
                    if n_expert > 1 { format!(" in each of {n_expert} experts") } else { String::new() }
                );
            }
        }
        let matched = jobs.iter().filter(|j| m.contains_key(&j.name)).count();
        if matched == 0 && opts.prune_layers.is_empty() {
            bail!(
                "{}: no entry matches a tensor of this model (an imatrix for another model?)",
                opts.imatrix
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        notes.push(format!(
            "importance matrix: {} entries, {matched} matching tensors",
            m.len()
        ));
    }
    // llama-quantize's gguf_set_val moves these keys to the end; convert's file (a checkpoint at
    // its own precision) keeps them where convert writes them.
    let set_key = |m: &mut Metadata, k: &str, v: Value| {
        if convert_form {
            m.set(k, v)
        } else {
            m.set_last(k, v)
        }
    };
    set_key(
        &mut metadata,
        keys::QUANTIZATION_VERSION,
        Value::U32(keys::GGML_QNT_VERSION),
    );
    // convert_hf_to_gguf.py calls a float conversion of an MXFP4 checkpoint MOSTLY_MXFP4_MOE.
    let mx_float = !opts.ftype.default_type().is_quantized()
        && jobs
            .iter()
            .any(|j| matches!(j.source, TensorSource::Mxfp4(_)));
    let file_type = if mx_float {
        FileType::MXFP4_MOE.id()
    } else {
        opts.ftype.id()
    };
    set_key(&mut metadata, keys::FILE_TYPE, Value::U32(file_type));
    // llama_model_quantize sets each override (moving an existing key to the end), then the
    // block count of a pruned model.
    for o in opts.kv_overrides.iter().chain(&imatrix_keys) {
        metadata.set_last(o.key.clone(), o.gguf_value());
    }
    if !opts.prune_layers.is_empty() {
        metadata.set_last(
            format!("{}.block_count", facts.arch),
            Value::U32(pruner.block_count() as u32),
        );
    }
    if opts.checksum {
        checksum::reserve(&mut metadata, jobs.len());
    } else {
        checksum::remove(&mut metadata);
    }
    let shards = match (&input_shards, opts.split) {
        (Some(of), _) if opts.keep_split => Some(Shards {
            of: jobs
                .iter()
                .map(|j| match j.source {
                    TensorSource::Input { index, .. } => of.get(index).copied().unwrap_or(0),
                    _ => 0,
                })
                .collect(),
        }),
        (None, _) if opts.keep_split => {
            notes.push("--keep-split: the input is one file, and so is the output".into());
            None
        }
        (_, Some(limit)) => {
            let entries: Vec<TensorEntry> =
                jobs.iter().map(|j| j.entry()).collect::<Result<_>>()?;
            Some(Shards {
                of: split::assign(&entries, limit)?,
            })
        }
        _ => None,
    };
    if let Some(s) = &shards {
        let paths = s.paths(&target);
        notes.push(format!(
            "split GGUF output: {} shard{} ({}{})",
            paths.len(),
            if paths.len() == 1 { "" } else { "s" },
            paths[0].display(),
            if paths.len() > 1 { " ..." } else { "" }
        ));
    }
    if opts.search == Search::Thorough {
        notes.push(
            "block search: thorough (the same block formats with a lower weighted error; not byte-identical to llama-quantize)"
                .to_string(),
        );
    }
    let n_fallback = jobs.iter().filter(|j| j.fallback_from.is_some()).count();
    if n_fallback > 0 {
        notes.push(format!(
            "{n_fallback} of {} tensors use a fallback type (rows not a multiple of the block size)",
            jobs.len()
        ));
    }
    Ok(Prepared {
        input,
        jobs,
        metadata,
        target,
        imatrix,
        notes,
        shards,
        search: opts.search,
    })
}

/// What makes a planned conversion impossible, checked before any work: a tensor whose chosen
/// type kiln does not write yet, and llama.cpp's refusal of the lowest-bit types without
/// importance data (`tensor_requires_imatrix`: with no --imatrix, or an imatrix without an entry
/// for that tensor).
fn refusals(jobs: &[Job], ftype: FileType, imatrix: Option<&Imatrix>) -> Vec<String> {
    let mut out = Vec::new();
    let changed = |j: &&Job| j.out_type != j.input_type;
    if let Some(j) = jobs
        .iter()
        .filter(changed)
        .find(|j| j.out_type.kiln().is_none())
    {
        out.push(format!(
            "{ftype} puts tensor {} in {}, a type kiln does not write yet",
            j.name,
            j.out_type.label()
        ));
    }
    if let Some(j) = jobs.iter().filter(changed).find(|j| {
        plan::requires_imatrix(&j.name, j.out_type, ftype)
            && imatrix.is_none_or(|m| m.get(&j.name).is_none())
    }) {
        out.push(match imatrix {
            None => format!(
                "{ftype} requires an importance matrix (as llama.cpp does: tensor {} would be {}); pass --imatrix FILE",
                j.name,
                j.out_type.label()
            ),
            Some(_) => format!(
                "the importance matrix has no entry for tensor {}, which {ftype} makes {} (llama.cpp refuses such a very low-bit quantization without one)",
                j.name,
                j.out_type.label()
            ),
        });
    }
    out
}

/// Writes a prepared conversion.
pub fn execute(p: &Prepared, force: bool, progress: bool) -> Result<Summary> {
    let out = pipeline::Output {
        jobs: &p.jobs,
        metadata: &p.metadata,
        target: &p.target,
        imatrix: p.imatrix.as_ref(),
        search: p.search,
        shards: p.shards.as_ref(),
    };
    Ok(pipeline::run_many(p.input.as_ref(), &[out], force, progress)?.remove(0))
}

/// The files a prepared conversion writes: the target, or a split output's shards.
pub fn output_files(p: &Prepared) -> Vec<PathBuf> {
    match &p.shards {
        Some(s) => s.paths(&p.target),
        None => vec![p.target.clone()],
    }
}

/// Shape as llama.cpp prints it (ne, innermost first).
pub fn shape_label(dims: &[u64]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ")
}

/// The `--dry-run` plan as text.
pub fn describe(p: &Prepared) -> Result<String> {
    use std::fmt::Write;
    let mut s = String::new();
    let w = p
        .jobs
        .iter()
        .map(|j| j.name.len())
        .max()
        .unwrap_or(10)
        .max(6);
    writeln!(
        s,
        "{:<w$}  {:>20}  {:>8} -> {:<8}  {:>12}",
        "tensor", "shape", "input", "output", "bytes"
    )?;
    for j in &p.jobs {
        let fb = j
            .fallback_from
            .map(|f| format!(" (fallback from {})", f.label()))
            .unwrap_or_default();
        writeln!(
            s,
            "{:<w$}  {:>20}  {:>8} -> {:<8}  {:>12}{fb}",
            j.name,
            shape_label(&j.dims),
            j.input_type.label(),
            j.out_type.label(),
            j.out_bytes()?
        )?;
    }
    let size = p.file_size()?;
    let n = p.n_elements();
    writeln!(
        s,
        "\n{} tensors, {} parameters, file size {} bytes ({:.2} MiB), {:.3} bits per weight -> {}",
        p.jobs.len(),
        n,
        size,
        size as f64 / 1048576.0,
        p.data_bytes()? as f64 * 8.0 / n as f64,
        p.target.display()
    )?;
    Ok(s)
}

/// A type for an option like `--output-tensor-type`.
pub fn parse_ggml_type(s: &str) -> Result<GgmlType> {
    GgmlType::from_name(s).with_context(|| {
        let names: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
        format!(
            "unknown tensor type {s:?}; kiln writes {}",
            names.join(", ")
        )
    })
}

/// A GGUF input: one file, or the shards of a split one.
enum GgufInput {
    One(GgufFile),
    Split(crate::source::gguf::SplitGguf),
}

impl GgufInput {
    fn metadata(&self) -> &Metadata {
        match self {
            GgufInput::One(g) => g.metadata(),
            GgufInput::Split(s) => s.shards[0].metadata(),
        }
    }
    fn tensors(&self) -> Box<dyn Iterator<Item = &crate::gguf::TensorInfo> + '_> {
        match self {
            GgufInput::One(g) => Box::new(g.tensors().iter()),
            GgufInput::Split(s) => Box::new(s.tensors()),
        }
    }
    fn into_source(self) -> Box<dyn Source> {
        match self {
            GgufInput::One(g) => Box::new(g),
            GgufInput::Split(s) => Box::new(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_sit_beside_the_input() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("Llama-3.2-1B");
        std::fs::create_dir(&ck).unwrap();
        assert_eq!(
            default_output(&ck, FileType::Q4_K_M),
            d.path().join("Llama-3.2-1B-Q4_K_M.gguf")
        );
        let st = ck.join("model.safetensors");
        std::fs::write(&st, b"").unwrap();
        assert_eq!(
            default_output(&st, FileType::Q8_0),
            d.path().join("Llama-3.2-1B-Q8_0.gguf")
        );
        let g = d.path().join("model-F32.gguf");
        assert_eq!(
            default_output(&g, FileType::Q4_0),
            d.path().join("model-Q4_0.gguf")
        );
        let g = d.path().join("gemma.q8_0.gguf");
        assert_eq!(
            default_output(&g, FileType::Q2_K),
            d.path().join("gemma-Q2_K.gguf")
        );
    }
}
