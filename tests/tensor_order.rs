//! The order of the tensors in kiln's files. At a checkpoint's own precision (f32, f16, bf16)
//! kiln writes what convert_hf_to_gguf.py writes, in its order; a quantized file, and any file
//! from a GGUF input, is in llama-quantize's order (the loader's `weights_map`: tensors outside
//! blocks first, then block by block, by name within each).
//!
//! The expected orders here are worked out independently of kiln from convert's source
//! (conversion/base.py `index_tensors` / `prepare_tensors`, gguf-py's `SafetensorsLocal`): the
//! generated tensors first (Llama 3's rope_freqs), then the files the index names, sorted, and
//! in each file its tensors sorted by name (not by offset: the fixtures are rewritten here
//! with their data in reverse name order so that the two differ), each mapped to its GGUF
//! name; a layer's per-expert tensors are buffered until its last one arrives, and then the
//! stacked tensors come in the family's loop order (Qwen: down, gate, up; Mixtral: w1, w2,
//! w3 = gate, down, up). convert_hf_to_gguf.py itself needs torch, which this machine does not
//! have; `benches/convert_order.sh` runs it on the same fixtures where it is installed.

use kiln::gguf::GgufFile;
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, FixtureSpec, Vocab};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("tensor_order", name)
}

/// Rewrites a safetensors file with its header and data in reverse name order.
fn reverse_layout(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Json> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let base = 8 + n;
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort();
    names.reverse();
    let mut out_header = serde_json::Map::new();
    if let Some(m) = header.get("__metadata__") {
        out_header.insert("__metadata__".into(), m.clone());
    }
    let mut data = Vec::new();
    for name in names {
        let t = &header[name];
        let off = t["data_offsets"].as_array().unwrap();
        let (s, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        let start = data.len();
        data.extend_from_slice(&bytes[base + s..base + e]);
        let mut t = t.as_object().unwrap().clone();
        t.insert(
            "data_offsets".into(),
            serde_json::json!([start, data.len()]),
        );
        out_header.insert(name.clone(), Json::Object(t));
    }
    let mut h = serde_json::to_vec(&Json::Object(out_header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

fn checkpoint(spec: &FixtureSpec, name: &str) -> PathBuf {
    let dir = tmp(name);
    write_checkpoint(spec, &dir).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            reverse_layout(&p);
        }
    }
    dir
}

/// Sets Llama 3's rope scaling in config.json (convert then generates rope_freqs first).
fn llama3_rope(dir: &Path) {
    let p = dir.join("config.json");
    let mut c: Json = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["rope_scaling"] = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

/// A decoder layer tensor's GGUF name (the part after `blk.N.`), for the fixtures' families.
fn layer_name(rest: &str) -> &'static str {
    match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "mlp.gate.weight" | "block_sparse_moe.gate.weight" => "ffn_gate_inp.weight",
        other => panic!("no GGUF name for {other}"),
    }
}

/// convert_hf_to_gguf.py's tensor order for a fixture checkpoint, worked out from its source.
fn convert_expectation(dir: &Path, arch: Arch) -> Vec<String> {
    let config: Json =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    if config["rope_scaling"]["rope_type"] == "llama3" {
        out.push("rope_freqs.weight".to_string());
    }
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<String> = if index.exists() {
        let j: Json = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        j["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    } else {
        vec!["model.safetensors".into()]
    };
    files.sort();
    files.dedup();
    let n_expert = config
        .get("num_local_experts")
        .or(config.get("num_experts"))
        .and_then(Json::as_u64)
        .unwrap_or(0) as usize;
    let stacks: &[&str] = match arch {
        Arch::Mixtral => &["ffn_gate_exps", "ffn_down_exps", "ffn_up_exps"],
        _ => &["ffn_down_exps", "ffn_gate_exps", "ffn_up_exps"],
    };
    let mut buffered = std::collections::HashMap::<String, usize>::new();
    for f in files {
        let bytes = std::fs::read(dir.join(&f)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, Json> =
            serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
        names.sort();
        for name in names {
            match name.as_str() {
                "model.embed_tokens.weight" => out.push("token_embd.weight".into()),
                "model.norm.weight" => out.push("output_norm.weight".into()),
                "lm_head.weight" => out.push("output.weight".into()),
                _ => {
                    let rest = name.strip_prefix("model.layers.").unwrap();
                    let (layer, rest) = rest.split_once('.').unwrap();
                    if rest.contains(".experts.") {
                        let c = buffered.entry(layer.to_string()).or_default();
                        *c += 1;
                        if *c == 3 * n_expert {
                            for s in stacks {
                                out.push(format!("blk.{layer}.{s}.weight"));
                            }
                        }
                    } else {
                        out.push(format!("blk.{layer}.{}", layer_name(rest)));
                    }
                }
            }
        }
    }
    out
}

/// llama.cpp's loader order (`weight_name_comparer`): block number (-1 outside blocks), then
/// name.
fn loader_order(mut names: Vec<String>) -> Vec<String> {
    let block = |s: &str| -> i64 {
        s.strip_prefix("blk.")
            .and_then(|r| r.split('.').next()?.parse().ok())
            .unwrap_or(-1)
    };
    names.sort_by(|a, b| block(a).cmp(&block(b)).then(a.cmp(b)));
    names
}

fn convert(input: &Path, ftype: FileType, out: &Path) -> Vec<String> {
    let mut o = Options::new(ftype);
    o.output = Some(out.to_path_buf());
    o.force = true;
    o.checksum = false;
    let p = quantize::prepare(input, &o).unwrap_or_else(|e| panic!("prepare {ftype}: {e:#}"));
    quantize::execute(&p, true, false).unwrap_or_else(|e| panic!("convert {ftype}: {e:#}"));
    names(out)
}

fn metadata_keys(path: &Path) -> Vec<String> {
    GgufFile::open(path)
        .unwrap()
        .metadata()
        .iter()
        .map(|(k, _)| k.to_string())
        .collect()
}

fn names(path: &Path) -> Vec<String> {
    GgufFile::open(path)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| t.name.clone())
        .collect()
}

fn check_family(spec: FixtureSpec, label: &str, rope3: bool) {
    let dir = checkpoint(&spec, label);
    if rope3 {
        llama3_rope(&dir);
    }
    let want = convert_expectation(&dir, spec.arch);
    assert_ne!(
        want,
        loader_order(want.clone()),
        "{label}: the fixture must tell the two orders apart"
    );
    let out = dir.parent().unwrap().join(format!("{label}.gguf"));
    // The source's precision and convert's other output types: convert's order.
    for ftype in [FileType::BF16, FileType::F16, FileType::F32] {
        assert_eq!(convert(&dir, ftype, &out), want, "{label} {ftype}");
    }
    // Metadata keys in convert's order (conversion/base.py): set_gguf_parameters ends with
    // general.file_type (a family's own keys after its super() call may follow), then
    // general.quantization_version, then the vocabulary's tokenizer.* keys.
    convert(&dir, FileType::BF16, &out);
    let keys = metadata_keys(&out);
    let at = |k: &str| {
        keys.iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("{label}: no {k} in {keys:?}"))
    };
    let arch_key = keys
        .iter()
        .position(|k| k.starts_with("general.architecture"))
        .unwrap();
    let first_hparam = keys
        .iter()
        .position(|k| k.contains('.') && !k.starts_with("general.") && !k.starts_with("tokenizer."))
        .unwrap();
    assert!(arch_key < first_hparam, "{label}: {keys:?}");
    assert!(first_hparam < at("general.file_type"), "{label}: {keys:?}");
    assert_eq!(
        at("general.quantization_version") + 1,
        at("tokenizer.ggml.model"),
        "{label}: {keys:?}"
    );
    assert!(
        at("general.file_type") < at("general.quantization_version"),
        "{label}: {keys:?}"
    );
    // llama-quantize's gguf_set_val moves both keys to the end of a quantized file.
    let q = convert(&dir, FileType::Q8_0, &out);
    let qkeys = metadata_keys(&out);
    assert_eq!(
        qkeys[qkeys.len() - 2..],
        ["general.quantization_version", "general.file_type"],
        "{label} Q8_0"
    );
    // A quantized file is llama-quantize's, in the loader's order.
    assert_eq!(q, loader_order(want.clone()), "{label} Q8_0");
    // Requantizing kiln's own bf16 file (tensors in convert's order): llama-quantize's order.
    let bf16 = dir.parent().unwrap().join(format!("{label}-bf16.gguf"));
    convert(&dir, FileType::BF16, &bf16);
    for ftype in [FileType::Q8_0, FileType::F32] {
        assert_eq!(
            convert(&bf16, ftype, &out),
            loader_order(want.clone()),
            "{label}: GGUF input to {ftype}"
        );
    }
}

#[test]
fn llama_checkpoint_tensors_come_in_converts_order() {
    // Two shards, rope_freqs generated first.
    let spec = default_for(
        Arch::Llama,
        Vocab::LlamaSpm(crate::common::fixtures::tokenizer_model()),
    );
    check_family(spec, "llama", true);
}

#[test]
fn qwen3moe_experts_come_when_their_layer_is_complete() {
    let spec = default_for(Arch::Qwen3Moe, Vocab::TrainedBpe { size: 512 });
    check_family(spec, "qwen3moe", false);
}

#[test]
fn mixtral_experts_come_in_w1_w2_w3_order() {
    let spec = default_for(
        Arch::Mixtral,
        Vocab::LlamaSpm(crate::common::fixtures::tokenizer_model()),
    );
    check_family(spec, "mixtral", false);
}
