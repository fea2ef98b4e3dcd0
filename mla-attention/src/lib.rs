//! Multi-head latent attention (spec §3.1): absorbed-weight decode over a paged KV cache, the
//! query/output absorptions and the KV append.
//!
//! The contract is `shared/spec/deepseek-v3.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod reference;
