//! MLA in its MHA form for prefill (spec §3.1): decompress every cached position's keys and
//! values per head through `kv_b_proj` once, then run ordinary causal attention with
//! `q.k` over `d_nope + d_rope = 192` channels and values of `d_v = 128`.
//!
//! The absorbed form (the decode path) instead multiplies each *query* into the latent space and
//! attends over `d_c + d_rope = 576` channels per position, with outputs of `d_c = 512`: per
//! (query, position) pair it costs `2 * (576 + 512)` flops against the MHA form's
//! `2 * (192 + 128)`. Decode has one query per sequence, so the absorbed form wins there; a
//! prompt has as many queries as positions, so the MHA form wins, and its products are large
//! matrix products the `gemm` crate runs at full speed. The two forms are the same function;
//! in f32 they differ by summation order only.
//!
//! Used in the `exact` precision only: `fp8` mirrors the CUDA backend, which has no MHA form yet.

use mla_attention::reference::MlaDims;
use rayon::prelude::*;

use super::attention::CacheView;
use super::linear::matmul_nt;

/// New tokens of one sequence from which a forward call takes the MHA form (fewer take the
/// absorbed form). The one place the choice is made: at 64 queries per sequence the MHA form's
/// decompression of the context (one `d_c x H * (d_nope + d_v)` product per position) is paid
/// back by the cheaper scores and outputs, and it runs as large matrix products. The choice
/// depends on the sequence alone, never on the rest of the batch, so a sequence's result does
/// not depend on what it is batched with.
pub const MHA_MIN_NEW_TOKENS: usize = 64;

/// The attention output `[n, H, d_v]` of one sequence's `n` new tokens, at positions
/// `kv.len - n .. kv.len`, before `o_proj`. `q` is `[n, H, d_nope + d_rope]` with RoPE applied,
/// `kv` the sequence's cache with the new tokens' entries already written, `kv_b` the f32
/// `kv_b_proj` `[H * (d_nope + d_v), d_c]`. Causal: query `i` sees positions `0 ..= start + i`.
pub fn mha_attention(
    dims: &MlaDims,
    q: &[f32],
    kv: &CacheView,
    kv_b: &[f32],
    scale: f32,
) -> Vec<f32> {
    let (heads, d_c) = (dims.heads, dims.kv_lora_rank);
    let (d_nope, d_rope, d_v) = (
        dims.qk_nope_head_dim,
        dims.qk_rope_head_dim,
        dims.v_head_dim,
    );
    let q_head = d_nope + d_rope;
    let n = q.len() / (heads * q_head);
    let len = kv.len;
    let start = len - n;

    // Every position's latent and RoPE key, then its keys and values for all heads at once.
    let mut latent = Vec::with_capacity(len * d_c);
    let mut k_pe = Vec::with_capacity(len * d_rope);
    for p in 0..len {
        let e = kv.entry(p);
        latent.extend_from_slice(&e[..d_c]);
        k_pe.extend_from_slice(&e[d_c..]);
    }
    let per_head = d_nope + d_v;
    let up = matmul_nt(&latent, kv_b, len, heads * per_head, d_c);

    let parts: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let mut k = Vec::with_capacity(len * q_head);
            let mut v_t = vec![0.0f32; d_v * len];
            for p in 0..len {
                let row = &up[(p * heads + h) * per_head..][..per_head];
                k.extend_from_slice(&row[..d_nope]);
                k.extend_from_slice(&k_pe[p * d_rope..][..d_rope]);
                for (c, &v) in row[d_nope..].iter().enumerate() {
                    v_t[c * len + p] = v;
                }
            }
            let q_h: Vec<f32> = (0..n)
                .flat_map(|i| &q[(i * heads + h) * q_head..][..q_head])
                .copied()
                .collect();
            let mut p = matmul_nt(&q_h, &k, n, len, q_head);
            for (i, row) in p.chunks_exact_mut(len).enumerate() {
                softmax_causal(row, start + i + 1, scale);
            }
            matmul_nt(&p, &v_t, n, d_v, len)
        })
        .collect();
    let mut out = vec![0.0f32; n * heads * d_v];
    for (h, part) in parts.iter().enumerate() {
        for (i, row) in part.chunks_exact(d_v).enumerate() {
            out[(i * heads + h) * d_v..][..d_v].copy_from_slice(row);
        }
    }
    out
}

/// Softmax of `scale * row[..visible]` in place (two passes in f32, as the absorbed path), the
/// masked tail set to 0.
fn softmax_causal(row: &mut [f32], visible: usize, scale: f32) {
    let (seen, masked) = row.split_at_mut(visible);
    seen.iter_mut().for_each(|s| *s *= scale);
    let max = seen.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    seen.iter_mut().for_each(|s| *s = (*s - max).exp());
    let sum: f32 = seen.iter().sum();
    seen.iter_mut().for_each(|s| *s /= sum);
    masked.iter_mut().for_each(|s| *s = 0.0);
}
