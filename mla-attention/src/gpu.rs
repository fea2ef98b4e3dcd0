//! Launch wrappers of `cuda/mla_decode.cu`: MLA decode attention over the paged cache, BF16
//! entries (the contract of [`crate::reference::paged_decode`]) or 656-byte FP8 entries (the
//! contract of [`crate::reference::paged_decode_fp8`], attention over the entries dequantized to
//! BF16).
//!
//! A decode call is three launches on the `Gpu`'s stream, none of which synchronizes, so a decode
//! step can be captured in a CUDA graph:
//! 1. `mla_decode_plan` reads `cache_seqlens` on the device and writes the split-KV schedule into
//!    the [`DecodeWorkspace`] (which KV blocks of which sequences each CTA column walks);
//! 2. `mla_decode_bf16` / `mla_decode_fp8` compute every (query row tile, schedule part) with
//!    wgmma (HGMMA) on BF16 operands;
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
use crate::reference::{BLOCK_SIZE, FP8_ENTRY_BYTES, KV_DIM, KV_LORA_RANK, MAX_CHUNK_LEN};

const OP: &str = "mla_decode";

/// Query rows (of the S_q * H rows of a sequence) per CTA.
pub const ROWS_PER_TILE: usize = 64;
/// Threads of the decode kernel.
const THREADS: u32 = 256;
/// One [64 rows, 576] BF16 tile in shared memory (the Q tile, a KV tile).
const TILE_BYTES: usize = ROWS_PER_TILE * KV_DIM * 2;
/// The P tile (64 x 64 BF16), the row max / sum exchange, and the slack that lets the kernel
/// align its tiles to 1024 bytes (dynamic shared memory is only 16-byte aligned).
const SMEM_COMMON: usize = 64 * 64 * 2 + 2 * 2 * 64 * 4 + 1024;
/// Dynamic shared memory of the BF16-cache decode kernel: the Q tile and 2 KV stages;
/// `mla_decode.cu` checks it on entry.
pub const SMEM_BYTES: u32 = (3 * TILE_BYTES + SMEM_COMMON) as u32;
/// Dynamic shared memory of the FP8-cache decode kernel: the Q tile, one BF16 KV tile and one
/// staging buffer of 64 raw 656-byte entries.
pub const SMEM_BYTES_FP8: u32 =
    (2 * TILE_BYTES + BLOCK_SIZE * FP8_ENTRY_BYTES + SMEM_COMMON) as u32;

/// The paged KV cache a decode call reads.
#[derive(Clone, Copy, Debug)]
pub enum PagedCache<'a> {
    /// `[num_blocks, 64, 576]` BF16 entries.
    Bf16(&'a DeviceTensor<bf16>),
    /// `[num_blocks, 64, 656]` bytes: FP8 entries (`reference::fp8_cache` layout).
    Fp8(&'a DeviceTensor<u8>),
}

/// An owned paged cache on the device, either layout; [`DeviceCache::view`] is what the decode
/// calls take.
#[derive(Debug)]
pub enum DeviceCache {
    Bf16(DeviceTensor<bf16>),
    Fp8(DeviceTensor<u8>),
}

impl DeviceCache {
    /// Uploads `num_blocks` blocks: the 656-byte FP8 entries `fp8_bytes` when given, else the
    /// BF16 entries `bf16_entries` (only the layout the kernel will read goes to the device).
    pub fn upload(
        gpu: &Gpu,
        num_blocks: usize,
        bf16_entries: &[bf16],
        fp8_bytes: Option<&[u8]>,
    ) -> Result<Self> {
        Ok(match fp8_bytes {
            Some(b) => DeviceCache::Fp8(gpu.upload(b, &[num_blocks, BLOCK_SIZE, FP8_ENTRY_BYTES])?),
            None => DeviceCache::Bf16(gpu.upload(bf16_entries, &[num_blocks, BLOCK_SIZE, KV_DIM])?),
        })
    }

    pub fn view(&self) -> PagedCache<'_> {
        match self {
            DeviceCache::Bf16(t) => PagedCache::Bf16(t),
            DeviceCache::Fp8(t) => PagedCache::Fp8(t),
        }
    }
}

impl PagedCache<'_> {
    /// Blocks in the cache, after checking its shape.
    fn num_blocks(&self) -> Result<usize> {
        let (shape, entry, what) = match self {
            PagedCache::Bf16(t) => (t.shape(), KV_DIM, "BF16 cache"),
            PagedCache::Fp8(t) => (t.shape(), FP8_ENTRY_BYTES, "FP8 cache (bytes)"),
        };
        match *shape {
            [0, BLOCK_SIZE, e] if e == entry => Err(Error::invalid(OP, "cache has 0 blocks")),
            [n, BLOCK_SIZE, e] if e == entry => Ok(n),
            _ => Err(Error::shape(
                OP,
                format!("{what} must be [num_blocks, {BLOCK_SIZE}, {entry}], got {shape:?}"),
            )),
        }
    }

    fn device_ptr(&self, gpu: &Gpu) -> u64 {
        match self {
            PagedCache::Bf16(t) => t.device_ptr(gpu),
            PagedCache::Fp8(t) => t.device_ptr(gpu),
        }
    }

    /// The kernel and its shared-memory size.
    fn kernel(&self) -> (&'static str, u32) {
        match self {
            PagedCache::Bf16(_) => ("mla_decode_bf16", SMEM_BYTES),
            PagedCache::Fp8(_) => ("mla_decode_fp8", SMEM_BYTES_FP8),
        }
    }
}
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
    /// The block-table width of the last [`plan`]: the lengths were clamped to it, so
    /// [`decode`] must get a table of that width.
    planned_max_blocks: Option<usize>,
    sched: DeviceTensor<i32>,
    split_offsets: DeviceTensor<i32>,
    lens: DeviceTensor<i32>,
    o_accum: DeviceTensor<f32>,
    lse_accum: DeviceTensor<f32>,
}

impl DecodeWorkspace {
    /// Buffers for `batch` sequences of `s_q` query tokens with `heads` heads: 1..=4 for decode,
    /// up to [`MAX_CHUNK_LEN`] for a prefill chunk.
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
        // Every part adds at most one split beyond one per sequence. With a single part no
        // sequence is split (the last part takes the rest) and the partials are never written:
        // a prefill chunk's many row tiles leave one part, so it gets no (large) partials.
        let max_splits = if parts > 1 { batch + parts } else { 0 };
        let accum = checked_mul("the split partials", max_splits * rows, KV_LORA_RANK)?;
        // A non-empty buffer either way, so the kernel always gets a valid, aligned pointer.
        let (accum, lse_accum) = (accum.max(4), (max_splits * rows).max(4));
        as_i32("parts", parts)?;
        Ok(DecodeWorkspace {
            batch,
            s_q,
            heads,
            parts,
            planned_max_blocks: None,
            sched: gpu.zeros(&[parts, SCHED_INTS])?,
            split_offsets: gpu.zeros(&[batch + 1])?,
            lens: gpu.zeros(&[batch])?,
            o_accum: gpu.zeros(&[accum])?,
            lse_accum: gpu.zeros(&[lse_accum])?,
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
    if !(1..=MAX_CHUNK_LEN).contains(&s_q) {
        return Err(Error::invalid(
            OP,
            format!("S_q is {s_q}, must be in 1..={MAX_CHUNK_LEN}"),
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
    ws.planned_max_blocks = Some(max_blocks);
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
/// - cache: [`PagedCache::Bf16`] `[num_blocks, 64, 576]`, or [`PagedCache::Fp8`]
///   `[num_blocks, 64, 656]` bytes (16-byte aligned), whose entries are dequantized to BF16 in
///   shared memory (as `reference::decode_cache_bf16`): attention over those BF16 entries,
///   reading 57% of the BF16 cache's bytes;
/// - block_table `[batch, max_blocks]` i32;
/// - o_lat `[batch, S_q, H, 512]` BF16 and lse `[batch, S_q, H]` f32 (natural log), written.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    gpu: &Gpu,
    ws: &mut DecodeWorkspace,
    q: &DeviceTensor<bf16>,
    cache: PagedCache<'_>,
    block_table: &DeviceTensor<i32>,
    softmax_scale: f32,
    o_lat: &mut DeviceTensor<bf16>,
    lse: &mut DeviceTensor<f32>,
    status: &mut DeviceStatus,
) -> Result<()> {
    let (batch, s_q, heads) = (ws.batch, ws.s_q, ws.heads);
    q.expect_shape(OP, "q", &[batch, s_q, heads, KV_DIM])?;
    let num_blocks = cache.num_blocks()?;
    let max_blocks = match block_table.shape() {
        &[b, m] if b == batch && m > 0 => m,
        other => {
            return Err(Error::shape(
                OP,
                format!("block_table must be [batch = {batch}, max_blocks > 0], got {other:?}"),
            ))
        }
    };
    if ws.planned_max_blocks != Some(max_blocks) {
        return Err(Error::invalid(
            OP,
            format!(
                "block_table has {max_blocks} columns but the workspace was planned for {:?} \
                 (call plan with this table's width first)",
                ws.planned_max_blocks
            ),
        ));
    }
    // The combine grid's y dimension is the batch (at most 65535 in CUDA).
    if batch > 65_535 {
        return Err(Error::invalid(
            OP,
            format!("batch {batch} exceeds 65535 sequences per call"),
        ));
    }
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

    let (kernel, smem_bytes) = cache.kernel();
    let f = gpu.function(&MLA_DECODE, kernel)?;
    gpu.set_max_dynamic_smem(&f, smem_bytes)?;
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
        shared_mem_bytes: smem_bytes,
    };
    // SAFETY: 11 pointers, 4 int and a float: the kernel's parameters (both kernels take the
    // same list; the cache pointer is BF16 or bytes as the kernel expects). Shapes were checked
    // above: q holds batch * S_q * H rows of 576 (rows past S_q * H of a tile are not read), the
    // kernel reads block_table[b, j] only for j < ceil(lens[b] / 64) <= max_blocks (the plan
    // clamps the lengths) and cache blocks only for ids in 0..num_blocks; o_lat / lse hold
    // batch * S_q * H rows; the workspace's partials hold (batch + parts) splits of S_q * H rows,
    // the most the plan creates (none with one part: then no sequence is split); the
    // shared-memory size is the kernel's (it traps otherwise).
    unsafe { gpu.launch(kernel, args, cfg) }?;

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

/// [`paged_decode_any`] over a BF16 cache.
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
    let cache = PagedCache::Bf16(cache);
    let args = (block_table, cache_seqlens, softmax_scale);
    paged_decode_any(gpu, ws, q, cache, args, o_lat, lse, status)
}

/// [`plan`] then [`decode`]: the whole decode attention of one step, either cache layout;
/// `tables` = (block_table, cache_seqlens, softmax_scale).
#[allow(clippy::too_many_arguments)]
pub fn paged_decode_any(
    gpu: &Gpu,
    ws: &mut DecodeWorkspace,
    q: &DeviceTensor<bf16>,
    cache: PagedCache<'_>,
    tables: (&DeviceTensor<i32>, &DeviceTensor<i32>, f32),
    o_lat: &mut DeviceTensor<bf16>,
    lse: &mut DeviceTensor<f32>,
    status: &mut DeviceStatus,
) -> Result<()> {
    let (block_table, cache_seqlens, softmax_scale) = tables;
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
