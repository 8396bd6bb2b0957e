//! The task check: greedy answers to the questions, the correctness test and the cached
//! reference answers.

use super::questions::{prompt, Question};
use super::N_UBATCH_MAX;
use crate::llama;
use anyhow::{anyhow, Result};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

/// One model's answers.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    pub texts: Vec<String>,
    /// Tokens generated, stop tokens (newline, end of generation) included.
    pub tokens: u64,
    /// Single-token decodes made while answering (each yields the next token).
    pub decodes: u64,
    /// Time of those decodes and of picking the tokens they yield (prompt processing excluded).
    pub decode_time: Duration,
}

/// Answers every question greedily ("Question: ...\nAnswer:" completion, stop at a newline, an
/// end-of-generation token or `max_tokens`).
pub fn answer(
    model: &LlamaModel,
    questions: &[Question],
    max_tokens: u32,
    threads: u32,
) -> Result<Answers> {
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| llama::tokenize(model, &prompt(&q.question), true))
        .collect();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
    let n_ctx = (longest + max_tokens as usize + 1) as u32;
    let p = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(longest as u32)
        .with_n_ubatch((longest as u32).min(N_UBATCH_MAX))
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = model
        .new_context(llama::backend(), p)
        .map_err(|e| anyhow!("llama.cpp context: {e}"))?;
    let vocab = model.vocab();
    let mut out = Answers::default();
    let mut batch = LlamaBatch::new(longest, 1);
    for prompt in &prompts {
        ctx.clear_kv_cache();
        batch.clear();
        for (i, &t) in prompt.iter().enumerate() {
            batch.add(LlamaToken(t as i32), i as i32, &[0], i + 1 == prompt.len())?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
        let mut next =
            LlamaToken(llama::argmax(ctx.get_logits_ith(prompt.len() as i32 - 1)) as i32);
        let mut bytes: Vec<u8> = Vec::new();
        let mut n = 0u32;
        let t0 = Instant::now();
        loop {
            n += 1;
            if vocab.is_eog(next) {
                break;
            }
            bytes.extend(vocab.token_to_piece(next, false, None));
            if bytes.contains(&b'\n') || n >= max_tokens {
                break;
            }
            batch.clear();
            batch.add(next, prompt.len() as i32 + n as i32 - 1, &[0], true)?;
            ctx.decode(&mut batch)
                .map_err(|e| anyhow!("llama.cpp decode: {e}"))?;
            out.decodes += 1;
            next = LlamaToken(llama::argmax(ctx.get_logits_ith(0)) as i32);
        }
        out.decode_time += t0.elapsed();
        out.tokens += n as u64;
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        out.texts
            .push(String::from_utf8_lossy(&bytes[..end]).trim().to_string());
    }
    Ok(out)
}

/// Whether `answer` contains one of the expected answers (case-insensitive).
pub fn is_correct(answer: &str, q: &Question) -> bool {
    let a = answer.to_lowercase();
    q.answers.iter().any(|e| a.contains(&e.to_lowercase()))
}

pub(super) fn answers_key(ref_id: &[u8], questions: &[Question], max_tokens: u32) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"kiln-eval-answers v1\0");
    h.update(ref_id);
    h.update(max_tokens.to_le_bytes());
    for q in questions {
        h.update(q.question.as_bytes());
        h.update([0u8]);
    }
    h.finalize().to_vec()
}

pub(super) fn read_answers(path: &Path, n: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let a: Vec<String> = v
        .get("answers")?
        .as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect::<Option<_>>()?;
    (a.len() == n).then_some(a)
}
