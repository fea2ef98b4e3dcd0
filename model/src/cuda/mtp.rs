//! The MTP module on the device (spec §3.4, depth 1), the CUDA counterpart of `cpu/mtp.rs`:
//!
//! ```text
//! e  = RMSNorm(embed_mtp[t[i+1]], enorm)       # BF16, as every norm output
//! hh = RMSNorm(h[i], hnorm)
//! u  = eh_proj([e ; hh])                      # BF16 GEMM -> f32, rounded to BF16
//! u  = MTP decoder layer(u)                   # the main layers' device forward, own KV cache
//! logits_mtp[i] = head(RMSNorm(u, shared_head.norm))   # BF16 GEMM -> f32
//! ```
//!
//! `eh_proj` and `shared_head.head` are BF16 in DeepSeek-V3's checkpoint; they run through the
//! BF16 GEMM the backend uses for lm_head and the router (moe-dispatch's `gate_logits`, f32
//! output). The CPU `fp8` path multiplies the BF16 norm outputs by the BF16 weights in f32 and
//! rounds `eh_proj`'s output to BF16 (`ctx.store`), so the device output is rounded there too. An
//! FP8 `eh_proj` (a checkpoint quantizing it) goes through the FP8 GEMM like every other linear
//! layer, which is what the CPU `fp8` path does with it.
//!
//! The MTP layer's cache is one `[kv_blocks, 64, 576]` BF16 tensor addressed by the main
//! sequence's block tables (MTP entry `i` lives where main entry `i` does).

use half::bf16;
use kernels::gpu::{DeviceTensor, Gpu};
use kernels::ops::{embedding, rms_norm};
use moe_dispatch::gpu::routing::gate_logits;

use crate::checkpoint::{Checkpoint, LinearWeight};
use crate::cpu::{MtpOutput, SeqChunk};
use crate::engine::LogitRows;
use crate::error::{ModelError, Result};

use super::attention::{linear, AttnCtx, CallPlan};
use super::forward::{add_norm, decoder_layer, last_rows, CallState};
use super::glue::copy_rows;
use super::weights::{bf16_matrix, bf16_vector, upload, zeros, Fp8Linear, GpuLayer};
use super::CudaModel;

/// `eh_proj` `[hidden, 2 * hidden]` as stored.
#[derive(Debug)]
pub enum EhProj {
    Bf16(DeviceTensor<bf16>),
    Fp8(Fp8Linear),
}

/// The weights of one MTP module on the device.
#[derive(Debug)]
pub struct GpuMtp {
    pub enorm: DeviceTensor<bf16>,
    pub hnorm: DeviceTensor<bf16>,
    pub eh_proj: EhProj,
    pub layer: GpuLayer,
    pub head_norm: DeviceTensor<bf16>,
    /// `shared_head.head` [vocab, hidden] BF16.
    pub head: DeviceTensor<bf16>,
    /// The MTP layer's `embed_tokens` [vocab, hidden] BF16.
    pub embed: DeviceTensor<bf16>,
}

impl GpuMtp {
    /// Uploads the MTP module stored as layer `l` (`model.layers.{l}`, `l >= num_hidden_layers`).
    pub fn load(gpu: &Gpu, ckpt: &Checkpoint, l: usize) -> Result<Self> {
        let cfg = ckpt.config();
        let (vocab, d) = (cfg.vocab_size, cfg.hidden_size);
        let p = format!("model.layers.{l}");
        let eh_name = format!("{p}.eh_proj.weight");
        let eh_proj = match ckpt.linear(&eh_name)? {
            LinearWeight::Fp8(_) => EhProj::Fp8(Fp8Linear::load(gpu, ckpt, &eh_name)?),
            // BF16 as stored; F32 / F16 rounded to BF16.
            dense => {
                let (n, k) = dense.dims();
                if (n, k) != (d, 2 * d) {
                    return Err(ModelError::config(
                        &eh_name,
                        format!("is [{n}, {k}], expected [{d}, {}]", 2 * d),
                    ));
                }
                let w = dense
                    .to_bf16()
                    .ok_or_else(|| ModelError::config(&eh_name, "has no BF16 form"))?;
                EhProj::Bf16(upload(gpu, &w, &[n, k], &eh_name)?)
            }
        };
        let embed_name = format!("{p}.embed_tokens.weight");
        let embed = ckpt.to_bf16(&embed_name)?;
        Ok(GpuMtp {
            enorm: bf16_vector(gpu, ckpt, &format!("{p}.enorm.weight"))?,
            hnorm: bf16_vector(gpu, ckpt, &format!("{p}.hnorm.weight"))?,
            eh_proj,
            layer: GpuLayer::load(gpu, ckpt, l)?,
            head_norm: bf16_vector(gpu, ckpt, &format!("{p}.shared_head.norm.weight"))?,
            head: bf16_matrix(gpu, ckpt, &format!("{p}.shared_head.head.weight"), vocab, d)?,
            embed: upload(gpu, &embed, &[vocab, d], &embed_name)?,
        })
    }
}

impl CudaModel {
    /// Runs the MTP module over the new tokens of `seqs` (the next tokens `t[i+1]` of positions
    /// `i = start..`), `hidden` `[T, hidden]` f32 holding BF16 values (`h_final` of the main
    /// model or a previous MTP output `u`), writing the MTP entries into `mtp_cache`. Returns
    /// `u` and the MTP logits, downloaded.
    pub fn mtp_forward(
        &self,
        gpu: &Gpu,
        hidden: &[f32],
        seqs: &[SeqChunk],
        mtp_cache: &mut DeviceTensor<bf16>,
        state: &mut CallState,
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        let mtp = self.mtp.as_ref().ok_or_else(|| {
            ModelError::request(
                "the checkpoint has no MTP layer (num_nextn_predict_layers = 0 or its tensors \
                 are absent), so MTP logits and speculative decoding are unavailable",
            )
        })?;
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps as f32;
        let d = cfg.hidden_size;
        let ids: Vec<i32> = seqs.iter().flat_map(|s| s.ids).map(|&i| i as i32).collect();
        let tokens = ids.len();
        if hidden.len() != tokens * d {
            return Err(ModelError::request(format!(
                "MTP input: {} hidden values for {tokens} tokens of width {d}",
                hidden.len()
            )));
        }
        if tokens == 0 {
            return Ok(MtpOutput {
                hidden: Vec::new(),
                logits: Vec::new(),
            });
        }
        let plan = CallPlan::new(gpu, seqs)?;
        let ids = upload(gpu, &ids, &[tokens], "MTP token ids")?;
        // e = RMSNorm(embed_mtp[t[i+1]], enorm), hh = RMSNorm(h[i], hnorm).
        let mut emb = zeros(gpu, &[tokens, d], "MTP embeddings")?;
        embedding(gpu, &mtp.embed, &ids, &mut emb, state.status)?;
        let mut e = zeros(gpu, &[tokens, d], "MTP enorm output")?;
        rms_norm(gpu, &emb, &mtp.enorm, eps, &mut e)?;
        let h_in: Vec<bf16> = hidden.iter().map(|&v| bf16::from_f32(v)).collect();
        let h_in = upload(gpu, &h_in, &[tokens, d], "MTP input hidden states")?;
        let mut hh = zeros(gpu, &[tokens, d], "MTP hnorm output")?;
        rms_norm(gpu, &h_in, &mtp.hnorm, eps, &mut hh)?;
        // [e ; hh] per token: viewed as [2T, hidden], e in the even rows, hh in the odd ones.
        let even: Vec<i32> = (0..tokens as i32).map(|t| 2 * t).collect();
        let odd: Vec<i32> = even.iter().map(|t| t + 1).collect();
        let even = upload(gpu, &even, &[tokens], "MTP concat rows")?;
        let odd = upload(gpu, &odd, &[tokens], "MTP concat rows")?;
        let mut cat = zeros(gpu, &[tokens, 2 * d], "MTP eh_proj input")?;
        copy_rows(gpu, &e, None, &mut cat, Some(&even), d, state.status)?;
        copy_rows(gpu, &hh, None, &mut cat, Some(&odd), d, state.status)?;
        let mut x = match &mtp.eh_proj {
            EhProj::Bf16(w) => {
                let mut z = zeros(gpu, &[tokens, d], "MTP eh_proj output")?;
                gate_logits(gpu, &cat, w, &mut z)?;
                // The CPU fp8 path stores eh_proj's f32 output in BF16.
                let z: Vec<bf16> = gpu.download(&z)?.into_iter().map(bf16::from_f32).collect();
                upload(gpu, &z, &[tokens, d], "the MTP residual stream")?
            }
            EhProj::Fp8(w) => linear(gpu, w, &cat)?,
        };
        // The decoder layer, as in `forward_hidden`, then shared_head.norm on the residual.
        let ctx = AttnCtx {
            gpu,
            cfg,
            rope: &self.rope,
            softmax_scale: self.softmax_scale,
            plan: &plan,
            marks: None,
        };
        let mut h = zeros(gpu, &[tokens, d], "MTP norm outputs")?;
        let out = decoder_layer(
            &ctx,
            &mtp.layer,
            &mut x,
            None,
            &mut h,
            mtp_cache,
            state.workspaces,
            state.status,
            None,
        )?;
        add_norm(gpu, &mut x, Some(&out), &mtp.head_norm, eps, &mut h)?;
        let picked;
        let head_in = match rows {
            LogitRows::All => &h,
            LogitRows::Last => {
                picked = last_rows(gpu, &h, seqs, state.status)?;
                &picked
            }
        };
        let mut logits = zeros(gpu, &[head_in.shape()[0], cfg.vocab_size], "MTP logits")?;
        gate_logits(gpu, head_in, &mtp.head, &mut logits)?;
        state.status.check(gpu, "cuda MTP forward")?;
        Ok(MtpOutput {
            hidden: gpu.download(&x)?.iter().map(|v| v.to_f32()).collect(),
            logits: gpu.download(&logits)?,
        })
    }
}
