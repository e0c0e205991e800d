#!/usr/bin/env python3
"""The T5-style sentencepiece **unigram** tokenizer fixtures, made with the
independent implementations: sentencepiece's own trainer and encoder, and
Hugging Face `tokenizers` (as transformers' T5Converter lays a spiece.model
out as tokenizer.json).

    /usr/bin/python3 tests/data/tok/make_unigram.py      # (re)writes the fixtures

Writes into tests/data/tok/:
  unigram.model       spiece.model: unigram, 800 pieces (pad 0, </s> 1,
                      <unk> 2, no BOS), trained on the bundled KJV train.txt
                      with a normalization rule table = nmt_nfkc (as
                      sentencepiece applies it) restricted to Latin, Greek,
                      combining marks, general punctuation, letter-likes,
                      enclosed numbers, ligatures, full-width forms, so the
                      precompiled charsmap is a real one but small
  unigram.json        the same model as tokenizer.json: Unigram with scores,
                      Precompiled + Strip(right) + Replace(" {2,}" -> U+2581)
                      normalizer, Metaspace pre-tokenizer, "$A </s>" post-
                      processor, 32 <extra_id_N> special tokens (T5Converter)
  unigram_cases.json  [{"text", "spm": sentencepiece ids, "hf": tokenizers
                      ids (no special tokens added), "spm_decoded": the
                      text sentencepiece decodes spm to}]
"""
import json
import os
import struct
import sys
import tempfile
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TRAIN = os.path.join(ROOT, "models", "kjv-mixtral-15m", "data", "train.txt")

CASES = [
    "",
    " ",
    "   ",
    "a",
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    " leading space",
    "   three leading spaces",
    "trailing space ",
    "trailing spaces and tab   \t",
    "multiple   inner    spaces",
    "tab\tseparated\tvalues",
    "\tleading tab",
    "line one\nline two\n\nline four\n",
    "\r\n windows \r\n",
    "full-width \uff21\uff22\uff23 \uff11\uff12\uff13 \uff08\uff01\uff09",
    "ligatures \ufb01nal \ufb02ow of\ufb00ice \ufb03x",
    "accents caf\u00e9 na\u00efve \u00fcber cafe\u0301 nai\u0308ve Zo\u00eb",
    "combining e\u0301 a\u0300 n\u0303 c\u0327",
    "enclosed \u2460\u2461\u2462 and super x\u00b2 y\u2070 \u2153",
    "letterlike \u2122 \u2116 \u210c \u2126",
    "spaces\u00a0nbsp\u2003em\u2009thin\u3000ideographic",
    "zero\u200bwidth\u200b joiner\u200d and \ufeffbom",
    "emoji \U0001F600\U0001F680 and \U0001F468\u200D\U0001F469\u200D\U0001F467 family",
    "unknown \u65e5\u672c\u8a9e \u0416\u0437 \u05d0\u05d1 chars",
    "two unknowns \u65e5\u65e5 in a row",
    "Greek \u0391\u03b8\u03ae\u03bd\u03b1 \u1f00",
    "control \x01\x02 chars \x7f here",
    "punct!!! ??? ... --- ((())) \"quotes\" 'single'",
    "numbers 1 12 123 1234 3.14159 1,000,000",
    "\u2581 already a metaspace \u2581\u2581",
    "<s> literal </s> markers <unk>",
    "UPPER lower MiXeD",
    "hyphen-ated and under_score and slash/es",
    "x" * 300,
    "The LORD is my shepherd; I shall not want.",
    "\u2581",
    "\u00e9",
    "\ufb01",
]


def read_lines(n):
    out = []
    with open(os.path.join(ROOT, "models", "kjv-mixtral-15m", "data", "test.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                out.append(line)
            if len(out) >= n:
                break
    return out


def rules_tsv(path):
    import sentencepiece as spm
    n = spm.SentencePieceNormalizer(rule_name="nmt_nfkc", add_dummy_prefix=False,
                                    remove_extra_whitespaces=False, escape_whitespaces=False)
    ranges = [(0x0, 0x250), (0x300, 0x370), (0x370, 0x400), (0x2000, 0x2070), (0x2070, 0x20A0),
              (0x2100, 0x2190), (0x2460, 0x2500), (0x3000, 0x3001), (0xFB00, 0xFB07), (0xFF01, 0xFF5F),
              (0xFEFF, 0xFF00)]
    rules = {}

    def add(src):
        dst = n.normalize(src)
        if dst != src:
            rules[src] = dst
    for a, b in ranges:
        for cp in range(a, b):
            add(chr(cp))
    for base in "aeiouycnAEIOUYCN":  # base + combining mark -> composed
        for m in range(0x300, 0x331):
            s = base + chr(m)
            if len(unicodedata.normalize("NFC", s)) == 1:
                add(s)
    with open(path, "w") as f:
        for src, dst in sorted(rules.items()):
            f.write(" ".join("%X" % ord(c) for c in src) + "\t" + " ".join("%X" % ord(c) for c in dst) + "\n")


def pb_fields(buf):
    """(field, wire type, value) of a protobuf message (enough for ModelProto)."""
    i = 0

    def varint():
        nonlocal i
        x = s = 0
        while True:
            b = buf[i]
            i += 1
            x |= (b & 0x7F) << s
            s += 7
            if not b & 0x80:
                return x
    while i < len(buf):
        key = varint()
        f, wt = key >> 3, key & 7
        if wt == 0:
            yield f, wt, varint()
        elif wt == 2:
            n = varint()
            yield f, wt, buf[i:i + n]
            i += n
        elif wt == 5:
            yield f, wt, buf[i:i + 4]
            i += 4
        elif wt == 1:
            yield f, wt, buf[i:i + 8]
            i += 8
        else:
            raise ValueError("wire type %d" % wt)


def charsmap_of(model_bytes):
    for f, wt, v in pb_fields(model_bytes):
        if f == 3:
            for g, wt2, w in pb_fields(v):
                if g == 2:
                    return bytes(w)
    return b""


def build_json(model_path, json_path, n_extra=32):
    import sentencepiece as spm
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, AddedToken
    from tokenizers.models import Unigram
    sp = spm.SentencePieceProcessor(model_file=model_path)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab += [("<extra_id_%d>" % i, 0.0) for i in range(n_extra - 1, -1, -1)]
    tok = Tokenizer(Unigram(vocab, sp.unk_id(), False))
    charsmap = charsmap_of(open(model_path, "rb").read())
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap),
                                           normalizers.Strip(left=False, right=True),
                                           normalizers.Replace(Regex(" {2,}"), "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", sp.eos_id())])
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), special=True, normalized=False)
                            for i in (sp.pad_id(), sp.eos_id(), sp.unk_id())] +
                           [AddedToken("<extra_id_%d>" % i, special=True, normalized=False) for i in range(n_extra)])
    tok.save(json_path)
    return Tokenizer.from_file(json_path)


def main():
    import sentencepiece as spm
    model = os.path.join(HERE, "unigram.model")
    with tempfile.TemporaryDirectory() as d:
        tsv = os.path.join(d, "rules.tsv")
        rules_tsv(tsv)
        spm.SentencePieceTrainer.train(input=TRAIN, model_prefix=os.path.join(d, "uni"), vocab_size=800,
                                       model_type="unigram", normalization_rule_tsv=tsv,
                                       character_coverage=0.9995, input_sentence_size=20000,
                                       shuffle_input_sentence=True, seed_sentencepiece_size=20000,
                                       pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2)
        with open(os.path.join(d, "uni.model"), "rb") as f, open(model, "wb") as g:
            g.write(f.read())
    sp = spm.SentencePieceProcessor(model_file=model)
    hf = build_json(model, os.path.join(HERE, "unigram.json"))
    cases = []
    for text in CASES + read_lines(100):
        ids = sp.encode(text)
        cases.append({"text": text, "spm": ids, "hf": hf.encode(text, add_special_tokens=False).ids,
                      "spm_decoded": sp.decode(ids)})
    with open(os.path.join(HERE, "unigram_cases.json"), "w") as f:
        json.dump(cases, f, ensure_ascii=True, indent=0)
    diff = [c["text"] for c in cases if c["spm"] != c["hf"]]
    print("%d cases, %d where sentencepiece and tokenizers differ: %r" % (len(cases), len(diff), diff))


if __name__ == "__main__":
    sys.exit(main())
