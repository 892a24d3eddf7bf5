#!/usr/bin/env python3
"""One LoRA training step: rubric (CPU backend) vs transformers + PEFT (torch CPU), same
threads, same packed batch, same run.

Model: a random Qwen3 with hidden 512, 4 layers, 8 heads (4 kv heads, head_dim 64),
intermediate 1536, the real vocabulary 151936, tied embeddings; LoRA r 16, alpha 32 on all
seven modules. Batch: one packed sequence of 1024 tokens cut into samples (positions restart,
attention stays inside a sample). Two label patterns:
  rubric   each sample is a ~200-token prompt and an 8-token answer; only answers supervised
           (the shape of rubric's training data)
  dense    every next token supervised (worst case for rubric's LM head)
torch gets the same packing through a 4D block-diagonal mask and restarting position_ids, SDPA
attention, and computes the loss as sum over supervised tokens / count.

usage (from the source root, after building build-model):
  python3 bench/bench_train_step.py [--build build-model] [--threads 2] [--steps 3]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SAMPLE_PROMPT, SAMPLE_ANSWER, SEQ = 196, 8, 1024


def make_model(folder):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=512, intermediate_size=1536,
                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=64, tie_word_embeddings=True, max_position_embeddings=4096)
    Qwen3ForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)


def make_batch(pattern):
    import random
    rnd = random.Random(1)
    tokens, positions, targets, cu = [], [], [], [0]
    while cu[-1] < SEQ:
        n = min(SAMPLE_PROMPT + SAMPLE_ANSWER, SEQ - cu[-1])
        n_prompt = max(1, n - SAMPLE_ANSWER)
        ids = [rnd.randrange(3, 151000) for _ in range(n)]
        for t in range(n):
            tokens.append(ids[t])
            positions.append(t)
            sup = t + 1 < n and (pattern == "dense" or t + 1 >= n_prompt)
            targets.append(ids[t + 1] if sup else -1)
        cu.append(cu[-1] + n)
    return dict(tokens=tokens, positions=positions, targets=targets, cu_seqlens=cu)


def torch_step(folder, batch_path, threads, steps, r):
    """Runs in a child process so its peak RSS is its own."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    batch = json.load(open(batch_path))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj",
                                                             "o_proj", "gate_proj", "up_proj",
                                                             "down_proj"]))
    model.train()
    T = len(batch["tokens"])
    cu = batch["cu_seqlens"]
    mask = torch.zeros(T, T, dtype=torch.bool)
    for s in range(len(cu) - 1):
        mask[cu[s]:cu[s + 1], cu[s]:cu[s + 1]] = torch.tril(
            torch.ones(cu[s + 1] - cu[s], cu[s + 1] - cu[s], dtype=torch.bool))
    ids = torch.tensor([batch["tokens"]])
    pos = torch.tensor([batch["positions"]])
    tg = torch.tensor(batch["targets"])
    sel = (tg >= 0).nonzero()[:, 0]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            weight_decay=0.0)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask[None, None],
                       use_cache=False).logits[0]
        loss = F.cross_entropy(logits[sel], tg[sel], reduction="sum") / len(sel)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
    # VmHWM: this process image's own peak (ru_maxrss would inherit the parent's)
    peak = [float(line.split()[1]) / 1024.0 for line in open("/proc/self/status")
            if line.startswith("VmHWM:")][0]
    print(json.dumps(dict(ms_per_step=sorted(times[1:])[len(times[1:]) // 2],
                          ms_best=min(times[1:]),
                          loss=loss.item(), peak_rss_mb=peak)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build-model")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--patterns", default="rubric,dense")
    ap.add_argument("--torch-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_step(args.torch_child[0], args.torch_child[1], args.threads, args.steps,
                   args.lora_r)
        return

    exe = os.path.join(args.build, "bench", "bench_train_step")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    # OpenBLAS 0.3.21 takes some AVX-512 Xeons for "Prescott" (SSE3): name the right kernels
    flags = open("/proc/cpuinfo").read()
    if "OPENBLAS_CORETYPE" not in env:
        env["OPENBLAS_CORETYPE"] = ("SkylakeX" if " avx512f" in flags else
                                    "Haswell" if " avx2" in flags else "")
    # idle OpenMP threads must sleep, not spin, or they steal the cores OpenBLAS's own
    # (pthread) pool computes on; torch gets the same setting
    env.setdefault("OMP_WAIT_POLICY", "passive")
    print(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "model")
        make_model(folder)
        print(f"threads {args.threads}, steps {args.steps} (median after 1 warm-up), "
              f"LoRA r {args.lora_r}, seq {SEQ}, vocab 151936, hidden 512, 4 layers")
        for pattern in args.patterns.split(","):
            batch = make_batch(pattern)
            bpath = os.path.join(tmp, f"batch_{pattern}.json")
            json.dump(batch, open(bpath, "w"))
            n_sup = sum(t >= 0 for t in batch["targets"])
            ours = json.loads(subprocess.run(
                [exe, folder, bpath, str(args.steps), str(args.lora_r)], env=env, check=True,
                capture_output=True, text=True).stdout)
            ref = json.loads(subprocess.run(
                [sys.executable, __file__, "--threads", str(args.threads), "--steps",
                 str(args.steps), "--lora-r", str(args.lora_r), "--torch-child", folder, bpath],
                env=env, check=True, capture_output=True, text=True).stdout.strip()
                .splitlines()[-1])
            print(f"\n[{pattern}] {len(batch['cu_seqlens']) - 1} samples, {n_sup} supervised "
                  f"tokens")
            print(f"  rubric        {ours['ms_per_step']:9.1f} ms/step (best "
                  f"{ours['ms_best']:.1f})  loss "
                  f"{ours['loss']:.5f}  peak RSS {ours['peak_rss_mb']:7.1f} MB "
                  f"(model {ours['model_mb']:.1f} MB)")
            print(f"  torch+PEFT    {ref['ms_per_step']:9.1f} ms/step (best "
                  f"{ref['ms_best']:.1f})  loss {ref['loss']:.5f}"
                  f"  peak RSS {ref['peak_rss_mb']:7.1f} MB")
            print(f"  speed-up      {ref['ms_per_step'] / ours['ms_per_step']:9.2f}x median, "
                  f"{ref['ms_best'] / ours['ms_best']:.2f}x best (goal 1.5x)")
            print(f"  rubric GFLOP/s {ours['achieved_gflops']:8.1f} (median step) of sgemm "
                  f"{ours['sgemm_gflops']:.1f} = "
                  f"{100 * ours['achieved_gflops'] / ours['sgemm_gflops']:.0f}% (goal 50%), "
                  f"{ours['gflop_per_step']:.1f} GFLOP/step")


if __name__ == "__main__":
    main()
