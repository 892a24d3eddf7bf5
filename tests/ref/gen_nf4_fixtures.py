#!/usr/bin/env python3
"""Regenerate tests/fixtures/nf4/ from pip bitsandbytes' CPU path (the reference of test_nf4.c).

Each case quantizes a float32 vector with
    bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                          compress_statistics=<double_quant>)
and dequantizes it with dequantize_4bit, on the CPU, and writes raw little-endian arrays:
    <case>.w.f32          the input (absent for "pattern" cases: the C test regenerates it)
    <case>.codes.u8       packed 4-bit codes (for pattern cases: the first and last 4096 bytes)
    <case>.absmax.f32     fp32 block scales (double_quant 0)
    <case>.absmax_q.u8    8-bit codes of the scales, <case>.absmax2.f32 their scales,
    <case>.offset.f32     the mean subtracted first (double_quant 1)
    <case>.deq.f32        dequantize_4bit's output (pattern cases: the first 4096 values)
plus dynamic_map.f32 (create_dynamic_map(signed=True)) and manifest.json listing the cases.

torch runs single-threaded: bnb takes the mean of the block scales with torch's float32 sum,
whose rounding depends on the thread count above 32768 blocks; rubric reproduces the
single-thread sum.

Usage: python3 tests/ref/gen_nf4_fixtures.py   (from the source root; needs torch, bitsandbytes)
"""
import json
import os
import sys

import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "nf4")
EDGE = 4096


def pattern(n):
    """Deterministic test weights the C test rebuilds exactly (integer arithmetic, one fp32
    division): w[i] = ((i * 2654435761 mod 2^32) mod 1000003) / 1000003 - 0.5, scaled by a
    per-block factor so the block scales vary."""
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    r = (h % np.uint64(1000003)).astype(np.float32)
    w = r / np.float32(1000003.0) - np.float32(0.5)
    blk = (i // np.uint64(64)) % np.uint64(7)
    return (w * (blk.astype(np.float32) + np.float32(1.0))).astype(np.float32)


def quantize(w, double_quant):
    t = torch.from_numpy(w.copy())
    q, st = F.quantize_4bit(t, blocksize=64, compress_statistics=bool(double_quant),
                            quant_type="nf4")
    deq = F.dequantize_4bit(q, st).numpy().astype(np.float32).reshape(-1)
    out = {"codes": q.numpy().reshape(-1).astype(np.uint8), "deq": deq}
    if double_quant:
        out["absmax_q"] = st.absmax.numpy().astype(np.uint8)
        out["absmax2"] = st.state2.absmax.numpy().astype(np.float32)
        out["offset"] = np.array([st.offset.item()], dtype=np.float32)
        assert st.state2.blocksize == 256
    else:
        out["absmax"] = st.absmax.numpy().astype(np.float32)
    return out


def save(name, arrays):
    for key, arr in arrays.items():
        ext = "u8" if arr.dtype == np.uint8 else "f32"
        arr.tofile(os.path.join(OUT, f"{name}.{key}.{ext}"))


def tie_block():
    """Values exactly on the fp32 midpoints between NF4 codes, the codes themselves and their
    neighbours, in a block whose scale is exactly 1 (and a copy scaled by 2)."""
    code = F.get_4bit_type("nf4", device="cpu").numpy().astype(np.float32)
    mids = ((code[:-1] + code[1:]) / np.float32(2.0)).astype(np.float32)
    vals = [np.float32(1.0)]
    for m in mids:
        vals += [m, np.nextafter(m, np.float32(-2)), np.nextafter(m, np.float32(2))]
    vals += list(code)
    vals = np.array(vals, dtype=np.float32)[:128]
    vals = np.concatenate([vals, np.zeros(128 - len(vals), dtype=np.float32)])
    return np.concatenate([vals, vals * np.float32(2.0)]).astype(np.float32)


def cases():
    rng = np.random.default_rng(20261203)
    c = {}
    c["random"] = (rng.standard_normal(96 * 200) * 0.02).astype(np.float32)
    c["partial"] = rng.standard_normal(1000).astype(np.float32)
    c["odd"] = rng.standard_normal(64 * 3 + 7).astype(np.float32)
    z = rng.standard_normal(64 * 5 + 10).astype(np.float32)
    z[64:128] = 0.0
    z[192:256] = 0.0
    z[320:] = 0.0
    c["zero_blocks"] = z
    c["all_zero"] = np.zeros(128, dtype=np.float32)
    c["tiny_n"] = np.array([0.5, -0.25, 3.0, 0.0, -1e-3], dtype=np.float32)
    tiny = rng.standard_normal(64 * 4).astype(np.float32)
    tiny[:64] *= np.float32(1e-30)
    tiny[64:128] *= np.float32(1e-40)  # subnormal: below torch's 1e-38 scale clamp
    tiny[128:192] *= np.float32(1e-38)
    c["tiny_values"] = tiny.astype(np.float32)
    huge = rng.standard_normal(64 * 3 + 20).astype(np.float32)
    huge[:64] *= np.float32(1e37)
    huge[64] = np.float32(3.4e38)
    huge[128:] *= np.float32(1e30)
    c["huge_values"] = huge.astype(np.float32)  # double quantization overflows: see main()
    large = rng.standard_normal(64 * 3 + 20).astype(np.float32)
    large[:64] *= np.float32(1e35)
    large[64] = np.float32(1e36)
    large[128:] *= np.float32(1e20)
    c["large_values"] = large.astype(np.float32)
    c["ties"] = tie_block()
    # many blocks: several second-level blocks, a partial one, and varied scales
    many = rng.standard_normal(64 * 700 + 33).astype(np.float32)
    many *= np.repeat(rng.uniform(0.001, 3.0, 701).astype(np.float32), 64)[: len(many)]
    c["many_blocks"] = many.astype(np.float32)
    return c


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    manifest = {"bitsandbytes": bitsandbytes.__version__, "torch": torch.__version__,
                "reference": "bitsandbytes CPU (quantize_4bit / dequantize_4bit)",
                "cases": []}
    F.create_dynamic_map(signed=True).numpy().astype(np.float32).tofile(
        os.path.join(OUT, "dynamic_map.f32"))

    for name, w in cases().items():
        for dq in (1, 0):
            if dq == 0 and name not in ("random", "partial", "zero_blocks", "tiny_values",
                                          "huge_values"):
                continue
            case = name if dq else name + "_nodq"
            arrays = quantize(w, dq)
            if name == "huge_values" and dq:
                # the float32 sum of the scales overflows in bnb, giving NaN weights; rubric
                # refuses such a tensor instead (test_nf4.c checks both facts)
                assert np.isnan(arrays["deq"]).any()
            arrays["w"] = w
            save(case, arrays)
            manifest["cases"].append({"name": case, "n": int(len(w)), "double_quant": dq,
                                      "pattern": 0})

    # a large pattern input (about 2.3 M weights, 36000 blocks): only its scales and the edges
    n = 64 * 36000 + 45
    arrays = quantize(pattern(n), 1)
    codes = arrays["codes"]
    arrays["codes"] = np.concatenate([codes[:EDGE], codes[-EDGE:]])
    arrays["deq"] = arrays["deq"][:EDGE]
    save("pattern", arrays)
    manifest["cases"].append({"name": "pattern", "n": n, "double_quant": 1, "pattern": 1,
                              "edge": EDGE})

    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(manifest['cases'])} cases to {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
