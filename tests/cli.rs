//! The `kiln` binary as a user runs it: exit codes, one-line errors, signals.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn kiln() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
}

fn tmp(name: &str) -> PathBuf {
    crate::common::fresh_dir("cli", name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed run: non-zero exit, an error line naming `needle`, no panic.
fn assert_clean_failure(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "should fail: {e}");
    assert!(
        e.contains("kiln: error:") && e.contains(needle),
        "stderr: {e}"
    );
    assert!(!e.contains("panicked"), "panic: {e}");
}

fn fixture(dir: &Path, hidden: usize, layers: usize) {
    crate::common::fixtures::sized_llama_checkpoint(dir, hidden, 1024, layers, 8, 4);
}

#[test]
fn bad_invocations_fail_with_one_clear_line() {
    let d = tmp("bad");
    let o = kiln()
        .args(["quantize", "-t", "q4_K_M"])
        .arg(d.join("nope"))
        .output()
        .unwrap();
    assert_clean_failure(&o, "no such file");
    let o = kiln()
        .args(["quantize", "-t", "q9_K"])
        .arg(&d)
        .output()
        .unwrap();
    assert_clean_failure(&o, "unknown type");
    let o = kiln()
        .args(["quantize", "-t", "q4_0"])
        .arg(&d)
        .output()
        .unwrap();
    assert_clean_failure(&o, "no .safetensors files");
    let junk = d.join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    let o = kiln().arg("inspect").arg(&junk).output().unwrap();
    assert_clean_failure(&o, "bad magic");
    assert!(
        std::fs::read_dir(&d).unwrap().count() == 1,
        "nothing new written"
    );
}

#[test]
fn convert_inspect_and_dry_run_from_the_command_line() {
    let d = tmp("ok");
    let ck = d.join("tiny");
    fixture(&ck, 256, 2);
    let o = kiln()
        .args(["quantize", "-t", "Q4_K", "--dry-run"])
        .arg(&ck)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains("blk.1.ffn_down.weight") && plan.contains("bits per weight"),
        "{plan}"
    );
    assert!(
        !d.join("tiny-Q4_K_M.gguf").exists(),
        "dry run writes nothing"
    );
    let o = kiln()
        .args(["quantize", "-t", "Q4_K"])
        .arg(&ck)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.join("tiny-Q4_K_M.gguf");
    assert!(out.exists());
    let o = kiln()
        .args(["quantize", "-t", "Q4_K"])
        .arg(&ck)
        .output()
        .unwrap();
    assert_clean_failure(&o, "already exists");
    let o = kiln()
        .args(["inspect", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = j["tensors"].as_array().unwrap();
    assert!(t
        .iter()
        .any(|t| t["name"] == "blk.0.attn_q.weight" && t["type"] == "q4_K"));
    assert!(t.iter().all(|t| t["offset"].as_u64().unwrap() % 32 == 0));
    assert_eq!(j["metadata"]["general.file_type"], 15);
}

#[test]
fn sigint_during_a_conversion_leaves_no_file() {
    interrupted_conversion_leaves_no_file("INT", 1);
}

#[test]
fn sigterm_during_a_conversion_leaves_no_file() {
    interrupted_conversion_leaves_no_file("TERM", 1);
}

/// A second Ctrl-C exits at once, and still takes the temporary file along.
#[test]
fn double_sigint_leaves_no_file() {
    interrupted_conversion_leaves_no_file("INT", 2);
}

fn interrupted_conversion_leaves_no_file(signal: &str, times: usize) {
    let d = tmp(&format!("sig{signal}{times}"));
    let ck = d.join("big");
    fixture(&ck, 1024, 12);
    let out = d.join("out.gguf");
    let mut child = kiln()
        .args(["quantize", "-t", "q2_K", "--threads", "1", "-o"])
        .arg(&out)
        .arg(&ck)
        .spawn()
        .unwrap();
    // Wait for the temporary file to appear, then interrupt.
    let start = Instant::now();
    let partial = || {
        std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    };
    while !partial() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary file appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    for _ in 0..times {
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap()
            .success());
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "SIG{signal}: an interrupted conversion fails"
    );
    assert!(!out.exists(), "no output file");
    assert!(!partial(), "no temporary file left");
}
