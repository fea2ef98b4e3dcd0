//! The benchmark cases of the shared ops, one list for `harness bench` and the criterion bench
//! (`cargo bench -p kernels`), with the inputs each case runs on and its byte / flop counts.
//!
//! Shapes are DeepSeek-V3's (spec §5): hidden 7168, 128 heads with 64 rotary dims, dense
//! intermediate 18432, expert intermediate 2048, vocabulary 129280; rows are tokens (1 = one
//! decode token, 128 = a decode batch, 4096 = a prefill chunk).

use half::bf16;

use crate::dtype::Float;
use crate::reference::{self, RopeLayout, RopeParams, SamplingParams, ScaleLayout, YarnScaling};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedOp {
    RmsNorm,
    FusedAddRmsNorm,
    RopeQ,
    SiluAndMul,
    QuantizeFp8,
    SiluAndMulQuantizeFp8,
    Embedding,
    Argmax,
    Sample,
}

pub const VOCAB: usize = 129_280;
pub const HIDDEN: usize = 7168;
pub const HEADS: usize = 128;
pub const ROPE_DIM: usize = 64;
/// Positions covered by the RoPE table in benchmarks (V3's full YaRN context, 4096 * 40).
pub const MAX_POSITIONS: usize = 163_840;

/// One benchmark case: `rows` tokens (or sampled rows) by `width` (hidden, intermediate or vocab).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Case {
    pub op: SharedOp,
    pub rows: usize,
    pub width: usize,
}

impl Case {
    pub fn op_name(&self) -> &'static str {
        match self.op {
            SharedOp::RmsNorm => "rms_norm",
            SharedOp::FusedAddRmsNorm => "fused_add_rms_norm",
            SharedOp::RopeQ => "rope_q",
            SharedOp::SiluAndMul => "silu_and_mul",
            SharedOp::QuantizeFp8 => "quantize_fp8",
            SharedOp::SiluAndMulQuantizeFp8 => "silu_and_mul_quantize_fp8",
            SharedOp::Embedding => "embedding",
            SharedOp::Argmax => "argmax",
            SharedOp::Sample => "sample",
        }
    }

    /// `op/shape`, e.g. `rms_norm/128x7168`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.op_name(), self.shape())
    }

    pub fn shape(&self) -> String {
        match self.op {
            SharedOp::RopeQ => format!("{}x{}x{}", self.rows, self.width, ROPE_DIM),
            _ => format!("{}x{}", self.rows, self.width),
        }
    }

    /// The fewest bytes the op must move through device memory (each input read once, each
    /// output written once).
    pub fn bytes(&self) -> f64 {
        let (t, w) = (self.rows as f64, self.width as f64);
        let blocks = (self.width as f64 / 128.0).ceil();
        match self.op {
            SharedOp::RmsNorm => 4.0 * t * w + 2.0 * w,
            SharedOp::FusedAddRmsNorm => 8.0 * t * w + 2.0 * w,
            SharedOp::RopeQ => 4.0 * t * w * ROPE_DIM as f64 + t * (4.0 + 4.0 * ROPE_DIM as f64),
            SharedOp::SiluAndMul => 6.0 * t * w,
            SharedOp::QuantizeFp8 => 3.0 * t * w + 4.0 * t * blocks,
            SharedOp::SiluAndMulQuantizeFp8 => 5.0 * t * w + 4.0 * t * blocks,
            SharedOp::Embedding => 4.0 * t * w + 4.0 * t,
            SharedOp::Argmax | SharedOp::Sample => 4.0 * t * w + 4.0 * t,
        }
    }

    /// Arithmetic operations (order of magnitude; these ops are memory-bound).
    pub fn flops(&self) -> f64 {
        let (t, w) = (self.rows as f64, self.width as f64);
        match self.op {
            SharedOp::RmsNorm => 4.0 * t * w,
            SharedOp::FusedAddRmsNorm => 5.0 * t * w,
            SharedOp::RopeQ => 3.0 * t * w * ROPE_DIM as f64,
            SharedOp::SiluAndMul => 5.0 * t * w,
            SharedOp::QuantizeFp8 => 3.0 * t * w,
            SharedOp::SiluAndMulQuantizeFp8 => 8.0 * t * w,
            SharedOp::Embedding => 0.0,
            SharedOp::Argmax => t * w,
            SharedOp::Sample => 4.0 * t * w,
        }
    }
}

/// The shared-op cases; `quick` keeps one decode-size and one prefill-size row count per op.
pub fn shared_op_cases(quick: bool) -> Vec<Case> {
    use SharedOp::*;
    let tokens: &[usize] = if quick { &[128] } else { &[1, 128, 4096] };
    let batches: &[usize] = if quick { &[64] } else { &[1, 64, 256] };
    let mut cases = Vec::new();
    for &t in tokens {
        cases.push(Case {
            op: RmsNorm,
            rows: t,
            width: HIDDEN,
        });
        cases.push(Case {
            op: FusedAddRmsNorm,
            rows: t,
            width: HIDDEN,
        });
        cases.push(Case {
            op: RopeQ,
            rows: t,
            width: HEADS,
        });
        cases.push(Case {
            op: SiluAndMul,
            rows: t,
            width: 18_432,
        });
        cases.push(Case {
            op: QuantizeFp8,
            rows: t,
            width: HIDDEN,
        });
        cases.push(Case {
            op: SiluAndMulQuantizeFp8,
            rows: t,
            width: 2048,
        });
        cases.push(Case {
            op: Embedding,
            rows: t,
            width: HIDDEN,
        });
    }
    for &b in batches {
        cases.push(Case {
            op: Argmax,
            rows: b,
            width: VOCAB,
        });
        cases.push(Case {
            op: Sample,
            rows: b,
            width: VOCAB,
        });
    }
    cases
}

/// DeepSeek-V3's `rope_scaling` (spec §1).
pub const DEEPSEEK_V3_YARN: YarnScaling = YarnScaling {
    factor: 40.0,
    original_max_position_embeddings: 4096,
    beta_fast: 32.0,
    beta_slow: 1.0,
    mscale: 1.0,
    mscale_all_dim: 1.0,
};

/// DeepSeek-V3's RoPE parameters (spec §1, §3.2).
pub fn deepseek_v3_rope() -> RopeParams {
    RopeParams::new(10_000.0, ROPE_DIM, Some(DEEPSEEK_V3_YARN)).expect("the V3 constants are valid")
}

/// Benchmark sampling settings (DeepSeek's recommended chat settings).
pub const BENCH_SAMPLING: SamplingParams = SamplingParams {
    temperature: 0.6,
    top_p: 0.95,
};

/// A cheap deterministic fill for large tables whose contents do not affect speed (the
/// embedding table: a gather moves the same bytes whatever they hold). Not zeros.
fn pattern_fill<T: Float>(n: usize) -> Vec<T> {
    (0..n)
        .map(|i| T::from_f32(((i * 2_654_435_761) % 1024) as f32 / 512.0 - 1.0))
        .collect()
}

/// Host inputs of a case; `rng` supplies fresh random values.
pub struct CaseInputs {
    pub x: Vec<bf16>,
    pub residual: Vec<bf16>,
    pub weight: Vec<bf16>,
    pub positions: Vec<i32>,
    pub ids: Vec<i32>,
    pub table: Vec<bf16>,
    pub logits: Vec<f32>,
}

impl std::fmt::Debug for CaseInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseInputs").finish_non_exhaustive()
    }
}

pub fn case_inputs(case: &Case, rng: &mut Rng) -> CaseInputs {
    let (t, w) = (case.rows, case.width);
    let mut inputs = CaseInputs {
        x: Vec::new(),
        residual: Vec::new(),
        weight: Vec::new(),
        positions: Vec::new(),
        ids: Vec::new(),
        table: Vec::new(),
        logits: Vec::new(),
    };
    match case.op {
        SharedOp::RmsNorm | SharedOp::FusedAddRmsNorm => {
            inputs.x = rng.normal_vec(t * w, 1.0);
            inputs.residual = rng.normal_vec(t * w, 1.0);
            inputs.weight = rng.normal_vec(w, 1.0);
        }
        SharedOp::RopeQ => {
            inputs.x = rng.normal_vec(t * w * 192, 1.0);
            inputs.positions = (0..t)
                .map(|_| rng.below(MAX_POSITIONS as u64) as i32)
                .collect();
        }
        SharedOp::SiluAndMul | SharedOp::SiluAndMulQuantizeFp8 => {
            inputs.x = rng.normal_vec(t * 2 * w, 1.0)
        }
        SharedOp::QuantizeFp8 => inputs.x = rng.normal_vec(t * w, 1.0),
        SharedOp::Embedding => {
            inputs.table = pattern_fill(VOCAB * w);
            inputs.ids = (0..t).map(|_| rng.below(VOCAB as u64) as i32).collect();
        }
        SharedOp::Argmax | SharedOp::Sample => {
            inputs.logits = (0..t * w).map(|_| rng.normal() * 3.0).collect()
        }
    }
    inputs
}

/// The q layout of `RopeQ` cases: [T, H, 192] with the rotary dims at offset 128.
pub fn rope_q_layout(tokens: usize, heads: usize) -> RopeLayout {
    RopeLayout {
        tokens,
        heads,
        token_stride: heads * 192,
        head_stride: 192,
        offset: 128,
    }
}

/// A closure that runs the case's Rust reference once on prepared inputs (the CPU backend's
/// speed). Results go through `black_box` so the work is not optimized away.
pub fn cpu_runner(case: &Case, rng: &mut Rng) -> Box<dyn FnMut()> {
    let case = *case;
    let mut inp = case_inputs(&case, rng);
    let w = case.width;
    let rope = deepseek_v3_rope();
    let params = vec![BENCH_SAMPLING; case.rows];
    let seed = rng.next_u64();
    let mut step = 0u64;
    Box::new(move || match case.op {
        SharedOp::RmsNorm => drop(std::hint::black_box(reference::rms_norm(
            &inp.x,
            &inp.weight,
            w,
            1e-6,
        ))),
        SharedOp::FusedAddRmsNorm => drop(std::hint::black_box(reference::fused_add_rms_norm(
            &inp.x,
            &mut inp.residual,
            &inp.weight,
            w,
            1e-6,
        ))),
        SharedOp::RopeQ => {
            let layout = rope_q_layout(case.rows, w);
            drop(std::hint::black_box(reference::apply_rope(
                &mut inp.x,
                &layout,
                &inp.positions,
                &rope,
                MAX_POSITIONS,
            )))
        }
        SharedOp::SiluAndMul => drop(std::hint::black_box(reference::silu_and_mul(&inp.x, w))),
        SharedOp::QuantizeFp8 => drop(std::hint::black_box(reference::quantize_fp8(
            &inp.x,
            w,
            false,
            ScaleLayout::BlockMajor,
        ))),
        SharedOp::SiluAndMulQuantizeFp8 => drop(std::hint::black_box(
            reference::silu_and_mul_quantize_fp8(&inp.x, w, false, ScaleLayout::BlockMajor),
        )),
        SharedOp::Embedding => drop(std::hint::black_box(reference::embedding(
            &inp.table, VOCAB, w, &inp.ids,
        ))),
        SharedOp::Argmax => drop(std::hint::black_box(reference::argmax(&inp.logits, w))),
        SharedOp::Sample => {
            step += 1;
            drop(std::hint::black_box(reference::sample(
                &inp.logits,
                w,
                &params,
                seed,
                step * case.rows as u64,
            )))
        }
    })
}

#[cfg(feature = "cuda")]
pub use gpu_cases::gpu_runner;

#[cfg(feature = "cuda")]
mod gpu_cases {
    use super::*;
    use crate::error::Result;
    use crate::gpu::{DeviceStatus, DeviceTensor, Gpu};
    use crate::ops;

    /// Uploads the case's inputs and returns a closure that launches its kernel once (no
    /// synchronization: time it with events).
    pub fn gpu_runner<'a>(
        gpu: &'a Gpu,
        case: &Case,
        rng: &mut Rng,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let case = *case;
        let inp = case_inputs(&case, rng);
        let (t, w) = (case.rows, case.width);
        let mut status = DeviceStatus::new(gpu)?;
        Ok(match case.op {
            SharedOp::RmsNorm | SharedOp::FusedAddRmsNorm => {
                let x = gpu.upload(&inp.x, &[t, w])?;
                let mut res = gpu.upload(&inp.residual, &[t, w])?;
                let weight = gpu.upload(&inp.weight, &[w])?;
                let mut out: DeviceTensor<bf16> = gpu.zeros(&[t, w])?;
                let fused = case.op == SharedOp::FusedAddRmsNorm;
                Box::new(move || {
                    if fused {
                        ops::fused_add_rms_norm(gpu, &x, &mut res, &weight, 1e-6, &mut out)
                    } else {
                        ops::rms_norm(gpu, &x, &weight, 1e-6, &mut out)
                    }
                })
            }
            SharedOp::RopeQ => {
                let mut x = gpu.upload(&inp.x, &[inp.x.len()])?;
                let pos = gpu.upload(&inp.positions, &[t])?;
                let table = ops::RopeTable::new(gpu, &deepseek_v3_rope(), MAX_POSITIONS)?;
                let layout = rope_q_layout(t, w);
                Box::new(move || ops::apply_rope(gpu, &mut x, &layout, &pos, &table, &mut status))
            }
            SharedOp::SiluAndMul => {
                let x = gpu.upload(&inp.x, &[t, 2 * w])?;
                let mut out: DeviceTensor<bf16> = gpu.zeros(&[t, w])?;
                Box::new(move || ops::silu_and_mul(gpu, &x, &mut out))
            }
            SharedOp::QuantizeFp8 | SharedOp::SiluAndMulQuantizeFp8 => {
                let fused = case.op == SharedOp::SiluAndMulQuantizeFp8;
                let x = gpu.upload(&inp.x, &[t, if fused { 2 * w } else { w }])?;
                let mut out = ops::Fp8Buffers::new(gpu, t, w, ScaleLayout::BlockMajor)?;
                Box::new(move || {
                    if fused {
                        ops::silu_and_mul_quantize_fp8(gpu, &x, false, &mut out)
                    } else {
                        ops::quantize_fp8(gpu, &x, false, &mut out)
                    }
                })
            }
            SharedOp::Embedding => {
                let table = gpu.upload(&inp.table, &[VOCAB, w])?;
                let ids = gpu.upload(&inp.ids, &[t])?;
                let mut out: DeviceTensor<bf16> = gpu.zeros(&[t, w])?;
                Box::new(move || ops::embedding(gpu, &table, &ids, &mut out, &mut status))
            }
            SharedOp::Argmax => {
                let logits = gpu.upload(&inp.logits, &[t, w])?;
                let mut out: DeviceTensor<i32> = gpu.zeros(&[t])?;
                Box::new(move || ops::argmax(gpu, &logits, &mut out))
            }
            SharedOp::Sample => {
                let logits = gpu.upload(&inp.logits, &[t, w])?;
                let temp = gpu.upload(&vec![BENCH_SAMPLING.temperature; t], &[t])?;
                let top_p = gpu.upload(&vec![BENCH_SAMPLING.top_p; t], &[t])?;
                let mut out: DeviceTensor<i32> = gpu.zeros(&[t])?;
                let seed = rng.next_u64();
                let mut step = 0u64;
                Box::new(move || {
                    step += 1;
                    ops::sample(gpu, &logits, &temp, &top_p, seed, step * t as u64, &mut out)
                })
            }
        })
    }
}
