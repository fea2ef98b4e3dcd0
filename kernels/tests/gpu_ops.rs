//! Shared-op kernels against their references on the GPU, with proptest choosing shapes (tails
//! included: widths that are not multiples of 8 or 128, single rows). Without a CUDA device (or
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

    const CASES: u32 = 12;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn rms_norm(rows in 1usize..300, hidden in prop::sample::select(vec![512usize, 1536, 7168, 1000, 24, 7]), fused: bool) {
            let Some(g) = gpu("rms_norm") else { return Ok(()) };
            assert_pass(checks::check_rms_norm(g, &mut Rng::fresh(), rows, hidden, fused));
        }

        #[test]
        fn silu_and_mul(rows in 1usize..200, inter in prop::sample::select(vec![2048usize, 18432, 333, 8, 1])) {
            let Some(g) = gpu("silu_and_mul") else { return Ok(()) };
            assert_pass(checks::check_silu_mul(g, &mut Rng::fresh(), rows, inter));
        }

        #[test]
        fn quantize_fp8(
            tokens in 1usize..130,
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
        fn rope(tokens in 1usize..100, heads in prop::sample::select(vec![1usize, 4, 16, 128])) {
            let Some(g) = gpu("rope") else { return Ok(()) };
            assert_pass(checks::check_rope_q(g, &mut Rng::fresh(), tokens, heads));
            assert_pass(checks::check_rope_kv(g, &mut Rng::fresh(), tokens));
        }

        #[test]
        fn embedding(vocab in 1usize..5000, hidden in prop::sample::select(vec![7168usize, 64, 100, 3]), tokens in 1usize..64) {
            let Some(g) = gpu("embedding") else { return Ok(()) };
            assert_pass(checks::check_embedding(g, &mut Rng::fresh(), vocab, hidden, tokens));
        }

        #[test]
        fn argmax_and_sample(rows in 1usize..40, vocab in prop::sample::select(vec![129_280usize, 32_000, 50, 2]), temperature in 0.3f32..2.0, top_p in 0.05f32..1.0) {
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
