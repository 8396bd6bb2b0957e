//! kiln: Hugging Face checkpoints to GGUF at every precision, measured on llama.cpp.
//!
//! The kernels live in the `kiln-kernels` crate (re-exported as [`kernels`]); this crate holds
//! what talks to llama.cpp and the command line.

pub mod demo;
pub mod ggml;
pub mod synth;

pub use kiln_kernels as kernels;
pub mod gguf;
pub mod plan;
pub mod source;
pub mod convert;
pub mod imatrix;
pub mod arch;
pub mod quantize;
pub mod fixture;
pub mod inspect;
pub mod llama;
pub mod tokenizer;
