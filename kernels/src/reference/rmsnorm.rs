//! RMSNorm (spec §3): y = v / sqrt(mean(v^2) + eps) * w, in f32.

use crate::dtype::Float;
use crate::error::{check_len, Error, Result};

const OP: &str = "rms_norm";

/// Normalizes each row of `x` ([rows, hidden], row-major) with `weight` ([hidden]).
pub fn rms_norm<T: Float>(x: &[T], weight: &[T], hidden: usize, eps: f32) -> Result<Vec<T>> {
    check_rows(x.len(), weight.len(), hidden)?;
    let mut out = vec![T::default(); x.len()];
    for (row, out_row) in x.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
        let values: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
        normalize_into(&values, weight, eps, out_row);
    }
    Ok(out)
}

/// The fused form used between sub-layers: `residual <- x + residual` (rounded to T, as the
/// residual stream is stored), then the normalized sum is returned.
pub fn fused_add_rms_norm<T: Float>(
    x: &[T],
    residual: &mut [T],
    weight: &[T],
    hidden: usize,
    eps: f32,
) -> Result<Vec<T>> {
    check_rows(x.len(), weight.len(), hidden)?;
    check_len(OP, "residual", residual.len(), x.len())?;
    let mut out = vec![T::default(); x.len()];
    for ((row, res_row), out_row) in x
        .chunks_exact(hidden)
        .zip(residual.chunks_exact_mut(hidden))
        .zip(out.chunks_exact_mut(hidden))
    {
        let mut values = Vec::with_capacity(hidden);
        for (v, r) in row.iter().zip(res_row.iter_mut()) {
            *r = T::from_f32(v.to_f32() + r.to_f32());
            values.push(r.to_f32());
        }
        normalize_into(&values, weight, eps, out_row);
    }
    Ok(out)
}

fn normalize_into<T: Float>(values: &[f32], weight: &[T], eps: f32, out: &mut [T]) {
    let mean_sq = values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32;
    let inv_rms = 1.0 / (mean_sq + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(values).zip(weight) {
        *o = T::from_f32(v * inv_rms * w.to_f32());
    }
}

fn check_rows(x_len: usize, weight_len: usize, hidden: usize) -> Result<()> {
    if hidden == 0 {
        return Err(Error::invalid(OP, "hidden size is 0"));
    }
    check_len(OP, "weight", weight_len, hidden)?;
    if x_len % hidden != 0 {
        return Err(Error::shape(
            OP,
            format!("x has {x_len} elements, not a multiple of hidden size {hidden}"),
        ));
    }
    Ok(())
}
