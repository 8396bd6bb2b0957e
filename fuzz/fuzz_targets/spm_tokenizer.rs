//! A SentencePiece tokenizer.model of arbitrary bytes, read the way `kiln quantize` reads a
//! Llama checkpoint's vocab.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln::tokenizer::spm::parse_model(data);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.model"), data).unwrap();
    let mut md = kiln::gguf::Metadata::new();
    let _ = kiln::tokenizer::write_vocab(
        dir.path(),
        kiln::tokenizer::VocabRecipe::LlamaSetVocab,
        Some(64),
        &mut md,
    );
});
