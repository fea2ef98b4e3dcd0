//! The id exchange through a file (`DSV3_NCCL_ID_FILE`): rank 0 writes the id record, the
//! other ranks poll for a record of their run and confirm with an acknowledgement file
//! (`<id file>.ack-<rank>`) that rank 0 waits for.
//!
//! Why the acknowledgements: without them rank 0 cannot tell that a rank never came (it would
//! go on into `ncclCommInitRank` and wait there for ever), and cannot know when the id file may
//! go. With them rank 0 names the missing ranks when its timeout passes, and removes the id file
//! and the acknowledgements as soon as everyone has the id, before NCCL starts: a file outlives
//! its run only when rank 0 itself dies during the exchange (the run id covers that case).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::error::{Error, Result};

use super::run::show;
use super::wire::{decode_ack, decode_record, encode_ack, encode_record, judge, Decoded, Verdict};
use super::{rank_list, IdBytes, Member, OP, POLL};

/// Where rank `rank` acknowledges having read the id file at `path`.
pub(super) fn ack_path(path: &Path, rank: usize) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".ack-{rank}"));
    PathBuf::from(p)
}

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

/// Rank 0: replaces any old id file (and old acknowledgements) with this run's record.
pub(super) fn publish(path: &Path, id: &IdBytes, me: &Member<'_>) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        Error::invalid(
            OP,
            format!("{}: {what} NCCL id file {}: {e}", me.who(), path.display()),
        )
    };
    for r in 1..me.world_size {
        remove_if_present(&ack_path(path, r))
            .map_err(|e| io("cannot remove an old acknowledgement of the", e))?;
    }
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
                    Verdict::Use(id) => return acknowledge(path, me).map(|()| id),
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
                                show(me.run.map(|r| r.as_str()))
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

/// Ranks > 0: tells rank 0 this rank has the id.
fn acknowledge(path: &Path, me: &Member<'_>) -> Result<()> {
    let ack = ack_path(path, me.rank);
    write_atomically(&ack, &encode_ack(me.rank, me.run.map(|r| r.as_str()))).map_err(|e| {
        Error::invalid(
            OP,
            format!(
                "{}: read the NCCL id file but cannot confirm it to rank 0: writing {}: {e} (the \
                 ranks need write access to the id file's directory)",
                me.who(),
                ack.display()
            ),
        )
    })
}

/// Rank 0, after [`publish`]: waits until every other rank has acknowledged the id, or the
/// timeout passes (an error naming the ranks that never did). Either way the id file and the
/// acknowledgements are removed before returning.
pub(super) fn await_acks(path: &Path, me: &Member<'_>) -> Result<()> {
    let result = poll_acks(path, me);
    for r in 1..me.world_size {
        let _ = std::fs::remove_file(ack_path(path, r));
    }
    let _ = std::fs::remove_file(path);
    result
}

fn poll_acks(path: &Path, me: &Member<'_>) -> Result<()> {
    let start = Instant::now();
    let mine = me.run.map(|r| r.as_str());
    let mut acked = vec![false; me.world_size];
    acked[0] = true;
    let mut notes: Vec<String> = Vec::new();
    loop {
        for (r, done) in acked.iter_mut().enumerate().skip(1) {
            if *done {
                continue;
            }
            let ack = ack_path(path, r);
            let bytes = match std::fs::read(&ack) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::invalid(
                        OP,
                        format!("{}: cannot read {}: {e}", me.who(), ack.display()),
                    ))
                }
            };
            match decode_ack(&bytes) {
                Decoded::Ok((rank, run)) if rank == r as u64 && run.as_deref() == mine => {
                    *done = true
                }
                // Written by another run after `publish` cleaned up, or by a confused peer.
                Decoded::Ok((rank, run)) => {
                    let note = if run.as_deref() == mine {
                        format!("{} claims rank {rank}", ack.display())
                    } else {
                        format!(
                            "{} is from another run (run id {})",
                            ack.display(),
                            show(run.as_deref())
                        )
                    };
                    if notes.len() < 8 && !notes.contains(&note) {
                        notes.push(note);
                    }
                }
                Decoded::Incomplete | Decoded::Foreign(_) => {}
            }
        }
        if !acked.contains(&false) {
            return Ok(());
        }
        if start.elapsed() >= me.timeout {
            let (came, missing): (Vec<usize>, Vec<usize>) =
                (1..me.world_size).partition(|&r| acked[r]);
            let came = if came.is_empty() {
                "no other rank did".to_string()
            } else {
                format!("{} did", rank_list(&came))
            };
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" Also seen: {}.", notes.join("; "))
            };
            return Err(Error::invalid(
                OP,
                format!(
                    "{}: waited {:?} for {} to read the NCCL id file {} (DSV3_NCCL_ID_FILE; each \
                     rank confirms with {}), which never happened ({came}). {} running, with \
                     the same WORLD_SIZE, DSV3_NCCL_ID_FILE{}?{notes}",
                    me.who(),
                    me.timeout,
                    rank_list(&missing),
                    path.display(),
                    ack_path(path, missing.first().copied().unwrap_or(1)).display(),
                    if missing.len() == 1 {
                        "Is it"
                    } else {
                        "Are they"
                    },
                    me.run_hint()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}
