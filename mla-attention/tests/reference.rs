//! The MLA references against f64 versions written here, and against each other: naive vs
//! absorbed (the absorption algebra), paged vs contiguous decode, log-sum-exp, the FP8 cache
//! entry, the KV append, the block allocator and the error cases.

use half::bf16;
use kernels::dtype::{e4m3_from_f32, e4m3_to_f32};
use kernels::reference::{apply_rope, rms_norm, RopeLayout, RopeParams, YarnScaling};
use kernels::rng::Rng;
use kernels::Error;
use mla_attention::cache::{KvCacheAllocator, PAD_BLOCK};
use mla_attention::reference::absorbed::pack_query;
use mla_attention::reference::fp8_cache::{
    entry_scale, CODES_OFFSET, ROPE_OFFSET, SCALES_OFFSET, SCALE_COUNT,
};
use mla_attention::reference::*;
use mla_attention::{MlaDims, KV_DIM, KV_LORA_RANK, ROPE_DIM};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn v3_yarn() -> YarnScaling {
    YarnScaling {
        factor: 40.0,
        original_max_position_embeddings: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: 1.0,
        mscale_all_dim: 1.0,
    }
}

fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    rng.normal_vec(n, std)
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// max |got - want| / max(1, max |want|).
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Softmax of f64 scores: (weights, lse).
fn softmax64(scores: &[f64]) -> (Vec<f64>, f64) {
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    (e.iter().map(|v| v / sum).collect(), max + sum.ln())
}

// ---- f64 versions of the two forms (spec §3.1, literally) ----

struct Inputs {
    dims: MlaDims,
    tokens: usize,
    c_kv: Vec<f32>,
    k_pe: Vec<f32>,
    q_nope: Vec<f32>,
    q_pe: Vec<f32>,
    kv_b: Vec<f32>,
    scale: f32,
}

fn random_inputs(seed: u64, dims: MlaDims, tokens: usize) -> Inputs {
    let mut rng = Rng::new(seed);
    let MlaDims {
        heads,
        kv_lora_rank: d_c,
        qk_nope_head_dim: d_nope,
        qk_rope_head_dim: d_rope,
        ..
    } = dims;
    Inputs {
        dims,
        tokens,
        c_kv: normal(&mut rng, tokens * d_c, 1.0),
        k_pe: normal(&mut rng, tokens * d_rope, 1.0),
        q_nope: normal(&mut rng, tokens * heads * d_nope, 2.0),
        q_pe: normal(&mut rng, tokens * heads * d_rope, 2.0),
        kv_b: normal(&mut rng, dims.kv_b_len(), 1.0 / (d_c as f32).sqrt()),
        scale: softmax_scale(&dims, Some(&v3_yarn())),
    }
}

/// Row r of W (rows of d_c) for head h: W_UK[h] = rows 0..d_nope, W_UV[h] = the next d_v.
fn w_row(dims: &MlaDims, kv_b: &[f64], h: usize, r: usize) -> Vec<f64> {
    let d_c = dims.kv_lora_rank;
    let row = h * (dims.qk_nope_head_dim + dims.v_head_dim) + r;
    kv_b[row * d_c..(row + 1) * d_c].to_vec()
}

fn naive64(x: &Inputs) -> Vec<f64> {
    let d = x.dims;
    let (c_kv, k_pe, q_nope, q_pe, kv_b) = (
        to64(&x.c_kv),
        to64(&x.k_pe),
        to64(&x.q_nope),
        to64(&x.q_pe),
        to64(&x.kv_b),
    );
    let (dc, dn, dr, dv, hs) = (
        d.kv_lora_rank,
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        d.v_head_dim,
        d.heads,
    );
    let mut out = vec![0.0; x.tokens * hs * dv];
    for h in 0..hs {
        // k[h][s] = [W_UK[h] c_kv[s] ; k_pe[s]], v[h][s] = W_UV[h] c_kv[s]
        let k: Vec<Vec<f64>> = (0..x.tokens)
            .map(|s| {
                let c = &c_kv[s * dc..][..dc];
                let mut k: Vec<f64> = (0..dn).map(|j| dot64(&w_row(&d, &kv_b, h, j), c)).collect();
                k.extend_from_slice(&k_pe[s * dr..][..dr]);
                k
            })
            .collect();
        let v: Vec<Vec<f64>> = (0..x.tokens)
            .map(|s| {
                let c = &c_kv[s * dc..][..dc];
                (0..dv)
                    .map(|i| dot64(&w_row(&d, &kv_b, h, dn + i), c))
                    .collect()
            })
            .collect();
        for t in 0..x.tokens {
            let mut q = q_nope[(t * hs + h) * dn..][..dn].to_vec();
            q.extend_from_slice(&q_pe[(t * hs + h) * dr..][..dr]);
            let scores: Vec<f64> = (0..=t)
                .map(|s| dot64(&q, &k[s]) * f64::from(x.scale))
                .collect();
            let (p, _) = softmax64(&scores);
            for (s, p) in p.iter().enumerate() {
                for i in 0..dv {
                    out[(t * hs + h) * dv + i] += p * v[s][i];
                }
            }
        }
    }
    out
}

/// Absorbed form in f64; returns (o [T, H, d_v], lse [T, H]).
fn absorbed64(x: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let d = x.dims;
    let (c_kv, k_pe, q_nope, q_pe, kv_b) = (
        to64(&x.c_kv),
        to64(&x.k_pe),
        to64(&x.q_nope),
        to64(&x.q_pe),
        to64(&x.kv_b),
    );
    let (dc, dn, dr, dv, hs) = (
        d.kv_lora_rank,
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        d.v_head_dim,
        d.heads,
    );
    let mut out = vec![0.0; x.tokens * hs * dv];
    let mut lse = vec![0.0; x.tokens * hs];
    for t in 0..x.tokens {
        for h in 0..hs {
            // q_lat = W_UK[h]^T q_nope[h]
            let qn = &q_nope[(t * hs + h) * dn..][..dn];
            let mut q_lat = vec![0.0; dc];
            for (j, qj) in qn.iter().enumerate() {
                for (o, w) in q_lat.iter_mut().zip(w_row(&d, &kv_b, h, j)) {
                    *o += w * qj;
                }
            }
            let qp = &q_pe[(t * hs + h) * dr..][..dr];
            let scores: Vec<f64> = (0..=t)
                .map(|s| {
                    (dot64(&q_lat, &c_kv[s * dc..][..dc]) + dot64(qp, &k_pe[s * dr..][..dr]))
                        * f64::from(x.scale)
                })
                .collect();
            let (p, l) = softmax64(&scores);
            lse[t * hs + h] = l;
            let mut o_lat = vec![0.0; dc];
            for (s, p) in p.iter().enumerate() {
                for (o, c) in o_lat.iter_mut().zip(&c_kv[s * dc..][..dc]) {
                    *o += p * c;
                }
            }
            for i in 0..dv {
                out[(t * hs + h) * dv + i] = dot64(&w_row(&d, &kv_b, h, dn + i), &o_lat);
            }
        }
    }
    (out, lse)
}

/// The crate's absorbed path: absorb, pack, decode over each causal prefix, absorb the output.
fn absorbed_f32(x: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let d = x.dims;
    let (dc, dr) = (d.kv_lora_rank, d.qk_rope_head_dim);
    let q_lat = absorb_query(&d, &x.q_nope, &x.kv_b).unwrap();
    let q = pack_query(&d, &q_lat, &x.q_pe).unwrap();
    let cache: Vec<f32> = (0..x.tokens)
        .flat_map(|s| {
            x.c_kv[s * dc..][..dc]
                .iter()
                .chain(&x.k_pe[s * dr..][..dr])
                .copied()
        })
        .collect();
    let width = dc + dr;
    let (mut o_lat, mut lse) = (Vec::new(), Vec::new());
    for t in 0..x.tokens {
        let qt = &q[t * d.heads * width..][..d.heads * width];
        let out = decode_attention(&d, qt, &cache[..(t + 1) * width], x.scale).unwrap();
        o_lat.extend(out.o_lat);
        lse.extend(out.lse);
    }
    (absorb_output(&d, &o_lat, &x.kv_b).unwrap(), lse)
}

fn small_dims() -> impl Strategy<Value = MlaDims> {
    (
        1usize..=4,
        32usize..=64,
        4usize..=8,
        2usize..=24,
        2usize..=24,
    )
        .prop_map(|(heads, d_c, half_rope, d_nope, d_v)| MlaDims {
            heads,
            kv_lora_rank: d_c,
            qk_nope_head_dim: d_nope,
            qk_rope_head_dim: 2 * half_rope,
            v_head_dim: d_v,
        })
}

proptest! {
    #![proptest_config(config(48))]

    /// (a) The absorption algebra: naive and absorbed agree in f64, and the f32 references of both
    /// forms agree with them.
    #[test]
    fn naive_equals_absorbed(seed in any::<u64>(), dims in small_dims(), tokens in 1usize..=12) {
        let x = random_inputs(seed, dims, tokens);
        let naive = naive64(&x);
        let (absorbed, lse64) = absorbed64(&x);
        let scale = naive.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let diff = naive.iter().zip(&absorbed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        prop_assert!(diff / scale < 1e-12, "f64 naive vs absorbed: {diff}");

        let naive32 = naive_attention(&dims, &x.c_kv, &x.k_pe, &x.q_nope, &x.q_pe, &x.kv_b, x.scale).unwrap();
        prop_assert!(rel_err(&naive32, &naive) < 2e-5, "naive f32: {}", rel_err(&naive32, &naive));
        let (abs32, lse32) = absorbed_f32(&x);
        prop_assert!(rel_err(&abs32, &naive) < 2e-5, "absorbed f32: {}", rel_err(&abs32, &naive));
        // (c) lse of the absorbed decode matches log-sum-exp in f64.
        for (g, w) in lse32.iter().zip(&lse64) {
            prop_assert!((f64::from(*g) - w).abs() <= 1e-5 * (1.0 + w.abs()), "lse {g} vs {w}");
        }
    }
}

#[test]
fn softmax_scale_follows_the_spec() {
    let v3 = MlaDims::DEEPSEEK_V3;
    let m = 0.1 * 40f64.ln() + 1.0;
    let want = 192f64.powf(-0.5) * m * m;
    assert_eq!(softmax_scale(&v3, Some(&v3_yarn())), want as f32);
    assert_eq!(softmax_scale(&v3, None), (192f64.powf(-0.5)) as f32);
    // Agrees with the kernels crate's m (RopeParams::softmax_mscale).
    let rope = RopeParams::new(10000.0, 64, Some(v3_yarn())).unwrap();
    let mk = rope.softmax_mscale();
    assert_eq!(
        softmax_scale(&v3, Some(&v3_yarn())),
        (192f64.powf(-0.5) * mk * mk) as f32
    );
    // mscale_all_dim unset (0): m = 1.
    let unset = YarnScaling {
        mscale_all_dim: 0.0,
        ..v3_yarn()
    };
    assert_eq!(softmax_scale(&v3, Some(&unset)), (192f64.powf(-0.5)) as f32);
}

/// (c) lse with large scores: no overflow, matches f64.
#[test]
fn lse_large_scores() {
    let dims = MlaDims {
        heads: 2,
        kv_lora_rank: 32,
        qk_nope_head_dim: 8,
        qk_rope_head_dim: 8,
        v_head_dim: 8,
    };
    let mut rng = Rng::new(7);
    let q = normal(&mut rng, 2 * 40, 30.0);
    let cache = normal(&mut rng, 70 * 40, 30.0);
    let out = decode_attention(&dims, &q, &cache, 1.0).unwrap();
    for h in 0..2 {
        let qh = to64(&q[h * 40..][..40]);
        let scores: Vec<f64> = cache
            .chunks_exact(40)
            .map(|e| dot64(&qh, &to64(e)))
            .collect();
        assert!(scores.iter().cloned().fold(0.0, f64::max) > 1000.0);
        let (p, lse) = softmax64(&scores);
        assert!(((f64::from(out.lse[h]) - lse) / lse).abs() < 1e-5);
        let mut o = vec![0.0; 32];
        for (p, e) in p.iter().zip(cache.chunks_exact(40)) {
            for (o, c) in o.iter_mut().zip(e) {
                *o += p * f64::from(*c);
            }
        }
        assert!(rel_err(&out.o_lat[h * 32..][..32], &o) < 1e-4);
    }
}

// ---- paged decode ----

struct Paged {
    shape: PagedShape,
    q: Vec<bf16>,
    cache: Vec<bf16>,
    table: Vec<i32>,
    seqlens: Vec<i32>,
}

/// A random paged problem: blocks drawn from a shuffled pool (non-contiguous, out of order),
/// spare blocks and table padding that must never be read.
fn random_paged(seed: u64, lens: &[usize], s_q: usize, heads: usize) -> Paged {
    let mut rng = Rng::new(seed);
    let needed: Vec<usize> = lens.iter().map(|l| l.div_ceil(BLOCK_SIZE)).collect();
    let max_blocks = needed.iter().max().unwrap() + rng.below(2) as usize;
    let num_blocks = needed.iter().sum::<usize>() + rng.below(3) as usize;
    let mut pool: Vec<i32> = (0..num_blocks as i32).collect();
    for i in (1..pool.len()).rev() {
        pool.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut table = vec![0i32; lens.len() * max_blocks];
    let mut next = 0;
    for (b, &n) in needed.iter().enumerate() {
        for j in 0..max_blocks {
            table[b * max_blocks + j] = if j < n {
                next += 1;
                pool[next - 1]
            } else {
                // Padding: out of range or negative, never read.
                [PAD_BLOCK, i32::MAX, num_blocks as i32][rng.below(3) as usize]
            };
        }
    }
    let shape = PagedShape {
        batch: lens.len(),
        q_len: s_q,
        max_blocks,
        num_blocks,
    };
    Paged {
        shape,
        q: rng.normal_vec(lens.len() * s_q * heads * KV_DIM, 1.0),
        cache: rng.normal_vec(shape.cache_len(KV_DIM), 1.0),
        table,
        seqlens: lens.iter().map(|&l| l as i32).collect(),
    }
}

/// The entries of sequence b in position order, gathered through the table, as f32.
fn gather(p: &Paged, b: usize, len: usize) -> Vec<f32> {
    (0..len)
        .flat_map(|pos| {
            let e = paged::slot(&p.shape, &p.table, b, pos);
            p.cache[e * KV_DIM..][..KV_DIM].iter().map(|v| v.to_f32())
        })
        .collect()
}

fn seqlen() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![1usize, 2, 63, 64, 65, 127, 128, 129, 191, 193]),
        1usize..=200,
    ]
}

proptest! {
    #![proptest_config(config(40))]

    /// (b) The paged reference equals the contiguous absorbed reference over the causal prefix of
    /// each query token; (c) its lse and output match f64.
    #[test]
    fn paged_equals_contiguous(
        seed in any::<u64>(),
        lens in prop::collection::vec(seqlen(), 1..=4),
        s_q in prop_oneof![3 => 1usize..=MAX_QUERY_LEN, 1 => MAX_QUERY_LEN + 1..=MAX_CHUNK_LEN],
        heads in 1usize..=3,
    ) {
        let lens: Vec<usize> = lens.iter().map(|&l| l.max(s_q)).collect();
        let p = random_paged(seed, &lens, s_q, heads);
        let dims = MlaDims { heads, ..MlaDims::DEEPSEEK_V3 };
        let scale = softmax_scale(&dims, Some(&v3_yarn()));
        let out = paged_decode(&p.shape, heads, &p.q, &p.cache, &p.table, &p.seqlens, scale).unwrap();
        prop_assert_eq!(out.o_lat.len(), lens.len() * s_q * heads * KV_LORA_RANK);
        prop_assert_eq!(out.lse.len(), lens.len() * s_q * heads);
        for (b, &len) in lens.iter().enumerate() {
            let entries = gather(&p, b, len);
            for i in 0..s_q {
                let visible = len - s_q + i + 1;
                let rows = (b * s_q + i) * heads;
                let q: Vec<f32> = p.q[rows * KV_DIM..][..heads * KV_DIM].iter().map(|v| v.to_f32()).collect();
                let want = decode_attention(&dims, &q, &entries[..visible * KV_DIM], scale).unwrap();
                let got_o = &out.o_lat[rows * KV_LORA_RANK..][..heads * KV_LORA_RANK];
                prop_assert!(rel_err(got_o, &to64(&want.o_lat)) < 1e-5);
                for h in 0..heads {
                    let g = out.lse[rows + h];
                    prop_assert!((g - want.lse[h]).abs() <= 1e-5 * (1.0 + g.abs()));
                    // f64: log-sum-exp and output.
                    let qh = to64(&q[h * KV_DIM..][..KV_DIM]);
                    let scores: Vec<f64> = entries[..visible * KV_DIM]
                        .chunks_exact(KV_DIM)
                        .map(|e| dot64(&qh, &to64(e)) * f64::from(scale))
                        .collect();
                    let (w, lse) = softmax64(&scores);
                    prop_assert!((f64::from(g) - lse).abs() <= 1e-5 * (1.0 + lse.abs()), "lse {} vs {}", g, lse);
                    let mut o = vec![0.0; KV_LORA_RANK];
                    for (w, e) in w.iter().zip(entries.chunks_exact(KV_DIM)) {
                        for (o, c) in o.iter_mut().zip(e) {
                            *o += w * f64::from(*c);
                        }
                    }
                    prop_assert!(rel_err(&got_o[h * KV_LORA_RANK..][..KV_LORA_RANK], &o) < 1e-5);
                }
            }
        }
    }
}

/// Causality among the S_q query tokens: changing the last entry changes only the last query.
#[test]
fn paged_queries_are_causal() {
    let mut p = random_paged(3, &[70, 5], 4, 2);
    let run =
        |p: &Paged| paged_decode(&p.shape, 2, &p.q, &p.cache, &p.table, &p.seqlens, 0.1).unwrap();
    let before = run(&p);
    for b in 0..2 {
        let e = paged::slot(&p.shape, &p.table, b, p.seqlens[b] as usize - 1);
        for v in &mut p.cache[e * KV_DIM..][..KV_DIM] {
            *v = bf16::from_f32(v.to_f32() + 1.0);
        }
    }
    let after = run(&p);
    for b in 0..2 {
        for i in 0..4 {
            let rows = (b * 4 + i) * 2;
            let same = before.lse[rows..rows + 2] == after.lse[rows..rows + 2];
            assert_eq!(same, i < 3, "sequence {b} query {i}");
        }
    }
}

// ---- KV append ----

fn v3_rope() -> RopeParams {
    RopeParams::new(10000.0, ROPE_DIM, Some(v3_yarn())).unwrap()
}

#[test]
fn append_kv_writes_norm_and_rope_through_the_table() {
    let mut alloc = KvCacheAllocator::new(8).unwrap();
    alloc.allocate(10, 62).unwrap();
    alloc.allocate(11, 128).unwrap();
    alloc.allocate(12, 1).unwrap();
    // Three new tokens each: 62 -> 65 crosses a block boundary, 128 -> 131 opens a block.
    for s in [10, 11, 12] {
        alloc.extend(s, 3).unwrap();
    }
    let bt = alloc.block_table(&[10, 11, 12]).unwrap();
    let shape = bt.shape(3, 8);
    let mut rng = Rng::new(5);
    let kv: Vec<bf16> = rng.normal_vec(3 * 3 * KV_DIM, 2.0);
    let weight: Vec<bf16> = rng.normal_vec(KV_LORA_RANK, 1.0);
    let before: Vec<bf16> = rng.normal_vec(shape.cache_len(KV_DIM), 1.0);
    let mut cache = before.clone();
    let rope = v3_rope();
    append_kv(
        &shape,
        &mut cache,
        &kv,
        &bt.table,
        &bt.seqlens,
        &weight,
        1e-6,
        &rope,
        4096,
    )
    .unwrap();

    let mut written = vec![false; 8 * BLOCK_SIZE];
    for b in 0..3 {
        let len = bt.seqlens[b] as usize;
        for i in 0..3 {
            let pos = len - 3 + i;
            let row = &kv[(b * 3 + i) * KV_DIM..][..KV_DIM];
            let mut want = rms_norm(&row[..KV_LORA_RANK], &weight, KV_LORA_RANK, 1e-6).unwrap();
            let mut pe = row[KV_LORA_RANK..].to_vec();
            let layout = RopeLayout {
                tokens: 1,
                heads: 1,
                token_stride: ROPE_DIM,
                head_stride: 0,
                offset: 0,
            };
            apply_rope(&mut pe, &layout, &[pos as i32], &rope, 4096).unwrap();
            want.extend(pe);
            let e = paged::slot(&shape, &bt.table, b, pos);
            assert_eq!(
                &cache[e * KV_DIM..][..KV_DIM],
                &want[..],
                "sequence {b} position {pos}"
            );
            written[e] = true;
        }
    }
    for (e, w) in written.iter().enumerate() {
        if !w {
            assert_eq!(
                cache[e * KV_DIM..][..KV_DIM],
                before[e * KV_DIM..][..KV_DIM]
            );
        }
    }
}

// ---- FP8 cache entry ----

proptest! {
    #![proptest_config(config(64))]

    /// (d) Byte layout and round trip within e4m3 bounds; decode attention over FP8 = dequantize
    /// then the same math.
    #[test]
    fn fp8_entry_round_trip(seed in any::<u64>(), log_mag in prop::collection::vec(-12i32..12, 4)) {
        let mut rng = Rng::new(seed);
        let mut entry: Vec<f32> = Vec::with_capacity(KV_DIM);
        for (j, e) in log_mag.iter().enumerate() {
            let std = if j == 3 && *e < -9 { 0.0 } else { 2f32.powi(*e) };
            entry.extend(normal(&mut rng, 128, std));
        }
        entry.extend(normal(&mut rng, ROPE_DIM, 3.0));
        let bytes = encode_entry(&entry).unwrap();
        prop_assert_eq!(bytes.len(), 656);
        let decoded = decode_entry(&bytes).unwrap();
        for j in 0..SCALE_COUNT {
            let block = &entry[j * 128..][..128];
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax.max(1e-4) / 448.0;
            prop_assert_eq!(entry_scale(&bytes, j), scale);
            prop_assert_eq!(&bytes[SCALES_OFFSET + 4 * j..][..4], &scale.to_le_bytes()[..]);
            for (k, &x) in block.iter().enumerate() {
                let code = bytes[CODES_OFFSET + j * 128 + k];
                prop_assert_eq!(code, e4m3_from_f32(x / scale));
                let y = decoded[j * 128 + k];
                prop_assert_eq!(y, e4m3_to_f32(code) * scale);
                // RNE in e4m3: half a quantum, 2^-4 relative for normals, 2^-10 * scale below.
                let bound = f64::from(x.abs()) / 16.0 + f64::from(scale) / 1024.0;
                prop_assert!((f64::from(y) - f64::from(x)).abs() <= bound * (1.0 + 1e-6),
                    "x {} -> {} (scale {})", x, y, scale);
            }
        }
        for r in 0..ROPE_DIM {
            let bits = bf16::from_f32(entry[KV_LORA_RANK + r]).to_bits();
            prop_assert_eq!(&bytes[ROPE_OFFSET + 2 * r..][..2], &bits.to_le_bytes()[..]);
            prop_assert_eq!(decoded[KV_LORA_RANK + r], bf16::from_bits(bits).to_f32());
        }
        // BF16 decode: each f32 value rounded once.
        let as_bf16 = decode_cache_bf16(&bytes).unwrap();
        for (a, b) in as_bf16.iter().zip(&decoded) {
            prop_assert_eq!(*a, bf16::from_f32(*b));
        }
    }
}

#[test]
fn fp8_layout_constants() {
    assert_eq!(FP8_ENTRY_BYTES, 656);
    assert_eq!((CODES_OFFSET, SCALES_OFFSET, ROPE_OFFSET), (0, 512, 528));
    assert_eq!(SCALE_COUNT, 4);
    // The block maximum encodes to +-448 (code 0x7e / 0xfe) and decodes to amax.
    let mut entry = vec![0.0f32; KV_DIM];
    entry[5] = -3.0;
    entry[200] = 0.5;
    let bytes = encode_entry(&entry).unwrap();
    assert_eq!(bytes[5], 0xfe);
    assert_eq!(bytes[200], 0x7e);
    assert_eq!(bytes[6], 0);
    let d = decode_entry(&bytes).unwrap();
    assert_eq!((d[5], d[200]), (-3.0, 0.5));
    // An all-zero block gets the floor scale 1e-4 / 448.
    assert_eq!(entry_scale(&bytes, 2), 1e-4f32 / 448.0);
}

#[test]
fn paged_decode_over_fp8_is_dequantize_then_decode() {
    let p = random_paged(11, &[65, 3, 130], 2, 3);
    let fp8 = encode_cache(&p.cache).unwrap();
    assert_eq!(fp8.len(), p.shape.num_blocks * BLOCK_SIZE * FP8_ENTRY_BYTES);
    let got = paged_decode_fp8(&p.shape, 3, &p.q, &fp8, &p.table, &p.seqlens, 0.1).unwrap();
    let dequant = decode_cache_f32(&fp8).unwrap();
    let want = paged_decode(&p.shape, 3, &p.q, &dequant, &p.table, &p.seqlens, 0.1).unwrap();
    assert_eq!(got, want);
    // Close to the BF16 cache's result (e4m3 noise only).
    let exact = paged_decode(&p.shape, 3, &p.q, &p.cache, &p.table, &p.seqlens, 0.1).unwrap();
    assert!(rel_err(&got.o_lat, &to64(&exact.o_lat)) < 0.05);
    for (a, b) in got.lse.iter().zip(&exact.lse) {
        assert!((a - b).abs() < 0.1, "{a} vs {b}");
    }
}

// ---- allocator ----

#[test]
fn allocator_exhaustion_free_reuse_and_tables() {
    let mut a = KvCacheAllocator::new(4).unwrap();
    a.allocate(1, 65).unwrap();
    a.allocate(2, 64).unwrap();
    assert_eq!(a.blocks(1), Some(&[0u32, 1][..]));
    assert_eq!(a.blocks(2), Some(&[2u32][..]));
    assert_eq!(a.free_blocks(), 1);

    let err = a.allocate(3, 100).unwrap_err().to_string();
    assert!(
        err.contains("sequence 3") && err.contains("needs 2 more blocks") && err.contains("1 of 4"),
        "{err}"
    );
    assert_eq!(a.seq_len(3), None);
    assert_eq!(a.free_blocks(), 1);

    assert_eq!(a.extend(1, 63).unwrap(), 128); // fits in block 1
    assert_eq!(a.free_blocks(), 1);
    assert_eq!(a.extend(2, 1).unwrap(), 65);
    assert_eq!(a.blocks(2), Some(&[2u32, 3][..]));
    let err = a.extend(1, 1).unwrap_err().to_string();
    assert!(
        err.contains("sequence 1") && err.contains("needs 1 more blocks") && err.contains("0 of 4"),
        "{err}"
    );
    assert_eq!(a.seq_len(1), Some(128));

    let bt = a.block_table(&[2, 1]).unwrap();
    assert_eq!((bt.batch, bt.max_blocks), (2, 2));
    assert_eq!(bt.table, vec![2, 3, 0, 1]);
    assert_eq!(bt.seqlens, vec![65, 128]);

    assert_eq!(a.free(1).unwrap(), 2);
    assert_eq!(a.free_blocks(), 2);
    a.allocate(3, 1).unwrap();
    assert_eq!(a.blocks(3), Some(&[0u32][..])); // lowest free block reused
    let bt = a.block_table_width(&[3, 2], 3).unwrap();
    assert_eq!(bt.table, vec![0, PAD_BLOCK, PAD_BLOCK, 2, 3, PAD_BLOCK]);
    assert_eq!(bt.seqlens, vec![1, 65]);
    assert!(a
        .block_table_width(&[2], 1)
        .unwrap_err()
        .to_string()
        .contains("sequence 2 has 2 blocks"));
    assert!(a
        .block_table(&[9])
        .unwrap_err()
        .to_string()
        .contains("sequence 9"));
    assert!(a.free(1).is_err());
    assert!(a.extend(1, 1).is_err());
    assert!(a.allocate(2, 1).is_err());
    assert_eq!(a.sequences().collect::<Vec<_>>(), vec![2, 3]);
}

#[derive(Clone, Debug)]
enum Op {
    Allocate(u64, usize),
    Extend(u64, usize),
    Free(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..6, 0usize..200).prop_map(|(s, n)| Op::Allocate(s, n)),
        (0u64..6, 0usize..100).prop_map(|(s, n)| Op::Extend(s, n)),
        (0u64..6).prop_map(Op::Free),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    /// (e) Random operation sequences: blocks stay disjoint, every block is either free or owned
    /// once, a sequence has exactly ceil(len / 64) blocks, a failed call changes nothing, and the
    /// same operations give the same tables.
    #[test]
    fn allocator_invariants(ops in prop::collection::vec(op(), 1..40), num_blocks in 0usize..12) {
        let mut a = KvCacheAllocator::new(num_blocks).unwrap();
        let mut b = KvCacheAllocator::new(num_blocks).unwrap();
        for op in &ops {
            let snapshot = format!("{a:?}");
            let ok = match *op {
                Op::Allocate(s, n) => a.allocate(s, n).is_ok(),
                Op::Extend(s, n) => a.extend(s, n).is_ok(),
                Op::Free(s) => a.free(s).is_ok(),
            };
            if !ok {
                prop_assert_eq!(format!("{a:?}"), snapshot);
            }
            let _ = match *op {
                Op::Allocate(s, n) => b.allocate(s, n).map(|_| 0),
                Op::Extend(s, n) => b.extend(s, n),
                Op::Free(s) => b.free(s),
            };
            let mut owned = vec![false; num_blocks];
            for s in a.sequences() {
                let blocks = a.blocks(s).unwrap();
                prop_assert_eq!(blocks.len(), a.seq_len(s).unwrap().div_ceil(BLOCK_SIZE));
                for &blk in blocks {
                    prop_assert!(!owned[blk as usize], "block {} owned twice", blk);
                    owned[blk as usize] = true;
                }
            }
            prop_assert_eq!(owned.iter().filter(|o| **o).count() + a.free_blocks(), num_blocks);
        }
        let seqs: Vec<u64> = a.sequences().collect();
        prop_assert_eq!(a.block_table(&seqs).unwrap(), b.block_table(&seqs).unwrap());
    }
}

// ---- error cases ----

fn expect_err<T: std::fmt::Debug>(r: kernels::Result<T>, needle: &str) -> Error {
    let e = r.expect_err(needle);
    assert!(
        e.to_string().contains(needle),
        "`{e}` does not mention `{needle}`"
    );
    e
}

#[test]
fn paged_errors() {
    let p = random_paged(1, &[70, 10], 2, 1);
    let run = |shape: &PagedShape, table: &[i32], lens: &[i32]| {
        paged_decode(shape, 1, &p.q, &p.cache, table, lens, 0.1)
    };
    let (s, t, l) = (p.shape, p.table.clone(), p.seqlens.clone());
    let mb = s.max_blocks;

    let mut bad = t.clone();
    bad[1] = s.num_blocks as i32; // second block of sequence 0 (70 tokens use two)
    assert!(matches!(
        expect_err(run(&s, &bad, &l), "block_table[0, 1]"),
        Error::IndexOutOfRange { .. }
    ));
    let mut bad = t.clone();
    bad[mb] = -1;
    expect_err(run(&s, &bad, &l), "block_table[1, 0] = -1");

    let too_long = [(mb * BLOCK_SIZE + 1) as i32, 10];
    expect_err(run(&s, &t, &too_long), "more than max_blocks");
    expect_err(
        run(&s, &t, &[70, 1]),
        "sequence 1 has cache_seqlens 1, fewer than its 2 new tokens",
    );
    expect_err(run(&s, &t, &[70, -3]), "cache_seqlens -3");

    for q_len in [0, MAX_CHUNK_LEN + 1] {
        let shape = PagedShape { q_len, ..s };
        expect_err(run(&shape, &t, &l), "S_q");
    }
    expect_err(run(&s, &t[1..], &l), "block_table has");
    expect_err(run(&s, &t, &l[..1]), "cache_seqlens has");
    expect_err(
        paged_decode(&s, 1, &p.q[1..], &p.cache, &t, &l, 0.1),
        "q has",
    );
    expect_err(
        paged_decode(&s, 1, &p.q, &p.cache[..KV_DIM], &t, &l, 0.1),
        "cache has",
    );
    expect_err(
        paged_decode(&s, 0, &p.q, &p.cache, &t, &l, 0.1),
        "heads is 0",
    );
    let short = vec![0u8; 10];
    expect_err(
        paged_decode_fp8(&s, 1, &p.q, &short, &t, &l, 0.1),
        "FP8 cache bytes",
    );
}

#[test]
fn append_errors_leave_the_cache_unchanged() {
    let p = random_paged(2, &[70], 1, 1);
    let kv: Vec<bf16> = vec![bf16::ONE; KV_DIM];
    let w: Vec<bf16> = vec![bf16::ONE; KV_LORA_RANK];
    let rope = v3_rope();
    let mut cache = p.cache.clone();
    let mut append =
        |table: &[i32], lens: &[i32], kv: &[bf16], rope: &RopeParams, max_pos: usize| {
            append_kv(
                &p.shape, &mut cache, kv, table, lens, &w, 1e-6, rope, max_pos,
            )
        };
    let mut bad = p.table.clone();
    bad[1] = -5;
    expect_err(
        append(&bad, &p.seqlens, &kv, &rope, 4096),
        "block_table[0, 1] = -5",
    );
    expect_err(
        append(&p.table, &[0], &kv, &rope, 4096),
        "fewer than its 1 new tokens",
    );
    expect_err(
        append(&p.table, &p.seqlens, &kv[1..], &rope, 4096),
        "kv has",
    );
    expect_err(append(&p.table, &p.seqlens, &kv, &rope, 69), "position 69");
    let narrow = RopeParams::new(10000.0, 32, None).unwrap();
    expect_err(
        append(&p.table, &p.seqlens, &kv, &narrow, 4096),
        "rope_dim is 32",
    );
    assert_eq!(cache, p.cache);
}

#[test]
fn reference_shape_errors() {
    let dims = MlaDims {
        heads: 2,
        kv_lora_rank: 32,
        qk_nope_head_dim: 4,
        qk_rope_head_dim: 8,
        v_head_dim: 4,
    };
    let x = random_inputs(1, dims, 3);
    expect_err(
        naive_attention(
            &dims,
            &x.c_kv[1..],
            &x.k_pe,
            &x.q_nope,
            &x.q_pe,
            &x.kv_b,
            1.0,
        ),
        "c_kv has",
    );
    expect_err(
        naive_attention(
            &dims,
            &x.c_kv,
            &x.k_pe,
            &x.q_nope,
            &x.q_pe,
            &x.kv_b[1..],
            1.0,
        ),
        "kv_b_proj has",
    );
    expect_err(
        naive_attention(
            &dims,
            &x.c_kv,
            &x.k_pe,
            &x.q_nope[2..],
            &x.q_pe,
            &x.kv_b,
            1.0,
        ),
        "q_nope has",
    );
    let zero = MlaDims {
        v_head_dim: 0,
        ..dims
    };
    expect_err(absorb_output(&zero, &[], &[]), "v_head_dim is 0");
    expect_err(absorb_query(&dims, &x.q_nope[1..], &x.kv_b), "q_nope has");
    expect_err(decode_attention(&dims, &[0.0; 80], &[], 1.0), "empty");
    expect_err(
        decode_attention(&dims, &[0.0; 79], &[0.0; 40], 1.0),
        "q has",
    );
    expect_err(encode_entry(&[0.0f32; 575]), "entry has");
    expect_err(decode_entry(&[0u8; 655]), "entry bytes has");
    expect_err(encode_cache(&[0.0f32; 577]), "not a multiple of 576");
    expect_err(decode_cache_f32(&[0u8; 657]), "not a multiple of 656");
}
