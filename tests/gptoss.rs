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
