//! Timing events on the wall clock. Launches are synchronous, so the time between two records is
//! the host time the interpreter spent on the work between them: useful to compare interpreter
//! runs, meaningless as a GPU time.

use std::sync::Mutex;
use std::time::Instant;

use super::{CudaStream, EmuError};

/// Event creation flags (cudarc's `CUevent_flags`); all behave alike here.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaEventFlags {
    CU_EVENT_DEFAULT,
    CU_EVENT_BLOCKING_SYNC,
    CU_EVENT_DISABLE_TIMING,
    CU_EVENT_INTERPROCESS,
}

/// The emulated context: what `Gpu::context()` returns; it makes events.
#[derive(Debug, Default)]
pub struct CudaContext {
    _private: (),
}

impl CudaContext {
    pub fn new_event(&self, _flags: Option<CudaEventFlags>) -> Result<CudaEvent, EmuError> {
        Ok(CudaEvent {
            at: Mutex::new(None),
        })
    }
}

/// A point in the stream, i.e. an instant on the host clock.
#[derive(Debug)]
pub struct CudaEvent {
    at: Mutex<Option<Instant>>,
}

impl CudaEvent {
    pub fn record(&self, _stream: &CudaStream) -> Result<(), EmuError> {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        Ok(())
    }

    /// Milliseconds from `self` to `end`; both must have been recorded, as with the driver.
    pub fn elapsed_ms(&self, end: &CudaEvent) -> Result<f32, EmuError> {
        let at = |e: &CudaEvent| *e.at.lock().unwrap_or_else(|e| e.into_inner());
        match (at(self), at(end)) {
            (Some(start), Some(end)) => {
                Ok(end.saturating_duration_since(start).as_secs_f32() * 1e3)
            }
            _ => Err(EmuError(
                "CUDA_ERROR_INVALID_HANDLE: an event was never recorded".into(),
            )),
        }
    }
}
