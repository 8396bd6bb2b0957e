//! ERNIE 4.5 MoE (`Ernie4_5_MoeForCausalLM`, llama.cpp arch `ernie4_5-moe`):
//! conversion/ernie.py's `Ernie4_5MoeModel`, loaded by llama.cpp's src/models/ernie4-5.cpp
//! (tensors) and ernie4-5-moe.cpp (graph).
//!
//! - Llama's attention without the q/k permutation (ERNIE's RoPE is interleaved, llama.cpp's
//!   NORM rope type), optional biases (`use_bias`).
//! - The first `moe_layer_start_index` layers have a dense feed-forward of `intermediate_size`;
//!   the others a router (`mlp.gate`, softmax scores), the score bias for the choice
//!   (`mlp.moe_statics.e_score_correction_bias`, shape [1, E], -> `exp_probs_b.bias`),
//!   `moe_num_experts` experts of `moe_intermediate_size` stacked as usual (see
//!   [`super::moe`]; the count and width keys are ERNIE's own, so the family gathers them
//!   itself) and `moe_num_shared_experts` shared experts (`ffn_*_shexp`).
//! - Keys after the base class's: `expert_count` (`moe_num_experts`), `expert_used_count`
//!   (`moe_k`), `interleave_moe_layer_step` (`moe_layer_interval`),
//!   `leading_dense_block_count` (`moe_layer_start_index`), `expert_feed_forward_length`,
//!   `expert_shared_count`, and `expert_shared_feed_forward_length` = `intermediate_size //
//!   num_key_value_heads` (convert's formula; it equals the shared experts' width,
//!   `moe_intermediate_size * moe_num_shared_experts`, on the released models).
//! - The multi-token-prediction tensors (`model.mtp_block.*`, `mtp_emb_norm`, `mtp_hidden_norm`,
//!   `mtp_linear_proj`) are left out, as convert does.
//! - Stacked experts come gate, up, down in each layer, convert's loop order.
//!
//! llama.cpp's loader gives every layer from `moe_layer_start_index` on its experts (its graph
//! alone reads `interleave_moe_layer_step`), so checkpoints with `moe_layer_interval` other
//! than 1, or with dense layers after `moe_layer_end_index`, are refused.
//!
//! The vocabulary is `_set_vocab_sentencepiece` (tokenizer.model), then tokenizer_config's
//! `add_prefix_space` when present.

use super::config::Config;
use super::moe::{self, Experts, Layout, Role};
use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, TypeId, Value};
use crate::job::Job;
use crate::source::{Checkpoint, SrcDtype};
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use serde_json::Value as Json;

pub struct Ernie45Moe;

const LAYOUT: Layout = Layout {
    module: "mlp",
    projections: [
        ("gate_proj", Role::Gate),
        ("up_proj", Role::Up),
        ("down_proj", Role::Down),
    ],
    ff_keys: &["moe_intermediate_size"],
};

fn need_u32(hp: &Hparams, key: &str) -> Result<u32> {
    hp.get_u32(key)?
        .with_context(|| format!("{}: ERNIE 4.5 MoE needs {key}", hp.cfg.path))
}

/// The expert hyperparameters under ERNIE's names, checked.
fn experts(hp: &Hparams) -> Result<Experts> {
    let path = &hp.cfg.path;
    let n_expert = need_u32(hp, "moe_num_experts")?;
    let n_used = need_u32(hp, "moe_k")?;
    let n_ff = need_u32(hp, "moe_intermediate_size")?;
    let first = need_u32(hp, "moe_layer_start_index")?;
    if n_expert == 0 || n_used == 0 || n_used > n_expert {
        bail!("{path}: moe_k = {n_used} experts per token out of moe_num_experts = {n_expert}");
    }
    if n_ff == 0 {
        bail!("{path}: moe_intermediate_size = 0");
    }
    if first > hp.n_layer {
        bail!(
            "{path}: moe_layer_start_index = {first} is past num_hidden_layers = {}",
            hp.n_layer
        );
    }
    let interval = need_u32(hp, "moe_layer_interval")?;
    if interval != 1 {
        bail!(
            "{path}: moe_layer_interval = {interval}: llama.cpp's ernie4_5-moe loader gives every layer from moe_layer_start_index on its experts, so only an interval of 1 converts"
        );
    }
    // transformers' default -1 and the releases' num_hidden_layers - 1 both mean "to the end".
    if let Some(end) = hp.get("moe_layer_end_index").and_then(|v| v.as_i64()) {
        if end >= 0 && end + 1 < i64::from(hp.n_layer) {
            bail!(
                "{path}: moe_layer_end_index = {end} leaves dense layers after the experts, which llama.cpp's ernie4_5-moe loader does not read"
            );
        }
    }
    Ok(Experts {
        n_expert: n_expert as usize,
        n_used: n_used as usize,
        n_ff: n_ff as usize,
        count_key: "moe_num_experts",
        ff_key: "moe_intermediate_size",
        first_layer: first,
    })
}

/// convert's filter_tensors: the multi-token-prediction tensors.
fn is_mtp(hf: &str) -> bool {
    [
        "model.mtp_block.",
        "model.mtp_emb_norm.",
        "model.mtp_hidden_norm.",
        "model.mtp_linear_proj.",
    ]
    .iter()
    .any(|p| hf.starts_with(p))
}

impl Family for Ernie45Moe {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Ernie4_5_MoeForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "ernie4_5-moe"
    }
    fn model_type(&self) -> &'static str {
        "ernie4_5_moe"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::SentencePieceWithPrefixSpaceKey
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        // transformers' Ernie4_5_MoeConfig defaults.
        Some(match key {
            "max_position_embeddings" => Json::from(131072),
            "intermediate_size" => Json::from(12288),
            "rms_norm_eps" => Json::from(1e-5),
            "rope_theta" => Json::from(500000.0),
            "moe_intermediate_size" => Json::from(1536),
            "moe_k" => Json::from(6),
            "moe_num_experts" => Json::from(64),
            "moe_num_shared_experts" => Json::from(2),
            "moe_layer_start_index" => Json::from(1),
            "moe_layer_end_index" => Json::from(-1),
            "moe_layer_interval" => Json::from(1),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        Some(match rest {
            "mlp.gate.weight" => "ffn_gate_inp.weight",
            "mlp.moe_statics.e_score_correction_bias" => "exp_probs_b.bias",
            "mlp.shared_experts.gate_proj.weight" => "ffn_gate_shexp.weight",
            "mlp.shared_experts.up_proj.weight" => "ffn_up_shexp.weight",
            "mlp.shared_experts.down_proj.weight" => "ffn_down_shexp.weight",
            _ => return base::layer_tensor(rest),
        })
    }
    fn skips(&self, hf_name: &str, _cfg: &Config) -> bool {
        is_mtp(hf_name)
    }
    fn claims(&self, hf_name: &str) -> bool {
        base::layer_and_rest(hf_name)
            .is_some_and(|(_, rest)| moe::classify(&LAYOUT, &rest).is_some())
    }
    fn claimed_jobs(&self, ck: &Checkpoint, hp: &Hparams, claimed: &[usize]) -> Result<Vec<Job>> {
        let x = experts(hp)?;
        let mut found = moe::Collected::default();
        for &index in claimed {
            let t = &ck.tensors[index];
            if let Some((layer, rest)) = base::layer_and_rest(&t.name) {
                if let Some(f) = moe::classify(&LAYOUT, &rest) {
                    found.add(layer, f, index);
                }
            }
        }
        // Stacked tensors keep the experts' dtype (3-D: never convert's F32 rule).
        let input_type = |_: &str, _: &[u64], d: SrcDtype| {
            TypeId::of(match d {
                SrcDtype::F32 => GgmlType::F32,
                SrcDtype::F16 => GgmlType::F16,
                SrcDtype::BF16 | SrcDtype::F8E4M3 => GgmlType::BF16,
            })
        };
        let mut jobs = moe::stack(ck, hp, &LAYOUT, &x, found, input_type)?;
        // Each layer's three in convert's loop order: gate, up, down.
        let rank = |j: &Job| {
            let role = if j.name.contains("ffn_gate_exps") {
                0
            } else if j.name.contains("ffn_up_exps") {
                1
            } else {
                2
            };
            let layer: u32 = j
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (layer, role)
        };
        jobs.sort_by_key(rank);
        Ok(jobs)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        // Ernie4_5MoeModel.set_gguf_parameters, after the base class's keys.
        let x = experts(hp)?;
        let k = |s: &str| hp.key(s);
        md.set(k("expert_count"), Value::U32(x.n_expert as u32));
        md.set(k("expert_used_count"), Value::U32(x.n_used as u32));
        md.set(
            k("interleave_moe_layer_step"),
            Value::U32(need_u32(hp, "moe_layer_interval")?),
        );
        md.set(k("leading_dense_block_count"), Value::U32(x.first_layer));
        md.set(k("expert_feed_forward_length"), Value::U32(x.n_ff as u32));
        if let Some(shared) = hp.get_u32("moe_num_shared_experts")? {
            md.set(k("expert_shared_count"), Value::U32(shared));
            if shared > 0 {
                if let Some(ff) = hp.get_u32("intermediate_size")? {
                    md.set(
                        k("expert_shared_feed_forward_length"),
                        Value::U32(ff / hp.n_head_kv),
                    );
                }
            }
        }
        Ok(())
    }
    fn finish(
        &self,
        hp: &Hparams,
        _md: &Metadata,
        jobs: &mut Vec<Job>,
        _notes: &mut Vec<String>,
    ) -> Result<()> {
        // Every MoE layer has its router of one row per expert.
        let x = experts(hp)?;
        for layer in x.first_layer..hp.n_layer {
            let name = format!("blk.{layer}.ffn_gate_inp.weight");
            match jobs.iter().find(|j| j.name == name) {
                None => bail!(
                    "{}: layer {layer} has no router (model.layers.{layer}.mlp.gate.weight), but moe_layer_start_index = {} makes it a mixture of experts",
                    hp.cfg.path,
                    x.first_layer
                ),
                Some(j) if j.dims != [hp.n_embd, x.n_expert as u64] => bail!(
                    "{}: model.layers.{layer}.mlp.gate.weight has shape {:?}; moe_num_experts = {} and hidden_size = {} make it [{}, {}]",
                    hp.cfg.path,
                    j.dims.iter().rev().collect::<Vec<_>>(),
                    x.n_expert,
                    hp.n_embd,
                    x.n_expert,
                    hp.n_embd
                ),
                Some(_) => {}
            }
        }
        // Dense layers after the experts' start would have no experts for llama.cpp.
        if let Some(j) = jobs.iter().find(|j| {
            j.name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .is_some_and(|(l, rest)| {
                    l.parse::<u32>().is_ok_and(|l| l >= x.first_layer) && rest == "ffn_down.weight"
                })
        }) {
            bail!(
                "{}: {} is a dense feed-forward in a layer that moe_layer_start_index = {} makes a mixture of experts",
                hp.cfg.path,
                j.name,
                x.first_layer
            );
        }
        Ok(())
    }
    /// src/models/ernie4-5.cpp's `load_arch_tensors` for `ernie4_5-moe`: Llama's attention with
    /// optional q/k/v/o biases, `ffn_norm`, a dense feed-forward in the leading layers and the
    /// router, optional score bias, stacked experts and (with
    /// `expert_shared_feed_forward_length`) shared experts in the others; both optional here
    /// (the list is per block; `finish` and [`super::moe`] check each MoE layer).
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        const EMBD: &[&str] = &["embedding_length"];
        const FF: &[&str] = &["feed_forward_length"];
        const EXPERTS: &[&str] = &["expert_count"];
        const FF_EXP: &[&str] = &["expert_feed_forward_length"];
        const SHEXP: &[&str] = &["expert_shared_feed_forward_length"];
        let d = Dim::of;
        let mut t = base::loader_tensors(hyper);
        t.remove_global("rope_freqs.weight");
        t.layer
            .retain(|s| !s.name.starts_with("ffn_") || s.name == "ffn_norm.weight");
        t.layer.extend([
            T::optional("ffn_gate.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_down.weight", &[d(FF), d(EMBD)]),
            T::optional("ffn_up.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_gate_inp.weight", &[d(EMBD), d(EXPERTS)]),
            T::optional("exp_probs_b.bias", &[d(EXPERTS)]),
            T::optional("ffn_gate_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
            T::optional("ffn_down_exps.weight", &[d(FF_EXP), d(EMBD), d(EXPERTS)]),
            T::optional("ffn_up_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
        ]);
        if hyper.get(SHEXP[0], 0) > 0 {
            t.layer.extend([
                T::optional("ffn_gate_shexp.weight", &[d(EMBD), d(SHEXP)]),
                T::optional("ffn_down_shexp.weight", &[d(SHEXP), d(EMBD)]),
                T::optional("ffn_up_shexp.weight", &[d(EMBD), d(SHEXP)]),
            ]);
        }
        t
    }
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        match gguf_key {
            "expert_count" => &["moe_num_experts"],
            "expert_used_count" => &["moe_k"],
            "expert_feed_forward_length" => &["moe_intermediate_size"],
            "expert_shared_feed_forward_length" => &["intermediate_size"],
            _ => base::config_keys(gguf_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_convert() {
        let m = |n: &str| base::tensor_name(&Ernie45Moe, n);
        assert_eq!(
            m("model.layers.2.mlp.moe_statics.e_score_correction_bias").as_deref(),
            Some("blk.2.exp_probs_b.bias")
        );
        assert_eq!(
            m("model.layers.2.post_attention_layernorm.weight").as_deref(),
            Some("blk.2.ffn_norm.weight")
        );
        assert!(is_mtp("model.mtp_linear_proj.0.weight"));
        assert!(!is_mtp("model.layers.0.mlp.gate.weight"));
        assert!(Ernie45Moe.claims("model.layers.1.mlp.experts.3.up_proj.weight"));
        assert!(!Ernie45Moe.claims("model.layers.1.mlp.shared_experts.up_proj.weight"));
    }
}
