//! Permute / combine kernels against the reference on the GPU (`moe_dispatch::checks::permute`),
//! with proptest choosing shapes and routings: empty experts, all tokens on one expert, T = 1,
//! K = E, widths that are not multiples of 8 or 128, bad ids and masked overflow; fewer cases and
//! tokens in the interpreter build (`kernels::EMULATED`, see `sizes`). Without a CUDA
//! device (or without the `cuda` feature) each test prints `skipped: no CUDA device`.

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_permute_needs_the_cuda_feature() {
    kernels::report_skip(
        "gpu_permute",
        "no CUDA device (built without --features cuda)",
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use kernels::gpu::{assert_pass, test_gpu as gpu};
    use kernels::reference::fp8_quant::ScaleLayout;
    use kernels::rng::Rng;
    use moe_dispatch::checks::permute::{self as checks, DispatchFormat, Routing};
    use proptest::prelude::*;

    use std::ops::Range;

    /// Proptest cases, token counts and the masked-buffer limit: the GPU's, or CPU-sized ones for
    /// the interpreter build (every routing, format, hidden size and expert count still drawn,
    /// with zero, one and tile-straddling token counts).
    struct Sizes {
        cases: u32,
        layout_tokens: Vec<usize>,
        layout_k_equals_e_tokens: Range<usize>,
        dispatch_tokens: Vec<usize>,
        combine_tokens: Vec<usize>,
        /// Largest masked buffer (elements) a skewed case may allocate.
        masked_limit: usize,
    }

    fn sizes() -> Sizes {
        if kernels::EMULATED {
            Sizes {
                cases: 6,
                layout_tokens: vec![0, 1, 2, 63, 200, 300],
                layout_k_equals_e_tokens: 1..100,
                dispatch_tokens: vec![1, 5, 64, 130],
                combine_tokens: vec![1, 3, 64, 130],
                masked_limit: 1 << 23,
            }
        } else {
            Sizes {
                cases: 12,
                layout_tokens: vec![0, 1, 2, 63, 200, 1025, 4096],
                layout_k_equals_e_tokens: 1..300,
                dispatch_tokens: vec![1, 5, 64, 300],
                combine_tokens: vec![1, 3, 64, 257],
                masked_limit: 1 << 27,
            }
        }
    }

    fn routing() -> impl Strategy<Value = Routing> {
        prop::sample::select(vec![Routing::Uniform, Routing::Skewed, Routing::OneExpert])
    }

    fn format() -> impl Strategy<Value = DispatchFormat> {
        prop::sample::select(vec![
            DispatchFormat::Bf16,
            DispatchFormat::Fp8(ScaleLayout::TokenMajor),
            DispatchFormat::Fp8(ScaleLayout::BlockMajor),
        ])
    }

    /// The masked buffers are `[E, m_max, H]` with m_max the busiest expert's count: with skewed
    /// routings that is up to T * K rows per expert, so keep those cases under
    /// `sizes().masked_limit` elements (2^27 on a GPU).
    fn masked_size_ok(
        masked: bool,
        routing: Routing,
        tokens: usize,
        top_k: usize,
        num_experts: usize,
        hidden: usize,
    ) -> bool {
        !masked
            || routing == Routing::Uniform
            || num_experts * (tokens * top_k + 2) * hidden <= sizes().masked_limit
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(sizes().cases))]

        #[test]
        fn layouts(
            routing in routing(),
            tokens in prop::sample::select(sizes().layout_tokens),
            num_experts in prop::sample::select(vec![1usize, 3, 8, 64, 256, 512]),
            k_frac in 0.0f64..1.0,
            align in prop::sample::select(vec![1usize, 4, 128]),
        ) {
            let Some(g) = gpu("permute_layouts") else { return Ok(()) };
            let top_k = (1 + ((num_experts.min(8) - 1) as f64 * k_frac) as usize).min(num_experts);
            assert_pass(checks::check_layouts(g, &mut Rng::fresh(), routing, tokens, top_k, num_experts, align));
        }

        #[test]
        fn layouts_k_equals_e(tokens in sizes().layout_k_equals_e_tokens, num_experts in 1usize..=256, align in prop::sample::select(vec![1usize, 128])) {
            let Some(g) = gpu("permute_layouts_k_equals_e") else { return Ok(()) };
            assert_pass(checks::check_layouts(g, &mut Rng::fresh(), Routing::Uniform, tokens, num_experts, num_experts, align));
        }

        #[test]
        fn dispatch(
            routing in routing(),
            tokens in prop::sample::select(sizes().dispatch_tokens),
            hidden in prop::sample::select(vec![7168usize, 2048, 200, 128, 7, 1]),
            top_k in 1usize..=8,
            num_experts in prop::sample::select(vec![8usize, 16, 256]),
            masked: bool,
            format in format(),
        ) {
            prop_assume!(masked_size_ok(masked, routing, tokens, top_k, num_experts, hidden));
            let Some(g) = gpu("permute_dispatch") else { return Ok(()) };
            assert_pass(checks::check_dispatch(g, &mut Rng::fresh(), routing, tokens, hidden, top_k, num_experts, masked, format));
        }

        #[test]
        fn dispatch_k_equals_e(num_experts in 1usize..=16, tokens in 1usize..40, masked: bool, format in format()) {
            let Some(g) = gpu("permute_dispatch_k_equals_e") else { return Ok(()) };
            assert_pass(checks::check_dispatch(g, &mut Rng::fresh(), Routing::Uniform, tokens, 256, num_experts, num_experts, masked, format));
        }

        #[test]
        fn combine(
            routing in routing(),
            tokens in prop::sample::select(sizes().combine_tokens),
            hidden in prop::sample::select(vec![7168usize, 512, 100, 8, 7]),
            top_k in 1usize..=9,
            num_experts in prop::sample::select(vec![9usize, 32, 256]),
            masked: bool,
            shared: bool,
        ) {
            prop_assume!(masked_size_ok(masked, routing, tokens, top_k, num_experts, hidden));
            let Some(g) = gpu("permute_combine") else { return Ok(()) };
            assert_pass(checks::check_combine(g, &mut Rng::fresh(), routing, tokens, hidden, top_k, num_experts, masked, shared));
        }

        #[test]
        fn combine_k_equals_e(num_experts in 1usize..=32, tokens in 1usize..20, masked: bool, shared: bool) {
            let Some(g) = gpu("permute_combine_k_equals_e") else { return Ok(()) };
            assert_pass(checks::check_combine(g, &mut Rng::fresh(), Routing::Uniform, tokens, 64, num_experts, num_experts, masked, shared));
        }
    }

    #[test]
    fn bad_ids_are_reported_and_dropped() {
        let Some(g) = gpu("permute_bad_ids") else {
            return;
        };
        assert_pass(checks::check_bad_ids(g, &mut Rng::fresh()));
    }

    #[test]
    fn masked_overflow_is_reported_and_clamped() {
        let Some(g) = gpu("permute_masked_overflow") else {
            return;
        };
        assert_pass(checks::check_masked_overflow(g, &mut Rng::fresh()));
    }

    #[test]
    fn deepseek_v3_shapes() {
        let Some(g) = gpu("permute_deepseek_v3_shapes") else {
            return;
        };
        for r in checks::all_checks(g, true) {
            assert_pass(r);
        }
    }
}
