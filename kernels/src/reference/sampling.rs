//! Token selection from logits: greedy argmax and seeded temperature / top-p (nucleus) sampling.
//!
//! The sampling rule, exactly (the CUDA kernel implements the same rule):
//! 1. z_i = logit_i / temperature, e_i = exp(z_i - max z)   (f32)
//! 2. the nucleus is {i : e_i >= tau}, where tau is the largest value among the e_i such that the
//!    e_j >= tau sum to at least top_p * sum(e). Equal values are in or out together.
//! 3. u = `rng::sampling_uniform(seed, offset, row)`; r = u * (sum of e over the nucleus); the
//!    token is the first nucleus index, in vocabulary order, whose running nucleus sum exceeds r
//!    (the last nucleus index if rounding leaves none).
//!
//! temperature == 0 means greedy; top_p == 1 keeps the whole vocabulary. NaN logits are treated
//! as -inf (never chosen unless the whole row is NaN, then token 0). When max z is not finite
//! (every logit -inf/NaN, or a logit / T overflowed to +inf) the weights of step 1 are undefined;
//! the token is then the greedy argmax of the logits, the limit of the distribution (token 0 for
//! an all -inf row).

use crate::error::{check_len, Error, Result};
use crate::rng::sampling_uniform;

const OP: &str = "sample";

/// Per-row sampling settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
}

impl SamplingParams {
    pub const GREEDY: SamplingParams = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
    };

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid(
                OP,
                format!(
                    "temperature must be finite and >= 0, got {}",
                    self.temperature
                ),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                OP,
                format!("top_p must be in (0, 1], got {}", self.top_p),
            ));
        }
        Ok(())
    }
}

fn ordered(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}

/// Index of the largest value (lowest index on ties); NaN counts as -inf.
pub fn argmax_row(row: &[f32]) -> i32 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if ordered(v) > ordered(row[best]) {
            best = i;
        }
    }
    best as i32
}

/// Greedy selection for every row of [rows, vocab] logits.
pub fn argmax(logits: &[f32], vocab: usize) -> Result<Vec<i32>> {
    check_vocab(logits.len(), vocab)?;
    Ok(logits.chunks_exact(vocab).map(argmax_row).collect())
}

/// z_i = logit_i / T of rule step 1 (NaN counts as -inf).
pub fn scaled_logits(row: &[f32], temperature: f32) -> Vec<f32> {
    row.iter().map(|&v| ordered(v) / temperature).collect()
}

fn max_of(z: &[f32]) -> f32 {
    z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// The unnormalized probabilities e_i of one row (rule step 1). Only meaningful when max z is
/// finite; `sample_row` handles the other case before calling this.
pub fn row_weights(row: &[f32], temperature: f32) -> Vec<f32> {
    let z = scaled_logits(row, temperature);
    let max = max_of(&z);
    z.iter().map(|&v| (v - max).exp()).collect()
}

/// tau of rule step 2 for weights `e` (0 keeps everything).
pub fn nucleus_threshold(e: &[f32], top_p: f32) -> f32 {
    if top_p >= 1.0 {
        return 0.0;
    }
    let total: f32 = e.iter().sum();
    let target = top_p * total;
    let mut sorted = e.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut mass = 0.0f32;
    let mut i = 0;
    while i < sorted.len() {
        // Take all copies of this value at once: equal values are in or out together.
        let v = sorted[i];
        while i < sorted.len() && sorted[i] == v {
            mass += v;
            i += 1;
        }
        if mass >= target {
            return v;
        }
    }
    sorted.last().copied().unwrap_or(0.0)
}

/// Rule step 3: the token for uniform `u` among weights `e` with threshold `tau`.
pub fn pick(e: &[f32], tau: f32, u: f32) -> i32 {
    let mass: f32 = e.iter().filter(|&&v| v >= tau).sum();
    let r = u * mass;
    let mut running = 0.0f32;
    let mut last = 0usize;
    for (i, &v) in e.iter().enumerate() {
        if v >= tau {
            running += v;
            last = i;
            if running > r {
                return i as i32;
            }
        }
    }
    last as i32
}

/// One row with uniform `u`.
pub fn sample_row(row: &[f32], params: SamplingParams, u: f32) -> i32 {
    if params.temperature == 0.0 {
        return argmax_row(row);
    }
    let z = scaled_logits(row, params.temperature);
    let max = max_of(&z);
    if !max.is_finite() {
        // exp(z - max) would be NaN; the limit of the distribution is the largest logit.
        return argmax_row(row);
    }
    let e: Vec<f32> = z.iter().map(|&v| (v - max).exp()).collect();
    let tau = nucleus_threshold(&e, params.top_p);
    pick(&e, tau, u)
}

/// Samples every row of [rows, vocab] logits; row t draws `sampling_uniform(seed, offset, t)`.
pub fn sample(
    logits: &[f32],
    vocab: usize,
    params: &[SamplingParams],
    seed: u64,
    offset: u64,
) -> Result<Vec<i32>> {
    let rows = check_vocab(logits.len(), vocab)?;
    check_len(OP, "params", params.len(), rows)?;
    params.iter().try_for_each(SamplingParams::validate)?;
    Ok(logits
        .chunks_exact(vocab)
        .zip(params)
        .enumerate()
        .map(|(t, (row, p))| sample_row(row, *p, sampling_uniform(seed, offset, t as u64)))
        .collect())
}

fn check_vocab(len: usize, vocab: usize) -> Result<usize> {
    if vocab == 0 || len % vocab != 0 {
        return Err(Error::shape(
            OP,
            format!("logits have {len} elements, not a multiple of vocabulary size {vocab}"),
        ));
    }
    Ok(len / vocab)
}
