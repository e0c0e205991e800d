#!/usr/bin/env bash
# `moetool quantize` contract: a Q4_0 GGUF that `moetool eval` runs with a
# perplexity near the original's, --json output, --eval-only, and bad
# options / short calibration / dense model with --experts-only giving a
# one-line error, a non-zero exit and no output file.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect_err() { # CODE PATTERN CMD...
  local want=$1 pat=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != "$want" ]; then bad "exit $got (want $want): $*"; head -5 "$T/err"; return; fi
  if ! grep -q -- "$pat" "$T/err"; then bad "stderr lacks '$pat': $*"; head -5 "$T/err"; return; fi
  if ls "$T"/out*.gguf* >/dev/null 2>&1; then bad "output left behind: $*"; ls "$T"; return; fi
  ok
}

# A file llama.cpp's Q4_0 layout, evaluated by the runtime.
"$BIN" quantize "$MODEL" -o "$T/q4.gguf" --method rtn --bits 4 --json --threads 2 >"$T/q.json" 2>"$T/err" || { bad "rtn q4_0 failed"; cat "$T/err"; }
grep -q '"expert_type":"q4_0"' "$T/q.json" && ok || bad "json lacks expert_type q4_0: $(cat "$T/q.json")"
"$BIN" eval "$T/q4.gguf" --text "$MODEL/data/test.txt" --max-windows 8 --json --threads 2 >"$T/e.json" 2>"$T/err" || { bad "eval of q4_0 failed"; cat "$T/err"; }
"$BIN" eval "$MODEL" --max-windows 8 --json --threads 2 >"$T/e0.json" 2>/dev/null
python3 - "$T/e.json" "$T/e0.json" <<'PY' && ok || bad "q4_0 perplexity not within 3% of the original"
import json, sys
q = json.load(open(sys.argv[1]))["ppl"]; o = json.load(open(sys.argv[2]))["ppl"]
print(f"q4_0 ppl {q:.4f} original {o:.4f}")
sys.exit(0 if abs(q - o) <= 0.03 * o else 1)
PY
rm -f "$T/q4.gguf"

# TQ1_0 holds the TQ2_0 grid's weights exactly: same perplexity, and (when
# llama.cpp's gguf-py is there) the same dequantized tensors.
for t in tq1_0 tq2_0; do
  "$BIN" quantize "$MODEL" -o "$T/$t.gguf" --method rtn --bits ternary --group 256 --ternary-type $t --threads 2 >/dev/null 2>"$T/err" || { bad "rtn $t failed"; cat "$T/err"; }
  "$BIN" eval "$T/$t.gguf" --max-windows 6 --json --threads 2 >"$T/$t.json" 2>"$T/err" || { bad "eval of $t failed"; cat "$T/err"; }
done
python3 - "$T/tq1_0.json" "$T/tq2_0.json" <<'PY' && ok || bad "tq1_0 and tq2_0 perplexities differ"
import json, sys
a = json.load(open(sys.argv[1]))["ppl"]; b = json.load(open(sys.argv[2]))["ppl"]
sys.exit(0 if abs(a - b) <= 1e-6 * b else 1)
PY
if python3 -c 'import gguf, numpy' >/dev/null 2>&1; then
  python3 - "$T/tq1_0.gguf" "$T/tq2_0.gguf" <<'PY' && ok || bad "gguf-py: TQ1_0 tensors differ from TQ2_0"
import sys
import numpy as np
from gguf import GGUFReader
import gguf.quants
a = {t.name: t for t in GGUFReader(sys.argv[1]).tensors}
b = {t.name: t for t in GGUFReader(sys.argv[2]).tensors}
n = 0
for k, t in a.items():
    if t.tensor_type.name != "TQ1_0":
        continue
    assert b[k].tensor_type.name == "TQ2_0", k
    if not np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type), gguf.quants.dequantize(b[k].data, b[k].tensor_type)):
        sys.exit(1)
    n += 1
sys.exit(0 if n == 12 else 1)
PY
fi
rm -f "$T"/tq*.gguf

# --eval-only: a grid without a file type, measured in memory.
"$BIN" quantize "$MODEL" --eval-only --method rtn --bits 3 --group 128 --json --threads 2 >"$T/ev.json" 2>"$T/err" || { bad "eval-only failed"; cat "$T/err"; }
grep -q '"ppl":' "$T/ev.json" && grep -q '"kl_mean":' "$T/ev.json" && ok || bad "eval-only json lacks ppl/kl"

# Bad input.
expect_err 2 "bits" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --bits 5
expect_err 1 "does not divide" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --bits 4 --group 48
expect_err 1 "eval-only" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --bits 3
expect_err 1 "ternary takes group" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --bits ternary --group 64
printf 'In the beginning God created the heaven and the earth.\n' >"$T/short.txt"
expect_err 1 "short.txt" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --calib "$T/short.txt"
expect_err 2 "needs -o" "$BIN" quantize "$MODEL"
expect_err 1 "tq1_0 needs" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --bits 4 --ternary-type tq1_0
expect_err 2 "ternary-type" "$BIN" quantize "$MODEL" -o "$T/out.gguf" --ternary-type tq3
if python3 -c "import numpy" 2>/dev/null && [ -f "$SRC/tests/make_checkpoint.py" ]; then
  python3 "$SRC/tests/make_checkpoint.py" "$T/fx" --case mistral_dense >/dev/null 2>&1
  D=$(ls -d "$T"/fx/*/ 2>/dev/null | head -1)
  if [ -n "$D" ]; then expect_err 1 "dense" "$BIN" quantize "$D" -o "$T/out.gguf" --experts-only --method rtn; fi
fi
"$BIN" quantize --help | grep -q -- "--eval-only" && ok || bad "help lacks --eval-only"

echo "cli_quantize: $passes passed, $fails failed"
[ "$fails" = 0 ]
