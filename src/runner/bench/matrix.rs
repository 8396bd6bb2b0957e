//! The options' checks and the test matrix: which tests one loaded model runs, in llama-bench's
//! order, and the KV cache types llama-bench accepts.

use crate::llama::raw::{self, GgmlTypeId};
use crate::runner::BenchOptions;
use anyhow::{anyhow, bail, Result};

/// The tests for one loaded model, in llama-bench's order: batch, micro-batch, cache type,
/// flash attention, threads, then the pp tests and the tg tests.
pub(super) fn matrix(o: &BenchOptions, cache_types: &[GgmlTypeId], ngl: u32) -> Vec<Test> {
    let mut v = Vec::new();
    for &n_batch in &o.batch {
        for &n_ubatch in &o.ubatch {
            for &cache in cache_types {
                for &flash_attn in &o.flash_attn {
                    for &n_threads in &o.threads {
                        let pp = o.n_prompt.iter().filter(|&&n| n > 0).map(|&n| (n, 0));
                        let tg = o.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n));
                        for (n_prompt, n_gen) in pp.chain(tg) {
                            v.push(Test {
                                n_prompt,
                                n_gen,
                                n_batch,
                                n_ubatch,
                                cache,
                                flash_attn,
                                n_threads,
                                n_gpu_layers: ngl,
                                repetitions: o.repetitions,
                            });
                        }
                    }
                }
            }
        }
    }
    v
}

pub(super) fn check_options(o: &BenchOptions) -> Result<()> {
    let axes: [(&str, bool); 7] = [
        (
            "-p/-n (prompt and generation lengths)",
            o.n_prompt.is_empty() && o.n_gen.is_empty(),
        ),
        ("--threads", o.threads.is_empty()),
        ("-b (batch size)", o.batch.is_empty()),
        ("-ub (micro-batch size)", o.ubatch.is_empty()),
        ("-ctk/-ctv (cache type)", o.cache_type.is_empty()),
        ("-fa (flash attention)", o.flash_attn.is_empty()),
        ("-ngl (GPU layers)", o.n_gpu_layers.is_empty()),
    ];
    for (name, empty) in axes {
        if empty {
            bail!("bench: {name} has no value");
        }
    }
    if o.n_prompt.iter().chain(&o.n_gen).all(|&n| n == 0) {
        bail!("bench: nothing to measure (-p and -n are all 0)");
    }
    if o.repetitions == 0 {
        bail!("bench: -r (repetitions) must be at least 1");
    }
    for (name, v) in [
        ("--threads", &o.threads),
        ("-b (batch size)", &o.batch),
        ("-ub (micro-batch size)", &o.ubatch),
    ] {
        if v.iter().any(|&x| x == 0 || x > i32::MAX as u32) {
            bail!("bench: {name} must be between 1 and {}", i32::MAX);
        }
    }
    // n_ctx = n_prompt + n_gen must fit llama.cpp's u32 and the positions its i32.
    if o.n_prompt
        .iter()
        .chain(&o.n_gen)
        .any(|&n| n > i32::MAX as u32 / 2)
    {
        bail!("bench: -p/-n too large");
    }
    Ok(())
}

/// KV cache types llama-bench accepts for -ctk/-ctv.
pub(super) fn parse_cache_type(s: &str) -> Result<GgmlTypeId> {
    raw::KV_CACHE_TYPES
        .iter()
        .copied()
        .find(|&t| raw::type_name(t).eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| {
            let names: Vec<String> = raw::KV_CACHE_TYPES
                .iter()
                .map(|&t| raw::type_name(t))
                .collect();
            anyhow!(
                "bench: unknown KV cache type {s:?} (one of {})",
                names.join(", ")
            )
        })
}

/// One cell of the matrix.
pub(super) struct Test {
    pub(super) n_prompt: u32,
    pub(super) n_gen: u32,
    pub(super) n_batch: u32,
    pub(super) n_ubatch: u32,
    pub(super) cache: GgmlTypeId,
    pub(super) flash_attn: bool,
    pub(super) n_threads: u32,
    pub(super) n_gpu_layers: u32,
    pub(super) repetitions: u32,
}

impl Test {
    /// llama-bench's test name.
    pub(super) fn name(&self) -> String {
        match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "{} (threads {}, n_batch {}, n_ubatch {}, cache {}, flash attention {}, ngl {})",
            self.name(),
            self.n_threads,
            self.n_batch,
            self.n_ubatch,
            raw::type_name(self.cache),
            if self.flash_attn { "on" } else { "off" },
            self.n_gpu_layers
        )
    }
}
