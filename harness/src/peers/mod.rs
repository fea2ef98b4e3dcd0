//! Vendor implementations our kernels are benchmarked against ("peers"), each verified at run time.

#[cfg(feature = "cuda")]
pub mod cublaslt_fp8;
