//! Phi-3 and Phi-4 (`Phi3ForCausalLM`, GGUF `phi3`): conversion/phi.py's `Phi3MiniModel` (the
//! llama.cpp of llama-cpp-python 0.3.36). The fused `qkv_proj` and `gate_up_proj` are kept fused
//! (`attn_qkv`, and `ffn_up` of 2 x intermediate_size rows, gate half first); RoPE is NeoX style
//! (no q/k permutation), over the first `partial_rotary_factor` of each head (Phi-4-mini: 0.75);
//! LongRoPE checkpoints (`rope_scaling.type` "longrope"/"su", or "yarn") get the
//! `rope_factors_long`/`rope_factors_short` tensors and `rope.scaling.attn_factor`. Its
//! hyperparameters in its own order (it does not call the base class), `attention.sliding_window`
//! always (0 when config.json has none: Phi-4). Vocabulary: GPT-2 BPE when tokenizer_config.json
//! names `GPT2Tokenizer` (Phi-4), else its own SentencePiece routine (Phi-3).

use super::shapes::{Dim, Hyper, LoaderTensors};
use super::{Family, Hparams};
use crate::gguf::{Metadata, TypeId, Value};
use crate::job::{Job, TensorSource};
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use serde_json::Value as Json;

pub struct Phi3;

/// What `set_gguf_parameters` and `generate_extra_tensors` both derive from the rope
/// parameters.
struct Rope {
    max_pos: u32,
    orig_max_pos: u32,
    rope_dims: u32,
}

fn rope_of(hp: &Hparams) -> Result<Rope> {
    let path = &hp.cfg.path;
    let rope = hp.cfg.rope();
    // find_hparam(["n_positions", "max_position_embeddings"]).
    let max_pos = match hp.cfg.uint(&["n_positions"])? {
        Some(v) => u32::try_from(v).ok(),
        None => hp.get_u32("max_position_embeddings")?,
    }
    .with_context(|| format!("{path}: no max_position_embeddings"))?;
    // rope_parameters["original_max_position_embeddings"], mirrored from the top level.
    let orig = match rope.get("original_max_position_embeddings") {
        Some(v) => v.as_u64().with_context(|| {
            format!("{path}: original_max_position_embeddings is {v}, not an integer")
        })?,
        None => hp
            .get_u32("original_max_position_embeddings")?
            .with_context(|| {
                format!("{path}: no original_max_position_embeddings (Phi-3 needs it)")
            })? as u64,
    };
    let orig_max_pos = u32::try_from(orig)
        .with_context(|| format!("{path}: original_max_position_embeddings = {orig}"))?;
    let rot_pct = match rope.get("partial_rotary_factor") {
        Some(v) => v
            .as_f64()
            .with_context(|| format!("{path}: partial_rotary_factor is {v}, not a number"))?,
        None => hp.get_f32("partial_rotary_factor")?.map_or(1.0, f64::from),
    };
    // int(rot_pct * n_embd) // n_head, in Python's float arithmetic.
    let rope_dims = ((rot_pct * hp.n_embd as f64) as u64) / hp.n_head as u64;
    Ok(Rope {
        max_pos,
        orig_max_pos,
        rope_dims: rope_dims as u32,
    })
}

/// LongRoPE's long and short factors and its attention factor.
type LongRope = (Vec<f32>, Vec<f32>, f32);

/// The long and short rope factors and the attention factor, when the checkpoint has
/// LongRoPE factors (`generate_extra_tensors`), with convert's checks.
fn long_rope(hp: &Hparams, r: &Rope) -> Result<Option<LongRope>> {
    let path = &hp.cfg.path;
    let rope = hp.cfg.rope();
    let factors = |key: &str| -> Result<Option<Vec<f32>>> {
        match rope.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_f64()
                        .map(|x| x as f32)
                        .with_context(|| format!("{path}: rope_scaling.{key} holds {v}"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => bail!("{path}: rope_scaling.{key} is {v}, not a list"),
        }
    };
    let long = factors("long_factor")?;
    let Some(long) = long.filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let short = factors("short_factor")?;
    let scale = r.max_pos as f64 / r.orig_max_pos as f64;
    let ty = rope
        .get("rope_type")
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let attn_factor = match ty.as_str() {
        "" => bail!("{path}: rope_scaling has long_factor but no type (convert needs it)"),
        "su" | "longrope" if scale > 1.0 => {
            (1.0 + scale.ln() / (r.orig_max_pos as f64).ln()).sqrt()
        }
        "yarn" if scale > 1.0 => 0.1 * scale.ln() + 1.0,
        "su" | "longrope" | "yarn" => 1.0,
        other => bail!("{path}: rope scaling type {other:?} with long_factor is not supported (convert supports longrope, su and yarn)"),
    };
    let Some(short) = short else {
        bail!("{path}: rope_scaling has long_factor but no short_factor");
    };
    let half = r.rope_dims as f64 / 2.0;
    if long.len() != short.len() || long.len() as f64 != half {
        bail!(
            "{path}: rope_scaling's long_factor and short_factor must have {half} entries (the rotary dimensions / 2), not {} and {}",
            long.len(),
            short.len()
        );
    }
    Ok(Some((long, short, attn_factor as f32)))
}

impl Family for Phi3 {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Phi3ForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "phi3"
    }
    fn model_type(&self) -> &'static str {
        "phi3"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::Phi3
    }
    /// transformers' `Phi3Config` defaults.
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        Some(match key {
            "rope_theta" => Json::from(10_000.0),
            "rms_norm_eps" => Json::from(1e-5),
            "max_position_embeddings" => Json::from(4096),
            "original_max_position_embeddings" => Json::from(4096),
            "intermediate_size" => Json::from(8192),
            _ => return None,
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        match rest {
            "self_attn.qkv_proj.weight" => Some("attn_qkv.weight"),
            "mlp.gate_up_proj.weight" => Some("ffn_up.weight"),
            _ => super::base::layer_tensor(rest),
        }
    }
    fn write_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        let k = |s: &str| hp.key(s);
        let path = &hp.cfg.path;
        let file_type = md.get("general.file_type").cloned();
        let r = rope_of(hp)?;
        let n_ff = hp
            .get_u32("intermediate_size")?
            .with_context(|| format!("{path}: no intermediate_size"))?;
        let eps = hp
            .get_f32("rms_norm_eps")?
            .with_context(|| format!("{path}: no rms_norm_eps"))?;
        let theta = hp
            .cfg
            .rope()
            .get("rope_theta")
            .and_then(Json::as_f64)
            .or_else(|| hp.get("rope_theta").and_then(|v| v.as_f64()))
            .with_context(|| format!("{path}: no rope_theta"))?;
        let sliding_window = hp.get_u32("sliding_window")?.unwrap_or(0);

        // generate_extra_tensors runs first (prepare_tensors), so its key comes right after
        // general.architecture.
        if let Some((_, _, attn_factor)) = long_rope(hp, &r)? {
            let mut with = Metadata::new();
            for (key, v) in md.iter() {
                with.set(key, v.clone());
                if key == crate::gguf::keys::ARCHITECTURE {
                    with.set(k("rope.scaling.attn_factor"), Value::F32(attn_factor));
                }
            }
            *md = with;
        }
        md.set(k("context_length"), Value::U32(r.max_pos));
        md.set(
            k("rope.scaling.original_context_length"),
            Value::U32(r.orig_max_pos),
        );
        md.set(k("embedding_length"), Value::U32(hp.n_embd as u32));
        md.set(k("feed_forward_length"), Value::U32(n_ff));
        md.set(k("block_count"), Value::U32(hp.n_layer));
        md.set(k("attention.head_count"), Value::U32(hp.n_head));
        md.set(k("attention.head_count_kv"), Value::U32(hp.n_head_kv));
        md.set(k("attention.layer_norm_rms_epsilon"), Value::F32(eps));
        md.set(k("rope.dimension_count"), Value::U32(r.rope_dims));
        md.set(k("rope.freq_base"), Value::F32(theta as f32));
        if let Some(ft) = file_type {
            // convert writes it at the end of set_gguf_parameters
            md.set_last("general.file_type", ft);
        }
        md.set(k("attention.sliding_window"), Value::U32(sliding_window));
        Ok(())
    }
    fn finish(
        &self,
        hp: &Hparams,
        _md: &Metadata,
        jobs: &mut Vec<Job>,
        notes: &mut Vec<String>,
    ) -> Result<()> {
        let r = rope_of(hp)?;
        if let Some((long, short, attn_factor)) = long_rope(hp, &r)? {
            notes.push(format!(
                "LongRoPE: rope_factors_long/short of {} entries, attention factor {attn_factor}",
                long.len()
            ));
            for (name, values) in [
                ("rope_factors_long.weight", long),
                ("rope_factors_short.weight", short),
            ] {
                jobs.push(Job {
                    name: name.into(),
                    dims: vec![values.len() as u64],
                    input_type: TypeId::of(GgmlType::F32),
                    out_type: TypeId::of(GgmlType::F32),
                    fallback_from: None,
                    source: TensorSource::Values(values),
                });
            }
        }
        Ok(())
    }
    /// src/models/phi3.cpp: attn_qkv `{n_embd, n_embd + 2 n_embd_gqa}` (or separate q/k/v,
    /// `create_tensor_qkv`, none required), attn_output `{n_embd, n_embd}`, ffn_up
    /// `{n_embd, 2 n_ff}` (gate and up fused), ffn_down, no gate; the rope factors
    /// `{n_rot / 2}` optional.
    fn loader_tensors(&self, _hyper: &Hyper) -> LoaderTensors {
        use super::shapes::TensorSpec as T;
        let d = Dim::of;
        const EMBD: &[&str] = &["embedding_length"];
        const FF: &[&str] = &["feed_forward_length"];
        const VOCAB: &[&str] = &[super::shapes::VOCAB];
        const KV: &[&str] = &["attention.key_length", "attention.head_count_kv"];
        const VV: &[&str] = &["attention.value_length", "attention.head_count_kv"];
        const ROT: &[&str] = &["rope.dimension_count"];
        LoaderTensors {
            global: vec![
                T::required("token_embd.weight", &[d(EMBD), d(VOCAB)]),
                T::required("output_norm.weight", &[d(EMBD)]),
                T::optional("output.weight", &[d(EMBD), d(VOCAB)]),
                T::optional("rope_factors_long.weight", &[Dim::half(ROT)]),
                T::optional("rope_factors_short.weight", &[Dim::half(ROT)]),
            ],
            layer: vec![
                T::required("attn_norm.weight", &[d(EMBD)]),
                T::optional("attn_qkv.weight", &[d(EMBD), Dim::plus_twice(EMBD, KV)]),
                T::optional("attn_qkv.bias", &[Dim::plus_twice(EMBD, KV)]),
                T::optional("attn_q.weight", &[d(EMBD), d(EMBD)]),
                T::optional("attn_k.weight", &[d(EMBD), d(KV)]),
                T::optional("attn_v.weight", &[d(EMBD), d(VV)]),
                T::optional("attn_q.bias", &[d(EMBD)]),
                T::optional("attn_k.bias", &[d(KV)]),
                T::optional("attn_v.bias", &[d(VV)]),
                T::required("attn_output.weight", &[d(EMBD), d(EMBD)]),
                T::required("ffn_norm.weight", &[d(EMBD)]),
                T::required("ffn_down.weight", &[d(FF), d(EMBD)]),
                T::required("ffn_up.weight", &[d(EMBD), Dim::double(FF)]),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_tensors_keep_their_fusion() {
        let m = |n: &str| super::super::base::tensor_name(&Phi3, n).unwrap();
        assert_eq!(
            m("model.layers.2.self_attn.qkv_proj.weight"),
            "blk.2.attn_qkv.weight"
        );
        assert_eq!(
            m("model.layers.2.mlp.gate_up_proj.weight"),
            "blk.2.ffn_up.weight"
        );
        assert_eq!(
            m("model.layers.2.mlp.down_proj.weight"),
            "blk.2.ffn_down.weight"
        );
        assert_eq!(
            m("model.layers.2.post_attention_layernorm.weight"),
            "blk.2.ffn_norm.weight"
        );
    }
}
