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

/// A scalar of the front matter as the string gguf-py would write (numbers as their text).
fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A YAML node as JSON (mapping keys as strings), for the front matter.
fn yaml_to_json(y: &yaml_rust2::Yaml) -> Json {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(s.clone())),
        Yaml::Integer(i) => Json::from(*i),
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Boolean(b) => Json::Bool(*b),
        Yaml::Array(a) => Json::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Json::Object(
            h.iter()
                .filter_map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) | Yaml::Real(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k, yaml_to_json(v)))
                })
                .collect(),
        ),
        _ => Json::Null,
    }
}

/// The YAML front matter of a model card (README.md), as gguf-py's `load_model_card` reads it:
/// the lines between a first line `---` and the next `---`, with its two fixes (a Norwegian
/// `- no` kept a string, tabs as two spaces). None when there is no front matter; Err (the
/// reason) when it does not parse as a mapping.
pub fn front_matter(text: &str) -> std::result::Result<Option<Json>, String> {
    let mut lines = text.lines();
    if lines.next() != Some("---") {
        return Ok(None);
    }
    let mut yaml = String::new();
    for l in lines {
        if l == "---" {
            break;
        }
        yaml.push_str(l);
        yaml.push('\n');
    }
    let yaml = yaml.replace("- no\n", "- \"no\"\n").replace('\t', "  ");
    let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).map_err(|e| e.to_string())?;
    match docs.first().map(yaml_to_json) {
        None | Some(Json::Null) => Ok(None),
        Some(j @ Json::Object(_)) => Ok(Some(j)),
        Some(other) => Err(format!(
            "the front matter is a {}, not a mapping",
            match other {
                Json::Array(_) => "list",
                _ => "scalar",
            }
        )),
    }
}

fn full_match(re: &str, s: &str) -> bool {
    fancy_regex::Regex::new(&format!("^(?i:{re})$"))
        .ok()
        .and_then(|r| r.is_match(s).ok())
        .unwrap_or(false)
}

/// What gguf-py's `get_model_id_components` finds in a model id such as
/// `Qwen/Qwen2.5-Coder-7B-Instruct`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdParts {
    pub full_name: Option<String>,
    pub org: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

/// gguf-py's `Metadata.get_model_id_components`.
pub fn model_id_components(model_id: &str, total_params: i64) -> IdParts {
    if model_id.contains(' ') {
        return IdParts {
            full_name: Some(model_id.into()),
            ..Default::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, n)) => (Some(o.to_string()), n.to_string()),
        None => (None, model_id.to_string()),
    };
    if org.as_deref().is_some_and(|o| o.starts_with('.')) {
        org = None;
    }
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    // Each part's annotations: basename, size_label, finetune, version, type.
    let mut types: Vec<Vec<&str>> = vec![Vec::new(); parts.len()];
    let add = |t: &mut Vec<&'static str>, x: &'static str| {
        if !t.contains(&x) {
            t.push(x);
        }
    };
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if full_match(r"(v|iter)?\d+([.]\d+)*", &part) {
            add(&mut types[i], "version");
        } else if full_match(r"i?q\d(_\w)*|b?fp?(16|32)", &part) {
            add(&mut types[i], "type");
            parts[i] = part.to_uppercase();
        } else if i > 0
            && full_match(
                r"(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)",
                &part,
            )
        {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            if p[n - 1].is_ascii_digit() {
                // bloom-7b1 -> 7.1b
                let (a, b) = (p[n - 2], p[n - 1]);
                p.truncate(n - 2);
                p.extend(['.', b, a]);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let n = p.len();
                let head: String = p[..n - 1].iter().collect();
                if let Some(x) = parse_py_float(&head) {
                    let exp = " KMBT".find(p[n - 1]).map(|e| e as i32).unwrap_or(-1);
                    let label_params = x * 1000f64.powi(exp);
                    let t = total_params as f64;
                    let too_far = if total_params < 0 {
                        label_params < (total_params.abs() / 8) as f64
                    } else {
                        (label_params - t).abs() > (7 * total_params / 8) as f64
                    };
                    if too_far {
                        add(&mut types[i], "finetune");
                        p[n - 1] = p[n - 1].to_ascii_lowercase();
                    }
                }
            }
            if types[i].is_empty() {
                add(&mut types[i], "size_label");
            }
            parts[i] = p.into_iter().collect();
        } else if i > 0 && full_match("chat|instruct|vision|lora", &part) {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                // A LoRA adapter's own "lora" is its type, not a finetune.
                add(&mut types[i], "type");
            } else {
                add(&mut types[i], "finetune");
            }
        }
    }
    let has_numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(n, t)| t.contains(&"size_label") && n.chars().any(|c| c.is_ascii_digit()));
    if has_numeric_size {
        for (n, t) in parts.iter().zip(types.iter_mut()) {
            if t.contains(&"size_label") && n.chars().all(char::is_alphabetic) {
                t.retain(|x| *x != "size_label");
            }
        }
    }
    let mut at_start = true;
    for (part, t) in parts.iter().zip(types.iter_mut()) {
        let alpha_first = part.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((t.is_empty() && alpha_first) || t.contains(&"version")) {
            add(t, "basename");
        } else {
            at_start = false;
            if t.is_empty() {
                add(t, "finetune");
            }
        }
    }
    for t in types.iter_mut().rev() {
        if t.contains(&"basename") && t.len() > 1 {
            t.retain(|x| *x != "basename");
        } else {
            break;
        }
    }
    let join = |f: &dyn Fn(&Vec<&str>) -> bool, dedup: bool| -> Option<String> {
        let mut v: Vec<&str> = Vec::new();
        for (n, t) in parts.iter().zip(&types) {
            if f(t) && !(dedup && v.contains(&n.as_str())) {
                v.push(n);
            }
        }
        (!v.is_empty()).then(|| v.join("-"))
    };
    let mut basename = join(&|t| t.contains(&"basename"), false);
    let size_label = join(&|t| t.contains(&"size_label"), true);
    let finetune = join(&|t| t.contains(&"finetune"), false);
    let version = join(
        &|t| t.contains(&"version") && !t.contains(&"basename"),
        false,
    );
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdParts {
        full_name: Some(full),
        org,
        basename,
        finetune,
        version,
        size_label,
    }
}

/// Python's `float(s)` for the strings a size part leaves ("7", "0.5", "1.5"); None where
/// Python raises ValueError.
fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    t.parse().ok()
}

/// gguf-py's `Metadata.id_to_title` (Python's `str.title` on words that are all lower case and
/// not versions).
pub fn py_id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let has_cased = w.chars().any(|c| c.is_lowercase() || c.is_uppercase());
            let is_lower = has_cased && !w.chars().any(|c| c.is_uppercase());
            let is_version = full_match_prefix_version(w);
            if is_lower && !is_version {
                let mut out = String::new();
                let mut prev_cased = false;
                for c in w.chars() {
                    let cased = c.is_lowercase() || c.is_uppercase();
                    if cased && !prev_cased {
                        out.extend(c.to_uppercase());
                    } else if cased {
                        out.extend(c.to_lowercase());
                    } else {
                        out.push(c);
                    }
                    prev_cased = cased;
                }
                out
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `re.match(r'^(v\d+(?:\.\d+)*|\d.*)$', w)`.
fn full_match_prefix_version(w: &str) -> bool {
    fancy_regex::Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$")
        .ok()
        .and_then(|r| r.is_match(w).ok())
        .unwrap_or(false)
}

/// The authorship fields of gguf-py's `Metadata` that kiln fills (no override file).
#[derive(Clone, Debug, Default)]
struct Card {
    name: Option<String>,
    author: Option<String>,
    version: Option<String>,
    organization: Option<String>,
    finetune: Option<String>,
    basename: Option<String>,
    description: Option<String>,
    size_label: Option<String>,
    license: Option<String>,
    license_name: Option<String>,
    license_link: Option<String>,
    source_url: Option<String>,
    source_doi: Option<String>,
    source_uuid: Option<String>,
    source_repo_url: Option<String>,
    base_models: Option<Vec<serde_json::Map<String, Json>>>,
    datasets: Option<Vec<serde_json::Map<String, Json>>>,
    tags: Option<Vec<String>>,
    languages: Option<Vec<String>>,
}

/// A base model or data set entry of the card (`base_model: Org/Name`, a URL, or a mapping).
fn source_entry(v: &Json, total_params: i64) -> serde_json::Map<String, Json> {
    let mut m = serde_json::Map::new();
    match v {
        Json::String(id) => {
            let is_url = ["http://", "https://", "ssh://"]
                .iter()
                .any(|p| id.starts_with(p));
            let (parts, url) = if is_url {
                m.insert("repo_url".into(), Json::String(id.clone()));
                let hf = fancy_regex::Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$")
                    .ok()
                    .and_then(|r| r.captures(id).ok().flatten())
                    .and_then(|c| c.get(1).map(|g| g.as_str().to_string()));
                match hf.filter(|_| id.contains("huggingface.co")) {
                    Some(h) => (Some(model_id_components(&h, total_params)), false),
                    None => (None, false),
                }
            } else {
                (Some(model_id_components(id, total_params)), true)
            };
            if let Some(p) = parts {
                if let Some(n) = &p.full_name {
                    m.insert("name".into(), Json::String(py_id_to_title(n)));
                }
                if let Some(o) = &p.org {
                    m.insert("organization".into(), Json::String(py_id_to_title(o)));
                }
                if let Some(v) = &p.version {
                    m.insert("version".into(), Json::String(v.clone()));
                }
                if url {
                    if let (Some(o), Some(n)) = (&p.org, &p.full_name) {
                        m.insert(
                            "repo_url".into(),
                            Json::String(format!("https://huggingface.co/{o}/{n}")),
                        );
                    }
                }
            }
        }
        Json::Object(o) => m = o.clone(),
        _ => {}
    }
    m
}

impl Card {
    /// gguf-py's `apply_metadata_heuristic` on a card's front matter, then `_name_or_path`
    /// from config.json, then the folder name.
    fn derive(
        card: Option<&Json>,
        config: &Json,
        folder: &str,
        total_params: i64,
        notes: &mut Vec<String>,
    ) -> Card {
        let mut c = Card::default();
        if let Some(Json::Object(card)) = card {
            let take = |slot: &mut Option<String>, key: &str| {
                if slot.is_none() {
                    if let Some(v) = card.get(key).and_then(scalar) {
                        *slot = Some(v);
                    }
                }
            };
            take(&mut c.name, "name");
            take(&mut c.author, "author");
            take(&mut c.version, "version");
            take(&mut c.organization, "organization");
            take(&mut c.description, "description");
            take(&mut c.finetune, "finetune");
            take(&mut c.basename, "basename");
            take(&mut c.size_label, "size_label");
            take(&mut c.source_url, "url");
            take(&mut c.source_doi, "doi");
            take(&mut c.source_uuid, "uuid");
            take(&mut c.source_repo_url, "repo_url");
            take(&mut c.name, "model_name");
            take(&mut c.author, "model_author");
            take(&mut c.version, "model_version");
            take(&mut c.organization, "model_organization");
            take(&mut c.description, "model_description");
            take(&mut c.finetune, "model_finetune");
            take(&mut c.basename, "model_basename");
            take(&mut c.size_label, "model_size_label");
            take(&mut c.source_url, "model_url");
            take(&mut c.source_doi, "model_doi");
            take(&mut c.source_uuid, "model_uuid");
            take(&mut c.source_repo_url, "model_repo_url");
            take(&mut c.author, "model_creator");
            take(&mut c.basename, "model_type");

            let list_of = |v: Option<&Json>| -> Vec<Json> {
                match v {
                    Some(Json::String(_)) => vec![v.cloned().unwrap_or(Json::Null)],
                    Some(Json::Array(a)) => a.clone(),
                    _ => Vec::new(),
                }
            };
            // The base models' and the datasets' entries: the first key present, as a list.
            let mut sources = |keys: [&str; 3], what: &str| -> Option<Vec<_>> {
                let key = keys.into_iter().find(|k| card.contains_key(*k))?;
                let mut v = Vec::new();
                for id in list_of(card.get(key)) {
                    if !matches!(id, Json::String(_) | Json::Object(_)) {
                        notes.push(format!(
                            "warning: README.md: {what} entry {id} is not in a known format"
                        ));
                    }
                    v.push(source_entry(&id, total_params));
                }
                Some(v)
            };
            if let Some(v) = sources(
                ["base_model", "base_models", "base_model_sources"],
                "base model",
            ) {
                c.base_models = Some(v);
            }
            if let Some(v) = sources(["datasets", "dataset", "dataset_sources"], "dataset") {
                c.datasets = Some(v);
            }
            c.license = match card.get("license") {
                Some(Json::Array(a)) => {
                    Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(","))
                }
                Some(v) => scalar(v),
                None => None,
            };
            take(&mut c.license_name, "license_name");
            take(&mut c.license_link, "license_link");
            let append = |slot: &mut Option<Vec<String>>, key: &str| {
                let Some(v) = card.get(key) else { return };
                let cur = slot.get_or_insert_with(Vec::new);
                match v {
                    Json::Array(a) => cur.extend(a.iter().filter_map(scalar)),
                    v => cur.extend(scalar(v).filter(|_| v.is_string())),
                }
            };
            append(&mut c.tags, "tags");
            append(&mut c.tags, "pipeline_tag");
            append(&mut c.languages, "languages");
            append(&mut c.languages, "language");
        }
        let mut fill = |id: &str| {
            let p = model_id_components(id, total_params);
            if c.name.is_none() {
                c.name = p.full_name.as_deref().map(py_id_to_title);
            }
            if c.organization.is_none() {
                c.organization = p.org.as_deref().map(py_id_to_title);
            }
            c.basename = c.basename.take().or(p.basename);
            c.finetune = c.finetune.take().or(p.finetune);
            c.version = c.version.take().or(p.version);
            c.size_label = c.size_label.take().or(p.size_label);
        };
        if let Some(id) = config.get("_name_or_path").and_then(Json::as_str) {
            if id.matches('/').count() <= 1 {
                fill(id);
            }
        }
        fill(folder);
        c
    }

    /// The keys in `set_gguf_meta_model`'s order (after the sampling keys), as gguf-py
    /// writes them: strings (empty ones left out), counts as u32, lists as string arrays.
    fn keys(&self, size_label: String) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let mut s = |k: &str, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                out.push((k.to_string(), Value::Str(v.clone())));
            }
        };
        s("general.name", &self.name);
        s("general.author", &self.author);
        s("general.version", &self.version);
        s("general.organization", &self.organization);
        s("general.finetune", &self.finetune);
        s("general.basename", &self.basename);
        s("general.description", &self.description);
        s(
            "general.size_label",
            &Some(self.size_label.clone().unwrap_or(size_label)),
        );
        s("general.license", &self.license);
        s("general.license.name", &self.license_name);
        s("general.license.link", &self.license_link);
        s("general.source.url", &self.source_url);
        s("general.source.doi", &self.source_doi);
        s("general.source.uuid", &self.source_uuid);
        s("general.source.repo_url", &self.source_repo_url);
        for (list, what) in [
            (&self.base_models, "base_model"),
            (&self.datasets, "dataset"),
        ] {
            let Some(list) = list else { continue };
            out.push((
                format!("general.{what}.count"),
                Value::U32(list.len() as u32),
            ));
            for (i, e) in list.iter().enumerate() {
                for f in [
                    "name",
                    "author",
                    "version",
                    "organization",
                    "description",
                    "url",
                    "doi",
                    "uuid",
                    "repo_url",
                ] {
                    if let Some(v) = e.get(f).and_then(scalar).filter(|v| !v.is_empty()) {
                        out.push((format!("general.{what}.{i}.{f}"), Value::Str(v)));
                    }
                }
            }
        }
        for (k, v) in [
            ("general.tags", &self.tags),
            ("general.languages", &self.languages),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                out.push((k.into(), Value::Array(crate::gguf::Array::Str(v.clone()))));
            }
        }
        out
    }
}

/// The `general.*` keys gguf-py's metadata.py derives from a checkpoint folder's model card
/// (README.md front matter), config.json's `_name_or_path` and the folder's name, in the
/// order `set_gguf_meta_model` writes them (name, author, version, organization, finetune,
/// basename, description, size_label, license, license.name, license.link, source.*,
/// base_model.*, dataset.*, tags, languages). `size_label` is the parameter-count label, used
/// where neither the card nor the names give one. A front matter that does not parse is a
/// note ("warning: ..."), and the card is then left out.
pub fn model_card_keys(
    dir: &std::path::Path,
    config: &Json,
    folder: &str,
    total_params: u64,
    size_label: String,
    notes: &mut Vec<String>,
) -> Vec<(String, Value)> {
    let readme = dir.join("README.md");
    let card = match std::fs::read(&readme) {
        Err(_) => None,
        Ok(bytes) => match String::from_utf8(bytes) {
            Err(_) => {
                notes.push(format!(
                    "warning: {}: not UTF-8 text; its model card is left out",
                    readme.display()
                ));
                None
            }
            Ok(text) => match front_matter(&text) {
                Ok(c) => c,
                Err(why) => {
                    notes.push(format!(
                        "warning: {}: the YAML front matter does not parse ({why}); its model card is left out",
                        readme.display()
                    ));
                    None
                }
            },
        },
    };
    let total = i64::try_from(total_params).unwrap_or(i64::MAX);
    Card::derive(card.as_ref(), config, folder, total, notes).keys(size_label)
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
