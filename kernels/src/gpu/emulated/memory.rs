//! Emulated device memory: a typed buffer from the interpreter's guarded allocator.

use std::marker::PhantomData;

use super::ffi;
use crate::dtype::E4m3;

/// Plain values that can be kernel arguments or buffer elements: any bit pattern (zero included)
/// is valid and the value is copied bytewise (cudarc's `DeviceRepr` + `ValidAsZeroBits`).
///
/// # Safety
/// The type must be `repr(C)` or primitive, without padding-sensitive invariants.
pub unsafe trait DeviceRepr: Copy + 'static {}

macro_rules! device_repr {
    ($($t:ty),*) => { $(
        // SAFETY: primitive or transparent plain-old-data.
        unsafe impl DeviceRepr for $t {}
    )* };
}
device_repr!(
    i8,
    i16,
    i32,
    i64,
    isize,
    u8,
    u16,
    u32,
    u64,
    usize,
    f32,
    f64,
    half::bf16,
    half::f16,
    E4m3
);

/// A device buffer of `len` elements (cudarc's `CudaSlice`); freed on drop.
#[derive(Debug)]
pub struct CudaSlice<T> {
    ptr: *mut u8,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: the buffer is owned memory like a Vec<T>'s; kernels reach it only through launches,
// which the device serializes.
unsafe impl<T: Send> Send for CudaSlice<T> {}
// SAFETY: as above; shared references only read.
unsafe impl<T: Sync> Sync for CudaSlice<T> {}

impl<T: DeviceRepr> CudaSlice<T> {
    /// `len` (> 0) zero-filled elements.
    pub(super) fn alloc_zeros(len: usize) -> Result<Self, String> {
        let ptr = ffi::alloc(len * std::mem::size_of::<T>())?;
        Ok(CudaSlice {
            ptr,
            len,
            _t: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn num_bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// The device address: the host address of the first element.
    pub fn device_ptr(&self) -> u64 {
        self.ptr as u64
    }

    pub(super) fn as_slice(&self) -> &[T] {
        // SAFETY: `len` initialized elements (zero-filled, then written as T), aligned (16 B).
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.len) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in as_slice, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast(), self.len) }
    }

    pub(super) fn fill_bytes(&mut self, byte: u8) {
        // SAFETY: exactly the allocation; DeviceRepr types accept any bit pattern.
        unsafe { std::ptr::write_bytes(self.ptr, byte, self.num_bytes()) }
    }
}

impl<T> Drop for CudaSlice<T> {
    fn drop(&mut self) {
        // SAFETY: from ffi::alloc, dropped once.
        unsafe { ffi::free(self.ptr) }
    }
}
