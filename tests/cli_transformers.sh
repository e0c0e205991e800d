#!/usr/bin/env bash
# Hugging Face checkpoints written by moetool load in `transformers` and
# compute what moetool computes: a GGUF converted back to HF (f32 and bf16),
# and (when the merge verb exists) an 8 -> 6 merged checkpoint. Uses the
# Python that has torch (Debian's python3-torch + transformers 4.40, see
# tools/install-deps.sh); skips (77) without it.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers, tokenizers' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch + transformers"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
TEXT=$MODEL/data/test.txt
ppl_of() { "$BIN" eval "$1" --text "$TEXT" --ctx 128 --max-windows 8 --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
check() { # name dir [extra args]
  local name=$1 dir=$2; shift 2
  local p; p=$(ppl_of "$dir") || { echo "FAIL $name: moetool eval failed"; fails=$((fails + 1)); return; }
  if "$PY" "$SRC/tests/transformers_check.py" "$dir" --tokenizer "$MODEL/tokenizer.json" --text "$TEXT" \
       --ctx 128 --windows 8 --expect-ppl "$p" --rtol 1e-4 "$@"; then passes=$((passes + 1)); else
    echo "FAIL $name"; fails=$((fails + 1)); fi
}

"$BIN" convert "$MODEL" -o "$T/m.gguf" 2>/dev/null && "$BIN" convert "$T/m.gguf" -o "$T/back-bf16" 2>/dev/null \
  || { echo "FAIL: convert"; exit 1; }
"$BIN" convert "$T/m.gguf" -o "$T/back-f32" --dtype f32 2>/dev/null || { echo "FAIL: convert f32"; exit 1; }
check gguf-to-hf-bf16 "$T/back-bf16" --reference-logits "$MODEL/reference.json"
check gguf-to-hf-f32 "$T/back-f32" --reference-logits "$MODEL/reference.json"
# GGUF -> HF writes tokenizer.json: transformers' fast tokenizer loads it
# (no sentencepiece) and gives sentencepiece's ids for every reference case
if "$PY" - "$T/back-bf16" "$MODEL/reference.json" <<'PY'
import json, sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
assert type(t).__name__ == "LlamaTokenizerFast", type(t).__name__
for c in json.load(open(sys.argv[2]))["tokenizer_cases"]:
    ids = t.encode(c["text"])
    assert ids == [1] + c["ids"], (c["text"], ids, c["ids"])
    assert t.decode(ids, skip_special_tokens=True) == c["text"], c["text"]
PY
then passes=$((passes + 1)); else echo "FAIL gguf-to-hf tokenizer.json in transformers"; fails=$((fails + 1)); fi
if "$BIN" merge --help >/dev/null 2>&1; then
  if "$BIN" merge "$MODEL" -o "$T/merged6" --experts 6 --calib-tokens 4096 >/dev/null 2>"$T/err"; then
    check merged-8to6 "$T/merged6"
  else
    echo "FAIL merge: $(cat "$T/err")"; fails=$((fails + 1))
  fi
fi
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
