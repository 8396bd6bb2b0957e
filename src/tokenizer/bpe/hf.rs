//! tokenizer.json loaded the way transformers' `AutoTokenizer` sets it up: the tokenizer
//! classes whose set-up matters, added and special tokens, the rebuilt post-processor, and
//! decoding with `clean_up_tokenization`.

use super::pre::{chkhsh, pre_from_definition, pre_from_hash};
use crate::tokenizer::special::{self, read_json};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// transformers tokenizer classes whose set-up differs in ways that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokClass {
    /// LlamaTokenizerFast / CodeLlamaTokenizerFast: rebuilds the post-processor from
    /// add_bos_token (default true) / add_eos_token (default false).
    Llama,
    /// GemmaTokenizerFast: same post-processor rebuild.
    Gemma,
    Qwen2,
    Gpt2,
    /// PreTrainedTokenizerFast and anything else: tokenizer.json as is.
    Generic,
}

impl TokClass {
    fn from_name(name: &str) -> Self {
        match name.strip_suffix("Fast").unwrap_or(name) {
            "LlamaTokenizer" | "CodeLlamaTokenizer" => TokClass::Llama,
            "GemmaTokenizer" => TokClass::Gemma,
            "Qwen2Tokenizer" => TokClass::Qwen2,
            "GPT2Tokenizer" => TokClass::Gpt2,
            _ => TokClass::Generic,
        }
    }

    fn from_model_type(mt: &str) -> Self {
        match mt {
            "llama" | "mistral" => TokClass::Llama,
            "gemma" | "gemma2" | "gemma3" | "gemma3_text" => TokClass::Gemma,
            "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe" => TokClass::Qwen2,
            "gpt2" => TokClass::Gpt2,
            _ => TokClass::Generic,
        }
    }

    /// The class's `__init__` defaults for (bos, eos, unk, pad).
    fn defaults(self) -> [(&'static str, Option<&'static str>); 4] {
        match self {
            TokClass::Llama => [
                ("bos_token", Some("<s>")),
                ("eos_token", Some("</s>")),
                ("unk_token", Some("<unk>")),
                ("pad_token", None),
            ],
            TokClass::Gemma => [
                ("bos_token", Some("<bos>")),
                ("eos_token", Some("<eos>")),
                ("unk_token", Some("<unk>")),
                ("pad_token", Some("<pad>")),
            ],
            TokClass::Qwen2 => [
                ("bos_token", None),
                ("eos_token", Some("<|endoftext|>")),
                ("unk_token", Some("<|endoftext|>")),
                ("pad_token", Some("<|endoftext|>")),
            ],
            TokClass::Gpt2 => [
                ("bos_token", Some("<|endoftext|>")),
                ("eos_token", Some("<|endoftext|>")),
                ("unk_token", Some("<|endoftext|>")),
                ("pad_token", None),
            ],
            TokClass::Generic => [
                ("bos_token", None),
                ("eos_token", None),
                ("unk_token", None),
                ("pad_token", None),
            ],
        }
    }
}

/// A tokenizer.json loaded the way `AutoTokenizer.from_pretrained(dir)` sets it up.
pub struct HfTokenizer {
    pub tok: Tokenizer,
    /// tokenizer.json as JSON.
    pub json: Json,
    pub path: PathBuf,
    pub class: TokClass,
    /// transformers' `all_special_tokens`, in its order.
    pub special_tokens: Vec<String>,
    /// tokenizer_config's clean_up_tokenization_spaces (transformers' default: false).
    pub clean_up_spaces: bool,
}

fn token_content(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// An AddedToken from a tokenizer_config entry (a string, or a dict with AddedToken fields).
fn added_token_from(v: &Json, special: bool) -> Option<AddedToken> {
    let content = token_content(v)?;
    let flag = |k: &str| v.get(k).and_then(Json::as_bool);
    let mut t = AddedToken::from(content, special);
    if v.is_object() {
        t = t
            .single_word(flag("single_word").unwrap_or(false))
            .lstrip(flag("lstrip").unwrap_or(false))
            .rstrip(flag("rstrip").unwrap_or(false))
            .normalized(flag("normalized").unwrap_or(!special));
    }
    Some(t)
}

impl HfTokenizer {
    /// Loads `dir/tokenizer.json` and applies AutoTokenizer's set-up from tokenizer_config.json
    /// (and config.json's model_type when tokenizer_class is absent).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!(
                "{}: not found (a BPE vocab needs tokenizer.json)",
                path.display()
            );
        }
        let json = read_json(&path)?;
        let mut tok = Tokenizer::from_file(&path).map_err(|e| {
            anyhow!(
                "{}: the tokenizers library cannot load it: {e}",
                path.display()
            )
        })?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = if tc_path.is_file() {
            read_json(&tc_path)?
        } else {
            Json::Object(Default::default())
        };
        let cfg_path = dir.join("config.json");
        let model_type = if cfg_path.is_file() {
            read_json(&cfg_path)?
                .get("model_type")
                .and_then(Json::as_str)
                .map(str::to_string)
        } else {
            None
        };
        let class = match tc.get("tokenizer_class").and_then(Json::as_str) {
            Some(n) => TokClass::from_name(n),
            None => model_type
                .as_deref()
                .map(TokClass::from_model_type)
                .unwrap_or(TokClass::Generic),
        };

        // Special token attributes: tokenizer_config's value (null = None) or the class default.
        let mut attrs: Vec<(&str, Option<Json>)> = Vec::new();
        let defaults = class.defaults();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            let v = match tc.get(key) {
                Some(v) => Some(v.clone()).filter(|v| !v.is_null()),
                // A class default only counts when the vocab has it: transformers would add a
                // missing one as a new token, which is rarely what the checkpoint means, and
                // would push ids past vocab_size.
                None => defaults
                    .iter()
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, d)| *d)
                    .filter(|d| tok.token_to_id(d).is_some())
                    .map(Json::from),
            };
            attrs.push((key, v));
        }
        let mut special_extended: Vec<Json> = attrs.iter().filter_map(|(_, v)| v.clone()).collect();
        if let Some(list) = tc.get("additional_special_tokens").and_then(Json::as_array) {
            special_extended.extend(list.iter().cloned());
        }
        let mut special_tokens: Vec<String> = Vec::new();
        for v in &special_extended {
            if let Some(c) = token_content(v) {
                if !special_tokens.contains(&c) {
                    special_tokens.push(c);
                }
            }
        }

        // Tokens transformers adds on top of tokenizer.json: tokenizer_config's
        // added_tokens_decoder entries (by id) and special tokens not already added.
        let existing: HashSet<String> = tok
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        let mut to_add: Vec<AddedToken> = Vec::new();
        let mut to_add_names: HashSet<String> = HashSet::new();
        if let Some(dec) = tc.get("added_tokens_decoder").and_then(Json::as_object) {
            let mut entries: Vec<(u64, &Json)> = dec
                .iter()
                .filter_map(|(k, v)| k.trim().parse::<u64>().ok().map(|id| (id, v)))
                .collect();
            entries.sort_by_key(|(id, _)| *id);
            for (_, v) in entries {
                let special = v.get("special").is_some_and(special::truthy);
                if let Some(t) = added_token_from(v, special) {
                    if !existing.contains(&t.content) && to_add_names.insert(t.content.clone()) {
                        to_add.push(t);
                    }
                }
            }
        }
        for v in &special_extended {
            if let Some(t) = added_token_from(v, true) {
                if !existing.contains(&t.content) && to_add_names.insert(t.content.clone()) {
                    to_add.push(t);
                }
            }
        }
        for t in &mut to_add {
            t.special = t.special || special_tokens.contains(&t.content);
        }
        if !to_add.is_empty() {
            tok.add_tokens(&to_add);
        }

        if matches!(class, TokClass::Llama | TokClass::Gemma) {
            let flag = |k: &str, d: bool| tc.get(k).and_then(Json::as_bool).unwrap_or(d);
            let (add_bos, add_eos) = (flag("add_bos_token", true), flag("add_eos_token", false));
            let attr = |k: &str| {
                attrs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(token_content)
            };
            let unk_id = attr("unk_token").and_then(|u| tok.token_to_id(&u));
            let mut single = String::new();
            let mut specials: Vec<(String, u32)> = Vec::new();
            let mut bos_s = String::new();
            let mut eos_s = String::new();
            if add_bos {
                let bos = attr("bos_token").ok_or_else(|| {
                    anyhow!(
                        "{}: add_bos_token = True but bos_token = None",
                        tc_path.display()
                    )
                })?;
                let id = tok
                    .token_to_id(&bos)
                    .or(unk_id)
                    .ok_or_else(|| anyhow!("bos_token {bos:?} is not in the vocab"))?;
                single.push_str(&format!("{bos}:0 "));
                bos_s = bos.clone();
                specials.push((bos, id));
            }
            single.push_str("$A:0");
            if add_eos {
                let eos = attr("eos_token").ok_or_else(|| {
                    anyhow!(
                        "{}: add_eos_token = True but eos_token = None",
                        tc_path.display()
                    )
                })?;
                let id = tok
                    .token_to_id(&eos)
                    .or(unk_id)
                    .ok_or_else(|| anyhow!("eos_token {eos:?} is not in the vocab"))?;
                single.push_str(&format!(" {eos}:0"));
                eos_s = eos.clone();
                specials.push((eos, id));
            }
            let mut pair = single.clone();
            if add_bos {
                pair.push_str(&format!(" {bos_s}:1"));
            }
            pair.push_str(" $B:1");
            if add_eos {
                pair.push_str(&format!(" {eos_s}:1"));
            }
            let pp = TemplateProcessing::builder()
                .try_single(single.as_str())
                .and_then(|b| b.try_pair(pair.as_str()))
                .map_err(|e| anyhow!("building the post-processor template: {e}"))?
                .special_tokens(specials)
                .build()
                .map_err(|e| anyhow!("building the post-processor template: {e}"))?;
            tok.with_post_processor(Some(pp));
        }

        let clean_up_spaces = tc
            .get("clean_up_tokenization_spaces")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        Ok(HfTokenizer {
            tok,
            json,
            path,
            class,
            special_tokens,
            clean_up_spaces,
        })
    }

    /// `tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))`.
    pub fn roundtrip(&self, text: &str) -> Result<String> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
        let s = self
            .tok
            .decode(enc.get_ids(), false)
            .map_err(|e| anyhow!("decoding {text:?}: {e}"))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&s)
        } else {
            s
        })
    }

    /// (tokenizer.ggml.pre, one-line reason).
    pub fn detect_pre(&self) -> Result<(String, String)> {
        let (hash, _) = chkhsh(&self.tok).with_context(|| format!("{}", self.path.display()))?;
        if let Some(name) = pre_from_hash(&hash) {
            return Ok((
                name.to_string(),
                format!("chkhsh {hash} is llama.cpp's {name:?} (convert_hf_to_gguf.py table)"),
            ));
        }
        match pre_from_definition(&self.json) {
            Ok((name, why)) => Ok((name.to_string(), format!("chkhsh {hash} is not in llama.cpp's table; {why}"))),
            Err(e) => bail!(
                "{}: BPE pre-tokenizer not recognized: its chkhsh {hash} is not in llama.cpp's table (convert_hf_to_gguf.py would stop here too), and {e}",
                self.path.display()
            ),
        }
    }
}

/// transformers' `clean_up_tokenization`.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
