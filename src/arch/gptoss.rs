//! gpt-oss (`GptOssForCausalLM`, llama.cpp arch `gpt-oss`, its LLM_ARCH_OPENAI_MOE):
//! conversion/gpt_oss.py's `GptOssModel`. Attention with q/k/v/o biases and one learned sink
//! logit per head (`self_attn.sinks` -> `attn_sinks.weight`), layers alternating sliding-window
//! and full attention (llama.cpp's pattern 2: even layers slide), YaRN RoPE (the base class's
//! `rope.scaling.*` keys), `post_attention_layernorm` -> `post_attention_norm`, a router with a
//! bias (`mlp.router` -> `ffn_gate_inp`) and `num_local_experts` experts with biases.
//!
//! The experts come in two forms, both converted as convert does:
//! - as released: MXFP4 `mlp.experts.{gate_up,down}_proj_blocks` (u8 [E, R, nb, 16]) and
//!   `_scales` (u8 E8M0 [E, R, nb]), rows already [out, in]; repacked bit for bit into ggml
//!   MXFP4 tensors (see [`crate::source::mx`]), gate = the even rows of gate_up, up = the odd
//!   rows; the file type of a float output is then MOSTLY_MXFP4_MOE;
//! - dequantized (bf16 releases, transformers' own parameters): `mlp.experts.gate_up_proj`
//!   [E, D, 2F] and `down_proj` [E, F, D], transposed on the way (`transpose(-1, -2)`) and
//!   gate_up split into its even (gate) and odd (up) columns.
//!
//! The biases `gate_up_proj_bias` [E, 2F] (split the same way) and `down_proj_bias` [E, D] go
//! to `ffn_{gate,up,down}_exps.bias`. Every part is read a slab at a time.

use super::moe::Experts;
use super::shapes::{Dim, Hyper, LoaderTensors, TensorSpec as T, VOCAB};
use super::{base, hf_input_type, Family, Hparams};
use crate::gguf::{Metadata, TypeId, Value};
use crate::job::{Job, Mxfp4Rows, Strided, TensorSource, Transform};
use crate::source::{Checkpoint, SrcDtype};
use crate::tokenizer::VocabRecipe;
use anyhow::{bail, Result};
use kiln_kernels::GgmlType;
use serde_json::Value as Json;
use std::collections::BTreeMap;

pub struct GptOss;

const EXPERTS_PREFIX: &str = "mlp.experts.";

impl Family for GptOss {
    fn hf_architectures(&self) -> &'static [&'static str] {
        &["GptOssForCausalLM"]
    }
    fn gguf_name(&self) -> &'static str {
        "gpt-oss"
    }
    fn model_type(&self) -> &'static str {
        "gpt_oss"
    }
    fn vocab(&self) -> VocabRecipe {
        VocabRecipe::Gpt2
    }
    fn config_default(&self, _hf_arch: &str, key: &str) -> Option<Json> {
        // transformers' GptOssConfig defaults.
        Some(match key {
            "num_hidden_layers" => Json::from(36),
            "num_local_experts" => Json::from(128),
            "vocab_size" => Json::from(201088),
            "hidden_size" => Json::from(2880),
            "intermediate_size" => Json::from(2880),
            "head_dim" => Json::from(64),
            "num_attention_heads" => Json::from(64),
            "num_key_value_heads" => Json::from(8),
            "sliding_window" => Json::from(128),
            "rope_theta" => Json::from(150000.0),
            "max_position_embeddings" => Json::from(131072),
            "rms_norm_eps" => Json::from(1e-5),
            "num_experts_per_tok" => Json::from(4),
            _ => return base::config_default(key),
        })
    }
    fn layer_tensor(&self, rest: &str) -> Option<&'static str> {
        Some(match rest {
            "self_attn.sinks" | "self_attn.sinks.weight" => "attn_sinks.weight",
            "mlp.router.weight" => "ffn_gate_inp.weight",
            "mlp.router.bias" => "ffn_gate_inp.bias",
            "post_attention_layernorm.weight" => "post_attention_norm.weight",
            _ => return base::layer_tensor(rest),
        })
    }
    fn claims(&self, hf_name: &str) -> bool {
        base::layer_and_rest(hf_name).is_some_and(|(_, rest)| rest.starts_with(EXPERTS_PREFIX))
    }
    fn claimed_jobs(&self, ck: &Checkpoint, hp: &Hparams, claimed: &[usize]) -> Result<Vec<Job>> {
        expert_jobs(ck, hp, claimed)
    }
    fn extra_hparams(&self, hp: &Hparams, md: &mut Metadata) -> Result<()> {
        // GptOssModel.set_gguf_parameters: the window, and the experts' width.
        let Some(w) = hp.get_u32("sliding_window")? else {
            bail!("{}: no sliding_window", hp.cfg.path);
        };
        md.set(hp.key("attention.sliding_window"), Value::U32(w));
        if let Some(n) = hp.get_u32("intermediate_size")? {
            md.set(hp.key("expert_feed_forward_length"), Value::U32(n));
        }
        Ok(())
    }
    fn finish(
        &self,
        hp: &Hparams,
        _md: &Metadata,
        _jobs: &mut Vec<Job>,
        _notes: &mut Vec<String>,
    ) -> Result<()> {
        if let Some(q) = hp.cfg.get("quantization_config").filter(|q| !q.is_null()) {
            let method = q.get("quant_method").and_then(Json::as_str).unwrap_or("?");
            if method != "mxfp4" {
                bail!(
                    "{}: quantization_config.quant_method is {method:?}; kiln reads gpt-oss's experts as MXFP4 blocks (\"mxfp4\") or in bf16/f16/f32",
                    hp.cfg.path
                );
            }
        }
        Ok(())
    }
    fn sliding_window_pattern(&self, _n_swa: u32) -> Option<u32> {
        // llama_model_openai_moe: load_swa_pattern(ml, 2).
        Some(2)
    }
    /// src/models/openai-moe.cpp: output required, a post-attention norm, q/k/v of `n_rot`-wide
    /// heads (optional biases), attn_output with its bias, the sinks, a router with a bias,
    /// stacked experts of `expert_feed_forward_length` with biases.
    fn loader_tensors(&self, _hyper: &Hyper) -> LoaderTensors {
        const EMBD: &[&str] = &["embedding_length"];
        const EXPERTS: &[&str] = &["expert_count"];
        const FF_EXP: &[&str] = &["expert_feed_forward_length"];
        const HEADS: &[&str] = &["attention.head_count"];
        const Q: &[&str] = &["attention.key_length", "attention.head_count"];
        const KV: &[&str] = &["attention.key_length", "attention.head_count_kv"];
        const V: &[&str] = &["attention.value_length", "attention.head_count_kv"];
        const VOC: &[&str] = &[VOCAB];
        let d = Dim::of;
        LoaderTensors {
            global: vec![
                T::required("token_embd.weight", &[d(EMBD), d(VOC)]),
                T::required("output_norm.weight", &[d(EMBD)]),
                T::required("output.weight", &[d(EMBD), d(VOC)]),
            ],
            layer: vec![
                T::required("attn_norm.weight", &[d(EMBD)]),
                T::required("post_attention_norm.weight", &[d(EMBD)]),
                T::required("attn_q.weight", &[d(EMBD), d(Q)]),
                T::required("attn_k.weight", &[d(EMBD), d(KV)]),
                T::required("attn_v.weight", &[d(EMBD), d(V)]),
                T::optional("attn_q.bias", &[d(Q)]),
                T::optional("attn_k.bias", &[d(KV)]),
                T::optional("attn_v.bias", &[d(V)]),
                T::required("attn_output.weight", &[d(Q), d(EMBD)]),
                T::required("attn_output.bias", &[d(EMBD)]),
                T::required("attn_sinks.weight", &[d(HEADS)]),
                T::required("ffn_gate_inp.weight", &[d(EMBD), d(EXPERTS)]),
                T::required("ffn_gate_inp.bias", &[d(EXPERTS)]),
                T::required("ffn_gate_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
                T::required("ffn_down_exps.weight", &[d(FF_EXP), d(EMBD), d(EXPERTS)]),
                T::required("ffn_up_exps.weight", &[d(EMBD), d(FF_EXP), d(EXPERTS)]),
                T::required("ffn_gate_exps.bias", &[d(FF_EXP), d(EXPERTS)]),
                T::required("ffn_down_exps.bias", &[d(EMBD), d(EXPERTS)]),
                T::required("ffn_up_exps.bias", &[d(FF_EXP), d(EXPERTS)]),
            ],
        }
    }
    fn config_keys(&self, gguf_key: &str) -> &'static [&'static str] {
        match gguf_key {
            "expert_count" => &["num_local_experts"],
            "expert_used_count" => &["num_experts_per_tok"],
            "expert_feed_forward_length" => &["intermediate_size"],
            "attention.sliding_window" => &["sliding_window"],
            _ => base::config_keys(gguf_key),
        }
    }
}

/// One layer's expert tensors, by the name after `mlp.experts.`.
type LayerParts = BTreeMap<String, usize>;

/// The expert jobs of every layer from the claimed `mlp.experts.*` tensors.
fn expert_jobs(ck: &Checkpoint, hp: &Hparams, claimed: &[usize]) -> Result<Vec<Job>> {
    let layout = super::moe::Layout {
        module: "mlp",
        projections: [
            ("gate_proj", super::moe::Role::Gate),
            ("up_proj", super::moe::Role::Up),
            ("down_proj", super::moe::Role::Down),
        ],
        ff_keys: &["intermediate_size"],
    };
    let x = super::moe::experts(hp, &layout)?;
    let mut layers: BTreeMap<u32, LayerParts> = BTreeMap::new();
    for &i in claimed {
        let t = &ck.tensors[i];
        let Some((layer, rest)) = base::layer_and_rest(&t.name) else {
            continue;
        };
        let part = rest[EXPERTS_PREFIX.len()..].to_string();
        const KNOWN: [&str; 8] = [
            "gate_up_proj",
            "gate_up_proj_bias",
            "gate_up_proj_blocks",
            "gate_up_proj_scales",
            "down_proj",
            "down_proj_bias",
            "down_proj_blocks",
            "down_proj_scales",
        ];
        if !KNOWN.contains(&part.as_str()) {
            bail!(
                "{}: tensor {} has no GGUF name for GptOssForCausalLM (an unexpected tensor for this architecture)",
                ck.file_of(t).display(),
                t.name
            );
        }
        if layer >= hp.n_layer {
            bail!(
                "{}: tensor {} is in layer {layer}, but {} says num_hidden_layers = {}",
                ck.file_of(t).display(),
                t.name,
                hp.cfg.path,
                hp.n_layer
            );
        }
        layers.entry(layer).or_default().insert(part, i);
    }
    let mut jobs = Vec::new();
    for layer in 0..hp.n_layer {
        let parts = layers.remove(&layer).unwrap_or_default();
        jobs.extend(layer_jobs(ck, hp, &x, layer, &parts)?);
    }
    Ok(jobs)
}

fn layer_jobs(
    ck: &Checkpoint,
    hp: &Hparams,
    x: &Experts,
    layer: u32,
    parts: &LayerParts,
) -> Result<Vec<Job>> {
    let (e, f, d) = (x.n_expert, x.n_ff, hp.n_embd as usize);
    let name = |part: &str| format!("model.layers.{layer}.mlp.experts.{part}");
    let gguf = |t: &str| format!("blk.{layer}.{t}");
    let file = |i: usize| ck.file_of(&ck.tensors[i]).display().to_string();
    let need = |part: &str| -> Result<usize> {
        parts.get(part).copied().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: tensor {} is missing (llama.cpp's gpt-oss loader needs it)",
                ck.dir.display(),
                name(part)
            )
        })
    };
    let float_dtype = |i: usize| -> Result<SrcDtype> {
        let t = &ck.tensors[i];
        t.dtype.clone().map_err(|other| {
            anyhow::anyhow!(
                "{}: tensor {} has dtype {other}; kiln reads it as F32, F16 or BF16",
                file(i),
                t.name
            )
        })
    };
    let shape_is = |i: usize, want: &[usize], why: &str| -> Result<()> {
        let t = &ck.tensors[i];
        if t.shape != want {
            bail!(
                "{}: tensor {} has shape {:?}; {why} make it {want:?}",
                file(i),
                t.name,
                t.shape
            );
        }
        Ok(())
    };
    let why = format!(
        "{} = {e}, {} = {f} and hidden_size = {d}",
        x.count_key, x.ff_key
    );
    let mut jobs = Vec::new();
    let f32_type = TypeId::of(GgmlType::F32);

    // Weights: (projection, rows per expert in the source, columns (the input width)).
    for (proj, src_rows, cols) in [("gate_up_proj", 2 * f, d), ("down_proj", d, f)] {
        let dense = parts.get(proj).copied();
        let blocks = parts.get(&format!("{proj}_blocks")).copied();
        let scales = parts.get(&format!("{proj}_scales")).copied();
        let outputs: Vec<(&str, usize, usize, usize)> = if proj == "gate_up_proj" {
            // (GGUF tensor, output rows per expert, row step, first row)
            vec![
                ("ffn_gate_exps.weight", f, 2, 0),
                ("ffn_up_exps.weight", f, 2, 1),
            ]
        } else {
            vec![("ffn_down_exps.weight", d, 1, 0)]
        };
        match (dense, blocks, scales) {
            (Some(i), None, None) => {
                // transformers' parameter: [E, cols, src_rows] (in, out), transposed.
                shape_is(i, &[e, cols, src_rows], &why)?;
                let dtype = float_dtype(i)?;
                for (out, rows, step, offset) in outputs {
                    let dims = vec![cols as u64, rows as u64, e as u64];
                    let input_type = hf_input_type(out, &dims, dtype);
                    jobs.push(Job {
                        name: gguf(out),
                        dims,
                        input_type,
                        out_type: input_type,
                        fallback_from: None,
                        source: TensorSource::Strided(Strided {
                            index: i,
                            src_row_len: src_rows,
                            rows_per_group: rows,
                            group_stride: cols * src_rows,
                            row_stride: step,
                            elem_stride: src_rows,
                            offset,
                        }),
                    });
                }
            }
            (None, Some(b), s) => {
                let Some(s) = s else {
                    bail!(
                        "{}: tensor {} has no scales: {} is missing",
                        file(b),
                        ck.tensors[b].name,
                        name(&format!("{proj}_scales"))
                    );
                };
                if !cols.is_multiple_of(32) {
                    bail!(
                        "{}: tensor {}: MXFP4 blocks of 32 cannot hold rows of {cols} ({why})",
                        file(b),
                        ck.tensors[b].name
                    );
                }
                let nb = cols / 32;
                for (i, kind) in [(b, "blocks"), (s, "scales")] {
                    let t = &ck.tensors[i];
                    if !matches!(&t.dtype, Err(d) if d == "U8") {
                        let got = match &t.dtype {
                            Ok(d) => d.name().to_string(),
                            Err(d) => d.clone(),
                        };
                        bail!(
                            "{}: tensor {} has dtype {got}; MXFP4 {kind} are U8",
                            file(i),
                            t.name
                        );
                    }
                }
                shape_is(
                    b,
                    &[e, src_rows, nb, 16],
                    &format!("{why} (blocks of 32: 16 bytes each)"),
                )?;
                let bt = &ck.tensors[b];
                let st = &ck.tensors[s];
                if st.shape != [e, src_rows, nb] {
                    bail!(
                        "{}: tensor {} has shape {:?}, which does not match its blocks {} {:?} (one scale per block: {:?})",
                        file(s),
                        st.name,
                        st.shape,
                        bt.name,
                        bt.shape,
                        [e, src_rows, nb]
                    );
                }
                let mx = TypeId::of(GgmlType::MXFP4);
                for (out, rows, step, offset) in outputs {
                    jobs.push(Job {
                        name: gguf(out),
                        dims: vec![cols as u64, rows as u64, e as u64],
                        input_type: mx,
                        out_type: mx,
                        fallback_from: None,
                        source: TensorSource::Mxfp4(Mxfp4Rows {
                            blocks: b,
                            scales: s,
                            nb,
                            src_rows,
                            rows_per_group: rows,
                            step,
                            offset,
                        }),
                    });
                }
            }
            (None, None, Some(s)) => bail!(
                "{}: tensor {} has no blocks: {} is missing",
                file(s),
                ck.tensors[s].name,
                name(&format!("{proj}_blocks"))
            ),
            (Some(i), Some(_), _) | (Some(i), None, Some(_)) => bail!(
                "{}: layer {layer} has both {} and MXFP4 {}_blocks/_scales",
                file(i),
                ck.tensors[i].name,
                proj
            ),
            (None, None, None) => bail!(
                "{}: layer {layer} has no {proj} experts ({} or {}_blocks and {}_scales)",
                ck.dir.display(),
                name(proj),
                name(proj),
                name(proj)
            ),
        }
    }

    // Biases, f32 as convert writes every non-weight tensor.
    let gu = need("gate_up_proj_bias")?;
    shape_is(gu, &[e, 2 * f], &why)?;
    float_dtype(gu)?;
    for (out, offset) in [("ffn_gate_exps.bias", 0), ("ffn_up_exps.bias", 1)] {
        jobs.push(Job {
            name: gguf(out),
            dims: vec![f as u64, e as u64],
            input_type: f32_type,
            out_type: f32_type,
            fallback_from: None,
            source: TensorSource::Strided(Strided {
                index: gu,
                src_row_len: 2 * f,
                rows_per_group: 1,
                group_stride: 2 * f,
                row_stride: 0,
                elem_stride: 2,
                offset,
            }),
        });
    }
    let down = need("down_proj_bias")?;
    shape_is(down, &[e, d], &why)?;
    float_dtype(down)?;
    jobs.push(Job {
        name: gguf("ffn_down_exps.bias"),
        dims: vec![d as u64, e as u64],
        input_type: f32_type,
        out_type: f32_type,
        fallback_from: None,
        source: TensorSource::Input {
            index: down,
            transform: Transform::None,
        },
    });
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_and_router_names_map_like_convert() {
        let m = |n: &str| base::tensor_name(&GptOss, n);
        assert_eq!(
            m("model.layers.3.self_attn.sinks").unwrap(),
            "blk.3.attn_sinks.weight"
        );
        assert_eq!(
            m("model.layers.0.mlp.router.bias").unwrap(),
            "blk.0.ffn_gate_inp.bias"
        );
        assert_eq!(
            m("model.layers.0.post_attention_layernorm.weight").unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            m("model.layers.1.self_attn.o_proj.bias").unwrap(),
            "blk.1.attn_output.bias"
        );
        assert!(GptOss.claims("model.layers.1.mlp.experts.gate_up_proj_blocks"));
        assert!(!GptOss.claims("model.layers.1.mlp.router.weight"));
    }

    #[test]
    fn transposed_gate_up_picks_even_and_odd_columns() {
        // [E=2, D=3, 2F=4]: gate row (e, f) element k is source (e, k, 2f).
        let s = Strided {
            index: 0,
            src_row_len: 4,
            rows_per_group: 2,
            group_stride: 12,
            row_stride: 2,
            elem_stride: 4,
            offset: 1,
        };
        // up row 3 = expert 1, f = 1: elements (1, k, 3) -> 12 + 4k + 3.
        assert_eq!(
            (0..3).map(|k| s.element(3, k)).collect::<Vec<_>>(),
            [15, 19, 23]
        );
    }
}
