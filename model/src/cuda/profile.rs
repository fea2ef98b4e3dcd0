//! Op-group timing of a real forward call (`dsv3 bench --synthetic`): a CUDA event is recorded
//! on the launch stream after each op group, and the time since the previous event is that
//! group's. The forward pass calls [`mark`] at its group boundaries; without marks (every
//! ordinary call) that is a no-op, so the benchmark times the very code that serves.

use std::cell::RefCell;

use kernels::gpu::{CudaEvent, CudaEventFlags, Gpu};

use crate::error::{ModelError, Result};
use crate::fullwidth::OpTime;

/// Maps a driver error into a [`ModelError`] naming what was being done.
pub(super) fn cuda_err<E: std::fmt::Display>(context: &str) -> impl FnOnce(E) -> ModelError + '_ {
    move |e| {
        ModelError::Kernel(kernels::Error::Cuda {
            context: context.to_string(),
            detail: e.to_string(),
        })
    }
}

/// The events of one instrumented call. Interior mutability so that one shared reference can
/// travel through the attention context and the FFN calls.
pub struct OpMarks<'g> {
    gpu: &'g Gpu,
    events: RefCell<Vec<CudaEvent>>,
    ops: RefCell<Vec<&'static str>>,
}

impl std::fmt::Debug for OpMarks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpMarks")
            .field("ops", &self.ops.borrow().len())
            .finish()
    }
}

impl<'g> OpMarks<'g> {
    /// Starts timing: records the first event now.
    pub fn start(gpu: &'g Gpu) -> Result<Self> {
        let marks = OpMarks {
            gpu,
            events: RefCell::new(Vec::new()),
            ops: RefCell::new(Vec::new()),
        };
        marks.record()?;
        Ok(marks)
    }

    fn record(&self) -> Result<()> {
        let e = self
            .gpu
            .context()
            .new_event(Some(CudaEventFlags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating a timing event"))?;
        e.record(self.gpu.stream())
            .map_err(cuda_err("recording a timing event"))?;
        self.events.borrow_mut().push(e);
        Ok(())
    }

    /// Ends op group `op` (the work launched since the previous mark).
    pub fn mark(&self, op: &'static str) -> Result<()> {
        self.record()?;
        self.ops.borrow_mut().push(op);
        Ok(())
    }

    /// Milliseconds per op group, summed over the call, in first-seen order (waits for the
    /// stream).
    pub fn totals(&self) -> Result<Vec<OpTime>> {
        let events = self.events.borrow();
        let mut out: Vec<OpTime> = Vec::new();
        for (w, &op) in events.windows(2).zip(self.ops.borrow().iter()) {
            let ms = f64::from(
                w[0].elapsed_ms(&w[1])
                    .map_err(cuda_err("reading event times (a kernel may have faulted)"))?,
            );
            match out.iter_mut().find(|o| o.op == op) {
                Some(o) => o.ms += ms,
                None => out.push(OpTime { op, ms }),
            }
        }
        Ok(out)
    }
}

/// Ends op group `op` when the call is being timed.
pub fn mark(marks: Option<&OpMarks>, op: &'static str) -> Result<()> {
    match marks {
        Some(m) => m.mark(op),
        None => Ok(()),
    }
}
