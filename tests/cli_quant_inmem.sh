#!/usr/bin/env bash
# quantize of a Hugging Face source to GGUF works on the loaded checkpoint in
# memory: its output must be byte for byte the GGUF of `moetool convert SRC`
# then `moetool quantize` of that file with the same options (`cmp`), and no
# converted copy may appear beside the output while it runs.
#
# The two runs see the same command line and source name: each runs in its
# own directory on an input called `m` -- there a link to the HF directory,
# here the GGUF that convert wrote of it -- so even the provenance key
# (source, command) is the same and the files can be compared whole.
# Cases: the bundled Mixtral (GPTQ K-quants with attention and embedding
# types, RTN tq2_0, a llama.cpp mix, a --target-bpw plan, --target-size),
# Qwen3-MoE and OLMoE random checkpoints (tests/make_qk_checkpoint.py,
# numpy) and Qwen2-MoE (tests/make_qwen2moe.py, needs torch + transformers;
# reported as skipped without).
set -u
BIN=$(realpath "${MT_BIN:-build/cli/moetool}")
MODEL=$(realpath "${MT_MODEL_DIR:-models/kjv-mixtral-15m}")
SRC=$(realpath "${MT_SOURCE_DIR:-.}")
LPY=${PYTHON:-python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
CAL=(--calib "$MODEL/data/train.txt" --calib-tokens 512)

# setup NAME HF_DIR: $T/NAME/mem/m -> the HF directory, $T/NAME/file/m = its GGUF
setup() {
  local d=$T/$1
  mkdir -p "$d/mem" "$d/file"
  ln -s "$2" "$d/mem/m"
  (cd "$d/mem" && "$BIN" convert m -o "$d/file/m.gguf" >/dev/null 2>"$d/conv.err") && mv "$d/file/m.gguf" "$d/file/m" \
    || { bad "$1: convert: $(cat "$d/conv.err")"; return 1; }
}

# With strace (tools/install-deps.sh installs it), the in-memory run must
# create exactly one file -- its output (O_TMPFILE, or a named temporary when
# the file system lacks it) -- and open each safetensors shard once; the old
# route made a second, converted copy beside the output and opened every
# shard twice. Without strace, a listing of the directory while it runs
# (which can miss a short-lived file) stands in.
have_strace=0
strace -f -qq -o /dev/null true >/dev/null 2>&1 && have_strace=1
[ $have_strace = 1 ] || echo "strace unusable: created files are only watched by listing the directory"

# same NAME CASE ARGS...: quantize both ways, compare the outputs byte for byte
same() {
  local name=$1 d=$T/$1 c=$2; shift 2
  rm -f "$d/mem/out.gguf" "$d/file/out.gguf"
  (cd "$d/file" && "$BIN" quantize m -o out.gguf --threads 2 "$@" >/dev/null 2>"$d/$c.file.err") \
    || { bad "$name $c: quantize of the converted file: $(tail -1 "$d/$c.file.err")"; return; }
  local tr=$d/$c.trace seen=$d/$c.seen
  if [ $have_strace = 1 ]; then
    # LeakSanitizer (the ASan build) cannot run under ptrace: off for the traced run only
    (cd "$d/mem" && ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
      strace -f -qq -e trace=openat,open,creat -o "$tr" "$BIN" quantize m -o out.gguf --threads 2 "$@" \
      >/dev/null 2>"$d/$c.mem.err") || { bad "$name $c: in-memory quantize: $(tail -1 "$d/$c.mem.err")"; return; }
    local made shards once
    made=$(grep -v ' = -1' "$tr" | grep -cE 'O_TMPFILE|O_CREAT|creat\(')
    [ "$made" = 1 ] && ok || bad "$name $c: $made files created (want 1, the output): $(grep -E 'O_TMPFILE|O_CREAT' "$tr" | head -3)"
    shards=$(grep -v ' = -1' "$tr" | grep -oE '"[^"]*\.safetensors"' | sort)
    once=$(echo "$shards" | sort -u)
    [ -n "$shards" ] && [ "$shards" = "$once" ] && ok || bad "$name $c: shards opened more than once: $(echo "$shards" | uniq -c | head -3)"
  else
    (cd "$d/mem" && exec "$BIN" quantize m -o out.gguf --threads 2 "$@" >/dev/null 2>"$d/$c.mem.err") &
    local pid=$!
    : > "$seen"
    while kill -0 "$pid" 2>/dev/null; do ls -A "$d/mem" >> "$seen"; done
    wait "$pid" || { bad "$name $c: in-memory quantize: $(tail -1 "$d/$c.mem.err")"; return; }
    local extra
    extra=$(sort -u "$seen" | grep -vx -e m -e out.gguf -e 'out\.gguf\.tmp-[0-9]*-[0-9a-zA-Z]\{6\}' | tr '\n' ' ')
    [ -z "$extra" ] && ok || bad "$name $c: names beside the output while quantizing: $extra"
  fi
  [ "$(ls -A "$d/mem" | tr '\n' ' ')" = "m out.gguf " ] && ok || bad "$name $c: left beside the output: $(ls -A "$d/mem")"
  if cmp "$d/mem/out.gguf" "$d/file/out.gguf" >/dev/null; then
    ok; echo "$name $c: identical ($(stat -c %s "$d/mem/out.gguf") bytes)"
  else
    bad "$name $c: the in-memory GGUF differs from convert + quantize ($(cmp "$d/mem/out.gguf" "$d/file/out.gguf" 2>&1 | head -1))"
  fi
}

# ---- the bundled Mixtral (bf16: norms and router become F32, Q/K rows permuted)
setup mixtral "$MODEL" && {
  same mixtral q4_k --type q4_k --attn-type q8_0 --embed-type q6_k "${CAL[@]}"
  same mixtral tq2_0 --method rtn --type tq2_0
  same mixtral mix --mix q4_k_m "${CAL[@]}"
  same mixtral bpw --target-bpw 4.5 "${CAL[@]}"
  same mixtral size --target-size 12M "${CAL[@]}"
}

# ---- Qwen3-MoE and OLMoE (QK-norm, no permutation; f32 sources)
if "$LPY" -c 'import numpy' >/dev/null 2>&1 && "$LPY" "$SRC/tests/make_qk_checkpoint.py" "$T/qk" --model-dir "$MODEL" >/dev/null; then
  for fam in qwen3moe olmoe; do
    setup "$fam" "$T/qk/$fam" && {
      same "$fam" q4_0 --bits 4 --attn-bits 8 "${CAL[@]}"
      same "$fam" q8_0 --method rtn --type q8_0 --embed-type q8_0
    }
  done
else
  echo "skipped: Qwen3-MoE / OLMoE cases (no $LPY with numpy)"
fi

# ---- Qwen2-MoE (shared expert with its gate, QKV biases), written by transformers
TPY=${MT_TORCH_PYTHON:-}
if [ -z "$TPY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers' >/dev/null 2>&1; then TPY=$p; break; fi
  done
fi
if [ -n "$TPY" ] && "$TPY" "$SRC/tests/make_qwen2moe.py" "$T/q2" --model-dir "$MODEL" >/dev/null 2>&1; then
  setup qwen2moe "$T/q2/moe" && same qwen2moe q4_0 --bits 4 --attn-bits 8 --embed-type q8_0 "${CAL[@]}"
else
  echo "skipped: Qwen2-MoE case (no python with torch + transformers)"
fi

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
