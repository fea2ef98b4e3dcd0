//! Launch wrappers of `cuda/*.cu`.

pub mod permute;
pub mod routing;
