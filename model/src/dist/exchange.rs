//! One MoE layer's expert-parallel exchange on the CPU backend: dispatch the token rows to the
//! ranks holding their experts, run the local experts, combine the outputs back.
//!
//! # Protocol (every rank, every MoE layer, also with zero tokens)
//!
//! 1. **Dispatch.** For each destination rank `d`, this rank sends each of its tokens `t` (in
//!    increasing `t`) that chose at least one expert of `d`, **once**: the row in the layer's
//!    [`RowFormat`] followed by its `K` expert ids as `i32` (`-1` for choices held elsewhere).
//!    Row counts go first ([`RankComm::all_to_all_counts`]), then the rows.
//! 2. **Experts.** The receiver lists the `(source rank, row, choice)` pairs in that order,
//!    groups them by local expert and runs each expert on its rows (row-invariantly: the
//!    result of a row does not depend on the others).
//! 3. **Combine.** For each source rank, the expert outputs of its pairs go back in the same
//!    order, unweighted. The owner, knowing what it sent where, puts each at its `(t, k)` slot;
//!    the caller ([`Moe::forward`]) weights and sums a token's outputs in increasing expert id,
//!    so the result is the same whichever ranks computed them.
//!
//! No value is rounded on the way: the FP8 rows are the codes and scales the expert's own
//! quantization would make, BF16 rows are BF16 values, and outputs return in a format that holds
//! them exactly ([`output_format`]).

use half::bf16;
use kernels::dtype::E4m3;
use kernels::reference::fp8_quant::Fp8Activations;
use kernels::reference::{quantize_fp8, ScaleLayout};
use moe_dispatch::ep::ExpertPlacement;

use crate::cpu::forward::ExpertRows;
use crate::cpu::weights::Moe;
use crate::cpu::{Context, Precision};
use crate::error::{ModelError, Result};

use super::comm::RankComm;

/// How a row of `hidden` values travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowFormat {
    /// f32, 4 bytes a value: the exact precision.
    F32,
    /// BF16, 2 bytes a value: fp8 precision where the values are BF16 already.
    Bf16,
    /// e4m3 codes then one f32 scale per 128 values (`ue8m0`: power-of-two scales), about
    /// 1 byte a value: the rows FP8 experts multiply.
    Fp8 { ue8m0: bool },
}

impl RowFormat {
    /// Bytes of one row of `hidden` values.
    pub fn row_bytes(self, hidden: usize) -> usize {
        match self {
            RowFormat::F32 => 4 * hidden,
            RowFormat::Bf16 => 2 * hidden,
            RowFormat::Fp8 { .. } => hidden + 4 * hidden.div_ceil(128),
        }
    }
}

/// The format of the dispatched token rows: FP8 where the experts are FP8 and run in fp8
/// precision (half the bytes of BF16, as DeepEP dispatches), BF16 in fp8 precision otherwise
/// (the normed residual is BF16 there), f32 in exact precision.
pub fn input_format(ctx: &Context) -> RowFormat {
    match (ctx.precision, &ctx.cfg.quantization) {
        (Precision::Exact, _) => RowFormat::F32,
        (Precision::Fp8, Some(_)) => RowFormat::Fp8 {
            ue8m0: ctx.cfg.ue8m0_scales(),
        },
        (Precision::Fp8, None) => RowFormat::Bf16,
    }
}

/// The format of the returned expert outputs: BF16 where the FP8 GEMM wrote BF16, else f32.
pub fn output_format(ctx: &Context) -> RowFormat {
    match input_format(ctx) {
        RowFormat::Fp8 { .. } => RowFormat::Bf16,
        _ => RowFormat::F32,
    }
}

fn put_f32s(out: &mut Vec<u8>, values: &[f32], format: RowFormat) {
    match format {
        RowFormat::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        RowFormat::Bf16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_bits().to_le_bytes())),
        RowFormat::Fp8 { .. } => unreachable!("FP8 rows are encoded from their codes"),
    }
}

fn get_f32s(bytes: &[u8], format: RowFormat, out: &mut Vec<f32>) {
    match format {
        RowFormat::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        RowFormat::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        RowFormat::Fp8 { .. } => unreachable!("FP8 rows are decoded into codes and scales"),
    }
}

/// The sizes of one layer's exchange, the same on every rank.
struct Wire {
    hidden: usize,
    top_k: usize,
    input: RowFormat,
    output: RowFormat,
}

impl Wire {
    /// Bytes of one dispatched row: the token row, then its K expert ids.
    fn in_row(&self) -> usize {
        self.input.row_bytes(self.hidden) + 4 * self.top_k
    }

    fn out_row(&self) -> usize {
        self.output.row_bytes(self.hidden)
    }
}

/// This rank's side of one MoE layer's exchange. `x` is `[T, hidden]`, `ids` the routing
/// `[T, K]` (global expert ids). Returns each `(t, k)` pair's expert output, `[T * K, hidden]`.
pub fn moe_exchange(
    comm: &RankComm,
    ctx: &Context,
    moe: &Moe,
    x: &[f32],
    ids: &[i32],
) -> Result<Vec<f32>> {
    let rank = comm.rank();
    let local = comm.placement().local_experts(rank);
    if moe.experts.range() != local {
        return Err(ModelError::request(format!(
            "rank {rank} holds experts {:?} but the placement gives it {local:?}",
            moe.experts.range()
        )));
    }
    let wire = Wire {
        hidden: ctx.cfg.hidden_size,
        top_k: moe.routing.top_k,
        input: input_format(ctx),
        output: output_format(ctx),
    };

    // 1. Dispatch: each token once per destination holding one of its experts.
    let plan = Destinations::new(comm, ids, wire.top_k);
    let send = pack_tokens(&plan, x, ids, &wire)?;
    let counts: Vec<u64> = plan.tokens.iter().map(|l| l.len() as u64).collect();
    let recv_counts = comm.all_to_all_counts(&counts)?;
    let recv_len = recv_counts
        .iter()
        .enumerate()
        .map(|(p, &c)| {
            usize::try_from(c)
                .ok()
                .and_then(|c| c.checked_mul(wire.in_row()))
                .ok_or_else(|| {
                    ModelError::collective(format!(
                        "rank {rank}: rank {p} announced {c} rows, more than this rank can hold"
                    ))
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let received = comm.all_to_all_bytes(&send, &recv_len)?;

    // 2. The local experts on what arrived; their outputs packed per source rank.
    let back = serve_experts(comm, ctx, moe, &received, &wire)?;

    // 3. Combine: every pair's output back to its token's owner.
    let back_len: Vec<usize> = plan.pairs.iter().map(|&n| n * wire.out_row()).collect();
    let returned = comm.all_to_all_bytes(&back, &back_len)?;
    unpack_outputs(&plan, &returned, ids, &wire, rank)
}

/// Where this rank's tokens go: per destination rank, the tokens (increasing) with at least one
/// expert there, and the number of (token, choice) pairs it holds.
struct Destinations {
    placement: ExpertPlacement,
    tokens: Vec<Vec<usize>>,
    pairs: Vec<usize>,
}

impl Destinations {
    fn new(comm: &RankComm, ids: &[i32], top_k: usize) -> Self {
        let placement = *comm.placement();
        let world = comm.world_size();
        let owner = |e: i32| placement.owner(e as usize);
        let mut tokens: Vec<Vec<usize>> = vec![Vec::new(); world];
        let mut pairs = vec![0; world];
        for (t, choices) in ids.chunks_exact(top_k).enumerate() {
            let mut seen = vec![false; world];
            for &e in choices {
                let d = owner(e);
                pairs[d] += 1;
                if !seen[d] {
                    seen[d] = true;
                    tokens[d].push(t);
                }
            }
        }
        Destinations {
            placement,
            tokens,
            pairs,
        }
    }

    /// The rank holding global expert `e`.
    fn owner(&self, e: i32) -> usize {
        self.placement.owner(e as usize)
    }
}

/// The dispatch buffers, one per destination: each token's row in the wire's input format, then
/// its K expert ids (`-1` where the expert is elsewhere).
fn pack_tokens(plan: &Destinations, x: &[f32], ids: &[i32], wire: &Wire) -> Result<Vec<Vec<u8>>> {
    let (hidden, top_k) = (wire.hidden, wire.top_k);
    let quantized = match wire.input {
        RowFormat::Fp8 { ue8m0 } => Some(quantize_fp8(x, hidden, ue8m0, ScaleLayout::TokenMajor)?),
        _ => None,
    };
    Ok(plan
        .tokens
        .iter()
        .enumerate()
        .map(|(d, list)| {
            let mut buf = Vec::with_capacity(list.len() * wire.in_row());
            for &t in list {
                match &quantized {
                    Some(a) => {
                        let blocks = a.blocks();
                        buf.extend(a.q[t * hidden..][..hidden].iter().map(|c| c.0));
                        for s in &a.scales[t * blocks..][..blocks] {
                            buf.extend_from_slice(&s.to_le_bytes());
                        }
                    }
                    None => put_f32s(&mut buf, &x[t * hidden..][..hidden], wire.input),
                }
                for &e in &ids[t * top_k..][..top_k] {
                    let here = if plan.owner(e) == d { e } else { -1 };
                    buf.extend_from_slice(&here.to_le_bytes());
                }
            }
            buf
        })
        .collect())
}

/// Runs this rank's experts on the rows `received[p]` from every rank `p` (pairs in (source,
/// row, choice) order) and packs, per source, the outputs in that same order.
fn serve_experts(
    comm: &RankComm,
    ctx: &Context,
    moe: &Moe,
    received: &[Vec<u8>],
    wire: &Wire,
) -> Result<Vec<Vec<u8>>> {
    let (rank, hidden) = (comm.rank(), wire.hidden);
    let local = comm.placement().local_experts(rank);
    let (in_row, payload) = (wire.in_row(), wire.input.row_bytes(hidden));
    // Per local expert: (source rank, row) of each of its rows; per source: (expert, index in
    // that expert's rows) of each pair, in the order the outputs go back.
    let mut expert_rows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); local.len()];
    let mut returns: Vec<Vec<(usize, usize)>> = vec![Vec::new(); received.len()];
    for (p, bytes) in received.iter().enumerate() {
        for (j, row) in bytes.chunks_exact(in_row).enumerate() {
            for id in row[payload..].chunks_exact(4) {
                let e = i32::from_le_bytes([id[0], id[1], id[2], id[3]]);
                if e == -1 {
                    continue;
                }
                if e < 0 || !local.contains(&(e as usize)) {
                    return Err(ModelError::collective(format!(
                        "rank {rank}: rank {p} sent a row for expert {e}, which this rank does \
                         not hold (it holds {local:?})"
                    )));
                }
                let le = e as usize - local.start;
                returns[p].push((le, expert_rows[le].len()));
                expert_rows[le].push((p, j));
            }
        }
    }
    let inputs: Vec<ExpertRows> = expert_rows
        .iter()
        .map(|rows| gather_rows(rows, received, wire.input, in_row, hidden))
        .collect();
    let outputs = moe.experts.run(ctx, &inputs)?;
    Ok(returns
        .iter()
        .map(|pairs| {
            let mut buf = Vec::with_capacity(pairs.len() * wire.out_row());
            for &(le, i) in pairs {
                put_f32s(&mut buf, &outputs[le][i * hidden..][..hidden], wire.output);
            }
            buf
        })
        .collect())
}

/// Puts every returned expert output at its `(t, k)` slot: `[T * K, hidden]`.
fn unpack_outputs(
    plan: &Destinations,
    returned: &[Vec<u8>],
    ids: &[i32],
    wire: &Wire,
    rank: usize,
) -> Result<Vec<f32>> {
    let (hidden, top_k) = (wire.hidden, wire.top_k);
    let mut pair_out = vec![0.0f32; ids.len() * hidden];
    let mut row = Vec::with_capacity(hidden);
    for (d, bytes) in returned.iter().enumerate() {
        let mut rows = bytes.chunks_exact(wire.out_row());
        for &t in &plan.tokens[d] {
            for k in 0..top_k {
                if plan.owner(ids[t * top_k + k]) != d {
                    continue;
                }
                let src = rows.next().ok_or_else(|| {
                    ModelError::collective(format!(
                        "rank {rank}: rank {d} returned fewer expert outputs than it was sent"
                    ))
                })?;
                row.clear();
                get_f32s(src, wire.output, &mut row);
                pair_out[(t * top_k + k) * hidden..][..hidden].copy_from_slice(&row);
            }
        }
    }
    Ok(pair_out)
}

/// One local expert's input: its rows `(source rank, row index)` decoded from the received
/// bytes.
fn gather_rows(
    rows: &[(usize, usize)],
    received: &[Vec<u8>],
    format: RowFormat,
    in_row: usize,
    hidden: usize,
) -> ExpertRows {
    let row_bytes = |&(p, j): &(usize, usize)| &received[p][j * in_row..][..in_row];
    match format {
        RowFormat::Fp8 { .. } => {
            let blocks = hidden.div_ceil(128);
            let mut q = Vec::with_capacity(rows.len() * hidden);
            let mut scales = Vec::with_capacity(rows.len() * blocks);
            for r in rows {
                let b = row_bytes(r);
                q.extend(b[..hidden].iter().map(|&c| E4m3(c)));
                scales.extend(
                    b[hidden..hidden + 4 * blocks]
                        .chunks_exact(4)
                        .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]])),
                );
            }
            ExpertRows::Fp8(Fp8Activations {
                q,
                scales,
                tokens: rows.len(),
                channels: hidden,
                layout: ScaleLayout::TokenMajor,
            })
        }
        _ => {
            let mut x = Vec::with_capacity(rows.len() * hidden);
            let payload = format.row_bytes(hidden);
            for r in rows {
                get_f32s(&row_bytes(r)[..payload], format, &mut x);
            }
            ExpertRows::F32(x)
        }
    }
}
