//! The bodies of the `dsv3` commands.

use std::io::{BufRead, Write};
use std::path::Path;

use kernels::reference::sampling::SamplingParams;
use mla_attention::KvCacheAllocator;
use serde_json::json;

use super::load::{load_config, load_model, parse_ids, BUILTIN_NOTE};
use super::{Command, ModelArgs, SamplingArgs};
use crate::engine::{Generation, Request};
use crate::error::{ModelError, Result};
use crate::memory_plan::{self, AllToAll, MemoryPlan, WeightKind};
use crate::speculative::{self, Drafter, SpecConfig};
use crate::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use crate::ModelConfig;

/// Runs one command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Generate {
            model,
            sampling,
            prompt,
            ids,
            json,
            mtp,
            draft_steps,
            force_accept,
        } => {
            let mtp = mtp.then_some(MtpArgs {
                draft_steps,
                force_accept,
            });
            generate(
                &model,
                &sampling,
                prompt.as_deref(),
                ids.as_deref(),
                json,
                mtp,
            )
        }
        Command::Chat {
            model,
            sampling,
            system,
        } => chat(&model, &sampling, system),
        Command::Logits { model, ids, mtp } => logits(&model, &ids, mtp),
        Command::Perplexity {
            model,
            file,
            context,
        } => perplexity(&model, &file, context),
        Command::Info {
            model,
            json,
            world_size,
            gpu_memory,
            batch_per_rank,
        } => info(
            model.as_deref(),
            json,
            &Deployment {
                world_size,
                gpu_memory,
                batch_per_rank,
            },
        ),
        Command::Bench {
            model,
            prompt_len,
            batch,
            steps,
            synthetic,
            layers,
            mtp_cost,
            batches,
            context,
            json,
            out,
        } => match synthetic {
            _ if mtp_cost => super::mtp_cost::bench_mtp_cost(
                &model,
                synthetic.as_deref(),
                &super::mtp_cost::MtpCostArgs {
                    layers,
                    batches,
                    batch,
                    prompt_len,
                    context,
                    steps,
                    json,
                    out,
                },
            ),
            Some(kind) => super::synthetic::bench_synthetic(
                &kind,
                &super::synthetic::SyntheticArgs {
                    layers,
                    prompt_len,
                    batch,
                    steps,
                    json,
                    out,
                },
            ),
            None if out.is_some() => Err(ModelError::request(
                "--out writes the report of --synthetic or --mtp-cost; plain bench prints only",
            )),
            None => bench(
                &model,
                prompt_len.unwrap_or(128),
                batch.unwrap_or(1),
                steps,
                json,
            ),
        },
        Command::Convert(args) => super::convert::run(&args),
        Command::MakeTiny { out, seed } => {
            let cfg = crate::tiny::write_tiny(&out, seed)?;
            println!(
                "wrote the tiny DeepSeek-V3-architecture model to {} ({} layers + {} MTP, vocab \
                 {}); its weights are random (seed {seed:#x})",
                out.display(),
                cfg.num_hidden_layers,
                cfg.num_nextn_predict_layers,
                cfg.vocab_size
            );
            Ok(())
        }
    }
}

pub(super) fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| ModelError::request(format!("--threads {n}: {e}")))?;
    }
    Ok(())
}

fn sampling_params(s: &SamplingArgs) -> SamplingParams {
    SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
    }
}

/// The ids that end generation: the config's EOS ids and the tokenizer's EOS.
fn stop_ids(cfg: &ModelConfig, tok: Option<&Tokenizer>) -> Vec<u32> {
    let mut ids = cfg.eos_token_ids.clone();
    if let Some(t) = tok {
        if !ids.contains(&t.eos_id()) {
            ids.push(t.eos_id());
        }
    }
    ids
}

fn require_tokenizer<'a>(tok: Option<&'a Tokenizer>, what: &str) -> Result<&'a Tokenizer> {
    tok.ok_or_else(|| {
        ModelError::request(format!(
            "{what} needs tokenizer.json in the model directory (this one has none); pass token \
             ids instead"
        ))
    })
}

/// Streams generated ids as text (or as ids when there is no tokenizer), keeping the first
/// decoding error for after the call.
struct Streamer {
    decoder: Option<StreamDecoder>,
    error: Option<ModelError>,
}

impl Streamer {
    fn new(tok: Option<&Tokenizer>) -> Self {
        Streamer {
            decoder: tok.map(|t| t.stream_decoder(true)),
            error: None,
        }
    }

    fn push(&mut self, id: u32) {
        let piece = match &mut self.decoder {
            Some(d) => match d.push(id) {
                Ok(p) => p,
                Err(e) => {
                    self.error.get_or_insert(e);
                    String::new()
                }
            },
            None => format!("{id} "),
        };
        print!("{piece}");
        let _ = std::io::stdout().flush();
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(d) = &mut self.decoder {
            print!("{}", d.flush()?);
        }
        println!();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `generate --mtp` settings.
#[derive(Clone, Copy, Debug)]
struct MtpArgs {
    draft_steps: usize,
    /// `--force-accept`: drafts = a plain greedy run's ids (100% acceptance).
    force_accept: bool,
}

fn generate(
    m: &ModelArgs,
    s: &SamplingArgs,
    prompt: Option<&str>,
    ids: Option<&str>,
    json: bool,
    mtp: Option<MtpArgs>,
) -> Result<()> {
    set_threads(m.threads)?;
    if mtp.is_some_and(|a| a.force_accept) && s.temperature > 0.0 {
        return Err(ModelError::request(format!(
            "--force-accept measures greedy speculative decoding (the drafts are a plain greedy \
             run's ids); it cannot be combined with sampling (--temperature {} > 0)",
            s.temperature
        )));
    }
    let loaded = load_model(m, false)?;
    let prompt_ids = match (prompt, ids) {
        (Some(text), _) => {
            require_tokenizer(loaded.tokenizer.as_ref(), "--prompt")?.encode(text, true)?
        }
        (None, Some(ids)) => parse_ids(ids)?,
        (None, None) => return Err(ModelError::request("give --prompt TEXT or --ids 1,2,3")),
    };
    let blocks = m
        .kv_blocks
        .unwrap_or_else(|| KvCacheAllocator::blocks_for(prompt_ids.len() + s.max_new_tokens));
    let (mut engine, tok) = loaded.into_runner(blocks)?;
    let request = Request {
        prompt: prompt_ids.clone(),
        max_new_tokens: s.max_new_tokens,
        sampling: sampling_params(s),
        seed: s.seed,
        stop_ids: stop_ids(engine.config(), tok.as_ref()),
    };
    let mut streamer = Streamer::new(tok.as_ref());
    let on_token = |_, id| {
        if !json {
            streamer.push(id);
        }
    };
    // With --mtp: speculative decoding, `mtp` = (draft steps, statistics). With --force-accept
    // a plain greedy run first gives the drafts (and the baseline timing).
    let mut baseline = None;
    let (out, mtp): (Generation, _) = match mtp {
        None => (engine.generate(&[request], on_token)?.remove(0), None),
        Some(a) => {
            let drafter = if a.force_accept {
                let plain = engine.generate(std::slice::from_ref(&request), |_, _| {})?;
                baseline = Some(engine.last_stats());
                Drafter::Oracle(vec![plain[0].ids.clone()])
            } else {
                Drafter::Mtp
            };
            let spec = SpecConfig {
                draft_steps: a.draft_steps,
                drafter,
            };
            let (mut g, st) = engine.generate_speculative(&[request], &spec, on_token)?;
            (g.remove(0), Some((a.draft_steps, st)))
        }
    };
    let stats = engine.last_stats();
    if json {
        let text = match &tok {
            Some(t) => t.decode(&out.ids, true)?,
            None => String::new(),
        };
        let mut value = json!({
            "ids": out.ids,
            "text": text,
            "tokens_per_s": stats.tokens_per_s(),
            "prompt_tokens": prompt_ids.len(),
            "prefill_s": stats.prefill_s,
            "decode_tokens_per_s": stats.decode_tokens_per_s(1),
            "stop": out.stop,
            "backend": engine.describe(),
        });
        if let Some((d, st)) = &mtp {
            value["mtp"] = speculative::stats_json(st, *d);
            if let Some(b) = &baseline {
                value["mtp"]["forced_acceptance"] = json!(true);
                value["mtp"]["tokens_per_s"] = json!(stats.tokens_per_s());
                value["mtp"]["decode_tokens_per_s"] = json!(stats.decode_tokens_per_s(1));
                value["mtp"]["baseline_tokens_per_s"] = json!(b.tokens_per_s());
                value["mtp"]["baseline_decode_tokens_per_s"] = json!(b.decode_tokens_per_s(1));
            }
        }
        println!("{value}");
    } else {
        streamer.finish()?;
        eprintln!(
            "[{} prompt + {} generated tokens, stop: {:?}; prefill {:.3} s, decode {:.1} tokens/s, \
             {}]",
            prompt_ids.len(),
            out.ids.len(),
            out.stop,
            stats.prefill_s,
            stats.decode_tokens_per_s(1),
            engine.describe()
        );
        if let Some((d, st)) = &mtp {
            eprintln!("{}", speculative::stats_line(st, *d));
        }
        if let Some(b) = &baseline {
            eprintln!(
                "[forced acceptance: speculative {:.1} tokens/s ({:.1} decode), plain greedy \
                 {:.1} tokens/s ({:.1} decode)]",
                stats.tokens_per_s(),
                stats.decode_tokens_per_s(1),
                b.tokens_per_s(),
                b.decode_tokens_per_s(1)
            );
        }
    }
    Ok(())
}

fn chat(m: &ModelArgs, s: &SamplingArgs, system: Option<String>) -> Result<()> {
    set_threads(m.threads)?;
    let loaded = load_model(m, false)?;
    let limit = loaded.model.config().max_position_embeddings;
    let blocks = m
        .kv_blocks
        .unwrap_or_else(|| KvCacheAllocator::blocks_for(limit.min(8192)));
    let (mut engine, tok) = loaded.into_runner(blocks)?;
    let tok = require_tokenizer(tok.as_ref(), "chat")?.clone();
    // Which template formats the conversation: a prompt in the wrong format still generates, so
    // say it (and refuse a checkpoint template that cannot be used before the first turn).
    eprintln!("chat template: {}", tok.chat_template()?);
    let stops = stop_ids(engine.config(), Some(&tok));
    let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
    let stdin = std::io::stdin();
    eprintln!("chat: one line per turn, end with Ctrl-D");
    for (turn, line) in stdin.lock().lines().enumerate() {
        let line = line.map_err(|e| ModelError::io("<stdin>", e))?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::user(line));
        let prompt = tok.encode_chat(&messages, true)?;
        let request = Request {
            prompt,
            max_new_tokens: s.max_new_tokens,
            sampling: sampling_params(s),
            seed: s.seed.wrapping_add(turn as u64),
            stop_ids: stops.clone(),
        };
        let mut streamer = Streamer::new(Some(&tok));
        let out = engine
            .generate(&[request], |_, id| streamer.push(id))?
            .remove(0);
        streamer.finish()?;
        messages.push(ChatMessage::assistant(tok.decode(&out.ids, true)?));
    }
    Ok(())
}

fn logits(m: &ModelArgs, ids: &str, with_mtp: bool) -> Result<()> {
    set_threads(m.threads)?;
    let ids = parse_ids(ids)?;
    let loaded = load_model(m, true)?;
    let blocks = m
        .kv_blocks
        .unwrap_or_else(|| KvCacheAllocator::blocks_for(ids.len()));
    let (mut engine, _) = loaded.into_runner(blocks)?;
    let vocab = engine.config().vocab_size;
    let (logits, mtp_logits) = if with_mtp {
        let (l, m) = engine.logits_with_mtp(&ids)?;
        (l, Some(m))
    } else {
        (engine.logits(&ids)?, None)
    };
    let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
    let mut value = json!({ "logits": rows });
    if let Some(m) = &mtp_logits {
        value["mtp_logits"] = json!(m.chunks_exact(vocab).collect::<Vec<_>>());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    serde_json::to_writer(&mut out, &value)
        .map_err(|e| ModelError::request(format!("writing JSON: {e}")))?;
    writeln!(out).map_err(|e| ModelError::io("<stdout>", e))?;
    Ok(())
}

/// Mean negative log-likelihood of each window's next tokens.
fn perplexity(m: &ModelArgs, file: &Path, context: Option<usize>) -> Result<()> {
    set_threads(m.threads)?;
    let text = std::fs::read_to_string(file).map_err(|e| ModelError::io(file, e))?;
    let loaded = load_model(m, false)?;
    let limit = loaded.model.config().max_position_embeddings;
    let window = context.unwrap_or(1024).min(limit);
    if window < 2 {
        return Err(ModelError::request("--context must be at least 2 tokens"));
    }
    let tok = require_tokenizer(loaded.tokenizer.as_ref(), "perplexity")?.clone();
    let ids = tok.encode(&text, true)?;
    if ids.len() < 2 {
        return Err(ModelError::request(format!(
            "{} has fewer than 2 tokens",
            file.display()
        )));
    }
    let (mut engine, _) = loaded.into_runner(KvCacheAllocator::blocks_for(window))?;
    let vocab = engine.config().vocab_size;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for chunk in ids.chunks(window).filter(|c| c.len() >= 2) {
        let logits = engine.logits(chunk)?;
        for (row, &next) in logits.chunks_exact(vocab).zip(&chunk[1..]) {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[next as usize] as f64;
            count += 1;
        }
    }
    let mean = nll / count as f64;
    println!(
        "{}",
        json!({
            "perplexity": mean.exp(),
            "mean_nll": mean,
            "tokens": count,
            "window": window,
            "backend": engine.describe(),
        })
    );
    Ok(())
}

/// The deployment `info` plans for (its `--world-size`, `--gpu-memory`, `--batch-per-rank`).
struct Deployment {
    world_size: usize,
    gpu_memory: Option<f64>,
    batch_per_rank: usize,
}

fn info(dir: Option<&Path>, as_json: bool, deployment: &Deployment) -> Result<()> {
    let cfg = load_config(dir)?;
    let gpu_memory = deployment
        .gpu_memory
        .map(memory_plan::gpu_memory_bytes)
        .transpose()?;
    let plan = MemoryPlan::new(&cfg, deployment.world_size, gpu_memory)?;
    let all_to_all = AllToAll::new(&cfg, deployment.world_size, deployment.batch_per_rank)?;
    let p = cfg.param_counts();
    let source = dir.map_or_else(|| BUILTIN_NOTE.to_string(), |d| d.display().to_string());
    let value = json!({
        "model": source,
        "model_type": cfg.model_type.as_str(),
        "layers": cfg.num_hidden_layers,
        "dense_layers": cfg.first_k_dense_replace.min(cfg.num_hidden_layers),
        "mtp_layers": cfg.num_nextn_predict_layers,
        "hidden_size": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "q_lora_rank": cfg.q_lora_rank,
        "kv_lora_rank": cfg.kv_lora_rank,
        "routed_experts": cfg.n_routed_experts,
        "experts_per_token": cfg.num_experts_per_tok,
        "shared_experts": cfg.n_shared_experts,
        "routing": format!("{} / {}", cfg.scoring_func.as_str(), cfg.topk_method.as_str()),
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "fp8": cfg.quantization.is_some(),
        "fp8_scale_fmt": cfg.quantization.as_ref().map(|q| if q.ue8m0() { "ue8m0" } else { "f32" }),
        "params_total": p.total,
        "params_activated": p.activated,
        "params_mtp": p.mtp_total,
        "kv_bytes_per_token_bf16": cfg.kv_bytes_per_token(),
        "kv_bytes_per_token_fp8": cfg.kv_bytes_per_token_per_layer_fp8() * cfg.num_hidden_layers,
        "memory_plan": plan.to_json(),
        "all_to_all": all_to_all.to_json(),
    });
    if as_json {
        println!("{value}");
        return Ok(());
    }
    let giga = |n: u64| n as f64 / 1e9;
    println!("model           {source}");
    println!(
        "architecture    {}: {} layers ({} dense), hidden {}, {} heads, q_lora {:?}, kv_lora {}",
        cfg.model_type.as_str(),
        cfg.num_hidden_layers,
        cfg.first_k_dense_replace.min(cfg.num_hidden_layers),
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.q_lora_rank,
        cfg.kv_lora_rank
    );
    println!(
        "experts         {} routed ({} per token, {}), {} shared",
        cfg.n_routed_experts,
        cfg.num_experts_per_tok,
        value["routing"].as_str().unwrap_or_default(),
        cfg.n_shared_experts
    );
    println!(
        "parameters      {:.3} B total, {:.3} B activated per token, {:.3} B in {} MTP layer(s)",
        giga(p.total),
        giga(p.activated),
        giga(p.mtp_total),
        cfg.num_nextn_predict_layers
    );
    println!(
        "KV cache        {} bytes/token BF16, {} bytes/token FP8 ({} layers)",
        cfg.kv_bytes_per_token(),
        cfg.kv_bytes_per_token_per_layer_fp8() * cfg.num_hidden_layers,
        cfg.num_hidden_layers
    );
    println!(
        "vocab, context  {} tokens, {} positions",
        cfg.vocab_size, cfg.max_position_embeddings
    );
    print_memory_plan(&cfg, &plan);
    if plan.world_size > 1 {
        print_all_to_all(&all_to_all);
    }
    Ok(())
}

/// The text form of `info`'s memory plan.
fn print_memory_plan(cfg: &ModelConfig, plan: &MemoryPlan) {
    let gib = memory_plan::gib;
    if cfg.n_routed_experts > 0 {
        println!(
            "deployment      {}, expert parallel: {} of {} routed experts per rank, everything \
             else replicated",
            ranks(plan.world_size),
            plan.routed_experts_per_rank,
            cfg.n_routed_experts
        );
    } else {
        println!(
            "deployment      {}, no routed experts: every rank a full replica",
            ranks(plan.world_size)
        );
    }
    let storage = if cfg.quantization.is_some() {
        "FP8 linear weights + f32 block scales, the rest BF16"
    } else {
        "BF16"
    };
    // One unit for the whole table: GiB, or MiB for a model under 1 GiB per rank.
    let (unit, per_unit) = if plan.weights.total() >= memory_plan::GIB {
        ("GiB", memory_plan::GIB as f64)
    } else {
        ("MiB", (1u64 << 20) as f64)
    };
    println!(
        "weights/rank    {:.2} {unit} ({storage}, as the checkpoint stores them)",
        plan.weights.total() as f64 / per_unit
    );
    for kind in WeightKind::ALL {
        println!(
            "  {:<26}{:>9.2} {unit}",
            kind.label(),
            plan.weights.get(kind) as f64 / per_unit
        );
    }
    println!(
        "workspace       {:.2} GiB reserved ({} GiB CUDA context and libraries + {} tokens x {:.2} \
         MiB of activations)",
        gib(plan.workspace_bytes),
        gib(memory_plan::CONTEXT_RESERVE_BYTES),
        memory_plan::MAX_FORWARD_TOKENS,
        memory_plan::activation_bytes_per_token(cfg) as f64 / (1 << 20) as f64
    );
    println!(
        "KV entry        {} bytes/token BF16 ({} layers, MTP included)",
        plan.kv_bytes_per_token,
        cfg.num_layers_total()
    );
    match plan.fit() {
        Some(fit) => println!("{fit}"),
        None => println!(
            "KV budget       needs --gpu-memory GiB (one GPU's memory): weights and workspace \
             take {:.2} GiB per rank",
            gib(plan.weights.total() + plan.workspace_bytes)
        ),
    }
}

fn ranks(n: usize) -> String {
    if n == 1 {
        "1 rank".into()
    } else {
        format!("{n} ranks")
    }
}

/// The text form of `info`'s all-to-all traffic (on paper).
fn print_all_to_all(a: &AllToAll) {
    println!(
        "all-to-all      per rank per decode step, {} tokens per rank, {} MoE layers: dispatch \
         {} B FP8 rows, combine {} B BF16 rows, one per (token, remote rank)",
        a.batch_per_rank, a.moe_layers, a.dispatch_row_bytes, a.combine_row_bytes
    );
    let cases = [
        ("worst", a.worst_remote_ranks as f64, a.worst_bytes()),
        ("expected", a.expected_remote_ranks, a.expected_bytes()),
    ];
    for (name, ranks, bytes) in cases {
        println!(
            "  {name:<9}{ranks:>5.2} remote ranks/token {:>9.1} MB: {:>8.1} us over {}, {:>8.1} us \
             over {} (on paper, not measured)",
            bytes / 1e6,
            memory_plan::micros(bytes, memory_plan::NVLINK),
            memory_plan::NVLINK.name,
            memory_plan::micros(bytes, memory_plan::INFINIBAND),
            memory_plan::INFINIBAND.name
        );
    }
}

fn bench(
    m: &ModelArgs,
    prompt_len: usize,
    batch: usize,
    steps: usize,
    as_json: bool,
) -> Result<()> {
    if prompt_len == 0 || batch == 0 || steps == 0 {
        return Err(ModelError::request(
            "--prompt-len, --batch and --steps must be >= 1",
        ));
    }
    set_threads(m.threads)?;
    let loaded = load_model(m, false)?;
    let vocab = loaded.model.config().vocab_size as u64;
    let blocks = m
        .kv_blocks
        .unwrap_or_else(|| batch * KvCacheAllocator::blocks_for(prompt_len + steps + 1));
    let (mut engine, _) = loaded.into_runner(blocks)?;
    let requests: Vec<Request> = (0..batch as u64)
        .map(|b| Request {
            prompt: (0..prompt_len as u64)
                .map(|i| (kernels::rng::splitmix64(b * 1_000_003 + i) % vocab) as u32)
                .collect(),
            max_new_tokens: steps + 1,
            sampling: SamplingParams::GREEDY,
            seed: b,
            stop_ids: Vec::new(),
        })
        .collect();
    engine.generate(&requests, |_, _| {})?;
    let st = engine.last_stats();
    let prefill = (batch * prompt_len) as f64 / st.prefill_s;
    let decode = st.decode_tokens_per_s(batch);
    let value = json!({
        "backend": engine.describe(),
        "prompt_len": prompt_len,
        "batch": batch,
        "decode_steps": steps,
        "prefill_tokens_per_s": prefill,
        "decode_tokens_per_s": decode,
        "prefill_s": st.prefill_s,
        "decode_s": st.decode_s,
    });
    if as_json {
        println!("{value}");
    } else {
        println!(
            "{}: prefill {prompt_len} x {batch}: {prefill:.1} tokens/s; decode {steps} steps x \
             {batch}: {decode:.1} tokens/s",
            engine.describe()
        );
    }
    Ok(())
}
