//! Block-scaled FP8 GEMMs for Hopper: dense NT, grouped contiguous (MoE prefill) and grouped
//! masked (MoE decode), spec §4 and §5.
//!
//! The contract is `shared/spec/deepseek-v3.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod reference;
