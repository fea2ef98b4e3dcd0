//! The decoder layer forward pass of spec §3 on the CPU: MLA in the absorbed form over a paged
//! cache of `[c_kv ; k_pe]` entries, then the dense MLP or the MoE.

use kernels::reference::fp8_quant::Fp8Activations;
use kernels::reference::{apply_rope, rms_norm, RopeLayout, RopeParams};
use mla_attention::reference::MlaDims;
use moe_dispatch::reference::routing::route;
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::dist::RankComm;
use crate::error::Result;

use super::attention::{absorb_output, absorb_query, attend_token, entry_index, CacheView};
use super::linear::{round_bf16, Linear};
use super::mha::mha_attention;
use super::weights::{Attention, DecoderLayer, Ffn, Mlp, Moe, QueryProj};
use super::Precision;

/// New tokens of one sequence in a forward call.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// The new tokens.
    pub ids: &'a [u32],
    /// Position of the first new token (the tokens already in the cache).
    pub start: usize,
    /// The sequence's cache blocks, enough for `start + ids.len()` tokens.
    pub blocks: &'a [u32],
}

/// What every layer of a call shares.
#[derive(Debug)]
pub struct Context<'a> {
    pub cfg: &'a ModelConfig,
    pub rope: &'a RopeParams,
    pub softmax_scale: f32,
    pub precision: Precision,
    /// Positions must stay below this (the RoPE table length, `max_position_embeddings`).
    pub max_positions: usize,
    /// Debugging hook: when set, every MoE layer appends its routed expert ids (`[rows, top_k]`,
    /// best first) here (see [`CpuModel::forward_trace`](super::CpuModel::forward_trace)).
    pub routing_trace: Option<&'a std::sync::Mutex<Vec<Vec<i32>>>>,
    /// Every linear layer through [`Linear::forward_row_invariant`]: set in a distributed world,
    /// whose ranks multiply other row sets than one process would (see `crate::dist`).
    pub row_invariant: bool,
    /// This rank's place in an expert-parallel world: MoE layers send their tokens to the ranks
    /// that hold the chosen experts. `None`: every expert is local.
    pub ep: Option<&'a RankComm>,
    /// A sequence with at least this many new tokens takes the MHA form of attention in exact
    /// precision ([`super::mha::MHA_MIN_NEW_TOKENS`]; `usize::MAX`: never).
    pub mha_min_new_tokens: usize,
}

impl Context<'_> {
    /// Values the GPU stores in BF16 (norm outputs, the residual stream, cache entries) are
    /// rounded to BF16 in `fp8` precision so the CPU `fp8` path sees what the GPU sees; `exact`
    /// keeps f32 throughout.
    pub fn store(&self, v: &mut [f32]) {
        if self.precision == Precision::Fp8 {
            v.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
    }

    pub fn norm(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        let mut y = rms_norm(x, w, w.len(), self.cfg.rms_norm_eps as f32)?;
        self.store(&mut y);
        Ok(y)
    }

    fn dims(&self) -> MlaDims {
        mla_dims(self.cfg)
    }

    /// Whether a sequence with `new_tokens` new tokens takes the MHA form (spec §3.1): exact
    /// precision only, since fp8 mirrors the CUDA backend, which runs the absorbed form.
    pub fn mha_prefill(&self, new_tokens: usize) -> bool {
        self.precision == Precision::Exact && new_tokens >= self.mha_min_new_tokens
    }

    /// `y = x W^T` as this call multiplies: row-invariant in a distributed world.
    pub fn linear(&self, w: &Linear, x: &[f32]) -> Result<Vec<f32>> {
        if self.row_invariant {
            w.forward_row_invariant(x)
        } else {
            w.forward(x)
        }
    }
}

/// The attention widths of `cfg` in the mla-attention crate's terms.
pub fn mla_dims(cfg: &ModelConfig) -> MlaDims {
    MlaDims {
        heads: cfg.num_attention_heads,
        kv_lora_rank: cfg.kv_lora_rank,
        qk_nope_head_dim: cfg.qk_nope_head_dim,
        qk_rope_head_dim: cfg.qk_rope_head_dim,
        v_head_dim: cfg.v_head_dim,
    }
}

/// Positions of every new token of `seqs`, in order.
pub fn positions(seqs: &[SeqChunk]) -> Vec<i32> {
    seqs.iter()
        .flat_map(|s| (s.start..s.start + s.ids.len()).map(|p| p as i32))
        .collect()
}

impl DecoderLayer {
    /// Runs the layer on the residual stream `x` ([tokens, hidden]) in place, appending the new
    /// tokens' entries to `cache` (this layer's `[num_blocks * 64, d_c + d_rope]`).
    pub fn forward(
        &self,
        ctx: &Context,
        x: &mut [f32],
        seqs: &[SeqChunk],
        cache: &mut [f32],
    ) -> Result<()> {
        let h = ctx.norm(x, &self.input_norm)?;
        let attn = self.attention.forward(ctx, &h, seqs, cache)?;
        add_residual(ctx, x, &attn);
        let h = ctx.norm(x, &self.post_attention_norm)?;
        let ffn = match &self.ffn {
            Ffn::Dense(mlp) => mlp.forward(ctx, &h)?,
            Ffn::Moe(moe) => moe.forward(ctx, &h)?,
        };
        add_residual(ctx, x, &ffn);
        Ok(())
    }
}

fn add_residual(ctx: &Context, x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    ctx.store(x);
}

impl Attention {
    fn forward(
        &self,
        ctx: &Context,
        h: &[f32],
        seqs: &[SeqChunk],
        cache: &mut [f32],
    ) -> Result<Vec<f32>> {
        let cfg = ctx.cfg;
        let dims = ctx.dims();
        let (heads, d_c) = (dims.heads, dims.kv_lora_rank);
        let (d_nope, d_rope) = (dims.qk_nope_head_dim, dims.qk_rope_head_dim);
        let q_head = d_nope + d_rope;
        let width = d_c + d_rope;
        let tokens = h.len() / cfg.hidden_size;
        let pos = positions(seqs);

        let mut q = match &self.q {
            QueryProj::Lora { q_a, q_a_norm, q_b } => {
                let mut c_q = ctx.linear(q_a, h)?;
                ctx.store(&mut c_q);
                ctx.linear(q_b, &ctx.norm(&c_q, q_a_norm)?)?
            }
            QueryProj::Direct(q_proj) => ctx.linear(q_proj, h)?,
        };
        let q_layout = RopeLayout {
            tokens,
            heads,
            token_stride: heads * q_head,
            head_stride: q_head,
            offset: d_nope,
        };
        apply_rope(&mut q, &q_layout, &pos, ctx.rope, ctx.max_positions)?;
        // The GPU applies RoPE in place on its BF16 q (q_pe rounded to BF16 again).
        ctx.store(&mut q);

        // New cache entries: [RMSNorm(c_kv) ; RoPE(k_pe)].
        let kv = ctx.linear(&self.kv_a, h)?;
        let entries = cache_entries(ctx, &kv, &self.kv_a_norm, &pos)?;
        let mut t = 0;
        for s in seqs {
            for p in s.start..s.start + s.ids.len() {
                let e = entry_index(s.blocks, p);
                cache[e * width..][..width].copy_from_slice(&entries[t * width..][..width]);
                t += 1;
            }
        }

        // Every token's query position; then the attention output [tokens, H, d_v] in the
        // form each sequence takes: MHA for a long enough chunk in exact precision, else
        // absorbed.
        let mut owner = Vec::with_capacity(tokens);
        for (i, s) in seqs.iter().enumerate() {
            owner.extend((s.start..s.start + s.ids.len()).map(|p| (i, p)));
        }
        let cache: &[f32] = cache;
        let takes_mha = |s: &SeqChunk| ctx.mha_prefill(s.ids.len());
        let mut o = if seqs.iter().any(takes_mha) {
            let d_v = dims.v_head_dim;
            let absorbed_rows: Vec<usize> = (0..tokens)
                .filter(|&t| !takes_mha(&seqs[owner[t].0]))
                .collect();
            let mut o = vec![0.0f32; tokens * heads * d_v];
            if !absorbed_rows.is_empty() {
                let rows_of = |x: &[f32], w: usize| -> Vec<f32> {
                    absorbed_rows
                        .iter()
                        .flat_map(|&t| &x[t * w..][..w])
                        .copied()
                        .collect()
                };
                let q_rows = rows_of(&q, heads * q_head);
                let owners: Vec<(usize, usize)> = absorbed_rows.iter().map(|&t| owner[t]).collect();
                let part = self.absorbed(ctx, &q_rows, &owners, seqs, cache);
                for (&t, row) in absorbed_rows.iter().zip(part.chunks_exact(heads * d_v)) {
                    o[t * heads * d_v..][..heads * d_v].copy_from_slice(row);
                }
            }
            let mut row0 = 0;
            for s in seqs {
                let n = s.ids.len();
                if takes_mha(s) {
                    let kv = CacheView {
                        cache,
                        blocks: s.blocks,
                        len: s.start + n,
                        width,
                    };
                    let q_rows = &q[row0 * heads * q_head..][..n * heads * q_head];
                    let part = mha_attention(&dims, q_rows, &kv, &self.kv_b_f32, ctx.softmax_scale);
                    o[row0 * heads * d_v..][..n * heads * d_v].copy_from_slice(&part);
                }
                row0 += n;
            }
            o
        } else {
            self.absorbed(ctx, &q, &owner, seqs, cache)
        };
        ctx.store(&mut o);
        ctx.linear(&self.o, &o)
    }

    /// The absorbed form (the decode path) for the queries `q` `[rows, H, d_nope + d_rope]`
    /// (RoPE applied) of the tokens `owner[r] = (sequence, position)`, each causal over its own
    /// sequence's cache: the attention output `[rows, H, d_v]` before `o_proj`.
    fn absorbed(
        &self,
        ctx: &Context,
        q: &[f32],
        owner: &[(usize, usize)],
        seqs: &[SeqChunk],
        cache: &[f32],
    ) -> Vec<f32> {
        let dims = ctx.dims();
        let (heads, d_c) = (dims.heads, dims.kv_lora_rank);
        let (d_nope, d_rope) = (dims.qk_nope_head_dim, dims.qk_rope_head_dim);
        let (q_head, width) = (d_nope + d_rope, d_c + d_rope);
        let tokens = owner.len();
        // Absorbed queries [tokens, H, d_c] = W_UK^T q_nope (q_pe stays in `q`).
        let mut q_lat = absorb_query(&dims, q, &self.kv_b_f32);
        ctx.store(&mut q_lat);
        let mut o_lat = vec![0.0f32; tokens * heads * d_c];
        o_lat
            .par_chunks_exact_mut(heads * d_c)
            .enumerate()
            .for_each(|(t, out)| {
                let (seq, p) = owner[t];
                let q_pe: Vec<f32> = q[t * heads * q_head..][..heads * q_head]
                    .chunks_exact(q_head)
                    .flat_map(|qh| &qh[d_nope..])
                    .copied()
                    .collect();
                let kv = CacheView {
                    cache,
                    blocks: seqs[seq].blocks,
                    len: p + 1,
                    width,
                };
                let lat = &q_lat[t * heads * d_c..][..heads * d_c];
                let bf16_p = ctx.precision == Precision::Fp8;
                attend_token(heads, lat, &q_pe, &kv, ctx.softmax_scale, bf16_p, out);
            });
        ctx.store(&mut o_lat);
        absorb_output(&dims, &o_lat, &self.w_uv_t)
    }
}

/// The cache entries `[tokens, d_c + d_rope]` of new tokens: `[RMSNorm(c_kv) ; RoPE(k_pe, p)]`
/// from the `kv_a_proj_with_mqa` output `kv` (`[tokens, d_c + d_rope]`) at positions `pos`,
/// stored as the precision stores (BF16 values in fp8).
pub fn cache_entries(
    ctx: &Context,
    kv: &[f32],
    kv_a_norm: &[f32],
    pos: &[i32],
) -> Result<Vec<f32>> {
    let d_c = ctx.cfg.kv_lora_rank;
    let width = d_c + ctx.cfg.qk_rope_head_dim;
    let tokens = kv.len() / width;
    let latent: Vec<f32> = kv
        .chunks_exact(width)
        .flat_map(|e| &e[..d_c])
        .copied()
        .collect();
    let latent = ctx.norm(&latent, kv_a_norm)?;
    let mut entries = Vec::with_capacity(tokens * width);
    for (c, e) in latent.chunks_exact(d_c).zip(kv.chunks_exact(width)) {
        entries.extend_from_slice(c);
        entries.extend_from_slice(&e[d_c..]);
    }
    let k_layout = RopeLayout {
        tokens,
        heads: 1,
        token_stride: width,
        head_stride: 0,
        offset: d_c,
    };
    apply_rope(&mut entries, &k_layout, pos, ctx.rope, ctx.max_positions)?;
    ctx.store(&mut entries);
    Ok(entries)
}

impl Mlp {
    /// `down(silu(gate(x)) * up(x))` for `x` [rows, hidden].
    pub fn forward(&self, ctx: &Context, x: &[f32]) -> Result<Vec<f32>> {
        let gate = ctx.linear(&self.gate, x)?;
        let up = ctx.linear(&self.up, x)?;
        self.finish(ctx, &gate, &up)
    }

    /// [`forward`](Self::forward) of rows as an expert receives them: f32 values, or FP8 codes
    /// with their scales (what the gate and up projections would have quantized them to).
    pub fn forward_rows(&self, ctx: &Context, rows: &ExpertRows) -> Result<Vec<f32>> {
        match rows {
            ExpertRows::F32(x) => self.forward(ctx, x),
            ExpertRows::Fp8(a) => {
                let gate = self.gate.forward_quantized(a, ctx.row_invariant)?;
                let up = self.up.forward_quantized(a, ctx.row_invariant)?;
                self.finish(ctx, &gate, &up)
            }
        }
    }

    fn finish(&self, ctx: &Context, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
        let mut act: Vec<f32> = gate
            .iter()
            .zip(up)
            .map(|(&g, &u)| kernels::reference::silu_mul::silu(g) * u)
            .collect();
        // In fp8 the GPU quantizes silu(g) * u straight from f32 (the fused kernel); the down
        // projection's own quantization does the same here, so nothing is rounded in between.
        if ctx.precision == Precision::Exact {
            ctx.store(&mut act);
        }
        ctx.linear(&self.down, &act)
    }
}

/// The input rows of one expert.
#[derive(Clone, Debug)]
pub enum ExpertRows {
    /// `[rows, hidden]` f32.
    F32(Vec<f32>),
    /// Token-major FP8 codes and per-128-channel scales (expert-parallel dispatch in fp8).
    Fp8(Fp8Activations),
}

impl Moe {
    /// Routed experts weighted by the router plus the shared experts, for `x` [rows, hidden].
    pub(crate) fn forward(&self, ctx: &Context, x: &[f32]) -> Result<Vec<f32>> {
        let hidden = ctx.cfg.hidden_size;
        let rows = x.len() / hidden;
        let top_k = self.routing.top_k;
        let z = ctx.linear(&self.gate, x)?;
        let routing = route(&z, self.bias.as_deref(), &self.routing)?;
        if let Some(trace) = ctx.routing_trace {
            trace
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(routing.ids.clone());
        }
        // One output row per (token, choice), `[rows * top_k, hidden]`.
        let pair_out = match ctx.ep {
            None => self.local_pair_outputs(ctx, x, &routing.ids)?,
            Some(comm) => crate::dist::exchange::moe_exchange(comm, ctx, self, x, &routing.ids)?,
        };
        // Each token's weighted expert outputs summed in increasing expert id (the order does
        // not depend on where the experts ran), then the shared experts.
        let mut y = vec![0.0f32; rows * hidden];
        for (t, out) in y.chunks_exact_mut(hidden).enumerate() {
            let ids = routing.ids_of(t);
            let mut order: Vec<usize> = (0..top_k).collect();
            order.sort_by_key(|&k| ids[k]);
            for k in order {
                let w = routing.weights_of(t)[k];
                let row = &pair_out[(t * top_k + k) * hidden..][..hidden];
                for (a, b) in out.iter_mut().zip(row) {
                    *a += w * b;
                }
            }
        }
        if let Some(shared) = &self.shared {
            let s = shared.forward(ctx, x)?;
            y.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        }
        ctx.store(&mut y);
        Ok(y)
    }

    /// Every (token, choice) pair's expert output row with all experts in this process:
    /// `[rows * top_k, hidden]`.
    fn local_pair_outputs(&self, ctx: &Context, x: &[f32], ids: &[i32]) -> Result<Vec<f32>> {
        let hidden = ctx.cfg.hidden_size;
        if self.experts.start != 0 || self.experts.len() != self.routing.num_experts {
            return Err(crate::error::ModelError::request(format!(
                "this MoE layer holds experts {:?} of {}; running it without an expert-parallel \
                 world needs all of them",
                self.experts.range(),
                self.routing.num_experts
            )));
        }
        // Group the pairs by expert so each expert multiplies all its rows at once (the
        // permute step of the GPU path, without the device layout).
        let mut per_expert: Vec<Vec<usize>> = vec![Vec::new(); self.experts.len()];
        for (pair, &e) in ids.iter().enumerate() {
            per_expert[e as usize].push(pair);
        }
        let top_k = self.routing.top_k;
        let inputs: Vec<ExpertRows> = per_expert
            .iter()
            .map(|pairs| {
                ExpertRows::F32(
                    pairs
                        .iter()
                        .flat_map(|&p| &x[(p / top_k) * hidden..][..hidden])
                        .copied()
                        .collect(),
                )
            })
            .collect();
        let outputs = self.experts.run(ctx, &inputs)?;
        let mut pair_out = vec![0.0f32; ids.len() * hidden];
        for (pairs, out) in per_expert.iter().zip(outputs) {
            for (&p, row) in pairs.iter().zip(out.chunks_exact(hidden)) {
                pair_out[p * hidden..][..hidden].copy_from_slice(row);
            }
        }
        Ok(pair_out)
    }
}
