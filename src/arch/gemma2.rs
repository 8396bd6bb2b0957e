//! Gemma 2 (`Gemma2ForCausalLM`): conversion/gemma.py's `Gemma2Model`. Norm weights stored as
//! w - 1 (+1 on the way), post-attention and post-feed-forward norms, the output tied to the
//! embedding (lm_head dropped), attention and final logit soft-capping, a sliding window on
//! every other layer; its hyperparameters in its own order (it does not call the base class).

use super::shapes::{Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::job::Transform;
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct Gemma2;

impl Family for Gemma2 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Gemma2ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "gemma2"
    }
    fn model_type(&self) -> &'static str {
        "gemma2"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::SentencePieceNoSpacePrefix
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "rope_theta" => return None,
            "max_position_embeddings" => Json::from(8192),
            "head_dim" => Json::from(256),
            "sliding_window" => Json::from(4096),
            "attn_logit_softcapping" => Json::from(50.0),
            "final_logit_softcapping" => Json::from(30.0),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        match rest {
            "post_attention_layernorm.weight" => Some("post_attention_norm.weight"),
            _ => base::layer_tensor(rest),
        }
    }
    fn keeps(&self, gguf_name: &str) -> bool {
        // The output is tied to the embedding; convert skips lm_head.
        gguf_name != "output.weight"
    }
    fn transform(&self, t: &SrcTensor, _hp: &Hparams) -> Transform {
        if t.name.ends_with("norm.weight") {
            Transform::AddOne
        } else {
            Transform::None
        }
    }
    fn write_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        let k = |s: &str| hp.key(s);
        let file_type = md.get("general.file_type").cloned();
        if let Some(v) = hp.get_u32("max_position_embeddings")? {
            md.set(k("context_length"), Value::U32(v));
        }
        md.set(k("embedding_length"), Value::U32(hp.n_embd as u32));
        md.set(k("block_count"), Value::U32(hp.n_layer));
        if let Some(v) = hp.get_u32("intermediate_size")? {
            md.set(k("feed_forward_length"), Value::U32(v));
        }
        md.set(k("attention.head_count"), Value::U32(hp.n_head));
        md.set(k("attention.head_count_kv"), Value::U32(hp.n_head_kv));
        if let Some(e) = hp.get_f32("rms_norm_eps")? {
            md.set(k("attention.layer_norm_rms_epsilon"), Value::F32(e));
        }
        md.set(k("attention.key_length"), Value::U32(hp.head_dim as u32));
        md.set(k("attention.value_length"), Value::U32(hp.head_dim as u32));
        if let Some(ft) = file_type {
            // convert writes it at the end of set_gguf_parameters
            md.set_last("general.file_type", ft);
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if let Some(v) = hp.get_f32(key)? {
                md.set(k(key), Value::F32(v));
            }
        }
        if let Some(v) = hp.get_u32("sliding_window")? {
            md.set(k("attention.sliding_window"), Value::U32(v));
        }
        Ok(())
    }
    fn sliding_window_pattern(&self, _n_swa: u32) -> Option<u32> {
        Some(2)
    }
    /// Llama's loader plus the post norms, and no output tensor: the output is always
    /// token_embd (src/models/gemma2.cpp).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        let mut t = base::with_post_norms(base::without_llama_extras(base::loader_tensors(hyper)));
        t.remove_global("output.weight");
        t
    }
}
