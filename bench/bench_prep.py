#!/usr/bin/env python3
"""bench_prep.py: `rubric prep` against the Python recipe users run today, same data, same run.

    python3 bench/bench_prep.py [N] [--rubric build/rubric] [--keep]

Builds N rows (default 1,000,000) by varying the rows of ../shared/data/emobank/train.jsonl
(copy k > 0 of a row gets " [k]" appended to its input, so about 0.7% stay exact duplicates,
as in the source), then runs, each in its own process:
  rubric   rubric prep CONFIG (chat_template qwen3, sequence_len 2048, packing, fresh cache)
  python   json.loads + hashlib.md5(json.dumps(row, sort_keys=True)) dedup + the Qwen3 chat
           template rendered as text + HF fast tokenizer (batched, 1000 rows, all cores) +
           the sequence_len filter, keeping the ids (the tokenized dataset it produces)
and prints wall time, peak RSS and the ratios. Goal: rubric >= 10x faster, < 2 GiB.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SRC = os.path.join(ROOT, "..", "shared", "data", "emobank", "train.jsonl")
TOK = os.path.join(ROOT, "share", "qwen3-tokenizer")

RECIPE = r'''
import hashlib, json, sys
from transformers import AutoTokenizer
path, tokdir, seq_len = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(tokdir)

def render(r):
    return ("<|im_start|>system\n" + r["instruction"] + "<|im_end|>\n<|im_start|>user\n" +
            r["input"] + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n" +
            r["output"] + "<|im_end|>")

seen, kept, batch = set(), [], []
rows = dups = too_long = 0
def flush():
    global too_long
    for ids in tok(batch, add_special_tokens=False)["input_ids"]:
        if len(ids) > seq_len:
            too_long += 1
        else:
            kept.append(ids)
    batch.clear()

with open(path, encoding="utf-8") as f:
    for line in f:
        rows += 1
        row = json.loads(line)
        h = hashlib.md5(json.dumps(row, sort_keys=True).encode()).hexdigest()
        if h in seen:
            dups += 1
            continue
        seen.add(h)
        batch.append(render(row))
        if len(batch) == 1000:
            flush()
flush()
print(json.dumps({"rows": rows, "duplicates": dups, "too_long": too_long, "kept": len(kept),
                  "tokens": sum(map(len, kept))}))
'''


def build_data(n, path):
    with open(SRC, encoding="utf-8") as f:
        src = [json.loads(line) for line in f]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            k, r = divmod(i, len(src))
            row = dict(src[r])
            if k:
                row["input"] = row["input"] + " [%d]" % k
            out.write(json.dumps(row) + "\n")


def run(cmd):
    """Run cmd; return (wall seconds, peak RSS bytes, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read(), p.stderr.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit("%s failed (%d):\n%s" % (cmd[0], code, err[-2000:]))
    return wall, ru.ru_maxrss * 1024, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=1_000_000)
    ap.add_argument("--rubric", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()
    rubric = a.rubric
    if not rubric:
        for d in ("build", "build-prep", "builddir"):
            if os.path.exists(os.path.join(ROOT, d, "rubric")):
                rubric = os.path.join(ROOT, d, "rubric")
                break
    if not rubric:
        sys.exit("no rubric binary found: pass --rubric PATH")

    tmp = tempfile.mkdtemp(prefix="bench_prep_")
    data = os.path.join(tmp, "data.jsonl")
    build_data(a.n, data)
    size = os.path.getsize(data)
    cfg = os.path.join(tmp, "cfg.yml")
    with open(cfg, "w") as f:
        f.write("chat_template: qwen3\ndatasets:\n  - path: %s\n    type: alpaca\n"
                "dataset_prepared_path: %s/prepared\nsequence_len: 2048\nsample_packing: true\n"
                % (data, tmp))

    r_wall, r_rss, r_out = run([rubric, "prep", cfg, "--tokenizer", TOK])
    with open(os.path.join(tmp, "prepared", "report.json")) as f:
        rep = json.load(f)
    p_wall, p_rss, p_out = run([sys.executable, "-c", RECIPE, data, TOK, "2048"])
    py = json.loads(p_out.strip().splitlines()[-1])

    print("bench_prep: %d rows, %.1f MB of JSONL, %d cores" % (a.n, size / 1e6, os.cpu_count()))
    print("  %-8s %10s %12s %10s %10s %14s" % ("", "wall s", "rows/s", "peak MiB", "kept",
                                               "tokens"))
    print("  %-8s %10.2f %12.0f %10.0f %10d %14d" % ("rubric", r_wall, a.n / r_wall,
                                                     r_rss / 2**20, rep["kept"], rep["tokens"]))
    print("  %-8s %10.2f %12.0f %10.0f %10d %14d" % ("python", p_wall, a.n / p_wall,
                                                     p_rss / 2**20, py["kept"], py["tokens"]))
    print("  speedup %.1fx (goal 10x), memory ratio %.2f (rubric/python), rubric peak %s 2 GiB"
          % (p_wall / r_wall, r_rss / p_rss, "<" if r_rss < 2**31 else ">="))
    if rep["kept"] != py["kept"] or rep["duplicates"] != py["duplicates"]:
        print("  MISMATCH: rubric kept %d (dups %d), python kept %d (dups %d)"
              % (rep["kept"], rep["duplicates"], py["kept"], py["duplicates"]))
    if rep["tokens"] != py["tokens"]:
        print("  note: token totals differ (%d vs %d): the recipe's text has no trailing "
              "'\\n' either; a difference means different ids" % (rep["tokens"], py["tokens"]))
    if not a.keep:
        subprocess.run(["rm", "-rf", tmp])
    else:
        print("  kept", tmp)


if __name__ == "__main__":
    main()
