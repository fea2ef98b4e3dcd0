//! The uniforms a sampled speculative run draws, keyed by the output token they decide.
//!
//! Plain sampling draws token `j` of a request with `sampling_uniform(seed, j, 0)`. Speculative
//! sampling needs three independent uniforms per token index `j`: one to draw the draft, one to
//! accept or reject it, one to draw the verifier's token (the residual or the bonus). Keying
//! them by `j` (not by step) makes a run reproducible and independent of the batch. Reusing
//! them when a discarded draft at `j` is drafted again in a later step is sound: a uniform of
//! index `j` only influences a kept token once token `j` itself is decided, so until then it is
//! still independent of everything decided. The three streams use different seeds (`seed` xor
//! a constant) because `sampling_uniform(seed, j, r)` depends on `j + r` only, so rows cannot
//! separate streams.

use kernels::rng::sampling_uniform;

const DRAFT: u64 = 0x6d74_705f_6472_6166; // "mtp_draf"
const ACCEPT: u64 = 0x6d74_705f_6163_6370; // "mtp_accp"

/// Uniform that draws the draft for output token `j`.
pub fn draft_uniform(seed: u64, j: u64) -> f32 {
    sampling_uniform(seed ^ DRAFT, j, 0)
}

/// Uniform that accepts or rejects the draft for output token `j`.
pub fn accept_uniform(seed: u64, j: u64) -> f32 {
    sampling_uniform(seed ^ ACCEPT, j, 0)
}

/// Uniform that draws the verifier's token at output index `j` (after a rejection, or the
/// bonus token): the plain sampler's own stream.
pub fn resample_uniform(seed: u64, j: u64) -> f32 {
    sampling_uniform(seed, j, 0)
}
