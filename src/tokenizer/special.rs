//! Special tokens, add-BOS/EOS flags, merges and chat template, as gguf-py's `SpecialVocab`
//! (gguf-py/gguf/vocab.py) derives them from tokenizer.json, tokenizer_config.json,
//! chat_template.jinja / chat_template.json, config.json and merges.txt.
//!
//! The Python works on loosely typed JSON and its outcome depends on Python truthiness and
//! equality (a `bos_token` may be a string or an AddedToken dict), on dict insertion order and
//! on in-place updates of tokenizer_config. This module follows it step by step on
//! `serde_json::Value`, so the same files give the same keys, values and key order.

use crate::gguf::{Array, Metadata, Value};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};

/// Python truthiness of a JSON value.
pub fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

fn truthy_opt(v: &Option<Json>) -> bool {
    v.as_ref().is_some_and(truthy)
}

/// `dict.get(key)` with JSON null read as Python None.
fn get(obj: &Json, key: &str) -> Option<Json> {
    obj.get(key).filter(|v| !v.is_null()).cloned()
}

/// `x in (a, b)` with None as Python None.
fn in2(x: &Option<Json>, a: &Option<Json>, b: &Option<Json>) -> bool {
    x == a || x == b
}

/// `item.get(kind, {}).get('id')` for TemplateProcessing pieces.
fn piece_id(item: &Json, kind: &str) -> Option<Json> {
    item.get(kind).and_then(|s| get(s, "id"))
}

/// Ordered-dict helpers over a Vec of pairs.
fn od_set<T>(od: &mut Vec<(String, T)>, key: &str, v: T) {
    if let Some(slot) = od.iter_mut().find(|(k, _)| k == key) {
        slot.1 = v;
    } else {
        od.push((key.to_string(), v));
    }
}

fn od_get<'a, T>(od: &'a [(String, T)], key: &str) -> Option<&'a T> {
    od.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Reads a text file as Python's `open(..., encoding='utf-8').read()` does (universal newlines).
pub fn read_text_universal(path: &Path) -> Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.replace("\r\n", "\n").replace('\r', "\n"))
}

pub fn read_json(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

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

    fn warn(&mut self, msg: String) {
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
    fn set_special_token_json(
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

    fn try_load_merges_txt(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join("merges.txt");
        if !path.is_file() {
            return Ok(());
        }
        let text = read_text_universal(&path)?;
        let mut lines = text.split_inclusive('\n').peekable();
        let mut line_num = 0usize;
        if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
            lines.next();
            line_num = 1;
        }
        let mut merges = Vec::new();
        for line in lines {
            line_num += 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() != 2 {
                self.warn(format!(
                    "merges.txt: Line {line_num}: Entry malformed, ignoring"
                ));
                continue;
            }
            merges.push(format!("{} {}", parts[0], parts[1]));
        }
        self.merges = merges;
        Ok(())
    }

    fn parse_normalizer(&mut self, normalizer: &Json) {
        match normalizer.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.normalizer_lowercase = Some(true),
            Some("StripAccents") => self.normalizer_strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = normalizer.get("lowercase") {
                    self.normalizer_lowercase = json_bool(v);
                }
                if let Some(v) = normalizer.get("strip_accents") {
                    self.normalizer_strip_accents = json_bool(v);
                }
            }
            Some("Sequence") => {
                if let Some(list) = normalizer.get("normalizers").and_then(Json::as_array) {
                    for n in list {
                        self.parse_normalizer(n);
                    }
                }
            }
            _ => {}
        }
    }

    fn try_load_from_tokenizer_json(&mut self, dir: &Path) -> Result<()> {
        let tokenizer_file = dir.join("tokenizer.json");
        let tokenizer: Option<Json> = if tokenizer_file.is_file() {
            Some(read_json(&tokenizer_file)?)
        } else {
            None
        };
        let mut added_tokens: Vec<Json> = Vec::new();
        if let Some(tok) = &tokenizer {
            if self.load_merges {
                self.merges = merges_from_tokenizer_json(tok)
                    .with_context(|| format!("{}", tokenizer_file.display()))?;
                if tok
                    .pointer("/model/merges")
                    .and_then(Json::as_array)
                    .is_some_and(|m| {
                        m.first().is_some_and(Json::is_array)
                            && m.iter().any(|p| {
                                p.as_array().is_some_and(|p| {
                                    p.iter()
                                        .any(|s| s.as_str().is_some_and(|s| s.contains(' ')))
                                })
                            })
                    })
                {
                    self.warn(format!(
                        "Spaces in merges detected, encoding as {:?}",
                        '\u{120}'
                    ));
                }
            }
            if let Some(n) = tok.get("normalizer").filter(|n| truthy(n)) {
                let n = n.clone();
                self.parse_normalizer(&n);
            }
            if let Some(list) = tok.get("added_tokens").and_then(Json::as_array) {
                added_tokens = list.clone();
            }
        }
        let config_file = dir.join("tokenizer_config.json");
        let mut tc: Option<Map<String, Json>> = None;
        if config_file.is_file() {
            match read_json(&config_file)? {
                Json::Object(m) => tc = Some(m),
                _ => bail!("{}: expected a JSON object", config_file.display()),
            }
        }
        let tc_truthy = |tc: &Option<Map<String, Json>>| tc.as_ref().is_some_and(|m| !m.is_empty());
        let tc_get = |tc: &Option<Map<String, Json>>, k: &str| {
            tc.as_ref()
                .and_then(|m| m.get(k))
                .filter(|v| !v.is_null())
                .cloned()
        };

        if let Some(tok) = &tokenizer {
            let mut special_bos = tc_get(&tc, "bos_token");
            let mut special_cls = tc_get(&tc, "cls_token");
            let mut special_eos = tc_get(&tc, "eos_token");
            let mut special_sep = tc_get(&tc, "sep_token");
            if !truthy_opt(&special_bos) && truthy_opt(&special_cls) && tc_truthy(&tc) {
                special_bos = special_cls.clone();
                tc_set(&mut tc, "bos_token", &special_bos);
            }
            if !truthy_opt(&special_eos) && truthy_opt(&special_sep) && tc_truthy(&tc) {
                special_eos = special_sep.clone();
                tc_set(&mut tc, "eos_token", &special_eos);
            }
            if let Some(pp) = tok.get("post_processor").filter(|p| truthy(p)) {
                let processors: Vec<Json> = match pp.get("processors") {
                    Some(list) => list.as_array().cloned().unwrap_or_default(),
                    None => vec![pp.clone()],
                };
                for processor in &processors {
                    match processor.get("type").and_then(Json::as_str) {
                        Some("ByteLevel") => {
                            if od_get(&self.add_special_token, "bos").is_none() {
                                self.add_special_token.push(("bos".into(), false));
                            }
                            if od_get(&self.add_special_token, "eos").is_none() {
                                self.add_special_token.push(("eos".into(), false));
                            }
                        }
                        Some("RobertaProcessing") => {
                            od_set(&mut self.add_special_token, "bos", true);
                            od_set(&mut self.add_special_token, "eos", true);
                            od_set(&mut self.add_special_token, "sep", true);
                            if !truthy_opt(&special_cls) && tc_truthy(&tc) {
                                special_cls = match processor.get("cls") {
                                    Some(c) => c.get(0).filter(|v| !v.is_null()).cloned(),
                                    None => special_bos.clone(),
                                };
                                tc_set(&mut tc, "cls_token", &special_cls);
                            }
                            if !truthy_opt(&special_sep) && tc_truthy(&tc) {
                                special_sep = match processor.get("sep") {
                                    Some(c) => c.get(0).filter(|v| !v.is_null()).cloned(),
                                    None => special_eos.clone(),
                                };
                                tc_set(&mut tc, "sep_token", &special_sep);
                            }
                        }
                        Some("TemplateProcessing") => {
                            let single: Vec<Json> = processor
                                .get("single")
                                .and_then(Json::as_array)
                                .cloned()
                                .unwrap_or_default();
                            let pair: Vec<Json> = processor
                                .get("pair")
                                .and_then(Json::as_array)
                                .cloned()
                                .unwrap_or_default();
                            let mut special_first: Option<Json> = None;
                            let mut special_last: Option<Json> = None;
                            if single.len() > 1 {
                                special_first = piece_id(&single[0], "SpecialToken").filter(truthy);
                                if special_first.is_some() {
                                    if !tc_truthy(&tc) {
                                        special_bos = special_first.clone();
                                    } else if !in2(&special_first, &special_bos, &special_cls) {
                                        if !truthy_opt(&special_bos) {
                                            special_bos = special_first.clone();
                                            tc_set(&mut tc, "bos_token", &special_bos);
                                        }
                                        if !truthy_opt(&special_cls) {
                                            special_cls = special_first.clone();
                                            tc_set(&mut tc, "cls_token", &special_cls);
                                        }
                                    }
                                    let ok = in2(&special_first, &special_bos, &special_cls);
                                    od_set(&mut self.add_special_token, "bos", ok);
                                    if !ok {
                                        self.warn(format!(
                                            "Unknown leading special token {} in TemplateProcessing<single>",
                                            show(&special_first)
                                        ));
                                    }
                                }
                                special_last = piece_id(&single[single.len() - 1], "SpecialToken")
                                    .filter(truthy);
                                if special_last.is_some() {
                                    if !tc_truthy(&tc) {
                                        special_eos = special_last.clone();
                                    } else if special_last != special_eos {
                                        if !self.special_token_types.iter().any(|t| t == "eot") {
                                            self.special_token_types.push("eot".into());
                                            tc_set(&mut tc, "eot_token", &special_eos);
                                        } else if !self
                                            .special_token_types
                                            .iter()
                                            .any(|t| t == "eom")
                                        {
                                            self.special_token_types.push("eom".into());
                                            tc_set(&mut tc, "eom_token", &special_eos);
                                        } else {
                                            self.warn(format!(
                                                "Overriding EOS token {} with {} without EOT/EOM fallback!",
                                                show(&special_eos),
                                                show(&special_last)
                                            ));
                                        }
                                        special_eos = special_last.clone();
                                        tc_set(&mut tc, "eos_token", &special_eos);
                                    }
                                    od_set(
                                        &mut self.add_special_token,
                                        "eos",
                                        special_last == special_eos,
                                    );
                                }
                            }
                            if !pair.is_empty() {
                                let seq_start = if special_first.is_some()
                                    && piece_id(&pair[0], "SpecialToken") == special_first
                                {
                                    1
                                } else {
                                    0
                                };
                                let trim_last = special_last.is_some()
                                    && piece_id(&pair[pair.len() - 1], "SpecialToken")
                                        == special_last;
                                if (special_first.is_some() && seq_start == 0)
                                    || (special_last.is_some() && !trim_last)
                                {
                                    self.warn("TemplateProcessing<single> leading/trailing special tokens do not match TemplateProcessing<pair>".into());
                                }
                                let end = if trim_last {
                                    pair.len().saturating_sub(1)
                                } else {
                                    pair.len()
                                };
                                let sliced: &[Json] = if seq_start < end {
                                    &pair[seq_start..end]
                                } else {
                                    &[]
                                };
                                if !sliced.is_empty() {
                                    let tmpl_a = piece_id(&sliced[0], "Sequence");
                                    let tmpl_b = piece_id(&sliced[sliced.len() - 1], "Sequence");
                                    let a = Some(Json::from("A"));
                                    let b = Some(Json::from("B"));
                                    if tmpl_a != a || tmpl_b != b {
                                        self.warn(format!(
                                            "Unknown sequence {}...{} in TemplateProcessing<pair>",
                                            show(&tmpl_a),
                                            show(&tmpl_b)
                                        ));
                                    }
                                    let middle: &[Json] = if sliced.len() >= 2 {
                                        &sliced[1..sliced.len() - 1]
                                    } else {
                                        &[]
                                    };
                                    if tmpl_a == a && tmpl_b == b && !middle.is_empty() {
                                        let mut add_sep = false;
                                        let entry =
                                            piece_id(&middle[0], "SpecialToken").filter(truthy);
                                        if entry.is_some() {
                                            let known = in2(&entry, &special_sep, &special_eos);
                                            if known && special_last.is_none() {
                                                add_sep = true;
                                            }
                                            if !known {
                                                self.warn(format!("Unknown separator token {} in TemplateProcessing<pair>", show(&entry)));
                                            }
                                        } else {
                                            self.warn(format!("Unknown middle sequence {} in TemplateProcessing<pair>", middle[0]));
                                        }
                                        if middle.len() == 2 {
                                            let entry =
                                                piece_id(&middle[1], "SpecialToken").filter(truthy);
                                            if entry.is_some() {
                                                let known = in2(&entry, &special_sep, &special_eos);
                                                if known {
                                                    add_sep = true;
                                                } else {
                                                    self.warn(format!(
                                                        "Unknown second separator token {} in TemplateProcessing<pair>",
                                                        show(&entry)
                                                    ));
                                                }
                                            } else {
                                                self.warn(format!("Unknown second middle sequence {} in TemplateProcessing<pair>", middle[1]));
                                            }
                                        }
                                        od_set(&mut self.add_special_token, "sep", add_sep);
                                        if add_sep && !truthy_opt(&special_sep) && tc_truthy(&tc) {
                                            tc_set(&mut tc, "sep_token", &special_eos);
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }

        let Some(tc) = tc.filter(|m| !m.is_empty()) else {
            return Ok(());
        };

        // Chat template: tokenizer_config's chat_template key wins (even when null); else
        // chat_template.jinja (with additional_chat_templates/*.jinja as named ones); else
        // chat_template.json.
        let mut alt: Option<Json> = None;
        let jinja = dir.join("chat_template.jinja");
        let json_file = dir.join("chat_template.json");
        if jinja.is_file() {
            let default = read_text_universal(&jinja)?;
            let mut extra: Vec<PathBuf> =
                match std::fs::read_dir(dir.join("additional_chat_templates")) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|e| e == "jinja") && p.is_file())
                        .collect(),
                    Err(_) => Vec::new(),
                };
            if extra.is_empty() {
                alt = Some(Json::String(default));
            } else {
                // Python takes them in directory order; sorted here for a reproducible file.
                extra.sort();
                let mut list = vec![serde_json::json!({"name": "default", "template": default})];
                for p in extra {
                    let name = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    list.push(
                        serde_json::json!({"name": name, "template": read_text_universal(&p)?}),
                    );
                }
                alt = Some(Json::Array(list));
            }
        } else if json_file.is_file() {
            alt = get(&read_json(&json_file)?, "chat_template");
        }
        let chat_template = match tc.get("chat_template") {
            Some(v) => Some(v.clone()).filter(|v| !v.is_null()),
            None => alt,
        };
        match chat_template {
            None => self.chat_template = None,
            Some(v @ (Json::String(_) | Json::Array(_))) => self.chat_template = Some(v),
            Some(_) => self.warn(format!(
                "Bad type for chat_template field in {} - ignoring",
                config_file.display()
            )),
        }

        let types = self.special_token_types.clone();
        for typ in &types {
            if let Some(Json::Bool(add)) = tc.get(&format!("add_{typ}_token")) {
                match od_get(&self.add_special_token, typ) {
                    None => self.add_special_token.push((typ.clone(), *add)),
                    Some(&cur) if cur != *add => self.warn(format!(
                        "Mismatch between tokenizer_config add_{typ}_token({}) and tokenizer post_processor<{typ}>({}) - opting for the latter",
                        py_bool(*add),
                        py_bool(cur)
                    )),
                    Some(_) => {}
                }
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added_tokens
                .iter()
                .find(|t| t.get("content").and_then(Json::as_str) == Some(content.as_str()))
                .and_then(|t| t.get("id").cloned());
            self.set_special_token_json(typ, id.as_ref(), &config_file)?;
        }
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

fn json_bool(v: &Json) -> Option<bool> {
    match v {
        Json::Null => None,
        other => Some(truthy(other)),
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn show(v: &Option<Json>) -> String {
    match v {
        None => "None".into(),
        Some(v) => v.to_string(),
    }
}

fn tc_set(tc: &mut Option<Map<String, Json>>, key: &str, v: &Option<Json>) {
    if let Some(m) = tc {
        m.insert(key.to_string(), v.clone().unwrap_or(Json::Null));
    }
}

/// tokenizer.json `model.merges` as "a b" strings: the old string form as is, the pair form
/// (transformers >= 4.45) joined with a space, spaces inside a part encoded as U+0120 ('Ġ').
pub fn merges_from_tokenizer_json(tok: &Json) -> Result<Vec<String>> {
    let Some(merges) = tok
        .get("model")
        .and_then(|m| m.get("merges"))
        .and_then(Json::as_array)
    else {
        return Ok(Vec::new());
    };
    let Some(first) = merges.first() else {
        return Ok(Vec::new());
    };
    if first.is_string() {
        return merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("model.merges[{i}] is not a string like merges[0]"))
            })
            .collect();
    }
    if first
        .as_array()
        .is_some_and(|p| p.len() == 2 && p[0].is_string())
    {
        return merges
            .iter()
            .enumerate()
            .map(|(i, pair)| {
                let parts = pair
                    .as_array()
                    .ok_or_else(|| anyhow!("model.merges[{i}] is not a pair"))?;
                let parts = parts
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .map(|s| {
                                s.chars()
                                    .map(|c| if c == ' ' { '\u{120}' } else { c })
                                    .collect::<String>()
                            })
                            .ok_or_else(|| anyhow!("model.merges[{i}] holds a non-string"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(parts.join(" "))
            })
            .collect();
    }
    bail!("Unknown tokenizer merges format (model.merges[0] is {first})")
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, v: &Json) {
        std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
    }

    fn keys(md: &Metadata) -> Vec<String> {
        md.iter().map(|(k, _)| k.to_string()).collect()
    }

    /// The Llama 2 HF layout: TemplateProcessing with <s>, AddedToken dicts in tokenizer_config.
    #[test]
    fn llama2_hf_layout() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "tokenizer.json",
            &json!({
                "added_tokens": [
                    {"id": 0, "content": "<unk>", "special": true},
                    {"id": 1, "content": "<s>", "special": true},
                    {"id": 2, "content": "</s>", "special": true}
                ],
                "post_processor": {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]},
                "model": {"type": "BPE", "merges": ["a b"]}
            }),
        );
        write(
            d.path(),
            "tokenizer_config.json",
            &json!({
                "add_bos_token": true, "add_eos_token": false,
                "bos_token": {"__type": "AddedToken", "content": "<s>"},
                "eos_token": {"__type": "AddedToken", "content": "</s>"},
                "unk_token": {"__type": "AddedToken", "content": "<unk>"},
                "pad_token": null,
                "chat_template": "{{ bos_token }}"
            }),
        );
        write(
            d.path(),
            "config.json",
            &json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
        );
        let sv = SpecialVocab::load(d.path(), false, None, Some(32000)).unwrap();
        assert_eq!(
            sv.special_token_ids,
            vec![
                ("bos".into(), 1),
                ("eos".into(), 2),
                ("unk".into(), 0),
                ("cls".into(), 1),
                ("pad".into(), 0)
            ]
        );
        assert_eq!(
            sv.add_special_token,
            vec![
                ("bos".into(), true),
                ("sep".into(), false),
                ("eos".into(), false)
            ]
        );
        let mut md = Metadata::new();
        let mut w = Vec::new();
        sv.add_to(&mut md, &mut w);
        assert_eq!(
            keys(&md),
            [
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_sep_token",
                "tokenizer.ggml.add_eos_token",
                "tokenizer.chat_template"
            ]
        );
        assert!(w
            .iter()
            .any(|w| w.contains("No handler for special token type cls")));
    }

    /// Qwen2-like: ByteLevel post-processor, null bos_token, ids from config.json, pair merges.
    #[test]
    fn qwen2_layout_and_pair_merges() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "tokenizer.json",
            &json!({
                "added_tokens": [{"id": 5, "content": "<|endoftext|>", "special": true}, {"id": 6, "content": "<|im_end|>", "special": true}],
                "normalizer": {"type": "NFC"},
                "post_processor": {"type": "ByteLevel", "add_prefix_space": false},
                "model": {"type": "BPE", "merges": [["Ġ", "t"], ["a b", "c"]]}
            }),
        );
        write(
            d.path(),
            "tokenizer_config.json",
            &json!({"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_prefix_space": false}),
        );
        std::fs::write(d.path().join("chat_template.jinja"), "{{ x }}\r\n").unwrap();
        write(
            d.path(),
            "config.json",
            &json!({"bos_token_id": 5, "eos_token_id": 6}),
        );
        let sv = SpecialVocab::load(d.path(), true, None, None).unwrap();
        assert_eq!(sv.merges, vec!["Ġ t".to_string(), "aĠb c".to_string()]);
        assert_eq!(
            sv.special_token_ids,
            vec![("eos".into(), 6), ("pad".into(), 5), ("bos".into(), 5)]
        );
        let mut md = Metadata::new();
        sv.add_to(&mut md, &mut Vec::new());
        assert_eq!(
            keys(&md),
            [
                "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_eos_token",
                "tokenizer.chat_template"
            ]
        );
        assert_eq!(
            md.get("tokenizer.chat_template"),
            Some(&Value::Str("{{ x }}\n".into()))
        );
        assert_eq!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(&Value::Bool(false))
        );
    }

    #[test]
    fn llama3_template_eos_and_named_templates() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "tokenizer.json",
            &json!({
                "added_tokens": [{"id": 10, "content": "<|begin_of_text|>", "special": true}],
                "post_processor": {"type": "Sequence", "processors": [
                    {"type": "ByteLevel"},
                    {"type": "TemplateProcessing",
                     "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                     "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                              {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]}
                ]},
                "model": {"type": "BPE", "merges": []}
            }),
        );
        write(
            d.path(),
            "tokenizer_config.json",
            &json!({"bos_token": "<|begin_of_text|>", "chat_template": [
                {"name": "tool use", "template": "T"}, {"name": "default", "template": "D"}, {"name": "rag", "template": null}
            ]}),
        );
        let sv = SpecialVocab::load(d.path(), true, None, None).unwrap();
        // ByteLevel setdefault(False) first, then TemplateProcessing overrides bos in place.
        assert_eq!(
            sv.add_special_token,
            vec![
                ("bos".into(), true),
                ("eos".into(), false),
                ("sep".into(), false)
            ]
        );
        let mut md = Metadata::new();
        let mut w = Vec::new();
        sv.add_to(&mut md, &mut w);
        assert!(w.iter().any(|w| w.contains("no merges found")));
        assert_eq!(
            md.get("tokenizer.chat_template.tool_use"),
            Some(&Value::Str("T".into()))
        );
        assert_eq!(
            md.get("tokenizer.chat_templates"),
            Some(&Value::Array(Array::Str(vec!["tool_use".into()])))
        );
        assert_eq!(
            md.get("tokenizer.chat_template"),
            Some(&Value::Str("D".into()))
        );
    }

    #[test]
    fn config_only_and_errors() {
        let d = tempfile::tempdir().unwrap();
        // No tokenizer_config: ids come from config.json (text_config too), nothing else.
        write(
            d.path(),
            "config.json",
            &json!({"text_config": {"eos_token_id": 3}, "bos_token_id": 2, "pad_token_id": 99}),
        );
        let sv = SpecialVocab::load(d.path(), false, None, Some(10)).unwrap();
        assert_eq!(
            sv.special_token_ids,
            vec![("bos".into(), 2), ("eos".into(), 3)]
        );
        assert!(sv
            .warnings
            .iter()
            .any(|w| w.contains("pad, id 99 out of range")));
        // Negative ids are an error naming the file, as in gguf-py.
        write(d.path(), "config.json", &json!({"pad_token_id": -1}));
        let e = format!(
            "{:#}",
            SpecialVocab::load(d.path(), false, None, None).unwrap_err()
        );
        assert!(e.contains("config.json") && e.contains("pad"), "{e}");
        // Broken JSON names the file.
        std::fs::write(d.path().join("config.json"), "{").unwrap();
        let e = format!(
            "{:#}",
            SpecialVocab::load(d.path(), false, None, None).unwrap_err()
        );
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn merges_txt_fallback() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("merges.txt"),
            "#version: 0.2\nĠ t\n\nh e\nbad line x\n",
        )
        .unwrap();
        let sv = SpecialVocab::load(d.path(), true, None, None).unwrap();
        assert_eq!(sv.merges, vec!["Ġ t".to_string(), "h e".to_string()]);
        assert!(sv.warnings.iter().any(|w| w.contains("Line 5")));
    }
}
