//! The conversion pipeline: one pass over the input, tensor by tensor in the plan's order.
//! Each tensor is read in slabs of rows (bounded memory whatever the tensor's size), widened
//! to f32 with its transform applied, quantized by the kernels (rayon over rows), and handed to
//! a writer thread that streams it into the temporary output file while the next slab is
//! quantized.

use crate::gguf::writer::{GgufWriter, TensorEntry};
use crate::gguf::{GgufFile, Metadata, TypeId};
use crate::source::{to_f32, Checkpoint, SrcDtype};
use anyhow::{anyhow, bail, Context, Result};
use kiln_kernels::{GgmlType, KernelError};
use llama_cpp_sys_2 as sys;
use rayon::prelude::*;
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

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted; nothing was written");
    }
    Ok(())
}

/// f32 input per slab (the output slab is at most as large).
const SLAB_BYTES: usize = 32 << 20;

/// What is done to a source tensor on the way (the edits convert_hf_to_gguf.py makes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    None,
    /// Llama's q/k rows reordered from Hugging Face's rotate-half layout to ggml's interleaved
    /// RoPE layout (`LlamaModel.permute`): output row h*d + 2i + j is source row h*d + j*d/2 + i.
    PermuteHeads {
        n_head: usize,
    },
    /// Gemma's norm weights stored as w - 1: add 1 (in f16 when the source is f16, as torch
    /// does, else in f32).
    AddOne,
}

/// Where a tensor's data comes from.
#[derive(Clone, Debug)]
pub enum TensorSource {
    /// Tensor `index` of the checkpoint; `rows` of its rows are used (Gemma drops padding rows
    /// of the embedding beyond the real vocabulary).
    Hf {
        index: usize,
        dtype: SrcDtype,
        transform: Transform,
    },
    /// Tensor `index` of a GGUF input.
    Gguf { index: usize },
    /// Values computed by the converter (Llama 3's rope_freqs).
    Values(Vec<f32>),
}

/// The input of a conversion.
pub enum Input {
    Hf(Checkpoint),
    Gguf(GgufFile),
}

/// One tensor of the output.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// ne of the output, innermost first.
    pub dims: Vec<u64>,
    /// Its type in the input (what a copy keeps).
    pub input_type: TypeId,
    /// Its type in the output.
    pub out_type: TypeId,
    pub fallback_from: Option<GgmlType>,
    pub source: TensorSource,
}

impl Job {
    pub fn n_per_row(&self) -> usize {
        self.dims[0] as usize
    }
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Output bytes.
    pub fn out_bytes(&self) -> Result<u64> {
        let rb = self.out_type.row_bytes(self.dims[0]).with_context(|| {
            format!(
                "tensor {}: rows of {} do not fit {}",
                self.name,
                self.dims[0],
                self.out_type.label()
            )
        })?;
        Ok(rb * self.n_rows() as u64)
    }
    pub fn entry(&self) -> Result<TensorEntry> {
        Ok(TensorEntry {
            name: self.name.clone(),
            dims: self.dims.clone(),
            ty: self.out_type,
            bytes: self.out_bytes()?,
        })
    }
}

/// Dequantizes `src` (whole rows of `n_per_row`) of any ggml type into `dst`.
fn dequantize_any(ty: TypeId, src: &[u8], n_per_row: usize, dst: &mut [f32]) -> Result<()> {
    if let Some(k) = ty.kiln() {
        k.dequantize(src, n_per_row, dst)
            .map_err(|e| anyhow!("{e}"))?;
        return Ok(());
    }
    // Types kiln does not write (i-quants and others): ggml's own to_float.
    let traits = unsafe { sys::ggml_get_type_traits(ty.0 as sys::ggml_type) };
    let to_float = unsafe { traits.as_ref() }.and_then(|t| t.to_float);
    let (Some(f), Some(rb)) = (to_float, ty.row_bytes(n_per_row as u64)) else {
        bail!("cannot dequantize type {}", ty.label());
    };
    let rows = dst.len() / n_per_row;
    if src.len() < rows * rb as usize {
        bail!("short data for type {}", ty.label());
    }
    dst.par_chunks_mut(n_per_row)
        .zip(src.par_chunks(rb as usize))
        .for_each(|(d, s)| unsafe { f(s.as_ptr().cast(), d.as_mut_ptr(), n_per_row as i64) });
    Ok(())
}

/// The source index of output row (or element) `r` under Llama's head permutation, for heads
/// of `d` rows: output h*d + 2i + j comes from h*d + j*d/2 + i.
fn permuted(r: usize, d: usize) -> usize {
    let (h, w) = (r / d, r % d);
    h * d + (w % 2) * (d / 2) + w / 2
}

fn add_one(xs: &mut [f32], dtype: SrcDtype) {
    for x in xs.iter_mut() {
        *x = if dtype == SrcDtype::F16 {
            half::f16::from_f32(*x + 1.0).to_f32()
        } else {
            *x + 1.0
        };
    }
}

impl Input {
    /// Reads rows `first..first + out.len() / n_per_row` of `src` as f32 into `out`.
    fn read_rows(
        &self,
        src: &TensorSource,
        n_per_row: usize,
        first: usize,
        out: &mut [f32],
    ) -> Result<()> {
        match (self, src) {
            (
                Input::Hf(ck),
                TensorSource::Hf {
                    index,
                    dtype,
                    transform,
                },
            ) => {
                let t = &ck.tensors[*index];
                let bytes = ck.bytes(t);
                let es = dtype.size();
                let row_bytes = n_per_row * es;
                let n_rows_total = bytes.len() / row_bytes;
                if t.shape.len() == 1 {
                    // One row: a norm, a bias (Llama's permuted q/k biases move elements).
                    let mut tmp = vec![0f32; n_per_row];
                    to_f32(*dtype, bytes, &mut tmp);
                    for (i, o) in out.iter_mut().enumerate() {
                        let si = match transform {
                            Transform::PermuteHeads { n_head } => permuted(i, n_per_row / n_head),
                            _ => i,
                        };
                        *o = tmp[si];
                    }
                    if *transform == Transform::AddOne {
                        add_one(out, *dtype);
                    }
                    return Ok(());
                }
                let head = match transform {
                    Transform::PermuteHeads { n_head } => Some(n_rows_total / n_head),
                    _ => None,
                };
                out.par_chunks_mut(n_per_row)
                    .enumerate()
                    .for_each(|(i, row)| {
                        let r = first + i;
                        let sr = head.map_or(r, |d| permuted(r, d));
                        to_f32(*dtype, &bytes[sr * row_bytes..(sr + 1) * row_bytes], row);
                        if *transform == Transform::AddOne {
                            add_one(row, *dtype);
                        }
                    });
                Ok(())
            }
            (_, TensorSource::Values(v)) => {
                let n = out.len();
                out.copy_from_slice(&v[first * n_per_row..first * n_per_row + n]);
                Ok(())
            }
            (Input::Gguf(g), TensorSource::Gguf { index }) => {
                let t = &g.tensors()[*index];
                let rb = t.ty.row_bytes(n_per_row as u64).context("row size")? as usize;
                let n = out.len() / n_per_row;
                let data = g.data(t);
                dequantize_any(t.ty, &data[first * rb..(first + n) * rb], n_per_row, out)
            }
            _ => bail!("internal: tensor source does not match the input"),
        }
    }

    /// Drops the input pages of a finished tensor from memory.
    fn release(&self, src: &TensorSource) {
        match (self, src) {
            (Input::Hf(ck), TensorSource::Hf { index, .. }) => ck.release(&ck.tensors[*index]),
            (Input::Gguf(g), TensorSource::Gguf { index }) => g.release(&g.tensors()[*index]),
            _ => {}
        }
    }

    /// Drops the input pages of rows already read, where rows are stored in order (a tensor
    /// whose rows are permuted is released whole at its end instead).
    fn release_rows(&self, src: &TensorSource, n_per_row: usize, first: usize, n: usize) {
        match (self, src) {
            (
                Input::Hf(ck),
                TensorSource::Hf {
                    index,
                    dtype,
                    transform: Transform::None | Transform::AddOne,
                },
            ) => {
                let rb = n_per_row * dtype.size();
                ck.release_range(&ck.tensors[*index], first * rb, n * rb);
            }
            (Input::Gguf(g), TensorSource::Gguf { index }) => {
                let t = &g.tensors()[*index];
                if let Some(rb) = t.ty.row_bytes(n_per_row as u64) {
                    g.release_range(t, first * rb as usize, n * rb as usize);
                }
            }
            _ => {}
        }
    }

    /// The input bytes of a tensor when it can be copied unchanged.
    fn raw(&self, job: &Job) -> Option<&[u8]> {
        match (self, &job.source) {
            (Input::Gguf(g), TensorSource::Gguf { index }) if job.out_type == job.input_type => {
                Some(g.data(&g.tensors()[*index]))
            }
            _ => None,
        }
    }
}

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

/// One output file of a run: its tensors (the same tensors, in the same order, in every output
/// of one run), metadata and target.
pub struct Output<'a> {
    pub jobs: &'a [Job],
    pub metadata: &'a Metadata,
    pub target: &'a Path,
    pub imatrix: Option<&'a HashMap<String, Vec<f32>>>,
}

/// Converts: writes `jobs` (in order) under `md` to `target` via a temporary file.
pub fn run(
    input: &Input,
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
    };
    Ok(run_many(input, &[out], force, progress)?.remove(0))
}

/// Writes several outputs in one pass over the input: each slab of each tensor is read and
/// widened to f32 once, then quantized for every output (what `kiln sweep` uses). All-or-
/// nothing per output: a failure removes every temporary file.
pub fn run_many(
    input: &Input,
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
    if let Input::Gguf(g) = input {
        crate::gguf::checksum::verify(g)?;
    }
    let mut writers = Vec::with_capacity(outputs.len());
    let mut total = 0u64;
    for o in outputs {
        let entries: Vec<TensorEntry> = o.jobs.iter().map(|j| j.entry()).collect::<Result<_>>()?;
        total += entries.iter().map(|e| e.bytes).sum::<u64>();
        writers.push(GgufWriter::create(o.target, force, o.metadata, entries)?);
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
        for (k, mut writer) in writers.into_iter().enumerate() {
            let (tx, rx) = sync_channel::<Chunk>(2);
            senders.push(tx);
            let bar_w = bar.clone();
            threads.push(s.spawn(move || -> Result<GgufWriter> {
                let mut done = 0usize;
                for c in rx {
                    match c {
                        Chunk::Data(d) => {
                            writer.write(&d)?;
                            bar_w.inc(d.len() as u64);
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
        let produced = produce(input, outputs, &senders);
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
            file_size: std::fs::metadata(o.target).map(|m| m.len()).unwrap_or(0),
            n_elements: o.jobs.iter().map(|j| j.n_elements()).sum(),
        })
        .collect())
}

/// For an error in a source tensor: "FILE: tensor NAME" of the input, with the output name in
/// parentheses when it differs, and the input row of output row `row` (Llama's q/k rows are
/// permuted on the way).
fn origin(input: &Input, job: &Job, row: usize) -> (String, usize) {
    let (file, name, row) = match (&job.source, input) {
        (
            TensorSource::Hf {
                index, transform, ..
            },
            Input::Hf(ck),
        ) => {
            let t = &ck.tensors[*index];
            let n_rows = job.n_rows();
            let src_row = match *transform {
                Transform::PermuteHeads { n_head } if n_rows > 1 && n_head > 0 => {
                    let d = n_rows / n_head;
                    let rem = row % d;
                    (row / d) * d + (rem % 2) * (d / 2) + rem / 2
                }
                _ => row,
            };
            (ck.file_of(t).display().to_string(), &t.name, src_row)
        }
        (TensorSource::Gguf { index }, Input::Gguf(g)) => {
            (g.path.display().to_string(), &g.tensors()[*index].name, row)
        }
        _ => return (format!("tensor {}", job.name), row),
    };
    if *name == job.name {
        (format!("{file}: tensor {name}"), row)
    } else {
        (format!("{file}: tensor {name} ({})", job.name), row)
    }
}

fn kernel_error(
    input: &Input,
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
    },
}

fn produce(
    input: &Input,
    outputs: &[Output],
    txs: &[std::sync::mpsc::SyncSender<Chunk>],
) -> Result<()> {
    let send = |k: usize, c: Chunk| txs[k].send(c).map_err(|_| anyhow!("output writer stopped"));
    let n_jobs = outputs[0].jobs.len();
    for i in 0..n_jobs {
        check_interrupted()?;
        let job0 = &outputs[0].jobs[i];
        let n_per_row = job0.n_per_row();
        let n_rows = job0.n_rows();
        // Per output: copy raw bytes, or quantize to a kiln type.
        let mut plans = Vec::with_capacity(outputs.len());
        for o in outputs {
            let job = &o.jobs[i];
            if let Some(raw) = input.raw(job) {
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
            plans.push(Step::Quantize { ty, row_bytes, qw });
        }
        let need_f32 = plans.iter().any(|p| matches!(p, Step::Quantize { .. }));
        let slab_rows = (SLAB_BYTES / (n_per_row * 4)).clamp(1, n_rows.max(1));
        let mut f32_buf = if need_f32 {
            vec![0f32; slab_rows * n_per_row]
        } else {
            Vec::new()
        };
        let mut first = 0;
        while first < n_rows {
            check_interrupted()?;
            let n = slab_rows.min(n_rows - first);
            if need_f32 {
                input
                    .read_rows(
                        &job0.source,
                        n_per_row,
                        first,
                        &mut f32_buf[..n * n_per_row],
                    )
                    .with_context(|| format!("tensor {}", job0.name))?;
            }
            for (k, step) in plans.iter().enumerate() {
                let chunk = match *step {
                    Step::Copy { raw, row_bytes } => {
                        raw[first * row_bytes..(first + n) * row_bytes].to_vec()
                    }
                    Step::Quantize { ty, row_bytes, qw } => {
                        let mut dst = vec![0u8; n * row_bytes];
                        ty.quantize(&f32_buf[..n * n_per_row], n_per_row, qw, &mut dst)
                            .map_err(|e| kernel_error(input, &outputs[k].jobs[i], ty, first, e))?;
                        dst
                    }
                };
                send(k, Chunk::Data(chunk))?;
            }
            input.release_rows(&job0.source, n_per_row, first, n);
            first += n;
        }
        input.release(&job0.source);
        for k in 0..outputs.len() {
            send(k, Chunk::End)?;
        }
    }
    Ok(())
}
