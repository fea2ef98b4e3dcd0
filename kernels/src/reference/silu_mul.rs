//! SiLU-and-mul (spec §3): for each row [gate | up] of width 2*inter, out = silu(gate) * up with
//! silu(z) = z / (1 + e^-z), in f32.

use crate::dtype::Float;
use crate::error::{Error, Result};

pub(crate) const OP: &str = "silu_and_mul";

pub fn silu(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

/// `x` is [rows, 2*inter] with the gate half first (the fused gate_up projection's layout).
pub fn silu_and_mul<T: Float>(x: &[T], inter: usize) -> Result<Vec<T>> {
    let rows = check_gate_up(x.len(), inter)?;
    let mut out = Vec::with_capacity(rows * inter);
    for row in x.chunks_exact(2 * inter) {
        let (gate, up) = row.split_at(inter);
        out.extend(
            gate.iter()
                .zip(up)
                .map(|(g, u)| T::from_f32(silu(g.to_f32()) * u.to_f32())),
        );
    }
    Ok(out)
}

/// Number of rows of a [rows, 2*inter] gate/up tensor, or a shape error.
pub(crate) fn check_gate_up(len: usize, inter: usize) -> Result<usize> {
    if inter == 0 {
        return Err(Error::invalid(OP, "intermediate size is 0"));
    }
    if len % (2 * inter) != 0 {
        return Err(Error::shape(
            OP,
            format!("input has {len} elements, not a multiple of 2 * {inter}"),
        ));
    }
    Ok(len / (2 * inter))
}
