//! The id exchange over TCP (`DSV3_NCCL_ID_ADDR`, or `MASTER_ADDR` / `MASTER_PORT`): rank 0
//! answers one request from each other rank, then stops listening.
//!
//! Every wait is bounded by the exchange's timeout: rank 0's accept loop, each connection's
//! reads and writes (capped further at [`CONNECTION_IO`] so one silent client cannot hold rank 0
//! for the whole timeout), and the other ranks' connect-and-retry loop.

use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use kernels::error::{Error, Result};

use super::run::show;
use super::wire::{
    decode_reply, encode_record, encode_refusal, encode_request, judge, read_request, Decoded,
    Reply, Verdict,
};
use super::{rank_list, IdBytes, Member, TcpVia, OP, POLL};

/// Longest read or write on one connection (a request and an answer are a few hundred bytes).
const CONNECTION_IO: Duration = Duration::from_secs(5);

/// How long the other ranks pause between attempts to reach rank 0.
const RETRY: Duration = Duration::from_millis(100);

/// `host:port` split at the last colon, brackets of an IPv6 literal removed; `None` when the port
/// is missing, not a number, or 0.
pub(super) fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    (!host.is_empty()).then_some((host, port))
}

/// Where rank 0 listens. `DSV3_NCCL_ID_ADDR`: that very address (typically loopback). `MASTER_ADDR`:
/// every interface, on `MASTER_PORT`, as torch's own store does: `MASTER_ADDR` is how the
/// *other* nodes reach rank 0's node, which is not always an address rank 0 can bind (a hostname
/// that maps to 127.0.1.1 locally, an address behind NAT), and binding it would leave the others
/// knocking on a closed port until they time out.
pub(super) fn listen_addr(addr: &str, via: TcpVia) -> String {
    match (via, split_host_port(addr)) {
        (TcpVia::Master, Some((host, port))) => {
            if host.parse::<Ipv6Addr>().is_ok() {
                format!("[::]:{port}")
            } else {
                format!("0.0.0.0:{port}")
            }
        }
        _ => addr.to_string(),
    }
}

/// Rank 0: binds the listening socket (before making the id, so a port in use fails at once).
pub(super) fn listen(addr: &str, via: TcpVia, me: &Member<'_>) -> Result<TcpListener> {
    let at = listen_addr(addr, via);
    TcpListener::bind(at.as_str()).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            match via {
                TcpVia::Master => {
                    " (another process holds the port: a rank 0 of an earlier run still alive, or \
                     torchrun's own rendezvous store on MASTER_PORT; set DSV3_NCCL_ID_ADDR to \
                     MASTER_ADDR:<a free port> for all ranks)"
                }
                TcpVia::IdAddr => {
                    " (another process holds the port, maybe a rank 0 of an earlier run still \
                     alive; pick another port for all ranks)"
                }
            }
        } else {
            ""
        };
        Error::invalid(
            OP,
            format!(
                "{}: cannot serve the NCCL id on {at} ({}): {e}{hint}",
                me.who(),
                via.vars()
            ),
        )
    })
}

/// What became of one connection to rank 0.
enum Handled {
    /// Rank `r` got the id.
    Served(usize),
    /// Nobody served; a note for the timeout error.
    Ignored(String),
}

/// Rank 0: answers one request from each of ranks `1..world_size` on `listener`, then returns;
/// fails when the timeout passes first, naming the ranks that never came.
pub(super) fn serve(
    listener: &TcpListener,
    id: &IdBytes,
    me: &Member<'_>,
    via: TcpVia,
) -> Result<()> {
    let at = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let fail = |what: String| {
        Error::invalid(
            OP,
            format!(
                "{} (serving the NCCL id on {at}, {}): {what}",
                me.who(),
                via.vars()
            ),
        )
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(format!("set_nonblocking: {e}")))?;
    let record = encode_record(id, me.world_size, me.run.map(|r| r.as_str()));
    let deadline = Instant::now() + me.timeout;
    let mut served = vec![false; me.world_size];
    served[0] = true;
    let mut notes: Vec<String> = Vec::new();
    while served.contains(&false) {
        match listener.accept() {
            Ok((stream, peer)) => match handle(stream, peer, &record, me, deadline)? {
                Handled::Served(r) => served[r] = true,
                Handled::Ignored(note) => {
                    // Bounded: a flood of bad connections must not grow the message forever.
                    if notes.len() < 8 {
                        notes.push(note);
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(timeout_error(&served, &notes, me, &at, via));
                }
                std::thread::sleep(POLL.min(deadline - now));
            }
            // A client that gave up between connecting and our accept: not an error here.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(fail(format!("accept: {e}"))),
        }
    }
    Ok(())
}

fn timeout_error(
    served: &[bool],
    notes: &[String],
    me: &Member<'_>,
    at: &str,
    via: TcpVia,
) -> Error {
    let (came, missing): (Vec<usize>, Vec<usize>) = (1..served.len()).partition(|&r| served[r]);
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
    Error::invalid(
        OP,
        format!(
            "{}: waited {:?} on {at} ({}) for {} to fetch the NCCL id, which never came ({came}). \
             {} running, pointed at this address, with the same WORLD_SIZE{}?{notes}",
            me.who(),
            me.timeout,
            via.vars(),
            rank_list(&missing),
            if missing.len() == 1 {
                "Is it"
            } else {
                "Are they"
            },
            me.run_hint()
        ),
    )
}

/// One connection: read the request, judge it, answer with the id or a refusal.
fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    record: &[u8],
    me: &Member<'_>,
    deadline: Instant,
) -> Result<Handled> {
    use std::io::Write;
    let io = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(1), CONNECTION_IO);
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(io)))
        .and_then(|()| stream.set_write_timeout(Some(io)));
    if let Err(e) = setup {
        return Ok(Handled::Ignored(format!(
            "could not set up the connection from {peer}: {e}"
        )));
    }
    let req = match read_request(&mut stream) {
        Ok(Some(req)) => req,
        Ok(None) => {
            return Ok(Handled::Ignored(format!(
                "a connection from {peer} that does not speak this protocol"
            )))
        }
        Err(e) => {
            return Ok(Handled::Ignored(format!(
                "a connection from {peer} sent no complete request ({e})"
            )))
        }
    };
    let mine = me.run.map(|r| r.as_str());
    let mut refuse = |reason: String| {
        // The refused rank reports it; a failure to tell it is not rank 0's problem.
        let _ = stream.write_all(&encode_refusal(&reason));
        reason
    };
    if req.run.as_deref() != mine {
        let why = refuse(format!(
            "rank 0 serves another run (its run id is {}; this rank's run id is {}): a rank left \
             from an earlier launch, or the ranks were given different DSV3_RUN_ID",
            show(mine),
            show(req.run.as_deref())
        ));
        return Ok(Handled::Ignored(format!(
            "refused rank {} from {peer}: {why}",
            req.rank
        )));
    }
    if req.world_size != me.world_size as u64 {
        let why = refuse(format!(
            "WORLD_SIZE={} but rank 0 started a world of {}",
            req.world_size, me.world_size
        ));
        if mine.is_some() {
            // Same run, different sizes: the world can never form; say so now.
            return Err(Error::invalid(
                OP,
                format!(
                    "{}: rank {} (connecting from {peer}) has WORLD_SIZE={}, this world is {}; \
                     the ranks disagree on WORLD_SIZE",
                    me.who(),
                    req.rank,
                    req.world_size,
                    me.world_size
                ),
            ));
        }
        // Without run ids it may be a rank of another run: noted, and rank 0 goes on waiting.
        return Ok(Handled::Ignored(format!(
            "refused rank {} from {peer}: {why}",
            req.rank
        )));
    }
    let r = match usize::try_from(req.rank) {
        Ok(r) if r > 0 && r < me.world_size => r,
        _ => {
            let why = refuse(format!(
                "rank 0 of a world of {} serves ranks 1..{}, not rank {}",
                me.world_size,
                me.world_size - 1,
                req.rank
            ));
            return Ok(Handled::Ignored(format!(
                "refused a client from {peer}: {why}"
            )));
        }
    };
    match stream.write_all(record) {
        Ok(()) => Ok(Handled::Served(r)),
        // It will retry (its own deadline allows) or time out saying so.
        Err(e) => Ok(Handled::Ignored(format!(
            "could not send the id to rank {r} at {peer}: {e}"
        ))),
    }
}

/// Ranks > 0: fetches the id from rank 0 at `addr`, retrying until rank 0 answers or the
/// timeout passes.
pub(super) fn fetch(addr: &str, me: &Member<'_>, via: TcpVia) -> Result<IdBytes> {
    let deadline = Instant::now() + me.timeout;
    let request = encode_request(me.rank, me.world_size, me.run.map(|r| r.as_str()));
    let from = || format!("rank 0 at {addr} ({})", via.vars());
    let mut last_err = String::from("no attempt finished");
    loop {
        match addr.to_socket_addrs() {
            // Retried: a cluster's DNS may lag behind the job's start.
            Err(e) => last_err = format!("cannot resolve {addr}: {e}"),
            Ok(addrs) => {
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let bytes = match attempt(&a, &request, left) {
                        Ok(b) => b,
                        Err(e) => {
                            last_err = format!("{a}: {e}");
                            continue;
                        }
                    };
                    match decode_reply(&bytes) {
                        Decoded::Ok(Reply::Id(rec)) => match judge(&rec, me) {
                            Verdict::Use(id) => return Ok(id),
                            Verdict::WrongWorld(why) => {
                                return Err(Error::invalid(
                                    OP,
                                    format!(
                                        "rank {}: {why} (the NCCL id from {}, run id {})",
                                        me.rank,
                                        from(),
                                        show(me.run.map(|r| r.as_str()))
                                    ),
                                ))
                            }
                            // Never used; the right rank 0 may still come.
                            Verdict::Stale(what) => {
                                last_err = format!("{a} answered with a stale id {what}")
                            }
                        },
                        Decoded::Ok(Reply::Refused(why)) => {
                            return Err(Error::invalid(
                                OP,
                                format!("rank {}: {why} (refused by {})", me.rank, from()),
                            ))
                        }
                        Decoded::Incomplete => {
                            last_err = format!("{a} sent a short answer ({} bytes)", bytes.len())
                        }
                        Decoded::Foreign(why) => {
                            return Err(Error::invalid(
                                OP,
                                format!(
                                    "{}: the answer from {addr} ({a}) {why}; is another program \
                                     listening on {}?",
                                    me.who(),
                                    via.vars()
                                ),
                            ))
                        }
                    }
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{}: waited {:?} for the NCCL id from {} (last error: {last_err}). Is rank 0 \
                     running{}?",
                    me.who(),
                    me.timeout,
                    from(),
                    me.run_hint()
                ),
            ));
        }
        std::thread::sleep(RETRY.min(left));
    }
}

/// One request to rank 0, every step bounded by `left`.
fn attempt(a: &SocketAddr, request: &[u8], left: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let left = left.max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(a, left.min(Duration::from_secs(1)))?;
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(left))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf)
}
