//! A streaming GGUF writer. The header is known before any data (every tensor's type and size
//! come from the plan), so data is appended tensor by tensor as it is produced. Everything goes
//! to a temporary file beside the target, which is renamed over the target only by
//! [`GgufWriter::finish`]; dropped early (error, panic), the temporary file is deleted.

use super::checksum;
use super::reader::{self, DEFAULT_ALIGNMENT};
use super::types::TypeId;
use super::value::{Array, Metadata, Value};
use anyhow::{bail, Context, Result};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// A tensor as the header will describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    /// ggml's ne: innermost first.
    pub dims: Vec<u64>,
    pub ty: TypeId,
    pub bytes: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&a.element_type().to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        Array::Str(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(b) => out.push(*b as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn alignment_of(md: &Metadata) -> u64 {
    match md.get("general.alignment") {
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
        _ => DEFAULT_ALIGNMENT,
    }
}

/// The header (magic through tensor infos, padded to the alignment) and each tensor's offset.
pub fn header_bytes(md: &Metadata, tensors: &[TensorEntry]) -> (Vec<u8>, Vec<u64>) {
    let (h, offsets, _) = header_layout(md, tensors);
    (h, offsets)
}

/// [`header_bytes`] plus where each metadata value starts in the header.
fn header_layout(md: &Metadata, tensors: &[TensorEntry]) -> (Vec<u8>, Vec<u64>, Vec<usize>) {
    let align = alignment_of(md);
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(md.len() as u64).to_le_bytes());
    let mut value_at = Vec::with_capacity(md.len());
    for (k, v) in md.iter() {
        put_str(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        value_at.push(out.len());
        put_value(&mut out, v);
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut off = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.0.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        offsets.push(off);
        off += t.bytes.div_ceil(align) * align;
    }
    let padded = (out.len() as u64).div_ceil(align) * align;
    out.resize(padded as usize, 0);
    (out, offsets, value_at)
}

/// Total file size for this header and these tensors.
pub fn file_size(md: &Metadata, tensors: &[TensorEntry]) -> u64 {
    let align = alignment_of(md);
    let (h, _) = header_bytes(md, tensors);
    h.len() as u64
        + tensors
            .iter()
            .map(|t| t.bytes.div_ceil(align) * align)
            .sum::<u64>()
}

/// Refuses to go on when `target` exists and `force` is not set.
pub fn check_target(target: &Path, force: bool) -> Result<()> {
    if target.exists() && !force {
        bail!(
            "{}: already exists (use --force to overwrite)",
            target.display()
        );
    }
    Ok(())
}

/// Temporary files being written, so that a second Ctrl-C (which exits at once, without
/// unwinding) can still remove them.
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes every temporary file still being written (for an immediate exit).
pub fn remove_partial_files() {
    if let Ok(live) = LIVE.lock() {
        for p in live.iter() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A temporary file's place in [`LIVE`], given up when dropped.
struct Registration(PathBuf);

impl Registration {
    fn new(p: &Path) -> Self {
        if let Ok(mut live) = LIVE.lock() {
            live.push(p.to_path_buf());
        }
        Registration(p.to_path_buf())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|p| p != &self.0);
        }
    }
}

/// Writes one GGUF file, tensor data in header order.
pub struct GgufWriter {
    target: PathBuf,
    force: bool,
    out: BufWriter<NamedTempFile>,
    tensors: Vec<TensorEntry>,
    align: u64,
    current: usize,
    written_in_current: u64,
    check: Option<Check>,
    /// Bytes handed to `out` so far (header included), and how far the kernel has been asked to
    /// start writing them to disk (see [`start_writeback`]).
    passed: u64,
    kicked: u64,
    _registration: Registration,
}

/// Written data after which the kernel is asked to start writing it to disk, so that the final
/// sync (before the rename) waits only for the last of it rather than for the whole file.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Starts writing `len` bytes at `from` of `f` to disk without waiting (Linux's
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`); errors surface at the final sync.
#[cfg(target_os = "linux")]
fn start_writeback(f: &std::fs::File, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // Safety: a system call on an open descriptor that only starts writeback of its dirty pages.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_f: &std::fs::File, _from: u64, _len: u64) {}

/// The checksum being computed (see [`checksum`]), and where its values go in the header.
struct Check {
    layout_at: usize,
    data_at: usize,
    layout: u64,
    hasher: checksum::Hasher,
    done: Vec<u64>,
}

impl GgufWriter {
    /// Starts the temporary file beside `target` and writes the header.
    pub fn create(
        target: &Path,
        force: bool,
        md: &Metadata,
        tensors: Vec<TensorEntry>,
    ) -> Result<Self> {
        check_target(target, force)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out.gguf".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{stem}."))
            .suffix(".partial")
            .tempfile_in(&dir)
            .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
        let registration = Registration::new(tmp.path());
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        let (header, _, value_at) = header_layout(md, &tensors);
        // The two checksum keys are the last two: a u64, then an array of u64 whose values
        // follow its element type (4 bytes) and length (8 bytes).
        let check = checksum::is_reserved(md, tensors.len()).then(|| Check {
            layout_at: value_at[value_at.len() - 2],
            data_at: value_at[value_at.len() - 1] + 12,
            layout: checksum::layout_hash(
                tensors.iter().map(|t| (t.name.as_str(), &t.dims[..], t.ty)),
            ),
            hasher: checksum::Hasher::new(),
            done: Vec::with_capacity(tensors.len()),
        });
        out.write_all(&header)
            .with_context(|| format!("{}: write failed", target.display()))?;
        Ok(GgufWriter {
            target: target.to_path_buf(),
            force,
            out,
            tensors,
            align: alignment_of(md),
            current: 0,
            written_in_current: 0,
            check,
            passed: header.len() as u64,
            kicked: 0,
            _registration: registration,
        })
    }

    /// Appends data of the current tensor.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.current) else {
            bail!("internal: data written past the last tensor");
        };
        if self.written_in_current + bytes.len() as u64 > t.bytes {
            bail!(
                "internal: tensor {} got more than its {} bytes",
                t.name,
                t.bytes
            );
        }
        self.out
            .write_all(bytes)
            .with_context(|| format!("{}: write failed", self.target.display()))?;
        self.written_in_current += bytes.len() as u64;
        if let Some(c) = &mut self.check {
            c.hasher.update(bytes);
        }
        self.passed += bytes.len() as u64;
        let in_kernel = self.passed - self.out.buffer().len() as u64;
        if in_kernel - self.kicked >= WRITEBACK_STEP {
            start_writeback(
                self.out.get_ref().as_file(),
                self.kicked,
                in_kernel - self.kicked,
            );
            self.kicked = in_kernel;
        }
        Ok(())
    }

    /// Ends the current tensor: checks its size and pads to the alignment.
    pub fn end_tensor(&mut self) -> Result<()> {
        let Some(t) = self.tensors.get(self.current) else {
            bail!("internal: end of a tensor past the last one");
        };
        if self.written_in_current != t.bytes {
            bail!(
                "internal: tensor {} got {} bytes, its header says {}",
                t.name,
                self.written_in_current,
                t.bytes
            );
        }
        let pad = t.bytes.div_ceil(self.align) * self.align - t.bytes;
        self.out
            .write_all(&vec![0u8; pad as usize])
            .with_context(|| format!("{}: write failed", self.target.display()))?;
        self.passed += pad;
        self.current += 1;
        self.written_in_current = 0;
        if let Some(c) = &mut self.check {
            c.done.push(c.hasher.digest());
            c.hasher.reset();
        }
        Ok(())
    }

    /// Flushes, syncs and renames the temporary file onto the target.
    pub fn finish(self) -> Result<()> {
        if self.current != self.tensors.len() {
            bail!(
                "internal: {} of {} tensors written",
                self.current,
                self.tensors.len()
            );
        }
        let target = self.target.clone();
        let mut tmp = self
            .out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("{}: write failed: {}", target.display(), e.error()))?;
        if let Some(c) = &self.check {
            let mut values = Vec::with_capacity(c.done.len() * 8);
            c.done
                .iter()
                .for_each(|h| values.extend_from_slice(&h.to_le_bytes()));
            let f = tmp.as_file_mut();
            f.seek(SeekFrom::Start(c.layout_at as u64))
                .and_then(|_| f.write_all(&c.layout.to_le_bytes()))
                .and_then(|_| f.seek(SeekFrom::Start(c.data_at as u64)))
                .and_then(|_| f.write_all(&values))
                .with_context(|| format!("{}: write failed", target.display()))?;
        }
        // tempfile creates files readable by the owner only; a model file is for everyone.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = tmp
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644));
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("{}: sync failed", target.display()))?;
        // What is about to appear must read back as the GGUF it was meant to be.
        // Safety: a read-only map of the finished temporary file, which only kiln writes.
        let map = unsafe { memmap2::Mmap::map(tmp.as_file()) }
            .with_context(|| format!("{}: cannot read back", tmp.path().display()))?;
        let back = reader::parse(&map).with_context(|| {
            format!(
                "{}: internal: the written file does not read back",
                target.display()
            )
        })?;
        if back.tensors.len() != self.tensors.len() {
            bail!(
                "{}: internal: the written file reads back with {} tensors, not {}",
                target.display(),
                back.tensors.len(),
                self.tensors.len()
            );
        }
        drop(map);
        if self.force {
            tmp.persist(&target).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot rename into place: {}",
                    target.display(),
                    e.error
                )
            })?;
        } else {
            tmp.persist_noclobber(&target).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot rename into place: {}",
                    target.display(),
                    e.error
                )
            })?;
        }
        Ok(())
    }
}
