#!/usr/bin/env python3
"""Check rubric's exports with the real clients (pip transformers, peft, safetensors, h5py).

For each case (a base model folder and a rubric checkpoint), this runs
  rubric export-adapter --adapter CKPT --out ADAPTER
  rubric merge --model BASE --adapter CKPT --out MERGED_F32 --dtype f32
  rubric merge --model BASE --adapter CKPT --out MERGED_BF16            (bf16, the default)
  export_tool logits --model BASE --ckpt CKPT                           (rubric's own logits,
                                                                         LoRA read by ckpt_load)
and checks
  (a) transformers loads MERGED_F32 (no missing or unexpected weight, lm_head tied when the
      config says so) and its logits on a fixed input match rubric's: relative error
      max|x - ref| / max|ref| <= 1e-3;
  (b) PeftModel.from_pretrained(base, ADAPTER) matches rubric's logits as well (QLoRA: the
      base linears first go through bitsandbytes' NF4 quantize/dequantize, as in training;
      also, the base loaded by transformers with BitsAndBytesConfig(load_in_4bit) dequantizes
      bit for bit to those weights; PEFT on that 4-bit base is reported as INFO only, since
      bitsandbytes' CPU 4-bit matmul is not fp32-exact);
  (c) pip safetensors reads every tensor rubric wrote identically: the adapter's tensors are
      bit-equal to the checkpoint's /lora datasets (h5py); the merged model's unadapted tensors
      are bit-equal to the base's (converted to fp32); the adapted ones match PEFT's
      merge_and_unload() (relative 1e-5); the bf16 model is bit-equal to torch's bf16 rounding
      of the fp32 one; rubric reads the exported adapter back (model_load_adapter) to the same
      logits bit for bit.
It prints one line per check with its number and exits 1 when any fails.

This needs torch, so it is a documented script, not a CI test (CI has no torch); the Criterion
test tests/test_export.c checks rubric's merge against the PEFT logits stored in
tests/fixtures/export/ by gen_export_fixtures.py.

Run from the source root after building (default: the fixture cases):
  python3 tests/ref/check_export.py --build build-export
  python3 tests/ref/check_export.py --build build-export --case BASE_DIR CKPT.h5 [...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import h5py
import numpy as np
import torch
import yaml
from safetensors import safe_open

warnings.filterwarnings("ignore")
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "export")
TOL_LOGITS = 1e-3
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- references -------------------------------------------------------------------------------

def read_ckpt(path):
    """The checkpoint's stored config (dict) and /lora tensors (name -> float32 array)."""
    with h5py.File(path, "r") as f:
        text = f["state"].attrs["config_yaml"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        lora = {name: np.array(d, dtype=np.float32) for name, d in f["lora"].items()}
    return yaml.safe_load(text), lora


def is_qlora(cfg):
    return cfg.get("adapter") == "qlora" or bool(cfg.get("load_in_4bit"))


def nf4_round_trip(model):
    """Every decoder linear weight through bitsandbytes' NF4 (blocksize 64, double quant)."""
    import bitsandbytes.functional as bnbf
    with torch.no_grad():
        for layer in model.model.layers:
            for mod in [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj,
                        layer.mlp.down_proj]:
                q, st = bnbf.quantize_4bit(mod.weight.data.float().contiguous(), blocksize=64,
                                           compress_statistics=True, quant_type="nf4")
                mod.weight.data.copy_(bnbf.dequantize_4bit(q, st).float())


def base_model(base_dir, qlora):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if qlora:
        nf4_round_trip(m)
    return m.eval()


def peft_from_ckpt(base_dir, cfg, lora):
    """PEFT's LoRA built from the checkpoint with h5py alone (independent of rubric's export)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    targets = cfg["lora_target_modules"]
    targets = LINEARS if targets in ("all-linear", ["all-linear"]) else list(targets)
    lc = LoraConfig(r=int(cfg["lora_r"]), lora_alpha=float(cfg["lora_alpha"]),
                    lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    pm = get_peft_model(base_model(base_dir, is_qlora(cfg)), lc)
    res = set_peft_model_state_dict(pm, {k: torch.from_numpy(v) for k, v in lora.items()})
    missing = [k for k in res.missing_keys if "lora_" in k]
    assert not missing and not res.unexpected_keys, (missing, res.unexpected_keys)
    return pm.eval()


def logits(model, tokens):
    with torch.no_grad():
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        return model(input_ids=ids).logits[0].float().numpy()


def rel_err(x, ref):
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


def load_st(path):
    """Every tensor of a file (torch tensors: numpy has no bf16) and its metadata."""
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def load_st_dir(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_st(os.path.join(d, "model.safetensors"))[0]
    out = {}
    for shard in sorted(set(json.load(open(index))["weight_map"].values())):
        out.update(load_st(os.path.join(d, shard))[0])
    return out


def bf16_bits(x):
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16).numpy()


# ---- running rubric ---------------------------------------------------------------------------

def run(cmd):
    env = dict(os.environ, OPENBLAS_CORETYPE=os.environ.get("OPENBLAS_CORETYPE", "SkylakeX"))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p


def rubric_outputs(build, base, ckpt, tokens, work, shard=None):
    rubric = os.path.join(build, "rubric")
    tool = os.path.join(build, "tests", "export_tool")
    o = {k: os.path.join(work, k) for k in ["adapter", "merged_f32", "merged_bf16"]}
    run([rubric, "export-adapter", "--adapter", ckpt, "--out", o["adapter"]])
    merge = [rubric, "merge", "--model", base, "--adapter", ckpt]
    run(merge + ["--out", o["merged_f32"], "--dtype", "f32"]
        + (["--max-shard-size", shard] if shard else []))
    run(merge + ["--out", o["merged_bf16"]])
    toks = ",".join(str(t) for t in tokens)
    for name, extra in [("logits_ckpt", []), ("logits_adapter", ["--adapter-dir", o["adapter"]])]:
        o[name] = os.path.join(work, name + ".safetensors")
        run([tool, "logits", "--model", base, "--ckpt", ckpt, "--tokens", toks,
             "--out", o[name]] + extra)
    return o


# ---- the checks -------------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.failed = 0

    def check(self, ok, what):
        print(("PASS " if ok else "FAIL ") + what)
        self.failed += 0 if ok else 1


def check_case(rep, name, build, base, ckpt, tokens, shard=None):
    cfg, lora = read_ckpt(ckpt)
    with tempfile.TemporaryDirectory() as work:
        o = rubric_outputs(build, base, ckpt, tokens, work, shard)
        ours = load_st(o["logits_ckpt"])[0]["logits"].numpy()
        back = load_st(o["logits_adapter"])[0]["logits"].numpy()
        rep.check(np.array_equal(ours, back), f"{name}: rubric reads its exported adapter back "
                  "to bit-identical logits")

        # (a) transformers on the merged fp32 model
        from transformers import AutoModelForCausalLM
        merged, info = AutoModelForCausalLM.from_pretrained(
            o["merged_f32"], dtype=torch.float32, output_loading_info=True)
        clean = not any(info.get(k) for k in ["missing_keys", "unexpected_keys",
                                                "mismatched_keys"])
        rep.check(clean, f"{name}: transformers loads the merged model with no missing or "
                  f"unexpected weight {info if not clean else ''}")
        tied = json.load(open(os.path.join(o["merged_f32"], "config.json")))[
            "tie_word_embeddings"]
        same = merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
        rep.check(same == bool(tied), f"{name}: lm_head tied to the embeddings: {same} "
                  f"(tie_word_embeddings {tied})")
        e = rel_err(ours, logits(merged.eval(), tokens))
        rep.check(e <= TOL_LOGITS, f"{name}: merged (transformers) vs rubric logits: max "
                  f"relative error {e:.2e} (<= {TOL_LOGITS:g})")

        # (b) PEFT loading rubric's adapter folder onto the base model
        from peft import PeftModel
        pm = PeftModel.from_pretrained(base_model(base, is_qlora(cfg)), o["adapter"]).eval()
        e = rel_err(ours, logits(pm, tokens))
        rep.check(e <= TOL_LOGITS, f"{name}: PEFT from_pretrained(adapter) vs rubric logits: "
                  f"max relative error {e:.2e} (<= {TOL_LOGITS:g})")

        if is_qlora(cfg):
            check_bnb_4bit(rep, name, base, o["adapter"], tokens, ours)

        # (c) pip safetensors reads rubric's files identically
        tensors, meta = load_st(os.path.join(o["adapter"], "adapter_model.safetensors"))
        rep.check(set(tensors) == set(lora) and all(
            tensors[k].dtype == torch.float32 and np.array_equal(tensors[k].numpy(), lora[k])
            for k in lora), f"{name}: adapter_model.safetensors: {len(tensors)} tensors "
            f"bit-equal to the checkpoint's /lora (metadata {meta})")
        ref = {k: v.float().numpy() for k, v in
               peft_from_ckpt(base, cfg, lora).merge_and_unload().state_dict().items()}
        got = {k: v.numpy() for k, v in load_st_dir(o["merged_f32"]).items()}
        if tied:
            ref.pop("lm_head.weight", None)
        rep.check(set(got) == set(ref), f"{name}: merged tensor names are the model's "
                  f"({len(got)}; extra {set(got) - set(ref)}, missing {set(ref) - set(got)})")
        adapted = {k for k in got if "base_model.model." + k[:-len(".weight")]
                   + ".lora_A.weight" in lora}
        worst = max(rel_err(got[k], ref[k]) for k in adapted)
        rep.check(worst <= 1e-5, f"{name}: {len(adapted)} adapted linears vs PEFT "
                  f"merge_and_unload: max relative error {worst:.2e}")
        plain = [k for k in got if k not in adapted]
        rep.check(all(np.array_equal(got[k], ref[k]) for k in plain),
                  f"{name}: {len(plain)} unadapted tensors bit-equal to the base's"
                  + (" (linears after bitsandbytes' NF4 round trip)" if is_qlora(cfg) else ""))
        got16 = load_st_dir(o["merged_bf16"])
        rep.check(all(got16[k].dtype == torch.bfloat16 and np.array_equal(
            got16[k].view(torch.int16).numpy(), bf16_bits(got[k])) for k in got),
                  f"{name}: the bf16 merge is torch's bf16 rounding of the fp32 one, bit for bit")
        m16 = AutoModelForCausalLM.from_pretrained(o["merged_bf16"], dtype=torch.float32)
        print(f"INFO {name}: the bf16 merge (computed in fp32) vs rubric logits: max relative "
              f"error {rel_err(ours, logits(m16.eval(), tokens)):.2e} (bf16 rounding of the "
              "weights; use --dtype f32 for an exact merge)")
        cj = json.load(open(os.path.join(o["merged_bf16"], "config.json")))
        rep.check(cj.get("dtype", cj.get("torch_dtype")) == "bfloat16",
                  f"{name}: merged config.json dtype bfloat16")


def check_bnb_4bit(rep, name, base, adapter, tokens, ours):
    """QLoRA: the base loaded as in QLoRA training (transformers + bitsandbytes 4-bit) holds
    exactly the weights rubric merged into, and PEFT on it computes rubric's logits up to
    bitsandbytes' CPU 4-bit matmul, which is not fp32-exact (about 3e-3 on the fixtures)."""
    import bitsandbytes.functional as bnbf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    bc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    q4 = AutoModelForCausalLM.from_pretrained(base, quantization_config=bc, dtype=torch.float32,
                                              device_map="cpu").eval()
    ref = base_model(base, True)
    same = True
    for lq, lr in zip(q4.model.layers, ref.model.layers):
        for part in ["self_attn", "mlp"]:
            for m in LINEARS:
                if hasattr(getattr(lq, part), m):
                    w = getattr(getattr(lq, part), m).weight
                    deq = bnbf.dequantize_4bit(w.data, w.quant_state).float()
                    same &= torch.equal(deq, getattr(getattr(lr, part), m).weight.data)
    rep.check(same, f"{name}: transformers' bitsandbytes 4-bit base dequantizes bit for bit to "
              "the NF4 weights rubric merged into")
    pm = PeftModel.from_pretrained(q4, adapter).eval()
    print(f"INFO {name}: PEFT on the bitsandbytes 4-bit base vs rubric logits: max relative "
          f"error {rel_err(ours, logits(pm, tokens)):.2e} (bitsandbytes' CPU 4-bit matmul is "
          "not fp32-exact)")


def fixture_cases():
    cases = json.load(open(os.path.join(FIXTURES, "cases.json")))
    return [(c["name"], os.path.join(FIXTURES, c["base"]), os.path.join(FIXTURES, c["ckpt"]),
             c["tokens"], c.get("max_shard_size")) for c in cases]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="meson build folder (rubric, export_tool)")
    ap.add_argument("--case", nargs=2, action="append", metavar=("BASE_DIR", "CKPT"),
                    help="a base model folder and a checkpoint (default: the fixtures)")
    ap.add_argument("--tokens", default="1,17,42,99,3,250,7,7,128,64,5,200")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.case:
        tokens = [int(t) for t in a.tokens.split(",")]
        cases = [(os.path.join(os.path.basename(os.path.dirname(os.path.abspath(c[1]))),
                               os.path.basename(c[1])), c[0], c[1], tokens, None)
                 for c in a.case]
    else:
        cases = fixture_cases()
    rep = Report()
    for name, base, ckpt, tokens, shard in cases:
        check_case(rep, name, os.path.abspath(a.build), base, ckpt, tokens, shard)
    print(f"{rep.failed} check(s) failed" if rep.failed else "all checks passed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
