//! Deterministic synthetic data for the demo, the tests and the benchmarks: weight matrices that
//! look like a transformer's, and the hard cases that break quantizers.

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

/// The inputs that stress a quantizer, each a function of (rows, cols, seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Gaussian weights with a few outliers, like a real layer.
    Weights,
    /// Every weight zero.
    Zeros,
    /// Each row one constant (positive, negative or zero).
    ConstantRows,
    /// Small weights with one huge outlier in every 32-weight block.
    OutlierPerBlock,
    /// Subnormal magnitudes (around 1e-40).
    Subnormal,
    /// Alternating signs with a slowly varying magnitude.
    AlternatingSigns,
    /// Magnitudes in the tens of thousands (as large as f16 scales allow for every format).
    Large,
    /// Multiples of 1/8: exact ties for every rounding step.
    Ties,
    /// Mostly zeros, a few non-zero weights.
    Sparse,
    /// Each 32-weight block scaled by a different power of ten, 1e-6 to 1e3.
    MixedScales,
    /// Uniform in [-1, 1).
    Uniform,
}

impl Case {
    pub const ALL: [Case; 11] = [
        Case::Weights,
        Case::Zeros,
        Case::ConstantRows,
        Case::OutlierPerBlock,
        Case::Subnormal,
        Case::AlternatingSigns,
        Case::Large,
        Case::Ties,
        Case::Sparse,
        Case::MixedScales,
        Case::Uniform,
    ];

    /// `rows * cols` weights of this case.
    pub fn generate(self, rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64(seed ^ 0x6b69_6c6e);
        let n = rows * cols;
        match self {
            Case::Weights => synthetic_weights(rows, cols, seed),
            Case::Zeros => vec![0.0; n],
            Case::ConstantRows => (0..rows)
                .flat_map(|r| {
                    let c = match r % 4 {
                        0 => 0.0,
                        1 => 0.75,
                        2 => -1.5e-3,
                        _ => rng.gaussian(),
                    };
                    std::iter::repeat_n(c, cols)
                })
                .collect(),
            Case::OutlierPerBlock => (0..n)
                .map(|i| {
                    let g = rng.gaussian() * 0.01;
                    if i % 32 == (i / 32) % 32 {
                        g.signum() * 30.0 + g
                    } else {
                        g
                    }
                })
                .collect(),
            Case::Subnormal => (0..n).map(|_| rng.gaussian() * 1.0e-40).collect(),
            Case::AlternatingSigns => (0..n)
                .map(|i| {
                    let m = 0.5 + (i as f32 * 0.001).sin().abs();
                    if i % 2 == 0 {
                        m
                    } else {
                        -m
                    }
                })
                .collect(),
            Case::Large => (0..n).map(|_| rng.gaussian() * 1.0e4).collect(),
            Case::Ties => (0..n)
                .map(|_| ((rng.next_u64() % 33) as f32 - 16.0) / 8.0)
                .collect(),
            Case::Sparse => (0..n)
                .map(|_| {
                    if rng.next_u64().is_multiple_of(50) {
                        rng.gaussian()
                    } else {
                        0.0
                    }
                })
                .collect(),
            Case::MixedScales => {
                let mut scale = 1.0f32;
                (0..n)
                    .map(|i| {
                        if i % 32 == 0 {
                            scale = 10f32.powi((rng.next_u64() % 10) as i32 - 6);
                        }
                        rng.gaussian() * scale
                    })
                    .collect()
            }
            Case::Uniform => (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect(),
        }
    }
}

/// Importance weights like llama-imatrix's: positive, spread over orders of magnitude, with
/// some columns zero when `with_zeros`.
pub fn importance(cols: usize, seed: u64, with_zeros: bool) -> Vec<f32> {
    let mut rng = SplitMix64(seed ^ 0x696d_6174);
    (0..cols)
        .map(|i| {
            if with_zeros && i % 17 == 3 {
                0.0
            } else {
                let u = rng.uniform() * 4.0;
                u * u + 1.0e-3
            }
        })
        .collect()
}
