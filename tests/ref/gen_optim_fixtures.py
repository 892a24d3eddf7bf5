#!/usr/bin/env python3
"""Regenerate tests/fixtures/optim/ (the reference of test_adamw.c and test_sched.c).

adamw.json      torch.optim.AdamW on one flat fp32 tensor over several steps with varying
                gradients and learning rates (two hyper-parameter sets); the state after each
                step. Also clip_grad_norm_ over several gradient tensors.
schedules.json  transformers' get_{cosine,linear,constant}_schedule_with_warmup: the learning
                rate of every optimizer step (0-based, as LambdaLR counts) of 100-step runs,
                and the warmup step count for several warmup ratios: Axolotl's rule (which rubric
                follows) next to TrainingArguments.get_warmup_steps (which rounds up).

Usage: python3 tests/ref/gen_optim_fixtures.py   (from the source root; needs torch,
transformers)
"""
import json
import os
import tempfile

import numpy as np
import torch
import transformers
from transformers import (TrainingArguments, get_constant_schedule_with_warmup,
                          get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "optim")


def f32list(t):
    return [float(x) for x in t.detach().numpy().astype(np.float32).reshape(-1)]


def adamw_run(name, n, steps, hp, rng):
    p = torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.1))
    opt = torch.optim.AdamW([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"], foreach=False)
    run = {"name": name, "n": n, **hp, "params0": f32list(p), "steps": []}
    for s in range(steps):
        scale = [1.0, 1e-3, 10.0, 0.0, 1e-6, 1.0][s % 6]
        g = (rng.standard_normal(n) * scale).astype(np.float32)
        g[:3] = 0.0  # elements whose gradient stays zero at first
        lr = hp["lr"] * (1.0 + 0.5 * np.sin(s))  # a varying, scheduled rate
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.from_numpy(g)
        opt.step()
        st = opt.state[p]
        run["steps"].append({"lr": lr, "grad": [float(x) for x in g], "params": f32list(p),
                             "exp_avg": f32list(st["exp_avg"]),
                             "exp_avg_sq": f32list(st["exp_avg_sq"])})
    return run


def clip_cases(rng):
    cases = []
    for max_norm, scale in ((1.0, 1.0), (1.0, 0.001), (0.3, 5.0), (1e9, 1.0)):
        sizes = (17, 300, 5)
        params = [torch.nn.Parameter(torch.zeros(k)) for k in sizes]
        grads = [(rng.standard_normal(k) * scale).astype(np.float32) for k in sizes]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g.copy())
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        cases.append({"max_norm": max_norm, "grads": [float(x) for g in grads for x in g],
                      "total_norm": float(total),
                      "clipped": [float(x) for p in params for x in f32list(p.grad)]})
    return cases


def axolotl_warmup_steps(ratio, total):
    """Axolotl's trainer builder (src/axolotl/core/builders, build() /
    _configure_warmup_and_logging), which rubric's configs follow: it computes the warmup step
    count itself and passes transformers an integer. Axolotl is not a pip dependency here, so
    its two-line rule is restated: int() of ratio * total, and 1 is bumped to 2."""
    steps = max(int(ratio * total), 0)
    return 2 if steps == 1 else steps


def schedules():
    out = {"total_steps": 100, "base_lr": 2e-4, "runs": []}
    makers = {"cosine": get_cosine_schedule_with_warmup,
              "linear": get_linear_schedule_with_warmup,
              "constant": get_constant_schedule_with_warmup}
    for kind, make in makers.items():
        for warmup in (0, 1, 10, 100):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.AdamW([p], lr=out["base_lr"])
            if kind == "constant":
                sch = make(opt, num_warmup_steps=warmup)
            else:
                sch = make(opt, num_warmup_steps=warmup, num_training_steps=100)
            lrs = []
            for _ in range(100):
                lrs.append(opt.param_groups[0]["lr"])  # the rate this step's update uses
                opt.step()
                sch.step()
            out["runs"].append({"kind": kind, "warmup_steps": warmup, "lr": lrs})
    warm = []
    with tempfile.TemporaryDirectory() as tmp:
        for ratio, total in ((0.03, 100), (0.1, 37), (0.05, 7), (0.33, 10), (0.5, 3),
                             (0.0, 50), (0.07, 1000), (0.02, 60), (0.25, 9)):
            args = TrainingArguments(output_dir=tmp, warmup_steps=ratio, report_to=[])
            warm.append({"ratio": ratio, "total": total,
                         "transformers_warmup_steps": args.get_warmup_steps(total),
                         "axolotl_warmup_steps": axolotl_warmup_steps(ratio, total)})
    out["warmup_from_ratio"] = warm
    return out


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(7)
    runs = [adamw_run("wd", 257, 8, {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                     "weight_decay": 0.01}, rng),
            adamw_run("no_wd", 100, 6, {"lr": 2e-4, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6,
                                        "weight_decay": 0.0}, rng)]
    with open(os.path.join(OUT, "adamw.json"), "w") as f:
        json.dump({"torch": torch.__version__, "runs": runs, "clip": clip_cases(rng)}, f)
    sch = schedules()
    sch["transformers"] = transformers.__version__
    with open(os.path.join(OUT, "schedules.json"), "w") as f:
        json.dump(sch, f)


if __name__ == "__main__":
    main()
