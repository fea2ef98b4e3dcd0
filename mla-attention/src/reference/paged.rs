//! The paged-cache contract of the MLA decode kernel (spec §3.1, §6), and the KV append.
//!
//! # Layouts
//!
//! - cache `[num_blocks, BLOCK_SIZE = 64, 576]`: entry `[c_kv (512) ; k_pe (64)]`, one per token.
//!   Token position p of sequence b lives in block `block_table[b, p / 64]`, slot `p % 64`.
//! - `block_table` `[batch, max_blocks]` i32; only the first `ceil(seqlen / 64)` entries of a row
//!   are read (the rest is padding, conventionally -1, never dereferenced); those must be in
//!   `0..num_blocks`. Sequences may share blocks (a common prefix).
//! - `cache_seqlens` `[batch]` i32, ragged: the number of valid entries of each sequence, the new
//!   tokens included.
//! - q `[batch, S_q, H, 576]`: the packed absorbed query `[q_lat (512) ; q_pe (64)]`, S_q in
//!   1..=4 for decode and speculative verification, up to [`MAX_CHUNK_LEN`] for a prefill chunk
//!   attended in the same absorbed (MQA) form. The S_q query tokens are the LAST S_q entries of their sequence's cache and are causal
//!   among themselves: query i sees cache positions `0 .. seqlen - S_q + i + 1`.
//! - outputs: o_lat `[batch, S_q, H, 512]` f32 (the kernel rounds it to BF16) and
//!   lse `[batch, S_q, H]` f32, the natural-log log-sum-exp of the scaled scores.

use super::{dot, DecodeOutput, KV_DIM, KV_LORA_RANK, ROPE_DIM};
use kernels::error::check_len;
use kernels::reference::{apply_rope, rms_norm, RopeLayout, RopeParams};
use kernels::{Error, Float, Result};

const OP: &str = "mla_paged";
const APPEND_OP: &str = "mla_append_kv";

/// Tokens per cache block.
pub const BLOCK_SIZE: usize = 64;
/// Most query tokens per sequence in one decode call (1 plus up to 3 speculative tokens).
pub const MAX_QUERY_LEN: usize = 4;
/// Most query tokens per sequence in one paged attention call of any kind: decode steps use
/// 1..=[`MAX_QUERY_LEN`]; prompts are attended in chunks of up to this many tokens in the same
/// absorbed form (the kernel is the same; only the causal limits differ per query row).
pub const MAX_CHUNK_LEN: usize = 64;

/// The sizes a paged call is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedShape {
    /// Sequences in the batch.
    pub batch: usize,
    /// New tokens per sequence: S_q (1..=4 for decode, up to [`MAX_CHUNK_LEN`] for a prefill
    /// chunk), the appended tokens for `append_kv`.
    pub q_len: usize,
    /// Columns of the block table.
    pub max_blocks: usize,
    /// Blocks of the cache.
    pub num_blocks: usize,
}

impl PagedShape {
    /// Elements of a cache with `width` values per entry.
    pub fn cache_len(&self, width: usize) -> usize {
        self.num_blocks * BLOCK_SIZE * width
    }

    /// Checks the block table and lengths; returns the sequence lengths. `op` names the caller.
    pub fn check_tables(
        &self,
        op: &'static str,
        block_table: &[i32],
        cache_seqlens: &[i32],
    ) -> Result<Vec<usize>> {
        if self.q_len == 0 {
            return Err(Error::invalid(op, "q_len (new tokens per sequence) is 0"));
        }
        check_len(
            op,
            "block_table",
            block_table.len(),
            self.batch * self.max_blocks,
        )?;
        check_len(op, "cache_seqlens", cache_seqlens.len(), self.batch)?;
        let capacity = self.max_blocks * BLOCK_SIZE;
        let mut lens = Vec::with_capacity(self.batch);
        for (b, &len) in cache_seqlens.iter().enumerate() {
            if len < 0 || (len as usize) < self.q_len {
                return Err(Error::invalid(
                    op,
                    format!(
                        "sequence {b} has cache_seqlens {len}, fewer than its {} new tokens",
                        self.q_len
                    ),
                ));
            }
            let len = len as usize;
            if len > capacity {
                return Err(Error::invalid(
                    op,
                    format!(
                        "sequence {b} has {len} tokens, more than max_blocks {} * {BLOCK_SIZE} = \
                         {capacity}",
                        self.max_blocks
                    ),
                ));
            }
            let row = &block_table[b * self.max_blocks..][..self.max_blocks];
            for (j, &block) in row[..len.div_ceil(BLOCK_SIZE)].iter().enumerate() {
                if block < 0 || block as usize >= self.num_blocks {
                    return Err(Error::index(
                        op,
                        format!(
                            "block_table[{b}, {j}] = {block}, the cache has {} blocks",
                            self.num_blocks
                        ),
                    ));
                }
            }
            lens.push(len);
        }
        Ok(lens)
    }
}

/// Entry index (in units of entries, i.e. `block * 64 + slot`) of position `p` of sequence `b`.
/// The table must have passed [`PagedShape::check_tables`].
pub fn slot(shape: &PagedShape, block_table: &[i32], b: usize, p: usize) -> usize {
    let block = block_table[b * shape.max_blocks + p / BLOCK_SIZE] as usize;
    block * BLOCK_SIZE + p % BLOCK_SIZE
}

/// Decode attention over the paged cache (layouts in the module docs), softmax online over the
/// 64-entry blocks as the kernel walks them, in f32. `shape.q_len` is S_q (1..=64). The query and
/// cache element types are independent (BF16 for the kernel, f32 for checks).
pub fn paged_decode<Q: Float, C: Float>(
    shape: &PagedShape,
    heads: usize,
    q: &[Q],
    cache: &[C],
    block_table: &[i32],
    cache_seqlens: &[i32],
    softmax_scale: f32,
) -> Result<DecodeOutput> {
    if !(1..=MAX_CHUNK_LEN).contains(&shape.q_len) {
        return Err(Error::invalid(
            OP,
            format!("S_q is {}, must be in 1..={MAX_CHUNK_LEN}", shape.q_len),
        ));
    }
    if heads == 0 {
        return Err(Error::invalid(OP, "heads is 0"));
    }
    let lens = shape.check_tables(OP, block_table, cache_seqlens)?;
    let s_q = shape.q_len;
    check_len(OP, "q", q.len(), shape.batch * s_q * heads * KV_DIM)?;
    check_len(OP, "cache", cache.len(), shape.cache_len(KV_DIM))?;

    let d_c = KV_LORA_RANK;
    let mut o_lat = vec![0.0f32; shape.batch * s_q * heads * d_c];
    let mut lse = vec![0.0f32; shape.batch * s_q * heads];
    for (b, &len) in lens.iter().enumerate() {
        // The sequence's entries in position order, as f32.
        let entries: Vec<f32> = (0..len)
            .flat_map(|p| {
                let e = slot(shape, block_table, b, p);
                cache[e * KV_DIM..][..KV_DIM].iter().map(|v| v.to_f32())
            })
            .collect();
        for i in 0..s_q {
            let visible = len - s_q + i + 1;
            for h in 0..heads {
                let row = (b * s_q + i) * heads + h;
                let qh: Vec<f32> = q[row * KV_DIM..][..KV_DIM]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
                let mut acc = vec![0.0f32; d_c];
                for start in (0..visible).step_by(BLOCK_SIZE) {
                    let block = &entries[start * KV_DIM..visible.min(start + BLOCK_SIZE) * KV_DIM];
                    let scores: Vec<f32> = block
                        .chunks_exact(KV_DIM)
                        .map(|e| {
                            (dot(&qh[..d_c], &e[..d_c]) + dot(&qh[d_c..], &e[d_c..]))
                                * softmax_scale
                        })
                        .collect();
                    let new_max = scores.iter().fold(max, |m, &x| m.max(x));
                    let rescale = (max - new_max).exp();
                    sum *= rescale;
                    acc.iter_mut().for_each(|a| *a *= rescale);
                    for (s, e) in scores.iter().zip(block.chunks_exact(KV_DIM)) {
                        let w = (s - new_max).exp();
                        sum += w;
                        for (a, c) in acc.iter_mut().zip(&e[..d_c]) {
                            *a += w * c;
                        }
                    }
                    max = new_max;
                }
                for (o, a) in o_lat[row * d_c..][..d_c].iter_mut().zip(&acc) {
                    *o = a / sum;
                }
                lse[row] = max + sum.ln();
            }
        }
    }
    Ok(DecodeOutput { o_lat, lse })
}

/// Writes the cache entries of the new tokens: for each sequence b, its `shape.q_len` new tokens
/// are positions `seqlen - q_len .. seqlen` (`cache_seqlens` already counts them), and token i gets
/// `[RMSNorm(kv[..512], kv_norm_weight) ; RoPE(kv[512..], p)]` with p its position, each part
/// rounded to `T` once.
///
/// - `kv` `[batch, q_len, 576]`: the `kv_a_proj_with_mqa` output (latent then rotary key).
/// - `kv_norm_weight` `[512]`: `kv_a_layernorm.weight`; `eps`: `rms_norm_eps`.
/// - `rope`: must have `rope_dim` 64; positions must be below `max_positions`.
///
/// Every argument is checked before anything is written: on error the cache is unchanged.
#[allow(clippy::too_many_arguments)]
pub fn append_kv<T: Float>(
    shape: &PagedShape,
    cache: &mut [T],
    kv: &[T],
    block_table: &[i32],
    cache_seqlens: &[i32],
    kv_norm_weight: &[T],
    eps: f32,
    rope: &RopeParams,
    max_positions: usize,
) -> Result<()> {
    let lens = shape.check_tables(APPEND_OP, block_table, cache_seqlens)?;
    let tokens = shape.batch * shape.q_len;
    check_len(APPEND_OP, "kv", kv.len(), tokens * KV_DIM)?;
    check_len(APPEND_OP, "cache", cache.len(), shape.cache_len(KV_DIM))?;
    if rope.rope_dim != ROPE_DIM {
        return Err(Error::invalid(
            APPEND_OP,
            format!("rope_dim is {}, the cache holds {ROPE_DIM}", rope.rope_dim),
        ));
    }

    let latent: Vec<T> = kv
        .chunks_exact(KV_DIM)
        .flat_map(|e| e[..KV_LORA_RANK].iter().copied())
        .collect();
    let normed = rms_norm(&latent, kv_norm_weight, KV_LORA_RANK, eps)?;
    let mut entries = Vec::with_capacity(tokens * KV_DIM);
    for (c, e) in normed
        .chunks_exact(KV_LORA_RANK)
        .zip(kv.chunks_exact(KV_DIM))
    {
        entries.extend_from_slice(c);
        entries.extend_from_slice(&e[KV_LORA_RANK..]);
    }
    let positions = lens
        .iter()
        .flat_map(|&len| (len - shape.q_len..len).map(|p| p as i32))
        .collect::<Vec<_>>();
    let layout = RopeLayout {
        tokens,
        heads: 1,
        token_stride: KV_DIM,
        head_stride: 0,
        offset: KV_LORA_RANK,
    };
    apply_rope(&mut entries, &layout, &positions, rope, max_positions)?;

    for (t, entry) in entries.chunks_exact(KV_DIM).enumerate() {
        let b = t / shape.q_len;
        let e = slot(shape, block_table, b, positions[t] as usize);
        cache[e * KV_DIM..][..KV_DIM].copy_from_slice(entry);
    }
    Ok(())
}
