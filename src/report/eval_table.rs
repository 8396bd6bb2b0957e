//! `kiln eval`'s results as a Markdown table.

use super::{failure_line, file_label};
use crate::runner::EvalResult;
use std::fmt::Write as _;

/// `x`, or 0 when it prints as zero at `decimals` (no "-0.000000" for the reference's KLD).
fn no_neg_zero(x: f64, decimals: i32) -> f64 {
    if x.abs() < 0.5 * 10f64.powi(-decimals) {
        0.0
    } else {
        x
    }
}

/// The results as a Markdown table, with the measurement's conditions below it. A file that
/// failed in its worker process is a row saying "failed", with its reason below the table.
pub fn to_markdown(results: &[EvalResult]) -> String {
    let mut s = String::new();
    s.push_str(
        "| model | PPL | Mean KLD | KLD_99 | Same top p | task: correct | task: same as ref | \
         answer t/s | tokens gen |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let name = file_label(&r.model_filename);
        if r.error.is_some() {
            // a file that failed in its worker process: its reason is below the table
            let _ = writeln!(s, "| {name} | failed | | | | | | | |");
            continue;
        }
        let p = r.same_top_pct / 100.0;
        let p_unc = if r.n_tokens_scored > 1 {
            100.0 * (p * (1.0 - p) / (r.n_tokens_scored - 1) as f64).sqrt()
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "| {name} | {:.4} ± {:.4} | {:.6} ± {:.6} | {:.6} | {:.3} ± {:.3} % | {:.1} % | {:.1} % | {:.1} | {} |",
            r.ppl,
            r.ppl_stderr,
            no_neg_zero(r.kld_mean, 6),
            r.kld_stderr,
            no_neg_zero(r.kld_p99, 6),
            r.same_top_pct,
            p_unc,
            r.task_contains_pct,
            r.task_same_as_reference_pct,
            r.task_gen_ts,
            r.task_tokens_generated
        );
    }
    let failed: Vec<&EvalResult> = results.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        s.push_str("\nfailed:\n");
        for r in failed {
            let line = failure_line(&r.model_filename, r.error.as_deref().unwrap_or_default());
            let _ = writeln!(s, "{line}");
        }
    }
    if let Some(r) = results.iter().find(|r| r.error.is_none()) {
        let _ = writeln!(
            s,
            "\nPerplexity and KLD as llama-perplexity computes them: {} chunks of n_ctx {}, {} tokens \
             scored (the second half of each chunk), KLD against the reference's cached \
             distributions. Task check: {} questions, greedy \"Question: ...\\nAnswer:\" \
             completions; answer t/s = single-token decodes per second while answering (prompt \
             processing excluded).",
            r.n_chunks, r.n_ctx, r.n_tokens_scored, r.task_questions
        );
    }
    s
}
