//! What `dsv3 convert` writes: every output tensor, how it is made from the input, and which
//! shard it goes to.

use kernels::DType;

use crate::checkpoint::{scale_name, scale_shape, Checkpoint, TensorHeader, TensorRole};
use crate::error::{ModelError, Result};

use super::Target;

/// How one output tensor is made from the input checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// The stored bytes, unchanged (the element type too).
    Copy,
    /// F32 or F16 values rounded to BF16 (nearest even).
    ToBf16,
    /// An FP8 weight: each e4m3 code times its block's `weight_scale_inv` in f32, rounded to BF16
    /// (what DeepSeek's `fp8_cast_bf16.py` computes). Its scale tensor is not written.
    Dequantize,
    /// A BF16, F16 or F32 weight quantized per 128x128 block (spec §4.3): the e4m3 codes.
    Quantize,
    /// The F32 `weight_scale_inv` of a [`Quantize`](Action::Quantize)d weight, computed with its
    /// codes (`source` names the weight).
    Scales,
}

/// One tensor of the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    pub header: TensorHeader,
    /// The input tensor it is made from.
    pub source: String,
    pub action: Action,
}

impl OutTensor {
    /// A `weight_scale_inv` tensor: written after the other tensors of its shard (see
    /// [`write_order`]).
    fn is_scale(&self) -> bool {
        self.header.name.ends_with("_scale_inv")
    }
}

/// Tensors that must share a shard: a weight and its scale, or a single tensor.
#[derive(Clone, Debug, Default)]
pub struct Unit {
    pub tensors: Vec<OutTensor>,
}

impl Unit {
    pub fn size_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.header.size_bytes()).sum()
    }
}

/// The output tensors for converting `ckpt` to `to`, in the input's tensor order
/// ([`Checkpoint::specs`]), each FP8 weight grouped with its scale.
///
/// - to BF16: FP8 weights are [dequantized](Action::Dequantize) and their scales dropped; F32 and
///   F16 tensors are rounded to BF16, except the router's `e_score_correction_bias`, which keeps
///   its stored type (the released checkpoints keep it in F32, and rounding it would move the
///   routing decisions it exists to bias); BF16 tensors are copied.
/// - to FP8: the weights the released checkpoints store in FP8 are
///   [quantized](Action::Quantize) when the input stores them unquantized, copied with their
///   scales when it stores them in FP8; every other tensor is copied in its stored type (F32
///   stays F32: nothing is lost, and the loader accepts any float type there, spec §7.2).
pub fn plan(ckpt: &Checkpoint, to: Target) -> Result<Vec<Unit>> {
    let mut units: Vec<Unit> = Vec::new();
    for spec in ckpt.specs() {
        let info = ckpt.info(&spec.name)?;
        let header = |dtype: DType, shape: Vec<usize>| TensorHeader {
            name: spec.name.clone(),
            dtype,
            shape,
        };
        let single = |dtype, action| Unit {
            tensors: vec![OutTensor {
                header: header(dtype, spec.shape.clone()),
                source: spec.name.clone(),
                action,
            }],
        };
        if spec.role == TensorRole::WeightScale {
            if to == Target::Fp8 {
                // Copied with its weight, which the specs list just before it.
                let weight = spec.name.strip_suffix("_scale_inv").unwrap_or(&spec.name);
                let unit = units
                    .last_mut()
                    .filter(|u| u.tensors.first().is_some_and(|t| t.source == weight))
                    .ok_or_else(|| ModelError::MissingTensor {
                        name: weight.to_string(),
                    })?;
                unit.tensors.push(OutTensor {
                    header: header(info.dtype, spec.shape.clone()),
                    source: spec.name.clone(),
                    action: Action::Copy,
                });
            }
            continue;
        }
        let unit = match (to, info.dtype) {
            (Target::Bf16, DType::E4m3) => single(DType::Bf16, Action::Dequantize),
            (Target::Fp8, DType::E4m3) => single(DType::E4m3, Action::Copy),
            (Target::Fp8, _)
                if spec.role == TensorRole::Linear && ckpt.is_fp8_in_release(&spec.name) =>
            {
                let (n, k) = (spec.shape[0], spec.shape[1]);
                let scale = TensorHeader {
                    name: scale_name(&spec.name),
                    dtype: DType::F32,
                    shape: scale_shape(n, k).to_vec(),
                };
                Unit {
                    tensors: vec![
                        OutTensor {
                            header: header(DType::E4m3, spec.shape.clone()),
                            source: spec.name.clone(),
                            action: Action::Quantize,
                        },
                        OutTensor {
                            header: scale,
                            source: spec.name.clone(),
                            action: Action::Scales,
                        },
                    ],
                }
            }
            (Target::Bf16, DType::F32 | DType::F16) if spec.role != TensorRole::ScoreBias => {
                single(DType::Bf16, Action::ToBf16)
            }
            (_, dtype) => single(dtype, Action::Copy),
        };
        units.push(unit);
    }
    Ok(units)
}

/// Splits `units` into consecutive shards of at most `max_bytes` of tensor data each (a unit
/// larger than that gets a shard of its own, as transformers' `save_pretrained` does).
pub fn shards(units: Vec<Unit>, max_bytes: usize) -> Vec<Vec<OutTensor>> {
    let mut shards: Vec<Vec<OutTensor>> = Vec::new();
    let mut filled = 0;
    for unit in units {
        let size = unit.size_bytes();
        match shards.last_mut() {
            Some(shard) if !shard.is_empty() && filled + size <= max_bytes => {
                filled += size;
                shard.extend(unit.tensors);
            }
            _ => {
                filled = size;
                shards.push(unit.tensors);
            }
        }
    }
    shards
}

/// The order a shard's tensors are written in: the larger element types first, as the
/// safetensors crate's serializer orders them, so every tensor starts at a multiple of its
/// element size (the loader then views it in place); the scales last, after the codes of their
/// weights, so a quantized weight's scales are ready when they are written. Stable otherwise:
/// the input's order within each group.
pub fn write_order(mut shard: Vec<OutTensor>) -> Vec<OutTensor> {
    shard.sort_by_key(|t| (t.is_scale(), std::cmp::Reverse(t.header.dtype.size_bytes())));
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dtype: DType, len: usize) -> OutTensor {
        OutTensor {
            header: TensorHeader {
                name: name.into(),
                dtype,
                shape: vec![len],
            },
            source: name.into(),
            action: Action::Copy,
        }
    }

    #[test]
    fn shards_are_bounded_and_keep_units_together() {
        let unit = |ts: Vec<OutTensor>| Unit { tensors: ts };
        let units = vec![
            unit(vec![tensor("a", DType::Bf16, 40)]),
            unit(vec![
                tensor("b", DType::E4m3, 50),
                tensor("b_scale_inv", DType::F32, 1),
            ]),
            unit(vec![tensor("c", DType::F32, 100)]),
            unit(vec![tensor("d", DType::Bf16, 10)]),
        ];
        let names = |s: &[OutTensor]| s.iter().map(|t| t.header.name.clone()).collect::<Vec<_>>();
        let out = shards(units, 140);
        let got: Vec<Vec<String>> = out.iter().map(|s| names(s)).collect();
        // 80 + 54 fit in 140; c alone is 400 bytes (over the limit: its own shard); d after it.
        assert_eq!(got, [vec!["a", "b", "b_scale_inv"], vec!["c"], vec!["d"]]);
        let ordered = write_order(vec![
            tensor("x_scale_inv", DType::F32, 1),
            tensor("x", DType::E4m3, 4),
            tensor("n", DType::Bf16, 4),
            tensor("f", DType::F32, 4),
            tensor("m", DType::Bf16, 4),
        ]);
        assert_eq!(names(&ordered), ["f", "n", "m", "x", "x_scale_inv"]);
    }
}
