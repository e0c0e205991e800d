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
if python3 -c "import numpy" 2>/dev/null && [ -f "$SRC/tests/make_checkpoint.py" ]; then
  python3 "$SRC/tests/make_checkpoint.py" "$T/fx" --case mistral_dense >/dev/null 2>&1
  D=$(ls -d "$T"/fx/*/ 2>/dev/null | head -1)
  if [ -n "$D" ]; then expect_err 1 "dense" "$BIN" quantize "$D" -o "$T/out.gguf" --experts-only --method rtn; fi
fi
"$BIN" quantize --help | grep -q -- "--eval-only" && ok || bad "help lacks --eval-only"

echo "cli_quantize: $passes passed, $fails failed"
[ "$fails" = 0 ]
