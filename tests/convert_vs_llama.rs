//! End to end against llama.cpp: kiln converts small deterministic checkpoints; llama.cpp loads
//! every output type and generates; the f32 conversion's logits equal an independent forward
//! pass of the Hugging Face checkpoint; every quantized tensor equals what llama.cpp's own
//! quantizer (`llama_model_quantize`) makes from the same f32 GGUF; tokenization matches.

use crate::common::fixtures::{convert, llama_checkpoint, tokenizer_model};
use crate::common::tensors_of;
use kiln::gguf::checksum::{self, Verdict};
use kiln::gguf::{GgufFile, Value};
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub(crate) fn tmp() -> PathBuf {
    crate::common::module_dir("convert_vs_llama")
}

/// The Llama + SentencePiece fixture (BF16, sharded, GQA, 640-wide FFN rows).
fn llama_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = tmp().join("llama-spm");
        llama_checkpoint(&d);
        d
    })
}

/// The Qwen2 + byte-level BPE fixture.
fn bpe_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = tmp().join("qwen2-bpe");
        let _ = std::fs::remove_dir_all(&d);
        kiln_fixtures::checkpoint::write_checkpoint(&kiln_fixtures::checkpoint::bpe_default(), &d)
            .unwrap();
        d
    })
}

/// The f32 GGUF of the Llama fixture, written once.
pub(crate) fn llama_f32() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let out = tmp().join("llama-F32.gguf");
        convert(llama_dir(), FileType::F32, &out);
        out
    })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn f32_logits_match_an_independent_forward_pass() {
    let model = kiln::llama::load(llama_f32()).unwrap();
    let tokens = kiln::llama::tokenize(&model, "The quick brown fox jumps over the lazy dog", true);
    assert!(tokens.len() > 8);
    let ours = kiln::llama::logits(&model, &tokens).unwrap();
    let reference = crate::common::reference::reference_logits(llama_dir(), &tokens).unwrap();
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.1, "logits are not degenerate ({scale})");
    for (pos, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(a.len(), b.len());
        let d = max_abs_diff(a, b);
        assert!(
            d < 2e-3 * scale.max(1.0),
            "position {pos}: max |llama.cpp - reference| = {d} (logit scale {scale})"
        );
        assert_eq!(
            kiln::llama::argmax(a),
            kiln::llama::argmax(b),
            "position {pos}: top token differs"
        );
    }
}

/// Asserts two GGUF files hold the same tensors (names, shapes, types, bytes) and metadata.
pub(crate) fn assert_same(kiln_file: &Path, llama_file: &Path, what: &str) {
    let a = tensors_of(kiln_file);
    let b = tensors_of(llama_file);
    let names_a: Vec<&String> = a.iter().map(|t| &t.0).collect();
    let names_b: Vec<&String> = b.iter().map(|t| &t.0).collect();
    assert_eq!(names_a, names_b, "{what}: tensor names");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.1, y.1, "{what}: shape of {}", x.0);
        assert_eq!(x.2, y.2, "{what}: type of {}", x.0);
        if x.3 != y.3 {
            let first = x.3.iter().zip(&y.3).position(|(p, q)| p != q);
            panic!(
                "{what}: bytes of {} ({}) differ from llama.cpp's, first at byte {first:?}",
                x.0, x.2
            );
        }
    }
    // kiln's file carries its check and the check holds; apart from the check's keys (which
    // llama.cpp copies from a kiln input, stale), the metadata is llama.cpp's.
    let g = GgufFile::open(kiln_file).unwrap();
    assert!(
        matches!(checksum::verify(&g).unwrap(), Verdict::Ok { .. }),
        "{what}: kiln's checksum"
    );
    let mut ma = g.header.metadata.clone();
    let mut mb = GgufFile::open(llama_file).unwrap().header.metadata;
    checksum::remove(&mut ma);
    checksum::remove(&mut mb);
    for (k, v) in mb.iter() {
        assert_eq!(ma.get(k), Some(v), "{what}: metadata key {k}");
    }
    assert_eq!(ma.len(), mb.len(), "{what}: metadata key count");
}

/// With --no-checksum, from an f32 GGUF without kiln's check, kiln's file is llama-quantize's,
/// byte for byte, for every type.
#[test]
fn without_the_checksum_files_are_byte_identical_to_llama_quantize() {
    let f32_plain = tmp().join("llama-F32-plain.gguf");
    let mut o = Options::new(FileType::F32);
    o.output = Some(f32_plain.clone());
    o.force = true;
    o.checksum = false;
    quantize::execute(&quantize::prepare(llama_dir(), &o).unwrap(), true, false).unwrap();
    for ftype in types_written_without_imatrix() {
        let ours = tmp().join(format!("kiln-plain-{}.gguf", ftype.name()));
        let theirs = tmp().join(format!("llama-plain-{}.gguf", ftype.name()));
        let mut o = Options::new(ftype);
        o.output = Some(ours.clone());
        o.force = true;
        o.checksum = false;
        quantize::execute(&quantize::prepare(&f32_plain, &o).unwrap(), true, false).unwrap();
        kiln::llama::reference_quantize(&f32_plain, &theirs, ftype.id(), &Default::default())
            .unwrap();
        let (a, b) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{ftype}: file sizes");
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        assert_eq!(first, None, "{ftype}: first differing byte");
    }
}

#[test]
fn every_quantized_tensor_equals_llama_quantize_from_the_same_f32_gguf() {
    let f32_file = llama_f32();
    for ftype in types_written_without_imatrix() {
        let ours = tmp().join(format!("kiln-from-f32-{}.gguf", ftype.name()));
        let theirs = tmp().join(format!("llama-from-f32-{}.gguf", ftype.name()));
        convert(f32_file, ftype, &ours);
        kiln::llama::reference_quantize(f32_file, &theirs, ftype.id(), &Default::default())
            .unwrap();
        assert_same(&ours, &theirs, ftype.name());
    }
}

#[test]
fn converting_the_checkpoint_directly_equals_convert_then_llama_quantize() {
    // BF16 source: widening to f32 is exact, so the one-pass conversion must equal
    // llama-quantize run on the f32 conversion.
    for ftype in [FileType::Q4_K_M, FileType::Q6_K, FileType::Q3_K_S] {
        let ours = tmp().join(format!("kiln-direct-{}.gguf", ftype.name()));
        let theirs = tmp().join(format!("llama-direct-{}.gguf", ftype.name()));
        convert(llama_dir(), ftype, &ours);
        kiln::llama::reference_quantize(llama_f32(), &theirs, ftype.id(), &Default::default())
            .unwrap();
        assert_same(&ours, &theirs, ftype.name());
    }
}

#[test]
fn llama_cpp_loads_every_output_type_and_generates() {
    for ftype in types_written_without_imatrix() {
        let out = tmp().join(format!("gen-{}.gguf", ftype.name()));
        convert(llama_dir(), ftype, &out);
        let model = kiln::llama::load(&out).unwrap_or_else(|e| panic!("{ftype}: {e:#}"));
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(
            g.metadata().get("general.file_type"),
            Some(&Value::U32(ftype.id()))
        );
        let prompt = kiln::llama::tokenize(&model, "Once upon a time", true);
        let toks = kiln::llama::generate(&model, &prompt, 8).unwrap();
        assert_eq!(toks.len(), 8, "{ftype}");
        assert!(
            toks.iter().all(|&t| (t as i32) < model.n_vocab()),
            "{ftype}: token ids in range"
        );
    }
}

#[test]
fn bpe_checkpoint_tokenizes_like_the_tokenizers_crate() {
    let out = tmp().join("qwen2-bpe-F16.gguf");
    convert(bpe_dir(), FileType::F16, &out);
    let model = kiln::llama::load(&out).unwrap();
    let tk = tokenizers::Tokenizer::from_file(bpe_dir().join("tokenizer.json")).unwrap();
    for text in [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "  leading spaces, tabs\tand\nnewlines",
        "numbers 12345 and 3.14159, punctuation!?",
        "unicode: café, naïve, 日本語, emoji 🙂",
        "don't won't it's we'll they're",
    ] {
        let ours: Vec<u32> = kiln::llama::tokenize(&model, text, false);
        let theirs = tk.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ours, theirs, "tokenization of {text:?}");
    }
    // It generates too.
    let prompt = kiln::llama::tokenize(&model, "Hello", true);
    assert_eq!(kiln::llama::generate(&model, &prompt, 4).unwrap().len(), 4);
}

#[test]
fn spm_checkpoint_tokenizes_like_sentencepiece_vocab_in_llama_cpp() {
    // The Llama 2 vocabulary through kiln's GGUF gives llama.cpp's well-known ids.
    let model = kiln::llama::load(llama_f32()).unwrap();
    assert_eq!(
        kiln::llama::tokenize(&model, "Hello world", true),
        vec![1, 15043, 3186]
    );
}

#[test]
fn dry_run_plan_equals_the_written_file() {
    let mut o = Options::new(FileType::Q4_K_M);
    o.output = Some(tmp().join("plan-Q4_K_M.gguf"));
    o.force = true;
    let p = quantize::prepare(llama_dir(), &o).unwrap();
    let planned: Vec<(String, String, u64)> = p
        .jobs
        .iter()
        .map(|j| (j.name.clone(), j.out_type.label(), j.out_bytes().unwrap()))
        .collect();
    let size = p.file_size().unwrap();
    quantize::execute(&p, true, false).unwrap();
    let g = GgufFile::open(o.output.as_ref().unwrap()).unwrap();
    let written: Vec<(String, String, u64)> = g
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.ty.label(), t.bytes))
        .collect();
    assert_eq!(planned, written);
    assert_eq!(size, g.file_size());
    // The 640-wide ffn_down rows cannot be q4_K/q6_K: they fall back like llama.cpp.
    assert!(p.jobs.iter().any(|j| j.fallback_from.is_some()));
}

#[test]
fn an_existing_output_is_kept_without_force() {
    // Its own folder: other tests write temporary files in tmp() at the same time.
    let dir = tmp().join("keep");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("keep-me.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let mut o = Options::new(FileType::Q8_0);
    o.output = Some(out.clone());
    let p = quantize::prepare(llama_dir(), &o).unwrap();
    let e = quantize::execute(&p, false, false).unwrap_err();
    assert!(format!("{e:#}").contains("already exists"), "{e:#}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn quantized_gguf_input_is_refused_without_allow_requantize() {
    let q = tmp().join("requant-src-Q8_0.gguf");
    convert(llama_f32(), FileType::Q8_0, &q);
    let mut o = Options::new(FileType::Q4_0);
    o.output = Some(tmp().join("requant-Q4_0.gguf"));
    o.force = true;
    let e = quantize::prepare(&q, &o).err().expect("refused");
    assert!(format!("{e:#}").contains("--allow-requantize"), "{e:#}");
    o.allow_requantize = true;
    let p = quantize::prepare(&q, &o).unwrap();
    quantize::execute(&p, true, false).unwrap();
    let theirs = tmp().join("llama-requant-Q4_0.gguf");
    let ro = kiln::llama::ReferenceOptions {
        allow_requantize: true,
        ..Default::default()
    };
    kiln::llama::reference_quantize(&q, &theirs, FileType::Q4_0.id(), &ro).unwrap();
    assert_same(
        o.output.as_ref().unwrap(),
        &theirs,
        "requantize q8_0 -> q4_0",
    );
}

fn check_arch(name: &str, spec: kiln_fixtures::checkpoint::FixtureSpec) {
    let dir = tmp().join(format!("arch-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    kiln_fixtures::checkpoint::write_checkpoint(&spec, &dir).unwrap();
    let f32_file = tmp().join(format!("arch-{name}-F32.gguf"));
    convert(&dir, FileType::F32, &f32_file);
    let model = kiln::llama::load(&f32_file).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    // Longer than the Gemma fixtures' sliding window, so windowed layers are exercised.
    let text =
        "Once upon a time there was a small model that learned to count: one, two, three, four.";
    let tokens = kiln::llama::tokenize(&model, text, true);
    assert!(tokens.len() > 12, "{name}: {} tokens", tokens.len());
    let ours = kiln::llama::logits(&model, &tokens).unwrap();
    let reference = crate::common::reference::reference_logits(&dir, &tokens).unwrap();
    let scale = reference.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.1, "{name}: logits are degenerate ({scale})");
    for (pos, (a, b)) in ours.iter().zip(&reference).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(
            d < 2e-3 * scale.max(1.0),
            "{name}, position {pos}: max |llama.cpp - reference| = {d} (scale {scale})"
        );
    }
    for ftype in [FileType::Q4_K_M, FileType::Q2_K, FileType::Q8_0] {
        let ours = tmp().join(format!("arch-{name}-kiln-{}.gguf", ftype.name()));
        let theirs = tmp().join(format!("arch-{name}-llama-{}.gguf", ftype.name()));
        convert(&dir, ftype, &ours);
        kiln::llama::reference_quantize(&f32_file, &theirs, ftype.id(), &Default::default())
            .unwrap();
        assert_same(&ours, &theirs, &format!("{name} {ftype}"));
        let m = kiln::llama::load(&ours).unwrap();
        assert_eq!(kiln::llama::generate(&m, &tokens[..4], 4).unwrap().len(), 4);
    }
}

#[test]
fn qwen2_with_bpe_matches_reference_and_llama_quantize() {
    check_arch("qwen2", kiln_fixtures::checkpoint::bpe_default());
}

#[test]
fn qwen3_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "qwen3",
        default_for(Arch::Qwen3, Vocab::TrainedBpe { size: 1024 }),
    );
}

#[test]
fn gemma2_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "gemma2",
        default_for(Arch::Gemma2, Vocab::LlamaSpm(tokenizer_model())),
    );
}

#[test]
fn gemma3_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "gemma3",
        default_for(Arch::Gemma3, Vocab::LlamaSpm(tokenizer_model())),
    );
}

#[test]
fn qwen3moe_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "qwen3moe",
        default_for(Arch::Qwen3Moe, Vocab::TrainedBpe { size: 1024 }),
    );
}

#[test]
fn mixtral_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "mixtral",
        default_for(Arch::Mixtral, Vocab::LlamaSpm(tokenizer_model())),
    );
}

#[test]
fn deepseek2_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "deepseek2",
        default_for(Arch::Deepseek2, Vocab::TrainedBpe { size: 1024 }),
    );
}

/// GLM-4.5: q/k/v biases, q/k norms, half-rotary heads, a dense leading layer, sigmoid routing
/// with the score bias, a shared expert, and the multi-token-prediction layer kept as
/// `blk.3` (with its `nextn.*` tensors), which llama.cpp loads beside the three it runs.
#[test]
fn glm4moe_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "glm4moe",
        default_for(Arch::Glm4Moe, Vocab::TrainedBpe { size: 1024 }),
    );
}

/// ERNIE 4.5 MoE: interleaved RoPE, a dense leading layer, softmax routing with the score
/// bias, two shared experts, tied output, the Llama 2 SentencePiece vocabulary; the release's
/// MTP tensors left out.
#[test]
fn ernie4_5moe_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "ernie4_5moe",
        default_for(Arch::Ernie45Moe, Vocab::LlamaSpm(tokenizer_model())),
    );
}

/// DeepSeek V3's keys as conversion/deepseek.py writes them for the fixture's config, and
/// kv_b_proj split per head into attn_k_b (transposed) and attn_v_b, checked against the
/// checkpoint's own values.
#[test]
fn deepseek2_keys_and_kv_b_split_follow_convert() {
    use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, Vocab};
    let spec = default_for(Arch::Deepseek2, Vocab::TrainedBpe { size: 512 });
    let dir = tmp().join("deepseek2-keys");
    let _ = std::fs::remove_dir_all(&dir);
    write_checkpoint(&spec, &dir).unwrap();
    let out = tmp().join("deepseek2-keys-F32.gguf");
    convert(&dir, FileType::F32, &out);
    let g = GgufFile::open(&out).unwrap();
    let md = g.metadata();
    let (h, hd, heads) = (spec.hidden as u32, spec.head_dim as u32, spec.heads as u32);
    let (nope, rope, v, kv_rank) = (hd, hd / 2, hd, h);
    let u = |k: &str| match md.get(&format!("deepseek2.{k}")) {
        Some(Value::U32(n)) => *n,
        other => panic!("deepseek2.{k}: {other:?}"),
    };
    let f = |k: &str| match md.get(&format!("deepseek2.{k}")) {
        Some(Value::F32(x)) => *x,
        other => panic!("deepseek2.{k}: {other:?}"),
    };
    assert_eq!(u("attention.head_count_kv"), 1);
    assert_eq!(u("leading_dense_block_count"), 1);
    assert_eq!(u("attention.q_lora_rank"), 2 * h);
    assert_eq!(u("attention.kv_lora_rank"), kv_rank);
    assert_eq!(u("attention.key_length"), kv_rank + rope);
    assert_eq!(u("attention.value_length"), kv_rank);
    assert_eq!(u("attention.key_length_mla"), nope + rope);
    assert_eq!(u("attention.value_length_mla"), v);
    assert_eq!(u("rope.dimension_count"), rope);
    assert_eq!(u("expert_count"), spec.experts as u32);
    assert_eq!(u("expert_used_count"), spec.experts_used as u32);
    assert_eq!(u("expert_shared_count"), 1);
    assert_eq!(u("expert_feed_forward_length"), spec.intermediate as u32);
    assert_eq!(u("feed_forward_length"), 3 * spec.intermediate as u32);
    assert_eq!(u("expert_group_count"), spec.experts as u32 / 2);
    assert_eq!(u("expert_group_used_count"), 2);
    assert_eq!(u("expert_gating_func"), 2, "sigmoid");
    assert_eq!(u("vocab_size") as usize, {
        let t = md.get("tokenizer.ggml.tokens");
        match t {
            Some(Value::Array(a)) => a.len(),
            _ => 0,
        }
    });
    assert_eq!(f("expert_weights_scale"), 2.5);
    assert_eq!(
        md.get("deepseek2.expert_weights_norm"),
        Some(&Value::Bool(true))
    );
    assert_eq!(f("rope.scaling.yarn_log_multiplier"), 0.1);
    assert_eq!(f("rope.scaling.factor"), 4.0);
    assert_eq!(u("rope.scaling.original_context_length"), 512);
    // The key order of gguf-py: key_length overwritten in place after the gating func.
    let keys: Vec<String> = md.iter().map(|(k, _)| k.to_string()).collect();
    let at = |k: &str| keys.iter().position(|x| x == k).unwrap();
    assert!(at("deepseek2.expert_gating_func") < at("deepseek2.attention.key_length"));
    assert!(at("deepseek2.attention.key_length") < at("deepseek2.leading_dense_block_count"));

    // No dense ffn in MoE layers, no experts in the dense layer.
    let names: Vec<&str> = g.tensors().iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"blk.0.ffn_down.weight"));
    assert!(!names.contains(&"blk.0.ffn_down_exps.weight"));
    assert!(names.contains(&"blk.1.ffn_down_exps.weight"));
    assert!(names.contains(&"blk.1.exp_probs_b.bias"));
    assert!(names.contains(&"blk.2.ffn_up_shexp.weight"));
    assert!(!names.iter().any(|n| n.contains("attn_kv_b")));

    // kv_b_proj [heads * (nope + v), kv_rank] from the checkpoint, in f32.
    let st_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let kv_b: Vec<f32> = st
        .tensor("model.layers.2.self_attn.kv_b_proj.weight")
        .unwrap()
        .data()
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let data = |n: &str| -> (Vec<u64>, Vec<f32>) {
        let t = g.tensors().iter().find(|t| t.name == n).unwrap();
        let v = g
            .data(t)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.dims.clone(), v)
    };
    let (nope, v, kv_rank, heads) = (nope as usize, v as usize, kv_rank as usize, heads as usize);
    let src = |head: usize, row: usize, col: usize| kv_b[(head * (nope + v) + row) * kv_rank + col];
    let (kd, k) = data("blk.2.attn_k_b.weight");
    assert_eq!(kd, [nope as u64, kv_rank as u64, heads as u64]);
    let (vd, vv) = data("blk.2.attn_v_b.weight");
    assert_eq!(vd, [kv_rank as u64, v as u64, heads as u64]);
    for head in 0..heads {
        for r in 0..kv_rank {
            for j in 0..nope {
                // ne {nope, rank, head}: element (j, r, head) = K row j, column r.
                assert_eq!(k[(head * kv_rank + r) * nope + j], src(head, j, r));
            }
        }
        for i in 0..v {
            for c in 0..kv_rank {
                assert_eq!(vv[(head * v + i) * kv_rank + c], src(head, nope + i, c));
            }
        }
    }
}

/// Phi-3 / Phi-4: fused attn_qkv and ffn_up (gate + up), 24 rotary dimensions of 32,
/// LongRoPE factors and attention factor, tied output, Phi-3's SentencePiece vocabulary.
#[test]
fn phi3_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "phi3",
        default_for(Arch::Phi3, Vocab::LlamaSpm(tokenizer_model())),
    );
    let g = GgufFile::open(&tmp().join("arch-phi3-F32.gguf")).unwrap();
    let md = &g.header.metadata;
    assert_eq!(md.get("phi3.rope.dimension_count"), Some(&Value::U32(24)));
    assert_eq!(
        md.get("phi3.rope.scaling.original_context_length"),
        Some(&Value::U32(4096))
    );
    // sqrt(1 + ln(131072 / 4096) / ln(4096)), as conversion/phi.py computes it.
    let want = (1.0f64 + 32f64.ln() / 4096f64.ln()).sqrt() as f32;
    assert_eq!(
        md.get("phi3.rope.scaling.attn_factor"),
        Some(&Value::F32(want))
    );
    let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    assert_eq!(
        &keys[..2],
        ["general.architecture", "phi3.rope.scaling.attn_factor"],
        "generate_extra_tensors' key comes before the general keys"
    );
    let names: Vec<String> = g.tensors().iter().map(|t| t.name.clone()).collect();
    for n in [
        "rope_factors_long.weight",
        "rope_factors_short.weight",
        "blk.1.attn_qkv.weight",
        "blk.1.ffn_up.weight",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert!(!names
        .iter()
        .any(|x| x.contains("ffn_gate") || x.contains("attn_q.")));
}

/// SmolLM3: Llama with a NoPE layer (the fourth), byte-level BPE.
#[test]
fn smollm3_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "smollm3",
        default_for(Arch::SmolLm3, Vocab::TrainedBpe { size: 1024 }),
    );
}

/// Granite 3.x: the four multipliers as keys (attention scale 1/64, not head_dim^-0.5).
#[test]
fn granite_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "granite",
        default_for(Arch::Granite, Vocab::TrainedBpe { size: 1024 }),
    );
    let g = GgufFile::open(&tmp().join("arch-granite-F32.gguf")).unwrap();
    let md = &g.header.metadata;
    for (k, v) in [
        ("granite.attention.scale", 0.015625f32),
        ("granite.embedding_scale", 12.0),
        ("granite.residual_scale", 0.22),
        ("granite.logit_scale", 8.0),
    ] {
        assert_eq!(md.get(k), Some(&Value::F32(v)), "{k}");
    }
    assert_eq!(md.get("granite.attention.key_length"), None);
}

/// OLMo 2: post-norms only, q/k norms over the whole projection, NeoX RoPE, GPT-2 BPE.
#[test]
fn olmo2_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "olmo2",
        default_for(Arch::Olmo2, Vocab::TrainedBpe { size: 1024 }),
    );
}

/// Mistral Small 3.x: the text model of a multimodal checkpoint (text_config, language_model.
/// names, the vision tower dropped), converted as GGUF `mistral3`; q narrower than hidden.
#[test]
fn mistral3_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "mistral3",
        default_for(Arch::Mistral3, Vocab::TrainedBpe { size: 1024 }),
    );
    let g = GgufFile::open(&tmp().join("arch-mistral3-F32.gguf")).unwrap();
    let md = &g.header.metadata;
    assert_eq!(
        md.get("mistral3.attention.key_length"),
        Some(&Value::U32(24))
    );
    assert_eq!(
        md.get("mistral3.rope.dimension_count"),
        Some(&Value::U32(24))
    );
    assert!(g
        .tensors()
        .iter()
        .all(|t| !t.name.contains("vision") && !t.name.contains("mm")));
}

/// Importance data for every matrix of the Llama fixture, deterministic.
pub(crate) fn fixture_imatrix() -> Vec<(String, Vec<f32>)> {
    imatrix_for(llama_f32())
}

/// Importance data for every matrix (but the token embeddings) of the GGUF `file`.
fn imatrix_for(file: &Path) -> Vec<(String, Vec<f32>)> {
    let g = GgufFile::open(file).unwrap();
    let mut rng = kiln_fixtures::synth::SplitMix64(7);
    g.tensors()
        .iter()
        .filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight")
        .map(|t| {
            let v = (0..t.dims[0])
                .map(|_| (rng.uniform() * 4.0).powi(2) + 1e-3)
                .collect();
            (t.name.clone(), v)
        })
        .collect()
}

/// A legacy imatrix file whose weights (stored / ncall) are `entries`' values.
fn write_legacy_imatrix(path: &Path, entries: &[(String, Vec<f32>)], ncall: i32) {
    let stored: Vec<(String, Vec<f32>)> = entries
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().map(|x| x * ncall as f32).collect()))
        .collect();
    let refs: Vec<(&str, i32, &[f32])> = stored
        .iter()
        .map(|(n, v)| (n.as_str(), ncall, v.as_slice()))
        .collect();
    let mut bytes = kiln::imatrix::encode_legacy(&refs);
    // the optional trailer: chunk count, then the dataset's name
    bytes.extend(5i32.to_le_bytes());
    bytes.extend((LEGACY_DATASET.len() as i32).to_le_bytes());
    bytes.extend(LEGACY_DATASET.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

const LEGACY_DATASET: &str = "legacy-text.txt";
const GGUF_DATASET: &str = "fixture-text.txt";

/// What llama-quantize reports of the imatrix file `path` written by [`write_legacy_imatrix`]
/// (`legacy`) or [`write_gguf_imatrix`]: the name as given, the dataset, the chunk count.
pub(crate) fn imatrix_provenance(path: &Path, legacy: bool) -> kiln::llama::ImatrixFile {
    kiln::llama::ImatrixFile {
        name: path.display().to_string(),
        datasets: vec![if legacy { LEGACY_DATASET } else { GGUF_DATASET }.to_string()],
        chunk_count: if legacy { 5 } else { 3 },
    }
}

pub(crate) fn write_gguf_imatrix(path: &Path, entries: &[(String, Vec<f32>)], count: f32) {
    use kiln::gguf::writer::{GgufWriter, TensorEntry};
    use kiln::gguf::{Metadata, TypeId};
    let f32t = TypeId::of(kiln::kernels::GgmlType::F32);
    let mut md = Metadata::new();
    md.set_str("general.type", "imatrix");
    md.set(
        "imatrix.datasets",
        kiln::gguf::Value::Array(kiln::gguf::Array::Str(vec![GGUF_DATASET.to_string()])),
    );
    md.set_u32("imatrix.chunk_count", 3);
    md.set_u32("imatrix.chunk_size", 512);
    let mut tensors = Vec::new();
    for (name, v) in entries {
        tensors.push(TensorEntry {
            name: format!("{name}.in_sum2"),
            dims: vec![v.len() as u64, 1],
            ty: f32t,
            bytes: 4 * v.len() as u64,
        });
        tensors.push(TensorEntry {
            name: format!("{name}.counts"),
            dims: vec![1, 1],
            ty: f32t,
            bytes: 4,
        });
    }
    let mut w = GgufWriter::create(path, true, &md, tensors).unwrap();
    for (_, v) in entries {
        let sums: Vec<u8> = v.iter().flat_map(|x| (x * count).to_le_bytes()).collect();
        w.write(&sums).unwrap();
        w.end_tensor().unwrap();
        w.write(&count.to_le_bytes()).unwrap();
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn importance_matrices_in_both_formats_quantize_like_llama_quantize() {
    let entries = fixture_imatrix();
    let legacy = tmp().join("imatrix.dat");
    let gguf = tmp().join("imatrix.gguf");
    // Powers of two so that value * count / count is exact in both formats.
    write_legacy_imatrix(&legacy, &entries, 4);
    write_gguf_imatrix(&gguf, &entries, 8.0);
    for ftype in [
        FileType::Q4_K_M,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q4_0,
        FileType::Q5_1,
        FileType::IQ4_NL,
        FileType::IQ4_XS,
        FileType::TQ1_0,
        FileType::MXFP4_MOE,
    ] {
        for (label, file) in [("legacy", &legacy), ("gguf", &gguf)] {
            // llama-quantize records the file's name, dataset and chunk count in the output
            let ro = kiln::llama::ReferenceOptions {
                imatrix: Some(entries.clone()),
                imatrix_file: Some(imatrix_provenance(file, label == "legacy")),
                ..Default::default()
            };
            let theirs = tmp().join(format!("imat-llama-{label}-{}.gguf", ftype.name()));
            kiln::llama::reference_quantize(llama_f32(), &theirs, ftype.id(), &ro).unwrap();
            let ours = tmp().join(format!("imat-kiln-{label}-{}.gguf", ftype.name()));
            let mut o = Options::new(ftype);
            o.output = Some(ours.clone());
            o.force = true;
            o.imatrix = Some(file.clone());
            let p = quantize::prepare(llama_f32(), &o).unwrap();
            quantize::execute(&p, true, false).unwrap();
            assert_same(&ours, &theirs, &format!("{ftype} with {label} imatrix"));
        }
    }
    // The importance data changes the bytes (the test would pass vacuously otherwise).
    let plain = tmp().join("imat-plain-Q4_K_M.gguf");
    convert(llama_f32(), FileType::Q4_K_M, &plain);
    let a = tensors_of(&plain);
    let b = tensors_of(&tmp().join("imat-kiln-gguf-Q4_K_M.gguf"));
    assert!(a.iter().zip(&b).any(|(x, y)| x.3 != y.3));
}

#[test]
fn an_imatrix_for_another_model_is_refused() {
    let entries: Vec<(String, Vec<f32>)> = fixture_imatrix()
        .into_iter()
        .map(|(n, v)| (n, v[..v.len() / 2].to_vec()))
        .collect();
    let bad = tmp().join("imatrix-other.dat");
    write_legacy_imatrix(&bad, &entries, 1);
    let mut o = Options::new(FileType::Q4_K_M);
    o.output = Some(tmp().join("never.gguf"));
    o.imatrix = Some(bad);
    let e = quantize::prepare(llama_f32(), &o).err().expect("refused");
    assert!(format!("{e:#}").contains("another model"), "{e:#}");
    assert!(!tmp().join("never.gguf").exists());
}

#[test]
fn pure_and_tensor_type_options_match_llama_quantize() {
    use kiln::kernels::GgmlType;
    let cases: Vec<(&str, Options, kiln::llama::ReferenceOptions)> = {
        let mut v = Vec::new();
        let mut o = Options::new(FileType::Q3_K_M);
        o.pure = true;
        v.push((
            "pure",
            o,
            kiln::llama::ReferenceOptions {
                pure: true,
                ..Default::default()
            },
        ));
        let mut o = Options::new(FileType::Q4_K_M);
        o.output_tensor_type = Some(GgmlType::Q8_0);
        o.token_embedding_type = Some(GgmlType::Q4_0);
        v.push((
            "types",
            o,
            kiln::llama::ReferenceOptions {
                output_tensor_type: Some(GgmlType::Q8_0 as u32),
                token_embedding_type: Some(GgmlType::Q4_0 as u32),
                ..Default::default()
            },
        ));
        let mut o = Options::new(FileType::Q5_K_S);
        o.leave_output_tensor = true;
        v.push((
            "leave-output",
            o,
            kiln::llama::ReferenceOptions {
                leave_output_tensor: true,
                ..Default::default()
            },
        ));
        v
    };
    for (label, mut o, ro) in cases {
        let ours = tmp().join(format!("opt-kiln-{label}.gguf"));
        let theirs = tmp().join(format!("opt-llama-{label}.gguf"));
        o.output = Some(ours.clone());
        o.force = true;
        let p = quantize::prepare(llama_f32(), &o).unwrap();
        quantize::execute(&p, true, false).unwrap();
        kiln::llama::reference_quantize(llama_f32(), &theirs, o.ftype.id(), &ro).unwrap();
        assert_same(&ours, &theirs, label);
    }
}

/// The file types of the simple new formats (IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4_MOE, Q1_0,
/// Q2_0) on a model where their special rules fire: 8 layers (ffn_down of the first eighth
/// gets Q5_K under IQ4_NL/IQ4_XS without an imatrix), 4 query heads per KV head (attn_v gets
/// Q5_K), token_embd to Q4_K for the ternary and Q2_0 mixes. Every tensor equals
/// `llama_model_quantize`'s, with and without an importance matrix.
#[test]
fn simple_new_file_types_match_llama_quantize_where_their_rules_fire() {
    let dir = tmp().join("gqa4-8layer");
    let _ = std::fs::remove_dir_all(&dir);
    {
        use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, FixtureSpec, Vocab};
        // Qwen3 (hidden 256, FFN 512, 8 query heads on 2 KV heads) with a small vocabulary,
        // which keeps the embeddings (and the test) small, and an lm_head of its own.
        let spec = FixtureSpec {
            layers: 8,
            tied_embeddings: false,
            ..default_for(Arch::Qwen3, Vocab::TrainedBpe { size: 1024 })
        };
        write_checkpoint(&spec, &dir).unwrap();
    }
    let f32_file = tmp().join("gqa4-8layer-F32.gguf");
    convert(&dir, FileType::F32, &f32_file);
    let entries = imatrix_for(&f32_file);
    let imatrix_file = tmp().join("gqa4-8layer-imatrix.gguf");
    write_gguf_imatrix(&imatrix_file, &entries, 8.0);
    let type_of = |file: &Path, name: &str| -> String {
        let g = GgufFile::open(file).unwrap();
        let t = g.tensors().iter().find(|t| t.name == name).unwrap();
        t.ty.label()
    };
    for ftype in [
        FileType::IQ4_NL,
        FileType::IQ4_XS,
        FileType::MXFP4_MOE,
        FileType::Q2_0,
        FileType::TQ2_0,
        FileType::TQ1_0,
        FileType::Q1_0,
    ] {
        for with_imatrix in [false, true] {
            let tag = format!("{}-{}", ftype.name(), with_imatrix as u8);
            let ours = tmp().join(format!("gqa4-kiln-{tag}.gguf"));
            let theirs = tmp().join(format!("gqa4-llama-{tag}.gguf"));
            let mut o = Options::new(ftype);
            o.output = Some(ours.clone());
            o.force = true;
            o.imatrix = with_imatrix.then(|| imatrix_file.clone());
            quantize::execute(&quantize::prepare(&f32_file, &o).unwrap(), true, false).unwrap();
            let ro = kiln::llama::ReferenceOptions {
                imatrix: with_imatrix.then(|| entries.clone()),
                imatrix_file: with_imatrix.then(|| imatrix_provenance(&imatrix_file, false)),
                ..Default::default()
            };
            kiln::llama::reference_quantize(&f32_file, &theirs, ftype.id(), &ro).unwrap();
            assert_same(&ours, &theirs, &tag);
            // The rules this model is for did fire (the comparison is not vacuous).
            let attn_v = type_of(&ours, "blk.3.attn_v.weight");
            let down0 = type_of(&ours, "blk.0.ffn_down.weight");
            let embd = type_of(&ours, "token_embd.weight");
            match ftype {
                FileType::IQ4_NL | FileType::IQ4_XS => {
                    assert_eq!(attn_v, "q5_K", "{tag}");
                    let want = if with_imatrix {
                        ftype.default_type().label()
                    } else {
                        "q5_K".to_string()
                    };
                    assert_eq!(down0, want, "{tag}");
                    assert_eq!(
                        type_of(&ours, "blk.1.ffn_down.weight"),
                        ftype.default_type().label()
                    );
                }
                FileType::MXFP4_MOE => assert_eq!(attn_v, "q8_0", "{tag}"),
                FileType::Q2_0 | FileType::TQ2_0 | FileType::TQ1_0 => {
                    assert_eq!(embd, "q4_K", "{tag}");
                    assert_eq!(attn_v, ftype.default_type().label(), "{tag}");
                }
                _ => assert_eq!(attn_v, "q1_0", "{tag}"),
            }
        }
    }
}

/// Q1_0's 128-weight blocks have no fallback type in llama.cpp: on rows of 320 weights
/// llama-quantize refuses, and so does kiln, before writing anything.
#[test]
fn q1_0_on_rows_without_a_fallback_is_refused_like_llama_quantize() {
    let f32_file = tmp().join("qwen2-bpe-F32-q1.gguf");
    convert(bpe_dir(), FileType::F32, &f32_file);
    let ours = tmp().join("qwen2-kiln-Q1_0.gguf");
    let mut o = Options::new(FileType::Q1_0);
    o.output = Some(ours.clone());
    o.force = true;
    let e = quantize::prepare(&f32_file, &o).err().expect("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("no fallback") && msg.contains("q1_0") && msg.contains("320"),
        "{msg}"
    );
    assert!(!ours.exists());
    let theirs = tmp().join("qwen2-llama-Q1_0.gguf");
    assert!(
        kiln::llama::reference_quantize(
            &f32_file,
            &theirs,
            FileType::Q1_0.id(),
            &Default::default()
        )
        .is_err(),
        "llama.cpp refuses too"
    );
}

/// GGUFs of the new types are read with kiln's own dequantizers (no ggml): requantizing each
/// to Q8_0 gives llama-quantize's bytes (which dequantizes with ggml's `to_float`).
#[test]
fn requantizing_from_the_simple_new_types_equals_llama_quantize() {
    for src in [
        FileType::IQ4_XS,
        FileType::TQ1_0,
        FileType::TQ2_0,
        FileType::Q2_0,
        FileType::Q1_0,
    ] {
        let input = tmp().join(format!("requant-src-{}.gguf", src.name()));
        convert(llama_f32(), src, &input);
        // The source holds the type kiln reads with its own kernels.
        let g = GgufFile::open(&input).unwrap();
        assert!(g.tensors().iter().any(|t| t.ty == src.default_type()));
        let ours = tmp().join(format!("requant-kiln-{}-Q8_0.gguf", src.name()));
        let mut o = Options::new(FileType::Q8_0);
        o.output = Some(ours.clone());
        o.force = true;
        o.allow_requantize = true;
        quantize::execute(&quantize::prepare(&input, &o).unwrap(), true, false).unwrap();
        let theirs = tmp().join(format!("requant-llama-{}-Q8_0.gguf", src.name()));
        let ro = kiln::llama::ReferenceOptions {
            allow_requantize: true,
            ..Default::default()
        };
        kiln::llama::reference_quantize(&input, &theirs, FileType::Q8_0.id(), &ro).unwrap();
        assert_same(&ours, &theirs, &format!("requantize {src} -> Q8_0"));
    }
}

/// The file types kiln converts the Llama fixture to without an importance matrix: every type but
/// those llama.cpp refuses without one (checked in `low_bit_mixes_plan_and_refuse_like_llama_quantize`)
/// and those that need a format kiln does not write yet (the i-quants' 32-weight fallback for the
/// fixture's 640-wide rows, IQ4_NL, on a branch without it). Every K-quant and legacy type is in.
fn types_written_without_imatrix() -> Vec<FileType> {
    let v: Vec<FileType> = FileType::ALL
        .into_iter()
        .filter(|&f| {
            let mut o = Options::new(f);
            o.output = Some(tmp().join("never-written.gguf"));
            quantize::prepare(llama_f32(), &o).is_ok()
        })
        .collect();
    for f in FileType::ALL {
        if !f.name().starts_with("IQ") && f != FileType::Q2_K_S {
            assert!(v.contains(&f), "{f} is written without an imatrix");
        }
    }
    v
}

/// A Qwen2 fixture whose rows are all multiples of 256 (hidden 256, FFN 256, 8 layers so that
/// the mixes' first-eighth rules pick a layer, 8 heads and 4 KV heads, untied output, a small
/// trained BPE vocabulary), as an f32 GGUF: the i-quant mixes need no fallback on it.
fn rows256_f32() -> &'static Path {
    use kiln_fixtures::checkpoint::{bpe_default, write_checkpoint, Dtype, FixtureSpec};
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tmp().join("rows256");
        let _ = std::fs::remove_dir_all(&dir);
        let spec = FixtureSpec {
            hidden: 256,
            intermediate: 256,
            layers: 8,
            heads: 8,
            kv_heads: 4,
            head_dim: 32,
            dtype: Dtype::BF16,
            tied_embeddings: false,
            ..bpe_default()
        };
        write_checkpoint(&spec, &dir).unwrap();
        let out = tmp().join("rows256-F32.gguf");
        convert(&dir, FileType::F32, &out);
        out
    })
}

/// The file types of the i-quant issue that this module compares with llama.cpp.
const LOW_BIT_TYPES: [FileType; 11] = [
    FileType::IQ3_M,
    FileType::IQ3_S,
    FileType::IQ3_XS,
    FileType::IQ3_XXS,
    FileType::Q2_K_S,
    FileType::IQ2_M,
    FileType::IQ2_S,
    FileType::IQ2_XS,
    FileType::IQ2_XXS,
    FileType::IQ1_M,
    FileType::IQ1_S,
];

/// kiln's plan for `input` at `ftype` (a dry run, which refuses nothing): (tensor, type).
fn planned_types(input: &Path, ftype: FileType, imatrix: Option<&Path>) -> Vec<(String, String)> {
    let mut o = Options::new(ftype);
    o.output = Some(tmp().join("never-written.gguf"));
    o.imatrix = imatrix.map(Path::to_path_buf);
    o.dry_run = true;
    let p = quantize::prepare(input, &o).unwrap_or_else(|e| panic!("plan {ftype}: {e:#}"));
    let mut v: Vec<_> = p
        .jobs
        .iter()
        .map(|j| (j.name.clone(), j.out_type.label()))
        .collect();
    v.sort();
    v
}

/// Every low-bit mix (IQ1_S .. IQ3_M, Q2_K_S), with and without an importance matrix, against
/// `llama_model_quantize` on the same f32 GGUF: where llama.cpp refuses for want of an imatrix,
/// kiln refuses before writing anything; otherwise kiln's plan gives every tensor llama.cpp's
/// type, and where kiln writes every type of the plan, the files hold the same tensors, byte
/// for byte (otherwise kiln refuses, naming the type it does not write).
#[test]
fn low_bit_mixes_plan_and_refuse_like_llama_quantize() {
    let input = rows256_f32();
    let entries = imatrix_for(input);
    let imatrix_file = tmp().join("imatrix-rows256.gguf");
    write_gguf_imatrix(&imatrix_file, &entries, 8.0);
    let with = kiln::llama::ReferenceOptions {
        imatrix: Some(entries.clone()),
        imatrix_file: Some(imatrix_provenance(&imatrix_file, false)),
        ..Default::default()
    };
    let mut compared_bytes = Vec::new();
    for ftype in LOW_BIT_TYPES {
        for imatrix in [false, true] {
            let what = format!("{ftype} imatrix={imatrix}");
            let theirs = tmp().join(format!("low-llama-{}-{imatrix}.gguf", ftype.name()));
            let _ = std::fs::remove_file(&theirs);
            let ro = if imatrix {
                with.clone()
            } else {
                Default::default()
            };
            let llama = kiln::llama::reference_quantize(input, &theirs, ftype.id(), &ro);
            let ours = tmp().join(format!("low-kiln-{}-{imatrix}.gguf", ftype.name()));
            let _ = std::fs::remove_file(&ours);
            let mut o = Options::new(ftype);
            o.output = Some(ours.clone());
            o.force = true;
            o.imatrix = imatrix.then(|| imatrix_file.clone());
            let kiln = quantize::prepare(input, &o);
            if llama.is_err() {
                let e = kiln
                    .err()
                    .unwrap_or_else(|| panic!("{what}: llama.cpp refuses, kiln does not"));
                assert!(
                    format!("{e:#}").contains("requires an importance matrix"),
                    "{what}: {e:#}"
                );
                continue;
            }
            let plan = planned_types(input, ftype, o.imatrix.as_deref());
            let mut llama_types: Vec<(String, String)> = tensors_of(&theirs)
                .into_iter()
                .map(|t| (t.0, t.2))
                .collect();
            llama_types.sort();
            assert_eq!(plan, llama_types, "{what}: per-tensor types");
            let unwritten: Vec<&(String, String)> = plan
                .iter()
                .filter(|(_, ty)| kiln::kernels::GgmlType::from_name(ty).is_none())
                .collect();
            match kiln {
                Ok(p) => {
                    assert!(unwritten.is_empty(), "{what}: kiln accepted {unwritten:?}");
                    quantize::execute(&p, true, false).unwrap();
                    assert_same(&ours, &theirs, &what);
                    compared_bytes.push(what);
                }
                Err(e) => {
                    assert!(!unwritten.is_empty(), "{what}: kiln refused: {e:#}");
                    assert!(
                        format!("{e:#}").contains("does not write yet"),
                        "{what}: {e:#}"
                    );
                    assert!(!ours.exists());
                }
            }
        }
    }
    // The mixes whose types this kiln writes were compared byte for byte.
    for must in [
        "IQ3_S imatrix=false",
        "IQ3_M imatrix=true",
        "IQ3_XS imatrix=true",
        "Q2_K_S imatrix=true",
    ] {
        assert!(
            compared_bytes.iter().any(|w| w == must),
            "{must} not compared: {compared_bytes:?}"
        );
    }
}

/// gpt-oss as transformers' dequantized parameters (bf16 `gate_up_proj` [E, D, 2F] with gate
/// and up interleaved, `down_proj` [E, F, D]): transposed and split as convert does, biases,
/// sinks, YaRN, the alternating sliding window; llama.cpp's logits against the reference, and
/// q4_K_M, q2_K, q8_0 against llama-quantize of kiln's f32 file.
#[test]
fn gpt_oss_bf16_matches_reference_and_llama_quantize() {
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    check_arch(
        "gpt-oss-bf16",
        kiln_fixtures::checkpoint::FixtureSpec {
            fused_experts: true,
            ..default_for(Arch::GptOss, Vocab::TrainedBpe { size: 1024 })
        },
    );
}

/// The f32 values of a GGUF tensor, through ggml's own dequantizer for quantized types.
fn gguf_values(path: &Path, name: &str) -> Vec<f32> {
    let g = GgufFile::open(path).unwrap();
    let t = g
        .tensors()
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{}: no {name}", path.display()));
    let ty = t.ty.kiln().unwrap();
    kiln_fixtures::ggml::dequantize(ty, g.data(t))
}

/// gpt-oss as OpenAI releases it: MXFP4 expert blocks and E8M0 scales repacked into ggml
/// MXFP4 tensors (file type MOSTLY_MXFP4_MOE at f32, as convert writes it). ggml's
/// dequantization of kiln's repacked experts equals transformers' dequantization of the same
/// blocks (the bf16 form of the same fixture), every other tensor is the same; llama.cpp's
/// logits agree with the reference forward pass; MXFP4_MOE equals llama-quantize's, and the
/// K-quant mixes need --allow-requantize as llama-quantize does, then equal its requantization.
#[test]
fn gpt_oss_mxfp4_blocks_repack_like_convert_and_match_llama_quantize() {
    use kiln::llama::ReferenceOptions;
    use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, FixtureSpec, Vocab};
    let mx_spec = default_for(Arch::GptOss, Vocab::TrainedBpe { size: 1024 });
    let bf16_spec = FixtureSpec {
        fused_experts: true,
        ..mx_spec.clone()
    };
    let mx = tmp().join("gpt-oss-mx");
    let dense = tmp().join("gpt-oss-dense");
    for (spec, dir) in [(&mx_spec, &mx), (&bf16_spec, &dense)] {
        let _ = std::fs::remove_dir_all(dir);
        write_checkpoint(spec, dir).unwrap();
    }
    let mx_f32 = tmp().join("gpt-oss-mx-F32.gguf");
    let dense_f32 = tmp().join("gpt-oss-dense-F32.gguf");
    convert(&mx, FileType::F32, &mx_f32);
    convert(&dense, FileType::F32, &dense_f32);
    let g = GgufFile::open(&mx_f32).unwrap();
    assert_eq!(
        g.metadata().get("general.file_type"),
        Some(&Value::U32(FileType::MXFP4_MOE.id()))
    );
    // Same tensors; the experts' MXFP4 dequantizes to the bf16 form's values exactly.
    let a = tensors_of(&mx_f32);
    let b = tensors_of(&dense_f32);
    assert_eq!(a.len(), b.len());
    let mut n_mx = 0;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, &x.1), (&y.0, &y.1));
        let is_expert_weight = x.0.contains("_exps.weight");
        if is_expert_weight {
            assert!(x.2.eq_ignore_ascii_case("mxfp4"), "{}: {}", x.0, x.2);
            assert!(y.2.eq_ignore_ascii_case("f32"), "{}: {}", y.0, y.2);
            let got = gguf_values(&mx_f32, &x.0);
            let want = gguf_values(&dense_f32, &y.0);
            assert!(want.iter().any(|v| *v != 0.0));
            // Equal values (FP4's -0 code dequantizes to +0 in ggml, -0 in transformers).
            assert_eq!(got.len(), want.len());
            if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "{}: value {i} is {} in MXFP4, {} in bf16",
                    x.0, got[i], want[i]
                );
            }
            n_mx += 1;
        } else {
            assert_eq!(x.2, y.2, "{}", x.0);
            assert!(x.3 == y.3, "{}: bytes differ", x.0);
        }
    }
    assert_eq!(n_mx, 3 * mx_spec.layers);

    // The reference reads the blocks itself (transformers' dequantization) and computes what
    // it computes on the bf16 form, which llama.cpp matches (gpt_oss_bf16_... test). llama.cpp's
    // logits on the MXFP4 file are not compared at that tolerance: ggml multiplies MXFP4
    // weights with activations quantized to q8_0 (MXFP4's vec_dot type), about 1% off here,
    // although the weights are the same values (checked above).
    let model = kiln::llama::load(&mx_f32).unwrap();
    let text =
        "Once upon a time there was a small model that learned to count: one, two, three, four.";
    let tokens = kiln::llama::tokenize(&model, text, true);
    assert!(tokens.len() > 12);
    let from_blocks = crate::common::reference::reference_logits(&mx, &tokens).unwrap();
    let from_bf16 = crate::common::reference::reference_logits(&dense, &tokens).unwrap();
    assert!(
        from_blocks == from_bf16,
        "reference: MXFP4 blocks != bf16 form"
    );
    assert_eq!(
        kiln::llama::generate(&model, &tokens[..4], 4)
            .unwrap()
            .len(),
        4
    );

    // MXFP4_MOE: the experts copied, the rest q8_0.
    let ours = tmp().join("gpt-oss-kiln-MXFP4_MOE.gguf");
    let theirs = tmp().join("gpt-oss-llama-MXFP4_MOE.gguf");
    convert(&mx, FileType::MXFP4_MOE, &ours);
    kiln::llama::reference_quantize(
        &mx_f32,
        &theirs,
        FileType::MXFP4_MOE.id(),
        &Default::default(),
    )
    .unwrap();
    assert_same(&ours, &theirs, "gpt-oss MXFP4_MOE");

    // The K-quant mixes change the MXFP4 experts: refused without --allow-requantize (as
    // llama-quantize refuses), and with it equal to llama-quantize's requantization.
    let mut o = kiln::quantize::Options::new(FileType::Q4_K_M);
    o.output = Some(tmp().join("gpt-oss-refused.gguf"));
    o.force = true;
    let e = match kiln::quantize::prepare(&mx, &o) {
        Ok(_) => panic!("q4_K_M from MXFP4 experts without --allow-requantize"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("--allow-requantize") && e.contains("_exps.weight"),
        "{e}"
    );
    for ftype in [FileType::Q4_K_M, FileType::Q2_K, FileType::Q8_0] {
        let ours = tmp().join(format!("gpt-oss-kiln-{}.gguf", ftype.name()));
        let theirs = tmp().join(format!("gpt-oss-llama-{}.gguf", ftype.name()));
        let mut o = kiln::quantize::Options::new(ftype);
        o.output = Some(ours.clone());
        o.force = true;
        o.allow_requantize = true;
        let p = kiln::quantize::prepare(&mx, &o).unwrap();
        kiln::quantize::execute(&p, true, false).unwrap();
        let ro = ReferenceOptions {
            allow_requantize: true,
            ..Default::default()
        };
        kiln::llama::reference_quantize(&mx_f32, &theirs, ftype.id(), &ro).unwrap();
        assert_same(&ours, &theirs, &format!("gpt-oss {ftype}"));
        let m = kiln::llama::load(&ours).unwrap();
        assert_eq!(kiln::llama::generate(&m, &tokens[..4], 4).unwrap().len(), 4);
    }
}
