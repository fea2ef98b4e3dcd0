use half::bf16;

use super::{as_i32, vec8_ok};
use crate::cubins::SILU_MUL;
use crate::error::{Error, Result};
use crate::gpu::{DeviceTensor, Gpu, LaunchConfig, PushKernelArg};

const OP: &str = "silu_and_mul";
const THREADS: u32 = 256;

/// Returns (rows, inter) of a [rows, 2*inter] gate|up input and checks `out` is [rows, inter].
pub(crate) fn check_gate_up<T: crate::gpu::DeviceElement, U: crate::gpu::DeviceElement>(
    op: &'static str,
    x: &DeviceTensor<T>,
    out: &DeviceTensor<U>,
) -> Result<(usize, usize)> {
    let &[rows, width] = x.shape() else {
        return Err(Error::shape(
            op,
            format!("x must be [rows, 2 * inter], got {:?}", x.shape()),
        ));
    };
    if width == 0 || width % 2 != 0 {
        return Err(Error::shape(
            op,
            format!("x width {width} is not 2 * inter"),
        ));
    }
    out.expect_shape(op, "out", &[rows, width / 2])?;
    Ok((rows, width / 2))
}

/// out[r] = silu(x[r, :inter]) * x[r, inter:].
pub fn silu_and_mul(gpu: &Gpu, x: &DeviceTensor<bf16>, out: &mut DeviceTensor<bf16>) -> Result<()> {
    let (rows, inter) = check_gate_up(OP, x, out)?;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&SILU_MUL, "silu_and_mul_bf16")?;
    let (xp, op) = (x.device_ptr(gpu), out.device_ptr(gpu));
    let vec = vec8_ok(inter, &[xp, op]);
    let per_block = if vec {
        THREADS as usize * 8
    } else {
        THREADS as usize
    };
    let inter_i = as_i32(OP, "inter", inter)?;
    let vec_i = i32::from(vec);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&xp).arg(&op).arg(&inter_i).arg(&vec_i);
    let cfg = LaunchConfig {
        grid_dim: (
            inter.div_ceil(per_block) as u32,
            as_i32(OP, "rows", rows)? as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    if rows > 65_535 {
        return Err(Error::invalid(
            OP,
            format!("{rows} rows exceed the grid's y limit 65535"),
        ));
    }
    // SAFETY: x is [rows, 2*inter], out [rows, inter], checked above.
    unsafe { gpu.launch("silu_and_mul_bf16", args, cfg) }
}
