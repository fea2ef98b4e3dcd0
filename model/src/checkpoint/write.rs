//! Writing checkpoints: safetensors files (through the safetensors crate's serializer), the shard
//! index and `config.json`. Used by the tiny model generator and by tests that build broken
//! checkpoints on purpose.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::bf16;
use kernels::{DType, E4m3};
use safetensors::tensor::TensorView;
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
    let index = json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map,
    });
    let index_path = dir.join(INDEX_FILE);
    let text = serde_json::to_string_pretty(&index).expect("a JSON value always serializes");
    std::fs::write(&index_path, text + "\n").map_err(|e| ModelError::io(&index_path, e))?;
    Ok(paths)
}
