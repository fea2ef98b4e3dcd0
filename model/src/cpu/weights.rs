//! The weights of one decoder layer (main or MTP) prepared for the CPU backend.

use std::ops::Range;

use moe_dispatch::reference::routing::{RoutingConfig, Scoring, TopkMethod};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, LinearWeight};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

use super::attention::transpose_w_uv;
use super::forward::{mla_dims, Context, ExpertRows};
use super::linear::{round_bf16, Linear};
use super::Precision;

/// Loads `name` as a linear layer for `precision`.
pub fn linear(ckpt: &Checkpoint, name: &str, precision: Precision) -> Result<Linear> {
    let ue8m0 = ckpt.config().ue8m0_scales();
    Linear::new(
        name,
        linear_weight(ckpt, name, precision)?,
        precision,
        ue8m0,
    )
}

/// Linear weight `name` in the form `precision` computes with. In `fp8`, a weight that the
/// released checkpoints store in FP8 (spec §2.2) but this checkpoint stores as BF16, F16 or F32
/// is quantized here per 128x128 block by the rule the released files were made with (spec
/// §4.3, [`LinearWeight::into_fp8`]): the same codes and scales `dsv3 convert --to fp8` writes,
/// so fp8 on a BF16 checkpoint computes what it computes on the converted FP8 checkpoint (and
/// what the GPU computes). `exact` keeps the stored values; the router, `eh_proj` and the heads
/// stay unquantized in both.
pub fn linear_weight(ckpt: &Checkpoint, name: &str, precision: Precision) -> Result<LinearWeight> {
    let w = ckpt.linear(name)?;
    Ok(match w {
        LinearWeight::Bf16 { .. } | LinearWeight::F32 { .. }
            if precision == Precision::Fp8 && ckpt.is_fp8_in_release(name) =>
        {
            LinearWeight::Fp8(w.into_fp8())
        }
        w => w,
    })
}

/// A norm (or any small vector) in f32.
pub fn vector(ckpt: &Checkpoint, name: &str) -> Result<Vec<f32>> {
    ckpt.to_f32(name)
}

/// `down(silu(gate(x)) * up(x))`: the dense MLP, every routed expert and the shared experts.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    fn load(ckpt: &Checkpoint, prefix: &str, precision: Precision) -> Result<Self> {
        Ok(Mlp {
            gate: linear(ckpt, &format!("{prefix}.gate_proj.weight"), precision)?,
            up: linear(ckpt, &format!("{prefix}.up_proj.weight"), precision)?,
            down: linear(ckpt, &format!("{prefix}.down_proj.weight"), precision)?,
        })
    }
}

/// The query path: with `q_lora_rank` a down projection, its norm and an up projection, else one
/// `q_proj`.
#[derive(Clone, Debug)]
pub enum QueryProj {
    Lora {
        q_a: Linear,
        q_a_norm: Vec<f32>,
        q_b: Linear,
    },
    Direct(Linear),
}

/// The MLA weights of one layer. `kv_b` is also kept dequantized in f32 because the absorbed form
/// reads its per-head blocks W_UK[h] and W_UV[h] directly.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q: QueryProj,
    pub kv_a: Linear,
    pub kv_a_norm: Vec<f32>,
    pub kv_b_f32: Vec<f32>,
    /// W_UV[h] transposed per head, `[H, d_c, d_v]` (see [`transpose_w_uv`]).
    pub w_uv_t: Vec<f32>,
    pub o: Linear,
}

/// The FFN of a layer: dense below `first_k_dense_replace`, MoE above.
#[derive(Clone, Debug)]
pub enum Ffn {
    /// Boxed like `Moe`: an FP8 `Linear` carries its UE8M0 flag, which makes three of them too
    /// large for an unboxed variant.
    Dense(Box<Mlp>),
    Moe(Box<Moe>),
}

/// Router and experts of an MoE layer.
#[derive(Clone, Debug)]
pub struct Moe {
    /// `mlp.gate.weight` [E, hidden] (BF16, F16 or F32 in the checkpoint), multiplied in f32.
    pub gate: Linear,
    /// `e_score_correction_bias` (noaux_tc only).
    pub bias: Option<Vec<f32>>,
    pub routing: RoutingConfig,
    /// The routed experts this process holds: all of them, or one rank's share.
    pub experts: LocalExperts,
    pub shared: Option<Mlp>,
}

/// The routed experts `start..start + mlps.len()` of one MoE layer (global ids).
#[derive(Clone, Debug)]
pub struct LocalExperts {
    pub start: usize,
    pub mlps: Vec<Mlp>,
}

impl LocalExperts {
    pub fn len(&self) -> usize {
        self.mlps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mlps.is_empty()
    }

    /// Their global ids.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.mlps.len()
    }

    /// Runs local expert `i` on `inputs[i]` for every `i` in parallel (an expert without rows
    /// gives an empty output).
    pub fn run(&self, ctx: &Context, inputs: &[ExpertRows]) -> Result<Vec<Vec<f32>>> {
        if inputs.len() != self.mlps.len() {
            return Err(ModelError::request(format!(
                "{} expert inputs for {} local experts",
                inputs.len(),
                self.mlps.len()
            )));
        }
        inputs
            .par_iter()
            .zip(&self.mlps)
            .map(|(rows, expert)| {
                let empty = match rows {
                    ExpertRows::F32(x) => x.is_empty(),
                    ExpertRows::Fp8(a) => a.tokens == 0,
                };
                if empty {
                    Ok(Vec::new())
                } else {
                    expert.forward_rows(ctx, rows)
                }
            })
            .collect()
    }
}

/// One decoder layer.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_norm: Vec<f32>,
    pub post_attention_norm: Vec<f32>,
    pub attention: Attention,
    pub ffn: Ffn,
}

/// The routing keys of `cfg` in the moe-dispatch crate's terms.
pub fn routing_config(cfg: &ModelConfig) -> Result<RoutingConfig> {
    let scoring = Scoring::from_config(cfg.scoring_func.as_str())
        .map_err(|e| ModelError::config("scoring_func", e.to_string()))?;
    let method = TopkMethod::from_config(cfg.topk_method.as_str())
        .map_err(|e| ModelError::config("topk_method", e.to_string()))?;
    let routing = RoutingConfig {
        num_experts: cfg.n_routed_experts,
        top_k: cfg.num_experts_per_tok,
        n_group: cfg.n_group.max(1),
        topk_group: cfg.topk_group.max(1),
        scoring,
        method,
        norm_topk_prob: cfg.norm_topk_prob,
        routed_scaling_factor: cfg.routed_scaling_factor as f32,
    };
    routing
        .validate()
        .map_err(|e| ModelError::config("n_routed_experts", e.to_string()))?;
    Ok(routing)
}

impl DecoderLayer {
    /// Loads layer `l` (a main layer or an MTP layer id) with the routed experts in `experts`
    /// (global ids; `0..n_routed_experts` for all): an expert-parallel rank reads only its own
    /// experts' bytes.
    pub fn load(
        ckpt: &Checkpoint,
        l: usize,
        precision: Precision,
        experts: Range<usize>,
    ) -> Result<Self> {
        let cfg = ckpt.config();
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let q = match cfg.q_lora_rank {
            Some(_) => QueryProj::Lora {
                q_a: linear(ckpt, &format!("{a}.q_a_proj.weight"), precision)?,
                q_a_norm: vector(ckpt, &format!("{a}.q_a_layernorm.weight"))?,
                q_b: linear(ckpt, &format!("{a}.q_b_proj.weight"), precision)?,
            },
            None => QueryProj::Direct(linear(ckpt, &format!("{a}.q_proj.weight"), precision)?),
        };
        let mut kv_b_f32 =
            linear_weight(ckpt, &format!("{a}.kv_b_proj.weight"), precision)?.to_f32();
        if precision == Precision::Fp8 {
            // The CUDA backend keeps W_UK / W_UV in BF16 (spec §3.1); fp8 computes what it does.
            // Not negligible: the absorbed output is re-quantized to e4m3 before o_proj, which
            // turns the 2^-9 weight rounding into code flips (~1e-2 relative per layer).
            kv_b_f32.iter_mut().for_each(|v| *v = round_bf16(*v));
        }
        let attention = Attention {
            q,
            kv_a: linear(ckpt, &format!("{a}.kv_a_proj_with_mqa.weight"), precision)?,
            kv_a_norm: vector(ckpt, &format!("{a}.kv_a_layernorm.weight"))?,
            w_uv_t: transpose_w_uv(&mla_dims(cfg), &kv_b_f32),
            kv_b_f32,
            o: linear(ckpt, &format!("{a}.o_proj.weight"), precision)?,
        };
        let m = format!("{p}.mlp");
        let ffn = if cfg.is_moe_layer(l) {
            let gate_name = format!("{m}.gate.weight");
            let gate = ckpt.to_f32(&gate_name)?;
            let bias = if cfg.has_score_bias() {
                Some(vector(ckpt, &format!("{m}.gate.e_score_correction_bias"))?)
            } else {
                None
            };
            if experts.end > cfg.n_routed_experts || experts.is_empty() {
                return Err(ModelError::request(format!(
                    "layer {l}: expert range {experts:?} is not a non-empty part of the {} \
                     routed experts",
                    cfg.n_routed_experts
                )));
            }
            let experts = LocalExperts {
                start: experts.start,
                mlps: experts
                    .map(|e| Mlp::load(ckpt, &format!("{m}.experts.{e}"), precision))
                    .collect::<Result<Vec<_>>>()?,
            };
            let shared = if cfg.n_shared_experts > 0 {
                Some(Mlp::load(ckpt, &format!("{m}.shared_experts"), precision)?)
            } else {
                None
            };
            Ffn::Moe(Box::new(Moe {
                gate: Linear::from_f32(gate, cfg.n_routed_experts, cfg.hidden_size),
                bias,
                routing: routing_config(cfg)?,
                experts,
                shared,
            }))
        } else {
            Ffn::Dense(Box::new(Mlp::load(ckpt, &m, precision)?))
        };
        Ok(DecoderLayer {
            input_norm: vector(ckpt, &format!("{p}.input_layernorm.weight"))?,
            post_attention_norm: vector(ckpt, &format!("{p}.post_attention_layernorm.weight"))?,
            attention,
            ffn,
        })
    }
}
