//! The FFN of a layer on the device: the dense MLP (and shared experts) and the MoE.
//!
//! Dense: quantize x once, one GEMM for gate|up (stacked weights), `silu_and_mul_quantize_fp8`
//! (silu(g) * u quantized straight from f32, as the CPU `fp8` path does), the down GEMM.
//! MoE: router GEMM (BF16 x BF16 -> f32, moe-dispatch's `gate_logits`), routing kernel, the
//! expert-contiguous layout, FP8 dispatch of the quantized tokens, two grouped-contiguous GEMMs
//! with the fused activation between, then `combine` (weighted sum of the routed outputs plus the
//! shared expert, one BF16 rounding).

use half::bf16;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::ops::{quantize_fp8, silu_and_mul_quantize_fp8, Fp8Buffers};
use kernels::reference::ScaleLayout;
use moe_dispatch::gpu::permute::{
    combine, contiguous_layout, dispatch_fp8, DeviceContiguousLayout,
};
use moe_dispatch::gpu::routing::{gate_logits, route};

use crate::error::Result;

use super::attention::linear_q;
use super::profile::{mark, OpMarks};
use super::weights::{zeros, GpuFfn, GpuMlp, GpuMoe};

fn quantize(gpu: &Gpu, x: &DeviceTensor<bf16>, ue8m0: bool) -> Result<Fp8Buffers> {
    let (rows, k) = (x.shape()[0], x.shape()[1]);
    let mut a = Fp8Buffers::new(gpu, rows, k, ScaleLayout::BlockMajor)?;
    quantize_fp8(gpu, x, ue8m0, &mut a)?;
    Ok(a)
}

impl GpuMlp {
    /// `down(silu(gate(x)) * up(x))` for quantized x.
    fn forward_q(&self, gpu: &Gpu, xq: &Fp8Buffers) -> Result<DeviceTensor<bf16>> {
        let gate_up = linear_q(gpu, &self.gate_up, xq)?;
        let rows = gate_up.shape()[0];
        let mut act = Fp8Buffers::new(gpu, rows, self.inter(), ScaleLayout::BlockMajor)?;
        silu_and_mul_quantize_fp8(gpu, &gate_up, self.down.ue8m0, &mut act)?;
        linear_q(gpu, &self.down, &act)
    }
}

impl GpuMoe {
    fn forward(
        &self,
        gpu: &Gpu,
        x: &DeviceTensor<bf16>,
        status: &mut DeviceStatus,
        routing_trace: Option<&mut Vec<Vec<i32>>>,
        marks: Option<&OpMarks>,
    ) -> Result<DeviceTensor<bf16>> {
        let (tokens, hidden) = (x.shape()[0], x.shape()[1]);
        let (experts, top_k) = (self.routing.num_experts, self.routing.top_k);
        let mut z = zeros::<f32>(gpu, &[tokens, experts], "router logits")?;
        gate_logits(gpu, x, &self.gate, &mut z)?;
        let mut ids = zeros::<i32>(gpu, &[tokens, top_k], "routed expert ids")?;
        let mut weights = zeros::<f32>(gpu, &[tokens, top_k], "routing weights")?;
        route(
            gpu,
            &z,
            self.bias.as_ref(),
            &self.routing,
            &mut ids,
            &mut weights,
        )?;
        if let Some(t) = routing_trace {
            t.push(gpu.download(&ids)?);
        }

        let mut layout =
            DeviceContiguousLayout::new(gpu, tokens, top_k, experts, fp8_gemm::GROUPED_M_ALIGN)?;
        contiguous_layout(gpu, &ids, &mut layout, status)?;
        let rows = layout.rows_cap;
        let xq = quantize(gpu, x, self.ue8m0)?;
        let mut a = Fp8Buffers::new(gpu, rows, hidden, ScaleLayout::BlockMajor)?;
        dispatch_fp8(gpu, &xq, &layout.slot, &mut a, status)?;
        mark(marks, "moe_route_permute")?;

        let e = &self.experts;
        let mut gate_up = zeros(gpu, &[rows, 2 * e.inter], "expert gate|up outputs")?;
        fp8_gemm::gpu::gemm_grouped_contiguous(
            gpu,
            &a.q,
            &a.scales,
            &e.gate_up,
            &e.gate_up_scales,
            &layout.m_indices,
            &mut gate_up,
            status,
        )?;
        let mut act = Fp8Buffers::new(gpu, rows, e.inter, ScaleLayout::BlockMajor)?;
        silu_and_mul_quantize_fp8(gpu, &gate_up, self.ue8m0, &mut act)?;
        let mut y = zeros(gpu, &[rows, hidden], "expert outputs")?;
        fp8_gemm::gpu::gemm_grouped_contiguous(
            gpu,
            &act.q,
            &act.scales,
            &e.down,
            &e.down_scales,
            &layout.m_indices,
            &mut y,
            status,
        )?;
        mark(marks, "expert_gemms")?;

        let shared = match &self.shared {
            Some(s) => Some(s.forward_q(gpu, &xq)?),
            None => None,
        };
        mark(marks, "shared_expert")?;
        let mut out = zeros(gpu, &[tokens, hidden], "MoE output")?;
        combine(
            gpu,
            &y,
            &layout.slot,
            &weights,
            shared.as_ref(),
            &mut out,
            status,
        )?;
        mark(marks, "combine")?;
        Ok(out)
    }
}

impl GpuFfn {
    /// The FFN output `[T, hidden]` (before the residual add) of the normed input `x`. With
    /// `routing_trace`, an MoE layer appends its routed ids `[T, top_k]` (a debugging hook);
    /// with `marks`, its op groups are timed.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &DeviceTensor<bf16>,
        status: &mut DeviceStatus,
        routing_trace: Option<&mut Vec<Vec<i32>>>,
        marks: Option<&OpMarks>,
    ) -> Result<DeviceTensor<bf16>> {
        match self {
            GpuFfn::Dense(mlp) => {
                let y = mlp.forward_q(gpu, &quantize(gpu, x, mlp.gate_up.ue8m0)?)?;
                mark(marks, "dense_mlp")?;
                Ok(y)
            }
            GpuFfn::Moe(moe) => moe.forward(gpu, x, status, routing_trace, marks),
        }
    }
}
