//! DeepSeek V3 / R1 and V2 (`DeepseekV3ForCausalLM`, `DeepseekV2ForCausalLM`, llama.cpp arch
//! `deepseek2`): conversion/deepseek.py's `DeepseekV2Model`, loaded by llama.cpp's
//! src/models/deepseek2.cpp.
//!
//! - Multi-head latent attention: q through a low-rank pair (`q_a_proj` -> `q_a_layernorm` ->
//!   `q_b_proj`, or one `q_proj` when `q_lora_rank` is null, as in V2-Lite), k/v through
//!   `kv_a_proj_with_mqa` (the compressed kv of `kv_lora_rank` plus one shared rope key of
//!   `qk_rope_head_dim`) and `kv_b_proj`, which convert splits per head into `attn_k_b`
//!   (the `qk_nope_head_dim` K rows, transposed: ne {nope, kv_lora_rank, n_head}) and
//!   `attn_v_b` (the `v_head_dim` V rows: ne {kv_lora_rank, v, n_head}) for llama.cpp's
//!   absorbed attention ([`Transform::KvB`]). The file says one KV head
//!   (`head_count_kv = 1`), key_length = kv_lora_rank + rope dims, value_length =
//!   kv_lora_rank, and the per-head sizes in `key_length_mla` / `value_length_mla`.
//! - The first `first_k_dense_replace` layers have a dense feed-forward; the others a router
//!   (`mlp.gate`) with the expert score bias (`e_score_correction_bias` -> `exp_probs_b.bias`),
//!   `n_routed_experts` experts of `moe_intermediate_size` stacked as usual (see [`super::moe`])
//!   and `n_shared_experts` shared experts (`ffn_*_shexp`).
//! - Routing keys: `expert_group_count` / `expert_group_used_count` (`n_group`, `topk_group`,
//!   written by the base class), `expert_gating_func` from `scoring_func` (sigmoid for V3),
//!   `expert_weights_scale` (`routed_scaling_factor`), `expert_weights_norm`
//!   (`norm_topk_prob`), and yarn's `yarn_log_multiplier` = 0.1 * `mscale_all_dim`.
//! - Multi-token-prediction layers past `num_hidden_layers` are left out, as convert does.
//!
//! The vocabulary is `_set_vocab_gpt2` (byte-level BPE).

use super::config::Config;
use super::moe::{Layout, Role};
use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{base, Family, Hparams};
use crate::gguf::{Metadata, Value};
use crate::job::{Job, TensorSource, Transform};
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Result};
use serde_json::Value as Json;

pub struct Deepseek2;

/// Kiln's pseudo-keys for the loader's derived sizes (see [`super::shapes::Hyper::get`]):
/// `n_embd_head_k_mla - n_rot` and `kv_lora_rank + n_rot`.
pub const QK_NOPE: &str = "attention.key_length_mla-rope";
pub const KV_A: &str = "attention.kv_lora_rank+rope";

fn is_v2(hf_arch: &str) -> bool {
    hf_arch == "DeepseekV2ForCausalLM"
}

/// An unsigned config value (or the class default); an explicit null is None, not the default
/// (V2-Lite's `q_lora_rank: null`).
fn uint(hp: &Hparams, key: &str) -> Result<Option<u64>> {
    if hp.cfg.is_null(key) {
        return Ok(None);
    }
    match hp.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(n)),
            None => bail!("{}: {key} is {v}, not a non-negative integer", hp.cfg.path),
        },
    }
}

fn need(hp: &Hparams, key: &str) -> Result<u64> {
    match uint(hp, key)? {
        Some(n) => Ok(n),
        None => bail!("{}: DeepSeek's MLA needs {key}", hp.cfg.path),
    }
}

fn u32_of(hp: &Hparams, key: &str, n: u64) -> Result<u32> {
    u32::try_from(n).map_err(|_| {
        anyhow::anyhow!(
            "{}: {key} = {n} does not fit in the 32 bits GGUF stores it in",
            hp.cfg.path
        )
    })
}

impl Family for Deepseek2 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "deepseek2"
    }
    fn model_type(&self) -> &'static str {
        "deepseek_v3"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::Gpt2
    }
    fn config_default(&self, hf_arch: &str, key: &str) -> Option<Json> {
        // transformers' DeepseekV3Config / DeepseekV2Config defaults (convert reads
        // AutoConfig(...).to_dict()). Its head_dim (= qk_rope_head_dim) is handled by
        // always_writes_head_dim: the value is overwritten in place below.
        let v2 = is_v2(hf_arch);
        Some(match key {
            "max_position_embeddings" => Json::from(if v2 { 2048 } else { 4096 }),
            "intermediate_size" => Json::from(if v2 { 11008 } else { 18432 }),
            "moe_intermediate_size" => Json::from(if v2 { 1407 } else { 2048 }),
            "n_shared_experts" => Json::from(if v2 { 2 } else { 1 }),
            "n_routed_experts" => Json::from(if v2 { 160 } else { 256 }),
            "routed_scaling_factor" => Json::from(if v2 { 1.0 } else { 2.5 }),
            "kv_lora_rank" => Json::from(512),
            "q_lora_rank" => Json::from(1536),
            "qk_rope_head_dim" => Json::from(64),
            "v_head_dim" => Json::from(128),
            "qk_nope_head_dim" => Json::from(128),
            "n_group" if !v2 => Json::from(8),
            "topk_group" if !v2 => Json::from(4),
            "num_experts_per_tok" => Json::from(if v2 { 6 } else { 8 }),
            "first_k_dense_replace" => Json::from(if v2 { 0 } else { 3 }),
            "norm_topk_prob" => Json::from(!v2),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        Some(match rest {
            "self_attn.q_a_proj.weight" => "attn_q_a.weight",
            "self_attn.q_a_layernorm.weight" => "attn_q_a_norm.weight",
            "self_attn.q_b_proj.weight" => "attn_q_b.weight",
            "self_attn.kv_a_proj_with_mqa.weight" => "attn_kv_a_mqa.weight",
            "self_attn.kv_a_layernorm.weight" => "attn_kv_a_norm.weight",
            // Split into attn_k_b and attn_v_b in `finish`.
            "self_attn.kv_b_proj.weight" => "attn_kv_b.weight",
            "mlp.gate.weight" => "ffn_gate_inp.weight",
            "mlp.gate.e_score_correction_bias" => "exp_probs_b.bias",
            "mlp.shared_experts.gate_proj.weight" => "ffn_gate_shexp.weight",
            "mlp.shared_experts.up_proj.weight" => "ffn_up_shexp.weight",
            "mlp.shared_experts.down_proj.weight" => "ffn_down_shexp.weight",
            _ => return base::layer_tensor(rest),
        })
    }
    fn skips(&self, hf_name: &str, cfg: &Config) -> bool {
        // convert's skip_mtp: layers at or past num_hidden_layers.
        let Some((layer, _)) = base::layer_and_rest(hf_name) else {
            return false;
        };
        matches!(cfg.uint(&["num_hidden_layers"]), Ok(Some(n)) if u64::from(layer) >= n)
    }
    fn experts(&self) -> Option<Layout> {
        Some(Layout {
            module: "mlp",
            projections: [
                ("gate_proj", Role::Gate),
                ("up_proj", Role::Up),
                ("down_proj", Role::Down),
            ],
            ff_keys: &["moe_intermediate_size", "intermediate_size"],
        })
    }
    fn first_moe_layer(&self, hp: &Hparams) -> Result<u32> {
        let n = match uint(hp, "first_k_dense_replace")? {
            Some(n) => n,
            None if uint(hp, "n_routed_experts")?.is_none() => u64::from(hp.n_layer),
            None => 0,
        };
        if n > u64::from(hp.n_layer) {
            bail!(
                "{}: first_k_dense_replace = {n} is more than num_hidden_layers = {}",
                hp.cfg.path,
                hp.n_layer
            );
        }
        Ok(n as u32)
    }
    fn always_writes_head_dim(&self) -> bool {
        true
    }
    fn write_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        // MLA is written as MQA: one KV head.
        let mqa = Hparams {
            cfg: hp.cfg,
            hf_arch: hp.hf_arch,
            family: hp.family,
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
            n_head: hp.n_head,
            n_head_kv: 1,
            head_dim: hp.head_dim,
        };
        base::write_hparams(self, &mqa, md)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        let k = |s: &str| hp.key(s);
        let u = |key: &str, n: u64| -> Result<Value> { Ok(Value::U32(u32_of(hp, key, n)?)) };
        md.set(
            k("leading_dense_block_count"),
            Value::U32(self.first_moe_layer(hp)?),
        );
        let kv_lora_rank = uint(hp, "kv_lora_rank")?.unwrap_or(512);
        let vocab = need(hp, "vocab_size")?;
        md.set(k("vocab_size"), u("vocab_size", vocab)?);
        if let Some(q) = uint(hp, "q_lora_rank")? {
            md.set(k("attention.q_lora_rank"), u("q_lora_rank", q)?);
        }
        let rope = need(hp, "qk_rope_head_dim")?;
        let nope = need(hp, "qk_nope_head_dim")?;
        let v = need(hp, "v_head_dim")?;
        md.set(
            k("attention.kv_lora_rank"),
            u("kv_lora_rank", kv_lora_rank)?,
        );
        md.set(
            k("attention.key_length"),
            u("kv_lora_rank", kv_lora_rank + rope)?,
        );
        md.set(
            k("attention.value_length"),
            u("kv_lora_rank", kv_lora_rank)?,
        );
        md.set(
            k("attention.key_length_mla"),
            u("qk_nope_head_dim", nope + rope)?,
        );
        md.set(k("attention.value_length_mla"), u("v_head_dim", v)?);
        let ff_exp = match uint(hp, "moe_intermediate_size")? {
            Some(n) => n,
            None => need(hp, "intermediate_size")?,
        };
        md.set(
            k("expert_feed_forward_length"),
            u("moe_intermediate_size", ff_exp)?,
        );
        if let Some(n) = uint(hp, "n_routed_experts")? {
            md.set(k("expert_count"), u("n_routed_experts", n)?);
        }
        let shared = uint(hp, "n_shared_experts")?.unwrap_or(0);
        md.set(k("expert_shared_count"), u("n_shared_experts", shared)?);
        if let Some(s) = hp.get_f32("routed_scaling_factor")? {
            md.set(k("expert_weights_scale"), Value::F32(s));
        }
        if hp.get("norm_topk_prob").and_then(|v| v.as_bool()) == Some(true) {
            md.set(k("expert_weights_norm"), Value::Bool(true));
        }
        md.set(k("rope.dimension_count"), u("qk_rope_head_dim", rope)?);
        if let Some(m) = hp.cfg.rope().get("mscale_all_dim").and_then(Json::as_f64) {
            md.set(
                k("rope.scaling.yarn_log_multiplier"),
                Value::F32((0.1 * m) as f32),
            );
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
        // convert's kv_b_proj split: per head, nope K rows then v V rows; K transposed.
        let nope = need(hp, "qk_nope_head_dim")? as usize;
        let v = need(hp, "v_head_dim")? as usize;
        let n_head = hp.n_head as usize;
        let mut out = Vec::with_capacity(jobs.len() + hp.n_layer as usize);
        for j in jobs.drain(..) {
            let Some(prefix) = j.name.strip_suffix("attn_kv_b.weight") else {
                out.push(j);
                continue;
            };
            let TensorSource::Input { index, .. } = j.source else {
                out.push(j);
                continue;
            };
            let rank = j.dims[0] as usize;
            let rows = j.dims.get(1).copied().unwrap_or(1) as usize;
            if j.dims.len() != 2 || rows != n_head * (nope + v) {
                let layer = prefix.trim_start_matches("blk.").trim_end_matches('.');
                bail!(
                    "{}: num_attention_heads = {n_head}, qk_nope_head_dim = {nope} and v_head_dim = {v} make model.layers.{layer}.self_attn.kv_b_proj.weight [{}, {rank}], the checkpoint's is {:?}",
                    hp.cfg.path,
                    n_head * (nope + v),
                    j.dims.iter().rev().collect::<Vec<_>>(),
                );
            }
            for (name, dims, k) in [
                ("attn_k_b.weight", [nope, rank, n_head], true),
                ("attn_v_b.weight", [rank, v, n_head], false),
            ] {
                out.push(Job {
                    name: format!("{prefix}{name}"),
                    dims: dims.iter().map(|&d| d as u64).collect(),
                    input_type: j.input_type,
                    out_type: j.out_type,
                    fallback_from: None,
                    source: TensorSource::Input {
                        index,
                        transform: Transform::KvB { nope, v, rank, k },
                    },
                });
            }
        }
        *jobs = out;
        Ok(())
    }
    /// src/models/deepseek2.cpp's `load_arch_tensors` with MLA (the split k_b/v_b): the
    /// dense feed-forward of the leading layers and the MoE tensors of the others are both
    /// optional here (the list is per block, not per layer); [`super::moe`] checks every MoE
    /// layer's experts and routers.
    fn loader_tensors(&self, hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        const EMBD: &[&str] = &["embedding_length"];
        const VOCAB: &[&str] = &[super::shapes::VOCAB];
        const Q_RANK: &[&str] = &["attention.q_lora_rank"];
        const KV_RANK: &[&str] = &["attention.kv_lora_rank"];
        const Q: &[&str] = &["attention.head_count", "attention.key_length_mla"];
        const O: &[&str] = &["attention.head_count", "attention.value_length_mla"];
        const KV_A_DIM: &[&str] = &[KV_A];
        const NOPE: &[&str] = &[QK_NOPE];
        const HEADS: &[&str] = &["attention.head_count"];
        const V_MLA: &[&str] = &["attention.value_length_mla"];
        const FF: &[&str] = &["feed_forward_length"];
        const EXPERTS: &[&str] = &["expert_count"];
        const FF_EXP: &[&str] = &["expert_feed_forward_length"];
        const SHEXP: &[&str] = &["expert_feed_forward_length", "expert_shared_count"];
        let d = Dim::of;
        let mut layer = vec![T::required("attn_norm.weight", &[d(EMBD)])];
        if hyper.get("attention.q_lora_rank", 0) > 0 {
            layer.extend([
                T::required("attn_q_a_norm.weight", &[d(Q_RANK)]),
                T::required("attn_q_a.weight", &[d(EMBD), d(Q_RANK)]),
                T::required("attn_q_b.weight", &[d(Q_RANK), d(Q)]),
            ]);
        } else {
            layer.push(T::required("attn_q.weight", &[d(EMBD), d(Q)]));
        }
        layer.extend([
            T::required("attn_kv_a_norm.weight", &[d(KV_RANK)]),
            T::required("attn_kv_a_mqa.weight", &[d(EMBD), d(KV_A_DIM)]),
            T::required("attn_k_b.weight", &[d(NOPE), d(KV_RANK), d(HEADS)]),
            T::required("attn_v_b.weight", &[d(KV_RANK), d(V_MLA), d(HEADS)]),
            T::required("attn_output.weight", &[d(O), d(EMBD)]),
            T::required("ffn_norm.weight", &[d(EMBD)]),
            T::optional("ffn_gate.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_down.weight", &[d(FF), d(EMBD)]),
            T::optional("ffn_up.weight", &[d(EMBD), d(FF)]),
            T::optional("ffn_gate_inp.weight", &[d(EMBD), d(EXPERTS)]),
            T::optional("exp_probs_b.bias", &[d(EXPERTS)]),
            T::optional("ffn_down_exps.weight", &[d(FF_EXP), d(EMBD), d(EXPERTS)]),
            T::optional("ffn_gate_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
            T::optional("ffn_up_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
            T::optional("ffn_gate_shexp.weight", &[d(EMBD), d(SHEXP)]),
            T::optional("ffn_down_shexp.weight", &[d(SHEXP), d(EMBD)]),
            T::optional("ffn_up_shexp.weight", &[d(EMBD), d(SHEXP)]),
        ]);
        LoaderTensors {
            global: vec![
                T::required("token_embd.weight", &[d(EMBD), d(VOCAB)]),
                T::required("output_norm.weight", &[d(EMBD)]),
                T::optional("output.weight", &[d(EMBD), d(VOCAB)]),
            ],
            layer,
        }
    }
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        match gguf_key {
            "expert_count" => &["n_routed_experts"],
            "expert_used_count" => &["num_experts_per_tok"],
            "expert_feed_forward_length" => &["moe_intermediate_size"],
            "expert_shared_count" => &["n_shared_experts"],
            "attention.q_lora_rank" => &["q_lora_rank"],
            "attention.kv_lora_rank" => &["kv_lora_rank"],
            "attention.key_length_mla" => &["qk_nope_head_dim"],
            "attention.value_length_mla" => &["v_head_dim"],
            "rope.dimension_count" => &["qk_rope_head_dim"],
            QK_NOPE => &["qk_nope_head_dim"],
            KV_A => &["kv_lora_rank"],
            _ => base::config_keys(gguf_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mla_and_moe_names_map_like_convert() {
        let m = |n: &str| base::tensor_name(&Deepseek2, n);
        for (hf, gguf) in [
            (
                "model.layers.3.self_attn.q_a_proj.weight",
                "blk.3.attn_q_a.weight",
            ),
            (
                "model.layers.3.self_attn.kv_a_layernorm.weight",
                "blk.3.attn_kv_a_norm.weight",
            ),
            (
                "model.layers.3.mlp.gate.e_score_correction_bias",
                "blk.3.exp_probs_b.bias",
            ),
            (
                "model.layers.3.mlp.shared_experts.down_proj.weight",
                "blk.3.ffn_down_shexp.weight",
            ),
            ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"),
        ] {
            assert_eq!(m(hf).as_deref(), Some(gguf), "{hf}");
        }
    }

    #[test]
    fn kv_b_split_rows() {
        // 2 heads of nope 3 + v 2 rows: V row h*2 + i is source row h*5 + 3 + i.
        let t = Transform::KvB {
            nope: 3,
            v: 2,
            rank: 4,
            k: false,
        };
        let rows: Vec<usize> = (0..4).map(|r| t.source_index(r, 4)).collect();
        assert_eq!(rows, [3, 4, 8, 9]);
        assert!(!t.keeps_row_order());
    }
}
