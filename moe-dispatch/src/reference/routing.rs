//! MoE routing (spec §3.3): router logits `z` [T, E] -> `topk_ids` [T, K] and `topk_weights`
//! [T, K], plus the BF16 gate GEMM that produces `z` and per-expert token counts.
//!
//! # The rule, exactly (f32 arithmetic, every operation rounded to nearest even, no FMA unless
//! named)
//!
//! For each token (one row of `z`):
//!
//! 1. `o(v)` ([`ordered`]): NaN becomes -inf and -0.0 becomes +0.0. Every comparison below is on
//!    `o`-values, so NaN inputs are well defined (they lose) and the order is total.
//! 2. Scores `s`:
//!    - sigmoid ([`sigmoid`]): `s_i = 1 / (1 + exp_repro(-o(z_i)))`.
//!    - softmax ([`softmax`]): `m = max_i o(z_i)`; `e_i = 1` if `o(z_i) == m`, else
//!      `exp_repro(o(z_i) - m)` (so an all -inf row is uniform and a +inf logit takes all the
//!      mass); `s_i = e_i / S` with `S` = [`lane_tree_sum`] of `e` (a fixed summation order, the
//!      one the CUDA warp uses).
//! 3. Selection scores `c`: `c_i = o(s_i + bias_i)` for `noaux_tc`, else `c_i = s_i`.
//! 4. Groups: `n_group` groups of `G = E / n_group` consecutive experts. Group score:
//!    `o(c_a + c_b)` with `c_a >= c_b` the two largest `c` of the group (as a multiset) for
//!    `noaux_tc`; the largest `c` for `group_limited_greedy`. The `topk_group` best groups are
//!    kept (larger score first, equal scores: lower group index first). `greedy` keeps every
//!    group (n_group / topk_group are ignored).
//! 5. The K experts of the kept groups with the largest `c` are chosen. **Output order**: slot
//!    `j` of the row holds the `j`-th best, i.e. descending `c`, equal `c` lower expert index
//!    first. This is also the tie rule: on equal `c` (or equal group score) the lower index wins.
//! 6. Weights, in output order: `sum = ((0 + s_{id_0}) + s_{id_1}) + ... + s_{id_{K-1}}`;
//!    with `norm_topk_prob`: `w_j = (s_{id_j} / (sum + 1e-20)) * routed_scaling_factor`, without:
//!    `w_j = s_{id_j} * routed_scaling_factor`. The `+ 1e-20` is the released implementation's
//!    guard (Hugging Face `MoEGate`): it leaves the quotient unchanged whenever `sum >= 2^-41` and
//!    makes the weights 0 instead of NaN when every chosen `s` underflowed to 0.
//!
//! Differences from the Hugging Face code, all in the spec's favour: ties are broken by index
//! (torch.topk does not promise an order), and experts outside the kept groups are never chosen
//! (HF masks them to 0.0, which could beat a negative `c`).
//!
//! # Exactness between this reference and `cuda/routing.cu`
//!
//! `expf` on the device and `f32::exp` on the host (libm) are both accurate to about an ulp but are
//! not the same function, and a one-ulp difference in `s` can reorder two experts or break a tie
//! differently. So neither is used: [`exp_repro`] is defined as a fixed sequence of IEEE-754
//! operations that are correctly rounded on both sides (f32 multiply, add, divide, fused
//! multiply-add, round-to-integer, exact scaling by powers of two built from bits). The device code
//! spells each one with an intrinsic that nvcc never contracts or approximates (`__fmul_rn`,
//! `__fadd_rn`, `__fsub_rn`, `__fdiv_rn`, `__fmaf_rn`, `rintf`), the host with the Rust operators
//! (Rust never contracts) and `f32::mul_add`. The build keeps denormals (`-ftz=false`). Hence `s`,
//! `c`, the group scores, every comparison and the weight sum are bit-identical on both sides,
//! and so are the chosen ids, their order and (given the same summation order, step 6) the
//! weights. The kernel's warp reductions use only max/min (exact) and the xor-butterfly sum of
//! [`lane_tree_sum`], whose result is the same in every lane and reproduced here. `exp_repro` is
//! within 2 ulp of the exact exponential over the normal range (tested).
//!
//! # Gate GEMM
//!
//! [`gate_logits`]: `z[t, e] = sum_k x[t, k] * w[e, k]`, BF16 inputs, products exact in f32, f32
//! accumulation in increasing k. The kernel accumulates in another order (tensor-core tiles), so
//! the two agree to f32 summation error, not bit for bit; routing is compared on the same `z`.

use half::bf16;
use kernels::error::{check_len, Error, Result};
use rayon::prelude::*;

const OP: &str = "route";
const CONFIG: &str = "routing config";

/// Largest `n_routed_experts` the kernel supports (16 experts per lane of a warp).
pub const MAX_EXPERTS: usize = 512;
/// Largest `num_experts_per_tok`.
pub const MAX_TOP_K: usize = 16;
/// Largest `n_group`.
pub const MAX_GROUPS: usize = 16;
/// Lanes of the softmax summation tree: the CUDA warp width.
pub const SUM_LANES: usize = 32;
/// Added to the weight sum before normalizing (step 6).
pub const NORM_EPS: f32 = 1e-20;

/// `scoring_func`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Scoring {
    /// DeepSeek-V3: `s = sigmoid(z)`.
    Sigmoid,
    /// DeepSeek-V2: `s = softmax(z)` over the experts.
    Softmax,
}

impl Scoring {
    /// Parses a `config.json` `scoring_func` value.
    pub fn from_config(name: &str) -> Result<Self> {
        match name {
            "sigmoid" => Ok(Scoring::Sigmoid),
            "softmax" => Ok(Scoring::Softmax),
            other => Err(Error::invalid(
                CONFIG,
                format!("scoring_func = {other:?} is not supported (sigmoid, softmax)"),
            )),
        }
    }
}

/// `topk_method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TopkMethod {
    /// DeepSeek-V3: bias-corrected scores, group score = sum of the top 2.
    NoauxTc,
    /// DeepSeek-V2-Lite: plain top-K over all experts.
    Greedy,
    /// DeepSeek-V2: group score = max of the group.
    GroupLimitedGreedy,
}

impl TopkMethod {
    /// Parses a `config.json` `topk_method` value.
    pub fn from_config(name: &str) -> Result<Self> {
        match name {
            "noaux_tc" => Ok(TopkMethod::NoauxTc),
            "greedy" => Ok(TopkMethod::Greedy),
            "group_limited_greedy" => Ok(TopkMethod::GroupLimitedGreedy),
            other => Err(Error::invalid(
                CONFIG,
                format!(
                    "topk_method = {other:?} is not supported (noaux_tc, greedy, \
                     group_limited_greedy)"
                ),
            )),
        }
    }
}

/// The routing keys of `config.json` (spec §1).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RoutingConfig {
    /// `n_routed_experts` (E).
    pub num_experts: usize,
    /// `num_experts_per_tok` (K).
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    /// `scoring_func`.
    pub scoring: Scoring,
    /// `topk_method`.
    pub method: TopkMethod,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

impl RoutingConfig {
    /// DeepSeek-V3 (671B): 256 experts, 8 per token, 8 groups of which 4 are kept, sigmoid,
    /// `noaux_tc`, normalized, times 2.5.
    pub fn deepseek_v3() -> Self {
        RoutingConfig {
            num_experts: 256,
            top_k: 8,
            n_group: 8,
            topk_group: 4,
            scoring: Scoring::Sigmoid,
            method: TopkMethod::NoauxTc,
            norm_topk_prob: true,
            routed_scaling_factor: 2.5,
        }
    }

    /// DeepSeek-V2 (236B): 160 experts, 6 per token, 8 groups of which 3 are kept, softmax,
    /// `group_limited_greedy`, not normalized, times 16.
    pub fn deepseek_v2() -> Self {
        RoutingConfig {
            num_experts: 160,
            top_k: 6,
            n_group: 8,
            topk_group: 3,
            scoring: Scoring::Softmax,
            method: TopkMethod::GroupLimitedGreedy,
            norm_topk_prob: false,
            routed_scaling_factor: 16.0,
        }
    }

    /// DeepSeek-V2-Lite: 64 experts, 6 per token, softmax, `greedy`, not normalized, times 1.
    pub fn deepseek_v2_lite() -> Self {
        RoutingConfig {
            num_experts: 64,
            top_k: 6,
            n_group: 1,
            topk_group: 1,
            scoring: Scoring::Softmax,
            method: TopkMethod::Greedy,
            norm_topk_prob: false,
            routed_scaling_factor: 1.0,
        }
    }

    /// Experts per group, `E / n_group` (after [`RoutingConfig::validate`]).
    pub fn group_size(&self) -> usize {
        self.num_experts / self.n_group.max(1)
    }

    /// Whether routing takes `e_score_correction_bias` (only `noaux_tc` does).
    pub fn uses_bias(&self) -> bool {
        self.method == TopkMethod::NoauxTc
    }

    /// Whether groups restrict the choice (`greedy` ignores `n_group` / `topk_group`).
    pub fn uses_groups(&self) -> bool {
        self.method != TopkMethod::Greedy
    }

    /// Checks every key and their combinations; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::invalid(CONFIG, detail));
        let (e, k, g, kg) = (self.num_experts, self.top_k, self.n_group, self.topk_group);
        if e == 0 || e > MAX_EXPERTS {
            return bad(format!(
                "n_routed_experts = {e} must be in 1..={MAX_EXPERTS}"
            ));
        }
        if k == 0 || k > MAX_TOP_K {
            return bad(format!(
                "num_experts_per_tok = {k} must be in 1..={MAX_TOP_K}"
            ));
        }
        if g == 0 || g > MAX_GROUPS {
            return bad(format!("n_group = {g} must be in 1..={MAX_GROUPS}"));
        }
        if e % g != 0 {
            return bad(format!(
                "n_routed_experts = {e} is not a multiple of n_group = {g}"
            ));
        }
        if kg == 0 || kg > g {
            return bad(format!("topk_group = {kg} must be in 1..=n_group ({g})"));
        }
        if !self.routed_scaling_factor.is_finite() || self.routed_scaling_factor <= 0.0 {
            return bad(format!(
                "routed_scaling_factor = {} must be finite and > 0",
                self.routed_scaling_factor
            ));
        }
        if self.method == TopkMethod::NoauxTc {
            if self.scoring != Scoring::Sigmoid {
                return bad(
                    "topk_method = noaux_tc requires scoring_func = sigmoid (softmax scores \
                     take no correction bias)"
                        .into(),
                );
            }
            if e / g < 2 {
                return bad(format!(
                    "topk_method = noaux_tc scores a group by its top 2 experts, but \
                     n_routed_experts / n_group = {e} / {g} = {} (need >= 2)",
                    e / g
                ));
            }
        }
        let available = if self.uses_groups() { kg * (e / g) } else { e };
        if k > available {
            return bad(format!(
                "num_experts_per_tok = {k} exceeds the {available} experts available \
                 (topk_group {kg} x n_routed_experts / n_group {})",
                e / g
            ));
        }
        Ok(())
    }
}

/// The routing of a batch: token `t`'s `j`-th choice is `ids[t * top_k + j]` with weight
/// `weights[t * top_k + j]`, in the output order of step 5 (best first).
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub ids: Vec<i32>,
    pub weights: Vec<f32>,
    pub tokens: usize,
    pub top_k: usize,
}

impl Routing {
    pub fn ids_of(&self, token: usize) -> &[i32] {
        &self.ids[token * self.top_k..(token + 1) * self.top_k]
    }

    pub fn weights_of(&self, token: usize) -> &[f32] {
        &self.weights[token * self.top_k..(token + 1) * self.top_k]
    }
}

/// Step 1: the value every comparison uses. NaN -> -inf, -0.0 -> +0.0.
pub fn ordered(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else if v == 0.0 {
        0.0
    } else {
        v
    }
}

/// Whether (value `a`, index `i`) ranks before (`b`, `j`): larger value first, equal values lower
/// index first. Values must be [`ordered`] (no NaN).
pub fn ranks_before(a: f32, i: usize, b: f32, j: usize) -> bool {
    a > b || (a == b && i < j)
}

// exp_repro's constants, by bit pattern so both sides hold the same values.
const LOG2E: u32 = 0x3fb8_aa3b; // 1.44269502
const LN2_HI: u32 = 0x3f31_7200; // 0.693145752 (low bits zero)
const LN2_LO: u32 = 0x35bf_be8e; // 1.42860677e-6 = ln 2 - LN2_HI
/// 1/7!, 1/6!, ..., 1/2!, 1/1!, 1/0! rounded to f32: the Taylor polynomial of exp, Horner order.
const EXP_POLY: [u32; 8] = [
    0x3950_0d01,
    0x3ab6_0b61,
    0x3c08_8889,
    0x3d2a_aaab,
    0x3e2a_aaab,
    0x3f00_0000,
    0x3f80_0000,
    0x3f80_0000,
];
/// Clamp range of the argument: below -104 the result is 0 (< half the smallest denormal), above
/// 89 it is +inf.
const EXP_LO: f32 = -104.0;
const EXP_HI: f32 = 89.0;

/// 2^n for n in -126..=127, built from its bits (exact).
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// The bit-reproducible exponential both the reference and `cuda/routing.cu` use:
///
/// ```text
/// if x is NaN: return x
/// x = min(max(x, -104), 89)
/// k = rint(x * LOG2E)                               (f32 multiply, round half to even)
/// r = fma(k, -LN2_HI, x);  r = fma(k, -LN2_LO, r)
/// p = fma(...fma(fma(P[0], r, P[1]), r, P[2])..., r, P[7])   (Taylor to degree 7)
/// k1 = trunc(k / 2), k2 = k - k1
/// return (p * 2^k1) * 2^k2                           (first product exact, second rounds once)
/// ```
///
/// Within 2 ulp of e^x over the normal range; correct limits (0, +inf) at the ends.
pub fn exp_repro(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let x = x.clamp(EXP_LO, EXP_HI); // = fminf(fmaxf(x, -104), 89) for non-NaN x
    let k = (x * f32::from_bits(LOG2E)).round_ties_even();
    let r = k.mul_add(-f32::from_bits(LN2_HI), x);
    let r = k.mul_add(-f32::from_bits(LN2_LO), r);
    let mut p = f32::from_bits(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, f32::from_bits(c));
    }
    let ki = k as i32;
    let k1 = ki / 2;
    let k2 = ki - k1;
    (p * pow2(k1)) * pow2(k2)
}

/// `1 / (1 + exp_repro(-o(z)))`: 0 for z = -inf / NaN, 1 for z = +inf.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp_repro(-ordered(z)))
}

/// The sum the CUDA warp computes: lane `l` adds `v[l], v[l + 32], v[l + 64], ...` in that order
/// starting from 0, then the 32 partials are combined by an xor butterfly
/// (`p[l] = p[l] + p[l ^ d]` for d = 16, 8, 4, 2, 1), which leaves the same value in every lane.
pub fn lane_tree_sum(v: &[f32]) -> f32 {
    let mut p = [0.0f32; SUM_LANES];
    for (i, &x) in v.iter().enumerate() {
        p[i % SUM_LANES] += x;
    }
    let mut d = SUM_LANES / 2;
    while d > 0 {
        let prev = p;
        for (l, slot) in p.iter_mut().enumerate() {
            *slot = prev[l] + prev[l ^ d];
        }
        d /= 2;
    }
    p[0]
}

/// Softmax of one row (step 2).
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z
        .iter()
        .map(|&v| ordered(v))
        .fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z
        .iter()
        .map(|&v| {
            let v = ordered(v);
            if v == m {
                1.0
            } else {
                exp_repro(v - m)
            }
        })
        .collect();
    let sum = lane_tree_sum(&e);
    e.iter().map(|&x| x / sum).collect()
}

/// Step 2 for one row.
pub fn scores(z: &[f32], scoring: Scoring) -> Vec<f32> {
    match scoring {
        Scoring::Sigmoid => z.iter().map(|&v| sigmoid(v)).collect(),
        Scoring::Softmax => softmax(z),
    }
}

/// Step 3 for one row (`bias` is used only by `noaux_tc`).
pub fn selection_scores(s: &[f32], bias: Option<&[f32]>, method: TopkMethod) -> Vec<f32> {
    match (method, bias) {
        (TopkMethod::NoauxTc, Some(b)) => s.iter().zip(b).map(|(&s, &b)| ordered(s + b)).collect(),
        _ => s.iter().map(|&s| ordered(s)).collect(),
    }
}

/// Step 4's group scores for one row of selection scores `c`.
pub fn group_scores(c: &[f32], cfg: &RoutingConfig) -> Vec<f32> {
    c.chunks_exact(cfg.group_size())
        .map(|group| {
            let mut sorted = group.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            match cfg.method {
                TopkMethod::NoauxTc => ordered(sorted[0] + sorted[1]),
                _ => sorted[0],
            }
        })
        .collect()
}

/// Step 4's kept groups (as a mask over groups) for one row of selection scores `c`.
pub fn kept_groups(c: &[f32], cfg: &RoutingConfig) -> Vec<bool> {
    if !cfg.uses_groups() {
        return vec![true; cfg.n_group];
    }
    let scores = group_scores(c, cfg);
    let mut order: Vec<usize> = (0..cfg.n_group).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept = vec![false; cfg.n_group];
    for &g in &order[..cfg.topk_group] {
        kept[g] = true;
    }
    kept
}

/// Routes one token: writes its K ids and weights (steps 2-6). `bias` must be present exactly for
/// `noaux_tc`, and the config valid (checked by [`route`]).
pub fn route_row(
    z: &[f32],
    bias: Option<&[f32]>,
    cfg: &RoutingConfig,
    ids: &mut [i32],
    weights: &mut [f32],
) {
    let s = scores(z, cfg.scoring);
    let c = selection_scores(&s, bias, cfg.method);
    let kept = kept_groups(&c, cfg);
    let g = cfg.group_size();
    let mut candidates: Vec<usize> = (0..cfg.num_experts).filter(|&i| kept[i / g]).collect();
    candidates.sort_by(|&a, &b| c[b].total_cmp(&c[a]).then(a.cmp(&b)));
    let chosen = &candidates[..cfg.top_k];
    let mut sum = 0.0f32;
    for &i in chosen {
        sum += s[i];
    }
    for ((id, w), &i) in ids.iter_mut().zip(weights.iter_mut()).zip(chosen) {
        *id = i as i32;
        *w = if cfg.norm_topk_prob {
            s[i] / (sum + NORM_EPS) * cfg.routed_scaling_factor
        } else {
            s[i] * cfg.routed_scaling_factor
        };
    }
}

/// Routes every token of `z` ([T, E], row-major). `bias` (`e_score_correction_bias`, [E]) is
/// required by `noaux_tc` and rejected by the other methods.
pub fn route(z: &[f32], bias: Option<&[f32]>, cfg: &RoutingConfig) -> Result<Routing> {
    cfg.validate()?;
    let e = cfg.num_experts;
    check_bias(bias.map(<[f32]>::len), cfg)?;
    if z.len() % e != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "z has {} elements, not a multiple of n_routed_experts = {e}",
                z.len()
            ),
        ));
    }
    let tokens = z.len() / e;
    let k = cfg.top_k;
    let mut ids = vec![0i32; tokens * k];
    let mut weights = vec![0f32; tokens * k];
    z.par_chunks_exact(e)
        .zip(ids.par_chunks_exact_mut(k))
        .zip(weights.par_chunks_exact_mut(k))
        .for_each(|((row, ids), w)| route_row(row, bias, cfg, ids, w));
    Ok(Routing {
        ids,
        weights,
        tokens,
        top_k: k,
    })
}

/// Checks that a bias of length `bias_len` (None = absent) fits the config.
pub fn check_bias(bias_len: Option<usize>, cfg: &RoutingConfig) -> Result<()> {
    match (cfg.uses_bias(), bias_len) {
        (true, Some(len)) => check_len(OP, "bias (e_score_correction_bias)", len, cfg.num_experts),
        (true, None) => Err(Error::invalid(
            OP,
            "topk_method = noaux_tc requires e_score_correction_bias",
        )),
        (false, Some(_)) => Err(Error::invalid(
            OP,
            "a bias was given but only topk_method = noaux_tc uses e_score_correction_bias",
        )),
        (false, None) => Ok(()),
    }
}

/// Tokens routed to each expert: `counts[e]` = number of entries of `ids` equal to `e`.
/// An id outside `0..num_experts` is an index error naming its position.
pub fn expert_counts(ids: &[i32], num_experts: usize) -> Result<Vec<u32>> {
    const OP: &str = "expert_counts";
    let mut counts = vec![0u32; num_experts];
    for (pos, &id) in ids.iter().enumerate() {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|i| counts.get_mut(i))
            .ok_or_else(|| {
                Error::index(OP, format!("ids[{pos}] = {id} is outside 0..{num_experts}"))
            })?;
        *slot += 1;
    }
    Ok(counts)
}

/// The router GEMM: `z = x W^T`, x [T, hidden] and `weight` (`mlp.gate.weight`) [E, hidden] in
/// BF16, z [T, E] in f32. Each product is exact in f32; the sum runs over k in increasing order in
/// f32, starting from 0.
pub fn gate_logits(
    x: &[bf16],
    weight: &[bf16],
    hidden: usize,
    num_experts: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "gate_logits";
    if hidden == 0 {
        return Err(Error::invalid(OP, "hidden size is 0"));
    }
    if num_experts == 0 {
        return Err(Error::invalid(OP, "num_experts is 0"));
    }
    check_len(OP, "weight", weight.len(), num_experts * hidden)?;
    if x.len() % hidden != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "x has {} elements, not a multiple of hidden = {hidden}",
                x.len()
            ),
        ));
    }
    let w: Vec<f32> = weight.iter().map(|v| v.to_f32()).collect();
    let tokens = x.len() / hidden;
    let mut z = vec![0f32; tokens * num_experts];
    z.par_chunks_exact_mut(num_experts)
        .zip(x.par_chunks_exact(hidden))
        .for_each(|(out, row)| {
            let row: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
            for (o, w_row) in out.iter_mut().zip(w.chunks_exact(hidden)) {
                let mut acc = 0.0f32;
                for (a, b) in row.iter().zip(w_row) {
                    acc += a * b;
                }
                *o = acc;
            }
        });
    Ok(z)
}
