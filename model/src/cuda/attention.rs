//! MLA on the device (spec §3.1, absorbed form): q path, KV append into the paged BF16 cache,
//! query absorption, the mla-attention crate's paged decode kernel, output absorption, o_proj.
//!
//! The paged attention kernel takes up to 64 new tokens per sequence (S_q <= MAX_CHUNK_LEN; decode
//! steps use 1..=4) and one S_q per launch, so a call's tokens are attended in rounds: round r
//! covers tokens 64r..64r+64 of every sequence, and each round launches once per distinct S_q
//! (sequences grouped by how many tokens they have left). All new entries are appended to the
//! cache before any round runs; the kernel's causal rule (query i of S_q sees
//! `seqlen - S_q + i + 1` entries) hides the later ones. Decode steps are one launch; a P-token
//! prefill is ceil(P / 64) launches per layer, plus a gather of the round's queries and a scatter
//! of its outputs. This is the absorbed (MQA) prefill form: 576 + 512 multiply-adds per head and
//! visible token, about 3.4x the flops of the MHA form (192 + 128) that a dedicated prefill kernel
//! would use for long prompts.

use std::collections::HashMap;

use half::bf16;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::ops::{apply_rope, quantize_fp8, rms_norm, Fp8Buffers, RopeTable};
use kernels::reference::{RopeLayout, ScaleLayout};
use mla_attention::gpu::{paged_decode, DecodeWorkspace};
use mla_attention::{BLOCK_SIZE, KV_DIM, KV_LORA_RANK};

use crate::config::ModelConfig;
use crate::cpu::SeqChunk;
use crate::error::Result;

use super::glue::{absorb_output, absorb_query, copy_rows, kv_append};
use super::profile::{mark, OpMarks};
use super::weights::{upload, zeros, Fp8Linear, GpuAttention, GpuQuery};

/// Most new tokens per sequence one attention launch takes (a prefill chunk).
const MAX_S_Q: usize = mla_attention::reference::MAX_CHUNK_LEN;
/// Most new tokens per sequence of a decode (or speculative verification) step.
const MAX_DECODE_S_Q: usize = mla_attention::reference::MAX_QUERY_LEN;

/// `y = x W^T` through the FP8 GEMM: x `[M, K]` BF16 is quantized per token per 128 channels
/// (block-major scales, the GEMM's A layout; power-of-two scales when `w.ue8m0`), the GEMM
/// writes BF16 `[M, N]`.
pub fn linear(gpu: &Gpu, w: &Fp8Linear, x: &DeviceTensor<bf16>) -> Result<DeviceTensor<bf16>> {
    let m = x.len() / w.k;
    let mut a = Fp8Buffers::new(gpu, m, w.k, ScaleLayout::BlockMajor)?;
    quantize_fp8(gpu, x, w.ue8m0, &mut a)?;
    linear_q(gpu, w, &a)
}

/// [`linear`] on already quantized activations.
pub fn linear_q(gpu: &Gpu, w: &Fp8Linear, a: &Fp8Buffers) -> Result<DeviceTensor<bf16>> {
    let m = a.q.shape()[0];
    let mut d = zeros(gpu, &[m, w.n], "a GEMM output")?;
    fp8_gemm::gpu::gemm_nt(gpu, &a.q, &a.scales, &w.w, &w.scales, None, &mut d)?;
    Ok(d)
}

/// One decode launch of a round: `batch` sequences with `s_q` tokens each.
#[derive(Debug)]
struct AttnGroup {
    batch: usize,
    s_q: usize,
    /// `[batch * s_q]` token rows of the call, in (sequence, token) order.
    rows: DeviceTensor<i32>,
    block_table: DeviceTensor<i32>,
    seqlens: DeviceTensor<i32>,
}

/// What every layer of one forward call shares: positions, cache slots, the attention rounds.
#[derive(Debug)]
pub struct CallPlan {
    pub tokens: usize,
    pub positions: DeviceTensor<i32>,
    /// `[T]` cache entry of each new token (`block * 64 + pos % 64`).
    pub slots: DeviceTensor<i32>,
    groups: Vec<AttnGroup>,
}

/// The host side of one decode launch (see [`attention_rounds`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostGroup {
    pub batch: usize,
    pub s_q: usize,
    /// `[batch * s_q]` token rows of the call.
    pub rows: Vec<i32>,
    /// `[batch, max_blocks]`, unused entries 0.
    pub table: Vec<i32>,
    pub max_blocks: usize,
    /// `[batch]` cache length of each sequence after this round.
    pub lens: Vec<i32>,
}

/// Positions and cache entry indices (`block * 64 + pos % 64`) of every new token, in order.
pub fn positions_and_slots(seqs: &[SeqChunk]) -> (Vec<i32>, Vec<i32>) {
    let mut positions = Vec::new();
    let mut slots = Vec::new();
    for s in seqs {
        for p in s.start..s.start + s.ids.len() {
            positions.push(p as i32);
            slots.push((s.blocks[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE) as i32);
        }
    }
    (positions, slots)
}

/// Most cached decode workspaces. Decode shapes (batch, S_q <= 4) recur every step and stay;
/// prefill chunks come in many shapes, and a chunk's split partials are large (S_q * H rows of
/// 512 f32 per split), so when the map is full the prefill workspaces are dropped first.
const MAX_CACHED_WORKSPACES: usize = 32;

/// The workspace of shape (batch, S_q), created on first use.
fn workspace_for<'w>(
    gpu: &Gpu,
    workspaces: &'w mut HashMap<(usize, usize), DecodeWorkspace>,
    batch: usize,
    s_q: usize,
    heads: usize,
) -> Result<&'w mut DecodeWorkspace> {
    if !workspaces.contains_key(&(batch, s_q)) && workspaces.len() >= MAX_CACHED_WORKSPACES {
        workspaces.retain(|&(_, cached_s_q), _| cached_s_q <= MAX_DECODE_S_Q);
        if workspaces.len() >= MAX_CACHED_WORKSPACES {
            workspaces.clear();
        }
    }
    Ok(match workspaces.entry((batch, s_q)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(DecodeWorkspace::new(gpu, batch, s_q, heads)?)
        }
    })
}

/// The attention launches of a call: round r takes tokens `64r..64r + 64` of every sequence, one
/// launch per distinct S_q among them (module docs).
pub fn attention_rounds(seqs: &[SeqChunk]) -> Vec<HostGroup> {
    let mut first_row = Vec::with_capacity(seqs.len());
    let mut t = 0;
    for s in seqs {
        first_row.push(t);
        t += s.ids.len();
    }
    let rounds = seqs
        .iter()
        .map(|s| s.ids.len().div_ceil(MAX_S_Q))
        .max()
        .unwrap_or(0);
    let mut groups = Vec::new();
    for r in 0..rounds {
        let first = r * MAX_S_Q;
        for s_q in 1..=MAX_S_Q {
            let members: Vec<usize> = (0..seqs.len())
                .filter(|&i| seqs[i].ids.len().saturating_sub(first).min(MAX_S_Q) == s_q)
                .collect();
            if members.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(members.len() * s_q);
            let mut lens = Vec::with_capacity(members.len());
            for &i in &members {
                rows.extend((first..first + s_q).map(|j| (first_row[i] + j) as i32));
                lens.push(seqs[i].start + first + s_q);
            }
            let max_blocks = lens
                .iter()
                .map(|l| l.div_ceil(BLOCK_SIZE))
                .max()
                .unwrap_or(1);
            let mut table = vec![0i32; members.len() * max_blocks];
            for (b, (&i, &len)) in members.iter().zip(&lens).enumerate() {
                for (j, &blk) in seqs[i].blocks[..len.div_ceil(BLOCK_SIZE)]
                    .iter()
                    .enumerate()
                {
                    table[b * max_blocks + j] = blk as i32;
                }
            }
            groups.push(HostGroup {
                batch: members.len(),
                s_q,
                rows,
                table,
                max_blocks,
                lens: lens.into_iter().map(|l| l as i32).collect(),
            });
        }
    }
    groups
}

impl CallPlan {
    pub fn new(gpu: &Gpu, seqs: &[SeqChunk]) -> Result<Self> {
        let (positions, slots) = positions_and_slots(seqs);
        let tokens = positions.len();
        let mut groups = Vec::new();
        for g in attention_rounds(seqs) {
            groups.push(AttnGroup {
                batch: g.batch,
                s_q: g.s_q,
                rows: upload(gpu, &g.rows, &[g.rows.len()], "attention round rows")?,
                block_table: upload(
                    gpu,
                    &g.table,
                    &[g.batch, g.max_blocks],
                    "attention block table",
                )?,
                seqlens: upload(gpu, &g.lens, &[g.batch], "attention sequence lengths")?,
            });
        }
        Ok(CallPlan {
            tokens,
            positions: upload(gpu, &positions, &[tokens], "positions")?,
            slots: upload(gpu, &slots, &[tokens], "KV cache slots")?,
            groups,
        })
    }
}

/// Per-call device state the attention needs besides the weights.
#[derive(Debug)]
pub struct AttnCtx<'a> {
    pub gpu: &'a Gpu,
    pub cfg: &'a ModelConfig,
    pub rope: &'a RopeTable,
    pub softmax_scale: f32,
    pub plan: &'a CallPlan,
    /// Op-group timing (`dsv3 bench --synthetic`); `None` in ordinary calls.
    pub marks: Option<&'a OpMarks<'a>>,
}

impl GpuAttention {
    /// The attention output `[T, hidden]` (before the residual add) of the normed input `h`,
    /// appending the new tokens' entries to `cache` (`[num_blocks, 64, 576]`).
    pub fn forward(
        &self,
        ctx: &AttnCtx,
        h: &DeviceTensor<bf16>,
        cache: &mut DeviceTensor<bf16>,
        workspaces: &mut HashMap<(usize, usize), DecodeWorkspace>,
        status: &mut DeviceStatus,
    ) -> Result<DeviceTensor<bf16>> {
        let (gpu, cfg, plan) = (ctx.gpu, ctx.cfg, ctx.plan);
        let eps = cfg.rms_norm_eps as f32;
        let heads = cfg.num_attention_heads;
        let (d_nope, d_rope) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim);
        let q_head = d_nope + d_rope;
        let tokens = plan.tokens;

        let mut q = match &self.q {
            GpuQuery::Lora { q_a, q_a_norm, q_b } => {
                let c_q = linear(gpu, q_a, h)?;
                let mut c_n = zeros(gpu, c_q.shape(), "q_a norm output")?;
                rms_norm(gpu, &c_q, q_a_norm, eps, &mut c_n)?;
                linear(gpu, q_b, &c_n)?
            }
            GpuQuery::Direct(q_proj) => linear(gpu, q_proj, h)?,
        };
        let layout = RopeLayout {
            tokens,
            heads,
            token_stride: heads * q_head,
            head_stride: q_head,
            offset: d_nope,
        };
        mark(ctx.marks, "attn_gemms")?;
        apply_rope(gpu, &mut q, &layout, &plan.positions, ctx.rope, status)?;
        mark(ctx.marks, "attn_glue")?;

        let kv = linear(gpu, &self.kv_a, h)?;
        mark(ctx.marks, "attn_gemms")?;
        kv_append(
            gpu,
            &kv,
            &self.kv_a_norm,
            ctx.rope,
            &plan.positions,
            &plan.slots,
            eps,
            cache,
            status,
        )?;

        let mut q_abs = zeros(gpu, &[tokens, heads, KV_DIM], "absorbed queries")?;
        absorb_query(gpu, &q, &self.w_uk, d_rope, &mut q_abs)?;
        mark(ctx.marks, "attn_glue")?;

        let mut o_lat = zeros(gpu, &[tokens, heads, KV_LORA_RANK], "attention output")?;
        for g in &plan.groups {
            let mut qg = zeros(gpu, &[g.batch, g.s_q, heads, KV_DIM], "round queries")?;
            copy_rows(
                gpu,
                &q_abs,
                Some(&g.rows),
                &mut qg,
                None,
                heads * KV_DIM,
                status,
            )?;
            let mut og = zeros(gpu, &[g.batch, g.s_q, heads, KV_LORA_RANK], "round output")?;
            let mut lse = zeros(gpu, &[g.batch, g.s_q, heads], "round lse")?;
            let ws = workspace_for(gpu, workspaces, g.batch, g.s_q, heads)?;
            paged_decode(
                gpu,
                ws,
                &qg,
                cache,
                &g.block_table,
                &g.seqlens,
                ctx.softmax_scale,
                &mut og,
                &mut lse,
                status,
            )?;
            mark(ctx.marks, "mla_decode")?;
            copy_rows(
                gpu,
                &og,
                None,
                &mut o_lat,
                Some(&g.rows),
                heads * KV_LORA_RANK,
                status,
            )?;
        }

        let mut o = zeros(gpu, &[tokens, heads * cfg.v_head_dim], "absorbed output")?;
        absorb_output(gpu, &o_lat, &self.w_uv, &mut o)?;
        mark(ctx.marks, "attn_glue")?;
        let out = linear(gpu, &self.o, &o)?;
        mark(ctx.marks, "attn_gemms")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_cover_every_token_once_with_causal_lengths() {
        let (a, b, c) = (vec![1u32; 70], vec![2u32; 1], vec![3u32; 6]);
        let (ta, tb, tc) = (vec![9u32, 4], vec![5u32], vec![0u32, 7, 8]);
        let seqs = [
            SeqChunk {
                ids: &a,
                start: 0,
                blocks: &ta,
            },
            SeqChunk {
                ids: &b,
                start: 0,
                blocks: &tb,
            },
            // A chunk starting mid-sequence in its second block.
            SeqChunk {
                ids: &c,
                start: 100,
                blocks: &tc,
            },
        ];
        let groups = attention_rounds(&seqs);
        let mut seen = vec![0; 77];
        for g in &groups {
            assert_eq!(g.rows.len(), g.batch * g.s_q);
            assert_eq!(g.lens.len(), g.batch);
            assert_eq!(g.table.len(), g.batch * g.max_blocks);
            for (b, rows) in g.rows.chunks_exact(g.s_q).enumerate() {
                for &r in rows {
                    seen[r as usize] += 1;
                }
                // The round's tokens are the last s_q entries of the cache length.
                let last = rows[g.s_q - 1] as usize;
                let (seq, pos) = match last {
                    0..=69 => (0, last),
                    70 => (1, 0),
                    _ => (2, 100 + last - 71),
                };
                assert_eq!(g.lens[b] as usize, pos + 1, "group {g:?}");
                let need = (pos + 1).div_ceil(BLOCK_SIZE);
                let blocks = [&ta, &tb, &tc][seq];
                for (j, &blk) in blocks.iter().enumerate().take(need) {
                    assert_eq!(g.table[b * g.max_blocks + j] as u32, blk);
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
        // Round 0: s_q 1 (sequence 1), 6 (sequence 2) and 64 (sequence 0).
        let round0: Vec<_> = groups[..3].iter().map(|g| (g.s_q, g.batch)).collect();
        assert_eq!(round0, [(1, 1), (6, 1), (MAX_S_Q, 1)]);
        // 70 = 64 + 6: the last round of sequence 0 has 6 tokens.
        let last = groups.last().unwrap();
        assert_eq!(groups.len(), 4);
        assert_eq!((last.s_q, last.batch, last.lens[0]), (6, 1, 70));
        let (pos, slots) = positions_and_slots(&seqs);
        assert_eq!((pos[64], slots[64]), (64, 4 * 64));
        assert_eq!((pos[71], slots[71]), (100, 7 * 64 + 36));
    }
}
