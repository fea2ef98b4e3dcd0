//! `harness bench`: event-timed medians of every benchmark case, the two device ceilings measured
//! in the same run, written as JSON (and a Markdown summary) under the directory given.
//!
//! Each case is timed twice: `hot`, repetitions back to back (inputs mostly in L2, as activations
//! are when the previous kernel just wrote them), and `cold`, with a buffer larger than L2
//! overwritten before every repetition outside the timed region (inputs from device memory).
//! Derived GB/s and TFLOP/s use the case's minimal byte and flop counts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kernels::stats::TimingStats;

use crate::environment::{file_stamp, utc_now, BUILD_COMMIT};
use crate::items::{all_items, BenchItem};
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Directory for the report files (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Decode-size and prefill-size cases only, fewer repetitions.
    #[arg(long)]
    pub quick: bool,
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

/// Names of the two ceilings.
pub const COPY: &str = "dtod_copy";
pub const GEMM: &str = "cublas_bf16_gemm";

/// One timed case.
#[derive(Debug, serde::Serialize)]
pub struct CaseResult {
    pub suite: &'static str,
    pub kernel: String,
    /// "ours" or the peer's name.
    pub implementation: &'static str,
    pub case: String,
    pub shape: String,
    pub bytes: f64,
    pub flops: f64,
    pub hot: TimingStats,
    pub cold: Option<TimingStats>,
    pub hot_gb_per_s: f64,
    pub cold_gb_per_s: Option<f64>,
    pub hot_tflop_per_s: f64,
    pub cold_tflop_per_s: Option<f64>,
    /// cold GB/s over the measured copy ceiling.
    pub cold_fraction_of_copy: Option<f64>,
    /// Peers: how their output compared with our reference.
    pub check: Option<String>,
}

impl CaseResult {
    pub fn new(item: &BenchItem, hot: TimingStats, cold: Option<TimingStats>) -> Self {
        let gbps = |t: &TimingStats| item.bytes / (t.median_ms * 1e-3) / 1e9;
        let tflops = |t: &TimingStats| item.flops / (t.median_ms * 1e-3) / 1e12;
        CaseResult {
            suite: item.suite,
            kernel: item.kernel.clone(),
            implementation: item.implementation,
            case: item.name(),
            shape: item.shape.clone(),
            bytes: item.bytes,
            flops: item.flops,
            hot_gb_per_s: gbps(&hot),
            cold_gb_per_s: cold.as_ref().map(gbps),
            hot_tflop_per_s: tflops(&hot),
            cold_tflop_per_s: cold.as_ref().map(tflops),
            cold_fraction_of_copy: None,
            check: None,
            hot,
            cold,
        }
    }
}

/// A case that did not run, and why.
#[derive(Debug, serde::Serialize)]
pub struct Skipped {
    pub case: String,
    pub why: String,
}

/// A measured ceiling (or why it was not measured).
#[derive(Debug, serde::Serialize)]
pub struct Ceiling {
    pub name: &'static str,
    pub shape: String,
    pub timing: Option<TimingStats>,
    pub bytes: f64,
    pub flops: f64,
    pub gb_per_s: Option<f64>,
    pub tflop_per_s: Option<f64>,
    /// What was checked about the result (the copy's bytes, sampled GEMM entries).
    pub check: Option<String>,
    pub skipped: Option<String>,
}

impl Ceiling {
    pub fn skipped(name: &'static str, shape: String, why: String) -> Self {
        Ceiling {
            name,
            shape,
            timing: None,
            bytes: 0.0,
            flops: 0.0,
            gb_per_s: None,
            tflop_per_s: None,
            check: None,
            skipped: Some(why),
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct Method {
    warmup: usize,
    reps: usize,
    timing: &'static str,
    l2_flush_bytes: Option<usize>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    tool: &'static str,
    schema_version: u32,
    date_utc: String,
    commit: &'static str,
    backend: &'static str,
    /// Why the CPU backend ran, when it did.
    backend_note: Option<String>,
    host_cpus: usize,
    device: Option<serde_json::Value>,
    method: Method,
    ceilings: Vec<Ceiling>,
    cases: Vec<CaseResult>,
    skipped: Vec<Skipped>,
}

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
    write_report(&args.out, &report)
}

fn cpu_bench(args: &BenchArgs, items: &[BenchItem], date: &str, why: String) -> Report {
    let reps = args.reps.unwrap_or(5).max(1);
    let warmup = args.warmup.min(2);
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for item in items {
        let Some(factory) = &item.cpu else {
            skipped.push(Skipped {
                case: item.name(),
                why: "no CPU run (a GPU-only peer, or too large for the reference)".into(),
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
        println!("  {:<48} {:>10.4} ms", result.case, result.hot.median_ms);
        results.push(result);
    }
    Report {
        tool: "harness bench",
        schema_version: 1,
        date_utc: date.to_string(),
        commit: BUILD_COMMIT,
        backend: "cpu",
        backend_note: Some(why),
        host_cpus: crate::environment::host_cpus(),
        device: None,
        method: Method {
            warmup,
            reps,
            timing: "host clock (std::time::Instant) around each repetition of the Rust reference",
            l2_flush_bytes: None,
        },
        ceilings: [COPY, GEMM]
            .into_iter()
            .map(|name| Ceiling::skipped(name, "-".into(), "no GPU in this run".into()))
            .collect(),
        cases: results,
        skipped,
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn summary_tables(report: &Report) -> (Table, Table) {
    let mut ceilings = Table::new(&["ceiling", "shape", "median ms", "GB/s", "TFLOP/s", "note"]);
    for c in &report.ceilings {
        ceilings.row(vec![
            c.name.to_string(),
            c.shape.clone(),
            fmt_opt(c.timing.as_ref().map(|t| t.median_ms), 4),
            fmt_opt(c.gb_per_s, 1),
            fmt_opt(c.tflop_per_s, 1),
            c.skipped.clone().or(c.check.clone()).unwrap_or_default(),
        ]);
    }
    let mut cases = Table::new(&[
        "case",
        "hot ms",
        "hot GB/s",
        "hot TFLOP/s",
        "cold ms",
        "cold GB/s",
        "cold / copy",
        "check",
    ]);
    for r in &report.cases {
        cases.row(vec![
            r.case.clone(),
            format!("{:.4}", r.hot.median_ms),
            format!("{:.1}", r.hot_gb_per_s),
            format!("{:.2}", r.hot_tflop_per_s),
            fmt_opt(r.cold.as_ref().map(|t| t.median_ms), 4),
            fmt_opt(r.cold_gb_per_s, 1),
            r.cold_fraction_of_copy
                .map_or("-".into(), |f| format!("{:.1}%", f * 100.0)),
            r.check.clone().unwrap_or_default(),
        ]);
    }
    (ceilings, cases)
}

fn write_report(dir: &Path, report: &Report) -> Result<(), String> {
    let stem = format!("bench-{}-{}", report.backend, file_stamp(&report.date_utc));
    let json_path = dir.join(format!("{stem}.json"));
    crate::write_json(&json_path, report)?;
    let (ceilings, cases) = summary_tables(report);
    let device = report
        .device
        .as_ref()
        .and_then(|d| d.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("CPU (Rust references)");
    let md = format!(
        "# harness bench: {device}\n\ncommit `{}`, {}, backend {}, {} reps after {} warm-up; \
         medians of per-repetition timings. Full data: `{stem}.json`.\n\n## Ceilings\n\n{}\n\
         ## Cases\n\n{}",
        report.commit,
        report.date_utc,
        report.backend,
        report.method.reps,
        report.method.warmup,
        ceilings.markdown(),
        cases.markdown()
    );
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, md).map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    if !report.ceilings.is_empty() {
        ceilings.print();
        println!();
    }
    cases.print();
    println!("wrote {} and {}", json_path.display(), md_path.display());
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
        for item in items {
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
                        "  {:<56} hot {:>9.4} ms  cold {:>9.4} ms",
                        result.case,
                        result.hot.median_ms,
                        result.cold.as_ref().map_or(f64::NAN, |t| t.median_ms)
                    );
                    results.push(result);
                }
                Ok(Err(why)) | Err(why) => {
                    println!("  {:<56} skipped: {why}", item.name());
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
        if let Some(copy) = ceilings
            .iter()
            .find(|c| c.name == COPY)
            .and_then(|c| c.gb_per_s)
        {
            for r in &mut results {
                r.cold_fraction_of_copy = r.cold_gb_per_s.map(|g| g / copy);
            }
        }
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
            tool: "harness bench",
            schema_version: 1,
            date_utc: date.to_string(),
            commit: BUILD_COMMIT,
            backend: "cuda",
            backend_note: None,
            host_cpus: crate::environment::host_cpus(),
            device: Some(device),
            method: Method {
                warmup,
                reps,
                timing: "CUDA events on the launch stream around each repetition; hot: \
                         back to back; cold: L2 overwritten before each repetition, untimed",
                l2_flush_bytes: Some(flush_bytes),
            },
            ceilings,
            cases: results,
            skipped,
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
