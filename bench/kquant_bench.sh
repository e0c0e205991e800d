#!/usr/bin/env bash
# Prefill / decode speed of moetool against llama.cpp on llama.cpp's own
# K-quant files of a model (made here by llama_model_quantize from an f32
# GGUF, as tests/cli_kquant.sh does), printed as a markdown table for
# docs/perf.md. llama.cpp is timed through llama-cpp-python with the same
# protocol as bench_runtime (bench/llamacpp_speed.py).
# usage: bench/kquant_bench.sh [MODEL_DIR] [BUILD_DIR]
#   env MT_BENCH_REPS=3, MT_BENCH_FTYPES="Q4_K_M:15 Q6_K:18",
#   MT_BENCH_BEFORE=other/build/bench/bench_runtime: also time that build
#   (an older moetool) in the same run, for before/after columns
# The machine is shared and noisy: compare ratios taken in one run.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$SRC/models/kjv-mixtral-15m}
BUILD=${2:-$SRC/build}
BIN=$BUILD/cli/moetool
BR=$BUILD/bench/bench_runtime
REPS=${MT_BENCH_REPS:-3}
PY=${PYTHON:-python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
echo "# K-quant speed: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
"$BIN" convert "$MODEL" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1
echo
BEFORE=${MT_BENCH_BEFORE:-}
if [ -n "$BEFORE" ]; then
  echo "| file | threads | before pp256 | moetool pp256 | llama.cpp pp256 | pp ratio | before tg64 | moetool tg64 | llama.cpp tg64 | tg ratio | load |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
else
  echo "| file | threads | moetool pp256 | llama.cpp pp256 | moetool tg64 | llama.cpp tg64 | tg ratio |"
  echo "|---|---|---|---|---|---|---|"
fi
for spec in ${MT_BENCH_FTYPES:-Q4_K_M:15 Q6_K:18}; do
  name=${spec%%:*}; ft=${spec#*:}
  "$PY" "$SRC/tests/llamacpp_quant.py" quantize "$T/f32.gguf" "$T/$name.gguf" "$ft" >/dev/null 2>&1
  for th in 1 2; do
    m=$("$BR" "$T/$name.gguf" "$th" 256 64 "$REPS")
    l=$("$PY" "$SRC/bench/llamacpp_speed.py" "$T/$name.gguf" "$th" 256 64 "$REPS" 2>/dev/null)
    mpp=$(echo "$m" | sed -E 's/.*prefill [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
    mtg=$(echo "$m" | sed -E 's/.*decode [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
    lpp=$(echo "$l" | sed -E 's/.*prefill [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
    ltg=$(echo "$l" | sed -E 's/.*decode [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
    if [ -n "$BEFORE" ]; then
      b=$("$BEFORE" "$T/$name.gguf" "$th" 256 64 "$REPS")
      bpp=$(echo "$b" | sed -E 's/.*prefill [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
      btg=$(echo "$b" | sed -E 's/.*decode [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
      echo "| $name | $th | $bpp | $mpp | $lpp | $(awk -v a="$mpp" -v b="$lpp" 'BEGIN{printf "%.2f", a/b}') | $btg | $mtg | $ltg | $(awk -v a="$mtg" -v b="$ltg" 'BEGIN{printf "%.2f", a/b}') | $(cut -d' ' -f1 /proc/loadavg) |"
    else
      echo "| $name | $th | $mpp | $lpp | $mtg | $ltg | $(awk -v a="$mtg" -v b="$ltg" 'BEGIN{printf "%.2f", a/b}') |"
    fi
  done
done
