//! Importance matrices from a checkpoint: `kiln imatrix ./checkpoint` and `kiln quantize
//! --calibrate TEXT`.
//!
//! llama.cpp runs GGUF files, so a checkpoint (a folder or a .safetensors file) is first
//! converted, by the converter, to a temporary GGUF at the precision that holds its weights
//! without loss: F32 when its weights are f32, otherwise their own BF16 or F16 (F32 when they
//! mix both or use another dtype). The file goes into a hidden temporary folder beside the
//! output (where there is room for the output, there is usually room for it) and is removed
//! when the run ends, on success, on error and on a first Ctrl-C (which stops the run after the
//! current group of chunks). The importance matrix is then exactly the one `kiln imatrix`
//! computes on the same conversion done by hand.
//!
//! `kiln quantize --calibrate TEXT` does the three steps in one command: the temporary GGUF,
//! the importance matrix of TEXT with llama-imatrix's defaults (chunks of 512 tokens, all of
//! them), kept beside the output as `<output name>.imatrix.gguf` (so that the output's
//! `quantize.imatrix.file` names a file that exists, and the matrix can be reused with
//! `--imatrix` for other types), then the quantized file from the original input with it, as
//! `kiln quantize --imatrix` writes it. A text that is empty, not UTF-8 or shorter than one
//! chunk is refused, naming the file, before any output.

use crate::plan::FileType;
use crate::quantize;
use crate::runner::imatrix::{self, ImatrixOptions, ImatrixSummary};
use crate::source::safetensors::SrcDtype;
use crate::source::Checkpoint;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Whether `input` is a checkpoint (a folder or a .safetensors file) rather than a GGUF.
pub fn is_checkpoint(input: &Path) -> bool {
    input.is_dir()
        || input
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The file type that holds a checkpoint's weights (its tensors of two or more dimensions)
/// without loss: F32 when one is f32 (or of a dtype that is neither f16 nor bf16), BF16 or F16
/// when all are that, F32 when they mix the two.
pub fn lossless_type(ck: &Checkpoint) -> FileType {
    let mut seen: Option<SrcDtype> = None;
    for t in ck.tensors.iter().filter(|t| t.shape.len() >= 2) {
        match (&t.dtype, seen) {
            (Ok(SrcDtype::F32), _) | (Err(_), _) => return FileType::F32,
            (Ok(d), Some(s)) if *d != s => return FileType::F32,
            (Ok(d), _) => seen = Some(*d),
        }
    }
    match seen {
        Some(SrcDtype::BF16) => FileType::BF16,
        Some(SrcDtype::F16) => FileType::F16,
        _ => FileType::F32,
    }
}

/// A GGUF that llama.cpp can run: the input itself, or a checkpoint converted to a temporary
/// file that is removed when this is dropped.
pub struct ModelFile {
    pub path: PathBuf,
    /// The type a checkpoint was converted to; None for a GGUF input.
    pub converted: Option<FileType>,
    _tmp: Option<tempfile::TempDir>,
}

/// `input` as a GGUF: itself, or (a checkpoint) converted at [`lossless_type`] into a
/// temporary folder in `near`.
pub fn model_file(input: &Path, near: &Path, progress: &mut dyn FnMut(&str)) -> Result<ModelFile> {
    if !is_checkpoint(input) {
        return Ok(ModelFile {
            path: input.to_path_buf(),
            converted: None,
            _tmp: None,
        });
    }
    let ftype = lossless_type(&Checkpoint::open(input)?);
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-model-")
        .tempdir_in(near)
        .with_context(|| {
            format!(
                "{}: cannot create a temporary folder for the converted model",
                near.display()
            )
        })?;
    let name = quantize::default_output(input, ftype);
    let path = tmp
        .path()
        .join(name.file_name().unwrap_or("model.gguf".as_ref()));
    progress(&format!(
        "converting {} to a temporary {ftype} GGUF ({})",
        input.display(),
        path.display()
    ));
    let mut o = quantize::Options::new(ftype);
    o.output = Some(path.clone());
    let p = quantize::prepare(input, &o)?;
    quantize::execute(&p, true, false)
        .with_context(|| format!("{}: converting to {ftype}", input.display()))?;
    Ok(ModelFile {
        path,
        converted: Some(ftype),
        _tmp: Some(tmp),
    })
}

/// The folder an output goes into.
fn folder_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `kiln imatrix MODEL`: [`imatrix::run`] on a GGUF, or on a checkpoint converted to a
/// temporary GGUF beside `out` (removed afterwards). The options and the text are checked
/// before the conversion.
pub fn imatrix_of(
    model: &Path,
    text: &Path,
    out: &Path,
    opts: &ImatrixOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(ImatrixSummary, Option<FileType>)> {
    imatrix::check_options(opts)?;
    imatrix::read_text(text)?;
    let dir = folder_of(out);
    if !dir.is_dir() {
        anyhow::bail!("{}: no such folder for the output", dir.display());
    }
    if !model.exists() {
        anyhow::bail!("{}: no such file or folder", model.display());
    }
    let m = model_file(model, &dir, progress)?;
    let s = imatrix::run(&m.path, text, out, opts, progress)?;
    Ok((s, m.converted))
}

/// `<output without .gguf>.imatrix.gguf`: where `--calibrate` keeps the importance matrix.
pub fn imatrix_path_for(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".into());
    let stem = name
        .strip_suffix(".gguf")
        .or_else(|| name.strip_suffix(".GGUF"))
        .unwrap_or(&name);
    target.with_file_name(format!("{stem}.imatrix.gguf"))
}

/// What `--calibrate` did.
pub struct Calibration {
    /// The importance matrix it wrote.
    pub imatrix: PathBuf,
    pub summary: ImatrixSummary,
    /// The type of the temporary GGUF a checkpoint was converted to.
    pub converted: Option<FileType>,
}

/// `kiln quantize --calibrate TEXT`'s first two steps: the importance matrix of `text` on
/// `input` (converted to a temporary GGUF when a checkpoint) with llama-imatrix's defaults,
/// written to [`imatrix_path_for`]`(target)` (an existing one is refused without `force`).
pub fn calibrate(
    input: &Path,
    text: &Path,
    target: &Path,
    force: bool,
    threads: Option<u32>,
    progress: &mut dyn FnMut(&str),
) -> Result<Calibration> {
    let path = imatrix_path_for(target);
    crate::gguf::writer::check_target(&path, force)?;
    let d = ImatrixOptions::default();
    let opts = ImatrixOptions {
        threads: threads.unwrap_or(d.threads),
        ..d
    };
    let (summary, converted) = imatrix_of(input, text, &path, &opts, progress)?;
    Ok(Calibration {
        imatrix: path,
        summary,
        converted,
    })
}
