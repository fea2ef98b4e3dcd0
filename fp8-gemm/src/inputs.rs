//! Random operands for tests, checks and benchmarks (fresh values from `kernels::rng::Rng`).

use kernels::dtype::E4m3;
use kernels::reference::fp8_quant::{quantize_fp8, Fp8Activations, ScaleLayout};
use kernels::rng::Rng;

use crate::layout::{weight_scale_len, K_BLOCK};
use crate::reference::{quantize_weights, Fp8Weights};

/// How operand values are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draw {
    /// Normal values quantized the way the model does (activations per 128 channels, weights per
    /// 128x128 block): realistic magnitudes, codes concentrated near the block maximum.
    Quantized,
    /// Uniformly random finite codes (every e4m3 value including subnormals and +-448) with
    /// random positive scales: exercises the whole code space and unrelated scales.
    Codes,
}

/// A uniformly random finite e4m3 code (0x7f and 0xff are NaN and excluded).
pub fn finite_code(rng: &mut Rng) -> E4m3 {
    loop {
        let c = rng.next_u64() as u8;
        if c & 0x7f != 0x7f {
            return E4m3(c);
        }
    }
}

/// A random positive scale: a power of two (as ue8m0 produces) or an arbitrary value, spanning
/// 2^-12 .. 2^4.
fn random_scale(rng: &mut Rng) -> f32 {
    let e = rng.uniform(-12.0, 4.0);
    if rng.next_u64() & 1 == 0 {
        e.round().exp2()
    } else {
        e.exp2()
    }
}

/// Activations `[m, k]` with block-major scales (the layout the GEMM kernels read).
pub fn activations(rng: &mut Rng, m: usize, k: usize, draw: Draw) -> Fp8Activations {
    match draw {
        Draw::Quantized => {
            let x: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            quantize_fp8(&x, k, false, ScaleLayout::BlockMajor).expect("k > 0")
        }
        Draw::Codes => {
            let layout = ScaleLayout::BlockMajor;
            let mut scales = vec![0.0f32; Fp8Activations::scale_len(m, k, layout)];
            for t in 0..m {
                for b in 0..k / K_BLOCK {
                    scales[Fp8Activations::scale_index(m, k, layout, t, b)] = random_scale(rng);
                }
            }
            Fp8Activations {
                q: (0..m * k).map(|_| finite_code(rng)).collect(),
                scales,
                tokens: m,
                channels: k,
                layout,
            }
        }
    }
}

/// Weights `[n, k]` with 128x128 block scales.
pub fn weights(rng: &mut Rng, n: usize, k: usize, draw: Draw) -> Fp8Weights {
    match draw {
        Draw::Quantized => {
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.02).collect();
            quantize_weights(&w, n, k).expect("k is a multiple of 128")
        }
        Draw::Codes => Fp8Weights::new(
            (0..n * k).map(|_| finite_code(rng)).collect(),
            (0..weight_scale_len(n, k))
                .map(|_| random_scale(rng))
                .collect(),
            n,
            k,
        )
        .expect("lengths match"),
    }
}
