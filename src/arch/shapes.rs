//! The tensor shapes llama.cpp's loader expects from a file's hyperparameters, checked before
//! any output exists.
//!
//! llama.cpp's `load_tensors` (src/models/<arch>.cpp in the pinned llama.cpp) creates every
//! tensor with a shape computed from the `<arch>.*` keys it read (`token_embd` is
//! `{n_embd, n_vocab}`, `attn_k` `{n_embd, n_embd_head_k * n_head_kv}` ...) and refuses the file
//! when a tensor's shape differs, when a required tensor is missing, or when the file holds a
//! tensor it did not create. It finds that at load time, after the whole conversion; kiln checks
//! the same thing on the metadata it is about to write (or, requantizing a GGUF, on the file's
//! own metadata) and stops with one line naming the hyperparameter, its value, the tensor and its
//! shape.
//!
//! A family describes its loader's tensors with [`Family::loader_tensors`] ([`TensorSpec`]s
//! whose dimensions are products of hyperparameter keys, see [`Dim`]); the base class's list is
//! [`super::base::loader_tensors`]. [`Hyper`] reads the keys with llama.cpp's defaults.

use super::Family;
use crate::gguf::{Array, Metadata, Value};
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};

/// llama.cpp's LLAMA_MAX_LAYERS: a file with more blocks is refused by its loader.
pub const MAX_LAYERS: u64 = 512;

/// The pseudo-key for the vocabulary size (llama.cpp's n_vocab: the length of
/// `tokenizer.ggml.tokens`).
pub const VOCAB: &str = "vocab";

/// One dimension: the product of hyperparameters (keys after `<arch>.`, or [`VOCAB`]), times
/// `mul`, divided by `div`, plus `plus_mul` times the product of `plus` (a fused tensor's width).
#[derive(Clone, Copy, Debug)]
pub struct Dim {
    pub factors: &'static [&'static str],
    pub div: u64,
    pub mul: u64,
    pub plus: &'static [&'static str],
    pub plus_mul: u64,
}

impl Dim {
    /// One hyperparameter.
    pub const fn of(key: &'static [&'static str]) -> Dim {
        Dim {
            factors: key,
            div: 1,
            mul: 1,
            plus: &[],
            plus_mul: 0,
        }
    }
    /// Half of a product (rope_freqs is `{n_rot / 2}`).
    pub const fn half(key: &'static [&'static str]) -> Dim {
        Dim {
            div: 2,
            ..Dim::of(key)
        }
    }
    /// Twice a product (a fused gate + up projection is `{n_embd, 2 n_ff}`).
    pub const fn double(key: &'static [&'static str]) -> Dim {
        Dim {
            mul: 2,
            ..Dim::of(key)
        }
    }
    /// `key + 2 other` (a fused q + k + v projection is `n_embd + 2 n_embd_gqa` wide).
    pub const fn plus_twice(key: &'static [&'static str], other: &'static [&'static str]) -> Dim {
        Dim {
            plus: other,
            plus_mul: 2,
            ..Dim::of(key)
        }
    }
    /// Every key the dimension depends on.
    pub fn keys(&self) -> impl Iterator<Item = &'static str> {
        self.factors.iter().chain(self.plus.iter()).copied()
    }
}

/// One tensor llama.cpp's loader creates: its GGUF name (after `blk.N.` for a layer tensor), its
/// dimensions in ggml order, and whether the loader refuses a file without it.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: &'static str,
    pub dims: Vec<Dim>,
    pub required: bool,
}

impl TensorSpec {
    pub fn required(name: &'static str, dims: &[Dim]) -> TensorSpec {
        TensorSpec {
            name,
            dims: dims.to_vec(),
            required: true,
        }
    }
    pub fn optional(name: &'static str, dims: &[Dim]) -> TensorSpec {
        TensorSpec {
            name,
            dims: dims.to_vec(),
            required: false,
        }
    }
}

/// What an architecture's loader creates: tensors outside the blocks, and the tensors of each
/// block `blk.N.` for N below `block_count`.
#[derive(Clone, Debug, Default)]
pub struct LoaderTensors {
    pub global: Vec<TensorSpec>,
    pub layer: Vec<TensorSpec>,
}

impl LoaderTensors {
    /// Replaces (or adds) the layer tensor of that name.
    pub fn set_layer(&mut self, spec: TensorSpec) {
        set(&mut self.layer, spec)
    }
    /// Replaces (or adds) the global tensor of that name.
    pub fn set_global(&mut self, spec: TensorSpec) {
        set(&mut self.global, spec)
    }
    pub fn remove_layer(&mut self, name: &str) {
        self.layer.retain(|s| s.name != name)
    }
    pub fn remove_global(&mut self, name: &str) {
        self.global.retain(|s| s.name != name)
    }
}

fn set(list: &mut Vec<TensorSpec>, spec: TensorSpec) {
    match list.iter_mut().find(|s| s.name == spec.name) {
        Some(s) => *s = spec,
        None => list.push(spec),
    }
}

/// A file's hyperparameters as llama.cpp's loader reads them (`llama_model::load_hparams`),
/// with its defaults.
pub struct Hyper<'a> {
    arch: &'a str,
    md: &'a Metadata,
}

impl<'a> Hyper<'a> {
    pub fn new(arch: &'a str, md: &'a Metadata) -> Self {
        Hyper { arch, md }
    }
    fn raw(&self, key: &str, layer: u64) -> Option<u64> {
        let v = self.md.get(&format!("{}.{key}", self.arch))?;
        let int = |x: i128| u64::try_from(x).ok();
        match v {
            Value::Array(Array::U32(a)) => {
                a.get(layer as usize).or(a.first()).map(|&x| u64::from(x))
            }
            Value::Array(Array::I32(a)) => a
                .get(layer as usize)
                .or(a.first())
                .and_then(|&x| int(x as i128)),
            v => v.as_int().and_then(int),
        }
    }
    /// Whether the file sets `key` (a value that is not set comes from llama.cpp's default).
    pub fn is_set(&self, key: &str) -> bool {
        key == VOCAB || self.md.get(&format!("{}.{key}", self.arch)).is_some()
    }
    /// The value llama.cpp uses for `key` in block `layer`.
    pub fn get(&self, key: &str, layer: u64) -> u64 {
        if key == VOCAB {
            return match self.md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len() as u64,
                _ => 0,
            };
        }
        if let Some(v) = self.raw(key, layer) {
            return v;
        }
        match key {
            "attention.head_count_kv" => self.get("attention.head_count", layer),
            "attention.key_length" | "attention.value_length" => self
                .get("embedding_length", 0)
                .checked_div(self.get("attention.head_count", 0))
                .unwrap_or(0),
            "rope.dimension_count" => self.get("attention.key_length", layer),
            // deepseek2's derived sizes (kiln's pseudo-keys): n_embd_head_k_mla - n_rot, and
            // kv_lora_rank + n_rot.
            super::deepseek2::QK_NOPE => self
                .get("attention.key_length_mla", layer)
                .saturating_sub(self.get("rope.dimension_count", layer)),
            super::deepseek2::KV_A => self
                .get("attention.kv_lora_rank", layer)
                .saturating_add(self.get("rope.dimension_count", layer)),
            // qwen2moe/qwen3moe: n_ff / n_expert_used when the file does not say.
            "expert_feed_forward_length" => self
                .get("feed_forward_length", layer)
                .checked_div(self.get("expert_used_count", layer))
                .unwrap_or(0),
            _ => 0,
        }
    }
    fn dim(&self, d: &Dim, layer: u64) -> Option<u64> {
        let product = |keys: &[&str]| -> Option<u64> {
            let mut n: u64 = 1;
            for f in keys {
                n = n.checked_mul(self.get(f, layer))?;
            }
            Some(n)
        };
        let main = product(d.factors)?.checked_mul(d.mul)? / d.div.max(1);
        if d.plus_mul == 0 {
            return Some(main);
        }
        main.checked_add(product(d.plus)?.checked_mul(d.plus_mul)?)
    }
}

/// How the input names its hyperparameters in messages: the file (`config.json` or the GGUF),
/// what its tensors are called ("the checkpoint", "the file"), and `key = value` for a
/// hyperparameter key.
pub trait Labels {
    fn file(&self) -> String;
    fn holder(&self) -> &'static str;
    fn label(&self, hyper: &Hyper, key: &str, layer: u64) -> String;
    /// Whether the input states `key` itself (named first in messages: the likelier culprit).
    fn is_explicit(&self, hyper: &Hyper, key: &str) -> bool {
        hyper.is_set(key)
    }
}

/// Labels for a GGUF input: its own keys.
pub struct GgufLabels<'a> {
    pub path: &'a str,
    pub arch: &'a str,
}

impl Labels for GgufLabels<'_> {
    fn file(&self) -> String {
        self.path.to_string()
    }
    fn holder(&self) -> &'static str {
        "the file"
    }
    fn label(&self, hyper: &Hyper, key: &str, layer: u64) -> String {
        let v = hyper.get(key, layer);
        if key == VOCAB {
            format!("tokenizer.ggml.tokens ({v} entries)")
        } else if hyper.is_set(key) {
            format!("{}.{key} = {v}", self.arch)
        } else {
            format!("{}.{key} (not set, llama.cpp's default) = {v}", self.arch)
        }
    }
}

fn show(dims: &[u64]) -> String {
    dims.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" x ")
}

/// ggml's comparison: dimensions past a tensor's last count as 1.
fn same_shape(a: &[u64], b: &[u64]) -> bool {
    let n = a.len().max(b.len());
    (0..n).all(|i| a.get(i).copied().unwrap_or(1) == b.get(i).copied().unwrap_or(1))
}

/// The block index of `blk.N.rest`, and `rest`.
fn split_layer(name: &str) -> Option<(u64, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

fn joined(labels: &[String]) -> String {
    labels.join(", ")
}

/// Checks `block_count` against the blocks the tensors hold: not zero, not past llama.cpp's
/// limit, no tensor of a block at or past it, and no block below it without tensors (named by
/// `first_layer_tensor`, the loader's first required block tensor). Cheap and allocation-free in
/// `block_count`, so it can run before anything is sized by it.
pub fn check_layer_count(
    hyper: &Hyper,
    labels: &dyn Labels,
    tensors: &[(String, Vec<u64>)],
    first_layer_tensor: Option<&str>,
) -> Result<()> {
    let n_layer = hyper.get("block_count", 0);
    let key = labels.label(hyper, "block_count", 0);
    let file = labels.file();
    let holder = labels.holder();
    let present: BTreeMap<u64, (&str, &[u64])> = tensors
        .iter()
        .filter_map(|(n, d)| split_layer(n).map(|(b, _)| (b, (n.as_str(), d.as_slice()))))
        .rev()
        .collect();
    let span = match (present.keys().next(), present.keys().next_back()) {
        (Some(a), Some(b)) => format!("its blocks are blk.{a} to blk.{b}"),
        _ => "it has no blk.N tensors".to_string(),
    };
    if n_layer == 0 {
        bail!("{file}: {key}: a model needs at least one block ({span})");
    }
    if let Some((_, &(name, dims))) = present.range(n_layer..).next() {
        bail!(
            "{file}: {key}, but {holder} has {name} {} ({span})",
            show(dims)
        );
    }
    if let Some(missing) = (0..n_layer).find(|b| !present.contains_key(b)) {
        let what = match first_layer_tensor {
            Some(t) => format!("blk.{missing}.{t}"),
            None => format!("tensors of blk.{missing}"),
        };
        bail!("{file}: {key} needs {what}, {holder} has none ({span})");
    }
    if n_layer > MAX_LAYERS {
        bail!("{file}: {key} is past llama.cpp's limit of {MAX_LAYERS} blocks ({holder}: {span})");
    }
    Ok(())
}

/// Checks every tensor (GGUF name, ggml dims) against the shape `family`'s llama.cpp loader
/// computes from the hyperparameters in `md`: the block count, each tensor's shape, required
/// tensors present, no tensor the loader does not read. The first problem is the error.
pub fn check(
    family: &dyn Family,
    md: &Metadata,
    labels: &dyn Labels,
    tensors: &[(String, Vec<u64>)],
) -> Result<()> {
    let arch = family.gguf_name();
    let hyper = Hyper::new(arch, md);
    let spec = family.loader_tensors(&hyper);
    let first = spec.layer.iter().find(|s| s.required).map(|s| s.name);
    check_layer_count(&hyper, labels, tensors, first)?;
    let n_layer = hyper.get("block_count", 0);
    let file = labels.file();
    let holder = labels.holder();
    let by_name: BTreeMap<&str, &[u64]> = tensors
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();

    let check_one = |s: &TensorSpec, name: &str, layer: u64| -> Result<()> {
        let expected: Vec<Option<u64>> = s.dims.iter().map(|d| hyper.dim(d, layer)).collect();
        let Some(have) = by_name.get(name) else {
            if s.required {
                let keys: BTreeSet<&str> = s.dims.iter().flat_map(|d| d.keys()).collect();
                let from: Vec<String> = keys
                    .iter()
                    .map(|k| labels.label(&hyper, k, layer))
                    .collect();
                bail!(
                    "{file}: {holder} has no {name}, which llama.cpp's {arch} loader requires ({} from {})",
                    show(&expected.iter().map(|d| d.unwrap_or(0)).collect::<Vec<_>>()),
                    joined(&from)
                );
            }
            return Ok(());
        };
        let want: Vec<u64> = expected.iter().map(|d| d.unwrap_or(u64::MAX)).collect();
        if same_shape(&want, have) {
            return Ok(());
        }
        // Name the keys behind the dimensions that differ.
        let mut keys: Vec<&str> = Vec::new();
        for (i, d) in s.dims.iter().enumerate() {
            if have.get(i).copied().unwrap_or(1) != want[i] {
                for f in d.keys() {
                    if !keys.contains(&f) {
                        keys.push(f);
                    }
                }
            }
        }
        if keys.is_empty() {
            keys = s.dims.iter().flat_map(|d| d.keys()).collect();
        }
        // Keys the file sets first: they are the likelier culprits.
        keys.sort_by_key(|k| !labels.is_explicit(&hyper, k));
        let from: Vec<String> = keys
            .iter()
            .map(|k| labels.label(&hyper, k, layer))
            .collect();
        let verb = if from.len() == 1 { "gives" } else { "give" };
        let shown: Vec<String> = expected
            .iter()
            .map(|d| d.map_or("(overflow)".to_string(), |v| v.to_string()))
            .collect();
        bail!(
            "{file}: {} {verb} {name} {}, {holder} has {}",
            joined(&from),
            shown.join(" x "),
            show(have)
        )
    };

    for s in &spec.global {
        check_one(s, s.name, 0)?;
    }
    for b in 0..n_layer {
        for s in &spec.layer {
            check_one(s, &format!("blk.{b}.{}", s.name), b)?;
        }
    }
    for (name, dims) in tensors {
        let known = match split_layer(name) {
            Some((_, rest)) => spec.layer.iter().any(|s| s.name == rest),
            None => spec.global.iter().any(|s| s.name == name),
        };
        if !known {
            bail!(
                "{file}: {holder} has {name} {}, a tensor llama.cpp's {arch} loader does not read (it refuses the file)",
                show(dims)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;

    fn md(pairs: &[(&str, Value)]) -> Metadata {
        let mut m = Metadata::new();
        for (k, v) in pairs {
            m.set(format!("llama.{k}"), v.clone());
        }
        m
    }

    #[test]
    fn hyperparameters_take_llama_cpp_defaults() {
        let m = md(&[
            ("embedding_length", Value::U32(64)),
            ("attention.head_count", Value::U32(4)),
        ]);
        let h = Hyper::new("llama", &m);
        assert_eq!(h.get("attention.head_count_kv", 0), 4);
        assert_eq!(h.get("attention.key_length", 0), 16);
        assert_eq!(h.get("rope.dimension_count", 0), 16);
        assert_eq!(h.get("feed_forward_length", 0), 0);
        assert!(!h.is_set("attention.key_length"));
        let d = Dim::of(&["attention.key_length", "attention.head_count_kv"]);
        assert_eq!(h.dim(&d, 0), Some(64));
        assert_eq!(h.dim(&Dim::half(&["rope.dimension_count"]), 0), Some(8));
    }

    #[test]
    fn per_layer_arrays_are_read_per_block() {
        let m = md(&[(
            "feed_forward_length",
            Value::Array(Array::U32(vec![128, 256])),
        )]);
        let h = Hyper::new("llama", &m);
        assert_eq!(h.get("feed_forward_length", 0), 128);
        assert_eq!(h.get("feed_forward_length", 1), 256);
    }

    #[test]
    fn llama_with_experts_expects_the_router_and_stacked_experts() {
        let m = md(&[
            ("embedding_length", Value::U32(64)),
            ("feed_forward_length", Value::U32(96)),
            ("expert_count", Value::U32(8)),
        ]);
        let h = Hyper::new("llama", &m);
        let t = super::super::base::loader_tensors(&h);
        let find = |n: &str| t.layer.iter().find(|s| s.name == n);
        assert!(find("ffn_up.weight").is_none());
        let up = find("ffn_up_exps.weight").unwrap();
        let dims: Vec<_> = up.dims.iter().map(|d| h.dim(d, 0).unwrap()).collect();
        assert_eq!(dims, [64, 96, 8]);
        assert!(find("ffn_gate_inp.weight").unwrap().required);
        assert!(find("ffn_gate_shexp.weight").is_none());
    }

    #[test]
    fn trailing_ones_do_not_count() {
        assert!(same_shape(&[64], &[64, 1]));
        assert!(!same_shape(&[64, 2], &[64]));
        assert!(!same_shape(&[64, 32], &[32, 64]));
    }
}
