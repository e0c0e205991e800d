#!/usr/bin/env bash
# Checks GGUF files written by `moetool convert` with llama.cpp's own Python
# reader (the `gguf` package, GGUFReader) against the Hugging Face source:
# every tensor byte (Q/K permutation, merged experts, F32 norms/router,
# q8_0 rounding through gguf.quants) and the metadata llama.cpp needs.
# Skipped (exit 0, "skipped: ..." line) when python3 lacks gguf or numpy.
#
# Environment (set by ctest): MT_BIN, MT_MODEL_DIR, MT_SOURCE_DIR.
set -u

: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}

if ! "$PY" -c 'import gguf, numpy' >/dev/null 2>&1; then
    echo "skipped: python3 cannot import gguf and numpy (pip install gguf numpy)"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mt-gguf-indep.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

fail=0
for dt in keep bf16 f16 f32 q8_0; do
    flags=()
    [ "$dt" != keep ] && flags=(--dtype "$dt")
    out="$tmp/model-$dt.gguf"
    if ! "$MT_BIN" convert "$MT_MODEL_DIR" -o "$out" --to gguf "${flags[@]}" 2>"$tmp/err"; then
        echo "FAIL: moetool convert --dtype $dt: $(cat "$tmp/err")"
        fail=1
        continue
    fi
    echo "== dtype $dt"
    "$PY" "$MT_SOURCE_DIR/tests/check_gguf_independent.py" "$MT_MODEL_DIR" "$out" --dtype "$dt" || fail=1
done
exit $fail
