//! kiln: Hugging Face checkpoints to GGUF at every precision, measured on llama.cpp.
//!
//! Data flows one way: [`source`] (checkpoint or GGUF) -> [`arch`] (one file per model family)
//! -> [`job`] (what each output tensor is) -> [`plan`] (each tensor's type) -> [`pipeline`]
//! (the streaming pass through `kiln-kernels`, re-exported as [`kernels`]) -> [`gguf`] (the
//! writer); and GGUF -> [`runner`] (llama.cpp) -> [`report`]. [`quantize`] ties the converter
//! together for `kiln quantize`. The converter builds without llama.cpp; the runner needs the
//! default `llama` feature.

pub use kiln_kernels as kernels;

pub mod arch;
pub mod budget;
pub mod gguf;
pub mod imatrix;
pub mod inspect;
pub mod job;
pub mod overrides;
pub mod pipeline;
pub mod plan;
pub mod quantize;
pub mod source;
pub mod tokenizer;

#[cfg(feature = "llama")]
pub mod llama;
#[cfg(feature = "llama")]
pub mod report;
#[cfg(feature = "llama")]
pub mod runner;
#[cfg(feature = "llama")]
pub mod sweep;
