//! Mixture-of-experts routing (spec §3.3): sigmoid top-k with bias and group limits, expert
//! permute/combine on one GPU and expert parallelism over NCCL.
//!
//! The contract is `shared/spec/deepseek-v3.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod reference;
