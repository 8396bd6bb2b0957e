//! tokenizer.json (and, after a 0xFF byte, tokenizer_config.json) of arbitrary bytes, read the
//! way `kiln quantize` reads a BPE checkpoint's vocab.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (tj, tc) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tj).unwrap();
    if let Some(tc) = tc {
        std::fs::write(dir.path().join("tokenizer_config.json"), tc).unwrap();
    }
    use kiln::tokenizer::VocabRecipe;
    for recipe in [
        VocabRecipe::SentencePieceElseBpe,
        VocabRecipe::LlamaSetVocab,
    ] {
        let mut md = kiln::gguf::Metadata::new();
        let _ = kiln::tokenizer::write_vocab(dir.path(), recipe, None, &mut md);
    }
});
