//! Budget mixes with pins (`--tensor-type`, `--token-embedding-type`, ... with `--target-bpw` /
//! `--target-size`) and with `--calibrate-sensitivity`: pinned tensors keep the plan's type
//! (fallbacks included) and count against the budget; a budget the pins do not leave room for is
//! refused without output; the measured sensitivity factors are finite and positive, the
//! calibrated plan is the solver's answer on the losses scaled by them, the file fits and
//! llama.cpp runs it; a missing or short sensitivity text is refused without output.

use crate::convert_vs_llama::{fixture_imatrix, llama_f32, tmp, write_gguf_imatrix};
use kiln::budget::{self, MeasureOptions, Target};
use kiln::gguf::{GgufFile, TypeId};
use kiln::overrides::TensorTypeRule;
use kiln::plan::FileType;
use kiln::quantize::Options;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn imatrix() -> &'static Path {
    static M: OnceLock<PathBuf> = OnceLock::new();
    M.get_or_init(|| {
        let p = tmp().join("budget-pins-imatrix.gguf");
        write_gguf_imatrix(&p, &fixture_imatrix(), 8.0);
        p
    })
}

fn options(out: Option<PathBuf>) -> Options {
    let mut o = Options::new(FileType::Q8_0);
    o.output = out;
    o.force = true;
    o.imatrix = Some(imatrix().to_path_buf());
    o
}

/// A fresh folder of its own under the tests' temporary folder.
fn dir(name: &str) -> PathBuf {
    let d = tmp().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// No hidden sensitivity folder left in `d`.
fn assert_no_temporaries(d: &Path) {
    for e in std::fs::read_dir(d).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.starts_with(".kiln-sensitivity-"),
            "{n} left behind in {}",
            d.display()
        );
    }
}

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

/// The sensitivity text: the bundled evaluation text (about 4000 tokens of the fixture's
/// SentencePiece vocabulary).
fn text() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let p = tmp().join("budget-sensitivity-text.txt");
        std::fs::write(&p, kiln::runner::eval::default_text()).unwrap();
        p
    })
}

fn pinned_options(out: Option<PathBuf>) -> Options {
    let mut o = options(out);
    // ffn_down's rows are 640 wide: q4_K falls back to q5_0, as llama.cpp's plan does.
    o.tensor_types = vec![
        TensorTypeRule::parse("attn_v=q8_0").unwrap(),
        TensorTypeRule::parse("blk\\.0\\.ffn_down=q4_K").unwrap(),
    ];
    o.token_embedding_type = Some(kiln_kernels::GgmlType::Q6_K);
    o
}

#[test]
fn pinned_tensors_keep_their_types_and_count_against_the_budget() {
    let out = tmp().join("budget-pinned.gguf");
    let o = pinned_options(Some(out.clone()));
    let target = Target::Bpw(5.0);
    let (p, plan) = budget::prepare(llama_f32(), &o, target, &MeasureOptions::default()).unwrap();
    let names: Vec<&str> = plan
        .pinned
        .iter()
        .map(|&i| p.jobs[i].name.as_str())
        .collect();
    let n_attn_v = p.jobs.iter().filter(|j| j.name.contains("attn_v")).count();
    assert!(n_attn_v >= 2);
    assert_eq!(names.len(), n_attn_v + 2, "{names:?}");
    assert!(names.contains(&"token_embd.weight"));
    assert!(names.contains(&"blk.0.ffn_down.weight"));
    for &i in &plan.pinned {
        let j = &p.jobs[i];
        let want = if j.name == "token_embd.weight" {
            TypeId::Q6_K
        } else if j.name.contains("attn_v") {
            TypeId::Q8_0
        } else {
            assert_eq!(j.n_per_row(), 640, "{}", j.name);
            TypeId::Q5_0
        };
        assert_eq!(j.out_type, want, "{}", j.name);
        assert!(
            plan.tensors.iter().all(|t| t.job != i),
            "{} pinned and chosen",
            j.name
        );
    }
    // Every other quantizable tensor is the solver's.
    let quantizable = p
        .jobs
        .iter()
        .filter(|j| kiln::plan::allows_quantization(&j.name, &j.dims, &Default::default()))
        .count();
    assert_eq!(plan.tensors.len() + plan.pinned.len(), quantizable);
    // The pins' bytes count: the solver's choices fill what they leave, and the file fits.
    let pinned_bytes: u64 = plan
        .pinned
        .iter()
        .map(|&i| p.jobs[i].out_bytes().unwrap())
        .sum();
    let chosen_bytes: u64 = plan
        .tensors
        .iter()
        .zip(&plan.chosen)
        .map(|(t, &k)| t.candidates[k].bytes)
        .sum();
    let kept: u64 = p
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| !plan.pinned.contains(i) && plan.tensors.iter().all(|t| t.job != *i))
        .map(|(_, j)| j.out_bytes().unwrap())
        .sum();
    assert_eq!(pinned_bytes + chosen_bytes + kept, plan.data_bytes);
    assert!(plan.bpw() <= 5.0 && plan.bpw() > 4.5, "{}", plan.bpw());
    // The same choice as the solver on the unpinned tensors with the pins' bytes fixed.
    let points: Vec<Vec<(u64, f64)>> = plan
        .tensors
        .iter()
        .map(|t| t.candidates.iter().map(|c| (c.bytes, c.loss)).collect())
        .collect();
    assert_eq!(
        budget::solve(pinned_bytes + kept, &points, plan.limit).unwrap(),
        plan.chosen
    );
    let types: Vec<(String, TypeId)> = p
        .jobs
        .iter()
        .map(|j| (j.name.clone(), j.out_type))
        .collect();
    let s = kiln::quantize::execute(&p, true, false).unwrap();
    assert_eq!(s.file_size, plan.file_size);
    let g = GgufFile::open(&out).unwrap();
    let written: Vec<(String, TypeId)> =
        g.tensors().iter().map(|t| (t.name.clone(), t.ty)).collect();
    assert_eq!(written, types);
    let model = kiln::llama::load(&out).unwrap();
    let prompt = kiln::llama::tokenize(&model, "The quick brown fox", true);
    assert_eq!(kiln::llama::generate(&model, &prompt, 4).unwrap().len(), 4);
}

#[test]
fn dry_run_marks_pinned_rows_and_small_budgets_name_the_pins() {
    let out = tmp().join("budget-pins-cli.gguf");
    let _ = std::fs::remove_file(&out);
    let r = kiln()
        .args([
            "quantize",
            "--target-bpw",
            "5",
            "--dry-run",
            "--tensor-type",
            "attn_v=q8_0",
        ])
        .args(["--token-embedding-type", "q6_K", "--imatrix"])
        .arg(imatrix())
        .arg(llama_f32())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for line in stdout.lines() {
        let pinned = line.starts_with("token_embd.weight") || line.contains("attn_v.weight");
        if line.ends_with(".weight") || line.contains(".weight ") {
            assert_eq!(line.contains("pinned"), pinned, "{line}");
        }
        if line.starts_with("token_embd.weight") {
            assert!(line.contains("q6_K"), "{line}");
        }
    }
    assert!(stdout.contains(" pinned, "), "{stdout}");
    assert!(!out.exists());
    // The smallest file without pins is far below 3 bpw; with the embedding pinned at f32 it
    // is not.
    let r = kiln()
        .args(["quantize", "--target-bpw", "3", "--imatrix"])
        .arg(imatrix())
        .arg(llama_f32())
        .args(["-o"])
        .arg(&out)
        .args(["--force", "--dry-run"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = kiln()
        .args([
            "quantize",
            "--target-bpw",
            "3",
            "--token-embedding-type",
            "f32",
            "--imatrix",
        ])
        .arg(imatrix())
        .arg(llama_f32())
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains("smaller than the smallest file") && stderr.contains("1 pinned tensor(s)"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// The sensitivity measurement on the fixture (the library's path; 4 chunks of 128 tokens, as
/// the command-line test asks for), its uncalibrated measurement, and the calibrated plan at
/// 4.5 bpw.
struct Calibrated {
    factors: Vec<budget::GroupFactor>,
    uncalibrated: Vec<budget::TensorChoices>,
    types: Vec<(String, TypeId)>,
    plan: budget::BudgetPlan,
}

fn calibrated() -> &'static Calibrated {
    static C: OnceLock<Calibrated> = OnceLock::new();
    C.get_or_init(|| {
        let o = options(None);
        let p = budget::start(llama_f32(), &o).unwrap();
        let m = budget::measure(&p, &MeasureOptions::default()).unwrap();
        let mut so = kiln::runner::sensitivity::SensitivityOptions::new(text().to_path_buf());
        so.n_ctx = 128;
        so.max_chunks = 4;
        let factors = kiln::runner::sensitivity::measure(
            llama_f32(),
            &p,
            &m,
            &dir("budget-sens-lib"),
            &so,
            &mut |_| {},
        )
        .unwrap();
        let mut scaled = m.clone();
        budget::apply_factors(&mut scaled, &factors);
        let (p, plan) = budget::finish(llama_f32(), p, &o, scaled, Target::Bpw(4.5)).unwrap();
        let types = p
            .jobs
            .iter()
            .map(|j| (j.name.clone(), j.out_type))
            .collect();
        Calibrated {
            factors,
            uncalibrated: m,
            types,
            plan,
        }
    })
}

#[test]
fn sensitivity_factors_are_finite_positive_and_cover_every_group() {
    let c = calibrated();
    let groups: Vec<&str> = c.factors.iter().map(|f| f.group.as_str()).collect();
    for g in [
        "token_embd",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ] {
        assert!(groups.contains(&g), "{g} missing from {groups:?}");
    }
    let n: usize = c.factors.iter().map(|f| f.tensors).sum();
    assert_eq!(n, c.uncalibrated.len());
    for f in &c.factors {
        assert!(f.factor.is_finite() && f.factor > 0.0, "{f:?}");
        assert!(f.predicted > 0.0 && f.predicted.is_finite(), "{f:?}");
        assert!(f.measured.is_finite() && f.measured >= 0.0, "{f:?}");
    }
    // Degrading the whole token embedding (the largest matrix) to 4.5 bits is measurable.
    let e = c.factors.iter().find(|f| f.group == "token_embd").unwrap();
    assert!(e.measured > 0.0, "{e:?}");
}

#[test]
fn calibrated_plan_is_the_solver_on_scaled_losses() {
    let c = calibrated();
    // Each tensor's losses are its uncalibrated ones times its group's factor.
    for t in &c.plan.tensors {
        let u = c.uncalibrated.iter().find(|u| u.name == t.name).unwrap();
        let f = c
            .factors
            .iter()
            .find(|f| f.group == budget::group_of(&t.name))
            .unwrap()
            .factor;
        for (a, b) in t.candidates.iter().zip(&u.candidates) {
            assert_eq!(a.ty, b.ty);
            assert_eq!(a.loss, b.loss * f, "{} {}", t.name, a.ty);
            assert_eq!((a.rel_err, a.bytes), (b.rel_err, b.bytes));
        }
    }
    let points: Vec<Vec<(u64, f64)>> = c
        .plan
        .tensors
        .iter()
        .map(|t| t.candidates.iter().map(|c| (c.bytes, c.loss)).collect())
        .collect();
    let fixed = c.plan.data_bytes
        - c.plan
            .tensors
            .iter()
            .zip(&c.plan.chosen)
            .map(|(t, &k)| t.candidates[k].bytes)
            .sum::<u64>();
    assert_eq!(
        budget::solve(fixed, &points, c.plan.limit).unwrap(),
        c.plan.chosen
    );
}

#[test]
fn calibrate_sensitivity_on_the_command_line_writes_the_calibrated_plan() {
    let c = calibrated();
    let d = dir("budget-sens-cli");
    let out = d.join("budget-sensitivity.gguf");
    let r = kiln()
        .args([
            "quantize",
            "--target-bpw",
            "4.5",
            "--calibrate-sensitivity",
            "--sensitivity-ctx",
            "128",
            "--sensitivity-chunks",
            "4",
            "--sensitivity-text",
        ])
        .arg(text())
        .arg("--imatrix")
        .arg(imatrix())
        .arg(llama_f32())
        .arg("-o")
        .arg(&out)
        .arg("--force")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // The table: group, tensors, predicted, measured, factor.
    for f in &c.factors {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(f.group.as_str()))
            .unwrap_or_else(|| panic!("no row for {} in {stdout}", f.group));
        assert!(
            line.contains(&format!("{:.4e}", f.factor)),
            "{line} vs {f:?}"
        );
    }
    // The same measurement in another process gives the same plan, and the file fits.
    let g = GgufFile::open(&out).unwrap();
    let written: Vec<(String, TypeId)> =
        g.tensors().iter().map(|t| (t.name.clone(), t.ty)).collect();
    assert_eq!(written, c.types);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), c.plan.file_size);
    assert!(c.plan.bpw() <= 4.5);
    let model = kiln::llama::load(&out).unwrap();
    let prompt = kiln::llama::tokenize(&model, "The quick brown fox", true);
    assert_eq!(kiln::llama::generate(&model, &prompt, 4).unwrap().len(), 4);
    // No temporary folder is left beside the output.
    assert_no_temporaries(&d);
}

#[test]
fn calibrate_sensitivity_refuses_a_missing_empty_or_short_text_without_output() {
    let d = dir("budget-sens-refused");
    let out = d.join("budget-sensitivity-refused.gguf");
    let _ = std::fs::remove_file(&out);
    let empty = tmp().join("budget-sensitivity-empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    let short = tmp().join("budget-sensitivity-short.txt");
    std::fs::write(&short, "A few words are not two chunks of 512 tokens.").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for (args, expect) in [
        (
            vec![
                "--target-bpw".into(),
                "4.5".into(),
                "--calibrate-sensitivity".into(),
            ],
            "needs a text".to_string(),
        ),
        (
            vec![
                "--type".into(),
                "q4_0".into(),
                "--calibrate-sensitivity".into(),
                "--sensitivity-text".into(),
                s(text()),
            ],
            "use it with --target-bpw".into(),
        ),
        (
            vec![
                "--target-bpw".into(),
                "4.5".into(),
                "--calibrate-sensitivity".into(),
                "--sensitivity-text".into(),
                s(&empty),
            ],
            "the text is empty".into(),
        ),
        (
            vec![
                "--target-bpw".into(),
                "4.5".into(),
                "--calibrate-sensitivity".into(),
                "--sensitivity-text".into(),
                s(&short),
            ],
            "needs at least 1024".into(),
        ),
    ] {
        let r = kiln()
            .arg("quantize")
            .args(&args)
            .arg("--imatrix")
            .arg(imatrix())
            .arg(llama_f32())
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(&expect), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} left a file");
    }
    assert_no_temporaries(&d);
}
