//! The `dsv3` command line: generate, chat, logits, perplexity, info, bench, convert, make-tiny.
//!
//! Every command runs on a real checkpoint directory (`--model DIR`) or, without `--model`, on
//! the built-in tiny model, so each works on a fresh machine with no download.

pub mod backend;
pub mod commands;
pub mod convert;
pub mod load;
pub mod mtp_cost;
pub mod runner;
pub mod synthetic;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::cpu::Precision;
use load::BackendChoice;

#[derive(Debug, Parser)]
#[command(
    name = "dsv3",
    version,
    about = "DeepSeek-V3 inference from Hugging Face checkpoints (CPU and CUDA backends)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that runs the model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json). Without it: the
    /// built-in tiny model with random weights.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// exact: f32 weights and activations (the oracle); fp8: FP8 weights and activations as the
    /// GPU computes.
    #[arg(long, default_value = "exact")]
    pub precision: Precision,
    /// KV cache size in blocks of 64 tokens (default: what the request needs).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Scan every weight for NaN / Inf before running (reads the whole checkpoint once).
    #[arg(long)]
    pub check_weights: bool,
    /// Run as a world of N ranks (data-parallel attention, expert-parallel MoE): on the CPU
    /// backend N ranks in this process, each with its own requests, KV cache (--kv-blocks
    /// each) and E/N of the routed experts. The results are the same for every N.
    #[arg(long)]
    pub world_size: Option<usize>,
}

/// Options of sampling.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a continuation of a prompt (text or token ids), streaming the text.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Prompt text (encoded with BOS).
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        prompt: Option<String>,
        /// Prompt token ids, comma separated.
        #[arg(long)]
        ids: Option<String>,
        /// Print one JSON object {"ids", "text", "tokens_per_s", ...} instead of streaming.
        #[arg(long)]
        json: bool,
        /// Speculative decoding with the MTP module as the drafter (same greedy output, same
        /// sampling distribution); prints draft statistics (under "mtp" with --json).
        #[arg(long)]
        mtp: bool,
        /// Drafts per step with --mtp (the MTP module re-applied to its own output).
        #[arg(long, default_value_t = 1, requires = "mtp")]
        draft_steps: usize,
        /// Benchmark 100% acceptance (greedy only): run a plain greedy generation first, then
        /// speculative decoding with its ids as the drafts (the MTP module still runs); prints
        /// the speculative run's statistics and tokens/s.
        #[arg(long, requires = "mtp")]
        force_accept: bool,
    },
    /// Chat with the DeepSeek-V3 chat template, one line per user turn, streaming replies.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// Print {"logits": [[f32; vocab] for every position]} for the given ids.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        ids: String,
        /// Also print "mtp_logits": row i is the MTP module's prediction of token i + 2 from
        /// position i and the given token i + 1 (n - 1 rows).
        #[arg(long)]
        mtp: bool,
    },
    /// Perplexity of a text file, in windows of --context tokens.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        file: PathBuf,
        /// Window length (default: min(1024, max_position_embeddings)).
        #[arg(long)]
        context: Option<usize>,
    },
    /// Config summary, parameter counts, KV bytes per token and the per-rank memory plan of an
    /// expert-parallel deployment (reads config.json only).
    Info {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Ranks (GPUs) of the deployment: attention, dense MLPs, shared experts, embedding, LM
        /// head and MTP replicated on each, the routed experts split evenly (must divide
        /// n_routed_experts).
        #[arg(long, default_value_t = 1)]
        world_size: usize,
        /// Memory of one GPU in GiB (2^30 bytes): with it, whether the model fits and how many
        /// tokens of KV cache a rank holds.
        #[arg(long)]
        gpu_memory: Option<f64>,
        /// Tokens each rank decodes per step, for the all-to-all bytes (--world-size > 1).
        #[arg(long, default_value_t = 32)]
        batch_per_rank: usize,
    },
    /// Prefill and decode tokens/s; with --mtp-cost the cost of MTP verify steps.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt length of the prefill measurement (default 128; 4096 with --synthetic).
        #[arg(long)]
        prompt_len: Option<usize>,
        /// Sequences decoded together (default 1; with --synthetic: 1, 32 and 128).
        #[arg(long)]
        batch: Option<usize>,
        /// Decode steps measured (with --mtp-cost: timed calls per step kind and batch, and the
        /// new tokens of the forced-acceptance runs, which also run twice as many).
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// `full-width`: random FP8 weights at DeepSeek-V3's real dimensions generated on the GPU
        /// (1 dense + layers-1 MoE layers, full vocabulary): prefill of 4096 tokens, decode at
        /// batch 1, 32, 128 over 4096 cached tokens, per-op times and the decode roofline.
        #[arg(long)]
        synthetic: Option<String>,
        /// Decoder layers of the --synthetic model.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// The cost of a verify step (S_q = 2, 3) and of an MTP draft relative to a plain decode
        /// step at each batch size over --context cached tokens, the speedup projected at 85%
        /// and 90% acceptance, and end-to-end tokens/s at forced acceptance (batch 1). Runs on
        /// the CPU backend (built-in model or --model) and with --synthetic full-width on CUDA.
        #[arg(long)]
        mtp_cost: bool,
        /// With --mtp-cost: batch sizes, comma separated (default 1,32,128 on a GPU, 1,4 on the
        /// CPU).
        #[arg(long, requires = "mtp_cost", conflicts_with = "batch")]
        batches: Option<String>,
        /// With --mtp-cost: tokens in every sequence's cache (default 4096 on a GPU, 64 on the
        /// CPU); also the prompt length of the forced-acceptance runs.
        #[arg(long, requires = "mtp_cost")]
        context: Option<usize>,
        #[arg(long)]
        json: bool,
        /// With --synthetic: also write results.json and REPORT.md into this directory; with
        /// --mtp-cost: mtp-step-cost.json and MTP-STEP-COST.md.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Rewrite a checkpoint as BF16 or block-scaled FP8 (the released V3 layout) in new shards,
    /// streaming tensor by tensor.
    Convert(convert::ConvertArgs),
    /// Write the built-in tiny model as a checkpoint directory.
    MakeTiny {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = crate::tiny::TINY_SEED)]
        seed: u64,
    },
}

/// Runs the command line; the binary's `main`.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match commands::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
