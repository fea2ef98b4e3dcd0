//! The CPU backend: the forward pass of spec §3 built from the kernel crates' Rust references,
//! multi-threaded with rayon, in two precisions ([`Precision`]).
//!
//! It keeps its own paged KV cache (`[num_blocks * 64, d_c + d_rope]` f32 per layer) whose
//! block tables the engine manages, so the CPU and CUDA backends share one bookkeeping.

pub mod attention;
pub mod forward;
pub mod linear;
pub mod mha;
pub mod mtp;
pub mod ordered;
pub mod row_invariant;
pub mod skinny;
pub mod weights;

use kernels::reference::RopeParams;
use mla_attention::BLOCK_SIZE;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::dist::{RankComm, StepKind};
use crate::error::{ModelError, Result};

pub use forward::{Context, SeqChunk};
use linear::Linear;
pub use mtp::MtpOutput;
use weights::{vector, DecoderLayer};

/// Arithmetic of the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// Weights dequantized to f32, f32 activations: the oracle the goldens check.
    #[default]
    Exact,
    /// FP8 weights as stored, activations quantized per token per 128 channels (spec §4), BF16
    /// where the GPU stores BF16: what the CUDA backend computes.
    Fp8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Fp8 => "fp8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "exact" => Ok(Precision::Exact),
            "fp8" => Ok(Precision::Fp8),
            other => Err(format!(
                "unknown precision `{other}` (expected exact or fp8)"
            )),
        }
    }
}

/// The MTP module's own weights (spec §3.4), loaded when the checkpoint has them.
#[derive(Clone, Debug)]
pub struct MtpWeights {
    pub enorm: Vec<f32>,
    pub hnorm: Vec<f32>,
    /// `eh_proj` [hidden, 2 * hidden], BF16 in the checkpoint.
    pub eh_proj: Linear,
    pub layer: DecoderLayer,
    pub head_norm: Vec<f32>,
    /// `shared_head.head` [vocab, hidden].
    pub head: Linear,
    /// The MTP layer's `embed_tokens` [vocab, hidden] in f32.
    pub embed: Vec<f32>,
}

/// What a traced forward call records (CPU [`CpuModel::forward_trace`] and the CUDA backend's
/// `forward_traced`): the residual stream after the embedding and after each layer
/// (`[tokens, hidden]` f32 each) and each MoE layer's routed expert ids (`[tokens, top_k]`).
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub residuals: Vec<Vec<f32>>,
    pub routing: Vec<Vec<i32>>,
}

/// A loaded model on the CPU.
#[derive(Debug)]
pub struct CpuModel {
    cfg: ModelConfig,
    precision: Precision,
    rope: RopeParams,
    softmax_scale: f32,
    /// `model.embed_tokens` [vocab, hidden] in f32 (BF16 values).
    embed: Vec<f32>,
    layers: Vec<DecoderLayer>,
    final_norm: Vec<f32>,
    lm_head: Linear,
    mtp: Vec<MtpWeights>,
    /// Set on a rank of a distributed world.
    ep: Option<std::sync::Arc<RankComm>>,
    /// See [`Context::mha_min_new_tokens`].
    mha_min_new_tokens: usize,
}

/// The paged KV cache of the CPU backend: one `[num_blocks * 64, d_c + d_rope]` buffer per layer.
pub struct CpuKvCache {
    pub num_blocks: usize,
    pub width: usize,
    pub layers: Vec<Vec<f32>>,
}

impl std::fmt::Debug for CpuKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKvCache")
            .field("num_blocks", &self.num_blocks)
            .field("width", &self.width)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl CpuKvCache {
    /// A zeroed cache of `num_blocks` blocks for `layers` layers of `cfg`. Fails with an error
    /// naming the size when the allocation is impossible.
    pub fn new(cfg: &ModelConfig, layers: usize, num_blocks: usize) -> Result<Self> {
        let width = cfg.kv_a_dim();
        let per_layer = num_blocks
            .checked_mul(BLOCK_SIZE * width)
            .ok_or_else(|| ModelError::request(format!("{num_blocks} KV blocks overflow")))?;
        let mut out = Vec::with_capacity(layers);
        for _ in 0..layers {
            let mut v = Vec::new();
            v.try_reserve_exact(per_layer).map_err(|_| {
                ModelError::request(format!(
                    "cannot allocate the KV cache: {layers} layers x {num_blocks} blocks x 64 \
                     tokens x {width} f32"
                ))
            })?;
            v.resize(per_layer, 0.0);
            out.push(v);
        }
        Ok(CpuKvCache {
            num_blocks,
            width,
            layers: out,
        })
    }
}

impl CpuModel {
    /// Loads every weight of `ckpt` for `precision` (the MTP layers too when present).
    pub fn load(ckpt: &Checkpoint, precision: Precision) -> Result<Self> {
        Self::load_with_progress(ckpt, precision, &mut |_, _| {})
    }

    /// [`load`](Self::load), calling `progress(layers done, layers total)` as layers load.
    pub fn load_with_progress(
        ckpt: &Checkpoint,
        precision: Precision,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let all = 0..ckpt.config().n_routed_experts;
        Self::load_shard(ckpt, precision, all, progress)
    }

    /// One expert-parallel rank's model: every weight but the routed experts, of which only
    /// `experts` (global ids, the same range in every MoE layer) are read.
    pub fn load_shard(
        ckpt: &Checkpoint,
        precision: Precision,
        experts: std::ops::Range<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let cfg = ckpt.config().clone();
        let rope = cfg.rope_params()?;
        let embed = vector(ckpt, "model.embed_tokens.weight")?;
        let total = cfg.num_hidden_layers + ckpt.num_mtp_layers();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(DecoderLayer::load(ckpt, l, precision, experts.clone())?);
            progress(l + 1, total);
        }
        let lm_head = Linear::from_f32(
            ckpt.to_f32("lm_head.weight")?,
            cfg.vocab_size,
            cfg.hidden_size,
        );
        let mut mtp = Vec::with_capacity(ckpt.num_mtp_layers());
        for j in 0..ckpt.num_mtp_layers() {
            mtp.push(load_mtp(ckpt, cfg.mtp_layer_id(j), precision, &experts)?);
            progress(cfg.num_hidden_layers + j + 1, total);
        }
        Ok(CpuModel {
            softmax_scale: cfg.softmax_scale() as f32,
            final_norm: vector(ckpt, "model.norm.weight")?,
            cfg,
            precision,
            rope,
            embed,
            layers,
            lm_head,
            mtp,
            ep: None,
            mha_min_new_tokens: mha::MHA_MIN_NEW_TOKENS,
        })
    }

    /// Sets the new-token count from which a sequence's prefill takes the MHA form in exact
    /// precision (default [`mha::MHA_MIN_NEW_TOKENS`]; `usize::MAX` keeps every call in the
    /// absorbed form, for comparing the two or bisecting).
    pub fn set_mha_min_new_tokens(&mut self, tokens: usize) {
        self.mha_min_new_tokens = tokens.max(1);
    }

    /// Joins an expert-parallel world: from now on every forward call exchanges its MoE rows
    /// through `comm` and multiplies row-invariantly (see [`crate::dist`]).
    pub fn set_rank_comm(&mut self, comm: std::sync::Arc<RankComm>) {
        self.ep = Some(comm);
    }

    /// The world this model is a rank of, if any.
    pub fn rank_comm(&self) -> Option<&RankComm> {
        self.ep.as_deref()
    }

    /// Serves one step of `kind` without tokens of its own: every MoE layer that step runs
    /// joins its exchange with zero rows and computes its experts' share of the other ranks'
    /// rows.
    pub fn serve_idle_step(&self, kind: StepKind) -> Result<()> {
        let ctx = self.context();
        let hidden = self.cfg.hidden_size;
        let layers: Vec<&DecoderLayer> = match kind {
            StepKind::Main => self.layers.iter().collect(),
            StepKind::Mtp => self.mtp.first().map(|m| &m.layer).into_iter().collect(),
        };
        for layer in layers {
            if let weights::Ffn::Moe(moe) = &layer.ffn {
                let out = moe.forward(&ctx, &[])?;
                debug_assert_eq!(out.len() % hidden, 0);
            }
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The loaded MTP modules (empty when the checkpoint has none).
    pub fn mtp(&self) -> &[MtpWeights] {
        &self.mtp
    }

    /// The shared state of one forward call.
    pub fn context(&self) -> Context<'_> {
        Context {
            cfg: &self.cfg,
            rope: &self.rope,
            softmax_scale: self.softmax_scale,
            precision: self.precision,
            max_positions: self.cfg.max_position_embeddings,
            routing_trace: None,
            row_invariant: self.ep.is_some(),
            ep: self.ep.as_deref(),
            mha_min_new_tokens: self.mha_min_new_tokens,
        }
    }

    /// A KV cache for the main layers.
    pub fn new_cache(&self, num_blocks: usize) -> Result<CpuKvCache> {
        CpuKvCache::new(&self.cfg, self.cfg.num_hidden_layers, num_blocks)
    }

    /// Rows of `table` ([vocab, hidden] f32) for `ids`, after checking every id.
    pub fn embed_rows(&self, table: &[f32], ids: &[u32]) -> Result<Vec<f32>> {
        let (vocab, hidden) = (self.cfg.vocab_size, self.cfg.hidden_size);
        let mut x = Vec::with_capacity(ids.len() * hidden);
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= vocab {
                return Err(ModelError::request(format!(
                    "token id {id} at index {i} is outside the vocabulary (vocab_size {vocab})"
                )));
            }
            x.extend_from_slice(&table[id as usize * hidden..][..hidden]);
        }
        Ok(x)
    }

    /// Runs the main model over the new tokens of `seqs` (appending them to `cache`) and returns
    /// the final hidden states `h_final` ([tokens, hidden], after `model.norm`).
    pub fn forward_hidden(&self, seqs: &[SeqChunk], cache: &mut CpuKvCache) -> Result<Vec<f32>> {
        let x = self.run_layers(seqs, cache, None)?;
        self.context().norm(&x, &self.final_norm)
    }

    /// The residual stream after the embedding and after each layer (`[tokens, hidden]` each)
    /// and the routed expert ids of each MoE layer (`[tokens, top_k]`) of a
    /// [`forward_hidden`](Self::forward_hidden) call: the debugging hook the CUDA tests use to
    /// name the first layer that diverges and to tell routing near-ties from bugs.
    pub fn forward_trace(&self, seqs: &[SeqChunk], cache: &mut CpuKvCache) -> Result<Trace> {
        let mut trace = Trace::default();
        self.run_layers(seqs, cache, Some(&mut trace))?;
        Ok(trace)
    }

    /// Embedding and every main layer over the new tokens of `seqs`: the residual stream before
    /// the final norm, recording into `trace` when given.
    fn run_layers(
        &self,
        seqs: &[SeqChunk],
        cache: &mut CpuKvCache,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        check_chunks(&self.cfg, seqs, cache.num_blocks)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.ids).copied().collect();
        let mut x = self.embed_rows(&self.embed, &ids)?;
        let routing = std::sync::Mutex::new(Vec::new());
        let ctx = Context {
            routing_trace: trace.is_some().then_some(&routing),
            ..self.context()
        };
        if let Some(t) = trace.as_deref_mut() {
            t.residuals.push(x.clone());
        }
        for (layer, layer_cache) in self.layers.iter().zip(&mut cache.layers) {
            layer.forward(&ctx, &mut x, seqs, layer_cache)?;
            if let Some(t) = trace.as_deref_mut() {
                t.residuals.push(x.clone());
            }
        }
        if let Some(t) = trace {
            t.routing = routing.into_inner().unwrap_or_else(|e| e.into_inner());
        }
        Ok(x)
    }

    /// `logits = h_final lm_head^T` for `h` [rows, hidden]: [rows, vocab] f32.
    pub fn logits(&self, h: &[f32]) -> Result<Vec<f32>> {
        self.lm_head.forward_row_invariant(h)
    }
}

fn load_mtp(
    ckpt: &Checkpoint,
    l: usize,
    precision: Precision,
    experts: &std::ops::Range<usize>,
) -> Result<MtpWeights> {
    let cfg = ckpt.config();
    let (vocab, d) = (cfg.vocab_size, cfg.hidden_size);
    let p = format!("model.layers.{l}");
    Ok(MtpWeights {
        enorm: vector(ckpt, &format!("{p}.enorm.weight"))?,
        hnorm: vector(ckpt, &format!("{p}.hnorm.weight"))?,
        eh_proj: weights::linear(ckpt, &format!("{p}.eh_proj.weight"), precision)?,
        layer: DecoderLayer::load(ckpt, l, precision, experts.clone())?,
        head_norm: vector(ckpt, &format!("{p}.shared_head.norm.weight"))?,
        head: Linear::from_f32(
            ckpt.to_f32(&format!("{p}.shared_head.head.weight"))?,
            vocab,
            d,
        ),
        embed: vector(ckpt, &format!("{p}.embed_tokens.weight"))?,
    })
}

/// Checks that every chunk is non-empty, stays below `max_position_embeddings` and has the cache
/// blocks its positions need.
pub fn check_chunks(cfg: &ModelConfig, seqs: &[SeqChunk], num_blocks: usize) -> Result<()> {
    for (i, s) in seqs.iter().enumerate() {
        if s.ids.is_empty() {
            return Err(ModelError::request(format!(
                "sequence {i} has no new tokens"
            )));
        }
        let end = s.start + s.ids.len();
        if end > cfg.max_position_embeddings {
            return Err(ModelError::request(format!(
                "sequence {i} reaches {end} tokens, more than max_position_embeddings = {}",
                cfg.max_position_embeddings
            )));
        }
        let need = end.div_ceil(BLOCK_SIZE);
        if s.blocks.len() < need {
            return Err(ModelError::request(format!(
                "sequence {i} needs {need} KV blocks for {end} tokens, its table has {}",
                s.blocks.len()
            )));
        }
        if let Some(b) = s.blocks[..need].iter().find(|&&b| b as usize >= num_blocks) {
            return Err(ModelError::request(format!(
                "sequence {i} names KV block {b}, the cache has {num_blocks}"
            )));
        }
    }
    Ok(())
}
