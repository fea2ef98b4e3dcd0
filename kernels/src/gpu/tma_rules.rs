//! The checks `tensor_map_2d` makes before encoding, shared by the real and the emulated device so
//! both refuse the same maps with the same words.

use crate::error::{Error, Result};

/// Alignment of the base and the row stride, and the 128-byte limit on a 128B-swizzled box row.
pub(crate) fn check_2d(
    ptr: u64,
    row_bytes: usize,
    box_cols: u32,
    elem_bytes: usize,
    swizzle_128b: bool,
) -> Result<()> {
    const OP: &str = "tensor_map_2d";
    if ptr % 16 != 0 || row_bytes % 16 != 0 {
        return Err(Error::invalid(
            OP,
            format!(
                "base address and row stride must be 16-byte aligned (row stride {row_bytes} bytes)"
            ),
        ));
    }
    if swizzle_128b && box_cols as usize * elem_bytes > 128 {
        return Err(Error::invalid(
            OP,
            "a 128B-swizzled box row must be at most 128 bytes",
        ));
    }
    Ok(())
}
