//! Writing a `SpecialVocab` into GGUF metadata, as gguf-py's `add_to_gguf` and GGUFWriter do.

use super::py::py_bool;
use super::SpecialVocab;
use crate::gguf::{Array, Metadata, Value};
use serde_json::Value as Json;

impl SpecialVocab {
    /// `add_to_gguf`: writes merges, special token ids, add_* flags, chat template(s) and
    /// normalizer flags. Types without a GGUFWriter handler (cls, prefix, ...) are skipped with
    /// a warning, as gguf-py does.
    pub fn add_to(&self, md: &mut Metadata, warnings: &mut Vec<String>) {
        warnings.extend(self.warnings.iter().cloned());
        if !self.merges.is_empty() {
            md.set(
                "tokenizer.ggml.merges",
                Value::Array(Array::Str(self.merges.clone())),
            );
        } else if self.load_merges {
            warnings.push(
                "Adding merges requested but no merges found, output may be non-functional.".into(),
            );
        }
        for (typ, id) in &self.special_token_ids {
            let key = match typ.as_str() {
                "bos" => "tokenizer.ggml.bos_token_id",
                "eos" => "tokenizer.ggml.eos_token_id",
                "unk" => "tokenizer.ggml.unknown_token_id",
                "sep" => "tokenizer.ggml.seperator_token_id",
                "pad" => "tokenizer.ggml.padding_token_id",
                "mask" => "tokenizer.ggml.mask_token_id",
                "eot" => "tokenizer.ggml.eot_token_id",
                "eom" => "tokenizer.ggml.eom_token_id",
                _ => {
                    warnings.push(format!(
                        "No handler for special token type {typ} with id {id} - skipping"
                    ));
                    continue;
                }
            };
            md.set_u32(key, *id);
        }
        for (typ, v) in &self.add_special_token {
            let key = match typ.as_str() {
                "bos" => "tokenizer.ggml.add_bos_token",
                "eos" => "tokenizer.ggml.add_eos_token",
                "sep" => "tokenizer.ggml.add_sep_token",
                _ => {
                    warnings.push(format!(
                        "No handler for add_{typ}_token with value {} - skipping",
                        py_bool(*v)
                    ));
                    continue;
                }
            };
            md.set_bool(key, *v);
        }
        if let Some(ct) = &self.chat_template {
            add_chat_template(md, ct, warnings);
        }
        if let Some(v) = self.normalizer_lowercase {
            md.set_bool("tokenizer.ggml.normalizer.lowercase", v);
        }
        if let Some(v) = self.normalizer_strip_accents {
            md.set_bool("tokenizer.ggml.normalizer.strip_accents", v);
        }
    }
}

/// GGUFWriter.add_chat_template for a string or a list of {name, template}.
fn add_chat_template(md: &mut Metadata, ct: &Json, warnings: &mut Vec<String>) {
    let set_nonempty = |md: &mut Metadata, key: &str, s: &str| {
        if !s.is_empty() {
            md.set_str(key, s);
        }
    };
    match ct {
        Json::String(s) => set_nonempty(md, "tokenizer.chat_template", s),
        Json::Array(list) => {
            let mut default: Option<String> = None;
            let mut names: Vec<String> = Vec::new();
            for choice in list {
                let name: String = choice
                    .get("name")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let template = match choice.get("template") {
                    None | Some(Json::Null) => continue,
                    Some(Json::String(t)) => t.clone(),
                    Some(other) => {
                        warnings.push(format!(
                            "chat template {name:?} is not a string ({other}) - skipping"
                        ));
                        continue;
                    }
                };
                if name.is_empty() {
                    continue;
                }
                if name == "default" {
                    default = Some(template);
                } else {
                    if !names.contains(&name) {
                        names.push(name.clone());
                    }
                    set_nonempty(md, &format!("tokenizer.chat_template.{name}"), &template);
                }
            }
            if !names.is_empty() {
                md.set("tokenizer.chat_templates", Value::Array(Array::Str(names)));
            }
            if let Some(d) = default {
                set_nonempty(md, "tokenizer.chat_template", &d);
            }
        }
        _ => {}
    }
}
