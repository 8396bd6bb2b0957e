//! Architectures: how a Hugging Face checkpoint's config.json and tensors become GGUF metadata
//! and tensors, as llama.cpp's convert_hf_to_gguf.py does it.
//!
//! # Design
//!
//! One file per model family, each a unit struct implementing [`Family`], and one registry
//! line in [`FAMILIES`] -- the shape of llama.cpp's own converter (its `conversion/` package: one
//! Python class per family, registered by Hugging Face architecture name, overriding only what
//! differs from the `TextModel` base class). Here the base class is [`base`]: the tensor-name
//! table, the shared config defaults and the `<arch>.*` keys in the base class's order. A
//! family's file owns everything family-specific and nothing outside it names a family: the HF
//! `architectures` it accepts, its config defaults, tensor names, transforms (Llama's q/k
//! permutation, Gemma's +1 on norms), hyperparameter keys, extra tensors (rope_freqs), which
//! vocabulary recipe it uses, and the sliding-window layer pattern the runner needs to size a
//! KV cache. [`prepare`] is the one driver: it detects the family, reads the common
//! hyperparameters into [`Hparams`], and asks the family at each step.
//!
//! Each family also describes the tensors llama.cpp's loader creates for it and their shapes from
//! the `<arch>.*` keys ([`Family::loader_tensors`]); [`shapes::check`] holds every tensor kiln
//! writes (and every tensor of a GGUF it requantizes) to them before any output exists, so a
//! config.json that disagrees with its tensors is one error line naming the key, its value, the
//! tensor and its shape, not a file llama.cpp refuses after the whole conversion.
//!
//! Adding a family is one new file here plus one line in [`FAMILIES`].

mod base;
mod config;
mod deepseek2;
mod ernie4_5moe;
mod gemma2;
mod gemma3;
pub mod general;
mod glm4moe;
mod gptoss;
mod granite;
mod llama;
mod mistral3;
mod mixtral;
pub mod moe;
mod olmo2;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen3moe;
pub mod shapes;
mod smollm3;

pub use config::Config;
pub use general::size_label;
pub use llama::llama3_rope_factors;

use crate::gguf::{keys, Metadata, TypeId, Value};
use crate::job::{Job, TensorSource, Transform};
use crate::plan::{FileType, ModelFacts};
use crate::source::{Checkpoint, SrcDtype, SrcTensor};
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use serde_json::Value as Json;

/// The registry: every family kiln converts, one line each.
pub static FAMILIES: &[&dyn Family] = &[
    &llama::Llama,
    &qwen2::Qwen2,
    &qwen3::Qwen3,
    &gemma2::Gemma2,
    &gemma3::Gemma3,
    &qwen3moe::Qwen3Moe,
    &mixtral::Mixtral,
    &deepseek2::Deepseek2,
    &gptoss::GptOss,
    &phi3::Phi3,
    &smollm3::SmolLm3,
    &granite::Granite,
    &olmo2::Olmo2,
    &mistral3::Mistral3,
    &glm4moe::Glm4Moe,
    &ernie4_5moe::Ernie45Moe,
];

/// One model family: what differs from the base conversion. Only the first four methods are
/// required; the others default to the base class's behaviour.
pub trait Family: Sync {
    /// The Hugging Face `architectures` names it converts; the first is what transformers
    /// writes for the family's causal LM.
    fn hf_architectures(&self) -> &'static [&'static str];
    /// `general.architecture`.
    fn gguf_name(&self) -> &'static str;
    /// config.json's `model_type`.
    fn model_type(&self) -> &'static str;
    /// How its vocabulary is converted.
    fn vocab(&self) -> VocabRecipe;

    /// transformers' config-class default for `key` (what convert sees when config.json
    /// leaves it out); `hf_arch` is the checkpoint's architecture name.
    fn config_default(&self, hf_arch: &str, key: &str) -> Option<Json> {
        let _ = hf_arch;
        base::config_default(key)
    }
    /// The GGUF name of a decoder-layer tensor (`rest` is the name after `model.layers.N.`).
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        base::layer_tensor(rest)
    }
    /// Whether a mapped tensor is written (a tied output is dropped).
    fn keeps(&self, gguf_name: &str) -> bool {
        let _ = gguf_name;
        true
    }
    /// What is done to a source tensor on the way.
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        let _ = (t, hp);
        Transform::None
    }
    /// The `<arch>.*` hyperparameter keys, in convert's order.
    fn write_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        base::write_hparams(self, hp, md)
    }
    /// How the family's checkpoints store mixture-of-experts layers; None for dense families.
    /// Expert tensors are then stacked per layer (see [`moe`]) instead of mapped one by one.
    fn experts(&self) -> Option<moe::Layout> {
        None
    }
    /// Whether a checkpoint tensor is left out before naming (DeepSeek's multi-token-prediction
    /// layers past num_hidden_layers).
    fn skips(&self, hf_name: &str, cfg: &Config) -> bool {
        let _ = (hf_name, cfg);
        false
    }
    /// Blocks the file holds past config.json's `num_hidden_layers` (GLM-4.5's
    /// multi-token-prediction layers, which convert keeps and counts in `block_count`); their
    /// tensors are converted like the other blocks'.
    fn extra_blocks(&self, cfg: &Config) -> Result<u64> {
        let _ = cfg;
        Ok(0)
    }
    /// The first layer with experts: layers before it have a dense feed-forward (DeepSeek's
    /// `first_k_dense_replace`).
    fn first_moe_layer(&self, hp: &Hparams) -> Result<u32> {
        let _ = hp;
        Ok(0)
    }
    /// Whether the family converts this checkpoint tensor itself, outside the name table
    /// (gpt-oss's fused experts and MXFP4 blocks); see [`Family::claimed_jobs`].
    fn claims(&self, hf_name: &str) -> bool {
        let _ = hf_name;
        false
    }
    /// The jobs for the tensors [`Family::claims`] took (indices into the checkpoint's table).
    fn claimed_jobs(&self, ck: &Checkpoint, hp: &Hparams, claimed: &[usize]) -> Result<Vec<Job>> {
        let _ = (ck, hp, claimed);
        Ok(Vec::new())
    }
    /// Whether key_length/value_length are written even when config.json has no head_dim.
    fn always_writes_head_dim(&self) -> bool {
        false
    }
    /// Keys the family adds after the base class's.
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        let _ = (hp, md);
        Ok(())
    }
    /// Last edits to the tensor list once the vocabulary is written (extra tensors, cut rows).
    fn finish(
        &self,
        hp: &Hparams,
        md: &Metadata,
        jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        let _ = (hp, md, jobs, notes);
        Ok(())
    }
    /// Whether llama.cpp's loader calls this model LLM_TYPE_70B (the mixes give its attn_v
    /// more bits).
    fn is_70b(&self, n_layer: u32, n_head: u32, n_head_kv: u32) -> bool {
        let _ = (n_layer, n_head, n_head_kv);
        false
    }
    /// llama.cpp's default sliding-window layer pattern (every Nth layer is global) for a file
    /// whose `attention.sliding_window` is `n_swa`; None when no layer slides.
    fn sliding_window_pattern(&self, n_swa: u32) -> Option<u32> {
        let _ = n_swa;
        None
    }
    /// The tensors llama.cpp's loader creates for this architecture and their shapes from the
    /// `<arch>.*` keys (its `load_tensors`; `hyper` holds the file's keys, for loaders that
    /// branch on them, e.g. on `expert_count`); every tensor kiln writes or requantizes is
    /// checked against it before any output exists ([`shapes::check`]). Start from
    /// [`base::loader_tensors`] and change what the family's loader does differently.
    fn loader_tensors(&self, hyper: &shapes::Hyper) -> shapes::LoaderTensors {
        base::loader_tensors(hyper)
    }
    /// The config.json keys a `<arch>.*` key is written from, first found named in messages
    /// (`shapes::VOCAB` stands for the vocabulary size).
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        base::config_keys(gguf_key)
    }
}

/// The family of a GGUF `general.architecture` name.
pub fn by_gguf_name(name: &str) -> Option<&'static dyn Family> {
    FAMILIES.iter().copied().find(|f| f.gguf_name() == name)
}

/// The family of a config.json `model_type` ("mixtral", "qwen3_moe").
pub fn by_model_type(model_type: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_type() == model_type)
}

/// LLM_TYPE_70B for a GGUF architecture name (false for families kiln does not know).
pub fn is_70b(gguf_name: &str, n_layer: u32, n_head: u32, n_head_kv: u32) -> bool {
    by_gguf_name(gguf_name).is_some_and(|f| f.is_70b(n_layer, n_head, n_head_kv))
}

/// From config.json's `architectures`: the family and the name that matched.
pub fn detect(config: &Json, path: &str) -> Result<(&'static dyn Family, String)> {
    let names: Vec<&str> = config
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let Some(first) = names.first() else {
        bail!("{path}: no \"architectures\" list, so the model type is unknown");
    };
    for f in FAMILIES {
        if f.hf_architectures().contains(first) {
            return Ok((*f, first.to_string()));
        }
    }
    let list: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.hf_architectures().iter().copied())
        .collect();
    bail!(
        "{path}: architecture {first} is not supported; kiln converts {}",
        list.join(", ")
    )
}

/// The hyperparameters every family reads, and config access with the family's defaults.
pub struct Hparams<'a> {
    pub cfg: &'a Config,
    /// The checkpoint's `architectures[0]`.
    pub hf_arch: &'a str,
    family: &'a dyn Family,
    pub n_layer: u32,
    pub n_embd: u64,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u64,
}

impl Hparams<'_> {
    /// `<arch>.<name>`.
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.family.gguf_name())
    }
    /// A config value, or the family's default for it.
    pub fn get(&self, key: &str) -> Option<Json> {
        self.cfg
            .get(key)
            .cloned()
            .or_else(|| self.family.config_default(self.hf_arch, key))
    }
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_u64().with_context(|| {
                    format!(
                        "{}: {key} is {v}, not a non-negative integer",
                        self.cfg.path
                    )
                })?;
                Ok(Some(u32::try_from(n).with_context(|| {
                    format!("{}: {key} = {n} does not fit in 32 bits", self.cfg.path)
                })?))
            }
        }
    }
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.as_f64()
                    .with_context(|| format!("{}: {key} is {v}, not a number", self.cfg.path))?
                    as f32,
            )),
        }
    }
}

/// What `prepare` hands to the quantizer.
pub struct Converted {
    pub metadata: Metadata,
    pub jobs: Vec<Job>,
    pub facts: ModelFacts,
    pub notes: Vec<String>,
}

/// Messages name config.json's keys: the one the value came from, or the first the family
/// reads when config.json leaves it out.
struct ConfigLabels<'a> {
    cfg: &'a Config,
    family: &'a dyn Family,
    hf_arch: &'a str,
}

impl shapes::Labels for ConfigLabels<'_> {
    fn file(&self) -> String {
        self.cfg.path.clone()
    }
    fn holder(&self) -> &'static str {
        "the checkpoint"
    }
    fn is_explicit(&self, _hyper: &shapes::Hyper, key: &str) -> bool {
        self.family
            .config_keys(key)
            .iter()
            .any(|k| self.cfg.get(k).is_some())
    }
    fn label(&self, hyper: &shapes::Hyper, key: &str, layer: u64) -> String {
        let v = hyper.get(key, layer);
        let keys = self.family.config_keys(key);
        if let Some(k) = keys.iter().find(|k| self.cfg.get(k).is_some()) {
            format!("{k} = {v}")
        } else if key == shapes::VOCAB {
            format!("the tokenizer's {v} tokens")
        } else if matches!(
            key,
            "attention.key_length" | "attention.value_length" | "rope.dimension_count"
        ) && self
            .family
            .config_default(self.hf_arch, "head_dim")
            .is_none()
        {
            // head_dim = hidden_size / num_attention_heads, as prepare derives it.
            let named = |gk: &str| {
                let ks = self.family.config_keys(gk);
                ks.iter()
                    .find(|k| self.cfg.get(k).is_some())
                    .or(ks.first())
                    .copied()
                    .unwrap_or("?")
            };
            format!(
                "head_dim = {} / {} = {} / {} = {v}",
                named("embedding_length"),
                named("attention.head_count"),
                hyper.get("embedding_length", layer),
                hyper.get("attention.head_count", layer),
            )
        } else if let Some(k) = keys.first() {
            format!("{k} (not in config.json) = {v}")
        } else {
            format!("{}.{key} = {v}", self.family.gguf_name())
        }
    }
}

/// Tensors of multimodal checkpoints that a text-only conversion leaves out.
fn is_other_modality(hf: &str) -> bool {
    hf.starts_with("vision_tower.")
        || hf.starts_with("multi_modal_projector.")
        || hf.starts_with("model.vision_tower.")
        || hf.starts_with("model.multi_modal_projector.")
        || hf.starts_with("audio_tower.")
}

/// Plans a Hugging Face checkpoint's conversion: metadata and one job per output tensor.
pub fn prepare(ck: &Checkpoint, ftype: FileType) -> Result<Converted> {
    let cfg = Config::new(ck);
    let (family, hf_arch) = detect(&ck.config, &cfg.path)?;
    let a = family.gguf_name();
    let mut notes = vec![format!("architecture {hf_arch} -> {a}")];

    let small = |keys: &[&str], v: u64| -> Result<u32> {
        u32::try_from(v).with_context(|| {
            format!(
                "{}: {} = {v} does not fit in the 32 bits GGUF stores it in",
                cfg.path, keys[0]
            )
        })
    };
    const LAYERS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers"];
    const EMBD: &[&str] = &["hidden_size", "n_embd", "dim"];
    const HEADS: &[&str] = &["num_attention_heads", "n_head", "n_heads"];
    const KV_HEADS: &[&str] = &["num_key_value_heads", "n_kv_heads"];
    let n_layer_raw = cfg
        .need_uint(LAYERS)?
        .saturating_add(family.extra_blocks(&cfg)?);
    let n_embd = cfg.need_uint(EMBD)?;
    let n_head = cfg.need_uint(HEADS)?;
    let n_head_kv = cfg.uint(KV_HEADS)?.unwrap_or(n_head);

    // The tensors as they will be named, for the checks below (nothing is sized by the
    // config's values before these).
    let named: Vec<(String, Vec<u64>)> = ck
        .tensors
        .iter()
        .filter(|t| !is_other_modality(&t.name) && !family.skips(&t.name, &cfg))
        .filter_map(|t| {
            let g = base::tensor_name(family, &t.name)?;
            family
                .keeps(&g)
                .then(|| (g, t.shape.iter().rev().map(|&d| d as u64).collect()))
        })
        .collect();
    let labels = ConfigLabels {
        cfg: &cfg,
        family,
        hf_arch: &hf_arch,
    };
    {
        let mut md = Metadata::new();
        md.set(format!("{a}.block_count"), Value::U64(n_layer_raw));
        let hyper = shapes::Hyper::new(a, &md);
        let first = family
            .loader_tensors(&hyper)
            .layer
            .iter()
            .find(|s| s.required)
            .map(|s| s.name);
        shapes::check_layer_count(&hyper, &labels, &named, first)?;
    }
    let n_layer = small(LAYERS, n_layer_raw)?;
    if n_embd == 0 {
        bail!("{}: hidden_size = 0: a model needs a hidden size", cfg.path);
    }
    small(EMBD, n_embd)?;
    let n_head = small(HEADS, n_head)?;
    let n_head_kv = small(KV_HEADS, n_head_kv)?;
    if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
        bail!(
            "{}: {n_head} attention heads cannot share {n_head_kv} key-value heads",
            cfg.path
        );
    }
    let head_dim = match cfg.uint(&["head_dim"])? {
        Some(d) => d,
        None => match family
            .config_default(&hf_arch, "head_dim")
            .and_then(|v| v.as_u64())
        {
            Some(d) => d,
            None => {
                if !n_embd.is_multiple_of(n_head as u64) {
                    bail!(
                        "{}: hidden_size = {n_embd} is not a multiple of num_attention_heads = {n_head}, and there is no head_dim",
                        cfg.path
                    );
                }
                n_embd / n_head as u64
            }
        },
    };
    if head_dim == 0 {
        bail!("{}: head_dim = 0: attention heads need a size", cfg.path);
    }
    small(&["head_dim"], head_dim)?;
    let vocab_size = cfg.uint(&["vocab_size"])?;
    if let (Some(v), Some((_, dims))) = (
        vocab_size,
        named.iter().find(|(n, _)| n == "token_embd.weight"),
    ) {
        // The vocabulary is padded to vocab_size: never past the embedding's rows.
        if dims.len() == 2 && v > dims[1] {
            bail!(
                "{}: vocab_size = {v} gives token_embd.weight {} x {v}, the checkpoint has {} x {}",
                cfg.path,
                dims[0],
                dims[0],
                dims[1]
            );
        }
    }
    let hp = Hparams {
        cfg: &cfg,
        hf_arch: &hf_arch,
        family,
        n_layer,
        n_embd,
        n_head,
        n_head_kv,
        head_dim,
    };

    let mut md = Metadata::new();
    md.set_str(keys::ARCHITECTURE, a);
    md.set_str("general.type", "model");
    let name = ck
        .dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    general::sampling_keys(&ck.dir, &mut md)?;
    md.set_str("general.name", general::id_to_title(&name));
    md.set_u32(keys::FILE_TYPE, ftype.id());
    family.write_hparams(&hp, &mut md)?;
    // convert_hf_to_gguf.py: set_gguf_parameters, then the quantization version, then the vocab.
    md.set(
        keys::QUANTIZATION_VERSION,
        Value::U32(keys::GGML_QNT_VERSION),
    );

    let vocab_size = vocab_size.map(|v| v as usize);
    let vocab = crate::tokenizer::write_vocab(&ck.dir, family.vocab(), vocab_size, &mut md)?;
    notes.push(format!(
        "tokenizer: {} model, {} tokens{}",
        vocab.model,
        vocab.n_tokens,
        vocab
            .pre
            .as_ref()
            .map(|p| format!(", pre-tokenizer {p:?} ({})", vocab.pre_reason))
            .unwrap_or_default()
    ));

    // Tensors.
    let layout = family.experts();
    let experts = match &layout {
        Some(l) => {
            let mut x = moe::experts(&hp, l)?;
            x.first_layer = family.first_moe_layer(&hp)?;
            Some(x)
        }
        None => None,
    };
    let mut expert_tensors = moe::Collected::default();
    let mut jobs = Vec::new();
    let mut claimed = Vec::new();
    for (index, t) in ck.tensors.iter().enumerate() {
        if is_other_modality(&t.name) || family.skips(&t.name, &cfg) {
            continue;
        }
        if family.claims(&t.name) {
            claimed.push(index);
            continue;
        }
        if let Some(l) = &layout {
            let found = base::layer_and_rest(&t.name)
                .and_then(|(layer, rest)| Some((layer, moe::classify(l, &rest)?)));
            if let Some((layer, found)) = found {
                expert_tensors.add(layer, found, index);
                continue;
            }
        }
        let Some(gname) = base::tensor_name(family, &t.name) else {
            if t.name.ends_with(".rotary_emb.inv_freq") {
                continue;
            }
            bail!(
                "{}: tensor {} has no GGUF name for {hf_arch} (an unexpected tensor for this architecture)",
                ck.file_of(t).display(),
                t.name
            );
        };
        if !family.keeps(&gname) {
            continue;
        }
        let dtype = match &t.dtype {
            Ok(d) => *d,
            Err(other) => bail!(
                "{}: tensor {} has dtype {other}; kiln converts F32, F16 and BF16 tensors (and F8_E4M3 with quantization_config.quant_method fp8)",
                ck.file_of(t).display(),
                t.name
            ),
        };
        if t.shape.is_empty() || t.shape.len() > 4 || t.shape.contains(&0) {
            bail!(
                "{}: tensor {} has shape {:?}",
                ck.file_of(t).display(),
                t.name,
                t.shape
            );
        }
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let transform = family.transform(t, &hp);
        let input_type = hf_input_type(&gname, &dims, dtype);
        jobs.push(Job {
            name: gname,
            dims,
            input_type,
            out_type: input_type,
            fallback_from: None,
            source: TensorSource::Input { index, transform },
        });
    }
    if let (Some(l), Some(x)) = (&layout, &experts) {
        moe::check_routers(ck, &hp, x, &jobs)?;
        jobs.extend(moe::stack(ck, &hp, l, x, expert_tensors, hf_input_type)?);
        notes.push(format!(
            "{} experts per layer ({} used per token), each {} wide, stacked into ffn_*_exps",
            x.n_expert, x.n_used, x.n_ff
        ));
    }
    if !claimed.is_empty() {
        jobs.extend(family.claimed_jobs(ck, &hp, &claimed)?);
    }
    family.finish(&hp, &md, &mut jobs, &mut notes)?;
    if !jobs.iter().any(|j| j.name == "token_embd.weight") {
        bail!("{}: no model.embed_tokens.weight tensor", ck.dir.display());
    }
    // Every tensor against the shape llama.cpp's loader computes from the keys just written.
    let written: Vec<(String, Vec<u64>)> = jobs
        .iter()
        .map(|j| (j.name.clone(), j.dims.clone()))
        .collect();
    shapes::check(family, &md, &labels, &written)?;
    for j in &jobs {
        if let TensorSource::Input {
            index,
            transform: Transform::PermuteHeads { n_head },
        } = j.source
        {
            let rows = j.dims.last().copied().unwrap_or(0) as usize;
            if !rows.is_multiple_of(2 * n_head) {
                let t = &ck.tensors[index];
                bail!(
                    "{}: tensor {} has {rows} rows, not a whole number of {n_head} heads",
                    ck.file_of(t).display(),
                    t.name
                );
            }
        }
    }
    // The model card's keys (general.name through general.languages) where gguf-py writes
    // them, in place of general.name.
    let total_params = jobs.iter().map(|j| j.n_elements()).sum();
    let card = general::model_card_keys(
        &ck.dir,
        &ck.config,
        &name,
        total_params,
        size_label_of(&jobs),
        &mut notes,
    );
    let mut with_card = Metadata::new();
    for (k, v) in md.iter() {
        if k == "general.name" {
            for (ck, cv) in &card {
                with_card.set(ck.clone(), cv.clone());
            }
        } else if !card.iter().any(|(ck, _)| ck == k) {
            with_card.set(k, v.clone());
        }
    }
    md = with_card;
    let facts = ModelFacts {
        arch: a.to_string(),
        n_layer,
        n_head,
        // What the file says (DeepSeek's MLA is written as one KV head).
        n_head_kv: match md.get(&format!("{a}.attention.head_count_kv")) {
            Some(Value::U32(n)) => *n,
            _ => n_head_kv,
        },
        is_70b: family.is_70b(n_layer, n_head, n_head_kv),
        n_expert: match md.get(&format!("{a}.expert_count")) {
            Some(Value::U32(n)) => *n,
            _ => 0,
        },
    };
    Ok(Converted {
        metadata: md,
        jobs,
        facts,
        notes,
    })
}

/// gguf-py's size label of a model's tensors (`get_total_parameter_count` and `size_label`):
/// the parameter count ("494M"), or for experts `{n_expert}x{shared + one expert's}`
/// ("128x3.3B"), the expert count averaged over the `_exps.` tensors.
fn size_label_of(jobs: &[Job]) -> String {
    let (mut total, mut shared, mut expert) = (0u64, 0u64, 0u64);
    let (mut expert_sum, mut n_expert_tensors) = (0u64, 0u64);
    for j in jobs {
        let size = j.n_elements();
        total += size;
        if j.name.contains("_exps.") && j.dims.len() >= 3 {
            let count = if j.name.contains(".bias") {
                j.dims[1]
            } else {
                j.dims[2]
            }
            .max(1);
            expert += size / count;
            expert_sum += count;
            n_expert_tensors += 1;
        } else {
            shared += size;
        }
    }
    match expert_sum.checked_div(n_expert_tensors) {
        Some(n_expert) => format!("{n_expert}x{}", size_label(shared + expert)),
        None => size_label(total),
    }
}

/// The type convert_hf_to_gguf.py gives a tensor before llama-quantize sees it: F32 for 1-D
/// tensors and norms, otherwise the source precision.
fn hf_input_type(gguf_name: &str, dims: &[u64], dtype: SrcDtype) -> TypeId {
    let n_dims = dims.iter().filter(|&&d| d > 1).count().max(1);
    // convert keeps routers in f32 (its list of "always F32" tensors).
    if n_dims <= 1
        || gguf_name.ends_with("_norm.weight")
        || !gguf_name.ends_with(".weight")
        || gguf_name.contains(".ffn_gate_inp.")
    {
        return TypeId::of(GgmlType::F32);
    }
    TypeId::of(match dtype {
        SrcDtype::F32 => GgmlType::F32,
        SrcDtype::F16 => GgmlType::F16,
        SrcDtype::BF16 => GgmlType::BF16,
        // Dequantized fp8 (f32 values): convert writes them at the file's 16-bit type, which
        // it guesses from the first 2-D bf16/f16 tensor; fp8 releases keep their other
        // tensors (embeddings, norms, routers) in bf16.
        SrcDtype::F8E4M3 => GgmlType::BF16,
    })
}
