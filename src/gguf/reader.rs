//! A GGUF reader over a memory map. Every length, count and offset is checked against the file
//! before use, so a truncated or corrupt file gives an error naming the problem and the byte
//! offset, never a panic or an out-of-bounds read.

use super::types::TypeId;
use super::value::{type_id, Array, Metadata, Value};
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's ne: innermost (row length) first.
    pub dims: Vec<u64>,
    pub ty: TypeId,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// Parsed header of a GGUF file.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// An open GGUF file: the header and the memory-mapped data.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: Header,
    map: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // Safety: the map is read-only; kiln never writes to its inputs. A file truncated by
        // another process while mapped is outside what any reader can defend against.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot memory-map", path.display()))?;
        let header =
            parse(&map).with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn metadata(&self) -> &Metadata {
        &self.header.metadata
    }

    pub fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's bytes (bounds were checked when the header was parsed).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.offset) as usize;
        &self.map[start..start + t.bytes as usize]
    }

    /// Lets the kernel drop the pages of a tensor already processed (they are re-read from the
    /// file if touched again), so resident memory stays bounded by the tensors in flight.
    pub fn release(&self, t: &TensorInfo) {
        self.release_range(t, 0, t.bytes as usize);
    }

    /// [`GgufFile::release`] for `len` bytes at `offset` within a tensor's data.
    pub fn release_range(&self, t: &TensorInfo, offset: usize, len: usize) {
        let start = (self.header.data_offset + t.offset) as usize + offset;
        // Safety: a read-only file mapping; MADV_DONTNEED only drops clean pages, which the
        // kernel reloads from the unchanged file on the next access.
        #[cfg(unix)]
        unsafe {
            let _ = self
                .map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            bail!(
                "truncated: {what} at offset {} needs {n} bytes, file has {left} left",
                self.pos
            );
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into()?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into()?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into()?))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| anyhow::anyhow!("{what} at offset {at} is not valid UTF-8"))
    }
    /// Checks that `count` items of at least `min_size` bytes each can still fit, so a huge
    /// count in a corrupt file fails before any allocation.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        let left = (self.buf.len() - self.pos) as u64;
        if count.saturating_mul(min_size) > left {
            bail!(
                "{what} count {count} at offset {} cannot fit in the {left} bytes left (truncated or corrupt file)",
                self.pos
            );
        }
        Ok(())
    }
}

fn min_size(ty: u32) -> u64 {
    use type_id::*;
    match ty {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 | STRING => 8,
        ARRAY => 12,
        _ => 1,
    }
}

fn read_value(c: &mut Cursor, ty: u32, key: &str, depth: u32) -> Result<Value> {
    use type_id::*;
    let what = format!("value of {key}");
    Ok(match ty {
        U8 => Value::U8(c.u8(&what)?),
        I8 => Value::I8(c.u8(&what)? as i8),
        U16 => Value::U16(c.u16(&what)?),
        I16 => Value::I16(c.u16(&what)? as i16),
        U32 => Value::U32(c.u32(&what)?),
        I32 => Value::I32(c.u32(&what)? as i32),
        F32 => Value::F32(f32::from_bits(c.u32(&what)?)),
        U64 => Value::U64(c.u64(&what)?),
        I64 => Value::I64(c.u64(&what)? as i64),
        F64 => Value::F64(f64::from_bits(c.u64(&what)?)),
        BOOL => {
            let at = c.pos;
            match c.u8(&what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("{what} at offset {at}: bool byte is {b}, not 0 or 1"),
            }
        }
        STRING => Value::Str(c.string(&what)?),
        ARRAY => Value::Array(read_array(c, key, depth)?),
        other => bail!("{what} at offset {}: unknown value type {other}", c.pos),
    })
}

fn read_array(c: &mut Cursor, key: &str, depth: u32) -> Result<Array> {
    if depth > 8 {
        bail!("{key}: arrays nested more than 8 deep");
    }
    let what = format!("array {key}");
    let et = c.u32(&what)?;
    let n = c.u64(&what)?;
    c.check_count(n, min_size(et), &what)?;
    let n = n as usize;
    macro_rules! many {
        ($variant:ident, $read:expr) => {{
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push($read);
            }
            Array::$variant(v)
        }};
    }
    use type_id::*;
    Ok(match et {
        U8 => many!(U8, c.u8(&what)?),
        I8 => many!(I8, c.u8(&what)? as i8),
        U16 => many!(U16, c.u16(&what)?),
        I16 => many!(I16, c.u16(&what)? as i16),
        U32 => many!(U32, c.u32(&what)?),
        I32 => many!(I32, c.u32(&what)? as i32),
        F32 => many!(F32, f32::from_bits(c.u32(&what)?)),
        U64 => many!(U64, c.u64(&what)?),
        I64 => many!(I64, c.u64(&what)? as i64),
        F64 => many!(F64, f64::from_bits(c.u64(&what)?)),
        BOOL => many!(Bool, c.u8(&what)? != 0),
        STRING => many!(Str, c.string(&what)?),
        ARRAY => many!(Array, read_array(c, key, depth + 1)?),
        other => bail!("{what}: unknown element type {other}"),
    })
}

/// Parses and checks a whole GGUF file held in `buf`.
pub fn parse(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        bail!("bad magic {:02x?} (expected \"GGUF\")", magic);
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        bail!("unsupported GGUF version {version} (kiln reads versions 2 and 3)");
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("key-value count")?;
    c.check_count(n_kv, 12, "key-value")?;
    let mut metadata = Metadata::new();
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.string("key")?;
        if metadata.get(&key).is_some() {
            bail!("duplicate key {key:?} at offset {at}");
        }
        let ty = c.u32(&format!("type of {key}"))?;
        let v = read_value(&mut c, ty, &key, 0)?;
        metadata.set(key, v);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
        Some(v) => bail!("general.alignment is {v}, not a power of two u32"),
    };
    c.check_count(n_tensors, 24, "tensor")?;
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor {i}"))?;
        if !names.insert(name.clone()) {
            bail!("duplicate tensor name {name:?}");
        }
        let n_dims = c.u32(&format!("dims of {name}"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            bail!("tensor {name}: {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})");
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = c.u64(&format!("dims of {name}"))?;
            if d == 0 || d > i64::MAX as u64 {
                bail!("tensor {name}: dimension {d} out of range");
            }
            dims.push(d);
        }
        let ty = TypeId(c.u32(&format!("type of {name}"))?);
        let Some((bw, _)) = ty.block() else {
            bail!("tensor {name}: unknown ggml type id {}", ty.0);
        };
        let offset = c.u64(&format!("offset of {name}"))?;
        if offset % alignment != 0 {
            bail!("tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}");
        }
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let Some(n) = n.filter(|&n| n <= i64::MAX as u64) else {
            bail!("tensor {name}: element count overflows");
        };
        if dims[0] % bw != 0 {
            bail!(
                "tensor {name}: row length {} is not a multiple of the {} block size {bw}",
                dims[0],
                ty.label()
            );
        }
        let bytes = ty
            .row_bytes(dims[0])
            .and_then(|rb| rb.checked_mul(n / dims[0]))
            .with_context(|| format!("tensor {name}: byte size overflows"))?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            bytes,
        });
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    // Bounds and overlaps: sort by offset and walk.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    let mut end_prev = 0u64;
    let mut prev_name = "";
    for &i in &order {
        let t = &tensors[i];
        let start = data_offset
            .checked_add(t.offset)
            .with_context(|| format!("tensor {}: offset overflows", t.name))?;
        let end = start
            .checked_add(t.bytes)
            .with_context(|| format!("tensor {}: offset overflows", t.name))?;
        if end > file_len {
            bail!(
                "truncated: tensor {} needs bytes {start}..{end}, the file has {file_len}",
                t.name
            );
        }
        if t.offset < end_prev {
            bail!("tensors {prev_name} and {} overlap", t.name);
        }
        end_prev = t.offset + t.bytes;
        prev_name = &t.name;
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
