//! The routing kernels (`cuda/routing.cu`) against `reference::routing` on the GPU, with proptest
//! choosing configs, token counts and adversarial logit styles; fewer cases and tokens in the
//! interpreter build (`kernels::EMULATED`, see `sizes`). Without a CUDA device (or without
//! the `cuda` feature) each test prints `skipped: no CUDA device` and checks nothing.

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_routing_needs_the_cuda_feature() {
    kernels::report_skip(
        "gpu_routing",
        "no CUDA device (built without --features cuda)",
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use kernels::gpu::{assert_pass, test_gpu as gpu};
    use kernels::rng::Rng;
    use moe_dispatch::checks::routing::{self as checks, LogitStyle};
    use moe_dispatch::gpu::routing::GateTile;
    use moe_dispatch::reference::routing::RoutingConfig;
    use proptest::prelude::*;

    use std::ops::Range;

    /// Proptest cases and token ranges: the GPU's, or CPU-sized ones for the interpreter build
    /// (every config, style, hidden size and gate tile still drawn, on fewer tokens).
    struct Sizes {
        cases: u32,
        v3_tokens: Vec<usize>,
        max_tokens: Vec<usize>,
        v2_tokens: Range<usize>,
        random_tokens: Range<usize>,
        gate_tokens: Range<usize>,
        count_tokens: Range<usize>,
        /// Token counts of `gate_then_route` and the tokens of `prefill_gate_shape`.
        gate_route_tokens: Vec<usize>,
        prefill_tokens: usize,
    }

    fn sizes() -> Sizes {
        if kernels::EMULATED {
            Sizes {
                cases: 6,
                v3_tokens: vec![1, 7, 65, 33, 130],
                max_tokens: vec![1, 7, 65],
                v2_tokens: 1..130,
                random_tokens: 1..100,
                gate_tokens: 1..40,
                count_tokens: 1..600,
                gate_route_tokens: vec![1, 7, 65],
                prefill_tokens: 130,
            }
        } else {
            Sizes {
                cases: 16,
                v3_tokens: vec![1, 7, 128, 4096, 33, 1000],
                max_tokens: vec![1, 7, 128, 4096],
                v2_tokens: 1..300,
                random_tokens: 1..200,
                gate_tokens: 1..400,
                count_tokens: 1..5000,
                gate_route_tokens: vec![1, 7, 128],
                prefill_tokens: 4096,
            }
        }
    }

    fn style(i: usize) -> LogitStyle {
        LogitStyle::ALL[i % LogitStyle::ALL.len()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(sizes().cases))]

        #[test]
        fn route_v3(tokens in prop::sample::select(sizes().v3_tokens), s in 0usize..6) {
            let Some(g) = gpu("route_v3") else { return Ok(()) };
            assert_pass(checks::check_route(g, &mut Rng::fresh(), &RoutingConfig::deepseek_v3(), tokens, style(s)));
        }

        #[test]
        fn route_max_shape(tokens in prop::sample::select(sizes().max_tokens), s in 0usize..6) {
            let Some(g) = gpu("route_max_shape") else { return Ok(()) };
            assert_pass(checks::check_route(g, &mut Rng::fresh(), &checks::max_config(), tokens, style(s)));
        }

        #[test]
        fn route_v2_modes(which in 0usize..9, tokens in sizes().v2_tokens, s in 0usize..6) {
            let Some(g) = gpu("route_v2_modes") else { return Ok(()) };
            let cfg = checks::v2_and_odd_configs()[which % 9];
            assert_pass(checks::check_route(g, &mut Rng::fresh(), &cfg, tokens, style(s)));
        }

        #[test]
        fn route_random_configs(seed: u64, tokens in sizes().random_tokens, s in 0usize..6) {
            let Some(g) = gpu("route_random_configs") else { return Ok(()) };
            let cfg = checks::random_config(&mut Rng::new(seed));
            assert_pass(checks::check_route(g, &mut Rng::fresh(), &cfg, tokens, style(s)));
        }

        #[test]
        fn gate_logits(
            tokens in sizes().gate_tokens,
            hidden in prop::sample::select(vec![7168usize, 2048, 100, 8, 3]),
            experts in prop::sample::select(vec![256usize, 160, 72, 1]),
            tile in prop::sample::select(vec![None, Some(GateTile::Large), Some(GateTile::Small)]),
        ) {
            let Some(g) = gpu("gate_logits") else { return Ok(()) };
            assert_pass(checks::check_gate_logits(g, &mut Rng::fresh(), tokens, hidden, experts, tile));
        }

        #[test]
        fn expert_counts(tokens in sizes().count_tokens, k in 1usize..17, experts in prop::sample::select(vec![256usize, 512, 64, 1])) {
            let Some(g) = gpu("expert_counts") else { return Ok(()) };
            assert_pass(checks::check_expert_counts(g, &mut Rng::fresh(), tokens, k, experts));
        }
    }

    #[test]
    fn gate_then_route() {
        let Some(g) = gpu("gate_then_route") else {
            return;
        };
        let rng = &mut Rng::fresh();
        for t in sizes().gate_route_tokens {
            assert_pass(checks::check_gate_then_route(
                g,
                rng,
                &RoutingConfig::deepseek_v3(),
                t,
                7168,
            ));
        }
        assert_pass(checks::check_gate_then_route(
            g,
            rng,
            &RoutingConfig::deepseek_v2(),
            50,
            5120,
        ));
    }

    #[test]
    fn prefill_gate_shape() {
        let Some(g) = gpu("prefill_gate_shape") else {
            return;
        };
        assert_pass(checks::check_gate_logits(
            g,
            &mut Rng::fresh(),
            sizes().prefill_tokens,
            7168,
            256,
            None,
        ));
    }

    #[test]
    fn bad_expert_id_is_reported() {
        let Some(g) = gpu("bad_expert_id_is_reported") else {
            return;
        };
        assert_pass(checks::check_expert_counts_bad_id(g, &mut Rng::fresh()));
    }

    #[test]
    fn all_checks_quick() {
        let Some(g) = gpu("all_checks_quick") else {
            return;
        };
        for r in checks::all_checks(g, true) {
            assert_pass(r);
        }
    }
}
