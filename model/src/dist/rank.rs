//! One rank of a CPU world as an engine [`Backend`], and the step protocol that keeps the ranks
//! in lockstep.
//!
//! # Step protocol
//!
//! Every MoE layer is a collective, so all ranks must run the same layers in the same order,
//! even a rank whose requests are done or that has none. Before each forward call a rank
//! announces its [`StepKind`]; a rank out of work announces 0 ([`RankBackend::finish`]). All
//! ranks see the same announcements and take the smallest non-zero kind `m`: the ranks that
//! announced `m` run their forward; every other rank serves `m` with zero rows of its own
//! ([`CpuModel::serve_idle_step`](crate::cpu::CpuModel::serve_idle_step)) and announces again.
//! When every rank announces 0 the world is done. A rank's own calls therefore never wait on a
//! different kind of call elsewhere (the main pass of one rank and the MTP pass of another just
//! take turns), and a world whose ranks finish at different times needs no other agreement.

use std::sync::Arc;

use crate::cpu::{CpuModel, MtpOutput, SeqChunk};
use crate::engine::{Backend, CpuBackend, LogitRows};
use crate::error::{ModelError, Result};
use crate::ModelConfig;

use super::comm::{RankComm, StepKind};

/// The CPU backend of one rank: its model shard (replicated weights and its experts), its own KV
/// caches, and its connection to the world.
#[derive(Debug)]
pub struct RankBackend {
    cpu: CpuBackend,
    comm: Arc<RankComm>,
}

impl RankBackend {
    /// `model` with `comm` set (its [`CpuModel::set_rank_comm`]) and `kv_blocks` blocks of its
    /// own KV cache.
    pub fn new(mut model: CpuModel, comm: Arc<RankComm>, kv_blocks: usize) -> Result<Self> {
        model.set_rank_comm(comm.clone());
        Ok(RankBackend {
            cpu: CpuBackend::new(model, kv_blocks)?,
            comm,
        })
    }

    pub fn comm(&self) -> &RankComm {
        &self.comm
    }

    /// The rank's CPU backend in words (`cpu fp8 (2 threads)`), without its place in the world.
    pub fn cpu_describe(&self) -> String {
        self.cpu.describe()
    }

    /// Waits for this rank's turn to run a step of `kind`, serving the other ranks' steps
    /// meanwhile.
    fn enter(&mut self, kind: StepKind) -> Result<()> {
        loop {
            match self.next_kind(kind.code())? {
                Some(k) if k == kind => return Ok(()),
                Some(k) => self.cpu.model.serve_idle_step(k)?,
                None => {
                    return Err(ModelError::collective(format!(
                        "rank {}: announced a {kind:?} step but the world saw none",
                        self.comm.rank()
                    )))
                }
            }
        }
    }

    /// Serves the other ranks' steps until every rank is out of work. Every rank calls it once
    /// its own work is done.
    pub fn finish(&mut self) -> Result<()> {
        while let Some(k) = self.next_kind(0)? {
            self.cpu.model.serve_idle_step(k)?;
        }
        Ok(())
    }

    /// Announces `code` and returns the kind the world runs next (`None`: all done).
    fn next_kind(&self, code: u64) -> Result<Option<StepKind>> {
        let codes = self.comm.announce(code)?;
        let mut next = None;
        for (p, &c) in codes.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let kind = StepKind::from_code(c).ok_or_else(|| {
                ModelError::collective(format!(
                    "rank {}: rank {p} announced step kind {c}, which is not a step",
                    self.comm.rank()
                ))
            })?;
            next = Some(next.map_or(kind, |n: StepKind| n.min(kind)));
        }
        Ok(next)
    }
}

impl Backend for RankBackend {
    fn config(&self) -> &ModelConfig {
        self.cpu.config()
    }

    fn describe(&self) -> String {
        format!(
            "{}, rank {} of {}",
            self.cpu_describe(),
            self.comm.rank(),
            self.comm.world_size()
        )
    }

    fn kv_blocks(&self) -> usize {
        self.cpu.kv_blocks()
    }

    fn forward(&mut self, seqs: &[SeqChunk], rows: LogitRows) -> Result<Vec<f32>> {
        self.enter(StepKind::Main)?;
        self.cpu.forward(seqs, rows)
    }

    fn forward_with_hidden(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.enter(StepKind::Main)?;
        self.cpu.forward_with_hidden(seqs, rows)
    }

    fn has_mtp(&self) -> bool {
        self.cpu.has_mtp()
    }

    fn mtp_forward(
        &mut self,
        hidden: &[f32],
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        self.enter(StepKind::Mtp)?;
        self.cpu.mtp_forward(hidden, seqs, rows)
    }
}
