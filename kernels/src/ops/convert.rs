use crate::cubins::DTYPE_CONVERT;
use crate::dtype::E4m3;
use crate::error::Result;
use crate::gpu::{grid_1d, DeviceTensor, Gpu, PushKernelArg};

fn launch(gpu: &Gpu, kernel: &'static str, src: u64, dst: u64, n: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&DTYPE_CONVERT, kernel)?;
    let n_i = n as i64;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&src).arg(&dst).arg(&n_i);
    let blocks = n.div_ceil(256).min(65_535) as u32;
    // SAFETY: both buffers hold n elements (checked by the callers).
    unsafe { gpu.launch(kernel, args, grid_1d(blocks, 256, 0)) }
}

/// The hardware f32 -> e4m3 conversion (RNE, saturating), element-wise.
pub fn f32_to_e4m3(gpu: &Gpu, x: &DeviceTensor<f32>, out: &mut DeviceTensor<E4m3>) -> Result<()> {
    out.expect_shape("f32_to_e4m3", "out", x.shape())?;
    launch(
        gpu,
        "f32_to_e4m3_kernel",
        x.device_ptr(gpu),
        out.device_ptr(gpu),
        x.len(),
    )
}

/// The hardware e4m3 -> f32 decode, element-wise.
pub fn e4m3_to_f32(gpu: &Gpu, q: &DeviceTensor<E4m3>, out: &mut DeviceTensor<f32>) -> Result<()> {
    out.expect_shape("e4m3_to_f32", "out", q.shape())?;
    launch(
        gpu,
        "e4m3_to_f32_kernel",
        q.device_ptr(gpu),
        out.device_ptr(gpu),
        q.len(),
    )
}
