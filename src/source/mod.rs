//! Where weights come from: Hugging Face safetensors checkpoints, or a GGUF file to requantize.

pub mod safetensors;

pub use self::safetensors::{to_f32, Checkpoint, SrcDtype, SrcTensor};
