//! Helpers shared by the integration tests.

pub mod fixtures;
pub mod reference;

/// A `kiln bench`/`kiln eval --json` run over two files where `aborts.gguf` makes llama.cpp
/// abort: exit status 1, no panic, the one-line error naming it, and the JSON results on stdout.
pub fn one_of_two_failed<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> Vec<T> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("kiln: error: 1 of 2 files failed") && stderr.contains("aborts.gguf"),
        "{stderr}"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)))
}
