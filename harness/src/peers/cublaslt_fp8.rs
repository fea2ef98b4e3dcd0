//! cuBLASLt's block-scaled FP8 GEMM (cuBLAS 12.9+, Hopper) as the peer of our dense FP8 GEMM:
//! `D[M,N] = A[M,K] . B[N,K]^T` with DeepSeek-V3 scaling (1x128 f32 scales on the activations,
//! 128x128 f32 scales on the weights), BF16 out, called through cudarc's raw cuBLASLt bindings.
//!
//! # Mapping onto cuBLASLt (column-major)
//!
//! FP8 on Hopper needs the "TN" form (A transposed, B not), so the operands swap roles:
//!
//! | cuBLASLt | ours                                   | layout                           |
//! |----------|----------------------------------------|----------------------------------|
//! | A, op T  | weights `[N, K]` row-major             | `K x N` col-major, `lda = K`     |
//! | B, op N  | activations `[M_pad, K]` row-major     | `K x M_pad` col-major, `ldb = K` |
//! | C = D    | output `[M_pad, N]` row-major (BF16)   | `N x M_pad` col-major, `ldd = N` |
//!
//! so cuBLAS's `m, n, k` are our `N, M_pad, K`. `M_pad = round_up(M, 4)` because with these scale
//! modes cuBLAS's `m` and `n` must be multiples of 4; padding rows have zero codes and zero scales
//! and their output rows are ignored. Compute type `CUBLAS_COMPUTE_32F`, scale type `CUDA_R_32F`,
//! alpha = 1, beta = 0 (host pointers), default epilogue, fast accumulation off (its default;
//! PyTorch refuses fast accumulation with these scale modes), 32 MiB workspace (NVIDIA's Hopper
//! recommendation, as cudarc's own `Workspace` uses).
//!
//! # Scale tensors (converted on the host in [`weight_scales_blk128`] / [`activation_scales_vec128`])
//!
//! Source: cuBLAS documentation, "128-element 1D and 128x128 2D Block Scaling For FP8 Data Types"
//! and its "Scaling factors layouts" subsection (§3.1.4.5 / §3.1.4.5.1 of the cuBLASLt chapter,
//! <https://docs.nvidia.com/cuda/cublas/#element-1d-and-128x128-2d-block-scaling-for-fp8-data-types>):
//! - `A_SCALE_MODE = BLK128x128_32F` with `B_SCALE_MODE = VEC128_32F` is a supported combination
//!   (only 2D x 2D is not); scales are f32, applied multiplicatively as-is; D must be
//!   16F/16BF/32F; scale start addresses 16-byte aligned; cuBLAS `M` and `N` multiples of 4.
//! - `VEC128_32F` on B: "N-major ... with shape N x L", `L = ceil(K/128)`: the scale of cuBLAS-B
//!   column `j` (our activation row) and K block `l` is at `l * M_pad + j`. This is exactly our
//!   block-major table `sa[kb * round_up(M, 4) + m]`; it is rebuilt from `Fp8Activations::scale`
//!   anyway so either activation scale layout works.
//! - `BLK128x128_32F` on A: "K-major and the stride between the consecutive columns must be a
//!   multiple of 4", shape `L4 x ceil(M/128)` with `L4 = round_up(L, 4)`: the scale of our weight
//!   row block `p` and K block `l` is at `p * L4 + l`. Our checkpoint table is the same order with
//!   stride `L`, so each row of `[ceil(N/128), K/128]` is copied into a stride-`L4` row, the pad
//!   entries zero.
//!
//! Cross-checks: NVIDIA's CUDALibrarySamples `cuBLASLt/LtBlk128x128Fp8Matmul` (TN, compute 32F,
//! scale type 32F, BF16 C/D, scale pointers set through `CUBLASLT_MATMUL_DESC_{A,B}_SCALE_POINTER`
//! after `..._{A,B}_SCALE_MODE`); PyTorch `aten/src/ATen/native/cuda/ScaledBlas.cpp`
//! (`is_blockwise_1x128_scaling`: scale `[M, K/128]` with strides `(1, M)`;
//! `is_blockwise_128x128_scaling`: `[N/128, K/128]` with strides `(round_up(K/128, 4), 1)`).
//!
//! [`CublasLtFp8::check`] compares sampled output rows (every column) with the exact f64 product,
//! so a misread scale layout (wrong stride, transposed table, swapped operands) shows up as a large
//! relative error rather than as a fast wrong peer.

use std::ffi::{c_int, c_void};
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::cublaslt::sys::cublasLtMatmulDescAttributes_t as Desc;
use cudarc::cublaslt::sys::cublasLtMatmulMatrixScale_t as ScaleMode;
use cudarc::cublaslt::sys::cublasStatus_t as Status;
use cudarc::driver::{CudaStream, DriverError};
use fp8_gemm::checks::GEMM_REL_TOL;
use fp8_gemm::layout::{weight_scale_len, K_BLOCK, N_ALIGN, W_BLOCK};
use fp8_gemm::reference::{gemm_nt_f64, Fp8Weights};
use half::bf16;
use kernels::error::check_len;
use kernels::gpu::{DeviceTensor, Gpu};
use kernels::reference::fp8_quant::Fp8Activations;
use kernels::{E4m3, Error, Result};

const OP: &str = "cublaslt_fp8";
/// `cublasLtGetVersion()` of cuBLAS 12.9 (major * 10000 + minor * 100 + patch), the first release
/// with `VEC128_32F` and `BLK128x128_32F`.
const MIN_VERSION: usize = 120_900;
/// cuBLAS's `m` and `n` must be multiples of this with the 128-element scale modes.
const MN_ALIGN: usize = 4;
/// The column stride of a `BLK128x128_32F` scale tensor must be a multiple of this.
const BLK_STRIDE_ALIGN: usize = 4;
/// Workspace offered to the heuristic and the launch (32 MiB, NVIDIA's Hopper recommendation).
const WORKSPACE_BYTES: usize = 32 << 20;
/// Algorithms requested from the heuristic; the first usable one is kept.
const HEURISTIC_CANDIDATES: usize = 8;
/// Output rows compared by [`CublasLtFp8::check`] (all of them for smaller M).
const SAMPLED_ROWS: usize = 16;

/// The cuBLASLt objects; each non-null one is destroyed on drop.
struct LtObjects {
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    /// cuBLAS A: our weights.
    layout_a: sys::cublasLtMatrixLayout_t,
    /// cuBLAS B: our activations.
    layout_b: sys::cublasLtMatrixLayout_t,
    /// cuBLAS C and D: our output.
    layout_d: sys::cublasLtMatrixLayout_t,
    pref: sys::cublasLtMatmulPreference_t,
}

impl LtObjects {
    fn empty() -> Self {
        LtObjects {
            handle: std::ptr::null_mut(),
            desc: std::ptr::null_mut(),
            layout_a: std::ptr::null_mut(),
            layout_b: std::ptr::null_mut(),
            layout_d: std::ptr::null_mut(),
            pref: std::ptr::null_mut(),
        }
    }
}

impl Drop for LtObjects {
    fn drop(&mut self) {
        // Statuses are ignored: nothing useful can be done about a failed destroy in a drop.
        // SAFETY: every non-null object was returned by its cublasLt*Create call, is owned by this
        // struct alone and is destroyed exactly once, here. No queued launch needs them: cuBLASLt
        // reads descriptors when cublasLtMatmul is called, not when the kernel runs (NVIDIA's
        // samples destroy them right after enqueueing).
        unsafe {
            if !self.pref.is_null() {
                let _ = lt::destroy_matmul_pref(self.pref);
            }
            for layout in [self.layout_d, self.layout_b, self.layout_a] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            if !self.handle.is_null() {
                let _ = lt::destroy_handle(self.handle);
            }
        }
    }
}

/// Device addresses read by every launch (the scale addresses live in the descriptor).
#[derive(Clone, Copy)]
struct Pointers {
    /// Our weight codes (cuBLAS A).
    weights: u64,
    /// Our activation codes (cuBLAS B).
    activations: u64,
    /// Our output (cuBLAS C and D).
    out: u64,
    workspace: u64,
}

/// cuBLASLt block-scaled FP8 GEMM set up for one problem: `D = A . B^T` in our layouts.
pub struct CublasLtFp8 {
    lt: LtObjects,
    algo: sys::cublasLtMatmulAlgo_t,
    stream: Arc<CudaStream>,
    ptrs: Pointers,
    version: usize,
    m: usize,
    n: usize,
    k: usize,
    /// Output `[M_pad, N]`, filled with NaN before the first launch.
    d: DeviceTensor<bf16>,
    /// Buffers whose addresses `ptrs` and the descriptor hold.
    _owned: Owned,
}

/// Device buffers kept alive for the launches (never read from the host).
struct Owned {
    /// Activation codes `[M_pad, K]`.
    _activations: DeviceTensor<E4m3>,
    /// Weight codes `[N, K]`.
    _weights: DeviceTensor<E4m3>,
    /// `VEC128_32F` activation scales `[K/128, M_pad]`.
    _activation_scales: DeviceTensor<f32>,
    /// `BLK128x128_32F` weight scales `[ceil(N/128), round_up(K/128, 4)]`.
    _weight_scales: DeviceTensor<f32>,
    /// `WORKSPACE_BYTES` of cuBLASLt workspace.
    _workspace: DeviceTensor<u32>,
}

impl std::fmt::Debug for CublasLtFp8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CublasLtFp8")
            .field("cublaslt_version", &self.version)
            .field("m", &self.m)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

impl CublasLtFp8 {
    /// Sets up `D = A . B^T` for our layouts: uploads the operands (activation rows padded to a
    /// multiple of 4), converts both scale tables to cuBLASLt's layouts and picks an algorithm.
    ///
    /// Returns `Ok(Err(reason))` when cuBLASLt is missing, predates 12.9, or says this
    /// configuration is unsupported (rejected scale mode, no heuristic result), so the bench can
    /// record "peer unavailable: reason"; `Err` for bad shapes and real failures.
    pub fn new(
        gpu: &Gpu,
        a: &Fp8Activations,
        b: &Fp8Weights,
    ) -> Result<std::result::Result<Self, String>> {
        let (m, n, k) = check_shapes(a, b)?;
        // SAFETY: only probes whether libcublasLt can be dlopen'ed; nothing is called.
        if !unsafe { sys::is_culib_present() } {
            return Ok(Err(
                "libcublasLt not found on the library path (scripts/gpu-run.sh adds \
                 the nvidia-cublas wheel's lib directory to LD_LIBRARY_PATH)"
                    .into(),
            ));
        }
        // SAFETY: a plain query without arguments; the library is present (checked above).
        let version = unsafe { sys::cublasLtGetVersion() };
        if version < MIN_VERSION {
            return Ok(Err(format!(
                "cuBLASLt {version} predates 12.9, which added the VEC128_32F / BLK128x128_32F \
                 FP8 scale modes"
            )));
        }

        // Host-side operands in cuBLASLt's layouts.
        let m_pad = m.next_multiple_of(MN_ALIGN);
        let mut codes = Vec::with_capacity(m_pad * k);
        codes.extend_from_slice(&a.q);
        codes.resize(m_pad * k, E4m3(0));
        let sa = activation_scales_vec128(a, m_pad);
        let sb = weight_scales_blk128(b);
        let (k_blocks, n_blocks) = (k / K_BLOCK, n.div_ceil(W_BLOCK));
        let l4 = k_blocks.next_multiple_of(BLK_STRIDE_ALIGN);

        let d_act = gpu.upload(&codes, &[m_pad, k])?;
        let d_wgt = gpu.upload(&b.q, &[n, k])?;
        let d_sa = gpu.upload(&sa, &[k_blocks, m_pad])?;
        let d_sb = gpu.upload(&sb, &[n_blocks, l4])?;
        let d = gpu.poisoned::<bf16>(&[m_pad, n])?;
        let workspace = gpu.zeros::<u32>(&[WORKSPACE_BYTES / 4])?;
        let ptrs = Pointers {
            weights: d_wgt.device_ptr(gpu),
            activations: d_act.device_ptr(gpu),
            out: d.device_ptr(gpu),
            workspace: workspace.device_ptr(gpu),
        };
        // cuBLASLt works on the thread's current context.
        gpu.context()
            .bind_to_thread()
            .map_err(bind_err("binding the context for cuBLASLt"))?;

        let mut objs = LtObjects::empty();
        objs.handle = lt::create_handle().map_err(cublas_err("cublasLtCreate"))?;
        objs.desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(cublas_err("cublasLtMatmulDescCreate"))?;
        let desc = objs.desc;
        let op_t = cublasOperation_t::CUBLAS_OP_T as i32;
        let op_n = cublasOperation_t::CUBLAS_OP_N as i32;
        // SAFETY: `desc` is live; TRANSA / TRANSB are int32_t attributes.
        unsafe {
            set_desc(desc, Desc::CUBLASLT_MATMUL_DESC_TRANSA, &op_t)
                .map_err(cublas_err("setting CUBLASLT_MATMUL_DESC_TRANSA"))?;
            set_desc(desc, Desc::CUBLASLT_MATMUL_DESC_TRANSB, &op_n)
                .map_err(cublas_err("setting CUBLASLT_MATMUL_DESC_TRANSB"))?;
        }
        let modes = [
            (
                Desc::CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
            ),
            (
                Desc::CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                ScaleMode::CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
            ),
        ];
        for (attr, mode) in modes {
            let value = mode as i32;
            // SAFETY: `desc` is live; the scale-mode attributes are int32_t.
            match unsafe { set_desc(desc, attr, &value) } {
                Ok(()) => {}
                Err(e) if is_unsupported(e.0) => {
                    return Ok(Err(format!(
                        "cuBLASLt {version} rejects {attr:?} = {mode:?}: {:?}",
                        e.0
                    )));
                }
                Err(e) => return Err(cublas_err(format!("setting {attr:?} = {mode:?}"))(e)),
            }
        }
        // cuBLAS A's scales are our weight scales, cuBLAS B's our activation scales.
        let scale_ptrs = [
            (
                Desc::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                d_sb.device_ptr(gpu),
            ),
            (
                Desc::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
                d_sa.device_ptr(gpu),
            ),
        ];
        for (attr, addr) in scale_ptrs {
            let ptr = addr as *const c_void;
            // SAFETY: `desc` is live; the scale pointers are `const void *` attributes. The
            // buffers are owned by the returned value, so the addresses outlive every launch.
            unsafe { set_desc(desc, attr, &ptr) }
                .map_err(cublas_err(format!("setting {attr:?}")))?;
        }

        let (e4m3, bf16_t) = (
            sys::cudaDataType::CUDA_R_8F_E4M3,
            sys::cudaDataType::CUDA_R_16BF,
        );
        objs.layout_a = lt::create_matrix_layout(e4m3, k as u64, n as u64, k as i64)
            .map_err(cublas_err("cublasLtMatrixLayoutCreate (A = weights)"))?;
        objs.layout_b = lt::create_matrix_layout(e4m3, k as u64, m_pad as u64, k as i64)
            .map_err(cublas_err("cublasLtMatrixLayoutCreate (B = activations)"))?;
        objs.layout_d = lt::create_matrix_layout(bf16_t, n as u64, m_pad as u64, n as i64)
            .map_err(cublas_err("cublasLtMatrixLayoutCreate (C = D = output)"))?;
        objs.pref =
            lt::create_matmul_pref().map_err(cublas_err("cublasLtMatmulPreferenceCreate"))?;
        let max_workspace = WORKSPACE_BYTES as u64;
        // SAFETY: `pref` is live; MAX_WORKSPACE_BYTES is a uint64_t attribute.
        unsafe {
            lt::set_matmul_pref_attribute(
                objs.pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&max_workspace as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        }
        .map_err(cublas_err(
            "setting CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES",
        ))?;

        // SAFETY: the heuristic result is plain data (integers, a float and a status enum whose
        // 0 is CUBLAS_STATUS_SUCCESS), so all-zero bytes are a valid value; cuBLASLt overwrites
        // the entries it returns.
        let mut results: [sys::cublasLtMatmulHeuristicResult_t; HEURISTIC_CANDIDATES] =
            unsafe { std::mem::zeroed() };
        let mut returned: c_int = 0;
        // SAFETY: every object is live; `results` has room for the requested count and
        // `returned` is a valid out-parameter.
        let status = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                objs.handle,
                desc,
                objs.layout_a,
                objs.layout_b,
                objs.layout_d,
                objs.layout_d,
                objs.pref,
                HEURISTIC_CANDIDATES as c_int,
                results.as_mut_ptr(),
                &mut returned,
            )
        };
        let shape = format!("M={m} (padded to {m_pad}) N={n} K={k}");
        match status {
            Status::CUBLAS_STATUS_SUCCESS => {}
            s if is_unsupported(s) => {
                return Ok(Err(format!(
                    "cuBLASLt {version}: cublasLtMatmulAlgoGetHeuristic returned {s:?} for {shape}"
                )));
            }
            s => {
                return Err(Error::Cublas(format!(
                    "cublasLtMatmulAlgoGetHeuristic failed for {shape}: {s:?}"
                )));
            }
        }
        let returned = usize::try_from(returned)
            .unwrap_or(0)
            .min(HEURISTIC_CANDIDATES);
        let Some(best) = results[..returned].iter().find(|r| {
            r.state == Status::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= WORKSPACE_BYTES
        }) else {
            return Ok(Err(format!(
                "cuBLASLt {version} has no algorithm for block-scaled FP8 (BLK128x128 x VEC128) \
                 at {shape}"
            )));
        };

        Ok(Ok(CublasLtFp8 {
            algo: best.algo,
            lt: objs,
            stream: gpu.stream().clone(),
            ptrs,
            version,
            m,
            n,
            k,
            d,
            _owned: Owned {
                _activations: d_act,
                _weights: d_wgt,
                _activation_scales: d_sa,
                _weight_scales: d_sb,
                _workspace: workspace,
            },
        }))
    }

    /// One launch on the `Gpu`'s stream; does not synchronize.
    pub fn run(&mut self) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(bind_err("binding the context for cublasLtMatmul"))?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let p = self.ptrs;
        // SAFETY: all cuBLASLt objects are live (owned by `self`); the layouts describe exactly
        // the device buffers behind `p` (also owned by `self`, allocated on this stream's
        // context): weights K x N (lda K), activations K x M_pad (ldb K), output N x M_pad
        // (ldd N), every allocation 256-byte aligned. alpha/beta are host f32 (the default
        // pointer mode, CUDA_R_32F scale type) read before the call returns; the workspace holds
        // WORKSPACE_BYTES >= the algorithm's requirement; C aliases D with beta = 0, which
        // cuBLASLt allows for identical layouts.
        unsafe {
            lt::matmul(
                self.lt.handle,
                self.lt.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                p.weights as *const c_void,
                self.lt.layout_a,
                p.activations as *const c_void,
                self.lt.layout_b,
                p.out as *const c_void,
                self.lt.layout_d,
                p.out as *mut c_void,
                self.lt.layout_d,
                &self.algo,
                p.workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(cublas_err("cublasLtMatmul"))
    }

    /// Downloads D (after a [`run`](Self::run)) and compares sampled rows, every column, with the
    /// exact f64 product of the same host operands. Returns (relative Frobenius error, passed)
    /// with passed = error <= [`GEMM_REL_TOL`]; NaN or unwritten outputs give an infinite error.
    pub fn check(&mut self, gpu: &Gpu, a: &Fp8Activations, b: &Fp8Weights) -> Result<(f64, bool)> {
        let shape = check_shapes(a, b)?;
        if shape != (self.m, self.n, self.k) {
            return Err(Error::shape(
                OP,
                format!(
                    "check got M, N, K = {shape:?}, set up for {:?}",
                    (self.m, self.n, self.k)
                ),
            ));
        }
        let n = self.n;
        let got = gpu.download(&self.d)?;
        let rows = sample_rows(self.m);
        let (y64, _) = gemm_nt_f64(&gather_rows(a, &rows), b)?;
        let (mut diff2, mut ref2) = (0.0f64, 0.0f64);
        for (i, &r) in rows.iter().enumerate() {
            let out = &got[r * n..(r + 1) * n];
            for (g, &expect) in out.iter().zip(&y64[i * n..(i + 1) * n]) {
                let err = f64::from(g.to_f32()) - expect;
                diff2 += if err.is_finite() {
                    err * err
                } else {
                    f64::INFINITY
                };
                ref2 += expect * expect;
            }
        }
        let rel = if ref2 > 0.0 {
            (diff2 / ref2).sqrt()
        } else if diff2 == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        Ok((rel, rel <= GEMM_REL_TOL))
    }
}

/// Validates the operands; returns (M, N, K).
fn check_shapes(a: &Fp8Activations, b: &Fp8Weights) -> Result<(usize, usize, usize)> {
    let (m, n, k) = (a.tokens, b.n, b.k);
    if m == 0 || n == 0 {
        return Err(Error::shape(
            OP,
            format!("M = {m} and N = {n} must be >= 1"),
        ));
    }
    if k == 0 || k % K_BLOCK != 0 || a.channels != k {
        return Err(Error::shape(
            OP,
            format!(
                "K must be a positive multiple of {K_BLOCK} and equal for both operands \
                 (activations {}, weights {k})",
                a.channels
            ),
        ));
    }
    if n % N_ALIGN != 0 {
        return Err(Error::shape(
            OP,
            format!("N = {n} must be a multiple of {N_ALIGN}"),
        ));
    }
    check_len(OP, "activation codes", a.q.len(), m * k)?;
    check_len(
        OP,
        "activation scales",
        a.scales.len(),
        Fp8Activations::scale_len(m, k, a.layout),
    )?;
    check_len(OP, "weight codes", b.q.len(), n * k)?;
    check_len(OP, "weight scales", b.scales.len(), weight_scale_len(n, k))?;
    Ok((m, n, k))
}

/// Activation scales for `VEC128_32F` on cuBLAS B: "N-major" `[M_pad x K/128]`, i.e. the scale of
/// row `j`, K block `l` at `l * m_pad + j`; padding rows 0.
fn activation_scales_vec128(a: &Fp8Activations, m_pad: usize) -> Vec<f32> {
    let k_blocks = a.channels / K_BLOCK;
    let mut table = vec![0.0f32; k_blocks * m_pad];
    for l in 0..k_blocks {
        for j in 0..a.tokens {
            table[l * m_pad + j] = a.scale(j, l);
        }
    }
    table
}

/// Weight scales for `BLK128x128_32F` on cuBLAS A: "K-major" `[round_up(K/128, 4) x ceil(N/128)]`,
/// i.e. the scale of row block `p`, K block `l` at `p * round_up(K/128, 4) + l`; pad entries 0.
fn weight_scales_blk128(b: &Fp8Weights) -> Vec<f32> {
    let k_blocks = b.k / K_BLOCK;
    let stride = k_blocks.next_multiple_of(BLK_STRIDE_ALIGN);
    let n_blocks = b.n.div_ceil(W_BLOCK);
    let mut table = vec![0.0f32; n_blocks * stride];
    for p in 0..n_blocks {
        table[p * stride..p * stride + k_blocks]
            .copy_from_slice(&b.scales[p * k_blocks..(p + 1) * k_blocks]);
    }
    table
}

/// Rows compared by `check`: all of them up to [`SAMPLED_ROWS`], else the first and last 4 and
/// evenly spaced rows in between.
fn sample_rows(m: usize) -> Vec<usize> {
    if m <= SAMPLED_ROWS {
        return (0..m).collect();
    }
    let inner = SAMPLED_ROWS - 8;
    let mut rows: Vec<usize> = (0..4).chain(m - 4..m).collect();
    rows.extend((1..=inner).map(|i| i * (m - 1) / (inner + 1)));
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// The given rows of `a` as their own activations (same scale layout).
fn gather_rows(a: &Fp8Activations, rows: &[usize]) -> Fp8Activations {
    let (tokens, channels, layout) = (rows.len(), a.channels, a.layout);
    let mut q = Vec::with_capacity(tokens * channels);
    let mut scales = vec![0.0f32; Fp8Activations::scale_len(tokens, channels, layout)];
    for (i, &r) in rows.iter().enumerate() {
        q.extend_from_slice(&a.q[r * channels..(r + 1) * channels]);
        for kb in 0..a.blocks() {
            scales[Fp8Activations::scale_index(tokens, channels, layout, i, kb)] = a.scale(r, kb);
        }
    }
    Fp8Activations {
        q,
        scales,
        tokens,
        channels,
        layout,
    }
}

/// Sets one matmul-descriptor attribute from a value of the attribute's C type.
///
/// # Safety
/// `desc` must be a live descriptor and `T` the attribute's C type as documented for
/// `cublasLtMatmulDescAttributes_t`.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: Desc,
    value: &T,
) -> std::result::Result<(), CublasError> {
    // SAFETY: forwarded to the caller; cuBLASLt copies size_of::<T>() bytes from `value`.
    unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            (value as *const T).cast(),
            std::mem::size_of::<T>(),
        )
    }
}

/// Statuses with which cuBLASLt refuses a configuration (an older library not knowing the scale
/// modes, or no kernel for this problem) rather than failing.
fn is_unsupported(status: Status) -> bool {
    matches!(
        status,
        Status::CUBLAS_STATUS_NOT_SUPPORTED
            | Status::CUBLAS_STATUS_INVALID_VALUE
            | Status::CUBLAS_STATUS_ARCH_MISMATCH
    )
}

fn cublas_err(call: impl Into<String>) -> impl FnOnce(CublasError) -> Error {
    let call = call.into();
    move |e| Error::Cublas(format!("{call} failed: {:?}", e.0))
}

fn bind_err(context: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |e| Error::Cuda {
        context: context.into(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fp8_gemm::inputs::{activations, weights, Draw};
    use kernels::rng::Rng;

    /// Both tables hold every scale where the cuBLAS layout formulas put it, zeros elsewhere.
    #[test]
    fn scale_tables_follow_the_documented_layouts() {
        let mut rng = Rng::new(7);
        // M = 5 pads to 8; K/128 = 5 pads to 8; N = 272 has a partial 128-row block.
        let (m, n, k) = (5, 272, 640);
        let a = activations(&mut rng, m, k, Draw::Codes);
        let b = weights(&mut rng, n, k, Draw::Codes);
        let (kb, m_pad, l4, nb) = (k / K_BLOCK, 8, 8, 3);

        let sa = activation_scales_vec128(&a, m_pad);
        assert_eq!(sa.len(), kb * m_pad);
        for l in 0..kb {
            for j in 0..m_pad {
                let want = if j < m { a.scale(j, l) } else { 0.0 };
                assert_eq!(sa[l * m_pad + j], want, "activation row {j}, K block {l}");
            }
        }

        let sb = weight_scales_blk128(&b);
        assert_eq!(sb.len(), nb * l4);
        for p in 0..nb {
            for l in 0..l4 {
                let want = if l < kb { b.scale(p * W_BLOCK, l) } else { 0.0 };
                assert_eq!(sb[p * l4 + l], want, "weight row block {p}, K block {l}");
            }
        }
    }

    #[test]
    fn sampled_rows_cover_both_ends() {
        assert_eq!(sample_rows(3), vec![0, 1, 2]);
        let rows = sample_rows(4096);
        assert!(rows.len() <= SAMPLED_ROWS);
        assert!(rows.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((rows[0], *rows.last().unwrap()), (0, 4095));
    }

    #[test]
    fn gathered_rows_keep_codes_and_scales() {
        let mut rng = Rng::new(3);
        let a = activations(&mut rng, 9, 256, Draw::Codes);
        let g = gather_rows(&a, &[1, 8]);
        assert_eq!(g.q[..256], a.q[256..512]);
        assert_eq!(g.q[256..], a.q[8 * 256..]);
        for kb in 0..2 {
            assert_eq!(g.scale(0, kb), a.scale(1, kb));
            assert_eq!(g.scale(1, kb), a.scale(8, kb));
        }
    }
}
