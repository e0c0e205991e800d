#!/usr/bin/env bash
# Two builds of moetool compared on one machine in one run (the machine is
# shared and noisy: only ratios taken side by side mean anything):
#  1. bench/run_bench.sh of build A, then of build B, back to back;
#  2. runtime prefill 256 / decode 64 tokens/s of both builds interleaved
#     (A then B for each type and thread count, MT_BENCH_REPS rounds, best
#     of each kept) on the same converted files, with the ratio B / A.
# usage: bench/ab_compare.sh SRC_A BUILD_A SRC_B BUILD_B [MODEL_DIR]
#   env MT_BENCH_REPS=3, MT_BENCH_TYPES="f32 bf16 q8_0" as run_bench.sh
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 SRC_A BUILD_A SRC_B BUILD_B [MODEL_DIR]" >&2; exit 2; }
SA=$1 BA=$2 SB=$3 BB=$4
MODEL=${5:-$SB/models/kjv-mixtral-15m}
REPS=${MT_BENCH_REPS:-3}
TYPES=${MT_BENCH_TYPES:-f32 bf16 q8_0}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

echo "## A: $SA ($BA)"
bash "$SA/bench/run_bench.sh" "$MODEL" "$BA"
echo
echo "## B: $SB ($BB)"
bash "$SB/bench/run_bench.sh" "$MODEL" "$BB"
echo

for dt in $TYPES; do "$BA/cli/moetool" convert "$MODEL" -o "$T/m-$dt.gguf" --dtype "$dt" 2>/dev/null; done
declare -A best
num() { sed -E "s/.*$1 [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/"; }
for _ in $(seq "$REPS"); do
  for dt in $TYPES; do
    for th in 1 2; do
      for side in A B; do
        bin=$([ $side = A ] && echo "$BA" || echo "$BB")/bench/bench_runtime
        line=$("$bin" "$T/m-$dt.gguf" "$th" 256 64 1)
        pp=$(echo "$line" | num prefill); tg=$(echo "$line" | num decode)
        k="$side $dt $th"
        best[$k pp]=$(awk -v a="${best[$k pp]:-0}" -v b="$pp" 'BEGIN{print (b>a)?b:a}')
        best[$k tg]=$(awk -v a="${best[$k tg]:-0}" -v b="$tg" 'BEGIN{print (b>a)?b:a}')
      done
    done
  done
done
echo "#### Interleaved A/B: prefill 256 / decode 64 tokens/s (best of $REPS rounds)"
echo
echo "| type | threads | A pp256 | B pp256 | B/A pp | A tg64 | B tg64 | B/A tg |"
echo "|---|---|---|---|---|---|---|---|"
for dt in $TYPES; do
  for th in 1 2; do
    a="A $dt $th" b="B $dt $th"
    rp=$(awk -v x="${best[$b pp]}" -v y="${best[$a pp]}" 'BEGIN{printf "%.3f", x/y}')
    rt=$(awk -v x="${best[$b tg]}" -v y="${best[$a tg]}" 'BEGIN{printf "%.3f", x/y}')
    echo "| $dt | $th | ${best[$a pp]} | ${best[$b pp]} | $rp | ${best[$a tg]} | ${best[$b tg]} | $rt |"
  done
done
