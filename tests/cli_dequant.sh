#!/usr/bin/env bash
# Block decoders (the type table's to_f32) bit for bit against gguf-py's numpy
# dequantizers on random blocks of every type moetool reads, extreme scales
# included (tests/dequant_check.py). Skipped (exit 77) without gguf-py.
set -u
: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_BUILD_DIR:=$MT_SOURCE_DIR/build}"
PY=${PYTHON:-python3}
exec "$PY" "$MT_SOURCE_DIR/tests/dequant_check.py" "$MT_BUILD_DIR/tests/dequant_raw"
