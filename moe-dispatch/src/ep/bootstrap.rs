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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kernels::error::{Error, Result};

/// Size of `ncclUniqueId`.
pub const NCCL_ID_BYTES: usize = 128;

/// An NCCL unique id as bytes.
pub type IdBytes = [u8; NCCL_ID_BYTES];

const OP: &str = "nccl_bootstrap";
const MAGIC: &[u8; 8] = b"DSV3NCID";
const POLL: Duration = Duration::from_millis(20);

/// Default of `DSV3_NCCL_ID_TIMEOUT_S`.
pub const DEFAULT_ID_TIMEOUT: Duration = Duration::from_secs(120);

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
        let timeout = match lookup("DSV3_NCCL_ID_TIMEOUT_S") {
            None => DEFAULT_ID_TIMEOUT,
            Some(v) => Duration::from_secs_f64(
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        Error::invalid(
                            OP,
                            format!("DSV3_NCCL_ID_TIMEOUT_S={v:?} is not a positive number"),
                        )
                    })?,
            ),
        };
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

fn encode(id: &IdBytes, world_size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(MAGIC.len() + 8 + NCCL_ID_BYTES);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&(world_size as u64).to_le_bytes());
    v.extend_from_slice(id);
    v
}

const ENCODED_LEN: usize = 8 + 8 + NCCL_ID_BYTES;

/// Decodes a published id: `Ok(None)` when the bytes are incomplete, `Err(why)` when they are
/// not an id for this world (another program's file, or one left by a run of another size).
fn decode(bytes: &[u8], world_size: usize) -> std::result::Result<Option<IdBytes>, String> {
    if bytes.len() < ENCODED_LEN && MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
        return Ok(None);
    }
    if bytes.len() != ENCODED_LEN || &bytes[..8] != MAGIC {
        return Err("does not hold an NCCL id in this program's format".into());
    }
    let w = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if w != world_size as u64 {
        return Err(format!(
            "holds an id for a world of {w}, this rank has WORLD_SIZE={world_size} (left by \
             another run?)"
        ));
    }
    Ok(Some(bytes[16..].try_into().expect("128 bytes")))
}

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

/// Rank 0: answers one request from each of ranks `1..world_size` on `listener`, then returns.
/// A request is `MAGIC, rank (u64), world_size (u64)`; the answer is the encoded id.
pub fn serve_id_tcp(
    listener: &TcpListener,
    id: &IdBytes,
    world_size: usize,
    timeout: Duration,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let io = |what: String, e: std::io::Error| {
        Error::invalid(
            OP,
            format!("rank 0 (serving the NCCL id on {addr}): {what}: {e}"),
        )
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| io("set_nonblocking".into(), e))?;
    let reply = encode(id, world_size);
    let mut served = vec![false; world_size];
    served[0] = true;
    let start = Instant::now();
    while served.iter().any(|s| !s) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(timeout)))
                    .and_then(|()| stream.set_write_timeout(Some(timeout)))
                    .map_err(|e| io(format!("configuring the connection from {peer}"), e))?;
                let mut req = [0u8; 24];
                if stream.read_exact(&mut req).is_err() || &req[..8] != MAGIC {
                    // Not one of ours (a port scanner, a stale client): ignore it.
                    continue;
                }
                let r = u64::from_le_bytes(req[8..16].try_into().expect("8 bytes"));
                let w = u64::from_le_bytes(req[16..24].try_into().expect("8 bytes"));
                if w != world_size as u64 {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "rank 0: rank {r} connected from {peer} with WORLD_SIZE={w}, this \
                             rank has {world_size}"
                        ),
                    ));
                }
                let r = r as usize;
                if r == 0 || r >= world_size {
                    return Err(Error::invalid(
                        OP,
                        format!("rank 0: a client from {peer} claims rank {r} of {world_size}"),
                    ));
                }
                stream
                    .write_all(&reply)
                    .map_err(|e| io(format!("sending the id to rank {r}"), e))?;
                served[r] = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() >= timeout {
                    let missing: Vec<usize> = (0..world_size).filter(|&r| !served[r]).collect();
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "rank 0: waited {timeout:?} on {addr} for ranks {missing:?} to fetch \
                             the NCCL id (DSV3_NCCL_ID_ADDR); are they running?"
                        ),
                    ));
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(io("accept".into(), e)),
        }
    }
    Ok(())
}

/// Ranks > 0: fetches the id from rank 0 at `addr`, retrying until rank 0 listens or `timeout`
/// passes.
pub fn fetch_id_tcp(
    addr: &str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<IdBytes> {
    let start = Instant::now();
    let mut req = Vec::with_capacity(24);
    req.extend_from_slice(MAGIC);
    req.extend_from_slice(&(rank as u64).to_le_bytes());
    req.extend_from_slice(&(world_size as u64).to_le_bytes());
    let source = || format!("the NCCL id served by rank 0 on {addr}");
    let mut last_err = String::from("no attempt");
    while start.elapsed() < timeout {
        let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                return Err(Error::invalid(
                    OP,
                    format!("rank {rank}: DSV3_NCCL_ID_ADDR={addr:?} is not host:port: {e}"),
                ))
            }
        };
        for a in &addrs {
            let attempt = (|| -> std::io::Result<Vec<u8>> {
                let mut s = TcpStream::connect_timeout(a, Duration::from_secs(1))?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.write_all(&req)?;
                let mut buf = Vec::with_capacity(ENCODED_LEN);
                s.read_to_end(&mut buf)?;
                Ok(buf)
            })();
            match attempt {
                Ok(bytes) => match decode(&bytes, world_size) {
                    Ok(Some(id)) => return Ok(id),
                    Ok(None) => last_err = format!("short reply of {} bytes", bytes.len()),
                    Err(why) => {
                        return Err(Error::invalid(
                            OP,
                            format!("rank {rank}: the reply from {addr} {why}"),
                        ))
                    }
                },
                Err(e) => last_err = e.to_string(),
            }
        }
        std::thread::sleep(POLL * 5);
    }
    Err(Error::invalid(
        OP,
        format!(
            "rank {rank}: could not get {} within {timeout:?} (last error: {last_err}); is rank \
             0 running?",
            source()
        ),
    ))
}
