#!/usr/bin/env bash
# Benchmarks of the foundation, printed as markdown tables for docs/perf.md:
#  1. runtime prefill (256 tokens) and decode (64 tokens) tokens/s at 1 and 2
#     threads for f32, bf16 and q8_0 GGUFs of a model, and llama.cpp's
#     llama-bench on the very same files when LLAMA_BENCH points at it;
#  2. convert throughput (MB/s) next to `cat` of the same files, and
#     convert's peak RSS.
# usage: bench/run_bench.sh [MODEL_DIR] [BUILD_DIR]
#   MODEL_DIR  HF checkpoint (default: the bundled model)
#   env LLAMA_BENCH=/path/to/llama-bench  also measure llama.cpp side by side
#   env MT_BENCH_REPS=3                   repetitions (best is reported)
#   env MT_BENCH_TYPES="f32 bf16 q8_0"    weight types (also f16, q4_0)
# The machine is shared and noisy: compare ratios taken in one run.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${1:-$SRC/models/kjv-mixtral-15m}
BUILD=${2:-$SRC/build}
BIN=$BUILD/cli/moetool
BR=$BUILD/bench/bench_runtime
REPS=${MT_BENCH_REPS:-3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

echo "# moetool benchmarks: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "model: $MODEL"
echo

TYPES=${MT_BENCH_TYPES:-f32 bf16 q8_0}
for dt in $TYPES; do
  "$BIN" convert "$MODEL" -o "$T/m-$dt.gguf" --dtype "$dt" 2>/dev/null
done

# Memory-bandwidth floor of decode: bytes of the weights one token reads
# (every active weight but the embedding table, of which one row is read)
# over the read bandwidth measured now, with the same thread count.
"$BIN" inspect "$MODEL" --json > "$T/inspect.json"
streamed=$(python3 -c "
import json; d = json.load(open('$T/inspect.json')); c = d['config']
emb = 0 if c['tie_embeddings'] else c['vocab'] * c['hidden']
print(d['params']['active'] - emb)")
bw=$("$BUILD/bench/bench_matvec" 0.3 2 512x256 f32 2>/dev/null | awk '/^read, 1 thread/ {b1=$4} /^read, 2 threads/ {b2=$4} END {print b1, b2}')
read -r bw1 bw2 <<< "$bw"
echo "read bandwidth now: 1 thread $bw1 GB/s, 2 threads $bw2 GB/s; weights streamed per decoded token: $streamed"
echo

echo "#### Runtime: prefill 256 / decode 64 tokens/s (best of $REPS)"
echo
echo "floor = bandwidth floor in tokens/s (bytes streamed per token / read bandwidth); tg/floor = fraction of it reached"
echo
if [ -n "${LLAMA_BENCH:-}" ]; then
  echo "| type | threads | moetool pp256 | llama.cpp pp256 | moetool tg64 | llama.cpp tg64 | tg ratio | floor | tg/floor |"
  echo "|---|---|---|---|---|---|---|---|---|"
else
  echo "| type | threads | moetool pp256 | moetool tg64 | floor | tg/floor |"
  echo "|---|---|---|---|---|---|"
fi
for dt in $TYPES; do
  for th in 1 2; do
    line=$("$BR" "$T/m-$dt.gguf" "$th" 256 64)
    pp=$(echo "$line" | sed -E 's/.*prefill [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
    tg=$(echo "$line" | sed -E 's/.*decode [0-9]+ tokens ([0-9.]+) tok\/s.*/\1/')
    bpw=$(case $dt in f32) echo 4;; bf16|f16) echo 2;; q8_0) echo 1.0625;; q4_0) echo 0.5625;; esac)
    bwt=$([ "$th" = 1 ] && echo "$bw1" || echo "$bw2")
    floor=$(awk -v s="$streamed" -v b="$bpw" -v g="$bwt" 'BEGIN { printf "%.0f", g * 1e9 / (s * b) }')
    frac=$(awk -v t="$tg" -v f="$floor" 'BEGIN { printf "%.2f", t / f }')
    if [ -n "${LLAMA_BENCH:-}" ]; then
      out=$("$LLAMA_BENCH" -m "$T/m-$dt.gguf" -p 256 -n 64 -t "$th" -r "$REPS" -o csv 2>/dev/null || true)
      lpp=$(echo "$out" | awk -F, 'NR>1 && $0 ~ /"256","0","0"/ {gsub(/"/,"",$0); n=split($0,a,","); print a[n-1]}' | head -1)
      ltg=$(echo "$out" | awk -F, 'NR>1 && $0 ~ /"0","64","0"/ {gsub(/"/,"",$0); n=split($0,a,","); print a[n-1]}' | head -1)
      ratio=$(awk -v a="$tg" -v b="${ltg:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      echo "| $dt | $th | $pp | ${lpp:--} | $tg | ${ltg:--} | $ratio | $floor | $frac |"
    else
      echo "| $dt | $th | $pp | $tg | $floor | $frac |"
    fi
  done
done
echo

echo "#### Convert: throughput next to cat, peak RSS"
echo
bytes=$(cat "$MODEL"/*.safetensors | wc -c)
t_cat() { local s e; s=$(date +%s.%N); cat "$MODEL"/*.safetensors >"$T/cat.out"; e=$(date +%s.%N); echo "$s $e"; }
best_cat=999
for _ in $(seq "$REPS"); do
  read -r s e < <(t_cat); d=$(awk -v s="$s" -v e="$e" 'BEGIN{print e-s}')
  best_cat=$(awk -v a="$best_cat" -v b="$d" 'BEGIN{print (b<a)?b:a}')
done
echo "| what | seconds | MB/s (input bytes) | peak RSS MiB |"
echo "|---|---|---|---|"
echo "| cat of the shards | $best_cat | $(awk -v b="$bytes" -v t="$best_cat" 'BEGIN{printf "%.0f", b/t/1e6}') | - |"
for spec in "gguf:" "gguf:q8_0" "hf:f32"; do
  to=${spec%%:*}; dt=${spec#*:}
  out="$T/conv-$to$dt"; [ "$to" = gguf ] && out="$out.gguf"
  best=999; rss=0
  for _ in $(seq "$REPS"); do
    rm -rf "$out"
    /usr/bin/time -f "%e %M" -o "$T/time" "$BIN" convert "$MODEL" -o "$out" --to "$to" ${dt:+--dtype $dt} 2>/dev/null
    read -r sec kb < "$T/time"
    best=$(awk -v a="$best" -v b="$sec" 'BEGIN{print (b<a)?b:a}'); rss=$kb
  done
  echo "| convert -> $to ${dt:-(keep types)} | $best | $(awk -v b="$bytes" -v t="$best" 'BEGIN{ if (t > 0) printf "%.0f", b/t/1e6; else print "-" }') | $(awk -v k="$rss" 'BEGIN{printf "%.1f", k/1024}') |"
done
echo
echo "input: $bytes bytes of safetensors"
