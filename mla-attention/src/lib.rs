//! Multi-head latent attention (spec §3.1): absorbed-weight decode over a paged KV cache, the
//! query/output absorptions and the KV append.
//!
//! - [`reference`](mod@reference): the spec in plain Rust: the naive and absorbed forms, the paged decode
//!   contract and KV append, and the 656-byte FP8 cache entry.
//! - [`cache`]: the host-side block allocator of the paged KV cache (free list, per-sequence
//!   block tables, padded i32 tables for a batch).
//! - [`cases`]: the benchmark cases (`harness bench` and `cargo bench -p mla-attention`).
//! - With the `cuda` feature: [`gpu`] (launch wrappers of `cuda/mla_decode.cu`, the paged decode
//!   kernel with split-KV and combine), [`checks`] (kernel-vs-reference checks for the tests
//!   and `harness verify`) and [`peer`] (the naive peer `harness bench` times next to it: a
//!   paged-KV gather, cuBLAS strided-batched GEMMs and a softmax kernel, `cuda/mla_naive.cu`).
//!
//! The contract is `docs/spec.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod cache;
pub mod cases;
pub mod reference;

#[cfg(feature = "cuda")]
pub mod checks;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(feature = "cuda")]
pub mod peer;

pub use cache::{BlockTable, KvCacheAllocator, SeqId, PAD_BLOCK};
pub use reference::{MlaDims, BLOCK_SIZE, KV_DIM, KV_LORA_RANK, ROPE_DIM};

/// The fatbins of this crate's `cuda/*.cu` (empty without the `cuda` feature).
pub mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}
