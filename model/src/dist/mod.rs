//! Distributed inference on the CPU backend: a world of N ranks in one process, laid out the way
//! DeepSeek deploys decoding (V3 paper §3.4.2) and SGLang serves it (DP attention + EP):
//!
//! - **Replicated** on every rank: MLA attention, the dense layers, the shared experts, the
//!   embedding, the LM head and the MTP layer's non-expert weights.
//! - **Data-parallel attention**: each rank owns its own requests and its own paged KV cache
//!   (its own [`Engine`](crate::engine::Engine)).
//! - **Expert-parallel MoE**: each rank holds `E / N` routed experts of every MoE layer
//!   ([`moe_dispatch::ep::ExpertPlacement`]) and loads only their bytes. Per MoE layer a rank
//!   routes its own tokens, sends each token row once to every rank holding one of its experts
//!   (FP8 codes and 1x128 scales where the experts are FP8, as DeepEP does), runs its experts on
//!   the rows it receives, and returns the outputs; the token's owner sums them in a fixed order
//!   ([`exchange`]).
//!
//! Results do not depend on the world size, bit for bit: every linear layer of a rank runs
//! row-invariantly (a row's output does not depend on the other rows it is multiplied with), the
//! exchange moves values without rounding them, and the owner sums a token's expert outputs in
//! increasing expert id (`docs/spec.md` §3.5). CI proves it with worlds of 1, 2, 4 and 8
//! ([`CpuWorld`]).
//!
//! Ranks step together: a rank without work in a step still joins every layer's exchange with
//! zero rows ([`rank`]'s step protocol), and a failing rank leaves the world, which turns its
//! peers' pending collectives into errors naming it instead of hangs.

pub mod comm;
pub mod exchange;
pub mod rank;
pub mod world;

pub use comm::{RankComm, StepKind};
pub use rank::RankBackend;
pub use world::{load_shards, placement, CpuWorld, WorldOptions};
