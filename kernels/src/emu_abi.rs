//! Rust mirrors of the kernel tables of `kernels/include/dsv3/emu/abi.h`, which the build script
//! generates per `.cu` in the interpreter build. Always compiled: [`crate::Cubin`] names them.

use std::ffi::{c_char, c_void};

/// `dsv3_emu_invoke_fn`: calls one kernel with a cuLaunchKernel-style argument array.
pub type EmuInvoke = unsafe extern "C" fn(args: *mut *mut c_void);

/// `dsv3_emu_kernel`: one kernel of a file.
#[derive(Debug)]
#[repr(C)]
pub struct EmuKernel {
    pub name: *const c_char,
    pub invoke: EmuInvoke,
}

/// `dsv3_emu_module`: every kernel of one `.cu` file.
#[derive(Debug)]
#[repr(C)]
pub struct EmuModule {
    pub file: *const c_char,
    pub kernels: *const EmuKernel,
    pub count: usize,
}
