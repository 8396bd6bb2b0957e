//! The i-quants: 256-weight super-blocks whose groups of weights are points of fixed lattice
//! grids (ggml's tables, kept as data files under `grids/`), with per-sub-block scales.
//!
//! Each follows ggml's `quantize_row_<type>_impl` (or `quantize_<type>`), which takes the
//! importance weights when given and `x^2` otherwise.

pub mod grid3;
pub mod iq3_s;
pub mod iq3_xxs;

pub use iq3_s::{BlockIq3S, Iq3S};
pub use iq3_xxs::{BlockIq3Xxs, Iq3Xxs};
