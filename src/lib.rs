//! kiln: Hugging Face checkpoints to GGUF at every precision, measured on llama.cpp.
//!
//! The kernels live in the `kiln-kernels` crate (re-exported as [`kernels`]); this crate holds
//! what talks to llama.cpp and the command line.

pub mod demo;
pub mod ggml;
pub mod synth;

pub use kiln_kernels as kernels;
pub mod arch;
pub mod convert;
pub mod fixture;
pub mod gguf;
pub mod imatrix;
pub mod inspect;
pub mod llama;
pub mod plan;
pub mod quantize;
pub mod report;
pub mod runner;
pub mod source;
pub mod sweep;
pub mod tokenizer;
