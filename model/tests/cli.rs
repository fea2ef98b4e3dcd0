//! The `dsv3` binary end to end on the built-in tiny model: the documented run command works on
//! a fresh machine, `--json` and `logits` print the stable shapes, `make-tiny` writes a
//! checkpoint the other commands load, and bad input exits non-zero with a message naming it.

mod common;

use std::process::{Command, Output};

use common::TempDir;
use serde_json::Value;

fn dsv3(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsv3"))
        .args(args)
        .output()
        .expect("dsv3 runs")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "dsv3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON value")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generate_on_the_builtin_model() {
    let out = dsv3(&[
        "generate",
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    let v = stdout_json(&out);
    let ids = v["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 8);
    assert!(v["text"].is_string());
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        stderr(&out).contains("random"),
        "must say the weights are random"
    );

    // Streaming (no --json) prints text and a summary line.
    let out = dsv3(&["generate", "--ids", "1,2,3", "--max-new-tokens", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("3 prompt + 4 generated tokens"));
}

#[test]
fn greedy_generation_is_reproducible_and_sampling_is_seeded() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--ids",
            "5,6,7",
            "--max-new-tokens",
            "6",
            "--json",
        ];
        args.extend_from_slice(extra);
        stdout_json(&dsv3(&args))["ids"].clone()
    };
    assert_eq!(run(&[]), run(&[]));
    let sampled = ["--temperature", "1.0", "--top-p", "0.9", "--seed", "11"];
    assert_eq!(run(&sampled), run(&sampled));
}

#[test]
fn logits_prints_one_row_per_position() {
    let v = stdout_json(&dsv3(&["logits", "--ids", "1,2,3"]));
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_array().unwrap().len(), 512);
}

#[test]
fn make_tiny_writes_a_checkpoint_the_commands_load() {
    let dir = TempDir::new("cli-make-tiny");
    let out = dsv3(&["make-tiny", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("random"));
    let model = dir.path().to_str().unwrap();
    let from_dir = stdout_json(&dsv3(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1,2",
        "--max-new-tokens",
        "5",
        "--json",
    ]));
    let builtin = stdout_json(&dsv3(&[
        "generate",
        "--ids",
        "1,2",
        "--max-new-tokens",
        "5",
        "--json",
    ]));
    assert_eq!(from_dir["ids"], builtin["ids"]);

    let info = stdout_json(&dsv3(&["info", "--model", model, "--json"]));
    assert_eq!(info["model_type"], "deepseek_v3");
    assert!(info["params_total"].as_u64().unwrap() > info["params_activated"].as_u64().unwrap());

    let text = dir.path().join("text.txt");
    std::fs::write(&text, "The quick brown fox jumps over the lazy dog.").unwrap();
    let ppl = stdout_json(&dsv3(&[
        "perplexity",
        "--model",
        model,
        "--file",
        text.to_str().unwrap(),
    ]));
    assert!(ppl["perplexity"].as_f64().unwrap() > 1.0);
}

#[test]
fn bad_input_exits_with_a_message_naming_it() {
    let cases: [(&[&str], &str); 5] = [
        (&["generate", "--ids", "1,99999"], "99999"),
        (&["generate", "--ids", "1,x"], "`x`"),
        (
            &["generate", "--model", "/nonexistent/dir", "--ids", "1"],
            "/nonexistent/dir",
        ),
        (&["generate", "--ids", "1", "--top-p", "0"], "top_p"),
        // Without a device: it needs CUDA. On the interpreter's emulated device (host memory):
        // the full-width layers do not fit, and the error names --layers.
        (
            &["bench", "--synthetic", "full-width"],
            if kernels::EMULATED {
                "--layers"
            } else {
                "CUDA"
            },
        ),
    ];
    for (args, needle) in cases {
        let out = dsv3(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
    }
}

/// Writes a BF16 NaN over the first element of `tensor` in a single-file checkpoint.
fn poison_bf16(dir: &std::path::Path, tensor: &str) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header[tensor]["dtype"], "BF16");
    let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + header_len + start;
    bytes[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn check_weights_names_a_nan_tensor() {
    let dir = TempDir::new("cli-nan");
    assert!(dsv3(&["make-tiny", "--out", dir.path().to_str().unwrap()])
        .status
        .success());
    poison_bf16(dir.path(), "model.norm.weight");
    let model = dir.path().to_str().unwrap();
    let out = dsv3(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1",
        "--check-weights",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("model.norm.weight"),
        "{}",
        stderr(&out)
    );
}

/// Runs `dsv3 chat` with `stdin` as its input.
fn chat(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dsv3"))
        .arg("chat")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("dsv3 chat starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn chat_answers_each_stdin_line() {
    let out = chat(
        &["--max-new-tokens", "6", "--system", "be brief"],
        "hello\n\nhow are you?\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // One reply per non-empty user line, each ended by a newline (a random-weight reply may
    // itself contain newline bytes, so at least two).
    let lines = String::from_utf8_lossy(&out.stdout).matches('\n').count();
    assert!(
        lines >= 2,
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The built-in model's tokenizer_config.json has no chat template.
    assert!(
        stderr(&out)
            .contains("chat template: built-in DeepSeek-V3 template (the checkpoint has none)"),
        "{}",
        stderr(&out)
    );
}

/// A checkpoint's own `chat_template` formats the conversation, and `dsv3 chat` says so; one
/// that refuses (its `raise_exception`) is an error naming tokenizer_config.json.
#[test]
fn chat_uses_the_checkpoint_template() {
    let dir = TempDir::new("cli-chat-template");
    let model = dir.path().to_str().unwrap();
    assert!(dsv3(&["make-tiny", "--out", model]).status.success());
    let config_file = dir.file("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    config["chat_template"] = Value::from(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}\
         {% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜>{% endif %}",
    );
    std::fs::write(&config_file, config.to_string()).unwrap();
    let out = chat(&["--model", model, "--max-new-tokens", "4"], "hello\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("chat template: from tokenizer_config.json"),
        "{}",
        stderr(&out)
    );

    config["chat_template"] = Value::from("{{ raise_exception('no chatting here') }}");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let out = chat(&["--model", model, "--max-new-tokens", "4"], "hello\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no chatting here"), "{err}");
    assert!(err.contains(&config_file.display().to_string()), "{err}");
}

/// `--backend cuda` runs on the CUDA backend when the binary has it and a device is present, and
/// otherwise exits with the reason (built without the feature, or no device).
#[test]
fn backend_cuda_runs_or_says_why_not() {
    let out = dsv3(&[
        "generate",
        "--backend",
        "cuda",
        "--ids",
        "1,2,3",
        "--max-new-tokens",
        "2",
    ]);
    let err = stderr(&out);
    if out.status.success() {
        assert!(err.contains("cuda fp8"), "{err}");
    } else if cfg!(feature = "cuda") {
        // No device, or one the sm_90a kernels cannot run on.
        assert!(
            err.contains("--backend cuda: no CUDA device")
                || err.contains("--backend cuda: unsupported GPU"),
            "{err}"
        );
    } else {
        assert!(err.contains("built without --features cuda"), "{err}");
    }
}

fn golden_fixture(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    dir.to_str().unwrap().to_string()
}

/// `info` on every checkpoint family of the golden fixtures.
#[test]
fn info_describes_every_fixture_family() {
    let cases = [
        ("hf-v3-tiny", "deepseek_v3", true, Value::from("f32")),
        ("hf-v2-lite-tiny", "deepseek_v2", true, Value::from("f32")),
        ("hf-v3-f32-tiny", "deepseek_v3", false, Value::Null),
        ("hf-moonlight-tiny", "deepseek_v3", false, Value::Null),
        ("hf-k2-tiny", "kimi_k2", true, Value::from("f32")),
        ("hf-v31-tiny", "deepseek_v3", true, Value::from("ue8m0")),
    ];
    for (name, model_type, fp8, scale_fmt) in cases {
        let v = stdout_json(&dsv3(&["info", "--model", &golden_fixture(name), "--json"]));
        assert_eq!(v["model_type"], model_type, "{name}");
        assert_eq!(v["fp8"], fp8, "{name}");
        assert_eq!(v["fp8_scale_fmt"], scale_fmt, "{name}");
        assert!(v["params_total"].as_u64().unwrap() > 0, "{name}");
        // The text form works too.
        let out = dsv3(&["info", "--model", &golden_fixture(name)]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    let k2 = stdout_json(&dsv3(&[
        "info",
        "--model",
        &golden_fixture("hf-k2-tiny"),
        "--json",
    ]));
    assert_eq!(
        (k2["routed_experts"].as_u64(), k2["heads"].as_u64()),
        (Some(384), Some(64))
    );
}

/// A checkpoint without tokenizer.json (as transformers' save_pretrained writes one): token-id
/// commands work, text commands say what is missing.
#[test]
fn checkpoint_without_a_tokenizer_runs_on_ids() {
    let model = golden_fixture("hf-moonlight-tiny");
    assert!(!std::path::Path::new(&model).join("tokenizer.json").exists());
    let v = stdout_json(&dsv3(&[
        "generate",
        "--model",
        &model,
        "--ids",
        "5,6,7",
        "--max-new-tokens",
        "3",
        "--json",
    ]));
    assert_eq!(v["ids"].as_array().unwrap().len(), 3);
    let v = stdout_json(&dsv3(&["logits", "--model", &model, "--ids", "5,6"]));
    assert_eq!(v["logits"].as_array().unwrap().len(), 2);

    let text = TempDir::new("cli-no-tokenizer");
    let file = text.path().join("text.txt");
    std::fs::write(&file, "some text").unwrap();
    let file = file.to_str().unwrap();
    let cases: [&[&str]; 3] = [
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ],
        &["perplexity", "--model", &model, "--file", file],
        &["chat", "--model", &model],
    ];
    for args in cases {
        let out = dsv3(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr(&out).contains("tokenizer.json"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// `--world-size N` on the CPU backend: `generate`, `logits` and `bench` run as N in-process
/// ranks and print what one process prints; a world that cannot hold the experts evenly says
/// why.
#[test]
fn world_size_runs_generate_logits_and_bench_on_the_cpu() {
    let gen = |n: &str| {
        let out = dsv3(&[
            "generate",
            "--ids",
            "5,6,7,8",
            "--max-new-tokens",
            "6",
            "--precision",
            "fp8",
            "--world-size",
            n,
            "--json",
        ]);
        let v = stdout_json(&out);
        assert!(v["backend"]
            .as_str()
            .unwrap()
            .contains(&format!("world of {n}")));
        v["ids"].clone()
    };
    let one = gen("1");
    assert_eq!(one.as_array().unwrap().len(), 6);
    assert_eq!(gen("4"), one);
    let logits = |extra: &[&str]| {
        let mut args = vec!["logits", "--ids", "3,1,4,1,5"];
        args.extend_from_slice(extra);
        stdout_json(&dsv3(&args))["logits"].clone()
    };
    assert_eq!(
        logits(&["--world-size", "2"]),
        logits(&["--world-size", "8"])
    );
    let out = dsv3(&[
        "bench",
        "--world-size",
        "2",
        "--batch",
        "3",
        "--prompt-len",
        "8",
        "--steps",
        "2",
        "--json",
    ]);
    let v = stdout_json(&out);
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["backend"].as_str().unwrap().contains("world of 2"));

    let out = dsv3(&["generate", "--ids", "1,2", "--world-size", "3"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("16 experts cannot be split evenly over 3 ranks"),
        "{}",
        stderr(&out)
    );
}

/// `info --world-size`: the per-rank memory plan and all-to-all traffic on the built-in model,
/// and errors naming what is wrong.
#[test]
fn info_plans_an_expert_parallel_deployment() {
    let out = dsv3(&["info", "--world-size", "3"]);
    assert!(!out.status.success(), "3 ranks cannot share 16 experts");
    assert!(
        stderr(&out).contains("16 routed experts cannot be split evenly over 3 ranks"),
        "{}",
        stderr(&out)
    );
    for bad in [
        &["info", "--world-size", "0"][..],
        &["info", "--gpu-memory", "0"],
        &["info", "--gpu-memory=-8"],
        &["info", "--world-size", "4", "--batch-per-rank", "0"],
    ] {
        let out = dsv3(bad);
        assert!(!out.status.success(), "{bad:?} should fail");
        let flag = bad[bad.len() - 2..].join(" ");
        let named = ["--world-size", "--gpu-memory", "--batch-per-rank"]
            .iter()
            .any(|f| flag.contains(f) && stderr(&out).contains(f));
        assert!(named, "{bad:?}: {}", stderr(&out));
    }

    let v = stdout_json(&dsv3(&[
        "info",
        "--world-size",
        "4",
        "--gpu-memory",
        "2",
        "--batch-per-rank",
        "8",
        "--json",
    ]));
    let plan = &v["memory_plan"];
    assert_eq!(plan["world_size"], 4);
    assert_eq!(plan["routed_experts_per_rank"], 4);
    let weights = plan["weight_bytes_per_rank"].as_object().unwrap();
    for key in [
        "attention",
        "dense_mlp",
        "shared_experts",
        "routed_experts",
        "embedding_lm_head",
        "mtp",
    ] {
        assert!(weights[key].as_u64().unwrap() > 0, "{key}");
    }
    let parts: u64 = weights
        .iter()
        .filter(|(k, _)| *k != "total")
        .map(|(_, b)| b.as_u64().unwrap())
        .sum();
    assert_eq!(weights["total"].as_u64(), Some(parts));
    for key in ["workspace_bytes", "kv_bytes_per_token", "gpu_memory_bytes"] {
        assert!(plan[key].as_u64().unwrap() > 0, "{key}");
    }
    assert_eq!(plan["fits"], true);
    assert!(plan["kv_tokens_per_rank"].as_u64().unwrap() > 0);
    let a2a = &v["all_to_all"];
    assert_eq!(a2a["batch_per_rank"], 8);
    assert_eq!(a2a["worst_remote_ranks"], 3);
    for key in [
        "moe_layers",
        "dispatch_row_bytes",
        "combine_row_bytes",
        "expected_remote_ranks",
        "worst_bytes_per_step",
        "expected_bytes_per_step",
    ] {
        assert!(a2a[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(
        a2a["on_paper_us"]["nvlink_450_gb_s"]["worst"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        a2a["on_paper_us"]["infiniband_50_gb_s"]["expected"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // Without --gpu-memory: weights only, and the KV budget says what it needs.
    let v = stdout_json(&dsv3(&["info", "--json"]));
    assert_eq!(v["memory_plan"]["world_size"], 1);
    assert_eq!(v["memory_plan"]["fits"], Value::Null);
    let out = dsv3(&["info"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("needs --gpu-memory"), "{text}");
    assert!(
        !text.contains("all-to-all"),
        "one rank has no all-to-all: {text}"
    );
}

/// The released DeepSeek-V3 config (`tests/fixtures/deepseek-v3-config`): fits on 8 x 141 GiB
/// (H200) and 16 x 80 GiB (H100), not on 8 x 80 GiB.
#[test]
fn info_plans_v3_on_h200_and_h100() {
    let model = golden_fixture("deepseek-v3-config");
    let plan = |ranks: &str, gib: &str| {
        let args = [
            "info",
            "--model",
            &model,
            "--world-size",
            ranks,
            "--gpu-memory",
            gib,
        ];
        let text = dsv3(&args);
        assert!(text.status.success(), "{}", stderr(&text));
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        let v = stdout_json(&dsv3(&[&args[..], &["--json"]].concat()));
        (v["memory_plan"]["fits"].as_bool().unwrap(), text)
    };
    let (fits, text) = plan("8", "141");
    assert!(fits && text.contains("fits: yes, KV cache for "), "{text}");
    assert!(text.contains("all-to-all") && text.contains("on paper, not measured"));
    let (fits, text) = plan("8", "80");
    assert!(
        !fits && text.contains("does not fit: weights need 99.1 GiB of 80.0 GiB per rank"),
        "{text}"
    );
    let (fits, text) = plan("16", "80");
    assert!(fits && text.contains("fits: yes"), "{text}");
}
