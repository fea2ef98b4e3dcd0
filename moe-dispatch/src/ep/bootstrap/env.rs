//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`: who this process is.

use kernels::error::{Error, Result};

use super::OP;

/// Rank, world size and GPU ordinal of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
}

fn parse_var(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>> {
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
    /// From `RANK`, `WORLD_SIZE`, `LOCAL_RANK` of the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let world_size = parse_var(&lookup, "WORLD_SIZE")?;
        let rank = parse_var(&lookup, "RANK")?;
        let local_rank = parse_var(&lookup, "LOCAL_RANK")?;
        let (rank, world_size) = match (rank, world_size) {
            (Some(r), Some(w)) => (r, w),
            (None, None) | (Some(0), None) | (None, Some(1)) => (0, 1),
            (None, Some(w)) => {
                return Err(Error::invalid(
                    OP,
                    format!("WORLD_SIZE={w} but RANK is not set"),
                ))
            }
            (Some(r), None) => {
                return Err(Error::invalid(
                    OP,
                    format!("RANK={r} but WORLD_SIZE is not set"),
                ))
            }
        };
        if world_size == 0 {
            return Err(Error::invalid(OP, "WORLD_SIZE is 0"));
        }
        if rank >= world_size {
            return Err(Error::invalid(
                OP,
                format!("RANK={rank} is not below WORLD_SIZE={world_size}"),
            ));
        }
        Ok(Self {
            rank,
            world_size,
            local_rank: local_rank.unwrap_or(rank),
        })
    }
}
