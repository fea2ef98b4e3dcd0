//! The id exchange through a file (`DSV3_NCCL_ID_FILE`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kernels::error::{Error, Result};

use super::wire::{decode, encode};
use super::{IdBytes, OP, POLL};

/// Rank 0: writes the id file atomically (a temporary file in the same directory, then rename),
/// replacing any old one.
pub fn publish_id_file(path: &Path, id: &IdBytes, world_size: usize) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        Error::invalid(
            OP,
            format!("rank 0: {what} NCCL id file {}: {e}", path.display()),
        )
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove the old", e)),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create the temporary", e))?;
    f.write_all(&encode(id, world_size))
        .and_then(|()| f.sync_all())
        .map_err(|e| io("cannot write the temporary", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("cannot rename into place the", e))
}

/// Ranks > 0: polls for the id file until it holds an id for this world or `timeout` passes. A
/// file that is not one (left by another run, of another world size) is waited over: rank 0
/// replaces it; the timeout error says what was found.
pub fn wait_id_file(
    path: &Path,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<IdBytes> {
    let start = Instant::now();
    let mut seen = String::from("the file does not exist");
    loop {
        match std::fs::read(path) {
            Ok(bytes) => match decode(&bytes, world_size) {
                Ok(Some(id)) => return Ok(id),
                Ok(None) => seen = format!("the file is incomplete ({} bytes)", bytes.len()),
                Err(why) => seen = format!("the file {why}"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "rank {rank}: cannot read the NCCL id file {}: {e}",
                        path.display()
                    ),
                ))
            }
        }
        if start.elapsed() >= timeout {
            return Err(Error::invalid(
                OP,
                format!(
                    "rank {rank}: waited {timeout:?} for the NCCL id file {} \
                     (DSV3_NCCL_ID_FILE), which rank 0 writes; {seen}. Is rank 0 running and is \
                     the path shared by all ranks?",
                    path.display()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}
