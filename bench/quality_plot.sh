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
Q=(--format hf --bits ternary --group row --codec qmoe)
q "qmoe a8" "$T/d" "${Q[@]}" --attn-bits 8
q "qmoe a8 e8" "$T/d" "${Q[@]}" --attn-bits 8 --embed-bits 8
q "qmoe a8 e4" "$T/d" "${Q[@]}" --attn-bits 8 --embed-bits 4
q "qmoe a4 e4" "$T/d" "${Q[@]}" --attn-bits 4 --embed-bits 4
q "qmoe r1.0 a8 e4" "$T/d" "${Q[@]}" --ternary-range 1.0 --attn-bits 8 --embed-bits 4
q "qmoe r1.15 a8 e4" "$T/d" "${Q[@]}" --ternary-range 1.15 --attn-bits 8 --embed-bits 4

python3 - "$points" "$SRC/docs/quality-plot.svg" <<'PY'
import math, sys
pts = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ours = [(lab, int(b) / 1e6, float(p)) for lab, b, p in pts]
# llama.cpp's own f32 conversion and quantizations of this model (imatrix
# from train.txt), llama-perplexity, same protocol and text.
theirs = [("f32", 61.5, 53.10), ("Q8_0", 16.4, 53.11), ("Q4_K", 9.7, 53.14), ("Q2_K", 6.3, 53.72),
          ("IQ2_XXS", 4.77, 54.24), ("IQ1_M", 4.27, 54.46), ("IQ1_S", 3.97, 54.61), ("TQ1_0", 4.49, 64.85)]
W, H, L, R, TP, B = 760, 440, 70, 200, 30, 50
xs = [p[1] for p in ours + theirs]; ys = [p[2] for p in ours + theirs]
x0, x1 = math.log(min(xs) * 0.9), math.log(max(xs) * 1.1)
y0, y1 = min(ys) - 0.5, max(ys) + 0.5
X = lambda v: L + (math.log(v) - x0) / (x1 - x0) * (W - L - R)
Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - TP - B)
o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
     f'<rect width="{W}" height="{H}" fill="white"/>',
     f'<text x="{L}" y="18" font-size="13">kjv-mixtral-15m: file size vs perplexity (test.txt, llama.cpp protocol, ctx 256)</text>',
     f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
     f'<line x1="{L}" y1="{TP}" x2="{L}" y2="{H-B}" stroke="black"/>',
     f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">file size, MB (log scale)</text>',
     f'<text x="16" y="{(TP+H-B)/2}" transform="rotate(-90 16 {(TP+H-B)/2})" text-anchor="middle">perplexity</text>']
for v in [4, 6, 8, 10, 15, 20, 30, 40, 60]:
    if math.log(v) < x0 or math.log(v) > x1: continue
    o.append(f'<line x1="{X(v):.1f}" y1="{H-B}" x2="{X(v):.1f}" y2="{H-B+4}" stroke="black"/>'
             f'<text x="{X(v):.1f}" y="{H-B+16}" text-anchor="middle">{v}</text>')
step = 1 if y1 - y0 < 15 else 2
v = math.ceil(y0)
while v <= y1:
    o.append(f'<line x1="{L-4}" y1="{Y(v):.1f}" x2="{L}" y2="{Y(v):.1f}" stroke="black"/>'
             f'<text x="{L-7}" y="{Y(v)+4:.1f}" text-anchor="end">{v}</text>')
    v += step
for pts_, color in ((theirs, "#d62728"), (ours, "#1f77b4")):
    for lab, x, y in pts_:
        o.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="4" fill="{color}"/>'
                 f'<text x="{X(x)+6:.1f}" y="{Y(y)-5:.1f}" fill="{color}">{lab}</text>')
o.append(f'<circle cx="{W-R+20}" cy="{TP+10}" r="4" fill="#1f77b4"/><text x="{W-R+30}" y="{TP+14}">moetool</text>')
o.append(f'<circle cx="{W-R+20}" cy="{TP+28}" r="4" fill="#d62728"/><text x="{W-R+30}" y="{TP+32}">llama.cpp</text>')
o.append('</svg>')
open(sys.argv[2], "w").write("\n".join(o) + "\n")
print("| who | weights | file MB | ppl (llama.cpp protocol) |\n|---|---|---|---|")
for lab, x, y in ours: print(f"| moetool | {lab} | {x:.2f} | {y:.4f} |")
for lab, x, y in theirs: print(f"| llama.cpp | {lab} | {x:.2f} | {y:.2f} |")
PY
