//! The checked entry points: validate a call, then quantize or dequantize many rows in
//! parallel with rayon. Rows are independent, so the bytes never depend on the thread count.

use crate::{BlockFormat, Simd};
use rayon::prelude::*;
use std::fmt;

/// Why a kernel call was refused. Nothing is panicked on; every bad call is one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// The row length is zero or not a multiple of the format's block size.
    RowLength {
        format: &'static str,
        n_per_row: usize,
        block: usize,
    },
    /// The input is not a whole number of rows.
    Ragged { len: usize, n_per_row: usize },
    /// The output buffer is smaller than the rows need.
    OutputTooSmall { needed: usize, got: usize },
    /// The format needs an importance matrix (ggml refuses it without one) and none was given.
    ImatrixRequired { format: &'static str },
    /// The importance matrix does not have one weight per column.
    ImatrixLength { expected: usize, got: usize },
    /// An input weight is NaN or infinite.
    NonFinite {
        row: usize,
        column: usize,
        value: f32,
    },
    /// An importance weight is NaN, infinite or negative.
    BadImportance { column: usize, value: f32 },
    /// The quantized row holds a non-finite scale or value (ggml's `ggml_validate_row_data`
    /// would reject it): the weights are too large for the format's f16 scales.
    Overflow {
        format: &'static str,
        row: usize,
        block: usize,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::RowLength {
                format,
                n_per_row,
                block,
            } => write!(
                f,
                "row length {n_per_row} is not a positive multiple of {format}'s block size {block}"
            ),
            KernelError::Ragged { len, n_per_row } => {
                write!(
                    f,
                    "{len} weights are not a whole number of rows of {n_per_row}"
                )
            }
            KernelError::OutputTooSmall { needed, got } => {
                write!(f, "output buffer holds {got} bytes but {needed} are needed")
            }
            KernelError::ImatrixRequired { format } => write!(
                f,
                "{format} needs an importance matrix (llama.cpp refuses it without one too)"
            ),
            KernelError::ImatrixLength { expected, got } => write!(
                f,
                "importance matrix has {got} weights but the rows have {expected} columns"
            ),
            KernelError::NonFinite { row, column, value } => {
                write!(f, "weight at row {row}, column {column} is {value}")
            }
            KernelError::BadImportance { column, value } => {
                write!(f, "importance weight for column {column} is {value}")
            }
            KernelError::Overflow { format, row, block } => write!(
                f,
                "row {row}, block {block}: weights too large for {format} (its f16 scale overflows)"
            ),
        }
    }
}

impl std::error::Error for KernelError {}

/// Target input per parallel task: enough rows that scheduling costs nothing next to the work.
const TASK_WEIGHTS: usize = 1 << 16;

fn rows_per_task(n_per_row: usize) -> usize {
    (TASK_WEIGHTS / n_per_row).max(1)
}

fn check_rows<F: BlockFormat>(len: usize, n_per_row: usize) -> Result<usize, KernelError> {
    if n_per_row == 0 || !n_per_row.is_multiple_of(F::BLOCK_WEIGHTS) {
        return Err(KernelError::RowLength {
            format: F::TYPE.name(),
            n_per_row,
            block: F::BLOCK_WEIGHTS,
        });
    }
    if !len.is_multiple_of(n_per_row) {
        return Err(KernelError::Ragged { len, n_per_row });
    }
    Ok(len / n_per_row)
}

/// The largest magnitude's bit pattern in `row` (sign cleared): at least `0x7f80_0000`
/// exactly when the row holds an infinity or a NaN. Branch-free (a max reduction that
/// vectorizes).
#[inline]
pub(crate) fn max_magnitude_bits(row: &[f32]) -> u32 {
    row.iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// The column of the first non-finite weight of `row`: one branch-free pass, then a search
/// only when there is something to find.
#[inline]
pub(crate) fn first_non_finite(row: &[f32]) -> Option<usize> {
    if max_magnitude_bits(row) < 0x7f80_0000 {
        return None;
    }
    row.iter().position(|v| !v.is_finite())
}

/// Quantizes `src`, rows of `n_per_row` weights, into `dst` as format `F`; returns the bytes
/// written. With `imatrix` (one importance weight per column) it follows ggml's
/// importance-weighted path. Output is byte-identical to ggml's `ggml_quantize_chunk` on the
/// same input, and independent of the number of rayon threads and of the SIMD level
/// ([`Simd::active`]).
pub fn quantize<F: BlockFormat>(
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<usize, KernelError> {
    quantize_at::<F>(Simd::active(), src, n_per_row, imatrix, dst)
}

/// [`quantize`] with the kernels of SIMD level `simd` (a level this CPU lacks runs the
/// highest one it has below it): the same bytes at every level, which is what the oracle
/// tests check level by level.
pub fn quantize_at<F: BlockFormat>(
    simd: Simd,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<usize, KernelError> {
    let nrows = check_rows::<F>(src.len(), n_per_row)?;
    let row_bytes = F::row_bytes(n_per_row);
    let needed = nrows * row_bytes;
    if dst.len() < needed {
        return Err(KernelError::OutputTooSmall {
            needed,
            got: dst.len(),
        });
    }
    if F::REQUIRES_IMATRIX && imatrix.is_none() {
        return Err(KernelError::ImatrixRequired {
            format: F::TYPE.name(),
        });
    }
    if let Some(qw) = imatrix {
        if qw.len() != n_per_row {
            return Err(KernelError::ImatrixLength {
                expected: n_per_row,
                got: qw.len(),
            });
        }
        if let Some(column) = qw.iter().position(|w| !w.is_finite() || *w < 0.0) {
            return Err(KernelError::BadImportance {
                column,
                value: qw[column],
            });
        }
    }
    let per_task = rows_per_task(n_per_row);
    let failures: Vec<KernelError> = src
        .par_chunks(per_task * n_per_row)
        .zip(dst[..needed].par_chunks_mut(per_task * row_bytes))
        .enumerate()
        .filter_map(|(task, (x, y))| {
            let first_row = task * per_task;
            // Row by row, each checked finite as it is quantized (the row is then still in
            // the core's cache for the kernel).
            for (r, (xr, yr)) in x
                .chunks_exact(n_per_row)
                .zip(y.chunks_exact_mut(row_bytes))
                .enumerate()
            {
                if let Some(column) = F::quantize_row_checked(simd, xr, yr, imatrix) {
                    return Some(KernelError::NonFinite {
                        row: first_row + r,
                        column,
                        value: xr[column],
                    });
                }
                if let Some(block) = F::first_invalid_block(yr) {
                    return Some(KernelError::Overflow {
                        format: F::TYPE.name(),
                        row: first_row + r,
                        block,
                    });
                }
            }
            None
        })
        .collect();
    // Tasks come back in row order, so the error reported is always the first row's.
    match failures.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(needed),
    }
}

/// Dequantizes `src`, rows of `n_per_row` weights stored as format `F`, into `dst`; returns
/// the number of weights written. Bit-identical to ggml's `to_float`.
pub fn dequantize<F: BlockFormat>(
    src: &[u8],
    n_per_row: usize,
    dst: &mut [f32],
) -> Result<usize, KernelError> {
    check_rows::<F>(n_per_row, n_per_row)?;
    let row_bytes = F::row_bytes(n_per_row);
    if !src.len().is_multiple_of(row_bytes) {
        return Err(KernelError::Ragged {
            len: src.len(),
            n_per_row: row_bytes,
        });
    }
    let nrows = src.len() / row_bytes;
    let needed = nrows * n_per_row;
    if dst.len() < needed {
        return Err(KernelError::OutputTooSmall {
            needed: needed * 4,
            got: dst.len() * 4,
        });
    }
    let per_task = rows_per_task(n_per_row);
    src.par_chunks(per_task * row_bytes)
        .zip(dst[..needed].par_chunks_mut(per_task * n_per_row))
        .for_each(|(x, y)| {
            for (xr, yr) in x.chunks_exact(row_bytes).zip(y.chunks_exact_mut(n_per_row)) {
                F::dequantize_row(xr, yr);
            }
        });
    Ok(needed)
}
