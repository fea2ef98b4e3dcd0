//! The files around the tensors: the output directory, `config.json` and the tokenizer and
//! generation files copied along.

use std::path::Path;

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

use super::Target;

/// Files copied unchanged from the input when present: the tokenizer (`tokenizer.model` /
/// `tiktoken.model` for SentencePiece and Kimi's tiktoken vocabularies), the chat template and
/// the generation defaults.
pub const COMPANION_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "tiktoken.model",
    "chat_template.jinja",
    "generation_config.json",
];

/// Creates `out`, or accepts it when it is an empty directory: a conversion never mixes its
/// files with others (a stale shard or index would make the result ambiguous).
pub fn prepare_out_dir(out: &Path) -> Result<()> {
    let refuse = |why: String| {
        ModelError::io(
            out,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, why),
        )
    };
    if out.exists() {
        if !out.is_dir() {
            return Err(refuse("exists and is not a directory".into()));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| ModelError::io(out, e))?;
        if let Some(entry) = entries.next() {
            let name = entry
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_default();
            return Err(refuse(format!(
                "the output directory is not empty (it holds `{name}`); convert writes into a new \
                 or empty directory"
            )));
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))
}

/// The `quantization_config` of the released DeepSeek-V3 checkpoint (spec §1.3), with
/// `scale_fmt: "ue8m0"` (DeepSeek-V3.1, spec §4.4) when `ue8m0`.
fn quantization_config(ue8m0: bool) -> Value {
    let mut q = json!({
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
    });
    if ue8m0 {
        q["scale_fmt"] = json!("ue8m0");
    }
    q
}

/// The output's `config.json`: the input's, every key kept, with the quantization described as
/// the output stores it. To BF16: no `quantization_config`, and `dtype` / `torch_dtype` (those
/// present; `torch_dtype` when neither is) `bfloat16`. To FP8 from an unquantized input: the
/// released `quantization_config` added; `dtype` unchanged, since it names the type of the
/// tensors left unquantized, which keep their stored type. An FP8 input converted to FP8 keeps
/// its config as it is. The result is parsed back as a check.
pub fn converted_config(input_dir: &Path, to: Target, ue8m0: bool) -> Result<String> {
    let path = input_dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let mut value: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config("config.json", e.to_string()))?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| ModelError::config("config.json", "the top level must be a JSON object"))?;
    match to {
        Target::Bf16 => {
            map.remove("quantization_config");
            let mut set = false;
            for key in ["dtype", "torch_dtype"] {
                if let Some(v) = map.get_mut(key) {
                    *v = json!("bfloat16");
                    set = true;
                }
            }
            if !set {
                map.insert("torch_dtype".into(), json!("bfloat16"));
            }
        }
        Target::Fp8 => {
            if !map.contains_key("quantization_config") {
                map.insert("quantization_config".into(), quantization_config(ue8m0));
            }
        }
    }
    ModelConfig::from_json(&value)?;
    Ok(serde_json::to_string_pretty(&value).expect("a JSON value always serializes") + "\n")
}

/// Copies the [`COMPANION_FILES`] present in `input` to `out`; returns their names.
pub fn copy_companions(input: &Path, out: &Path) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in COMPANION_FILES {
        let from = input.join(name);
        if from.is_file() {
            std::fs::copy(&from, out.join(name)).map_err(|e| ModelError::io(&from, e))?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}
