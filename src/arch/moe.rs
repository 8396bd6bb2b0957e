//! Mixture-of-experts layers, as convert_hf_to_gguf.py's MoE families store them: each layer's
//! experts stacked into one 3-D tensor per projection (`blk.N.ffn_{gate,up,down}_exps.weight`,
//! ne = {cols, rows, n_expert}, expert outermost), beside the router `blk.N.ffn_gate_inp.weight`.
//!
//! Checkpoints come in two forms, and both are read here:
//! - one tensor per expert, as every MoE release ships (`model.layers.N.mlp.experts.E.gate_proj
//!   .weight` for Qwen, `model.layers.N.block_sparse_moe.experts.E.w1.weight` for Mixtral):
//!   stacked as convert's `torch.stack(datas, dim=0)` does, but without holding the layer: the
//!   job is a [`TensorSource::Gather`] of the experts' rows, read a slab at a time;
//! - transformers 5's fused tensors (`model.layers.N.mlp.experts.gate_up_proj`, shape
//!   [E, 2F, D], gate rows first, and `mlp.experts.down_proj`, [E, D, F]), which
//!   `save_pretrained(save_original_format=False)` writes: split into gate and up as
//!   conversion/qwen.py's `Qwen2MoeModel` does.
//!
//! Every expert of every layer must be present with the shape the hyperparameters give
//! (llama.cpp would refuse the file at load time); a missing, extra or misshapen expert is an
//! error naming the tensor, before any output.

use super::Hparams;
use crate::job::{Job, Piece, TensorSource, Transform};
use crate::source::{Checkpoint, SrcDtype};
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// config.json keys of the expert count, in convert's `find_hparam` order.
pub const EXPERT_COUNT_KEYS: &[&str] = &["num_local_experts", "num_experts", "n_routed_experts"];
/// config.json keys of the experts used per token, in convert's order.
pub const EXPERT_USED_KEYS: &[&str] = &[
    "num_experts_per_tok",
    "num_experts_per_token",
    "top_k_experts",
];

/// One of an expert's three projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Gate,
    Up,
    Down,
}

impl Role {
    /// The stacked tensor's GGUF name in block `layer`.
    pub fn gguf_name(self, layer: u32) -> String {
        let t = match self {
            Role::Gate => "ffn_gate_exps",
            Role::Up => "ffn_up_exps",
            Role::Down => "ffn_down_exps",
        };
        format!("blk.{layer}.{t}.weight")
    }
}

/// How a family's per-expert checkpoints name their experts.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The module under `model.layers.N.` that holds `experts.E.*` ("mlp" for Qwen,
    /// "block_sparse_moe" for Mixtral).
    pub module: &'static str,
    /// The per-expert projection names (`gate_proj` / `w1`, ...) and their roles.
    pub projections: [(&'static str, Role); 3],
    /// config.json keys of each expert's feed-forward width, first present wins.
    pub ff_keys: &'static [&'static str],
}

impl Layout {
    fn projection(&self, role: Role) -> &'static str {
        self.projections
            .iter()
            .find(|p| p.1 == role)
            .map(|p| p.0)
            .unwrap_or("?")
    }

    /// The roles in the order convert_hf_to_gguf.py yields a layer's stacked experts: its
    /// families loop over the projection names sorted (`["down_proj", "gate_proj", "up_proj"]`,
    /// `["w1", "w2", "w3"]`), which is the order kiln writes them in at a checkpoint's own
    /// precision.
    pub fn yield_order(&self) -> [Role; 3] {
        let mut p = self.projections;
        p.sort_by_key(|x| x.0);
        p.map(|x| x.1)
    }

    /// The Hugging Face name of expert `e`'s projection in layer `layer`.
    fn expert_name(&self, layer: u32, e: usize, role: Role) -> String {
        format!(
            "model.layers.{layer}.{}.experts.{e}.{}.weight",
            self.module,
            self.projection(role)
        )
    }
}

/// An expert tensor found in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Expert `expert`'s `role` projection, one tensor.
    Expert { role: Role, expert: usize },
    /// transformers 5's fused [E, 2F, D] gate and up projections.
    FusedGateUp,
    /// transformers 5's fused [E, D, F] down projections.
    FusedDown,
}

/// Whether `rest` (a decoder-layer tensor name after `model.layers.N.`) is an expert tensor
/// of `layout`'s family, and which.
pub fn classify(layout: &Layout, rest: &str) -> Option<Found> {
    // transformers 5 names the module "mlp" whatever the family's older name.
    if let Some(fused) = rest.strip_prefix("mlp.experts.") {
        match fused.strip_suffix(".weight").unwrap_or(fused) {
            "gate_up_proj" => return Some(Found::FusedGateUp),
            "down_proj" => return Some(Found::FusedDown),
            _ => {}
        }
    }
    let r = rest
        .strip_prefix(layout.module)?
        .strip_prefix(".experts.")?;
    let (e, proj) = r.split_once('.')?;
    let expert: usize = e.parse().ok()?;
    let proj = proj.strip_suffix(".weight")?;
    let role = layout.projections.iter().find(|p| p.0 == proj)?.1;
    Some(Found::Expert { role, expert })
}

/// The expert hyperparameters: count, used per token, feed-forward width.
#[derive(Clone, Copy, Debug)]
pub struct Experts {
    pub n_expert: usize,
    pub n_used: usize,
    pub n_ff: usize,
    /// The config key that gave `n_expert` (for errors).
    pub count_key: &'static str,
    /// The config key that gave `n_ff`.
    pub ff_key: &'static str,
    /// The first layer with experts (DeepSeek's leading layers are dense).
    pub first_layer: u32,
}

/// The first of `keys` set in config.json or the family's defaults.
pub fn find_u32(hp: &Hparams, keys: &[&'static str]) -> Result<Option<(&'static str, u32)>> {
    for &k in keys {
        if let Some(v) = hp.get_u32(k)? {
            return Ok(Some((k, v)));
        }
    }
    Ok(None)
}

/// Reads and checks the expert hyperparameters.
pub fn experts(hp: &Hparams, layout: &Layout) -> Result<Experts> {
    let path = &hp.cfg.path;
    let Some((count_key, n_expert)) = find_u32(hp, EXPERT_COUNT_KEYS)? else {
        bail!("{path}: a mixture-of-experts model without num_experts / num_local_experts");
    };
    let Some((used_key, n_used)) = find_u32(hp, EXPERT_USED_KEYS)? else {
        bail!("{path}: a mixture-of-experts model without num_experts_per_tok");
    };
    let Some((ff_key, n_ff)) = find_u32(hp, layout.ff_keys)? else {
        bail!("{path}: missing {} (the experts' width)", layout.ff_keys[0]);
    };
    if n_expert == 0 || n_used == 0 || n_used > n_expert {
        bail!("{path}: {used_key} = {n_used} experts per token out of {count_key} = {n_expert}");
    }
    if n_ff == 0 {
        bail!("{path}: {ff_key} = 0");
    }
    Ok(Experts {
        n_expert: n_expert as usize,
        n_used: n_used as usize,
        n_ff: n_ff as usize,
        count_key,
        ff_key,
        first_layer: 0,
    })
}

/// The expert tensors of a checkpoint, gathered while its tensor table is walked.
#[derive(Default)]
pub struct Collected {
    per_expert: BTreeMap<(u32, Role), BTreeMap<usize, usize>>,
    gate_up: BTreeMap<u32, usize>,
    down: BTreeMap<u32, usize>,
}

impl Collected {
    /// Records tensor `index` of layer `layer`.
    pub fn add(&mut self, layer: u32, found: Found, index: usize) {
        match found {
            Found::Expert { role, expert } => {
                self.per_expert
                    .entry((layer, role))
                    .or_default()
                    .insert(expert, index);
            }
            Found::FusedGateUp => {
                self.gate_up.insert(layer, index);
            }
            Found::FusedDown => {
                self.down.insert(layer, index);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.per_expert.is_empty() && self.gate_up.is_empty() && self.down.is_empty()
    }
}

/// The stacked expert jobs of every layer, checked against the hyperparameters.
pub fn stack(
    ck: &Checkpoint,
    hp: &Hparams,
    layout: &Layout,
    x: &Experts,
    found: Collected,
    input_type: impl Fn(&str, &[u64], SrcDtype) -> crate::gguf::TypeId,
) -> Result<Vec<Job>> {
    let d = hp.n_embd as usize;
    let (n_expert, f) = (x.n_expert, x.n_ff);
    let path = &hp.cfg.path;
    let tensor = |i: usize| &ck.tensors[i];
    let file = |i: usize| ck.file_of(tensor(i)).display().to_string();
    let dtype_of = |i: usize| -> Result<SrcDtype> {
        let t = tensor(i);
        t.dtype.clone().map_err(|other| {
            anyhow::anyhow!(
                "{}: tensor {} has dtype {other}; kiln converts F32, F16 and BF16 tensors",
                file(i),
                t.name
            )
        })
    };
    // Experts outside the layers or the expert count: the config disagrees with the tensors.
    let mut layers_seen: Vec<u32> = found.per_expert.keys().map(|k| k.0).collect();
    layers_seen.extend(found.gate_up.keys());
    layers_seen.extend(found.down.keys());
    if let Some(&l) = layers_seen.iter().find(|&&l| l >= hp.n_layer) {
        let i = found
            .per_expert
            .iter()
            .find(|(k, _)| k.0 == l)
            .and_then(|(_, m)| m.values().next().copied())
            .or(found.gate_up.get(&l).copied())
            .or(found.down.get(&l).copied())
            .unwrap_or(0);
        bail!(
            "{}: tensor {} is in layer {l}, but {path} says num_hidden_layers = {}",
            file(i),
            tensor(i).name,
            hp.n_layer
        );
    }
    if let Some(&l) = layers_seen.iter().find(|&&l| l < x.first_layer) {
        let i = found
            .per_expert
            .iter()
            .find(|(k, _)| k.0 == l)
            .and_then(|(_, m)| m.values().next().copied())
            .or(found.gate_up.get(&l).copied())
            .or(found.down.get(&l).copied())
            .unwrap_or(0);
        bail!(
            "{}: tensor {} is an expert of layer {l}, but {path} makes the first {} layers dense",
            file(i),
            tensor(i).name,
            x.first_layer
        );
    }
    for experts in found.per_expert.values() {
        if let Some((&e, &i)) = experts.range(n_expert..).next() {
            bail!(
                "{}: tensor {} is expert {e}, but {path} says {} = {n_expert}",
                file(i),
                tensor(i).name,
                x.count_key
            );
        }
    }

    let mut jobs = Vec::new();
    for layer in x.first_layer..hp.n_layer {
        let fused_gate_up = found.gate_up.get(&layer).copied();
        let fused_down = found.down.get(&layer).copied();
        // Checked gate, up, down; emitted in convert's order (see [`Layout::yield_order`]).
        let mut layer_jobs: Vec<(Role, Job)> = Vec::with_capacity(3);
        for role in [Role::Gate, Role::Up, Role::Down] {
            let name = role.gguf_name(layer);
            // [rows, cols] of one expert's matrix, PyTorch order.
            let (rows, cols) = match role {
                Role::Gate | Role::Up => (f, d),
                Role::Down => (d, f),
            };
            let dims = vec![cols as u64, rows as u64, n_expert as u64];
            let per_expert = found.per_expert.get(&(layer, role));
            let fused = match role {
                Role::Gate | Role::Up => fused_gate_up,
                Role::Down => fused_down,
            };
            let (source, dtype) = match (per_expert, fused) {
                (Some(m), Some(i)) => {
                    let one = m.values().next().copied().unwrap_or(i);
                    bail!(
                        "{}: layer {layer} has both per-expert tensors ({}) and the fused {}",
                        file(i),
                        tensor(one).name,
                        tensor(i).name
                    );
                }
                (None, Some(i)) => {
                    let t = tensor(i);
                    let want: Vec<usize> = match role {
                        Role::Gate | Role::Up => vec![n_expert, 2 * f, d],
                        Role::Down => vec![n_expert, d, f],
                    };
                    if t.shape != want {
                        bail!(
                            "{}: tensor {} has shape {:?}; {} = {n_expert}, {} = {f} and hidden_size = {d} make it {want:?}",
                            file(i),
                            t.name,
                            t.shape,
                            x.count_key,
                            x.ff_key
                        );
                    }
                    let source = match role {
                        Role::Down => TensorSource::Input {
                            index: i,
                            transform: Transform::None,
                        },
                        Role::Gate | Role::Up => {
                            let half = if role == Role::Gate { 0 } else { f };
                            TensorSource::Gather(
                                (0..n_expert)
                                    .map(|e| Piece {
                                        index: i,
                                        first_row: e * 2 * f + half,
                                        n_rows: f,
                                    })
                                    .collect(),
                            )
                        }
                    };
                    (source, dtype_of(i)?)
                }
                (Some(m), None) => {
                    let mut pieces = Vec::with_capacity(n_expert);
                    let mut dtype = None;
                    for e in 0..n_expert {
                        let Some(&i) = m.get(&e) else {
                            bail!(
                                "{}: tensor {} is missing ({} = {n_expert}: layer {layer} has {} of its {} tensors)",
                                ck.dir.display(),
                                layout.expert_name(layer, e, role),
                                x.count_key,
                                m.len(),
                                layout.projection(role)
                            );
                        };
                        let t = tensor(i);
                        if t.shape != [rows, cols] {
                            bail!(
                                "{}: tensor {} has shape {:?}; {} = {f} and hidden_size = {d} make it {:?}",
                                file(i),
                                t.name,
                                t.shape,
                                x.ff_key,
                                [rows, cols]
                            );
                        }
                        let dt = dtype_of(i)?;
                        if *dtype.get_or_insert(dt) != dt {
                            bail!(
                                "{}: tensor {} is {}, the layer's other experts are {}",
                                file(i),
                                t.name,
                                dt.name(),
                                dtype.map(|d| d.name()).unwrap_or_default()
                            );
                        }
                        pieces.push(Piece {
                            index: i,
                            first_row: 0,
                            n_rows: rows,
                        });
                    }
                    let dtype = dtype.unwrap_or(SrcDtype::F32);
                    (TensorSource::Gather(pieces), dtype)
                }
                (None, None) => bail!(
                    "{}: layer {layer} has no {} experts (tensors {} ... {}); {path} says {} = {n_expert}",
                    ck.dir.display(),
                    layout.projection(role),
                    layout.expert_name(layer, 0, role),
                    layout.expert_name(layer, n_expert - 1, role),
                    x.count_key,
                ),
            };
            let input_type = input_type(&name, &dims, dtype);
            layer_jobs.push((
                role,
                Job {
                    name,
                    dims,
                    input_type,
                    out_type: input_type,
                    fallback_from: None,
                    source,
                },
            ));
        }
        let order = layout.yield_order();
        layer_jobs.sort_by_key(|(r, _)| order.iter().position(|o| o == r));
        jobs.extend(layer_jobs.into_iter().map(|(_, j)| j));
    }
    Ok(jobs)
}

/// Every layer has a router of one row per expert (`ffn_gate_inp`, ne = {hidden, n_expert}).
pub fn check_routers(ck: &Checkpoint, hp: &Hparams, x: &Experts, jobs: &[Job]) -> Result<()> {
    for layer in x.first_layer..hp.n_layer {
        let name = format!("blk.{layer}.ffn_gate_inp.weight");
        let Some(j) = jobs.iter().find(|j| j.name == name) else {
            bail!(
                "{}: layer {layer} has no router (mlp.gate.weight / block_sparse_moe.gate.weight, GGUF {name})",
                ck.dir.display()
            );
        };
        let want = [hp.n_embd, x.n_expert as u64];
        if j.dims != want {
            let (file, hf) = match j.source {
                TensorSource::Input { index, .. } => (
                    ck.file_of(&ck.tensors[index]).display().to_string(),
                    ck.tensors[index].name.clone(),
                ),
                _ => (ck.dir.display().to_string(), name.clone()),
            };
            let shape: Vec<u64> = j.dims.iter().rev().copied().collect();
            bail!(
                "{file}: tensor {hf} has shape {shape:?}; {} says {} = {} and hidden_size = {} ([{}, {}])",
                hp.cfg.path,
                x.count_key,
                x.n_expert,
                hp.n_embd,
                x.n_expert,
                hp.n_embd
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN: Layout = Layout {
        module: "mlp",
        projections: [
            ("gate_proj", Role::Gate),
            ("up_proj", Role::Up),
            ("down_proj", Role::Down),
        ],
        ff_keys: &["moe_intermediate_size"],
    };
    const MIXTRAL: Layout = Layout {
        module: "block_sparse_moe",
        projections: [("w1", Role::Gate), ("w3", Role::Up), ("w2", Role::Down)],
        ff_keys: &["intermediate_size"],
    };

    #[test]
    fn expert_names_classify_like_convert() {
        assert_eq!(
            classify(&QWEN, "mlp.experts.17.down_proj.weight"),
            Some(Found::Expert {
                role: Role::Down,
                expert: 17
            })
        );
        assert_eq!(
            classify(&MIXTRAL, "block_sparse_moe.experts.3.w3.weight"),
            Some(Found::Expert {
                role: Role::Up,
                expert: 3
            })
        );
        assert_eq!(
            classify(&MIXTRAL, "block_sparse_moe.experts.3.w2.weight"),
            Some(Found::Expert {
                role: Role::Down,
                expert: 3
            })
        );
        assert_eq!(
            classify(&MIXTRAL, "mlp.experts.gate_up_proj"),
            Some(Found::FusedGateUp)
        );
        assert_eq!(
            classify(&QWEN, "mlp.experts.down_proj.weight"),
            Some(Found::FusedDown)
        );
        assert_eq!(classify(&QWEN, "mlp.gate.weight"), None);
        assert_eq!(classify(&QWEN, "mlp.experts.x.up_proj.weight"), None);
        assert_eq!(classify(&MIXTRAL, "block_sparse_moe.gate.weight"), None);
        assert_eq!(Role::Down.gguf_name(4), "blk.4.ffn_down_exps.weight");
        assert_eq!(
            MIXTRAL.expert_name(2, 7, Role::Gate),
            "model.layers.2.block_sparse_moe.experts.7.w1.weight"
        );
    }
}
