//! What a CLI command drives: one engine on one backend, or a distributed world of ranks
//! (`--world-size N`, the CPU backend's in-process world).

use mtp::SpecStats;

use crate::dist::CpuWorld;
use crate::engine::{Backend, Engine, Generation, GenerationStats, Request};
use crate::error::Result;
use crate::speculative::SpecConfig;
use crate::ModelConfig;

use super::backend::AnyBackend;

/// One engine, or a world of them.
#[derive(Debug)]
pub enum Runner {
    Single(Box<Engine<AnyBackend>>),
    World(CpuWorld),
}

impl Runner {
    pub fn config(&self) -> &ModelConfig {
        match self {
            Runner::Single(e) => e.config(),
            Runner::World(w) => w.config(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Runner::Single(e) => e.backend().describe(),
            Runner::World(w) => w.describe(),
        }
    }

    /// Timing of the last `generate` call.
    pub fn last_stats(&self) -> GenerationStats {
        match self {
            Runner::Single(e) => e.last_stats(),
            Runner::World(w) => w.last_stats(),
        }
    }

    pub fn generate(
        &mut self,
        requests: &[Request],
        on_token: impl FnMut(usize, u32) + Send,
    ) -> Result<Vec<Generation>> {
        match self {
            Runner::Single(e) => e.generate(requests, on_token),
            Runner::World(w) => w.generate(requests, on_token),
        }
    }

    pub fn generate_speculative(
        &mut self,
        requests: &[Request],
        spec: &SpecConfig,
        on_token: impl FnMut(usize, u32) + Send,
    ) -> Result<(Vec<Generation>, SpecStats)> {
        match self {
            Runner::Single(e) => e.generate_speculative(requests, spec, on_token),
            Runner::World(w) => w.generate_speculative(requests, spec, on_token),
        }
    }

    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            Runner::Single(e) => e.logits(ids),
            Runner::World(w) => w.logits(ids),
        }
    }

    pub fn logits_with_mtp(&mut self, ids: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
        match self {
            Runner::Single(e) => e.logits_with_mtp(ids),
            Runner::World(w) => w.logits_with_mtp(ids),
        }
    }
}
