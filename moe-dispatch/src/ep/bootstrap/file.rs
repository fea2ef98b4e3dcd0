//! The id exchange through a file (`DSV3_NCCL_ID_FILE`): rank 0 writes the id record, the
//! other ranks poll for a record of their run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::error::{Error, Result};

use super::wire::{decode_record, encode_record, judge, Decoded, Verdict};
use super::{IdBytes, Member, OP, POLL};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`, so a reader sees the whole record or nothing.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Removes `path`; a file that is not there is fine.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Rank 0: replaces any old id file with this run's record.
pub(super) fn publish(path: &Path, id: &IdBytes, me: &Member<'_>) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        Error::invalid(
            OP,
            format!("{}: {what} NCCL id file {}: {e}", me.who(), path.display()),
        )
    };
    remove_if_present(path).map_err(|e| io("cannot remove the old", e))?;
    let record = encode_record(id, me.world_size, me.run.map(|r| r.as_str()));
    write_atomically(path, &record).map_err(|e| io("cannot write the", e))
}

/// Ranks > 0: polls for the id file until it holds this run's id or the timeout passes. A file
/// of another run (or of no known format) is never used: rank 0 of this run replaces it, so
/// keep waiting; the timeout error says what was seen and names the file. A file of this run
/// for a world of another size is an error at once.
pub(super) fn wait(path: &Path, me: &Member<'_>) -> Result<IdBytes> {
    let start = Instant::now();
    let mut seen = String::from("the file never appeared");
    loop {
        match std::fs::read(path) {
            Ok(bytes) => match decode_record(&bytes) {
                Decoded::Ok(rec) => match judge(&rec, me) {
                    Verdict::Use(id) => return Ok(id),
                    Verdict::Stale(what) => {
                        seen = format!("it saw a stale file {what} and did not use it")
                    }
                    Verdict::WrongWorld(why) => {
                        return Err(Error::invalid(
                            OP,
                            format!(
                                "rank {}: {why} (NCCL id file {}, run id {})",
                                me.rank,
                                path.display(),
                                super::run::show(me.run.map(|r| r.as_str()))
                            ),
                        ))
                    }
                },
                Decoded::Incomplete => {
                    seen = format!("the file was incomplete ({} bytes)", bytes.len())
                }
                Decoded::Foreign(why) => seen = format!("the file {why}"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "{}: cannot read the NCCL id file {}: {e}",
                        me.who(),
                        path.display()
                    ),
                ))
            }
        }
        if start.elapsed() >= me.timeout {
            return Err(Error::invalid(
                OP,
                format!(
                    "{}: waited {:?} for the NCCL id file {} (DSV3_NCCL_ID_FILE), which rank 0 \
                     writes; {seen}. Is rank 0 running, with the same DSV3_NCCL_ID_FILE{}?",
                    me.who(),
                    me.timeout,
                    path.display(),
                    me.run_hint()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}
