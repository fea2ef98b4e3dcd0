//! The full-width synthetic benchmark on the device (`dsv3 bench --synthetic full-width`):
//! [`CudaModel::synthetic`] builds random weights of DeepSeek-V3's real shapes and dtypes
//! directly on the GPU (`model/cuda/synthetic_fill.cu`: no files, no host copies), and
//! [`run_full_width`] times the prefill, the decode at several batch sizes over a randomly filled
//! KV cache, each op group (an instrumented copy of the forward pass with CUDA events between the
//! groups) and the copy bandwidth of the roofline. The byte accounting and the report are host
//! code in [`crate::fullwidth`].
//!
//! [`run_mtp_cost`] (`--synthetic full-width --mtp-cost`) builds the same model plus a synthetic
//! MTP module (an MoE decoder layer, BF16 `eh_proj`, head and embedding at full vocabulary) as a
//! [`CudaBackend`] with a randomly filled KV cache, and runs the backend-generic step-cost
//! measurement of [`crate::mtp_cost`] on it.

use std::collections::HashMap;

use half::bf16;
use kernels::gpu::{grid_1d, CudaEventFlags, DeviceStatus, DeviceTensor, Gpu, PushKernelArg};
use kernels::ops::RopeTable;
use kernels::rng::splitmix64;
use kernels::stats::TimingStats;
use kernels::E4m3;
use mla_attention::gpu::DecodeWorkspace;
use mla_attention::{KvCacheAllocator, BLOCK_SIZE, KV_DIM};

use crate::config::ModelConfig;
use crate::cpu::weights::routing_config;
use crate::cpu::{check_chunks, SeqChunk, Trace};
use crate::cubins::SYNTHETIC_FILL;
use crate::engine::{Backend, Engine, LogitRows};
use crate::error::{ModelError, Result};
use crate::fullwidth::{
    decode_step_bytes, full_width_config, full_width_mtp_config, kv_entry_bytes, mtp_weight_bytes,
    FullWidthReport, OpTime, PhaseResult, WeightBytes, KV_NOTE, WEIGHTS_NOTE,
};
use crate::mtp_cost::{
    check_forced, check_options, current_commit, forced_acceptance, kv_blocks_needed,
    measure_step_costs, shape_json, MtpCostReport, StepCostOptions,
};

use super::forward::CallState;
use super::mtp::{EhProj, GpuMtp};
use super::profile::{cuda_err, OpMarks};
use super::weights::{
    alloc_err, zeros, Fp8Linear, GpuAttention, GpuExperts, GpuFfn, GpuLayer, GpuMlp, GpuMoe,
    GpuQuery,
};
use super::{check_config, CudaBackend, CudaModel};

/// Standard deviation of the random e4m3 codes: a real 128x128 block's amax (448) is about 4
/// sigma of its codes.
const CODE_STD: f32 = 112.0;
const FILL_THREADS: u32 = 256;
/// Grid-stride fills: enough blocks to fill every SM several times over.
const FILL_BLOCKS: u32 = 4096;
/// Bytes of each buffer of the copy-bandwidth measurement (far above L2).
const COPY_BYTES: usize = 1 << 30;

/// Launches the random fills of `synthetic_fill.cu`; every tensor gets its own seed.
struct Filler<'g> {
    gpu: &'g Gpu,
    seed: u64,
    count: u64,
}

impl<'g> Filler<'g> {
    fn next_seed(&mut self) -> u64 {
        self.count += 1;
        splitmix64(self.seed ^ splitmix64(self.count))
    }

    /// Launches `kernel(ptr, n, seed, a, [b])` over `len` elements.
    fn launch(
        &mut self,
        kernel: &'static str,
        ptr: u64,
        len: usize,
        a: f32,
        b: Option<f32>,
        what: &str,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let gpu = self.gpu;
        let f = gpu.function(&SYNTHETIC_FILL, kernel)?;
        let n = len as i64;
        let seed = self.next_seed();
        let mut args = gpu.stream().launch_builder(&f);
        args.arg(&ptr).arg(&n).arg(&seed).arg(&a);
        if let Some(b) = &b {
            args.arg(b);
        }
        let blocks = FILL_BLOCKS.min(len.div_ceil(FILL_THREADS as usize) as u32);
        // SAFETY: (T*, long long, unsigned long long, float[, float]) as the kernel declares;
        // ptr addresses `len` elements of the kernel's element type (the callers pass a tensor's
        // own pointer and length); grid-stride loop bounded by n.
        unsafe { gpu.launch(kernel, args, grid_1d(blocks, FILL_THREADS, 0)) }.map_err(|e| {
            ModelError::Kernel(kernels::Error::Cuda {
                context: format!("filling {what} with random values"),
                detail: e.to_string(),
            })
        })
    }

    fn e4m3(&mut self, t: &mut DeviceTensor<E4m3>, std: f32, what: &str) -> Result<()> {
        let (ptr, len) = (t.device_ptr(self.gpu), t.len());
        self.launch("fill_e4m3_normal", ptr, len, std, None, what)
    }

    fn bf16(&mut self, t: &mut DeviceTensor<bf16>, mean: f32, std: f32, what: &str) -> Result<()> {
        let (ptr, len) = (t.device_ptr(self.gpu), t.len());
        self.launch("fill_bf16_normal", ptr, len, mean, Some(std), what)
    }

    fn f32_uniform(
        &mut self,
        t: &mut DeviceTensor<f32>,
        lo: f32,
        hi: f32,
        what: &str,
    ) -> Result<()> {
        let (ptr, len) = (t.device_ptr(self.gpu), t.len());
        self.launch("fill_f32_uniform", ptr, len, lo, Some(hi), what)
    }

    /// A random BF16 tensor `~ N(mean, std^2)`; OOM names `what`.
    fn bf16_tensor(
        &mut self,
        shape: &[usize],
        mean: f32,
        std: f32,
        what: &str,
    ) -> Result<DeviceTensor<bf16>> {
        let mut t = zeros(self.gpu, shape, what)?;
        self.bf16(&mut t, mean, std, what)?;
        Ok(t)
    }

    /// Random codes `[g.., n, k]` and block scales `[g.., ceil(n / 128), k / 128]` such that
    /// the dequantized weight has a standard deviation of about `1 / sqrt(k)`.
    fn fp8_pair(
        &mut self,
        lead: &[usize],
        n: usize,
        k: usize,
        what: &str,
    ) -> Result<(DeviceTensor<E4m3>, DeviceTensor<f32>)> {
        let shape: Vec<usize> = lead.iter().copied().chain([n, k]).collect();
        let mut w = zeros(self.gpu, &shape, what)?;
        self.e4m3(&mut w, CODE_STD, what)?;
        let sshape: Vec<usize> = lead
            .iter()
            .copied()
            .chain([n.div_ceil(128), k.div_ceil(128)])
            .collect();
        let swhat = format!("{what} scales");
        let mut s = zeros(self.gpu, &sshape, &swhat)?;
        let base = 1.0 / ((k as f32).sqrt() * CODE_STD);
        self.f32_uniform(&mut s, 0.5 * base, 1.5 * base, &swhat)?;
        Ok((w, s))
    }

    fn fp8_linear(&mut self, n: usize, k: usize, what: &str) -> Result<Fp8Linear> {
        let (w, scales) = self.fp8_pair(&[], n, k, what)?;
        // The synthetic model is DeepSeek-V3 (plain f32 activation scales).
        Ok(Fp8Linear {
            w,
            scales,
            n,
            k,
            ue8m0: false,
        })
    }

    fn mlp(&mut self, inter: usize, hidden: usize, prefix: &str) -> Result<GpuMlp> {
        Ok(GpuMlp {
            gate_up: self.fp8_linear(2 * inter, hidden, &format!("{prefix}.gate_up"))?,
            down: self.fp8_linear(hidden, inter, &format!("{prefix}.down_proj.weight"))?,
        })
    }

    fn norm(&mut self, len: usize, what: &str) -> Result<DeviceTensor<bf16>> {
        self.bf16_tensor(&[len], 1.0, 0.05, what)
    }

    fn layer(&mut self, cfg: &ModelConfig, l: usize) -> Result<GpuLayer> {
        let hidden = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let d_c = cfg.kv_lora_rank;
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let q = match cfg.q_lora_rank {
            Some(r) => GpuQuery::Lora {
                q_a: self.fp8_linear(r, hidden, &format!("{a}.q_a_proj.weight"))?,
                q_a_norm: self.norm(r, &format!("{a}.q_a_layernorm.weight"))?,
                q_b: self.fp8_linear(cfg.q_proj_dim(), r, &format!("{a}.q_b_proj.weight"))?,
            },
            None => GpuQuery::Direct(self.fp8_linear(
                cfg.q_proj_dim(),
                hidden,
                &format!("{a}.q_proj.weight"),
            )?),
        };
        let attention = GpuAttention {
            q,
            kv_a: self.fp8_linear(
                cfg.kv_a_dim(),
                hidden,
                &format!("{a}.kv_a_proj_with_mqa.weight"),
            )?,
            kv_a_norm: self.norm(d_c, &format!("{a}.kv_a_layernorm.weight"))?,
            w_uk: self.bf16_tensor(
                &[heads, cfg.qk_nope_head_dim, d_c],
                0.0,
                1.0 / (cfg.qk_nope_head_dim as f32).sqrt(),
                &format!("{a}.kv_b_proj.weight (W_UK)"),
            )?,
            w_uv: self.bf16_tensor(
                &[heads, cfg.v_head_dim, d_c],
                0.0,
                1.0 / (d_c as f32).sqrt(),
                &format!("{a}.kv_b_proj.weight (W_UV)"),
            )?,
            o: self.fp8_linear(hidden, cfg.o_proj_in_dim(), &format!("{a}.o_proj.weight"))?,
        };
        let m = format!("{p}.mlp");
        let ffn = if cfg.is_moe_layer(l) {
            let experts = cfg.n_routed_experts;
            let inter = cfg.moe_intermediate_size;
            let bias = if cfg.has_score_bias() {
                let what = format!("{m}.gate.e_score_correction_bias");
                let mut b = zeros(self.gpu, &[experts], &what)?;
                self.f32_uniform(&mut b, -0.05, 0.05, &what)?;
                Some(b)
            } else {
                None
            };
            let (gate_up, gate_up_scales) = self.fp8_pair(
                &[experts],
                2 * inter,
                hidden,
                &format!("{m}.experts gate_up"),
            )?;
            let (down, down_scales) =
                self.fp8_pair(&[experts], hidden, inter, &format!("{m}.experts down"))?;
            GpuFfn::Moe(GpuMoe {
                gate: self.bf16_tensor(
                    &[experts, hidden],
                    0.0,
                    1.0 / (hidden as f32).sqrt(),
                    &format!("{m}.gate.weight"),
                )?,
                bias,
                routing: routing_config(cfg)?,
                experts: GpuExperts {
                    gate_up,
                    gate_up_scales,
                    down,
                    down_scales,
                    inter,
                },
                shared: if cfg.n_shared_experts > 0 {
                    Some(self.mlp(
                        cfg.shared_expert_dim(),
                        hidden,
                        &format!("{m}.shared_experts"),
                    )?)
                } else {
                    None
                },
                ue8m0: false,
            })
        } else {
            GpuFfn::Dense(self.mlp(cfg.intermediate_size, hidden, &m)?)
        };
        Ok(GpuLayer {
            input_norm: self.norm(hidden, &format!("{p}.input_layernorm.weight"))?,
            post_attention_norm: self
                .norm(hidden, &format!("{p}.post_attention_layernorm.weight"))?,
            attention,
            ffn,
        })
    }

    /// The first MTP module of `cfg` (layer `num_hidden_layers`): norms ~ 1, a BF16 `eh_proj`
    /// `[hidden, 2 * hidden]` (as DeepSeek-V3 stores it), the decoder layer, and BF16 head and
    /// embedding `[vocab, hidden]`.
    fn mtp(&mut self, cfg: &ModelConfig) -> Result<GpuMtp> {
        let l = cfg.mtp_layer_id(0);
        let (vocab, d) = (cfg.vocab_size, cfg.hidden_size);
        let p = format!("model.layers.{l}");
        let eh_proj = self.bf16_tensor(
            &[d, 2 * d],
            0.0,
            1.0 / ((2 * d) as f32).sqrt(),
            &format!("{p}.eh_proj.weight"),
        )?;
        Ok(GpuMtp {
            enorm: self.norm(d, &format!("{p}.enorm.weight"))?,
            hnorm: self.norm(d, &format!("{p}.hnorm.weight"))?,
            eh_proj: EhProj::Bf16(eh_proj),
            layer: self.layer(cfg, l)?,
            head_norm: self.norm(d, &format!("{p}.shared_head.norm.weight"))?,
            head: self.bf16_tensor(
                &[vocab, d],
                0.0,
                1.0 / (d as f32).sqrt(),
                &format!("{p}.shared_head.head.weight"),
            )?,
            embed: self.bf16_tensor(&[vocab, d], 0.0, 1.0, &format!("{p}.embed_tokens.weight"))?,
        })
    }

    /// Fills a KV cache `[blocks, 64, 576]` with random BF16 entries ~ N(0, 1).
    fn kv_cache(&mut self, cache: &mut DeviceTensor<bf16>, what: &str) -> Result<()> {
        self.bf16(cache, 0.0, 1.0, what)
    }
}

impl CudaModel {
    /// A model of `cfg`'s shapes with random weights generated on the device from `seed` (FP8
    /// codes finite, block scales positive, norms ~ 1; see [`crate::fullwidth::WEIGHTS_NOTE`]),
    /// with a synthetic MTP module when `cfg.num_nextn_predict_layers > 0`. GPU out-of-memory is
    /// an error naming the tensor being allocated.
    pub fn synthetic(
        gpu: &Gpu,
        cfg: &ModelConfig,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        check_config(cfg)?;
        let cfg = cfg.clone();
        let params = cfg.rope_params()?;
        let rope = RopeTable::new(gpu, &params, cfg.max_position_embeddings)
            .map_err(alloc_err("the RoPE cos/sin table"))?;
        let mut fill = Filler {
            gpu,
            seed,
            count: 0,
        };
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let embed = fill.bf16_tensor(&[vocab, hidden], 0.0, 1.0, "model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            layers.push(fill.layer(&cfg, l)?);
            gpu.synchronize()?;
            progress(l + 1, cfg.num_hidden_layers);
        }
        let final_norm = fill.norm(hidden, "model.norm.weight")?;
        let lm_head = fill.bf16_tensor(
            &[vocab, hidden],
            0.0,
            1.0 / (hidden as f32).sqrt(),
            "lm_head.weight",
        )?;
        let mtp = if cfg.num_nextn_predict_layers > 0 {
            Some(Box::new(fill.mtp(&cfg)?))
        } else {
            None
        };
        gpu.synchronize()?;
        Ok(CudaModel {
            softmax_scale: cfg.softmax_scale() as f32,
            device: gpu.info().name.clone(),
            mtp,
            cfg,
            rope,
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}

/// Times `reps` calls of `f` (after `warmup`) with a CUDA event between calls.
fn time_calls(
    gpu: &Gpu,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<TimingStats> {
    for _ in 0..warmup {
        f()?;
    }
    let new_event = || {
        gpu.context()
            .new_event(Some(CudaEventFlags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating timing events"))
    };
    let mut events = vec![new_event()?];
    events[0]
        .record(gpu.stream())
        .map_err(cuda_err("recording an event"))?;
    for _ in 0..reps {
        f()?;
        let e = new_event()?;
        e.record(gpu.stream())
            .map_err(cuda_err("recording an event"))?;
        events.push(e);
    }
    let samples = events
        .windows(2)
        .map(|w| w[0].elapsed_ms(&w[1]))
        .collect::<std::result::Result<Vec<f32>, _>>()
        .map_err(cuda_err("reading event times (a kernel may have faulted)"))?;
    Ok(TimingStats::from_samples(&samples))
}

/// The device-to-device copy bandwidth (bytes read + written per second, in GB/s), as
/// `harness`'s copy ceiling measures it.
fn copy_bandwidth(gpu: &Gpu, reps: usize) -> Result<(f64, TimingStats)> {
    let n = COPY_BYTES / 4;
    let mut src = zeros::<f32>(gpu, &[n], "the copy-bandwidth source buffer (1 GiB)")?;
    Filler {
        gpu,
        seed: 1,
        count: 0,
    }
    .f32_uniform(&mut src, -1.0, 1.0, "the copy-bandwidth source buffer")?;
    let mut dst = zeros::<f32>(gpu, &[n], "the copy-bandwidth destination buffer (1 GiB)")?;
    let stream = gpu.stream().clone();
    let timing = time_calls(gpu, 3, reps, || {
        stream
            .memcpy_dtod(src.slice(), dst.slice_mut())
            .map_err(cuda_err("cuMemcpyDtoDAsync"))
    })?;
    Ok((
        2.0 * COPY_BYTES as f64 / (timing.median_ms * 1e-3) / 1e9,
        timing,
    ))
}

/// The model, its cache and the per-call state of the benchmark.
struct Bench<'g> {
    gpu: &'g Gpu,
    model: CudaModel,
    cache: Vec<DeviceTensor<bf16>>,
    kv_blocks: usize,
    workspaces: HashMap<(usize, usize), DecodeWorkspace>,
    status: DeviceStatus,
}

impl Bench<'_> {
    /// One forward call of the CUDA backend: the layers, then lm_head on each sequence's last row.
    fn call(&mut self, seqs: &[SeqChunk], trace: Option<&mut Trace>) -> Result<()> {
        let gpu = self.gpu;
        let mut state = CallState {
            cache: &mut self.cache,
            workspaces: &mut self.workspaces,
            status: &mut self.status,
            marks: None,
        };
        let h = self.model.forward_hidden(gpu, seqs, &mut state, trace)?;
        let _logits = self
            .model
            .logits(gpu, &h, seqs, LogitRows::Last, &mut self.status)?;
        Ok(())
    }
}

impl Bench<'_> {
    /// One forward call of the serving path (as [`Bench::call`]) with a CUDA event after each op
    /// group (see [`OpMarks`]): milliseconds per group, in first-seen order.
    fn profiled(&mut self, seqs: &[SeqChunk]) -> Result<Vec<OpTime>> {
        let gpu = self.gpu;
        gpu.synchronize()?;
        let marks = OpMarks::start(gpu)?;
        let mut state = CallState {
            cache: &mut self.cache,
            workspaces: &mut self.workspaces,
            status: &mut self.status,
            marks: Some(&marks),
        };
        let h = self.model.forward_hidden(gpu, seqs, &mut state, None)?;
        let _logits = self
            .model
            .logits(gpu, &h, seqs, LogitRows::Last, &mut self.status)?;
        marks.mark("lm_head")?;
        self.status
            .check(gpu, "full-width benchmark (instrumented call)")?;
        marks.totals()
    }
}

/// What `dsv3 bench --synthetic full-width` measures.
#[derive(Clone, Debug)]
pub struct FullWidthOptions {
    pub layers: usize,
    pub prompt_len: usize,
    pub context: usize,
    pub batches: Vec<usize>,
    /// Timed decode steps per batch size.
    pub decode_reps: usize,
    /// Timed prefill calls.
    pub prefill_reps: usize,
    pub seed: u64,
}

impl FullWidthOptions {
    /// The measurement on a `layers`-layer model: prefill of
    /// [`crate::fullwidth::PROMPT_LEN`] tokens, decode at [`crate::fullwidth::BATCHES`] over
    /// [`crate::fullwidth::CONTEXT`] cached tokens, `decode_reps` timed decode steps.
    pub fn standard(layers: usize, decode_reps: usize) -> Self {
        FullWidthOptions {
            layers,
            prompt_len: crate::fullwidth::PROMPT_LEN,
            context: crate::fullwidth::CONTEXT,
            batches: crate::fullwidth::BATCHES.to_vec(),
            decode_reps,
            prefill_reps: 3,
            seed: 0x5eed_f011_3d17_u64,
        }
    }
}

/// Bytes of one layer's KV cache of `blocks` blocks.
fn cache_layer_bytes(cfg: &ModelConfig, blocks: usize) -> u64 {
    blocks as u64 * BLOCK_SIZE as u64 * kv_entry_bytes(cfg)
}

/// Builds the synthetic model on `gpu` and runs every measurement; `log` gets progress lines.
pub fn run_full_width(
    gpu: &Gpu,
    opts: &FullWidthOptions,
    log: &mut dyn FnMut(&str),
) -> Result<FullWidthReport> {
    let cfg = full_width_config(opts.layers)?;
    check_config(&cfg)?;
    if opts.prompt_len == 0 || opts.batches.contains(&0) || opts.decode_reps == 0 {
        return Err(ModelError::request(
            "the prompt length, every batch size and the step count must be >= 1",
        ));
    }
    let max_len = opts.prompt_len.max(opts.context + 1);
    if max_len > cfg.max_position_embeddings {
        return Err(ModelError::request(format!(
            "{max_len} positions exceed max_position_embeddings {}",
            cfg.max_position_embeddings
        )));
    }
    let per_seq = KvCacheAllocator::blocks_for(opts.context + 1);
    let kv_blocks = opts
        .batches
        .iter()
        .map(|&b| b * per_seq)
        .max()
        .unwrap_or(0)
        .max(KvCacheAllocator::blocks_for(opts.prompt_len));
    let weights = WeightBytes::new(&cfg).resident(&cfg);
    let kv_bytes = cache_layer_bytes(&cfg, kv_blocks) * cfg.num_hidden_layers as u64;
    let (free, total) = gpu.mem_info()?;
    if weights + kv_bytes > free as u64 {
        return Err(ModelError::request(format!(
            "--layers {}: the synthetic model needs {:.2} GB of weights + {:.2} GB of KV cache, \
             but {} has {:.2} GB free of {:.2} GB; use fewer --layers (each MoE layer is {:.2} GB)",
            opts.layers,
            weights as f64 / 1e9,
            kv_bytes as f64 / 1e9,
            gpu.info().name,
            free as f64 / 1e9,
            total as f64 / 1e9,
            {
                let w = WeightBytes::new(&cfg);
                (w.attention + w.layer_norms + w.router + w.shared + 256 * w.expert) as f64 / 1e9
            }
        )));
    }

    log("measuring the device-to-device copy bandwidth (2 x 1 GiB)");
    let (copy_gb_per_s, copy_timing) = copy_bandwidth(gpu, 20)?;
    log(&format!("copy bandwidth {copy_gb_per_s:.0} GB/s"));

    log(&format!(
        "generating {:.2} GB of random weights on {} ({} layers)",
        weights as f64 / 1e9,
        gpu.info().name,
        cfg.num_hidden_layers
    ));
    let model = CudaModel::synthetic(gpu, &cfg, opts.seed, &mut |done, all| {
        log(&format!("  layer {done}/{all}"));
    })?;
    let mut fill = Filler {
        gpu,
        seed: opts.seed ^ 0x006b_7663_6163_6865,
        count: 0,
    };
    let mut cache = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let what = format!(
            "the KV cache of layer {l} ({kv_blocks} blocks x 64 tokens x {KV_DIM} bf16; {} layers \
             in all)",
            cfg.num_hidden_layers
        );
        let mut c = zeros(gpu, &[kv_blocks, BLOCK_SIZE, KV_DIM], &what)?;
        fill.bf16(&mut c, 0.0, 1.0, &what)?;
        cache.push(c);
    }
    gpu.synchronize()?;
    let mut bench = Bench {
        gpu,
        model,
        cache,
        kv_blocks,
        workspaces: HashMap::new(),
        status: DeviceStatus::new(gpu).map_err(alloc_err("the status word"))?,
    };
    let vocab = cfg.vocab_size as u64;
    let token = |s: u64, i: u64| (splitmix64(opts.seed ^ (s * 1_000_003 + i)) % vocab) as u32;

    // Prefill: one sequence of prompt_len tokens in blocks 0.. (overwritten by the decode runs'
    // random cache only where they overlap, which does not matter for timing).
    log(&format!("prefill: {} tokens x 1", opts.prompt_len));
    let prompt: Vec<u32> = (0..opts.prompt_len as u64).map(|i| token(0, i)).collect();
    let blocks: Vec<u32> = (0..KvCacheAllocator::blocks_for(opts.prompt_len) as u32).collect();
    let seqs = [SeqChunk {
        ids: &prompt,
        start: 0,
        blocks: &blocks,
    }];
    check_chunks(&cfg, &seqs, bench.kv_blocks)?;
    bench.status.reset(gpu)?;
    let timing = time_calls(gpu, 1, opts.prefill_reps.max(1), || bench.call(&seqs, None))?;
    bench.status.check(gpu, "full-width benchmark (prefill)")?;
    let ops = bench.profiled(&seqs)?;
    let prefill = PhaseResult {
        phase: "prefill",
        batch: 1,
        tokens_per_call: opts.prompt_len,
        context: 0,
        timing,
        ops,
        bytes: None,
    };
    log(&format!(
        "  {:.1} ms, {:.0} tokens/s",
        prefill.timing.median_ms,
        prefill.tokens_per_s()
    ));

    let mut decode = Vec::new();
    for &batch in &opts.batches {
        log(&format!(
            "decode: batch {batch}, {} tokens of context",
            opts.context
        ));
        let ids: Vec<Vec<u32>> = (0..batch as u64).map(|b| vec![token(b + 1, 0)]).collect();
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|b| ((b * per_seq) as u32..((b + 1) * per_seq) as u32).collect())
            .collect();
        let seqs: Vec<SeqChunk> = ids
            .iter()
            .zip(&tables)
            .map(|(ids, blocks)| SeqChunk {
                ids,
                start: opts.context,
                blocks,
            })
            .collect();
        check_chunks(&cfg, &seqs, bench.kv_blocks)?;
        bench.status.reset(gpu)?;
        // One traced call: the routed ids give the distinct experts each MoE layer reads.
        let mut trace = Trace::default();
        bench.call(&seqs, Some(&mut trace))?;
        let distinct: Vec<usize> = trace
            .routing
            .iter()
            .map(|ids| {
                let mut v: Vec<i32> = ids.clone();
                v.sort_unstable();
                v.dedup();
                v.len()
            })
            .collect();
        let timing = time_calls(gpu, 2, opts.decode_reps, || bench.call(&seqs, None))?;
        bench.status.check(gpu, "full-width benchmark (decode)")?;
        let ops = bench.profiled(&seqs)?;
        let p = PhaseResult {
            phase: "decode",
            batch,
            tokens_per_call: batch,
            context: opts.context,
            timing,
            ops,
            bytes: Some(decode_step_bytes(&cfg, batch, opts.context, &distinct)),
        };
        log(&format!(
            "  {:.3} ms/step, {:.1} tokens/s, {:.2}x the roofline",
            p.timing.median_ms,
            p.tokens_per_s(),
            p.ratio(copy_gb_per_s).unwrap_or(f64::NAN)
        ));
        decode.push(p);
    }

    let moe_layers = (0..cfg.num_hidden_layers)
        .filter(|&l| cfg.is_moe_layer(l))
        .count();
    Ok(FullWidthReport {
        device: gpu.info().name.clone(),
        layers: cfg.num_hidden_layers,
        dense_layers: cfg.num_hidden_layers - moe_layers,
        moe_layers,
        vocab_size: cfg.vocab_size,
        resident_weight_bytes: weights,
        kv_cache_bytes: kv_bytes,
        copy_gb_per_s,
        copy_timing,
        copy_bytes: 2 * COPY_BYTES as u64,
        prefill: Some(prefill),
        decode,
        notes: vec![
            KV_NOTE.to_string(),
            WEIGHTS_NOTE.to_string(),
            format!(
                "decode repeats one step at position {} of every sequence; {} timed steps per \
                 batch size after 2 warm-up steps; prefill: {} timed calls after 1 warm-up",
                opts.context,
                opts.decode_reps,
                opts.prefill_reps.max(1)
            ),
        ],
    })
}

/// What `dsv3 bench --synthetic full-width --mtp-cost` measures.
#[derive(Clone, Debug)]
pub struct MtpCostOptions {
    pub layers: usize,
    /// The step-cost measurement (its `fill` is ignored: the cache is filled with random entries).
    pub steps: StepCostOptions,
    /// Prompt of the forced-acceptance runs.
    pub prompt_len: usize,
    /// New tokens of the short forced-acceptance run (the long one runs twice as many).
    pub new_tokens: usize,
}

impl MtpCostOptions {
    /// The measurement: batches [`crate::mtp_cost::GPU_BATCHES`] over
    /// [`crate::mtp_cost::GPU_CONTEXT`] cached tokens, `reps` timed calls per step kind, and the
    /// forced-acceptance runs with a prompt of the same length and `reps` / `2 reps` new tokens.
    pub fn standard(layers: usize, reps: usize, warmup: usize, seed: u64) -> Self {
        let steps = StepCostOptions {
            batches: crate::mtp_cost::GPU_BATCHES.to_vec(),
            context: crate::mtp_cost::GPU_CONTEXT,
            warmup,
            reps,
            fill: crate::mtp_cost::ContextFill::Preset,
            seed,
        };
        MtpCostOptions {
            layers,
            prompt_len: steps.context,
            new_tokens: reps,
            steps,
        }
    }
}

/// Checks that the synthetic model with MTP and its caches fit in the device's free memory.
fn check_mtp_memory(gpu: &Gpu, cfg: &ModelConfig, kv_blocks: usize) -> Result<(u64, u64)> {
    let weights = WeightBytes::new(cfg).resident(cfg) + mtp_weight_bytes(cfg);
    let kv_bytes = cache_layer_bytes(cfg, kv_blocks) * (cfg.num_hidden_layers as u64 + 1);
    let (free, total) = gpu.mem_info()?;
    if weights + kv_bytes > free as u64 {
        return Err(ModelError::request(format!(
            "--layers {} --mtp-cost: the synthetic model needs {:.2} GB of weights (MTP module \
             included) + {:.2} GB of KV cache ({kv_blocks} blocks per layer), but {} has {:.2} GB \
             free of {:.2} GB; use fewer --layers, smaller --batches or a shorter --context",
            cfg.num_hidden_layers,
            weights as f64 / 1e9,
            kv_bytes as f64 / 1e9,
            gpu.info().name,
            free as f64 / 1e9,
            total as f64 / 1e9,
        )));
    }
    Ok((weights, kv_bytes))
}

/// The synthetic model with MTP as a [`CudaBackend`] of `kv_blocks` blocks, every cache block
/// (main layers and MTP layer) filled with random entries.
fn synthetic_backend<'g>(
    gpu: &'g Gpu,
    cfg: &ModelConfig,
    kv_blocks: usize,
    seed: u64,
    log: &mut dyn FnMut(&str),
) -> Result<CudaBackend<'g>> {
    let model = CudaModel::synthetic(gpu, cfg, seed, &mut |done, all| {
        log(&format!("  layer {done}/{all}"));
    })?;
    let mut backend = CudaBackend::new(model, gpu, kv_blocks)?;
    let mut fill = Filler {
        gpu,
        seed: seed ^ 0x006b_7663_6163_6865,
        count: 0,
    };
    for (l, cache) in backend.cache.iter_mut().enumerate() {
        fill.kv_cache(cache, &format!("the KV cache of layer {l}"))?;
    }
    if let Some(cache) = backend.mtp_cache.as_mut() {
        fill.kv_cache(cache, "the KV cache of the MTP layer")?;
    }
    gpu.synchronize()?;
    Ok(backend)
}

/// Builds the full-width synthetic model with an MTP module on `gpu` and runs the MTP step-cost
/// measurement and the forced-acceptance runs on it; `log` gets progress lines.
pub fn run_mtp_cost(
    gpu: &Gpu,
    opts: &MtpCostOptions,
    log: &mut dyn FnMut(&str),
) -> Result<MtpCostReport> {
    let cfg = full_width_mtp_config(opts.layers)?;
    check_config(&cfg)?;
    check_options(&opts.steps, &cfg, usize::MAX)?;
    check_forced(&cfg, opts.prompt_len, opts.new_tokens)?;
    let kv_blocks = kv_blocks_needed(&opts.steps, opts.prompt_len, opts.new_tokens);
    let (weights, kv_bytes) = check_mtp_memory(gpu, &cfg, kv_blocks)?;
    log(&format!(
        "generating {:.2} GB of random weights on {} ({} layers + MTP) and {:.2} GB of random KV \
         cache",
        weights as f64 / 1e9,
        gpu.info().name,
        cfg.num_hidden_layers,
        kv_bytes as f64 / 1e9
    ));
    let backend = synthetic_backend(gpu, &cfg, kv_blocks, opts.steps.seed, log)?;
    let mut engine = Engine::new(backend)?;
    let costs = measure_step_costs(&mut engine, &opts.steps, log)?;
    log(&format!(
        "forced acceptance: batch 1, prompt {}, {} and {} new tokens",
        opts.prompt_len,
        opts.new_tokens,
        2 * opts.new_tokens
    ));
    let forced = forced_acceptance(
        &mut engine,
        opts.prompt_len,
        opts.new_tokens,
        opts.steps.seed,
    )?;
    Ok(MtpCostReport {
        backend: engine.backend().describe(),
        model: format!(
            "full-width synthetic DeepSeek-V3, {} layers (1 dense + {} MoE) + 1 MTP layer (MoE)",
            cfg.num_hidden_layers,
            cfg.num_hidden_layers - 1
        ),
        commit: current_commit(),
        shape: shape_json(&cfg),
        context: opts.steps.context,
        warmup: opts.steps.warmup,
        reps: opts.steps.reps,
        costs,
        forced: Some(forced),
        notes: vec![
            WEIGHTS_NOTE.to_string(),
            MTP_NOTE.to_string(),
            format!(
                "the KV cache of every layer (MTP included) is filled with random BF16 entries \
                 instead of a prefill of {} tokens per sequence (step time depends on the cache \
                 length, not on its values); the forced-acceptance runs prefill their prompt for \
                 real",
                opts.steps.context
            ),
            FORCED_NOTE.to_string(),
        ],
    })
}

/// What the report says about the synthetic MTP module.
const MTP_NOTE: &str = "the MTP module is synthetic too: an MoE decoder layer like V3's layer 61 \
    (256 experts, top-8, shared expert), a BF16 eh_proj [7168, 14336], BF16 shared_head and \
    embedding at the full 129280-token vocabulary, run by the CUDA backend's mtp_forward (which \
    rounds eh_proj's output through the host, as it does for real checkpoints)";

/// What the report says about the forced-acceptance runs on random weights.
const FORCED_NOTE: &str = "forced acceptance on random weights: the drafts are a plain greedy \
    run's tokens; the verify pass computes the same logits with other GEMM shapes, and random \
    logits have near ties, so a few drafts can still be rejected (the measured acceptance is \
    reported)";
