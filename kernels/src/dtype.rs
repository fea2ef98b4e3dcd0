//! Element types of device buffers, and the e4m3 (`float8_e4m3fn`) codec.
//!
//! The e4m3 codec is written by hand rather than taken from a float8 crate because the kernels'
//! contract is one specific conversion: round-to-nearest-even with saturation to +-448 (NaN stays
//! NaN), i.e. `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)` on the GPU. Host and device
//! must agree on every input; tests check all 256 codes and a brute-force nearest-value search.

use half::{bf16, f16};

/// Largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// One e4m3 (`float8_e4m3fn`) value, stored as its bit pattern.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct E4m3(pub u8);

impl E4m3 {
    /// The canonical NaN the hardware conversion produces.
    pub const NAN: E4m3 = E4m3(0x7f);

    pub fn from_f32(x: f32) -> Self {
        E4m3(e4m3_from_f32(x))
    }

    pub fn to_f32(self) -> f32 {
        e4m3_to_f32(self.0)
    }
}

/// Decodes an e4m3 bit pattern (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; the
/// all-ones exponent with all-ones mantissa is NaN, there are no infinities).
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((code >> 3) & 0x0f);
    let mant = f32::from(code & 0x07);
    if exp == 15 && code & 0x07 == 7 {
        return f32::NAN;
    }
    let magnitude = if exp == 0 {
        mant * 2f32.powi(-9) // subnormal: m/8 * 2^-6
    } else {
        (1.0 + mant / 8.0) * 2f32.powi(exp - 7)
    };
    sign * magnitude
}

/// All 256 decoded e4m3 values, indexed by code: the fast path for bulk decoding (CPU GEMMs
/// decode millions of codes; a table load beats the bit arithmetic above).
pub fn e4m3_decode_table() -> &'static [f32; 256] {
    static TABLE: std::sync::LazyLock<[f32; 256]> =
        std::sync::LazyLock::new(|| std::array::from_fn(|c| e4m3_to_f32(c as u8)));
    &TABLE
}

/// Encodes f32 as e4m3: round to nearest, ties to even, saturating to +-448; NaN -> 0x7f.
pub fn e4m3_from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= E4M3_MAX {
        // Everything from 448 up (inf included) saturates; 464, the midpoint to the next
        // unrepresentable step 480, would round to 448 anyway (even mantissa).
        return sign | 0x7e;
    }
    // Scaling by powers of two is exact, so each branch rounds exactly once.
    let code = if a < 2f32.powi(-6) {
        // Subnormal range: a quantum of 2^-9. q = 8 lands on the smallest normal, code 0x08.
        (a * 512.0).round_ties_even() as u8
    } else {
        let e = ((a.to_bits() >> 23) as i32) - 127; // floor(log2 a), a is a normal f32 here
        let q = (a * 2f32.powi(3 - e)).round_ties_even() as i32; // in 8..=16
        let (e, q) = if q == 16 { (e + 1, 8) } else { (e, q) };
        (((e + 7) << 3) | (q - 8)) as u8
    };
    sign | code
}

/// Element types that device buffers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
    E4m3,
    I32,
    U32,
    /// Raw bytes (a record layout such as the 656-byte FP8 MLA cache entry).
    U8,
}

impl DType {
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::E4m3 | DType::U8 => 1,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::E4m3 => "e4m3",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type with a fixed device element type.
pub trait Element: Copy + Default + Send + Sync + 'static {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for bf16 {
    const DTYPE: DType = DType::Bf16;
}
impl Element for f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for E4m3 {
    const DTYPE: DType = DType::E4m3;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

/// Floating-point activations the references compute on: loaded as f32, rounded once on store
/// (round-to-nearest-even, as the kernels' `__float2bfloat16_rn`).
pub trait Float: Element {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Float for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}
impl Float for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
impl Float for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
