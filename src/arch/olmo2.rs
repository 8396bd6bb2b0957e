//! OLMo 2 (`Olmo2ForCausalLM`, GGUF `olmo2`): conversion/olmo.py's `Olmo2Model` (the llama.cpp of
//! llama-cpp-python 0.3.36), the base class's conversion: no q/k permutation (NeoX RoPE), GPT-2
//! BPE vocabulary, the base class's keys (plus `attention.sliding_window` when config.json has
//! `sliding_window`, which OLMo 2's has not). Its blocks have no pre-norms: the norms come after
//! the attention (`post_attention_layernorm` -> `post_attention_norm`) and the MLP
//! (`post_feedforward_layernorm` -> `post_ffw_norm`), and the q/k RMS norms span the whole
//! projection (`{n_embd}` and `{n_embd_k_gqa}`), not one head.

use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct Olmo2;

impl Family for Olmo2 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Olmo2ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "olmo2"
    }
    fn model_type(&self) -> &'static str {
        "olmo2"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::Gpt2
    }
    /// transformers' `Olmo2Config` defaults.
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "max_position_embeddings" => Json::from(2048),
            "rope_theta" => Json::from(10_000.0),
            "rms_norm_eps" => Json::from(1e-5),
            _ => return None,
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        match rest {
            "post_attention_layernorm.weight" => Some("post_attention_norm.weight"),
            "input_layernorm.weight" | "pre_feedforward_layernorm.weight" => None,
            _ => super::base::layer_tensor(rest),
        }
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        // `if "sliding_window" in self.hparams` (OLMo 3; OLMo 2's config has none).
        if let Some(w) = hp.get_u32("sliding_window")? {
            md.set(hp.key("attention.sliding_window"), Value::U32(w));
        }
        Ok(())
    }
    /// src/models/olmo2.cpp: q/k/v (no biases required) of n_embd / n_embd_gqa, attn_output
    /// `{n_embd, n_embd}`, attn_q_norm `{n_embd}`, attn_k_norm `{n_embd_k_gqa}`, the two post
    /// norms, gate/up/down; a required output (never tied).
    fn loader_tensors(&self, _hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        let d = Dim::of;
        const EMBD: &[&str] = &["embedding_length"];
        const FF: &[&str] = &["feed_forward_length"];
        const VOCAB: &[&str] = &[super::shapes::VOCAB];
        const KV: &[&str] = &["attention.key_length", "attention.head_count_kv"];
        LoaderTensors {
            global: vec![
                T::required("token_embd.weight", &[d(EMBD), d(VOCAB)]),
                T::required("output_norm.weight", &[d(EMBD)]),
                T::required("output.weight", &[d(EMBD), d(VOCAB)]),
            ],
            layer: vec![
                T::required("attn_q.weight", &[d(EMBD), d(EMBD)]),
                T::required("attn_k.weight", &[d(EMBD), d(KV)]),
                T::required("attn_v.weight", &[d(EMBD), d(KV)]),
                T::optional("attn_q.bias", &[d(EMBD)]),
                T::optional("attn_k.bias", &[d(KV)]),
                T::optional("attn_v.bias", &[d(KV)]),
                T::required("attn_output.weight", &[d(EMBD), d(EMBD)]),
                T::required("attn_q_norm.weight", &[d(EMBD)]),
                T::required("attn_k_norm.weight", &[d(KV)]),
                T::required("post_attention_norm.weight", &[d(EMBD)]),
                T::required("ffn_gate.weight", &[d(EMBD), d(FF)]),
                T::required("ffn_up.weight", &[d(EMBD), d(FF)]),
                T::required("ffn_down.weight", &[d(FF), d(EMBD)]),
                T::required("post_ffw_norm.weight", &[d(EMBD)]),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn post_norms_keep_their_place() {
        let m = |n: &str| super::super::base::tensor_name(&super::Olmo2, n);
        assert_eq!(
            m("model.layers.0.post_attention_layernorm.weight").unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            m("model.layers.0.post_feedforward_layernorm.weight").unwrap(),
            "blk.0.post_ffw_norm.weight"
        );
        assert_eq!(
            m("model.layers.0.self_attn.q_norm.weight").unwrap(),
            "blk.0.attn_q_norm.weight"
        );
        assert!(m("model.layers.0.input_layernorm.weight").is_none());
    }
}
