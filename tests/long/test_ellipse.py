#!/usr/bin/env python3
"""Long real rows: ELLIPSE (../shared/data/ellipse/train.jsonl, 3,911 essays under a 322-token
rubric, 6 scores per row, samples of 370 to 1,776 tokens) through `rubric prep` and a 3-step
`rubric train` at sequence_len 2048 with 1 coordinator + 2 workers under mpirun.

Checks:
  1. prep at 2048: report.json accounts for every row (kept + rejected + duplicates + too long +
     no supervised = read = 3911), 6 scores per row, tokens > 0; every row's sample length
     equals the Hugging Face reference (tests/fixtures/long/ellipse_lengths.json, made by
     gen_ellipse_lengths.py there), so the token total and the longest sample match too;
  2. prep at 1024 on the same rows (the longest ELLIPSE sample is 1,776 tokens, so at 2048
     nothing is too long): the rows longer than 1024 by the reference are exactly the rows
     counted as too long and absent from the dataset, and the kept rows keep their full
     length (never truncated);
  3. train, 3 steps at 2048 with packing, under `mpirun -np 3`: 3 step rows in metrics.jsonl
     with finite losses, checkpoint-3.h5 written, `rubric inspect` on it exits 0.
Needs python3's standard library; h5py (CI installs it) for the per-row checks, which are
skipped with a message without it. Exit 77 (skip) when ../shared/data/ellipse is absent.
About 30 s on 2 idle cores (prep ~2 s twice, train ~20 s with the final evaluation).
"""
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

SRC = os.environ.get('RUBRIC_SOURCE_ROOT', os.getcwd())
RUBRIC = os.environ.get('RUBRIC_BIN', os.path.join(SRC, 'build', 'rubric'))
DATA = os.path.normpath(os.path.join(SRC, '..', 'shared', 'data', 'ellipse', 'train.jsonl'))
FIXTURE = os.path.join(SRC, 'tests', 'fixtures', 'long', 'ellipse_lengths.json')
SEQ_LEN = 2048
SHORT_LEN = 1024
STEPS = 3
MPIRUN = ['mpirun', '--allow-run-as-root', '--oversubscribe', '-np', '3',
          '-x', 'OMP_NUM_THREADS=1', '-x', 'OMP_WAIT_POLICY=passive']

failures = []


def check(cond, what):
    """Record one assertion; print it either way."""
    print(('ok   ' if cond else 'FAIL ') + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


def run(argv, what, timeout):
    """Run a command, echo its output, return (rc, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    dt = time.monotonic() - t0
    print(f'--- {what}: exit {p.returncode} in {dt:.1f} s\n{p.stdout}', flush=True)
    return p.returncode, dt


def write_config(path, tmp, seq_len, prepared):
    """The run's config: the ELLIPSE file, Qwen3 template, packing, 3 one-bin steps."""
    with open(path, 'w') as f:
        f.write(f"""base_model: {tmp}/model
datasets:
  - path: {DATA}
    type: alpaca
chat_template: qwen3
dataset_prepared_path: {prepared}
sequence_len: {seq_len}
sample_packing: true
val_set_size: 0.02
adapter: lora
lora_r: 4
lora_alpha: 8
micro_batch_size: 1
gradient_accumulation_steps: 1
max_steps: {STEPS}
learning_rate: 0.001
output_dir: {tmp}/out
""")


def load_reference():
    """The HF lengths of every row; None (and a failure) when made from another file."""
    with open(FIXTURE) as f:
        ref = json.load(f)
    with open(DATA, 'rb') as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    if not check(md5 == ref['md5'], f'{DATA} is the file the reference lengths were made '
                 f'from (md5 {md5} vs {ref["md5"]}; else rerun {ref["generator"]})'):
        return None
    return ref['lengths']


def check_report(prepared, seq_len, lengths):
    """report.json of a prep run against the row accounting and the reference lengths."""
    with open(os.path.join(prepared, 'report.json')) as f:
        r = json.load(f)
    tag = f'[seq {seq_len}]'
    check(r['rows_read'] == 3911, f'{tag} rows read {r["rows_read"]} == 3911')
    total = (r['kept'] + r['rejected'] + r['duplicates'] + r['too_long']
             + r['no_supervised_tokens'])
    check(total == r['rows_read'], f'{tag} kept {r["kept"]} + rejected {r["rejected"]} + '
          f'duplicates {r["duplicates"]} + too long {r["too_long"]} + no supervised '
          f'{r["no_supervised_tokens"]} = {total} == rows read {r["rows_read"]}')
    check(r['scores_per_row'] == 6, f'{tag} scores per row {r["scores_per_row"]} == 6')
    check(r['tokens'] > 0, f'{tag} tokens {r["tokens"]} > 0')
    check(r['train_rows'] + r['val_rows'] == r['kept'],
          f'{tag} train rows {r["train_rows"]} + val rows {r["val_rows"]} == kept')
    check(r['max_sample_tokens'] <= seq_len,
          f'{tag} longest sample {r["max_sample_tokens"]} <= sequence_len')
    if lengths is None:
        return r
    fit = [n for n in lengths if n <= seq_len]
    over = len(lengths) - len(fit)
    check(r['too_long'] == over, f'{tag} too long {r["too_long"]} == rows over {seq_len} '
          f'tokens by the HF reference ({over})')
    check(r['tokens'] == sum(fit), f'{tag} tokens {r["tokens"]} == HF total of the rows that '
          f'fit ({sum(fit)}): nothing truncated')
    check(r['max_sample_tokens'] == max(fit),
          f'{tag} longest sample {r["max_sample_tokens"]} == HF ({max(fit)})')
    return r


def check_rows(prepared, seq_len, lengths):
    """Per row, from the .h5: the kept lines are those that fit, each at its full HF length."""
    try:
        import h5py
    except ImportError:
        print(f'skip [seq {seq_len}] per-row check: no h5py (pip install h5py)')
        return
    h5s = [n for n in os.listdir(prepared) if n.endswith('.h5')]
    if not check(len(h5s) == 1, f'[seq {seq_len}] one prepared .h5 in {prepared}: {h5s}'):
        return
    with h5py.File(os.path.join(prepared, h5s[0]), 'r') as f:
        lines = [int(x) for x in f['line'][:]]
        lens = [int(x) for x in f['len'][:]]
    want = [i + 1 for i, n in enumerate(lengths) if n <= seq_len]
    check(sorted(lines) == want, f'[seq {seq_len}] the {len(lines)} kept lines are exactly the '
          f'{len(want)} rows of <= {seq_len} HF tokens')
    bad = [(ln, n, lengths[ln - 1]) for ln, n in zip(lines, lens) if n != lengths[ln - 1]]
    check(not bad, f'[seq {seq_len}] every kept row has its HF length '
          f'({len(bad)} differ; first (line, rubric, HF): {bad[:3]})')


def check_training(tmp):
    """metrics.jsonl, the checkpoint and `rubric inspect` after the 3 steps."""
    out = os.path.join(tmp, 'out')
    path = os.path.join(out, 'metrics.jsonl')
    if not check(os.path.exists(path), f'{path} written'):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in rows if 'loss' in r]
    check([r['step'] for r in steps] == list(range(1, STEPS + 1)),
          f'{STEPS} step rows in metrics.jsonl: steps {[r["step"] for r in steps]}')
    for r in steps:
        check(math.isfinite(r['loss']) and not r['skipped'],
              f'step {r["step"]}: loss {r["loss"]} finite, not skipped')
        check(0 < r['tokens'] <= 2 * SEQ_LEN and r['supervised_tokens'] > 0,
              f'step {r["step"]}: {r["tokens"]} tokens in (0, 2 x {SEQ_LEN}], '
              f'{r["supervised_tokens"]} supervised')
    ckpt = os.path.join(out, f'checkpoint-{STEPS}.h5')
    if check(os.path.exists(ckpt), f'{ckpt} written'):
        rc, _ = run([RUBRIC, 'inspect', ckpt], 'rubric inspect', 60)
        check(rc == 0, f'rubric inspect {ckpt} exits 0 ({rc})')
    return steps


def main():
    if not os.path.exists(DATA):
        print(f'SKIP: {DATA} is absent (the ELLIPSE data is read from ../shared/data/ellipse, '
              'next to the source root)')
        return 77
    if shutil.which('mpirun') is None:
        print('SKIP: no mpirun on PATH (apt-get install openmpi-bin)')
        return 77
    tmp = tempfile.mkdtemp(prefix='rubric-long-')
    lengths = load_reference()

    # 1. the tiny model and prep at 2048
    rc, _ = run([RUBRIC, 'init-model', '--out', f'{tmp}/model', '--hidden', '64', '--layers',
                 '2', '--heads', '4', '--kv-heads', '2', '--head-dim', '16', '--intermediate',
                 '128'], 'init-model', 120)
    if not check(rc == 0, f'init-model exits 0 ({rc})'):
        return 1
    cfg = os.path.join(tmp, 'cfg.yml')
    write_config(cfg, tmp, SEQ_LEN, f'{tmp}/prepared')
    rc, prep_s = run([RUBRIC, 'prep', cfg], f'prep at {SEQ_LEN}', 300)
    if not check(rc == 0, f'prep at {SEQ_LEN} exits 0 ({rc})'):
        return 1
    rep = check_report(f'{tmp}/prepared', SEQ_LEN, lengths)
    if lengths is not None:
        check_rows(f'{tmp}/prepared', SEQ_LEN, lengths)

    # 2. the same rows at 1024: the too-long path on real rows
    short_cfg = os.path.join(tmp, 'cfg_short.yml')
    write_config(short_cfg, tmp, SHORT_LEN, f'{tmp}/prepared_short')
    rc, _ = run([RUBRIC, 'prep', short_cfg], f'prep at {SHORT_LEN}', 300)
    if check(rc == 0, f'prep at {SHORT_LEN} exits 0 ({rc})'):
        check_report(f'{tmp}/prepared_short', SHORT_LEN, lengths)
        if lengths is not None:
            check_rows(f'{tmp}/prepared_short', SHORT_LEN, lengths)

    # 3. three steps at 2048 with 1 coordinator + 2 workers (reuses the 2048 cache)
    rc, train_s = run(MPIRUN + [RUBRIC, 'train', cfg], 'train under mpirun -np 3', 600)
    steps = []
    if check(rc == 0, f'train under mpirun -np 3 exits 0 ({rc})'):
        steps = check_training(tmp)

    ms = [r['step_ms'] for r in steps if 'step_ms' in r]
    print(f'timing: prep {prep_s:.1f} s wall ({rep["rows_per_second"]:.0f} rows/s by the '
          f'report), train {train_s:.1f} s wall, step ms {[round(m) for m in ms]}; kept '
          f'{rep["kept"]}, too long {rep["too_long"]}, tokens {rep["tokens"]}, packing '
          f'{100 * rep["packing_efficiency"]:.1f}%')
    if failures:
        print(f'{len(failures)} check(s) failed; files kept in {tmp}')
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
