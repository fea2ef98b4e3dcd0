//! The token distribution a sampler draws from, as an explicit probability vector.
//!
//! Lossless speculative sampling needs the target distribution `p` and the draft distribution
//! `q` as numbers, not just a sampled token. They must be exactly the distribution the plain
//! sampler (`kernels::reference::sampling::sample_row`) draws from, temperature scaling and
//! top-p truncation included, or speculative output would follow a different law than plain
//! output. So this module builds them from the same helpers (`row_weights`,
//! `nucleus_threshold`) and the same special cases (greedy and non-finite rows are point masses
//! at the argmax).

use kernels::reference::sampling::{argmax_row, nucleus_threshold, row_weights, SamplingParams};

/// The normalized distribution `sample_row(row, params, u)` draws from for `u ~ U[0, 1)`:
/// `e_i / sum(nucleus e)` inside the nucleus, 0 outside. Greedy (`temperature == 0`) and rows
/// whose scaled maximum is not finite give a point mass at the argmax, as `sample_row` does.
pub fn target_distribution(row: &[f32], params: SamplingParams) -> Vec<f32> {
    let point_mass = || {
        let mut p = vec![0.0f32; row.len()];
        if !p.is_empty() {
            p[argmax_row(row) as usize] = 1.0;
        }
        p
    };
    if params.temperature == 0.0 {
        return point_mass();
    }
    let mut e = row_weights(row, params.temperature);
    if e.iter().any(|v| !v.is_finite()) || e.iter().all(|&v| v == 0.0) {
        return point_mass();
    }
    let tau = nucleus_threshold(&e, params.top_p);
    e.iter_mut().filter(|v| **v < tau).for_each(|v| *v = 0.0);
    let mass: f32 = e.iter().sum();
    e.iter_mut().for_each(|v| *v /= mass);
    e
}

/// Inverse-CDF draw from the (not necessarily normalized) non-negative weights `w` with uniform
/// `u` in [0, 1): the first index whose running sum exceeds `u * sum(w)`, the last index with
/// positive weight if rounding leaves none. `None` when every weight is 0.
pub fn sample_weights(w: &[f32], u: f32) -> Option<usize> {
    let total: f32 = w.iter().sum();
    if total.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    let r = u * total;
    let mut running = 0.0f32;
    let mut last = None;
    for (i, &v) in w.iter().enumerate() {
        if v > 0.0 {
            running += v;
            last = Some(i);
            if running > r {
                return Some(i);
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::reference::sampling::sample_row;

    #[test]
    fn greedy_is_a_point_mass_at_the_argmax() {
        let p = target_distribution(&[0.5, 3.0, 3.0, -1.0], SamplingParams::GREEDY);
        assert_eq!(p, vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn temperature_gives_the_softmax() {
        let row = [1.0f32, 2.0, 0.0];
        let p = target_distribution(
            &row,
            SamplingParams {
                temperature: 0.5,
                top_p: 1.0,
            },
        );
        let e: Vec<f64> = row.iter().map(|&x| (2.0 * x as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        for (a, b) in p.iter().zip(&e) {
            assert!((*a as f64 - b / s).abs() < 1e-6);
        }
    }

    #[test]
    fn top_p_truncates_like_the_sampler() {
        let row = [2.0f32, 1.0, 0.0, -1.0, 0.5];
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.7,
        };
        let p = target_distribution(&row, params);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // Every token the plain sampler can produce has positive probability here and the others
        // have none; the sampler's frequency over a fine grid of u matches p.
        let n = 100_000;
        let mut counts = vec![0usize; row.len()];
        for i in 0..n {
            let u = (i as f32 + 0.5) / n as f32;
            counts[sample_row(&row, params, u) as usize] += 1;
        }
        for (c, &pi) in counts.iter().zip(&p) {
            assert!(
                ((*c as f32 / n as f32) - pi).abs() < 1e-3,
                "{counts:?} vs {p:?}"
            );
        }
    }

    #[test]
    fn sample_weights_inverts_the_cdf() {
        let w = [0.0f32, 1.0, 0.0, 3.0];
        assert_eq!(sample_weights(&w, 0.0), Some(1));
        assert_eq!(sample_weights(&w, 0.24), Some(1));
        assert_eq!(sample_weights(&w, 0.26), Some(3));
        assert_eq!(sample_weights(&w, 0.999_999), Some(3));
        assert_eq!(sample_weights(&[0.0, 0.0], 0.5), None);
    }
}
