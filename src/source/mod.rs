//! Where weights come from: Hugging Face safetensors checkpoints, or a GGUF file to requantize.
//! Both sit behind one trait, [`Source`], which is all the pipeline knows of its input.

pub mod fp8;
pub mod gguf;
pub mod hf;
pub mod mx;
pub mod safetensors;

pub use self::safetensors::{to_f32, Checkpoint, SrcDtype, SrcTensor};
use crate::job::Transform;
use anyhow::Result;

/// The input of a conversion: a table of tensors, read a slab of rows at a time.
///
/// `index` is a position in the input's own tensor table (what a [`crate::job::TensorSource`]
/// names); rows are rows of the output tensor, before `transform` maps them to source rows.
pub trait Source: Send + Sync {
    /// Reads output rows `first..first + out.len() / n_per_row` of tensor `index` as f32.
    fn read_rows(
        &self,
        index: usize,
        transform: Transform,
        n_per_row: usize,
        first: usize,
        out: &mut [f32],
    ) -> Result<()>;

    /// The tensor's stored bytes, when the input holds them in the output's layout (a GGUF
    /// tensor copied unchanged).
    fn raw(&self, index: usize) -> Option<&[u8]>;

    /// A tensor's stored bytes whatever its dtype (an MX checkpoint's u8 blocks and scales);
    /// None where the input cannot give them.
    fn stored(&self, index: usize) -> Option<&[u8]> {
        let _ = index;
        None
    }

    /// Drops the input pages of rows already read, where rows are stored in order.
    fn release_rows(&self, index: usize, n_per_row: usize, first: usize, n: usize);

    /// Drops the input pages of a finished tensor from memory.
    fn release(&self, index: usize);

    /// For an error: "FILE: tensor NAME" of the input tensor.
    fn describe(&self, index: usize) -> (String, &str);

    /// Checks the input's own integrity data before anything is written (kiln's checksum in
    /// a GGUF input); nothing to check by default.
    fn verify(&self) -> Result<()> {
        Ok(())
    }
}
