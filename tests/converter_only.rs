//! The converter without llama.cpp: `cargo build --release --no-default-features` with cmake, a
//! C++ compiler and libclang made unavailable (any attempt to build llama.cpp fails), then the
//! fixture checkpoint converted by that binary must be byte-identical to the full build's
//! output, and the runner's commands must say clearly that they need llama.cpp.

use std::path::Path;
use std::process::Command;

#[test]
fn converter_builds_and_converts_without_llama_cpp() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("converter-only");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("converter-only-target");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--no-default-features",
            "--bin",
            "kiln",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root)
        .env("CMAKE", "/bin/false")
        .env("CXX", "/bin/false")
        .env("LIBCLANG_PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the converter does not build without llama.cpp:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converter = target.join("release/kiln");

    let ck = tmp.join("ck");
    crate::common::fixtures::llama_checkpoint(&ck);
    let convert = |exe: &Path, input: &Path, ty: &str, name: &str| {
        let o = Command::new(exe)
            .args(["quantize", "--no-checksum", "-t", ty])
            .arg(input)
            .arg("-o")
            .arg(tmp.join(name))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{} quantize {ty}: {}",
            exe.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read(tmp.join(name)).unwrap()
    };
    let full = Path::new(env!("CARGO_BIN_EXE_kiln"));
    for ty in ["q4_K_M", "q8_0"] {
        let a = convert(&converter, &ck, ty, &format!("converter-{ty}.gguf"));
        let b = convert(full, &ck, ty, &format!("full-{ty}.gguf"));
        assert!(a == b, "{ty}: the converter-only file differs");
    }
    // Requantizing a GGUF of kiln's types needs no ggml either.
    let f16 = tmp.join("full-f16.gguf");
    convert(full, &ck, "f16", "full-f16.gguf");
    let a = convert(&converter, &f16, "q4_0", "converter-from-f16.gguf");
    let b = convert(full, &f16, "q4_0", "full-from-f16.gguf");
    assert!(a == b, "requantized files differ");

    let o = Command::new(&converter)
        .args(["inspect"])
        .arg(tmp.join("converter-q4_K_M.gguf"))
        .output()
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("q4_K"));
    let o = Command::new(&converter)
        .args(["bench"])
        .arg(tmp.join("converter-q4_K_M.gguf"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("`kiln bench` needs llama.cpp"),
        "{e}"
    );
}
