#!/usr/bin/env bash
# quantize's size budget weighs each tensor by the KL it adds at the output
# (--plan-windows, default 2) rather than by its own output error alone:
#   quality  at the size of llama.cpp's Q2_K file of the bundled model
#            (6,300,000 bytes), both plans by RTN, scored on 16 windows of
#            data/test.txt (text neither plan saw): the KL-weighed plan must
#            have the lower perplexity (measured on all of test.txt: 53.25
#            against 53.74; docs/quality.md). A probe that measured nothing
#            (every factor 0 or equal) or ranked at random loses this.
#   budget   both files at most 6,300,000 bytes
#   usage    --plan-windows without --target-bpw/--target-size: exit 2
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-plan.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
TEXT="$MT_MODEL_DIR/data/test.txt"

ppl() { "$MT_BIN" eval "$1" --text "$TEXT" --ctx 256 --max-windows 16 --threads 2 --json --quiet |
        sed -n 's/.*"ppl":\([0-9.eE+-]*\).*/\1/p' | head -n 1; }
for pw in 2 0; do
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/p$pw.gguf" --target-size 6300000 --method rtn --plan-windows $pw \
        --threads 2 --quiet >/dev/null 2>"$T/err$pw" || bad "--plan-windows $pw: $(cat "$T/err$pw")"
    sz=$(stat -c %s "$T/p$pw.gguf" 2>/dev/null || echo 0)
    [ "$sz" -gt 0 ] && [ "$sz" -le 6300000 ] || bad "--plan-windows $pw wrote $sz bytes (budget 6300000)"
done
kl=$(ppl "$T/p2.gguf"); te=$(ppl "$T/p0.gguf")
echo "ppl on 16 windows: plan by KL $kl, plan by tensor error $te"
awk -v a="$kl" -v b="$te" 'BEGIN { exit !(a > 0 && b > 0 && a < b) }' ||
    bad "the KL-weighed plan ($kl) is not better than the tensor-error plan ($te)"

"$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --plan-windows 3 --type q4_k --method rtn >/dev/null 2>"$T/err"
rc=$?
[ $rc = 2 ] && grep -q -- "--plan-windows only" "$T/err" || bad "--plan-windows without a budget: exit $rc: $(cat "$T/err")"
[ -e "$T/u.gguf" ] && bad "--plan-windows without a budget left an output"

if [ $fails -ne 0 ]; then echo "cli_plan: FAIL ($fails)"; exit 1; fi
echo "cli_plan: PASS"
