//! The CPU references of the FP8 GEMMs against the exact f64 product (spec §4), on fresh random
//! operands: the literal formula, the fast path the CPU backend uses, the grouped layouts, the
//! residual epilogue and argument checking.
//!
//! Error bound: every f32 implementation of the formula rounds each of the 128 products' running
//! sum, the two scale multiplications and the K/128 promotions, so per element
//! |y - y64| <= (128 + K/128 + 3) * 2^-24 * sum_k |terms| (standard summation analysis; the
//! products of two e4m3 values are exact in f32).

use fp8_gemm::inputs::{activations, weights, Draw};
use fp8_gemm::reference::{
    gemm_nt, gemm_nt_f32, gemm_nt_f64, gemm_nt_literal, grouped_contiguous, grouped_masked,
    quantize_weights, Fp8Weights,
};
use fp8_gemm::{K_BLOCK, N_ALIGN};
use half::bf16;
use kernels::dtype::{e4m3_to_f32, E4m3};
use kernels::reference::{Fp8Activations, ScaleLayout};
use kernels::rng::Rng;
use kernels::Error;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn draw_of(codes: bool) -> Draw {
    if codes {
        Draw::Codes
    } else {
        Draw::Quantized
    }
}

/// Asserts the per-element bound of the module doc; returns the largest error / bound ratio.
fn assert_within_f32_bound(y: &[f32], y64: &[f64], abs64: &[f64], k: usize, what: &str) -> f64 {
    let gamma = (K_BLOCK + k / K_BLOCK + 3) as f64 * 2f64.powi(-24);
    let mut worst = 0.0f64;
    for (i, ((&v, &e), &a)) in y.iter().zip(y64).zip(abs64).enumerate() {
        let bound = gamma * a + f64::from(f32::MIN_POSITIVE);
        let err = (f64::from(v) - e).abs();
        assert!(
            err <= bound,
            "{what}: element {i}: {v} vs exact {e} (error {err:e}, bound {bound:e})"
        );
        worst = worst.max(err / bound);
    }
    worst
}

proptest! {
    #![proptest_config(config(48))]

    /// Literal formula and fast path both stay within the f32 bound of the exact product, on
    /// tails (M not a multiple of anything, N any multiple of 16 incl. partial 128-blocks).
    #[test]
    fn dense_matches_f64(m in 0usize..70, n16 in 1usize..20, kb in 1usize..5, codes: bool, seed: u64) {
        let (n, k) = (n16 * N_ALIGN, kb * K_BLOCK);
        let mut rng = Rng::new(seed);
        let a = activations(&mut rng, m, k, draw_of(codes));
        let b = weights(&mut rng, n, k, draw_of(codes));
        let (y64, abs64) = gemm_nt_f64(&a, &b).unwrap();
        let lit = gemm_nt_literal(&a, &b).unwrap();
        let fast = gemm_nt_f32(&a, &b).unwrap();
        prop_assert_eq!(lit.len(), m * n);
        prop_assert_eq!(fast.len(), m * n);
        assert_within_f32_bound(&lit, &y64, &abs64, k, "literal");
        assert_within_f32_bound(&fast, &y64, &abs64, k, "fast");
    }

    /// Larger shapes (more tiles than threads, K up to 1536) for the fast path only.
    #[test]
    fn fast_path_large_shapes(m in 1usize..200, n16 in 1usize..24, kb in 1usize..13, seed: u64) {
        let (n, k) = (n16 * N_ALIGN * 2, kb * K_BLOCK);
        let mut rng = Rng::new(seed);
        let a = activations(&mut rng, m, k, Draw::Quantized);
        let b = weights(&mut rng, n, k, Draw::Quantized);
        let (y64, abs64) = gemm_nt_f64(&a, &b).unwrap();
        assert_within_f32_bound(&gemm_nt_f32(&a, &b).unwrap(), &y64, &abs64, k, "fast");
    }

    /// The BF16 output is the f32 total plus the residual, rounded once.
    #[test]
    fn residual_epilogue_rounds_once(m in 1usize..20, n16 in 1usize..10, seed: u64) {
        let (n, k) = (n16 * N_ALIGN, 256);
        let mut rng = Rng::new(seed);
        let a = activations(&mut rng, m, k, Draw::Quantized);
        let b = weights(&mut rng, n, k, Draw::Quantized);
        let residual: Vec<bf16> = rng.normal_vec(m * n, 1.0);
        let y = gemm_nt_f32(&a, &b).unwrap();
        let out = gemm_nt(&a, &b, Some(&residual)).unwrap();
        for i in 0..m * n {
            prop_assert_eq!(out[i], bf16::from_f32(y[i] + residual[i].to_f32()));
        }
        let plain = gemm_nt(&a, &b, None).unwrap();
        for i in 0..m * n {
            prop_assert_eq!(plain[i], bf16::from_f32(y[i]));
        }
    }

    /// Grouped contiguous: each row is its group's product (within the f32 bound; the fast path's
/// summation order may depend on the row count); padding rows stay zero.
    #[test]
    fn grouped_contiguous_is_per_group_dense(
        sizes in proptest::collection::vec(0usize..40, 1..5),
        pad in 0usize..3,
        seed: u64,
    ) {
        let (n, k, g) = (48, 256, sizes.len());
        let mut rng = Rng::new(seed);
        let mut m_indices = Vec::new();
        for (gi, &s) in sizes.iter().enumerate() {
            m_indices.extend(std::iter::repeat_n(gi as i32, s));
            m_indices.extend(std::iter::repeat_n(-1, pad));
        }
        let m = m_indices.len();
        let a = activations(&mut rng, m, k, Draw::Codes);
        let b: Vec<Fp8Weights> = (0..g).map(|_| weights(&mut rng, n, k, Draw::Codes)).collect();
        let y = grouped_contiguous(&a, &b, &m_indices).unwrap();
        for (gi, bg) in b.iter().enumerate() {
            // Each group's rows against the exact product with that group's weights.
            let (y64, abs64) = gemm_nt_f64(&a, bg).unwrap();
            for r in (0..m).filter(|&r| m_indices[r] == gi as i32) {
                let row = r * n..(r + 1) * n;
                assert_within_f32_bound(&y[row.clone()], &y64[row.clone()], &abs64[row], k, "grouped");
            }
        }
        for r in (0..m).filter(|&r| m_indices[r] == -1) {
            prop_assert!(y[r * n..(r + 1) * n].iter().all(|&v| v == 0.0));
        }
    }

    /// Grouped masked: the first masked_m[g] rows of each group are its product, the rest
    /// stay zero (including masked_m = 0 and = M_max).
    #[test]
    fn grouped_masked_is_per_group_dense(
        g in 1usize..5,
        m_max in 1usize..40,
        fractions in proptest::collection::vec(0.0f64..=1.0, 4),
        seed: u64,
    ) {
        let (n, k) = (32, 128);
        let mut rng = Rng::new(seed);
        let masked: Vec<usize> = (0..g).map(|i| (fractions[i] * m_max as f64).round() as usize).collect();
        let a: Vec<_> = (0..g).map(|_| activations(&mut rng, m_max, k, Draw::Quantized)).collect();
        let b: Vec<_> = (0..g).map(|_| weights(&mut rng, n, k, Draw::Quantized)).collect();
        let y = grouped_masked(&a, &b, &masked).unwrap();
        for gi in 0..g {
            let (y64, abs64) = gemm_nt_f64(&a[gi], &b[gi]).unwrap();
            let (base, valid) = (gi * m_max * n, masked[gi] * n);
            assert_within_f32_bound(&y[base..base + valid], &y64[..valid], &abs64[..valid], k, "masked");
            prop_assert!(y[base + masked[gi] * n..base + m_max * n].iter().all(|&v| v == 0.0));
        }
    }

    /// Weight quantization: per 128x128 block, |deq - w| is within half an e4m3 step.
    #[test]
    fn weight_quantization_round_trips(n in 1usize..300, kb in 1usize..3, seed: u64) {
        let k = kb * K_BLOCK;
        let mut rng = Rng::new(seed);
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.05).collect();
        let q = quantize_weights(&w, n, k).unwrap();
        for (i, &v) in w.iter().enumerate() {
            let s = q.scale(i / k, i % k / K_BLOCK);
            let deq = e4m3_to_f32(q.q[i].0) * s;
            // 3 mantissa bits: relative step 2^-3 (half: 2^-4); subnormal step 2^-9 * scale.
            let bound = v.abs() * 2f32.powi(-4) + s * 2f32.powi(-10) + 1e-12;
            prop_assert!((deq - v).abs() <= bound, "w {} deq {} scale {}", v, deq, s);
        }
    }
}

#[test]
fn a_known_product() {
    // a = 2.0 (scale 0.5) everywhere; w row 0 = 1.0, row 1 alternates +-1 (block scale 0.5):
    // y0 = 128 * (2 * 0.5) * (1 * 0.5) = 64, y1 = 0. Power-of-two scales keep it exact.
    let k = 128;
    let a = Fp8Activations {
        q: vec![E4m3::from_f32(2.0); k],
        scales: vec![0.5, 0.0, 0.0, 0.0],
        tokens: 1,
        channels: k,
        layout: ScaleLayout::BlockMajor,
    };
    let mut w = vec![E4m3::from_f32(1.0); k];
    w.extend((0..k).map(|i| E4m3::from_f32(if i % 2 == 0 { 1.0 } else { -1.0 })));
    let b = Fp8Weights::new(w, vec![0.5], 2, k).unwrap();
    assert_eq!(gemm_nt_literal(&a, &b).unwrap(), vec![64.0, 0.0]);
    assert_eq!(gemm_nt_f32(&a, &b).unwrap(), vec![64.0, 0.0]);
    assert_eq!(gemm_nt_f64(&a, &b).unwrap().0, vec![64.0, 0.0]);
}

#[test]
fn bad_shapes_are_errors() {
    let mut rng = Rng::new(7);
    let a = activations(&mut rng, 4, 256, Draw::Quantized);
    let b = weights(&mut rng, 32, 128, Draw::Quantized);
    assert!(matches!(gemm_nt_f32(&a, &b), Err(Error::Shape { .. })));
    assert!(matches!(
        Fp8Weights::new(vec![E4m3(0); 32 * 100], vec![1.0; 1], 32, 100),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Fp8Weights::new(vec![E4m3(0); 32 * 128], vec![1.0; 2], 32, 128),
        Err(Error::Shape { .. })
    ));
    let b = weights(&mut rng, 32, 256, Draw::Quantized);
    assert!(matches!(
        gemm_nt(&a, &b, Some(&[bf16::ZERO; 3])),
        Err(Error::Shape { .. })
    ));
    let groups = vec![b.clone(), b];
    assert!(matches!(
        grouped_contiguous(&a, &groups, &[0, 1, 2, -1]),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        grouped_contiguous(&a, &groups, &[0, 1]),
        Err(Error::Shape { .. })
    ));
    let acts = vec![a.clone(), a];
    assert!(matches!(
        grouped_masked(&acts, &groups, &[4, 5]),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        grouped_contiguous(&acts[0], &[], &[0, 0, 0, 0]),
        Err(Error::Shape { .. })
    ));
}
