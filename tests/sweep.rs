//! `kiln sweep` end to end on the fixture: one pass converts every type, each variant is
//! benched and evaluated on llama.cpp, and the report files hold every row.

use kiln::plan::FileType;
use kiln::runner::{BenchOptions, EvalOptions};
use kiln::sweep::{self, SweepOptions};
use std::path::Path;

#[test]
fn sweep_of_the_fixture_writes_a_complete_report() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep");
    let _ = std::fs::remove_dir_all(&base);
    let ck = base.join("fixture");
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama2-tokenizer.model");
    kiln::fixture::write_checkpoint(&kiln::fixture::llama_spm_default(tok), &ck).unwrap();
    let types = vec![
        FileType::Q2_K,
        FileType::F16,
        FileType::Q8_0,
        FileType::Q4_K_M,
    ];
    let opts = SweepOptions {
        types: types.clone(),
        out_dir: base.join("report"),
        reference: None,
        allow_requantize: false,
        imatrix: None,
        force: false,
        bench: BenchOptions {
            n_prompt: vec![64],
            n_gen: vec![16],
            repetitions: 2,
            ..Default::default()
        },
        eval: EvalOptions {
            n_ctx: 128,
            max_chunks: 3,
            max_answer_tokens: 8,
            ..Default::default()
        },
        skip_bench: false,
        skip_eval: false,
    };
    let rep = sweep::run(&ck, &opts, &mut |_| {}).unwrap();
    kiln::report::write(&rep, &opts.out_dir).unwrap();

    // The reference is the highest precision; rows come in precision order.
    assert_eq!(rep.reference, "F16");
    let names: Vec<&str> = rep.rows.iter().map(|r| r.r#type.as_str()).collect();
    assert_eq!(names, ["F16", "Q8_0", "Q4_K_M", "Q2_K"]);
    for r in &rep.rows {
        assert!(r.error.is_none(), "{}: {:?}", r.r#type, r.error);
        assert_eq!(r.bench.len(), 2, "{}: pp and tg", r.r#type);
        assert!(r
            .bench
            .iter()
            .all(|b| b.avg_ts > 0.0 && b.avg_ts.is_finite()));
        let e = r.eval.as_ref().unwrap();
        assert!(e.ppl > 1.0 && e.ppl.is_finite());
    }
    let kld = |t: &str| {
        rep.rows
            .iter()
            .find(|r| r.r#type == t)
            .unwrap()
            .eval
            .as_ref()
            .unwrap()
            .kld_mean
    };
    assert!(
        kld("F16").abs() < 1e-6,
        "reference against itself: {}",
        kld("F16")
    );
    assert!(
        kld("Q2_K") > kld("Q8_0"),
        "q2_K {} vs q8_0 {}",
        kld("Q2_K"),
        kld("Q8_0")
    );
    let top = rep.rows[0].eval.as_ref().unwrap().same_top_pct;
    assert_eq!(top, 100.0);

    // The files: JSON parses back to the same rows, CSV has a line per row with every column,
    // the markdown has a table row per type and links the chart, the PNG is a PNG.
    let dir = &opts.out_dir;
    let json: kiln::sweep::SweepReport =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json.rows.len(), 4);
    let csv = std::fs::read_to_string(dir.join("report.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5);
    let cols = lines[0].split(',').count();
    for l in &lines[1..] {
        assert!(l.split(',').count() >= cols, "{l}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("](chart.svg)"));
    for t in names {
        assert!(
            md.lines().any(|l| l.starts_with(&format!("| {t}"))),
            "{t} row in report.md"
        );
    }
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 4);
    assert!(std::fs::read(dir.join("chart.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    // One pass wrote every GGUF.
    for t in types {
        assert!(dir.join(format!("fixture-{}.gguf", t.name())).exists());
    }
}
