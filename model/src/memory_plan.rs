//! Per-rank memory plan and all-to-all traffic of an expert-parallel deployment (issue 16): what
//! `dsv3 info --world-size N --gpu-memory GiB` prints.
//!
//! # The deployment
//!
//! DeepSeek's decode deployment as SGLang runs it (data-parallel attention + expert parallelism):
//! N ranks, one GPU each. Every rank holds a full copy of everything except the routed experts:
//! MLA attention of every layer, the dense layers' MLPs, the shared experts and routers, the
//! embedding, final norm and LM head, and the MTP layer(s). The routed experts are split:
//! rank r holds experts `r * E / N .. (r + 1) * E / N` of every MoE layer, the MTP layer's
//! included (the placement of `moe_dispatch::ep::ExpertPlacement`). Each rank attends over
//! its own sequences and keeps their KV cache; a token's hidden row travels to the ranks that own
//! its experts (dispatch) and the expert outputs travel back (combine).
//!
//! # Weights
//!
//! Bytes as the checkpoint stores them: the tensor list of [`expected_tensors`] under
//! [`Fp8Policy::for_config`], the same list [`ModelConfig::param_counts`] counts, so the two
//! cannot drift apart. With `quantization_config`, every attention, dense-MLP and expert linear
//! weight is e4m3 (1 byte per parameter) plus one f32 scale per 128x128 block; norms, embedding,
//! LM head, router gate and `eh_proj` are BF16, `e_score_correction_bias` f32. Without it,
//! everything is BF16 (the bias f32). The MTP layer's own `embed_tokens` and `shared_head.head`
//! are counted as stored (this engine loads them; aliasing them to the main model's would save
//! 2 x vocab x hidden x 2 bytes, 3.5 GiB for V3). The CUDA backend keeps `kv_b_proj` as BF16
//! `W_UK` / `W_UV` for weight absorption, which this plan, counting the checkpoint, does not
//! (V3: about 1 GiB more per rank).
//!
//! # What is left for the KV cache
//!
//! `gpu_memory - weights - workspace`, where the workspace is [`workspace_bytes`], a
//! conservative reserve for everything that is neither weights nor KV cache (see there), divided
//! by [`kv_bytes_per_token`].

use serde_json::{json, Value};

use crate::checkpoint::{expected_tensors, Fp8Policy, TensorSpec};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// 2^30 bytes.
pub const GIB: u64 = 1 << 30;

/// Bytes as GiB, for printing.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// `--gpu-memory` (GiB, 2^30 bytes) as bytes; a non-finite or non-positive value is an error.
pub fn gpu_memory_bytes(gib: f64) -> Result<u64> {
    // 2^20 GiB (1 PiB) keeps the product far inside u64.
    if !gib.is_finite() || gib <= 0.0 || gib > (1u64 << 20) as f64 {
        return Err(ModelError::request(format!(
            "--gpu-memory must be a positive number of GiB (2^30 bytes) up to 1048576, got {gib}"
        )));
    }
    Ok((gib * GIB as f64) as u64)
}

/// Checks that `world_size` ranks can share the routed experts evenly (and that it is >= 1).
/// A model without routed experts runs on any number of ranks (every rank a full replica).
pub fn check_world_size(cfg: &ModelConfig, world_size: usize) -> Result<()> {
    if world_size == 0 {
        return Err(ModelError::request("--world-size must be >= 1"));
    }
    let e = cfg.n_routed_experts;
    if e > 0 && e % world_size != 0 {
        return Err(ModelError::request(format!(
            "{e} routed experts cannot be split evenly over {world_size} ranks \
             (--world-size must divide n_routed_experts)"
        )));
    }
    Ok(())
}

/// The parts of the model the plan reports, each a row of the per-rank table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightKind {
    /// MLA attention of every main layer: the projections, the q_a / kv_a norms and the layer's
    /// input norm. Replicated.
    Attention,
    /// The dense layers' MLPs and their post-attention norms. Replicated.
    DenseMlp,
    /// The MoE layers' shared experts, routers (gate and score bias) and post-attention norms.
    /// Replicated.
    SharedExperts,
    /// The main MoE layers' routed experts: E / N of each layer's per rank.
    RoutedExperts,
    /// `embed_tokens`, the final norm and `lm_head`. Replicated.
    EmbeddingHead,
    /// The MTP layer(s): every non-routed tensor (replicated) plus E / N of their routed experts.
    Mtp,
}

impl WeightKind {
    pub const ALL: [WeightKind; 6] = [
        WeightKind::Attention,
        WeightKind::DenseMlp,
        WeightKind::SharedExperts,
        WeightKind::RoutedExperts,
        WeightKind::EmbeddingHead,
        WeightKind::Mtp,
    ];

    /// The row label.
    pub const fn label(self) -> &'static str {
        match self {
            WeightKind::Attention => "attention",
            WeightKind::DenseMlp => "dense MLP",
            WeightKind::SharedExperts => "shared experts + routers",
            WeightKind::RoutedExperts => "routed experts",
            WeightKind::EmbeddingHead => "embedding + LM head",
            WeightKind::Mtp => "MTP",
        }
    }

    /// The `--json` key.
    pub const fn key(self) -> &'static str {
        match self {
            WeightKind::Attention => "attention",
            WeightKind::DenseMlp => "dense_mlp",
            WeightKind::SharedExperts => "shared_experts",
            WeightKind::RoutedExperts => "routed_experts",
            WeightKind::EmbeddingHead => "embedding_lm_head",
            WeightKind::Mtp => "mtp",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A checkpoint tensor's row in the table, and whether it belongs to a routed expert (split
/// over the ranks rather than replicated). The names are the checkpoint's (spec §2):
/// `model.layers.{l}.{input_layernorm, self_attn.*, post_attention_layernorm, mlp.*}` plus the
/// MTP extras, and the top-level embedding, norm and head.
fn classify(cfg: &ModelConfig, spec: &TensorSpec) -> (WeightKind, bool) {
    let routed = spec.name.contains(".mlp.experts.");
    let kind = match spec.layer {
        None => WeightKind::EmbeddingHead,
        Some(l) if cfg.is_mtp_layer(l) => WeightKind::Mtp,
        Some(_) if routed => WeightKind::RoutedExperts,
        Some(l) => {
            let ffn =
                spec.name.contains(".mlp.") || spec.name.contains(".post_attention_layernorm.");
            match (ffn, cfg.is_moe_layer(l)) {
                (false, _) => WeightKind::Attention,
                (true, true) => WeightKind::SharedExperts,
                (true, false) => WeightKind::DenseMlp,
            }
        }
    };
    (kind, routed)
}

/// Weight bytes one rank holds, by [`WeightKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RankWeights {
    bytes: [u64; WeightKind::ALL.len()],
}

impl RankWeights {
    /// The weights of one of `world_size` ranks (see the module doc for the placement).
    pub fn new(cfg: &ModelConfig, world_size: usize) -> Result<Self> {
        check_world_size(cfg, world_size)?;
        let mut replicated = [0u64; WeightKind::ALL.len()];
        // Every routed expert of the model; each rank holds 1 / world_size of every layer's.
        let mut routed_all = [0u64; WeightKind::ALL.len()];
        for spec in expected_tensors(cfg, Fp8Policy::for_config(cfg)) {
            let (kind, routed) = classify(cfg, &spec);
            let into = if routed {
                &mut routed_all
            } else {
                &mut replicated
            };
            into[kind.index()] += spec.size_bytes() as u64;
        }
        // Exact: a layer's E experts have one size and world_size divides E.
        let n = world_size as u64;
        let mut bytes = replicated;
        for (b, r) in bytes.iter_mut().zip(routed_all) {
            *b += r / n;
        }
        Ok(RankWeights { bytes })
    }

    pub fn get(&self, kind: WeightKind) -> u64 {
        self.bytes[kind.index()]
    }

    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
}

/// The fixed part of [`workspace_bytes`]: the CUDA context with this engine's module images
/// (about 0.5 GiB on an H100), the cuBLAS / cuBLASLt workspaces and the NCCL communicator's
/// channel buffers. An assumption, not a measurement.
pub const CONTEXT_RESERVE_BYTES: u64 = GIB;

/// Tokens of the largest forward pass the workspace covers on one rank: a 4096-token prefill
/// chunk (the prompt length of this engine's full-width benchmark), far above a decode step
/// (128 sequences x 4 query tokens with MTP verification is 512).
pub const MAX_FORWARD_TOKENS: u64 = 4096;

/// Activation bytes per token of a forward pass, bounded from above: the widths of every
/// intermediate one layer produces, summed as if all were live at once, in f32 (4 bytes):
///
/// - the residual stream and its normed copy: `2 * hidden`;
/// - attention: the query path (`q_lora_rank`, `H * (d_nope + d_rope)` and the absorbed query
///   `H * (d_c + d_rope)`), the latent KV row (`d_c + d_rope`) and the output, latent and per
///   head (`H * d_c + H * d_v`);
/// - the feed-forward, the larger of the dense MLP (`hidden + 3 * intermediate`: input,
///   gate|up, activation) and the MoE (`E` router scores, and for each of the K routed plus the
///   shared expert(s) an input row, gate|up, activation and output: `hidden + 3 * moe_inter +
///   hidden`);
/// - the logits (`vocab`).
///
/// The engine keeps most of these in BF16 or FP8 and frees them op by op, so counting f32 and
/// all at once leaves 2x to 4x slack: room for the all-to-all send and receive buffers and for
/// an expert load imbalance of up to about 2x on a rank.
pub fn activation_bytes_per_token(cfg: &ModelConfig) -> u64 {
    let h = cfg.num_attention_heads;
    let hidden = cfg.hidden_size;
    let attention = cfg.q_lora_rank.unwrap_or(0)
        + cfg.q_proj_dim()
        + h * cfg.kv_a_dim()
        + cfg.kv_a_dim()
        + h * cfg.kv_lora_rank
        + cfg.o_proj_in_dim();
    let dense = hidden + 3 * cfg.intermediate_size;
    let moe = if cfg.n_routed_experts > 0 {
        let experts = cfg.num_experts_per_tok + cfg.n_shared_experts;
        cfg.n_routed_experts + experts * (2 * hidden + 3 * cfg.moe_intermediate_size)
    } else {
        0
    };
    let widths = 2 * hidden + attention + dense.max(moe) + cfg.vocab_size;
    4 * widths as u64
}

/// The workspace reserve of one rank: [`CONTEXT_RESERVE_BYTES`] plus [`MAX_FORWARD_TOKENS`]
/// tokens of [`activation_bytes_per_token`] (V3: 1 + 7.8 GiB).
pub fn workspace_bytes(cfg: &ModelConfig) -> u64 {
    CONTEXT_RESERVE_BYTES + MAX_FORWARD_TOKENS * activation_bytes_per_token(cfg)
}

/// BF16 KV cache bytes per token on one rank: [`ModelConfig::kv_bytes_per_token`] (the main
/// layers) plus the MTP layers' own cache entries (`(d_c + d_rope) * 2` each), since the plan
/// keeps the MTP layers resident. V3: 1152 x 62 = 71424.
pub fn kv_bytes_per_token(cfg: &ModelConfig) -> u64 {
    (cfg.kv_bytes_per_token() + cfg.kv_bytes_per_token_per_layer() * cfg.num_mtp_layers()) as u64
}

/// Whether a rank's weights and workspace fit its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// What is left holds `kv_tokens` tokens of KV cache (`kv_bytes` bytes).
    Fits {
        kv_tokens: u64,
        kv_bytes: u64,
        gpu_memory: u64,
    },
    /// Weights plus workspace leave no room for a single token of KV cache.
    DoesNotFit {
        weights: u64,
        workspace: u64,
        gpu_memory: u64,
    },
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Fit::Fits {
                kv_tokens,
                kv_bytes,
                gpu_memory,
            } => write!(
                f,
                "fits: yes, KV cache for {kv_tokens} tokens per rank ({:.1} GiB of {:.1} GiB)",
                gib(kv_bytes),
                gib(gpu_memory)
            ),
            Fit::DoesNotFit {
                weights,
                gpu_memory,
                ..
            } if weights >= gpu_memory => write!(
                f,
                "does not fit: weights need {:.1} GiB of {:.1} GiB per rank",
                gib(weights),
                gib(gpu_memory)
            ),
            Fit::DoesNotFit {
                weights,
                workspace,
                gpu_memory,
            } => write!(
                f,
                "does not fit: weights need {:.1} GiB and the workspace reserve {:.1} GiB of \
                 {:.1} GiB per rank, leaving no room for the KV cache",
                gib(weights),
                gib(workspace),
                gib(gpu_memory)
            ),
        }
    }
}

/// The memory of one rank of an expert-parallel deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub world_size: usize,
    /// E / N (0 for a model without routed experts).
    pub routed_experts_per_rank: usize,
    pub weights: RankWeights,
    pub workspace_bytes: u64,
    pub kv_bytes_per_token: u64,
    /// `None`: no memory size given, so no KV budget.
    pub gpu_memory_bytes: Option<u64>,
}

impl MemoryPlan {
    pub fn new(
        cfg: &ModelConfig,
        world_size: usize,
        gpu_memory_bytes: Option<u64>,
    ) -> Result<Self> {
        Ok(MemoryPlan {
            world_size,
            weights: RankWeights::new(cfg, world_size)?,
            routed_experts_per_rank: cfg.n_routed_experts / world_size,
            workspace_bytes: workspace_bytes(cfg),
            kv_bytes_per_token: kv_bytes_per_token(cfg),
            gpu_memory_bytes,
        })
    }

    /// `None` without a memory size.
    pub fn fit(&self) -> Option<Fit> {
        let gpu_memory = self.gpu_memory_bytes?;
        let (weights, workspace) = (self.weights.total(), self.workspace_bytes);
        let left = gpu_memory.saturating_sub(weights + workspace);
        let kv_tokens = left / self.kv_bytes_per_token.max(1);
        Some(if kv_tokens == 0 {
            Fit::DoesNotFit {
                weights,
                workspace,
                gpu_memory,
            }
        } else {
            Fit::Fits {
                kv_tokens,
                kv_bytes: kv_tokens * self.kv_bytes_per_token,
                gpu_memory,
            }
        })
    }

    /// The `memory_plan` object of `info --json`; `fits` and `kv_tokens_per_rank` are `null`
    /// without a memory size.
    pub fn to_json(&self) -> Value {
        let mut weights = serde_json::Map::new();
        for kind in WeightKind::ALL {
            weights.insert(kind.key().into(), self.weights.get(kind).into());
        }
        weights.insert("total".into(), self.weights.total().into());
        let fit = self.fit();
        json!({
            "world_size": self.world_size,
            "routed_experts_per_rank": self.routed_experts_per_rank,
            "weight_bytes_per_rank": weights,
            "workspace_bytes": self.workspace_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "fits": fit.map(|f| matches!(f, Fit::Fits { .. })),
            "kv_tokens_per_rank": fit.map(|f| match f {
                Fit::Fits { kv_tokens, .. } => kv_tokens,
                Fit::DoesNotFit { .. } => 0,
            }),
        })
    }
}

/// A link the all-to-all could run over, for the on-paper times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub name: &'static str,
    /// Bytes per second in one direction.
    pub bytes_per_s: f64,
}

/// NVLink 4 on H100 / H200 SXM: 900 GB/s bidirectional, 450 GB/s per direction. (H800's
/// NVLink is cut to 400 GB/s bidirectional.)
pub const NVLINK: Link = Link {
    name: "NVLink 450 GB/s",
    bytes_per_s: 450e9,
};

/// One 400 Gb/s InfiniBand NIC per GPU: 50 GB/s per direction.
pub const INFINIBAND: Link = Link {
    name: "InfiniBand 400 Gb/s",
    bytes_per_s: 50e9,
};

/// Microseconds to move `bytes` over `link` at its full rate (no latency, no overlap).
pub fn micros(bytes: f64, link: Link) -> f64 {
    bytes / link.bytes_per_s * 1e6
}

/// Expected distinct remote ranks among the owners of a token's `top_k` experts on `world_size`
/// ranks, each expert an independent uniform choice (so each owner is uniform over the ranks):
/// each of the N - 1 other ranks is missed by all K choices with probability (1 - 1/N)^K.
/// Choosing K *distinct* experts makes misses slightly rarer (V3 at N = 8: 4.65 instead of 4.59
/// remote ranks); group-limited routing makes them more common (below).
pub fn expected_remote_ranks(world_size: usize, top_k: usize) -> f64 {
    let n = world_size as f64;
    (n - 1.0) * (1.0 - (1.0 - 1.0 / n).powi(top_k as i32))
}

/// The expert-parallel all-to-all of one decode step, per rank.
///
/// Per MoE layer of the main model, each of the rank's `batch_per_rank` tokens is dispatched
/// once to every distinct remote rank among its experts' owners, as an FP8 row with one f32
/// scale per 128 channels (`hidden + 4 * hidden / 128` bytes), and the combine returns one BF16
/// row (`2 * hidden` bytes) per (token, remote rank), the expert rank having summed its experts'
/// outputs (DeepEP's normal-mode protocol). The counts are what one rank sends; with balanced
/// routing it receives as much, over a full-duplex link, so the time per step is bytes over the
/// per-direction rate.
///
/// Not counted: the MTP layer (only when drafting), the 8 * K bytes of expert ids and weights this
/// crate's `moe_dispatch::ep` puts after each row, and that its combine returns one
/// row per (token, expert), unweighted, for bit-exactness (expected K (N - 1) / N rows per
/// token instead of [`expected_remote_ranks`]).
///
/// Group-limited routing (V3: `topk_group` 4 of 8 groups) is ignored: with the groups aligned to
/// ranks (V3 at N = 8: one group per rank) a token's experts sit on at most `topk_group` ranks,
/// so for V3 both the worst case and the expectation here are upper-side figures.
#[derive(Clone, Debug, PartialEq)]
pub struct AllToAll {
    pub world_size: usize,
    pub batch_per_rank: usize,
    /// MoE layers of the main model.
    pub moe_layers: usize,
    /// FP8 codes + f32 scales of one hidden row.
    pub dispatch_row_bytes: u64,
    /// One BF16 hidden row.
    pub combine_row_bytes: u64,
    /// min(top_k, N - 1): every expert of a token on a different remote rank.
    pub worst_remote_ranks: usize,
    /// [`expected_remote_ranks`].
    pub expected_remote_ranks: f64,
}

impl AllToAll {
    pub fn new(cfg: &ModelConfig, world_size: usize, batch_per_rank: usize) -> Result<Self> {
        check_world_size(cfg, world_size)?;
        if batch_per_rank == 0 {
            return Err(ModelError::request("--batch-per-rank must be >= 1"));
        }
        let moe_layers = (0..cfg.num_hidden_layers)
            .filter(|&l| cfg.is_moe_layer(l))
            .count();
        let hidden = cfg.hidden_size;
        let k = if moe_layers == 0 {
            0
        } else {
            cfg.num_experts_per_tok
        };
        Ok(AllToAll {
            world_size,
            batch_per_rank,
            moe_layers,
            dispatch_row_bytes: (hidden + 4 * hidden.div_ceil(128)) as u64,
            combine_row_bytes: 2 * hidden as u64,
            worst_remote_ranks: k.min(world_size - 1),
            expected_remote_ranks: expected_remote_ranks(world_size, k),
        })
    }

    /// Bytes one rank sends per decode step (dispatch + combine) when each token reaches
    /// `remote_ranks` remote ranks.
    pub fn bytes_per_step(&self, remote_ranks: f64) -> f64 {
        let rows = (self.moe_layers * self.batch_per_rank) as f64 * remote_ranks;
        rows * (self.dispatch_row_bytes + self.combine_row_bytes) as f64
    }

    pub fn worst_bytes(&self) -> f64 {
        self.bytes_per_step(self.worst_remote_ranks as f64)
    }

    pub fn expected_bytes(&self) -> f64 {
        self.bytes_per_step(self.expected_remote_ranks)
    }

    /// The `all_to_all` object of `info --json`, with the on-paper microseconds per step over
    /// [`NVLINK`] and [`INFINIBAND`].
    pub fn to_json(&self) -> Value {
        let (worst, expected) = (self.worst_bytes(), self.expected_bytes());
        json!({
            "batch_per_rank": self.batch_per_rank,
            "moe_layers": self.moe_layers,
            "dispatch_row_bytes": self.dispatch_row_bytes,
            "combine_row_bytes": self.combine_row_bytes,
            "worst_remote_ranks": self.worst_remote_ranks,
            "expected_remote_ranks": self.expected_remote_ranks,
            "worst_bytes_per_step": worst,
            "expected_bytes_per_step": expected,
            "on_paper_us": {
                "nvlink_450_gb_s": {"worst": micros(worst, NVLINK), "expected": micros(expected, NVLINK)},
                "infiniband_50_gb_s": {"worst": micros(worst, INFINIBAND), "expected": micros(expected, INFINIBAND)},
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The released DeepSeek-V3 config.json (a byte-identical copy of
    /// shared/configs/deepseek-v3.config.json).
    fn v3() -> ModelConfig {
        ModelConfig::from_json_str(include_str!(
            "../tests/fixtures/deepseek-v3-config/config.json"
        ))
        .unwrap()
    }

    fn fit(world_size: usize, gpu_gib: f64) -> Fit {
        let bytes = gpu_memory_bytes(gpu_gib).unwrap();
        MemoryPlan::new(&v3(), world_size, Some(bytes))
            .unwrap()
            .fit()
            .unwrap()
    }

    #[test]
    fn v3_fits_on_8_h200_and_16_h100_but_not_on_8_h100() {
        let on_8x141 = fit(8, 141.0);
        assert!(
            matches!(on_8x141, Fit::Fits { kv_tokens, .. } if kv_tokens > 400_000),
            "{on_8x141}"
        );
        let on_8x80 = fit(8, 80.0);
        assert!(matches!(on_8x80, Fit::DoesNotFit { .. }), "{on_8x80}");
        assert!(
            on_8x80
                .to_string()
                .starts_with("does not fit: weights need 99.1 GiB of 80.0 GiB"),
            "{on_8x80}"
        );
        let on_16x80 = fit(16, 80.0);
        assert!(
            matches!(on_16x80, Fit::Fits { kv_tokens, .. } if kv_tokens > 100_000),
            "{on_16x80}"
        );
        assert!(on_16x80.to_string().starts_with("fits: yes, KV cache for "));
    }

    #[test]
    fn v3_rank_weights_by_kind() {
        let cfg = v3();
        let w = RankWeights::new(&cfg, 8).unwrap();
        let fp8 = |n: u64, k: u64| n * k + n.div_ceil(128) * k.div_ceil(128) * 4;
        let (d, v) = (7168u64, 129_280u64);
        // q_a + q_a norm + q_b, kv_a + kv_a norm, kv_b, o_proj, input norm.
        let attention = fp8(1536, d)
            + 1536 * 2
            + fp8(24_576, 1536)
            + fp8(576, d)
            + 512 * 2
            + fp8(32_768, 512)
            + fp8(d, 16_384)
            + d * 2;
        let mlp = |inter: u64| 2 * fp8(inter, d) + fp8(d, inter);
        let router = 256 * d * 2 + 256 * 4;
        assert_eq!(w.get(WeightKind::Attention), 61 * attention);
        assert_eq!(w.get(WeightKind::DenseMlp), 3 * (mlp(18_432) + d * 2));
        assert_eq!(
            w.get(WeightKind::SharedExperts),
            58 * (mlp(2048) + router + d * 2)
        );
        assert_eq!(w.get(WeightKind::RoutedExperts), 58 * 32 * mlp(2048));
        assert_eq!(w.get(WeightKind::EmbeddingHead), 2 * v * d * 2 + d * 2);
        // enorm, hnorm, eh_proj (BF16), shared_head norm + head, embed_tokens, and an MoE
        // decoder layer with 32 of its 256 experts.
        let mtp_extras = 3 * d * 2 + d * 2 * d * 2 + 2 * v * d * 2;
        let mtp_layer = attention + mlp(2048) + router + d * 2 + 32 * mlp(2048);
        assert_eq!(w.get(WeightKind::Mtp), mtp_extras + mtp_layer);
        // 99.1 GiB per rank at N = 8.
        assert!((99.0..99.2).contains(&gib(w.total())), "{}", gib(w.total()));
    }

    /// On one rank the plan holds every tensor of the checkpoint once, so its total is the
    /// checkpoint's size, and the parameter counts of param_counts() are the same tensors.
    #[test]
    fn one_rank_holds_the_whole_checkpoint() {
        for cfg in [v3(), crate::tiny::tiny_config()] {
            let specs = expected_tensors(&cfg, Fp8Policy::for_config(&cfg));
            let all: u64 = specs.iter().map(|s| s.size_bytes() as u64).sum();
            assert_eq!(RankWeights::new(&cfg, 1).unwrap().total(), all);
        }
        // FP8 linear weights take 1 byte per parameter (+ 1/4096 for the scales), the rest 2:
        // the bytes lie between the parameter count and twice it.
        let c = v3().param_counts();
        let total = RankWeights::new(&v3(), 1).unwrap().total();
        assert!(total > c.total + c.mtp_total && total < 2 * (c.total + c.mtp_total));
    }

    #[test]
    fn routed_experts_shrink_with_the_world_and_the_rest_is_replicated() {
        let cfg = v3();
        let (w8, w16) = (
            RankWeights::new(&cfg, 8).unwrap(),
            RankWeights::new(&cfg, 16).unwrap(),
        );
        assert_eq!(
            w8.get(WeightKind::RoutedExperts),
            2 * w16.get(WeightKind::RoutedExperts)
        );
        for kind in [
            WeightKind::Attention,
            WeightKind::DenseMlp,
            WeightKind::SharedExperts,
            WeightKind::EmbeddingHead,
        ] {
            assert_eq!(w8.get(kind), w16.get(kind), "{kind:?}");
        }
        assert!(w8.get(WeightKind::Mtp) > w16.get(WeightKind::Mtp));
        assert_eq!(
            MemoryPlan::new(&cfg, 16, None)
                .unwrap()
                .routed_experts_per_rank,
            16
        );
    }

    #[test]
    fn a_world_that_does_not_divide_the_experts_is_an_error() {
        let e = RankWeights::new(&v3(), 3).unwrap_err().to_string();
        assert!(
            e.contains("256 routed experts cannot be split evenly over 3 ranks"),
            "{e}"
        );
        assert!(RankWeights::new(&v3(), 512).is_err());
        assert!(RankWeights::new(&v3(), 0)
            .unwrap_err()
            .to_string()
            .contains("--world-size must be >= 1"));
        assert!(AllToAll::new(&v3(), 3, 32).is_err());
        assert!(AllToAll::new(&v3(), 8, 0)
            .unwrap_err()
            .to_string()
            .contains("--batch-per-rank"));
        // A model without routed experts is replicated on any number of ranks.
        let mut dense = crate::tiny::tiny_config();
        dense.n_routed_experts = 0;
        assert!(RankWeights::new(&dense, 3).is_ok());
        assert_eq!(AllToAll::new(&dense, 3, 32).unwrap().worst_bytes(), 0.0);
    }

    #[test]
    fn gpu_memory_must_be_a_positive_size() {
        assert_eq!(gpu_memory_bytes(80.0).unwrap(), 80 * GIB);
        assert_eq!(gpu_memory_bytes(0.5).unwrap(), GIB / 2);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e30] {
            let e = gpu_memory_bytes(bad).unwrap_err().to_string();
            assert!(e.contains("--gpu-memory"), "{e}");
        }
    }

    #[test]
    fn workspace_and_kv_entry_of_v3() {
        let cfg = v3();
        // 62 layers (61 + MTP) of 576 BF16 values.
        assert_eq!(kv_bytes_per_token(&cfg), 62 * 1152);
        // 510528 f32 widths per token: 1.9 MiB; 4096 tokens + 1 GiB = 8.8 GiB.
        assert_eq!(activation_bytes_per_token(&cfg), 4 * 510_528);
        assert!((8.7..8.9).contains(&gib(workspace_bytes(&cfg))));
        // Without a memory size there is no verdict.
        let plan = MemoryPlan::new(&cfg, 8, None).unwrap();
        assert_eq!(plan.fit(), None);
        assert_eq!(plan.to_json()["fits"], Value::Null);
    }

    #[test]
    fn weights_that_fit_but_leave_no_kv_room_do_not_fit() {
        let plan = MemoryPlan::new(&v3(), 8, None).unwrap();
        let memory = plan.weights.total() + plan.workspace_bytes / 2;
        let f = MemoryPlan {
            gpu_memory_bytes: Some(memory),
            ..plan
        }
        .fit()
        .unwrap();
        assert!(matches!(f, Fit::DoesNotFit { .. }));
        assert!(f.to_string().contains("workspace reserve"), "{f}");
    }

    #[test]
    fn expected_remote_ranks_under_uniform_routing() {
        assert_eq!(expected_remote_ranks(1, 8), 0.0);
        // One expert per token: a remote rank with probability (N - 1) / N.
        assert!((expected_remote_ranks(8, 1) - 7.0 / 8.0).abs() < 1e-12);
        let r8 = expected_remote_ranks(8, 8);
        assert!((r8 - 7.0 * (1.0 - 0.875f64.powi(8))).abs() < 1e-12);
        assert!((4.59..4.60).contains(&r8), "{r8}");
        // Many ranks: nearly every choice lands on a distinct remote rank.
        assert!((7.9..8.0).contains(&expected_remote_ranks(4096, 8)));
    }

    #[test]
    fn v3_all_to_all_per_decode_step() {
        let a = AllToAll::new(&v3(), 8, 32).unwrap();
        assert_eq!(a.moe_layers, 58);
        assert_eq!((a.dispatch_row_bytes, a.combine_row_bytes), (7392, 14_336));
        assert_eq!(a.worst_remote_ranks, 7);
        // 58 layers x 32 tokens x 7 ranks x (7392 + 14336) bytes.
        assert_eq!(a.worst_bytes(), (58 * 32 * 7 * 21_728) as f64);
        assert!(a.expected_bytes() < a.worst_bytes());
        // Worst at 16 ranks: all 8 experts on different remote ranks.
        assert_eq!(AllToAll::new(&v3(), 16, 32).unwrap().worst_remote_ranks, 8);
        // One rank sends nothing.
        assert_eq!(AllToAll::new(&v3(), 1, 32).unwrap().worst_bytes(), 0.0);
        let us = micros(a.worst_bytes(), NVLINK);
        assert!((us - a.worst_bytes() / 450e3).abs() < 1e-6);
    }
}
