//! The naive peer of MLA decode: the same contract as [`crate::gpu::paged_decode`] (and
//! [`crate::reference::paged_decode`]) composed from cuBLAS strided-batched GEMMs and two small
//! kernels (`cuda/mla_naive.cu`), the way an implementation without paged attention would do it.
//! `harness bench` times it next to our kernel on every decode case.
//!
//! One call is four launches on the `Gpu`'s stream, all of them the peer's timed cost:
//! 1. gather: each sequence's paged KV blocks copied into a contiguous
//!    `kv [batch, L = max_blocks * 64, 576]` BF16 buffer through the block table (slots past the
//!    sequence's length zero-filled). A naive implementation has no paged attention, so this
//!    copy is part of what it costs, and it is timed with the rest;
//! 2. `scores [batch, S_q * H, L] = softmax_scale * Q . K^T`, one GEMM per sequence (cuBLAS
//!    batch = batch), BF16 inputs, f32 accumulation and **f32 output**. Not BF16: rounding a
//!    score to BF16 moves it by up to 2^-8 of its size (scaled scores reach |s| ~ 6 for the
//!    bench's N(0, 1) inputs, so ~2e-2 in the exponent), far outside the lse tolerance our kernel
//!    is held to ([`crate::checks::LSE_TOL`], 1e-4) and above the o_lat one; the peer is judged
//!    by the same thresholds, so it pays the f32 score traffic (4 bytes written and read per
//!    score, against 2 for BF16);
//! 3. softmax per query row in f32 with the causal mask among the S_q new tokens (query i sees
//!    positions `< len - S_q + i + 1`) and every position past the sequence's own length masked
//!    (ragged lengths are padded to L): P (BF16, already divided by the row sum) and lse (f32,
//!    natural log);
//! 4. `o_lat [batch, S_q * H, 512] = P . V`, V = the first 512 columns of the gathered KV (ld 576),
//!    BF16 output with f32 accumulation.
//!
//! Bad tables are handled like our kernel: a length outside `S_q..=max_blocks * 64` or a block
//! id outside the cache records status code 6 in the caller's [`DeviceStatus`] (lengths are
//! clamped, bad blocks zero-filled and never read).

//!
//! In the interpreter build (feature `emulate`) there is no cuBLAS: [`cublas_missing`] says so,
//! and the peer is never constructed (the bench records it as not measured).

#[cfg(not(feature = "emulate"))]
use std::ffi::c_void;

#[cfg(not(feature = "emulate"))]
use cudarc::cublas::result::{self as blas, CublasError};
#[cfg(not(feature = "emulate"))]
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t};
use cudarc::cublas::sys::{cublasOperation_t, cudaDataType_t};
#[cfg(not(feature = "emulate"))]
use cudarc::cublas::CudaBlas;
use half::bf16;
use kernels::checks::CheckReport;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu, LaunchConfig, PushKernelArg};
use kernels::rng::Rng;
use kernels::{Error, Result};

use crate::cases::DecodeInputs;
use crate::checks::compare_with_reference;
use crate::cubins::MLA_NAIVE;
use crate::reference::{BLOCK_SIZE, KV_DIM, KV_LORA_RANK, MAX_QUERY_LEN};

/// The peer's name in bench reports (`implementation`).
pub const NAME: &str = crate::cases::PEER;
/// What one timed call of the peer is, for report lines.
pub const TIMED: &str = "timed: paged-KV gather + Q.K^T batched GEMM + softmax + P.V batched GEMM";

const OP: &str = "mla_naive_cublas";
/// Threads of both helper kernels (`kThreads` in `mla_naive.cu`).
const THREADS: u32 = 256;

/// Why cuBLAS cannot be used here, or `None` when libcublas loads.
#[cfg(not(feature = "emulate"))]
pub fn cublas_missing() -> Option<String> {
    // SAFETY: only probes whether libcublas can be dlopen'ed.
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        None
    } else {
        Some(
            "libcublas was not found on the library path; scripts/gpu-run.sh adds the \
             nvidia-cublas wheel's lib directory to LD_LIBRARY_PATH"
                .into(),
        )
    }
}

/// Why cuBLAS cannot be used here: the emulated device has no vendor libraries.
#[cfg(feature = "emulate")]
pub fn cublas_missing() -> Option<String> {
    Some("cuBLAS is not available on the emulated device (interpreter build)".into())
}

/// The peer for one (batch, S_q, heads, max_blocks) shape: the cuBLAS handle and the
/// intermediate buffers (gathered KV, f32 scores, BF16 probabilities), reused every call.
#[derive(Debug)]
pub struct NaiveCublasDecode {
    #[cfg(not(feature = "emulate"))]
    blas: CudaBlas,
    batch: usize,
    s_q: usize,
    heads: usize,
    max_blocks: usize,
    /// `[batch, L, 576]`, L = max_blocks * 64.
    kv: DeviceTensor<bf16>,
    /// `[batch, S_q * H, L]`, scaled.
    scores: DeviceTensor<f32>,
    /// `[batch, S_q * H, L]`.
    probs: DeviceTensor<bf16>,
}

/// One strided-batched GEMM in cuBLAS's column-major terms (`C = alpha op(A) op(B)`), BF16 A and
/// B, f32 compute.
// Built but never handed to cuBLAS in the emulated build.
#[cfg_attr(feature = "emulate", allow(dead_code))]
struct BatchedGemm {
    what: &'static str,
    transa: cublasOperation_t,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: u64,
    lda: i32,
    stride_a: i64,
    b: u64,
    ldb: i32,
    stride_b: i64,
    c: u64,
    c_type: cudaDataType_t,
    ldc: i32,
    stride_c: i64,
    batch: i32,
}

impl NaiveCublasDecode {
    /// Buffers for `batch` sequences of `s_q` (1..=4) query tokens with `heads` heads over block
    /// tables `max_blocks` wide. `Ok(Err(why))` when libcublas cannot be loaded (the bench then
    /// records the peer as not measured).
    pub fn new(
        gpu: &Gpu,
        batch: usize,
        s_q: usize,
        heads: usize,
        max_blocks: usize,
    ) -> Result<std::result::Result<Self, String>> {
        if !(1..=MAX_QUERY_LEN).contains(&s_q) {
            return Err(Error::invalid(
                OP,
                format!("S_q is {s_q}, must be in 1..={MAX_QUERY_LEN}"),
            ));
        }
        for (what, v) in [
            ("batch", batch),
            ("heads", heads),
            ("max_blocks", max_blocks),
        ] {
            if v == 0 {
                return Err(Error::invalid(OP, format!("{what} is 0")));
            }
        }
        let l_max = checked_mul("max_blocks * 64", max_blocks, BLOCK_SIZE)?;
        let rows = s_q * heads;
        // Every dimension, leading dimension and batch count cuBLAS sees is an i32.
        for (what, v) in [
            ("batch", batch),
            ("S_q * H", rows),
            ("max_blocks * 64", l_max),
        ] {
            as_i32(what, v)?;
        }
        // The element counts of the buffers allocated below.
        checked_mul("the gathered KV", batch * l_max, KV_DIM)?;
        checked_mul("the scores", batch * rows, l_max)?;
        if let Some(why) = cublas_missing() {
            return Ok(Err(why));
        }
        #[cfg(not(feature = "emulate"))]
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(cublas_err("creating a handle"))?;
        Ok(Ok(NaiveCublasDecode {
            #[cfg(not(feature = "emulate"))]
            blas,
            batch,
            s_q,
            heads,
            max_blocks,
            kv: gpu.zeros(&[batch, l_max, KV_DIM])?,
            scores: gpu.zeros(&[batch, rows, l_max])?,
            probs: gpu.zeros(&[batch, rows, l_max])?,
        }))
    }

    /// Padded context length L of the gathered KV (max_blocks * 64).
    pub fn padded_len(&self) -> usize {
        self.max_blocks * BLOCK_SIZE
    }

    /// Device bytes of the intermediate buffers (gathered KV, scores, probabilities).
    pub fn workspace_bytes(&self) -> usize {
        self.kv.num_bytes() + self.scores.num_bytes() + self.probs.num_bytes()
    }

    /// Decode attention, same arguments and layouts as [`crate::gpu::paged_decode`]:
    ///
    /// - q `[batch, S_q, H, 576]` BF16;
    /// - cache `[num_blocks, 64, 576]` BF16;
    /// - block_table `[batch, max_blocks]` i32, cache_seqlens `[batch]` i32;
    /// - o_lat `[batch, S_q, H, 512]` BF16 and lse `[batch, S_q, H]` f32, written.
    ///
    /// Four launches on the `Gpu`'s stream, no synchronization.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &mut self,
        gpu: &Gpu,
        q: &DeviceTensor<bf16>,
        cache: &DeviceTensor<bf16>,
        block_table: &DeviceTensor<i32>,
        cache_seqlens: &DeviceTensor<i32>,
        softmax_scale: f32,
        o_lat: &mut DeviceTensor<bf16>,
        lse: &mut DeviceTensor<f32>,
        status: &mut DeviceStatus,
    ) -> Result<()> {
        let (batch, s_q, heads, max_blocks) = (self.batch, self.s_q, self.heads, self.max_blocks);
        q.expect_shape(OP, "q", &[batch, s_q, heads, KV_DIM])?;
        let num_blocks = match cache.shape() {
            &[n, BLOCK_SIZE, KV_DIM] if n > 0 => n,
            other => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "cache must be [num_blocks > 0, {BLOCK_SIZE}, {KV_DIM}], got {other:?}"
                    ),
                ))
            }
        };
        block_table.expect_shape(OP, "block_table", &[batch, max_blocks])?;
        cache_seqlens.expect_shape(OP, "cache_seqlens", &[batch])?;
        o_lat.expect_shape(OP, "o_lat", &[batch, s_q, heads, KV_LORA_RANK])?;
        lse.expect_shape(OP, "lse", &[batch, s_q, heads])?;
        if !softmax_scale.is_finite() {
            return Err(Error::invalid(
                OP,
                format!("softmax_scale is {softmax_scale}"),
            ));
        }
        let rows = s_q * heads;
        let l_max = self.padded_len();
        // Checked in `new`: all of these fit in i32.
        let (batch_i, s_q_i, heads_i, rows_i, l_max_i) = (
            batch as i32,
            s_q as i32,
            heads as i32,
            rows as i32,
            l_max as i32,
        );
        let max_blocks_i = max_blocks as i32;
        let num_blocks_i = as_i32("num_blocks", num_blocks)?;

        let (q_p, cache_p, table_p, lens_p) = (
            q.device_ptr(gpu),
            cache.device_ptr(gpu),
            block_table.device_ptr(gpu),
            cache_seqlens.device_ptr(gpu),
        );
        let (kv_p, scores_p, probs_p) = (
            self.kv.device_ptr(gpu),
            self.scores.device_ptr(gpu),
            self.probs.device_ptr(gpu),
        );
        let (o_p, lse_p, status_p) = (
            o_lat.device_ptr(gpu),
            lse.device_ptr(gpu),
            status.word().device_ptr(gpu),
        );
        if cache_p % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!("cache must be 16-byte aligned (device address {cache_p:#x})"),
            ));
        }

        // 1. Gather the paged blocks into the contiguous KV buffer.
        let f = gpu.function(&MLA_NAIVE, "mla_naive_gather")?;
        let mut args = gpu.stream().launch_builder(&f);
        args.arg(&cache_p)
            .arg(&table_p)
            .arg(&lens_p)
            .arg(&kv_p)
            .arg(&s_q_i)
            .arg(&max_blocks_i)
            .arg(&num_blocks_i)
            .arg(&status_p);
        let cfg = LaunchConfig {
            grid_dim: (max_blocks_i as u32, batch_i as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: (const bf16*, const int* x2, bf16*, int x3, int*): the kernel's parameters.
        // The table is [batch, max_blocks] and the lengths [batch] (checked above); the kernel
        // reads cache blocks only for ids in 0..num_blocks (16-byte aligned, 73728 bytes each)
        // and writes kv [batch, max_blocks * 64, 576], the buffer's shape.
        unsafe { gpu.launch("mla_naive_gather", args, cfg) }?;

        #[cfg(not(feature = "emulate"))]
        gpu.context().bind_to_thread().map_err(|e| Error::Cuda {
            context: "binding the context for cuBLAS".into(),
            detail: e.to_string(),
        })?;
        // 2. scores = scale * Q . K^T per sequence. Row-major scores [rows, L] are column-major
        //    [L, rows]: C (L x rows) = K (op T of the column-major [576, L] view, ld 576)
        //    . Q (column-major [576, rows], ld 576).
        self.gemm(BatchedGemm {
            what: "scores = Q . K^T (cublasGemmStridedBatchedEx)",
            transa: cublasOperation_t::CUBLAS_OP_T,
            m: l_max_i,
            n: rows_i,
            k: KV_DIM as i32,
            alpha: softmax_scale,
            a: kv_p,
            lda: KV_DIM as i32,
            stride_a: (l_max * KV_DIM) as i64,
            b: q_p,
            ldb: KV_DIM as i32,
            stride_b: (rows * KV_DIM) as i64,
            c: scores_p,
            c_type: cudaDataType_t::CUDA_R_32F,
            ldc: l_max_i,
            stride_c: (rows * l_max) as i64,
            batch: batch_i,
        })?;

        // 3. Masked softmax per row: P and lse.
        let f = gpu.function(&MLA_NAIVE, "mla_naive_softmax")?;
        let mut args = gpu.stream().launch_builder(&f);
        args.arg(&scores_p)
            .arg(&lens_p)
            .arg(&probs_p)
            .arg(&lse_p)
            .arg(&s_q_i)
            .arg(&heads_i)
            .arg(&l_max_i);
        let cfg = LaunchConfig {
            grid_dim: (rows_i as u32, batch_i as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: (const float*, const int*, bf16*, float*, int x3): the kernel's parameters.
        // scores and probs are [batch, S_q * H, L], lse [batch, S_q, H] (checked above), the
        // lengths [batch]; the kernel clamps every length into 0..=L.
        unsafe { gpu.launch("mla_naive_softmax", args, cfg) }?;

        // 4. o_lat = P . V per sequence. Row-major o [rows, 512] is column-major [512, rows]:
        //    C (512 x rows) = V (the first 512 rows of the column-major [576, L] view, ld 576)
        //    . P (column-major [L, rows], ld L).
        self.gemm(BatchedGemm {
            what: "o_lat = P . V (cublasGemmStridedBatchedEx)",
            transa: cublasOperation_t::CUBLAS_OP_N,
            m: KV_LORA_RANK as i32,
            n: rows_i,
            k: l_max_i,
            alpha: 1.0,
            a: kv_p,
            lda: KV_DIM as i32,
            stride_a: (l_max * KV_DIM) as i64,
            b: probs_p,
            ldb: l_max_i,
            stride_b: (rows * l_max) as i64,
            c: o_p,
            c_type: cudaDataType_t::CUDA_R_16BF,
            ldc: KV_LORA_RANK as i32,
            stride_c: (rows * KV_LORA_RANK) as i64,
            batch: batch_i,
        })
    }

    /// Never reached: the emulated build never constructs the peer.
    #[cfg(feature = "emulate")]
    fn gemm(&self, g: BatchedGemm) -> Result<()> {
        Err(Error::Cublas(format!(
            "{}: {}",
            g.what,
            cublas_missing().unwrap_or_default()
        )))
    }

    #[cfg(not(feature = "emulate"))]
    fn gemm(&self, g: BatchedGemm) -> Result<()> {
        let beta = 0.0f32;
        // SAFETY: the handle is live and bound to the `Gpu`'s stream; every pointer is a live
        // device buffer of that stream's context holding `batch` matrices of the given leading
        // dimensions and strides (the two callers above build them from buffers whose shapes
        // were checked); alpha and beta are host f32 (the default pointer mode and the f32
        // compute type) read before the call returns.
        unsafe {
            blas::gemm_strided_batched_ex(
                *self.blas.handle(),
                g.transa,
                cublasOperation_t::CUBLAS_OP_N,
                g.m,
                g.n,
                g.k,
                (&g.alpha as *const f32).cast(),
                g.a as *const c_void,
                cudaDataType_t::CUDA_R_16BF,
                g.lda,
                g.stride_a,
                g.b as *const c_void,
                cudaDataType_t::CUDA_R_16BF,
                g.ldb,
                g.stride_b,
                (&beta as *const f32).cast(),
                g.c as *mut c_void,
                g.c_type,
                g.ldc,
                g.stride_c,
                g.batch,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cublas_err(g.what))
    }
}

/// Device copies of one call's inputs and outputs for the peer, with the peer itself: what the
/// check and the bench run.
#[derive(Debug)]
pub struct PeerCall<'g> {
    gpu: &'g Gpu,
    peer: NaiveCublasDecode,
    q: DeviceTensor<bf16>,
    cache: DeviceTensor<bf16>,
    table: DeviceTensor<i32>,
    lens: DeviceTensor<i32>,
    softmax_scale: f32,
    o_lat: DeviceTensor<bf16>,
    lse: DeviceTensor<f32>,
    status: DeviceStatus,
}

impl<'g> PeerCall<'g> {
    /// Uploads `inp`; `Ok(Err(why))` when libcublas cannot be loaded.
    pub fn new(gpu: &'g Gpu, inp: &DecodeInputs) -> Result<std::result::Result<Self, String>> {
        let s = inp.shape;
        let peer = match NaiveCublasDecode::new(gpu, s.batch, s.q_len, inp.heads, s.max_blocks)? {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        Ok(Ok(PeerCall {
            gpu,
            peer,
            q: gpu.upload(&inp.q, &[s.batch, s.q_len, inp.heads, KV_DIM])?,
            cache: gpu.upload(&inp.cache, &[s.num_blocks, BLOCK_SIZE, KV_DIM])?,
            table: gpu.upload(&inp.block_table, &[s.batch, s.max_blocks])?,
            lens: gpu.upload(&inp.cache_seqlens, &[s.batch])?,
            softmax_scale: inp.softmax_scale,
            o_lat: gpu.poisoned(&[s.batch, s.q_len, inp.heads, KV_LORA_RANK])?,
            lse: gpu.poisoned(&[s.batch, s.q_len, inp.heads])?,
            status: DeviceStatus::new(gpu)?,
        }))
    }

    /// One peer call on the stream (no synchronization).
    pub fn run(&mut self) -> Result<()> {
        self.peer.decode(
            self.gpu,
            &self.q,
            &self.cache,
            &self.table,
            &self.lens,
            self.softmax_scale,
            &mut self.o_lat,
            &mut self.lse,
            &mut self.status,
        )
    }

    /// Poisons the outputs (NaN bytes), runs once, checks the status word and returns o_lat and
    /// lse on the host.
    pub fn run_poisoned(&mut self) -> Result<(Vec<bf16>, Vec<f32>)> {
        self.gpu.fill_bytes(&mut self.o_lat, 0xff)?;
        self.gpu.fill_bytes(&mut self.lse, 0xff)?;
        self.run()?;
        self.status.check(self.gpu, OP)?;
        Ok((
            self.gpu.download(&self.o_lat)?,
            self.gpu.download(&self.lse)?,
        ))
    }

    pub fn peer(&self) -> &NaiveCublasDecode {
        &self.peer
    }
}

/// What a peer check runs: sequence lengths (ragged allowed, each >= S_q), S_q, heads.
#[derive(Clone, Debug)]
pub struct PeerCheck {
    pub seqlens: Vec<usize>,
    pub s_q: usize,
    pub heads: usize,
    /// Every sequence's first block is the same cache block.
    pub shared_prefix: bool,
}

/// Runs the peer on fresh random inputs into poisoned outputs and holds it to our kernel's
/// thresholds against the reference. A missing libcublas is an error here: the check was asked
/// for on a GPU machine.
pub fn check_peer(gpu: &Gpu, rng: &mut Rng, c: &PeerCheck) -> Result<CheckReport> {
    let inp = DecodeInputs::random(rng, &c.seqlens, c.s_q, c.heads, c.shared_prefix, 1);
    let mut call = PeerCall::new(gpu, &inp)?.map_err(Error::Cublas)?;
    let (got_o, got_lse) = call.run_poisoned()?;
    let cmp = compare_with_reference(&inp, &got_o, &got_lse, rng)?;
    let lens = if c.seqlens.len() <= 8 {
        format!("{:?}", c.seqlens)
    } else {
        format!("{} seqs", c.seqlens.len())
    };
    let case = format!(
        "S_q {} H {} lens {lens}{} ({})",
        c.s_q,
        c.heads,
        if c.shared_prefix {
            " shared prefix"
        } else {
            ""
        },
        cmp.sample
    );
    Ok(cmp.report(&format!("mla_decode@{NAME}"), case))
}

/// Wrong shapes are errors that name the argument, before anything is launched.
pub fn check_peer_rejects_bad_shapes(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let mut failures = Vec::new();
    let inp = DecodeInputs::random(rng, &[10, 70], 2, 16, false, 0);
    let mut call = PeerCall::new(gpu, &inp)?.map_err(Error::Cublas)?;
    let s = inp.shape;
    let mut wrong_lse: DeviceTensor<f32> = gpu.poisoned(&[s.batch, s.q_len, 8])?;
    let err = call.peer.decode(
        gpu,
        &call.q,
        &call.cache,
        &call.table,
        &call.lens,
        inp.softmax_scale,
        &mut call.o_lat,
        &mut wrong_lse,
        &mut call.status,
    );
    if !matches!(&err, Err(Error::Shape { detail, .. }) if detail.contains("lse")) {
        failures.push(format!("wrong lse shape: {err:?}"));
    }
    let narrow_table = gpu.upload(&vec![0i32; s.batch], &[s.batch, 1])?;
    let err = call.peer.decode(
        gpu,
        &call.q,
        &call.cache,
        &narrow_table,
        &call.lens,
        inp.softmax_scale,
        &mut call.o_lat,
        &mut call.lse,
        &mut call.status,
    );
    if !matches!(&err, Err(Error::Shape { detail, .. }) if detail.contains("block_table")) {
        failures.push(format!(
            "block_table narrower than the peer's max_blocks: {err:?}"
        ));
    }
    if NaiveCublasDecode::new(gpu, 1, 5, 16, 1).is_ok() {
        failures.push("S_q = 5 accepted".into());
    }
    Ok(CheckReport::new(
        &format!("mla_decode@{NAME}"),
        "bad shapes".into(),
        "failures",
        failures.len() as f64,
        0.0,
    )
    .require(failures.is_empty(), failures.join("; ")))
}

/// The peer's cases for `harness verify`: ragged lengths, S_q 1..=4, a shared prefix, a long
/// context, and the shape errors. `quick` drops the long context.
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<Result<CheckReport>> {
    let mut rng = Rng::fresh();
    let rng = &mut rng;
    let mut cases = peer_check_cases();
    // The long-context case stays off the interpreter build ([`kernels::EMULATED`]).
    if !quick && !kernels::EMULATED {
        cases.push(PeerCheck {
            seqlens: vec![8192, 4, 3000, 64],
            s_q: 4,
            heads: 128,
            shared_prefix: false,
        });
    }
    let mut out: Vec<Result<CheckReport>> = cases.iter().map(|c| check_peer(gpu, rng, c)).collect();
    out.push(check_peer_rejects_bad_shapes(gpu, rng));
    out
}

/// The fixed shapes the peer is checked on (GPU tests and `harness verify`): ragged lengths
/// around block boundaries, S_q = 2 and 4, a shared prefix block, H = 128 and small H.
pub fn peer_check_cases() -> Vec<PeerCheck> {
    let case = |seqlens: Vec<usize>, s_q, heads, shared_prefix| PeerCheck {
        seqlens,
        s_q,
        heads,
        shared_prefix,
    };
    // The interpreter build ([`kernels::EMULATED`]) shortens the long contexts.
    let (long, longest) = if kernels::EMULATED {
        (300, 700)
    } else {
        (1000, 4096)
    };
    vec![
        case(vec![1], 1, 128, false),
        case(vec![1, 63, 64, 65, 130, 700], 1, 128, false),
        case(vec![2, 64, 100, long], 2, 16, false),
        case(vec![64, 65, 100], 2, 128, true),
        case(vec![4, 63, 64, 65, 127, 128, 129, 200], 4, 64, false),
        case(vec![longest], 1, 128, false),
    ]
}

fn checked_mul(what: &str, x: usize, y: usize) -> Result<usize> {
    x.checked_mul(y)
        .ok_or_else(|| Error::invalid(OP, format!("{what}: {x} * {y} overflows")))
}

fn as_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(OP, format!("{what} = {v} does not fit in i32")))
}

#[cfg(not(feature = "emulate"))]
fn cublas_err(call: &'static str) -> impl FnOnce(CublasError) -> Error {
    move |e| Error::Cublas(format!("{call} failed: {:?}", e.0))
}
