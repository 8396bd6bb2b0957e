//! The description of a conversion that both sides share: what each output tensor is called,
//! its shape and types, and where its data comes from. Architectures and the GGUF reader
//! produce [`Job`]s; the plan fills in output types; the pipeline executes them. Nothing here
//! reads or writes a file.

use crate::gguf::writer::TensorEntry;
use crate::gguf::TypeId;
use anyhow::{Context, Result};

/// What is done to a source tensor on the way (the edits convert_hf_to_gguf.py makes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    None,
    /// Llama's q/k rows reordered from Hugging Face's rotate-half layout to ggml's interleaved
    /// RoPE layout (`LlamaModel.permute`): output row h*d + 2i + j is source row h*d + j*d/2 + i.
    PermuteHeads {
        n_head: usize,
    },
    /// Gemma's norm weights stored as w - 1: add 1 (in f16 when the source is f16, as torch
    /// does, else in f32).
    AddOne,
    /// One half of DeepSeek's MLA `kv_b_proj` [n_head * (nope + v), rank], split as convert's
    /// `DeepseekV2Model` does: per head, the first `nope` rows are K and the next `v` rows V.
    /// `k: false` gives V's rows in order (ne {rank, v, n_head}); `k: true` gives K transposed
    /// (ne {nope, rank, n_head}: output row h*rank + r is column r of head h's K rows), which
    /// the reader assembles element by element.
    KvB {
        nope: usize,
        v: usize,
        rank: usize,
        k: bool,
    },
}

impl Transform {
    /// The source index of output row (or element) `r` of a tensor with `n` rows (or elements).
    pub fn source_index(self, r: usize, n: usize) -> usize {
        match self {
            Transform::PermuteHeads { n_head } if n_head > 0 && n >= n_head => {
                permuted(r, n / n_head)
            }
            // V: row h*v + i is source row h*(nope + v) + nope + i.
            Transform::KvB {
                nope, v, k: false, ..
            } if v > 0 => (r / v) * (nope + v) + nope + r % v,
            // K: output row h*rank + c reads column c of source rows h*(nope + v) ..; its
            // first source row names it.
            Transform::KvB {
                nope,
                v,
                rank,
                k: true,
            } if rank > 0 => (r / rank) * (nope + v),
            _ => r,
        }
    }

    /// Whether output row r is source row r (so rows already read can be released in order).
    pub fn keeps_row_order(self) -> bool {
        !matches!(self, Transform::PermuteHeads { .. } | Transform::KvB { .. })
    }
}

/// The source index of output row (or element) `r` under Llama's head permutation, for heads
/// of `d` rows: output h*d + 2i + j comes from h*d + j*d/2 + i.
fn permuted(r: usize, d: usize) -> usize {
    let (h, w) = (r / d, r % d);
    h * d + (w % 2) * (d / 2) + w / 2
}

/// Where a tensor's data comes from.
#[derive(Clone, Debug)]
pub enum TensorSource {
    /// Tensor `index` of the input's tensor table (a checkpoint's or a GGUF file's), with
    /// `transform` applied on the way.
    Input { index: usize, transform: Transform },
    /// Values computed by the converter (Llama 3's rope_freqs).
    Values(Vec<f32>),
    /// Rows gathered from input tensors: the output's rows are the pieces' rows, in order
    /// (experts stored one tensor each, stacked into one 3-D tensor; the gate half of a fused
    /// gate_up tensor). Read a slab at a time like any input, so stacking never holds more
    /// than a slab of the layer.
    Gather(Vec<Piece>),
    /// Elements picked from one input tensor with strides (gpt-oss's fused experts, stored
    /// [E, in, out] with gate and up interleaved: transposed and split on the way). See
    /// [`Strided`].
    Strided(Strided),
    /// ggml MXFP4 rows repacked from an MX checkpoint's `*_blocks` and `*_scales` (gpt-oss's
    /// experts as released). See [`Mxfp4Rows`].
    Mxfp4(Mxfp4Rows),
}

/// Output row `r` is group `g = r / rows_per_group`, row `j = r % rows_per_group` of it; its
/// element `k` is input element `g * group_stride + j * row_stride + k * elem_stride + offset`
/// (flat index into input tensor `index`, whose innermost dimension is `src_row_len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    pub index: usize,
    pub src_row_len: usize,
    pub rows_per_group: usize,
    pub group_stride: usize,
    pub row_stride: usize,
    pub elem_stride: usize,
    pub offset: usize,
}

impl Strided {
    /// The flat input index of element `k` of output row `r`.
    pub fn element(&self, r: usize, k: usize) -> usize {
        let (g, j) = (r / self.rows_per_group, r % self.rows_per_group);
        g * self.group_stride + j * self.row_stride + k * self.elem_stride + self.offset
    }
}

/// MXFP4 rows from an MX checkpoint: `blocks` (u8, [.., R, nb, 16]) and `scales` (u8,
/// [.., R, nb], E8M0) are input tensors `blocks` and `scales`, seen as `n_groups` groups
/// (experts) of `src_rows` rows of `nb` blocks. Output row `r` is source row
/// `(r / rows_per_group) * src_rows + (r % rows_per_group) * step + offset` (gpt-oss's gate rows
/// are the even rows of gate_up, its up rows the odd ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mxfp4Rows {
    pub blocks: usize,
    pub scales: usize,
    pub nb: usize,
    pub src_rows: usize,
    pub rows_per_group: usize,
    pub step: usize,
    pub offset: usize,
}

impl Mxfp4Rows {
    /// The source row of output row `r`.
    pub fn source_row(&self, r: usize) -> usize {
        (r / self.rows_per_group) * self.src_rows
            + (r % self.rows_per_group) * self.step
            + self.offset
    }
}

/// `n_rows` rows of input tensor `index`, from row `first_row` (rows of the output's row
/// length; a 3-D input counts its rows across the outer dimensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub index: usize,
    pub first_row: usize,
    pub n_rows: usize,
}

impl TensorSource {
    /// For output row `row`: the piece it comes from and its row within that input tensor
    /// (None when `row` is past the pieces, or for sources that are not gathered).
    pub fn gathered_row(&self, mut row: usize) -> Option<(Piece, usize)> {
        let TensorSource::Gather(pieces) = self else {
            return None;
        };
        for p in pieces {
            if row < p.n_rows {
                return Some((*p, p.first_row + row));
            }
            row -= p.n_rows;
        }
        None
    }

    /// The input tensors it reads, in order.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            TensorSource::Input { index, .. } => vec![*index],
            TensorSource::Values(_) => Vec::new(),
            TensorSource::Gather(pieces) => pieces.iter().map(|p| p.index).collect(),
            TensorSource::Strided(s) => vec![s.index],
            TensorSource::Mxfp4(m) => vec![m.blocks, m.scales],
        }
    }
}

/// One tensor of the output.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    /// ne of the output, innermost first.
    pub dims: Vec<u64>,
    /// Its type in the input (what a copy keeps).
    pub input_type: TypeId,
    /// Its type in the output.
    pub out_type: TypeId,
    pub fallback_from: Option<TypeId>,
    pub source: TensorSource,
}

impl Job {
    pub fn n_per_row(&self) -> usize {
        self.dims[0] as usize
    }
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Output bytes.
    pub fn out_bytes(&self) -> Result<u64> {
        let rb = self.out_type.row_bytes(self.dims[0]).with_context(|| {
            format!(
                "tensor {}: rows of {} do not fit {}",
                self.name,
                self.dims[0],
                self.out_type.label()
            )
        })?;
        Ok(rb * self.n_rows() as u64)
    }
    pub fn entry(&self) -> Result<TensorEntry> {
        Ok(TensorEntry {
            name: self.name.clone(),
            dims: self.dims.clone(),
            ty: self.out_type,
            bytes: self.out_bytes()?,
        })
    }
}

/// Where convert_hf_to_gguf.py writes a tensor: its extra tensors first
/// (`generate_extra_tensors`, Llama 3's rope_freqs), then each tensor as its source arrives in
/// `get_tensors` (the checkpoint's files in name order, each file's tensors in name order);
/// a stacked expert tensor arrives with the last expert tensor of its layer, and tensors
/// yielded from one arrival keep the order the family emits them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConvertOrder {
    /// 0: generated, 1: from the checkpoint.
    class: u8,
    /// The rank of the source tensor whose arrival yields it.
    arrival: usize,
    /// The family's emission order among tensors of one arrival.
    emitted: usize,
}

/// The [`ConvertOrder`] of each job (in the order the family emitted them), given the rank
/// of each input tensor in convert's iteration (`rank[index]`).
pub fn convert_order(jobs: &[Job], rank: &[usize]) -> Vec<ConvertOrder> {
    let r = |i: usize| rank.get(i).copied().unwrap_or(usize::MAX);
    // Per-expert tensors stacked in one layer: all of a layer's stacks are yielded when the
    // layer's last expert tensor arrives (convert buffers the layer's experts until then).
    let mut layer_last: std::collections::HashMap<String, usize> = Default::default();
    let stacked_layer = |j: &Job| -> Option<String> {
        let TensorSource::Gather(pieces) = &j.source else {
            return None;
        };
        let first = pieces.first()?.index;
        if pieces.iter().all(|p| p.index == first) || !j.name.contains("_exps.") {
            return None;
        }
        let layer = j.name.strip_prefix("blk.")?.split('.').next()?;
        Some(layer.to_string())
    };
    for j in jobs {
        if let Some(l) = stacked_layer(j) {
            let last = j.source.inputs().into_iter().map(r).max().unwrap_or(0);
            let e = layer_last.entry(l).or_insert(0);
            *e = (*e).max(last);
        }
    }
    jobs.iter()
        .enumerate()
        .map(|(emitted, j)| {
            let (class, arrival) = match &j.source {
                TensorSource::Values(_) => (0, 0),
                // gpt-oss's MXFP4 experts: convert's generate_extra_tensors writes them before
                // every other tensor, each pair when its scales arrive.
                TensorSource::Mxfp4(m) => (0, r(m.scales)),
                TensorSource::Strided(s) => (1, r(s.index)),
                TensorSource::Input { index, .. } => (1, r(*index)),
                TensorSource::Gather(_) => match stacked_layer(j) {
                    Some(l) => (1, layer_last.get(&l).copied().unwrap_or(0)),
                    None => (1, j.source.inputs().into_iter().map(r).max().unwrap_or(0)),
                },
            };
            ConvertOrder {
                class,
                arrival,
                emitted,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_permutation_interleaves_halves() {
        // Two heads of 4 rows: [0 2 1 3 | 4 6 5 7].
        let t = Transform::PermuteHeads { n_head: 2 };
        let got: Vec<usize> = (0..8).map(|r| t.source_index(r, 8)).collect();
        assert_eq!(got, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(Transform::AddOne.source_index(5, 8), 5);
        assert!(!t.keeps_row_order());
    }

    #[test]
    fn gathered_rows_walk_the_pieces_in_order() {
        let src = TensorSource::Gather(vec![
            Piece {
                index: 4,
                first_row: 0,
                n_rows: 2,
            },
            Piece {
                index: 1,
                first_row: 6,
                n_rows: 3,
            },
        ]);
        let rows: Vec<(usize, usize)> = (0..5)
            .map(|r| {
                let (p, sr) = src.gathered_row(r).unwrap();
                (p.index, sr)
            })
            .collect();
        assert_eq!(rows, [(4, 0), (4, 1), (1, 6), (1, 7), (1, 8)]);
        assert!(src.gathered_row(5).is_none());
        assert_eq!(src.inputs(), [4, 1]);
    }
}
