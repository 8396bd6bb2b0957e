//! `kiln quantize --target-bpw` / `--target-size`: the budget mix fits, its bytes are the plan's,
//! more budget never predicts more loss, it beats llama.cpp's fixed mix of the same size on the
//! error measured in the written files (dequantized by ggml), it is deterministic, llama.cpp
//! loads and runs it, and bad budgets are refused before any output.

use crate::common::reference_and_dequantized;
use crate::convert_vs_llama::{fixture_imatrix, llama_f32, tmp, write_gguf_imatrix};
use kiln::budget::{self, MeasureOptions, Target};
use kiln::gguf::GgufFile;
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The fixture's importance matrix as a GGUF imatrix file, and its entries.
fn imatrix() -> &'static (PathBuf, HashMap<String, Vec<f32>>) {
    static M: OnceLock<(PathBuf, HashMap<String, Vec<f32>>)> = OnceLock::new();
    M.get_or_init(|| {
        let entries = fixture_imatrix();
        let p = tmp().join("budget-imatrix.gguf");
        write_gguf_imatrix(&p, &entries, 8.0);
        (p, entries.into_iter().collect())
    })
}

/// llama.cpp's Q3_K_M mix of the fixture with the importance matrix (kiln's file is
/// byte-identical to llama-quantize's): the fixed mix the budget competes with.
fn fixed_q3_k_m() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let out = tmp().join("budget-fixed-Q3_K_M.gguf");
        let mut o = Options::new(FileType::Q3_K_M);
        o.output = Some(out.clone());
        o.force = true;
        o.imatrix = Some(imatrix().0.clone());
        quantize::execute(&quantize::prepare(llama_f32(), &o).unwrap(), true, false).unwrap();
        out
    })
}

fn budget_options(out: Option<PathBuf>) -> Options {
    let mut o = Options::new(FileType::Q8_0);
    o.output = out;
    o.force = true;
    o.imatrix = Some(imatrix().0.clone());
    o
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// A written budget file, its plan, and the planned type of every tensor.
type BudgetFile = (
    PathBuf,
    budget::BudgetPlan,
    Vec<(String, kiln::gguf::TypeId)>,
);

/// The budget file at the fixed Q3_K_M file's size, with its plan.
fn budget_file() -> &'static (
    PathBuf,
    budget::BudgetPlan,
    Vec<(String, kiln::gguf::TypeId)>,
) {
    static F: OnceLock<BudgetFile> = OnceLock::new();
    F.get_or_init(|| {
        let out = tmp().join("budget-kiln.gguf");
        let o = budget_options(Some(out.clone()));
        let target = Target::Bytes(size(fixed_q3_k_m()));
        let (p, plan) =
            budget::prepare(llama_f32(), &o, target, &MeasureOptions::default()).unwrap();
        let types = p
            .jobs
            .iter()
            .map(|j| (j.name.clone(), j.out_type))
            .collect();
        quantize::execute(&p, true, false).unwrap();
        (out, plan, types)
    })
}

#[test]
fn budget_file_fits_and_has_the_planned_bytes_and_types() {
    let (out, plan, types) = budget_file();
    let budget = size(fixed_q3_k_m());
    assert!(size(out) <= budget, "{} > budget {budget}", size(out));
    assert_eq!(size(out), plan.file_size, "measured bytes vs the plan's");
    let g = GgufFile::open(out).unwrap();
    let written: Vec<(String, kiln::gguf::TypeId)> =
        g.tensors().iter().map(|t| (t.name.clone(), t.ty)).collect();
    assert_eq!(&written, types);
    // A mix, not one type: the solver spent the budget unevenly.
    let mut kinds: Vec<_> = plan
        .tensors
        .iter()
        .zip(&plan.chosen)
        .map(|(t, &k)| t.candidates[k].ty)
        .collect();
    kinds.sort_by_key(|t| *t as u32);
    kinds.dedup();
    assert!(kinds.len() >= 2, "one type only: {kinds:?}");
}

#[test]
fn llama_cpp_loads_and_generates_from_the_budget_file() {
    let (out, _, _) = budget_file();
    let model = kiln::llama::load(out).unwrap();
    let prompt = kiln::llama::tokenize(&model, "The quick brown fox", true);
    let generated = kiln::llama::generate(&model, &prompt, 8).unwrap();
    assert_eq!(generated.len(), 8);
    let logits = kiln::llama::logits(&model, &prompt).unwrap();
    assert!(logits.iter().flatten().all(|x| x.is_finite()));
}

/// The importance-weighted relative squared error of every quantized tensor of `file` against
/// the f32 reference, dequantized by ggml (the oracle), summed with the tied embedding counted
/// twice: the quantity the budget minimises, measured in the written file.
fn measured_loss(file: &Path) -> f64 {
    let reference = GgufFile::open(llama_f32()).unwrap();
    let g = GgufFile::open(file).unwrap();
    let tied = !g.tensors().iter().any(|t| t.name == "output.weight");
    let im = &imatrix().1;
    let mut total = 0.0;
    for t in g.tensors() {
        let ty = t.ty.kiln().unwrap();
        if !ty.is_quantized() && t.dims.len() < 2 {
            continue;
        }
        let (x, y) = reference_and_dequantized(&reference, &g, t, ty);
        assert_eq!(x.len(), y.len(), "{}", t.name);
        let n = t.dims[0] as usize;
        let w = im.get(&t.name);
        let (mut err, mut energy) = (0.0f64, 0.0f64);
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let wi = w.map_or(1.0, |w| w[i % n] as f64);
            err += wi * (*a as f64 - *b as f64).powi(2);
            energy += wi * (*a as f64).powi(2);
        }
        let role = if tied && t.name == "token_embd.weight" {
            2.0
        } else {
            1.0
        };
        total += role * err / energy.max(f64::MIN_POSITIVE);
    }
    total
}

#[test]
fn budget_mix_beats_the_fixed_mix_of_the_same_size_on_measured_error() {
    let (out, plan, _) = budget_file();
    let ours = measured_loss(out);
    let fixed = measured_loss(fixed_q3_k_m());
    assert!(
        ours < fixed,
        "budget mix {ours:.4e} vs llama.cpp's Q3_K_M {fixed:.4e}"
    );
    // The prediction of the weights' error is the measurement, up to the sampling of large
    // tensors.
    let predicted = plan.predicted_weight_loss();
    assert!(
        (predicted - ours).abs() <= 0.05 * ours,
        "predicted {predicted:.4e}, measured {ours:.4e}"
    );
}

#[test]
fn larger_budgets_never_predict_more_loss_and_plans_are_deterministic() {
    let mut o = budget_options(None);
    o.ftype = FileType::Q8_0;
    o.pure = true;
    let p = quantize::prepare(llama_f32(), &o).unwrap();
    let m = budget::measure(&p, &MeasureOptions::default()).unwrap();
    let points: Vec<Vec<(u64, f64)>> = m
        .iter()
        .map(|t| t.candidates.iter().map(|c| (c.bytes, c.loss)).collect())
        .collect();
    let min: u64 = points
        .iter()
        .map(|p| p.iter().map(|x| x.0).min().unwrap())
        .sum();
    let max: u64 = points
        .iter()
        .map(|p| p.iter().map(|x| x.0).max().unwrap())
        .sum();
    assert!(budget::solve(0, &points, min - 1).is_none());
    let mut last = f64::INFINITY;
    let steps = 200;
    for s in 0..=steps {
        let limit = min + (max - min) * s / steps;
        let chosen = budget::solve(0, &points, limit).unwrap();
        let bytes: u64 = chosen.iter().zip(&points).map(|(&k, p)| p[k].0).sum();
        assert!(bytes <= limit);
        let loss: f64 = chosen.iter().zip(&points).map(|(&k, p)| p[k].1).sum();
        assert!(
            loss <= last * (1.0 + 1e-12),
            "budget {limit}: loss {loss} > {last} at a smaller budget"
        );
        last = loss;
        assert_eq!(budget::solve(0, &points, limit).unwrap(), chosen);
    }
    // The measurement itself is deterministic, and so the whole plan.
    let m2 = budget::measure(&p, &MeasureOptions::default()).unwrap();
    for (a, b) in m.iter().zip(&m2) {
        assert_eq!(a.candidates, b.candidates, "{}", a.name);
    }
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let out = tmp().join("budget-dry-run.gguf");
    let _ = std::fs::remove_file(&out);
    let r = kiln()
        .args(["quantize", "--target-bpw", "5", "--dry-run", "--imatrix"])
        .arg(&imatrix().0)
        .arg(llama_f32())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("pred. loss") && stdout.contains("predicted loss"));
    assert!(stdout.contains("blk.0.ffn_down.weight"));
    assert!(!out.exists());
    let bpw: f64 = stdout
        .split(" bpw reached")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no bpw in {stdout}"));
    assert!(bpw <= 5.0 && bpw > 4.0, "bpw {bpw}");
}

#[test]
fn budgets_that_cannot_be_met_or_parsed_are_refused_without_output() {
    let out = tmp().join("budget-refused.gguf");
    let _ = std::fs::remove_file(&out);
    for (args, expect) in [
        (
            vec!["--target-size", "1000"],
            "smaller than the smallest file",
        ),
        (
            vec!["--target-bpw", "0.5"],
            "smaller than the smallest file",
        ),
        (vec!["--target-size", "3.5 parsecs"], "unknown unit"),
        (vec!["--target-size", "lots"], "not a size"),
        (vec!["--target-bpw=-2"], "not a positive number"),
        (
            vec!["--target-bpw", "4", "--type", "q4_0"],
            "cannot be used with",
        ),
    ] {
        let r = kiln()
            .arg("quantize")
            .args(&args)
            .arg(llama_f32())
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} left a file");
    }
}
