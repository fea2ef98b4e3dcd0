//! The routing reference (spec §3.3) against an independent brute-force implementation written
//! here (ranks by counting instead of sorting, its own softmax sum), on random configs and
//! adversarial logits (exact ties, equal group scores, +-inf, NaN, huge values, all equal); the
//! reproducible exponential against f64; config validation; counts; the bias update; the gate
//! GEMM reference.

use half::bf16;
use kernels::rng::Rng;
use kernels::Error;
use moe_dispatch::reference::bias_update::update_bias;
use moe_dispatch::reference::routing::{
    self, exp_repro, expert_counts, gate_logits, lane_tree_sum, route, sigmoid, RoutingConfig,
    Scoring, TopkMethod,
};
use proptest::prelude::*;

// ------------------------------------------------------------------------------------------------
// Brute force
// ------------------------------------------------------------------------------------------------

fn o(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else if v == 0.0 {
        0.0
    } else {
        v
    }
}

/// (a, i) ranks before (b, j).
fn before(a: f32, i: usize, b: f32, j: usize) -> bool {
    a > b || (a == b && i < j)
}

fn brute_softmax(z: &[f32]) -> Vec<f32> {
    let zo: Vec<f32> = z.iter().map(|&v| o(v)).collect();
    let mut m = f32::NEG_INFINITY;
    for &v in &zo {
        if v > m {
            m = v;
        }
    }
    let e: Vec<f32> = zo
        .iter()
        .map(|&v| if v == m { 1.0 } else { exp_repro(v - m) })
        .collect();
    // Lane partials, then the lane-0 view of the xor butterfly: p[l] += p[l + d] for l < d.
    let mut p = [0.0f32; 32];
    for (lane, slot) in p.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        let mut i = lane;
        while i < e.len() {
            acc += e[i];
            i += 32;
        }
        *slot = acc;
    }
    for d in [16usize, 8, 4, 2, 1] {
        for l in 0..d {
            p[l] += p[l + d];
        }
    }
    e.iter().map(|&x| x / p[0]).collect()
}

fn brute_route(z: &[f32], bias: Option<&[f32]>, cfg: &RoutingConfig) -> (Vec<i32>, Vec<f32>) {
    let e = cfg.num_experts;
    let k = cfg.top_k;
    let mut ids = Vec::new();
    let mut weights = Vec::new();
    for row in z.chunks_exact(e) {
        let s: Vec<f32> = match cfg.scoring {
            Scoring::Sigmoid => row
                .iter()
                .map(|&v| 1.0 / (1.0 + exp_repro(-o(v))))
                .collect(),
            Scoring::Softmax => brute_softmax(row),
        };
        let c: Vec<f32> = (0..e)
            .map(|i| match (cfg.method, bias) {
                (TopkMethod::NoauxTc, Some(b)) => o(s[i] + b[i]),
                _ => o(s[i]),
            })
            .collect();
        let g = e / cfg.n_group;
        let kept: Vec<bool> = if cfg.method == TopkMethod::Greedy {
            vec![true; cfg.n_group]
        } else {
            let score: Vec<f32> = (0..cfg.n_group)
                .map(|grp| {
                    let vals = &c[grp * g..(grp + 1) * g];
                    let (mut a, mut ai) = (f32::NEG_INFINITY, usize::MAX);
                    for (i, &v) in vals.iter().enumerate() {
                        if ai == usize::MAX || v > a {
                            a = v;
                            ai = i;
                        }
                    }
                    if cfg.method == TopkMethod::GroupLimitedGreedy {
                        return a;
                    }
                    let mut b = f32::NEG_INFINITY;
                    for (i, &v) in vals.iter().enumerate() {
                        if i != ai && v > b {
                            b = v;
                        }
                    }
                    o(a + b)
                })
                .collect();
            (0..cfg.n_group)
                .map(|grp| {
                    let better = (0..cfg.n_group)
                        .filter(|&h| h != grp && before(score[h], h, score[grp], grp))
                        .count();
                    better < cfg.topk_group
                })
                .collect()
        };
        let cand: Vec<usize> = (0..e).filter(|&i| kept[i / g]).collect();
        let mut chosen = vec![usize::MAX; k];
        for &i in &cand {
            let rank = cand
                .iter()
                .filter(|&&j| j != i && before(c[j], j, c[i], i))
                .count();
            if rank < k {
                chosen[rank] = i;
            }
        }
        assert!(
            chosen.iter().all(|&i| i != usize::MAX),
            "brute force: a rank left empty"
        );
        let mut sum = 0.0f32;
        for &i in &chosen {
            sum += s[i];
        }
        for &i in &chosen {
            ids.push(i as i32);
            weights.push(if cfg.norm_topk_prob {
                s[i] / (sum + 1e-20) * cfg.routed_scaling_factor
            } else {
                s[i] * cfg.routed_scaling_factor
            });
        }
    }
    (ids, weights)
}

fn assert_same_as_brute(z: &[f32], bias: Option<&[f32]>, cfg: &RoutingConfig) {
    let r = route(z, bias, cfg).expect("route");
    let (ids, weights) = brute_route(z, bias, cfg);
    assert_eq!(r.ids, ids, "ids differ for {cfg:?}");
    let w_bits: Vec<u32> = r.weights.iter().map(|w| w.to_bits()).collect();
    let b_bits: Vec<u32> = weights.iter().map(|w| w.to_bits()).collect();
    assert_eq!(
        w_bits, b_bits,
        "weights differ for {cfg:?}: {:?} vs {weights:?}",
        r.weights
    );
    assert!(r.weights.iter().all(|w| w.is_finite() && *w >= 0.0));
    // Each row: distinct ids, in range.
    for t in 0..r.tokens {
        let row = r.ids_of(t);
        for (j, &id) in row.iter().enumerate() {
            assert!((0..cfg.num_experts as i32).contains(&id));
            assert!(!row[..j].contains(&id), "duplicate id in row {t}: {row:?}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Inputs
// ------------------------------------------------------------------------------------------------

/// Logit styles: 0 normal, 1 few distinct values (many exact ties), 2 extremes mixed in, 3 all
/// equal, 4 groups that are exact copies of each other (equal group scores), 5 saturating.
fn logits(rng: &mut Rng, style: u32, tokens: usize, cfg: &RoutingConfig) -> Vec<f32> {
    let e = cfg.num_experts;
    let g = cfg.group_size();
    let discrete = [-1.0f32, 0.0, 0.25, 0.5, 1.0];
    let extremes = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e30,
        -1e30,
        88.7,
        -88.7,
        -104.0,
        200.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
    ];
    let mut z = Vec::with_capacity(tokens * e);
    for _ in 0..tokens {
        let row: Vec<f32> = match style {
            0 => (0..e).map(|_| rng.normal() * 2.0).collect(),
            1 => (0..e)
                .map(|_| discrete[rng.below(discrete.len() as u64) as usize])
                .collect(),
            2 => (0..e)
                .map(|_| {
                    if rng.below(3) == 0 {
                        extremes[rng.below(extremes.len() as u64) as usize]
                    } else {
                        rng.normal() * 3.0
                    }
                })
                .collect(),
            3 => vec![rng.normal(); e],
            4 => {
                let group: Vec<f32> = (0..g)
                    .map(|_| discrete[rng.below(discrete.len() as u64) as usize])
                    .collect();
                (0..e).map(|i| group[i % g]).collect()
            }
            _ => (0..e)
                .map(|_| if rng.below(2) == 0 { 30.0 } else { -120.0 } * rng.uniform(1.0, 2.0))
                .collect(),
        };
        z.extend(row);
    }
    z
}

/// Bias styles: 0 small normal, 1 zero, 2 few distinct values, 3 with extremes.
fn bias_for(rng: &mut Rng, style: u32, e: usize) -> Vec<f32> {
    match style {
        0 => (0..e).map(|_| rng.normal() * 0.05).collect(),
        1 => vec![0.0; e],
        2 => (0..e)
            .map(|_| [0.0f32, 0.125, -0.125][rng.below(3) as usize])
            .collect(),
        _ => (0..e)
            .map(|_| match rng.below(8) {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                2 => f32::NAN,
                3 => -1.0,
                _ => rng.normal(),
            })
            .collect(),
    }
}

/// A valid config drawn from the whole supported space.
fn random_config(rng: &mut Rng) -> RoutingConfig {
    loop {
        let n_group = 1 + rng.below(16) as usize;
        let max_g = (512 / n_group).min(40);
        let g = 1 + rng.below(max_g as u64) as usize;
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
        let top_k = 1 + rng.below(available.min(16) as u64) as usize;
        let cfg = RoutingConfig {
            num_experts: n_group * g,
            top_k,
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn reference_matches_brute_force(seed: u64, style in 0u32..6, bias_style in 0u32..4, tokens in 1usize..6) {
        let mut rng = Rng::new(seed);
        let cfg = random_config(&mut rng);
        let z = logits(&mut rng, style, tokens, &cfg);
        let bias = cfg.uses_bias().then(|| bias_for(&mut rng, bias_style, cfg.num_experts));
        assert_same_as_brute(&z, bias.as_deref(), &cfg);
    }

    #[test]
    fn presets_match_brute_force(seed: u64, style in 0u32..6, bias_style in 0u32..4, which in 0usize..4) {
        let mut rng = Rng::new(seed);
        let cfg = match which {
            0 => RoutingConfig::deepseek_v3(),
            1 => RoutingConfig::deepseek_v2(),
            2 => RoutingConfig::deepseek_v2_lite(),
            _ => RoutingConfig { num_experts: 512, top_k: 16, n_group: 16, topk_group: 8, ..RoutingConfig::deepseek_v3() },
        };
        let z = logits(&mut rng, style, 4, &cfg);
        let bias = cfg.uses_bias().then(|| bias_for(&mut rng, bias_style, cfg.num_experts));
        assert_same_as_brute(&z, bias.as_deref(), &cfg);
    }
}

// ------------------------------------------------------------------------------------------------
// Hand-checked and adversarial cases
// ------------------------------------------------------------------------------------------------

fn small_v3(top_k: usize) -> RoutingConfig {
    // 8 experts in 4 groups of 2, 2 groups kept.
    RoutingConfig {
        num_experts: 8,
        top_k,
        n_group: 4,
        topk_group: 2,
        ..RoutingConfig::deepseek_v3()
    }
}

#[test]
fn hand_example_v3() {
    // s = sigmoid(z); with z = 0 everywhere s = 0.5 exactly, so c = 0.5 + bias.
    let cfg = small_v3(3);
    let z = [0.0f32; 8];
    // groups: {0,1} {2,3} {4,5} {6,7}; group scores 0.5+0.5 + bias pairs.
    let bias = [0.0, 0.0, 0.25, -0.25, 0.125, 0.125, 0.5, -0.5];
    // c = [.5 .5 .75 .25 .625 .625 1 0]; group scores: 1.0, 1.0, 1.25, 1.0 -> keep group 2 (1.25)
    // then group 0 (1.0, lowest index among the ties). Candidates 0, 1, 4, 5 with c .5 .5 .625
    // .625 -> order 4, 5, 0.
    let r = route(&z, Some(&bias), &cfg).unwrap();
    assert_eq!(r.ids, vec![4, 5, 0]);
    // Weights from the unbiased s = 0.5 each: 0.5 / 1.5 * 2.5.
    let w = 0.5f32 / (1.5f32 + 1e-20) * 2.5;
    assert_eq!(r.weights, vec![w; 3]);
}

#[test]
fn output_order_is_descending_selection_score() {
    let mut rng = Rng::new(7);
    let cfg = RoutingConfig::deepseek_v3();
    let z = logits(&mut rng, 0, 16, &cfg);
    let bias = bias_for(&mut rng, 0, 256);
    let r = route(&z, Some(&bias), &cfg).unwrap();
    for t in 0..16 {
        let s = routing::scores(&z[t * 256..(t + 1) * 256], cfg.scoring);
        let c = routing::selection_scores(&s, Some(&bias), cfg.method);
        let ids = r.ids_of(t);
        for w in ids.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            assert!(routing::ranks_before(c[a], a, c[b], b), "row {t}: {ids:?}");
        }
        // Normalized weights sum to the scaling factor (to f32 rounding).
        let sum: f32 = r.weights_of(t).iter().sum();
        assert!((sum - 2.5).abs() <= 2.5 * 8.0 * f32::EPSILON, "sum {sum}");
    }
}

#[test]
fn all_equal_logits_pick_the_lowest_ids() {
    let cfg = RoutingConfig::deepseek_v3();
    let z = vec![0.3f32; 256 * 2];
    let bias = vec![0.01f32; 256];
    let r = route(&z, Some(&bias), &cfg).unwrap();
    for t in 0..2 {
        assert_eq!(r.ids_of(t), &[0, 1, 2, 3, 4, 5, 6, 7]);
        // Eight equal s summed in output order; all eight weights equal.
        let s = sigmoid(0.3);
        let sum = (0..8).fold(0.0f32, |acc, _| acc + s);
        let w = s / (sum + 1e-20) * 2.5;
        assert!((w - 2.5 / 8.0).abs() <= 4.0 * f32::EPSILON);
        assert!(r.weights_of(t).iter().all(|&x| x == w));
    }
    // Softmax, greedy and group-limited: the same rule.
    for cfg in [
        RoutingConfig::deepseek_v2(),
        RoutingConfig::deepseek_v2_lite(),
    ] {
        let z = vec![-2.0f32; cfg.num_experts];
        let r = route(&z, None, &cfg).unwrap();
        let expect: Vec<i32> = (0..cfg.top_k as i32).collect();
        assert_eq!(r.ids, expect);
    }
}

#[test]
fn equal_group_scores_keep_the_lowest_groups() {
    // Every group is the same permutation of values: all group scores tie, groups 0..3 are kept,
    // and the best experts of groups 0..3 are chosen (by value, then index).
    let cfg = RoutingConfig::deepseek_v3();
    let group: Vec<f32> = (0..32).map(|i| ((i * 7) % 32) as f32 / 8.0 - 2.0).collect();
    let z: Vec<f32> = (0..256).map(|i| group[i % 32]).collect();
    let bias = vec![0.0f32; 256];
    let r = route(&z, Some(&bias), &cfg).unwrap();
    let best = (0..32)
        .max_by(|&a, &b| group[a].total_cmp(&group[b]).then(b.cmp(&a)))
        .unwrap();
    let second = (0..32)
        .filter(|&i| i != best)
        .max_by(|&a, &b| group[a].total_cmp(&group[b]).then(b.cmp(&a)))
        .unwrap();
    let expect: Vec<i32> = [best, best + 32, best + 64, best + 96]
        .iter()
        .chain(&[second, second + 32, second + 64, second + 96])
        .map(|&i| i as i32)
        .collect();
    assert_eq!(r.ids, expect);
}

#[test]
fn exact_ties_go_to_the_lower_index() {
    // Greedy sigmoid over 10 experts; experts 3, 5 and 8 tie for the top.
    let cfg = RoutingConfig {
        num_experts: 10,
        top_k: 2,
        n_group: 1,
        topk_group: 1,
        scoring: Scoring::Sigmoid,
        method: TopkMethod::Greedy,
        norm_topk_prob: true,
        routed_scaling_factor: 1.0,
    };
    let mut z = vec![0.0f32; 10];
    for i in [8, 5, 3] {
        z[i] = 1.5;
    }
    assert_eq!(route(&z, None, &cfg).unwrap().ids, vec![3, 5]);
    // Distinct logits that saturate to the same s = 1 also tie (the rule is on s, not on z).
    let mut z = vec![0.0f32; 10];
    z[9] = 60.0;
    z[4] = 40.0;
    z[6] = 50.0;
    assert_eq!(sigmoid(40.0), 1.0);
    assert_eq!(route(&z, None, &cfg).unwrap().ids, vec![4, 6]);
}

#[test]
fn infinite_and_nan_logits() {
    let cfg = small_v3(2);
    let bias = [0.0f32; 8];
    // Everything -inf (or NaN): s = 0 everywhere, ties everywhere, weights 0 (not NaN).
    let z = [
        f32::NEG_INFINITY,
        f32::NAN,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
    ];
    let r = route(&z, Some(&bias), &cfg).unwrap();
    assert_eq!(r.ids, vec![0, 1]);
    assert_eq!(r.weights, vec![0.0, 0.0]);
    // +inf saturates to s = 1; NaN ranks like -inf.
    let z = [
        f32::NAN,
        0.0,
        f32::INFINITY,
        f32::NAN,
        f32::NAN,
        f32::NAN,
        f32::NAN,
        f32::INFINITY,
    ];
    let r = route(&z, Some(&bias), &cfg).unwrap();
    assert_eq!(r.ids, vec![2, 7]);
    assert_eq!(r.weights, vec![1.25, 1.25]);
    // Softmax: +inf logits share all the mass; an all -inf row is uniform.
    let cfg = RoutingConfig {
        num_experts: 6,
        top_k: 3,
        n_group: 1,
        topk_group: 1,
        scoring: Scoring::Softmax,
        method: TopkMethod::Greedy,
        norm_topk_prob: false,
        routed_scaling_factor: 1.0,
    };
    let z = [1.0, f32::INFINITY, 3.0, f32::NAN, f32::INFINITY, 1e30];
    let r = route(&z, None, &cfg).unwrap();
    assert_eq!(r.ids, vec![1, 4, 0]);
    assert_eq!(r.weights, vec![0.5, 0.5, 0.0]);
    let z = [f32::NEG_INFINITY; 6];
    let r = route(&z, None, &cfg).unwrap();
    assert_eq!(r.ids, vec![0, 1, 2]);
    assert!(r.weights.iter().all(|&w| w == 1.0 / 6.0));
}

#[test]
fn kept_groups_only() {
    // An expert outside the kept groups is never chosen, even if its c beats every kept one's
    // (here: a lone high expert in a group whose second expert is very low).
    let cfg = small_v3(2);
    let z = [0.0f32; 8];
    let bias = [5.0, -10.0, 0.1, 0.1, 0.2, 0.2, 0.0, 0.0];
    // group scores: 0.5+5 + 0.5-10 = -4; 1.2; 1.4; 1.0 -> keep groups 2 and 1.
    let r = route(&z, Some(&bias), &cfg).unwrap();
    assert_eq!(r.ids, vec![4, 5]);
}

#[test]
fn group_limited_greedy_uses_the_group_max() {
    let cfg = RoutingConfig {
        num_experts: 8,
        top_k: 2,
        n_group: 4,
        topk_group: 1,
        scoring: Scoring::Softmax,
        method: TopkMethod::GroupLimitedGreedy,
        norm_topk_prob: false,
        routed_scaling_factor: 2.0,
    };
    // Group 1 holds the single largest expert (3); group 3 has the larger pair sum but not the max.
    let z = [0.0f32, 0.0, 0.0, 3.0, 0.0, 0.0, 2.9, 2.9];
    let r = route(&z, None, &cfg).unwrap();
    assert_eq!(r.ids, vec![3, 2]);
    let s = routing::softmax(&z);
    assert_eq!(r.weights, vec![s[3] * 2.0, s[2] * 2.0]);
}

// ------------------------------------------------------------------------------------------------
// Numerics of exp / sigmoid / softmax
// ------------------------------------------------------------------------------------------------

fn ulp_diff(a: f32, b: f32) -> u32 {
    let key = |v: f32| {
        let b = v.to_bits() as i64;
        if b < 0x8000_0000 {
            b
        } else {
            0x8000_0000 - b
        }
    };
    (key(a) - key(b)).unsigned_abs() as u32
}

#[test]
fn exp_repro_is_within_two_ulp() {
    let mut rng = Rng::new(1);
    let mut worst = 0;
    let mut check = |x: f32| {
        let exact = (x as f64).exp();
        if exact < f32::MIN_POSITIVE as f64 || exact > f32::MAX as f64 {
            return;
        }
        let got = exp_repro(x);
        let d = ulp_diff(got, exact as f32);
        worst = worst.max(d);
        assert!(
            d <= 2,
            "exp_repro({x:e}) = {got:e}, exact {exact:e} ({d} ulp)"
        );
    };
    for _ in 0..1_000_000 {
        check(rng.uniform(-88.0, 88.8));
    }
    for _ in 0..200_000 {
        check(rng.uniform(-1.0, 1.0));
        check(rng.normal() * 1e-3);
    }
    // Around every reduction boundary k ln2 / 2.
    for k in -250i32..=256 {
        let c = k as f32 * std::f32::consts::LN_2 * 0.5;
        let mut v = c;
        for _ in 0..50 {
            check(v);
            v = f32::from_bits(v.to_bits() + 1);
        }
    }
    assert!(worst <= 2);
}

#[test]
fn exp_repro_limits() {
    assert_eq!(exp_repro(0.0), 1.0);
    assert_eq!(exp_repro(-0.0), 1.0);
    assert_eq!(exp_repro(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_repro(-104.0), 0.0);
    assert_eq!(exp_repro(-1e30), 0.0);
    assert_eq!(exp_repro(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_repro(89.0), f32::INFINITY);
    assert_eq!(exp_repro(1e30), f32::INFINITY);
    assert!(exp_repro(f32::NAN).is_nan());
    assert!(exp_repro(88.72).is_finite());
    // Subnormal results: within one smallest-denormal step of the exact value (plus 2 ulp of a
    // normal result at the boundary), and non-negative.
    let tiny = f64::from(f32::from_bits(1));
    let mut rng = Rng::new(2);
    for _ in 0..100_000 {
        let x = rng.uniform(-104.0, -87.0);
        let got = f64::from(exp_repro(x));
        let exact = (x as f64).exp();
        assert!(got >= 0.0);
        assert!(
            (got - exact).abs() <= tiny + exact * 2.5e-7,
            "exp_repro({x}) = {got:e}, exact {exact:e}"
        );
    }
}

#[test]
fn sigmoid_is_accurate_and_saturates() {
    let mut rng = Rng::new(3);
    for _ in 0..500_000 {
        let z = rng.uniform(-80.0, 30.0);
        let exact = 1.0 / (1.0 + (-(z as f64)).exp());
        let got = sigmoid(z);
        assert!(
            ulp_diff(got, exact as f32) <= 4,
            "sigmoid({z}) = {got:e}, exact {exact:e}"
        );
    }
    assert_eq!(sigmoid(0.0), 0.5);
    assert_eq!(sigmoid(f32::INFINITY), 1.0);
    assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    assert_eq!(sigmoid(f32::NAN), 0.0);
    assert_eq!(sigmoid(-1e30), 0.0);
    assert_eq!(sigmoid(1e30), 1.0);
}

#[test]
fn lane_tree_sum_matches_its_definition() {
    let mut rng = Rng::new(4);
    for n in [1usize, 5, 31, 32, 33, 64, 100, 160, 256, 512] {
        let v: Vec<f32> = (0..n).map(|_| rng.unit()).collect();
        let got = lane_tree_sum(&v);
        let s = brute_softmax(&v.iter().map(|x| x.ln()).collect::<Vec<_>>());
        assert!(s.iter().all(|x| x.is_finite()));
        let exact: f64 = v.iter().map(|&x| f64::from(x)).sum();
        assert!(((got as f64) - exact).abs() <= exact * n as f64 * 1.2e-7);
        // Lane partials then the lane-0 reduction, written out.
        let mut p = [0.0f32; 32];
        for (i, &x) in v.iter().enumerate() {
            p[i % 32] += x;
        }
        let q: Vec<f32> = (0..16).map(|l| p[l] + p[l + 16]).collect();
        let q: Vec<f32> = (0..8).map(|l| q[l] + q[l + 8]).collect();
        let q: Vec<f32> = (0..4).map(|l| q[l] + q[l + 4]).collect();
        let q: Vec<f32> = (0..2).map(|l| q[l] + q[l + 2]).collect();
        assert_eq!(got.to_bits(), (q[0] + q[1]).to_bits());
    }
}

#[test]
fn softmax_sums_to_one() {
    let mut rng = Rng::new(5);
    for n in [1usize, 7, 64, 160, 512] {
        let z: Vec<f32> = (0..n).map(|_| rng.normal() * 4.0).collect();
        let s = routing::softmax(&z);
        let total: f64 = s.iter().map(|&x| f64::from(x)).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exact: f64 = z.iter().map(|&v| f64::from(v - m).exp()).sum();
        for (i, &v) in z.iter().enumerate() {
            let e = f64::from(v - m).exp() / exact;
            assert!((f64::from(s[i]) - e).abs() <= 1e-6 * e.max(1e-30) + 1e-12);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Validation and errors
// ------------------------------------------------------------------------------------------------

fn invalid_mentions(cfg: RoutingConfig, key: &str) {
    match cfg.validate() {
        Err(Error::InvalidArgument { detail, .. }) => {
            assert!(detail.contains(key), "error {detail:?} does not name {key}")
        }
        other => panic!("expected an invalid-argument error naming {key}, got {other:?}"),
    }
    // route refuses it too.
    assert!(route(&vec![0.0; cfg.num_experts.max(1)], None, &cfg).is_err());
}

#[test]
fn presets_are_valid() {
    for cfg in [
        RoutingConfig::deepseek_v3(),
        RoutingConfig::deepseek_v2(),
        RoutingConfig::deepseek_v2_lite(),
    ] {
        cfg.validate().unwrap();
    }
    let v3 = RoutingConfig::deepseek_v3();
    assert_eq!(
        (v3.num_experts, v3.top_k, v3.n_group, v3.topk_group),
        (256, 8, 8, 4)
    );
    assert_eq!(Scoring::from_config("sigmoid").unwrap(), Scoring::Sigmoid);
    assert_eq!(Scoring::from_config("softmax").unwrap(), Scoring::Softmax);
    assert!(Scoring::from_config("relu").is_err());
    assert_eq!(
        TopkMethod::from_config("noaux_tc").unwrap(),
        TopkMethod::NoauxTc
    );
    assert_eq!(
        TopkMethod::from_config("group_limited_greedy").unwrap(),
        TopkMethod::GroupLimitedGreedy
    );
    assert_eq!(
        TopkMethod::from_config("greedy").unwrap(),
        TopkMethod::Greedy
    );
    assert!(TopkMethod::from_config("sinkhorn").is_err());
}

#[test]
fn invalid_configs_name_the_key() {
    let v3 = RoutingConfig::deepseek_v3();
    invalid_mentions(
        RoutingConfig {
            num_experts: 0,
            ..v3
        },
        "n_routed_experts",
    );
    invalid_mentions(
        RoutingConfig {
            num_experts: 1024,
            n_group: 16,
            ..v3
        },
        "n_routed_experts",
    );
    invalid_mentions(RoutingConfig { top_k: 0, ..v3 }, "num_experts_per_tok");
    invalid_mentions(RoutingConfig { top_k: 17, ..v3 }, "num_experts_per_tok");
    invalid_mentions(RoutingConfig { n_group: 0, ..v3 }, "n_group");
    invalid_mentions(
        RoutingConfig {
            n_group: 32,
            topk_group: 4,
            ..v3
        },
        "n_group",
    );
    invalid_mentions(
        RoutingConfig {
            num_experts: 250,
            ..v3
        },
        "multiple of n_group",
    );
    invalid_mentions(
        RoutingConfig {
            topk_group: 9,
            ..v3
        },
        "topk_group",
    );
    invalid_mentions(
        RoutingConfig {
            topk_group: 0,
            ..v3
        },
        "topk_group",
    );
    invalid_mentions(
        RoutingConfig {
            scoring: Scoring::Softmax,
            ..v3
        },
        "noaux_tc requires scoring_func = sigmoid",
    );
    invalid_mentions(
        RoutingConfig {
            num_experts: 16,
            n_group: 16,
            topk_group: 4,
            top_k: 2,
            ..v3
        },
        "top 2",
    );
    // 4 kept groups of 2 experts cannot supply 9.
    invalid_mentions(
        RoutingConfig {
            num_experts: 16,
            n_group: 8,
            topk_group: 4,
            top_k: 9,
            ..v3
        },
        "exceeds the 8 experts available",
    );
    invalid_mentions(
        RoutingConfig {
            num_experts: 8,
            n_group: 1,
            topk_group: 1,
            top_k: 9,
            method: TopkMethod::Greedy,
            ..v3
        },
        "num_experts_per_tok",
    );
    for bad in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        invalid_mentions(
            RoutingConfig {
                routed_scaling_factor: bad,
                ..v3
            },
            "routed_scaling_factor",
        );
    }
    // Greedy ignores the groups for K: 1 kept group of 2 experts, K = 6 is fine.
    RoutingConfig {
        num_experts: 16,
        n_group: 8,
        topk_group: 1,
        top_k: 6,
        scoring: Scoring::Softmax,
        method: TopkMethod::Greedy,
        ..v3
    }
    .validate()
    .unwrap();
    // E = 512, K = 16, 16 groups is the largest supported config.
    RoutingConfig {
        num_experts: 512,
        top_k: 16,
        n_group: 16,
        topk_group: 1,
        ..v3
    }
    .validate()
    .unwrap();
}

#[test]
fn route_argument_errors() {
    let v3 = RoutingConfig::deepseek_v3();
    let z = vec![0.0f32; 256 * 2];
    let bias = vec![0.0f32; 256];
    assert!(matches!(
        route(&z[..300], Some(&bias), &v3),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        route(&z, None, &v3),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        route(&z, Some(&bias[..255]), &v3),
        Err(Error::Shape { .. })
    ));
    let lite = RoutingConfig::deepseek_v2_lite();
    assert!(matches!(
        route(&vec![0.0; 64], Some(&vec![0.0; 64]), &lite),
        Err(Error::InvalidArgument { .. })
    ));
    // Zero tokens is an empty routing.
    let r = route(&[], Some(&bias), &v3).unwrap();
    assert_eq!((r.tokens, r.ids.len(), r.weights.len()), (0, 0, 0));
}

// ------------------------------------------------------------------------------------------------
// Counts, bias update, gate GEMM
// ------------------------------------------------------------------------------------------------

#[test]
fn expert_counts_counts() {
    let ids = [3, 1, 3, 0, 7, 3, 1, 1];
    assert_eq!(
        expert_counts(&ids, 8).unwrap(),
        vec![1, 3, 0, 3, 0, 0, 0, 1]
    );
    assert_eq!(expert_counts(&[], 4).unwrap(), vec![0; 4]);
    let mut rng = Rng::new(6);
    let cfg = RoutingConfig::deepseek_v3();
    let z = logits(&mut rng, 0, 100, &cfg);
    let bias = bias_for(&mut rng, 0, 256);
    let r = route(&z, Some(&bias), &cfg).unwrap();
    let counts = expert_counts(&r.ids, 256).unwrap();
    assert_eq!(counts.iter().sum::<u32>(), 800);
    for bad in [8, -1, i32::MAX, i32::MIN] {
        match expert_counts(&[0, 1, bad], 8) {
            Err(Error::IndexOutOfRange { detail, .. }) => {
                assert!(detail.contains("ids[2]"), "{detail}")
            }
            other => panic!("expected an index error, got {other:?}"),
        }
    }
}

#[test]
fn bias_update_moves_against_the_load() {
    let bias = [0.0f32, 0.5, -0.5, 1.0];
    // mean = 10: above, below, equal, equal.
    let counts = [16u32, 4, 10, 10];
    let b = update_bias(&bias, &counts, 0.001).unwrap();
    assert_eq!(b, vec![0.0 - 0.001, 0.5 + 0.001, -0.5, 1.0]);
    // A non-integer mean (7 / 3): 3 above, 2 below, 2 below.
    let b = update_bias(&[0.0; 3], &[3, 2, 2], 0.25).unwrap();
    assert_eq!(b, vec![-0.25, 0.25, 0.25]);
    // All equal (including all zero): unchanged.
    assert_eq!(update_bias(&bias, &[4; 4], 0.1).unwrap(), bias.to_vec());
    assert_eq!(update_bias(&bias, &[0; 4], 0.1).unwrap(), bias.to_vec());
    // gamma = 0 leaves it unchanged.
    assert_eq!(update_bias(&bias, &counts, 0.0).unwrap(), bias.to_vec());
    // Huge counts do not overflow the exact mean comparison.
    let b = update_bias(&[0.0; 2], &[u32::MAX, u32::MAX - 1], 1.0).unwrap();
    assert_eq!(b, vec![-1.0, 1.0]);
    assert!(matches!(
        update_bias(&bias, &counts[..3], 0.1),
        Err(Error::Shape { .. })
    ));
    assert!(update_bias(&[], &[], 0.1).is_err());
    for g in [-0.1f32, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            update_bias(&bias, &counts, g),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

#[test]
fn bias_update_balances_a_skewed_router() {
    // Repeated updates shift load from overloaded experts: the max load drops.
    let cfg = RoutingConfig::deepseek_v3();
    let mut rng = Rng::new(8);
    let skew: Vec<f32> = (0..256).map(|i| if i < 32 { 1.0 } else { 0.0 }).collect();
    let mut z = logits(&mut rng, 0, 256, &cfg);
    for row in z.chunks_exact_mut(256) {
        for (v, s) in row.iter_mut().zip(&skew) {
            *v += s;
        }
    }
    let mut bias = vec![0.0f32; 256];
    let max_load = |bias: &[f32]| {
        let r = route(&z, Some(bias), &cfg).unwrap();
        *expert_counts(&r.ids, 256).unwrap().iter().max().unwrap()
    };
    let before = max_load(&bias);
    for _ in 0..60 {
        let r = route(&z, Some(&bias), &cfg).unwrap();
        let counts = expert_counts(&r.ids, 256).unwrap();
        bias = update_bias(&bias, &counts, 0.01).unwrap();
    }
    let after = max_load(&bias);
    assert!(after < before, "max load {before} -> {after}");
}

#[test]
fn gate_logits_matches_f64_within_the_summation_bound() {
    let mut rng = Rng::new(9);
    for (t, h, e) in [(3usize, 7168usize, 16usize), (5, 100, 7), (1, 1, 1)] {
        let x: Vec<bf16> = rng.normal_vec(t * h, 1.0);
        let w: Vec<bf16> = rng.normal_vec(e * h, 0.02);
        let z = gate_logits(&x, &w, h, e).unwrap();
        assert_eq!(z.len(), t * e);
        for ti in 0..t {
            for ei in 0..e {
                let (mut exact, mut abs) = (0.0f64, 0.0f64);
                for k in 0..h {
                    let p = f64::from(x[ti * h + k].to_f32()) * f64::from(w[ei * h + k].to_f32());
                    exact += p;
                    abs += p.abs();
                }
                let err = (f64::from(z[ti * e + ei]) - exact).abs();
                assert!(
                    err <= h as f64 * 2f64.powi(-24) * abs + 1e-30,
                    "{err} vs {abs}"
                );
            }
        }
    }
    // Exact on small integers.
    let x: Vec<bf16> = [1.0f32, 2.0, 3.0, -1.0].map(bf16::from_f32).to_vec();
    let w: Vec<bf16> = [1.0f32, 1.0, 0.5, 0.0, 2.0, -3.0]
        .map(bf16::from_f32)
        .to_vec();
    assert_eq!(
        gate_logits(&x, &w, 2, 3).unwrap(),
        vec![3.0, 0.5, -4.0, 2.0, 1.5, 9.0]
    );
    assert!(matches!(
        gate_logits(&x, &w[..5], 2, 3),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        gate_logits(&x[..3], &w, 2, 3),
        Err(Error::Shape { .. })
    ));
    assert!(gate_logits(&x, &w, 0, 3).is_err());
}

// ------------------------------------------------------------------------------------------------
// The CUDA kernel's algorithm, emulated lane by lane
// ------------------------------------------------------------------------------------------------

/// `cuda/routing.cu`'s `route_topk` step for step on 32 emulated lanes (lane l holds experts
/// l + 32 j; u32 keys; butterfly top-2 per group; ranks by shuffles; K rounds of max-key /
/// min-index). Checks the kernel's algorithm (not its CUDA spelling) against the reference.
// Indexing by lane and slot on purpose: it mirrors the kernel's registers.
#[allow(clippy::needless_range_loop)]
fn warp_route(row: &[f32], bias: Option<&[f32]>, cfg: &RoutingConfig) -> (Vec<i32>, Vec<f32>) {
    const L: usize = 32;
    const SLOTS: usize = 16;
    let key_of = |v: f32| {
        let b = v.to_bits();
        if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        }
    };
    let value_of = |k: u32| {
        f32::from_bits(if k & 0x8000_0000 != 0 {
            k & 0x7fff_ffff
        } else {
            !k
        })
    };
    let e = cfg.num_experts;
    let mut s = [[f32::NEG_INFINITY; SLOTS]; L];
    for (lane, sl) in s.iter_mut().enumerate() {
        for (j, v) in sl.iter_mut().enumerate() {
            if lane + 32 * j < e {
                *v = o(row[lane + 32 * j]);
            }
        }
    }
    if cfg.scoring == Scoring::Softmax {
        let mut m = [f32::NEG_INFINITY; L];
        for lane in 0..L {
            for j in 0..SLOTS {
                m[lane] = m[lane].max(s[lane][j]);
            }
        }
        for d in [16, 8, 4, 2, 1] {
            let prev = m;
            for lane in 0..L {
                m[lane] = prev[lane].max(prev[lane ^ d]);
            }
        }
        let mut part = [0.0f32; L];
        for lane in 0..L {
            for j in 0..SLOTS {
                if lane + 32 * j < e {
                    let v = if s[lane][j] == m[lane] {
                        1.0
                    } else {
                        exp_repro(s[lane][j] - m[lane])
                    };
                    s[lane][j] = v;
                    part[lane] += v;
                }
            }
        }
        for d in [16, 8, 4, 2, 1] {
            let prev = part;
            for lane in 0..L {
                part[lane] = prev[lane] + prev[lane ^ d];
            }
        }
        for lane in 0..L {
            for j in 0..SLOTS {
                if lane + 32 * j < e {
                    s[lane][j] /= part[lane];
                }
            }
        }
    } else {
        for (lane, sl) in s.iter_mut().enumerate() {
            for (j, v) in sl.iter_mut().enumerate() {
                if lane + 32 * j < e {
                    *v = 1.0 / (1.0 + exp_repro(-*v));
                }
            }
        }
    }
    let mut key = [[0u32; SLOTS]; L];
    let mut eligible = [0u32; L];
    for lane in 0..L {
        for j in 0..SLOTS {
            let i = lane + 32 * j;
            if i < e {
                let c = match cfg.method {
                    TopkMethod::NoauxTc => o(s[lane][j] + bias.unwrap()[i]),
                    _ => s[lane][j],
                };
                key[lane][j] = key_of(c);
                eligible[lane] |= 1 << j;
            }
        }
    }
    if cfg.method != TopkMethod::Greedy && cfg.n_group > 1 {
        let g_size = e / cfg.n_group;
        let mut my_score = [f32::NEG_INFINITY; L];
        for g in 0..cfg.n_group {
            let (lo, hi) = (g * g_size, (g + 1) * g_size);
            let mut a = [0u32; L];
            let mut b = [0u32; L];
            for lane in 0..L {
                for j in 0..SLOTS {
                    let i = lane + 32 * j;
                    if i >= lo && i < hi {
                        let v = key[lane][j];
                        if v > a[lane] {
                            b[lane] = a[lane];
                            a[lane] = v;
                        } else if v > b[lane] {
                            b[lane] = v;
                        }
                    }
                }
            }
            for d in [16, 8, 4, 2, 1] {
                let (pa, pb) = (a, b);
                for lane in 0..L {
                    let (oa, ob) = (pa[lane ^ d], pb[lane ^ d]);
                    b[lane] = pa[lane].min(oa).max(pb[lane].max(ob));
                    a[lane] = pa[lane].max(oa);
                }
            }
            assert!(a.iter().all(|&v| v == a[0]) && b.iter().all(|&v| v == b[0]));
            my_score[g] = if cfg.method == TopkMethod::NoauxTc {
                o(value_of(a[0]) + value_of(b[0]))
            } else {
                value_of(a[0])
            };
        }
        let mut kept = 0u32;
        for lane in 0..L {
            let mut rank = 0;
            for h in 0..cfg.n_group {
                let other = my_score[h];
                if other > my_score[lane] || (other == my_score[lane] && h < lane) {
                    rank += 1;
                }
            }
            if lane < cfg.n_group && rank < cfg.topk_group {
                kept |= 1 << lane;
            }
        }
        for lane in 0..L {
            for j in 0..SLOTS {
                let i = lane + 32 * j;
                if i < e && (kept >> (i / g_size)) & 1 == 0 {
                    eligible[lane] &= !(1 << j);
                }
            }
        }
    }
    let mut ids = Vec::new();
    let mut chosen_s = Vec::new();
    let mut sum = 0.0f32;
    for _ in 0..cfg.top_k {
        let mut best = [(0u32, u32::MAX, 0.0f32); L];
        for lane in 0..L {
            for j in 0..SLOTS {
                if (eligible[lane] >> j) & 1 == 1 && key[lane][j] > best[lane].0 {
                    best[lane] = (key[lane][j], (lane + 32 * j) as u32, s[lane][j]);
                }
            }
        }
        let kmax = best.iter().map(|b| b.0).max().unwrap();
        let win = best
            .iter()
            .map(|b| if b.0 == kmax { b.1 } else { u32::MAX })
            .min()
            .unwrap();
        assert_ne!(win, u32::MAX);
        let wl = (win & 31) as usize;
        let ws = best[wl].2;
        eligible[wl] &= !(1 << (win >> 5));
        ids.push(win as i32);
        chosen_s.push(ws);
        sum += ws;
    }
    let weights = chosen_s
        .iter()
        .map(|&x| {
            if cfg.norm_topk_prob {
                x / (sum + f32::from_bits(0x1e3c_e508)) * cfg.routed_scaling_factor
            } else {
                x * cfg.routed_scaling_factor
            }
        })
        .collect();
    (ids, weights)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn kernel_algorithm_matches_reference(seed: u64, style in 0u32..6, bias_style in 0u32..4) {
        let mut rng = Rng::new(seed);
        let cfg = match rng.below(4) {
            0 => RoutingConfig::deepseek_v3(),
            1 => RoutingConfig { num_experts: 512, top_k: 16, n_group: 16, topk_group: 8, ..RoutingConfig::deepseek_v3() },
            _ => random_config(&mut rng),
        };
        let z = logits(&mut rng, style, 3, &cfg);
        let bias = cfg.uses_bias().then(|| bias_for(&mut rng, bias_style, cfg.num_experts));
        let r = route(&z, bias.as_deref(), &cfg).unwrap();
        for (t, row) in z.chunks_exact(cfg.num_experts).enumerate() {
            let (ids, w) = warp_route(row, bias.as_deref(), &cfg);
            prop_assert_eq!(r.ids_of(t), &ids[..], "{:?}", cfg);
            let a: Vec<u32> = r.weights_of(t).iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = w.iter().map(|x| x.to_bits()).collect();
            prop_assert_eq!(a, b, "{:?}", cfg);
        }
    }
}
