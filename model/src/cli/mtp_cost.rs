//! `dsv3 bench --mtp-cost`: the CLI side of the MTP verify-step cost measurement
//! ([`crate::mtp_cost`]) on a loaded model (CPU, or CUDA with `--backend cuda`) or on the
//! full-width synthetic model (`--synthetic full-width`, CUDA).

use std::path::PathBuf;

use super::load::{load_model, LoadedWeights};
use super::ModelArgs;
use crate::engine::Backend;
use crate::error::{ModelError, Result};
use crate::mtp_cost::{
    check_forced, check_options, current_commit, forced_acceptance, kv_blocks_needed,
    measure_step_costs, parse_batches, shape_json, write_report, ContextFill, MtpCostReport,
    StepCostOptions, CPU_BATCHES, CPU_CONTEXT, GPU_BATCHES, GPU_CONTEXT, MAX_VERIFY_LEN,
};

/// Untimed calls before the timed ones.
pub const WARMUP: usize = 3;
/// Seed of the token ids (and of the synthetic weights).
pub const SEED: u64 = 0x5eed_0317_c057;

/// The options of `bench` that `--mtp-cost` reads.
#[derive(Clone, Debug)]
pub struct MtpCostArgs {
    pub layers: usize,
    /// `--batches 1,32,128`.
    pub batches: Option<String>,
    /// `--batch B`: one batch size.
    pub batch: Option<usize>,
    /// Prompt of the forced-acceptance runs (default: the context).
    pub prompt_len: Option<usize>,
    pub context: Option<usize>,
    /// Timed calls per measurement; new tokens of the short forced-acceptance run.
    pub steps: usize,
    pub json: bool,
    pub out: Option<PathBuf>,
}

impl MtpCostArgs {
    /// The batch sizes asked for, if any.
    fn batch_list(&self) -> Result<Option<Vec<usize>>> {
        match (&self.batches, self.batch) {
            (Some(text), _) => parse_batches(text).map(Some),
            (None, Some(0)) => Err(ModelError::request("--batch must be >= 1")),
            (None, Some(b)) => Ok(Some(vec![b])),
            (None, None) => Ok(None),
        }
    }

    /// The measurement options with the defaults of a GPU or of the CPU.
    fn options(&self, on_gpu: bool, fill: ContextFill) -> Result<StepCostOptions> {
        let (batches, context) = if on_gpu {
            (GPU_BATCHES.to_vec(), GPU_CONTEXT)
        } else {
            (CPU_BATCHES.to_vec(), CPU_CONTEXT)
        };
        Ok(StepCostOptions {
            batches: self.batch_list()?.unwrap_or(batches),
            context: self.context.unwrap_or(context),
            warmup: WARMUP,
            reps: self.steps,
            fill,
            seed: SEED,
        })
    }
}

/// Runs `bench --mtp-cost` and prints (and with `--out`, writes) the report.
pub fn bench_mtp_cost(m: &ModelArgs, synthetic: Option<&str>, args: &MtpCostArgs) -> Result<()> {
    let report = match synthetic {
        Some(kind) => synthetic_report(kind, args)?,
        None => model_report(m, args)?,
    };
    if let Some(dir) = &args.out {
        write_report(dir, &report)?;
        eprintln!(
            "wrote {} and {}",
            dir.join("mtp-step-cost.json").display(),
            dir.join("MTP-STEP-COST.md").display()
        );
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn is_gpu(w: &LoadedWeights) -> bool {
    match w {
        LoadedWeights::Cpu(_) | LoadedWeights::World(_) => false,
        #[cfg(feature = "cuda")]
        LoadedWeights::Cuda(..) => true,
    }
}

/// The measurement on `--model DIR` or the built-in model, on the backend `--backend` picks.
fn model_report(m: &ModelArgs, args: &MtpCostArgs) -> Result<MtpCostReport> {
    super::commands::set_threads(m.threads)?;
    let loaded = load_model(m, false)?;
    let mut opts = args.options(is_gpu(&loaded.model), ContextFill::Prefill)?;
    if args.context.is_none() {
        // The default context (4096 on a GPU) leaves room inside the model's positions for a
        // verify step and for the forced-acceptance run's new tokens (twice --steps): the
        // built-in tiny model has 512 (on a GPU, or in the interpreter build, the default used
        // to be refused as out of range).
        let limit = loaded.model.config().max_position_embeddings;
        let room = MAX_VERIFY_LEN + 2 * args.steps;
        opts.context = opts.context.min(limit.saturating_sub(room)).max(1);
    }
    check_options(&opts, loaded.model.config(), usize::MAX)?;
    let prompt_len = args.prompt_len.unwrap_or(opts.context);
    if loaded.model.config().num_nextn_predict_layers > 0 {
        check_forced(loaded.model.config(), prompt_len, args.steps)?;
    }
    let blocks = m
        .kv_blocks
        .unwrap_or_else(|| kv_blocks_needed(&opts, prompt_len, args.steps));
    let model = loaded.source.clone();
    let (mut engine, _) = loaded.into_engine(blocks)?;
    let costs = measure_step_costs(&mut engine, &opts, &mut |line| eprintln!("{line}"))?;
    let mut notes = Vec::new();
    let forced = if engine.backend().has_mtp() {
        eprintln!("forced acceptance: batch 1, prompt {prompt_len}");
        Some(forced_acceptance(
            &mut engine,
            prompt_len,
            args.steps,
            SEED,
        )?)
    } else {
        notes.push(NO_MTP_NOTE.to_string());
        None
    };
    notes.push(format!(
        "the caches are filled by a prefill of {} tokens per sequence (and the MTP module over \
         the same positions)",
        opts.context
    ));
    if model.contains("random") {
        notes.push(
            "the built-in tiny model has random weights: the timings are those of its shapes"
                .into(),
        );
    }
    let cfg = engine.config();
    Ok(MtpCostReport {
        backend: engine.backend().describe(),
        model,
        commit: current_commit(),
        shape: shape_json(cfg),
        context: opts.context,
        warmup: opts.warmup,
        reps: opts.reps,
        costs,
        forced,
        notes,
    })
}

/// What the report says when the model has no MTP module.
pub const NO_MTP_NOTE: &str = "the model has no MTP layer: the draft step is not measured (the \
    projections use T_draft = 0, an upper bound) and there is no forced-acceptance run";

#[cfg(not(feature = "cuda"))]
fn synthetic_report(kind: &str, args: &MtpCostArgs) -> Result<MtpCostReport> {
    super::synthetic::check_kind(kind)?;
    crate::fullwidth::full_width_config(args.layers)?;
    args.options(true, ContextFill::Preset)?;
    Err(ModelError::request(super::synthetic::NEEDS_CUDA))
}

#[cfg(feature = "cuda")]
fn synthetic_report(kind: &str, args: &MtpCostArgs) -> Result<MtpCostReport> {
    use crate::cuda::synthetic::{run_mtp_cost, MtpCostOptions};

    super::synthetic::check_kind(kind)?;
    crate::fullwidth::full_width_config(args.layers)?;
    let steps = args.options(true, ContextFill::Preset)?;
    let gpu = super::backend::cli_gpu().map_err(|why| {
        ModelError::request(format!(
            "--synthetic full-width --mtp-cost needs a CUDA device (Hopper, sm_90): {why}"
        ))
    })?;
    let opts = MtpCostOptions {
        layers: args.layers,
        prompt_len: args.prompt_len.unwrap_or(steps.context),
        new_tokens: args.steps,
        steps,
    };
    run_mtp_cost(gpu, &opts, &mut |line| eprintln!("{line}"))
}
