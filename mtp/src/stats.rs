//! Counters of a speculative decoding run: how many drafts were made and accepted at each draft
//! position, and how many tokens each verification (main-model) step produced.

/// Speculative decoding statistics, summed over the sequences of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Main-model verification passes (one pass verifies every active sequence of the batch).
    pub main_steps: usize,
    /// Sequence verifications: one per active sequence per pass.
    pub seq_steps: usize,
    /// Tokens kept from verification steps (a stop token or `max_new_tokens` can cut a step's
    /// accepted tokens short; the first token, which comes from the prefill, is not counted).
    pub emitted: usize,
    /// `drafted_at[k]`: drafts made at draft position `k` (0 = the token right after the
    /// verified one).
    pub drafted_at: Vec<usize>,
    /// `accepted_at[k]`: of those, the ones accepted. Draft `k` can only be accepted when every
    /// draft before it was, so this is the cumulative acceptance of `k + 1` drafts.
    pub accepted_at: Vec<usize>,
}

impl SpecStats {
    /// Adds the statistics of other sequences that ran side by side with these (another rank of
    /// a data-parallel world): their passes ran concurrently, so `main_steps` is the larger
    /// count; every per-sequence count adds up.
    pub fn merge(&mut self, other: &SpecStats) {
        self.main_steps = self.main_steps.max(other.main_steps);
        self.seq_steps += other.seq_steps;
        self.emitted += other.emitted;
        for (mine, theirs) in [
            (&mut self.drafted_at, &other.drafted_at),
            (&mut self.accepted_at, &other.accepted_at),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            mine.iter_mut().zip(theirs).for_each(|(a, b)| *a += b);
        }
    }

    /// Records one sequence's verification: `drafted` drafts, `accepted` of them kept, `emitted`
    /// tokens appended to its output.
    pub fn record(&mut self, drafted: usize, accepted: usize, emitted: usize) {
        if self.drafted_at.len() < drafted {
            self.drafted_at.resize(drafted, 0);
            self.accepted_at.resize(drafted, 0);
        }
        for k in 0..drafted {
            self.drafted_at[k] += 1;
            if k < accepted {
                self.accepted_at[k] += 1;
            }
        }
        self.seq_steps += 1;
        self.emitted += emitted;
    }

    /// All drafts made.
    pub fn drafted(&self) -> usize {
        self.drafted_at.iter().sum()
    }

    /// All drafts accepted.
    pub fn accepted(&self) -> usize {
        self.accepted_at.iter().sum()
    }

    /// Accepted over drafted (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted(), self.drafted())
    }

    /// Acceptance rate of each draft position.
    pub fn acceptance_rate_at(&self) -> Vec<f64> {
        self.drafted_at
            .iter()
            .zip(&self.accepted_at)
            .map(|(&d, &a)| ratio(a, d))
            .collect()
    }

    /// Tokens each sequence gained per main-model step (1 for plain decoding, up to `D + 1`).
    pub fn tokens_per_step(&self) -> f64 {
        ratio(self.emitted, self.seq_steps)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_per_position() {
        let mut s = SpecStats::default();
        s.record(2, 2, 3);
        s.record(2, 1, 2);
        s.record(2, 0, 1);
        s.record(1, 0, 1); // near the end of a request fewer drafts are made
        assert_eq!(s.drafted_at, vec![4, 3]);
        assert_eq!(s.accepted_at, vec![2, 1]);
        assert_eq!(s.drafted(), 7);
        assert_eq!(s.accepted(), 3);
        assert!((s.acceptance_rate() - 3.0 / 7.0).abs() < 1e-12);
        assert_eq!(s.acceptance_rate_at(), vec![0.5, 1.0 / 3.0]);
        assert!((s.tokens_per_step() - 7.0 / 4.0).abs() < 1e-12);
        assert_eq!(SpecStats::default().acceptance_rate(), 0.0);
    }
}
