//! An independent reference forward pass of a Hugging Face causal LM, read directly from its
//! checkpoint folder (config.json + safetensors), written from HF transformers' modeling files
//! (`modeling_llama.py`, `modeling_qwen2.py`, `modeling_qwen3.py`, `modeling_gemma2.py`,
//! `modeling_gemma3.py`, `modeling_qwen3_moe.py`, `modeling_mixtral.py`, `modeling_gpt_oss.py`). It shares no code with kiln: it is the oracle that llama.cpp's
//! logits on a converted GGUF are compared with.
//!
//! Arithmetic: the stored weights (f32, f16 or bf16) are widened to f32; every dot product,
//! norm, softmax and RoPE angle is computed in f64 and rounded to f32 between operations. That is
//! HF's model evaluated in f32 (`from_pretrained(dir, dtype=torch.float32)`), which is also what
//! llama.cpp computes on an f32 GGUF. Checked against transformers 5.23 (eager attention) on
//! every fixture architecture: max |logit difference| about 3e-6 against HF in f64 and 1e-5
//! against HF in f32, for logits of magnitude 8 to 21.
//!
//! Supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM,
//! Gemma3ForCausalLM (text), Qwen3MoeForCausalLM, MixtralForCausalLM, GptOssForCausalLM,
//! DeepseekV3ForCausalLM, Phi3ForCausalLM (with LongRoPE), SmolLM3ForCausalLM,
//! GraniteForCausalLM, Olmo2ForCausalLM, Glm4MoeForCausalLM, Ernie4_5_MoeForCausalLM and the
//! Mistral text model of
//! Mistral3ForConditionalGeneration, with default or linear RoPE scaling (YaRN for gpt-oss and
//! DeepSeek). Anything else (other RoPE
//! scalings, unknown activations, unexpected or missing tensors) is an error, not a guess.
//!
//! The facts it encodes, per family:
//! - All: `h = embed[tok]`; per layer pre-norm attention and MLP with residuals; final RMSNorm;
//!   logits = `lm_head @ h` (`lm_head` = the embedding matrix when `tie_word_embeddings`).
//!   RMSNorm: `x * rsqrt(mean(x^2) + eps) * w`. RoPE: HF's `rotate_half` layout, dimension `j`
//!   (< d/2) paired with `j + d/2`, `inv_freq[j] = 1 / theta^(2j/d)` (divided by the factor
//!   under linear scaling), position `p` turns the pair by `p * inv_freq[j]`.
//!   GQA: query head `h` reads KV head `h / (heads / kv_heads)` (`repeat_kv`). Scores are
//!   `q.k * scaling`, causal (`j <= i`), softmax, then `o_proj` of the concatenated heads.
//! - Llama: scaling `head_dim^-0.5`, MLP `down(silu(gate x) * up x)`; optional biases when
//!   `attention_bias` / `mlp_bias`.
//! - Qwen2: as Llama with q/k/v biases (always present; `o_proj` has none). Sliding window only
//!   with `use_sliding_window` (then on layers `>= max_window_layers`, unless `layer_types`).
//! - Qwen3: as Llama plus a per-head RMSNorm (`q_norm`, `k_norm`, weight of `head_dim`) on q and
//!   k after the projection, before RoPE.
//! - Gemma2: embedding times `sqrt(hidden)`; RMSNorm `* (1 + w)`; four norms per layer
//!   (`input`, `post_attention` on the attention output before the residual add,
//!   `pre_feedforward`, `post_feedforward` on the MLP output before the add); scaling
//!   `query_pre_attn_scalar^-0.5`; attention logit softcapping `tanh(s / c) * c` after scaling,
//!   before the mask; MLP with `gelu_pytorch_tanh`; final logit softcapping; layers alternate
//!   sliding (even index) and full attention (or `layer_types`).
//! - Gemma3: as Gemma2 plus Gemma-style q/k norms (`* (1 + w)`) before RoPE; no softcapping
//!   unless configured; layer `i` is full attention when `(i + 1) % sliding_window_pattern == 0`
//!   (pattern 6) unless `layer_types` says otherwise; sliding layers use
//!   `rope_local_base_freq` (no scaling), full layers `rope_theta` (with `rope_scaling`).
//! - Qwen3 MoE: Qwen3's attention; every layer's MLP is a sparse mixture of experts
//!   (`Qwen3MoeSparseMoeBlock`): router logits `mlp.gate @ x` (no bias), `softmax` over the
//!   experts (in f32, `dtype=torch.float`), the `num_experts_per_tok` largest probabilities,
//!   divided by their sum only when `norm_topk_prob`, then `sum_k w_k * expert_k(x)`, each expert
//!   `down(silu(gate x) * up x)` of width `moe_intermediate_size`. Layers listed in
//!   `mlp_only_layers` or off `decoder_sparse_step` would be dense: not supported.
//! - Mixtral: Llama's attention (sliding window on every layer when `sliding_window` is set);
//!   `block_sparse_moe` as Qwen3 MoE's block with the top-k weights always renormalised
//!   (`MixtralSparseMoeBlock`), experts `w2(silu(w1 x) * w3 x)` of width `intermediate_size`.
//! - Experts are read one tensor per expert (`mlp.experts.E.gate_proj.weight`,
//!   `block_sparse_moe.experts.E.w1.weight`) or as transformers 5's fused
//!   `mlp.experts.gate_up_proj` [E, 2F, D] (gate rows first) and `mlp.experts.down_proj`
//!   [E, D, F]; Mixtral's router also as transformers 5's `mlp.gate.weight`.
//! - DeepSeek V3 (`modeling_deepseek_v3.py`, see `mla_attention` and `deepseek_moe`): MLA
//!   attention with interleaved RoPE on the rope dims (yarn from `rope_scaling`, scaling
//!   `(nope + rope)^-0.5 * mscale(factor, mscale_all_dim)^2`), dense MLPs in the first
//!   `first_k_dense_replace` layers, then sigmoid routing with the score bias and group limits,
//!   renormalised and scaled weights, and a shared expert.
//! - gpt-oss (`modeling_gpt_oss.py`): Llama-style pre-norm layers (`input_layernorm`,
//!   `post_attention_layernorm`), q/k/v/o with biases, scaling `head_dim^-0.5`, and per head a
//!   learned sink logit (`self_attn.sinks`) joined to each query's scores before the softmax
//!   (`cat([scores, sink])`, max subtracted, softmax, the sink's column dropped: the
//!   probabilities sum to less than 1); `layer_types` sliding/full with `sliding_window`. RoPE is
//!   YaRN (`_compute_yarn_parameters`): `inv_freq = interp * (1 - m) + extrap * m` with
//!   `extrap = theta^(-2j/d)`, `interp = extrap / factor`, `m = 1 - clamp((j - low) / (high -
//!   low), 0, 1)`, `low`/`high` the correction dims of `beta_fast`/`beta_slow` over
//!   `original_max_position_embeddings` (floor/ceil only when `truncate`, default true), and
//!   cos/sin times `attention_factor` (default `0.1 ln(factor) + 1`). MoE (`GptOssMLP`): router
//!   logits `W x + b`, the `num_experts_per_tok` largest logits, softmax over those; expert `e`:
//!   `gate_up = x @ gate_up_proj[e] + b` ([E, D, 2F], gate = even columns, up = odd ones),
//!   `gate = min(gate, limit)`, `up = clamp(up, -limit, limit)`, `glu = gate * sigmoid(1.702 *
//!   gate)`, `out = ((up + 1) * glu) @ down_proj[e] + b` ([E, F, D]); limit = `swiglu_limit`
//!   (7). Experts as released (MXFP4 `*_blocks` u8 [E, R, C/32, 16] and E8M0 `*_scales`
//!   [E, R, C/32]) are dequantized as transformers' `convert_moe_packed_tensors` does: byte `i`
//!   of a block gives element `2i` (low nibble) and `2i + 1` (high nibble) of the OCP FP4 table
//!   times `2^(scale - 127)`, then transposed to the parameters' [E, C, R].
//! - Phi-3 / Phi-4 (`modeling_phi3.py`): Llama's blocks with the fused `qkv_proj` (q rows, then
//!   k, then v) and `gate_up_proj` (gate rows, then up: `up * silu(gate)`), no biases, head_dim
//!   `hidden / heads`; RoPE on the first `partial_rotary_factor * head_dim` dimensions of each
//!   head only (rotate_half within them, the rest passed through); LongRoPE
//!   (`rope_scaling.type` "longrope"/"su"): `inv_freq[j] = 1 / (ext[j] * theta^(2j/rot))` with
//!   `ext` the short factors, or the long ones when the sequence is longer than
//!   `original_max_position_embeddings`, and cos/sin times the attention factor
//!   (`rope_scaling.attention_factor`, else `sqrt(1 + ln(s) / ln(orig))` for
//!   `s = max_position_embeddings / orig` > 1); `sliding_window` on every layer when set.
//! - SmolLM3 (`modeling_smollm3.py`): Llama, except that layer `i` applies RoPE only when
//!   `no_rope_layers[i]` is 1 (default: `(i + 1) % no_rope_layer_interval != 0`, interval 4).
//! - Granite (`modeling_granite.py`): Llama with the embeddings times `embedding_multiplier`,
//!   scores scaled by `attention_multiplier` (instead of `head_dim^-0.5`), each block's output
//!   times `residual_multiplier` before its residual add, and the logits divided by
//!   `logits_scaling`.
//! - OLMo 2 (`modeling_olmo2.py`): no pre-norms; `h += post_attention_layernorm(attn(h))`,
//!   `h += post_feedforward_layernorm(mlp(h))`; q and k RMS-normed over the whole projection
//!   (`q_norm` of `heads * head_dim`, `k_norm` of `kv_heads * head_dim`) before the split into
//!   heads and RoPE; no biases; untied output.
//! - Mistral3ForConditionalGeneration's text model (`modeling_mistral3.py` around
//!   `modeling_mistral.py`): `text_config` merged over the top level, the tensors under
//!   `language_model.` (or transformers 5's `model.language_model.`) read as the Mistral model
//!   they are (Llama's blocks, a sliding window when `sliding_window` is set), the vision tower
//!   and projector ignored.
//! - GLM-4.5 (`modeling_glm4_moe.py`: DeepSeek V3's decoder layers around Cohere-style
//!   attention): q/k/v with biases (`attention_bias`), `o_proj` without; per-head RMS q/k
//!   norms when `use_qk_norm`, before RoPE; RoPE (`rotate_half`) over the first
//!   `partial_rotary_factor * head_dim` dims of each head (default 0.5; `inv_freq` over those
//!   dims), the rest passed through; scaling `head_dim^-0.5`; dense MLPs in the first
//!   `first_k_dense_replace` layers, then DeepSeek V3's MoE (`deepseek_moe`: sigmoid scores,
//!   score bias for the choice, groups, renormalised and scaled weights, shared experts).
//!   The multi-token-prediction layers past `num_hidden_layers` are not part of the forward
//!   pass (transformers drops them at load).
//! - ERNIE 4.5 MoE (`modeling_ernie4_5_moe.py`): Llama's blocks (optional biases with
//!   `use_bias`), RoPE interleaved (`rotate_half` over even/odd pairs: dims `2i`, `2i + 1`
//!   turn by `p * theta^(-2i/d)`); dense MLPs (`intermediate_size`) before
//!   `moe_layer_start_index`, then the sparse block: router logits `gate @ x` (f32),
//!   softmax, the `moe_k` experts with the largest `prob + e_score_correction_bias`
//!   (`moe_statics`, [1, E]), weights = their probabilities divided by
//!   `max(sum, moe_norm_min)`, plus the shared experts' MLP (`moe_intermediate_size *
//!   moe_num_shared_experts` wide). The `mtp*` tensors are ignored (transformers drops them).
//! - Sliding window of `W`: query `i` sees key `j` when `j <= i` and `i - j < W` (HF's
//!   `kv_idx > q_idx - sliding_window`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rayon::prelude::*;
use serde_json::Value;

/// Logits (one row of `vocab_size` per position) of the checkpoint in `checkpoint_dir` for
/// `tokens`, positions 0, 1, ..., with the default [`Options`].
pub fn reference_logits(checkpoint_dir: &Path, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    reference_logits_with(checkpoint_dir, tokens, &Options::default())
}

/// As [`reference_logits`], with explicit [`Options`].
pub fn reference_logits_with(
    checkpoint_dir: &Path,
    tokens: &[u32],
    options: &Options,
) -> Result<Vec<Vec<f32>>> {
    ReferenceModel::load(checkpoint_dir)?.logits_with(tokens, options)
}

/// Knobs for the few places where "what HF computes" depends on how the model is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Gemma multiplies the embeddings by `sqrt(hidden_size)` cast to the dtype the model runs
    /// in (`embed_scale.to(self.weight.dtype)`). `false` (default): the f32 `sqrt(hidden)`, as
    /// HF run in f32 and llama.cpp (`ggml_scale(inpL, sqrtf(n_embd))`) use. `true`: round it to
    /// config.json's `torch_dtype`, the scale HF uses when it runs a bf16/f16 checkpoint in its
    /// own dtype (hidden 320: bf16 gives 17.875 instead of 17.8885, a 0.07% larger embedding);
    /// everything else stays f32. No effect when `sqrt(hidden)` is exact in that dtype (hidden
    /// 256: 16) or for f32 checkpoints.
    pub embed_scale_in_model_dtype: bool,
    /// Position of the first token (HF's `position_ids` start). Default 0.
    pub position_offset: usize,
    /// Apply RoPE. Default true; false exists only to let tests show that RoPE is what makes the
    /// model position-dependent.
    pub rope: bool,
    /// When set, every token's pass through a softmax-routed mixture of experts (Qwen3 MoE,
    /// Mixtral) is recorded here: what the router saw and chose, and what each chosen expert
    /// multiplied (what an importance matrix sums per expert).
    pub routed: Option<std::sync::Arc<std::sync::Mutex<Vec<Routed>>>>,
}

/// One token through one layer's mixture of experts (see [`Options::routed`]).
#[derive(Clone, Debug)]
pub struct Routed {
    pub layer: usize,
    /// The MLP's input (normed): what the router and every chosen expert's gate and up
    /// projections multiply.
    pub input: Vec<f32>,
    /// The router's probabilities, one per expert.
    pub probs: Vec<f32>,
    /// The chosen experts, most probable first, and each one's down-projection input
    /// (`silu(gate x) * up x`).
    pub chosen: Vec<(usize, Vec<f32>)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            embed_scale_in_model_dtype: false,
            position_offset: 0,
            rope: true,
            routed: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Qwen3Moe,
    Mixtral,
    Deepseek2,
    GptOss,
    Phi3,
    SmolLm3,
    Granite,
    Olmo2,
    /// Mistral (the text model of Mistral3ForConditionalGeneration).
    Mistral,
    Glm4Moe,
    Ernie45Moe,
}

/// ERNIE 4.5 MoE's sparse blocks (`Ernie4_5_MoeSparseMoeBlock`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErnieMoe {
    /// `moe_layer_start_index`: layers before it are dense.
    pub start: usize,
    pub experts: usize,
    pub top_k: usize,
    pub width: usize,
    pub shared: usize,
    pub norm_min: f64,
}

/// DeepSeek V3's attention and MoE parameters (`modeling_deepseek_v3.py`).
#[derive(Clone, Debug, PartialEq)]
pub struct Deepseek {
    /// None: one `q_proj` (V2-Lite); else q through `q_a_proj` (this rank) and `q_b_proj`.
    pub q_rank: Option<usize>,
    pub kv_rank: usize,
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    /// `first_k_dense_replace`: layers before this one have the dense MLP.
    pub dense_layers: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Each routed expert's width (`moe_intermediate_size`).
    pub width: usize,
    /// `n_shared_experts`: the shared MLP is `width * shared` wide.
    pub shared: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk: bool,
    pub routed_scaling: f64,
    /// RoPE's `inv_freq` over the `rope` dims (yarn-blended when configured), and the factor
    /// cos/sin are multiplied by (yarn's attention_factor).
    pub inv_freq: Vec<f64>,
    pub rope_attention_factor: f64,
}

impl Deepseek {
    /// The experts split evenly into `n_group` groups, at most all of them kept.
    fn check_groups(&self) -> Result<()> {
        ensure!(
            self.n_group > 0
                && self.experts.is_multiple_of(self.n_group)
                && self.topk_group <= self.n_group,
            "{} experts in {} groups, {} kept",
            self.experts,
            self.n_group,
            self.topk_group
        );
        Ok(())
    }
}

/// YaRN RoPE parameters (the same on every layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub theta: f64,
    pub factor: f64,
    pub original_context: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub truncate: bool,
    pub attention_factor: f64,
}

/// Partial-rotary and LongRoPE parameters (Phi-3): RoPE turns only the first `dims` of each
/// head, each frequency divided by its factor, cos and sin times `mscale`.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeExt {
    pub dims: usize,
    /// Per frequency (dims / 2): the factors for sequences up to `original_max`, and past it.
    pub short: Vec<f64>,
    pub long: Vec<f64>,
    pub original_max: usize,
    pub mscale: f64,
}

/// A sparse mixture-of-experts MLP's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moe {
    pub experts: usize,
    pub top_k: usize,
    /// Renormalise the top-k probabilities to sum to 1.
    pub norm_topk: bool,
    /// Each expert's width.
    pub width: usize,
}

impl Family {
    fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }
}

/// RoPE parameters of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Linear scaling factor (positions divided by it); 1 for none.
    pub factor: f64,
}

/// What the forward pass needs from config.json, with the layer-by-layer choices resolved.
#[derive(Clone, Debug)]
pub struct Config {
    pub family: Family,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f64,
    pub tied: bool,
    /// Multiplier of q.k.
    pub scaling: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Per layer: `Some(W)` for a sliding-window layer.
    pub window: Vec<Option<usize>>,
    /// Per layer.
    pub rope: Vec<Rope>,
    pub gelu: bool,
    /// config.json's `torch_dtype` (or `dtype`), e.g. "bfloat16".
    pub torch_dtype: String,
    /// Mixture-of-experts MLPs (every layer), or None for dense ones.
    pub moe: Option<Moe>,
    /// DeepSeek's MLA and MoE (Family::Deepseek2); for GLM-4.5 only its MoE fields (the MLA
    /// sizes are 0: GLM's attention is the generic one).
    pub deepseek: Option<Deepseek>,
    /// ERNIE 4.5 MoE's sparse blocks (Family::Ernie45Moe).
    pub ernie: Option<ErnieMoe>,
    /// YaRN RoPE (gpt-oss), replacing `rope`.
    pub yarn: Option<Yarn>,
    /// gpt-oss's swiglu clamp.
    pub swiglu_limit: f64,
    /// Partial rotary / LongRoPE (Phi-3), or None: RoPE over the whole head.
    pub rope_ext: Option<RopeExt>,
    /// Per layer: whether it applies RoPE (false on SmolLM3's NoPE layers).
    pub use_rope: Vec<bool>,
    /// Granite's multipliers (1, 1, 1 elsewhere): embeddings times the first, each block's
    /// output times the second before the residual add, logits divided by the third.
    pub embedding_multiplier: f64,
    pub residual_multiplier: f64,
    pub logits_scaling: f64,
}

/// A loaded checkpoint: config and f32 weights by HF name.
pub struct ReferenceModel {
    pub config: Config,
    weights: HashMap<String, Vec<f32>>,
}

impl ReferenceModel {
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let mut json: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", config_path.display()))?;
        let multimodal = json["architectures"].get(0).and_then(Value::as_str)
            == Some("Mistral3ForConditionalGeneration");
        if multimodal {
            json = mistral3_text_config(&json)?;
        }
        let config = parse_config(&json).with_context(|| format!("{}", config_path.display()))?;
        let mut tensors = load_safetensors(dir)?;
        if multimodal {
            tensors = mistral3_text_tensors(tensors);
        }
        if config.family == Family::GptOss {
            dequantize_mx_experts(&config, &mut tensors)?;
        } else if config.moe.is_some() {
            unfuse_experts(&config, &mut tensors)?;
        }
        if config.family == Family::Phi3 {
            unfuse_phi3(&config, &mut tensors)?;
        }
        let weights = check_tensors(&config, tensors)?;
        Ok(ReferenceModel { config, weights })
    }

    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.logits_with(tokens, &Options::default())
    }

    pub fn logits_with(&self, tokens: &[u32], options: &Options) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let gemma = c.family.is_gemma();
        let embed = self.w("model.embed_tokens.weight");

        // Embedding (Gemma: times sqrt(hidden), see Options::embed_scale_in_model_dtype).
        let scale = if gemma {
            let s = (c.hidden as f64).sqrt() as f32;
            if options.embed_scale_in_model_dtype {
                round_to_dtype(s, &c.torch_dtype)
            } else {
                s
            }
        } else {
            c.embedding_multiplier as f32
        };
        let mut h: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| {
                let t = t as usize;
                ensure!(t < c.vocab, "token {t} out of the vocabulary ({})", c.vocab);
                Ok(embed[t * c.hidden..(t + 1) * c.hidden]
                    .iter()
                    .map(|&v| v * scale)
                    .collect())
            })
            .collect::<Result<_>>()?;

        for l in 0..c.layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            // Attention block.
            let olmo2 = c.family == Family::Olmo2;
            let x: Vec<Vec<f32>> = if olmo2 {
                h.clone()
            } else {
                h.iter()
                    .map(|r| self.norm(r, &p("input_layernorm.weight")))
                    .collect()
            };
            let attn = if c.family == Family::Deepseek2 {
                self.mla_attention(l, &x, options)
            } else {
                self.attention(l, &x, options)
            };
            for (hi, a) in h.iter_mut().zip(attn) {
                let a = if gemma || olmo2 {
                    self.norm(&a, &p("post_attention_layernorm.weight"))
                } else {
                    self.residual_scaled(a)
                };
                add_in_place(hi, &a);
            }
            // MLP block.
            let pre = if gemma {
                "pre_feedforward_layernorm.weight"
            } else {
                "post_attention_layernorm.weight"
            };
            for hi in h.iter_mut() {
                let x = if olmo2 {
                    hi.clone()
                } else {
                    self.norm(hi, &p(pre))
                };
                let m = match (&c.deepseek, c.moe) {
                    _ if c.ernie.is_some_and(|e| l >= e.start) => {
                        self.ernie_moe(l, &x, c.ernie.expect("ernie config"))
                    }
                    (Some(ds), _) if l >= ds.dense_layers => self.deepseek_moe(l, &x, ds),
                    (_, Some(moe)) if c.family == Family::GptOss => self.gpt_oss_moe(l, &x, moe),
                    (_, Some(moe)) => self.moe(l, &x, moe, options),
                    _ => self.mlp(l, &x),
                };
                let m = if gemma || olmo2 {
                    self.norm(&m, &p("post_feedforward_layernorm.weight"))
                } else {
                    self.residual_scaled(m)
                };
                add_in_place(hi, &m);
            }
        }

        let head = if c.tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        Ok(h.iter()
            .map(|r| {
                let x = self.norm(r, "model.norm.weight");
                let mut logits = matvec(self.w(head), c.vocab, c.hidden, &x, None);
                if c.logits_scaling != 1.0 {
                    for v in logits.iter_mut() {
                        *v /= c.logits_scaling as f32;
                    }
                }
                if let Some(cap) = c.final_softcap {
                    for v in logits.iter_mut() {
                        *v = softcap(*v as f64, cap) as f32;
                    }
                }
                logits
            })
            .collect())
    }

    /// Granite's `x * residual_multiplier` (in f32, as torch); unchanged elsewhere.
    fn residual_scaled(&self, mut x: Vec<f32>) -> Vec<f32> {
        let m = self.config.residual_multiplier;
        if m != 1.0 {
            for v in x.iter_mut() {
                *v *= m as f32;
            }
        }
        x
    }

    fn w(&self, name: &str) -> &[f32] {
        self.weights
            .get(name)
            .unwrap_or_else(|| panic!("weight {name} was checked at load time"))
    }

    fn opt(&self, name: &str) -> Option<&[f32]> {
        self.weights.get(name).map(|v| v.as_slice())
    }

    fn norm(&self, x: &[f32], weight: &str) -> Vec<f32> {
        rms_norm(
            x,
            self.w(weight),
            self.config.eps,
            self.config.family.is_gemma(),
        )
    }

    fn linear(&self, name: &str, rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
        let bias = self.opt(&format!("{name}.bias"));
        matvec(self.w(&format!("{name}.weight")), rows, cols, x, bias)
    }

    /// Self-attention of layer `l` over every position of the (normalized) inputs `x`.
    fn attention(&self, l: usize, x: &[Vec<f32>], options: &Options) -> Vec<Vec<f32>> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.heads, c.kv_heads);
        let p = |s: &str| format!("model.layers.{l}.self_attn.{s}");
        let qk_norm = matches!(c.family, Family::Qwen3 | Family::Gemma3 | Family::Qwen3Moe)
            || (c.family == Family::Glm4Moe && self.opt(&p("q_norm.weight")).is_some());
        let gemma = c.family.is_gemma();
        let rope = c.rope[l];
        // LongRoPE's factors by the sequence's length (HF's longrope_frequency_update).
        let ext = c.rope_ext.as_ref().map(|e| {
            let long = options.position_offset + x.len() > e.original_max;
            (e, if long { &e.long } else { &e.short })
        });

        // Project, split into heads, q/k norm, RoPE.
        let mut qs = Vec::with_capacity(x.len()); // [pos][head * hd]
        let mut ks = Vec::with_capacity(x.len());
        let mut vs = Vec::with_capacity(x.len());
        for (i, xi) in x.iter().enumerate() {
            let pos = options.position_offset + i;
            let mut q = self.linear(&p("q_proj"), nh * hd, c.hidden, xi);
            let mut k = self.linear(&p("k_proj"), nkv * hd, c.hidden, xi);
            let v = self.linear(&p("v_proj"), nkv * hd, c.hidden, xi);
            if c.family == Family::Olmo2 {
                q = rms_norm(&q, self.w(&p("q_norm.weight")), c.eps, false);
                k = rms_norm(&k, self.w(&p("k_norm.weight")), c.eps, false);
            }
            for (vec, norm) in [(&mut q, "q_norm.weight"), (&mut k, "k_norm.weight")] {
                for head in vec.chunks_mut(hd) {
                    if qk_norm {
                        let normed = rms_norm(head, self.w(&p(norm)), c.eps, gemma);
                        head.copy_from_slice(&normed);
                    }
                    if options.rope && c.use_rope[l] && c.family == Family::Ernie45Moe {
                        apply_rope_interleaved(head, pos, rope.theta);
                    } else if options.rope && c.use_rope[l] {
                        match (c.yarn, ext) {
                            (Some(y), _) => apply_yarn_rope(head, pos, y),
                            (None, Some((e, factors))) => apply_rope_ext(
                                &mut head[..e.dims],
                                pos,
                                rope.theta,
                                factors,
                                e.mscale,
                            ),
                            (None, None) => apply_rope(head, pos, rope),
                        }
                    }
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }

        // Scores, mask, softmax, weighted sum of values.
        let group = nh / nkv;
        let window = c.window[l];
        let mut out = Vec::with_capacity(x.len());
        for (i, qi) in qs.iter().enumerate() {
            let mut o = vec![0f32; nh * hd];
            for head in 0..nh {
                let kvh = head / group;
                let q = &qi[head * hd..(head + 1) * hd];
                let visible: Vec<usize> = (0..=i)
                    .filter(|&j| window.is_none_or(|w| i - j < w))
                    .collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        let s = dot(q, k) * c.scaling;
                        match c.attn_softcap {
                            Some(cap) => softcap(s, cap),
                            None => s,
                        }
                    })
                    .collect();
                // gpt-oss: the head's sink logit joins the softmax, and is then dropped.
                let sink = self
                    .opt(&p("sinks"))
                    .map(|s| s[head] as f64)
                    .filter(|_| c.family == Family::GptOss);
                let max = scores
                    .iter()
                    .cloned()
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - max).exp());
                for d in 0..hd {
                    let acc: f64 = visible
                        .iter()
                        .zip(&exps)
                        .map(|(&j, e)| e / sum * vs[j][kvh * hd + d] as f64)
                        .sum();
                    o[head * hd + d] = acc as f32;
                }
            }
            out.push(self.linear(&p("o_proj"), c.hidden, nh * hd, &o));
        }
        out
    }

    fn mlp(&self, l: usize, x: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let p = |s: &str| format!("model.layers.{l}.mlp.{s}");
        let gate = self.linear(&p("gate_proj"), c.intermediate, c.hidden, x);
        let up = self.linear(&p("up_proj"), c.intermediate, c.hidden, x);
        let act: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| {
                let g = g as f64;
                let a = if c.gelu { gelu_tanh(g) } else { silu(g) };
                (a * u as f64) as f32
            })
            .collect();
        self.linear(&p("down_proj"), c.hidden, c.intermediate, &act)
    }

    /// One expert's SwiGLU MLP on one position, `width` wide, with the weights named `[gate,
    /// up, down]`: its activations `silu(gate x) * up x` and its output `down` of them.
    fn expert_mlp(&self, [g, u, d]: &[String; 3], width: usize, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let hidden = self.config.hidden;
        let gate = matvec(self.w(g), width, hidden, x, None);
        let up = matvec(self.w(u), width, hidden, x, None);
        let act: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| (silu(g as f64) * u as f64) as f32)
            .collect();
        let y = matvec(self.w(d), hidden, width, &act, None);
        (act, y)
    }

    /// The sparse MoE block of layer `l` on one position.
    fn moe(&self, l: usize, x: &[f32], moe: Moe, options: &Options) -> Vec<f32> {
        let c = &self.config;
        let p = |s: &str| format!("model.layers.{l}.{}", s);
        let module = moe_module(c.family);
        let logits = matvec(
            self.w(&p(&format!("{module}.gate.weight"))),
            moe.experts,
            c.hidden,
            x,
            None,
        );
        // softmax in f32 (computed in f64, rounded).
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let probs: Vec<f32> = exps.iter().map(|e| (e / sum) as f32).collect();
        // top-k, largest first (torch.topk); ties to the lower index.
        let mut order: Vec<usize> = (0..moe.experts).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let chosen = &order[..moe.top_k];
        let mut weights: Vec<f32> = chosen.iter().map(|&e| probs[e]).collect();
        if moe.norm_topk {
            let s: f64 = weights.iter().map(|&w| w as f64).sum();
            for w in weights.iter_mut() {
                *w = (*w as f64 / s) as f32;
            }
        }
        let mut out = vec![0f32; c.hidden];
        let mut record = Vec::new();
        for (&e, &w) in chosen.iter().zip(&weights) {
            let (act, y) = self.expert_mlp(&expert_names(c.family, l, e), moe.width, x);
            if options.routed.is_some() {
                record.push((e, act));
            }
            for (o, v) in out.iter_mut().zip(y) {
                *o = (*o as f64 + w as f64 * v as f64) as f32;
            }
        }
        if let Some(r) = &options.routed {
            if let Ok(mut r) = r.lock() {
                r.push(Routed {
                    layer: l,
                    input: x.to_vec(),
                    probs,
                    chosen: record,
                });
            }
        }
        out
    }
}

impl ReferenceModel {
    /// DeepSeek's multi-head latent attention (`DeepseekV3Attention`, eager): q =
    /// `q_b(q_a_layernorm(q_a x))` (or `q_proj x`), split per head into `nope` and `rope`
    /// parts; `kv_a_proj_with_mqa x` = compressed kv (`kv_rank`, RMS-normed by
    /// `kv_a_layernorm`) and one rope key shared by the heads; `kv_b` of the compressed kv
    /// gives each head's `nope` key part and `v` value. RoPE on the rope parts is interleaved
    /// (`rope_interleave`: pairs (2i, 2i+1) turn by `p * inv_freq[i]`, cos and sin times yarn's
    /// attention factor). Scores `q.k * scaling` over `nope + rope` dims, causal softmax,
    /// `o_proj` of the heads' value mixes.
    fn mla_attention(&self, l: usize, x: &[Vec<f32>], options: &Options) -> Vec<Vec<f32>> {
        let c = &self.config;
        let ds = c.deepseek.as_ref().expect("deepseek config");
        let (nh, nope, rd, vd, kvr) = (c.heads, ds.nope, ds.rope, ds.v, ds.kv_rank);
        let qd = nope + rd;
        let p = |s: &str| format!("model.layers.{l}.self_attn.{s}");
        let rope = |v: &mut [f32], pos: usize| {
            for (i, pair) in v.chunks_exact_mut(2).enumerate() {
                let angle = pos as f64 * ds.inv_freq[i];
                let (sin, cos) = angle.sin_cos();
                let (cos, sin) = (
                    (cos * ds.rope_attention_factor) as f32 as f64,
                    (sin * ds.rope_attention_factor) as f32 as f64,
                );
                let (a, b) = (pair[0] as f64, pair[1] as f64);
                pair[0] = (a * cos - b * sin) as f32;
                pair[1] = (b * cos + a * sin) as f32;
            }
        };
        let mut qs = Vec::with_capacity(x.len()); // [pos][head * qd]
        let mut ks = Vec::with_capacity(x.len()); // [pos][head * qd]
        let mut vs = Vec::with_capacity(x.len()); // [pos][head * vd]
        for (i, xi) in x.iter().enumerate() {
            let pos = options.position_offset + i;
            let mut q = match ds.q_rank {
                Some(r) => {
                    let a = self.linear(&p("q_a_proj"), r, c.hidden, xi);
                    let a = rms_norm(&a, self.w(&p("q_a_layernorm.weight")), c.eps, false);
                    self.linear(&p("q_b_proj"), nh * qd, r, &a)
                }
                None => self.linear(&p("q_proj"), nh * qd, c.hidden, xi),
            };
            let ckv = self.linear(&p("kv_a_proj_with_mqa"), kvr + rd, c.hidden, xi);
            let compressed = rms_norm(
                &ckv[..kvr],
                self.w(&p("kv_a_layernorm.weight")),
                c.eps,
                false,
            );
            let mut k_rot = ckv[kvr..].to_vec();
            let kv = self.linear(&p("kv_b_proj"), nh * (nope + vd), kvr, &compressed);
            if options.rope {
                rope(&mut k_rot, pos);
            }
            let mut k = Vec::with_capacity(nh * qd);
            let mut v = Vec::with_capacity(nh * vd);
            for head in 0..nh {
                let kvh = &kv[head * (nope + vd)..(head + 1) * (nope + vd)];
                k.extend_from_slice(&kvh[..nope]);
                k.extend_from_slice(&k_rot);
                v.extend_from_slice(&kvh[nope..]);
                if options.rope {
                    rope(&mut q[head * qd + nope..(head + 1) * qd], pos);
                }
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let mut out = Vec::with_capacity(x.len());
        for (i, qi) in qs.iter().enumerate() {
            let mut o = vec![0f32; nh * vd];
            for head in 0..nh {
                let q = &qi[head * qd..(head + 1) * qd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| dot(q, &ks[j][head * qd..(head + 1) * qd]) * c.scaling)
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for d in 0..vd {
                    let acc: f64 = (0..=i)
                        .zip(&exps)
                        .map(|(j, e)| e / sum * vs[j][head * vd + d] as f64)
                        .sum();
                    o[head * vd + d] = acc as f32;
                }
            }
            out.push(self.linear(&p("o_proj"), c.hidden, nh * vd, &o));
        }
        out
    }

    /// `DeepseekV3MoE` on one position: router scores `sigmoid(gate @ x)` (f32); the choice
    /// adds `e_score_correction_bias`, keeps the `topk_group` groups (of `experts / n_group`)
    /// whose two best biased scores sum highest (others masked to 0), and takes the `top_k`
    /// best; the weights are the unbiased scores, divided by their sum (+1e-20) when
    /// `norm_topk_prob`, times `routed_scaling_factor`; plus the shared experts' MLP.
    fn deepseek_moe(&self, l: usize, x: &[f32], ds: &Deepseek) -> Vec<f32> {
        let c = &self.config;
        let p = |s: &str| format!("model.layers.{l}.mlp.{s}");
        let logits = matvec(self.w(&p("gate.weight")), ds.experts, c.hidden, x, None);
        let scores: Vec<f32> = logits
            .iter()
            .map(|&v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32)
            .collect();
        let bias = self.w(&p("gate.e_score_correction_bias"));
        let choice: Vec<f32> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
        let per = ds.experts / ds.n_group;
        let group_score = |g: usize| -> f64 {
            let mut v: Vec<f32> = choice[g * per..(g + 1) * per].to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v.iter().take(2).map(|&x| x as f64).sum()
        };
        let mut groups: Vec<usize> = (0..ds.n_group).collect();
        groups.sort_by(|&a, &b| group_score(b).total_cmp(&group_score(a)).then(a.cmp(&b)));
        let kept = &groups[..ds.topk_group];
        let masked: Vec<f32> = (0..ds.experts)
            .map(|e| {
                if kept.contains(&(e / per)) {
                    choice[e]
                } else {
                    0.0
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..ds.experts).collect();
        order.sort_by(|&a, &b| masked[b].total_cmp(&masked[a]).then(a.cmp(&b)));
        let chosen = &order[..ds.top_k];
        let mut weights: Vec<f64> = chosen.iter().map(|&e| scores[e] as f64).collect();
        if ds.norm_topk {
            let s: f64 = weights.iter().sum::<f64>() + 1e-20;
            for w in weights.iter_mut() {
                *w = (*w / s) as f32 as f64;
            }
        }
        let mut out = vec![0f64; c.hidden];
        for (&e, &w) in chosen.iter().zip(&weights) {
            let w = (w * ds.routed_scaling) as f32 as f64;
            let names = expert_names(Family::Deepseek2, l, e);
            for (o, v) in out.iter_mut().zip(self.expert_mlp(&names, ds.width, x).1) {
                *o += w * v as f64;
            }
        }
        let (_, shared) = self.expert_mlp(&shared_expert_names(l), ds.width * ds.shared, x);
        out.iter().zip(shared).map(|(&o, s)| o as f32 + s).collect()
    }
}

impl ReferenceModel {
    /// ERNIE 4.5 MoE's sparse block (`Ernie4_5_MoeTopKRouter` and `Ernie4_5_MoeSparseMoeBlock`)
    /// on one position: softmax router probabilities (f32), the `top_k` largest of `prob +
    /// bias` (ties to the lower index), weights = their probabilities over `max(sum,
    /// norm_min)`, the chosen experts' MLPs mixed, plus the shared experts' MLP.
    fn ernie_moe(&self, l: usize, x: &[f32], e: ErnieMoe) -> Vec<f32> {
        let c = &self.config;
        let p = |s: &str| format!("model.layers.{l}.mlp.{s}");
        let logits = matvec(self.w(&p("gate.weight")), e.experts, c.hidden, x, None);
        let max = logits
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        let probs: Vec<f32> = exps.iter().map(|v| (v / sum) as f32).collect();
        let bias = self.w(&p("moe_statics.e_score_correction_bias"));
        let choice: Vec<f32> = probs.iter().zip(bias).map(|(p, b)| p + b).collect();
        let mut order: Vec<usize> = (0..e.experts).collect();
        order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
        let chosen = &order[..e.top_k];
        let total = chosen.iter().map(|&i| probs[i] as f64).sum::<f64>() as f32;
        let denom = (total as f64).max(e.norm_min);
        let mut out = vec![0f32; c.hidden];
        let mut by_expert: Vec<usize> = chosen.to_vec();
        by_expert.sort_unstable();
        for &i in &by_expert {
            let w = (probs[i] as f64 / denom) as f32;
            let names = expert_names(Family::Ernie45Moe, l, i);
            for (o, v) in out.iter_mut().zip(self.expert_mlp(&names, e.width, x).1) {
                *o += (v as f64 * w as f64) as f32;
            }
        }
        if e.shared > 0 {
            let (_, shared) = self.expert_mlp(&shared_expert_names(l), e.width * e.shared, x);
            for (o, s) in out.iter_mut().zip(shared) {
                *o += s;
            }
        }
        out
    }
}

/// DeepSeek's yarn config as a [`Yarn`] over its `qk_rope_head_dim` dims, and its attention
/// factor: `attention_factor`, else `get_mscale(factor, mscale) / get_mscale(factor,
/// mscale_all_dim)`, else `get_mscale(factor)`.
fn deepseek_yarn(dim: usize, theta: f64, p: &Value) -> Result<(Vec<f64>, f64)> {
    let f = |k: &str| p.get(k).and_then(Value::as_f64);
    let factor = f("factor").context("yarn without factor")?;
    let orig = f("original_max_position_embeddings")
        .context("yarn without original_max_position_embeddings")?;
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attention_factor = match (f("attention_factor"), f("mscale"), f("mscale_all_dim")) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
            get_mscale(factor, m) / get_mscale(factor, ma)
        }
        _ => get_mscale(factor, 1.0),
    };
    let y = Yarn {
        theta,
        factor,
        original_context: orig,
        beta_fast: f("beta_fast").unwrap_or(32.0),
        beta_slow: f("beta_slow").unwrap_or(1.0),
        truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
        attention_factor,
    };
    Ok((y.inv_freq(dim), attention_factor))
}

impl ReferenceModel {
    /// gpt-oss's MoE block (`GptOssMLP`) of layer `l` on one position.
    fn gpt_oss_moe(&self, l: usize, x: &[f32], moe: Moe) -> Vec<f32> {
        let c = &self.config;
        let (d, f) = (c.hidden, moe.width);
        let p = |s: &str| format!("model.layers.{l}.mlp.{s}");
        let logits = self.linear(&p("router"), moe.experts, d, x);
        // topk of the logits (largest first, ties to the lower index), softmax over them.
        let mut order: Vec<usize> = (0..moe.experts).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let chosen = &order[..moe.top_k];
        let max = chosen
            .iter()
            .fold(f64::NEG_INFINITY, |m, &e| m.max(logits[e] as f64));
        let exps: Vec<f64> = chosen
            .iter()
            .map(|&e| (logits[e] as f64 - max).exp())
            .collect();
        let sum: f64 = exps.iter().sum();
        let weights: Vec<f32> = exps.iter().map(|v| (v / sum) as f32).collect();
        let gate_up = self.w(&p("experts.gate_up_proj"));
        let gate_up_b = self.w(&p("experts.gate_up_proj_bias"));
        let down = self.w(&p("experts.down_proj"));
        let down_b = self.w(&p("experts.down_proj_bias"));
        let limit = c.swiglu_limit;
        let mut out = vec![0f32; d];
        for (&e, &w) in chosen.iter().zip(&weights) {
            // x @ gate_up_proj[e]: [D] x [D, 2F].
            let gu: Vec<f32> = (0..2 * f)
                .map(|j| {
                    let acc: f64 = (0..d)
                        .map(|k| x[k] as f64 * gate_up[(e * d + k) * 2 * f + j] as f64)
                        .sum();
                    (acc + gate_up_b[e * 2 * f + j] as f64) as f32
                })
                .collect();
            let act: Vec<f32> = (0..f)
                .map(|j| {
                    let gate = (gu[2 * j] as f64).min(limit);
                    let up = (gu[2 * j + 1] as f64).clamp(-limit, limit);
                    let glu = gate / (1.0 + (-gate * 1.702).exp());
                    ((up + 1.0) * glu) as f32
                })
                .collect();
            for (o, dd) in out.iter_mut().zip(0..d) {
                let acc: f64 = (0..f)
                    .map(|j| act[j] as f64 * down[(e * f + j) * d + dd] as f64)
                    .sum();
                let y = (acc + down_b[e * d + dd] as f64) as f32;
                *o = (*o as f64 + w as f64 * y as f64) as f32;
            }
        }
        out
    }
}

/// gpt-oss experts as released (MXFP4 blocks and scales) -> transformers' dequantized
/// parameters `gate_up_proj` [E, D, 2F] and `down_proj` [E, F, D].
fn dequantize_mx_experts(c: &Config, tensors: &mut Tensors) -> Result<()> {
    const FP4: [f32; 16] = [
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    ];
    for l in 0..c.layers {
        for proj in ["gate_up_proj", "down_proj"] {
            let base = format!("model.layers.{l}.mlp.experts.{proj}");
            let (Some((bs, b)), Some((ss, sc))) = (
                tensors.remove(&format!("{base}_blocks")),
                tensors.remove(&format!("{base}_scales")),
            ) else {
                continue;
            };
            ensure!(
                bs.len() == 4 && bs[3] == 16 && ss == bs[..3],
                "{base}: blocks {bs:?} and scales {ss:?} do not match"
            );
            let (e, rows, nb) = (bs[0], bs[1], bs[2]);
            let cols = nb * 32;
            let mut out = vec![0f32; e * rows * cols];
            for (blk, &scale) in sc.iter().enumerate() {
                let (er, j) = (blk / nb, blk % nb);
                let (ex, r) = (er / rows, er % rows);
                let mul = 2f64.powi(scale as i32 - 127);
                for i in 0..16 {
                    let byte = b[blk * 16 + i] as u8;
                    for (half, code) in [(0, byte & 0x0F), (1, byte >> 4)] {
                        let col = j * 32 + 2 * i + half;
                        out[(ex * cols + col) * rows + r] =
                            (FP4[code as usize] as f64 * mul) as f32;
                    }
                }
            }
            tensors.insert(base, (vec![e, cols, rows], out));
        }
    }
    Ok(())
}

impl Yarn {
    /// HF's `_compute_yarn_parameters` over `dim` rotated dims: `inv_freq` blended between
    /// interpolation (`/ factor`) and extrapolation by a linear ramp (float32, as torch computes
    /// it) over the correction range (the dims where `beta_fast` / `beta_slow` rotations fit the
    /// original context; floor/ceil'd when `truncate`).
    pub fn inv_freq(&self, dim: usize) -> Vec<f64> {
        let corr = |rot: f64| {
            dim as f64 * (self.original_context / (rot * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * self.theta.ln())
        };
        let (mut low, mut high) = (corr(self.beta_fast), corr(self.beta_slow));
        if self.truncate {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let mut high = high.min(dim as f64 - 1.0);
        if low == high {
            high += 0.001;
        }
        (0..dim / 2)
            .map(|j| {
                let pos_freq = self.theta.powf((2 * j) as f64 / dim as f64);
                let (extrap, interp) = (1.0 / pos_freq, 1.0 / (self.factor * pos_freq));
                let ramp = ((j as f64 - low) / (high - low)).clamp(0.0, 1.0) as f32 as f64;
                let extrap_factor = 1.0 - ramp;
                interp * (1.0 - extrap_factor) + extrap * extrap_factor
            })
            .collect()
    }
}

/// HF's YaRN rotation: [`Yarn::inv_freq`], then `x * cos + rotate_half(x) * sin` with cos/sin
/// scaled by the attention factor.
pub fn apply_yarn_rope(x: &mut [f32], pos: usize, y: Yarn) {
    let half = x.len() / 2;
    for (j, inv_freq) in y.inv_freq(x.len()).into_iter().enumerate() {
        let angle = pos as f64 * inv_freq;
        let (sin, cos) = angle.sin_cos();
        let (sin, cos) = (sin * y.attention_factor, cos * y.attention_factor);
        let (a, b) = (x[j] as f64, x[j + half] as f64);
        x[j] = (a * cos - b * sin) as f32;
        x[j + half] = (b * cos + a * sin) as f32;
    }
}

/// The module of a MoE family's router and per-expert tensors.
fn moe_module(family: Family) -> &'static str {
    if family == Family::Mixtral {
        "block_sparse_moe"
    } else {
        "mlp"
    }
}

/// Expert `e`'s gate, up and down weight names in layer `l` (per-expert spelling).
fn expert_names(family: Family, l: usize, e: usize) -> [String; 3] {
    let m = moe_module(family);
    let projs = if family == Family::Mixtral {
        ["w1", "w3", "w2"]
    } else {
        ["gate_proj", "up_proj", "down_proj"]
    };
    projs.map(|p| format!("model.layers.{l}.{m}.experts.{e}.{p}.weight"))
}

/// The shared experts' gate, up and down weight names in layer `l` (DeepSeek V3, GLM-4.5,
/// ERNIE 4.5 MoE).
fn shared_expert_names(l: usize) -> [String; 3] {
    ["gate_proj", "up_proj", "down_proj"]
        .map(|p| format!("model.layers.{l}.mlp.shared_experts.{p}.weight"))
}

/// transformers 5's fused expert tensors (and Mixtral's renamed router) -> the per-expert
/// names the forward pass reads.
fn unfuse_experts(c: &Config, tensors: &mut Tensors) -> Result<()> {
    let Some(moe) = c.moe else { return Ok(()) };
    let (h, f) = (c.hidden, moe.width);
    for l in 0..c.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        if c.family == Family::Mixtral {
            if let Some(t) = tensors.remove(&p("mlp.gate.weight")) {
                tensors.insert(p("block_sparse_moe.gate.weight"), t);
            }
        }
        let gate_up = tensors
            .remove(&p("mlp.experts.gate_up_proj"))
            .or_else(|| tensors.remove(&p("mlp.experts.gate_up_proj.weight")));
        if let Some((shape, v)) = gate_up {
            ensure!(
                shape == [moe.experts, 2 * f, h],
                "layer {l}: gate_up_proj has shape {shape:?}"
            );
            for e in 0..moe.experts {
                let [g, u, _] = expert_names(c.family, l, e);
                let base = e * 2 * f * h;
                tensors.insert(g, (vec![f, h], v[base..base + f * h].to_vec()));
                tensors.insert(u, (vec![f, h], v[base + f * h..base + 2 * f * h].to_vec()));
            }
        }
        let down = tensors
            .remove(&p("mlp.experts.down_proj"))
            .or_else(|| tensors.remove(&p("mlp.experts.down_proj.weight")));
        if let Some((shape, v)) = down {
            ensure!(
                shape == [moe.experts, h, f],
                "layer {l}: down_proj has shape {shape:?}"
            );
            for e in 0..moe.experts {
                let [_, _, d] = expert_names(c.family, l, e);
                tensors.insert(d, (vec![h, f], v[e * h * f..(e + 1) * h * f].to_vec()));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The pieces, each as HF writes it.

/// RMSNorm in f64: `x * rsqrt(mean(x^2) + eps) * w`, or `* (1 + w)` for Gemma.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64, gemma: bool) -> Vec<f32> {
    let ms = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter()
        .zip(w)
        .map(|(&v, &g)| {
            let g = if gemma { 1.0 + g as f64 } else { g as f64 };
            (v as f64 * r * g) as f32
        })
        .collect()
}

/// HF's `apply_rotary_pos_emb` on one head vector: `x * cos + rotate_half(x) * sin` with
/// `rotate_half(x) = cat(-x[d/2..], x[..d/2])` and `cos`/`sin` of `cat(freqs, freqs)`.
pub fn apply_rope(x: &mut [f32], pos: usize, rope: Rope) {
    let d = x.len();
    let half = d / 2;
    for j in 0..half {
        let inv_freq = 1.0 / rope.theta.powf((2 * j) as f64 / d as f64) / rope.factor;
        let angle = pos as f64 * inv_freq;
        let (sin, cos) = angle.sin_cos();
        let (a, b) = (x[j] as f64, x[j + half] as f64);
        x[j] = (a * cos - b * sin) as f32;
        x[j + half] = (b * cos + a * sin) as f32;
    }
}

/// ERNIE 4.5's interleaved RoPE on one head vector: dims `2i` and `2i + 1` turn by
/// `pos * theta^(-2i/d)` (cos/sin of `repeat_interleave`d frequencies, `rotate_half` over
/// even/odd pairs).
pub fn apply_rope_interleaved(x: &mut [f32], pos: usize, theta: f64) {
    let d = x.len();
    for i in 0..d / 2 {
        let inv_freq = 1.0 / theta.powf((2 * i) as f64 / d as f64);
        let (sin, cos) = (pos as f64 * inv_freq).sin_cos();
        let (a, b) = (x[2 * i] as f64, x[2 * i + 1] as f64);
        x[2 * i] = (a * cos - b * sin) as f32;
        x[2 * i + 1] = (b * cos + a * sin) as f32;
    }
}

/// Phi-3's RoPE on the rotary part of one head: [`apply_rope`] with
/// `inv_freq[j] = 1 / (factors[j] * theta^(2j/d))` and cos/sin times `mscale`.
pub fn apply_rope_ext(x: &mut [f32], pos: usize, theta: f64, factors: &[f64], mscale: f64) {
    let d = x.len();
    let half = d / 2;
    for j in 0..half {
        let inv_freq = 1.0 / (factors[j] * theta.powf((2 * j) as f64 / d as f64));
        let angle = pos as f64 * inv_freq;
        let (sin, cos) = angle.sin_cos();
        let (sin, cos) = (sin * mscale, cos * mscale);
        let (a, b) = (x[j] as f64, x[j + half] as f64);
        x[j] = (a * cos - b * sin) as f32;
        x[j + half] = (b * cos + a * sin) as f32;
    }
}

/// Phi-3's fused projections -> the separate q/k/v and gate/up names the forward pass reads.
fn unfuse_phi3(c: &Config, tensors: &mut Tensors) -> Result<()> {
    let (h, f) = (c.hidden, c.intermediate);
    let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    for l in 0..c.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let (shape, v) = tensors
            .remove(&p("self_attn.qkv_proj.weight"))
            .with_context(|| format!("missing tensor {}", p("self_attn.qkv_proj.weight")))?;
        ensure!(
            shape == [q + 2 * kv, h],
            "layer {l}: qkv_proj has shape {shape:?}"
        );
        tensors.insert(
            p("self_attn.q_proj.weight"),
            (vec![q, h], v[..q * h].to_vec()),
        );
        tensors.insert(
            p("self_attn.k_proj.weight"),
            (vec![kv, h], v[q * h..(q + kv) * h].to_vec()),
        );
        tensors.insert(
            p("self_attn.v_proj.weight"),
            (vec![kv, h], v[(q + kv) * h..].to_vec()),
        );
        let (shape, v) = tensors
            .remove(&p("mlp.gate_up_proj.weight"))
            .with_context(|| format!("missing tensor {}", p("mlp.gate_up_proj.weight")))?;
        ensure!(
            shape == [2 * f, h],
            "layer {l}: gate_up_proj has shape {shape:?}"
        );
        tensors.insert(p("mlp.gate_proj.weight"), (vec![f, h], v[..f * h].to_vec()));
        tensors.insert(p("mlp.up_proj.weight"), (vec![f, h], v[f * h..].to_vec()));
    }
    Ok(())
}

/// `y = W x (+ b)` for a row-major `[rows, cols]` W, each row summed in f64.
fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(x.len(), cols);
    (0..rows)
        .into_par_iter()
        .map(|r| {
            let acc = dot(&w[r * cols..(r + 1) * cols], x);
            let b = bias.map_or(0.0, |b| b[r] as f64);
            (acc + b) as f32
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn add_in_place(h: &mut [f32], d: &[f32]) {
    for (a, b) in h.iter_mut().zip(d) {
        *a += *b;
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// `gelu_pytorch_tanh`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

fn softcap(x: f64, cap: f64) -> f64 {
    (x / cap).tanh() * cap
}

fn round_to_dtype(v: f32, torch_dtype: &str) -> f32 {
    match torch_dtype {
        "bfloat16" => half::bf16::from_f32(v).to_f32(),
        "float16" => half::f16::from_f32(v).to_f32(),
        _ => v,
    }
}

// ---------------------------------------------------------------------------------------------
// config.json

fn parse_config(j: &Value) -> Result<Config> {
    let arch = j["architectures"]
        .get(0)
        .and_then(Value::as_str)
        .context("no architectures[0]")?;
    let family = match arch {
        "LlamaForCausalLM" => Family::Llama,
        "Qwen2ForCausalLM" => Family::Qwen2,
        "Qwen3ForCausalLM" => Family::Qwen3,
        "Gemma2ForCausalLM" => Family::Gemma2,
        "Gemma3ForCausalLM" => Family::Gemma3,
        "Qwen3MoeForCausalLM" => Family::Qwen3Moe,
        "MixtralForCausalLM" => Family::Mixtral,
        "DeepseekV3ForCausalLM" => Family::Deepseek2,
        "GptOssForCausalLM" => Family::GptOss,
        "MistralForCausalLM" => Family::Mistral,
        "Phi3ForCausalLM" => Family::Phi3,
        "SmolLM3ForCausalLM" => Family::SmolLm3,
        "GraniteForCausalLM" => Family::Granite,
        "Olmo2ForCausalLM" => Family::Olmo2,
        "Glm4MoeForCausalLM" => Family::Glm4Moe,
        "Ernie4_5_MoeForCausalLM" => Family::Ernie45Moe,
        other => bail!("architecture {other} is not supported by the reference"),
    };
    let gemma = family.is_gemma();
    let usize_of = |k: &str| -> Result<usize> {
        j.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .with_context(|| format!("missing or non-integer {k}"))
    };
    let f64_or = |k: &str, d: f64| -> Result<f64> {
        match j.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => v.as_f64().with_context(|| format!("{k} is not a number")),
        }
    };
    let opt_f64 = |k: &str, d: Option<f64>| -> Result<Option<f64>> {
        match j.get(k) {
            None => Ok(d),
            Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(
                v.as_f64().with_context(|| format!("{k} is not a number"))?,
            )),
        }
    };
    let bool_or = |k: &str, d: bool| j.get(k).and_then(Value::as_bool).unwrap_or(d);

    let hidden = usize_of("hidden_size")?;
    let heads = usize_of("num_attention_heads")?;
    let kv_heads = j
        .get("num_key_value_heads")
        .and_then(Value::as_u64)
        .map_or(heads, |v| v as usize);
    ensure!(
        kv_heads > 0 && heads % kv_heads == 0,
        "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
    );
    let head_dim = match j.get("head_dim").and_then(Value::as_u64) {
        Some(d) => d as usize,
        None if gemma => 256,
        None => hidden / heads,
    };
    ensure!(head_dim % 2 == 0, "head_dim {head_dim} is odd");
    let layers = usize_of("num_hidden_layers")?;

    // Activation.
    let act_key = if gemma {
        "hidden_activation"
    } else {
        "hidden_act"
    };
    let act = j.get(act_key).and_then(Value::as_str).unwrap_or(if gemma {
        "gelu_pytorch_tanh"
    } else {
        "silu"
    });
    let gelu = match act {
        "silu" => false,
        "gelu_pytorch_tanh" => true,
        other => bail!("{act_key} {other} is not supported"),
    };

    // RoPE per layer type.
    let rope_params = j.get("rope_parameters").filter(|v| !v.is_null());
    let default_theta = match family {
        Family::Gemma3 => 1_000_000.0,
        _ => 10_000.0,
    };
    // Global (full-attention) layers: rope_theta and rope_scaling (old style) or
    // rope_parameters (new style; per layer type for Gemma3).
    let global_params = match (family, rope_params) {
        (Family::Gemma3, Some(p)) => p.get("full_attention"),
        (_, p) => p,
    };
    let global_theta = match j.get("rope_theta").and_then(Value::as_f64) {
        Some(t) => t,
        None => global_params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(default_theta),
    };
    let scaling = j
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or(global_params);
    let rope_ext = if family == Family::Phi3 {
        Some(phi3_rope(j, scaling, head_dim)?)
    } else if family == Family::Glm4Moe {
        ensure!(
            scaling.is_none_or(|p| rope_factor(Some(p)).ok() == Some(1.0)),
            "GLM-4.5 with RoPE scaling is not supported"
        );
        let partial = match scaling.and_then(|p| p.get("partial_rotary_factor")) {
            Some(v) => v.as_f64().context("partial_rotary_factor")?,
            None => f64_or("partial_rotary_factor", 0.5)?,
        };
        let dims = (head_dim as f64 * partial) as usize;
        ensure!(
            dims.is_multiple_of(2) && dims <= head_dim,
            "{dims} rotary dims of {head_dim}"
        );
        Some(RopeExt {
            dims,
            short: vec![1.0; dims / 2],
            long: vec![1.0; dims / 2],
            original_max: usize::MAX,
            mscale: 1.0,
        })
    } else {
        None
    };
    let yarn = match scaling {
        // YaRN is modelled for gpt-oss only (other families: an error below).
        Some(p)
            if family == Family::GptOss
                && p.get("rope_type").and_then(Value::as_str) == Some("yarn") =>
        {
            let g = |k: &str| p.get(k).and_then(Value::as_f64);
            let factor = g("factor").context("yarn without a factor")?;
            let orig = g("original_max_position_embeddings")
                .or(j.get("max_position_embeddings").and_then(Value::as_f64))
                .context("yarn without a context length")?;
            Some(Yarn {
                theta: global_theta,
                factor,
                original_context: orig,
                beta_fast: g("beta_fast").unwrap_or(32.0),
                beta_slow: g("beta_slow").unwrap_or(1.0),
                truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
                attention_factor: g("attention_factor").unwrap_or(0.1 * factor.ln() + 1.0),
            })
        }
        _ => None,
    };
    let global = Rope {
        theta: global_theta,
        // DeepSeek's yarn is handled by its own config below; gpt-oss's by `yarn`; Phi-3's
        // LongRoPE by `rope_ext`.
        factor: if family == Family::Deepseek2 || family == Family::Phi3 || yarn.is_some() {
            1.0
        } else {
            rope_factor(scaling)?
        },
    };
    let local = if family == Family::Gemma3 {
        let local_params = rope_params.and_then(|p| p.get("sliding_attention"));
        let theta = match j.get("rope_local_base_freq").and_then(Value::as_f64) {
            Some(t) => t,
            None => local_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
        };
        Rope {
            theta,
            factor: rope_factor(local_params)?,
        }
    } else {
        global
    };

    // Which layers slide, and by how much.
    let layer_types: Option<Vec<String>> = match j.get("layer_types") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_array()
                .context("layer_types is not a list")?
                .iter()
                .map(|t| t.as_str().map(String::from).context("layer_types entry"))
                .collect::<Result<_>>()?,
        ),
    };
    if let Some(t) = &layer_types {
        ensure!(
            t.len() == layers,
            "layer_types has {} entries for {layers} layers",
            t.len()
        );
        for ty in t {
            ensure!(
                ty == "sliding_attention" || ty == "full_attention",
                "layer type {ty} is not supported"
            );
        }
    }
    let sliding_window = match family {
        Family::Gemma2 | Family::Gemma3 => Some(
            j.get("sliding_window")
                .and_then(Value::as_u64)
                .unwrap_or(4096) as usize,
        ),
        Family::Mixtral | Family::GptOss | Family::Phi3 | Family::Mistral => j
            .get("sliding_window")
            .and_then(Value::as_u64)
            .map(|w| w as usize),
        Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe
            if bool_or("use_sliding_window", false) =>
        {
            j.get("sliding_window")
                .and_then(Value::as_u64)
                .map(|w| w as usize)
        }
        _ => None,
    };
    let is_sliding = |i: usize| -> bool {
        if let Some(t) = &layer_types {
            return t[i] == "sliding_attention";
        }
        match family {
            Family::Gemma2 => i.is_multiple_of(2),
            Family::Gemma3 => {
                let pattern = j
                    .get("sliding_window_pattern")
                    .and_then(Value::as_u64)
                    .unwrap_or(6) as usize;
                !(i + 1).is_multiple_of(pattern)
            }
            Family::Mixtral | Family::Phi3 => true,
            Family::GptOss => i.is_multiple_of(2),
            Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe => {
                let max_window_layers = j
                    .get("max_window_layers")
                    .and_then(Value::as_u64)
                    .unwrap_or(28) as usize;
                i >= max_window_layers
            }
            Family::Llama
            | Family::Deepseek2
            | Family::Glm4Moe
            | Family::Ernie45Moe
            | Family::SmolLm3
            | Family::Granite
            | Family::Olmo2 => false,
            Family::Mistral => true,
        }
    };
    let window: Vec<Option<usize>> = (0..layers)
        .map(|i| sliding_window.filter(|_| is_sliding(i)))
        .collect();
    if let Some(w) = window.iter().flatten().next() {
        ensure!(*w > 0, "sliding_window 0");
    }
    let rope = (0..layers)
        .map(|i| {
            if family == Family::Gemma3 && is_sliding(i) {
                local
            } else {
                global
            }
        })
        .collect();

    let scaling = if gemma {
        f64_or("query_pre_attn_scalar", 256.0)?.powf(-0.5)
    } else if family == Family::Granite {
        f64_or("attention_multiplier", 1.0)?
    } else {
        (head_dim as f64).powf(-0.5)
    };
    let (attn_softcap, final_softcap) = match family {
        Family::Gemma2 => (
            opt_f64("attn_logit_softcapping", Some(50.0))?,
            opt_f64("final_logit_softcapping", Some(30.0))?,
        ),
        Family::Gemma3 => (
            opt_f64("attn_logit_softcapping", None)?,
            opt_f64("final_logit_softcapping", None)?,
        ),
        _ => (None, None),
    };
    let granite = |k: &str| -> Result<f64> {
        if family == Family::Granite {
            f64_or(k, 1.0)
        } else {
            Ok(1.0)
        }
    };
    let torch_dtype = j
        .get("torch_dtype")
        .or(j.get("dtype"))
        .and_then(Value::as_str)
        .unwrap_or("float32")
        .to_string();

    let moe = match family {
        Family::Qwen3Moe => {
            let sparse_step = j
                .get("decoder_sparse_step")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let dense_layers = j
                .get("mlp_only_layers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            ensure!(
                sparse_step == 1 && !dense_layers,
                "dense layers in a Qwen3 MoE (decoder_sparse_step / mlp_only_layers) are not supported"
            );
            Some(Moe {
                experts: usize_of("num_experts")?,
                top_k: usize_of("num_experts_per_tok")?,
                norm_topk: bool_or("norm_topk_prob", false),
                width: usize_of("moe_intermediate_size")?,
            })
        }
        Family::Mixtral => Some(Moe {
            experts: usize_of("num_local_experts")?,
            top_k: usize_of("num_experts_per_tok")?,
            norm_topk: true,
            width: usize_of("intermediate_size")?,
        }),
        Family::GptOss => Some(Moe {
            experts: usize_of("num_local_experts")?,
            top_k: usize_of("num_experts_per_tok")?,
            norm_topk: true,
            width: usize_of("intermediate_size")?,
        }),
        _ => None,
    };
    if let Some(m) = moe {
        ensure!(
            m.top_k >= 1 && m.top_k <= m.experts,
            "{} experts per token of {}",
            m.top_k,
            m.experts
        );
    }

    let deepseek = if family == Family::Deepseek2 {
        let rope = usize_of("qk_rope_head_dim")?;
        let (inv_freq, rope_attention_factor) = match scaling_obj_for_mscale(j) {
            Some(p)
                if p.get("rope_type").or(p.get("type")).and_then(Value::as_str) == Some("yarn") =>
            {
                deepseek_yarn(rope, global_theta, p)?
            }
            Some(p) if rope_factor(Some(p))? != 1.0 => bail!("DeepSeek with non-yarn rope scaling"),
            _ => (
                (0..rope / 2)
                    .map(|i| 1.0 / global_theta.powf((2 * i) as f64 / rope as f64))
                    .collect(),
                1.0,
            ),
        };
        let q_rank = match j.get("q_lora_rank") {
            None | Some(Value::Null) => None,
            Some(_) => Some(usize_of("q_lora_rank")?),
        };
        let ds = Deepseek {
            q_rank,
            kv_rank: usize_of("kv_lora_rank")?,
            nope: usize_of("qk_nope_head_dim")?,
            rope,
            v: usize_of("v_head_dim")?,
            dense_layers: usize_of("first_k_dense_replace")?,
            experts: usize_of("n_routed_experts")?,
            top_k: usize_of("num_experts_per_tok")?,
            width: usize_of("moe_intermediate_size")?,
            shared: usize_of("n_shared_experts")?,
            n_group: usize_of("n_group")?,
            topk_group: usize_of("topk_group")?,
            norm_topk: bool_or("norm_topk_prob", true),
            routed_scaling: f64_or("routed_scaling_factor", 2.5)?,
            inv_freq,
            rope_attention_factor,
        };
        ensure!(
            j.get("scoring_func")
                .and_then(Value::as_str)
                .unwrap_or("sigmoid")
                == "sigmoid",
            "DeepSeek V3 routes with sigmoid scores"
        );
        ds.check_groups()?;
        ensure!(
            ds.top_k >= 1 && ds.top_k <= ds.experts,
            "top_k {}",
            ds.top_k
        );
        Some(ds)
    } else if family == Family::Glm4Moe {
        let u_or = |k: &str, d: usize| -> Result<usize> {
            match j.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(_) => usize_of(k),
            }
        };
        let ds = Deepseek {
            q_rank: None,
            kv_rank: 0,
            nope: 0,
            rope: 0,
            v: 0,
            dense_layers: u_or("first_k_dense_replace", 1)?,
            experts: u_or("n_routed_experts", 128)?,
            top_k: u_or("num_experts_per_tok", 8)?,
            width: u_or("moe_intermediate_size", 1408)?,
            shared: u_or("n_shared_experts", 1)?,
            n_group: u_or("n_group", 1)?,
            topk_group: u_or("topk_group", 1)?,
            norm_topk: bool_or("norm_topk_prob", true),
            routed_scaling: f64_or("routed_scaling_factor", 1.0)?,
            inv_freq: Vec::new(),
            rope_attention_factor: 1.0,
        };
        ds.check_groups()?;
        ensure!(
            ds.top_k >= 1 && ds.top_k <= ds.experts && ds.experts / ds.n_group >= 2,
            "top_k {} of {} experts",
            ds.top_k,
            ds.experts
        );
        Some(ds)
    } else {
        None
    };
    let ernie = if family == Family::Ernie45Moe {
        let interval = j
            .get("moe_layer_interval")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let end = j
            .get("moe_layer_end_index")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        ensure!(
            interval == 1 && (end < 0 || end as usize + 1 >= layers),
            "ERNIE 4.5 MoE with moe_layer_interval {interval} / moe_layer_end_index {end} is not supported"
        );
        let e = ErnieMoe {
            start: usize_of("moe_layer_start_index")?,
            experts: usize_of("moe_num_experts")?,
            top_k: usize_of("moe_k")?,
            width: usize_of("moe_intermediate_size")?,
            shared: j
                .get("moe_num_shared_experts")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize,
            norm_min: f64_or("moe_norm_min", 1e-12)?,
        };
        ensure!(
            e.top_k >= 1 && e.top_k <= e.experts,
            "moe_k {} of {} experts",
            e.top_k,
            e.experts
        );
        Some(e)
    } else {
        None
    };
    // DeepSeek: q.k over nope + rope dims, times yarn's mscale(factor, mscale_all_dim)^2.
    let scaling = match &deepseek {
        Some(ds) if family == Family::Deepseek2 => {
            let mut s = ((ds.nope + ds.rope) as f64).powf(-0.5);
            if let Some(p) = scaling_obj_for_mscale(j) {
                let ma = p
                    .get("mscale_all_dim")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                let factor = p.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
                if ma != 0.0 && factor > 1.0 {
                    let m = 0.1 * ma * factor.ln() + 1.0;
                    s *= m * m;
                }
            }
            s
        }
        _ => scaling,
    };

    Ok(Config {
        family,
        hidden,
        intermediate: usize_of("intermediate_size")?,
        layers,
        heads,
        kv_heads,
        head_dim,
        vocab: usize_of("vocab_size")?,
        eps: f64_or("rms_norm_eps", 1e-6)?,
        tied: bool_or("tie_word_embeddings", gemma),
        scaling,
        attn_softcap,
        final_softcap,
        window,
        rope,
        gelu,
        torch_dtype,
        moe,
        deepseek,
        ernie,
        yarn,
        swiglu_limit: f64_or("swiglu_limit", 7.0)?,
        rope_ext,
        use_rope: if family == Family::SmolLm3 {
            smollm3_use_rope(j, layers)?
        } else {
            vec![true; layers]
        },
        embedding_multiplier: granite("embedding_multiplier")?,
        residual_multiplier: granite("residual_multiplier")?,
        logits_scaling: granite("logits_scaling")?,
    })
}

/// SmolLM3's per-layer RoPE switch: `no_rope_layers` (1 = RoPE), else every layer but each
/// `no_rope_layer_interval`th (default 4).
fn smollm3_use_rope(j: &Value, layers: usize) -> Result<Vec<bool>> {
    match j.get("no_rope_layers").filter(|v| !v.is_null()) {
        Some(v) => {
            let list = v.as_array().context("no_rope_layers is not a list")?;
            ensure!(
                list.len() == layers,
                "no_rope_layers has {} entries for {layers} layers",
                list.len()
            );
            list.iter()
                .map(|x| {
                    x.as_i64()
                        .map(|i| i != 0)
                        .context("no_rope_layers entry is not an integer")
                })
                .collect()
        }
        None => {
            let interval = j
                .get("no_rope_layer_interval")
                .and_then(Value::as_u64)
                .unwrap_or(4) as usize;
            Ok((0..layers).map(|i| (i + 1) % interval != 0).collect())
        }
    }
}

/// A Mistral3ForConditionalGeneration config as its text model's: `text_config` over the top
/// level, architectures `MistralForCausalLM`.
fn mistral3_text_config(j: &Value) -> Result<Value> {
    let mut out = j
        .as_object()
        .context("config.json is not an object")?
        .clone();
    let text = j["text_config"]
        .as_object()
        .context("Mistral3ForConditionalGeneration without text_config")?;
    ensure!(
        text.get("model_type").and_then(Value::as_str) == Some("mistral"),
        "text_config.model_type {:?} is not supported by the reference",
        text.get("model_type")
    );
    for (k, v) in text {
        out.insert(k.clone(), v.clone());
    }
    out.insert(
        "architectures".into(),
        serde_json::json!(["MistralForCausalLM"]),
    );
    Ok(Value::Object(out))
}

/// The language model's tensors under their text-model names; the vision tower and projector
/// dropped.
fn mistral3_text_tensors(tensors: Tensors) -> Tensors {
    tensors
        .into_iter()
        .filter_map(|(name, t)| {
            let text = name
                .strip_prefix("language_model.")
                .map(String::from)
                .or_else(|| {
                    name.strip_prefix("model.language_model.")
                        .map(|r| format!("model.{r}"))
                })?;
            Some((text, t))
        })
        .collect()
}

/// Phi-3's rotary part and LongRoPE (transformers' `_compute_longrope_parameters`).
fn phi3_rope(j: &Value, scaling: Option<&Value>, head_dim: usize) -> Result<RopeExt> {
    let partial = match j.get("partial_rotary_factor") {
        None | Some(Value::Null) => 1.0,
        Some(v) => v
            .as_f64()
            .context("partial_rotary_factor is not a number")?,
    };
    let dims = (head_dim as f64 * partial) as usize;
    ensure!(
        dims.is_multiple_of(2) && dims > 0,
        "{dims} rotary dimensions"
    );
    let max_pos = j
        .get("max_position_embeddings")
        .and_then(Value::as_f64)
        .unwrap_or(4096.0);
    let orig = j
        .get("original_max_position_embeddings")
        .and_then(Value::as_f64)
        .unwrap_or(4096.0);
    let ones = vec![1.0; dims / 2];
    let Some(s) = scaling.filter(|v| !v.is_null()) else {
        return Ok(RopeExt {
            dims,
            short: ones.clone(),
            long: ones,
            original_max: orig as usize,
            mscale: 1.0,
        });
    };
    let ty = s
        .get("rope_type")
        .or(s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    ensure!(
        ty == "longrope" || ty == "su",
        "Phi-3 rope scaling {ty} is not supported by the reference"
    );
    let list = |k: &str| -> Result<Vec<f64>> {
        let v: Vec<f64> = s
            .get(k)
            .and_then(Value::as_array)
            .with_context(|| format!("rope_scaling has no {k}"))?
            .iter()
            .map(|x| x.as_f64().context("a rope factor is not a number"))
            .collect::<Result<_>>()?;
        ensure!(
            v.len() == dims / 2,
            "{k} has {} entries, not {}",
            v.len(),
            dims / 2
        );
        Ok(v)
    };
    let factor = max_pos / orig;
    let mscale = match s.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / orig.ln()).sqrt(),
    };
    Ok(RopeExt {
        dims,
        short: list("short_factor")?,
        long: list("long_factor")?,
        original_max: orig as usize,
        mscale,
    })
}

/// config.json's `rope_scaling` (or `rope_parameters`), for DeepSeek's attention mscale.
fn scaling_obj_for_mscale(j: &Value) -> Option<&Value> {
    j.get("rope_scaling")
        .filter(|v| !v.is_null())
        .or(j.get("rope_parameters").filter(|v| !v.is_null()))
}

/// The linear factor of a `rope_scaling` / `rope_parameters` object (1 for none or default).
fn rope_factor(p: Option<&Value>) -> Result<f64> {
    let Some(p) = p.filter(|p| !p.is_null()) else {
        return Ok(1.0);
    };
    let ty = p
        .get("rope_type")
        .or(p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match ty {
        "default" => Ok(1.0),
        "linear" => p
            .get("factor")
            .and_then(Value::as_f64)
            .context("linear rope scaling without a factor"),
        other => bail!("rope scaling {other} is not supported by the reference"),
    }
}

// ---------------------------------------------------------------------------------------------
// Weights

/// name -> (shape, f32 values).
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of the checkpoint as (shape, f32 values): the files named by
/// `model.safetensors.index.json`, else every `*.safetensors` in the folder.
fn load_safetensors(dir: &Path) -> Result<Tensors> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.is_file() {
        let j: Value = serde_json::from_str(&fs::read_to_string(&index)?)
            .with_context(|| format!("parsing {}", index.display()))?;
        let map = j["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", index.display()))?;
        let names: BTreeSet<&str> = map
            .values()
            .map(|v| v.as_str().context("weight_map value is not a string"))
            .collect::<Result<_>>()?;
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        let mut f: Vec<PathBuf> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        f.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
        f.sort();
        f
    };
    ensure!(!files.is_empty(), "{}: no safetensors files", dir.display());
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: {e:?}", file.display()))?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::U8 => data.iter().map(|&b| b as f32).collect(),
                other => bail!("{}: {name} has dtype {other:?}", file.display()),
            };
            let prev = out.insert(name.clone(), (view.shape().to_vec(), values));
            ensure!(prev.is_none(), "tensor {name} appears twice");
        }
    }
    Ok(out)
}

/// DeepSeek's layer tensors: MLA attention and [`deepseek_mlp_tensors`].
fn deepseek_tensors(c: &Config, ds: &Deepseek, want: &mut Vec<(String, Vec<usize>, bool)>) {
    let (h, nh) = (c.hidden, c.heads);
    let qd = ds.nope + ds.rope;
    for l in 0..c.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        match ds.q_rank {
            Some(r) => {
                want.push((p("self_attn.q_a_proj.weight"), vec![r, h], true));
                want.push((p("self_attn.q_a_layernorm.weight"), vec![r], true));
                want.push((p("self_attn.q_b_proj.weight"), vec![nh * qd, r], true));
            }
            None => want.push((p("self_attn.q_proj.weight"), vec![nh * qd, h], true)),
        }
        want.push((
            p("self_attn.kv_a_proj_with_mqa.weight"),
            vec![ds.kv_rank + ds.rope, h],
            true,
        ));
        want.push((p("self_attn.kv_a_layernorm.weight"), vec![ds.kv_rank], true));
        want.push((
            p("self_attn.kv_b_proj.weight"),
            vec![nh * (ds.nope + ds.v), ds.kv_rank],
            true,
        ));
        want.push((p("self_attn.o_proj.weight"), vec![h, nh * ds.v], true));
        deepseek_mlp_tensors(c, ds, l, want);
        want.push((p("input_layernorm.weight"), vec![h], true));
        want.push((p("post_attention_layernorm.weight"), vec![h], true));
    }
}

/// GLM-4.5's layers: Llama's attention with q/k/v biases (o_proj without), optional per-head
/// q/k norms, DeepSeek V3's dense or MoE feed-forward ([`deepseek_mlp_tensors`]).
fn glm4moe_tensors(c: &Config, ds: &Deepseek, want: &mut Vec<(String, Vec<usize>, bool)>) {
    let (h, hd) = (c.hidden, c.head_dim);
    let (q, kv) = (c.heads * hd, c.kv_heads * hd);
    for l in 0..c.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            want.push((p(&format!("self_attn.{name}.weight")), vec![rows, h], true));
            want.push((p(&format!("self_attn.{name}.bias")), vec![rows], false));
        }
        want.push((p("self_attn.o_proj.weight"), vec![h, q], true));
        want.push((p("self_attn.q_norm.weight"), vec![hd], false));
        want.push((p("self_attn.k_norm.weight"), vec![hd], false));
        deepseek_mlp_tensors(c, ds, l, want);
        want.push((p("input_layernorm.weight"), vec![h], true));
        want.push((p("post_attention_layernorm.weight"), vec![h], true));
    }
}

/// DeepSeek V3's feed-forward tensors of layer `l`, which GLM-4.5 shares: a dense MLP before
/// `first_k_dense_replace`, then the router (+ score bias), routed and shared experts.
fn deepseek_mlp_tensors(
    c: &Config,
    ds: &Deepseek,
    l: usize,
    want: &mut Vec<(String, Vec<usize>, bool)>,
) {
    let h = c.hidden;
    let p = |s: &str| format!("model.layers.{l}.{s}");
    if l < ds.dense_layers {
        let f = c.intermediate;
        want.push((p("mlp.gate_proj.weight"), vec![f, h], true));
        want.push((p("mlp.up_proj.weight"), vec![f, h], true));
        want.push((p("mlp.down_proj.weight"), vec![h, f], true));
    } else {
        let (w, sw) = (ds.width, ds.width * ds.shared);
        want.push((p("mlp.gate.weight"), vec![ds.experts, h], true));
        want.push((
            p("mlp.gate.e_score_correction_bias"),
            vec![ds.experts],
            true,
        ));
        for e in 0..ds.experts {
            let [g, u, d] = expert_names(c.family, l, e);
            want.push((g, vec![w, h], true));
            want.push((u, vec![w, h], true));
            want.push((d, vec![h, w], true));
        }
        let [g, u, d] = shared_expert_names(l);
        want.push((g, vec![sw, h], true));
        want.push((u, vec![sw, h], true));
        want.push((d, vec![h, sw], true));
    }
}

/// Checks that the checkpoint holds exactly the tensors the family needs, with the right
/// shapes, and returns them by name.
fn check_tensors(c: &Config, mut tensors: Tensors) -> Result<HashMap<String, Vec<f32>>> {
    let (h, f, hd) = (c.hidden, c.intermediate, c.head_dim);
    let (q, kv) = (c.heads * hd, c.kv_heads * hd);
    let gemma = c.family.is_gemma();
    // (name, shape, required)
    let mut want: Vec<(String, Vec<usize>, bool)> =
        vec![("model.embed_tokens.weight".into(), vec![c.vocab, h], true)];
    match &c.deepseek {
        Some(ds) if c.family == Family::Glm4Moe => {
            glm4moe_tensors(c, ds, &mut want);
            // transformers ignores the multi-token-prediction layers past num_hidden_layers.
            tensors.retain(|k, _| {
                let layer = k
                    .strip_prefix("model.layers.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|n| n.parse::<usize>().ok());
                layer.is_none_or(|l| l < c.layers)
            });
        }
        Some(ds) => deepseek_tensors(c, ds, &mut want),
        None => {}
    }
    let generic_layers = if c.deepseek.is_some() { 0 } else { c.layers };
    for l in 0..generic_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let qkv_bias = matches!(c.family, Family::Qwen2 | Family::GptOss);
        for (name, shape, bias_required) in [
            ("self_attn.q_proj", vec![q, h], qkv_bias),
            ("self_attn.k_proj", vec![kv, h], qkv_bias),
            ("self_attn.v_proj", vec![kv, h], qkv_bias),
            ("self_attn.o_proj", vec![h, q], false),
        ] {
            let rows = shape[0];
            want.push((p(&format!("{name}.weight")), shape, true));
            // Optional biases (Llama's attention_bias / mlp_bias) are used when present.
            let o_bias_forbidden = c.family == Family::Qwen2 && name == "self_attn.o_proj";
            if !o_bias_forbidden {
                want.push((p(&format!("{name}.bias")), vec![rows], bias_required));
            }
        }
        if c.family == Family::GptOss {
            want.push((p("self_attn.sinks"), vec![c.heads], true));
        }
        match c.moe {
            None if c.ernie.is_some_and(|e| l >= e.start) => {
                let e = c.ernie.expect("ernie config");
                let (w, sw) = (e.width, e.width * e.shared);
                want.push((p("mlp.gate.weight"), vec![e.experts, h], true));
                want.push((
                    p("mlp.moe_statics.e_score_correction_bias"),
                    vec![1, e.experts],
                    true,
                ));
                for x in 0..e.experts {
                    let [g, u, d] = expert_names(c.family, l, x);
                    want.push((g, vec![w, h], true));
                    want.push((u, vec![w, h], true));
                    want.push((d, vec![h, w], true));
                }
                if e.shared > 0 {
                    want.push((p("mlp.shared_experts.gate_proj.weight"), vec![sw, h], true));
                    want.push((p("mlp.shared_experts.up_proj.weight"), vec![sw, h], true));
                    want.push((p("mlp.shared_experts.down_proj.weight"), vec![h, sw], true));
                }
            }
            Some(moe) if c.family == Family::GptOss => {
                let (e, w) = (moe.experts, moe.width);
                want.push((p("mlp.router.weight"), vec![e, h], true));
                want.push((p("mlp.router.bias"), vec![e], true));
                want.push((p("mlp.experts.gate_up_proj"), vec![e, h, 2 * w], true));
                want.push((p("mlp.experts.gate_up_proj_bias"), vec![e, 2 * w], true));
                want.push((p("mlp.experts.down_proj"), vec![e, w, h], true));
                want.push((p("mlp.experts.down_proj_bias"), vec![e, h], true));
            }
            None => {
                want.push((p("mlp.gate_proj.weight"), vec![f, h], true));
                want.push((p("mlp.up_proj.weight"), vec![f, h], true));
                want.push((p("mlp.down_proj.weight"), vec![h, f], true));
                // Optional biases (Llama's mlp_bias) are used when present.
                for (name, rows) in [("gate_proj", f), ("up_proj", f), ("down_proj", h)] {
                    want.push((p(&format!("mlp.{name}.bias")), vec![rows], false));
                }
            }
            Some(moe) => {
                let m = moe_module(c.family);
                want.push((p(&format!("{m}.gate.weight")), vec![moe.experts, h], true));
                for e in 0..moe.experts {
                    let [g, u, d] = expert_names(c.family, l, e);
                    want.push((g, vec![moe.width, h], true));
                    want.push((u, vec![moe.width, h], true));
                    want.push((d, vec![h, moe.width], true));
                }
            }
        }
        if matches!(c.family, Family::Qwen3 | Family::Gemma3 | Family::Qwen3Moe) {
            want.push((p("self_attn.q_norm.weight"), vec![hd], true));
            want.push((p("self_attn.k_norm.weight"), vec![hd], true));
        }
        if c.family == Family::Olmo2 {
            want.push((p("self_attn.q_norm.weight"), vec![q], true));
            want.push((p("self_attn.k_norm.weight"), vec![kv], true));
            want.push((p("post_feedforward_layernorm.weight"), vec![h], true));
        } else {
            want.push((p("input_layernorm.weight"), vec![h], true));
        }
        want.push((p("post_attention_layernorm.weight"), vec![h], true));
        if gemma {
            want.push((p("pre_feedforward_layernorm.weight"), vec![h], true));
            want.push((p("post_feedforward_layernorm.weight"), vec![h], true));
        }
    }
    want.push(("model.norm.weight".into(), vec![h], true));
    // With tie_word_embeddings HF uses the embedding matrix whatever lm_head.weight holds.
    want.push(("lm_head.weight".into(), vec![c.vocab, h], !c.tied));

    let mut out = HashMap::new();
    for (name, shape, required) in want {
        match tensors.remove(&name) {
            Some((s, v)) => {
                ensure!(s == shape, "{name} has shape {s:?}, expected {shape:?}");
                out.insert(name, v);
            }
            None => ensure!(!required, "missing tensor {name}"),
        }
    }
    tensors.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
    if c.family == Family::Ernie45Moe {
        // transformers' _keys_to_ignore_on_load_unexpected = ["mtp"].
        tensors.retain(|k, _| !k.contains("mtp"));
    }
    ensure!(
        tensors.is_empty(),
        "unexpected tensors: {:?}",
        tensors.keys().collect::<Vec<_>>()
    );
    if c.tied {
        out.remove("lm_head.weight");
    }
    Ok(out)
}
