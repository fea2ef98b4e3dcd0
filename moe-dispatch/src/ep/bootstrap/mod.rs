//! World setup for one process per GPU: rank and world size from the environment, and the
//! sharing of the NCCL unique id (128 opaque bytes made by rank 0) with the other ranks, through
//! a file or a small TCP exchange on loopback.
//!
//! Environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `RANK`, `WORLD_SIZE` | this process's rank and the number of processes (both required when `WORLD_SIZE` > 1; absent = a world of 1) |
//! | `LOCAL_RANK` | the GPU ordinal of this process on its node (default: `RANK`) |
//! | `DSV3_NCCL_ID_FILE` | path of the id file: rank 0 writes it atomically (temp file + rename), the others poll for it |
//! | `DSV3_NCCL_ID_ADDR` | `host:port` (e.g. `127.0.0.1:29511`): rank 0 serves the id there over TCP, the others fetch it (used when `DSV3_NCCL_ID_FILE` is unset) |
//! | `DSV3_NCCL_ID_TIMEOUT_S` | how long the other ranks wait for the id (and rank 0 for them over TCP), default 120 |
//!
//! Stale files: rank 0 removes an existing id file before writing the new one, and removes its
//! file again once the communicator is up (every rank has read it by then: NCCL's
//! initialization is collective, see [`IdExchange::finish`]). A file left by a crashed run can
//! still be read by a rank that starts before the new rank 0; use a fresh path per launch (e.g.
//! one that includes the job id) to rule that out.
//!
//! This module does not touch NCCL (the id is plain bytes), so it is tested without a GPU.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use kernels::error::{Error, Result};

mod env;
mod file;
mod tcp;
mod wire;

pub use env::WorldEnv;
pub use file::{publish_id_file, wait_id_file};
pub use tcp::{fetch_id_tcp, serve_id_tcp};

/// Size of `ncclUniqueId`.
pub const NCCL_ID_BYTES: usize = 128;

/// An NCCL unique id as bytes.
pub type IdBytes = [u8; NCCL_ID_BYTES];

pub(super) const OP: &str = "nccl_bootstrap";
pub(super) const POLL: Duration = Duration::from_millis(20);

/// Default of `DSV3_NCCL_ID_TIMEOUT_S`.
pub const DEFAULT_ID_TIMEOUT: Duration = Duration::from_secs(120);

/// How the unique id reaches the ranks other than 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdExchange {
    /// A world of one: nothing to share.
    Local,
    /// Through a file (`DSV3_NCCL_ID_FILE`).
    File { path: PathBuf, timeout: Duration },
    /// Over TCP (`DSV3_NCCL_ID_ADDR`), rank 0 serving.
    Tcp { addr: String, timeout: Duration },
}

impl IdExchange {
    /// From the process environment (see the module documentation).
    pub fn from_env(world_size: usize) -> Result<Self> {
        Self::from_lookup(world_size, |k| std::env::var(k).ok())
    }

    pub fn from_lookup(world_size: usize, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let timeout = env::parse_timeout(&lookup)?;
        if let Some(path) = lookup("DSV3_NCCL_ID_FILE").filter(|p| !p.is_empty()) {
            return Ok(IdExchange::File {
                path: path.into(),
                timeout,
            });
        }
        if let Some(addr) = lookup("DSV3_NCCL_ID_ADDR").filter(|a| !a.is_empty()) {
            return Ok(IdExchange::Tcp { addr, timeout });
        }
        if world_size == 1 {
            return Ok(IdExchange::Local);
        }
        Err(Error::invalid(
            OP,
            format!(
                "WORLD_SIZE={world_size}: set DSV3_NCCL_ID_FILE (a path all ranks can read) or \
                 DSV3_NCCL_ID_ADDR (host:port, e.g. 127.0.0.1:29511) so the ranks can share the \
                 NCCL unique id"
            ),
        ))
    }

    /// Shares the id: rank 0 calls `make_id` and publishes the result, the other ranks wait for
    /// it. Every rank returns the same bytes.
    pub fn share(
        &self,
        rank: usize,
        world_size: usize,
        make_id: impl FnOnce() -> Result<IdBytes>,
    ) -> Result<IdBytes> {
        match self {
            IdExchange::Local => {
                if world_size != 1 {
                    return Err(Error::invalid(
                        OP,
                        format!("no id exchange configured for a world of {world_size}"),
                    ));
                }
                make_id()
            }
            IdExchange::File { path, timeout } => {
                if rank == 0 {
                    let id = make_id()?;
                    publish_id_file(path, &id, world_size)?;
                    Ok(id)
                } else {
                    wait_id_file(path, rank, world_size, *timeout)
                }
            }
            IdExchange::Tcp { addr, timeout } => {
                if rank == 0 {
                    let id = make_id()?;
                    let listener = TcpListener::bind(addr.as_str()).map_err(|e| {
                        Error::invalid(OP, format!("rank 0: cannot listen on {addr}: {e}"))
                    })?;
                    serve_id_tcp(&listener, &id, world_size, *timeout)?;
                    Ok(id)
                } else {
                    fetch_id_tcp(addr, rank, world_size, *timeout)
                }
            }
        }
    }

    /// After the communicator is initialized on every rank (rank 0's initialization returning
    /// proves all ranks joined, hence read the id): rank 0 removes the id file. Errors are
    /// ignored (the file may already be gone).
    pub fn finish(&self, rank: usize) {
        if let (IdExchange::File { path, .. }, 0) = (self, rank) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests;
