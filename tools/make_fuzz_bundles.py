#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/fuzz_model.c (fuzz/corpus/model/) and
fuzz/fuzz_layers.c (fuzz/corpus/layers/).

A bundle (fuzz/bundle.h) is a sequence of records: u8 name index, u32 LE
length, bytes. The seeds are tiny real models that moetool loads: a Hugging
Face directory (one shard; two shards with an index; with tokenizer.json and
tokenizer_config.json), the same as a GGUF, and GPTQ int4 and qmoe HF
outputs of it, so that fuzzing starts from every loader path.

usage: tools/make_fuzz_bundles.py MOETOOL_BINARY [OUT_DIR (default fuzz/corpus)]
Needs numpy (tests/make_checkpoint.py writes the checkpoints).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

NAMES = ["config.json", "model.safetensors.index.json", "tokenizer_config.json", "tokenizer.json",
         "tokenizer.model", "model.safetensors", "model-00001-of-00002.safetensors",
         "model-00002-of-00002.safetensors", "model.gguf"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def tokenizer_json(vocab):
    """A byte-fallback BPE in the SentencePiece style with exactly `vocab` ids."""
    v = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3}
    for c in "etaoinshrdlucmfwypvbgk":
        if len(v) < vocab - 2:
            v[c] = len(v)
    merges = []
    for a, b in [("\u2581", "t"), ("t", "h"), ("\u2581t", "h"), ("e", "n")]:
        if len(v) < vocab:
            v[a + b] = len(v)
            merges.append(a + " " + b)
    b = 0
    while len(v) < vocab:
        v["<0x%02X>" % b] = len(v)
        b += 1
    return {"added_tokens": [{"id": 0, "content": "<unk>", "special": True},
                             {"id": 1, "content": "<s>", "special": True},
                             {"id": 2, "content": "</s>", "special": True}],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
            "model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True,
                      "vocab": v, "merges": merges}}


def bundle(dir_or_file):
    out = b""
    if os.path.isfile(dir_or_file):
        files = [(dir_or_file, "model.gguf")]
    else:
        files = [(os.path.join(dir_or_file, n), n) for n in sorted(os.listdir(dir_or_file)) if n in NAMES]
    for path, name in files:
        data = open(path, "rb").read()
        out += struct.pack("<BI", NAMES.index(name), len(data)) + data
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    moetool = os.path.abspath(sys.argv[1])
    corpus = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "fuzz", "corpus")
    model_dir = os.path.join(corpus, "model")
    layers_dir = os.path.join(corpus, "layers")
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(layers_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="mt-bundles-")
    try:
        vocab = 48
        shape = ["--hidden", "32", "--ffn", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1",
                 "--experts", "2", "--topk", "1", "--vocab", str(vocab), "--seed", "7"]
        mk = [sys.executable, os.path.join(ROOT, "tests", "make_checkpoint.py")]
        for shards in (1, 2):
            d = os.path.join(tmp, "hf%d" % shards)
            subprocess.run(mk + [d, "--custom", "--dtype", "f32", "--shards", str(shards)] + shape, check=True,
                           stdout=subprocess.DEVNULL)
            for junk in ("tokens.txt", "cases.txt"):
                if os.path.exists(os.path.join(d, junk)):
                    os.remove(os.path.join(d, junk))
            json.dump(tokenizer_json(vocab), open(os.path.join(d, "tokenizer.json"), "w"))
            json.dump({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True,
                       "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"},
                      open(os.path.join(d, "tokenizer_config.json"), "w"))
        src = os.path.join(tmp, "hf1")
        calib = os.path.join(tmp, "calib.txt")
        open(calib, "w").write("the then ten tenth then thee " * 400)
        run = lambda *a: subprocess.run([moetool] + list(a), check=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        run("convert", src, "-o", os.path.join(tmp, "m.gguf"), "--to", "gguf", "--quiet")
        run("convert", src, "-o", os.path.join(tmp, "q8.gguf"), "--to", "gguf", "--dtype", "q8_0", "--quiet")
        run("quantize", src, "-o", os.path.join(tmp, "gptq"), "--format", "hf", "--bits", "4", "--method", "rtn",
            "--group", "32", "--quiet")
        run("quantize", src, "-o", os.path.join(tmp, "qmoe"), "--format", "hf", "--bits", "ternary", "--group", "row",
            "--codec", "qmoe", "--calib", calib, "--calib-tokens", "512", "--quiet")
        seeds = {"hf_one_shard": src, "hf_two_shards": os.path.join(tmp, "hf2"),
                 "gguf_f32": os.path.join(tmp, "m.gguf"), "gguf_q8_0": os.path.join(tmp, "q8.gguf"),
                 "hf_gptq_int4": os.path.join(tmp, "gptq"), "hf_qmoe": os.path.join(tmp, "qmoe")}
        for name, path in seeds.items():
            open(os.path.join(model_dir, name + ".bundle"), "wb").write(bundle(path))
        for i, (n, spec) in enumerate([(4, "0-1:6,2-3:4"), (0, "0:1"), (32, "0-31:2"), (2, "1:3,0:2"),
                                       (8, "0-7:65536"), (3, "2-1:4"), (1, "0:6,")]):
            open(os.path.join(layers_dir, "spec%d" % i), "wb").write(bytes([n]) + spec.encode())
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
