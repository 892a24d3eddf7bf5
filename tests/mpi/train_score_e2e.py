#!/usr/bin/env python3
"""`rubric train` with score_after_train / test_datasets: scoring on the training ranks.

Run by meson (suite mpi) with RUBRIC_BIN set; needs mpirun. Builds a tiny random Qwen3
(`rubric init-model`, hidden 32, 1 layer) and takes a few dozen rows of the bundled demo data
(data/emobank), then:

  after_train   `mpirun -np 3 rubric train` (2 workers) for a few steps with score_after_train
                and a test_datasets entry: exit 0, one log line naming each predictions file;
                each predictions file has every input row once, in order, with 3 scores in
                0..5; the metrics JSON has the expected keys and its row counts and metrics
                agree with numpy on the predictions; the majority baseline's answers are the
                per-position modes of the TRAINING rows' outputs (computed here independently);
                and the scores equal, line for line, those of a separate `mpirun -np 3 rubric
                score --adapter <final checkpoint>` on the same file (same model, same rows),
                and the same bytes with --backend cpu-staged (the device-memory paths),
                while the base model without the adapter scores differently (so the trained
                weights are what both runs used)
  missing_file  a score_after_train file that does not exist: exit 2 before training, naming
                the file, and no checkpoint written

usage: train_score_e2e.py [CASE...]   (default: all)
"""
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

RUBRIC = os.environ.get("RUBRIC_BIN", "build/rubric")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
STEPS = 4
N_TRAIN, N_TEST, N_TEST2 = 40, 16, 6

CONFIG = """base_model: {root}/model
chat_template: qwen3
datasets:
  - path: {root}/train.jsonl
    type: alpaca
dataset_prepared_path: {root}/prepared
val_set_size: 0
sequence_len: 512
sample_packing: true
adapter: lora
lora_r: 8
lora_alpha: 32
lora_dropout: 0.0
micro_batch_size: 1
gradient_accumulation_steps: 1
max_steps: {steps}
learning_rate: 0.05
lr_scheduler: constant
save_steps: 0
output_dir: {root}/out
seed: 5
score_after_train: {score_file}
test_datasets:
  - path: {root}/extra.jsonl
"""


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def head(src, dst, n, skip=0):
    with open(src) as f:
        lines = f.readlines()[skip:skip + n]
    with open(dst, "w") as f:
        f.writelines(lines)
    return [json.loads(l) for l in lines]


def setup(root):
    subprocess.run([RUBRIC, "init-model", "--out", f"{root}/model", "--hidden", "32",
                    "--layers", "1", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
                    "--intermediate", "64"], check=True, stdout=subprocess.DEVNULL)
    data = os.path.join(os.environ.get("RUBRIC_SOURCE_ROOT", "."), "data", "emobank")
    train = head(f"{data}/train.jsonl", f"{root}/train.jsonl", N_TRAIN)
    test = head(f"{data}/test.jsonl", f"{root}/test.jsonl", N_TEST)
    extra = head(f"{data}/test.jsonl", f"{root}/extra.jsonl", N_TEST2, skip=N_TEST)
    return train, {"test": test, "extra": extra}


def write_config(root, score_file):
    path = f"{root}/cfg.yml"
    with open(path, "w") as f:
        f.write(CONFIG.format(root=root, steps=STEPS, score_file=score_file))
    return path


def run(cmd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout


def scores_of(answer):
    return [int(x) for x in answer.split()]


def check_predictions(path, rows):
    with open(path) as f:
        preds = [json.loads(l) for l in f]
    if len(preds) != len(rows):
        fail(f"{path}: {len(preds)} lines for {len(rows)} input rows")
    for i, p in enumerate(preds):
        if p["row"] != i:
            fail(f"{path}: line {i + 1} is row {p['row']} (not every row once, in order)")
        if p["status"] not in ("ok", "off_grammar"):
            fail(f"{path}: row {i}: status {p['status']}")
        if len(p["scores"]) != 3 or not all(0 <= s <= 5 for s in p["scores"]):
            fail(f"{path}: row {i}: scores {p['scores']}")
        if p["text"] != " ".join(map(str, p["scores"])):
            fail(f"{path}: row {i}: text {p['text']!r} is not the scores")
    return preds


def modes(rows):
    """Per position, the most common truth score (ties: the lowest)."""
    truths = [scores_of(r["output"]) for r in rows]
    out = []
    for pos in range(len(truths[0])):
        c = collections.Counter(t[pos] for t in truths)
        best = max(c.values())
        out.append(min(s for s, n in c.items() if n == best))
    return out


def check_metrics(path, preds, rows, train_rows):
    import numpy as np
    with open(path) as f:
        m = json.load(f)
    keys = {"rows", "bad_rows", "unlabelled_rows", "off_grammar_rows", "exact_match",
            "off_grammar_rate", "accuracy", "off_by_one_accuracy", "mae", "pearson",
            "positions", "majority_baseline"}
    if not keys <= set(m):
        fail(f"{path}: missing keys {sorted(keys - set(m))}")
    truth = np.array([scores_of(r["output"]) for r in rows])
    pred = np.array([p["scores"] for p in preds])
    if m["rows"] != len(rows) or m["bad_rows"] != 0 or len(m["positions"]) != 3:
        fail(f"{path}: rows {m['rows']}, bad {m['bad_rows']}, {len(m['positions'])} positions")
    want = {"exact_match": float((truth == pred).all(axis=1).mean()),
            "accuracy": float((truth == pred).mean()),
            "off_by_one_accuracy": float((abs(truth - pred) <= 1).mean()),
            "mae": float(abs(truth - pred).mean())}
    for k, v in want.items():
        if abs(m[k] - v) > 1e-9:
            fail(f"{path}: {k} {m[k]} != numpy's {v}")
    base = m["majority_baseline"]
    if base.get("answers") != modes(train_rows):
        fail(f"{path}: baseline answers {base.get('answers')} are not the training data's "
             f"modes {modes(train_rows)}")
    base_acc = float((truth == np.array(modes(train_rows))).mean())
    if abs(base["accuracy"] - base_acc) > 1e-9:
        fail(f"{path}: baseline accuracy {base['accuracy']} != {base_acc}")


def case_after_train(root, train, tests):
    cfg = write_config(root, f"{root}/test.jsonl")
    rc, out = run(MPIRUN + ["-np", "3", RUBRIC, "train", cfg])
    if rc != 0:
        print(out)
        fail(f"train with score_after_train exited {rc}")
    ckpt = f"{root}/out/checkpoint-{STEPS}.h5"
    if not os.path.exists(ckpt):
        fail(f"no final checkpoint {ckpt}")
    for name, rows in tests.items():
        preds_path = f"{root}/out/predictions-{name}.jsonl"
        metrics_path = f"{root}/out/predictions-{name}.metrics.json"
        line = [l for l in out.splitlines() if "score_after_train:" in l and preds_path in l]
        if not line or metrics_path not in line[0]:
            print(out)
            fail(f"no log line naming {preds_path} and {metrics_path}")
        preds = check_predictions(preds_path, rows)
        check_metrics(metrics_path, preds, rows, train)

        # the same adapter scored by a separate job: the very same scores
        sep = f"{root}/separate-{name}.jsonl"
        rc, sout = run(MPIRUN + ["-np", "3", RUBRIC, "score", "--model", f"{root}/model",
                                 "--adapter", ckpt, "--input", f"{root}/{name}.jsonl",
                                 "--output", sep])
        if rc != 0:
            print(sout)
            fail(f"rubric score --adapter exited {rc}")
        with open(sep) as f:
            separate = [json.loads(l) for l in f]
        if separate != preds:
            diff = [i for i, (a, b) in enumerate(zip(preds, separate)) if a != b]
            fail(f"{name}: scores after training differ from `rubric score --adapter` "
                 f"at rows {diff[:10]} (of {len(preds)})")
        # and by the device-memory paths (cpu-staged: the checkpoint read into a host copy
        # and uploaded, logits downloaded): byte for byte the same file
        staged = f"{root}/staged-{name}.jsonl"
        rc, gout = run([RUBRIC, "score", "--model", f"{root}/model", "--adapter", ckpt,
                        "--input", f"{root}/{name}.jsonl", "--output", staged,
                        "--backend", "cpu-staged"])
        if rc != 0:
            print(gout)
            fail(f"rubric score --adapter --backend cpu-staged exited {rc}")
        with open(sep, "rb") as a, open(staged, "rb") as b:
            if a.read() != b.read():
                fail(f"{name}: --backend cpu-staged predictions differ from cpu's")
    # rows without "output" (nothing to infer K from): K comes from the checkpoint, which
    # records its training data's scores per row, as `rubric inspect` shows
    k = len(tests["test"][0]["output"].split())
    bare = f"{root}/bare.jsonl"
    with open(bare, "w") as f:
        for r in tests["test"][:8]:
            f.write(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n")
    rc, bout = run([RUBRIC, "score", "--model", f"{root}/model", "--adapter", ckpt,
                    "--input", bare, "--output", f"{root}/bare-preds.jsonl"])
    if rc != 0:
        print(bout)
        fail(f"rubric score --adapter of rows without output exited {rc}")
    with open(f"{root}/bare-preds.jsonl") as f:
        bare_preds = [json.loads(l) for l in f]
    if [len(p["scores"]) for p in bare_preds] != [k] * 8:
        fail(f"rows without output: expected {k} scores per row from the checkpoint, got "
             f"{[p['scores'] for p in bare_preds]}")
    rc, iout = run([RUBRIC, "inspect", ckpt])
    if rc != 0 or f"answers       {k} scores per row" not in iout:
        print(iout)
        fail("rubric inspect does not show the checkpoint's scores per row")
    # the comparison means something only if the adapter matters: the base model alone
    # scores differently
    base = f"{root}/base-test.jsonl"
    rc, bout = run(MPIRUN + ["-np", "3", RUBRIC, "score", "--model", f"{root}/model",
                             "--config", cfg, "--input", f"{root}/test.jsonl", "--output", base])
    if rc != 0:
        print(bout)
        fail(f"rubric score of the base model exited {rc}")
    with open(base) as f:
        base_preds = [json.loads(l) for l in f]
    trained = check_predictions(f"{root}/out/predictions-test.jsonl", tests["test"])
    if base_preds == trained:
        fail("the base model scores like the trained adapter: the comparison proves nothing")
    print(f"after_train: {len(tests)} files scored on the training ranks, equal to "
          f"`rubric score --adapter`; trained {[p['text'] for p in trained][:3]}, base "
          f"{[p['text'] for p in base_preds][:3]}")


def case_missing_file(root, train, tests):
    shutil.rmtree(f"{root}/out", ignore_errors=True)
    cfg = write_config(root, f"{root}/no-such-file.jsonl")
    rc, out = run(MPIRUN + ["-np", "3", RUBRIC, "train", cfg], timeout=120)
    if rc != 2 or "no-such-file.jsonl" not in out:
        print(out)
        fail(f"a missing score_after_train file: exit {rc} (want 2, naming the file)")
    ckpts = [f for f in os.listdir(f"{root}/out")] if os.path.isdir(f"{root}/out") else []
    if any(f.startswith("checkpoint-") for f in ckpts):
        fail("a missing score_after_train file still trained (checkpoint written)")
    print("missing_file: exit 2 before training, naming the file")


CASES = {"after_train": case_after_train, "missing_file": case_missing_file}


def main():
    want = sys.argv[1:] or list(CASES)
    root = tempfile.mkdtemp(prefix="rubric-train-score-")
    try:
        train, tests = setup(root)
        for name in want:
            CASES[name](root, train, tests)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("ok")


if __name__ == "__main__":
    main()
