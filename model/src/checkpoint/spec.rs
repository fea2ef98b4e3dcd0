//! The tensors a config calls for (spec §2): names, shapes and element types.

use std::collections::HashSet;

use kernels::DType;

use crate::config::{ModelConfig, FP8_WEIGHT_BLOCK};

/// Which linear weights are stored as FP8.
///
/// The dtypes in the specs are the released checkpoints' (and what the tiny generator writes);
/// the loader accepts F32, F16 or BF16 for every non-FP8 tensor and F32 or BF16 for the
/// `weight_scale_inv` tensors (see [`crate::checkpoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fp8Policy {
    /// Every tensor BF16 (except `e_score_correction_bias`, F32): a checkpoint without
    /// `quantization_config`.
    Bf16,
    /// The released FP8 layout: every attention, dense-MLP and expert linear weight is e4m3 with
    /// an F32 `weight_scale_inv` sibling of shape [ceil(N/128), ceil(K/128)]; the router gate,
    /// embeddings, lm_head, `eh_proj`, `shared_head.head` and all norms stay BF16.
    Released,
}

impl Fp8Policy {
    /// `Released` when the config has a `quantization_config`, else `Bf16`.
    pub fn for_config(cfg: &ModelConfig) -> Self {
        if cfg.quantization.is_some() {
            Fp8Policy::Released
        } else {
            Fp8Policy::Bf16
        }
    }
}

/// What a tensor is, for the code that fills or consumes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRole {
    /// `embed_tokens` [vocab, hidden] (MTP layers hold a copy).
    Embedding,
    /// `lm_head` / MTP `shared_head.head` [vocab, hidden].
    LmHead,
    /// An RMSNorm weight `[dim]`.
    Norm,
    /// A linear weight [N, K] (BF16 or e4m3, see the spec's dtype).
    Linear,
    /// The F32 `weight_scale_inv` of an FP8 linear weight.
    WeightScale,
    /// The router `mlp.gate.weight` [E, hidden].
    Router,
    /// `mlp.gate.e_score_correction_bias` `[E]` (F32).
    ScoreBias,
}

/// One tensor a config calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// The decoder layer (MTP layers included), `None` for top-level tensors.
    pub layer: Option<usize>,
    pub role: TensorRole,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size_bytes()
    }
}

/// Shape of the `weight_scale_inv` of an [n, k] FP8 weight: [ceil(n/128), ceil(k/128)].
pub fn scale_shape(n: usize, k: usize) -> [usize; 2] {
    [n.div_ceil(FP8_WEIGHT_BLOCK), k.div_ceil(FP8_WEIGHT_BLOCK)]
}

/// The name of the scale tensor of FP8 weight `weight_name` (`x.weight` -> `x.weight_scale_inv`).
pub fn scale_name(weight_name: &str) -> String {
    format!("{weight_name}_scale_inv")
}

/// The dtype name a safetensors header uses for `dtype` (`BF16`, `F8_E4M3`, `F32`, ...).
pub fn safetensors_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::Bf16 => "BF16",
        DType::F16 => "F16",
        DType::E4m3 => "F8_E4M3",
        DType::I32 => "I32",
        DType::U32 => "U32",
        DType::U8 => "U8",
    }
}

struct Builder {
    specs: Vec<TensorSpec>,
    fp8: bool,
}

impl Builder {
    fn push(
        &mut self,
        name: String,
        shape: Vec<usize>,
        dtype: DType,
        layer: Option<usize>,
        role: TensorRole,
    ) {
        self.specs.push(TensorSpec {
            name,
            shape,
            dtype,
            layer,
            role,
        });
    }

    fn norm(&mut self, name: String, dim: usize, layer: Option<usize>) {
        self.push(name, vec![dim], DType::Bf16, layer, TensorRole::Norm);
    }

    /// A linear weight `prefix.weight` [n, k]; FP8 with its scale when `quantizable` and the
    /// policy says so.
    fn linear(&mut self, prefix: &str, n: usize, k: usize, layer: usize, quantizable: bool) {
        let name = format!("{prefix}.weight");
        if quantizable && self.fp8 {
            let scale = scale_name(&name);
            self.push(
                name,
                vec![n, k],
                DType::E4m3,
                Some(layer),
                TensorRole::Linear,
            );
            self.push(
                scale,
                scale_shape(n, k).to_vec(),
                DType::F32,
                Some(layer),
                TensorRole::WeightScale,
            );
        } else {
            self.push(
                name,
                vec![n, k],
                DType::Bf16,
                Some(layer),
                TensorRole::Linear,
            );
        }
    }

    /// gate_proj / up_proj [width, hidden], down_proj [hidden, width].
    fn mlp(&mut self, prefix: &str, width: usize, hidden: usize, layer: usize) {
        self.linear(&format!("{prefix}.gate_proj"), width, hidden, layer, true);
        self.linear(&format!("{prefix}.up_proj"), width, hidden, layer, true);
        self.linear(&format!("{prefix}.down_proj"), hidden, width, layer, true);
    }

    fn layer(&mut self, cfg: &ModelConfig, l: usize) {
        let d = cfg.hidden_size;
        let p = format!("model.layers.{l}");
        let at = Some(l);
        self.norm(format!("{p}.input_layernorm.weight"), d, at);
        self.norm(format!("{p}.post_attention_layernorm.weight"), d, at);

        // Attention (spec §3.1).
        let a = format!("{p}.self_attn");
        match cfg.q_lora_rank {
            Some(r) => {
                self.linear(&format!("{a}.q_a_proj"), r, d, l, true);
                self.norm(format!("{a}.q_a_layernorm.weight"), r, at);
                self.linear(&format!("{a}.q_b_proj"), cfg.q_proj_dim(), r, l, true);
            }
            None => self.linear(&format!("{a}.q_proj"), cfg.q_proj_dim(), d, l, true),
        }
        self.linear(
            &format!("{a}.kv_a_proj_with_mqa"),
            cfg.kv_a_dim(),
            d,
            l,
            true,
        );
        self.norm(format!("{a}.kv_a_layernorm.weight"), cfg.kv_lora_rank, at);
        self.linear(
            &format!("{a}.kv_b_proj"),
            cfg.kv_b_dim(),
            cfg.kv_lora_rank,
            l,
            true,
        );
        self.linear(&format!("{a}.o_proj"), d, cfg.o_proj_in_dim(), l, true);

        // Feed-forward (spec §3.3).
        let m = format!("{p}.mlp");
        if cfg.is_moe_layer(l) {
            let e = cfg.n_routed_experts;
            self.push(
                format!("{m}.gate.weight"),
                vec![e, d],
                DType::Bf16,
                at,
                TensorRole::Router,
            );
            if cfg.has_score_bias() {
                self.push(
                    format!("{m}.gate.e_score_correction_bias"),
                    vec![e],
                    DType::F32,
                    at,
                    TensorRole::ScoreBias,
                );
            }
            for x in 0..e {
                self.mlp(&format!("{m}.experts.{x}"), cfg.moe_intermediate_size, d, l);
            }
            if cfg.n_shared_experts > 0 {
                self.mlp(
                    &format!("{m}.shared_experts"),
                    cfg.shared_expert_dim(),
                    d,
                    l,
                );
            }
        } else {
            self.mlp(&m, cfg.intermediate_size, d, l);
        }

        // MTP module extras (spec §3.4).
        if cfg.is_mtp_layer(l) {
            self.norm(format!("{p}.enorm.weight"), d, at);
            self.norm(format!("{p}.hnorm.weight"), d, at);
            self.linear(&format!("{p}.eh_proj"), d, 2 * d, l, false);
            self.norm(format!("{p}.shared_head.norm.weight"), d, at);
            self.push(
                format!("{p}.shared_head.head.weight"),
                vec![cfg.vocab_size, d],
                DType::Bf16,
                at,
                TensorRole::LmHead,
            );
            self.push(
                format!("{p}.embed_tokens.weight"),
                vec![cfg.vocab_size, d],
                DType::Bf16,
                at,
                TensorRole::Embedding,
            );
        }
    }
}

/// Every tensor of a checkpoint for `cfg`: top-level tensors first, then layers
/// 0..num_hidden_layers + num_nextn_predict_layers in order (MTP layers last).
pub fn expected_tensors(cfg: &ModelConfig, fp8: Fp8Policy) -> Vec<TensorSpec> {
    let mut b = Builder {
        specs: Vec::new(),
        fp8: fp8 == Fp8Policy::Released,
    };
    let (v, d) = (cfg.vocab_size, cfg.hidden_size);
    b.push(
        "model.embed_tokens.weight".into(),
        vec![v, d],
        DType::Bf16,
        None,
        TensorRole::Embedding,
    );
    b.norm("model.norm.weight".into(), d, None);
    b.push(
        "lm_head.weight".into(),
        vec![v, d],
        DType::Bf16,
        None,
        TensorRole::LmHead,
    );
    for l in 0..cfg.num_layers_total() {
        b.layer(cfg, l);
    }
    b.specs
}

/// The linear weights the released checkpoints store as FP8 for `cfg` (spec §2.2): every
/// attention, dense-MLP, routed-expert and shared-expert weight, MTP layers included; never the
/// router, `eh_proj`, the heads or the embeddings. Derived from [`expected_tensors`] under
/// [`Fp8Policy::Released`], so it is the loader's own list, whatever the checkpoint at hand
/// stores: what `dsv3 convert --to fp8` quantizes and what the CPU backend's fp8 precision
/// quantizes at load in a BF16, F16 or F32 checkpoint.
pub fn released_fp8_weights(cfg: &ModelConfig) -> HashSet<String> {
    expected_tensors(cfg, Fp8Policy::Released)
        .into_iter()
        .filter(|s| s.dtype == DType::E4m3)
        .map(|s| s.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_layer_shapes() {
        let cfg = ModelConfig::deepseek_v3();
        let specs = expected_tensors(&cfg, Fp8Policy::Released);
        let get = |n: &str| {
            specs
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("{n} not in the spec list"))
        };
        let kv_a = get("model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
        assert_eq!(
            (kv_a.shape.as_slice(), kv_a.dtype),
            (&[576, 7168][..], DType::E4m3)
        );
        let s = get("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
        assert_eq!((s.shape.as_slice(), s.dtype), (&[5, 56][..], DType::F32));
        assert_eq!(
            get("model.layers.5.self_attn.q_b_proj.weight").shape,
            [24_576, 1536]
        );
        assert_eq!(
            get("model.layers.5.self_attn.kv_b_proj.weight").shape,
            [32_768, 512]
        );
        assert_eq!(
            get("model.layers.5.self_attn.o_proj.weight").shape,
            [7168, 16_384]
        );
        assert_eq!(
            get("model.layers.2.mlp.down_proj.weight").shape,
            [7168, 18_432]
        );
        assert_eq!(get("model.layers.3.mlp.gate.weight").dtype, DType::Bf16);
        assert_eq!(
            get("model.layers.3.mlp.gate.e_score_correction_bias").shape,
            [256]
        );
        assert_eq!(
            get("model.layers.60.mlp.experts.255.down_proj.weight").shape,
            [7168, 2048]
        );
        assert_eq!(
            get("model.layers.60.mlp.shared_experts.up_proj.weight").shape,
            [2048, 7168]
        );
        let eh = get("model.layers.61.eh_proj.weight");
        assert_eq!(
            (eh.shape.as_slice(), eh.dtype),
            (&[7168, 14_336][..], DType::Bf16)
        );
        assert_eq!(
            get("model.layers.61.shared_head.head.weight").shape,
            [129_280, 7168]
        );
        assert!(specs
            .iter()
            .all(|s| s.name != "model.layers.2.mlp.gate.weight"));
        assert!(specs
            .iter()
            .all(|s| s.name != "model.layers.61.eh_proj.weight_scale_inv"));
        assert!(specs
            .iter()
            .all(|s| s.name != "model.layers.62.enorm.weight"));
        let bf16 = expected_tensors(&cfg, Fp8Policy::Bf16);
        assert!(bf16.iter().all(|s| s.dtype != DType::E4m3));
        assert!(bf16.iter().all(|s| !s.name.ends_with("_scale_inv")));
    }

    #[test]
    fn released_fp8_weights_are_the_quantizable_linears() {
        let cfg = ModelConfig::deepseek_v3();
        let set = released_fp8_weights(&cfg);
        for name in [
            "model.layers.0.self_attn.q_a_proj.weight",
            "model.layers.0.self_attn.kv_b_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.3.mlp.experts.255.up_proj.weight",
            "model.layers.3.mlp.shared_experts.gate_proj.weight",
            "model.layers.61.self_attn.o_proj.weight",
        ] {
            assert!(set.contains(name), "{name}");
        }
        for name in [
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.layers.3.mlp.gate.weight",
            "model.layers.61.eh_proj.weight",
            "model.layers.61.shared_head.head.weight",
            "model.layers.0.input_layernorm.weight",
        ] {
            assert!(!set.contains(name), "{name}");
        }
        // One per scale of the FP8 layout.
        let scales = expected_tensors(&cfg, Fp8Policy::Released)
            .iter()
            .filter(|s| s.role == TensorRole::WeightScale)
            .count();
        assert_eq!(set.len(), scales);
    }

    #[test]
    fn no_q_lora_uses_q_proj() {
        let mut cfg = ModelConfig::deepseek_v3();
        cfg.q_lora_rank = None;
        let specs = expected_tensors(&cfg, Fp8Policy::Bf16);
        let q = specs
            .iter()
            .find(|s| s.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(q.shape, [24_576, 7168]);
        assert!(specs.iter().all(|s| !s.name.contains("q_a_proj")));
    }
}
