//! Typed device buffers that know their shape and element type (emulated device).

use super::{CudaSlice, DeviceRepr, Gpu};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};

/// Element types that can live in device buffers.
pub trait DeviceElement: Element + DeviceRepr {}
impl<T: Element + DeviceRepr> DeviceElement for T {}

/// A device buffer with a row-major shape.
#[derive(Debug)]
pub struct DeviceTensor<T: DeviceElement> {
    data: CudaSlice<T>,
    shape: Vec<usize>,
}

impl<T: DeviceElement> DeviceTensor<T> {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        T::DTYPE
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_bytes(&self) -> usize {
        self.len() * T::DTYPE.size_bytes()
    }

    pub fn slice(&self) -> &CudaSlice<T> {
        &self.data
    }

    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.data
    }

    /// Reinterprets the shape (same element count).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} -> {shape:?} changes the element count", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Fails with a message naming `op` and `what` unless the shape is exactly `expected`.
    pub fn expect_shape(&self, op: &'static str, what: &str, expected: &[usize]) -> Result<()> {
        if self.shape != expected {
            return Err(Error::shape(
                op,
                format!(
                    "{what} ({}) has shape {:?}, expected {expected:?}",
                    T::DTYPE,
                    self.shape
                ),
            ));
        }
        Ok(())
    }

    /// The raw device address (the host address of the buffer), for kernel arguments.
    pub fn device_ptr(&self, _gpu: &Gpu) -> u64 {
        self.data.device_ptr()
    }
}

impl Gpu {
    /// A zero-filled buffer.
    pub fn zeros<T: DeviceElement>(&self, shape: &[usize]) -> Result<DeviceTensor<T>> {
        let n: usize = shape.iter().product();
        // As on the GPU: keep one element for an empty shape, so the pointer is a real one.
        // The allocator fails only when the host is out of memory (abi.h).
        let data = CudaSlice::alloc_zeros(n.max(1)).map_err(|_| {
            let (free, total) = self.mem_info().unwrap_or((0, 0));
            Error::OutOfMemory {
                bytes: n * T::DTYPE.size_bytes(),
                free,
                total,
            }
        })?;
        Ok(DeviceTensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// A buffer filled with 0xff bytes (NaN for f32/bf16/f16/e4m3, -1 for i32): outputs are
    /// poisoned before a kernel under test writes them, so an unwritten element cannot pass.
    pub fn poisoned<T: DeviceElement>(&self, shape: &[usize]) -> Result<DeviceTensor<T>> {
        let mut t = self.zeros::<T>(shape)?;
        self.fill_bytes(&mut t, 0xff)?;
        Ok(t)
    }

    /// Sets every byte of `t` to `byte`.
    pub fn fill_bytes<T: DeviceElement>(&self, t: &mut DeviceTensor<T>, byte: u8) -> Result<()> {
        t.data.fill_bytes(byte);
        Ok(())
    }

    /// Copies host data to a new device buffer of the given shape.
    pub fn upload<T: DeviceElement>(&self, data: &[T], shape: &[usize]) -> Result<DeviceTensor<T>> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "upload",
                format!("{} host elements for shape {shape:?}", data.len()),
            ));
        }
        let mut t = self.zeros(shape)?;
        t.data.as_mut_slice()[..n].copy_from_slice(data);
        Ok(t)
    }

    /// Overwrites a device buffer with host data of the same length.
    pub fn write<T: DeviceElement>(&self, t: &mut DeviceTensor<T>, data: &[T]) -> Result<()> {
        if data.len() != t.len() {
            return Err(Error::shape(
                "write",
                format!(
                    "{} host elements for a buffer of shape {:?}",
                    data.len(),
                    t.shape
                ),
            ));
        }
        t.data.as_mut_slice()[..data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Copies a device buffer back (launches are synchronous: nothing is queued).
    pub fn download<T: DeviceElement>(&self, t: &DeviceTensor<T>) -> Result<Vec<T>> {
        Ok(t.data.as_slice()[..t.len()].to_vec())
    }
}
