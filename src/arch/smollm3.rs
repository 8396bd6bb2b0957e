//! SmolLM3 (`SmolLM3ForCausalLM`, GGUF `smollm3`): conversion/llama.py's `SmolLM3Model`, which is
//! `LlamaModel` with another GGUF architecture (the llama.cpp of llama-cpp-python 0.3.36): Llama's
//! q/k permutation, keys and vocabulary. Its NoPE layers (no RoPE on every fourth layer) get no
//! key: llama.cpp's loader fixes `n_no_rope_layer_step = 4` (src/models/smollm3.cpp), so a
//! config.json whose `no_rope_layers` says otherwise is converted as convert does, with a note
//! naming the layers where llama.cpp will differ from transformers.

use super::llama::Llama;
use super::shapes::{Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::Metadata;
use crate::job::{Job, Transform};
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct SmolLm3;

/// llama.cpp's fixed NoPE step: layer `il` uses RoPE unless `(il + 1) % 4 == 0`.
pub const NO_ROPE_LAYER_STEP: u32 = 4;

impl Family for SmolLm3 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["SmolLM3ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "smollm3"
    }
    fn model_type(&self) -> &'static str {
        "smollm3"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::LlamaSetVocab
    }
    /// transformers' `SmolLM3Config` defaults.
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "max_position_embeddings" => Json::from(32768),
            "rope_theta" => Json::from(2_000_000.0),
            "rms_norm_eps" => Json::from(1e-6),
            _ => return None,
        })
    }
    /// Llama's q/k permutation (`LlamaModel.modify_tensors`).
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        Llama.transform(t, hp)
    }
    /// `LlamaModel.set_gguf_parameters`' vocab_size and rope.dimension_count.
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        Llama.extra_hparams(hp, md)
    }
    fn finish(
        &self,
        hp: &Hparams,
        _md: &Metadata,
        _jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        let llama_cpp = |il: u32| !(il + 1).is_multiple_of(NO_ROPE_LAYER_STEP);
        let Some(list) = hp.cfg.get("no_rope_layers").and_then(Json::as_array) else {
            return Ok(());
        };
        let differ: Vec<String> = list
            .iter()
            .enumerate()
            .filter(|(il, v)| {
                let uses_rope = v.as_i64().map(|x| x != 0).or(v.as_bool()).unwrap_or(true);
                uses_rope != llama_cpp(*il as u32)
            })
            .map(|(il, _)| il.to_string())
            .collect();
        if !differ.is_empty() || list.len() != hp.n_layer as usize {
            notes.push(format!(
                "config.json's no_rope_layers differs from llama.cpp's fixed pattern (RoPE on every layer but each {NO_ROPE_LAYER_STEP}th) at layers {}: converted as convert_hf_to_gguf.py does (no key for it), so llama.cpp computes those layers differently from transformers",
                if differ.is_empty() { "(count)".to_string() } else { differ.join(", ") }
            ));
        }
        Ok(())
    }
    /// src/models/smollm3.cpp: Llama's tensors without rope_freqs, the attn_output and ffn
    /// biases.
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        base::without_llama_extras(base::loader_tensors(hyper))
    }
}
