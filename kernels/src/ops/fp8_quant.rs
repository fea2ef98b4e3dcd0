use half::bf16;

use super::as_i32;
use super::silu_mul::check_gate_up;
use crate::cubins::FP8_QUANT;
use crate::dtype::E4m3;
use crate::error::{Error, Result};
use crate::gpu::{DeviceTensor, Gpu, LaunchConfig, PushKernelArg};
use crate::reference::fp8_quant::{Fp8Activations, ScaleLayout, FP8_BLOCK};

const WARPS_PER_CTA: usize = 8;

/// Device outputs of FP8 activation quantization: codes [tokens, channels] and the scale table in
/// `layout` (see `reference::fp8_quant` for the two layouts).
#[derive(Debug)]
pub struct Fp8Buffers {
    pub q: DeviceTensor<E4m3>,
    pub scales: DeviceTensor<f32>,
    pub layout: ScaleLayout,
}

impl Fp8Buffers {
    /// Allocates outputs for [tokens, channels].
    pub fn new(gpu: &Gpu, tokens: usize, channels: usize, layout: ScaleLayout) -> Result<Self> {
        Ok(Fp8Buffers {
            q: gpu.zeros(&[tokens, channels])?,
            scales: gpu.zeros(&[Fp8Activations::scale_len(tokens, channels, layout)])?,
            layout,
        })
    }

    fn tokens_channels(&self, op: &'static str) -> Result<(usize, usize)> {
        let &[tokens, channels] = self.q.shape() else {
            return Err(Error::shape(
                op,
                format!("q must be [tokens, channels], got {:?}", self.q.shape()),
            ));
        };
        self.scales.expect_shape(
            op,
            "scales",
            &[Fp8Activations::scale_len(tokens, channels, self.layout)],
        )?;
        Ok((tokens, channels))
    }
}

fn launch(
    gpu: &Gpu,
    kernel: &'static str,
    x: u64,
    out: &mut Fp8Buffers,
    tokens: usize,
    channels: usize,
    ue8m0: bool,
) -> Result<()> {
    let blocks = channels.div_ceil(FP8_BLOCK);
    let block_major = out.layout == ScaleLayout::BlockMajor;
    let scale_rows = if block_major {
        tokens.next_multiple_of(4)
    } else {
        tokens
    };
    if tokens == 0 || channels == 0 {
        return Ok(());
    }
    if scale_rows > 65_535 {
        return Err(Error::invalid(
            kernel,
            format!("{tokens} tokens exceed the grid's y limit 65535"),
        ));
    }
    let f = gpu.function(&FP8_QUANT, kernel)?;
    let (qp, sp) = (out.q.device_ptr(gpu), out.scales.device_ptr(gpu));
    let (tokens_i, channels_i) = (
        as_i32(kernel, "tokens", tokens)?,
        as_i32(kernel, "channels", channels)?,
    );
    let (ue8m0_i, block_major_i, stride_i) =
        (i32::from(ue8m0), i32::from(block_major), scale_rows as i32);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&x)
        .arg(&qp)
        .arg(&sp)
        .arg(&tokens_i)
        .arg(&channels_i)
        .arg(&ue8m0_i)
        .arg(&block_major_i)
        .arg(&stride_i);
    let cfg = LaunchConfig {
        grid_dim: (blocks.div_ceil(WARPS_PER_CTA) as u32, scale_rows as u32, 1),
        block_dim: ((WARPS_PER_CTA * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: x, q and scales shapes checked by the callers.
    unsafe { gpu.launch(kernel, args, cfg) }
}

/// Quantizes x [tokens, channels] per token per 128 channels into `out`.
pub fn quantize_fp8(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    ue8m0: bool,
    out: &mut Fp8Buffers,
) -> Result<()> {
    const OP: &str = "quantize_fp8";
    let (tokens, channels) = out.tokens_channels(OP)?;
    x.expect_shape(OP, "x", &[tokens, channels])?;
    launch(
        gpu,
        "quantize_fp8_bf16",
        x.device_ptr(gpu),
        out,
        tokens,
        channels,
        ue8m0,
    )
}

/// silu(gate) * up for x [tokens, 2 * inter], quantized directly from f32 into `out` [tokens, inter].
pub fn silu_and_mul_quantize_fp8(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    ue8m0: bool,
    out: &mut Fp8Buffers,
) -> Result<()> {
    const OP: &str = "silu_and_mul_quantize_fp8";
    let (tokens, inter) = out.tokens_channels(OP)?;
    check_gate_up(OP, x, &out.q)?;
    launch(
        gpu,
        "silu_and_mul_quantize_fp8_bf16",
        x.device_ptr(gpu),
        out,
        tokens,
        inter,
        ue8m0,
    )
}
