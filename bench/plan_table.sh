#!/usr/bin/env bash
# `quantize --target-size` against llama.cpp's hand-made mixes at the same
# size, on any Mixtral-layout model: for each of llama.cpp's Q2_K and Q3_K_M
# (llama_model_quantize through llama-cpp-python, no importance matrix, of
# moetool's f32 GGUF), moetool's plan at that file's size with the tensors
# weighed by their KL at the output (the default, --plan-windows 2) and by
# their own output error only (--plan-windows 0). All RTN, so that the rows
# differ only by which type each tensor gets. Perplexity under llama.cpp's
# protocol (ctx 256) on MODEL/data/test.txt, calibration MODEL/data/train.txt.
# usage: bench/plan_table.sh BUILD_DIR [MODEL_DIR] [THREADS]
set -eu
B=${1:?build dir}; SRC=$(cd "$(dirname "$0")/.." && pwd)
M=${2:-$SRC/models/kjv-mixtral-15m}; TH=${3:-2}
BIN="$B/cli/moetool"; [ -x "$BIN" ] || BIN="$B/moetool"
TEXT="$M/data/test.txt"; PY=${PYTHON:-python3}
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-plantable.XXXXXX"); trap 'rm -rf "$T"' EXIT
"$BIN" convert "$M" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1
ppl() { "$BIN" eval "$1" --text "$TEXT" --protocol llamacpp --ctx 256 --threads "$TH" --json --quiet |
        "$PY" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'; }
echo "model: $M; f32 ppl $(ppl "$T/f32.gguf")"
echo
echo "| llama.cpp mix | its bytes | its ppl | plan by KL (default): bytes | ppl | s | plan by tensor error: bytes | ppl | s |"
echo "|---|---|---|---|---|---|---|---|---|"
for spec in q2_k:10 q3_k_m:12; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$SRC/tests/llamacpp_quant.py" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" >/dev/null 2>&1
    size=$(stat -c %s "$T/ll.gguf")
    row="| $mix | $size | $(ppl "$T/ll.gguf") |"
    for pw in 2 0; do
        s0=$(date +%s.%N)
        "$BIN" quantize "$M" -o "$T/p$pw.gguf" --target-size "$size" --method rtn --plan-windows "$pw" \
            --threads "$TH" --quiet >/dev/null
        s1=$(date +%s.%N)
        row="$row $(stat -c %s "$T/p$pw.gguf") | $(ppl "$T/p$pw.gguf") | $(echo "$s1 - $s0" | bc | xargs printf '%.1f') |"
    done
    echo "$row"
    rm -f "$T"/*.gguf.tmp "$T/ll.gguf" "$T/p2.gguf" "$T/p0.gguf"
done
