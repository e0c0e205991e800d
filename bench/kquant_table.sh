#!/usr/bin/env bash
# K-quant files of the bundled model, llama.cpp's and moetool's, scored under
# llama.cpp's protocol (ctx 256, all of data/test.txt): for each of
# llama.cpp's mixes Q4_K_M, Q3_K_M, Q2_K (and Q5_K_M, Q6_K with `all`)
#   llama.cpp   llama_model_quantize (llama-cpp-python, no importance matrix)
#               of moetool's f32 GGUF
#   moetool rtn quantize --mix M --method rtn  (the same types; the same values)
#   moetool gptq quantize --mix M              (GPTQ onto the same types)
# Prints one markdown row per file: MB, ppl by moetool eval, and for the GPTQ
# files also llama.cpp's own perplexity of the very file.
# usage: bench/kquant_table.sh BUILD_DIR [THREADS] [all]
set -eu
B=${1:?build dir}; TH=${2:-2}
BIN="$B/cli/moetool"; [ -x "$BIN" ] || BIN="$B/moetool"
SRC=$(cd "$(dirname "$0")/.." && pwd)
M="$SRC/models/kjv-mixtral-15m"; TEXT="$M/data/test.txt"; PY=${PYTHON:-python3}
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-kqtable.XXXXXX"); trap 'rm -rf "$T"' EXIT
"$BIN" convert "$M" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1
mixes="q4_k_m:15 q3_k_m:12 q2_k:10"; [ "${3:-}" = all ] && mixes="q6_k:18 q5_k_m:17 $mixes"
ppl() { "$BIN" eval "$1" --text "$TEXT" --protocol llamacpp --ctx 256 --threads "$TH" --json --quiet |
        "$PY" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'; }
mb() { "$PY" -c "import os; print('%.2f' % (os.path.getsize('$1') / 1e6))"; }
echo "| mix | who | method | file MB | ppl (moetool eval) | ppl (llama.cpp) |"
echo "|---|---|---|---|---|---|"
for spec in $mixes; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$SRC/tests/llamacpp_quant.py" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" >/dev/null 2>&1
    echo "| $mix | llama.cpp | rtn | $(mb "$T/ll.gguf") | $(ppl "$T/ll.gguf") | |"
    "$BIN" quantize "$M" -o "$T/rtn.gguf" --mix "$mix" --method rtn --threads "$TH" --quiet >/dev/null
    echo "| $mix | moetool | rtn | $(mb "$T/rtn.gguf") | $(ppl "$T/rtn.gguf") | |"
    "$BIN" quantize "$M" -o "$T/gptq.gguf" --mix "$mix" --threads "$TH" --quiet >/dev/null
    lp=$("$PY" "$SRC/tests/llamacpp_quant.py" ppl "$T/gptq.gguf" "$TEXT" 256 135)
    echo "| $mix | moetool | gptq | $(mb "$T/gptq.gguf") | $(ppl "$T/gptq.gguf") | $lp |"
    rm -f "$T/ll.gguf" "$T/rtn.gguf" "$T/gptq.gguf"
done
