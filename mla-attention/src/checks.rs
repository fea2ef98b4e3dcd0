//! The MLA decode kernel against [`crate::reference::paged_decode`] on fresh random paged inputs,
//! for the GPU tests and `harness verify`.
//!
//! Pass criteria (outputs are poisoned with NaN bytes before the launch):
//! - every o_lat and lse element of every row is finite (an unwritten row keeps its NaN poison);
//! - on the checked rows (all of them when the reference is cheap, otherwise every sequence with
//!   a sample of heads that always includes the first and last), against the reference run on
//!   the same BF16 inputs:
//!   - relative Frobenius error ||o - ref|| / ||ref|| <= [`O_REL_TOL`];
//!   - per element |o - ref| <= [`o_element_bound`];
//!   - |lse - ref| <= [`LSE_TOL`] * (1 + |ref|);
//! - the schedule the device planned covers every KV block of every sequence exactly once, with
//!   split counts matching the offsets ([`check_schedule`]).
//!
//! Inputs are poisoned FlashMLA-style ([`poison_unread`]): every cache entry no sequence may read
//! (past each sequence's length, in its last block and in unused blocks) holds NaN (all-ones
//! bytes in the FP8 layout), and every block-table slot past a sequence's last block holds a huge
//! id. A kernel that reads past a length, or looks a block id up before checking the length,
//! gets a NaN output or an out-of-range status instead of a quiet pass.
//!
//! FP8-cache cases encode the random BF16 cache into 656-byte entries (`reference::encode_cache`)
//! and hold the kernel to the reference over those entries dequantized to BF16
//! (`reference::decode_cache_bf16`, the values the kernel feeds its MMAs), with the same bounds:
//! the dequantization itself is exact up to that one BF16 rounding, which both sides share.

use half::bf16;
use kernels::checks::CheckReport;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::rng::Rng;
use kernels::{Error, Result};

use crate::cases::DecodeInputs;
use crate::gpu::{self, DecodeWorkspace, DeviceCache};
use crate::reference::{
    decode_cache_bf16, encode_cache, paged_decode, PagedShape, BLOCK_SIZE, FP8_ENTRY_BYTES, KV_DIM,
    KV_LORA_RANK, MAX_CHUNK_LEN,
};

const KERNEL: &str = "mla_decode_bf16";
const KERNEL_FP8: &str = "mla_decode_fp8";

/// Bound on ||o - ref|| / ||ref||. The kernel rounds twice where the f32 reference does not: the
/// softmax weights P to BF16 before the P.V tensor-core product, and o_lat to BF16 at the end.
/// Each rounding is round-to-nearest-even with relative error <= 2^-9 per value, about
/// 2^-9 / sqrt(3) = 1.1e-3 rms for random data; the two together about 1.6e-3 rms, with f32
/// accumulation order and exp2 vs exp adding ~1e-6. 4e-3 (~2^-8) leaves room for the worst
/// random case without hiding a wrong or stale element (those give errors of order 1).
pub const O_REL_TOL: f64 = 4e-3;

/// Relative bound on the lse (natural log, f32 in both): the scores differ only by f32
/// accumulation order over 576 products and the base-2 rescaling, ~1e-6 for these inputs.
pub const LSE_TOL: f64 = 1e-4;

/// Per-element bound of o_lat: 2^-9 |ref| for the final BF16 rounding plus 2^-9 * max|v| for
/// the BF16 rounding of P (the error sum_t dp_t v_t / l with |dp_t| <= 2^-9 p_t is at most
/// 2^-9 max_t |v_t|), 10% slack for f32 effects, and 1e-6 absolute.
pub fn o_element_bound(reference: f64, vmax: f64) -> f64 {
    1.1 * 2f64.powi(-9) * (reference.abs() + vmax) + 1e-6
}

/// What a decode check runs: sequence lengths, S_q, heads, and the schedule's shape.
#[derive(Clone, Debug)]
pub struct DecodeCheck {
    pub seqlens: Vec<usize>,
    pub s_q: usize,
    pub heads: usize,
    /// Schedule parts (CTA columns); `None`: what [`DecodeWorkspace::new`] picks for the device.
    pub parts: Option<usize>,
    /// Every sequence's first block is the same cache block.
    pub shared_prefix: bool,
}

/// The cache layout a check runs the kernel on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheFormat {
    /// `[num_blocks, 64, 576]` BF16 entries (`mla_decode_bf16`).
    Bf16,
    /// `[num_blocks, 64, 656]` FP8 entries (`mla_decode_fp8`).
    Fp8,
}

impl DecodeCheck {
    fn describe(&self) -> String {
        let lens = if self.seqlens.len() <= 8 {
            format!("{:?}", self.seqlens)
        } else {
            format!(
                "{} seqs, {}..={}",
                self.seqlens.len(),
                self.seqlens.iter().min().unwrap_or(&0),
                self.seqlens.iter().max().unwrap_or(&0)
            )
        };
        format!(
            "S_q {} H {} lens {lens}{}{}",
            self.s_q,
            self.heads,
            self.parts.map_or(String::new(), |p| format!(" parts {p}")),
            if self.shared_prefix {
                " shared prefix"
            } else {
                ""
            }
        )
    }
}

/// Device copies of a [`DecodeInputs`]; `cache_fp8` holds the 656-byte entries when the case
/// runs the FP8-cache kernel.
struct Uploaded {
    q: DeviceTensor<bf16>,
    cache: DeviceCache,
    table: DeviceTensor<i32>,
    lens: DeviceTensor<i32>,
}

fn upload(gpu: &Gpu, inp: &DecodeInputs, fp8_bytes: Option<&[u8]>) -> Result<Uploaded> {
    let s = inp.shape;
    Ok(Uploaded {
        q: gpu.upload(&inp.q, &[s.batch, s.q_len, inp.heads, KV_DIM])?,
        cache: DeviceCache::upload(gpu, s.num_blocks, &inp.cache, fp8_bytes)?,
        table: gpu.upload(&inp.block_table, &[s.batch, s.max_blocks])?,
        lens: gpu.upload(&inp.cache_seqlens, &[s.batch])?,
    })
}

/// Uploads `inp` and runs the decode (over the FP8 entries `fp8_bytes` when given) into poisoned
/// outputs; returns o_lat and lse on the host and the status word, not yet checked.
fn launch(
    gpu: &Gpu,
    inp: &DecodeInputs,
    fp8_bytes: Option<&[u8]>,
    ws: &mut DecodeWorkspace,
) -> Result<(Vec<bf16>, Vec<f32>, DeviceStatus)> {
    let s = inp.shape;
    let d = upload(gpu, inp, fp8_bytes)?;
    let mut o: DeviceTensor<bf16> = gpu.poisoned(&[s.batch, s.q_len, inp.heads, KV_LORA_RANK])?;
    let mut lse: DeviceTensor<f32> = gpu.poisoned(&[s.batch, s.q_len, inp.heads])?;
    let mut status = DeviceStatus::new(gpu)?;
    let tables = (&d.table, &d.lens, inp.softmax_scale);
    gpu::paged_decode_any(
        gpu,
        ws,
        &d.q,
        d.cache.view(),
        tables,
        &mut o,
        &mut lse,
        &mut status,
    )?;
    Ok((gpu.download(&o)?, gpu.download(&lse)?, status))
}

/// Runs the BF16-cache kernel on fresh random inputs and compares with the reference.
pub fn check_decode(gpu: &Gpu, rng: &mut Rng, c: &DecodeCheck) -> Result<CheckReport> {
    check_decode_format(gpu, rng, c, CacheFormat::Bf16)
}

/// [`check_decode`] for either cache format.
pub fn check_decode_format(
    gpu: &Gpu,
    rng: &mut Rng,
    c: &DecodeCheck,
    format: CacheFormat,
) -> Result<CheckReport> {
    let (s_q, heads) = (c.s_q, c.heads);
    let mut inp = DecodeInputs::random(rng, &c.seqlens, s_q, heads, c.shared_prefix, 1);
    // FP8 case: the kernel reads the encoded entries; the reference (and vmax) the BF16 values
    // they dequantize to.
    let mut fp8_bytes = if format == CacheFormat::Fp8 {
        let bytes = encode_cache(&inp.cache)?;
        inp.cache = decode_cache_bf16(&bytes)?;
        Some(bytes)
    } else {
        None
    };
    poison_unread(rng, &mut inp, fp8_bytes.as_deref_mut());
    let s = inp.shape;
    let mut ws = match c.parts {
        Some(p) => DecodeWorkspace::with_parts(gpu, s.batch, s_q, heads, p)?,
        None => DecodeWorkspace::new(gpu, s.batch, s_q, heads)?,
    };
    let (got_o, got_lse, mut status) = launch(gpu, &inp, fp8_bytes.as_deref(), &mut ws)?;
    status.check(gpu, "mla_decode")?;
    let (sched, offsets) = ws.download_schedule(gpu)?;
    let schedule = check_schedule(&sched, &offsets, &c.seqlens, ws.parts());

    let cmp = compare_with_reference(&inp, &got_o, &got_lse, rng)?;
    let kernel = match format {
        CacheFormat::Bf16 => KERNEL,
        CacheFormat::Fp8 => KERNEL_FP8,
    };
    let case = format!("{} ({})", c.describe(), cmp.sample);
    Ok(cmp
        .report(kernel, case)
        .require(schedule.is_ok(), schedule.err().unwrap_or_default()))
}

/// FlashMLA-style poisoning of what the kernel must never read: NaN in every cache entry past
/// each sequence's length (all-ones bytes, NaN codes / scales / rotary values, in the FP8 entries
/// `fp8_bytes` when given), and a huge block id (2^30 and up, far past `num_blocks`) in every
/// block-table slot past each sequence's last block. Entries a sequence can see, including a
/// shared prefix block, are left alone.
pub fn poison_unread(rng: &mut Rng, inp: &mut DecodeInputs, fp8_bytes: Option<&mut [u8]>) {
    let s = inp.shape;
    let mut visible = vec![false; s.num_blocks * BLOCK_SIZE];
    for (b, &len) in inp.cache_seqlens.iter().enumerate() {
        let len = len.max(0) as usize;
        for p in 0..len {
            visible[crate::reference::paged::slot(&s, &inp.block_table, b, p)] = true;
        }
        for slot in &mut inp.block_table[b * s.max_blocks..][len.div_ceil(BLOCK_SIZE)..s.max_blocks]
        {
            *slot = (1 << 30) + rng.below(i32::MAX as u64 - (1 << 30)) as i32;
        }
    }
    let hidden = visible
        .iter()
        .enumerate()
        .filter(|(_, &v)| !v)
        .map(|(e, _)| e);
    let mut fp8_bytes = fp8_bytes;
    for e in hidden {
        inp.cache[e * KV_DIM..][..KV_DIM].fill(bf16::NAN);
        if let Some(bytes) = fp8_bytes.as_deref_mut() {
            bytes[e * FP8_ENTRY_BYTES..][..FP8_ENTRY_BYTES].fill(0xff);
        }
    }
}

/// Reference work (row-tokens, each 1088 multiply-adds on the CPU) above which only some
/// sequences and heads are compared.
const REFERENCE_BUDGET: usize = 1_500_000;

/// The outcome of comparing decode outputs with the reference on a sample of rows.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// ||o - ref|| / ||ref|| over the compared rows (infinite for NaN).
    pub rel_l2: f64,
    /// o_lat elements outside [`o_element_bound`], and the first of them.
    pub bad_elements: usize,
    pub first_bad: Option<String>,
    /// max |lse - ref| / (1 + |ref|).
    pub lse_err: f64,
    /// Non-finite o_lat / lse elements over all rows (unwritten ones keep their NaN poison).
    pub unwritten_o: usize,
    pub unwritten_lse: usize,
    /// Which rows were compared, in words.
    pub sample: String,
}

impl Comparison {
    /// The pass criteria of our kernel's checks: rel_l2 <= [`O_REL_TOL`], every element within
    /// its bound, lse within [`LSE_TOL`], every element finite.
    pub fn passed(&self) -> bool {
        self.rel_l2 <= O_REL_TOL
            && self.bad_elements == 0
            && self.lse_err <= LSE_TOL
            && self.unwritten_o == 0
            && self.unwritten_lse == 0
    }

    /// The check report of `kernel` on `case`: rel_l2 against [`O_REL_TOL`] plus the other
    /// criteria of [`Comparison::passed`].
    pub fn report(&self, kernel: &str, case: String) -> CheckReport {
        CheckReport::new(kernel, case, "rel_l2", self.rel_l2, O_REL_TOL)
            .require(
                self.bad_elements == 0,
                format!(
                    "{} o_lat elements outside the per-element bound (first: {})",
                    self.bad_elements,
                    self.first_bad.clone().unwrap_or_default()
                ),
            )
            .require(
                self.lse_err <= LSE_TOL,
                format!("lse relative error {:e} > {LSE_TOL:e}", self.lse_err),
            )
            .require(
                self.unwritten_o == 0 && self.unwritten_lse == 0,
                format!(
                    "{} o_lat and {} lse elements not finite (unwritten?)",
                    self.unwritten_o, self.unwritten_lse
                ),
            )
    }

    /// One line for a bench report.
    pub fn summary(&self) -> String {
        format!(
            "rel_l2 {:.2e} (tol {O_REL_TOL:.0e}), lse err {:.1e} (tol {LSE_TOL:.0e}) vs the \
             reference on {} ({})",
            self.rel_l2,
            self.lse_err,
            self.sample,
            if self.passed() { "ok" } else { "WRONG" }
        )
    }
}

/// Compares o_lat `[batch, S_q, H, 512]` and lse `[batch, S_q, H]` computed from `inp` with
/// [`paged_decode`] run on the same BF16 inputs. When the reference would cost more than the
/// budget, only some sequences (first, last, random) and heads (first, last, random) are compared.
pub fn compare_with_reference(
    inp: &DecodeInputs,
    got_o: &[bf16],
    got_lse: &[f32],
    rng: &mut Rng,
) -> Result<Comparison> {
    let s = inp.shape;
    let (s_q, heads) = (s.q_len, inp.heads);
    let rows = s.batch * s_q * heads;
    if got_o.len() != rows * KV_LORA_RANK || got_lse.len() != rows {
        return Err(Error::shape(
            "mla_decode check",
            format!(
                "outputs hold {} o_lat and {} lse elements, expected {} and {rows}",
                got_o.len(),
                got_lse.len(),
                rows * KV_LORA_RANK
            ),
        ));
    }
    let lens: Vec<usize> = inp
        .cache_seqlens
        .iter()
        .map(|&l| l.max(0) as usize)
        .collect();

    // Sequences: all when two heads of all of them fit the budget, else first, last and random
    // ones while they do (at least one).
    let head_floor = 2.min(heads);
    let mut seqs: Vec<usize> = (0..s.batch).collect();
    if lens.iter().sum::<usize>() * s_q * head_floor > REFERENCE_BUDGET {
        let mut candidates = vec![0, s.batch - 1];
        candidates.extend((0..4 * s.batch).map(|_| rng.below(s.batch as u64) as usize));
        seqs.clear();
        let mut work = 0;
        for b in candidates {
            let w = lens[b] * s_q * head_floor;
            if !seqs.contains(&b) && (seqs.is_empty() || work + w <= REFERENCE_BUDGET) {
                seqs.push(b);
                work += w;
            }
        }
        seqs.sort_unstable();
    }
    let work: usize = seqs.iter().map(|&b| lens[b] * s_q).sum();
    let n_heads = (REFERENCE_BUDGET / work.max(1)).clamp(head_floor, heads);
    let mut checked: Vec<usize> = if n_heads >= heads {
        (0..heads).collect()
    } else {
        let mut v = vec![0, heads - 1];
        while v.len() < n_heads {
            v.push(rng.below(heads as u64) as usize);
        }
        v
    };
    checked.sort_unstable();
    checked.dedup();
    let hs = checked.len();

    // The reference on the sampled sequences and heads only (both are independent).
    let sub_shape = PagedShape {
        batch: seqs.len(),
        ..s
    };
    let mut q_sub = Vec::with_capacity(seqs.len() * s_q * hs * KV_DIM);
    let mut table_sub = Vec::with_capacity(seqs.len() * s.max_blocks);
    let mut lens_sub = Vec::with_capacity(seqs.len());
    for &b in &seqs {
        for i in 0..s_q {
            for &h in &checked {
                let row = (b * s_q + i) * heads + h;
                q_sub.extend_from_slice(&inp.q[row * KV_DIM..][..KV_DIM]);
            }
        }
        table_sub.extend_from_slice(&inp.block_table[b * s.max_blocks..][..s.max_blocks]);
        lens_sub.push(inp.cache_seqlens[b]);
    }
    let expect = paged_decode(
        &sub_shape,
        hs,
        &q_sub,
        &inp.cache,
        &table_sub,
        &lens_sub,
        inp.softmax_scale,
    )?;

    let (mut diff2, mut ref2) = (0.0f64, 0.0f64);
    let (mut bad_elements, mut first_bad) = (0usize, None);
    let mut lse_err = 0.0f64;
    for (sb, &b) in seqs.iter().enumerate() {
        let vmax = value_max(inp, b);
        for i in 0..s_q {
            for (k, &h) in checked.iter().enumerate() {
                let row = (b * s_q + i) * heads + h;
                let rrow = (sb * s_q + i) * hs + k;
                let got = &got_o[row * KV_LORA_RANK..][..KV_LORA_RANK];
                let want = &expect.o_lat[rrow * KV_LORA_RANK..][..KV_LORA_RANK];
                for (col, (g, w)) in got.iter().zip(want).enumerate() {
                    let (g, w) = (f64::from(g.to_f32()), f64::from(*w));
                    let err = (g - w).abs();
                    diff2 += if err.is_finite() {
                        err * err
                    } else {
                        f64::INFINITY
                    };
                    ref2 += w * w;
                    if err.is_nan() || err > o_element_bound(w, vmax) {
                        bad_elements += 1;
                        first_bad.get_or_insert_with(|| {
                            format!("seq {b} query {i} head {h} col {col}: {g} vs {w}")
                        });
                    }
                }
                let (gl, wl) = (f64::from(got_lse[row]), f64::from(expect.lse[rrow]));
                let e = (gl - wl).abs() / (1.0 + wl.abs());
                lse_err = lse_err.max(if e.is_nan() { f64::INFINITY } else { e });
            }
        }
    }
    let rel_l2 = if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else if diff2 == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    Ok(Comparison {
        rel_l2,
        bad_elements,
        first_bad,
        lse_err,
        unwritten_o: got_o.iter().filter(|v| !v.to_f32().is_finite()).count(),
        unwritten_lse: got_lse.iter().filter(|v| !v.is_finite()).count(),
        sample: format!(
            "{} of {} sequences x {hs} of {heads} heads",
            seqs.len(),
            s.batch
        ),
    })
}

/// max |c_kv| over sequence `b`'s entries (the value bound of [`o_element_bound`]).
fn value_max(inp: &DecodeInputs, b: usize) -> f64 {
    let len = inp.cache_seqlens[b].max(0) as usize;
    (0..len)
        .flat_map(|p| {
            let e = crate::reference::paged::slot(&inp.shape, &inp.block_table, b, p);
            inp.cache[e * KV_DIM..][..KV_LORA_RANK].iter()
        })
        .fold(0.0f64, |m, v| m.max(f64::from(v.to_f32().abs())))
}

/// The schedule invariants: walking the parts in order visits every block of every sequence
/// exactly once and in order, a sequence's pieces are numbered 0, 1, ... in part order, and
/// `offsets[b + 1] - offsets[b]` is its number of pieces.
pub fn check_schedule(
    sched: &[i32],
    offsets: &[i32],
    seqlens: &[usize],
    parts: usize,
) -> std::result::Result<(), String> {
    let batch = seqlens.len();
    if sched.len() != parts * 5 || offsets.len() != batch + 1 {
        return Err("schedule buffers have the wrong size".into());
    }
    let mut next_block = vec![0usize; batch];
    let mut pieces = vec![0usize; batch];
    for p in 0..parts {
        let s = &sched[p * 5..][..5];
        let (bb, bblk, bsplit, eb, eblk) = (s[0], s[1], s[2], s[3], s[4]);
        if eb < bb {
            continue;
        }
        for b in bb..=eb {
            let bu = b as usize;
            if bu >= batch {
                return Err(format!("part {p} names sequence {b}"));
            }
            let n = seqlens[bu].div_ceil(BLOCK_SIZE);
            let lo = if b == bb { bblk as usize } else { 0 };
            let hi = if b == eb { eblk as usize } else { n };
            if lo >= hi {
                continue;
            }
            let split = if b == bb { bsplit as usize } else { 0 };
            if lo != next_block[bu] || hi > n || split != pieces[bu] {
                return Err(format!(
                    "part {p}: sequence {b} blocks {lo}..{hi} split {split}, expected from block \
                     {} split {}",
                    next_block[bu], pieces[bu]
                ));
            }
            next_block[bu] = hi;
            pieces[bu] += 1;
        }
    }
    for b in 0..batch {
        let n = seqlens[b].div_ceil(BLOCK_SIZE);
        if next_block[b] != n {
            return Err(format!(
                "sequence {b}: {} of {n} blocks scheduled",
                next_block[b]
            ));
        }
        if (offsets[b + 1] - offsets[b]) as usize != pieces[b] {
            return Err(format!(
                "sequence {b}: {} pieces, offsets say {}",
                pieces[b],
                offsets[b + 1] - offsets[b]
            ));
        }
    }
    Ok(())
}

/// A block id outside the cache (and, separately, a length past the table) must be reported
/// through the status word, with every output still finite (no garbage read).
pub fn check_bad_inputs(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let mut failures = Vec::new();
    for (what, bad_block) in [("block id = num_blocks", true), ("block id -5", false)] {
        let mut inp = DecodeInputs::random(rng, &[130, 70], 2, 16, false, 0);
        let nb = inp.shape.num_blocks as i32;
        // Sequence 1's second block.
        inp.block_table[inp.shape.max_blocks + 1] = if bad_block { nb } else { -5 };
        let (flagged, finite) = run_bad(gpu, &inp)?;
        if !flagged {
            failures.push(format!("{what}: not reported"));
        }
        if !finite {
            failures.push(format!("{what}: outputs not finite"));
        }
    }
    {
        let mut inp = DecodeInputs::random(rng, &[100, 64], 1, 16, false, 0);
        inp.cache_seqlens[1] = (inp.shape.max_blocks * BLOCK_SIZE + 1) as i32;
        let (flagged, _) = run_bad(gpu, &inp)?;
        if !flagged {
            failures.push("cache_seqlens past max_blocks * 64: not reported".into());
        }
    }
    {
        // An empty (or negative) length: reported, and its rows get o = 0 rather than being
        // left unwritten (they would keep the NaN poison).
        let mut inp = DecodeInputs::random(rng, &[100, 64], 1, 16, false, 0);
        inp.cache_seqlens[1] = 0;
        let (flagged, finite) = run_bad(gpu, &inp)?;
        if !flagged || !finite {
            failures.push(format!(
                "cache_seqlens 0: reported {flagged}, outputs finite {finite}"
            ));
        }
    }
    // Host-side shape checks name the argument.
    let inp = DecodeInputs::random(rng, &[10], 1, 16, false, 0);
    let d = upload(gpu, &inp, None)?;
    let mut ws = DecodeWorkspace::new(gpu, 1, 1, 16)?;
    let mut status = DeviceStatus::new(gpu)?;
    let mut o: DeviceTensor<bf16> = gpu.poisoned(&[1, 1, 16, KV_LORA_RANK])?;
    let mut lse: DeviceTensor<f32> = gpu.poisoned(&[1, 1, 8])?;
    let tables = (&d.table, &d.lens, inp.softmax_scale);
    let err = gpu::paged_decode_any(
        gpu,
        &mut ws,
        &d.q,
        d.cache.view(),
        tables,
        &mut o,
        &mut lse,
        &mut status,
    );
    if !matches!(&err, Err(Error::Shape { detail, .. }) if detail.contains("lse")) {
        failures.push(format!("wrong lse shape: {err:?}"));
    }
    // decode() with a table wider than the one the schedule was planned for.
    let wide: DeviceTensor<i32> = gpu.upload(
        &vec![0i32; 2 * inp.shape.max_blocks],
        &[1, 2 * inp.shape.max_blocks],
    )?;
    let mut lse: DeviceTensor<f32> = gpu.poisoned(&[1, 1, 16])?;
    gpu::plan(gpu, &mut ws, &d.lens, inp.shape.max_blocks, &mut status)?;
    let err = gpu::decode(
        gpu,
        &mut ws,
        &d.q,
        d.cache.view(),
        &wide,
        inp.softmax_scale,
        &mut o,
        &mut lse,
        &mut status,
    );
    if !matches!(&err, Err(e) if e.to_string().contains("planned")) {
        failures.push(format!("decode with a wider table than planned: {err:?}"));
    }
    if DecodeWorkspace::new(gpu, 1, MAX_CHUNK_LEN + 1, 16).is_ok() {
        failures.push(format!("S_q = {} accepted", MAX_CHUNK_LEN + 1));
    }
    Ok(CheckReport::new(
        KERNEL,
        "bad block ids / lengths / shapes".into(),
        "failures",
        failures.len() as f64,
        0.0,
    )
    .require(failures.is_empty(), failures.join("; ")))
}

/// Runs a decode that must report a bad input: (reported, every output finite).
fn run_bad(gpu: &Gpu, inp: &DecodeInputs) -> Result<(bool, bool)> {
    let s = inp.shape;
    let mut ws = DecodeWorkspace::new(gpu, s.batch, s.q_len, inp.heads)?;
    let (got, _, mut status) = launch(gpu, inp, None, &mut ws)?;
    let flagged = status.check(gpu, "mla_decode").is_err();
    // A masked block can leave a row with no visible token (o = 0, lse = -inf): finite o only.
    Ok((flagged, got.iter().all(|v| v.to_f32().is_finite())))
}

/// The BF16-cache and FP8-cache cases of [`all_checks`]: the GPU's, or CPU-sized ones for the
/// interpreter build ([`kernels::EMULATED`]) with the same block-boundary lengths, S_q 1..=4,
/// prefill chunks, shared prefixes and forced splits, but contexts of hundreds of tokens and
/// mostly 16 heads on the long ones.
fn cases(quick: bool) -> (Vec<DecodeCheck>, Vec<DecodeCheck>) {
    let case = |seqlens: Vec<usize>, s_q, heads, parts, shared_prefix| DecodeCheck {
        seqlens,
        s_q,
        heads,
        parts,
        shared_prefix,
    };
    if kernels::EMULATED {
        let bf16 = vec![
            case(vec![1], 1, 128, None, false),
            case(vec![1, 63, 64, 65], 1, 128, None, false),
            case(vec![4, 63, 64, 65, 127, 128, 129, 200], 4, 16, None, false),
            case(vec![64, 65, 100], 2, 128, Some(1), true),
            case(vec![700, 5, 300], 3, 64, Some(12), false),
            case(vec![1000], 1, 16, None, false),
            case(vec![300; 4], 2, 16, None, true),
            // Prefill chunks.
            case(vec![64, 100, 300], 64, 16, None, false),
            case(vec![37, 200], 37, 16, None, false),
        ];
        let fp8 = vec![
            case(vec![1, 63, 64, 65], 1, 128, None, false),
            case(vec![4, 63, 64, 65, 127, 128, 129, 200], 4, 16, None, false),
            case(vec![700, 5, 300], 3, 64, Some(12), false),
            case(vec![300; 4], 2, 16, None, true),
            case(vec![37, 200], 37, 16, Some(5), false),
        ];
        return (bf16, fp8);
    }
    let mut cases = vec![
        case(vec![1], 1, 128, None, false),
        case(vec![1, 63, 64, 65], 1, 128, None, false),
        case(vec![4, 63, 64, 65, 127, 128, 129, 200], 4, 16, None, false),
        case(vec![64, 65, 100], 2, 128, Some(1), true),
        case(vec![700, 5, 1500], 3, 64, Some(37), false),
        case(vec![4096], 1, 128, None, false),
        case(vec![4096; 4], 2, 128, None, true),
    ];
    // Prefill chunks (S_q up to 64: many row tiles, causal limits across tiles and blocks).
    cases.push(case(vec![64, 100, 1000], 64, 16, None, false));
    cases.push(case(vec![37, 2100], 37, 128, None, false));
    let fp8_cases = vec![
        case(vec![1, 63, 64, 65], 1, 128, None, false),
        case(vec![4, 63, 64, 65, 127, 128, 129, 200], 4, 16, None, false),
        case(vec![700, 5, 1500], 3, 64, Some(37), false),
        case(vec![4096; 4], 2, 128, None, true),
    ];
    if !quick {
        cases.push(case(vec![8192, 1, 3000, 64], 4, 128, None, false));
        cases.push(case(
            (1..=32).map(|i| i * 97).collect(),
            1,
            128,
            None,
            false,
        ));
        cases.push(case(vec![16384], 2, 16, None, false));
    }
    (cases, fp8_cases)
}

/// Every case `harness verify` runs. `quick` trims the long contexts.
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<Result<CheckReport>> {
    let mut rng = Rng::fresh();
    let rng = &mut rng;
    let (cases, fp8_cases) = cases(quick);
    let mut out: Vec<Result<CheckReport>> =
        cases.iter().map(|c| check_decode(gpu, rng, c)).collect();
    for c in &fp8_cases {
        out.push(check_decode_format(gpu, rng, c, CacheFormat::Fp8));
    }
    out.push(check_bad_inputs(gpu, rng));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::paged::slot;

    /// Visible entries and used table slots stay as they were; everything else is poisoned.
    #[test]
    fn poison_unread_hides_only_what_no_sequence_sees() {
        let mut rng = Rng::new(7);
        for shared in [false, true] {
            let clean = DecodeInputs::random(&mut rng, &[65, 64, 130], 2, 16, shared, 1);
            let mut bytes = encode_cache(&clean.cache).expect("encodes");
            let mut inp = clean.clone();
            poison_unread(&mut rng, &mut inp, Some(&mut bytes));
            let s = inp.shape;
            let mut visible = vec![false; s.num_blocks * BLOCK_SIZE];
            for (b, &len) in clean.cache_seqlens.iter().enumerate() {
                let used = (len as usize).div_ceil(BLOCK_SIZE);
                let row = b * s.max_blocks;
                assert_eq!(
                    inp.block_table[row..][..used],
                    clean.block_table[row..][..used]
                );
                for &id in &inp.block_table[row + used..row + s.max_blocks] {
                    assert!(id >= 1 << 30, "unused slot holds {id}");
                }
                for p in 0..len as usize {
                    visible[slot(&s, &clean.block_table, b, p)] = true;
                }
            }
            for (e, &v) in visible.iter().enumerate() {
                let got = &inp.cache[e * KV_DIM..][..KV_DIM];
                let entry = &bytes[e * FP8_ENTRY_BYTES..][..FP8_ENTRY_BYTES];
                if v {
                    let want = &clean.cache[e * KV_DIM..][..KV_DIM];
                    assert!(got
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                    assert!(entry.iter().any(|&x| x != 0xff));
                } else {
                    assert!(got.iter().all(|x| x.is_nan()), "entry {e}");
                    assert!(entry.iter().all(|&x| x == 0xff), "entry {e}");
                }
            }
            assert!(visible.iter().any(|v| !v), "something was poisoned");
        }
    }
}
