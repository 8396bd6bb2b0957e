//! `kiln demo`: quantize a deterministic weight matrix to every format with kiln and with ggml,
//! and show size, error, whether the bytes agree, and the time each took.

use crate::ggml;
use crate::synth::synthetic_weights;
use kiln_kernels::GgmlType;
use std::time::Instant;

/// One format's line in the demo table.
pub struct DemoRow {
    pub ty: GgmlType,
    pub bytes: usize,
    pub rmse: f64,
    pub identical: bool,
    pub kiln_ms: f64,
    pub ggml_ms: f64,
}

/// Runs every format over a `rows` x `cols` matrix. `ggml_ms` is ggml on one thread; `kiln_ms`
/// is kiln on all of rayon's threads.
pub fn run(rows: usize, cols: usize) -> anyhow::Result<Vec<DemoRow>> {
    let x = synthetic_weights(rows, cols, 42);
    let mut out = Vec::new();
    for ty in GgmlType::ALL {
        let row_bytes = ty
            .row_bytes(cols)
            .ok_or_else(|| anyhow::anyhow!("{cols} columns do not fit {ty} blocks"))?;
        let mut mine = vec![0u8; rows * row_bytes];
        let t = Instant::now();
        ty.quantize(&x, cols, None, &mut mine)?;
        let kiln_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let theirs = ggml::quantize(ty, &x, cols, None);
        let ggml_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut back = vec![0f32; x.len()];
        ty.dequantize(&mine, cols, &mut back)?;
        let se: f64 = x
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        out.push(DemoRow {
            ty,
            bytes: mine.len(),
            rmse: (se / x.len() as f64).sqrt(),
            identical: mine == theirs,
            kiln_ms,
            ggml_ms,
        });
    }
    Ok(out)
}
