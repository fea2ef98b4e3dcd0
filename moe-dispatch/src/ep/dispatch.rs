//! EP dispatch and combine over any [`Transport`], on host buffers.
//!
//! # Protocol
//!
//! Every rank `r` holds its own tokens `x_r` (`[T_r, hidden]`, BF16 or FP8 codes + scales) with
//! their routing `topk_ids_r` / `topk_weights_r` (`[T_r, K]`, global expert ids). Experts are
//! placed by [`ExpertPlacement`] (rank `d` holds `d * E / W .. (d + 1) * E / W`).
//!
//! **Dispatch.**
//! 1. For each destination rank `d`, rank `r` selects its tokens `t` (in increasing `t`) that
//!    have at least one choice `k` with `owner(topk_ids[t, k]) == d`, and sends each such token
//!    row **once** (deduplicated per destination), followed by its `K` expert ids (`-1` where the
//!    choice is not on `d`) and `K` weights (see [`WireRow`]).
//! 2. Ranks first exchange how many token rows go to each peer ([`Transport::all_to_all_counts`]),
//!    then the rows ([`Transport::all_to_all_bytes`]).
//! 3. The receiver lists the received `(token, choice)` pairs in the order
//!    **(source rank, source token, k)** and lays them out over its local experts with the
//!    reference [`contiguous_layout`] (one pair per "token", `top_k = 1`, local expert indices);
//!    the rows are gathered with the reference [`dispatch_rows`] / [`dispatch_fp8`].
//!
//! **Row order.** Within each local expert the rows are the pairs routed to it in increasing
//! (source rank, source token, k). With the tokens of all ranks concatenated in rank order
//! (global token `g = T_0 + ... + T_{r-1} + t`) this is increasing `(g, k)`: exactly the order the
//! single-rank [`contiguous_layout`] uses inside an expert. So expert `e`'s segment on its rank is
//! row for row (bit for bit: rows are copied as bytes) the segment the single-rank path builds for
//! `e` from the concatenated tokens; only the offsets differ (a rank's layout covers only its
//! experts). With `align` equal to the grouped GEMM's M tile, each segment also starts on a tile
//! boundary in both layouts, so the GEMM sees identical tiles.
//!
//! **Combine.** The expert rank sends back, for each received pair in the same (source rank,
//! source token, k) order, the BF16 expert output row `y[slot[pair]]`, unweighted. The token's
//! owner knows which pairs it sent to each rank and in which order, so it puts every returned row
//! at its `(t, k)` position of a `[T * K, hidden]` matrix and calls the reference [`combine`] on it
//! with the identity slot, its own `topk_weights` and `shared`.
//!
//! # Bit-exactness
//!
//! For the same expert function (row-wise deterministic), EP output equals single-rank output bit
//! for bit: every pair's expert input row is a byte copy of its token row (codes, scale bits and
//! BF16 bits travel unchanged), so every pair's `y` row is identical; `y` rows return as raw BF16
//! bits; and the owner evaluates the very same reference `combine` on, per token, the same `K` `y`
//! rows in the same `k` order, the same f32 weights (the owner's own, never re-encoded) and the
//! same shared row: `acc = 0; for k in 0..K: acc += w[t,k] * f32(y[t,k])` in f32 without FMA,
//! then `bf16(acc + shared[t])`. No partial sums are formed on expert ranks (that would change the
//! f32 summation order whenever a token's experts sit on several ranks).
//!
//! The weights also travel with the rows ([`EpDispatch::pairs`], [`EpDispatch::row_weights`]) for
//! a fused path that applies them on the expert side; [`ep_combine`] does not use them.

use std::ops::Range;

use half::bf16;
use kernels::dtype::E4m3;
use kernels::error::{check_len, Error, Result};
use kernels::reference::fp8_quant::{Fp8Activations, ScaleLayout};

use super::placement::ExpertPlacement;
use super::transport::Transport;
use crate::reference::permute::{
    combine, contiguous_layout, dispatch_fp8, dispatch_rows, ContiguousLayout,
};

/// Sizes shared by every rank of an EP layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpConfig {
    /// Routed experts in the whole model layer (E).
    pub num_experts: usize,
    /// Choices per token (K).
    pub top_k: usize,
    /// Row alignment of each local expert's segment (`fp8_gemm::GROUPED_M_ALIGN` for the grouped
    /// GEMM; 1 for none).
    pub align: usize,
}

/// This rank's tokens.
#[derive(Clone, Copy, Debug)]
pub enum EpTokens<'a> {
    /// `[T, hidden]` BF16 rows.
    Bf16 { x: &'a [bf16], hidden: usize },
    /// FP8 codes `[T, channels]` with per-128-channel scales (either scale layout).
    Fp8(&'a Fp8Activations),
}

impl EpTokens<'_> {
    fn hidden(&self) -> usize {
        match self {
            EpTokens::Bf16 { hidden, .. } => *hidden,
            EpTokens::Fp8(a) => a.channels,
        }
    }
}

/// The local experts' input rows, in [`EpDispatch::layout`].
#[derive(Clone, Debug, PartialEq)]
pub enum ExpertInputs {
    /// `[rows, hidden]` BF16, padding rows zero (as [`dispatch_rows`]).
    Bf16(Vec<bf16>),
    /// `[rows, hidden]` codes with a block-major scale table (as [`dispatch_fp8`]).
    Fp8(Fp8Activations),
}

/// One `(token, choice)` pair this rank received for one of its experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecvPair {
    /// The rank that owns the token.
    pub src_rank: usize,
    /// Index of the token among the rows received from `src_rank` (not the source's token index).
    pub src_row: usize,
    /// The choice index `k` on the source.
    pub choice: usize,
    /// Global expert id (in this rank's range).
    pub expert: usize,
    /// The routing weight of the pair (as sent; [`ep_combine`] uses the owner's copy).
    pub weight: f32,
}

/// The result of [`ep_dispatch`] on one rank: the inputs of its local experts plus what
/// [`ep_combine`] needs to return the outputs.
#[derive(Clone, Debug)]
pub struct EpDispatch {
    pub placement: ExpertPlacement,
    pub rank: usize,
    pub top_k: usize,
    pub hidden: usize,
    /// This rank's experts (global ids).
    pub local_experts: Range<usize>,
    /// Contiguous layout of the received pairs over the local experts: `num_experts = E / W`,
    /// `m_indices` are **local** expert indices (`expert - local_experts.start`, -1 for padding),
    /// `slot[p]` is the row of pair `p` of [`EpDispatch::pairs`].
    pub layout: ContiguousLayout,
    /// The local experts' input rows.
    pub inputs: ExpertInputs,
    /// The received pairs in (source rank, source row, choice) order.
    pub pairs: Vec<RecvPair>,
    /// Pairs from rank `p` are `pairs[pair_offsets[p]..pair_offsets[p + 1]]`.
    pub pair_offsets: Vec<usize>,
    /// Token rows received from each rank.
    pub recv_tokens: Vec<usize>,
    /// This rank's token count.
    tokens: usize,
    /// This rank's routing weights `[T, K]` (combine uses these).
    topk_weights: Vec<f32>,
    /// `sent_pairs[d]`: the flat pair indices `t * K + k` sent to rank `d`, in the order the
    /// pairs were sent (increasing).
    sent_pairs: Vec<Vec<usize>>,
}

impl EpDispatch {
    /// Rows of the local experts' input (padding included).
    pub fn rows(&self) -> usize {
        self.layout.rows
    }

    /// This rank's token count (rows of [`ep_combine`]'s output).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Rows of local expert `local` (`0..E / W`) without its padding.
    pub fn expert_rows(&self, local: usize) -> Range<usize> {
        let start = self.layout.offsets[local];
        start..start + self.layout.counts[local]
    }

    /// Global expert id of each row, `None` for padding.
    pub fn row_expert(&self, row: usize) -> Option<usize> {
        let m = self.layout.m_indices[row];
        (m >= 0).then(|| self.local_experts.start + m as usize)
    }

    /// Routing weight of each row as sent by the token's owner (0.0 for padding rows).
    pub fn row_weights(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.layout.rows];
        for (p, pair) in self.pairs.iter().enumerate() {
            w[self.layout.slot[p]] = pair.weight;
        }
        w
    }

    /// Flat pair indices `t * K + k` this rank sent to rank `d` (increasing).
    pub fn sent_pairs(&self, d: usize) -> &[usize] {
        &self.sent_pairs[d]
    }
}

/// The byte layout of one dispatched token row (little-endian):
///
/// | field | bytes |
/// |---|---|
/// | BF16 row, or e4m3 codes then f32 scales (`ceil(hidden / 128)`) | `2 * hidden`, or `hidden + 4 * blocks` |
/// | expert ids, i32, `-1` for choices not on the destination | `4 * K` |
/// | weights, f32 | `4 * K` |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireRow {
    pub payload_bytes: usize,
    pub top_k: usize,
}

impl WireRow {
    pub fn bf16(hidden: usize, top_k: usize) -> Self {
        Self {
            payload_bytes: 2 * hidden,
            top_k,
        }
    }

    pub fn fp8(hidden: usize, top_k: usize) -> Self {
        Self {
            payload_bytes: hidden + 4 * hidden.div_ceil(kernels::reference::fp8_quant::FP8_BLOCK),
            top_k,
        }
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        self.payload_bytes + 8 * self.top_k
    }
}

fn put_f32s(out: &mut Vec<u8>, v: impl IntoIterator<Item = f32>) {
    for x in v {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
}

fn get_u32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

fn put_bf16s(out: &mut Vec<u8>, v: &[bf16]) {
    for x in v {
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    }
}

fn get_bf16s(b: &[u8], out: &mut Vec<bf16>) {
    out.extend(
        b.chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))),
    );
}

/// Validates the routing of this rank's tokens; returns the token count.
fn check_routing(
    op: &'static str,
    placement: &ExpertPlacement,
    tokens: &EpTokens<'_>,
    topk_ids: &[i32],
    topk_weights: &[f32],
    top_k: usize,
) -> Result<usize> {
    if top_k == 0 {
        return Err(Error::invalid(op, "top_k is 0"));
    }
    let hidden = tokens.hidden();
    if hidden == 0 {
        return Err(Error::invalid(op, "hidden is 0"));
    }
    let t = match tokens {
        EpTokens::Bf16 { x, hidden } => {
            if x.len() % hidden != 0 {
                return Err(Error::shape(
                    op,
                    format!(
                        "x has {} elements, not a multiple of hidden {hidden}",
                        x.len()
                    ),
                ));
            }
            x.len() / hidden
        }
        EpTokens::Fp8(a) => {
            check_len(op, "x.q", a.q.len(), a.tokens * a.channels)?;
            check_len(
                op,
                "x.scales",
                a.scales.len(),
                Fp8Activations::scale_len(a.tokens, a.channels, a.layout),
            )?;
            a.tokens
        }
    };
    check_len(op, "topk_ids", topk_ids.len(), t * top_k)?;
    check_len(op, "topk_weights", topk_weights.len(), t * top_k)?;
    let e = placement.num_experts();
    if let Some((i, &id)) = topk_ids
        .iter()
        .enumerate()
        .find(|&(_, &id)| id < 0 || id as usize >= e)
    {
        return Err(Error::index(
            op,
            format!(
                "token {} choice {} has expert id {id}, num_experts is {e}",
                i / top_k,
                i % top_k
            ),
        ));
    }
    Ok(t)
}

/// Dispatches this rank's tokens to the ranks holding their experts (collective: every rank of
/// `transport` calls it with the same `cfg`). See the module documentation for the protocol and
/// the row order.
pub fn ep_dispatch<T: Transport + ?Sized>(
    transport: &mut T,
    cfg: &EpConfig,
    tokens: EpTokens<'_>,
    topk_ids: &[i32],
    topk_weights: &[f32],
) -> Result<EpDispatch> {
    const OP: &str = "ep_dispatch";
    let (rank, world) = (transport.rank(), transport.world_size());
    if rank >= world {
        return Err(Error::invalid(
            OP,
            format!("transport rank {rank} is not below its world size {world}"),
        ));
    }
    if cfg.align == 0 {
        return Err(Error::invalid(OP, "align is 0"));
    }
    let placement = ExpertPlacement::new(cfg.num_experts, world)?;
    let k = cfg.top_k;
    let t_count = check_routing(OP, &placement, &tokens, topk_ids, topk_weights, k)?;
    let hidden = tokens.hidden();
    let wire = match tokens {
        EpTokens::Bf16 { .. } => WireRow::bf16(hidden, k),
        EpTokens::Fp8(_) => WireRow::fp8(hidden, k),
    };
    let blocks = hidden.div_ceil(kernels::reference::fp8_quant::FP8_BLOCK);

    // 1. Pack one row per (token, destination rank), tokens in increasing order.
    let mut send: Vec<Vec<u8>> = vec![Vec::new(); world];
    let mut send_rows = vec![0u64; world];
    let mut sent_pairs: Vec<Vec<usize>> = vec![Vec::new(); world];
    for t in 0..t_count {
        let ids = &topk_ids[t * k..(t + 1) * k];
        for (d, buf) in send.iter_mut().enumerate() {
            if !ids.iter().any(|&id| placement.owner(id as usize) == d) {
                continue;
            }
            match tokens {
                EpTokens::Bf16 { x, .. } => put_bf16s(buf, &x[t * hidden..(t + 1) * hidden]),
                EpTokens::Fp8(a) => {
                    buf.extend(a.q[t * hidden..(t + 1) * hidden].iter().map(|c| c.0));
                    put_f32s(buf, (0..blocks).map(|b| a.scale(t, b)));
                }
            }
            for (j, &id) in ids.iter().enumerate() {
                let mine = placement.owner(id as usize) == d;
                let v = if mine { id } else { -1 };
                buf.extend_from_slice(&v.to_le_bytes());
                if mine {
                    sent_pairs[d].push(t * k + j);
                }
            }
            put_f32s(buf, topk_weights[t * k..(t + 1) * k].iter().copied());
            send_rows[d] += 1;
        }
    }

    // 2. Exchange row counts, then rows.
    let recv_rows = transport.all_to_all_counts(&send_rows)?;
    if recv_rows.len() != world {
        return Err(Error::shape(
            OP,
            format!(
                "the transport returned {} counts for {world} ranks",
                recv_rows.len()
            ),
        ));
    }
    let recv_tokens: Vec<usize> = recv_rows
        .iter()
        .map(|&c| usize::try_from(c))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::invalid(OP, "a peer announced more rows than fit in usize"))?;
    let recv_len: Vec<usize> = recv_tokens.iter().map(|&n| n * wire.stride()).collect();
    let recv = transport.all_to_all_bytes(&send, &recv_len)?;
    drop(send);

    // 3. Unpack: the received token rows and the pairs for local experts, in (source rank,
    //    source row, choice) order.
    let local = placement.local_experts(rank);
    let total_rows: usize = recv_tokens.iter().sum();
    let mut pairs = Vec::new();
    let mut pair_offsets = Vec::with_capacity(world + 1);
    let mut pair_token = Vec::new(); // index into the concatenated received rows
    let mut pair_local_ids = Vec::new();
    let mut row_bf16: Vec<bf16> = Vec::new();
    let mut row_q: Vec<E4m3> = Vec::new();
    let mut row_scales: Vec<f32> = Vec::new();
    match tokens {
        EpTokens::Bf16 { .. } => row_bf16.reserve(total_rows * hidden),
        EpTokens::Fp8(_) => {
            row_q.reserve(total_rows * hidden);
            row_scales.reserve(total_rows * blocks);
        }
    }
    let mut row_index = 0usize;
    for (p, bytes) in recv.iter().enumerate() {
        pair_offsets.push(pairs.len());
        if bytes.len() != recv_len[p] {
            return Err(Error::shape(
                OP,
                format!(
                    "rank {rank}: got {} bytes from rank {p}, expected {}",
                    bytes.len(),
                    recv_len[p]
                ),
            ));
        }
        for (i, row) in bytes.chunks_exact(wire.stride()).enumerate() {
            let (payload, meta) = row.split_at(wire.payload_bytes);
            match tokens {
                EpTokens::Bf16 { .. } => get_bf16s(payload, &mut row_bf16),
                EpTokens::Fp8(_) => {
                    let (q, s) = payload.split_at(hidden);
                    row_q.extend(q.iter().map(|&c| E4m3(c)));
                    row_scales.extend((0..blocks).map(|b| f32::from_bits(get_u32(s, b))));
                }
            }
            let mut any = false;
            for j in 0..k {
                let id = get_u32(meta, j) as i32;
                if id == -1 {
                    continue;
                }
                if id < 0 || !local.contains(&(id as usize)) {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "rank {rank}: row {i} from rank {p} names expert {id}, which is not \
                             one of this rank's experts {local:?} (corrupt transfer or ranks \
                             disagree on num_experts)"
                        ),
                    ));
                }
                any = true;
                pairs.push(RecvPair {
                    src_rank: p,
                    src_row: i,
                    choice: j,
                    expert: id as usize,
                    weight: f32::from_bits(get_u32(meta, k + j)),
                });
                pair_token.push(row_index);
                pair_local_ids.push((id as usize - local.start) as i32);
            }
            if !any {
                return Err(Error::invalid(
                    OP,
                    format!("rank {rank}: row {i} from rank {p} names none of this rank's experts"),
                ));
            }
            row_index += 1;
        }
    }
    pair_offsets.push(pairs.len());
    drop(recv);

    // 4. Lay the pairs out over the local experts (the reference layout, one pair per "token")
    //    and gather their rows with the reference dispatch.
    let layout = contiguous_layout(&pair_local_ids, 1, placement.experts_per_rank(), cfg.align)?;
    let inputs = match tokens {
        EpTokens::Bf16 { .. } => {
            let mut x = Vec::with_capacity(pair_token.len() * hidden);
            for &r in &pair_token {
                x.extend_from_slice(&row_bf16[r * hidden..(r + 1) * hidden]);
            }
            ExpertInputs::Bf16(dispatch_rows(&x, hidden, 1, &layout.slot, layout.rows)?)
        }
        EpTokens::Fp8(_) => {
            let mut q = Vec::with_capacity(pair_token.len() * hidden);
            let mut scales = Vec::with_capacity(pair_token.len() * blocks);
            for &r in &pair_token {
                q.extend_from_slice(&row_q[r * hidden..(r + 1) * hidden]);
                scales.extend_from_slice(&row_scales[r * blocks..(r + 1) * blocks]);
            }
            let x = Fp8Activations {
                q,
                scales,
                tokens: pair_token.len(),
                channels: hidden,
                layout: ScaleLayout::TokenMajor,
            };
            ExpertInputs::Fp8(dispatch_fp8(&x, 1, &layout.slot, layout.rows)?)
        }
    };

    Ok(EpDispatch {
        placement,
        rank,
        top_k: k,
        hidden,
        local_experts: local,
        layout,
        inputs,
        pairs,
        pair_offsets,
        recv_tokens,
        tokens: t_count,
        topk_weights: topk_weights.to_vec(),
        sent_pairs,
    })
}

/// Returns the local experts' outputs `y` (`[dispatch.rows(), hidden]` BF16, in
/// `dispatch.layout`; padding rows are ignored) to the tokens' owners and combines them there
/// (collective). Returns `[T, hidden]` for this rank's tokens: bit for bit the reference
/// [`combine`] of the single-rank path (see the module documentation).
pub fn ep_combine<T: Transport + ?Sized>(
    transport: &mut T,
    dispatch: &EpDispatch,
    y: &[bf16],
    shared: Option<&[bf16]>,
) -> Result<Vec<bf16>> {
    const OP: &str = "ep_combine";
    let d = dispatch;
    let world = d.placement.world_size();
    if transport.rank() != d.rank || transport.world_size() != world {
        return Err(Error::invalid(
            OP,
            format!(
                "the transport is rank {} of {}, the dispatch was made on rank {} of {world}",
                transport.rank(),
                transport.world_size(),
                d.rank
            ),
        ));
    }
    let (hidden, k) = (d.hidden, d.top_k);
    check_len(OP, "y", y.len(), d.layout.rows * hidden)?;
    if let Some(s) = shared {
        check_len(OP, "shared", s.len(), d.tokens * hidden)?;
    }
    let row_bytes = 2 * hidden;

    // 1. Expert outputs back to the owners, pairs in the order they arrived.
    let send: Vec<Vec<u8>> = (0..world)
        .map(|p| {
            let range = d.pair_offsets[p]..d.pair_offsets[p + 1];
            let mut buf = Vec::with_capacity(range.len() * row_bytes);
            for pi in range {
                let r = d.layout.slot[pi];
                put_bf16s(&mut buf, &y[r * hidden..(r + 1) * hidden]);
            }
            buf
        })
        .collect();
    let recv_len: Vec<usize> = d.sent_pairs.iter().map(|s| s.len() * row_bytes).collect();
    let recv = transport.all_to_all_bytes(&send, &recv_len)?;
    drop(send);

    // 2. Every returned row to its (t, k) position, then the reference combine.
    let mut y_pairs = vec![bf16::ZERO; d.tokens * k * hidden];
    for (p, bytes) in recv.iter().enumerate() {
        if bytes.len() != recv_len[p] {
            return Err(Error::shape(
                OP,
                format!(
                    "rank {}: got {} bytes from rank {p}, expected {}",
                    d.rank,
                    bytes.len(),
                    recv_len[p]
                ),
            ));
        }
        for (&flat, row) in d.sent_pairs[p].iter().zip(bytes.chunks_exact(row_bytes)) {
            let dst = &mut y_pairs[flat * hidden..(flat + 1) * hidden];
            for (o, c) in dst.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]]));
            }
        }
    }
    let identity: Vec<usize> = (0..d.tokens * k).collect();
    combine(&y_pairs, hidden, &identity, &d.topk_weights, k, shared)
}
