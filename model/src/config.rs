//! `config.json` of a DeepSeek-V3-architecture checkpoint (DeepSeek-V3, R1, V3.1, Kimi-K2,
//! Moonlight) or a DeepSeek-V2 one: parsing, validation and the derived sizes (spec §1).
//!
//! # Parsing
//!
//! The file is read as a JSON object and every key is extracted by hand, so a wrong type or value
//! is an error that names the key (`ModelError::Config { key, .. }`), never a panic. Unknown keys
//! (`auto_map`, `initializer_range`, ...) are ignored; `architectures` is checked when present. A key that is absent or
//! `null` takes the default of the config class the released checkpoints ship with (table below);
//! a key with no default there (`null` in the class) is required when it matters.
//!
//! RoPE comes in two spellings, both accepted: the released one (`rope_scaling` with `type` or
//! `rope_type`, plus a top-level `rope_theta`) and the transformers-5 one (`rope_parameters` with
//! `rope_type` and `rope_theta` inside). When both are present they must agree; a contradiction is
//! an error naming the `rope_parameters` key.
//!
//! # Defaults (absent or `null` keys)
//!
//! | key | deepseek_v3, kimi_k2 | deepseek_v2 | source |
//! |---|---|---|---|
//! | vocab_size | 129280 | 102400 | config class defaults (`DeepseekV3Config` / `DeepseekV2Config`) |
//! | hidden_size | 7168 | 4096 | " |
//! | intermediate_size | 18432 | 11008 | " |
//! | moe_intermediate_size | 2048 | 1407 | " |
//! | num_hidden_layers | 61 | 30 | " |
//! | num_attention_heads | 128 | 32 | " |
//! | q_lora_rank | 1536 | 1536 | " (`null` or 0 in the file: no query compression) |
//! | kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim | 512, 128, 64, 128 | same | " |
//! | n_routed_experts | 256 | none: dense model | " |
//! | n_shared_experts | 1 | none: 0 | " |
//! | num_experts_per_tok | 8 | required when n_routed_experts is set | " |
//! | n_group, topk_group | 8, 4 | required for group_limited_greedy; 1, 1 for greedy | " (greedy ignores groups) |
//! | first_k_dense_replace, moe_layer_freq | 3, 1 | 0, 1 | " |
//! | scoring_func, topk_method | sigmoid, noaux_tc | softmax, greedy | " (the V2 class misspells `gready`) |
//! | norm_topk_prob, routed_scaling_factor | true, 2.5 | false, 1.0 | " |
//! | max_position_embeddings | 4096 | 2048 | " |
//! | rms_norm_eps, rope_theta | 1e-6, 10000 | same | " |
//! | num_nextn_predict_layers | 1 | 0 | DeepSeek's config class (transformers' own V3 class has no MTP) |
//! | bos_token_id, eos_token_id | 0, 1 | 100000, 100001 | config class defaults |
//! | hidden_act, attention_bias, tie_word_embeddings, rope_interleave | silu, false, false, true | same | only these are supported |
//! | rope_scaling | none | none | |
//! | rope_scaling.beta_fast, beta_slow | 32, 1 | same | YaRN defaults (DeepSeek's and transformers' code) |
//! | rope_scaling.mscale, mscale_all_dim | 1, 0 | same | DeepSeek's YaRN rotary embedding |
//! | rope_scaling.original_max_position_embeddings | max_position_embeddings | same | transformers' YaRN |
//! | quantization_config.fmt, weight_block_size, activation_scheme | e4m3, `[128, 128]`, dynamic | same | transformers' FP8 config; the only supported values |
//! | quantization_config.scale_fmt | null (f32 scales) | same | `"ue8m0"` (DeepSeek-V3.1): power-of-two scales, see [`ScaleFmt`] |
//! | torch_dtype / dtype | any of bfloat16, float16, float32 | same | only describes the saved tensors; each tensor's own dtype is read |
//! | architectures | `[DeepseekV3ForCausalLM]` | `[DeepseekV2ForCausalLM]` | checked when present |
//!
//! `rope_scaling.factor` has no default (a YaRN block without it is an error), and neither has
//! `model_type` (it selects the column above). `kimi_k2` (Kimi-K2) is the DeepSeek-V3
//! architecture under its own name: its `auto_map` points at DeepSeek's `DeepseekV3Config`, so it
//! takes the deepseek_v3 defaults.

use std::path::Path;

use kernels::reference::rope::{RopeParams, YarnScaling};
use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};

mod limits;
pub use limits::{MAX_DIM, MAX_PARAMS, MAX_TENSORS};

/// The FP8 block size of `weight_scale_inv` (spec §2): one f32 scale per 128x128 block.
pub const FP8_WEIGHT_BLOCK: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelType {
    /// DeepSeek-V3, R1, V3.1 and Moonlight.
    DeepseekV3,
    DeepseekV2,
    /// Kimi-K2: the DeepSeek-V3 architecture (`architectures: ["DeepseekV3ForCausalLM"]`, config
    /// class `DeepseekV3Config` through `auto_map`) under its own `model_type`.
    KimiK2,
}

impl ModelType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelType::DeepseekV3 => "deepseek_v3",
            ModelType::DeepseekV2 => "deepseek_v2",
            ModelType::KimiK2 => "kimi_k2",
        }
    }

    pub const fn architecture(self) -> &'static str {
        match self {
            ModelType::DeepseekV3 | ModelType::KimiK2 => "DeepseekV3ForCausalLM",
            ModelType::DeepseekV2 => "DeepseekV2ForCausalLM",
        }
    }

    fn from_config(s: &str) -> Option<Self> {
        [
            ModelType::DeepseekV3,
            ModelType::DeepseekV2,
            ModelType::KimiK2,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// The `dtype` / `torch_dtype` values a checkpoint may announce. The value only describes how the
/// non-FP8 tensors were saved; the loader reads each tensor's own dtype (F32, F16 or BF16) and
/// converts, so all three are accepted.
pub const SUPPORTED_DTYPES: [&str; 3] = ["bfloat16", "float16", "float32"];

/// How FP8 scales are formed (`quantization_config.scale_fmt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ScaleFmt {
    /// Any positive f32 scale (DeepSeek-V3, R1, Kimi-K2): `scale_fmt` absent or null.
    #[default]
    Float,
    /// Powers of two (`"ue8m0"`, DeepSeek-V3.1): weight scales must be powers of two, and
    /// activation scales are rounded up to one (DeepSeek-V3.1's `act_quant` with `scale_fmt`
    /// set).
    Ue8m0,
}

/// How router logits become expert scores (spec §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoringFunc {
    /// DeepSeek-V3: s = sigmoid(z), chosen by s + e_score_correction_bias.
    Sigmoid,
    /// DeepSeek-V2: s = softmax(z), no bias.
    Softmax,
}

impl ScoringFunc {
    pub const fn as_str(self) -> &'static str {
        match self {
            ScoringFunc::Sigmoid => "sigmoid",
            ScoringFunc::Softmax => "softmax",
        }
    }
}

/// How the K experts are chosen (spec §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopkMethod {
    /// DeepSeek-V3: group score = sum of the 2 largest biased scores, keep topk_group groups.
    NoauxTc,
    /// DeepSeek-V2(-Lite): plain top-K over all experts.
    Greedy,
    /// DeepSeek-V2: group score = max of the group, keep topk_group groups.
    GroupLimitedGreedy,
}

impl TopkMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            TopkMethod::NoauxTc => "noaux_tc",
            TopkMethod::Greedy => "greedy",
            TopkMethod::GroupLimitedGreedy => "group_limited_greedy",
        }
    }

    /// Whether experts are chosen only among the `topk_group` best groups.
    pub const fn group_limited(self) -> bool {
        !matches!(self, TopkMethod::Greedy)
    }
}

/// `quantization_config` of an FP8 checkpoint: the only supported form is `quant_method: fp8`,
/// `fmt: e4m3`, `weight_block_size: [128, 128]`, `activation_scheme: dynamic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fp8Quantization {
    pub weight_block_size: [usize; 2],
    pub scale_fmt: ScaleFmt,
}

impl Default for Fp8Quantization {
    fn default() -> Self {
        Fp8Quantization {
            weight_block_size: [FP8_WEIGHT_BLOCK, FP8_WEIGHT_BLOCK],
            scale_fmt: ScaleFmt::Float,
        }
    }
}

impl Fp8Quantization {
    /// Whether scales are powers of two (weights checked, activations rounded up).
    pub fn ue8m0(&self) -> bool {
        self.scale_fmt == ScaleFmt::Ue8m0
    }
}

/// A parsed and validated `config.json` (spec §1).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLP (layers < first_k_dense_replace).
    pub intermediate_size: usize,
    /// Width of every routed expert; shared experts are `n_shared_experts` times as wide.
    pub moe_intermediate_size: usize,
    /// Main-model layers (MTP layers come after them).
    pub num_hidden_layers: usize,
    pub first_k_dense_replace: usize,
    /// A layer >= first_k_dense_replace is MoE when `layer % moe_layer_freq == 0` (1 for V3).
    pub moe_layer_freq: usize,
    pub num_attention_heads: usize,
    /// `None`: no query compression (`q_proj` instead of `q_a_proj` / `q_b_proj`).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// 0: no MoE layers at all.
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub scoring_func: ScoringFunc,
    pub topk_method: TopkMethod,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<YarnScaling>,
    pub max_position_embeddings: usize,
    /// MTP modules the config announces (layer ids num_hidden_layers..); a checkpoint may omit
    /// them.
    pub num_nextn_predict_layers: usize,
    /// `Some`: the released FP8 layout (linear weights e4m3 with `weight_scale_inv`).
    pub quantization: Option<Fp8Quantization>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Parameter counts from the tensor shapes (FP8 scale tensors not counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    /// Every main-model parameter: embeddings, all layers (all experts), final norm, lm_head.
    pub total: u64,
    /// Parameters used per token: `total` less the routed experts a token does not visit (each
    /// MoE layer contributes K of its E experts) and less the embedding table (a lookup reads one
    /// row). lm_head is counted. This is the convention that reproduces the published figures
    /// (V3: 37B, V2-Lite: 2.4B).
    pub activated: u64,
    /// The MTP layers' parameters (their copies of embed_tokens and lm_head included).
    pub mtp_total: u64,
    pub mtp_activated: u64,
}

/// Defaults of one config class (see the module table).
struct Defaults {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    moe_intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    n_routed_experts: Option<usize>,
    n_shared_experts: usize,
    num_experts_per_tok: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    first_k_dense_replace: usize,
    scoring_func: ScoringFunc,
    topk_method: TopkMethod,
    norm_topk_prob: bool,
    routed_scaling_factor: f64,
    max_position_embeddings: usize,
    num_nextn_predict_layers: usize,
    bos_token_id: u32,
    eos_token_id: u32,
}

impl ModelType {
    fn defaults(self) -> Defaults {
        match self {
            // Kimi-K2's config class is DeepSeek's DeepseekV3Config (via auto_map).
            ModelType::DeepseekV3 | ModelType::KimiK2 => Defaults {
                vocab_size: 129_280,
                hidden_size: 7168,
                intermediate_size: 18_432,
                moe_intermediate_size: 2048,
                num_hidden_layers: 61,
                num_attention_heads: 128,
                n_routed_experts: Some(256),
                n_shared_experts: 1,
                num_experts_per_tok: Some(8),
                n_group: Some(8),
                topk_group: Some(4),
                first_k_dense_replace: 3,
                scoring_func: ScoringFunc::Sigmoid,
                topk_method: TopkMethod::NoauxTc,
                norm_topk_prob: true,
                routed_scaling_factor: 2.5,
                max_position_embeddings: 4096,
                num_nextn_predict_layers: 1,
                bos_token_id: 0,
                eos_token_id: 1,
            },
            ModelType::DeepseekV2 => Defaults {
                vocab_size: 102_400,
                hidden_size: 4096,
                intermediate_size: 11_008,
                moe_intermediate_size: 1407,
                num_hidden_layers: 30,
                num_attention_heads: 32,
                n_routed_experts: None,
                n_shared_experts: 0,
                num_experts_per_tok: None,
                n_group: None,
                topk_group: None,
                first_k_dense_replace: 0,
                scoring_func: ScoringFunc::Softmax,
                topk_method: TopkMethod::Greedy,
                norm_topk_prob: false,
                routed_scaling_factor: 1.0,
                max_position_embeddings: 2048,
                num_nextn_predict_layers: 0,
                bos_token_id: 100_000,
                eos_token_id: 100_001,
            },
        }
    }
}

/// Typed access to one JSON object; every error names `prefix.key`.
struct Keys<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Keys<'a> {
    fn new(map: &'a Map<String, Value>, prefix: &str) -> Self {
        Keys {
            map,
            prefix: prefix.to_string(),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn err(&self, key: &str, detail: impl Into<String>) -> ModelError {
        ModelError::config(self.path(key), detail)
    }

    /// The value, `None` when absent or `null`.
    fn value(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        if let Some(u) = v.as_u64() {
            return usize::try_from(u)
                .map(Some)
                .map_err(|_| self.err(key, format!("{u} is too large")));
        }
        // Some writers emit integral floats (`4096.0`); accept those, nothing else.
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(53) => Ok(Some(f as usize)),
            _ => Err(self.err(key, format!("expected a non-negative integer, found {v}"))),
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.usize(key)? {
            None => Ok(None),
            Some(u) => u32::try_from(u)
                .map(Some)
                .map_err(|_| self.err(key, format!("{u} does not fit a token id"))),
        }
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        v.as_f64()
            .map(Some)
            .ok_or_else(|| self.err(key, format!("expected a number, found {v}")))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.err(key, format!("expected true or false, found {v}")))
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.err(key, format!("expected a string, found {v}")))
    }

    fn object(&self, key: &str) -> Result<Option<Keys<'a>>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        match v.as_object() {
            Some(map) => Ok(Some(Keys::new(map, &self.path(key)))),
            None => Err(self.err(key, format!("expected an object, found {v}"))),
        }
    }

    fn required_usize(&self, key: &str, why: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| self.err(key, format!("missing ({why})")))
    }

    /// A key whose only supported value is `supported` (absent means `supported`).
    fn only_str(&self, key: &str, supported: &str) -> Result<()> {
        match self.str(key)? {
            None => Ok(()),
            Some(s) if s == supported => Ok(()),
            Some(s) => Err(self.err(
                key,
                format!("\"{s}\" is not supported (only \"{supported}\")"),
            )),
        }
    }

    fn only_bool(&self, key: &str, supported: bool) -> Result<()> {
        match self.bool(key)? {
            Some(b) if b != supported => {
                Err(self.err(key, format!("{b} is not supported (only {supported})")))
            }
            _ => Ok(()),
        }
    }
}

/// One RoPE block (`rope_scaling` or `rope_parameters`), before the two are reconciled.
struct RopeBlock {
    /// The key the block came from (for error messages).
    name: String,
    theta: Option<f64>,
    yarn: Option<YarnScaling>,
}

fn parse_rope_block(k: &Keys<'_>, max_position_embeddings: usize) -> Result<RopeBlock> {
    let rope_type = k.str("rope_type")?;
    let old_type = k.str("type")?;
    let kind = match (rope_type, old_type) {
        (Some(a), Some(b)) if a != b => {
            return Err(k.err(
                "rope_type",
                format!("\"{a}\" contradicts \"type\": \"{b}\""),
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(k.err(
                "rope_type",
                "missing (a RoPE block needs \"rope_type\" or \"type\")",
            ))
        }
    };
    let theta = k.f64("rope_theta")?;
    let yarn = match kind {
        "default" => None,
        "yarn" => {
            let factor = k
                .f64("factor")?
                .ok_or_else(|| k.err("factor", "missing (YaRN needs a scaling factor)"))?;
            let original = k
                .usize("original_max_position_embeddings")?
                .unwrap_or(max_position_embeddings);
            let yarn = YarnScaling {
                factor,
                original_max_position_embeddings: original,
                beta_fast: k.f64("beta_fast")?.unwrap_or(32.0),
                beta_slow: k.f64("beta_slow")?.unwrap_or(1.0),
                mscale: k.f64("mscale")?.unwrap_or(1.0),
                mscale_all_dim: k.f64("mscale_all_dim")?.unwrap_or(0.0),
            };
            check_yarn(k, &yarn)?;
            if let Some(af) = k.f64("attention_factor")? {
                // transformers' explicit cos/sin magnitude: supported when it is the value the
                // mscale pair implies anyway.
                let implied = RopeParams {
                    theta: 10_000.0,
                    rope_dim: 2,
                    yarn: Some(yarn.clone()),
                }
                .cos_sin_scale();
                if (af - implied).abs() > 1e-6 * implied.abs().max(1.0) {
                    return Err(k.err(
                        "attention_factor",
                        format!(
                            "{af} differs from the value mscale / mscale_all_dim imply \
                             ({implied}); a free attention_factor is not supported"
                        ),
                    ));
                }
            }
            k.only_bool("truncate", true)?;
            Some(yarn)
        }
        other => {
            return Err(k.err(
                if rope_type.is_some() {
                    "rope_type"
                } else {
                    "type"
                },
                format!("RoPE type \"{other}\" is not supported (only \"yarn\" and \"default\")"),
            ))
        }
    };
    Ok(RopeBlock {
        name: k.prefix.clone(),
        theta,
        yarn,
    })
}

fn check_yarn(k: &Keys<'_>, y: &YarnScaling) -> Result<()> {
    if !(y.factor.is_finite() && y.factor >= 1.0) {
        return Err(k.err("factor", format!("must be >= 1, got {}", y.factor)));
    }
    if y.original_max_position_embeddings == 0 {
        return Err(k.err("original_max_position_embeddings", "must be > 0"));
    }
    for (key, v) in [("beta_fast", y.beta_fast), ("beta_slow", y.beta_slow)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(k.err(key, format!("must be > 0, got {v}")));
        }
    }
    for (key, v) in [("mscale", y.mscale), ("mscale_all_dim", y.mscale_all_dim)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(k.err(key, format!("must be finite and >= 0, got {v}")));
        }
    }
    Ok(())
}

fn same_f64(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Reconciles `rope_theta`, `rope_scaling` and `rope_parameters` (any subset may be present).
fn resolve_rope(k: &Keys<'_>, max_pos: usize) -> Result<(f64, Option<YarnScaling>)> {
    let top_theta = k.f64("rope_theta")?;
    let scaling = match k.object("rope_scaling")? {
        Some(b) => Some(parse_rope_block(&b, max_pos)?),
        None => None,
    };
    let params = match k.object("rope_parameters")? {
        Some(b) => Some(parse_rope_block(&b, max_pos)?),
        None => None,
    };

    // Theta: every place that states it must agree.
    let mut theta: Option<(String, f64)> = top_theta.map(|t| ("rope_theta".to_string(), t));
    for block in scaling.iter().chain(params.iter()) {
        if let Some(t) = block.theta {
            match &theta {
                Some((key, t0)) if !same_f64(*t0, t) => {
                    return Err(ModelError::config(
                        format!("{}.rope_theta", block.name),
                        format!("{t} contradicts {key} = {t0}"),
                    ))
                }
                Some(_) => {}
                None => theta = Some((format!("{}.rope_theta", block.name), t)),
            }
        }
    }
    let theta = theta.map_or(10_000.0, |(_, t)| t);

    let yarn = match (scaling, params) {
        (None, None) => None,
        (Some(b), None) | (None, Some(b)) => b.yarn,
        (Some(s), Some(p)) => {
            match (&s.yarn, &p.yarn) {
                (None, None) => {}
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ModelError::config(
                        "rope_parameters.rope_type",
                        "contradicts rope_scaling (one is yarn, the other is not)",
                    ))
                }
                (Some(a), Some(b)) => {
                    let fields = [
                        ("factor", a.factor, b.factor),
                        (
                            "original_max_position_embeddings",
                            a.original_max_position_embeddings as f64,
                            b.original_max_position_embeddings as f64,
                        ),
                        ("beta_fast", a.beta_fast, b.beta_fast),
                        ("beta_slow", a.beta_slow, b.beta_slow),
                        ("mscale", a.mscale, b.mscale),
                        ("mscale_all_dim", a.mscale_all_dim, b.mscale_all_dim),
                    ];
                    for (key, x, y) in fields {
                        if !same_f64(x, y) {
                            return Err(ModelError::config(
                                format!("rope_parameters.{key}"),
                                format!("{y} contradicts rope_scaling.{key} = {x}"),
                            ));
                        }
                    }
                }
            }
            p.yarn
        }
    };
    Ok((theta, yarn))
}

fn parse_quantization(k: &Keys<'_>) -> Result<Option<Fp8Quantization>> {
    let Some(q) = k.object("quantization_config")? else {
        return Ok(None);
    };
    match q.str("quant_method")? {
        Some("fp8") => {}
        Some(other) => {
            return Err(q.err(
                "quant_method",
                format!("\"{other}\" is not supported (only \"fp8\")"),
            ))
        }
        None => return Err(q.err("quant_method", "missing")),
    }
    q.only_str("fmt", "e4m3")?;
    q.only_str("activation_scheme", "dynamic")?;
    let block = match q.value("weight_block_size") {
        None => [FP8_WEIGHT_BLOCK, FP8_WEIGHT_BLOCK],
        Some(v) => {
            let dims: Option<Vec<u64>> = v
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect());
            match dims.as_deref() {
                Some(&[a, b]) if a == FP8_WEIGHT_BLOCK as u64 && b == FP8_WEIGHT_BLOCK as u64 => {
                    [FP8_WEIGHT_BLOCK, FP8_WEIGHT_BLOCK]
                }
                _ => {
                    return Err(q.err(
                        "weight_block_size",
                        format!("{v} is not supported (only [128, 128])"),
                    ))
                }
            }
        }
    };
    let scale_fmt = match q.str("scale_fmt")? {
        None => ScaleFmt::Float,
        Some("ue8m0") => ScaleFmt::Ue8m0,
        Some(other) => {
            return Err(q.err(
                "scale_fmt",
                format!("\"{other}\" is not supported (only \"ue8m0\", or null for f32 scales)"),
            ))
        }
    };
    Ok(Some(Fp8Quantization {
        weight_block_size: block,
        scale_fmt,
    }))
}

/// `architectures`, when given, must name the causal-LM class of `model_type` (a classification
/// head or another model family computes something else).
fn check_architectures(k: &Keys<'_>, model_type: ModelType) -> Result<()> {
    let Some(v) = k.value("architectures") else {
        return Ok(());
    };
    let want = model_type.architecture();
    let names: Option<Vec<&str>> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    match names {
        Some(names) if names.is_empty() || names.contains(&want) => Ok(()),
        _ => Err(k.err(
            "architectures",
            format!(
                "{v} is not supported for model_type \"{}\" (expected [\"{want}\"])",
                model_type.as_str()
            ),
        )),
    }
}

/// `torch_dtype` (transformers 4) and `dtype` (transformers 5): any of [`SUPPORTED_DTYPES`], and
/// the same value when both are present.
fn check_dtype(k: &Keys<'_>) -> Result<()> {
    let torch_dtype = k.str("torch_dtype")?;
    let dtype = k.str("dtype")?;
    if let (Some(a), Some(b)) = (torch_dtype, dtype) {
        if a != b {
            return Err(k.err("dtype", format!("\"{b}\" contradicts torch_dtype \"{a}\"")));
        }
    }
    for (key, value) in [("torch_dtype", torch_dtype), ("dtype", dtype)] {
        if let Some(v) = value {
            if !SUPPORTED_DTYPES.contains(&v) {
                return Err(k.err(
                    key,
                    format!("\"{v}\" is not supported (bfloat16, float16 or float32)"),
                ));
            }
        }
    }
    Ok(())
}

fn parse_eos(k: &Keys<'_>, default: u32) -> Result<Vec<u32>> {
    let Some(v) = k.value("eos_token_id") else {
        return Ok(vec![default]);
    };
    if let Some(list) = v.as_array() {
        return list
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|u| u32::try_from(u).ok())
                    .ok_or_else(|| k.err("eos_token_id", format!("{x} is not a token id")))
            })
            .collect();
    }
    Ok(vec![k.u32("eos_token_id")?.unwrap_or(default)])
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("config.json"))
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config("config.json", format!("{}: {e}", path.display())))?;
        Self::from_json(&value)
    }

    /// Parses and validates config JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config("config.json", e.to_string()))?;
        Self::from_json(&value)
    }

    /// Parses and validates a config JSON object.
    pub fn from_json(value: &Value) -> Result<Self> {
        let map = value.as_object().ok_or_else(|| {
            ModelError::config("config.json", "the top level must be a JSON object")
        })?;
        let k = Keys::new(map, "");
        let model_type = match k.str("model_type")? {
            Some(s) => ModelType::from_config(s).ok_or_else(|| {
                k.err(
                    "model_type",
                    format!("\"{s}\" is not supported (deepseek_v3, deepseek_v2 or kimi_k2)"),
                )
            })?,
            None => {
                return Err(k.err(
                    "model_type",
                    "missing (expected \"deepseek_v3\", \"deepseek_v2\" or \"kimi_k2\")",
                ))
            }
        };
        check_architectures(&k, model_type)?;
        let d = model_type.defaults();

        // Unsupported architecture variants.
        k.only_str("hidden_act", "silu")?;
        k.only_bool("attention_bias", false)?;
        k.only_bool("tie_word_embeddings", false)?;
        k.only_bool("rope_interleave", true)?;
        check_dtype(&k)?;

        let scoring_func = match k.str("scoring_func")? {
            None => d.scoring_func,
            Some("sigmoid") => ScoringFunc::Sigmoid,
            Some("softmax") => ScoringFunc::Softmax,
            Some(other) => {
                return Err(k.err(
                    "scoring_func",
                    format!("\"{other}\" is not supported (sigmoid or softmax)"),
                ))
            }
        };
        let topk_method = match k.str("topk_method")? {
            None => d.topk_method,
            Some("noaux_tc") => TopkMethod::NoauxTc,
            Some("greedy") => TopkMethod::Greedy,
            Some("group_limited_greedy") => TopkMethod::GroupLimitedGreedy,
            Some(other) => {
                return Err(k.err(
                    "topk_method",
                    format!(
                        "\"{other}\" is not supported (noaux_tc, greedy or group_limited_greedy)"
                    ),
                ))
            }
        };

        let n_routed_experts = k.usize("n_routed_experts")?.or(d.n_routed_experts);
        let n_routed_experts = n_routed_experts.unwrap_or(0);
        let moe = n_routed_experts > 0;
        let num_experts_per_tok = match k.usize("num_experts_per_tok")?.or(d.num_experts_per_tok) {
            Some(v) => v,
            None if moe => k.required_usize("num_experts_per_tok", "n_routed_experts is set")?,
            None => 0,
        };
        let (n_group, topk_group) = {
            let n_group = k.usize("n_group")?.or(d.n_group);
            let topk_group = k.usize("topk_group")?.or(d.topk_group);
            if moe && topk_method.group_limited() {
                let why = "group-limited routing needs it";
                (
                    n_group.map_or_else(|| k.required_usize("n_group", why), Ok)?,
                    topk_group.map_or_else(|| k.required_usize("topk_group", why), Ok)?,
                )
            } else {
                let n = n_group.unwrap_or(1);
                (n, topk_group.unwrap_or(n))
            }
        };

        let max_position_embeddings = k
            .usize("max_position_embeddings")?
            .unwrap_or(d.max_position_embeddings);
        let (rope_theta, rope_scaling) = resolve_rope(&k, max_position_embeddings)?;

        let q_lora_rank = match k.value("q_lora_rank") {
            // Explicit null: no query compression (absent: the class default, 1536).
            None if map.contains_key("q_lora_rank") => None,
            None => Some(1536),
            Some(_) => k.usize("q_lora_rank")?.filter(|&r| r > 0),
        };

        let cfg = ModelConfig {
            model_type,
            vocab_size: k.usize("vocab_size")?.unwrap_or(d.vocab_size),
            hidden_size: k.usize("hidden_size")?.unwrap_or(d.hidden_size),
            intermediate_size: k.usize("intermediate_size")?.unwrap_or(d.intermediate_size),
            moe_intermediate_size: k
                .usize("moe_intermediate_size")?
                .unwrap_or(d.moe_intermediate_size),
            num_hidden_layers: k.usize("num_hidden_layers")?.unwrap_or(d.num_hidden_layers),
            first_k_dense_replace: k
                .usize("first_k_dense_replace")?
                .unwrap_or(d.first_k_dense_replace),
            moe_layer_freq: k.usize("moe_layer_freq")?.unwrap_or(1),
            num_attention_heads: k
                .usize("num_attention_heads")?
                .unwrap_or(d.num_attention_heads),
            q_lora_rank,
            kv_lora_rank: k.usize("kv_lora_rank")?.unwrap_or(512),
            qk_nope_head_dim: k.usize("qk_nope_head_dim")?.unwrap_or(128),
            qk_rope_head_dim: k.usize("qk_rope_head_dim")?.unwrap_or(64),
            v_head_dim: k.usize("v_head_dim")?.unwrap_or(128),
            n_routed_experts,
            n_shared_experts: k.usize("n_shared_experts")?.unwrap_or(d.n_shared_experts),
            num_experts_per_tok,
            n_group,
            topk_group,
            scoring_func,
            topk_method,
            norm_topk_prob: k.bool("norm_topk_prob")?.unwrap_or(d.norm_topk_prob),
            routed_scaling_factor: k
                .f64("routed_scaling_factor")?
                .unwrap_or(d.routed_scaling_factor),
            rms_norm_eps: k.f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            num_nextn_predict_layers: k
                .usize("num_nextn_predict_layers")?
                .unwrap_or(d.num_nextn_predict_layers),
            quantization: parse_quantization(&k)?,
            bos_token_id: match k.value("bos_token_id") {
                None if map.contains_key("bos_token_id") => None,
                _ => Some(k.u32("bos_token_id")?.unwrap_or(d.bos_token_id)),
            },
            eos_token_ids: parse_eos(&k, d.eos_token_id)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The released DeepSeek-V3 (671B) configuration of spec §1.
    pub fn deepseek_v3() -> Self {
        ModelConfig {
            model_type: ModelType::DeepseekV3,
            vocab_size: 129_280,
            hidden_size: 7168,
            intermediate_size: 18_432,
            moe_intermediate_size: 2048,
            num_hidden_layers: 61,
            first_k_dense_replace: 3,
            moe_layer_freq: 1,
            num_attention_heads: 128,
            q_lora_rank: Some(1536),
            kv_lora_rank: 512,
            qk_nope_head_dim: 128,
            qk_rope_head_dim: 64,
            v_head_dim: 128,
            n_routed_experts: 256,
            n_shared_experts: 1,
            num_experts_per_tok: 8,
            n_group: 8,
            topk_group: 4,
            scoring_func: ScoringFunc::Sigmoid,
            topk_method: TopkMethod::NoauxTc,
            norm_topk_prob: true,
            routed_scaling_factor: 2.5,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: Some(kernels::cases::DEEPSEEK_V3_YARN),
            max_position_embeddings: 163_840,
            num_nextn_predict_layers: 1,
            quantization: Some(Fp8Quantization::default()),
            bos_token_id: Some(0),
            eos_token_ids: vec![1],
        }
    }

    /// Checks every value; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        // First: everything below derives sizes from these numbers.
        limits::check_sizes(self)?;
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("moe_layer_freq", self.moe_layer_freq),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ModelError::config(key, "must be > 0"));
            }
        }
        if self.q_lora_rank == Some(0) {
            return Err(ModelError::config(
                "q_lora_rank",
                "must be > 0 (use null for no query compression)",
            ));
        }
        if self.qk_rope_head_dim % 2 != 0 {
            return Err(ModelError::config(
                "qk_rope_head_dim",
                format!(
                    "must be even (RoPE rotates pairs), got {}",
                    self.qk_rope_head_dim
                ),
            ));
        }
        let layers = 0..self.num_layers_total();
        if layers.clone().any(|l| !self.is_moe_layer(l)) && self.intermediate_size == 0 {
            return Err(ModelError::config(
                "intermediate_size",
                "must be > 0 (the model has dense MLP layers)",
            ));
        }
        if self.n_routed_experts > 0 {
            self.validate_moe()?;
        }
        for (key, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("routed_scaling_factor", self.routed_scaling_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ModelError::config(
                    key,
                    format!("must be finite and > 0, got {v}"),
                ));
            }
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(ModelError::config(
                "rope_theta",
                format!("must be > 1, got {}", self.rope_theta),
            ));
        }
        if let Some(y) = &self.rope_scaling {
            let map = Map::new();
            check_yarn(&Keys::new(&map, "rope_scaling"), y)?;
        }
        self.rope_params()?;
        if let Some(q) = &self.quantization {
            if q.weight_block_size != [FP8_WEIGHT_BLOCK, FP8_WEIGHT_BLOCK] {
                return Err(ModelError::config(
                    "quantization_config.weight_block_size",
                    format!(
                        "{:?} is not supported (only [128, 128])",
                        q.weight_block_size
                    ),
                ));
            }
        }
        if let Some(bos) = self.bos_token_id {
            if bos as usize >= self.vocab_size {
                return Err(ModelError::config(
                    "bos_token_id",
                    format!("{bos} is outside the vocabulary ({})", self.vocab_size),
                ));
            }
        }
        if let Some(&eos) = self
            .eos_token_ids
            .iter()
            .find(|&&e| e as usize >= self.vocab_size)
        {
            return Err(ModelError::config(
                "eos_token_id",
                format!("{eos} is outside the vocabulary ({})", self.vocab_size),
            ));
        }
        Ok(())
    }

    fn validate_moe(&self) -> Result<()> {
        let e = self.n_routed_experts;
        if self.moe_intermediate_size == 0 {
            return Err(ModelError::config(
                "moe_intermediate_size",
                "must be > 0 (the model has MoE layers)",
            ));
        }
        if self.num_experts_per_tok == 0 || self.num_experts_per_tok > e {
            return Err(ModelError::config(
                "num_experts_per_tok",
                format!(
                    "must be in 1..={e} (n_routed_experts), got {}",
                    self.num_experts_per_tok
                ),
            ));
        }
        if self.n_group == 0 || e % self.n_group != 0 {
            return Err(ModelError::config(
                "n_group",
                format!(
                    "n_routed_experts ({e}) must be a multiple of n_group ({})",
                    self.n_group
                ),
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return Err(ModelError::config(
                "topk_group",
                format!(
                    "must be in 1..={} (n_group), got {}",
                    self.n_group, self.topk_group
                ),
            ));
        }
        if self.topk_method.group_limited() {
            let reachable = self.topk_group * (e / self.n_group);
            if self.num_experts_per_tok > reachable {
                return Err(ModelError::config(
                    "num_experts_per_tok",
                    format!(
                        "{} experts cannot be chosen from topk_group ({}) groups of {} experts",
                        self.num_experts_per_tok,
                        self.topk_group,
                        e / self.n_group
                    ),
                ));
            }
        }
        if self.topk_method == TopkMethod::NoauxTc && e / self.n_group < 2 {
            return Err(ModelError::config(
                "n_group",
                format!(
                    "noaux_tc scores a group by its 2 best experts, but n_group ({}) leaves {} \
                     per group",
                    self.n_group,
                    e / self.n_group
                ),
            ));
        }
        let supported = matches!(
            (self.scoring_func, self.topk_method),
            (ScoringFunc::Sigmoid, TopkMethod::NoauxTc)
                | (
                    ScoringFunc::Softmax,
                    TopkMethod::Greedy | TopkMethod::GroupLimitedGreedy
                )
        );
        if !supported {
            return Err(ModelError::config(
                "topk_method",
                format!(
                    "\"{}\" with scoring_func \"{}\" is not supported (noaux_tc goes with \
                     sigmoid, greedy and group_limited_greedy with softmax)",
                    self.topk_method.as_str(),
                    self.scoring_func.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// The config as Hugging Face `config.json` JSON, in the released spelling (`rope_scaling`
    /// with `type`, top-level `rope_theta`). Parsing it gives back `self`.
    pub fn to_json(&self) -> Value {
        let rope_scaling = match &self.rope_scaling {
            Some(y) => json!({
                "type": "yarn",
                "factor": y.factor,
                "original_max_position_embeddings": y.original_max_position_embeddings,
                "beta_fast": y.beta_fast,
                "beta_slow": y.beta_slow,
                "mscale": y.mscale,
                "mscale_all_dim": y.mscale_all_dim,
            }),
            None => Value::Null,
        };
        let mut v = json!({
            "architectures": [self.model_type.architecture()],
            "model_type": self.model_type.as_str(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "first_k_dense_replace": self.first_k_dense_replace,
            "moe_layer_freq": self.moe_layer_freq,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "q_lora_rank": self.q_lora_rank,
            "kv_lora_rank": self.kv_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "scoring_func": self.scoring_func.as_str(),
            "topk_method": self.topk_method.as_str(),
            "norm_topk_prob": self.norm_topk_prob,
            "routed_scaling_factor": self.routed_scaling_factor,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": if self.eos_token_ids.len() == 1 { json!(self.eos_token_ids[0]) } else { json!(self.eos_token_ids) },
            "hidden_act": "silu",
            "attention_bias": false,
            "tie_word_embeddings": false,
            "torch_dtype": "bfloat16",
        });
        if let Some(q) = &self.quantization {
            v["quantization_config"] = json!({
                "quant_method": "fp8",
                "fmt": "e4m3",
                "activation_scheme": "dynamic",
                "weight_block_size": q.weight_block_size,
            });
            if q.ue8m0() {
                v["quantization_config"]["scale_fmt"] = json!("ue8m0");
            }
        }
        v
    }

    /// [`to_json`](Self::to_json) as pretty-printed text.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).expect("a JSON value always serializes")
    }

    /// d_nope + d_rope: the width of one query / key head.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Rows of `q_b_proj` / `q_proj`: H * (d_nope + d_rope).
    pub fn q_proj_dim(&self) -> usize {
        self.num_attention_heads * self.qk_head_dim()
    }

    /// Rows of `kv_a_proj_with_mqa` and the width of one cached token per layer: d_c + d_rope.
    pub fn kv_a_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Rows of `kv_b_proj`: H * (d_nope + d_v).
    pub fn kv_b_dim(&self) -> usize {
        self.num_attention_heads * (self.qk_nope_head_dim + self.v_head_dim)
    }

    /// Columns of `o_proj`: H * d_v.
    pub fn o_proj_in_dim(&self) -> usize {
        self.num_attention_heads * self.v_head_dim
    }

    /// Width of the shared expert(s): n_shared_experts * moe_intermediate_size.
    pub fn shared_expert_dim(&self) -> usize {
        self.n_shared_experts * self.moe_intermediate_size
    }

    /// Experts per routing group (E / n_group).
    pub fn experts_per_group(&self) -> usize {
        self.n_routed_experts / self.n_group.max(1)
    }

    /// MTP modules the config announces.
    pub fn num_mtp_layers(&self) -> usize {
        self.num_nextn_predict_layers
    }

    /// Main-model layers plus MTP layers.
    pub fn num_layers_total(&self) -> usize {
        self.num_hidden_layers + self.num_nextn_predict_layers
    }

    /// Layer id of MTP module `j` (num_hidden_layers + j).
    pub fn mtp_layer_id(&self, j: usize) -> usize {
        self.num_hidden_layers + j
    }

    pub fn is_mtp_layer(&self, layer: usize) -> bool {
        layer >= self.num_hidden_layers
    }

    /// Whether layer `layer` (MTP layers included) has a MoE block rather than the dense MLP.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.n_routed_experts > 0
            && layer >= self.first_k_dense_replace
            && layer % self.moe_layer_freq.max(1) == 0
    }

    /// Whether FP8 scales are powers of two (`quantization_config.scale_fmt: "ue8m0"`): weight
    /// scales are checked to be, and activation scales are rounded up to one.
    pub fn ue8m0_scales(&self) -> bool {
        self.quantization.as_ref().is_some_and(|q| q.ue8m0())
    }

    /// Whether the router has `e_score_correction_bias` (noaux_tc).
    pub fn has_score_bias(&self) -> bool {
        self.n_routed_experts > 0 && self.topk_method == TopkMethod::NoauxTc
    }

    /// RoPE parameters for the kernels (spec §3.2).
    pub fn rope_params(&self) -> Result<RopeParams> {
        RopeParams::new(
            self.rope_theta,
            self.qk_rope_head_dim,
            self.rope_scaling.clone(),
        )
        .map_err(|e| ModelError::config("rope_scaling", e.to_string()))
    }

    /// softmax_scale = (d_nope + d_rope)^-0.5 * m^2 (spec §3.1).
    pub fn softmax_scale(&self) -> f64 {
        let m = match &self.rope_scaling {
            Some(y) if y.mscale_all_dim != 0.0 && y.factor > 1.0 => {
                0.1 * y.mscale_all_dim * y.factor.ln() + 1.0
            }
            _ => 1.0,
        };
        (self.qk_head_dim() as f64).powf(-0.5) * m * m
    }

    /// Bytes of the BF16 KV cache per token per layer: (d_c + d_rope) * 2 (1152 for V3).
    pub fn kv_bytes_per_token_per_layer(&self) -> usize {
        self.kv_a_dim() * 2
    }

    /// Bytes of the FP8 KV cache per token per layer: d_c e4m3 codes, one f32 scale per 128
    /// latent channels, d_rope BF16 values (656 for V3).
    pub fn kv_bytes_per_token_per_layer_fp8(&self) -> usize {
        self.kv_lora_rank + 4 * self.kv_lora_rank.div_ceil(128) + 2 * self.qk_rope_head_dim
    }

    /// Bytes of the BF16 KV cache per token over the main model's layers (MTP layers, which keep
    /// their own cache, not included).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.kv_bytes_per_token_per_layer() * self.num_hidden_layers
    }

    /// Parameter counts from the tensor shapes (see [`ParamCounts`]).
    pub fn param_counts(&self) -> ParamCounts {
        use crate::checkpoint::{expected_tensors, Fp8Policy, TensorRole};
        let mut c = ParamCounts {
            total: 0,
            activated: 0,
            mtp_total: 0,
            mtp_activated: 0,
        };
        let (k, e) = (
            self.num_experts_per_tok as u64,
            self.n_routed_experts.max(1) as u64,
        );
        for spec in expected_tensors(self, Fp8Policy::Bf16) {
            let n = spec.numel() as u64;
            // Routed experts: a token visits K of E (all experts of a layer have one size).
            let activated = if spec.role == TensorRole::Embedding {
                0
            } else if spec.name.contains(".mlp.experts.") {
                n * k
            } else {
                n * e
            };
            let is_mtp = spec.layer.is_some_and(|l| self.is_mtp_layer(l));
            if is_mtp {
                c.mtp_total += n;
                c.mtp_activated += activated;
            } else {
                c.total += n;
                c.activated += activated;
            }
        }
        c.activated /= e;
        c.mtp_activated /= e;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_json() -> Value {
        ModelConfig::deepseek_v3().to_json()
    }

    fn key_of(v: Value) -> String {
        ModelConfig::from_json(&v)
            .expect_err("should be rejected")
            .config_key()
            .expect("a config error")
            .to_string()
    }

    #[test]
    fn round_trips_v3() {
        let cfg = ModelConfig::deepseek_v3();
        cfg.validate().unwrap();
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        assert_eq!(cfg.kv_bytes_per_token_per_layer(), 1152);
        assert_eq!(cfg.kv_bytes_per_token_per_layer_fp8(), 656);
        assert_eq!(cfg.q_proj_dim(), 24_576);
        assert_eq!(cfg.kv_b_dim(), 32_768);
        assert_eq!(cfg.o_proj_in_dim(), 16_384);
        assert_eq!(cfg.kv_a_dim(), 576);
        assert!(!cfg.is_moe_layer(2) && cfg.is_moe_layer(3) && cfg.is_moe_layer(61));
        let m = 0.1 * 40f64.ln() + 1.0;
        assert!((cfg.softmax_scale() - m * m / 192f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn v3_parameter_counts_match_the_report() {
        // DeepSeek-V3: 671B total, 37B activated; the MTP module adds 14B (11.5B unique).
        let c = ModelConfig::deepseek_v3().param_counts();
        assert!((670e9..672e9).contains(&(c.total as f64)), "{c:?}");
        assert!((36.5e9..37.5e9).contains(&(c.activated as f64)), "{c:?}");
        assert!((13e9..14e9).contains(&(c.mtp_total as f64)), "{c:?}");
        // HF's 685B = main model + MTP module.
        assert!(
            (684e9..686e9).contains(&((c.total + c.mtp_total) as f64)),
            "{c:?}"
        );
    }

    #[test]
    fn empty_v3_config_takes_v3_defaults() {
        let cfg = ModelConfig::from_json_str(r#"{"model_type": "deepseek_v3"}"#).unwrap();
        let mut want = ModelConfig::deepseek_v3();
        want.rope_scaling = None;
        want.quantization = None;
        want.max_position_embeddings = 4096;
        assert_eq!(cfg, want);
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let mut v = v3_json();
        v["n_group"] = json!(3);
        assert_eq!(key_of(v), "n_group");
        let mut v = v3_json();
        v["topk_group"] = json!(9);
        assert_eq!(key_of(v), "topk_group");
        let mut v = v3_json();
        v["num_experts_per_tok"] = json!(130);
        assert_eq!(key_of(v), "num_experts_per_tok");
        let mut v = v3_json();
        v["kv_lora_rank"] = json!(0);
        assert_eq!(key_of(v), "kv_lora_rank");
        let mut v = v3_json();
        v["qk_rope_head_dim"] = json!(63);
        assert_eq!(key_of(v), "qk_rope_head_dim");
        let mut v = v3_json();
        v["hidden_size"] = json!("big");
        assert_eq!(key_of(v), "hidden_size");
        let mut v = v3_json();
        v["hidden_size"] = json!(-1);
        assert_eq!(key_of(v), "hidden_size");
        let mut v = v3_json();
        v["model_type"] = json!("llama");
        assert_eq!(key_of(v), "model_type");
        let mut v = v3_json();
        v["scoring_func"] = json!("softmax");
        assert_eq!(key_of(v), "topk_method");
        let mut v = v3_json();
        v["quantization_config"]["quant_method"] = json!("awq");
        assert_eq!(key_of(v), "quantization_config.quant_method");
        let mut v = v3_json();
        v["quantization_config"]["weight_block_size"] = json!([64, 64]);
        assert_eq!(key_of(v), "quantization_config.weight_block_size");
        let mut v = v3_json();
        v["quantization_config"]["fmt"] = json!("e5m2");
        assert_eq!(key_of(v), "quantization_config.fmt");
        let mut v = v3_json();
        v["quantization_config"]["activation_scheme"] = json!("static");
        assert_eq!(key_of(v), "quantization_config.activation_scheme");
        let mut v = v3_json();
        v["rope_scaling"]["factor"] = json!(0.5);
        assert_eq!(key_of(v), "rope_scaling.factor");
        let mut v = v3_json();
        v["rope_scaling"]["type"] = json!("linear");
        assert_eq!(key_of(v), "rope_scaling.type");
        let mut v = v3_json();
        v["rope_scaling"]["rope_type"] = json!("dynamic");
        assert_eq!(key_of(v), "rope_scaling.rope_type");
        let mut v = v3_json();
        v["rope_theta"] = json!(1.0);
        assert_eq!(key_of(v), "rope_theta");
        let mut v = v3_json();
        v["tie_word_embeddings"] = json!(true);
        assert_eq!(key_of(v), "tie_word_embeddings");
        let mut v = v3_json();
        v["torch_dtype"] = json!("float64");
        assert_eq!(key_of(v), "torch_dtype");
        let mut v = v3_json();
        v["dtype"] = json!("float16");
        assert_eq!(key_of(v), "dtype");
        let mut v = v3_json();
        v["architectures"] = json!(["DeepseekV3ForSequenceClassification"]);
        assert_eq!(key_of(v), "architectures");
        let mut v = v3_json();
        v["quantization_config"]["scale_fmt"] = json!("e8m0fnu");
        assert_eq!(key_of(v), "quantization_config.scale_fmt");
        let mut v = v3_json();
        v["eos_token_id"] = json!(1_000_000);
        assert_eq!(key_of(v), "eos_token_id");
        let mut v = v3_json();
        v["rms_norm_eps"] = json!(0.0);
        assert_eq!(key_of(v), "rms_norm_eps");
        assert_eq!(key_of(json!([1, 2])), "config.json");
        assert_eq!(
            ModelConfig::from_json_str("{ not json")
                .unwrap_err()
                .config_key(),
            Some("config.json")
        );
    }

    #[test]
    fn accepts_both_rope_spellings() {
        let released = ModelConfig::deepseek_v3();
        let mut v = v3_json();
        let scaling = v["rope_scaling"].take();
        v.as_object_mut().unwrap().remove("rope_theta");
        let mut params = scaling.clone();
        params.as_object_mut().unwrap().remove("type");
        params["rope_type"] = json!("yarn");
        params["rope_theta"] = json!(10000.0);
        v["rope_parameters"] = params.clone();
        assert_eq!(ModelConfig::from_json(&v).unwrap(), released);

        // Both spellings at once, consistent: fine.
        let mut both = v3_json();
        both["rope_parameters"] = params.clone();
        assert_eq!(ModelConfig::from_json(&both).unwrap(), released);

        // Contradictions name the rope_parameters key.
        let mut bad = both.clone();
        bad["rope_parameters"]["factor"] = json!(8);
        assert_eq!(key_of(bad), "rope_parameters.factor");
        let mut bad = both.clone();
        bad["rope_parameters"]["rope_theta"] = json!(50000);
        assert_eq!(key_of(bad), "rope_parameters.rope_theta");
        let mut bad = both.clone();
        bad["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 10000});
        assert_eq!(key_of(bad), "rope_parameters.rope_type");
        let mut bad = v3_json();
        bad["rope_scaling"]["rope_type"] = json!("default");
        assert_eq!(key_of(bad), "rope_scaling.rope_type");

        // transformers-5 default RoPE.
        let mut plain = v3_json();
        plain.as_object_mut().unwrap().remove("rope_scaling");
        plain.as_object_mut().unwrap().remove("rope_theta");
        plain["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 50000.0});
        let cfg = ModelConfig::from_json(&plain).unwrap();
        assert_eq!(cfg.rope_scaling, None);
        assert_eq!(cfg.rope_theta, 50000.0);

        // attention_factor equal to the implied value is accepted, any other is not.
        let mut af = both.clone();
        af["rope_parameters"]["attention_factor"] = json!(1.0);
        assert_eq!(ModelConfig::from_json(&af).unwrap(), released);
        af["rope_parameters"]["attention_factor"] = json!(1.3);
        assert_eq!(key_of(af), "rope_parameters.attention_factor");
    }

    #[test]
    fn parses_deepseek_v2_lite() {
        let text = r#"{
          "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": false,
          "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001,
          "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
          "initializer_range": 0.02, "intermediate_size": 10944, "kv_lora_rank": 512,
          "max_position_embeddings": 163840, "model_type": "deepseek_v2",
          "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1,
          "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": false,
          "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
          "num_key_value_heads": 16, "pretraining_tp": 1, "q_lora_rank": null,
          "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
          "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
            "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"},
          "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
          "seq_aux": true, "tie_word_embeddings": false, "topk_group": 1,
          "topk_method": "greedy", "torch_dtype": "bfloat16", "use_cache": true,
          "v_head_dim": 128, "vocab_size": 102400
        }"#;
        let cfg = ModelConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.model_type, ModelType::DeepseekV2);
        assert_eq!(cfg.q_lora_rank, None);
        assert_eq!(cfg.scoring_func, ScoringFunc::Softmax);
        assert_eq!(cfg.topk_method, TopkMethod::Greedy);
        assert_eq!(cfg.num_nextn_predict_layers, 0);
        assert!(!cfg.has_score_bias());
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        // DeepSeek-V2-Lite: 15.7B total, 2.4B activated.
        let c = cfg.param_counts();
        assert!((15.5e9..15.9e9).contains(&(c.total as f64)), "{c:?}");
        assert!((2.35e9..2.5e9).contains(&(c.activated as f64)), "{c:?}");

        // q_lora_rank 0 also means no compression.
        let mut v: Value = serde_json::from_str(text).unwrap();
        v["q_lora_rank"] = json!(0);
        assert_eq!(ModelConfig::from_json(&v).unwrap().q_lora_rank, None);
        // group_limited_greedy without n_group is an error naming n_group.
        v["topk_method"] = json!("group_limited_greedy");
        v.as_object_mut().unwrap().remove("n_group");
        assert_eq!(key_of(v), "n_group");
    }

    /// The released DeepSeek-V3 config.json (DeepSeek-R1's has the same keys and values).
    const V3_RELEASED: &str = r#"{
      "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false,
      "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
      "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1,
      "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
      "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
      "max_position_embeddings": 163840, "model_type": "deepseek_v3",
      "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8,
      "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": true,
      "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
      "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
      "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
        "quant_method": "fp8", "weight_block_size": [128, 128]},
      "rms_norm_eps": 1e-06,
      "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
        "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
      "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
      "seq_aux": true, "tie_word_embeddings": false, "topk_group": 4,
      "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "transformers_version": "4.33.1",
      "use_cache": true, "v_head_dim": 128, "vocab_size": 129280
    }"#;

    #[test]
    fn parses_released_v3_and_r1() {
        let cfg = ModelConfig::from_json_str(V3_RELEASED).unwrap();
        assert_eq!(cfg, ModelConfig::deepseek_v3());
        // The shared copy of the released file, when this checkout has it.
        let shared = Path::new("/work/shared/configs/deepseek-v3.config.json");
        if shared.is_file() {
            assert_eq!(ModelConfig::from_file(shared).unwrap(), cfg);
        }
    }

    #[test]
    fn parses_v31_with_ue8m0_scales() {
        let mut v: Value = serde_json::from_str(V3_RELEASED).unwrap();
        v["quantization_config"]["scale_fmt"] = json!("ue8m0");
        let cfg = ModelConfig::from_json(&v).unwrap();
        let q = cfg.quantization.as_ref().unwrap();
        assert_eq!(q.scale_fmt, ScaleFmt::Ue8m0);
        assert!(q.ue8m0());
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        // Null means f32 scales.
        v["quantization_config"]["scale_fmt"] = Value::Null;
        assert!(!ModelConfig::from_json(&v)
            .unwrap()
            .quantization
            .unwrap()
            .ue8m0());
    }

    #[test]
    fn parses_kimi_k2() {
        let text = r#"{
          "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false,
          "attention_dropout": 0.0,
          "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
            "AutoModel": "modeling_deepseek.DeepseekV3Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
          "aux_loss_alpha": 0.001, "bos_token_id": 163584, "eos_token_id": 163585,
          "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 7168,
          "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
          "max_position_embeddings": 131072, "model_type": "kimi_k2",
          "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 1,
          "n_routed_experts": 384, "n_shared_experts": 1, "norm_topk_prob": true,
          "num_attention_heads": 64, "num_experts_per_tok": 8, "num_hidden_layers": 61,
          "num_key_value_heads": 64, "num_nextn_predict_layers": 0, "pretraining_tp": 1,
          "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
          "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
            "quant_method": "fp8", "weight_block_size": [128, 128]},
          "rms_norm_eps": 1e-06,
          "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
          "rope_theta": 50000.0, "routed_scaling_factor": 2.827, "scoring_func": "sigmoid",
          "seq_aux": true, "tie_word_embeddings": false, "topk_group": 1,
          "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
          "transformers_version": "4.48.3", "use_cache": true, "v_head_dim": 128,
          "vocab_size": 163840
        }"#;
        let cfg = ModelConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.model_type, ModelType::KimiK2);
        assert_eq!(cfg.model_type.architecture(), "DeepseekV3ForCausalLM");
        assert_eq!(
            (cfg.n_routed_experts, cfg.n_group, cfg.topk_group),
            (384, 1, 1)
        );
        assert_eq!(cfg.num_attention_heads, 64);
        assert_eq!(cfg.num_nextn_predict_layers, 0);
        assert_eq!(cfg.routed_scaling_factor, 2.827);
        assert_eq!(cfg.rope_theta, 50000.0);
        let y = cfg.rope_scaling.as_ref().unwrap();
        assert_eq!((y.factor, y.beta_fast, y.beta_slow), (32.0, 1.0, 1.0));
        assert_eq!(y.original_max_position_embeddings, 4096);
        assert_eq!(cfg.bos_token_id, Some(163_584));
        assert!(!cfg.quantization.as_ref().unwrap().ue8m0());
        cfg.rope_params().unwrap();
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        // Kimi-K2: 1.04T total, 32B activated (1.026T and 31.7B by this count).
        let c = cfg.param_counts();
        assert!((1.0e12..1.05e12).contains(&(c.total as f64)), "{c:?}");
        assert!((31.5e9..33e9).contains(&(c.activated as f64)), "{c:?}");
        // The architecture must still be the V3 causal LM.
        let mut v: Value = serde_json::from_str(text).unwrap();
        v["architectures"] = json!(["DeepseekV2ForCausalLM"]);
        assert_eq!(key_of(v), "architectures");
    }

    #[test]
    fn parses_moonlight() {
        let text = r#"{
          "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false,
          "attention_dropout": 0.0,
          "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
            "AutoModel": "modeling_deepseek.DeepseekV3Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
          "aux_loss_alpha": 0.001, "bos_token_id": 163584, "eos_token_id": 163585,
          "ep_size": 1, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 2048,
          "initializer_range": 0.02, "intermediate_size": 11264, "kv_lora_rank": 512,
          "max_position_embeddings": 8192, "model_type": "deepseek_v3",
          "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1,
          "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": true,
          "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27,
          "num_key_value_heads": 16, "num_nextn_predict_layers": 0, "pretraining_tp": 1,
          "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
          "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 50000.0,
          "routed_scaling_factor": 2.446, "scoring_func": "sigmoid", "seq_aux": true,
          "tie_word_embeddings": false, "topk_group": 1, "topk_method": "noaux_tc",
          "torch_dtype": "bfloat16", "transformers_version": "4.48.0", "use_cache": true,
          "v_head_dim": 128, "vocab_size": 163840
        }"#;
        let cfg = ModelConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.model_type, ModelType::DeepseekV3);
        assert_eq!(cfg.q_lora_rank, None);
        assert_eq!(cfg.quantization, None);
        assert_eq!(cfg.rope_scaling, None);
        assert_eq!(cfg.rope_theta, 50000.0);
        assert_eq!((cfg.n_routed_experts, cfg.num_experts_per_tok), (64, 6));
        assert_eq!(
            (cfg.n_group, cfg.topk_group, cfg.n_shared_experts),
            (1, 1, 2)
        );
        assert!(cfg.has_score_bias());
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
        // Moonlight-16B-A3B: 16B total, 3B activated.
        let c = cfg.param_counts();
        assert!((15.5e9..16.5e9).contains(&(c.total as f64)), "{c:?}");
        assert!((2.5e9..3.5e9).contains(&(c.activated as f64)), "{c:?}");
    }

    /// What transformers 5 `save_pretrained` writes for a DeepSeek-V3 model in float32 (a V3
    /// config without the DeepSeek-only keys, `dtype`, `rope_parameters`, `head_dim`, ...).
    #[test]
    fn parses_a_transformers5_saved_config() {
        let text = r#"{
          "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false,
          "attention_dropout": 0.0, "bos_token_id": 0, "dtype": "float32", "eos_token_id": 1,
          "first_k_dense_replace": 3, "head_dim": 64, "hidden_act": "silu",
          "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
          "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
          "moe_intermediate_size": 2048, "n_group": 8, "n_routed_experts": 256,
          "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128,
          "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
          "num_nextn_predict_layers": 1, "output_router_logits": false, "pad_token_id": null,
          "pretraining_tp": 1, "q_lora_rank": 1536, "qk_head_dim": 192,
          "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
          "rope_interleave": true,
          "rope_parameters": {"beta_fast": 32, "beta_slow": 1, "factor": 40.0, "mscale": 1.0,
            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
            "rope_theta": 10000.0, "rope_type": "yarn"},
          "routed_scaling_factor": 2.5, "tie_word_embeddings": false, "topk_group": 4,
          "transformers_version": "5.23.0", "use_cache": true, "v_head_dim": 128,
          "vocab_size": 129280
        }"#;
        let mut want = ModelConfig::deepseek_v3();
        want.quantization = None;
        assert_eq!(ModelConfig::from_json_str(text).unwrap(), want);
        let mut v: Value = serde_json::from_str(text).unwrap();
        for dtype in SUPPORTED_DTYPES {
            v["dtype"] = json!(dtype);
            assert_eq!(ModelConfig::from_json(&v).unwrap(), want, "{dtype}");
            v["torch_dtype"] = json!(dtype);
            assert_eq!(ModelConfig::from_json(&v).unwrap(), want, "{dtype}");
            v.as_object_mut().unwrap().remove("torch_dtype");
        }
        v["dtype"] = json!("int8");
        assert_eq!(key_of(v), "dtype");
    }

    #[test]
    fn dense_v2_needs_no_expert_keys() {
        let cfg = ModelConfig::from_json_str(
            r#"{"model_type": "deepseek_v2", "hidden_size": 256, "num_hidden_layers": 2,
                "intermediate_size": 512, "vocab_size": 1000, "bos_token_id": null,
                "eos_token_id": [1, 2]}"#,
        )
        .unwrap();
        assert_eq!(cfg.n_routed_experts, 0);
        assert!(!cfg.is_moe_layer(1));
        assert_eq!(cfg.bos_token_id, None);
        assert_eq!(cfg.eos_token_ids, vec![1, 2]);
        assert_eq!(ModelConfig::from_json(&cfg.to_json()).unwrap(), cfg);
    }
}
