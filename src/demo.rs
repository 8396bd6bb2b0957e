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

/// One type's line in the conversion demo.
pub struct ConvertRow {
    pub ftype: crate::plan::FileType,
    pub path: std::path::PathBuf,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub kiln_s: f64,
    pub llama_s: f64,
    /// Every tensor's type and bytes equal llama_model_quantize's from the same f32 GGUF.
    pub identical: bool,
    /// Greedy tokens llama.cpp generated from the file.
    pub generated: usize,
}

/// The bundled default: writes the Llama + SentencePiece fixture checkpoint into
/// `out/fixture-llama`, converts it to F32, then converts the checkpoint to each of `types`
/// with kiln and the F32 GGUF with llama.cpp's quantizer, compares them tensor by tensor, and
/// has llama.cpp load each file and generate.
pub fn run_conversion(
    out: &std::path::Path,
    tokenizer_model: &std::path::Path,
    types: &[crate::plan::FileType],
) -> anyhow::Result<Vec<ConvertRow>> {
    use crate::gguf::GgufFile;
    use crate::plan::FileType;
    use crate::quantize::{execute, prepare, Options};
    let dir = out.join("fixture-llama");
    crate::fixture::write_checkpoint(
        &crate::fixture::llama_spm_default(tokenizer_model.to_path_buf()),
        &dir,
    )?;
    let convert =
        |ftype: FileType, input: &std::path::Path, path: &std::path::Path| -> anyhow::Result<f64> {
            let mut o = Options::new(ftype);
            o.output = Some(path.to_path_buf());
            o.force = true;
            let t = Instant::now();
            let p = prepare(input, &o)?;
            execute(&p, true, false)?;
            Ok(t.elapsed().as_secs_f64())
        };
    let f32_path = out.join("fixture-llama-F32.gguf");
    convert(FileType::F32, &dir, &f32_path)?;
    let mut rows = Vec::new();
    for &ftype in types {
        let path = out.join(format!("fixture-llama-{}.gguf", ftype.name()));
        let kiln_s = convert(ftype, &dir, &path)?;
        let reference = out.join(format!("llama.cpp-fixture-llama-{}.gguf", ftype.name()));
        let t = Instant::now();
        crate::llama::reference_quantize(&f32_path, &reference, ftype.id(), &Default::default())?;
        let llama_s = t.elapsed().as_secs_f64();
        let (a, b) = (GgufFile::open(&path)?, GgufFile::open(&reference)?);
        let identical = a.tensors().len() == b.tensors().len()
            && a.tensors().iter().all(|t| {
                b.find(&t.name)
                    .is_some_and(|u| u.ty == t.ty && u.dims == t.dims && a.data(t) == b.data(u))
            });
        drop(b);
        std::fs::remove_file(&reference).ok();
        let model = crate::llama::load(&path)?;
        let prompt = crate::llama::tokenize(&model, "Once upon a time", true);
        let generated = crate::llama::generate(&model, &prompt, 16)?.len();
        let (n, data): (u64, u64) = a
            .tensors()
            .iter()
            .fold((0, 0), |(n, d), t| (n + t.n_elements(), d + t.bytes));
        rows.push(ConvertRow {
            ftype,
            bytes: a.file_size(),
            bits_per_weight: data as f64 * 8.0 / n as f64,
            path,
            kiln_s,
            llama_s,
            identical,
            generated,
        });
    }
    Ok(rows)
}
