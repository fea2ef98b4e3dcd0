//! Size limits on a config, checked before anything is derived from it.
//!
//! `config.json` comes from the internet, and its numbers size everything downstream: the tensor
//! list (`expected_tensors` allocates one entry per tensor, layers x experts), shape products,
//! parameter counts, per-layer loops. Unbounded, a config of a few bytes could overflow `usize`
//! arithmetic (a panic with overflow checks, a wrong shape without) or ask for billions of
//! tensor entries. The limits here sit far above any released model (DeepSeek-V3: 61 + 1 layers,
//! 256 experts, about 92k tensors, 6.8e11 parameters; Kimi K2: 384 experts, 1.0e12 parameters)
//! and make all later arithmetic fit in 64 bits:
//! - every dimension <= 2^24, so sums and products of two dimensions (`q_proj_dim`, ...) fit;
//! - at most 2^20 tensors in the checkpoint;
//! - at most 2^44 parameters in all (an upper bound computed in u128), so a count times the
//!   expert count (`param_counts`) stays below 2^64.

use crate::error::{ModelError, Result};

use super::ModelConfig;

/// The largest value of any single dimension (hidden size, vocabulary, heads, ranks, ...).
pub const MAX_DIM: usize = 1 << 24;
/// The most tensors a checkpoint may hold.
pub const MAX_TENSORS: u128 = 1 << 20;
/// The most parameters a model may have (17.6e12).
pub const MAX_PARAMS: u128 = 1 << 44;

/// Checks the limits of the module documentation; errors name the key.
pub(super) fn check_sizes(c: &ModelConfig) -> Result<()> {
    let dims = [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("moe_intermediate_size", c.moe_intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_nextn_predict_layers", c.num_nextn_predict_layers),
        ("first_k_dense_replace", c.first_k_dense_replace),
        ("moe_layer_freq", c.moe_layer_freq),
        ("num_attention_heads", c.num_attention_heads),
        ("q_lora_rank", c.q_lora_rank.unwrap_or(0)),
        ("kv_lora_rank", c.kv_lora_rank),
        ("qk_nope_head_dim", c.qk_nope_head_dim),
        ("qk_rope_head_dim", c.qk_rope_head_dim),
        ("v_head_dim", c.v_head_dim),
        ("n_routed_experts", c.n_routed_experts),
        ("n_shared_experts", c.n_shared_experts),
        ("num_experts_per_tok", c.num_experts_per_tok),
        ("n_group", c.n_group),
        ("topk_group", c.topk_group),
    ];
    for (key, v) in dims {
        if v > MAX_DIM {
            return Err(ModelError::config(
                key,
                format!("{v} is larger than this implementation supports (at most {MAX_DIM})"),
            ));
        }
    }

    // From here on every product below is at most a few dimensions (each < 2^25), far inside
    // u128.
    let u = |v: usize| v as u128;
    let (v, d, e) = (u(c.vocab_size), u(c.hidden_size), u(c.n_routed_experts));
    let layers = u(c.num_hidden_layers) + u(c.num_nextn_predict_layers);
    let heads = u(c.num_attention_heads);
    let (nope, rope, dv) = (
        u(c.qk_nope_head_dim),
        u(c.qk_rope_head_dim),
        u(c.v_head_dim),
    );
    let kv_lora = u(c.kv_lora_rank);

    // Tensors: a generous count per layer (attention, norms, dense MLP or shared experts, MTP
    // extras; each possibly with an FP8 scale), plus 6 per routed expert.
    let tensors = 3 + layers * (64 + 6 * e);
    if tensors > MAX_TENSORS {
        return Err(ModelError::config(
            "n_routed_experts",
            format!(
                "{} layers with {} routed experts each make about {tensors} tensors, more than \
                 this implementation supports ({MAX_TENSORS})",
                layers, c.n_routed_experts
            ),
        ));
    }

    // Parameters: an upper bound (every layer counted with both a dense MLP and a MoE block,
    // and with the MTP extras).
    let q = match c.q_lora_rank {
        Some(r) => d * u(r) + u(r) + u(r) * heads * (nope + rope),
        None => d * heads * (nope + rope),
    };
    let attn = q + d * (kv_lora + rope) + kv_lora + kv_lora * heads * (nope + dv) + heads * dv * d;
    let dense = 3 * d * u(c.intermediate_size);
    let moe = 3 * d * u(c.moe_intermediate_size) * (e + u(c.n_shared_experts)) + e * d + e;
    let mtp = 2 * v * d + 2 * d * d + 4 * d;
    let per_layer = attn + dense + moe + mtp + 2 * d;
    let params = 2 * v * d + d + layers * per_layer;
    if params > MAX_PARAMS {
        return Err(ModelError::config(
            "config.json",
            format!(
                "the sizes describe a model of about {params} parameters, more than this \
                 implementation supports ({MAX_PARAMS})"
            ),
        ));
    }
    Ok(())
}
