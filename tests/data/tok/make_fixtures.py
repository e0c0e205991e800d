#!/usr/bin/env python3
"""Fixtures for tests/test_tokenizer.c, produced by independent
implementations: the `sentencepiece` and `tokenizers` pip packages.

    pip install sentencepiece tokenizers protobuf
    python3 tests/data/tok/make_fixtures.py            # (re)writes the fixtures
    python3 tests/data/tok/make_fixtures.py --check-spm FILE
        # loads FILE (a tokenizer.model written by moetool) with sentencepiece
        # and checks that it encodes the cases and test.txt exactly as the
        # bundled tokenizer.model does; exit status 0 when it does.

Writes into tests/data/tok/:
  spm_cases.json     [{"text", "spm": ids from tokenizer.model (sentencepiece),
                       "hf": ids from tokenizer.json (tokenizers)}]
  test_txt_ids.u16   sentencepiece ids of the whole data/test.txt, uint16 LE
  train_txt.json     {"n": count, "fnv1a64": hash of the ids as int32 LE} for
                     the whole data/train.txt
  bl_gpt2.json, bl_llama3.json, bl_qwen2.json
                     small byte-level BPE tokenizers trained here with
                     `tokenizers` (GPT-2 regex via ByteLevel; Llama-3 and Qwen2
                     patterns via Split + ByteLevel(use_regex=false))
  bl_cases.json      {"gpt2"|"llama3"|"qwen2": [{"text", "ids"}]} from `tokenizers`
  spm.gguf, bl_gpt2.gguf
                     tokenizer-only GGUF files (no tensors) written with the
                     `gguf` package, as llama.cpp's converter stores a 'llama'
                     (sentencepiece) and a 'gpt2' (byte-level) vocabulary
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
MODEL = os.path.join(ROOT, "models", "kjv-mixtral-15m")

TRICKY = [
    "",
    " ",
    "  ",
    "a",
    " leading space",
    "trailing space ",
    "  two leading",
    "multiple   inner    spaces",
    "\n",
    "line one\nline two\n\nline four\n",
    "\r\n windows \r\n",
    "tab\tseparated\tvalues",
    "don't can't I'm you're we've they'll he'd IT'S DON'T",
    "1 12 123 1234 12345 3.14159 1,000,000",
    "caf\u00e9 na\u00efve \u00fcber Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "emoji \U0001F600\U0001F680 and \U0001F468\u200D\U0001F469\u200D\U0001F467 family",
    "Greek \u0391\u03b8\u03ae\u03bd\u03b1 Cyrillic \u041c\u043e\u0441\u043a\u0432\u0430",
    "math \u2200x\u2208\u211d: x\u00b2 \u2265 0",
    "punct!!! ??? ... --- ((()))",
    "<s> literal </s> markers <unk>",
    "\u2581 already a metaspace \u2581\u2581",
    "control \x01\x02 chars \x7f",
    "And God said, Let there be light: and there was light.",
    "   \n\n   ",
    "x" * 300,
    " ".join(["the"] * 50),
    "\u00a0non-breaking\u00a0space and\u3000ideographic space",
    "Arabic \u0645\u0631\u062d\u0628\u0627 Hebrew \u05e9\u05dc\u05d5\u05dd Thai \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "digits \u0661\u0662\u0663 and \u2167 roman, \u00bd half",
]

BL_EXTRA = [
    "<|endoftext|>",
    "hello<|endoftext|>world",
    "a <|pad|> b<|endoftext|>",
    "'s 'S 'll 'LL 'Re",
    "\n\n\nabc\n \n",
    "a  \tb",
]


def fnv1a64(ids):
    h = 1469598103934665603
    for b in struct.pack("<%di" % len(ids), *ids):
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def read(p):
    with open(p, encoding="utf-8") as f:
        return f.read()


def spm_fixtures():
    import sentencepiece as spm
    from tokenizers import Tokenizer

    sp = spm.SentencePieceProcessor(model_file=os.path.join(MODEL, "tokenizer.model"))
    hf = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    ref = json.load(open(os.path.join(MODEL, "reference.json")))
    cases = []
    texts = [c["text"] for c in ref["tokenizer_cases"]] + TRICKY
    for c in ref["tokenizer_cases"]:
        assert sp.encode(c["text"]) == c["ids"], c["text"]
    for t in texts:
        cases.append({"text": t, "spm": sp.encode(t), "hf": hf.encode(t, add_special_tokens=False).ids})
    with open(os.path.join(HERE, "spm_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=True, indent=0)
    diff = [c["text"] for c in cases if c["spm"] != c["hf"]]
    print("spm cases:", len(cases), "where sentencepiece and tokenizers differ:", diff)

    test = read(os.path.join(MODEL, "data", "test.txt"))
    ids = sp.encode(test)
    assert max(ids) < 65536
    with open(os.path.join(HERE, "test_txt_ids.u16"), "wb") as f:
        f.write(struct.pack("<%dH" % len(ids), *ids))
    hf_ids = hf.encode(test, add_special_tokens=False).ids
    print("test.txt:", len(ids), "ids; tokenizers agrees:", hf_ids == ids)

    train = read(os.path.join(MODEL, "data", "train.txt"))
    tids = sp.encode(train)
    with open(os.path.join(HERE, "train_txt.json"), "w") as f:
        json.dump({"n": len(tids), "fnv1a64": "%016x" % fnv1a64(tids)}, f)
    print("train.txt:", len(tids), "ids")


RX_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
RX_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bl_fixtures():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    train = read(os.path.join(MODEL, "data", "train.txt"))[:200000]
    # a little of everything so that merges exist across scripts
    train += "\n".join(TRICKY + BL_EXTRA) * 3
    out = {}
    for name in ("gpt2", "llama3", "qwen2"):
        tok = Tokenizer(models.BPE(ignore_merges=(name == "llama3")))
        if name == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            rx = RX_LLAMA3 if name == "llama3" else RX_QWEN2
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|pad|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator([train], trainer)
        path = os.path.join(HERE, "bl_%s.json" % name)
        tok.save(path)
        if name == "qwen2":  # also exercise merges written as "a b" strings
            j = json.load(open(path, encoding="utf-8"))
            j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
            tok = Tokenizer.from_file(path)
        cases = []
        for t in TRICKY + BL_EXTRA:
            enc = tok.encode(t, add_special_tokens=False)
            cases.append({"text": t, "ids": enc.ids})
        out[name] = cases
        print(name, "vocab", tok.get_vocab_size(), "file", os.path.getsize(path), "bytes")
    with open(os.path.join(HERE, "bl_cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)


def gguf_fixtures():
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(open(os.path.join(MODEL, "tokenizer.model"), "rb").read())
    w = gguf.GGUFWriter(os.path.join(HERE, "spm.gguf"), arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece.encode("utf-8") for p in m.pieces])
    w.add_token_scores([p.score for p in m.pieces])
    w.add_token_types([int(p.type) for p in m.pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    j = json.load(open(os.path.join(HERE, "bl_gpt2.json"), encoding="utf-8"))
    vocab = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = {a["id"] for a in j["added_tokens"] if a["special"]}
    w = gguf.GGUFWriter(os.path.join(HERE, "bl_gpt2.gguf"), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list([p.encode("utf-8") for p, _ in vocab])
    w.add_token_types([3 if i in special else 1 for _, i in vocab])
    w.add_token_merges([" ".join(mm) if isinstance(mm, list) else mm for mm in j["model"]["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("gguf:", os.path.getsize(os.path.join(HERE, "spm.gguf")), os.path.getsize(os.path.join(HERE, "bl_gpt2.gguf")), "bytes")


def check_spm(path):
    import sentencepiece as spm

    ours = spm.SentencePieceProcessor(model_file=path)
    ref = spm.SentencePieceProcessor(model_file=os.path.join(MODEL, "tokenizer.model"))
    bad = 0
    texts = [c["text"] for c in json.load(open(os.path.join(MODEL, "reference.json")))["tokenizer_cases"]]
    texts += TRICKY + [read(os.path.join(MODEL, "data", "test.txt"))]
    for t in texts:
        a, b = ours.encode(t), ref.encode(t)
        if a != b:
            bad += 1
            print("differs on %r: %s vs %s" % (t[:60], a[:20], b[:20]))
    for i in range(ref.get_piece_size()):
        if ours.id_to_piece(i) != ref.id_to_piece(i):
            bad += 1
            print("piece %d differs" % i)
            break
    for fn in ("bos_id", "eos_id", "unk_id"):
        if getattr(ours, fn)() != getattr(ref, fn)():
            bad += 1
            print(fn, "differs")
    print("check-spm:", "OK" if not bad else "%d differences" % bad)
    return 0 if not bad else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-spm":
        sys.exit(check_spm(sys.argv[2]))
    spm_fixtures()
    bl_fixtures()
    gguf_fixtures()
