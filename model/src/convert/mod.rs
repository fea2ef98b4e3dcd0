//! `dsv3 convert`: rewrites a checkpoint as BF16 or as block-scaled FP8, in new shards.
//!
//! - **To BF16** every FP8 weight becomes `bf16(e4m3_value(q) * weight_scale_inv)`: the product in
//!   f32, rounded to nearest even once, as DeepSeek's `fp8_cast_bf16.py` does; the scales are
//!   dropped. F32 and F16 tensors are rounded to BF16 too (a BF16 checkpoint is asked for), except
//!   the router bias `e_score_correction_bias`, which keeps its type as in the released files.
//!   `quantization_config` is removed and `dtype` / `torch_dtype` say `bfloat16`.
//! - **To FP8** every weight that the released checkpoints store in FP8 (spec §2.2, the loader's
//!   own list: [`released_fp8_weights`](crate::checkpoint::released_fp8_weights)) is quantized
//!   per 128x128 block with the rule of the released files (spec §4.3: scale =
//!   max(amax, 1e-4) / 448, q = e4m3(w / scale); [`quantize_fp8_blocks_with`](crate::checkpoint::quantize_fp8_blocks_with)), its
//!   `weight_scale_inv` written as F32 [ceil(n/128), ceil(k/128)], and the released
//!   `quantization_config` added (with `scale_fmt: "ue8m0"` and power-of-two scales when asked,
//!   spec §4.4). Every other tensor keeps its stored type and bytes. This is the computation the
//!   CPU backend's `fp8` precision does at load on a BF16, F16 or F32 checkpoint, bit for bit.
//! - **To the format the input already has**, the tensors are copied unchanged into new shards (a
//!   re-shard; [`Summary::note`] says so). An F32 or F16 checkpoint converted to BF16 is rounded.
//!
//! The input is memory-mapped and never read whole: the output is planned first (names, types
//! and shapes are known before any value is), then each shard is written tensor by tensor, each
//! tensor a bounded chunk at a time (`tensors.rs`). Shards hold at most
//! [`ConvertOptions::shard_bytes`] of tensor data (a larger single tensor gets its own), named
//! `model-0000i-of-0000N.safetensors`, with `model.safetensors.index.json` in transformers'
//! format. The index is written last: an interrupted conversion leaves no loadable checkpoint.
//! The result is opened (every check of [`Checkpoint::open`]) before the summary is returned.
//!
//! # Round trips (FP8 -> BF16 -> FP8)
//!
//! Take one 128x128 block with codes q and scale s. To BF16 gives b = bf16(q s) (relative error
//! at most 2^-8, BF16's unit roundoff); back to FP8 gives s' = max(A, 1e-4) / 448 with A the
//! block's largest |b|, and q' = e4m3(b / s').
//!
//! - **Codes always come back** when the block was quantized by the rule above from a block
//!   maximum >= 1e-4 (its largest |q| is then 448): b / s' is q times (1 + e) with |e| below
//!   2^-7, and every e4m3 value is more than 2^-5 (relative) from the nearest rounding boundary,
//!   2^-10 absolute for the subnormals. (Measured on the fixtures: every code comes back.)
//! - **Scales come back** exactly when s = fl(A / 448) for a BF16 value A, i.e. when the block
//!   was quantized from weights whose largest magnitude is a BF16 number: then bf16(448 s) = A
//!   (448 s is within two f32 ulps of A, far inside half a BF16 ulp), so s' = s. So converting
//!   BF16 weights to FP8 and back to BF16 and to FP8 again returns the same bytes, and a second
//!   FP8 -> BF16 -> FP8 round trip is always exact. For scales quantized from f32 weights (the
//!   tiny model, the FP8 fixtures) the first round trip moves each scale to
//!   fl(bf16(448 s) / 448), within 2^-8 of s.
//! - **Power-of-two scales** (UE8M0, DeepSeek-V3.1): q s has at most 4 significant bits, so the
//!   BF16 values are exact and FP8 -> BF16 loses nothing (exact-precision logits are the same
//!   bits). Back to FP8 with `--scale-fmt ue8m0` the scale is the power of two at or above
//!   m s / 448, m the block's largest |q| (in [224, 448] since the source scale was rounded up):
//!   that is s, and the codes come back, for every block except those with m = 224 exactly,
//!   which come back as s / 2 and codes of twice the value; the dequantized values are the same
//!   bits in every block. With plain scales instead, codes and scales change (s' = m s / 448).

mod files;
mod plan;
mod tensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::write::{shard_file_name, write_index, write_safetensors_streaming};
use crate::checkpoint::{Checkpoint, Fp8Policy, TensorRole};
use crate::error::{ModelError, Result};

pub use files::COMPANION_FILES;
pub use plan::Action;

/// The format to convert to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every weight BF16 (no `quantization_config`).
    Bf16,
    /// The released FP8 layout (spec §2.2).
    Fp8,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Bf16 => "bf16",
            Target::Fp8 => "fp8",
        }
    }
}

/// Transformers' default shard size, 5 GB.
pub const DEFAULT_SHARD_BYTES: usize = 5_000_000_000;

/// What to convert to, and how to shard it.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub to: Target,
    /// With [`Target::Fp8`]: `Some(true)` power-of-two scales and `scale_fmt: "ue8m0"`
    /// (DeepSeek-V3.1), `Some(false)` plain f32 scales (V3, R1, Kimi-K2); `None` keeps the
    /// input's format when it is FP8, else plain.
    pub ue8m0: Option<bool>,
    /// Most tensor bytes per shard (a single larger tensor gets a shard of its own).
    pub shard_bytes: usize,
}

/// Where a conversion is, after each tensor written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub tensors_done: usize,
    pub tensors_total: usize,
    /// Output tensor bytes written so far, and in all.
    pub bytes_done: usize,
    pub bytes_total: usize,
    /// The shard being written (1-based) and the number of shards.
    pub shard: usize,
    pub shards: usize,
}

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct Summary {
    pub shards: Vec<PathBuf>,
    pub tensors: usize,
    /// Tensor data bytes (the index's `total_size`).
    pub bytes: usize,
    /// Output tensors per [`Action`], in the order of the enum.
    pub actions: Vec<(Action, usize)>,
    /// Input scale tensors not written (FP8 weights dequantized to BF16).
    pub scales_dropped: usize,
    /// The [`COMPANION_FILES`] copied.
    pub copied_files: Vec<String>,
    /// Set when the input already was in the target format: the conversion only re-shards.
    pub note: Option<String>,
}

/// Converts the checkpoint in `input` into `out` (created; an existing `out` must be an empty
/// directory). `progress` is called after every tensor written.
pub fn convert(
    input: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary> {
    if opts.shard_bytes == 0 {
        return Err(ModelError::request("the shard size must be positive"));
    }
    if opts.ue8m0.is_some() && opts.to != Target::Fp8 {
        return Err(ModelError::request(
            "a scale format (--scale-fmt) describes an FP8 checkpoint; it needs --to fp8",
        ));
    }
    let ckpt = Checkpoint::open(input)?;
    let source_fp8 = Fp8Policy::for_config(ckpt.config()) == Fp8Policy::Released;
    let ue8m0 = opts.ue8m0.unwrap_or(ckpt.config().ue8m0_scales());
    let note = reshard_note(&ckpt, opts.to, ue8m0)?;
    // The config is checked before anything is written.
    let config = files::converted_config(input, opts.to, ue8m0)?;
    files::prepare_out_dir(out)?;

    let units = plan::plan(&ckpt, opts.to)?;
    let scales_dropped = if opts.to == Target::Bf16 && source_fp8 {
        ckpt.specs()
            .iter()
            .filter(|s| s.role == TensorRole::WeightScale)
            .count()
    } else {
        0
    };
    let shards = plan::shards(units, opts.shard_bytes);
    let mut p = Progress {
        tensors_done: 0,
        tensors_total: shards.iter().map(Vec::len).sum(),
        bytes_done: 0,
        bytes_total: shards.iter().flatten().map(|t| t.header.size_bytes()).sum(),
        shard: 0,
        shards: shards.len(),
    };
    let mut actions: BTreeMap<Action, usize> = BTreeMap::new();
    let mut weight_map = BTreeMap::new();
    let mut paths = Vec::with_capacity(shards.len());
    for (i, shard) in shards.into_iter().enumerate() {
        let file = shard_file_name(i, p.shards);
        let path = out.join(&file);
        let tensors = plan::write_order(shard);
        let headers: Vec<_> = tensors.iter().map(|t| t.header.clone()).collect();
        let mut scales = tensors::ScaleCache::new();
        p.shard = i + 1;
        write_safetensors_streaming(&path, &headers, &mut |j, sink| {
            let t = &tensors[j];
            tensors::write_tensor(&ckpt, t, ue8m0, sink, &mut scales)?;
            p.tensors_done += 1;
            p.bytes_done += t.header.size_bytes();
            progress(&p);
            Ok(())
        })?;
        for t in tensors {
            *actions.entry(t.action).or_default() += 1;
            weight_map.insert(t.header.name, file.clone());
        }
        paths.push(path);
    }

    let copied_files = files::copy_companions(input, out)?;
    let config_path = out.join("config.json");
    std::fs::write(&config_path, config).map_err(|e| ModelError::io(&config_path, e))?;
    write_index(out, p.bytes_total, &weight_map)?;

    // Every check the loader makes, on what was written (headers, index, shapes, types, scales).
    let written = Checkpoint::open(out)?;
    debug_assert_eq!(written.specs().len(), p.tensors_total);
    Ok(Summary {
        shards: paths,
        tensors: p.tensors_total,
        bytes: p.bytes_total,
        actions: actions.into_iter().collect(),
        scales_dropped,
        copied_files,
        note,
    })
}

/// The note of a conversion to the format the input has (`None` otherwise); an FP8 input asked
/// for the other scale format is refused (re-quantizing FP8 codes compounds two roundings:
/// convert to BF16 first, knowingly).
fn reshard_note(ckpt: &Checkpoint, to: Target, ue8m0: bool) -> Result<Option<String>> {
    let cfg = ckpt.config();
    let dir = ckpt.dir().display();
    Ok(match (to, &cfg.quantization) {
        (Target::Fp8, Some(q)) => {
            if q.ue8m0() != ue8m0 {
                let has = if q.ue8m0() { "ue8m0" } else { "plain f32" };
                return Err(ModelError::config(
                    "quantization_config.scale_fmt",
                    format!(
                        "{dir} is already FP8 with {has} scales; converting its codes to the \
                         other scale format would round them twice (convert to bf16 first if \
                         that is what you want)"
                    ),
                ));
            }
            Some(format!(
                "{dir} is already FP8: its tensors are copied unchanged into new shards"
            ))
        }
        (Target::Bf16, None) => {
            let unrounded = ckpt.specs().iter().any(|s| {
                s.role != TensorRole::ScoreBias
                    && ckpt
                        .info(&s.name)
                        .is_ok_and(|i| i.dtype != kernels::DType::Bf16)
            });
            Some(if unrounded {
                format!(
                    "{dir} is already unquantized: its BF16 tensors are copied and its F32 / F16 \
                     tensors rounded to BF16"
                )
            } else {
                format!("{dir} is already BF16: its tensors are copied unchanged into new shards")
            })
        }
        _ => None,
    })
}
