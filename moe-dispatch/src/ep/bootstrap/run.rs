//! Run ids: the nonce that tells this launch's NCCL id from one left by an earlier launch.
//!
//! Why: a run that crashes leaves its id file behind (rank 0 removes it only when everything
//! went well). When the job is restarted, a rank that starts before the new rank 0 has replaced
//! the file used to read the old id and hang forever in `ncclCommInitRank`, waiting for a
//! communicator nobody else joins. Every record of the exchange now carries the run id, and a
//! rank only takes an id published under its own run id; anything else is stale and waited over.
//!
//! Where the id comes from, first match wins:
//!
//! 1. `DSV3_RUN_ID`, set by the launcher to one value for every rank of one launch (our CLI
//!    puts a fresh random one in each child's environment, see [`super::LocalLaunch`]; a
//!    scheduler can use its job id, e.g. `$SLURM_JOB_ID.$SLURM_RESTART_COUNT`).
//! 2. File exchange only: derived from what all local ranks of one launch share without being
//!    told, the launcher itself. Ranks are the children of one process (torchrun, mpirun's
//!    daemon, our CLI, a shell starting `prog &` N times), so its pid is one value per
//!    launch that a later launch (a new launcher process) does not repeat. torchrun restarting
//!    its workers keeps the same parent, so its `TORCHELASTIC_RESTART_COUNT` is added. What this
//!    cannot tell apart: ranks started from different shells (they wait, then fail naming both
//!    run ids: set `DSV3_RUN_ID`), and two launches from one long-lived shell loop (set
//!    `DSV3_RUN_ID`).
//! 3. TCP exchange without `DSV3_RUN_ID`: none (ranks on several nodes share no parent). A
//!    stale TCP peer is much less of a hazard than a stale file: a crashed rank 0 no longer
//!    listens, so nobody can read an old id.
//!
//! Both sides must agree: a rank with a run id and a rank without one never match.

use std::hash::{BuildHasher, Hasher};

use kernels::error::{Error, Result};

use super::OP;

/// Longest run id accepted (it travels with a one-byte length).
pub const MAX_RUN_ID_LEN: usize = 128;

/// The variable a launcher sets to the same run id for every rank.
pub const RUN_ID_VAR: &str = "DSV3_RUN_ID";

/// The nonce of one launch (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId {
    value: String,
    derived: bool,
}

impl RunId {
    /// A run id given by the caller: 1 to [`MAX_RUN_ID_LEN`] printable ASCII characters (it is
    /// printed in error messages and must not garble them).
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        if value.is_empty()
            || value.len() > MAX_RUN_ID_LEN
            || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "{RUN_ID_VAR}={value:?}: a run id is 1 to {MAX_RUN_ID_LEN} printable ASCII \
                     characters without spaces"
                ),
            ));
        }
        Ok(Self {
            value,
            derived: false,
        })
    }

    /// A fresh random run id (32 hex digits) for a launcher to hand to all its ranks.
    ///
    /// The randomness is std's per-process hash keys (seeded from the OS), mixed with the pid
    /// and the time: not cryptographic, but two launches colliding is out of the question.
    pub fn fresh() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut value = String::with_capacity(32);
        for half in 0..2u8 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(half);
            h.write_u32(std::process::id());
            h.write_u128(nanos);
            value.push_str(&format!("{:016x}", h.finish()));
        }
        Self {
            value,
            derived: false,
        }
    }

    /// The run id as text.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Whether it was derived from the parent process rather than given by `DSV3_RUN_ID`.
    pub fn is_derived(&self) -> bool {
        self.derived
    }

    /// From `DSV3_RUN_ID`, or (for the file exchange, `derive`) from the parent process.
    pub(super) fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        derive: bool,
    ) -> Result<Option<Self>> {
        // Empty counts as unset, like the exchange variables.
        if let Some(v) = lookup(RUN_ID_VAR).filter(|v| !v.is_empty()) {
            return Self::new(v).map(Some);
        }
        if !derive {
            return Ok(None);
        }
        Ok(parent_id().map(|ppid| {
            let mut value = format!("ppid-{ppid}");
            if let Some(n) = lookup("TORCHELASTIC_RESTART_COUNT") {
                // Keep it printable whatever torchrun puts there.
                let n: String = n
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(16)
                    .collect();
                value.push_str(&format!("-restart-{n}"));
            }
            Self {
                value,
                derived: true,
            }
        }))
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.value)
    }
}

#[cfg(unix)]
fn parent_id() -> Option<u32> {
    Some(std::os::unix::process::parent_id())
}

#[cfg(not(unix))]
fn parent_id() -> Option<u32> {
    None
}

/// A run id or its absence, for messages.
pub(super) fn show(run: Option<&str>) -> String {
    match run {
        Some(r) => format!("{r:?}"),
        None => format!("none ({RUN_ID_VAR} unset)"),
    }
}
