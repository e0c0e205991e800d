#!/usr/bin/env bash
# Size-vs-perplexity curve of moetool's outputs (GGUF files and qmoe-coded
# HF directories) next to llama.cpp's own quantizations of the same model,
# all under llama.cpp's perplexity protocol (BOS-first windows of 256,
# second half scored) on the held-out test.txt. Size of an HF directory:
# its safetensors + config.json + tokenizer.model (a GGUF holds its
# vocabulary too). Writes docs/quality-plot.svg and prints the points as a
# markdown table.
# usage: bench/quality_plot.sh [BUILD_DIR] [THREADS]
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
THREADS=${2:-2}
BIN=$BUILD/cli/moetool
MODEL=$SRC/models/kjv-mixtral-15m
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

points="$T/points.tsv"
: > "$points"
add() { # label file
  local ppl bytes
  ppl=$("$BIN" eval "$2" --text "$MODEL/data/test.txt" --protocol llamacpp --ctx 256 --threads "$THREADS" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  if [ -d "$2" ]; then
    bytes=$(cat "$2"/*.safetensors "$2/config.json" "$2/tokenizer.model" | wc -c)
  else
    bytes=$(stat -c %s "$2")
  fi
  printf '%s\t%s\t%s\n' "$1" "$bytes" "$ppl" >> "$points"
  echo "  $1: $bytes bytes, ppl $ppl" >&2
}

"$BIN" convert "$MODEL" -o "$T/f32.gguf" --dtype f32 2>/dev/null; add "f32" "$T/f32.gguf"
"$BIN" convert "$MODEL" -o "$T/bf16.gguf" 2>/dev/null;            add "bf16" "$T/bf16.gguf"
"$BIN" convert "$MODEL" -o "$T/q8_0.gguf" --dtype q8_0 2>/dev/null; add "q8_0 (all)" "$T/q8_0.gguf"
"$BIN" convert "$MODEL" -o "$T/q4_0.gguf" --dtype q4_0 2>/dev/null; add "q4_0 (all, RTN)" "$T/q4_0.gguf"
# Labels: experts gptq4 (GPTQ int4 = Q4_0), tq2_0 (GPTQ ternary per 256,
# llama.cpp TQ2_0), qmoe (GPTQ ternary rows in the qmoe code); aN attention
# at N bits, eN embeddings and lm_head at N bits (8: Q8_0, 4: Q4_0); rX
# the ternary range (default 1.4 with qmoe).
q() { # label out quantize-options...
  local lab=$1 out=$2; shift 2
  "$BIN" quantize "$MODEL" -o "$out" --method gptq --threads "$THREADS" "$@" >/dev/null 2>&1
  add "$lab" "$out"
  rm -rf "$out"
}
q "gptq4 a8" "$T/a.gguf" --bits 4 --attn-bits 8
q "gptq4 a8 e4" "$T/a.gguf" --bits 4 --attn-bits 8 --embed-bits 4
q "tq2_0 a8" "$T/a.gguf" --bits ternary --group 256 --attn-bits 8
q "tq2_0 a8 e4" "$T/a.gguf" --bits ternary --group 256 --attn-bits 8 --embed-bits 4
# llama.cpp's K-quant mixes written by moetool (GPTQ onto their block grids),
# and size budgets (per-tensor types chosen by --target-bpw's greedy, each
# tensor weighed by the KL it adds at the output).
q "Q4_K_M gptq" "$T/a.gguf" --mix q4_k_m
q "Q3_K_M gptq" "$T/a.gguf" --mix q3_k_m
q "Q2_K gptq" "$T/a.gguf" --mix q2_k
for b in 2.7 3.0 3.5 4.0; do q "bpw $b budget" "$T/a.gguf" --target-bpw $b; done
Q=(--format hf --bits ternary --group row --codec qmoe)
q "qmoe a8" "$T/d" "${Q[@]}" --attn-bits 8
q "qmoe a8 e8" "$T/d" "${Q[@]}" --attn-bits 8 --embed-bits 8
q "qmoe a8 e4" "$T/d" "${Q[@]}" --attn-bits 8 --embed-bits 4
q "qmoe a4 e4" "$T/d" "${Q[@]}" --attn-bits 4 --embed-bits 4
q "qmoe r1.0 a8 e4" "$T/d" "${Q[@]}" --ternary-range 1.0 --attn-bits 8 --embed-bits 4
q "qmoe r1.15 a8 e4" "$T/d" "${Q[@]}" --ternary-range 1.15 --attn-bits 8 --embed-bits 4

python3 "$SRC/bench/plot_quality.py" "$points" "$SRC/docs/quality-plot.svg"
