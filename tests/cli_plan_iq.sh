#!/usr/bin/env bash
# quantize's size budget chooses among llama.cpp's i-quants too, measured
# and written with the importance matrix computed from the calibration text:
#   reach    --target-size 4000000 on the bundled model: below the smallest
#            K-quant choice (every tensor q2_K, about 5 MB), so
#            the default (K-quants only) must refuse it, naming --plan-iquants, (exit 1, no output) while the
#            default plan writes it with i-quants (the plan in --json names
#            some iq type) in at most 4,000,000 bytes
#   imatrix  --imatrix-out writes the importance matrix the plan used
#   run      llama.cpp loads moetool's file and its perplexity (llama.cpp
#            protocol, ctx 256, 8 windows of test.txt) equals moetool's eval
#            of it within 0.25 %; a writer that ignored the importance matrix
#            or an i-quant that did not decode alike would not
#   usage    --plan-iquants without --target-bpw/--target-size: exit 2
# Skipped (exit 77) without llama_cpp (tools/install_llamacpp_python.sh).
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}
LQ="$MT_SOURCE_DIR/tests/llamacpp_quant.py"
TEXT="$MT_MODEL_DIR/data/test.txt"
RTOL=0.0025
BUDGET=4000000

if ! "$PY" -c 'import llama_cpp' >/dev/null 2>&1; then
    echo "skipped: llama_cpp not installed (see docs/llamacpp.md)"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-planiq.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
Q=(--target-size $BUDGET --method rtn --calib-tokens 2048 --plan-windows 1 --threads 2 --quiet)

"$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/k.gguf" "${Q[@]}" >/dev/null 2>"$T/err"
rc=$?
[ $rc = 1 ] && grep -q "below the smallest choice.*--plan-iquants" "$T/err" ||
    bad "K-quant plan at $BUDGET bytes: exit $rc: $(cat "$T/err")"
[ -e "$T/k.gguf" ] && bad "K-quant plan below its smallest choice left an output"

if "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/p.gguf" "${Q[@]}" --plan-iquants --imatrix-out "$T/im.dat" --json >"$T/p.json" \
       2>"$T/err"; then
    sz=$(stat -c %s "$T/p.gguf")
    [ "$sz" -le $BUDGET ] && echo "ok budget: $sz bytes" || bad "wrote $sz bytes (budget $BUDGET)"
    iq=$("$PY" -c 'import json,sys
p = json.load(open(sys.argv[1]))["plan"]
ts = [p["token_embd"], p.get("output") or ""] + [t for l in p["layers"] for t in l.values()]
print(" ".join(sorted({t for t in ts if t.startswith("iq")})))' "$T/p.json")
    [ -n "$iq" ] && echo "ok plan uses: $iq" || bad "no i-quant in the plan: $(cat "$T/p.json")"
    [ -s "$T/im.dat" ] && echo "ok imatrix written" || bad "--imatrix-out wrote nothing"
    ref=$("$PY" "$LQ" ppl "$T/p.gguf" "$TEXT" 256 8) || bad "llama.cpp ppl: $ref"
    got=$("$MT_BIN" eval "$T/p.gguf" --text "$TEXT" --protocol llamacpp --ctx 256 --max-windows 8 --threads 2 \
          --json --quiet | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
    "$PY" -c "import sys; a,b=$ref,$got; sys.exit(0 if abs(a-b) <= $RTOL*a else 1)" 2>/dev/null &&
        echo "ok llama.cpp runs it: ppl moetool $got llama.cpp $ref" || bad "ppl moetool $got llama.cpp $ref"
else
    bad "plan at $BUDGET bytes: $(cat "$T/err")"
fi

"$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --plan-iquants --type q4_k --method rtn >/dev/null 2>"$T/err"
rc=$?
[ $rc = 2 ] && grep -q -- "--plan-iquants only" "$T/err" || bad "--plan-iquants without a budget: exit $rc: $(cat "$T/err")"
[ -e "$T/u.gguf" ] && bad "--plan-iquants without a budget left an output"

if [ $fails -ne 0 ]; then echo "cli_plan_iq: FAIL ($fails)"; exit 1; fi
echo "cli_plan_iq: PASS"
