//! The CPU backend and the generation engine on the built-in tiny model: the KV cache gives the
//! same logits as a full recomputation, batching does not change results, fp8 tracks exact, and
//! every bad request gets an error that names what is wrong; the backends' `forward_and_sample`
//! hook chooses the tokens host sampling of the logits chose before it existed.

mod common;

use common::tiny::{engine, greedy, prompt, tiny_model};
use common::{argmax, cosine, rel_frobenius};
use kernels::reference::sampling::{sample_row, SamplingParams};
use kernels::rng::sampling_uniform;
use model::cpu::{Precision, SeqChunk};
use model::engine::{Backend, CpuBackend, LogitRows, Request, StopReason, TokenDraw};
use model::ModelError;

#[test]
fn cached_decode_matches_full_recomputation() {
    let mut e = engine(Precision::Exact, 16);
    let p = prompt(70, 1); // crosses a 64-token block boundary
    let gen = e.generate(&[greedy(&p, 6)], |_, _| {}).unwrap().remove(0);
    assert_eq!(gen.ids.len(), 6);
    // Logits of the whole sequence from scratch: position p's row must pick the same token the
    // cached decode picked, and the last row must match to f32 rounding.
    let mut all = p.clone();
    all.extend(&gen.ids[..5]);
    let logits = e.logits(&all).unwrap();
    let vocab = e.config().vocab_size;
    for (j, &id) in gen.ids.iter().enumerate() {
        let row = &logits[(p.len() - 1 + j) * vocab..][..vocab];
        assert_eq!(argmax(row), id as usize, "generated token {j}");
    }
}

#[test]
fn batching_does_not_change_greedy_results() {
    let mut e = engine(Precision::Exact, 32);
    let prompts = [prompt(3, 1), prompt(17, 2), prompt(1, 3), prompt(66, 4)];
    let reqs: Vec<Request> = prompts.iter().map(|p| greedy(p, 5)).collect();
    let mut streamed = vec![Vec::new(); reqs.len()];
    let batched = e.generate(&reqs, |i, id| streamed[i].push(id)).unwrap();
    for (i, r) in reqs.iter().enumerate() {
        let alone = e.generate(std::slice::from_ref(r), |_, _| {}).unwrap();
        assert_eq!(batched[i].ids, alone[0].ids, "request {i}");
        assert_eq!(
            streamed[i], batched[i].ids,
            "streamed tokens of request {i}"
        );
        assert_eq!(batched[i].stop, StopReason::MaxTokens);
    }
}

/// fp8 against exact on the random tiny model. Its router picks among near-equal scores (gaps of
/// 0.002 between the 4th and 5th expert occur), so the few-percent error of e4m3 activations
/// flips some expert choices and whole rows diverge; the bound is therefore on the typical row.
/// The tight fp8 check (cosine >= 0.99) is against the better-conditioned golden fixtures.
#[test]
fn fp8_tracks_exact() {
    let mut exact = engine(Precision::Exact, 8);
    let mut fp8 = engine(Precision::Fp8, 8);
    let p = prompt(40, 7);
    let a = exact.logits(&p).unwrap();
    let b = fp8.logits(&p).unwrap();
    let vocab = exact.config().vocab_size;
    let mut cos: Vec<f64> = a
        .chunks_exact(vocab)
        .zip(b.chunks_exact(vocab))
        .map(|(ra, rb)| cosine(rb, ra))
        .collect();
    cos.sort_by(f64::total_cmp);
    let median = cos[cos.len() / 2];
    assert!(median >= 0.98, "median cosine {median}, all {cos:?}");
    assert!(cos[0] > 0.5, "worst cosine {}", cos[0]);
    assert!(rel_frobenius(&b, &a) < 0.5);
}

#[test]
fn sampling_is_seeded_and_stops_on_eos() {
    let mut e = engine(Precision::Exact, 8);
    let sampled = |seed| Request {
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
        },
        seed,
        ..greedy(&prompt(5, 9), 12)
    };
    let a = e.generate(&[sampled(1)], |_, _| {}).unwrap();
    let b = e.generate(&[sampled(1)], |_, _| {}).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    let c = e.generate(&[sampled(2), sampled(3)], |_, _| {}).unwrap();
    assert!(c[0].ids != a[0].ids || c[1].ids != a[0].ids);

    // Make the first greedy token the stop id: generation ends after it.
    let first = e.generate(&[greedy(&prompt(5, 9), 1)], |_, _| {}).unwrap()[0].ids[0];
    let stop = Request {
        stop_ids: vec![first],
        ..greedy(&prompt(5, 9), 10)
    };
    let out = e.generate(&[stop], |_, _| {}).unwrap().remove(0);
    assert_eq!(out.ids, vec![first]);
    assert_eq!(out.stop, StopReason::Eos);
}

#[test]
fn bad_requests_name_the_problem() {
    let mut e = engine(Precision::Exact, 2);
    let vocab = e.config().vocab_size as u32;
    let limit = e.config().max_position_embeddings;

    let err = e
        .generate(&[greedy(&[1, vocab + 3], 1)], |_, _| {})
        .unwrap_err();
    assert!(matches!(err, ModelError::Request { .. }));
    assert!(err.to_string().contains(&format!("{}", vocab + 3)), "{err}");

    let err = e.generate(&[greedy(&[], 1)], |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let long = vec![1u32; limit + 1];
    let err = e.generate(&[greedy(&long, 1)], |_, _| {}).unwrap_err();
    assert!(err.to_string().contains(&limit.to_string()), "{err}");

    let bad = Request {
        sampling: SamplingParams {
            temperature: -1.0,
            top_p: 1.0,
        },
        ..greedy(&[1, 2], 1)
    };
    assert!(e
        .generate(&[bad], |_, _| {})
        .unwrap_err()
        .to_string()
        .contains("temperature"));

    // 2 blocks of 64 tokens: a 100-token prompt fits, a second one does not.
    let err = e
        .generate(
            &[greedy(&prompt(100, 1), 1), greedy(&prompt(100, 2), 1)],
            |_, _| {},
        )
        .unwrap_err();
    assert!(matches!(err, ModelError::KvCacheExhausted { .. }), "{err}");
    assert!(err.to_string().contains("KV cache exhausted"));
    // Growing past the cache during decode is the same error, and the blocks come back after.
    let err = e
        .generate(&[greedy(&prompt(127, 1), 5)], |_, _| {})
        .unwrap_err();
    assert!(matches!(err, ModelError::KvCacheExhausted { .. }), "{err}");
    assert_eq!(
        e.generate(&[greedy(&prompt(100, 1), 2)], |_, _| {})
            .unwrap()[0]
            .ids
            .len(),
        2
    );
}

const TOP_P: SamplingParams = SamplingParams {
    temperature: 1.0,
    top_p: 0.9,
};

/// Generation as the engine did it before `forward_and_sample`: one request alone, the
/// backend's last logits rows sampled on the host with `sampling_uniform(seed, token index, 0)`.
fn generate_with_host_logits(r: &Request, kv_blocks: usize) -> Vec<u32> {
    let mut backend = CpuBackend::new(tiny_model(Precision::Exact), kv_blocks).unwrap();
    let blocks: Vec<u32> = (0..kv_blocks as u32).collect();
    let (mut ids, mut start, mut next) = (Vec::new(), 0, r.prompt.clone());
    while ids.len() < r.max_new_tokens {
        let chunk = SeqChunk {
            ids: &next,
            start,
            blocks: &blocks,
        };
        let logits = backend.forward(&[chunk], LogitRows::Last).unwrap();
        let u = sampling_uniform(r.seed, ids.len() as u64, 0);
        let id = sample_row(&logits, r.sampling, u) as u32;
        start += next.len();
        next = vec![id];
        ids.push(id);
    }
    ids
}

#[test]
fn generate_keeps_each_requests_token_stream() {
    let reqs = [
        greedy(&prompt(9, 4), 7),
        Request {
            sampling: TOP_P,
            seed: 42,
            ..greedy(&prompt(20, 5), 7)
        },
        Request {
            sampling: SamplingParams {
                temperature: 0.6,
                top_p: 1.0,
            },
            seed: 7,
            ..greedy(&prompt(3, 6), 7)
        },
    ];
    let mut e = engine(Precision::Exact, 8);
    for (i, r) in reqs.iter().enumerate() {
        let got = e.generate(std::slice::from_ref(r), |_, _| {}).unwrap();
        let want = generate_with_host_logits(r, 8);
        assert_eq!(got[0].ids, want, "request {i} ({:?})", r.sampling);
    }
}

#[test]
fn default_forward_and_sample_samples_the_last_rows_on_the_host() {
    let mut backend = CpuBackend::new(tiny_model(Precision::Exact), 4).unwrap();
    let vocab = backend.config().vocab_size;
    let prompts = [prompt(5, 1), prompt(30, 2), prompt(1, 3)];
    let tables: [Vec<u32>; 3] = [vec![2], vec![0], vec![3]];
    let seqs: Vec<SeqChunk> = prompts
        .iter()
        .zip(&tables)
        .map(|(ids, blocks)| SeqChunk {
            ids,
            start: 0,
            blocks,
        })
        .collect();
    let logits = backend.forward(&seqs, LogitRows::Last).unwrap();
    let request = |sampling, seed| Request {
        sampling,
        seed,
        ..greedy(&[1], 1)
    };
    let reqs = [
        request(SamplingParams::GREEDY, 0),
        request(TOP_P, 11),
        request(TOP_P, 12),
    ];
    for step in [0usize, 5] {
        let draws: Vec<TokenDraw> = reqs.iter().map(|r| TokenDraw::for_token(r, step)).collect();
        // The same cache slots are rewritten with the same values: the logits do not change.
        let got = backend.forward_and_sample(&seqs, &draws).unwrap();
        let want: Vec<u32> = logits
            .chunks_exact(vocab)
            .zip(&reqs)
            .map(|(row, r)| {
                let u = sampling_uniform(r.seed, step as u64, 0);
                sample_row(row, r.sampling, u) as u32
            })
            .collect();
        assert_eq!(got, want, "token index {step}");
    }
}

#[test]
fn bad_token_draws_name_the_problem() {
    let mut backend = CpuBackend::new(tiny_model(Precision::Exact), 1).unwrap();
    let ids = prompt(4, 1);
    let seqs = [SeqChunk {
        ids: &ids,
        start: 0,
        blocks: &[0],
    }];
    let draw = TokenDraw {
        params: SamplingParams::GREEDY,
        uniform: 0.5,
    };
    let err = backend
        .forward_and_sample(&seqs, &[draw, draw])
        .unwrap_err();
    assert!(
        err.to_string().contains("2 token draws for 1 sequences"),
        "{err}"
    );
    let out_of_range = TokenDraw {
        uniform: 1.0,
        ..draw
    };
    let err = backend
        .forward_and_sample(&seqs, &[out_of_range])
        .unwrap_err();
    assert!(
        err.to_string().contains("uniform must be in [0, 1)"),
        "{err}"
    );
    let bad_top_p = TokenDraw {
        params: SamplingParams {
            temperature: 1.0,
            top_p: 0.0,
        },
        ..draw
    };
    let err = backend.forward_and_sample(&seqs, &[bad_top_p]).unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
}

/// The MHA form of prefill (sequences with at least `MHA_MIN_NEW_TOKENS` new tokens, exact
/// precision) computes what the absorbed form does, to f32 rounding: in a batch that mixes the
/// two forms, and in a chunked prefill whose second chunk attends over the first's cache.
#[test]
fn mha_prefill_matches_the_absorbed_form() {
    use model::cpu::mha::MHA_MIN_NEW_TOKENS;

    let mut absorbed = tiny_model(Precision::Exact);
    absorbed.set_mha_min_new_tokens(usize::MAX);
    let mha = tiny_model(Precision::Exact);
    let long = prompt(MHA_MIN_NEW_TOKENS + 37, 3);
    let short = prompt(9, 4);
    let check = |what: &str, got: &[f32], want: &[f32]| {
        let rel = rel_frobenius(got, want);
        assert!(rel < 1e-5, "{what}: relative error {rel:e}");
    };

    // One long prompt (MHA) and one short one (absorbed) in the same call.
    let run = |m: &model::cpu::CpuModel| {
        let mut cache = m.new_cache(8).unwrap();
        let seqs = [
            SeqChunk {
                ids: &long,
                start: 0,
                blocks: &[0, 1],
            },
            SeqChunk {
                ids: &short,
                start: 0,
                blocks: &[2],
            },
        ];
        m.forward_hidden(&seqs, &mut cache).unwrap()
    };
    check("mixed batch", &run(&mha), &run(&absorbed));

    // Chunked prefill: 100 tokens, then 80 more over the first chunk's cache.
    let chunks = prompt(180, 5);
    let chunked = |m: &model::cpu::CpuModel| {
        let mut cache = m.new_cache(4).unwrap();
        let blocks = [3, 0, 2];
        let first = SeqChunk {
            ids: &chunks[..100],
            start: 0,
            blocks: &blocks,
        };
        let second = SeqChunk {
            ids: &chunks[100..],
            start: 100,
            blocks: &blocks,
        };
        let mut h = m.forward_hidden(&[first], &mut cache).unwrap();
        h.extend(m.forward_hidden(&[second], &mut cache).unwrap());
        h
    };
    let (got, want) = (chunked(&mha), chunked(&absorbed));
    check("chunked prefill", &got, &want);

    // fp8 precision mirrors the CUDA backend's absorbed form whatever the threshold.
    let mut fp8_absorbed = tiny_model(Precision::Fp8);
    fp8_absorbed.set_mha_min_new_tokens(usize::MAX);
    let fp8 = tiny_model(Precision::Fp8);
    assert_eq!(run(&fp8), run(&fp8_absorbed));
}
