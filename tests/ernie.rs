//! ERNIE 4.5 MoE (`Ernie4_5_MoeForCausalLM`): the keys, names and tensor order
//! conversion/ernie.py's `Ernie4_5MoeModel` writes for the fixture's config (the logits and
//! every quantized tensor are checked against llama.cpp in
//! `convert_vs_llama::ernie4_5moe_matches_reference_and_llama_quantize`).

use crate::common::fixtures::{
    convert, f32_logits, fresh_checkpoint, logits_gap, q8_0_error, requantizes_like_llama_quantize,
    tokenizer_model,
};
use crate::convert_vs_llama::tmp;
use kiln::gguf::{GgufFile, Value};
use kiln::plan::FileType;
use kiln_fixtures::checkpoint::{default_for, Arch, FixtureSpec, Vocab};
use std::path::PathBuf;

fn spec() -> FixtureSpec {
    default_for(Arch::Ernie45Moe, Vocab::LlamaSpm(tokenizer_model()))
}

fn checkpoint(name: &str) -> PathBuf {
    fresh_checkpoint(&spec(), tmp().join(format!("ernie-{name}")))
}

/// Every `ernie4_5-moe.*` key in gguf-py's order with convert's values (the shared experts'
/// width by convert's `intermediate_size // num_key_value_heads`), no MTP tensor, the score
/// bias as [E, 1], and at the checkpoint's precision each layer's stacked experts in convert's
/// gate, up, down order.
#[test]
fn ernie4_5moe_keys_names_and_order_follow_convert() {
    let spec = spec();
    let dir = checkpoint("keys");
    let out = tmp().join("ernie-keys-BF16.gguf");
    convert(&dir, FileType::BF16, &out);
    let g = GgufFile::open(&out).unwrap();
    let md = g.metadata();
    let a = "ernie4_5-moe";
    let keys: Vec<String> = md
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| k.starts_with(a))
        .collect();
    let want: Vec<String> = [
        "block_count",
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.freq_base",
        "attention.layer_norm_rms_epsilon",
        "attention.key_length",
        "attention.value_length",
        "expert_count",
        "expert_used_count",
        "interleave_moe_layer_step",
        "leading_dense_block_count",
        "expert_feed_forward_length",
        "expert_shared_count",
        "expert_shared_feed_forward_length",
    ]
    .iter()
    .map(|k| format!("{a}.{k}"))
    .collect();
    assert_eq!(keys, want);
    let u = |k: &str| match md.get(&format!("{a}.{k}")) {
        Some(Value::U32(n)) => *n,
        other => panic!("{a}.{k}: {other:?}"),
    };
    let shared = kiln_fixtures::checkpoint::ERNIE_SHARED_EXPERTS as u32;
    assert_eq!(u("block_count"), spec.layers as u32);
    assert_eq!(u("expert_count"), spec.experts as u32);
    assert_eq!(u("expert_used_count"), spec.experts_used as u32);
    assert_eq!(u("interleave_moe_layer_step"), 1);
    assert_eq!(u("leading_dense_block_count"), 1);
    assert_eq!(u("expert_feed_forward_length"), spec.intermediate as u32);
    assert_eq!(u("expert_shared_count"), shared);
    assert_eq!(
        u("feed_forward_length") / spec.kv_heads as u32,
        u("expert_shared_feed_forward_length")
    );
    assert_eq!(
        u("expert_shared_feed_forward_length"),
        shared * spec.intermediate as u32
    );

    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert!(!names.iter().any(|n| n.contains("mtp")), "{names:?}");
    assert!(!names.contains(&"output.weight"), "tied output");
    let dims = |n: &str| {
        g.tensors()
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.dims.clone())
    };
    let e = spec.experts as u64;
    assert_eq!(dims("blk.1.exp_probs_b.bias"), Some(vec![e, 1]));
    assert_eq!(dims("blk.0.ffn_down_exps.weight"), None);
    assert_eq!(
        dims("blk.0.ffn_down.weight"),
        Some(vec![
            u64::from(u("feed_forward_length")),
            spec.hidden as u64
        ])
    );
    for l in 1..spec.layers {
        let at = |t: &str| {
            names
                .iter()
                .position(|n| *n == format!("blk.{l}.{t}.weight"))
                .unwrap_or_else(|| panic!("blk.{l}.{t}"))
        };
        assert_eq!(at("ffn_gate_exps") + 1, at("ffn_up_exps"), "{names:?}");
        assert_eq!(at("ffn_up_exps") + 1, at("ffn_down_exps"), "{names:?}");
        assert_eq!(
            dims(&format!("blk.{l}.ffn_up_shexp.weight")),
            Some(vec![
                spec.hidden as u64,
                u64::from(shared) * spec.intermediate as u64
            ])
        );
    }
}

/// llama.cpp's loader gives every layer from `moe_layer_start_index` on its experts, so a
/// checkpoint interleaving dense and MoE layers (`moe_layer_interval` 2) stops with one line
/// naming the key, before any output.
#[test]
fn ernie4_5moe_interleaved_layers_are_an_error_before_any_output() {
    let dir = checkpoint("interval");
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["moe_layer_interval"] = serde_json::json!(2);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let msg = q8_0_error(&dir, &tmp().join("ernie-interval.gguf"));
    assert!(msg.contains("moe_layer_interval = 2"), "{msg}");
}

/// The logits comparison in `ernie4_5moe_matches_reference_and_llama_quantize` sees what it
/// checks: llama.cpp's logits on kiln's file agree with the reference forward pass, and a
/// reference given another RoPE base or another number of experts per token disagrees by far
/// more than that test's tolerance.
#[test]
fn ernie4_5moe_logits_comparison_sees_rope_and_routing() {
    use crate::common::reference::reference_logits;
    let dir = checkpoint("sensitivity");
    let (ours, tokens) = f32_logits(&dir, &tmp().join("ernie-sensitivity-F32.gguf"));
    let (d, scale) = logits_gap(&ours, &reference_logits(&dir, &tokens).unwrap());
    assert!(d < 2e-3 * scale, "as converted: {d} at scale {scale}");
    for (key, value) in [
        ("rope_theta", serde_json::json!(10000.0)),
        ("moe_k", serde_json::json!(1)),
    ] {
        let path = dir.join("config.json");
        let original = std::fs::read_to_string(&path).unwrap();
        let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();
        cfg[key] = value;
        std::fs::write(&path, cfg.to_string()).unwrap();
        let (d, scale) = logits_gap(&ours, &reference_logits(&dir, &tokens).unwrap());
        std::fs::write(&path, original).unwrap();
        assert!(
            d > 2e-2 * scale,
            "{key} changed, yet the reference is within {d} of llama.cpp (scale {scale})"
        );
    }
}

/// Requantizing kiln's f32 ERNIE GGUF (whose score bias is {E, 1}, as convert writes it) gives
/// llama-quantize's file, where ggml's writer drops the trailing 1.
#[test]
fn ernie4_5moe_gguf_requantizes_like_llama_quantize() {
    requantizes_like_llama_quantize(&checkpoint("requant"), "ernie-requant", FileType::Q8_0);
}
