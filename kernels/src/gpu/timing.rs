//! CUDA-event timing: warm up, then time each repetition between two events on the stream.
//! (On the emulated device events read the wall clock: launches there are synchronous.)

use super::{cuda_err, CudaEventFlags, Gpu};
use crate::error::Result;

pub use crate::stats::TimingStats;

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
                    .new_event(Some(CudaEventFlags::CU_EVENT_DEFAULT))
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

    /// Like [`Gpu::time`], but runs `between` before every repetition outside the timed region
    /// (two events per repetition). With `between` overwriting a buffer larger than L2 this
    /// measures the cold-cache time: inputs come from device memory, as weights do in decode.
    pub fn time_separated(
        &self,
        warmup: usize,
        reps: usize,
        mut between: impl FnMut() -> Result<()>,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<TimingStats> {
        for _ in 0..warmup {
            between()?;
            f()?;
        }
        let new_event = || {
            self.context()
                .new_event(Some(CudaEventFlags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("creating timing events"))
        };
        let mut pairs = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (start, end) = (new_event()?, new_event()?);
            between()?;
            start
                .record(self.stream())
                .map_err(cuda_err("recording an event"))?;
            f()?;
            end.record(self.stream())
                .map_err(cuda_err("recording an event"))?;
            pairs.push((start, end));
        }
        let samples = pairs
            .iter()
            .map(|(s, e)| s.elapsed_ms(e))
            .collect::<Result<Vec<f32>, _>>()
            .map_err(cuda_err("reading event times (a kernel may have faulted)"))?;
        Ok(TimingStats::from_samples(&samples))
    }

    /// Total device time of `iters` back-to-back calls of `f`, between two events: what a
    /// criterion `iter_custom` closure returns for GPU work.
    pub fn time_iters(
        &self,
        iters: u64,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<std::time::Duration> {
        let new_event = || {
            self.context()
                .new_event(Some(CudaEventFlags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("creating timing events"))
        };
        let (start, end) = (new_event()?, new_event()?);
        start
            .record(self.stream())
            .map_err(cuda_err("recording an event"))?;
        for _ in 0..iters {
            f()?;
        }
        end.record(self.stream())
            .map_err(cuda_err("recording an event"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(cuda_err("reading event times (a kernel may have faulted)"))?;
        Ok(std::time::Duration::from_secs_f64(f64::from(ms) / 1e3))
    }
}
