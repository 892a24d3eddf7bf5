#!/usr/bin/env python3
"""Encode throughput: rubric's tokenizer vs Hugging Face `tokenizers`, single thread, same run.

    python3 bench/bench_tokenizer.py [--bench build/bench/bench_tokenizer]
        [--tokenizer share/qwen3-tokenizer] [--data ../shared/data/ellipse/train.jsonl]

Both sides encode every field (instruction, input, output) of every row, one warm-up pass then
the best of --passes timed passes, with added tokens matched (encode(text,
add_special_tokens=False)). HF runs encode_batch with TOKENIZERS_PARALLELISM=false (one thread,
no per-call Python overhead). The ids are compared through an xxh64 digest of all of them.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

import xxhash  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def hf_texts(path):
    texts = []
    for line in open(path, encoding="utf-8"):
        row = json.loads(line)
        texts += [row[k] for k in ("instruction", "input", "output") if isinstance(row.get(k), str)]
    return texts


def ids_bytes(ids):
    return b"".join(i.to_bytes(4, "little") for i in ids)


def hf_pass(tok, texts):
    t0 = time.perf_counter()
    encs = tok.encode_batch(texts, add_special_tokens=False)
    dt = time.perf_counter() - t0
    return dt, encs


def pathological():
    x, letters = 12345, []
    for _ in range(40000):  # the C bench's linear congruential letters
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        letters.append(chr(ord("a") + (x >> 16) % 26))
    return {"100000 digits": "0123456789" * 10000, "50000 spaces": " " * 50000,
            "40000-letter word": "".join(letters)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", default="build/bench/bench_tokenizer")
    ap.add_argument("--tokenizer", default="share/qwen3-tokenizer")
    ap.add_argument("--data", default="../shared/data/ellipse/train.jsonl")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()

    # rubric
    out = subprocess.run([args.bench, args.tokenizer, args.data, str(args.passes)],
                         capture_output=True, text=True, check=True)
    results = [json.loads(line) for line in out.stdout.splitlines()]
    data = results[0]
    patho = {r["case"]: r for r in results[1:]}

    # Hugging Face
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    hf_load = time.perf_counter() - t0
    texts = hf_texts(args.data)
    hf_pass(tok, texts)
    best, encs = min((hf_pass(tok, texts) for _ in range(args.passes)), key=lambda r: r[0])
    h = xxhash.xxh64(seed=0)
    tokens = 0
    for e in encs:
        h.update(ids_bytes(e.ids))
        tokens += len(e.ids)
    same = h.hexdigest() == data["digest"] and tokens == data["tokens"]

    mb = data["bytes"] / 1e6
    print(f"data: {args.data}: {data['texts']} texts, {mb:.2f} MB, {tokens} tokens")
    print(f"{'':18} {'MB/s':>9} {'tokens/s':>12} {'load s':>8}")
    print(f"{'rubric':18} {mb / data['seconds']:9.2f} {data['tokens'] / data['seconds']:12.0f} "
          f"{data['load_seconds']:8.3f}")
    print(f"{'HF tokenizers':18} {mb / best:9.2f} {tokens / best:12.0f} {hf_load:8.3f}")
    print(f"ratio rubric/HF: {best / data['seconds']:.2f}x   identical ids: {same}")

    print(f"{'pathological':18} {'rubric s':>9} {'HF s':>9} {'ratio':>7} ids")
    for name, text in pathological().items():
        dt = float("inf")
        for _ in range(5):  # best of 5 calls, as the C side
            t0 = time.perf_counter()
            ids = tok.encode(text, add_special_tokens=False).ids
            dt = min(dt, time.perf_counter() - t0)
        r = patho[name]
        ok = xxhash.xxh64(ids_bytes(ids), seed=0).hexdigest() == r["digest"]
        print(f"{name:18} {r['seconds']:9.4f} {dt:9.4f} {dt / max(r['seconds'], 1e-9):6.1f}x "
              f"{'identical' if ok else 'DIFFERENT'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
