//! The data a benchmark run produces (`results.json`): written by `harness bench`, read back by
//! `harness report` to redraw REPORT.md and the plots on any machine.

use kernels::stats::TimingStats;

use crate::items::BenchItem;

/// Names of the two ceilings.
pub const COPY: &str = "dtod_copy";
pub const GEMM: &str = "cublas_bf16_gemm";

/// One timed case.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct CaseResult {
    pub suite: String,
    pub kernel: String,
    /// "ours" or the peer's name.
    pub implementation: String,
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
    /// Time of the roofline floor (bytes at the copy ceiling, flops at the compute rate) over
    /// the measured time; filled by [`derive_metrics`] when the ceilings were measured.
    #[serde(default)]
    pub fraction_of_floor: Option<f64>,
    /// What limits the case, in words (from the same roofline).
    #[serde(default)]
    pub limit: Option<String>,
    /// Ours only: peer's median time / ours, per peer of the same kernel and shape (> 1: ours
    /// is faster).
    #[serde(default)]
    pub speedup_vs_peers: std::collections::BTreeMap<String, f64>,
}

impl CaseResult {
    pub fn new(item: &BenchItem, hot: TimingStats, cold: Option<TimingStats>) -> Self {
        let gbps = |t: &TimingStats| item.bytes / (t.median_ms * 1e-3) / 1e9;
        let tflops = |t: &TimingStats| item.flops / (t.median_ms * 1e-3) / 1e12;
        CaseResult {
            suite: item.suite.to_string(),
            kernel: item.kernel.clone(),
            implementation: item.implementation.to_string(),
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
            fraction_of_floor: None,
            limit: None,
            speedup_vs_peers: Default::default(),
            hot,
            cold,
        }
    }
}

/// A case that did not run, and why.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub case: String,
    pub why: String,
}

/// A measured ceiling (or why it was not measured).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Ceiling {
    pub name: String,
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
    pub fn skipped(name: &str, shape: String, why: String) -> Self {
        Ceiling {
            name: name.to_string(),
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

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Method {
    pub warmup: usize,
    pub reps: usize,
    pub timing: String,
    pub l2_flush_bytes: Option<usize>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub tool: String,
    pub schema_version: u32,
    pub date_utc: String,
    pub commit: String,
    pub backend: String,
    /// Why the CPU backend ran, when it did.
    pub backend_note: Option<String>,
    pub host_cpus: usize,
    pub device: Option<serde_json::Value>,
    pub method: Method,
    pub ceilings: Vec<Ceiling>,
    pub cases: Vec<CaseResult>,
    pub skipped: Vec<Skipped>,
    /// The model's tokens/s (absent from reports written before it existed).
    #[serde(default)]
    pub end_to_end: Vec<crate::end_to_end::EndToEnd>,
    /// Reports written next to this one (the `dsv3` GPU benchmarks), linked from REPORT.md.
    #[serde(default)]
    pub sub_reports: Vec<crate::end_to_end::SubReport>,
}

impl CaseResult {
    /// The time the derived metrics judge: cold when measured (inputs from device memory), else
    /// hot.
    pub fn judged_ms(&self) -> f64 {
        self.cold
            .as_ref()
            .map_or(self.hot.median_ms, |t| t.median_ms)
    }
}

impl Report {
    pub fn ceiling(&self, name: &str) -> Option<&Ceiling> {
        self.ceilings.iter().find(|c| c.name == name)
    }
}

/// Compute rate (TFLOP/s) a case's flops are judged against: FP8 GEMMs at twice the measured
/// BF16 cuBLAS rate (Hopper's FP8 tensor cores run at twice the BF16 rate), BF16 GEMMs at the
/// measured rate, everything else memory-bound (its flops are negligible).
fn compute_rate(case: &CaseResult, bf16_tflops: f64) -> Option<(f64, &'static str)> {
    if case.implementation == "cublas_bf16" {
        Some((bf16_tflops, "BF16 rate (measured cuBLAS)"))
    } else if case.kernel.starts_with("fp8_gemm") {
        Some((2.0 * bf16_tflops, "FP8 rate (2x measured BF16 cuBLAS)"))
    } else if case.kernel.starts_with("mla_decode") {
        // BF16 tensor-core scores and value sums (H = 128 query rows share each KV entry).
        Some((bf16_tflops, "BF16 rate (measured cuBLAS)"))
    } else {
        None
    }
}

/// Fills the fields derived from the ceilings and the peers: copy fraction, roofline fraction and
/// limit, speedups. Idempotent; `harness report` reruns it on a read-back results.json.
pub fn derive_metrics(report: &mut Report) {
    let copy = report.ceiling(COPY).and_then(|c| c.gb_per_s);
    let bf16 = report.ceiling(GEMM).and_then(|c| c.tflop_per_s);
    let peers: Vec<(String, String, String, f64)> = report
        .cases
        .iter()
        .filter(|c| c.implementation != "ours")
        .map(|c| {
            (
                c.kernel.clone(),
                c.shape.clone(),
                c.implementation.clone(),
                c.hot.median_ms,
            )
        })
        .collect();
    for case in &mut report.cases {
        case.cold_fraction_of_copy = match (case.cold_gb_per_s, copy) {
            (Some(g), Some(c)) => Some(g / c),
            _ => None,
        };
        if let Some(copy) = copy {
            let t = case.judged_ms();
            let mem_ms = case.bytes / (copy * 1e9) * 1e3;
            let compute = bf16.and_then(|r| compute_rate(case, r));
            let cmp_ms = compute.map_or(0.0, |(rate, _)| case.flops / (rate * 1e12) * 1e3);
            let (floor_ms, what) = if cmp_ms > mem_ms {
                (cmp_ms, compute.map_or("compute", |(_, w)| w))
            } else {
                (mem_ms, "copy bandwidth (measured)")
            };
            let bound = if cmp_ms > mem_ms { "compute" } else { "memory" };
            case.fraction_of_floor = Some(floor_ms / t);
            case.limit = Some(format!(
                "{bound}-bound: the floor at the {what} is {floor_ms:.4} ms, {:.0}% of the measured {t:.4} ms",
                100.0 * floor_ms / t
            ));
        }
        if case.implementation == "ours" {
            case.speedup_vs_peers = peers
                .iter()
                .filter(|(k, s, _, _)| *k == case.kernel && *s == case.shape)
                .map(|(_, _, name, ms)| (name.clone(), ms / case.hot.median_ms))
                .collect();
        }
    }
}
