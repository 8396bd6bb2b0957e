//! Memory accounting: the attention geometry of a loaded model, the KV cache bytes llama.cpp
//! allocates for a context, and the process's peak resident memory.

use crate::llama::raw::{self, Ctx, GgmlTypeId, Model};
use anyhow::{bail, Result};
use std::path::Path;

/// What llama.cpp says about a loaded model, plus the attention geometry that sizes its KV cache.
pub(super) struct ModelInfo {
    pub(super) model_size: u64,
    pub(super) n_params: u64,
    /// Per layer: (K elements per cell, V elements per cell, sliding-window layer).
    layers: Vec<(i64, i64, bool)>,
    /// Sliding window in tokens (0: none).
    n_swa: u32,
}

impl ModelInfo {
    pub(super) fn read(model: &Model, file: &Path) -> Result<ModelInfo> {
        let model_size = model.size();
        let n_params = model.n_params();
        let n_layer = model.n_layer().max(0) as usize;
        let n_embd = model.n_embd() as i64;
        let arch = model.meta("general.architecture").unwrap_or_default();
        let per_layer = |key: &str| -> Option<Vec<i64>> {
            let v = model.meta(&format!("{arch}.{key}"))?;
            let v = parse_ints(&v)?;
            Some(if v.len() == 1 { vec![v[0]; n_layer] } else { v })
        };
        let n_head = per_layer("attention.head_count").unwrap_or_else(|| vec![0; n_layer]);
        let n_head_kv = per_layer("attention.head_count_kv").unwrap_or_else(|| n_head.clone());
        let head0 = n_head.first().copied().unwrap_or(0);
        let default_head_dim = if head0 > 0 { n_embd / head0 } else { 0 };
        let scalar = |key: &str| -> Option<i64> {
            parse_ints(&model.meta(&format!("{arch}.{key}"))?)?
                .first()
                .copied()
        };
        let k_len = scalar("attention.key_length").unwrap_or(default_head_dim);
        let v_len = scalar("attention.value_length").unwrap_or(default_head_dim);
        // Sliding-window layers, as llama.cpp decides them for the architectures kiln writes
        // (each family's file in arch/ says its pattern), or as the file's
        // sliding_window_pattern says.
        let n_swa = scalar("attention.sliding_window").unwrap_or(0).max(0) as u32;
        let default_pattern =
            crate::arch::by_gguf_name(&arch).and_then(|f| f.sliding_window_pattern(n_swa));
        let swa: Vec<bool> = match (
            default_pattern,
            model.meta(&format!("{arch}.attention.sliding_window_pattern")),
        ) {
            (None, _) => vec![false; n_layer],
            (Some(_), Some(v)) if v.trim_start().starts_with('[') => {
                let bools: Vec<bool> = v
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|s| matches!(s.trim(), "true" | "1"))
                    .collect();
                (0..n_layer)
                    .map(|il| bools.get(il).copied().unwrap_or(false))
                    .collect()
            }
            (Some(p), v) => {
                let p = v.and_then(|v| v.trim().parse::<u32>().ok()).unwrap_or(p);
                (0..n_layer as u32)
                    .map(|il| p == 0 || il % p < p - 1)
                    .collect()
            }
        };
        let layers = (0..n_layer)
            .map(|il| {
                let kv = n_head_kv.get(il).copied().unwrap_or(0);
                (k_len * kv, v_len * kv, swa[il])
            })
            .collect();
        if n_layer == 0 {
            bail!("{}: llama.cpp reports no layers", file.display());
        }
        Ok(ModelInfo {
            model_size,
            n_params,
            layers,
            n_swa,
        })
    }
}

/// Integers of a metadata value as llama.cpp prints it: "8" or "[8, 8, 4]".
fn parse_ints(s: &str) -> Option<Vec<i64>> {
    let s = s.trim();
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner
        .split(',')
        .map(|x| x.trim().parse::<i64>().ok())
        .collect()
}

/// Bytes llama.cpp allocates for the KV cache of `ctx`: for every layer with key/value heads,
/// `ggml_row_size(type_k, n_embd_k_gqa) + ggml_row_size(type_v, n_embd_v_gqa)` per cell, times
/// the cells: the context size llama.cpp actually uses (`llama_n_ctx_seq`, which it pads to a
/// multiple of 256), or for sliding-window layers (Gemma 2/3; `swa_full` off, as llama-bench
/// sets it) `pad256(min(n_ctx, n_swa + n_ubatch))`. This is the sum llama.cpp logs as
/// `llama_kv_cache: size = ...`; llama.cpp's C API has no query for it. Architectures with other
/// memory (recurrent state, MLA, other sliding-window patterns) are sized as plain attention.
fn kv_cache_bytes_for(
    layers: &[(i64, i64, bool)],
    n_swa: u32,
    n_ctx: u32,
    n_ubatch: u32,
    type_k: GgmlTypeId,
    type_v: GgmlTypeId,
) -> u64 {
    let pad = |n: u64| n.div_ceil(256) * 256;
    let swa_cells = pad((n_ctx as u64).min(n_swa as u64 + n_ubatch as u64));
    layers
        .iter()
        .filter(|(k, v, _)| *k > 0 || *v > 0)
        .map(|&(k, v, swa)| {
            let cells = if swa && n_swa > 0 {
                swa_cells
            } else {
                n_ctx as u64
            };
            let per_cell = raw::row_size(type_k, k) + raw::row_size(type_v, v);
            per_cell as u64 * cells
        })
        .sum()
}

/// [`kv_cache_bytes_for`] of `ctx` as llama.cpp sized it.
pub(super) fn kv_cache_bytes(info: &ModelInfo, ctx: &Ctx) -> u64 {
    let (n_ctx, n_ubatch) = (ctx.n_ctx_seq(), ctx.n_ubatch());
    kv_cache_bytes_for(
        &info.layers,
        info.n_swa,
        n_ctx,
        n_ubatch,
        ctx.type_k(),
        ctx.type_v(),
    )
}

/// [`kv_cache_bytes_for`] of `streams` sequences each in its own stream of `cells` cells (a
/// context with `n_seq_max = streams`, `kv_unified` off, `n_ctx_seq = cells`): the KV cache bytes
/// one llama-batched-bench setting fills.
pub(super) fn kv_cache_bytes_streams(
    info: &ModelInfo,
    streams: u32,
    cells: u32,
    n_ubatch: u32,
    type_k: GgmlTypeId,
    type_v: GgmlTypeId,
) -> u64 {
    streams as u64 * kv_cache_bytes_for(&info.layers, info.n_swa, cells, n_ubatch, type_k, type_v)
}

/// Peak resident memory of this process (`VmHWM`), bytes; 0 where /proc is absent.
pub(super) fn peak_rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
