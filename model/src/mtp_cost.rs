//! The cost of an MTP verify step (`dsv3 bench --mtp-cost`), measured on any [`Backend`].
//!
//! Random weights give near-zero draft acceptance, so end-to-end tokens/s of speculative
//! decoding on them says nothing about the real model. What does carry over is the cost of the
//! steps: for every batch size, with the KV cache of every sequence filled to `C` tokens, this
//! times
//!
//! - a plain decode step (`S_q = 1`, the next token of each sequence drawn by
//!   [`Backend::forward_and_sample`] with greedy draws, as [`Engine::generate`] runs it: on
//!   CUDA only the ids come back),
//! - verify steps with `S_q = 2` and `S_q = 3` (one and two drafts; every row's logits and the
//!   final hidden states, as `generate_speculative` runs them),
//! - the MTP draft step (one [`Backend::mtp_forward`] of one token per sequence) when the
//!   backend has MTP,
//!
//! each the median of repeated calls after warm-up, with the KV lengths rolled back (allocator
//! truncated to `C`) after every call so the context stays `C`. Every backend call returns host
//! data (ids, logits), so the host clock around it measures the whole step, synchronisation and
//! downloads included. [`project`] turns the medians into the speedup speculative decoding would
//! reach at the acceptance rates DeepSeek reports, and [`forced_acceptance`] measures real
//! end-to-end tokens/s at (close to) 100% acceptance with the verifier's own tokens as drafts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use kernels::reference::sampling::SamplingParams;
use kernels::rng::splitmix64;
use kernels::stats::TimingStats;
use mla_attention::{KvCacheAllocator, SeqId};
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::cpu::SeqChunk;
use crate::engine::{Backend, Engine, GenerationStats, LogitRows, Request, TokenDraw};
use crate::error::{ModelError, Result};
use crate::speculative::{Drafter, SpecConfig};

/// Second-token acceptance rates DeepSeek reports for V3's MTP module (85% to 90%).
pub const ACCEPTANCES: [f64; 2] = [0.85, 0.90];
/// Drafts per step projected (a verify step of `D + 1` tokens).
pub const DRAFT_STEPS: [usize; 2] = [1, 2];
/// The longest verify step measured (`S_q` for the most drafts).
pub const MAX_VERIFY_LEN: usize = 3;
/// The target: projected speedup at [`TARGET_ACCEPTANCE`], batch 1, one draft (DeepSeek's
/// setting, which reports 1.8x tokens/s).
pub const TARGET_SPEEDUP: f64 = 1.8;
pub const TARGET_ACCEPTANCE: f64 = 0.85;
/// Defaults on a GPU (the full-width synthetic model) and on the CPU (small models).
pub const GPU_BATCHES: [usize; 3] = [1, 32, 128];
pub const GPU_CONTEXT: usize = 4096;
pub const CPU_BATCHES: [usize; 2] = [1, 4];
pub const CPU_CONTEXT: usize = 64;

/// Expected tokens one speculative step emits with `drafts` drafts when each draft is accepted
/// with probability `acceptance` given that every draft before it was:
/// `E = 1 + a + a^2 + ... + a^D` (the verifier's own token always counts).
pub fn expected_tokens(acceptance: f64, drafts: usize) -> f64 {
    (0..=drafts).map(|k| acceptance.powi(k as i32)).sum()
}

/// One projected speedup.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Projection {
    pub acceptance: f64,
    pub drafts: usize,
    /// `E`, tokens per speculative step.
    pub expected_tokens: f64,
    /// `T`, milliseconds per speculative step.
    pub step_ms: f64,
    /// Speculative tokens/s over plain decode tokens/s.
    pub speedup: f64,
}

/// The speedup of speculative decoding with `drafts` (`D`) drafts per step over plain decoding,
/// at per-draft acceptance `acceptance` (`a`):
///
/// ```text
/// E       = 1 + a + a^2 + ... + a^D               tokens per speculative step
/// T       = T_verify(S_q = D + 1) + D * T_draft   milliseconds per speculative step
/// speedup = (E / T) / (1 / T_decode) = E * T_decode / T
/// ```
///
/// This assumes the drafts are accepted independently, each with probability `a` (so draft `k`
/// survives with `a^k`), and that a step costs one verify pass plus `D` one-token MTP passes:
/// the MTP catch-up after a step with `k` accepted drafts runs over `k + 1` positions, which costs
/// about one draft pass at decode batch sizes, and the host-side acceptance test is not counted.
pub fn project(
    decode_ms: f64,
    verify_ms: f64,
    draft_ms: f64,
    acceptance: f64,
    drafts: usize,
) -> Projection {
    let expected = expected_tokens(acceptance, drafts);
    let step_ms = verify_ms + drafts as f64 * draft_ms;
    Projection {
        acceptance,
        drafts,
        expected_tokens: expected,
        step_ms,
        speedup: expected * decode_ms / step_ms,
    }
}

/// Parses `--batches 1,32,128`: positive integers, comma separated.
pub fn parse_batches(text: &str) -> Result<Vec<usize>> {
    let batches = text
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, s)| match s.parse::<usize>() {
            Ok(b) if b > 0 => Ok(b),
            _ => Err(ModelError::request(format!(
                "--batches `{text}`: entry {i} `{s}` is not a batch size (a positive integer)"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(batches)
}

/// How the KV caches get their `C` tokens before the timed steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextFill {
    /// Run every sequence's `C` tokens through the model (and the MTP module) first.
    Prefill,
    /// The caller already filled every cache block (random entries on the device): the steps
    /// only set the positions. Timing depends on the cache length, not on its values.
    Preset,
}

/// What [`measure_step_costs`] measures.
#[derive(Clone, Debug)]
pub struct StepCostOptions {
    pub batches: Vec<usize>,
    /// `C`, tokens in the cache of every sequence.
    pub context: usize,
    /// Untimed calls before the timed ones, per step kind and batch.
    pub warmup: usize,
    /// Timed calls per step kind and batch (the median is reported).
    pub reps: usize,
    pub fill: ContextFill,
    /// Seed of the token ids and the MTP input hidden states.
    pub seed: u64,
}

/// Checks the options against the model's context limit and the KV cache (`free_blocks`).
pub fn check_options(opts: &StepCostOptions, cfg: &ModelConfig, free_blocks: usize) -> Result<()> {
    if opts.batches.is_empty() || opts.batches.contains(&0) {
        return Err(ModelError::request(format!(
            "--batches {:?}: give at least one batch size, each >= 1",
            opts.batches
        )));
    }
    if opts.context == 0 || opts.reps == 0 {
        return Err(ModelError::request(
            "--context and --steps (timed repetitions) must be >= 1",
        ));
    }
    let limit = cfg.max_position_embeddings;
    if opts.context + MAX_VERIFY_LEN > limit {
        return Err(ModelError::request(format!(
            "--context {}: a verify step of {MAX_VERIFY_LEN} tokens after it reaches position {}, \
             past the model's limit max_position_embeddings = {limit}",
            opts.context,
            opts.context + MAX_VERIFY_LEN
        )));
    }
    let largest = opts.batches.iter().copied().max().unwrap_or(0);
    let need = largest * KvCacheAllocator::blocks_for(opts.context + MAX_VERIFY_LEN);
    if need > free_blocks {
        return Err(ModelError::request(format!(
            "the KV cache is too small: batch {largest} at --context {} needs {need} blocks of 64 \
             tokens ({} per sequence), the cache has {free_blocks} free (raise --kv-blocks or \
             lower --batches / --context)",
            opts.context,
            need / largest
        )));
    }
    Ok(())
}

/// KV blocks for the step-cost measurement (the largest batch at `C + 3` tokens) or, if more,
/// for the forced-acceptance runs (one sequence of `prompt_len + 2 * new_tokens` tokens and
/// its drafts); they run one after the other.
pub fn kv_blocks_needed(opts: &StepCostOptions, prompt_len: usize, new_tokens: usize) -> usize {
    let largest = opts.batches.iter().copied().max().unwrap_or(1);
    let steps = largest * KvCacheAllocator::blocks_for(opts.context + MAX_VERIFY_LEN);
    let forced = KvCacheAllocator::blocks_for(prompt_len + 2 * new_tokens + MAX_VERIFY_LEN);
    steps.max(forced)
}

/// One kind of timed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Decode,
    /// A verify step of `S_q` tokens per sequence.
    Verify(usize),
    /// One MTP pass of one token per sequence.
    Draft,
}

impl Step {
    fn tokens(self) -> usize {
        match self {
            Step::Decode | Step::Draft => 1,
            Step::Verify(s_q) => s_q,
        }
    }
}

/// The medians of one batch size.
#[derive(Clone, Debug)]
pub struct BatchCost {
    pub batch: usize,
    pub decode: TimingStats,
    pub verify2: TimingStats,
    pub verify3: TimingStats,
    /// `None` when the backend has no MTP module.
    pub draft: Option<TimingStats>,
}

impl BatchCost {
    /// The step-cost row shared by the text table and the markdown report: batch, the four
    /// medians (ms) and the three ratios to the decode step ("-" without an MTP draft).
    fn cells(&self) -> [String; 8] {
        let dec = self.decode.median_ms;
        let draft = self.draft.as_ref().map(|t| t.median_ms);
        [
            self.batch.to_string(),
            format!("{dec:.3}"),
            format!("{:.3}", self.verify2.median_ms),
            format!("{:.3}", self.verify3.median_ms),
            draft.map_or("-".into(), |d| format!("{d:.3}")),
            format!("{:.3}", self.verify2.median_ms / dec),
            format!("{:.3}", self.verify3.median_ms / dec),
            draft.map_or("-".into(), |d| format!("{:.3}", d / dec)),
        ]
    }

    /// The verify step of `drafts` drafts (`S_q = drafts + 1`).
    pub fn verify(&self, drafts: usize) -> &TimingStats {
        if drafts <= 1 {
            &self.verify2
        } else {
            &self.verify3
        }
    }

    /// Draft milliseconds used by the projections (0 without MTP: an upper bound).
    pub fn draft_ms(&self) -> f64 {
        self.draft.as_ref().map_or(0.0, |t| t.median_ms)
    }

    /// Every projection: [`ACCEPTANCES`] x [`DRAFT_STEPS`].
    pub fn projections(&self) -> Vec<Projection> {
        ACCEPTANCES
            .iter()
            .flat_map(|&a| {
                DRAFT_STEPS.iter().map(move |&d| {
                    project(
                        self.decode.median_ms,
                        self.verify(d).median_ms,
                        self.draft_ms(),
                        a,
                        d,
                    )
                })
            })
            .collect()
    }

    fn projection(&self, acceptance: f64, drafts: usize) -> Option<Projection> {
        self.projections()
            .into_iter()
            .find(|p| p.acceptance == acceptance && p.drafts == drafts)
    }

    fn to_json(&self) -> Value {
        let decode = self.decode.median_ms;
        json!({
            "batch": self.batch,
            "decode": self.decode,
            "verify_s2": self.verify2,
            "verify_s3": self.verify3,
            "draft": self.draft,
            "ratio_verify2_over_decode": self.verify2.median_ms / decode,
            "ratio_verify3_over_decode": self.verify3.median_ms / decode,
            "ratio_draft_over_decode": self.draft.as_ref().map(|t| t.median_ms / decode),
            "projections": self.projections(),
        })
    }
}

/// A deterministic token id of sequence `seq` at position `pos`.
fn token(seed: u64, seq: usize, pos: usize, vocab: usize) -> u32 {
    (splitmix64(seed ^ splitmix64((seq as u64) << 32 | pos as u64)) % vocab as u64) as u32
}

/// Deterministic MTP input hidden states in [-1, 1) (the draft's cost does not depend on them).
fn draft_input(seed: u64, len: usize) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            (splitmix64(seed ^ i.wrapping_mul(0x9e37)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Times every step kind at every batch size of `opts`; `log` gets a line per measurement.
pub fn measure_step_costs<B: Backend>(
    engine: &mut Engine<B>,
    opts: &StepCostOptions,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<BatchCost>> {
    check_options(opts, engine.config(), engine.alloc.free_blocks())?;
    opts.batches
        .iter()
        .map(|&batch| {
            let cost = measure_batch(engine, opts, batch)?;
            log(&format!(
                "batch {batch}, context {}: decode {:.3} ms, verify S_q=2 {:.3} ms ({:.2}x), \
                 S_q=3 {:.3} ms ({:.2}x), draft {}",
                opts.context,
                cost.decode.median_ms,
                cost.verify2.median_ms,
                cost.verify2.median_ms / cost.decode.median_ms,
                cost.verify3.median_ms,
                cost.verify3.median_ms / cost.decode.median_ms,
                cost.draft
                    .as_ref()
                    .map_or("- (no MTP)".into(), |t| format!("{:.3} ms", t.median_ms))
            ));
            Ok(cost)
        })
        .collect()
}

/// One batch size: sequences of `C` tokens, each step kind timed, the sequences freed however
/// it ends.
fn measure_batch<B: Backend>(
    engine: &mut Engine<B>,
    opts: &StepCostOptions,
    batch: usize,
) -> Result<BatchCost> {
    let mut seqs = Vec::with_capacity(batch);
    let result = (|| {
        for _ in 0..batch {
            seqs.push(engine.start_sequence(opts.context)?);
        }
        if opts.fill == ContextFill::Prefill {
            prefill_context(engine, &seqs, opts)?;
        }
        Ok(BatchCost {
            batch,
            decode: time_step(engine, &seqs, opts, Step::Decode)?,
            verify2: time_step(engine, &seqs, opts, Step::Verify(2))?,
            verify3: time_step(engine, &seqs, opts, Step::Verify(3))?,
            draft: if engine.backend.has_mtp() {
                Some(time_step(engine, &seqs, opts, Step::Draft)?)
            } else {
                None
            },
        })
    })();
    for s in seqs {
        let _ = engine.alloc.free(s);
    }
    result
}

/// Writes positions `0..C` of every sequence: the main model over its `C` tokens, then the MTP
/// module over the same positions with the main model's hidden states.
fn prefill_context<B: Backend>(
    engine: &mut Engine<B>,
    seqs: &[SeqId],
    opts: &StepCostOptions,
) -> Result<()> {
    let (c, vocab) = (opts.context, engine.config().vocab_size);
    for (i, &seq) in seqs.iter().enumerate() {
        let ids: Vec<u32> = (0..=c).map(|p| token(opts.seed, i, p, vocab)).collect();
        let blocks = engine.alloc.blocks(seq).unwrap_or_default().to_vec();
        let chunk = SeqChunk {
            ids: &ids[..c],
            start: 0,
            blocks: &blocks,
        };
        let backend = &mut engine.backend;
        if backend.has_mtp() {
            let (h, _) = backend.forward_with_hidden(&[chunk], LogitRows::Last)?;
            let next = SeqChunk {
                ids: &ids[1..],
                ..chunk
            };
            backend.mtp_forward(&h, &[next], LogitRows::Last)?;
        } else {
            backend.forward(&[chunk], LogitRows::Last)?;
        }
    }
    Ok(())
}

/// `warmup + reps` calls of `step` at position `C` of every sequence; the KV lengths are rolled
/// back to `C` after each.
fn time_step<B: Backend>(
    engine: &mut Engine<B>,
    seqs: &[SeqId],
    opts: &StepCostOptions,
    step: Step,
) -> Result<TimingStats> {
    let (c, tokens) = (opts.context, step.tokens());
    let vocab = engine.config().vocab_size;
    let ids: Vec<Vec<u32>> = (0..seqs.len())
        .map(|i| {
            (c..c + tokens)
                .map(|p| token(opts.seed, i, p, vocab))
                .collect()
        })
        .collect();
    let hidden = match step {
        Step::Draft => draft_input(opts.seed, seqs.len() * engine.config().hidden_size),
        _ => Vec::new(),
    };
    let mut samples = Vec::with_capacity(opts.reps);
    for rep in 0..opts.warmup + opts.reps {
        for &s in seqs {
            engine.extend(s, tokens)?;
        }
        let blocks: Vec<Vec<u32>> = seqs
            .iter()
            .map(|&s| engine.alloc.blocks(s).unwrap_or_default().to_vec())
            .collect();
        let chunks: Vec<SeqChunk> = ids
            .iter()
            .zip(&blocks)
            .map(|(ids, blocks)| SeqChunk {
                ids,
                start: c,
                blocks,
            })
            .collect();
        let t0 = Instant::now();
        run_step(&mut engine.backend, step, &chunks, &hidden)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        for &s in seqs {
            engine.alloc.truncate(s, c)?;
        }
        if rep >= opts.warmup {
            samples.push(ms as f32);
        }
    }
    Ok(TimingStats::from_samples(&samples))
}

/// One step as the engine runs it: decode as `generate`, verify as `generate_speculative` (all
/// rows' logits, plus the hidden states when the MTP module will need them).
fn run_step<B: Backend>(
    backend: &mut B,
    step: Step,
    chunks: &[SeqChunk],
    hidden: &[f32],
) -> Result<()> {
    match step {
        Step::Decode => {
            let greedy = TokenDraw {
                params: SamplingParams::GREEDY,
                uniform: 0.0,
            };
            let draws = vec![greedy; chunks.len()];
            backend.forward_and_sample(chunks, &draws).map(drop)
        }
        Step::Verify(_) if backend.has_mtp() => backend
            .forward_with_hidden(chunks, LogitRows::All)
            .map(drop),
        Step::Verify(_) => backend.forward(chunks, LogitRows::All).map(drop),
        Step::Draft => backend
            .mtp_forward(hidden, chunks, LogitRows::Last)
            .map(drop),
    }
}

/// One generation run of the forced-acceptance measurement, at two lengths.
#[derive(Clone, Debug)]
pub struct E2eRun {
    /// `None`: plain greedy decoding; `Some(D)`: speculative decoding with `D` drafts.
    pub draft_steps: Option<usize>,
    pub short: GenerationStats,
    pub long: GenerationStats,
    /// Of the long run (speculative only).
    pub acceptance_rate: Option<f64>,
    pub tokens_per_step: Option<f64>,
}

impl E2eRun {
    /// Decode tokens/s of the long run (everything after the prefill's first token).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.long.decode_tokens_per_s(1)
    }

    /// Steady-state tokens/s: the long run's extra tokens over its extra decode time. This
    /// cancels what both runs pay once (the prefill, and for speculative decoding the MTP
    /// module's first catch-up over the whole prompt, which falls in the decode phase).
    pub fn marginal_tokens_per_s(&self) -> f64 {
        let tokens = self.long.generated_tokens as f64 - self.short.generated_tokens as f64;
        let dt = self.long.decode_s - self.short.decode_s;
        if dt > 0.0 {
            tokens / dt
        } else {
            f64::NAN
        }
    }

    fn label(&self) -> String {
        match self.draft_steps {
            None => "plain greedy".into(),
            Some(d) => format!("MTP, {d} draft(s), forced"),
        }
    }

    fn to_json(&self, plain: &E2eRun) -> Value {
        json!({
            "draft_steps": self.draft_steps,
            "decode_tokens_per_s": self.decode_tokens_per_s(),
            "marginal_tokens_per_s": self.marginal_tokens_per_s(),
            "speedup_decode": self.decode_tokens_per_s() / plain.decode_tokens_per_s(),
            "speedup_marginal": self.marginal_tokens_per_s() / plain.marginal_tokens_per_s(),
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_step": self.tokens_per_step,
            "short_run": stats_json(&self.short),
            "long_run": stats_json(&self.long),
        })
    }
}

fn stats_json(s: &GenerationStats) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "prefill_s": s.prefill_s,
        "decode_s": s.decode_s,
    })
}

/// End-to-end tokens/s at batch 1 with and without MTP at forced acceptance.
#[derive(Clone, Debug)]
pub struct ForcedAcceptance {
    pub prompt_len: usize,
    /// New tokens of the short and the long run.
    pub short_tokens: usize,
    pub long_tokens: usize,
    pub plain: E2eRun,
    pub speculative: Vec<E2eRun>,
}

impl ForcedAcceptance {
    fn to_json(&self) -> Value {
        json!({
            "batch": 1,
            "prompt_len": self.prompt_len,
            "short_tokens": self.short_tokens,
            "long_tokens": self.long_tokens,
            "plain": self.plain.to_json(&self.plain),
            "speculative": self.speculative.iter().map(|r| r.to_json(&self.plain)).collect::<Vec<_>>(),
        })
    }

    fn runs(&self) -> impl Iterator<Item = &E2eRun> {
        std::iter::once(&self.plain).chain(&self.speculative)
    }
}

/// Checks that the forced-acceptance runs fit the model's context.
pub fn check_forced(cfg: &ModelConfig, prompt_len: usize, new_tokens: usize) -> Result<()> {
    if prompt_len == 0 {
        return Err(ModelError::request("--prompt-len must be >= 1"));
    }
    if new_tokens < 2 {
        return Err(ModelError::request(format!(
            "--steps {new_tokens}: --mtp-cost needs --steps >= 2 (the forced-acceptance runs \
             generate --steps and twice --steps new tokens)"
        )));
    }
    let limit = cfg.max_position_embeddings;
    let longest = prompt_len + 2 * new_tokens + MAX_VERIFY_LEN;
    if longest > limit {
        return Err(ModelError::request(format!(
            "forced acceptance: a prompt of {prompt_len} tokens (--prompt-len, default \
             --context) + {} new tokens (twice --steps) + {MAX_VERIFY_LEN} verify positions = \
             {longest} exceed the model's limit max_position_embeddings = {limit}",
            2 * new_tokens
        )));
    }
    Ok(())
}

/// A greedy batch-1 request of `prompt_len` deterministic tokens and `new_tokens` new ones.
fn e2e_request(prompt_len: usize, new_tokens: usize, vocab: usize, seed: u64) -> Request {
    Request {
        prompt: (0..prompt_len).map(|p| token(seed, 0, p, vocab)).collect(),
        max_new_tokens: new_tokens,
        sampling: SamplingParams::GREEDY,
        seed,
        stop_ids: Vec::new(),
    }
}

/// Forced acceptance at batch 1: plain greedy runs of `new_tokens` and `2 * new_tokens` tokens,
/// then speculative runs of both lengths for every [`DRAFT_STEPS`] with the long plain run's ids
/// as the drafts ([`Drafter::Oracle`]: the verifier's own tokens, so every draft is accepted
/// unless the verify pass's numerics pick a different argmax than the decode pass's). The MTP
/// module still runs, so the cost is the real one.
pub fn forced_acceptance<B: Backend>(
    engine: &mut Engine<B>,
    prompt_len: usize,
    new_tokens: usize,
    seed: u64,
) -> Result<ForcedAcceptance> {
    check_forced(engine.config(), prompt_len, new_tokens)?;
    let vocab = engine.config().vocab_size;
    let short = e2e_request(prompt_len, new_tokens, vocab, seed);
    let long = e2e_request(prompt_len, 2 * new_tokens, vocab, seed);
    engine.generate(std::slice::from_ref(&short), |_, _| {})?;
    let plain_short = engine.last_stats();
    let ids = engine
        .generate(std::slice::from_ref(&long), |_, _| {})?
        .remove(0)
        .ids;
    let plain = E2eRun {
        draft_steps: None,
        short: plain_short,
        long: engine.last_stats(),
        acceptance_rate: None,
        tokens_per_step: None,
    };
    let mut speculative = Vec::new();
    for d in DRAFT_STEPS {
        let spec = SpecConfig {
            draft_steps: d,
            drafter: Drafter::Oracle(vec![ids.clone()]),
        };
        engine.generate_speculative(std::slice::from_ref(&short), &spec, |_, _| {})?;
        let short_stats = engine.last_stats();
        let (_, st) = engine.generate_speculative(std::slice::from_ref(&long), &spec, |_, _| {})?;
        speculative.push(E2eRun {
            draft_steps: Some(d),
            short: short_stats,
            long: engine.last_stats(),
            acceptance_rate: Some(st.acceptance_rate()),
            tokens_per_step: Some(st.tokens_per_step()),
        });
    }
    Ok(ForcedAcceptance {
        prompt_len,
        short_tokens: new_tokens,
        long_tokens: 2 * new_tokens,
        plain,
        speculative,
    })
}

/// The commit of the working tree (`DSV3_COMMIT` if set, else `git`, else `unknown`), with
/// `-dirty` when tracked files differ from it.
pub fn current_commit() -> String {
    if let Ok(c) = std::env::var("DSV3_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("{c}-dirty")
        }
        Some(c) => c,
        None => "unknown".into(),
    }
}

/// The model's shape as the report records it.
pub fn shape_json(cfg: &ModelConfig) -> Value {
    json!({
        "layers": cfg.num_hidden_layers,
        "dense_layers": cfg.first_k_dense_replace.min(cfg.num_hidden_layers),
        "mtp_layers": cfg.num_nextn_predict_layers,
        "hidden_size": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "kv_lora_rank": cfg.kv_lora_rank,
        "routed_experts": cfg.n_routed_experts,
        "experts_per_token": cfg.num_experts_per_tok,
        "vocab_size": cfg.vocab_size,
    })
}

/// Everything `dsv3 bench --mtp-cost` reports.
#[derive(Clone, Debug)]
pub struct MtpCostReport {
    /// [`Backend::describe`].
    pub backend: String,
    /// What model ran (`built-in tiny model`, `full-width synthetic, 4 layers + MTP`).
    pub model: String,
    pub commit: String,
    /// [`shape_json`].
    pub shape: Value,
    pub context: usize,
    pub warmup: usize,
    pub reps: usize,
    pub costs: Vec<BatchCost>,
    pub forced: Option<ForcedAcceptance>,
    pub notes: Vec<String>,
}

/// The target check: batch 1 at 85% acceptance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetCheck {
    pub one_draft: Projection,
    pub two_drafts: Projection,
}

impl TargetCheck {
    pub fn met(&self) -> bool {
        self.one_draft.speedup >= TARGET_SPEEDUP
    }

    pub fn met_with_two_drafts(&self) -> bool {
        self.two_drafts.speedup >= TARGET_SPEEDUP
    }

    /// The verdict in one sentence.
    pub fn sentence(&self) -> String {
        let verdict = |met: bool| if met { "met" } else { "NOT met" };
        format!(
            "batch 1, {:.0}% acceptance: projected {:.2}x with 1 draft (target >= {TARGET_SPEEDUP}x: \
             {}), {:.2}x with 2 drafts ({})",
            100.0 * TARGET_ACCEPTANCE,
            self.one_draft.speedup,
            verdict(self.met()),
            self.two_drafts.speedup,
            verdict(self.met_with_two_drafts())
        )
    }
}

impl MtpCostReport {
    pub fn target(&self) -> Option<TargetCheck> {
        let b1 = self.costs.iter().find(|c| c.batch == 1)?;
        Some(TargetCheck {
            one_draft: b1.projection(TARGET_ACCEPTANCE, 1)?,
            two_drafts: b1.projection(TARGET_ACCEPTANCE, 2)?,
        })
    }

    pub fn to_json(&self) -> Value {
        let target = self.target();
        json!({
            "benchmark": "mtp-step-cost",
            "backend": self.backend,
            "model": self.model,
            "commit": self.commit,
            "shape": self.shape,
            "context": self.context,
            "warmup": self.warmup,
            "reps": self.reps,
            "batches": self.costs.iter().map(BatchCost::to_json).collect::<Vec<_>>(),
            "formula": "E = 1 + a + ... + a^D; T = T_verify(S_q = D + 1) + D * T_draft; \
                        speedup = E * T_decode / T (independent acceptance per position)",
            "target": {
                "batch": 1,
                "acceptance": TARGET_ACCEPTANCE,
                "drafts": 1,
                "min_speedup": TARGET_SPEEDUP,
                "speedup": target.map(|t| t.one_draft.speedup),
                "met": target.map(|t| t.met()),
                "speedup_two_drafts": target.map(|t| t.two_drafts.speedup),
                "met_with_two_drafts": target.map(|t| t.met_with_two_drafts()),
            },
            "forced_acceptance": self.forced.as_ref().map(ForcedAcceptance::to_json),
            "notes": self.notes,
        })
    }

    /// The human table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "MTP step cost on {} ({}), context {}, median of {} calls after {} warm-up",
            self.backend, self.model, self.context, self.reps, self.warmup
        );
        let _ = writeln!(
            s,
            "{:>6} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8} {:>8}",
            "batch",
            "decode ms",
            "verify2 ms",
            "verify3 ms",
            "draft ms",
            "v2/dec",
            "v3/dec",
            "dr/dec"
        );
        for c in &self.costs {
            let cells = c.cells();
            let _ = writeln!(
                s,
                "{:>6} {:>11} {:>11} {:>11} {:>11} {:>8} {:>8} {:>8}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
            );
        }
        let _ = writeln!(s, "\nprojected speedup (E * T_decode / T):");
        let _ = write!(s, "{:>6}", "batch");
        for a in ACCEPTANCES {
            for d in DRAFT_STEPS {
                let _ = write!(s, " {:>12}", format!("a={a:.2} D={d}"));
            }
        }
        let _ = writeln!(s);
        for c in &self.costs {
            let _ = write!(s, "{:>6}", c.batch);
            for p in c.projections() {
                let _ = write!(s, " {:>11.2}x", p.speedup);
            }
            let _ = writeln!(s);
        }
        if let Some(t) = self.target() {
            let _ = writeln!(s, "\n{}", t.sentence());
        }
        if let Some(f) = &self.forced {
            let _ = writeln!(
                s,
                "\nforced acceptance, batch 1, prompt {}, {} / {} new tokens:",
                f.prompt_len, f.short_tokens, f.long_tokens
            );
            for r in f.runs() {
                let _ = writeln!(
                    s,
                    "  {:<26} decode {:>9.1} tokens/s ({:.2}x), steady {:>9.1} tokens/s ({:.2}x){}",
                    r.label(),
                    r.decode_tokens_per_s(),
                    r.decode_tokens_per_s() / f.plain.decode_tokens_per_s(),
                    r.marginal_tokens_per_s(),
                    r.marginal_tokens_per_s() / f.plain.marginal_tokens_per_s(),
                    r.acceptance_rate
                        .map_or(String::new(), |a| format!(", acceptance {:.1}%", 100.0 * a))
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// `MTP-STEP-COST.md`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# MTP verify-step cost\n");
        let _ = writeln!(
            s,
            "`dsv3 bench --mtp-cost` on **{}**, {}, commit `{}`. Context **{}** tokens in every \
             sequence's cache; each figure is the median of {} timed calls after {} warm-up \
             calls, host clock around the whole backend call (it returns host logits, so the \
             step's synchronisation and downloads are included).\n",
            self.backend, self.model, self.commit, self.context, self.reps, self.warmup
        );
        let _ = writeln!(s, "Shape: `{}`\n", self.shape);
        let _ = writeln!(s, "## Step cost\n");
        let _ = writeln!(
            s,
            "| batch | decode ms (S_q=1) | verify ms (S_q=2) | verify ms (S_q=3) | MTP draft ms | \
             T_verify2 / T_decode | T_verify3 / T_decode | T_draft / T_decode |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in &self.costs {
            let _ = writeln!(s, "| {} |", c.cells().join(" | "));
        }
        let _ = writeln!(s, "\n## Projected speedup\n");
        let _ = writeln!(
            s,
            "`E = 1 + a + ... + a^D` tokens per step, `T = T_verify(S_q = D + 1) + D * T_draft`, \
             speedup `= E * T_decode / T`. Assumes each draft is accepted independently with \
             probability `a` (draft `k` survives with `a^k`) and counts one one-token MTP pass \
             per draft.\n"
        );
        let _ = write!(s, "| batch |");
        for a in ACCEPTANCES {
            for d in DRAFT_STEPS {
                let _ = write!(s, " a = {a:.2}, D = {d} |");
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "|---:|{}",
            "---:|".repeat(ACCEPTANCES.len() * DRAFT_STEPS.len())
        );
        for c in &self.costs {
            let _ = write!(s, "| {} |", c.batch);
            for p in c.projections() {
                let _ = write!(
                    s,
                    " {:.2}x (E {:.3}, T {:.3} ms) |",
                    p.speedup, p.expected_tokens, p.step_ms
                );
            }
            let _ = writeln!(s);
        }
        match self.target() {
            Some(t) => {
                let _ = writeln!(s, "\n**Target** (>= {TARGET_SPEEDUP}x projected at 85%, batch 1, one draft as DeepSeek-V3): {}.", t.sentence());
            }
            None => {
                let _ = writeln!(s, "\n**Target**: not evaluated (no batch-1 measurement).");
            }
        }
        if let Some(f) = &self.forced {
            let _ = writeln!(s, "\n## Forced acceptance, end to end (batch 1)\n");
            let _ = writeln!(
                s,
                "Prompt of {} tokens, greedy, {} and {} new tokens. Drafts are the long plain run's \
                 own tokens (`Drafter::Oracle`); the MTP module still runs. *decode* = the long \
                 run's tokens after the first over its decode time; *steady* = the long run's \
                 extra tokens over its extra decode time (cancels the prefill and the MTP \
                 module's first catch-up over the prompt, which falls in the decode phase).\n",
                f.prompt_len, f.short_tokens, f.long_tokens
            );
            let _ = writeln!(s, "| run | decode tokens/s | vs plain | steady tokens/s | vs plain | acceptance | tokens / step |");
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
            for r in f.runs() {
                let _ = writeln!(
                    s,
                    "| {} | {:.1} | {:.2}x | {:.1} | {:.2}x | {} | {} |",
                    r.label(),
                    r.decode_tokens_per_s(),
                    r.decode_tokens_per_s() / f.plain.decode_tokens_per_s(),
                    r.marginal_tokens_per_s(),
                    r.marginal_tokens_per_s() / f.plain.marginal_tokens_per_s(),
                    r.acceptance_rate
                        .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a)),
                    r.tokens_per_step.map_or("-".into(), |t| format!("{t:.2}")),
                );
            }
        }
        let _ = writeln!(s, "\n## Method\n");
        let _ = writeln!(
            s,
            "- Decode: `forward` with the last row's logits (as `generate`). Verify: \
             `forward_with_hidden` with every row's logits (as `generate_speculative`). Draft: one \
             `mtp_forward` of one token per sequence at position C.\n\
             - Before each call the allocator extends every sequence by the step's tokens; after \
             it, it truncates them back to C (as speculative decoding rolls back rejected drafts)."
        );
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }
}

/// Writes `mtp-step-cost.json` and `MTP-STEP-COST.md` into `dir` (created if needed).
pub fn write_report(dir: &Path, report: &MtpCostReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let json_path = dir.join("mtp-step-cost.json");
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| ModelError::request(format!("serializing the report: {e}")))?;
    std::fs::write(&json_path, text + "\n").map_err(|e| ModelError::io(&json_path, e))?;
    let md_path = dir.join("MTP-STEP-COST.md");
    std::fs::write(&md_path, report.markdown()).map_err(|e| ModelError::io(&md_path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tokens_is_the_geometric_sum() {
        assert_eq!(expected_tokens(0.85, 0), 1.0);
        assert!((expected_tokens(0.85, 1) - 1.85).abs() < 1e-12);
        assert!((expected_tokens(0.9, 2) - 2.71).abs() < 1e-12);
    }

    #[test]
    fn projection_arithmetic() {
        // Verify 11 ms + one 1 ms draft = 12 ms per 1.85 tokens vs 10 ms per token.
        let p = project(10.0, 11.0, 1.0, 0.85, 1);
        assert!((p.step_ms - 12.0).abs() < 1e-12);
        assert!((p.speedup - 1.85 * 10.0 / 12.0).abs() < 1e-12);
        // A free verify and draft gives exactly E.
        let p = project(10.0, 10.0, 0.0, 0.9, 2);
        assert!((p.speedup - 2.71).abs() < 1e-12);
    }

    #[test]
    fn batch_lists_parse_or_name_the_bad_entry() {
        assert_eq!(parse_batches("1, 32,128").unwrap(), vec![1, 32, 128]);
        for bad in ["", "1,,2", "0", "4,x"] {
            let e = parse_batches(bad).unwrap_err().to_string();
            assert!(e.contains("--batches"), "{e}");
        }
    }

    #[test]
    fn draft_inputs_are_finite_and_bounded() {
        let h = draft_input(7, 1000);
        assert!(h.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
