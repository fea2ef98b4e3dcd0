//! Writing checkpoints: safetensors files (through the safetensors crate's serializer, or
//! streamed tensor by tensor with [`write_safetensors_streaming`]), the shard index and
//! `config.json`. Used by the tiny model generator, by `dsv3 convert` and by tests that build
//! broken checkpoints on purpose.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::bf16;
use kernels::{DType, E4m3};
use safetensors::tensor::{Metadata, TensorInfo, TensorView};
use safetensors::Dtype;
use serde_json::json;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

use super::{INDEX_FILE, SINGLE_FILE};

/// One tensor to write: little-endian bytes of `shape` elements of `dtype`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl TensorData {
    pub fn bf16(name: impl Into<String>, shape: Vec<usize>, values: &[bf16]) -> Self {
        TensorData {
            name: name.into(),
            dtype: DType::Bf16,
            shape,
            data: values
                .iter()
                .flat_map(|v| v.to_bits().to_le_bytes())
                .collect(),
        }
    }

    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        TensorData {
            name: name.into(),
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn e4m3(name: impl Into<String>, shape: Vec<usize>, codes: &[E4m3]) -> Self {
        TensorData {
            name: name.into(),
            dtype: DType::E4m3,
            shape,
            data: codes.iter().map(|c| c.0).collect(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The safetensors element type of a [`DType`].
pub fn to_safetensors_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::E4m3 => Dtype::F8_E4M3,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
        DType::U8 => Dtype::U8,
    }
}

/// The [`DType`] of a safetensors element type, if the workspace has one.
pub fn from_safetensors_dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::Bf16,
        Dtype::F16 => DType::F16,
        Dtype::F8_E4M3 => DType::E4m3,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        _ => return None,
    })
}

/// Writes one safetensors file (with `__metadata__ = {"format": "pt"}`, as PyTorch writers do).
pub fn write_safetensors(path: &Path, tensors: &[TensorData]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(to_safetensors_dtype(t.dtype), t.shape.clone(), &t.data)
                .map(|v| (t.name.as_str(), v))
                .map_err(|e| ModelError::safetensors(path, format!("tensor `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| ModelError::safetensors(path, e.to_string()))
}

/// Name, element type and shape of a tensor whose bytes are produced later
/// ([`write_safetensors_streaming`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size_bytes()
    }
}

/// The safetensors crate's limit on a header (it refuses to read a longer one).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// Where one tensor's bytes go in [`write_safetensors_streaming`]; counts them, and names the
/// file in write errors.
#[derive(Debug)]
pub struct TensorSink<'a> {
    out: &'a mut BufWriter<File>,
    path: &'a Path,
    written: usize,
}

impl TensorSink<'_> {
    /// Appends `bytes` to the tensor.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| ModelError::io(self.path, e))?;
        self.written += bytes.len();
        Ok(())
    }
}

/// Writes one safetensors file without holding its tensors: the header (built and checked by the
/// safetensors crate's own [`Metadata`], with `__metadata__ = {"format": "pt"}` and the 8-byte
/// padding its serializer writes), then the tensors in the order given, each one's bytes written
/// by `fill(i, sink)`. Only what `fill` holds for one tensor is in memory at a time, so a
/// multi-gigabyte shard streams. The caller chooses the order: tensors keep natural alignment
/// when the larger element types come first, as the crate's serializer orders them (the loader
/// copies a misaligned tensor instead of viewing it in place, which is correct, only slower).
/// A tensor whose `fill` writes more or fewer bytes than its header says is an error naming it.
/// Returns the bytes of tensor data written.
pub fn write_safetensors_streaming(
    path: &Path,
    tensors: &[TensorHeader],
    fill: &mut dyn FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
) -> Result<usize> {
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|t| {
            let size = t.size_bytes();
            let info = TensorInfo {
                dtype: to_safetensors_dtype(t.dtype),
                shape: t.shape.clone(),
                data_offsets: (offset, offset + size),
            };
            offset += size;
            (t.name.clone(), info)
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let header = Metadata::new(Some(metadata), infos)
        .map_err(|e| ModelError::safetensors(path, e.to_string()))?;
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| ModelError::safetensors(path, format!("header: {e}")))?;
    header.resize(header.len().next_multiple_of(8), b' ');
    if header.len() > MAX_HEADER_BYTES {
        return Err(ModelError::safetensors(
            path,
            format!(
                "the header of {} tensors takes {} bytes, more than the {MAX_HEADER_BYTES} a \
                 reader accepts; write fewer tensors per file",
                tensors.len(),
                header.len()
            ),
        ));
    }

    let file = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    let io = |e| ModelError::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (i, t) in tensors.iter().enumerate() {
        let mut sink = TensorSink {
            out: &mut out,
            path,
            written: 0,
        };
        fill(i, &mut sink)?;
        if sink.written != t.size_bytes() {
            return Err(ModelError::safetensors(
                path,
                format!(
                    "tensor `{}`: {} bytes written, its header says {}",
                    t.name,
                    sink.written,
                    t.size_bytes()
                ),
            ));
        }
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(offset)
}

/// Writes `model.safetensors.index.json` in transformers' format:
/// `{"metadata": {"total_size": bytes of tensor data}, "weight_map": {tensor: shard file}}`.
pub fn write_index(
    dir: &Path,
    total_size: usize,
    weight_map: &BTreeMap<String, String>,
) -> Result<PathBuf> {
    let index = json!({
        "metadata": { "total_size": total_size },
        "weight_map": weight_map,
    });
    let index_path = dir.join(INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).expect("a JSON value always serializes");
    std::fs::write(&index_path, text + "\n").map_err(|e| ModelError::io(&index_path, e))?;
    Ok(index_path)
}

/// The file name of shard `i` (0-based) of `count`, Hugging Face style.
pub fn shard_file_name(i: usize, count: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
}

/// Writes a checkpoint directory: `config.json` and the tensors, in one `model.safetensors`
/// (`shards <= 1`) or in `shards` files of about equal size with `model.safetensors.index.json`.
/// Returns the safetensors files written.
pub fn write_checkpoint(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[TensorData],
    shards: usize,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, config.to_json_string() + "\n")
        .map_err(|e| ModelError::io(&config_path, e))?;

    if shards <= 1 {
        let path = dir.join(SINGLE_FILE);
        write_safetensors(&path, tensors)?;
        return Ok(vec![path]);
    }

    // Consecutive runs of tensors, cut when a shard reaches its share of the bytes.
    let total: usize = tensors.iter().map(|t| t.data.len()).sum();
    let target = total.div_ceil(shards).max(1);
    let mut groups: Vec<Vec<TensorData>> = vec![Vec::new()];
    let mut filled = 0;
    for t in tensors {
        if filled >= target && groups.len() < shards {
            groups.push(Vec::new());
            filled = 0;
        }
        filled += t.data.len();
        groups.last_mut().expect("never empty").push(t.clone());
    }
    while groups.len() < shards {
        groups.push(Vec::new());
    }

    let mut weight_map = BTreeMap::new();
    let mut paths = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let file = shard_file_name(i, shards);
        let path = dir.join(&file);
        write_safetensors(&path, group)?;
        for t in group {
            weight_map.insert(t.name.clone(), file.clone());
        }
        paths.push(path);
    }
    write_index(dir, total, &weight_map)?;
    Ok(paths)
}
