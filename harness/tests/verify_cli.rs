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
    let mut args = vec![
        "verify",
        "--quick",
        "--suite",
        "mla-attention",
        "--suite",
        "kernels",
    ];
    // The interpreter build runs the suites on its emulated device, and only when asked to.
    if kernels::EMULATED {
        args.push("--emulate");
    }
    let out = harness(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    // Without a device the run is a visible skip; with one, the selected suites run.
    if text.contains("skipped: no CUDA device") {
        assert!(out.status.success(), "{text}");
    } else {
        // Table rows start with their suite (the interpreter's launch list names every module).
        let rows_of = |suite: &str| text.lines().filter(|l| l.starts_with(suite)).count();
        assert!(rows_of("mla-attention ") > 0, "{text}");
        assert_eq!(rows_of("moe-dispatch "), 0, "{text}");
    }
}

/// `DSV3_REQUIRE_GPU=1` turns a missing device into a failure (exit 2), the way `--require-gpu`
/// does: a GPU session that lost its device must not pass by skipping.
#[test]
fn require_gpu_variable_fails_without_a_device() {
    if kernels::EMULATED {
        // The interpreter build runs only with --emulate, on its always-present device.
        kernels::report_note(
            "require_gpu_variable_fails_without_a_device",
            "not applicable to the interpreter build",
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["verify", "--quick", "--suite", "kernels"])
        .env(kernels::REQUIRE_GPU_VAR, "1")
        .output()
        .expect("the harness binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("skipped: no CUDA device") {
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("DSV3_REQUIRE_GPU=1"), "{err}");
    } else {
        // A machine with a GPU runs the suite.
        assert!(out.status.success(), "{text}");
    }
}
