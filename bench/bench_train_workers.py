#!/usr/bin/env python3
"""Training throughput of `rubric train` with 1 and 2 workers on this machine, same global batch.

usage: bench/bench_train_workers.py [RUBRIC_BIN] [STEPS]

A random Qwen3 (hidden 128, 4 layers, Qwen3's vocabulary) from `rubric init-model` and 200
synthetic Alpaca rows; 1 worker (one process, gradient_accumulation_steps 4) against 2 workers
(mpirun -np 3: coordinator + 2, accumulation 2), each worker with cores / workers OpenMP threads.
Reports the median over steps 2..STEPS of tokens/s and ms/step from metrics.jsonl, the ratio
2 workers / 1 worker, and the bytes each worker sent per step next to ZeRO-2's theoretical
2 (N-1)/N x 4 bytes x n_padded.
"""
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile

RUBRIC = sys.argv[1] if len(sys.argv) > 1 else "build/rubric"
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
CORES = os.cpu_count() or 1


def setup(root):
    subprocess.run([RUBRIC, "init-model", "--out", f"{root}/model", "--hidden", "128",
                    "--layers", "4", "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                    "--intermediate", "256", "--dtype", "f32"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = random.Random(5)
    words = "the essay argues that students should learn science and art every day".split()
    with open(f"{root}/train.jsonl", "w") as f:
        for _ in range(200):
            text = " ".join(r.choice(words) for _ in range(r.randint(20, 60)))
            out = " ".join(str(r.randint(1, 5)) for _ in range(4))
            f.write(json.dumps({"instruction": "Score the essay.", "input": text,
                                "output": out}) + "\n")
    with open(f"{root}/cfg.yml", "w") as f:
        f.write(f"""base_model: {root}/model
datasets:
  - path: {root}/train.jsonl
    type: alpaca
dataset_prepared_path: {root}/prepared
val_set_size: 0
sequence_len: 256
adapter: lora
lora_r: 16
lora_alpha: 32
micro_batch_size: 2
max_steps: {STEPS}
learning_rate: 0.001
eval_steps: 0
save_steps: 0
""")


def run(root, workers):
    out = f"{root}/out{workers}"
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, CORES // workers)))
    cmd = [RUBRIC, "train", f"{root}/cfg.yml", "--set", f"output_dir={out}",
           "--set", f"gradient_accumulation_steps={4 // workers}"]
    if workers > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-x", "OMP_NUM_THREADS",
               "-np", str(workers + 1)] + cmd
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if '"loss"' in l][1:]
    info = subprocess.run([RUBRIC, "inspect", "--no-config", f"{out}/checkpoint-{STEPS}.h5"],
                          stdout=subprocess.PIPE, text=True, check=True).stdout
    n = int(info.split(" tensors, ")[1].split()[0])
    return (statistics.median(r["tok_per_s"] for r in rows),
            statistics.median(r["step_ms"] for r in rows),
            rows[-1]["bytes_sent_per_worker"], n)


def main():
    root = tempfile.mkdtemp(prefix="rubric_bench_")
    try:
        setup(root)
        res = {w: run(root, w) for w in (1, 2)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"bench_train_workers: {CORES} cores, {STEPS} steps, global batch 8 x 256 tokens")
    print(f"{'workers':>8} {'tok/s':>10} {'ms/step':>10} {'bytes/worker/step':>18} "
          f"{'ZeRO-2 theory':>14}")
    for w, (tps, ms, b, n) in res.items():
        padded = -(-n // (16 * w)) * 16 * w
        theory = 2 * (w - 1) / w * 4 * padded
        print(f"{w:>8} {tps:>10.0f} {ms:>10.0f} {b:>18} {theory:>14.0f}")
    print(f"2 workers / 1 worker: throughput {res[2][0] / res[1][0]:.2f}x "
          f"({res[1][3]} trainable parameters)")


if __name__ == "__main__":
    main()
