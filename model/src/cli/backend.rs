//! The backend a CLI command runs on: the engine is generic over [`Backend`], the CLI picks one at
//! run time, so it holds either behind one enum that delegates every call.

use crate::cpu::{MtpOutput, SeqChunk};
use crate::engine::{Backend, CpuBackend, LogitRows};
use crate::error::Result;
use crate::ModelConfig;

#[cfg(feature = "cuda")]
use crate::cuda::CudaBackend;

/// The CLI's backend (one per process: the variants' size difference does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyBackend {
    Cpu(CpuBackend),
    /// The CUDA backend on the process-wide device ([`cli_gpu`]).
    #[cfg(feature = "cuda")]
    Cuda(CudaBackend<'static>),
}

/// The process's GPU for the CLI (opened once, kept for the process's life), or why there is
/// none (`no CUDA device: ...`).
#[cfg(feature = "cuda")]
pub fn cli_gpu() -> std::result::Result<&'static kernels::gpu::Gpu, String> {
    use std::sync::OnceLock;
    static GPU: OnceLock<std::result::Result<kernels::gpu::Gpu, String>> = OnceLock::new();
    GPU.get_or_init(|| kernels::gpu::Gpu::new(0).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

macro_rules! each {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Cpu($b) => $e,
            #[cfg(feature = "cuda")]
            AnyBackend::Cuda($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    fn config(&self) -> &ModelConfig {
        each!(self, b => b.config())
    }

    fn describe(&self) -> String {
        each!(self, b => b.describe())
    }

    fn kv_blocks(&self) -> usize {
        each!(self, b => b.kv_blocks())
    }

    fn forward(&mut self, seqs: &[SeqChunk], rows: LogitRows) -> Result<Vec<f32>> {
        each!(self, b => b.forward(seqs, rows))
    }

    fn forward_with_hidden(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        each!(self, b => b.forward_with_hidden(seqs, rows))
    }

    fn has_mtp(&self) -> bool {
        each!(self, b => b.has_mtp())
    }

    fn mtp_forward(
        &mut self,
        hidden: &[f32],
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        each!(self, b => b.mtp_forward(hidden, seqs, rows))
    }
}
