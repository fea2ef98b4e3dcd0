//! Making one output tensor's bytes from the memory-mapped input, a bounded slice at a time:
//! elementwise conversions in chunks of [`CHUNK_ELEMENTS`], block conversions (dequantizing,
//! quantizing) in whole 128-row block rows of about that many elements, each chunk spread over
//! the rayon threads. Memory stays a few chunks whatever the tensor's size.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use half::{bf16, f16};
use kernels::DType;
use rayon::prelude::*;

use crate::checkpoint::write::TensorSink;
use crate::checkpoint::{quantize_fp8_blocks_with, scale_name, Checkpoint};
use crate::config::FP8_WEIGHT_BLOCK;
use crate::error::{ModelError, Result};

use super::plan::{Action, OutTensor};

/// Elements converted per step (about 16 MiB of f32).
const CHUNK_ELEMENTS: usize = 1 << 22;

/// The scales of the weights quantized so far in this shard, until they are written.
pub type ScaleCache = HashMap<String, Vec<f32>>;

/// Writes the bytes of `t` to `sink`. `ue8m0`: power-of-two scales when quantizing.
pub fn write_tensor(
    ckpt: &Checkpoint,
    t: &OutTensor,
    ue8m0: bool,
    sink: &mut TensorSink<'_>,
    scales: &mut ScaleCache,
) -> Result<()> {
    if t.action != Action::Scales {
        // NaN or Inf would turn into NaN codes or scales (or be copied into a checkpoint that
        // loads): refuse, naming the tensor and element.
        ckpt.check_finite_tensor(&t.source)?;
    }
    match t.action {
        Action::Copy => sink.write(ckpt.bytes(&t.source)?),
        Action::ToBf16 => {
            let values = Floats::open(ckpt, &t.source)?;
            let len = values.len();
            for start in (0..len).step_by(CHUNK_ELEMENTS) {
                let chunk = values.to_f32(start..(start + CHUNK_ELEMENTS).min(len));
                sink.write(&bf16_bytes(&chunk))?;
            }
            Ok(())
        }
        Action::Dequantize => dequantize(ckpt, t, sink),
        Action::Quantize => {
            let s = quantize(ckpt, t, ue8m0, sink)?;
            scales.insert(t.source.clone(), s);
            Ok(())
        }
        Action::Scales => {
            let s = scales.remove(&t.source).ok_or_else(|| {
                // `write_order` puts every scale after its weight's codes; this is a bug guard.
                ModelError::request(format!(
                    "internal: the scales of `{}` are due before its codes were written",
                    t.source
                ))
            })?;
            let bytes: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            sink.write(&bytes)
        }
    }
}

/// A BF16, F16 or F32 tensor, viewed in place in the map where aligned.
enum Floats<'a> {
    Bf16(Cow<'a, [bf16]>),
    F16(Cow<'a, [f16]>),
    F32(Cow<'a, [f32]>),
}

impl<'a> Floats<'a> {
    fn open(ckpt: &'a Checkpoint, name: &str) -> Result<Self> {
        Ok(match ckpt.info(name)?.dtype {
            DType::Bf16 => Floats::Bf16(ckpt.bf16(name)?),
            DType::F16 => Floats::F16(ckpt.f16(name)?),
            DType::F32 => Floats::F32(ckpt.f32(name)?),
            other => {
                return Err(ModelError::TensorDtype {
                    name: name.to_string(),
                    expected: "BF16, F16 or F32".into(),
                    found: crate::checkpoint::safetensors_dtype_name(other).into(),
                })
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            Floats::Bf16(v) => v.len(),
            Floats::F16(v) => v.len(),
            Floats::F32(v) => v.len(),
        }
    }

    /// Elements `range` widened to f32 (exact for all three types).
    fn to_f32(&self, range: Range<usize>) -> Vec<f32> {
        match self {
            Floats::Bf16(v) => v[range].par_iter().map(|x| x.to_f32()).collect(),
            Floats::F16(v) => v[range].par_iter().map(|x| x.to_f32()).collect(),
            Floats::F32(v) => v[range].to_vec(),
        }
    }
}

/// f32 values rounded to BF16 (nearest even), little-endian bytes.
fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .par_iter()
        .flat_map_iter(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
        .collect()
}

/// [n, k] of a linear weight's output header.
fn dims(t: &OutTensor) -> (usize, usize) {
    match t.header.shape.as_slice() {
        &[n, k] => (n, k),
        _ => unreachable!("linear weights are matrices (checked when the checkpoint opened)"),
    }
}

/// Rows per step of a block conversion: whole 128-row block rows, about [`CHUNK_ELEMENTS`].
fn rows_per_step(k: usize) -> usize {
    let block = FP8_WEIGHT_BLOCK * k.max(1);
    (CHUNK_ELEMENTS / block).max(1) * FP8_WEIGHT_BLOCK
}

/// FP8 codes times their block scales in f32, rounded to BF16.
fn dequantize(ckpt: &Checkpoint, t: &OutTensor, sink: &mut TensorSink<'_>) -> Result<()> {
    let (n, k) = dims(t);
    let codes = ckpt.e4m3(&t.source)?;
    let scales = ckpt.to_f32(&scale_name(&t.source))?;
    let kb = k.div_ceil(FP8_WEIGHT_BLOCK);
    let table = kernels::dtype::e4m3_decode_table();
    let step = rows_per_step(k);
    for r0 in (0..n).step_by(step) {
        let rows = r0..(r0 + step).min(n);
        let values: Vec<f32> = (rows.start * k..rows.end * k)
            .into_par_iter()
            .map(|i| {
                let (r, c) = (i / k, i % k);
                let scale = scales[(r / FP8_WEIGHT_BLOCK) * kb + c / FP8_WEIGHT_BLOCK];
                table[usize::from(codes[i].0)] * scale
            })
            .collect();
        sink.write(&bf16_bytes(&values))?;
    }
    Ok(())
}

/// Quantizes a BF16, F16 or F32 weight per 128x128 block, a group of block rows at a time (each
/// block row with [`quantize_fp8_blocks_with`], which gives the bits it gives on the whole
/// matrix); writes the codes and returns the scales, row-major [ceil(n/128), ceil(k/128)].
fn quantize(
    ckpt: &Checkpoint,
    t: &OutTensor,
    ue8m0: bool,
    sink: &mut TensorSink<'_>,
) -> Result<Vec<f32>> {
    let (n, k) = dims(t);
    let values = Floats::open(ckpt, &t.source)?;
    let mut scales =
        Vec::with_capacity(n.div_ceil(FP8_WEIGHT_BLOCK) * k.div_ceil(FP8_WEIGHT_BLOCK));
    let step = rows_per_step(k);
    for r0 in (0..n).step_by(step) {
        let rows = (r0..(r0 + step).min(n)).count();
        let w = values.to_f32(r0 * k..(r0 + rows) * k);
        let q = quantize_fp8_blocks_with(&w, rows, k, ue8m0);
        scales.extend(q.scales);
        let codes: Vec<u8> = q.q.iter().map(|c| c.0).collect();
        sink.write(&codes)?;
    }
    Ok(scales)
}
