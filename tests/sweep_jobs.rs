//! `kiln sweep --plan`, `kiln sweep --job N` and `kiln report DIR`: a sweep planned as jobs,
//! two of them run at once in two processes, and the merged report holds every row, equal to a
//! one-process sweep's in everything that does not depend on timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Short measurements, one thread (the two jobs run side by side on CI's two cores).
const SETTINGS: &[&str] = &[
    "--types",
    "q4_0,f16",
    "-p",
    "16",
    "-n",
    "4",
    "-r",
    "1",
    "-t",
    "1",
    "-c",
    "128",
    "--chunks",
    "2",
    "--no-questions",
];

fn report(dir: &Path) -> kiln::sweep::SweepReport {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn planned_jobs_in_parallel_processes_merge_into_the_sweeps_report() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep-jobs");
    let _ = std::fs::remove_dir_all(&base);
    let ck = base.join("fixture");
    crate::common::fixtures::llama_checkpoint(&ck);
    let planned = base.join("planned");

    // The plan: one job per variant; the shared reference converted, the other variant not.
    let out = ok(
        &kiln()
            .arg("sweep")
            .arg(&ck)
            .args(["--plan", "-o"])
            .arg(&planned)
            .args(SETTINGS)
            .output()
            .unwrap(),
        "plan",
    );
    assert!(out.contains("2 jobs planned"), "{out}");
    for f in [
        "plan.json",
        "jobs/0.json",
        "jobs/1.json",
        "fixture-F16.gguf",
    ] {
        assert!(planned.join(f).exists(), "{f}");
    }
    assert!(!planned.join("fixture-Q4_0.gguf").exists());
    // planning again over a plan is refused
    let o = kiln()
        .arg("sweep")
        .arg(&ck)
        .args(["--plan", "-o"])
        .arg(&planned)
        .args(SETTINGS)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a planned sweep"));

    // Both jobs at once, in two processes.
    let spawn = |n: &str| {
        kiln()
            .args(["sweep", "--job", n])
            .arg(&planned)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("0"), spawn("1"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(ok(&a, "job 0").contains("job 0 (F16): done"));
    assert!(ok(&b, "job 1").contains("job 1 (Q4_0): done"));
    // a job that is done is skipped
    let again = ok(
        &kiln()
            .args(["sweep", "--job", "1"])
            .arg(&planned)
            .output()
            .unwrap(),
        "job 1 again",
    );
    assert!(again.contains("already done"), "{again}");
    let o = kiln()
        .args(["sweep", "--job", "2"])
        .arg(&planned)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no job 2; this sweep has jobs 0 to 1"));

    ok(
        &kiln().arg("report").arg(&planned).output().unwrap(),
        "report",
    );
    let merged = report(&planned);

    // The same sweep in one process.
    let single = base.join("single");
    ok(
        &kiln()
            .arg("sweep")
            .arg(&ck)
            .arg("-o")
            .arg(&single)
            .args(SETTINGS)
            .output()
            .unwrap(),
        "one-process sweep",
    );
    let one = report(&single);

    assert_eq!(merged.reference, one.reference);
    assert_eq!(merged.model, one.model);
    assert_eq!(merged.rows.len(), 2);
    assert_eq!(merged.rows.len(), one.rows.len());
    for (m, s) in merged.rows.iter().zip(&one.rows) {
        let t = &s.r#type;
        assert!(m.error.is_none(), "{t}: {:?}", m.error);
        assert_eq!(m.r#type, s.r#type);
        assert_eq!(name(&m.file), name(&s.file), "{t}");
        assert_eq!(m.is_reference, s.is_reference, "{t}");
        assert_eq!(m.file_size, s.file_size, "{t}");
        assert!(m.file_size > 0, "{t}");
        assert_eq!(m.n_params, s.n_params, "{t}");
        assert_eq!(m.bits_per_weight, s.bits_per_weight, "{t}");
        assert_eq!(m.bench.len(), s.bench.len(), "{t}: pp and tg");
        let (me, se) = (m.eval.as_ref().unwrap(), s.eval.as_ref().unwrap());
        assert_eq!(me.kld_mean, se.kld_mean, "{t}: mean KLD");
        assert_eq!(me.ppl, se.ppl, "{t}: perplexity");
        assert_eq!(me.same_top_pct, se.same_top_pct, "{t}");
        assert_eq!(me.n_chunks, se.n_chunks, "{t}");
        let file = |d: &PathBuf| std::fs::read(d.join(name(&s.file))).unwrap();
        assert!(
            file(&planned) == file(&single),
            "{t}: the GGUF files differ"
        );
    }
    let q4 = &merged.rows[1];
    assert!(
        q4.eval.as_ref().unwrap().kld_mean > 1e-4,
        "q4_0 loses something"
    );

    // The usual report files.
    let md = std::fs::read_to_string(planned.join("report.md")).unwrap();
    assert!(md.contains("](chart.svg)"));
    for t in ["F16", "Q4_0"] {
        assert!(md.lines().any(|l| l.starts_with(&format!("| {t}"))), "{md}");
    }
    let svg = std::fs::read_to_string(planned.join("chart.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 2);
    assert!(planned.join("report.csv").exists() && planned.join("chart.png").exists());

    // Whatever exists: without job 1's result, its row says so.
    std::fs::remove_file(planned.join("results/1.json")).unwrap();
    let out = ok(
        &kiln().arg("report").arg(&planned).output().unwrap(),
        "partial report",
    );
    assert!(out.contains("1 of 2 jobs have results"), "{out}");
    let partial = report(&planned);
    assert!(partial.rows[0].error.is_none());
    let e = partial.rows[1].error.as_deref().unwrap();
    assert!(e.contains("no result yet") && e.contains("--job 1"), "{e}");
}
