//! Multi-token prediction (spec §3.4) and lossless speculative decoding.
//!
//! The contract is `docs/spec.md`. This crate holds the backend-independent part
//! of speculative decoding as plain functions: the distributions a sampler draws from
//! ([`distribution`]), draft acceptance ([`acceptance`]: greedy and rejection sampling), the
//! uniform streams that make sampled runs reproducible ([`uniforms`]) and the run's counters
//! ([`stats`]). The MTP module's forward pass itself lives with each backend (the `model`
//! crate), which also drives the draft / verify / roll back loop.

pub mod acceptance;
pub mod distribution;
pub mod reference;
pub mod stats;
pub mod uniforms;

pub use acceptance::{greedy_accept, rejection_sample, Verdict};
pub use distribution::{sample_weights, target_distribution};
pub use stats::SpecStats;
