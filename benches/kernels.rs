//! Quantize throughput per format, in MB of f32 input per second: ggml's own function
//! (`ggml_quantize_chunk`, one thread), kiln on one thread, and kiln on all rayon threads, on
//! the same input, side by side. `benches/table.py` turns the results into the README's table.
//!
//!     cargo bench --bench kernels            # every format, with and without imatrix
//!     cargo bench --bench kernels -- q4_K    # one format
//!
//! kiln runs at [`Simd::active`] (the best level, or `KILN_SIMD`); for formats with SIMD
//! kernels the other levels this CPU supports are measured too (`kiln-1-thread-scalar`, ...).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::kernels::{GgmlType, Simd};
use kiln_fixtures::ggml;
use kiln_fixtures::synth::{importance, Case};
use std::hint::black_box;
use std::time::Duration;

const ROWS: usize = 64;
const COLS: usize = 4096;

/// The input's rows: 64 (1 MiB of f32), or `KILN_BENCH_ROWS` (a larger input shows the thread
/// scaling of the formats whose 1 MiB call lasts only tens of microseconds; 2048 rows are
/// 32 MiB, the slab `kiln quantize` hands the kernels at a time).
fn rows() -> usize {
    std::env::var("KILN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r: &usize| r > 0)
        .unwrap_or(ROWS)
}

fn quantize_throughput(c: &mut Criterion) {
    let rows = rows();
    let x = Case::Weights.generate(rows, COLS, 1);
    let qw = importance(COLS, 1, false);
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let all = rayon::ThreadPoolBuilder::new().build().unwrap();
    for imatrix in [false, true] {
        let mode = if imatrix { "imatrix" } else { "ref" };
        let qw = imatrix.then_some(qw.as_slice());
        for ty in GgmlType::ALL {
            // ggml aborts without importance weights for the formats that require them.
            if (imatrix && !ty.uses_imatrix()) || (!imatrix && ty.requires_imatrix()) {
                continue;
            }
            let mut group = c.benchmark_group(format!("quantize-{mode}/{ty}"));
            group
                .throughput(Throughput::Bytes((x.len() * 4) as u64))
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(2));
            let mut out = vec![0u8; rows * ty.row_bytes(COLS).unwrap()];
            group.bench_function(BenchmarkId::from_parameter("ggml-1-thread"), |b| {
                b.iter(|| black_box(ggml::quantize(ty, black_box(&x), COLS, qw)))
            });
            // Inside the one-thread pool for the whole sample, as ggml runs on the calling
            // thread: entering the pool per call would add a thread wake-up (tens of µs on a
            // busy VM) to every iteration, a third of f32's time.
            group.bench_function(BenchmarkId::from_parameter("kiln-1-thread"), |b| {
                single.install(|| b.iter(|| ty.quantize(black_box(&x), COLS, qw, &mut out)))
            });
            // The other SIMD levels this CPU supports, for the formats that have SIMD kernels.
            for simd in Simd::available() {
                if !ty.has_simd_paths() || simd == Simd::active() {
                    continue;
                }
                let id = format!("kiln-1-thread-{simd}");
                group.bench_function(BenchmarkId::from_parameter(id), |b| {
                    single.install(|| {
                        b.iter(|| ty.quantize_at(simd, black_box(&x), COLS, qw, &mut out))
                    })
                });
            }
            // Inside a pool of all threads for the whole sample, for the same reason: called
            // from outside, every call would wait for a blocked thread's wake-up as well.
            group.bench_function(BenchmarkId::from_parameter("kiln-all-threads"), |b| {
                all.install(|| b.iter(|| ty.quantize(black_box(&x), COLS, qw, &mut out)))
            });
            group.finish();
        }
    }
}

criterion_group!(benches, quantize_throughput);
criterion_main!(benches);
