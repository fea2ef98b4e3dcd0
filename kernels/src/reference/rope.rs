//! Rotary position embedding with YaRN scaling (spec §3.2), interleaved pairs:
//! (x[2i], x[2i+1]) is rotated by the angle p * f_i.
//!
//! Frequencies and cos/sin are computed in f64 and rounded to f32 once, so the same table serves
//! the reference and the CUDA kernel (which reads a table precomputed here rather than calling
//! sincosf on p * f_i: at p ~ 1e5 an f32 angle is off by ~1e-2 rad).

use crate::dtype::Float;
use crate::error::{Error, Result};

const OP: &str = "rope";

/// `rope_scaling` with `type: yarn` (DeepSeek-V3: factor 40, original 4096, beta 32 / 1, mscale 1).
#[derive(Clone, Debug, PartialEq)]
pub struct YarnScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
}

/// Everything RoPE needs: base, rotary width and the optional YaRN scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeParams {
    pub theta: f64,
    pub rope_dim: usize,
    pub yarn: Option<YarnScaling>,
}

/// YaRN's magnitude correction, 0.1 * m * ln(scale) + 1 (1 when the context is not stretched).
fn yarn_mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

impl RopeParams {
    pub fn new(theta: f64, rope_dim: usize, yarn: Option<YarnScaling>) -> Result<Self> {
        if rope_dim == 0 || rope_dim % 2 != 0 {
            return Err(Error::invalid(
                OP,
                format!("qk_rope_head_dim must be even and > 0, got {rope_dim}"),
            ));
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::invalid(
                OP,
                format!("rope_theta must be > 1, got {theta}"),
            ));
        }
        if let Some(y) = &yarn {
            if !(y.factor.is_finite() && y.factor >= 1.0) {
                return Err(Error::invalid(
                    OP,
                    format!("rope_scaling.factor must be >= 1, got {}", y.factor),
                ));
            }
            if y.original_max_position_embeddings == 0 {
                return Err(Error::invalid(
                    OP,
                    "rope_scaling.original_max_position_embeddings is 0",
                ));
            }
            if !(y.beta_fast > 0.0 && y.beta_slow > 0.0) {
                return Err(Error::invalid(
                    OP,
                    "rope_scaling.beta_fast and beta_slow must be > 0",
                ));
            }
        }
        Ok(RopeParams {
            theta,
            rope_dim,
            yarn,
        })
    }

    /// f_i for i in 0..rope_dim/2, YaRN-blended between interpolation and extrapolation.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.rope_dim as f64;
        let half = self.rope_dim / 2;
        let base: Vec<f64> = (0..half)
            .map(|i| self.theta.powf(-((2 * i) as f64) / d))
            .collect();
        let Some(y) = &self.yarn else {
            return base;
        };
        // Correction range: dims whose wavelength fits beta times into the original context.
        let dim_for = |beta: f64| {
            d * (y.original_max_position_embeddings as f64 / (beta * std::f64::consts::TAU)).ln()
                / (2.0 * self.theta.ln())
        };
        let lo = dim_for(y.beta_fast).floor().max(0.0);
        let mut hi = dim_for(y.beta_slow).ceil().min(d - 1.0);
        if lo == hi {
            hi += 0.001;
        }
        base.iter()
            .enumerate()
            .map(|(i, f)| {
                let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                f / y.factor * ramp + f * (1.0 - ramp)
            })
            .collect()
    }

    /// The factor cos and sin are multiplied by (1 for DeepSeek-V3, where mscale == mscale_all_dim).
    pub fn cos_sin_scale(&self) -> f64 {
        match &self.yarn {
            Some(y) => yarn_mscale(y.factor, y.mscale) / yarn_mscale(y.factor, y.mscale_all_dim),
            None => 1.0,
        }
    }

    /// m of spec §3.1: softmax_scale = (d_nope + d_rope)^-0.5 * m^2.
    pub fn softmax_mscale(&self) -> f64 {
        match &self.yarn {
            Some(y) if y.mscale_all_dim != 0.0 => yarn_mscale(y.factor, y.mscale_all_dim),
            _ => 1.0,
        }
    }

    /// (cos, sin) of every pair at `position`, f64 rounded to f32.
    pub fn cos_sin(&self, position: usize) -> Vec<[f32; 2]> {
        let scale = self.cos_sin_scale();
        self.inv_freq()
            .iter()
            .map(|f| {
                let angle = position as f64 * f;
                [(angle.cos() * scale) as f32, (angle.sin() * scale) as f32]
            })
            .collect()
    }

    /// The table the CUDA kernel reads: [max_positions, rope_dim/2, 2] as (cos, sin).
    pub fn cos_sin_table(&self, max_positions: usize) -> Vec<f32> {
        let scale = self.cos_sin_scale();
        let inv_freq = self.inv_freq();
        let mut table = Vec::with_capacity(max_positions * self.rope_dim);
        for p in 0..max_positions {
            for f in &inv_freq {
                let angle = p as f64 * f;
                table.push((angle.cos() * scale) as f32);
                table.push((angle.sin() * scale) as f32);
            }
        }
        table
    }
}

/// Where the rotary values sit inside a strided activation tensor: for token t and head h they
/// are `rope_dim` consecutive elements starting at `t * token_stride + h * head_stride + offset`.
/// (q: [T, H, 192] with offset 128; the cached k_pe: [T, 576] with one head and offset 512.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeLayout {
    pub tokens: usize,
    pub heads: usize,
    pub token_stride: usize,
    pub head_stride: usize,
    pub offset: usize,
}

impl RopeLayout {
    /// Checks that every addressed element lies inside a buffer of `len` elements.
    pub fn check(&self, len: usize, rope_dim: usize) -> Result<()> {
        if self.tokens == 0 || self.heads == 0 {
            return Ok(());
        }
        let too_far = || {
            Error::shape(
                OP,
                format!("layout {self:?} with rope_dim {rope_dim} overflows the address space"),
            )
        };
        // Checked: a corrupt stride must give an error, not a wrapped index that passes.
        let last = (self.tokens - 1)
            .checked_mul(self.token_stride)
            .and_then(|a| Some((a, (self.heads - 1).checked_mul(self.head_stride)?)))
            .and_then(|(a, b)| {
                a.checked_add(b)?
                    .checked_add(self.offset)?
                    .checked_add(rope_dim)
            })
            .ok_or_else(too_far)?;
        if last > len {
            return Err(Error::shape(
                OP,
                format!("layout {self:?} with rope_dim {rope_dim} reaches element {last}, buffer has {len}"),
            ));
        }
        Ok(())
    }
}

/// Rotates the rotary values of `x` in place. `positions[t]` must be in 0..max_positions (the
/// length of the cos/sin table the GPU uses; the same limit applies here so both agree).
pub fn apply_rope<T: Float>(
    x: &mut [T],
    layout: &RopeLayout,
    positions: &[i32],
    params: &RopeParams,
    max_positions: usize,
) -> Result<()> {
    layout.check(x.len(), params.rope_dim)?;
    if positions.len() != layout.tokens {
        return Err(Error::shape(
            OP,
            format!("{} positions for {} tokens", positions.len(), layout.tokens),
        ));
    }
    for (t, &p) in positions.iter().enumerate() {
        if p < 0 || p as usize >= max_positions {
            return Err(Error::index(
                OP,
                format!("token {t} has position {p}, the limit is {max_positions}"),
            ));
        }
        let cs = params.cos_sin(p as usize);
        for h in 0..layout.heads {
            let start = t * layout.token_stride + h * layout.head_stride + layout.offset;
            for (pair, [c, s]) in x[start..start + params.rope_dim]
                .chunks_exact_mut(2)
                .zip(&cs)
            {
                let (x0, x1) = (pair[0].to_f32(), pair[1].to_f32());
                pair[0] = T::from_f32(x0 * c - x1 * s);
                pair[1] = T::from_f32(x0 * s + x1 * c);
            }
        }
    }
    Ok(())
}
