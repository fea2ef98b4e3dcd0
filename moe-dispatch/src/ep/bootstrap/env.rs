//! What the environment says: who this process is (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`) and how long to wait for the others (`DSV3_NCCL_ID_TIMEOUT_S`).
//!
//! Every check here runs before any file or socket is touched, so a misconfigured rank fails at
//! once with the variable and its value in the message instead of waiting out a timeout.

use std::time::Duration;

use kernels::error::{Error, Result};

use super::{DEFAULT_ID_TIMEOUT, MAX_WORLD_SIZE, OP};

/// The process environment as a lookup. A value that is not UTF-8 is passed on lossily (so it
/// fails to parse, naming the variable) rather than read as unset.
pub(super) fn process_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(v)) => Some(v.to_string_lossy().into_owned()),
    }
}

/// Rank, world size and GPU ordinal of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
}

/// `name` as a non-negative integer; `None` when unset.
pub(super) fn parse_var(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<usize>> {
    match lookup(name) {
        None => Ok(None),
        Some(v) => {
            v.trim().parse::<usize>().map(Some).map_err(|_| {
                Error::invalid(OP, format!("{name}={v:?} is not a non-negative integer"))
            })
        }
    }
}

impl WorldEnv {
    /// From `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (and `LOCAL_WORLD_SIZE`, checked when set) of the
    /// process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(process_env)
    }

    /// From any variable lookup (tests pass a map).
    ///
    /// `LOCAL_RANK` defaults to `RANK` (right for one node). It is not bounded by `WORLD_SIZE`:
    /// it is the GPU ordinal, and a world of 2 may run on GPUs 2 and 3. When `LOCAL_WORLD_SIZE`
    /// is set (torchrun sets it) the usual torchrun invariants are checked too:
    /// `LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let world_size = parse_var(&lookup, "WORLD_SIZE")?;
        let rank = parse_var(&lookup, "RANK")?;
        let (rank, world_size) = match (rank, world_size) {
            (Some(r), Some(w)) => (r, w),
            (None, None) | (Some(0), None) | (None, Some(1)) => (0, 1),
            (None, Some(w)) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "WORLD_SIZE={w} but RANK is not set (each process of a world needs its \
                         own RANK in 0..{w})"
                    ),
                ))
            }
            (Some(r), None) => {
                return Err(Error::invalid(
                    OP,
                    format!("RANK={r} but WORLD_SIZE is not set"),
                ))
            }
        };
        if world_size == 0 || world_size > MAX_WORLD_SIZE {
            return Err(Error::invalid(
                OP,
                format!("rank {rank}: WORLD_SIZE={world_size} is not in 1..={MAX_WORLD_SIZE}"),
            ));
        }
        if rank >= world_size {
            return Err(Error::invalid(
                OP,
                format!(
                    "RANK={rank} is not below WORLD_SIZE={world_size} (ranks are 0..{})",
                    world_size - 1
                ),
            ));
        }
        let who = format!("rank {rank} of {world_size}");
        let local_rank = parse_var(&lookup, "LOCAL_RANK")
            .map_err(|e| Error::invalid(OP, format!("{who}: {}", detail(&e))))?;
        let local_world = parse_var(&lookup, "LOCAL_WORLD_SIZE")
            .map_err(|e| Error::invalid(OP, format!("{who}: {}", detail(&e))))?;
        if let Some(lw) = local_world {
            if lw == 0 || lw > world_size {
                return Err(Error::invalid(
                    OP,
                    format!("{who}: LOCAL_WORLD_SIZE={lw} is not in 1..=WORLD_SIZE={world_size}"),
                ));
            }
            let lr = local_rank.unwrap_or(rank);
            if lr >= lw {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{who}: LOCAL_RANK={lr}{} is not below LOCAL_WORLD_SIZE={lw}",
                        if local_rank.is_none() {
                            " (from RANK; LOCAL_RANK is not set)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        Ok(Self {
            rank,
            world_size,
            local_rank: local_rank.unwrap_or(rank),
        })
    }

    /// `"rank R of W"`, the prefix of this module's errors.
    pub(super) fn who(&self) -> String {
        format!("rank {} of {}", self.rank, self.world_size)
    }
}

/// The detail of an [`Error::InvalidArgument`] (to re-wrap it with more context).
fn detail(e: &Error) -> String {
    match e {
        Error::InvalidArgument { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// `DSV3_NCCL_ID_TIMEOUT_S`: seconds (fractions allowed, which the tests use), positive and
/// small enough for a [`Duration`]; [`DEFAULT_ID_TIMEOUT`] when unset.
pub(super) fn parse_timeout(lookup: &impl Fn(&str) -> Option<String>) -> Result<Duration> {
    let Some(v) = lookup("DSV3_NCCL_ID_TIMEOUT_S") else {
        return Ok(DEFAULT_ID_TIMEOUT);
    };
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            Error::invalid(
                OP,
                format!("DSV3_NCCL_ID_TIMEOUT_S={v:?} is not a positive number of seconds"),
            )
        })
}
