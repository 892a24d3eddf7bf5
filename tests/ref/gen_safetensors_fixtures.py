#!/usr/bin/env python3
"""Regenerate tests/fixtures/safetensors/ and check rubric's writers against the real clients.

    python3 tests/ref/gen_safetensors_fixtures.py             # rewrite the fixtures
    python3 tests/ref/gen_safetensors_fixtures.py --check-init-model build/rubric

The fixtures are written by the `safetensors` pip package (and torch for the dtype conversions,
transformers for the resolved model configs), so the C tests compare rubric's reader against
independent references:

  small.safetensors + small.expected.json   every dtype rubric reads, values as torch sees them
  sharded/                                  two shards and model.safetensors.index.json
  sharded_missing/                          an index naming a tensor its shard lacks
  convert.safetensors                       fp32 values and torch's bf16 / fp16 of them, and
                                            every fp16 bit pattern with torch's fp32 of it
  bad/*.safetensors                         headers that lie, each one way
  configs/<name>/config.json + expected.json  real and minimal configs, resolved by transformers
  bad_configs/<name>/config.json            configs rubric must refuse

--check-init-model runs `rubric init-model` for several shapes and checks that transformers'
AutoModelForCausalLM loads each folder with no missing or unexpected key, that the `safetensors`
package reads every tensor, and that the values are exactly the seeded normal(0, 0.02) draws
(re-derived here from the documented generator). CI does not run it (it needs torch).
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file, load_file, safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "safetensors")


def f32_list(t):
    """Values of a float tensor as fp32, as python floats (exact)."""
    return [float(v) for v in t.to(torch.float32).flatten().tolist()]


# ---- readable fixtures ----

def gen_small(rng):
    tensors = {
        "f32": torch.tensor(rng.standard_normal((3, 4)), dtype=torch.float32),
        "bf16": torch.tensor(rng.standard_normal((2, 5)), dtype=torch.float32).to(torch.bfloat16),
        "f16": torch.tensor(rng.standard_normal(7) * 100, dtype=torch.float32).to(torch.float16),
        "f64": torch.tensor([1.0 / 3.0, -2.5e-40, 1e30, 0.1], dtype=torch.float64),
        "i64": torch.tensor([[1, -2], [3, 2**40]], dtype=torch.int64),
        "scalar": torch.tensor(4.5, dtype=torch.float32),
        "empty": torch.zeros((0, 3), dtype=torch.float32),
        "model.layers.0.self_attn.q_proj.weight": torch.tensor(rng.standard_normal((4, 2)),
                                                               dtype=torch.float32),
    }
    meta = {"format": "pt", "note": "rubric fixture"}
    save_file(tensors, os.path.join(OUT, "small.safetensors"), metadata=meta)
    expected = {"metadata": meta, "tensors": {}}
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
             torch.float64: "F64", torch.int64: "I64"}
    for name, t in tensors.items():
        e = {"dtype": names[t.dtype], "shape": list(t.shape)}
        if t.dtype == torch.int64:
            e["ints"] = t.flatten().tolist()
        else:
            e["values"] = f32_list(t)  # f64 -> fp32 as torch rounds it
        expected["tensors"][name] = e
    with open(os.path.join(OUT, "small.expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def gen_sharded(rng):
    d = os.path.join(OUT, "sharded")
    os.makedirs(d, exist_ok=True)
    shard1 = {"model.embed_tokens.weight": torch.tensor(rng.standard_normal((6, 4)),
                                                        dtype=torch.float32).to(torch.bfloat16),
              "model.norm.weight": torch.ones(4, dtype=torch.float32)}
    shard2 = {"lm_head.weight": torch.tensor(rng.standard_normal((6, 4)),
                                             dtype=torch.float32).to(torch.float16)}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file(shard1, os.path.join(d, names[0]), metadata={"format": "pt"})
    save_file(shard2, os.path.join(d, names[1]), metadata={"format": "pt"})
    wm = {k: names[0] for k in shard1}
    wm.update({k: names[1] for k in shard2})
    total = sum(t.numel() * t.element_size() for t in list(shard1.values()) +
                list(shard2.values()))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
    exp = {k: {"shape": list(t.shape), "values": f32_list(t), "file": wm[k]}
           for k, t in list(shard1.items()) + list(shard2.items())}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1)

    # the same shards, but the index names a tensor that is in neither
    d2 = os.path.join(OUT, "sharded_missing")
    os.makedirs(d2, exist_ok=True)
    for n in names:
        shutil.copy(os.path.join(d, n), os.path.join(d2, n))
    wm2 = dict(wm)
    wm2["model.layers.0.mlp.up_proj.weight"] = names[1]
    with open(os.path.join(d2, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm2}, f, indent=2)


def conversion_inputs(rng):
    """fp32 values that exercise rounding: ties, subnormals, overflow, NaN, inf."""
    special = [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.99, 65520.0, 65536.0, 1e10, -1e10,
               5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08, 1.1920929e-07,
               6.097555e-05, 6.1035156e-05, 3.0e-39, 1e-45, float("inf"), float("-inf"),
               float("nan"), 3.4028235e38, -3.4028235e38, 1.00390625, 1.01171875, 0.1, 1 / 3]
    bits = []
    # bf16 ties: low 16 bits exactly 0x8000, with even and odd bf16 mantissas
    for hi in (0x3f80, 0x3f81, 0x4049, 0x404a, 0xc2c8, 0x7f7f, 0x0001, 0x0080):
        bits += [hi << 16 | 0x8000, hi << 16 | 0x7fff, hi << 16 | 0x8001]
    # fp16 ties (13 dropped bits = 0x1000) in the normal and subnormal ranges
    for e in (103, 105, 110, 112, 113, 120, 127, 140, 142):
        for m in (0x000000, 0x001000, 0x003000, 0x3ff000, 0x7ff000, 0x400fff, 0x401001):
            bits += [e << 23 | m, 0x80000000 | e << 23 | m]
    # NaNs with payloads, both signs
    bits += [0x7f800001, 0xffc00000, 0x7fa00000, 0x7fffffff]
    x = np.array(special, dtype=np.float32)
    xb = np.array(bits, dtype=np.uint32).view(np.float32)
    # random values over the whole exponent range, and over fp16's range
    wide = (rng.standard_normal(6000) * np.exp2(rng.integers(-140, 128, 6000))).astype(np.float32)
    half = (rng.standard_normal(6000) * np.exp2(rng.integers(-26, 16, 6000))).astype(np.float32)
    rb = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([x, xb, wide, half, rb])


def gen_convert(rng):
    x = torch.from_numpy(conversion_inputs(rng).copy())
    all_f16 = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    tensors = {
        "x": x,
        "x_bf16": x.to(torch.bfloat16),
        "x_f16": x.to(torch.float16),
        "all_f16": all_f16,
        "all_f16_as_f32": all_f16.to(torch.float32),
    }
    save_file(tensors, os.path.join(OUT, "convert.safetensors"), metadata={"format": "pt"})


# ---- lying headers ----

def raw_file(path, header, data=b"", hlen=None):
    """Write a safetensors file by hand: header is a dict (dumped) or bytes (used as is)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if hlen is None else hlen))
        f.write(h)
        f.write(data)


def gen_bad():
    d = os.path.join(OUT, "bad")
    os.makedirs(d, exist_ok=True)
    ok = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    eight = b"\0" * 8
    cases = {
        "offsets_past_end": ({"a": ok, "w": {"dtype": "F32", "shape": [4],
                                              "data_offsets": [8, 24]}}, eight * 2),
        "overlap": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, eight * 2),
        "size_mismatch": ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
                          eight * 2),
        "unknown_dtype": ({"w": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}},
                          eight),
        "negative_shape": ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                           eight),
        "bad_offsets": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, eight),
        "missing_dtype": ({"w": {"shape": [2], "data_offsets": [0, 8]}}, eight),
        "bad_metadata": ({"__metadata__": {"format": 1}, "a": ok}, eight),
        "bad_json": (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', eight),
        "not_object": (b"[1, 2, 3]", eight),
        "duplicate_name": (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
                           b' "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                           eight),
    }
    for name, (header, data) in cases.items():
        raw_file(os.path.join(d, name + ".safetensors"), header, data)
    # header lengths that lie
    raw_file(os.path.join(d, "huge_header.safetensors"), {"a": ok}, eight, hlen=1 << 62)
    raw_file(os.path.join(d, "header_past_file.safetensors"), {"a": ok}, eight, hlen=4096)
    with open(os.path.join(d, "tiny.safetensors"), "wb") as f:
        f.write(b"\x10\0\0")
    # a real file cut short in the middle of its data
    tmp = os.path.join(d, "full.tmp")
    save_file({"w": torch.arange(64, dtype=torch.float32)}, tmp)
    with open(tmp, "rb") as f:
        blob = f.read()
    os.remove(tmp)
    with open(os.path.join(d, "truncated.safetensors"), "wb") as f:
        f.write(blob[:len(blob) - 100])


# ---- model configs ----

QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_mrope": False,
    "use_sliding_window": False, "vocab_size": 151936,
}
TINYLLAMA = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 2048,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 22,
    "num_key_value_heads": 4, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.35.0", "use_cache": True, "vocab_size": 32000,
}
LLAMA32_1B = dict(TINYLLAMA, bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
                  head_dim=64, hidden_size=2048, intermediate_size=8192, mlp_bias=False,
                  max_position_embeddings=131072, num_hidden_layers=16, num_key_value_heads=8,
                  rope_theta=500000.0, tie_word_embeddings=True, vocab_size=128256,
                  rope_scaling={"factor": 32.0, "high_freq_factor": 4.0,
                                "low_freq_factor": 1.0,
                                "original_max_position_embeddings": 8192,
                                "rope_type": "llama3"})


def resolved(cfg_dir):
    """The fields rubric reads, as transformers resolves them (defaults included)."""
    from transformers import AutoConfig
    c = AutoConfig.from_pretrained(cfg_dir)
    rp = getattr(c, "rope_parameters", None) or {}
    theta = rp.get("rope_theta", getattr(c, "rope_theta", None))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    eos = c.eos_token_id[0] if isinstance(c.eos_token_id, list) else c.eos_token_id
    qwen2 = c.model_type == "qwen2"
    bias = True if qwen2 else bool(c.attention_bias)
    return {
        "model_type": c.model_type, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": head_dim,
        "rope_theta": float(theta), "rms_norm_eps": float(c.rms_norm_eps),
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": bool(c.tie_word_embeddings), "attention_bias": bias,
        "o_bias": False if qwen2 else bias, "qk_norm": c.model_type == "qwen3",
        "bos_token_id": -1 if c.bos_token_id is None else c.bos_token_id,
        "eos_token_id": -1 if eos is None else eos,
    }


def write_config(d, cfg):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def gen_configs():
    from transformers import Qwen3Config
    base = os.path.join(OUT, "configs")
    good = {
        "qwen3-0.6b": QWEN3_06B, "qwen2.5-0.5b": QWEN25_05B, "tinyllama-1.1b": TINYLLAMA,
        "qwen3-defaults": {"model_type": "qwen3"}, "qwen2-defaults": {"model_type": "qwen2"},
        "llama-defaults": {"model_type": "llama"},
        "llama-bias": dict(TINYLLAMA, attention_bias=True, num_key_value_heads=None),
    }
    for name, cfg in good.items():
        write_config(os.path.join(base, name), cfg)
    # a config as transformers 5 saves it (rope_parameters, dtype)
    d5 = os.path.join(base, "qwen3-saved-by-transformers")
    Qwen3Config(hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                rope_theta=500000.0, tie_word_embeddings=True).save_pretrained(d5)
    for name in os.listdir(base):
        exp = resolved(os.path.join(base, name))
        with open(os.path.join(base, name, "expected.json"), "w") as f:
            json.dump(exp, f, indent=1)

    bad = {
        "gpt2": {"model_type": "gpt2", "n_embd": 768},
        "no-model-type": {k: v for k, v in QWEN3_06B.items() if k != "model_type"},
        "rope-scaling-llama3": LLAMA32_1B,
        "heads-not-multiple": dict(QWEN25_05B, num_key_value_heads=4),
        "negative-hidden": dict(QWEN3_06B, hidden_size=-8),
        "string-layers": dict(QWEN3_06B, num_hidden_layers="28"),
        "sliding-window": dict(QWEN25_05B, use_sliding_window=True),
        "gelu": dict(TINYLLAMA, hidden_act="gelu"),
        "mlp-bias": dict(TINYLLAMA, mlp_bias=True),
        "odd-head-dim": dict(QWEN3_06B, head_dim=127),
    }
    for name, cfg in bad.items():
        write_config(os.path.join(OUT, "bad_configs", name), cfg)
    d = os.path.join(OUT, "bad_configs", "bad-json")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{\n  "model_type": "qwen3",\n  "hidden_size": 64,\n  "vocab_size": ,\n}\n')


# ---- checking rubric init-model against transformers ----

MASK64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def init_normals(seed, name, n, std=0.02):
    """rubric init-model's draws for tensor `name`: xoshiro256** + Box-Muller (see
    worker/cmd_init_model.c), recomputed independently with numpy."""
    import xxhash
    x = (seed + xxhash.xxh64_intdigest(name.encode(), 0)) & MASK64
    s = []
    for _ in range(4):
        x, v = splitmix64(x)
        s.append(v)
    m = (n + 1) // 2
    raw = np.empty(2 * m, dtype=np.uint64)
    rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & MASK64
    for i in range(2 * m):
        raw[i] = (rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t
        s[3] = rotl(s[3], 45)
    u1 = ((raw[0::2] >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * 2.0**-53
    u2 = (raw[1::2] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    out = np.empty(2 * m, dtype=np.float64)
    out[0::2] = std * r * np.cos(6.283185307179586 * u2)
    out[1::2] = std * r * np.sin(6.283185307179586 * u2)
    return out[:n].astype(np.float32)


def weight_files(out):
    """The safetensors files of a model folder: the shards named by the index, or the one."""
    index = os.path.join(out, "model.safetensors.index.json")
    if not os.path.exists(index):
        return ["model.safetensors"]
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    assert len(files) > 1, files
    assert not os.path.exists(os.path.join(out, "model.safetensors")), "stale single file"
    return files


def check_folder(out, seed, model):
    """Problems with the tensors of `out` as the safetensors package reads them."""
    sd = model.state_dict()
    wrong, seen = [], set()
    for file in weight_files(out):
        with safe_open(os.path.join(out, file), "pt") as f:
            if f.metadata() != {"format": "pt"}:
                wrong.append("%s metadata %s" % (file, f.metadata()))
            for name in f.keys():
                seen.add(name)
                t = f.get_tensor(name)
                if not torch.equal(sd[name], t.float()):
                    wrong.append(name + " (transformers differs)")
                if name.endswith(".weight") and t.dim() == 2:
                    ref = torch.from_numpy(init_normals(seed, name, t.numel()))
                    if not torch.equal(ref.to(t.dtype).view(t.shape), t):
                        wrong.append(name + " (not the seeded draws)")
    want = set(sd) - ({"lm_head.weight"} if model.config.tie_word_embeddings else set())
    if seen != want:
        wrong.append("tensors differ from the state_dict: %s" % sorted(seen ^ want))
    return wrong


def check_init_model(rubric):
    from transformers import AutoModelForCausalLM
    variants = [
        ["--type", "qwen3", "--tie", "--dtype", "bf16"],
        ["--type", "qwen3", "--no-tie", "--dtype", "f32", "--seed", "7"],
        ["--type", "qwen2", "--dtype", "f32", "--heads", "4", "--kv-heads", "4"],
        ["--type", "llama", "--no-tie", "--dtype", "bf16", "--layers", "1"],
        ["--type", "qwen3", "--no-tie", "--dtype", "bf16", "--max-shard-size", "100K"],
    ]
    failures = 0
    for args in variants:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "m")
            subprocess.run([rubric, "init-model", "--out", out, "--vocab", "1000"] + args,
                           check=True)
            model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                               dtype=torch.float32)
            bad_keys = {k: v for k, v in info.items() if v}
            seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 1
            wrong = check_folder(out, seed, model)
            logits = model(torch.tensor([[1, 2, 3]])).logits
            ok = not bad_keys and not wrong and bool(torch.isfinite(logits).all())
            print(("ok  " if ok else "FAIL"), " ".join(args), bad_keys or "", wrong or "")
            failures += not ok
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-init-model", metavar="RUBRIC_BIN")
    a = ap.parse_args()
    if a.check_init_model:
        sys.exit(1 if check_init_model(a.check_init_model) else 0)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261203)
    gen_small(rng)
    gen_sharded(rng)
    gen_convert(rng)
    gen_bad()
    gen_configs()
    print("wrote", OUT)


if __name__ == "__main__":
    main()
