#!/usr/bin/env python3
"""NF4 dequantization throughput: rubric (worker/nf4.c) vs bitsandbytes' CPU path, same run.

    python3 bench/bench_nf4.py [--bench build/bench/bench_nf4] [--rows 4096] [--cols 4096]
        [--threads 2] [--passes 5]

One random weight matrix (fp32, N(0, 0.02)) is quantized by both sides (NF4, blocksize 64,
double quantization). Each side then dequantizes the whole tensor --passes times and keeps its
best time. rubric also dequantizes in tiles of 64 x 4096 weights, as its matrix products do.
Both sides use --threads threads (OMP_NUM_THREADS for rubric, torch.set_num_threads for
bitsandbytes). Throughput is reported as GB/s of fp32 output written. The dequantized tensors
are compared by an xxh64 digest. bitsandbytes quantizes on one torch thread, so that the mean
of the block scales is summed as rubric sums it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import xxhash
import bitsandbytes
import bitsandbytes.functional as F


def bnb_side(w, threads, passes):
    torch.set_num_threads(1)
    t = torch.from_numpy(w)
    t0 = time.perf_counter()
    q, st = F.quantize_4bit(t, blocksize=64, compress_statistics=True, quant_type="nf4")
    quantize_s = time.perf_counter() - t0
    torch.set_num_threads(threads)
    out = F.dequantize_4bit(q, st)  # warm-up
    best = 1e30
    for _ in range(passes):
        t0 = time.perf_counter()
        out = F.dequantize_4bit(q, st)
        best = min(best, time.perf_counter() - t0)
    digest = xxhash.xxh64(out.numpy().astype(np.float32).tobytes()).hexdigest()
    return {"quantize_seconds": quantize_s, "dequant_seconds": best, "digest": digest}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/bench/bench_nf4")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()

    w = (np.random.default_rng(0).standard_normal(args.rows * args.cols) * 0.02)
    w = w.astype(np.float32)
    with tempfile.NamedTemporaryFile(suffix=".f32") as f:
        w.tofile(f.name)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        run = subprocess.run([args.bench, f.name, str(args.passes)], env=env, check=True,
                             capture_output=True, text=True)
        ours = json.loads(run.stdout.splitlines()[-1])
    ref = bnb_side(w, args.threads, args.passes)

    gb = w.size * 4 / 1e9
    print(f"NF4 dequantize, {args.rows} x {args.cols} weights, {args.threads} threads, "
          f"best of {args.passes} (bitsandbytes {bitsandbytes.__version__}, CPU)")
    print(f"  rubric whole tensor   {gb / ours['dequant_seconds']:8.2f} GB/s")
    print(f"  rubric 64-row tiles   {gb / ours['dequant_tiles_seconds']:8.2f} GB/s")
    print(f"  bitsandbytes          {gb / ref['dequant_seconds']:8.2f} GB/s")
    print(f"  ratio rubric/bnb      {ref['dequant_seconds'] / ours['dequant_seconds']:8.2f}x "
          f"(tiles {ref['dequant_seconds'] / ours['dequant_tiles_seconds']:.2f}x)")
    print(f"  quantize: rubric {ours['quantize_seconds']:.3f} s (OpenMP), "
          f"bitsandbytes {ref['quantize_seconds']:.3f} s (1 torch thread)")
    same = ours["digest"] == ref["digest"]
    print(f"  dequantized values bit-identical: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
