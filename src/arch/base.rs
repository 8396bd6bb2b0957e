//! What most families share, as convert_hf_to_gguf.py's `TextModel` base class does it: the
//! Hugging Face -> GGUF tensor names, the config defaults every family has, and the
//! `<arch>.*` hyperparameter keys in the base class's order. A family's file overrides what
//! differs through [`Family`]'s methods and calls back into these.

use super::shapes::{self, Dim, Hyper, LoaderTensors};
use super::{Family, Hparams};
use crate::gguf::{Metadata, Value};
use anyhow::{Context, Result};
use serde_json::Value as Json;

/// transformers' config-class defaults that most families share (convert reads
/// `AutoConfig(...).to_dict()`, so a key missing from config.json still has its default).
pub fn config_default(key: &str) -> Option<Json> {
    Some(match key {
        "rope_theta" => Json::from(10_000.0),
        "rms_norm_eps" => Json::from(1e-6),
        _ => return None,
    })
}

/// The GGUF name of a decoder layer's tensor, `rest` being the name after `model.layers.N.`.
pub fn layer_tensor(rest: &str) -> Option<&'static str> {
    Some(match rest {
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
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    })
}

/// A Hugging Face tensor name with a multimodal checkpoint's language-model prefix removed
/// (`language_model.model.X` -> `model.X`).
fn text_name(hf: &str) -> String {
    hf.strip_prefix("language_model.")
        .or_else(|| hf.strip_prefix("model.language_model."))
        .map(|r| {
            if r.starts_with("model.") || r.starts_with("lm_head") {
                r.to_string()
            } else {
                format!("model.{r}")
            }
        })
        .unwrap_or_else(|| hf.to_string())
}

/// A decoder-layer tensor's layer number and the name after `model.layers.N.`.
pub fn layer_and_rest(hf: &str) -> Option<(u32, String)> {
    let name = text_name(hf);
    let rest = name.strip_prefix("model.layers.")?;
    let (bid, rest) = rest.split_once('.')?;
    Some((bid.parse().ok()?, rest.to_string()))
}

/// The GGUF name of a Hugging Face tensor, or None for tensors convert drops or does not know.
pub fn tensor_name<F: Family + ?Sized>(family: &F, hf: &str) -> Option<String> {
    let name = text_name(hf);
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
    let g = family.layer_tensor(rest)?;
    Some(format!("blk.{bid}.{g}"))
}

/// `TextModel.set_gguf_parameters`: the `<arch>.*` keys every family writes, in the base
/// class's order, then the family's own ([`Family::extra_hparams`]).
pub fn write_hparams<F: Family + ?Sized>(
    family: &F,
    hp: &Hparams,
    md: &mut Metadata,
) -> Result<()> {
    let k = |s: &str| hp.key(s);
    let n_ctx = hp.get_u32("max_position_embeddings")?;
    let n_ff = hp.get_u32("intermediate_size")?;
    let eps = hp.get_f32("rms_norm_eps")?;
    let file_type = md.get("general.file_type").cloned();

    md.set(k("block_count"), Value::U32(hp.n_layer));
    if let Some(v) = n_ctx {
        md.set(k("context_length"), Value::U32(v));
    }
    md.set(k("embedding_length"), Value::U32(hp.n_embd as u32));
    if let Some(v) = n_ff {
        md.set(k("feed_forward_length"), Value::U32(v));
    }
    md.set(k("attention.head_count"), Value::U32(hp.n_head));
    md.set(k("attention.head_count_kv"), Value::U32(hp.n_head_kv));
    if hp.cfg.bool("is_causal") == Some(false) {
        md.set(k("attention.causal"), Value::Bool(false));
    }
    let rope = hp.cfg.rope();
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
                            hp.cfg.path
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
        .or_else(|| hp.get("rope_theta").and_then(|v| v.as_f64()));
    if let Some(t) = theta {
        md.set(k("rope.freq_base"), Value::F32(t as f32));
    }
    if let Some(t) = hp.get_f32("rope_local_base_freq")? {
        md.set(k("rope.freq_base_swa"), Value::F32(t));
    }
    if let Some(e) = eps {
        md.set(k("attention.layer_norm_rms_epsilon"), Value::F32(e));
    }
    if let Some((_, n)) = super::moe::find_u32(hp, super::moe::EXPERT_COUNT_KEYS)? {
        md.set(k("expert_count"), Value::U32(n));
    }
    if let Some((_, n)) = super::moe::find_u32(hp, super::moe::EXPERT_USED_KEYS)? {
        md.set(k("expert_used_count"), Value::U32(n));
    }
    // Expert groups (DeepSeek V3's n_group / topk_group) and the router's score function.
    for (src, dst) in [
        ("n_group", "expert_group_count"),
        ("topk_group", "expert_group_used_count"),
    ] {
        // An explicit null stays None (no class default), as in transformers' to_dict().
        if !hp.cfg.is_null(src) && hp.get(src).is_some() {
            if let Some(n) = hp.get_u32(src)? {
                md.set(k(dst), Value::U32(n));
            }
        }
    }
    const SCORE_KEYS: [&str; 6] = [
        "score_function",
        "scoring_func",
        "score_func",
        "moe_router_activation",
        "moe_router_activation_func",
        "expert_selection_fn",
    ];
    if let Some((key, f)) = SCORE_KEYS
        .iter()
        .find_map(|key| hp.cfg.get(key).filter(|v| !v.is_null()).map(|v| (key, v)))
    {
        // gguf's ExpertGatingFuncType.
        let id = match f.as_str() {
            Some("softmax") => 1,
            Some("sigmoid") => 2,
            Some("sqrtsoftplus") => 4,
            _ => anyhow::bail!(
                "{}: {key} = {f}: convert_hf_to_gguf.py knows softmax, sigmoid and sqrtsoftplus",
                hp.cfg.path
            ),
        };
        md.set(k("expert_gating_func"), Value::U32(id));
    }
    let explicit_head_dim = hp.cfg.get("head_dim").is_some()
        || family.config_default(hp.hf_arch, "head_dim").is_some()
        || family.always_writes_head_dim();
    if explicit_head_dim {
        md.set(k("attention.key_length"), Value::U32(hp.head_dim as u32));
        md.set(k("attention.value_length"), Value::U32(hp.head_dim as u32));
    }
    if let Some(ft) = file_type {
        // convert writes it at the end of set_gguf_parameters
        md.set_last("general.file_type", ft);
    }
    family.extra_hparams(hp, md)
}

// Dimension names for llama.cpp's loader (keys after `<arch>.`).
const EMBD: &[&str] = &["embedding_length"];
const FF: &[&str] = &["feed_forward_length"];
const VOCAB: &[&str] = &[shapes::VOCAB];
const HEAD_DIM_K: &[&str] = &["attention.key_length"];
const Q: &[&str] = &["attention.key_length", "attention.head_count"];
const K: &[&str] = &["attention.key_length", "attention.head_count_kv"];
const V: &[&str] = &["attention.value_length", "attention.head_count_kv"];
const ROT: &[&str] = &["rope.dimension_count"];

/// The tensors llama.cpp's loader creates for Llama (src/models/llama.cpp, with
/// `create_tensor_qkv`), which the other dense families start from: token_embd
/// `{n_embd, n_vocab}`, an optional output (tied to token_embd when absent), attn_q
/// `{n_embd, n_embd_head_k * n_head}`, attn_k/v `{n_embd, n_embd_head_k/v * n_head_kv}`,
/// optional q/k/v biases, attn_output `{n_embd_head_k * n_head, n_embd}`, norms `{n_embd}`, ffn
/// `{n_embd, n_ff}` / `{n_ff, n_embd}`, and Llama 3's optional rope_freqs `{n_rot / 2}`. With
/// `expert_count` > 0 (Mixtral is `llama` in GGUF) the feed-forward is the router and stacked
/// experts instead, as llama.cpp's Llama loader does.
pub fn loader_tensors(hyper: &Hyper) -> LoaderTensors {
    use shapes::TensorSpec as T;
    let d = Dim::of;
    let mut t = LoaderTensors {
        global: vec![
            T::required("token_embd.weight", &[d(EMBD), d(VOCAB)]),
            T::required("output_norm.weight", &[d(EMBD)]),
            T::optional("output.weight", &[d(EMBD), d(VOCAB)]),
            T::optional("rope_freqs.weight", &[Dim::half(ROT)]),
        ],
        layer: vec![
            T::required("attn_norm.weight", &[d(EMBD)]),
            T::required("attn_q.weight", &[d(EMBD), d(Q)]),
            T::required("attn_k.weight", &[d(EMBD), d(K)]),
            T::required("attn_v.weight", &[d(EMBD), d(V)]),
            T::optional("attn_q.bias", &[d(Q)]),
            T::optional("attn_k.bias", &[d(K)]),
            T::optional("attn_v.bias", &[d(V)]),
            T::required("attn_output.weight", &[d(Q), d(EMBD)]),
            T::optional("attn_output.bias", &[d(EMBD)]),
            T::required("ffn_norm.weight", &[d(EMBD)]),
        ],
    };
    if hyper.get("expert_count", 0) == 0 {
        t.layer.extend([
            T::required("ffn_gate.weight", &[d(EMBD), d(FF)]),
            T::required("ffn_down.weight", &[d(FF), d(EMBD)]),
            T::required("ffn_up.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_gate.bias", &[d(FF)]),
            T::optional("ffn_down.bias", &[d(EMBD)]),
            T::optional("ffn_up.bias", &[d(FF)]),
        ]);
    } else {
        const EXPERTS: &[&str] = &["expert_count"];
        const SHEXP: &[&str] = &["expert_shared_feed_forward_length"];
        t.layer.extend([
            T::required("ffn_gate_inp.weight", &[d(EMBD), d(EXPERTS)]),
            T::optional("ffn_gate_exps.weight", &[d(EMBD), d(FF), d(EXPERTS)]),
            T::required("ffn_down_exps.weight", &[d(FF), d(EMBD), d(EXPERTS)]),
            T::required("ffn_up_exps.weight", &[d(EMBD), d(FF), d(EXPERTS)]),
        ]);
        if hyper.get(SHEXP[0], 0) > 0 {
            t.layer.extend([
                T::required("ffn_gate_shexp.weight", &[d(EMBD), d(SHEXP)]),
                T::required("ffn_up_shexp.weight", &[d(EMBD), d(SHEXP)]),
                T::required("ffn_down_shexp.weight", &[d(SHEXP), d(EMBD)]),
            ]);
        }
    }
    t
}

/// The per-head q/k RMS norms `{n_embd_head_k}` (Qwen3, Gemma 3), required.
pub fn with_qk_norms(mut t: LoaderTensors) -> LoaderTensors {
    use shapes::TensorSpec as T;
    t.set_layer(T::required("attn_q_norm.weight", &[Dim::of(HEAD_DIM_K)]));
    t.set_layer(T::required("attn_k_norm.weight", &[Dim::of(HEAD_DIM_K)]));
    t
}

/// Gemma's post-attention and post-feed-forward norms `{n_embd}`, required.
pub fn with_post_norms(mut t: LoaderTensors) -> LoaderTensors {
    use shapes::TensorSpec as T;
    t.set_layer(T::required("post_attention_norm.weight", &[Dim::of(EMBD)]));
    t.set_layer(T::required("post_ffw_norm.weight", &[Dim::of(EMBD)]));
    t
}

/// Without what llama.cpp's loader reads only for Llama: attn_output and ffn biases, rope_freqs.
pub fn without_llama_extras(mut t: LoaderTensors) -> LoaderTensors {
    for n in [
        "attn_output.bias",
        "ffn_gate.bias",
        "ffn_down.bias",
        "ffn_up.bias",
    ] {
        t.remove_layer(n);
    }
    t.remove_global("rope_freqs.weight");
    t
}

/// The config.json keys a `<arch>.*` key is written from (as `prepare` and [`write_hparams`]
/// read them), for messages; [`shapes::VOCAB`] is config's vocab_size.
pub fn config_keys(gguf_key: &str) -> &'static [&'static str] {
    match gguf_key {
        "block_count" => &["num_hidden_layers", "n_layer", "num_layers"],
        "embedding_length" => &["hidden_size", "n_embd", "dim"],
        "feed_forward_length" => &["intermediate_size"],
        "attention.head_count" => &["num_attention_heads", "n_head", "n_heads"],
        "attention.head_count_kv" => &["num_key_value_heads", "n_kv_heads"],
        "attention.key_length" | "attention.value_length" | "rope.dimension_count" => &["head_dim"],
        shapes::VOCAB => &["vocab_size"],
        _ => &[],
    }
}
