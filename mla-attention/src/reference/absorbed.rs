//! The absorbed form of MLA attention (spec §3.1), the decode kernel's contract:
//!
//! ```text
//! q_lat[h]   = W_UK[h]^T q_nope[h]                                           [d_c]
//! score[h,s] = (q_lat[h] . c_kv[s] + q_pe[h] . k_pe[s]) * softmax_scale
//! o_lat[h]   = sum_s softmax(score[h,:])[s] * c_kv[s]                          [d_c]
//! lse[h]     = ln(sum_s exp(score[h,s]))
//! o[h]       = W_UV[h] o_lat[h]                                              [d_v]
//! ```
//!
//! Multi-query attention with one KV head of width d_c + d_rope whose first d_c entries are also
//! the value. Absorbed queries and cache entries are packed as [latent ; rope].

use super::{dot, MlaDims};
use kernels::error::check_len;
use kernels::reference::YarnScaling;
use kernels::{Error, Result};

const OP: &str = "mla_absorbed";

/// softmax_scale = (d_nope + d_rope)^-0.5 * m^2, with m = 0.1 * mscale_all_dim * ln(factor) + 1
/// under YaRN when `mscale_all_dim` is set (non-zero) and the context is stretched (factor > 1),
/// else m = 1. Computed in f64, rounded to f32 once. DeepSeek-V3: 192^-0.5 * (0.1 ln 40 + 1)^2.
pub fn softmax_scale(dims: &MlaDims, yarn: Option<&YarnScaling>) -> f32 {
    let m = match yarn {
        Some(y) if y.mscale_all_dim != 0.0 && y.factor > 1.0 => {
            0.1 * y.mscale_all_dim * y.factor.ln() + 1.0
        }
        _ => 1.0,
    };
    let width = (dims.qk_nope_head_dim + dims.qk_rope_head_dim) as f64;
    (width.powf(-0.5) * m * m) as f32
}

/// `q_lat[n, h] = W_UK[h]^T q_nope[n, h]`: `q_nope` `[N, H, d_nope]` -> `[N, H, d_c]`.
pub fn absorb_query(dims: &MlaDims, q_nope: &[f32], kv_b_proj: &[f32]) -> Result<Vec<f32>> {
    dims.check(OP)?;
    let (heads, d_c, d_nope) = (dims.heads, dims.kv_lora_rank, dims.qk_nope_head_dim);
    check_len(OP, "kv_b_proj", kv_b_proj.len(), dims.kv_b_len())?;
    let tokens = rows_of(q_nope.len(), heads * d_nope, "q_nope")?;
    let mut out = vec![0.0f32; tokens * heads * d_c];
    for ((n, h), q_lat) in token_heads(tokens, heads).zip(out.chunks_exact_mut(d_c)) {
        let q = &q_nope[(n * heads + h) * d_nope..][..d_nope];
        // Column c of W_UK[h] (d_nope rows) dotted with q: accumulate row by row.
        for (row, qj) in dims.w_uk(kv_b_proj, h).chunks_exact(d_c).zip(q) {
            for (o, w) in q_lat.iter_mut().zip(row) {
                *o += w * qj;
            }
        }
    }
    Ok(out)
}

/// `o[n, h] = W_UV[h] o_lat[n, h]`: `o_lat` `[N, H, d_c]` -> `[N, H, d_v]`.
pub fn absorb_output(dims: &MlaDims, o_lat: &[f32], kv_b_proj: &[f32]) -> Result<Vec<f32>> {
    dims.check(OP)?;
    let (heads, d_c, d_v) = (dims.heads, dims.kv_lora_rank, dims.v_head_dim);
    check_len(OP, "kv_b_proj", kv_b_proj.len(), dims.kv_b_len())?;
    let tokens = rows_of(o_lat.len(), heads * d_c, "o_lat")?;
    let mut out = vec![0.0f32; tokens * heads * d_v];
    for ((n, h), o) in token_heads(tokens, heads).zip(out.chunks_exact_mut(d_v)) {
        let lat = &o_lat[(n * heads + h) * d_c..][..d_c];
        for (o, row) in o.iter_mut().zip(dims.w_uv(kv_b_proj, h).chunks_exact(d_c)) {
            *o = dot(row, lat);
        }
    }
    Ok(out)
}

/// Packs the absorbed query the decode kernel reads: [q_lat ; q_pe] per head.
/// `q_lat` [N, H, d_c], `q_pe` [N, H, d_rope] -> [N, H, d_c + d_rope].
pub fn pack_query(dims: &MlaDims, q_lat: &[f32], q_pe: &[f32]) -> Result<Vec<f32>> {
    dims.check(OP)?;
    let (d_c, d_rope) = (dims.kv_lora_rank, dims.qk_rope_head_dim);
    let rows = rows_of(q_lat.len(), d_c, "q_lat")?;
    check_len(OP, "q_pe", q_pe.len(), rows * d_rope)?;
    let mut out = Vec::with_capacity(rows * (d_c + d_rope));
    for (lat, pe) in q_lat.chunks_exact(d_c).zip(q_pe.chunks_exact(d_rope)) {
        out.extend_from_slice(lat);
        out.extend_from_slice(pe);
    }
    Ok(out)
}

/// Decode attention output: the latent output and the log-sum-exp of the scaled scores.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOutput {
    /// `[.., H, d_c]`, f32.
    pub o_lat: Vec<f32>,
    /// `[.., H]`: `ln(sum_s exp(score[h, s]))` (natural log, scores already scaled), f32.
    pub lse: Vec<f32>,
}

/// Decode attention of one query token over a contiguous cache, two-pass softmax in f32.
///
/// - `q` [H, d_c + d_rope]: the packed absorbed query (see [`pack_query`]).
/// - `cache` [S, d_c + d_rope]: entries [c_kv ; k_pe], S >= 1; every entry is attended (the
///   caller passes the causal prefix).
///
/// Uses `heads`, `kv_lora_rank` and `qk_rope_head_dim` of `dims`. Returns o_lat `[H, d_c]` and
/// lse `[H]`.
pub fn decode_attention(
    dims: &MlaDims,
    q: &[f32],
    cache: &[f32],
    softmax_scale: f32,
) -> Result<DecodeOutput> {
    dims.check(OP)?;
    let (heads, d_c) = (dims.heads, dims.kv_lora_rank);
    let width = d_c + dims.qk_rope_head_dim;
    check_len(OP, "q", q.len(), heads * width)?;
    let len = rows_of(cache.len(), width, "cache")?;
    if len == 0 {
        return Err(Error::invalid(
            OP,
            "the cache is empty: attention needs at least one entry",
        ));
    }
    let mut o_lat = vec![0.0f32; heads * d_c];
    let mut lse = vec![0.0f32; heads];
    for ((qh, o), lse) in q
        .chunks_exact(width)
        .zip(o_lat.chunks_exact_mut(d_c))
        .zip(&mut lse)
    {
        let scores: Vec<f32> = cache
            .chunks_exact(width)
            .map(|entry| {
                (dot(&qh[..d_c], &entry[..d_c]) + dot(&qh[d_c..], &entry[d_c..])) * softmax_scale
            })
            .collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let weights: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = weights.iter().sum();
        for (w, entry) in weights.iter().zip(cache.chunks_exact(width)) {
            for (o, c) in o.iter_mut().zip(&entry[..d_c]) {
                *o += w * c;
            }
        }
        for o in o.iter_mut() {
            *o /= sum;
        }
        *lse = max + sum.ln();
    }
    Ok(DecodeOutput { o_lat, lse })
}

/// Number of rows of `row` elements in a buffer of `len`, or a shape error naming `what`.
fn rows_of(len: usize, row: usize, what: &str) -> Result<usize> {
    if row == 0 || len % row != 0 {
        return Err(Error::shape(
            OP,
            format!("{what} has {len} elements, not a multiple of {row}"),
        ));
    }
    Ok(len / row)
}

fn token_heads(tokens: usize, heads: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..tokens).flat_map(move |n| (0..heads).map(move |h| (n, h)))
}
