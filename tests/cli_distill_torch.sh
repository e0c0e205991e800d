#!/usr/bin/env bash
# The distill engine against an independent PyTorch computation: one step's
# loss and every gradient of the student (transformers' MistralForCausalLM,
# or MixtralForCausalLM for a merged MoE student, in float64 + autograd,
# tests/distill_grad_check.py) for KD+CE at T = 2, CE alone and KD alone;
# then short distill runs (dense, and healing the merged MoE) whose outputs
# transformers loads and scores with moetool eval's perplexity to 1e-4.
# Skips (77) without torch.
set -u
BIN=${MT_BIN:-build/cli/moetool}
BUILD=${MT_BUILD_DIR:-build}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers, safetensors' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch + transformers"; exit 77; fi
DUMP=$BUILD/tests/distill_grad_dump
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
TEXT=$MODEL/data/test.txt
for cfg in "2 32 0.5 2" "1 48 0 1" "3 16 1 1"; do
  set -- $cfg
  "$DUMP" "$MODEL" "$TEXT" "$T/g" "$1" "$2" "$3" "$4" >/dev/null || { echo "FAIL dump $cfg"; fails=$((fails + 1)); continue; }
  if "$PY" "$SRC/tests/distill_grad_check.py" "$T/g" --batch "$1" --seq "$2" --alpha "$3" --temp "$4"; then
    echo "ok gradients (batch $1, seq $2, kd-weight $3, T $4)"
  else echo "FAIL gradients $cfg"; fails=$((fails + 1)); fi
  rm -rf "$T/g"
done
# a MoE student: the bundled model merged 8 -> 4 experts per layer
"$BIN" merge "$MODEL" -o "$T/m4" --experts 4 --calib-tokens 2048 --threads 2 --quiet >/dev/null ||
  { echo "FAIL merge"; exit 1; }
for cfg in "2 32 0.5 2" "1 48 0 1" "3 16 1 1"; do
  set -- $cfg
  "$DUMP" "$MODEL" "$TEXT" "$T/g" "$1" "$2" "$3" "$4" "$T/m4" >/dev/null || { echo "FAIL MoE dump $cfg"; fails=$((fails + 1)); continue; }
  if "$PY" "$SRC/tests/distill_grad_check.py" "$T/g" --batch "$1" --seq "$2" --alpha "$3" --temp "$4"; then
    echo "ok MoE gradients (batch $1, seq $2, kd-weight $3, T $4)"
  else echo "FAIL MoE gradients $cfg"; fails=$((fails + 1)); fi
  rm -rf "$T/g"
done
# a short run: its output in transformers gives moetool's perplexity
"$BIN" distill "$MODEL" -o "$T/student" --student dense --tokens 4096 --batch 4 --seq 64 --init-tokens 1024 --threads 2 --quiet \
  >/dev/null || { echo "FAIL distill run"; exit 1; }
p=$("$BIN" eval "$T/student" --text "$TEXT" --ctx 128 --max-windows 8 --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
if "$PY" "$SRC/tests/transformers_check.py" "$T/student" --tokenizer "$MODEL/tokenizer.json" --text "$TEXT" \
     --ctx 128 --windows 8 --expect-ppl "$p" --rtol 1e-4; then echo "ok transformers ppl $p"; else
  echo "FAIL transformers ppl"; fails=$((fails + 1)); fi
"$BIN" distill "$MODEL" -o "$T/healed" --student "$T/m4" --tokens 2048 --batch 4 --seq 64 --threads 2 --quiet \
  >/dev/null || { echo "FAIL heal run"; exit 1; }
p=$("$BIN" eval "$T/healed" --text "$TEXT" --ctx 128 --max-windows 8 --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
if "$PY" "$SRC/tests/transformers_check.py" "$T/healed" --tokenizer "$MODEL/tokenizer.json" --text "$TEXT" \
     --ctx 128 --windows 8 --expect-ppl "$p" --rtol 1e-4; then echo "ok transformers ppl of the healed MoE $p"; else
  echo "FAIL transformers ppl of the healed MoE"; fails=$((fails + 1)); fi
echo "$fails failed"
[ "$fails" = 0 ]
