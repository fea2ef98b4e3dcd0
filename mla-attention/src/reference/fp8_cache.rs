//! The FP8 form of a cache entry (spec §6.2): 656 bytes per token per layer instead of 1152.
//!
//! # Byte layout of one entry (little-endian)
//!
//! | bytes       | contents                                                                 |
//! |-------------|--------------------------------------------------------------------------|
//! | `0..512`    | e4m3 codes of the 512 latent values, byte k = value k                     |
//! | `512..528`  | 4 f32 scales, scale j (bytes `512 + 4j ..`) covers latent values `128j .. 128j + 128` |
//! | `528..656`  | the 64 rotary values as BF16, value r at bytes `528 + 2r ..`              |
//!
//! Encoding (spec §4 applied to the latent): per 128 latent values, scale = max(amax, 1e-4) / 448
//! and code = e4m3(x / scale), round-to-nearest-even, saturating. The rotary values are kept in
//! BF16. Decoding: x = e4m3(code) * scale in f32 (and [`decode_cache_bf16`] rounds that to BF16
//! once, for a kernel that feeds its BF16 MMA with dequantized values). A paged FP8 cache is
//! `[num_blocks, 64, 656]` bytes with the same block table contract as [`super::paged`].

use super::paged::{paged_decode, PagedShape, BLOCK_SIZE};
use super::{DecodeOutput, KV_DIM, KV_LORA_RANK, ROPE_DIM};
use half::bf16;
use kernels::dtype::{e4m3_from_f32, e4m3_to_f32};
use kernels::error::check_len;
use kernels::reference::fp8_quant::block_scale;
use kernels::reference::FP8_BLOCK;
use kernels::{Error, Float, Result};

const OP: &str = "mla_fp8_cache";

/// Bytes of one FP8 cache entry: 512 codes + 4 * 4 scale bytes + 64 * 2 rope bytes.
pub const FP8_ENTRY_BYTES: usize = 656;
/// Offset of the e4m3 codes.
pub const CODES_OFFSET: usize = 0;
/// Offset of the 4 f32 scales.
pub const SCALES_OFFSET: usize = KV_LORA_RANK;
/// Offset of the 64 BF16 rotary values.
pub const ROPE_OFFSET: usize = SCALES_OFFSET + SCALE_COUNT * 4;
/// Scales per entry: one per 128 latent values.
pub const SCALE_COUNT: usize = KV_LORA_RANK / FP8_BLOCK;

const _: () = assert!(ROPE_OFFSET + ROPE_DIM * 2 == FP8_ENTRY_BYTES);

/// Encodes one entry `[c_kv (512) ; k_pe (64)]` into its 656 bytes.
pub fn encode_entry<T: Float>(entry: &[T]) -> Result<[u8; FP8_ENTRY_BYTES]> {
    check_len(OP, "entry", entry.len(), KV_DIM)?;
    let mut out = [0u8; FP8_ENTRY_BYTES];
    let latent: Vec<f32> = entry[..KV_LORA_RANK].iter().map(|v| v.to_f32()).collect();
    for (j, block) in latent.chunks_exact(FP8_BLOCK).enumerate() {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = block_scale(amax, false);
        for (k, v) in block.iter().enumerate() {
            out[CODES_OFFSET + j * FP8_BLOCK + k] = e4m3_from_f32(v / scale);
        }
        out[SCALES_OFFSET + 4 * j..][..4].copy_from_slice(&scale.to_le_bytes());
    }
    for (r, v) in entry[KV_LORA_RANK..].iter().enumerate() {
        let bits = bf16::from_f32(v.to_f32()).to_bits();
        out[ROPE_OFFSET + 2 * r..][..2].copy_from_slice(&bits.to_le_bytes());
    }
    Ok(out)
}

/// The scale of latent block `j` (0..4) of an encoded entry.
pub fn entry_scale(bytes: &[u8], j: usize) -> f32 {
    let b = &bytes[SCALES_OFFSET + 4 * j..][..4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Decodes one 656-byte entry to its 576 values in f32 (latent = e4m3(code) * scale).
pub fn decode_entry(bytes: &[u8]) -> Result<Vec<f32>> {
    check_len(OP, "entry bytes", bytes.len(), FP8_ENTRY_BYTES)?;
    let mut out = Vec::with_capacity(KV_DIM);
    for j in 0..SCALE_COUNT {
        let scale = entry_scale(bytes, j);
        let codes = &bytes[CODES_OFFSET + j * FP8_BLOCK..][..FP8_BLOCK];
        out.extend(codes.iter().map(|&c| e4m3_to_f32(c) * scale));
    }
    out.extend(
        bytes[ROPE_OFFSET..]
            .chunks_exact(2)
            .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
    );
    Ok(out)
}

/// Encodes a cache of 576-wide entries (any number of them, e.g. `[num_blocks, 64, 576]`).
pub fn encode_cache<T: Float>(cache: &[T]) -> Result<Vec<u8>> {
    if cache.len() % KV_DIM != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "cache has {} elements, not a multiple of {KV_DIM}",
                cache.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(cache.len() / KV_DIM * FP8_ENTRY_BYTES);
    for entry in cache.chunks_exact(KV_DIM) {
        out.extend_from_slice(&encode_entry(entry)?);
    }
    Ok(out)
}

/// Decodes a cache of 656-byte entries to f32 entries of 576 values.
pub fn decode_cache_f32(bytes: &[u8]) -> Result<Vec<f32>> {
    if bytes.len() % FP8_ENTRY_BYTES != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "FP8 cache has {} bytes, not a multiple of {FP8_ENTRY_BYTES}",
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / FP8_ENTRY_BYTES * KV_DIM);
    for entry in bytes.chunks_exact(FP8_ENTRY_BYTES) {
        out.extend(decode_entry(entry)?);
    }
    Ok(out)
}

/// Decodes a cache of 656-byte entries to BF16 (each f32 value rounded once; the rotary values
/// come back exactly).
pub fn decode_cache_bf16(bytes: &[u8]) -> Result<Vec<bf16>> {
    Ok(decode_cache_f32(bytes)?
        .into_iter()
        .map(bf16::from_f32)
        .collect())
}

/// Decode attention over a paged FP8 cache `[num_blocks, 64, 656]` bytes: the entries are
/// dequantized to f32 ([`decode_entry`]) and the math is [`paged_decode`]'s.
pub fn paged_decode_fp8<T: Float>(
    shape: &PagedShape,
    heads: usize,
    q: &[T],
    cache: &[u8],
    block_table: &[i32],
    cache_seqlens: &[i32],
    softmax_scale: f32,
) -> Result<DecodeOutput> {
    check_len(
        OP,
        "FP8 cache bytes",
        cache.len(),
        shape.num_blocks * BLOCK_SIZE * FP8_ENTRY_BYTES,
    )?;
    shape.check_tables(OP, block_table, cache_seqlens)?;
    let dequantized = decode_cache_f32(cache)?;
    paged_decode(
        shape,
        heads,
        q,
        &dequantized,
        block_table,
        cache_seqlens,
        softmax_scale,
    )
}
