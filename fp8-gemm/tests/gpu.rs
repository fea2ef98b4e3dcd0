//! The FP8 GEMM kernels against the exact f64 product on the GPU, proptest choosing shapes and
//! groups (M tails around the tile sizes, N multiples of 16 that are not multiples of 64 or 128,
//! empty groups, all rows in one group). Criteria: `fp8_gemm::checks`. Without a CUDA device (or
//! the `cuda` feature) each test prints `skipped: no CUDA device` and checks nothing.

#[cfg(not(feature = "cuda"))]
#[test]
fn fp8_gemm_gpu_tests_need_the_cuda_feature() {
    kernels::report_skip(
        "fp8-gemm gpu",
        "no CUDA device (built without --features cuda)",
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use fp8_gemm::checks;
    use fp8_gemm::inputs::Draw;
    use kernels::gpu::{assert_pass, test_gpu as gpu};
    use kernels::rng::Rng;
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(16)
        }
    }

    fn m_strategy() -> impl Strategy<Value = usize> {
        prop_oneof![
            prop::sample::select(vec![1usize, 63, 64, 65, 127, 128, 129, 4096]),
            1usize..=4096,
        ]
    }

    fn n_strategy() -> impl Strategy<Value = usize> {
        prop_oneof![
            prop::sample::select(vec![16usize, 48, 2112, 4096, 7168]),
            (1usize..=512).prop_map(|v| v * 16),
        ]
    }

    fn k_strategy() -> impl Strategy<Value = usize> {
        prop_oneof![
            prop::sample::select(vec![128usize, 512, 7168]),
            (1usize..=64).prop_map(|v| v * 128),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn dense(m in m_strategy(), n in n_strategy(), k in k_strategy(), residual: bool, codes: bool) {
            let Some(g) = gpu("fp8_gemm dense") else { return Ok(()) };
            let draw = if codes { Draw::Codes } else { Draw::Quantized };
            assert_pass(checks::check_gemm_nt(g, &mut Rng::fresh(), (m, n, k), residual, draw));
        }

        #[test]
        fn grouped_contiguous(
            groups in prop_oneof![
                proptest::collection::vec(0usize..600, 1..9),
                (1usize..=4096).prop_map(|m| vec![m]),
            ],
            n in n_strategy(),
            k in prop::sample::select(vec![128usize, 512, 2048, 7168]),
        ) {
            let Some(g) = gpu("fp8_gemm grouped_contiguous") else { return Ok(()) };
            assert_pass(checks::check_grouped_contiguous(g, &mut Rng::fresh(), &groups, n, k));
        }

        #[test]
        fn grouped_masked(
            m_max in prop::sample::select(vec![1usize, 64, 100, 256, 512, 1024]),
            fractions in proptest::collection::vec(0.0f64..=1.0, 1..9),
            n in n_strategy(),
            k in prop::sample::select(vec![128usize, 512, 2048, 7168]),
        ) {
            let Some(g) = gpu("fp8_gemm grouped_masked") else { return Ok(()) };
            let masked: Vec<usize> = fractions.iter().map(|f| (f * m_max as f64).round() as usize).collect();
            assert_pass(checks::check_grouped_masked(g, &mut Rng::fresh(), m_max, &masked, n, k));
        }
    }

    #[test]
    fn bad_inputs() {
        let Some(g) = gpu("fp8_gemm bad_inputs") else {
            return;
        };
        assert_pass(checks::check_bad_inputs(g, &mut Rng::fresh()));
    }
}
