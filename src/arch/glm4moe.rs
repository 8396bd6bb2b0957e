//! GLM-4.5 / GLM-4.5-Air / GLM-4.6 (`Glm4MoeForCausalLM`, llama.cpp arch `glm4moe`):
//! conversion/glm.py's `Glm4MoeModel`, loaded by llama.cpp's src/models/glm4-moe.cpp.
//!
//! - Attention: q/k/v with biases (`attention_bias`), optional per-head q/k RMS norms
//!   (`use_qk_norm`, GLM-4.5 355B), no q/k permutation (the checkpoint's RoPE is already NeoX
//!   style), RoPE over the first `partial_rotary_factor` (default 0.5) of each head:
//!   `rope.dimension_count = int(head_dim * partial_rotary_factor)`.
//! - `post_attention_layernorm` is `post_attention_norm` (the arch has no `ffn_norm`).
//! - The first `first_k_dense_replace` layers have a dense feed-forward; the others a sigmoid
//!   router (`mlp.gate`) with the expert score bias (`e_score_correction_bias` ->
//!   `exp_probs_b.bias`), `n_routed_experts` experts of `moe_intermediate_size` stacked as
//!   usual (see [`super::moe`]) and `n_shared_experts` shared experts (`ffn_*_shexp`).
//!   Keys: `expert_gating_func` = sigmoid always, `expert_weights_scale`
//!   (`routed_scaling_factor`), `expert_weights_norm` (`norm_topk_prob`), the group keys from
//!   the base class (`n_group`, `topk_group`).
//! - Multi-token-prediction layers (`num_nextn_predict_layers` past `num_hidden_layers`) are
//!   kept, as convert does without `--no-mtp`: `block_count` counts them,
//!   `nextn_predict_layers` says how many, and their own tensors (`eh_proj`, `enorm`, `hnorm`,
//!   `embed_tokens`, `shared_head.head`, `shared_head.norm`) become `blk.N.nextn.*`.
//!
//! The vocabulary is `_set_vocab_glm`: byte-level BPE with bos `[gMASK]`, eot `<|user|>`, unk
//! `<|endoftext|>` and eom `<|observation|>` from the tokenizer's added tokens.

use super::config::Config;
use super::moe::{Layout, Role};
use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

pub struct Glm4Moe;

/// `num_nextn_predict_layers`, 0 when absent (transformers' config class has no default).
fn nextn_layers(cfg: &Config) -> Result<u64> {
    Ok(cfg.uint(&["num_nextn_predict_layers"])?.unwrap_or(0))
}

/// The rotary share of a head: `rope_parameters.partial_rotary_factor` (where convert mirrors
/// the top-level key), default 0.5.
fn partial_rotary_factor(hp: &Hparams) -> Result<f64> {
    match hp.cfg.rope().get("partial_rotary_factor") {
        Some(v) => v.as_f64().with_context(|| {
            format!(
                "{}: partial_rotary_factor is {v}, not a number",
                hp.cfg.path
            )
        }),
        None => Ok(hp
            .cfg
            .float(&["partial_rotary_factor", "rope_pct", "rope_percent"])?
            .unwrap_or(0.5)),
    }
}

impl Family for Glm4Moe {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Glm4MoeForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "glm4moe"
    }
    fn model_type(&self) -> &'static str {
        "glm4_moe"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::Glm
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        // transformers' Glm4MoeConfig defaults (convert reads AutoConfig(...).to_dict()).
        Some(match key {
            "max_position_embeddings" => Json::from(131072),
            "intermediate_size" => Json::from(10944),
            "moe_intermediate_size" => Json::from(1408),
            "num_experts_per_tok" => Json::from(8),
            "n_shared_experts" => Json::from(1),
            "n_routed_experts" => Json::from(128),
            "routed_scaling_factor" => Json::from(1.0),
            "n_group" => Json::from(1),
            "topk_group" => Json::from(1),
            "first_k_dense_replace" => Json::from(1),
            "norm_topk_prob" => Json::from(true),
            "rms_norm_eps" => Json::from(1e-5),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        Some(match rest {
            "post_attention_layernorm.weight" => "post_attention_norm.weight",
            "mlp.gate.weight" => "ffn_gate_inp.weight",
            "mlp.gate.e_score_correction_bias" => "exp_probs_b.bias",
            "mlp.shared_experts.gate_proj.weight" => "ffn_gate_shexp.weight",
            "mlp.shared_experts.up_proj.weight" => "ffn_up_shexp.weight",
            "mlp.shared_experts.down_proj.weight" => "ffn_down_shexp.weight",
            // The multi-token-prediction layers' own tensors.
            "eh_proj.weight" => "nextn.eh_proj.weight",
            "enorm.weight" => "nextn.enorm.weight",
            "hnorm.weight" => "nextn.hnorm.weight",
            "embed_tokens.weight" => "nextn.embed_tokens.weight",
            "shared_head.head.weight" => "nextn.shared_head_head.weight",
            "shared_head.norm.weight" => "nextn.shared_head_norm.weight",
            _ => return base::layer_tensor(rest),
        })
    }
    fn experts(&self) -> Option<Layout> {
        Some(Layout {
            module: "mlp",
            projections: [
                ("gate_proj", Role::Gate),
                ("up_proj", Role::Up),
                ("down_proj", Role::Down),
            ],
            ff_keys: &["moe_intermediate_size"],
        })
    }
    fn extra_blocks(&self, cfg: &Config) -> Result<u64> {
        nextn_layers(cfg)
    }
    fn first_moe_layer(&self, hp: &Hparams) -> Result<u32> {
        let n = hp.get_u32("first_k_dense_replace")?.unwrap_or(0);
        if n > hp.n_layer {
            bail!(
                "{}: first_k_dense_replace = {n} is more than the {} layers",
                hp.cfg.path,
                hp.n_layer
            );
        }
        Ok(n)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        // Glm4MoeModel.set_gguf_parameters, after the base class's keys.
        let k = |s: &str| hp.key(s);
        let head_dim = match hp.cfg.uint(&["head_dim"])? {
            Some(d) => d,
            None => hp.n_embd / u64::from(hp.n_head),
        };
        let rot = (head_dim as f64 * partial_rotary_factor(hp)?) as u64;
        md.set(
            k("rope.dimension_count"),
            Value::U32(u32::try_from(rot).with_context(|| {
                format!(
                    "{}: {rot} rotary dimensions do not fit in 32 bits",
                    hp.cfg.path
                )
            })?),
        );
        if let Some(n) = hp.get_u32("n_routed_experts")? {
            md.set(k("expert_count"), Value::U32(n));
        }
        if let Some(n) = hp.get_u32("moe_intermediate_size")? {
            md.set(k("expert_feed_forward_length"), Value::U32(n));
        }
        if let Some(n) = hp.get_u32("n_shared_experts")? {
            md.set(k("expert_shared_count"), Value::U32(n));
        }
        if let Some(n) = hp.get_u32("first_k_dense_replace")? {
            md.set(k("leading_dense_block_count"), Value::U32(n));
        }
        // gguf's ExpertGatingFuncType.SIGMOID.
        md.set(k("expert_gating_func"), Value::U32(2));
        if let Some(s) = hp.get_f32("routed_scaling_factor")? {
            md.set(k("expert_weights_scale"), Value::F32(s));
        }
        if let Some(v) = hp.get("norm_topk_prob") {
            let b = v.as_bool().with_context(|| {
                format!("{}: norm_topk_prob is {v}, not a boolean", hp.cfg.path)
            })?;
            md.set(k("expert_weights_norm"), Value::Bool(b));
        }
        if let Some(n) = hp.cfg.uint(&["num_nextn_predict_layers"])? {
            let n = u32::try_from(n).with_context(|| {
                format!(
                    "{}: num_nextn_predict_layers = {n} does not fit in 32 bits",
                    hp.cfg.path
                )
            })?;
            md.set(k("nextn_predict_layers"), Value::U32(n));
        }
        Ok(())
    }
    /// src/models/glm4-moe.cpp's `load_arch_tensors`: Llama's attention with optional q/k/v
    /// biases and optional q/k norms, `post_attention_norm` instead of `ffn_norm`, a dense
    /// feed-forward in the leading layers and router, score bias, stacked and shared experts in
    /// the others (both optional here: the list is per block, and [`super::moe`] checks every
    /// MoE layer), and the optional `nextn.*` tensors of the multi-token-prediction blocks.
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        const EMBD: &[&str] = &["embedding_length"];
        const VOCAB: &[&str] = &[super::shapes::VOCAB];
        const HEAD_DIM_K: &[&str] = &["attention.key_length"];
        const FF: &[&str] = &["feed_forward_length"];
        const EXPERTS: &[&str] = &["expert_count"];
        const FF_EXP: &[&str] = &["expert_feed_forward_length"];
        const SHEXP: &[&str] = &["expert_feed_forward_length", "expert_shared_count"];
        let d = Dim::of;
        let mut t = base::without_llama_extras(base::loader_tensors(hyper));
        t.layer.retain(|s| !s.name.starts_with("ffn_"));
        t.layer.extend([
            T::optional("attn_q_norm.weight", &[d(HEAD_DIM_K)]),
            T::optional("attn_k_norm.weight", &[d(HEAD_DIM_K)]),
            T::required("post_attention_norm.weight", &[d(EMBD)]),
            T::optional("ffn_gate.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_down.weight", &[d(FF), d(EMBD)]),
            T::optional("ffn_up.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_gate_inp.weight", &[d(EMBD), d(EXPERTS)]),
            T::optional("exp_probs_b.bias", &[d(EXPERTS)]),
            T::optional("ffn_gate_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
            T::optional("ffn_down_exps.weight", &[d(FF_EXP), d(EMBD), d(EXPERTS)]),
            T::optional("ffn_up_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
            T::optional("ffn_gate_shexp.weight", &[d(EMBD), d(SHEXP)]),
            T::optional("ffn_down_shexp.weight", &[d(SHEXP), d(EMBD)]),
            T::optional("ffn_up_shexp.weight", &[d(EMBD), d(SHEXP)]),
            T::optional("nextn.eh_proj.weight", &[Dim::double(EMBD), d(EMBD)]),
            T::optional("nextn.enorm.weight", &[d(EMBD)]),
            T::optional("nextn.hnorm.weight", &[d(EMBD)]),
            T::optional("nextn.embed_tokens.weight", &[d(EMBD), d(VOCAB)]),
            T::optional("nextn.shared_head_head.weight", &[d(EMBD), d(VOCAB)]),
            T::optional("nextn.shared_head_norm.weight", &[d(EMBD)]),
        ]);
        t
    }
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        match gguf_key {
            "expert_count" => &["n_routed_experts"],
            "expert_used_count" => &["num_experts_per_tok"],
            "expert_feed_forward_length" => &["moe_intermediate_size"],
            "expert_shared_count" => &["n_shared_experts"],
            _ => base::config_keys(gguf_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_convert() {
        let m = |n: &str| base::tensor_name(&Glm4Moe, n);
        for (hf, gguf) in [
            (
                "model.layers.0.post_attention_layernorm.weight",
                "blk.0.post_attention_norm.weight",
            ),
            (
                "model.layers.1.mlp.gate.e_score_correction_bias",
                "blk.1.exp_probs_b.bias",
            ),
            (
                "model.layers.1.mlp.shared_experts.up_proj.weight",
                "blk.1.ffn_up_shexp.weight",
            ),
            (
                "model.layers.3.eh_proj.weight",
                "blk.3.nextn.eh_proj.weight",
            ),
            (
                "model.layers.3.embed_tokens.weight",
                "blk.3.nextn.embed_tokens.weight",
            ),
            (
                "model.layers.3.shared_head.head.weight",
                "blk.3.nextn.shared_head_head.weight",
            ),
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
        ] {
            assert_eq!(m(hf).as_deref(), Some(gguf), "{hf}");
        }
    }
}
