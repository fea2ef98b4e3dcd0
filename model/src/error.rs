//! The error type of the model crate. Every bad input (a config key, a file, a tensor) becomes one
//! of these, and its message names what is wrong: the key, the file or the tensor.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum ModelError {
    /// A `config.json` key is missing where it has no default, has the wrong type, or holds a
    /// contradictory or unsupported value. `key` is the JSON path (`rope_scaling.factor`).
    Config { key: String, detail: String },
    /// Reading or mapping a file failed.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A safetensors file is structurally invalid (header length, JSON, offsets out of range or
    /// overlapping, a file not covered exactly by its tensors).
    Safetensors { file: PathBuf, detail: String },
    /// `model.safetensors.index.json` is invalid or disagrees with its shards.
    Index { file: PathBuf, detail: String },
    /// `tokenizer.json` or `tokenizer_config.json` is missing, unreadable or malformed, or
    /// names a special token the vocabulary lacks; also an encode/decode failure inside the
    /// tokenizer (then `file` is the `tokenizer.json` it was loaded from).
    Tokenizer { file: PathBuf, detail: String },
    /// A tensor the config requires is in no file.
    MissingTensor { name: String },
    /// A file holds a tensor the config does not call for.
    UnexpectedTensor { name: String, file: PathBuf },
    /// The same tensor is stored in two files.
    DuplicateTensor {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    /// A tensor's shape differs from the one the config implies.
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor's element type differs from the expected one (safetensors spelling: `BF16`,
    /// `F8_E4M3`, `F32`).
    TensorDtype {
        name: String,
        expected: String,
        found: String,
    },
    /// A NaN or infinity at flat element `index` of a tensor (e4m3 codes 0x7f / 0xff are NaN).
    NonFinite { name: String, index: usize },
    /// An FP8 block scale (`weight_scale_inv`) at flat element `index` that is not finite and
    /// > 0; checked when the checkpoint is opened.
    InvalidScale {
        name: String,
        index: usize,
        value: f32,
    },
    /// An error from the kernels crate (its message names the op and argument).
    Kernel(kernels::Error),
    /// A generation or forward request the model cannot serve: an id outside the vocabulary, a
    /// prompt longer than the model's limit, an empty prompt, bad sampling settings.
    Request { detail: String },
    /// The paged KV cache has no free block for a sequence that needs one.
    KvCacheExhausted {
        needed_blocks: usize,
        free_blocks: usize,
        total_blocks: usize,
    },
    /// A collective of a distributed world failed: a peer left (after its own error), did not
    /// answer in time, or called another collective. Secondary: the peer's error is the cause.
    Collective { detail: String },
    /// An error on one rank of a distributed world.
    OnRank {
        rank: usize,
        source: Box<ModelError>,
    },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub fn config(key: impl Into<String>, detail: impl Into<String>) -> Self {
        ModelError::Config {
            key: key.into(),
            detail: detail.into(),
        }
    }

    pub fn request(detail: impl Into<String>) -> Self {
        ModelError::Request {
            detail: detail.into(),
        }
    }

    pub fn collective(detail: impl Into<String>) -> Self {
        ModelError::Collective {
            detail: detail.into(),
        }
    }

    /// `self` as it happened on `rank` (an error already naming its rank stays as it is).
    pub fn on_rank(self, rank: usize) -> Self {
        match self {
            ModelError::OnRank { .. } => self,
            other => ModelError::OnRank {
                rank,
                source: Box::new(other),
            },
        }
    }

    /// Whether this error only reports that a peer rank went away or stalled.
    pub fn is_collective(&self) -> bool {
        match self {
            ModelError::Collective { .. } => true,
            ModelError::OnRank { source, .. } => source.is_collective(),
            _ => false,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn safetensors(file: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        ModelError::Safetensors {
            file: file.into(),
            detail: detail.into(),
        }
    }

    pub fn index(file: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        ModelError::Index {
            file: file.into(),
            detail: detail.into(),
        }
    }

    pub fn tokenizer(file: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        ModelError::Tokenizer {
            file: file.into(),
            detail: detail.into(),
        }
    }

    /// The config key this error is about, if it is a config error.
    pub fn config_key(&self) -> Option<&str> {
        match self {
            ModelError::Config { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The tensor this error is about, if any.
    pub fn tensor_name(&self) -> Option<&str> {
        match self {
            ModelError::MissingTensor { name }
            | ModelError::UnexpectedTensor { name, .. }
            | ModelError::DuplicateTensor { name, .. }
            | ModelError::TensorShape { name, .. }
            | ModelError::TensorDtype { name, .. }
            | ModelError::NonFinite { name, .. }
            | ModelError::InvalidScale { name, .. } => Some(name),
            _ => None,
        }
    }
}

fn shape_str(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config { key, detail } => write!(f, "config key `{key}`: {detail}"),
            ModelError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ModelError::Safetensors { file, detail } => {
                write!(f, "{}: invalid safetensors file: {detail}", file.display())
            }
            ModelError::Index { file, detail } => write!(f, "{}: {detail}", file.display()),
            ModelError::Tokenizer { file, detail } => {
                write!(f, "{}: tokenizer: {detail}", file.display())
            }
            ModelError::MissingTensor { name } => {
                write!(f, "tensor `{name}` is required by the config but missing")
            }
            ModelError::UnexpectedTensor { name, file } => write!(
                f,
                "{}: unexpected tensor `{name}` (the config does not call for it)",
                file.display()
            ),
            ModelError::DuplicateTensor {
                name,
                first,
                second,
            } => write!(
                f,
                "tensor `{name}` is stored twice: in {} and in {}",
                first.display(),
                second.display()
            ),
            ModelError::TensorShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {}, expected {}",
                shape_str(found),
                shape_str(expected)
            ),
            ModelError::TensorDtype {
                name,
                expected,
                found,
            } => write!(f, "tensor `{name}` has dtype {found}, expected {expected}"),
            ModelError::NonFinite { name, index } => {
                write!(
                    f,
                    "tensor `{name}` has a NaN or infinity at element {index}"
                )
            }
            ModelError::InvalidScale { name, index, value } => write!(
                f,
                "tensor `{name}` has block scale {value} at element {index}; FP8 scales must be \
                 finite and > 0"
            ),
            ModelError::Kernel(e) => write!(f, "{e}"),
            ModelError::Request { detail } => write!(f, "bad request: {detail}"),
            ModelError::KvCacheExhausted {
                needed_blocks,
                free_blocks,
                total_blocks,
            } => write!(
                f,
                "KV cache exhausted: {needed_blocks} more block(s) of 64 tokens needed, \
                 {free_blocks} of {total_blocks} free (raise --kv-blocks or shorten the request)"
            ),
            ModelError::Collective { detail } => write!(f, "collective failed: {detail}"),
            ModelError::OnRank { rank, source } => write!(f, "rank {rank}: {source}"),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Io { source, .. } => Some(source),
            ModelError::Kernel(e) => Some(e),
            ModelError::OnRank { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl From<kernels::Error> for ModelError {
    fn from(e: kernels::Error) -> Self {
        ModelError::Kernel(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_subject() {
        let e = ModelError::config("rope_scaling.factor", "must be >= 1, got 0.5");
        assert_eq!(e.config_key(), Some("rope_scaling.factor"));
        assert!(e.to_string().contains("rope_scaling.factor"));
        let e = ModelError::TensorShape {
            name: "lm_head.weight".into(),
            expected: vec![512, 256],
            found: vec![256, 512],
        };
        assert_eq!(
            e.to_string(),
            "tensor `lm_head.weight` has shape [256, 512], expected [512, 256]"
        );
        let e = ModelError::UnexpectedTensor {
            name: "x".into(),
            file: PathBuf::from("/d/model.safetensors"),
        };
        assert!(e.to_string().contains("/d/model.safetensors"));
        let e: ModelError = kernels::Error::invalid("rope", "bad").into();
        assert!(e.to_string().contains("rope"));
    }
}
