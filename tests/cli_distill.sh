#!/usr/bin/env bash
# moetool distill: usage and input errors (one line, exit 2 / 1, nothing
# written; for a dense student and for a MoE student to heal), a NaN loss
# stops with the step number, and resume after kill -9
# reproduces the uninterrupted run's losses and weights exactly; the student
# converted to GGUF generates the same greedy text in llama.cpp.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
expect() { # name want_rc cmd...
  local name=$1 want=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  local lines; lines=$(grep -vc 'removed, a temporary left by process' "$T/err")
  if [ "$rc" != "$want" ] || [ "$lines" != 1 ] || [ -e "$T/o" ]; then
    echo "FAIL $name: rc $rc (want $want), $lines stderr lines: $(cat "$T/err")"; ls "$T"; fails=$((fails + 1)); rm -rf "$T/o"
  else echo "ok $name: $(cat "$T/err")"; fi
}
TINY=(--tokens 1024 --batch 2 --seq 32 --init-tokens 256 --threads 2 --quiet)
expect no-student 2 "$BIN" distill "$MODEL" -o "$T/o"
expect bad-student 2 "$BIN" distill "$MODEL" -o "$T/o" --student moe
expect bad-init 2 "$BIN" distill "$MODEL" -o "$T/o" --student dense --init svd
expect bad-kd 2 "$BIN" distill "$MODEL" -o "$T/o" --student dense --kd-weight 1.5
head -c 40 "$MODEL/data/test.txt" >"$T/short.txt"
expect short-data 1 "$BIN" distill "$MODEL" -o "$T/o" --student dense --data "$T/short.txt" "${TINY[@]}"
expect missing-data 1 "$BIN" distill "$MODEL" -o "$T/o" --student dense --data "$T/none.txt" "${TINY[@]}"
expect width-too-wide 2 "$BIN" distill "$MODEL" -o "$T/o" --student dense --width 5000 "${TINY[@]}"
# MoE students: --width/--init do not apply; a student whose vocabulary is not the teacher's
expect moe-width 2 "$BIN" distill "$MODEL" -o "$T/o" --student "$MODEL" --width 512 "${TINY[@]}"
mkdir "$T/v32k" && sed -e 's/"vocab_size": 4096/"vocab_size": 32000/' "$MODEL/config.json" >"$T/v32k/config.json"
for f in "$MODEL"/*.safetensors "$MODEL"/*.json "$MODEL"/tokenizer.model; do [ -e "$T/v32k/$(basename "$f")" ] || ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$T/v32k/"; done
expect moe-other-vocab 1 "$BIN" distill "$MODEL" -o "$T/o" --student "$T/v32k" "${TINY[@]}"
grep -q "embed_tokens.weight has shape \[4096, 256\], expected \[32000, 256\]" "$T/err" || { echo "FAIL other vocab message"; fails=$((fails + 1)); }
# a teacher with corrupt (NaN) weights: 1 MiB of 0xff inside its second shard
mkdir "$T/nan" && cp "$MODEL"/*.json "$MODEL"/tokenizer.model "$MODEL"/model-0000*.safetensors "$T/nan/"
head -c 1048576 /dev/zero | tr '\0' '\377' | dd of="$T/nan/model-00002-of-00002.safetensors" bs=1 seek=6000000 conv=notrunc status=none
expect nan-loss 1 "$BIN" distill "$T/nan" -o "$T/o" --student dense --data "$MODEL/data/train.txt" "${TINY[@]}"
grep -q "step 1: loss is NaN" "$T/err" || { echo "FAIL nan-loss message"; fails=$((fails + 1)); }
expect resume-without-ckpt 1 "$BIN" distill "$MODEL" -o "$T/o" --student dense --resume "${TINY[@]}"
# OUT.ckpt is an output too: a file there that is not a distill checkpoint is
# neither replaced nor removed without --force
echo "precious" >"$T/o.ckpt"
expect foreign-ckpt 2 "$BIN" distill "$MODEL" -o "$T/o" --student dense "${TINY[@]}"
[ "$(cat "$T/o.ckpt")" = precious ] || { echo "FAIL a foreign o.ckpt was touched"; fails=$((fails + 1)); }
rm -f "$T/o.ckpt"

# Resume: the uninterrupted run, then one killed after its checkpoint at step 8 and resumed.
RUN=(--student dense --tokens 3072 --batch 2 --seq 32 --init-tokens 256 --threads 2 --checkpoint-every 4 --quiet --json)
"$BIN" distill "$MODEL" -o "$T/full" "${RUN[@]}" >"$T/full.json" || { echo "FAIL full run"; exit 1; }
[ -e "$T/full.ckpt" ] && { echo "FAIL checkpoint left after a complete run"; fails=$((fails + 1)); }
expect dense-student-dir 1 "$BIN" distill "$MODEL" -o "$T/o" --student "$T/full" "${TINY[@]}"
"$BIN" distill "$MODEL" -o "$T/cut" "${RUN[@]}" >/dev/null &
pid=$!
for _ in $(seq 6000); do
  if [ -e "$T/cut.ckpt" ] && [ "$(od -An -t u8 -j $((8 + 13 * 8)) -N 8 "$T/cut.ckpt" | tr -d ' ')" -ge 8 ] 2>/dev/null; then break; fi
  sleep 0.1
done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
[ -e "$T/cut" ] && { echo "FAIL output present after kill -9"; fails=$((fails + 1)); }
step=$(od -An -t u8 -j $((8 + 13 * 8)) -N 8 "$T/cut.ckpt" | tr -d ' ')
echo "killed with checkpoint at step $step"
"$BIN" distill "$MODEL" -o "$T/cut" "${RUN[@]}" --resume >"$T/cut.json" || { echo "FAIL resume"; exit 1; }
ls "$T" | grep -q 'tmp-' && { echo "FAIL temporaries left: $(ls "$T")"; fails=$((fails + 1)); }
# losses of every resumed step equal the uninterrupted run's, and so do the weights
extract() { grep -o '{"step": [0-9]*, "loss": [^}]*}' "$1"; }
extract "$T/cut.json" >"$T/cut.log"
n=$(wc -l <"$T/cut.log")
first=$(head -1 "$T/cut.log" | grep -o '"step": [0-9]*' | grep -o '[0-9]*')
if [ "$n" -lt 1 ] || [ "$first" != $((step + 1)) ] || ! extract "$T/full.json" | tail -n "$n" | cmp -s - "$T/cut.log"; then
  echo "FAIL resumed losses differ (from step $first, $n steps)"; diff <(extract "$T/full.json" | tail -n "$n") "$T/cut.log" | head; fails=$((fails + 1))
else echo "ok resume: steps $first..$((first + n - 1)) identical"; fi
cmp -s "$T/full/model.safetensors" "$T/cut/model.safetensors" || { echo "FAIL resumed weights differ"; fails=$((fails + 1)); }
# a checkpoint from other options is refused
"$BIN" distill "$MODEL" -o "$T/cut2" "${RUN[@]}" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 6000); do [ -e "$T/cut2.ckpt" ] && break; sleep 0.1; done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
rm -rf "$T/o"
expect ckpt-other-options 1 "$BIN" distill "$MODEL" -o "$T/cut2" --student dense --tokens 3072 --batch 2 --seq 32 \
  --init-tokens 256 --threads 2 --lr 5e-4 --resume --quiet
# the top-K logit cache: written once, reused by a later run (no teacher
# logits computed, the same losses); a corrupt cache or one of another K is
# refused with one line
LC=(--student dense --tokens 1024 --batch 2 --seq 32 --init-tokens 256 --threads 2 --topk-logits 64 --quiet --json)
"$BIN" distill "$MODEL" -o "$T/lc1" "${LC[@]}" >"$T/lc1.json" || { echo "FAIL cached run"; fails=$((fails + 1)); }
"$BIN" distill "$MODEL" -o "$T/lc2" "${LC[@]}" --logit-cache "$T/lc1.logits" >"$T/lc2.json" || { echo "FAIL reuse run"; fails=$((fails + 1)); }
python3 - "$T/lc1.json" "$T/lc2.json" <<'PY' && echo "ok logit cache reused" || { echo "FAIL logit cache reuse"; fails=$((fails + 1)); }
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["cache_computed"] == a["cache_windows"] > 0 and b["cache_computed"] == 0, (a, b)
assert b["cache_windows"] == a["cache_windows"] and a["log"] == b["log"]
assert 0 < a["cache_bytes_per_token"] <= 8 * 64 + 1, a["cache_bytes_per_token"]
print("cache: %d windows, %.1f bytes per token" % (a["cache_windows"], a["cache_bytes_per_token"]))
PY
[ -e "$T/lc2.logits" ] && { echo "FAIL a cache beside lc2 was written"; fails=$((fails + 1)); }
cp "$T/lc1.logits" "$T/bad.logits"
printf 'garbage!' | dd of="$T/bad.logits" bs=1 seek=2000 conv=notrunc status=none
expect cache-corrupt 1 "$BIN" distill "$MODEL" -o "$T/o" "${LC[@]}" --logit-cache "$T/bad.logits"
expect cache-other-k 1 "$BIN" distill "$MODEL" -o "$T/o" "${LC[@]/64/32}" --logit-cache "$T/lc1.logits"
grep -q "made for another teacher, data, --topk-logits or --seq" "$T/err" || { echo "FAIL other-K message"; fails=$((fails + 1)); }
expect cache-k-too-large 2 "$BIN" distill "$MODEL" -o "$T/o" "${LC[@]/64/5000}"
# the student as a llama-arch GGUF: llama.cpp's greedy text equals moetool's (when llama_cpp is installed)
PY=${PYTHON:-python3}
if "$PY" -c 'import llama_cpp' >/dev/null 2>&1; then
  "$BIN" convert "$T/full" -o "$T/full.gguf" --quiet >/dev/null &&
    "$BIN" generate "$T/full.gguf" -p "And Paul said" -n 16 --threads 2 --json >"$T/gen.json" 2>/dev/null &&
    timeout 600 "$PY" "${MT_SOURCE_DIR:-.}/tests/llamacpp_check.py" "$T/full.gguf" --expect "$T/gen.json" \
      --prompt "And Paul said" >"$T/llama.log" 2>&1 && echo "ok llama.cpp greedy text equal" ||
    { echo "FAIL llama.cpp: $(tail -3 "$T/llama.log")"; fails=$((fails + 1)); }
else echo "llama.cpp part skipped: no llama_cpp in $PY"; fi
echo "$fails failed"
[ "$fails" = 0 ]
