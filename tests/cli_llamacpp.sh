#!/usr/bin/env bash
# Checks that GGUF files written by `moetool convert` load and run in
# llama.cpp itself (through the llama-cpp-python bindings), not only in
# moetool's own reader: tokenizer, logits against the PyTorch reference,
# greedy continuation against `moetool generate`, perplexity under
# llama.cpp's protocol. Skipped (exit 77) when the bindings are not
# installed; tools/install_llamacpp_python.sh installs them.
#
# Environment (set by ctest): MT_BIN (moetool), MT_MODEL_DIR (bundled model),
# MT_SOURCE_DIR (source tree). MT_LLAMACPP_PPL=0 skips the perplexity runs.
set -u

: "${MT_SOURCE_DIR:=$(cd "$(dirname "$0")/.." && pwd)}"
: "${MT_MODEL_DIR:=$MT_SOURCE_DIR/models/kjv-mixtral-15m}"
: "${MT_BIN:=moetool}"
PY=${PYTHON:-python3}
CHECK="$MT_SOURCE_DIR/tests/llamacpp_check.py"

if ! "$PY" -c 'import llama_cpp' >/dev/null 2>&1; then
    echo "skipped: llama_cpp not installed (see docs/llamacpp.md)"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mt-llamacpp.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

fail=0
prompt="And Paul said"

# check NAME DTYPE-FLAGS LOGITS-TOL PPL-RTOL
#   converts the bundled model with the given flags, asks moetool for a greedy
#   continuation of $prompt from the GGUF, and lets llama.cpp check it all.
#   PPL-RTOL "-" skips the perplexity run for that file.
check() {
    local name=$1 flags=$2 ltol=$3 prtol=$4
    local gguf="$tmp/$name.gguf" gen="$tmp/$name.gen.json"
    echo "== $name: moetool convert --to gguf $flags"
    # shellcheck disable=SC2086
    if ! "$MT_BIN" convert "$MT_MODEL_DIR" -o "$gguf" --to gguf $flags; then
        echo "FAIL $name: moetool convert failed"; fail=1; return
    fi
    if ! "$MT_BIN" generate "$gguf" -p "$prompt" -n 16 --threads 2 --json > "$gen"; then
        echo "FAIL $name: moetool generate failed"; fail=1; return
    fi
    local ppl_args=()
    if [ "${MT_LLAMACPP_PPL:-1}" != 0 ] && [ "$prtol" != - ]; then
        # 53.10: PyTorch reference under llama.cpp's protocol at ctx 256;
        # llama.cpp gives 53.1015 on its own f32 conversion of this model.
        ppl_args=(--ppl "$MT_MODEL_DIR/data/test.txt" --ppl-ctx 256
                  --ppl-expect 53.10 --ppl-rtol "$prtol")
    fi
    timeout 600 "$PY" "$CHECK" "$gguf" --reference "$MT_MODEL_DIR/reference.json" \
        --expect "$gen" --prompt "$prompt" --logits-tol "$ltol" "${ppl_args[@]}"
    local rc=$?
    if [ $rc -eq 77 ]; then echo "skipped: llama_cpp not importable"; exit 77; fi
    # 134: llama.cpp aborted on the file (e.g. a norm weight not in F32)
    [ $rc -eq 0 ] || { echo "FAIL $name (llamacpp_check.py exit $rc)"; fail=1; }
}

# Logit tolerances are about 3x what llama.cpp shows on these weights
# against the PyTorch reference (docs/llamacpp.md): f32 0.0034, f16 0.0027,
# bf16 0.017 (llama.cpp rounds activations to bf16 in its bf16 matmul),
# q8_0 0.078 (activations quantized to 8 bits too). A Q/K permutation
# missing from the writer gives 8.8. Perplexity (53.1015 / 53.1025 / 53.1055
# measured) is run on f32 and q8_0 only, to keep the test short.
check f32  "--dtype f32"  0.01 0.002
check f16  "--dtype f16"  0.01 -
check bf16 ""             0.05 -
check q8_0 "--dtype q8_0" 0.25 0.005
# q4_0 of every matrix: llama.cpp shows 0.85 against the f32 reference.
check q4_0 "--dtype q4_0" 2.5 -

# moetool quantize's ternary TQ1_0 (RTN experts): llama.cpp loads it and
# gives the same greedy continuation as moetool (no logit bound: ternary).
q="$tmp/tq1_0.gguf"
echo "== tq1_0: moetool quantize --method rtn --bits ternary --group 256 --ternary-type tq1_0"
if "$MT_BIN" quantize "$MT_MODEL_DIR" -o "$q" --method rtn --bits ternary --group 256 --ternary-type tq1_0 \
        --threads 2 >/dev/null &&
   "$MT_BIN" generate "$q" -p "$prompt" -n 16 --threads 2 --json > "$tmp/tq1.gen.json"; then
    timeout 600 "$PY" "$CHECK" "$q" --reference "$MT_MODEL_DIR/reference.json" --expect "$tmp/tq1.gen.json" \
        --prompt "$prompt" || { echo "FAIL tq1_0"; fail=1; }
else
    echo "FAIL tq1_0: moetool quantize/generate failed"; fail=1
fi

if [ $fail -ne 0 ]; then echo "cli_llamacpp: FAIL"; exit 1; fi
echo "cli_llamacpp: PASS"
