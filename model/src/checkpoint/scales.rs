//! The load-time check of FP8 block scales (`weight_scale_inv`).
//!
//! A weight is `q * scale` per 128x128 block, so a NaN, infinite, zero or negative scale makes a
//! whole block of the weight NaN, infinite, zero or sign-flipped, silently. The released
//! checkpoints' scales are `max(amax, 1e-4) / 448`, always finite and positive, so anything else
//! is a corrupt file; scales are 1/16384 of the weight count, cheap to check while opening.

use safetensors::Dtype;

use crate::error::{ModelError, Result};

/// Checks that every scale of tensor `name` (little-endian `bytes` of `dtype`) is finite and
/// > 0. Dtypes other than F32 / BF16 / F16 are left to the dtype check.
pub(super) fn check(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<()> {
    let values: Box<dyn Iterator<Item = f32> + '_> = match dtype {
        Dtype::F32 => Box::new(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::BF16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Dtype::F16 => Box::new(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        _ => return Ok(()),
    };
    for (index, value) in values.enumerate() {
        if !(value.is_finite() && value > 0.0) {
            return Err(ModelError::InvalidScale {
                name: name.to_string(),
                index,
                value,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn only_finite_positive_scales_pass() {
        check("s", Dtype::F32, &f32_bytes(&[1e-4 / 448.0, 1.0, f32::MAX])).unwrap();
        for (bad, at) in [
            (f32::NAN, 1),
            (f32::INFINITY, 1),
            (f32::NEG_INFINITY, 1),
            (0.0, 1),
            (-0.0, 1),
            (-1.0, 1),
        ] {
            let e = check("x.weight_scale_inv", Dtype::F32, &f32_bytes(&[1.0, bad])).unwrap_err();
            assert!(
                matches!(&e, ModelError::InvalidScale { name, index, .. } if name == "x.weight_scale_inv" && *index == at),
                "{e}"
            );
            assert!(e.to_string().contains("x.weight_scale_inv"), "{e}");
        }
        let nan = half::bf16::NAN.to_le_bytes();
        assert!(check("s", Dtype::BF16, &nan).is_err());
    }
}
