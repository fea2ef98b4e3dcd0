//! Shared-op kernels against their references on the GPU, with proptest choosing shapes (tails
//! included: widths that are not multiples of 8 or 128, single rows); fewer cases and rows in the
//! interpreter build (`kernels::EMULATED`, see `sizes`). Without a CUDA device (or
//! without the `cuda` feature) each test prints `skipped: no CUDA device` and checks nothing.

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_ops_need_the_cuda_feature() {
    kernels::report_skip("gpu_ops", "no CUDA device (built without --features cuda)");
}

#[cfg(feature = "cuda")]
mod gpu {
    use kernels::checks;
    use kernels::gpu::{assert_pass, test_gpu as gpu};
    use kernels::reference::ScaleLayout;
    use kernels::rng::Rng;
    use proptest::prelude::*;

    use std::ops::Range;

    /// Proptest cases and the row / vocabulary ranges: the GPU's, or CPU-sized ones for the
    /// interpreter build (the real widths 7168 / 18432 / 129 280 stay, with few rows).
    struct Sizes {
        cases: u32,
        rows: Range<usize>,
        silu_rows: Range<usize>,
        tokens: Range<usize>,
        rope_tokens: Range<usize>,
        embed_tokens: Range<usize>,
        vocab: Range<usize>,
        sample_rows: Range<usize>,
    }

    fn sizes() -> Sizes {
        if kernels::EMULATED {
            Sizes {
                cases: 6,
                rows: 1..70,
                silu_rows: 1..20,
                tokens: 1..20,
                rope_tokens: 1..20,
                embed_tokens: 1..20,
                vocab: 1..600,
                sample_rows: 1..4,
            }
        } else {
            Sizes {
                cases: 12,
                rows: 1..300,
                silu_rows: 1..200,
                tokens: 1..130,
                rope_tokens: 1..100,
                embed_tokens: 1..64,
                vocab: 1..5000,
                sample_rows: 1..40,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(sizes().cases))]

        #[test]
        fn rms_norm(rows in sizes().rows, hidden in prop::sample::select(vec![512usize, 1536, 7168, 1000, 24, 7]), fused: bool) {
            let Some(g) = gpu("rms_norm") else { return Ok(()) };
            assert_pass(checks::check_rms_norm(g, &mut Rng::fresh(), rows, hidden, fused));
        }

        #[test]
        fn silu_and_mul(rows in sizes().silu_rows, inter in prop::sample::select(vec![2048usize, 18432, 333, 8, 1])) {
            let Some(g) = gpu("silu_and_mul") else { return Ok(()) };
            assert_pass(checks::check_silu_mul(g, &mut Rng::fresh(), rows, inter));
        }

        #[test]
        fn quantize_fp8(
            tokens in sizes().tokens,
            channels in prop::sample::select(vec![128usize, 7168, 2048, 300, 64, 1]),
            ue8m0: bool,
            block_major: bool,
            fused: bool,
        ) {
            let Some(g) = gpu("quantize_fp8") else { return Ok(()) };
            let layout = if block_major { ScaleLayout::BlockMajor } else { ScaleLayout::TokenMajor };
            assert_pass(checks::check_quantize_fp8(g, &mut Rng::fresh(), tokens, channels, ue8m0, layout, fused));
        }

        #[test]
        fn rope(tokens in sizes().rope_tokens, heads in prop::sample::select(vec![1usize, 4, 16, 128])) {
            let Some(g) = gpu("rope") else { return Ok(()) };
            assert_pass(checks::check_rope_q(g, &mut Rng::fresh(), tokens, heads));
            assert_pass(checks::check_rope_kv(g, &mut Rng::fresh(), tokens));
        }

        #[test]
        fn embedding(vocab in sizes().vocab, hidden in prop::sample::select(vec![7168usize, 64, 100, 3]), tokens in sizes().embed_tokens) {
            let Some(g) = gpu("embedding") else { return Ok(()) };
            assert_pass(checks::check_embedding(g, &mut Rng::fresh(), vocab, hidden, tokens));
        }

        #[test]
        fn argmax_and_sample(rows in sizes().sample_rows, vocab in prop::sample::select(vec![129_280usize, 32_000, 50, 2]), temperature in 0.3f32..2.0, top_p in 0.05f32..1.0) {
            let Some(g) = gpu("argmax_and_sample") else { return Ok(()) };
            assert_pass(checks::check_argmax(g, &mut Rng::fresh(), rows, vocab));
            assert_pass(checks::check_sample(g, &mut Rng::fresh(), rows, vocab, temperature, top_p));
            assert_pass(checks::check_sample_with_uniforms(g, &mut Rng::fresh(), rows, vocab));
        }
    }

    #[test]
    fn bad_inputs_are_reported() {
        let Some(g) = gpu("bad_inputs_are_reported") else {
            return;
        };
        assert_pass(checks::check_embedding_bad_id(g, &mut Rng::fresh()));
        assert_pass(checks::check_rope_bad_position(g, &mut Rng::fresh()));
    }

    #[test]
    fn e4m3_codec_matches_hardware() {
        let Some(g) = gpu("e4m3_codec_matches_hardware") else {
            return;
        };
        assert_pass(checks::check_e4m3_codec(g, &mut Rng::fresh()));
    }

    #[test]
    fn hopper_primitives() {
        let Some(g) = gpu("hopper_primitives") else {
            return;
        };
        let rng = &mut Rng::fresh();
        assert_pass(checks::check_bulk_copy(g, rng, 4096));
        assert_pass(checks::check_tma_tile(g, rng, 150, 200));
        assert_pass(checks::check_tma_tile(g, rng, 64, 64));
        assert_pass(checks::check_wgmma_bf16(g, rng, 64));
        assert_pass(checks::check_wgmma_bf16(g, rng, 512));
        assert_pass(checks::check_wgmma_bf16_trans_b(g, rng, 64));
        assert_pass(checks::check_wgmma_bf16_trans_b(g, rng, 576));
        assert_pass(checks::check_wgmma_e4m3(g, rng, 128));
        assert_pass(checks::check_wgmma_e4m3(g, rng, 512));
    }
}
