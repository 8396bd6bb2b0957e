//! llama-perplexity's arithmetic, one scored token at a time: the quantized log-softmax of the
//! `--kl-divergence-base` records, per-token NLL/KLD/same-top, their accumulation and the
//! percentile.

/// ggml's `nearest_int` (round half to even through the float mantissa), as perplexity.cpp has it.
#[inline]
fn nearest_int(f: f32) -> i32 {
    let val = f + 12582912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// u16 slots per scored token in a base file: `2*((n_vocab + 1)/2) + 4` (two f32 then the
/// quantized log-probabilities, padded to an even count).
pub fn record_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// `log_softmax(n_vocab, logits, log_prob, tok)` of perplexity.cpp (the `--kl-divergence-base`
/// writer): fills `out` (`record_len(n_vocab)` slots) with scale, min log-prob and the quantized
/// log-probabilities; returns the token's NLL as it computes it.
pub fn quantize_log_softmax(logits: &[f32], out: &mut [u16], tok: usize) -> f64 {
    let mut max_logit = logits[0];
    let mut min_logit = logits[0];
    for &l in &logits[1..] {
        // std::max / std::min
        if max_logit < l {
            max_logit = l;
        }
        if l < min_logit {
            min_logit = l;
        }
    }
    let floor = max_logit - 16.0;
    if min_logit < floor {
        min_logit = floor;
    }
    let mut sum_exp = 0.0f64;
    for &l in logits {
        sum_exp += (l - max_logit).exp() as f64;
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min_logit - max_logit - log_sum_exp;
    let scale = (max_logit - min_logit) / 65535.0f32;
    let sb = scale.to_le_bytes();
    let mb = min_log_prob.to_le_bytes();
    out[0] = u16::from_le_bytes([sb[0], sb[1]]);
    out[1] = u16::from_le_bytes([sb[2], sb[3]]);
    out[2] = u16::from_le_bytes([mb[0], mb[1]]);
    out[3] = u16::from_le_bytes([mb[2], mb[3]]);
    let q = &mut out[4..4 + logits.len()];
    if scale != 0.0 {
        let inv_scale = 1.0f32 / scale;
        for (o, &l) in q.iter_mut().zip(logits) {
            *o = if l > min_logit {
                nearest_int(inv_scale * (l - min_logit)) as u16
            } else {
                0
            };
        }
    } else {
        q.fill(0);
    }
    (max_logit + log_sum_exp - logits[tok]) as f64
}

/// Scale and min log-prob of a base record.
#[inline]
fn record_header(rec: &[u16]) -> (f32, f32) {
    let s = [rec[0].to_le_bytes(), rec[1].to_le_bytes()];
    let m = [rec[2].to_le_bytes(), rec[3].to_le_bytes()];
    (
        f32::from_le_bytes([s[0][0], s[0][1], s[1][0], s[1][1]]),
        f32::from_le_bytes([m[0][0], m[0][1], m[1][0], m[1][1]]),
    )
}

/// What one scored token contributes (the per-token part of perplexity.cpp's
/// `log_softmax(n_vocab, logits, base_log_prob, tok, kld)`).
#[derive(Clone, Copy, Debug)]
pub struct TokenScore {
    pub nll: f32,
    pub nll_base: f32,
    pub kld: f64,
    pub same_top: bool,
    pub p_diff: f32,
}

/// Scores one token of a model (`logits`) against the reference's record `base`.
pub fn score_token(logits: &[f32], base: &[u16], tok: usize) -> TokenScore {
    let n_vocab = logits.len();
    let mut max_logit = logits[0];
    let mut imax = 0usize;
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l > max_logit {
            max_logit = l;
            imax = i;
        }
    }
    let mut sum_exp = 0.0f64;
    for &l in logits {
        sum_exp += (l - max_logit).exp() as f64;
    }
    let log_sum_exp = sum_exp.ln() as f32;
    let (scale, min_log_prob) = record_header(base);
    let q = &base[4..4 + n_vocab];

    let nll = max_logit + log_sum_exp - logits[tok];
    let nll_base = -(scale * q[tok] as f32 + min_log_prob);

    let max_logit = max_logit + log_sum_exp;
    let mut sum = 0.0f64;
    let mut imax_base = 0usize;
    let mut p_log_base_max = 0.0f32;
    for i in 0..n_vocab {
        let p_log_base = scale * q[i] as f32 + min_log_prob;
        if i == 0 || p_log_base > p_log_base_max {
            p_log_base_max = p_log_base;
            imax_base = i;
        }
        if p_log_base > -16.0 {
            let p_base = p_log_base.exp();
            sum += (p_base * (p_log_base - logits[i] + max_logit)) as f64;
        }
    }
    let p_base = (-nll_base).exp();
    let p = (-nll).exp();
    TokenScore {
        nll,
        nll_base,
        kld: sum,
        same_top: imax == imax_base,
        p_diff: p - p_base,
    }
}

/// perplexity.cpp's `kl_divergence_result`, accumulated token by token in order.
#[derive(Clone, Debug, Default)]
pub struct KldAccum {
    pub sum_nll: f64,
    pub sum_nll2: f64,
    pub sum_nll_base: f64,
    pub sum_nll_base2: f64,
    pub sum_nll_nll_base: f64,
    pub sum_kld: f64,
    pub sum_kld2: f64,
    pub sum_p_diff: f64,
    pub sum_p_diff2: f64,
    pub sum_p_diff4: f64,
    pub max_p_diff: f32,
    pub n_same_top: u64,
    pub count: u64,
    /// Per-token KLD as f32 (perplexity.cpp's `kld_values`), for the percentiles.
    pub kld_values: Vec<f32>,
}

impl KldAccum {
    pub fn add(&mut self, s: &TokenScore) {
        self.sum_nll += s.nll as f64;
        self.sum_nll2 += (s.nll * s.nll) as f64;
        self.sum_nll_base += s.nll_base as f64;
        self.sum_nll_base2 += (s.nll_base * s.nll_base) as f64;
        self.sum_nll_nll_base += (s.nll * s.nll_base) as f64;
        self.sum_kld += s.kld;
        self.sum_kld2 += s.kld * s.kld;
        if s.same_top {
            self.n_same_top += 1;
        }
        self.sum_p_diff += s.p_diff as f64;
        let p_diff2 = (s.p_diff * s.p_diff) as f64;
        self.sum_p_diff2 += p_diff2;
        self.sum_p_diff4 += p_diff2 * p_diff2;
        self.max_p_diff = self.max_p_diff.max(s.p_diff.abs());
        self.count += 1;
        self.kld_values.push(s.kld as f32);
    }

    /// (PPL, its uncertainty) of the model, from its own logits ("Mean PPL(Q)").
    pub fn ppl(&self) -> (f64, f64) {
        let (m, u) = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count);
        let ppl = m.exp();
        (ppl, ppl * u)
    }

    /// (mean KLD, its uncertainty).
    pub fn kld(&self) -> (f64, f64) {
        mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
    }

    /// Share of tokens with the reference's top token, 0..1.
    pub fn same_top(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.n_same_top as f64 / self.count as f64
    }

    /// A percentile of the per-token KLD (`fraction` 0.99 is KLD_99).
    pub fn kld_percentile(&self, fraction: f32) -> f64 {
        let mut v = self.kld_values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        percentile(&v, fraction) as f64
    }
}

/// perplexity.cpp's `mean_and_uncertainty`.
pub fn mean_and_uncertainty(sum: f64, sum2: f64, count: u64) -> (f64, f64) {
    if count < 1 {
        return (0.0, 0.0);
    }
    let f = sum / count as f64;
    let df = sum2 / count as f64 - f * f;
    let df = if df > 0.0 && count > 10 {
        (df / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    (f, df)
}

/// perplexity.cpp's `percentile` lambda over sorted values (f32 interpolation).
pub fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    if fraction <= 0.0 {
        return sorted[0];
    }
    if fraction >= 1.0 {
        return sorted[sorted.len() - 1];
    }
    let mut p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    (1.0 - p) * sorted[ip] + p * sorted[(ip + 1).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.4), 2);
        assert_eq!(nearest_int(65534.6), 65535);
    }

    #[test]
    fn percentile_interpolates_like_llama_perplexity() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        let v = [0.0f32, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
    }

    #[test]
    fn quantized_record_round_trips_and_self_kld_is_tiny() {
        let logits: Vec<f32> = (0..1001)
            .map(|i| ((i * 37 % 101) as f32) * 0.17 - 3.0)
            .collect();
        let mut rec = vec![0u16; record_len(logits.len())];
        let nll = quantize_log_softmax(&logits, &mut rec, 5);
        let s = score_token(&logits, &rec, 5);
        assert!((s.nll as f64 - nll).abs() < 1e-6);
        assert!((s.nll_base - s.nll).abs() < 1e-3);
        assert!(s.kld.abs() < 1e-6, "{}", s.kld);
        assert!(s.same_top);
    }
}
