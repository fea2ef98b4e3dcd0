//! Expert permute (dispatch) and combine (spec §3.3, `MoE(v) = sum_i w_i * Expert_i(v) +
//! SharedExpert(v)`): the data movement around the grouped FP8 GEMM, as plain Rust.
//!
//! # Layouts
//!
//! `topk_ids` is `[T, K]` (row-major, i32): token `t`'s `j`-th choice is `topk_ids[t * K + j]`,
//! every id in `0..num_experts`. Pair `(t, j)` is numbered `i = t * K + j`; `slot[i]` is the
//! destination row of that pair in the dispatched matrix.
//!
//! - Contiguous ([`contiguous_layout`], the grouped GEMM's prefill layout, see
//!   `fp8-gemm/src/layout.rs`): expert `e`'s rows occupy `[offsets[e], offsets[e] + counts[e])`,
//!   `offsets[0] = 0`, `offsets[e + 1] = offsets[e] + round_up(counts[e], align)` (so an empty
//!   expert takes no rows), `rows = offsets[E]`; rows in `[offsets[e] + counts[e], offsets[e + 1])`
//!   are padding with `m_indices = -1`. Within an expert, rows are in increasing `(t, j)` order.
//!   The device builds this without reading counts back, so its buffers have
//!   [`contiguous_rows_bound`] rows and every row at or past `offsets[E]` is padding too.
//! - Masked ([`masked_layout`], the decode layout `[E, m_max, hidden]`): expert `e`'s `r`-th row
//!   (in `(t, j)` order) is row `e * m_max + r`; `counts[e]` is the GEMM's `masked_m[e]`.
//!
//! # Data
//!
//! - [`dispatch_rows`]: `out[slot[t * K + j]] = x[t]` for any element type; rows nobody maps to
//!   are zero.
//! - [`dispatch_fp8`]: the same for e4m3 codes plus their per-128-channel scales, written as the
//!   block-major table `[hidden / 128, round_up(rows, 4)]` the grouped contiguous GEMM reads.
//! - [`dispatch_fp8_masked`]: the masked form, each expert with its own block-major table
//!   (`[E, hidden / 128, round_up(m_max, 4)]`, the grouped masked GEMM's scale layout).
//! - [`combine_f32`] / [`combine`]: the weighted sum back into token order, in a fixed order so
//!   the result is deterministic and the GPU matches bit for bit:
//!
//!   ```text
//!   acc = 0.0f32
//!   for j in 0..K:  acc = acc + (w[t, j] * f32(y[slot[t * K + j]]))   // each op rounded (no FMA)
//!   combine_f32[t] = acc
//!   combine[t] = bf16_rne(acc + f32(shared[t]))                        // shared added last
//!   ```

use half::bf16;
use kernels::dtype::E4m3;
use kernels::error::{check_len, Error, Result};
use kernels::reference::fp8_quant::{Fp8Activations, ScaleLayout};

/// Expert-contiguous layout: expert e's rows occupy [offsets[e], offsets[e] + counts[e]) and
/// offsets are multiples of `align`; rows in [offsets[e]+counts[e], offsets[e+1]) are padding
/// (m_indices = -1). Within an expert, rows are in increasing (t, k) order.
/// slot[t * k + j] = row of (token t, choice j).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContiguousLayout {
    pub num_experts: usize,
    pub align: usize,
    /// Rows routed to each expert, `[E]`.
    pub counts: Vec<usize>,
    /// First row of each expert, `[E + 1]` (`offsets[E] == rows`).
    pub offsets: Vec<usize>,
    /// Total rows including padding: `offsets[E]`.
    pub rows: usize,
    /// Each row's expert, -1 for padding, `[rows]`.
    pub m_indices: Vec<i32>,
    /// Destination row of each (token, choice) pair, `[T * K]`.
    pub slot: Vec<usize>,
}

/// Masked layout: expert e's i-th row (in (t, k) order) is row e * m_max + i; counts[e] > m_max
/// is an Error naming the expert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedLayout {
    pub num_experts: usize,
    pub m_max: usize,
    /// Rows routed to each expert, `[E]`, each `<= m_max` (the GEMM's `masked_m`).
    pub counts: Vec<usize>,
    /// Destination row of each (token, choice) pair, `[T * K]`, in `0..E * m_max`.
    pub slot: Vec<usize>,
}

impl MaskedLayout {
    /// Rows of the dispatched matrix: `E * m_max`.
    pub fn rows(&self) -> usize {
        self.num_experts * self.m_max
    }
}

/// Validates `topk_ids` and counts rows per expert.
fn expert_counts(
    op: &'static str,
    topk_ids: &[i32],
    top_k: usize,
    num_experts: usize,
) -> Result<Vec<usize>> {
    if top_k == 0 {
        return Err(Error::invalid(op, "top_k is 0"));
    }
    if num_experts == 0 {
        return Err(Error::invalid(op, "num_experts is 0"));
    }
    if num_experts > i32::MAX as usize {
        return Err(Error::invalid(
            op,
            format!("num_experts {num_experts} does not fit in i32"),
        ));
    }
    if topk_ids.len() % top_k != 0 {
        return Err(Error::shape(
            op,
            format!(
                "topk_ids has {} elements, not a multiple of top_k {top_k}",
                topk_ids.len()
            ),
        ));
    }
    let mut counts = vec![0usize; num_experts];
    for (i, &id) in topk_ids.iter().enumerate() {
        if id < 0 || id as usize >= num_experts {
            return Err(Error::index(
                op,
                format!(
                    "token {} choice {} has expert id {id}, num_experts is {num_experts}",
                    i / top_k,
                    i % top_k
                ),
            ));
        }
        counts[id as usize] += 1;
    }
    Ok(counts)
}

/// An upper bound on [`ContiguousLayout::rows`] for any routing of `tokens` tokens (a multiple of
/// `align`): the size of the device's contiguous buffers, which are built without reading the
/// counts back. At most `min(E, T * K)` experts are non-empty and each wastes `< align` rows.
pub fn contiguous_rows_bound(
    tokens: usize,
    top_k: usize,
    num_experts: usize,
    align: usize,
) -> usize {
    let pairs = tokens * top_k;
    let align = align.max(1);
    let worst = pairs + num_experts.min(pairs) * (align - 1);
    worst / align * align
}

/// The expert-contiguous layout of `topk_ids` (`[T, top_k]`) for `num_experts` experts, each
/// group's first row a multiple of `align` (`fp8_gemm::GROUPED_M_ALIGN` for the grouped GEMM).
pub fn contiguous_layout(
    topk_ids: &[i32],
    top_k: usize,
    num_experts: usize,
    align: usize,
) -> Result<ContiguousLayout> {
    const OP: &str = "contiguous_layout";
    if align == 0 {
        return Err(Error::invalid(OP, "align is 0"));
    }
    let counts = expert_counts(OP, topk_ids, top_k, num_experts)?;
    let mut offsets = Vec::with_capacity(num_experts + 1);
    let mut acc = 0usize;
    offsets.push(0);
    for &c in &counts {
        acc += c.next_multiple_of(align);
        offsets.push(acc);
    }
    let rows = acc;
    if rows > i32::MAX as usize {
        return Err(Error::invalid(
            OP,
            format!("{rows} dispatched rows do not fit in i32"),
        ));
    }
    let mut m_indices = vec![-1i32; rows];
    for (e, &c) in counts.iter().enumerate() {
        m_indices[offsets[e]..offsets[e] + c].fill(e as i32);
    }
    let slot = assign_slots(topk_ids, offsets[..num_experts].to_vec());
    Ok(ContiguousLayout {
        num_experts,
        align,
        counts,
        offsets,
        rows,
        m_indices,
        slot,
    })
}

/// Each pair's destination row: expert e's pairs take rows `first[e]`, `first[e] + 1`, ... in
/// (t, k) order. The ids were range-checked by `expert_counts`.
fn assign_slots(topk_ids: &[i32], mut first: Vec<usize>) -> Vec<usize> {
    topk_ids
        .iter()
        .map(|&id| {
            let r = first[id as usize];
            first[id as usize] += 1;
            r
        })
        .collect()
}

/// The masked layout `[num_experts, m_max]` of `topk_ids` (`[T, top_k]`).
pub fn masked_layout(
    topk_ids: &[i32],
    top_k: usize,
    num_experts: usize,
    m_max: usize,
) -> Result<MaskedLayout> {
    const OP: &str = "masked_layout";
    let counts = expert_counts(OP, topk_ids, top_k, num_experts)?;
    if let Some((e, &c)) = counts.iter().enumerate().find(|&(_, &c)| c > m_max) {
        return Err(Error::invalid(
            OP,
            format!("expert {e} has {c} rows, more than m_max = {m_max}"),
        ));
    }
    let slot = assign_slots(topk_ids, (0..num_experts).map(|e| e * m_max).collect());
    Ok(MaskedLayout {
        num_experts,
        m_max,
        counts,
        slot,
    })
}

/// Checks `slot` against `x_rows * top_k` pairs and `rows` destinations (each used at most once).
fn check_slot(
    op: &'static str,
    x_rows: usize,
    top_k: usize,
    slot: &[usize],
    rows: usize,
) -> Result<()> {
    if top_k == 0 {
        return Err(Error::invalid(op, "top_k is 0"));
    }
    check_len(op, "slot", slot.len(), x_rows * top_k)?;
    let mut seen = vec![false; rows];
    for (i, &r) in slot.iter().enumerate() {
        if r >= rows {
            return Err(Error::index(
                op,
                format!(
                    "slot of token {} choice {} is {r}, rows is {rows}",
                    i / top_k,
                    i % top_k
                ),
            ));
        }
        if std::mem::replace(&mut seen[r], true) {
            return Err(Error::invalid(
                op,
                format!(
                    "slot of token {} choice {} is row {r}, which another pair already uses",
                    i / top_k,
                    i % top_k
                ),
            ));
        }
    }
    Ok(())
}

/// Gathers token rows into `rows` destination rows (`slot` as above); rows nobody maps to are
/// zero (T::default()). `x` is `[T, hidden]`, `slot` `[T * top_k]`; the result is
/// `[rows, hidden]`.
pub fn dispatch_rows<T: Copy + Default>(
    x: &[T],
    hidden: usize,
    top_k: usize,
    slot: &[usize],
    rows: usize,
) -> Result<Vec<T>> {
    const OP: &str = "dispatch_rows";
    if hidden == 0 {
        return Err(Error::invalid(OP, "hidden is 0"));
    }
    if x.len() % hidden != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "x has {} elements, not a multiple of hidden {hidden}",
                x.len()
            ),
        ));
    }
    let tokens = x.len() / hidden;
    check_slot(OP, tokens, top_k, slot, rows)?;
    let mut out = vec![T::default(); rows * hidden];
    for (i, &r) in slot.iter().enumerate() {
        let t = i / top_k;
        out[r * hidden..(r + 1) * hidden].copy_from_slice(&x[t * hidden..(t + 1) * hidden]);
    }
    Ok(out)
}

fn check_fp8_input(op: &'static str, x: &Fp8Activations) -> Result<()> {
    if x.channels == 0 {
        return Err(Error::invalid(op, "x.channels is 0"));
    }
    check_len(op, "x.q", x.q.len(), x.tokens * x.channels)?;
    check_len(
        op,
        "x.scales",
        x.scales.len(),
        Fp8Activations::scale_len(x.tokens, x.channels, x.layout),
    )
}

/// FP8 dispatch: moves e4m3 codes and the per-128 scales (input: kernels Fp8Activations of the
/// tokens, any layout; output: Fp8Activations [rows, hidden] in ScaleLayout::BlockMajor, the
/// layout the GEMM reads); padding rows: zero codes and zero scales.
pub fn dispatch_fp8(
    x: &Fp8Activations,
    top_k: usize,
    slot: &[usize],
    rows: usize,
) -> Result<Fp8Activations> {
    const OP: &str = "dispatch_fp8";
    check_fp8_input(OP, x)?;
    let q = dispatch_rows(&x.q, x.channels, top_k, slot, rows)?;
    let layout = ScaleLayout::BlockMajor;
    let mut scales = vec![0.0f32; Fp8Activations::scale_len(rows, x.channels, layout)];
    for (i, &r) in slot.iter().enumerate() {
        for b in 0..x.blocks() {
            scales[Fp8Activations::scale_index(rows, x.channels, layout, r, b)] =
                x.scale(i / top_k, b);
        }
    }
    Ok(Fp8Activations {
        q,
        scales,
        tokens: rows,
        channels: x.channels,
        layout,
    })
}

/// FP8 rows in the masked layout: codes `[E, m_max, channels]` and one block-major scale table per
/// expert, back to back: `[E, ceil(channels / 128), round_up(m_max, 4)]` (the grouped masked GEMM's
/// `A` scales). Rows at or past `counts[e]` have zero codes and zero scales.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedFp8 {
    pub q: Vec<E4m3>,
    pub scales: Vec<f32>,
    pub num_experts: usize,
    pub m_max: usize,
    pub channels: usize,
}

impl MaskedFp8 {
    /// Scale entries of one expert's table.
    pub fn expert_scale_len(m_max: usize, channels: usize) -> usize {
        Fp8Activations::scale_len(m_max, channels, ScaleLayout::BlockMajor)
    }

    /// Position of the scale of (expert `e`, row `r` of that expert, block `b`) in `scales`.
    pub fn scale_index(m_max: usize, channels: usize, e: usize, r: usize, b: usize) -> usize {
        e * Self::expert_scale_len(m_max, channels)
            + Fp8Activations::scale_index(m_max, channels, ScaleLayout::BlockMajor, r, b)
    }

    pub fn scale(&self, e: usize, r: usize, b: usize) -> f32 {
        self.scales[Self::scale_index(self.m_max, self.channels, e, r, b)]
    }

    /// Expert `e`'s rows as `[m_max, channels]` block-major activations (the per-group `A` of
    /// `fp8_gemm::reference::grouped_masked`).
    pub fn group(&self, e: usize) -> Fp8Activations {
        let rows = self.m_max * self.channels;
        let table = Self::expert_scale_len(self.m_max, self.channels);
        Fp8Activations {
            q: self.q[e * rows..(e + 1) * rows].to_vec(),
            scales: self.scales[e * table..(e + 1) * table].to_vec(),
            tokens: self.m_max,
            channels: self.channels,
            layout: ScaleLayout::BlockMajor,
        }
    }
}

/// FP8 dispatch into the masked layout (`layout` from [`masked_layout`] over the same tokens).
pub fn dispatch_fp8_masked(
    x: &Fp8Activations,
    top_k: usize,
    layout: &MaskedLayout,
) -> Result<MaskedFp8> {
    const OP: &str = "dispatch_fp8_masked";
    check_fp8_input(OP, x)?;
    let (e_count, m_max) = (layout.num_experts, layout.m_max);
    let q = dispatch_rows(&x.q, x.channels, top_k, &layout.slot, layout.rows())?;
    let mut scales = vec![0.0f32; e_count * MaskedFp8::expert_scale_len(m_max, x.channels)];
    for (i, &row) in layout.slot.iter().enumerate() {
        let (e, r) = (row / m_max, row % m_max);
        for b in 0..x.blocks() {
            scales[MaskedFp8::scale_index(m_max, x.channels, e, r, b)] = x.scale(i / top_k, b);
        }
    }
    Ok(MaskedFp8 {
        q,
        scales,
        num_experts: e_count,
        m_max,
        channels: x.channels,
    })
}

/// Shape checks of combine; returns the token count.
fn check_combine(
    op: &'static str,
    y_len: usize,
    hidden: usize,
    slot: &[usize],
    topk_weights: &[f32],
    top_k: usize,
) -> Result<usize> {
    if hidden == 0 {
        return Err(Error::invalid(op, "hidden is 0"));
    }
    if top_k == 0 {
        return Err(Error::invalid(op, "top_k is 0"));
    }
    if y_len % hidden != 0 {
        return Err(Error::shape(
            op,
            format!("y has {y_len} elements, not a multiple of hidden {hidden}"),
        ));
    }
    if slot.len() % top_k != 0 {
        return Err(Error::shape(
            op,
            format!(
                "slot has {} elements, not a multiple of top_k {top_k}",
                slot.len()
            ),
        ));
    }
    check_len(op, "topk_weights", topk_weights.len(), slot.len())?;
    let rows = y_len / hidden;
    if let Some((i, &r)) = slot.iter().enumerate().find(|&(_, &r)| r >= rows) {
        return Err(Error::index(
            op,
            format!(
                "slot of token {} choice {} is {r}, y has {rows} rows",
                i / top_k,
                i % top_k
            ),
        ));
    }
    Ok(slot.len() / top_k)
}

/// The f32 weighted sums `acc[t] = sum_{j in order} w[t, j] * y[slot[t * K + j]]` (`[T, hidden]`),
/// before the shared expert and rounding: each product and each sum rounded to f32, no FMA,
/// starting from 0.0. [`combine`] is exactly `bf16(combine_f32 + shared)`.
pub fn combine_f32(
    y: &[bf16],
    hidden: usize,
    slot: &[usize],
    topk_weights: &[f32],
    top_k: usize,
) -> Result<Vec<f32>> {
    let tokens = check_combine("combine_f32", y.len(), hidden, slot, topk_weights, top_k)?;
    Ok(combine_sums(y, hidden, slot, topk_weights, top_k, tokens))
}

fn combine_sums(
    y: &[bf16],
    hidden: usize,
    slot: &[usize],
    topk_weights: &[f32],
    top_k: usize,
    tokens: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens * hidden];
    for (t, acc) in out.chunks_exact_mut(hidden).enumerate() {
        for j in 0..top_k {
            let w = topk_weights[t * top_k + j];
            let r = slot[t * top_k + j];
            for (a, v) in acc.iter_mut().zip(&y[r * hidden..(r + 1) * hidden]) {
                let p = w * v.to_f32();
                *a += p;
            }
        }
    }
    out
}

/// out[t] = bf16( sum_{j=0..k-1 in order} w[t,j] * y[slot[t*k+j]] (f32, in j order) + shared[t]
/// (added last, f32) ). `y` is `[rows, hidden]`, `slot` and `topk_weights` `[T * top_k]`,
/// `shared` `[T, hidden]`; the result is `[T, hidden]`. Exactly `bf16(combine_f32 + shared)`.
pub fn combine(
    y: &[bf16],
    hidden: usize,
    slot: &[usize],
    topk_weights: &[f32],
    top_k: usize,
    shared: Option<&[bf16]>,
) -> Result<Vec<bf16>> {
    const OP: &str = "combine";
    let tokens = check_combine(OP, y.len(), hidden, slot, topk_weights, top_k)?;
    if let Some(s) = shared {
        check_len(OP, "shared", s.len(), tokens * hidden)?;
    }
    let sums = combine_sums(y, hidden, slot, topk_weights, top_k, tokens);
    finish_combine(&sums, shared)
}

/// `bf16(sums + shared)` elementwise (shared added in f32, then one round to nearest even): the
/// last step of [`combine`], for callers (expert parallelism) that hold the f32 sums.
pub fn finish_combine(sums: &[f32], shared: Option<&[bf16]>) -> Result<Vec<bf16>> {
    Ok(match shared {
        Some(s) => {
            check_len("finish_combine", "shared", s.len(), sums.len())?;
            sums.iter()
                .zip(s)
                .map(|(&a, &v)| bf16::from_f32(a + v.to_f32()))
                .collect()
        }
        None => sums.iter().map(|&a| bf16::from_f32(a)).collect(),
    })
}
