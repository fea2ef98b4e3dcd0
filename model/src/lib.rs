//! Full DeepSeek-V3 inference from Hugging Face checkpoints: loading, CPU and CUDA backends,
//! the generation engine and the `dsv3` CLI.
//!
//! The contract is `docs/spec.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.
//!
//! Loading layer:
//! - [`config`]: `config.json` (DeepSeek-V3 and V2, both RoPE spellings), validation with errors
//!   naming the key, derived sizes and parameter counts.
//! - [`checkpoint`]: the tensors a config calls for, and [`Checkpoint`], the memory-mapped,
//!   fully validated checkpoint with typed views (BF16, F32, FP8 weights with block scales).
//! - [`tiny`]: the built-in tiny model, generated deterministically and written as a normal
//!   checkpoint directory.
//! - [`error`]: [`ModelError`], whose messages name the file, tensor or key at fault.
//! - [`convert`]: `dsv3 convert`, a checkpoint rewritten as BF16 or block-FP8 in new shards,
//!   streamed tensor by tensor from the mapped input.
//!
//! Deployment: [`memory_plan`], the per-rank weights, workspace and KV budget of an
//! expert-parallel deployment and its all-to-all bytes per decode step (`dsv3 info
//! --world-size`).

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod convert;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dist;
pub mod engine;
pub mod error;
pub mod fullwidth;
pub mod memory_plan;
pub mod mtp_cost;
pub mod reference;
pub mod speculative;
pub mod tiny;
pub mod tokenizer;

/// The fatbins of this crate's `cuda/*.cu` (empty without the `cuda` feature).
pub mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}

pub use checkpoint::{Checkpoint, Fp8Policy, Fp8Weight, LinearWeight, TensorSpec};
pub use config::ModelConfig;
pub use error::{ModelError, Result};
