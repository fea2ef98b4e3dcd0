//! `dsv3 bench --mtp-cost` and the step-cost measurement behind it, on the built-in tiny model
//! (CPU backend): the JSON and the report files have their fields, the times are positive, the
//! projections follow `E * T_decode / (T_verify + D * T_draft)`, the KV cache is rolled back
//! after every step, and bad options are errors that name the option. The CUDA test runs the
//! same measurement on the CUDA backend, or prints `skipped: no CUDA device`.

mod common;

use std::process::{Command, Output};

use common::tiny::engine;
use common::TempDir;
use model::cpu::Precision;
use model::mtp_cost::{
    expected_tokens, kv_blocks_needed, measure_step_costs, project, ContextFill, StepCostOptions,
};
use serde_json::Value;

fn dsv3(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsv3"))
        .args(args)
        .output()
        .expect("dsv3 runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ms(v: &Value) -> f64 {
    v["median_ms"].as_f64().expect("median_ms is a number")
}

#[test]
fn projection_matches_known_numbers() {
    assert!((expected_tokens(0.85, 1) - 1.85).abs() < 1e-12);
    assert!((expected_tokens(0.9, 2) - 2.71).abs() < 1e-12);
    // Verify costs 1.02x decode, the draft 0.05x: 1.85 / 1.07 = 1.729x.
    let p = project(10.0, 10.2, 0.5, 0.85, 1);
    assert!((p.step_ms - 10.7).abs() < 1e-12);
    assert!((p.speedup - 1.85 / 1.07).abs() < 1e-12);
    // Two drafts at 90%: 2.71 tokens per 10 + 2 * 1 ms against 10 ms per token.
    let p = project(10.0, 10.0, 1.0, 0.9, 2);
    assert!((p.speedup - 2.71 * 10.0 / 12.0).abs() < 1e-12);
}

/// Checks one batch's JSON: positive times, ratios and projections recomputed from the medians.
fn check_batch(b: &Value) {
    let (dec, v2, v3, draft) = (
        ms(&b["decode"]),
        ms(&b["verify_s2"]),
        ms(&b["verify_s3"]),
        ms(&b["draft"]),
    );
    for t in [dec, v2, v3, draft] {
        assert!(t > 0.0, "non-positive time in {b}");
    }
    let ratio = b["ratio_verify2_over_decode"].as_f64().unwrap();
    assert!((ratio - v2 / dec).abs() < 1e-9 * ratio);
    let ratio = b["ratio_verify3_over_decode"].as_f64().unwrap();
    assert!((ratio - v3 / dec).abs() < 1e-9 * ratio);
    let projections = b["projections"].as_array().unwrap();
    assert_eq!(projections.len(), 4, "2 acceptance rates x 2 draft counts");
    for p in projections {
        let a = p["acceptance"].as_f64().unwrap();
        let d = p["drafts"].as_u64().unwrap() as usize;
        let verify = if d == 1 { v2 } else { v3 };
        let want = expected_tokens(a, d) * dec / (verify + d as f64 * draft);
        let got = p["speedup"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{p}: want {want}");
    }
}

#[test]
fn mtp_cost_on_the_builtin_model_reports_every_field() {
    let dir = TempDir::new("mtp-cost");
    let out_dir = dir.path().join("report");
    let out_dir_s = out_dir.to_str().unwrap();
    let out = dsv3(&[
        "bench",
        "--mtp-cost",
        "--batches",
        "1,2",
        "--context",
        "8",
        "--steps",
        "2",
        "--json",
        "--out",
        out_dir_s,
    ]);
    assert!(out.status.success(), "dsv3 failed: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON value");
    assert_eq!(v["benchmark"], "mtp-step-cost");
    assert_eq!(v["context"], 8);
    // The CPU backend without a device; the CUDA backend on a GPU or in the interpreter build.
    let backend = v["backend"].as_str().unwrap();
    assert!(
        backend.starts_with("cpu") || backend.starts_with("cuda"),
        "{backend}"
    );
    assert!(v["commit"].is_string());
    assert_eq!(v["shape"]["mtp_layers"], 1);
    let batches = v["batches"].as_array().unwrap();
    assert_eq!(
        batches
            .iter()
            .map(|b| b["batch"].clone())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    batches.iter().for_each(check_batch);
    let target = &v["target"];
    assert_eq!(target["min_speedup"], 1.8);
    assert!(target["speedup"].as_f64().unwrap() > 0.0);
    assert!(target["met"].is_boolean());

    let forced = &v["forced_acceptance"];
    assert_eq!(forced["prompt_len"], 8);
    assert!(forced["plain"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    let spec = forced["speculative"].as_array().unwrap();
    assert_eq!(spec.len(), 2);
    for s in spec {
        assert!(s["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        // The CPU backend is deterministic: the oracle's drafts are the verifier's own tokens.
        assert_eq!(s["acceptance_rate"], 1.0, "{s}");
    }

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("mtp-step-cost.json")).unwrap())
            .unwrap();
    assert_eq!(written["batches"], v["batches"]);
    let md = std::fs::read_to_string(out_dir.join("MTP-STEP-COST.md")).unwrap();
    for heading in [
        "## Step cost",
        "## Projected speedup",
        "## Forced acceptance",
    ] {
        assert!(md.contains(heading), "MTP-STEP-COST.md lacks {heading}");
    }
    assert!(md.contains("**Target**"));
}

#[test]
fn the_table_is_the_default_output() {
    let out = dsv3(&[
        "bench",
        "--mtp-cost",
        "--batch",
        "1",
        "--context",
        "4",
        "--steps",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("projected speedup"), "{text}");
    assert!(text.contains("target >= 1.8x"), "{text}");
}

#[test]
fn bad_options_are_errors_naming_the_option() {
    let fails_with = |args: &[&str], needle: &str| {
        let mut all = vec!["bench", "--mtp-cost", "--steps", "2"];
        all.extend_from_slice(args);
        let out = dsv3(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(needle), "{all:?}: `{needle}` not in: {err}");
        assert!(!err.contains("panicked"), "{all:?} panicked: {err}");
    };
    fails_with(&["--batches", "1,x"], "--batches");
    fails_with(&["--batches", "0"], "--batches");
    fails_with(&["--context", "600"], "max_position_embeddings");
    fails_with(&["--context", "0"], "--context");
    fails_with(
        &["--kv-blocks", "1", "--batches", "4"],
        "KV cache is too small",
    );
    fails_with(&["--synthetic", "half-width"], "unknown benchmark");
    // Without a device (or the cuda feature) the synthetic model cannot be built.
    if !cfg!(feature = "cuda") {
        fails_with(&["--synthetic", "full-width"], "--features cuda");
    }
    let out = dsv3(&["bench", "--out", "somewhere"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--out"));
}

#[test]
fn steps_roll_the_cache_back_to_the_context() {
    let opts = StepCostOptions {
        batches: vec![2, 1],
        context: 62,
        warmup: 1,
        reps: 2,
        fill: ContextFill::Prefill,
        seed: 3,
    };
    // Exactly enough blocks for the largest batch at C + 3 tokens (62 + 3 crosses into a second
    // block): a block leaked by a step or a batch would make a later one fail.
    let blocks = kv_blocks_needed(&opts, 1, 2);
    assert_eq!(blocks, 4);
    let mut engine = engine(Precision::Exact, blocks);
    for _ in 0..2 {
        let costs = measure_step_costs(&mut engine, &opts, &mut |_| {}).unwrap();
        assert_eq!(costs.len(), 2);
        for c in &costs {
            assert!(c.decode.median_ms > 0.0 && c.verify3.median_ms > 0.0);
            assert_eq!(c.decode.reps, 2);
            assert!(c.draft.is_some(), "the tiny model has MTP");
        }
    }
    let small = StepCostOptions {
        batches: vec![3],
        ..opts
    };
    let e = measure_step_costs(&mut engine, &small, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("KV cache is too small"), "{e}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn mtp_cost_on_cuda_needs_the_cuda_feature() {
    kernels::report_skip(
        "mtp cost on cuda",
        "no CUDA device (built without --features cuda)",
    );
}

#[cfg(feature = "cuda")]
#[test]
fn mtp_cost_on_the_cuda_backend() {
    use kernels::gpu::test_gpu;
    use model::cuda::{CudaBackend, CudaModel};
    use model::engine::Engine;
    use model::mtp_cost::forced_acceptance;
    use model::Checkpoint;

    let Some(gpu) = test_gpu("mtp cost on cuda") else {
        return;
    };
    let ckpt = Checkpoint::open(common::tiny::tiny_dir().path()).unwrap();
    let model = CudaModel::load(&ckpt, gpu).unwrap();
    // The interpreter build (`kernels::EMULATED`) times fewer repetitions, batches and tokens;
    // the context still fills one block and the steps cross into the next.
    let (batches, warmup, reps, new_tokens) = if kernels::EMULATED {
        (vec![1, 2], 1, 2, 4)
    } else {
        (vec![1, 4], 2, 5, 8)
    };
    let opts = StepCostOptions {
        batches,
        context: 64,
        warmup,
        reps,
        fill: ContextFill::Prefill,
        seed: 1,
    };
    let blocks = kv_blocks_needed(&opts, 64, new_tokens);
    let mut engine = Engine::new(CudaBackend::new(model, gpu, blocks).unwrap()).unwrap();
    let costs = measure_step_costs(&mut engine, &opts, &mut |l| eprintln!("{l}")).unwrap();
    for c in &costs {
        assert!(c.decode.median_ms > 0.0 && c.verify2.median_ms > 0.0);
        assert!(c.draft.as_ref().is_some_and(|d| d.median_ms > 0.0));
    }
    let forced = forced_acceptance(&mut engine, 64, new_tokens, 1).unwrap();
    for r in &forced.speculative {
        eprintln!(
            "cuda forced acceptance, {:?} drafts: {:.1}%",
            r.draft_steps,
            100.0 * r.acceptance_rate.unwrap()
        );
        assert!(r.decode_tokens_per_s() > 0.0);
    }
}
