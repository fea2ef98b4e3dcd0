//! Launch machinery with cudarc's names: the stream, functions, argument lists and geometry.

use std::ffi::{c_void, CStr};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::{CudaSlice, DeviceRepr, EmuError};
use crate::emu_abi::EmuInvoke;

/// Dynamic shared memory a kernel may use without raising its limit (the driver's default).
pub(super) const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// Launch geometry (cudarc's `LaunchConfig`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid_dim: (u32, u32, u32),
    pub block_dim: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// One kernel of a host-compiled kernel table; clones share the dynamic shared-memory limit, as
/// handles of one CUfunction share its attributes.
#[derive(Clone, Debug)]
pub struct CudaFunction {
    pub(super) name: &'static CStr,
    pub(super) module: &'static str,
    pub(super) invoke: EmuInvoke,
    pub(super) max_dynamic_smem: Arc<AtomicU32>,
}

impl CudaFunction {
    pub(super) fn max_dynamic_smem(&self) -> u32 {
        self.max_dynamic_smem.load(Ordering::Relaxed)
    }
}

/// The device's one stream. Work runs when it is issued, so there is nothing to order or wait
/// for; it exists so that `gpu.stream().launch_builder(&f)` reads as with cudarc.
#[derive(Debug, Default)]
pub struct CudaStream {
    _private: (),
}

impl CudaStream {
    /// Starts the argument list of a launch of `func`.
    pub fn launch_builder<'a>(&'a self, func: &'a CudaFunction) -> LaunchArgs<'a> {
        LaunchArgs {
            func,
            args: Vec::new(),
            _values: PhantomData,
        }
    }

    /// Waits for queued work: there never is any.
    pub fn synchronize(&self) -> Result<(), EmuError> {
        Ok(())
    }

    /// Copies `src` to the start of `dst` (cuMemcpyDtoDAsync).
    pub fn memcpy_dtod<T: DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        dst: &mut CudaSlice<T>,
    ) -> Result<(), EmuError> {
        if src.len() > dst.len() {
            return Err(EmuError(format!(
                "memcpy_dtod of {} elements into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        dst.as_mut_slice()[..src.len()].copy_from_slice(src.as_slice());
        Ok(())
    }
}

/// A kernel's argument list as cuLaunchKernel takes it: a pointer to each argument's value. The
/// values are borrowed for `'a`, so they live until the launch has returned.
#[derive(Debug)]
pub struct LaunchArgs<'a> {
    pub(super) func: &'a CudaFunction,
    pub(super) args: Vec<*mut c_void>,
    _values: PhantomData<&'a ()>,
}

/// Appends a kernel argument (cudarc's trait of the same name).
pub trait PushKernelArg<T> {
    fn arg(&mut self, arg: T) -> &mut Self;
}

impl<'a, 'b: 'a, T: DeviceRepr> PushKernelArg<&'b T> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b T) -> &mut Self {
        // The interpreter only reads through it (the trampoline copies the value).
        self.args.push(arg as *const T as *mut c_void);
        self
    }
}
