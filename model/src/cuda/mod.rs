//! The CUDA backend (feature `cuda`): the forward pass of spec §3 composed from the kernel
//! crates (fp8-gemm, mla-attention, moe-dispatch, the shared ops of `kernels`) plus the glue
//! kernels of `model/cuda/mla_glue.cu`. It computes what the CPU backend's `fp8` precision
//! computes: activations quantized to e4m3 per token per 128 channels before every FP8 GEMM,
//! BF16 GEMM outputs, a BF16 residual stream, BF16 norm outputs and BF16 cache entries.
//!
//! - [`weights`]: every weight uploaded once at load (FP8 as stored).
//! - [`glue`]: launch wrappers of the glue kernels (KV append, absorptions, row copies).
//! - [`attention`]: MLA over the paged cache; `ffn`: the dense MLP and the MoE.
//! - [`forward`]: the layer loop and lm_head.
//! - [`checks`]: the `model` suite of `harness verify` (glue kernels, then the whole forward).
//!
//! - [`mtp`]: the MTP module (spec §3.4) with its own device KV cache, behind the MTP hooks of
//!   [`Backend`] (speculative decoding and `logits --mtp`).
//! - [`sampling`]: the next token chosen on the device ([`Backend::forward_and_sample`]), so
//!   decode steps download ids, not logits.

pub mod attention;
pub mod checks;
mod ffn;
pub mod forward;
pub mod glue;
pub mod mtp;
pub mod profile;
pub mod sampling;
pub mod synthetic;
pub mod weights;

use std::collections::HashMap;

use half::bf16;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::ops::RopeTable;
use mla_attention::gpu::DecodeWorkspace;
use mla_attention::{BLOCK_SIZE, KV_DIM, KV_LORA_RANK, ROPE_DIM};

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::cpu::{check_chunks, MtpOutput, SeqChunk, Trace};
use crate::engine::{check_draws, Backend, LogitRows, TokenDraw};
use crate::error::{ModelError, Result};

use forward::CallState;
use mtp::GpuMtp;
use weights::{alloc_err, bf16_matrix, bf16_vector, zeros, GpuLayer};

/// A loaded model on the GPU.
#[derive(Debug)]
pub struct CudaModel {
    cfg: ModelConfig,
    rope: RopeTable,
    softmax_scale: f32,
    /// `model.embed_tokens` [vocab, hidden] BF16.
    embed: DeviceTensor<bf16>,
    layers: Vec<GpuLayer>,
    final_norm: DeviceTensor<bf16>,
    /// `lm_head.weight` [vocab, hidden] BF16.
    lm_head: DeviceTensor<bf16>,
    /// The first MTP module, when the checkpoint has one.
    mtp: Option<Box<GpuMtp>>,
    device: String,
}

/// Checks the shapes the device kernels are specialised to.
fn check_config(cfg: &ModelConfig) -> Result<()> {
    if cfg.kv_lora_rank != KV_LORA_RANK {
        return Err(ModelError::config(
            "kv_lora_rank",
            format!(
                "is {}; the CUDA MLA decode kernel is built for {KV_LORA_RANK}",
                cfg.kv_lora_rank
            ),
        ));
    }
    if cfg.qk_rope_head_dim != ROPE_DIM {
        return Err(ModelError::config(
            "qk_rope_head_dim",
            format!(
                "is {}; the CUDA MLA decode kernel is built for {ROPE_DIM}",
                cfg.qk_rope_head_dim
            ),
        ));
    }
    Ok(())
}

impl CudaModel {
    /// Uploads every weight of the main model in `ckpt` to `gpu`. GPU out-of-memory is an error
    /// naming the tensor being allocated.
    pub fn load(ckpt: &Checkpoint, gpu: &Gpu) -> Result<Self> {
        Self::load_with_progress(ckpt, gpu, &mut |_, _| {})
    }

    /// [`load`](Self::load), calling `progress(layers done, layers total)`.
    pub fn load_with_progress(
        ckpt: &Checkpoint,
        gpu: &Gpu,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let cfg = ckpt.config().clone();
        check_config(&cfg)?;
        let params = cfg.rope_params()?;
        let rope = RopeTable::new(gpu, &params, cfg.max_position_embeddings)
            .map_err(alloc_err("the RoPE cos/sin table"))?;
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let embed = bf16_matrix(gpu, ckpt, "model.embed_tokens.weight", vocab, hidden)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(GpuLayer::load(gpu, ckpt, l)?);
            progress(l + 1, cfg.num_hidden_layers);
        }
        // Only the first MTP module runs (depth 1, as the CPU backend and spec §3.4).
        let mtp = if ckpt.num_mtp_layers() > 0 {
            Some(Box::new(GpuMtp::load(gpu, ckpt, cfg.mtp_layer_id(0))?))
        } else {
            None
        };
        Ok(CudaModel {
            softmax_scale: cfg.softmax_scale() as f32,
            final_norm: bf16_vector(gpu, ckpt, "model.norm.weight")?,
            lm_head: bf16_matrix(gpu, ckpt, "lm_head.weight", vocab, hidden)?,
            mtp,
            device: gpu.info().name.clone(),
            cfg,
            rope,
            embed,
            layers,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Whether the MTP module was loaded (the checkpoint has an MTP layer).
    pub fn has_mtp(&self) -> bool {
        self.mtp.is_some()
    }
}

/// The CUDA backend: a [`CudaModel`], its paged KV cache (`[kv_blocks, 64, 576]` BF16 per layer)
/// and the per-shape decode workspaces.
#[derive(Debug)]
pub struct CudaBackend<'g> {
    gpu: &'g Gpu,
    model: CudaModel,
    cache: Vec<DeviceTensor<bf16>>,
    /// The MTP layer's cache (`[kv_blocks, 64, 576]`, addressed by the main block tables);
    /// `None` when the model has no MTP module.
    mtp_cache: Option<DeviceTensor<bf16>>,
    kv_blocks: usize,
    status: DeviceStatus,
    workspaces: HashMap<(usize, usize), DecodeWorkspace>,
}

impl<'g> CudaBackend<'g> {
    /// Allocates `kv_blocks` cache blocks per layer; out of memory is an error naming the cache.
    pub fn new(model: CudaModel, gpu: &'g Gpu, kv_blocks: usize) -> Result<Self> {
        let layers = model.cfg.num_hidden_layers;
        let mut cache = Vec::with_capacity(layers);
        for l in 0..layers {
            cache.push(zeros(
                gpu,
                &[kv_blocks, BLOCK_SIZE, KV_DIM],
                &format!(
                    "the KV cache of layer {l} ({kv_blocks} blocks x 64 tokens x {KV_DIM} bf16; \
                     {layers} layers in all)"
                ),
            )?);
        }
        let mtp_cache = if model.has_mtp() {
            Some(zeros(
                gpu,
                &[kv_blocks, BLOCK_SIZE, KV_DIM],
                &format!(
                    "the KV cache of the MTP layer ({kv_blocks} blocks x 64 tokens x {KV_DIM} bf16)"
                ),
            )?)
        } else {
            None
        };
        Ok(CudaBackend {
            gpu,
            status: DeviceStatus::new(gpu).map_err(alloc_err("the status word"))?,
            model,
            cache,
            mtp_cache,
            kv_blocks,
            workspaces: HashMap::new(),
        })
    }

    pub fn model(&self) -> &CudaModel {
        &self.model
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    fn check(&self, seqs: &[SeqChunk]) -> Result<()> {
        check_chunks(&self.model.cfg, seqs, self.kv_blocks)?;
        let vocab = self.model.cfg.vocab_size;
        for (i, s) in seqs.iter().enumerate() {
            if let Some((j, id)) = s
                .ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab)
            {
                return Err(ModelError::request(format!(
                    "token id {id} at index {j} of sequence {i} is outside the vocabulary \
                     (vocab_size {vocab})"
                )));
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>> {
        Ok(self.run_hidden(seqs, rows, trace, false)?.0)
    }

    /// [`run`](Self::run) that also downloads `h_final` (`[T, hidden]` f32) when `want_hidden`
    /// (else the second vector is empty).
    fn run_hidden(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
        trace: Option<&mut Trace>,
        want_hidden: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check(seqs)?;
        if seqs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let gpu = self.gpu;
        let (h, logits) = self.run_on_device(seqs, rows, trace)?;
        let hidden = if want_hidden {
            gpu.download(&h)?.iter().map(|v| v.to_f32()).collect()
        } else {
            Vec::new()
        };
        Ok((gpu.download(&logits)?, hidden))
    }

    /// The forward pass over checked, non-empty `seqs`, leaving its results on the device:
    /// `h_final` (`[T, hidden]` BF16) and the logits rows asked for (`[rows, vocab]` f32).
    fn run_on_device(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
        trace: Option<&mut Trace>,
    ) -> Result<(DeviceTensor<bf16>, DeviceTensor<f32>)> {
        let gpu = self.gpu;
        // A call that failed on the host half-way may have left a code in the status word.
        self.status.reset(gpu)?;
        let mut state = CallState {
            cache: &mut self.cache,
            workspaces: &mut self.workspaces,
            status: &mut self.status,
            marks: None,
        };
        let h = self.model.forward_hidden(gpu, seqs, &mut state, trace)?;
        let logits = self.model.logits(gpu, &h, seqs, rows, &mut self.status)?;
        self.status.check(gpu, "cuda forward")?;
        Ok((h, logits))
    }

    /// The [`LogitRows::Last`] logits of `seqs` (`[seqs, vocab]` f32), left on the device: what
    /// [`Backend::forward_and_sample`] samples from. Public so tests can sample the very same
    /// logits on the host.
    pub fn last_logits_on_device(&mut self, seqs: &[SeqChunk]) -> Result<DeviceTensor<f32>> {
        self.check(seqs)?;
        if seqs.is_empty() {
            return zeros(self.gpu, &[0, self.model.cfg.vocab_size], "logits");
        }
        Ok(self.run_on_device(seqs, LogitRows::Last, None)?.1)
    }

    /// [`Backend::forward`] that also returns the [`Trace`] (residual stream after the embedding
    /// and after each layer, routed ids of each MoE layer): the debugging hook the GPU tests use
    /// to name the first layer that diverges from the CPU's `forward_trace`.
    pub fn forward_traced(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Trace)> {
        let mut trace = Trace::default();
        let logits = self.run(seqs, rows, Some(&mut trace))?;
        Ok((logits, trace))
    }
}

impl Backend for CudaBackend<'_> {
    fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    fn describe(&self) -> String {
        format!("cuda fp8 on {}", self.model.device)
    }

    fn kv_blocks(&self) -> usize {
        self.kv_blocks
    }

    fn forward(&mut self, seqs: &[SeqChunk], rows: LogitRows) -> Result<Vec<f32>> {
        self.run(seqs, rows, None)
    }

    /// Samples on the device: only the chosen ids (`[seqs]` i32) come back to the host.
    fn forward_and_sample(&mut self, seqs: &[SeqChunk], draws: &[TokenDraw]) -> Result<Vec<u32>> {
        check_draws(seqs, draws)?;
        let logits = self.last_logits_on_device(seqs)?;
        sampling::sample_on_device(self.gpu, &logits, draws)
    }

    fn forward_with_hidden(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (logits, h) = self.run_hidden(seqs, rows, None, true)?;
        Ok((h, logits))
    }

    fn has_mtp(&self) -> bool {
        self.mtp_cache.is_some()
    }

    fn mtp_forward(
        &mut self,
        hidden: &[f32],
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        self.check(seqs)?;
        let gpu = self.gpu;
        let Some(mtp_cache) = self.mtp_cache.as_mut() else {
            return Err(ModelError::request(
                "the checkpoint has no MTP layer (num_nextn_predict_layers = 0), so MTP logits \
                 and speculative decoding are unavailable",
            ));
        };
        self.status.reset(gpu)?;
        let mut state = CallState {
            cache: &mut [],
            workspaces: &mut self.workspaces,
            status: &mut self.status,
            marks: None,
        };
        self.model
            .mtp_forward(gpu, hidden, seqs, mtp_cache, &mut state, rows)
    }
}
