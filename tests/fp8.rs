//! fp8 checkpoints (`quant_method: "fp8"`, `F8_E4M3` weights with 128 x 128 block scales in
//! `<name>_scale_inv`): kiln dequantizes them as llama.cpp's converter does
//! (`weight.float() * scale`), so an fp8 checkpoint converts to the same tensors as its twin
//! holding those products in F32 (computed by the fixture builder from the e4m3 format's
//! definition, not by kiln), at every type. Malformed forms fail with one error line and no
//! output.

use kiln::gguf::GgufFile;
use kiln::plan::FileType;
use kiln_fixtures::checkpoint::{default_for, write_fp8_checkpoint, Arch, FixtureSpec, Vocab};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("fp8", name)
}

/// Qwen3 with one layer whose feed-forward is 320 wide: the gate/up scales cover a partial
/// block of rows, the down scales a partial block of columns.
fn spec() -> FixtureSpec {
    FixtureSpec {
        intermediate: 320,
        layers: 2,
        ..default_for(Arch::Qwen3, Vocab::TrainedBpe { size: 512 })
    }
}

/// (fp8 checkpoint, its dequantized F32 twin), written once.
fn checkpoints() -> &'static (PathBuf, PathBuf) {
    static CK: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CK.get_or_init(|| {
        let d = tmp("base");
        let (a, b) = (d.join("fp8"), d.join("twin"));
        write_fp8_checkpoint(&spec(), &a, &b).unwrap();
        (a, b)
    })
}

fn same_tensors(a: &Path, b: &Path, what: &str) -> usize {
    let (ga, gb) = (GgufFile::open(a).unwrap(), GgufFile::open(b).unwrap());
    let (ta, tb) = (ga.tensors(), gb.tensors());
    let names = |t: &[kiln::gguf::reader::TensorInfo]| -> Vec<String> {
        t.iter().map(|t| t.name.clone()).collect()
    };
    assert_eq!(names(ta), names(tb), "{what}: tensor lists");
    for (x, y) in ta.iter().zip(tb) {
        assert_eq!(x.dims, y.dims, "{what}: {}", x.name);
        assert_eq!(x.ty, y.ty, "{what}: {}", x.name);
        assert!(ga.data(x) == gb.data(y), "{what}: {} data differs", x.name);
    }
    ta.len()
}

#[test]
fn fp8_converts_like_its_dequantized_twin() {
    let (fp8, twin) = checkpoints();
    // The fixture really is fp8: codes and scales, and the config says so.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fp8.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "fp8");
    let ck = kiln::source::Checkpoint::open(fp8).unwrap();
    let down = ck.get("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!(down.dtype, Ok(kiln::source::SrcDtype::F8E4M3));
    assert!(ck
        .get("model.layers.0.mlp.down_proj.weight_scale_inv")
        .is_none());
    let out = tmp("out");
    for ty in ["F32", "BF16", "Q8_0", "Q4_K_M"] {
        let ft = FileType::parse(ty).unwrap();
        let (a, b) = (
            out.join(format!("fp8-{ty}.gguf")),
            out.join(format!("twin-{ty}.gguf")),
        );
        crate::common::fixtures::convert(fp8, ft, &a);
        crate::common::fixtures::convert(twin, ft, &b);
        let n = same_tensors(&a, &b, ty);
        assert!(n > 20, "{ty}: {n} tensors");
    }
    // And the values are the dequantized ones, not the bf16 originals: an fp8 weight's f32
    // output differs from the original checkpoint's.
    let orig = tmp("orig").join("ck");
    kiln_fixtures::checkpoint::write_checkpoint(&spec(), &orig).unwrap();
    let o = out.join("orig-F32.gguf");
    crate::common::fixtures::convert(&orig, FileType::parse("F32").unwrap(), &o);
    let (g1, g2) = (
        GgufFile::open(&out.join("fp8-F32.gguf")).unwrap(),
        GgufFile::open(&o).unwrap(),
    );
    let find = |g: &GgufFile, n: &str| {
        let t = g.tensors().iter().find(|t| t.name == n).unwrap().clone();
        g.data(&t).to_vec()
    };
    assert_ne!(
        find(&g1, "blk.0.ffn_down.weight"),
        find(&g2, "blk.0.ffn_down.weight")
    );
    assert_eq!(
        find(&g1, "blk.0.attn_norm.weight"),
        find(&g2, "blk.0.attn_norm.weight")
    );
}

/// DeepSeek V3 as its fp8 release: MLA projections (kv_b_proj, whose K half is read
/// transposed, element by element with its block's scale), routed and shared experts in fp8;
/// routers, the score bias and norms not.
#[test]
fn fp8_deepseek_converts_like_its_dequantized_twin() {
    let d = tmp("deepseek");
    let (a, b) = (d.join("fp8"), d.join("twin"));
    let spec = default_for(Arch::Deepseek2, Vocab::TrainedBpe { size: 512 });
    write_fp8_checkpoint(&spec, &a, &b).unwrap();
    let ck = kiln::source::Checkpoint::open(&a).unwrap();
    for n in [
        "model.layers.1.self_attn.kv_b_proj.weight",
        "model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.1.mlp.experts.3.down_proj.weight",
    ] {
        assert_eq!(
            ck.get(n).unwrap().dtype,
            Ok(kiln::source::SrcDtype::F8E4M3),
            "{n}"
        );
    }
    for ty in ["F32", "Q4_K_M"] {
        let ft = FileType::parse(ty).unwrap();
        let (x, y) = (
            d.join(format!("fp8-{ty}.gguf")),
            d.join(format!("twin-{ty}.gguf")),
        );
        crate::common::fixtures::convert(&a, ft, &x);
        crate::common::fixtures::convert(&b, ft, &y);
        same_tensors(&x, &y, &format!("deepseek {ty}"));
    }
}

/// Llama's q/k rows are permuted on the way: each row keeps its own block's scale.
#[test]
fn fp8_llama_permuted_rows_keep_their_scales() {
    let d = tmp("llama");
    let (a, b) = (d.join("fp8"), d.join("twin"));
    let spec = FixtureSpec {
        shards: 1,
        layers: 2,
        ..kiln_fixtures::checkpoint::llama_spm_default(crate::common::fixtures::tokenizer_model())
    };
    write_fp8_checkpoint(&spec, &a, &b).unwrap();
    let (x, y) = (d.join("fp8.gguf"), d.join("twin.gguf"));
    crate::common::fixtures::convert(&a, FileType::parse("F32").unwrap(), &x);
    crate::common::fixtures::convert(&b, FileType::parse("F32").unwrap(), &y);
    same_tensors(&x, &y, "llama F32");
}

/// Rewrites the fp8 checkpoint's model.safetensors in a fresh case folder through `edit` on
/// (name, dtype, shape, bytes), and its config.json through `cfg`.
fn case(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
    cfg: impl FnOnce(&mut serde_json::Value),
) -> (PathBuf, PathBuf) {
    let d = tmp(name);
    let ck = d.join("ck");
    std::fs::create_dir_all(&ck).unwrap();
    for e in std::fs::read_dir(&checkpoints().0).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    let buf = std::fs::read(ck.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let mut ts: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    ts.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut ts);
    let views: Vec<_> = ts
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        ck.join("model.safetensors"),
        safetensors::tensor::serialize(views, &None).unwrap(),
    )
    .unwrap();
    let p = ck.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg(&mut c);
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (ck, out)
}

/// `kiln quantize -t q8_0 CK -o OUT/out.gguf` fails with one error line holding `needles`,
/// no panic, and OUT stays empty.
fn fails(ck: &Path, out: &Path, needles: &[&str], what: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["quantize", "-t", "q8_0"])
        .arg(ck)
        .arg("-o")
        .arg(out.join("out.gguf"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: should fail: {e}");
    assert!(!e.contains("panicked"), "{what}: {e}");
    let line = e.lines().find(|l| l.contains("kiln: error:"));
    let line = line.unwrap_or_else(|| panic!("{what}: no error line: {e}"));
    for n in needles {
        assert!(line.contains(n), "{what}: {n:?} not in {line}");
    }
    assert_eq!(std::fs::read_dir(out).unwrap().count(), 0, "{what}: output");
    eprintln!("{what}: {line}");
}

#[test]
fn malformed_fp8_checkpoints_fail_cleanly() {
    const W: &str = "model.layers.0.mlp.down_proj.weight";
    const S: &str = "model.layers.0.mlp.down_proj.weight_scale_inv";
    let (ck, out) = case("missing_scale", |ts| ts.retain(|t| t.0 != S), |_| {});
    fails(&ck, &out, &[W, "F8_E4M3", "_scale_inv"], "missing scale");

    let (ck, out) = case(
        "scale_shape",
        |ts| {
            let s = ts.iter_mut().find(|t| t.0 == S).unwrap();
            // [2, 3] for a [256, 320] weight; [3, 3] is not what 128 x 128 blocks give.
            assert_eq!(s.2, vec![2, 3]);
            s.2 = vec![3, 3];
            s.3 = vec![0x3c; 3 * 3 * 4];
        },
        |_| {},
    );
    fails(&ck, &out, &[S, "[3, 3]", "[2, 3]", W], "scale shape");

    let (ck, out) = case(
        "orphan_scale",
        |ts| {
            let s = ts.iter().find(|t| t.0 == S).unwrap().clone();
            ts.push((
                "model.layers.0.mlp.extra_proj.weight_scale_inv".into(),
                s.1,
                s.2,
                s.3,
            ));
        },
        |_| {},
    );
    fails(
        &ck,
        &out,
        &[
            "model.layers.0.mlp.extra_proj.weight_scale_inv",
            "no weight",
        ],
        "scale without weight",
    );

    let (ck, out) = case(
        "gptq",
        |_| {},
        |c| c["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4}),
    );
    fails(
        &ck,
        &out,
        &["config.json", "\"gptq\""],
        "other quant_method",
    );

    let (ck, out) = case(
        "block_size",
        |_| {},
        |c| c["quantization_config"]["weight_block_size"] = serde_json::json!([128]),
    );
    fails(
        &ck,
        &out,
        &["config.json", "weight_block_size"],
        "bad block size",
    );

    let (ck, out) = case(
        "no_config",
        |_| {},
        |c| {
            c.as_object_mut().unwrap().remove("quantization_config");
        },
    );
    fails(
        &ck,
        &out,
        &[W, "F8_E4M3"],
        "fp8 weights without quantization_config",
    );
}
