//! Properties of the plain-Rust references (`kernels::reference`) against independent f64
//! implementations of the spec (`docs/spec.md` §3, §3.2, §4) written here, plus
//! their argument checking (bad shapes and values are errors, never panics).
//!
//! Inputs are fresh every run: proptest draws shapes and a seed for `kernels::rng::Rng`.

use std::sync::mpsc;
use std::time::Duration;

use half::bf16;
use kernels::dtype::{e4m3_from_f32, e4m3_to_f32};
use kernels::reference::{
    apply_rope, argmax, dequantize_fp8, embedding, fused_add_rms_norm, quantize_fp8, rms_norm,
    sample, silu_and_mul, silu_and_mul_quantize_fp8, Fp8Activations, RopeLayout, RopeParams,
    SamplingParams, ScaleLayout, YarnScaling, FP8_BLOCK,
};
use kernels::rng::{sampling_uniform, Rng};
use kernels::{Error, Float};
use proptest::prelude::*;

const CASES: u32 = 64;

/// `CASES` cases, and no regression files written next to the tests.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(CASES)
    }
}

fn to_f64<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| f64::from(x.to_f32())).collect()
}

// ---------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------

/// y = v / sqrt(mean(v^2) + eps) * w, in f64.
fn rms_norm_f64(x: &[f64], w: &[f64], hidden: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(hidden) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / hidden as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
    }
    out
}

/// Rows whose magnitude varies by row: N(0, 1) * 10^(uniform(lo, hi)).
fn varied_rows(rng: &mut Rng, rows: usize, hidden: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * hidden);
    for _ in 0..rows {
        let scale = 10f32.powf(rng.uniform(lo, hi));
        x.extend((0..hidden).map(|_| rng.normal() * scale));
    }
    x
}

fn fused_add_props<T: Float>(rng: &mut Rng, rows: usize, hidden: usize, eps: f32) {
    let x: Vec<T> = rng.normal_vec(rows * hidden, 1.0);
    let residual0: Vec<T> = rng.normal_vec(rows * hidden, 3.0);
    let weight: Vec<T> = rng.normal_vec(hidden, 1.0);
    let mut residual = residual0.clone();
    let out = fused_add_rms_norm(&x, &mut residual, &weight, hidden, eps).unwrap();
    for i in 0..x.len() {
        // The residual stream is stored in T: the f32 sum rounded once.
        let want = T::from_f32(x[i].to_f32() + residual0[i].to_f32());
        assert_eq!(
            residual[i].to_f32().to_bits(),
            want.to_f32().to_bits(),
            "residual[{i}]"
        );
    }
    let plain = rms_norm(&residual, &weight, hidden, eps).unwrap();
    let out_bits: Vec<u32> = out.iter().map(|v| v.to_f32().to_bits()).collect();
    let plain_bits: Vec<u32> = plain.iter().map(|v| v.to_f32().to_bits()).collect();
    assert_eq!(
        out_bits, plain_bits,
        "fused output != rms_norm(x + residual)"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rms_norm_unit_weight_gives_unit_rms(
        rows in 1usize..5,
        hidden in 1usize..600,
        eps in prop::sample::select(vec![1e-6f32, 1e-5, 1e-3]),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let x = varied_rows(&mut rng, rows, hidden, -2.0, 4.0);
        let ones = vec![1.0f32; hidden];
        let y = rms_norm(&x, &ones, hidden, eps).unwrap();
        prop_assert_eq!(y.len(), x.len());
        for (r, (xr, yr)) in x.chunks(hidden).zip(y.chunks(hidden)).enumerate() {
            let ms = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / hidden as f64;
            let rms = (yr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / hidden as f64).sqrt();
            // Exactly sqrt(ms / (ms + eps)) in exact arithmetic, so 1 up to eps / (2 ms).
            let expected = (ms / (ms + f64::from(eps))).sqrt();
            prop_assert!((rms - expected).abs() <= 1e-5, "row {}: rms {} expected {}", r, rms, expected);
            prop_assert!((rms - 1.0).abs() <= f64::from(eps) / (2.0 * ms) + 1e-5, "row {}: rms {}", r, rms);
            if ms > 1000.0 * f64::from(eps) {
                prop_assert!((rms - 1.0).abs() <= 1e-3, "row {}: rms {}", r, rms);
            }
        }
    }

    #[test]
    fn rms_norm_matches_f64(
        rows in 1usize..5,
        hidden in 1usize..600,
        eps in prop::sample::select(vec![1e-6f32, 1e-5]),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let x = varied_rows(&mut rng, rows, hidden, -1.0, 3.0);
        let w: Vec<f32> = rng.normal_vec(hidden, 1.0);
        let y = rms_norm(&x, &w, hidden, eps).unwrap();
        let want = rms_norm_f64(&to_f64(&x), &to_f64(&w), hidden, f64::from(eps));
        for (i, (&g, &r)) in y.iter().zip(&want).enumerate() {
            prop_assert!((f64::from(g) - r).abs() <= 1e-5 * r.abs() + 1e-30, "y[{}] = {} vs f64 {}", i, g, r);
        }

        // BF16 in, BF16 out: one rounding of the stored value (2^-8 relative) plus f32 noise.
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let yb = rms_norm(&xb, &wb, hidden, eps).unwrap();
        let want = rms_norm_f64(&to_f64(&xb), &to_f64(&wb), hidden, f64::from(eps));
        for (i, (&g, &r)) in yb.iter().zip(&want).enumerate() {
            prop_assert!((f64::from(g.to_f32()) - r).abs() <= (2f64.powi(-8) + 1e-5) * r.abs() + 1e-30, "bf16 y[{}] = {} vs f64 {}", i, g, r);
        }
    }

    #[test]
    fn fused_add_rms_norm_updates_residual_then_normalizes(
        rows in 1usize..5,
        hidden in 1usize..400,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        fused_add_props::<f32>(&mut rng, rows, hidden, 1e-6);
        fused_add_props::<bf16>(&mut rng, rows, hidden, 1e-6);
    }

    #[test]
    fn rms_norm_shape_errors(
        len in 0usize..40,
        hidden in 0usize..8,
        wlen in 0usize..8,
        rlen in 0usize..40,
    ) {
        let x = vec![1.0f32; len];
        let w = vec![1.0f32; wlen];
        let ok = hidden != 0 && wlen == hidden && len % hidden == 0;
        let r = rms_norm(&x, &w, hidden, 1e-6);
        prop_assert_eq!(r.is_ok(), ok, "rms_norm len {} hidden {} weight {}: {:?}", len, hidden, wlen, r);
        if let Ok(y) = r {
            prop_assert_eq!(y.len(), len);
        }
        let mut res = vec![2.0f32; rlen];
        let r = fused_add_rms_norm(&x, &mut res, &w, hidden, 1e-6);
        let ok = ok && rlen == len;
        prop_assert_eq!(r.is_ok(), ok, "fused len {} hidden {} weight {} residual {}: {:?}", len, hidden, wlen, rlen, r);
        if !ok {
            prop_assert!(res.iter().all(|&v| v == 2.0), "residual modified on error");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE / YaRN
// ---------------------------------------------------------------------------------------------

fn v3_yarn() -> YarnScaling {
    kernels::cases::DEEPSEEK_V3_YARN
}

fn v3_rope() -> RopeParams {
    RopeParams::new(10000.0, 64, Some(v3_yarn())).unwrap()
}

/// V3's YaRN context: 4096 * 40.
const V3_MAX_POS: usize = 163_840;

/// The spec's (lo, hi) correction range: floor(D(beta_fast)), ceil(D(beta_slow)), clamped to
/// [0, d-1], hi += 0.001 when they meet.
fn spec_lo_hi(theta: f64, d: usize, y: &YarnScaling) -> (f64, f64) {
    let dd = d as f64;
    let dim_for = |b: f64| {
        dd * (y.original_max_position_embeddings as f64 / (b * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * theta.ln())
    };
    let lo = dim_for(y.beta_fast).floor().clamp(0.0, dd - 1.0);
    let mut hi = dim_for(y.beta_slow).ceil().clamp(0.0, dd - 1.0);
    if lo == hi {
        hi += 0.001;
    }
    (lo, hi)
}

/// f_i of spec §3.2.
fn spec_inv_freq(theta: f64, d: usize, yarn: Option<&YarnScaling>) -> Vec<f64> {
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    let Some(y) = yarn else { return base };
    let (lo, hi) = spec_lo_hi(theta, d, y);
    base.iter()
        .enumerate()
        .map(|(i, &f)| {
            let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
            f / y.factor * ramp + f * (1.0 - ramp)
        })
        .collect()
}

fn assert_close_rel(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs(),
            "{what}[{i}]: {g:e} vs {w:e}"
        );
    }
}

#[test]
fn rope_v3_yarn_constants() {
    let p = v3_rope();
    assert_eq!(p.cos_sin_scale(), 1.0);
    let m = 0.1 * 40f64.ln() + 1.0;
    assert!(
        (p.softmax_mscale() - m).abs() <= 1e-15 * m,
        "{}",
        p.softmax_mscale()
    );
    assert!((m - 1.368_887_945_411_393_6).abs() < 1e-12);

    let (lo, hi) = spec_lo_hi(10000.0, 64, &v3_yarn());
    assert_eq!(
        (lo, hi),
        (10.0, 23.0),
        "V3 correction range from the spec formula"
    );

    let f = p.inv_freq();
    assert_eq!(f.len(), 32);
    let want = spec_inv_freq(10000.0, 64, Some(&v3_yarn()));
    assert_close_rel(&f, &want, 1e-12, "V3 inv_freq");
    for (i, &fi) in f.iter().enumerate() {
        let base = 10000f64.powf(-(2.0 * i as f64) / 64.0);
        if i as f64 >= hi {
            assert!(
                (fi - base / 40.0).abs() <= 1e-14 * fi,
                "f[{i}] = {fi:e}, want base/40 {:e}",
                base / 40.0
            );
        } else if i as f64 <= lo {
            assert!(
                (fi - base).abs() <= 1e-14 * fi,
                "f[{i}] = {fi:e}, want base {base:e}"
            );
        } else {
            // Strictly between interpolation and extrapolation.
            assert!(fi < base && fi > base / 40.0, "f[{i}] = {fi:e} not blended");
        }
    }
    // Without YaRN the frequencies are plain theta^(-2i/d).
    let plain = RopeParams::new(10000.0, 64, None).unwrap();
    assert_close_rel(
        &plain.inv_freq(),
        &spec_inv_freq(10000.0, 64, None),
        1e-12,
        "plain inv_freq",
    );
    assert_eq!(plain.cos_sin_scale(), 1.0);
    assert_eq!(plain.softmax_mscale(), 1.0);
}

#[test]
fn rope_yarn_degenerate_correction_range() {
    // Both correction dims fall just below 0: lo = max(floor(-0.7), 0) = 0, hi = ceil(-0.37) = 0,
    // so hi becomes 0.001 and every pair but the first is fully interpolated.
    let y = YarnScaling {
        factor: 8.0,
        original_max_position_embeddings: 4096,
        beta_fast: 800.0,
        beta_slow: 724.3,
        mscale: 1.0,
        mscale_all_dim: 1.0,
    };
    let (lo, hi) = spec_lo_hi(10000.0, 64, &y);
    assert_eq!((lo, hi), (0.0, 0.001));
    let p = RopeParams::new(10000.0, 64, Some(y.clone())).unwrap();
    let f = p.inv_freq();
    let want = spec_inv_freq(10000.0, 64, Some(&y));
    assert_close_rel(&f, &want, 1e-12, "degenerate inv_freq");
    assert_eq!(f[0], 1.0);
    assert!((f[1] - 10000f64.powf(-2.0 / 64.0) / 8.0).abs() <= 1e-15);
}

#[test]
fn rope_invalid_params_are_errors() {
    let bad_yarn = |f: &dyn Fn(&mut YarnScaling)| {
        let mut y = v3_yarn();
        f(&mut y);
        RopeParams::new(10000.0, 64, Some(y))
    };
    for (what, r) in [
        ("odd rope_dim", RopeParams::new(10000.0, 63, None)),
        ("rope_dim 0", RopeParams::new(10000.0, 0, None)),
        ("theta 1", RopeParams::new(1.0, 64, None)),
        ("theta 0.5", RopeParams::new(0.5, 64, None)),
        ("theta -1", RopeParams::new(-1.0, 64, None)),
        ("theta NaN", RopeParams::new(f64::NAN, 64, None)),
        ("theta inf", RopeParams::new(f64::INFINITY, 64, None)),
        ("factor 0.5", bad_yarn(&|y| y.factor = 0.5)),
        ("factor 0", bad_yarn(&|y| y.factor = 0.0)),
        ("factor NaN", bad_yarn(&|y| y.factor = f64::NAN)),
        ("factor inf", bad_yarn(&|y| y.factor = f64::INFINITY)),
        (
            "original 0",
            bad_yarn(&|y| y.original_max_position_embeddings = 0),
        ),
        ("beta_fast 0", bad_yarn(&|y| y.beta_fast = 0.0)),
        ("beta_slow -1", bad_yarn(&|y| y.beta_slow = -1.0)),
        ("beta_slow NaN", bad_yarn(&|y| y.beta_slow = f64::NAN)),
    ] {
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "{what}: expected InvalidArgument, got {r:?}"
        );
    }
    // factor 1 (no stretching) is valid.
    assert!(bad_yarn(&|y| y.factor = 1.0).is_ok());
}

/// A [tokens, heads, nope + rope_dim] q-like buffer with the rotary part at offset `nope`.
fn q_layout(tokens: usize, heads: usize, nope: usize, rope_dim: usize) -> RopeLayout {
    RopeLayout {
        tokens,
        heads,
        token_stride: heads * (nope + rope_dim),
        head_stride: nope + rope_dim,
        offset: nope,
    }
}

/// Start of each rotary slice of the layout.
fn rope_starts(l: &RopeLayout) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for t in 0..l.tokens {
        for h in 0..l.heads {
            v.push((t, t * l.token_stride + h * l.head_stride + l.offset));
        }
    }
    v
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rope_inv_freq_and_scales_match_spec(
        theta in 100.0f64..1e6,
        half in 1usize..128,
        factor in 1.0f64..64.0,
        original in 256usize..131_072,
        beta_fast in 8.0f64..64.0,
        beta_slow in 0.25f64..4.0,
        mscale in 0.0f64..2.0,
        mscale_all_dim in 0.0f64..2.0,
        use_yarn: bool,
    ) {
        let d = 2 * half;
        let y = YarnScaling { factor, original_max_position_embeddings: original, beta_fast, beta_slow, mscale, mscale_all_dim };
        let yarn = use_yarn.then_some(y.clone());
        let p = RopeParams::new(theta, d, yarn.clone()).unwrap();
        let got = p.inv_freq();
        let want = spec_inv_freq(theta, d, yarn.as_ref());
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g - w).abs() <= 1e-12 * w, "f[{}] = {:e} vs spec {:e}", i, g, w);
        }
        prop_assert_eq!(got.len(), d / 2);
        // YaRN only ever slows frequencies down, by at most the factor.
        let plain = spec_inv_freq(theta, d, None);
        for (&g, &b) in got.iter().zip(&plain) {
            prop_assert!(g <= b * (1.0 + 1e-12) && g >= b / factor * (1.0 - 1e-12));
        }
        let ym = |m: f64| 0.1 * m * factor.ln() + 1.0;
        let (scale, soft) = if use_yarn {
            (ym(mscale) / ym(mscale_all_dim), if mscale_all_dim != 0.0 { ym(mscale_all_dim) } else { 1.0 })
        } else {
            (1.0, 1.0)
        };
        prop_assert!((p.cos_sin_scale() - scale).abs() <= 1e-12 * scale);
        prop_assert!((p.softmax_mscale() - soft).abs() <= 1e-12 * soft);
        // cos/sin carry the scale: cos^2 + sin^2 = scale^2.
        let pos = (theta as usize) % 5000;
        for [c, s] in p.cos_sin(pos) {
            let r = (f64::from(c).powi(2) + f64::from(s).powi(2)).sqrt();
            prop_assert!((r - scale).abs() <= 1e-6 * scale);
        }
    }

    #[test]
    fn rope_table_equals_cos_sin(
        theta in 2.0f64..1e6,
        half in 1usize..64,
        n in 0usize..48,
        use_yarn: bool,
    ) {
        let yarn = use_yarn.then(v3_yarn);
        let p = RopeParams::new(theta, 2 * half, yarn).unwrap();
        let table = p.cos_sin_table(n);
        prop_assert_eq!(table.len(), n * 2 * half);
        for pos in 0..n {
            let row: Vec<u32> = p.cos_sin(pos).iter().flatten().map(|v| v.to_bits()).collect();
            let trow: Vec<u32> = table[pos * 2 * half..(pos + 1) * 2 * half].iter().map(|v| v.to_bits()).collect();
            prop_assert_eq!(row, trow, "position {}", pos);
        }
    }

    #[test]
    fn apply_rope_rotates_pairs(
        tokens in 1usize..5,
        heads in 1usize..5,
        nope in prop::sample::select(vec![0usize, 3, 128]),
        seed: u64,
    ) {
        let p = v3_rope();
        let d = p.rope_dim;
        let mut rng = Rng::new(seed);
        let layout = q_layout(tokens, heads, nope, d);
        let tail = rng.below(5) as usize;
        let x0: Vec<f32> = rng.normal_vec(tokens * heads * (nope + d) + tail, 2.0);
        let positions: Vec<i32> = (0..tokens)
            .map(|_| match rng.below(3) {
                0 => rng.below(64) as i32,
                1 => rng.below(4096) as i32,
                _ => rng.below(V3_MAX_POS as u64) as i32,
            })
            .collect();
        let freqs = spec_inv_freq(10000.0, d, Some(&v3_yarn()));

        // Position 0 is the identity.
        let mut x = x0.clone();
        apply_rope(&mut x, &layout, &vec![0; tokens], &p, V3_MAX_POS).unwrap();
        prop_assert!(x == x0, "position 0 changed the input");

        let mut x = x0.clone();
        apply_rope(&mut x, &layout, &positions, &p, V3_MAX_POS).unwrap();
        let mut touched = vec![false; x.len()];
        for (t, start) in rope_starts(&layout) {
            let pos = positions[t];
            let cs = p.cos_sin(pos as usize);
            for i in 0..d / 2 {
                let (a, b) = (start + 2 * i, start + 2 * i + 1);
                touched[a] = true;
                touched[b] = true;
                let (x0a, x0b) = (f64::from(x0[a]), f64::from(x0[b]));
                let (ya, yb) = (f64::from(x[a]), f64::from(x[b]));
                let n0 = x0a.hypot(x0b);
                let n1 = ya.hypot(yb);
                // Norm preserved (cos_sin_scale is 1 for V3).
                prop_assert!((n1 - n0).abs() <= 1e-5 * n0, "t {} pair {}: norm {} -> {}", t, i, n0, n1);
                // The angle is p * f_i with f_i from the spec, computed here in f64.
                let ang = f64::from(pos) * freqs[i];
                let (wa, wb) = (x0a * ang.cos() - x0b * ang.sin(), x0a * ang.sin() + x0b * ang.cos());
                prop_assert!((ya - wa).abs() <= 2e-6 * n0 && (yb - wb).abs() <= 2e-6 * n0,
                    "t {} pos {} pair {}: ({}, {}) vs f64 ({}, {})", t, pos, i, ya, yb, wa, wb);
                // Rotating back by -angle (cos, -sin) returns the input.
                let [c, s] = cs[i];
                let (c, s) = (f64::from(c), f64::from(s));
                let (ba, bb) = (ya * c + yb * s, -ya * s + yb * c);
                prop_assert!((ba - x0a).abs() <= 1e-5 * n0 && (bb - x0b).abs() <= 1e-5 * n0,
                    "t {} pair {}: inverse ({}, {}) vs ({}, {})", t, i, ba, bb, x0a, x0b);
            }
        }
        // Everything outside the rotary slices is untouched.
        for (i, &tch) in touched.iter().enumerate() {
            if !tch {
                prop_assert_eq!(x[i].to_bits(), x0[i].to_bits(), "element {} outside the rotary part changed", i);
            }
        }

        // BF16: position 0 is also the identity.
        let xb0: Vec<bf16> = x0.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut xb = xb0.clone();
        apply_rope(&mut xb, &layout, &vec![0; tokens], &p, V3_MAX_POS).unwrap();
        prop_assert!(xb == xb0, "bf16 position 0 changed the input");
    }

    #[test]
    fn apply_rope_layout_errors(
        tokens in 0usize..4,
        heads in 0usize..4,
        token_stride in 0usize..200,
        head_stride in 0usize..100,
        offset in 0usize..100,
        len in 0usize..500,
        half in prop::sample::select(vec![1usize, 2, 32]),
    ) {
        let p = RopeParams::new(10000.0, 2 * half, None).unwrap();
        let layout = RopeLayout { tokens, heads, token_stride, head_stride, offset };
        let x0: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 + 1.0).collect();
        let positions: Vec<i32> = (0..tokens as i32).map(|t| t + 1).collect();
        let fits = tokens == 0
            || heads == 0
            || (tokens - 1) * token_stride + (heads - 1) * head_stride + offset + 2 * half <= len;
        let mut x = x0.clone();
        let r = apply_rope(&mut x, &layout, &positions, &p, 16);
        prop_assert_eq!(r.is_ok(), fits, "layout {:?} len {} rope_dim {}: {:?}", layout, len, 2 * half, r);
        if !fits {
            prop_assert!(matches!(r, Err(Error::Shape { .. })), "{:?}", r);
            prop_assert!(x == x0, "input modified on error");
        }
        if fits && tokens > 0 {
            // Wrong number of positions.
            for n in [tokens - 1, tokens + 1] {
                let mut x = x0.clone();
                let pos = vec![1i32; n];
                let r = apply_rope(&mut x, &layout, &pos, &p, 16);
                prop_assert!(matches!(r, Err(Error::Shape { .. })), "{} positions for {} tokens: {:?}", n, tokens, r);
                prop_assert!(x == x0);
            }
            // Out-of-range and negative positions.
            for bad in [16, 17, i32::MAX, -1, i32::MIN] {
                let mut pos = positions.clone();
                let k = tokens - 1;
                pos[k] = bad;
                let mut x = x0.clone();
                let r = apply_rope(&mut x, &layout, &pos, &p, 16);
                prop_assert!(matches!(r, Err(Error::IndexOutOfRange { .. })), "position {}: {:?}", bad, r);
            }
            // The last valid position is accepted.
            let mut pos = positions.clone();
            pos[0] = 15;
            let mut x = x0.clone();
            prop_assert!(apply_rope(&mut x, &layout, &pos, &p, 16).is_ok());
        }
    }
}

#[test]
fn apply_rope_empty_layouts_are_ok() {
    let p = v3_rope();
    let mut x: Vec<f32> = vec![];
    let empty = RopeLayout {
        tokens: 0,
        heads: 4,
        token_stride: 256,
        head_stride: 64,
        offset: 0,
    };
    assert!(apply_rope(&mut x, &empty, &[], &p, 10).is_ok());
    let no_heads = RopeLayout {
        tokens: 2,
        heads: 0,
        ..empty
    };
    assert!(apply_rope(&mut x, &no_heads, &[1, 2], &p, 10).is_ok());
}

/// Regression: `RopeLayout::check` once computed the last element with unchecked usize
/// arithmetic, so a huge stride panicked (debug) or wrapped (release) instead of erroring.
#[test]
fn apply_rope_huge_stride_is_an_error_not_a_panic() {
    let p = RopeParams::new(10000.0, 2, None).unwrap();
    let mut x = vec![0.0f32; 8];
    let layout = RopeLayout {
        tokens: 3,
        heads: 1,
        token_stride: usize::MAX / 2 + 1,
        head_stride: 0,
        offset: 0,
    };
    let r =
        std::panic::catch_unwind(move || apply_rope(&mut x, &layout, &[0, 0, 0], &p, 4).is_err());
    assert!(matches!(r, Ok(true)), "expected Err, got a panic or Ok");
}

// ---------------------------------------------------------------------------------------------
// SiLU-and-mul
// ---------------------------------------------------------------------------------------------

fn silu_f64(z: f64) -> f64 {
    z / (1.0 + (-z).exp())
}

/// [rows, 2*inter] gate|up with gates of every size (including far into both saturations).
fn gate_up(rng: &mut Rng, rows: usize, inter: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows * 2 * inter);
    for _ in 0..rows {
        for _ in 0..inter {
            x.push(match rng.below(4) {
                0 => rng.uniform(-100.0, 100.0),
                1 => rng.normal() * 0.01,
                _ => rng.normal() * 4.0,
            });
        }
        for _ in 0..inter {
            x.push(rng.normal() * 10f32.powf(rng.uniform(-2.0, 2.0)));
        }
    }
    x
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn silu_and_mul_matches_f64(rows in 1usize..5, inter in 1usize..300, seed: u64) {
        let mut rng = Rng::new(seed);
        let x = gate_up(&mut rng, rows, inter);
        let y = silu_and_mul(&x, inter).unwrap();
        prop_assert_eq!(y.len(), rows * inter);
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let yb = silu_and_mul(&xb, inter).unwrap();
        for r in 0..rows {
            for i in 0..inter {
                let g = f64::from(x[r * 2 * inter + i]);
                let u = f64::from(x[r * 2 * inter + inter + i]);
                let want = silu_f64(g) * u;
                let got = f64::from(y[r * inter + i]);
                // For z < -88.7, e^-z overflows f32 and silu(z) (< 1e-36 in magnitude) becomes
                // -0; tiny products go subnormal: allow that absolute slack.
                let slack = 1e-35 * (1.0 + u.abs());
                prop_assert!((got - want).abs() <= 1e-6 * want.abs() + slack,
                    "row {} i {}: silu({}) * {} = {} vs f64 {}", r, i, g, u, got, want);
                let gb = f64::from(xb[r * 2 * inter + i].to_f32());
                let ub = f64::from(xb[r * 2 * inter + inter + i].to_f32());
                let want = silu_f64(gb) * ub;
                let got = f64::from(yb[r * inter + i].to_f32());
                prop_assert!((got - want).abs() <= (2f64.powi(-8) + 1e-6) * want.abs() + 1e-35 * (1.0 + ub.abs()),
                    "bf16 row {} i {}: {} vs f64 {}", r, i, got, want);
            }
        }
    }

    #[test]
    fn silu_and_mul_width_errors(len in 0usize..60, inter in 0usize..10) {
        let x = vec![0.5f32; len];
        let ok = inter != 0 && len % (2 * inter) == 0;
        let r = silu_and_mul(&x, inter);
        prop_assert_eq!(r.is_ok(), ok, "len {} inter {}: {:?}", len, inter, r);
        if let Ok(y) = r {
            prop_assert_eq!(y.len(), len / 2);
        }
        let q = silu_and_mul_quantize_fp8(&x, inter, false, ScaleLayout::TokenMajor);
        prop_assert_eq!(q.is_ok(), ok, "fused quantize len {} inter {}", len, inter);
    }
}

// ---------------------------------------------------------------------------------------------
// FP8 activation quantization
// ---------------------------------------------------------------------------------------------

/// [tokens, channels] with a different magnitude per 128-channel block (1e-7 .. 1e4, so some
/// blocks sit below the 1e-4 amax floor), exact zeros and occasional outliers.
fn fp8_input(rng: &mut Rng, tokens: usize, channels: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(tokens * channels);
    for _ in 0..tokens {
        let mut block_scale = 1.0;
        for c in 0..channels {
            if c % FP8_BLOCK == 0 {
                block_scale = 10f32.powf(rng.uniform(-7.0, 4.0));
            }
            x.push(match rng.below(50) {
                0 => 0.0,
                1 => rng.normal() * block_scale * 100.0,
                _ => rng.normal() * block_scale,
            });
        }
    }
    x
}

fn is_pow2(v: f32) -> bool {
    v.is_normal() && v > 0.0 && v.to_bits() & 0x007f_ffff == 0
}

/// Checks the spec §4 contract for one quantization of `x` (values as f32).
fn check_quantized(x: &[f32], a: &Fp8Activations, channels: usize, ue8m0: bool) {
    let tokens = x.len() / channels;
    assert_eq!((a.tokens, a.channels), (tokens, channels));
    assert_eq!(a.q.len(), x.len());
    assert_eq!(
        a.scales.len(),
        Fp8Activations::scale_len(tokens, channels, a.layout)
    );
    let deq = dequantize_fp8(a);
    assert_eq!(deq.len(), x.len());
    let blocks = channels.div_ceil(128);
    for t in 0..tokens {
        for b in 0..blocks {
            let range = t * channels + b * 128..t * channels + ((b + 1) * 128).min(channels);
            let amax = x[range.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let plain = amax.max(1e-4) / 448.0;
            let s = a.scale(t, b);
            if ue8m0 {
                assert!(
                    is_pow2(s),
                    "({t},{b}): ue8m0 scale {s:e} is not a power of two"
                );
                assert!(
                    s >= plain && s < 2.0 * plain,
                    "({t},{b}): ue8m0 scale {s:e} vs {plain:e}"
                );
                if is_pow2(plain) {
                    assert_eq!(s, plain);
                }
            } else {
                assert_eq!(s, plain, "({t},{b}): scale for amax {amax:e}");
            }
            for i in range {
                let (xi, code) = (x[i], a.q[i].0);
                assert_eq!(code, e4m3_from_f32(xi / s), "x[{i}] = {xi:e}, scale {s:e}");
                assert_ne!(code & 0x7f, 0x7f, "finite input quantized to NaN");
                let d = e4m3_to_f32(code) * s;
                assert_eq!(d.to_bits(), deq[i].to_bits(), "dequantize_fp8[{i}]");
                let (d, xf, sf) = (f64::from(d), f64::from(xi), f64::from(s));
                let amax_eff = f64::from(amax.max(1e-4));
                assert!(
                    d.abs() <= amax_eff * (1.0 + 2f64.powi(-3)),
                    "|deq| {d:e} exceeds block amax {amax:e}"
                );
                if !ue8m0 {
                    assert!(d.abs() <= amax_eff * (1.0 + 1e-6));
                }
                // Half an e4m3 ulp: 2^-4 relative in the normal range (|x/s| >= 2^-6), 2^-10 * s
                // absolute among the subnormals; plus f32 rounding of x/s and q*s.
                let bound = if (xf / sf).abs() >= 2f64.powi(-6) {
                    2f64.powi(-4) * xf.abs()
                } else {
                    2f64.powi(-10) * sf
                };
                assert!(
                    (d - xf).abs() <= bound * (1.0 + 1e-6) + 1e-6 * xf.abs(),
                    "x[{i}] = {xf:e} -> {d:e} (scale {sf:e}), error above {bound:e}"
                );
            }
            // With the plain scale the block's amax maps to +-448.
            if !ue8m0 && amax >= 1e-4 {
                let top = x[t * channels + b * 128..]
                    .iter()
                    .take(128.min(channels - b * 128))
                    .position(|v| v.abs() == amax)
                    .unwrap();
                let code = a.q[t * channels + b * 128 + top].0;
                assert_eq!(code & 0x7f, 0x7e, "amax {amax:e} quantized to {code:#04x}");
            }
        }
    }
}

fn channels_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..400,
        prop::sample::select(vec![127usize, 128, 129, 255, 256, 384, 513, 1000]),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn quantize_fp8_scales_codes_and_error(
        tokens in 1usize..5,
        channels in channels_strategy(),
        ue8m0: bool,
        block_major: bool,
        seed: u64,
    ) {
        let layout = if block_major { ScaleLayout::BlockMajor } else { ScaleLayout::TokenMajor };
        let mut rng = Rng::new(seed);
        let x = fp8_input(&mut rng, tokens, channels);
        let a = quantize_fp8(&x, channels, ue8m0, layout).unwrap();
        prop_assert_eq!(a.layout, layout);
        check_quantized(&x, &a, channels, ue8m0);

        // BF16 input: quantized from its exact f32 value.
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let ab = quantize_fp8(&xb, channels, ue8m0, layout).unwrap();
        let xbf: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
        check_quantized(&xbf, &ab, channels, ue8m0);
        prop_assert_eq!(&ab, &quantize_fp8(&xbf, channels, ue8m0, layout).unwrap());
    }

    #[test]
    fn quantize_fp8_layouts_agree(
        tokens in 1usize..10,
        channels in channels_strategy(),
        ue8m0: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let x = fp8_input(&mut rng, tokens, channels);
        let tm = quantize_fp8(&x, channels, ue8m0, ScaleLayout::TokenMajor).unwrap();
        let bm = quantize_fp8(&x, channels, ue8m0, ScaleLayout::BlockMajor).unwrap();
        prop_assert!(tm.q == bm.q, "codes differ between layouts");
        let blocks = channels.div_ceil(128);
        let stride = tokens.div_ceil(4) * 4;
        prop_assert_eq!(tm.blocks(), blocks);
        prop_assert_eq!(tm.scales.len(), tokens * blocks);
        prop_assert_eq!(bm.scales.len(), blocks * stride);
        prop_assert_eq!(Fp8Activations::scale_len(tokens, channels, ScaleLayout::TokenMajor), tokens * blocks);
        prop_assert_eq!(Fp8Activations::scale_len(tokens, channels, ScaleLayout::BlockMajor), blocks * stride);
        for t in 0..tokens {
            for b in 0..blocks {
                prop_assert_eq!(tm.scale(t, b), bm.scale(t, b));
                prop_assert_eq!(tm.scales[t * blocks + b], tm.scale(t, b));
                prop_assert_eq!(bm.scales[b * stride + t], bm.scale(t, b));
                prop_assert_eq!(Fp8Activations::scale_index(tokens, channels, ScaleLayout::TokenMajor, t, b), t * blocks + b);
                prop_assert_eq!(Fp8Activations::scale_index(tokens, channels, ScaleLayout::BlockMajor, t, b), b * stride + t);
                prop_assert!(tm.scale(t, b) > 0.0);
            }
            // Padding of the block-major table is zero.
            for b in 0..blocks {
                for t in tokens..stride {
                    prop_assert_eq!(bm.scales[b * stride + t].to_bits(), 0, "padding ({}, {})", t, b);
                }
            }
        }
        let dt = dequantize_fp8(&tm);
        let db = dequantize_fp8(&bm);
        prop_assert!(dt == db, "dequantized values differ between layouts");
    }

    #[test]
    fn silu_and_mul_quantize_fp8_quantizes_f32_products(
        tokens in 1usize..5,
        inter in channels_strategy(),
        ue8m0: bool,
        block_major: bool,
        seed: u64,
    ) {
        let layout = if block_major { ScaleLayout::BlockMajor } else { ScaleLayout::TokenMajor };
        let mut rng = Rng::new(seed);
        let x = gate_up(&mut rng, tokens, inter);
        let fused = silu_and_mul_quantize_fp8(&x, inter, ue8m0, layout).unwrap();
        let products = silu_and_mul(&x, inter).unwrap();
        prop_assert_eq!(&fused, &quantize_fp8(&products, inter, ue8m0, layout).unwrap());
        check_quantized(&products, &fused, inter, ue8m0);

        // BF16 gate/up: the products are still taken in f32, with no BF16 rounding in between.
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let fused_b = silu_and_mul_quantize_fp8(&xb, inter, ue8m0, layout).unwrap();
        let xbf: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
        let products_b = silu_and_mul(&xbf, inter).unwrap();
        prop_assert_eq!(&fused_b, &quantize_fp8(&products_b, inter, ue8m0, layout).unwrap());
    }
}

#[test]
fn quantize_fp8_zero_rows() {
    for channels in [1usize, 100, 128, 300] {
        for layout in [ScaleLayout::TokenMajor, ScaleLayout::BlockMajor] {
            let tokens = 3;
            let x = vec![0.0f32; tokens * channels];
            let a = quantize_fp8(&x, channels, false, layout).unwrap();
            assert!(
                a.q.iter().all(|q| q.0 == 0),
                "zero input gave non-zero codes"
            );
            let floor = 1e-4f32 / 448.0;
            for t in 0..tokens {
                for b in 0..channels.div_ceil(128) {
                    assert_eq!(a.scale(t, b), floor);
                }
            }
            assert!(dequantize_fp8(&a).iter().all(|&v| v == 0.0));
            let a = quantize_fp8(&x, channels, true, layout).unwrap();
            assert!(a.q.iter().all(|q| q.0 == 0));
            for t in 0..tokens {
                for b in 0..channels.div_ceil(128) {
                    assert_eq!(
                        a.scale(t, b),
                        2f32.powi(-22),
                        "ue8m0 floor: next 2^k >= {floor:e}"
                    );
                }
            }
            // silu(0) * up = 0 too.
            let g = vec![0.0f32; tokens * 2 * channels];
            let a = silu_and_mul_quantize_fp8(&g, channels, false, layout).unwrap();
            assert!(a.q.iter().all(|q| q.0 == 0));
            assert!(a.scales.iter().enumerate().all(|(i, &s)| s == floor
                || (layout == ScaleLayout::BlockMajor && s == 0.0 && i % 4 == 3)));
        }
    }
}

#[test]
fn quantize_fp8_shape_errors() {
    let x = vec![1.0f32; 300];
    assert!(matches!(
        quantize_fp8(&x, 0, false, ScaleLayout::TokenMajor),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        quantize_fp8(&x, 7, false, ScaleLayout::TokenMajor),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        silu_and_mul_quantize_fp8(&x, 0, false, ScaleLayout::BlockMajor),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        silu_and_mul_quantize_fp8(&x, 100, false, ScaleLayout::BlockMajor),
        Err(Error::Shape { .. })
    ));
    let empty = quantize_fp8::<f32>(&[], 128, false, ScaleLayout::BlockMajor).unwrap();
    assert_eq!((empty.tokens, empty.q.len(), empty.scales.len()), (0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn embedding_gathers_rows(
        vocab in 1usize..60,
        hidden in 1usize..20,
        n in 0usize..20,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let table: Vec<u32> = (0..vocab * hidden).map(|i| i as u32).collect();
        let ids: Vec<i32> = (0..n).map(|_| rng.below(vocab as u64) as i32).collect();
        let out = embedding(&table, vocab, hidden, &ids).unwrap();
        prop_assert_eq!(out.len(), n * hidden);
        for (t, &id) in ids.iter().enumerate() {
            for h in 0..hidden {
                prop_assert_eq!(out[t * hidden + h], (id as usize * hidden + h) as u32);
            }
        }
        // bf16 tables gather bit-exactly too.
        let tb: Vec<bf16> = rng.normal_vec(vocab * hidden, 1.0);
        let ob = embedding(&tb, vocab, hidden, &ids).unwrap();
        for (t, &id) in ids.iter().enumerate() {
            prop_assert!(ob[t * hidden..(t + 1) * hidden] == tb[id as usize * hidden..(id as usize + 1) * hidden]);
        }

        // One bad id anywhere is an index error that names it.
        if n > 0 {
            let k = rng.below(n as u64) as usize;
            for bad in [vocab as i32, vocab as i32 + 7, -1, i32::MAX, i32::MIN] {
                let mut ids = ids.clone();
                ids[k] = bad;
                match embedding(&table, vocab, hidden, &ids) {
                    Err(e @ Error::IndexOutOfRange { .. }) => {
                        let msg = e.to_string();
                        prop_assert!(msg.contains(&format!("id {bad}")), "message does not name id {}: {}", bad, msg);
                    }
                    other => prop_assert!(false, "id {} at {}: expected IndexOutOfRange, got {:?}", bad, k, other),
                }
            }
        }
        // Table of the wrong size.
        let r = embedding(&table[1..], vocab, hidden, &ids);
        prop_assert!(matches!(r, Err(Error::Shape { .. })), "short table: {:?}", r);
    }
}

/// Regression: the table-size check once multiplied vocab * hidden unchecked.
#[test]
fn embedding_huge_shape_is_an_error_not_a_panic() {
    let r = std::panic::catch_unwind(|| embedding::<f32>(&[], usize::MAX, 2, &[]).is_err());
    assert!(matches!(r, Ok(true)), "expected Err, got a panic or Ok");
}

// ---------------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------------

/// Lowest index of the largest non-NaN value; 0 when every value is NaN.
fn argmax_ref(row: &[f32]) -> i32 {
    let mut best: Option<usize> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|b| v > row[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as i32
}

/// Logits from a small set (many ties), with NaN, +-inf sprinkled in.
fn tie_logits(rng: &mut Rng, n: usize, with_specials: bool) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(20) {
            0 if with_specials => f32::NAN,
            1 if with_specials => f32::NEG_INFINITY,
            _ => rng.below(5) as f32 - 2.0,
        })
        .collect()
}

fn uniform_params(rows: usize, temperature: f32, top_p: f32) -> Vec<SamplingParams> {
    vec![SamplingParams { temperature, top_p }; rows]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn argmax_ties_lowest_and_ignores_nan(rows in 1usize..6, vocab in 1usize..200, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut logits = tie_logits(&mut rng, rows * vocab, true);
        // One row entirely NaN.
        let nan_row = rng.below(rows as u64) as usize;
        if rng.below(2) == 0 {
            logits[nan_row * vocab..(nan_row + 1) * vocab].fill(f32::NAN);
        }
        let got = argmax(&logits, vocab).unwrap();
        let want: Vec<i32> = logits.chunks(vocab).map(argmax_ref).collect();
        prop_assert_eq!(&got, &want);

        // temperature 0 is greedy whatever top_p says.
        let top_p = rng.uniform(0.01, 1.0);
        let s = sample(&logits, vocab, &uniform_params(rows, 0.0, top_p), rng.next_u64(), rng.next_u64()).unwrap();
        prop_assert_eq!(&s, &want);
    }

    #[test]
    fn tiny_top_p_picks_the_unique_max(
        rows in 1usize..8,
        vocab in 2usize..300,
        temperature in 0.05f32..2.0,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let mut logits: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
        let mut want = Vec::new();
        for row in logits.chunks_mut(vocab) {
            // Make the maximum unique with a clear margin.
            let i = rng.below(vocab as u64) as usize;
            let second = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row[i] = second + 1.0;
            want.push(i as i32);
        }
        let s = sample(&logits, vocab, &uniform_params(rows, temperature, 1e-6), rng.next_u64(), rng.next_u64()).unwrap();
        prop_assert_eq!(s, want);
    }

    #[test]
    fn sampling_is_deterministic_in_seed_and_offset(seed: u64, offset in 0u64..1u64 << 40) {
        let (rows, vocab) = (64usize, 1000usize);
        let logits = vec![0.25f32; rows * vocab];
        let params = uniform_params(rows, 1.0, 1.0);
        let a = sample(&logits, vocab, &params, seed, offset).unwrap();
        let b = sample(&logits, vocab, &params, seed, offset).unwrap();
        prop_assert_eq!(&a, &b);
        // On a flat row the rule picks floor(u * vocab), u = sampling_uniform(seed, offset, row).
        for (t, &tok) in a.iter().enumerate() {
            let u = sampling_uniform(seed, offset, t as u64);
            prop_assert_eq!(tok, (u * vocab as f32).floor() as i32, "row {}", t);
        }
        let c = sample(&logits, vocab, &params, seed, offset + 1).unwrap();
        prop_assert!(a != c, "offset did not change any of {} rows", rows);
        // Row t with offset o + 1 draws the counter of row t + 1 with offset o.
        prop_assert_eq!(&c[..rows - 1], &a[1..]);
        let d = sample(&logits, vocab, &params, seed ^ 0x5555, offset).unwrap();
        prop_assert!(a != d, "seed did not change any of {} rows", rows);
    }
}

#[test]
fn sampling_tied_max_with_tiny_top_p_keeps_both() {
    // Equal values are in or out of the nucleus together.
    let mut rng = Rng::fresh();
    let rows = 400;
    let row = [0.0f32, 2.0, 1.0, 2.0, -1.0];
    let logits: Vec<f32> = row.iter().copied().cycle().take(rows * 5).collect();
    let s = sample(
        &logits,
        5,
        &uniform_params(rows, 1.0, 1e-6),
        rng.next_u64(),
        rng.next_u64(),
    )
    .unwrap();
    assert!(s.iter().all(|&t| t == 1 || t == 3), "{s:?}");
    assert!(
        s.contains(&1) && s.contains(&3),
        "one of the tied tokens never drawn"
    );
}

#[test]
fn sampling_invalid_params_are_errors() {
    let logits = vec![0.0f32; 2 * 10];
    let p = |temperature, top_p| vec![SamplingParams { temperature, top_p }; 2];
    for (t, tp) in [
        (-1.0, 1.0),
        (-1e-30, 1.0),
        (f32::NAN, 1.0),
        (f32::INFINITY, 1.0),
        (1.0, 0.0),
        (1.0, -0.5),
        (1.0, 1.0001),
        (1.0, f32::NAN),
        (0.0, 0.0),
    ] {
        let r = sample(&logits, 10, &p(t, tp), 1, 2);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. })),
            "temperature {t} top_p {tp}: {r:?}"
        );
    }
    // A bad row anywhere fails the call.
    let mut params = p(1.0, 0.9);
    params[1].top_p = 2.0;
    assert!(sample(&logits, 10, &params, 1, 2).is_err());
    // Params count must match rows; vocab must divide the logits.
    assert!(matches!(
        sample(&logits, 10, &p(1.0, 1.0)[..1], 1, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        sample(&logits, 10, &[SamplingParams::GREEDY; 3], 1, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        sample(&logits, 0, &[], 1, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        sample(&logits, 7, &p(1.0, 1.0), 1, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(argmax(&logits, 0), Err(Error::Shape { .. })));
    assert!(matches!(argmax(&logits, 3), Err(Error::Shape { .. })));
    // Valid boundary values.
    assert!(sample(&logits, 10, &p(0.0, 1.0), 1, 2).is_ok());
    assert!(sample(&logits, 10, &p(1e-3, f32::MIN_POSITIVE), 1, 2).is_ok());
}

/// Pearson chi-square statistic of `counts` against probabilities `probs` (summing to 1).
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| {
            let e = n as f64 * p;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

const DIST_LOGITS: [f32; 6] = [0.2, 1.1, -0.5, 1.4, 0.0, 0.9];

fn draw_counts(rows: usize, top_p: f32) -> Vec<usize> {
    let mut rng = Rng::fresh();
    let (seed, offset) = (rng.next_u64(), rng.next_u64() >> 1);
    let logits: Vec<f32> = DIST_LOGITS.iter().copied().cycle().take(rows * 6).collect();
    let s = sample(&logits, 6, &uniform_params(rows, 1.0, top_p), seed, offset).unwrap();
    let mut counts = vec![0usize; 6];
    for t in s {
        counts[t as usize] += 1;
    }
    counts
}

fn softmax_f64(l: &[f32]) -> Vec<f64> {
    let m = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = l
        .iter()
        .map(|&v| (f64::from(v) - f64::from(m)).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn sampling_distribution_matches_softmax() {
    let rows = 20_000;
    let counts = draw_counts(rows, 1.0);
    let probs = softmax_f64(&DIST_LOGITS);
    let chi2 = chi_square(&counts, &probs);
    // 5 degrees of freedom, significance 1e-6: the draws are fresh every run, so a 1e-3 level
    // failed one CI run in a thousand by chance (it did, on a correct sampler); a real bias (a
    // wrong temperature, a wrong nucleus) gives statistics in the hundreds at 20 000 draws.
    assert!(
        chi2 < 35.888,
        "chi-square {chi2:.2} >= 35.888: counts {counts:?} vs probs {probs:?}"
    );
}

#[test]
fn sampling_top_p_keeps_the_nucleus() {
    // Sorted probabilities: 3 (0.328), 1 (0.243), 5 (0.199), 0 (0.099), 4 (0.081), 2 (0.049);
    // the cumulative sum first reaches 0.6 at token 5 (0.572 -> 0.771), so the nucleus is {3, 1, 5}.
    let probs = softmax_f64(&DIST_LOGITS);
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    assert_eq!(order, [3, 1, 5, 0, 4, 2]);
    assert!(probs[3] + probs[1] < 0.59 && probs[3] + probs[1] + probs[5] > 0.61);
    let nucleus = [3usize, 1, 5];

    let rows = 20_000;
    let counts = draw_counts(rows, 0.6);
    for t in [0usize, 2, 4] {
        assert_eq!(
            counts[t], 0,
            "token {t} outside the nucleus drawn: {counts:?}"
        );
    }
    let mass: f64 = nucleus.iter().map(|&t| probs[t]).sum();
    let sub_counts: Vec<usize> = nucleus.iter().map(|&t| counts[t]).collect();
    let sub_probs: Vec<f64> = nucleus.iter().map(|&t| probs[t] / mass).collect();
    let chi2 = chi_square(&sub_counts, &sub_probs);
    // 2 degrees of freedom, significance 1e-6 (see sampling_distribution_matches_softmax).
    assert!(
        chi2 < 27.631,
        "chi-square {chi2:.2} >= 27.631: counts {sub_counts:?} vs {sub_probs:?}"
    );
}

/// Runs `f` on a helper thread; None if it does not finish within `secs` (the thread is left
/// behind, spinning, until the test binary exits).
fn with_timeout<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

#[test]
fn sampling_all_nan_row_with_full_top_p_gives_token_0() {
    let logits = vec![f32::NAN; 8];
    let r = with_timeout(5, move || {
        sample(&logits, 8, &uniform_params(1, 0.7, 1.0), 3, 4).unwrap()
    });
    assert_eq!(r, Some(vec![0]));
}

/// Regression: with top_p < 1, an all-NaN or all -inf row (weights exp(-inf - -inf) = NaN) once
/// made `nucleus_threshold` loop forever. The module doc says such a row gives token 0.
#[test]
fn sampling_all_nan_row_with_top_p_terminates() {
    for fill in [f32::NAN, f32::NEG_INFINITY] {
        let logits = vec![fill; 8];
        let r = with_timeout(5, move || {
            sample(&logits, 8, &uniform_params(1, 0.7, 0.9), 3, 4).unwrap()
        });
        assert_eq!(r, Some(vec![0]), "row of {fill}: hung or wrong token");
    }
}

/// Regression, same root cause: when the largest z = logit / temperature is +inf (a +inf logit,
/// or a tiny temperature such as 1e-39 that overflows z), the weights were NaN. The largest logit
/// must win.
#[test]
fn sampling_infinite_scaled_logit_picks_it() {
    for (row, temperature) in [
        (vec![0.0f32, f32::INFINITY, 0.0], 1.0f32),
        (vec![1.0f32, 3.0, 2.0], 1e-39),
    ] {
        for top_p in [1.0f32, 0.9] {
            let r = with_timeout(5, {
                let row = row.clone();
                move || sample(&row, 3, &uniform_params(1, temperature, top_p), 3, 4).unwrap()
            });
            assert_eq!(
                r,
                Some(vec![1]),
                "{row:?} temperature {temperature:e} top_p {top_p}"
            );
        }
    }
}
