//! The i-quants: lattice ("grid") formats whose groups of 8 weights are points of a fixed
//! table of 8-dimensional vectors, found by a search around each group's rounded levels.
//!
//! IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M share the tables and neighbour lists of
//! [`lattice`] (ggml's `iq2xs_init_impl`). IQ2_XXS, IQ2_XS and IQ1_S need importance weights
//! (as ggml does: [`crate::BlockFormat::REQUIRES_IMATRIX`]); IQ2_S and IQ1_M take them when
//! given.

pub mod iq1_m;
pub mod iq1_s;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub mod lattice;

pub use iq1_m::{BlockIq1M, Iq1M};
pub use iq1_s::{BlockIq1S, Iq1S};
pub use iq2_s::{BlockIq2S, Iq2S};
pub use iq2_xs::{BlockIq2Xs, Iq2Xs};
pub use iq2_xxs::{BlockIq2Xxs, Iq2Xxs};
