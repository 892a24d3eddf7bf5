#!/usr/bin/env python3
"""Regenerate tests/fixtures/model/<name>/: tiny random decoders and the reference numbers of
one packed LoRA training step, from transformers + PEFT + torch on the CPU in fp32.

For each model (qwen3 untied, qwen3 tied, llama, qwen2 with q/k/v biases) this writes:
  config.json, model.safetensors      the base model (weights rounded to bf16, stored as bf16,
                                      so the fp32 math on both sides uses the same values)
  adapter_model.safetensors           PEFT LoRA (r 4, alpha 8, dropout 0, all 7 targets) with B
                                      set NON-zero so lora_A gets a real gradient
  batch.json                          one packed micro-batch: two samples, positions restarting,
                                      targets = next token where supervised, else -1
  expected.safetensors                logits at the supervised rows, loss_sum, n_tok, every LoRA
                                      gradient (of loss_sum / n_tok) as grad.<name>, and every
                                      LoRA weight after one torch.optim.AdamW step as
                                      updated.<name>
The packed forward (4D block-diagonal causal mask, restarting position_ids) is checked here
against running the two samples separately before anything is written.

Run from the source root:  python3 tests/ref/gen_model_fixtures.py
"""
import copy
import json
import os
import sys

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers import Qwen3Config, Qwen3ForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


def make_model(name):
    if name.startswith("qwen3"):
        cfg = Qwen3Config(head_dim=16, rope_theta=1000000.0,
                          tie_word_embeddings=(name == "qwen3_tied"), **COMMON)
        model = Qwen3ForCausalLM(cfg)
    elif name == "qwen2":
        cfg = Qwen2Config(rope_theta=10000.0, tie_word_embeddings=False, **COMMON)
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(rope_theta=500000.0, tie_word_embeddings=False, **COMMON)
        model = LlamaForCausalLM(cfg)
    return model


def randomize(model, gen):
    """Weights with real spread (norms around 1, biases too), rounded to bf16 values."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif pname.endswith("bias"):
                v = 0.1 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.15 * torch.randn(p.shape, generator=gen)
            p.copy_(v.bfloat16().float())


def make_batch(gen, vocab):
    """Two samples: prompt (not supervised) then answer (supervised)."""
    samples = [(5, 4), (7, 5)]  # (prompt tokens, answer tokens)
    tokens, positions, targets, cu = [], [], [], [0]
    for n_prompt, n_answer in samples:
        n = n_prompt + n_answer
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        for t in range(n):
            tokens.append(ids[t])
            positions.append(t)
            # target of token t is token t+1 when t+1 is an answer token
            targets.append(ids[t + 1] if t + 1 < n and t + 1 >= n_prompt else -1)
        cu.append(cu[-1] + n)
    return dict(tokens=tokens, positions=positions, targets=targets, cu_seqlens=cu)


def block_causal_mask(cu, T):
    mask = torch.full((T, T), torch.finfo(torch.float32).min)
    for s in range(len(cu) - 1):
        for i in range(cu[s], cu[s + 1]):
            mask[i, cu[s]:i + 1] = 0.0
    return mask[None, None]


def run(model, batch):
    """Logits of the packed batch [T, V]."""
    T = len(batch["tokens"])
    ids = torch.tensor([batch["tokens"]])
    pos = torch.tensor([batch["positions"]])
    out = model(input_ids=ids, position_ids=pos,
                attention_mask=block_causal_mask(batch["cu_seqlens"], T), use_cache=False)
    return out.logits[0]


def run_separately(model, batch):
    cu = batch["cu_seqlens"]
    parts = []
    for s in range(len(cu) - 1):
        ids = torch.tensor([batch["tokens"][cu[s]:cu[s + 1]]])
        parts.append(model(input_ids=ids, use_cache=False).logits[0])
    return torch.cat(parts)


def generate(name, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = make_model(name)
    randomize(base, gen)
    base.config._attn_implementation = "eager"
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    # save a bf16 copy: converting the live model would also round its RoPE inv_freq buffer
    copy.deepcopy(base).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    for f in os.listdir(folder):
        if f.startswith("generation_config"):
            os.remove(os.path.join(folder, f))

    # LoRA with a non-zero B
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS,
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lcfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder, safe_serialization=True)
    for f in ("README.md",):
        if os.path.exists(os.path.join(folder, f)):
            os.remove(os.path.join(folder, f))

    batch = make_batch(gen, base.config.vocab_size)
    with open(os.path.join(folder, "batch.json"), "w") as fh:
        json.dump(batch, fh)

    # the packed forward must equal the samples run separately
    model.eval()
    with torch.no_grad():
        packed, sep = run(model, batch), run_separately(model, batch)
    err = (packed - sep).abs().max().item()
    assert err < 1e-5, f"{name}: packed differs from separate by {err}"

    # loss = sum over supervised tokens / their count; backward; one AdamW step
    model.train()
    logits = run(model, batch)
    tg = torch.tensor(batch["targets"])
    sel = (tg >= 0).nonzero()[:, 0]
    loss_sum = F.cross_entropy(logits[sel], tg[sel], reduction="sum")
    n_tok = len(sel)
    (loss_sum / n_tok).backward()

    lora = {pname: p for pname, p in model.named_parameters() if p.requires_grad}
    expected = {"logits": logits[sel].detach().clone(),
                "loss_sum": loss_sum.detach().reshape(1).double(),
                "n_tok": torch.tensor([n_tok], dtype=torch.int64)}
    for pname, p in lora.items():
        expected["grad." + peft_name(pname)] = p.grad.detach().clone()
    opt = torch.optim.AdamW(list(lora.values()), **ADAMW)
    opt.step()
    for pname, p in lora.items():
        expected["updated." + peft_name(pname)] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(folder, "expected.safetensors"),
              metadata={"adamw": json.dumps(ADAMW)})
    print(f"{name}: loss {loss_sum.item() / n_tok:.6f} over {n_tok} tokens, "
          f"{len(lora)} LoRA tensors, packed-vs-separate {err:.2e}")


def peft_name(pname):
    """base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight -> saved name."""
    return pname.replace(".default", "")


def main():
    torch.set_num_threads(1)
    names = sys.argv[1:] or ["qwen3", "qwen3_tied", "llama", "qwen2"]
    for i, name in enumerate(names):
        generate(name, 1234 + i)


if __name__ == "__main__":
    main()
