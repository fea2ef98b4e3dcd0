//! The interpreter's C interface (`kernels/include/dsv3/emu/abi.h`), implemented by
//! `kernels/emulate/*.cpp` (the `dsv3emu_runtime` library the build script compiles).

use std::ffi::{c_char, c_int, c_void, CStr};

use crate::emu_abi::EmuInvoke;

extern "C" {
    fn dsv3_emu_launch(
        kernel_name: *const c_char,
        invoke: EmuInvoke,
        grid: *const u32,
        block: *const u32,
        dynamic_smem_bytes: u32,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_cap: usize,
    ) -> c_int;
    fn dsv3_emu_alloc(bytes: usize, err: *mut c_char, err_cap: usize) -> *mut c_void;
    fn dsv3_emu_free(ptr: *mut c_void);
}

const ERR_CAP: usize = 4096;

fn message(err: &[u8]) -> String {
    CStr::from_bytes_until_nul(err)
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(err).into_owned())
}

/// Runs `invoke` over the grid. `args[i]` must point at a live value of parameter i's type.
///
/// # Safety
/// The arguments must match the kernel's parameters, and every pointer among them must be valid
/// for what the kernel does with it over this grid.
pub(super) unsafe fn launch(
    name: &CStr,
    invoke: EmuInvoke,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem_bytes: u32,
    args: &mut [*mut c_void],
) -> Result<(), String> {
    let mut err = vec![0u8; ERR_CAP];
    // SAFETY: grid/block are 3 entries, err has ERR_CAP bytes; the rest is the caller's contract.
    let rc = unsafe {
        dsv3_emu_launch(
            name.as_ptr(),
            invoke,
            grid.as_ptr(),
            block.as_ptr(),
            dynamic_smem_bytes,
            args.as_mut_ptr(),
            err.as_mut_ptr().cast(),
            ERR_CAP,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let m = message(&err);
        Err(if m.is_empty() {
            format!("the interpreter returned {rc} without a message")
        } else {
            m
        })
    }
}

/// `bytes` (> 0) zero-filled, 16-byte-aligned bytes ending at a guard page.
pub(super) fn alloc(bytes: usize) -> Result<*mut u8, String> {
    let mut err = vec![0u8; ERR_CAP];
    // SAFETY: err has ERR_CAP bytes.
    let p = unsafe { dsv3_emu_alloc(bytes, err.as_mut_ptr().cast(), ERR_CAP) };
    if p.is_null() {
        Err(message(&err))
    } else {
        Ok(p.cast())
    }
}

/// Releases what [`alloc`] returned.
///
/// # Safety
/// `p` came from [`alloc`] and is not used afterwards.
pub(super) unsafe fn free(p: *mut u8) {
    // SAFETY: forwarded to the caller.
    unsafe { dsv3_emu_free(p.cast()) }
}
