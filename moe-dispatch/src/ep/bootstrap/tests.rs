//! The bootstrap without a GPU: environments as maps, ranks as threads, files in the temp
//! directory and TCP on loopback. Timeouts are fractions of a second so the failure cases stay
//! fast; the success cases use a generous one (they never wait it out).

use std::collections::HashMap;
use std::time::Duration;

use kernels::error::Error;

use super::*;

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[track_caller]
fn assert_err_contains(e: &Error, parts: &[&str]) {
    assert!(
        matches!(e, Error::InvalidArgument { .. }),
        "not InvalidArgument: {e}"
    );
    let s = e.to_string();
    for p in parts {
        assert!(s.contains(p), "{p:?} not in: {s}");
    }
}

#[test]
fn world_env() {
    let w = WorldEnv::from_lookup(lookup(&[])).unwrap();
    assert_eq!((w.rank, w.world_size, w.local_rank), (0, 1, 0));
    let w = WorldEnv::from_lookup(lookup(&[
        ("RANK", "5"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
    ]))
    .unwrap();
    assert_eq!((w.rank, w.world_size, w.local_rank), (5, 8, 1));
    let w = WorldEnv::from_lookup(lookup(&[("RANK", "3"), ("WORLD_SIZE", "4")])).unwrap();
    assert_eq!(w.local_rank, 3);
    // torchrun's full set, two nodes of four.
    let w = WorldEnv::from_lookup(lookup(&[
        ("RANK", "6"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "2"),
        ("LOCAL_WORLD_SIZE", "4"),
    ]))
    .unwrap();
    assert_eq!((w.rank, w.world_size, w.local_rank), (6, 8, 2));
    // LOCAL_RANK is a GPU ordinal, not bounded by WORLD_SIZE.
    let w = WorldEnv::from_lookup(lookup(&[
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "3"),
    ]))
    .unwrap();
    assert_eq!(w.local_rank, 3);
}

#[test]
fn world_env_errors() {
    for (bad, parts) in [
        (
            vec![("RANK", "4"), ("WORLD_SIZE", "4")],
            vec!["RANK=4 is not below WORLD_SIZE=4", "0..3"],
        ),
        (
            vec![("RANK", "9"), ("WORLD_SIZE", "4")],
            vec!["RANK=9 is not below WORLD_SIZE=4"],
        ),
        (vec![("WORLD_SIZE", "2")], vec!["RANK is not set"]),
        (vec![("RANK", "1")], vec!["WORLD_SIZE is not set"]),
        (
            vec![("RANK", "x"), ("WORLD_SIZE", "2")],
            vec!["RANK=\"x\" is not a non-negative integer"],
        ),
        (
            vec![("RANK", "-1"), ("WORLD_SIZE", "2")],
            vec!["RANK=\"-1\""],
        ),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "0")],
            vec!["WORLD_SIZE=0 is not in 1..=65536"],
        ),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "1000000000000")],
            vec!["WORLD_SIZE=1000000000000 is not in 1..=65536"],
        ),
        (
            vec![("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "-1")],
            vec![
                "rank 2 of 4",
                "LOCAL_RANK=\"-1\" is not a non-negative integer",
            ],
        ),
        (
            vec![("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "")],
            vec!["rank 2 of 4", "LOCAL_RANK=\"\""],
        ),
        (
            vec![
                ("RANK", "6"),
                ("WORLD_SIZE", "8"),
                ("LOCAL_RANK", "4"),
                ("LOCAL_WORLD_SIZE", "4"),
            ],
            vec![
                "rank 6 of 8",
                "LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4",
            ],
        ),
        (
            vec![
                ("RANK", "6"),
                ("WORLD_SIZE", "8"),
                ("LOCAL_WORLD_SIZE", "4"),
            ],
            vec!["LOCAL_RANK=6 (from RANK; LOCAL_RANK is not set)"],
        ),
        (
            vec![
                ("RANK", "1"),
                ("WORLD_SIZE", "2"),
                ("LOCAL_RANK", "1"),
                ("LOCAL_WORLD_SIZE", "3"),
            ],
            vec![
                "rank 1 of 2",
                "LOCAL_WORLD_SIZE=3 is not in 1..=WORLD_SIZE=2",
            ],
        ),
        (
            vec![
                ("RANK", "1"),
                ("WORLD_SIZE", "2"),
                ("LOCAL_RANK", "1"),
                ("LOCAL_WORLD_SIZE", "zero"),
            ],
            vec!["rank 1 of 2", "LOCAL_WORLD_SIZE=\"zero\""],
        ),
    ] {
        let e = WorldEnv::from_lookup(lookup(&bad)).unwrap_err();
        assert_err_contains(&e, &parts);
    }
}

#[test]
fn id_timeout_values() {
    let t = |v: &str| env::parse_timeout(&lookup(&[("DSV3_NCCL_ID_TIMEOUT_S", v)]));
    assert_eq!(
        env::parse_timeout(&lookup(&[])).unwrap(),
        DEFAULT_ID_TIMEOUT
    );
    assert_eq!(t("5").unwrap(), Duration::from_secs(5));
    assert_eq!(t(" 0.25 ").unwrap(), Duration::from_millis(250));
    // Out of Duration's range: an error, not a panic.
    for bad in ["-1", "0", "nan", "inf", "1e300", "x", ""] {
        let e = t(bad).unwrap_err();
        assert_err_contains(
            &e,
            &["DSV3_NCCL_ID_TIMEOUT_S", "positive number of seconds"],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing the exchange.

fn world(rank: usize, world_size: usize) -> WorldEnv {
    WorldEnv {
        rank,
        world_size,
        local_rank: rank,
    }
}

fn rid(s: &str) -> Option<RunId> {
    Some(RunId::new(s).unwrap())
}

#[test]
fn id_exchange_from_env() {
    let w2 = world(1, 2);
    // A world of one shares nothing, whatever is set.
    for vars in [
        vec![],
        vec![("DSV3_NCCL_ID_FILE", "/tmp/x")],
        vec![("MASTER_ADDR", "h"), ("MASTER_PORT", "1")],
    ] {
        assert_eq!(
            IdExchange::from_lookup(&world(0, 1), lookup(&vars)).unwrap(),
            IdExchange::Local
        );
    }
    // The file: its run id is derived from the parent process unless DSV3_RUN_ID is set.
    let ex = IdExchange::from_lookup(
        &w2,
        lookup(&[
            ("DSV3_NCCL_ID_FILE", "/tmp/x"),
            ("DSV3_NCCL_ID_TIMEOUT_S", "0.25"),
        ]),
    )
    .unwrap();
    let IdExchange::File { path, run, timeout } = ex else {
        panic!("{ex:?}")
    };
    assert_eq!(path, std::path::PathBuf::from("/tmp/x"));
    assert_eq!(timeout, Duration::from_millis(250));
    let run = run.expect("derived run id");
    assert!(run.is_derived());
    assert!(run.as_str().starts_with("ppid-"), "{run}");
    // torchrun restarting its workers (same parent) gives another run id.
    let ex = IdExchange::from_lookup(
        &w2,
        lookup(&[
            ("DSV3_NCCL_ID_FILE", "/tmp/x"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]),
    )
    .unwrap();
    assert!(
        matches!(&ex, IdExchange::File { run: Some(r), .. } if r.as_str().ends_with("-restart-2")),
        "{ex:?}"
    );
    // Precedence: the file, then DSV3_NCCL_ID_ADDR, then MASTER_ADDR / MASTER_PORT.
    let all = [
        ("DSV3_NCCL_ID_FILE", "/tmp/x"),
        ("DSV3_NCCL_ID_ADDR", "127.0.0.1:29511"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("DSV3_RUN_ID", "job-7"),
    ];
    assert_eq!(
        IdExchange::from_lookup(&w2, lookup(&all)).unwrap(),
        IdExchange::File {
            path: "/tmp/x".into(),
            run: rid("job-7"),
            timeout: DEFAULT_ID_TIMEOUT
        }
    );
    assert_eq!(
        IdExchange::from_lookup(&w2, lookup(&all[1..])).unwrap(),
        IdExchange::Tcp {
            addr: "127.0.0.1:29511".into(),
            via: TcpVia::IdAddr,
            run: rid("job-7"),
            timeout: DEFAULT_ID_TIMEOUT
        }
    );
    assert_eq!(
        IdExchange::from_lookup(&w2, lookup(&all[2..4])).unwrap(),
        IdExchange::Tcp {
            addr: "node0:29500".into(),
            via: TcpVia::Master,
            run: None,
            timeout: DEFAULT_ID_TIMEOUT
        }
    );
    // Empty counts as unset.
    let ex = IdExchange::from_lookup(
        &w2,
        lookup(&[
            ("DSV3_NCCL_ID_FILE", ""),
            ("DSV3_NCCL_ID_ADDR", " "),
            ("MASTER_ADDR", "::1"),
            ("MASTER_PORT", "29500"),
            ("DSV3_RUN_ID", ""),
        ]),
    )
    .unwrap();
    assert!(
        matches!(&ex, IdExchange::Tcp { addr, via: TcpVia::Master, run: None, .. } if addr == "[::1]:29500"),
        "{ex:?}"
    );
}

#[test]
fn id_exchange_from_env_errors() {
    let e = IdExchange::from_lookup(&world(2, 16), lookup(&[])).unwrap_err();
    assert_err_contains(
        &e,
        &[
            "rank 2 of 16: MASTER_ADDR is not set; multi-node worlds need MASTER_ADDR and \
             MASTER_PORT (torchrun-style",
            "DSV3_NCCL_ID_FILE",
            "DSV3_NCCL_ID_ADDR",
        ],
    );
    let e =
        IdExchange::from_lookup(&world(2, 16), lookup(&[("MASTER_PORT", "29500")])).unwrap_err();
    assert_err_contains(&e, &["rank 2 of 16: MASTER_ADDR is not set"]);
    let e = IdExchange::from_lookup(&world(3, 4), lookup(&[("MASTER_ADDR", "node0")])).unwrap_err();
    assert_err_contains(
        &e,
        &["rank 3 of 4: MASTER_ADDR=\"node0\" is set but MASTER_PORT is not"],
    );
    for port in ["x", "0", "70000", "-5"] {
        let e = IdExchange::from_lookup(
            &world(1, 4),
            lookup(&[("MASTER_ADDR", "node0"), ("MASTER_PORT", port)]),
        )
        .unwrap_err();
        assert_err_contains(&e, &["rank 1 of 4: MASTER_PORT=", "is not a port"]);
    }
    for addr in ["localhost", "localhost:", ":29500", "h:0", "h:x"] {
        let e = IdExchange::from_lookup(&world(1, 4), lookup(&[("DSV3_NCCL_ID_ADDR", addr)]))
            .unwrap_err();
        assert_err_contains(&e, &["rank 1 of 4: DSV3_NCCL_ID_ADDR=", "is not host:port"]);
    }
    for bad in ["has space", "tab\there", &"x".repeat(MAX_RUN_ID_LEN + 1)] {
        let e = IdExchange::from_lookup(
            &world(1, 4),
            lookup(&[("DSV3_NCCL_ID_FILE", "/tmp/x"), ("DSV3_RUN_ID", bad)]),
        )
        .unwrap_err();
        assert_err_contains(&e, &["DSV3_RUN_ID=", "printable ASCII"]);
    }
    let e = IdExchange::from_lookup(
        &world(1, 4),
        lookup(&[
            ("DSV3_NCCL_ID_FILE", "/tmp/x"),
            ("DSV3_NCCL_ID_TIMEOUT_S", "-1"),
        ]),
    )
    .unwrap_err();
    assert_err_contains(&e, &["DSV3_NCCL_ID_TIMEOUT_S"]);
}

#[test]
fn run_ids() {
    let a = RunId::fresh();
    let b = RunId::fresh();
    assert_ne!(a, b);
    for r in [&a, &b] {
        assert_eq!(r.as_str().len(), 32);
        assert!(r.as_str().bytes().all(|c| c.is_ascii_hexdigit()), "{r}");
        assert!(!r.is_derived());
    }
    assert_eq!(RunId::new("slurm-123.4").unwrap().as_str(), "slurm-123.4");
    assert!(RunId::new("").is_err());
    assert!(RunId::new("é").is_err());
    assert!(RunId::new("x".repeat(MAX_RUN_ID_LEN)).is_ok());
}

#[test]
fn tcp_addresses() {
    use super::tcp::{listen_addr, split_host_port};
    assert_eq!(split_host_port("node0:29500"), Some(("node0", 29500)));
    assert_eq!(split_host_port("[::1]:7"), Some(("::1", 7)));
    for bad in ["node0", "node0:", ":1", "h:0", "h:65536", "h:-1"] {
        assert_eq!(split_host_port(bad), None, "{bad}");
    }
    assert_eq!(listen_addr("node0:29500", TcpVia::Master), "0.0.0.0:29500");
    assert_eq!(
        listen_addr("10.0.0.1:29500", TcpVia::Master),
        "0.0.0.0:29500"
    );
    assert_eq!(listen_addr("[fe80::1]:29500", TcpVia::Master), "[::]:29500");
    assert_eq!(listen_addr("127.0.0.1:5", TcpVia::IdAddr), "127.0.0.1:5");
}

// ---------------------------------------------------------------------------------------------
// The wire format.

fn fake_id(seed: u8) -> IdBytes {
    std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
}

#[test]
fn wire_records() {
    use super::wire::*;
    let rec = encode_record(&fake_id(3), 8, Some("run-1"));
    let want = Record {
        world_size: 8,
        run: Some("run-1".into()),
        id: fake_id(3),
    };
    assert_eq!(decode_record(&rec), Decoded::Ok(want.clone()));
    // Every strict prefix is incomplete (a file being written, a short read), never a panic.
    for n in 0..rec.len() {
        assert_eq!(decode_record(&rec[..n]), Decoded::Incomplete, "prefix {n}");
    }
    let mut long = rec.clone();
    long.push(0);
    assert!(matches!(decode_record(&long), Decoded::Foreign(_)));
    // The first format (no run id) is foreign, hence stale.
    let mut old = b"DSV3NCID".to_vec();
    old.extend_from_slice(&8u64.to_le_bytes());
    old.extend_from_slice(&fake_id(3));
    assert!(matches!(decode_record(&old), Decoded::Foreign(_)));
    assert!(matches!(decode_record(b"x"), Decoded::Foreign(_)));
    // A run id that is not printable.
    let mut bad = rec.clone();
    bad[17] = b'\n';
    assert!(matches!(decode_record(&bad), Decoded::Foreign(_)));
    // No run id.
    let rec = encode_record(&fake_id(4), 2, None);
    assert!(matches!(
        decode_record(&rec),
        Decoded::Ok(Record { run: None, .. })
    ));
    // Replies and requests.
    assert_eq!(
        decode_reply(&encode_refusal("no")),
        Decoded::Ok(Reply::Refused("no".into()))
    );
    assert_eq!(
        decode_reply(&encode_record(&fake_id(3), 8, Some("run-1"))),
        Decoded::Ok(Reply::Id(want))
    );
    let req = encode_request(3, 8, Some("run-1"));
    assert_eq!(
        read_request(&mut &req[..]).unwrap(),
        Some(Request {
            rank: 3,
            world_size: 8,
            run: Some("run-1".into())
        })
    );
    assert!(read_request(&mut &req[..10]).is_err());
    assert_eq!(read_request(&mut &[b'G'; 64][..]).unwrap(), None);
}

#[test]
fn judging_records() {
    use super::wire::*;
    let r = rid("a");
    let me = Member::new(3, 4, &r, Duration::ZERO);
    let rec = |w: u64, run: Option<&str>| Record {
        world_size: w,
        run: run.map(String::from),
        id: fake_id(0),
    };
    assert_eq!(judge(&rec(4, Some("a")), &me), Verdict::Use(fake_id(0)));
    assert!(matches!(judge(&rec(4, Some("b")), &me), Verdict::Stale(s) if s.contains("\"b\"")));
    assert!(matches!(judge(&rec(4, None), &me), Verdict::Stale(_)));
    assert_eq!(
        judge(&rec(8, Some("a")), &me),
        Verdict::WrongWorld("WORLD_SIZE=4 but rank 0 started a world of 8".into())
    );
    // Without run ids another world size may be a stale record: waited over.
    let none = None;
    let me = Member::new(3, 4, &none, Duration::ZERO);
    assert!(matches!(judge(&rec(8, None), &me), Verdict::Stale(s) if s.contains("world of 8")));
    assert!(matches!(judge(&rec(4, Some("a")), &me), Verdict::Stale(_)));
}

// ---------------------------------------------------------------------------------------------
// Ranks as threads.

/// For the success paths: never waited out.
const LONG: Duration = Duration::from_secs(30);
/// For the failure paths.
const SHORT: Duration = Duration::from_millis(300);

fn temp_path(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("dsv3-boot-{name}-{}-{nanos}", std::process::id()))
}

/// Runs `f(rank)` on `n` threads; results in rank order.
fn ranks<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n).map(|r| s.spawn(move || f(r))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A port nobody listens on right now (bound to 0, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn file_ex(path: &std::path::Path, r: &str, timeout: Duration) -> IdExchange {
    IdExchange::File {
        path: path.to_path_buf(),
        run: rid(r),
        timeout,
    }
}

/// Rank 0's `make_id` in the tests: a late rank 0, so the others wait first.
fn late_id(seed: u8) -> impl FnOnce() -> kernels::error::Result<IdBytes> {
    move || {
        std::thread::sleep(Duration::from_millis(100));
        Ok(fake_id(seed))
    }
}

#[test]
fn file_exchange_shares_one_id() {
    let path = temp_path("file");
    let ex = file_ex(&path, "r1", LONG);
    let ids = ranks(4, |r| ex.share(r, 4, late_id(1)).unwrap());
    assert!(ids.iter().all(|id| *id == fake_id(1)));
    // Everyone confirmed: rank 0 removed the file and the acknowledgements.
    assert!(!path.exists());
    for r in 1..4 {
        assert!(!file::ack_path(&path, r).exists());
    }
}

#[test]
fn stale_file_from_another_run_is_ignored() {
    let path = temp_path("stale");
    // A crashed earlier run (same world size) left its id behind.
    let old = rid("old-run");
    file::publish(&path, &fake_id(9), &Member::new(0, 4, &old, LONG)).unwrap();
    // Alone, a rank of the new run waits it out and says what it saw, naming the file.
    let e = file_ex(&path, "new-run", SHORT)
        .share(2, 4, || unreachable!())
        .unwrap_err();
    assert_err_contains(
        &e,
        &[
            "rank 2 of 4: waited",
            &path.display().to_string(),
            "saw a stale file from another run (run id \"old-run\"; this rank's run id is \
             \"new-run\") and did not use it",
            "DSV3_RUN_ID=\"new-run\"",
        ],
    );
    // With the new rank 0 (late): everyone waits over the stale file and takes the new id.
    let ex = file_ex(&path, "new-run", LONG);
    let ids = ranks(4, |r| ex.share(r, 4, late_id(1)).unwrap());
    assert!(ids.iter().all(|id| *id == fake_id(1)), "an old id was used");
    assert!(!path.exists());
}

#[test]
fn foreign_and_old_format_files_are_waited_over() {
    let path = temp_path("foreign");
    let ex = file_ex(&path, "r", SHORT);
    let mut old = b"DSV3NCID".to_vec();
    old.extend_from_slice(&4u64.to_le_bytes());
    old.extend_from_slice(&fake_id(2));
    for (bytes, seen) in [
        (old, "does not hold an NCCL id in this program's format"),
        (
            vec![b'x'; 10],
            "does not hold an NCCL id in this program's format",
        ),
        (b"DSV3NCI2".to_vec(), "incomplete (8 bytes)"),
    ] {
        std::fs::write(&path, bytes).unwrap();
        let e = ex.share(1, 4, || unreachable!()).unwrap_err();
        assert_err_contains(&e, &["rank 1 of 4: waited", seen]);
    }
    std::fs::remove_file(&path).unwrap();
    let e = ex.share(3, 4, || unreachable!()).unwrap_err();
    assert_err_contains(
        &e,
        &["rank 3 of 4", "the file never appeared. Is rank 0 running"],
    );
}

#[test]
fn file_world_size_mismatch_is_an_error() {
    let path = temp_path("world");
    let r = rid("r");
    file::publish(&path, &fake_id(1), &Member::new(0, 8, &r, LONG)).unwrap();
    // Same run, other size: fails at once, not after the (long) timeout.
    let start = std::time::Instant::now();
    let e = file_ex(&path, "r", LONG)
        .share(3, 4, || unreachable!())
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_err_contains(
        &e,
        &[
            "rank 3: WORLD_SIZE=4 but rank 0 started a world of 8",
            &path.display().to_string(),
        ],
    );
    // Without run ids it might be stale: waited over, and the timeout says what was seen.
    let none = None;
    file::publish(&path, &fake_id(1), &Member::new(0, 8, &none, LONG)).unwrap();
    let ex = IdExchange::File {
        path: path.clone(),
        run: None,
        timeout: SHORT,
    };
    let e = ex.share(3, 4, || unreachable!()).unwrap_err();
    assert_err_contains(&e, &["rank 3 of 4: waited", "for a world of 8"]);
    std::fs::remove_file(&path).unwrap();
}

fn tcp_ex(addr: &str, via: TcpVia, r: Option<RunId>, timeout: Duration) -> IdExchange {
    IdExchange::Tcp {
        addr: addr.into(),
        via,
        run: r,
        timeout,
    }
}

#[test]
fn tcp_exchange_over_master_addr() {
    // torchrun-style: every rank reads the same variables, rank 0 serves on MASTER_PORT.
    let port = free_port().to_string();
    let ids = ranks(5, |r| {
        let (rank, ws) = (r.to_string(), "5".to_string());
        let vars = [
            ("RANK", rank.as_str()),
            ("WORLD_SIZE", ws.as_str()),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port.as_str()),
            ("DSV3_RUN_ID", "job-1"),
            ("DSV3_NCCL_ID_TIMEOUT_S", "30"),
        ];
        let w = WorldEnv::from_lookup(lookup(&vars)).unwrap();
        let ex = IdExchange::from_lookup(&w, lookup(&vars)).unwrap();
        assert!(matches!(
            ex,
            IdExchange::Tcp {
                via: TcpVia::Master,
                ..
            }
        ));
        ex.share(w.rank, w.world_size, late_id(7)).unwrap()
    });
    assert!(ids.iter().all(|id| *id == fake_id(7)));
}

#[test]
fn tcp_exchange_without_run_ids() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let none = None;
    let ids = ranks(4, |r| {
        let me = Member::new(r, 4, &none, LONG);
        if r == 0 {
            tcp::serve(&listener, &fake_id(5), &me, TcpVia::IdAddr).unwrap();
            fake_id(5)
        } else {
            tcp::fetch(&addr, &me, TcpVia::IdAddr).unwrap()
        }
    });
    assert!(ids.iter().all(|id| *id == fake_id(5)));
}

#[test]
fn tcp_run_mismatch_is_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (new, old) = (rid("new-run"), rid("old-run"));
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            tcp::serve(
                &listener,
                &fake_id(5),
                &Member::new(0, 2, &new, LONG),
                TcpVia::IdAddr,
            )
        });
        // A rank left from another run is refused, at once.
        let e = tcp::fetch(&addr, &Member::new(1, 2, &old, LONG), TcpVia::IdAddr).unwrap_err();
        assert_err_contains(
            &e,
            &[
                "rank 1: rank 0 serves another run (its run id is \"new-run\"; this rank's run id \
                 is \"old-run\")",
                "refused by rank 0 at",
            ],
        );
        // A rank without a run id does not match one with.
        let none = None;
        let e = tcp::fetch(&addr, &Member::new(1, 2, &none, LONG), TcpVia::IdAddr).unwrap_err();
        assert_err_contains(&e, &["none (DSV3_RUN_ID unset)"]);
        // The rank of this run still gets the id.
        let id = tcp::fetch(&addr, &Member::new(1, 2, &new, LONG), TcpVia::IdAddr).unwrap();
        assert_eq!(id, fake_id(5));
        server.join().unwrap().unwrap();
    });
    // The refusals appear in rank 0's timeout error when the right rank never comes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            tcp::serve(
                &listener,
                &fake_id(5),
                &Member::new(0, 2, &new, SHORT),
                TcpVia::IdAddr,
            )
        });
        assert!(tcp::fetch(&addr, &Member::new(1, 2, &old, LONG), TcpVia::IdAddr).is_err());
        let e = server.join().unwrap().unwrap_err();
        assert_err_contains(
            &e,
            &[
                "rank 0 of 2: waited",
                "for rank 1 to fetch the NCCL id",
                "Also seen: refused rank 1 from",
            ],
        );
    });
}

#[test]
fn tcp_world_size_mismatch_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let r = rid("r");
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            tcp::serve(
                &listener,
                &fake_id(5),
                &Member::new(0, 8, &r, LONG),
                TcpVia::IdAddr,
            )
        });
        let e = tcp::fetch(&addr, &Member::new(3, 4, &r, LONG), TcpVia::IdAddr).unwrap_err();
        assert_err_contains(
            &e,
            &["rank 3: WORLD_SIZE=4 but rank 0 started a world of 8"],
        );
        let e = server.join().unwrap().unwrap_err();
        assert_err_contains(
            &e,
            &[
                "rank 0 of 8: rank 3 (connecting from",
                "has WORLD_SIZE=4, this world is 8",
            ],
        );
    });
}

#[test]
fn tcp_timeout_names_the_missing_rank() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let r = rid("r");
    let results = ranks(4, |rank| {
        let me = Member::new(rank, 4, &r, if rank == 0 { SHORT } else { LONG });
        match rank {
            0 => tcp::serve(&listener, &fake_id(5), &me, TcpVia::IdAddr).map(|()| fake_id(5)),
            2 => Ok(fake_id(0)), // never comes
            _ => tcp::fetch(&addr, &me, TcpVia::IdAddr),
        }
    });
    assert_eq!(results[1].as_ref().unwrap(), &fake_id(5));
    assert_eq!(results[3].as_ref().unwrap(), &fake_id(5));
    let e = results[0].as_ref().unwrap_err();
    assert_err_contains(
        e,
        &[
            "rank 0 of 4: waited",
            "(DSV3_NCCL_ID_ADDR) for rank 2 to fetch the NCCL id, which never came (ranks 1, 3 \
             did)",
        ],
    );
}

#[test]
fn tcp_timeout_when_rank0_never_comes() {
    let addr = format!("127.0.0.1:{}", free_port());
    let start = std::time::Instant::now();
    let e = tcp_ex(&addr, TcpVia::Master, rid("r"), SHORT)
        .share(1, 2, || unreachable!())
        .unwrap_err();
    assert!(start.elapsed() < SHORT + Duration::from_secs(2));
    assert_err_contains(
        &e,
        &[
            "rank 1 of 2: waited",
            "for the NCCL id from rank 0 at",
            "(MASTER_ADDR/MASTER_PORT)",
            "last error",
            "Is rank 0 running",
        ],
    );
}

#[test]
fn tcp_port_in_use_and_foreign_servers() {
    // Rank 0 cannot listen: an error at once, before the id is made.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let e = tcp_ex(&addr, TcpVia::IdAddr, None, LONG)
        .share(0, 2, || unreachable!())
        .unwrap_err();
    assert_err_contains(
        &e,
        &[
            "rank 0 of 2: cannot serve the NCCL id on",
            "another process",
        ],
    );
    // Something else answers on the port: the others say so instead of using its bytes.
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = busy.accept().unwrap();
            // The whole request (no run id: 25 bytes), so closing does not reset the connection.
            let mut buf = [0u8; 25];
            c.read_exact(&mut buf).unwrap();
            c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let e = tcp_ex(&addr, TcpVia::IdAddr, None, Duration::from_secs(5))
            .share(1, 2, || unreachable!())
            .unwrap_err();
        assert_err_contains(
            &e,
            &[
                "rank 1 of 2: the answer from",
                "is another program listening",
            ],
        );
    });
    // A client that does not speak the protocol is ignored by rank 0, noted on timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            tcp::serve(
                &listener,
                &fake_id(5),
                &Member::new(0, 2, &None, SHORT),
                TcpVia::IdAddr,
            )
        });
        {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(&[b'G'; 40]).unwrap();
        }
        let e = server.join().unwrap().unwrap_err();
        assert_err_contains(&e, &["does not speak this protocol"]);
    });
}

#[test]
fn share_rejects_bad_ranks() {
    let e = IdExchange::Local
        .share(0, 2, || unreachable!())
        .unwrap_err();
    assert_err_contains(&e, &["rank 0 of 2: no id exchange configured"]);
    let e = file_ex(&temp_path("x"), "r", SHORT)
        .share(4, 4, || unreachable!())
        .unwrap_err();
    assert_err_contains(&e, &["rank 4 is not below the world size 4"]);
    // A mistyped world size is refused before anything is allocated for it.
    let e = tcp_ex("127.0.0.1:1", TcpVia::IdAddr, None, SHORT)
        .share(0, usize::MAX, || unreachable!())
        .unwrap_err();
    assert_err_contains(&e, &["over 65536 ranks"]);
    assert_eq!(
        IdExchange::Local.share(0, 1, || Ok(fake_id(2))).unwrap(),
        fake_id(2)
    );
}

#[test]
fn file_timeout_names_the_missing_rank() {
    let path = temp_path("missing");
    let r = rid("r");
    // A stale acknowledgement of rank 2 from another run must not count.
    let stale = super::wire::encode_ack(2, Some("old-run"));
    let results = ranks(4, |rank| {
        let me = Member::new(rank, 4, &r, if rank == 0 { SHORT } else { LONG });
        match rank {
            0 => {
                file::publish(&path, &fake_id(6), &me).unwrap();
                std::fs::write(file::ack_path(&path, 2), &stale).unwrap();
                file::await_acks(&path, &me).map(|()| fake_id(6))
            }
            2 => Ok(fake_id(0)), // never comes
            _ => file::wait(&path, &me),
        }
    });
    assert_eq!(results[1].as_ref().unwrap(), &fake_id(6));
    assert_eq!(results[3].as_ref().unwrap(), &fake_id(6));
    let e = results[0].as_ref().unwrap_err();
    assert_err_contains(
        e,
        &[
            "rank 0 of 4: waited",
            &format!("for rank 2 to read the NCCL id file {}", path.display()),
            "which never happened (ranks 1, 3 did)",
            "is from another run (run id \"old-run\")",
        ],
    );
    // Rank 0 cleaned up even though it failed.
    assert!(!path.exists());
    for r in 1..4 {
        assert!(!file::ack_path(&path, r).exists());
    }
}

// ---------------------------------------------------------------------------------------------
// The launcher's environment.

/// The child's view: `parent` (inherited) overlaid with the launch's variables, as
/// `Command::envs` does.
fn child_env(
    launch_env: &[(&'static str, String)],
    parent: &[(&str, &str)],
) -> impl Fn(&str) -> Option<String> {
    let mut m: HashMap<String, String> = parent
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in launch_env {
        m.insert(k.to_string(), v.clone());
    }
    move |k| m.get(k).cloned()
}

#[test]
fn local_launch_env() {
    let dir = std::env::temp_dir();
    let launch = LocalLaunch::in_dir(4, RunId::new("run-42").unwrap(), &dir).unwrap();
    assert_eq!(launch.world_size(), 4);
    assert_eq!(launch.run_id().as_str(), "run-42");
    assert_eq!(launch.id_file(), dir.join("dsv3-nccl-id-run-42"));
    let file = launch.id_file().to_str().unwrap().to_string();
    let env = launch.env(2).unwrap();
    let want: Vec<(&str, String)> = vec![
        ("RANK", "2".into()),
        ("WORLD_SIZE", "4".into()),
        ("LOCAL_RANK", "2".into()),
        ("LOCAL_WORLD_SIZE", "4".into()),
        ("DSV3_RUN_ID", "run-42".into()),
        ("DSV3_NCCL_ID_FILE", file.clone()),
    ];
    assert_eq!(env, want);
    // What the child reads back, whatever the launcher itself inherited.
    let inherited = [
        ("RANK", "7"),
        ("WORLD_SIZE", "16"),
        ("LOCAL_RANK", "7"),
        ("LOCAL_WORLD_SIZE", "8"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
        ("DSV3_NCCL_ID_ADDR", "127.0.0.1:1"),
        ("DSV3_RUN_ID", "the-surrounding-job"),
        ("DSV3_NCCL_ID_TIMEOUT_S", "9"),
    ];
    let look = child_env(&env, &inherited);
    let w = WorldEnv::from_lookup(&look).unwrap();
    assert_eq!(w, world(2, 4));
    assert_eq!(
        IdExchange::from_lookup(&w, &look).unwrap(),
        IdExchange::File {
            path: launch.id_file().to_path_buf(),
            run: rid("run-42"),
            timeout: Duration::from_secs(9),
        }
    );
    // Every rank gets the same run id and file, its own rank.
    for r in 0..4 {
        let env = launch.env(r).unwrap();
        assert_eq!(env[0], ("RANK", r.to_string()));
        assert_eq!(env[2], ("LOCAL_RANK", r.to_string()));
        assert_eq!(env[4].1, "run-42");
        assert_eq!(env[5].1, file);
    }
    // Odd characters of a run id do not reach the file name.
    let odd = LocalLaunch::in_dir(2, RunId::new("a/b:c").unwrap(), &dir).unwrap();
    assert_eq!(odd.id_file(), dir.join("dsv3-nccl-id-a_b_c"));
}

#[test]
fn local_launch_errors_and_freshness() {
    let e = LocalLaunch::new(4).unwrap().env(4).unwrap_err();
    assert_err_contains(&e, &["local rank 4 of a world of 4: the ranks are 0..3"]);
    let e = LocalLaunch::new(0).unwrap_err();
    assert_err_contains(&e, &["world of 0"]);
    assert!(LocalLaunch::new(MAX_WORLD_SIZE + 1).is_err());
    // Two launches never share a run id or an id file.
    let (a, b) = (LocalLaunch::new(2).unwrap(), LocalLaunch::new(2).unwrap());
    assert_ne!(a.run_id(), b.run_id());
    assert_ne!(a.id_file(), b.id_file());
    assert!(a.id_file().starts_with(std::env::temp_dir()));
    assert!(a.id_file().to_str().unwrap().ends_with(a.run_id().as_str()));
}

#[test]
fn local_launch_world_shares_one_id() {
    // The ranks as the launcher's children would see the world: each reads only its
    // environment.
    let dir = std::env::temp_dir();
    let launch = LocalLaunch::in_dir(3, RunId::fresh(), &dir).unwrap();
    let ids = ranks(3, |r| {
        let look = child_env(&launch.env(r).unwrap(), &[("DSV3_NCCL_ID_TIMEOUT_S", "30")]);
        let w = WorldEnv::from_lookup(&look).unwrap();
        let ex = IdExchange::from_lookup(&w, &look).unwrap();
        ex.share(w.rank, w.world_size, late_id(8)).unwrap()
    });
    assert!(ids.iter().all(|id| *id == fake_id(8)));
    assert!(!launch.id_file().exists());
    // A rank 0 that died mid-exchange leaves the file; the launcher's cleanup removes it.
    let r = Some(launch.run_id().clone());
    file::publish(launch.id_file(), &fake_id(1), &Member::new(0, 3, &r, LONG)).unwrap();
    std::fs::write(file::ack_path(launch.id_file(), 2), b"x").unwrap();
    launch.cleanup();
    assert!(!launch.id_file().exists());
    assert!(!file::ack_path(launch.id_file(), 2).exists());
}
