#!/usr/bin/env bash
# Quantize time and memory: `moetool quantize` (GPTQ) under /usr/bin/time -v
# on the bundled model and on a synthetic one-layer Mixtral-width checkpoint
# (random bf16 weights, hidden 4096, expert ffn 14336, 8 experts top-2, 32
# heads, 8 KV heads, vocab 4096 with the bundled tokenizer), printed as a
# markdown table for docs/perf.md next to the layer's bf16 size and the
# calibration state computed from the shapes and the tokens each expert got.
# usage: bench/quant_wide.sh [BUILD_DIR]
#   env MT_WIDE_HIDDEN=4096 MT_WIDE_FFN=14336 MT_WIDE_EXPERTS=8
#       MT_WIDE_HEADS=32 MT_WIDE_KV=8       shape of the synthetic layer
#   env MT_WIDE_CALIB=4096                  calibration tokens (wide layer)
#   env MT_WIDE_THREADS=2                   --threads
#   env MT_WIDE_GRIDS="ternary-row int4"    ternary-row: QMoE per-row ternary,
#                                           --eval-only on a short text;
#                                           int4: q4_0 GGUF written to a file;
#                                           tq2: TQ2_0 GGUF written to a file
#   env MT_WIDE_BUNDLED=1                   also the bundled model (default
#                                           calibration, 16384 tokens)
#   env MT_WIDE_BIN=/path/to/moetool        another build to measure (same table)
# Needs python3 with numpy (tests/make_checkpoint.py) and about 3 GB of disk
# per GB of layer in $TMPDIR. The machine is shared and noisy.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
BIN=${MT_WIDE_BIN:-$BUILD/cli/moetool}
HID=${MT_WIDE_HIDDEN:-4096}
FFN=${MT_WIDE_FFN:-14336}
NE=${MT_WIDE_EXPERTS:-8}
HEADS=${MT_WIDE_HEADS:-32}
KV=${MT_WIDE_KV:-8}
CALIB=${MT_WIDE_CALIB:-4096}
TH=${MT_WIDE_THREADS:-2}
GRIDS=${MT_WIDE_GRIDS:-ternary-row int4}
BUNDLED=${MT_WIDE_BUNDLED:-1}
KJV=$SRC/models/kjv-mixtral-15m
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

echo "# quantize time and memory: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GB," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "binary: $BIN"
echo

WIDE=$T/wide
python3 "$SRC/tests/make_checkpoint.py" "$WIDE" --custom --hidden "$HID" --ffn "$FFN" --layers 1 --experts "$NE" \
  --topk 2 --heads "$HEADS" --kv-heads "$KV" --vocab 4096 --dtype bf16 > /dev/null
cp "$KJV"/tokenizer* "$WIDE/"
head -c 3000 "$KJV/data/test.txt" > "$T/short.txt"   # --eval-only text: a few windows

# run NAME MODEL GRID CALIB_TOKENS -> one table row
run() {
  local name=$1 model=$2 grid=$3 ct=$4 args out
  case $grid in
    ternary-row) args=(--eval-only --bits ternary --group row --text "$T/short.txt");;
    int4) args=(-o "$T/out.gguf" --bits 4);;
    tq2) args=(-o "$T/out.gguf" --bits ternary);;
    *) echo "unknown grid $grid" >&2; return 1;;
  esac
  [ "$ct" = default ] || args+=(--calib-tokens "$ct" --calib "$KJV/data/train.txt")
  /usr/bin/time -v -o "$T/time.txt" "$BIN" quantize "$model" --method gptq "${args[@]}" --threads "$TH" --json \
    > "$T/q.json" 2> "$T/err.txt" || { echo "| $name | $grid | failed: $(tail -c 300 "$T/err.txt" | tr '\n' ' ') |"; return 0; }
  rm -f "$T/out.gguf"
  python3 - "$model" "$T/q.json" "$T/time.txt" "$name" "$grid" "$TH" <<'EOF'
import json, re, sys
model, qj, tv, name, grid, th = sys.argv[1:]
th = int(th)
c = json.load(open(model + "/config.json"))
q = json.load(open(qj))
t = open(tv).read()
m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1).split(":")
wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(m)))
maxrss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) * 1024
H, F, E = c["hidden_size"], c["intermediate_size"], c.get("num_local_experts", 1)
hd = c.get("head_dim") or H // c["num_attention_heads"]
kv = c["num_key_value_heads"] * hd
qd = c["num_attention_heads"] * hd
layers = c["num_hidden_layers"]
layer_bf16 = 2 * (3 * E * H * F + H * qd * 2 + H * kv * 2 + E * H)
MiB = 2.0 ** 20
toks = q["expert_tokens"]
# Calibration state of the largest layer, now: the captured rows of its
# experts (f32), plus, per job in flight (up to the threads), w2's working
# set: Hessian f64 + GPTQ's f32 factor (ffn^2 each) + W f32 + codes
# (hidden*ffn) + the expert's intermediate activations (rows x ffn f32).
rows = max(sum(l) for l in toks) * H * 4
nmax = max(max(l) for l in toks)
job_w2 = F * F * 12 + H * F * 5 + nmax * F * 4
state = rows + min(th, E) * job_w2
# Before (Hessians of all experts at once): every expert's h_in and h_mid
# (f64), f32 copies of all W1/W3 during calibration, and per job in flight
# a copy of H, GPTQ's factor, W and W0 (f32).
old = E * (H * H + F * F) * 8 + max(2 * E * F * H * 4, min(th, 3 * E) * (F * F * 12 + H * F * 8))
print(f"| {name} | {q['grid']} | {q['calib_tokens']} | {th} | {wall:.1f} | {q['quantize_s']:.1f} | "
      f"{q['peak_rss'] / MiB:.0f} | {maxrss / MiB:.0f} | {layer_bf16 / MiB:.0f} × {layers} | {rows / MiB:.0f} | "
      f"{job_w2 / MiB:.0f} | {state / MiB:.0f} | {old / MiB:.0f} |"
      + (f" {q['ppl']:.3f} |" if "ppl" in q else " - |"))
EOF
}

echo "| model | grid | calib tokens | threads | wall s | quantize s | peak RSS MiB (quantize) | max RSS MiB (process) |" \
  "layer bf16 MiB | calib rows MiB | w2 job MiB | calib state MiB | before: calib state MiB | ppl |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
if [ "$BUNDLED" = 1 ]; then
  for g in $GRIDS; do run kjv-mixtral-15m "$KJV" "$g" default; done
fi
for g in $GRIDS; do run "1 layer ${HID}x${FFN}, $NE experts" "$WIDE" "$g" "$CALIB"; done
echo
echo "wall s, max RSS: /usr/bin/time -v of the whole command (--eval-only loads the model twice and scores" \
  "a short text after quantizing; -o converts to GGUF first and writes the file after); quantize s, peak RSS" \
  "(quantize): moetool's own --json, at the end of quantization. calib state = calib rows + min(threads," \
  "experts) w2 jobs; before = Hessians of all experts at once + f32 W1/W3 (or H copies of the jobs), computed."
