//! The two device ceilings every report carries, measured in the same run as the kernels: a large
//! device-to-device copy (bytes read + bytes written) and a BF16 GEMM through cuBLAS. The cuBLAS
//! GEMM is also the BF16 peer of the FP8 GEMM cases. (In the interpreter build, feature
//! `emulate`, there is no cuBLAS: `CublasBf16` is a stand-in that reports itself unavailable.)

#[cfg(not(feature = "emulate"))]
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
#[cfg(not(feature = "emulate"))]
use half::bf16;
#[cfg(not(feature = "emulate"))]
use kernels::gpu::DeviceTensor;
use kernels::gpu::Gpu;
use kernels::rng::Rng;
use kernels::{Error, Result};

use crate::bench::{Ceiling, COPY, GEMM};

/// Bytes in each copy buffer: far above L2 (50 MiB on H100), so the copy streams device memory.
const COPY_BYTES: usize = 1 << 30;
/// The GEMM ceiling's M = N = K.
const GEMM_DIM: usize = 8192;
/// Output entries recomputed on the host in f64 to check cuBLAS's product.
const GEMM_SAMPLES: usize = 64;

#[cfg(feature = "emulate")]
pub use crate::peers::unavailable::CublasBf16;

pub fn copy_bandwidth(gpu: &Gpu, rng: &mut Rng, warmup: usize, reps: usize) -> Result<Ceiling> {
    let n = COPY_BYTES / 4;
    let data: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
    let src = gpu.upload(&data, &[n])?;
    let mut dst = gpu.poisoned::<u32>(&[n])?;
    let stream = gpu.stream().clone();
    let timing = gpu.time(warmup, reps, || {
        stream
            .memcpy_dtod(src.slice(), dst.slice_mut())
            .map_err(|e| Error::Cuda {
                context: "cuMemcpyDtoDAsync".into(),
                detail: e.to_string(),
            })
    })?;
    let copied = gpu.download(&dst)?;
    let mismatches = copied.iter().zip(&data).filter(|(a, b)| a != b).count();
    let bytes = 2.0 * COPY_BYTES as f64;
    Ok(Ceiling {
        name: COPY.into(),
        shape: format!("{} MiB", COPY_BYTES >> 20),
        gb_per_s: Some(bytes / (timing.median_ms * 1e-3) / 1e9),
        tflop_per_s: None,
        timing: Some(timing),
        bytes,
        flops: 0.0,
        check: Some(format!("{mismatches} of {n} words differ from the source")),
        skipped: None,
    })
}

#[cfg(not(feature = "emulate"))]
fn cublas_err(what: &str) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error + '_ {
    move |e| Error::Cublas(format!("{what}: {e:?}"))
}

/// D[M,N] = A[M,K] . B[N,K]^T in BF16 with f32 accumulation through cuBLAS (the NT layout of our
/// FP8 GEMM). In cuBLAS's column-major terms: C(N x M) = B^T(op T) . A(op N), lda = ldb = K.
#[cfg(not(feature = "emulate"))]
pub struct CublasBf16 {
    blas: CudaBlas,
    cfg: GemmConfig<bf16>,
    a_host: Vec<bf16>,
    b_host: Vec<bf16>,
    a: DeviceTensor<bf16>,
    b: DeviceTensor<bf16>,
    d: DeviceTensor<bf16>,
    shape: (usize, usize, usize),
}

#[cfg(not(feature = "emulate"))]
impl CublasBf16 {
    /// Random N(0, 1) operands; `Ok(Err(why))` when libcublas cannot be loaded.
    pub fn new(
        gpu: &Gpu,
        rng: &mut Rng,
        (m, n, k): (usize, usize, usize),
    ) -> Result<std::result::Result<Self, String>> {
        // SAFETY: only probes whether libcublas can be dlopen'ed.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Ok(Err("libcublas was not found on the library path; \
                 scripts/gpu-run.sh adds the nvidia-cublas wheel's lib directory to LD_LIBRARY_PATH"
                .into()));
        }
        let a_host: Vec<bf16> = rng.normal_vec(m * k, 1.0);
        let b_host: Vec<bf16> = rng.normal_vec(n * k, 1.0);
        let a = gpu.upload(&a_host, &[m, k])?;
        let b = gpu.upload(&b_host, &[n, k])?;
        let d = gpu.poisoned::<bf16>(&[m, n])?;
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(cublas_err("creating a handle"))?;
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        Ok(Ok(CublasBf16 {
            blas,
            cfg,
            a_host,
            b_host,
            a,
            b,
            d,
            shape: (m, n, k),
        }))
    }

    /// One GEMM on the stream, no sync.
    pub fn run(&mut self) -> Result<()> {
        // SAFETY: a is [m, k], b is [n, k], d is [m, n], all contiguous, matching cfg.
        unsafe {
            self.blas
                .gemm(self.cfg, self.b.slice(), self.a.slice(), self.d.slice_mut())
        }
        .map_err(cublas_err("cublasGemmEx"))
    }

    /// Relative L2 error of `GEMM_SAMPLES` random output entries against f64, after a run.
    pub fn sampled_error(&self, gpu: &Gpu, rng: &mut Rng) -> Result<f64> {
        let (m, n, k) = self.shape;
        let out = gpu.download(&self.d)?;
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for _ in 0..GEMM_SAMPLES {
            let (i, j) = (rng.below(m as u64) as usize, rng.below(n as u64) as usize);
            let exact: f64 = (0..k)
                .map(|p| f64::from(self.a_host[i * k + p]) * f64::from(self.b_host[j * k + p]))
                .sum();
            diff += (f64::from(out[i * n + j]) - exact).powi(2);
            norm += exact.powi(2);
        }
        Ok((diff / norm).sqrt())
    }
}

/// BF16 output rounding alone is up to 2^-8 relative per entry; f32 accumulation adds far less.
pub const CUBLAS_BF16_TOL: f64 = 4e-3;

pub fn cublas_bf16_gemm(gpu: &Gpu, rng: &mut Rng, warmup: usize, reps: usize) -> Result<Ceiling> {
    let (m, n, k) = (GEMM_DIM, GEMM_DIM, GEMM_DIM);
    let shape = format!("{m}x{n}x{k}");
    let mut gemm = match CublasBf16::new(gpu, rng, (m, n, k))? {
        Ok(g) => g,
        Err(why) => return Ok(Ceiling::skipped(GEMM, shape, why)),
    };
    let timing = gpu.time(warmup, reps, || gemm.run())?;
    let rel = gemm.sampled_error(gpu, rng)?;
    let flops = 2.0 * (m * n * k) as f64;
    Ok(Ceiling {
        name: GEMM.into(),
        shape,
        gb_per_s: None,
        tflop_per_s: Some(flops / (timing.median_ms * 1e-3) / 1e12),
        timing: Some(timing),
        bytes: 2.0 * (m * k + n * k + m * n) as f64,
        flops,
        check: Some(format!(
            "rel_l2 {rel:.2e} over {GEMM_SAMPLES} sampled entries vs f64 ({})",
            if rel <= CUBLAS_BF16_TOL {
                "ok"
            } else {
                "WRONG"
            }
        )),
        skipped: None,
    })
}
