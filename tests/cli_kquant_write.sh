#!/usr/bin/env bash
# moetool writing llama.cpp's K-quant and legacy blocks, checked by llama.cpp:
#   RTN    `quantize --method rtn --type T --attn-type T` and `convert --dtype T`
#          against llama.cpp's own quantizer (llama_model_quantize, pure T, no
#          importance matrix) on the same f32 GGUF, per tensor, dequantized by
#          gguf-py (tests/kquant_compare.py): the K-quants must hold the very
#          same values; q4_1/q5_0/q5_1 (quantize rounds onto the stored f16
#          grid, llama.cpp with the unrounded scale) at most 1.02x llama.cpp's
#          squared error on every tensor
#   mixes  `quantize --mix q2_k|q3_k_m|q4_k_m|q5_k_m|q6_k --method rtn`: every
#          tensor llama.cpp's mix quantizes has the type llama.cpp gives it
#          and the same values; general.file_type is the mix's
#   GPTQ   `quantize --type q4_k|q3_k|q2_k`, `--mix q4_k_m` (GPTQ onto the K-quant blocks):
#          llama.cpp loads the file and its perplexity equals moetool's eval
#          of it (llama.cpp protocol, ctx 256, 8 windows, rtol 2.5e-3 as in
#          cli_kquant.sh; full-text pairs in docs/quality.md)
#   budget `--target-size 7M`: at most 7,000,000 bytes, run by llama.cpp as by
#          moetool; `--target-bpw 3.5`: at most 3.5 bits per weight over the
#          tensors it types, with more than one type
#   recipe recipes/kquant-ladder.yaml passes `moetool run --dry-run`
#   usage  unknown type: exit 2; --type with --asym or --format hf: exit 1
# Skipped (exit 77) without llama_cpp or gguf-py (tools/install_llamacpp_python.sh).
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}
LQ="$MT_SOURCE_DIR/tests/llamacpp_quant.py"
CMP="$MT_SOURCE_DIR/tests/kquant_compare.py"
TEXT="$MT_MODEL_DIR/data/test.txt"
RTOL=0.0025

# recipes/kquant-ladder.yaml is a valid recipe (its options exist, its
# references resolve): checked whether or not llama.cpp is installed
"$MT_BIN" run "$MT_SOURCE_DIR/recipes/kquant-ladder.yaml" --dry-run >/dev/null 2>"${TMPDIR:-/tmp}/kqw-dry.$$" || {
    echo "FAIL: kquant-ladder.yaml --dry-run: $(cat "${TMPDIR:-/tmp}/kqw-dry.$$")"; rm -f "${TMPDIR:-/tmp}/kqw-dry.$$"; exit 1; }
rm -f "${TMPDIR:-/tmp}/kqw-dry.$$"

if ! "$PY" -c 'import llama_cpp, gguf' >/dev/null 2>&1; then
    echo "skipped: llama_cpp or gguf not installed (see docs/llamacpp.md)"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-kqwrite.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$MT_BIN" convert "$MT_MODEL_DIR" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1 || { echo "FAIL: convert"; exit 1; }

# type, llama.h ftype whose base type it is, whether the values must be identical
for spec in q4_k:15:same q5_k:17:same q6_k:18:same q3_k:12:same q2_k:10:same q4_1:3: q5_0:8: q5_1:9:; do
    IFS=: read -r ty ft same <<<"$spec"
    if ! "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" pure >"$T/q.log" 2>&1; then
        bad "$ty: llama.cpp quantize: $(tail -1 "$T/q.log")"; continue
    fi
    flags=(); [ -n "$same" ] && flags=(--same)
    if "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --method rtn --type "$ty" --attn-type "$ty" --threads 2 \
           --quiet >/dev/null 2>"$T/err"; then
        out=$("$PY" "$CMP" "$T/f32.gguf" "$T/mt.gguf" "$T/ll.gguf" "${flags[@]}") && echo "ok quantize rtn $ty: $out" ||
            bad "quantize rtn $ty: $out"
    else
        bad "quantize --type $ty: $(cat "$T/err")"
    fi
    if "$MT_BIN" convert "$T/f32.gguf" -o "$T/cv.gguf" --to gguf --dtype "$ty" >/dev/null 2>"$T/err"; then
        out=$("$PY" "$CMP" "$T/f32.gguf" "$T/cv.gguf" "$T/ll.gguf" --same) && echo "ok convert $ty: $out" ||
            bad "convert --dtype $ty: $out"
    else
        bad "convert --dtype $ty: $(cat "$T/err")"
    fi
    rm -f "$T/mt.gguf" "$T/cv.gguf" "$T/ll.gguf"
done

# llama.cpp's mixes: every tensor of the type llama.cpp gives it, the same
# general.file_type, and (RTN) the same values
for spec in q4_k_m:15 q3_k_m:12 q2_k:10 q5_k_m:17 q6_k:18; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" >"$T/q.log" 2>&1 || { bad "$mix: llama.cpp quantize"; continue; }
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --mix "$mix" --method rtn --threads 2 --quiet >/dev/null 2>"$T/err" ||
        { bad "--mix $mix: $(cat "$T/err")"; continue; }
    "$PY" - "$T/mt.gguf" "$T/ll.gguf" <<'PY' || bad "--mix $mix: tensor types or file_type differ from llama.cpp's"
import sys
from gguf import GGUFReader
a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
ta = {t.name: t.tensor_type.name for t in a.tensors}
tb = {t.name: t.tensor_type.name for t in b.tensors}
# quantized in llama.cpp's file (not its f32 norms and router): the same type here
diff = [(n, ta.get(n), t) for n, t in tb.items() if t not in ("F32", "F16", "BF16") and ta.get(n) != t]
fa, fb = (int(r.fields["general.file_type"].parts[-1][0]) for r in (a, b))
print("  types differ:", diff) if diff else None
print(f"  file_type {fa} vs {fb}") if fa != fb else None
sys.exit(1 if diff or fa != fb else 0)
PY
    out=$("$PY" "$CMP" "$T/f32.gguf" "$T/mt.gguf" "$T/ll.gguf" --same) && echo "ok --mix $mix rtn: $(echo $out)" ||
        bad "--mix $mix: $out"
    rm -f "$T/mt.gguf" "$T/ll.gguf"
done

# GPTQ into K-quant blocks: llama.cpp runs moetool's files
for ty in q4_k q3_k q2_k q4_k_m; do
    f="$T/gptq_$ty.gguf"
    if [ $ty = q4_k_m ]; then flags=(--mix q4_k_m); else flags=(--type "$ty" --attn-type q8_0); fi
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$f" "${flags[@]}" --calib-tokens 2048 --threads 2 --quiet \
        >/dev/null 2>"$T/err" || { bad "gptq $ty: $(cat "$T/err")"; continue; }
    "$MT_BIN" inspect "$f" | grep -q "storage:.* ${ty%_m} " || bad "gptq $ty: inspect: $("$MT_BIN" inspect "$f" | grep storage)"
    ref=$("$PY" "$LQ" ppl "$f" "$TEXT" 256 8) || { bad "gptq $ty: llama.cpp ppl: $ref"; continue; }
    got=$("$MT_BIN" eval "$f" --text "$TEXT" --protocol llamacpp --ctx 256 --max-windows 8 --threads 2 --json --quiet |
          "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])') || { bad "gptq $ty: moetool eval"; continue; }
    if "$PY" -c "import sys; a,b=$ref,$got; sys.exit(0 if abs(a-b) <= $RTOL*a else 1)"; then
        echo "ok gptq $ty: ppl moetool $got llama.cpp $ref"
    else
        bad "gptq $ty: ppl moetool $got llama.cpp $ref (rtol $RTOL)"
    fi
done

# --target-size / --target-bpw: a type per tensor under the budget; llama.cpp runs the file
f="$T/ts.gguf"
if "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$f" --target-size 7M --method rtn --threads 2 --quiet >/dev/null 2>"$T/err"; then
    sz=$(stat -c %s "$f")
    [ "$sz" -le 7000000 ] && [ "$sz" -ge 6500000 ] && echo "ok --target-size 7M: $sz bytes" ||
        bad "--target-size 7M wrote $sz bytes"
    ref=$("$PY" "$LQ" ppl "$f" "$TEXT" 256 8) || bad "target-size: llama.cpp ppl: $ref"
    got=$("$MT_BIN" eval "$f" --text "$TEXT" --protocol llamacpp --ctx 256 --max-windows 8 --threads 2 --json --quiet |
          "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
    "$PY" -c "import sys; a,b=$ref,$got; sys.exit(0 if abs(a-b) <= $RTOL*a else 1)" 2>/dev/null &&
        echo "ok --target-size 7M: ppl moetool $got llama.cpp $ref" || bad "target-size: ppl moetool $got llama.cpp $ref"
else
    bad "--target-size 7M: $(cat "$T/err")"
fi
if "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/tb.gguf" --target-bpw 3.5 --method rtn --threads 2 --quiet --json \
       >"$T/tb.json" 2>"$T/err"; then
    # bits per weight over the tensors it typed (all 2-D tensors but the router)
    "$PY" - "$T/tb.gguf" "$T/tb.json" <<'PY' || bad "--target-bpw 3.5 over budget"
import json, sys
from gguf import GGUFReader
bits = n = 0
kinds = set()
for t in GGUFReader(sys.argv[1]).tensors:
    if len(t.shape) < 2 or "ffn_gate_inp" in t.name:
        continue
    bits += 8 * int(t.n_bytes); n += int(t.n_elements); kinds.add(t.tensor_type.name)
plan = json.load(open(sys.argv[2]))["plan"]
print(f"ok --target-bpw 3.5: {bits / n:.4f} bits per weight, types {sorted(kinds)}, plan of {len(plan['layers'])} layers")
sys.exit(0 if bits / n <= 3.5 and len(kinds) > 1 else 1)
PY
else
    bad "--target-bpw 3.5: $(cat "$T/err")"
fi

expect() { # CODE PATTERN CMD...
    local code=$1 pat=$2; shift 2
    "$@" >/dev/null 2>"$T/err"; local rc=$?
    [ $rc = "$code" ] && grep -q -- "$pat" "$T/err" || bad "$* -> exit $rc, want $code /$pat/: $(cat "$T/err")"
    [ -e "$T/u.gguf" ] && { bad "$*: left output"; rm -rf "$T/u.gguf"; }
}
expect 2 "must be one of" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --type iq2_k
expect 1 "asym" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --type q4_k --asym --method rtn
expect 1 "format hf" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --type q4_k --format hf --method rtn
expect 1 "exclude" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --type q4_k --attn-bits 8 --attn-type q8_0 --method rtn
expect 1 "excludes" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --mix q4_k_m --type q4_k --method rtn
expect 2 "must be q2_k" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --mix q4_k_s
expect 1 "below the smallest" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --target-size 1M --method rtn
expect 1 "exclude" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --target-bpw 4 --mix q4_k_m --method rtn
expect 2 "positive size" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --target-size 7X

if [ $fails -ne 0 ]; then echo "cli_kquant_write: FAIL ($fails)"; exit 1; fi
echo "cli_kquant_write: PASS"
