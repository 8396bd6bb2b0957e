//! The i-quants: non-linear levels (IQ4_NL, IQ4_XS) and 256-weight super-blocks whose groups of
//! weights are points of fixed lattice grids (ggml's tables, kept as data files under `grids/`),
//! searched with importance weights.
//!
//! Without an importance matrix each follows what ggml's `ggml_quantize_chunk` runs with a null
//! matrix (`quantize_<type>`, or `quantize_row_<type>_impl`, which weight each column by `x^2`
//! where no importance weights are given); with one, the same functions (for IQ4_NL/IQ4_XS the
//! weight of column `j` is `imatrix[j] * sqrt(sigma2 + x[j]^2)`).

pub mod grid3;
pub mod iq3_s;
pub mod iq3_xxs;
pub mod iq4_nl;
pub mod iq4_xs;

pub use iq3_s::{BlockIq3S, Iq3S};
pub use iq3_xxs::{BlockIq3Xxs, Iq3Xxs};
pub use iq4_nl::{BlockIQ4NL, IQ4NL};
pub use iq4_xs::{BlockIQ4XS, IQ4XS};
