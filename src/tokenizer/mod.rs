//! Tokenizer -> GGUF `tokenizer.*` metadata, as llama.cpp's convert_hf_to_gguf.py writes it.
//!
//! - [`spm`]: SentencePiece `tokenizer.model` (`_set_vocab_sentencepiece`), model "llama".
//! - [`bpe`]: tokenizer.json BPE: `_set_vocab_gpt2` (model "gpt2", pre-tokenizer by chkhsh) and
//!   `_set_vocab_llama_hf` (model "llama" from a byte-fallback BPE).
//! - [`special`]: gguf-py's `SpecialVocab` (special token ids, add_bos/add_eos/add_sep, merges,
//!   chat template, normalizer flags).
//!
//! [`write_vocab`] follows the [`VocabRecipe`] a family names (the vocab routines of the convert
//! script's model classes) and writes the keys in the same order, with the
//! same GGUF types (token types INT32, scores FLOAT32, ids UINT32, flags BOOL).

pub mod bpe;
pub mod special;
pub mod spm;

use crate::gguf::{Array, Metadata, Value};
use anyhow::{bail, Result};
use std::path::Path;

/// gguf `TokenType` / SentencePiece piece types, as written to tokenizer.ggml.token_type.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// What [`write_vocab`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct VocabInfo {
    /// tokenizer.ggml.model: "llama" (SentencePiece-style) or "gpt2" (byte-level BPE).
    pub model: String,
    /// tokenizer.ggml.pre.
    pub pre: Option<String>,
    /// One line saying how `pre` was chosen (hash match, pre-tokenizer definition, or fixed).
    pub pre_reason: String,
    /// Length of tokenizer.ggml.tokens.
    pub n_tokens: usize,
    /// What convert_hf_to_gguf.py would log as warnings (ignored ids, replaced tokens, ...).
    pub warnings: Vec<String>,
}

/// GGUFWriter.add_array: empty arrays are not written.
pub(crate) fn set_array(md: &mut Metadata, key: &str, a: Array) {
    if !a.is_empty() {
        md.set(key, Value::Array(a));
    }
}

/// convert_hf_to_gguf.py's `does_token_look_special`.
pub fn does_token_look_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

fn spm_info(w: spm::SpmWritten) -> VocabInfo {
    VocabInfo {
        model: "llama".into(),
        pre: Some("default".into()),
        pre_reason: format!(
            "SentencePiece tokenizer.model ({} model): convert's _set_vocab_sentencepiece always writes \"default\"",
            w.model.model_type_name()
        ),
        n_tokens: w.n_tokens,
        warnings: w.warnings,
    }
}

fn bpe_info(model: &str, w: bpe::BpeWritten) -> VocabInfo {
    VocabInfo {
        model: model.into(),
        pre: Some(w.pre),
        pre_reason: w.pre_reason,
        n_tokens: w.n_tokens,
        warnings: w.warnings,
    }
}

/// `_set_vocab_sentencepiece` when tokenizer.model exists, else `_set_vocab_gpt2` (Qwen2/Qwen3,
/// Gemma3).
fn spm_else_gpt2(dir: &Path, vocab_size: Option<usize>, md: &mut Metadata) -> Result<VocabInfo> {
    if dir.join("tokenizer.model").is_file() {
        Ok(spm_info(spm::set_vocab_sentencepiece(dir, vocab_size, md)?))
    } else {
        Ok(bpe_info("gpt2", bpe::set_vocab_gpt2(dir, vocab_size, md)?))
    }
}

fn require_spm(dir: &Path) -> Result<()> {
    let p = dir.join("tokenizer.model");
    if !p.is_file() {
        bail!("{}: not found (checkpoints of this architecture are converted from their SentencePiece tokenizer.model)", p.display());
    }
    Ok(())
}

/// LlamaModel.set_vocab.
fn llama_vocab(dir: &Path, vocab_size: Option<usize>, md: &mut Metadata) -> Result<VocabInfo> {
    if dir.join("tekken.json").is_file() && !dir.join("tokenizer.json").is_file() {
        bail!(
            "{}: Mistral tekken.json tokenizers (convert's _set_vocab_mistral) are not supported",
            dir.join("tekken.json").display()
        );
    }
    let tc_path = dir.join("tokenizer_config.json");
    if tc_path.is_file() {
        let tc = special::read_json(&tc_path)?;
        if let Some(v) = tc.get("add_prefix_space").filter(|v| !v.is_null()) {
            md.set_bool("tokenizer.ggml.add_space_prefix", special::truthy(v));
        }
        if tc.get("tokenizer_class").and_then(|c| c.as_str()) == Some("HybridDNATokenizer") {
            bail!(
                "{}: HybridDNATokenizer (convert's _set_vocab_hybriddna) is not supported",
                tc_path.display()
            );
        }
    }

    let mut info = if dir.join("tokenizer.model").is_file() {
        spm_info(spm::set_vocab_sentencepiece(dir, vocab_size, md)?)
    } else {
        match bpe::llama_hf_applies(dir)? {
            Ok(()) => bpe_info("llama", bpe::set_vocab_llama_hf(dir, md)?),
            Err(why) => {
                if !dir.join("tokenizer.json").is_file() {
                    bail!(
                        "{}: no tokenizer found: neither tokenizer.model nor tokenizer.json exists",
                        dir.display()
                    );
                }
                let mut i = bpe_info("gpt2", bpe::set_vocab_gpt2(dir, vocab_size, md)?);
                i.pre_reason = format!(
                    "{} (no tokenizer.model; LlamaHfVocab does not apply: {why})",
                    i.pre_reason
                );
                i
            }
        }
    };

    let vs = vocab_size.unwrap_or(32000);
    if vs == 32016 {
        // CodeLlama infill tokens; only eot has a GGUF key (prefix/suffix/middle are skipped by
        // gguf-py for want of a writer method).
        let mut sv = special::SpecialVocab::load(
            dir,
            false,
            Some(&["prefix", "suffix", "middle", "eot"]),
            None,
        )?;
        sv.set_special_token("prefix", 32007);
        sv.set_special_token("suffix", 32008);
        sv.set_special_token("middle", 32009);
        sv.set_special_token("eot", 32010);
        sv.add_to(md, &mut info.warnings);
    }
    if vs == 49152 {
        // Granite small models.
        md.set_bool("tokenizer.ggml.add_bos_token", false);
    }
    Ok(info)
}

/// Which of convert_hf_to_gguf.py's vocabulary routines a model family uses (each family's
/// file in `arch/` names its recipe; the tokenizer code knows no family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabRecipe {
    /// `LlamaModel.set_vocab`: tokenizer.model (SentencePiece), else a Llama byte-fallback BPE
    /// tokenizer.json (`LlamaHfVocab`), else byte-level BPE ("gpt2"); plus CodeLlama's infill
    /// tokens (vocab 32016) and Granite's add_bos_token (vocab 49152).
    LlamaSetVocab,
    /// `_set_vocab_sentencepiece` when tokenizer.model exists, else `_set_vocab_gpt2`.
    SentencePieceElseBpe,
    /// Like [`VocabRecipe::SentencePieceElseBpe`], and a SentencePiece vocabulary gets
    /// `add_space_prefix = false`.
    SentencePieceElseBpeNoSpacePrefix,
    /// tokenizer.model required, `add_space_prefix = false`.
    SentencePieceNoSpacePrefix,
    /// tokenizer.model required, `add_space_prefix = false`, with the code-infill special
    /// tokens (prefix 67, suffix 69, middle 68, fsep 70, eot 107) and no chat template, as
    /// convert sets them for the first Gemma.
    SentencePieceCodeInfill,
    /// `_set_vocab_gpt2`: byte-level BPE from tokenizer.json only (`TextModel.set_vocab`).
    Gpt2,
    /// `_set_vocab_glm` (GLM-4.5): `_set_vocab_gpt2`'s vocabulary with bos `[gMASK]`, eot
    /// `<|user|>`, unk `<|endoftext|>` and eom `<|observation|>` from the added tokens.
    Glm,
    /// `_set_vocab_sentencepiece` (tokenizer.model required), then tokenizer_config.json's
    /// `add_prefix_space` as `add_space_prefix` when it is a boolean (ERNIE 4.5).
    SentencePieceWithPrefixSpaceKey,
    /// `Phi3MiniModel.set_vocab`: `_set_vocab_gpt2` when tokenizer_config.json's
    /// `tokenizer_class` is `GPT2Tokenizer` (Phi-4), else tokenizer.model with Phi-3's own
    /// added-token handling ([`spm::set_vocab_phi3`]).
    Phi3,
}

/// Reads the tokenizer of the checkpoint folder `dir` (tokenizer.model and/or tokenizer.json,
/// tokenizer_config.json, config.json, generation_config.json when present) and writes the
/// tokenizer.* keys into `md` in the same order and with the same types convert_hf_to_gguf.py
/// writes, following `recipe`.
///
/// `vocab_size` is config.json's vocab_size (the vocab is padded to it like convert does).
/// generation_config.json is not read: convert's vocab code does not use it.
pub fn write_vocab(
    dir: &Path,
    recipe: VocabRecipe,
    vocab_size: Option<usize>,
    md: &mut Metadata,
) -> Result<VocabInfo> {
    if !dir.is_dir() {
        bail!("{}: not a checkpoint folder", dir.display());
    }
    match recipe {
        VocabRecipe::LlamaSetVocab => llama_vocab(dir, vocab_size, md),
        VocabRecipe::SentencePieceElseBpe => spm_else_gpt2(dir, vocab_size, md),
        VocabRecipe::Gpt2 => Ok(bpe_info("gpt2", bpe::set_vocab_gpt2(dir, vocab_size, md)?)),
        VocabRecipe::Glm => Ok(bpe_info("gpt2", bpe::set_vocab_glm(dir, vocab_size, md)?)),
        VocabRecipe::Phi3 => {
            let tc_path = dir.join("tokenizer_config.json");
            if tc_path.is_file() {
                let tc = special::read_json(&tc_path)?;
                if tc.get("tokenizer_class").and_then(|c| c.as_str()) == Some("GPT2Tokenizer") {
                    return Ok(bpe_info("gpt2", bpe::set_vocab_gpt2(dir, vocab_size, md)?));
                }
            }
            require_spm(dir)?;
            Ok(spm_info(spm::set_vocab_phi3(dir, vocab_size, md)?))
        }
        VocabRecipe::SentencePieceCodeInfill => {
            require_spm(dir)?;
            let mut info = spm_info(spm::set_vocab_sentencepiece(dir, vocab_size, md)?);
            let mut sv = special::SpecialVocab::load(
                dir,
                false,
                Some(&["prefix", "suffix", "middle", "fsep", "eot"]),
                None,
            )?;
            sv.set_special_token("prefix", 67);
            sv.set_special_token("suffix", 69);
            sv.set_special_token("middle", 68);
            sv.set_special_token("fsep", 70);
            sv.set_special_token("eot", 107);
            sv.chat_template = None;
            sv.add_to(md, &mut info.warnings);
            md.set_bool("tokenizer.ggml.add_space_prefix", false);
            Ok(info)
        }
        VocabRecipe::SentencePieceWithPrefixSpaceKey => {
            require_spm(dir)?;
            let info = spm_info(spm::set_vocab_sentencepiece(dir, vocab_size, md)?);
            let tc_path = dir.join("tokenizer_config.json");
            if tc_path.is_file() {
                let tc = special::read_json(&tc_path)?;
                if let Some(v) = tc.get("add_prefix_space").and_then(|v| v.as_bool()) {
                    md.set_bool("tokenizer.ggml.add_space_prefix", v);
                }
            }
            Ok(info)
        }
        VocabRecipe::SentencePieceNoSpacePrefix => {
            require_spm(dir)?;
            let info = spm_info(spm::set_vocab_sentencepiece(dir, vocab_size, md)?);
            md.set_bool("tokenizer.ggml.add_space_prefix", false);
            Ok(info)
        }
        VocabRecipe::SentencePieceElseBpeNoSpacePrefix => {
            let spm = dir.join("tokenizer.model").is_file();
            let info = spm_else_gpt2(dir, vocab_size, md)?;
            if spm {
                md.set_bool("tokenizer.ggml.add_space_prefix", false);
            }
            Ok(info)
        }
    }
}

/// llama.cpp's models/ folder of real vocabularies (ggml-vocab-*.gguf with the .inp/.out
/// tokenizations llama.cpp expects), which `.ci/setup` fetches into target/llama-cpp-vocab;
/// `KILN_LLAMA_CPP_MODELS` names another copy. Absent, the tests that need it fail, saying how
/// to get it.
#[cfg(test)]
pub(crate) fn llama_cpp_vocabs() -> std::path::PathBuf {
    let dir = std::env::var_os("KILN_LLAMA_CPP_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/llama-cpp-vocab")
        });
    assert!(
        dir.join("ggml-vocab-llama-bpe.gguf").is_file(),
        "llama.cpp's test vocabularies are not in {}: run `bash .ci/setup` (or set \
         KILN_LLAMA_CPP_MODELS to llama.cpp's models/ folder)",
        dir.display()
    );
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn looks_special() {
        for t in [
            "<pad>",
            "<mask>",
            "<|im_start|>",
            "<\u{ff5c}begin\u{2581}of\u{2581}sentence\u{ff5c}>",
            "<unused12>",
            "[@BOS@]",
        ] {
            assert!(does_token_look_special(t), "{t}");
        }
        for t in ["<s>", "<tool_call>", "|>", "<|", "hello"] {
            assert!(!does_token_look_special(t), "{t}");
        }
    }

    #[test]
    fn missing_and_unsupported() {
        let d = tempfile::tempdir().unwrap();
        let mut md = Metadata::new();
        let e = format!(
            "{:#}",
            write_vocab(d.path(), VocabRecipe::LlamaSetVocab, None, &mut md).unwrap_err()
        );
        assert!(
            e.contains("tokenizer.model") && e.contains("tokenizer.json"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            write_vocab(d.path(), VocabRecipe::SentencePieceElseBpe, None, &mut md).unwrap_err()
        );
        assert!(e.contains("tokenizer.json"), "{e}");
        let e = format!(
            "{:#}",
            write_vocab(
                d.path(),
                VocabRecipe::SentencePieceNoSpacePrefix,
                None,
                &mut md
            )
            .unwrap_err()
        );
        assert!(e.contains("tokenizer.model"), "{e}");
        let e = format!(
            "{:#}",
            write_vocab(
                &d.path().join("nope"),
                VocabRecipe::LlamaSetVocab,
                None,
                &mut md
            )
            .unwrap_err()
        );
        assert!(e.contains("nope"), "{e}");
        // Broken tokenizer.json names the file.
        std::fs::write(d.path().join("tokenizer.json"), "{\"model\": ").unwrap();
        let e = format!(
            "{:#}",
            write_vocab(d.path(), VocabRecipe::SentencePieceElseBpe, None, &mut md).unwrap_err()
        );
        assert!(e.contains("tokenizer.json"), "{e}");
        assert!(md.is_empty());
    }

    /// SentencePiece checkpoints per arch: key order, the Gemma tweaks, Llama's add_prefix_space.
    #[test]
    fn spm_paths_per_arch() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tokenizer.model"), spm::tests::tiny_model()).unwrap();
        std::fs::write(
            d.path().join("config.json"),
            json!({"bos_token_id": 1, "eos_token_id": 2}).to_string(),
        )
        .unwrap();
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            json!({"add_prefix_space": false, "add_bos_token": true, "add_eos_token": false, "chat_template": "{{ x }}"}).to_string(),
        )
        .unwrap();

        let mut md = Metadata::new();
        let info = write_vocab(d.path(), VocabRecipe::LlamaSetVocab, Some(10), &mut md).unwrap();
        assert_eq!(
            (info.model.as_str(), info.pre.as_deref(), info.n_tokens),
            ("llama", Some("default"), 10)
        );
        let keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token",
                "tokenizer.chat_template"
            ]
        );
        let Some(Value::Array(Array::Str(toks))) = md.get("tokenizer.ggml.tokens") else {
            panic!()
        };
        assert_eq!(toks[8], "[PAD8]");

        let mut md = Metadata::new();
        write_vocab(
            d.path(),
            VocabRecipe::SentencePieceCodeInfill,
            None,
            &mut md,
        )
        .unwrap();
        assert_eq!(
            md.iter().last().map(|(k, _)| k),
            Some("tokenizer.ggml.add_space_prefix")
        );
        assert_eq!(
            md.get("tokenizer.ggml.add_space_prefix"),
            Some(&Value::Bool(false))
        );
        // eot is out of this tiny vocab but convert's second SpecialVocab has no n_vocab limit.
        assert_eq!(
            md.get("tokenizer.ggml.eot_token_id"),
            Some(&Value::U32(107))
        );

        for recipe in [
            VocabRecipe::SentencePieceNoSpacePrefix,
            VocabRecipe::SentencePieceElseBpeNoSpacePrefix,
            VocabRecipe::SentencePieceElseBpe,
        ] {
            let mut md = Metadata::new();
            let info = write_vocab(d.path(), recipe, None, &mut md).unwrap();
            assert_eq!(info.n_tokens, 8);
            assert_eq!(
                md.get("tokenizer.ggml.model"),
                Some(&Value::Str("llama".into()))
            );
            let sp = md.get("tokenizer.ggml.add_space_prefix");
            assert_eq!(
                sp,
                if recipe == VocabRecipe::SentencePieceElseBpe {
                    None
                } else {
                    Some(&Value::Bool(false))
                },
                "{recipe:?}"
            );
        }
    }
}
