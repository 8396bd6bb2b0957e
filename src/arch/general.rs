//! The `general.*` keys gguf-py's metadata.py derives from a checkpoint folder: the model's
//! name from the folder, its size label from the parameter count, and the sampling defaults of
//! generation_config.json.

use crate::gguf::{Metadata, Value};
use anyhow::{Context, Result};
use serde_json::Value as Json;

/// `general.sampling.*` from generation_config.json, as gguf-py's metadata.py writes them.
pub fn sampling_keys(dir: &std::path::Path, md: &mut Metadata) -> Result<()> {
    let p = dir.join("generation_config.json");
    if !p.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("{}: cannot read", p.display()))?;
    let j: Json =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", p.display()))?;
    let ints = ["top_k", "penalty_last_n", "mirostat"];
    for (src, dst) in [
        ("sequence", "sequence"),
        ("top_k", "top_k"),
        ("top_p", "top_p"),
        ("min_p", "min_p"),
        ("xtc_probability", "xtc_probability"),
        ("xtc_threshold", "xtc_threshold"),
        ("temperature", "temp"),
        ("penalty_last_n", "penalty_last_n"),
        ("penalty_repeat", "penalty_repeat"),
        ("repetition_penalty", "penalty_repeat"),
        ("mirostat", "mirostat"),
        ("mirostat_tau", "mirostat_tau"),
        ("mirostat_eta", "mirostat_eta"),
    ] {
        let Some(v) = j.get(src).filter(|v| !v.is_null()) else {
            continue;
        };
        let key = format!("general.sampling.{dst}");
        if md.get(&key).is_some() {
            continue;
        }
        if dst == "sequence" {
            if let Some(s) = v.as_str() {
                md.set(key, Value::Str(s.into()));
            }
        } else if ints.contains(&dst) {
            if let Some(n) = v.as_i64() {
                md.set(key, Value::I32(n as i32));
            }
        } else if let Some(x) = v.as_f64() {
            md.set(key, Value::F32(x as f32));
        }
    }
    Ok(())
}

/// gguf-py's `id_to_title`: words title-cased unless they hold capitals or are versions.
pub fn id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let is_version = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.starts_with('v')
                    && w[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
                    && w.len() > 1);
            if w.chars().any(|c| c.is_uppercase()) || is_version {
                w.to_string()
            } else {
                let mut out = String::new();
                let mut prev_alpha = false;
                for c in w.chars() {
                    if c.is_alphabetic() {
                        if prev_alpha {
                            out.extend(c.to_lowercase());
                        } else {
                            out.extend(c.to_uppercase());
                        }
                        prev_alpha = true;
                    } else {
                        out.push(c);
                        prev_alpha = false;
                    }
                }
                out
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// gguf-py's `size_label` for a dense model of `n` parameters ("494M", "1.2B").
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (x, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let r = x.round_ties_even() as u64;
    let digits = if r == 0 { 0 } else { r.to_string().len() };
    let fix = 2usize.saturating_sub(digits);
    format!("{x:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_and_titles_follow_gguf_py() {
        assert_eq!(size_label(494_032_768), "494M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(999_999), "1000K");
        assert_eq!(size_label(1000), "1.0K");
        assert_eq!(id_to_title("tiny-random-llama"), "Tiny Random Llama");
        assert_eq!(
            id_to_title("Qwen2.5-0.5B-Instruct"),
            "Qwen2.5 0.5B Instruct"
        );
    }
}
