//! The auxiliary-loss-free load-balancing step (spec §3.3, training side; telemetry here): after a
//! batch, each expert's `e_score_correction_bias` moves by `-gamma` if its load is above the mean
//! load, by `+gamma` if below, and stays as it is if equal.
//!
//! The comparison with the mean is exact: `counts[e] * E` against `sum(counts)` in integers, so a
//! load equal to the mean (which need not be an integer) is recognized exactly. The step itself is
//! one f32 addition or subtraction per expert.

use kernels::error::{check_len, Error, Result};

const OP: &str = "update_bias";

/// The updated bias for per-expert loads `counts` (from `routing::expert_counts`).
pub fn update_bias(bias: &[f32], counts: &[u32], gamma: f32) -> Result<Vec<f32>> {
    if bias.is_empty() {
        return Err(Error::invalid(OP, "bias has no experts"));
    }
    check_len(OP, "counts", counts.len(), bias.len())?;
    if !(gamma.is_finite() && gamma >= 0.0) {
        return Err(Error::invalid(
            OP,
            format!("gamma = {gamma} must be finite and >= 0"),
        ));
    }
    let experts = counts.len() as u128;
    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    Ok(bias
        .iter()
        .zip(counts)
        .map(|(&b, &c)| {
            let scaled = u128::from(c) * experts;
            match scaled.cmp(&total) {
                std::cmp::Ordering::Greater => b - gamma,
                std::cmp::Ordering::Less => b + gamma,
                std::cmp::Ordering::Equal => b,
            }
        })
        .collect())
}
