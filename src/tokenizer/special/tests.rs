//! special's tests: Llama 2, Qwen2 and Llama 3 layouts, config.json-only vocabs, errors and the
//! merges.txt fallback.

use super::*;
use crate::gguf::{Array, Metadata, Value};
use serde_json::json;

fn write(dir: &Path, name: &str, v: &Json) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn keys(md: &Metadata) -> Vec<String> {
    md.iter().map(|(k, _)| k.to_string()).collect()
}

/// The Llama 2 HF layout: TemplateProcessing with <s>, AddedToken dicts in tokenizer_config.
#[test]
fn llama2_hf_layout() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "tokenizer.json",
        &json!({
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true}
            ],
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]},
            "model": {"type": "BPE", "merges": ["a b"]}
        }),
    );
    write(
        d.path(),
        "tokenizer_config.json",
        &json!({
            "add_bos_token": true, "add_eos_token": false,
            "bos_token": {"__type": "AddedToken", "content": "<s>"},
            "eos_token": {"__type": "AddedToken", "content": "</s>"},
            "unk_token": {"__type": "AddedToken", "content": "<unk>"},
            "pad_token": null,
            "chat_template": "{{ bos_token }}"
        }),
    );
    write(
        d.path(),
        "config.json",
        &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
    );
    let sv = SpecialVocab::load(d.path(), false, None, Some(32000)).unwrap();
    assert_eq!(
        sv.special_token_ids,
        vec![
            ("bos".into(), 1),
            ("eos".into(), 2),
            ("unk".into(), 0),
            ("cls".into(), 1),
            ("pad".into(), 0)
        ]
    );
    assert_eq!(
        sv.add_special_token,
        vec![
            ("bos".into(), true),
            ("sep".into(), false),
            ("eos".into(), false)
        ]
    );
    let mut md = Metadata::new();
    let mut w = Vec::new();
    sv.add_to(&mut md, &mut w);
    assert_eq!(
        keys(&md),
        [
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_sep_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template"
        ]
    );
    assert!(w
        .iter()
        .any(|w| w.contains("No handler for special token type cls")));
}

/// Qwen2-like: ByteLevel post-processor, null bos_token, ids from config.json, pair merges.
#[test]
fn qwen2_layout_and_pair_merges() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "tokenizer.json",
        &json!({
            "added_tokens": [{"id": 5, "content": "<|endoftext|>", "special": true}, {"id": 6, "content": "<|im_end|>", "special": true}],
            "normalizer": {"type": "NFC"},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false},
            "model": {"type": "BPE", "merges": [["Ġ", "t"], ["a b", "c"]]}
        }),
    );
    write(
        d.path(),
        "tokenizer_config.json",
        &json!({"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_prefix_space": false}),
    );
    std::fs::write(d.path().join("chat_template.jinja"), "{{ x }}\r\n").unwrap();
    write(
        d.path(),
        "config.json",
        &json!({"bos_token_id": 5, "eos_token_id": 6}),
    );
    let sv = SpecialVocab::load(d.path(), true, None, None).unwrap();
    assert_eq!(sv.merges, vec!["Ġ t".to_string(), "aĠb c".to_string()]);
    assert_eq!(
        sv.special_token_ids,
        vec![("eos".into(), 6), ("pad".into(), 5), ("bos".into(), 5)]
    );
    let mut md = Metadata::new();
    sv.add_to(&mut md, &mut Vec::new());
    assert_eq!(
        keys(&md),
        [
            "tokenizer.ggml.merges",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token",
            "tokenizer.chat_template"
        ]
    );
    assert_eq!(
        md.get("tokenizer.chat_template"),
        Some(&Value::Str("{{ x }}\n".into()))
    );
    assert_eq!(
        md.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(false))
    );
}

#[test]
fn llama3_template_eos_and_named_templates() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "tokenizer.json",
        &json!({
            "added_tokens": [{"id": 10, "content": "<|begin_of_text|>", "special": true}],
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "ByteLevel"},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]}
            ]},
            "model": {"type": "BPE", "merges": []}
        }),
    );
    write(
        d.path(),
        "tokenizer_config.json",
        &json!({"bos_token": "<|begin_of_text|>", "chat_template": [
            {"name": "tool use", "template": "T"}, {"name": "default", "template": "D"}, {"name": "rag", "template": null}
        ]}),
    );
    let sv = SpecialVocab::load(d.path(), true, None, None).unwrap();
    // ByteLevel setdefault(False) first, then TemplateProcessing overrides bos in place.
    assert_eq!(
        sv.add_special_token,
        vec![
            ("bos".into(), true),
            ("eos".into(), false),
            ("sep".into(), false)
        ]
    );
    let mut md = Metadata::new();
    let mut w = Vec::new();
    sv.add_to(&mut md, &mut w);
    assert!(w.iter().any(|w| w.contains("no merges found")));
    assert_eq!(
        md.get("tokenizer.chat_template.tool_use"),
        Some(&Value::Str("T".into()))
    );
    assert_eq!(
        md.get("tokenizer.chat_templates"),
        Some(&Value::Array(Array::Str(vec!["tool_use".into()])))
    );
    assert_eq!(
        md.get("tokenizer.chat_template"),
        Some(&Value::Str("D".into()))
    );
}

#[test]
fn config_only_and_errors() {
    let d = tempfile::tempdir().unwrap();
    // No tokenizer_config: ids come from config.json (text_config too), nothing else.
    write(
        d.path(),
        "config.json",
        &json!({"text_config": {"eos_token_id": 3}, "bos_token_id": 2, "pad_token_id": 99}),
    );
    let sv = SpecialVocab::load(d.path(), false, None, Some(10)).unwrap();
    assert_eq!(
        sv.special_token_ids,
        vec![("bos".into(), 2), ("eos".into(), 3)]
    );
    assert!(sv
        .warnings
        .iter()
        .any(|w| w.contains("pad, id 99 out of range")));
    // Negative ids are an error naming the file, as in gguf-py.
    write(d.path(), "config.json", &json!({"pad_token_id": -1}));
    let e = format!(
        "{:#}",
        SpecialVocab::load(d.path(), false, None, None).unwrap_err()
    );
    assert!(e.contains("config.json") && e.contains("pad"), "{e}");
    // Broken JSON names the file.
    std::fs::write(d.path().join("config.json"), "{").unwrap();
    let e = format!(
        "{:#}",
        SpecialVocab::load(d.path(), false, None, None).unwrap_err()
    );
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn merges_txt_fallback() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("merges.txt"),
        "#version: 0.2\nĠ t\n\nh e\nbad line x\n",
    )
    .unwrap();
    let sv = SpecialVocab::load(d.path(), true, None, None).unwrap();
    assert_eq!(sv.merges, vec!["Ġ t".to_string(), "h e".to_string()]);
    assert!(sv.warnings.iter().any(|w| w.contains("Line 5")));
}
