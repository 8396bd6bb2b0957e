//! Corrupt and hostile inputs through the `kiln` binary: every case must fail with exit status
//! non-zero, one `kiln: error:` line naming the file and the problem, no panic, and nothing left
//! in the output folder (no output file, no `*.partial` temporary).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("bad_input", name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The small valid checkpoint (2 BF16 shards + index, SentencePiece tokenizer), written once.
fn base_checkpoint() -> &'static Path {
    static CK: OnceLock<PathBuf> = OnceLock::new();
    CK.get_or_init(|| {
        let d = tmp("base").join("ck");
        crate::common::fixtures::sized_llama_checkpoint(&d, 64, 128, 1, 2, 1);
        for f in [SHARD1, SHARD2, INDEX, "config.json", "tokenizer.model"] {
            assert!(d.join(f).exists(), "fixture lacks {f}");
        }
        d
    })
}

/// A valid f32 GGUF of the base checkpoint, written once.
fn base_gguf() -> &'static [u8] {
    static G: OnceLock<Vec<u8>> = OnceLock::new();
    G.get_or_init(|| {
        let out = tmp("base_gguf").join("x.gguf");
        let o = kiln()
            .args(["quantize", "-t", "f32"])
            .arg(base_checkpoint())
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&out).unwrap()
    })
}

/// A copy of the base checkpoint in a fresh case folder; returns (checkpoint, output folder).
fn case(name: &str) -> (PathBuf, PathBuf) {
    let d = tmp(name);
    let ck = d.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(base_checkpoint()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (ck, out)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A failed run: non-zero exit, an error line containing every needle (and one of `any`, when
/// given), no panic.
fn assert_clean_failure(o: &Output, needles: &[&str], any: &[&str], what: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "{what}: should fail: {e}");
    assert!(e.contains("kiln: error:"), "{what}: no error line: {e}");
    for n in needles {
        assert!(e.contains(n), "{what}: stderr lacks {n:?}: {e}");
    }
    if !any.is_empty() {
        assert!(
            any.iter().any(|n| e.contains(n)),
            "{what}: stderr names none of {any:?}: {e}"
        );
    }
    assert!(!e.contains("panicked"), "{what}: panic: {e}");
    let line = e
        .lines()
        .find(|l| l.contains("kiln: error:"))
        .unwrap_or_default();
    eprintln!("{what}: {line}");
}

/// `kiln quantize -t TY INPUT -o OUT/out.gguf [extra]` must fail cleanly and leave `out` empty.
fn quantize_fails(
    ty: &str,
    input: &Path,
    out: &Path,
    extra: &[&str],
    needles: &[&str],
    any: &[&str],
    what: &str,
) {
    let before = listing(out);
    let o = kiln()
        .args(["quantize", "-t", ty])
        .arg(input)
        .arg("-o")
        .arg(out.join("out.gguf"))
        .args(extra)
        .output()
        .unwrap();
    assert_clean_failure(&o, needles, any, what);
    assert_eq!(listing(out), before, "{what}: output folder changed");
}

/// `kiln inspect FILE` and `kiln quantize -t q8_0 FILE` must both fail cleanly.
fn gguf_fails(path: &Path, out: &Path, needles: &[&str], any: &[&str], what: &str) {
    let o = kiln().arg("inspect").arg(path).output().unwrap();
    assert_clean_failure(&o, needles, any, &format!("inspect {what}"));
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut n = needles.to_vec();
    n.push(name);
    quantize_fails(
        "q8_0",
        path,
        out,
        &["--allow-requantize"],
        &n,
        any,
        &format!("quantize {what}"),
    );
}

// ---- safetensors helpers ----

/// (header length, header JSON, data) of a safetensors file.
fn split_safetensors(b: &[u8]) -> (usize, serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    (n, h, b[8 + n..].to_vec())
}

/// 8-byte length + header (padded with spaces to 8 bytes) + data.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&h);
    b.extend_from_slice(data);
    b
}

/// Which shard holds a tensor, per the index.
fn shard_of(ck: &Path, tensor: &str) -> String {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join(INDEX)).unwrap()).unwrap();
    j["weight_map"][tensor].as_str().unwrap().to_string()
}

/// A checkpoint folder whose only weights file is the given model.safetensors bytes.
fn single_file_case(name: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
    let (ck, out) = case(name);
    std::fs::remove_file(ck.join(SHARD1)).unwrap();
    std::fs::remove_file(ck.join(SHARD2)).unwrap();
    std::fs::remove_file(ck.join(INDEX)).unwrap();
    std::fs::write(ck.join("model.safetensors"), bytes).unwrap();
    (ck, out)
}

#[test]
fn truncated_safetensors_shards() {
    let full = std::fs::read(base_checkpoint().join(SHARD1)).unwrap();
    let n = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let cuts = [
        0,
        4,
        8,
        9,
        8 + n / 2,
        8 + n,
        8 + n + (full.len() - 8 - n) / 2,
        full.len() - 1,
    ];
    let (ck, out) = case("trunc_st");
    for cut in cuts {
        std::fs::write(ck.join(SHARD1), &full[..cut]).unwrap();
        quantize_fails(
            "q8_0",
            &ck,
            &out,
            &[],
            &[SHARD1],
            &["truncated", "too short"],
            &format!("safetensors cut at {cut}"),
        );
    }
}

#[test]
fn malformed_safetensors_headers() {
    let cfg_f32 = |name: &str, shape: &str, a: usize, b: usize| {
        format!(r#""{name}":{{"dtype":"F32","shape":{shape},"data_offsets":[{a},{b}]}}"#)
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "not_json",
            safetensors_bytes("this is not json at all!", &[0; 16]),
            &["JSON"],
        ),
        (
            "len_past_end",
            {
                let mut b = 4096u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{\"a\":1}");
                b
            },
            &["runs past the end"],
        ),
        (
            "len_over_100mb",
            {
                let mut b = (200u64 << 20).to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                b
            },
            &["100 MB"],
        ),
        (
            "offsets_past_end",
            safetensors_bytes(&format!("{{{}}}", cfg_f32("a", "[4]", 0, 16)), &[0; 8]),
            &["tensor a", "truncated"],
        ),
        (
            "overlap",
            safetensors_bytes(
                &format!(
                    "{{{},{}}}",
                    cfg_f32("a", "[4]", 0, 16),
                    cfg_f32("b", "[4]", 8, 24)
                ),
                &[0; 24],
            ),
            &["overlap"],
        ),
        (
            "shape_vs_range",
            safetensors_bytes(&format!("{{{}}}", cfg_f32("a", "[3]", 0, 16)), &[0; 16]),
            &["tensor a", "[3]", "needs 12 bytes"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let (ck, out) = single_file_case(name, &bytes);
        let mut n = needles.to_vec();
        n.push("model.safetensors");
        quantize_fails("q8_0", &ck, &out, &[], &n, &[], name);
    }
}

#[test]
fn unsupported_dtypes_name_the_tensor() {
    let tensor = "model.layers.0.mlp.up_proj.weight";
    for (dtype, elem) in [("I64", 8usize), ("F8_E4M3", 1)] {
        let (ck, out) = case(&format!("dtype_{dtype}"));
        let shard = shard_of(&ck, tensor);
        let (_, mut h, data) = split_safetensors(&std::fs::read(ck.join(&shard)).unwrap());
        let t = &mut h[tensor];
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        // Same byte range, re-read as `dtype` (BF16 source: 2 bytes an element).
        let bytes = shape.iter().product::<u64>() * 2;
        t["dtype"] = dtype.into();
        t["shape"] = serde_json::json!([shape[0], bytes / shape[0] / elem as u64]);
        std::fs::write(ck.join(&shard), safetensors_bytes(&h.to_string(), &data)).unwrap();
        quantize_fails("q8_0", &ck, &out, &[], &[tensor, dtype], &[], dtype);
    }
}

#[test]
fn broken_shard_sets() {
    // A shard the index names is missing.
    let (ck, out) = case("missing_shard");
    std::fs::remove_file(ck.join(SHARD2)).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &[INDEX, SHARD2, "missing"],
        &[],
        "missing shard",
    );

    // The index names a tensor its shard does not hold.
    let (ck, out) = case("index_extra_tensor");
    let p = ck.join(INDEX);
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    j["weight_map"]["model.layers.0.ghost.weight"] = SHARD1.into();
    std::fs::write(&p, j.to_string()).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &[INDEX, "model.layers.0.ghost.weight", SHARD1],
        &[],
        "index names an absent tensor",
    );

    // The index puts a real tensor in the wrong shard.
    let (ck, out) = case("index_wrong_shard");
    let p = ck.join(INDEX);
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let t = "lm_head.weight";
    let wrong = if shard_of(&ck, t) == SHARD1 {
        SHARD2
    } else {
        SHARD1
    };
    j["weight_map"][t] = wrong.into();
    std::fs::write(&p, j.to_string()).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &[INDEX, t],
        &[],
        "index wrong shard",
    );
}

#[test]
fn broken_configs() {
    let (ck, out) = case("config_missing");
    std::fs::remove_file(ck.join("config.json")).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &["config.json", "missing"],
        &[],
        "no config",
    );

    let (ck, out) = case("config_not_json");
    std::fs::write(ck.join("config.json"), "{ hidden_size: 64, oops").unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &["config.json", "JSON"],
        &[],
        "config not JSON",
    );

    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base_checkpoint().join("config.json")).unwrap())
            .unwrap();
    for key in ["hidden_size", "num_hidden_layers"] {
        let (ck, out) = case(&format!("config_no_{key}"));
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(key);
        std::fs::write(ck.join("config.json"), c.to_string()).unwrap();
        quantize_fails("q8_0", &ck, &out, &[], &["config.json", key], &[], key);
    }

    let (ck, out) = case("config_arch");
    let mut c = base.clone();
    c["architectures"] = serde_json::json!(["FrobnicatorForCausalLM"]);
    c["model_type"] = "frobnicator".into();
    std::fs::write(ck.join("config.json"), c.to_string()).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &[
            "FrobnicatorForCausalLM",
            "LlamaForCausalLM",
            "Qwen2ForCausalLM",
        ],
        &[],
        "unsupported architecture",
    );
}

#[test]
fn broken_tokenizers() {
    let (ck, out) = case("tok_absent");
    std::fs::remove_file(ck.join("tokenizer.model")).unwrap();
    let _ = std::fs::remove_file(ck.join("tokenizer.json"));
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &["tokenizer.model", "tokenizer.json"],
        &[],
        "no tokenizer",
    );

    let (ck, out) = case("tok_garbage_model");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(ck.join("tokenizer.model"), &garbage).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &["tokenizer.model"],
        &[],
        "garbage tokenizer.model",
    );

    let (ck, out) = case("tok_json_not_json");
    std::fs::remove_file(ck.join("tokenizer.model")).unwrap();
    std::fs::write(
        ck.join("tokenizer.json"),
        "{\"model\": {\"type\": \"BPE\", ",
    )
    .unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &["tokenizer.json", "JSON"],
        &[],
        "tokenizer.json not JSON",
    );
}

#[test]
fn non_finite_weights_name_tensor_and_row() {
    let tensor = "model.layers.0.mlp.up_proj.weight";
    for (label, bits) in [("nan", 0x7fc0u16), ("inf", 0x7f80), ("-inf", 0xff80)] {
        let (ck, out) = case(&format!("nonfinite_{label}"));
        let shard = shard_of(&ck, tensor);
        let p = ck.join(&shard);
        let mut b = std::fs::read(&p).unwrap();
        let (n, h, _) = split_safetensors(&b);
        let t = &h[tensor];
        assert_eq!(t["dtype"], "BF16");
        let cols = t["shape"][1].as_u64().unwrap() as usize;
        let start = t["data_offsets"][0].as_u64().unwrap() as usize;
        let (row, col) = (3usize, 5usize);
        let at = 8 + n + start + (row * cols + col) * 2;
        b[at..at + 2].copy_from_slice(&bits.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        for ty in ["f32", "q8_0", "q4_0"] {
            quantize_fails(
                ty,
                &ck,
                &out,
                &[],
                &[
                    &shard,
                    tensor,
                    "blk.0.ffn_up.weight",
                    "row 3, column 5",
                    "non-finite",
                ],
                &[],
                &format!("{label} weight to {ty}"),
            );
        }
    }
}

#[test]
fn non_finite_weights_in_permuted_tensors_name_the_source_row() {
    // Llama's q rows are permuted on the way; the error gives the row of the source tensor.
    let tensor = "model.layers.0.self_attn.q_proj.weight";
    let (ck, out) = case("nonfinite_permuted");
    let shard = shard_of(&ck, tensor);
    let p = ck.join(&shard);
    let mut b = std::fs::read(&p).unwrap();
    let (n, h, _) = split_safetensors(&b);
    let t = &h[tensor];
    let cols = t["shape"][1].as_u64().unwrap() as usize;
    let start = t["data_offsets"][0].as_u64().unwrap() as usize;
    let (row, col) = (3usize, 7usize);
    let at = 8 + n + start + (row * cols + col) * 2;
    b[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &[
            &shard,
            tensor,
            "blk.0.attn_q.weight",
            "row 3, column 7",
            "NaN",
        ],
        &[],
        "NaN in a permuted tensor",
    );
}

// ---- GGUF helpers ----

/// Byte offset of the tensor-info entry of `name` (its length-prefixed name) in a GGUF file.
fn tensor_info_at(g: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let h = kiln::gguf::reader::parse(g).unwrap();
    let region = &g[..h.data_offset as usize];
    region
        .windows(pat.len())
        .rposition(|w| w == pat.as_slice())
        .unwrap_or_else(|| panic!("{name} not found in the tensor infos"))
}

/// Offsets of (type id, data offset) fields of a tensor's info entry.
fn tensor_fields(g: &[u8], name: &str) -> (usize, usize) {
    let at = tensor_info_at(g, name) + 8 + name.len();
    let n_dims = u32::from_le_bytes(g[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    (ty, ty + 4)
}

/// The base GGUF with bits `mask` flipped in the data of tensor `name`, at the byte `offset`
/// picks from the tensor's size.
fn base_gguf_damaged(name: &str, offset: impl FnOnce(u64) -> u64, mask: u8) -> Vec<u8> {
    let mut g = base_gguf().to_vec();
    let h = kiln::gguf::reader::parse(&g).unwrap();
    let t = h.tensors.iter().find(|t| t.name == name).unwrap();
    g[(h.data_offset + t.offset + offset(t.bytes)) as usize] ^= mask;
    g
}

#[test]
fn corrupt_gguf_inputs() {
    let g = base_gguf();
    let h = kiln::gguf::reader::parse(g).unwrap();
    let d = tmp("gguf");
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // Truncated at many points: magic, version, counts, inside the metadata, inside the
    // tensor infos, at the data section, inside the data, one byte short.
    let first_info = tensor_info_at(g, &h.tensors[0].name);
    let data = h.data_offset as usize;
    let cuts = [
        0,
        2,
        4,
        6,
        8,
        16,
        24,
        30,
        first_info / 3,
        first_info / 2,
        first_info - 1,
        first_info + 5,
        (first_info + data) / 2,
        data,
        data + (g.len() - data) / 2,
        g.len() - 1,
    ];
    for cut in cuts {
        let p = write("cut.gguf", &g[..cut]);
        gguf_fails(
            &p,
            &out,
            &["cut.gguf", "truncated"],
            &[],
            &format!("gguf cut at {cut}"),
        );
    }

    let mut b = g.to_vec();
    b[..4].copy_from_slice(b"GGUG");
    let p = write("magic.gguf", &b);
    gguf_fails(&p, &out, &["magic.gguf", "bad magic"], &[], "bad magic");

    for v in [1u32, 99] {
        let mut b = g.to_vec();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let p = write("version.gguf", &b);
        gguf_fails(
            &p,
            &out,
            &["version.gguf", &format!("version {v}")],
            &[],
            &format!("version {v}"),
        );
    }

    // Duplicate tensor names: rename attn_k to attn_q (same length).
    let mut b = g.to_vec();
    let at = tensor_info_at(g, "blk.0.attn_k.weight") + 8;
    b[at..at + 19].copy_from_slice(b"blk.0.attn_q.weight");
    let p = write("dup.gguf", &b);
    gguf_fails(
        &p,
        &out,
        &["dup.gguf", "duplicate tensor name"],
        &[],
        "duplicate names",
    );

    // Misaligned data offset.
    let name = &h.tensors[1].name;
    let (_, off) = tensor_fields(g, name);
    let mut b = g.to_vec();
    let o = u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) + 4;
    b[off..off + 8].copy_from_slice(&o.to_le_bytes());
    let p = write("misaligned.gguf", &b);
    gguf_fails(
        &p,
        &out,
        &["misaligned.gguf", name, "alignment"],
        &[],
        "misaligned",
    );

    // Offset past the end of the file.
    let mut b = g.to_vec();
    b[off..off + 8].copy_from_slice(&(g.len() as u64 * 64).to_le_bytes());
    let p = write("past_end.gguf", &b);
    gguf_fails(
        &p,
        &out,
        &["past_end.gguf", name],
        &["truncated"],
        "offset past end",
    );

    // Unknown tensor type id.
    let (ty, _) = tensor_fields(g, name);
    let mut b = g.to_vec();
    b[ty..ty + 4].copy_from_slice(&77u32.to_le_bytes());
    let p = write("type.gguf", &b);
    gguf_fails(
        &p,
        &out,
        &["type.gguf", name, "unknown ggml type id 77"],
        &[],
        "unknown type",
    );

    // Huge tensor and key-value counts.
    for (at, label) in [(8usize, "tensor"), (16, "key-value")] {
        let mut b = g.to_vec();
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let p = write("counts.gguf", &b);
        gguf_fails(&p, &out, &["counts.gguf", label, "cannot fit"], &[], label);
    }
}

// ---- importance matrices ----

#[test]
fn imatrix_for_another_model_or_truncated() {
    let (ck, out) = case("imatrix");
    let wrong = vec![1.0f32; 96];
    let b = kiln::imatrix::encode_legacy(&[
        ("blk.0.attn_q.weight", 10, &wrong),
        ("blk.0.ffn_up.weight", 10, &wrong),
        ("blk.0.ffn_down.weight", 10, &wrong),
    ]);
    let p = out.parent().unwrap().join("other.dat");
    std::fs::write(&p, &b).unwrap();
    quantize_fails(
        "q4_0",
        &ck,
        &out,
        &["--imatrix", p.to_str().unwrap()],
        &["other.dat", "96 values", "another model"],
        &[],
        "imatrix of another model",
    );

    let unrelated = kiln::imatrix::encode_legacy(&[("blk.99.nothing.weight", 1, &[1.0; 64])]);
    let p = out.parent().unwrap().join("unrelated.dat");
    std::fs::write(&p, &unrelated).unwrap();
    quantize_fails(
        "q4_0",
        &ck,
        &out,
        &["--imatrix", p.to_str().unwrap()],
        &["unrelated.dat", "another model"],
        &[],
        "imatrix with no matching entry",
    );

    let good = vec![1.0f32; 64];
    let b = kiln::imatrix::encode_legacy(&[("blk.0.attn_q.weight", 10, &good)]);
    let p = out.parent().unwrap().join("cut.dat");
    for cut in [0, 3, 4, 10, 30, b.len() / 2, b.len() - 1] {
        std::fs::write(&p, &b[..cut]).unwrap();
        quantize_fails(
            "q4_0",
            &ck,
            &out,
            &["--imatrix", p.to_str().unwrap()],
            &["cut.dat"],
            &["truncated", "entry count"],
            &format!("imatrix cut at {cut}"),
        );
    }
}

/// An importance matrix in llama-imatrix's GGUF format with these tensors (name, dims, type,
/// little-endian data).
fn imatrix_gguf(path: &Path, tensors: &[(&str, Vec<u64>, kiln::kernels::GgmlType, Vec<u8>)]) {
    use kiln::gguf::writer::{GgufWriter, TensorEntry};
    let mut md = kiln::gguf::Metadata::new();
    md.set_str("general.type", "imatrix");
    md.set_u32("imatrix.chunk_count", 1);
    md.set_u32("imatrix.chunk_size", 512);
    let entries = tensors
        .iter()
        .map(|(n, dims, ty, data)| TensorEntry {
            name: n.to_string(),
            dims: dims.clone(),
            ty: kiln::gguf::TypeId::of(*ty),
            bytes: data.len() as u64,
        })
        .collect();
    let mut w = GgufWriter::create(path, true, &md, entries).unwrap();
    for (_, _, _, data) in tensors {
        w.write(data).unwrap();
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Malformed importance matrices in llama-imatrix's GGUF format: cut short, sums of the wrong
/// length for the tensor, sums that do not split into the counts' matrices, matrices where
/// the tensor has one, sums without counts and counts without sums, a type other than f32, a
/// non-finite sum. Each is one error line naming the file, before any output.
#[test]
fn malformed_gguf_imatrix_files() {
    use kiln::kernels::GgmlType::{F16, F32};
    let (ck, out) = case("imatrix_gguf");
    let dir = out.parent().unwrap().to_path_buf();
    const Q: &str = "blk.0.attn_q.weight";
    let sums = |n: usize| f32_bytes(&vec![2.0; n]);
    let counts = |n: usize| f32_bytes(&vec![4.0; n]);
    let good = vec![
        ("blk.0.attn_q.weight.in_sum2", vec![64], F32, sums(64)),
        ("blk.0.attn_q.weight.counts", vec![1], F32, counts(1)),
    ];
    // The well-formed file is accepted (the cases below fail for their defect alone).
    let p = dir.join("good.gguf");
    imatrix_gguf(&p, &good);
    let o = kiln()
        .args(["quantize", "-t", "q4_0"])
        .arg(&ck)
        .arg("-o")
        .arg(dir.join("good-out.gguf"))
        .args(["--imatrix", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.join("cut.gguf");
    for at in [3, 20, 60, bytes.len() - 300, bytes.len() - 31] {
        std::fs::write(&cut, &bytes[..at]).unwrap();
        quantize_fails(
            "q4_0",
            &ck,
            &out,
            &["--imatrix", cut.to_str().unwrap()],
            &["cut.gguf"],
            &[],
            &format!("GGUF imatrix cut at {at}"),
        );
    }
    let sum_name = format!("{Q}.in_sum2");
    let count_name = format!("{Q}.counts");
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        Vec<(&str, Vec<u64>, kiln::kernels::GgmlType, Vec<u8>)>,
        &[&str],
    )> = vec![
        (
            "short_sums",
            vec![
                (&sum_name, vec![48], F32, sums(48)),
                (&count_name, vec![1], F32, counts(1)),
            ],
            &["48 values", Q, "another model"],
        ),
        (
            "uneven",
            vec![
                (&sum_name, vec![64], F32, sums(64)),
                (&count_name, vec![3], F32, counts(3)),
            ],
            &["64 sums do not split into 3 matrices"],
        ),
        (
            "two_matrices",
            vec![
                (&sum_name, vec![64, 2], F32, sums(128)),
                (&count_name, vec![1, 2], F32, counts(2)),
            ],
            &["128 values", Q],
        ),
        (
            "no_counts",
            vec![(&sum_name, vec![64], F32, sums(64))],
            &["sums but no counts"],
        ),
        (
            "no_sums",
            vec![
                (&sum_name, vec![64], F32, sums(64)),
                (&count_name, vec![1], F32, counts(1)),
                ("blk.0.attn_k.weight.counts", vec![1], F32, counts(1)),
            ],
            &["blk.0.attn_k.weight.counts", "no matching .in_sum2"],
        ),
        (
            "f16",
            vec![
                (&sum_name, vec![64], F16, vec![0u8; 128]),
                (&count_name, vec![1], F32, counts(1)),
            ],
            &["not f32"],
        ),
        (
            "nan",
            vec![
                (&sum_name, vec![64], F32, {
                    let mut v = vec![2.0f32; 64];
                    v[7] = f32::NAN;
                    f32_bytes(&v)
                }),
                (&count_name, vec![1], F32, counts(1)),
            ],
            &["non-finite", "column 7"],
        ),
    ];
    for (label, tensors, needles) in cases {
        let p = dir.join(format!("{label}.gguf"));
        imatrix_gguf(&p, &tensors);
        let mut n = needles.to_vec();
        let file = format!("{label}.gguf");
        n.push(&file);
        quantize_fails(
            "q4_0",
            &ck,
            &out,
            &["--imatrix", p.to_str().unwrap()],
            &n,
            &[],
            label,
        );
        let o = kiln()
            .args(["quantize", "-t", "q4_0"])
            .arg(&ck)
            .arg("-o")
            .arg(out.join("out.gguf"))
            .args(["--imatrix", p.to_str().unwrap()])
            .output()
            .unwrap();
        let errors = stderr(&o).lines().filter(|l| l.contains("error")).count();
        assert_eq!(errors, 1, "{label}: one error line: {}", stderr(&o));
    }
}

// ---- output safety ----

#[test]
fn existing_output_is_untouched_without_force() {
    let (ck, out) = case("exists");
    let target = out.join("out.gguf");
    std::fs::write(&target, b"precious").unwrap();
    quantize_fails(
        "q8_0",
        &ck,
        &out,
        &[],
        &["out.gguf", "already exists"],
        &[],
        "exists",
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn unwritable_output_folders() {
    let (ck, out) = case("unwritable");
    let o = kiln()
        .args(["quantize", "-t", "q8_0"])
        .arg(&ck)
        .arg("-o")
        .arg(out.join("no/such/dir/out.gguf"))
        .output()
        .unwrap();
    assert_clean_failure(&o, &["no/such/dir"], &[], "missing folder");
    assert!(listing(&out).is_empty());

    // A read-only folder. Root may write anyway: then the run drops to user nobody with
    // setpriv (util-linux), which may read the checkpoint but not write into the folder.
    use std::os::unix::fs::PermissionsExt;
    let ro = out.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let writable = std::fs::write(ro.join("probe"), b"x").is_ok();
    let _ = std::fs::remove_file(ro.join("probe"));
    let mut cmd = if writable {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_kiln"));
        c
    } else {
        kiln()
    };
    let o = cmd
        .args(["quantize", "-t", "q8_0"])
        .arg(&ck)
        .arg("-o")
        .arg(ro.join("out.gguf"))
        .output();
    match o {
        Ok(o) if writable && stderr(&o).contains("setpriv:") => {
            eprintln!(
                "read-only folder case skipped: setpriv failed: {}",
                stderr(&o)
            )
        }
        Ok(o) => {
            assert_clean_failure(&o, &["ro", "Permission denied"], &[], "read-only folder");
            assert!(
                listing(&ro).is_empty(),
                "read-only folder: {:?}",
                listing(&ro)
            );
        }
        Err(e) => eprintln!("read-only folder case skipped: no setpriv to drop root ({e})"),
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn disk_full_leaves_no_partial_file() {
    let (ck, out) = case("disk_full");
    // 100 blocks of 1 KiB: the 16 MB output cannot fit.
    let cmd = format!(
        "ulimit -f 100; exec '{}' quantize -t f32 '{}' -o '{}'",
        env!("CARGO_BIN_EXE_kiln"),
        ck.display(),
        out.join("out.gguf").display()
    );
    let o = Command::new("bash").args(["-c", &cmd]).output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.signal().is_none(),
        "killed by signal {:?}: {}",
        o.status.signal(),
        stderr(&o)
    );
    assert_clean_failure(
        &o,
        &["out.gguf"],
        &["too large", "File too large", "No space"],
        "disk full",
    );
    assert!(listing(&out).is_empty(), "left: {:?}", listing(&out));
}

/// Written files carry kiln's checksum: `kiln inspect --verify` passes on the file as written,
/// names the tensor and byte range when one bit of its data flips, and reports a check that
/// another tool carried over (llama-quantize copies every key) as not applicable, not damage.
#[test]
fn damaged_output_is_caught_by_inspect_verify() {
    let d = tmp("checksum");
    let good = d.join("good.gguf");
    std::fs::write(&good, base_gguf()).unwrap();
    let o = kiln()
        .args(["inspect", "--verify"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("checksum: ok"), "{text}");

    // One bit of blk.0.attn_k.weight's data flipped.
    let bad = d.join("bad.gguf");
    std::fs::write(
        &bad,
        base_gguf_damaged("blk.0.attn_k.weight", |n| n / 2, 0x10),
    )
    .unwrap();
    let o = kiln()
        .args(["inspect", "--verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_clean_failure(
        &o,
        &["bad.gguf", "blk.0.attn_k.weight", "damaged"],
        &[],
        "flipped bit",
    );
    // Without --verify the header alone is read, and it is fine.
    let o = kiln().arg("inspect").arg(&bad).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // llama.cpp's quantizer keeps kiln's keys, which then describe other tensors.
    let theirs = d.join("theirs-q8_0.gguf");
    let o = kiln()
        .args(["llama-quantize", "--type", "q8_0"])
        .arg(&good)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln()
        .args(["inspect", "--verify", "--json"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["checksum"]["status"], "stale");
    assert!(j["metadata"]
        .as_object()
        .unwrap()
        .contains_key("kiln.checksum.xxh3_64"));

    // A file written with --no-checksum has none to verify.
    let plain = d.join("plain.gguf");
    let o = kiln()
        .args(["quantize", "-t", "q8_0", "--no-checksum"])
        .arg(&good)
        .arg("-o")
        .arg(&plain)
        .arg("--allow-requantize")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kiln()
        .args(["inspect", "--verify", "--json"])
        .arg(&plain)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["checksum"]["status"], "absent");
    assert!(!j["metadata"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.starts_with("kiln.")));
}

/// A GGUF input whose data no longer matches kiln's checksum is refused before anything is
/// written, naming the file and the tensor.
#[test]
fn damaged_gguf_input_is_refused() {
    let d = tmp("damaged_input");
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let path = d.join("in.gguf");
    std::fs::write(&path, base_gguf_damaged("output_norm.weight", |_| 2, 0x01)).unwrap();
    quantize_fails(
        "q8_0",
        &path,
        &out,
        &[],
        &["in.gguf", "output_norm.weight", "damaged"],
        &[],
        "damaged GGUF input",
    );
}

// ---- config.json (or GGUF metadata) that disagrees with the tensors ----

/// A fixture checkpoint written once per name; each case copies it and edits config.json.
fn shape_fixture(name: &str, spec: kiln_fixtures::checkpoint::FixtureSpec) -> PathBuf {
    let d = tmp(&format!("shape_{name}")).join("ck");
    kiln_fixtures::checkpoint::write_checkpoint(&spec, &d).unwrap();
    d
}

/// Copies `src` into a fresh case folder with config.json's `key` set to `value` (or removed
/// for null); returns (checkpoint, output folder).
fn with_config(
    src: &Path,
    case_name: &str,
    edits: &[(&str, serde_json::Value)],
) -> (PathBuf, PathBuf) {
    let d = tmp(case_name);
    let ck = d.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    for (k, v) in edits {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    std::fs::write(ck.join("config.json"), c.to_string()).unwrap();
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (ck, out)
}

/// The unedited fixture converts (nothing valid is refused), then every edit fails before any
/// output with one line naming config.json, the key with its value and the tensor.
fn config_disagreements(family: &str, src: &Path, cases: &[(&str, serde_json::Value, &[&str])]) {
    let (ck, out) = with_config(src, &format!("shape_{family}_valid"), &[]);
    let o = kiln()
        .args(["quantize", "-t", "f32"])
        .arg(&ck)
        .arg("-o")
        .arg(out.join("ok.gguf"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{family}: valid fixture refused: {}",
        stderr(&o)
    );
    for (i, (key, value, needles)) in cases.iter().enumerate() {
        let (ck, out) = with_config(src, &format!("shape_{family}_{i}"), &[(key, value.clone())]);
        let mut n = vec!["config.json"];
        n.extend_from_slice(needles);
        quantize_fails(
            "q8_0",
            &ck,
            &out,
            &[],
            &n,
            &[],
            &format!("{family}: {key} = {value}"),
        );
    }
}

/// Cases both dense fixtures (hidden 64, FFN 128, 2 layers) fail the same way.
fn shared_disagreements() -> Vec<(&'static str, serde_json::Value, &'static [&'static str])> {
    use serde_json::json;
    vec![
        (
            "num_hidden_layers",
            json!(1),
            &["num_hidden_layers = 1", "blk.1."],
        ),
        (
            "intermediate_size",
            json!(1024),
            &[
                "intermediate_size = 1024",
                "blk.0.ffn_gate.weight 64 x 1024",
                "64 x 128",
            ],
        ),
    ]
}

#[test]
fn llama_config_disagreeing_with_tensors() {
    use serde_json::json;
    // hidden 64, FFN 128, 2 layers, 4 heads of 16 on 2 KV heads.
    let src = shape_fixture("llama", kiln_fixtures::sized_llama(64, 128, 2, 4, 2));
    // As Llama 2's config.json: no head_dim (it is hidden_size / num_attention_heads).
    let cfg = src.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c.as_object_mut().unwrap().remove("head_dim");
    std::fs::write(&cfg, c.to_string()).unwrap();
    config_disagreements(
        "llama",
        &src,
        &[
            shared_disagreements(),
            vec![
                (
                    "num_hidden_layers",
                    json!(1_000_000_000u64),
                    &[
                        "num_hidden_layers = 1000000000",
                        "blk.2.attn_norm.weight",
                        "blk.1",
                    ],
                ),
                ("num_hidden_layers", json!(0), &["num_hidden_layers = 0"]),
                (
                    "num_hidden_layers",
                    json!(1u64 << 40),
                    &[
                        "num_hidden_layers = 1099511627776",
                        "blk.2.attn_norm.weight",
                    ],
                ),
                (
                    "hidden_size",
                    json!(512),
                    &[
                        "hidden_size = 512",
                        "token_embd.weight 512 x 32000",
                        "64 x 32000",
                    ],
                ),
                ("hidden_size", json!(0), &["hidden_size = 0"]),
                (
                    "num_key_value_heads",
                    json!(4),
                    &[
                        "num_key_value_heads = 4",
                        "blk.0.attn_k.weight 64 x 64",
                        "64 x 32",
                    ],
                ),
                (
                    "num_key_value_heads",
                    json!(1),
                    &[
                        "num_key_value_heads = 1",
                        "blk.0.attn_k.weight 64 x 16",
                        "64 x 32",
                    ],
                ),
                (
                    "num_attention_heads",
                    json!(6),
                    &["hidden_size = 64", "num_attention_heads = 6"],
                ),
                (
                    // head_dim 8 keeps attn_q 64 x 64 but gives attn_k 64 x 16.
                    "num_attention_heads",
                    json!(8),
                    &[
                        "num_key_value_heads = 2",
                        "head_dim = hidden_size / num_attention_heads = 64 / 8 = 8",
                        "blk.0.attn_k.weight 64 x 16",
                        "64 x 32",
                    ],
                ),
                (
                    "head_dim",
                    json!(32),
                    &["head_dim = 32", "blk.0.attn_q.weight 64 x 128", "64 x 64"],
                ),
                (
                    "vocab_size",
                    json!(100_000_000_000u64),
                    &["vocab_size = 100000000000", "token_embd.weight"],
                ),
            ],
        ]
        .concat(),
    );
}

#[test]
fn qwen3_config_disagreeing_with_tensors() {
    use kiln_fixtures::checkpoint::{default_for, Arch, FixtureSpec, Vocab};
    use serde_json::json;
    // hidden 64, FFN 128, 2 layers, 4 heads of 32 (q is 128 wide, not hidden) on 2 KV heads.
    let spec = FixtureSpec {
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ..default_for(Arch::Qwen3, Vocab::TrainedBpe { size: 300 })
    };
    let src = shape_fixture("qwen3", spec);
    config_disagreements(
        "qwen3",
        &src,
        &[
            shared_disagreements(),
            vec![
                (
                    "num_hidden_layers",
                    json!(1_000_000_000u64),
                    &["num_hidden_layers = 1000000000", "blk.2.attn_norm.weight"],
                ),
                (
                    "hidden_size",
                    json!(512),
                    &["hidden_size = 512", "token_embd.weight 512 x", "64 x"],
                ),
                (
                    "num_key_value_heads",
                    json!(4),
                    &[
                        "num_key_value_heads = 4",
                        "blk.0.attn_k.weight 64 x 128",
                        "64 x 64",
                    ],
                ),
                (
                    "head_dim",
                    json!(64),
                    &["head_dim = 64", "blk.0.attn_q.weight 64 x 256", "64 x 128"],
                ),
                (
                    // Qwen3's default head_dim (128) when config.json leaves it out.
                    "head_dim",
                    serde_json::Value::Null,
                    &[
                        "head_dim (not in config.json) = 128",
                        "blk.0.attn_q.weight 64 x 512",
                    ],
                ),
            ],
        ]
        .concat(),
    );
}

/// A copy of the base GGUF with metadata `key` set to `value` (tensors unchanged).
fn base_gguf_with(dst: &Path, key: &str, value: kiln::gguf::Value) {
    let src = tmp("gguf_md_src").join("src.gguf");
    std::fs::write(&src, base_gguf()).unwrap();
    crate::common::fixtures::gguf_with_metadata(&src, dst, key, value);
}

#[test]
fn gguf_metadata_disagreeing_with_tensors() {
    use kiln::gguf::Value;
    let d = tmp("gguf_shape");
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The base GGUF (1 block, hidden 64, FFN 128, 2 heads on 1 KV head) requantizes.
    let ok = d.join("ok.gguf");
    std::fs::write(&ok, base_gguf()).unwrap();
    let o = kiln()
        .args(["quantize", "-t", "q8_0"])
        .arg(&ok)
        .arg("-o")
        .arg(d.join("ok-q8.gguf"))
        .output()
        .unwrap();
    assert!(o.status.success(), "valid GGUF refused: {}", stderr(&o));

    let cases: &[(&str, Value, &[&str])] = &[
        (
            "llama.block_count",
            Value::U32(2),
            &["llama.block_count = 2", "blk.1.attn_norm.weight"],
        ),
        (
            "llama.block_count",
            Value::U32(1_000_000_000),
            &["llama.block_count = 1000000000", "blk.1.attn_norm.weight"],
        ),
        (
            "llama.block_count",
            Value::U32(0),
            &["llama.block_count = 0"],
        ),
        (
            "llama.embedding_length",
            Value::U32(128),
            &["llama.embedding_length = 128", "token_embd.weight 128 x"],
        ),
        (
            "llama.feed_forward_length",
            Value::U32(256),
            &[
                "llama.feed_forward_length = 256",
                "blk.0.ffn_gate.weight 64 x 256",
            ],
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(2),
            &[
                "llama.attention.head_count_kv = 2",
                "blk.0.attn_k.weight 64 x 64",
            ],
        ),
    ];
    for (i, (key, value, needles)) in cases.iter().enumerate() {
        let name = format!("edited{i}.gguf");
        let p = d.join(&name);
        base_gguf_with(&p, key, value.clone());
        let mut n = vec![name.as_str()];
        n.extend_from_slice(needles);
        quantize_fails(
            "q8_0",
            &p,
            &out,
            &[],
            &n,
            &[],
            &format!("{key} = {value:?}"),
        );
    }
}

// ---- llama-quantize's advanced options ----

/// Bad `--tensor-type`, `--tensor-type-file`, `--override-kv`, `--prune-layers` and
/// `--include-weights`/`--exclude-weights`: one error line naming the option and the problem,
/// before any work (no output, no temporary file).
#[test]
fn bad_quantize_options() {
    let (ck, out) = case("options");
    let dir = out.parent().unwrap().to_path_buf();
    let rules = dir.join("rules.txt");
    std::fs::write(&rules, "attn_q=q8_0\n  ffn_up=q4_K\tffn_down=q7_X\n").unwrap();
    let rules_re_path = dir.join("rules_re.txt");
    std::fs::write(&rules_re_path, "attn_q=q8_0\nffn_(up=q6_K\n").unwrap();
    let rules_re = rules_re_path.to_str().unwrap();
    let imatrix = dir.join("im.dat");
    std::fs::write(
        &imatrix,
        kiln::imatrix::encode_legacy(&[("blk.0.attn_q.weight", 1, &[1.0; 64])]),
    )
    .unwrap();
    let (rules, imatrix) = (rules.to_str().unwrap(), imatrix.to_str().unwrap());
    let cases: &[(&[&str], &[&str], &str)] = &[
        (
            &["--tensor-type", "attn_q=q9_9"],
            &["--tensor-type", "q9_9", "unknown tensor type"],
            "unknown type",
        ),
        (
            &["--tensor-type", "attn_q=nvfp4"],
            &["nvfp4", "kiln writes"],
            "a type kiln does not write",
        ),
        (
            &["--tensor-type", "attn_[q=q8_0"],
            &["--tensor-type", "bad regex", "attn_[q"],
            "bad regex",
        ),
        (
            &["--tensor-type", "blk.(0=q8_0"],
            &["bad regex", "blk.(0"],
            "unclosed group",
        ),
        (
            &["--tensor-type", "attn_q"],
            &["--tensor-type", "PATTERN=TYPE"],
            "no '='",
        ),
        (
            &["--tensor-type", "=q8_0"],
            &["missing tensor name"],
            "no name",
        ),
        (
            &["--tensor-type-file", rules],
            &["rules.txt", "q7_X"],
            "bad rule in a file",
        ),
        (
            &["--tensor-type-file", rules_re],
            &["rules_re.txt", "bad regex", "ffn_(up"],
            "bad regex in a file",
        ),
        (
            &["--tensor-type-file", "/nonexistent/rules.txt"],
            &["/nonexistent/rules.txt", "cannot read"],
            "missing rules file",
        ),
        (
            &["--override-kv", "general.name"],
            &["--override-kv", "KEY=TYPE:VALUE"],
            "override without '='",
        ),
        (
            &["--override-kv", "llama.context_length=int:many"],
            &["--override-kv", "not an integer"],
            "int that is not a number",
        ),
        (
            &["--override-kv", "x.y=float:1.5x"],
            &["not a number"],
            "float that is not a number",
        ),
        (
            &["--override-kv", "x.y=bool:yes"],
            &["true or false"],
            "bool that is not true/false",
        ),
        (
            &["--override-kv", "x.y=u32:1"],
            &["unknown type \"u32\""],
            "unknown value type",
        ),
        (&["--override-kv", "x.y=str"], &["TYPE:VALUE"], "no type"),
        (
            &["--prune-layers", "5"],
            &["--prune-layers", "layer 5 does not exist", "1 layers"],
            "a layer that does not exist",
        ),
        (
            &["--prune-layers", "0"],
            &["--prune-layers", "all 1 layers"],
            "every layer",
        ),
        (
            &["--prune-layers", "0,x"],
            &["--prune-layers", "\"x\" is not a layer number"],
            "not a number",
        ),
        (
            &["--prune-layers", "-1"],
            &["--prune-layers", "not a layer number"],
            "negative layer",
        ),
        (
            &[
                "--imatrix",
                imatrix,
                "--include-weights",
                "attn",
                "--exclude-weights",
                "ffn",
            ],
            &["cannot be used together"],
            "include and exclude",
        ),
        (
            &["--include-weights", "attn"],
            &["need --imatrix"],
            "include without an imatrix",
        ),
    ];
    for (extra, needles, what) in cases {
        let mut args = extra.to_vec();
        // An allowed prefix of the value (clap reads "-1" as an option otherwise).
        if args == ["--prune-layers", "-1"] {
            args = vec!["--prune-layers=-1"];
        }
        quantize_fails("q4_K_M", &ck, &out, &args, needles, &[], what);
        let o = kiln()
            .args(["quantize", "-t", "q4_K_M"])
            .arg(&ck)
            .arg("-o")
            .arg(out.join("out.gguf"))
            .args(&args)
            .output()
            .unwrap();
        let errors = stderr(&o).lines().filter(|l| l.contains("error")).count();
        assert_eq!(errors, 1, "{what}: one error line: {}", stderr(&o));
    }
}
