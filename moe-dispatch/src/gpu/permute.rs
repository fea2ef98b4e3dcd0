//! Launch wrappers of `cuda/permute.cu`: expert layouts built on the device from `topk_ids`,
//! dispatch of BF16 and FP8 token rows into the contiguous and masked layouts, and combine.
//!
//! Everything is enqueued on the `Gpu`'s stream without a host round trip (CUDA-graph friendly):
//! buffer sizes depend only on (T, K, E, align / m_max). The contract is
//! [`crate::reference::permute`]; differences on the device, all documented there or here:
//! - the contiguous buffers have [`contiguous_rows_bound`] rows (`rows_cap`); rows at or past
//!   `offsets[E]` are padding too (`m_indices = -1`), so the grouped GEMM runs over `rows_cap`
//!   rows and skips those tiles;
//! - dispatch writes only the rows pairs map to: padding rows (codes, BF16 values and their
//!   scale entries) are left untouched, not zeroed (the GEMM never writes their outputs and
//!   combine never reads them);
//! - bad input cannot fault: an expert id outside `0..E`, a masked expert over `m_max` or a slot
//!   outside the rows records status code 5 in `status` and that pair is dropped (slot -1; the
//!   masked count is clamped to `m_max`). Check it with `status.check` when synchronizing anyway.
//!
//! Combine is bit-exact with [`crate::reference::permute::combine`] (same f32 operations in the
//! same order, no FMA).

use half::bf16;
use kernels::dtype::E4m3;
use kernels::error::{Error, Result};
use kernels::gpu::{grid_1d, DeviceStatus, DeviceTensor, Gpu, PushKernelArg};
use kernels::ops::Fp8Buffers;
use kernels::reference::fp8_quant::{Fp8Activations, ScaleLayout, BLOCK_MAJOR_ALIGN, FP8_BLOCK};

use crate::cubins::PERMUTE;
pub use crate::reference::permute::contiguous_rows_bound;

/// Most experts one layout supports (shared-memory tables of `cuda/permute.cu`).
pub const MAX_EXPERTS: usize = 512;
/// Largest top-k supported by dispatch and combine (`kMaxTopK`).
pub const MAX_TOP_K: usize = 256;
/// Pairs per CTA of `moe_layout_rank` (its block size, `kTile`).
const TILE: usize = 1024;
const FINISH_THREADS: usize = 256;
const DISPATCH_THREADS: u32 = 128;
const COMBINE_THREADS: u32 = 128;

fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit in i32")))
}

fn check_common(op: &'static str, tokens: usize, top_k: usize, num_experts: usize) -> Result<()> {
    if top_k == 0 || top_k > MAX_TOP_K {
        return Err(Error::invalid(
            op,
            format!("top_k = {top_k} must be in 1..={MAX_TOP_K}"),
        ));
    }
    if num_experts == 0 || num_experts > MAX_EXPERTS {
        return Err(Error::invalid(
            op,
            format!("num_experts = {num_experts} must be in 1..={MAX_EXPERTS}"),
        ));
    }
    let pairs = tokens
        .checked_mul(top_k)
        .ok_or_else(|| Error::invalid(op, format!("{tokens} tokens x top_k {top_k} overflows")))?;
    as_i32(op, "tokens * top_k", pairs)?;
    Ok(())
}

/// `[T, K]` from a `topk_ids` / `slot` / `topk_weights` tensor.
fn pairs_shape<T: kernels::gpu::DeviceElement>(
    op: &'static str,
    what: &str,
    t: &DeviceTensor<T>,
) -> Result<(usize, usize)> {
    let &[tokens, top_k] = t.shape() else {
        return Err(Error::shape(
            op,
            format!("{what} must be [tokens, top_k], got {:?}", t.shape()),
        ));
    };
    Ok((tokens, top_k))
}

/// The expert-contiguous layout on the device (see [`crate::reference::permute::ContiguousLayout`]).
#[derive(Debug)]
pub struct DeviceContiguousLayout {
    pub tokens: usize,
    pub top_k: usize,
    pub num_experts: usize,
    pub align: usize,
    /// Rows of the dispatched buffers: [`contiguous_rows_bound`]`(tokens, top_k, E, align)`.
    pub rows_cap: usize,
    /// `[E]` rows routed to each expert.
    pub counts: DeviceTensor<i32>,
    /// `[E + 1]` first row of each expert; `offsets[E]` is the number of rows in use.
    pub offsets: DeviceTensor<i32>,
    /// `[rows_cap]` each row's expert, -1 for padding (including every row past `offsets[E]`).
    pub m_indices: DeviceTensor<i32>,
    /// `[tokens, top_k]` destination row of each pair (-1: dropped, status recorded).
    pub slot: DeviceTensor<i32>,
    /// `[tiles, E]` scratch of the layout kernels.
    tile_hist: DeviceTensor<i32>,
}

impl DeviceContiguousLayout {
    /// Allocates the layout buffers for `tokens` tokens (groups aligned to `align` rows:
    /// `fp8_gemm::GROUPED_M_ALIGN` for the grouped GEMM).
    pub fn new(
        gpu: &Gpu,
        tokens: usize,
        top_k: usize,
        num_experts: usize,
        align: usize,
    ) -> Result<Self> {
        const OP: &str = "DeviceContiguousLayout::new";
        check_common(OP, tokens, top_k, num_experts)?;
        if align == 0 {
            return Err(Error::invalid(OP, "align is 0"));
        }
        as_i32(OP, "align", align)?;
        let rows_cap = contiguous_rows_bound(tokens, top_k, num_experts, align);
        as_i32(OP, "rows_cap", rows_cap.next_multiple_of(BLOCK_MAJOR_ALIGN))?;
        let tiles = (tokens * top_k).div_ceil(TILE);
        Ok(DeviceContiguousLayout {
            tokens,
            top_k,
            num_experts,
            align,
            rows_cap,
            counts: gpu.zeros(&[num_experts])?,
            offsets: gpu.zeros(&[num_experts + 1])?,
            m_indices: gpu.zeros(&[rows_cap])?,
            slot: gpu.zeros(&[tokens, top_k])?,
            tile_hist: gpu.zeros(&[tiles, num_experts])?,
        })
    }
}

/// The masked layout `[E, m_max]` on the device (see [`crate::reference::permute::MaskedLayout`]).
#[derive(Debug)]
pub struct DeviceMaskedLayout {
    pub tokens: usize,
    pub top_k: usize,
    pub num_experts: usize,
    pub m_max: usize,
    /// `[E]` rows of each expert, clamped to `m_max`: the masked GEMM's `masked_m`.
    pub counts: DeviceTensor<i32>,
    /// `[tokens, top_k]` destination row (`e * m_max + i`) of each pair (-1: dropped).
    pub slot: DeviceTensor<i32>,
    tile_hist: DeviceTensor<i32>,
}

impl DeviceMaskedLayout {
    pub fn new(
        gpu: &Gpu,
        tokens: usize,
        top_k: usize,
        num_experts: usize,
        m_max: usize,
    ) -> Result<Self> {
        const OP: &str = "DeviceMaskedLayout::new";
        check_common(OP, tokens, top_k, num_experts)?;
        let rows = num_experts
            .checked_mul(m_max.next_multiple_of(BLOCK_MAJOR_ALIGN))
            .ok_or_else(|| Error::invalid(OP, "num_experts * m_max overflows"))?;
        as_i32(OP, "num_experts * m_max", rows)?;
        let tiles = (tokens * top_k).div_ceil(TILE);
        Ok(DeviceMaskedLayout {
            tokens,
            top_k,
            num_experts,
            m_max,
            counts: gpu.zeros(&[num_experts])?,
            slot: gpu.zeros(&[tokens, top_k])?,
            tile_hist: gpu.zeros(&[tiles, num_experts])?,
        })
    }

    /// Rows of the dispatched buffers: `E * m_max`.
    pub fn rows(&self) -> usize {
        self.num_experts * self.m_max
    }
}

/// The pointers and sizes `launch_layout` needs, from either layout.
struct LayoutArgs<'a> {
    op: &'static str,
    tokens: usize,
    top_k: usize,
    num_experts: usize,
    masked: bool,
    align: usize,
    m_max: usize,
    rows_cap: usize,
    counts: &'a DeviceTensor<i32>,
    offsets: Option<&'a DeviceTensor<i32>>,
    m_indices: Option<&'a DeviceTensor<i32>>,
    slot: &'a DeviceTensor<i32>,
    tile_hist: &'a DeviceTensor<i32>,
}

fn launch_layout(
    gpu: &Gpu,
    topk_ids: &DeviceTensor<i32>,
    a: LayoutArgs<'_>,
    status: &mut DeviceStatus,
) -> Result<()> {
    let op = a.op;
    topk_ids.expect_shape(op, "topk_ids", &[a.tokens, a.top_k])?;
    let pairs = a.tokens * a.top_k;
    let tiles = pairs.div_ceil(TILE);
    let (pairs_i, e_i) = (
        as_i32(op, "pairs", pairs)?,
        as_i32(op, "num_experts", a.num_experts)?,
    );
    let (masked_i, align_i, m_max_i) = (
        i32::from(a.masked),
        as_i32(op, "align", a.align.max(1))?,
        as_i32(op, "m_max", a.m_max)?,
    );
    let (rows_cap_i, tiles_i) = (
        as_i32(op, "rows_cap", a.rows_cap)?,
        as_i32(op, "tiles", tiles)?,
    );
    let (ids_p, slot_p, hist_p, counts_p, status_p) = (
        topk_ids.device_ptr(gpu),
        a.slot.device_ptr(gpu),
        a.tile_hist.device_ptr(gpu),
        a.counts.device_ptr(gpu),
        status.word().device_ptr(gpu),
    );
    let offsets_p = a.offsets.map_or(0u64, |t| t.device_ptr(gpu));
    let m_indices_p = a.m_indices.map_or(0u64, |t| t.device_ptr(gpu));

    if tiles > 0 {
        let f = gpu.function(&PERMUTE, "moe_layout_rank")?;
        let mut args = gpu.stream().launch_builder(&f);
        args.arg(&ids_p)
            .arg(&pairs_i)
            .arg(&e_i)
            .arg(&slot_p)
            .arg(&hist_p)
            .arg(&status_p);
        // SAFETY: topk_ids and slot hold `pairs` i32, tile_hist [tiles, E]; E <= kMaxExperts
        // (checked when the layout was allocated); the block is exactly kTile threads.
        unsafe {
            gpu.launch(
                "moe_layout_rank",
                args,
                grid_1d(tiles_i as u32, TILE as u32, 0),
            )?;
        }
    }

    let f = gpu.function(&PERMUTE, "moe_layout_scan")?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&hist_p)
        .arg(&tiles_i)
        .arg(&e_i)
        .arg(&masked_i)
        .arg(&align_i)
        .arg(&m_max_i)
        .arg(&counts_p)
        .arg(&offsets_p)
        .arg(&status_p);
    // SAFETY: one CTA of kMaxExperts threads over tile_hist [tiles, E], counts [E] and (contiguous
    // only, non-null there) offsets [E + 1].
    unsafe {
        gpu.launch("moe_layout_scan", args, grid_1d(1, MAX_EXPERTS as u32, 0))?;
    }

    let work = pairs.max(if a.masked { 0 } else { a.rows_cap });
    if work > 0 {
        let f = gpu.function(&PERMUTE, "moe_layout_finish")?;
        let mut args = gpu.stream().launch_builder(&f);
        args.arg(&ids_p)
            .arg(&pairs_i)
            .arg(&hist_p)
            .arg(&e_i)
            .arg(&masked_i)
            .arg(&m_max_i)
            .arg(&slot_p)
            .arg(&counts_p)
            .arg(&offsets_p)
            .arg(&m_indices_p)
            .arg(&rows_cap_i);
        let blocks = as_i32(op, "grid", work.div_ceil(FINISH_THREADS))? as u32;
        // SAFETY: the grid covers max(pairs, rows_cap) indices, each bounds-checked in the kernel
        // against pairs (ids, slot) and rows_cap (m_indices, null for the masked layout).
        unsafe {
            gpu.launch(
                "moe_layout_finish",
                args,
                grid_1d(blocks, FINISH_THREADS as u32, 0),
            )?;
        }
    }
    Ok(())
}

/// Builds the contiguous layout of `topk_ids` (`[tokens, top_k]`, i32) into `layout`: counts,
/// aligned offsets, m_indices and slot, with no host round trip.
pub fn contiguous_layout(
    gpu: &Gpu,
    topk_ids: &DeviceTensor<i32>,
    layout: &mut DeviceContiguousLayout,
    status: &mut DeviceStatus,
) -> Result<()> {
    let l = &*layout;
    launch_layout(
        gpu,
        topk_ids,
        LayoutArgs {
            op: "contiguous_layout",
            tokens: l.tokens,
            top_k: l.top_k,
            num_experts: l.num_experts,
            masked: false,
            align: l.align,
            m_max: 0,
            rows_cap: l.rows_cap,
            counts: &l.counts,
            offsets: Some(&l.offsets),
            m_indices: Some(&l.m_indices),
            slot: &l.slot,
            tile_hist: &l.tile_hist,
        },
        status,
    )
}

/// Builds the masked layout of `topk_ids` (`[tokens, top_k]`, i32) into `layout`: counts (the
/// GEMM's `masked_m`) and slot. An expert over `m_max` records status code 5, keeps its first
/// `m_max` pairs (in (t, k) order) and drops the rest.
pub fn masked_layout(
    gpu: &Gpu,
    topk_ids: &DeviceTensor<i32>,
    layout: &mut DeviceMaskedLayout,
    status: &mut DeviceStatus,
) -> Result<()> {
    let l = &*layout;
    launch_layout(
        gpu,
        topk_ids,
        LayoutArgs {
            op: "masked_layout",
            tokens: l.tokens,
            top_k: l.top_k,
            num_experts: l.num_experts,
            masked: true,
            align: 1,
            m_max: l.m_max,
            rows_cap: 0,
            counts: &l.counts,
            offsets: None,
            m_indices: None,
            slot: &l.slot,
            tile_hist: &l.tile_hist,
        },
        status,
    )
}

/// `(rows, hidden)` of a dispatched buffer: `[rows, hidden]` or `[groups, m_max, hidden]`.
fn rows_hidden<T: kernels::gpu::DeviceElement>(
    op: &'static str,
    what: &str,
    t: &DeviceTensor<T>,
) -> Result<(usize, usize)> {
    match *t.shape() {
        [rows, hidden] => Ok((rows, hidden)),
        [groups, m_max, hidden] => Ok((groups * m_max, hidden)),
        _ => Err(Error::shape(
            op,
            format!(
                "{what} must be [rows, hidden] or [experts, m_max, hidden], got {:?}",
                t.shape()
            ),
        )),
    }
}

/// Where the FP8 scales go: `(group_rows, group_table, out_stride)`.
struct ScaleDst {
    ptr: u64,
    group_rows: usize,
    group_table: usize,
    stride: usize,
}

struct ScaleSrc {
    ptr: u64,
    blocks: usize,
    block_major: bool,
    stride: usize,
}

#[allow(clippy::too_many_arguments)]
fn launch_dispatch(
    gpu: &Gpu,
    op: &'static str,
    x: u64,
    tokens: usize,
    row_bytes: usize,
    slot: &DeviceTensor<i32>,
    top_k: usize,
    rows: usize,
    out: u64,
    scales: Option<(ScaleSrc, ScaleDst)>,
    status: &mut DeviceStatus,
) -> Result<()> {
    if tokens == 0 || row_bytes == 0 {
        return Ok(());
    }
    let vec16 = i32::from(row_bytes % 16 == 0 && x % 16 == 0 && out % 16 == 0);
    let (top_k_i, rows_i) = (as_i32(op, "top_k", top_k)?, as_i32(op, "rows", rows)?);
    let row_bytes_i = row_bytes as i64;
    let (slot_p, status_p) = (slot.device_ptr(gpu), status.word().device_ptr(gpu));
    let (src, dst) = match scales {
        Some((s, d)) => (s, d),
        None => (
            ScaleSrc {
                ptr: 0,
                blocks: 0,
                block_major: false,
                stride: 0,
            },
            ScaleDst {
                ptr: 0,
                group_rows: 1,
                group_table: 0,
                stride: 0,
            },
        ),
    };
    let (blocks_i, in_bm_i, in_stride_i) = (
        as_i32(op, "blocks", src.blocks)?,
        i32::from(src.block_major),
        as_i32(op, "input scale stride", src.stride)?,
    );
    let (group_rows_i, group_table_l, out_stride_i) = (
        as_i32(op, "group rows", dst.group_rows.max(1))?,
        dst.group_table as i64,
        as_i32(op, "output scale stride", dst.stride)?,
    );
    let f = gpu.function(&PERMUTE, "moe_dispatch_rows")?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&x)
        .arg(&slot_p)
        .arg(&top_k_i)
        .arg(&row_bytes_i)
        .arg(&rows_i)
        .arg(&vec16)
        .arg(&out)
        .arg(&src.ptr)
        .arg(&blocks_i)
        .arg(&in_bm_i)
        .arg(&in_stride_i)
        .arg(&dst.ptr)
        .arg(&group_rows_i)
        .arg(&group_table_l)
        .arg(&out_stride_i)
        .arg(&status_p);
    let grid = as_i32(op, "tokens", tokens)? as u32;
    // SAFETY: x is [tokens, row_bytes] bytes, slot [tokens, top_k] (top_k <= kMaxTopK), out
    // [rows, row_bytes] bytes; slots outside 0..rows are skipped in the kernel; the scale tables
    // were checked against (tokens, blocks) and (rows, blocks) by the callers.
    unsafe { gpu.launch(op, args, grid_1d(grid, DISPATCH_THREADS, 0)) }
}

fn check_slot(op: &'static str, slot: &DeviceTensor<i32>, tokens: usize) -> Result<usize> {
    let (t, top_k) = pairs_shape(op, "slot", slot)?;
    if t != tokens {
        return Err(Error::shape(
            op,
            format!("slot has {t} tokens, x has {tokens}"),
        ));
    }
    if top_k == 0 || top_k > MAX_TOP_K {
        return Err(Error::invalid(
            op,
            format!("top_k = {top_k} (slot's second dimension) must be in 1..={MAX_TOP_K}"),
        ));
    }
    Ok(top_k)
}

/// BF16 dispatch: `out[slot[t, j]] = x[t]` for x `[T, H]`, slot `[T, K]` (from either layout,
/// -1 skipped) and out `[rows, H]` (contiguous, `rows_cap` rows) or `[E, m_max, H]` (masked).
/// Rows no pair maps to are left untouched.
pub fn dispatch_bf16(
    gpu: &Gpu,
    x: &DeviceTensor<bf16>,
    slot: &DeviceTensor<i32>,
    out: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "dispatch_bf16";
    let &[tokens, hidden] = x.shape() else {
        return Err(Error::shape(
            OP,
            format!("x must be [tokens, hidden], got {:?}", x.shape()),
        ));
    };
    let top_k = check_slot(OP, slot, tokens)?;
    let (rows, out_hidden) = rows_hidden(OP, "out", out)?;
    if out_hidden != hidden {
        return Err(Error::shape(
            OP,
            format!("out rows have {out_hidden} elements, x rows {hidden}"),
        ));
    }
    launch_dispatch(
        gpu,
        OP,
        x.device_ptr(gpu),
        tokens,
        hidden * 2,
        slot,
        top_k,
        rows,
        out.device_ptr(gpu),
        None,
        status,
    )
}

/// Checks the tokens' FP8 buffers; returns `(tokens, hidden, source scale description)`.
fn fp8_source(op: &'static str, x: &Fp8Buffers, gpu: &Gpu) -> Result<(usize, usize, ScaleSrc)> {
    let &[tokens, hidden] = x.q.shape() else {
        return Err(Error::shape(
            op,
            format!("x.q must be [tokens, hidden], got {:?}", x.q.shape()),
        ));
    };
    x.scales.expect_shape(
        op,
        "x.scales",
        &[Fp8Activations::scale_len(tokens, hidden, x.layout)],
    )?;
    let block_major = x.layout == ScaleLayout::BlockMajor;
    Ok((
        tokens,
        hidden,
        ScaleSrc {
            ptr: x.scales.device_ptr(gpu),
            blocks: hidden.div_ceil(FP8_BLOCK),
            block_major,
            stride: if block_major {
                tokens.next_multiple_of(BLOCK_MAJOR_ALIGN)
            } else {
                0
            },
        },
    ))
}

/// FP8 dispatch into the contiguous layout: e4m3 codes to `out.q` `[rows, H]` and each row's
/// scales into the block-major table `out.scales` (`[ceil(H/128), round_up(rows, 4)]`, the grouped
/// GEMM's A scales). `x` holds the tokens' codes `[T, H]` and scales in either layout; `slot` is
/// `[T, K]`. Rows no pair maps to (and their scale entries) are left untouched.
pub fn dispatch_fp8(
    gpu: &Gpu,
    x: &Fp8Buffers,
    slot: &DeviceTensor<i32>,
    out: &mut Fp8Buffers,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "dispatch_fp8";
    let (tokens, hidden, src) = fp8_source(OP, x, gpu)?;
    let top_k = check_slot(OP, slot, tokens)?;
    if out.layout != ScaleLayout::BlockMajor {
        return Err(Error::invalid(
            OP,
            "out.layout must be BlockMajor (the grouped GEMM's scale layout)",
        ));
    }
    let &[rows, out_hidden] = out.q.shape() else {
        return Err(Error::shape(
            OP,
            format!("out.q must be [rows, hidden], got {:?}", out.q.shape()),
        ));
    };
    if out_hidden != hidden {
        return Err(Error::shape(
            OP,
            format!("out.q rows have {out_hidden} elements, x.q rows {hidden}"),
        ));
    }
    out.scales.expect_shape(
        OP,
        "out.scales",
        &[Fp8Activations::scale_len(
            rows,
            hidden,
            ScaleLayout::BlockMajor,
        )],
    )?;
    let dst = ScaleDst {
        ptr: out.scales.device_ptr(gpu),
        group_rows: rows,
        group_table: 0,
        stride: rows.next_multiple_of(BLOCK_MAJOR_ALIGN),
    };
    launch_dispatch(
        gpu,
        OP,
        x.q.device_ptr(gpu),
        tokens,
        hidden,
        slot,
        top_k,
        rows,
        out.q.device_ptr(gpu),
        Some((src, dst)),
        status,
    )
}

/// FP8 rows in the masked layout on the device (see [`crate::reference::permute::MaskedFp8`]):
/// codes `[E, m_max, H]` and per-expert block-major scale tables
/// `[E, ceil(H/128), round_up(m_max, 4)]` (the grouped masked GEMM's A operand).
#[derive(Debug)]
pub struct MaskedFp8Buffers {
    pub q: DeviceTensor<E4m3>,
    pub scales: DeviceTensor<f32>,
}

impl MaskedFp8Buffers {
    pub fn new(gpu: &Gpu, num_experts: usize, m_max: usize, hidden: usize) -> Result<Self> {
        let table = Fp8Activations::scale_len(m_max, hidden, ScaleLayout::BlockMajor);
        Ok(MaskedFp8Buffers {
            q: gpu.zeros(&[num_experts, m_max, hidden])?,
            scales: gpu.zeros(&[num_experts * table])?,
        })
    }
}

/// FP8 dispatch into the masked layout (`slot` from [`masked_layout`]). Rows at or past an
/// expert's count (and their scale entries) are left untouched.
pub fn dispatch_fp8_masked(
    gpu: &Gpu,
    x: &Fp8Buffers,
    slot: &DeviceTensor<i32>,
    out: &mut MaskedFp8Buffers,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "dispatch_fp8_masked";
    let (tokens, hidden, src) = fp8_source(OP, x, gpu)?;
    let top_k = check_slot(OP, slot, tokens)?;
    let &[experts, m_max, out_hidden] = out.q.shape() else {
        return Err(Error::shape(
            OP,
            format!(
                "out.q must be [experts, m_max, hidden], got {:?}",
                out.q.shape()
            ),
        ));
    };
    if out_hidden != hidden {
        return Err(Error::shape(
            OP,
            format!("out.q rows have {out_hidden} elements, x.q rows {hidden}"),
        ));
    }
    let table = Fp8Activations::scale_len(m_max, hidden, ScaleLayout::BlockMajor);
    out.scales
        .expect_shape(OP, "out.scales", &[experts * table])?;
    let dst = ScaleDst {
        ptr: out.scales.device_ptr(gpu),
        group_rows: m_max,
        group_table: table,
        stride: m_max.next_multiple_of(BLOCK_MAJOR_ALIGN),
    };
    launch_dispatch(
        gpu,
        OP,
        x.q.device_ptr(gpu),
        tokens,
        hidden,
        slot,
        top_k,
        experts * m_max,
        out.q.device_ptr(gpu),
        Some((src, dst)),
        status,
    )
}

/// Combine: `out[t] = bf16(sum_{j in order} w[t, j] * y[slot[t, j]] + shared[t])` with the
/// reference's f32 operation order (bit-exact). `y` is `[rows, H]` or `[E, m_max, H]` (the expert
/// GEMM's output in either layout), `slot` and `topk_weights` `[T, K]`, `shared` and `out`
/// `[T, H]`. Pairs with slot -1 contribute nothing; a slot outside the rows records status 5.
pub fn combine(
    gpu: &Gpu,
    y: &DeviceTensor<bf16>,
    slot: &DeviceTensor<i32>,
    topk_weights: &DeviceTensor<f32>,
    shared: Option<&DeviceTensor<bf16>>,
    out: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
) -> Result<()> {
    const OP: &str = "combine";
    let (rows, hidden) = rows_hidden(OP, "y", y)?;
    let (tokens, top_k) = pairs_shape(OP, "topk_weights", topk_weights)?;
    check_slot(OP, slot, tokens)?;
    slot.expect_shape(OP, "slot", &[tokens, top_k])?;
    out.expect_shape(OP, "out", &[tokens, hidden])?;
    if let Some(s) = shared {
        s.expect_shape(OP, "shared", &[tokens, hidden])?;
    }
    if tokens == 0 || hidden == 0 {
        return Ok(());
    }
    let (y_p, slot_p, w_p, out_p, status_p) = (
        y.device_ptr(gpu),
        slot.device_ptr(gpu),
        topk_weights.device_ptr(gpu),
        out.device_ptr(gpu),
        status.word().device_ptr(gpu),
    );
    let shared_p = shared.map_or(0u64, |s| s.device_ptr(gpu));
    let vec8 = i32::from(hidden % 8 == 0 && [y_p, out_p, shared_p].iter().all(|p| p % 16 == 0));
    let (top_k_i, hidden_i, rows_i) = (
        as_i32(OP, "top_k", top_k)?,
        as_i32(OP, "hidden", hidden)?,
        as_i32(OP, "rows", rows)?,
    );
    let f = gpu.function(&PERMUTE, "moe_combine_bf16")?;
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&y_p)
        .arg(&slot_p)
        .arg(&w_p)
        .arg(&shared_p)
        .arg(&out_p)
        .arg(&top_k_i)
        .arg(&hidden_i)
        .arg(&rows_i)
        .arg(&vec8)
        .arg(&status_p);
    let grid = as_i32(OP, "tokens", tokens)? as u32;
    // SAFETY: y [rows, hidden], slot / topk_weights [tokens, top_k] (top_k <= kMaxTopK), shared
    // (or null) and out [tokens, hidden]; slots outside 0..rows are skipped in the kernel.
    unsafe { gpu.launch("moe_combine_bf16", args, grid_1d(grid, COMBINE_THREADS, 0)) }
}
