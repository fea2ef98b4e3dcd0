//! Summary of repeated timings (GPU events or host clock): median, min, max.

/// Per-repetition times in milliseconds and their summary.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TimingStats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub reps: usize,
}

impl TimingStats {
    pub fn from_samples(samples: &[f32]) -> TimingStats {
        let mut s: Vec<f64> = samples.iter().map(|&v| f64::from(v)).collect();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        };
        TimingStats {
            median_ms: median,
            min_ms: s.first().copied().unwrap_or(f64::NAN),
            max_ms: s.last().copied().unwrap_or(f64::NAN),
            reps: n,
        }
    }
}
