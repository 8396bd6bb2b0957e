//! Self-checks of the fixture checkpoints (`kiln::fixture`) and of the independent reference
//! forward pass (`tests/common/reference.rs`) that llama.cpp's logits are compared with.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::common::reference::{
    apply_rope, reference_logits, reference_logits_with, Options, ReferenceModel, Rope,
};
use kiln_fixtures::checkpoint::{
    bpe_default, default_for, llama_spm_default, write_checkpoint, Arch, FixtureSpec, Vocab,
    ENGLISH_TEXT, GEMMA_SLIDING_WINDOW,
};
use serde_json::Value;

/// The Llama 2 SentencePiece model: the repository's `fixtures/` copy, else the one in
/// `../shared/fixtures/`.
fn llama2_tokenizer() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("fixtures/llama2-tokenizer.model"),
        root.join("../shared/fixtures/llama2-tokenizer.model"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no Llama 2 tokenizer.model in {candidates:?}"))
        .clone()
}

fn write(spec: &FixtureSpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(spec, dir.path()).unwrap();
    dir
}

/// Every file of a folder, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// A spec for each architecture: the Llama and Gemma ones with the SentencePiece tokenizer,
/// the Qwen ones with a trained BPE, plus Llama and Gemma 3 with a BPE.
fn every_arch() -> Vec<FixtureSpec> {
    let spm = Vocab::LlamaSpm(llama2_tokenizer());
    let bpe = Vocab::TrainedBpe { size: 1024 };
    vec![
        default_for(Arch::Llama, spm.clone()),
        default_for(Arch::Qwen2, bpe.clone()),
        default_for(Arch::Qwen3, bpe.clone()),
        default_for(Arch::Gemma2, spm.clone()),
        default_for(Arch::Gemma3, spm),
        default_for(Arch::Llama, bpe.clone()),
        default_for(Arch::Gemma3, bpe),
    ]
}

/// Tokens from the tokenizer's ordinary range, spread over the vocabulary.
fn some_tokens(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut rng = kiln_fixtures::synth::SplitMix64(0x746f_6b65_6e73 ^ salt);
    (0..n)
        .map(|_| (10 + rng.next_u64() % (vocab as u64 * 9 / 10 - 10)) as u32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn fixtures_are_byte_deterministic() {
    let specs = [
        llama_spm_default(llama2_tokenizer()),
        bpe_default(),
        default_for(Arch::Gemma3, Vocab::TrainedBpe { size: 700 }),
    ];
    for spec in specs {
        let a = files(write(&spec).path());
        let b = files(write(&spec).path());
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{:?}",
            spec.arch
        );
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{:?}: {name} differs between runs",
                spec.arch
            );
        }
        // Another seed changes the weights and nothing else.
        let other = files(
            write(&FixtureSpec {
                seed: spec.seed + 1,
                ..spec.clone()
            })
            .path(),
        );
        for (name, bytes) in &a {
            let same = bytes == &other[name];
            assert_eq!(
                same,
                !name.ends_with(".safetensors"),
                "{:?}: {name} with another seed",
                spec.arch
            );
        }
    }
}

#[test]
fn llama_spm_checkpoint_looks_like_hugging_face() {
    let dir = write(&llama_spm_default(llama2_tokenizer()));
    let names: Vec<String> = files(dir.path()).into_keys().collect();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "special_tokens_map.json",
            "tokenizer.model",
            "tokenizer_config.json",
        ]
    );
    let c = config(dir.path());
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["vocab_size"], 32000);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["hidden_size"], 256);
    assert_eq!(c["intermediate_size"], 640);
    assert_eq!(c["num_key_value_heads"], 4);
    assert_eq!(c["torch_dtype"], "bfloat16");
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(
        fs::read(dir.path().join("tokenizer.model")).unwrap(),
        fs::read(llama2_tokenizer()).unwrap()
    );
    let tc: Value = serde_json::from_str(
        &fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(tc["bos_token"], "<s>");
    assert_eq!(tc["eos_token"], "</s>");
    assert_eq!(tc["add_bos_token"], true);
    assert!(tc["chat_template"].as_str().unwrap().contains("[INST]"));

    // The index names every tensor once, in the shard that holds it, and the total size.
    let index: Value = serde_json::from_str(
        &fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut total = 0;
    let mut seen = 0;
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let bytes = fs::read(dir.path().join(shard)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(!st.names().is_empty());
        for (name, view) in st.tensors() {
            assert_eq!(map[&name], shard);
            assert_eq!(view.dtype(), safetensors::Dtype::BF16);
            total += view.data().len();
            seen += 1;
        }
    }
    assert_eq!(seen, map.len());
    assert_eq!(index["metadata"]["total_size"], total);
    assert!(map.contains_key("lm_head.weight"));
    assert!(map.contains_key("model.layers.3.mlp.down_proj.weight"));
}

#[test]
fn bpe_checkpoint_has_a_working_tokenizer() {
    let dir = write(&bpe_default());
    let c = config(dir.path());
    assert_eq!(c["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(c["tie_word_embeddings"], true);
    assert!(!dir.path().join("tokenizer.model").exists());
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    // 1024 trained tokens and 3 specials, padded to a multiple of 64 in config.json.
    assert_eq!(tok.get_vocab_size(true), 1027);
    assert_eq!(c["vocab_size"], 1088);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(1024));
    assert_eq!(c["eos_token_id"], tok.token_to_id("<|im_end|>").unwrap());
    assert_eq!(c["bos_token_id"], 1024);
    let text = &ENGLISH_TEXT[..600];
    let enc = tok.encode(text, false).unwrap();
    assert!(
        enc.get_ids().len() < text.len() / 2,
        "the merges compress English text"
    );
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    // Unseen text still round-trips through the byte alphabet.
    let odd = "Ünïcödé 123456 ✓ tabs\tand\nnewlines";
    let enc = tok.encode(odd, false).unwrap();
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), odd);

    // A Llama-flavoured BPE adds its bos token.
    let dir = write(&default_for(Arch::Llama, Vocab::TrainedBpe { size: 512 }));
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let bos = tok.token_to_id("<|begin_of_text|>").unwrap();
    assert_eq!(config(dir.path())["bos_token_id"], bos);
    assert_eq!(tok.encode("hello", true).unwrap().get_ids()[0], bos);
}

#[test]
fn every_arch_gives_finite_varied_logits() {
    for spec in every_arch() {
        let dir = write(&spec);
        let vocab = config(dir.path())["vocab_size"].as_u64().unwrap() as usize;
        let tokens = some_tokens(12, vocab, 1);
        let logits = reference_logits(dir.path(), &tokens).unwrap();
        let what = format!("{:?} {:?}", spec.arch, spec.vocab);
        assert_eq!(logits.len(), tokens.len(), "{what}");
        let mut argmaxes = Vec::new();
        for row in &logits {
            assert_eq!(row.len(), vocab, "{what}");
            assert!(
                row.iter().all(|v| v.is_finite()),
                "{what}: non-finite logit"
            );
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / vocab as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / vocab as f64;
            let std = var.sqrt();
            assert!(
                (0.3..30.0).contains(&std),
                "{what}: logits' standard deviation {std}"
            );
            argmaxes.push(argmax(row));
        }
        argmaxes.sort();
        argmaxes.dedup();
        assert!(argmaxes.len() >= 3, "{what}: top tokens {argmaxes:?}");
        for w in logits.windows(2) {
            assert!(
                max_abs_diff(&w[0], &w[1]) > 1e-2,
                "{what}: two positions alike"
            );
        }
    }
}

#[test]
fn logits_are_causal() {
    for spec in every_arch().into_iter().take(5) {
        let dir = write(&spec);
        let model = ReferenceModel::load(dir.path()).unwrap();
        let vocab = model.config.vocab;
        let a = some_tokens(10, vocab, 2);
        let mut b = a.clone();
        for t in &mut b[6..] {
            *t = (*t + 17) % vocab as u32;
        }
        let la = model.logits(&a).unwrap();
        let lb = model.logits(&b).unwrap();
        for i in 0..6 {
            assert!(
                la[i] == lb[i],
                "{:?}: position {i} saw a later token",
                spec.arch
            );
        }
        for i in 6..10 {
            assert!(
                max_abs_diff(&la[i], &lb[i]) > 1e-3,
                "{:?}: position {i}",
                spec.arch
            );
        }
    }
}

#[test]
fn rope_uses_the_rotate_half_layout() {
    // Dimension j pairs with j + d/2 and turns by pos * theta^(-2j/d).
    let rope = Rope {
        theta: 10000.0,
        factor: 1.0,
    };
    let d = 8;
    let mut e0 = vec![0f32; d];
    e0[0] = 1.0;
    apply_rope(&mut e0, 3, rope);
    let want = |x: f64| x as f32;
    assert_eq!(e0[0], want(3f64.cos()));
    assert_eq!(e0[4], want(3f64.sin()));
    assert!(e0
        .iter()
        .enumerate()
        .all(|(i, v)| i == 0 || i == 4 || *v == 0.0));
    let mut e5 = vec![0f32; d];
    e5[5] = 1.0; // pairs with dimension 1, frequency 10000^(-2/8) = 0.1
    apply_rope(&mut e5, 3, rope);
    assert!((e5[5] - 0.3f32.cos()).abs() < 1e-6);
    assert!((e5[1] + 0.3f32.sin()).abs() < 1e-6);
    // Linear scaling divides the frequency.
    let mut e0 = vec![0f32; d];
    e0[0] = 1.0;
    apply_rope(
        &mut e0,
        3,
        Rope {
            theta: 10000.0,
            factor: 4.0,
        },
    );
    assert!((e0[0] - 0.75f32.cos()).abs() < 1e-6);
    // Position 0 is the identity.
    let mut v: Vec<f32> = (0..d).map(|i| i as f32 - 3.5).collect();
    let orig = v.clone();
    apply_rope(&mut v, 0, rope);
    assert_eq!(v, orig);
}

#[test]
fn rope_makes_the_model_position_dependent() {
    // One layer: deeper, the causal mask alone makes order visible (position 1 sees token 0
    // but not the reverse), so only a one-layer model is order-blind without RoPE.
    for spec in every_arch().into_iter().take(5) {
        let spec = FixtureSpec { layers: 1, ..spec };
        let dir = write(&spec);
        let model = ReferenceModel::load(dir.path()).unwrap();
        let what = format!("{:?}", spec.arch);
        let a = some_tokens(5, model.config.vocab, 3);
        let mut b = a.clone();
        b.swap(0, 1);
        let last = a.len() - 1;
        // With RoPE, the order of earlier tokens matters to the last position.
        let with = |t: &[u32], o: &Options| model.logits_with(t, o).unwrap()[last].clone();
        let on = Options::default();
        assert!(
            max_abs_diff(&with(&a, &on), &with(&b, &on)) > 1e-2,
            "{what}"
        );
        // Without it, attention is blind to order: the last position sees the same set.
        let off = Options {
            rope: false,
            ..Options::default()
        };
        assert!(
            max_abs_diff(&with(&a, &off), &with(&b, &off)) < 1e-4,
            "{what}"
        );
        // RoPE is relative: shifting every position leaves the logits (almost) unchanged.
        let shifted = Options {
            position_offset: 37,
            ..Options::default()
        };
        let la = model.logits(&a).unwrap();
        let ls = model.logits_with(&a, &shifted).unwrap();
        for (x, y) in la.iter().zip(&ls) {
            assert!(max_abs_diff(x, y) < 2e-3, "{what}: {}", max_abs_diff(x, y));
        }
    }
}

#[test]
fn sliding_window_sees_exactly_w_positions() {
    // Gemma 3 with every layer sliding: a token reaches (W - 1) positions further per layer,
    // so with L layers position i depends on token 0 exactly when i <= L * (W - 1).
    let spec = FixtureSpec {
        layers: 3,
        ..default_for(Arch::Gemma3, Vocab::TrainedBpe { size: 512 })
    };
    let dir = write(&spec);
    let path = dir.path().join("config.json");
    let mut c = config(dir.path());
    c["layer_types"] = serde_json::json!(vec!["sliding_attention"; spec.layers]);
    fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    let model = ReferenceModel::load(dir.path()).unwrap();
    assert!(model
        .config
        .window
        .iter()
        .all(|w| *w == Some(GEMMA_SLIDING_WINDOW)));
    let reach = spec.layers * (GEMMA_SLIDING_WINDOW - 1);
    let a = some_tokens(reach + 6, model.config.vocab, 4);
    let mut b = a.clone();
    b[0] = (b[0] + 1) % model.config.vocab as u32;
    let la = model.logits(&a).unwrap();
    let lb = model.logits(&b).unwrap();
    for i in 0..a.len() {
        let changed = la[i] != lb[i];
        assert_eq!(changed, i <= reach, "position {i}, reach {reach}");
    }

    // With the fixture's real layout (5 sliding, 1 global, local and global RoPE bases),
    // the global layer sees everything.
    let dir = write(&default_for(Arch::Gemma3, Vocab::TrainedBpe { size: 512 }));
    let model = ReferenceModel::load(dir.path()).unwrap();
    let c = &model.config;
    assert_eq!(c.window[..5], [Some(GEMMA_SLIDING_WINDOW); 5]);
    assert_eq!(c.window[5], None);
    assert_eq!(c.rope[0].theta, 10_000.0);
    assert_eq!(c.rope[5].theta, 1_000_000.0);
    let la = model.logits(&a).unwrap();
    let lb = model.logits(&b).unwrap();
    assert!(la.last() != lb.last());
}

#[test]
fn sharding_does_not_change_logits() {
    let one = FixtureSpec {
        layers: 2,
        shards: 1,
        ..llama_spm_default(llama2_tokenizer())
    };
    let three = FixtureSpec {
        shards: 3,
        ..one.clone()
    };
    let d1 = write(&one);
    let d3 = write(&three);
    assert!(d3.path().join("model-00003-of-00003.safetensors").is_file());
    assert!(!d1.path().join("model.safetensors.index.json").exists());
    let tokens = some_tokens(6, 32000, 5);
    assert_eq!(
        reference_logits(d1.path(), &tokens).unwrap(),
        reference_logits(d3.path(), &tokens).unwrap()
    );
}

#[test]
fn gemma_embedding_scale_can_follow_the_model_dtype() {
    // hidden 320: sqrt = 17.8885 is 17.875 in bf16; hidden 256: 16 is exact.
    for (hidden, differs) in [(320, true), (256, false)] {
        let spec = FixtureSpec {
            hidden,
            layers: 1,
            ..default_for(Arch::Gemma3, Vocab::TrainedBpe { size: 400 })
        };
        let dir = write(&spec);
        let tokens = [5, 300, 77];
        let f32_scale = reference_logits(dir.path(), &tokens).unwrap();
        let bf16_scale = reference_logits_with(
            dir.path(),
            &tokens,
            &Options {
                embed_scale_in_model_dtype: true,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(f32_scale != bf16_scale, differs, "hidden {hidden}");
    }
}

#[test]
fn reference_rejects_what_it_does_not_model() {
    let dir = write(&default_for(Arch::Qwen3, Vocab::TrainedBpe { size: 400 }));
    let path = dir.path().join("config.json");
    let original = fs::read_to_string(&path).unwrap();
    let mut c: Value = serde_json::from_str(&original).unwrap();
    c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    fs::write(&path, c.to_string()).unwrap();
    let err = reference_logits(dir.path(), &[1, 2]).unwrap_err();
    assert!(format!("{err:#}").contains("yarn"), "{err:#}");
    // A missing tensor is an error too.
    fs::write(&path, original).unwrap();
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    c["tie_word_embeddings"] = serde_json::json!(false);
    fs::write(&path, c.to_string()).unwrap();
    let err = reference_logits(dir.path(), &[1, 2]).unwrap_err();
    assert!(format!("{err:#}").contains("lm_head.weight"), "{err:#}");
}
