//! World setup for one process per GPU: who this process is (rank, world size, GPU), and the
//! sharing of the NCCL unique id (128 opaque bytes made by rank 0) with the other ranks.
//!
//! Two ways to start a world:
//!
//! - **One node, our launcher** (the CLI's `--world-size N`): it starts the N ranks itself and
//!   gives each the environment of [`LocalLaunch::env`]: the rank variables, a fresh
//!   `DSV3_RUN_ID`, and a fresh id file in the temp directory (`DSV3_NCCL_ID_FILE`).
//! - **Several nodes, torchrun-style**: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//!   `MASTER_PORT` as torchrun (or a scheduler script) sets them. Rank 0 serves the id over TCP on
//!   `MASTER_PORT`; the others fetch it from `MASTER_ADDR:MASTER_PORT`.
//!
//! Environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `RANK`, `WORLD_SIZE` | this process's rank and the number of processes (both required when `WORLD_SIZE` > 1; absent = a world of 1) |
//! | `LOCAL_RANK` | the GPU ordinal of this process on its node (default: `RANK`) |
//! | `LOCAL_WORLD_SIZE` | ranks on this node (optional; when set, `LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE` is checked) |
//! | `DSV3_RUN_ID` | the run id, one value for all ranks of a launch; without it the file exchange derives one from the parent process and TCP uses none (see [`RunId`] for why, and for what that cannot catch) |
//! | `DSV3_NCCL_ID_FILE` | 1st choice: path of the id file; rank 0 writes it atomically (temp file + rename), the others poll for it and confirm with `<path>.ack-<rank>`; rank 0 waits for those, then removes them and the file |
//! | `DSV3_NCCL_ID_ADDR` | 2nd choice: `host:port` (e.g. `127.0.0.1:29511`); rank 0 listens on exactly that address, the others connect to it |
//! | `MASTER_ADDR`, `MASTER_PORT` | 3rd choice: rank 0 listens on `MASTER_PORT` on all interfaces, the others connect to `MASTER_ADDR:MASTER_PORT` |
//! | `DSV3_NCCL_ID_TIMEOUT_S` | the bound on every wait of the exchange, in seconds (fractions allowed), default 120 |
//!
//! Precedence: a world of 1 uses none of them (nothing to share). Otherwise the first of
//! `DSV3_NCCL_ID_FILE`, `DSV3_NCCL_ID_ADDR`, `MASTER_ADDR` + `MASTER_PORT` that is set and
//! non-empty decides; with none of them set the error says which to set. So a launcher's id file
//! wins over `MASTER_ADDR` inherited from a surrounding job.
//!
//! Failures are errors naming the rank and the cause, never a hang past the timeout: bad or
//! inconsistent rank variables (before anything is opened), ranks that disagree on
//! `WORLD_SIZE` (the exchange carries rank 0's), a rank that never comes (rank 0 names it),
//! rank 0 never coming (the others say what they saw), an id file or peer of another run (never
//! used, see [`RunId`]). What happens after the exchange is NCCL's: `ncclCommInitRank` itself
//! has no timeout, but every rank reaches it only once all of them have the id.
//!
//! This module does not touch NCCL (the id is plain bytes), so it is tested without a GPU.

use std::path::PathBuf;
use std::time::Duration;

use kernels::error::{Error, Result};

mod env;
mod file;
mod launch;
mod run;
mod tcp;
mod wire;

pub use env::WorldEnv;
pub use launch::LocalLaunch;
pub use run::{RunId, MAX_RUN_ID_LEN, RUN_ID_VAR};

/// Size of `ncclUniqueId`.
pub const NCCL_ID_BYTES: usize = 128;

/// An NCCL unique id as bytes.
pub type IdBytes = [u8; NCCL_ID_BYTES];

pub(super) const OP: &str = "nccl_bootstrap";
pub(super) const POLL: Duration = Duration::from_millis(20);

/// Largest world accepted: far beyond any deployment, small enough that per-rank bookkeeping
/// (rank 0's list of who has the id) cannot exhaust memory on a mistyped `WORLD_SIZE`.
pub const MAX_WORLD_SIZE: usize = 1 << 16;

/// Default of `DSV3_NCCL_ID_TIMEOUT_S`.
pub const DEFAULT_ID_TIMEOUT: Duration = Duration::from_secs(120);

/// Which setting a TCP exchange came from: it decides where rank 0 listens and which variables
/// the errors name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpVia {
    /// `DSV3_NCCL_ID_ADDR`: rank 0 listens on exactly that address.
    IdAddr,
    /// `MASTER_ADDR` / `MASTER_PORT`: rank 0 listens on `MASTER_PORT` on every interface
    /// (`MASTER_ADDR` is how the other nodes reach it, not necessarily an address it can bind).
    Master,
}

impl TcpVia {
    /// The variables, for messages.
    pub fn vars(self) -> &'static str {
        match self {
            TcpVia::IdAddr => "DSV3_NCCL_ID_ADDR",
            TcpVia::Master => "MASTER_ADDR/MASTER_PORT",
        }
    }
}

/// How the unique id reaches the ranks other than 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdExchange {
    /// A world of one: nothing to share.
    Local,
    /// Through a file (`DSV3_NCCL_ID_FILE`).
    File {
        path: PathBuf,
        /// This launch's run id; `None` matches only records without one.
        run: Option<RunId>,
        timeout: Duration,
    },
    /// Over TCP, rank 0 serving (`addr` is where the others connect).
    Tcp {
        addr: String,
        via: TcpVia,
        /// This launch's run id; `None` matches only requests without one.
        run: Option<RunId>,
        timeout: Duration,
    },
}

/// One rank's side of an exchange: what the file and TCP halves check records against.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member<'a> {
    pub rank: usize,
    pub world_size: usize,
    pub run: Option<&'a RunId>,
    pub timeout: Duration,
}

impl<'a> Member<'a> {
    pub fn new(rank: usize, world_size: usize, run: &'a Option<RunId>, timeout: Duration) -> Self {
        Self {
            rank,
            world_size,
            run: run.as_ref(),
            timeout,
        }
    }

    /// `"rank R of W"`, the prefix of the exchange's errors.
    pub fn who(&self) -> String {
        format!("rank {} of {}", self.rank, self.world_size)
    }

    /// The tail of a timeout message: which run id the ranks must share, and where it came from.
    pub fn run_hint(&self) -> String {
        match self.run {
            None => String::new(),
            Some(r) if r.is_derived() => format!(
                " and run id {:?} (derived from the parent process since {RUN_ID_VAR} is unset: \
                 ranks not started by one launcher must all be given one {RUN_ID_VAR})",
                r.as_str()
            ),
            Some(r) => format!(" and {RUN_ID_VAR}={:?}", r.as_str()),
        }
    }
}

/// "rank 3" / "ranks 2, 3".
pub(super) fn rank_list(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(|r| r.to_string()).collect();
    match ranks.len() {
        1 => format!("rank {}", list[0]),
        _ => format!("ranks {}", list.join(", ")),
    }
}

/// `MASTER_ADDR` and `MASTER_PORT` as one `host:port` (an IPv6 literal bracketed).
fn master_addr(world: &WorldEnv, host: &str, port: &str) -> Result<String> {
    let bad_port = || {
        Error::invalid(
            OP,
            format!(
                "{}: MASTER_PORT={port:?} is not a port (1..65535)",
                world.who()
            ),
        )
    };
    let port = port
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(bad_port)?;
    let host = host.trim();
    if host.contains(':') && !host.starts_with('[') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

impl IdExchange {
    /// From the process environment (see the module documentation).
    pub fn from_env(world: &WorldEnv) -> Result<Self> {
        Self::from_lookup(world, env::process_env)
    }

    /// From any variable lookup (tests pass a map); `world` names the rank in errors.
    pub fn from_lookup(world: &WorldEnv, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let timeout = env::parse_timeout(&lookup)?;
        if world.world_size == 1 {
            return Ok(IdExchange::Local);
        }
        let set = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        if let Some(path) = set("DSV3_NCCL_ID_FILE") {
            return Ok(IdExchange::File {
                path: path.into(),
                run: RunId::from_lookup(&lookup, true)?,
                timeout,
            });
        }
        let run = RunId::from_lookup(&lookup, false)?;
        if let Some(addr) = set("DSV3_NCCL_ID_ADDR") {
            if tcp::split_host_port(addr.trim()).is_none() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{}: DSV3_NCCL_ID_ADDR={addr:?} is not host:port (e.g. 127.0.0.1:29511)",
                        world.who()
                    ),
                ));
            }
            return Ok(IdExchange::Tcp {
                addr: addr.trim().to_string(),
                via: TcpVia::IdAddr,
                run,
                timeout,
            });
        }
        match (set("MASTER_ADDR"), set("MASTER_PORT")) {
            (Some(host), Some(port)) => Ok(IdExchange::Tcp {
                addr: master_addr(world, &host, &port)?,
                via: TcpVia::Master,
                run,
                timeout,
            }),
            (Some(host), None) => Err(Error::invalid(
                OP,
                format!(
                    "{}: MASTER_ADDR={host:?} is set but MASTER_PORT is not; multi-node worlds \
                     need both (torchrun-style: rank 0's host, and a free port there)",
                    world.who()
                ),
            )),
            (None, _) => Err(Error::invalid(
                OP,
                format!(
                    "{}: MASTER_ADDR is not set; multi-node worlds need MASTER_ADDR and \
                     MASTER_PORT (torchrun-style: rank 0's host and a free port there, the same \
                     on every rank) so the ranks can share the NCCL unique id; on one node \
                     DSV3_NCCL_ID_FILE (a path all ranks can read) or DSV3_NCCL_ID_ADDR \
                     (host:port, e.g. 127.0.0.1:29511) does it too",
                    world.who()
                ),
            )),
        }
    }

    /// Shares the id: rank 0 calls `make_id` and publishes the result, the other ranks wait for
    /// it. Every rank returns the same bytes, or an error naming the rank and the cause within
    /// the exchange's timeout (rank 0's `make_id` aside).
    pub fn share(
        &self,
        rank: usize,
        world_size: usize,
        make_id: impl FnOnce() -> Result<IdBytes>,
    ) -> Result<IdBytes> {
        if world_size > MAX_WORLD_SIZE {
            return Err(Error::invalid(
                OP,
                format!("rank {rank}: a world of {world_size} is over {MAX_WORLD_SIZE} ranks"),
            ));
        }
        if rank >= world_size {
            return Err(Error::invalid(
                OP,
                format!("rank {rank} is not below the world size {world_size}"),
            ));
        }
        match self {
            IdExchange::Local => {
                if world_size != 1 {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "rank {rank} of {world_size}: no id exchange configured for a world \
                             of {world_size}"
                        ),
                    ));
                }
                make_id()
            }
            IdExchange::File { path, run, timeout } => {
                let me = Member::new(rank, world_size, run, *timeout);
                if rank == 0 {
                    let id = make_id()?;
                    file::publish(path, &id, &me)?;
                    file::await_acks(path, &me)?;
                    Ok(id)
                } else {
                    file::wait(path, &me)
                }
            }
            IdExchange::Tcp {
                addr,
                via,
                run,
                timeout,
            } => {
                let me = Member::new(rank, world_size, run, *timeout);
                if rank == 0 {
                    // Listen first: a port in use fails before an id is made.
                    let listener = tcp::listen(addr, *via, &me)?;
                    let id = make_id()?;
                    tcp::serve(&listener, &id, &me, *via)?;
                    Ok(id)
                } else {
                    tcp::fetch(addr, &me, *via)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
