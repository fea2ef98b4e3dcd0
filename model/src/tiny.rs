//! The built-in tiny DeepSeek-V3-architecture model (`dsv3 make-tiny`): every feature of the real
//! architecture at toy size (q_lora, YaRN, grouped noaux_tc routing with a score bias, a shared
//! expert, a dense first layer, FP8 linear weights with 128x128 block scales, one MTP layer),
//! generated deterministically from a seed and written as an ordinary checkpoint directory:
//! `config.json`, `model.safetensors`, `tokenizer.json` (byte-level) and `tokenizer_config.json`.
//!
//! Dimensions that are the K of an FP8 GEMM (hidden 256, q_lora 128, kv_lora 512, moe_inter 128,
//! inter 512, H * v_head 256) are multiples of 128, as the GPU FP8 GEMM requires; N need not be
//! (kv_a_proj_with_mqa has 512 + 64 = 576 rows, so its scales cover a partial block). The MLA
//! widths are DeepSeek-V3's own (d_c 512, d_rope 64): the CUDA decode kernel and its 576-wide
//! cache entry are specialised to them.
//!
//! Weights: each tensor draws from its own generator, seeded by the seed and the tensor's name,
//! so a tensor's values do not depend on which other tensors exist. Linear weights are
//! N(0, 1/K) (activations keep unit scale), FP8 ones quantized per 128x128 block exactly as the
//! released checkpoint (scale = max(amax, 1e-4) / 448, e4m3 round-to-nearest-even); embeddings
//! N(0, 1); lm_head and the router N(0, 1/hidden); norms 1 + N(0, 0.1^2); the score bias
//! N(0, 0.05^2). The MTP layer's `embed_tokens` and `shared_head.head` are copies of the
//! top-level `model.embed_tokens` and `lm_head`, as in the released files.

use std::path::Path;

use half::bf16;
use kernels::reference::rope::YarnScaling;
use kernels::rng::{splitmix64, Rng};
use kernels::DType;
use serde_json::{json, Map, Value};

use crate::checkpoint::{
    expected_tensors, quantize_fp8_blocks, scale_name, write_checkpoint, Fp8Policy, TensorData,
    TensorRole,
};
use crate::config::{Fp8Quantization, ModelConfig, ModelType, ScoringFunc, TopkMethod};
use crate::error::{ModelError, Result};

/// The seed `dsv3 make-tiny` uses unless told otherwise.
pub const TINY_SEED: u64 = 0x05EE_D0D5_EE35;

/// Token ids of the tiny tokenizer: bytes are 0..=255, then these specials.
pub const TINY_BOS: u32 = 256;
pub const TINY_EOS: u32 = 257;
pub const TINY_PAD: u32 = 258;
pub const TINY_USER: u32 = 259;
pub const TINY_ASSISTANT: u32 = 260;

/// The special tokens of the tiny tokenizer (DeepSeek-V3's spellings).
pub const TINY_SPECIAL_TOKENS: [(u32, &str); 5] = [
    (TINY_BOS, "<｜begin▁of▁sentence｜>"),
    (TINY_EOS, "<｜end▁of▁sentence｜>"),
    (TINY_PAD, "<｜▁pad▁｜>"),
    (TINY_USER, "<｜User｜>"),
    (TINY_ASSISTANT, "<｜Assistant｜>"),
];

/// The tiny model's configuration.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        model_type: ModelType::DeepseekV3,
        vocab_size: 512,
        hidden_size: 256,
        intermediate_size: 512,
        moe_intermediate_size: 128,
        num_hidden_layers: 4,
        first_k_dense_replace: 1,
        moe_layer_freq: 1,
        num_attention_heads: 8,
        q_lora_rank: Some(128),
        kv_lora_rank: 512,
        qk_nope_head_dim: 32,
        qk_rope_head_dim: 64,
        v_head_dim: 32,
        n_routed_experts: 16,
        n_shared_experts: 1,
        num_experts_per_tok: 4,
        n_group: 4,
        topk_group: 2,
        scoring_func: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: Some(YarnScaling {
            factor: 4.0,
            original_max_position_embeddings: 128,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        }),
        max_position_embeddings: 512,
        num_nextn_predict_layers: 1,
        quantization: Some(Fp8Quantization::default()),
        bos_token_id: Some(TINY_BOS),
        eos_token_ids: vec![TINY_EOS],
    }
}

/// FNV-1a: a stable hash of a tensor name for its generator's seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The tensor whose values a tensor copies (MTP copies of the embedding and lm_head).
fn canonical_name(name: &str, role: TensorRole, layer: Option<usize>) -> String {
    match (role, layer) {
        (TensorRole::Embedding, Some(_)) => "model.embed_tokens.weight".to_string(),
        (TensorRole::LmHead, Some(_)) => "lm_head.weight".to_string(),
        _ => name.to_string(),
    }
}

/// Deterministic weights for every tensor `cfg` calls for (FP8 per the config's
/// `quantization_config`), in [`expected_tensors`] order.
pub fn generate_tensors(cfg: &ModelConfig, seed: u64) -> Vec<TensorData> {
    let specs = expected_tensors(cfg, Fp8Policy::for_config(cfg));
    let mut out = Vec::with_capacity(specs.len());
    for spec in &specs {
        if spec.role == TensorRole::WeightScale {
            continue; // written with its weight
        }
        let key = canonical_name(&spec.name, spec.role, spec.layer);
        let mut rng = Rng::new(splitmix64(seed) ^ fnv1a(&key));
        let n = spec.numel();
        let (rows, cols) = match spec.shape.as_slice() {
            &[r, c] => (r, c),
            _ => (n, 1),
        };
        let values: Vec<f32> = match spec.role {
            TensorRole::Embedding => (0..n).map(|_| rng.normal()).collect(),
            TensorRole::LmHead | TensorRole::Router => {
                let std = (cfg.hidden_size as f32).powf(-0.5);
                (0..n).map(|_| rng.normal() * std).collect()
            }
            TensorRole::Norm => (0..n).map(|_| 1.0 + 0.1 * rng.normal()).collect(),
            TensorRole::ScoreBias => (0..n).map(|_| 0.05 * rng.normal()).collect(),
            TensorRole::Linear => {
                let std = (cols as f32).powf(-0.5);
                (0..n).map(|_| rng.normal() * std).collect()
            }
            TensorRole::WeightScale => unreachable!("skipped above"),
        };
        match spec.dtype {
            DType::E4m3 => {
                let q = quantize_fp8_blocks(&values, rows, cols);
                let scale = scale_name(&spec.name);
                out.push(TensorData::e4m3(
                    spec.name.clone(),
                    spec.shape.clone(),
                    &q.q,
                ));
                let scale_shape = specs
                    .iter()
                    .find(|s| s.name == scale)
                    .map(|s| s.shape.clone())
                    .expect("an FP8 weight has a scale spec");
                out.push(TensorData::f32(scale, scale_shape, &q.scales));
            }
            DType::F32 => out.push(TensorData::f32(
                spec.name.clone(),
                spec.shape.clone(),
                &values,
            )),
            _ => {
                let v: Vec<bf16> = values.iter().map(|&x| bf16::from_f32(x)).collect();
                out.push(TensorData::bf16(spec.name.clone(), spec.shape.clone(), &v));
            }
        }
    }
    out
}

/// GPT-2's byte-to-unicode map: the printable character each byte is spelled as in a byte-level
/// BPE vocabulary.
pub fn byte_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xa1..=0xac).contains(&b)
            || (0xae..=0xff).contains(&b)
    };
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("all codes are valid scalar values");
    }
    out
}

/// A byte-level tokenizer in the Hugging Face `tokenizers` JSON format: one token per byte
/// (ids 0..=255, BPE with no merges over the GPT-2 byte alphabet) plus the special tokens of
/// [`TINY_SPECIAL_TOKENS`]; encoding prepends BOS like DeepSeek-V3's tokenizer.
pub fn tokenizer_json() -> Value {
    let mut vocab = Map::new();
    for (b, c) in byte_to_unicode().iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    let added: Vec<Value> = TINY_SPECIAL_TOKENS
        .iter()
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })
        })
        .collect();
    let bos = TINY_SPECIAL_TOKENS[0].1;
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": false,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                bos: {"id": bos, "ids": [TINY_BOS], "tokens": [bos]},
            },
        },
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true,
        },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": [],
        },
    })
}

/// `tokenizer_config.json` to go with [`tokenizer_json`].
pub fn tokenizer_config_json() -> Value {
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": TINY_SPECIAL_TOKENS[0].1,
        "eos_token": TINY_SPECIAL_TOKENS[1].1,
        "pad_token": TINY_SPECIAL_TOKENS[2].1,
        "model_max_length": 512,
        "tokenizer_class": "LlamaTokenizerFast",
        "clean_up_tokenization_spaces": false,
    })
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value always serializes");
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// Writes the tiny model to `dir` (created if needed): `config.json`, `model.safetensors`,
/// `tokenizer.json`, `tokenizer_config.json`. Returns its config.
pub fn write_tiny(dir: impl AsRef<Path>, seed: u64) -> Result<ModelConfig> {
    write_tiny_sharded(dir, seed, 1)
}

/// [`write_tiny`] with the weights in `shards` files and an index when `shards > 1`.
pub fn write_tiny_sharded(dir: impl AsRef<Path>, seed: u64, shards: usize) -> Result<ModelConfig> {
    let dir = dir.as_ref();
    let cfg = tiny_config();
    cfg.validate()?;
    let tensors = generate_tensors(&cfg, seed);
    write_checkpoint(dir, &cfg, &tensors, shards)?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json())?;
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config_json())?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_config_is_valid_and_round_trips() {
        let cfg = tiny_config();
        cfg.validate().unwrap();
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        // K of every FP8 GEMM is a multiple of 128.
        for spec in expected_tensors(&cfg, Fp8Policy::Released) {
            if spec.dtype == DType::E4m3 {
                assert_eq!(spec.shape[1] % 128, 0, "{}", spec.name);
            }
        }
        // YaRN actually blends some frequencies.
        let f = cfg.rope_params().unwrap().inv_freq();
        let plain = kernels::reference::rope::RopeParams::new(10_000.0, 16, None)
            .unwrap()
            .inv_freq();
        assert!(f.iter().zip(&plain).any(|(a, b)| a != b));
        assert!(f.iter().zip(&plain).any(|(a, b)| a == b));
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let m = byte_to_unicode();
        let set: std::collections::HashSet<char> = m.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(m[b'a' as usize], 'a');
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn generation_is_deterministic_per_tensor() {
        let mut small = tiny_config();
        small.num_hidden_layers = 1;
        small.num_nextn_predict_layers = 0;
        let a = generate_tensors(&small, 1);
        let b = generate_tensors(&tiny_config(), 1);
        // Layer 0 is the same whatever the layer count.
        for t in &a {
            let same = b.iter().find(|u| u.name == t.name).unwrap();
            assert_eq!(t, same);
        }
        let c = generate_tensors(&small, 2);
        assert_ne!(a, c);
    }
}
