//! Qwen3 dense (`Qwen3ForCausalLM`): conversion/qwen.py's `Qwen3Model`. Qwen2's layout with
//! per-head q/k RMS norms instead of biases, and an explicit head_dim (default 128).

use super::shapes::{Hyper, LoaderTensors};
use super::{base, Family};
use crate::tokenizer::VocabRecipe;
use serde_json::Value as Json;

pub struct Qwen3;

impl Family for Qwen3 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen3ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "qwen3"
    }
    fn model_type(&self) -> &'static str {
        "qwen3"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::SentencePieceElseBpe
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        match key {
            "max_position_embeddings" => Some(Json::from(32768)),
            "head_dim" => Some(Json::from(128)),
            _ => base::config_default(key),
        }
    }
    /// Llama's loader plus required per-head q/k norms, no attn_output/ffn biases
    /// (src/models/qwen3.cpp).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        base::with_qk_norms(base::without_llama_extras(base::loader_tensors(hyper)))
    }
}
