//! The bytes of the exchange, and the one rule for accepting an id ([`judge`]).
//!
//! Integers are little-endian; a run id is a one-byte length and that many ASCII bytes (length
//! 0: no run id).
//!
//! | message | layout |
//! |---|---|
//! | id record: the id file, and rank 0's answer over TCP | `DSV3NCI2`, world size `u64`, run id, the 128 id bytes |
//! | request, rank k to rank 0 over TCP | `DSV3NCRQ`, rank `u64`, world size `u64`, run id |
//! | refusal, rank 0 to rank k over TCP | `DSV3NCNO`, length `u16`, UTF-8 reason |
//! | acknowledgement, rank k to rank 0 through the file `<id file>.ack-<k>` | `DSV3NCAK`, rank `u64`, run id |
//!
//! The first format (`DSV3NCID`: world size and id, no run id) is not accepted: a file in it was
//! left by an older build, hence by another run, and is waited over like any stale file.

use std::io::Read;

use super::run::show;
use super::{IdBytes, Member, NCCL_ID_BYTES};

const RECORD: &[u8; 8] = b"DSV3NCI2";
const REQUEST: &[u8; 8] = b"DSV3NCRQ";
const REFUSAL: &[u8; 8] = b"DSV3NCNO";
const ACK: &[u8; 8] = b"DSV3NCAK";

/// A published id and whom it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub world_size: u64,
    pub run: Option<String>,
    pub id: IdBytes,
}

/// A rank's request for the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Request {
    pub rank: u64,
    pub world_size: u64,
    pub run: Option<String>,
}

/// What rank 0 answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Id(Record),
    Refused(String),
}

/// The outcome of decoding bytes that may still be growing (a file being written, a short read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Decoded<T> {
    /// A prefix of a valid message: wait for more.
    Incomplete,
    /// Not a message of this format; the reason, for the error text.
    Foreign(&'static str),
    Ok(T),
}

fn put_run(v: &mut Vec<u8>, run: Option<&str>) {
    let run = run.unwrap_or("");
    // RunId guarantees <= MAX_RUN_ID_LEN (128) bytes; clamp anyway rather than wrap.
    let n = run.len().min(u8::MAX as usize);
    v.push(n as u8);
    v.extend_from_slice(&run.as_bytes()[..n]);
}

pub(super) fn encode_record(id: &IdBytes, world_size: usize, run: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 8 + 1 + 128 + NCCL_ID_BYTES);
    v.extend_from_slice(RECORD);
    v.extend_from_slice(&(world_size as u64).to_le_bytes());
    put_run(&mut v, run);
    v.extend_from_slice(id);
    v
}

pub(super) fn encode_request(rank: usize, world_size: usize, run: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 8 + 8 + 1 + 128);
    v.extend_from_slice(REQUEST);
    v.extend_from_slice(&(rank as u64).to_le_bytes());
    v.extend_from_slice(&(world_size as u64).to_le_bytes());
    put_run(&mut v, run);
    v
}

pub(super) fn encode_refusal(reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(u16::MAX as usize);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut v = Vec::with_capacity(8 + 2 + cut);
    v.extend_from_slice(REFUSAL);
    v.extend_from_slice(&(cut as u16).to_le_bytes());
    v.extend_from_slice(&reason.as_bytes()[..cut]);
    v
}

pub(super) fn encode_ack(rank: usize, run: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 8 + 1 + 128);
    v.extend_from_slice(ACK);
    v.extend_from_slice(&(rank as u64).to_le_bytes());
    put_run(&mut v, run);
    v
}

/// An acknowledgement: which rank, of which run.
pub(super) fn decode_ack(bytes: &[u8]) -> Decoded<(u64, Option<String>)> {
    if let Some(d) = check_magic(bytes, ACK) {
        return d;
    }
    let mut c = Cursor(&bytes[8..]);
    let Some(rank) = c.u64() else {
        return Decoded::Incomplete;
    };
    match c.run() {
        None => Decoded::Incomplete,
        Some(Err(())) => Decoded::Foreign("holds a run id that is not printable ASCII"),
        Some(Ok(_)) if !c.0.is_empty() => Decoded::Foreign("is longer than an acknowledgement"),
        Some(Ok(run)) => Decoded::Ok((rank, run)),
    }
}

/// A cursor over bytes that reports running out (`None`) rather than panicking.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    /// `Some(Err(()))`: the run id is there but not printable ASCII.
    fn run(&mut self) -> Option<std::result::Result<Option<String>, ()>> {
        let n = self.take(1)?[0] as usize;
        let b = self.take(n)?;
        if n == 0 {
            return Some(Ok(None));
        }
        if !b.iter().all(u8::is_ascii_graphic) {
            return Some(Err(()));
        }
        Some(Ok(Some(String::from_utf8_lossy(b).into_owned())))
    }
}

/// Checks the magic: `Some(Incomplete / Foreign)` to return, `None` to go on decoding.
fn check_magic<T>(bytes: &[u8], magic: &[u8; 8]) -> Option<Decoded<T>> {
    let n = bytes.len().min(8);
    if bytes[..n] != magic[..n] {
        return Some(Decoded::Foreign(
            "does not hold an NCCL id in this program's format",
        ));
    }
    (n < 8).then_some(Decoded::Incomplete)
}

/// An id record (the id file's contents).
pub(super) fn decode_record(bytes: &[u8]) -> Decoded<Record> {
    if let Some(d) = check_magic(bytes, RECORD) {
        return d;
    }
    let mut c = Cursor(&bytes[8..]);
    let Some(world_size) = c.u64() else {
        return Decoded::Incomplete;
    };
    let run = match c.run() {
        None => return Decoded::Incomplete,
        Some(Err(())) => return Decoded::Foreign("holds a run id that is not printable ASCII"),
        Some(Ok(r)) => r,
    };
    let Some(id) = c.take(NCCL_ID_BYTES) else {
        return Decoded::Incomplete;
    };
    if !c.0.is_empty() {
        return Decoded::Foreign("is longer than an NCCL id record");
    }
    let mut out = [0u8; NCCL_ID_BYTES];
    out.copy_from_slice(id);
    Decoded::Ok(Record {
        world_size,
        run,
        id: out,
    })
}

/// Rank 0's answer (all the bytes up to the end of the connection).
pub(super) fn decode_reply(bytes: &[u8]) -> Decoded<Reply> {
    if bytes.len() >= 8 && bytes[..8] == REFUSAL[..] {
        let mut c = Cursor(&bytes[8..]);
        let Some(n) = c.u16() else {
            return Decoded::Incomplete;
        };
        let Some(text) = c.take(n as usize) else {
            return Decoded::Incomplete;
        };
        return Decoded::Ok(Reply::Refused(String::from_utf8_lossy(text).into_owned()));
    }
    match decode_record(bytes) {
        Decoded::Ok(r) => Decoded::Ok(Reply::Id(r)),
        Decoded::Incomplete => Decoded::Incomplete,
        Decoded::Foreign(why) => Decoded::Foreign(why),
    }
}

/// Reads one request from a connection. `Ok(None)`: the peer does not speak this protocol (a
/// port scanner, a health check, another program on the port).
pub(super) fn read_request(r: &mut impl Read) -> std::io::Result<Option<Request>> {
    let mut head = [0u8; 8 + 8 + 8 + 1];
    r.read_exact(&mut head)?;
    if head[..8] != REQUEST[..] {
        return Ok(None);
    }
    let mut run = vec![0u8; head[24] as usize];
    r.read_exact(&mut run)?;
    let mut all = head.to_vec();
    all.extend_from_slice(&run);
    let mut c = Cursor(&all[8..]);
    let (Some(rank), Some(world_size), Some(Ok(run))) = (c.u64(), c.u64(), c.run()) else {
        return Ok(None);
    };
    Ok(Some(Request {
        rank,
        world_size,
        run,
    }))
}

/// Whether a rank may use a published id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Published for this run and this world: use it.
    Use(IdBytes),
    /// Published by another run: never use it, wait for the right one. The text says what was
    /// seen, for the timeout error ("from another run (run id ...)"; it follows "a stale id").
    Stale(String),
    /// Published for this run but a world of another size: the ranks disagree on `WORLD_SIZE`,
    /// which no amount of waiting fixes. The text is the error's cause.
    WrongWorld(String),
}

/// The rule, the same for the file and for TCP: the run ids must be equal (both absent counts as
/// equal), and then the world sizes. Without run ids a world-size difference may as well be a
/// stale record, so it is waited over like one.
pub(super) fn judge(rec: &Record, me: &Member<'_>) -> Verdict {
    let mine = me.run.map(|r| r.as_str());
    if rec.run.as_deref() != mine {
        return Verdict::Stale(format!(
            "from another run (run id {}; this rank's run id is {})",
            show(rec.run.as_deref()),
            show(mine)
        ));
    }
    if rec.world_size != me.world_size as u64 {
        if mine.is_some() {
            return Verdict::WrongWorld(format!(
                "WORLD_SIZE={} but rank 0 started a world of {}",
                me.world_size, rec.world_size
            ));
        }
        return Verdict::Stale(format!(
            "for a world of {} while this rank has WORLD_SIZE={} (left by another run, or the \
             ranks disagree on WORLD_SIZE)",
            rec.world_size, me.world_size
        ));
    }
    Verdict::Use(rec.id)
}
