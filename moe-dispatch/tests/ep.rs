//! Expert parallelism (`moe_dispatch::ep`) on the CPU: N ranks as N threads over the in-process
//! transport, checked bit for bit against the single-rank reference (dispatch -> experts ->
//! combine on the tokens of all ranks concatenated in rank order); node-limited routing against a
//! brute force; and, with the `cuda` feature on a machine with a GPU and libnccl, the NCCL
//! transport with a world of one.

use std::time::Duration;

use half::bf16;
use kernels::dtype::e4m3_decode_table;
use kernels::error::Error;
use kernels::reference::fp8_quant::{quantize_fp8, ScaleLayout};
use kernels::rng::Rng;
use moe_dispatch::ep::*;
use moe_dispatch::reference::permute::{combine, contiguous_layout, dispatch_fp8, dispatch_rows};

const WORLDS: [usize; 4] = [1, 2, 3, 8];
const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers: ranks as threads, inputs, a deterministic expert function.

/// Runs `f` on every rank of an in-process world, one thread each; results in rank order.
fn run_world<R: Send>(n: usize, f: impl Fn(InProcess) -> R + Sync) -> Vec<R> {
    let world = InProcess::world_with_timeout(n, TIMEOUT).expect("world");
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = world.into_iter().map(|t| s.spawn(move || f(t))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread panicked"))
            .collect()
    })
}

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A coefficient in [-0.5, 0.5) determined by (expert, index, salt).
fn coef(e: usize, j: usize, salt: u64) -> f32 {
    let h = splitmix((e as u64) << 40 ^ (j as u64) << 8 ^ salt);
    (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// Expert `e` as a deterministic per-expert linear map of one row (f32 math, BF16 out).
fn expert_row(e: usize, x: &[f32]) -> Vec<bf16> {
    let h = x.len();
    (0..h)
        .map(|j| {
            let v = coef(e, j, 1) * x[j] + coef(e, j, 2) * x[(j * 7 + e) % h] + coef(e, 0, 3);
            bf16::from_f32(v)
        })
        .collect()
}

/// Row `r` of expert inputs as f32 (FP8: code times its block's scale).
fn input_row(inputs: &ExpertInputs, hidden: usize, r: usize) -> Vec<f32> {
    match inputs {
        ExpertInputs::Bf16(x) => x[r * hidden..(r + 1) * hidden]
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        ExpertInputs::Fp8(a) => {
            let table = e4m3_decode_table();
            a.q[r * hidden..(r + 1) * hidden]
                .iter()
                .enumerate()
                .map(|(c, q)| table[q.0 as usize] * a.scale(r, c / 128))
                .collect()
        }
    }
}

/// Runs the experts over dispatched rows: row `r` goes through expert `first + m_indices[r]`;
/// padding rows are NaN, so a combine that read one would show it.
fn run_experts(inputs: &ExpertInputs, hidden: usize, m_indices: &[i32], first: usize) -> Vec<bf16> {
    let mut y = Vec::with_capacity(m_indices.len() * hidden);
    for (r, &m) in m_indices.iter().enumerate() {
        if m < 0 {
            y.extend(std::iter::repeat_n(bf16::NAN, hidden));
        } else {
            y.extend(expert_row(
                first + m as usize,
                &input_row(inputs, hidden, r),
            ));
        }
    }
    y
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Routing {
    /// `K` distinct experts per token, uniform.
    Random,
    /// A few hot experts, duplicates within a token allowed (many experts get nothing).
    Skewed,
    /// Every choice of every token is expert `e`.
    OneExpert(usize),
    /// Only rank 0's experts (every other rank receives nothing).
    FirstRankOnly,
}

fn make_ids(
    rng: &mut Rng,
    routing: Routing,
    tokens: usize,
    k: usize,
    e: usize,
    w: usize,
) -> Vec<i32> {
    match routing {
        Routing::Random => {
            let mut ids = Vec::with_capacity(tokens * k);
            for _ in 0..tokens {
                let mut all: Vec<i32> = (0..e as i32).collect();
                for j in 0..k {
                    let pick = j + rng.below((e - j) as u64) as usize;
                    all.swap(j, pick);
                }
                ids.extend_from_slice(&all[..k]);
            }
            ids
        }
        Routing::Skewed => {
            let hot = 1 + rng.below(3) as usize;
            (0..tokens * k)
                .map(|_| (rng.below(hot as u64) as usize * (e / hot)) as i32)
                .collect()
        }
        Routing::OneExpert(x) => vec![x as i32; tokens * k],
        Routing::FirstRankOnly => (0..tokens * k)
            .map(|_| rng.below((e / w) as u64) as i32)
            .collect(),
    }
}

#[derive(Clone, Debug)]
struct Case {
    world: usize,
    num_experts: usize,
    top_k: usize,
    hidden: usize,
    align: usize,
    /// Tokens per rank.
    tokens: Vec<usize>,
    routing: Routing,
    /// `Some(layout)`: FP8 inputs with that scale layout on every rank.
    fp8: Option<ScaleLayout>,
    shared: bool,
    seed: u64,
}

/// One rank's inputs.
struct RankInputs {
    x: Vec<bf16>,
    ids: Vec<i32>,
    weights: Vec<f32>,
    shared: Option<Vec<bf16>>,
}

fn make_inputs(c: &Case) -> Vec<RankInputs> {
    let mut rng = Rng::new(c.seed);
    c.tokens
        .iter()
        .map(|&t| {
            let x = rng.normal_vec::<bf16>(t * c.hidden, 1.0);
            let ids = make_ids(&mut rng, c.routing, t, c.top_k, c.num_experts, c.world);
            let mut weights: Vec<f32> = (0..t * c.top_k).map(|_| rng.uniform(0.05, 1.0)).collect();
            for row in weights.chunks_exact_mut(c.top_k) {
                let s: f32 = row.iter().sum();
                row.iter_mut().for_each(|v| *v = *v / s * 2.5);
            }
            let shared = c.shared.then(|| rng.normal_vec::<bf16>(t * c.hidden, 0.5));
            RankInputs {
                x,
                ids,
                weights,
                shared,
            }
        })
        .collect()
}

/// The single-rank path on the concatenated tokens: (dispatched inputs, layout, output).
struct Reference {
    inputs: ExpertInputs,
    offsets: Vec<usize>,
    counts: Vec<usize>,
    out: Vec<bf16>,
}

fn reference(c: &Case, ranks: &[RankInputs]) -> Reference {
    let x: Vec<bf16> = ranks.iter().flat_map(|r| r.x.iter().copied()).collect();
    let ids: Vec<i32> = ranks.iter().flat_map(|r| r.ids.iter().copied()).collect();
    let weights: Vec<f32> = ranks
        .iter()
        .flat_map(|r| r.weights.iter().copied())
        .collect();
    let shared: Option<Vec<bf16>> = c.shared.then(|| {
        ranks
            .iter()
            .flat_map(|r| r.shared.as_ref().unwrap().iter().copied())
            .collect()
    });
    let layout = contiguous_layout(&ids, c.top_k, c.num_experts, c.align).unwrap();
    let inputs = match c.fp8 {
        None => ExpertInputs::Bf16(
            dispatch_rows(&x, c.hidden, c.top_k, &layout.slot, layout.rows).unwrap(),
        ),
        Some(_) => {
            let q = quantize_fp8(&x, c.hidden, false, ScaleLayout::TokenMajor).unwrap();
            ExpertInputs::Fp8(dispatch_fp8(&q, c.top_k, &layout.slot, layout.rows).unwrap())
        }
    };
    let y = run_experts(&inputs, c.hidden, &layout.m_indices, 0);
    let out = combine(
        &y,
        c.hidden,
        &layout.slot,
        &weights,
        c.top_k,
        shared.as_deref(),
    )
    .unwrap();
    Reference {
        inputs,
        offsets: layout.offsets,
        counts: layout.counts,
        out,
    }
}

/// Checks that local expert rows `local` equal reference rows `global` (codes, scale bits, BF16
/// bits).
fn assert_rows_equal(
    ep: &ExpertInputs,
    local: std::ops::Range<usize>,
    re: &ExpertInputs,
    global: std::ops::Range<usize>,
    hidden: usize,
    what: &str,
) {
    assert_eq!(local.len(), global.len(), "{what}: row count");
    for (a, b) in local.zip(global) {
        match (ep, re) {
            (ExpertInputs::Bf16(x), ExpertInputs::Bf16(y)) => assert_eq!(
                bits(&x[a * hidden..(a + 1) * hidden]),
                bits(&y[b * hidden..(b + 1) * hidden]),
                "{what}: row {a} vs reference row {b}"
            ),
            (ExpertInputs::Fp8(x), ExpertInputs::Fp8(y)) => {
                assert_eq!(x.layout, ScaleLayout::BlockMajor);
                assert_eq!(
                    x.q[a * hidden..(a + 1) * hidden],
                    y.q[b * hidden..(b + 1) * hidden],
                    "{what}: codes of row {a} vs reference row {b}"
                );
                for blk in 0..x.blocks() {
                    assert_eq!(
                        x.scale(a, blk).to_bits(),
                        y.scale(b, blk).to_bits(),
                        "{what}: scale {blk} of row {a} vs reference row {b}"
                    );
                }
            }
            _ => panic!("{what}: input kinds differ"),
        }
    }
}

/// EP on `c.world` threads vs the single-rank reference, bit for bit: each local expert's rows
/// (order included) and each rank's combined output.
fn check_case(c: &Case) {
    let ranks = make_inputs(c);
    let re = reference(c, &ranks);
    let cfg = EpConfig {
        num_experts: c.num_experts,
        top_k: c.top_k,
        align: c.align,
    };
    let outs = run_world(c.world, |mut t| {
        let r = &ranks[t.rank()];
        let q;
        let tokens = match c.fp8 {
            None => EpTokens::Bf16 {
                x: &r.x,
                hidden: c.hidden,
            },
            Some(layout) => {
                q = quantize_fp8(&r.x, c.hidden, false, layout).unwrap();
                EpTokens::Fp8(&q)
            }
        };
        let d = ep_dispatch(&mut t, &cfg, tokens, &r.ids, &r.weights).unwrap();
        // Each local expert's rows are the reference's rows of that expert, in the same order.
        assert_eq!(d.local_experts, {
            let n = c.num_experts / c.world;
            t.rank() * n..(t.rank() + 1) * n
        });
        for (le, e) in d.local_experts.clone().enumerate() {
            assert_rows_equal(
                &d.inputs,
                d.expert_rows(le),
                &re.inputs,
                re.offsets[e]..re.offsets[e] + re.counts[e],
                c.hidden,
                &format!("{c:?}: rank {} expert {e}", t.rank()),
            );
            assert_eq!(d.layout.offsets[le] % c.align, 0);
        }
        // Weights travelled with the pairs.
        let rw = d.row_weights();
        for (p, pair) in d.pairs.iter().enumerate() {
            assert_eq!(rw[d.layout.slot[p]].to_bits(), pair.weight.to_bits());
            assert_eq!(d.row_expert(d.layout.slot[p]), Some(pair.expert));
        }
        let y = run_experts(
            &d.inputs,
            c.hidden,
            &d.layout.m_indices,
            d.local_experts.start,
        );
        ep_combine(&mut t, &d, &y, r.shared.as_deref()).unwrap()
    });
    let mut start = 0;
    for (rank, out) in outs.iter().enumerate() {
        let n = c.tokens[rank] * c.hidden;
        assert_eq!(
            bits(out),
            bits(&re.out[start..start + n]),
            "{c:?}: rank {rank} output differs from the single-rank path"
        );
        assert!(out.iter().all(|v| v.is_finite()), "{c:?}: rank {rank}");
        start += n;
    }
    assert_eq!(start, re.out.len());
}

/// Random token counts per rank, one rank (when there are several) with none.
fn token_counts(rng: &mut Rng, world: usize, max: usize) -> Vec<usize> {
    let mut t: Vec<usize> = (0..world)
        .map(|_| rng.below(max as u64 + 1) as usize)
        .collect();
    if world > 1 {
        t[rng.below(world as u64) as usize] = 0;
    }
    t
}

// ---------------------------------------------------------------------------------------------
// EP vs the single-rank path.

#[test]
fn ep_bf16_matches_single_rank_bit_for_bit() {
    let mut rng = Rng::new(0xe9_0001);
    for &world in &WORLDS {
        for (i, &(top_k, align, routing)) in [
            (4, 1, Routing::Random),
            (8, 8, Routing::Random),
            (1, 128, Routing::Random),
            (4, 4, Routing::Skewed),
            (8, 1, Routing::Skewed),
            (4, 16, Routing::FirstRankOnly),
            (1, 1, Routing::OneExpert(5)),
            (4, 8, Routing::OneExpert(23)),
        ]
        .iter()
        .enumerate()
        {
            let c = Case {
                world,
                num_experts: 24,
                top_k,
                hidden: 96,
                align,
                tokens: token_counts(&mut rng, world, 24),
                routing,
                fp8: None,
                shared: i % 2 == 0,
                seed: rng.next_u64(),
            };
            check_case(&c);
        }
    }
}

#[test]
fn ep_fp8_matches_single_rank_bit_for_bit() {
    let mut rng = Rng::new(0xe9_0002);
    for &world in &WORLDS {
        for (i, &(layout, routing)) in [
            (ScaleLayout::TokenMajor, Routing::Random),
            (ScaleLayout::BlockMajor, Routing::Random),
            (ScaleLayout::BlockMajor, Routing::Skewed),
            (ScaleLayout::TokenMajor, Routing::OneExpert(0)),
        ]
        .iter()
        .enumerate()
        {
            let c = Case {
                world,
                num_experts: 48,
                top_k: 8,
                // 2.5 blocks of 128: a partial last scale block.
                hidden: 320,
                align: [1, 4, 128][i % 3],
                tokens: token_counts(&mut rng, world, 12),
                routing,
                fp8: Some(layout),
                shared: i % 2 == 1,
                seed: rng.next_u64(),
            };
            check_case(&c);
        }
    }
}

#[test]
fn ep_edge_cases() {
    for &world in &WORLDS {
        // Nobody has tokens.
        check_case(&Case {
            world,
            num_experts: 24,
            top_k: 4,
            hidden: 32,
            align: 8,
            tokens: vec![0; world],
            routing: Routing::Random,
            fp8: None,
            shared: true,
            seed: 1,
        });
        // One rank has all tokens, all to one expert on the last rank.
        let mut tokens = vec![0; world];
        tokens[0] = 17;
        check_case(&Case {
            world,
            num_experts: 24,
            top_k: 2,
            hidden: 32,
            align: 1,
            tokens,
            routing: Routing::OneExpert(23),
            fp8: None,
            shared: false,
            seed: 2,
        });
        // A single token, K = E (every expert, every rank).
        let mut tokens = vec![0; world];
        tokens[world - 1] = 1;
        check_case(&Case {
            world,
            num_experts: 24,
            top_k: 24,
            hidden: 16,
            align: 4,
            tokens,
            routing: Routing::Random,
            fp8: None,
            shared: true,
            seed: 3,
        });
        // One expert per rank (E = W).
        check_case(&Case {
            world,
            num_experts: world,
            top_k: 1,
            hidden: 8,
            align: 2,
            tokens: vec![5; world],
            routing: Routing::Random,
            fp8: None,
            shared: false,
            seed: 4,
        });
    }
}

#[test]
fn ep_many_random_cases() {
    let mut rng = Rng::new(0xe9_0003);
    for _ in 0..24 {
        let world = WORLDS[rng.below(4) as usize];
        let num_experts = world * (1 + rng.below(6) as usize);
        let top_k = 1 + rng.below(num_experts.min(8) as u64) as usize;
        let routing = match rng.below(4) {
            0 => Routing::Random,
            1 => Routing::Skewed,
            2 => Routing::FirstRankOnly,
            _ => Routing::OneExpert(rng.below(num_experts as u64) as usize),
        };
        let fp8 = match rng.below(3) {
            0 => None,
            1 => Some(ScaleLayout::TokenMajor),
            _ => Some(ScaleLayout::BlockMajor),
        };
        let c = Case {
            world,
            num_experts,
            top_k,
            hidden: if fp8.is_some() {
                256
            } else {
                8 + 8 * rng.below(8) as usize
            },
            align: [1, 2, 8, 64][rng.below(4) as usize],
            tokens: token_counts(&mut rng, world, 16),
            routing,
            fp8,
            shared: rng.below(2) == 0,
            seed: rng.next_u64(),
        };
        check_case(&c);
    }
}

/// The wire carries each token once per destination rank, however many of its experts are there.
#[test]
fn ep_sends_each_token_once_per_rank() {
    let cfg = EpConfig {
        num_experts: 8,
        top_k: 4,
        align: 1,
    };
    // Two tokens on rank 0: token 0 -> experts 0, 1 (rank 0) and 4 (rank 1) and 5 (rank 1);
    // token 1 -> experts 6, 7 (rank 1), 2, 3 (rank 0).
    let hidden = 4;
    let x: Vec<bf16> = (0..2 * hidden).map(|i| bf16::from_f32(i as f32)).collect();
    let ids = [0, 1, 4, 5, 6, 7, 2, 3];
    let w = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
    let got = run_world(2, |mut t| {
        let (x, ids, w): (&[bf16], &[i32], &[f32]) = if t.rank() == 0 {
            (&x, &ids, &w)
        } else {
            (&[], &[], &[])
        };
        let d = ep_dispatch(&mut t, &cfg, EpTokens::Bf16 { x, hidden }, ids, w).unwrap();
        (
            d.recv_tokens.clone(),
            d.pairs.clone(),
            d.sent_pairs(0).to_vec(),
            d.sent_pairs(1).to_vec(),
        )
    });
    assert_eq!(got[0].0, vec![2, 0]);
    assert_eq!(got[1].0, vec![2, 0]);
    // Rank 1's pairs in (source rank, source row, choice) order.
    let experts: Vec<(usize, usize, usize)> = got[1]
        .1
        .iter()
        .map(|p| (p.src_row, p.choice, p.expert))
        .collect();
    assert_eq!(experts, vec![(0, 2, 4), (0, 3, 5), (1, 0, 6), (1, 1, 7)]);
    assert_eq!(got[0].2, vec![0, 1, 6, 7]);
    assert_eq!(got[0].3, vec![2, 3, 4, 5]);
}

#[test]
fn ep_errors() {
    let cfg = EpConfig {
        num_experts: 8,
        top_k: 2,
        align: 1,
    };
    let x = vec![bf16::ONE; 4];
    // E % W != 0: every rank refuses before communicating.
    let errs = run_world(3, |mut t| {
        ep_dispatch(
            &mut t,
            &cfg,
            EpTokens::Bf16 { x: &x, hidden: 2 },
            &[0, 1, 2, 3],
            &[0.5; 4],
        )
        .unwrap_err()
    });
    for e in errs {
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("8 experts cannot be split evenly over 3 ranks"),
            "{e}"
        );
    }
    // A bad id on rank 0: rank 0 names it, rank 1 learns that rank 0 left instead of hanging.
    let errs = run_world(2, |mut t| {
        let ids = if t.rank() == 0 {
            [0, 8, 1, 2]
        } else {
            [0, 1, 2, 3]
        };
        ep_dispatch(
            &mut t,
            &cfg,
            EpTokens::Bf16 { x: &x, hidden: 2 },
            &ids,
            &[0.5; 4],
        )
        .unwrap_err()
    });
    assert!(
        matches!(errs[0], Error::IndexOutOfRange { .. }),
        "{}",
        errs[0]
    );
    assert!(errs[0].to_string().contains("expert id 8"), "{}", errs[0]);
    assert!(
        errs[1].to_string().contains("rank 0 has left"),
        "{}",
        errs[1]
    );
    // Shape errors.
    let errs = run_world(1, |mut t| {
        let a = ep_dispatch(
            &mut t,
            &cfg,
            EpTokens::Bf16 { x: &x, hidden: 3 },
            &[0, 1],
            &[0.5; 2],
        );
        let b = ep_dispatch(
            &mut t,
            &cfg,
            EpTokens::Bf16 { x: &x, hidden: 2 },
            &[0, 1],
            &[0.5; 2],
        );
        let d = ep_dispatch(
            &mut t,
            &cfg,
            EpTokens::Bf16 { x: &x, hidden: 2 },
            &[0, 1, 2, 3],
            &[0.5; 4],
        )
        .unwrap();
        let c = ep_combine(&mut t, &d, &[bf16::ZERO; 3], None);
        let e = ep_combine(
            &mut t,
            &d,
            &vec![bf16::ZERO; d.rows() * 2],
            Some(&[bf16::ZERO; 1]),
        );
        [
            a.unwrap_err(),
            b.unwrap_err(),
            c.unwrap_err(),
            e.unwrap_err(),
        ]
    });
    for e in &errs[0] {
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The in-process transport.

#[test]
fn in_process_all_to_all() {
    for &n in &WORLDS {
        let got = run_world(n, |mut t| {
            let r = t.rank();
            let counts: Vec<u64> = (0..n).map(|p| (10 * r + p) as u64).collect();
            let rc = t.all_to_all_counts(&counts).unwrap();
            let send: Vec<Vec<u8>> = (0..n).map(|p| vec![r as u8; r + p]).collect();
            let recv_len: Vec<usize> = (0..n).map(|p| p + r).collect();
            let rb = t.all_to_all_bytes(&send, &recv_len).unwrap();
            (rc, rb)
        });
        for (r, (rc, rb)) in got.iter().enumerate() {
            assert_eq!(*rc, (0..n).map(|p| (10 * p + r) as u64).collect::<Vec<_>>());
            for (p, b) in rb.iter().enumerate() {
                assert_eq!(*b, vec![p as u8; p + r]);
            }
        }
    }
}

#[test]
fn in_process_errors() {
    assert!(InProcess::world(0).is_err());
    // Wrong number of entries.
    let errs = run_world(2, |mut t| t.all_to_all_counts(&[1]).unwrap_err());
    assert!(errs.iter().all(|e| matches!(e, Error::Shape { .. })));
    // A receive size that does not match what the peer sends: only rank 1 notices.
    let res = run_world(2, |mut t| {
        t.all_to_all_bytes(&[vec![0; 2], vec![0; 1]], &[2, 2])
    });
    assert_eq!(res[0].as_ref().unwrap(), &vec![vec![0u8; 2]; 2]);
    let e = res[1].as_ref().unwrap_err();
    assert!(
        e.to_string()
            .contains("rank 0 sent 1 bytes, this rank expected 2"),
        "{e}"
    );
    // Ranks in different collectives.
    let errs = run_world(2, |mut t| {
        if t.rank() == 0 {
            t.all_to_all_counts(&[1, 2]).map(|_| ()).unwrap_err()
        } else {
            t.all_to_all_bytes(&[vec![], vec![]], &[0, 0])
                .map(|_| ())
                .unwrap_err()
        }
    });
    for e in &errs {
        assert!(e.to_string().contains("collective mismatch"), "{e}");
    }
    // A peer that never shows up: a timeout, not a hang.
    let mut world = InProcess::world_with_timeout(2, Duration::from_millis(50)).unwrap();
    let e = world[0].all_to_all_counts(&[0, 0]).unwrap_err();
    assert!(e.to_string().contains("waited"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Placement and node-limited routing.

#[test]
fn placement() {
    let p = ExpertPlacement::new(256, 8).unwrap();
    assert_eq!(p.experts_per_rank(), 32);
    assert_eq!(p.local_experts(3), 96..128);
    assert_eq!(p.owner(95), 2);
    assert_eq!(p.owner(96), 3);
    assert_eq!(
        ExpertPlacement::new(256, 64)
            .unwrap()
            .experts_per_node(8)
            .unwrap(),
        32
    );
    assert!(p.experts_per_node(3).is_err());
    assert!(ExpertPlacement::new(256, 3).is_err());
    assert!(ExpertPlacement::new(0, 1).is_err());
    assert!(ExpertPlacement::new(8, 0).is_err());
}

/// Brute force: every subset-free definition, written out directly.
fn brute_nodes(c: &[f32], epn: usize, m: usize, k: usize) -> Vec<usize> {
    let nodes = c.len() / epn;
    let per = if m >= nodes { k.min(epn) } else { k / m };
    let mut scored: Vec<(f32, usize)> = (0..nodes)
        .map(|n| {
            let mut v: Vec<(f32, usize)> = (n * epn..(n + 1) * epn).map(|e| (c[e], e)).collect();
            // Descending score, ties lower id.
            v.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            (v[..per].iter().fold(0.0f32, |acc, x| acc + x.0), n)
        })
        .collect();
    scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    scored.into_iter().take(m.min(nodes)).map(|x| x.1).collect()
}

#[test]
fn node_limited_routing_matches_brute_force() {
    let mut rng = Rng::new(0xe9_0004);
    for &(e, epn, m, k) in &[
        (256usize, 32usize, 4usize, 8usize), // DeepSeek-V3: 8 nodes of 32 experts, M = 4
        (32, 4, 4, 8),
        (24, 3, 2, 4),
        (16, 4, 1, 3),
        (16, 4, 8, 5), // M >= nodes: no restriction
    ] {
        let limit = NodeLimit {
            experts_per_node: epn,
            max_nodes: m,
        };
        let tokens = 40;
        // Coarse values: many exact ties.
        let scores: Vec<f32> = (0..tokens * e)
            .map(|_| (rng.below(16) as f32) / 16.0 - 0.2)
            .collect();
        let nodes = select_nodes(&scores, e, k, &limit).unwrap();
        let ids = node_limited_topk(&scores, e, k, &limit).unwrap();
        let mask = node_limited_mask(&scores, e, k, &limit).unwrap();
        for t in 0..tokens {
            let c = &scores[t * e..(t + 1) * e];
            let want = brute_nodes(c, epn, m, k);
            assert_eq!(nodes[t], want, "token {t}");
            let mut allowed: Vec<usize> = (0..e).filter(|&x| want.contains(&(x / epn))).collect();
            for x in 0..e {
                assert_eq!(mask[t * e + x], allowed.contains(&x));
            }
            allowed.sort_by(|&a, &b| c[b].partial_cmp(&c[a]).unwrap().then(a.cmp(&b)));
            let want_ids: Vec<i32> = allowed[..k].iter().map(|&x| x as i32).collect();
            let got = &ids[t * k..(t + 1) * k];
            assert_eq!(got, &want_ids[..], "token {t}");
            let used: std::collections::BTreeSet<usize> =
                got.iter().map(|&x| x as usize / epn).collect();
            assert!(used.len() <= m, "token {t} uses {used:?}");
        }
    }
}

#[test]
fn node_limited_routing_examples() {
    let limit = NodeLimit {
        experts_per_node: 4,
        max_nodes: 2,
    };
    // 4 nodes, K = 4, K / M = 2: node scores are the sums of the top 2.
    // node 0: 0.9 + 0.1 = 1.0; node 1: 0.5 + 0.5 = 1.0; node 2: 0.95 + 0.0 = 0.95; node 3: 1.1.
    let c = [
        0.9, 0.1, 0.0, 0.0, //
        0.5, 0.5, 0.4, 0.0, //
        0.95, 0.0, 0.0, 0.0, //
        0.6, 0.5, 0.3, 0.3,
    ];
    let nodes = select_nodes(&c, 16, 4, &limit).unwrap();
    // Node 3 first, then the tie between nodes 0 and 1 goes to node 0; node 2 has the best
    // single expert outside and is still excluded.
    assert_eq!(nodes, vec![vec![3, 0]]);
    assert_eq!(
        node_limited_topk(&c, 16, 4, &limit).unwrap(),
        vec![0, 12, 13, 14]
    );
    // All equal: lowest nodes, lowest ids.
    let flat = [0.25f32; 16];
    assert_eq!(
        select_nodes(&flat, 16, 4, &limit).unwrap(),
        vec![vec![0, 1]]
    );
    assert_eq!(
        node_limited_topk(&flat, 16, 4, &limit).unwrap(),
        vec![0, 1, 2, 3]
    );
    // Errors: K not a multiple of M, too few experts per node, bad shapes, NaN.
    assert!(node_limited_topk(&c, 16, 3, &limit).is_err());
    let narrow = NodeLimit {
        experts_per_node: 1,
        max_nodes: 2,
    };
    assert!(node_limited_topk(&c, 16, 4, &narrow).is_err());
    assert!(node_limited_topk(&c[..15], 16, 4, &limit).is_err());
    let bad = NodeLimit {
        experts_per_node: 5,
        max_nodes: 2,
    };
    assert!(node_limited_topk(&c, 16, 4, &bad).is_err());
    let mut nan = c;
    nan[3] = f32::NAN;
    let e = node_limited_topk(&nan, 16, 4, &limit).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
}

/// Node-limited routing feeding EP: the experts a token reaches live on at most M nodes, and the
/// result still matches the single-rank path.
#[test]
fn node_limited_routing_with_ep() {
    let (world, e, k, hidden) = (8usize, 32usize, 4usize, 16usize);
    let placement = ExpertPlacement::new(e, world).unwrap();
    let limit = NodeLimit {
        experts_per_node: placement.experts_per_node(2).unwrap(), // 4 nodes of 2 ranks
        max_nodes: 2,
    };
    let mut rng = Rng::new(0xe9_0005);
    let tokens = [5usize, 0, 7, 3, 1, 0, 9, 2];
    let ranks: Vec<RankInputs> = tokens
        .iter()
        .map(|&t| {
            let scores: Vec<f32> = (0..t * e).map(|_| rng.unit()).collect();
            let ids = node_limited_topk(&scores, e, k, &limit).unwrap();
            for row in ids.chunks_exact(k) {
                let nodes: std::collections::BTreeSet<usize> = row
                    .iter()
                    .map(|&x| placement.owner(x as usize) / 2)
                    .collect();
                assert!(nodes.len() <= 2);
            }
            RankInputs {
                x: rng.normal_vec(t * hidden, 1.0),
                weights: (0..t * k).map(|_| rng.uniform(0.1, 1.0)).collect(),
                ids,
                shared: None,
            }
        })
        .collect();
    let c = Case {
        world,
        num_experts: e,
        top_k: k,
        hidden,
        align: 4,
        tokens: tokens.to_vec(),
        routing: Routing::Random, // unused: inputs made above
        fp8: None,
        shared: false,
        seed: 0,
    };
    let re = reference(&c, &ranks);
    let cfg = EpConfig {
        num_experts: e,
        top_k: k,
        align: 4,
    };
    let outs = run_world(world, |mut t| {
        let r = &ranks[t.rank()];
        let d = ep_dispatch(
            &mut t,
            &cfg,
            EpTokens::Bf16 { x: &r.x, hidden },
            &r.ids,
            &r.weights,
        )
        .unwrap();
        let y = run_experts(
            &d.inputs,
            hidden,
            &d.layout.m_indices,
            d.local_experts.start,
        );
        ep_combine(&mut t, &d, &y, None).unwrap()
    });
    let all: Vec<bf16> = outs.concat();
    assert_eq!(bits(&all), bits(&re.out));
}

// ---------------------------------------------------------------------------------------------
// NCCL, world size 1 (needs a GPU and libnccl; not in the interpreter build, which has no NCCL).
// The bootstrap (ranks, id exchange) has its own unit tests in src/ep/bootstrap/tests.rs.

#[cfg(all(feature = "cuda", not(feature = "emulate")))]
fn temp_path(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("dsv3-ep-{name}-{}-{nanos}", std::process::id()))
}

#[cfg(all(feature = "cuda", not(feature = "emulate")))]
#[test]
fn nccl_world_of_one_matches_in_process() {
    const TEST: &str = "nccl_world_of_one_matches_in_process";
    // Opens device 0, or prints `<test>: skipped: no CUDA device: <why>` (kernels::report_skip).
    let Some(gpu) = kernels::gpu::test_gpu(TEST) else {
        return;
    };
    if let Err(e) = nccl_available() {
        kernels::report_skip(TEST, &e.to_string());
        return;
    }
    let mut t = NcclTransport::single(gpu).expect("NCCL world of one");
    assert_eq!((t.rank(), t.world_size()), (0, 1));
    eprintln!("{TEST}: NCCL version {}", nccl_version().unwrap());

    // The collectives themselves, empty buffers included.
    assert_eq!(t.all_to_all_counts(&[42]).unwrap(), vec![42]);
    let payload: Vec<u8> = (0..1000).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        t.all_to_all_bytes(std::slice::from_ref(&payload), &[1000])
            .unwrap(),
        vec![payload]
    );
    assert_eq!(
        t.all_to_all_bytes(&[vec![]], &[0]).unwrap(),
        vec![Vec::<u8>::new()]
    );

    // EP over NCCL vs the single-rank path, BF16 and FP8.
    for fp8 in [None, Some(ScaleLayout::BlockMajor)] {
        let c = Case {
            world: 1,
            num_experts: 16,
            top_k: 4,
            hidden: 256,
            align: 128,
            tokens: vec![37],
            routing: Routing::Random,
            fp8,
            shared: true,
            seed: 11,
        };
        let ranks = make_inputs(&c);
        let re = reference(&c, &ranks);
        let r = &ranks[0];
        let q;
        let tokens = match fp8 {
            None => EpTokens::Bf16 {
                x: &r.x,
                hidden: c.hidden,
            },
            Some(l) => {
                q = quantize_fp8(&r.x, c.hidden, false, l).unwrap();
                EpTokens::Fp8(&q)
            }
        };
        let cfg = EpConfig {
            num_experts: c.num_experts,
            top_k: c.top_k,
            align: c.align,
        };
        let d = ep_dispatch(&mut t, &cfg, tokens, &r.ids, &r.weights).unwrap();
        assert_eq!(d.inputs, re.inputs);
        let y = run_experts(&d.inputs, c.hidden, &d.layout.m_indices, 0);
        let out = ep_combine(&mut t, &d, &y, r.shared.as_deref()).unwrap();
        assert_eq!(bits(&out), bits(&re.out));
    }
    drop(t);

    // The id exchange through a file with a real id, and the environment path (a world of one
    // when RANK / WORLD_SIZE are unset).
    let path = temp_path("nccl");
    let ex = IdExchange::File {
        path: path.clone(),
        run: Some(RunId::fresh()),
        timeout: TIMEOUT,
    };
    let id = ex.share(0, 1, NcclTransport::unique_id).unwrap();
    // Everyone (nobody else here) has the id: rank 0 already removed the file.
    assert!(!path.exists());
    let mut t = NcclTransport::new(gpu.stream().clone(), 0, 1, id).unwrap();
    assert_eq!(t.all_to_all_counts(&[7]).unwrap(), vec![7]);
    drop(t);
    if std::env::var_os("WORLD_SIZE").is_none() && std::env::var_os("RANK").is_none() {
        let mut t = NcclTransport::from_env(gpu).unwrap();
        assert_eq!(t.all_to_all_counts(&[9]).unwrap(), vec![9]);
    }
}

/// Without libnccl, every NCCL entry point is an error that says what is missing, not a panic
/// (runs without a GPU).
#[cfg(all(feature = "cuda", not(feature = "emulate")))]
#[test]
fn nccl_missing_is_an_error() {
    match nccl_available() {
        Ok(()) => kernels::report_note(
            "nccl_missing_is_an_error",
            "skipped: libnccl is installed, so its absence cannot be tested",
        ),
        Err(e) => {
            assert!(e.to_string().contains("libnccl.so"), "{e}");
            assert!(NcclTransport::unique_id().is_err());
            assert!(nccl_version().is_err());
        }
    }
}

#[test]
fn wire_row_sizes() {
    assert_eq!(WireRow::bf16(7168, 8).stride(), 2 * 7168 + 64);
    assert_eq!(WireRow::fp8(7168, 8).stride(), 7168 + 4 * 56 + 64);
    assert_eq!(WireRow::fp8(320, 2).stride(), 320 + 12 + 16);
    assert_eq!(f32_bits(&[1.0]), vec![0x3f80_0000]);
}
