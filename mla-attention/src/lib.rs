//! Multi-head latent attention (spec §3.1): absorbed-weight decode over a paged KV cache, the
//! query/output absorptions and the KV append.
//!
//! - [`reference`](mod@reference): the spec in plain Rust: the naive and absorbed forms, the paged decode
//!   contract and KV append, and the 656-byte FP8 cache entry.
//! - [`cache`]: the host-side block allocator of the paged KV cache (free list, per-sequence
//!   block tables, padded i32 tables for a batch).
//!
//! The contract is `shared/spec/deepseek-v3.md`; `reference` is the spec in plain Rust and every
//! kernel of this crate is tested against it.

pub mod cache;
pub mod reference;

pub use cache::{BlockTable, KvCacheAllocator, SeqId, PAD_BLOCK};
pub use reference::{MlaDims, BLOCK_SIZE, KV_DIM, KV_LORA_RANK, ROPE_DIM};
