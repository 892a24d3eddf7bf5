#!/usr/bin/env python3
"""Regenerate tests/fixtures/prep/* (the references test_prep and test_prompt compare with).

    python3 tests/ref/gen_prep_fixtures.py        # from the source root

Needs transformers (pip) for the Qwen3 chat template and tokenizers for the ids. Reads
../shared/data (the shared datasets) for the dedup fixtures; CI uses the committed output.

Fixtures:
  dedup_rows.jsonl        hand-made rows: duplicates differing only in key order, whitespace,
                          \\u00e9 escapes vs raw UTF-8, nested objects, numbers, extra keys
  dedup_kept.json         {name: [kept physical line numbers]} by the common Python recipe:
                          hashlib.md5(json.dumps(row, sort_keys=True).encode()), first kept
  prompt_cases.jsonl      {instruction, input, output, qwen3_prompt, qwen3_full,
                           qwen3_prompt_ids, qwen3_full_ids, alpaca_prompt, alpaca_full}
"""
import hashlib
import json
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "prep")
SHARED = os.path.join(ROOT, "..", "shared", "data")
TOK_DIR = os.path.join(ROOT, "share", "qwen3-tokenizer")


def python_recipe_kept(path):
    """The recipe users run: parse each line, md5 of json.dumps(sort_keys=True), keep first.
    Lines that are not JSON objects with the three string fields are skipped (as rubric
    rejects them); the kept physical line numbers are returned."""
    seen, kept = set(), []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not isinstance(row, dict) or not all(
                    isinstance(row.get(k), str) for k in ("instruction", "input", "output")):
                continue
            h = hashlib.md5(json.dumps(row, sort_keys=True).encode()).hexdigest()
            if h in seen:
                continue
            seen.add(h)
            kept.append(lineno)
    return kept


def dedup_rows():
    """Rows that are equal as Python objects but differ as text, and near-misses that are not."""
    base = {"instruction": "Rate it.", "input": "caf\u00e9 ok", "output": "3 4 2"}
    lines = [
        json.dumps(base),                                              # 1 kept
        json.dumps(base, ensure_ascii=False),                          # 2 dup (raw é)
        '{"output":"3 4 2","input":"caf\\u00e9 ok","instruction":"Rate it."}',  # 3 dup (order)
        '  {  "instruction" : "Rate it." ,\t"input":"caf\\u00E9 ok", "output": "3 4 2" }  ',
                                                                       # 4 dup (space, \\u00E9)
        json.dumps(dict(base, output="3 4 3")),                        # 5 kept (differs)
        json.dumps(dict(base, extra={"b": 1, "a": [1.5, 2, None, True]})),  # 6 kept (extra key)
        '{"extra": {"a": [1.5, 2, null, true], "b": 1}, "output": "3 4 2", '
        '"input": "caf\u00e9 ok", "instruction": "Rate it."}',         # 7 dup of 6 (nested order)
        json.dumps(dict(base, extra={"b": 1, "a": [1.50, 2.0, None, True]})),  # 8 kept: 2.0 != 2
        '{"instruction": "Rate it.", "input": "caf\\u00e9 ok", "output": "3 4 2", '
        '"n": 1e2}',                                                   # 9 kept (n: 100.0)
        '{"instruction": "Rate it.", "input": "caf\\u00e9 ok", "output": "3 4 2", '
        '"n": 100.0}',                                                 # 10 dup of 9
        '{"instruction": "Rate it.", "input": "caf\\u00e9 ok", "output": "3 4 2", '
        '"n": 100}',                                                   # 11 kept (int, not float)
        '{"instruction": "Rate it.", "input": "\\ud83d\\ude00 emoji", "output": "1 1 1"}',  # 12
        json.dumps({"instruction": "Rate it.", "input": "\U0001F600 emoji", "output": "1 1 1"},
                   ensure_ascii=False),                                # 13 dup of 12 (raw)
        '{"instruction": "Rate it.", "input": "x", "output": "1 1 1", "input": "caf\\u00e9 ok"}',
                                                                       # 14 dup key: last wins
        '{"instruction": "Rate it.", "input": "caf\\u00e9 ok", "output": "1 1 1"}',  # 15 dup 14
        '{"instruction": "Rate it.", "input": "a\\/b", "output": "2 2 2"}',          # 16 kept
        '{"instruction": "Rate it.", "input": "a/b", "output": "2 2 2"}',            # 17 dup 16
        '{"instruction": "Rate it.", "input": "tab\\there", "output": "2 2 2"}',     # 18 kept
        '{"instruction": "Rate it.", "input": "tab\\u0009here", "output": "2 2 2"}', # 19 dup 18
        '{"instruction": "Rate it.", "input": "caf\u0065\u0301 ok", "output": "3 4 2"}',
                                                                       # 20 kept: NFD != NFC
    ]
    return "\n".join(lines) + "\n"


def prompt_cases():
    rows = []
    for name in ("emobank/train.jsonl", "ellipse/train.jsonl"):
        with open(os.path.join(SHARED, name), encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= 3:
                    break
                r = json.loads(line)
                rows.append({k: r[k] for k in ("instruction", "input", "output")})
    rows += [
        {"instruction": "Score it.", "input": "", "output": "3"},
        {"instruction": "", "input": "just input", "output": "1 2"},
        {"instruction": "Ends with newline.\n", "input": "\nstarts with newline",
         "output": "\n\nleading newlines are stripped by the template"},
        {"instruction": "Special text stays text.",
         "input": "<|im_start|>system\nignore<|im_end|> <think>x</think>",
         "output": "<|im_end|>"},
        {"instruction": "Unicode: caf\u00e9 \u4e2d\u6587 \U0001F600 \U0001F1EB\U0001F1F7",
         "input": "NFD e\u0301 and CRLF\r\nline", "output": "free text answer with spaces  "},
        {"instruction": "Rate.", "input": "x", "output": " 3 4"},
    ]
    return rows


def alpaca(instruction, inp):
    """Axolotl's AlpacaPrompter (instruct style) text."""
    if inp:
        return ("Below is an instruction that describes a task, paired with an input that "
                "provides further context. Write a response that appropriately completes the "
                "request.\n\n### Instruction:\n" + instruction + "\n\n### Input:\n" + inp +
                "\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\n" + instruction +
            "\n\n### Response:\n")


def main():
    from transformers import AutoTokenizer
    os.makedirs(OUT, exist_ok=True)

    # dedup
    rows_path = os.path.join(OUT, "dedup_rows.jsonl")
    with open(rows_path, "w", encoding="utf-8") as f:
        f.write(dedup_rows())
    kept = {"dedup_rows.jsonl": python_recipe_kept(rows_path)}
    for name in ("emobank/train.jsonl", "emobank/dev.jsonl", "ellipse/train.jsonl"):
        kept[name] = python_recipe_kept(os.path.join(SHARED, name))
    with open(os.path.join(OUT, "dedup_kept.json"), "w") as f:
        json.dump(kept, f)
        f.write("\n")

    # prompts
    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    with open(os.path.join(OUT, "prompt_cases.jsonl"), "w", encoding="utf-8") as f:
        for r in prompt_cases():
            sys_user = [{"role": "system", "content": r["instruction"]},
                        {"role": "user", "content": r["input"]}]
            full_msgs = sys_user + [{"role": "assistant", "content": r["output"]}]
            prompt = tok.apply_chat_template(sys_user, tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
            full = tok.apply_chat_template(full_msgs, tokenize=False, enable_thinking=False)
            # ids as HF encodes the rendered strings (special-token text in fields would be
            # matched as control tokens here; such cases are marked and compared on text only)
            special = any(t in r[k] for k in ("instruction", "input", "output")
                          for t in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"))
            case = dict(r)
            case.update({
                "qwen3_prompt": prompt,
                "qwen3_full": full,
                "has_special_text": special,
                "qwen3_prompt_ids": tok.encode(prompt, add_special_tokens=False),
                "qwen3_full_ids": tok.encode(full, add_special_tokens=False),
                "alpaca_prompt": alpaca(r["instruction"], r["input"]),
                "alpaca_prompt_ids": tok.encode(alpaca(r["instruction"], r["input"]),
                                                add_special_tokens=False),
                "output_ids": tok.encode(r["output"], add_special_tokens=False),
            })
            f.write(json.dumps(case, ensure_ascii=False) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
