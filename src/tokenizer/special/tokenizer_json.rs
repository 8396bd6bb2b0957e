//! What `SpecialVocab` reads from tokenizer.json and tokenizer_config.json (special tokens,
//! add-BOS/EOS, merges, chat template, normalizer flags), and merges.txt.

use super::py::*;
use super::SpecialVocab;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value as Json};
use std::path::{Path, PathBuf};

impl SpecialVocab {
    pub(super) fn try_load_merges_txt(&mut self, dir: &Path) -> Result<()> {
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

    pub(super) fn parse_normalizer(&mut self, normalizer: &Json) {
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

    pub(super) fn try_load_from_tokenizer_json(&mut self, dir: &Path) -> Result<()> {
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
