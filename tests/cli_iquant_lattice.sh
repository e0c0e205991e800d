#!/usr/bin/env bash
# moetool's lattice i-quant writers (iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s,
# iq1_s, iq1_m), checked by llama.cpp:
#   types    `quantize --method rtn --type T --attn-type T --imatrix F`: every
#            quantized tensor byte for byte what llama.cpp's own quantizer
#            (llama_model_quantize, pure, F as its imatrix, embeddings and
#            output kept in the model's bf16) writes
#   gptq     `quantize --type iq2_xxs --attn-type iq2_xxs` under the default
#            method computes the imatrix from the same calibration tokens:
#            the same bytes
#   run      llama.cpp runs moetool's iq2_xxs file and its perplexity equals
#            moetool's eval of it (llama.cpp protocol, ctx 256, 8 windows)
#   errors   iq3_xxs / iq2_* / iq1_* without an importance matrix (rtn, no
#            --imatrix), and iq2_xxs/iq2_xs/iq1_s on token embeddings (which
#            have none): exit 2 naming the option, no output; llama.cpp
#            refuses the first too
# The mixes are tests/cli_iquant_mixes.sh. Skipped (exit 77) without
# llama_cpp or gguf-py (tools/install_llamacpp_python.sh).
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}
LQ="$MT_SOURCE_DIR/tests/llamacpp_quant.py"
TEXT="$MT_MODEL_DIR/data/test.txt"
RTOL=0.0025

if ! "$PY" -c 'import llama_cpp, gguf' >/dev/null 2>&1; then
    echo "skipped: llama_cpp or gguf not installed (see docs/llamacpp.md)"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-iqlat.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$MT_BIN" convert "$MT_MODEL_DIR" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1 || { echo "FAIL: convert"; exit 1; }
IM="$T/im.dat"
"$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --method rtn --type iq3_s --imatrix calib --calib-tokens 2048 \
    --imatrix-out "$IM" --threads 2 --quiet >/dev/null 2>"$T/err" || { echo "FAIL: --imatrix calib: $(cat "$T/err")"; exit 1; }

# type : a llama.h ftype whose base type it is (IQ2_M's is iq2_s); embeddings
# and output stay in the bundled model's bf16 on both sides (30 = GGML_TYPE_BF16)
for spec in iq2_xxs:19 iq2_xs:20 iq2_s:29 iq3_xxs:23 iq3_s:26 iq1_s:24 iq1_m:31; do
    IFS=: read -r ty ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" pure "imatrix=$IM" embd=30 out=30 >"$T/q.log" 2>&1 ||
        { bad "$ty: llama.cpp quantize: $(tail -1 "$T/q.log")"; continue; }
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --method rtn --type $ty --attn-type $ty --imatrix "$IM" \
        --threads 2 --quiet >/dev/null 2>"$T/err" || { bad "--type $ty --imatrix: $(cat "$T/err")"; continue; }
    out=$("$PY" "$LQ" same "$T/mt.gguf" "$T/ll.gguf") && echo "ok quantize rtn $ty --imatrix: $out" ||
        bad "quantize rtn $ty --imatrix: $out"
    if [ $ty = iq2_xxs ]; then
        "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/g.gguf" --type $ty --attn-type $ty --calib-tokens 2048 --threads 2 \
            --quiet >/dev/null 2>"$T/err" || bad "gptq --type $ty: $(cat "$T/err")"
        out=$("$PY" "$LQ" same "$T/g.gguf" "$T/ll.gguf") && echo "ok quantize --type $ty (imatrix from --calib): $out" ||
            bad "quantize --type $ty (imatrix from --calib): $out"
        ref=$("$PY" "$LQ" ppl "$T/mt.gguf" "$TEXT" 256 8) || bad "$ty: llama.cpp ppl: $ref"
        got=$("$MT_BIN" eval "$T/mt.gguf" --text "$TEXT" --protocol llamacpp --ctx 256 --max-windows 8 --threads 2 \
              --json --quiet | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
        "$PY" -c "import sys; a,b=$ref,$got; sys.exit(0 if abs(a-b) <= $RTOL*a else 1)" 2>/dev/null &&
            echo "ok $ty runs: ppl moetool $got llama.cpp $ref" || bad "$ty: ppl moetool $got llama.cpp $ref"
    fi
    rm -f "$T/mt.gguf" "$T/ll.gguf" "$T/g.gguf"
done

expect() { # CODE PATTERN CMD...
    local code=$1 pat=$2; shift 2
    "$@" >/dev/null 2>"$T/err"; local rc=$?
    [ $rc = "$code" ] && grep -q -- "$pat" "$T/err" || bad "$* -> exit $rc, want $code /$pat/: $(cat "$T/err")"
    [ -e "$T/u.gguf" ] && { bad "$*: left output"; rm -rf "$T/u.gguf"; }
}
for ty in iq3_xxs iq2_xxs iq2_xs iq2_s iq1_s iq1_m; do
    expect 2 "--type $ty needs an importance matrix" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --type $ty
done
expect 2 "--attn-type iq1_s needs an importance matrix" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn \
    --type q4_k --attn-type iq1_s
expect 2 "--mix iq2_m needs an importance matrix" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --mix iq2_m
expect 2 "--embed-type iq2_xs needs an importance matrix, which token embeddings do not have" "$MT_BIN" quantize \
    "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --type iq3_s --embed-type iq2_xs --imatrix "$IM"
# llama.cpp refuses the same without one
"$PY" "$LQ" quantize "$T/f32.gguf" "$T/u.gguf" 19 pure >"$T/q.log" 2>&1 && bad "llama.cpp wrote IQ2_XXS without an imatrix"
grep -q "requires an importance matrix" "$T/q.log" || bad "llama.cpp's refusal changed: $(tail -2 "$T/q.log")"
rm -f "$T/u.gguf"
if [ $fails -ne 0 ]; then echo "cli_iquant_lattice: FAIL ($fails)"; exit 1; fi
echo "cli_iquant_lattice: PASS"
