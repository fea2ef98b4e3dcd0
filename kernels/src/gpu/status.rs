//! The device-side status word kernels use to report bad input (an out-of-range token id or
//! position) without a host round trip; the caller checks it when it chooses to synchronize
//! (once per step, outside a CUDA graph). Codes match `kernels/include/dsv3/common.cuh`.

use super::{DeviceTensor, Gpu};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct DeviceStatus {
    word: DeviceTensor<i32>,
}

impl DeviceStatus {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(DeviceStatus {
            word: gpu.zeros(&[1])?,
        })
    }

    pub fn word(&self) -> &DeviceTensor<i32> {
        &self.word
    }

    pub fn word_mut(&mut self) -> &mut DeviceTensor<i32> {
        &mut self.word
    }

    /// Clears the word.
    pub fn reset(&mut self, gpu: &Gpu) -> Result<()> {
        gpu.fill_bytes(&mut self.word, 0)
    }

    /// Synchronizes and turns a recorded fault into an error naming `op`, then clears the word.
    pub fn check(&mut self, gpu: &Gpu, op: &'static str) -> Result<()> {
        let code = gpu.download(&self.word)?[0];
        if code == 0 {
            return Ok(());
        }
        self.reset(gpu)?;
        Err(match code {
            1 => Error::index(
                op,
                "a token id was outside the vocabulary (detected on the device)",
            ),
            2 => Error::index(
                op,
                "a position was outside the RoPE table (detected on the device)",
            ),
            3 => Error::index(
                op,
                "a grouped GEMM's group index (m_indices) or masked row count (masked_m) was out \
                 of range; the affected tiles were skipped (detected on the device)",
            ),
            4 => Error::index(
                op,
                "an expert id was outside 0..num_experts; it was not counted (detected on the \
                 device)",
            ),
            5 => Error::index(
                op,
                "expert id out of range in dispatch (or a slot outside the dispatched rows, or an \
                 expert over the masked layout's m_max); those pairs were dropped (detected on the \
                 device)",
            ),
            6 => Error::index(
                op,
                "MLA decode: a block_table entry outside 0..num_blocks (its tokens were masked, \
                 nothing read) or a cache_seqlens value outside S_q..=max_blocks * 64 (clamped) \
                 (detected on the device)",
            ),
            other => Error::Cuda {
                context: op.into(),
                detail: format!("kernel reported status {other}"),
            },
        })
    }
}
