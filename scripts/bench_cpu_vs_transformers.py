#!/usr/bin/env python3
"""CPU prefill / decode: `dsv3 bench` against transformers' float32 eager forward, same run.

Creates (once) a 6-layer DeepSeek-V3-architecture checkpoint with transformers (random init,
seeded, BF16 weights), then times on this machine with the same thread count:

- transformers float32 eager: prefill of a `--prompt-len` prompt, greedy decode with the KV cache,
  at batch 1 and batch `--batch`;
- `dsv3 bench --precision exact` (and `fp8`) at the same shapes.

Every figure is the median of `--reps` repetitions (after one warm-up). Writes results.json and
REPORT.md into `--out`. Run with the venv that has torch + transformers:

    /tmp/hfvenv/bin/python scripts/bench_cpu_vs_transformers.py \
        --ckpt target/bench-ckpt/dsv3-6l --out reports/<date>-cpu-prefill

The checkpoint stays out of git (generate it under target/ or /tmp).

Note: `e_score_correction_bias` is written as F32 (the DeepSeek-V3 release stores it in F32);
every other tensor is BF16.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# The model: DeepSeek-V3's architecture at hidden 1024 (V3's head dims, fewer heads and experts).
CONFIG = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=2816,
    moe_intermediate_size=256,
    num_hidden_layers=6,
    first_k_dense_replace=1,
    n_routed_experts=64,
    n_shared_experts=1,
    num_experts_per_tok=6,
    n_group=8,
    topk_group=4,
    num_attention_heads=16,
    num_key_value_heads=16,
    q_lora_rank=384,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    max_position_embeddings=4096,
    num_nextn_predict_layers=0,
    tie_word_embeddings=False,
)
SEED = 1234


def make_checkpoint(path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(SEED)
    cfg = DeepseekV3Config(**CONFIG)
    model = DeepseekV3ForCausalLM(cfg).to(torch.bfloat16)
    # Random init leaves the router bias at zero; give it values so it takes part.
    with torch.no_grad():
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None and hasattr(gate, "e_score_correction_bias"):
                gate.e_score_correction_bias.normal_(0.0, 0.01)
    model.save_pretrained(path)
    # The bias in F32, as DeepSeek-V3's release stores it.
    for f in sorted(path.glob("*.safetensors")):
        tensors = load_file(f)
        changed = False
        for name, t in tensors.items():
            if name.endswith("e_score_correction_bias") and t.dtype != torch.float32:
                tensors[name] = t.float()
                changed = True
        if changed:
            save_file(tensors, f, metadata={"format": "pt"})


def median(xs):
    return statistics.median(xs)


def hf_run(model, batch: int, prompt_len: int, steps: int, vocab: int):
    """One prefill + `steps` greedy decode steps; returns (prefill_s, decode_s)."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def bench_transformers(ckpt: Path, batches, prompt_len, steps, reps):
    from transformers import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    experts = getattr(model.config, "_experts_implementation", None)
    vocab = model.config.vocab_size
    rows = []
    for batch in batches:
        hf_run(model, batch, prompt_len, min(steps, 4), vocab)  # warm-up
        pre, dec = [], []
        for _ in range(reps):
            p, d = hf_run(model, batch, prompt_len, steps, vocab)
            pre.append(batch * prompt_len / p)
            dec.append(batch * steps / d)
        rows.append(
            dict(
                impl="transformers f32 eager",
                experts_implementation=experts,
                batch=batch,
                prefill_tokens_per_s=median(pre),
                decode_tokens_per_s=median(dec),
                prefill_samples=pre,
                decode_samples=dec,
            )
        )
        print(f"transformers batch {batch}: prefill {median(pre):.1f} tok/s, "
              f"decode {median(dec):.1f} tok/s", flush=True)
    return rows


def bench_dsv3(dsv3: Path, ckpt: Path, precision, batches, prompt_len, steps, reps, threads,
               label=None):
    rows = []
    for batch in batches:
        pre, dec = [], []
        for r in range(reps + 1):
            cmd = [str(dsv3), "bench", "--model", str(ckpt), "--precision", precision,
                   "--threads", str(threads), "--prompt-len", str(prompt_len),
                   "--batch", str(batch), "--steps", str(steps), "--json"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            v = json.loads(out.strip().splitlines()[-1])
            if r == 0:
                continue  # warm-up (page cache)
            pre.append(v["prefill_tokens_per_s"])
            dec.append(v["decode_tokens_per_s"])
        rows.append(
            dict(
                impl=label or f"dsv3 {precision}",
                batch=batch,
                prefill_tokens_per_s=median(pre),
                decode_tokens_per_s=median(dec),
                prefill_samples=pre,
                decode_samples=dec,
            )
        )
        print(f"{label or 'dsv3 ' + precision} batch {batch}: prefill {median(pre):.1f} tok/s, "
              f"decode {median(dec):.1f} tok/s", flush=True)
    return rows


def machine_info(threads):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import transformers

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip() != ""
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return dict(
        cpu=cpu,
        logical_cpus=os.cpu_count(),
        threads=threads,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        rustc=rustc,
        commit=commit,
        dirty=dirty,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def write_report(out: Path, results):
    m = results["machine"]
    s = results["setup"]
    lines = [
        "# CPU prefill and decode: `dsv3` CPU backend vs transformers",
        "",
        f"- commit `{m['commit']}`{' (uncommitted edits)' if m['dirty'] else ''}, {m['date']}",
        f"- host: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} threads "
        f"(rayon `--threads` / `torch.set_num_threads`); shared with other work, so figures are "
        "noisy: medians of repetitions",
        f"- {m['rustc']}; Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}",
        f"- model: DeepSeek-V3 architecture generated by transformers (seed {SEED}), BF16 weights "
        "(router bias F32): " + ", ".join(f"{k} {v}" for k, v in s["config"].items()),
        f"- prompt {s['prompt_len']} random tokens per sequence, {s['steps']} greedy decode "
        f"steps, batches {s['batches']}; {s['reps']} timed repetitions after one warm-up, medians",
        "- dsv3: `dsv3 bench` (prefill = the first engine step over all prompts; decode = the "
        "following steps); transformers: `DeepseekV3ForCausalLM` float32, "
        "`attn_implementation=\"eager\"`, `DynamicCache`, prefill = one forward over the prompts, "
        "decode = one forward per step (experts implementation: transformers' default, "
        f"`{next((r.get('experts_implementation') for r in results['rows'] if 'experts_implementation' in r), '-')}`)",
        "",
        "| implementation | batch | prefill tokens/s | decode tokens/s |",
        "| --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['impl']} | {r['batch']} | {r['prefill_tokens_per_s']:.1f} | "
                     f"{r['decode_tokens_per_s']:.1f} |")
    if results.get("notes"):
        lines += ["", *results["notes"]]
    lines.append("")
    (out / "REPORT.md").write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path, default=REPO / "target/bench-ckpt/dsv3-6l")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dsv3", type=Path, default=REPO / "target/release/dsv3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precisions", default="exact,fp8")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--baseline-dsv3", type=Path,
                    help="a dsv3 binary built from an earlier commit, measured (exact) alongside")
    ap.add_argument("--baseline-label", default="baseline")
    ap.add_argument("--note", action="append", default=[], help="a line for REPORT.md")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    if not (args.ckpt / "config.json").exists():
        print(f"creating the checkpoint in {args.ckpt}", flush=True)
        make_checkpoint(args.ckpt)

    rows = []
    for p in args.precisions.split(","):
        rows += bench_dsv3(args.dsv3, args.ckpt, p, batches, args.prompt_len, args.steps,
                           args.reps, args.threads)
    if args.baseline_dsv3:
        rows += bench_dsv3(args.baseline_dsv3, args.ckpt, "exact", batches, args.prompt_len,
                           args.steps, args.reps, args.threads,
                           label=f"dsv3 exact, {args.baseline_label}")
    if not args.skip_transformers:
        rows += bench_transformers(args.ckpt, batches, args.prompt_len, args.steps, args.reps)
    results = dict(
        machine=machine_info(args.threads),
        setup=dict(config=CONFIG, seed=SEED, prompt_len=args.prompt_len, steps=args.steps,
                   batches=batches, reps=args.reps),
        rows=rows,
        notes=args.note,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(args.out, results)
    print(f"wrote {args.out}/results.json and REPORT.md")


if __name__ == "__main__":
    sys.exit(main())
