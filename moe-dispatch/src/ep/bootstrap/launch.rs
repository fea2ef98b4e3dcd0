//! The launcher's half of a one-node world: the environment of each rank it starts.
//!
//! A launcher that starts the ranks itself (the CLI's `--world-size N`) is the one place that
//! knows the whole launch, so it decides what the ranks must agree on: a fresh run id and a
//! fresh id file. The file's name contains the run id, so two launches never even share a path;
//! the run id inside the records is the second line of defence (see [`super::RunId`]).

use std::path::{Path, PathBuf};

use kernels::error::{Error, Result};

use super::{RunId, MAX_WORLD_SIZE, OP, RUN_ID_VAR};

/// One launch of a one-node world of `world_size` ranks.
///
/// ```no_run
/// # fn main() -> kernels::error::Result<()> {
/// use moe_dispatch::ep::bootstrap::LocalLaunch;
/// let launch = LocalLaunch::new(4)?;
/// let mut children = Vec::new();
/// for r in 0..launch.world_size() {
///     let child = std::process::Command::new("/proc/self/exe")
///         .envs(launch.env(r)?)
///         .spawn()
///         .expect("spawn");
///     children.push(child);
/// }
/// for mut c in children {
///     let _ = c.wait();
/// }
/// launch.cleanup(); // a file left by a rank 0 that died mid-exchange
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalLaunch {
    world_size: usize,
    run: RunId,
    id_file: PathBuf,
}

impl LocalLaunch {
    /// A launch with a fresh run id and its id file in the temp directory.
    pub fn new(world_size: usize) -> Result<Self> {
        Self::in_dir(world_size, RunId::fresh(), &std::env::temp_dir())
    }

    /// A launch with the given run id and its id file in `dir` (which every rank must be able
    /// to write: the ranks acknowledge the id next to the file).
    pub fn in_dir(world_size: usize, run: RunId, dir: &Path) -> Result<Self> {
        if world_size == 0 || world_size > MAX_WORLD_SIZE {
            return Err(Error::invalid(
                OP,
                format!("a launch of a world of {world_size} ranks (1..={MAX_WORLD_SIZE})"),
            ));
        }
        // Run ids are printable ASCII; keep the file name to the portable set.
        let name: String = run
            .as_str()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let id_file = dir.join(format!("dsv3-nccl-id-{name}"));
        if id_file.to_str().is_none() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the id file path {} is not UTF-8 (it goes into an environment variable); \
                     pick another directory",
                    id_file.display()
                ),
            ));
        }
        Ok(Self {
            world_size,
            run,
            id_file,
        })
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The id file all ranks of this launch use.
    pub fn id_file(&self) -> &Path {
        &self.id_file
    }

    /// The environment of local rank `local_rank` (also its global rank: one node): `RANK`,
    /// `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `DSV3_RUN_ID`, `DSV3_NCCL_ID_FILE`. Set
    /// on the child over the inherited environment, these win over anything the launcher itself
    /// inherited (a surrounding job's `RANK`, `MASTER_ADDR` or `DSV3_NCCL_ID_ADDR`: the id file
    /// comes first, see the precedence in [`super`]). `DSV3_NCCL_ID_TIMEOUT_S` is left to
    /// inherit.
    pub fn env(&self, local_rank: usize) -> Result<Vec<(&'static str, String)>> {
        let n = self.world_size;
        if local_rank >= n {
            return Err(Error::invalid(
                OP,
                format!(
                    "local rank {local_rank} of a world of {n}: the ranks are 0..{}",
                    n - 1
                ),
            ));
        }
        let file = self.id_file.to_str().unwrap_or_default().to_string();
        Ok(vec![
            ("RANK", local_rank.to_string()),
            ("WORLD_SIZE", n.to_string()),
            ("LOCAL_RANK", local_rank.to_string()),
            ("LOCAL_WORLD_SIZE", n.to_string()),
            (RUN_ID_VAR, self.run.as_str().to_string()),
            ("DSV3_NCCL_ID_FILE", file),
        ])
    }

    /// Removes the id file and acknowledgements if a rank 0 that died mid-exchange left them
    /// (after a clean exchange rank 0 has removed them already). Errors are ignored: there is
    /// nothing left to do about them.
    pub fn cleanup(&self) {
        for r in 1..self.world_size {
            let _ = std::fs::remove_file(super::file::ack_path(&self.id_file, r));
        }
        let _ = std::fs::remove_file(&self.id_file);
    }
}
