//! `config.json` in two modes:
//! - raw: arbitrary UTF-8 text, parsed and validated;
//! - structured (first byte 0xff, never the start of UTF-8 text): the micro config
//!   (fuzz/micro_config.json) with keys overwritten by values the input picks (huge, zero,
//!   fractional, negative, null, removed), so that numeric interplay between keys is reached
//!   much sooner than by mutating text. 10 bytes per edit: key, kind, 8 value bytes.
//!
//! A config that validates then goes through what `Checkpoint::open` and the engine derive from
//! it (the tensor list, parameter and KV-cache sizes), and the documented round trip
//! `from_json(to_json(c)) == c`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::checkpoint::{expected_tensors, Fp8Policy};
use model::ModelConfig;
use serde_json::{json, Value};

const KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_nextn_predict_layers",
    "num_attention_heads",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_routed_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "n_group",
    "topk_group",
    "first_k_dense_replace",
    "moe_layer_freq",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "routed_scaling_factor",
    "bos_token_id",
    "eos_token_id",
    "topk_method",
    "scoring_func",
    "model_type",
    "rope_scaling",
    "quantization_config",
    "rope_scaling.factor",
    "rope_scaling.original_max_position_embeddings",
    "rope_scaling.beta_fast",
    "rope_scaling.beta_slow",
    "rope_scaling.mscale",
    "rope_scaling.mscale_all_dim",
    "rope_scaling.type",
    "quantization_config.weight_block_size",
];

const STRINGS: &[&str] = &[
    "yarn",
    "default",
    "noaux_tc",
    "greedy",
    "group_limited_greedy",
    "sigmoid",
    "softmax",
    "deepseek_v3",
    "deepseek_v2",
    "",
];

fn structured(micro: &str, edits: &[u8]) -> Value {
    let mut v: Value = serde_json::from_str(micro).expect("micro config JSON");
    for e in edits.chunks_exact(10) {
        let key = KEYS[e[0] as usize % KEYS.len()];
        let raw = u64::from_le_bytes(e[2..10].try_into().expect("8 bytes"));
        let value = match e[1] % 9 {
            0 => json!(raw),
            1 => json!(raw % 300),
            2 => json!(1u64 << (raw % 64)),
            3 => json!(f64::from_bits(raw)),
            4 => json!(-((raw % 1000) as i64)),
            5 => Value::Null,
            6 => json!(raw % 2 == 0),
            7 => json!(STRINGS[raw as usize % STRINGS.len()]),
            _ => {
                // Remove the key.
                let (parent, leaf) = match key.split_once('.') {
                    Some((p, l)) => (v.get_mut(p), l),
                    None => (Some(&mut v), key),
                };
                if let Some(Value::Object(m)) = parent {
                    m.remove(leaf);
                }
                continue;
            }
        };
        // f64::from_bits can be NaN/inf, which JSON cannot hold (json! gives null).
        match key.split_once('.') {
            Some((p, l)) => {
                if !v[p].is_object() {
                    v[p] = json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16});
                }
                v[p][l] = value;
            }
            None => v[key] = value,
        }
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let parsed = match data.split_first() {
        Some((0xff, edits)) => {
            ModelConfig::from_json(&structured(include_str!("../micro_config.json"), edits))
        }
        _ => {
            let Ok(text) = std::str::from_utf8(data) else {
                return;
            };
            ModelConfig::from_json_str(text)
        }
    };
    let cfg = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let specs = expected_tensors(&cfg, Fp8Policy::for_config(&cfg));
    for s in &specs {
        let _ = s.size_bytes();
    }
    let _ = cfg.param_counts();
    let _ = cfg.kv_bytes_per_token();
    let _ = cfg.kv_bytes_per_token_per_layer_fp8();
    let _ = cfg.rope_params();
    let _ = cfg.softmax_scale();
    let again = ModelConfig::from_json(&cfg.to_json()).expect("a valid config's JSON parses");
    assert_eq!(again, cfg, "to_json / from_json round trip");
});
