//! The GPU runtime on cudarc (driver API, libcuda loaded at run time).
//!
//! One [`Gpu`] owns a context and a single stream: every launch, copy and timing event of the
//! workspace goes through that stream, in order. Kernels come from the embedded fatbins
//! ([`crate::Cubin`]), each loaded once per `Gpu`.

mod device;
mod status;
mod tensor;
mod testing;
mod timing;
mod tma;

/// The enums `tensor_map_2d` takes, so crates without a direct cudarc dependency can call it.
pub use cudarc::driver::sys::{
    CUevent_flags as CudaEventFlags, CUtensorMapDataType, CUtensorMapSwizzle,
};
pub use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
pub use device::{DeviceInfo, Gpu};
pub use status::DeviceStatus;
pub use tensor::{DeviceElement, DeviceTensor};
pub use testing::{assert_pass, test_gpu};
pub use timing::TimingStats;
pub use tma::{tensor_map_2d, TensorMap};

use crate::error::Error;
use cudarc::driver::DriverError;

/// Wraps a driver error with what was being done.
pub(crate) fn cuda_err(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| Error::Cuda {
        context,
        detail: e.to_string(),
    }
}

/// Launch geometry for a grid of `blocks` one-dimensional blocks of `threads` threads.
pub fn grid_1d(blocks: u32, threads: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes,
    }
}
