//! Reference (plain Rust, the spec written literally): The block-scaled GEMM of spec §4: y[m,n] = sum over K blocks b of
//! sa[m,b] * sw[n/128,b] * (sum_{k in b} qa[m,k] * qw[n,k]), per-block f32 partials promoted into an f32 total.
//!
//! This crate is a skeleton created with the workspace foundation; its reference and kernels
//! land with the crate's own issue.
