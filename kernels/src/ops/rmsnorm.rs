use half::bf16;

use super::{as_i32, vec8_ok};
use crate::cubins::RMSNORM;
use crate::error::{Error, Result};
use crate::gpu::{grid_1d, DeviceTensor, Gpu, PushKernelArg};

const OP: &str = "rms_norm";
const THREADS: u32 = 256;

fn check(
    x: &DeviceTensor<bf16>,
    weight: &DeviceTensor<bf16>,
    out: &DeviceTensor<bf16>,
) -> Result<(usize, usize)> {
    let &[rows, hidden] = x.shape() else {
        return Err(Error::shape(
            OP,
            format!("x must be [rows, hidden], got {:?}", x.shape()),
        ));
    };
    if hidden == 0 {
        return Err(Error::invalid(OP, "hidden size is 0"));
    }
    weight.expect_shape(OP, "weight", &[hidden])?;
    out.expect_shape(OP, "out", &[rows, hidden])?;
    Ok((rows, hidden))
}

#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &Gpu,
    x: u64,
    res_in: u64,
    res_out: u64,
    weight: u64,
    out: u64,
    rows: usize,
    hidden: usize,
    eps: f32,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&RMSNORM, "rms_norm_bf16")?;
    let hidden_i = as_i32(OP, "hidden", hidden)?;
    let vec8 = i32::from(vec8_ok(hidden, &[x, res_in, res_out, weight, out]));
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&x)
        .arg(&res_in)
        .arg(&res_out)
        .arg(&weight)
        .arg(&out)
        .arg(&hidden_i)
        .arg(&eps)
        .arg(&vec8);
    let blocks = u32::try_from(rows)
        .map_err(|_| Error::invalid(OP, format!("{rows} rows exceed the grid limit")))?;
    // SAFETY: shapes checked by the callers: x/out/residual [rows, hidden], weight [hidden].
    unsafe { gpu.launch("rms_norm_bf16", args, grid_1d(blocks, THREADS, 0)) }
}

/// out = RMSNorm(x, weight) for x [rows, hidden].
pub fn rms_norm(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    weight: &DeviceTensor<bf16>,
    eps: f32,
    out: &mut DeviceTensor<bf16>,
) -> Result<()> {
    let (rows, hidden) = check(x, weight, out)?;
    launch(
        gpu,
        x.device_ptr(gpu),
        0,
        0,
        weight.device_ptr(gpu),
        out.device_ptr(gpu),
        rows,
        hidden,
        eps,
    )
}

/// residual <- x + residual (rounded to BF16), out = RMSNorm(residual, weight).
pub fn fused_add_rms_norm(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    residual: &mut DeviceTensor<bf16>,
    weight: &DeviceTensor<bf16>,
    eps: f32,
    out: &mut DeviceTensor<bf16>,
) -> Result<()> {
    let (rows, hidden) = check(x, weight, out)?;
    residual.expect_shape(OP, "residual", &[rows, hidden])?;
    let r = residual.device_ptr(gpu);
    launch(
        gpu,
        x.device_ptr(gpu),
        r,
        r,
        weight.device_ptr(gpu),
        out.device_ptr(gpu),
        rows,
        hidden,
        eps,
    )
}
