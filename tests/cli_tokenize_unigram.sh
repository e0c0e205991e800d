#!/usr/bin/env bash
# T5's sentencepiece unigram tokenizer, end to end, against the independent
# implementations (sentencepiece and Hugging Face tokenizers, in the python
# that has transformers):
#   - a random Switch Transformers checkpoint (vocab 840, written by
#     transformers' save_pretrained) with tests/data/tok/unigram.model as
#     spiece.model, and a copy with unigram.json as tokenizer.json;
#   - moetool tokenize -p LINE --json on each line of a set (the fixture
#     cases, normalisation cases, 150 lines of the bundled test.txt, random
#     mixes of ASCII, full-width, ligatures, accents, combining marks,
#     emoji, CJK, tabs and runs of spaces; T5's <extra_id_N> sentinels from
#     tokenizer_config.json's extra_ids): ids equal sentencepiece's + EOS
#     for spiece.model and tokenizers' (with T5's "$A </s>" post-processor)
#     for tokenizer.json; tokenize --decode of the ids equals
#     sentencepiece's decode;
#   - eval --pairs with text equals eval --pairs with the python ids (same
#     nll_sum); generate -p TEXT reads the same input ids as --ids and
#     decodes its output as sentencepiece does;
#   - convert --to hf and quantize copy spiece.model / tokenizer.json;
#     an archive of the checkpoint reads its spiece.model;
#   - a broken spiece.model: one line naming it, exit 1.
# Skips (77) without python + torch + transformers + sentencepiece + tokenizers.
set -u
BIN=${MT_BIN:-build/cli/moetool}
SRC=${MT_SOURCE_DIR:-.}
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers, sentencepiece, tokenizers' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch, transformers, sentencepiece and tokenizers"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
TOK=$SRC/tests/data/tok

# the checkpoint
"$PY" - "$T/sw" <<'PYEOF' || { echo "FAIL: writing the checkpoint"; exit 1; }
import sys, torch
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration
torch.manual_seed(0)
cfg = SwitchTransformersConfig(vocab_size=840, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                               num_decoder_layers=2, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
                               num_experts=4, expert_capacity=64, relative_attention_num_buckets=8,
                               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
SwitchTransformersForConditionalGeneration(cfg).eval().save_pretrained(sys.argv[1])
PYEOF
mkdir -p "$T/swj"
for f in config.json model.safetensors generation_config.json; do [ -e "$T/sw/$f" ] && ln -s "$T/sw/$f" "$T/swj/$f"; done
cp "$TOK/unigram.model" "$T/sw/spiece.model"
echo '{"tokenizer_class": "T5Tokenizer", "extra_ids": 32}' >"$T/sw/tokenizer_config.json"
cp "$TOK/unigram.json" "$T/swj/tokenizer.json"

# the lines, and the references
"$PY" - "$TOK" "$SRC/models/kjv-mixtral-15m/data/test.txt" "$T" <<'PYEOF' || { echo "FAIL: references"; exit 1; }
import json, os, random, sys
import sentencepiece as spm
from tokenizers import Tokenizer
tok_dir, test_txt, out = sys.argv[1:4]
lines = [c["text"] for c in json.load(open(os.path.join(tok_dir, "unigram_cases.json")))]
with open(test_txt, encoding="utf-8") as f:
    body = [l.rstrip("\n") for l in f if l.strip()]
lines += body[:150]
rng = random.Random(7)
alphabet = (list("abcdefghij ABC .,;:'!?") + ["  ", "\t", "   ", "\uff21", "\uff42", "\uff13", "\ufb01", "\ufb02",
            "\u00e9", "e\u0301", "\u00fc", "u\u0308", "\u00c5", "\u2460", "\u00b2", "\u2122", "\u3000", "\u00a0",
            "\U0001F600", "\u65e5", "\u0416", "\u200b", "\u2581", "the ", "LORD ", "and "])
for _ in range(120):
    lines.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
lines = [l for l in lines if l and "\n" not in l and "\r" not in l and not l.startswith("-")]
sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "unigram.model"))
hf = Tokenizer.from_file(os.path.join(tok_dir, "unigram.json"))
cases = [{"text": l, "spm": sp.encode(l) + [sp.eos_id()], "hf": hf.encode(l).ids,
          "decoded": sp.decode(sp.encode(l))} for l in lines]
# T5Tokenizer's sentinels (extra_ids 32 in tokenizer_config.json beside
# spiece.model; added tokens in tokenizer.json): both as tokenizers gives them,
# which is sentencepiece on the pieces between them (transformers' legacy T5Tokenizer)
for l in ["<extra_id_0> the <extra_id_1>", "And God<extra_id_31>said", "x <extra_id_5>  <extra_id_5>y",
          "<extra_id_32> is not one", "\uff21<extra_id_2>\ufb01"]:
    want = hf.encode(l).ids
    parts, ids = l, []
    import re
    for i, chunk in enumerate(re.split(r"(<extra_id_(?:[0-9]|[12][0-9]|3[01])>)", l)):
        if i % 2:
            ids.append(sp.get_piece_size() + 31 - int(chunk[10:-1]))
        elif chunk:
            ids += sp.encode(chunk)
    assert ids + [1] == want, (l, ids, want)
    cases.append({"text": l, "spm": want, "hf": want, "decoded": None})
with open(os.path.join(out, "lines.json"), "w") as f:
    json.dump(cases, f)
# pairs: text and the same as ids
with open(os.path.join(out, "text.jsonl"), "w") as ft, open(os.path.join(out, "ids.jsonl"), "w") as fi:
    for l in body[200:212]:
        a, b = l[: len(l) // 2], l[len(l) // 2:]
        ft.write(json.dumps({"input": a, "target": b}) + "\n")
        fi.write(json.dumps({"input": sp.encode(a) + [1], "target": sp.encode(b) + [1]}) + "\n")
print(len(lines))
PYEOF

# tokenize, line by line (one process per line: the CLI as a user runs it)
"$PY" - "$BIN" "$T" <<'PYEOF'
import json, subprocess, sys
bin_, t = sys.argv[1:3]
cases = json.load(open(t + "/lines.json"))
bad = {"spm": 0, "hf": 0, "decode": 0}
for c in cases:
    for key, model in (("spm", t + "/sw"), ("hf", t + "/swj")):
        r = subprocess.run([bin_, "tokenize", model, "-p", c["text"], "--json"], capture_output=True, text=True)
        got = json.loads(r.stdout)["ids"] if r.returncode == 0 else None
        if got != c[key]:
            bad[key] += 1
            if bad[key] <= 3:
                print("FAIL: %s ids of %r: %s, want %s %s" % (key, c["text"][:50], got, c[key], r.stderr.strip()))
        if key == "spm" and c["decoded"] is not None:
            ids = ",".join(map(str, c["spm"]))
            r = subprocess.run([bin_, "tokenize", model, "--decode", ids, "--json"], capture_output=True, text=True)
            text = json.loads(r.stdout)["text"] if r.returncode == 0 else None
            if text != c["decoded"]:
                bad["decode"] += 1
                if bad["decode"] <= 3:
                    print("FAIL: decode of %r: %r, sentencepiece %r" % (c["text"][:50], text, c["decoded"]))
print("tokenize: %d lines; mismatches: spiece.model %d, tokenizer.json %d, decode %d"
      % (len(cases), bad["spm"], bad["hf"], bad["decode"]))
sys.exit(1 if any(bad.values()) else 0)
PYEOF
[ $? = 0 ] && ok || bad "tokenize against sentencepiece / tokenizers"

# a whole file (test.txt, 130 KB, newlines normalised to spaces) in one text:
# long enough that summing path scores in float would pick other segmentations
"$BIN" tokenize "$T/sw" --file "$SRC/models/kjv-mixtral-15m/data/test.txt" --json >"$T/file.json" 2>"$T/err" || bad "tokenize --file: $(cat "$T/err")"
"$BIN" tokenize "$T/swj" --file "$SRC/models/kjv-mixtral-15m/data/test.txt" --json >"$T/filej.json" 2>"$T/err" || bad "tokenize --file json: $(cat "$T/err")"
"$PY" - "$T" "$TOK" "$SRC/models/kjv-mixtral-15m/data/test.txt" <<'PYEOF' && ok || bad "tokenize --file test.txt differs"
import json, sys
import sentencepiece as spm
from tokenizers import Tokenizer
t, tok, path = sys.argv[1:4]
text = open(path, encoding="utf-8").read()
for f, want, who in (("file.json", spm.SentencePieceProcessor(model_file=tok + "/unigram.model").encode(text) + [1],
                      "sentencepiece"),
                     ("filej.json", Tokenizer.from_file(tok + "/unigram.json").encode(text).ids, "tokenizers")):
    got = json.load(open(t + "/" + f))["ids"]
    i = next((k for k in range(min(len(got), len(want))) if got[k] != want[k]), None)
    assert got == want, (who, "first difference at", i, len(got), len(want))
    print("tokenize --file test.txt: %d ids, equal to %s's" % (len(got), who))
PYEOF

# eval: text pairs = the same pairs as ids
for M in sw swj; do
  a=$("$BIN" eval "$T/$M" --pairs "$T/text.jsonl" --json --quiet --threads 1 2>"$T/err") || { bad "eval text $M: $(cat "$T/err")"; continue; }
  b=$("$BIN" eval "$T/$M" --pairs "$T/ids.jsonl" --json --quiet --threads 1 2>"$T/err") || { bad "eval ids $M: $(cat "$T/err")"; continue; }
  sa=$(echo "$a" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["nll_sum"], d["target_tokens"])')
  sb=$(echo "$b" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["nll_sum"], d["target_tokens"])')
  [ "$sa" = "$sb" ] && ok || bad "$M: eval of text pairs ($sa) differs from the same pairs as ids ($sb)"
done

# generate: -p TEXT reads the ids sentencepiece gives, and decodes as sentencepiece does
P="And God saw the light, that it was good"
"$BIN" generate "$T/sw" -p "$P" -n 6 --ignore-eos --json --threads 1 >"$T/g.json" 2>"$T/err" || bad "generate -p: $(cat "$T/err")"
"$PY" - "$T/g.json" "$TOK/unigram.model" "$P" <<'PYEOF' && ok || bad "generate -p: input ids or decoded text"
import json, sys
import sentencepiece as spm
g = json.load(open(sys.argv[1]))
sp = spm.SentencePieceProcessor(model_file=sys.argv[2])
want = sp.encode(sys.argv[3]) + [1]
assert g["input_ids"] == want, (g["input_ids"], want)
assert g["text"] == sp.decode(g["ids"]), (g["text"], sp.decode(g["ids"]))
PYEOF
ids=$("$PY" -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["input_ids"])))' "$T/g.json")
"$BIN" generate "$T/sw" --ids "$ids" -n 6 --ignore-eos --json --threads 1 >"$T/g2.json" 2>/dev/null
"$PY" -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); sys.exit(a["ids"] != b["ids"])' \
  "$T/g.json" "$T/g2.json" && ok || bad "generate -p and --ids of the same input differ"

# the tokenizer travels: convert, quantize, archives
"$BIN" convert "$T/sw" -o "$T/conv" --to hf >/dev/null 2>"$T/err" || bad "convert: $(cat "$T/err")"
cmp -s "$T/sw/spiece.model" "$T/conv/spiece.model" && ok || bad "convert --to hf did not copy spiece.model"
"$BIN" convert "$T/swj" -o "$T/convj" --to hf >/dev/null 2>"$T/err" || bad "convert json: $(cat "$T/err")"
cmp -s "$T/swj/tokenizer.json" "$T/convj/tokenizer.json" && ok || bad "convert --to hf did not copy tokenizer.json"
"$BIN" quantize "$T/sw" -o "$T/q8" --bits 8 --calib-pairs "$T/text.jsonl" --calib-tokens 400 --threads 1 >/dev/null 2>"$T/err" \
  || bad "quantize with text pairs: $(cat "$T/err")"
cmp -s "$T/sw/spiece.model" "$T/q8/spiece.model" && ok || bad "quantize did not copy spiece.model"
a=$("$BIN" tokenize "$T/q8" -p "$P" --json 2>&1); b=$("$BIN" tokenize "$T/sw" -p "$P" --json 2>&1)
[ "$a" = "$b" ] && ok || bad "the quantized model tokenizes differently: $a vs $b"
tar -C "$T/sw" -czf "$T/sw.tar.gz" config.json model.safetensors spiece.model
a=$("$BIN" tokenize "$T/sw.tar.gz" -p "$P" --json 2>&1)
[ "$a" = "$b" ] && ok || bad "the archive tokenizes differently: $a vs $b"

# bad input
cp -r "$T/sw" "$T/broken"
head -c 3000 "$TOK/unigram.model" >"$T/broken/spiece.model"
"$BIN" tokenize "$T/broken" -p "$P" >"$T/out" 2>"$T/err"; rc=$?
if [ $rc = 1 ] && grep -q "broken/spiece.model" "$T/err" && [ "$(wc -l <"$T/err")" = 1 ]; then ok
else bad "broken spiece.model: exit $rc, $(cat "$T/err")"; fi
"$BIN" eval "$T/broken" --pairs "$T/text.jsonl" --quiet >"$T/out" 2>"$T/err"; rc=$?
if [ $rc = 1 ] && grep -q "spiece.model" "$T/err" && [ "$(wc -l <"$T/err")" = 1 ]; then ok
else bad "eval of text with a broken spiece.model: exit $rc, $(cat "$T/err")"; fi
"$BIN" eval "$T/broken" --pairs "$T/ids.jsonl" --quiet >/dev/null 2>&1 && ok || bad "eval of ids needs no tokenizer"

echo "cli_tokenize_unigram: $passes passed, $fails failed"
[ "$fails" = 0 ]
