//! Full DeepSeek-V3 inference from Hugging Face checkpoints: loading, CPU and CUDA backends,
//! the generation engine and the `dsv3` CLI.
//!
//! The contract is `shared/spec/deepseek-v3.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod reference;
