//! Helpers shared by the integration tests.

pub mod fixtures;
pub mod reference;

use kiln::gguf::GgufFile;
use std::path::{Path, PathBuf};

/// `name` under the test binary's temporary folder's `module`, emptied (or created).
pub fn fresh_dir(module: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(module)
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The test binary's temporary folder's `module`, created if missing (its files kept, so that
/// the module's tests can share what they write once).
pub fn module_dir(module: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(module);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tensor `t` of the quantized file `g`: its weights as the f32 GGUF `reference` holds them,
/// and as ggml (the oracle) dequantizes `g`'s bytes (`ty`: their type).
pub fn reference_and_dequantized(
    reference: &GgufFile,
    g: &GgufFile,
    t: &kiln::gguf::TensorInfo,
    ty: kiln::kernels::GgmlType,
) -> (Vec<f32>, Vec<f32>) {
    let r = reference
        .tensors()
        .iter()
        .find(|x| x.name == t.name)
        .unwrap();
    let x: Vec<f32> = reference
        .data(r)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (x, kiln_fixtures::ggml::dequantize(ty, g.data(t)))
}

/// A tensor of a GGUF file: name, dims, type label, bytes.
pub type Tensor = (String, Vec<u64>, String, Vec<u8>);

/// Every tensor of `g`, in file order.
pub fn tensors(g: &GgufFile) -> Vec<Tensor> {
    g.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.dims.clone(),
                t.ty.label(),
                g.data(t).to_vec(),
            )
        })
        .collect()
}

/// Every tensor of the GGUF file at `path`, by name.
pub fn tensors_of(path: &Path) -> Vec<Tensor> {
    let mut v = tensors(&GgufFile::open(path).unwrap());
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

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
