//! `kiln quantize --target-bpw X` / `--target-size SIZE`: every tensor's type chosen to minimise
//! the predicted loss of the whole model within a size budget.
//!
//! 1. **Measure.** For every quantizable tensor and every candidate type ([`CANDIDATES`]: the
//!    float types, legacy formats, K-quants, i-quants, ternary types and MXFP4) that llama.cpp
//!    accepts for it ([`eligible`]: blocks that fit the tensor's rows, the types llama.cpp
//!    refuses without importance data only where the importance matrix has the tensor, MXFP4
//!    only for expert tensors), the tensor is quantized and dequantized with kiln's kernels, with
//!    the importance matrix exactly as the written file will be. Its error is the squared error
//!    weighted per column by the importance matrix (the mean squared activation that column
//!    meets), relative to the weighted energy of the weights: the relative noise the type adds
//!    at the output of that matrix multiplication, `E|dW a|^2 / E|W a|^2`. Tensors without
//!    importance data (the token embedding: a lookup, not a matmul) use the unweighted relative
//!    error, which is the relative noise of the looked-up row. Tensors above
//!    [`MeasureOptions::sample_weights`] weights are measured on evenly spaced rows (the plan
//!    says so).
//! 2. **Loss model.** Each tensor's predicted loss is its relative error plus the relative
//!    noise of the activations' rounding on the type's matmul path ([`activation_noise`]:
//!    llama.cpp's CPU backend rounds activations to f16 for f16 weights and to 8-bit blocks of
//!    32 or 256 for quantized ones), times the number of places it feeds the model: one for a weight matrix, two for a token embedding that is
//!    also the output projection (tied). Quantization noise at each matmul output adds to the
//!    residual stream independently, so the model's divergence grows with the sum of these
//!    relative noises (to first order); a tensor's size does not enter, only its noise.
//! 3. **Solve.** A multiple-choice knapsack: for each tensor the lower convex hull of its
//!    (bytes, loss) points; starting from every tensor's smallest type, the upgrade with the
//!    largest loss reduction per byte is taken while it fits (the Lagrangian solution, exact at
//!    the hull's vertices), then the bytes left over are spent on the best remaining single
//!    upgrades. The whole file (header, metadata, alignment padding, tensors kept as they are)
//!    counts against `--target-size`; `--target-bpw` bounds the tensor data over the weight
//!    count (kiln's and llama.cpp's bits per weight). Ties break by tensor order, so the plan is
//!    deterministic.

use crate::gguf::writer::{file_size, TensorEntry};
use crate::gguf::{keys, TypeId, Value};
use crate::job::Job;
use crate::plan::{self, FileType, PlanOptions};
use crate::quantize::{self, Options, Prepared};
use anyhow::{bail, Context, Result};
use kiln_kernels::GgmlType;
use rayon::prelude::*;
use std::path::Path;

/// What the budget bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Bits per weight: tensor data bytes * 8 / weights, at most this.
    Bpw(f64),
    /// The whole file's size in bytes, at most this.
    Bytes(u64),
}

impl Target {
    pub fn describe(self) -> String {
        match self {
            Target::Bpw(b) => format!("{b} bits per weight"),
            Target::Bytes(n) => format!("{n} bytes ({:.2} MiB)", n as f64 / 1048576.0),
        }
    }
}

/// Parses a size: a byte count ("123456789"), or a number with a unit: B, K/KB (1000), KiB
/// (1024), M/MB, MiB, G/GB, GiB, T/TB, TiB (case-insensitive: "3.5GiB", "900MB", "900 mb").
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        bail!("--target-size {s:?}: not a size (examples: 3.5GiB, 900MB, 123456789)");
    }
    let unit = unit.trim().to_ascii_lowercase();
    let mult: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1048576.0,
        "g" | "gb" => 1e9,
        "gib" => 1073741824.0,
        "t" | "tb" => 1e12,
        "tib" => 1099511627776.0,
        _ => bail!("--target-size {s:?}: unknown unit {unit:?} (use a byte count or B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"),
    };
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .with_context(|| {
            format!("--target-size {s:?}: not a size (examples: 3.5GiB, 900MB, 123456789)")
        })?;
    let bytes = (v * mult).floor();
    if bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        bail!("--target-size {s:?}: not a usable size");
    }
    Ok(bytes as u64)
}

/// The types the solver considers, most bits first: every type kiln writes that stock
/// llama.cpp reads, except Q1_0/Q2_0 (newer than the llama.cpp, ollama and LM Studio releases
/// users have). Which of
/// them a tensor may take is [`eligible`]'s rule: rows a whole number of blocks, importance data
/// for the types llama.cpp refuses without it, MXFP4 only for expert tensors.
pub const CANDIDATES: [GgmlType; 25] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q6_K,
    GgmlType::Q5_K,
    GgmlType::Q5_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
    GgmlType::Q4_0,
    GgmlType::MXFP4,
    GgmlType::IQ4_XS,
    GgmlType::Q3_K,
    GgmlType::IQ3_S,
    GgmlType::IQ3_XXS,
    GgmlType::Q2_K,
    GgmlType::IQ2_S,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_XXS,
    GgmlType::TQ2_0,
    GgmlType::IQ1_M,
    GgmlType::TQ1_0,
    GgmlType::IQ1_S,
];

/// Whether tensor `j` may take type `ty` in a budget mix (`has_entry`: the importance matrix
/// has the tensor):
/// - its rows are a whole number of the type's blocks (llama.cpp's quantizer and its CPU
///   matmul need that; llama.cpp's mixes fall back to another type, the budget simply does not
///   offer it);
/// - the types ggml cannot quantize without importance data (IQ2_XXS, IQ2_XS, IQ1_S),
///   and those llama.cpp refuses without it for this tensor (`tensor_requires_imatrix`: also
///   IQ3_XXS and IQ2_S, except for the token embedding and the output), only with an entry;
/// - MXFP4 only for a 3-D tensor of several matrices (the experts), where llama.cpp's
///   MXFP4_MOE puts it (`tensor->ne[2] > 1`; every other tensor is Q8_0 there).
pub fn eligible(ty: GgmlType, j: &Job, has_entry: bool) -> bool {
    if ty.row_bytes(j.n_per_row()).is_none() {
        return false;
    }
    let needs =
        ty.requires_imatrix() || plan::requires_imatrix(&j.name, TypeId::of(ty), FileType::Q8_0);
    if needs && !has_entry {
        return false;
    }
    if ty == GgmlType::MXFP4 && j.dims.get(2).copied().unwrap_or(1) <= 1 {
        return false;
    }
    true
}

/// Parses `--budget-types`: comma-separated type names (llama.cpp's, case-insensitive), or the
/// groups `float` (F32, F16, BF16), `legacy` (Q8_0, Q5_1, Q5_0, Q4_1, Q4_0), `k` (the K-quants),
/// `i` (the i-quants), `ternary` (TQ2_0, TQ1_0) and `all`. Each must be one of [`CANDIDATES`];
/// F32 is always added (the type every tensor can take, so that a plan exists). The order is
/// [`CANDIDATES`]'s.
pub fn parse_types(list: &str) -> Result<Vec<GgmlType>> {
    let mut want: Vec<GgmlType> = vec![GgmlType::F32];
    for item in list.split(',').map(str::trim) {
        let group: Vec<GgmlType> = match item.to_ascii_lowercase().as_str() {
            "" => bail!("--budget-types {list:?}: an empty item"),
            "all" => CANDIDATES.to_vec(),
            "float" => vec![GgmlType::F32, GgmlType::F16, GgmlType::BF16],
            "legacy" => vec![
                GgmlType::Q8_0,
                GgmlType::Q5_1,
                GgmlType::Q5_0,
                GgmlType::Q4_1,
                GgmlType::Q4_0,
            ],
            "k" => CANDIDATES
                .into_iter()
                .filter(|t| t.name().ends_with("_K"))
                .collect(),
            "i" => CANDIDATES
                .into_iter()
                .filter(|t| t.name().starts_with("iq"))
                .collect(),
            "ternary" => vec![GgmlType::TQ2_0, GgmlType::TQ1_0],
            _ => {
                let t = GgmlType::from_name(item)
                    .with_context(|| format!("--budget-types: unknown type {item:?}"))?;
                if !CANDIDATES.contains(&t) {
                    bail!(
                        "--budget-types: {t} is not a budget candidate (the candidates: {})",
                        CANDIDATES.map(|t| t.name()).join(", ")
                    );
                }
                vec![t]
            }
        };
        want.extend(group);
    }
    Ok(CANDIDATES
        .into_iter()
        .filter(|t| want.contains(t))
        .collect())
}

/// How the measurement runs.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// Tensors with more weights than this are measured on evenly spaced rows of about this
    /// many weights in all.
    pub sample_weights: usize,
    /// The types measured (`--budget-types`); None: all of [`CANDIDATES`].
    pub types: Option<Vec<GgmlType>>,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            sample_weights: 1 << 19,
            types: None,
        }
    }
}

/// One candidate type of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub ty: GgmlType,
    /// Tensor data bytes.
    pub bytes: u64,
    /// Relative (importance-weighted) squared error of the weights.
    pub rel_err: f64,
    /// Relative output noise of the activations' rounding on this type's matmul path
    /// ([`activation_noise`]; 0 without importance data).
    pub act_err: f64,
    /// Predicted loss: `rel_err + act_err` times the tensor's role factor.
    pub loss: f64,
}

/// The measured candidates of one tensor the solver chooses for.
#[derive(Clone, Debug)]
pub struct TensorChoices {
    /// Index in the prepared jobs.
    pub job: usize,
    pub name: String,
    pub candidates: Vec<Candidate>,
    /// Rows measured, of `n_rows`.
    pub rows_measured: usize,
    pub n_rows: usize,
    pub weighted: bool,
    /// How many places the tensor feeds the model (2 for a tied token embedding).
    pub role: f64,
}

/// A solved plan.
#[derive(Clone, Debug)]
pub struct BudgetPlan {
    pub target: Target,
    /// The bound the solver kept, in its units (file bytes or data bytes).
    pub limit: u64,
    pub tensors: Vec<TensorChoices>,
    /// The jobs whose type the options pinned ([`pinned`]), kept out of the solver.
    pub pinned: Vec<usize>,
    /// The chosen candidate of each of `tensors`.
    pub chosen: Vec<usize>,
    pub predicted_loss: f64,
    /// The whole file's size.
    pub file_size: u64,
    /// Tensor data bytes and weights of the whole file.
    pub data_bytes: u64,
    pub n_elements: u64,
}

impl BudgetPlan {
    /// The predicted loss of the weights' rounding alone (without the activation noise).
    pub fn predicted_weight_loss(&self) -> f64 {
        self.tensors
            .iter()
            .zip(&self.chosen)
            .map(|(t, &k)| t.role * t.candidates[k].rel_err)
            .sum()
    }

    pub fn bpw(&self) -> f64 {
        self.data_bytes as f64 * 8.0 / self.n_elements.max(1) as f64
    }
}

const ALIGN_DEFAULT: u64 = 32;

fn padded(bytes: u64, align: u64) -> u64 {
    bytes.div_ceil(align) * align
}

/// The alignment the file will use (general.alignment, default 32).
fn alignment(p: &Prepared) -> u64 {
    p.metadata
        .get("general.alignment")
        .and_then(Value::as_int)
        .map(|a| a as u64)
        .filter(|&a| a > 0)
        .unwrap_or(ALIGN_DEFAULT)
}

/// Whether the budget chooses this job's type.
fn chosen_by_budget(j: &Job) -> bool {
    plan::allows_quantization(&j.name, &j.dims, &PlanOptions::default())
}

/// The importance weights for row `row` of a job (an expert's own row for 3-D tensors), when
/// the importance matrix has the tensor with the right length.
fn row_importance<'a>(j: &Job, qw: Option<&'a [f32]>, row: usize) -> Option<&'a [f32]> {
    let q = qw?;
    let n = j.n_per_row();
    if q.len() == n {
        return Some(q);
    }
    let n_expert = j.dims.get(2).copied().unwrap_or(1) as usize;
    if n_expert > 1 && q.len() == n * n_expert {
        let e = row / (j.dims[1] as usize).max(1);
        return q.get(e * n..(e + 1) * n);
    }
    None
}

/// How llama.cpp's CPU matmul feeds the activations to a weight type (ggml's `vec_dot_type`):
/// unchanged for f32, rounded to f16 for f16, quantized to 8 bits in blocks of 32 (q8_0/q8_1:
/// the legacy formats, IQ4_NL) or of 256 (q8_K: the K-quants and other i-quants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationPath {
    F32,
    F16,
    Q8Block32,
    Q8Block256,
}

pub fn activation_path(ty: GgmlType) -> ActivationPath {
    match ty {
        GgmlType::F32 => ActivationPath::F32,
        GgmlType::F16 | GgmlType::BF16 => ActivationPath::F16,
        t if t.block_weights() == 256 => ActivationPath::Q8Block256,
        _ => ActivationPath::Q8Block32,
    }
}

/// The relative output noise of quantizing a matmul's activations along `path`: activations
/// with the per-column mean squares of the importance matrix (`act_ms`, Gaussian draws from a
/// fixed seed, 64 tokens), their rounding error carried through the weights' column energies
/// `col_energy`: `sum_j c_j E[d_j^2] / sum_j c_j E[x_j^2]`, in the units of the weight error.
pub fn activation_noise(path: ActivationPath, act_ms: &[f32], col_energy: &[f64]) -> f64 {
    let n = act_ms.len();
    let block = match path {
        ActivationPath::F32 => return 0.0,
        ActivationPath::F16 => 1,
        ActivationPath::Q8Block32 => 32,
        ActivationPath::Q8Block256 => 256,
    };
    if n == 0 || !n.is_multiple_of(block) {
        return 0.0;
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut noise, mut energy) = (0.0f64, 0.0f64);
    let mut x = vec![0f64; n];
    for _ in 0..64 {
        for (j, v) in x.iter_mut().enumerate() {
            let (u1, u2) = (uniform().max(1e-300), uniform());
            let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            *v = (act_ms[j].max(0.0) as f64).sqrt() * g;
        }
        for (b, xs) in x.chunks(block).enumerate() {
            let amax = xs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, &v) in xs.iter().enumerate() {
                let j = b * block + i;
                let q = if block == 1 {
                    kiln_kernels::fp::f16_to_f32(kiln_kernels::fp::f32_to_f16(v as f32)) as f64
                } else if amax > 0.0 {
                    let d = amax / 127.0;
                    (v / d).round() * d
                } else {
                    0.0
                };
                noise += col_energy[j] * (v - q) * (v - q);
                energy += col_energy[j] * v * v;
            }
        }
    }
    if energy > 0.0 {
        noise / energy
    } else {
        0.0
    }
}

/// Measures every candidate type of every tensor the budget chooses for.
pub fn measure(p: &Prepared, mopts: &MeasureOptions) -> Result<Vec<TensorChoices>> {
    measure_except(p, mopts, &[])
}

/// [`measure`], leaving out the jobs in `skip` (the pinned ones, see [`pinned`]).
pub fn measure_except(
    p: &Prepared,
    mopts: &MeasureOptions,
    skip: &[usize],
) -> Result<Vec<TensorChoices>> {
    let tied = !p.jobs.iter().any(|j| j.name == "output.weight");
    // Importance data of the wrong size is refused before anything is measured.
    if let Some(m) = &p.imatrix {
        for j in p.jobs.iter().filter(|j| chosen_by_budget(j)) {
            let Some(q) = m.get(&j.name) else { continue };
            let n_per_row = j.n_per_row();
            let n_expert = j.dims.get(2).copied().unwrap_or(1) as usize;
            if q.len() != n_per_row && q.len() != n_per_row * n_expert {
                bail!(
                    "importance data for {} has {} values, the tensor's rows have {n_per_row}{} (an imatrix for another model?)",
                    j.name,
                    q.len(),
                    if n_expert > 1 { format!(" in each of {n_expert} experts") } else { String::new() }
                );
            }
        }
    }
    let mut out = Vec::new();
    for (ji, j) in p.jobs.iter().enumerate() {
        if !chosen_by_budget(j) || skip.contains(&ji) {
            continue;
        }
        crate::pipeline::check_interrupted()?;
        let n_per_row = j.n_per_row();
        let n_rows = j.n_rows();
        let qw = p
            .imatrix
            .as_ref()
            .and_then(|m| m.get(&j.name))
            .map(Vec::as_slice);
        // Evenly spaced rows when the tensor is large.
        let k = if n_rows * n_per_row <= mopts.sample_weights {
            n_rows
        } else {
            (mopts.sample_weights / n_per_row).clamp(1, n_rows)
        };
        let rows: Vec<usize> = (0..k).map(|i| i * n_rows / k).collect();
        let mut x = vec![0f32; k * n_per_row];
        if k == n_rows {
            crate::pipeline::read_job_rows(p.input.as_ref(), j, 0, &mut x)
                .with_context(|| format!("tensor {}", j.name))?;
        } else {
            for (i, &r) in rows.iter().enumerate() {
                crate::pipeline::read_job_rows(
                    p.input.as_ref(),
                    j,
                    r,
                    &mut x[i * n_per_row..(i + 1) * n_per_row],
                )
                .with_context(|| format!("tensor {}", j.name))?;
            }
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            bail!(
                "tensor {}: weight at row {}, column {} is {} (the input holds non-finite values)",
                j.name,
                rows[i / n_per_row],
                i % n_per_row,
                x[i]
            );
        }
        let has_entry = qw.is_some();
        let types: Vec<GgmlType> = mopts
            .types
            .as_deref()
            .unwrap_or(&CANDIDATES)
            .iter()
            .copied()
            .filter(|&t| eligible(t, j, has_entry))
            .collect();
        // The weighted energy of the sampled rows.
        let energy: f64 = rows
            .par_iter()
            .enumerate()
            .map(|(i, &r)| {
                let xr = &x[i * n_per_row..(i + 1) * n_per_row];
                let w = row_importance(j, qw, r);
                xr.iter()
                    .enumerate()
                    .map(|(c, &v)| w.map_or(1.0, |w| w[c] as f64) * (v as f64) * (v as f64))
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            // Summed in row order: rayon's parallel sum groups differently from run to run.
            .into_iter()
            .sum();
        // The weights' column energies (for the activation noise), where the importance
        // matrix says what the activations look like.
        let act_ms = row_importance(j, qw, 0);
        let col_energy: Vec<f64> = match act_ms {
            Some(_) => (0..n_per_row)
                .map(|c| {
                    (0..k)
                        .map(|i| (x[i * n_per_row + c] as f64).powi(2))
                        .sum::<f64>()
                })
                .collect(),
            None => Vec::new(),
        };
        let mut act_noise: Vec<(ActivationPath, f64)> = Vec::new();
        let role = if j.name == "token_embd.weight" && tied {
            2.0
        } else {
            1.0
        };
        // Every (type, row) pair in parallel: the slow i-quant searches and the fast formats
        // share the cores. Each type's rows are summed in row order (deterministic).
        let row_errs: Vec<Vec<Option<f64>>> = types
            .par_iter()
            .map(|&ty| {
                let Some(row_bytes) = ty.row_bytes(n_per_row) else {
                    return vec![None];
                };
                let qw_for = |r: usize| {
                    if ty.uses_imatrix() {
                        row_importance(j, qw, r)
                    } else {
                        None
                    }
                };
                rows.par_iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let xr = &x[i * n_per_row..(i + 1) * n_per_row];
                        let mut q = vec![0u8; row_bytes];
                        ty.quantize_with(p.search, xr, n_per_row, qw_for(r), &mut q)
                            .ok()?;
                        let mut y = vec![0f32; n_per_row];
                        ty.dequantize(&q, n_per_row, &mut y).ok()?;
                        let w = row_importance(j, qw, r);
                        Some(
                            xr.iter()
                                .zip(&y)
                                .enumerate()
                                .map(|(c, (&a, &b))| {
                                    let d = a as f64 - b as f64;
                                    w.map_or(1.0, |w| w[c] as f64) * d * d
                                })
                                .sum::<f64>(),
                        )
                    })
                    .collect()
            })
            .collect();
        let mut candidates = Vec::new();
        for (ty, errs) in types.into_iter().zip(row_errs) {
            let row_bytes = ty.row_bytes(n_per_row).context("row size")?;
            // A type whose scales overflow on these weights is no candidate.
            let Some(err) = errs.into_iter().sum::<Option<f64>>() else {
                continue;
            };
            let rel_err = if energy > 0.0 { err / energy } else { 0.0 };
            let act = match act_ms {
                Some(a) => {
                    let path = activation_path(ty);
                    match act_noise.iter().find(|(p, _)| *p == path) {
                        Some(&(_, v)) => v,
                        None => {
                            let v = activation_noise(path, a, &col_energy);
                            act_noise.push((path, v));
                            v
                        }
                    }
                }
                None => 0.0,
            };
            candidates.push(Candidate {
                ty,
                bytes: (row_bytes * n_rows) as u64,
                rel_err,
                act_err: act,
                loss: role * (rel_err + act),
            });
        }
        if candidates.is_empty() {
            bail!(
                "tensor {}: no type kiln writes can hold its rows of {n_per_row} weights",
                j.name
            );
        }
        out.push(TensorChoices {
            job: ji,
            name: j.name.clone(),
            candidates,
            rows_measured: k,
            n_rows,
            weighted: has_entry,
            role,
        });
    }
    Ok(out)
}

/// The lower convex hull of (cost, loss) points: indices in increasing cost and strictly
/// decreasing loss, with diminishing loss reduction per byte.
pub fn hull(points: &[(u64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .0
            .cmp(&points[b].0)
            .then(points[a].1.total_cmp(&points[b].1))
            .then(a.cmp(&b))
    });
    // Pareto front: each kept point strictly better than every cheaper one.
    let mut front: Vec<usize> = Vec::new();
    for i in idx {
        if front.last().is_none_or(|&l| points[i].1 < points[l].1) {
            if front.last().is_some_and(|&l| points[l].0 == points[i].0) {
                front.pop();
            }
            front.push(i);
        }
    }
    let mut h: Vec<usize> = Vec::new();
    for i in front {
        while h.len() >= 2 {
            let (a, b) = (points[h[h.len() - 2]], points[h[h.len() - 1]]);
            let c = points[i];
            // b is on or above the segment a-c: not a vertex of the lower hull.
            let cross = (b.0 - a.0) as f64 * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0) as f64;
            if cross <= 0.0 {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// Chooses one point per tensor (`costs[t][k]`, `losses[t][k]`) minimising the summed loss
/// with `fixed + sum of costs <= limit`. Returns the chosen index per tensor, or None when even
/// the cheapest choice of every tensor exceeds the limit.
pub fn solve(fixed: u64, points: &[Vec<(u64, f64)>], limit: u64) -> Option<Vec<usize>> {
    let hulls: Vec<Vec<usize>> = points.iter().map(|p| hull(p)).collect();
    let mut pos = vec![0usize; points.len()];
    let mut total = fixed;
    for (t, h) in hulls.iter().enumerate() {
        total = total.checked_add(points[t].get(*h.first()?)?.0)?;
    }
    if total > limit {
        return None;
    }
    // The next hull step of tensor t: loss reduction per byte.
    let gain = |t: usize, k: usize| -> Option<(f64, u64)> {
        let h = &hulls[t];
        let (a, b) = (points[t][h[k]], points[t][*h.get(k + 1)?]);
        let db = b.0 - a.0;
        Some(((a.1 - b.1) / db.max(1) as f64, db))
    };
    let mut open: Vec<bool> = vec![true; points.len()];
    loop {
        // The best open step (ties: the first tensor), taken when it fits; a tensor whose
        // next step does not fit is closed (its later steps need this one).
        let mut best: Option<(f64, usize, u64)> = None;
        for t in 0..points.len() {
            if !open[t] {
                continue;
            }
            match gain(t, pos[t]) {
                Some((g, db)) => {
                    if best.is_none_or(|(bg, _, _)| g > bg) {
                        best = Some((g, t, db));
                    }
                }
                None => open[t] = false,
            }
        }
        let Some((_, t, db)) = best else { break };
        if total + db <= limit {
            total += db;
            pos[t] += 1;
        } else {
            open[t] = false;
        }
    }
    let mut chosen: Vec<usize> = pos.iter().zip(&hulls).map(|(&k, h)| h[k]).collect();
    // Spend what is left: the single change (any point, not only hull vertices) with the
    // largest loss reduction that fits, until none does.
    loop {
        let mut best: Option<(f64, usize, usize)> = None;
        for (t, pts) in points.iter().enumerate() {
            let (cb, cl) = pts[chosen[t]];
            for (k, &(b, l)) in pts.iter().enumerate() {
                if l < cl && total - cb + b <= limit && best.is_none_or(|(bd, _, _)| cl - l > bd) {
                    best = Some((cl - l, t, k));
                }
            }
        }
        let Some((_, t, k)) = best else { break };
        total = total - points[t][chosen[t]].0 + points[t][k].0;
        chosen[t] = k;
    }
    Some(chosen)
}

/// The file type recorded in general.file_type: the one whose base type is the type most of
/// the chosen weights have (llama.cpp's loader guesses it the same way when it is absent).
fn file_type_of(jobs: &[Job]) -> FileType {
    let mut count: Vec<(TypeId, u64)> = Vec::new();
    for j in jobs.iter().filter(|j| chosen_by_budget(j)) {
        match count.iter_mut().find(|(t, _)| *t == j.out_type) {
            Some(c) => c.1 += j.n_elements(),
            None => count.push((j.out_type, j.n_elements())),
        }
    }
    count
        .iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .and_then(|(t, _)| FileType::ALL.into_iter().find(|f| f.default_type() == *t))
        .unwrap_or(FileType::Q8_0)
}

/// Plans a budget conversion: [`start`], [`measure`], [`finish`]. `opts.ftype` is ignored.
pub fn prepare(
    input: &Path,
    opts: &Options,
    target: Target,
    mopts: &MeasureOptions,
) -> Result<(Prepared, BudgetPlan)> {
    check_target(target)?;
    let p = start(input, opts)?;
    let tensors = measure_except(&p, mopts, &pinned(&p, opts)?)?;
    finish(input, p, opts, tensors, target)
}

fn check_target(target: Target) -> Result<()> {
    if let Target::Bpw(b) = target {
        if !(b.is_finite() && b > 0.0) {
            bail!("--target-bpw {b}: not a positive number of bits per weight");
        }
    }
    Ok(())
}

/// Prepares the input as a pure Q8_0 conversion (tensors the mixes never quantize stay as they
/// are; the budget then sets the type of every other one). The pins (`--tensor-type`,
/// `--token-embedding-type`, `--output-tensor-type`, `--leave-output-tensor`) set their
/// tensors' types here, as llama.cpp's plan sets them (a `--tensor-type` rule's type falls
/// back for rows it cannot hold); [`pinned`] names those tensors, and the budget keeps them.
pub fn start(input: &Path, opts: &Options) -> Result<Prepared> {
    if opts.pure {
        bail!("--target-bpw/--target-size choose every tensor's type; they cannot be combined with --pure");
    }
    let mut o = opts.clone();
    o.ftype = FileType::Q8_0;
    o.pure = true;
    let p = quantize::prepare(input, &o)?;
    for j in &p.jobs {
        if chosen_by_budget(j) && !opts.allow_requantize {
            if let Some(k) = j.input_type.kiln().filter(|k| k.is_quantized()) {
                bail!(
                    "{}: tensor {} is already quantized ({k}); requantizing loses quality, pass --allow-requantize to do it anyway",
                    input.display(),
                    j.name
                );
            }
        }
    }
    Ok(p)
}

/// The jobs whose type the options pin (their type is the one [`start`]'s plan gave them, and
/// the budget does not choose it): `--token-embedding-type` for token_embd.weight (and
/// per_layer_token_embd.weight unless a `--tensor-type` rule names it), `--output-tensor-type`
/// for output.weight, `--leave-output-tensor` for output.weight, and every tensor a
/// `--tensor-type` rule matches: llama.cpp's `llama_tensor_get_type` takes the type from the
/// options in exactly these cases. (A tied model has no output.weight: its token embedding is
/// pinned with `--token-embedding-type`.)
pub fn pinned(p: &Prepared, opts: &Options) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for (i, j) in p.jobs.iter().enumerate() {
        if !chosen_by_budget(j) {
            continue;
        }
        let mut ruled = false;
        for r in &opts.tensor_types {
            if r.matches(&j.name)? {
                ruled = true;
                break;
            }
        }
        let embd =
            j.name == "token_embd.weight" || (j.name == "per_layer_token_embd.weight" && !ruled);
        let pin = (opts.token_embedding_type.is_some() && embd)
            || ((opts.output_tensor_type.is_some() || opts.leave_output_tensor)
                && j.name == "output.weight")
            || ruled;
        if pin {
            out.push(i);
        }
    }
    Ok(out)
}

/// The budget problem: what the solver chooses for, the fixed bytes, the limit.
struct Problem {
    pins: Vec<usize>,
    tensors: Vec<TensorChoices>,
    fixed: u64,
    limit: u64,
    points: Vec<Vec<(u64, f64)>>,
}

/// Sets up the budget problem of `p` and refuses a budget smaller than the smallest file
/// (the pinned tensors at their types, every other at its smallest candidate).
fn problem(
    input: &Path,
    p: &Prepared,
    opts: &Options,
    mut tensors: Vec<TensorChoices>,
    target: Target,
) -> Result<Problem> {
    check_target(target)?;
    let pins = pinned(p, opts)?;
    tensors.retain(|t| !pins.contains(&t.job));
    let align = alignment(p);
    let by_file = matches!(target, Target::Bytes(_));
    let cost = |bytes: u64| if by_file { padded(bytes, align) } else { bytes };
    let n_elements = p.n_elements();
    // Everything the budget does not choose: header and metadata (their size does not depend
    // on the types), and the tensors kept as they are.
    let entries: Vec<TensorEntry> = p.entries()?;
    let header = file_size(&p.metadata, &entries)
        - entries.iter().map(|e| padded(e.bytes, align)).sum::<u64>();
    let chosen_jobs: std::collections::HashSet<usize> = tensors.iter().map(|t| t.job).collect();
    let mut fixed = if by_file { header } else { 0 };
    for (i, j) in p.jobs.iter().enumerate() {
        if !chosen_jobs.contains(&i) {
            fixed += cost(j.out_bytes()?);
        }
    }
    let limit = match target {
        Target::Bytes(n) => n,
        Target::Bpw(b) => (b * n_elements as f64 / 8.0).floor() as u64,
    };
    let points: Vec<Vec<(u64, f64)>> = tensors
        .iter()
        .map(|t| {
            t.candidates
                .iter()
                .map(|c| (cost(c.bytes), c.loss))
                .collect()
        })
        .collect();
    let min: u64 = fixed
        + points
            .iter()
            .map(|p| p.iter().map(|x| x.0).min().unwrap_or(0))
            .sum::<u64>();
    if min > limit {
        let smallest = if by_file {
            format!("{min} bytes ({:.2} MiB)", min as f64 / 1048576.0)
        } else {
            format!(
                "{:.4} bits per weight",
                min as f64 * 8.0 / n_elements as f64
            )
        };
        if pins.is_empty() {
            bail!(
                "{}: the budget of {} is smaller than the smallest file kiln can make of this model ({smallest}, every tensor at its smallest type)",
                input.display(),
                target.describe(),
            );
        }
        let pinned_bytes: u64 = pins
            .iter()
            .map(|&i| p.jobs[i].out_bytes().map(cost))
            .sum::<Result<u64>>()?;
        bail!(
            "{}: the budget of {} is smaller than the smallest file kiln can make of this model with its {} pinned tensor(s) at their types ({smallest}: the pinned tensors take {pinned_bytes} bytes, every other tensor at its smallest type)",
            input.display(),
            target.describe(),
            pins.len(),
        );
    }
    Ok(Problem {
        pins,
        tensors,
        fixed,
        limit,
        points,
    })
}

/// Refuses, as [`finish`] would, a budget that even the smallest choice of every tensor the
/// budget chooses does not fit (for checking before a long measurement).
pub fn check_fits(
    input: &Path,
    p: &Prepared,
    opts: &Options,
    tensors: &[TensorChoices],
    target: Target,
) -> Result<()> {
    problem(input, p, opts, tensors.to_vec(), target).map(|_| ())
}

/// Solves the budget on measured candidates and sets every chosen tensor's type in `p`. The
/// jobs [`pinned`] by `opts` keep their type and count against the budget as they are (a
/// measurement that includes them is not used for them).
pub fn finish(
    input: &Path,
    mut p: Prepared,
    opts: &Options,
    tensors: Vec<TensorChoices>,
    target: Target,
) -> Result<(Prepared, BudgetPlan)> {
    let Problem {
        pins,
        tensors,
        fixed,
        limit,
        points,
    } = problem(input, &p, opts, tensors, target)?;
    let by_file = matches!(target, Target::Bytes(_));
    let n_elements = p.n_elements();
    let chosen = solve(fixed, &points, limit)
        .context("internal: the budget problem has no solution although its smallest file fits")?;
    for (t, &k) in tensors.iter().zip(&chosen) {
        let j = &mut p.jobs[t.job];
        j.out_type = TypeId::of(t.candidates[k].ty);
        j.fallback_from = None;
    }
    let ft = file_type_of(&p.jobs);
    p.metadata.set(keys::FILE_TYPE, Value::U32(ft.id()));
    if opts.output.is_none() {
        p.target = default_output(input, target);
    }
    let predicted_loss = tensors
        .iter()
        .zip(&chosen)
        .map(|(t, &k)| t.candidates[k].loss)
        .sum();
    let plan = BudgetPlan {
        target,
        limit,
        pinned: pins,
        chosen,
        predicted_loss,
        file_size: p.file_size()?,
        data_bytes: p.data_bytes()?,
        n_elements,
        tensors,
    };
    let within = if by_file {
        plan.file_size <= limit
    } else {
        plan.data_bytes <= limit
    };
    if !within {
        bail!("internal: the budget plan exceeds its limit");
    }
    Ok((p, plan))
}

/// `<name>-budget-<size>.gguf` beside the input.
pub fn default_output(input: &Path, target: Target) -> std::path::PathBuf {
    let base = quantize::default_output(input, FileType::Q8_0);
    let tag = match target {
        Target::Bpw(b) => format!("budget-{b}bpw"),
        Target::Bytes(n) => format!("budget-{n}B"),
    };
    let name = base
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .replace("-Q8_0.gguf", &format!("-{tag}.gguf"))
        })
        .unwrap_or_else(|| format!("model-{tag}.gguf"));
    base.with_file_name(name)
}

/// The plan as text (what `--dry-run` prints): tensor, type, bytes, predicted loss; totals.
pub fn describe(p: &Prepared, plan: &BudgetPlan) -> Result<String> {
    use std::fmt::Write;
    let mut s = String::new();
    let w = p
        .jobs
        .iter()
        .map(|j| j.name.len())
        .max()
        .unwrap_or(10)
        .max(6);
    writeln!(
        s,
        "{:<w$}  {:>20}  {:<8}  {:>12}  {:>12}  {:>10}  {:>10}",
        "tensor", "shape", "type", "bytes", "pred. loss", "rel. error", "act. noise"
    )?;
    let by_job: std::collections::HashMap<usize, usize> = plan
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.job, i))
        .collect();
    let mut sampled = 0;
    for (ji, j) in p.jobs.iter().enumerate() {
        let (loss, rel, act) = match by_job.get(&ji) {
            Some(&i) => {
                let t = &plan.tensors[i];
                let c = &t.candidates[plan.chosen[i]];
                if t.rows_measured < t.n_rows {
                    sampled += 1;
                }
                (
                    format!("{:.3e}", c.loss),
                    format!("{:.3e}", c.rel_err),
                    format!("{:.3e}", c.act_err),
                )
            }
            None if plan.pinned.contains(&ji) => ("pinned".into(), String::new(), String::new()),
            None => ("kept".into(), String::new(), String::new()),
        };
        writeln!(
            s,
            "{:<w$}  {:>20}  {:<8}  {:>12}  {:>12}  {:>10}  {:>10}",
            j.name,
            quantize::shape_label(&j.dims),
            j.out_type.label(),
            j.out_bytes()?,
            loss,
            rel,
            act
        )?;
    }
    writeln!(
        s,
        "\nbudget {}: {} tensors ({} chosen by the budget, {} pinned, {sampled} measured on sampled rows), file size {} bytes ({:.2} MiB), {:.4} bpw reached, predicted loss {:.4e} -> {}",
        plan.target.describe(),
        p.jobs.len(),
        plan.tensors.len(),
        plan.pinned.len(),
        plan.file_size,
        plan.file_size as f64 / 1048576.0,
        plan.bpw(),
        plan.predicted_loss,
        p.target.display()
    )?;
    Ok(s)
}

// ---- Measured sensitivity (`--calibrate-sensitivity`): the converter's side ----
//
// The runner (`runner::sensitivity`) measures the model's mean KLD with one tensor group
// degraded; these functions say what the groups are, what each is degraded to, what the loss
// model predicts for that degradation, and scale the group's losses by measured / predicted.

/// One tensor group's measured sensitivity.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupFactor {
    /// The group: a tensor's name without `blk.N.` and `.weight` (`attn_q`, `ffn_down`,
    /// `token_embd`, `output`).
    pub group: String,
    /// Tensors in the group.
    pub tensors: usize,
    /// The loss model's prediction for degrading the group: the sum over its tensors of the
    /// loss at the degraded type minus the loss at the reference's type.
    pub predicted: f64,
    /// The measured mean KLD of the model with the group degraded, minus that of the model
    /// with nothing degraded (at least 0).
    pub measured: f64,
    /// The mean KLD's uncertainty (llama-perplexity's).
    pub measured_stderr: f64,
    /// What the group's losses are multiplied by (see [`set_factors`]).
    pub factor: f64,
}

/// A tensor's sensitivity group: its name without `blk.N.` and `.weight`.
pub fn group_of(name: &str) -> String {
    let n = name.strip_suffix(".weight").unwrap_or(name);
    match n.strip_prefix("blk.") {
        Some(r) => r.split_once('.').map_or(r, |(_, t)| t).to_string(),
        None => n.to_string(),
    }
}

/// The groups of the tensors the budget chooses for, in the order of their first tensor:
/// (group, indices into `tensors`).
pub fn sensitivity_groups(tensors: &[TensorChoices]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let g = group_of(&t.name);
        match out.iter_mut().find(|(n, _)| *n == g) {
            Some((_, v)) => v.push(i),
            None => out.push((g, vec![i])),
        }
    }
    out
}

/// The types a group is degraded to for the measurement, in order of preference: about 4.5
/// bits per weight, where budgets make their decisions and the model's response is still
/// near-linear in the noise.
pub const DEGRADE_TYPES: [GgmlType; 4] = [
    GgmlType::Q4_K,
    GgmlType::Q4_0,
    GgmlType::IQ4_NL,
    GgmlType::Q5_0,
];

/// The candidate a tensor is degraded to: the first of [`DEGRADE_TYPES`] it has, else its
/// cheapest candidate.
pub fn degraded_candidate(t: &TensorChoices) -> usize {
    DEGRADE_TYPES
        .iter()
        .find_map(|ty| t.candidates.iter().position(|c| c.ty == *ty))
        .unwrap_or_else(|| {
            (0..t.candidates.len())
                .min_by_key(|&k| (t.candidates[k].bytes, k))
                .unwrap_or(0)
        })
}

/// The type a tensor has in the reference model the degradations are measured against: its
/// input type when that is a float type, else F32.
pub fn reference_type(j: &Job) -> TypeId {
    match j.input_type {
        TypeId::F32 | TypeId::F16 | TypeId::BF16 => j.input_type,
        _ => TypeId::F32,
    }
}

/// The loss model's prediction for degrading tensor `t` from `reference` to its
/// [`degraded_candidate`]: the loss there minus the loss of the candidate of the reference's
/// type (none when the reference's type is not a candidate, as BF16: 0).
pub fn predicted_increase(t: &TensorChoices, reference: TypeId) -> f64 {
    let low = t.candidates[degraded_candidate(t)].loss;
    let high = t
        .candidates
        .iter()
        .find(|c| TypeId::of(c.ty) == reference)
        .map_or(0.0, |c| c.loss);
    low - high
}

/// Sets each group's factor to measured / predicted. A group whose ratio is not a positive
/// finite number (nothing predicted, or nothing measured) gets the median of the others'
/// ratios (the loss model's own scale for it), and every factor is at least 1/100 of that
/// median, so that every factor is finite and positive (1 for all when no group has a ratio).
pub fn set_factors(groups: &mut [GroupFactor]) {
    let ratio = |g: &GroupFactor| {
        let r = g.measured / g.predicted;
        (g.predicted > 0.0 && r.is_finite() && r > 0.0).then_some(r)
    };
    let mut rs: Vec<f64> = groups.iter().filter_map(ratio).collect();
    rs.sort_by(f64::total_cmp);
    let median = match rs.len() {
        0 => 1.0,
        n if n % 2 == 1 => rs[n / 2],
        n => 0.5 * (rs[n / 2 - 1] + rs[n / 2]),
    };
    for g in groups.iter_mut() {
        g.factor = ratio(g).unwrap_or(median).max(median / 100.0);
    }
}

/// Multiplies every candidate's loss of every tensor by its group's factor (tensors of groups
/// not in `factors` keep theirs).
pub fn apply_factors(tensors: &mut [TensorChoices], factors: &[GroupFactor]) {
    for t in tensors.iter_mut() {
        let g = group_of(&t.name);
        if let Some(f) = factors.iter().find(|f| f.group == g) {
            for c in &mut t.candidates {
                c.loss *= f.factor;
            }
        }
    }
}

/// The measurement as a table (what `--calibrate-sensitivity` prints).
pub fn describe_factors(factors: &[GroupFactor]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let w = factors
        .iter()
        .map(|f| f.group.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        s,
        "{:<w$}  {:>7}  {:>12}  {:>24}  {:>10}",
        "group", "tensors", "predicted", "measured KLD", "factor"
    );
    for f in factors {
        let _ = writeln!(
            s,
            "{:<w$}  {:>7}  {:>12.4e}  {:>24}  {:>10.4e}",
            f.group,
            f.tensors,
            f.predicted,
            format!("{:.4e} ± {:.1e}", f.measured, f.measured_stderr),
            f.factor
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("123456").unwrap(), 123456);
        assert_eq!(parse_size("900MB").unwrap(), 900_000_000);
        assert_eq!(parse_size("3.5GiB").unwrap(), 3758096384);
        assert_eq!(parse_size("2 kib").unwrap(), 2048);
        assert!(parse_size("3.5 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("1.2.3MB").is_err());
    }

    #[test]
    fn budget_types_parse_names_and_groups() {
        use GgmlType as T;
        assert_eq!(parse_types("q4_K").unwrap(), vec![T::F32, T::Q4_K]);
        assert_eq!(
            parse_types("IQ2_xs, ternary").unwrap(),
            vec![T::F32, T::IQ2_XS, T::TQ2_0, T::TQ1_0]
        );
        let k = parse_types("k").unwrap();
        assert_eq!(k, vec![T::F32, T::Q6_K, T::Q5_K, T::Q4_K, T::Q3_K, T::Q2_K]);
        let i = parse_types("i").unwrap();
        assert_eq!(i.len(), 1 + 9);
        assert!(i[1..].iter().all(|t| t.name().starts_with("iq")));
        assert_eq!(parse_types("all").unwrap(), CANDIDATES.to_vec());
        let e = |s: &str| format!("{:#}", parse_types(s).unwrap_err());
        assert!(e("q4_K,q9_K").contains("unknown type \"q9_K\""));
        assert!(e("q1_0").contains("not a budget candidate"));
        assert!(e("q4_K,,k").contains("empty item"));
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        // (bytes, loss): (3, 5) is dominated by (2, 4); (4, 2.9) lies above the chord from
        // (2, 4) to (6, 0.5).
        let pts = [(1, 10.0), (2, 4.0), (3, 5.0), (4, 2.9), (6, 0.5)];
        assert_eq!(hull(&pts), vec![0, 1, 4]);
    }

    #[test]
    fn sensitivity_groups_are_names_without_block_and_suffix() {
        assert_eq!(group_of("blk.3.attn_q.weight"), "attn_q");
        assert_eq!(group_of("blk.12.ffn_down_exps.weight"), "ffn_down_exps");
        assert_eq!(group_of("token_embd.weight"), "token_embd");
        assert_eq!(group_of("output.weight"), "output");
    }

    #[test]
    fn factors_are_ratios_with_the_median_for_groups_without_one() {
        let g = |group: &str, predicted: f64, measured: f64| GroupFactor {
            group: group.into(),
            tensors: 1,
            predicted,
            measured,
            measured_stderr: 0.0,
            factor: 0.0,
        };
        let mut v = vec![
            g("a", 1.0, 2.0),
            g("b", 2.0, 8.0),
            g("c", 1.0, 3.0),
            g("d", 0.0, 1.0),
            g("e", 1.0, 0.0),
            g("f", 1.0, 0.001),
        ];
        set_factors(&mut v);
        let f: Vec<f64> = v.iter().map(|x| x.factor).collect();
        // Ratios 2, 4, 3, 0.001: median 2.5; d has none (median), e none (median), f floored.
        assert_eq!(f, vec![2.0, 4.0, 3.0, 2.5, 2.5, 0.025]);
        let mut t = vec![TensorChoices {
            job: 0,
            name: "blk.0.c.weight".into(),
            candidates: vec![Candidate {
                ty: GgmlType::Q8_0,
                bytes: 1,
                rel_err: 0.5,
                act_err: 0.5,
                loss: 1.0,
            }],
            rows_measured: 1,
            n_rows: 1,
            weighted: true,
            role: 1.0,
        }];
        apply_factors(&mut t, &v);
        assert_eq!(t[0].candidates[0].loss, 3.0);
        assert_eq!(t[0].candidates[0].rel_err, 0.5);
    }

    #[test]
    fn solver_respects_the_limit_and_prefers_cheap_gains() {
        let a = vec![(10, 1.0), (20, 0.1)];
        let b = vec![(10, 1.0), (20, 0.9)];
        // Room for one upgrade: a's is worth more.
        assert_eq!(solve(5, &[a.clone(), b.clone()], 35), Some(vec![1, 0]));
        assert_eq!(solve(5, &[a.clone(), b.clone()], 45), Some(vec![1, 1]));
        assert_eq!(solve(5, &[a, b], 24), None);
    }
}
