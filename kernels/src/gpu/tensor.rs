//! Typed device buffers that know their shape and element type.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::{cuda_err, Gpu};
use crate::dtype::{DType, E4m3, Element};
use crate::error::{Error, Result};

// SAFETY: E4m3 is a transparent u8; every bit pattern (zero included) is a valid value.
unsafe impl DeviceRepr for E4m3 {}
unsafe impl ValidAsZeroBits for E4m3 {}

/// Element types that can live in device buffers.
pub trait DeviceElement: Element + DeviceRepr + ValidAsZeroBits {}
impl<T: Element + DeviceRepr + ValidAsZeroBits> DeviceElement for T {}

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

    pub fn view(&self) -> CudaView<'_, T> {
        self.data.as_view()
    }

    pub fn view_mut(&mut self) -> CudaViewMut<'_, T> {
        self.data.as_view_mut()
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
}

impl Gpu {
    fn map_alloc_err(
        &self,
        bytes: usize,
    ) -> impl FnOnce(cudarc::driver::DriverError) -> Error + '_ {
        move |e| {
            if e.0 == cudarc::driver::sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
                let (free, total) = self.mem_info().unwrap_or((0, 0));
                Error::OutOfMemory { bytes, free, total }
            } else {
                cuda_err(format!("allocating {bytes} bytes"))(e)
            }
        }
    }

    /// A zero-filled buffer.
    pub fn zeros<T: DeviceElement>(&self, shape: &[usize]) -> Result<DeviceTensor<T>> {
        let n: usize = shape.iter().product();
        let bytes = n * T::DTYPE.size_bytes();
        // cudarc rejects 0-byte allocations on some paths; keep one element and the empty shape.
        let data = self
            .stream()
            .alloc_zeros::<T>(n.max(1))
            .map_err(self.map_alloc_err(bytes))?;
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
        let bytes = t.data.num_bytes();
        let stream = self.stream().clone();
        let (ptr, _guard) = t.data.device_ptr(&stream);
        // SAFETY: the range is exactly the allocation, on the stream it was allocated on; every
        // element type here accepts any bit pattern.
        unsafe { cudarc::driver::result::memset_d8_async(ptr, byte, bytes, stream.cu_stream()) }
            .map_err(cuda_err("cuMemsetD8Async"))
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
        if n == 0 {
            return self.zeros(shape);
        }
        let data = self
            .stream()
            .clone_htod(data)
            .map_err(self.map_alloc_err(n * T::DTYPE.size_bytes()))?;
        Ok(DeviceTensor {
            data,
            shape: shape.to_vec(),
        })
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
        if data.is_empty() {
            return Ok(());
        }
        self.stream()
            .memcpy_htod(data, &mut t.data)
            .map_err(cuda_err("host-to-device copy"))
    }

    /// Copies a device buffer back (waits for queued work first).
    pub fn download<T: DeviceElement>(&self, t: &DeviceTensor<T>) -> Result<Vec<T>> {
        let mut out = self
            .stream()
            .clone_dtoh(&t.data)
            .map_err(cuda_err("device-to-host copy (a kernel may have faulted)"))?;
        out.truncate(t.len());
        Ok(out)
    }
}

impl<T: DeviceElement> DeviceTensor<T> {
    /// The raw device address, for kernels whose arguments alias (an in-place residual) or may be
    /// null. Safe to hand to kernels on the `Gpu`'s single stream: event tracking is off, so there
    /// is no cross-stream ordering to preserve.
    pub fn device_ptr(&self, gpu: &Gpu) -> u64 {
        let (ptr, _guard) = self.data.device_ptr(gpu.stream());
        ptr
    }
}
