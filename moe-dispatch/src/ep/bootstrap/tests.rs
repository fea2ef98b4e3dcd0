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
            vec!["WORLD_SIZE is 0"],
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
