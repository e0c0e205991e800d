#!/usr/bin/env bash
# The same model in every format gives the same numbers: eval of the GGUF
# (bf16, f32) equals eval of the HF directory, q8_0 is within 1 % perplexity,
# inspect reports the same parameter counts, generate the same tokens, and
# HF -> GGUF -> HF evaluates identically again.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
TEXT=$MODEL/data/test.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
if ! command -v python3 >/dev/null; then echo "skipped: python3 needed to read JSON"; exit 77; fi
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d' + sys.argv[2]))" "$@"; }

"$BIN" convert "$MODEL" -o "$T/bf16.gguf" 2>/dev/null || bad "convert bf16"
"$BIN" convert "$MODEL" -o "$T/f32.gguf" --dtype f32 2>/dev/null || bad "convert f32"
"$BIN" convert "$MODEL" -o "$T/q8.gguf" --dtype q8_0 2>/dev/null || bad "convert q8_0"
"$BIN" convert "$T/bf16.gguf" -o "$T/back" 2>/dev/null || bad "convert gguf -> hf"

for m in hf:"$MODEL" bf16:"$T/bf16.gguf" f32:"$T/f32.gguf" q8:"$T/q8.gguf" back:"$T/back"; do
  name=${m%%:*}; path=${m#*:}
  "$BIN" eval "$path" --text "$TEXT" --ctx 128 --max-windows 40 --json >"$T/$name.json" 2>"$T/err" \
    || { bad "eval $name: $(cat "$T/err")"; continue; }
  "$BIN" inspect "$path" --json >"$T/$name.inspect.json" 2>"$T/err" || bad "inspect $name: $(cat "$T/err")"
  "$BIN" generate "$path" -p "And Paul said" -n 16 --json >"$T/$name.gen.json" 2>"$T/err" || bad "generate $name"
done

ref=$(jget "$T/hf.json" "['ppl']")
for name in bf16 f32 back; do
  p=$(jget "$T/$name.json" "['ppl']")
  python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-6 * b else 1)" "$p" "$ref" \
    && ok || bad "$name ppl $p != hf $ref"
  [ "$(jget "$T/$name.gen.json" "['ids']")" = "$(jget "$T/hf.gen.json" "['ids']")" ] && ok || bad "$name generate differs from hf"
done
p=$(jget "$T/q8.json" "['ppl']")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 0.01 * b else 1)" "$p" "$ref" \
  && ok || bad "q8_0 ppl $p not within 1% of $ref"

for name in bf16 f32 q8 back; do
  for k in total experts active; do
    a=$(jget "$T/$name.inspect.json" "['params']['$k']"); b=$(jget "$T/hf.inspect.json" "['params']['$k']")
    [ "$a" = "$b" ] && ok || bad "inspect $name params.$k $a != $b"
  done
done
# the GGUF is reported as such, with interleaved RoPE rows, and q8_0 is smaller
[ "$(jget "$T/q8.inspect.json" "['format']")" = gguf ] && ok || bad "format of q8 not gguf"
[ "$(jget "$T/q8.json" "['size']['bits_per_weight']" | cut -d. -f1)" = 8 ] && ok || bad "q8_0 bits/weight not 8.x"

echo "hf ppl (ctx 128, 40 windows) $ref; q8_0 $p"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
