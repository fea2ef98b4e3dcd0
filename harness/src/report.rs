//! Turning a run's results into its report directory: `results.json`, `REPORT.md` (one table per
//! kernel: ours, the peers, the published anchors, the ceilings and what limits each case) and
//! the plots. `harness report --from DIR` redraws REPORT.md and the plots from DIR/results.json.

use std::path::{Path, PathBuf};

use crate::anchors;
use crate::plots::{self, BarChart};
use crate::results::{derive_metrics, CaseResult, Report, COPY, GEMM};
use crate::table::Table;

pub const RESULTS: &str = "results.json";
pub const REPORT: &str = "REPORT.md";

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A directory written by `harness bench --out` (it must hold results.json).
    #[arg(long)]
    pub from: PathBuf,
}

/// `harness report`: re-derives the metrics and rewrites REPORT.md and the plots.
pub fn run(args: &ReportArgs) -> std::process::ExitCode {
    match regenerate(&args.from) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("report: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub fn regenerate(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let path = dir.join(RESULTS);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut report: Report = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a harness results file: {e}", path.display()))?;
    derive_metrics(&mut report);
    write_views(dir, &report)
}

/// Writes results.json, REPORT.md and the plots for a finished run.
pub fn write_all(dir: &Path, report: &mut Report) -> Result<Vec<PathBuf>, String> {
    derive_metrics(report);
    let json = dir.join(RESULTS);
    crate::write_json(&json, report)?;
    let mut files = vec![json];
    files.extend(write_views(dir, report)?);
    Ok(files)
}

fn write_views(dir: &Path, report: &Report) -> Result<Vec<PathBuf>, String> {
    let md = dir.join(REPORT);
    std::fs::write(&md, markdown(report))
        .map_err(|e| format!("cannot write {}: {e}", md.display()))?;
    let mut files = vec![md];
    for (stem, chart) in charts(report) {
        plots::draw(&chart, dir, &stem)?;
        files.push(dir.join(format!("{stem}.svg")));
        files.push(dir.join(format!("{stem}.png")));
    }
    Ok(files)
}

fn device_name(report: &Report) -> String {
    report
        .device
        .as_ref()
        .and_then(|d| d.get("name"))
        .and_then(|n| n.as_str())
        .map_or_else(|| "CPU (Rust references)".to_string(), str::to_string)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Suites, then kernels within them, in the order the run produced them.
fn kernel_groups(report: &Report) -> Vec<(String, String, Vec<&CaseResult>)> {
    let mut groups: Vec<(String, String, Vec<&CaseResult>)> = Vec::new();
    for c in &report.cases {
        match groups
            .iter_mut()
            .find(|(s, k, _)| *s == c.suite && *k == c.kernel)
        {
            Some((_, _, v)) => v.push(c),
            None => groups.push((c.suite.clone(), c.kernel.clone(), vec![c])),
        }
    }
    groups
}

pub fn markdown(report: &Report) -> String {
    let mut out = format!("# Benchmark report: {}\n\n", device_name(report));
    out += &format!(
        "- backend: **{}**{}\n- commit `{}`, {}\n- method: {} warm-up, {} timed repetitions per case, \
         medians; {}\n",
        report.backend,
        report
            .backend_note
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})")),
        report.commit,
        report.date_utc,
        report.method.warmup,
        report.method.reps,
        report.method.timing
    );
    if let Some(d) = &report.device {
        let get = |k: &str| d.get(k).map_or("?".to_string(), |v| v.to_string());
        out += &format!(
            "- device: {} SMs, L2 {} bytes, {} bytes memory, driver CUDA version {}\n",
            get("multiprocessors"),
            get("l2_bytes"),
            get("total_mem_bytes"),
            get("driver_cuda_version")
        );
        for when in ["nvidia_smi_at_start", "nvidia_smi_at_end"] {
            if let Some(smi) = d.get(when).filter(|v| !v.is_null()) {
                out += &format!("- {when}: {smi}\n");
            }
        }
    } else {
        out += &format!(
            "- host: {} logical CPUs; **no GPU in this run: every figure is the CPU reference**\n",
            report.host_cpus
        );
    }

    out += "\n## Ceilings\n\n";
    let mut t = Table::new(&["ceiling", "shape", "median ms", "GB/s", "TFLOP/s", "note"]);
    for c in &report.ceilings {
        t.row(vec![
            c.name.clone(),
            c.shape.clone(),
            opt(c.timing.as_ref().map(|t| t.median_ms), 4),
            opt(c.gb_per_s, 1),
            opt(c.tflop_per_s, 1),
            c.skipped.clone().or(c.check.clone()).unwrap_or_default(),
        ]);
    }
    out += &t.markdown();

    for (suite, kernel, cases) in kernel_groups(report) {
        out += &format!("\n## {suite}: `{kernel}`\n\n");
        let mut t = Table::new(&[
            "shape",
            "implementation",
            "hot ms",
            "cold ms",
            "GB/s (cold)",
            "TFLOP/s (hot)",
            "speedup vs peers",
            "published",
            "what limits it",
        ]);
        for c in cases {
            let speedups = c
                .speedup_vs_peers
                .iter()
                .map(|(p, s)| format!("{s:.2}x {p}"))
                .collect::<Vec<_>>()
                .join(", ");
            let published = if c.implementation == "ours" {
                anchors::find(&c.kernel, &c.shape).map_or(String::new(), |a| {
                    format!("{} {} ({})", a.value, a.unit, a.source)
                })
            } else {
                String::new()
            };
            let mut limit = c.limit.clone().unwrap_or_default();
            if let Some(check) = &c.check {
                limit = format!("{limit} [output check: {check}]");
            }
            t.row(vec![
                c.shape.clone(),
                c.implementation.clone(),
                format!("{:.4}", c.hot.median_ms),
                opt(c.cold.as_ref().map(|t| t.median_ms), 4),
                opt(c.cold_gb_per_s.or(Some(c.hot_gb_per_s)), 1),
                format!("{:.2}", c.hot_tflop_per_s),
                speedups,
                published,
                limit,
            ]);
        }
        out += &t.markdown();
    }
    if !report.end_to_end.is_empty() {
        out += "\n## End to end: `dsv3` forward steps\n\n";
        let mut t = Table::new(&[
            "model",
            "backend",
            "phase",
            "batch",
            "context",
            "tokens/step",
            "median ms",
            "tokens/s",
            "roofline tokens/s",
        ]);
        for e in &report.end_to_end {
            t.row(vec![
                e.model.clone(),
                e.backend.clone(),
                e.phase.clone(),
                e.batch.to_string(),
                e.context.to_string(),
                e.tokens_per_step.to_string(),
                format!("{:.4}", e.step.median_ms),
                format!("{:.1}", e.tokens_per_s),
                e.roofline_tokens_per_s
                    .map_or("-".into(), |r| format!("{r:.1}")),
            ]);
        }
        out += &t.markdown();
        if report
            .end_to_end
            .iter()
            .any(|e| e.roofline_tokens_per_s.is_some())
        {
            out += "\nRoofline: the weight and KV bytes a decode step must read at the measured \
                    copy bandwidth (the full-width report has the per-op breakdown).\n";
        }
    }
    if !report.sub_reports.is_empty() {
        out += "\n## Model benchmarks written with this run\n\n";
        for r in &report.sub_reports {
            out += &format!("- [{}]({}): {}\n", r.title, r.path, r.summary);
        }
    }
    if !report.skipped.is_empty() {
        out += "\n## Not run\n\n";
        let mut t = Table::new(&["case", "why"]);
        for s in &report.skipped {
            t.row(vec![s.case.clone(), s.why.clone()]);
        }
        out += &t.markdown();
    }
    out
}

/// One chart per suite and metric: GB/s for every suite, TFLOP/s too where a suite has
/// compute-heavy cases (GEMMs).
fn charts(report: &Report) -> Vec<(String, BarChart)> {
    let copy = report.ceiling(COPY).and_then(|c| c.gb_per_s);
    let bf16 = report.ceiling(GEMM).and_then(|c| c.tflop_per_s);
    let backend = if report.device.is_some() {
        device_name(report)
    } else {
        "CPU reference (no GPU)".to_string()
    };
    let mut suites: Vec<String> = Vec::new();
    for c in &report.cases {
        if !suites.contains(&c.suite) {
            suites.push(c.suite.clone());
        }
    }
    let mut out = Vec::new();
    for suite in suites {
        let cases: Vec<&CaseResult> = report.cases.iter().filter(|c| c.suite == suite).collect();
        let compute_heavy = cases.iter().any(|c| c.flops > 50.0 * c.bytes);
        let mut metrics = vec!["GB/s"];
        if compute_heavy {
            metrics.push("TFLOP/s");
        }
        for unit in metrics {
            let mut categories: Vec<(String, String)> = Vec::new();
            let mut impls: Vec<String> = Vec::new();
            for c in &cases {
                let key = (c.kernel.clone(), c.shape.clone());
                if !categories.contains(&key) {
                    categories.push(key);
                }
                if !impls.contains(&c.implementation) {
                    impls.push(c.implementation.clone());
                }
            }
            let value = |c: &CaseResult| match unit {
                "GB/s" => c.cold_gb_per_s.unwrap_or(c.hot_gb_per_s),
                _ => c.hot_tflop_per_s,
            };
            let mut series: Vec<(String, Vec<Option<f64>>)> = impls
                .iter()
                .map(|imp| {
                    let vals = categories
                        .iter()
                        .map(|(k, s)| {
                            cases
                                .iter()
                                .find(|c| {
                                    c.kernel == *k && c.shape == *s && c.implementation == *imp
                                })
                                .map(|c| value(c))
                        })
                        .collect();
                    (imp.clone(), vals)
                })
                .collect();
            let published: Vec<Option<f64>> = categories
                .iter()
                .map(|(k, s)| {
                    anchors::find(k, s)
                        .filter(|a| a.unit == unit)
                        .map(|a| a.value)
                })
                .collect();
            // Published GPU figures next to CPU timings would only dwarf them: GPU runs only.
            if report.device.is_some() && published.iter().any(Option::is_some) {
                series.push(("DeepGEMM, H800 (published)".into(), published));
            }
            let mut lines = Vec::new();
            match (unit, copy, bf16) {
                ("GB/s", Some(c), _) => lines.push(("copy bandwidth (measured)".to_string(), c)),
                ("TFLOP/s", _, Some(b)) => {
                    lines.push(("BF16 cuBLAS 8192^3 (measured)".to_string(), b));
                    lines.push(("FP8 rate = 2x BF16".to_string(), 2.0 * b));
                }
                _ => {}
            }
            let stem = format!(
                "{}-{}",
                suite,
                if unit == "GB/s" { "gbps" } else { "tflops" }
            );
            out.push((
                stem,
                BarChart {
                    title: format!("{suite}: {unit} per case, {backend}"),
                    x_label: if unit == "GB/s" {
                        "GB/s (minimal bytes / median time; cold cache where measured)".into()
                    } else {
                        "TFLOP/s (2*M*N*K / median time, hot)".into()
                    },
                    categories: categories.iter().map(|(k, s)| format!("{k} {s}")).collect(),
                    series,
                    lines,
                },
            ));
        }
    }
    if let Some(chart) = end_to_end_chart(report, &backend) {
        out.push(("end-to-end-decode".into(), chart));
    }
    out
}

/// Decode tokens/s per batch against the roofline (GPU runs with roofline figures only).
fn end_to_end_chart(report: &Report, backend: &str) -> Option<BarChart> {
    let decode: Vec<_> = report
        .end_to_end
        .iter()
        .filter(|e| e.phase == "decode" && e.roofline_tokens_per_s.is_some())
        .collect();
    if decode.is_empty() {
        return None;
    }
    Some(BarChart {
        title: format!("dsv3 decode: tokens/s per batch vs the roofline, {backend}"),
        x_label: "tokens/s (batch / median step time)".into(),
        categories: decode
            .iter()
            .map(|e| format!("batch {} ctx {} ({})", e.batch, e.context, e.model))
            .collect(),
        series: vec![
            (
                "measured".into(),
                decode.iter().map(|e| Some(e.tokens_per_s)).collect(),
            ),
            (
                "roofline (bytes / copy bandwidth)".into(),
                decode.iter().map(|e| e.roofline_tokens_per_s).collect(),
            ),
        ],
        lines: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{CaseResult, Ceiling, Method, Report};
    use kernels::stats::TimingStats;

    fn timing(ms: f64) -> TimingStats {
        TimingStats {
            median_ms: ms,
            min_ms: ms * 0.9,
            max_ms: ms * 1.2,
            reps: 10,
        }
    }

    fn case(
        kernel: &str,
        implementation: &str,
        shape: &str,
        ms: f64,
        bytes: f64,
        flops: f64,
    ) -> CaseResult {
        let gbps = bytes / (ms * 1e-3) / 1e9;
        CaseResult {
            suite: "fp8-gemm".into(),
            kernel: kernel.into(),
            implementation: implementation.into(),
            case: format!("{kernel}/{shape}"),
            shape: shape.into(),
            bytes,
            flops,
            hot: timing(ms),
            cold: Some(timing(ms * 1.1)),
            hot_gb_per_s: gbps,
            cold_gb_per_s: Some(gbps / 1.1),
            hot_tflop_per_s: flops / (ms * 1e-3) / 1e12,
            cold_tflop_per_s: None,
            cold_fraction_of_copy: None,
            check: None,
            fraction_of_floor: None,
            limit: None,
            speedup_vs_peers: Default::default(),
        }
    }

    const F: f64 = 2.0 * 4096.0 * 4096.0 * 7168.0;

    /// A GPU-shaped report (the renderer's input; the numbers are arbitrary test data).
    fn sample_report() -> Report {
        let ceiling = |name: &str, gbps: Option<f64>, tflops: Option<f64>| Ceiling {
            name: name.into(),
            shape: "-".into(),
            timing: Some(timing(1.0)),
            bytes: 0.0,
            flops: 0.0,
            gb_per_s: gbps,
            tflop_per_s: tflops,
            check: Some("ok".into()),
            skipped: None,
        };
        let (b, f) = (1.0e8, F);
        Report {
            tool: "harness bench".into(),
            schema_version: 1,
            date_utc: "2026-11-23T00:00:00Z".into(),
            commit: "test".into(),
            backend: "cuda".into(),
            backend_note: None,
            host_cpus: 16,
            device: Some(serde_json::json!({"name": "Test GPU", "multiprocessors": 132})),
            method: Method {
                warmup: 1,
                reps: 10,
                timing: "events".into(),
                l2_flush_bytes: Some(1 << 28),
            },
            ceilings: vec![
                ceiling(COPY, Some(3000.0), None),
                ceiling(GEMM, None, Some(700.0)),
            ],
            cases: vec![
                case("fp8_gemm_nt", "ours", "4096x4096x7168", 0.2, b, f),
                case("fp8_gemm_nt", "cublas_bf16", "4096x4096x7168", 0.4, b, f),
            ],
            skipped: Vec::new(),
            end_to_end: vec![crate::end_to_end::EndToEnd {
                model: "tiny".into(),
                backend: "cpu exact".into(),
                phase: "decode".into(),
                batch: 8,
                context: 128,
                tokens_per_step: 8,
                step: kernels::stats::TimingStats::from_samples(&[2.0, 2.0, 2.0]),
                tokens_per_s: 4000.0,
                roofline_tokens_per_s: Some(9000.0),
            }],
            sub_reports: vec![crate::end_to_end::SubReport {
                title: "MTP".into(),
                path: "mtp-step-cost/MTP-STEP-COST.md".into(),
                summary: "projected 1.9x".into(),
            }],
        }
    }

    #[test]
    fn report_round_trips_through_results_json() {
        let dir = std::env::temp_dir().join(format!("harness-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut report = sample_report();
        let files = write_all(&dir, &mut report).unwrap();
        assert!(files
            .iter()
            .all(|f| std::fs::metadata(f).unwrap().len() > 0));
        assert_eq!(report.cases[0].speedup_vs_peers["cublas_bf16"], 2.0);
        let frac = report.cases[0].fraction_of_floor.unwrap();
        // Compute floor: 2*4096*4096*7168 flops at 2 x 700 TFLOP/s over the cold 0.22 ms.
        let expect = F / (1400.0e12) / 0.22e-3;
        assert!((frac - expect).abs() < 1e-9, "{frac} vs {expect}");
        let first = std::fs::read_to_string(dir.join(REPORT)).unwrap();
        assert!(first.contains("## fp8-gemm: `fp8_gemm_nt`"));
        assert!(first.contains("2.00x cublas_bf16"));
        assert!(first.contains("## End to end") && first.contains("4000.0"));
        assert!(first.contains("1304 TFLOP/s (DeepGEMM README, H800 (published))"));
        regenerate(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(REPORT)).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_results_file_is_a_clear_error() {
        let err = regenerate(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(err.contains("results.json"), "{err}");
    }
}
