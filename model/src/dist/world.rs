//! A world of N ranks in one process on the CPU backend: each rank a thread with its own engine
//! (its requests, its KV cache) and its share of the experts, connected by the in-process
//! transport. It is how CI proves the sharding: worlds of every size must agree bit for bit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moe_dispatch::ep::{ExpertPlacement, InProcess};
use mtp::SpecStats;

use crate::checkpoint::Checkpoint;
use crate::cpu::{CpuModel, Precision};
use crate::engine::{Engine, Generation, GenerationStats, Request};
use crate::error::{ModelError, Result};
use crate::speculative::{Drafter, SpecConfig};
use crate::ModelConfig;

use super::comm::RankComm;
use super::rank::RankBackend;

/// How to build a world.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    pub world_size: usize,
    pub precision: Precision,
    /// KV cache blocks (64 tokens each) of every rank.
    pub kv_blocks_per_rank: usize,
    /// How long a rank waits for a peer inside a collective before failing.
    pub timeout: Duration,
}

impl WorldOptions {
    pub fn new(world_size: usize, precision: Precision, kv_blocks_per_rank: usize) -> Self {
        WorldOptions {
            world_size,
            precision,
            kv_blocks_per_rank,
            timeout: InProcess::DEFAULT_TIMEOUT,
        }
    }
}

/// The expert placement of a world of `world_size` ranks for `cfg`, or an error saying why the
/// experts cannot be spread over it.
pub fn placement(cfg: &ModelConfig, world_size: usize) -> Result<ExpertPlacement> {
    if cfg.n_routed_experts == 0 || cfg.first_k_dense_replace >= cfg.num_hidden_layers {
        return Err(ModelError::request(
            "the model has no MoE layer, so there are no experts to spread over ranks; run it \
             without --world-size",
        ));
    }
    ExpertPlacement::new(cfg.n_routed_experts, world_size).map_err(|e| {
        ModelError::request(format!(
            "a world of {world_size} ranks cannot hold this model's experts: {e}"
        ))
    })
}

/// Every rank's model of a world of `world_size` ranks: rank `r` reads the replicated weights and
/// its own experts only. `progress(ranks done, world_size)` reports as ranks load.
pub fn load_shards(
    ckpt: &Checkpoint,
    precision: Precision,
    world_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<CpuModel>> {
    let placement = placement(ckpt.config(), world_size)?;
    (0..world_size)
        .map(|r| {
            let experts = placement.local_experts(r);
            let model = CpuModel::load_shard(ckpt, precision, experts, &mut |_, _| {})
                .map_err(|e| e.on_rank(r))?;
            progress(r + 1, world_size);
            Ok(model)
        })
        .collect()
}

/// N ranks in one process.
pub struct CpuWorld {
    ranks: Vec<Engine<RankBackend>>,
    timeout: Duration,
    last_stats: GenerationStats,
}

impl std::fmt::Debug for CpuWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuWorld")
            .field("world_size", &self.ranks.len())
            .finish()
    }
}

impl CpuWorld {
    /// Loads every rank's shard of `ckpt`: the replicated weights and its `E / N` experts of
    /// every MoE layer (MTP included).
    pub fn load(ckpt: &Checkpoint, opts: &WorldOptions) -> Result<Self> {
        let shards = load_shards(ckpt, opts.precision, opts.world_size, &mut |_, _| {})?;
        Self::from_shards(shards, opts)
    }

    /// A world of the ranks' models (`shards[r]` holds rank `r`'s experts, as
    /// [`load_shards`] makes them), each with `opts.kv_blocks_per_rank` KV blocks.
    pub fn from_shards(shards: Vec<CpuModel>, opts: &WorldOptions) -> Result<Self> {
        let n = shards.len();
        if n != opts.world_size {
            return Err(ModelError::request(format!(
                "{n} rank models for a world of {}",
                opts.world_size
            )));
        }
        let placement = placement(shards[0].config(), n)?;
        let mut ranks = Vec::with_capacity(n);
        for (r, model) in shards.into_iter().enumerate() {
            let comm = Arc::new(RankComm::new(r, placement));
            let backend =
                RankBackend::new(model, comm, opts.kv_blocks_per_rank).map_err(|e| e.on_rank(r))?;
            ranks.push(Engine::new(backend).map_err(|e| e.on_rank(r))?);
        }
        Ok(CpuWorld {
            ranks,
            timeout: opts.timeout,
            last_stats: GenerationStats::default(),
        })
    }

    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    pub fn config(&self) -> &ModelConfig {
        self.ranks[0].config()
    }

    /// Rank 0's engine (prompt checks, the description).
    pub fn rank0(&self) -> &Engine<RankBackend> {
        &self.ranks[0]
    }

    pub fn describe(&self) -> String {
        let b = self.ranks[0].backend();
        format!(
            "{}, world of {} (experts {} per rank)",
            b.cpu_describe(),
            self.ranks.len(),
            b.comm().placement().experts_per_rank()
        )
    }

    /// Timing of the last `generate` call: token counts summed over the ranks, times of the
    /// slowest rank.
    pub fn last_stats(&self) -> GenerationStats {
        self.last_stats
    }

    /// The rank serving request `i` of a batch: round robin.
    pub fn rank_of(&self, request: usize) -> usize {
        request % self.ranks.len()
    }

    /// Runs `work(rank, engine)` on every rank at once over fresh transports; each rank then
    /// serves the others until all are done. A failing rank leaves the world, so its peers stop
    /// too; the error returned is the failing rank's own, named by its rank (the peers' "rank
    /// left" errors are only consequences).
    fn run<T: Send>(
        &mut self,
        work: impl Fn(usize, &mut Engine<RankBackend>) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let transports = InProcess::world_with_timeout(self.ranks.len(), self.timeout)?;
        for (engine, t) in self.ranks.iter().zip(transports) {
            engine.backend().comm().connect(Box::new(t))?;
        }
        let work = &work;
        let results: Vec<Result<T>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .ranks
                .iter_mut()
                .enumerate()
                .map(|(r, engine)| {
                    scope.spawn(move || {
                        let out = work(r, engine).and_then(|v| {
                            engine.backend_mut().finish()?;
                            Ok(v)
                        });
                        engine.backend().comm().leave();
                        out.map_err(|e| e.on_rank(r))
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(r, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(ModelError::request("the rank's thread panicked").on_rank(r))
                    })
                })
                .collect()
        });
        let mut first_collective = None;
        let mut outputs = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(v) => outputs.push(v),
                Err(e) if e.is_collective() => {
                    first_collective.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_collective {
            Some(e) => Err(e),
            None => Ok(outputs),
        }
    }

    /// Checks every request before any rank starts, so a bad one is reported as itself (with
    /// its index) rather than as the world stopping.
    fn check_requests(&self, requests: &[Request]) -> Result<()> {
        for (i, r) in requests.iter().enumerate() {
            let named = |e: ModelError| ModelError::request(format!("request {i}: {e}"));
            self.ranks[0].check_prompt(&r.prompt).map_err(named)?;
            r.sampling
                .validate()
                .map_err(|e| ModelError::request(format!("request {i}: {e}")))?;
        }
        Ok(())
    }

    /// The request indices of each rank.
    fn spread(&self, requests: usize) -> Vec<Vec<usize>> {
        let n = self.ranks.len();
        (0..n).map(|r| (r..requests).step_by(n).collect()).collect()
    }

    /// [`Engine::generate`] over the world: request `i` runs on rank `i % N` (data-parallel
    /// attention), every rank joins every MoE layer. Same outputs, bit for bit, for every world
    /// size.
    pub fn generate(
        &mut self,
        requests: &[Request],
        on_token: impl FnMut(usize, u32) + Send,
    ) -> Result<Vec<Generation>> {
        let (gens, _) = self.generate_with(requests, None, on_token)?;
        Ok(gens)
    }

    /// [`Engine::generate_speculative`] over the world (MTP drafts and verification on each
    /// request's rank).
    pub fn generate_speculative(
        &mut self,
        requests: &[Request],
        spec: &SpecConfig,
        on_token: impl FnMut(usize, u32) + Send,
    ) -> Result<(Vec<Generation>, SpecStats)> {
        if let Drafter::Oracle(c) = &spec.drafter {
            if c.len() != requests.len() {
                return Err(ModelError::request(format!(
                    "the oracle drafter has {} continuations for {} requests",
                    c.len(),
                    requests.len()
                )));
            }
        }
        let (gens, stats) = self.generate_with(requests, Some(spec), on_token)?;
        Ok((gens, stats.unwrap_or_default()))
    }

    fn generate_with(
        &mut self,
        requests: &[Request],
        spec: Option<&SpecConfig>,
        on_token: impl FnMut(usize, u32) + Send,
    ) -> Result<(Vec<Generation>, Option<SpecStats>)> {
        self.check_requests(requests)?;
        let spread = self.spread(requests.len());
        let on_token = Mutex::new(on_token);
        type RankOut = (Vec<Generation>, GenerationStats, Option<SpecStats>);
        let per_rank: Vec<RankOut> = self.run(|r, engine| {
            let mine = &spread[r];
            if mine.is_empty() {
                return Ok((Vec::new(), GenerationStats::default(), None));
            }
            let reqs: Vec<Request> = mine.iter().map(|&i| requests[i].clone()).collect();
            let emit = |j: usize, id: u32| {
                let mut f = on_token.lock().unwrap_or_else(|e| e.into_inner());
                f(mine[j], id)
            };
            match spec {
                None => {
                    let gens = engine.generate(&reqs, emit)?;
                    Ok((gens, engine.last_stats(), None))
                }
                Some(spec) => {
                    let spec = SpecConfig {
                        draft_steps: spec.draft_steps,
                        drafter: match &spec.drafter {
                            Drafter::Mtp => Drafter::Mtp,
                            Drafter::Oracle(c) => {
                                Drafter::Oracle(mine.iter().map(|&i| c[i].clone()).collect())
                            }
                        },
                    };
                    let (gens, st) = engine.generate_speculative(&reqs, &spec, emit)?;
                    Ok((gens, engine.last_stats(), Some(st)))
                }
            }
        })?;
        let mut outputs: Vec<Option<Generation>> = vec![None; requests.len()];
        let mut stats = GenerationStats::default();
        let mut spec_stats: Option<SpecStats> = spec.map(|_| SpecStats::default());
        for (r, (gens, st, sp)) in per_rank.into_iter().enumerate() {
            for (&i, g) in spread[r].iter().zip(gens) {
                outputs[i] = Some(g);
            }
            stats.prompt_tokens += st.prompt_tokens;
            stats.generated_tokens += st.generated_tokens;
            stats.prefill_s = stats.prefill_s.max(st.prefill_s);
            stats.decode_s = stats.decode_s.max(st.decode_s);
            if let (Some(total), Some(sp)) = (spec_stats.as_mut(), sp) {
                total.merge(&sp);
            }
        }
        self.last_stats = stats;
        let outputs = outputs
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                g.ok_or_else(|| ModelError::request(format!("request {i} got no generation")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((outputs, spec_stats))
    }

    /// [`Engine::logits`] of one sequence on rank 0, the other ranks serving its MoE layers.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.ranks[0].check_prompt(ids)?;
        let mut out = self.run(|r, engine| match r {
            0 => engine.logits(ids).map(Some),
            _ => Ok(None),
        })?;
        out.swap_remove(0)
            .ok_or_else(|| ModelError::request("rank 0 returned no logits"))
    }

    /// [`Engine::logits_batch`] over the world: sequence `i` on rank `i % N`, each rank one
    /// forward call over its sequences.
    pub fn logits_batch(&mut self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for (i, ids) in batch.iter().enumerate() {
            self.ranks[0]
                .check_prompt(ids)
                .map_err(|e| ModelError::request(format!("sequence {i}: {e}")))?;
        }
        let spread = self.spread(batch.len());
        let per_rank = self.run(|r, engine| {
            let mine: Vec<Vec<u32>> = spread[r].iter().map(|&i| batch[i].clone()).collect();
            if mine.is_empty() {
                return Ok(Vec::new());
            }
            engine.logits_batch(&mine)
        })?;
        let mut out = vec![Vec::new(); batch.len()];
        for (r, logits) in per_rank.into_iter().enumerate() {
            for (&i, l) in spread[r].iter().zip(logits) {
                out[i] = l;
            }
        }
        Ok(out)
    }

    /// [`Engine::logits_with_mtp`] of one sequence on rank 0.
    pub fn logits_with_mtp(&mut self, ids: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
        self.ranks[0].check_prompt(ids)?;
        let mut out = self.run(|r, engine| match r {
            0 => engine.logits_with_mtp(ids).map(Some),
            _ => Ok(None),
        })?;
        out.swap_remove(0)
            .ok_or_else(|| ModelError::request("rank 0 returned no logits"))
    }
}
