//! The e4m3 (`float8_e4m3fn`) codec of `kernels::dtype` against independent references written
//! here: a bit-field decode formula for all 256 codes, and a brute-force nearest-value encoder
//! (round to nearest, ties to even mantissa, saturating to +-448, NaN -> 0x7f) compared on random
//! f32 inputs of every magnitude and on every rounding boundary.

use kernels::dtype::{e4m3_from_f32, e4m3_to_f32, E4M3_MAX};
use kernels::rng::Rng;
use kernels::E4m3;

/// Independent decode: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is
/// subnormal (m * 2^-9); S.1111.111 is NaN; no infinities.
fn decode_ref(code: u8) -> f64 {
    let sign = if code >> 7 == 1 { -1.0 } else { 1.0 };
    let exp = i32::from((code >> 3) & 0xf);
    let mant = f64::from(code & 0x7);
    if exp == 15 && code & 0x7 == 7 {
        return f64::NAN;
    }
    let mag = if exp == 0 {
        mant * 2f64.powi(-9)
    } else {
        (8.0 + mant) * 2f64.powi(exp - 10)
    };
    sign * mag
}

/// The 127 finite non-negative codes' values, indexed by code (0x00..=0x7e).
fn positive_values() -> Vec<f64> {
    (0u8..=0x7e).map(decode_ref).collect()
}

/// Brute-force encoder: scans every finite code with the input's sign for the nearest value by
/// exact f64 distance, ties to the code whose mantissa LSB is 0; |x| >= 448 (inf included)
/// saturates to +-448; NaN gives 0x7f.
fn encode_ref(x: f32, table: &[f64]) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = f64::from(x.abs());
    if a >= 448.0 {
        return sign | 0x7e;
    }
    let mut best = 0u8;
    let mut best_d = f64::INFINITY;
    for (code, &v) in table.iter().enumerate() {
        let d = (a - v).abs(); // exact: both have at most 24 significant bits, close exponents
        let code = code as u8;
        if d < best_d || (d == best_d && code & 1 == 0) {
            best = code;
            best_d = d;
        }
    }
    sign | best
}

fn next_up(x: f32) -> f32 {
    // Finite, non-NaN inputs only.
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

#[test]
fn decode_all_256_codes_matches_bit_formula() {
    let mut nan_codes = Vec::new();
    for c in 0..=255u8 {
        let got = e4m3_to_f32(c);
        let want = decode_ref(c);
        assert_eq!(
            E4m3(c).to_f32().to_bits(),
            got.to_bits(),
            "E4m3::to_f32 code {c:#04x}"
        );
        if want.is_nan() {
            assert!(got.is_nan(), "code {c:#04x} should be NaN, got {got}");
            nan_codes.push(c);
            continue;
        }
        // Every e4m3 value is exact in f32 (and in f64): compare exactly, sign of zero included.
        assert_eq!(f64::from(got), want, "code {c:#04x}");
        assert_eq!(
            got.is_sign_negative(),
            c & 0x80 != 0,
            "sign of code {c:#04x}"
        );
    }
    assert_eq!(nan_codes, vec![0x7f, 0xff]);
    // Landmarks.
    assert_eq!(e4m3_to_f32(0x7e), 448.0);
    assert_eq!(e4m3_to_f32(0xfe), -448.0);
    assert_eq!(E4M3_MAX, 448.0);
    assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
    assert_eq!(e4m3_to_f32(0x07), 7.0 * 2f32.powi(-9)); // largest subnormal
    assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6)); // smallest normal
    assert_eq!(e4m3_to_f32(0x38), 1.0);
    assert_eq!(e4m3_to_f32(0x77), 240.0);
    assert_eq!(e4m3_to_f32(0x00).to_bits(), 0.0f32.to_bits());
    assert_eq!(e4m3_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
    // Finite values are strictly increasing in the code over 0x00..=0x7e.
    for c in 0..0x7eu8 {
        assert!(e4m3_to_f32(c) < e4m3_to_f32(c + 1), "code {c:#04x}");
    }
}

#[test]
fn encode_decode_round_trips_every_finite_code() {
    for c in 0..=255u8 {
        if c & 0x7f == 0x7f {
            continue; // NaN
        }
        let v = e4m3_to_f32(c);
        let back = e4m3_from_f32(v);
        assert_eq!(
            back, c,
            "code {c:#04x} (value {v}) encodes back to {back:#04x}"
        );
        assert_eq!(E4m3::from_f32(v), E4m3(c));
    }
    // -0 keeps its sign.
    assert_eq!(e4m3_from_f32(-0.0), 0x80);
    assert_eq!(e4m3_from_f32(0.0), 0x00);
    // NaN of either sign, and any payload, encodes to the canonical 0x7f.
    for nan in [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7fc0_1234),
        f32::from_bits(0xff80_0001),
    ] {
        assert_eq!(e4m3_from_f32(nan), 0x7f, "{:#010x}", nan.to_bits());
    }
    assert_eq!(E4m3::NAN, E4m3(0x7f));
    assert!(E4m3::NAN.to_f32().is_nan());
}

#[test]
fn saturation_and_landmarks() {
    let table = positive_values();
    let cases: &[(f32, u8)] = &[
        (448.0, 0x7e),
        (449.0, 0x7e),
        (463.99997, 0x7e),
        (464.0, 0x7e), // tie between 448 (mantissa 6, even) and the non-existent 480
        (464.00003, 0x7e),
        (480.0, 0x7e),
        (1e6, 0x7e),
        (f32::MAX, 0x7e),
        (f32::INFINITY, 0x7e),
        (-448.0, 0xfe),
        (-464.0, 0xfe),
        (-1e30, 0xfe),
        (f32::NEG_INFINITY, 0xfe),
        (432.0, 0x7e),                // tie 416 (mantissa 5) / 448 (mantissa 6) -> 448
        (431.99997, 0x7d),            // just below that tie -> 416
        (2f32.powi(-10), 0),          // tie 0 / 2^-9 -> 0 (even)
        (3.0 * 2f32.powi(-10), 0x02), // tie 2^-9 / 2^-8 -> code 2 (even)
        (1e-30, 0x00),
        (-1e-30, 0x80), // underflow keeps the sign
        (f32::from_bits(1), 0x00),
        (-f32::from_bits(1), 0x80),
        (1.0625, 0x38), // tie 1 / 1.125 -> 1.0 (even)
        (1.1875, 0x3a), // tie 1.125 / 1.25 -> 1.25 (even)
    ];
    for &(x, want) in cases {
        assert_eq!(encode_ref(x, &table), want, "reference disagrees on {x}");
        assert_eq!(
            e4m3_from_f32(x),
            want,
            "e4m3_from_f32({x:e}) [{:#010x}]",
            x.to_bits()
        );
    }
}

#[test]
fn encode_matches_brute_force_on_random_f32() {
    let table = positive_values();
    let mut rng = Rng::fresh();
    let check = |x: f32| {
        let got = e4m3_from_f32(x);
        let want = encode_ref(x, &table);
        assert_eq!(
            got,
            want,
            "e4m3_from_f32({x:e}) [bits {:#010x}] = {got:#04x} ({}), nearest is {want:#04x} ({})",
            x.to_bits(),
            e4m3_to_f32(got),
            e4m3_to_f32(want)
        );
    };
    // Uniform bit patterns: every exponent equally likely (subnormal f32, huge, inf, NaN).
    for _ in 0..100_000 {
        check(f32::from_bits(rng.next_u64() as u32));
    }
    // Log-uniform magnitudes over the e4m3 range and a bit beyond (2^-14 .. 2^10), both signs.
    for _ in 0..100_000 {
        let mag = 2f32.powf(rng.uniform(-14.0, 10.0));
        check(if rng.next_u64() & 1 == 0 { mag } else { -mag });
    }
    // Uniform in [-500, 500): dense over the large binades and the saturation region.
    for _ in 0..50_000 {
        check(rng.uniform(-500.0, 500.0));
    }
    // Specials.
    for x in [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
    ] {
        check(x);
    }
}

#[test]
fn encode_matches_brute_force_at_every_midpoint() {
    let table = positive_values();
    let mut checked = 0;
    // Midpoints between adjacent finite codes, plus 464 (448 and the non-existent 480).
    let mut mids: Vec<f64> = table.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    mids.push(464.0);
    for m in mids {
        let m32 = m as f32;
        assert_eq!(f64::from(m32), m, "midpoint {m} is exact in f32");
        for base in [m32, -m32] {
            for x in [base, next_up(base), next_down(base)] {
                let got = e4m3_from_f32(x);
                let want = encode_ref(x, &table);
                assert_eq!(
                    got,
                    want,
                    "e4m3_from_f32({x:e}) [bits {:#010x}] = {got:#04x} ({}), expected {want:#04x} ({})",
                    x.to_bits(),
                    e4m3_to_f32(got),
                    e4m3_to_f32(want)
                );
                checked += 1;
            }
        }
        // The rounding direction at the midpoint itself is the even code; just off it, the
        // nearer one.
        if m < 448.0 {
            let lo = table.iter().rposition(|&v| v < m).unwrap() as u8;
            let even = if lo & 1 == 0 { lo } else { lo + 1 };
            assert_eq!(e4m3_from_f32(m32), even, "tie at {m}");
            assert_eq!(e4m3_from_f32(next_down(m32)), lo, "below tie at {m}");
            assert_eq!(e4m3_from_f32(next_up(m32)), lo + 1, "above tie at {m}");
        }
    }
    assert_eq!(checked, 127 * 6);
}

#[test]
fn encoding_is_monotone() {
    let mut rng = Rng::fresh();
    let mut xs: Vec<f32> = Vec::new();
    // A strided sweep over every positive f32 bit pattern up to +inf, mirrored to negatives.
    let stride = 9_973u32;
    let mut b = rng.below(u64::from(stride)) as u32;
    while b <= f32::INFINITY.to_bits() {
        let x = f32::from_bits(b);
        xs.push(x);
        xs.push(-x);
        b += stride;
    }
    // Dense random values inside the e4m3 range and every code's value with its neighbours.
    for _ in 0..50_000 {
        xs.push(rng.uniform(-470.0, 470.0));
    }
    for c in 0..=0x7eu8 {
        let v = e4m3_to_f32(c);
        for x in [v, next_up(v), next_down(v)] {
            xs.push(x);
            xs.push(-x);
        }
    }
    xs.sort_by(f32::total_cmp);
    let mut prev = f32::NEG_INFINITY;
    let mut prev_x = f32::NEG_INFINITY;
    for &x in &xs {
        let v = e4m3_to_f32(e4m3_from_f32(x));
        assert!(!v.is_nan(), "{x:e} encoded to NaN");
        assert!(
            v >= prev,
            "not monotone: {prev_x:e} -> {prev}, {x:e} -> {v}"
        );
        assert!(v.abs() <= 448.0);
        prev = v;
        prev_x = x;
    }
}
