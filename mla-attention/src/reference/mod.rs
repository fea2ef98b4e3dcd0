//! Reference (plain Rust, the spec written literally) of MLA attention, spec §3.1 and §6.
//!
//! - [`naive`]: the naive form, K and V expanded per head from the latent through `kv_b_proj`.
//! - [`absorbed`]: the absorbed form: query absorption, decode attention over a contiguous cache
//!   in latent space (output and log-sum-exp), output absorption, and `softmax_scale`.
//! - [`paged`]: the decode kernel's contract over a paged BF16 cache (block tables, ragged
//!   lengths, 1..=4 causal query tokens, or prefill chunks of up to 64) and the KV append.
//! - [`fp8_cache`]: the 656-byte FP8 cache entry (codec, byte layout) and decode over it.
//!
//! f32 arithmetic throughout, one rounding per stored value; the tests hold f64 versions.

pub mod absorbed;
pub mod fp8_cache;
pub mod naive;
pub mod paged;

pub use absorbed::{
    absorb_output, absorb_query, decode_attention, pack_query, softmax_scale, DecodeOutput,
};
pub use fp8_cache::{
    decode_cache_bf16, decode_cache_f32, decode_entry, encode_cache, encode_entry,
    paged_decode_fp8, FP8_ENTRY_BYTES,
};
pub use naive::naive_attention;
pub use paged::{append_kv, paged_decode, PagedShape, BLOCK_SIZE, MAX_CHUNK_LEN, MAX_QUERY_LEN};

use kernels::{Error, Result};

/// d_c: the latent (`kv_lora_rank`) width of the cache and of the value.
pub const KV_LORA_RANK: usize = 512;
/// d_rope: the rotary part of every key (`qk_rope_head_dim`).
pub const ROPE_DIM: usize = 64;
/// One cache entry (and one absorbed query head): [c_kv ; k_pe] = 512 + 64 values.
pub const KV_DIM: usize = KV_LORA_RANK + ROPE_DIM;

/// The attention widths of one MLA layer (spec §1). The paged and FP8 references are fixed to
/// DeepSeek-V3's `kv_lora_rank` 512 and `qk_rope_head_dim` 64; the naive and absorbed forms take
/// any widths (the tests use small ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaDims {
    /// H, `num_attention_heads`.
    pub heads: usize,
    /// d_c, `kv_lora_rank`.
    pub kv_lora_rank: usize,
    /// d_nope, `qk_nope_head_dim`.
    pub qk_nope_head_dim: usize,
    /// d_rope, `qk_rope_head_dim`.
    pub qk_rope_head_dim: usize,
    /// d_v, `v_head_dim`.
    pub v_head_dim: usize,
}

impl MlaDims {
    /// DeepSeek-V3 (671B): H 128, d_c 512, d_nope 128, d_rope 64, d_v 128.
    pub const DEEPSEEK_V3: MlaDims = MlaDims {
        heads: 128,
        kv_lora_rank: KV_LORA_RANK,
        qk_nope_head_dim: 128,
        qk_rope_head_dim: ROPE_DIM,
        v_head_dim: 128,
    };

    /// Rows of `kv_b_proj`: H * (d_nope + d_v).
    pub fn kv_b_rows(&self) -> usize {
        self.heads * (self.qk_nope_head_dim + self.v_head_dim)
    }

    /// Elements of `kv_b_proj` ([H*(d_nope+d_v), d_c]).
    pub fn kv_b_len(&self) -> usize {
        self.kv_b_rows() * self.kv_lora_rank
    }

    /// Every width must be > 0.
    pub fn check(&self, op: &'static str) -> Result<()> {
        let widths = [
            ("num_attention_heads", self.heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
        ];
        for (name, w) in widths {
            if w == 0 {
                return Err(Error::invalid(op, format!("{name} is 0")));
            }
        }
        Ok(())
    }

    /// Rows of W_UK[h] (d_nope of them, each d_c wide) inside `kv_b_proj`.
    pub(crate) fn w_uk<'a>(&self, kv_b_proj: &'a [f32], h: usize) -> &'a [f32] {
        let start = h * (self.qk_nope_head_dim + self.v_head_dim) * self.kv_lora_rank;
        &kv_b_proj[start..start + self.qk_nope_head_dim * self.kv_lora_rank]
    }

    /// Rows of W_UV[h] (d_v of them, each d_c wide): the d_v rows after W_UK[h].
    pub(crate) fn w_uv<'a>(&self, kv_b_proj: &'a [f32], h: usize) -> &'a [f32] {
        let start = (h * (self.qk_nope_head_dim + self.v_head_dim) + self.qk_nope_head_dim)
            * self.kv_lora_rank;
        &kv_b_proj[start..start + self.v_head_dim * self.kv_lora_rank]
    }
}

/// a . b in f32, left to right.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
