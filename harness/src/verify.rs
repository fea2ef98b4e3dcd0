//! `harness verify`: every GPU kernel of the workspace against its Rust reference, on fresh random
//! inputs, one table row per kernel and case.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::environment::{utc_now, BUILD_COMMIT};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Fewer and smaller cases (a minute-scale smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Fail (exit 2) instead of skipping when no CUDA device can be used (also with
    /// `DSV3_REQUIRE_GPU=1` in the environment).
    #[arg(long)]
    pub require_gpu: bool,
    /// Also write every row as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Run on the emulated device (every kernel in the interpreter on the CPU), with the quick
    /// (CPU-sized) cases. Needs the interpreter build: `--features emulate`.
    #[arg(long)]
    pub emulate: bool,
    /// Run only these suites (repeatable): kernels, fp8-gemm, moe-dispatch, mla-attention,
    /// "mla-attention peer", model. For example the few cases a compute-sanitizer run covers.
    #[arg(long = "suite", value_name = "SUITE")]
    pub suites: Vec<String>,
}

/// Every suite `verify` runs, by name (the `--suite` values).
pub const SUITE_NAMES: [&str; 6] = [
    "kernels",
    "fp8-gemm",
    "moe-dispatch",
    "mla-attention",
    "mla-attention peer",
    "model",
];

/// Exit status when the run could not happen because there is no GPU and `--require-gpu` was set.
const NO_GPU_EXIT: u8 = 2;
/// Exit status of a bad argument (clap's).
const USAGE_EXIT: u8 = 2;

pub fn run(args: &VerifyArgs) -> ExitCode {
    if let Some(bad) = args
        .suites
        .iter()
        .find(|s| !SUITE_NAMES.contains(&s.as_str()))
    {
        eprintln!(
            "verify: unknown suite {bad:?}; the suites are {}",
            SUITE_NAMES.map(|s| format!("{s:?}")).join(", ")
        );
        return ExitCode::from(USAGE_EXIT);
    }
    if args.emulate != kernels::EMULATED {
        if args.emulate {
            eprintln!(
                "verify: --emulate runs the kernels in the interpreter, which this harness was \
                 built without; build it with --features emulate: \
                 cargo run --release -p harness --features emulate -- verify --emulate"
            );
        } else {
            eprintln!(
                "verify: this harness is the interpreter build (--features emulate): pass \
                 --emulate to run the suites on the emulated device, or build with --features \
                 cuda for a GPU"
            );
        }
        return ExitCode::from(USAGE_EXIT);
    }
    println!("harness verify  commit {BUILD_COMMIT}  {}", utc_now());
    match gpu_run::run(args) {
        Outcome::Done { failures: 0 } => ExitCode::SUCCESS,
        Outcome::Done { failures } => {
            eprintln!("verify: {failures} case(s) failed");
            ExitCode::FAILURE
        }
        Outcome::NoGpu(why) => {
            println!("skipped: no CUDA device: {why}");
            if args.require_gpu || kernels::gpu_required() {
                eprintln!(
                    "verify: --require-gpu (or {}=1) was given and no CUDA device can be used",
                    kernels::REQUIRE_GPU_VAR
                );
                ExitCode::from(NO_GPU_EXIT)
            } else {
                ExitCode::SUCCESS
            }
        }
        Outcome::Unusable(why) => {
            eprintln!("verify: cannot run the kernels: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum Outcome {
    Done {
        failures: usize,
    },
    NoGpu(String),
    /// A device exists but the kernels cannot run on it (not sm_90, driver too old).
    Unusable(String),
}

#[cfg(not(feature = "cuda"))]
mod gpu_run {
    use super::*;

    pub(super) fn run(_: &VerifyArgs) -> Outcome {
        Outcome::NoGpu(
            "harness built without --features cuda (see README: Building for a GPU)".into(),
        )
    }
}

#[cfg(feature = "cuda")]
mod gpu_run {
    use super::*;
    use crate::table::Table;
    use kernels::checks::CheckReport;
    use kernels::gpu::Gpu;
    use kernels::Error;

    /// A crate's checks: every case of its kernels against their references.
    type Suite = fn(&Gpu, bool) -> Vec<kernels::Result<CheckReport>>;

    /// The check suites of the workspace, one per crate with GPU kernels. A crate that adds
    /// kernels adds its suite here, so `verify` always covers every kernel.
    fn suites() -> [(&'static str, Suite); SUITE_NAMES.len()] {
        [
            ("kernels", kernels::checks::all_checks),
            ("fp8-gemm", fp8_gemm::checks::all_checks),
            ("moe-dispatch", moe_dispatch::checks::all_checks),
            ("mla-attention", mla_attention::checks::all_checks),
            // Not our kernel: the naive cuBLAS peer `bench` times next to it, held to its
            // thresholds so a speedup is never measured against a wrong answer.
            ("mla-attention peer", mla_attention::peer::all_checks),
            ("model", model::cuda::checks::all_checks),
        ]
    }

    /// The suites `args` selects (all without `--suite`), in the order above. On the emulated
    /// device the cuBLAS peer's suite is left out (with a note): there is no cuBLAS there.
    fn selected(args: &VerifyArgs) -> Vec<(&'static str, Suite)> {
        let all = suites();
        debug_assert!(all.iter().map(|s| s.0).eq(SUITE_NAMES));
        all.into_iter()
            .filter(|(name, _)| args.suites.is_empty() || args.suites.iter().any(|s| s == name))
            .filter(|(name, _)| {
                let unavailable = args.emulate && *name == "mla-attention peer";
                if unavailable {
                    println!(
                        "suite {name:?} not run: cuBLAS is not available on the emulated device"
                    );
                }
                !unavailable
            })
            .collect()
    }

    #[derive(serde::Serialize)]
    struct Row {
        suite: &'static str,
        #[serde(flatten)]
        report: Option<CheckReport>,
        error: Option<String>,
    }

    pub(super) fn run(args: &VerifyArgs) -> Outcome {
        let gpu = match Gpu::new(args.device) {
            Ok(gpu) => gpu,
            Err(Error::NoCudaDevice(why)) => return Outcome::NoGpu(why),
            Err(e) => return Outcome::Unusable(e.to_string()),
        };
        let info = gpu.info();
        println!(
            "device {}: {} (sm_{}{}, {} SMs), driver CUDA {}.{}",
            info.ordinal,
            info.name,
            info.compute_capability.0,
            info.compute_capability.1,
            info.multiprocessors,
            info.driver_cuda_version / 1000,
            info.driver_cuda_version % 1000 / 10
        );
        let mut table = Table::new(&[
            "suite", "kernel", "case", "metric", "error", "tol", "result",
        ]);
        let mut rows = Vec::new();
        // The interpreter is orders of magnitude slower than the GPU: CPU-sized (quick) cases.
        let quick = args.quick || args.emulate;
        for (suite, checks) in selected(args) {
            for result in checks(&gpu, quick) {
                let row = match result {
                    Ok(report) => Row {
                        suite,
                        report: Some(report),
                        error: None,
                    },
                    Err(e) => Row {
                        suite,
                        report: None,
                        error: Some(e.to_string()),
                    },
                };
                table.row(row_cells(&row));
                rows.push(row);
            }
        }
        table.print();
        #[cfg(feature = "emulate")]
        print_launch_coverage(&gpu);
        let failures = rows
            .iter()
            .filter(|r| !r.report.as_ref().is_some_and(|c| c.passed))
            .count();
        println!(
            "{} cases, {} passed, {failures} failed",
            rows.len(),
            rows.len() - failures
        );
        for row in rows
            .iter()
            .filter(|r| !r.report.as_ref().is_some_and(|c| c.passed))
        {
            match (&row.report, &row.error) {
                (Some(c), _) => println!("FAIL {}/{} {}: {}", row.suite, c.kernel, c.case, c.note),
                (None, Some(e)) => println!("ERROR {}: {e}", row.suite),
                (None, None) => {}
            }
        }
        if let Some(path) = &args.json {
            let doc = serde_json::json!({
                "tool": "harness verify",
                "date_utc": utc_now(),
                "commit": BUILD_COMMIT,
                "device": info,
                "quick": quick,
                "emulated": args.emulate,
                "rows": rows,
            });
            if let Err(e) = crate::write_json(path, &doc) {
                eprintln!("verify: {e}");
                return Outcome::Done {
                    failures: failures + 1,
                };
            }
            println!("wrote {}", path.display());
        }
        Outcome::Done { failures }
    }

    fn row_cells(row: &Row) -> Vec<String> {
        match (&row.report, &row.error) {
            (Some(c), _) => vec![
                row.suite.to_string(),
                c.kernel.clone(),
                c.case.clone(),
                c.metric.to_string(),
                format!("{:.3e}", c.error),
                format!("{:.1e}", c.tolerance),
                if c.passed { "PASS" } else { "FAIL" }.to_string(),
            ],
            (None, e) => vec![
                row.suite.to_string(),
                "-".into(),
                e.clone().unwrap_or_default(),
                "-".into(),
                "-".into(),
                "-".into(),
                "ERROR".into(),
            ],
        }
    }
}

/// Which of the workspace's kernels the suites launched in the interpreter, and how often: the
/// coverage line of `verify --emulate`.
#[cfg(feature = "emulate")]
fn print_launch_coverage(gpu: &kernels::gpu::Gpu) {
    let all = [
        kernels::cubins::ALL,
        fp8_gemm::cubins::ALL,
        mla_attention::cubins::ALL,
        moe_dispatch::cubins::ALL,
        model::cubins::ALL,
    ]
    .concat();
    let counts = gpu.launch_counts();
    let names = kernels::gpu::kernel_names(&all);
    let never: Vec<&String> = names.iter().filter(|n| !counts.contains_key(*n)).collect();
    println!(
        "kernels launched: {} of {} ({} launches in all)",
        names.len() - never.len(),
        names.len(),
        counts.values().sum::<u64>()
    );
    let mut ran: Vec<(&String, &u64)> = counts.iter().collect();
    ran.sort();
    for (name, n) in ran {
        println!("  {name}: {n}");
    }
    for name in never {
        println!("  {name}: never launched");
    }
}
