//! Everything `harness bench` times: each crate's cases (ours) and, next to them, the peers of the
//! same shape, each with how to run it on the CPU (the Rust reference) and on the GPU.

use kernels::rng::Rng;

/// Runs the item's CPU reference once per call.
pub type CpuFactory = Box<dyn Fn(&mut Rng) -> Box<dyn FnMut()>>;

/// Largest FP8 GEMM the CPU path runs in a benchmark (flops); bigger ones would take minutes on
/// the reference and are listed as skipped.
const CPU_MAX_FLOPS: f64 = 4e10;

/// One benchmark entry.
pub struct BenchItem {
    /// The crate the kernel belongs to.
    pub suite: &'static str,
    pub kernel: String,
    /// "ours" or the peer's name.
    pub implementation: &'static str,
    pub shape: String,
    pub bytes: f64,
    pub flops: f64,
    pub cpu: Option<CpuFactory>,
    #[cfg(feature = "cuda")]
    pub gpu: Option<gpu_items::GpuFactory>,
}

impl BenchItem {
    /// `kernel/shape`, plus `@peer` for peers.
    pub fn name(&self) -> String {
        if self.implementation == "ours" {
            format!("{}/{}", self.kernel, self.shape)
        } else {
            format!("{}/{}@{}", self.kernel, self.shape, self.implementation)
        }
    }
}

pub fn all_items(quick: bool) -> Vec<BenchItem> {
    let mut items = Vec::new();
    for case in kernels::cases::shared_op_cases(quick) {
        items.push(BenchItem {
            suite: "kernels",
            kernel: case.op_name().to_string(),
            implementation: "ours",
            shape: case.shape(),
            bytes: case.bytes(),
            flops: case.flops(),
            cpu: Some(Box::new(move |rng| kernels::cases::cpu_runner(&case, rng))),
            #[cfg(feature = "cuda")]
            gpu: Some(gpu_items::shared_op(case)),
        });
    }
    for case in fp8_gemm::cases::fp8_cases(quick) {
        let cpu: Option<CpuFactory> = (case.flops() <= CPU_MAX_FLOPS)
            .then(|| Box::new(move |rng: &mut Rng| fp8_gemm::cases::cpu_runner(&case, rng)) as _);
        items.push(BenchItem {
            suite: "fp8-gemm",
            kernel: case.kernel().to_string(),
            implementation: "ours",
            shape: case.shape(),
            bytes: case.bytes(),
            flops: case.flops(),
            cpu,
            #[cfg(feature = "cuda")]
            gpu: Some(gpu_items::fp8_gemm(case)),
        });
        #[cfg(feature = "cuda")]
        if case.layout == fp8_gemm::cases::Fp8Layout::Dense {
            items.extend(gpu_items::fp8_gemm_peers(case));
        }
    }
    for case in moe_dispatch::cases::moe_cases(quick) {
        items.push(BenchItem {
            suite: "moe-dispatch",
            kernel: case.kernel().to_string(),
            implementation: "ours",
            shape: case.shape(),
            bytes: case.bytes(),
            flops: case.flops(),
            cpu: Some(Box::new(move |rng| {
                moe_dispatch::cases::cpu_runner(&case, rng)
            })),
            #[cfg(feature = "cuda")]
            gpu: Some(gpu_items::moe(case)),
        });
    }
    for case in mla_attention::cases::decode_cases(quick) {
        let cpu: Option<CpuFactory> = (case.flops() <= MLA_CPU_MAX_FLOPS).then(|| {
            Box::new(move |rng: &mut Rng| mla_attention::cases::cpu_runner(&case, rng)) as _
        });
        items.push(BenchItem {
            suite: "mla-attention",
            kernel: case.kernel().to_string(),
            implementation: "ours",
            shape: case.shape(),
            bytes: case.bytes(),
            flops: case.flops(),
            cpu,
            #[cfg(feature = "cuda")]
            gpu: Some(gpu_items::mla_decode(case)),
        });
        if case.fp8_cache {
            // The FP8 cache's peer is our BF16-cache kernel on the same shape (bytes of the
            // FP8 case, so GB/s compares the two on the FP8 traffic; the speedup column is the
            // FP8 cache's gain).
            items.push(BenchItem {
                suite: "mla-attention",
                kernel: case.kernel().to_string(),
                implementation: mla_attention::cases::BF16_CACHE_PEER,
                shape: case.shape(),
                bytes: case.bytes(),
                flops: case.flops(),
                cpu: None,
                #[cfg(feature = "cuda")]
                gpu: Some(gpu_items::mla_decode(case.with_fp8_cache(false))),
            });
            continue;
        }
        // The naive cuBLAS peer of the same case (mla_attention::peer): a paged-KV gather, two
        // strided-batched GEMMs and a softmax, all four timed. GPU only; a CPU run lists it as
        // skipped. Same minimal bytes and flops as ours, so GB/s and TFLOP/s compare directly
        // (the peer moves far more: the gathered KV copy and the f32 scores).
        items.push(BenchItem {
            suite: "mla-attention",
            kernel: case.kernel().to_string(),
            implementation: mla_attention::cases::PEER,
            shape: case.shape(),
            bytes: case.bytes(),
            flops: case.flops(),
            cpu: None,
            #[cfg(feature = "cuda")]
            gpu: Some(gpu_items::mla_decode_peer(case)),
        });
    }
    items
}

/// Largest MLA decode the CPU path runs (the reference is single-threaded f32).
const MLA_CPU_MAX_FLOPS: f64 = 2e9;

#[cfg(feature = "cuda")]
pub mod gpu_items {
    use fp8_gemm::cases::Fp8Case;
    use kernels::cases::Case;
    use kernels::gpu::Gpu;
    use kernels::rng::Rng;

    use super::BenchItem;
    use crate::ceilings::CublasBf16;

    /// A prepared GPU run: one launch per call, and what was checked about its output.
    pub struct GpuRun<'g> {
        pub launch: Box<dyn FnMut() -> kernels::Result<()> + 'g>,
        /// Peers: the result of comparing their output with our reference.
        pub check: Option<String>,
    }

    /// Prepares the item on a device; `Ok(Err(why))` when it cannot run there (a peer library
    /// missing or refusing the configuration).
    pub type GpuFactory =
        Box<dyn for<'g> Fn(&'g Gpu, &mut Rng) -> kernels::Result<Result<GpuRun<'g>, String>>>;

    pub fn shared_op(case: Case) -> GpuFactory {
        Box::new(move |gpu, rng| {
            Ok(Ok(GpuRun {
                launch: kernels::cases::gpu_runner(gpu, &case, rng)?,
                check: None,
            }))
        })
    }

    pub fn fp8_gemm(case: Fp8Case) -> GpuFactory {
        Box::new(move |gpu, rng| {
            Ok(Ok(GpuRun {
                launch: fp8_gemm::cases::gpu_runner(gpu, &case, rng)?,
                check: None,
            }))
        })
    }

    pub fn moe(case: moe_dispatch::cases::MoeCase) -> GpuFactory {
        Box::new(move |gpu, rng| {
            Ok(Ok(GpuRun {
                launch: moe_dispatch::cases::gpu_runner(gpu, &case, rng)?,
                check: None,
            }))
        })
    }

    pub fn mla_decode(case: mla_attention::cases::DecodeCase) -> GpuFactory {
        Box::new(move |gpu, rng| {
            Ok(Ok(GpuRun {
                launch: mla_attention::cases::gpu_runner(gpu, &case, rng)?,
                check: None,
            }))
        })
    }

    /// The naive cuBLAS peer of an MLA decode case; its check is its output against the reference
    /// on the same inputs (our kernel's thresholds). Not measured when libcublas is missing.
    pub fn mla_decode_peer(case: mla_attention::cases::DecodeCase) -> GpuFactory {
        Box::new(move |gpu, rng| {
            Ok(
                mla_attention::cases::peer_run(gpu, &case, rng)?.map(|run| GpuRun {
                    launch: run.launch,
                    check: Some(run.check),
                }),
            )
        })
    }

    /// The peers of a dense FP8 GEMM shape: cuBLAS BF16 GEMM of the same M, N, K (what the
    /// layer would cost without FP8) and cuBLASLt's FP8 GEMM with the same block scaling.
    pub fn fp8_gemm_peers(case: Fp8Case) -> Vec<BenchItem> {
        let shape = case.shape();
        let (m, n, k) = (case.m, case.n, case.k);
        let bf16_bytes = 2.0 * (m * k + n * k + m * n) as f64;
        vec![
            BenchItem {
                suite: "fp8-gemm",
                kernel: case.kernel().to_string(),
                implementation: "cublas_bf16",
                shape: shape.clone(),
                bytes: bf16_bytes,
                flops: case.flops(),
                cpu: None,
                gpu: Some(Box::new(move |gpu, rng| {
                    let mut gemm = match CublasBf16::new(gpu, rng, (m, n, k))? {
                        Ok(g) => g,
                        Err(why) => return Ok(Err(why)),
                    };
                    gemm.run()?;
                    let rel = gemm.sampled_error(gpu, rng)?;
                    Ok(Ok(GpuRun {
                        launch: Box::new(move || gemm.run()),
                        check: Some(format!("sampled rel_l2 {rel:.2e} vs f64")),
                    }))
                })),
            },
            BenchItem {
                suite: "fp8-gemm",
                kernel: case.kernel().to_string(),
                implementation: "cublaslt_fp8_blockwise",
                shape,
                bytes: case.bytes(),
                flops: case.flops(),
                cpu: None,
                gpu: Some(Box::new(move |gpu, rng| {
                    let ops = fp8_gemm::cases::operands(&case, rng);
                    let (a, b) = (&ops.a[0], &ops.b[0]);
                    let mut peer = match crate::peers::cublaslt_fp8::CublasLtFp8::new(gpu, a, b)? {
                        Ok(p) => p,
                        Err(why) => return Ok(Err(why)),
                    };
                    peer.run()?;
                    let (rel, ok) = peer.check(gpu, a, b)?;
                    Ok(Ok(GpuRun {
                        launch: Box::new(move || peer.run()),
                        check: Some(format!(
                            "rel_l2 {rel:.2e} vs our f64 reference ({})",
                            if ok { "ok" } else { "WRONG" }
                        )),
                    }))
                })),
            },
        ]
    }
}
