//! Reference (plain Rust, the spec written literally): The depth-1 MTP module of spec §3.4.
//!
//! This crate is a skeleton created with the workspace foundation; its reference and kernels
//! land with the crate's own issue.
