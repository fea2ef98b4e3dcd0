//! Checks of the shared ops against `crate::reference`.

use half::bf16;

use super::{CheckReport, BF16_ELEMENTWISE_TOL};
use crate::cases::deepseek_v3_rope;
use crate::error::Result;
use crate::gpu::{DeviceStatus, Gpu};
use crate::metrics::{rel_l2, rel_l2_f32};
use crate::ops;
use crate::reference::{self, RopeLayout, SamplingParams, ScaleLayout};
use crate::rng::{sampling_uniform, Rng};

pub fn check_rms_norm(
    gpu: &Gpu,
    rng: &mut Rng,
    rows: usize,
    hidden: usize,
    fused: bool,
) -> Result<CheckReport> {
    let eps = 1e-6;
    let x: Vec<bf16> = rng.normal_vec(rows * hidden, 1.0);
    let w: Vec<bf16> = (0..hidden)
        .map(|_| bf16::from_f32(rng.uniform(0.5, 1.5)))
        .collect();
    let res: Vec<bf16> = rng.normal_vec(rows * hidden, 2.0);
    let dx = gpu.upload(&x, &[rows, hidden])?;
    let dw = gpu.upload(&w, &[hidden])?;
    let mut dout = gpu.poisoned(&[rows, hidden])?;
    let (kernel, expect, residual_exact) = if fused {
        let mut dres = gpu.upload(&res, &[rows, hidden])?;
        ops::fused_add_rms_norm(gpu, &dx, &mut dres, &dw, eps, &mut dout)?;
        let mut ref_res = res.clone();
        let expect = reference::fused_add_rms_norm(&x, &mut ref_res, &w, hidden, eps)?;
        (
            "fused_add_rms_norm",
            expect,
            gpu.download(&dres)? == ref_res,
        )
    } else {
        ops::rms_norm(gpu, &dx, &dw, eps, &mut dout)?;
        ("rms_norm", reference::rms_norm(&x, &w, hidden, eps)?, true)
    };
    let got = gpu.download(&dout)?;
    Ok(CheckReport::new(
        kernel,
        format!("[{rows}, {hidden}]"),
        "rel_l2",
        rel_l2_f32(&got, &expect),
        BF16_ELEMENTWISE_TOL,
    )
    .require(
        residual_exact,
        "updated residual differs from bf16(x + residual)",
    ))
}

pub fn check_silu_mul(gpu: &Gpu, rng: &mut Rng, rows: usize, inter: usize) -> Result<CheckReport> {
    let x: Vec<bf16> = rng.normal_vec(rows * 2 * inter, 2.0);
    let dx = gpu.upload(&x, &[rows, 2 * inter])?;
    let mut dout = gpu.poisoned(&[rows, inter])?;
    ops::silu_and_mul(gpu, &dx, &mut dout)?;
    let expect = reference::silu_and_mul(&x, inter)?;
    let got = gpu.download(&dout)?;
    Ok(CheckReport::new(
        "silu_and_mul",
        format!("[{rows}, 2x{inter}]"),
        "rel_l2",
        rel_l2_f32(&got, &expect),
        BF16_ELEMENTWISE_TOL,
    ))
}

/// Plain quantization must match the reference bit for bit (the same IEEE division and
/// conversion on exactly representable inputs). The fused SiLU variant computes expf on the GPU,
/// which may differ from the host by an ulp, so it is held to the dequantized values instead:
/// within 1e-2 of the host's dequantization, and within e4m3's rounding bound 2^-4 of the exact
/// f32 products.
pub fn check_quantize_fp8(
    gpu: &Gpu,
    rng: &mut Rng,
    tokens: usize,
    channels: usize,
    ue8m0: bool,
    layout: ScaleLayout,
    fused_silu: bool,
) -> Result<CheckReport> {
    let width = if fused_silu { 2 * channels } else { channels };
    // Mixed magnitudes per block so that scales differ widely; a few exact zeros rows included.
    let mut x: Vec<bf16> = Vec::with_capacity(tokens * width);
    for t in 0..tokens {
        let row_scale = if t % 5 == 4 {
            0.0
        } else {
            10f32.powf(rng.uniform(-3.0, 2.0))
        };
        x.extend((0..width).map(|_| bf16::from_f32(rng.normal() * row_scale)));
    }
    let dx = gpu.upload(&x, &[tokens, width])?;
    let mut out = ops::Fp8Buffers::new(gpu, tokens, channels, layout)?;
    gpu.fill_bytes(&mut out.q, 0xff)?;
    gpu.fill_bytes(&mut out.scales, 0xff)?;
    let expect = if fused_silu {
        ops::silu_and_mul_quantize_fp8(gpu, &dx, ue8m0, &mut out)?;
        reference::silu_and_mul_quantize_fp8(&x, channels, ue8m0, layout)?
    } else {
        ops::quantize_fp8(gpu, &dx, ue8m0, &mut out)?;
        reference::quantize_fp8(&x, channels, ue8m0, layout)?
    };
    let got = reference::Fp8Activations {
        q: gpu.download(&out.q)?,
        scales: gpu.download(&out.scales)?,
        tokens,
        channels,
        layout,
    };
    let kernel = if fused_silu {
        "silu_and_mul_quantize_fp8"
    } else {
        "quantize_fp8"
    };
    let case = format!(
        "[{tokens}, {channels}] {layout:?}{}",
        if ue8m0 { " ue8m0" } else { "" }
    );
    let scales_equal = got
        .scales
        .iter()
        .zip(&expect.scales)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    if !fused_silu {
        let mismatches = got.q.iter().zip(&expect.q).filter(|(a, b)| a != b).count();
        return Ok(
            CheckReport::new(kernel, case, "code_mismatches", mismatches as f64, 0.0)
                .require(scales_equal, "scales differ from the reference bit pattern"),
        );
    }
    let got_deq = reference::dequantize_fp8(&got);
    let ref_deq = reference::dequantize_fp8(&expect);
    let exact: Vec<f64> = x
        .chunks_exact(2 * channels)
        .flat_map(|row| {
            let (g, u) = row.split_at(channels);
            g.iter()
                .zip(u)
                .map(|(g, u)| reference::silu_mul::silu(g.to_f32()) as f64 * f64::from(u.to_f32()))
                .collect::<Vec<_>>()
        })
        .collect();
    let vs_exact = rel_l2(got_deq.iter().map(|&v| f64::from(v)), exact.iter().copied());
    Ok(CheckReport::new(
        kernel,
        case,
        "rel_l2_vs_host",
        rel_l2_f32(&got_deq, &ref_deq),
        1e-2,
    )
    .require(
        vs_exact <= 0.0625,
        format!("rel_l2 vs exact products {vs_exact:.3e} > 2^-4"),
    ))
}

fn rope_case(
    gpu: &Gpu,
    rng: &mut Rng,
    layout: RopeLayout,
    len: usize,
    name: &str,
) -> Result<CheckReport> {
    let params = deepseek_v3_rope();
    let max_positions = 163_840;
    let table = ops::RopeTable::new(gpu, &params, max_positions)?;
    let x: Vec<bf16> = rng.normal_vec(len, 1.0);
    // Positions spread over the whole YaRN range, plus 0 and the last one.
    let positions: Vec<i32> = (0..layout.tokens)
        .map(|t| match t {
            0 => 0,
            1 => (max_positions - 1) as i32,
            _ => rng.below(max_positions as u64) as i32,
        })
        .collect();
    let mut dx = gpu.upload(&x, &[len])?;
    let dpos = gpu.upload(&positions, &[layout.tokens])?;
    let mut status = DeviceStatus::new(gpu)?;
    ops::apply_rope(gpu, &mut dx, &layout, &dpos, &table, &mut status)?;
    let mut expect = x.clone();
    reference::apply_rope(&mut expect, &layout, &positions, &params, max_positions)?;
    let got = gpu.download(&dx)?;
    status.check(gpu, "rope")?;
    // Elements outside the rotary slices must be untouched (bitwise).
    let mut rotary = vec![false; len];
    for t in 0..layout.tokens {
        for h in 0..layout.heads {
            let start = t * layout.token_stride + h * layout.head_stride + layout.offset;
            rotary[start..start + params.rope_dim]
                .iter_mut()
                .for_each(|m| *m = true);
        }
    }
    let untouched = (0..len).all(|i| rotary[i] || got[i].to_bits() == x[i].to_bits());
    Ok(CheckReport::new(
        name,
        format!("tokens {} heads {}", layout.tokens, layout.heads),
        "rel_l2",
        rel_l2_f32(&got, &expect),
        BF16_ELEMENTWISE_TOL,
    )
    .require(untouched, "an element outside the rotary dims changed"))
}

/// RoPE on q_pe inside q [T, H, 192] (rope dims at offset 128 of each head).
pub fn check_rope_q(gpu: &Gpu, rng: &mut Rng, tokens: usize, heads: usize) -> Result<CheckReport> {
    let layout = RopeLayout {
        tokens,
        heads,
        token_stride: heads * 192,
        head_stride: 192,
        offset: 128,
    };
    rope_case(gpu, rng, layout, tokens * heads * 192, "rope_q")
}

/// RoPE on k_pe inside the latent KV row [T, 576] (offset 512, one shared head).
pub fn check_rope_kv(gpu: &Gpu, rng: &mut Rng, tokens: usize) -> Result<CheckReport> {
    let layout = RopeLayout {
        tokens,
        heads: 1,
        token_stride: 576,
        head_stride: 576,
        offset: 512,
    };
    rope_case(gpu, rng, layout, tokens * 576, "rope_k")
}

/// An out-of-table position must be reported, not read out of bounds.
pub fn check_rope_bad_position(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let params = deepseek_v3_rope();
    let table = ops::RopeTable::new(gpu, &params, 128)?;
    let layout = RopeLayout {
        tokens: 2,
        heads: 1,
        token_stride: 64,
        head_stride: 64,
        offset: 0,
    };
    let x: Vec<bf16> = rng.normal_vec(128, 1.0);
    let mut dx = gpu.upload(&x, &[128])?;
    let dpos = gpu.upload(&[5i32, 128], &[2])?;
    let mut status = DeviceStatus::new(gpu)?;
    ops::apply_rope(gpu, &mut dx, &layout, &dpos, &table, &mut status)?;
    let flagged = status.check(gpu, "rope").is_err();
    let untouched = gpu.download(&dx)?[64..] == x[64..];
    Ok(CheckReport::new(
        "rope",
        "position 128 with a 128-entry table".into(),
        "detected",
        if flagged { 0.0 } else { 1.0 },
        0.0,
    )
    .require(untouched, "the token with the bad position was modified"))
}

pub fn check_embedding(
    gpu: &Gpu,
    rng: &mut Rng,
    vocab: usize,
    hidden: usize,
    tokens: usize,
) -> Result<CheckReport> {
    let table: Vec<bf16> = rng.normal_vec(vocab * hidden, 1.0);
    let mut ids: Vec<i32> = (0..tokens)
        .map(|_| rng.below(vocab as u64) as i32)
        .collect();
    if tokens >= 2 {
        ids[0] = 0;
        ids[1] = (vocab - 1) as i32;
    }
    let dtable = gpu.upload(&table, &[vocab, hidden])?;
    let dids = gpu.upload(&ids, &[tokens])?;
    let mut dout = gpu.poisoned(&[tokens, hidden])?;
    let mut status = DeviceStatus::new(gpu)?;
    ops::embedding(gpu, &dtable, &dids, &mut dout, &mut status)?;
    let got = gpu.download(&dout)?;
    status.check(gpu, "embedding")?;
    let expect = reference::embedding(&table, vocab, hidden, &ids)?;
    let mismatches = got
        .iter()
        .zip(&expect)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    Ok(CheckReport::new(
        "embedding",
        format!("vocab {vocab} hidden {hidden} tokens {tokens}"),
        "mismatches",
        mismatches as f64,
        0.0,
    ))
}

/// An id outside the vocabulary must be reported and produce a zero row.
pub fn check_embedding_bad_id(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let (vocab, hidden) = (10, 16);
    let table: Vec<bf16> = rng.normal_vec(vocab * hidden, 1.0);
    let dtable = gpu.upload(&table, &[vocab, hidden])?;
    let dids = gpu.upload(&[3i32, 10], &[2])?;
    let mut dout = gpu.poisoned(&[2, hidden])?;
    let mut status = DeviceStatus::new(gpu)?;
    ops::embedding(gpu, &dtable, &dids, &mut dout, &mut status)?;
    let flagged = status.check(gpu, "embedding").is_err();
    let got = gpu.download(&dout)?;
    let zero_row = got[hidden..].iter().all(|v| v.to_f32() == 0.0);
    Ok(CheckReport::new(
        "embedding",
        "id 10 with vocab 10".into(),
        "detected",
        if flagged { 0.0 } else { 1.0 },
        0.0,
    )
    .require(zero_row, "the bad id's row is not zero"))
}

/// Logits with planted exact ties at the maximum, NaNs and -inf, so the tie rule is exercised.
fn adversarial_logits(rng: &mut Rng, rows: usize, vocab: usize) -> Vec<f32> {
    let mut logits: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
    for row in logits.chunks_exact_mut(vocab) {
        let a = rng.below(vocab as u64) as usize;
        let b = rng.below(vocab as u64) as usize;
        row[a] = 40.0;
        row[b] = 40.0;
        row[rng.below(vocab as u64) as usize] = f32::NAN;
        row[rng.below(vocab as u64) as usize] = f32::NEG_INFINITY;
    }
    logits
}

pub fn check_argmax(gpu: &Gpu, rng: &mut Rng, rows: usize, vocab: usize) -> Result<CheckReport> {
    let logits = adversarial_logits(rng, rows, vocab);
    let dl = gpu.upload(&logits, &[rows, vocab])?;
    let mut dout = gpu.poisoned(&[rows])?;
    ops::argmax(gpu, &dl, &mut dout)?;
    let got = gpu.download(&dout)?;
    let expect = reference::argmax(&logits, vocab)?;
    let mismatches = got.iter().zip(&expect).filter(|(a, b)| a != b).count();
    Ok(CheckReport::new(
        "argmax",
        format!("[{rows}, {vocab}] with ties/NaN/-inf"),
        "mismatches",
        mismatches as f64,
        0.0,
    ))
}

/// How the sampled rows of one launch compare with `reference::sampling::sample_row`.
#[derive(Debug, Default)]
struct SampleVerdict {
    exact: usize,
    /// Rows whose draw lies within rounding of an interval boundary (see [`judge_samples`]).
    near: usize,
    /// Near-misses of rows whose draw is a deliberate edge (0 or just below 1): those sit on a
    /// boundary by construction, so they do not count against the 10% budget.
    near_edge: usize,
    bad: usize,
}

impl SampleVerdict {
    fn report(self, name: &str, shape: String, rows: usize) -> CheckReport {
        let SampleVerdict {
            exact,
            near,
            near_edge,
            bad,
        } = self;
        // One near-miss is always allowed: with a handful of rows (the interpreter build's
        // sizes) a 10% budget would be none, and a near-miss is a legitimate outcome; only a
        // systematic off-by-one shows, as near-misses in most rows.
        CheckReport::new(name, shape, "bad_rows", bad as f64, 0.0).require(
            near * 10 <= rows || near <= 1,
            format!(
                "{near} of {rows} rows were boundary near-misses (exact {exact}, near-misses at \
                 the edge draws {near_edge})"
            ),
        )
    }
}

/// The draws the checks plant on purpose at the ends of [0, 1).
fn is_edge_draw(u: f32) -> bool {
    u == 0.0 || u == 1.0 - f32::EPSILON / 2.0
}

/// GPU and host sum the probabilities in different orders, so a draw that falls within rounding
/// of an interval boundary may pick a neighbour. Each row passes if it matches the reference, or
/// if the GPU's token is in the reference nucleus and the draw lies within 1e-4 of the nucleus
/// mass of that token's interval (f64 evaluation). Greedy rows must match exactly. The callers
/// allow at most 10% of rows (and always one) to be such near-misses, not counting the rows whose
/// draw is planted on an edge (with 2 or 3 rows, one planted edge draw alone used to exceed 10%:
/// the interpreter build, which runs few rows, found it).
fn judge_samples(
    logits: &[f32],
    vocab: usize,
    params: &[SamplingParams],
    uniforms: &[f32],
    got: &[i32],
) -> SampleVerdict {
    let mut v = SampleVerdict::default();
    for (r, row) in logits.chunks_exact(vocab).enumerate() {
        let (p, u, g) = (params[r], uniforms[r], got[r]);
        if g == reference::sampling::sample_row(row, p, u) {
            v.exact += 1;
        } else if p.temperature > 0.0 && near_boundary(row, p, u, g) {
            if is_edge_draw(u) {
                v.near_edge += 1;
            } else {
                v.near += 1;
            }
        } else {
            v.bad += 1;
        }
    }
    v
}

/// Whether token `g` is in the reference nucleus of `row` and the draw `u` lies within 1e-4 of
/// the nucleus mass of its interval.
fn near_boundary(row: &[f32], p: SamplingParams, u: f32, g: i32) -> bool {
    let e = reference::sampling::row_weights(row, p.temperature);
    let tau = reference::sampling::nucleus_threshold(&e, p.top_p);
    let Some(&eg) = usize::try_from(g).ok().and_then(|g| e.get(g)) else {
        return false;
    };
    let in_nucleus = |v: &&f32| **v >= tau;
    let mass: f64 = e.iter().filter(in_nucleus).map(|&v| f64::from(v)).sum();
    let before: f64 = e[..g as usize]
        .iter()
        .filter(in_nucleus)
        .map(|&v| f64::from(v))
        .sum();
    let after = before + f64::from(eg);
    let goal = f64::from(u) * mass;
    let slack = 1e-4 * mass;
    eg >= tau && goal >= before - slack && goal <= after + slack
}

/// Row r draws `sampling_uniform(seed, offset, r)`; see [`judge_samples`] for the tolerance.
pub fn check_sample(
    gpu: &Gpu,
    rng: &mut Rng,
    rows: usize,
    vocab: usize,
    temperature: f32,
    top_p: f32,
) -> Result<CheckReport> {
    let logits = sampling_logits(rng, rows, vocab);
    let params = vec![SamplingParams { temperature, top_p }; rows];
    let (seed, offset) = (rng.next_u64(), rng.below(1 << 40));
    let dl = gpu.upload(&logits, &[rows, vocab])?;
    let dt = gpu.upload(&vec![temperature; rows], &[rows])?;
    let dp = gpu.upload(&vec![top_p; rows], &[rows])?;
    let mut dout = gpu.poisoned(&[rows])?;
    ops::sample(gpu, &dl, &dt, &dp, seed, offset, &mut dout)?;
    let got = gpu.download(&dout)?;
    let uniforms: Vec<f32> = (0..rows as u64)
        .map(|r| sampling_uniform(seed, offset, r))
        .collect();
    Ok(
        judge_samples(&logits, vocab, &params, &uniforms, &got).report(
            "sample",
            format!("[{rows}, {vocab}] T={temperature} top_p={top_p}"),
            rows,
        ),
    )
}

/// `ops::sample_with_uniforms` with different settings per row (every third row greedy, the
/// others a random temperature, top_p 1 or random) and a given uniform per row, including the
/// ends 0 and the largest f32 below 1; see [`judge_samples`] for the tolerance.
pub fn check_sample_with_uniforms(
    gpu: &Gpu,
    rng: &mut Rng,
    rows: usize,
    vocab: usize,
) -> Result<CheckReport> {
    let logits = sampling_logits(rng, rows, vocab);
    let params: Vec<SamplingParams> = (0..rows)
        .map(|r| match r % 3 {
            0 => SamplingParams::GREEDY,
            1 => SamplingParams {
                temperature: rng.uniform(0.3, 2.0),
                top_p: 1.0,
            },
            _ => SamplingParams {
                temperature: rng.uniform(0.3, 2.0),
                top_p: rng.uniform(0.05, 1.0),
            },
        })
        .collect();
    let uniforms: Vec<f32> = (0..rows)
        .map(|r| match r % 5 {
            0 => 0.0,
            1 => 1.0 - f32::EPSILON / 2.0,
            _ => rng.unit(),
        })
        .collect();
    let temperature: Vec<f32> = params.iter().map(|p| p.temperature).collect();
    let top_p: Vec<f32> = params.iter().map(|p| p.top_p).collect();
    let dl = gpu.upload(&logits, &[rows, vocab])?;
    let dt = gpu.upload(&temperature, &[rows])?;
    let dp = gpu.upload(&top_p, &[rows])?;
    let du = gpu.upload(&uniforms, &[rows])?;
    let mut dout = gpu.poisoned(&[rows])?;
    ops::sample_with_uniforms(gpu, &dl, &dt, &dp, &du, &mut dout)?;
    let got = gpu.download(&dout)?;
    Ok(
        judge_samples(&logits, vocab, &params, &uniforms, &got).report(
            "sample_with_uniforms",
            format!("[{rows}, {vocab}] mixed greedy / T / top_p per row"),
            rows,
        ),
    )
}

/// [`adversarial_logits`] with the planted 40.0 ties lowered to 4.0: at 40 every draw would be
/// trivial.
fn sampling_logits(rng: &mut Rng, rows: usize, vocab: usize) -> Vec<f32> {
    let mut logits = adversarial_logits(rng, rows, vocab);
    for v in logits.iter_mut().filter(|v| **v == 40.0) {
        *v = 4.0;
    }
    logits
}
