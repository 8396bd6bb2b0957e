//! GGUF: metadata values, reading (memory-mapped, checked) and streaming writing.

pub mod checksum;
pub mod keys;
pub mod reader;
pub mod split;
pub mod types;
pub mod value;
pub mod writer;

pub use reader::{GgufFile, Header, TensorInfo};
pub use types::TypeId;
pub use value::{Array, Metadata, Value};
