//! `dsv3 convert`: the command line over [`crate::convert`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::convert::{self, ConvertOptions, Progress, Target};
use crate::error::{ModelError, Result};

/// The format `--to` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ToFormat {
    /// Every weight BF16 (FP8 weights dequantized, F32 / F16 tensors rounded).
    Bf16,
    /// The released FP8 layout: 128x128 block-scaled e4m3 weights with F32 scales.
    Fp8,
}

/// The scale format `--scale-fmt` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScaleFmtArg {
    /// amax / 448 in f32 (DeepSeek-V3, R1, Kimi-K2).
    F32,
    /// Powers of two, `scale_fmt: "ue8m0"` (DeepSeek-V3.1).
    Ue8m0,
}

/// Options of `dsv3 convert`.
#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    /// The checkpoint to convert (config.json, *.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory (created; if it exists it must be empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum)]
    pub to: ToFormat,
    /// Most tensor data per shard, in GB (10^9 bytes; a single larger tensor gets its own shard).
    #[arg(long, default_value_t = convert::DEFAULT_SHARD_BYTES as f64 / 1e9)]
    pub shard_size_gb: f64,
    /// With --to fp8: the scales' format (default: the input's when it is FP8, else f32).
    #[arg(long, value_enum)]
    pub scale_fmt: Option<ScaleFmtArg>,
}

/// Progress lines on stderr at most this often (and one at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Runs `dsv3 convert`.
pub fn run(args: &ConvertArgs) -> Result<()> {
    let shard_bytes = args.shard_size_gb * 1e9;
    if !(shard_bytes >= 1.0 && shard_bytes < usize::MAX as f64) {
        return Err(ModelError::request(format!(
            "--shard-size-gb {} is not a positive size of at least one byte",
            args.shard_size_gb
        )));
    }
    let opts = ConvertOptions {
        to: match args.to {
            ToFormat::Bf16 => Target::Bf16,
            ToFormat::Fp8 => Target::Fp8,
        },
        ue8m0: args.scale_fmt.map(|f| f == ScaleFmtArg::Ue8m0),
        shard_bytes: shard_bytes as usize,
    };
    if opts.ue8m0.is_some() && opts.to != Target::Fp8 {
        return Err(ModelError::request("--scale-fmt needs --to fp8"));
    }
    let started = Instant::now();
    let mut last = started;
    let mut report = |p: &Progress| {
        if last.elapsed() >= PROGRESS_EVERY || p.tensors_done == p.tensors_total {
            last = Instant::now();
            eprintln!(
                "convert: shard {}/{}, tensor {}/{}, {:.2}/{:.2} GB",
                p.shard,
                p.shards,
                p.tensors_done,
                p.tensors_total,
                p.bytes_done as f64 / 1e9,
                p.bytes_total as f64 / 1e9
            );
        }
    };
    let summary = convert::convert(&args.model, &args.out, &opts, &mut report)?;
    if let Some(note) = &summary.note {
        eprintln!("note: {note}");
    }
    let actions: Vec<String> = summary
        .actions
        .iter()
        .map(|(a, n)| format!("{n} {}", action_name(*a)))
        .collect();
    println!(
        "wrote {} ({}): {} tensors, {:.3} GB in {} shard(s) in {:.1} s; {}{}; copied {}",
        args.out.display(),
        opts.to.as_str(),
        summary.tensors,
        summary.bytes as f64 / 1e9,
        summary.shards.len(),
        started.elapsed().as_secs_f64(),
        actions.join(", "),
        match summary.scales_dropped {
            0 => String::new(),
            n => format!(", {n} scales dropped"),
        },
        match summary.copied_files.is_empty() {
            true => "no tokenizer or generation files".to_string(),
            false => summary.copied_files.join(", "),
        }
    );
    Ok(())
}

fn action_name(a: convert::Action) -> &'static str {
    match a {
        convert::Action::Copy => "copied",
        convert::Action::ToBf16 => "rounded to BF16",
        convert::Action::Dequantize => "dequantized to BF16",
        convert::Action::Quantize => "quantized to FP8",
        convert::Action::Scales => "scales written",
    }
}
