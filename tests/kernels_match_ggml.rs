//! Bit-exactness of kiln-kernels against ggml itself (`ggml_quantize_chunk` and `to_float`
//! through the llama.cpp bindings), for every format, with and without importance weights, on
//! many seeds and on the inputs that break quantizers.

use kiln::kernels::{GgmlType, KernelError, Simd};
use kiln_fixtures::ggml;
use kiln_fixtures::synth::{importance, Case, SplitMix64};

/// Row lengths to try for a format: several super-blocks for the 256-weight formats, and
/// lengths that are not multiples of 256 for the smaller blocks.
fn row_lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_weights() {
        256 => vec![256, 768, 4096],
        128 => vec![128, 640, 4096],
        64 => vec![64, 192, 640, 4096],
        32 => vec![32, 160, 640, 4096],
        _ => vec![1, 7, 640, 4096],
    }
}

fn kiln_quantize(ty: GgmlType, x: &[f32], cols: usize, qw: Option<&[f32]>) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / cols * ty.row_bytes(cols).unwrap()];
    ty.quantize(x, cols, qw, &mut out)
        .unwrap_or_else(|e| panic!("{ty}: kiln refused valid input: {e}"));
    out
}

/// The SIMD levels to compare with ggml for `ty`: every level this CPU supports when the
/// format has SIMD kernels, else the default one.
fn levels(ty: GgmlType) -> Vec<Simd> {
    if ty.has_simd_paths() {
        Simd::available()
    } else {
        vec![Simd::active()]
    }
}

fn kiln_quantize_at(
    simd: Simd,
    ty: GgmlType,
    x: &[f32],
    cols: usize,
    qw: Option<&[f32]>,
) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / cols * ty.row_bytes(cols).unwrap()];
    ty.quantize_at(simd, x, cols, qw, &mut out)
        .unwrap_or_else(|e| panic!("{ty} at {simd}: kiln refused valid input: {e}"));
    out
}

/// Number of blocks whose bytes differ.
fn differing_blocks(ty: GgmlType, a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.chunks(ty.block_bytes())
        .zip(b.chunks(ty.block_bytes()))
        .filter(|(x, y)| x != y)
        .count()
}

/// Number of positions where two float slices differ in their bits (so -0.0 != 0.0).
fn bitwise_differences(a: &[f32], b: &[f32]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

/// Quantizes with both, expecting identical bytes from kiln at every SIMD level ([`levels`]);
/// also checks the dequantized weights agree bit for bit. Returns a description of the
/// mismatch, if any.
fn compare(ty: GgmlType, x: &[f32], cols: usize, qw: Option<&[f32]>) -> Option<String> {
    let theirs = ggml::quantize(ty, x, cols, qw);
    if !ggml::validate_row_data(ty, &theirs) {
        return Some("ggml's own output fails its validation (input unsuitable)".into());
    }
    let mut mine = Vec::new();
    for simd in levels(ty) {
        mine = kiln_quantize_at(simd, ty, x, cols, qw);
        let bad = differing_blocks(ty, &mine, &theirs);
        if bad > 0 {
            let blocks = mine.len() / ty.block_bytes();
            return Some(format!(
                "{bad} of {blocks} blocks differ at SIMD level {simd}"
            ));
        }
    }
    let mut back = vec![0f32; x.len()];
    ty.dequantize(&mine, cols, &mut back).unwrap();
    let reference = ggml::dequantize(ty, &theirs);
    let diff = bitwise_differences(&back, &reference);
    (diff > 0).then(|| format!("{diff} dequantized weights differ"))
}

fn run_cases(with_imatrix: bool) {
    let mut failures = Vec::new();
    let mut compared = 0usize;
    for ty in GgmlType::ALL {
        if !with_imatrix && ty.requires_imatrix() {
            // ggml aborts without importance weights (ggml_quantize_requires_imatrix); kiln
            // refuses with an error.
            let x = Case::Weights.generate(2, 256, 0);
            let mut out = vec![0u8; 2 * ty.row_bytes(256).unwrap()];
            match ty.quantize(&x, 256, None, &mut out) {
                Err(KernelError::ImatrixRequired { .. }) => {}
                other => failures.push(format!("{ty} without imatrix: {other:?}")),
            }
            continue;
        }
        for cols in row_lengths(ty) {
            let rows = (32 * 1024 / cols).clamp(2, 64);
            for case in Case::ALL {
                let seeds: u64 = if case == Case::Weights { 6 } else { 2 };
                for seed in 0..seeds {
                    let x = case.generate(rows, cols, seed);
                    let qw = with_imatrix.then(|| importance(cols, seed, seed % 2 == 1));
                    compared += x.len();
                    if let Some(why) = compare(ty, &x, cols, qw.as_deref()) {
                        failures.push(format!("{ty} {case:?} cols={cols} seed={seed}: {why}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases differ from ggml:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(compared > 1_000_000, "compared {compared} weights");
}

#[test]
fn every_format_matches_ggml_without_imatrix() {
    run_cases(false);
}

#[test]
fn every_format_matches_ggml_with_imatrix() {
    run_cases(true);
}

/// The block statistics that SIMD reductions find differently from ggml's sequential loops
/// unless they take care: signed zeros as a block's min or max (ggml keeps the first one, and
/// its sign reaches the f16 min), and a largest magnitude present with both signs (ggml keeps
/// the first). Every block mixes +0.0, -0.0 and one or two magnitudes, in random positions,
/// and is compared with ggml at every SIMD level.
#[test]
fn signed_zeros_and_tied_extremes_match_at_every_simd_level() {
    let mut rng = SplitMix64(23);
    let cols = 1024;
    let rows = 16;
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let r = rng.next_u64();
            let block_kind = (i / 32) % 4;
            match (block_kind, r % 4) {
                (_, 0) => 0.0,
                (_, 1) => -0.0,
                (0, _) => 0.75,  // zeros and one positive value
                (1, _) => -0.75, // zeros and one negative value
                (2, _) => [0.5f32, -0.5][(r >> 8) as usize % 2], // a tied extreme
                _ => ((r >> 16) % 7) as f32 - 3.0, // small integers, ties
            }
        })
        .collect();
    // The formats ggml refuses to quantize without importance weights get some.
    let qw = importance(cols, 23, false);
    for ty in GgmlType::ALL.into_iter().filter(|t| t.has_simd_paths()) {
        let imatrix = ty.requires_imatrix().then_some(qw.as_slice());
        if let Some(why) = compare(ty, &x, cols, imatrix) {
            panic!("{ty}: {why}");
        }
    }
}

#[test]
fn many_seeds_of_realistic_weights_match() {
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        for seed in 100..130u64 {
            let x = Case::Weights.generate(8, 512, seed);
            let qw = importance(512, seed, false);
            for imatrix in [None, Some(qw.as_slice())] {
                if imatrix.is_none() && ty.requires_imatrix() {
                    continue;
                }
                if let Some(why) = compare(ty, &x, 512, imatrix) {
                    panic!("{ty} seed {seed} imatrix={}: {why}", imatrix.is_some());
                }
            }
        }
    }
}

#[test]
fn dequantize_matches_ggml_on_arbitrary_blocks() {
    // Random bytes are valid blocks of every format (any scale, any level); keep the f16 scales
    // finite so the comparison is about arithmetic, not NaN payloads.
    let mut rng = SplitMix64(7);
    for ty in GgmlType::ALL {
        let n_blocks = 64;
        let mut bytes: Vec<u8> = (0..n_blocks * ty.block_bytes())
            .map(|_| rng.next_u64() as u8)
            .collect();
        if ty == GgmlType::F32 {
            for c in bytes.chunks_exact_mut(4) {
                c[3] &= 0x3f; // exponent below all-ones
            }
        } else {
            for c in bytes.chunks_exact_mut(2) {
                c[1] &= 0x3f; // every 16-bit field is a finite f16/bf16
            }
        }
        let n = n_blocks * ty.block_weights();
        let mut mine = vec![0f32; n];
        ty.dequantize(&bytes, ty.block_weights(), &mut mine)
            .unwrap();
        let theirs = ggml::dequantize(ty, &bytes);
        let diff = bitwise_differences(&mine, &theirs);
        assert_eq!(diff, 0, "{ty}: {diff} of {n} dequantized weights differ");
    }
}

/// kiln's i-quant grid and sign tables (data files extracted from ggml's sources) are ggml's:
/// thousands of random blocks of each lattice format, every byte random except the f16 scale's
/// exponent, so every grid index, sign pattern and sub-block scale occurs many times (4096
/// blocks of 32 groups draw each of IQ1's 2048 points 64 times on average), dequantize bit for
/// bit as ggml's `to_float` does.
#[test]
fn iquant_grid_tables_match_ggml() {
    let mut rng = SplitMix64(11);
    let lattice_types = [
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
    ];
    for ty in lattice_types {
        let n_blocks = 4096;
        let bb = ty.block_bytes();
        let mut bytes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next_u64() as u8).collect();
        for block in bytes.chunks_exact_mut(bb) {
            if ty == GgmlType::IQ1_M {
                // The scale's top bits are the top nibble of the last u16: keep its exponent
                // below all-ones.
                block[bb - 1] &= 0x3f;
            } else {
                block[1] &= 0x3f; // d, the first field
            }
        }
        let n = n_blocks * ty.block_weights();
        let mut mine = vec![0f32; n];
        ty.dequantize(&bytes, ty.block_weights(), &mut mine)
            .unwrap();
        let theirs = ggml::dequantize(ty, &bytes);
        let diff = bitwise_differences(&mine, &theirs);
        assert_eq!(diff, 0, "{ty}: {diff} of {n} dequantized weights differ");
        assert!(
            mine.iter().all(|v| v.is_finite()),
            "{ty}: non-finite weights"
        );
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let x = Case::Weights.generate(300, 512, 9);
    let qw = importance(512, 9, false);
    for ty in GgmlType::ALL {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| kiln_quantize(ty, &x, 512, Some(&qw)))
        };
        let one = run(1);
        assert_eq!(one, run(3), "{ty}: 1 thread vs 3");
        assert_eq!(one, run(8), "{ty}: 1 thread vs 8");
    }
}

#[test]
fn bad_calls_are_errors_not_panics() {
    let x = vec![0.5f32; 512];
    let mut out = vec![0u8; 4096];
    // Row length not a multiple of the block size.
    assert!(matches!(
        GgmlType::Q4_K.quantize(&x, 128, None, &mut out),
        Err(KernelError::RowLength { .. })
    ));
    assert!(matches!(
        GgmlType::Q8_0.quantize(&x, 0, None, &mut out),
        Err(KernelError::RowLength { .. })
    ));
    // Input not whole rows.
    assert!(matches!(
        GgmlType::Q8_0.quantize(&x[..500], 64, None, &mut out),
        Err(KernelError::RowLength { .. }) | Err(KernelError::Ragged { .. })
    ));
    // Output too small.
    assert!(matches!(
        GgmlType::Q6_K.quantize(&x, 256, None, &mut out[..100]),
        Err(KernelError::OutputTooSmall {
            needed: 420,
            got: 100
        })
    ));
    // Importance matrix of the wrong length, or with a negative weight.
    assert!(matches!(
        GgmlType::Q4_K.quantize(&x, 256, Some(&[1.0; 100]), &mut out),
        Err(KernelError::ImatrixLength {
            expected: 256,
            got: 100
        })
    ));
    let mut qw = vec![1.0f32; 256];
    qw[5] = -1.0;
    assert!(matches!(
        GgmlType::Q4_K.quantize(&x, 256, Some(&qw), &mut out),
        Err(KernelError::BadImportance { column: 5, .. })
    ));
    // A format ggml quantizes only with an importance matrix.
    assert!(matches!(
        GgmlType::IQ2_XXS.quantize(&x, 256, None, &mut out),
        Err(KernelError::ImatrixRequired { format: "iq2_xxs" })
    ));
    // Dequantize with a ragged input.
    let mut f = vec![0f32; 512];
    assert!(GgmlType::Q4_0.dequantize(&out[..19], 32, &mut f).is_err());
}

#[test]
fn non_finite_input_names_row_and_column() {
    for ty in GgmlType::ALL {
        let qw = importance(256, 1, false);
        let imatrix = ty.requires_imatrix().then_some(qw.as_slice());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = Case::Weights.generate(4, 256, 1);
            x[2 * 256 + 77] = bad;
            let mut out = vec![0u8; 4 * ty.row_bytes(256).unwrap()];
            match ty.quantize(&x, 256, imatrix, &mut out) {
                Err(KernelError::NonFinite {
                    row: 2, column: 77, ..
                }) => {}
                other => panic!("{ty} with {bad}: {other:?}"),
            }
        }
    }
}

/// Weights too large for a format's f16 scales: ggml writes a block that its own validation
/// (and so llama.cpp) rejects; kiln refuses with an error instead of writing it.
#[test]
fn overflowing_scales_are_refused_exactly_where_ggml_output_is_invalid() {
    let qw = importance(256, 3, false);
    for ty in GgmlType::ALL {
        let imatrix = ty.requires_imatrix().then_some(qw.as_slice());
        for magnitude in [1.0e3f32, 1.0e5, 1.0e7, 1.0e9, 1.0e20, 3.0e38] {
            if ggml_aborts(ty, magnitude) {
                continue;
            }
            let x: Vec<f32> = Case::Weights
                .generate(2, 256, 3)
                .iter()
                .map(|v| v * magnitude)
                .collect();
            let ggml_ok = if ggml_may_abort(ty) {
                ggml_in_child(ty, magnitude, imatrix.is_some())
            } else {
                Some(ggml::validate_row_data(
                    ty,
                    &ggml::quantize(ty, &x, 256, imatrix),
                ))
            };
            let mut out = vec![0u8; 2 * ty.row_bytes(256).unwrap()];
            let kiln = ty.quantize(&x, 256, imatrix, &mut out);
            match (&kiln, ggml_ok) {
                (Ok(_), Some(true)) | (Err(KernelError::Overflow { .. }), Some(false) | None) => {}
                _ => panic!("{ty} at {magnitude:e}: kiln {kiln:?}, ggml output valid: {ggml_ok:?}"),
            }
            if ggml_may_abort(ty) && imatrix.is_none() {
                // The same with importance weights (the i-quants' other path).
                let qw = importance(256, 3, false);
                let kiln = ty.quantize(&x, 256, Some(&qw), &mut out);
                match (&kiln, ggml_in_child(ty, magnitude, true)) {
                    (Ok(_), Some(true))
                    | (Err(KernelError::Overflow { .. }), Some(false) | None) => {}
                    (_, ggml) => panic!(
                        "{ty} at {magnitude:e} with imatrix: kiln {kiln:?}, ggml output valid: {ggml:?}"
                    ),
                }
            }
        }
    }
}

/// The i-quants' searches abort the process (`GGML_ASSERT(grid_index >= 0)`) on weights so large
/// that their errors overflow; ggml runs those in a child process.
fn ggml_may_abort(ty: GgmlType) -> bool {
    // The IQ2/IQ1 lattice searches abort too, at the magnitudes `ggml_aborts` lists (measured),
    // which the test skips and `weights_that_abort_ggml_are_refused` covers: ggml builds their
    // neighbour maps anew in every process (seconds each), too slow for a child per case.
    matches!(
        ty,
        GgmlType::IQ3_XXS | GgmlType::IQ3_S | GgmlType::IQ4_NL | GgmlType::IQ4_XS
    )
}

/// The overflow test's input for `ty` at `magnitude` quantized by ggml in a child process (this
/// binary running [`ggml_quantize_in_child`]): whether ggml's output passes its validation, or
/// `None` when ggml aborted.
fn ggml_in_child(ty: GgmlType, magnitude: f32, imatrix: bool) -> Option<bool> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "kernels_match_ggml::ggml_quantize_in_child",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("GGML_NO_BACKTRACE", "1")
        .env(
            "KILN_GGML_CHILD",
            format!("{} {magnitude:e} {imatrix}", ty as u32),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("GGML_ASSERT"),
            "{ty}: the child failed without a ggml assertion"
        );
        return None;
    }
    if stdout.contains("ggml-valid=true") {
        Some(true)
    } else {
        assert!(stdout.contains("ggml-valid=false"), "child said: {stdout}");
        Some(false)
    }
}

/// The child side of [`ggml_in_child`] (does nothing in a normal test run).
#[test]
fn ggml_quantize_in_child() {
    let Ok(spec) = std::env::var("KILN_GGML_CHILD") else {
        return;
    };
    let mut it = spec.split(' ');
    let ty = GgmlType::from_id(it.next().unwrap().parse().unwrap()).unwrap();
    let magnitude: f32 = it.next().unwrap().parse().unwrap();
    let imatrix = it.next() == Some("true");
    let x: Vec<f32> = Case::Weights
        .generate(2, 256, 3)
        .iter()
        .map(|v| v * magnitude)
        .collect();
    let qw = imatrix.then(|| importance(256, 3, false));
    let q = ggml::quantize(ty, &x, 256, qw.as_deref());
    println!("ggml-valid={}", ggml::validate_row_data(ty, &q));
}

/// The IQ3 grid tables and sign table kiln ships (data files extracted from ggml-common.h)
/// are ggml's: crafted blocks that put every grid point and every sign pattern through ggml's
/// dequantizer give the tables' values, and kiln's dequantizer agrees.
#[test]
fn iq3_grid_tables_are_ggmls() {
    use kiln::kernels::iquants::grid3::{IQ3S_GRID, IQ3XXS_GRID, KSIGNS};
    // IQ3_XXS: d = 2, scale nibble 0, so each weight is 0.5 * grid value; 64 groups per block.
    let mut bytes = Vec::new();
    for blk in 0..4 {
        bytes.extend(0x4000u16.to_le_bytes()); // f16 2.0
        bytes.extend((0..64).map(|g| (blk * 64 + g) as u8));
        bytes.extend([0u8; 32]); // no signs, scale 0
    }
    let y = ggml::dequantize(GgmlType::IQ3_XXS, &bytes);
    for (k, p) in IQ3XXS_GRID.iter().enumerate() {
        for i in 0..4 {
            assert_eq!(y[4 * k + i] * 2.0, p[i] as f32, "iq3xxs_grid[{k}]");
        }
    }
    let mut mine = vec![0f32; y.len()];
    GgmlType::IQ3_XXS
        .dequantize(&bytes, 256, &mut mine)
        .unwrap();
    assert_eq!(bitwise_differences(&mine, &y), 0);

    // IQ3_S: d = 1, scale nibble 0 (factor 1), grid index 256*hi + qs; 64 groups per block.
    let mut bytes = Vec::new();
    for blk in 0..8 {
        bytes.extend(0x3c00u16.to_le_bytes()); // f16 1.0
        bytes.extend((0..64).map(|g| ((blk * 64 + g) % 256) as u8));
        bytes.extend([if blk >= 4 { 0xffu8 } else { 0 }; 8]); // ninth index bit
        bytes.extend([0u8; 32 + 4]); // no signs, scales 0
    }
    let y = ggml::dequantize(GgmlType::IQ3_S, &bytes);
    for (k, p) in IQ3S_GRID.iter().enumerate() {
        for i in 0..4 {
            assert_eq!(y[4 * k + i], p[i] as f32, "iq3s_grid[{k}]");
        }
    }
    let mut mine = vec![0f32; y.len()];
    GgmlType::IQ3_S.dequantize(&bytes, 256, &mut mine).unwrap();
    assert_eq!(bitwise_differences(&mine, &y), 0);

    // Signs: IQ3_XXS sign index s (7 bits) in every slot, grid point 0 (all 4s); ggml's
    // ksigns_iq2xs[s] says which of the 8 weights are negative.
    for s in 0..128u32 {
        let mut block = vec![0u8; 98];
        block[..2].copy_from_slice(&0x4000u16.to_le_bytes());
        let packed = s | s << 7 | s << 14 | s << 21;
        for ib in 0..8 {
            block[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&packed.to_le_bytes());
        }
        let y = ggml::dequantize(GgmlType::IQ3_XXS, &block);
        for (j, v) in y.iter().enumerate() {
            let negative = KSIGNS[s as usize] & (1 << (j % 8)) != 0;
            assert_eq!(
                *v,
                if negative { -2.0 } else { 2.0 },
                "ksigns[{s}] weight {j}"
            );
        }
    }
}

/// Where ggml stops the process (a GGML_ASSERT in its lattice search) on the overflow test's
/// weights: the IQ2 searches find no finite distance from about 1e17 on (measured with ggml in a
/// child process); IQ2_XS and IQ2_S keep aborting up to f32's largest values.
fn ggml_aborts(ty: GgmlType, magnitude: f32) -> bool {
    match ty {
        GgmlType::IQ2_XXS => (1.0e17..1.0e20).contains(&magnitude),
        GgmlType::IQ2_XS | GgmlType::IQ2_S => magnitude >= 1.0e17,
        _ => false,
    }
}

/// Where ggml aborts, kiln refuses the weights with an error (and never panics).
#[test]
fn weights_that_abort_ggml_are_refused() {
    let qw = importance(256, 3, false);
    let mut refused = 0;
    for ty in GgmlType::ALL {
        let imatrix = ty.requires_imatrix().then_some(qw.as_slice());
        for magnitude in [1.0e17f32, 1.0e18, 1.0e19, 1.0e20, 1.0e30, 3.0e38] {
            if !ggml_aborts(ty, magnitude) {
                continue;
            }
            let x: Vec<f32> = Case::Weights
                .generate(2, 256, 3)
                .iter()
                .map(|v| v * magnitude)
                .collect();
            let mut out = vec![0u8; 2 * ty.row_bytes(256).unwrap()];
            match ty.quantize(&x, 256, imatrix, &mut out) {
                Err(KernelError::Overflow { .. }) => refused += 1,
                other => panic!("{ty} at {magnitude:e}: {other:?}"),
            }
        }
    }
    assert_eq!(refused, 3 + 2 * 6);
}

/// kiln's table of ggml types (what `inspect` and the reader size foreign tensors by, without
/// linking ggml) is ggml's own, id for id.
#[test]
fn gguf_type_table_matches_ggml() {
    use kiln::gguf::TypeId;
    let mut known = 0;
    for id in 0..ggml::TYPE_COUNT + 4 {
        let ours = TypeId(id).name().map(|n| (n, TypeId(id).block().unwrap()));
        let theirs = ggml::type_traits(id).map(|(n, bw, bb)| (n, (bw, bb)));
        assert_eq!(ours, theirs, "type id {id}");
        known += theirs.is_some() as u32;
    }
    assert_eq!(known as usize, kiln::gguf::types::GGML_TYPES.len());
}

/// The level tables kiln keeps as constants (`kvalues_iq4nl`, `kvalues_mxfp4`) are ggml's:
/// blocks whose scale is exactly 1 and whose indices run through all 16 codes dequantize, in
/// ggml, to the table itself.
#[test]
fn level_tables_are_ggmls() {
    use kiln::kernels::iquants::iq4_nl::KVALUES_IQ4NL;
    use kiln::kernels::mxfp4::KVALUES_MXFP4;
    // Byte j holds code j (low nibble, weight j) and code 15 - j (high nibble, weight j + 16).
    let codes: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
    let expect = |table: &[i8; 16]| -> Vec<f32> {
        (0..32)
            .map(|k| table[if k < 16 { k } else { 31 - k }] as f32)
            .collect()
    };
    // IQ4_NL: f16 scale 1.0 (0x3c00).
    let mut iq4 = vec![0x00, 0x3c];
    iq4.extend(&codes);
    assert_eq!(
        ggml::dequantize(GgmlType::IQ4_NL, &iq4),
        expect(&KVALUES_IQ4NL)
    );
    // MXFP4: E8M0 exponent 128, ggml's half-scale 2^(128-128) = 1.
    let mut mx = vec![128u8];
    mx.extend(&codes);
    assert_eq!(
        ggml::dequantize(GgmlType::MXFP4, &mx),
        expect(&KVALUES_MXFP4)
    );
    // The same through IQ4_XS: d = 1, every sub-block scale 33 (33 - 32 = 1).
    let mut xs = vec![0x00, 0x3c];
    let ls = 33u16;
    let scales_h: u16 = (0..8).map(|ib| (ls >> 4) << (2 * ib)).sum();
    xs.extend(scales_h.to_le_bytes());
    xs.extend([((ls & 0xf) | ((ls & 0xf) << 4)) as u8; 4]);
    for _ in 0..8 {
        xs.extend(&codes);
    }
    let want: Vec<f32> = (0..8).flat_map(|_| expect(&KVALUES_IQ4NL)).collect();
    assert_eq!(ggml::dequantize(GgmlType::IQ4_XS, &xs), want);
}

/// MXFP4's shared exponent comes from `floorf(log2f(amax))` converted to a byte the way C
/// converts it; across the whole f32 range (subnormals, the smallest normals where ggml's
/// exponent wraps, the largest floats) kiln writes ggml's bytes, and refuses exactly the blocks
/// ggml's own validation rejects (an exponent of 0xff).
#[test]
fn mxfp4_exponent_matches_ggml_over_the_float_range() {
    use kiln::kernels::mxfp4::Mxfp4;
    use kiln::kernels::BlockFormat;
    let mut rng = SplitMix64(11);
    let mut invalid = 0;
    for k in -149i32..=127 {
        for m in [1.0f32, 1.25, 1.5, 1.999] {
            let amax = (m as f64 * 2f64.powi(k)) as f32;
            if amax == 0.0 || !amax.is_finite() {
                continue;
            }
            let mut x: Vec<f32> = (0..32)
                .map(|_| (rng.uniform() * 2.0 - 1.0) * amax)
                .collect();
            x[(k.unsigned_abs() as usize) % 32] = -amax;
            let theirs = ggml::quantize(GgmlType::MXFP4, &x, 32, None);
            let mut mine = vec![0u8; 17];
            Mxfp4::quantize_row(&x, &mut mine, None);
            assert_eq!(mine, theirs, "amax {amax:e}");
            let ggml_ok = ggml::validate_row_data(GgmlType::MXFP4, &theirs);
            let kiln_ok = GgmlType::MXFP4.quantize(&x, 32, None, &mut mine).is_ok();
            assert_eq!(kiln_ok, ggml_ok, "amax {amax:e}");
            invalid += !ggml_ok as usize;
        }
    }
    // The wrap to 0xff happens for amax in [2^-126, 2^-125): the case above must have met it.
    assert!(invalid > 0, "no block reached ggml's invalid exponent");
}
