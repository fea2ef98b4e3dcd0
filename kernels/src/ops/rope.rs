use half::bf16;

use super::as_i32;
use crate::cubins::ROPE;
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, DeviceStatus, DeviceTensor, Gpu, PushKernelArg};
use crate::reference::rope::{RopeLayout, RopeParams};

const OP: &str = "rope";

/// The cos/sin table on the device: [max_positions, rope_dim / 2] (cos, sin) pairs, computed once
/// from `RopeParams` in f64 (identical to what the reference uses).
#[derive(Debug)]
pub struct RopeTable {
    pub table: DeviceTensor<f32>,
    pub rope_dim: usize,
    pub max_positions: usize,
}

impl RopeTable {
    pub fn new(gpu: &Gpu, params: &RopeParams, max_positions: usize) -> Result<Self> {
        let half = params.rope_dim / 2;
        let table = gpu.upload(
            &params.cos_sin_table(max_positions),
            &[max_positions, half, 2],
        )?;
        Ok(RopeTable {
            table,
            rope_dim: params.rope_dim,
            max_positions,
        })
    }
}

/// Rotates the rotary values of `x` in place (layout as in `reference::rope::RopeLayout`).
/// positions [tokens]; a position outside the table leaves that token untouched and is recorded
/// in `status`.
pub fn apply_rope(
    gpu: &Gpu,
    x: &mut DeviceTensor<bf16>,
    layout: &RopeLayout,
    positions: &DeviceTensor<i32>,
    table: &RopeTable,
    status: &mut DeviceStatus,
) -> Result<()> {
    layout.check(x.len(), table.rope_dim)?;
    positions.expect_shape(OP, "positions", &[layout.tokens])?;
    if layout.head_stride % 2 != 0 || layout.token_stride % 2 != 0 || layout.offset % 2 != 0 {
        return Err(Error::invalid(
            OP,
            format!("strides and offset must be even (pairs are loaded as bf16x2): {layout:?}"),
        ));
    }
    if layout.tokens == 0 || layout.heads == 0 {
        return Ok(());
    }
    let f = gpu.function(&ROPE, "rope_bf16")?;
    let (xp, pp, tp, sp) = (
        x.device_ptr(gpu),
        positions.device_ptr(gpu),
        table.table.device_ptr(gpu),
        status.word().device_ptr(gpu),
    );
    let heads = as_i32(OP, "heads", layout.heads)?;
    let (ts, hs) = (layout.token_stride as i64, layout.head_stride as i64);
    let offset = as_i32(OP, "offset", layout.offset)?;
    let half = as_i32(OP, "rope_dim / 2", table.rope_dim / 2)?;
    let max_pos = as_i32(OP, "max_positions", table.max_positions)?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&xp)
        .arg(&pp)
        .arg(&tp)
        .arg(&heads)
        .arg(&ts)
        .arg(&hs)
        .arg(&offset)
        .arg(&half)
        .arg(&max_pos)
        .arg(&sp);
    let threads = (layout.heads * table.rope_dim / 2)
        .clamp(32, 256)
        .next_multiple_of(32) as u32;
    let blocks = as_i32(OP, "tokens", layout.tokens)? as u32;
    // SAFETY: the layout was checked against x's length; positions are range-checked in the kernel.
    unsafe { gpu.launch("rope_bf16", args, grid_1d(blocks, threads, 0)) }
}
