//! The FP8 GEMM kernels against the exact f64 product on the GPU, proptest choosing shapes and
//! groups (M tails around the tile sizes, N multiples of 16 that are not multiples of 64 or 128,
//! empty groups, all rows in one group), and every tile configuration forced for each GEMM kind.
//! The interpreter build (`kernels::EMULATED`) runs fewer cases on CPU-sized shapes (see `sizes`).
//! Criteria: `fp8_gemm::checks`. Without a CUDA device (or
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

    /// Proptest cases and shape ranges: the GPU's, or CPU-sized ones for the interpreter build
    /// (still M around the tile edges, N multiples of 16 off the 64/128 grid, K past the deepest
    /// pipeline's 8 stages).
    struct Sizes {
        cases: u32,
        /// Picked M values, and the upper end of the random M range.
        m_picks: Vec<usize>,
        m_max: usize,
        /// Picked N values, and the upper end of the random N range in units of 16.
        n_picks: Vec<usize>,
        n_max16: usize,
        /// Picked dense K values, and the upper end of the random K range in units of 128.
        k_picks: Vec<usize>,
        k_max128: usize,
        /// K values of the grouped kinds.
        grouped_k: Vec<usize>,
        /// Rows per contiguous group are below this; at most `max_groups - 1` groups.
        group_rows: usize,
        max_groups: usize,
        /// M_max values of the masked kind.
        masked_m_max: Vec<usize>,
    }

    fn sizes() -> Sizes {
        if kernels::EMULATED {
            Sizes {
                cases: 6,
                m_picks: vec![1, 63, 64, 65, 127, 128, 129],
                m_max: 200,
                n_picks: vec![16, 48, 80, 144, 208],
                n_max16: 20,
                k_picks: vec![128, 512, 1152],
                k_max128: 10,
                grouped_k: vec![128, 512, 1152],
                group_rows: 150,
                max_groups: 5,
                masked_m_max: vec![1, 64, 100, 129],
            }
        } else {
            Sizes {
                cases: 16,
                m_picks: vec![1, 63, 64, 65, 127, 128, 129, 4096],
                m_max: 4096,
                n_picks: vec![16, 48, 2112, 4096, 7168],
                n_max16: 512,
                k_picks: vec![128, 512, 7168],
                k_max128: 64,
                grouped_k: vec![128, 512, 2048, 7168],
                group_rows: 600,
                max_groups: 9,
                masked_m_max: vec![1, 64, 100, 256, 512, 1024],
            }
        }
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::with_cases(sizes().cases)
        }
    }

    fn m_strategy() -> impl Strategy<Value = usize> {
        let s = sizes();
        prop_oneof![prop::sample::select(s.m_picks), 1usize..=s.m_max]
    }

    fn n_strategy() -> impl Strategy<Value = usize> {
        let s = sizes();
        prop_oneof![
            prop::sample::select(s.n_picks),
            (1usize..=s.n_max16).prop_map(|v| v * 16),
        ]
    }

    fn k_strategy() -> impl Strategy<Value = usize> {
        let s = sizes();
        prop_oneof![
            prop::sample::select(s.k_picks),
            (1usize..=s.k_max128).prop_map(|v| v * 128),
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
                proptest::collection::vec(0usize..sizes().group_rows, 1..sizes().max_groups),
                (1usize..=sizes().m_max).prop_map(|m| vec![m]),
            ],
            n in n_strategy(),
            k in prop::sample::select(sizes().grouped_k),
        ) {
            let Some(g) = gpu("fp8_gemm grouped_contiguous") else { return Ok(()) };
            assert_pass(checks::check_grouped_contiguous(g, &mut Rng::fresh(), &groups, n, k));
        }

        #[test]
        fn grouped_masked(
            m_max in prop::sample::select(sizes().masked_m_max),
            fractions in proptest::collection::vec(0.0f64..=1.0, 1..sizes().max_groups),
            n in n_strategy(),
            k in prop::sample::select(sizes().grouped_k),
        ) {
            let Some(g) = gpu("fp8_gemm grouped_masked") else { return Ok(()) };
            let masked: Vec<usize> = fractions.iter().map(|f| (f * m_max as f64).round() as usize).collect();
            assert_pass(checks::check_grouped_masked(g, &mut Rng::fresh(), m_max, &masked, n, k));
        }
    }

    /// Every entry of the tile table forced for dense, grouped contiguous and grouped masked on
    /// small shapes with tails and more K blocks than stages (`checks::check_every_tile_config`).
    #[test]
    fn every_tile_config() {
        let Some(g) = gpu("fp8_gemm every_tile_config") else {
            return;
        };
        let reports: Vec<_> = checks::check_every_tile_config(g, &mut Rng::fresh())
            .into_iter()
            .map(|r| r.expect("check ran"))
            .collect();
        // Each configuration ran for all three kinds (dense twice: with a residual, and M = 1).
        for cfg in fp8_gemm::tiles::TILE_CONFIGS {
            let tag = format!("tiles {}", cfg.label());
            let kernels: Vec<&str> = reports
                .iter()
                .filter(|r| r.case.ends_with(&tag))
                .map(|r| r.kernel.as_str())
                .collect();
            assert_eq!(
                kernels,
                [
                    "fp8_gemm_nt",
                    "fp8_gemm_nt",
                    "fp8_gemm_grouped_contiguous",
                    "fp8_gemm_grouped_masked"
                ],
                "{tag}"
            );
        }
        for report in reports {
            assert_pass(Ok(report));
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
