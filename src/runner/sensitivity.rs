//! `kiln quantize --target-bpw/--target-size --calibrate-sensitivity`: the budget's loss model
//! calibrated by the model's measured sensitivity.
//!
//! The loss model ([`crate::budget`]) predicts each tensor's contribution to the model's
//! divergence from its measured relative error; it treats every matrix alike. Here the model
//! itself says how much each group of tensors matters: for each group (`attn_q`, `ffn_down`,
//! `token_embd`, ... : every tensor the budget chooses for, by name without `blk.N.`), the
//! model is written with that group degraded to about 4.5 bits per weight
//! ([`budget::DEGRADE_TYPES`]) and everything else at the reference's precision, and its mean
//! KL divergence to the reference is measured on a text through llama.cpp, exactly as `kiln
//! eval` (llama-perplexity `--kl-divergence`) measures it, minus the divergence of the model
//! with nothing degraded. The loss model predicts the same degradation; measured / predicted
//! is the group's factor, and every candidate loss of the group's tensors is multiplied by it
//! before the budget is solved. The factors carry the losses into the units of mean KLD.
//!
//! The reference is the input itself (a GGUF), or a checkpoint converted to a temporary GGUF
//! at the precision of its weights (as `kiln imatrix` does). The degraded files and the
//! reference's cached log-probabilities go into a hidden temporary folder beside the output,
//! one file at a time, removed at the end, on an error and on Ctrl-C. The same inputs give the
//! same factors (llama.cpp's CPU results do not depend on the thread count).

use crate::budget::{self, GroupFactor, TensorChoices};
use crate::quantize::Prepared;
use crate::runner::{calibrate, eval, imatrix, EvalOptions};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// How the sensitivity is measured.
#[derive(Clone, Debug)]
pub struct SensitivityOptions {
    /// The text the divergence is measured on (UTF-8, at least two chunks of `n_ctx` tokens).
    pub text: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    pub n_ctx: u32,
    /// At most this many chunks (0: all).
    pub max_chunks: u32,
    pub threads: u32,
}

impl SensitivityOptions {
    pub fn new(text: PathBuf) -> Self {
        SensitivityOptions {
            text,
            n_ctx: 512,
            max_chunks: 8,
            threads: super::default_threads(),
        }
    }
}

/// Checks the text without a model: readable, UTF-8, not empty.
pub fn check_text(opts: &SensitivityOptions) -> Result<()> {
    imatrix::read_text(&opts.text)
        .map(|_| ())
        .context("--calibrate-sensitivity")
}

/// Measures every group's sensitivity for the `tensors` of `p` (from [`budget::start`] and
/// [`budget::measure_except`]); `input` is what `p` was prepared from, `near` the folder for
/// the temporary files. Returns the groups with their factors set ([`budget::set_factors`]).
pub fn measure(
    input: &Path,
    p: &Prepared,
    tensors: &[TensorChoices],
    near: &Path,
    opts: &SensitivityOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<GroupFactor>> {
    check_text(opts)?;
    if opts.n_ctx < 8 {
        bail!(
            "--calibrate-sensitivity: a context of {} tokens is too small (at least 8)",
            opts.n_ctx
        );
    }
    let text = std::fs::read_to_string(&opts.text)
        .with_context(|| format!("{}: cannot read the text", opts.text.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-sensitivity-")
        .tempdir_in(near)
        .with_context(|| {
            format!(
                "{}: cannot create a temporary folder for the sensitivity measurement",
                near.display()
            )
        })?;
    let model = calibrate::model_file(input, tmp.path(), progress)?;
    // Two chunks at least, as llama-perplexity requires: said before any file is written.
    {
        let m = crate::llama::load(&model.path)?;
        let n = crate::llama::tokenize(&m, &text, true).len();
        let need = 2 * opts.n_ctx as usize;
        if n < need {
            bail!(
                "{}: the sensitivity text has {n} tokens; measuring the model's divergence needs at least {need} (two chunks of {} tokens)",
                opts.text.display(),
                opts.n_ctx
            );
        }
    }
    let eo = EvalOptions {
        text: Some(opts.text.clone()),
        questions: None,
        n_ctx: opts.n_ctx,
        max_chunks: opts.max_chunks,
        threads: opts.threads,
        max_answer_tokens: 0,
        cache_dir: Some(tmp.path().to_path_buf()),
        worker: None,
    };
    let groups = budget::sensitivity_groups(tensors);
    // Every tensor the budget could choose for (pinned ones included) at the reference's type.
    let mut base = p.jobs.clone();
    for j in base.iter_mut() {
        if crate::plan::allows_quantization(&j.name, &j.dims, &Default::default()) {
            j.out_type = budget::reference_type(j);
            j.fallback_from = None;
        }
    }
    let file = tmp.path().join("degraded.gguf");
    let kld_of = |jobs: &[crate::job::Job], what: &str| -> Result<(f64, f64)> {
        crate::pipeline::check_interrupted()?;
        let out = crate::pipeline::Output {
            jobs,
            metadata: &p.metadata,
            target: &file,
            imatrix: p.imatrix.as_ref(),
            shards: None,
            // The block search the budget measures with and writes with.
            search: p.search,
        };
        crate::pipeline::run_many(p.input.as_ref(), &[out], true, false)
            .with_context(|| format!("writing the model with {what}"))?;
        let r = eval::run(std::slice::from_ref(&file), &model.path, &eo, &mut |_| {})
            .with_context(|| format!("measuring the model with {what}"))?;
        let _ = std::fs::remove_file(&file);
        let r = r
            .into_iter()
            .next()
            .context("internal: no evaluation result")?;
        Ok((r.kld_mean, r.kld_stderr))
    };
    let (base_kld, _) = kld_of(&base, "nothing degraded")?;
    progress(&format!(
        "sensitivity: nothing degraded: mean KLD {base_kld:.4e} (the reference's own rounding)"
    ));
    let mut out = Vec::new();
    for (g, members) in groups {
        let mut jobs = base.clone();
        let mut predicted = 0.0;
        for &m in &members {
            let t = &tensors[m];
            let k = budget::degraded_candidate(t);
            predicted += budget::predicted_increase(t, budget::reference_type(&p.jobs[t.job]));
            let j = &mut jobs[t.job];
            j.out_type = crate::gguf::TypeId::of(t.candidates[k].ty);
        }
        let (kld, err) = kld_of(&jobs, &format!("{g} degraded"))?;
        let measured = (kld - base_kld).max(0.0);
        progress(&format!(
            "sensitivity: {g} ({} tensors) degraded: mean KLD {kld:.4e}, predicted {predicted:.4e}",
            members.len()
        ));
        out.push(GroupFactor {
            group: g,
            tensors: members.len(),
            predicted,
            measured,
            measured_stderr: err,
            factor: 1.0,
        });
    }
    budget::set_factors(&mut out);
    Ok(out)
}
