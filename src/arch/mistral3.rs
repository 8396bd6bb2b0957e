//! Mistral Small 3.x and Ministral 3 text models (`Mistral3ForConditionalGeneration`, GGUF
//! `mistral3`): conversion/mistral3.py's `Mistral3Model` (the llama.cpp of llama-cpp-python
//! 0.3.36), which converts the language model as `LlamaModel` under the `mistral3`
//! architecture (Llama's q/k permutation, keys, vocabulary and rope_freqs) and leaves the vision
//! tower and projector to the mmproj file (dropped here). config.json's `text_config` is merged
//! over the top level. A `ministral3` text model adds `rope.scaling.yarn_log_mul`
//! (`mscale_all_dim`) and `attention.temperature_scale` (`llama_4_scaling_beta`); a `mistral4`
//! one (converted as DeepSeek V2 by convert) is refused. The vocabulary is read from
//! tokenizer.json (Mistral's tekken.json alone, convert's mistral-common path, is refused with a
//! message).

use super::llama::Llama;
use super::shapes::{Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::job::{Job, Transform};
use crate::source::SrcTensor;
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

pub struct Mistral3;

impl Family for Mistral3 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Mistral3ForConditionalGeneration"]
    }
    fn gguf_name(&self) -> &'static str {
        "mistral3"
    }
    fn model_type(&self) -> &'static str {
        "mistral3"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::LlamaSetVocab
    }
    /// transformers' `MistralConfig` defaults (the text model's).
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "max_position_embeddings" => Json::from(131072),
            _ => return base::config_default(key),
        })
    }
    fn always_writes_head_dim(&self) -> bool {
        true
    }
    fn transform(&self, t: &SrcTensor, hp: &Hparams) -> Transform {
        Llama.transform(t, hp)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        let path = &hp.cfg.path;
        match hp.cfg.get("model_type").and_then(Json::as_str) {
            Some("mistral4") => bail!(
                "{path}: a mistral4 text model (converted by convert_hf_to_gguf.py as DeepSeek V2) is not supported"
            ),
            Some("ministral3") => {
                Llama.extra_hparams(hp, md)?;
                let rope = hp.cfg.rope();
                if rope.get("rope_type").and_then(Json::as_str) != Some("yarn") {
                    bail!("{path}: a ministral3 text model needs yarn rope_parameters");
                }
                let num = |k: &str| -> Result<f32> {
                    rope.get(k)
                        .and_then(Json::as_f64)
                        .map(|v| v as f32)
                        .with_context(|| format!("{path}: rope_parameters has no {k}"))
                };
                md.set(
                    hp.key("rope.scaling.yarn_log_mul"),
                    Value::F32(num("mscale_all_dim")?),
                );
                md.set(
                    hp.key("attention.temperature_scale"),
                    Value::F32(num("llama_4_scaling_beta")?),
                );
                Ok(())
            }
            _ => Llama.extra_hparams(hp, md),
        }
    }
    fn finish(
        &self,
        hp: &Hparams,
        md: &Metadata,
        jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        notes.push(
            "the vision tower and projector are left out (convert writes them to a separate mmproj file)"
                .into(),
        );
        Llama.finish(hp, md, jobs, notes)
    }
    /// src/models/mistral3.cpp: Llama's loader (optional attn_output/ffn biases, rope_freqs).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        base::loader_tensors(hyper)
    }
}
