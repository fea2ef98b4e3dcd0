//! Routing kernels (`cuda/routing.cu`) against `reference::routing` on fresh random and
//! adversarial inputs. Outputs are poisoned (0xff bytes: NaN weights, id -1) before each launch, so
//! an element the kernel failed to write cannot pass.
//!
//! Tolerances:
//! - ids: 0 mismatches. The kernel evaluates the reference's arithmetic operation for operation
//!   with correctly rounded operations (see the reference's module docs), so every comparison has
//!   the same outcome on both sides.
//! - weights: by the same construction they are bit-identical; the report's note counts the ones
//!   that are not. The pass bound is a relative error of [`WEIGHT_TOL`] = 2^-22 (4 ulp), the most
//!   that one stray rounding difference in a single `s` (a contracted or reordered operation)
//!   could cause through `s / (sum + 1e-20) * scale` (one ulp in s, at most one in the sum, one
//!   each in the division and the product); an actual routing error is orders of magnitude
//!   larger.
//! - gate GEMM: |z - exact| <= hidden * 2^-23 * sum_k |x_k w_k| per element (the worst-case bound
//!   of any summation order in f32, with 2^-23 to allow truncating tensor-core adds), and the
//!   relative L2 distance to the f32 reference <= 1e-4.

use half::bf16;
use kernels::checks::CheckReport;
use kernels::gpu::{DeviceStatus, Gpu};
use kernels::metrics::rel_l2_f32;
use kernels::rng::Rng;
use kernels::Result;
use rayon::prelude::*;

use crate::gpu::routing::{self as gpu_routing, GateTile};
use crate::reference::routing::{self as reference, RoutingConfig, Scoring, TopkMethod};

/// Relative error allowed on routing weights (see the module docs).
pub const WEIGHT_TOL: f64 = 2.384_185_791_015_625e-7; // 2^-22

/// How router logits (and the bias) are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitStyle {
    /// N(0, 2^2) logits, N(0, 0.05^2) bias.
    Normal,
    /// Logits and bias from a handful of values: exact ties everywhere.
    Ties,
    /// +-inf, NaN, +-1e30, +-FLT_MAX, values at exp's clamp points mixed into normal logits;
    /// bias with infinities and NaN.
    Extremes,
    /// Every logit and every bias of a token equal.
    AllEqual,
    /// Every group a copy of the first: all group scores tie.
    EqualGroups,
    /// Logits of +-30..240: sigmoid saturates to exactly 0 or 1 (ties in s from distinct z).
    Saturating,
}

impl LogitStyle {
    pub const ALL: [LogitStyle; 6] = [
        LogitStyle::Normal,
        LogitStyle::Ties,
        LogitStyle::Extremes,
        LogitStyle::AllEqual,
        LogitStyle::EqualGroups,
        LogitStyle::Saturating,
    ];
}

/// Logits z [tokens, E] and, for `noaux_tc`, a bias [E] in the given style.
pub fn routing_inputs(
    rng: &mut Rng,
    style: LogitStyle,
    tokens: usize,
    cfg: &RoutingConfig,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let e = cfg.num_experts;
    let g = cfg.group_size();
    const DISCRETE: [f32; 5] = [-1.0, 0.0, 0.25, 0.5, 1.0];
    const EXTREMES: [f32; 12] = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e30,
        -1e30,
        f32::MAX,
        -f32::MAX,
        88.7,
        -88.7,
        -104.0,
        89.0,
        -0.0,
    ];
    let pick = |rng: &mut Rng, set: &[f32]| set[rng.below(set.len() as u64) as usize];
    let mut z = Vec::with_capacity(tokens * e);
    for _ in 0..tokens {
        match style {
            LogitStyle::Normal => z.extend((0..e).map(|_| rng.normal() * 2.0)),
            LogitStyle::Ties => z.extend((0..e).map(|_| pick(rng, &DISCRETE))),
            LogitStyle::Extremes => z.extend((0..e).map(|_| {
                if rng.below(3) == 0 {
                    pick(rng, &EXTREMES)
                } else {
                    rng.normal() * 3.0
                }
            })),
            LogitStyle::AllEqual => {
                let v = rng.normal();
                z.extend(std::iter::repeat_n(v, e));
            }
            LogitStyle::EqualGroups => {
                let group: Vec<f32> = (0..g).map(|_| pick(rng, &DISCRETE)).collect();
                z.extend((0..e).map(|i| group[i % g]));
            }
            LogitStyle::Saturating => z.extend((0..e).map(|_| {
                let sign = if rng.below(2) == 0 { 1.0 } else { -4.0 };
                sign * rng.uniform(30.0, 60.0)
            })),
        }
    }
    let bias = cfg.uses_bias().then(|| match style {
        LogitStyle::Normal | LogitStyle::Saturating => {
            (0..e).map(|_| rng.normal() * 0.05).collect()
        }
        LogitStyle::Ties => (0..e).map(|_| pick(rng, &[0.0, 0.125, -0.125])).collect(),
        LogitStyle::Extremes => (0..e)
            .map(|_| match rng.below(8) {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                2 => f32::NAN,
                _ => rng.normal() * 0.05,
            })
            .collect(),
        LogitStyle::AllEqual => vec![0.01; e],
        LogitStyle::EqualGroups => {
            let group: Vec<f32> = (0..g).map(|_| pick(rng, &[0.0, 0.125])).collect();
            (0..e).map(|i| group[i % g]).collect()
        }
    });
    (z, bias)
}

/// A valid config drawn from the whole supported space (E <= 512, K <= 16, n_group <= 16, every
/// method and scoring).
pub fn random_config(rng: &mut Rng) -> RoutingConfig {
    loop {
        let n_group = 1 + rng.below(16) as usize;
        let g = 1 + rng.below((512 / n_group).min(64) as u64) as usize;
        let method = match rng.below(3) {
            0 => TopkMethod::NoauxTc,
            1 => TopkMethod::Greedy,
            _ => TopkMethod::GroupLimitedGreedy,
        };
        let scoring = if method == TopkMethod::NoauxTc || rng.below(2) == 0 {
            Scoring::Sigmoid
        } else {
            Scoring::Softmax
        };
        let topk_group = 1 + rng.below(n_group as u64) as usize;
        let available = if method == TopkMethod::Greedy {
            n_group * g
        } else {
            topk_group * g
        };
        let cfg = RoutingConfig {
            num_experts: n_group * g,
            top_k: 1 + rng.below(available.min(16) as u64) as usize,
            n_group,
            topk_group,
            scoring,
            method,
            norm_topk_prob: rng.below(2) == 0,
            routed_scaling_factor: [1.0f32, 2.5, 16.0][rng.below(3) as usize],
        };
        if cfg.validate().is_ok() {
            return cfg;
        }
    }
}

/// A short description of a config for report case names.
pub fn describe(cfg: &RoutingConfig) -> String {
    let method = match cfg.method {
        TopkMethod::NoauxTc => "noaux_tc",
        TopkMethod::Greedy => "greedy",
        TopkMethod::GroupLimitedGreedy => "group_limited",
    };
    let scoring = match cfg.scoring {
        Scoring::Sigmoid => "sigmoid",
        Scoring::Softmax => "softmax",
    };
    format!(
        "E={} K={} groups {}/{} {scoring} {method}{} x{}",
        cfg.num_experts,
        cfg.top_k,
        cfg.topk_group,
        cfg.n_group,
        if cfg.norm_topk_prob { " norm" } else { "" },
        cfg.routed_scaling_factor
    )
}

/// Largest |got - expect| / |expect| (0 where both are 0, infinite where only expect is 0, NaN
/// counts as infinite).
fn max_rel_err(got: &[f32], expect: &[f32]) -> f64 {
    got.iter()
        .zip(expect)
        .map(|(&g, &e)| {
            let (g, e) = (f64::from(g), f64::from(e));
            if g == e {
                0.0
            } else if e == 0.0 || g.is_nan() {
                f64::INFINITY
            } else {
                ((g - e) / e).abs()
            }
        })
        .fold(0.0, f64::max)
}

/// Routes `z` on the device and compares ids (exactly) and weights with the reference.
fn compare_route(
    gpu: &Gpu,
    z: &[f32],
    bias: Option<&[f32]>,
    cfg: &RoutingConfig,
    case: String,
) -> Result<CheckReport> {
    let tokens = z.len() / cfg.num_experts;
    let dz = gpu.upload(z, &[tokens, cfg.num_experts])?;
    let dbias = bias
        .map(|b| gpu.upload(b, &[cfg.num_experts]))
        .transpose()?;
    let mut dids = gpu.poisoned(&[tokens, cfg.top_k])?;
    let mut dw = gpu.poisoned(&[tokens, cfg.top_k])?;
    gpu_routing::route(gpu, &dz, dbias.as_ref(), cfg, &mut dids, &mut dw)?;
    let ids = gpu.download(&dids)?;
    let weights = gpu.download(&dw)?;
    let expect = reference::route(z, bias, cfg)?;
    let mismatched_rows = (0..tokens)
        .filter(|&t| ids[t * cfg.top_k..(t + 1) * cfg.top_k] != *expect.ids_of(t))
        .count();
    let w_err = max_rel_err(&weights, &expect.weights);
    let not_bitwise = weights
        .iter()
        .zip(&expect.weights)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let mut report = CheckReport::new(
        "route_topk",
        case,
        "id_row_mismatches",
        mismatched_rows as f64,
        0.0,
    );
    report.note = format!(
        "weights: max rel err {w_err:.3e}, {not_bitwise} of {} not bit-identical",
        weights.len()
    );
    Ok(report.require(
        w_err <= WEIGHT_TOL,
        format!("weights max relative error {w_err:.3e} > {WEIGHT_TOL:.3e}"),
    ))
}

/// The routing kernel against the reference on `tokens` tokens of `style` logits.
pub fn check_route(
    gpu: &Gpu,
    rng: &mut Rng,
    cfg: &RoutingConfig,
    tokens: usize,
    style: LogitStyle,
) -> Result<CheckReport> {
    let (z, bias) = routing_inputs(rng, style, tokens, cfg);
    compare_route(
        gpu,
        &z,
        bias.as_deref(),
        cfg,
        format!("{} T={tokens} {style:?}", describe(cfg)),
    )
}

/// Gate GEMM then routing, both on the device; ids must equal the reference's routing of the
/// device's logits (the realistic logit distribution of a BF16 GEMM, many near-ties).
pub fn check_gate_then_route(
    gpu: &Gpu,
    rng: &mut Rng,
    cfg: &RoutingConfig,
    tokens: usize,
    hidden: usize,
) -> Result<CheckReport> {
    let e = cfg.num_experts;
    let x: Vec<bf16> = rng.normal_vec(tokens * hidden, 1.0);
    let w: Vec<bf16> = rng.normal_vec(e * hidden, 0.02);
    let bias: Option<Vec<f32>> = cfg
        .uses_bias()
        .then(|| (0..e).map(|_| rng.normal() * 0.05).collect());
    let dx = gpu.upload(&x, &[tokens, hidden])?;
    let dw = gpu.upload(&w, &[e, hidden])?;
    let dbias = bias.as_ref().map(|b| gpu.upload(b, &[e])).transpose()?;
    let mut dz = gpu.poisoned(&[tokens, e])?;
    let mut dids = gpu.poisoned(&[tokens, cfg.top_k])?;
    let mut dwts = gpu.poisoned(&[tokens, cfg.top_k])?;
    gpu_routing::gate_logits(gpu, &dx, &dw, &mut dz)?;
    gpu_routing::route(gpu, &dz, dbias.as_ref(), cfg, &mut dids, &mut dwts)?;
    let z = gpu.download(&dz)?;
    let ids = gpu.download(&dids)?;
    let weights = gpu.download(&dwts)?;
    let expect = reference::route(&z, bias.as_deref(), cfg)?;
    let mismatched_rows = (0..tokens)
        .filter(|&t| ids[t * cfg.top_k..(t + 1) * cfg.top_k] != *expect.ids_of(t))
        .count();
    let w_err = max_rel_err(&weights, &expect.weights);
    Ok(CheckReport::new(
        "gate_gemm+route_topk",
        format!("{} T={tokens} hidden {hidden}", describe(cfg)),
        "id_row_mismatches",
        mismatched_rows as f64,
        0.0,
    )
    .require(
        w_err <= WEIGHT_TOL,
        format!("weights max relative error {w_err:.3e} > {WEIGHT_TOL:.3e}"),
    ))
}

/// The gate GEMM against the f32 reference and the exact (f64) products.
pub fn check_gate_logits(
    gpu: &Gpu,
    rng: &mut Rng,
    tokens: usize,
    hidden: usize,
    experts: usize,
    tile: Option<GateTile>,
) -> Result<CheckReport> {
    let x: Vec<bf16> = rng.normal_vec(tokens * hidden, 1.0);
    let w: Vec<bf16> = rng.normal_vec(experts * hidden, 0.02);
    let dx = gpu.upload(&x, &[tokens, hidden])?;
    let dw = gpu.upload(&w, &[experts, hidden])?;
    let mut dz = gpu.poisoned(&[tokens, experts])?;
    gpu_routing::gate_logits_with(gpu, &dx, &dw, &mut dz, tile)?;
    let got = gpu.download(&dz)?;
    let expect = reference::gate_logits(&x, &w, hidden, experts)?;
    let xf: Vec<f64> = x.iter().map(|v| f64::from(v.to_f32())).collect();
    let wf: Vec<f64> = w.iter().map(|v| f64::from(v.to_f32())).collect();
    let unit = hidden as f64 * 2f64.powi(-23);
    let worst = got
        .par_iter()
        .enumerate()
        .map(|(idx, &g)| {
            let (t, e) = (idx / experts, idx % experts);
            let (xr, wr) = (
                &xf[t * hidden..(t + 1) * hidden],
                &wf[e * hidden..(e + 1) * hidden],
            );
            let (exact, abs) = xr.iter().zip(wr).fold((0.0f64, 0.0f64), |(s, a), (p, q)| {
                (s + p * q, a + (p * q).abs())
            });
            let err = (f64::from(g) - exact).abs();
            let bound = unit * abs + f64::from(f32::MIN_POSITIVE);
            if err.is_nan() {
                f64::INFINITY
            } else {
                err / bound
            }
        })
        .reduce(|| 0.0, f64::max);
    let rel = rel_l2_f32(&got, &expect);
    let tile_name = match tile {
        Some(GateTile::Large) => "64x64",
        Some(GateTile::Small) => "16x16",
        None => "auto",
    };
    let mut report = CheckReport::new(
        "gate_gemm",
        format!("T={tokens} hidden {hidden} E={experts} tile {tile_name}"),
        "max_err_over_bound",
        worst,
        1.0,
    );
    report.note = format!("rel_l2 vs f32 reference {rel:.3e}");
    Ok(report.require(
        rel <= 1e-4,
        format!("rel_l2 vs f32 reference {rel:.3e} > 1e-4"),
    ))
}

/// Per-expert counts of random ids (every expert id, hot experts included).
pub fn check_expert_counts(
    gpu: &Gpu,
    rng: &mut Rng,
    tokens: usize,
    top_k: usize,
    experts: usize,
) -> Result<CheckReport> {
    let ids: Vec<i32> = (0..tokens * top_k)
        .map(|i| {
            if i % 3 == 0 {
                (experts - 1) as i32
            } else {
                rng.below(experts as u64) as i32
            }
        })
        .collect();
    let dids = gpu.upload(&ids, &[tokens, top_k])?;
    let mut dcounts = gpu.poisoned(&[experts])?;
    let mut status = DeviceStatus::new(gpu)?;
    gpu_routing::expert_counts(gpu, &dids, experts, &mut dcounts, &mut status)?;
    let got = gpu.download(&dcounts)?;
    let clean = status.check(gpu, "expert_counts").is_ok();
    let expect = reference::expert_counts(&ids, experts)?;
    let mismatches = got
        .iter()
        .zip(&expect)
        .filter(|(&g, &e)| i64::from(g) != i64::from(e))
        .count();
    Ok(CheckReport::new(
        "expert_counts",
        format!("T={tokens} K={top_k} E={experts}"),
        "mismatches",
        mismatches as f64,
        0.0,
    )
    .require(clean, "status reported a fault for valid ids"))
}

/// Out-of-range ids (E and -1) must be reported (status code 4) and not counted.
pub fn check_expert_counts_bad_id(gpu: &Gpu, _rng: &mut Rng) -> Result<CheckReport> {
    let experts = 8;
    let ids = [3i32, 8, 3, -1, 0];
    let dids = gpu.upload(&ids, &[5])?;
    let mut dcounts = gpu.poisoned(&[experts])?;
    let mut status = DeviceStatus::new(gpu)?;
    gpu_routing::expert_counts(gpu, &dids, experts, &mut dcounts, &mut status)?;
    let got = gpu.download(&dcounts)?;
    let flagged = status.check(gpu, "expert_counts").is_err();
    Ok(CheckReport::new(
        "expert_counts",
        "ids 8 and -1 with E = 8".into(),
        "detected",
        if flagged { 0.0 } else { 1.0 },
        0.0,
    )
    .require(
        got == [1, 0, 0, 2, 0, 0, 0, 0],
        format!("valid ids miscounted: {got:?}"),
    ))
}

/// DeepSeek-V3 with 512 experts, K = 16, 16 groups (8 kept): the kernel's largest shape.
pub fn max_config() -> RoutingConfig {
    RoutingConfig {
        num_experts: 512,
        top_k: 16,
        n_group: 16,
        topk_group: 8,
        ..RoutingConfig::deepseek_v3()
    }
}

/// The DeepSeek-V2 modes the checks cover (group-limited, greedy, normalized or not, sigmoid
/// greedy) plus shapes whose E is not a multiple of 32.
pub fn v2_and_odd_configs() -> Vec<RoutingConfig> {
    let v2 = RoutingConfig::deepseek_v2();
    let lite = RoutingConfig::deepseek_v2_lite();
    vec![
        v2,
        RoutingConfig {
            norm_topk_prob: true,
            ..v2
        },
        lite,
        RoutingConfig {
            norm_topk_prob: true,
            routed_scaling_factor: 2.0,
            ..lite
        },
        RoutingConfig {
            scoring: Scoring::Sigmoid,
            ..lite
        },
        RoutingConfig {
            scoring: Scoring::Sigmoid,
            ..v2
        },
        // 40 experts in 4 groups of 10, 2 kept.
        RoutingConfig {
            num_experts: 40,
            top_k: 3,
            n_group: 4,
            topk_group: 2,
            ..RoutingConfig::deepseek_v3()
        },
        // 96 experts in 3 groups of 32, 1 kept, K = 16 of its 32.
        RoutingConfig {
            num_experts: 96,
            top_k: 16,
            n_group: 3,
            topk_group: 1,
            ..RoutingConfig::deepseek_v3()
        },
        // A single group, 2 experts, K = 2.
        RoutingConfig {
            num_experts: 2,
            top_k: 2,
            n_group: 1,
            topk_group: 1,
            ..RoutingConfig::deepseek_v3()
        },
    ]
}

/// The sizes of [`all_checks`].
struct Sizes {
    /// Token counts of the V3 / max-config routing and of the gate at V3's hidden size.
    tokens: &'static [usize],
    /// Token counts of the per-style and V2 / odd-config routing runs.
    style_tokens: usize,
    /// (tokens, hidden, experts) of the gate with each tile forced.
    gate_forced: (usize, usize, usize),
    /// Tokens of the V3 gate-then-route run.
    gate_route_tokens: usize,
    /// Tokens of the two larger expert-count runs.
    counts: (usize, usize),
}

/// The GPU's sizes, or CPU-sized ones for the interpreter build ([`kernels::EMULATED`]): every
/// config, style and forced gate tile still runs, on tens to hundreds of tokens.
fn sizes(quick: bool) -> Sizes {
    if kernels::EMULATED {
        Sizes {
            tokens: if quick { &[1, 7] } else { &[1, 7, 65] },
            style_tokens: 65,
            gate_forced: (130, 2048, 256),
            gate_route_tokens: 65,
            counts: (512, 300),
        }
    } else {
        Sizes {
            tokens: if quick {
                &[1, 7, 128]
            } else {
                &[1, 7, 128, 4096]
            },
            style_tokens: 128,
            gate_forced: (300, 7168, 256),
            gate_route_tokens: 128,
            counts: (if quick { 512 } else { 4096 }, 1000),
        }
    }
}

/// Every routing case `harness verify` runs. `quick` drops the 4096-token shapes.
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<Result<CheckReport>> {
    let mut rng = Rng::fresh();
    let rng = &mut rng;
    let mut out = Vec::new();
    let sizes = sizes(quick);
    let tokens = sizes.tokens;
    let v3 = RoutingConfig::deepseek_v3();
    for &t in tokens {
        out.push(check_route(gpu, rng, &v3, t, LogitStyle::Normal));
        out.push(check_route(gpu, rng, &max_config(), t, LogitStyle::Normal));
    }
    for style in LogitStyle::ALL {
        out.push(check_route(gpu, rng, &v3, sizes.style_tokens, style));
        out.push(check_route(gpu, rng, &max_config(), 64, style));
    }
    for cfg in v2_and_odd_configs() {
        for style in [LogitStyle::Normal, LogitStyle::Ties, LogitStyle::Extremes] {
            out.push(check_route(gpu, rng, &cfg, sizes.style_tokens, style));
        }
    }
    for _ in 0..if quick { 4 } else { 16 } {
        let cfg = random_config(rng);
        let style = LogitStyle::ALL[rng.below(LogitStyle::ALL.len() as u64) as usize];
        out.push(check_route(gpu, rng, &cfg, 77, style));
    }
    for &t in tokens {
        out.push(check_gate_logits(gpu, rng, t, 7168, 256, None));
    }
    let (t, hidden, experts) = sizes.gate_forced;
    for tile in [GateTile::Large, GateTile::Small] {
        out.push(check_gate_logits(gpu, rng, t, hidden, experts, Some(tile)));
    }
    out.push(check_gate_logits(
        gpu,
        rng,
        5,
        100,
        72,
        Some(GateTile::Large),
    ));
    out.push(check_gate_logits(
        gpu,
        rng,
        70,
        100,
        72,
        Some(GateTile::Small),
    ));
    out.push(check_gate_logits(gpu, rng, 3, 5, 1, None));
    out.push(check_gate_then_route(
        gpu,
        rng,
        &v3,
        sizes.gate_route_tokens,
        7168,
    ));
    out.push(check_gate_then_route(
        gpu,
        rng,
        &RoutingConfig::deepseek_v2_lite(),
        33,
        2048,
    ));
    out.push(check_expert_counts(gpu, rng, 1, 8, 256));
    out.push(check_expert_counts(gpu, rng, sizes.counts.0, 8, 256));
    out.push(check_expert_counts(gpu, rng, sizes.counts.1, 16, 512));
    out.push(check_expert_counts_bad_id(gpu, rng));
    out
}
