//! The CPU backend against Hugging Face transformers: logits and greedy generations of the
//! committed fixtures (`model/tests/fixtures/hf-*`, made by `model/scripts/make_hf_goldens.py`
//! from random weights; transformers in float32 from the dequantized FP8 weights).
//!
//! - `exact`: every position within 1e-4 relative (Frobenius) and the same argmax. Both sides
//!   compute in f32 from identical weights; they differ only in summation order and in the
//!   absorbed vs naive attention form, errors of order 1e-6 relative.
//! - `fp8`: activations quantized to e4m3 (3 mantissa bits) before every FP8 GEMM, so each
//!   product carries a few percent of relative noise. Random weights amplify it in two ways a
//!   trained model does not: the router chooses among near-equal scores (margins down to 0.001,
//!   so a few positions route differently and lose a little cosine), and the logits are nearly
//!   flat (top-2 gaps of a small fraction of their spread, so argmax flips at cosine 0.999).
//!   The fixtures damp the first with GPT-2's residual-branch init scale (see the script).
//!   Measured: V2-Lite 41/41 positions >= 0.99 cosine (worst 0.9991), argmax 39/41; V3 39/41
//!   (worst 0.978), argmax 37/41. The bars hold 90% of positions to the 0.99, every
//!   position to 0.95 and argmax to 85%; a real fp8 bug (a wrong scale, layout or rounding)
//!   sends every position far below 0.9. The tight fp8 check is CUDA fp8 against CPU fp8 (the
//!   same arithmetic), not this one.
//! - greedy: 32 generated tokens identical to transformers' `generate`.

mod common;

use std::path::Path;

use common::goldens::{fixture, load_goldens};
use common::{argmax, cosine, rel_frobenius};
use kernels::reference::sampling::SamplingParams;
use model::cpu::{CpuModel, Precision};
use model::engine::{CpuBackend, Engine, Request};
use model::speculative::{Drafter, SpecConfig};
use model::Checkpoint;

const EXACT_REL_TOL: f64 = 1e-4;
/// Cosine that at least `FP8_TYPICAL_SHARE` of the positions must reach.
const FP8_TYPICAL_COSINE: f64 = 0.99;
const FP8_TYPICAL_SHARE: f64 = 0.9;
/// Floor for every position (those where a routing flip dominates included).
const FP8_MIN_COSINE: f64 = 0.95;
const FP8_MIN_ARGMAX_AGREEMENT: f64 = 0.85;

fn engine(dir: &Path, precision: Precision) -> Engine<CpuBackend> {
    engine_with_mha_from(dir, precision, model::cpu::mha::MHA_MIN_NEW_TOKENS)
}

/// An engine whose exact prefill takes the MHA form from `mha_min_new_tokens` new tokens on.
fn engine_with_mha_from(
    dir: &Path,
    precision: Precision,
    mha_min_new_tokens: usize,
) -> Engine<CpuBackend> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let mut model = CpuModel::load(&ckpt, precision).unwrap();
    model.set_mha_min_new_tokens(mha_min_new_tokens);
    Engine::new(CpuBackend::new(model, 8).unwrap()).unwrap()
}

/// Both attention forms against the goldens: the absorbed form (every call, as decode runs it)
/// and the MHA form (every call, as long prefills run it; the goldens' prompts are shorter
/// than the default threshold).
fn check_exact(name: &str) {
    for (form, from) in [("absorbed", usize::MAX), ("mha", 1)] {
        check_exact_form(name, form, from);
    }
}

fn check_exact_form(name: &str, form: &str, mha_from: usize) {
    let dir = fixture(name);
    let goldens = load_goldens(&dir);
    let mut e = engine_with_mha_from(&dir, Precision::Exact, mha_from);
    let vocab = e.config().vocab_size;
    let mut worst = 0.0f64;
    for (p, g) in goldens.prompts.iter().enumerate() {
        let (ids, want) = (&g.ids, &g.logits);
        let got = e.logits(ids).unwrap();
        assert_eq!(got.len(), want.len(), "{name} prompt {p}");
        for (pos, (g, w)) in got
            .chunks_exact(vocab)
            .zip(want.chunks_exact(vocab))
            .enumerate()
        {
            let rel = rel_frobenius(g, w);
            worst = worst.max(rel);
            assert!(
                rel < EXACT_REL_TOL,
                "{name} ({form}) prompt {p} position {pos}: relative error {rel:e}"
            );
            assert_eq!(
                argmax(g),
                argmax(w),
                "{name} ({form}) prompt {p} position {pos}: argmax"
            );
        }
    }
    eprintln!("{name}: exact logits ({form} attention), worst relative error {worst:.2e}");
}

fn check_fp8(name: &str) {
    let dir = fixture(name);
    let goldens = load_goldens(&dir);
    let mut e = engine(&dir, Precision::Fp8);
    let vocab = e.config().vocab_size;
    let (mut rows, mut agree, mut worst, mut typical) = (0usize, 0usize, 1.0f64, 0usize);
    for p in &goldens.prompts {
        let (ids, want) = (&p.ids, &p.logits);
        let got = e.logits(ids).unwrap();
        for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
            let c = cosine(g, w);
            worst = worst.min(c);
            typical += usize::from(c >= FP8_TYPICAL_COSINE);
            agree += usize::from(argmax(g) == argmax(w));
            rows += 1;
        }
    }
    let agreement = agree as f64 / rows as f64;
    eprintln!(
        "{name}: fp8 logits, {typical}/{rows} positions with cosine >= {FP8_TYPICAL_COSINE}, \
         worst {worst:.4}, argmax agreement {agree}/{rows}"
    );
    assert!(
        typical as f64 >= FP8_TYPICAL_SHARE * rows as f64,
        "{name}: only {typical}/{rows} positions reach cosine {FP8_TYPICAL_COSINE}"
    );
    assert!(worst >= FP8_MIN_COSINE, "{name}: worst cosine {worst}");
    assert!(
        agreement >= FP8_MIN_ARGMAX_AGREEMENT,
        "{name}: argmax agreement {agree}/{rows}"
    );
}

fn check_greedy(name: &str) {
    let dir = fixture(name);
    let goldens = load_goldens(&dir);
    let mut e = engine(&dir, Precision::Exact);
    let request = Request {
        prompt: goldens.greedy_prompt.clone(),
        max_new_tokens: goldens.greedy_generated.len(),
        sampling: SamplingParams::GREEDY,
        seed: 0,
        stop_ids: Vec::new(),
    };
    let out = e.generate(&[request], |_, _| {}).unwrap().remove(0);
    assert_eq!(
        out.ids, goldens.greedy_generated,
        "{name}: greedy generation"
    );
}

/// MTP logits (spec §3.4) in exact precision: row i predicts token i+2 from position i's final
/// hidden state and token i+1; same bound as the main logits.
#[test]
fn v3_exact_mtp_logits_match_the_transformers_modules() {
    check_exact_mtp("hf-v3-tiny");
}

fn check_exact_mtp(name: &str) {
    let dir = fixture(name);
    let goldens = load_goldens(&dir);
    let mut e = engine(&dir, Precision::Exact);
    let vocab = e.config().vocab_size;
    let mut checked = 0;
    for (p, g) in goldens.prompts.iter().enumerate() {
        let Some(want) = &g.mtp_logits else { continue };
        let (_, got) = e.logits_with_mtp(&g.ids).unwrap();
        assert_eq!(got.len(), want.len(), "{name} prompt {p}");
        for (i, (r, w)) in got
            .chunks_exact(vocab)
            .zip(want.chunks_exact(vocab))
            .enumerate()
        {
            let rel = rel_frobenius(r, w);
            assert!(
                rel < EXACT_REL_TOL,
                "{name} prompt {p} MTP row {i}: relative error {rel:e}"
            );
            assert_eq!(
                argmax(r),
                argmax(w),
                "{name} prompt {p} MTP row {i}: argmax"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 30,
        "{name}: only {checked} MTP rows in the goldens"
    );
}

#[test]
fn v3_exact_logits_match_transformers() {
    check_exact("hf-v3-tiny");
}

#[test]
fn v2_lite_exact_logits_match_transformers() {
    check_exact("hf-v2-lite-tiny");
}

#[test]
fn v3_fp8_logits_track_transformers() {
    check_fp8("hf-v3-tiny");
}

#[test]
fn v2_lite_fp8_logits_track_transformers() {
    check_fp8("hf-v2-lite-tiny");
}

#[test]
fn v3_greedy_generation_matches_transformers() {
    check_greedy("hf-v3-tiny");
}

#[test]
fn v2_lite_greedy_generation_matches_transformers() {
    check_greedy("hf-v2-lite-tiny");
}

// The checkpoint families of issue 15 (see the fixtures README): transformers-saved float32
// and BF16 checkpoints, Kimi-K2 and DeepSeek-V3.1 (UE8M0 scales). The exact comparison and the
// greedy generation run on every one, the fp8 comparison where the checkpoint is FP8.

#[test]
fn v3_f32_saved_by_transformers_exact_logits_match() {
    check_exact("hf-v3-f32-tiny");
}

#[test]
fn v3_f32_saved_by_transformers_greedy_generation_matches() {
    check_greedy("hf-v3-f32-tiny");
}

#[test]
fn moonlight_bf16_exact_logits_match_transformers() {
    check_exact("hf-moonlight-tiny");
}

#[test]
fn moonlight_bf16_greedy_generation_matches_transformers() {
    check_greedy("hf-moonlight-tiny");
}

#[test]
fn k2_exact_logits_match_transformers() {
    check_exact("hf-k2-tiny");
}

/// The K2 fixture is FP8 but too narrow for the fp8 GEMM (experts of width 8, q_lora_rank 64:
/// K must be a multiple of 128, as in every real K2 shape); fp8 precision refuses it by name.
#[test]
fn k2_fp8_precision_refuses_the_narrow_fixture_by_name() {
    let ckpt = Checkpoint::open(fixture("hf-k2-tiny")).unwrap();
    let e = CpuModel::load(&ckpt, Precision::Fp8).expect_err("K = 64 is not a multiple of 128");
    assert!(e.to_string().contains("q_b_proj.weight"), "{e}");
    assert!(e.to_string().contains("multiple of 128"), "{e}");
}

#[test]
fn k2_greedy_generation_matches_transformers() {
    check_greedy("hf-k2-tiny");
}

#[test]
fn v31_ue8m0_exact_logits_match_transformers() {
    check_exact("hf-v31-tiny");
}

#[test]
fn v31_ue8m0_exact_mtp_logits_match_the_transformers_modules() {
    check_exact_mtp("hf-v31-tiny");
}

#[test]
fn v31_ue8m0_fp8_logits_track_transformers() {
    check_fp8("hf-v31-tiny");
}

#[test]
fn v31_ue8m0_greedy_generation_matches_transformers() {
    check_greedy("hf-v31-tiny");
}

/// Greedy speculative decoding with the MTP module (D = 1 and 2, batch 1 and 4) gives exactly
/// transformers' greedy tokens on the V3 fixture, with the MTP drafts and with forced acceptance.
#[test]
fn v3_greedy_speculative_decoding_matches_transformers() {
    let dir = fixture("hf-v3-tiny");
    let goldens = load_goldens(&dir);
    let mut e = engine(&dir, Precision::Exact);
    let n = goldens.greedy_generated.len();
    let request = |prompt: &[u32]| Request {
        prompt: prompt.to_vec(),
        max_new_tokens: n,
        sampling: SamplingParams::GREEDY,
        seed: 0,
        stop_ids: Vec::new(),
    };
    // Batch 4: the golden prompt plus three of the logits prompts (plain greedy is the oracle
    // for those; for the golden prompt it must also equal transformers).
    let mut batch = vec![request(&goldens.greedy_prompt)];
    batch.extend(goldens.prompts.iter().take(3).map(|p| request(&p.ids)));
    let plain = e.generate(&batch, |_, _| {}).unwrap();
    assert_eq!(plain[0].ids, goldens.greedy_generated);
    for draft_steps in [1, 2] {
        for batch_size in [1, 4] {
            let spec = SpecConfig {
                draft_steps,
                drafter: Drafter::Mtp,
            };
            let (out, _) = e
                .generate_speculative(&batch[..batch_size], &spec, |_, _| {})
                .unwrap();
            for (i, o) in out.iter().enumerate() {
                assert_eq!(
                    o.ids, plain[i].ids,
                    "D {draft_steps} batch {batch_size} request {i}"
                );
            }
        }
        let forced = SpecConfig {
            draft_steps,
            drafter: Drafter::Oracle(plain.iter().map(|g| g.ids.clone()).collect()),
        };
        let (out, stats) = e.generate_speculative(&batch, &forced, |_, _| {}).unwrap();
        assert_eq!(
            out[0].ids, goldens.greedy_generated,
            "forced, D {draft_steps}"
        );
        assert_eq!(
            stats.acceptance_rate(),
            1.0,
            "forced acceptance, D {draft_steps}"
        );
    }
}
