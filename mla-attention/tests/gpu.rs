//! The MLA decode kernel against `reference::paged_decode` on the GPU, proptest choosing the
//! batch, ragged lengths (1, 63, 64, 65, block multiples and tails, a few thousand), S_q 1..=4,
//! H in {16, 64, 128} (and odd small H), the schedule's number of parts (one part = no split, many
//! parts = many splits per sequence), shared prefix blocks, non-contiguous block tables; outputs
//! poisoned before every launch. Criteria: `mla_attention::checks`. The naive cuBLAS peer
//! (`mla_attention::peer`, the bench's comparison point) is held to the same thresholds on ragged
//! lengths and S_q 1..=4. The FP8-cache kernel is held to the reference over the dequantized
//! entries on the same kind of cases, and prefill chunks (S_q up to 64) run through the same
//! kernel. Cache entries past each length are NaN and unused block-table slots hold huge ids
//! (`checks::poison_unread`). The interpreter build (`kernels::EMULATED`) runs fewer cases, shorter
//! contexts and fewer heads (see `sizes`). Without a CUDA device (or the `cuda` feature) each test prints
//! `skipped: no CUDA device` and checks nothing.

#[cfg(not(feature = "cuda"))]
#[test]
fn mla_gpu_tests_need_the_cuda_feature() {
    kernels::report_skip(
        "mla-attention gpu",
        "no CUDA device (built without --features cuda)",
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use kernels::gpu::{assert_pass, test_gpu as gpu};
    use kernels::rng::Rng;
    use mla_attention::checks::{self, CacheFormat, DecodeCheck};
    use mla_attention::peer;
    use proptest::prelude::*;

    type Case = (Vec<usize>, usize, usize, Option<usize>);

    /// Proptest cases, length / batch / head / part ranges and the fixed cases: the GPU's, or
    /// CPU-sized ones for the interpreter build (lengths still around the 64-token blocks, S_q
    /// 1..=4, prefill chunks, forced and device-chosen splits, but contexts of hundreds of
    /// tokens and mostly 16 heads).
    struct Sizes {
        cases: u32,
        fp8_cases: u32,
        peer_cases: u32,
        len_picks: Vec<usize>,
        /// Upper ends of the two random length ranges.
        len_max: [usize; 2],
        max_seqs: usize,
        heads: Vec<usize>,
        max_parts: usize,
        prefill: Vec<Case>,
        boundary_heads: Vec<usize>,
        long: Vec<Case>,
        /// (sequences, lengths modulo, heads) of `large_batch_ragged`.
        large_batch: (usize, usize, usize),
        shared_prefix: (Vec<usize>, usize),
    }

    fn sizes() -> Sizes {
        if kernels::EMULATED {
            Sizes {
                cases: 6,
                fp8_cases: 4,
                peer_cases: 3,
                len_picks: vec![1, 2, 3, 4, 63, 64, 65, 127, 128, 129, 191, 700],
                len_max: [130, 300],
                max_seqs: 4,
                heads: vec![16, 16, 64, 128, 4, 48],
                max_parts: 40,
                prefill: vec![
                    (vec![64], 64, 16, None),
                    (vec![64, 65, 130, 300], 64, 16, None),
                    (vec![5, 300], 5, 128, Some(1)),
                    (vec![37, 200, 37], 37, 16, None),
                ],
                boundary_heads: vec![16, 48],
                long: vec![
                    (vec![1000], 1, 16, None),
                    (vec![700, 2, 450], 2, 16, Some(8)),
                    (vec![1300], 4, 16, Some(20)),
                    (vec![500; 5], 1, 64, None),
                ],
                large_batch: (12, 300, 16),
                shared_prefix: (vec![64, 100, 300], 16),
            }
        } else {
            Sizes {
                cases: 24,
                fp8_cases: 12,
                peer_cases: 8,
                len_picks: vec![1, 2, 3, 4, 63, 64, 65, 127, 128, 129, 191, 4096],
                len_max: [300, 3000],
                max_seqs: 9,
                heads: vec![16, 16, 64, 128, 128, 4, 48],
                max_parts: 200,
                prefill: vec![
                    (vec![64], 64, 16, None),
                    (vec![64, 65, 130, 1000], 64, 16, None),
                    (vec![5, 700], 5, 128, Some(1)),
                    (vec![37, 2100, 37], 37, 128, None),
                ],
                boundary_heads: vec![16, 128],
                long: vec![
                    (vec![4096], 1, 128, None),
                    (vec![4000, 2, 2500], 2, 128, None),
                    (vec![8191], 4, 16, Some(132)),
                    (vec![3000; 9], 1, 128, None),
                ],
                large_batch: (40, 700, 128),
                shared_prefix: (vec![64, 100, 300, 1000], 128),
            }
        }
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(sizes().cases)
        }
    }

    fn len_strategy(s_q: usize) -> impl Strategy<Value = usize> {
        let s = sizes();
        prop_oneof![
            prop::sample::select(s.len_picks),
            1usize..=s.len_max[0],
            1usize..=s.len_max[1],
        ]
        .prop_map(move |l| l.max(s_q))
    }

    fn lens_strategy(s_q: usize) -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(len_strategy(s_q), 1..=sizes().max_seqs)
    }

    fn parts_strategy() -> impl Strategy<Value = Option<usize>> {
        prop_oneof![Just(None), (1usize..=sizes().max_parts).prop_map(Some)]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decode_matches_reference(
            (s_q, seqlens) in (1usize..=4).prop_flat_map(|s| (Just(s), lens_strategy(s))),
            heads in prop::sample::select(sizes().heads),
            parts in parts_strategy(),
            shared_prefix: bool,
        ) {
            let Some(g) = gpu("mla_decode decode_matches_reference") else { return Ok(()) };
            let c = DecodeCheck { seqlens, s_q, heads, parts, shared_prefix };
            assert_pass(checks::check_decode(g, &mut Rng::fresh(), &c));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: sizes().fp8_cases, ..config() })]

        #[test]
        fn fp8_cache_decode_matches_reference(
            (s_q, seqlens) in (1usize..=4).prop_flat_map(|s| (Just(s), lens_strategy(s))),
            heads in prop::sample::select(vec![16usize, 64, 128]),
            parts in parts_strategy(),
            shared_prefix: bool,
        ) {
            let Some(g) = gpu("mla_decode fp8_cache_decode_matches_reference") else {
                return Ok(())
            };
            let c = DecodeCheck { seqlens, s_q, heads, parts, shared_prefix };
            let report = checks::check_decode_format(g, &mut Rng::fresh(), &c, CacheFormat::Fp8);
            assert_pass(report);
        }
    }

    #[test]
    fn prefill_chunks() {
        if gpu("mla_decode prefill_chunks").is_none() {
            return;
        }
        // S_q past 4: the query rows of one sequence span several 64-row tiles, and the causal
        // limits fall inside and across KV blocks.
        for (seqlens, s_q, heads, parts) in sizes().prefill {
            run(case(seqlens, s_q, heads, parts));
        }
    }

    fn run(c: DecodeCheck) {
        assert_pass(checks::check_decode(
            gpu("mla_decode").expect("checked"),
            &mut Rng::fresh(),
            &c,
        ));
    }

    fn case(seqlens: Vec<usize>, s_q: usize, heads: usize, parts: Option<usize>) -> DecodeCheck {
        DecodeCheck {
            seqlens,
            s_q,
            heads,
            parts,
            shared_prefix: false,
        }
    }

    /// The FP8-cache kernel on the fixed shapes the BF16 one runs: block-boundary lengths for
    /// every S_q in 1..=4 without and with a forced split, a prefill chunk, forced many-way splits
    /// (combine) and a shared prefix.
    #[test]
    fn fp8_cache_fixed_shapes() {
        let Some(g) = gpu("mla_decode fp8_cache_fixed_shapes") else {
            return;
        };
        let mut cases = Vec::new();
        for s_q in 1..=4 {
            for parts in [None, Some(1), Some(7)] {
                cases.push(case(vec![s_q, 63, 64, 65, 128, 129], s_q, 16, parts));
            }
        }
        cases.extend(
            sizes()
                .prefill
                .into_iter()
                .take(2)
                .map(|(l, s_q, h, p)| case(l, s_q, h, p)),
        );
        let (seqlens, heads) = sizes().shared_prefix;
        cases.push(DecodeCheck {
            seqlens,
            s_q: 2,
            heads,
            parts: Some(9),
            shared_prefix: true,
        });
        for c in &cases {
            let report = checks::check_decode_format(g, &mut Rng::fresh(), c, CacheFormat::Fp8);
            assert_pass(report);
        }
    }

    #[test]
    fn block_boundaries_every_s_q() {
        if gpu("mla_decode block_boundaries_every_s_q").is_none() {
            return;
        }
        for s_q in 1..=4 {
            for heads in sizes().boundary_heads {
                run(case(
                    vec![s_q.max(1), 63, 64, 65, 128, 129],
                    s_q,
                    heads,
                    None,
                ));
                run(case(
                    vec![s_q.max(1), 63, 64, 65, 128, 129],
                    s_q,
                    heads,
                    Some(1),
                ));
            }
        }
    }

    // A sequence as short as S_q (2 below) is the shortest legal one: the kernel's contract
    // refuses cache_seqlens < S_q with an out-of-range status, so the case with a length of 1 at
    // S_q = 2 that stood here tested bad input in a good-input test (the interpreter build found
    // it: the status check failed).
    #[test]
    fn long_contexts_split_and_combined() {
        if gpu("mla_decode long_contexts_split_and_combined").is_none() {
            return;
        }
        for (seqlens, s_q, heads, parts) in sizes().long {
            run(case(seqlens, s_q, heads, parts));
        }
    }

    #[test]
    fn large_batch_ragged() {
        if gpu("mla_decode large_batch_ragged").is_none() {
            return;
        }
        let (seqs, modulo, heads) = sizes().large_batch;
        let lens: Vec<usize> = (0..seqs).map(|i| 1 + (i * 131) % modulo).collect();
        run(case(lens.clone(), 1, heads, None));
        run(case(lens.iter().map(|&l| l.max(4)).collect(), 4, 16, None));
    }

    #[test]
    fn shared_prefix_blocks() {
        if gpu("mla_decode shared_prefix_blocks").is_none() {
            return;
        }
        let (seqlens, heads) = sizes().shared_prefix;
        run(DecodeCheck {
            seqlens,
            s_q: 2,
            heads,
            parts: None,
            shared_prefix: true,
        });
    }

    #[test]
    fn bad_inputs() {
        let Some(g) = gpu("mla_decode bad_inputs") else {
            return;
        };
        assert_pass(checks::check_bad_inputs(g, &mut Rng::fresh()));
    }

    /// The naive peer (gather + cuBLAS GEMMs + softmax) on the fixed shapes: ragged lengths
    /// around block boundaries, S_q = 2 and 4, a shared prefix, one long context.
    #[test]
    #[cfg_attr(
        feature = "emulate",
        ignore = "cuBLAS is not available on the emulated device"
    )]
    fn naive_cublas_peer_matches_reference() {
        let Some(g) = gpu("mla_decode naive_cublas_peer_matches_reference") else {
            return;
        };
        let mut rng = Rng::fresh();
        for c in peer::peer_check_cases() {
            assert_pass(peer::check_peer(g, &mut rng, &c));
        }
        assert_pass(peer::check_peer_rejects_bad_shapes(g, &mut rng));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: sizes().peer_cases, ..config() })]

        #[test]
        #[cfg_attr(feature = "emulate", ignore = "cuBLAS is not available on the emulated device")]
        fn naive_cublas_peer_ragged(
            (s_q, seqlens) in (1usize..=4).prop_flat_map(|s| (Just(s), lens_strategy(s))),
            heads in prop::sample::select(vec![16usize, 64, 128, 4]),
            shared_prefix: bool,
        ) {
            let Some(g) = gpu("mla_decode naive_cublas_peer_ragged") else { return Ok(()) };
            let c = peer::PeerCheck { seqlens, s_q, heads, shared_prefix };
            assert_pass(peer::check_peer(g, &mut Rng::fresh(), &c));
        }
    }
}
