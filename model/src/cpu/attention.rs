//! The absorbed MLA attention of the CPU backend: the arithmetic of the mla-attention crate's
//! Rust references (`absorb_query`, `absorb_output`, the two-pass softmax over the paged cache),
//! element for element in the same order, but shaped as matrix products ([`ordered_matmul`]) and
//! spread over the rayon threads: per head for the absorptions (every token of the call shares
//! the head's weights), per token for the attention (every head of a token reads the same cache
//! entries).

use half::bf16;
use mla_attention::reference::MlaDims;
use mla_attention::BLOCK_SIZE;
use rayon::prelude::*;

use super::ordered::ordered_matmul;

/// Cache entry index of position `p` of a sequence with blocks `blocks`.
pub fn entry_index(blocks: &[u32], p: usize) -> usize {
    blocks[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE
}

/// Rows `[h * (d_nope + d_v) + row] * d_c` of `kv_b_proj` [H * (d_nope + d_v), d_c].
fn kv_b_row<'a>(dims: &MlaDims, kv_b: &'a [f32], h: usize, row: usize) -> &'a [f32] {
    let d_c = dims.kv_lora_rank;
    &kv_b[(h * (dims.qk_nope_head_dim + dims.v_head_dim) + row) * d_c..][..d_c]
}

/// W_UV[h] transposed for every head: `[H, d_c, d_v]`, so that the output absorption reads one
/// contiguous `d_v` row per latent channel.
pub fn transpose_w_uv(dims: &MlaDims, kv_b: &[f32]) -> Vec<f32> {
    let (heads, d_c, d_v) = (dims.heads, dims.kv_lora_rank, dims.v_head_dim);
    let mut out = vec![0.0f32; heads * d_c * d_v];
    for (h, head) in out.chunks_exact_mut(d_c * d_v).enumerate() {
        for v in 0..d_v {
            let row = kv_b_row(dims, kv_b, h, dims.qk_nope_head_dim + v);
            for (c, &w) in row.iter().enumerate() {
                head[c * d_v + v] = w;
            }
        }
    }
    out
}

/// Runs `per_head(h, out)` for every head in parallel, each filling `[tokens, width]`, and
/// interleaves the results into `[tokens, H, width]`.
fn per_head_rows(
    heads: usize,
    tokens: usize,
    width: usize,
    per_head: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let mut part = vec![0.0f32; tokens * width];
            per_head(h, &mut part);
            part
        })
        .collect();
    let mut out = vec![0.0f32; tokens * heads * width];
    for (h, part) in parts.iter().enumerate() {
        for (t, row) in part.chunks_exact(width).enumerate() {
            out[(t * heads + h) * width..][..width].copy_from_slice(row);
        }
    }
    out
}

/// `q_lat[t, h] = W_UK[h]^T q_nope[t, h]` (`[tokens, H, d_c]`) from the query projection `q`
/// (`[tokens, H, d_nope + d_rope]`), as `mla_attention::reference::absorb_query` sums it.
pub fn absorb_query(dims: &MlaDims, q: &[f32], kv_b: &[f32]) -> Vec<f32> {
    let (heads, d_c, d_nope) = (dims.heads, dims.kv_lora_rank, dims.qk_nope_head_dim);
    let q_head = d_nope + dims.qk_rope_head_dim;
    let tokens = q.len() / (heads * q_head);
    per_head_rows(heads, tokens, d_c, |h, out| {
        let w_uk = &kv_b[h * (d_nope + dims.v_head_dim) * d_c..][..d_nope * d_c];
        ordered_matmul(
            tokens,
            d_c,
            d_nope,
            |t| &q[(t * heads + h) * q_head..][..d_nope],
            |j| &w_uk[j * d_c..][..d_c],
            out,
        );
    })
}

/// `o[t, h] = W_UV[h] o_lat[t, h]` (`[tokens, H, d_v]`) from `o_lat` `[tokens, H, d_c]` and
/// [`transpose_w_uv`]'s `w_uv_t`, as `mla_attention::reference::absorb_output` sums it.
pub fn absorb_output(dims: &MlaDims, o_lat: &[f32], w_uv_t: &[f32]) -> Vec<f32> {
    let (heads, d_c, d_v) = (dims.heads, dims.kv_lora_rank, dims.v_head_dim);
    let tokens = o_lat.len() / (heads * d_c);
    per_head_rows(heads, tokens, d_v, |h, out| {
        let w = &w_uv_t[h * d_c * d_v..][..d_c * d_v];
        ordered_matmul(
            tokens,
            d_v,
            d_c,
            |t| &o_lat[(t * heads + h) * d_c..][..d_c],
            |c| &w[c * d_v..][..d_v],
            out,
        );
    })
}

/// One token's view of its sequence's cache: the first `len` entries through `blocks`.
#[derive(Clone, Copy, Debug)]
pub struct CacheView<'a> {
    pub cache: &'a [f32],
    pub blocks: &'a [u32],
    pub len: usize,
    /// Entry width `d_c + d_rope`.
    pub width: usize,
}

impl CacheView<'_> {
    pub(crate) fn entry(&self, p: usize) -> &[f32] {
        &self.cache[entry_index(self.blocks, p) * self.width..][..self.width]
    }
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; rows * cols];
    for (r, row) in x.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// Softmax attention of every head of one token over `kv`, two-pass in f32 as the reference
/// does per head: `out[h] = sum_s softmax(score[h])[s] * c_kv[s]` with
/// `score[h][s] = (q_lat[h] . c_kv[s] + q_pe[h] . k_pe[s]) * scale`.
/// `q_lat` is `[H, d_c]`, `q_pe` `[H, d_rope]`, `out` `[H, d_c]`.
///
/// `bf16_p` (the `fp8` precision): the weights multiplying `c_kv` are rounded to BF16 as the CUDA
/// decode kernel rounds its P tile for the P.V tensor-core product: the kernel's online softmax
/// over 64-entry tiles computes `P = bf16(exp(score - m_t))` with `m_t` the running max through
/// the entry's tile, rescales it by `exp(m_t - m)` (f32) once the final max `m` is known and
/// divides by the f32 sum of the unrounded `exp(score - m)`. Reproduced here to f32 rounding:
/// the BF16 rounding itself (up to 2^-9 per weight) is not negligible once the output is
/// re-quantized to e4m3 before `o_proj`.
pub fn attend_token(
    heads: usize,
    q_lat: &[f32],
    q_pe: &[f32],
    kv: &CacheView,
    scale: f32,
    bf16_p: bool,
    out: &mut [f32],
) {
    let d_c = q_lat.len() / heads;
    let d_rope = kv.width - d_c;
    let len = kv.len;
    // Scores transposed, [len, H]: the products run over positions x heads with k = channels,
    // so each cache entry is read once for all heads.
    let q_lat_t = transpose(q_lat, heads, d_c);
    let q_pe_t = transpose(q_pe, heads, d_rope);
    let mut s_lat = vec![0.0f32; len * heads];
    ordered_matmul(
        len,
        heads,
        d_c,
        |p| &kv.entry(p)[..d_c],
        |c| &q_lat_t[c * heads..][..heads],
        &mut s_lat,
    );
    let mut s_pe = vec![0.0f32; len * heads];
    ordered_matmul(
        len,
        heads,
        d_rope,
        |p| &kv.entry(p)[d_c..],
        |c| &q_pe_t[c * heads..][..heads],
        &mut s_pe,
    );

    let mut weights = vec![0.0f32; heads * len];
    let mut sums = vec![0.0f32; heads];
    for (h, (w, sum)) in weights.chunks_exact_mut(len).zip(&mut sums).enumerate() {
        for (p, wp) in w.iter_mut().enumerate() {
            *wp = (s_lat[p * heads + h] + s_pe[p * heads + h]) * scale;
        }
        let max = w.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        if bf16_p {
            let mut running = f32::NEG_INFINITY;
            for tile in w.chunks_mut(BLOCK_SIZE) {
                running = tile.iter().fold(running, |m, &s| m.max(s));
                let rescale = (running - max).exp();
                let mut tile_sum = 0.0f32;
                for s in tile.iter_mut() {
                    tile_sum += (*s - max).exp();
                    *s = bf16::from_f32((*s - running).exp()).to_f32() * rescale;
                }
                *sum += tile_sum;
            }
            continue;
        }
        w.iter_mut().for_each(|s| *s = (*s - max).exp());
        *sum = w.iter().sum();
    }

    ordered_matmul(
        heads,
        d_c,
        len,
        |h| &weights[h * len..][..len],
        |p| &kv.entry(p)[..d_c],
        out,
    );
    for (o, sum) in out.chunks_exact_mut(d_c).zip(&sums) {
        o.iter_mut().for_each(|v| *v /= sum);
    }
}
