#!/usr/bin/env bash
# Size-vs-perplexity curve of moetool's outputs (GGUF files and qmoe-coded
# HF directories) next to llama.cpp's own quantizations of the same model
# (llama_model_quantize through llama-cpp-python, from moetool's f32 GGUF,
# every i-quant and K-quant mix with the importance matrix of the model's
# train.txt), all under llama.cpp's perplexity protocol (BOS-first windows
# of 256, second half scored) on the held-out test.txt: moetool's files by
# `moetool eval --protocol llamacpp`, llama.cpp's by llama.cpp itself
# (tests/llamacpp_quant.py ppl). Size of an HF directory: its safetensors +
# config.json + tokenizer.model (a GGUF holds its vocabulary too). Writes
# the SVG (default docs/quality-plot.svg) and prints the points as a
# markdown table.
# usage: bench/quality_plot.sh [BUILD_DIR] [THREADS] [MODEL_DIR] [OUT.svg] [full|budgets]
#   budgets: llama.cpp's ladder and moetool's --target-bpw points only
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
THREADS=${2:-2}
BIN=$BUILD/cli/moetool
MODEL=${3:-$SRC/models/kjv-mixtral-15m}
SVG=${4:-$SRC/docs/quality-plot.svg}
WHAT=${5:-full}
PY=${PYTHON:-python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

points="$T/points.tsv"
: > "$points"
add() { # label file   (a moetool point)
  local ppl bytes
  ppl=$("$BIN" eval "$2" --text "$MODEL/data/test.txt" --protocol llamacpp --ctx 256 --threads "$THREADS" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  if [ -d "$2" ]; then
    bytes=$(cat "$2"/*.safetensors "$2/config.json" "$2/tokenizer.model" | wc -c)
  else
    bytes=$(stat -c %s "$2")
  fi
  printf 'moetool\t%s\t%s\t%s\n' "$1" "$bytes" "$ppl" >> "$points"
  echo "  $1: $bytes bytes, ppl $ppl" >&2
}

"$BIN" convert "$MODEL" -o "$T/f32.gguf" --dtype f32 2>/dev/null
# llama.cpp's ladder: its quantizer and its perplexity; the importance
# matrix is moetool's computation of llama-imatrix's statistic on train.txt
# (this llama.cpp has no llama-imatrix; docs/quality.md checks the two agree)
"$BIN" quantize "$MODEL" -o "$T/im.gguf" --method rtn --type q8_0 --imatrix calib --imatrix-out "$T/im.dat" \
    --threads "$THREADS" >/dev/null 2>&1
rm -f "$T/im.gguf"
nwin=$("$PY" "$SRC/tests/llamacpp_quant.py" ppl "$T/f32.gguf" "$MODEL/data/test.txt" 256 1000000 |
       sed -n 's/text has \([0-9]*\) windows.*/\1/p')
ll() { # label ftype (llama.h LLAMA_FTYPE_MOSTLY_*)
  local ppl f="$T/ll.gguf"
  [ "$2" = f32 ] && f="$T/f32.gguf" ||
    "$PY" "$SRC/tests/llamacpp_quant.py" quantize "$T/f32.gguf" "$f" "$2" imatrix="$T/im.dat" >/dev/null 2>&1
  ppl=$("$PY" "$SRC/tests/llamacpp_quant.py" ppl "$f" "$MODEL/data/test.txt" 256 "$nwin" 2>/dev/null | tail -n 1)
  printf 'llama.cpp\t%s\t%s\t%s\n' "$1" "$(stat -c %s "$f")" "$ppl" >> "$points"
  echo "  llama.cpp $1: $(stat -c %s "$f") bytes, ppl $ppl" >&2
  [ "$2" = f32 ] || rm -f "$f"
}
ll f32 f32
for x in IQ1_S:24 IQ1_M:31 IQ2_XXS:19 IQ2_XS:20 IQ2_S:28 IQ2_M:29 IQ3_XXS:23 IQ3_S:26 IQ3_M:27 IQ4_XS:30 \
         Q2_K:10 Q3_K_M:12 Q4_K_M:15 Q5_K_M:17 Q6_K:18 Q8_0:7; do ll "${x%%:*}" "${x##*:}"; done
add "f32" "$T/f32.gguf"
q() { # label out quantize-options...
  local lab=$1 out=$2; shift 2
  "$BIN" quantize "$MODEL" -o "$out" --method gptq --threads "$THREADS" "$@" >/dev/null 2>&1
  add "$lab" "$out"
  rm -rf "$out"
}
# size budgets: per-tensor types chosen by --target-bpw's greedy (i-quants
# with the importance matrix), each tensor weighed by
# the KL it adds at the output; the default candidates (K-quants, q8_0) and
# with --plan-iquants
for b in 1.75 2.0 2.5; do q "bpw $b budget iq" "$T/a.gguf" --target-bpw $b --plan-iquants; done
for b in 3.0 4.0 5.0; do
  q "bpw $b budget" "$T/a.gguf" --target-bpw $b
  q "bpw $b budget iq" "$T/a.gguf" --target-bpw $b --plan-iquants
done
if [ "$WHAT" = budgets ]; then
  "$PY" "$SRC/bench/plot_quality.py" "$points" "$SVG" "$(basename "$MODEL")"
  exit 0
fi
"$BIN" convert "$MODEL" -o "$T/bf16.gguf" 2>/dev/null;            add "bf16" "$T/bf16.gguf"
"$BIN" convert "$MODEL" -o "$T/q8_0.gguf" --dtype q8_0 2>/dev/null; add "q8_0 (all)" "$T/q8_0.gguf"
"$BIN" convert "$MODEL" -o "$T/q4_0.gguf" --dtype q4_0 2>/dev/null; add "q4_0 (all, RTN)" "$T/q4_0.gguf"
# Labels: experts gptq4 (GPTQ int4 = Q4_0), tq2_0 (GPTQ ternary per 256,
# llama.cpp TQ2_0), qmoe (GPTQ ternary rows in the qmoe code); aN attention
# at N bits, eN embeddings and lm_head at N bits (8: Q8_0, 4: Q4_0); rX
# the ternary range (default 1.4 with qmoe).
q "gptq4 a8" "$T/a.gguf" --bits 4 --attn-bits 8
q "gptq4 a8 e4" "$T/a.gguf" --bits 4 --attn-bits 8 --embed-bits 4
q "tq2_0 a8" "$T/a.gguf" --bits ternary --group 256 --attn-bits 8
q "tq2_0 a8 e4" "$T/a.gguf" --bits ternary --group 256 --attn-bits 8 --embed-bits 4
# llama.cpp's K-quant mixes written by moetool (GPTQ onto their block grids)
q "Q4_K_M gptq" "$T/a.gguf" --mix q4_k_m
q "Q3_K_M gptq" "$T/a.gguf" --mix q3_k_m
q "Q2_K gptq" "$T/a.gguf" --mix q2_k
Q=(--format hf --bits ternary --group row --codec qmoe)
q "qmoe a8" "$T/d" "${Q[@]}" --attn-bits 8
q "qmoe a8 e8" "$T/d" "${Q[@]}" --attn-bits 8 --embed-bits 8
q "qmoe a8 e4" "$T/d" "${Q[@]}" --attn-bits 8 --embed-bits 4
q "qmoe a4 e4" "$T/d" "${Q[@]}" --attn-bits 4 --embed-bits 4
q "qmoe r1.0 a8 e4" "$T/d" "${Q[@]}" --ternary-range 1.0 --attn-bits 8 --embed-bits 4
q "qmoe r1.15 a8 e4" "$T/d" "${Q[@]}" --ternary-range 1.15 --attn-bits 8 --embed-bits 4

"$PY" "$SRC/bench/plot_quality.py" "$points" "$SVG" "$(basename "$MODEL")"
