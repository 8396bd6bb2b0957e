//! Python's semantics on loosely typed JSON, as gguf-py relies on them (truthiness, `dict.get`,
//! ordered dicts, printing), and reading text and JSON files as Python does.

use anyhow::{Context, Result};
use serde_json::{Map, Value as Json};
use std::path::Path;

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

pub(super) fn truthy_opt(v: &Option<Json>) -> bool {
    v.as_ref().is_some_and(truthy)
}

/// `dict.get(key)` with JSON null read as Python None.
pub(super) fn get(obj: &Json, key: &str) -> Option<Json> {
    obj.get(key).filter(|v| !v.is_null()).cloned()
}

/// `x in (a, b)` with None as Python None.
pub(super) fn in2(x: &Option<Json>, a: &Option<Json>, b: &Option<Json>) -> bool {
    x == a || x == b
}

/// `item.get(kind, {}).get('id')` for TemplateProcessing pieces.
pub(super) fn piece_id(item: &Json, kind: &str) -> Option<Json> {
    item.get(kind).and_then(|s| get(s, "id"))
}

/// Ordered-dict helpers over a Vec of pairs.
pub(super) fn od_set<T>(od: &mut Vec<(String, T)>, key: &str, v: T) {
    if let Some(slot) = od.iter_mut().find(|(k, _)| k == key) {
        slot.1 = v;
    } else {
        od.push((key.to_string(), v));
    }
}

pub(super) fn od_get<'a, T>(od: &'a [(String, T)], key: &str) -> Option<&'a T> {
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

pub(super) fn json_bool(v: &Json) -> Option<bool> {
    match v {
        Json::Null => None,
        other => Some(truthy(other)),
    }
}

pub(super) fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

pub(super) fn show(v: &Option<Json>) -> String {
    match v {
        None => "None".into(),
        Some(v) => v.to_string(),
    }
}

pub(super) fn tc_set(tc: &mut Option<Map<String, Json>>, key: &str, v: &Option<Json>) {
    if let Some(m) = tc {
        m.insert(key.to_string(), v.clone().unwrap_or(Json::Null));
    }
}
