//! gpt-oss's MXFP4 expert blocks, malformed: scales that do not match their blocks, a missing
//! scale or block tensor, truncated blocks, blocks of another dtype, a quantization method kiln
//! does not read. Each is one error line naming the tensor, no panic, no output. (Conversion,
//! the repack against transformers' dequantization, llama.cpp's logits and llama-quantize are
//! in `convert_vs_llama`.)

use crate::moe::{case, edit_config, fails, rewrite};
use kiln_fixtures::checkpoint::{default_for, Arch, FixtureSpec, Vocab};

fn spec() -> FixtureSpec {
    default_for(Arch::GptOss, Vocab::TrainedBpe { size: 512 })
}

#[test]
fn malformed_mxfp4_blocks_are_one_error_line_and_no_output() {
    // Scales of the wrong shape: 4 blocks per row where the blocks have 8.
    let ck = case("gptoss-scales-shape", &spec());
    rewrite(&ck, |v| {
        for t in v
            .iter_mut()
            .filter(|t| t.0 == "model.layers.1.mlp.experts.gate_up_proj_scales")
        {
            t.2[2] = 4;
            let keep = t.3.len() / 2;
            t.3.truncate(keep);
        }
    });
    fails(
        &ck,
        &[
            "model.layers.1.mlp.experts.gate_up_proj_scales",
            "[4, 512, 4]",
            "does not match its blocks",
        ],
        "scales that do not match the blocks",
    );

    // A missing scale tensor.
    let ck = case("gptoss-no-scales", &spec());
    rewrite(&ck, |v| {
        v.retain(|t| t.0 != "model.layers.0.mlp.experts.down_proj_scales");
    });
    fails(
        &ck,
        &[
            "model.layers.0.mlp.experts.down_proj_blocks",
            "model.layers.0.mlp.experts.down_proj_scales is missing",
        ],
        "missing scales",
    );

    // Missing blocks.
    let ck = case("gptoss-no-blocks", &spec());
    rewrite(&ck, |v| {
        v.retain(|t| t.0 != "model.layers.0.mlp.experts.gate_up_proj_blocks");
    });
    fails(
        &ck,
        &["gate_up_proj_scales", "gate_up_proj_blocks is missing"],
        "missing blocks",
    );

    // Truncated blocks: rows of 7 blocks of 32 where hidden_size is 256 (and scales to match).
    let ck = case("gptoss-short-blocks", &spec());
    rewrite(&ck, |v| {
        for t in v.iter_mut() {
            if t.0 == "model.layers.0.mlp.experts.gate_up_proj_blocks" {
                t.2[2] = 7;
                t.3.truncate(4 * 512 * 7 * 16);
            }
            if t.0 == "model.layers.0.mlp.experts.gate_up_proj_scales" {
                t.2[2] = 7;
                t.3.truncate(4 * 512 * 7);
            }
        }
    });
    fails(
        &ck,
        &[
            "model.layers.0.mlp.experts.gate_up_proj_blocks",
            "[4, 512, 7, 16]",
            "hidden_size = 256",
        ],
        "truncated blocks",
    );

    // A file cut short inside the blocks' data.
    let ck = case("gptoss-cut-file", &spec());
    let f = ck.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len - 1000).unwrap();
    drop(file);
    fails(&ck, &["model.safetensors"], "a file cut short");

    // Blocks stored as BF16.
    let ck = case("gptoss-blocks-dtype", &spec());
    rewrite(&ck, |v| {
        for t in v
            .iter_mut()
            .filter(|t| t.0 == "model.layers.1.mlp.experts.down_proj_blocks")
        {
            t.1 = safetensors::Dtype::BF16;
            t.2[3] = 8;
        }
    });
    fails(
        &ck,
        &["model.layers.1.mlp.experts.down_proj_blocks", "BF16", "U8"],
        "blocks of another dtype",
    );

    // Another quantization method.
    let ck = case("gptoss-quant-method", &spec());
    edit_config(&ck, |c| {
        c["quantization_config"]["quant_method"] = serde_json::json!("bitsandbytes");
    });
    fails(
        &ck,
        &["quant_method", "bitsandbytes"],
        "an unknown quantization method",
    );
}

/// The MXFP4 path under seeded structural mutation: a blocks or scales tensor with a dimension
/// changed (bytes resized to match, so the file itself stays valid), another dtype, a
/// dimension added or dropped, or the tensor removed. Each conversion must give Ok (and a
/// complete file) or an error, never a panic.
#[test]
fn mutated_mxfp4_tensors_never_panic() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let base = case("gptoss-mutations-base", &spec());
    let names = [
        "model.layers.0.mlp.experts.gate_up_proj_blocks",
        "model.layers.0.mlp.experts.gate_up_proj_scales",
        "model.layers.1.mlp.experts.down_proj_blocks",
        "model.layers.1.mlp.experts.down_proj_scales",
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let dir = base.parent().unwrap().join("mutant");
    for i in 0..40 {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&base).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        let target = names[(next() % 4) as usize];
        let op = next() % 5;
        let r1 = next();
        let r2 = next();
        rewrite(&dir, |v| {
            let Some(k) = v.iter().position(|t| t.0 == target) else {
                return;
            };
            let t = &mut v[k];
            match op {
                0 => {
                    let d = (r1 % t.2.len() as u64) as usize;
                    let old = t.2[d];
                    t.2[d] = [0, 1, old.saturating_sub(1), old + 1, 2 * old][(r2 % 5) as usize];
                }
                1 => {
                    t.1 = [
                        safetensors::Dtype::BF16,
                        safetensors::Dtype::F32,
                        safetensors::Dtype::I8,
                    ][(r1 % 3) as usize];
                }
                2 => t.2.push(1 + (r1 % 3) as usize),
                3 => {
                    t.2.pop();
                }
                _ => {
                    v.remove(k);
                    return;
                }
            }
            let n: usize = t.2.iter().product::<usize>() * t.1.size();
            t.3.resize(n, 0x77);
        });
        let out = dir.join("out.gguf");
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut o = kiln::quantize::Options::new(kiln::plan::FileType::F16);
            o.output = Some(out.clone());
            o.force = true;
            let r = kiln::quantize::prepare(&dir, &o)
                .and_then(|p| kiln::quantize::execute(&p, true, false).map(|_| ()));
            r.is_ok()
        }));
        match result {
            Ok(true) => {
                kiln::gguf::GgufFile::open(&out).unwrap();
            }
            Ok(false) => assert!(!out.exists(), "mutation {i}: output after an error"),
            Err(_) => panic!("mutation {i} ({target}, op {op}) panicked"),
        }
    }
}
