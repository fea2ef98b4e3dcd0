//! FP8 activation quantization (spec §4): per token, per 128 consecutive channels,
//! a = max(amax, 1e-4), scale = a / 448 (optionally rounded up to a power of two, "ue8m0"),
//! q = e4m3(x / scale) with round-to-nearest-even.
//!
//! # Scale layouts (the one place they are defined)
//!
//! A [tokens, channels] activation has `blocks = ceil(channels / 128)` scales per token:
//! - [`ScaleLayout::TokenMajor`]: `scales[t * blocks + b]`, the natural [tokens, blocks] order.
//! - [`ScaleLayout::BlockMajor`]: `scales[b * stride + t]` with `stride = round_up(tokens, 4)`,
//!   i.e. transposed to [blocks, stride]. This is what the FP8 GEMM's TMA loads want: one K block's
//!   scales for a tile of rows are contiguous, and each row of the table starts 16-byte aligned.
//!   Padding entries (t >= tokens) are written as 0.
//!
//! Every kernel that produces or consumes activation scales uses these two layouts and the
//! [`Fp8Activations::scale_index`] formula; nothing else.

use crate::dtype::{e4m3_from_f32, e4m3_to_f32, E4m3, Float, E4M3_MAX};
use crate::error::{Error, Result};
use crate::reference::silu_mul::{check_gate_up, silu};

/// Channels per quantization block.
pub const FP8_BLOCK: usize = 128;
/// Row alignment (in scales) of the block-major layout: 4 f32 = 16 bytes, TMA's granule.
pub const BLOCK_MAJOR_ALIGN: usize = 4;

const OP: &str = "quantize_fp8";

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ScaleLayout {
    TokenMajor,
    BlockMajor,
}

/// Quantized activations: e4m3 codes [tokens, channels] and their f32 scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Activations {
    pub q: Vec<E4m3>,
    pub scales: Vec<f32>,
    pub tokens: usize,
    pub channels: usize,
    pub layout: ScaleLayout,
}

impl Fp8Activations {
    pub fn blocks(&self) -> usize {
        self.channels.div_ceil(FP8_BLOCK)
    }

    /// Number of f32 entries of the scale table for this shape and layout.
    pub fn scale_len(tokens: usize, channels: usize, layout: ScaleLayout) -> usize {
        let blocks = channels.div_ceil(FP8_BLOCK);
        match layout {
            ScaleLayout::TokenMajor => tokens * blocks,
            ScaleLayout::BlockMajor => blocks * tokens.next_multiple_of(BLOCK_MAJOR_ALIGN),
        }
    }

    /// Position of the scale of (token t, block b) in `scales`.
    pub fn scale_index(
        tokens: usize,
        channels: usize,
        layout: ScaleLayout,
        t: usize,
        b: usize,
    ) -> usize {
        match layout {
            ScaleLayout::TokenMajor => t * channels.div_ceil(FP8_BLOCK) + b,
            ScaleLayout::BlockMajor => b * tokens.next_multiple_of(BLOCK_MAJOR_ALIGN) + t,
        }
    }

    pub fn scale(&self, t: usize, b: usize) -> f32 {
        self.scales[Self::scale_index(self.tokens, self.channels, self.layout, t, b)]
    }
}

/// The scale of one block from its absolute maximum.
pub fn block_scale(amax: f32, ue8m0: bool) -> f32 {
    let scale = amax.max(1e-4) / E4M3_MAX;
    if !ue8m0 {
        return scale;
    }
    // Round up to a power of two by bumping the exponent when any mantissa bit is set
    // (the same bit trick as `fp8_block_scale` in kernels/include/dsv3/fp8.cuh).
    let bits = scale.to_bits();
    let pow2 = bits & 0xff80_0000;
    f32::from_bits(if bits & 0x007f_ffff != 0 {
        pow2 + 0x0080_0000
    } else {
        pow2
    })
}

/// Quantizes rows of f32 values (already computed in f32) into `out`.
fn quantize_rows(
    rows: impl Iterator<Item = Vec<f32>>,
    tokens: usize,
    channels: usize,
    ue8m0: bool,
    layout: ScaleLayout,
) -> Fp8Activations {
    let mut q = Vec::with_capacity(tokens * channels);
    let mut scales = vec![0.0f32; Fp8Activations::scale_len(tokens, channels, layout)];
    for (t, row) in rows.enumerate() {
        for (b, block) in row.chunks(FP8_BLOCK).enumerate() {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = block_scale(amax, ue8m0);
            scales[Fp8Activations::scale_index(tokens, channels, layout, t, b)] = scale;
            q.extend(block.iter().map(|v| E4m3(e4m3_from_f32(v / scale))));
        }
    }
    Fp8Activations {
        q,
        scales,
        tokens,
        channels,
        layout,
    }
}

/// Quantizes `x` ([tokens, channels]) per token per 128 channels (a last partial block is its own
/// block).
pub fn quantize_fp8<T: Float>(
    x: &[T],
    channels: usize,
    ue8m0: bool,
    layout: ScaleLayout,
) -> Result<Fp8Activations> {
    if channels == 0 {
        return Err(Error::invalid(OP, "channels is 0"));
    }
    if x.len() % channels != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "x has {} elements, not a multiple of {channels} channels",
                x.len()
            ),
        ));
    }
    let tokens = x.len() / channels;
    let rows = x
        .chunks_exact(channels)
        .map(|r| r.iter().map(|v| v.to_f32()).collect());
    Ok(quantize_rows(rows, tokens, channels, ue8m0, layout))
}

/// SiLU-and-mul fused with quantization: the f32 products silu(gate) * up are quantized directly
/// (no intermediate rounding to BF16), as the fused kernel does.
pub fn silu_and_mul_quantize_fp8<T: Float>(
    x: &[T],
    inter: usize,
    ue8m0: bool,
    layout: ScaleLayout,
) -> Result<Fp8Activations> {
    let tokens = check_gate_up(x.len(), inter)?;
    let rows = x.chunks_exact(2 * inter).map(|row| {
        let (gate, up) = row.split_at(inter);
        gate.iter()
            .zip(up)
            .map(|(g, u)| silu(g.to_f32()) * u.to_f32())
            .collect()
    });
    Ok(quantize_rows(rows, tokens, inter, ue8m0, layout))
}

/// q * scale back to f32 ([tokens, channels]).
pub fn dequantize_fp8(a: &Fp8Activations) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.q.len());
    for (t, row) in a.q.chunks_exact(a.channels).enumerate() {
        for (b, block) in row.chunks(FP8_BLOCK).enumerate() {
            let scale = a.scale(t, b);
            out.extend(block.iter().map(|q| e4m3_to_f32(q.0) * scale));
        }
    }
    out
}
