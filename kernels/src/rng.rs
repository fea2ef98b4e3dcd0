//! SplitMix64: the one random-number source of the workspace.
//!
//! Sampling must draw the same uniform number on the host reference and in the CUDA kernel
//! (`cuda/sampling.cu` implements the same three functions), so the generator is a small
//! counter-based hash we own rather than a crate's stream whose algorithm could change. Test inputs
//! use the same generator with a fresh seed per run.

/// The SplitMix64 finalizer: a bijective 64-bit mix.
pub const fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform f32 in [0, 1) from the top 24 bits of `bits` (every value exactly representable).
pub fn unit_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// The uniform number that row `row` of a sampling call with (`seed`, `offset`) draws.
pub fn sampling_uniform(seed: u64, offset: u64, row: u64) -> f32 {
    unit_f32(splitmix64(seed ^ splitmix64(offset.wrapping_add(row))))
}

/// A sequential generator for test and benchmark inputs.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator seeded from the clock and a process-wide counter: fresh inputs every run.
    pub fn fresh() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(splitmix64(
            nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32),
        ))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        unit_f32(self.next_u64())
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `n` values drawn from N(0, std^2), converted to `T`.
    pub fn normal_vec<T: crate::dtype::Float>(&mut self, n: usize, std: f32) -> Vec<T> {
        (0..n).map(|_| T::from_f32(self.normal() * std)).collect()
    }
}
