//! The naive form of MLA attention (spec §3.1): per head, `k[h] = [W_UK[h] c_kv ; k_pe]` and
//! `v[h] = W_UV[h] c_kv` are expanded from the latent, then causal softmax attention.

use super::{dot, MlaDims};
use kernels::error::check_len;
use kernels::{Error, Result};

const OP: &str = "mla_naive";

/// Causal MLA attention of one sequence of T tokens at positions 0..T (token t sees 0..=t).
///
/// - `c_kv` [T, d_c]: the normalized latent; `k_pe` [T, d_rope]: the shared rotary key, after
///   RoPE.
/// - `q_nope` [T, H, d_nope], `q_pe` [T, H, d_rope] (after RoPE).
/// - `kv_b_proj` [H*(d_nope+d_v), d_c]: `W_UK[h]` then `W_UV[h]` for each head, row-major.
///
/// Returns o [T, H, d_v].
pub fn naive_attention(
    dims: &MlaDims,
    c_kv: &[f32],
    k_pe: &[f32],
    q_nope: &[f32],
    q_pe: &[f32],
    kv_b_proj: &[f32],
    softmax_scale: f32,
) -> Result<Vec<f32>> {
    dims.check(OP)?;
    let MlaDims {
        heads,
        kv_lora_rank: d_c,
        qk_nope_head_dim: d_nope,
        qk_rope_head_dim: d_rope,
        v_head_dim: d_v,
    } = *dims;
    if c_kv.len() % d_c != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "c_kv has {} elements, not a multiple of d_c {d_c}",
                c_kv.len()
            ),
        ));
    }
    let tokens = c_kv.len() / d_c;
    check_len(OP, "k_pe", k_pe.len(), tokens * d_rope)?;
    check_len(OP, "q_nope", q_nope.len(), tokens * heads * d_nope)?;
    check_len(OP, "q_pe", q_pe.len(), tokens * heads * d_rope)?;
    check_len(OP, "kv_b_proj", kv_b_proj.len(), dims.kv_b_len())?;

    let mut out = vec![0.0f32; tokens * heads * d_v];
    for h in 0..heads {
        let (w_uk, w_uv) = (dims.w_uk(kv_b_proj, h), dims.w_uv(kv_b_proj, h));
        // Expanded keys (nope part) and values of this head: [T, d_nope] and [T, d_v].
        let expand = |w: &[f32]| -> Vec<f32> {
            c_kv.chunks_exact(d_c)
                .flat_map(|c| w.chunks_exact(d_c).map(move |row| dot(row, c)))
                .collect()
        };
        let (k_nope, v) = (expand(w_uk), expand(w_uv));
        for t in 0..tokens {
            let qn = &q_nope[(t * heads + h) * d_nope..][..d_nope];
            let qp = &q_pe[(t * heads + h) * d_rope..][..d_rope];
            let scores: Vec<f32> = (0..=t)
                .map(|s| {
                    (dot(qn, &k_nope[s * d_nope..][..d_nope])
                        + dot(qp, &k_pe[s * d_rope..][..d_rope]))
                        * softmax_scale
                })
                .collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let weights: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = weights.iter().sum();
            let o = &mut out[(t * heads + h) * d_v..][..d_v];
            for (s, w) in weights.iter().enumerate() {
                for (o, v) in o.iter_mut().zip(&v[s * d_v..][..d_v]) {
                    *o += w / sum * v;
                }
            }
        }
    }
    Ok(out)
}
