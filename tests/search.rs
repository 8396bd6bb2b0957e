//! `--search thorough`: the same block formats as ggml's with a lower weighted error. ggml is
//! the oracle: ggml quantizes the same input, ggml's dequantizer reads both outputs, and every
//! block of kiln's thorough output must have a weighted error no larger than ggml's block (the
//! importance weights when given, else the weights ggml's own search uses for the format), the
//! total strictly lower on realistic data; llama.cpp accepts the blocks, loads a thorough
//! Q4_K_M file and generates from it; the budget solver measures with the thorough kernels.

use crate::common::reference_and_dequantized;
use crate::convert_vs_llama::{fixture_imatrix, llama_f32, tmp, write_gguf_imatrix};
use kiln::gguf::GgufFile;
use kiln::kernels::refine::{metric_weights, supports};
use kiln::kernels::{GgmlType, Search};
use kiln::plan::FileType;
use kiln::quantize::{self, Options};
use kiln_fixtures::ggml;
use kiln_fixtures::synth::{importance, synthetic_weights, Case, SplitMix64};
use std::path::{Path, PathBuf};

fn covered() -> Vec<GgmlType> {
    GgmlType::ALL.into_iter().filter(|t| supports(*t)).collect()
}

fn thorough(ty: GgmlType, x: &[f32], cols: usize, qw: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / cols * ty.row_bytes(cols).unwrap()];
    ty.quantize_with(Search::Thorough, x, cols, qw, &mut out)
        .unwrap_or_else(|e| panic!("{ty}: thorough search refused valid input: {e}"));
    out
}

/// Per-block weighted errors of `q` (dequantized by ggml) against `x`.
fn block_errors(ty: GgmlType, x: &[f32], cols: usize, qw: Option<&[f32]>, q: &[u8]) -> Vec<f64> {
    let y = ggml::dequantize(ty, q);
    assert_eq!(y.len(), x.len());
    let bw = ty.block_weights();
    let mut w = vec![0.0f32; bw];
    x.chunks_exact(bw)
        .zip(y.chunks_exact(bw))
        .enumerate()
        .map(|(k, (xb, yb))| {
            let c = (k * bw) % cols;
            assert!(metric_weights(ty, xb, qw.map(|q| &q[c..c + bw]), &mut w));
            xb.iter()
                .zip(yb)
                .zip(&w)
                .map(|((&a, &b), &wi)| wi as f64 * (a as f64 - b as f64).powi(2))
                .sum()
        })
        .collect()
}

/// Heavy-tailed weights like a real layer's: a Student-t-like spread (Gaussian over a random
/// scale), per-column gains, and rare large outliers.
fn heavy_tailed(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let gain: Vec<f32> = (0..cols).map(|_| 0.5 + rng.uniform()).collect();
    (0..rows * cols)
        .map(|i| {
            let t = rng.gaussian() / (0.25 + rng.uniform()).sqrt();
            let v = 0.02 * t * gain[i % cols];
            if i % 1009 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn thorough_blocks_are_never_worse_than_ggmls_on_hard_inputs() {
    let (rows, cols) = (4, 512);
    for ty in covered() {
        let mut cases: Vec<(String, Vec<f32>)> = Case::ALL
            .iter()
            .map(|c| (format!("{c:?}"), c.generate(rows, cols, 11)))
            .collect();
        cases.push(("heavy-tailed".into(), heavy_tailed(rows, cols, 5)));
        let qw = importance(cols, 3, true);
        for (name, x) in &cases {
            for im in [None, Some(&qw[..])] {
                let what = format!("{ty} {name} imatrix={}", im.is_some());
                let reference = ggml::quantize(ty, x, cols, im);
                let ours = thorough(ty, x, cols, im);
                assert_eq!(ours.len(), reference.len(), "{what}");
                assert!(
                    ggml::validate_row_data(ty, &ours),
                    "{what}: ggml rejects the blocks"
                );
                let e_ref = block_errors(ty, x, cols, im, &reference);
                let e_ours = block_errors(ty, x, cols, im, &ours);
                for (k, (a, b)) in e_ours.iter().zip(&e_ref).enumerate() {
                    assert!(a <= b, "{what}: block {k} error {a} > ggml's {b}");
                }
            }
        }
    }
}

#[test]
fn thorough_search_lowers_the_total_weighted_error_on_realistic_data() {
    let (rows, cols) = (32, 2048);
    let data = [
        ("heavy-tailed", heavy_tailed(rows, cols, 21)),
        ("gaussian+outliers", synthetic_weights(rows, cols, 22)),
    ];
    let qw = importance(cols, 9, false);
    eprintln!("weighted RMSE, thorough / ggml ({rows} x {cols}, dequantized by ggml):");
    eprintln!(
        "{:<18} {:>6} {:>10} {:>10}",
        "data", "type", "no imatrix", "imatrix"
    );
    for (name, x) in &data {
        for ty in covered() {
            let mut ratios = Vec::new();
            for im in [None, Some(&qw[..])] {
                let e_ref: f64 = block_errors(ty, x, cols, im, &ggml::quantize(ty, x, cols, im))
                    .iter()
                    .sum();
                let e_ours: f64 = block_errors(ty, x, cols, im, &thorough(ty, x, cols, im))
                    .iter()
                    .sum();
                assert!(
                    e_ours < e_ref,
                    "{ty} {name} imatrix={}: total {e_ours} not below ggml's {e_ref}",
                    im.is_some()
                );
                ratios.push((e_ours / e_ref).sqrt());
            }
            eprintln!(
                "{name:<18} {:>6} {:>10.4} {:>10.4}",
                ty.name(),
                ratios[0],
                ratios[1]
            );
        }
    }
}

#[test]
fn thorough_output_does_not_depend_on_the_thread_count() {
    let (rows, cols) = (8, 1024);
    let x = heavy_tailed(rows, cols, 77);
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q4_0] {
        let a = thorough(ty, &x, cols, None);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| thorough(ty, &x, cols, None));
        assert_eq!(a, b, "{ty}");
    }
}

#[test]
fn ggml_search_is_ggmls_bytes_and_uncovered_formats_stay_ggmls() {
    let (rows, cols) = (4, 512);
    let x = heavy_tailed(rows, cols, 3);
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q5_0,
        GgmlType::IQ4_NL,
        GgmlType::Q4_1,
    ] {
        let mut out = vec![0u8; rows * ty.row_bytes(cols).unwrap()];
        ty.quantize_with(Search::Ggml, &x, cols, None, &mut out)
            .unwrap();
        assert_eq!(out, ggml::quantize(ty, &x, cols, None), "{ty}");
        if !supports(ty) {
            assert_eq!(thorough(ty, &x, cols, None), out, "{ty}");
        }
    }
}

/// A Q4_K_M conversion of the Llama fixture with the fixture's importance matrix (the token
/// embedding and the output projection kept at F16, so that the test spends its time on the
/// block tensors, which are Q4_K_M's mix of q4_K and q6_K).
fn q4_k_m(search: Search, name: &str) -> PathBuf {
    let im = tmp().join("search-imatrix.gguf");
    if !im.exists() {
        write_gguf_imatrix(&im, &fixture_imatrix(), 8.0);
    }
    let out = tmp().join(name);
    let mut o = Options::new(FileType::Q4_K_M);
    o.output = Some(out.clone());
    o.force = true;
    o.imatrix = Some(im);
    o.token_embedding_type = Some(GgmlType::F16);
    o.output_tensor_type = Some(GgmlType::F16);
    o.search = search;
    quantize::execute(&quantize::prepare(llama_f32(), &o).unwrap(), true, false).unwrap();
    out
}

/// Importance-weighted squared error of every quantized tensor of `file` (dequantized by ggml)
/// against the f32 reference, summed.
fn file_error(file: &Path) -> f64 {
    let reference = GgufFile::open(llama_f32()).unwrap();
    let g = GgufFile::open(file).unwrap();
    let im: std::collections::HashMap<String, Vec<f32>> = fixture_imatrix().into_iter().collect();
    let mut total = 0.0;
    for t in g.tensors() {
        let ty = t.ty.kiln().unwrap();
        if !ty.is_quantized() {
            continue;
        }
        let (x, y) = reference_and_dequantized(&reference, &g, t, ty);
        let n = t.dims[0] as usize;
        let w = im.get(&t.name);
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            let wi = w.map_or(1.0, |w| w[i % n] as f64);
            total += wi * (*a as f64 - *b as f64).powi(2);
        }
    }
    total
}

#[test]
fn thorough_q4_k_m_file_loads_in_llama_cpp_generates_and_has_less_error() {
    let ggml_file = q4_k_m(Search::Ggml, "search-ggml-Q4_K_M.gguf");
    let thorough_file = q4_k_m(Search::Thorough, "search-thorough-Q4_K_M.gguf");
    // Same tensors, types and sizes (the same formats), other bytes, no new metadata.
    let (a, b) = (
        GgufFile::open(&ggml_file).unwrap(),
        GgufFile::open(&thorough_file).unwrap(),
    );
    let shape = |g: &GgufFile| -> Vec<(String, Vec<u64>, u32)> {
        g.tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.ty.0))
            .collect()
    };
    assert_eq!(shape(&a), shape(&b));
    assert_eq!(
        std::fs::metadata(&ggml_file).unwrap().len(),
        std::fs::metadata(&thorough_file).unwrap().len()
    );
    let changed: Vec<GgmlType> = a
        .tensors()
        .iter()
        .zip(b.tensors())
        .filter(|(x, y)| a.data(x) != b.data(y))
        .filter_map(|(x, _)| x.ty.kiln())
        .collect();
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        assert!(changed.contains(&ty), "no {ty} tensor changed: {changed:?}");
    }
    let (e_ggml, e_thorough) = (file_error(&ggml_file), file_error(&thorough_file));
    eprintln!("Q4_K_M weighted squared error: ggml {e_ggml:.6e}, thorough {e_thorough:.6e}");
    assert!(e_thorough < e_ggml);
    let model = kiln::llama::load(&thorough_file).unwrap();
    let prompt = kiln::llama::tokenize(&model, "The quick brown fox", true);
    let generated = kiln::llama::generate(&model, &prompt, 8).unwrap();
    assert_eq!(generated.len(), 8);
    let logits = kiln::llama::logits(&model, &prompt).unwrap();
    assert!(logits.iter().flatten().all(|x| x.is_finite()));
    for f in [ggml_file, thorough_file] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn budget_solver_measures_with_the_thorough_kernels() {
    let im = tmp().join("search-budget-imatrix.gguf");
    write_gguf_imatrix(&im, &fixture_imatrix(), 8.0);
    let measure = |search: Search| {
        let mut o = Options::new(FileType::Q8_0);
        o.imatrix = Some(im.clone());
        o.search = search;
        let p = kiln::budget::start(llama_f32(), &o).unwrap();
        assert_eq!(p.search, search);
        let m = kiln::budget::MeasureOptions {
            sample_weights: 1 << 15,
            ..Default::default()
        };
        kiln::budget::measure(&p, &m).unwrap()
    };
    let (g, t) = (measure(Search::Ggml), measure(Search::Thorough));
    assert_eq!(g.len(), t.len());
    let (mut sum_g, mut sum_t) = (0.0, 0.0);
    for (a, b) in g.iter().zip(&t) {
        for (ca, cb) in a.candidates.iter().zip(&b.candidates) {
            assert_eq!(ca.ty, cb.ty);
            if !supports(ca.ty) {
                assert_eq!(ca.rel_err, cb.rel_err, "{} {}", a.name, ca.ty);
            } else if a.weighted && ca.ty.uses_imatrix() {
                // The budget's error weights are the importance weights the thorough search
                // minimises, so it can only be lower (up to the order of summation).
                assert!(
                    cb.rel_err <= ca.rel_err * (1.0 + 1e-9),
                    "{} {}: thorough {} > ggml {}",
                    a.name,
                    ca.ty,
                    cb.rel_err,
                    ca.rel_err
                );
                sum_g += ca.rel_err;
                sum_t += cb.rel_err;
            }
        }
    }
    assert!(sum_t < sum_g, "{sum_t} vs {sum_g}");
}

#[test]
fn cli_search_ggml_is_the_default_and_an_unknown_search_is_refused() {
    let kiln = |extra: &[&str], out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["quantize", "--type", "q4_0", "--pure", "--force", "-o"])
            .arg(out)
            .args(extra)
            .arg(llama_f32())
            .output()
            .unwrap()
    };
    let (a, b) = (
        tmp().join("search-default.gguf"),
        tmp().join("search-ggml.gguf"),
    );
    assert!(kiln(&[], &a).status.success());
    assert!(kiln(&["--search", "ggml"], &b).status.success());
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let bad = tmp().join("search-bad.gguf");
    let o = kiln(&["--search", "exhaustive"], &bad);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--search exhaustive"), "{err}");
    assert!(!bad.exists());
    for f in [a, b] {
        let _ = std::fs::remove_file(f);
    }
}
