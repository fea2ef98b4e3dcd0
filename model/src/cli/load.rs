//! Resolving `--model` (a checkpoint directory, or the built-in tiny model), `--backend` and
//! `--precision` into a loaded model and tokenizer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checkpoint::Checkpoint;
use crate::cpu::{CpuModel, Precision};
use crate::engine::{CpuBackend, Engine};
use crate::error::{ModelError, Result};
use crate::tiny::{write_tiny, TINY_SEED};
use crate::tokenizer::Tokenizer;
use crate::ModelConfig;

use super::backend::AnyBackend;
use super::runner::Runner;
use super::ModelArgs;
use crate::dist::{load_shards, CpuWorld, WorldOptions};

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Cpu,
    Cuda,
    /// CUDA when it is built and a device is present, else CPU.
    Auto,
}

/// Loaded weights on the backend `--backend` resolved to (one per process: the variants' size
/// difference does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LoadedWeights {
    Cpu(CpuModel),
    /// The ranks' models of a `--world-size` world on the CPU.
    World(Vec<CpuModel>),
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaModel, &'static kernels::gpu::Gpu),
}

impl LoadedWeights {
    pub fn config(&self) -> &ModelConfig {
        match self {
            LoadedWeights::Cpu(m) => m.config(),
            LoadedWeights::World(ranks) => ranks[0].config(),
            #[cfg(feature = "cuda")]
            LoadedWeights::Cuda(m, _) => m.config(),
        }
    }
}

/// A model ready to serve: weights on the chosen backend plus the tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: LoadedWeights,
    pub tokenizer: Option<Tokenizer>,
    /// What was loaded, for messages (`/path/to/dir`, `built-in tiny model`).
    pub source: String,
}

impl LoadedModel {
    /// What the command drives: an engine, or the `--world-size` world, with `kv_blocks` blocks
    /// of KV cache (on every rank).
    pub fn into_runner(self, kv_blocks: usize) -> Result<(Runner, Option<Tokenizer>)> {
        match self.model {
            LoadedWeights::World(ranks) => {
                let opts = WorldOptions::new(ranks.len(), ranks[0].precision(), kv_blocks);
                Ok((
                    Runner::World(CpuWorld::from_shards(ranks, &opts)?),
                    self.tokenizer,
                ))
            }
            _ => {
                let (engine, tok) = self.into_engine(kv_blocks)?;
                Ok((Runner::Single(Box::new(engine)), tok))
            }
        }
    }

    /// An engine with `kv_blocks` blocks of KV cache (not for a `--world-size` world).
    pub fn into_engine(self, kv_blocks: usize) -> Result<(Engine<AnyBackend>, Option<Tokenizer>)> {
        let backend = match self.model {
            LoadedWeights::Cpu(m) => AnyBackend::Cpu(CpuBackend::new(m, kv_blocks)?),
            LoadedWeights::World(_) => {
                return Err(ModelError::request(
                    "this command runs one engine; --world-size works with generate, chat, \
                     logits, perplexity and bench",
                ))
            }
            #[cfg(feature = "cuda")]
            LoadedWeights::Cuda(m, gpu) => {
                AnyBackend::Cuda(crate::cuda::CudaBackend::new(m, gpu, kv_blocks)?)
            }
        };
        Ok((Engine::new(backend)?, self.tokenizer))
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

/// Checks that the chosen backend can run here; returns the one to use (`Cpu` or `Cuda`).
/// `--backend cuda` fails with the reason (a build without the `cuda` feature, or no usable
/// device); `auto` picks CUDA when the build has it and a device opens, else CPU.
pub fn resolve_backend(choice: BackendChoice) -> Result<BackendChoice> {
    match choice {
        BackendChoice::Cpu => Ok(BackendChoice::Cpu),
        BackendChoice::Cuda => cuda_available()
            .map(|()| BackendChoice::Cuda)
            .map_err(|why| ModelError::request(format!("--backend cuda: {why}"))),
        BackendChoice::Auto => Ok(if cuda_available().is_ok() {
            BackendChoice::Cuda
        } else {
            BackendChoice::Cpu
        }),
    }
}

#[cfg(feature = "cuda")]
fn cuda_available() -> std::result::Result<(), String> {
    super::backend::cli_gpu().map(|_| ())
}

#[cfg(not(feature = "cuda"))]
fn cuda_available() -> std::result::Result<(), String> {
    Err(
        "this dsv3 was built without --features cuda (rebuild with `cargo build --release \
         --features cuda -p model`, or use --backend cpu)"
            .into(),
    )
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
    let backend = resolve_backend(args.backend)?;
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
    let auto = args.backend == BackendChoice::Auto;
    let model = match args.world_size {
        Some(n) => LoadedWeights::World(load_world(&ckpt, args.backend, precision, n)?),
        None => load_weights(&ckpt, backend, auto, precision, quiet, &mut progress)?,
    };
    let tokenizer = if dir.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(&dir)?)
    } else {
        None
    };
    drop(scratch);
    if !quiet {
        let cfg = model.config();
        let on = match &model {
            LoadedWeights::Cpu(_) => format!("cpu {}", precision.as_str()),
            LoadedWeights::World(ranks) => format!(
                "cpu {}, a world of {} ranks with {} experts each",
                precision.as_str(),
                ranks.len(),
                cfg.n_routed_experts / ranks.len()
            ),
            #[cfg(feature = "cuda")]
            LoadedWeights::Cuda(_, gpu) => format!("cuda fp8 on {}", gpu.info().name),
        };
        eprintln!(
            "loaded {source} ({} layers{}, {on}) in {:.1} s",
            cfg.num_hidden_layers,
            if ckpt.num_mtp_layers() == 0 {
                ""
            } else {
                " + MTP"
            },
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        source,
    })
}

/// The ranks' models of `--world-size n`: on the CPU backend (the in-process world; a world of
/// GPU processes over NCCL is not wired to the CLI yet).
fn load_world(
    ckpt: &Checkpoint,
    backend: BackendChoice,
    precision: Precision,
    n: usize,
) -> Result<Vec<CpuModel>> {
    if n == 0 {
        return Err(ModelError::request("--world-size must be at least 1"));
    }
    if backend == BackendChoice::Cuda {
        return Err(ModelError::request(
            "--world-size runs on the CPU backend (N ranks in this process); the CUDA backend \
             does not run a multi-GPU world yet. Use --backend cpu (or auto)",
        ));
    }
    load_shards(ckpt, precision, n, &mut |_, _| {})
}

/// Loads the weights for the resolved backend (`Cpu` or `Cuda`). With `auto`, a checkpoint the
/// CUDA backend cannot run (linear weights the FP8 GEMM cannot take, MLA widths other than V3's) falls back to the
/// CPU with a note.
fn load_weights(
    ckpt: &Checkpoint,
    backend: BackendChoice,
    auto: bool,
    precision: Precision,
    quiet: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LoadedWeights> {
    #[cfg(feature = "cuda")]
    if backend == BackendChoice::Cuda {
        let gpu = super::backend::cli_gpu()
            .map_err(|why| ModelError::request(format!("--backend cuda: {why}")))?;
        match crate::cuda::CudaModel::load_with_progress(ckpt, gpu, progress) {
            Ok(model) => {
                if precision == Precision::Exact && !quiet {
                    eprintln!(
                        "note: the CUDA backend computes in fp8 (--precision selects the CPU \
                         backend's arithmetic)"
                    );
                }
                return Ok(LoadedWeights::Cuda(model, gpu));
            }
            Err(e @ ModelError::Config { .. }) if auto => {
                if !quiet {
                    eprintln!("note: --backend auto: using the CPU ({e})");
                }
            }
            Err(e) => return Err(e),
        }
    }
    let _ = (backend, auto, quiet);
    Ok(LoadedWeights::Cpu(CpuModel::load_with_progress(
        ckpt, precision, progress,
    )?))
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
