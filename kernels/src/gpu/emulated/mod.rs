//! The emulated device (feature `emulate`): the `kernels::gpu` API with host memory for device
//! memory and the kernel interpreter (`kernels/emulate`, C interface in
//! `kernels/include/dsv3/emu/abi.h`) for launches, so every GPU test and check runs on a CPU.
//!
//! - Memory: every buffer comes from `dsv3_emu_alloc` (zero-filled, its end against a guard page
//!   so an overrun faults inside the launch that made it); a device pointer is the host address.
//! - Launches are synchronous: `dsv3_emu_launch` returns when the whole grid has run, so stream
//!   order, synchronization and event timing (wall clock) need no machinery.
//! - The driver's launch rules (block and grid limits, the dynamic shared-memory opt-in) are
//!   enforced here, so code that breaks them fails here as it would on the GPU.
//!
//! The types carry cudarc's names (`CudaStream`, `CudaFunction`, `LaunchConfig`, ...) so the
//! launch wrappers compile unchanged against either implementation.

mod device;
mod error;
mod event;
mod ffi;
mod launch;
mod memory;
mod tensor;
mod tma;

pub use device::{kernel_names, Gpu};
pub use error::EmuError;
pub use event::{CudaContext, CudaEvent, CudaEventFlags};
pub use launch::{CudaFunction, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg};
pub use memory::{CudaSlice, DeviceRepr};
pub use tensor::{DeviceElement, DeviceTensor};
pub use tma::{tensor_map_2d, CUtensorMapDataType, CUtensorMapSwizzle, TensorMap};
