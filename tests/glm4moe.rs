//! GLM-4.5 (`Glm4MoeForCausalLM`): the keys, names and special tokens conversion/glm.py's
//! `Glm4MoeModel` writes for the fixture's config (the logits and every quantized tensor are
//! checked against llama.cpp in `convert_vs_llama::glm4moe_matches_reference_and_llama_quantize`).

use crate::common::fixtures::{
    convert, f32_logits, fresh_checkpoint, logits_gap, q8_0_error, requantizes_like_llama_quantize,
};
use crate::convert_vs_llama::tmp;
use kiln::gguf::{Array, GgufFile, Value};
use kiln::plan::FileType;
use kiln_fixtures::checkpoint::{default_for, Arch, FixtureSpec, Vocab};
use std::path::PathBuf;

fn spec() -> FixtureSpec {
    default_for(Arch::Glm4Moe, Vocab::TrainedBpe { size: 512 })
}

fn checkpoint(name: &str) -> PathBuf {
    fresh_checkpoint(&spec(), tmp().join(format!("glm4moe-{name}")))
}

/// Every `glm4moe.*` key in gguf-py's order and with convert's values, the MTP layer kept as
/// block 3 with its `nextn.*` tensors, and `_set_vocab_glm`'s special tokens (ids looked up in
/// tokenizer.json by the tokenizers crate).
#[test]
fn glm4moe_keys_names_and_special_tokens_follow_convert() {
    let spec = spec();
    let dir = checkpoint("keys");
    let out = tmp().join("glm4moe-keys-F32.gguf");
    convert(&dir, FileType::F32, &out);
    let g = GgufFile::open(&out).unwrap();
    let md = g.metadata();
    let keys: Vec<&str> = md
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("glm4moe."))
        .collect();
    assert_eq!(
        keys,
        [
            "glm4moe.block_count",
            "glm4moe.context_length",
            "glm4moe.embedding_length",
            "glm4moe.feed_forward_length",
            "glm4moe.attention.head_count",
            "glm4moe.attention.head_count_kv",
            "glm4moe.rope.freq_base",
            "glm4moe.attention.layer_norm_rms_epsilon",
            "glm4moe.expert_count",
            "glm4moe.expert_used_count",
            "glm4moe.expert_group_count",
            "glm4moe.expert_group_used_count",
            "glm4moe.attention.key_length",
            "glm4moe.attention.value_length",
            "glm4moe.rope.dimension_count",
            "glm4moe.expert_feed_forward_length",
            "glm4moe.expert_shared_count",
            "glm4moe.leading_dense_block_count",
            "glm4moe.expert_gating_func",
            "glm4moe.expert_weights_scale",
            "glm4moe.expert_weights_norm",
            "glm4moe.nextn_predict_layers",
        ]
    );
    let u = |k: &str| match md.get(&format!("glm4moe.{k}")) {
        Some(Value::U32(n)) => *n,
        other => panic!("glm4moe.{k}: {other:?}"),
    };
    let f = |k: &str| match md.get(&format!("glm4moe.{k}")) {
        Some(Value::F32(x)) => *x,
        other => panic!("glm4moe.{k}: {other:?}"),
    };
    // num_hidden_layers + num_nextn_predict_layers.
    assert_eq!(u("block_count"), spec.layers as u32 + 1);
    assert_eq!(u("nextn_predict_layers"), 1);
    assert_eq!(u("rope.dimension_count"), spec.head_dim as u32 / 2);
    assert_eq!(u("attention.key_length"), spec.head_dim as u32);
    assert_eq!(u("feed_forward_length"), 3 * spec.intermediate as u32);
    assert_eq!(u("expert_feed_forward_length"), spec.intermediate as u32);
    assert_eq!(u("expert_count"), spec.experts as u32);
    assert_eq!(u("expert_used_count"), spec.experts_used as u32);
    assert_eq!(u("expert_shared_count"), 1);
    assert_eq!(u("leading_dense_block_count"), 1);
    assert_eq!(u("expert_group_count"), 1);
    assert_eq!(u("expert_gating_func"), 2, "sigmoid");
    assert_eq!(f("expert_weights_scale"), 2.5);
    assert_eq!(f("attention.layer_norm_rms_epsilon"), 1e-5);
    assert_eq!(
        md.get("glm4moe.expert_weights_norm"),
        Some(&Value::Bool(true))
    );

    // The tensors: a dense block 0, MoE blocks 1..3 (3 = the MTP block) with the MTP's own.
    let dims = |n: &str| -> Option<Vec<u64>> {
        g.tensors()
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.dims.clone())
    };
    let (h, f_exp, e) = (
        spec.hidden as u64,
        spec.intermediate as u64,
        spec.experts as u64,
    );
    let q = (spec.heads * spec.head_dim) as u64;
    assert_eq!(dims("blk.0.ffn_down.weight"), Some(vec![3 * f_exp, h]));
    assert_eq!(dims("blk.0.ffn_down_exps.weight"), None);
    assert_eq!(dims("blk.0.ffn_norm.weight"), None);
    assert_eq!(dims("blk.0.post_attention_norm.weight"), Some(vec![h]));
    assert_eq!(dims("blk.0.attn_q.bias"), Some(vec![q]));
    assert_eq!(
        dims("blk.0.attn_q_norm.weight"),
        Some(vec![spec.head_dim as u64])
    );
    for b in 1..=spec.layers {
        assert_eq!(
            dims(&format!("blk.{b}.ffn_gate_exps.weight")),
            Some(vec![h, f_exp, e])
        );
        assert_eq!(dims(&format!("blk.{b}.exp_probs_b.bias")), Some(vec![e]));
        assert_eq!(
            dims(&format!("blk.{b}.ffn_up_shexp.weight")),
            Some(vec![h, f_exp])
        );
    }
    let m = spec.layers;
    let vocab = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len() as u64,
        other => panic!("tokens: {other:?}"),
    };
    assert_eq!(
        dims(&format!("blk.{m}.nextn.eh_proj.weight")),
        Some(vec![2 * h, h])
    );
    assert_eq!(dims(&format!("blk.{m}.nextn.enorm.weight")), Some(vec![h]));
    assert_eq!(dims(&format!("blk.{m}.nextn.hnorm.weight")), Some(vec![h]));
    assert_eq!(
        dims(&format!("blk.{m}.nextn.embed_tokens.weight")),
        Some(vec![h, vocab])
    );
    assert_eq!(
        dims(&format!("blk.{m}.nextn.shared_head_head.weight")),
        Some(vec![h, vocab])
    );
    assert_eq!(
        dims(&format!("blk.{m}.nextn.shared_head_norm.weight")),
        Some(vec![h])
    );
    assert!(g.tensors().iter().all(|t| !t.name.contains(".4.")));

    // _set_vocab_glm: eos and pad from the files, then bos [gMASK], eot <|user|>, unk
    // <|endoftext|>, eom <|observation|>, in gguf-py's order.
    let tk = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let id = |s: &str| tk.token_to_id(s).unwrap();
    let special: Vec<(&str, u32)> = md
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id"))
        .map(|(k, v)| match v {
            Value::U32(n) => (k, *n),
            other => panic!("{k}: {other:?}"),
        })
        .collect();
    assert_eq!(
        special,
        [
            ("tokenizer.ggml.eos_token_id", id("<|endoftext|>")),
            ("tokenizer.ggml.padding_token_id", id("<|endoftext|>")),
            ("tokenizer.ggml.bos_token_id", id("[gMASK]")),
            ("tokenizer.ggml.eot_token_id", id("<|user|>")),
            ("tokenizer.ggml.unknown_token_id", id("<|endoftext|>")),
            ("tokenizer.ggml.eom_token_id", id("<|observation|>")),
        ]
    );
    assert_eq!(
        md.get("tokenizer.ggml.model"),
        Some(&Value::Str("gpt2".into()))
    );
    assert!(matches!(
        md.get("tokenizer.ggml.merges"),
        Some(Value::Array(Array::Str(m))) if !m.is_empty()
    ));
}

/// convert's `_set_vocab_glm` stops (KeyError) when the tokenizer has no `[gMASK]`; kiln
/// stops too, with one line naming the token and the file, before any output.
#[test]
fn glm4moe_without_gmask_is_an_error_before_any_output() {
    let dir = checkpoint("no-gmask");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("[gMASK]", "[gMASK2]")).unwrap();
    }
    let msg = q8_0_error(&dir, &tmp().join("glm4moe-no-gmask.gguf"));
    assert!(
        msg.contains("[gMASK]") && msg.contains("tokenizer.json"),
        "{msg}"
    );
}

/// The logits comparison in `glm4moe_matches_reference_and_llama_quantize` sees what it
/// checks: llama.cpp's logits on kiln's file agree with the reference forward pass, and a
/// reference told to rotate whole heads, not to scale the routed experts' weights, or not to
/// renormalise them disagrees by far more than that test's tolerance.
#[test]
fn glm4moe_logits_comparison_sees_partial_rotary_and_routing() {
    use crate::common::reference::reference_logits;
    let dir = checkpoint("sensitivity");
    let (ours, tokens) = f32_logits(&dir, &tmp().join("glm4moe-sensitivity-F32.gguf"));
    let (d, scale) = logits_gap(&ours, &reference_logits(&dir, &tokens).unwrap());
    assert!(d < 2e-3 * scale, "as converted: {d} at scale {scale}");
    for (key, value) in [
        ("partial_rotary_factor", serde_json::json!(1.0)),
        ("routed_scaling_factor", serde_json::json!(1.0)),
        ("norm_topk_prob", serde_json::json!(false)),
    ] {
        let edited = fresh_checkpoint(&spec(), tmp().join(format!("glm4moe-sensitivity-{key}")));
        let path = edited.join("config.json");
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(&path, cfg.to_string()).unwrap();
        let (d, scale) = logits_gap(&ours, &reference_logits(&edited, &tokens).unwrap());
        assert!(
            d > 2e-2 * scale,
            "{key} changed, yet the reference is within {d} of llama.cpp (scale {scale})"
        );
        let _ = std::fs::remove_dir_all(&edited);
    }
}

/// Requantizing kiln's f32 GLM-4.5 GGUF (MTP block included, checked against the glm4moe
/// loader's shapes on the way in) gives llama-quantize's file, tensor for tensor and key for
/// key.
#[test]
fn glm4moe_gguf_requantizes_like_llama_quantize() {
    requantizes_like_llama_quantize(&checkpoint("requant"), "glm4moe-requant", FileType::Q4_K_M);
}
