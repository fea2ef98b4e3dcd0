//! A rank's handle on its world: the transport (behind a lock, so the forward pass's shared
//! [`Context`](crate::cpu::Context) can carry it) and the expert placement.

use std::sync::{Mutex, MutexGuard};

use moe_dispatch::ep::{ExpertPlacement, Transport};

use crate::error::{ModelError, Result};

/// What a step runs, announced by every rank before it (see [`crate::dist::rank`]). The values
/// travel as `u64`; 0 means "no work".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StepKind {
    /// The main model's layers.
    Main = 1,
    /// The MTP module's layer.
    Mtp = 2,
}

impl StepKind {
    pub fn code(self) -> u64 {
        self as u64
    }

    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(StepKind::Main),
            2 => Some(StepKind::Mtp),
            _ => None,
        }
    }
}

/// One rank's connection to the others.
pub struct RankComm {
    rank: usize,
    placement: ExpertPlacement,
    /// `None` before [`connect`](Self::connect) and after [`leave`](Self::leave).
    transport: Mutex<Option<Box<dyn Transport>>>,
}

impl std::fmt::Debug for RankComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankComm")
            .field("rank", &self.rank)
            .field("world_size", &self.placement.world_size())
            .finish()
    }
}

impl RankComm {
    pub fn new(rank: usize, placement: ExpertPlacement) -> Self {
        RankComm {
            rank,
            placement,
            transport: Mutex::new(None),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.placement.world_size()
    }

    pub fn placement(&self) -> &ExpertPlacement {
        &self.placement
    }

    /// Attaches a transport of this rank's world (same rank, same size).
    pub fn connect(&self, transport: Box<dyn Transport>) -> Result<()> {
        if transport.rank() != self.rank || transport.world_size() != self.world_size() {
            return Err(ModelError::request(format!(
                "rank {} of {}: the transport is rank {} of {}",
                self.rank,
                self.world_size(),
                transport.rank(),
                transport.world_size()
            )));
        }
        *self.lock() = Some(transport);
        Ok(())
    }

    /// Drops the transport: the peers' pending and later collectives fail naming this rank
    /// instead of waiting for it.
    pub fn leave(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<dyn Transport>>> {
        self.transport.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_transport<T>(
        &self,
        op: &str,
        f: impl FnOnce(&mut dyn Transport) -> kernels::Result<T>,
    ) -> Result<T> {
        let mut guard = self.lock();
        let transport = guard.as_mut().ok_or_else(|| {
            ModelError::collective(format!(
                "rank {}: {op} outside a connected world (no transport)",
                self.rank
            ))
        })?;
        f(transport.as_mut()).map_err(|e| ModelError::collective(e.to_string()))
    }

    /// All-to-all of one `u64` per peer (see [`Transport::all_to_all_counts`]).
    pub fn all_to_all_counts(&self, send: &[u64]) -> Result<Vec<u64>> {
        self.with_transport("all_to_all_counts", |t| t.all_to_all_counts(send))
    }

    /// All-to-all of byte buffers whose sizes the receiver knows (see
    /// [`Transport::all_to_all_bytes`]).
    pub fn all_to_all_bytes(&self, send: &[Vec<u8>], recv_len: &[usize]) -> Result<Vec<Vec<u8>>> {
        self.with_transport("all_to_all_bytes", |t| t.all_to_all_bytes(send, recv_len))
    }

    /// Every rank's announcement: `result[p]` is what rank `p` passed.
    pub fn announce(&self, code: u64) -> Result<Vec<u64>> {
        self.all_to_all_counts(&vec![code; self.world_size()])
    }
}
