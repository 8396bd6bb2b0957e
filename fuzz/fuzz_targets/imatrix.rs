//! An importance-matrix file of arbitrary bytes (legacy binary or GGUF), as --imatrix reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kiln::imatrix::parse_legacy(data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imatrix.dat");
    std::fs::write(&path, data).unwrap();
    let _ = kiln::imatrix::load(&path);
});
