//! The collective operations expert parallelism needs, behind one trait, and the in-process
//! implementation (N ranks as N threads) the CPU tests run on.
//!
//! EP dispatch and combine ([`super::ep_dispatch`], [`super::ep_combine`]) use exactly two
//! collectives, both all-to-all:
//!
//! 1. [`Transport::all_to_all_counts`]: one `u64` per peer (how many token rows this rank sends to
//!    each peer), so every receiver can size its buffers;
//! 2. [`Transport::all_to_all_bytes`]: one byte buffer per peer, whose sizes the receiver already
//!    knows from step 1 (NCCL's point-to-point receives need the size up front).
//!
//! Every rank must call the same sequence of collectives (the usual MPI/NCCL contract). A rank
//! that leaves (drops its transport, e.g. after an error) makes the in-process peers' pending
//! collectives fail with an error naming it instead of hanging.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use kernels::error::{Error, Result};

/// A rank's handle on a communicator of `world_size` ranks.
///
/// Both methods are collective: every rank calls them in the same order, each with one entry per
/// peer (`send[p]` goes to rank `p`, the rank itself included).
pub trait Transport: Send {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// All-to-all of one `u64` per peer: returns `recv` with `recv[p]` = the `send[rank]` that
    /// rank `p` passed.
    fn all_to_all_counts(&mut self, send: &[u64]) -> Result<Vec<u64>>;

    /// Variable-size all-to-all of bytes: `send[p]` goes to rank `p`; returns `recv` with
    /// `recv[p]` = the `send[rank]` of rank `p`. `recv_len[p]` must equal the length rank `p`
    /// sends to this rank (callers learn it from [`Transport::all_to_all_counts`]); a transport
    /// that can check it reports a mismatch as an error (the in-process one does; NCCL cannot).
    fn all_to_all_bytes(&mut self, send: &[Vec<u8>], recv_len: &[usize]) -> Result<Vec<Vec<u8>>>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn all_to_all_counts(&mut self, send: &[u64]) -> Result<Vec<u64>> {
        (**self).all_to_all_counts(send)
    }
    fn all_to_all_bytes(&mut self, send: &[Vec<u8>], recv_len: &[usize]) -> Result<Vec<Vec<u8>>> {
        (**self).all_to_all_bytes(send, recv_len)
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn all_to_all_counts(&mut self, send: &[u64]) -> Result<Vec<u64>> {
        (**self).all_to_all_counts(send)
    }
    fn all_to_all_bytes(&mut self, send: &[Vec<u8>], recv_len: &[usize]) -> Result<Vec<Vec<u8>>> {
        (**self).all_to_all_bytes(send, recv_len)
    }
}

/// Checks that a collective got one entry per rank.
pub(crate) fn check_peers(op: &'static str, what: &str, len: usize, world: usize) -> Result<()> {
    if len != world {
        return Err(Error::shape(
            op,
            format!("{what} has {len} entries, expected one per rank ({world})"),
        ));
    }
    Ok(())
}

/// What travels between two in-process ranks: the collective's sequence number and kind (so a
/// rank calling a different collective than its peers is an error, not silent garbage) and the
/// payload.
#[derive(Debug)]
struct Message {
    seq: u64,
    payload: Payload,
}

#[derive(Debug)]
enum Payload {
    Count(u64),
    Bytes(Vec<u8>),
}

impl Payload {
    fn kind(&self) -> &'static str {
        match self {
            Payload::Count(_) => "all_to_all_counts",
            Payload::Bytes(_) => "all_to_all_bytes",
        }
    }
}

/// One rank of an in-process world: ranks are threads exchanging owned buffers over channels, one
/// channel per ordered pair of ranks (FIFO, unbounded: a collective sends to every peer first and
/// then receives from every peer, so it cannot deadlock).
///
/// Create the world with [`InProcess::world`] and move one handle into each thread.
#[derive(Debug)]
pub struct InProcess {
    rank: usize,
    world_size: usize,
    /// `to[p]`: the channel from this rank to rank `p`.
    to: Vec<Sender<Message>>,
    /// `from[p]`: the channel from rank `p` to this rank.
    from: Vec<Receiver<Message>>,
    seq: u64,
    timeout: Duration,
}

impl InProcess {
    /// How long a rank waits for a peer's part of a collective before failing.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// `n` connected ranks, `result[r].rank() == r`. Errors when `n` is 0.
    pub fn world(n: usize) -> Result<Vec<InProcess>> {
        Self::world_with_timeout(n, Self::DEFAULT_TIMEOUT)
    }

    /// [`InProcess::world`] with a custom wait limit per receive.
    pub fn world_with_timeout(n: usize, timeout: Duration) -> Result<Vec<InProcess>> {
        if n == 0 {
            return Err(Error::invalid("InProcess::world", "world size is 0"));
        }
        // senders[s][d] / receivers[d][s]: the channel s -> d.
        let mut senders: Vec<Vec<Sender<Message>>> = (0..n).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<Option<Receiver<Message>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for (s, to) in senders.iter_mut().enumerate() {
            for from in receivers.iter_mut() {
                let (tx, rx) = channel();
                to.push(tx);
                from[s] = Some(rx);
            }
        }
        Ok(senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (to, from))| InProcess {
                rank,
                world_size: n,
                to,
                from: from.into_iter().map(|r| r.expect("filled above")).collect(),
                seq: 0,
                timeout,
            })
            .collect())
    }

    /// Sends `payloads[p]` to every rank `p`, then receives one message from every rank.
    fn exchange(&mut self, op: &'static str, payloads: Vec<Payload>) -> Result<Vec<Payload>> {
        let seq = self.seq;
        self.seq += 1;
        for (p, payload) in payloads.into_iter().enumerate() {
            self.to[p].send(Message { seq, payload }).map_err(|_| {
                Error::invalid(
                    op,
                    format!(
                        "rank {}: rank {p} has left the world (its transport was dropped, \
                             probably after an error on that rank)",
                        self.rank
                    ),
                )
            })?;
        }
        let mut out = Vec::with_capacity(self.world_size);
        for p in 0..self.world_size {
            let msg = self.from[p].recv_timeout(self.timeout).map_err(|e| {
                let why = match e {
                    RecvTimeoutError::Timeout => format!(
                        "waited {:?} for rank {p} (is it calling the same collective?)",
                        self.timeout
                    ),
                    RecvTimeoutError::Disconnected => format!(
                        "rank {p} has left the world (its transport was dropped, probably after \
                         an error on that rank)"
                    ),
                };
                Error::invalid(op, format!("rank {}: {why}", self.rank))
            })?;
            if msg.seq != seq || msg.payload.kind() != op {
                return Err(Error::invalid(
                    op,
                    format!(
                        "rank {}: collective mismatch: this rank is in call #{seq} ({op}), rank \
                         {p} sent call #{} ({})",
                        self.rank,
                        msg.seq,
                        msg.payload.kind()
                    ),
                ));
            }
            out.push(msg.payload);
        }
        Ok(out)
    }
}

impl Transport for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_to_all_counts(&mut self, send: &[u64]) -> Result<Vec<u64>> {
        const OP: &str = "all_to_all_counts";
        check_peers(OP, "send", send.len(), self.world_size)?;
        let got = self.exchange(OP, send.iter().map(|&c| Payload::Count(c)).collect())?;
        Ok(got
            .into_iter()
            .map(|p| match p {
                Payload::Count(c) => c,
                Payload::Bytes(_) => unreachable!("kind checked in exchange"),
            })
            .collect())
    }

    fn all_to_all_bytes(&mut self, send: &[Vec<u8>], recv_len: &[usize]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "all_to_all_bytes";
        check_peers(OP, "send", send.len(), self.world_size)?;
        check_peers(OP, "recv_len", recv_len.len(), self.world_size)?;
        let got = self.exchange(OP, send.iter().cloned().map(Payload::Bytes).collect())?;
        got.into_iter()
            .zip(recv_len)
            .enumerate()
            .map(|(p, (payload, &want))| match payload {
                Payload::Bytes(b) if b.len() == want => Ok(b),
                Payload::Bytes(b) => Err(Error::shape(
                    OP,
                    format!(
                        "rank {}: rank {p} sent {} bytes, this rank expected {want}",
                        self.rank,
                        b.len()
                    ),
                )),
                Payload::Count(_) => unreachable!("kind checked in exchange"),
            })
            .collect()
    }
}
