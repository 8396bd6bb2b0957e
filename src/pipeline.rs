//! The streaming pipeline: one pass over the input, tensor by tensor in the plan's order.
//! Each tensor is read in slabs of rows (bounded memory whatever the tensor's size), widened
//! to f32 with its transform applied, quantized by the kernels (rayon over rows), and handed to
//! a writer thread that streams it into the temporary output file while the next slab is
//! quantized.

use crate::gguf::split::{ShardedWriter, Shards};
use crate::gguf::writer::TensorEntry;
use crate::gguf::{Metadata, TypeId};
use crate::job::{Job, Mxfp4Rows, Strided, TensorSource, Transform};
use crate::source::Source;
use anyhow::{anyhow, bail, Context, Result};
use kiln_kernels::{GgmlType, KernelError, Search};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;

/// Set by SIGINT/SIGTERM (see [`stop_on_signals`]): the conversion stops at the next slab,
/// and the temporary file is removed as on any error.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns Ctrl-C and SIGTERM into a clean stop: the running conversion returns an error, its
/// temporary file is deleted and no output appears. A second signal exits at once.
pub fn stop_on_signals() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // A second signal: stop now, but take the temporary files along.
            crate::gguf::writer::remove_partial_files();
            std::process::exit(130);
        }
    });
}

/// An error once Ctrl-C or SIGTERM has been received (after [`stop_on_signals`]), for long
/// loops to stop at.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted; nothing was written");
    }
    Ok(())
}

/// f32 input per slab (the output slab is at most as large).
const SLAB_BYTES: usize = 32 << 20;

/// Counts of what a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub tensors: usize,
    pub bytes_written: u64,
    pub file_size: u64,
    pub n_elements: u64,
}

enum Chunk {
    Data(Vec<u8>),
    End,
}

/// Output buffers handed back by a writer thread once written, for the producer to reuse (a
/// fresh allocation per slab costs page faults and zeroing of new pages on every slab).
struct Pool {
    back: std::sync::mpsc::Sender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Pool {
    fn new() -> Self {
        let (back, free) = std::sync::mpsc::channel();
        Pool { back, free }
    }

    /// A zeroed buffer of `n` bytes (the kernels write every byte, but zeroing a recycled
    /// buffer keeps the output independent of what it held).
    fn take(&self, n: usize) -> Vec<u8> {
        let mut v = self.free.try_recv().unwrap_or_default();
        v.clear();
        v.resize(n, 0);
        v
    }
}

/// One output file of a run: its tensors (the same tensors, in the same order, in every output
/// of one run), metadata and target.
pub struct Output<'a> {
    pub jobs: &'a [Job],
    pub metadata: &'a Metadata,
    pub target: &'a Path,
    pub imatrix: Option<&'a HashMap<String, Vec<f32>>>,
    /// The block search of the quantized tensors (`--search`; [`Search::Ggml`]: llama.cpp's
    /// bytes).
    pub search: Search,
    /// Written as a split GGUF: the shard of each tensor (see [`crate::gguf::split`]).
    pub shards: Option<&'a Shards>,
}

/// Converts: writes `jobs` (in order) under `md` to `target` via a temporary file.
pub fn run(
    input: &dyn Source,
    jobs: &[Job],
    md: &Metadata,
    target: &Path,
    force: bool,
    imatrix: Option<&HashMap<String, Vec<f32>>>,
    progress: bool,
) -> Result<Summary> {
    let out = Output {
        jobs,
        metadata: md,
        target,
        imatrix,
        search: Search::Ggml,
        shards: None,
    };
    Ok(run_many(input, &[out], force, progress)?.remove(0))
}

/// Writes several outputs in one pass over the input: each slab of each tensor is read and
/// widened to f32 once, then quantized for every output (what `kiln sweep` uses). All-or-
/// nothing per output: a failure removes every temporary file.
pub fn run_many(
    input: &dyn Source,
    outputs: &[Output],
    force: bool,
    progress: bool,
) -> Result<Vec<Summary>> {
    let Some(first) = outputs.first() else {
        return Ok(Vec::new());
    };
    for o in outputs {
        let same = o.jobs.len() == first.jobs.len()
            && o.jobs.iter().zip(first.jobs).all(|(a, b)| a.name == b.name);
        if !same {
            bail!("internal: outputs of one run must list the same tensors in the same order");
        }
    }
    // A GGUF input that carries kiln's checksum is checked before anything is written (one
    // parallel pass; the conversion then reads the same pages from the cache).
    input.verify()?;
    let mut writers = Vec::with_capacity(outputs.len());
    let mut total = 0u64;
    for o in outputs {
        let entries: Vec<TensorEntry> = o.jobs.iter().map(|j| j.entry()).collect::<Result<_>>()?;
        total += entries.iter().map(|e| e.bytes).sum::<u64>();
        writers.push(ShardedWriter::create(
            o.target, force, o.metadata, entries, o.shards,
        )?);
    }
    let bar = if progress {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let n_jobs = first.jobs.len();
    let result = std::thread::scope(|s| -> Result<()> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let pools: Vec<Pool> = outputs.iter().map(|_| Pool::new()).collect();
        for (k, mut writer) in writers.into_iter().enumerate() {
            let (tx, rx) = sync_channel::<Chunk>(2);
            senders.push(tx);
            let bar_w = bar.clone();
            let back = pools[k].back.clone();
            threads.push(s.spawn(move || -> Result<ShardedWriter> {
                let mut done = 0usize;
                for c in rx {
                    match c {
                        Chunk::Data(d) => {
                            writer.write(&d)?;
                            bar_w.inc(d.len() as u64);
                            // The producer may have finished; then the buffer is just freed.
                            let _ = back.send(d);
                        }
                        Chunk::End => {
                            writer.end_tensor()?;
                            done += 1;
                            if k == 0 {
                                bar_w.set_message(format!("{done}/{n_jobs} tensors"));
                            }
                        }
                    }
                }
                Ok(writer)
            }));
        }
        let produced = produce(input, outputs, &senders, &pools);
        drop(senders);
        let mut finished = Vec::new();
        let mut first_err = None;
        for t in threads {
            match t
                .join()
                .map_err(|_| anyhow!("internal: writer thread panicked"))
                .and_then(|r| r)
            {
                Ok(w) => finished.push(w),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // A writer error explains a producer's failed send, so report it first.
        if let Some(e) = first_err {
            return Err(e);
        }
        produced?;
        for w in finished {
            w.finish()?;
        }
        Ok(())
    });
    bar.finish_and_clear();
    result?;
    Ok(outputs
        .iter()
        .map(|o| Summary {
            tensors: o.jobs.len(),
            bytes_written: o.jobs.iter().filter_map(|j| j.out_bytes().ok()).sum(),
            file_size: match o.shards {
                Some(s) => s
                    .paths(o.target)
                    .iter()
                    .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                    .sum(),
                None => std::fs::metadata(o.target).map(|m| m.len()).unwrap_or(0),
            },
            n_elements: o.jobs.iter().map(|j| j.n_elements()).sum(),
        })
        .collect())
}

/// For an error in a source tensor: "FILE: tensor NAME" of the input, with the output name in
/// parentheses when it differs, and the input row of output row `row` (Llama's q/k rows are
/// permuted on the way).
fn origin(input: &dyn Source, job: &Job, row: usize) -> (String, usize) {
    if let Some((piece, src_row)) = job.source.gathered_row(row) {
        let (file, name) = input.describe(piece.index);
        return (format!("{file}: tensor {name} ({})", job.name), src_row);
    }
    let TensorSource::Input { index, transform } = &job.source else {
        return (format!("tensor {}", job.name), row);
    };
    let (file, name) = input.describe(*index);
    let row = transform.source_index(row, job.n_rows());
    if name == job.name {
        (format!("{file}: tensor {name}"), row)
    } else {
        (format!("{file}: tensor {name} ({})", job.name), row)
    }
}

/// Reads rows `first..first + out.len() / n_per_row` of a job's output tensor as f32 (what
/// the budget planner measures types on).
pub fn read_job_rows(input: &dyn Source, job: &Job, first: usize, out: &mut [f32]) -> Result<()> {
    read_rows(input, &job.source, job.n_per_row(), first, out)
}

/// Reads output rows `first..` of a job's tensor as f32 into `out`.
fn read_rows(
    input: &dyn Source,
    src: &TensorSource,
    n_per_row: usize,
    first: usize,
    out: &mut [f32],
) -> Result<()> {
    match src {
        TensorSource::Input { index, transform } => {
            input.read_rows(*index, *transform, n_per_row, first, out)
        }
        TensorSource::Values(v) => {
            let n = out.len();
            out.copy_from_slice(&v[first * n_per_row..first * n_per_row + n]);
            Ok(())
        }
        TensorSource::Gather(_) => {
            // Piece by piece: each run of rows from one input tensor is one read.
            let mut done = 0;
            let n_rows = out.len() / n_per_row;
            while done < n_rows {
                let (piece, src_row) = src
                    .gathered_row(first + done)
                    .context("internal: gathered rows past the pieces")?;
                let left_in_piece = piece.first_row + piece.n_rows - src_row;
                let n = left_in_piece.min(n_rows - done);
                input.read_rows(
                    piece.index,
                    Transform::None,
                    n_per_row,
                    src_row,
                    &mut out[done * n_per_row..(done + n) * n_per_row],
                )?;
                input.release_rows(piece.index, n_per_row, src_row, n);
                done += n;
            }
            Ok(())
        }
        TensorSource::Strided(s) => read_strided(input, s, n_per_row, first, out),
        TensorSource::Mxfp4(m) => {
            // Repacked, then widened by the MXFP4 dequantizer (what llama-quantize's
            // requantization of the converted file reads).
            let n = out.len() / n_per_row;
            let row_bytes = GgmlType::MXFP4.row_bytes(n_per_row).context("MXFP4 rows")?;
            let mut q = vec![0u8; n * row_bytes];
            mxfp4_rows(input, m, first, n, &mut q)?;
            GgmlType::MXFP4
                .dequantize(&q, n_per_row, out)
                .map_err(|e| anyhow!("dequantizing MXFP4: {e}"))?;
            Ok(())
        }
    }
}

/// Output rows `first..` of an MX checkpoint's experts as ggml MXFP4 bytes.
fn mxfp4_rows(
    input: &dyn Source,
    rows: &Mxfp4Rows,
    first: usize,
    n: usize,
    out: &mut [u8],
) -> Result<()> {
    let (Some(blocks), Some(scales)) = (input.stored(rows.blocks), input.stored(rows.scales))
    else {
        bail!("internal: MXFP4 blocks from an input without stored bytes");
    };
    crate::source::mx::repack_rows(rows, blocks, scales, first, n, out).with_context(|| {
        let (file, name) = input.describe(rows.blocks);
        format!("{file}: tensor {name}")
    })
}

/// f32 input elements read per chunk when picking strided elements.
const STRIDED_CHUNK: usize = 4 << 20;

/// Output rows `first..` of a [`Strided`] source: the input rows that hold them are read a
/// chunk at a time and the elements picked out, so memory stays bounded whatever the strides.
fn read_strided(
    input: &dyn Source,
    s: &Strided,
    n_per_row: usize,
    first: usize,
    out: &mut [f32],
) -> Result<()> {
    let n = out.len() / n_per_row;
    let l = s.src_row_len.max(1);
    let es = s.elem_stride.max(1);
    let last = |r: usize| s.element(r, n_per_row - 1);
    let lo = (first..first + n)
        .map(|r| s.element(r, 0))
        .min()
        .unwrap_or(0);
    let hi = (first..first + n).map(last).max().unwrap_or(0);
    let (r0, r1) = (lo / l, hi / l + 1);
    let rows_per_chunk = (STRIDED_CHUNK / l).max(1);
    let mut buf = vec![0f32; rows_per_chunk.min(r1 - r0) * l];
    let mut c0 = r0;
    while c0 < r1 {
        let c1 = (c0 + rows_per_chunk).min(r1);
        let b = &mut buf[..(c1 - c0) * l];
        input.read_rows(s.index, Transform::None, l, c0, b)?;
        let (e0, e1) = (c0 * l, c1 * l);
        for (i, row) in out.chunks_mut(n_per_row).enumerate() {
            let r = first + i;
            let base = s.element(r, 0);
            if base >= e1 || last(r) < e0 {
                continue;
            }
            let k0 = if base >= e0 {
                0
            } else {
                (e0 - base).div_ceil(es)
            };
            let k1 = ((e1 - 1 - base) / es + 1).min(n_per_row);
            for k in k0..k1 {
                row[k] = b[base + k * es - e0];
            }
        }
        c0 = c1;
    }
    Ok(())
}

fn kernel_error(
    input: &dyn Source,
    job: &Job,
    out_ty: GgmlType,
    first: usize,
    e: KernelError,
) -> anyhow::Error {
    match e {
        KernelError::NonFinite { row, column, value } => {
            let (what, row) = origin(input, job, first + row);
            anyhow!(
                "{what}: weight at row {row}, column {column} is {value} (the input holds non-finite values)"
            )
        }
        KernelError::Overflow { row, block, .. } => anyhow!(
            "tensor {}: row {}, block {block}: the scale overflows {} (weights too large for the format)",
            job.name,
            first + row,
            out_ty
        ),
        other => anyhow!("tensor {}: {other}", job.name),
    }
}

/// What one output does with a tensor.
enum Step<'a> {
    /// The input bytes, unchanged (same type in and out).
    Copy { raw: &'a [u8], row_bytes: usize },
    Quantize {
        ty: GgmlType,
        row_bytes: usize,
        qw: Option<&'a [f32]>,
        search: Search,
    },
    /// An MX checkpoint's blocks repacked into ggml MXFP4 (kept at their type).
    Mxfp4 { rows: Mxfp4Rows, row_bytes: usize },
}

/// Rows `first..first + n` of a job's input as f32 straight from the input's bytes, when the
/// input stores the tensor as little-endian f32 in the output's row order (an f32 GGUF): no
/// copy into a buffer. None otherwise (the rows are then read into one).
fn borrowed_f32<'a>(input: &'a dyn Source, job: &Job, first: usize, n: usize) -> Option<&'a [f32]> {
    let TensorSource::Input {
        index,
        transform: Transform::None,
    } = &job.source
    else {
        return None;
    };
    if cfg!(target_endian = "big") || job.input_type != TypeId::of(GgmlType::F32) {
        return None;
    }
    let row = job.n_per_row() * 4;
    let bytes = input.raw(*index)?.get(first * row..(first + n) * row)?;
    bytemuck::try_cast_slice(bytes).ok()
}

fn produce(
    input: &dyn Source,
    outputs: &[Output],
    txs: &[std::sync::mpsc::SyncSender<Chunk>],
    pools: &[Pool],
) -> Result<()> {
    let send = |k: usize, c: Chunk| txs[k].send(c).map_err(|_| anyhow!("output writer stopped"));
    let n_jobs = outputs[0].jobs.len();
    // Reused from tensor to tensor (grown when a tensor needs more).
    let mut f32_buf: Vec<f32> = Vec::new();
    for i in 0..n_jobs {
        check_interrupted()?;
        let job0 = &outputs[0].jobs[i];
        let n_per_row = job0.n_per_row();
        let n_rows = job0.n_rows();
        // Per output: copy raw bytes, or quantize to a kiln type.
        let mut plans = Vec::with_capacity(outputs.len());
        for o in outputs {
            let job = &o.jobs[i];
            if let TensorSource::Mxfp4(rows) = &job.source {
                if job.out_type == job.input_type {
                    let row_bytes = GgmlType::MXFP4.row_bytes(n_per_row).context("MXFP4 rows")?;
                    plans.push(Step::Mxfp4 {
                        rows: *rows,
                        row_bytes,
                    });
                    continue;
                }
            }
            let raw = match &job.source {
                TensorSource::Input { index, .. } if job.out_type == job.input_type => {
                    input.raw(*index)
                }
                _ => None,
            };
            if let Some(raw) = raw {
                plans.push(Step::Copy {
                    raw,
                    row_bytes: raw.len() / n_rows.max(1),
                });
                continue;
            }
            let ty = job.out_type.kiln().with_context(|| {
                format!(
                    "tensor {}: kiln cannot write type {}",
                    job.name,
                    job.out_type.label()
                )
            })?;
            let qw = o
                .imatrix
                .and_then(|m| m.get(&job.name))
                .map(|v| v.as_slice());
            let qw = if ty.uses_imatrix() { qw } else { None };
            let row_bytes = ty.row_bytes(n_per_row).context("row size")?;
            plans.push(Step::Quantize {
                ty,
                row_bytes,
                qw,
                search: o.search,
            });
        }
        let need_f32 = plans.iter().any(|p| matches!(p, Step::Quantize { .. }));
        let slab_rows = (SLAB_BYTES / (n_per_row * 4)).clamp(1, n_rows.max(1));
        let mut first = 0;
        while first < n_rows {
            check_interrupted()?;
            let n = slab_rows.min(n_rows - first);
            let rows: &[f32] = match borrowed_f32(input, job0, first, n) {
                Some(rows) if need_f32 => rows,
                _ if need_f32 => {
                    if f32_buf.len() < n * n_per_row {
                        f32_buf.resize(n * n_per_row, 0.0);
                    }
                    read_rows(
                        input,
                        &job0.source,
                        n_per_row,
                        first,
                        &mut f32_buf[..n * n_per_row],
                    )
                    .with_context(|| format!("tensor {}", job0.name))?;
                    &f32_buf[..n * n_per_row]
                }
                _ => &[],
            };
            for (k, step) in plans.iter().enumerate() {
                let chunk = match *step {
                    Step::Copy { raw, row_bytes } => {
                        let mut dst = pools[k].take(n * row_bytes);
                        dst.copy_from_slice(&raw[first * row_bytes..(first + n) * row_bytes]);
                        dst
                    }
                    Step::Mxfp4 { rows, row_bytes } => {
                        let mut dst = vec![0u8; n * row_bytes];
                        mxfp4_rows(input, &rows, first, n, &mut dst)?;
                        dst
                    }
                    Step::Quantize {
                        ty,
                        row_bytes,
                        qw,
                        search,
                    } => {
                        let mut dst = pools[k].take(n * row_bytes);
                        // Importance data with one row per expert (a 3-D tensor's ne[2]
                        // experts of ne[1] rows each): each expert's rows use its own row, as
                        // llama.cpp's quantizer does; the runs never cross an expert.
                        let n_expert = job0.dims.get(2).copied().unwrap_or(1) as usize;
                        let per_expert =
                            qw.is_some_and(|q| n_expert > 1 && q.len() == n_per_row * n_expert);
                        let rows_per_expert = if per_expert {
                            job0.dims[1] as usize
                        } else {
                            n_rows.max(1)
                        };
                        let mut done = 0;
                        while done < n {
                            let row = first + done;
                            let run = (rows_per_expert - row % rows_per_expert).min(n - done);
                            let qw_run = match qw {
                                Some(q) if per_expert => {
                                    let e = row / rows_per_expert;
                                    Some(&q[e * n_per_row..(e + 1) * n_per_row])
                                }
                                other => other,
                            };
                            ty.quantize_with(
                                search,
                                &rows[done * n_per_row..(done + run) * n_per_row],
                                n_per_row,
                                qw_run,
                                &mut dst[done * row_bytes..(done + run) * row_bytes],
                            )
                            .map_err(|e| {
                                kernel_error(input, &outputs[k].jobs[i], ty, first + done, e)
                            })?;
                            done += run;
                        }
                        dst
                    }
                };
                send(k, Chunk::Data(chunk))?;
            }
            if let TensorSource::Input { index, transform } = &job0.source {
                if transform.keeps_row_order() {
                    input.release_rows(*index, n_per_row, first, n);
                }
            }
            first += n;
        }
        for index in job0.source.inputs() {
            input.release(index);
        }
        for k in 0..outputs.len() {
            send(k, Chunk::End)?;
        }
    }
    Ok(())
}
