#!/usr/bin/env bash
# i-quant files of the bundled model and the importance matrix, llama.cpp's
# and moetool's, scored under llama.cpp's protocol (ctx 256, all of
# data/test.txt):
#   the importance matrix: moetool's, computed from data/train.txt (16384
#   tokens, the quantize default) by `quantize --imatrix calib --imatrix-out`
#   IQ4_XS, IQ4_NL mixes:
#     llama.cpp        llama_model_quantize of moetool's f32 GGUF, without an
#                      imatrix, and with moetool's
#     moetool rtn      quantize --mix M --method rtn --imatrix F (llama.cpp's
#                      bytes with the same imatrix; tests/cli_iquant_write.sh)
#     moetool default  quantize --mix M (gptq: the K-quant tensors of the mix
#                      by GPTQ, the iq4 ones by RTN with the imatrix it computes)
#   Q4_K_M, Q2_K with the imatrix: llama.cpp's and moetool's RTN (the same
#   bytes), against moetool's GPTQ (bench/kquant_table.sh)
#   the lattice i-quant mixes (IQ3_M, IQ3_S, IQ3_XS, IQ3_XXS, IQ2_M, IQ2_S,
#   IQ2_XS, IQ2_XXS, IQ1_M, IQ1_S):
#     llama.cpp        its quantizer with moetool's imatrix
#     moetool rtn      quantize --mix M --method rtn --imatrix F: compared
#                      tensor for tensor with llama.cpp's file (the same
#                      bytes, so the same perplexity; tests/cli_iquant_mixes.sh)
#     moetool default  quantize --mix M (gptq: the K-quant / q8_0 tensors of
#                      the mix by GPTQ, the lattice ones by RTN with the
#                      imatrix it computes), scored by moetool and llama.cpp
# Prints one markdown row per file: MB, ppl by moetool eval (and by llama.cpp
# for moetool's files).
# usage: bench/iquant_table.sh BUILD_DIR [THREADS] [all|lattice]
set -eu
B=${1:?build dir}; TH=${2:-2}; ROWS=${3:-all}
BIN="$B/cli/moetool"; [ -x "$BIN" ] || BIN="$B/moetool"
SRC=$(cd "$(dirname "$0")/.." && pwd)
M="$SRC/models/kjv-mixtral-15m"; TEXT="$M/data/test.txt"; PY=${PYTHON:-python3}
LQ="$SRC/tests/llamacpp_quant.py"
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-iqtable.XXXXXX"); trap 'rm -rf "$T"' EXIT
"$BIN" convert "$M" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1
IM="$T/im.dat"
"$BIN" quantize "$M" -o "$T/x.gguf" --method rtn --type iq4_xs --imatrix calib --imatrix-out "$IM" --threads "$TH" \
    --quiet >/dev/null
ppl() { "$BIN" eval "$1" --text "$TEXT" --protocol llamacpp --ctx 256 --threads "$TH" --json --quiet |
        "$PY" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'; }
lppl() { "$PY" "$LQ" ppl "$1" "$TEXT" 256 135; }
mb() { "$PY" -c "import os; print('%.2f' % (os.path.getsize('$1') / 1e6))"; }
echo "| mix | who | method | imatrix | file MB | ppl (moetool eval) | ppl (llama.cpp) |"
echo "|---|---|---|---|---|---|---|"
if [ "$ROWS" = all ]; then
for spec in iq4_xs:30 iq4_nl:25; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" >/dev/null 2>&1
    echo "| $mix | llama.cpp | its quantizer | none | $(mb "$T/ll.gguf") | $(ppl "$T/ll.gguf") | |"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" "imatrix=$IM" >/dev/null 2>&1
    echo "| $mix | llama.cpp | its quantizer | moetool's | $(mb "$T/ll.gguf") | $(ppl "$T/ll.gguf") | |"
    "$BIN" quantize "$M" -o "$T/rtn.gguf" --mix "$mix" --method rtn --imatrix "$IM" --threads "$TH" --quiet >/dev/null
    echo "| $mix | moetool | rtn | moetool's | $(mb "$T/rtn.gguf") | $(ppl "$T/rtn.gguf") | |"
    "$BIN" quantize "$M" -o "$T/def.gguf" --mix "$mix" --threads "$TH" --quiet >/dev/null
    echo "| $mix | moetool | default (gptq + imatrix) | computed | $(mb "$T/def.gguf") | $(ppl "$T/def.gguf") | $(lppl "$T/def.gguf") |"
    rm -f "$T/ll.gguf" "$T/rtn.gguf" "$T/def.gguf"
done
for spec in q4_k_m:15 q2_k:10; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" "imatrix=$IM" >/dev/null 2>&1
    echo "| $mix | llama.cpp | its quantizer | moetool's | $(mb "$T/ll.gguf") | $(ppl "$T/ll.gguf") | |"
    "$BIN" quantize "$M" -o "$T/rtn.gguf" --mix "$mix" --method rtn --imatrix "$IM" --threads "$TH" --quiet >/dev/null
    echo "| $mix | moetool | rtn | moetool's | $(mb "$T/rtn.gguf") | $(ppl "$T/rtn.gguf") | |"
    rm -f "$T/ll.gguf" "$T/rtn.gguf"
done
fi
for spec in iq3_m:27 iq3_s:26 iq3_xs:22 iq3_xxs:23 iq2_m:29 iq2_s:28 iq2_xs:20 iq2_xxs:19 iq1_m:31 iq1_s:24; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" "imatrix=$IM" >/dev/null 2>&1
    echo "| $mix | llama.cpp | its quantizer | moetool's | $(mb "$T/ll.gguf") | $(ppl "$T/ll.gguf") | |"
    "$BIN" quantize "$M" -o "$T/rtn.gguf" --mix "$mix" --method rtn --imatrix "$IM" --threads "$TH" --quiet >/dev/null
    echo "| $mix | moetool | rtn | moetool's | $(mb "$T/rtn.gguf") | the row above: $("$PY" "$LQ" same "$T/rtn.gguf" "$T/ll.gguf") | |"
    "$BIN" quantize "$M" -o "$T/def.gguf" --mix "$mix" --threads "$TH" --quiet >/dev/null
    echo "| $mix | moetool | default (gptq + imatrix) | computed | $(mb "$T/def.gguf") | $(ppl "$T/def.gguf") | $(lppl "$T/def.gguf") |"
    rm -f "$T/ll.gguf" "$T/rtn.gguf" "$T/def.gguf"
done
