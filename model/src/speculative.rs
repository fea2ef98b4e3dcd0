//! Speculative decoding with the MTP module as the drafter (spec §3.4).
//!
//! Each step, for every active sequence with committed tokens `t[0..n)` (the main cache holds
//! positions `0..n-1`, the last token is not in it yet):
//!
//! 1. **Draft.** The MTP module first catches up: it runs over every position whose entry it
//!    lacks, `i = mtp_len..n-1`, with the main model's real `h_final[i]` and token `t[i+1]`
//!    (after the prefill that is the whole prompt; later the positions the last verification
//!    accepted). Its last row predicts `t[n]`: draft 1. Draft `k >= 2` re-applies the module
//!    to its own output, the way vLLM and SGLang chain DeepSeek MTP drafts: input hidden state
//!    = the MTP layer's previous output `u`, token = the previous draft, at the next position.
//! 2. **Verify.** One main-model pass over `[t[n-1], d_1, .., d_D]` (causal) gives the target
//!    distribution after each prefix.
//! 3. **Accept** ([`mtp::greedy_accept`] or [`mtp::rejection_sample`]): `a` drafts plus one
//!    verifier token.
//! 4. **Roll back.** The main cache keeps positions `0..n+a` (the allocator is truncated, so
//!    blocks past them return to the free list); the MTP cache keeps `0..n-1`: the chained
//!    drafts' entries were computed from draft hidden states, so they are stale, and the next
//!    catch-up overwrites them with entries from the verify pass's real hidden states. Every
//!    kept MTP entry therefore is exactly what a token-by-token MTP pass would have written.
//!
//! The MTP cache shares the main cache's block tables (same positions), so rolling back the
//! allocator rolls back both. Greedy requests produce exactly the ids of
//! [`Engine::generate`]; sampled requests produce the same distribution (not the same ids: the
//! acceptance test consumes its own uniforms, see [`mtp::uniforms`]).

use std::time::Instant;

use kernels::reference::sampling::{argmax_row, sample_row};
use kernels::rng::sampling_uniform;
use mla_attention::SeqId;
use mtp::uniforms::{accept_uniform, draft_uniform, resample_uniform};
use mtp::{greedy_accept, rejection_sample, sample_weights, target_distribution, SpecStats};

use crate::cpu::SeqChunk;
use crate::engine::{Backend, Engine, Generation, GenerationStats, LogitRows, Request, StopReason};
use crate::error::{ModelError, Result};

/// Where drafts come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Drafter {
    /// The MTP module's own prediction (argmax for greedy requests, a sample of its
    /// distribution for sampled ones).
    #[default]
    Mtp,
    /// Forced acceptance, for tests and for benchmarking the 100% acceptance case: the MTP
    /// module still runs (same cost, same cache traffic) but the draft for output token `j` of
    /// request `r` is `continuations[r][j]`, given as a point mass. Pass the output of a plain
    /// greedy run and every draft is the verifier's own greedy token. Past the end of a
    /// continuation the MTP draft is used.
    Oracle(Vec<Vec<u32>>),
}

/// Settings of speculative decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    /// Drafts per step, `D >= 1`; a step verifies `D + 1` tokens per sequence.
    pub draft_steps: usize,
    pub drafter: Drafter,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            draft_steps: 1,
            drafter: Drafter::Mtp,
        }
    }
}

/// One live sequence of a speculative run.
struct SeqState {
    /// Index of its request.
    req: usize,
    seq: SeqId,
    /// Prompt and generated tokens. The main cache holds all but the last.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// MTP cache positions `0..mtp_len` hold entries computed from real hidden states.
    mtp_len: usize,
    /// `h_final` of positions `mtp_len..tokens.len() - 1`, whose MTP entries are still to come.
    pending_h: Vec<f32>,
}

impl SeqState {
    /// Output index of the token at position `pos`.
    fn out_index(&self, pos: usize) -> u64 {
        (pos - self.prompt_len) as u64
    }
}

/// The drafts of one sequence in one step.
#[derive(Default)]
struct Drafts {
    ids: Vec<u32>,
    /// The distribution each draft was drawn from (sampled requests only).
    q: Vec<Vec<f32>>,
    /// The last MTP output `u`, input of the next chained draft.
    hidden: Vec<f32>,
}

impl<B: Backend> Engine<B> {
    /// [`generate`](Engine::generate) with MTP speculative decoding: same requests, same
    /// streaming and stops, greedy output identical to `generate`'s, sampled output with the
    /// same distribution. Returns the generations and the run's draft statistics; the timing
    /// goes to [`last_stats`](Engine::last_stats) as for `generate`.
    pub fn generate_speculative(
        &mut self,
        requests: &[Request],
        spec: &SpecConfig,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<(Vec<Generation>, SpecStats)> {
        if spec.draft_steps == 0 {
            return Err(ModelError::request("--draft-steps must be at least 1"));
        }
        if !self.backend.has_mtp() {
            return Err(ModelError::request(format!(
                "speculative decoding needs the MTP module: the checkpoint has no MTP layer or \
                 the {} backend does not run it",
                self.backend.describe()
            )));
        }
        if let Drafter::Oracle(c) = &spec.drafter {
            if c.len() != requests.len() {
                return Err(ModelError::request(format!(
                    "the oracle drafter has {} continuations for {} requests",
                    c.len(),
                    requests.len()
                )));
            }
        }
        for r in requests {
            self.check_prompt(&r.prompt)?;
            r.sampling
                .validate()
                .map_err(|e| ModelError::request(e.to_string()))?;
        }
        let mut outputs: Vec<Generation> = requests
            .iter()
            .map(|_| Generation {
                ids: Vec::new(),
                stop: StopReason::MaxTokens,
            })
            .collect();
        let mut stats = SpecStats::default();
        let mut timing = GenerationStats {
            prompt_tokens: requests.iter().map(|r| r.prompt.len()).sum(),
            ..Default::default()
        };
        let mut seqs = Vec::with_capacity(requests.len());
        let result: Result<()> = (|| {
            for r in requests {
                seqs.push(self.start_sequence(r.prompt.len())?);
            }
            let t0 = Instant::now();
            let mut active = self.spec_prefill(requests, &seqs, &mut outputs, &mut on_token)?;
            timing.prefill_s = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            while !active.is_empty() {
                active = self.spec_step(
                    requests,
                    spec,
                    active,
                    &mut outputs,
                    &mut stats,
                    &mut on_token,
                )?;
            }
            timing.decode_s = t0.elapsed().as_secs_f64();
            Ok(())
        })();
        self.end_batch(seqs, result, &outputs, timing)?;
        Ok((outputs, stats))
    }

    /// The prompt pass: the first token of each request exactly as plain generation picks it,
    /// and the hidden states the MTP module catches up on in the first step.
    fn spec_prefill(
        &mut self,
        requests: &[Request],
        seqs: &[SeqId],
        outputs: &mut [Generation],
        on_token: &mut impl FnMut(usize, u32),
    ) -> Result<Vec<SeqState>> {
        let todo: Vec<usize> = (0..requests.len())
            .filter(|&i| requests[i].max_new_tokens > 0)
            .collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let blocks: Vec<Vec<u32>> = todo.iter().map(|&i| self.blocks_of(seqs[i])).collect();
        let chunks: Vec<SeqChunk> = todo
            .iter()
            .zip(&blocks)
            .map(|(&i, b)| SeqChunk {
                ids: &requests[i].prompt,
                start: 0,
                blocks: b,
            })
            .collect();
        let (h, logits) = self.backend.forward_with_hidden(&chunks, LogitRows::Last)?;
        let (vocab, hidden) = (self.config().vocab_size, self.config().hidden_size);
        let mut active = Vec::with_capacity(todo.len());
        let mut row0 = 0;
        for (&i, row) in todo.iter().zip(logits.chunks_exact(vocab)) {
            let r = &requests[i];
            let m = r.prompt.len();
            let id = sample_row(row, r.sampling, sampling_uniform(r.seed, 0, 0)) as u32;
            let mut state = SeqState {
                req: i,
                seq: seqs[i],
                tokens: r.prompt.clone(),
                prompt_len: m,
                mtp_len: 0,
                pending_h: h[row0 * hidden..(row0 + m) * hidden].to_vec(),
            };
            row0 += m;
            if self.emit(r, &mut state, &mut outputs[i], id, on_token) {
                active.push(state);
            }
        }
        Ok(active)
    }

    /// Appends `id` to a sequence and its output, applying the stop rules of plain generation;
    /// true while the sequence goes on.
    fn emit(
        &self,
        r: &Request,
        state: &mut SeqState,
        out: &mut Generation,
        id: u32,
        on_token: &mut impl FnMut(usize, u32),
    ) -> bool {
        out.ids.push(id);
        state.tokens.push(id);
        on_token(state.req, id);
        let limit = self.config().max_position_embeddings;
        if r.stop_ids.contains(&id) {
            out.stop = StopReason::Eos;
        } else if out.ids.len() >= r.max_new_tokens {
            out.stop = StopReason::MaxTokens;
        } else if state.tokens.len() > limit {
            out.stop = StopReason::ContextLimit;
        } else {
            return true;
        }
        false
    }

    fn blocks_of(&self, seq: SeqId) -> Vec<u32> {
        self.alloc.blocks(seq).unwrap_or_default().to_vec()
    }

    /// One draft / verify / accept / roll back step over the active sequences; returns the
    /// ones that go on.
    fn spec_step(
        &mut self,
        requests: &[Request],
        spec: &SpecConfig,
        active: Vec<SeqState>,
        outputs: &mut [Generation],
        stats: &mut SpecStats,
        on_token: &mut impl FnMut(usize, u32),
    ) -> Result<Vec<SeqState>> {
        let limit = self.config().max_position_embeddings;
        // Drafts per sequence: no more than the request can still use (a step emits up to
        // D + 1 tokens) and no verify position past the model's context.
        let d: Vec<usize> = active
            .iter()
            .map(|s| {
                let left = requests[s.req].max_new_tokens - outputs[s.req].ids.len();
                spec.draft_steps.min(left - 1).min(limit - s.tokens.len())
            })
            .collect();
        for (s, &dk) in active.iter().zip(&d) {
            self.extend(s.seq, dk + 1)?;
        }
        let blocks: Vec<Vec<u32>> = active.iter().map(|s| self.blocks_of(s.seq)).collect();
        let mut active = active;
        let drafts = self.draft(requests, spec, &mut active, &d, &blocks)?;

        // Verify [t[n-1], d_1..d_D] in one main pass.
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .zip(&drafts)
            .map(|(s, dr)| {
                let mut v = vec![*s.tokens.last().expect("non-empty")];
                v.extend(&dr.ids);
                v
            })
            .collect();
        let chunks: Vec<SeqChunk> = active
            .iter()
            .zip(&inputs)
            .zip(&blocks)
            .map(|((s, ids), b)| SeqChunk {
                ids,
                start: s.tokens.len() - 1,
                blocks: b,
            })
            .collect();
        let (h, logits) = self.backend.forward_with_hidden(&chunks, LogitRows::All)?;
        stats.main_steps += 1;

        let (vocab, hidden) = (self.config().vocab_size, self.config().hidden_size);
        let mut still = Vec::with_capacity(active.len());
        let mut row0 = 0;
        for ((mut s, dr), ids) in active.into_iter().zip(drafts).zip(&inputs) {
            let r = &requests[s.req];
            let rows = ids.len();
            let lg = &logits[row0 * vocab..(row0 + rows) * vocab];
            let n = s.tokens.len();
            let verdict = if r.sampling.temperature == 0.0 {
                let verifier: Vec<u32> = lg
                    .chunks_exact(vocab)
                    .map(|l| argmax_row(l) as u32)
                    .collect();
                greedy_accept(&dr.ids, &verifier)
            } else {
                let p: Vec<Vec<f32>> = lg
                    .chunks_exact(vocab)
                    .map(|l| target_distribution(l, r.sampling))
                    .collect();
                let idx = |k: usize| s.out_index(n + k);
                let au: Vec<f32> = (0..dr.ids.len())
                    .map(|k| accept_uniform(r.seed, idx(k)))
                    .collect();
                let ru: Vec<f32> = (0..rows)
                    .map(|k| resample_uniform(r.seed, idx(k)))
                    .collect();
                rejection_sample(&dr.ids, &dr.q, &p, &au, &ru)
            };
            let mut kept = 0;
            let mut going = true;
            let req = s.req;
            for &id in &verdict.tokens {
                kept += 1;
                going = self.emit(r, &mut s, &mut outputs[req], id, on_token);
                if !going {
                    break;
                }
            }
            stats.record(dr.ids.len(), verdict.accepted, kept);
            if going {
                // Roll back: the main cache keeps t[0..n+a), the MTP cache t[0..n-1); the verify
                // pass's hidden states of positions n-1..n-1+a feed the next catch-up.
                let a = verdict.accepted;
                self.alloc.truncate(s.seq, n + a)?;
                s.mtp_len = n - 1;
                s.pending_h = h[row0 * hidden..(row0 + a + 1) * hidden].to_vec();
                still.push(s);
            }
            row0 += rows;
        }
        Ok(still)
    }

    /// Chained MTP drafts for every sequence with `d[i] >= 1` (the others get none).
    fn draft(
        &mut self,
        requests: &[Request],
        spec: &SpecConfig,
        active: &mut [SeqState],
        d: &[usize],
        blocks: &[Vec<u32>],
    ) -> Result<Vec<Drafts>> {
        let (vocab, hidden) = (self.config().vocab_size, self.config().hidden_size);
        let mut drafts: Vec<Drafts> = active.iter().map(|_| Drafts::default()).collect();
        let max_d = d.iter().copied().max().unwrap_or(0);
        for k in 1..=max_d {
            let who: Vec<usize> = (0..active.len()).filter(|&i| d[i] >= k).collect();
            // Round 1 catches up on real hidden states; later rounds feed the previous draft.
            let mut ids_store: Vec<Vec<u32>> = Vec::with_capacity(who.len());
            let mut starts = Vec::with_capacity(who.len());
            let mut input_h = Vec::new();
            for &i in &who {
                let s = &active[i];
                let n = s.tokens.len();
                if k == 1 {
                    ids_store.push(s.tokens[s.mtp_len + 1..].to_vec());
                    starts.push(s.mtp_len);
                    input_h.extend_from_slice(&s.pending_h);
                } else {
                    ids_store.push(vec![drafts[i].ids[k - 2]]);
                    starts.push(n + k - 3);
                    input_h.extend_from_slice(&drafts[i].hidden);
                }
            }
            let chunks: Vec<SeqChunk> = who
                .iter()
                .zip(&ids_store)
                .zip(&starts)
                .map(|((&i, ids), &start)| SeqChunk {
                    ids,
                    start,
                    blocks: &blocks[i],
                })
                .collect();
            let out = self
                .backend
                .mtp_forward(&input_h, &chunks, LogitRows::Last)?;
            let mut end = 0;
            for (j, (&i, ids)) in who.iter().zip(&ids_store).enumerate() {
                end += ids.len();
                let row = &out.logits[j * vocab..][..vocab];
                let s = &mut active[i];
                if k == 1 {
                    s.mtp_len = s.tokens.len() - 1;
                    s.pending_h.clear();
                }
                let r = &requests[s.req];
                let j = s.out_index(s.tokens.len() - 1 + k);
                let oracle = match &spec.drafter {
                    Drafter::Oracle(c) => c[s.req].get(j as usize).copied(),
                    Drafter::Mtp => None,
                };
                let (id, q) = match oracle {
                    Some(id) => (id, point_mass(vocab, id)),
                    None if r.sampling.temperature == 0.0 => (argmax_row(row) as u32, Vec::new()),
                    None => {
                        let q = target_distribution(row, r.sampling);
                        let id = sample_weights(&q, draft_uniform(r.seed, j))
                            .unwrap_or_else(|| argmax_row(row) as usize);
                        (id as u32, q)
                    }
                };
                let dr = &mut drafts[i];
                dr.ids.push(id);
                dr.q.push(q);
                dr.hidden = out.hidden[(end - 1) * hidden..end * hidden].to_vec();
            }
        }
        Ok(drafts)
    }
}

fn point_mass(vocab: usize, id: u32) -> Vec<f32> {
    let mut v = vec![0.0; vocab];
    if let Some(x) = v.get_mut(id as usize) {
        *x = 1.0;
    }
    v
}

/// `stats` as the `"mtp"` object of `dsv3 generate --mtp --json`.
pub fn stats_json(stats: &SpecStats, draft_steps: usize) -> serde_json::Value {
    serde_json::json!({
        "draft_steps": draft_steps,
        "drafted": stats.drafted(),
        "accepted": stats.accepted(),
        "acceptance_rate": stats.acceptance_rate(),
        "acceptance_rate_per_position": stats.acceptance_rate_at(),
        "drafted_per_position": stats.drafted_at,
        "accepted_per_position": stats.accepted_at,
        "main_steps": stats.main_steps,
        "tokens_per_step": stats.tokens_per_step(),
    })
}

/// `stats` in one line for stderr.
pub fn stats_line(stats: &SpecStats, draft_steps: usize) -> String {
    let per: Vec<String> = stats
        .acceptance_rate_at()
        .iter()
        .map(|r| format!("{:.1}%", 100.0 * r))
        .collect();
    format!(
        "[mtp: {draft_steps} draft step(s); {} drafted, {} accepted ({:.1}%; per position: {}); \
         {} main-model steps, {:.2} tokens per step]",
        stats.drafted(),
        stats.accepted(),
        100.0 * stats.acceptance_rate(),
        per.join(", "),
        stats.main_steps,
        stats.tokens_per_step()
    )
}
