//! Multi-token prediction (spec §3.4) and lossless speculative decoding.
//!
//! The contract is `shared/spec/deepseek-v3.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod reference;
