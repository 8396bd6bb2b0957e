//! The i-quants: non-linear levels and lattice grids, searched with importance weights.
//!
//! Without an importance matrix each follows what ggml's `ggml_quantize_chunk` runs with a null
//! matrix (for IQ4_NL/IQ4_XS, `quantize_iq4_nl`/`quantize_iq4_xs`, which weight each column by
//! `x^2`); with one, the same functions, where the weight of column `j` is
//! `imatrix[j] * sqrt(sigma2 + x[j]^2)`.

pub mod iq4_nl;
pub mod iq4_xs;

pub use iq4_nl::{BlockIQ4NL, IQ4NL};
pub use iq4_xs::{BlockIQ4XS, IQ4XS};
