//! Distributed inference on the CPU backend: in-process worlds of 1, 2, 4 and 8 ranks must give
//! the same logits and token ids bit for bit (data-parallel attention, expert-parallel MoE),
//! agree with the single-process backend to rounding, and fail with errors naming the rank.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::tiny::{engine, prompt, tiny_dir};
use common::{cosine, rel_frobenius};
use kernels::reference::sampling::SamplingParams;
use model::cpu::Precision;
use model::dist::{CpuWorld, WorldOptions};
use model::engine::{Generation, Request};
use model::speculative::{Drafter, SpecConfig};
use model::{Checkpoint, ModelError};

const WORLDS: [usize; 4] = [1, 2, 4, 8];

fn golden_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn world(dir: &Path, n: usize, precision: Precision, kv_blocks: usize) -> CpuWorld {
    let ckpt = Checkpoint::open(dir).unwrap();
    CpuWorld::load(&ckpt, &WorldOptions::new(n, precision, kv_blocks)).unwrap()
}

/// Requests of different lengths (more than the largest world has ranks, so every rank gets
/// several and some get more than others), greedy and seeded temperature / top-p sampling.
fn requests(vocab: u32) -> Vec<Request> {
    (0..11u32)
        .map(|i| Request {
            prompt: prompt(3 + (i as usize * 7) % 19, i)
                .into_iter()
                .map(|t| t % vocab)
                .collect(),
            max_new_tokens: 4 + (i as usize % 5),
            sampling: if i % 3 == 0 {
                SamplingParams::GREEDY
            } else {
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                }
            },
            seed: 1000 + u64::from(i),
            stop_ids: vec![],
        })
        .collect()
}

fn ids(gens: &[Generation]) -> Vec<Vec<u32>> {
    gens.iter().map(|g| g.ids.clone()).collect()
}

/// Every world size gives the same logits of a batch of prompts spread over the ranks and the
/// same generations of a mixed batch, bit for bit.
fn worlds_agree(dir: &Path, precision: Precision) {
    let ckpt = Checkpoint::open(dir).unwrap();
    let vocab = ckpt.config().vocab_size as u32;
    let reqs = requests(vocab);
    let mut first: Option<(Vec<f32>, Vec<Vec<u32>>)> = None;
    for n in WORLDS {
        let mut w = world(dir, n, precision, 64);
        // Every position of every prompt, each rank one forward call over its own prompts, so
        // the rows each linear layer multiplies differ with the world size.
        let prompts: Vec<Vec<u32>> = reqs.iter().map(|r| r.prompt.clone()).collect();
        let logits: Vec<f32> = w.logits_batch(&prompts).unwrap().concat();
        let mut streamed = vec![Vec::new(); reqs.len()];
        let gens = w.generate(&reqs, |i, id| streamed[i].push(id)).unwrap();
        assert_eq!(streamed, ids(&gens), "world {n}: streamed tokens");
        assert!(gens.iter().all(|g| !g.ids.is_empty()));
        match &first {
            None => first = Some((logits, ids(&gens))),
            Some((l1, g1)) => {
                let same = l1
                    .iter()
                    .zip(&logits)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{precision:?}: world {n} logits differ from world 1");
                assert_eq!(
                    g1,
                    &ids(&gens),
                    "{precision:?}: world {n} generations differ"
                );
            }
        }
    }
}

#[test]
fn builtin_model_worlds_agree_bit_for_bit_in_both_precisions() {
    for precision in [Precision::Exact, Precision::Fp8] {
        worlds_agree(tiny_dir().path(), precision);
    }
}

#[test]
fn hf_golden_checkpoint_worlds_agree_bit_for_bit() {
    // A DeepSeek-V3-style checkpoint saved by transformers (FP8 experts, MTP layer).
    for precision in [Precision::Exact, Precision::Fp8] {
        worlds_agree(&golden_dir("hf-v3-tiny"), precision);
    }
}

/// The world computes what one process computes: the same products, only each linear layer's
/// summation order is fixed per row, so exact precision agrees to f32 rounding and fp8 to the
/// FP8 re-quantization that rounding can flip.
#[test]
fn a_world_matches_the_single_process_backend() {
    let probe = prompt(29, 4);
    for (precision, bound) in [(Precision::Exact, 1e-5), (Precision::Fp8, 2e-2)] {
        let want = engine(precision, 16).logits(&probe).unwrap();
        let got = world(tiny_dir().path(), 4, precision, 16)
            .logits(&probe)
            .unwrap();
        let rel = rel_frobenius(&got, &want);
        assert!(rel < bound, "{precision:?}: relative error {rel}");
        assert!(cosine(&got, &want) > 0.999, "{precision:?}");
    }
}

#[test]
fn speculative_decoding_agrees_across_worlds() {
    let reqs: Vec<Request> = requests(256)
        .into_iter()
        .take(6)
        .map(|mut r| {
            r.max_new_tokens = 7;
            r
        })
        .collect();
    let spec = SpecConfig {
        draft_steps: 2,
        drafter: Drafter::Mtp,
    };
    let mut first = None;
    for n in WORLDS {
        let mut w = world(tiny_dir().path(), n, Precision::Exact, 64);
        let (gens, stats) = w.generate_speculative(&reqs, &spec, |_, _| {}).unwrap();
        assert!(stats.seq_steps > 0);
        // Greedy requests give exactly the plain greedy ids (speculative decoding's contract).
        let plain = w.generate(&reqs, |_, _| {}).unwrap();
        for (i, r) in reqs.iter().enumerate() {
            if r.sampling == SamplingParams::GREEDY {
                assert_eq!(gens[i].ids, plain[i].ids, "world {n}, request {i}");
            }
        }
        match &first {
            None => first = Some(ids(&gens)),
            Some(g1) => assert_eq!(g1, &ids(&gens), "world {n}"),
        }
    }
}

#[test]
fn uneven_expert_counts_are_refused_with_the_reason() {
    let ckpt = Checkpoint::open(tiny_dir().path()).unwrap();
    let err = CpuWorld::load(&ckpt, &WorldOptions::new(3, Precision::Exact, 4))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a world of 3 ranks cannot hold") && err.contains("16 experts"),
        "{err}"
    );
}

#[test]
fn kv_exhausted_on_one_rank_names_that_rank() {
    // Rank 1 gets request 1, whose prompt needs more blocks than a rank holds; rank 0's request
    // fits. The world stops with rank 1's own error, not with rank 0's "rank 1 left".
    let mut w = world(tiny_dir().path(), 2, Precision::Exact, 2);
    let reqs = vec![
        common::tiny::greedy(&prompt(10, 1), 3),
        common::tiny::greedy(&prompt(200, 2), 3),
    ];
    let err = w.generate(&reqs, |_, _| {}).unwrap_err();
    assert!(
        matches!(
            &err,
            ModelError::OnRank { rank: 1, source } if matches!(**source, ModelError::KvCacheExhausted { .. })
        ),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("rank 1: KV cache exhausted"),
        "{err}"
    );
    // The world is usable again afterwards (fresh transports every call).
    let gens = w.generate(&reqs[..1], |_, _| {}).unwrap();
    assert_eq!(gens[0].ids.len(), 3);
}

#[test]
fn bad_requests_are_named_before_any_rank_starts() {
    let mut w = world(tiny_dir().path(), 2, Precision::Exact, 8);
    let mut reqs = vec![common::tiny::greedy(&prompt(4, 1), 2); 3];
    reqs[2].prompt[1] = 100_000;
    let err = w.generate(&reqs, |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("request 2") && err.contains("100000"), "{err}");
}

#[test]
fn a_stalled_peer_times_out_naming_it() {
    // A world whose collectives wait 200 ms: rank 0 runs a sequence while rank 1 never joins
    // (its transport is connected but nobody drives it), so rank 0 must fail naming rank 1.
    use model::dist::RankComm;
    use moe_dispatch::ep::{ExpertPlacement, InProcess};
    let placement = ExpertPlacement::new(16, 2).unwrap();
    let mut t = InProcess::world_with_timeout(2, Duration::from_millis(200)).unwrap();
    let _idle = t.pop().unwrap();
    let comm = RankComm::new(0, placement);
    comm.connect(Box::new(t.pop().unwrap())).unwrap();
    let err = comm.announce(1).unwrap_err();
    assert!(err.is_collective());
    let msg = err.to_string();
    assert!(
        msg.contains("rank 0") && msg.contains("for rank 1"),
        "{msg}"
    );
}
