//! Reference (plain Rust, the spec written literally): Naive (expanded K/V per head) and absorbed MLA attention of spec §3.1.
//!
//! This crate is a skeleton created with the workspace foundation; its reference and kernels
//! land with the crate's own issue.
