//! Launch wrappers of `cuda/mla_decode.cu`: MLA decode attention over the paged BF16 cache, the
//! contract of [`crate::reference::paged_decode`].
//!
//! A decode call is three launches on the `Gpu`'s stream, none of which synchronizes, so a decode
//! step can be captured in a CUDA graph:
//! 1. `mla_decode_plan` reads `cache_seqlens` on the device and writes the split-KV schedule into
//!    the [`DecodeWorkspace`] (which KV blocks of which sequences each CTA column walks);
//! 2. `mla_decode_bf16` computes every (query row tile, schedule part);
//! 3. `mla_decode_combine` merges the splits of sequences cut over several parts.
//!
//! The host checks every shape (errors name the argument); the values of `block_table` and
//! `cache_seqlens` are checked on the device: a block id outside `0..num_blocks` or a length
//! outside `S_q..=max_blocks * 64` records status code 6 in the caller's [`DeviceStatus`] (the
//! block's tokens are masked and nothing is read from it; the length is clamped), never an
//! out-of-bounds access. Callers that hold the tables on the host can check them first with
//! [`crate::reference::PagedShape::check_tables`].

use half::bf16;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu, LaunchConfig, PushKernelArg};
use kernels::{Error, Result};

use crate::cubins::MLA_DECODE;
use crate::reference::{BLOCK_SIZE, KV_DIM, KV_LORA_RANK, MAX_QUERY_LEN};

const OP: &str = "mla_decode";

/// Query rows (of the S_q * H rows of a sequence) per CTA.
pub const ROWS_PER_TILE: usize = 64;
/// Threads of the decode kernel.
const THREADS: u32 = 256;
/// Dynamic shared memory of the decode kernel: Q tile + 2 KV stages (64 x 576 BF16 each), the
/// P tile (64 x 64 BF16) and the row max / sum exchange; `mla_decode.cu` checks it on entry.
pub const SMEM_BYTES: u32 = (3 * ROWS_PER_TILE * KV_DIM * 2 + 64 * 64 * 2 + 2 * 2 * 64 * 4) as u32;
/// i32 per schedule part (begin sequence, block, split; end sequence, block).
const SCHED_INTS: usize = 5;

/// The per-shape device buffers of a decode call: the schedule and the split partials. Create one
/// per (batch, S_q, heads) and reuse it every step; its size depends on the device's SM count.
#[derive(Debug)]
pub struct DecodeWorkspace {
    batch: usize,
    s_q: usize,
    heads: usize,
    /// CTA columns of the decode grid (schedule parts).
    parts: usize,
    sched: DeviceTensor<i32>,
    split_offsets: DeviceTensor<i32>,
    lens: DeviceTensor<i32>,
    o_accum: DeviceTensor<f32>,
    lse_accum: DeviceTensor<f32>,
}

impl DecodeWorkspace {
    /// Buffers for `batch` sequences of `s_q` (1..=4) query tokens with `heads` heads.
    pub fn new(gpu: &Gpu, batch: usize, s_q: usize, heads: usize) -> Result<Self> {
        check_dims(batch, s_q, heads)?;
        let rows = s_q * heads;
        let tiles = rows.div_ceil(ROWS_PER_TILE);
        let sms = usize::try_from(gpu.info().multiprocessors)
            .unwrap_or(1)
            .max(1);
        Self::with_parts(gpu, batch, s_q, heads, (sms / tiles).max(1))
    }

    /// Like [`DecodeWorkspace::new`] with an explicit number of schedule parts (tests use it to
    /// force many splits per sequence, or none).
    pub fn with_parts(
        gpu: &Gpu,
        batch: usize,
        s_q: usize,
        heads: usize,
        parts: usize,
    ) -> Result<Self> {
        check_dims(batch, s_q, heads)?;
        if parts == 0 {
            return Err(Error::invalid(OP, "the schedule needs at least one part"));
        }
        let rows = s_q * heads;
        // Every part adds at most one split beyond one per sequence.
        let max_splits = batch + parts;
        let accum = checked_mul("the split partials", max_splits * rows, KV_LORA_RANK)?;
        as_i32("parts", parts)?;
        Ok(DecodeWorkspace {
            batch,
            s_q,
            heads,
            parts,
            sched: gpu.zeros(&[parts, SCHED_INTS])?,
            split_offsets: gpu.zeros(&[batch + 1])?,
            lens: gpu.zeros(&[batch])?,
            o_accum: gpu.zeros(&[accum])?,
            lse_accum: gpu.zeros(&[max_splits * rows])?,
        })
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn s_q(&self) -> usize {
        self.s_q
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    pub fn parts(&self) -> usize {
        self.parts
    }

    /// The schedule of the last [`plan`] (for tests): `[parts, 5]` i32 rows of (begin sequence,
    /// begin block, begin split, end sequence, end block exclusive), and the split offsets
    /// `[batch + 1]`.
    pub fn download_schedule(&self, gpu: &Gpu) -> Result<(Vec<i32>, Vec<i32>)> {
        Ok((
            gpu.download(&self.sched)?,
            gpu.download(&self.split_offsets)?,
        ))
    }
}

fn check_dims(batch: usize, s_q: usize, heads: usize) -> Result<()> {
    if !(1..=MAX_QUERY_LEN).contains(&s_q) {
        return Err(Error::invalid(
            OP,
            format!("S_q is {s_q}, must be in 1..={MAX_QUERY_LEN}"),
        ));
    }
    if heads == 0 {
        return Err(Error::invalid(OP, "heads is 0"));
    }
    if batch == 0 {
        return Err(Error::invalid(OP, "batch is 0"));
    }
    Ok(())
}

/// Writes the split-KV schedule of this step into `ws` from `cache_seqlens` `[batch]` (on the
/// device; no synchronization). `max_blocks` is the block table's width.
pub fn plan(
    gpu: &Gpu,
    ws: &mut DecodeWorkspace,
    cache_seqlens: &DeviceTensor<i32>,
    max_blocks: usize,
    status: &mut DeviceStatus,
) -> Result<()> {
    cache_seqlens.expect_shape(OP, "cache_seqlens", &[ws.batch])?;
    let batch = as_i32("batch", ws.batch)?;
    let s_q = as_i32("S_q", ws.s_q)?;
    let max_blocks_i = as_i32("max_blocks", max_blocks)?;
    as_i32(
        "max_blocks * 64",
        checked_mul("max_blocks * 64", max_blocks, BLOCK_SIZE)?,
    )?;
    let parts = as_i32("parts", ws.parts)?;
    let f = gpu.function(&MLA_DECODE, "mla_decode_plan")?;
    let (seq_p, sched_p, offs_p, lens_p, st_p) = (
        cache_seqlens.device_ptr(gpu),
        ws.sched.device_ptr(gpu),
        ws.split_offsets.device_ptr(gpu),
        ws.lens.device_ptr(gpu),
        status.word().device_ptr(gpu),
    );
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&seq_p)
        .arg(&batch)
        .arg(&s_q)
        .arg(&max_blocks_i)
        .arg(&parts)
        .arg(&sched_p)
        .arg(&offs_p)
        .arg(&lens_p)
        .arg(&st_p);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: (const int*, int x4, int* x4): the kernel's parameters. cache_seqlens has `batch`
    // entries; sched [parts, 5], split_offsets [batch + 1] and lens [batch] are the workspace's.
    unsafe { gpu.launch("mla_decode_plan", args, cfg) }
}

/// Decode attention with the schedule of the last [`plan`] on `ws` (same `cache_seqlens`).
///
/// - q `[batch, S_q, H, 576]` BF16, the packed absorbed query;
/// - cache `[num_blocks, 64, 576]` BF16;
/// - block_table `[batch, max_blocks]` i32;
/// - o_lat `[batch, S_q, H, 512]` BF16 and lse `[batch, S_q, H]` f32 (natural log), written.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    gpu: &Gpu,
    ws: &mut DecodeWorkspace,
    q: &DeviceTensor<bf16>,
    cache: &DeviceTensor<bf16>,
    block_table: &DeviceTensor<i32>,
    softmax_scale: f32,
    o_lat: &mut DeviceTensor<bf16>,
    lse: &mut DeviceTensor<f32>,
    status: &mut DeviceStatus,
) -> Result<()> {
    let (batch, s_q, heads) = (ws.batch, ws.s_q, ws.heads);
    q.expect_shape(OP, "q", &[batch, s_q, heads, KV_DIM])?;
    let num_blocks = match cache.shape() {
        &[n, BLOCK_SIZE, KV_DIM] => n,
        other => {
            return Err(Error::shape(
                OP,
                format!("cache must be [num_blocks, {BLOCK_SIZE}, {KV_DIM}], got {other:?}"),
            ))
        }
    };
    if num_blocks == 0 {
        return Err(Error::invalid(OP, "cache has 0 blocks"));
    }
    let max_blocks = match block_table.shape() {
        &[b, m] if b == batch && m > 0 => m,
        other => {
            return Err(Error::shape(
                OP,
                format!("block_table must be [batch = {batch}, max_blocks > 0], got {other:?}"),
            ))
        }
    };
    o_lat.expect_shape(OP, "o_lat", &[batch, s_q, heads, KV_LORA_RANK])?;
    lse.expect_shape(OP, "lse", &[batch, s_q, heads])?;
    if !softmax_scale.is_finite() {
        return Err(Error::invalid(
            OP,
            format!("softmax_scale is {softmax_scale}"),
        ));
    }
    as_i32(
        "batch * max_blocks",
        checked_mul("block_table", batch, max_blocks)?,
    )?;

    let rows = s_q * heads;
    let tiles = as_i32("row tiles", rows.div_ceil(ROWS_PER_TILE))? as u32;
    let parts = as_i32("parts", ws.parts)? as u32;
    let s_q_i = as_i32("S_q", s_q)?;
    let heads_i = as_i32("heads", heads)?;
    let rows_i = as_i32("S_q * H", rows)?;
    let max_blocks_i = as_i32("max_blocks", max_blocks)?;
    let num_blocks_i = as_i32("num_blocks", num_blocks)?;
    let scale_log2 = softmax_scale * std::f32::consts::LOG2_E;

    let f = gpu.function(&MLA_DECODE, "mla_decode_bf16")?;
    gpu.set_max_dynamic_smem(&f, SMEM_BYTES)?;
    let ptrs = [
        q.device_ptr(gpu),
        cache.device_ptr(gpu),
        block_table.device_ptr(gpu),
        ws.sched.device_ptr(gpu),
        ws.split_offsets.device_ptr(gpu),
        ws.lens.device_ptr(gpu),
        o_lat.device_ptr(gpu),
        lse.device_ptr(gpu),
        ws.o_accum.device_ptr(gpu),
        ws.lse_accum.device_ptr(gpu),
        status.word().device_ptr(gpu),
    ];
    for (what, p) in ["q", "cache", "o_lat", "o_accum"]
        .iter()
        .zip([ptrs[0], ptrs[1], ptrs[6], ptrs[8]])
    {
        if p % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!("{what} must be 16-byte aligned (device address {p:#x})"),
            ));
        }
    }
    let mut args = gpu.stream().launch_builder(&f);
    for p in &ptrs {
        args.arg(p);
    }
    args.arg(&s_q_i)
        .arg(&heads_i)
        .arg(&max_blocks_i)
        .arg(&num_blocks_i)
        .arg(&scale_log2);
    let cfg = LaunchConfig {
        grid_dim: (tiles, parts, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: SMEM_BYTES,
    };
    // SAFETY: 11 pointers, 4 int and a float: the kernel's parameters. Shapes were checked above:
    // q holds batch * S_q * H rows of 576 (rows past S_q * H of a tile are not read), the kernel
    // reads block_table[b, j] only for j < ceil(lens[b] / 64) <= max_blocks (the plan clamps the
    // lengths) and cache blocks only for ids in 0..num_blocks; o_lat / lse hold batch * S_q * H
    // rows; the workspace's partials hold (batch + parts) splits of S_q * H rows, the most the
    // plan creates; the shared-memory size is the kernel's (it traps otherwise).
    unsafe { gpu.launch("mla_decode_bf16", args, cfg) }?;

    let f = gpu.function(&MLA_DECODE, "mla_decode_combine")?;
    let (offs_p, acc_p, lacc_p, o_p, lse_p) = (ptrs[4], ptrs[8], ptrs[9], ptrs[6], ptrs[7]);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&offs_p)
        .arg(&acc_p)
        .arg(&lacc_p)
        .arg(&o_p)
        .arg(&lse_p)
        .arg(&rows_i);
    let batch_u = as_i32("batch", batch)? as u32;
    let cfg = LaunchConfig {
        grid_dim: (rows_i as u32, batch_u, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: (const int*, const float*, const float*, bf16*, float*, int); split_offsets has
    // batch + 1 entries, every split index it holds is below batch + parts, and the outputs hold
    // batch * S_q * H rows of 512 (128 threads x 4 columns).
    unsafe { gpu.launch("mla_decode_combine", args, cfg) }
}

/// [`plan`] then [`decode`]: the whole decode attention of one step.
#[allow(clippy::too_many_arguments)]
pub fn paged_decode(
    gpu: &Gpu,
    ws: &mut DecodeWorkspace,
    q: &DeviceTensor<bf16>,
    cache: &DeviceTensor<bf16>,
    block_table: &DeviceTensor<i32>,
    cache_seqlens: &DeviceTensor<i32>,
    softmax_scale: f32,
    o_lat: &mut DeviceTensor<bf16>,
    lse: &mut DeviceTensor<f32>,
    status: &mut DeviceStatus,
) -> Result<()> {
    let max_blocks = match block_table.shape() {
        &[_, m] => m,
        other => {
            return Err(Error::shape(
                OP,
                format!("block_table must be [batch, max_blocks], got {other:?}"),
            ))
        }
    };
    plan(gpu, ws, cache_seqlens, max_blocks, status)?;
    decode(
        gpu,
        ws,
        q,
        cache,
        block_table,
        softmax_scale,
        o_lat,
        lse,
        status,
    )
}

fn checked_mul(what: &str, x: usize, y: usize) -> Result<usize> {
    x.checked_mul(y)
        .ok_or_else(|| Error::invalid(OP, format!("{what}: {x} * {y} overflows")))
}

fn as_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(OP, format!("{what} = {v} does not fit in i32")))
}
