//! Mixture-of-experts checkpoints (Qwen3 MoE, Mixtral): the stacked expert tensors and keys
//! llama.cpp's converter writes, transformers 5's fused expert tensors converting to the same
//! file as per-expert ones, and the bad-input treatment for missing, extra and misshapen experts
//! and for configs that disagree with the tensors. (llama.cpp loading the files, the logits
//! against the reference forward pass and every quantized tensor against llama-quantize are
//! in `convert_vs_llama`.)

use crate::common::fixtures::convert;
use crate::common::tensors_of as tensors;
use kiln::gguf::{GgufFile, Value};
use kiln::plan::FileType;
use kiln_fixtures::checkpoint::{default_for, write_checkpoint, Arch, FixtureSpec, Vocab};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("moe", name)
}

fn qwen3moe() -> FixtureSpec {
    default_for(Arch::Qwen3Moe, Vocab::TrainedBpe { size: 512 })
}

fn mixtral() -> FixtureSpec {
    default_for(
        Arch::Mixtral,
        Vocab::LlamaSpm(crate::common::fixtures::tokenizer_model()),
    )
}

fn u32_key(path: &Path, key: &str) -> Option<u32> {
    match GgufFile::open(path).unwrap().metadata().get(key) {
        Some(Value::U32(v)) => Some(*v),
        _ => None,
    }
}

/// An expert's rows in the stacked f32 tensor equal the checkpoint's tensor for that expert.
fn expert_rows(path: &Path, name: &str, expert: usize) -> Vec<f32> {
    let g = GgufFile::open(path).unwrap();
    let t = g.tensors().iter().find(|t| t.name == name).unwrap();
    let per = (t.dims[0] * t.dims[1]) as usize;
    g.data(t)[expert * per * 4..(expert + 1) * per * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The f32 values of a checkpoint tensor.
fn checkpoint_tensor(dir: &Path, name: &str) -> Vec<f32> {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let b = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        if let Ok(v) = st.tensor(name) {
            assert_eq!(v.dtype(), safetensors::Dtype::BF16);
            return v
                .data()
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
        }
    }
    panic!("{name} not in {}", dir.display())
}

#[test]
fn experts_are_stacked_with_llama_cpp_names_shapes_and_keys() {
    for (label, spec, arch, module, [w_gate, w_up, w_down]) in [
        (
            "qwen3moe",
            qwen3moe(),
            "qwen3moe",
            "mlp",
            ["gate_proj", "up_proj", "down_proj"],
        ),
        (
            "mixtral",
            mixtral(),
            "llama",
            "block_sparse_moe",
            ["w1", "w3", "w2"],
        ),
    ] {
        let d = tmp(&format!("stack-{label}"));
        let ck = d.join("ck");
        write_checkpoint(&spec, &ck).unwrap();
        let out = d.join("f32.gguf");
        convert(&ck, FileType::F32, &out);
        let (h, f, e) = (
            spec.hidden as u64,
            spec.intermediate as u64,
            spec.experts as u64,
        );
        assert_eq!(
            u32_key(&out, &format!("{arch}.expert_count")),
            Some(e as u32),
            "{label}"
        );
        assert_eq!(
            u32_key(&out, &format!("{arch}.expert_used_count")),
            Some(spec.experts_used as u32),
            "{label}"
        );
        // Qwen2MoeModel writes the experts' width; LlamaModel (Mixtral) does not.
        assert_eq!(
            u32_key(&out, &format!("{arch}.expert_feed_forward_length")),
            (label == "qwen3moe").then_some(f as u32),
            "{label}"
        );
        let md = GgufFile::open(&out).unwrap().metadata().clone();
        let label_value = md.get("general.size_label").and_then(Value::as_str);
        assert!(
            label_value.is_some_and(|s| s.starts_with(&format!("{e}x"))),
            "{label}: size label {label_value:?}"
        );
        let t = tensors(&out);
        let find = |n: &str| t.iter().find(|x| x.0 == n).unwrap_or_else(|| panic!("{n}"));
        for l in 0..spec.layers {
            assert_eq!(find(&format!("blk.{l}.ffn_gate_exps.weight")).1, [h, f, e]);
            assert_eq!(find(&format!("blk.{l}.ffn_up_exps.weight")).1, [h, f, e]);
            assert_eq!(find(&format!("blk.{l}.ffn_down_exps.weight")).1, [f, h, e]);
            let router = find(&format!("blk.{l}.ffn_gate_inp.weight"));
            assert_eq!(
                (router.1.as_slice(), router.2.as_str()),
                (&[h, e][..], "f32")
            );
        }
        assert!(!t.iter().any(|x| x.0.contains("experts")), "{label}");
        // Expert outermost: expert k's rows are the checkpoint's expert k, in order.
        for (gguf, proj) in [
            ("ffn_gate_exps", w_gate),
            ("ffn_up_exps", w_up),
            ("ffn_down_exps", w_down),
        ] {
            for k in [0, spec.experts - 1] {
                let hf = format!("model.layers.1.{module}.experts.{k}.{proj}.weight");
                assert_eq!(
                    expert_rows(&out, &format!("blk.1.{gguf}.weight"), k),
                    checkpoint_tensor(&ck, &hf),
                    "{label}: {hf}"
                );
            }
        }
    }
}

#[test]
fn transformers5_fused_experts_convert_to_the_same_tensors() {
    for (label, spec) in [("qwen3moe", qwen3moe()), ("mixtral", mixtral())] {
        let d = tmp(&format!("fused-{label}"));
        let (a, b) = (d.join("per-expert"), d.join("fused"));
        write_checkpoint(&spec, &a).unwrap();
        write_checkpoint(
            &FixtureSpec {
                fused_experts: true,
                ..spec.clone()
            },
            &b,
        )
        .unwrap();
        // The fused checkpoint really is fused.
        let names: Vec<String> = std::fs::read_dir(&b)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .flat_map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                safetensors::SafeTensors::deserialize(&bytes)
                    .unwrap()
                    .names()
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(names
            .iter()
            .any(|n| n.ends_with("mlp.experts.gate_up_proj")));
        assert!(!names.iter().any(|n| n.contains("experts.0.")));
        for ftype in [FileType::F32, FileType::Q4_K_M] {
            let (oa, ob) = (
                d.join(format!("a-{ftype}.gguf")),
                d.join(format!("b-{ftype}.gguf")),
            );
            convert(&a, ftype, &oa);
            convert(&b, ftype, &ob);
            let (ta, tb) = (tensors(&oa), tensors(&ob));
            assert_eq!(ta.len(), tb.len(), "{label} {ftype}");
            for (x, y) in ta.iter().zip(&tb) {
                assert!(x == y, "{label} {ftype}: {} differs", x.0);
            }
        }
    }
}

// ---- bad input ----

/// Every tensor of a checkpoint folder's safetensors files: (file, name, dtype, shape, bytes).
pub(crate) type Entry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

fn read_all(dir: &Path) -> Vec<(PathBuf, Vec<Entry>)> {
    let mut files = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    paths.sort();
    for p in paths {
        let b = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        let v = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        files.push((p, v));
    }
    files
}

/// Rewrites a checkpoint's safetensors files after `edit` (and the index, if any, to match).
pub(crate) fn rewrite(dir: &Path, edit: impl Fn(&mut Vec<Entry>)) {
    let mut weight_map = serde_json::Map::new();
    for (p, mut entries) in read_all(dir) {
        edit(&mut entries);
        let views: Vec<(String, safetensors::tensor::TensorView)> = entries
            .iter()
            .map(|(n, dt, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
                )
            })
            .collect();
        for (n, _) in &views {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            weight_map.insert(n.clone(), serde_json::json!(f));
        }
        let bytes = safetensors::tensor::serialize(views, &None).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let j = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(&index, j.to_string()).unwrap();
    }
}

pub(crate) fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

/// `kiln quantize -t q4_K_M CK -o OUT/out.gguf` fails with one error line holding every
/// needle, no panic, and leaves OUT empty.
pub(crate) fn fails(ck: &Path, needles: &[&str], what: &str) {
    let out = ck.parent().unwrap().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["quantize", "-t", "q4_K_M"])
        .arg(ck)
        .arg("-o")
        .arg(out.join("out.gguf"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: should fail: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.contains("kiln: error:")).collect();
    assert_eq!(lines.len(), 1, "{what}: {e}");
    for n in needles {
        assert!(lines[0].contains(n), "{what}: error lacks {n:?}: {e}");
    }
    assert!(!e.contains("panicked"), "{what}: {e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "{what}: output left behind"
    );
    eprintln!("{what}: {}", lines[0]);
}

pub(crate) fn case(name: &str, spec: &FixtureSpec) -> PathBuf {
    let ck = tmp(name).join("ck");
    write_checkpoint(spec, &ck).unwrap();
    ck
}

#[test]
fn a_missing_expert_is_an_error_naming_it() {
    let missing = "model.layers.1.mlp.experts.2.down_proj.weight";
    let ck = case("missing-qwen", &qwen3moe());
    rewrite(&ck, |v| v.retain(|t| t.0 != missing));
    fails(
        &ck,
        &[missing, "is missing", "num_experts = 4"],
        "missing expert",
    );

    let missing = "model.layers.0.block_sparse_moe.experts.7.w3.weight";
    let ck = case("missing-mixtral", &mixtral());
    rewrite(&ck, |v| v.retain(|t| t.0 != missing));
    fails(
        &ck,
        &[missing, "is missing", "num_local_experts = 8"],
        "missing Mixtral expert",
    );

    // A fused checkpoint without its down projections.
    let ck = case(
        "missing-fused",
        &FixtureSpec {
            fused_experts: true,
            ..qwen3moe()
        },
    );
    rewrite(&ck, |v| {
        v.retain(|t| t.0 != "model.layers.0.mlp.experts.down_proj")
    });
    fails(
        &ck,
        &["layer 0 has no down_proj experts", "experts.0.down_proj"],
        "missing fused tensor",
    );
}

#[test]
fn an_expert_of_the_wrong_shape_is_an_error_naming_it() {
    let bad = "model.layers.0.mlp.experts.1.up_proj.weight";
    let ck = case("shape-qwen", &qwen3moe());
    rewrite(&ck, |v| {
        for t in v.iter_mut().filter(|t| t.0 == bad) {
            // Half the rows.
            t.2[0] /= 2;
            t.3.truncate(t.3.len() / 2);
        }
    });
    fails(
        &ck,
        &[
            bad,
            "shape [128, 256]",
            "moe_intermediate_size = 256",
            "[256, 256]",
        ],
        "expert with half its rows",
    );

    let bad = "model.layers.1.block_sparse_moe.experts.0.w2.weight";
    let ck = case("shape-mixtral", &mixtral());
    rewrite(&ck, |v| {
        for t in v.iter_mut().filter(|t| t.0 == bad) {
            // [hidden, width] stored transposed.
            t.2.swap(0, 1);
        }
    });
    fails(
        &ck,
        &[bad, "shape [512, 256]", "[256, 512]"],
        "transposed expert",
    );

    let ck = case(
        "shape-fused",
        &FixtureSpec {
            fused_experts: true,
            ..mixtral()
        },
    );
    let bad = "model.layers.1.mlp.experts.gate_up_proj";
    rewrite(&ck, |v| {
        for t in v.iter_mut().filter(|t| t.0 == bad) {
            t.2[0] -= 1;
            let keep = t.3.len() / 8 * 7;
            t.3.truncate(keep);
        }
    });
    fails(
        &ck,
        &[bad, "shape [7, 1024, 256]", "[8, 1024, 256]"],
        "fused tensor short of an expert",
    );
}

#[test]
fn configs_that_disagree_with_the_experts_are_errors_before_any_output() {
    // More experts than the checkpoint holds: the routers say 4.
    let ck = case("config-more", &qwen3moe());
    edit_config(&ck, |c| c["num_experts"] = serde_json::json!(8));
    fails(
        &ck,
        &[
            "model.layers.0.mlp.gate.weight",
            "num_experts = 8",
            "[4, 256]",
        ],
        "num_experts 8 for 4 experts",
    );
    // Fewer: expert 2 is one too many.
    let ck = case("config-fewer", &mixtral());
    edit_config(&ck, |c| {
        c["num_local_experts"] = serde_json::json!(2);
    });
    fails(
        &ck,
        &["block_sparse_moe.gate.weight", "num_local_experts = 2"],
        "num_local_experts 2 for 8 experts",
    );
    // More experts per token than experts.
    let ck = case("config-used", &qwen3moe());
    edit_config(&ck, |c| c["num_experts_per_tok"] = serde_json::json!(5));
    fails(
        &ck,
        &["config.json", "num_experts_per_tok = 5", "num_experts = 4"],
        "5 of 4 experts per token",
    );
    // The experts' width.
    let ck = case("config-width", &qwen3moe());
    edit_config(&ck, |c| c["moe_intermediate_size"] = serde_json::json!(512));
    fails(
        &ck,
        &["experts.0.gate_proj.weight", "moe_intermediate_size = 512"],
        "moe_intermediate_size 512 for 256-wide experts",
    );
    // An expert past the count, with the routers rewritten to agree with the config.
    let ck = case("config-extra", &qwen3moe());
    edit_config(&ck, |c| c["num_experts"] = serde_json::json!(3));
    rewrite(&ck, |v| {
        for t in v.iter_mut().filter(|t| t.0.ends_with("mlp.gate.weight")) {
            t.2[0] = 3;
            let keep = t.3.len() / 4 * 3;
            t.3.truncate(keep);
        }
    });
    fails(
        &ck,
        &["experts.3.", "is expert 3", "num_experts = 3"],
        "an expert past num_experts",
    );
}

// ---- importance matrices with one row per expert ----

/// A GGUF imatrix (llama-imatrix's format) whose weights are `entries`' values, each tensor's
/// rows (one per expert for 3-D tensors) with its own call count, powers of two so that
/// sum / count is exact.
fn write_gguf_imatrix(path: &Path, entries: &[(String, Vec<f32>, usize)]) {
    use kiln::gguf::writer::{GgufWriter, TensorEntry};
    use kiln::gguf::{Metadata, TypeId};
    let f32t = TypeId::of(kiln::kernels::GgmlType::F32);
    let mut md = Metadata::new();
    md.set_str("general.type", "imatrix");
    let mut list = Vec::new();
    for (name, v, n_expert) in entries {
        list.push(TensorEntry {
            name: format!("{name}.in_sum2"),
            dims: vec![(v.len() / n_expert) as u64, *n_expert as u64],
            ty: f32t,
            bytes: 4 * v.len() as u64,
        });
        list.push(TensorEntry {
            name: format!("{name}.counts"),
            dims: vec![1, *n_expert as u64],
            ty: f32t,
            bytes: 4 * *n_expert as u64,
        });
    }
    let mut w = GgufWriter::create(path, true, &md, list).unwrap();
    for (_, v, n_expert) in entries {
        let ne0 = v.len() / n_expert;
        let count = |e: usize| (2u32 << (e % 4)) as f32;
        let sums: Vec<u8> = v
            .iter()
            .enumerate()
            .flat_map(|(i, x)| (x * count(i / ne0)).to_le_bytes())
            .collect();
        w.write(&sums).unwrap();
        w.end_tensor().unwrap();
        let counts: Vec<u8> = (0..*n_expert)
            .flat_map(|e| count(e).to_le_bytes())
            .collect();
        w.write(&counts).unwrap();
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn per_expert_importance_matrices_quantize_like_llama_quantize() {
    let d = tmp("imatrix");
    let ck = d.join("ck");
    write_checkpoint(&qwen3moe(), &ck).unwrap();
    let f32_file = d.join("f32.gguf");
    convert(&ck, FileType::F32, &f32_file);
    // One row of weights per expert for the stacked tensors, each expert's its own.
    let g = GgufFile::open(&f32_file).unwrap();
    let mut rng = kiln_fixtures::synth::SplitMix64(15);
    let entries: Vec<(String, Vec<f32>, usize)> = g
        .tensors()
        .iter()
        .filter(|t| t.dims.len() >= 2 && t.name != "token_embd.weight")
        .map(|t| {
            let n_expert = t.dims.get(2).copied().unwrap_or(1) as usize;
            let v = (0..t.dims[0] as usize * n_expert)
                .map(|_| (rng.uniform() * 4.0).powi(2) + 1e-3)
                .collect();
            (t.name.clone(), v, n_expert)
        })
        .collect();
    assert!(entries.iter().any(|e| e.2 == 4));
    let imatrix = d.join("imatrix.gguf");
    write_gguf_imatrix(&imatrix, &entries);
    let ro = kiln::llama::ReferenceOptions {
        imatrix: Some(entries.iter().map(|e| (e.0.clone(), e.1.clone())).collect()),
        ..Default::default()
    };
    for ftype in [FileType::Q4_K_M, FileType::Q2_K, FileType::Q4_0] {
        let theirs = d.join(format!("llama-{ftype}.gguf"));
        kiln::llama::reference_quantize(&f32_file, &theirs, ftype.id(), &ro).unwrap();
        let ours = d.join(format!("kiln-{ftype}.gguf"));
        let mut o = kiln::quantize::Options::new(ftype);
        o.output = Some(ours.clone());
        o.force = true;
        o.imatrix = Some(imatrix.clone());
        let p = kiln::quantize::prepare(&f32_file, &o).unwrap();
        kiln::quantize::execute(&p, true, false).unwrap();
        let (a, b) = (tensors(&ours), tensors(&theirs));
        assert_eq!(a.len(), b.len(), "{ftype}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((&x.0, &x.1, &x.2), (&y.0, &y.1, &y.2), "{ftype}");
            assert!(x.3 == y.3, "{ftype}: bytes of {} ({})", x.0, x.2);
        }
        // The importance data changed the experts' bytes.
        let plain = d.join(format!("plain-{ftype}.gguf"));
        convert(&f32_file, ftype, &plain);
        let p = tensors(&plain);
        let exps = |v: &[(String, Vec<u64>, String, Vec<u8>)]| {
            v.iter()
                .find(|t| t.0 == "blk.1.ffn_up_exps.weight")
                .unwrap()
                .3
                .clone()
        };
        assert!(exps(&a) != exps(&p), "{ftype}: imatrix had no effect");
    }
    // Importance rows for 3 experts of a 4-expert tensor: refused, naming both counts.
    let short: Vec<(String, Vec<f32>, usize)> = entries
        .iter()
        .map(|(n, v, e)| {
            if *e == 4 {
                (n.clone(), v[..v.len() / 4 * 3].to_vec(), 3)
            } else {
                (n.clone(), v.clone(), *e)
            }
        })
        .collect();
    let bad = d.join("imatrix-3.gguf");
    write_gguf_imatrix(&bad, &short);
    let mut o = kiln::quantize::Options::new(FileType::Q4_K_M);
    o.output = Some(d.join("never.gguf"));
    o.imatrix = Some(bad);
    let e = kiln::quantize::prepare(&f32_file, &o)
        .err()
        .expect("refused");
    let e = format!("{e:#}");
    assert!(
        e.contains("in each of 4 experts") && e.contains("another model"),
        "{e}"
    );
}

// ---- DeepSeek V3 ----

fn deepseek() -> FixtureSpec {
    default_for(Arch::Deepseek2, Vocab::TrainedBpe { size: 512 })
}

/// Multi-token-prediction layers (past num_hidden_layers, as DeepSeek V3 ships layer 61) are
/// left out, as convert's skip_mtp does: the file equals the one without them.
#[test]
fn deepseek_mtp_layers_are_left_out() {
    let plain = case("ds-plain", &deepseek());
    let mtp = case("ds-mtp", &deepseek());
    rewrite(&mtp, |v| {
        let extra: Vec<Entry> = v
            .iter()
            .filter(|t| t.0.starts_with("model.layers.2."))
            .map(|t| {
                (
                    t.0.replace("layers.2.", "layers.3."),
                    t.1,
                    t.2.clone(),
                    t.3.clone(),
                )
            })
            .collect();
        v.extend(extra);
        let eh = v
            .iter()
            .find(|t| t.0 == "model.layers.2.input_layernorm.weight")
            .unwrap();
        v.push((
            "model.layers.3.enorm.weight".into(),
            eh.1,
            eh.2.clone(),
            eh.3.clone(),
        ));
    });
    let (a, b) = (
        plain.parent().unwrap().join("a.gguf"),
        mtp.parent().unwrap().join("b.gguf"),
    );
    convert(&plain, FileType::Q8_0, &a);
    convert(&mtp, FileType::Q8_0, &b);
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert!(ta.iter().all(|t| !t.0.starts_with("blk.3.")));
    assert_eq!(ta, tb);
}

#[test]
fn deepseek_configs_that_disagree_with_the_tensors_are_errors_before_any_output() {
    let ck = case("ds-kv-rank", &deepseek());
    edit_config(&ck, |c| c["kv_lora_rank"] = serde_json::json!(128));
    fails(&ck, &["kv_lora_rank = 128"], "kv_lora_rank 128 for 256");

    let ck = case("ds-nope", &deepseek());
    edit_config(&ck, |c| c["qk_nope_head_dim"] = serde_json::json!(32));
    fails(
        &ck,
        &["kv_b_proj", "qk_nope_head_dim = 32"],
        "qk_nope_head_dim 32 for 64",
    );

    // An expert in the dense layer: first_k_dense_replace says layer 1 has none.
    let ck = case("ds-dense", &deepseek());
    edit_config(&ck, |c| c["first_k_dense_replace"] = serde_json::json!(2));
    fails(
        &ck,
        &["experts", "layer 1", "first 2 layers dense"],
        "experts in a dense layer",
    );

    let ck = case("ds-scoring", &deepseek());
    edit_config(&ck, |c| c["scoring_func"] = serde_json::json!("relu"));
    fails(&ck, &["scoring_func", "relu"], "unknown scoring_func");
}

/// DeepSeek-V2-Lite's form: no q LoRA (`q_lora_rank: null`, one `q_proj`): written as
/// `attn_q` {hidden, heads * (nope + rope)} without the q_lora_rank key, as convert does.
#[test]
fn deepseek_without_q_lora_writes_attn_q() {
    let spec = deepseek();
    let ck = case("ds-lite", &spec);
    let qd = spec.head_dim + spec.head_dim / 2;
    let rows = spec.heads * qd;
    rewrite(&ck, |v| {
        let layers: Vec<String> = v
            .iter()
            .filter_map(|t| {
                t.0.strip_suffix("self_attn.q_a_proj.weight")
                    .map(String::from)
            })
            .collect();
        for p in layers {
            let qa = v
                .iter()
                .find(|t| t.0 == format!("{p}self_attn.q_a_proj.weight"))
                .unwrap()
                .clone();
            v.retain(|t| !t.0.starts_with(&format!("{p}self_attn.q_")));
            let bytes = qa.3[..rows * spec.hidden * 2].to_vec();
            v.push((
                format!("{p}self_attn.q_proj.weight"),
                qa.1,
                vec![rows, spec.hidden],
                bytes,
            ));
        }
    });
    edit_config(&ck, |c| c["q_lora_rank"] = serde_json::Value::Null);
    let out = ck.parent().unwrap().join("lite.gguf");
    convert(&ck, FileType::F32, &out);
    let t = tensors(&out);
    let q = t.iter().find(|t| t.0 == "blk.1.attn_q.weight").unwrap();
    assert_eq!(q.1, [spec.hidden as u64, rows as u64]);
    assert!(!t
        .iter()
        .any(|t| t.0.contains("attn_q_a") || t.0.contains("attn_q_b")));
    assert_eq!(u32_key(&out, "deepseek2.attention.q_lora_rank"), None);
    assert_eq!(
        u32_key(&out, "deepseek2.attention.kv_lora_rank"),
        Some(spec.hidden as u32)
    );
}
