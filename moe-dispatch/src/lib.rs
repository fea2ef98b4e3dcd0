//! Mixture-of-experts routing (spec §3.3): sigmoid top-k with bias and group limits, expert
//! permute/combine on one GPU and expert parallelism over NCCL.
//!
//! - [`reference`]: the spec in plain Rust (routing, bias update, dispatch layouts, combine).
//! - [`cases`]: the benchmark cases (harness and criterion share them).
//! - [`ep`]: expert parallelism: a [`ep::Transport`] trait with an in-process implementation
//!   (ranks as threads, for tests) and NCCL (with the `cuda` feature).
//! - With the `cuda` feature: [`gpu`] (launch wrappers of `cuda/*.cu`) and [`checks`]
//!   (kernel-vs-reference checks for the tests and `harness verify`).
//!
//! The contract is `docs/spec.md`; every kernel of this crate is tested against
//! `reference`.

pub mod cases;
pub mod ep;
pub mod reference;

#[cfg(feature = "cuda")]
pub mod checks;
#[cfg(feature = "cuda")]
pub mod gpu;

/// The fatbins of `cuda/*.cu` (empty without the `cuda` feature).
pub mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}
