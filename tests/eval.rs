//! `kiln eval` on the Llama fixture: f32 (the reference), q8_0 and q2_K conversions, scored by
//! llama.cpp as llama-perplexity scores them, checked against a direct computation from
//! `kiln::llama::logits`, with the reference's cache written, read back and reused.

use crate::common::fixtures::{aborting_copy, convert, llama_checkpoint};
use kiln::plan::FileType;
use kiln::runner::eval;
use kiln::runner::{EvalOptions, EvalResult};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tmp() -> PathBuf {
    crate::common::module_dir("eval")
}

struct Models {
    f32: PathBuf,
    q8_0: PathBuf,
    q2_k: PathBuf,
}

/// The Llama fixture converted to f32, q8_0 and q2_K, once.
fn models() -> &'static Models {
    static M: OnceLock<Models> = OnceLock::new();
    M.get_or_init(|| {
        let d = tmp().join("llama-spm");
        llama_checkpoint(&d);
        let m = Models {
            f32: tmp().join("llama-F32.gguf"),
            q8_0: tmp().join("llama-Q8_0.gguf"),
            q2_k: tmp().join("llama-Q2_K.gguf"),
        };
        convert(&d, FileType::F32, &m.f32);
        convert(&d, FileType::Q8_0, &m.q8_0);
        convert(&d, FileType::Q2_K, &m.q2_k);
        m
    })
}

/// A few questions (the fixture's answers are noise; the task check's plumbing is what counts).
fn questions() -> &'static Path {
    static Q: OnceLock<PathBuf> = OnceLock::new();
    Q.get_or_init(|| {
        let p = tmp().join("questions.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"What is the capital of France?\", \"answer\": \"Paris\"}\n\
             {\"question\": \"What is 2 plus 2?\", \"answer\": [\"4\", \"four\"]}\n\
             \n\
             {\"question\": \"What colour is snow?\", \"answer\": \"white\", \"note\": \"x\"}\n",
        )
        .unwrap();
        p
    })
}

/// A fresh, empty cache folder.
fn fresh_dir(name: &str) -> PathBuf {
    let d = tmp().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(cache: &Path, chunks: u32) -> EvalOptions {
    EvalOptions {
        text: None,
        questions: Some(questions().to_path_buf()),
        n_ctx: 128,
        max_chunks: chunks,
        threads: 2,
        max_answer_tokens: 8,
        cache_dir: Some(cache.to_path_buf()),
        worker: None,
    }
}

/// Everything but the timing, which differs between runs.
fn without_timing(r: &EvalResult) -> EvalResult {
    EvalResult {
        task_gen_ts: 0.0,
        ..r.clone()
    }
}

#[test]
fn reference_is_zero_and_q2_k_is_worse_than_q8_0() {
    let m = models();
    let cache = fresh_dir("cache-quality");
    let files = vec![m.f32.clone(), m.q8_0.clone(), m.q2_k.clone()];
    let r = eval::run(&files, &m.f32, &opts(&cache, 3), &mut |_| {}).unwrap();
    assert_eq!(r.len(), 3);
    for x in &r {
        assert_eq!(x.n_ctx, 128);
        assert_eq!(x.n_chunks, 3);
        assert_eq!(x.n_tokens_scored, 3 * (128 - 1 - 64));
        assert!(
            x.ppl.is_finite() && x.ppl > 1.0,
            "{}: PPL {}",
            x.model_filename,
            x.ppl
        );
        assert!(x.ppl_stderr > 0.0 && x.ppl_stderr < x.ppl);
        assert!(x.kld_mean.is_finite() && x.kld_p99.is_finite());
        assert_eq!(x.task_questions, 3);
        assert!(x.task_tokens_generated >= 3 && x.task_tokens_generated <= 3 * 8);
        assert!((0.0..=100.0).contains(&x.task_contains_pct));
        assert!(
            x.task_gen_ts > 0.0,
            "{}: no generation speed",
            x.model_filename
        );
    }
    let (f32, q8, q2) = (&r[0], &r[1], &r[2]);
    assert!(
        f32.kld_mean.abs() < 1e-6,
        "reference vs itself: KLD {}",
        f32.kld_mean
    );
    assert!(
        f32.kld_p99.abs() < 1e-5,
        "reference vs itself: KLD_99 {}",
        f32.kld_p99
    );
    assert_eq!(f32.same_top_pct, 100.0);
    assert_eq!(f32.task_same_as_reference_pct, 100.0);
    assert!(q8.kld_mean > f32.kld_mean.abs());
    assert!(
        q2.kld_mean > q8.kld_mean,
        "q2_K KLD {} should exceed q8_0 KLD {}",
        q2.kld_mean,
        q8.kld_mean
    );
    assert!(q2.kld_p99 > q8.kld_p99);
    assert!(q2.same_top_pct <= q8.same_top_pct);
    assert!(q8.same_top_pct > 50.0, "q8_0 same top {}", q8.same_top_pct);

    let md = kiln::report::eval_table::to_markdown(&r);
    for name in [
        "llama-F32.gguf",
        "llama-Q8_0.gguf",
        "llama-Q2_K.gguf",
        "Mean KLD",
        "n_ctx 128",
    ] {
        assert!(md.contains(name), "markdown lacks {name}:\n{md}");
    }
    assert_eq!(md.lines().filter(|l| l.starts_with("| llama-")).count(), 3);
}

#[test]
fn cache_is_a_llama_perplexity_base_file_and_is_reused() {
    let m = models();
    let cache = fresh_dir("cache-reuse");
    let files = vec![m.f32.clone(), m.q2_k.clone()];
    let o = opts(&cache, 2);

    let mut log1 = Vec::new();
    let t0 = std::time::Instant::now();
    let r1 = eval::run(&files, &m.f32, &o, &mut |s| {
        eprintln!("{:?} {s}", t0.elapsed());
        log1.push(s.to_string())
    })
    .unwrap();
    assert!(
        log1.iter()
            .any(|s| s.contains("computing log-probabilities")),
        "{log1:?}"
    );

    // One base file, in llama-perplexity's --kl-divergence-base format, and one answers file.
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let base: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".bin"))
        .collect();
    assert_eq!(base.len(), 1, "{entries:?}");
    assert_eq!(entries.len(), 2, "{entries:?}");
    let bytes = std::fs::read(base[0]).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    assert_eq!(&bytes[..8], b"_logits_");
    assert_eq!(u32_at(8), 128); // n_ctx
    assert_eq!(u32_at(12), 32000); // n_vocab
    assert_eq!(u32_at(16), 2); // n_chunk
    assert_eq!(u32_at(20), 1); // the first token is BOS
    let nv = 2 * 32000usize.div_ceil(2) + 4;
    assert_eq!(bytes.len(), 20 + 4 * 2 * 128 + 2 * 2 * 63 * nv);
    let modified = std::fs::metadata(base[0]).unwrap().modified().unwrap();

    // Second run: reads the cache (base and answers), writes nothing, same numbers; the
    // reference, decoded again and scored against the file, equals its first-pass score.
    let mut log2 = Vec::new();
    let r2 = eval::run(&files, &m.f32, &o, &mut |s| log2.push(s.to_string())).unwrap();
    assert!(
        log2.iter()
            .any(|s| s.contains("using cached log-probabilities")),
        "{log2:?}"
    );
    assert!(
        log2.iter().any(|s| s.contains("using cached answers")),
        "{log2:?}"
    );
    assert!(!log2.iter().any(|s| s.contains("computing")), "{log2:?}");
    assert_eq!(
        std::fs::metadata(base[0]).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    let a: Vec<_> = r1.iter().map(without_timing).collect();
    let b: Vec<_> = r2.iter().map(without_timing).collect();
    assert_eq!(a, b);

    // Another n_ctx is another cache entry.
    let mut o3 = o.clone();
    o3.n_ctx = 96;
    let mut log3 = Vec::new();
    eval::run(&files[1..], &m.f32, &o3, &mut |s| log3.push(s.to_string())).unwrap();
    assert!(
        log3.iter()
            .any(|s| s.contains("computing log-probabilities")),
        "{log3:?}"
    );
}

/// Natural-log softmax of one row in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&x| x as f64 - lse).collect()
}

#[test]
fn perplexity_and_kld_match_a_direct_computation() {
    let m = models();
    let cache = fresh_dir("cache-direct");
    let files = vec![m.f32.clone(), m.q2_k.clone()];
    let r = eval::run(&files, &m.f32, &opts(&cache, 1), &mut |_| {}).unwrap();
    assert_eq!(r[0].n_tokens_scored, 63);

    // Chunk 0 by hand: the text's first 128 tokens (BOS first), all logits in one batch, the
    // second half scored: positions 64..=126 predict tokens 65..=127. With llama.cpp's default
    // context (f16 KV cache, as llama-perplexity and kiln eval run) the numbers must agree to
    // rounding; with an f32 KV cache, to within what the cache's precision moves them.
    let reference = kiln::llama::load(&m.f32).unwrap();
    let quant = kiln::llama::load(&m.q2_k).unwrap();
    let tokens = kiln::llama::tokenize(&reference, eval::default_text(), true);
    assert_eq!(tokens[0], 1);
    let chunk = &tokens[..128];
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs();
    for exact in [false, true] {
        let logits = |model| {
            if exact {
                kiln::llama::logits(model, chunk).unwrap()
            } else {
                kiln::llama::logits_default_context(model, chunk).unwrap()
            }
        };
        let (lr, lq) = (logits(&reference), logits(&quant));
        let (mut nll_r, mut nll_q, mut kld, mut same) = (0.0, 0.0, 0.0, 0usize);
        for j in 64..127 {
            let next = chunk[j + 1] as usize;
            let pr = log_softmax(&lr[j]);
            let pq = log_softmax(&lq[j]);
            nll_r -= pr[next];
            nll_q -= pq[next];
            kld += pr
                .iter()
                .zip(&pq)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
            same += (kiln::llama::argmax(&lr[j]) == kiln::llama::argmax(&lq[j])) as usize;
        }
        let ppl_r = (nll_r / 63.0).exp();
        let ppl_q = (nll_q / 63.0).exp();
        let kld = kld / 63.0;
        let same_pct = 100.0 * same as f64 / 63.0;
        eprintln!(
            "exact KV {exact}: PPL {} / {ppl_r}, {} / {ppl_q}; KLD {} / {kld}; same top {} / {same_pct}",
            r[0].ppl, r[1].ppl, r[1].kld_mean, r[1].same_top_pct
        );
        let (tol_ppl, tol_kld) = if exact { (2e-2, 5e-2) } else { (1e-5, 1e-3) };
        assert!(
            close(r[0].ppl, ppl_r, tol_ppl),
            "PPL {} vs direct {ppl_r}",
            r[0].ppl
        );
        assert!(
            close(r[1].ppl, ppl_q, tol_ppl),
            "PPL {} vs direct {ppl_q}",
            r[1].ppl
        );
        assert!(
            close(r[1].kld_mean, kld, tol_kld),
            "KLD {} vs direct {kld}",
            r[1].kld_mean
        );
        if !exact {
            assert_eq!(r[1].same_top_pct, same_pct);
        }
    }
}

#[test]
fn question_set_errors_name_the_line() {
    let ok = eval::parse_questions(
        "{\"question\": \"a?\", \"answer\": \"b\"}\n\n{\"question\": \"c?\", \"answer\": [\"d\", \"e\"]}\n",
        "q.jsonl",
    )
    .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].answers, vec!["d".to_string(), "e".to_string()]);
    let cases = [
        (
            "{\"question\": \"a?\", \"answer\": \"b\"}\nnot json\n",
            "line 2",
        ),
        ("\n\n{\"question\": \"a?\"}\n", "line 3"),
        ("{\"answer\": \"b\"}\n", "line 1"),
        ("{\"question\": 3, \"answer\": \"b\"}\n", "line 1"),
        ("{\"question\": \"a?\", \"answer\": \"\"}\n", "line 1"),
        ("{\"question\": \"a?\", \"answer\": [1]}\n", "line 1"),
        ("[1, 2]\n", "line 1"),
        ("\n\n", "no questions"),
    ];
    for (text, want) in cases {
        let e = format!("{:#}", eval::parse_questions(text, "q.jsonl").unwrap_err());
        assert!(e.contains("q.jsonl") && e.contains(want), "{text:?}: {e}");
    }

    // Through `run`, with the file's name.
    let m = models();
    let bad = tmp().join("bad-questions.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"a?\", \"answer\": \"b\"}\n{\"question\": \"c?\"\n",
    )
    .unwrap();
    let mut o = opts(&fresh_dir("cache-badq"), 2);
    o.questions = Some(bad);
    let e = format!(
        "{:#}",
        eval::run(std::slice::from_ref(&m.q8_0), &m.f32, &o, &mut |_| {}).unwrap_err()
    );
    assert!(
        e.contains("bad-questions.jsonl") && e.contains("line 2"),
        "{e}"
    );
}

#[test]
fn too_short_text_says_how_many_tokens_are_needed() {
    let m = models();
    let short = tmp().join("short.txt");
    std::fs::write(
        &short,
        "A few words are not enough for two contexts of 128 tokens.",
    )
    .unwrap();
    let mut o = opts(&fresh_dir("cache-short"), 0);
    o.text = Some(short);
    let e = format!(
        "{:#}",
        eval::run(std::slice::from_ref(&m.q8_0), &m.f32, &o, &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("short.txt") && e.contains("at least 256"), "{e}");
}

#[test]
fn unloadable_files_are_named() {
    let m = models();
    let bad = tmp().join("not-a-model.gguf");
    std::fs::write(&bad, b"GGUF but not really a model file").unwrap();
    let o = opts(&fresh_dir("cache-bad"), 2);
    let e = format!(
        "{:#}",
        eval::run(std::slice::from_ref(&m.q8_0), &bad, &o, &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("not-a-model.gguf"), "{e}");
    let e = format!(
        "{:#}",
        eval::run(std::slice::from_ref(&bad), &m.f32, &o, &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("not-a-model.gguf"), "{e}");
    // A valid GGUF that llama.cpp refuses (an architecture it does not know).
    let unknown = tmp().join("unknown-arch.gguf");
    let mut md = kiln::gguf::Metadata::new();
    md.set(
        "general.architecture",
        kiln::gguf::Value::Str("no-such-arch".into()),
    );
    std::fs::write(&unknown, kiln::gguf::writer::header_bytes(&md, &[]).0).unwrap();
    let e = format!(
        "{:#}",
        eval::run(std::slice::from_ref(&unknown), &m.f32, &o, &mut |_| {}).unwrap_err()
    );
    assert!(
        e.contains("unknown-arch.gguf") && e.contains("llama.cpp"),
        "{e}"
    );
    let missing = tmp().join("missing.gguf");
    let e = format!(
        "{:#}",
        eval::run(&[missing], &m.f32, &o, &mut |_| {}).unwrap_err()
    );
    assert!(e.contains("missing.gguf"), "{e}");
}

/// `kiln eval` evaluates each file in its own worker process: a file on which llama.cpp aborts
/// (a GGML_ASSERT) is one failed row with llama.cpp's reason, the other file is scored against
/// the reference, and the exit status is 1 because a file failed.
#[test]
fn cli_eval_survives_a_file_llama_cpp_aborts_on() {
    let m = models();
    let aborts = tmp().join("aborts.gguf");
    aborting_copy(&m.q8_0, &aborts);
    let cache = fresh_dir("cache-cli-aborts");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "eval",
            "--json",
            "-c",
            "128",
            "--chunks",
            "2",
            "--threads",
            "2",
        ])
        .arg("--questions")
        .arg(questions())
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--reference")
        .arg(&m.f32)
        .arg(&aborts)
        .arg(&m.q8_0)
        .output()
        .unwrap();
    let rs: Vec<EvalResult> = crate::common::one_of_two_failed(&out);
    assert_eq!(rs.len(), 2, "{rs:?}");
    let e = rs[0].error.as_deref().unwrap();
    assert!(
        e.contains(&aborts.display().to_string())
            && e.contains("aborted")
            && e.contains("GGML_ASSERT"),
        "{e}"
    );
    let r = &rs[1];
    assert_eq!(r.model_filename, m.q8_0.display().to_string());
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(r.ppl.is_finite() && r.ppl > 1.0, "{r:?}");
    assert!(r.kld_mean.is_finite() && r.n_tokens_scored > 0, "{r:?}");
    assert_eq!(r.task_questions, 3);
    let md = kiln::report::eval_table::to_markdown(&rs);
    assert!(md.contains("| aborts.gguf | failed |"), "{md}");
    assert!(
        md.lines()
            .any(|l| l.starts_with("- ") && l.contains("GGML_ASSERT")),
        "{md}"
    );
}

#[test]
fn bundled_text_and_questions_are_usable() {
    let q = eval::parse_questions(eval::default_questions(), "bundled").unwrap();
    assert!(q.len() >= 40, "{} questions", q.len());
    let text = eval::default_text();
    assert!(text.len() > 8000);
    // The default context (512) needs two contexts of tokens; the bundled text gives several.
    let model = kiln::llama::load(&models().f32).unwrap();
    let n = kiln::llama::tokenize(&model, text, true).len();
    assert!(n >= 4 * 512, "the bundled text is {n} tokens");
}

/// With `KILN_LLAMA_PERPLEXITY` pointing at a `llama-perplexity` binary (built from llama.cpp's
/// tools/perplexity; not part of the crate's copy), kiln's cache must be byte-identical to its
/// `--kl-divergence-base` file, and its `--kl-divergence` statistics must equal kiln's.
/// Run it with `cargo test --release -- --ignored matches_llama_perplexity`.
#[test]
#[ignore = "needs a llama-perplexity binary in KILN_LLAMA_PERPLEXITY"]
fn matches_llama_perplexity() {
    let exe = std::env::var_os("KILN_LLAMA_PERPLEXITY")
        .expect("set KILN_LLAMA_PERPLEXITY to a llama-perplexity binary");
    let m = models();
    let cache = fresh_dir("cache-llama-perplexity");
    let text = tmp().join("text.txt");
    std::fs::write(&text, eval::default_text()).unwrap();
    let mut o = opts(&cache, 0);
    o.text = Some(text.clone());
    o.max_answer_tokens = 0;
    let files = vec![m.f32.clone(), m.q8_0.clone(), m.q2_k.clone()];
    let r = eval::run(&files, &m.f32, &o, &mut |_| {}).unwrap();
    let ours = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".bin"))
        .unwrap();
    let theirs = cache.join("llama-perplexity-base.bin");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(&exe)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    run(&[
        os("-m"),
        m.f32.as_os_str(),
        os("-f"),
        text.as_os_str(),
        os("-c"),
        os("128"),
        os("-t"),
        os("2"),
        os("--kl-divergence-base"),
        theirs.as_os_str(),
    ]);
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "kiln's cache differs from llama-perplexity's base file"
    );
    for (file, ours) in files.iter().zip(&r) {
        let log = run(&[
            os("-m"),
            file.as_os_str(),
            os("-c"),
            os("128"),
            os("-t"),
            os("2"),
            os("--kl-divergence-base"),
            theirs.as_os_str(),
            os("--kl-divergence"),
        ]);
        let value = |label: &str| -> Vec<f64> {
            let line = log
                .lines()
                .find(|l| l.starts_with(label) && l.contains(':'))
                .unwrap_or_else(|| panic!("{label}"));
            line[line.find(':').unwrap() + 1..]
                .split(['±', '%'])
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        };
        let near = |a: f64, b: f64, decimals: i32| (a - b).abs() <= 0.51 * 10f64.powi(-decimals);
        let ppl = value("Mean PPL(Q) ");
        let kld = value("Mean    KLD");
        let p99 = value("99.0%   KLD");
        let top = value("Same top p");
        assert!(
            near(ours.ppl, ppl[0], 6) && near(ours.ppl_stderr, ppl[1], 6),
            "{ppl:?} {ours:?}"
        );
        assert!(
            near(ours.kld_mean, kld[0], 6) && near(ours.kld_stderr, kld[1], 6),
            "{kld:?}"
        );
        assert!(near(ours.kld_p99, p99[0], 6), "{p99:?}");
        assert!(near(ours.same_top_pct, top[0], 3), "{top:?}");
    }
}

/// `kiln eval --no-questions`: perplexity and KLD as llama-perplexity measures them, no task
/// (the task columns empty); with --questions it is a usage error.
#[test]
fn cli_eval_without_questions() {
    let m = models();
    let cache = fresh_dir("cache-cli-no-questions");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "eval",
                "--json",
                "-c",
                "128",
                "--chunks",
                "1",
                "--threads",
                "1",
            ])
            .args(extra)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--reference")
            .arg(&m.f32)
            .arg(&m.q8_0)
            .output()
            .unwrap()
    };
    let out = run(&["--no-questions"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rs: Vec<EvalResult> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rs.len(), 1);
    assert!(rs[0].ppl.is_finite() && rs[0].ppl > 1.0, "{:?}", rs[0]);
    assert_eq!(
        (rs[0].n_chunks, rs[0].task_questions),
        (1, 0),
        "{:?}",
        rs[0]
    );
    assert_eq!(rs[0].task_tokens_generated, 0);
    let out = run(&[
        "--no-questions",
        "--questions",
        questions().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-questions"));
}
