//! TMA tensor maps (`cuTensorMapEncodeTiled`), passed to kernels by value as
//! `const __grid_constant__ CUtensorMap`.

use cudarc::driver::sys::{
    CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::DeviceRepr;

use super::cuda_err;
use crate::error::Result;

/// A 128-byte-aligned tensor map, as the kernel parameter wants it.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct TensorMap(pub CUtensorMap);

// SAFETY: a plain 128-byte value the driver copies into the kernel's parameter space.
unsafe impl DeviceRepr for TensorMap {}

/// A rank-2 tiled map over a row-major [rows, cols] matrix at `ptr` with `row_bytes` between rows;
/// each TMA copy moves a box of [box_rows, box_cols]. Out-of-bounds elements of a box read as zero.
#[allow(clippy::too_many_arguments)]
pub fn tensor_map_2d(
    ptr: u64,
    dtype: CUtensorMapDataType,
    elem_bytes: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    box_rows: u32,
    box_cols: u32,
    swizzle: CUtensorMapSwizzle,
) -> Result<TensorMap> {
    super::tma_rules::check_2d(
        ptr,
        row_bytes,
        box_cols,
        elem_bytes,
        swizzle == CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    )?;
    let dims = [cols as u64, rows as u64];
    let strides = [row_bytes as u64];
    let boxes = [box_cols, box_rows];
    let elem_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<CUtensorMap>::zeroed();
    // SAFETY: all arrays have rank (2) entries (strides rank - 1); the driver writes `map`.
    unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(cuda_err(format!(
            "cuTensorMapEncodeTiled for [{rows}, {cols}] box [{box_rows}, {box_cols}]"
        )))?;
        Ok(TensorMap(map.assume_init()))
    }
}
