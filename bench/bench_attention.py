#!/usr/bin/env python3
"""Causal grouped-query attention, forward and backward: rubric's attention op vs PyTorch's
scaled_dot_product_attention on the same shapes, same device, same run, reported as ratios.

Shape: N_SEG packed segments of SEQ tokens each (rubric: one packed batch with cu_seqlens;
torch: a [N_SEG, heads, SEQ, d] batch with is_causal, the same pairs), Qwen3-0.6B's heads by
default (16 query heads, 8 kv heads, head_dim 128).

  CPU (always): rubric's CPU backend against torch on the CPU, both fp32, the same threads.
  GPU (when torch sees one and rubric was built with CUDA): rubric's CUDA backend in fp32 and
  in bf16 (tensor cores) against torch in fp32 and in bf16 (its flash kernel).

usage (from the source root, after `ninja -C build`):
  python3 bench/bench_attention.py [--build build] [--threads 2] [--reps 3]
                                   [--n-seg 4] [--seq 512] [--gpu-n-seg 8] [--gpu-seq 1024]
"""
import argparse
import json
import os
import subprocess
import sys


def rubric(build, backend, precision, n_seg, seq, heads, kv, d, reps, env):
    exe = os.path.join(build, "bench", "bench_attention")
    out = subprocess.run([exe, backend, precision, str(n_seg), str(seq), str(heads), str(kv),
                          str(d), str(reps)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_side(device, dtype, n_seg, seq, heads, kv, d, reps):
    import time
    import torch
    import torch.nn.functional as F
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(h):
        return (torch.rand(n_seg, h, seq, d, generator=g) * 2 - 1).to(device, dtype)

    q, k, v, go = rnd(heads), rnd(kv), rnd(kv), rnd(heads)
    for t in (q, k, v):
        t.requires_grad_(True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fwd, bwd = [], []
    for r in range(reps + 1):
        for t in (q, k, v):
            t.grad = None
        sync()
        t0 = time.perf_counter()
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        sync()
        t1 = time.perf_counter()
        o.backward(go)
        sync()
        t2 = time.perf_counter()
        if r:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
    fwd.sort()
    bwd.sort()
    return {"fwd_ms": fwd[len(fwd) // 2], "bwd_ms": bwd[len(bwd) // 2]}


def row(label, r, t):
    print(f"| {label} | {r['fwd_ms']:.2f} / {r['bwd_ms']:.2f} | "
          f"{t['fwd_ms']:.2f} / {t['bwd_ms']:.2f} | "
          f"{r['fwd_ms'] / t['fwd_ms']:.2f}x / {r['bwd_ms'] / t['bwd_ms']:.2f}x | "
          f"{r['fwd_tflops']:.3f} / {r['bwd_tflops']:.3f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--n-seg", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--gpu-n-seg", type=int, default=8)
    ap.add_argument("--gpu-seq", type=int, default=1024)
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("bench_attention.py: needs torch (pip install torch)")
    torch.set_num_threads(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads),
               OPENBLAS_NUM_THREADS=str(a.threads))
    shape = (a.heads, a.kv_heads, a.head_dim)

    print(f"attention fwd / bwd, {a.heads}/{a.kv_heads} heads x {a.head_dim}, causal, "
          f"median of {a.reps} after a warm-up; ratio = rubric time / torch time (< 1: "
          f"rubric faster)\n")
    print("| run | rubric ms fwd / bwd | torch ms fwd / bwd | ratio fwd / bwd | "
          "rubric TFLOP/s fwd / bwd |")
    print("|---|---|---|---|---|")
    r = rubric(a.build, "cpu", "fp32", a.n_seg, a.seq, *shape, a.reps, env)
    t = torch_side("cpu", torch.float32, a.n_seg, a.seq, *shape, a.reps)
    row(f"CPU fp32, {a.n_seg} x {a.seq}, {a.threads} threads", r, t)

    if not torch.cuda.is_available():
        print("\n(no GPU: the CUDA rows need torch with a GPU and a rubric built with CUDA)")
        return
    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        r = rubric(a.build, "cuda", prec, a.gpu_n_seg, a.gpu_seq, *shape, a.reps, env)
        if r["precision"] != prec:
            print(f"| GPU {prec} | rubric held {r['precision']} (RUBRIC_CUDA_GEMM?) | | | |")
            continue
        t = torch_side("cuda", dtype, a.gpu_n_seg, a.gpu_seq, *shape, a.reps)
        row(f"GPU {prec}, {a.gpu_n_seg} x {a.gpu_seq} ({torch.cuda.get_device_name()})", r, t)


if __name__ == "__main__":
    main()
