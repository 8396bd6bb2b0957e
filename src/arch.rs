//! Architectures: how a Hugging Face checkpoint's config.json and tensors become GGUF metadata
//! and tensors, as llama.cpp's convert_hf_to_gguf.py does it for the dense decoders kiln
//! supports (tensor names, Llama's q/k permutation, Gemma's norm shift, tied embeddings, the
//! `<arch>.*` keys).

use crate::convert::{Job, TensorSource, Transform};
use crate::gguf::{Array, Metadata, TypeId, Value};
use crate::plan::{FileType, ModelFacts};
use crate::source::{Checkpoint, SrcDtype};
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use serde_json::Value as Json;

/// The architectures kiln converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
}

/// Hugging Face `architectures` names and what they map to.
pub const SUPPORTED: [(&str, Arch); 9] = [
    ("LlamaForCausalLM", Arch::Llama),
    ("LLaMAForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
    ("Gemma2ForCausalLM", Arch::Gemma2),
    ("Gemma3ForCausalLM", Arch::Gemma3),
    ("Gemma3ForConditionalGeneration", Arch::Gemma3),
    ("LlamaModel", Arch::Llama),
];

impl Arch {
    pub const ALL: [Arch; 5] = [
        Arch::Llama,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gemma2,
        Arch::Gemma3,
    ];

    /// The `architectures[0]` value Hugging Face writes in config.json.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Gemma2 => "Gemma2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// The `model_type` in config.json (the text-only Gemma 3 is `gemma3_text`).
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
        }
    }

    /// `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
    }

    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// From config.json's `architectures`.
    pub fn detect(config: &Json, path: &str) -> Result<(Arch, String)> {
        let names: Vec<&str> = config
            .get("architectures")
            .and_then(Json::as_array)
            .map(|a| a.iter().filter_map(Json::as_str).collect())
            .unwrap_or_default();
        let Some(first) = names.first() else {
            bail!("{path}: no \"architectures\" list, so the model type is unknown");
        };
        for (hf, arch) in SUPPORTED {
            if *first == hf {
                return Ok((arch, hf.to_string()));
            }
        }
        let list: Vec<&str> = SUPPORTED.iter().map(|(n, _)| *n).collect();
        bail!(
            "{path}: architecture {first} is not supported; kiln converts {}",
            list.join(", ")
        )
    }
}

/// A Hugging Face config, with Gemma 3's text_config merged over the top level as
/// convert_hf_to_gguf.py does.
pub struct Config {
    json: Json,
    path: String,
}

impl Config {
    pub fn new(ck: &Checkpoint) -> Config {
        let mut json = ck.config.clone();
        if let Some(text) = ck
            .config
            .get("text_config")
            .and_then(Json::as_object)
            .cloned()
        {
            if let Some(obj) = json.as_object_mut() {
                for (k, v) in text {
                    obj.insert(k, v);
                }
            }
        }
        Config {
            json,
            path: ck.dir.join("config.json").display().to_string(),
        }
    }
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }
    /// The first of `keys` present, as an unsigned integer.
    pub fn uint(&self, keys: &[&str]) -> Result<Option<u64>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v.as_u64().map(Some).with_context(|| {
                    format!("{}: {k} is {v}, not a non-negative integer", self.path)
                });
            }
        }
        Ok(None)
    }
    pub fn need_uint(&self, keys: &[&str]) -> Result<u64> {
        self.uint(keys)?
            .with_context(|| format!("{}: missing {} (needed to convert)", self.path, keys[0]))
    }
    pub fn float(&self, keys: &[&str]) -> Result<Option<f64>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v
                    .as_f64()
                    .map(Some)
                    .with_context(|| format!("{}: {k} is {v}, not a number", self.path));
            }
        }
        Ok(None)
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Json::as_bool)
    }
    /// HF's rope parameters: `rope_parameters` (new transformers) or `rope_scaling` plus
    /// `rope_theta`.
    pub fn rope(&self) -> serde_json::Map<String, Json> {
        let mut m = serde_json::Map::new();
        if let Some(obj) = self.get("rope_scaling").and_then(Json::as_object) {
            m.extend(obj.clone());
        }
        if let Some(obj) = self.get("rope_parameters").and_then(Json::as_object) {
            let inner = obj
                .get("full_attention")
                .and_then(Json::as_object)
                .unwrap_or(obj);
            m.extend(inner.clone());
        }
        if let Some(t) = self.get("rope_theta") {
            m.entry("rope_theta").or_insert(t.clone());
        }
        if let Some(t) = m.get("type").cloned() {
            m.entry("rope_type").or_insert(t);
        }
        m
    }
}

/// What `prepare` hands to the quantizer.
pub struct Converted {
    pub metadata: Metadata,
    pub jobs: Vec<Job>,
    pub facts: ModelFacts,
    pub notes: Vec<String>,
}

/// The GGUF name of a Hugging Face tensor, or None for tensors convert drops.
fn map_name(arch: Arch, hf: &str) -> Option<String> {
    let name = hf
        .strip_prefix("language_model.")
        .or_else(|| hf.strip_prefix("model.language_model."))
        .map(|r| {
            if r.starts_with("model.") || r.starts_with("lm_head") {
                r.to_string()
            } else {
                format!("model.{r}")
            }
        })
        .unwrap_or_else(|| hf.to_string());
    if name.ends_with(".rotary_emb.inv_freq") {
        return None;
    }
    match name.as_str() {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (bid, rest) = rest.split_once('.')?;
    let bid: u32 = bid.parse().ok()?;
    let post_attn = if arch.is_gemma() {
        "post_attention_norm.weight"
    } else {
        "ffn_norm.weight"
    };
    let g = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => post_attn,
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{bid}.{g}"))
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
    let (arch, hf_arch) = Arch::detect(&ck.config, &cfg.path)?;
    let a = arch.gguf_name();
    let mut notes = vec![format!("architecture {hf_arch} -> {a}")];

    let n_layer = cfg.need_uint(&["num_hidden_layers", "n_layer", "num_layers"])? as u32;
    let n_embd = cfg.need_uint(&["hidden_size", "n_embd", "dim"])?;
    let n_head = cfg.need_uint(&["num_attention_heads", "n_head", "n_heads"])? as u32;
    let n_head_kv = cfg
        .uint(&["num_key_value_heads", "n_kv_heads"])?
        .unwrap_or(n_head as u64) as u32;
    if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
        bail!(
            "{}: {n_head} attention heads cannot share {n_head_kv} key-value heads",
            cfg.path
        );
    }
    let head_dim = match cfg.uint(&["head_dim"])? {
        Some(d) => d,
        None => default_of(&hf_arch, "head_dim")
            .and_then(|v| v.as_u64())
            .unwrap_or(n_embd / n_head as u64),
    };

    let mut md = Metadata::new();
    md.set_str("general.architecture", a);
    md.set_str("general.type", "model");
    let name = ck
        .dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    sampling_keys(&ck.dir, &mut md)?;
    md.set_str("general.name", id_to_title(&name));
    md.set_u32("general.file_type", ftype.id());
    write_hparams(arch, &hf_arch, &cfg, &mut md, n_layer, head_dim)?;

    let vocab_size = cfg.uint(&["vocab_size"])?.map(|v| v as usize);
    let vocab = crate::tokenizer::write_vocab(&ck.dir, a, vocab_size, &mut md)?;
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
    md.set(
        "general.quantization_version",
        Value::U32(crate::quantize::QUANTIZATION_VERSION),
    );

    // Tensors.
    let mut jobs = Vec::new();
    for (index, t) in ck.tensors.iter().enumerate() {
        if is_other_modality(&t.name) {
            continue;
        }
        let Some(gname) = map_name(arch, &t.name) else {
            if t.name.ends_with(".rotary_emb.inv_freq") {
                continue;
            }
            bail!(
                "{}: tensor {} has no GGUF name for {hf_arch} (an unexpected tensor for this architecture)",
                ck.file_of(t).display(),
                t.name
            );
        };
        if gname == "output.weight" && arch == Arch::Gemma2 {
            // Gemma 2 ties the output to the embedding; convert skips lm_head.
            continue;
        }
        let dtype = match &t.dtype {
            Ok(d) => *d,
            Err(other) => bail!(
                "{}: tensor {} has dtype {other}; kiln converts F32, F16 and BF16 tensors",
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
        let mut transform = Transform::None;
        if arch == Arch::Llama {
            if t.name.ends_with("q_proj.weight") || t.name.ends_with("q_proj.bias") {
                transform = Transform::PermuteHeads {
                    n_head: n_head as usize,
                };
            } else if t.name.ends_with("k_proj.weight") || t.name.ends_with("k_proj.bias") {
                transform = Transform::PermuteHeads {
                    n_head: n_head_kv as usize,
                };
            }
            if let Transform::PermuteHeads { n_head } = transform {
                let rows = t.shape[0];
                if rows % (2 * n_head) != 0 {
                    bail!(
                        "{}: tensor {} has {rows} rows, not a whole number of {n_head} heads",
                        ck.file_of(t).display(),
                        t.name
                    );
                }
            }
        }
        if arch.is_gemma() && t.name.ends_with("norm.weight") {
            transform = Transform::AddOne;
        }
        let input_type = hf_input_type(&gname, &dims, dtype);
        jobs.push(Job {
            name: gname,
            dims,
            input_type,
            out_type: input_type,
            fallback_from: None,
            source: TensorSource::Hf {
                index,
                dtype,
                transform,
            },
        });
    }
    // Gemma 3 drops embedding rows past the real vocabulary (convert's n_vocab_real).
    if arch == Arch::Gemma3 {
        if let Some(Value::Array(Array::Str(tokens))) = md.get("tokenizer.ggml.tokens") {
            let n = tokens.len() as u64;
            if let Some(j) = jobs.iter_mut().find(|j| j.name == "token_embd.weight") {
                if j.dims[1] > n {
                    notes.push(format!(
                        "token_embd.weight: {} rows kept of {}",
                        n, j.dims[1]
                    ));
                    j.dims[1] = n;
                }
            }
        }
    }
    if arch == Arch::Llama {
        if let Some(t) = rope_freqs_tensor(&cfg, head_dim)? {
            jobs.push(t);
        }
    }
    if !jobs.iter().any(|j| j.name == "token_embd.weight") {
        bail!("{}: no model.embed_tokens.weight tensor", ck.dir.display());
    }
    let n_params: u64 = jobs.iter().map(|j| j.n_elements()).sum();
    if md.get("general.size_label").is_none() {
        // Placed after general.name, where gguf-py writes it.
        let mut with_label = Metadata::new();
        for (k, v) in md.iter() {
            with_label.set(k, v.clone());
            if k == "general.name" {
                with_label.set("general.size_label", Value::Str(size_label(n_params)));
            }
        }
        md = with_label;
    }
    let facts = ModelFacts {
        arch: a.to_string(),
        n_layer,
        n_head,
        n_head_kv,
    };
    Ok(Converted {
        metadata: md,
        jobs,
        facts,
        notes,
    })
}

/// The type convert_hf_to_gguf.py gives a tensor before llama-quantize sees it: F32 for 1-D
/// tensors and norms, otherwise the source precision.
fn hf_input_type(gguf_name: &str, dims: &[u64], dtype: SrcDtype) -> TypeId {
    let n_dims = dims.iter().filter(|&&d| d > 1).count().max(1);
    if n_dims <= 1 || gguf_name.ends_with("_norm.weight") || !gguf_name.ends_with(".weight") {
        return TypeId::of(GgmlType::F32);
    }
    TypeId::of(match dtype {
        SrcDtype::F32 => GgmlType::F32,
        SrcDtype::F16 => GgmlType::F16,
        SrcDtype::BF16 => GgmlType::BF16,
    })
}

/// transformers' config-class defaults that convert_hf_to_gguf.py sees (it reads
/// `AutoConfig(...).to_dict()`, not the raw file).
fn default_of(hf_arch: &str, key: &str) -> Option<Json> {
    let v = match (key, hf_arch) {
        ("rope_theta", "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration") => {
            Json::from(1_000_000.0)
        }
        ("rope_theta", "Gemma2ForCausalLM") => return None,
        ("rope_theta", _) => Json::from(10_000.0),
        ("rms_norm_eps", _) => Json::from(1e-6),
        ("max_position_embeddings", "LlamaForCausalLM" | "LLaMAForCausalLM" | "LlamaModel") => {
            Json::from(2048)
        }
        ("max_position_embeddings", "MistralForCausalLM") => Json::from(131072),
        ("max_position_embeddings", "Qwen2ForCausalLM" | "Qwen3ForCausalLM") => Json::from(32768),
        ("max_position_embeddings", "Gemma2ForCausalLM") => Json::from(8192),
        ("max_position_embeddings", _) => Json::from(131072),
        ("head_dim", "Qwen3ForCausalLM") => Json::from(128),
        (
            "head_dim",
            "Gemma2ForCausalLM" | "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration",
        ) => Json::from(256),
        ("rope_local_base_freq", "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration") => {
            Json::from(10_000.0)
        }
        (
            "sliding_window",
            "Gemma2ForCausalLM" | "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration",
        ) => Json::from(4096),
        ("attn_logit_softcapping", "Gemma2ForCausalLM") => Json::from(50.0),
        ("final_logit_softcapping", "Gemma2ForCausalLM") => Json::from(30.0),
        _ => return None,
    };
    Some(v)
}

fn write_hparams(
    arch: Arch,
    hf_arch: &str,
    cfg: &Config,
    md: &mut Metadata,
    n_layer: u32,
    head_dim: u64,
) -> Result<()> {
    let a = arch.gguf_name();
    let k = |s: &str| format!("{a}.{s}");
    let get = |key: &str| cfg.get(key).cloned().or_else(|| default_of(hf_arch, key));
    let get_u32 = |key: &str| -> Result<Option<u32>> {
        match get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_u64().with_context(|| {
                    format!("{}: {key} is {v}, not a non-negative integer", cfg.path)
                })?;
                Ok(Some(u32::try_from(n).with_context(|| {
                    format!("{}: {key} = {n} does not fit in 32 bits", cfg.path)
                })?))
            }
        }
    };
    let get_f32 = |key: &str| -> Result<Option<f32>> {
        match get(key) {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.as_f64()
                    .with_context(|| format!("{}: {key} is {v}, not a number", cfg.path))?
                    as f32,
            )),
        }
    };
    let n_ctx = get_u32("max_position_embeddings")?;
    let n_embd = cfg.need_uint(&["hidden_size", "n_embd", "dim"])? as u32;
    let n_ff = get_u32("intermediate_size")?;
    let n_head = cfg.need_uint(&["num_attention_heads", "n_head", "n_heads"])? as u32;
    let n_head_kv = get_u32("num_key_value_heads")?.unwrap_or(n_head);
    let eps = get_f32("rms_norm_eps")?;
    let explicit_head_dim = cfg.get("head_dim").is_some()
        || default_of(hf_arch, "head_dim").is_some()
        || matches!(
            hf_arch,
            "LlamaForCausalLM" | "LLaMAForCausalLM" | "LlamaModel"
        );
    let file_type = md.get("general.file_type").cloned();

    if arch == Arch::Gemma2 {
        // Gemma2Model.set_gguf_parameters does not call the base class: its own order.
        if let Some(v) = n_ctx {
            md.set(k("context_length"), Value::U32(v));
        }
        md.set(k("embedding_length"), Value::U32(n_embd));
        md.set(k("block_count"), Value::U32(n_layer));
        if let Some(v) = n_ff {
            md.set(k("feed_forward_length"), Value::U32(v));
        }
        md.set(k("attention.head_count"), Value::U32(n_head));
        md.set(k("attention.head_count_kv"), Value::U32(n_head_kv));
        if let Some(e) = eps {
            md.set(k("attention.layer_norm_rms_epsilon"), Value::F32(e));
        }
        md.set(k("attention.key_length"), Value::U32(head_dim as u32));
        md.set(k("attention.value_length"), Value::U32(head_dim as u32));
        if let Some(ft) = file_type {
            md.set("general.file_type", ft);
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(v) = get_f32(key)? {
                md.set(k(key), Value::F32(v));
            }
        }
        if let Some(v) = get_u32("sliding_window")? {
            md.set(k("attention.sliding_window"), Value::U32(v));
        }
        return Ok(());
    }

    md.set(k("block_count"), Value::U32(n_layer));
    if let Some(v) = n_ctx {
        md.set(k("context_length"), Value::U32(v));
    }
    md.set(k("embedding_length"), Value::U32(n_embd));
    if let Some(v) = n_ff {
        md.set(k("feed_forward_length"), Value::U32(v));
    }
    md.set(k("attention.head_count"), Value::U32(n_head));
    md.set(k("attention.head_count_kv"), Value::U32(n_head_kv));
    if cfg.bool("is_causal") == Some(false) {
        md.set(k("attention.causal"), Value::Bool(false));
    }
    let rope = cfg.rope();
    if let Some(rt) = rope.get("rope_type").and_then(Json::as_str) {
        let factor = rope.get("factor").and_then(Json::as_f64);
        match (rt, factor) {
            ("linear", Some(f)) => {
                md.set(k("rope.scaling.type"), Value::Str("linear".into()));
                md.set(k("rope.scaling.factor"), Value::F32(f as f32));
            }
            ("yarn", Some(f)) => {
                md.set(k("rope.scaling.type"), Value::Str("yarn".into()));
                md.set(k("rope.scaling.factor"), Value::F32(f as f32));
                let orig = rope
                    .get("original_max_position_embeddings")
                    .and_then(Json::as_u64)
                    .with_context(|| {
                        format!(
                            "{}: yarn rope scaling without original_max_position_embeddings",
                            cfg.path
                        )
                    })?;
                md.set(
                    k("rope.scaling.original_context_length"),
                    Value::U32(orig as u32),
                );
                for (src, dst) in [
                    ("extrapolation_factor", "yarn_ext_factor"),
                    ("attention_factor", "yarn_attn_factor"),
                    ("attn_factor", "yarn_attn_factor"),
                    ("beta_fast", "yarn_beta_fast"),
                    ("beta_slow", "yarn_beta_slow"),
                ] {
                    if let Some(v) = rope.get(src).and_then(Json::as_f64) {
                        md.set(k(&format!("rope.scaling.{dst}")), Value::F32(v as f32));
                    }
                }
            }
            ("su" | "longrope", _) => md.set(k("rope.scaling.type"), Value::Str("longrope".into())),
            _ => {}
        }
    }
    let theta = rope
        .get("rope_theta")
        .and_then(Json::as_f64)
        .or_else(|| get("rope_theta").and_then(|v| v.as_f64()));
    if let Some(t) = theta {
        md.set(k("rope.freq_base"), Value::F32(t as f32));
    }
    if let Some(t) = get_f32("rope_local_base_freq")? {
        md.set(k("rope.freq_base_swa"), Value::F32(t));
    }
    if let Some(e) = eps {
        md.set(k("attention.layer_norm_rms_epsilon"), Value::F32(e));
    }
    if explicit_head_dim {
        md.set(k("attention.key_length"), Value::U32(head_dim as u32));
        md.set(k("attention.value_length"), Value::U32(head_dim as u32));
    }
    if let Some(ft) = file_type {
        md.set("general.file_type", ft);
    }
    match arch {
        Arch::Llama => {
            if let Some(v) = cfg.uint(&["vocab_size"])?.or(Some(32000)) {
                md.set(k("vocab_size"), Value::U32(v as u32));
            }
            md.set(k("rope.dimension_count"), Value::U32(head_dim as u32));
        }
        Arch::Gemma3 => {
            if let Some(v) = cfg
                .float(&["final_logit_softcapping"])?
                .filter(|&v| v != 0.0)
            {
                md.set(k("final_logit_softcapping"), Value::F32(v as f32));
            }
            if cfg.uint(&["sliding_window_pattern"])? != Some(1) {
                if let Some(v) = get_u32("sliding_window")? {
                    md.set(k("attention.sliding_window"), Value::U32(v));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `general.sampling.*` from generation_config.json, as gguf-py's metadata.py writes them.
fn sampling_keys(dir: &std::path::Path, md: &mut Metadata) -> Result<()> {
    let p = dir.join("generation_config.json");
    if !p.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let j: Json =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
    let ints = ["top_k", "penalty_last_n", "mirostat"];
    for (src, dst) in [
        ("sequence", "sequence"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("xtc_probability", "xtc_probability"),
        ("xtc_threshold", "xtc_threshold"),
        ("temperature", "temp"),
        ("penalty_last_n", "penalty_last_n"),
        ("penalty_repeat", "penalty_repeat"),
        ("repetition_penalty", "penalty_repeat"),
        ("mirostat", "mirostat"),
        ("mirostat_tau", "mirostat_tau"),
        ("mirostat_eta", "mirostat_eta"),
    ] {
        let Some(v) = j.get(src).filter(|v| !v.is_null()) else {
            continue;
        };
        let key = format!("general.sampling.{dst}");
        if md.get(&key).is_some() {
            continue;
        }
        if dst == "sequence" {
            if let Some(s) = v.as_str() {
                md.set(key, Value::Str(s.into()));
            }
        } else if ints.contains(&dst) {
            if let Some(n) = v.as_i64() {
                md.set(key, Value::I32(n as i32));
            }
        } else if let Some(x) = v.as_f64() {
            md.set(key, Value::F32(x as f32));
        }
    }
    Ok(())
}

/// gguf-py's `id_to_title`: words title-cased unless they hold capitals or are versions.
fn id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let is_version = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.starts_with('v')
                    && w[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
                    && w.len() > 1);
            if w.chars().any(|c| c.is_uppercase()) || is_version {
                w.to_string()
            } else {
                let mut out = String::new();
                let mut prev_alpha = false;
                for c in w.chars() {
                    if c.is_alphabetic() {
                        if prev_alpha {
                            out.extend(c.to_lowercase());
                        } else {
                            out.extend(c.to_uppercase());
                        }
                        prev_alpha = true;
                    } else {
                        out.push(c);
                        prev_alpha = false;
                    }
                }
                out
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// gguf-py's `size_label` for a dense model of `n` parameters ("494M", "1.2B").
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (x, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let r = x.round_ties_even() as u64;
    let digits = if r == 0 { 0 } else { r.to_string().len() };
    let fix = 2usize.saturating_sub(digits);
    format!("{x:.fix$}{suffix}")
}

/// Llama 3's `rope_freqs.weight` (convert's generate_extra_tensors for rope_type "llama3").
fn rope_freqs_tensor(cfg: &Config, head_dim: u64) -> Result<Option<Job>> {
    let rope = cfg.rope();
    if rope
        .get("rope_type")
        .and_then(Json::as_str)
        .map(|s| s.to_ascii_lowercase())
        != Some("llama3".into())
    {
        return Ok(None);
    }
    let f = |k: &str, d: f64| rope.get(k).and_then(Json::as_f64).unwrap_or(d);
    let factors = llama3_rope_factors(
        f("rope_theta", 10000.0),
        head_dim as usize,
        f("factor", 8.0),
        f("low_freq_factor", 1.0),
        f("high_freq_factor", 4.0),
        f("original_max_position_embeddings", 8192.0),
    );
    Ok(Some(Job {
        name: "rope_freqs.weight".into(),
        dims: vec![factors.len() as u64],
        input_type: TypeId::of(GgmlType::F32),
        out_type: TypeId::of(GgmlType::F32),
        fallback_from: None,
        source: TensorSource::Values(factors),
    }))
}

/// The per-frequency factors, in f32 as torch computes them.
pub fn llama3_rope_factors(
    base: f64,
    dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / (base as f32).powf(i as f32 / dim as f32);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if (wavelen as f64) < high_wavelen {
                1.0
            } else if (wavelen as f64) > low_wavelen {
                factor as f32
            } else {
                let smooth = ((old_ctx as f32) / wavelen - low as f32) / (high as f32 - low as f32);
                1.0 / ((1.0 - smooth) / factor as f32 + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_convert() {
        assert_eq!(
            map_name(Arch::Llama, "model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            map_name(
                Arch::Llama,
                "model.layers.3.post_attention_layernorm.weight"
            )
            .unwrap(),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(
            map_name(
                Arch::Gemma3,
                "model.layers.0.post_attention_layernorm.weight"
            )
            .unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            map_name(
                Arch::Gemma3,
                "model.layers.0.pre_feedforward_layernorm.weight"
            )
            .unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            map_name(
                Arch::Gemma3,
                "language_model.model.layers.0.self_attn.k_norm.weight"
            )
            .unwrap(),
            "blk.0.attn_k_norm.weight"
        );
        assert_eq!(
            map_name(Arch::Qwen2, "model.layers.1.self_attn.v_proj.bias").unwrap(),
            "blk.1.attn_v.bias"
        );
        assert_eq!(
            map_name(Arch::Llama, "lm_head.weight").unwrap(),
            "output.weight"
        );
        assert!(map_name(Arch::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
    }

    #[test]
    fn llama3_factors_span_one_to_factor() {
        let f = llama3_rope_factors(500000.0, 64, 32.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn size_labels_and_titles_follow_gguf_py() {
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(999_999), "1000K");
        assert_eq!(size_label(1000), "1.0K");
        assert_eq!(id_to_title("tiny-random-llama"), "Tiny Random Llama");
        assert_eq!(
            id_to_title("Qwen2.5-0.5B-Instruct"),
            "Qwen2.5 0.5B Instruct"
        );
    }
}
