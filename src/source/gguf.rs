//! A GGUF file as a [`Source`] (requantizing): tensors kiln can read are dequantized by
//! kiln's kernels; other ggml types by ggml's own `to_float` when kiln is built with llama.cpp
//! (the default `llama` feature), else with an error that says so.

use super::Source;
use crate::gguf::{GgufFile, TypeId};
use crate::job::Transform;
use anyhow::{anyhow, bail, Context, Result};

/// Dequantizes `src` (whole rows of `n_per_row`) of any ggml type into `dst`.
fn dequantize_any(ty: TypeId, src: &[u8], n_per_row: usize, dst: &mut [f32]) -> Result<()> {
    if let Some(k) = ty.kiln() {
        k.dequantize(src, n_per_row, dst)
            .map_err(|e| anyhow!("{e}"))?;
        return Ok(());
    }
    foreign::dequantize(ty, src, n_per_row, dst)
}

#[cfg(feature = "llama")]
mod foreign {
    use super::*;
    use llama_cpp_sys_2 as sys;
    use rayon::prelude::*;

    /// Types kiln does not write (the lattice i-quants, NVFP4, Q8_1, ...): ggml's own to_float.
    pub fn dequantize(ty: TypeId, src: &[u8], n_per_row: usize, dst: &mut [f32]) -> Result<()> {
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
}

#[cfg(not(feature = "llama"))]
mod foreign {
    use super::*;

    pub fn dequantize(ty: TypeId, _: &[u8], _: usize, _: &mut [f32]) -> Result<()> {
        bail!(
            "reading type {} needs ggml's dequantizer: this kiln was built without llama.cpp \
             (--no-default-features); rebuild with the default `llama` feature",
            ty.label()
        )
    }
}

impl Source for GgufFile {
    fn read_rows(
        &self,
        index: usize,
        _transform: Transform,
        n_per_row: usize,
        first: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let t = &self.tensors()[index];
        let rb = t.ty.row_bytes(n_per_row as u64).context("row size")? as usize;
        let n = out.len() / n_per_row;
        let data = self.data(t);
        dequantize_any(t.ty, &data[first * rb..(first + n) * rb], n_per_row, out)
    }

    fn raw(&self, index: usize) -> Option<&[u8]> {
        Some(self.data(&self.tensors()[index]))
    }

    fn release_rows(&self, index: usize, n_per_row: usize, first: usize, n: usize) {
        let t = &self.tensors()[index];
        if let Some(rb) = t.ty.row_bytes(n_per_row as u64) {
            self.release_range(t, first * rb as usize, n * rb as usize);
        }
    }

    fn release(&self, index: usize) {
        GgufFile::release(self, &self.tensors()[index]);
    }

    fn describe(&self, index: usize) -> (String, &str) {
        (self.path.display().to_string(), &self.tensors()[index].name)
    }

    fn verify(&self) -> Result<()> {
        crate::gguf::checksum::verify(self).map(|_| ())
    }
}

/// A split GGUF (`NAME-00001-of-0000N.gguf` ...) as one [`Source`]: the shards' tensors in
/// shard order, as llama.cpp's loader and llama-quantize see them.
pub struct SplitGguf {
    pub shards: Vec<GgufFile>,
    /// (shard, index in the shard) of each tensor.
    table: Vec<(usize, usize)>,
}

impl SplitGguf {
    pub fn new(shards: Vec<GgufFile>) -> Self {
        let table = shards
            .iter()
            .enumerate()
            .flat_map(|(s, g)| (0..g.tensors().len()).map(move |i| (s, i)))
            .collect();
        SplitGguf { shards, table }
    }

    /// The shard of each tensor, by index.
    pub fn shard_of(&self) -> Vec<usize> {
        self.table.iter().map(|&(s, _)| s).collect()
    }

    /// Every tensor, in order.
    pub fn tensors(&self) -> impl Iterator<Item = &crate::gguf::TensorInfo> {
        self.table
            .iter()
            .map(|&(s, i)| &self.shards[s].tensors()[i])
    }
}

impl Source for SplitGguf {
    fn read_rows(
        &self,
        index: usize,
        transform: Transform,
        n_per_row: usize,
        first: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let (s, i) = self.table[index];
        self.shards[s].read_rows(i, transform, n_per_row, first, out)
    }

    fn raw(&self, index: usize) -> Option<&[u8]> {
        let (s, i) = self.table[index];
        self.shards[s].raw(i)
    }

    fn release_rows(&self, index: usize, n_per_row: usize, first: usize, n: usize) {
        let (s, i) = self.table[index];
        self.shards[s].release_rows(i, n_per_row, first, n)
    }

    fn release(&self, index: usize) {
        let (s, i) = self.table[index];
        Source::release(&self.shards[s], i)
    }

    fn describe(&self, index: usize) -> (String, &str) {
        let (s, i) = self.table[index];
        self.shards[s].describe(i)
    }

    fn verify(&self) -> Result<()> {
        self.shards.iter().try_for_each(|g| g.verify())
    }
}
