//! `dsv3 bench --synthetic full-width`: the CLI side of the full-width synthetic benchmark
//! (the measurements are `crate::cuda::synthetic`, the report `crate::fullwidth`).

use std::path::PathBuf;

use crate::error::{ModelError, Result};

/// The options of `bench` that the synthetic benchmark reads.
#[derive(Clone, Debug)]
pub struct SyntheticArgs {
    pub layers: usize,
    /// Default [`crate::fullwidth::PROMPT_LEN`].
    pub prompt_len: Option<usize>,
    /// Default [`crate::fullwidth::BATCHES`].
    pub batch: Option<usize>,
    pub steps: usize,
    pub json: bool,
    pub out: Option<PathBuf>,
}

/// Checks `--synthetic KIND` (only `full-width` exists).
pub fn check_kind(kind: &str) -> Result<()> {
    if kind != "full-width" {
        return Err(ModelError::request(format!(
            "--synthetic {kind}: unknown benchmark (the one there is: full-width)"
        )));
    }
    Ok(())
}

/// What a build without the `cuda` feature says to `--synthetic`.
#[cfg(not(feature = "cuda"))]
pub const NEEDS_CUDA: &str = "--synthetic full-width runs on a CUDA GPU and requires a build \
    with --features cuda (it generates its random weights on the device): `cargo build --release \
    --features cuda -p model`";

/// Runs `--synthetic KIND` (only `full-width` exists).
pub fn bench_synthetic(kind: &str, args: &SyntheticArgs) -> Result<()> {
    check_kind(kind)?;
    // Checks that need no device first, so a bad flag is reported the same way everywhere.
    crate::fullwidth::full_width_config(args.layers)?;
    if args.steps == 0 || args.prompt_len == Some(0) || args.batch == Some(0) {
        return Err(ModelError::request(
            "--prompt-len, --batch and --steps must be >= 1",
        ));
    }
    run(args)
}

#[cfg(not(feature = "cuda"))]
fn run(_args: &SyntheticArgs) -> Result<()> {
    Err(ModelError::request(NEEDS_CUDA))
}

#[cfg(feature = "cuda")]
fn run(args: &SyntheticArgs) -> Result<()> {
    use crate::cuda::synthetic::{run_full_width, FullWidthOptions};
    use crate::fullwidth::write_report;

    let gpu = super::backend::cli_gpu().map_err(|why| {
        ModelError::request(format!(
            "--synthetic full-width needs a CUDA device (Hopper, sm_90): {why}"
        ))
    })?;
    let mut opts = FullWidthOptions::standard(args.layers, args.steps);
    if let Some(p) = args.prompt_len {
        opts.prompt_len = p;
    }
    if let Some(b) = args.batch {
        opts.batches = vec![b];
    }
    let report = run_full_width(gpu, &opts, &mut |line| eprintln!("{line}"))?;
    if let Some(dir) = &args.out {
        write_report(dir, &report)?;
        eprintln!(
            "wrote {} and {}",
            dir.join("results.json").display(),
            dir.join("REPORT.md").display()
        );
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
