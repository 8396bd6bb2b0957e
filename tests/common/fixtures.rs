//! The fixture checkpoints and conversions the integration tests build on.
#![allow(dead_code)]

use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use std::path::{Path, PathBuf};

/// The bundled Llama 2 SentencePiece tokenizer.model.
pub fn tokenizer_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama2-tokenizer.model")
}

/// Writes the Llama + SentencePiece fixture checkpoint into `dir`, replacing what was there.
pub fn llama_checkpoint(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    kiln::fixture::write_checkpoint(&kiln::fixture::llama_spm_default(tokenizer_model()), dir)
        .unwrap();
}

/// `kiln quantize --type FTYPE INPUT -o OUT --force`, panicking with the step that failed.
pub fn convert(input: &Path, ftype: FileType, out: &Path) {
    let mut o = Options::new(ftype);
    o.output = Some(out.to_path_buf());
    o.force = true;
    let p = quantize::prepare(input, &o).unwrap_or_else(|e| panic!("prepare {ftype}: {e:#}"));
    quantize::execute(&p, true, false).unwrap_or_else(|e| panic!("convert {ftype}: {e:#}"));
}
