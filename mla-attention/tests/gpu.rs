//! The MLA decode kernel against `reference::paged_decode` on the GPU, proptest choosing the
//! batch, ragged lengths (1, 63, 64, 65, block multiples and tails, a few thousand), S_q 1..=4,
//! H in {16, 64, 128} (and odd small H), the schedule's number of parts (one part = no split, many
//! parts = many splits per sequence), shared prefix blocks, non-contiguous block tables; outputs
//! poisoned before every launch. Criteria: `mla_attention::checks`. The naive cuBLAS peer
//! (`mla_attention::peer`, the bench's comparison point) is held to the same thresholds on ragged
//! lengths and S_q 1..=4. The FP8-cache kernel is held to the reference over the dequantized
//! entries on the same kind of cases, and prefill chunks (S_q up to 64) run through the same
//! kernel. Without a CUDA device (or the `cuda` feature) each test prints
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

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(24)
        }
    }

    fn len_strategy(s_q: usize) -> impl Strategy<Value = usize> {
        prop_oneof![
            prop::sample::select(vec![1usize, 2, 3, 4, 63, 64, 65, 127, 128, 129, 191, 4096]),
            1usize..=300,
            1usize..=3000,
        ]
        .prop_map(move |l| l.max(s_q))
    }

    fn lens_strategy(s_q: usize) -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(len_strategy(s_q), 1..=9)
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decode_matches_reference(
            (s_q, seqlens) in (1usize..=4).prop_flat_map(|s| (Just(s), lens_strategy(s))),
            heads in prop::sample::select(vec![16usize, 16, 64, 128, 128, 4, 48]),
            parts in prop_oneof![Just(None), (1usize..=200).prop_map(Some)],
            shared_prefix: bool,
        ) {
            let Some(g) = gpu("mla_decode decode_matches_reference") else { return Ok(()) };
            let c = DecodeCheck { seqlens, s_q, heads, parts, shared_prefix };
            assert_pass(checks::check_decode(g, &mut Rng::fresh(), &c));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..config() })]

        #[test]
        fn fp8_cache_decode_matches_reference(
            (s_q, seqlens) in (1usize..=4).prop_flat_map(|s| (Just(s), lens_strategy(s))),
            heads in prop::sample::select(vec![16usize, 64, 128]),
            parts in prop_oneof![Just(None), (1usize..=200).prop_map(Some)],
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
        run(case(vec![64], 64, 16, None));
        run(case(vec![64, 65, 130, 1000], 64, 16, None));
        run(case(vec![5, 700], 5, 128, Some(1)));
        run(case(vec![37, 2100, 37], 37, 128, None));
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

    #[test]
    fn block_boundaries_every_s_q() {
        if gpu("mla_decode block_boundaries_every_s_q").is_none() {
            return;
        }
        for s_q in 1..=4 {
            for heads in [16, 128] {
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

    #[test]
    fn long_contexts_split_and_combined() {
        if gpu("mla_decode long_contexts_split_and_combined").is_none() {
            return;
        }
        run(case(vec![4096], 1, 128, None));
        run(case(vec![4000, 1, 2500], 2, 128, None));
        run(case(vec![8191], 4, 16, Some(132)));
        run(case(vec![3000; 9], 1, 128, None));
    }

    #[test]
    fn large_batch_ragged() {
        if gpu("mla_decode large_batch_ragged").is_none() {
            return;
        }
        let lens: Vec<usize> = (0..40).map(|i| 1 + (i * 131) % 700).collect();
        run(case(lens.clone(), 1, 128, None));
        run(case(lens.iter().map(|&l| l.max(4)).collect(), 4, 16, None));
    }

    #[test]
    fn shared_prefix_blocks() {
        if gpu("mla_decode shared_prefix_blocks").is_none() {
            return;
        }
        run(DecodeCheck {
            seqlens: vec![64, 100, 300, 1000],
            s_q: 2,
            heads: 128,
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
        #![proptest_config(ProptestConfig { cases: 8, ..config() })]

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
