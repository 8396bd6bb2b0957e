//! A Hugging Face checkpoint as a [`Source`]: rows widened from F32/F16/BF16 to f32, with the
//! converter's transforms (Llama's q/k head permutation, Gemma's +1 on norms) applied.

use super::{to_f32, Checkpoint, Source, SrcDtype};
use crate::job::Transform;
use anyhow::{anyhow, Result};
use rayon::prelude::*;

fn add_one(xs: &mut [f32], dtype: SrcDtype) {
    for x in xs.iter_mut() {
        *x = if dtype == SrcDtype::F16 {
            half::f16::from_f32(*x + 1.0).to_f32()
        } else {
            *x + 1.0
        };
    }
}

impl Source for Checkpoint {
    fn read_rows(
        &self,
        index: usize,
        transform: Transform,
        n_per_row: usize,
        first: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let t = &self.tensors[index];
        let dtype = t.dtype.clone().map_err(|other| {
            anyhow!(
                "{}: tensor {} has dtype {other}",
                self.file_of(t).display(),
                t.name
            )
        })?;
        let bytes = self.bytes(t);
        let row_bytes = n_per_row * dtype.size();
        if t.shape.len() == 1 {
            // One row: a norm, a bias (Llama's permuted q/k biases move elements).
            let mut tmp = vec![0f32; n_per_row];
            to_f32(dtype, bytes, &mut tmp);
            for (i, o) in out.iter_mut().enumerate() {
                *o = tmp[transform.source_index(i, n_per_row)];
            }
            if transform == Transform::AddOne {
                add_one(out, dtype);
            }
            return Ok(());
        }
        let n_rows_total = bytes.len() / row_bytes;
        out.par_chunks_mut(n_per_row)
            .enumerate()
            .for_each(|(i, row)| {
                let sr = transform.source_index(first + i, n_rows_total);
                to_f32(dtype, &bytes[sr * row_bytes..(sr + 1) * row_bytes], row);
                if transform == Transform::AddOne {
                    add_one(row, dtype);
                }
            });
        Ok(())
    }

    fn raw(&self, _index: usize) -> Option<&[u8]> {
        None
    }

    fn stored(&self, index: usize) -> Option<&[u8]> {
        self.tensors.get(index).map(|t| self.bytes(t))
    }

    fn release_rows(&self, index: usize, n_per_row: usize, first: usize, n: usize) {
        let t = &self.tensors[index];
        if let Ok(dtype) = t.dtype {
            let rb = n_per_row * dtype.size();
            self.release_range(t, first * rb, n * rb);
        }
    }

    fn release(&self, index: usize) {
        Checkpoint::release(self, &self.tensors[index]);
    }

    fn describe(&self, index: usize) -> (String, &str) {
        let t = &self.tensors[index];
        (self.file_of(t).display().to_string(), &t.name)
    }
}
