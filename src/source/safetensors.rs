//! Hugging Face checkpoints: config.json plus one or more memory-mapped safetensors files.
//! Headers are parsed and checked by the `safetensors` crate; kiln turns its errors into
//! messages that name the file, and keeps only offsets, so no tensor is read before it is used.

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The element type of a source tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcDtype {
    F32,
    F16,
    BF16,
    /// fp8 e4m3 codes, dequantized with the weight's block scales ([`super::fp8`]); only
    /// weights paired with a `_scale_inv` tensor have it.
    F8E4M3,
}

impl SrcDtype {
    pub fn size(self) -> usize {
        match self {
            SrcDtype::F32 => 4,
            SrcDtype::F16 | SrcDtype::BF16 => 2,
            SrcDtype::F8E4M3 => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SrcDtype::F32 => "F32",
            SrcDtype::F16 => "F16",
            SrcDtype::BF16 => "BF16",
            SrcDtype::F8E4M3 => "F8_E4M3",
        }
    }
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug)]
pub struct SrcTensor {
    pub name: String,
    /// Shape in PyTorch order (outermost first).
    pub shape: Vec<usize>,
    /// The dtype, or Err with the safetensors name of a dtype kiln does not convert.
    pub dtype: std::result::Result<SrcDtype, String>,
    /// An fp8 weight's scales (its `_scale_inv` tensor, see [`super::fp8`]).
    pub scale: Option<Box<super::fp8::Fp8Scale>>,
    file: usize,
    start: usize,
    end: usize,
}

impl SrcTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Where its bytes are in its file.
    pub fn byte_range(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

struct Mapped {
    path: PathBuf,
    map: Mmap,
}

/// A checkpoint folder (or one .safetensors file and its folder).
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    files: Vec<Mapped>,
    /// In file order, then offset order.
    pub tensors: Vec<SrcTensor>,
    by_name: HashMap<String, usize>,
}

fn explain(e: SafeTensorError, len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("file is {len} bytes, too short for a safetensors header")
        }
        SafeTensorError::HeaderTooLarge => {
            "header length is over the 100 MB limit (corrupt file?)".into()
        }
        SafeTensorError::InvalidHeaderLength => {
            format!("header length runs past the end of the {len}-byte file (truncated?)")
        }
        SafeTensorError::InvalidHeader => "header is not valid UTF-8".into(),
        SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
            "header is not the JSON safetensors expects".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor {name}: data offsets overlap, leave gaps or disagree with its shape and dtype")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape and dtype disagree with its byte range".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("file is {len} bytes but its header describes a different size (truncated or corrupt)")
        }
        SafeTensorError::ValidationOverflow => "a tensor's size overflows".into(),
        other => format!("{other:?}"),
    }
}

/// Names the tensor behind a header that passed the JSON parse but not the size checks:
/// a shape and dtype that disagree with the byte range, or data past the end of the file.
fn diagnose(buf: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(buf.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = (buf.len() - 8 - n) as u64;
    for (name, t) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let elem: u64 = match t.get("dtype")?.as_str()? {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => continue,
        };
        let shape: Vec<u64> = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let offs = t.get("data_offsets")?.as_array()?;
        let (a, b) = (offs.first()?.as_u64()?, offs.get(1)?.as_u64()?);
        let need = shape.iter().try_fold(elem, |acc, &d| acc.checked_mul(d));
        if need != b.checked_sub(a) {
            return Some(format!(
                "tensor {name}: shape {shape:?} of {} needs {} bytes, its data_offsets [{a}, {b}] hold {}",
                t["dtype"].as_str().unwrap_or_default(),
                need.map_or("too many".into(), |x| x.to_string()),
                b.saturating_sub(a)
            ));
        }
        if b > data_len {
            return Some(format!(
                "tensor {name}: data ends at byte {b} of the data section, which has {data_len} bytes (truncated?)"
            ));
        }
    }
    None
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // Safety: read-only map of an input file.
    unsafe { Mmap::map(&f) }.with_context(|| format!("{}: cannot memory-map", path.display()))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Parses and checks the header of a whole safetensors file held in `buf`: the tensors in
/// offset order, each with its byte range in `buf`, tagged with file number `file`. The error
/// says what is wrong (without the file name).
pub fn parse_header(buf: &[u8], file: usize) -> std::result::Result<Vec<SrcTensor>, String> {
    let (n, meta) = SafeTensors::read_metadata(buf).map_err(|e| {
        let why = match e {
            SafeTensorError::TensorInvalidInfo | SafeTensorError::MetadataIncompleteBuffer => {
                diagnose(buf)
            }
            _ => None,
        };
        why.unwrap_or_else(|| explain(e, buf.len()))
    })?;
    let base = 8 + n;
    let mut list: Vec<SrcTensor> = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            Dtype::F32 => Ok(SrcDtype::F32),
            Dtype::F16 => Ok(SrcDtype::F16),
            Dtype::BF16 => Ok(SrcDtype::BF16),
            other => Err(format!("{other:?}")),
        };
        let (s, e) = info.data_offsets;
        list.push(SrcTensor {
            name,
            shape: info.shape.clone(),
            dtype,
            scale: None,
            file,
            start: base + s,
            end: base + e,
        });
    }
    list.sort_by_key(|t| t.start);
    Ok(list)
}

impl Checkpoint {
    /// Opens a checkpoint folder, or a single .safetensors file with its folder's config.json.
    pub fn open(input: &Path) -> Result<Self> {
        let (dir, files) = if input.is_dir() {
            (input.to_path_buf(), Self::shard_list(input)?)
        } else {
            let dir = input
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            (dir.to_path_buf(), vec![input.to_path_buf()])
        };
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            bail!(
                "{}: missing (a Hugging Face checkpoint needs its config.json)",
                config_path.display()
            );
        }
        let config = read_json(&config_path)?;
        if !config.is_object() {
            bail!("{}: not a JSON object", config_path.display());
        }
        let mut ck = Checkpoint {
            dir,
            config,
            files: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        for path in files {
            ck.add_file(&path)?;
        }
        if input.is_dir() {
            ck.check_index()?;
        }
        ck.attach_fp8_scales(&config_path)?;
        Ok(ck)
    }

    /// The safetensors files of a folder: those the index names, else model.safetensors, else
    /// every *.safetensors file.
    fn shard_list(dir: &Path) -> Result<Vec<PathBuf>> {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            let j = read_json(&index)?;
            let Some(map) = j.get("weight_map").and_then(|m| m.as_object()) else {
                bail!("{}: no \"weight_map\" object", index.display());
            };
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let Some(f) = file.as_str() else {
                    bail!(
                        "{}: weight_map entry {tensor} is not a file name",
                        index.display()
                    );
                };
                if f.contains('/') || f.contains('\\') || f.contains("..") {
                    bail!(
                        "{}: weight_map names a file outside the folder: {f}",
                        index.display()
                    );
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            let mut out = Vec::new();
            for n in names {
                let p = dir.join(&n);
                if !p.exists() {
                    bail!("{}: names shard {n}, which is missing", index.display());
                }
                out.push(p);
            }
            return Ok(out);
        }
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Ok(vec![single]);
        }
        let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        all.sort();
        if all.is_empty() {
            bail!(
                "{}: no .safetensors files (kiln reads safetensors checkpoints)",
                dir.display()
            );
        }
        Ok(all)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let map = map_file(path)?;
        let file = self.files.len();
        let list =
            parse_header(&map, file).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
        for t in list {
            if self.by_name.contains_key(&t.name) {
                bail!(
                    "{}: tensor {} is also in another shard",
                    path.display(),
                    t.name
                );
            }
            self.by_name.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        self.files.push(Mapped {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }

    /// With `quantization_config.quant_method = "fp8"`, pairs each fp8 weight with its
    /// `_scale_inv` tensor ([`super::fp8::attach_scales`]); other quant_methods are an error.
    fn attach_fp8_scales(&mut self, config_path: &Path) -> Result<()> {
        let q = super::fp8::quantization(&self.config)
            .map_err(|why| anyhow::anyhow!("{}: {why}", config_path.display()))?;
        if q == super::fp8::Quantization::None {
            if let Some(t) = self
                .tensors
                .iter()
                .find(|t| matches!(&t.dtype, Err(d) if d == "F8_E4M3"))
            {
                bail!(
                    "{}: tensor {} is F8_E4M3, but {} has no quantization_config with quant_method \"fp8\" (its scales are unknown)",
                    self.files[t.file].path.display(),
                    t.name,
                    config_path.display()
                );
            }
        }
        let tensors = std::mem::take(&mut self.tensors);
        let files: Vec<PathBuf> = self.files.iter().map(|f| f.path.clone()).collect();
        self.tensors =
            super::fp8::attach_scales(&q, tensors, |t| files[t.file].display().to_string())
                .map_err(|why| anyhow::anyhow!(why))?;
        self.by_name = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(())
    }

    /// Every tensor the index names must be in the shard it names.
    fn check_index(&self) -> Result<()> {
        let index = self.dir.join("model.safetensors.index.json");
        if !index.exists() {
            return Ok(());
        }
        let j = read_json(&index)?;
        if let Some(map) = j.get("weight_map").and_then(|m| m.as_object()) {
            for (tensor, file) in map {
                let file = file.as_str().unwrap_or_default();
                match self.by_name.get(tensor) {
                    None => bail!(
                        "{}: names tensor {tensor} in {file}, which does not hold it",
                        index.display()
                    ),
                    Some(&i) => {
                        let actual = &self.files[self.tensors[i].file].path;
                        if actual.file_name().is_some_and(|n| n != file) {
                            bail!(
                                "{}: names tensor {tensor} in {file}, but it is in {}",
                                index.display(),
                                actual.display()
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Each tensor's position (by index) in convert_hf_to_gguf.py's iteration: the files in
    /// name order (as kiln lists them), each file's tensors sorted by name (gguf-py's
    /// `SafetensorsLocal` sorts them, as the safetensors library does), not by offset.
    pub fn convert_ranks(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.tensors.len()).collect();
        order.sort_by(|&a, &b| {
            let (ta, tb) = (&self.tensors[a], &self.tensors[b]);
            ta.file.cmp(&tb.file).then_with(|| ta.name.cmp(&tb.name))
        });
        let mut rank = vec![0; order.len()];
        for (r, i) in order.into_iter().enumerate() {
            rank[i] = r;
        }
        rank
    }

    pub fn get(&self, name: &str) -> Option<&SrcTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The file a tensor lives in.
    pub fn file_of(&self, t: &SrcTensor) -> &Path {
        &self.files[t.file].path
    }

    /// The raw bytes of a tensor (bounds were checked with the header).
    pub fn bytes(&self, t: &SrcTensor) -> &[u8] {
        &self.files[t.file].map[t.start..t.end]
    }

    /// Lets the kernel drop the pages of a tensor already converted (see
    /// `GgufFile::release`).
    pub fn release(&self, t: &SrcTensor) {
        self.release_range(t, 0, t.end - t.start);
    }

    /// [`Checkpoint::release`] for `len` bytes at `offset` within a tensor's data.
    pub fn release_range(&self, t: &SrcTensor, offset: usize, len: usize) {
        // Safety: read-only file mapping; dropped clean pages are reloaded from the file.
        #[cfg(unix)]
        unsafe {
            let _ = self.files[t.file].map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                t.start + offset,
                len.min(t.end - t.start - offset),
            );
        }
    }

    /// A config.json field, if present.
    pub fn cfg(&self, key: &str) -> Option<&serde_json::Value> {
        self.config.get(key)
    }
}

/// Converts elements of `dtype` to f32, exactly (f16 and bf16 widen without rounding).
pub fn to_f32(dtype: SrcDtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        SrcDtype::F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        SrcDtype::F16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        SrcDtype::BF16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        // The codes alone; a weight's scales are applied by the reader (`fp8::dequant_row`).
        SrcDtype::F8E4M3 => {
            for (o, &b) in dst.iter_mut().zip(src) {
                *o = super::fp8::e4m3_to_f32(b);
            }
        }
    }
}
