#!/usr/bin/env python3
"""Regenerate tests/fixtures/score/metrics_cases.json: scoring metrics computed independently
with numpy/scipy on generated (truth, prediction) rows, for tests/test_metrics.c (rubric's
common/metrics.c must agree to 1e-9).

Run from the source root:  python3 tests/ref/gen_metrics_fixtures.py
"""
import json
import os

import numpy as np
from scipy import stats

OUT = os.path.join("tests", "fixtures", "score", "metrics_cases.json")


def pearson(truth, pred, n_rows):
    """(value, reason): scipy's Pearson r, or None with why it is undefined."""
    if n_rows < 3:
        return None, "fewer than 3 rows"
    if np.all(truth == truth.flat[0]):
        return None, "truth is constant"
    if np.all(pred == pred.flat[0]):
        return None, "prediction is constant"
    return float(stats.pearsonr(truth.astype(float), pred.astype(float))[0]), None


def stat_block(truth, pred, n_rows):
    if truth.size == 0:
        none = {"value": None, "reason": "no scored rows"}
        return {"accuracy": none, "off_by_one_accuracy": none, "mae": none,
                "pearson": {"value": None, "reason": "fewer than 3 rows"}}
    d = np.abs(truth - pred)
    r, why = pearson(truth, pred, n_rows)
    return {
        "accuracy": {"value": float(np.mean(d == 0)), "reason": None},
        "off_by_one_accuracy": {"value": float(np.mean(d <= 1)), "reason": None},
        "mae": {"value": float(np.mean(d)), "reason": None},
        "pearson": {"value": r, "reason": why},
    }


def all_metrics(truth, pred, off_grammar, lo, hi, confusion=True):
    n, k = truth.shape
    out = {
        "rows": n,
        "off_grammar_rows": int(np.sum(off_grammar)),
        "exact_rows": int(np.sum(np.all(truth == pred, axis=1))) if n else 0,
        "exact_match": {"value": float(np.mean(np.all(truth == pred, axis=1))) if n else None,
                        "reason": None if n else "no scored rows"},
        "off_grammar_rate": {"value": float(np.mean(off_grammar)) if n else None,
                             "reason": None if n else "no scored rows"},
        "overall": stat_block(truth.ravel(), pred.ravel(), n),
        "positions": [],
    }
    for p in range(k):
        block = stat_block(truth[:, p], pred[:, p], n)
        if confusion:
            m = np.zeros((hi - lo + 1, hi - lo + 1), dtype=np.int64)
            np.add.at(m, (truth[:, p] - lo, pred[:, p] - lo), 1)
            block["confusion"] = m.tolist()
        out["positions"].append(block)
    return out


def modes(reference, lo, hi):
    """Most common score per position; np.argmax takes the first (lowest) on ties."""
    return [int(lo + np.argmax(np.bincount(reference[:, p] - lo, minlength=hi - lo + 1)))
            for p in range(reference.shape[1])]


def case(name, truth, pred, off_grammar, lo, hi, bad=0, unlabelled=0, reference=None):
    truth = np.asarray(truth, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    off_grammar = np.asarray(off_grammar, dtype=np.int64)
    ref = truth if reference is None else np.asarray(reference, dtype=np.int64)
    mode = modes(ref, lo, hi)
    base = np.tile(np.asarray(mode, dtype=np.int64), (truth.shape[0], 1))
    return {
        "name": name, "k": int(truth.shape[1]), "score_min": lo, "score_max": hi,
        "truth": truth.tolist(), "pred": pred.tolist(), "off_grammar": off_grammar.tolist(),
        "bad_rows": bad, "unlabelled_rows": unlabelled, "reference": ref.tolist(),
        "expected": all_metrics(truth, pred, off_grammar, lo, hi),
        "baseline_modes": mode,
        "expected_baseline": all_metrics(truth, base, np.zeros(len(truth), np.int64), lo, hi,
                                         confusion=False),
    }


def noisy(rng, truth, lo, hi, p_noise):
    jitter = rng.integers(-2, 3, size=truth.shape)
    keep = rng.random(truth.shape) > p_noise
    return np.clip(np.where(keep, truth, truth + jitter), lo, hi)


def main():
    rng = np.random.default_rng(20261203)
    cases = []

    t = rng.integers(0, 6, size=(300, 3))
    cases.append(case("random_k3_0to5", t, noisy(rng, t, 0, 5, 0.5),
                      rng.random(300) < 0.1, 0, 5, bad=7, unlabelled=2))

    t = rng.integers(1, 6, size=(120, 6))
    cases.append(case("ellipse_like_k6_1to5", t, noisy(rng, t, 1, 5, 0.7),
                      rng.random(120) < 0.05, 1, 5, reference=rng.integers(1, 6, size=(40, 6))))

    t = rng.integers(0, 6, size=(50, 3))
    p = noisy(rng, t, 0, 5, 0.3)
    p[:, 1] = 3
    cases.append(case("constant_prediction_pos2", t, p, np.zeros(50), 0, 5))

    t = np.full((20, 3), 3)
    cases.append(case("constant_truth", t, rng.integers(0, 6, size=(20, 3)), np.zeros(20), 0, 5))

    t = np.full((10, 2), 4)
    cases.append(case("all_constant", t, np.full((10, 2), 2), np.ones(10), 0, 5))

    t = rng.integers(0, 6, size=(2, 3))
    cases.append(case("two_rows", t, noisy(rng, t, 0, 5, 0.5), [0, 1], 0, 5))

    t = np.array([[0, 5], [5, 0], [2, 3]])
    cases.append(case("three_rows", t, np.array([[1, 4], [5, 0], [2, 2]]), [0, 0, 1], 0, 5))

    cases.append(case("one_row", [[1, 2, 3]], [[1, 2, 4]], [0], 0, 5))

    cases.append(case("no_rows_only_bad", np.zeros((0, 3)), np.zeros((0, 3)), [], 0, 5, bad=4,
                      reference=[[0, 1, 2], [0, 1, 2]]))

    t = np.array([[1, 1], [2, 2], [1, 2], [2, 1]])
    cases.append(case("baseline_ties", t, t, np.zeros(4), 0, 3))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "tests/ref/gen_metrics_fixtures.py", "cases": cases}, f)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
