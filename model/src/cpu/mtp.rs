//! The MTP module's forward pass on the CPU (spec §3.4, depth 1).
//!
//! For main-model position `i` with final hidden state `h[i]` (after `model.norm`) and the next
//! token `t[i+1]`:
//!
//! ```text
//! e  = RMSNorm(embed_mtp[t[i+1]], enorm)
//! hh = RMSNorm(h[i], hnorm)
//! u  = eh_proj([e ; hh])                 # embedding first
//! u  = MTP decoder layer(u)              # its own KV cache, entry i at position i
//! logits_mtp[i] = head(RMSNorm(u, shared_head.norm))   # predicts t[i+2]
//! ```
//!
//! The MTP layer's cache has the main model's layout and positions, so it can share the main
//! sequence's block table: MTP entry `i` lives where main entry `i` does, in a one-layer
//! [`CpuKvCache`] of the same block count.

use crate::engine::LogitRows;
use crate::error::{ModelError, Result};

use super::{CpuKvCache, CpuModel, MtpWeights, SeqChunk};

/// What the MTP module computes for its new tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct MtpOutput {
    /// The MTP layer's output `u` ([tokens, hidden], before `shared_head.norm`). A chained draft
    /// feeds it back as the next step's "hidden state", as vLLM's DeepSeek MTP drafter does.
    pub hidden: Vec<f32>,
    /// `logits_mtp` of the rows asked for: [tokens, vocab] ([`LogitRows::All`]) or one row per
    /// sequence, its last new token ([`LogitRows::Last`]; a draft needs no more).
    pub logits: Vec<f32>,
}

impl CpuModel {
    /// The first MTP module, or an error naming what is missing.
    fn mtp_module(&self) -> Result<&MtpWeights> {
        self.mtp().first().ok_or_else(|| {
            ModelError::request(
                "the checkpoint has no MTP layer (num_nextn_predict_layers = 0 or its tensors \
                 are absent), so MTP logits and speculative decoding are unavailable",
            )
        })
    }

    /// A KV cache for the MTP layer: one layer, `num_blocks` blocks (use the main cache's count
    /// so the main block tables address it).
    pub fn new_mtp_cache(&self, num_blocks: usize) -> Result<CpuKvCache> {
        self.mtp_module()?;
        CpuKvCache::new(self.config(), 1, num_blocks)
    }

    /// Runs the MTP module over new positions. `seqs[s].ids` are the *next* tokens `t[i+1]` of
    /// positions `i = start..start + ids.len()` (the MTP entry for position `i` is written at
    /// position `i` of `cache`); `hidden` holds the matching input hidden states, one row per
    /// new token in sequence order: the main model's `h_final[i]` or, for a chained draft, the
    /// previous MTP output `u`.
    pub fn mtp_forward(
        &self,
        hidden: &[f32],
        seqs: &[SeqChunk],
        cache: &mut CpuKvCache,
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        let mtp = self.mtp_module()?;
        let d = self.config().hidden_size;
        super::check_chunks(self.config(), seqs, cache.num_blocks)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.ids).copied().collect();
        if hidden.len() != ids.len() * d {
            return Err(ModelError::request(format!(
                "MTP input: {} hidden values for {} tokens of width {d}",
                hidden.len(),
                ids.len()
            )));
        }
        if cache.layers.len() != 1 {
            return Err(ModelError::request(format!(
                "the MTP cache must have 1 layer, this one has {}",
                cache.layers.len()
            )));
        }
        let ctx = self.context();
        let e = ctx.norm(&self.embed_rows(&mtp.embed, &ids)?, &mtp.enorm)?;
        let hh = ctx.norm(hidden, &mtp.hnorm)?;
        let mut cat = Vec::with_capacity(2 * e.len());
        for (er, hr) in e.chunks_exact(d).zip(hh.chunks_exact(d)) {
            cat.extend_from_slice(er);
            cat.extend_from_slice(hr);
        }
        let mut x = ctx.linear(&mtp.eh_proj, &cat)?;
        ctx.store(&mut x);
        mtp.layer
            .forward(&ctx, &mut x, seqs, &mut cache.layers[0])?;
        let head_in = match rows {
            LogitRows::All => x.clone(),
            LogitRows::Last => crate::engine::last_rows(&x, seqs, d),
        };
        let logits = mtp
            .head
            .forward_row_invariant(&ctx.norm(&head_in, &mtp.head_norm)?)?;
        Ok(MtpOutput { hidden: x, logits })
    }
}
