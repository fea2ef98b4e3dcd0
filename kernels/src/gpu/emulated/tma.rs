//! TMA tensor maps for the emulated device: the checks `cuTensorMapEncodeTiled` makes, then an
//! `EmuTensorMap` (`kernels/include/dsv3/emu/tensor_map.h`) written into the 128 opaque bytes,
//! which the interpreter's TMA reads.

use super::DeviceRepr;
use crate::error::{Error, Result};

/// Element types of a tensor map (cudarc's `CUtensorMapDataType`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CUtensorMapDataType {
    CU_TENSOR_MAP_DATA_TYPE_UINT8,
    CU_TENSOR_MAP_DATA_TYPE_UINT16,
    CU_TENSOR_MAP_DATA_TYPE_UINT32,
    CU_TENSOR_MAP_DATA_TYPE_INT32,
    CU_TENSOR_MAP_DATA_TYPE_UINT64,
    CU_TENSOR_MAP_DATA_TYPE_INT64,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ,
    CU_TENSOR_MAP_DATA_TYPE_TFLOAT32,
    CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ,
}

impl CUtensorMapDataType {
    fn size_bytes(self) -> u32 {
        use CUtensorMapDataType::*;
        match self {
            CU_TENSOR_MAP_DATA_TYPE_UINT8 => 1,
            CU_TENSOR_MAP_DATA_TYPE_UINT16
            | CU_TENSOR_MAP_DATA_TYPE_FLOAT16
            | CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 => 2,
            CU_TENSOR_MAP_DATA_TYPE_UINT32
            | CU_TENSOR_MAP_DATA_TYPE_INT32
            | CU_TENSOR_MAP_DATA_TYPE_FLOAT32
            | CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ
            | CU_TENSOR_MAP_DATA_TYPE_TFLOAT32
            | CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ => 4,
            CU_TENSOR_MAP_DATA_TYPE_UINT64
            | CU_TENSOR_MAP_DATA_TYPE_INT64
            | CU_TENSOR_MAP_DATA_TYPE_FLOAT64 => 8,
        }
    }
}

/// Shared-memory swizzle of a tensor map (cudarc's `CUtensorMapSwizzle`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CUtensorMapSwizzle {
    CU_TENSOR_MAP_SWIZZLE_NONE,
    CU_TENSOR_MAP_SWIZZLE_32B,
    CU_TENSOR_MAP_SWIZZLE_64B,
    CU_TENSOR_MAP_SWIZZLE_128B,
}

impl CUtensorMapSwizzle {
    fn bytes(self) -> u32 {
        match self {
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE => 0,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B => 32,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B => 64,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B => 128,
        }
    }
}

/// The 128 bytes a kernel receives as `const __grid_constant__ CUtensorMap` (aligned like
/// cuda.h's CUtensorMap, since the kernel's trampoline copies it as one).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(128))]
pub struct TensorMap(pub [u64; 16]);

// SAFETY: 128 plain bytes.
unsafe impl DeviceRepr for TensorMap {}

/// `dsv3::emu::EmuTensorMap`, field for field.
#[repr(C)]
struct EmuTensorMap {
    magic: u32,
    rank: u32,
    elem_bytes: u32,
    swizzle_bytes: u32,
    global_address: u64,
    dims: [u64; 5],
    strides_bytes: [u64; 5],
    boxes: [u32; 5],
}

const MAGIC: u32 = 0x4453_4d54; // "TMSD"
const _: () = assert!(std::mem::size_of::<EmuTensorMap>() <= std::mem::size_of::<TensorMap>());

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
    crate::gpu::tma_rules::check_2d(
        ptr,
        row_bytes,
        box_cols,
        elem_bytes,
        swizzle == CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    )?;
    // What cuTensorMapEncodeTiled refuses (CUDA_ERROR_INVALID_VALUE), as the real wrapper words it.
    let encode_err = |why: String| Error::Cuda {
        context: format!(
            "cuTensorMapEncodeTiled for [{rows}, {cols}] box [{box_rows}, {box_cols}]"
        ),
        detail: format!("CUDA_ERROR_INVALID_VALUE (emulated device: {why})"),
    };
    let size = dtype.size_bytes();
    if elem_bytes != size as usize {
        return Err(encode_err(format!(
            "elem_bytes {elem_bytes} but {dtype:?} has {size}-byte elements"
        )));
    }
    if ptr == 0 {
        return Err(encode_err("null global address".into()));
    }
    for (what, dim) in [("rows", rows), ("cols", cols)] {
        if dim == 0 || dim as u64 > 1 << 32 {
            return Err(encode_err(format!("{what} = {dim} is outside 1..=2^32")));
        }
    }
    if (row_bytes as u64) >= 1 << 40 || row_bytes < cols * size as usize {
        return Err(encode_err(format!(
            "row stride {row_bytes} bytes must hold a row ({cols} x {size} bytes) and be < 2^40"
        )));
    }
    for (what, b) in [("box_rows", box_rows), ("box_cols", box_cols)] {
        if !(1..=256).contains(&b) {
            return Err(encode_err(format!("{what} = {b} is outside 1..=256")));
        }
    }
    let box_row_bytes = box_cols * size;
    if box_row_bytes % 16 != 0 {
        return Err(encode_err(format!(
            "a box row ({box_row_bytes} bytes) must be a multiple of 16 bytes"
        )));
    }
    let span = swizzle.bytes();
    if span != 0 && box_row_bytes > span {
        return Err(encode_err(format!(
            "a box row ({box_row_bytes} bytes) exceeds the {span}-byte swizzle span"
        )));
    }
    let emu = EmuTensorMap {
        magic: MAGIC,
        rank: 2,
        elem_bytes: size,
        swizzle_bytes: span,
        global_address: ptr,
        dims: [cols as u64, rows as u64, 1, 1, 1],
        strides_bytes: [u64::from(size), row_bytes as u64, 0, 0, 0],
        boxes: [box_cols, box_rows, 1, 1, 1],
    };
    let mut map = TensorMap([0; 16]);
    // SAFETY: EmuTensorMap fits in the 128 bytes (checked at compile time); both are plain data
    // and `map` is 128-byte aligned, more than EmuTensorMap needs.
    unsafe { std::ptr::write(map.0.as_mut_ptr().cast::<EmuTensorMap>(), emu) };
    Ok(map)
}
