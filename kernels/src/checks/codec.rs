//! The host e4m3 codec against the hardware conversion.

use super::CheckReport;
use crate::dtype::{e4m3_from_f32, e4m3_to_f32, E4m3};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops;
use crate::rng::Rng;

/// Inputs that stress the conversion: every code's value and the midpoints between neighbours
/// (ties), values just around them, the saturation edge, specials, and random f32 bit patterns.
pub fn e4m3_probe_inputs(rng: &mut Rng, random: usize) -> Vec<f32> {
    let mut xs = Vec::new();
    let finite: Vec<f32> = (0u8..=0x7e).map(e4m3_to_f32).collect();
    for w in finite.windows(2) {
        let mid = (w[0] + w[1]) / 2.0; // exact in f32
        for v in [
            w[0],
            mid,
            f32::from_bits(mid.to_bits() + 1),
            f32::from_bits(mid.to_bits() - 1),
        ] {
            xs.push(v);
            xs.push(-v);
        }
    }
    xs.extend([
        448.0,
        463.9,
        464.0,
        464.1,
        480.0,
        1e6,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.0,
        -0.0,
    ]);
    xs.extend([
        f32::MIN_POSITIVE,
        1e-40,
        2f32.powi(-10),
        2f32.powi(-10) * 1.5,
        2f32.powi(-11),
    ]);
    for _ in 0..random {
        let v = f32::from_bits(rng.next_u64() as u32);
        // Keep the interesting range dense: rescale most draws into e4m3's magnitudes.
        xs.push(if rng.below(4) == 0 {
            v
        } else {
            rng.normal() * 2f32.powi(rng.below(20) as i32 - 10)
        });
    }
    xs
}

pub fn check_e4m3_codec(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    // Decode: all 256 codes.
    let codes: Vec<E4m3> = (0..=255u8).map(E4m3).collect();
    let dq = gpu.upload(&codes, &[256])?;
    let mut dx = gpu.poisoned(&[256])?;
    ops::e4m3_to_f32(gpu, &dq, &mut dx)?;
    let decoded = gpu.download(&dx)?;
    let decode_mismatch = codes
        .iter()
        .zip(&decoded)
        .filter(|(c, g)| {
            let h = e4m3_to_f32(c.0);
            !(h.to_bits() == g.to_bits() || (h.is_nan() && g.is_nan()))
        })
        .count();
    // Encode: probes.
    let xs = e4m3_probe_inputs(rng, 1 << 20);
    let dxs = gpu.upload(&xs, &[xs.len()])?;
    let mut dcodes = gpu.poisoned(&[xs.len()])?;
    ops::f32_to_e4m3(gpu, &dxs, &mut dcodes)?;
    let got = gpu.download(&dcodes)?;
    let encode_mismatch = xs
        .iter()
        .zip(&got)
        .filter(|(x, g)| e4m3_from_f32(**x) != g.0)
        .count();
    Ok(CheckReport::new(
        "e4m3_codec",
        format!("256 codes + {} f32 inputs", xs.len()),
        "mismatches",
        encode_mismatch as f64,
        0.0,
    )
    .require(
        decode_mismatch == 0,
        format!("{decode_mismatch} of 256 codes decode differently"),
    ))
}
