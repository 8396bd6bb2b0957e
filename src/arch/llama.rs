//! Llama and Mistral (`LlamaForCausalLM`, `MistralForCausalLM`): conversion/llama.py's
//! `LlamaModel`. q/k rows are permuted from Hugging Face's rotate-half layout to ggml's
//! interleaved RoPE; Llama 3's rope scaling becomes a `rope_freqs.weight` tensor.

use super::{base, Family, Hparams};
use crate::gguf::{Metadata, TypeId, Value};
use crate::job::{Job, TensorSource, Transform};
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::Result;
use kiln_kernels::GgmlType;
use serde_json::Value as Json;

pub struct Llama;

impl Family for Llama {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &[
            "LlamaForCausalLM",
            "LLaMAForCausalLM",
            "MistralForCausalLM",
            "LlamaModel",
        ]
    }
    fn gguf_name(&self) -> &'static str {
        "llama"
    }
    fn model_type(&self) -> &'static str {
        "llama"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::LlamaSetVocab
    }
    fn config_default(&self, hf_arch: &str, key: &str) -> Option<Json> {
        match (key, hf_arch) {
            ("max_position_embeddings", "MistralForCausalLM") => Some(Json::from(131072)),
            ("max_position_embeddings", _) => Some(Json::from(2048)),
            _ => base::config_default(key),
        }
    }
    fn is_70b(&self, n_layer: u32, n_head: u32, n_head_kv: u32) -> bool {
        // llama.cpp: 80 layers is 70B, except the 65B of Llama 1 (no grouped KV heads).
        n_layer == 80 && n_head != n_head_kv
    }
    fn always_writes_head_dim(&self) -> bool {
        true
    }
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        let n = &t.name;
        if n.ends_with("q_proj.weight") || n.ends_with("q_proj.bias") {
            Transform::PermuteHeads {
                n_head: hp.n_head as usize,
            }
        } else if n.ends_with("k_proj.weight") || n.ends_with("k_proj.bias") {
            Transform::PermuteHeads {
                n_head: hp.n_head_kv as usize,
            }
        } else {
            Transform::None
        }
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        if let Some(v) = hp.cfg.uint(&["vocab_size"])?.or(Some(32000)) {
            md.set(hp.key("vocab_size"), Value::U32(v as u32));
        }
        md.set(
            hp.key("rope.dimension_count"),
            Value::U32(hp.head_dim as u32),
        );
        Ok(())
    }
    fn finish(
        &self,
        hp: &Hparams,
        _md: &Metadata,
        jobs: &mut Vec<Job>,
        _notes: &mut Vec<String>,
    ) -> Result<()> {
        if let Some(t) = rope_freqs_tensor(hp)? {
            jobs.push(t);
        }
        Ok(())
    }
}

/// Llama 3's `rope_freqs.weight` (convert's generate_extra_tensors for rope_type "llama3").
fn rope_freqs_tensor(hp: &Hparams) -> Result<Option<Job>> {
    let rope = hp.cfg.rope();
    if rope
        .get("rope_type")
        .and_then(Json::as_str)
        .map(|s| s.to_ascii_lowercase())
        != Some("llama3".into())
    {
        return Ok(None);
    }
    let f = |k: &str, d: f64| rope.get(k).and_then(Json::as_f64).unwrap_or(d);
    let factors = llama3_rope_factors(
        f("rope_theta", 10000.0),
        hp.head_dim as usize,
        f("factor", 8.0),
        f("low_freq_factor", 1.0),
        f("high_freq_factor", 4.0),
        f("original_max_position_embeddings", 8192.0),
    );
    Ok(Some(Job {
        name: "rope_freqs.weight".into(),
        dims: vec![factors.len() as u64],
        input_type: TypeId::of(GgmlType::F32),
        out_type: TypeId::of(GgmlType::F32),
        fallback_from: None,
        source: TensorSource::Values(factors),
    }))
}

/// The per-frequency factors, in f32 as torch computes them.
pub fn llama3_rope_factors(
    base: f64,
    dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let low_wavelen = old_ctx / low;
    let high_wavelen = old_ctx / high;
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / (base as f32).powf(i as f32 / dim as f32);
            let wavelen = (2.0 * std::f64::consts::PI) as f32 / freq;
            if (wavelen as f64) < high_wavelen {
                1.0
            } else if (wavelen as f64) > low_wavelen {
                factor as f32
            } else {
                let smooth = ((old_ctx as f32) / wavelen - low as f32) / (high as f32 - low as f32);
                1.0 / ((1.0 - smooth) / factor as f32 + smooth)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_span_one_to_factor() {
        let f = llama3_rope_factors(500000.0, 64, 32.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn names_map_like_convert() {
        let m = |n: &str| base::tensor_name(&Llama, n);
        assert_eq!(
            m("model.layers.3.self_attn.q_proj.weight").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            m("model.layers.3.post_attention_layernorm.weight").unwrap(),
            "blk.3.ffn_norm.weight"
        );
        assert_eq!(m("lm_head.weight").unwrap(), "output.weight");
        assert!(m("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
    }
}
