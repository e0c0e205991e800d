#!/usr/bin/env bash
# llama.cpp's lattice i-quant mixes written by moetool: `quantize --mix M
# --method rtn --imatrix F` for M = iq2_xxs, iq2_xs, iq2_s, iq2_m, iq1_s,
# iq1_m (MT_MIXES: others, as name:ftype; tests/cli_iquant_mixes_iq3.sh
# runs the IQ3 mixes this way) gives every tensor the type and the bytes
# llama.cpp's own quantizer (llama_model_quantize with ftype M and F as its
# imatrix) writes, and general.file_type M's (the types per tensor are those
# of llama_tensor_get_type; lib/quant/mix.c). The single types are
# tests/cli_iquant_lattice.sh. Skipped (exit 77) without llama_cpp or gguf-py.
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}
LQ="$MT_SOURCE_DIR/tests/llamacpp_quant.py"

if ! "$PY" -c 'import llama_cpp, gguf' >/dev/null 2>&1; then
    echo "skipped: llama_cpp or gguf not installed (see docs/llamacpp.md)"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-iqmix.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$MT_BIN" convert "$MT_MODEL_DIR" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1 || { echo "FAIL: convert"; exit 1; }
IM="$T/im.dat"
"$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --method rtn --type iq3_s --imatrix calib --calib-tokens 2048 \
    --imatrix-out "$IM" --threads 2 --quiet >/dev/null 2>"$T/err" || { echo "FAIL: --imatrix calib: $(cat "$T/err")"; exit 1; }

: "${MT_MIXES:=iq2_xxs:19 iq2_xs:20 iq2_s:28 iq2_m:29 iq1_s:24 iq1_m:31}"
for spec in $MT_MIXES; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" "imatrix=$IM" >"$T/q.log" 2>&1 ||
        { bad "$mix: llama.cpp quantize: $(tail -1 "$T/q.log")"; continue; }
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --mix "$mix" --method rtn --imatrix "$IM" --threads 2 --quiet \
        >/dev/null 2>"$T/err" || { bad "--mix $mix: $(cat "$T/err")"; continue; }
    out=$("$PY" "$LQ" same "$T/mt.gguf" "$T/ll.gguf") && echo "ok --mix $mix --imatrix: $out" || bad "--mix $mix --imatrix: $out"
    ftm=$("$PY" -c "from gguf import GGUFReader; print(int(GGUFReader('$T/mt.gguf').fields['general.file_type'].parts[-1][0]))")
    [ "$ftm" = "$ft" ] || bad "--mix $mix: general.file_type $ftm, want $ft"
    rm -f "$T/mt.gguf" "$T/ll.gguf"
done
if [ $fails -ne 0 ]; then echo "cli_iquant_mixes ($MT_MIXES): FAIL ($fails)"; exit 1; fi
echo "cli_iquant_mixes ($MT_MIXES): PASS"
