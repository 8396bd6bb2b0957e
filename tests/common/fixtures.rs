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
