//! bpe's tests: trained byte-level BPEs, AutoTokenizer's set-up, the pre-tokenizer rules, the
//! llama-hf path, and llama.cpp's own vocab files.

use super::pre::PRE_REGEXES;
use super::*;
use crate::gguf::Value;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};
use tokenizers::{DecoderWrapper, ModelWrapper, PostProcessorWrapper, PreTokenizerWrapper};

const SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "A kiln fires clay into stoneware at high temperature.",
    "Tokenizers split text into pieces; merges join frequent pairs.",
    "the the the quick quick fox fox fox dog dog",
    "Hello world! Hello again, world. 12345 67890",
];

/// Trains a small byte-level BPE (deterministic: the corpus and settings are fixed) and
/// saves it as dir/tokenizer.json. Returns the trained vocab size.
fn train_byte_level(dir: &Path) -> usize {
    let mut tok = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
    let bl = ByteLevel::default().add_prefix_space(false);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(bl)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(bl)));
    tok.with_post_processor(Some(PostProcessorWrapper::ByteLevel(bl)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(300)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build()
        .into();
    tok.train(&mut trainer, SENTENCES.iter()).unwrap();
    tok.save(dir.join("tokenizer.json"), true).unwrap();
    tok.get_vocab_size(true)
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Json)) {
    let mut j = read_json(path).unwrap();
    f(&mut j);
    std::fs::write(path, serde_json::to_string(&j).unwrap()).unwrap();
}

fn strs(md: &Metadata, key: &str) -> Vec<String> {
    match md.get(key) {
        Some(Value::Array(Array::Str(v))) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn i32s(md: &Metadata, key: &str) -> Vec<i32> {
    match md.get(key) {
        Some(Value::Array(Array::I32(v))) => v.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn chktxt_and_table() {
    assert_eq!(CHKTXT.chars().count(), 350);
    let h: String = Sha256::digest(CHKTXT.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // sha256 of the Python chktxt string's UTF-8 bytes.
    assert_eq!(
        h,
        "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
    );
    assert_eq!(py_list_str(&[]), "[]");
    assert_eq!(py_list_str(&[1, 22, 333]), "[1, 22, 333]");
    assert_eq!(chkhsh_table().len(), 97);
    assert!(chkhsh_table()
        .iter()
        .all(|(h, n)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) && !n.is_empty()));
    assert_eq!(
        pre_from_hash("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5"),
        Some("llama-bpe")
    );
    // Plain `if` chain in Python: the later duplicate wins.
    assert_eq!(
        pre_from_hash("0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"),
        Some("jina-v2-en")
    );
    assert_eq!(
        pre_from_hash("b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166"),
        Some("olmo")
    );
    assert_eq!(pre_from_hash("00"), None);
}

#[test]
fn trained_byte_level_bpe() {
    let d = tempfile::tempdir().unwrap();
    let n = train_byte_level(d.path());
    assert!(n > 257 && n <= 300, "{n}");
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        json!({"eos_token": "<|endoftext|>", "bos_token": null}).to_string(),
    )
    .unwrap();

    let mut md = Metadata::new();
    let info = crate::tokenizer::write_vocab(
        d.path(),
        crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
        None,
        &mut md,
    )
    .unwrap();
    assert_eq!(info.model, "gpt2");
    assert_eq!(info.pre.as_deref(), Some("gpt-2"));
    assert!(
        info.pre_reason.contains("not in llama.cpp's table")
            && info.pre_reason.contains("ByteLevel"),
        "{}",
        info.pre_reason
    );
    assert_eq!(info.n_tokens, n);
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_eos_token"
        ]
    );
    let tokens = strs(&md, "tokenizer.ggml.tokens");
    let types = i32s(&md, "tokenizer.ggml.token_type");
    // The special token was trained in first: id 0, CONTROL; the rest NORMAL.
    assert_eq!(
        (tokens[0].as_str(), types[0]),
        ("<|endoftext|>", token_type::CONTROL)
    );
    assert!(types[1..].iter().all(|&t| t == token_type::NORMAL));
    assert_eq!(md.get("tokenizer.ggml.eos_token_id"), Some(&Value::U32(0)));

    // Merges in "a b" form, equal to the model's merges in order.
    let merges = strs(&md, "tokenizer.ggml.merges");
    let tj = read_json(&d.path().join("tokenizer.json")).unwrap();
    let want: Vec<String> = tj["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => s.clone(),
            Json::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => panic!(),
        })
        .collect();
    assert!(!merges.is_empty());
    assert_eq!(merges, want);
    assert!(merges.iter().all(|m| m.split(' ').count() == 2));
    // Every merge's result is in the vocab (byte-level strings, "Ġ" for space).
    assert!(merges.iter().any(|m| m.starts_with('Ġ')));

    // The other merges form gives the same metadata.
    let form_pairs = tj["model"]["merges"][0].is_array();
    edit_json(&d.path().join("tokenizer.json"), |j| {
        let m: Vec<Json> = want
            .iter()
            .map(|s| {
                let (a, b) = s.split_once(' ').unwrap();
                if form_pairs {
                    json!(format!("{a} {b}"))
                } else {
                    json!([a, b])
                }
            })
            .collect();
        j["model"]["merges"] = Json::Array(m);
    });
    let mut md2 = Metadata::new();
    crate::tokenizer::write_vocab(
        d.path(),
        crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
        None,
        &mut md2,
    )
    .unwrap();
    assert_eq!(md, md2);

    // Padding to config's vocab_size; llama arch falls through to gpt2 (not a byte-fallback BPE).
    let mut md3 = Metadata::new();
    let info = crate::tokenizer::write_vocab(
        d.path(),
        crate::tokenizer::VocabRecipe::LlamaSetVocab,
        Some(n + 2),
        &mut md3,
    )
    .unwrap();
    assert_eq!(info.model, "gpt2");
    assert!(
        info.pre_reason.contains("LlamaHfVocab does not apply"),
        "{}",
        info.pre_reason
    );
    let tokens = strs(&md3, "tokenizer.ggml.tokens");
    assert_eq!(tokens.len(), n + 2);
    assert_eq!(tokens[n + 1], format!("[PAD{}]", n + 1));
    assert_eq!(
        i32s(&md3, "tokenizer.ggml.token_type")[n],
        token_type::UNUSED
    );

    // vocab_size below the largest id: error naming tokenizer.json.
    let e = format!(
        "{:#}",
        crate::tokenizer::write_vocab(
            d.path(),
            crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
            Some(10),
            &mut Metadata::new()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size"),
        "{e}"
    );
}

/// AutoTokenizer set-up: Llama tokenizer classes rebuild the post-processor (BOS in the
/// chkhsh encoding), tokenizer_config's added_tokens_decoder adds tokens, and non-special
/// added tokens become USER_DEFINED with ▁ read as a space.
#[test]
fn auto_tokenizer_setup() {
    let d = tempfile::tempdir().unwrap();
    let n = train_byte_level(d.path());
    let tc = d.path().join("tokenizer_config.json");
    std::fs::write(&tc, json!({"bos_token": "<|endoftext|>"}).to_string()).unwrap();
    let (_, ids) = chkhsh(&HfTokenizer::load(d.path()).unwrap().tok).unwrap();
    assert_ne!(ids[0], 0);
    std::fs::write(
        &tc,
        json!({
            "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<|endoftext|>", "add_bos_token": true,
            "added_tokens_decoder": {
                (n).to_string(): {"content": "\u{2581}hi", "special": false, "normalized": false},
                (n + 1).to_string(): {"content": "<|im_end|>", "special": false, "normalized": false}
            }
        })
        .to_string(),
    )
    .unwrap();
    let hf = HfTokenizer::load(d.path()).unwrap();
    assert_eq!(hf.class, TokClass::Llama);
    let (_, ids) = chkhsh(&hf.tok).unwrap();
    assert_eq!(ids[0], 0, "BOS from the rebuilt post-processor");
    let mut w = Vec::new();
    let (tokens, types) = vocab_base(&hf, None, &mut w).unwrap();
    assert_eq!(tokens.len(), n + 2);
    assert_eq!(
        (tokens[n].as_str(), types[n]),
        (" hi", token_type::USER_DEFINED)
    );
    // Not special, but looks special.
    assert_eq!(
        (tokens[n + 1].as_str(), types[n + 1]),
        ("<|im_end|>", token_type::CONTROL)
    );
}

#[test]
fn unknown_pre_tokenizer_fails_naming_file() {
    let d = tempfile::tempdir().unwrap();
    train_byte_level(d.path());
    edit_json(&d.path().join("tokenizer.json"), |j| {
        j["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\d+|\\w+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]});
    });
    let mut md = Metadata::new();
    let e = format!(
        "{:#}",
        crate::tokenizer::write_vocab(
            d.path(),
            crate::tokenizer::VocabRecipe::SentencePieceElseBpe,
            None,
            &mut md
        )
        .unwrap_err()
    );
    assert!(e.contains("tokenizer.json"), "{e}");
    assert!(
        e.contains("not recognized") && e.contains("Split(Regex"),
        "{e}"
    );
}

#[test]
fn definition_rules() {
    let llama3 = PRE_REGEXES[0].1;
    let split_bl = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    };
    let tj = |pt: Json, im: bool, norm: Json| json!({"normalizer": norm, "pre_tokenizer": pt, "model": {"type": "BPE", "ignore_merges": im}});
    assert_eq!(
        pre_from_definition(&tj(split_bl(llama3), true, Json::Null))
            .unwrap()
            .0,
        "llama-bpe"
    );
    assert_eq!(
        pre_from_definition(&tj(
            split_bl(PRE_REGEXES[1].1),
            false,
            json!({"type": "NFC"})
        ))
        .unwrap()
        .0,
        "qwen2"
    );
    assert_eq!(
        pre_from_definition(&tj(split_bl(PRE_REGEXES[2].1), false, Json::Null))
            .unwrap()
            .0,
        "qwen35"
    );
    let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    assert_eq!(
        pre_from_definition(&tj(gpt2.clone(), false, Json::Null))
            .unwrap()
            .0,
        "gpt-2"
    );
    // Mismatches are errors that say what was found.
    let e = pre_from_definition(&tj(split_bl(llama3), false, Json::Null))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ignore_merges"), "{e}");
    let e = pre_from_definition(&tj(gpt2, false, json!({"type": "Lowercase"})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Lowercase"), "{e}");
    let e = pre_from_definition(&tj(
        json!({"type": "Metaspace", "replacement": "▁"}),
        false,
        Json::Null,
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("Metaspace"), "{e}");
    let e = pre_from_definition(&json!({"model": {"type": "Unigram"}}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Unigram"), "{e}");
}

/// A Llama 2 style byte-fallback BPE tokenizer.json goes through `_set_vocab_llama_hf`.
#[test]
fn llama_hf_path() {
    let d = tempfile::tempdir().unwrap();
    let mut vocab = serde_json::Map::new();
    for (i, t) in [
        "<unk>",
        "<s>",
        "</s>",
        "<0x0A>",
        "\u{2581}a",
        "b",
        "\u{2581}ab",
    ]
    .iter()
    .enumerate()
    {
        vocab.insert(t.to_string(), json!(i));
    }
    let tj = json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 7, "content": "<tool>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
        ],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": ["▁a b"]}
    });
    std::fs::write(d.path().join("tokenizer.json"), tj.to_string()).unwrap();
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        json!({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true, "add_eos_token": false}).to_string(),
    )
    .unwrap();
    let mut md = Metadata::new();
    let info = crate::tokenizer::write_vocab(
        d.path(),
        crate::tokenizer::VocabRecipe::LlamaSetVocab,
        Some(32000),
        &mut md,
    )
    .unwrap();
    assert_eq!(
        (info.model.as_str(), info.pre.as_deref(), info.n_tokens),
        ("llama", Some("default"), 8)
    );
    assert_eq!(
        strs(&md, "tokenizer.ggml.tokens"),
        [
            "<unk>",
            "<s>",
            "</s>",
            "<0x0A>",
            "\u{2581}a",
            "b",
            "\u{2581}ab",
            "<tool>"
        ]
    );
    assert_eq!(
        i32s(&md, "tokenizer.ggml.token_type"),
        [3, 3, 3, 6, 1, 1, 1, 4]
    );
    assert_eq!(
        md.get("tokenizer.ggml.scores"),
        Some(&Value::Array(Array::F32(vec![-1000.0; 8])))
    );
    assert_eq!(md.get("tokenizer.ggml.bos_token_id"), Some(&Value::U32(1)));
    assert_eq!(
        md.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
}

/// Rebuilds a tokenizer.json from one of llama.cpp's ggml-vocab-*.gguf files (tokens,
/// merges, CONTROL tokens as special added tokens) with the given pre-tokenizer set-up.
fn rebuild(
    models: &Path,
    name: &str,
    dir: &Path,
    pre_tokenizer: Json,
    normalizer: Json,
    post: Json,
    ignore_merges: bool,
) {
    let f = crate::gguf::GgufFile::open(&models.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
    let md = f.metadata();
    let tokens = strs(md, "tokenizer.ggml.tokens");
    let types = i32s(md, "tokenizer.ggml.token_type");
    let merges = strs(md, "tokenizer.ggml.merges");
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        match *ty {
            token_type::NORMAL => {
                vocab.insert(t.clone(), json!(i));
            }
            token_type::CONTROL => {
                vocab.insert(t.clone(), json!(i));
                added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }
            _ => {}
        }
    }
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
}

/// llama.cpp's expected tokenizations (ggml-vocab-*.gguf.inp/.out, made with the HF
/// tokenizers, no special tokens) against the rebuilt tokenizer.json.
fn check_inp_out(models: &Path, name: &str, tok: &Tokenizer) -> usize {
    let inp = std::fs::read_to_string(models.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(models.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - 1];
    let outs: Vec<&str> = out.lines().collect();
    assert_eq!(texts.len(), outs.len());
    for (t, o) in texts.iter().zip(&outs) {
        let want: Vec<u32> = o.split_whitespace().map(|x| x.parse().unwrap()).collect();
        let got = tok.encode(*t, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{name}: {t:?}");
    }
    texts.len()
}

/// Cross-check against llama.cpp's own vocab files: rebuilt GPT-2, Llama 3 and Qwen2
/// tokenizer.json files tokenize llama.cpp's test texts as expected, and their chkhsh maps
/// to the pre-tokenizer those files carry.
#[test]
fn chkhsh_matches_llama_cpp_vocabs() {
    let models = crate::tokenizer::llama_cpp_vocabs();
    let bl = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |i: usize| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_REGEXES[i].1}, "behavior": "Isolated", "invert": false}, bl(false)]})
    };
    let bos_template = json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}}});
    let cases = [
        ("gpt-2", bl(true), Json::Null, bl(true), false),
        ("llama-bpe", split(0), Json::Null, bos_template, true),
        ("qwen2", split(1), json!({"type": "NFC"}), bl(false), false),
    ];
    for (name, pt, norm, post, im) in cases {
        let d = tempfile::tempdir().unwrap();
        rebuild(&models, name, d.path(), pt, norm, post, im);
        let hf = HfTokenizer::load(d.path()).unwrap();
        let n = check_inp_out(&models, name, &hf.tok);
        let (pre, reason) = hf.detect_pre().unwrap();
        eprintln!("{name}: {n} llama.cpp test texts tokenized alike; pre {pre:?}: {reason}");
        assert_eq!(pre, name, "{reason}");
        assert!(reason.contains("llama.cpp's"), "{reason}");
        assert!(!reason.contains("not in"), "hash did not match: {reason}");
    }
}
