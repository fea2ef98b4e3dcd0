//! End-to-end numbers: the model's tokens/s. Without a GPU this is the CPU backend on the
//! built-in tiny model (random weights, generated in memory), labelled CPU in the report. On a
//! GPU it is `dsv3 bench --synthetic full-width` (random FP8 weights at DeepSeek-V3's real
//! dimensions, prefill 4096 and decode at batch 1/32/128 over 4096 cached tokens, with the decode
//! roofline) and `--mtp-cost` (the MTP verify-step costs), run in the harness's process; their
//! own reports are written next to the harness report and linked from it.

use kernels::stats::TimingStats;
use model::cpu::{CpuModel, Precision, SeqChunk};
use model::engine::{Backend, CpuBackend, LogitRows};
use model::Checkpoint;

/// One end-to-end measurement: the median time of a forward step and the tokens/s it gives.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EndToEnd {
    pub model: String,
    /// `cpu exact (2 threads)` and the like.
    pub backend: String,
    /// `prefill` (the prompt in one step) or `decode` (one new token per sequence).
    pub phase: String,
    pub batch: usize,
    /// Tokens already in each sequence's KV cache before the step.
    pub context: usize,
    /// New tokens per step, over the batch.
    pub tokens_per_step: usize,
    pub step: TimingStats,
    pub tokens_per_s: f64,
    /// Decode on the GPU: tokens/s if the step ran at the measured copy bandwidth over the
    /// weight and KV bytes it must touch (absent on the CPU and in older reports).
    #[serde(default)]
    pub roofline_tokens_per_s: Option<f64>,
}

/// A report written next to the harness's own (a `dsv3` benchmark's), linked from REPORT.md.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SubReport {
    pub title: String,
    /// Relative to the report directory.
    pub path: String,
    /// One line: what it found.
    pub summary: String,
}

const MODEL: &str = "built-in tiny (random weights)";

/// Prefill and decode steps of the built-in model on the CPU backend, both precisions.
pub fn run_cpu(quick: bool, reps: usize) -> Result<Vec<EndToEnd>, String> {
    let dir = std::env::temp_dir().join(format!("harness-e2e-{}", std::process::id()));
    model::tiny::write_tiny(&dir, model::tiny::TINY_SEED).map_err(|e| e.to_string())?;
    let ckpt = Checkpoint::open(&dir).map_err(|e| e.to_string());
    let result = ckpt.and_then(|ckpt| {
        let mut out = Vec::new();
        for precision in [Precision::Exact, Precision::Fp8] {
            let model = CpuModel::load(&ckpt, precision).map_err(|e| e.to_string())?;
            out.extend(measure(model, quick, reps)?);
        }
        Ok(out)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(model: CpuModel, quick: bool, reps: usize) -> Result<Vec<EndToEnd>, String> {
    let prompt = 128;
    let batches: &[usize] = if quick { &[1] } else { &[1, 8, 32] };
    let blocks_per_seq = (prompt + 64) / 64 + 1;
    let max_batch = *batches.iter().max().unwrap_or(&1);
    let mut backend =
        CpuBackend::new(model, max_batch * blocks_per_seq).map_err(|e| e.to_string())?;
    let vocab = backend.config().vocab_size as u32;
    let tables: Vec<Vec<u32>> = (0..max_batch)
        .map(|b| ((b * blocks_per_seq) as u32..((b + 1) * blocks_per_seq) as u32).collect())
        .collect();
    let prompts: Vec<Vec<u32>> = (0..max_batch)
        .map(|b| {
            (0..prompt)
                .map(|i| ((b * 131 + i * 7) as u32) % vocab)
                .collect()
        })
        .collect();
    let mut out = Vec::new();

    // Prefill of one prompt; it also fills every sequence's cache for the decode steps.
    let time_step = |backend: &mut CpuBackend, chunks: &[SeqChunk]| -> Result<f32, String> {
        let t = std::time::Instant::now();
        backend
            .forward(chunks, LogitRows::Last)
            .map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f32() * 1e3)
    };
    let mut samples = Vec::new();
    for (b, (ids, blocks)) in prompts.iter().zip(&tables).enumerate() {
        let chunk = [SeqChunk {
            ids,
            start: 0,
            blocks,
        }];
        let ms = time_step(&mut backend, &chunk)?;
        if b < reps.max(1) {
            samples.push(ms);
        }
    }
    let step = TimingStats::from_samples(&samples);
    out.push(entry(&backend, "prefill", 1, 0, prompt, step));

    for &batch in batches {
        let next: Vec<[u32; 1]> = (0..batch).map(|b| [(b as u32 * 17 + 3) % vocab]).collect();
        let chunks: Vec<SeqChunk> = (0..batch)
            .map(|b| SeqChunk {
                ids: &next[b],
                start: prompt,
                blocks: &tables[b],
            })
            .collect();
        // Each repetition rewrites the same cache slot at position `prompt`: a decode step at a
        // fixed context.
        let samples = (0..reps.max(1))
            .map(|_| time_step(&mut backend, &chunks))
            .collect::<Result<Vec<f32>, String>>()?;
        let step = TimingStats::from_samples(&samples);
        out.push(entry(&backend, "decode", batch, prompt, batch, step));
    }
    Ok(out)
}

fn entry(
    backend: &CpuBackend,
    phase: &str,
    batch: usize,
    context: usize,
    tokens_per_step: usize,
    step: TimingStats,
) -> EndToEnd {
    let tokens_per_s = tokens_per_step as f64 / (step.median_ms * 1e-3);
    println!(
        "          {:<48} {:>10.4} ms  {tokens_per_s:>10.1} tokens/s",
        format!("dsv3 {phase} batch {batch} ({})", backend.describe()),
        step.median_ms
    );
    EndToEnd {
        model: MODEL.into(),
        backend: backend.describe(),
        phase: phase.into(),
        batch,
        context,
        tokens_per_step,
        step,
        tokens_per_s,
        roofline_tokens_per_s: None,
    }
}

#[cfg(feature = "cuda")]
pub use gpu::run_gpu;

#[cfg(feature = "cuda")]
mod gpu {
    use super::{EndToEnd, SubReport};
    use kernels::gpu::Gpu;
    use model::cuda::synthetic::{run_full_width, run_mtp_cost, FullWidthOptions, MtpCostOptions};

    /// Layers of the synthetic model (1 dense + 3 MoE, about 38 GB of weights).
    const LAYERS: usize = 4;
    /// Timed decode steps / calls per step kind.
    const REPS: usize = 32;
    const WARMUP: usize = 3;

    /// The full-width benchmark and the MTP step costs on `gpu`; each writes its own report
    /// under `out` (`full-width/`, `mtp-step-cost/`). A failing part is returned as a skip
    /// reason and the other still runs.
    pub fn run_gpu(
        gpu: &Gpu,
        out: &std::path::Path,
    ) -> (Vec<EndToEnd>, Vec<SubReport>, Vec<(String, String)>) {
        let (mut rows, mut subs, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        let mut log = |line: &str| println!("          {line}");

        println!("end to end: dsv3 bench --synthetic full-width --layers {LAYERS}");
        let opts = FullWidthOptions::standard(LAYERS, REPS);
        match run_full_width(gpu, &opts, &mut log)
            .and_then(|r| model::fullwidth::write_report(&out.join("full-width"), &r).map(|()| r))
        {
            Ok(report) => {
                let copy = report.copy_gb_per_s;
                for p in report.prefill.iter().chain(&report.decode) {
                    rows.push(EndToEnd {
                        model: format!(
                            "synthetic full-width ({LAYERS} layers, random FP8 weights)"
                        ),
                        backend: format!("cuda fp8 on {}", report.device),
                        phase: p.phase.into(),
                        batch: p.batch,
                        context: p.context,
                        tokens_per_step: p.tokens_per_call,
                        step: p.timing.clone(),
                        tokens_per_s: p.tokens_per_s(),
                        roofline_tokens_per_s: p
                            .roofline_ms(copy)
                            .map(|ms| p.tokens_per_call as f64 / (ms * 1e-3)),
                    });
                }
                subs.push(SubReport {
                    title: "Full-width synthetic model (per-op breakdown, roofline)".into(),
                    path: "full-width/REPORT.md".into(),
                    summary: report
                        .batch1_ratio()
                        .map_or("decode at batch 1 not measured".into(), |r| {
                            format!("decode at batch 1: {r:.2}x its roofline (target <= 1.3x)")
                        }),
                });
            }
            Err(e) => skipped.push(("dsv3 full-width".into(), e.to_string())),
        }

        println!("end to end: dsv3 bench --synthetic full-width --layers {LAYERS} --mtp-cost");
        let opts = MtpCostOptions::standard(LAYERS, REPS, WARMUP, 0x5eed_0317_c057);
        match run_mtp_cost(gpu, &opts, &mut log)
            .and_then(|r| model::mtp_cost::write_report(&out.join("mtp-step-cost"), &r).map(|()| r))
        {
            Ok(report) => subs.push(SubReport {
                title: "MTP verify-step costs and projected speedup".into(),
                path: "mtp-step-cost/MTP-STEP-COST.md".into(),
                summary: report
                    .target()
                    .map_or_else(|| "batch 1 not measured".into(), |t| t.sentence()),
            }),
            Err(e) => skipped.push(("dsv3 MTP step cost".into(), e.to_string())),
        }
        (rows, subs, skipped)
    }
}
