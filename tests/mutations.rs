//! The parsers under seeded random mutation, on stable Rust in every CI run: the GGUF reader
//! (and `kiln inspect`'s renderers on what it accepts), the safetensors header parser, the
//! SentencePiece protobuf reader, the legacy imatrix reader, the tokenizer.json path and the
//! split GGUF reader (a shard set opened from its first shard). Each
//! mutated input must give Ok or Err, never a panic. (The cargo-fuzz targets in fuzz/ explore
//! the same entry points with coverage guidance; this keeps a cheap guard in the test suite.)

use kiln::gguf::writer::{header_bytes, TensorEntry};
use kiln::gguf::{Metadata, TypeId, Value};
use kiln::kernels::GgmlType;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// xorshift64*: deterministic, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four edits: byte flips and overwrites with boundary values (biased towards the
/// first `hot` bytes, where headers live), a truncation, a duplicated or dropped run.
fn mutate(seed: &[u8], hot: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let span = if rng.below(4) > 0 {
            hot.min(b.len())
        } else {
            b.len()
        };
        let at = rng.below(span);
        match rng.below(6) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b[at] = rng.next() as u8,
            2 => {
                let vals: [u64; 8] = [
                    0,
                    1,
                    u64::MAX,
                    i32::MAX as u64,
                    u32::MAX as u64,
                    1 << 31,
                    1 << 40,
                    b.len() as u64,
                ];
                let v = vals[rng.below(vals.len())].to_le_bytes();
                let w = [1, 2, 4, 8][rng.below(4)];
                for (i, x) in v.iter().take(w).enumerate() {
                    if let Some(y) = b.get_mut(at + i) {
                        *y = *x;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let len = rng.below(64).min(b.len() - at);
                let run: Vec<u8> = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, run);
            }
            _ => {
                let len = rng.below(64).min(b.len() - at);
                b.drain(at..at + len);
            }
        }
    }
    b
}

/// Runs `f` on `n` mutations of each seed; a panic fails the test naming the case.
fn no_panics(what: &str, seeds: &[Vec<u8>], hot: usize, n: usize, f: impl Fn(&[u8])) {
    // The panic hook is process-wide: one harness at a time swaps it.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    'outer: for (s, seed) in seeds.iter().enumerate() {
        for i in 0..n {
            let input = mutate(seed, hot, &mut rng);
            if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
                failure = Some((s, i, input));
                break 'outer;
            }
        }
    }
    std::panic::set_hook(hook);
    if let Some((s, i, input)) = failure {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mutation-{what}.bin"));
        std::fs::write(&p, &input).unwrap();
        // Run it again with the normal hook, so the panic message shows.
        let _ = catch_unwind(AssertUnwindSafe(|| f(&input)));
        panic!(
            "{what}: seed {s}, mutation {i} panicked (input saved to {})",
            p.display()
        );
    }
}

fn small_gguf() -> Vec<u8> {
    let mut md = Metadata::new();
    md.set_str("general.architecture", "llama");
    md.set_u32("llama.block_count", 1);
    md.set(
        "tokenizer.ggml.tokens",
        Value::Array(kiln::gguf::Array::Str(vec!["a".into(), "b".into()])),
    );
    md.set("general.alignment", Value::U32(32));
    let t = |name: &str, dims: Vec<u64>, ty: GgmlType| {
        let ty = TypeId::of(ty);
        let bytes = ty.row_bytes(dims[0]).unwrap() * dims[1..].iter().product::<u64>();
        TensorEntry {
            name: name.into(),
            dims,
            ty,
            bytes,
        }
    };
    let tensors = vec![
        t("token_embd.weight", vec![64, 2], GgmlType::Q8_0),
        t("blk.0.attn_norm.weight", vec![64], GgmlType::F32),
        t("output.weight", vec![256, 2], GgmlType::Q4_K),
    ];
    let (mut out, _) = header_bytes(&md, &tensors);
    for t in &tensors {
        out.extend(std::iter::repeat_n(
            0x11u8,
            t.bytes.div_ceil(32) as usize * 32,
        ));
    }
    out
}

#[test]
fn gguf_reader_never_panics() {
    let seed = small_gguf();
    assert!(
        kiln::gguf::reader::parse(&seed).is_ok(),
        "the seed is valid"
    );
    no_panics("gguf", &[seed], 400, 200_000, |b| {
        if let Ok(h) = kiln::gguf::reader::parse(b) {
            for t in &h.tensors {
                assert!(h.data_offset + t.offset + t.bytes <= b.len() as u64);
            }
        }
    });
}

/// Three shards of a split GGUF (one tensor each), as kiln's split writer lays them out.
fn split_shards() -> Vec<Vec<u8>> {
    let mut md = Metadata::new();
    md.set_str("general.architecture", "llama");
    md.set_u32("llama.block_count", 1);
    let names = [
        "token_embd.weight",
        "blk.0.attn_norm.weight",
        "output.weight",
    ];
    (0..3)
        .map(|i| {
            let m = kiln::gguf::split::shard_metadata(&md, i, 3, 3, 1);
            let t = TensorEntry {
                name: names[i].into(),
                dims: vec![8],
                ty: TypeId::of(GgmlType::F32),
                bytes: 32,
            };
            let (mut out, _) = header_bytes(&m, std::slice::from_ref(&t));
            out.extend(std::iter::repeat_n(0x22u8, 32));
            out
        })
        .collect()
}

#[test]
fn split_gguf_reader_never_panics() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutation-split");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = split_shards();
    let path = |i: usize| dir.join(format!("m-{:05}-of-00003.gguf", i + 1));
    let write_all = || {
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(path(i), s).unwrap();
        }
    };
    write_all();
    let shards = kiln::gguf::split::open_shards(&path(0)).expect("the seed set is valid");
    assert_eq!(shards.len(), 3);
    // Each shard in turn mutated (the others intact), opened from the first.
    for k in 0..3 {
        write_all();
        no_panics("split", &seeds[k..k + 1], 300, 300, |b| {
            std::fs::write(path(k), b).unwrap();
            let _ = kiln::gguf::split::open_shards(&path(0));
        });
    }
}

fn safetensors_file(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, dtype, shape) in tensors {
        let size = match *dtype {
            "F32" => 4,
            "I64" => 8,
            "F8_E4M3" => 1,
            _ => 2,
        } * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + size]}),
        );
        off += size;
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(vec![0u8; off]);
    out
}

#[test]
fn safetensors_header_parser_never_panics() {
    let seeds = vec![
        safetensors_file(&[("a", "F32", &[2, 3]), ("b", "BF16", &[4])]),
        safetensors_file(&[("x", "F16", &[8, 2]), ("ids", "I64", &[3])]),
    ];
    for s in &seeds {
        assert!(kiln::source::safetensors::parse_header(s, 0).is_ok());
    }
    no_panics("safetensors", &seeds, 200, 100_000, |b| {
        if let Ok(ts) = kiln::source::safetensors::parse_header(b, 0) {
            for t in ts {
                assert!(t.byte_range().end <= b.len());
            }
        }
    });
}

#[test]
fn fp8_scale_pairing_never_panics() {
    use kiln::source::fp8;
    // A 4 x 6 fp8 weight with 2 x 4 blocks (scale [2, 2]), and a bf16 norm.
    let mut seed = safetensors_file(&[
        ("w", "F8_E4M3", &[4, 6]),
        ("w_scale_inv", "F32", &[2, 2]),
        ("n", "BF16", &[6]),
    ]);
    let n = seed.len();
    for (i, b) in seed[n - 24 - 16 - 12..n - 12].iter_mut().enumerate() {
        *b = (i * 37 % 251) as u8;
    }
    let q = fp8::Quantization::Fp8 {
        block: Some([2, 4]),
    };
    let run = |b: &[u8]| {
        let Ok(ts) = kiln::source::safetensors::parse_header(b, 0) else {
            return;
        };
        let Ok(ts) = fp8::attach_scales(&q, ts, |t| t.name.clone()) else {
            return;
        };
        for t in &ts {
            let Some(s) = &t.scale else { continue };
            let scales = fp8::scale_values(s, &b[s.tensor.byte_range()]);
            let codes = &b[t.byte_range()];
            let cols = *t.shape.last().unwrap();
            let mut out = vec![0f32; cols];
            for (r, row) in codes.chunks_exact(cols.max(1)).enumerate() {
                fp8::dequant_row(s.layout, &t.shape, &scales, r, row, &mut out);
                for c in 0..cols {
                    let _ = fp8::scale_at(s.layout, &t.shape, &scales, r, c);
                }
            }
        }
    };
    let ts = kiln::source::safetensors::parse_header(&seed, 0).unwrap();
    let ts = fp8::attach_scales(&q, ts, |t| t.name.clone()).unwrap();
    assert!(
        ts.iter().any(|t| t.scale.is_some()),
        "the seed pairs its scale"
    );
    no_panics("fp8", &[seed], 300, 50_000, run);
}

#[test]
fn sentencepiece_reader_never_panics() {
    let model = std::fs::read(kiln_fixtures::tokenizer_model()).unwrap();
    // The first pieces and the specs at the end, where the structure is.
    let mut head = model[..4096].to_vec();
    head.truncate(head.len() - 7);
    let tail = model[model.len() - 2048..].to_vec();
    assert!(kiln::tokenizer::spm::parse_model(&model).is_ok());
    no_panics("spm", &[head, tail], 4096, 20_000, |b| {
        let _ = kiln::tokenizer::spm::parse_model(b);
    });
}

#[test]
fn legacy_imatrix_reader_never_panics() {
    let v = vec![1.5f32; 16];
    let seed =
        kiln::imatrix::encode_legacy(&[("blk.0.attn_q.weight", 3, &v), ("output.weight", 0, &v)]);
    assert!(kiln::imatrix::parse_legacy(&seed).is_ok());
    no_panics("imatrix", &[seed], 200, 200_000, |b| {
        let _ = kiln::imatrix::parse_legacy(b);
    });
}

#[test]
fn tokenizer_json_path_never_panics() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mutation-tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 5, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false,
            "vocab": {"a": 0, "b": 1, "ab": 2, "\u{120}": 3, "\u{120}ab": 4},
            "merges": ["a b", "\u{120} ab"]}
    });
    let seed = serde_json::to_vec(&tj).unwrap();
    let run = |b: &[u8]| {
        std::fs::write(dir.join("tokenizer.json"), b).unwrap();
        let mut md = Metadata::new();
        let _ = kiln::tokenizer::write_vocab(
            &dir,
            kiln::tokenizer::VocabRecipe::SentencePieceElseBpe,
            None,
            &mut md,
        );
    };
    std::fs::write(dir.join("tokenizer.json"), &seed).unwrap();
    let mut md = Metadata::new();
    let info = kiln::tokenizer::write_vocab(
        &dir,
        kiln::tokenizer::VocabRecipe::SentencePieceElseBpe,
        None,
        &mut md,
    );
    assert!(info.is_ok(), "the seed is valid: {:?}", info.err());
    no_panics("tokenizer_json", &[seed], 1200, 2_000, run);
}

/// The harness itself: a panic in one mutated input fails the run.
#[test]
#[should_panic(expected = "selftest: seed 0")]
fn the_harness_reports_a_panic() {
    no_panics("selftest", &[vec![1, 2, 3, 4]], 4, 1000, |b| {
        assert_eq!(b.len(), 4)
    });
}
