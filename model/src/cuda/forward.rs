//! One forward call on the device over `&[SeqChunk]` (prefill and decode alike): embedding, the
//! decoder layers, the final norm and lm_head on the rows asked for.
//!
//! The residual stream `x` is BF16 `[T, hidden]`. A sub-layer's output is added to it by the next
//! norm (`fused_add_rms_norm`: `x <- bf16(x + out)`, then the norm of the new `x`), which is the
//! CPU `fp8` path's rounding sequence exactly (its `add_residual` rounds the sum, then normalizes).
//! Every intermediate is allocated per call (correct first; a serving build would keep them).

use std::collections::HashMap;

use half::bf16;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::ops::{embedding, fused_add_rms_norm, rms_norm};
use mla_attention::gpu::DecodeWorkspace;
use moe_dispatch::gpu::routing::gate_logits;

use crate::cpu::{SeqChunk, Trace};
use crate::engine::LogitRows;
use crate::error::Result;

use super::attention::{AttnCtx, CallPlan};
use super::glue::copy_rows;
use super::profile::{mark, OpMarks};
use super::weights::{upload, zeros, GpuLayer};
use super::CudaModel;

/// The mutable device state of a backend a call uses.
#[derive(Debug)]
pub struct CallState<'a> {
    pub cache: &'a mut [DeviceTensor<bf16>],
    pub workspaces: &'a mut HashMap<(usize, usize), DecodeWorkspace>,
    pub status: &'a mut DeviceStatus,
    /// Op-group timing (`dsv3 bench --synthetic`); `None` in ordinary calls.
    pub marks: Option<&'a OpMarks<'a>>,
}

/// `x <- x + delta` (when there is one), `out = RMSNorm(x, w)`.
pub(super) fn add_norm(
    gpu: &Gpu,
    x: &mut DeviceTensor<bf16>,
    delta: Option<&DeviceTensor<bf16>>,
    w: &DeviceTensor<bf16>,
    eps: f32,
    out: &mut DeviceTensor<bf16>,
) -> Result<()> {
    match delta {
        Some(d) => fused_add_rms_norm(gpu, d, x, w, eps, out)?,
        None => rms_norm(gpu, x, w, eps, out)?,
    }
    Ok(())
}

/// One decoder layer: `x <- x + delta` (the previous layer's FFN output, added by this norm),
/// attention over `cache`, `x <- x + attention`, then the FFN, whose output is returned for the
/// next norm to add. `h` is the norm outputs' scratch. Used by the main layers and the MTP layer.
#[allow(clippy::too_many_arguments)]
pub(super) fn decoder_layer(
    ctx: &AttnCtx,
    layer: &GpuLayer,
    x: &mut DeviceTensor<bf16>,
    delta: Option<&DeviceTensor<bf16>>,
    h: &mut DeviceTensor<bf16>,
    cache: &mut DeviceTensor<bf16>,
    workspaces: &mut HashMap<(usize, usize), DecodeWorkspace>,
    status: &mut DeviceStatus,
    routing: Option<&mut Vec<Vec<i32>>>,
) -> Result<DeviceTensor<bf16>> {
    let gpu = ctx.gpu;
    let eps = ctx.cfg.rms_norm_eps as f32;
    add_norm(gpu, x, delta, &layer.input_norm, eps, h)?;
    mark(ctx.marks, "norms")?;
    let attn = layer.attention.forward(ctx, h, cache, workspaces, status)?;
    add_norm(gpu, x, Some(&attn), &layer.post_attention_norm, eps, h)?;
    mark(ctx.marks, "norms")?;
    layer.ffn.forward(gpu, h, status, routing, ctx.marks)
}

/// The residual stream `bf16(x + delta)` on the host, in f32 (for the trace).
fn residual_host(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    delta: Option<&DeviceTensor<bf16>>,
) -> Result<Vec<f32>> {
    let xs = gpu.download(x)?;
    Ok(match delta {
        Some(d) => xs
            .iter()
            .zip(gpu.download(d)?)
            .map(|(a, b)| bf16::from_f32(a.to_f32() + b.to_f32()).to_f32())
            .collect(),
        None => xs.iter().map(|v| v.to_f32()).collect(),
    })
}

impl CudaModel {
    /// Runs the layers over the new tokens of `seqs` and returns `h_final` `[T, hidden]` (after
    /// `model.norm`) on the device. With `trace`, the residual stream after the embedding and
    /// after each layer and each MoE layer's routed ids are recorded (downloaded, so slow: a
    /// debugging hook).
    pub fn forward_hidden(
        &self,
        gpu: &Gpu,
        seqs: &[SeqChunk],
        state: &mut CallState,
        mut trace: Option<&mut Trace>,
    ) -> Result<DeviceTensor<bf16>> {
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps as f32;
        let hidden = cfg.hidden_size;
        let ids: Vec<i32> = seqs.iter().flat_map(|s| s.ids).map(|&i| i as i32).collect();
        let tokens = ids.len();
        let plan = CallPlan::new(gpu, seqs)?;
        let ids = upload(gpu, &ids, &[tokens], "token ids")?;
        let mut x = zeros(gpu, &[tokens, hidden], "the residual stream")?;
        embedding(gpu, &self.embed, &ids, &mut x, state.status)?;
        mark(state.marks, "embedding")?;
        let mut h = zeros(gpu, &[tokens, hidden], "norm outputs")?;
        let ctx = AttnCtx {
            gpu,
            cfg,
            rope: &self.rope,
            softmax_scale: self.softmax_scale,
            plan: &plan,
            marks: state.marks,
        };
        let mut delta: Option<DeviceTensor<bf16>> = None;
        if let Some(t) = trace.as_deref_mut() {
            t.residuals.push(residual_host(gpu, &x, None)?);
        }
        for (layer, cache) in self.layers.iter().zip(state.cache.iter_mut()) {
            let routing = trace.as_deref_mut().map(|t| &mut t.routing);
            let out = decoder_layer(
                &ctx,
                layer,
                &mut x,
                delta.as_ref(),
                &mut h,
                cache,
                state.workspaces,
                state.status,
                routing,
            )?;
            if let Some(t) = trace.as_deref_mut() {
                t.residuals.push(residual_host(gpu, &x, Some(&out))?);
            }
            delta = Some(out);
        }
        add_norm(gpu, &mut x, delta.as_ref(), &self.final_norm, eps, &mut h)?;
        mark(state.marks, "norms")?;
        Ok(h)
    }

    /// `logits = h lm_head^T` ([rows, vocab] f32 on the device) for the rows `rows` asks for.
    pub fn logits(
        &self,
        gpu: &Gpu,
        h: &DeviceTensor<bf16>,
        seqs: &[SeqChunk],
        rows: LogitRows,
        status: &mut DeviceStatus,
    ) -> Result<DeviceTensor<f32>> {
        let picked;
        let h = match rows {
            LogitRows::All => h,
            LogitRows::Last => {
                picked = last_rows(gpu, h, seqs, status)?;
                &picked
            }
        };
        let mut z = zeros(gpu, &[h.shape()[0], self.cfg.vocab_size], "logits")?;
        gate_logits(gpu, h, &self.lm_head, &mut z)?;
        Ok(z)
    }
}

/// The rows of `h` ([tokens, width]) of each sequence's last new token, gathered on the device.
pub fn last_rows(
    gpu: &Gpu,
    h: &DeviceTensor<bf16>,
    seqs: &[SeqChunk],
    status: &mut DeviceStatus,
) -> Result<DeviceTensor<bf16>> {
    let width = h.shape()[1];
    let mut last = Vec::with_capacity(seqs.len());
    let mut end = 0;
    for s in seqs {
        end += s.ids.len();
        last.push((end - 1) as i32);
    }
    let idx = upload(gpu, &last, &[last.len()], "last-row indices")?;
    let mut out = zeros(gpu, &[last.len(), width], "last hidden rows")?;
    copy_rows(gpu, h, Some(&idx), &mut out, None, width, status)?;
    Ok(out)
}
