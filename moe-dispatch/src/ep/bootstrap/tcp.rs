//! The id exchange over TCP (`DSV3_NCCL_ID_ADDR`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use kernels::error::{Error, Result};

use super::wire::{decode, encode, ENCODED_LEN, MAGIC};
use super::{IdBytes, OP, POLL};

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
