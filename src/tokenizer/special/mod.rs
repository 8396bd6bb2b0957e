//! Special tokens, add-BOS/EOS flags, merges and chat template, as gguf-py's `SpecialVocab`
//! (gguf-py/gguf/vocab.py) derives them from tokenizer.json, tokenizer_config.json,
//! chat_template.jinja / chat_template.json, config.json and merges.txt.
//!
//! The Python works on loosely typed JSON and its outcome depends on Python truthiness and
//! equality (a `bos_token` may be a string or an AddedToken dict), on dict insertion order and
//! on in-place updates of tokenizer_config. This module follows it step by step on
//! `serde_json::Value`, so the same files give the same keys, values and key order.

mod gguf_out;
mod py;
#[cfg(test)]
mod tests;
mod tokenizer_json;

pub use py::{read_json, read_text_universal, truthy};
pub use tokenizer_json::merges_from_tokenizer_json;

use py::*;

use anyhow::{anyhow, bail, Result};
use serde_json::Value as Json;
use std::path::Path;

/// gguf-py `SpecialVocab`.
#[derive(Clone, Debug)]
pub struct SpecialVocab {
    pub merges: Vec<String>,
    /// `add_special_token`, in insertion order (typ -> add flag).
    pub add_special_token: Vec<(String, bool)>,
    /// `special_token_ids`, in insertion order (typ -> id).
    pub special_token_ids: Vec<(String, u32)>,
    /// A string, or a list of {name, template} objects.
    pub chat_template: Option<Json>,
    pub normalizer_lowercase: Option<bool>,
    pub normalizer_strip_accents: Option<bool>,
    pub special_token_types: Vec<String>,
    pub n_vocab: Option<usize>,
    pub load_merges: bool,
    pub warnings: Vec<String>,
}

pub const DEFAULT_SPECIAL_TOKEN_TYPES: [&str; 7] =
    ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

impl SpecialVocab {
    /// `SpecialVocab(path, load_merges, special_token_types, n_vocab)`.
    pub fn load(
        dir: &Path,
        load_merges: bool,
        special_token_types: Option<&[&str]>,
        n_vocab: Option<usize>,
    ) -> Result<Self> {
        let types = special_token_types.unwrap_or(&DEFAULT_SPECIAL_TOKEN_TYPES);
        let mut sv = SpecialVocab {
            merges: Vec::new(),
            add_special_token: Vec::new(),
            special_token_ids: Vec::new(),
            chat_template: None,
            normalizer_lowercase: None,
            normalizer_strip_accents: None,
            special_token_types: types.iter().map(|s| s.to_string()).collect(),
            n_vocab,
            load_merges,
            warnings: Vec::new(),
        };
        sv.try_load_from_tokenizer_json(dir)?;
        sv.try_load_from_config_json(dir)?;
        if sv.load_merges && sv.merges.is_empty() {
            sv.try_load_merges_txt(dir)?;
        }
        Ok(sv)
    }

    pub(super) fn warn(&mut self, msg: String) {
        self.warnings.push(msg);
    }

    /// `_set_special_token` for an integer id.
    pub fn set_special_token(&mut self, typ: &str, tid: u32) {
        if self.n_vocab.is_none_or(|n| (tid as usize) < n) {
            if od_get(&self.special_token_ids, typ).is_none() {
                self.special_token_ids.push((typ.to_string(), tid));
            }
            return;
        }
        let n = self.n_vocab.unwrap_or(0);
        self.warn(format!(
            "Special token type {typ}, id {tid} out of range, must be under {n} - skipping"
        ));
    }

    /// `_set_special_token` for a JSON value: anything but an integer is ignored; a negative id
    /// is an error (as in gguf-py).
    pub(super) fn set_special_token_json(
        &mut self,
        typ: &str,
        tid: Option<&Json>,
        source: &Path,
    ) -> Result<()> {
        let v: i128 = match tid {
            Some(Json::Number(n)) if n.is_i64() || n.is_u64() => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .unwrap(),
            // Python bools are ints.
            Some(Json::Bool(b)) => *b as i128,
            _ => return Ok(()),
        };
        if v < 0 {
            bail!(
                "{}: invalid value for special token type {typ}: {v}",
                source.display()
            );
        }
        let v = u32::try_from(v).map_err(|_| {
            anyhow!(
                "{}: special token type {typ}: id {v} does not fit in 32 bits",
                source.display()
            )
        })?;
        self.set_special_token(typ, v);
        Ok(())
    }

    fn try_load_from_config_json(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Ok(());
        }
        let config = read_json(&path)?;
        let types = self.special_token_types.clone();
        for typ in &types {
            let key = format!("{typ}_token_id");
            let mut id = get(&config, &key);
            if id.is_none() {
                if let Some(tc) = config.get("text_config") {
                    id = get(tc, &key);
                }
            }
            self.set_special_token_json(typ, id.as_ref(), &path)?;
        }
        Ok(())
    }
}
