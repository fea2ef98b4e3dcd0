//! Checks of `gpu::permute` against `reference::permute`, end to end on the device (topk_ids ->
//! layout -> dispatch / combine, no host round trip in between).
//!
//! What passes:
//! - layouts: counts, offsets, m_indices (all `rows_cap` rows: the reference's rows, then -1) and
//!   slot equal the reference exactly; outputs are poisoned with 0x7f bytes first (0xff would be
//!   a valid -1);
//! - dispatch: every row a pair maps to equals the reference bit for bit (codes, BF16 values and
//!   FP8 scales); every other row and scale entry still holds its 0xff poison (documented: padding
//!   is left untouched);
//! - combine: bit-exact with the reference (same f32 operations in the same fixed order), so the
//!   bound is 0 mismatching BF16 values; the padding rows of `y` are NaN, so reading one shows;
//! - bad ids and masked overflow set status code 5 and drop exactly the affected pairs.

use half::bf16;
use kernels::checks::CheckReport;
use kernels::error::Result;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::ops::Fp8Buffers;
use kernels::reference::fp8_quant::{quantize_fp8, Fp8Activations, ScaleLayout};
use kernels::rng::Rng;

use crate::gpu::permute as gp;
use crate::reference::permute as rp;

/// The grouped FP8 GEMM's M tile (`fp8_gemm::GROUPED_M_ALIGN`).
pub const GEMM_ALIGN: usize = 128;
/// Poison of i32 layout outputs: not a value any of them can legitimately hold.
const POISON_I32: u8 = 0x7f;

/// How test routings are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// `top_k` distinct experts per token, uniformly (what routing produces).
    Uniform,
    /// A few hot experts, most experts empty, repeats within a token allowed.
    Skewed,
    /// Every pair on one expert.
    OneExpert,
}

/// `[tokens, top_k]` expert ids drawn per `routing`.
pub fn routing_ids(
    rng: &mut Rng,
    routing: Routing,
    tokens: usize,
    top_k: usize,
    num_experts: usize,
) -> Vec<i32> {
    match routing {
        Routing::Uniform if top_k <= num_experts => {
            let mut ids = Vec::with_capacity(tokens * top_k);
            let mut experts: Vec<i32> = (0..num_experts as i32).collect();
            for _ in 0..tokens {
                for j in 0..top_k {
                    let pick = j + rng.below((num_experts - j) as u64) as usize;
                    experts.swap(j, pick);
                }
                ids.extend_from_slice(&experts[..top_k]);
            }
            ids
        }
        Routing::Uniform => (0..tokens * top_k)
            .map(|_| rng.below(num_experts as u64) as i32)
            .collect(),
        Routing::Skewed => {
            let hot = 1 + rng.below(num_experts.min(3) as u64) as usize;
            let stride = num_experts / hot;
            (0..tokens * top_k)
                .map(|_| (rng.below(hot as u64) as usize * stride) as i32)
                .collect()
        }
        Routing::OneExpert => vec![rng.below(num_experts as u64) as i32; tokens * top_k],
    }
}

fn mismatches<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count() + a.len().abs_diff(b.len())
}

fn to_i32(v: &[usize]) -> Vec<i32> {
    v.iter().map(|&x| x as i32).collect()
}

/// Device layouts (both kinds) against the reference.
pub fn check_layouts(
    gpu: &Gpu,
    rng: &mut Rng,
    routing: Routing,
    tokens: usize,
    top_k: usize,
    num_experts: usize,
    align: usize,
) -> Result<CheckReport> {
    let ids = routing_ids(rng, routing, tokens, top_k, num_experts);
    let reference = rp::contiguous_layout(&ids, top_k, num_experts, align)?;
    let m_max = reference.counts.iter().copied().max().unwrap_or(0) + rng.below(3) as usize;
    let masked_ref = rp::masked_layout(&ids, top_k, num_experts, m_max)?;
    let d_ids = gpu.upload(&ids, &[tokens, top_k])?;
    let mut status = DeviceStatus::new(gpu)?;

    let mut c = gp::DeviceContiguousLayout::new(gpu, tokens, top_k, num_experts, align)?;
    for t in [&mut c.counts, &mut c.offsets, &mut c.m_indices, &mut c.slot] {
        gpu.fill_bytes(t, POISON_I32)?;
    }
    gp::contiguous_layout(gpu, &d_ids, &mut c, &mut status)?;
    let mut m = gp::DeviceMaskedLayout::new(gpu, tokens, top_k, num_experts, m_max)?;
    gpu.fill_bytes(&mut m.counts, POISON_I32)?;
    gpu.fill_bytes(&mut m.slot, POISON_I32)?;
    gp::masked_layout(gpu, &d_ids, &mut m, &mut status)?;
    let status_ok = status.check(gpu, "permute layouts").is_ok();

    let mut want_m_indices = reference.m_indices.clone();
    want_m_indices.resize(c.rows_cap, -1);
    let bad = mismatches(&gpu.download(&c.counts)?, &to_i32(&reference.counts))
        + mismatches(&gpu.download(&c.offsets)?, &to_i32(&reference.offsets))
        + mismatches(&gpu.download(&c.m_indices)?, &want_m_indices)
        + mismatches(&gpu.download(&c.slot)?, &to_i32(&reference.slot))
        + mismatches(&gpu.download(&m.counts)?, &to_i32(&masked_ref.counts))
        + mismatches(&gpu.download(&m.slot)?, &to_i32(&masked_ref.slot));
    Ok(CheckReport::new(
        "moe_layout",
        format!(
            "{routing:?} T {tokens} K {top_k} E {num_experts} align {align} m_max {m_max} \
             (rows {} of {})",
            reference.rows, c.rows_cap
        ),
        "mismatches",
        bad as f64,
        0.0,
    )
    .require(status_ok, "status recorded a fault for valid ids"))
}

/// What dispatch moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DispatchFormat {
    Bf16,
    /// e4m3 codes with the tokens' scales in the given layout.
    Fp8(ScaleLayout),
}

/// The device slot of either layout for `ids`, its row count, and the reference slot.
struct BuiltLayout {
    slot: DeviceTensor<i32>,
    rows: usize,
    /// `(experts, m_max)` of the masked layout.
    masked: Option<(usize, usize)>,
    ref_slot: Vec<usize>,
}

fn build_layout(
    gpu: &Gpu,
    rng: &mut Rng,
    ids: &[i32],
    top_k: usize,
    num_experts: usize,
    masked: bool,
    status: &mut DeviceStatus,
) -> Result<BuiltLayout> {
    let tokens = ids.len() / top_k;
    let d_ids = gpu.upload(ids, &[tokens, top_k])?;
    if masked {
        let counts = rp::contiguous_layout(ids, top_k, num_experts, 1)?.counts;
        let m_max = counts.iter().copied().max().unwrap_or(0) + rng.below(3) as usize;
        let reference = rp::masked_layout(ids, top_k, num_experts, m_max)?;
        let mut l = gp::DeviceMaskedLayout::new(gpu, tokens, top_k, num_experts, m_max)?;
        gp::masked_layout(gpu, &d_ids, &mut l, status)?;
        Ok(BuiltLayout {
            rows: l.rows(),
            slot: l.slot,
            masked: Some((num_experts, m_max)),
            ref_slot: reference.slot,
        })
    } else {
        let reference = rp::contiguous_layout(ids, top_k, num_experts, GEMM_ALIGN)?;
        let mut l = gp::DeviceContiguousLayout::new(gpu, tokens, top_k, num_experts, GEMM_ALIGN)?;
        gp::contiguous_layout(gpu, &d_ids, &mut l, status)?;
        Ok(BuiltLayout {
            rows: l.rows_cap,
            slot: l.slot,
            masked: None,
            ref_slot: reference.slot,
        })
    }
}

/// For each dispatched row, the token it holds (None: padding).
fn row_sources(ref_slot: &[usize], top_k: usize, rows: usize) -> Vec<Option<usize>> {
    let mut src = vec![None; rows];
    for (i, &r) in ref_slot.iter().enumerate() {
        src[r] = Some(i / top_k);
    }
    src
}

/// Dispatch (either layout, BF16 or FP8) against the reference; padding must stay poisoned.
#[allow(clippy::too_many_arguments)]
pub fn check_dispatch(
    gpu: &Gpu,
    rng: &mut Rng,
    routing: Routing,
    tokens: usize,
    hidden: usize,
    top_k: usize,
    num_experts: usize,
    masked: bool,
    format: DispatchFormat,
) -> Result<CheckReport> {
    let ids = routing_ids(rng, routing, tokens, top_k, num_experts);
    let mut status = DeviceStatus::new(gpu)?;
    let l = build_layout(gpu, rng, &ids, top_k, num_experts, masked, &mut status)?;
    let src = row_sources(&l.ref_slot, top_k, l.rows);
    let x: Vec<bf16> = rng.normal_vec(tokens * hidden, 1.0);
    let case = format!(
        "{routing:?} T {tokens} H {hidden} K {top_k} E {num_experts} {} {format:?}",
        if masked { "masked" } else { "contiguous" }
    );
    let (kernel, bad, scales_bad) = match format {
        DispatchFormat::Bf16 => {
            let dx = gpu.upload(&x, &[tokens, hidden])?;
            let shape: Vec<usize> = match l.masked {
                Some((e, m)) => vec![e, m, hidden],
                None => vec![l.rows, hidden],
            };
            let mut out = gpu.poisoned::<bf16>(&shape)?;
            gp::dispatch_bf16(gpu, &dx, &l.slot, &mut out, &mut status)?;
            let got = gpu.download(&out)?;
            let want = rp::dispatch_rows(&x, hidden, top_k, &l.ref_slot, l.rows)?;
            let bad = src
                .iter()
                .enumerate()
                .filter(|&(r, s)| {
                    let row = r * hidden..(r + 1) * hidden;
                    match s {
                        Some(_) => got[row.clone()]
                            .iter()
                            .zip(&want[row])
                            .any(|(a, b)| a.to_bits() != b.to_bits()),
                        None => got[row].iter().any(|v| v.to_bits() != 0xffff),
                    }
                })
                .count();
            ("moe_dispatch_bf16", bad, 0)
        }
        DispatchFormat::Fp8(in_layout) => {
            let q = quantize_fp8(&x, hidden, false, in_layout)?;
            let mut dx = Fp8Buffers::new(gpu, tokens, hidden, in_layout)?;
            gpu.write(&mut dx.q, &q.q)?;
            gpu.write(&mut dx.scales, &q.scales)?;
            let blocks = q.blocks();
            let (got_q, got_s) = match l.masked {
                Some((e, m_max)) => {
                    let mut out = gp::MaskedFp8Buffers::new(gpu, e, m_max, hidden)?;
                    gpu.fill_bytes(&mut out.q, 0xff)?;
                    gpu.fill_bytes(&mut out.scales, 0xff)?;
                    gp::dispatch_fp8_masked(gpu, &dx, &l.slot, &mut out, &mut status)?;
                    (gpu.download(&out.q)?, gpu.download(&out.scales)?)
                }
                None => {
                    let mut out = Fp8Buffers::new(gpu, l.rows, hidden, ScaleLayout::BlockMajor)?;
                    gpu.fill_bytes(&mut out.q, 0xff)?;
                    gpu.fill_bytes(&mut out.scales, 0xff)?;
                    gp::dispatch_fp8(gpu, &dx, &l.slot, &mut out, &mut status)?;
                    (gpu.download(&out.q)?, gpu.download(&out.scales)?)
                }
            };
            // Position of the device scale of (dispatched row r, block b).
            let index = |r: usize, b: usize| match l.masked {
                Some((_, m_max)) => {
                    rp::MaskedFp8::scale_index(m_max, hidden, r / m_max, r % m_max, b)
                }
                None => Fp8Activations::scale_index(l.rows, hidden, ScaleLayout::BlockMajor, r, b),
            };
            let want = rp::dispatch_fp8(&q, top_k, &l.ref_slot, l.rows)?;
            let mut bad = 0;
            let mut scales_bad = 0;
            let mut scale_written = vec![false; got_s.len()];
            for (r, s) in src.iter().enumerate() {
                let row = r * hidden..(r + 1) * hidden;
                let row_bad = match s {
                    Some(_) => got_q[row.clone()] != want.q[row],
                    None => got_q[row].iter().any(|v| v.0 != 0xff),
                };
                bad += usize::from(row_bad);
                for b in 0..blocks {
                    let i = index(r, b);
                    let ok = match s {
                        Some(_) => got_s[i].to_bits() == want.scale(r, b).to_bits(),
                        None => got_s[i].to_bits() == u32::MAX,
                    };
                    scales_bad += usize::from(!ok);
                    scale_written[i] = true;
                }
            }
            // Entries of no row (block-major padding up to a multiple of 4) stay poisoned too.
            scales_bad += got_s
                .iter()
                .zip(&scale_written)
                .filter(|&(v, &w)| !w && v.to_bits() != u32::MAX)
                .count();
            ("moe_dispatch_fp8", bad, scales_bad)
        }
    };
    let status_ok = status.check(gpu, "dispatch").is_ok();
    Ok(
        CheckReport::new(kernel, case, "row_mismatches", bad as f64, 0.0)
            .require(
                scales_bad == 0,
                format!("{scales_bad} scale entries differ (or padding entries were written)"),
            )
            .require(status_ok, "status recorded a fault for valid ids"),
    )
}

/// Combine against the reference, bit-exact (0 mismatching BF16 values).
#[allow(clippy::too_many_arguments)]
pub fn check_combine(
    gpu: &Gpu,
    rng: &mut Rng,
    routing: Routing,
    tokens: usize,
    hidden: usize,
    top_k: usize,
    num_experts: usize,
    masked: bool,
    with_shared: bool,
) -> Result<CheckReport> {
    let ids = routing_ids(rng, routing, tokens, top_k, num_experts);
    let mut status = DeviceStatus::new(gpu)?;
    let l = build_layout(gpu, rng, &ids, top_k, num_experts, masked, &mut status)?;
    let src = row_sources(&l.ref_slot, top_k, l.rows);
    // Expert outputs: mapped rows random, padding rows NaN (combine must never read them).
    let mut y: Vec<bf16> = Vec::with_capacity(l.rows * hidden);
    for s in &src {
        match s {
            Some(_) => y.extend((0..hidden).map(|_| bf16::from_f32(rng.normal() * 2.0))),
            None => y.extend(std::iter::repeat_n(bf16::from_bits(0xffff), hidden)),
        }
    }
    let w: Vec<f32> = (0..tokens * top_k).map(|_| rng.uniform(0.0, 0.5)).collect();
    let shared: Option<Vec<bf16>> = with_shared.then(|| rng.normal_vec(tokens * hidden, 1.0));
    let y_shape: Vec<usize> = match l.masked {
        Some((e, m)) => vec![e, m, hidden],
        None => vec![l.rows, hidden],
    };
    let dy = gpu.upload(&y, &y_shape)?;
    let dw = gpu.upload(&w, &[tokens, top_k])?;
    let dshared = shared
        .as_ref()
        .map(|s| gpu.upload(s, &[tokens, hidden]))
        .transpose()?;
    let mut dout = gpu.poisoned::<bf16>(&[tokens, hidden])?;
    gp::combine(
        gpu,
        &dy,
        &l.slot,
        &dw,
        dshared.as_ref(),
        &mut dout,
        &mut status,
    )?;
    let got = gpu.download(&dout)?;
    let status_ok = status.check(gpu, "combine").is_ok();
    let want = rp::combine(&y, hidden, &l.ref_slot, &w, top_k, shared.as_deref())?;
    let bad = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    Ok(CheckReport::new(
        "moe_combine_bf16",
        format!(
            "{routing:?} T {tokens} H {hidden} K {top_k} E {num_experts} {}{}",
            if masked { "masked" } else { "contiguous" },
            if with_shared { " +shared" } else { "" }
        ),
        "mismatches",
        bad as f64,
        0.0,
    )
    .require(status_ok, "status recorded a fault for valid ids"))
}

/// Ids outside `0..E` are reported (code 5), their pairs get slot -1 and are not counted; the
/// other pairs are laid out as the reference lays out the ids without them.
pub fn check_bad_ids(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let (tokens, top_k, num_experts) = (40, 4, 16);
    let mut ids = routing_ids(rng, Routing::Uniform, tokens, top_k, num_experts);
    let bad_pairs = [3usize, 77, 150];
    ids[bad_pairs[0]] = -1;
    ids[bad_pairs[1]] = num_experts as i32;
    ids[bad_pairs[2]] = i32::MAX;
    let d_ids = gpu.upload(&ids, &[tokens, top_k])?;
    let mut status = DeviceStatus::new(gpu)?;
    let mut c = gp::DeviceContiguousLayout::new(gpu, tokens, top_k, num_experts, 8)?;
    gp::contiguous_layout(gpu, &d_ids, &mut c, &mut status)?;
    let flagged = status.check(gpu, "contiguous_layout").is_err();
    let slot = gpu.download(&c.slot)?;
    let counts = gpu.download(&c.counts)?;
    // The reference over the valid pairs only (as a K = 1 routing, which keeps (t, k) order).
    let valid: Vec<i32> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !bad_pairs.contains(i))
        .map(|(_, &id)| id)
        .collect();
    let reference = rp::contiguous_layout(&valid, 1, num_experts, 8)?;
    let mut want_slot = Vec::with_capacity(ids.len());
    let mut next = reference.slot.iter();
    for i in 0..ids.len() {
        want_slot.push(if bad_pairs.contains(&i) {
            -1
        } else {
            *next.next().unwrap() as i32
        });
    }
    let bad = mismatches(&slot, &want_slot) + mismatches(&counts, &to_i32(&reference.counts));
    Ok(CheckReport::new(
        "moe_layout",
        "ids -1, E and i32::MAX".into(),
        "mismatches",
        bad as f64,
        0.0,
    )
    .require(flagged, "the bad ids were not reported in the status word"))
}

/// A masked expert over `m_max` is reported, its count clamped and its extra pairs dropped.
pub fn check_masked_overflow(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let (tokens, top_k, num_experts, m_max) = (12, 2, 4, 5);
    let mut ids = routing_ids(rng, Routing::Uniform, tokens, top_k, num_experts);
    // Expert 1 in every token's first choice: 12 + (some) rows > m_max.
    for t in 0..tokens {
        ids[t * top_k] = 1;
        if ids[t * top_k + 1] == 1 {
            ids[t * top_k + 1] = 2;
        }
    }
    let d_ids = gpu.upload(&ids, &[tokens, top_k])?;
    let mut status = DeviceStatus::new(gpu)?;
    let mut m = gp::DeviceMaskedLayout::new(gpu, tokens, top_k, num_experts, m_max)?;
    gp::masked_layout(gpu, &d_ids, &mut m, &mut status)?;
    let flagged = status.check(gpu, "masked_layout").is_err();
    let slot = gpu.download(&m.slot)?;
    let counts = gpu.download(&m.counts)?;
    // Expected: each expert keeps its first m_max pairs in (t, k) order.
    let mut next = vec![0usize; num_experts];
    let mut want_slot = Vec::with_capacity(ids.len());
    for &id in &ids {
        let e = id as usize;
        want_slot.push(if next[e] < m_max {
            (e * m_max + next[e]) as i32
        } else {
            -1
        });
        next[e] += 1;
    }
    let want_counts: Vec<i32> = next.iter().map(|&n| n.min(m_max) as i32).collect();
    let bad = mismatches(&slot, &want_slot) + mismatches(&counts, &want_counts);
    Ok(CheckReport::new(
        "moe_layout",
        format!("masked overflow (m_max {m_max})"),
        "mismatches",
        bad as f64,
        0.0,
    )
    .require(flagged, "the overflow was not reported in the status word"))
}

/// Token counts of [`all_checks`]' larger cases: (prefill, uniform over 32 experts, skewed,
/// one expert). The GPU's, or CPU-sized ones for the interpreter build ([`kernels::EMULATED`]),
/// still several 128-row GEMM tiles per expert and several blocks of the scan.
fn token_sizes(quick: bool) -> (usize, usize, usize, usize) {
    if kernels::EMULATED {
        (256, 300, 200, 300)
    } else {
        (if quick { 512 } else { 4096 }, 3000, 1500, 2000)
    }
}

/// Every permute / combine case `harness verify` runs. `quick` trims the large shapes.
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<kernels::Result<CheckReport>> {
    use DispatchFormat::{Bf16, Fp8};
    use Routing::{OneExpert, Skewed, Uniform};
    use ScaleLayout::{BlockMajor, TokenMajor};
    let mut rng = Rng::fresh();
    let rng = &mut rng;
    let (prefill, uniform, skewed, one) = token_sizes(quick);
    let mut out = Vec::new();
    for (routing, t, k, e, align) in [
        (Uniform, 1, 8, 256, GEMM_ALIGN),
        (Uniform, 64, 8, 256, GEMM_ALIGN),
        (Uniform, prefill, 8, 256, GEMM_ALIGN),
        (Uniform, uniform, 8, 32, GEMM_ALIGN),
        (Uniform, 100, 8, 8, GEMM_ALIGN),
        (Uniform, 33, 256, 256, 16),
        (Skewed, skewed, 8, 256, GEMM_ALIGN),
        (OneExpert, one, 1, 64, GEMM_ALIGN),
        (Uniform, 0, 8, 256, GEMM_ALIGN),
    ] {
        out.push(check_layouts(gpu, rng, routing, t, k, e, align));
    }
    for masked in [false, true] {
        let (t, e) = if masked {
            (64, 256)
        } else {
            (prefill / 4, 256)
        };
        for format in [Bf16, Fp8(TokenMajor), Fp8(BlockMajor)] {
            out.push(check_dispatch(
                gpu, rng, Uniform, t, 7168, 8, e, masked, format,
            ));
        }
        out.push(check_dispatch(
            gpu,
            rng,
            Skewed,
            37,
            200,
            4,
            16,
            masked,
            Fp8(BlockMajor),
        ));
        out.push(check_dispatch(
            gpu,
            rng,
            Uniform,
            9,
            7,
            3,
            5,
            masked,
            Fp8(TokenMajor),
        ));
        out.push(check_dispatch(
            gpu, rng, OneExpert, 50, 7, 2, 4, masked, Bf16,
        ));
        out.push(check_combine(
            gpu, rng, Uniform, t, 7168, 8, e, masked, true,
        ));
        out.push(check_combine(
            gpu, rng, Uniform, 16, 7168, 8, e, masked, false,
        ));
        out.push(check_combine(gpu, rng, Uniform, 7, 100, 6, 6, masked, true));
        out.push(check_combine(gpu, rng, Skewed, 20, 7, 3, 40, masked, false));
    }
    out.push(check_bad_ids(gpu, rng));
    out.push(check_masked_overflow(gpu, rng));
    out
}
