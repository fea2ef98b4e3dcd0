//! The benchmark cases of the FP8 GEMMs, one list for `harness bench` and the criterion bench
//! (`cargo bench -p fp8-gemm`), with the operands each case runs on and its byte / flop counts.
//!
//! Shapes are the list, from spec §5: M in {64, 128, 4096} over six (N, K) pairs of
//! DeepSeek-V3's projections; grouped contiguous 4x8192 and 8x4096 rows over the expert
//! (N, K) pairs; grouped masked G in {1, 2, 4} with M_max {1024, 512, 256} (every row valid).

use kernels::reference::fp8_quant::Fp8Activations;
use kernels::rng::Rng;

use crate::inputs::{activations, weights, Draw};
use crate::reference::{self, Fp8Weights};
use crate::GROUPED_M_ALIGN;

/// The dense (N, K) pairs: q_a+kv_a, q_b, kv_b, o_proj, expert gate+up, expert down.
pub const DENSE_NK: [(usize, usize); 6] = [
    (2112, 7168),
    (24576, 1536),
    (32768, 512),
    (7168, 16384),
    (4096, 7168),
    (7168, 2048),
];
/// The expert (N, K) pairs of the grouped cases.
pub const EXPERT_NK: [(usize, usize); 2] = [(4096, 7168), (7168, 2048)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Layout {
    Dense,
    GroupedContiguous,
    GroupedMasked,
}

/// One case: `groups` x `m` rows (dense: groups = 1), N, K.
#[derive(Clone, Copy, Debug)]
pub struct Fp8Case {
    pub layout: Fp8Layout,
    pub groups: usize,
    /// Rows per group (dense: M; contiguous: rows of each group; masked: M_max = masked_m).
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Fp8Case {
    pub fn kernel(&self) -> &'static str {
        match self.layout {
            Fp8Layout::Dense => "fp8_gemm_nt",
            Fp8Layout::GroupedContiguous => "fp8_gemm_grouped_contiguous",
            Fp8Layout::GroupedMasked => "fp8_gemm_grouped_masked",
        }
    }

    /// `GxMxNxK` for grouped cases, `MxNxK` for dense.
    pub fn shape(&self) -> String {
        match self.layout {
            Fp8Layout::Dense => format!("{}x{}x{}", self.m, self.n, self.k),
            _ => format!("{}x{}x{}x{}", self.groups, self.m, self.n, self.k),
        }
    }

    pub fn name(&self) -> String {
        format!("{}/{}", self.kernel(), self.shape())
    }

    /// All rows multiplied.
    pub fn rows(&self) -> usize {
        self.groups * self.m
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.rows() as f64 * self.n as f64 * self.k as f64
    }

    /// Fewest bytes moved: A and its scales read once, every group's B and scales read once, D
    /// written once.
    pub fn bytes(&self) -> f64 {
        let (rows, n, k, g) = (
            self.rows() as f64,
            self.n as f64,
            self.k as f64,
            self.groups as f64,
        );
        let kb = k / 128.0;
        rows * k + rows * kb * 4.0 + g * (n * k + (n / 128.0).ceil() * kb * 4.0) + rows * n * 2.0
    }
}

/// The benchmark list; `quick` keeps M = 128 and one shape per grouped layout.
pub fn fp8_cases(quick: bool) -> Vec<Fp8Case> {
    let ms: &[usize] = if quick { &[128] } else { &[64, 128, 4096] };
    let mut cases = Vec::new();
    for &m in ms {
        for &(n, k) in &DENSE_NK {
            cases.push(Fp8Case {
                layout: Fp8Layout::Dense,
                groups: 1,
                m,
                n,
                k,
            });
        }
    }
    let contiguous: &[(usize, usize)] = if quick {
        &[(4, 8192)]
    } else {
        &[(4, 8192), (8, 4096)]
    };
    let masked: &[(usize, usize)] = if quick {
        &[(4, 256)]
    } else {
        &[(1, 1024), (2, 512), (4, 256)]
    };
    for &(n, k) in &EXPERT_NK {
        for &(groups, m) in contiguous {
            cases.push(Fp8Case {
                layout: Fp8Layout::GroupedContiguous,
                groups,
                m,
                n,
                k,
            });
        }
        for &(groups, m) in masked {
            cases.push(Fp8Case {
                layout: Fp8Layout::GroupedMasked,
                groups,
                m,
                n,
                k,
            });
        }
    }
    cases
}

/// Host operands of a case (quantized normal values, fresh from `rng`).
#[derive(Debug)]
pub struct Fp8Operands {
    /// Dense / contiguous: one `[rows, K]` table; masked: one `[M_max, K]` table per group.
    pub a: Vec<Fp8Activations>,
    pub b: Vec<Fp8Weights>,
    /// Contiguous: the group of each row (groups of `m` rows are multiples of the alignment).
    pub m_indices: Vec<i32>,
}

pub fn operands(case: &Fp8Case, rng: &mut Rng) -> Fp8Operands {
    let (n, k) = (case.n, case.k);
    let b = (0..case.groups)
        .map(|_| weights(rng, n, k, Draw::Quantized))
        .collect();
    match case.layout {
        Fp8Layout::Dense => Fp8Operands {
            a: vec![activations(rng, case.m, k, Draw::Quantized)],
            b,
            m_indices: Vec::new(),
        },
        Fp8Layout::GroupedContiguous => {
            debug_assert_eq!(case.m % GROUPED_M_ALIGN, 0);
            Fp8Operands {
                a: vec![activations(rng, case.rows(), k, Draw::Quantized)],
                b,
                m_indices: (0..case.rows()).map(|r| (r / case.m) as i32).collect(),
            }
        }
        Fp8Layout::GroupedMasked => Fp8Operands {
            a: (0..case.groups)
                .map(|_| activations(rng, case.m, k, Draw::Quantized))
                .collect(),
            b,
            m_indices: Vec::new(),
        },
    }
}

/// A closure that runs the case on the CPU reference (the CPU backend's fast path) once.
pub fn cpu_runner(case: &Fp8Case, rng: &mut Rng) -> Box<dyn FnMut()> {
    let case = *case;
    let ops = operands(&case, rng);
    Box::new(move || {
        let r = match case.layout {
            Fp8Layout::Dense => reference::gemm_nt_f32(&ops.a[0], &ops.b[0]),
            Fp8Layout::GroupedContiguous => {
                reference::grouped_contiguous(&ops.a[0], &ops.b, &ops.m_indices)
            }
            Fp8Layout::GroupedMasked => {
                reference::grouped_masked(&ops.a, &ops.b, &vec![case.m; case.groups])
            }
        };
        drop(std::hint::black_box(r));
    })
}

#[cfg(feature = "cuda")]
pub use gpu_cases::gpu_runner;

#[cfg(feature = "cuda")]
mod gpu_cases {
    use half::bf16;
    use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
    use kernels::{E4m3, Result};

    use super::*;
    use crate::gpu;
    use crate::layout::{K_BLOCK, W_BLOCK};

    fn upload_b(
        gpu: &Gpu,
        case: &Fp8Case,
        b: &[Fp8Weights],
    ) -> Result<(DeviceTensor<E4m3>, DeviceTensor<f32>)> {
        let (n, k, g) = (case.n, case.k, case.groups);
        let q: Vec<E4m3> = b.iter().flat_map(|w| w.q.iter().copied()).collect();
        let s: Vec<f32> = b.iter().flat_map(|w| w.scales.iter().copied()).collect();
        let (nb, kb) = (n.div_ceil(W_BLOCK), k / K_BLOCK);
        if case.layout == Fp8Layout::Dense {
            Ok((gpu.upload(&q, &[n, k])?, gpu.upload(&s, &[nb, kb])?))
        } else {
            Ok((gpu.upload(&q, &[g, n, k])?, gpu.upload(&s, &[g, nb, kb])?))
        }
    }

    /// Uploads the case's operands and returns a closure that launches its kernel once (no
    /// synchronization: time it with events).
    pub fn gpu_runner<'a>(
        gpu: &'a Gpu,
        case: &Fp8Case,
        rng: &mut Rng,
    ) -> Result<Box<dyn FnMut() -> Result<()> + 'a>> {
        let case = *case;
        let ops = operands(&case, rng);
        let (n, k) = (case.n, case.k);
        let (b, sb) = upload_b(gpu, &case, &ops.b)?;
        let q: Vec<E4m3> = ops.a.iter().flat_map(|x| x.q.iter().copied()).collect();
        let s: Vec<f32> = ops
            .a
            .iter()
            .flat_map(|x| x.scales.iter().copied())
            .collect();
        let sa = gpu.upload(&s, &[s.len()])?;
        let mut status = DeviceStatus::new(gpu)?;
        Ok(match case.layout {
            Fp8Layout::Dense => {
                let a = gpu.upload(&q, &[case.m, k])?;
                let mut d: DeviceTensor<bf16> = gpu.zeros(&[case.m, n])?;
                Box::new(move || gpu::gemm_nt(gpu, &a, &sa, &b, &sb, None, &mut d))
            }
            Fp8Layout::GroupedContiguous => {
                let rows = case.rows();
                let a = gpu.upload(&q, &[rows, k])?;
                let idx = gpu.upload(&ops.m_indices, &[rows])?;
                let mut d: DeviceTensor<bf16> = gpu.zeros(&[rows, n])?;
                Box::new(move || {
                    gpu::gemm_grouped_contiguous(gpu, &a, &sa, &b, &sb, &idx, &mut d, &mut status)
                })
            }
            Fp8Layout::GroupedMasked => {
                let g = case.groups;
                let a = gpu.upload(&q, &[g, case.m, k])?;
                let masked = gpu.upload(&vec![case.m as i32; g], &[g])?;
                let mut d: DeviceTensor<bf16> = gpu.zeros(&[g, case.m, n])?;
                Box::new(move || {
                    gpu::gemm_grouped_masked(
                        gpu,
                        &a,
                        &sa,
                        &b,
                        &sb,
                        &masked,
                        case.m,
                        &mut d,
                        &mut status,
                    )
                })
            }
        })
    }
}
