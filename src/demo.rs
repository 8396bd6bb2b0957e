//! `kiln demo`: quantize a deterministic weight matrix to every format with kiln and with ggml,
//! and show size, error, whether the bytes agree, and the time each took.

use crate::ggml;
use kiln_kernels::GgmlType;
use std::time::Instant;

/// A deterministic matrix that looks like a transformer weight: Gaussian with a few outliers.
pub fn synthetic_weights(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..rows * cols)
        .map(|i| {
            let g = rng.gaussian() * 0.02;
            if i % 997 == 0 {
                g * 12.0
            } else {
                g
            }
        })
        .collect()
}

/// A small, fast, deterministic generator (SplitMix64) for test and demo data.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

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
        let se: f64 = x.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
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
