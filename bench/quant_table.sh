#!/usr/bin/env bash
# Quality table of `moetool quantize` on the bundled model (docs/quality.md):
# RTN and GPTQ at 8, 4, 3, 2 bits and ternary, experts only, plus rows with
# attention at 8 bits (and embeddings at 4), TQ1_0 and qmoe-coded HF files,
# and the symmetric and asymmetric (--asym) int grids at 4/3/2 bits g128 and
# 2 bits per row. Grids with a GGUF type are written,
# then scored with `moetool eval OUT --ref MODEL`; the others are scored in
# memory with --eval-only. All: test.txt, gptq protocol, ctx 256, KL/top-1
# vs the bf16 original. Prints a markdown table on stdout.
#   usage: bench/quant_table.sh [BUILD_DIR] [THREADS]
set -eu
BUILD=${1:-build}
THREADS=${2:-2}
BIN=$BUILD/cli/moetool
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

row() { # METHOD BITS GROUP ATTN_BITS LABEL [ASYM [FILE-FLAGS...]]
  local method=$1 bits=$2 group=$3 attn=$4 label=$5 asym=${6:-0} extra=() file=()
  shift 6 2>/dev/null || shift $#
  file=("$@")
  [ "$attn" != 0 ] && extra+=(--attn-bits "$attn")
  [ "$asym" != 0 ] && extra+=(--asym)
  if [ ${#file[@]} -gt 0 ]; then
    # a file the grid has only with these flags (TQ1_0, qmoe HF directory)
    "$BIN" quantize "$MODEL" -o "$T/out" --method "$method" --bits "$bits" --group "$group" "${extra[@]}" \
      "${file[@]}" --threads "$THREADS" --json >"$T/q.json"
    "$BIN" eval "$T/out" --text "$MODEL/data/test.txt" --ref "$MODEL" --threads "$THREADS" --json >"$T/e.json"
    rm -rf "$T/out"
  elif [ "$bits" = 3 ] || [ "$bits" = 2 ] || [ "$group" = row ] || [ "$asym" != 0 ] ||
     { [ "$bits" != ternary ] && [ "$group" != 32 ]; }; then
    "$BIN" quantize "$MODEL" --eval-only --method "$method" --bits "$bits" --group "$group" "${extra[@]}" \
      --threads "$THREADS" --json >"$T/q.json"
    cp "$T/q.json" "$T/e.json"
  else
    "$BIN" quantize "$MODEL" -o "$T/out.gguf" --method "$method" --bits "$bits" --group "$group" "${extra[@]}" \
      --threads "$THREADS" --json >"$T/q.json"
    "$BIN" eval "$T/out.gguf" --text "$MODEL/data/test.txt" --ref "$MODEL" --threads "$THREADS" --json >"$T/e.json"
    rm -f "$T/out.gguf"
  fi
  python3 - "$T/q.json" "$T/e.json" "$label" "$method" <<'PY'
import json, sys
q = json.load(open(sys.argv[1])); e = json.load(open(sys.argv[2]))
size = f"{q['file_bytes']/1e6:.2f} MB" if "file_bytes" in q else "(in memory)"
print(f"| {sys.argv[4]} | {sys.argv[3]} | {q['expert_type']} | {q['bits_per_expert_weight']:.3f} | {q['bits_per_weight']:.3f} "
      f"| {size} | {e['ppl']:.3f} | {e['kl_mean']:.5f} | {100*e['top1_agree']:.2f} % | {q['quantize_s']:.1f} s "
      f"| {q['peak_rss']/1e6:.0f} MB |")
PY
}

BASE=$("$BIN" eval "$MODEL" --threads "$THREADS" --json | python3 -c "import json,sys; print('%.3f' % json.load(sys.stdin)['ppl'])")
echo "bf16 original: ppl $BASE"
echo
echo "| method | experts (attention) | type | bits/expert weight | bits/weight | file | ppl | KL vs bf16 | top-1 | quantize time | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for m in rtn gptq; do
  row $m 8 32 0 "int8 g32 (bf16)"
  row $m 4 32 0 "int4 g32 (bf16)"
  row $m 3 128 0 "int3 g128 (bf16)"
  row $m 2 128 0 "int2 g128 (bf16)"
  row $m ternary 256 0 "ternary /256 (bf16)"
  row $m ternary row 0 "ternary QMoE row (bf16)"
  row $m 4 32 8 "int4 g32 (attn q8_0)"
  row $m ternary 256 8 "ternary /256 (attn q8_0)"
  row $m ternary 256 0 "ternary /256 as TQ1_0 (bf16)" 0 --ternary-type tq1_0
  row $m ternary row 0 "ternary row + qmoe code, HF (bf16)" 0 --format hf --codec qmoe
  row $m ternary row 8 "ternary row + qmoe code, HF (attn 8, embeddings 4)" 0 --format hf --codec qmoe --embed-bits 4
  row $m 4 32 8 "int4 g32 (attn q8_0, embeddings q4_0)" 0 --embed-bits 4
done
for m in rtn gptq; do
  for bg in "4 128" "3 128" "2 128" "2 row"; do
    set -- $bg
    g=g$2
    [ "$2" = row ] && g=row
    row $m "$1" "$2" 0 "int$1 $g (bf16)"
    row $m "$1" "$2" 0 "int$1 $g asym (bf16)" 1
  done
done
