//! `harness verify` argument handling (runs the built binary; no GPU needed).

use std::process::Command;

fn harness(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(args)
        .output()
        .expect("the harness binary runs")
}

#[test]
fn unknown_suite_is_an_error_that_lists_the_suites() {
    let out = harness(&["verify", "--suite", "mla"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown suite \"mla\""), "{err}");
    assert!(err.contains("\"mla-attention\""), "{err}");
}

#[test]
fn known_suites_are_accepted() {
    let out = harness(&[
        "verify",
        "--quick",
        "--suite",
        "mla-attention",
        "--suite",
        "kernels",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // Without a device the run is a visible skip; with one, the selected suites run.
    if text.contains("skipped: no CUDA device") {
        assert!(out.status.success(), "{text}");
    } else {
        assert!(text.contains("mla-attention"), "{text}");
        assert!(!text.contains("moe-dispatch"), "{text}");
    }
}
