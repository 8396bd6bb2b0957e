//! The i-quants: non-linear levels and lattice grids, searched with importance weights.
//!
//! Without an importance matrix each follows what ggml's `ggml_quantize_chunk` runs with a null
//! matrix (for IQ4_NL/IQ4_XS, `quantize_iq4_nl`/`quantize_iq4_xs`, which weight each column by
//! `x^2`); with one, the same functions, where the weight of column `j` is
//! `imatrix[j] * sqrt(sigma2 + x[j]^2)`.
//!
//! IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M are lattice formats: each group of 8 weights is a
//! point of a fixed table of 8-dimensional vectors, found by a search around the group's rounded
//! levels. They share the tables and neighbour lists of [`lattice`] (ggml's `iq2xs_init_impl`).
//! IQ2_XXS, IQ2_XS and IQ1_S need importance weights (as ggml does:
//! [`crate::BlockFormat::REQUIRES_IMATRIX`]); IQ2_S and IQ1_M take them when given.

pub mod iq1_m;
pub mod iq1_s;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod lattice;

pub use iq1_m::{BlockIq1M, Iq1M};
pub use iq1_s::{BlockIq1S, Iq1S};
pub use iq2_s::{BlockIq2S, Iq2S};
pub use iq2_xs::{BlockIq2Xs, Iq2Xs};
pub use iq2_xxs::{BlockIq2Xxs, Iq2Xxs};
pub use iq4_nl::{BlockIQ4NL, IQ4NL};
pub use iq4_xs::{BlockIQ4XS, IQ4XS};
