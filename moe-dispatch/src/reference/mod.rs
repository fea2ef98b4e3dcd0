//! The spec of the MoE layer's routing and data movement in plain Rust.

pub mod bias_update;
pub mod permute;
pub mod routing;
