//! The i-quants: non-linear levels (IQ4_NL, IQ4_XS) and 256-weight super-blocks whose groups of
//! weights are points of fixed lattice grids (ggml's tables, kept as data files under `grids/`),
//! searched with importance weights.
//!
//! Without an importance matrix each follows what ggml's `ggml_quantize_chunk` runs with a null
//! matrix (`quantize_<type>`, or `quantize_row_<type>_impl`, which weight each column by `x^2`
//! where no importance weights are given); with one, the same functions (for IQ4_NL/IQ4_XS the
//! weight of column `j` is `imatrix[j] * sqrt(sigma2 + x[j]^2)`).
//!
//! IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M: each group of 8 weights is a point of a fixed table
//! of 8-dimensional vectors, found by a search around the group's rounded levels; they share the
//! tables and neighbour lists of [`lattice`] (ggml's `iq2xs_init_impl`). IQ3_XXS and IQ3_S use
//! 4-dimensional grids, [`grid3`] (ggml's `iq3xs_init_impl`). IQ2_XXS, IQ2_XS and IQ1_S need
//! importance weights (as ggml does: [`crate::BlockFormat::REQUIRES_IMATRIX`]).

pub mod grid3;
pub mod iq1_m;
pub mod iq1_s;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub mod iq3_s;
pub mod iq3_xxs;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod lattice;

pub use iq1_m::{BlockIq1M, Iq1M};
pub use iq1_s::{BlockIq1S, Iq1S};
pub use iq2_s::{BlockIq2S, Iq2S};
pub use iq2_xs::{BlockIq2Xs, Iq2Xs};
pub use iq2_xxs::{BlockIq2Xxs, Iq2Xxs};
pub use iq3_s::{BlockIq3S, Iq3S};
pub use iq3_xxs::{BlockIq3Xxs, Iq3Xxs};
pub use iq4_nl::{BlockIQ4NL, IQ4NL};
pub use iq4_xs::{BlockIQ4XS, IQ4XS};

/// A block's search weights as the i-quant quantizers compute them: `x^2` without an importance
/// matrix, `qw * sqrt(sigma2 + x^2)` with one (`sigma2` from the super-block or row).
#[inline]
pub(crate) fn block_weights<const N: usize>(
    xb: &[f32],
    qw: Option<&[f32]>,
    sigma2: f32,
) -> [f32; N] {
    let mut w = [0.0f32; N];
    match qw {
        Some(qw) => {
            for j in 0..N {
                w[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
            }
        }
        None => {
            for j in 0..N {
                w[j] = xb[j] * xb[j];
            }
        }
    }
    w
}
