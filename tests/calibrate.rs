//! `kiln quantize --calibrate TEXT ./checkpoint`: the three steps in one command give the
//! bytes of the three done by hand (convert, `kiln imatrix`, `kiln quantize --imatrix`), and a
//! calibration text that cannot make a matrix is refused before any output.

use crate::common::fixtures::llama_checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("calibrate", name)
}

fn text() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/eval/text.txt")
}

fn kiln(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn calibrate_equals_imatrix_then_quantize_by_hand() {
    let d = tmp("same");
    let ck = d.join("ck");
    llama_checkpoint(&ck);
    let out = d.join("cal.gguf");
    let stdout = ok(
        &kiln(&[
            &"quantize",
            &"-t",
            &"q4_K_M",
            &ck,
            &"--calibrate",
            &text(),
            &"--threads",
            &"2",
            &"-o",
            &out,
        ]),
        "quantize --calibrate",
    );
    // which text, how many tokens and chunks
    let line = stdout
        .lines()
        .find(|l| l.starts_with("calibration text"))
        .unwrap_or_else(|| panic!("no calibration line in {stdout}"));
    assert!(line.contains(&*text().to_string_lossy()), "{line}");
    assert!(
        line.contains(" tokens, ") && line.contains("chunks of 512"),
        "{line}"
    );
    let imatrix = d.join("cal.imatrix.gguf");
    assert!(imatrix.exists());
    // nothing else left: the temporary conversion is gone
    assert_eq!(
        listing(&d),
        ["cal.gguf", "cal.imatrix.gguf", "ck"],
        "{:?}",
        listing(&d)
    );
    // "TEXT: N tokens, N / 512 chunks of 512 tokens used (...)"
    let n_tokens: usize = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {line}"));
    // By hand: the checkpoint (BF16) at BF16 ...
    let bf16 = d.join("hand-BF16.gguf");
    ok(
        &kiln(&[&"quantize", &"-t", &"bf16", &ck, &"-o", &bf16]),
        "convert",
    );
    let tokens = kiln::llama::tokenize(
        &kiln::llama::load(&bf16).unwrap(),
        &kiln::runner::imatrix::read_text(&text()).unwrap(),
        true,
    );
    assert_eq!(n_tokens, tokens.len(), "{line}");
    let chunks = n_tokens / 512;
    assert!(
        line.contains(&format!(
            "{chunks} chunks of 512 tokens used ({} tokens)",
            chunks * 512
        )),
        "{line}"
    );
    let g = kiln::llama::raw::read_imatrix_with_ggml(&imatrix).unwrap();
    assert_eq!(g.chunk_size, Some(512));
    let kept_im = std::fs::read(&imatrix).unwrap();
    let kept = std::fs::read(&out).unwrap();

    // ... kiln imatrix on it with llama-imatrix's defaults into the same path (the quantized
    // file records it), then kiln quantize --imatrix.
    ok(
        &kiln(&[
            &"imatrix",
            &bf16,
            &"--text",
            &text(),
            &"--threads",
            &"2",
            &"-o",
            &imatrix,
        ]),
        "imatrix",
    );
    assert!(
        std::fs::read(&imatrix).unwrap() == kept_im,
        "the importance matrices differ"
    );
    let hand = d.join("hand.gguf");
    ok(
        &kiln(&[
            &"quantize",
            &"-t",
            &"q4_K_M",
            &ck,
            &"--imatrix",
            &imatrix,
            &"--threads",
            &"2",
            &"-o",
            &hand,
        ]),
        "quantize --imatrix",
    );
    assert!(
        std::fs::read(&hand).unwrap() == kept,
        "--calibrate's file differs from the one made by hand"
    );
    // llama-quantize's record of the matrix
    let q = kiln::gguf::GgufFile::open(&out).unwrap();
    let md = q.metadata();
    let s = |k: &str| md.get(k).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(
        s("quantize.imatrix.file"),
        Some(imatrix.display().to_string())
    );
    assert_eq!(
        s("quantize.imatrix.dataset"),
        Some(text().display().to_string())
    );
    assert_eq!(
        md.get("quantize.imatrix.chunks_count"),
        Some(&kiln::gguf::Value::U32(g.chunk_count.unwrap()))
    );
}

/// Empty, newline-only, non-UTF-8 and too short texts: exit status 1, one error line naming the
/// text and the problem, and the folder as it was (no output, no matrix, no temporary file).
#[test]
fn calibration_texts_that_cannot_calibrate_are_refused() {
    let d = tmp("refused");
    let ck = d.join("ck");
    llama_checkpoint(&ck);
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty", b"", "empty"),
        ("newline", b"\n", "empty"),
        ("latin1", b"caf\xe9 au lait, encore un caf\xe9", "not UTF-8"),
        (
            "short",
            b"A few words, far fewer than one chunk of 512 tokens.",
            "shorter than one chunk",
        ),
    ];
    for (name, bytes, says) in cases {
        let t = d.join(format!("{name}.txt"));
        std::fs::write(&t, bytes).unwrap();
        let before = listing(&d);
        let o = kiln(&[
            &"quantize",
            &"-t",
            &"q4_K_M",
            &ck,
            &"--calibrate",
            &t,
            &"-o",
            &d.join("out.gguf"),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: accepted");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{name}: {err}");
        assert!(
            errors[0].starts_with("kiln: error:")
                && errors[0].contains(says)
                && errors[0].contains(&*t.to_string_lossy()),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert_eq!(listing(&d), before, "{name}: the folder changed");
    }
}
