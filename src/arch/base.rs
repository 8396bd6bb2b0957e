//! What most families share, as convert_hf_to_gguf.py's `TextModel` base class does it: the
//! Hugging Face -> GGUF tensor names, the config defaults every family has, and the
//! `<arch>.*` hyperparameter keys in the base class's order. A family's file overrides what
//! differs through [`Family`]'s methods and calls back into these.

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
    let explicit_head_dim = hp.cfg.get("head_dim").is_some()
        || family.config_default(hp.hf_arch, "head_dim").is_some()
        || family.always_writes_head_dim();
    if explicit_head_dim {
        md.set(k("attention.key_length"), Value::U32(hp.head_dim as u32));
        md.set(k("attention.value_length"), Value::U32(hp.head_dim as u32));
    }
    if let Some(ft) = file_type {
        md.set("general.file_type", ft);
    }
    family.extra_hparams(hp, md)
}
