//! The `general.*` metadata keys that more than one part of kiln writes, named once.

/// `general.architecture`: the GGUF architecture name ("llama", "gemma3").
pub const ARCHITECTURE: &str = "general.architecture";
/// `general.file_type`: llama.cpp's `llama_ftype` number of the file's mix.
pub const FILE_TYPE: &str = "general.file_type";
/// `general.quantization_version`.
pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
/// ggml's `GGML_QNT_VERSION`, the value of [`QUANTIZATION_VERSION`].
pub const GGML_QNT_VERSION: u32 = 2;
