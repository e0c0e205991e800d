#!/usr/bin/env bash
# moetool's importance matrix and i-quant writers, checked by llama.cpp:
#   imatrix  `quantize --imatrix calib --imatrix-out F` computes llama.cpp's
#            importance matrix from the calibration text and writes it as a
#            llama-imatrix .dat; `--imatrix F` reads it back to the same output
#   iq4      `quantize --method rtn --type/--attn-type/--embed-type iq4_xs|iq4_nl
#            --imatrix F`: every tensor byte for byte what llama.cpp's own
#            quantizer (llama_model_quantize, pure, F passed as its imatrix)
#            writes; the imatrix changes the bytes (it is used)
#   kquant   the same for q2_k..q6_k with the importance matrix (llama.cpp's
#            weighted K-quant search, not the reference one)
#   mixes    `quantize --mix iq4_xs|iq4_nl --method rtn --imatrix F`: llama.cpp's
#            IQ4_XS / IQ4_NL mixes, every tensor's type and bytes, file_type
#   convert  `convert --dtype iq4_xs|iq4_nl`: llama.cpp's bytes without an imatrix
#   gptq     `quantize --type iq4_xs` under the default method computes the
#            imatrix itself: the same bytes as with --imatrix F
#   run      llama.cpp runs moetool's iq4_xs file and its perplexity equals
#            moetool's eval of it (llama.cpp protocol, ctx 256, 8 windows)
#   errors   a truncated / wrong-sized imatrix: exit 1 naming the file, no output
# Skipped (exit 77) without llama_cpp or gguf-py (tools/install_llamacpp_python.sh).
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}
LQ="$MT_SOURCE_DIR/tests/llamacpp_quant.py"
TEXT="$MT_MODEL_DIR/data/test.txt"
RTOL=0.0025

if ! "$PY" -c 'import llama_cpp, gguf' >/dev/null 2>&1; then
    echo "skipped: llama_cpp or gguf not installed (see docs/llamacpp.md)"
    exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/mt-iqwrite.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fails=0
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# same A.gguf B.gguf: every tensor of B in A with the same type and bytes
same() { "$PY" "$LQ" same "$1" "$2"; }

"$MT_BIN" convert "$MT_MODEL_DIR" -o "$T/f32.gguf" --to gguf --dtype f32 >/dev/null 2>&1 || { echo "FAIL: convert"; exit 1; }

all() { echo --type "$1" --attn-type "$1" --embed-type "$1"; }
IM="$T/im.dat"
"$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --method rtn $(all iq4_xs) --imatrix calib --calib-tokens 2048 \
    --imatrix-out "$IM" --threads 2 --quiet >/dev/null 2>"$T/err" || { echo "FAIL: --imatrix calib: $(cat "$T/err")"; exit 1; }
n=$("$PY" -c "import sys; sys.path.insert(0, '$MT_SOURCE_DIR/tests'); from llamacpp_quant import read_imatrix; print(len(read_imatrix('$IM')))")
[ "$n" -gt 0 ] && echo "ok imatrix: $n entries" || bad "imatrix file has no entries"

# type : llama.h ftype whose base type it is
for spec in iq4_xs:30 iq4_nl:25 q2_k:10 q3_k:11 q4_k:14 q5_k:16 q6_k:18; do
    IFS=: read -r ty ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" pure "imatrix=$IM" >"$T/q.log" 2>&1 ||
        { bad "$ty: llama.cpp quantize: $(tail -1 "$T/q.log")"; continue; }
    grep -q "importance matrix" "$T/q.log" || bad "$ty: llama.cpp did not take the imatrix"
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --method rtn $(all $ty) --imatrix "$IM" --threads 2 --quiet \
        >/dev/null 2>"$T/err" || { bad "--type $ty --imatrix: $(cat "$T/err")"; continue; }
    out=$(same "$T/mt.gguf" "$T/ll.gguf") && echo "ok quantize rtn $ty --imatrix: $out" || bad "quantize rtn $ty --imatrix: $out"
    # without the imatrix the bytes differ (so it was used), and equal llama.cpp's without one
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll0.gguf" "$ft" pure >/dev/null 2>&1 || { bad "$ty: llama.cpp quantize"; continue; }
    same "$T/mt.gguf" "$T/ll0.gguf" >/dev/null && bad "$ty: the imatrix changed nothing"
    case $ty in iq4_*)
        if "$MT_BIN" convert "$T/f32.gguf" -o "$T/cv.gguf" --to gguf --dtype "$ty" >/dev/null 2>"$T/err"; then
            out=$(same "$T/cv.gguf" "$T/ll0.gguf") && echo "ok convert --dtype $ty: $out" || bad "convert --dtype $ty: $out"
        else
            bad "convert --dtype $ty: $(cat "$T/err")"
        fi
        if [ $ty = iq4_xs ]; then
            # the default method (gptq) computes the imatrix from the same calibration tokens
            "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/g.gguf" $(all $ty) --calib-tokens 2048 --threads 2 --quiet \
                >/dev/null 2>"$T/err" || bad "gptq --type $ty: $(cat "$T/err")"
            out=$(same "$T/g.gguf" "$T/ll.gguf") && echo "ok quantize --type $ty (imatrix from --calib): $out" ||
                bad "quantize --type $ty (imatrix from --calib): $out"
            ref=$("$PY" "$LQ" ppl "$T/mt.gguf" "$TEXT" 256 8) || bad "$ty: llama.cpp ppl: $ref"
            got=$("$MT_BIN" eval "$T/mt.gguf" --text "$TEXT" --protocol llamacpp --ctx 256 --max-windows 8 --threads 2 \
                  --json --quiet | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
            "$PY" -c "import sys; a,b=$ref,$got; sys.exit(0 if abs(a-b) <= $RTOL*a else 1)" 2>/dev/null &&
                echo "ok $ty runs: ppl moetool $got llama.cpp $ref" || bad "$ty: ppl moetool $got llama.cpp $ref"
        fi ;;
    esac
    rm -f "$T/mt.gguf" "$T/ll.gguf" "$T/ll0.gguf" "$T/cv.gguf" "$T/g.gguf"
done

# llama.cpp's IQ4 mixes with the importance matrix: every tensor's type and bytes
for spec in iq4_xs:30 iq4_nl:25; do
    IFS=: read -r mix ft <<<"$spec"
    "$PY" "$LQ" quantize "$T/f32.gguf" "$T/ll.gguf" "$ft" "imatrix=$IM" >/dev/null 2>&1 || { bad "$mix: llama.cpp quantize"; continue; }
    "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/mt.gguf" --mix "$mix" --method rtn --imatrix "$IM" --threads 2 --quiet \
        >/dev/null 2>"$T/err" || { bad "--mix $mix: $(cat "$T/err")"; continue; }
    out=$(same "$T/mt.gguf" "$T/ll.gguf") && echo "ok --mix $mix --imatrix: $out" || bad "--mix $mix --imatrix: $out"
    ftm=$("$PY" -c "from gguf import GGUFReader; print(int(GGUFReader('$T/mt.gguf').fields['general.file_type'].parts[-1][0]))")
    [ "$ftm" = "$ft" ] || bad "--mix $mix: general.file_type $ftm, want $ft"
    rm -f "$T/mt.gguf" "$T/ll.gguf"
done

expect() { # CODE PATTERN CMD...
    local code=$1 pat=$2; shift 2
    "$@" >/dev/null 2>"$T/err"; local rc=$?
    [ $rc = "$code" ] && grep -q -- "$pat" "$T/err" || bad "$* -> exit $rc, want $code /$pat/: $(cat "$T/err")"
    [ -e "$T/u.gguf" ] && { bad "$*: left output"; rm -rf "$T/u.gguf"; }
}
head -c 1000 "$IM" >"$T/trunc.dat"
expect 1 "trunc.dat: entry" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --type iq4_xs --imatrix "$T/trunc.dat"
"$PY" - "$IM" "$T/short.dat" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
n, = struct.unpack_from("<i", d, 0)
ln, = struct.unpack_from("<i", d, 4)
off = 8 + ln
ncall, nval = struct.unpack_from("<ii", d, off)
# the first entry one value short
out = struct.pack("<i", 1) + d[4:off] + struct.pack("<ii", ncall, nval - 1) + d[off + 8:off + 8 + 4 * (nval - 1)]
open(sys.argv[2], "wb").write(out)
PY
expect 1 "short.dat: 'blk.0.attn_q.weight' has 255 values" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn \
    --type iq4_xs --attn-type iq4_xs --imatrix "$T/short.dat"
expect 1 "missing.dat" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --type iq4_xs --imatrix "$T/missing.dat"
expect 1 "q4_1 is not written with an importance matrix" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn \
    --type q4_1 --imatrix "$IM"

# --imatrix-out follows the output policy: an existing file only with --force
# (kept byte for byte otherwise), never an input
printf 'keep me' >"$T/mine.dat"
expect 2 "give --force" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --type iq4_xs --imatrix "$IM" \
    --imatrix-out "$T/mine.dat"
[ "$(cat "$T/mine.dat")" = "keep me" ] || bad "--imatrix-out replaced an existing file without --force"
expect 2 "would replace the input" "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$T/u.gguf" --method rtn --type iq4_xs \
    --imatrix "$IM" --imatrix-out "$IM" --force
if [ $fails -ne 0 ]; then echo "cli_iquant_write: FAIL ($fails)"; exit 1; fi
echo "cli_iquant_write: PASS"
