//! `kiln sweep` end to end on the fixture: one pass converts every type, each variant is
//! benched and evaluated on llama.cpp, and the report files hold every row.

use kiln::plan::FileType;
use kiln::runner::{BenchOptions, EvalOptions};
use kiln::sweep::{self, SweepOptions};
use std::path::{Path, PathBuf};

/// A fresh folder with the Llama fixture checkpoint in it: (folder, checkpoint).
fn fixture(name: &str) -> (PathBuf, PathBuf) {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&base);
    let ck = base.join("fixture");
    crate::common::fixtures::llama_checkpoint(&ck);
    (base, ck)
}

/// A sweep of `types` into `base/report` with short bench and eval settings, one thread each:
/// the two tests run side by side, and llama.cpp's spinning workers slow down many-fold when
/// threads outnumber cores. In this process, no extra files.
fn quick(
    types: Vec<FileType>,
    base: &Path,
    (n_prompt, n_gen, repetitions, max_chunks): (u32, u32, u32, u32),
) -> SweepOptions {
    SweepOptions {
        types,
        out_dir: base.join("report"),
        reference: None,
        allow_requantize: false,
        imatrix: None,
        draft: None,
        target_bpw: Vec::new(),
        force: false,
        bench: BenchOptions {
            n_prompt: vec![n_prompt],
            n_gen: vec![n_gen],
            repetitions,
            threads: vec![1],
            ..Default::default()
        },
        eval: EvalOptions {
            n_ctx: 128,
            max_chunks,
            threads: 1,
            max_answer_tokens: 8,
            ..Default::default()
        },
        skip_bench: false,
        skip_eval: false,
        extra: Vec::new(),
        worker: None,
    }
}

#[test]
fn sweep_of_the_fixture_writes_a_complete_report() {
    let (base, ck) = fixture("sweep");
    let types = vec![
        FileType::Q2_K,
        FileType::F16,
        FileType::Q8_0,
        FileType::Q4_K_M,
    ];
    let opts = quick(types.clone(), &base, (64, 16, 2, 3));
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

/// A sweep goes on past files it cannot measure: a GGUF llama.cpp refuses (a required key
/// renamed), one that makes llama.cpp abort the process, and one kiln's reader refuses
/// (truncated) become rows with an error naming the file and llama.cpp's reason, while kiln's
/// variants and a llama-quantize file added with `--add` are measured against the same
/// reference, each in its own worker process as `kiln sweep` runs them.
#[test]
fn sweep_records_files_llama_cpp_refuses_and_goes_on() {
    let (base, ck) = fixture("sweep-refused");

    // A q8_0 from kiln, then two broken copies and llama.cpp's own q4_0 of it.
    let mut o = kiln::quantize::Options::new(FileType::Q8_0);
    let q8 = base.join("made-q8_0.gguf");
    o.output = Some(q8.clone());
    let p = kiln::quantize::prepare(&ck, &o).unwrap();
    kiln::quantize::execute(&p, false, false).unwrap();
    let bytes = std::fs::read(&q8).unwrap();
    let key = b"llama.block_count";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap();
    let mut renamed = bytes.clone();
    renamed[at..at + key.len()].copy_from_slice(b"llama.block_xount");
    let refused = base.join("refused.gguf");
    std::fs::write(&refused, &renamed).unwrap();
    // llama.cpp accepts the file but aborts in a GGML_ASSERT on an expert count over its
    // limit of 512: only a separate process survives that.
    let aborts = base.join("aborts.gguf");
    crate::common::fixtures::aborting_copy(&q8, &aborts);
    let truncated = base.join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let theirs = base.join("llama-quantize-q4_0.gguf");
    let ro = kiln::llama::ReferenceOptions {
        threads: 2,
        allow_requantize: true,
        pure: false,
        leave_output_tensor: false,
        output_tensor_type: None,
        token_embedding_type: None,
        imatrix: None,
        ..Default::default()
    };
    kiln::llama::reference_quantize(&q8, &theirs, FileType::Q4_0.id(), &ro).unwrap();

    let mut opts = quick(vec![FileType::F16, FileType::Q4_0], &base, (32, 8, 1, 2));
    opts.extra = vec![
        refused.clone(),
        aborts.clone(),
        truncated.clone(),
        theirs.clone(),
    ];
    opts.worker = Some(PathBuf::from(env!("CARGO_BIN_EXE_kiln")));
    let rep = sweep::run(&ck, &opts, &mut |_| {}).unwrap();
    kiln::report::write(&rep, &opts.out_dir).unwrap();
    let labels: Vec<&str> = rep.rows.iter().map(|r| r.r#type.as_str()).collect();
    assert_eq!(
        labels,
        [
            "F16",
            "Q4_0",
            "refused",
            "aborts",
            "truncated",
            "llama-quantize-q4_0"
        ]
    );
    let row = |l: &str| rep.rows.iter().find(|r| r.r#type == l).unwrap();
    for l in ["F16", "Q4_0", "llama-quantize-q4_0"] {
        let r = row(l);
        assert!(r.error.is_none(), "{l}: {:?}", r.error);
        assert_eq!(r.bench.len(), 2, "{l}");
        assert!(r.eval.as_ref().is_some_and(|e| e.ppl.is_finite()), "{l}");
    }
    // llama.cpp's q4_0 of a q8_0 is a q4_0 file: its bits per weight are q4_0's, not q8_0's.
    assert!(row("llama-quantize-q4_0").bits_per_weight < 6.0);

    let e = row("refused").error.clone().unwrap();
    assert!(e.contains(&refused.display().to_string()), "{e}");
    assert!(e.contains("llama.block_count"), "llama.cpp's reason: {e}");
    assert!(row("refused").bench.is_empty() && row("refused").eval.is_none());
    let e = row("aborts").error.clone().unwrap();
    assert!(e.contains(&aborts.display().to_string()), "{e}");
    assert!(e.contains("aborted") && e.contains("GGML_ASSERT"), "{e}");
    let e = row("truncated").error.clone().unwrap();
    assert!(e.contains(&truncated.display().to_string()), "{e}");
    assert!(e.contains("truncated"), "{e}");

    let md = std::fs::read_to_string(opts.out_dir.join("report.md")).unwrap();
    assert!(md.contains("Not measured"), "{md}");
    assert!(
        md.contains("- refused: ") && md.contains("- truncated: "),
        "{md}"
    );
}

/// `kiln sweep --parallel`: each variant's llama-batched-bench rows in report.json and a table
/// in report.md; a report.json written before them still loads.
#[test]
fn sweep_with_parallel_adds_batched_rows() {
    let (base, ck) = fixture("sweep-parallel");
    let mut o = quick(vec![FileType::Q4_0, FileType::Q8_0], &base, (8, 4, 1, 1));
    o.skip_eval = true;
    o.bench.parallel = vec![1, 2];
    let rep = sweep::run(&ck, &o, &mut |_| {}).unwrap();
    kiln::report::write(&rep, &o.out_dir).unwrap();
    assert_eq!(rep.rows.len(), 2);
    for row in &rep.rows {
        assert!(row.error.is_none(), "{:?}", row.error);
        assert!(!row.bench.is_empty(), "the llama-bench tests still run");
        let pl: Vec<u32> = row.batched.iter().map(|b| b.pl).collect();
        assert_eq!(pl, [1, 2], "{}", row.r#type);
        for b in &row.batched {
            assert_eq!(b.n_kv, b.pl * (8 + 4));
            assert!(b.speed_tg > 0.0 && b.speed_tg.is_finite());
            assert!((b.speed_tg_per_seq - b.speed_tg / b.pl as f64).abs() <= 1e-12 * b.speed_tg);
            assert_eq!(b.tokens_counted_tg, b.pl as u64 * 4);
        }
        assert!(row.batched[1].kv_cache_bytes > row.batched[0].kv_cache_bytes);
    }
    let md = std::fs::read_to_string(o.out_dir.join("report.md")).unwrap();
    assert!(md.contains("Batched generation"), "{md}");
    assert!(md.contains("| S_TG/seq t/s |"), "{md}");
    assert_eq!(
        md.lines()
            .skip_while(|l| !l.starts_with("Batched generation"))
            .filter(|l| l.starts_with("| Q4_0 | ") || l.starts_with("| Q8_0 | "))
            .count(),
        4,
        "{md}"
    );
    // report.json holds them; without the new fields (an older report) it still loads
    let text = std::fs::read_to_string(o.out_dir.join("report.json")).unwrap();
    let back: sweep::SweepReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back.rows[0].batched.len(), 2);
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for row in v["rows"].as_array_mut().unwrap() {
        row.as_object_mut().unwrap().remove("batched");
    }
    let settings = v["bench_settings"].as_object_mut().unwrap();
    for k in ["parallel", "pp_shared", "parallel_ctx"] {
        settings.remove(k);
    }
    let old: sweep::SweepReport = serde_json::from_value(v).unwrap();
    assert!(old.rows.iter().all(|r| r.batched.is_empty()));
    assert!(old.bench_settings.parallel.is_empty());
    let md_old = kiln::report::markdown(&old);
    assert!(!md_old.contains("Batched generation"));
}

/// `kiln sweep --draft q2_K`: the draft type is converted although not asked for, every other
/// variant gets its greedy generation measured with the q2_K file as draft, the draft's own row
/// none, and the report prints the table.
#[test]
fn sweep_with_a_draft_measures_each_variant_with_it() {
    use kiln::runner::bench::draft::DraftOptions;
    let (base, ck) = fixture("sweep-draft");
    let mut opts = quick(vec![FileType::F16, FileType::Q8_0], &base, (32, 8, 1, 1));
    opts.skip_eval = true;
    opts.draft = Some((
        FileType::Q2_K,
        DraftOptions {
            draft_max: 4,
            n_gen: 12,
            n_prompts: 2,
            prompt_len: 16,
            threads: 1,
            n_gpu_layers: 0,
        },
    ));
    let rep = sweep::run(&ck, &opts, &mut |_| {}).unwrap();
    let names: Vec<&str> = rep.rows.iter().map(|r| r.r#type.as_str()).collect();
    assert_eq!(names, ["F16", "Q8_0", "Q2_K"]);
    let draft_file = opts.out_dir.join("fixture-Q2_K.gguf");
    assert!(draft_file.exists());
    for r in &rep.rows[..2] {
        assert!(r.error.is_none(), "{}: {:?}", r.r#type, r.error);
        let d = r.draft.as_ref().expect("a draft measurement");
        assert_eq!(Path::new(&d.draft_filename), draft_file);
        assert_eq!(Path::new(&d.target_filename), Path::new(&r.file));
        assert_eq!(d.tokens_generated, 2 * 12);
        assert!(d.plain_ts > 0.0 && d.draft_ts > 0.0);
        assert!(d.n_drafted > 0 && d.n_accepted <= d.n_drafted, "{d:?}");
        // every step generates its accepted tokens and one of the target's (that the output
        // is the target's own greedy output is bench's speculative tests' to prove)
        assert_eq!(d.n_accepted + d.n_steps, d.tokens_generated, "{d:?}");
        assert_eq!((d.draft_max, d.n_threads), (4, 1));
    }
    assert!(rep.rows[2].draft.is_none(), "the draft against itself");
    let md = kiln::report::markdown(&rep);
    assert!(md.contains("Speculative decoding"), "{md}");
    // one table row per target, each naming the draft file
    for t in ["F16", "Q8_0"] {
        let target = format!("| fixture-{t}.gguf");
        assert!(
            md.lines()
                .any(|l| l.starts_with(&target) && l.contains("fixture-Q2_K.gguf")),
            "{t} row of the draft table in {md}"
        );
    }
}

/// The new types go through a sweep like any other: converted in the one pass, benched and
/// evaluated by llama.cpp, rows in precision order.
#[test]
fn sweep_measures_the_simple_new_types() {
    let (base, ck) = fixture("sweep-new-types");
    let types = vec![
        FileType::Q1_0,
        FileType::IQ4_XS,
        FileType::Q8_0,
        FileType::TQ1_0,
        FileType::MXFP4_MOE,
        FileType::IQ4_NL,
        FileType::Q2_0,
        FileType::TQ2_0,
    ];
    let opts = quick(types, &base, (16, 4, 1, 1));
    let rep = sweep::run(&ck, &opts, &mut |_| {}).unwrap();
    assert_eq!(rep.reference, "Q8_0");
    let names: Vec<&str> = rep.rows.iter().map(|r| r.r#type.as_str()).collect();
    assert_eq!(
        names,
        [
            "Q8_0",
            "IQ4_NL",
            "IQ4_XS",
            "MXFP4_MOE",
            "Q2_0",
            "TQ2_0",
            "TQ1_0",
            "Q1_0"
        ]
    );
    for r in &rep.rows {
        assert!(r.error.is_none(), "{}: {:?}", r.r#type, r.error);
        assert_eq!(r.bench.len(), 2, "{}: pp and tg", r.r#type);
        assert!(r.bench.iter().all(|b| b.avg_ts > 0.0), "{}", r.r#type);
        let e = r.eval.as_ref().unwrap();
        assert!(
            e.ppl > 1.0 && e.ppl.is_finite(),
            "{}: ppl {}",
            r.r#type,
            e.ppl
        );
    }
}
