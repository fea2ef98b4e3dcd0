//! Vendor implementations our kernels are benchmarked against ("peers"), each verified at run time.

#[cfg(all(feature = "cuda", not(feature = "emulate")))]
pub mod cublaslt_fp8;

/// The interpreter build has no cuBLASLt: the peer reports itself unavailable.
#[cfg(feature = "emulate")]
pub mod cublaslt_fp8 {
    pub use super::unavailable::CublasLtFp8;
}

#[cfg(feature = "emulate")]
pub mod unavailable;
