//! The generation engine shared by the backends: a batch of sequences with different prompt
//! lengths, greedy and seeded temperature / top-p sampling, EOS and max-token stops, streaming
//! of each new token, and the paged KV cache's block bookkeeping.
//!
//! A backend only runs forward passes over [`SeqChunk`]s (new tokens, their first position and
//! the sequence's cache blocks); the engine owns the [`KvCacheAllocator`] that hands out blocks,
//! so the CPU and CUDA backends share one bookkeeping and one set of errors.

use std::time::Instant;

use kernels::reference::sampling::{sample_row, SamplingParams};
use kernels::rng::sampling_uniform;
use mla_attention::{KvCacheAllocator, SeqId};

use crate::config::ModelConfig;
use crate::cpu::{CpuKvCache, CpuModel, MtpOutput, SeqChunk};
use crate::error::{ModelError, Result};

/// Which logits rows a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// The last new token of each sequence (prefill and decode).
    Last,
    /// Every new token (`dsv3 logits`, perplexity).
    All,
}

/// How to choose one sequence's next token: its request's sampling settings and the uniform
/// number of this token's draw. The engine draws the uniform (`sampling_uniform(request seed,
/// token index, 0)`), so a request's tokens depend neither on the backend nor on the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenDraw {
    pub params: SamplingParams,
    /// In [0, 1).
    pub uniform: f32,
}

impl TokenDraw {
    /// The draw of token `index` (0 = the first generated token) of `request`.
    pub fn for_token(request: &Request, index: usize) -> Self {
        TokenDraw {
            params: request.sampling,
            uniform: sampling_uniform(request.seed, index as u64, 0),
        }
    }
}

/// Checks that there is one valid draw per sequence (settings as `SamplingParams::validate`,
/// uniform in [0, 1)), naming the first bad one.
pub fn check_draws(seqs: &[SeqChunk], draws: &[TokenDraw]) -> Result<()> {
    if draws.len() != seqs.len() {
        return Err(ModelError::request(format!(
            "{} token draws for {} sequences (one per sequence expected)",
            draws.len(),
            seqs.len()
        )));
    }
    for (s, d) in draws.iter().enumerate() {
        d.params
            .validate()
            .map_err(|e| ModelError::request(format!("token draw of sequence {s}: {e}")))?;
        if !(0.0..1.0).contains(&d.uniform) {
            return Err(ModelError::request(format!(
                "token draw of sequence {s}: the uniform must be in [0, 1), got {}",
                d.uniform
            )));
        }
    }
    Ok(())
}

/// Chooses each row's token on the host: `sample_row` of logits row s ([rows, vocab]) with
/// `draws[s]`.
pub fn sample_on_host(logits: &[f32], vocab: usize, draws: &[TokenDraw]) -> Result<Vec<u32>> {
    if vocab == 0 || logits.len() != draws.len() * vocab {
        return Err(ModelError::request(format!(
            "{} logits do not hold {} rows of vocab_size {vocab}",
            logits.len(),
            draws.len()
        )));
    }
    Ok(logits
        .chunks_exact(vocab)
        .zip(draws)
        .map(|(row, d)| sample_row(row, d.params, d.uniform) as u32)
        .collect())
}

/// What the engine needs from a backend.
pub trait Backend {
    fn config(&self) -> &ModelConfig;
    /// A one-line description (`cpu exact`, `cuda fp8 on H100`).
    fn describe(&self) -> String;
    /// Blocks of 64 tokens in the backend's KV cache.
    fn kv_blocks(&self) -> usize;
    /// Runs the new tokens of `seqs` (writing them into the KV cache) and returns the logits
    /// rows asked for, [rows, vocab] f32, in sequence order.
    fn forward(&mut self, seqs: &[SeqChunk], rows: LogitRows) -> Result<Vec<f32>>;

    /// Runs the new tokens of `seqs` as [`forward`](Self::forward) does and chooses each
    /// sequence's next token with `draws[s]` (the rule of `kernels::reference::sampling`),
    /// returning one id per sequence. The default samples the [`LogitRows::Last`] rows on the
    /// host; a backend whose logits live elsewhere (the GPU) overrides it to sample there and
    /// hand back only the ids.
    fn forward_and_sample(&mut self, seqs: &[SeqChunk], draws: &[TokenDraw]) -> Result<Vec<u32>> {
        check_draws(seqs, draws)?;
        let logits = self.forward(seqs, LogitRows::Last)?;
        sample_on_host(&logits, self.config().vocab_size, draws)
    }

    /// [`forward`](Self::forward) that also returns the final hidden states `h_final` of every
    /// new token ([tokens, hidden], after `model.norm`): the MTP module's input. Backends
    /// without MTP support keep the default, an error.
    fn forward_with_hidden(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let _ = (seqs, rows);
        Err(no_mtp(&self.describe()))
    }

    /// Whether [`mtp_forward`](Self::mtp_forward) works (the checkpoint has an MTP layer and
    /// the backend implements it).
    fn has_mtp(&self) -> bool {
        false
    }

    /// Runs the MTP module (spec §3.4) over new positions, writing its own KV cache, which is
    /// addressed with the main cache's block tables. `seqs[s].ids` are the next tokens
    /// `t[i+1]` of positions `i = start..`; `hidden` the input hidden state of each (see
    /// [`CpuModel::mtp_forward`]). `rows` picks the MTP logits returned (a draft needs only
    /// each sequence's last row; a long catch-up over a prompt would otherwise return
    /// [prompt, vocab]); the output hidden states come back for every token.
    fn mtp_forward(
        &mut self,
        hidden: &[f32],
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        let _ = (hidden, seqs, rows);
        Err(no_mtp(&self.describe()))
    }
}

fn no_mtp(backend: &str) -> ModelError {
    ModelError::request(format!(
        "the {backend} backend does not run the MTP module (multi-token prediction)"
    ))
}

/// The CPU backend: a [`CpuModel`] and its caches.
#[derive(Debug)]
pub struct CpuBackend {
    pub model: CpuModel,
    pub cache: CpuKvCache,
    /// The MTP layer's cache (same block count as `cache`, addressed by the same block
    /// tables); `None` when the checkpoint has no MTP layer.
    pub mtp_cache: Option<CpuKvCache>,
}

impl CpuBackend {
    pub fn new(model: CpuModel, kv_blocks: usize) -> Result<Self> {
        let cache = model.new_cache(kv_blocks)?;
        let mtp_cache = if model.mtp().is_empty() {
            None
        } else {
            Some(model.new_mtp_cache(kv_blocks)?)
        };
        Ok(CpuBackend {
            model,
            cache,
            mtp_cache,
        })
    }
}

/// The rows of `h` ([tokens, hidden]) of each sequence's last new token.
pub(crate) fn last_rows(h: &[f32], seqs: &[SeqChunk], hidden: usize) -> Vec<f32> {
    let mut last = Vec::with_capacity(seqs.len() * hidden);
    let mut end = 0;
    for s in seqs {
        end += s.ids.len();
        last.extend_from_slice(&h[(end - 1) * hidden..][..hidden]);
    }
    last
}

impl Backend for CpuBackend {
    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn describe(&self) -> String {
        format!(
            "cpu {} ({} threads)",
            self.model.precision().as_str(),
            rayon::current_num_threads()
        )
    }

    fn kv_blocks(&self) -> usize {
        self.cache.num_blocks
    }

    fn forward(&mut self, seqs: &[SeqChunk], rows: LogitRows) -> Result<Vec<f32>> {
        let h = self.model.forward_hidden(seqs, &mut self.cache)?;
        let hidden = self.model.config().hidden_size;
        let h = match rows {
            LogitRows::All => h,
            LogitRows::Last => last_rows(&h, seqs, hidden),
        };
        self.model.logits(&h)
    }

    fn forward_with_hidden(
        &mut self,
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let h = self.model.forward_hidden(seqs, &mut self.cache)?;
        let logits = match rows {
            LogitRows::All => self.model.logits(&h)?,
            LogitRows::Last => {
                let hidden = self.model.config().hidden_size;
                self.model.logits(&last_rows(&h, seqs, hidden))?
            }
        };
        Ok((h, logits))
    }

    fn has_mtp(&self) -> bool {
        self.mtp_cache.is_some()
    }

    fn mtp_forward(
        &mut self,
        hidden: &[f32],
        seqs: &[SeqChunk],
        rows: LogitRows,
    ) -> Result<MtpOutput> {
        match &mut self.mtp_cache {
            Some(cache) => self.model.mtp_forward(hidden, seqs, cache, rows),
            None => Err(ModelError::request(
                "the checkpoint has no MTP layer (num_nextn_predict_layers = 0), so MTP logits \
                 and speculative decoding are unavailable",
            )),
        }
    }
}

/// One generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Seed of this request's sampling stream (token j draws `sampling_uniform(seed, j, 0)`, so
    /// the result does not depend on the rest of the batch).
    pub seed: u64,
    /// Generation stops after producing one of these (it is kept in the output).
    pub stop_ids: Vec<u32>,
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It produced a stop id (EOS).
    Eos,
    /// It produced `max_new_tokens`.
    MaxTokens,
    /// It reached `max_position_embeddings`.
    ContextLimit,
}

/// One request's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub stop: StopReason,
}

/// Timing of a `generate` call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl GenerationStats {
    /// Generated tokens per second of the decode phase (the first token, which comes out of the
    /// prefill, is not counted).
    pub fn decode_tokens_per_s(&self, batch: usize) -> f64 {
        let steps = self.generated_tokens.saturating_sub(batch);
        if self.decode_s > 0.0 {
            steps as f64 / self.decode_s
        } else {
            0.0
        }
    }

    /// All generated tokens over the whole call.
    pub fn tokens_per_s(&self) -> f64 {
        let t = self.prefill_s + self.decode_s;
        if t > 0.0 {
            self.generated_tokens as f64 / t
        } else {
            0.0
        }
    }
}

/// The engine: a backend plus the KV block allocator.
pub struct Engine<B: Backend> {
    pub(crate) backend: B,
    pub(crate) alloc: KvCacheAllocator,
    next_seq: SeqId,
    pub(crate) last_stats: GenerationStats,
}

impl<B: Backend> std::fmt::Debug for Engine<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.backend.describe())
            .field("free_blocks", &self.alloc.free_blocks())
            .finish()
    }
}

/// Frees the engine's sequences however a call ends.
struct Live<'a> {
    alloc: &'a mut KvCacheAllocator,
    seqs: Vec<SeqId>,
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        for &s in &self.seqs {
            let _ = self.alloc.free(s);
        }
    }
}

impl<B: Backend> Engine<B> {
    pub fn new(backend: B) -> Result<Self> {
        let alloc = KvCacheAllocator::new(backend.kv_blocks())?;
        Ok(Engine {
            backend,
            alloc,
            next_seq: 0,
            last_stats: GenerationStats::default(),
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn config(&self) -> &ModelConfig {
        self.backend.config()
    }

    /// Timing of the last `generate` call.
    pub fn last_stats(&self) -> GenerationStats {
        self.last_stats
    }

    /// Checks a prompt: non-empty, ids in the vocabulary, shorter than the model's limit.
    pub fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        let cfg = self.config();
        if prompt.is_empty() {
            return Err(ModelError::request("the prompt is empty"));
        }
        if let Some((i, id)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= cfg.vocab_size)
        {
            return Err(ModelError::request(format!(
                "token id {id} at prompt index {i} is outside the vocabulary (vocab_size {})",
                cfg.vocab_size
            )));
        }
        if prompt.len() > cfg.max_position_embeddings {
            return Err(ModelError::request(format!(
                "the prompt has {} tokens, longer than the model's limit max_position_embeddings \
                 = {}",
                prompt.len(),
                cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    pub(crate) fn start_sequence(&mut self, tokens: usize) -> Result<SeqId> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.reserve(KvCacheAllocator::blocks_for(tokens))?;
        self.alloc.allocate(seq, tokens)?;
        Ok(seq)
    }

    fn reserve(&self, blocks: usize) -> Result<()> {
        if blocks > self.alloc.free_blocks() {
            return Err(ModelError::KvCacheExhausted {
                needed_blocks: blocks,
                free_blocks: self.alloc.free_blocks(),
                total_blocks: self.alloc.num_blocks(),
            });
        }
        Ok(())
    }

    pub(crate) fn extend(&mut self, seq: SeqId, tokens: usize) -> Result<()> {
        let len = self.alloc.seq_len(seq).unwrap_or(0);
        let have = KvCacheAllocator::blocks_for(len);
        let need = KvCacheAllocator::blocks_for(len + tokens).saturating_sub(have);
        self.reserve(need)?;
        self.alloc.extend(seq, tokens)?;
        Ok(())
    }

    /// Runs `run` on one new sequence holding `ids` from position 0 (its cache blocks freed
    /// afterwards, also on error).
    fn on_fresh_sequence<T>(
        &mut self,
        ids: &[u32],
        run: impl FnOnce(&mut B, &SeqChunk) -> Result<T>,
    ) -> Result<T> {
        self.check_prompt(ids)?;
        let seq = self.start_sequence(ids.len())?;
        let live = Live {
            seqs: vec![seq],
            alloc: &mut self.alloc,
        };
        let blocks = live.alloc.blocks(seq).unwrap_or_default().to_vec();
        let chunk = SeqChunk {
            ids,
            start: 0,
            blocks: &blocks,
        };
        run(&mut self.backend, &chunk)
    }

    /// Logits of every position of `ids` ([len, vocab]), from an empty cache.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.on_fresh_sequence(ids, |backend, chunk| {
            backend.forward(std::slice::from_ref(chunk), LogitRows::All)
        })
    }

    /// Logits of every position of each sequence of `batch` (`[len_i, vocab]` each), from an
    /// empty cache, all sequences in one forward call.
    pub fn logits_batch(&mut self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for ids in batch {
            self.check_prompt(ids)?;
        }
        let mut seqs = Vec::with_capacity(batch.len());
        let result = (|| {
            for ids in batch {
                seqs.push(self.start_sequence(ids.len())?);
            }
            let blocks: Vec<Vec<u32>> = seqs
                .iter()
                .map(|&s| self.alloc.blocks(s).unwrap_or_default().to_vec())
                .collect();
            let chunks: Vec<SeqChunk> = batch
                .iter()
                .zip(&blocks)
                .map(|(ids, b)| SeqChunk {
                    ids,
                    start: 0,
                    blocks: b,
                })
                .collect();
            self.backend.forward(&chunks, LogitRows::All)
        })();
        for s in seqs {
            let _ = self.alloc.free(s);
        }
        let logits = result?;
        let vocab = self.config().vocab_size;
        let mut rest = &logits[..];
        Ok(batch
            .iter()
            .map(|ids| {
                let (mine, tail) = rest.split_at(ids.len() * vocab);
                rest = tail;
                mine.to_vec()
            })
            .collect())
    }

    /// Logits of every position of `ids` ([len, vocab]) and the MTP module's logits
    /// ([len - 1, vocab]; row `i` predicts token `i + 2` from position `i` and the given token
    /// `i + 1`), from empty caches: one main pass, then one MTP pass over all positions.
    pub fn logits_with_mtp(&mut self, ids: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
        if !self.backend.has_mtp() {
            return Err(no_mtp(&self.backend.describe()));
        }
        self.on_fresh_sequence(ids, |backend, chunk| {
            let (h, logits) =
                backend.forward_with_hidden(std::slice::from_ref(chunk), LogitRows::All)?;
            if ids.len() < 2 {
                return Ok((logits, Vec::new()));
            }
            let hidden = backend.config().hidden_size;
            let mtp_chunk = SeqChunk {
                ids: &ids[1..],
                ..*chunk
            };
            let mtp = backend.mtp_forward(
                &h[..(ids.len() - 1) * hidden],
                &[mtp_chunk],
                LogitRows::All,
            )?;
            Ok((logits, mtp.logits))
        })
    }

    /// Generates for every request together, calling `on_token(request index, id)` as each new
    /// token is chosen. Sequences leave the batch as they stop; their cache blocks are freed
    /// when the call returns (also on error).
    pub fn generate(
        &mut self,
        requests: &[Request],
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Generation>> {
        for r in requests {
            self.check_prompt(&r.prompt)?;
            r.sampling
                .validate()
                .map_err(|e| ModelError::request(e.to_string()))?;
        }
        let limit = self.config().max_position_embeddings;
        let mut stats = GenerationStats {
            prompt_tokens: requests.iter().map(|r| r.prompt.len()).sum(),
            ..Default::default()
        };
        let mut outputs: Vec<Generation> = requests
            .iter()
            .map(|_| Generation {
                ids: Vec::new(),
                stop: StopReason::MaxTokens,
            })
            .collect();
        let mut seqs = Vec::with_capacity(requests.len());
        let result: Result<()> = (|| {
            for r in requests {
                seqs.push(self.start_sequence(r.prompt.len())?);
            }
            // Requests with max_new_tokens 0 are done before they start.
            let mut active: Vec<usize> = (0..requests.len())
                .filter(|&i| requests[i].max_new_tokens > 0)
                .collect();
            let mut step_ids: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
            let mut starts = vec![0usize; requests.len()];
            let mut prefill = true;
            while !active.is_empty() {
                let t0 = Instant::now();
                let blocks: Vec<Vec<u32>> = active
                    .iter()
                    .map(|&i| self.alloc.blocks(seqs[i]).unwrap_or_default().to_vec())
                    .collect();
                let chunks: Vec<SeqChunk> = active
                    .iter()
                    .zip(&blocks)
                    .map(|(&i, b)| SeqChunk {
                        ids: &step_ids[i],
                        start: starts[i],
                        blocks: b,
                    })
                    .collect();
                let draws: Vec<TokenDraw> = active
                    .iter()
                    .map(|&i| TokenDraw::for_token(&requests[i], outputs[i].ids.len()))
                    .collect();
                let ids = self.backend.forward_and_sample(&chunks, &draws)?;
                if ids.len() != active.len() {
                    return Err(ModelError::request(format!(
                        "the {} backend returned {} token ids for {} sequences",
                        self.backend.describe(),
                        ids.len(),
                        active.len()
                    )));
                }
                let mut still = Vec::with_capacity(active.len());
                for (id, &i) in ids.into_iter().zip(&active) {
                    let r = &requests[i];
                    let out = &mut outputs[i];
                    out.ids.push(id);
                    on_token(i, id);
                    starts[i] += step_ids[i].len();
                    if r.stop_ids.contains(&id) {
                        out.stop = StopReason::Eos;
                    } else if out.ids.len() >= r.max_new_tokens {
                        out.stop = StopReason::MaxTokens;
                    } else if starts[i] + 1 > limit {
                        out.stop = StopReason::ContextLimit;
                    } else {
                        step_ids[i] = vec![id];
                        still.push(i);
                    }
                }
                for &i in &still {
                    self.extend(seqs[i], 1)?;
                }
                active = still;
                let dt = t0.elapsed().as_secs_f64();
                if prefill {
                    stats.prefill_s += dt;
                    prefill = false;
                } else {
                    stats.decode_s += dt;
                }
            }
            Ok(())
        })();
        self.end_batch(seqs, result, &outputs, stats)?;
        Ok(outputs)
    }

    /// Frees a finished batch's sequences (whatever `result` says), then passes on its error or
    /// records its timing.
    pub(crate) fn end_batch(
        &mut self,
        seqs: Vec<SeqId>,
        result: Result<()>,
        outputs: &[Generation],
        mut stats: GenerationStats,
    ) -> Result<()> {
        for s in seqs {
            let _ = self.alloc.free(s);
        }
        result?;
        stats.generated_tokens = outputs.iter().map(|o| o.ids.len()).sum();
        self.last_stats = stats;
        Ok(())
    }
}
