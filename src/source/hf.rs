//! A Hugging Face checkpoint as a [`Source`]: rows widened from F32/F16/BF16 to f32, with the
//! converter's transforms (Llama's q/k head permutation, Gemma's +1 on norms) applied.

use super::{fp8, to_f32, Checkpoint, Source, SrcDtype};
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
        if let Transform::KvB {
            nope,
            v,
            rank,
            k: true,
        } = transform
        {
            // K of DeepSeek's kv_b, transposed: output row h*rank + c holds column c of head
            // h's `nope` K rows, element by element.
            let src_row_bytes = rank * dtype.size();
            let scale = match (&t.scale, dtype) {
                (Some(s), SrcDtype::F8E4M3) => {
                    Some((s, fp8::scale_values(s, self.bytes(&s.tensor))))
                }
                (None, SrcDtype::F8E4M3) => {
                    return Err(anyhow!(
                        "{}: tensor {} is F8_E4M3 without its scales",
                        self.file_of(t).display(),
                        t.name
                    ))
                }
                _ => None,
            };
            let n_src_rows = bytes.len() / src_row_bytes.max(1);
            out.par_chunks_mut(n_per_row)
                .enumerate()
                .for_each(|(i, row)| {
                    let o = first + i;
                    let (h, c) = (o / rank.max(1), o % rank.max(1));
                    for (j, x) in row.iter_mut().enumerate().take(nope) {
                        let sr = h * (nope + v) + j;
                        if sr >= n_src_rows {
                            *x = f32::NAN;
                            continue;
                        }
                        let at = sr * src_row_bytes + c * dtype.size();
                        let mut one = [0f32];
                        to_f32(dtype, &bytes[at..at + dtype.size()], &mut one);
                        *x = match &scale {
                            Some((s, values)) => {
                                one[0] * fp8::scale_at(s.layout, &t.shape, values, sr, c)
                            }
                            None => one[0],
                        };
                    }
                });
            return Ok(());
        }
        if dtype == SrcDtype::F8E4M3 {
            let Some(scale) = &t.scale else {
                return Err(anyhow!(
                    "{}: tensor {} is F8_E4M3 without its scales",
                    self.file_of(t).display(),
                    t.name
                ));
            };
            let scales = fp8::scale_values(scale, self.bytes(&scale.tensor));
            let n_rows_total = bytes.len() / row_bytes.max(1);
            out.par_chunks_mut(n_per_row)
                .enumerate()
                .for_each(|(i, row)| {
                    let sr = transform.source_index(first + i, n_rows_total);
                    let codes = &bytes[sr * row_bytes..(sr + 1) * row_bytes];
                    fp8::dequant_row(scale.layout, &t.shape, &scales, sr, codes, row);
                });
            return Ok(());
        }
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
