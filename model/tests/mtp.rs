//! Multi-token prediction and speculative decoding on the CPU backend with the built-in tiny
//! model (one MTP layer): MTP logits of the batched pass equal the token-by-token ones,
//! greedy speculative decoding reproduces plain greedy decoding exactly (whatever the
//! acceptance: none, partial, total), and sampled speculative decoding keeps the plain
//! sampler's distribution.

mod common;

use std::sync::OnceLock;

use common::tiny::{engine, greedy, prompt, tiny_model};
use common::{rel_frobenius, TempDir};
use kernels::reference::sampling::SamplingParams;
use mla_attention::KvCacheAllocator;
use model::checkpoint::write_checkpoint;
use model::cpu::{CpuModel, Precision, SeqChunk};
use model::engine::{CpuBackend, Engine, Generation, LogitRows, Request, StopReason};
use model::speculative::{Drafter, SpecConfig};
use model::tiny::{generate_tensors, tiny_config, TINY_SEED};
use model::Checkpoint;

fn spec(draft_steps: usize, drafter: Drafter) -> SpecConfig {
    SpecConfig {
        draft_steps,
        drafter,
    }
}

/// Exactly enough KV blocks for the requests run one at a time in a batch: speculative
/// decoding must not need more than plain decoding (drafts are capped by what a request can
/// still use, and rejected positions are given back).
fn blocks_for(reqs: &[Request]) -> usize {
    reqs.iter()
        .map(|r| KvCacheAllocator::blocks_for(r.prompt.len() + r.max_new_tokens))
        .sum()
}

fn ids(g: &[Generation]) -> Vec<Vec<u32>> {
    g.iter().map(|g| g.ids.clone()).collect()
}

#[test]
fn mtp_logits_of_the_batched_pass_match_token_by_token() {
    let model = tiny_model(Precision::Exact);
    let (vocab, hidden) = (model.config().vocab_size, model.config().hidden_size);
    let ids = prompt(70, 3); // crosses a 64-token block boundary
    let mut e = Engine::new(CpuBackend::new(tiny_model(Precision::Exact), 4).unwrap()).unwrap();
    let (logits, mtp_logits) = e.logits_with_mtp(&ids).unwrap();
    assert_eq!(logits.len(), ids.len() * vocab);
    assert_eq!(mtp_logits.len(), (ids.len() - 1) * vocab);
    assert_eq!(
        logits,
        e.logits(&ids).unwrap(),
        "the main logits are unchanged"
    );

    // Token by token: main position i, then the MTP entry of position i - 1 (which needs
    // token i), each appended to its own cache.
    let blocks = [0u32, 1];
    let mut cache = model.new_cache(2).unwrap();
    let mut mtp_cache = model.new_mtp_cache(2).unwrap();
    let mut h_prev: Option<Vec<f32>> = None;
    let mut inc = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some(h) = h_prev.take() {
            let chunk = SeqChunk {
                ids: std::slice::from_ref(id),
                start: i - 1,
                blocks: &blocks,
            };
            let out = model
                .mtp_forward(&h, &[chunk], &mut mtp_cache, LogitRows::All)
                .unwrap();
            assert_eq!(out.hidden.len(), hidden);
            inc.extend(out.logits);
        }
        let chunk = SeqChunk {
            ids: std::slice::from_ref(id),
            start: i,
            blocks: &blocks,
        };
        h_prev = Some(model.forward_hidden(&[chunk], &mut cache).unwrap());
    }
    let err = rel_frobenius(&inc, &mtp_logits);
    assert!(err < 1e-5, "relative error {err}");
    for i in [0, 1, 63, 64, 68] {
        let r = rel_frobenius(
            &inc[i * vocab..][..vocab],
            &mtp_logits[i * vocab..][..vocab],
        );
        assert!(r < 1e-5, "row {i}: relative error {r}");
    }
}

#[test]
fn mtp_last_rows_are_the_last_rows_of_all() {
    let model = tiny_model(Precision::Fp8);
    let (vocab, hidden) = (model.config().vocab_size, model.config().hidden_size);
    let (a, b) = (prompt(70, 4), prompt(5, 5));
    let (ta, tb) = ([0u32, 1], [2u32]);
    let seqs = [
        SeqChunk {
            ids: &a,
            start: 0,
            blocks: &ta,
        },
        SeqChunk {
            ids: &b,
            start: 0,
            blocks: &tb,
        },
    ];
    let h = model
        .forward_hidden(&seqs, &mut model.new_cache(3).unwrap())
        .unwrap();
    let run = |rows| {
        let mut mtp_cache = model.new_mtp_cache(3).unwrap();
        model.mtp_forward(&h, &seqs, &mut mtp_cache, rows).unwrap()
    };
    let (all, last) = (run(LogitRows::All), run(LogitRows::Last));
    assert_eq!(all.logits.len(), 75 * vocab);
    assert_eq!(last.logits.len(), 2 * vocab);
    assert_eq!(
        last.hidden, all.hidden,
        "hidden states come back for every token"
    );
    assert_eq!(all.hidden.len(), 75 * hidden);
    assert_eq!(last.logits[..vocab], all.logits[69 * vocab..70 * vocab]);
    assert_eq!(last.logits[vocab..], all.logits[74 * vocab..]);
}

#[test]
fn mtp_logits_of_a_single_token_are_empty() {
    let mut e = engine(Precision::Exact, 1);
    let (logits, mtp) = e.logits_with_mtp(&[7]).unwrap();
    assert_eq!(logits.len(), e.config().vocab_size);
    assert!(mtp.is_empty());
}

#[test]
fn greedy_speculative_matches_plain_generation_exact() {
    let prompts = [prompt(3, 1), prompt(17, 2), prompt(1, 3), prompt(66, 4)];
    let all: Vec<Request> = prompts.iter().map(|p| greedy(p, 9)).collect();
    for batch in [&all[..1], &all[..]] {
        let mut e = engine(Precision::Exact, blocks_for(batch));
        let plain = e.generate(batch, |_, _| {}).unwrap();
        for d in [1, 2] {
            let mut streamed = vec![Vec::new(); batch.len()];
            let (out, stats) = e
                .generate_speculative(batch, &spec(d, Drafter::Mtp), |i, id| streamed[i].push(id))
                .unwrap();
            assert_eq!(out, plain, "batch {}, D = {d}", batch.len());
            assert_eq!(streamed, ids(&plain), "streamed tokens, D = {d}");
            assert!(stats.drafted() > 0);
            assert_eq!(stats.drafted_at.len(), d);
        }
    }
}

#[test]
fn greedy_speculative_matches_plain_generation_fp8() {
    let reqs = [greedy(&prompt(5, 7), 8), greedy(&prompt(12, 8), 6)];
    let mut e = engine(Precision::Fp8, blocks_for(&reqs));
    let plain = e.generate(&reqs, |_, _| {}).unwrap();
    let (out, _) = e
        .generate_speculative(&reqs, &spec(2, Drafter::Mtp), |_, _| {})
        .unwrap();
    assert_eq!(out, plain);
    // Forced acceptance in fp8 as well.
    let (out, stats) = e
        .generate_speculative(&reqs, &spec(2, Drafter::Oracle(ids(&plain))), |_, _| {})
        .unwrap();
    assert_eq!(out, plain);
    assert_eq!(stats.accepted(), stats.drafted());
}

#[test]
fn forced_acceptance_accepts_every_draft_and_keeps_the_output() {
    let reqs: Vec<Request> = [prompt(4, 1), prompt(30, 2), prompt(2, 3), prompt(63, 4)]
        .iter()
        .map(|p| greedy(p, 11))
        .collect();
    let mut e = engine(Precision::Exact, blocks_for(&reqs));
    let plain = e.generate(&reqs, |_, _| {}).unwrap();
    for d in [1, 3] {
        let (out, stats) = e
            .generate_speculative(&reqs, &spec(d, Drafter::Oracle(ids(&plain))), |_, _| {})
            .unwrap();
        assert_eq!(out, plain, "D = {d}");
        assert_eq!(stats.accepted(), stats.drafted(), "D = {d}: {stats:?}");
        assert_eq!(stats.acceptance_rate(), 1.0);
        // 10 tokens after the prefill's first: ceil(10 / (D + 1)) verification steps each.
        let steps = 10usize.div_ceil(d + 1);
        assert_eq!(stats.main_steps, steps, "D = {d}");
        assert_eq!(stats.seq_steps, 4 * steps);
        assert_eq!(stats.emitted, 40);
        assert!((stats.tokens_per_step() - 10.0 / steps as f64).abs() < 1e-12);
    }
}

#[test]
fn partial_acceptance_keeps_the_output() {
    let reqs: Vec<Request> = [prompt(6, 5), prompt(40, 6), prompt(1, 7)]
        .iter()
        .map(|p| greedy(p, 14))
        .collect();
    let mut e = engine(Precision::Exact, blocks_for(&reqs));
    let plain = e.generate(&reqs, |_, _| {}).unwrap();
    // Every third token of the oracle is wrong, each sequence at a different phase, so the
    // sequences of the batch accept different numbers of drafts in the same step.
    let corrupted: Vec<Vec<u32>> = ids(&plain)
        .iter()
        .enumerate()
        .map(|(r, g)| {
            g.iter()
                .enumerate()
                .map(|(j, &t)| if (j + r) % 3 == 0 { (t + 1) % 256 } else { t })
                .collect()
        })
        .collect();
    for d in [1, 2, 4] {
        let (out, stats) = e
            .generate_speculative(
                &reqs,
                &spec(d, Drafter::Oracle(corrupted.clone())),
                |_, _| {},
            )
            .unwrap();
        assert_eq!(out, plain, "D = {d}");
        let rate = stats.acceptance_rate();
        assert!(rate > 0.2 && rate < 0.9, "D = {d}: acceptance {rate}");
    }
}

#[test]
fn stops_match_plain_generation() {
    let p = prompt(9, 9);
    let mut e = engine(Precision::Exact, 16);
    let free = e.generate(&[greedy(&p, 12)], |_, _| {}).unwrap().remove(0);
    // EOS in the middle of a run of accepted drafts: the tokens after it are dropped.
    let mut eos = greedy(&p, 12);
    eos.stop_ids = vec![free.ids[5]];
    let plain = e.generate(std::slice::from_ref(&eos), |_, _| {}).unwrap();
    assert_eq!(plain[0].stop, StopReason::Eos);
    let oracle = Drafter::Oracle(vec![free.ids.clone()]);
    let (out, _) = e
        .generate_speculative(std::slice::from_ref(&eos), &spec(3, oracle), |_, _| {})
        .unwrap();
    assert_eq!(out, plain);
    // max_new_tokens 0 and 1 (no step after the prefill).
    for n in [0, 1] {
        let r = greedy(&p, n);
        let plain = e.generate(std::slice::from_ref(&r), |_, _| {}).unwrap();
        let (out, stats) = e
            .generate_speculative(std::slice::from_ref(&r), &spec(2, Drafter::Mtp), |_, _| {})
            .unwrap();
        assert_eq!(out, plain);
        assert_eq!(stats.main_steps, 0);
    }
}

#[test]
fn context_limit_matches_plain_generation() {
    let limit = tiny_config().max_position_embeddings;
    let reqs = [greedy(&prompt(limit - 6, 2), 30), greedy(&prompt(5, 3), 4)];
    let mut e = engine(Precision::Exact, 2 * KvCacheAllocator::blocks_for(limit));
    let plain = e.generate(&reqs, |_, _| {}).unwrap();
    assert_eq!(plain[0].stop, StopReason::ContextLimit);
    let oracle = Drafter::Oracle(ids(&plain));
    let (out, stats) = e
        .generate_speculative(&reqs, &spec(4, oracle), |_, _| {})
        .unwrap();
    assert_eq!(out, plain);
    assert_eq!(stats.acceptance_rate(), 1.0);
}

#[test]
fn speculative_decoding_reports_bad_settings() {
    let mut e = engine(Precision::Exact, 4);
    let r = greedy(&prompt(3, 1), 4);
    let err = e
        .generate_speculative(std::slice::from_ref(&r), &spec(0, Drafter::Mtp), |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 1"), "{err}");
    let err = e
        .generate_speculative(
            std::slice::from_ref(&r),
            &spec(1, Drafter::Oracle(vec![])),
            |_, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 continuations for 1 requests"), "{err}");
}

// ---- sampled: the distribution is the plain sampler's ------------------------------------

/// A one-layer tiny model (plus its MoE MTP layer) with a 16-token vocabulary: small enough that the empirical
/// distribution of a sampled token has few cells, so a chi-square test has power with a few
/// thousand samples.
fn small_vocab_engine(kv_blocks: usize) -> Engine<CpuBackend> {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = TempDir::new("mtp-small-vocab");
        let mut cfg = tiny_config();
        cfg.vocab_size = 16;
        cfg.num_hidden_layers = 1;
        cfg.bos_token_id = Some(0);
        cfg.eos_token_ids = vec![1];
        cfg.validate().unwrap();
        let tensors = generate_tensors(&cfg, TINY_SEED);
        write_checkpoint(d.path(), &cfg, &tensors, 1).unwrap();
        d
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let model = CpuModel::load(&ckpt, Precision::Exact).unwrap();
    Engine::new(CpuBackend::new(model, kv_blocks).unwrap()).unwrap()
}

/// The chi-square statistic of a two-sample homogeneity test and its degrees of freedom; cells
/// with fewer than 10 pooled counts are merged into one.
fn chi_square_two_sample(a: &[usize], b: &[usize]) -> (f64, usize) {
    let (na, nb) = (
        a.iter().sum::<usize>() as f64,
        b.iter().sum::<usize>() as f64,
    );
    let mut cells: Vec<(f64, f64)> = Vec::new();
    let mut rest = (0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        if x + y >= 10 {
            cells.push((x as f64, y as f64));
        } else {
            rest = (rest.0 + x as f64, rest.1 + y as f64);
        }
    }
    if rest.0 + rest.1 > 0.0 {
        cells.push(rest);
    }
    let n = na + nb;
    let mut stat = 0.0;
    for (x, y) in &cells {
        let pooled = (x + y) / n;
        let (ea, eb) = (pooled * na, pooled * nb);
        stat += (x - ea).powi(2) / ea + (y - eb).powi(2) / eb;
    }
    (stat, cells.len().saturating_sub(1))
}

/// Upper 0.001 quantile of chi-square with `df` degrees of freedom (Wilson-Hilferty, z = 3.0902;
/// within 1% of the exact value for df >= 3).
fn chi_square_critical_001(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.0902;
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// The first K = 4 sampled tokens of one prompt, with and without MTP speculative decoding
/// (D = 2: tokens 1..3 come from verification steps with chained drafts, accepted drafts,
/// residual draws after rejections and bonus tokens), N = 3000 seeds each. For each token
/// position a chi-square homogeneity test over the 16-token vocabulary (df <= 15, critical
/// value 37.7 at p = 0.001; four tests, so a correct implementation fails with probability
/// < 0.4%, and the seeds are fixed, so the outcome is deterministic). Power: two distributions
/// whose probabilities differ by 0.05 on two cells of mass ~0.1 give a noncentrality of about
/// N/2 * 2 * 0.05^2 / 0.1 = 75 and are detected with probability > 0.99; drawing the token
/// after a rejection from `p` instead of `max(0, p - q)` (a classic bug) gives chi-square 79 on
/// token 1 here. Temperature 1.5 and top-p 0.9 exercise the truncated distribution; the
/// acceptance rate (about 0.48) is checked to be neither 0 nor 1 so both branches are taken.
#[test]
fn sampled_speculative_decoding_keeps_the_distribution() {
    const N: usize = 3000;
    const K: usize = 4;
    const BATCH: usize = 500;
    let sampling = SamplingParams {
        temperature: 1.5,
        top_p: 0.9,
    };
    let p = [0u32, 5, 9, 3, 12, 7];
    let mut e = small_vocab_engine(BATCH);
    let vocab = e.config().vocab_size;
    let mut plain = vec![vec![0usize; vocab]; K];
    let mut spec_counts = vec![vec![0usize; vocab]; K];
    let mut drafted = 0;
    let mut accepted = 0;
    for chunk in 0..N / BATCH {
        let reqs: Vec<Request> = (0..BATCH)
            .map(|b| Request {
                prompt: p.to_vec(),
                max_new_tokens: K,
                sampling,
                seed: (chunk * BATCH + b) as u64 * 7919 + 1,
                stop_ids: vec![],
            })
            .collect();
        for g in e.generate(&reqs, |_, _| {}).unwrap() {
            for (k, &t) in g.ids.iter().enumerate() {
                plain[k][t as usize] += 1;
            }
        }
        // Different seeds for the speculative run: the two samples must be independent.
        let reqs: Vec<Request> = reqs
            .into_iter()
            .map(|r| Request {
                seed: r.seed ^ 0xABCD_EF01_2345,
                ..r
            })
            .collect();
        let (out, stats) = e
            .generate_speculative(&reqs, &spec(2, Drafter::Mtp), |_, _| {})
            .unwrap();
        for g in out {
            assert_eq!(g.ids.len(), K);
            for (k, &t) in g.ids.iter().enumerate() {
                spec_counts[k][t as usize] += 1;
            }
        }
        drafted += stats.drafted();
        accepted += stats.accepted();
    }
    let rate = accepted as f64 / drafted as f64;
    assert!(rate > 0.05 && rate < 0.95, "acceptance rate {rate}");
    for k in 0..K {
        let (stat, df) = chi_square_two_sample(&plain[k], &spec_counts[k]);
        let crit = chi_square_critical_001(df);
        eprintln!(
            "token {k}: chi-square {stat:.1} (df {df}, critical {crit:.1}), acceptance {rate:.3}"
        );
        assert!(
            stat < crit,
            "token {k}: chi-square {stat:.1} >= {crit:.1} (df {df}); plain {:?}, speculative {:?}",
            plain[k],
            spec_counts[k]
        );
    }
}

// ---- the command line ----------------------------------------------------------------------

fn dsv3(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsv3"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dsv3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_generate_and_logits_with_mtp() {
    let args = [
        "generate",
        "--ids",
        "1,2,3,4,5",
        "--max-new-tokens",
        "7",
        "--json",
    ];
    let plain = dsv3(&args);
    let mut with_mtp = args.to_vec();
    with_mtp.extend(["--mtp", "--draft-steps", "2"]);
    let spec = dsv3(&with_mtp);
    assert_eq!(spec["ids"], plain["ids"]);
    let mtp = &spec["mtp"];
    assert_eq!(mtp["draft_steps"], 2);
    assert_eq!(
        mtp["acceptance_rate_per_position"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(mtp["main_steps"].as_u64().unwrap() >= 1);
    assert!(mtp["tokens_per_step"].as_f64().unwrap() >= 1.0);
    assert!(plain.get("mtp").is_none());

    let v = dsv3(&["logits", "--ids", "4,8,15,16", "--mtp"]);
    assert_eq!(v["logits"].as_array().unwrap().len(), 4);
    let rows = v["mtp_logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_array().unwrap().len(), tiny_config().vocab_size);
}

#[test]
fn cli_generate_force_accept_accepts_every_draft() {
    let args = [
        "generate",
        "--backend",
        "cpu",
        "--ids",
        "1,2,3,4,5",
        "--max-new-tokens",
        "9",
        "--json",
    ];
    let plain = dsv3(&args);
    for d in ["1", "2"] {
        let mut forced = args.to_vec();
        forced.extend(["--mtp", "--draft-steps", d, "--force-accept"]);
        let v = dsv3(&forced);
        assert_eq!(v["ids"], plain["ids"], "D = {d}");
        let mtp = &v["mtp"];
        assert_eq!(mtp["acceptance_rate"].as_f64(), Some(1.0), "D = {d}: {mtp}");
        assert_eq!(mtp["accepted"], mtp["drafted"], "D = {d}");
        assert!(mtp["drafted"].as_u64().unwrap() >= 1, "D = {d}: {mtp}");
        assert_eq!(mtp["forced_acceptance"], true);
        assert!(mtp["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(mtp["baseline_tokens_per_s"].as_f64().unwrap() > 0.0);
        // 8 tokens after the prefill's first, D + 1 per main-model step.
        let steps = 8u64.div_ceil(d.parse::<u64>().unwrap() + 1);
        assert_eq!(mtp["main_steps"].as_u64(), Some(steps), "D = {d}: {mtp}");
    }

    // Forced acceptance is defined for greedy decoding only.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsv3"))
        .args([
            "generate",
            "--backend",
            "cpu",
            "--ids",
            "1,2,3",
            "--mtp",
            "--force-accept",
            "--temperature",
            "0.7",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--force-accept") && err.contains("sampling"),
        "{err}"
    );
    // And it needs --mtp.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dsv3"))
        .args(["generate", "--ids", "1,2,3", "--force-accept"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
