#!/usr/bin/env python3
"""Regenerate tests/fixtures/tokenizer/ from Hugging Face `tokenizers` (the reference).

    python3 tests/ref/gen_tokenizer_fixtures.py            # from the source root
    python3 tests/ref/gen_tokenizer_fixtures.py --diff ellipse/train.jsonl 17 input
        (prints the reference ids of one data field next to rubric's, first difference marked)

Needs pip `tokenizers` and `xxhash`. Writes:

edge_cases.jsonl  one case per line:
    {"name", "text" | "parts": [[unit, count], ...] (text = unit*count joined),
     "ids": HF ids with added tokens matched, "ids_literal": (only when different) HF ids with
     added tokens treated as plain text, "nfc": (only when different) NFC of the text}
  or a decode case: {"name", "decode_ids": [...], "text": HF Tokenizer.decode(ids)}
  or a lookup case: {"name", "token": text, "id": HF token_to_id}, and one {"vocab_size": n},
  or {"flag_variant": {content: {flag: value}}} (added-token flags set on a variant of the
  tokenizer) followed by {"name", "flag_text", "flag_ids"} cases encoded with that variant.
data_<dataset>_<split>.tsv  per row of ../shared/data/<dataset>/<split>.jsonl (the *.meta.jsonl
    files hold no text fields and are skipped): "row<TAB>n:h<TAB>n:h<TAB>n:h" for the fields
    instruction, input, output, where n is the token count and h the xxh64 (seed 0, hex) of the
    ids as little-endian uint32. A "#" header line names the source file and its xxh64.

Literal mode (rubric's TOK_LITERAL, used for user data): the reference is a Tokenizer built from
the same tokenizer.json with "added_tokens" emptied. The added tokens are not in model.vocab, so
this is exactly HF's pipeline (NFC, regex split, byte-level BPE) with no added-token matching.
"""
import argparse
import glob
import json
import os
import random
import subprocess
import sys
import unicodedata

import xxhash
from tokenizers import Tokenizer

FIELDS = ("instruction", "input", "output")


def load_tokenizers(path):
    full = Tokenizer.from_file(path)
    spec = json.load(open(path, encoding="utf-8"))
    spec["added_tokens"] = []
    literal = Tokenizer.from_str(json.dumps(spec))
    return full, literal


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def digest(ids):
    data = b"".join(i.to_bytes(4, "little") for i in ids)
    return "%d:%016x" % (len(ids), xxhash.xxh64(data, seed=0).intdigest())


def edge_texts():
    """(name, text or parts) of the edge cases."""
    rng = random.Random(20240601)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1000))
    digits = "".join(rng.choice("0123456789") for _ in range(1000))
    nfd = unicodedata.normalize("NFD", "Café crème, naïve Ångström, São Paulo, Hà Nội, Ωμέγα")
    return [
        ("empty", ""),
        ("ascii sentence", "The quick brown fox jumps over the lazy dog."),
        ("nfc text", unicodedata.normalize("NFC", nfd)),
        ("nfd text", nfd),
        ("hangul jamo (nfd)", unicodedata.normalize("NFD", "한국어 텍스트")),
        ("crlf", "line one\r\nline two\r\n\r\nline four\r\n"),
        ("lone cr", "a\rb\r\rc"),
        ("emoji", "I love it 😀😂🥲 👍🏽 done"),
        ("zwj family", "👨‍👩‍👧‍👦 and 👩🏽‍💻 and 🏳️‍🌈"),
        ("flags", "🇫🇷🇩🇪🇯🇵 flags 🇺🇸"),
        ("cjk", "日本語のテキストと中文文本，还有한국어。"),
        ("mixed scripts", "Hello мир 世界 مرحبا שלום नमस्ते γειά 123 ١٢٣ ๑๒๓"),
        ("contractions", "it's we'll I'M you'RE they've she'd don't 'S 'Ll"),
        ("long s contraction", "the king'ſ and 'ſ"),
        ("numbers", "3.14159 1,000,000 -42 +7 1e10 0x1F 2024-06-01 ½ ① Ⅻ"),
        ("tabs newlines", "\t\tindented\n\n\n  \n\t\n   spaced   \n\n"),
        ("spaces before newline", "a   \n   b \n\n  c"),
        ("unicode spaces", "a\u00a0b\u2002c\u3000d\u180ee\u200bf\u2028g\u2029h\u0085i\x1cj"),
        ("recent unicode letters", " \U0001e4d0\U0001e4d1x \U00031350\U00031351 \U00011f04 🥹"),
        ("nul and combining marks", "a\x00e\u0301 x\x00\u0300 \u0300\u0301 leading marks"),
        ("composition exclusions", "\u0958 \u2126 \u212b \uac00\u11a8 \u1100\u1161\u11a8"),
        ("fullwidth", "ｆｕｌｌｗｉｄｔｈ １２３ ＡＢＣ"),
        ("control chars", "x\x00y\x01z\x7f\x1b[0m"),
        ("valid but unusual", "\ufeffBOM \U0010fffd \ufffd \U0001d49c \u0301 start \ue000 pua"),
        ("punctuation runs", "!!!??? ... --- ((())) \"quoted\" 'single' `tick` ~~~"),
        ("code", "def f(x):\n    return x**2  # square\n\nif __name__ == '__main__':\n"),
        ("im_end", "the end<|im_end|>after"),
        ("im_start system", "<|im_start|>system\nYou are a bot.<|im_end|>\n<|im_start|>user\n"),
        ("think", "<think>\nreasoning\n</think>\n\n3 4 2 5"),
        ("empty think", "<think>\n\n</think>\n\n"),
        ("endoftext", "doc one<|endoftext|>doc two"),
        ("broken added", "<|im_end| <|im_end <think <|im_start|>|> <<think>>"),
        ("adjacent added", "<|im_end|><|im_end|><think></think>"),
        ("tool tokens", "<tool_call>{\"a\": 1}</tool_call><tool_response>ok</tool_response>"),
        ("scores", "3 4 2 5"),
        ("100000 digits", [[digits, 100]]),
        ("50000 spaces", [[" ", 50000]]),
        ("50000 spaces then word", [[" ", 50000], ["word", 1]]),
        ("40000-letter word", [[letters, 40]]),
        ("40000 same letter", [["a", 40000]]),
        ("newline run", [["\n", 30000]]),
        ("crlf run", [["\r\n", 20000]]),
        ("nfd run", [["e\u0301", 20000]]),
    ]


def expand(spec):
    if isinstance(spec, str):
        return spec
    return "".join(unit * count for unit, count in spec)


def bytes_to_unicode():
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
                 + list(range(0xAE, 0x100)))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def decode_cases(full):
    byte_char = bytes_to_unicode()

    def byte_id(b):
        return full.token_to_id(byte_char[b])

    emoji = ids_of(full, "😀")
    cjk = ids_of(full, "日本語のテキスト")
    split = ids_of(full, "a🫨龘b")  # both characters are split across tokens
    cases = [
        ("characters split across tokens", split),
        ("split character, first part only", split[:2]),
        ("split character, first two parts", split[:3]),
        ("whole emoji", emoji),
        ("emoji first token only", emoji[:1]),
        ("emoji bytes one by one", [byte_id(b) for b in "😀".encode()]),
        ("emoji missing last byte", [byte_id(b) for b in "😀".encode()[:3]]),
        ("cjk", cjk),
        ("lone continuation bytes", [byte_id(0x80), byte_id(0xBF), byte_id(ord("a"))]),
        ("surrogate bytes", [byte_id(0xED), byte_id(0xA0), byte_id(0x80)]),
        ("overlong", [byte_id(0xC0), byte_id(0xAF), byte_id(0xE0), byte_id(0x80)]),
        ("bad lead bytes", [byte_id(0xF5), byte_id(0xFF), byte_id(0xF4), byte_id(0x90)]),
        ("truncated then ascii", [byte_id(0xE6), byte_id(0x97), byte_id(ord("x"))]),
        ("added tokens", ids_of(full, "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>")),
        ("space and newline", ids_of(full, "  a\n\tb \r\n")),
    ]
    for name, ids in cases:
        yield {"name": name, "decode_ids": ids,
               "text": full.decode(ids, skip_special_tokens=False)}


def lookup_cases(full):
    for token in ["<think>", "</think>", "<|im_end|>", "<|im_start|>", "<|endoftext|>",
                  "Ġthe", "ĠĠ", "Ċ", "hello", "!"]:
        yield {"name": "token_to_id " + token, "token": token, "id": full.token_to_id(token)}
    yield {"name": "vocab size", "vocab_size": full.get_vocab_size(with_added_tokens=True)}


# Added-token flags Qwen3 does not use, exercised on a variant of the tokenizer (the C test
# builds the same variant from the fixture's "flag_variant" line).
FLAG_VARIANT = {"<think>": {"lstrip": True}, "</think>": {"rstrip": True},
                "<tool_call>": {"single_word": True}, "<|fim_pad|>": {"normalized": True},
                "<|im_end|>": {"lstrip": True, "rstrip": True}}
FLAG_TEXTS = ["a  <think>  b", "x</think>  \n y", "a<tool_call>b", "a <tool_call> b",
              "é<tool_call>", "_<tool_call>", "1<tool_call>", "<tool_call>٣", "<tool_call>",
              " \u00a0<think>", "\u3000<|im_end|>\u3000z", "<|fim_pad|>e\u0301 x",
              "<think><think>  <|im_end|>  <|im_end|>", "\u2028<think>", "a\u200b<think>",
              "\x85<think>\u180e"]


def flag_cases(path):
    spec = json.load(open(path, encoding="utf-8"))
    for tok in spec["added_tokens"]:
        tok.update(FLAG_VARIANT.get(tok["content"], {}))
    variant = Tokenizer.from_str(json.dumps(spec))
    yield {"name": "flag variant", "flag_variant": FLAG_VARIANT}
    for text in FLAG_TEXTS:
        yield {"name": "flags " + text, "flag_text": text, "flag_ids": ids_of(variant, text)}


def write_edge_cases(full, literal, out_dir, tokenizer_path):
    path = os.path.join(out_dir, "edge_cases.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for name, spec in edge_texts():
            text = expand(spec)
            case = {"name": name}
            case["text" if isinstance(spec, str) else "parts"] = spec
            case["ids"] = ids_of(full, text)
            lit = ids_of(literal, text)
            if lit != case["ids"]:
                case["ids_literal"] = lit
            nfc = unicodedata.normalize("NFC", text)
            if nfc != text:
                case["nfc"] = nfc
            f.write(json.dumps(case, ensure_ascii=False, separators=(",", ":")) + "\n")
        cases = list(decode_cases(full)) + list(lookup_cases(full))
        for case in cases + list(flag_cases(tokenizer_path)):
            f.write(json.dumps(case, ensure_ascii=False, separators=(",", ":")) + "\n")
    print("wrote", path, os.path.getsize(path), "bytes")


def data_files(data_dir):
    files = sorted(glob.glob(os.path.join(data_dir, "*", "*.jsonl")))
    return [p for p in files if not p.endswith(".meta.jsonl")]


def write_data_digests(full, literal, data_dir, out_dir):
    for path in data_files(data_dir):
        rel = os.path.relpath(path, data_dir)
        dataset, split = rel[:-len(".jsonl")].split(os.sep)
        raw = open(path, "rb").read()
        lines = [f"# source {rel} xxh64 {xxhash.xxh64(raw, seed=0).hexdigest()}"]
        for row_no, line in enumerate(raw.decode("utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            cols = []
            for field in FIELDS:
                ids = ids_of(full, row[field])
                # rubric encodes user data literally; the data holds no added-token text, so
                # both modes must agree (checked here, relied on by the C test)
                assert ids == ids_of(literal, row[field]), (rel, row_no, field)
                cols.append(digest(ids))
            lines.append("\t".join([str(row_no)] + cols))
        out = os.path.join(out_dir, f"data_{dataset}_{split}.tsv")
        with open(out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print("wrote", out, os.path.getsize(out), "bytes")


def show_diff(full, data_dir, rel, row_no, field, tokenizer_path):
    line = open(os.path.join(data_dir, rel), encoding="utf-8").read().split("\n")[row_no - 1]
    text = json.loads(line)[field]
    want = ids_of(full, text)
    rubric = os.environ.get("RUBRIC_BIN", "build/rubric")
    out = subprocess.run([rubric, "tokenize", "--tokenizer", tokenizer_path, "--literal"],
                         input=json.dumps({"text": text}).encode(), capture_output=True,
                         check=True)
    got = json.loads(out.stdout)["ids"]
    first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    if want == got:
        print(f"identical: {len(want)} ids")
        return
    print(f"reference {len(want)} ids, rubric {len(got)} ids, first difference at {first}")
    print("reference:", want[max(0, first - 5):first + 10])
    print("rubric:   ", got[max(0, first - 5):first + 10])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", default="share/qwen3-tokenizer/tokenizer.json")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    ap.add_argument("--diff", nargs=3, metavar=("FILE", "ROW", "FIELD"))
    args = ap.parse_args()
    full, literal = load_tokenizers(args.tokenizer)
    if args.diff:
        show_diff(full, args.data, args.diff[0], int(args.diff[1]), args.diff[2], args.tokenizer)
        return 0
    os.makedirs(args.out, exist_ok=True)
    write_edge_cases(full, literal, args.out, args.tokenizer)
    write_data_digests(full, literal, args.data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
