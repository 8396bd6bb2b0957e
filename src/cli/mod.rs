//! The command line's handlers, one file per side: the converter's commands, and the runner's
//! (built with the default `llama` feature).

pub mod convert;
#[cfg(feature = "llama")]
pub mod runner;
