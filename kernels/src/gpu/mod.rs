//! The GPU runtime on cudarc (driver API, libcuda loaded at run time).
//!
//! One [`Gpu`] owns a context and a single stream: every launch, copy and timing event of the
//! workspace goes through that stream, in order. Kernels come from the embedded fatbins
//! ([`crate::Cubin`]), each loaded once per `Gpu`.
//!
//! With the `emulate` feature the same API is implemented by an emulated device instead
//! (`emulated/`): host memory, and launches that run the host-compiled kernels in the
//! interpreter. Nothing in this module uses cudarc in that build.

mod info;
mod status;
mod testing;
mod timing;
mod tma_rules;

#[cfg(not(feature = "emulate"))]
mod device;
#[cfg(not(feature = "emulate"))]
mod tensor;
#[cfg(not(feature = "emulate"))]
mod tma;

#[cfg(feature = "emulate")]
mod emulated;

/// The enums `tensor_map_2d` takes, so crates without a direct cudarc dependency can call it.
#[cfg(not(feature = "emulate"))]
pub use cudarc::driver::sys::{
    CUevent_flags as CudaEventFlags, CUtensorMapDataType, CUtensorMapSwizzle,
};
#[cfg(not(feature = "emulate"))]
pub use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
#[cfg(not(feature = "emulate"))]
pub use device::Gpu;
#[cfg(not(feature = "emulate"))]
pub use tensor::{DeviceElement, DeviceTensor};
#[cfg(not(feature = "emulate"))]
pub use tma::{tensor_map_2d, TensorMap};

#[cfg(feature = "emulate")]
pub use emulated::{
    kernel_names, tensor_map_2d, CUtensorMapDataType, CUtensorMapSwizzle, CudaContext, CudaEvent,
    CudaEventFlags, CudaFunction, CudaSlice, CudaStream, DeviceElement, DeviceRepr, DeviceTensor,
    EmuError, Gpu, LaunchArgs, LaunchConfig, PushKernelArg, TensorMap,
};

pub use info::DeviceInfo;
pub use status::DeviceStatus;
pub use testing::{assert_pass, test_gpu};
pub use timing::TimingStats;

use crate::error::Error;

/// Wraps a driver error with what was being done.
#[cfg(not(feature = "emulate"))]
pub(crate) fn cuda_err(
    context: impl Into<String>,
) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    let context = context.into();
    move |e| Error::Cuda {
        context,
        detail: e.to_string(),
    }
}

/// Wraps an emulated-device error with what was being done.
#[cfg(feature = "emulate")]
pub(crate) fn cuda_err(context: impl Into<String>) -> impl FnOnce(EmuError) -> Error {
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
