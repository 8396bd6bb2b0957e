//! tokenizer.json BPE vocabs: convert_hf_to_gguf.py's `_set_vocab_gpt2` (model "gpt2", with
//! `get_vocab_base` and the `get_vocab_base_pre` chkhsh detection of tokenizer.ggml.pre) and
//! `_set_vocab_llama_hf` (model "llama" from a byte-fallback BPE tokenizer.json).
//!
//! convert runs `transformers.AutoTokenizer`; here the `tokenizers` crate (the same Rust code
//! that backs transformers' fast tokenizers) loads tokenizer.json, and [`HfTokenizer::load`]
//! repeats the parts of AutoTokenizer's set-up that change ids or encodings: special tokens and
//! tokenizer_config's added tokens are added, and Llama/Gemma tokenizer classes rebuild the
//! post-processor from add_bos_token/add_eos_token.

mod hf;
mod pre;
#[cfg(test)]
mod tests;

pub use hf::{clean_up_tokenization, HfTokenizer, TokClass};
pub use pre::{chkhsh, chkhsh_table, pre_from_definition, pre_from_hash, py_list_str, CHKTXT};

use super::special::{self, read_json, SpecialVocab};
use super::token_type;
use crate::gguf::{Array, Metadata};
use anyhow::{anyhow, bail, Result};
use serde_json::Value as Json;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The result of writing a BPE vocab.
#[derive(Debug)]
pub struct BpeWritten {
    pub n_tokens: usize,
    pub pre: String,
    pub pre_reason: String,
    pub warnings: Vec<String>,
}

/// convert's `get_vocab_base`: (tokens, token types) for ids 0..vocab_size.
pub fn vocab_base(
    hf: &HfTokenizer,
    vocab_size: Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = hf.tok.get_vocab(true);
    let vocab_size = vocab_size.unwrap_or(vocab.len());
    let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
    if !vocab.is_empty() && max_id >= vocab_size {
        bail!(
            "{}: token id {max_id} is not below vocab_size {vocab_size} (config.json)",
            hf.path.display()
        );
    }
    let mut reverse: HashMap<u32, &str> = HashMap::with_capacity(vocab.len());
    for (t, &id) in &vocab {
        reverse.insert(id, t.as_str());
    }
    let added_dec = hf.tok.get_added_tokens_decoder();
    let added_contents: HashSet<&str> = added_dec.values().map(|t| t.content.as_str()).collect();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size {
        let Some(&tok) = reverse.get(&(i as u32)) else {
            tokens.push(format!("[PAD{i}]"));
            types.push(token_type::UNUSED);
            continue;
        };
        let mut token = tok.to_string();
        if added_contents.contains(tok) {
            let at = added_dec.get(&(i as u32)).ok_or_else(|| {
                anyhow!(
                    "{}: added token {tok:?} has no entry for id {i}",
                    hf.path.display()
                )
            })?;
            if !at.normalized {
                let prev = token.clone();
                token = hf.roundtrip(&prev)?;
                if prev != token {
                    warnings.push(format!(
                        "{prev:?} is encoded and decoded back to {token:?} using the tokenizer"
                    ));
                }
            }
            if at.special || super::does_token_look_special(&token) {
                types.push(token_type::CONTROL);
            } else {
                token = token.replace('\u{2581}', " ");
                types.push(token_type::USER_DEFINED);
            }
        } else {
            types.push(token_type::NORMAL);
        }
        tokens.push(token);
    }
    Ok((tokens, types))
}

/// `_set_vocab_gpt2`: tokenizer.ggml.{model "gpt2", pre, tokens, token_type}, then SpecialVocab
/// with merges.
pub fn set_vocab_gpt2(
    dir: &Path,
    vocab_size: Option<usize>,
    md: &mut Metadata,
) -> Result<BpeWritten> {
    gpt2_with_specials(dir, vocab_size, md, &[])
}

/// convert's `_set_vocab_glm` (GLM-4.5): `_set_vocab_gpt2` plus bos `[gMASK]`, eot `<|user|>`,
/// unk `<|endoftext|>` and eom `<|observation|>`, looked up in the tokenizer's added tokens
/// (`tokenizer.get_added_vocab()`; a missing one stops convert with a KeyError) and set after
/// the ones SpecialVocab read from the files (gguf-py's `_set_special_token` keeps the first).
pub fn set_vocab_glm(
    dir: &Path,
    vocab_size: Option<usize>,
    md: &mut Metadata,
) -> Result<BpeWritten> {
    gpt2_with_specials(
        dir,
        vocab_size,
        md,
        &[
            ("bos", "[gMASK]"),
            ("eot", "<|user|>"),
            ("unk", "<|endoftext|>"),
            ("eom", "<|observation|>"),
        ],
    )
}

/// `_set_vocab_gpt2`, then `_set_special_token(typ, added_vocab[content])` for each of
/// `specials`.
fn gpt2_with_specials(
    dir: &Path,
    vocab_size: Option<usize>,
    md: &mut Metadata,
    specials: &[(&str, &str)],
) -> Result<BpeWritten> {
    let hf = HfTokenizer::load(dir)?;
    let added: HashMap<String, u32> = hf
        .tok
        .get_added_tokens_decoder()
        .into_iter()
        .map(|(id, t)| (t.content, id))
        .collect();
    let mut special_ids = Vec::with_capacity(specials.len());
    for &(typ, content) in specials {
        let Some(&id) = added.get(content) else {
            bail!(
                "{}: no added token {content:?}, which this architecture's vocabulary takes as its {typ} token (convert's _set_vocab_glm)",
                hf.path.display()
            );
        };
        special_ids.push((typ, id));
    }
    let mut warnings = Vec::new();
    let (tokens, types) = vocab_base(&hf, vocab_size, &mut warnings)?;
    let (pre, pre_reason) = hf.detect_pre()?;
    let n = tokens.len();
    md.set_str("tokenizer.ggml.model", "gpt2");
    if !pre.is_empty() {
        md.set_str("tokenizer.ggml.pre", pre.clone());
    }
    super::set_array(md, "tokenizer.ggml.tokens", Array::Str(tokens));
    super::set_array(md, "tokenizer.ggml.token_type", Array::I32(types));
    let mut sv = SpecialVocab::load(dir, true, None, None)?;
    for (typ, id) in special_ids {
        sv.set_special_token(typ, id);
    }
    sv.add_to(md, &mut warnings);
    Ok(BpeWritten {
        n_tokens: n,
        pre,
        pre_reason,
        warnings,
    })
}

/// Whether `_set_vocab_llama_hf` applies, or why convert would fall through to gpt2
/// (FileNotFoundError / TypeError in LlamaHfVocab).
pub fn llama_hf_applies(dir: &Path) -> Result<std::result::Result<(), String>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(Err("no tokenizer.json".into()));
    }
    let tj = read_json(&path)?;
    let model = tj
        .get("model")
        .ok_or_else(|| anyhow!("{}: no \"model\"", path.display()))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    let is_llama3 = mtype == "BPE"
        && model.get("ignore_merges").is_some_and(special::truthy)
        && !model
            .get("byte_fallback")
            .map(special::truthy)
            .unwrap_or(true);
    if is_llama3 {
        return Ok(Err(
            "tokenizer.json is a Llama 3 style BPE (ignore_merges, no byte_fallback)".into(),
        ));
    }
    let decoder = match tj.get("decoder") {
        Some(Json::Null) | None => return Ok(Err("tokenizer.json has no decoder".into())),
        Some(d) => d.get("type").and_then(Json::as_str).unwrap_or(""),
    };
    if mtype != "BPE"
        || !model.get("byte_fallback").is_some_and(special::truthy)
        || decoder != "Sequence"
    {
        return Ok(Err(format!(
            "tokenizer.json is not a Llama (byte-fallback BPE) tokenizer: model {mtype}, byte_fallback {}, decoder {decoder}",
            model.get("byte_fallback").is_some_and(special::truthy)
        )));
    }
    Ok(Ok(()))
}

/// `_set_vocab_llama_hf` (gguf-py LlamaHfVocab): model "llama", pre "default", scores -1000.
/// Call only when [`llama_hf_applies`] says so.
pub fn set_vocab_llama_hf(dir: &Path, md: &mut Metadata) -> Result<BpeWritten> {
    let hf = HfTokenizer::load(dir)?;
    let mut warnings = Vec::new();
    let vocab = hf.tok.get_vocab(true);
    let base = hf.tok.get_vocab_size(false);
    let reverse: HashMap<u32, &str> = vocab.iter().map(|(t, &id)| (id, t.as_str())).collect();
    let special_ids: HashSet<u32> = hf
        .special_tokens
        .iter()
        .filter_map(|t| vocab.get(t).copied())
        .collect();
    let is_byte = |t: &str| {
        let b = t.as_bytes();
        b.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && b[3].is_ascii_hexdigit()
            && b[4].is_ascii_hexdigit()
    };
    let mut added: Vec<(u32, String)> = hf
        .tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(id, _)| *id as usize >= base)
        .map(|(id, t)| (id, t.content))
        .collect();
    added.sort_by_key(|(id, _)| *id);

    let mut tokens = Vec::with_capacity(base + added.len());
    let mut types = Vec::with_capacity(base + added.len());
    for id in 0..base as u32 {
        let t = reverse
            .get(&id)
            .ok_or_else(|| anyhow!("{}: no token with id {id}", hf.path.display()))?;
        types.push(if is_byte(t) {
            token_type::BYTE
        } else if special_ids.contains(&id) {
            token_type::CONTROL
        } else {
            token_type::NORMAL
        });
        tokens.push(t.to_string());
    }
    for (_, text) in added {
        types.push(if hf.special_tokens.contains(&text) {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        });
        tokens.push(text);
    }
    let n = tokens.len();
    let scores = vec![-1000.0f32; n];
    md.set_str("tokenizer.ggml.model", "llama");
    md.set_str("tokenizer.ggml.pre", "default");
    super::set_array(md, "tokenizer.ggml.tokens", Array::Str(tokens));
    super::set_array(md, "tokenizer.ggml.scores", Array::F32(scores));
    super::set_array(md, "tokenizer.ggml.token_type", Array::I32(types));
    let sv = SpecialVocab::load(dir, false, None, Some(n))?;
    sv.add_to(md, &mut warnings);
    Ok(BpeWritten {
        n_tokens: n,
        pre: "default".into(),
        pre_reason:
            "Llama byte-fallback BPE tokenizer.json (LlamaHfVocab): convert writes \"default\""
                .into(),
        warnings,
    })
}
