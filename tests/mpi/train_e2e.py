#!/usr/bin/env python3
"""End-to-end distributed training checks of `rubric train` (coordinator + ZeRO-2 workers).

Run by meson (suite mpi) with RUBRIC_BIN set; needs mpirun. Builds a tiny random Qwen3 model
(`rubric init-model`) and a 40-row synthetic Alpaca dataset in a temporary folder, then:

  same_batch      1 process (gradient_accumulation_steps 4) and mpirun -np 3 (2 workers, 2
                  accumulation steps: the same global batch of 8 bins) give the same loss and
                  lr at every step (relative tolerance 1e-5: float summation order differs)
  resume_1        the 1-process run resumed from its checkpoint of step 6 (the middle of epoch
                  2: 4 steps per epoch) reproduces steps 7-8 bitwise: loss, lr, grad norm, and
                  the final checkpoint's every dataset hash (xxh64)
  resume_2        the same with 2 workers
  reshard         the 1-worker checkpoint resumed by 2 workers continues within 1e-5 of the
                  uninterrupted run
  sigterm         SIGTERM in the middle of a run: checkpoint, exit 0; --resume auto finishes
                  with rows bitwise equal to the uninterrupted run
  sigterm_score   with score_after_train, one process: SIGTERM checkpoints and exits 0
                  without scoring; the run resumed on 2 workers finishes and scores every row
                  once
  kill_resume     killed in step 6 (checkpoint of step 3), base_model given relative: the
                  checkpoint records it absolute; --resume auto leaves metrics.jsonl with steps
                  1..8 and evaluations 4, 8 once each, in order, bitwise equal to the
                  uninterrupted run; the progress line shows this process's steps, its final
                  line once; resuming the finished run says so and trains nothing (exit 0); a
                  run without --resume into that output_dir is refused (exit 2) untouched
  more_steps      the finished run resumed with a larger max_steps: an info line that it
                  continues to the new max_steps, no warning guessing at other causes
  sigint          one process, no mpirun: Ctrl-C (SIGINT) saves a checkpoint and exits 0, and
                  the stale metrics.jsonl of an earlier run without checkpoints is replaced;
                  a second Ctrl-C ends the process at once
  staged          2 workers on "cpu-staged" (the CPU kernels behind the device-memory paths a
                  GPU takes: model upload, checkpoint slices downloaded to host copies, a
                  resume's state uploaded) give steps 1-8 and the final checkpoint bitwise
                  equal to the plain CPU run, and so does a staged resume from step 6, a
                  QLoRA run (one process), and ZeRO stages 0 and 1 (2 workers)
  backend_choice  --backend gpu and RUBRIC_BACKEND=gpu: exit 2 naming the option or variable;
                  --backend cuda with no GPU (or no CUDA in the build) under mpirun: exit 2
                  within 60 s, each worker naming itself, before the data preparation;
                  workers whose own RUBRIC_BACKEND says cuda follow rank 0's cpu
  bad_output_dir  output_dir a regular file, or a path under one: exit 2 naming the key, the
                  path and the reason, before any work; a lock file that is a symlink (its
                  target untouched) or a folder: exit 2; a run failing before training (no
                  GPU, a FIFO to resume from) leaves no folder it made; a model with fewer
                  vocabulary ids than the data's tokens: exit 2 before step 1
  concurrent      two one-process runs started at once into one output_dir: one trains, the
                  other is refused (exit 2) naming the output_dir and the first's pid and host;
                  the winner's metrics.jsonl and checkpoints are whole; a later run takes the
                  lock file the finished run left
  dead_worker     a worker killed (SIGKILL) in a step: the job exits non-zero within 60 s and
                  the output names rank 2
  hung_worker     a worker stopped (SIGSTOP): the coordinator's deadline ends the job non-zero
                  within 60 s, naming rank 2 (with rank 1, which waits for it in the step's
                  collectives); the progress line once, counting the steps done

usage: train_e2e.py [CASE...]   (default: all)
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RUBRIC = os.environ.get("RUBRIC_BIN", "build/rubric")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe"]
STEPS = 8

CONFIG = """base_model: {root}/model
datasets:
  - path: {root}/train.jsonl
    type: alpaca
dataset_prepared_path: {root}/prepared
val_set_size: 4
sequence_len: 128
sample_packing: true
adapter: lora
lora_r: 4
lora_alpha: 8
lora_dropout: 0.0
micro_batch_size: 2
gradient_accumulation_steps: 4
num_epochs: 3
max_steps: {steps}
learning_rate: 0.002
lr_scheduler: cosine
warmup_steps: 2
max_grad_norm: 1.0
eval_steps: 0
save_steps: 3
output_dir: {root}/out
seed: 11
"""


def setup(root):
    subprocess.run([RUBRIC, "init-model", "--out", f"{root}/model", "--hidden", "32",
                    "--layers", "2", "--heads", "2", "--kv-heads", "1", "--head-dim", "16",
                    "--intermediate", "64", "--dtype", "f32"], check=True,
                   stdout=subprocess.DEVNULL)
    r = random.Random(3)
    words = "the essay argues that students should learn science and art every day".split()
    with open(f"{root}/train.jsonl", "w") as f:
        for _ in range(40):
            text = " ".join(r.choice(words) for _ in range(r.randint(8, 30)))
            out = " ".join(str(r.randint(1, 5)) for _ in range(4))
            f.write(json.dumps({"instruction": "Score the essay on four measures.",
                                "input": text, "output": out}) + "\n")
    with open(f"{root}/cfg.yml", "w") as f:
        f.write(CONFIG.format(root=root, steps=STEPS))


def train(root, out, workers, extra=(), env=None, check=True, popen=False, cwd=None):
    """rubric train with `workers` workers (0: one process alone)."""
    ga = 4 // max(workers, 1)
    cmd = [os.path.abspath(RUBRIC), "train", f"{root}/cfg.yml", "--set", f"output_dir={out}",
           "--set", f"gradient_accumulation_steps={ga}", *extra]
    if workers >= 1:
        exports = [a for k in (env or {}) for a in ("-x", k)]
        cmd = MPIRUN + ["-np", str(workers + 1)] + exports + cmd
    full_env = dict(os.environ, **(env or {}))
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=full_env, text=True, cwd=cwd)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                       text=True, timeout=300, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p


def rows(out):
    """The step rows of metrics.jsonl by step (the last one wins after a resume)."""
    got = {}
    with open(f"{out}/metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                got[r["step"]] = r
    return got


def hashes(path):
    """xxh64 attribute of every dataset of a checkpoint, by full path, via h5dump."""
    txt = subprocess.run(["h5dump", "-A", path], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    out, stack, lines = {}, [], txt.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.endswith("{"):
            kind = s.split()[0]
            name = s.split('"')[1] if kind in ("GROUP", "DATASET") and '"' in s else None
            stack.append(name)
            if s == 'ATTRIBUTE "xxh64" {':
                ds = "/".join(n for n in stack if n and n != "/")
                for j in range(i, i + 8):
                    if lines[j].strip().startswith("(0):"):
                        out[ds] = int(lines[j].split(":")[1])
                        break
        elif s == "}" and stack:
            stack.pop()
    assert out, f"no xxh64 attributes in {path}"
    return out


def close(a, b, tol=1e-5):
    return abs(a - b) <= tol * max(abs(b), 1e-12)


def check_rows(got, ref, steps, exact, what):
    for s in steps:
        for key in ("loss", "lr", "grad_norm"):
            a, b = got[s][key], ref[s][key]
            ok = a == b if exact or key == "lr" else close(a, b)
            assert ok, f"{what}: step {s} {key} {a!r} vs {b!r}"


def copy_ckpt(src_out, step, dst_out):
    os.makedirs(dst_out, exist_ok=True)
    shutil.copy(f"{src_out}/checkpoint-{step}.h5", dst_out)


class Runs:
    def __init__(self, root):
        self.root = root
        self._one = self._two = None

    def one(self):
        if not self._one:
            train(self.root, f"{self.root}/one", 0)
            self._one = f"{self.root}/one"
        return self._one

    def two(self):
        if not self._two:
            train(self.root, f"{self.root}/two", 2)
            self._two = f"{self.root}/two"
        return self._two


def case_same_batch(r):
    a, b = rows(r.one()), rows(r.two())
    check_rows(b, a, range(1, STEPS + 1), False, "2 workers vs 1")
    return f"{STEPS} steps, max rel loss diff " + "%.2g" % max(
        abs(b[s]["loss"] - a[s]["loss"]) / a[s]["loss"] for s in range(1, STEPS + 1))


def resume_case(r, base, workers, name):
    out = f"{r.root}/{name}"
    copy_ckpt(base, 6, out)
    p = train(r.root, out, workers, ["--resume", "auto"])
    assert "resumed from" in p.stdout and "epoch 1" in p.stdout, p.stdout[-2000:]
    check_rows(rows(out), rows(base), (7, 8), True, name)
    ha, hb = hashes(f"{out}/checkpoint-8.h5"), hashes(f"{base}/checkpoint-8.h5")
    assert ha == hb, f"{name}: final checkpoints differ"
    return f"steps 7-8 bitwise, {len(ha)} datasets equal"


def case_resume_1(r):
    return resume_case(r, r.one(), 0, "resume1")


def case_resume_2(r):
    return resume_case(r, r.two(), 2, "resume2")


def case_reshard(r):
    out = f"{r.root}/reshard"
    copy_ckpt(r.one(), 6, out)
    p = train(r.root, out, 2, ["--resume", "auto"])
    assert "written by 1 worker, now 2" in p.stdout, p.stdout[-2000:]
    check_rows(rows(out), rows(r.one()), (7, 8), False, "reshard 1 -> 2 workers")
    return "1-worker checkpoint continued by 2 workers within 1e-5"


def case_staged(r):
    base, out = r.two(), f"{r.root}/staged"
    p = train(r.root, out, 2, ["--backend", "cpu-staged"])
    assert "backend cpu-staged, MPI collectives" in p.stdout, p.stdout[-2000:]
    check_rows(rows(out), rows(base), range(1, STEPS + 1), True, "cpu-staged vs cpu")
    ha, hb = hashes(f"{out}/checkpoint-8.h5"), hashes(f"{base}/checkpoint-8.h5")
    assert ha == hb, "cpu-staged: the final checkpoint differs from the CPU run's"
    res = f"{r.root}/staged_resume"
    copy_ckpt(out, 6, res)
    train(r.root, res, 2, ["--backend", "cpu-staged", "--resume", "auto"])
    check_rows(rows(res), rows(base), (7, 8), True, "cpu-staged resume")
    assert hashes(f"{res}/checkpoint-8.h5") == hb, "cpu-staged resume: checkpoint differs"
    # QLoRA: the NF4 base weights (packed codes, expanded scales) go through the upload too
    q = ["--set", "adapter=qlora", "--set", "load_in_4bit=true"]
    qa, qb = f"{r.root}/qlora_cpu", f"{r.root}/qlora_staged"
    train(r.root, qa, 0, q + ["--backend", "cpu"])
    train(r.root, qb, 0, q + ["--backend", "cpu-staged"])
    check_rows(rows(qb), rows(qa), range(1, STEPS + 1), True, "QLoRA cpu-staged vs cpu")
    # ZeRO stages 0 and 1 stage their collectives through host copies as well
    for stage in (0, 1):
        z = ["--set", f"zero_stage={stage}"]
        za, zb = f"{r.root}/zero{stage}_cpu", f"{r.root}/zero{stage}_staged"
        train(r.root, za, 2, z + ["--backend", "cpu"])
        train(r.root, zb, 2, z + ["--backend", "cpu-staged"])
        check_rows(rows(zb), rows(za), range(1, STEPS + 1), True,
                   f"zero_stage {stage}: cpu-staged vs cpu")
        assert hashes(f"{zb}/checkpoint-8.h5") == hashes(f"{za}/checkpoint-8.h5"), \
            f"zero_stage {stage}: cpu-staged checkpoint differs"
    return (f"8 steps and {len(ha)} datasets bitwise equal to cpu, resume, QLoRA and ZeRO "
            "stages 0 and 1 too")


def case_backend_choice(r):
    out = f"{r.root}/backend"
    p = train(r.root, out, 0, ["--backend", "gpu"], check=False)
    assert p.returncode == 2 and "--backend: unknown backend 'gpu'" in p.stdout, p.stdout
    p = train(r.root, out, 0, env={"RUBRIC_BACKEND": "gpu"}, check=False)
    assert p.returncode == 2 and "RUBRIC_BACKEND in the environment: unknown backend" \
        in p.stdout, p.stdout
    t0 = time.time()
    p = train(r.root, out, 2, ["--backend", "cuda"], check=False)
    took = time.time() - t0
    assert p.returncode != 0 and took < 60, (p.returncode, took, p.stdout[-2000:])
    why = re.findall(r"\[rank (\d)\] error: worker \d on \S+: backend 'cuda': "
                     r"(?:no usable GPU|this rubric was built without CUDA)", p.stdout)
    assert sorted(why) == ["1", "2"], p.stdout[-2000:]
    assert "Exit code:    2" in p.stdout and "prep:" not in p.stdout, p.stdout[-2000:]
    # rank 0's RUBRIC_BACKEND holds for every rank (mpirun does not carry the environment to
    # other nodes): workers whose own environment says cuda still run on rank 0's cpu
    args = [os.path.abspath(RUBRIC), "train", f"{r.root}/cfg.yml", "--set",
            f"output_dir={r.root}/backend_env", "--set", "gradient_accumulation_steps=2"]
    cmd = MPIRUN + ["-np", "1", "env", "RUBRIC_BACKEND=cpu", *args, ":",
                    "-np", "2", "env", "RUBRIC_BACKEND=cuda", *args]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "backend cpu" in p.stdout and "cuda" not in p.stdout, p.stdout[-3000:]
    return (f"bad names exit 2; --backend cuda without a GPU: exit 2 in {took:.0f} s; "
            "workers follow rank 0's RUBRIC_BACKEND")


def case_sigterm(r):
    out = f"{r.root}/sigterm"
    p = train(r.root, out, 0, popen=True)
    log = ""
    for line in p.stdout:
        log += line
        if line.startswith("step 2/"):
            p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    assert rc == 0, f"exit {rc} after SIGTERM:\n{log[-2000:]}"
    assert "signal 15: checkpoint of step" in log, log[-2000:]
    saved = [f for f in os.listdir(out) if f.endswith(".h5")]
    assert saved, "no checkpoint after SIGTERM"
    p2 = train(r.root, out, 0, ["--resume", "auto"])
    assert "resumed from" in p2.stdout
    check_rows(rows(out), rows(r.one()), range(3, STEPS + 1), True, "after SIGTERM")
    return f"saved {saved[0]}, resumed run bitwise equal"


def case_sigterm_score(r):
    """score_after_train: skipped when a signal stops training; done by the resumed run."""
    out = f"{r.root}/sigterm_score"
    with open(f"{r.root}/train.jsonl") as f:
        lines = f.readlines()[:6]
    with open(f"{r.root}/score.jsonl", "w") as f:
        f.writelines(lines)
    extra = ["--set", f"score_after_train={r.root}/score.jsonl"]
    p = train(r.root, out, 0, extra, popen=True)  # mpirun itself ends a job on SIGTERM
    log = ""
    for line in p.stdout:
        log += line
        if line.startswith("step 2/"):
            p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=120)
    preds = f"{out}/predictions-score.jsonl"
    assert rc == 0, f"exit {rc} after SIGTERM:\n{log[-2000:]}"
    assert "signal 15: checkpoint of step" in log, log[-2000:]
    assert not os.path.exists(preds) and "score_after_train:" not in log, \
        f"scored after an interrupted training:\n{log[-2000:]}"
    p2 = train(r.root, out, 2, extra + ["--resume", "auto"])
    assert os.path.exists(preds) and "score_after_train:" in p2.stdout, p2.stdout[-2000:]
    with open(preds) as f:
        got = [json.loads(l)["row"] for l in f]
    assert got == list(range(len(lines))), f"predictions rows {got}"
    return f"no scoring after SIGTERM; the resumed run scored {len(got)} rows"


def all_rows(out):
    """Every row of metrics.jsonl, in file order."""
    with open(f"{out}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def final_progress_lines(log):
    """The progress lines that report every step done ("train...: N/N steps")."""
    return [line for line in log.splitlines()
            if (m := re.match(r"train[^:]*: (\d+)/(\d+) steps", line)) and m[1] == m[2]]


def case_kill_resume(r):
    out = f"{r.root}/kill_resume"
    # killed in the middle of step 6 (0-based 5): rows 1..5 and the evaluation of step 4
    # are written, the newest checkpoint is step 3; base_model relative to the working folder
    p = train(r.root, out, 0, ["--set", "base_model=model"], check=False, cwd=r.root,
              env={"RUBRIC_TEST_DIE_AT_STEP": "0:5"})
    assert p.returncode == -signal.SIGKILL, f"exit {p.returncode}:\n{p.stdout[-2000:]}"
    before = [x["step"] for x in all_rows(out)]
    assert max(before) == 5, f"rows before the resume: {before}"
    dump = subprocess.run(["h5dump", "-a", "/state/base_model", f"{out}/checkpoint-3.h5"],
                          stdout=subprocess.PIPE, text=True, check=True).stdout
    model = os.path.realpath(f"{r.root}/model")
    assert f'"{model}"' in dump, f"base_model not recorded as {model}:\n{dump}"

    # resumed from step 3: rows past it are dropped, then steps 4..8 appended once
    p2 = train(r.root, out, 0, ["--resume", "auto"])
    assert "checkpoint-3.h5: step 3" in p2.stdout, p2.stdout[-2000:]
    got = all_rows(out)
    steps = [x["step"] for x in got if "loss" in x]
    evals = [x["step"] for x in got if "eval_loss" in x]
    assert steps == list(range(1, STEPS + 1)), f"step rows {steps}"
    assert evals == [4, 8], f"eval rows {evals}"
    check_rows(rows(out), rows(r.one()), range(1, STEPS + 1), True, "after kill + resume")
    fin = final_progress_lines(p2.stdout)
    assert len(fin) == 1 and fin[0].startswith("train (steps 4-8): 5/5 steps"), \
        f"final progress lines {fin}:\n{p2.stdout[-2000:]}"

    # the run is complete: a resume says so and trains nothing
    p3 = train(r.root, out, 0, ["--resume", "auto"])
    assert "already completes this run" in p3.stdout, p3.stdout[-2000:]
    assert "step 8/" not in p3.stdout and all_rows(out) == got, p3.stdout[-2000:]

    # a fresh run into that output_dir is refused before any work, nothing touched
    p4 = train(r.root, out, 0, check=False)
    assert p4.returncode == 2, f"exit {p4.returncode}:\n{p4.stdout[-2000:]}"
    assert "already holds checkpoints of an earlier run (newest: checkpoint-8.h5)" \
        in p4.stdout and "--resume auto" in p4.stdout, p4.stdout[-2000:]
    assert "dataset:" not in p4.stdout and all_rows(out) == got, p4.stdout[-2000:]
    return (f"rows before resume {before[-3:]}..., after: steps 1-{STEPS} and evals "
            f"{evals} once, bitwise; complete run and fresh run into it handled")


def case_more_steps(r):
    """The finished run resumed with a larger max_steps: an info line that it continues to the
    new max_steps, not the warning that guesses at another dataset or batch."""
    out = f"{r.root}/more_steps"
    copy_ckpt(r.one(), STEPS, out)
    more = STEPS + 2
    p = train(r.root, out, 0, ["--resume", "auto", "--set", f"max_steps={more}"])
    want = (f"max_steps is now {more} (the checkpoint's run had {STEPS} steps, max_steps "
            f"{STEPS}): the run continues to step {more}")
    assert want in p.stdout, p.stdout[-2000:]
    assert "another dataset" not in p.stdout and "warn" not in p.stdout, p.stdout[-2000:]
    assert max(rows(out)) == more, sorted(rows(out))
    return want


def case_sigint(r):
    out = f"{r.root}/sigint"
    os.makedirs(out)
    with open(f"{out}/metrics.jsonl", "w") as f:  # an earlier run's log, no checkpoints
        f.write(json.dumps({"step": 99, "loss": 1.0}) + "\n")
    p = train(r.root, out, 0, popen=True)
    log = ""
    for line in p.stdout:
        log += line
        if line.startswith("step 2/"):
            p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=120)
    assert rc == 0, f"exit {rc} after SIGINT:\n{log[-2000:]}"
    assert "signal 2: checkpoint of step" in log and "interrupted" in log, log[-2000:]
    saved = [f for f in os.listdir(out) if f.endswith(".h5")]
    assert saved, "no checkpoint after SIGINT"
    steps = [x["step"] for x in all_rows(out)]
    assert steps == list(range(1, len(steps) + 1)), f"metrics.jsonl steps {steps}"

    # twice: the second one ends the process at once
    out2 = f"{r.root}/sigint2"
    p = train(r.root, out2, 0, popen=True, env={"RUBRIC_TEST_STEP_SLEEP_MS": "3000"})
    log = ""
    for line in p.stdout:  # each step lasts 3 s more: the second one comes within the step
        log += line
        if line.startswith("step 1/"):
            p.send_signal(signal.SIGINT)
        if "interrupted" in line:
            p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=120)
    assert rc == -signal.SIGINT, f"exit {rc} after two SIGINTs:\n{log[-2000:]}"
    assert not os.path.exists(out2) or not any(f.endswith(".h5") for f in os.listdir(out2))
    return f"saved {saved[0]}, exit 0, fresh log (steps {steps}); twice: exit {rc}"


def case_bad_output_dir(r):
    """output_dir a regular file, or under one (mkdir fails even for root): exit 2 with the
    key, the path and the reason, before the data is prepared or the model loaded."""
    said = []
    for out, why in ((f"{r.root}/cfg.yml", "exists and is not a folder"),
                     (f"{r.root}/cfg.yml/out", "Not a directory")):
        p = train(r.root, out, 0, check=False)
        assert p.returncode == 2, f"{out}: exit {p.returncode}:\n{p.stdout[-2000:]}"
        assert f"--set: output_dir: {out}" in p.stdout and why in p.stdout, p.stdout[-2000:]
        assert "prep:" not in p.stdout and "dataset:" not in p.stdout, p.stdout[-2000:]
        said.append(why)
    # a lock file that is a symbolic link (it would overwrite its target) or a folder
    victim = f"{r.root}/victim.txt"
    with open(victim, "w") as f:
        f.write("precious\n")
    for kind in ("a symbolic link", "a folder"):
        out = f"{r.root}/badlock_{kind.split()[-1]}"
        os.makedirs(out, exist_ok=True)
        lock = f"{out}/.rubric-train.lock"
        if kind == "a folder":
            os.mkdir(lock)
        else:
            os.symlink(victim, lock)
        p = train(r.root, out, 0, check=False)
        assert p.returncode == 2 and f"is {kind}, not a regular file" in p.stdout, \
            p.stdout[-2000:]
        said.append(f"lock file {kind}")
    assert open(victim).read() == "precious\n", "the lock's symlink target was written"
    # a run that fails before training (no GPU for --backend cuda, a FIFO to resume from)
    # leaves no folder it made
    fifo = f"{r.root}/fifo.h5"
    os.mkfifo(fifo)
    for extra, why in ((["--backend", "cuda"], "backend 'cuda'"),
                       (["--resume", fifo], "is not a regular file")):
        out = f"{r.root}/new/deeper/run"
        p = train(r.root, out, 0, extra, check=False)
        assert p.returncode == 2 and why in p.stdout, p.stdout[-2000:]
        assert not os.path.exists(f"{r.root}/new"), f"{extra}: left {r.root}/new"
    said.append("no folder left by a run that failed before training")
    # a model with fewer ids than its tokenizer: exit 2 before the first step, naming both
    small = f"{r.root}/small_vocab"
    subprocess.run([RUBRIC, "init-model", "--out", small, "--hidden", "32", "--layers", "1",
                    "--heads", "2", "--kv-heads", "1", "--vocab", "1000", "-q"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = train(r.root, f"{r.root}/small_vocab_run", 0, ["--set", f"base_model={small}"],
              check=False)
    assert p.returncode == 2 and f"the model {small} has a vocabulary of 1000 ids" \
        in p.stdout and "step 1/" not in p.stdout, p.stdout[-2000:]
    said.append("a model with fewer ids than its tokenizer")
    return "exit 2 before any work: " + "; ".join(said)


def case_concurrent(r):
    out = f"{r.root}/concurrent"
    env = {"RUBRIC_TEST_STEP_SLEEP_MS": "300"}  # the winner still holds the lock when the other checks
    a = train(r.root, out, 0, env=env, popen=True)
    b = train(r.root, out, 0, env=env, popen=True)
    logs = {p: p.communicate(timeout=300)[0] for p in (a, b)}
    codes = sorted(p.returncode for p in (a, b))
    assert codes == [0, 2], f"exit codes {codes}:\n" + "\n----\n".join(
        v[-1500:] for v in logs.values())
    win, lose = (a, b) if a.returncode == 0 else (b, a)
    msg = logs[lose]
    host = os.uname().nodename
    assert f"output_dir {out} is in use by another rubric train (pid {win.pid} on host {host}" \
        in msg, msg[-2000:]
    assert "prep:" not in msg and "step 1/" not in msg, msg[-2000:]
    steps = [x["step"] for x in all_rows(out) if "loss" in x]
    assert steps == list(range(1, STEPS + 1)), f"metrics.jsonl steps {steps}"
    # the lock file left behind is taken by the next run
    p = train(r.root, out, 0, ["--resume", "auto", "--set", f"max_steps={STEPS + 1}"])
    return "one trained, the other: " + msg[msg.index("output_dir " + out):].split(":")[0]


def case_dead_worker(r):
    t0 = time.time()
    p = train(r.root, f"{r.root}/dead", 2, env={"RUBRIC_TEST_DIE_AT_STEP": "2:1"}, check=False)
    dt = time.time() - t0
    assert p.returncode != 0, "a dead worker did not fail the job"
    assert dt < 60, f"took {dt:.0f} s"
    assert "rank 2" in p.stdout, p.stdout[-2000:]
    return f"exit {p.returncode} after {dt:.1f} s naming rank 2"


def rank_pid(mpirun_pid, rank):
    """The pid of an MPI rank started by mpirun (from OMPI_COMM_WORLD_RANK in its env)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and b"RUBRIC_E2E_TAG=hung" in env \
                and int(stat.rsplit(")", 1)[1].split()[1]) == mpirun_pid:
            return int(pid)
    return None


def case_hung_worker(r):
    t0 = time.time()
    # the deadline (11 s + 5 x the slowest step) outlasts the 10 s between progress lines
    p = train(r.root, f"{r.root}/hung", 2, ["--step-timeout", "11"],
              env={"RUBRIC_E2E_TAG": "hung"}, popen=True)
    log, stopped = "", None
    for line in p.stdout:
        log += line
        if line.startswith("step 1/") and not stopped:
            stopped = rank_pid(p.pid, 2)
            assert stopped, "cannot find rank 2's process"
            os.kill(stopped, signal.SIGSTOP)
    rc = p.wait(timeout=120)
    dt = time.time() - t0
    if stopped:
        try:
            os.kill(stopped, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert rc != 0 and dt < 60, f"exit {rc} after {dt:.0f} s:\n{log[-2000:]}"
    # rank 1 waits for rank 2 inside the step's collectives, so both may be named
    ok = "no answer from worker rank 2" in log or "no answer from worker ranks 1, 2" in log
    assert ok, log[-2000:]
    # one progress line, counting the steps done (not the one that hung)
    prog = [line for line in log.splitlines() if re.match(r"train[^:]*: \d+/\d+ steps", line)]
    done = len([line for line in log.splitlines() if re.match(r"step \d+/", line)])
    assert len(prog) == 1 and prog[0].startswith(f"train: {done}/"), \
        f"progress lines {prog} after {done} steps:\n{log[-2000:]}"
    return f"exit {rc} after {dt:.1f} s: " + log[log.index("no answer"):].split(" within")[0]


CASES = ["same_batch", "resume_1", "resume_2", "reshard", "staged", "backend_choice",
         "sigterm", "sigterm_score",
         "kill_resume", "more_steps", "sigint", "bad_output_dir", "concurrent",
         "dead_worker", "hung_worker"]


def main():
    want = sys.argv[1:] or CASES
    root = tempfile.mkdtemp(prefix="rubric_e2e_")
    failed = 0
    try:
        setup(root)
        runs = Runs(root)
        for name in want:
            t0 = time.time()
            try:
                msg = globals()["case_" + name](runs)
                print(f"PASS {name} ({time.time() - t0:.0f} s): {msg}", flush=True)
            except AssertionError as e:
                failed += 1
                print(f"FAIL {name}: {e}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
