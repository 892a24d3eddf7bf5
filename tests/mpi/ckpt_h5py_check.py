#!/usr/bin/env python3
"""Read every part of a rubric checkpoint with h5py (an independent HDF5 reader) and check it.

usage: ckpt_h5py_check.py CHECKPOINT.h5 [--synthetic]

Checks: the layout of common/ckpt.h (/lora, /optim/<name>/{master,exp_avg,exp_avg_sq}, /state
attributes), that every group, dataset and /state attribute explains itself (description /
X_description), that every float32 dataset is readable and finite, that optimizer datasets have
their parameter's shape. With --synthetic (files written by tests/mpi/ckpt_check.c) the values
are compared with the formulas that wrote them, computed here with numpy.
Prints "PASS ..." and exits 0, or raises.
"""
import sys

import h5py
import numpy as np

STATE_KEYS = ["format", "format_version", "complete", "step", "epoch", "data_cursor",
              "total_steps", "loss", "lr", "seed", "sched_kind", "base_lr", "warmup_steps",
              "config_yaml", "base_model", "base_model_hash", "world_size", "zero_stage",
              "scores_per_row", "n_params", "n_elements", "has_optimizer_state"]
MOMENTS = ["master", "exp_avg", "exp_avg_sq"]


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def synthetic(k, i):
    i = i.astype(np.float64)
    if k == 0:
        return np.sin(0.37 * i).astype(np.float32)
    if k == 1:
        return np.sin(0.37 * i).astype(np.float32) + np.float32(1e-3)
    if k == 2:
        return np.cos(0.11 * i).astype(np.float32)
    return np.float32(1e-3) * i.astype(np.float32)


def main():
    path, is_synthetic = sys.argv[1], "--synthetic" in sys.argv
    with h5py.File(path, "r") as f:
        assert "description" in f.attrs
        st = f["state"].attrs
        for k in STATE_KEYS:
            assert k in st, f"/state lacks {k}"
            assert k + "_description" in st, f"/state lacks {k}_description"
        assert text(st["format"]) == "rubric-checkpoint"
        assert int(st["format_version"]) == 1 and int(st["complete"]) == 1
        config = text(st["config_yaml"])
        names = sorted(f["lora"].keys())
        assert len(names) == int(st["n_params"])
        total, offset = 0, 0
        for name in names:
            d = f["lora"][name]
            assert d.dtype == np.float32 and d.ndim == 2 and "description" in d.attrs
            w = d[...]
            assert np.all(np.isfinite(w))
            total += w.size
            if int(st["has_optimizer_state"]):
                for m in MOMENTS:
                    o = f["optim"][name][m]
                    assert o.shape == d.shape and "description" in o.attrs
                    assert np.all(np.isfinite(o[...]))
        assert total == int(st["n_elements"]), (total, int(st["n_elements"]))
        if is_synthetic:
            # ckpt_check.c's table: layer i//2, lora_A for even i, in file order by offset
            order = sorted(names, key=lambda n: (int(n.split(".")[4]), n.endswith("B.weight")))
            for name in order:
                d = f["lora"][name]
                idx = np.arange(offset, offset + d.size).reshape(d.shape)
                np.testing.assert_array_equal(d[...], synthetic(0, idx), err_msg=name)
                for k, m in enumerate(MOMENTS, start=1):
                    np.testing.assert_array_equal(f["optim"][name][m][...], synthetic(k, idx),
                                                  err_msg=f"{name}/{m}")
                offset += d.size
            assert config.startswith("base_model:")
        step = int(st["step"])
    print(f"PASS {path}: {len(names)} tensors, {total} elements, step {step}")


if __name__ == "__main__":
    main()
