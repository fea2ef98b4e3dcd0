//! Reference (plain Rust, the spec written literally): Auxiliary-loss-free routing of spec §3.3 (and the DeepSeek-V2 softmax modes), permute and combine.
//!
//! This crate is a skeleton created with the workspace foundation; its reference and kernels
//! land with the crate's own issue.
