//! A Hugging Face config.json as convert_hf_to_gguf.py reads it: a multimodal checkpoint's
//! `text_config` merged over the top level, typed getters that name the file in their errors,
//! and the rope parameters in both of transformers' spellings.

use crate::source::Checkpoint;
use anyhow::{Context, Result};
use serde_json::Value as Json;

/// A Hugging Face config, with a multimodal checkpoint's text_config merged over the top level as
/// convert_hf_to_gguf.py does.
pub struct Config {
    json: Json,
    pub path: String,
}

impl Config {
    pub fn new(ck: &Checkpoint) -> Config {
        let mut json = ck.config.clone();
        if let Some(text) = ck
            .config
            .get("text_config")
            .and_then(Json::as_object)
            .cloned()
        {
            if let Some(obj) = json.as_object_mut() {
                for (k, v) in text {
                    obj.insert(k, v);
                }
            }
        }
        Config {
            json,
            path: ck.dir.join("config.json").display().to_string(),
        }
    }
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }
    /// Whether config.json sets `key` to null (transformers keeps None there instead of the
    /// class default, e.g. DeepSeek-V2-Lite's `q_lora_rank`).
    pub fn is_null(&self, key: &str) -> bool {
        self.json.get(key).is_some_and(Json::is_null)
    }
    /// The first of `keys` present, as an unsigned integer.
    pub fn uint(&self, keys: &[&str]) -> Result<Option<u64>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v.as_u64().map(Some).with_context(|| {
                    format!("{}: {k} is {v}, not a non-negative integer", self.path)
                });
            }
        }
        Ok(None)
    }
    pub fn need_uint(&self, keys: &[&str]) -> Result<u64> {
        self.uint(keys)?
            .with_context(|| format!("{}: missing {} (needed to convert)", self.path, keys[0]))
    }
    pub fn float(&self, keys: &[&str]) -> Result<Option<f64>> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v
                    .as_f64()
                    .map(Some)
                    .with_context(|| format!("{}: {k} is {v}, not a number", self.path));
            }
        }
        Ok(None)
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Json::as_bool)
    }
    /// HF's rope parameters: `rope_parameters` (new transformers) or `rope_scaling` plus
    /// `rope_theta`.
    pub fn rope(&self) -> serde_json::Map<String, Json> {
        let mut m = serde_json::Map::new();
        if let Some(obj) = self.get("rope_scaling").and_then(Json::as_object) {
            m.extend(obj.clone());
        }
        if let Some(obj) = self.get("rope_parameters").and_then(Json::as_object) {
            let inner = obj
                .get("full_attention")
                .and_then(Json::as_object)
                .unwrap_or(obj);
            m.extend(inner.clone());
        }
        if let Some(t) = self.get("rope_theta") {
            m.entry("rope_theta").or_insert(t.clone());
        }
        if let Some(t) = m.get("type").cloned() {
            m.entry("rope_type").or_insert(t);
        }
        m
    }
}
