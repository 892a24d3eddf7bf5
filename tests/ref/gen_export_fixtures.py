#!/usr/bin/env python3
"""Regenerate tests/fixtures/export/: tiny base models, rubric checkpoints with random non-zero
LoRA weights, and what PEFT computes from them (the reference tests/test_export.c checks
rubric's merge and adapter export against, without torch).

Writes:
  base/          qwen3, hidden 64, 2 layers, vocab 256, TIED embeddings, bf16 (rubric
                 init-model --seed 3), with a tiny WordLevel tokenizer.json (pip tokenizers)
  base_untied/   the same shape with an lm_head (seed 4)
  lora/checkpoint-1.h5     LoRA r 8, alpha 16, all 7 targets, on base/
  qlora/checkpoint-1.h5    QLoRA r 4, alpha 8, q/v/down_proj, on base/
  untied/checkpoint-1.h5   LoRA r 8, alpha 32, q/k/v/o_proj, on base_untied/
                 (tests/export_tool make-ckpt: the model's PEFT lora_A init, lora_B uniform in
                 [-0.05, 0.05], written by ckpt_save)
  cases.json     name, base, checkpoint, input tokens, shard size of each case
  expected.safetensors, per case <c>:
    <c>.peft_logits        [T, vocab] fp32 logits of PEFT's LoRA model (built from the
                           checkpoint with h5py; QLoRA: base linears through bitsandbytes'
                           NF4 quantize/dequantize) on the case's tokens
    <c>.merged.<tensor>    PEFT merge_and_unload() of two adapted linears, fp32
    <c>.lora.<name>        every /lora tensor as h5py reads it
Every PEFT logit is also checked here against transformers on PEFT's merged model (< 1e-5).

Run from the source root after building:  python3 tests/ref/gen_export_fixtures.py --build B
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_export as ce  # noqa: E402

REL = os.path.join("tests", "fixtures", "export")
CASES = [
    dict(name="lora", base="base", ckpt="lora/checkpoint-1.h5",
         make=["--r", "8", "--alpha", "16"], tokens=[1, 17, 42, 99, 3, 250, 7, 7, 128, 64, 5, 200],
         merged=["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]),
    dict(name="qlora", base="base", ckpt="qlora/checkpoint-1.h5",
         make=["--adapter", "qlora", "--r", "4", "--alpha", "8", "--targets",
               "q_proj,v_proj,down_proj", "--seed", "11"],
         tokens=[9, 8, 7, 200, 201, 33, 1, 0, 255, 100],
         merged=["model.layers.0.self_attn.v_proj.weight", "model.layers.1.mlp.down_proj.weight"]),
    dict(name="untied", base="base_untied", ckpt="untied/checkpoint-1.h5",
         make=["--r", "8", "--alpha", "32", "--targets", "q_proj,k_proj,v_proj,o_proj",
               "--seed", "5"],
         tokens=[4, 44, 144, 244, 14, 24, 34], max_shard_size="100K",
         merged=["model.layers.0.self_attn.o_proj.weight",
                 "model.layers.1.self_attn.k_proj.weight"]),
]


def tiny_tokenizer(d):
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {f"t{i}": i for i in range(256)}
    vocab["<unk>"] = 0
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    os.makedirs(d, exist_ok=True)
    tk.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 256,
                   "unk_token": "<unk>"}, f, indent=2)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    a = ap.parse_args()
    os.chdir(ce.ROOT)
    rubric = os.path.join(a.build, "rubric")
    tool = os.path.join(a.build, "tests", "export_tool")
    shutil.rmtree(REL, ignore_errors=True)
    os.makedirs(REL)

    # 1. base models (relative paths: they are what the checkpoints record)
    with tempfile.TemporaryDirectory() as tok:
        tiny_tokenizer(tok)
        shape = ["--vocab", "256", "--hidden", "64", "--layers", "2", "--intermediate", "128",
                 "--tokenizer", tok]
        ce.run([rubric, "init-model", "--out", f"{REL}/base", "--seed", "3"] + shape)
        ce.run([rubric, "init-model", "--out", f"{REL}/base_untied", "--seed", "4", "--no-tie"]
               + shape)

    # 2. checkpoints, 3. PEFT's numbers from them
    expected, listed = {}, []
    for c in CASES:
        base, ckpt = f"{REL}/{c['base']}", f"{REL}/{c['ckpt']}"
        ce.run([tool, "make-ckpt", "--model", base, "--out", os.path.dirname(ckpt)] + c["make"])
        cfg, lora = ce.read_ckpt(ckpt)
        pm = ce.peft_from_ckpt(base, cfg, lora)
        lg = ce.logits(pm, c["tokens"])
        merged = {k: v.float().numpy() for k, v in pm.merge_and_unload().state_dict().items()}
        from transformers import AutoModelForCausalLM
        check = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        check.load_state_dict({k: torch.from_numpy(v) for k, v in merged.items()}, strict=False)
        e = ce.rel_err(ce.logits(check, c["tokens"]), lg)
        assert e < 1e-5, f"{c['name']}: PEFT vs its own merge: {e}"
        expected[f"{c['name']}.peft_logits"] = lg.astype(np.float32)
        for k in c["merged"]:
            expected[f"{c['name']}.merged.{k}"] = merged[k].astype(np.float32)
        for k, v in lora.items():
            expected[f"{c['name']}.lora.{k}"] = v
        listed.append({k: c[k] for k in ["name", "base", "ckpt", "tokens", "max_shard_size"]
                       if k in c} | {"merged": c["merged"]})
        print(f"{c['name']}: {len(lora)} LoRA tensors, logits {lg.shape}, PEFT vs merged {e:.1e}")
    save_file({k: np.ascontiguousarray(v) for k, v in expected.items()},
              f"{REL}/expected.safetensors", metadata={"generator": "gen_export_fixtures.py"})
    with open(f"{REL}/cases.json", "w") as f:
        json.dump(listed, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
