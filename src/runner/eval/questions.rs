//! The task check's questions: the bundled set, the JSONL parser and the prompt.

use anyhow::{anyhow, bail, Result};

/// The bundled default question set (JSONL of `{"question": ..., "answer": ...}`).
pub fn default_questions() -> &'static str {
    include_str!("../../../fixtures/eval/questions.jsonl")
}

/// One question of the task check.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question: String,
    /// Accepted answers (an answer counts when it contains any of them, case-insensitive).
    pub answers: Vec<String>,
}

/// Parses a question set: one JSON object per line, `{"question": "...", "answer": "..."}`;
/// `answer` may also be a list of accepted answers. Blank lines are skipped; other fields are
/// ignored. Errors name `source` and the line.
pub fn parse_questions(text: &str, source: &str) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{source}: line {n}: not a JSON object: {e}"))?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("{source}: line {n}: expected a JSON object"))?;
        let question = match obj.get("question") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(serde_json::Value::String(_)) => bail!("{source}: line {n}: empty \"question\""),
            Some(_) => bail!("{source}: line {n}: \"question\" must be a string"),
            None => bail!("{source}: line {n}: missing \"question\""),
        };
        let answers: Vec<String> = match obj.get("answer") {
            Some(serde_json::Value::String(s)) => vec![s.trim().to_string()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                        anyhow!("{source}: line {n}: \"answer\" list must hold strings")
                    })
                })
                .collect::<Result<_>>()?,
            Some(_) => {
                bail!("{source}: line {n}: \"answer\" must be a string or a list of strings")
            }
            None => bail!("{source}: line {n}: missing \"answer\""),
        };
        if answers.is_empty() || answers.iter().any(|a| a.is_empty()) {
            bail!("{source}: line {n}: empty \"answer\"");
        }
        out.push(Question { question, answers });
    }
    if out.is_empty() {
        bail!("{source}: no questions");
    }
    Ok(out)
}

/// The prompt of the task check.
pub fn prompt(question: &str) -> String {
    format!("Question: {question}\nAnswer:")
}
