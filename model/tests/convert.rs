//! `dsv3 convert` and the fp8 precision's load-time quantization.
//!
//! - Round trips FP8 -> BF16 -> FP8, checked weight by weight against the statement of
//!   `model::convert` (codes always come back; f32 scales move once to the scale of their BF16
//!   block maximum and are then fixed; UE8M0 scales lose nothing).
//! - Converted checkpoints load and compute what the original computes, within the rounding the
//!   conversion implies (the bound is derived at [`bf16_logit_bound`]); where the conversion is
//!   lossless, bit for bit.
//! - Quantizing a BF16 / F32 checkpoint at load (`--precision fp8`) gives the bits of converting it
//!   offline with `--to fp8`.
//! - The index and shards are consistent, shards are bounded, and bad input is an error naming
//!   the file, tensor or key.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::goldens::{fixture, load_goldens};
use common::tiny::tiny_dir;
use common::{argmax, rel_frobenius, TempDir};
use half::bf16;
use kernels::dtype::e4m3_decode_table;
use kernels::DType;
use model::checkpoint::{quantize_fp8_blocks_with, write_checkpoint, TensorData, TensorRole};
use model::convert::{convert, ConvertOptions, Summary, Target};
use model::cpu::linear::Linear;
use model::cpu::weights::linear;
use model::cpu::{CpuModel, Precision};
use model::engine::{CpuBackend, Engine};
use model::{Checkpoint, Fp8Weight, ModelError};
use serde_json::Value;

const BLOCK: usize = 128;

/// Converts `src` into `<tmp>/out` with everything in one shard unless `shard_bytes` says.
fn convert_to(
    src: &Path,
    to: Target,
    ue8m0: Option<bool>,
    shard_bytes: usize,
) -> (TempDir, Summary) {
    let tmp = TempDir::new(&format!("convert-{}", to.as_str()));
    let opts = ConvertOptions {
        to,
        ue8m0,
        shard_bytes,
    };
    let summary = convert(src, &tmp.file("out"), &opts, &mut |_| {}).unwrap();
    (tmp, summary)
}

fn out(tmp: &TempDir) -> PathBuf {
    tmp.file("out")
}

const ONE_SHARD: usize = 1 << 40;

/// Names of the FP8 weights of a checkpoint (those with a scale).
fn fp8_weights(ckpt: &Checkpoint) -> Vec<String> {
    ckpt.specs()
        .iter()
        .filter(|s| s.role == TensorRole::WeightScale)
        .map(|s| s.name.trim_end_matches("_scale_inv").to_string())
        .collect()
}

/// The largest |value| of the e4m3 codes of block (rb, cb).
fn block_max_code(w: &Fp8Weight, rb: usize, cb: usize) -> f32 {
    let table = e4m3_decode_table();
    let mut m = 0f32;
    for r in rb * BLOCK..((rb + 1) * BLOCK).min(w.n) {
        for c in cb * BLOCK..((cb + 1) * BLOCK).min(w.k) {
            m = m.max(table[usize::from(w.q[r * w.k + c].0)].abs());
        }
    }
    m
}

fn engine(dir: &Path, precision: Precision) -> Engine<CpuBackend> {
    let ckpt = Checkpoint::open(dir).unwrap();
    let model = CpuModel::load(&ckpt, precision).unwrap();
    Engine::new(CpuBackend::new(model, 8).unwrap()).unwrap()
}

/// FP8 (f32 scales) -> BF16 -> FP8 -> BF16 -> FP8 on the built-in tiny model, whose weights were
/// quantized from f32 values: the BF16 values are `bf16(q * s)`; the codes come back in every
/// block; each scale comes back as `fl(bf16(448 s) / 448)` (the block's largest code is 448, so
/// its BF16 maximum is `bf16(448 s)`), within 2^-8 of `s`; and the second round trip returns the
/// first one's bytes.
#[test]
fn fp8_bf16_fp8_round_trip_keeps_codes_and_settles_scales_after_one_round() {
    let src = tiny_dir().path();
    let (a, sa) = convert_to(src, Target::Bf16, None, ONE_SHARD);
    let (b, _) = convert_to(&out(&a), Target::Fp8, None, ONE_SHARD);
    let (c, _) = convert_to(&out(&b), Target::Bf16, None, ONE_SHARD);
    let (d, _) = convert_to(&out(&c), Target::Fp8, None, ONE_SHARD);
    assert!(sa.scales_dropped > 0 && sa.note.is_none());
    let (orig, a, b, d) = [src.to_path_buf(), out(&a), out(&b), out(&d)]
        .map(|p| Checkpoint::open(p).unwrap())
        .into();
    assert!(a.config().quantization.is_none() && b.config().quantization.is_some());
    let table = e4m3_decode_table();
    let (mut blocks, mut unchanged) = (0, 0);
    for name in fp8_weights(&orig) {
        let w0 = orig.fp8_weight(&name).unwrap();
        // To BF16: code times scale in f32, rounded once.
        let values = a.bf16(&name).unwrap();
        for (i, v) in values.iter().enumerate() {
            let want =
                bf16::from_f32(table[usize::from(w0.q[i].0)] * w0.scale_at(i / w0.k, i % w0.k));
            assert_eq!(v.to_bits(), want.to_bits(), "{name}[{i}]");
        }
        // Back to FP8.
        let w2 = b.fp8_weight(&name).unwrap();
        assert_eq!(w2.q, w0.q, "{name}: codes");
        let kb = w0.k.div_ceil(BLOCK);
        for (j, (&s2, &s0)) in w2.scales.iter().zip(&w0.scales).enumerate() {
            assert_eq!(
                block_max_code(&w0, j / kb, j % kb),
                448.0,
                "{name} block {j}"
            );
            let want = bf16::from_f32(448.0 * s0).to_f32() / 448.0;
            assert_eq!(s2, want, "{name} block {j}");
            assert!(
                (s2 - s0).abs() <= s0 / 256.0,
                "{name} block {j}: {s0} -> {s2}"
            );
            blocks += 1;
            unchanged += usize::from(s2 == s0);
        }
        // A second round trip changes nothing.
        assert_eq!(
            d.fp8_weight(&name).unwrap(),
            w2,
            "{name}: second round trip"
        );
    }
    eprintln!("tiny round trip: {blocks} blocks, codes all back, {unchanged} scales unchanged");
    // The non-FP8 tensors are copied both ways.
    for s in orig
        .specs()
        .iter()
        .filter(|s| s.dtype != DType::E4m3 && s.role != TensorRole::WeightScale)
    {
        assert_eq!(
            d.bytes(&s.name).unwrap(),
            orig.bytes(&s.name).unwrap(),
            "{}",
            s.name
        );
    }
}

/// DeepSeek-V3.1-style power-of-two scales: FP8 -> BF16 is exact (q s has at most 4 significant
/// bits), so the exact-precision logits are the same bits; back to FP8 with UE8M0 scales every
/// dequantized value is the same bits, and codes and scales are the originals except in blocks
/// whose largest |code| is 224, which come back with half the scale and codes of twice the value.
/// fp8-precision logits are then the same bits too (the GEMM scales each block's f32 partial sum
/// by the two scales, and doubling codes while halving a scale is exact).
#[test]
fn ue8m0_round_trip_is_lossless() {
    let src = fixture("hf-v31-tiny");
    let (a, _) = convert_to(&src, Target::Bf16, None, ONE_SHARD);
    let (b, _) = convert_to(&out(&a), Target::Fp8, Some(true), ONE_SHARD);
    let (orig, a_ck, b_ck) = [src.clone(), out(&a), out(&b)]
        .map(|p| Checkpoint::open(p).unwrap())
        .into();
    assert!(b_ck.config().ue8m0_scales());
    let table = e4m3_decode_table();
    let (mut same, mut halved) = (0, 0);
    for name in fp8_weights(&orig) {
        let w0 = orig.fp8_weight(&name).unwrap();
        let exact = w0.dequantize();
        let values: Vec<f32> = a_ck
            .bf16(&name)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        assert_eq!(values, exact, "{name}: BF16 holds q * 2^e exactly");
        let w2 = b_ck.fp8_weight(&name).unwrap();
        assert_eq!(
            w2.dequantize(),
            exact,
            "{name}: same values after the round trip"
        );
        let kb = w0.k.div_ceil(BLOCK);
        for (j, (&s2, &s0)) in w2.scales.iter().zip(&w0.scales).enumerate() {
            let m = block_max_code(&w0, j / kb, j % kb);
            assert!(
                (224.0..=448.0).contains(&m),
                "{name} block {j}: largest code {m}"
            );
            if m > 224.0 {
                assert_eq!(s2, s0, "{name} block {j}");
                same += 1;
            } else {
                assert_eq!(s2, s0 / 2.0, "{name} block {j}");
                halved += 1;
            }
        }
        for (i, (q2, q0)) in w2.q.iter().zip(&w0.q).enumerate() {
            let ratio = w0.scale_at(i / w0.k, i % w0.k) / w2.scale_at(i / w0.k, i % w0.k);
            assert_eq!(
                table[usize::from(q2.0)],
                ratio * table[usize::from(q0.0)],
                "{name}[{i}]"
            );
        }
    }
    eprintln!(
        "v3.1 round trip: {same} blocks identical, {halved} with largest code 224 (scale halved)"
    );

    let ids = &load_goldens(&src).prompts[1].ids;
    let exact = |dir: &Path| engine(dir, Precision::Exact).logits(ids).unwrap();
    assert_eq!(exact(&out(&a)), exact(&src), "FP8 -> BF16 lost nothing");
    let fp8 = |dir: &Path| engine(dir, Precision::Fp8).logits(ids).unwrap();
    assert_eq!(
        fp8(&out(&b)),
        fp8(&src),
        "UE8M0 round trip: same fp8 logits"
    );
}

/// The UE8M0 exception, built on purpose (the V3.1 fixture has no such block): a block whose
/// maximum is 225 times its power-of-two scale s stores 224 as its largest code; its BF16 values
/// then peak at 224 s, whose UE8M0 scale is s / 2 exactly, so the round trip returns scale s / 2
/// and codes of twice the value: the same dequantized values, other bytes.
#[test]
fn ue8m0_block_with_largest_code_224_comes_back_with_half_the_scale() {
    let s = 2f32.powi(-10);
    let mut w = vec![0.001f32; BLOCK * BLOCK];
    w[77] = 225.0 * s;
    let q = quantize_fp8_blocks_with(&w, BLOCK, BLOCK, true);
    assert_eq!((q.scales[0], block_max_code(&q, 0, 0)), (s, 224.0));
    let bf16_values: Vec<f32> = q
        .dequantize()
        .iter()
        .map(|&v| bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(bf16_values, q.dequantize(), "exact in BF16");
    let back = quantize_fp8_blocks_with(&bf16_values, BLOCK, BLOCK, true);
    assert_eq!(back.scales[0], s / 2.0);
    assert_eq!(back.dequantize(), q.dequantize());
    assert_ne!(back.q, q.q);
}

/// First-order bound on the relative (Frobenius) error of one position's logits when `products`
/// of the matrix products a token goes through use weights rounded to BF16 (nearest even) and
/// nothing else changes (no routing decision flips).
///
/// A weight rounded to BF16 (8 significant bits) moves by a relative delta of at most
/// u = 2^-8; for values spread over their binade (log-uniform mantissa m) the rounding error is
/// uniform within half an ulp, 2^-8 * 2^e, so its relative RMS is
/// sigma = 2^-7 / sqrt(12) * sqrt(E[1 / m^2]) = 2^-7 / sqrt(12) * sqrt(3 / (8 ln 2)) = 1.66e-3.
/// The deltas of different weights are independent and of mean zero, so the error of a product
/// y = W x, sum_j delta_ij W_ij x_j, has an RMS of sigma * sqrt(sum_j W_ij^2 x_j^2), which is
/// sigma * |y| for a y that is not a cancellation (a random-like W). Each product's error reaches
/// the residual stream at most at the size of that product's contribution, and the products'
/// errors are independent, so in quadrature the logits move by at most about
/// sigma * sqrt(products) relative (the final RMSNorm and lm_head are linear in the direction of
/// a small change). Twice that is the bound: the estimate is an RMS over a position's logits,
/// and later layers are close to, not exactly, the identity on a small change.
fn bf16_logit_bound(products: usize) -> f64 {
    let sigma = 2f64.powi(-7) / 12f64.sqrt() * (3.0 / (8.0 * 2f64.ln())).sqrt();
    2.0 * sigma * (products as f64).sqrt()
}

/// Checks every position of every golden prompt of `name` converted to BF16 against the original
/// (exact precision): relative error within [`bf16_logit_bound`] (which also rules out an argmax
/// change wherever the top-2 gap exceeds sqrt(2) times the bound times the logits' norm).
fn check_bf16_logits(name: &str, products: usize) {
    let src = fixture(name);
    let (tmp, _) = convert_to(&src, Target::Bf16, None, ONE_SHARD);
    let bound = bf16_logit_bound(products);
    let (mut a, mut b) = (
        engine(&src, Precision::Exact),
        engine(&out(&tmp), Precision::Exact),
    );
    let vocab = a.config().vocab_size;
    let (mut worst, mut rows, mut agree) = (0f64, 0, 0);
    for (p, g) in load_goldens(&src).prompts.iter().enumerate() {
        let (x, y) = (a.logits(&g.ids).unwrap(), b.logits(&g.ids).unwrap());
        for (pos, (x, y)) in x.chunks(vocab).zip(y.chunks(vocab)).enumerate() {
            let rel = rel_frobenius(y, x);
            worst = worst.max(rel);
            assert!(
                rel <= bound,
                "{name} prompt {p} position {pos}: {rel:.3e} > {bound:.3e}"
            );
            rows += 1;
            agree += usize::from(argmax(x) == argmax(y));
        }
    }
    eprintln!(
        "{name} -> bf16: worst relative logit error {worst:.2e} (bound {bound:.2e}), argmax \
         {agree}/{rows}"
    );
}

/// hf-v3-tiny (FP8, f32 scales) to BF16: only the FP8 weights are rounded. Per layer a token goes
/// through q_a, q_b, kv_a, kv_b (twice: W_UK absorbed into the query, W_UV applied to the
/// attention output), o_proj and an MLP's gate, up and down (a weighted sum of experts carries
/// their errors at the same relative size): 9 products, 3 layers. Bound 1.7e-2; measured 3.1e-3.
/// hf-v3-f32-tiny (every tensor F32) to BF16: the embedding, the four norms of each layer, the
/// router and lm_head are rounded too: 2 x (9 + 4 + 1) + 3 products. Bound 1.8e-2; measured
/// 5.6e-3. Routing margins (fixtures README: 0.0031 and 0.00095) are wider than the router-score
/// changes this rounding makes, so no routing decision flips (a flip would exceed the bound at
/// its position; hf-v2-lite-tiny and hf-k2-tiny, with margins of 0.0015 and 0.00005, do flip one
/// position each, which is why they are not used here). hf-v31-tiny (UE8M0) is exact:
/// [`ue8m0_round_trip_is_lossless`].
#[test]
fn bf16_conversion_logits_match_within_bf16_rounding() {
    check_bf16_logits("hf-v3-tiny", 9 * 3);
    check_bf16_logits("hf-v3-f32-tiny", 2 * (9 + 4 + 1) + 3);
}

/// To FP8, every weight the released checkpoints store in FP8 is quantized by the released rule:
/// each dequantized value within e4m3 rounding of the original (relative 2^-4, or half the
/// subnormal step 2^-9 times its block scale), each scale max(amax, 1e-4) / 448 of its block;
/// everything else copied (F32 stays F32). Edge blocks are partial (hf-moonlight-tiny's experts
/// are 16 wide).
#[test]
fn fp8_conversion_quantizes_the_released_set_by_the_released_rule() {
    for name in ["hf-moonlight-tiny", "hf-v3-f32-tiny"] {
        let src = fixture(name);
        let (tmp, summary) = convert_to(&src, Target::Fp8, None, ONE_SHARD);
        assert!(summary.note.is_none(), "{name}");
        let (orig, conv) = (
            Checkpoint::open(&src).unwrap(),
            Checkpoint::open(out(&tmp)).unwrap(),
        );
        let q = conv
            .config()
            .quantization
            .as_ref()
            .expect("quantization_config");
        assert!(!q.ue8m0(), "{name}");
        let quantized: HashSet<String> = fp8_weights(&conv).into_iter().collect();
        for spec in orig.specs() {
            let n = &spec.name;
            assert_eq!(
                quantized.contains(n),
                orig.is_fp8_in_release(n),
                "{name}: {n}"
            );
            if !quantized.contains(n) {
                assert_eq!(
                    conv.bytes(n).unwrap(),
                    orig.bytes(n).unwrap(),
                    "{name}: {n} copied"
                );
                assert_eq!(conv.info(n).unwrap().dtype, orig.info(n).unwrap().dtype);
                continue;
            }
            let w = orig.to_f32(n).unwrap();
            let fp8 = conv.fp8_weight(n).unwrap();
            let kb = fp8.k.div_ceil(BLOCK);
            for (j, &s) in fp8.scales.iter().enumerate() {
                let (rb, cb) = (j / kb, j % kb);
                let mut amax = 0f32;
                for r in rb * BLOCK..((rb + 1) * BLOCK).min(fp8.n) {
                    for c in cb * BLOCK..((cb + 1) * BLOCK).min(fp8.k) {
                        amax = amax.max(w[r * fp8.k + c].abs());
                    }
                }
                assert_eq!(s, amax.max(1e-4) / 448.0, "{name}: {n} block {j}");
            }
            for (i, (a, b)) in w.iter().zip(fp8.dequantize()).enumerate() {
                let floor = fp8.scale_at(i / fp8.k, i % fp8.k) / 1024.0;
                assert!(
                    (a - b).abs() <= a.abs() / 16.0 + floor,
                    "{name}: {n}[{i}] {a} -> {b}"
                );
            }
        }
        // It loads and computes (exact precision: its K = 16 / 64 are too narrow for fp8).
        let logits = engine(&out(&tmp), Precision::Exact)
            .logits(&[5, 6, 7])
            .unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "{name}");
    }
}

/// The tiny model's weights as an F32 checkpoint without `quantization_config`: the FP8 weights
/// dequantized (f32 products, most not BF16 values), everything else widened.
fn f32_tiny(tag: &str) -> TempDir {
    let ckpt = Checkpoint::open(tiny_dir().path()).unwrap();
    let mut cfg = ckpt.config().clone();
    cfg.quantization = None;
    let tensors: Vec<TensorData> = ckpt
        .specs()
        .iter()
        .filter(|s| s.role != TensorRole::WeightScale)
        .map(|s| {
            let values = match s.dtype {
                DType::E4m3 => ckpt.fp8_weight(&s.name).unwrap().dequantize(),
                _ => ckpt.to_f32(&s.name).unwrap(),
            };
            TensorData::f32(s.name.clone(), s.shape.clone(), &values)
        })
        .collect();
    let dir = TempDir::new(tag);
    write_checkpoint(dir.path(), &cfg, &tensors, 1).unwrap();
    dir
}

/// `--precision fp8` on an unquantized checkpoint quantizes at load exactly as `dsv3 convert
/// --to fp8` does offline: the same codes and scales in every FP8 layer, and the same logits and
/// MTP logits bit for bit, for a BF16 checkpoint (the tiny model converted to BF16) and an F32
/// one. Exact precision keeps the stored values (the BF16 checkpoint's exact logits are those of
/// its own weights, not of quantized ones).
#[test]
fn load_time_quantization_equals_offline_conversion() {
    let (bf16_tmp, _) = convert_to(tiny_dir().path(), Target::Bf16, None, ONE_SHARD);
    let f32_tmp = f32_tiny("convert-f32-tiny");
    let ids = [5u32, 9, 200, 31, 7, 88, 140];
    for (tag, src) in [
        ("bf16", out(&bf16_tmp)),
        ("f32", f32_tmp.path().to_path_buf()),
    ] {
        let (conv_tmp, _) = convert_to(&src, Target::Fp8, None, ONE_SHARD);
        let (orig, conv) = (
            Checkpoint::open(&src).unwrap(),
            Checkpoint::open(out(&conv_tmp)).unwrap(),
        );
        assert!(orig.config().quantization.is_none());
        let names = fp8_weights(&conv);
        assert!(!names.is_empty());
        for name in &names {
            let Linear::Fp8 { w, .. } = linear(&orig, name, Precision::Fp8).unwrap() else {
                panic!("{tag}: {name} not quantized at load");
            };
            let stored = conv.fp8_weight(name).unwrap();
            assert_eq!(
                (&w.q, &w.scales),
                (&stored.q, &stored.scales),
                "{tag}: {name}"
            );
            assert!(matches!(
                linear(&orig, name, Precision::Exact).unwrap(),
                Linear::F32 { .. }
            ));
        }
        // Never quantized, whatever the precision: eh_proj goes through the same loader.
        let eh = "model.layers.4.eh_proj.weight";
        assert!(
            matches!(
                linear(&orig, eh, Precision::Fp8).unwrap(),
                Linear::F32 { .. }
            ),
            "{tag}"
        );

        let (mut a, mut b) = (
            engine(&src, Precision::Fp8),
            engine(&out(&conv_tmp), Precision::Fp8),
        );
        assert_eq!(
            a.logits(&ids).unwrap(),
            b.logits(&ids).unwrap(),
            "{tag}: fp8 logits"
        );
        assert_eq!(
            a.logits_with_mtp(&ids).unwrap(),
            b.logits_with_mtp(&ids).unwrap(),
            "{tag}: fp8 MTP logits"
        );
        let exact = engine(&src, Precision::Exact).logits(&ids).unwrap();
        assert_ne!(
            exact,
            b.logits(&ids).unwrap(),
            "{tag}: exact keeps the unquantized values"
        );
    }
}

/// A BF16 checkpoint whose weights are too narrow for the FP8 GEMM (K a multiple of 128, as in
/// every real shape) is refused in fp8 precision naming the tensor, as the same weights stored in
/// FP8 are: hf-moonlight-tiny's experts are 16 wide.
#[test]
fn fp8_precision_refuses_narrow_bf16_weights_by_name() {
    let src = fixture("hf-moonlight-tiny");
    let (tmp, _) = convert_to(&src, Target::Fp8, None, ONE_SHARD);
    for dir in [src, out(&tmp)] {
        let ckpt = Checkpoint::open(&dir).unwrap();
        let e = CpuModel::load(&ckpt, Precision::Fp8).expect_err("K = 16");
        let text = e.to_string();
        assert!(
            text.contains(".weight") && text.contains("fp8"),
            "{}: {text}",
            dir.display()
        );
    }
}

/// Shards bounded by `--shard-size-gb`, a weight and its scale in one shard, every tensor in the
/// index once and in the file the index names, `total_size` the sum of the tensor bytes, tensors
/// at offsets aligned to their element size (FP8 scales excepted), config and tokenizer files
/// written; the multi-shard checkpoint computes what the single-shard one does, bit for bit.
#[test]
fn index_and_shards_are_consistent() {
    let src = tiny_dir().path();
    let limit = 300_000;
    let (tmp, summary) = convert_to(src, Target::Fp8, None, limit);
    let (one, _) = convert_to(src, Target::Fp8, None, ONE_SHARD);
    let dir = out(&tmp);
    assert!(summary.shards.len() > 5, "{} shards", summary.shards.len());

    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map: BTreeMap<String, String> =
        serde_json::from_value(index["weight_map"].clone()).unwrap();
    let mut seen = BTreeMap::new();
    let mut total = 0u64;
    for (i, path) in summary.shards.iter().enumerate() {
        let file = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            file,
            format!(
                "model-{:05}-of-{:05}.safetensors",
                i + 1,
                summary.shards.len()
            )
        );
        let bytes = std::fs::read(path).unwrap();
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut shard_bytes = 0;
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            shard_bytes += e - s;
            let elem = (e - s) / info.shape.iter().product::<usize>().max(1);
            if e > s && !name.ends_with("_scale_inv") {
                assert_eq!((8 + header_len + s) % elem, 0, "{name} misaligned");
            }
            assert_eq!(map.get(&name).map(String::as_str), Some(file), "{name}");
            assert!(
                seen.insert(name.clone(), file.to_string()).is_none(),
                "{name} twice"
            );
        }
        let units_alone = meta.tensors().len() <= 2;
        assert!(
            shard_bytes <= limit || units_alone,
            "{file}: {shard_bytes} bytes"
        );
        total += shard_bytes as u64;
    }
    assert_eq!(
        seen, map,
        "every tensor in the index is in a shard and the other way round"
    );
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    assert_eq!(summary.bytes as u64, total);
    for (name, file) in &map {
        if let Some(weight) = name.strip_suffix("_scale_inv") {
            assert_eq!(map[weight], *file, "{name} apart from its weight");
        }
    }
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(ckpt.specs().len(), map.len());
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    let ids = [1u32, 2, 3, 250, 17];
    assert_eq!(
        engine(&dir, Precision::Fp8).logits(&ids).unwrap(),
        engine(&out(&one), Precision::Fp8).logits(&ids).unwrap()
    );
}

/// The configs: to BF16 `quantization_config` goes and the dtype says bfloat16 (every other key
/// kept); to FP8 the released block (with `scale_fmt` when asked); FP8 to FP8 and BF16 to BF16
/// re-shard, copy every tensor unchanged and say so.
#[test]
fn configs_and_reshards() {
    let read = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    };
    let src = fixture("hf-v31-tiny");
    let (a, _) = convert_to(&src, Target::Bf16, None, ONE_SHARD);
    let (orig, bf) = (read(&src), read(&out(&a)));
    assert!(bf.get("quantization_config").is_none());
    assert_eq!(bf["torch_dtype"], "bfloat16");
    for (k, v) in orig.as_object().unwrap() {
        if k != "quantization_config" {
            assert_eq!(&bf[k], v, "{k}");
        }
    }
    let (b, _) = convert_to(&out(&a), Target::Fp8, Some(false), ONE_SHARD);
    assert_eq!(
        read(&out(&b))["quantization_config"],
        serde_json::json!({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                           "weight_block_size": [128, 128]})
    );
    // transformers-5 spelling: `dtype` rewritten, no `torch_dtype` added.
    let (c, _) = convert_to(&fixture("hf-v3-f32-tiny"), Target::Bf16, None, ONE_SHARD);
    let cfg = read(&out(&c));
    assert_eq!(cfg["dtype"], "bfloat16");
    assert!(cfg.get("torch_dtype").is_none());
    // The router bias stays F32, everything else is BF16.
    let ck = Checkpoint::open(out(&c)).unwrap();
    for s in ck.specs() {
        let want = if s.role == TensorRole::ScoreBias {
            DType::F32
        } else {
            DType::Bf16
        };
        assert_eq!(ck.info(&s.name).unwrap().dtype, want, "{}", s.name);
    }

    for (dir, to) in [(src.clone(), Target::Fp8), (out(&a), Target::Bf16)] {
        let (r, summary) = convert_to(&dir, to, None, 1_000_000);
        let note = summary.note.expect("a re-shard says so");
        assert!(
            note.contains("already") && note.contains("unchanged"),
            "{note}"
        );
        assert_eq!(read(&out(&r)), read(&dir));
        let (x, y) = (
            Checkpoint::open(&dir).unwrap(),
            Checkpoint::open(out(&r)).unwrap(),
        );
        for s in x.specs() {
            assert_eq!(
                x.bytes(&s.name).unwrap(),
                y.bytes(&s.name).unwrap(),
                "{}",
                s.name
            );
            assert_eq!(
                x.info(&s.name).unwrap().dtype,
                y.info(&s.name).unwrap().dtype
            );
        }
    }
}

/// Bad input is an error naming the file, tensor or key, and nothing is left that loads.
#[test]
fn bad_input_is_an_error_naming_what() {
    let src = tiny_dir().path();
    let opts = |to, ue8m0, shard_bytes| ConvertOptions {
        to,
        ue8m0,
        shard_bytes,
    };
    let tmp = TempDir::new("convert-bad");

    // A non-empty output directory.
    tmp.write("keep.txt", "x");
    let e = convert(
        src,
        tmp.path(),
        &opts(Target::Bf16, None, ONE_SHARD),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, ModelError::Io { path, .. } if path == tmp.path()),
        "{e}"
    );
    assert!(e.to_string().contains("keep.txt"), "{e}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "nothing written"
    );

    // Options that contradict each other.
    let fresh = tmp.file("fresh");
    for o in [
        opts(Target::Bf16, Some(true), ONE_SHARD),
        opts(Target::Fp8, None, 0),
    ] {
        let e = convert(src, &fresh, &o, &mut |_| {}).unwrap_err();
        assert!(matches!(e, ModelError::Request { .. }), "{e}");
    }
    // An FP8 checkpoint asked for the other scale format.
    let e = convert(
        src,
        &fresh,
        &opts(Target::Fp8, Some(true), ONE_SHARD),
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(e.config_key(), Some("quantization_config.scale_fmt"), "{e}");
    assert!(!fresh.exists(), "refused before writing");

    // A NaN in a weight: refused naming the tensor and the element.
    let f32_dir = f32_tiny("convert-nan");
    let ckpt = Checkpoint::open(f32_dir.path()).unwrap();
    let victim = "model.layers.1.mlp.experts.3.up_proj.weight";
    let mut tensors: Vec<TensorData> = ckpt
        .specs()
        .iter()
        .map(|s| {
            TensorData::f32(
                s.name.clone(),
                s.shape.clone(),
                &ckpt.to_f32(&s.name).unwrap(),
            )
        })
        .collect();
    let t = tensors.iter_mut().find(|t| t.name == victim).unwrap();
    t.data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad = TempDir::new("convert-nan-src");
    write_checkpoint(bad.path(), ckpt.config(), &tensors, 1).unwrap();
    let dst = tmp.file("nan");
    let e = convert(
        bad.path(),
        &dst,
        &opts(Target::Fp8, None, ONE_SHARD),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, ModelError::NonFinite { name, index: 10 } if name == victim),
        "{e}"
    );
    assert!(
        !dst.join("model.safetensors.index.json").exists(),
        "no index: nothing loads"
    );
    assert!(Checkpoint::open(&dst).is_err());

    // A missing input names the file.
    let e = convert(
        &tmp.file("nowhere"),
        &tmp.file("o"),
        &opts(Target::Bf16, None, ONE_SHARD),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
}

/// The command line: progress on stderr, a summary on stdout, shards by `--shard-size-gb`, and an
/// error (exit status 1) naming the output directory when it is not empty.
#[test]
fn cli_convert() {
    let tmp = TempDir::new("convert-cli");
    let dir = tmp.file("bf16");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dsv3"))
            .args(args)
            .output()
            .unwrap()
    };
    let src = tiny_dir().path().to_str().unwrap();
    let dst = dir.to_str().unwrap();
    let o = run(&[
        "convert",
        "--model",
        src,
        "--out",
        dst,
        "--to",
        "bf16",
        "--shard-size-gb",
        "0.002",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("dequantized to BF16") && stdout.contains("tokenizer.json"),
        "{stdout}"
    );
    assert!(stderr.contains("convert: shard"), "{stderr}");
    let shards = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert!(shards > 5, "{shards} shards");
    Checkpoint::open(&dir).unwrap();

    let o = run(&["convert", "--model", src, "--out", dst, "--to", "fp8"]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(dst) && stderr.contains("not empty"),
        "{stderr}"
    );
    let o = run(&[
        "convert",
        "--model",
        src,
        "--out",
        &format!("{dst}-x"),
        "--to",
        "bf16",
        "--scale-fmt",
        "ue8m0",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--scale-fmt"));
}
