//! Loading a checkpoint directory: `config.json` plus one `model.safetensors` or the shards listed
//! in `model.safetensors.index.json`, memory-mapped.
//!
//! [`Checkpoint::open`] checks everything before any compute: the config (see [`crate::config`]),
//! each file's structure (the safetensors crate's validation: header length and JSON, every
//! tensor's offsets in range, contiguous and non-overlapping, the data exactly covering the file),
//! the index against its shards, and every tensor against [`expected_tensors`]: presence, dtype and
//! shape, with extra tensors an error that names tensor and file. MTP layers (ids >=
//! `num_hidden_layers`) are loaded when present; a checkpoint without them opens with
//! [`Checkpoint::num_mtp_layers`] = 0. FP8 block scales must be finite and > 0 (checked at open:
//! they are few); NaN / Inf in the weights are checked on request ([`Checkpoint::check_finite`]),
//! since it reads every byte. Before the safetensors crate parses a header, `header.rs` bounds
//! every offset and shape with errors that name the tensor.
//!
//! Whether a linear weight is FP8 follows the config: with `quantization_config` the released
//! layout ([`Fp8Policy::Released`]), without it no weight is.
//!
//! Element types: FP8 linear weights must be `F8_E4M3`, their `weight_scale_inv` `F32` or `BF16`;
//! every other tensor may be stored as `F32`, `F16` or `BF16` (what transformers writes for
//! `dtype` float32, float16 or bfloat16, the router bias included), and the readers convert
//! ([`Checkpoint::to_f32`], [`Checkpoint::to_bf16`], [`Checkpoint::linear`]). Shapes are checked
//! strictly. With `quantization_config.scale_fmt: "ue8m0"` every weight scale must be a power of
//! two ([`Checkpoint::fp8_weight`] checks it as it reads the scales).

mod header;
mod index;
mod scales;
pub mod spec;
pub mod write;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::{bf16, f16};
use kernels::dtype::{e4m3_from_f32, e4m3_to_f32};
use kernels::reference::fp8_quant::block_scale;
use kernels::{DType, E4m3};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::SafeTensors;

use crate::config::{ModelConfig, FP8_WEIGHT_BLOCK};
use crate::error::{ModelError, Result};

pub use index::index_shard_names;
pub use spec::{
    expected_tensors, released_fp8_weights, safetensors_dtype_name, scale_name, scale_shape,
    Fp8Policy, TensorRole, TensorSpec,
};
pub use write::{write_checkpoint, write_safetensors, TensorData, TensorHeader};

/// The single-file checkpoint name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One safetensors file's bytes.
struct MappedFile {
    path: PathBuf,
    map: FileBytes,
}

/// A file memory-mapped, or held in memory ([`Checkpoint::from_bytes`]).
enum FileBytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Stored {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Byte range in the file's map.
    bytes: Range<usize>,
}

/// A tensor of an open checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub dtype: DType,
    pub shape: &'a [usize],
}

/// An FP8 linear weight as stored: e4m3 codes [n, k] and one f32 scale per 128x128 block,
/// `scales[(row / 128) * ceil(k / 128) + col / 128]`; W[r, c] = q[r, c] * scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Weight {
    pub q: Vec<E4m3>,
    pub scales: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl Fp8Weight {
    /// Scale of element (row, col).
    pub fn scale_at(&self, row: usize, col: usize) -> f32 {
        let kb = self.k.div_ceil(FP8_WEIGHT_BLOCK);
        self.scales[(row / FP8_WEIGHT_BLOCK) * kb + col / FP8_WEIGHT_BLOCK]
    }

    /// The weights in f32, row-major [n, k].
    pub fn dequantize(&self) -> Vec<f32> {
        let table = kernels::dtype::e4m3_decode_table();
        (0..self.n * self.k)
            .map(|i| table[self.q[i].0 as usize] * self.scale_at(i / self.k, i % self.k))
            .collect()
    }
}

/// Quantizes [n, k] weights per 128x128 block the way the released checkpoints are made:
/// scale = max(amax, 1e-4) / 448, q = e4m3(w / scale) with round-to-nearest-even (saturating).
/// Any n and k (edge blocks are partial).
pub fn quantize_fp8_blocks(w: &[f32], n: usize, k: usize) -> Fp8Weight {
    quantize_fp8_blocks_with(w, n, k, false)
}

/// [`quantize_fp8_blocks`], with `ue8m0` each scale rounded up to a power of two (spec §4.4,
/// DeepSeek-V3.1's `scale_fmt: "ue8m0"`) before the codes are computed; the scale rule is
/// kernels' [`block_scale`], the one the activations use.
///
/// Row blocks of 128 are quantized in parallel. Every block depends on its own values only and
/// the block maximum does not depend on the order it is taken in, so the result is the same bits
/// as a serial pass, and quantizing a matrix one row block at a time (as `dsv3 convert` streams
/// it) gives the same codes and scales as quantizing it whole (as the CPU backend does at load).
pub fn quantize_fp8_blocks_with(w: &[f32], n: usize, k: usize, ue8m0: bool) -> Fp8Weight {
    assert_eq!(
        w.len(),
        n * k,
        "quantize_fp8_blocks: {n} x {k} weights expected"
    );
    let [nb, kb] = scale_shape(n, k);
    if k == 0 {
        return Fp8Weight {
            q: Vec::new(),
            scales: Vec::new(),
            n,
            k,
        };
    }
    let blocks: Vec<(Vec<f32>, Vec<E4m3>)> = w
        .par_chunks(FP8_WEIGHT_BLOCK * k)
        .map(|rows| quantize_row_block(rows, k, ue8m0))
        .collect();
    let mut out = Fp8Weight {
        q: Vec::with_capacity(n * k),
        scales: Vec::with_capacity(nb * kb),
        n,
        k,
    };
    for (scales, q) in blocks {
        out.scales.extend(scales);
        out.q.extend(q);
    }
    out
}

/// One block row (up to 128 rows of `k`): its ceil(k / 128) scales and its codes.
fn quantize_row_block(rows: &[f32], k: usize, ue8m0: bool) -> (Vec<f32>, Vec<E4m3>) {
    let mut scales = vec![0.0f32; k.div_ceil(FP8_WEIGHT_BLOCK)];
    for row in rows.chunks_exact(k) {
        for (c, v) in row.iter().enumerate() {
            let s = &mut scales[c / FP8_WEIGHT_BLOCK];
            *s = s.max(v.abs());
        }
    }
    for s in &mut scales {
        *s = block_scale(*s, ue8m0);
    }
    let q = rows
        .iter()
        .enumerate()
        .map(|(i, v)| E4m3(e4m3_from_f32(v / scales[(i % k) / FP8_WEIGHT_BLOCK])))
        .collect();
    (scales, q)
}

/// A linear weight in its stored form.
#[derive(Clone, Debug, PartialEq)]
pub enum LinearWeight {
    Fp8(Fp8Weight),
    Bf16 {
        w: Vec<bf16>,
        n: usize,
        k: usize,
    },
    /// Stored as F32 or F16 (widened exactly to f32).
    F32 {
        w: Vec<f32>,
        n: usize,
        k: usize,
    },
}

impl LinearWeight {
    /// [n, k].
    pub fn dims(&self) -> (usize, usize) {
        match self {
            LinearWeight::Fp8(w) => (w.n, w.k),
            LinearWeight::Bf16 { n, k, .. } | LinearWeight::F32 { n, k, .. } => (*n, *k),
        }
    }

    /// The weights in f32, row-major [n, k].
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            LinearWeight::Fp8(w) => w.dequantize(),
            LinearWeight::Bf16 { w, .. } => w.iter().map(|v| v.to_f32()).collect(),
            LinearWeight::F32 { w, .. } => w.clone(),
        }
    }

    /// The weight in FP8: as stored when it is FP8, else quantized per 128x128 block with
    /// [`quantize_fp8_blocks`] from its exact f32 values (what `dsv3 convert --to fp8` writes
    /// for it, and what the CPU backend's fp8 precision multiplies).
    pub fn into_fp8(self) -> Fp8Weight {
        match self {
            LinearWeight::Fp8(w) => w,
            other => {
                let (n, k) = other.dims();
                quantize_fp8_blocks(&other.to_f32(), n, k)
            }
        }
    }

    /// The weights in BF16 (F32 / F16 weights rounded to nearest even), row-major [n, k]; `None`
    /// for FP8 weights.
    pub fn to_bf16(&self) -> Option<Vec<bf16>> {
        match self {
            LinearWeight::Fp8(_) => None,
            LinearWeight::Bf16 { w, .. } => Some(w.clone()),
            LinearWeight::F32 { w, .. } => Some(w.iter().map(|&v| bf16::from_f32(v)).collect()),
        }
    }
}

/// The element types a non-FP8 tensor may be stored in.
const FLOAT_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];
/// The element types an FP8 `weight_scale_inv` may be stored in.
const SCALE_DTYPES: [DType; 2] = [DType::F32, DType::Bf16];

/// The stored dtypes accepted for `spec`, and how an error spells them.
fn accepted_dtypes(spec: &TensorSpec) -> (&'static [DType], &'static str) {
    match (spec.dtype, spec.role) {
        (DType::E4m3, _) => (&[DType::E4m3], "F8_E4M3"),
        (_, TensorRole::WeightScale) => (&SCALE_DTYPES, "F32 or BF16"),
        _ => (&FLOAT_DTYPES, "F32, F16 or BF16"),
    }
}

/// Whether `v` is a positive power of two (a UE8M0 scale 2^e, e in -127..=127, as an f32; the
/// smallest are f32 subnormals).
fn is_power_of_two(v: f32) -> bool {
    let bits = v.to_bits();
    let (exponent, mantissa) = ((bits >> 23) & 0xff, bits & 0x007f_ffff);
    if bits >> 31 != 0 || exponent == 0xff {
        return false;
    }
    if exponent == 0 {
        mantissa.is_power_of_two()
    } else {
        mantissa == 0
    }
}

/// Element types whose every bit pattern is a valid value and which can be viewed in place in a
/// little-endian file.
trait Plain: Copy {
    const DTYPE: DType;
    fn from_le(bytes: &[u8]) -> Self;
}

impl Plain for bf16 {
    const DTYPE: DType = DType::Bf16;
    fn from_le(b: &[u8]) -> Self {
        bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Plain for f16 {
    const DTYPE: DType = DType::F16;
    fn from_le(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

impl Plain for f32 {
    const DTYPE: DType = DType::F32;
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// Views `bytes` as `T` in place when the host is little-endian and the data is aligned (the
/// usual case: safetensors writers align every tensor), else copies.
fn view_as<T: Plain>(bytes: &[u8]) -> Cow<'_, [T]> {
    let size = std::mem::size_of::<T>();
    if cfg!(target_endian = "little")
        && (bytes.as_ptr() as usize) % std::mem::align_of::<T>() == 0
        && bytes.len() % size == 0
    {
        // SAFETY: the pointer is aligned for T and the range holds bytes.len() / size whole
        // elements; T is bf16, f16 or f32, plain data for which every bit pattern is a valid value,
        // stored little-endian as on this host. The slice borrows `bytes`, so it cannot outlive
        // the mapping.
        let s =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
        Cow::Borrowed(s)
    } else {
        Cow::Owned(bytes.chunks_exact(size).map(T::from_le).collect())
    }
}

/// First non-finite element of little-endian `bytes` of `dtype`.
fn first_non_finite(dtype: DType, bytes: &[u8]) -> Option<usize> {
    match dtype {
        DType::Bf16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        DType::F32 => bytes.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        DType::F16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        // e4m3fn: S.1111.111 is NaN; there are no infinities.
        DType::E4m3 => bytes.iter().position(|&b| b & 0x7f == 0x7f),
        DType::I32 | DType::U32 | DType::U8 => None,
    }
}

/// An open, validated checkpoint.
pub struct Checkpoint {
    dir: PathBuf,
    config: ModelConfig,
    files: Vec<MappedFile>,
    tensors: HashMap<String, Stored>,
    /// The specs of the tensors present, in [`expected_tensors`] order.
    specs: Vec<TensorSpec>,
    num_mtp_layers: usize,
    /// [`released_fp8_weights`] of the config, built on first use.
    released_fp8: OnceLock<HashSet<String>>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|m| &m.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .field("num_mtp_layers", &self.num_mtp_layers)
            .finish()
    }
}

fn map_file(path: &Path) -> Result<MappedFile> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and private to this process. Like every mmap-based loader
    // (safetensors' own examples, transformers, vLLM) this assumes nobody truncates or rewrites
    // the checkpoint while it is open; the safetensors writer replaces files by rename, which
    // leaves existing maps intact.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    Ok(MappedFile {
        path: path.to_path_buf(),
        map: FileBytes::Mapped(map),
    })
}

impl Checkpoint {
    /// Opens `dir`: reads `config.json`, maps the safetensors file(s) and validates every
    /// tensor against the config.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = ModelConfig::from_dir(dir)?;
        Self::open_with_config(dir, config)
    }

    /// Like [`open`](Self::open) with a config given by the caller (validated again here).
    pub fn open_with_config(dir: impl AsRef<Path>, config: ModelConfig) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        config.validate()?;
        let single = dir.join(SINGLE_FILE);
        let index_path = dir.join(INDEX_FILE);
        let (paths, index) = match (single.is_file(), index_path.is_file()) {
            (true, true) => {
                return Err(ModelError::index(
                    &index_path,
                    format!(
                        "both {} and this index exist; remove one so it is clear which \
                         weights to load",
                        single.display()
                    ),
                ))
            }
            (true, false) => (vec![single], None),
            (false, true) => {
                let index = index::ShardIndex::read(&index_path)?;
                (index.shard_paths(&dir), Some(index))
            }
            (false, false) => {
                return Err(ModelError::io(
                    &single,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("neither {SINGLE_FILE} nor {INDEX_FILE} found in the directory"),
                    ),
                ))
            }
        };

        let mut files = Vec::with_capacity(paths.len());
        for path in &paths {
            if let Some(index) = &index {
                if !path.is_file() {
                    return Err(index.missing_shard(path));
                }
            }
            files.push(map_file(path)?);
        }
        Self::from_files(dir, config, files, index.as_ref())
    }

    /// A single-file checkpoint from the bytes of its `model.safetensors` (named `name` in
    /// errors), checked exactly as [`open_with_config`](Self::open_with_config) checks a file;
    /// for tools and the fuzz targets that have no file.
    pub fn from_bytes(
        name: impl Into<PathBuf>,
        bytes: Vec<u8>,
        config: ModelConfig,
    ) -> Result<Self> {
        config.validate()?;
        let name = name.into();
        let dir = name.parent().map(Path::to_path_buf).unwrap_or_default();
        let file = MappedFile {
            path: name,
            map: FileBytes::Owned(bytes),
        };
        Self::from_files(dir, config, vec![file], None)
    }

    /// Parses the headers of `files`, checks them against `index` and validates every tensor.
    fn from_files(
        dir: PathBuf,
        config: ModelConfig,
        files: Vec<MappedFile>,
        index: Option<&index::ShardIndex>,
    ) -> Result<Self> {
        let mut tensors: HashMap<String, Stored> = HashMap::new();
        for (file_id, mapped) in files.iter().enumerate() {
            let path = &mapped.path;
            let size = mapped.map.len();
            header::precheck(&mapped.map).map_err(|detail| {
                ModelError::safetensors(path, format!("{detail} (the file has {size} bytes)"))
            })?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mapped.map).map_err(|e| {
                ModelError::safetensors(path, format!("{e} (the file has {size} bytes)"))
            })?;
            let data_start = 8 + header_len;
            let mut names: Vec<_> = metadata.tensors().into_iter().collect();
            names.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, info) in names {
                let (s, e) = info.data_offsets;
                let stored = Stored {
                    file: file_id,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: data_start + s..data_start + e,
                };
                if let Some(prev) = tensors.get(&name) {
                    return Err(ModelError::DuplicateTensor {
                        name,
                        first: files[prev.file].path.clone(),
                        second: path.clone(),
                    });
                }
                tensors.insert(name, stored);
            }
        }
        if let Some(index) = index {
            let file_names: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
            index.check_against(
                &dir,
                tensors
                    .iter()
                    .map(|(n, s)| (n.as_str(), file_names[s.file])),
            )?;
        }

        let mut ckpt = Checkpoint {
            dir,
            config,
            files,
            tensors,
            specs: Vec::new(),
            num_mtp_layers: 0,
            released_fp8: OnceLock::new(),
        };
        ckpt.validate_tensors()?;
        Ok(ckpt)
    }

    /// Checks presence, dtype and shape of every expected tensor, and that nothing else is there.
    fn validate_tensors(&mut self) -> Result<()> {
        let cfg = &self.config;
        let all = expected_tensors(cfg, Fp8Policy::for_config(cfg));

        // MTP layers: a layer is either complete or absent, and present layers form a prefix.
        let mut mtp_found = 0;
        let mut mtp_absent_from = None;
        for j in 0..cfg.num_mtp_layers() {
            let layer = cfg.mtp_layer_id(j);
            let specs: Vec<&TensorSpec> = all.iter().filter(|s| s.layer == Some(layer)).collect();
            let present = specs
                .iter()
                .filter(|s| self.tensors.contains_key(&s.name))
                .count();
            match (present, mtp_absent_from) {
                (0, None) => mtp_absent_from = Some(layer),
                (0, Some(_)) => {}
                (_, Some(absent)) => {
                    // A later MTP layer without an earlier one.
                    let first = all
                        .iter()
                        .find(|s| s.layer == Some(absent))
                        .expect("every layer has tensors");
                    return Err(ModelError::MissingTensor {
                        name: first.name.clone(),
                    });
                }
                (p, None) if p < specs.len() => {
                    let missing = specs
                        .iter()
                        .find(|s| !self.tensors.contains_key(&s.name))
                        .expect("some tensor is missing");
                    return Err(ModelError::MissingTensor {
                        name: missing.name.clone(),
                    });
                }
                _ => mtp_found += 1,
            }
        }
        let skip_from = mtp_absent_from.unwrap_or(usize::MAX);
        let wanted: Vec<TensorSpec> = all
            .into_iter()
            .filter(|s| s.layer.is_none_or(|l| l < skip_from))
            .collect();

        for spec in &wanted {
            let Some(stored) = self.tensors.get(&spec.name) else {
                return Err(ModelError::MissingTensor {
                    name: spec.name.clone(),
                });
            };
            let (accepted, expected) = accepted_dtypes(spec);
            let found = write::from_safetensors_dtype(stored.dtype);
            if !found.is_some_and(|d| accepted.contains(&d)) {
                return Err(ModelError::TensorDtype {
                    name: spec.name.clone(),
                    expected: expected.to_string(),
                    found: stored.dtype.to_string(),
                });
            }
            if stored.shape != spec.shape {
                return Err(ModelError::TensorShape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    found: stored.shape.clone(),
                });
            }
        }

        let known: HashSet<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
        let mut extra: Vec<(&String, &Stored)> = self
            .tensors
            .iter()
            .filter(|(n, _)| !known.contains(n.as_str()))
            .collect();
        extra.sort_by(|a, b| a.0.cmp(b.0));
        if let Some((name, stored)) = extra.first() {
            return Err(ModelError::UnexpectedTensor {
                name: (*name).clone(),
                file: self.files[stored.file].path.clone(),
            });
        }
        // Block scales are few (one per 128x128 weights) and a bad one silently ruins a whole
        // block of outputs, so they are checked now rather than on request.
        // In parallel: a released checkpoint's scales are spread over all of its shards.
        let bad_scale = wanted
            .par_iter()
            .filter(|s| s.role == TensorRole::WeightScale)
            .find_map_first(|spec| {
                let stored = &self.tensors[&spec.name];
                let bytes = &self.files[stored.file].map[stored.bytes.clone()];
                scales::check(&spec.name, stored.dtype, bytes).err()
            });
        if let Some(e) = bad_scale {
            return Err(e);
        }
        self.specs = wanted;
        self.num_mtp_layers = mtp_found;
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The safetensors files, in load order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// MTP layers present in the files (0 when the checkpoint has none, whatever the config
    /// announces).
    pub fn num_mtp_layers(&self) -> usize {
        self.num_mtp_layers
    }

    /// The tensors present, in [`expected_tensors`] order (each one validated).
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Whether the released checkpoints store linear weight `name` as FP8 (spec §2.2), whether
    /// or not this checkpoint does (see [`released_fp8_weights`]).
    pub fn is_fp8_in_release(&self, name: &str) -> bool {
        self.released_fp8
            .get_or_init(|| released_fp8_weights(&self.config))
            .contains(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.tensors.values().map(|s| s.bytes.len()).sum()
    }

    fn stored(&self, name: &str) -> Result<&Stored> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
            })
    }

    fn dtype_of(&self, name: &str, stored: &Stored) -> Result<DType> {
        write::from_safetensors_dtype(stored.dtype).ok_or_else(|| ModelError::TensorDtype {
            name: name.to_string(),
            expected: "BF16, F16, F32 or F8_E4M3".into(),
            found: stored.dtype.to_string(),
        })
    }

    /// Name, file, dtype and shape of a tensor.
    pub fn info(&self, name: &str) -> Result<TensorInfo<'_>> {
        let (key, stored) =
            self.tensors
                .get_key_value(name)
                .ok_or_else(|| ModelError::MissingTensor {
                    name: name.to_string(),
                })?;
        Ok(TensorInfo {
            name: key,
            file: &self.files[stored.file].path,
            dtype: self.dtype_of(name, stored)?,
            shape: &stored.shape,
        })
    }

    /// The raw little-endian bytes of a tensor, in place in the map.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let s = self.stored(name)?;
        Ok(&self.files[s.file].map[s.bytes.clone()])
    }

    fn typed_bytes(&self, name: &str, want: DType) -> Result<&[u8]> {
        let s = self.stored(name)?;
        let dtype = self.dtype_of(name, s)?;
        if dtype != want {
            return Err(ModelError::TensorDtype {
                name: name.to_string(),
                expected: safetensors_dtype_name(want).to_string(),
                found: s.dtype.to_string(),
            });
        }
        Ok(&self.files[s.file].map[s.bytes.clone()])
    }

    /// A BF16 tensor's values (in place in the map when aligned, else a copy).
    pub fn bf16(&self, name: &str) -> Result<Cow<'_, [bf16]>> {
        Ok(view_as::<bf16>(self.typed_bytes(name, bf16::DTYPE)?))
    }

    /// An F16 tensor's values (in place in the map when aligned, else a copy).
    pub fn f16(&self, name: &str) -> Result<Cow<'_, [f16]>> {
        Ok(view_as::<f16>(self.typed_bytes(name, f16::DTYPE)?))
    }

    /// An F32 tensor's values (in place in the map when aligned, else a copy).
    pub fn f32(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        Ok(view_as::<f32>(
            self.typed_bytes(name, <f32 as Plain>::DTYPE)?,
        ))
    }

    /// An e4m3 tensor's codes, in place in the map.
    pub fn e4m3(&self, name: &str) -> Result<&[E4m3]> {
        let bytes = self.typed_bytes(name, DType::E4m3)?;
        // SAFETY: E4m3 is #[repr(transparent)] over u8 (size and alignment 1, any bit pattern
        // valid), so a byte slice is a valid E4m3 slice of the same length and lifetime.
        Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<E4m3>(), bytes.len()) })
    }

    /// A BF16, F16, F32 or e4m3 tensor converted to f32 (exactly: every such value is an f32;
    /// e4m3 codes without their scale).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let s = self.stored(name)?;
        match self.dtype_of(name, s)? {
            DType::Bf16 => Ok(self.bf16(name)?.iter().map(|v| v.to_f32()).collect()),
            DType::F16 => Ok(self.f16(name)?.iter().map(|v| v.to_f32()).collect()),
            DType::F32 => Ok(self.f32(name)?.into_owned()),
            DType::E4m3 => Ok(self.e4m3(name)?.iter().map(|c| e4m3_to_f32(c.0)).collect()),
            _ => Err(ModelError::TensorDtype {
                name: name.to_string(),
                expected: "BF16, F16, F32 or F8_E4M3".into(),
                found: s.dtype.to_string(),
            }),
        }
    }

    /// A BF16, F16 or F32 tensor as BF16: in place when stored as BF16, else rounded to nearest
    /// even (for backends that keep norms, embeddings, lm_head and the router in BF16).
    pub fn to_bf16(&self, name: &str) -> Result<Cow<'_, [bf16]>> {
        let s = self.stored(name)?;
        match self.dtype_of(name, s)? {
            DType::Bf16 => self.bf16(name),
            DType::F16 => Ok(Cow::Owned(
                self.f16(name)?
                    .iter()
                    .map(|v| bf16::from_f32(v.to_f32()))
                    .collect(),
            )),
            DType::F32 => Ok(Cow::Owned(
                self.f32(name)?.iter().map(|&v| bf16::from_f32(v)).collect(),
            )),
            _ => Err(ModelError::TensorDtype {
                name: name.to_string(),
                expected: "BF16, F16 or F32".into(),
                found: s.dtype.to_string(),
            }),
        }
    }

    fn matrix_dims(&self, name: &str) -> Result<(usize, usize)> {
        match self.stored(name)?.shape.as_slice() {
            &[n, k] => Ok((n, k)),
            other => Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: vec![0, 0],
                found: other.to_vec(),
            }),
        }
    }

    /// An FP8 linear weight (`x.weight`, e4m3 [n, k]) with its `x.weight_scale_inv` (F32 or
    /// BF16 [ceil(n/128), ceil(k/128)], returned as f32), copied out. With
    /// `scale_fmt: "ue8m0"` every scale must be a power of two.
    pub fn fp8_weight(&self, name: &str) -> Result<Fp8Weight> {
        let (n, k) = self.matrix_dims(name)?;
        let q = self.e4m3(name)?.to_vec();
        let sname = scale_name(name);
        let stored = self.stored(&sname)?;
        let scale_dtype = self.dtype_of(&sname, stored)?;
        if !SCALE_DTYPES.contains(&scale_dtype) {
            return Err(ModelError::TensorDtype {
                name: sname,
                expected: "F32 or BF16".into(),
                found: stored.dtype.to_string(),
            });
        }
        let scales = self.to_f32(&sname)?;
        if self.config.ue8m0_scales() {
            self.check_ue8m0_scales(&sname, &scales)?;
        }
        let found = &self.stored(&sname)?.shape;
        let expected = scale_shape(n, k);
        if found.as_slice() != expected {
            return Err(ModelError::TensorShape {
                name: sname,
                expected: expected.to_vec(),
                found: found.clone(),
            });
        }
        Ok(Fp8Weight { q, scales, n, k })
    }

    /// `scale_fmt: "ue8m0"` promises power-of-two scales; a checkpoint that breaks the promise
    /// was made by a different quantizer than the config says.
    fn check_ue8m0_scales(&self, name: &str, scales: &[f32]) -> Result<()> {
        match scales.iter().position(|&s| !is_power_of_two(s)) {
            None => Ok(()),
            Some(i) => Err(ModelError::config(
                "quantization_config.scale_fmt",
                format!(
                    "\"ue8m0\" needs power-of-two scales, but `{name}` has {} at index {i}",
                    scales[i]
                ),
            )),
        }
    }

    /// A linear weight in its stored form: FP8 when a `weight_scale_inv` sibling exists, BF16
    /// when stored as BF16, else (F32, F16) widened to f32.
    pub fn linear(&self, name: &str) -> Result<LinearWeight> {
        if self.contains(&scale_name(name)) {
            return Ok(LinearWeight::Fp8(self.fp8_weight(name)?));
        }
        let (n, k) = self.matrix_dims(name)?;
        let s = self.stored(name)?;
        Ok(match self.dtype_of(name, s)? {
            DType::Bf16 => LinearWeight::Bf16 {
                w: self.bf16(name)?.into_owned(),
                n,
                k,
            },
            _ => LinearWeight::F32 {
                w: self.to_f32(name)?,
                n,
                k,
            },
        })
    }

    /// Checks one tensor for NaN / Inf (e4m3 codes 0x7f / 0xff are NaN).
    pub fn check_finite_tensor(&self, name: &str) -> Result<()> {
        let s = self.stored(name)?;
        let dtype = self.dtype_of(name, s)?;
        match first_non_finite(dtype, &self.files[s.file].map[s.bytes.clone()]) {
            Some(index) => Err(ModelError::NonFinite {
                name: name.to_string(),
                index,
            }),
            None => Ok(()),
        }
    }

    /// Checks every tensor for NaN / Inf, in parallel; the error names the first offending
    /// tensor (in [`specs`](Self::specs) order) and the flat index of its first bad element.
    pub fn check_finite(&self) -> Result<()> {
        match self
            .specs
            .par_iter()
            .find_map_first(|s| self.check_finite_tensor(&s.name).err())
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_blocks_round_trip() {
        let (n, k) = (130, 200);
        let mut rng = kernels::rng::Rng::new(7);
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.05).collect();
        let q = quantize_fp8_blocks(&w, n, k);
        assert_eq!(q.scales.len(), 2 * 2);
        let back = q.dequantize();
        for (a, b) in w.iter().zip(&back) {
            // e4m3 keeps 3 mantissa bits: relative error <= 2^-4, plus the subnormal floor.
            assert!((a - b).abs() <= a.abs() / 16.0 + q.scale_at(0, 0) / 512.0);
        }
        // The block maximum maps to 448 exactly.
        let amax = w[..128 * k]
            .chunks(k)
            .flat_map(|r| &r[..128])
            .fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(q.scales[0], amax / 448.0);
        // All-zero blocks get the floor scale.
        let z = quantize_fp8_blocks(&[0.0; 4], 2, 2);
        assert_eq!(z.scales, vec![1e-4 / 448.0]);
    }

    /// The parallel quantizer gives the bits of fp8-gemm's independent serial one, quantizing
    /// block row by block row gives the bits of the whole matrix (what `dsv3 convert` relies on
    /// to stream), and `ue8m0` rounds each scale up to a power of two.
    #[test]
    fn quantize_blocks_is_blockwise_and_matches_the_gemm_crate() {
        let (n, k) = (300, 384);
        let mut rng = kernels::rng::Rng::new(11);
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.05).collect();
        let whole = quantize_fp8_blocks(&w, n, k);
        let other = fp8_gemm::reference::quantize_weights(&w, n, k).unwrap();
        assert_eq!((&whole.q, &whole.scales), (&other.q, &other.scales));
        let (mut q, mut scales) = (Vec::new(), Vec::new());
        for r0 in (0..n).step_by(FP8_WEIGHT_BLOCK) {
            let rows = (n - r0).min(FP8_WEIGHT_BLOCK);
            let part = quantize_fp8_blocks(&w[r0 * k..(r0 + rows) * k], rows, k);
            q.extend(part.q);
            scales.extend(part.scales);
        }
        assert_eq!((q, scales), (whole.q.clone(), whole.scales.clone()));

        let pow2 = quantize_fp8_blocks_with(&w, n, k, true);
        for (&p, &s) in pow2.scales.iter().zip(&whole.scales) {
            assert!(is_power_of_two(p) && p >= s && p < 2.0 * s, "{p} for {s}");
        }
        for (i, (a, b)) in w.iter().zip(pow2.dequantize()).enumerate() {
            // e4m3's relative error, and half its subnormal spacing 2^-9 times the scale.
            let floor = pow2.scale_at(i / k, i % k) / 1024.0;
            assert!((a - b).abs() <= a.abs() / 16.0 + floor, "{a} -> {b}");
        }
    }

    #[test]
    fn non_finite_codes() {
        assert_eq!(
            first_non_finite(DType::E4m3, &[0, 0x7e, 0xfe, 0xff]),
            Some(3)
        );
        assert_eq!(first_non_finite(DType::E4m3, &[0x7f]), Some(0));
        assert_eq!(first_non_finite(DType::E4m3, &[0x78, 0xf8]), None);
        let inf = bf16::INFINITY.to_bits().to_le_bytes();
        assert_eq!(
            first_non_finite(DType::Bf16, &[0, 0, inf[0], inf[1]]),
            Some(1)
        );
        let max = bf16::MAX.to_bits().to_le_bytes();
        assert_eq!(first_non_finite(DType::Bf16, &max), None);
        let nan = f32::NAN.to_le_bytes();
        assert_eq!(first_non_finite(DType::F32, &nan), Some(0));
        assert_eq!(first_non_finite(DType::F32, &f32::MAX.to_le_bytes()), None);
    }

    #[test]
    fn powers_of_two() {
        for e in -149i32..=127 {
            let v = if e >= -126 {
                f32::from_bits(((e + 127) as u32) << 23)
            } else {
                f32::from_bits(1 << (e + 149))
            };
            assert!(is_power_of_two(v), "2^{e} = {v:e}");
        }
        assert!(is_power_of_two(1.0) && is_power_of_two(0.5) && is_power_of_two(2f32.powi(-20)));
        for v in [
            0.0,
            -1.0,
            3.0,
            0.75,
            1.5e-7,
            f32::INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE * 1.5,
        ] {
            assert!(!is_power_of_two(v), "{v}");
        }
    }

    #[test]
    fn view_copies_when_misaligned() {
        let bytes = [0u8, 0, 0x80, 0x3f, 0, 0x40];
        assert_eq!(
            view_as::<bf16>(&bytes[2..]).as_ref(),
            [bf16::ONE, bf16::from_f32(2.0)]
        );
        let v = view_as::<bf16>(&bytes[1..5]);
        assert_eq!(v.len(), 2);
    }
}
