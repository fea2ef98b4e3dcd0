//! Error metrics for comparing a kernel's output with its reference.

/// ||out - ref||_2 / ||ref||_2 in f64. NaN anywhere makes the result NaN (which never passes a
/// `<=` threshold); a zero reference with a non-zero output gives infinity.
pub fn rel_l2(out: impl IntoIterator<Item = f64>, reference: impl IntoIterator<Item = f64>) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (o, r) in out.into_iter().zip(reference) {
        diff += (o - r) * (o - r);
        norm += r * r;
    }
    if norm == 0.0 {
        return if diff == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (diff / norm).sqrt()
}

/// `rel_l2` over two slices of anything convertible to f32.
pub fn rel_l2_f32<A: Copy + Into<f32>, B: Copy + Into<f32>>(out: &[A], reference: &[B]) -> f64 {
    assert_eq!(out.len(), reference.len(), "rel_l2: length mismatch");
    rel_l2(
        out.iter().map(|&v| f64::from(v.into())),
        reference.iter().map(|&v| f64::from(v.into())),
    )
}

/// Whether an error value passes a threshold (NaN never does).
pub fn passes(err: f64, tol: f64) -> bool {
    err <= tol
}
