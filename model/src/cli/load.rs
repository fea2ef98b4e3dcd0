//! Resolving `--model` (a checkpoint directory, or the built-in tiny model), `--backend` and
//! `--precision` into a loaded model and tokenizer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::cpu::CpuModel;
use crate::engine::{CpuBackend, Engine};
use crate::error::{ModelError, Result};
use crate::tiny::{write_tiny, TINY_SEED};
use crate::tokenizer::Tokenizer;
use crate::ModelConfig;

use super::ModelArgs;

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Cpu,
    Cuda,
    /// CUDA when it is built and a device is present, else CPU.
    Auto,
}

/// A model ready to serve: weights on the chosen backend plus the tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: CpuModel,
    pub tokenizer: Option<Tokenizer>,
    /// What was loaded, for messages (`/path/to/dir`, `built-in tiny model`).
    pub source: String,
}

impl LoadedModel {
    /// An engine with `kv_blocks` blocks of KV cache.
    pub fn into_engine(self, kv_blocks: usize) -> Result<(Engine<CpuBackend>, Option<Tokenizer>)> {
        let engine = Engine::new(CpuBackend::new(self.model, kv_blocks)?)?;
        Ok((engine, self.tokenizer))
    }
}

/// A scratch directory removed on drop (the built-in model is written, loaded, then deleted).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The note every command prints when it runs the built-in model.
pub const BUILTIN_NOTE: &str = "using the built-in tiny DeepSeek-V3-architecture model: its \
    weights are random, so its text is gibberish (pass --model DIR for a real checkpoint)";

/// Checks that the chosen backend can run here; returns the one to use.
pub fn resolve_backend(choice: BackendChoice) -> Result<BackendChoice> {
    match choice {
        BackendChoice::Cpu | BackendChoice::Auto => Ok(BackendChoice::Cpu),
        BackendChoice::Cuda => Err(ModelError::request(
            "--backend cuda: the CUDA backend of the model is not implemented yet (the kernel \
             crates are; the model still runs them through the CPU references). Use --backend \
             cpu or auto",
        )),
    }
}

/// Config of `--model DIR`, or of the built-in model.
pub fn load_config(dir: Option<&Path>) -> Result<ModelConfig> {
    match dir {
        Some(d) => ModelConfig::from_dir(d),
        None => Ok(crate::tiny::tiny_config()),
    }
}

/// Loads `--model DIR` (or the built-in tiny model when `None`) for the CPU backend, reporting
/// progress on stderr unless `quiet`.
pub fn load_model(args: &ModelArgs, quiet: bool) -> Result<LoadedModel> {
    let (dir, precision) = (args.model.as_deref(), args.precision);
    resolve_backend(args.backend)?;
    let t0 = Instant::now();
    let (scratch, dir, source) = match dir {
        Some(d) => (None, d.to_path_buf(), d.display().to_string()),
        None => {
            if !quiet {
                eprintln!("{BUILTIN_NOTE}");
            }
            let d = std::env::temp_dir().join(format!(
                "dsv3-builtin-{}-{}",
                std::process::id(),
                t0.elapsed().as_nanos()
            ));
            let scratch = Scratch(d.clone());
            write_tiny(&d, TINY_SEED)?;
            (
                Some(scratch),
                d,
                "built-in tiny model (random weights)".to_string(),
            )
        }
    };
    let ckpt = Checkpoint::open(&dir)?;
    if args.check_weights {
        ckpt.check_finite()?;
        if !quiet {
            eprintln!("checked every weight of {source}: no NaN or infinity");
        }
    }
    let mut progress = |done: usize, total: usize| {
        if !quiet && total > 8 {
            eprint!("\rloading layers {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let model = CpuModel::load_with_progress(&ckpt, precision, &mut progress)?;
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(&dir)?)
    } else {
        None
    };
    drop(scratch);
    if !quiet {
        eprintln!(
            "loaded {source} ({} layers{}, cpu {}) in {:.1} s",
            model.config().num_hidden_layers,
            if model.mtp().is_empty() { "" } else { " + MTP" },
            precision.as_str(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        source,
    })
}

/// Parses `--ids 1,2,3`.
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>().map_err(|_| {
                ModelError::request(format!("--ids: entry {i} `{s}` is not a token id"))
            })
        })
        .collect()
}
