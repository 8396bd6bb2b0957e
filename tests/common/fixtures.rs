//! The fixture checkpoints and conversions the integration tests build on.
#![allow(dead_code)]

use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use std::path::{Path, PathBuf};

/// The bundled Llama 2 SentencePiece tokenizer.model.
pub fn tokenizer_model() -> PathBuf {
    kiln_fixtures::tokenizer_model()
}

/// Writes the Llama + SentencePiece fixture checkpoint into `dir`, replacing what was there.
pub fn llama_checkpoint(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    kiln_fixtures::checkpoint::write_checkpoint(
        &kiln_fixtures::checkpoint::llama_spm_default(tokenizer_model()),
        dir,
    )
    .unwrap();
}

/// A Llama + SentencePiece fixture of a chosen size (what `kiln-fixtures make-fixture` writes),
/// head_dim = hidden / heads.
pub fn sized_llama_checkpoint(
    dir: &Path,
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
) {
    let spec = kiln_fixtures::sized_llama(hidden, intermediate, layers, heads, kv_heads);
    kiln_fixtures::checkpoint::write_checkpoint(&spec, dir).unwrap();
}

/// `kiln quantize --type FTYPE INPUT -o OUT --force`, panicking with the step that failed.
pub fn convert(input: &Path, ftype: FileType, out: &Path) {
    let mut o = Options::new(ftype);
    o.output = Some(out.to_path_buf());
    o.force = true;
    let p = quantize::prepare(input, &o).unwrap_or_else(|e| panic!("prepare {ftype}: {e:#}"));
    quantize::execute(&p, true, false).unwrap_or_else(|e| panic!("convert {ftype}: {e:#}"));
}

/// A copy of the GGUF `src` at `dst` with `llama.expert_count` set to 100000: llama.cpp accepts
/// the file's header but aborts the process in a GGML_ASSERT (an expert count over its limit of
/// 512) while loading it. Only a separate process survives that.
pub fn aborting_copy(src: &Path, dst: &Path) {
    gguf_with_metadata(
        src,
        dst,
        "llama.expert_count",
        kiln::gguf::Value::U32(100_000),
    );
}

/// A copy of the GGUF `src` at `dst` with metadata `key` set to `value` (tensors unchanged).
pub fn gguf_with_metadata(src: &Path, dst: &Path, key: &str, value: kiln::gguf::Value) {
    let g = kiln::gguf::GgufFile::open(src).unwrap();
    let mut md = g.metadata().clone();
    md.set(key, value);
    let entries = g
        .tensors()
        .iter()
        .map(|t| kiln::gguf::writer::TensorEntry {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ty,
            bytes: t.bytes,
        })
        .collect();
    let mut w = kiln::gguf::writer::GgufWriter::create(dst, true, &md, entries).unwrap();
    for t in g.tensors() {
        w.write(g.data(t)).unwrap();
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
}

/// Writes `spec`'s checkpoint into `dir`, replacing what was there, and returns `dir`.
pub fn fresh_checkpoint(spec: &kiln_fixtures::checkpoint::FixtureSpec, dir: PathBuf) -> PathBuf {
    let _ = std::fs::remove_dir_all(&dir);
    kiln_fixtures::checkpoint::write_checkpoint(spec, &dir).unwrap();
    dir
}

/// The error, with its causes, that `kiln quantize --type q8_0 INPUT -o OUT --force` stops with
/// (in prepare or while converting); panics if the conversion succeeds or leaves OUT behind.
pub fn q8_0_error(input: &Path, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    let mut o = Options::new(FileType::Q8_0);
    o.output = Some(out.to_path_buf());
    o.force = true;
    let e = match quantize::prepare(input, &o) {
        Ok(p) => quantize::execute(&p, true, false).unwrap_err(),
        Err(e) => e,
    };
    assert!(!out.exists(), "{} written despite: {e:#}", out.display());
    format!("{e:#}")
}

/// llama.cpp's logits for a short prompt on the f32 conversion of the checkpoint `dir`
/// (written to `out`), and the prompt's tokens, to compare with the reference forward pass.
pub fn f32_logits(dir: &Path, out: &Path) -> (Vec<Vec<f32>>, Vec<u32>) {
    convert(dir, FileType::F32, out);
    let model = kiln::llama::load(out).unwrap();
    let tokens = kiln::llama::tokenize(
        &model,
        "Once upon a time there was a small model that learned to count: one, two, three.",
        true,
    );
    (kiln::llama::logits(&model, &tokens).unwrap(), tokens)
}

/// The largest |ours - reference| over every position's logits, and the reference's scale
/// (its largest |logit|, at least 1).
pub fn logits_gap(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> (f32, f32) {
    let scale = reference.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let d = ours
        .iter()
        .zip(reference)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    (d, scale.max(1.0))
}

/// Converts the checkpoint `dir` to f32, then requantizes that GGUF to `ftype` with kiln and
/// with llama-quantize, and asserts the two files are the same (files `{name}-*.gguf` in the
/// tests' scratch folder).
pub fn requantizes_like_llama_quantize(dir: &Path, name: &str, ftype: FileType) {
    let tmp = crate::convert_vs_llama::tmp();
    let f32_file = tmp.join(format!("{name}-F32.gguf"));
    convert(dir, FileType::F32, &f32_file);
    let ours = tmp.join(format!("{name}-kiln-{}.gguf", ftype.name()));
    let theirs = tmp.join(format!("{name}-llama-{}.gguf", ftype.name()));
    convert(&f32_file, ftype, &ours);
    kiln::llama::reference_quantize(&f32_file, &theirs, ftype.id(), &Default::default()).unwrap();
    crate::convert_vs_llama::assert_same(
        &ours,
        &theirs,
        &format!("{name} requantized {}", ftype.name()),
    );
}
