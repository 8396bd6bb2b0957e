//! Gemma 3 text models (`Gemma3ForCausalLM`, and the language model of
//! `Gemma3ForConditionalGeneration`): conversion/gemma.py's `Gemma3Model`. Gemma 2's norms and
//! layout plus q/k norms, a local rope base for sliding-window layers (five of six), and the
//! embedding cut to the real vocabulary.

use super::gemma2::Gemma2;
use super::shapes::{Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Array, Metadata, Value};
use crate::job::{Job, Transform};
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct Gemma3;

impl Family for Gemma3 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"]
    }
    fn gguf_name(&self) -> &'static str {
        "gemma3"
    }
    fn model_type(&self) -> &'static str {
        "gemma3_text"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::SentencePieceElseBpeNoSpacePrefix
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "rope_theta" => Json::from(1_000_000.0),
            "max_position_embeddings" => Json::from(131072),
            "head_dim" => Json::from(256),
            "rope_local_base_freq" => Json::from(10_000.0),
            "sliding_window" => Json::from(4096),
            _ => return base::config_default(key),
        })
    }
    /// Gemma 2's names (post-attention and post-feed-forward norms).
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        Gemma2.layer_tensor(rest)
    }
    /// Gemma 2's +1 on norm weights.
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        Gemma2.transform(t, hp)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        if let Some(v) = hp
            .cfg
            .float(&["final_logit_softcapping"])?
            .filter(|&v| v != 0.0)
        {
            md.set(hp.key("final_logit_softcapping"), Value::F32(v as f32));
        }
        if hp.cfg.uint(&["sliding_window_pattern"])? != Some(1) {
            if let Some(v) = hp.get_u32("sliding_window")? {
                md.set(hp.key("attention.sliding_window"), Value::U32(v));
            }
        }
        Ok(())
    }
    fn finish(
        &self,
        _hp: &Hparams,
        md: &Metadata,
        jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        // Embedding rows past the real vocabulary are dropped (convert's n_vocab_real).
        if let Some(Value::Array(Array::Str(tokens))) = md.get("tokenizer.ggml.tokens") {
            let n = tokens.len() as u64;
            if let Some(j) = jobs.iter_mut().find(|j| j.name == "token_embd.weight") {
                if j.dims[1] > n {
                    notes.push(format!(
                        "token_embd.weight: {} rows kept of {}",
                        n, j.dims[1]
                    ));
                    j.dims[1] = n;
                }
            }
        }
        Ok(())
    }
    fn sliding_window_pattern(&self, n_swa: u32) -> Option<u32> {
        (n_swa > 0).then_some(6)
    }
    /// Gemma 2's post norms and the q/k norms; an optional output (src/models/gemma3.cpp).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        base::with_qk_norms(base::with_post_norms(base::without_llama_extras(
            base::loader_tensors(hyper),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_convert() {
        let m = |n: &str| base::tensor_name(&Gemma3, n).unwrap();
        assert_eq!(
            m("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            m("model.layers.0.pre_feedforward_layernorm.weight"),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            m("language_model.model.layers.0.self_attn.k_norm.weight"),
            "blk.0.attn_k_norm.weight"
        );
    }
}
