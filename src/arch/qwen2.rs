//! Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): conversion/qwen.py's `Qwen2Model`. Llama's layout
//! with q/k/v biases and no q/k permutation; SentencePiece or byte-level BPE vocabulary.

use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{base, Family};
use crate::tokenizer::VocabRecipe;
use serde_json::Value as Json;

pub struct Qwen2;

impl Family for Qwen2 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen2ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "qwen2"
    }
    fn model_type(&self) -> &'static str {
        "qwen2"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::SentencePieceElseBpe
    }
    fn is_70b(&self, n_layer: u32, _n_head: u32, _n_head_kv: u32) -> bool {
        n_layer == 80
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        match key {
            "max_position_embeddings" => Some(Json::from(32768)),
            _ => base::config_default(key),
        }
    }
    /// Llama's loader with q and attn_output `{n_embd, n_embd}` (no head_dim), an optional
    /// output bias, no attn_output/ffn biases (src/models/qwen2.cpp).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        let d = Dim::of;
        const EMBD: &[&str] = &["embedding_length"];
        const KV: &[&str] = &["attention.key_length", "attention.head_count_kv"];
        let mut t = base::without_llama_extras(base::loader_tensors(hyper));
        t.set_global(T::optional("output.bias", &[d(&[super::shapes::VOCAB])]));
        t.set_layer(T::required("attn_q.weight", &[d(EMBD), d(EMBD)]));
        t.set_layer(T::optional("attn_q.bias", &[d(EMBD)]));
        t.set_layer(T::required("attn_k.weight", &[d(EMBD), d(KV)]));
        t.set_layer(T::optional("attn_k.bias", &[d(KV)]));
        t.set_layer(T::required("attn_v.weight", &[d(EMBD), d(KV)]));
        t.set_layer(T::optional("attn_v.bias", &[d(KV)]));
        t.set_layer(T::required("attn_output.weight", &[d(EMBD), d(EMBD)]));
        t
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn biases_keep_their_names() {
        assert_eq!(
            super::base::tensor_name(&super::Qwen2, "model.layers.1.self_attn.v_proj.bias")
                .unwrap(),
            "blk.1.attn_v.bias"
        );
    }
}
