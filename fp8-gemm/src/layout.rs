//! Operand layouts of the FP8 GEMMs: the one place they are defined. All matrices are row-major.
//!
//! Dense NT, `D[M,N] = A[M,K] . B[N,K]^T (+ residual[M,N])`:
//! - `A`: e4m3 `[M, K]`; its scales are the activation quantizer's block-major table
//!   (`kernels::reference::fp8_quant`, `ScaleLayout::BlockMajor`): `sa[b * round_up(M, 4) + m]`
//!   for K block `b`, i.e. `[K/128, round_up(M, 4)]`, produced directly by
//!   `kernels::ops::quantize_fp8`. One K block's scales for a tile of rows are contiguous, which is
//!   what the kernel's TMA load of a tile's scales wants.
//! - `B`: e4m3 `[N, K]` with f32 scales `[ceil(N/128), K/128]`: the checkpoint's
//!   `weight_scale_inv` as stored, one scale per 128x128 block.
//! - `D`, `residual`: BF16 `[M, N]`.
//!
//! Grouped contiguous (MoE prefill): `A [M, K]` holds the rows of every expert back to back, each
//! group's first row a multiple of [`GROUPED_M_ALIGN`] (pad with rows whose group index is -1);
//! `m_indices [M]` (i32, on the device) gives each row's group, equal within an aligned tile;
//! `B [G, N, K]` with scales `[G, ceil(N/128), K/128]`; `D [M, N]`; padding rows are not written.
//!
//! Grouped masked (MoE decode, CUDA-graph friendly): `A [G, M_max, K]` with scales
//! `[G, K/128, round_up(M_max, 4)]` (each group's block-major table back to back); `masked_m [G]`
//! (i32, on the device) valid rows per group, each in `0..=M_max`; `B [G, N, K]` as above;
//! `D [G, M_max, N]`; rows at or beyond `masked_m[g]` are neither computed nor written.
//!
//! Shape rules (checked on the host by every entry point): `M >= 1` (0 is a no-op), `N` a multiple
//! of [`N_ALIGN`], `K` a multiple of [`K_BLOCK`].

/// K per scale block (the activation quantization block and the weight block's K side).
pub const K_BLOCK: usize = 128;
/// Rows and columns per weight scale block.
pub const W_BLOCK: usize = 128;
/// N must be a multiple of this (16-byte BF16 output rows; 2112 = 1536 + 576 occurs in V3).
pub const N_ALIGN: usize = 16;
/// Row alignment of each group in the grouped contiguous layout (the grouped kernel's M tile).
pub const GROUPED_M_ALIGN: usize = 128;
/// Row padding of the block-major activation scale table (`kernels`' `BLOCK_MAJOR_ALIGN`).
pub const SCALE_ROW_ALIGN: usize = kernels::reference::fp8_quant::BLOCK_MAJOR_ALIGN;

/// Entries of the block-major activation scale table for `m` rows and `k` columns.
pub fn act_scale_len(m: usize, k: usize) -> usize {
    (k / K_BLOCK) * m.next_multiple_of(SCALE_ROW_ALIGN)
}

/// Entries of one weight scale table `[ceil(N/128), K/128]`.
pub fn weight_scale_len(n: usize, k: usize) -> usize {
    n.div_ceil(W_BLOCK) * (k / K_BLOCK)
}
