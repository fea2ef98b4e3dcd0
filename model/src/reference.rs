//! Reference (plain Rust, the spec written literally): The forward pass of spec §3 composed from the kernel crates' references.
//!
//! This crate is a skeleton created with the workspace foundation; its reference and kernels
//! land with the crate's own issue.
