//! `harness bench`: event-timed medians of every benchmark case and its peers, the two device
//! ceilings measured in the same run, written under `--out` as results.json, REPORT.md and plots
//! (see `report`).
//!
//! Each case is timed twice: `hot`, repetitions back to back (inputs mostly in L2, as activations
//! are when the previous kernel just wrote them), and `cold`, with a buffer larger than L2
//! overwritten before every repetition outside the timed region (inputs from device memory).
//! Derived GB/s and TFLOP/s use the case's minimal byte and flop counts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kernels::stats::TimingStats;

use crate::environment::{utc_now, BUILD_COMMIT};
use crate::items::{all_items, BenchItem};
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Directory for the report files (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Decode-size and prefill-size cases only, fewer repetitions (a smoke run).
    #[arg(long, conflicts_with = "all")]
    pub quick: bool,
    /// Every case of every crate (the default; spelled out for scripts).
    #[arg(long)]
    pub all: bool,
    /// Timed repetitions per case (default: 100 on a GPU, 5 on the CPU).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Untimed warm-up repetitions per case.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Only cases whose name contains this string.
    #[arg(long)]
    pub filter: Option<String>,
    /// Skip the copy-bandwidth and cuBLAS ceilings.
    #[arg(long)]
    pub no_ceilings: bool,
    /// Time the CPU references even when a GPU is present.
    #[arg(long)]
    pub cpu: bool,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

pub use crate::results::{CaseResult, Ceiling, Method, Report, Skipped, COPY, GEMM};

pub fn run(args: &BenchArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn selected_items(args: &BenchArgs) -> Vec<BenchItem> {
    all_items(args.quick)
        .into_iter()
        .filter(|c| {
            args.filter
                .as_ref()
                .is_none_or(|f| c.name().contains(f.as_str()))
        })
        .collect()
}

fn run_inner(args: &BenchArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let date = utc_now();
    println!("harness bench  commit {BUILD_COMMIT}  {date}");
    let cases = selected_items(args);
    if cases.is_empty() {
        return Err(format!("no case matches the filter {:?}", args.filter));
    }
    let report = match gpu_bench::try_run(args, &cases, &date)? {
        gpu_bench::Attempt::Ran(report) => *report,
        gpu_bench::Attempt::NoGpu(why) => {
            if !args.cpu {
                println!("skipped: no CUDA device: {why}; timing the CPU references instead");
            }
            cpu_bench(args, &cases, &date, why)
        }
    };
    write_report(&args.out, report)
}

fn cpu_bench(args: &BenchArgs, items: &[BenchItem], date: &str, why: String) -> Report {
    let reps = args.reps.unwrap_or(5).max(1);
    let warmup = args.warmup.min(2);
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    let total = items.len();
    for (i, item) in items.iter().enumerate() {
        let progress = format!("[{}/{total}]", i + 1);
        let Some(factory) = &item.cpu else {
            let why = "no CPU run (a GPU-only peer, or too large for the reference)";
            println!("{progress:>9} {:<48} skipped: {why}", item.name());
            skipped.push(Skipped {
                case: item.name(),
                why: why.into(),
            });
            continue;
        };
        let mut run = factory(&mut kernels::rng::Rng::fresh());
        for _ in 0..warmup {
            run();
        }
        let samples: Vec<f32> = (0..reps)
            .map(|_| {
                let start = std::time::Instant::now();
                run();
                start.elapsed().as_secs_f32() * 1e3
            })
            .collect();
        let result = CaseResult::new(item, TimingStats::from_samples(&samples), None);
        println!(
            "{progress:>9} {:<48} {:>10.4} ms",
            result.case, result.hot.median_ms
        );
        results.push(result);
    }
    let end_to_end = if wants_end_to_end(args) {
        println!("end to end: the CPU backend on the built-in tiny model");
        crate::end_to_end::run_cpu(args.quick, reps).unwrap_or_else(|e| {
            skipped.push(Skipped {
                case: "dsv3 end to end".into(),
                why: e,
            });
            Vec::new()
        })
    } else {
        Vec::new()
    };
    Report {
        tool: "harness bench".into(),
        schema_version: 1,
        date_utc: date.to_string(),
        commit: BUILD_COMMIT.into(),
        backend: "cpu".into(),
        backend_note: Some(why),
        host_cpus: crate::environment::host_cpus(),
        device: None,
        method: Method {
            warmup,
            reps,
            timing: "host clock (std::time::Instant) around each repetition of the Rust reference"
                .into(),
            l2_flush_bytes: None,
        },
        ceilings: [COPY, GEMM]
            .into_iter()
            .map(|name| Ceiling::skipped(name, "-".into(), "no GPU in this run".into()))
            .collect(),
        cases: results,
        skipped,
        end_to_end,
        sub_reports: Vec::new(),
    }
}

/// Whether this run includes the end-to-end model numbers (the `dsv3` filter).
fn wants_end_to_end(args: &BenchArgs) -> bool {
    args.filter
        .as_ref()
        .is_none_or(|f| "dsv3".contains(f.as_str()))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The short table printed at the end of a run (the reply of a device command shows its tail).
fn summary_table(report: &Report) -> Table {
    let mut cases = Table::new(&[
        "case", "hot ms", "cold ms", "GB/s", "TFLOP/s", "of floor", "check",
    ]);
    for r in &report.cases {
        cases.row(vec![
            r.case.clone(),
            format!("{:.4}", r.hot.median_ms),
            fmt_opt(r.cold.as_ref().map(|t| t.median_ms), 4),
            fmt_opt(r.cold_gb_per_s.or(Some(r.hot_gb_per_s)), 1),
            format!("{:.2}", r.hot_tflop_per_s),
            r.fraction_of_floor
                .map_or("-".into(), |f| format!("{:.0}%", f * 100.0)),
            r.check.clone().unwrap_or_default(),
        ]);
    }
    cases
}

fn write_report(dir: &Path, mut report: Report) -> Result<(), String> {
    let files = crate::report::write_all(dir, &mut report)?;
    for c in &report.ceilings {
        println!(
            "ceiling {}: {}",
            c.name,
            c.skipped.clone().unwrap_or_else(|| format!(
                "{} GB/s {} TFLOP/s ({})",
                fmt_opt(c.gb_per_s, 1),
                fmt_opt(c.tflop_per_s, 1),
                c.check.clone().unwrap_or_default()
            ))
        );
    }
    summary_table(&report).print();
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
mod gpu_bench {
    use super::*;

    pub(super) enum Attempt {
        #[allow(dead_code)] // Constructed only in CUDA builds.
        Ran(Box<Report>),
        NoGpu(String),
    }

    pub(super) fn try_run(_: &BenchArgs, _: &[BenchItem], _: &str) -> Result<Attempt, String> {
        Ok(Attempt::NoGpu(
            "harness built without --features cuda".into(),
        ))
    }
}

#[cfg(feature = "cuda")]
mod gpu_bench {
    use super::*;
    use crate::ceilings;
    use kernels::gpu::Gpu;
    use kernels::rng::Rng;

    pub(super) enum Attempt {
        Ran(Box<Report>),
        NoGpu(String),
    }

    pub(super) fn try_run(
        args: &BenchArgs,
        cases: &[BenchItem],
        date: &str,
    ) -> Result<Attempt, String> {
        if args.cpu {
            return Ok(Attempt::NoGpu("--cpu was given".into()));
        }
        let gpu = match Gpu::new(args.device) {
            Ok(gpu) => gpu,
            Err(kernels::Error::NoCudaDevice(why)) => return Ok(Attempt::NoGpu(why)),
            Err(e) => return Err(e.to_string()),
        };
        Ok(Attempt::Ran(Box::new(
            run_on(&gpu, args, cases, date).map_err(|e| e.to_string())?,
        )))
    }

    fn run_on(
        gpu: &Gpu,
        args: &BenchArgs,
        items: &[BenchItem],
        date: &str,
    ) -> kernels::Result<Report> {
        let reps = args
            .reps
            .unwrap_or(if args.quick { 30 } else { 100 })
            .max(1);
        let warmup = args.warmup;
        let info = gpu.info().clone();
        println!("device {}: {}", info.ordinal, info.name);
        let smi_start = crate::environment::nvidia_smi(info.ordinal);
        let mut rng = Rng::fresh();

        // Overwriting twice the L2 before each cold repetition leaves none of the inputs there.
        let flush_bytes = (2 * info.l2_bytes.max(0) as usize).max(256 << 20);
        let mut flush = gpu.zeros::<u32>(&[flush_bytes / 4])?;
        let mut flush_byte = 0u8;

        let mut results = Vec::new();
        let mut skipped = Vec::new();
        let total = items.len();
        for (i, item) in items.iter().enumerate() {
            let progress = format!("[{}/{total}]", i + 1);
            // A failing item is recorded and the run goes on: one broken kernel or missing peer
            // library must not cost the rest of a device session's measurements.
            match time_item(
                gpu,
                item,
                &mut rng,
                warmup,
                reps,
                &mut flush,
                &mut flush_byte,
            ) {
                Ok(Ok(result)) => {
                    println!(
                        "{progress:>9} {:<56} hot {:>9.4} ms  cold {:>9.4} ms",
                        result.case,
                        result.hot.median_ms,
                        result.cold.as_ref().map_or(f64::NAN, |t| t.median_ms)
                    );
                    results.push(result);
                }
                Ok(Err(why)) | Err(why) => {
                    println!("{progress:>9} {:<56} skipped: {why}", item.name());
                    skipped.push(Skipped {
                        case: item.name(),
                        why,
                    });
                }
            }
        }
        drop(flush);

        let ceilings = if args.no_ceilings {
            Vec::new()
        } else {
            vec![
                ceilings::copy_bandwidth(gpu, &mut rng, warmup, reps)?,
                ceilings::cublas_bf16_gemm(gpu, &mut rng, warmup, reps.min(50))?,
            ]
        };
        // The model end to end: the full-width synthetic model and the MTP step costs (about
        // 38 + 53 GB, built one after the other). Not in --quick runs.
        let (end_to_end, sub_reports) = if wants_end_to_end(args) && !args.quick {
            let (rows, subs, failed) = crate::end_to_end::run_gpu(gpu, &args.out);
            for (case, why) in failed {
                println!("          {case} skipped: {why}");
                skipped.push(Skipped { case, why });
            }
            (rows, subs)
        } else {
            (Vec::new(), Vec::new())
        };
        let smi_end = crate::environment::nvidia_smi(info.ordinal);
        let smi = |v: Option<Vec<(String, String)>>| {
            v.map_or(serde_json::Value::Null, |kv| {
                serde_json::Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect(),
                )
            })
        };
        let mut device = serde_json::to_value(&info).unwrap_or_default();
        if let Some(obj) = device.as_object_mut() {
            obj.insert("nvidia_smi_at_start".into(), smi(smi_start));
            obj.insert("nvidia_smi_at_end".into(), smi(smi_end));
        }
        Ok(Report {
            tool: "harness bench".into(),
            schema_version: 1,
            date_utc: date.to_string(),
            commit: BUILD_COMMIT.into(),
            backend: "cuda".into(),
            backend_note: None,
            host_cpus: crate::environment::host_cpus(),
            device: Some(device),
            method: Method {
                warmup,
                reps,
                timing: "CUDA events on the launch stream around each repetition; hot: \
                         back to back; cold: L2 overwritten before each repetition, untimed"
                    .into(),
                l2_flush_bytes: Some(flush_bytes),
            },
            ceilings,
            cases: results,
            skipped,
            end_to_end,
            sub_reports,
        })
    }

    /// Hot and cold timings of one item; `Ok(Err(why))` when it cannot run on this device.
    fn time_item(
        gpu: &Gpu,
        item: &BenchItem,
        rng: &mut Rng,
        warmup: usize,
        reps: usize,
        flush: &mut kernels::gpu::DeviceTensor<u32>,
        flush_byte: &mut u8,
    ) -> Result<Result<CaseResult, String>, String> {
        let Some(factory) = &item.gpu else {
            return Ok(Err("no GPU implementation".into()));
        };
        let run = match factory(gpu, rng).map_err(|e| e.to_string())? {
            Ok(run) => run,
            Err(why) => return Ok(Err(why)),
        };
        let mut launch = run.launch;
        let hot = gpu
            .time(warmup, reps, &mut launch)
            .map_err(|e| e.to_string())?;
        let cold = gpu
            .time_separated(
                warmup.min(2),
                reps,
                || {
                    *flush_byte = flush_byte.wrapping_add(1);
                    gpu.fill_bytes(flush, *flush_byte)
                },
                &mut launch,
            )
            .map_err(|e| e.to_string())?;
        drop(launch);
        gpu.synchronize().map_err(|e| e.to_string())?;
        let mut result = CaseResult::new(item, hot, Some(cold));
        result.check = run.check;
        Ok(Ok(result))
    }
}
