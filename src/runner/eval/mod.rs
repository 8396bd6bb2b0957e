//! `kiln eval`: the quality of GGUF variants against a reference GGUF, measured on llama.cpp the
//! way `llama-perplexity` measures it, plus a small question-answering task check.
//!
//! **Perplexity and KL divergence** follow `tools/perplexity/perplexity.cpp` (`perplexity()` with
//! `--kl-divergence-base`, then `kl_divergence()`):
//!
//! - The text is tokenized once, with BOS when the vocabulary adds it. It must hold at least
//!   `2 * n_ctx` tokens (llama-perplexity's minimum). It is cut into `n_chunk = tokens / n_ctx`
//!   chunks of `n_ctx` tokens (at most `max_chunks`). Chunks are decoded as llama-perplexity
//!   decodes them with its default `-b 2048`: `n_seq = max(1, 2048/n_ctx)` chunks side by side,
//!   one sequence each, in a context of `n_seq * n_ctx` cells (f16 KV cache, flash attention
//!   auto, physical batch 512), the KV cache cleared before each group, batches of
//!   `min(2048, n_seq * n_ctx)` tokens, each chunk's first token replaced by BOS when the
//!   vocabulary adds BOS. Only the second half is scored: the logits at positions
//!   `first = n_ctx/2` to `n_ctx - 2` predict the next token, so a chunk scores
//!   `n_ctx - 1 - n_ctx/2` tokens. (Batch composition changes llama.cpp's logits in the last
//!   bits, so the layout is copied, not only the definitions.)
//! - The reference's distributions are stored exactly as llama-perplexity's
//!   `--kl-divergence-base` file stores them: per scored token, the log-softmax quantized to
//!   uint16 between `max - 16` and `max` with a per-token scale and minimum (see [`cache`]).
//!   The cache file *is* such a file: `llama-perplexity --kl-divergence-base FILE
//!   --kl-divergence` reads it.
//! - For each model, per scored token: NLL = `max + log(sum exp(l - max)) - l[tok]`; KLD =
//!   `sum_i p_ref,i (log p_ref,i - log p_i)` over the reference's dequantized log-probabilities
//!   above -16; "same top" when the model's argmax equals the reference's (dequantized) argmax.
//!   PPL = exp(mean NLL) with stderr `PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1))`;
//!   mean KLD with the same uncertainty; KLD_99 = the 99th percentile of the per-token KLD,
//!   interpolated between sorted neighbours as llama-perplexity does; all in the same f32/f64
//!   arithmetic as the C++ (f32 where it uses float, f64 sums, `expf`/`log` from the same libm).
//!
//! **Task check**: each model answers every question greedily after the prompt
//! `"Question: {q}\nAnswer:"`, stopping at a newline, an end-of-generation token or
//! `max_answer_tokens`. Reported: the share of answers that contain the expected answer
//! (case-insensitive), the share identical to the reference's answer, and the generation speed.
//!
//! The reference's log-probabilities and answers are computed once and cached on disk (keyed by
//! the reference file's size, mtime and the sha256 of its first MiB, by the text and by the
//! options), under `EvalOptions::cache_dir` or beside the reference.
//!
//! Checked against llama-perplexity itself (built from the llama.cpp tools source, same ggml
//! flags; `tests/eval.rs` with `KILN_LLAMA_PERPLEXITY` set): the cache file is byte-identical to
//! its `--kl-divergence-base` file for n_ctx 128 (16 sequences per batch), 512 (groups of 4 and
//! 3) and 3000 (two batches per chunk), and PPL, KLD, KLD_99 and same-top agree to every printed
//! digit.
//!
//! Where kiln differs from llama-perplexity: it refuses (rather than logs and continues) a model
//! whose vocabulary size or tokenization of the text differs from the reference's; it computes
//! KLD_99 even below 100 scored tokens (llama-perplexity prints no percentiles then); per-token
//! values are summed in token order (llama-perplexity's worker threads add partial sums in
//! whatever order they finish, which moves the last bits of a sum).

mod answers;
pub mod cache;
mod decode;
mod kld;
mod questions;

pub use answers::{answer, is_correct, Answers};
pub use kld::{
    mean_and_uncertainty, percentile, quantize_log_softmax, record_len, score_token, KldAccum,
    TokenScore,
};
pub use questions::{default_questions, parse_questions, prompt, Question};

use super::{EvalOptions, EvalResult};
use crate::llama;
use answers::{answers_key, read_answers};
use anyhow::{bail, Context, Result};
use cache::{cache_dir, file_identity, file_name, hex16, write_atomically};
use decode::{build_base, score_model, BaseReader};
use llama_cpp_2::model::LlamaModel;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The bundled default text for perplexity (original English prose, about 16 KB).
pub fn default_text() -> &'static str {
    include_str!("../../../fixtures/eval/text.txt")
}

/// llama-perplexity's logical batch size (`-b`, default 2048).
const N_BATCH_MAX: u32 = 2048;
/// llama-perplexity's physical batch size (`-ub`, default 512).
const N_UBATCH_MAX: u32 = 512;

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Evaluates `files` against `reference` (the reference itself may be among `files`: it is then
/// scored against its own cached distributions, which gives a KLD of the cache's quantization
/// floor, below 1e-6, and 100% same top, as llama-perplexity does for the base model).
///
/// With `opts.worker` set, each file is evaluated in its own worker process (see
/// [`crate::runner::worker`]; the first computes the reference's cache, the others read it):
/// the options, text, questions and files are checked here first, then a file that llama.cpp
/// refuses or aborts on becomes one result with `error` set. Without it, everything runs in
/// this process and such a file is an error.
pub fn run(
    files: &[PathBuf],
    reference: &Path,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<EvalResult>> {
    let inputs = prepare(files, reference, opts)?;
    match &opts.worker {
        Some(exe) => Ok(run_isolated(exe, files, reference, opts, progress)),
        None => run_in_process(files, reference, opts, inputs, progress),
    }
}

/// [`run`] with one worker process `exe` per file.
fn run_isolated(
    exe: &Path,
    files: &[PathBuf],
    reference: &Path,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str),
) -> Vec<EvalResult> {
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let job = crate::runner::worker::MeasureJob {
            reference: Some(reference.to_path_buf()),
            eval: Some(opts.clone()),
            ..crate::runner::worker::MeasureJob::new(file)
        };
        let m = crate::runner::worker::measure_isolated(exe, &job, progress);
        match (m.error, m.eval) {
            (None, Some(r)) => out.push(r),
            (e, _) => {
                let e =
                    e.unwrap_or_else(|| format!("{}: the worker gave no result", file.display()));
                progress(&format!("failed: {e}"));
                out.push(EvalResult {
                    model_filename: file.display().to_string(),
                    error: Some(e),
                    ..Default::default()
                });
            }
        }
    }
    out
}

/// What every file is evaluated on: the text and the questions.
struct Inputs {
    text: String,
    text_source: String,
    questions: Vec<Question>,
}

/// The options, the text, the questions and every file, checked before anything is measured.
fn prepare(files: &[PathBuf], reference: &Path, opts: &EvalOptions) -> Result<Inputs> {
    if files.is_empty() {
        bail!("no files to evaluate");
    }
    if opts.n_ctx < 8 {
        bail!("n_ctx {} is too small (at least 8)", opts.n_ctx);
    }
    if opts.threads == 0 {
        bail!("threads must be at least 1");
    }
    let (text, text_source) = match &opts.text {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the text", p.display()))?,
            p.display().to_string(),
        ),
        None => (default_text().to_string(), "the bundled text".to_string()),
    };
    let questions = match &opts.questions {
        Some(p) => {
            let s = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read the questions", p.display()))?;
            parse_questions(&s, &p.display().to_string())?
        }
        None => parse_questions(default_questions(), "the bundled questions")?,
    };
    for f in files.iter().chain([&reference.to_path_buf()]) {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
        // A file that is not GGUF fails here, before minutes of work on the others.
        drop(crate::gguf::GgufFile::open(f)?);
    }
    Ok(Inputs {
        text,
        text_source,
        questions,
    })
}

fn run_in_process(
    files: &[PathBuf],
    reference: &Path,
    opts: &EvalOptions,
    inputs: Inputs,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<EvalResult>> {
    let Inputs {
        text,
        text_source,
        questions,
    } = inputs;
    let task = opts.max_answer_tokens > 0;

    // The reference's distributions.
    let ref_id = file_identity(reference)?;
    let key = {
        let mut h = Sha256::new();
        h.update(b"kiln-eval-kld v1\0");
        h.update(&ref_id);
        h.update(Sha256::digest(text.as_bytes()));
        h.update(opts.n_ctx.to_le_bytes());
        h.update(opts.max_chunks.to_le_bytes());
        h.finalize()
    };
    let dir = cache_dir(reference, opts);
    let base_path = dir.join(format!(
        "{}.kiln-kld-{}.bin",
        file_name(reference),
        hex16(&key)
    ));
    let answers_path = dir.join(format!(
        "{}.kiln-answers-{}.json",
        file_name(reference),
        hex16(&answers_key(&ref_id, &questions, opts.max_answer_tokens))
    ));
    let ref_in_files = files.iter().any(|f| same_file(f, reference));
    let mut ref_model: Option<LlamaModel> = None;
    let mut ref_self: Option<KldAccum> = None;
    match BaseReader::open(&base_path) {
        Ok(b) if b.header.n_ctx == opts.n_ctx => {
            progress(&format!(
                "reference: using cached log-probabilities {}",
                base_path.display()
            ));
        }
        other => {
            if let Err(e) = other {
                if base_path.exists() {
                    progress(&format!("reference: cache unusable ({e:#}); recomputing"));
                }
            }
            progress(&format!(
                "reference {}: computing log-probabilities -> {}",
                file_name(reference),
                base_path.display()
            ));
            let m = llama::load(reference)?;
            let mut acc = KldAccum::default();
            build_base(
                &m,
                reference,
                &text,
                &text_source,
                opts,
                &base_path,
                ref_in_files.then_some(&mut acc),
                progress,
            )?;
            if ref_in_files {
                ref_self = Some(acc);
            }
            ref_model = Some(m);
        }
    }
    let header = BaseReader::open(&base_path)?.header;

    // The reference's answers.
    let mut ref_answers_fresh: Option<Answers> = None;
    let ref_answers: Vec<String> = if !task {
        Vec::new()
    } else if let Some(a) = read_answers(&answers_path, questions.len()) {
        progress(&format!(
            "reference: using cached answers {}",
            answers_path.display()
        ));
        a
    } else {
        progress(&format!(
            "reference {}: answering {} questions",
            file_name(reference),
            questions.len()
        ));
        let m = match ref_model.take() {
            Some(m) => m,
            None => llama::load(reference)?,
        };
        let a = answer(&m, &questions, opts.max_answer_tokens, opts.threads)
            .with_context(|| format!("{}", reference.display()))?;
        let doc = serde_json::json!({
            "kiln_eval_answers": 1,
            "reference": reference.display().to_string(),
            "max_answer_tokens": opts.max_answer_tokens,
            "questions": questions.iter().map(|q| q.question.clone()).collect::<Vec<_>>(),
            "answers": a.texts,
        });
        write_atomically(&answers_path, |w| {
            serde_json::to_writer_pretty(&mut *w, &doc)?;
            Ok(())
        })?;
        let texts = a.texts.clone();
        ref_answers_fresh = Some(a);
        texts
    };
    drop(ref_model);

    let mut results = Vec::with_capacity(files.len());
    for file in files {
        let is_ref = same_file(file, reference);
        let model = llama::load(file)?;
        let acc = match (is_ref, ref_self.as_ref()) {
            (true, Some(acc)) => acc.clone(),
            _ => score_model(&model, file, &base_path, &text, opts, progress)?,
        };
        let answers = if !task {
            Answers::default()
        } else if let (true, Some(a)) = (is_ref, ref_answers_fresh.as_ref()) {
            a.clone()
        } else {
            progress(&format!(
                "{}: answering {} questions",
                file_name(file),
                questions.len()
            ));
            answer(&model, &questions, opts.max_answer_tokens, opts.threads)
                .with_context(|| format!("{}", file.display()))?
        };
        drop(model);
        let (ppl, ppl_stderr) = acc.ppl();
        let (kld_mean, kld_stderr) = acc.kld();
        let nq = if task { questions.len() } else { 0 };
        let pct = |k: usize| {
            if nq == 0 {
                0.0
            } else {
                100.0 * k as f64 / nq as f64
            }
        };
        let correct = answers
            .texts
            .iter()
            .zip(&questions)
            .filter(|(a, q)| is_correct(a, q))
            .count();
        let same = answers
            .texts
            .iter()
            .zip(&ref_answers)
            .filter(|(a, b)| a == b)
            .count();
        let secs = answers.decode_time.as_secs_f64();
        results.push(EvalResult {
            model_filename: file.display().to_string(),
            n_chunks: header.n_chunk as u32,
            n_ctx: header.n_ctx,
            n_tokens_scored: acc.count,
            ppl,
            ppl_stderr,
            kld_mean,
            kld_stderr,
            kld_p99: acc.kld_percentile(0.99),
            same_top_pct: 100.0 * acc.same_top(),
            task_contains_pct: pct(correct),
            task_same_as_reference_pct: pct(same),
            task_questions: nq as u32,
            task_gen_ts: if secs > 0.0 {
                answers.decodes as f64 / secs
            } else {
                0.0
            },
            task_tokens_generated: answers.tokens,
            error: None,
        });
    }
    Ok(results)
}
