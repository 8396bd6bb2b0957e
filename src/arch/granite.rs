//! Granite 3.x dense (`GraniteForCausalLM`, GGUF `granite`): conversion/granite.py's
//! `GraniteModel` (the llama.cpp of llama-cpp-python 0.3.36), a `LlamaModel` with config.json's
//! multipliers as keys: `attention_multiplier` -> `attention.scale` (replaces head_dim^-0.5),
//! `embedding_multiplier` -> `embedding_scale`, `residual_multiplier` -> `residual_scale` (each
//! block's output before its residual add), `logits_scaling` -> `logit_scale` (logits divided by
//! it). head_dim is ignored (convert pops it): heads are `hidden_size / num_attention_heads`.

use super::llama::Llama;
use super::shapes::{Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::job::Transform;
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use serde_json::Value as Json;

pub struct Granite;

impl Family for Granite {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["GraniteForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "granite"
    }
    fn model_type(&self) -> &'static str {
        "granite"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::LlamaSetVocab
    }
    /// transformers' `GraniteConfig` defaults (the multipliers default to 1, which convert
    /// writes: a present value is truthy).
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "max_position_embeddings" => Json::from(2048),
            "rms_norm_eps" => Json::from(1e-6),
            "rope_theta" => Json::from(10_000.0),
            "embedding_multiplier"
            | "logits_scaling"
            | "residual_multiplier"
            | "attention_multiplier" => Json::from(1.0),
            _ => return None,
        })
    }
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        Llama.transform(t, hp)
    }
    fn write_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        base::write_hparams(self, hp, md)?;
        // convert pops head_dim before the base class sees it.
        md.remove(&hp.key("attention.key_length"));
        md.remove(&hp.key("attention.value_length"));
        Ok(())
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        if let Some(v) = hp.cfg.uint(&["vocab_size"])? {
            md.set(hp.key("vocab_size"), Value::U32(v as u32));
        }
        md.set(
            hp.key("rope.dimension_count"),
            Value::U32((hp.n_embd / hp.n_head as u64) as u32),
        );
        for (src, dst) in [
            ("attention_multiplier", "attention.scale"),
            ("embedding_multiplier", "embedding_scale"),
            ("residual_multiplier", "residual_scale"),
            ("logits_scaling", "logit_scale"),
        ] {
            // `if value := hparams.get(...)`: 0 and absent write nothing.
            if let Some(v) = hp.get_f32(src)?.filter(|&v| v != 0.0) {
                md.set(hp.key(dst), Value::F32(v));
            }
        }
        Ok(())
    }
    /// src/models/granite.cpp: Llama's loader (q of `n_embd_head_k * n_head`, optional
    /// attn_output and ffn biases, rope_freqs).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        base::loader_tensors(hyper)
    }
}
