//! Mixtral (`MixtralForCausalLM`): llama.cpp converts it as a Llama (conversion/llama.py's
//! `LlamaModel`, arch `llama`) with experts: Llama's q/k permutation, vocabulary and keys, plus
//! the router (`block_sparse_moe.gate`, transformers 5: `mlp.gate`) and `num_local_experts`
//! experts (`w1` gate, `w3` up, `w2` down, each `intermediate_size` wide) stacked into
//! `ffn_{gate,up,down}_exps` (see [`super::moe`]).

use super::llama::Llama;
use super::moe::{Layout, Role};
use super::{base, Family, Hparams};
use crate::gguf::Metadata;
use crate::job::{Job, Transform};
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct Mixtral;

impl Family for Mixtral {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["MixtralForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "llama"
    }
    fn model_type(&self) -> &'static str {
        "mixtral"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::LlamaSetVocab
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        // transformers' MixtralConfig defaults.
        Some(match key {
            "max_position_embeddings" => Json::from(4096 * 32),
            "rope_theta" => Json::from(1e6),
            "rms_norm_eps" => Json::from(1e-5),
            "intermediate_size" => Json::from(14336),
            "num_local_experts" => Json::from(8),
            "num_experts_per_tok" => Json::from(2),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        match rest {
            "block_sparse_moe.gate.weight" | "mlp.gate.weight" => Some("ffn_gate_inp.weight"),
            _ => base::layer_tensor(rest),
        }
    }
    fn experts(&self) -> Option<Layout> {
        Some(Layout {
            module: "block_sparse_moe",
            projections: [("w1", Role::Gate), ("w3", Role::Up), ("w2", Role::Down)],
            ff_keys: &["intermediate_size"],
        })
    }
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        Llama.transform(t, hp)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        Llama.extra_hparams(hp, md)
    }
    /// Its loader is Llama's with `expert_count` > 0 ([`base::loader_tensors`]).
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        match gguf_key {
            "expert_count" => &["num_local_experts"],
            "expert_used_count" => &["num_experts_per_tok"],
            _ => base::config_keys(gguf_key),
        }
    }
    fn finish(
        &self,
        hp: &Hparams,
        md: &Metadata,
        jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        Llama.finish(hp, md, jobs, notes)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn routers_map_in_both_transformers_spellings() {
        let m = |n: &str| super::base::tensor_name(&super::Mixtral, n);
        assert_eq!(
            m("model.layers.1.block_sparse_moe.gate.weight").unwrap(),
            "blk.1.ffn_gate_inp.weight"
        );
        assert_eq!(
            m("model.layers.1.mlp.gate.weight").unwrap(),
            "blk.1.ffn_gate_inp.weight"
        );
        assert_eq!(
            m("model.layers.0.self_attn.o_proj.weight").unwrap(),
            "blk.0.attn_output.weight"
        );
    }
}
