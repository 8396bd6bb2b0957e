//! llama-quantize's advanced options, parsed as tools/quantize/quantize.cpp parses them and
//! applied as src/llama-quant.cpp applies them: `--tensor-type PATTERN=TYPE` rules (a regex
//! searched in each tensor name), `--override-kv KEY=TYPE:VALUE` metadata, `--prune-layers`
//! (blocks removed, the rest renumbered), and `--include-weights`/`--exclude-weights` (which
//! importance-matrix entries are used). Every check happens here, before any work.

use crate::gguf::Value;
use crate::imatrix::Imatrix;
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

/// One `--tensor-type` rule: tensors whose name the regex finds a match in get `ty`.
#[derive(Clone, Debug)]
pub struct TensorTypeRule {
    /// The pattern as llama-quantize hands it to llama.cpp: lower-cased (ASCII).
    pub pattern: String,
    pub regex: fancy_regex::Regex,
    pub ty: GgmlType,
}

impl TensorTypeRule {
    /// `NAME=TYPE`, as quantize.cpp's `parse_tensor_type`: split at the first `=`, the name
    /// lower-cased, the type one of ggml's names (case-insensitive). The regex is compiled
    /// here (std::regex's ECMAScript grammar in llama.cpp; fancy-regex in kiln, which has the
    /// same syntax for what tensor-name patterns use: classes, anchors, alternation,
    /// repetition, groups, look-around).
    pub fn parse(arg: &str) -> Result<TensorTypeRule> {
        let Some((name, ty)) = arg.split_once('=') else {
            bail!("--tensor-type {arg:?}: expected PATTERN=TYPE");
        };
        if name.is_empty() {
            bail!("--tensor-type {arg:?}: missing tensor name pattern before '='");
        }
        if ty.is_empty() {
            bail!("--tensor-type {arg:?}: missing type after '='");
        }
        let pattern = name.to_ascii_lowercase();
        let ty = crate::quantize::parse_ggml_type(ty)
            .with_context(|| format!("--tensor-type {arg:?}"))?;
        let regex = fancy_regex::Regex::new(&pattern)
            .map_err(|e| anyhow::anyhow!("--tensor-type {arg:?}: bad regex {pattern:?}: {e}"))?;
        Ok(TensorTypeRule { pattern, regex, ty })
    }

    /// The rules of a `--tensor-type-file`: `NAME=TYPE` entries separated by whitespace (as
    /// quantize.cpp reads it, `file >> arg`).
    pub fn parse_file(path: &Path) -> Result<Vec<TensorTypeRule>> {
        let text = std::fs::read(path)
            .with_context(|| format!("--tensor-type-file {}: cannot read", path.display()))?;
        let text = String::from_utf8_lossy(&text);
        text.split(|c: char| c.is_ascii_whitespace() || c == '\x0b')
            .filter(|s| !s.is_empty())
            .map(|s| {
                TensorTypeRule::parse(s)
                    .with_context(|| format!("--tensor-type-file {}", path.display()))
            })
            .collect()
    }

    /// Whether the regex finds a match anywhere in `name` (std::regex_search).
    pub fn matches(&self, name: &str) -> Result<bool> {
        self.regex.is_match(name).map_err(|e| {
            anyhow::anyhow!(
                "--tensor-type pattern {:?} on tensor {name}: {e}",
                self.pattern
            )
        })
    }
}

/// An `--override-kv` value, typed as llama.cpp's `llama_model_kv_override`.
#[derive(Clone, Debug, PartialEq)]
pub enum KvValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// One `--override-kv KEY=TYPE:VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvOverride {
    pub key: String,
    pub value: KvValue,
}

impl KvOverride {
    /// As common's `string_parse_kv_override`: KEY of at most 127 bytes before the first `=`,
    /// then `int:`, `float:`, `bool:` (`true` or `false`) or `str:` (at most 127 bytes).
    /// llama.cpp reads numbers with atol/atof, which take a prefix and give 0 for garbage;
    /// kiln wants the whole value to be a number.
    pub fn parse(arg: &str) -> Result<KvOverride> {
        let Some((key, rest)) = arg.split_once('=') else {
            bail!("--override-kv {arg:?}: expected KEY=TYPE:VALUE");
        };
        if key.is_empty() {
            bail!("--override-kv {arg:?}: empty key");
        }
        if key.len() >= 128 {
            bail!("--override-kv {arg:?}: the key is longer than 127 bytes");
        }
        if key.contains('\0') {
            bail!("--override-kv {arg:?}: the key holds a NUL byte");
        }
        let Some((ty, v)) = rest.split_once(':') else {
            bail!("--override-kv {arg:?}: expected TYPE:VALUE after '=' (TYPE: int, float, bool or str)");
        };
        let value =
            match ty {
                "int" => KvValue::Int(v.trim().parse().map_err(|_| {
                    anyhow::anyhow!("--override-kv {arg:?}: {v:?} is not an integer")
                })?),
                "float" => {
                    let x: f64 = v.trim().parse().map_err(|_| {
                        anyhow::anyhow!("--override-kv {arg:?}: {v:?} is not a number")
                    })?;
                    KvValue::Float(x)
                }
                "bool" => match v {
                    "true" => KvValue::Bool(true),
                    "false" => KvValue::Bool(false),
                    _ => bail!("--override-kv {arg:?}: a bool is true or false, not {v:?}"),
                },
                "str" => {
                    if v.len() > 127 {
                        bail!("--override-kv {arg:?}: the value is longer than 127 bytes");
                    }
                    if v.contains('\0') {
                        bail!("--override-kv {arg:?}: the value holds a NUL byte");
                    }
                    KvValue::Str(v.to_string())
                }
                _ => bail!("--override-kv {arg:?}: unknown type {ty:?} (int, float, bool or str)"),
            };
        if key == "general.alignment" {
            // llama.cpp copies the key but still aligns its output to 32 bytes, which makes a
            // file its own reader rejects or misreads; kiln does not write such a file.
            bail!("--override-kv {arg:?}: general.alignment cannot be overridden");
        }
        Ok(KvOverride {
            key: key.to_string(),
            value,
        })
    }

    /// The value llama_model_quantize writes: ints as u32 of the absolute value
    /// (`(uint32_t)std::abs(val_i64)`), floats as f32.
    pub fn gguf_value(&self) -> Value {
        match &self.value {
            KvValue::Int(i) => Value::U32(i.unsigned_abs() as u32),
            KvValue::Float(x) => Value::F32(*x as f32),
            KvValue::Bool(b) => Value::Bool(*b),
            KvValue::Str(s) => Value::Str(s.clone()),
        }
    }
}

/// `--prune-layers L0,L1,...`: the layer numbers, sorted and deduplicated (quantize.cpp's
/// `parse_layer_prune`).
pub fn parse_prune_layers(arg: &str) -> Result<Vec<u32>> {
    let mut v = Vec::new();
    for id in arg.split(',') {
        let n: u32 = id
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--prune-layers {arg:?}: {id:?} is not a layer number"))?;
        v.push(n);
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Where the first `blk.N.` sits in a tensor name (what llama.cpp's regex `blk\.(\d+)\.`
/// finds): the digits' byte range and N.
fn block_of(name: &str) -> Option<(std::ops::Range<usize>, u64)> {
    let mut from = 0;
    while let Some(i) = name[from..].find("blk.") {
        let start = from + i + 4;
        let digits = name[start..].bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && name[start + digits..].starts_with('.') {
            let n = name[start..start + digits].parse().ok()?;
            return Some((start..start + digits, n));
        }
        from = from + i + 1;
    }
    None
}

/// Layer pruning as llama-quant.cpp's `remap_layer` does it over the tensors in loader order:
/// the blocks in `prune` are dropped, the blocks after the first pruned one are renumbered in
/// order of appearance, the others keep their numbers.
pub struct Pruner<'a> {
    prune: &'a [u32],
    /// Original block -> new block (None: pruned).
    mapped: BTreeMap<u64, Option<u64>>,
    next_id: u64,
}

impl<'a> Pruner<'a> {
    /// `prune` sorted and deduplicated (see [`parse_prune_layers`]).
    pub fn new(prune: &'a [u32]) -> Self {
        Pruner {
            prune,
            mapped: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// The tensor's new name, or None when its block is pruned.
    pub fn rename(&mut self, name: &str) -> Option<String> {
        let Some(&first) = self.prune.first() else {
            return Some(name.to_string());
        };
        let Some((range, blk)) = block_of(name) else {
            return Some(name.to_string());
        };
        let new = match self.mapped.get(&blk) {
            Some(m) => *m,
            None => {
                let m = if self.prune.iter().any(|&p| p as u64 == blk) {
                    None
                } else if blk < first as u64 {
                    self.next_id = blk + 1;
                    Some(blk)
                } else {
                    self.next_id += 1;
                    Some(self.next_id - 1)
                };
                self.mapped.insert(blk, m);
                m
            }
        };
        let new = new?;
        let mut s = name.to_string();
        s.replace_range(range, &new.to_string());
        Some(s)
    }

    /// The block count llama.cpp writes after pruning (its `blk_id`).
    pub fn block_count(&self) -> u64 {
        self.next_id
    }

    /// The importance-matrix name of a renamed tensor (`remap_imatrix`): its block number
    /// mapped back to the original one.
    pub fn imatrix_name(&self, new_name: &str) -> String {
        if self.mapped.is_empty() {
            return new_name.to_string();
        }
        let Some((range, blk)) = block_of(new_name) else {
            return new_name.to_string();
        };
        match self.mapped.iter().find(|(_, m)| **m == Some(blk)) {
            Some((orig, _)) => {
                let mut s = new_name.to_string();
                s.replace_range(range, &orig.to_string());
                s
            }
            None => new_name.to_string(),
        }
    }
}

/// quantize.cpp's `prepare_imatrix`: entries whose name contains an `--exclude-weights`
/// string are dropped; with `--include-weights`, only entries containing one of its strings
/// are kept (substring matches, not regexes).
pub fn filter_imatrix(m: &mut Imatrix, include: &[String], exclude: &[String]) {
    if !exclude.is_empty() {
        m.retain(|name, _| !exclude.iter().any(|x| name.contains(x.as_str())));
    }
    if !include.is_empty() {
        m.retain(|name, _| include.iter().any(|x| name.contains(x.as_str())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_type_rules_parse_like_llama_quantize() {
        let r = TensorTypeRule::parse("Blk\\.[0-2]\\.ATTN_V=Q8_0").unwrap();
        assert_eq!(r.pattern, "blk\\.[0-2]\\.attn_v");
        assert_eq!(r.ty, GgmlType::Q8_0);
        assert!(r.matches("blk.1.attn_v.weight").unwrap());
        assert!(!r.matches("blk.3.attn_v.weight").unwrap());
        for bad in [
            "attn_v",
            "=q8_0",
            "attn_v=",
            "attn_v=q9_9",
            "attn_[v=q8_0",
            "(x=q4_0",
        ] {
            assert!(TensorTypeRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kv_overrides_parse_each_type() {
        let p = |s| KvOverride::parse(s).unwrap().gguf_value();
        assert_eq!(p("a.b=int:-7"), Value::U32(7));
        assert_eq!(p("a.b=float:0.25"), Value::F32(0.25));
        assert_eq!(p("a.b=bool:true"), Value::Bool(true));
        assert_eq!(p("a.b=str:x=y:z"), Value::Str("x=y:z".into()));
        for bad in [
            "a.b",
            "=int:1",
            "a.b=int",
            "a.b=int:x",
            "a.b=float:",
            "a.b=bool:yes",
            "a.b=u32:1",
            "general.alignment=int:64",
        ] {
            assert!(KvOverride::parse(bad).is_err(), "{bad}");
        }
        assert!(KvOverride::parse(&format!("a=str:{}", "x".repeat(128))).is_err());
        assert!(KvOverride::parse(&format!("{}=int:1", "k".repeat(128))).is_err());
    }

    #[test]
    fn pruning_renumbers_like_remap_layer() {
        let prune = parse_prune_layers("3,1,1").unwrap();
        assert_eq!(prune, [1, 3]);
        let mut p = Pruner::new(&prune);
        let names = [
            "output.weight",
            "blk.0.a",
            "blk.1.a",
            "blk.2.a",
            "blk.2.b",
            "blk.3.a",
            "blk.4.a",
        ];
        let out: Vec<Option<String>> = names.iter().map(|n| p.rename(n)).collect();
        assert_eq!(
            out,
            [
                Some("output.weight".into()),
                Some("blk.0.a".into()),
                None,
                Some("blk.1.a".into()),
                Some("blk.1.b".into()),
                None,
                Some("blk.2.a".into()),
            ]
        );
        assert_eq!(p.block_count(), 3);
        assert_eq!(p.imatrix_name("blk.1.a"), "blk.2.a");
        assert_eq!(p.imatrix_name("blk.2.a"), "blk.4.a");
        assert_eq!(p.imatrix_name("blk.0.a"), "blk.0.a");
        assert!(parse_prune_layers("1,x").is_err());
        assert!(parse_prune_layers("-1").is_err());
        assert!(parse_prune_layers("").is_err());
    }

    #[test]
    fn imatrix_filters_are_substring_matches() {
        let mk = || -> Imatrix {
            [
                "blk.0.attn_q.weight",
                "blk.0.ffn_up.weight",
                "blk.1.attn_q.weight",
            ]
            .iter()
            .map(|n| (n.to_string(), vec![1.0]))
            .collect()
        };
        let mut m = mk();
        filter_imatrix(&mut m, &[], &["attn_q".into()]);
        assert_eq!(m.len(), 1);
        let mut m = mk();
        filter_imatrix(&mut m, &["blk.0.".into(), "nothing".into()], &[]);
        assert_eq!(m.len(), 2);
    }
}
