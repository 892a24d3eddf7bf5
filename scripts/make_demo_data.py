#!/usr/bin/env python3
"""Regenerate the bundled demo data (data/emobank/) from the full EmoBank Alpaca files.

Usage: python3 scripts/make_demo_data.py [SOURCE_DIR]   (default ../shared/data/emobank)

Takes a seeded random subset of EmoBank's official train split for training and of its dev split
as the held-out test set, so the demo never scores rows it trained on.
"""
import json
import random
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/emobank")
DST = Path(__file__).resolve().parent.parent / "data" / "emobank"
N_TRAIN, N_TEST, SEED = 2000, 300, 20261203


def subset(name, n, rng):
    rows = (SRC / name).read_text(encoding="utf-8").splitlines()
    picked = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def main():
    rng = random.Random(SEED)
    DST.mkdir(parents=True, exist_ok=True)
    for src_name, dst_name, n in (("train.jsonl", "train.jsonl", N_TRAIN),
                                  ("dev.jsonl", "test.jsonl", N_TEST)):
        lines = subset(src_name, n, rng)
        for line in lines:
            json.loads(line)  # every bundled line is valid JSON
        (DST / dst_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{DST / dst_name}: {len(lines)} rows")


if __name__ == "__main__":
    main()
