//! BPE pre-tokenizer detection: convert_hf_to_gguf.py's chkhsh (the hash of a fixed text's
//! encoding) looked up in llama.cpp's table (the data file `pre_tokenizers.tsv`), and, for a hash
//! the table lacks, the pre-tokenizer named from tokenizer.json's own definition.

use crate::tokenizer::special;
use anyhow::{anyhow, bail, Result};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;
use tokenizers::Tokenizer;

/// The text convert_hf_to_gguf.py's `get_vocab_base_pre` tokenizes to fingerprint a BPE
/// pre-tokenizer (350 characters).
pub const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫\u{fe0f} (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 ក\u{17b6}ន\u{17cb}ត\u{17c2}ព\u{17b7}ស\u{17c1}សអ\u{17b6}ច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// `get_vocab_base_pre`'s table, in its order: (chkhsh, tokenizer.ggml.pre), read once from
/// `pre_tokenizers.tsv` (one `chkhsh<TAB>name<TAB>source` line per entry). The Python is a
/// chain of plain `if`s, so where a hash appears twice the later entry wins
/// ([`pre_from_hash`] does the same). Copied from llama.cpp's conversion/base.py.
pub fn chkhsh_table() -> &'static [(&'static str, &'static str)] {
    static TABLE: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        parse_table(PRE_TOKENIZERS_TSV).expect("pre_tokenizers.tsv parses (a unit test checks it)")
    })
}

/// The table's text.
const PRE_TOKENIZERS_TSV: &str = include_str!("pre_tokenizers.tsv");

/// Parses the table: `chkhsh<TAB>name[<TAB>source]` per line, a 64-digit lowercase hex hash
/// and a non-empty name; blank lines and `#` lines skipped. Errors name the line.
fn parse_table(
    text: &'static str,
) -> std::result::Result<Vec<(&'static str, &'static str)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split('\t');
        let (Some(hash), Some(name)) = (f.next(), f.next()) else {
            return Err(format!(
                "pre_tokenizers.tsv line {}: expected chkhsh<TAB>name",
                i + 1
            ));
        };
        if f.count() > 1 {
            return Err(format!(
                "pre_tokenizers.tsv line {}: more than three fields",
                i + 1
            ));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "pre_tokenizers.tsv line {}: {hash:?} is not a sha256 hex digest",
                i + 1
            ));
        }
        if name.is_empty() || name.trim() != name {
            return Err(format!(
                "pre_tokenizers.tsv line {}: bad name {name:?}",
                i + 1
            ));
        }
        out.push((hash, name));
    }
    Ok(out)
}

/// The tokenizer.ggml.pre for a chkhsh, as `get_vocab_base_pre` maps it (last match wins).
pub fn pre_from_hash(chkhsh: &str) -> Option<&'static str> {
    chkhsh_table()
        .iter()
        .rev()
        .find(|(h, _)| *h == chkhsh)
        .map(|(_, n)| *n)
}

/// Python's `str(list_of_ints)`.
pub fn py_list_str(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

/// `sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()`: `encode` adds special tokens
/// (the post-processor's BOS etc.), as transformers' `encode` does by default.
pub fn chkhsh(tok: &Tokenizer) -> Result<(String, Vec<u32>)> {
    let enc = tok
        .encode(CHKTXT, true)
        .map_err(|e| anyhow!("encoding the chkhsh text: {e}"))?;
    let ids = enc.get_ids().to_vec();
    let digest = Sha256::digest(py_list_str(&ids).as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, ids))
}

/// Split regexes (as written in tokenizer.json) that identify a llama.cpp pre-tokenizer, with
/// what the model must say about `ignore_merges` for llama.cpp to tokenize the same way.
pub(super) const PRE_REGEXES: &[(&str, &str, bool)] = &[
    (
        "llama-bpe",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        true,
    ),
    (
        "qwen2",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        "qwen35",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        "gpt-4o",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
    (
        "tekken",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        false,
    ),
];

/// One-line description of a tokenizer.json component (pre_tokenizer, normalizer).
fn describe(v: &Json) -> String {
    let ty = v.get("type").and_then(Json::as_str).unwrap_or("?");
    match ty {
        "Sequence" => {
            let items = v
                .get("pretokenizers")
                .or_else(|| v.get("normalizers"))
                .and_then(Json::as_array)
                .map(|l| l.iter().map(describe).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            format!("Sequence[{items}]")
        }
        "ByteLevel" => format!(
            "ByteLevel(add_prefix_space={}, use_regex={})",
            v.get("add_prefix_space")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            v.get("use_regex").and_then(Json::as_bool).unwrap_or(true)
        ),
        "Split" => {
            let pat = match v.get("pattern") {
                Some(p) if p.get("Regex").is_some() => format!("Regex {}", p["Regex"]),
                Some(p) if p.get("String").is_some() => format!("String {}", p["String"]),
                _ => "?".into(),
            };
            format!(
                "Split({pat}, behavior={}, invert={})",
                v.get("behavior").and_then(Json::as_str).unwrap_or("?"),
                v.get("invert").and_then(Json::as_bool).unwrap_or(false)
            )
        }
        other => other.to_string(),
    }
}

/// Names the llama.cpp pre-tokenizer from tokenizer.json's own definition, for when the chkhsh
/// is not in llama.cpp's table. Recognizes GPT-2's plain byte-level pre-tokenizer and a Split
/// by one of the regexes llama.cpp implements followed by a regex-less ByteLevel; returns
/// (name, explanation), or an error saying what was found.
pub fn pre_from_definition(tj: &Json) -> Result<(&'static str, String)> {
    let model = tj.get("model").cloned().unwrap_or(Json::Null);
    let model_type = model.get("type").and_then(Json::as_str).unwrap_or("(none)");
    if model_type != "BPE" {
        bail!("the model is {model_type}, not BPE");
    }
    let ignore_merges = model.get("ignore_merges").is_some_and(special::truthy);
    match tj.get("normalizer") {
        None | Some(Json::Null) => {}
        Some(n) if n.get("type").and_then(Json::as_str) == Some("NFC") => {}
        Some(n) => bail!(
            "normalizer {} has no llama.cpp pre-tokenizer equivalent",
            describe(n)
        ),
    }
    let Some(pt) = tj.get("pre_tokenizer").filter(|p| !p.is_null()) else {
        bail!("there is no pre_tokenizer");
    };
    let steps: Vec<Json> = if pt.get("type").and_then(Json::as_str) == Some("Sequence") {
        pt.get("pretokenizers")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default()
    } else {
        vec![pt.clone()]
    };
    let found = describe(pt);
    let is = |v: &Json, t: &str| v.get("type").and_then(Json::as_str) == Some(t);
    let bl_ok = |v: &Json, want_regex: bool| {
        is(v, "ByteLevel")
            && !v
                .get("add_prefix_space")
                .and_then(Json::as_bool)
                .unwrap_or(true)
            && v.get("use_regex").and_then(Json::as_bool).unwrap_or(true) == want_regex
    };
    match steps.as_slice() {
        [bl] if bl_ok(bl, true) => {
            if ignore_merges {
                bail!("pre_tokenizer {found} is GPT-2's, but the model sets ignore_merges, which llama.cpp's gpt-2 pre-tokenizer does not");
            }
            Ok((
                "gpt-2",
                format!("pre_tokenizer {found} is GPT-2's byte-level regex"),
            ))
        }
        [split, bl] if is(split, "Split") && bl_ok(bl, false) => {
            let regex = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str);
            let behavior = split.get("behavior").and_then(Json::as_str);
            let invert = split.get("invert").and_then(Json::as_bool).unwrap_or(false);
            let Some(regex) = regex.filter(|_| behavior == Some("Isolated") && !invert) else {
                bail!("pre_tokenizer {found} is not an isolated regex Split followed by ByteLevel");
            };
            let Some(&(name, _, im)) = PRE_REGEXES.iter().find(|(_, r, _)| *r == regex) else {
                bail!("pre_tokenizer {found}: the Split regex is not one llama.cpp implements");
            };
            if im != ignore_merges {
                bail!(
                    "pre_tokenizer {found} matches llama.cpp's {name:?} regex, but the model's ignore_merges={ignore_merges} differs from what {name:?} implies ({im})"
                );
            }
            Ok((name, format!("pre_tokenizer {found}: the Split regex is llama.cpp's {name:?} one (ignore_merges={ignore_merges})")))
        }
        _ => bail!(
            "pre_tokenizer {found} matches no rule (GPT-2 ByteLevel, or regex Split + ByteLevel)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn pre_tokenizers_tsv_parses() {
        let t = parse_table(PRE_TOKENIZERS_TSV).unwrap();
        assert_eq!(t.len(), 97);
        assert_eq!(chkhsh_table(), &t[..]);
        // Every row is distinct; a hash repeats only where llama.cpp's table repeats it (the
        // later row wins), and the data file has no other line than rows, comments and blanks.
        let rows: HashSet<_> = t.iter().collect();
        assert_eq!(rows.len(), t.len());
        let mut seen = HashSet::new();
        let repeated: Vec<&str> = t
            .iter()
            .filter(|(h, _)| !seen.insert(*h))
            .map(|(h, _)| *h)
            .collect();
        assert_eq!(
            repeated,
            [
                "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
                "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"
            ]
        );
        assert!(parse_table("00\tx\n").is_err());
        assert!(parse_table("no tab\n").is_err());
    }
}
