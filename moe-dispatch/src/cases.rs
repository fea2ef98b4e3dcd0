//! The benchmark cases of the MoE kernels, one list for `harness bench` and the criterion bench
//! (`cargo bench -p moe-dispatch`), with their inputs and byte counts.
//!
//! From the issue: routing for T in {1, 128, 4096, 65536} with DeepSeek-V3's router (E = 256,
//! K = 8, 8 groups / 4 kept); the contiguous layout build, FP8 dispatch (e4m3 rows + scales) and
//! BF16 combine at T = 4096, hidden 7168, K = 8.

use half::bf16;
use kernels::reference::fp8_quant::{quantize_fp8, ScaleLayout};
use kernels::rng::Rng;

use crate::reference::permute::{self, contiguous_layout};
use crate::reference::routing::{self, RoutingConfig};

/// Rows per group of the contiguous layout (the grouped FP8 GEMM's M tile).
pub const ALIGN: usize = 128;
pub const HIDDEN: usize = 7168;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeOp {
    /// Router logits -> top-k ids and weights.
    Route,
    /// top-k ids -> contiguous layout (counts, aligned offsets, m_indices, slots).
    Layout,
    /// FP8 token rows (+ scales) -> expert-contiguous rows.
    DispatchFp8,
    /// Expert outputs (BF16) -> weighted sum per token (+ shared expert).
    Combine,
}

#[derive(Clone, Copy, Debug)]
pub struct MoeCase {
    pub op: MoeOp,
    pub tokens: usize,
}

impl MoeCase {
    pub fn kernel(&self) -> &'static str {
        match self.op {
            MoeOp::Route => "route",
            MoeOp::Layout => "contiguous_layout",
            MoeOp::DispatchFp8 => "dispatch_fp8",
            MoeOp::Combine => "combine",
        }
    }

    pub fn shape(&self) -> String {
        let cfg = RoutingConfig::deepseek_v3();
        match self.op {
            MoeOp::Route | MoeOp::Layout => {
                format!("{}x{}k{}", self.tokens, cfg.num_experts, cfg.top_k)
            }
            MoeOp::DispatchFp8 | MoeOp::Combine => {
                format!("{}x{}k{}", self.tokens, HIDDEN, cfg.top_k)
            }
        }
    }

    pub fn name(&self) -> String {
        format!("{}/{}", self.kernel(), self.shape())
    }

    /// Fewest bytes moved: inputs read once, outputs written once.
    pub fn bytes(&self) -> f64 {
        let cfg = RoutingConfig::deepseek_v3();
        let (t, e, k, h) = (
            self.tokens as f64,
            cfg.num_experts as f64,
            cfg.top_k as f64,
            HIDDEN as f64,
        );
        let scales = (h / 128.0).ceil() * 4.0;
        match self.op {
            // z [T, E] f32 and the bias in; ids and weights [T, K] out.
            MoeOp::Route => t * e * 4.0 + e * 4.0 + t * k * 8.0,
            // ids in; slots [T, K] and the m_indices of the rows out.
            MoeOp::Layout => t * k * 4.0 + t * k * 4.0 + t * k * 4.0,
            // every token row (codes + scales) read once, written K times.
            MoeOp::DispatchFp8 => t * (h + scales) + t * k * (h + scales) + t * k * 4.0,
            // K expert rows per token read, weights and slots read, one row written.
            MoeOp::Combine => t * k * h * 2.0 + t * k * 8.0 + t * h * 2.0,
        }
    }

    pub fn flops(&self) -> f64 {
        let cfg = RoutingConfig::deepseek_v3();
        let (t, e, k, h) = (
            self.tokens as f64,
            cfg.num_experts as f64,
            cfg.top_k as f64,
            HIDDEN as f64,
        );
        match self.op {
            MoeOp::Route => t * e * 10.0,
            MoeOp::Layout | MoeOp::DispatchFp8 => 0.0,
            MoeOp::Combine => 2.0 * t * k * h,
        }
    }
}

pub fn moe_cases(quick: bool) -> Vec<MoeCase> {
    let route_tokens: &[usize] = if quick {
        &[128, 4096]
    } else {
        &[1, 128, 4096, 65536]
    };
    let mut cases: Vec<MoeCase> = route_tokens
        .iter()
        .map(|&tokens| MoeCase {
            op: MoeOp::Route,
            tokens,
        })
        .collect();
    for op in [MoeOp::Layout, MoeOp::DispatchFp8, MoeOp::Combine] {
        cases.push(MoeCase { op, tokens: 4096 });
    }
    cases
}

/// Host inputs of a case: logits, the V3 router's bias, and the routing they produce.
#[derive(Debug)]
pub struct MoeInputs {
    pub z: Vec<f32>,
    pub bias: Vec<f32>,
    pub routing: routing::Routing,
}

pub fn inputs(case: &MoeCase, rng: &mut Rng) -> MoeInputs {
    let cfg = RoutingConfig::deepseek_v3();
    let z: Vec<f32> = (0..case.tokens * cfg.num_experts)
        .map(|_| rng.normal() * 2.0)
        .collect();
    let bias: Vec<f32> = (0..cfg.num_experts).map(|_| rng.normal() * 0.1).collect();
    let routing = routing::route(&z, Some(&bias), &cfg).expect("the V3 router config is valid");
    MoeInputs { z, bias, routing }
}

/// A closure that runs the case's Rust reference once.
pub fn cpu_runner(case: &MoeCase, rng: &mut Rng) -> Box<dyn FnMut()> {
    let case = *case;
    let cfg = RoutingConfig::deepseek_v3();
    let inp = inputs(&case, rng);
    let k = cfg.top_k;
    match case.op {
        MoeOp::Route => Box::new(move || {
            drop(std::hint::black_box(routing::route(
                &inp.z,
                Some(&inp.bias),
                &cfg,
            )))
        }),
        MoeOp::Layout => Box::new(move || {
            drop(std::hint::black_box(contiguous_layout(
                &inp.routing.ids,
                k,
                cfg.num_experts,
                ALIGN,
            )))
        }),
        MoeOp::DispatchFp8 => {
            let x: Vec<f32> = (0..case.tokens * HIDDEN).map(|_| rng.normal()).collect();
            let xq = quantize_fp8(&x, HIDDEN, false, ScaleLayout::BlockMajor).expect("hidden > 0");
            let layout =
                contiguous_layout(&inp.routing.ids, k, cfg.num_experts, ALIGN).expect("valid ids");
            Box::new(move || {
                drop(std::hint::black_box(permute::dispatch_fp8(
                    &xq,
                    k,
                    &layout.slot,
                    layout.rows,
                )))
            })
        }
        MoeOp::Combine => {
            let layout =
                contiguous_layout(&inp.routing.ids, k, cfg.num_experts, ALIGN).expect("valid ids");
            let y: Vec<bf16> = rng.normal_vec(layout.rows * HIDDEN, 1.0);
            Box::new(move || {
                drop(std::hint::black_box(permute::combine(
                    &y,
                    HIDDEN,
                    &layout.slot,
                    &inp.routing.weights,
                    k,
                    None,
                )))
            })
        }
    }
}

#[cfg(feature = "cuda")]
pub use gpu_cases::gpu_runner;

#[cfg(feature = "cuda")]
mod gpu_cases {
    use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
    use kernels::ops::Fp8Buffers;
    use kernels::Result;

    use super::*;
    use crate::gpu::permute::{self as gp, DeviceContiguousLayout};
    use crate::gpu::routing as gr;

    /// Uploads the case's inputs and returns a closure that launches its kernel(s) once (no
    /// synchronization: time it with events). Dispatch and combine run on a layout built once.
    pub fn gpu_runner<'a>(
        gpu: &'a Gpu,
        case: &MoeCase,
        rng: &mut Rng,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let case = *case;
        let cfg = RoutingConfig::deepseek_v3();
        let inp = inputs(&case, rng);
        let (t, k, e) = (case.tokens, cfg.top_k, cfg.num_experts);
        let mut status = DeviceStatus::new(gpu)?;
        let ids = gpu.upload(&inp.routing.ids, &[t, k])?;
        let weights = gpu.upload(&inp.routing.weights, &[t, k])?;
        Ok(match case.op {
            MoeOp::Route => {
                let z = gpu.upload(&inp.z, &[t, e])?;
                let bias = gpu.upload(&inp.bias, &[e])?;
                let mut out_ids: DeviceTensor<i32> = gpu.zeros(&[t, k])?;
                let mut out_w: DeviceTensor<f32> = gpu.zeros(&[t, k])?;
                Box::new(move || gr::route(gpu, &z, Some(&bias), &cfg, &mut out_ids, &mut out_w))
            }
            MoeOp::Layout => {
                let mut layout = DeviceContiguousLayout::new(gpu, t, k, e, ALIGN)?;
                Box::new(move || gp::contiguous_layout(gpu, &ids, &mut layout, &mut status))
            }
            MoeOp::DispatchFp8 => {
                let mut layout = DeviceContiguousLayout::new(gpu, t, k, e, ALIGN)?;
                gp::contiguous_layout(gpu, &ids, &mut layout, &mut status)?;
                let x: Vec<f32> = (0..t * HIDDEN).map(|_| rng.normal()).collect();
                let xq =
                    quantize_fp8(&x, HIDDEN, false, ScaleLayout::BlockMajor).expect("hidden > 0");
                let src = Fp8Buffers {
                    q: gpu.upload(&xq.q, &[t, HIDDEN])?,
                    scales: gpu.upload(&xq.scales, &[xq.scales.len()])?,
                    layout: ScaleLayout::BlockMajor,
                };
                let mut out =
                    Fp8Buffers::new(gpu, layout.rows_cap, HIDDEN, ScaleLayout::BlockMajor)?;
                Box::new(move || gp::dispatch_fp8(gpu, &src, &layout.slot, &mut out, &mut status))
            }
            MoeOp::Combine => {
                let mut layout = DeviceContiguousLayout::new(gpu, t, k, e, ALIGN)?;
                gp::contiguous_layout(gpu, &ids, &mut layout, &mut status)?;
                let y: Vec<bf16> = rng.normal_vec(layout.rows_cap * HIDDEN, 1.0);
                let y = gpu.upload(&y, &[layout.rows_cap, HIDDEN])?;
                let mut out: DeviceTensor<bf16> = gpu.zeros(&[t, HIDDEN])?;
                Box::new(move || {
                    gp::combine(gpu, &y, &layout.slot, &weights, None, &mut out, &mut status)
                })
            }
        })
    }
}
