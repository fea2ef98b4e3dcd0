//! CUDA-event timing: warm up, then time each repetition between two events on the stream.

use super::{cuda_err, Gpu};
use crate::error::Result;
use cudarc::driver::sys::CUevent_flags;

/// Per-repetition times in milliseconds and their summary.
#[derive(Clone, Debug, serde::Serialize)]
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

impl Gpu {
    /// Runs `f` `warmup` times, then `reps` times with an event recorded between repetitions.
    pub fn time(
        &self,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<TimingStats> {
        for _ in 0..warmup {
            f()?;
        }
        let events = (0..=reps)
            .map(|_| {
                self.context()
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(cuda_err("creating timing events"))?;
        events[0]
            .record(self.stream())
            .map_err(cuda_err("recording an event"))?;
        for e in &events[1..] {
            f()?;
            e.record(self.stream())
                .map_err(cuda_err("recording an event"))?;
        }
        let samples = events
            .windows(2)
            .map(|w| w[0].elapsed_ms(&w[1]))
            .collect::<Result<Vec<f32>, _>>()
            .map_err(cuda_err("reading event times (a kernel may have faulted)"))?;
        Ok(TimingStats::from_samples(&samples))
    }
}
