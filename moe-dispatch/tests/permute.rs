//! Properties of the permute / combine reference (`moe_dispatch::reference::permute`): layouts
//! checked against their definition, dispatch of BF16 and FP8 rows, combine's fixed order, the
//! edge cases (empty experts, all tokens on one expert, T = 1, K = E) and the error paths.

use half::bf16;
use kernels::error::Error;
use kernels::reference::fp8_quant::{quantize_fp8, Fp8Activations, ScaleLayout};
use kernels::rng::Rng;
use moe_dispatch::reference::permute::*;
use proptest::prelude::*;

/// `tokens` rows of `top_k` distinct experts in `0..num_experts` (what routing produces).
fn random_ids(rng: &mut Rng, tokens: usize, top_k: usize, num_experts: usize) -> Vec<i32> {
    let mut ids = Vec::with_capacity(tokens * top_k);
    for _ in 0..tokens {
        let mut experts: Vec<i32> = (0..num_experts as i32).collect();
        for j in 0..top_k {
            let pick = j + rng.below((num_experts - j) as u64) as usize;
            experts.swap(j, pick);
        }
        ids.extend_from_slice(&experts[..top_k]);
    }
    ids
}

/// Ids skewed onto a few experts (many empty ones), duplicates within a token allowed.
fn skewed_ids(rng: &mut Rng, tokens: usize, top_k: usize, num_experts: usize) -> Vec<i32> {
    let hot = 1 + rng.below(num_experts.min(3) as u64) as usize;
    (0..tokens * top_k)
        .map(|_| rng.below(hot as u64) as i32 * (num_experts / hot) as i32)
        .collect()
}

fn normalized_weights(rng: &mut Rng, tokens: usize, top_k: usize) -> Vec<f32> {
    let mut w: Vec<f32> = (0..tokens * top_k)
        .map(|_| rng.uniform(0.05, 1.0))
        .collect();
    for row in w.chunks_exact_mut(top_k) {
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
    w
}

/// Checks every documented property of a contiguous layout against the ids it came from.
fn check_contiguous(
    l: &ContiguousLayout,
    ids: &[i32],
    top_k: usize,
    num_experts: usize,
    align: usize,
) {
    assert_eq!(l.num_experts, num_experts);
    assert_eq!(l.align, align);
    assert_eq!(l.counts.len(), num_experts);
    assert_eq!(l.offsets.len(), num_experts + 1);
    for e in 0..num_experts {
        let count = ids.iter().filter(|&&id| id as usize == e).count();
        assert_eq!(l.counts[e], count, "count of expert {e}");
        assert_eq!(l.offsets[e] % align, 0, "offset of expert {e} is aligned");
        assert_eq!(
            l.offsets[e + 1] - l.offsets[e],
            count.next_multiple_of(align)
        );
    }
    assert_eq!(l.offsets[0], 0);
    assert_eq!(l.rows, l.offsets[num_experts]);
    assert_eq!(l.m_indices.len(), l.rows);
    for e in 0..num_experts {
        for r in l.offsets[e]..l.offsets[e + 1] {
            let want = if r < l.offsets[e] + l.counts[e] {
                e as i32
            } else {
                -1
            };
            assert_eq!(l.m_indices[r], want, "m_indices[{r}]");
        }
    }
    assert_eq!(l.slot.len(), ids.len());
    let mut used = vec![false; l.rows];
    let mut last_row = vec![None::<usize>; num_experts];
    for (i, (&r, &id)) in l.slot.iter().zip(ids).enumerate() {
        assert_eq!(l.m_indices[r], id, "pair {i} lands in its expert's rows");
        assert!(!std::mem::replace(&mut used[r], true), "row {r} used twice");
        // (t, j) order within the expert: consecutive rows from the expert's first one.
        let e = id as usize;
        let want = last_row[e].map_or(l.offsets[e], |p| p + 1);
        assert_eq!(
            r,
            want,
            "pair {i} (token {}, choice {})",
            i / top_k,
            i % top_k
        );
        last_row[e] = Some(r);
    }
    assert!(l.rows <= contiguous_rows_bound(ids.len() / top_k, top_k, num_experts, align));
}

fn check_masked(l: &MaskedLayout, ids: &[i32], num_experts: usize, m_max: usize) {
    assert_eq!(l.rows(), num_experts * m_max);
    let mut next: Vec<usize> = (0..num_experts).map(|e| e * m_max).collect();
    for (i, (&r, &id)) in l.slot.iter().zip(ids).enumerate() {
        assert_eq!(r, next[id as usize], "slot of pair {i}");
        next[id as usize] += 1;
    }
    for (e, (&count, &end)) in l.counts.iter().zip(&next).enumerate() {
        assert_eq!(count, end - e * m_max);
        assert!(count <= m_max);
    }
}

/// Dispatch of BF16 rows: destination rows are the token rows, everything else is zero.
fn check_dispatch_bf16(x: &[bf16], hidden: usize, top_k: usize, slot: &[usize], rows: usize) {
    let y = dispatch_rows(x, hidden, top_k, slot, rows).unwrap();
    assert_eq!(y.len(), rows * hidden);
    let mut src = vec![None; rows];
    for (i, &r) in slot.iter().enumerate() {
        src[r] = Some(i / top_k);
    }
    for (r, s) in src.iter().enumerate() {
        let got = &y[r * hidden..(r + 1) * hidden];
        match s {
            Some(t) => assert_eq!(got, &x[t * hidden..(t + 1) * hidden], "row {r}"),
            None => assert!(got.iter().all(|v| v.to_bits() == 0), "padding row {r}"),
        }
    }
}

fn check_dispatch_fp8(x: &Fp8Activations, top_k: usize, slot: &[usize], rows: usize) {
    let y = dispatch_fp8(x, top_k, slot, rows).unwrap();
    let hidden = x.channels;
    assert_eq!(
        (y.tokens, y.channels, y.layout),
        (rows, hidden, ScaleLayout::BlockMajor)
    );
    assert_eq!(
        y.scales.len(),
        Fp8Activations::scale_len(rows, hidden, ScaleLayout::BlockMajor)
    );
    let mut src = vec![None; rows];
    for (i, &r) in slot.iter().enumerate() {
        src[r] = Some(i / top_k);
    }
    for (r, s) in src.iter().enumerate() {
        let got = &y.q[r * hidden..(r + 1) * hidden];
        for b in 0..x.blocks() {
            let want = s.map_or(0.0, |t| x.scale(t, b));
            assert_eq!(
                y.scale(r, b).to_bits(),
                want.to_bits(),
                "scale of row {r} block {b}"
            );
        }
        match s {
            Some(t) => assert_eq!(got, &x.q[t * hidden..(t + 1) * hidden], "row {r}"),
            None => assert!(got.iter().all(|v| v.0 == 0), "padding row {r}"),
        }
    }
    // Block-major padding entries (rows past `rows` up to the multiple of 4) stay 0.
    let stride = rows.next_multiple_of(4);
    for b in 0..x.blocks() {
        assert!(y.scales[b * stride + rows..(b + 1) * stride]
            .iter()
            .all(|&v| v == 0.0));
    }
}

/// The combine formula written out independently of the reference's loop structure.
fn combine_by_hand(
    y: &[bf16],
    hidden: usize,
    slot: &[usize],
    w: &[f32],
    top_k: usize,
    shared: Option<&[bf16]>,
) -> Vec<bf16> {
    let tokens = slot.len() / top_k;
    let mut out = Vec::with_capacity(tokens * hidden);
    for t in 0..tokens {
        for h in 0..hidden {
            let mut acc = 0.0f32;
            for j in 0..top_k {
                let i = t * top_k + j;
                acc += w[i] * y[slot[i] * hidden + h].to_f32();
            }
            if let Some(s) = shared {
                acc += s[t * hidden + h].to_f32();
            }
            out.push(bf16::from_f32(acc));
        }
    }
    out
}

/// One full pass over a routing: both layouts, BF16 and FP8 dispatch, identity-expert round trip.
fn check_routing(
    rng: &mut Rng,
    ids: &[i32],
    top_k: usize,
    num_experts: usize,
    align: usize,
    hidden: usize,
) {
    let tokens = ids.len() / top_k;
    let c = contiguous_layout(ids, top_k, num_experts, align).unwrap();
    check_contiguous(&c, ids, top_k, num_experts, align);
    let m_max = c.counts.iter().copied().max().unwrap_or(0) + rng.below(3) as usize;
    let m = masked_layout(ids, top_k, num_experts, m_max).unwrap();
    check_masked(&m, ids, num_experts, m_max);
    assert_eq!(m.counts, c.counts);

    let x: Vec<bf16> = rng.normal_vec(tokens * hidden, 1.0);
    check_dispatch_bf16(&x, hidden, top_k, &c.slot, c.rows);
    check_dispatch_bf16(&x, hidden, top_k, &m.slot, m.rows());

    for layout in [ScaleLayout::TokenMajor, ScaleLayout::BlockMajor] {
        let q = quantize_fp8(&x, hidden, false, layout).unwrap();
        check_dispatch_fp8(&q, top_k, &c.slot, c.rows);
        let mq = dispatch_fp8_masked(&q, top_k, &m).unwrap();
        let flat = dispatch_rows(&q.q, hidden, top_k, &m.slot, m.rows()).unwrap();
        assert_eq!(mq.q, flat);
        assert_eq!(
            mq.scales.len(),
            num_experts * MaskedFp8::expert_scale_len(m_max, hidden)
        );
        for e in 0..num_experts {
            let g = mq.group(e);
            assert_eq!(g.q, flat[e * m_max * hidden..(e + 1) * m_max * hidden]);
            assert_eq!(
                g.scales.len(),
                Fp8Activations::scale_len(m_max, hidden, ScaleLayout::BlockMajor)
            );
            for r in 0..m_max {
                for b in 0..q.blocks() {
                    assert_eq!(g.scale(r, b).to_bits(), mq.scale(e, r, b).to_bits());
                }
            }
        }
        for e in 0..num_experts {
            for r in 0..m_max {
                for b in 0..q.blocks() {
                    let pair = m.slot.iter().position(|&s| s == e * m_max + r);
                    let want = pair.map_or(0.0, |i| q.scale(i / top_k, b));
                    assert_eq!(mq.scale(e, r, b).to_bits(), want.to_bits());
                }
            }
        }
    }

    // Identity experts: y = dispatched x; weights summing to 1 give x back (the f32 sum is within
    // a few f32 ulps of a BF16 value, so it rounds back to it).
    let w = normalized_weights(rng, tokens, top_k);
    for (slot, rows) in [(&c.slot, c.rows), (&m.slot, m.rows())] {
        let y = dispatch_rows(&x, hidden, top_k, slot, rows).unwrap();
        let out = combine(&y, hidden, slot, &w, top_k, None).unwrap();
        for (i, (a, b)) in out.iter().zip(&x).enumerate() {
            let tol = b.to_f32().abs() * 2.0f32.powi(-8);
            assert!(
                (a.to_f32() - b.to_f32()).abs() <= tol,
                "element {i}: {a} vs {b}"
            );
        }
        let shared: Vec<bf16> = rng.normal_vec(tokens * hidden, 1.0);
        let full = combine(&y, hidden, slot, &w, top_k, Some(&shared)).unwrap();
        assert_eq!(
            full,
            combine_by_hand(&y, hidden, slot, &w, top_k, Some(&shared))
        );
        let sums = combine_f32(&y, hidden, slot, &w, top_k).unwrap();
        assert_eq!(full, finish_combine(&sums, Some(&shared)).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_routing(
        tokens in 1usize..40,
        num_experts in 1usize..20,
        k_frac in 0.0f64..1.0,
        align in prop::sample::select(vec![1usize, 4, 16, 128]),
        hidden in prop::sample::select(vec![128usize, 256, 200, 7]),
        seed: u64,
    ) {
        let top_k = 1 + ((num_experts - 1) as f64 * k_frac) as usize;
        let mut rng = Rng::new(seed);
        let ids = random_ids(&mut rng, tokens, top_k, num_experts);
        check_routing(&mut rng, &ids, top_k, num_experts, align, hidden);
    }

    #[test]
    fn skewed_routing_with_empty_experts(
        tokens in 1usize..60,
        num_experts in 4usize..64,
        top_k in 1usize..9,
        align in prop::sample::select(vec![1usize, 8, 128]),
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let ids = skewed_ids(&mut rng, tokens, top_k, num_experts);
        let c = contiguous_layout(&ids, top_k, num_experts, align).unwrap();
        prop_assert!(c.counts.contains(&0));
        check_routing(&mut rng, &ids, top_k, num_experts, align, 128);
    }

    #[test]
    fn single_token(num_experts in 1usize..16, k_frac in 0.0f64..1.0, seed: u64) {
        let top_k = 1 + ((num_experts - 1) as f64 * k_frac) as usize;
        let mut rng = Rng::new(seed);
        let ids = random_ids(&mut rng, 1, top_k, num_experts);
        check_routing(&mut rng, &ids, top_k, num_experts, 128, 256);
    }

    #[test]
    fn k_equals_e(tokens in 1usize..20, num_experts in 1usize..12, seed: u64) {
        let mut rng = Rng::new(seed);
        let ids = random_ids(&mut rng, tokens, num_experts, num_experts);
        let c = contiguous_layout(&ids, num_experts, num_experts, 16).unwrap();
        prop_assert!(c.counts.iter().all(|&n| n == tokens));
        check_routing(&mut rng, &ids, num_experts, num_experts, 16, 128);
    }

    #[test]
    fn all_tokens_on_one_expert(tokens in 1usize..300, num_experts in 1usize..40, seed: u64) {
        let mut rng = Rng::new(seed);
        let e = rng.below(num_experts as u64) as i32;
        let ids = vec![e; tokens];
        let c = contiguous_layout(&ids, 1, num_experts, 128).unwrap();
        prop_assert_eq!(c.rows, tokens.next_multiple_of(128));
        prop_assert_eq!(&c.slot, &(c.offsets[e as usize]..c.offsets[e as usize] + tokens).collect::<Vec<_>>());
        check_routing(&mut rng, &ids, 1, num_experts, 128, 128);
    }

    #[test]
    fn combine_is_the_fixed_order_sum(
        tokens in 1usize..20,
        top_k in 1usize..9,
        hidden in 1usize..300,
        with_shared: bool,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let rows = tokens * top_k + rng.below(5) as usize;
        // Any injective slot map (not necessarily from a layout).
        let mut perm: Vec<usize> = (0..rows).collect();
        for i in 0..rows {
            let j = i + rng.below((rows - i) as u64) as usize;
            perm.swap(i, j);
        }
        let slot = &perm[..tokens * top_k];
        let y: Vec<bf16> = rng.normal_vec(rows * hidden, 3.0);
        let w: Vec<f32> = (0..tokens * top_k).map(|_| rng.normal()).collect();
        let shared: Option<Vec<bf16>> = with_shared.then(|| rng.normal_vec(tokens * hidden, 1.0));
        let out = combine(&y, hidden, slot, &w, top_k, shared.as_deref()).unwrap();
        prop_assert_eq!(&out, &combine_by_hand(&y, hidden, slot, &w, top_k, shared.as_deref()));
        let sums = combine_f32(&y, hidden, slot, &w, top_k).unwrap();
        prop_assert_eq!(&out, &finish_combine(&sums, shared.as_deref()).unwrap());
    }
}

#[test]
fn empty_batch() {
    let c = contiguous_layout(&[], 8, 256, 128).unwrap();
    assert_eq!((c.rows, c.slot.len(), c.m_indices.len()), (0, 0, 0));
    assert_eq!(c.offsets, vec![0; 257]);
    let m = masked_layout(&[], 8, 256, 4).unwrap();
    assert!(m.counts.iter().all(|&n| n == 0));
    assert_eq!(contiguous_rows_bound(0, 8, 256, 128), 0);
}

#[test]
fn small_layout_by_hand() {
    // 3 tokens, K = 2, 4 experts: expert 1 has 3 rows, expert 3 has 2, experts 0 and 2 none.
    let ids = [1, 3, 3, 1, 1, 2];
    let c = contiguous_layout(&ids, 2, 4, 4).unwrap();
    assert_eq!(c.counts, vec![0, 3, 1, 2]);
    assert_eq!(c.offsets, vec![0, 0, 4, 8, 12]);
    assert_eq!(c.m_indices, vec![1, 1, 1, -1, 2, -1, -1, -1, 3, 3, -1, -1]);
    assert_eq!(c.slot, vec![0, 8, 9, 1, 2, 4]);
    let m = masked_layout(&ids, 2, 4, 3).unwrap();
    assert_eq!(m.slot, vec![3, 9, 10, 4, 5, 6]);
}

#[test]
fn rows_bound_is_reached() {
    // Every pair on its own expert: each wastes align - 1 rows.
    let ids: Vec<i32> = (0..8).collect();
    let c = contiguous_layout(&ids, 2, 8, 128).unwrap();
    assert_eq!(c.rows, 8 * 128);
    assert_eq!(contiguous_rows_bound(4, 2, 8, 128), 8 * 128);
    // More pairs than experts: the bound is E experts' worth of padding.
    assert_eq!(
        contiguous_rows_bound(4096, 8, 256, 128),
        (4096 * 8 + 256 * 127) / 128 * 128
    );
}

#[test]
fn masked_overflow_names_the_expert() {
    let ids = [0, 2, 2, 1, 2, 0];
    let err = masked_layout(&ids, 2, 3, 2).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{msg}");
    assert!(msg.contains("expert 2") && msg.contains("3 rows"), "{msg}");
    assert!(masked_layout(&ids, 2, 3, 3).is_ok());
}

#[test]
fn bad_ids_name_token_and_choice() {
    for (ids, bad) in [
        (vec![0, 1, 2, -1], "token 1 choice 1"),
        (vec![0, 4, 2, 1], "token 0 choice 1"),
    ] {
        for err in [
            contiguous_layout(&ids, 2, 4, 128).unwrap_err(),
            masked_layout(&ids, 2, 4, 8).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, Error::IndexOutOfRange { .. }), "{msg}");
            assert!(msg.contains(bad), "{msg}");
        }
    }
}

#[test]
fn shape_errors() {
    assert!(matches!(
        contiguous_layout(&[0, 1, 2], 2, 4, 128),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        contiguous_layout(&[0], 0, 4, 128),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        contiguous_layout(&[0], 1, 0, 128),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        contiguous_layout(&[0], 1, 4, 0),
        Err(Error::InvalidArgument { .. })
    ));
    let x = vec![bf16::ONE; 2 * 4];
    // slot length, out-of-range row, duplicate row.
    assert!(matches!(
        dispatch_rows(&x, 4, 2, &[0, 1], 4),
        Err(Error::Shape { .. })
    ));
    let err = dispatch_rows(&x, 4, 2, &[0, 1, 2, 4], 4).unwrap_err();
    assert!(
        matches!(err, Error::IndexOutOfRange { .. })
            && err.to_string().contains("token 1 choice 1")
    );
    assert!(matches!(
        dispatch_rows(&x, 4, 2, &[0, 1, 2, 1], 4),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        dispatch_rows(&x, 3, 2, &[0, 1, 2, 3], 4),
        Err(Error::Shape { .. })
    ));
    let y = vec![bf16::ONE; 4 * 4];
    assert!(matches!(
        combine(&y, 4, &[0, 1, 2, 3], &[1.0; 3], 2, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        combine(&y, 4, &[0, 1, 2, 4], &[1.0; 4], 2, None),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        combine(&y, 4, &[0, 1, 2, 3], &[1.0; 4], 2, Some(&x[..4])),
        Err(Error::Shape { .. })
    ));
    let q = quantize_fp8(&x, 4, false, ScaleLayout::TokenMajor).unwrap();
    let mut bad = q.clone();
    bad.scales.pop();
    assert!(matches!(
        dispatch_fp8(&bad, 2, &[0, 1, 2, 3], 4),
        Err(Error::Shape { .. })
    ));
}
