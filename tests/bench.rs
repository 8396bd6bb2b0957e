//! `kiln bench` (src/runner/bench.rs) on the Llama fixture converted to q8_0 and q4_0 (and the
//! Gemma 3 fixture, for the sliding-window KV cache): the test matrix, llama-bench's arithmetic,
//! the reports, KV cache bytes against what llama.cpp itself logs, and errors that name the file.
//!
//! The tests take one lock, so that they do not compete for the CPU (their timings stay
//! meaningful) and so that the log capture sees only its own test's llama.cpp lines.

use crate::common::fixtures::{aborting_copy, convert, llama_checkpoint, tokenizer_model};
use kiln::plan::FileType;
use kiln::runner::bench::{self, draft};
use kiln::runner::{BenchOptions, BenchResult};
use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

fn serial() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp() -> PathBuf {
    crate::common::module_dir("bench")
}

/// The Llama fixture as q8_0 and q4_0 GGUFs, written once.
fn files() -> &'static [PathBuf; 2] {
    static F: OnceLock<[PathBuf; 2]> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tmp().join("llama-spm");
        llama_checkpoint(&dir);
        let q8 = tmp().join("llama-Q8_0.gguf");
        let q4 = tmp().join("llama-Q4_0.gguf");
        convert(&dir, FileType::Q8_0, &q8);
        convert(&dir, FileType::Q4_0, &q4);
        [q8, q4]
    })
}

fn opts() -> BenchOptions {
    BenchOptions {
        n_prompt: vec![64],
        n_gen: vec![16],
        repetitions: 2,
        threads: vec![2],
        ..Default::default()
    }
}

fn run(files: &[PathBuf], o: &BenchOptions) -> (Vec<BenchResult>, Vec<String>) {
    let mut lines = Vec::new();
    let r = bench::run(files, o, &mut |l| lines.push(l.to_string()))
        .unwrap_or_else(|e| panic!("bench: {e:#}"));
    (r, lines)
}

fn check_sane(r: &BenchResult, reps: usize) {
    let what = format!("{} {}", r.model_filename, r.test);
    assert!(
        r.avg_ts.is_finite() && r.avg_ts > 0.0,
        "{what}: avg_ts {}",
        r.avg_ts
    );
    assert!(
        r.stddev_ts.is_finite() && r.stddev_ts >= 0.0,
        "{what}: stddev {}",
        r.stddev_ts
    );
    assert_eq!(r.samples_ns.len(), reps, "{what}");
    assert_eq!(r.samples_ts.len(), reps, "{what}");
    assert!(r.samples_ns.iter().all(|&ns| ns > 0), "{what}");
    // llama-bench's arithmetic: ts = tokens * 1e9 / ns, avg = mean of ts.
    let n = (r.n_prompt + r.n_gen) as f64;
    for (&ns, &ts) in r.samples_ns.iter().zip(&r.samples_ts) {
        assert!((ts - n * 1e9 / ns as f64).abs() <= 1e-9 * ts, "{what}");
    }
    let mean = r.samples_ts.iter().sum::<f64>() / reps as f64;
    assert!((r.avg_ts - mean).abs() <= 1e-9 * mean, "{what}");
    if reps == 1 {
        assert_eq!(r.stddev_ts, 0.0, "{what}");
    } else {
        let var = r
            .samples_ts
            .iter()
            .map(|x| (x - mean) * (x - mean))
            .sum::<f64>()
            / (reps - 1) as f64;
        assert!((r.stddev_ts - var.sqrt()).abs() <= 1e-9 * mean, "{what}");
    }
    // tokens actually decoded per repetition
    match (r.n_prompt, r.n_gen) {
        (p, 0) => {
            assert_eq!(r.tokens_counted, p as u64, "{what}");
            assert_eq!(r.test, format!("pp{p}"));
        }
        (0, g) => {
            assert_eq!(r.tokens_counted, g as u64, "{what}");
            assert_eq!(r.test, format!("tg{g}"));
        }
        _ => panic!("{what}: mixed test"),
    }
    assert!(r.model_size > 0 && r.model_n_params > 0, "{what}");
    assert_eq!(r.model_buffer_bytes, r.model_size, "{what}");
    let disk = std::fs::metadata(&r.model_filename).unwrap().len();
    assert_eq!(r.file_size, disk, "{what}");
    assert!(
        r.file_size > r.model_size,
        "{what}: file holds the tensors and a header"
    );
    let bpw = r.model_size as f64 * 8.0 / r.model_n_params as f64;
    assert!((r.bits_per_weight - bpw).abs() < 1e-9, "{what}");
    assert!(r.load_ms.is_finite() && r.load_ms > 0.0, "{what}");
    assert!(r.kv_cache_bytes > 0, "{what}");
    assert!(
        r.peak_rss_bytes > r.model_size,
        "{what}: peak RSS {}",
        r.peak_rss_bytes
    );
    // what tells machines and builds apart
    assert!(r.error.is_none(), "{what}: {:?}", r.error);
    assert!(
        r.model_type.starts_with("llama "),
        "{what}: model_type {:?}",
        r.model_type
    );
    assert!(!r.cpu_info.is_empty(), "{what}");
    assert_eq!(r.backends, kiln::llama::raw::backends(), "{what}");
    assert_eq!(
        r.cpu_features,
        kiln::llama::raw::cpu_features_line(),
        "{what}"
    );
}

/// llama.cpp's KV cache for the Llama fixture: 4 layers, 4 KV heads of 32, so 128 K and 128 V
/// values per layer and cell; n_ctx padded to 256 cells.
fn llama_kv_bytes(n_ctx: u64, bytes_per_value: u64) -> u64 {
    4 * 2 * 128 * bytes_per_value * n_ctx.div_ceil(256) * 256
}

#[test]
fn one_result_per_file_and_test_all_sane() {
    let _g = serial();
    let files = files();
    let (rs, lines) = run(files, &opts());
    assert_eq!(rs.len(), 4, "2 files x (pp64, tg16)");
    assert_eq!(lines.len(), 4, "one progress line per test");
    let order: Vec<(String, &str)> = rs
        .iter()
        .map(|r| (r.model_filename.clone(), r.test.as_str()))
        .collect();
    let f0 = files[0].display().to_string();
    let f1 = files[1].display().to_string();
    assert_eq!(
        order,
        [
            (f0.clone(), "pp64"),
            (f0, "tg16"),
            (f1.clone(), "pp64"),
            (f1, "tg16")
        ]
    );
    for (r, line) in rs.iter().zip(&lines) {
        check_sane(r, 2);
        assert!(line.contains(&r.test), "{line}");
        assert!(line.contains("t/s"), "{line}");
        assert_eq!(r.kv_cache_bytes, llama_kv_bytes(256, 2), "{}", r.test);
        assert_eq!(r.n_threads, 2);
        assert_eq!((r.n_batch, r.n_ubatch), (2048, 512));
        assert_eq!((r.type_k.as_str(), r.type_v.as_str()), ("f16", "f16"));
    }
    // same model, two precisions
    assert_eq!(rs[0].model_n_params, rs[2].model_n_params);
    assert!(
        rs[0].model_size > rs[2].model_size,
        "q8_0 is bigger than q4_0"
    );
    assert!(rs[0].bits_per_weight > 8.0 && rs[0].bits_per_weight < 9.0);
    // q4_0 keeps a q6_K output matrix, a large share of this small model
    assert!(rs[2].bits_per_weight > 4.5 && rs[2].bits_per_weight < rs[0].bits_per_weight);
    // one load per file: the same load time on both tests of a file
    assert_eq!(rs[0].load_ms, rs[1].load_ms);
    // JSON round trip, with llama-bench's field names
    let j = serde_json::to_string(&rs).unwrap();
    for k in [
        "model_filename",
        "model_size",
        "model_n_params",
        "n_threads",
        "n_prompt",
    ] {
        assert!(j.contains(&format!("\"{k}\"")), "{k}");
    }
    // (serde_json parses floats to within an ulp, not always exactly)
    let back: Vec<BenchResult> = serde_json::from_str(&j).unwrap();
    assert_eq!(back.len(), rs.len());
    for (a, b) in back.iter().zip(&rs) {
        assert_eq!(
            (&a.model_filename, &a.test, &a.samples_ns),
            (&b.model_filename, &b.test, &b.samples_ns)
        );
        assert_eq!(
            (a.kv_cache_bytes, a.tokens_counted),
            (b.kv_cache_bytes, b.tokens_counted)
        );
        assert!((a.avg_ts - b.avg_ts).abs() <= 1e-12 * b.avg_ts);
    }
}

#[test]
fn one_repetition_has_zero_stddev() {
    let _g = serial();
    let o = BenchOptions {
        repetitions: 1,
        ..opts()
    };
    let (rs, _) = run(&files()[1..], &o);
    assert_eq!(rs.len(), 2);
    for r in &rs {
        check_sane(r, 1);
        assert_eq!(r.stddev_ts, 0.0);
    }
}

/// 2 thread counts x 2 cache types -> 4 results per test per file, in llama-bench's order
/// (cache type outside threads, pp before tg innermost).
fn matrix() -> &'static Vec<BenchResult> {
    static M: OnceLock<Vec<BenchResult>> = OnceLock::new();
    M.get_or_init(|| {
        let o = BenchOptions {
            threads: vec![1, 2],
            cache_type: vec!["f16".into(), "F32".into()],
            ..opts()
        };
        run(files(), &o).0
    })
}

#[test]
fn matrix_expands_like_llama_bench() {
    let _g = serial();
    let rs = matrix();
    assert_eq!(rs.len(), 2 * 2 * 2 * 2, "files x cache x threads x tests");
    let got: Vec<(usize, &str, u32, &str)> = rs
        .iter()
        .map(|r| {
            let f = files()
                .iter()
                .position(|f| f.display().to_string() == r.model_filename)
                .unwrap();
            (f, r.type_k.as_str(), r.n_threads, r.test.as_str())
        })
        .collect();
    let mut want = Vec::new();
    for f in 0..2 {
        for ct in ["f16", "f32"] {
            for t in [1, 2] {
                for test in ["pp64", "tg16"] {
                    want.push((f, ct, t, test));
                }
            }
        }
    }
    assert_eq!(got, want);
    for r in rs {
        check_sane(r, 2);
        assert_eq!(r.type_k, r.type_v);
        let bytes = if r.type_k == "f32" { 4 } else { 2 };
        assert_eq!(r.kv_cache_bytes, llama_kv_bytes(256, bytes), "{}", r.type_k);
    }
}

/// A CSV line split as RFC 4180 does (quoted fields, doubled quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    assert!(!quoted, "unterminated quote in {line:?}");
    out.push(cur);
    out
}

#[test]
fn markdown_and_csv_hold_every_row() {
    let _g = serial();
    let rs = matrix();

    let md = kiln::report::bench_table::to_markdown(rs);
    println!("{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(
        rows.len(),
        rs.len() + 2,
        "header, separator, one row per result:\n{md}"
    );
    let n_cols = rows[0].matches('|').count();
    for row in &rows {
        assert_eq!(row.matches('|').count(), n_cols, "{row}");
        assert!(row.ends_with('|'), "{row}");
    }
    let header: Vec<&str> = rows[0].split('|').map(str::trim).collect();
    for h in [
        "model",
        "model type",
        "size",
        "params",
        "backend",
        "threads",
        "type_k",
        "type_v",
        "test",
        "t/s",
    ] {
        assert!(header.contains(&h), "{h} missing: {}", rows[0]);
    }
    assert!(
        header.iter().position(|&h| h == "model") < header.iter().position(|&h| h == "t/s"),
        "{}",
        rows[0]
    );
    assert!(rows[1].chars().all(|c| "|-: ".contains(c)), "{}", rows[1]);
    for (r, row) in rs.iter().zip(&rows[2..]) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = Path::new(&r.model_filename)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert!(cells.contains(&name), "{row}");
        assert!(cells.contains(&r.model_type.as_str()), "{row}");
        assert!(cells.contains(&r.test.as_str()), "{row}");
        assert!(
            cells.contains(&format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts).as_str()),
            "{row}"
        );
    }
    // the machine and the build below the table
    assert!(
        md.contains(&format!("machine: {}", rs[0].cpu_info))
            && md.contains(&format!("CPU backend features: {}", rs[0].cpu_features)),
        "{md}"
    );
    // default-valued columns are left out, as llama-bench does
    assert!(
        !header.contains(&"n_batch") && !header.contains(&"fa"),
        "{}",
        rows[0]
    );

    let csv = kiln::report::bench_table::to_csv(rs);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), rs.len() + 1);
    let head = csv_fields(lines[0]);
    assert_eq!(
        head[..9],
        [
            "cpu_info",
            "backends",
            "model_filename",
            "model_type",
            "model_size",
            "model_n_params",
            "n_batch",
            "n_ubatch",
            "n_threads"
        ]
    );
    for k in [
        "avg_ts",
        "stddev_ts",
        "n_prompt",
        "n_gen",
        "tokens_counted",
        "kv_cache_bytes",
    ] {
        assert!(head.iter().any(|h| h == k), "{k}");
    }
    let col = |k: &str| head.iter().position(|h| h == k).unwrap();
    for (r, line) in rs.iter().zip(&lines[1..]) {
        let f = csv_fields(line);
        assert_eq!(f.len(), head.len(), "{line}");
        assert_eq!(f[col("model_filename")], r.model_filename);
        assert_eq!(f[col("n_threads")], r.n_threads.to_string());
        assert_eq!(f[col("type_k")], r.type_k);
        let ts: f64 = f[col("avg_ts")].parse().unwrap();
        assert!((ts - r.avg_ts).abs() <= 1e-6 * r.avg_ts.max(1.0), "{line}");
        assert_eq!(f[col("tokens_counted")], r.tokens_counted.to_string());
        assert_eq!(f[col("model_type")], r.model_type);
        assert_eq!(f[col("cpu_info")], r.cpu_info);
        assert_eq!(f[col("cpu_features")], r.cpu_features);
        assert_eq!(f[col("error")], "");
        let samples: Vec<u64> = f[col("samples_ns")]
            .split(';')
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(samples, r.samples_ns);
    }
    // a path with a comma and a quote stays one field
    let mut odd = rs[0].clone();
    odd.model_filename = "/tmp/a,b \"c\".gguf".into();
    let csv = kiln::report::bench_table::to_csv(&[odd.clone()]);
    let f = csv_fields(csv.lines().nth(1).unwrap());
    assert_eq!(f.len(), head.len());
    assert_eq!(f[col("model_filename")], odd.model_filename);
}

#[test]
fn missing_and_corrupt_files_are_errors_naming_them() {
    let _g = serial();
    let good = files()[1].clone();
    let missing = tmp().join("no-such-model.gguf");
    let garbage = tmp().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a GGUF file at all").unwrap();
    let truncated = tmp().join("truncated.gguf");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // a GGUF header that parses but whose architecture llama.cpp does not know
    let alien = tmp().join("alien-arch.gguf");
    let text = String::from_utf8_lossy(&bytes[..4096]).into_owned();
    assert!(text.contains("llama"));
    let mut patched = bytes.clone();
    let key = b"general.architecture";
    let at = patched
        .windows(key.len())
        .position(|w| w == key)
        .expect("architecture key")
        + key.len()
        + 4 // value type
        + 8; // string length
    patched[at..at + 5].copy_from_slice(b"zzzzz");
    std::fs::write(&alien, &patched).unwrap();

    // Files that are not readable GGUF fail before anything is measured; one that llama.cpp
    // refuses fails when its turn comes.
    for (bad, measured_first) in [(&missing, 0), (&garbage, 0), (&truncated, 0), (&alien, 2)] {
        let mut progress = 0;
        let e = bench::run(&[good.clone(), bad.clone()], &opts(), &mut |_| {
            progress += 1
        })
        .expect_err("bad file must fail");
        let msg = format!("{e:#}");
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        assert_eq!(progress, measured_first, "{msg}");
        eprintln!("{msg}");
    }
}

/// `kiln bench` measures each file in its own worker process: a file on which llama.cpp aborts
/// (a GGML_ASSERT, which no in-process code survives) is one failed row with llama.cpp's
/// reason, the other file is measured, and the exit status is 1 because a file failed.
#[test]
fn cli_bench_survives_a_file_llama_cpp_aborts_on() {
    let _g = serial();
    let good = files()[1].clone();
    let aborts = tmp().join("aborts.gguf");
    aborting_copy(&files()[0], &aborts);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench", "--json", "-p", "32", "-n", "8", "-r", "1", "-t", "2",
        ])
        .arg(&aborts)
        .arg(&good)
        .output()
        .unwrap();
    let rs: Vec<BenchResult> = crate::common::one_of_two_failed(&out);
    assert_eq!(rs.len(), 3, "{rs:?}");
    let bad = &rs[0];
    assert_eq!(bad.model_filename, aborts.display().to_string());
    let e = bad.error.as_deref().unwrap();
    assert!(
        e.contains(&aborts.display().to_string())
            && e.contains("aborted")
            && e.contains("GGML_ASSERT"),
        "{e}"
    );
    assert!(bad.samples_ns.is_empty() && bad.avg_ts == 0.0, "{bad:?}");
    assert_eq!(bad.file_size, std::fs::metadata(&aborts).unwrap().len());
    for r in &rs[1..] {
        assert_eq!(r.model_filename, good.display().to_string());
        check_sane(r, 1);
        assert!(r.model_type.contains("Q4_0"), "{}", r.model_type);
    }
    assert_eq!(rs[1].test, "pp32");
    assert_eq!(rs[2].test, "tg8");
    // The markdown: a "failed" row and the reason below the table.
    let md = kiln::report::bench_table::to_markdown(&rs);
    let row = md
        .lines()
        .find(|l| l.starts_with("| aborts.gguf"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(row.contains("failed"), "{row}");
    assert!(
        md.lines()
            .any(|l| l.starts_with("- ") && l.contains("GGML_ASSERT")),
        "{md}"
    );
}

#[test]
fn bad_options_are_errors() {
    let _g = serial();
    let f = &files()[1..];
    let cases: Vec<(BenchOptions, &str)> = vec![
        (
            BenchOptions {
                cache_type: vec!["q9_9".into()],
                ..opts()
            },
            "q9_9",
        ),
        (
            BenchOptions {
                cache_type: vec!["f16".into(), "q8_0".into()],
                flash_attn: vec![false, true],
                ..opts()
            },
            "flash attention",
        ),
        (
            BenchOptions {
                repetitions: 0,
                ..opts()
            },
            "repetitions",
        ),
        (
            BenchOptions {
                threads: vec![0],
                ..opts()
            },
            "threads",
        ),
        (
            BenchOptions {
                n_prompt: vec![0],
                n_gen: vec![0],
                ..opts()
            },
            "nothing to measure",
        ),
        (
            BenchOptions {
                threads: vec![],
                ..opts()
            },
            "threads",
        ),
    ];
    for (o, want) in cases {
        let e = bench::run(f, &o, &mut |_| {}).expect_err(want);
        assert!(format!("{e:#}").contains(want), "{e:#}");
    }
    assert!(bench::run(&[], &opts(), &mut |_| {}).is_err());
}

// ---- KV cache bytes against llama.cpp's own log ----

static LOG: Mutex<String> = Mutex::new(String::new());

unsafe extern "C" fn capture(_level: u32, text: *const c_char, _user: *mut c_void) {
    if !text.is_null() {
        let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        LOG.lock().unwrap_or_else(|e| e.into_inner()).push_str(&s);
    }
}

/// Runs `f` with llama.cpp's log captured; returns f's value and the log.
fn with_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    use llama_cpp_sys_2 as sys;
    kiln::llama::backend();
    let mut prev_cb: sys::ggml_log_callback = None;
    let mut prev_ud: *mut c_void = std::ptr::null_mut();
    LOG.lock().unwrap().clear();
    unsafe {
        sys::llama_log_get(&mut prev_cb, &mut prev_ud);
        sys::llama_log_set(Some(capture), std::ptr::null_mut());
    }
    let v = f();
    unsafe { sys::llama_log_set(prev_cb, prev_ud) };
    let log = std::mem::take(&mut *LOG.lock().unwrap());
    (v, log)
}

/// Sum of llama.cpp's "KV buffer size = X MiB" lines (one per cache buffer), in MiB, and their
/// count.
fn logged_kv_mib(log: &str) -> (f64, usize) {
    let v: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split("KV buffer size =").nth(1))
        .map(|r| {
            r.trim()
                .trim_end_matches("MiB")
                .trim()
                .parse::<f64>()
                .unwrap()
        })
        .collect();
    (v.iter().sum(), v.len())
}

fn check_kv_against_log(file: &Path, o: &BenchOptions, buffers_per_test: usize) {
    let (rs, log) = with_log(|| run(&[file.to_path_buf()], o).0);
    // one test at a time, so split the log per context: each test creates one context
    let per_ctx: Vec<&str> = log.split("llama_context: constructing").skip(1).collect();
    assert_eq!(per_ctx.len(), rs.len(), "one context per test");
    for (r, l) in rs.iter().zip(per_ctx) {
        let (mib, n) = logged_kv_mib(l);
        assert_eq!(n, buffers_per_test, "{}: {l}", r.test);
        let ours = r.kv_cache_bytes as f64 / 1024.0 / 1024.0;
        // llama.cpp prints each buffer to 0.01 MiB
        assert!(
            (ours - mib).abs() <= 0.005 * n as f64 + 1e-9,
            "{} {} {}: kiln {} bytes ({ours:.4} MiB), llama.cpp {mib:.2} MiB",
            r.test,
            r.type_k,
            r.flash_attn,
            r.kv_cache_bytes
        );
    }
}

#[test]
fn kv_cache_bytes_equal_llama_cpp_log() {
    let _g = serial();
    let o = BenchOptions {
        n_prompt: vec![300],
        n_gen: vec![8],
        repetitions: 1,
        cache_type: vec!["f16".into(), "q8_0".into(), "f32".into()],
        flash_attn: vec![true],
        ..opts()
    };
    check_kv_against_log(&files()[0], &o, 1);
}

#[test]
fn kv_cache_bytes_with_sliding_window_equal_llama_cpp_log() {
    let _g = serial();
    use kiln_fixtures::checkpoint::{default_for, Arch, Vocab};
    let dir = tmp().join("gemma3");
    let _ = std::fs::remove_dir_all(&dir);
    kiln_fixtures::checkpoint::write_checkpoint(
        &default_for(Arch::Gemma3, Vocab::LlamaSpm(tokenizer_model())),
        &dir,
    )
    .unwrap();
    let file = tmp().join("gemma3-Q8_0.gguf");
    convert(&dir, FileType::Q8_0, &file);
    // 1024 cells for the global layer, pad256(window + 512) for the five sliding ones
    let o = BenchOptions {
        n_prompt: vec![1024],
        n_gen: vec![8],
        repetitions: 1,
        ..opts()
    };
    check_kv_against_log(&file, &o, 2);
}

/// llama-bench draws its tokens from C's unseeded rand(); kiln's generator is the same sequence.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn token_generator_is_glibc_rand() {
    extern "C" {
        fn srand(seed: std::ffi::c_uint);
        fn rand() -> std::ffi::c_int;
    }
    let _g = serial();
    for seed in [1u32, 42, 0xdead_beef] {
        let mut ours = bench::CRand::new(seed);
        unsafe { srand(seed) };
        for i in 0..100_000 {
            assert_eq!(ours.next(), unsafe { rand() }, "seed {seed}, draw {i}");
        }
    }
}

/// The CPU backend's features (from its registry's `ggml_backend_get_features`) are what
/// `llama_print_system_info` prints for the CPU, and this build has some.
#[test]
fn cpu_features_are_what_llama_print_system_info_says() {
    use kiln::llama::raw;
    kiln::llama::backend();
    let info = raw::system_info();
    assert!(info.contains("CPU : "), "{info}");
    let features = raw::cpu_features();
    assert!(!features.is_empty(), "{info}");
    assert_eq!(raw::parse_system_info(&info, "CPU"), features, "{info}");
    let line = raw::cpu_features_line();
    for (name, _) in &features {
        assert!(
            line.split(' ').any(|w| w.split('=').next() == Some(name)),
            "{line}"
        );
    }
    eprintln!("{info}\n{line}");
}

// ---- kiln bench --parallel: llama-batched-bench's measurement ----

use kiln::runner::BatchedResult;

fn batched_opts(parallel: Vec<u32>, pp: u32, tg: u32, shared: bool) -> BenchOptions {
    BenchOptions {
        n_prompt: vec![pp],
        n_gen: vec![tg],
        threads: vec![2],
        parallel,
        pp_shared: shared,
        ..Default::default()
    }
}

// ---- speculative decoding (`kiln bench TARGET --draft DRAFT`) ----

fn draft_opts(n_gen: u32, draft_max: u32) -> draft::DraftOptions {
    draft::DraftOptions {
        draft_max,
        n_gen,
        n_prompts: 4,
        prompt_len: 64,
        threads: 2,
        ..Default::default()
    }
}

fn run_batched(file: &Path, o: &BenchOptions) -> (Vec<BatchedResult>, Vec<String>) {
    let mut lines = Vec::new();
    let r = bench::run_batched(&[file.to_path_buf()], o, &mut |l| lines.push(l.to_string()))
        .unwrap_or_else(|e| panic!("batched bench: {e:#}"));
    (r, lines)
}

/// llama-batched-bench's definitions on one row; `f16_cell` is the fixture's KV bytes per cell.
fn check_batched(r: &BatchedResult, shared: bool) {
    let what = format!("pp {} tg {} pl {}", r.pp, r.tg, r.pl);
    let (pp, tg, pl) = (r.pp as f64, r.tg as f64, r.pl as f64);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    assert!(r.error.is_none(), "{what}: {:?}", r.error);
    assert_eq!(r.is_pp_shared, shared as i32, "{what}");
    assert_eq!(r.n_kv as u64, r.pl as u64 * (r.pp + r.tg) as u64, "{what}");
    assert!(r.n_kv <= r.n_kv_max, "{what}");
    for (name, v) in [
        ("t_pp", r.t_pp),
        ("t_tg", r.t_tg),
        ("speed_pp", r.speed_pp),
        ("speed_tg", r.speed_tg),
        ("speed", r.speed),
        ("speed_tg_per_seq", r.speed_tg_per_seq),
    ] {
        assert!(v.is_finite() && v > 0.0, "{what}: {name} = {v}");
    }
    let prompt = if shared { pp } else { pl * pp };
    assert!(close(r.speed_pp, prompt / r.t_pp), "{what}: S_PP");
    assert!(close(r.speed_tg, pl * tg / r.t_tg), "{what}: S_TG");
    assert!(close(r.t, r.t_pp + r.t_tg), "{what}: T");
    assert!(close(r.speed, (prompt + pl * tg) / r.t), "{what}: S");
    assert!(
        close(r.speed_tg_per_seq, r.speed_tg / pl),
        "{what}: S_TG/seq"
    );
    // tokens submitted in the timed phases, counted as they were added
    assert_eq!(r.tokens_counted_pp, prompt as u64, "{what}");
    assert_eq!(r.tokens_counted_tg, (pl * tg) as u64, "{what}");
    // the fixture's KV cache: 4 layers x (K + V) x 128 values x 2 bytes (f16) per cell, and the
    // setting fills n_kv cells (pl streams of pp + tg)
    assert_eq!(r.kv_cache_bytes, r.n_kv as u64 * 4 * 2 * 128 * 2, "{what}");
}

#[test]
fn batched_rows_follow_llama_batched_bench() {
    let _g = serial();
    let file = &files()[1];
    let o = BenchOptions {
        worker: None,
        ..batched_opts(vec![1, 2, 4], 16, 4, false)
    };
    let ((rs, lines), log) = with_log(|| run_batched(file, &o));
    assert_eq!(
        rs.iter().map(|r| (r.pp, r.tg, r.pl)).collect::<Vec<_>>(),
        [(16, 4, 1), (16, 4, 2), (16, 4, 4)]
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    for r in &rs {
        check_batched(r, false);
        assert_eq!(r.model_filename, file.display().to_string());
        assert_eq!((r.n_threads, r.n_threads_batch), (2, 2));
        assert_eq!((r.n_batch, r.n_ubatch, r.flash_attn), (2048, 512, 0));
        // n_ctx = max(npl) * (pp + tg) = 80, n_seq_max = 4: llama.cpp pads each sequence's
        // stream to 256 cells, so n_kv_max = 4 * 256.
        assert_eq!(r.n_kv_max, 1024);
    }
    assert_eq!(
        rs.iter().map(|r| r.n_kv).collect::<Vec<_>>(),
        [20, 40, 80],
        "N_KV = pl * (pp + tg)"
    );
    assert!(rs
        .windows(2)
        .all(|w| w[1].kv_cache_bytes > w[0].kv_cache_bytes));
    // the allocated cache is what llama.cpp logs for the one context
    assert_eq!(log.matches("llama_context: constructing").count(), 1);
    let (mib, n) = logged_kv_mib(&log);
    assert!(n >= 1, "{log}");
    for r in &rs {
        assert_eq!(r.kv_cache_bytes_allocated, 1024 * 4 * 2 * 128 * 2);
        let ours = r.kv_cache_bytes_allocated as f64 / 1048576.0;
        assert!(
            (ours - mib).abs() <= 0.005 * n as f64 + 1e-9,
            "{ours} vs {mib}"
        );
    }
    // JSONL with llama-batched-bench's field names, and the markdown table with its columns
    let jsonl = kiln::report::batched_table::to_jsonl(&rs);
    assert_eq!(jsonl.lines().count(), 3);
    for line in jsonl.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for k in [
            "n_kv_max",
            "n_batch",
            "n_ubatch",
            "flash_attn",
            "is_pp_shared",
            "n_gpu_layers",
            "n_threads",
            "n_threads_batch",
            "pp",
            "tg",
            "pl",
            "n_kv",
            "t_pp",
            "speed_pp",
            "t_tg",
            "speed_tg",
            "t",
            "speed",
            "kv_cache_bytes",
        ] {
            assert!(v.get(k).is_some(), "{k} missing in {line}");
        }
        assert!(v["is_pp_shared"].is_i64(), "{line}");
    }
    let md = kiln::report::batched_table::to_markdown(&rs);
    let header = md
        .lines()
        .find(|l| l.contains("S_TG t/s"))
        .unwrap_or_else(|| panic!("{md}"));
    for c in [
        "PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "T s", "S t/s", "S_TG/seq",
        "KV MiB",
    ] {
        assert!(header.contains(c), "{c}: {header}");
    }
    assert!(md.contains("n_kv_max = 1024"), "{md}");
    assert!(md.contains("KV allocated = 2.00 MiB"), "{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("|    16 |")).collect();
    assert_eq!(rows.len(), 3, "{md}");
    assert!(rows[2].contains("|    4 |     80 |"), "{}", rows[2]);
}

#[test]
fn batched_with_a_shared_prompt() {
    let _g = serial();
    let o = batched_opts(vec![1, 3], 12, 3, true);
    let (rs, _) = run_batched(&files()[0], &o);
    assert_eq!(rs.len(), 2);
    for r in &rs {
        check_batched(r, true);
    }
    // one prompt decoded, whatever the number of sequences
    assert_eq!(rs[1].tokens_counted_pp, 12);
    assert_eq!(rs[1].tokens_counted_tg, 9);
    assert_eq!(rs[1].n_kv, 3 * (12 + 3));
}

#[test]
fn batched_skips_settings_the_context_cannot_hold_and_checks_options() {
    let _g = serial();
    let f = &files()[1];
    // a context of 256 cells for one sequence of 300 + 8: skipped, as llama-batched-bench
    let o = BenchOptions {
        parallel_ctx: 256,
        ..batched_opts(vec![1], 300, 8, false)
    };
    let (rs, lines) = run_batched(f, &o);
    assert!(rs.is_empty(), "{rs:?}");
    assert!(lines.iter().any(|l| l.contains("skipped")), "{lines:?}");
    for (o, want) in [
        (batched_opts(vec![0], 8, 4, false), "--parallel"),
        (batched_opts(vec![1], 0, 4, false), "-p"),
        (batched_opts(vec![1], 8, 0, false), "-n"),
        (batched_opts(vec![1, 300], 8, 4, false), "LLAMA_MAX_SEQ"),
    ] {
        let e = bench::run_batched(std::slice::from_ref(f), &o, &mut |_| {}).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{e:#}");
    }
}

/// `kiln bench --parallel` on the command line: each file in its worker, JSONL on stdout, and
/// the normal bench's output when --parallel is absent is unchanged (a JSON list).
#[test]
fn cli_bench_parallel() {
    let _g = serial();
    let f = &files()[1];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench",
            "--json",
            "--parallel",
            "1,2",
            "-p",
            "8",
            "-n",
            "4",
            "-t",
            "2",
        ])
        .arg(f)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rs: Vec<BatchedResult> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rs.iter().map(|r| r.pl).collect::<Vec<_>>(), [1, 2]);
    for r in &rs {
        check_batched(r, false);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench",
            "--parallel",
            "2",
            "--pps",
            "-p",
            "8",
            "-n",
            "4",
            "-t",
            "2",
        ])
        .arg(f)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        md.contains("is_pp_shared = 1") && md.contains("S_TG/seq t/s"),
        "{md}"
    );
}

/// Compares a speculative output with the target's plain greedy output of the same prompt.
/// Equal: true. Else the first token where they differ must be a near-tie of the target's
/// logits (the two tokens' logits within 1e-2 standard deviations of the logits): llama.cpp's
/// batched evaluation (the target checking `draft_max + 1` tokens at once) and its one-token
/// decode take different matmul paths whose last bits differ, which on the random-weight
/// fixture (flat logits, many near-ties) can flip an argmax. Anything else is a bug. False.
fn same_or_near_tie(pair: &draft::Pair, prompt: &[i32], plain: &[i32], spec: &[i32]) -> bool {
    assert_eq!(plain.len(), spec.len());
    let Some(j) = (0..plain.len()).find(|&j| plain[j] != spec[j]) else {
        return true;
    };
    let seq: Vec<i32> = prompt.iter().chain(&plain[..j]).copied().collect();
    let l = pair.target_logits(&seq).unwrap();
    let n = l.len() as f64;
    let mean = l.iter().map(|&x| x as f64).sum::<f64>() / n;
    let sd = (l.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let (a, b) = (l[plain[j] as usize] as f64, l[spec[j] as usize] as f64);
    let max = l.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
    assert!(
        (a - b).abs() <= 1e-2 * sd && (max - a.max(b)) <= 1e-2 * sd,
        "token {j}: plain chose {} ({a}), speculative {} ({b}), max {max}, sd {sd}: not a \
         near-tie, speculative decoding changed the output",
        plain[j],
        spec[j]
    );
    eprintln!("token {j}: near-tie ({a} vs {b}, sd {sd}) decided differently by the batched pass");
    false
}

/// The q8_0 target with the q4_0 draft: for every prompt the speculative output is the
/// target's own greedy output (the plain path of the same context, one token per decode),
/// token for token up to a near-tie decided differently by the batched pass (see
/// [`same_or_near_tie`]); the counts add up; the measurement agrees.
#[test]
fn speculative_output_is_the_target_greedy_output() {
    let _g = serial();
    let [q8, q4] = files();
    let n = 48;
    let pair = draft::Pair::load(q8, q4, &draft_opts(n, 5)).unwrap();
    let prompts = pair.prompts(kiln::runner::eval::default_text()).unwrap();
    assert_eq!(prompts.len(), 4);
    let mut total = draft::SpecStats::default();
    let mut identical = 0;
    for p in &prompts {
        assert_eq!(p.len(), 64);
        let (plain, _) = pair.greedy(p, n as usize).unwrap();
        let (spec, s, _) = pair.speculative(p, n as usize).unwrap();
        assert_eq!(spec.len(), n as usize);
        identical += usize::from(same_or_near_tie(&pair, p, &plain, &spec));
        assert!(s.accepted <= s.drafted, "{s:?}");
        // every step generates its accepted tokens and one of the target's
        assert_eq!(s.accepted + s.steps, n as u64, "{s:?}");
        total.drafted += s.drafted;
        total.accepted += s.accepted;
    }
    eprintln!("{identical} of 4 prompts identical; {total:?}");
    assert!(total.drafted > 0);
    let mut lines = Vec::new();
    let r = draft::run(q8, q4, &draft_opts(n, 5), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(r.identical, identical == 4, "{r:?}");
    assert!((0.0..=1.0).contains(&r.acceptance), "{r:?}");
    assert_eq!(
        r.n_accepted, total.accepted,
        "deterministic: the same counts"
    );
    assert_eq!(r.n_drafted, total.drafted);
    assert_eq!(r.tokens_generated, 4 * n as u64);
    assert!(
        r.plain_ts > 0.0 && r.draft_ts > 0.0 && r.speedup > 0.0,
        "{r:?}"
    );
    assert!((r.speedup - r.draft_ts / r.plain_ts).abs() < 1e-9 * r.speedup);
    assert!((r.mean_accepted - r.n_accepted as f64 / r.n_steps as f64).abs() < 1e-12);
    assert_eq!(lines.len(), 1, "{lines:?}");
}

/// The draft being the target itself: every drafted token is accepted (acceptance 1, each
/// step generating draft_max + 1 tokens, the last fewer) for every prompt whose speculative
/// output is the plain one; a prompt where they differ must differ at a near-tie (a drafted
/// token, the one-token decode's choice, rejected by the batched pass).
#[test]
fn draft_equal_to_target_accepts_every_token() {
    let _g = serial();
    let [q8, _] = files();
    let (n, k) = (40u32, 4u32);
    let pair = draft::Pair::load(q8, q8, &draft_opts(n, k)).unwrap();
    let mut all_identical = true;
    for p in pair.prompts(kiln::runner::eval::default_text()).unwrap() {
        let (plain, _) = pair.greedy(&p, n as usize).unwrap();
        let (spec, s, _) = pair.speculative(&p, n as usize).unwrap();
        if same_or_near_tie(&pair, &p, &plain, &spec) {
            assert_eq!(s.accepted, s.drafted, "{s:?}");
            assert_eq!(s.steps, n.div_ceil(k + 1) as u64, "{s:?}");
        } else {
            all_identical = false;
            assert!(s.accepted < s.drafted, "{s:?}");
        }
    }
    let r = draft::run(q8, q8, &draft_opts(n, k), &mut |_| {}).unwrap();
    if all_identical {
        assert_eq!(r.acceptance, 1.0, "{r:?}");
    } else {
        assert!(r.acceptance > 0.8, "{r:?}");
    }
    assert_eq!(r.identical, all_identical);
}

/// `kiln bench TARGET --draft DRAFT` end to end (the pair in a worker process): the table, the
/// JSON, and a draft with another vocabulary or a missing file as a failed row.
#[test]
fn cli_bench_with_draft() {
    let _g = serial();
    let [q8, q4] = files();
    let kiln = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .output()
            .unwrap()
    };
    let (n, t) = ("-n".as_ref(), "16".as_ref());
    let out = kiln(&[
        "bench".as_ref(),
        q8.as_os_str(),
        "--draft".as_ref(),
        q4.as_os_str(),
        "--draft-max".as_ref(),
        "3".as_ref(),
        n,
        t,
        "-t".as_ref(),
        "2".as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| target"), "{stdout}");
    assert!(stdout.contains("llama-Q8_0.gguf"), "{stdout}");
    assert!(stdout.contains("llama-Q4_0.gguf"), "{stdout}");
    assert!(stdout.contains("acceptance"), "{stdout}");
    let out = kiln(&[
        "bench".as_ref(),
        q8.as_os_str(),
        "--draft".as_ref(),
        q4.as_os_str(),
        n,
        t,
        "-t".as_ref(),
        "2".as_ref(),
        "--json".as_ref(),
    ]);
    assert!(out.status.success());
    let r: Vec<draft::DraftResult> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].error.is_none(), "{:?}", r[0]);
    assert_eq!(r[0].draft_max, 8);
    assert_eq!(r[0].tokens_generated, 4 * 16);
    // a missing draft: a failed row naming it, exit status 1
    let missing = tmp().join("no-such-draft.gguf");
    let out = kiln(&[
        "bench".as_ref(),
        q8.as_os_str(),
        "--draft".as_ref(),
        missing.as_os_str(),
        n,
        t,
    ]);
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("no-such-draft.gguf"), "{all}");
}
