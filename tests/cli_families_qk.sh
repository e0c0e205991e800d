#!/usr/bin/env bash
# Qwen3-MoE and OLMoE through every verb. Their checkpoints are written in
# the exact HF layout by tests/make_qk_checkpoint.py (numpy; transformers
# 4.40 has neither family) and their reference outputs computed by
# tests/ref_qk_moe.py (float64 numpy from the published modeling code,
# independent of moetool); logits and routing against that reference are
# test_families' part. Here:
#   - convert HF -> GGUF (qwen3moe / olmoe): llama.cpp (llama-cpp-python, f32
#     KV cache: its default f16 cache alone moves QK-normed logits by ~1e-2)
#     loads it, its logits match the reference within 1e-3, its greedy tokens
#     equal `moetool generate`'s, its perplexity moetool's within 1e-3;
#     GGUF -> HF gives back the family;
#   - quantize (GPTQ Q4_0 experts, Q8_0 attention): llama.cpp runs it and
#     gives moetool's greedy tokens;
#   - merge 8 -> 6: the reference recomputes the merged checkpoint; llama.cpp
#     runs its GGUF against that reference and moetool's greedy tokens;
#   - bad input: one line naming the file / key / tensor, exit 1, no output.
# Needs python3 with numpy (skip 77 without); the llama.cpp checks need
# llama_cpp (reported as skipped without it).
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
LPY=${PYTHON:-python3}
if ! "$LPY" -c 'import numpy' >/dev/null 2>&1; then echo "skipped: no $LPY with numpy"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect_err() { # PATTERN CMD...: exit 1, one error line containing PATTERN
  local pat=$1; shift
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != 1 ]; then bad "exit $got (want 1): $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if ! grep -q -- "$pat" "$T/err"; then bad "stderr lacks '$pat': $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if [ "$(wc -l < "$T/err")" -gt 1 ]; then bad "more than one error line: $*"; head -5 "$T/err"; return 1; fi
  ok; return 0
}
no_output() { if compgen -G "$1*" >/dev/null; then bad "output left behind: $(ls -d "$1"*)"; else ok; fi; }
jget() { "$LPY" -c 'import json,sys; d=json.load(sys.stdin); print(d[sys.argv[1]])' "$1"; }
have_llama=0
"$LPY" -c 'import llama_cpp' >/dev/null 2>&1 && have_llama=1
[ $have_llama = 1 ] || echo "skipped: llama.cpp checks (llama_cpp not importable by $LPY)"
head -c 20000 "$MODEL/data/test.txt" > "$T/text.txt"
CAL=(--calib "$MODEL/data/train.txt" --calib-tokens 2048 --threads 2)
prompt="And Paul said"
llama() { # GGUF REFERENCE-DIR GEN.json [extra llamacpp_check args]
  local g=$1 r=$2 e=$3; shift 3
  timeout 300 "$LPY" "$SRC/tests/llamacpp_check.py" "$g" --reference "$r/reference.json" --kv-f32 --expect "$e" \
    --prompt "$prompt" "$@" | grep -E "^(PASS|FAIL) (load|logits|greedy|ppl)|^FAIL"
  return "${PIPESTATUS[0]}"
}

QK=$T/qk
"$LPY" "$SRC/tests/make_qk_checkpoint.py" "$QK" --model-dir "$MODEL" >/dev/null &&
  "$LPY" "$SRC/tests/ref_qk_moe.py" "$QK/qwen3moe" "$QK/olmoe" || { echo "FAIL: generator / reference"; exit 1; }
for fam in qwen3moe olmoe; do
  D=$QK/$fam
  echo "== $fam"
  "$BIN" inspect "$D" | grep -q "architecture: $fam" && ok || bad "$fam: inspect"
  "$BIN" convert "$D" -o "$T/$fam.gguf" --dtype f32 >/dev/null 2>&1 && ok || bad "$fam: convert HF -> GGUF"
  "$BIN" generate "$T/$fam.gguf" -p "$prompt" -n 16 --threads 2 --json > "$T/$fam.gen.json" && ok || bad "$fam: generate"
  p=$("$BIN" eval "$T/$fam.gguf" --text "$T/text.txt" --protocol llamacpp --ctx 256 --json 2>/dev/null | jget ppl) \
    && ok || bad "$fam: eval GGUF"
  if [ $have_llama = 1 ]; then
    echo "llama.cpp on moetool's $fam GGUF (moetool ppl $p, llama.cpp protocol):"
    llama "$T/$fam.gguf" "$D" "$T/$fam.gen.json" --logits-tol 1e-3 --ppl "$T/text.txt" --ppl-ctx 256 \
      --ppl-expect "$p" --ppl-rtol 1e-3 && ok || bad "llama.cpp check of the $fam GGUF"
  fi
  "$BIN" convert "$T/$fam.gguf" -o "$T/$fam-back" --dtype f32 >/dev/null 2>&1 && ok || bad "$fam: convert GGUF -> HF"
  [ "$("$LPY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model_type"])' "$T/$fam-back/config.json")" = \
    "$("$LPY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model_type"])' "$D/config.json")" ] && ok \
    || bad "$fam: GGUF -> HF model_type"
  "$BIN" quantize "$D" -o "$T/$fam-q4.gguf" --method gptq --bits 4 --attn-bits 8 "${CAL[@]}" >/dev/null 2>"$T/err" \
    && ok || bad "$fam: quantize: $(cat "$T/err")"
  if [ $have_llama = 1 ]; then
    "$BIN" generate "$T/$fam-q4.gguf" -p "$prompt" -n 16 --threads 2 --json > "$T/$fam-q4.gen.json"
    echo "llama.cpp on moetool's GPTQ q4 $fam:"
    llama "$T/$fam-q4.gguf" "$D" "$T/$fam-q4.gen.json" && ok || bad "llama.cpp check of the quantized $fam"
  fi
  "$BIN" merge "$D" -o "$T/$fam-m6" --experts 6 "${CAL[@]}" >/dev/null 2>"$T/err" && ok || bad "$fam: merge: $(cat "$T/err")"
  cp "$D/tokens.txt" "$D/bundled-reference.json" "$T/$fam-m6/"
  "$LPY" "$SRC/tests/ref_qk_moe.py" "$T/$fam-m6" && ok || bad "$fam: reference on the merged checkpoint"
  "$BIN" convert "$T/$fam-m6" -o "$T/$fam-m6.gguf" --dtype f32 >/dev/null 2>&1 && ok || bad "$fam: convert merged"
  if [ $have_llama = 1 ]; then
    "$BIN" generate "$T/$fam-m6.gguf" -p "$prompt" -n 16 --threads 2 --json > "$T/$fam-m6.gen.json"
    echo "llama.cpp on the merged $fam against the reference of the merged checkpoint:"
    llama "$T/$fam-m6.gguf" "$T/$fam-m6" "$T/$fam-m6.gen.json" --logits-tol 1e-3 && ok \
      || bad "llama.cpp check of the merged $fam"
  fi
done

# ---- bad input
edit() { "$LPY" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); exec(sys.argv[2]); json.dump(d, open(p,'w'))" "$T/b/config.json" "$1"; }
mk() { rm -rf "$T/b"; cp -r "$QK/$1" "$T/b"; }
mk olmoe; edit 'd["clip_qkv"]=8.0'
expect_err "config.json: clip_qkv = a value is not supported for olmoe" "$BIN" convert "$T/b" -o "$T/bad-out.gguf"
no_output "$T/bad-out.gguf"
mk olmoe; edit 'd["num_key_value_heads"]=2'
expect_err "tensor model.layers.0.self_attn.k_proj.weight has shape \[64, 64\], expected \[32, 64\]" "$BIN" inspect "$T/b"
mk olmoe; rm -f "$T/b/model.safetensors"
"$LPY" - "$QK/olmoe/model.safetensors" "$T/b/model.safetensors" <<'PYEOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack_from("<Q", b)[0]; h = json.loads(b[8:8 + n])
drop = "model.layers.1.self_attn.k_norm.weight"
keep = {k: v for k, v in h.items() if k != drop}
data, off, hdr = [], 0, {}
for k, v in keep.items():
    if k == "__metadata__": hdr[k] = v; continue
    s, e = v["data_offsets"]; data.append(b[8 + n + s:8 + n + e])
    hdr[k] = dict(v, data_offsets=[off, off + e - s]); off += e - s
j = json.dumps(hdr).encode(); j += b" " * (-len(j) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(j)) + j + b"".join(data))
PYEOF
expect_err "tensor model.layers.1.self_attn.k_norm.weight is missing (expected shape \[64\])" \
  "$BIN" eval "$T/b" --text "$T/text.txt"
mk qwen3moe; edit 'd["head_dim"]=16'
expect_err "tensor model.layers.0.self_attn.q_proj.weight has shape \[128, 64\], expected \[64, 64\]" \
  "$BIN" eval "$T/b" --text "$T/text.txt"
mk qwen3moe; edit 'd["rope_scaling"]={"rope_type":"yarn","factor":4.0}'
expect_err "config.json: rope_scaling yarn is not supported" "$BIN" generate "$T/b" -p x -n 1
mk qwen3moe; edit 'd["use_sliding_window"]=True'
expect_err "config.json: use_sliding_window = true is not supported for qwen3moe" "$BIN" merge "$T/b" -o "$T/bad-out" \
  --experts 6 "${CAL[@]}"
no_output "$T/bad-out"
mk qwen3moe; edit 'd["attention_bias"]=True'
expect_err "attention_bias = true is not supported for qwen3moe" "$BIN" quantize "$T/b" -o "$T/bad-out.gguf" --method rtn
no_output "$T/bad-out.gguf"

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
