//! Qwen3 MoE (`Qwen3MoeForCausalLM`, llama.cpp arch `qwen3moe`): conversion/qwen.py's
//! `Qwen3MoeModel` (through `Qwen2MoeModel`). Qwen3's attention (per-head q/k RMS norms), and
//! in every layer a router (`mlp.gate`) over `num_experts` experts of width
//! `moe_intermediate_size`, stacked into `ffn_{gate,up,down}_exps` (see [`super::moe`]).
//! The vocabulary is `TextModel.set_vocab`: byte-level BPE only.

use super::moe::{Layout, Role};
use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::job::Job;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct Qwen3Moe;

impl Family for Qwen3Moe {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen3MoeForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "qwen3moe"
    }
    fn model_type(&self) -> &'static str {
        "qwen3_moe"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::Gpt2
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        // transformers' Qwen3MoeConfig defaults.
        Some(match key {
            "max_position_embeddings" => Json::from(32768),
            "intermediate_size" => Json::from(6144),
            "moe_intermediate_size" => Json::from(768),
            "num_experts" => Json::from(128),
            "num_experts_per_tok" => Json::from(8),
            "norm_topk_prob" => Json::from(false),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        match rest {
            "mlp.gate.weight" => Some("ffn_gate_inp.weight"),
            _ => base::layer_tensor(rest),
        }
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
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        // Qwen2MoeModel.set_gguf_parameters.
        if let Some(n) = hp.get_u32("moe_intermediate_size")? {
            md.set(hp.key("expert_feed_forward_length"), Value::U32(n));
        }
        if let Some(n) = hp.get_u32("shared_expert_intermediate_size")? {
            md.set(hp.key("expert_shared_feed_forward_length"), Value::U32(n));
        }
        Ok(())
    }
    fn finish(
        &self,
        hp: &Hparams,
        _md: &Metadata,
        _jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        if hp.get("norm_topk_prob").and_then(|v| v.as_bool()) != Some(true) {
            notes.push(
                "warning: norm_topk_prob is false, but llama.cpp's qwen3moe always renormalises \
                 the chosen experts' weights (as convert_hf_to_gguf.py, kiln writes no key for \
                 it), so llama.cpp's outputs will differ from transformers'"
                    .into(),
            );
        }
        Ok(())
    }
    /// Qwen3's attention (q/k norms), a router and stacked experts of
    /// `expert_feed_forward_length` in every layer, no dense feed-forward
    /// (src/models/qwen3moe.cpp).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        const EMBD: &[&str] = &["embedding_length"];
        const EXPERTS: &[&str] = &["expert_count"];
        const FF_EXP: &[&str] = &["expert_feed_forward_length"];
        let d = Dim::of;
        let mut t = base::with_qk_norms(base::without_llama_extras(base::loader_tensors(hyper)));
        t.layer
            .retain(|s| !s.name.starts_with("ffn_") || s.name == "ffn_norm.weight");
        t.layer.extend([
            T::required("ffn_gate_inp.weight", &[d(EMBD), d(EXPERTS)]),
            T::required("ffn_gate_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
            T::required("ffn_down_exps.weight", &[d(FF_EXP), d(EMBD), d(EXPERTS)]),
            T::required("ffn_up_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
        ]);
        t
    }
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        match gguf_key {
            "expert_count" => &["num_experts"],
            "expert_used_count" => &["num_experts_per_tok"],
            "expert_feed_forward_length" => &["moe_intermediate_size"],
            _ => base::config_keys(gguf_key),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn router_and_qk_norms_map_like_convert() {
        let m = |n: &str| super::base::tensor_name(&super::Qwen3Moe, n);
        assert_eq!(
            m("model.layers.2.mlp.gate.weight").unwrap(),
            "blk.2.ffn_gate_inp.weight"
        );
        assert_eq!(
            m("model.layers.2.self_attn.k_norm.weight").unwrap(),
            "blk.2.attn_k_norm.weight"
        );
    }
}
