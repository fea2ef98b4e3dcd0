//! Acceptance of draft tokens by the verifier, for greedy and for sampled decoding.
//!
//! A speculative step proposes drafts `x_1..x_D` and runs the target model once over
//! `[t, x_1, .., x_D]`, which gives the target's distribution `p_k` for the token after each
//! prefix (`D + 1` rows). The functions here decide which drafts survive and which token comes
//! after them; the result always has `accepted + 1` tokens, so every step makes progress.
//!
//! - Greedy: the longest prefix of drafts equal to the target's argmax, then the target's
//!   argmax after it. The output is exactly plain greedy decoding.
//! - Sampled (Leviathan et al. 2023, Chen et al. 2023): draft `x_k ~ q_k` is accepted with
//!   probability `min(1, p_k(x_k) / q_k(x_k))`; at the first rejection the token is drawn from
//!   `normalize(max(0, p_k - q_k))`; when all drafts pass the bonus token is drawn from
//!   `p_D`. Each emitted token then has exactly the law `p_k` plain sampling would give it.

use crate::distribution::sample_weights;

/// What verification kept of one sequence's drafts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Drafts accepted (a prefix of them).
    pub accepted: usize,
    /// The tokens to append: the accepted drafts, then the verifier's token after them
    /// (`accepted + 1` tokens).
    pub tokens: Vec<u32>,
}

/// Greedy acceptance: `verifier[k]` is the target's argmax after the prefix ending at draft
/// `k` (`verifier.len() == drafts.len() + 1`). Accepts the longest prefix of `drafts` equal to
/// `verifier` and appends the verifier's next token.
///
/// # Panics
/// If `verifier.len() != drafts.len() + 1`.
pub fn greedy_accept(drafts: &[u32], verifier: &[u32]) -> Verdict {
    assert_eq!(
        verifier.len(),
        drafts.len() + 1,
        "one verifier token per draft plus the bonus"
    );
    let accepted = drafts
        .iter()
        .zip(verifier)
        .take_while(|(d, v)| d == v)
        .count();
    let mut tokens = drafts[..accepted].to_vec();
    tokens.push(verifier[accepted]);
    Verdict { accepted, tokens }
}

/// Speculative rejection sampling.
///
/// - `drafts[k]` was drawn from `q[k]` (a probability vector; a deterministic drafter passes a
///   point mass at its token);
/// - `p[k]` is the target distribution after the prefix ending at draft `k` (`D + 1` rows);
/// - `accept_u[k]` (`D` values) and `resample_u[k]` (`D + 1` values) are independent uniforms
///   in [0, 1): draft `k` is accepted when `accept_u[k] * q[k][x] < p[k][x]`, and the token
///   after the accepted prefix of length `a` is drawn with `resample_u[a]`.
///
/// If `p - q` has no positive mass at a rejection (which only rounding can cause: then
/// `p == q` and rejection has probability 0) the token is drawn from `p`.
///
/// # Panics
/// If the lengths disagree.
pub fn rejection_sample(
    drafts: &[u32],
    q: &[Vec<f32>],
    p: &[Vec<f32>],
    accept_u: &[f32],
    resample_u: &[f32],
) -> Verdict {
    let d = drafts.len();
    assert!(
        q.len() == d && accept_u.len() == d && p.len() == d + 1 && resample_u.len() == d + 1,
        "rejection_sample: {d} drafts need {d} q rows and uniforms, {} p rows and resample \
         uniforms",
        d + 1
    );
    let mut tokens = Vec::with_capacity(d + 1);
    for k in 0..d {
        let x = drafts[k] as usize;
        let (pk, qk) = (p[k][x], q[k][x]);
        if accept_u[k] * qk < pk {
            tokens.push(drafts[k]);
            continue;
        }
        let residual: Vec<f32> = p[k]
            .iter()
            .zip(&q[k])
            .map(|(a, b)| (a - b).max(0.0))
            .collect();
        let next = sample_weights(&residual, resample_u[k])
            .or_else(|| sample_weights(&p[k], resample_u[k]))
            .unwrap_or(0);
        tokens.push(next as u32);
        return Verdict {
            accepted: k,
            tokens,
        };
    }
    let bonus = sample_weights(&p[d], resample_u[d]).unwrap_or(0);
    tokens.push(bonus as u32);
    Verdict {
        accepted: d,
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::rng::Rng;

    #[test]
    fn greedy_takes_the_longest_agreeing_prefix() {
        assert_eq!(
            greedy_accept(&[5, 6, 7], &[5, 6, 9, 1]),
            Verdict {
                accepted: 2,
                tokens: vec![5, 6, 9]
            }
        );
        assert_eq!(greedy_accept(&[5, 6], &[4, 6, 7]).tokens, vec![4]);
        // Agreement after a disagreement does not count.
        assert_eq!(greedy_accept(&[1, 2], &[0, 2, 3]).accepted, 0);
        let all = greedy_accept(&[1, 2], &[1, 2, 3]);
        assert_eq!((all.accepted, all.tokens), (2, vec![1, 2, 3]));
        assert_eq!(greedy_accept(&[], &[8]).tokens, vec![8]);
    }

    #[test]
    #[should_panic(expected = "one verifier token per draft")]
    fn greedy_checks_lengths() {
        greedy_accept(&[1], &[1]);
    }

    fn point(n: usize, i: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        v[i] = 1.0;
        v
    }

    #[test]
    fn point_masses_reduce_to_greedy() {
        let p = vec![point(4, 2), point(4, 3), point(4, 0)];
        let q = vec![point(4, 2), point(4, 1)];
        let v = rejection_sample(&[2, 1], &q, &p, &[0.9, 0.9], &[0.5; 3]);
        assert_eq!(v, greedy_accept(&[2, 1], &[2, 3, 0]));
    }

    /// Drafts from `q`, rejection against `p`: the emitted tokens follow `p` at every position,
    /// whatever `q` is (here `q` differs a lot from `p`, including a token `p` never emits).
    #[test]
    fn sampled_tokens_follow_the_target_distribution() {
        let p0 = vec![0.5f32, 0.3, 0.2, 0.0];
        let p1 = vec![0.1f32, 0.1, 0.4, 0.4];
        let p2 = vec![0.25f32; 4];
        let q0 = vec![0.1f32, 0.2, 0.3, 0.4];
        let q1 = vec![0.7f32, 0.1, 0.1, 0.1];
        let (p, q) = (vec![p0, p1, p2], vec![q0, q1]);
        let mut rng = Rng::new(42);
        let n = 200_000;
        let mut first = [0usize; 4];
        let mut second = [0usize; 4];
        let mut second_n = 0;
        let mut accepted = 0usize;
        for _ in 0..n {
            let drafts: Vec<u32> = q
                .iter()
                .map(|qk| sample_weights(qk, rng.unit()).unwrap() as u32)
                .collect();
            let au = [rng.unit(), rng.unit()];
            let ru = [rng.unit(), rng.unit(), rng.unit()];
            let v = rejection_sample(&drafts, &q, &p, &au, &ru);
            first[v.tokens[0] as usize] += 1;
            if v.tokens.len() > 1 {
                second[v.tokens[1] as usize] += 1;
                second_n += 1;
            }
            accepted += v.accepted;
        }
        for (c, want) in first.iter().zip(&p[0]) {
            assert!((*c as f32 / n as f32 - want).abs() < 0.005, "{first:?}");
        }
        for (c, want) in second.iter().zip(&p[1]) {
            assert!(
                (*c as f32 / second_n as f32 - want).abs() < 0.01,
                "{second:?}"
            );
        }
        // P(accept draft 0) = sum min(p0, q0) = 0.1 + 0.2 + 0.2 + 0 = 0.5.
        assert!(second_n as f32 / n as f32 > 0.48 && (second_n as f32 / n as f32) < 0.52);
        assert!(accepted > 0);
    }

    #[test]
    fn identical_distributions_always_accept() {
        let p = vec![vec![0.25f32; 4]; 3];
        let q = vec![vec![0.25f32; 4]; 2];
        let v = rejection_sample(&[3, 1], &q, &p, &[0.999, 0.999], &[0.0; 3]);
        assert_eq!(v.accepted, 2);
        assert_eq!(v.tokens, vec![3, 1, 0]);
    }
}
