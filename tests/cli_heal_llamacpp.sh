#!/usr/bin/env bash
# A MoE healed by `moetool distill --student MERGED` leaves as a Mixtral
# checkpoint that llama.cpp runs: merge 8 -> 6, heal a few steps against the
# original, convert the result to GGUF; llama.cpp (llama-cpp-python, its
# own GGUF reader and forward) must produce moetool's greedy text and
# moetool's perplexity of the file (llama.cpp protocol, windows of 128 over 6000 bytes of test.txt,
# rtol 1e-3). The heal must also have changed the merged weights (else
# this would only test merge's output again).
# Skipped (exit 77) without llama_cpp (tools/install_llamacpp_python.sh).
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
PY=${PYTHON:-python3}
"$PY" -c 'import llama_cpp' >/dev/null 2>&1 || { echo "skipped: no llama_cpp in $PY"; exit 77; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$BIN" merge "$MODEL" -o "$T/m6" --experts 6 --method frequency --threads 2 --quiet >/dev/null 2>"$T/err" ||
    { echo "FAIL merge: $(cat "$T/err")"; exit 1; }
"$BIN" distill "$MODEL" -o "$T/h6" --student "$T/m6" --tokens 2048 --batch 2 --seq 64 --threads 2 --quiet \
    >/dev/null 2>"$T/err" || { echo "FAIL distill: $(cat "$T/err")"; exit 1; }
[ -f "$T/m6/model.safetensors" ] && [ -f "$T/h6/model.safetensors" ] || bad "no model.safetensors in the outputs"
cmp -s "$T/m6/model.safetensors" "$T/h6/model.safetensors" && bad "healing left the merged weights as they were"
"$BIN" convert "$T/h6" -o "$T/h6.gguf" --quiet >/dev/null 2>"$T/err" || { echo "FAIL convert: $(cat "$T/err")"; exit 1; }
"$BIN" generate "$T/h6.gguf" -p "And Paul said" -n 16 --threads 2 --json >"$T/gen.json" 2>"$T/err" ||
    bad "generate: $(cat "$T/err")"
head -c 6000 "$MODEL/data/test.txt" >"$T/text.txt"
want=$("$BIN" eval "$T/h6.gguf" --text "$T/text.txt" --protocol llamacpp --ctx 128 --threads 2 \
    --json --quiet | sed -n 's/.*"ppl":\([0-9.eE+-]*\).*/\1/p' | head -n 1)
timeout 600 "$PY" "$SRC/tests/llamacpp_check.py" "$T/h6.gguf" --expect "$T/gen.json" --prompt "And Paul said" \
    --ppl "$T/text.txt" --ppl-ctx 128 --ppl-expect "$want" --ppl-rtol 1e-3 >"$T/llama.log" 2>&1 &&
    echo "ok llama.cpp on the healed MoE: greedy text equal, ppl moetool $want: $(grep -i 'ppl' "$T/llama.log" | tail -1)" ||
    bad "llama.cpp on the healed MoE: $(tail -5 "$T/llama.log")"

if [ $fails -ne 0 ]; then echo "cli_heal_llamacpp: FAIL ($fails)"; exit 1; fi
echo "cli_heal_llamacpp: PASS"
