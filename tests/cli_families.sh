#!/usr/bin/env bash
# MoE families other than Mixtral through every verb, checked by
# implementations that share no code with moetool:
#   - Qwen2-MoE checkpoints written by transformers itself
#     (tests/make_qwen2moe.py; logits/routing are test_families' part);
#   - convert HF -> GGUF: llama.cpp (llama-cpp-python) loads the qwen2moe
#     file, its logits match transformers' within 1e-3, its greedy tokens
#     equal `moetool generate`'s, its perplexity moetool's within 1e-3;
#   - quantize (GPTQ, Q4_0 experts and shared expert, Q8_0 attention): llama.cpp
#     loads it and gives moetool's greedy tokens; HF output evaluates;
#   - merge 8 -> 6: transformers loads the merged checkpoint and computes
#     moetool's perplexity (1e-4); the shared expert is copied byte for byte;
#   - bad input per family: one line naming the file / tensor, exit 1, no output.
# Needs python with torch + transformers (skip 77 without); the llama.cpp
# checks need llama_cpp in `python3` (reported as skipped without it).
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers, tokenizers' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch + transformers"; exit 77; fi
LPY=${PYTHON:-python3}
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

"$PY" "$SRC/tests/make_qwen2moe.py" "$T/q" --model-dir "$MODEL" >/dev/null 2>"$T/gen.err" || {
  rc=$?; [ $rc = 77 ] && { echo "skipped: $(cat "$T/gen.err" | tail -1)"; exit 77; }
  echo "FAIL: generator: $(tail -3 "$T/gen.err")"; exit 1; }
Q=$T/q/moe
head -c 20000 "$MODEL/data/test.txt" > "$T/text.txt"
CAL=(--calib "$MODEL/data/train.txt" --calib-tokens 2048 --threads 2)
prompt="And Paul said"

# ---- inspect / eval / generate on the HF checkpoint
"$BIN" inspect "$Q" > "$T/insp" && grep -q "qwen2moe" "$T/insp" && grep -q "shared expert ffn 64" "$T/insp" && ok \
  || bad "inspect: $(head -5 "$T/insp")"
"$BIN" inspect "$T/q/sparse" | grep -q "dense-MLP layers 0 2" && ok || bad "inspect sparse: dense layers not shown"
ppl_hf=$("$BIN" eval "$Q" --text "$T/text.txt" --json 2>/dev/null | jget ppl) && ok || bad "eval HF"

# ---- HF -> GGUF, checked by llama.cpp
have_llama=0
"$LPY" -c 'import llama_cpp' >/dev/null 2>&1 && have_llama=1
"$BIN" convert "$Q" -o "$T/q.gguf" --dtype f32 >/dev/null 2>&1 && ok || bad "convert HF -> GGUF"
"$BIN" generate "$T/q.gguf" -p "$prompt" -n 16 --threads 2 --json > "$T/gen.json" && ok || bad "generate GGUF"
ppl_lc=$("$BIN" eval "$T/q.gguf" --text "$T/text.txt" --protocol llamacpp --ctx 256 --json 2>/dev/null | jget ppl) \
  && ok || bad "eval GGUF"
if [ $have_llama = 1 ]; then
  echo "== llama.cpp on moetool's qwen2moe GGUF (moetool ppl $ppl_lc, llama.cpp protocol)"
  timeout 300 "$LPY" "$SRC/tests/llamacpp_check.py" "$T/q.gguf" --reference "$Q/reference.json" --kv-f32 --expect "$T/gen.json" \
    --prompt "$prompt" --logits-tol 1e-3 --ppl "$T/text.txt" --ppl-ctx 256 --ppl-expect "$ppl_lc" --ppl-rtol 1e-3 \
    && ok || bad "llama.cpp check of the qwen2moe GGUF"
else
  echo "skipped: llama.cpp checks (llama_cpp not importable by $LPY)"
fi
# GGUF -> HF: transformers reads it and computes moetool's perplexity
"$BIN" convert "$T/q.gguf" -o "$T/back" >/dev/null 2>&1 && ok || bad "convert GGUF -> HF"
ppl_back=$("$BIN" eval "$T/back" --text "$MODEL/data/test.txt" --ctx 128 --max-windows 8 --json 2>/dev/null | jget ppl)
"$PY" "$SRC/tests/transformers_check.py" "$T/back" --tokenizer "$MODEL/tokenizer.json" --text "$MODEL/data/test.txt" \
  --ctx 128 --windows 8 --expect-ppl "$ppl_back" --rtol 1e-4 --reference-logits "$Q/reference.json" 2>/dev/null \
  && ok || bad "transformers on GGUF -> HF"

# ---- quantize
"$BIN" quantize "$Q" -o "$T/q4.gguf" --method gptq --bits 4 --attn-bits 8 "${CAL[@]}" >/dev/null 2>"$T/err" && ok \
  || bad "quantize GGUF: $(cat "$T/err")"
"$LPY" -c "
import gguf,sys; r=gguf.GGUFReader(sys.argv[1]); t={x.name: x.tensor_type.name for x in r.tensors}
want={'blk.0.ffn_gate_shexp.weight':'Q4_0','blk.0.ffn_down_shexp.weight':'Q4_0','blk.0.ffn_gate_exps.weight':'Q4_0',
      'blk.0.attn_q.weight':'Q8_0','blk.0.ffn_gate_inp_shexp.weight':'F32','blk.0.ffn_gate_inp.weight':'F32','blk.0.attn_q.bias':'F32'}
bad=[(k,t.get(k),v) for k,v in want.items() if t.get(k)!=v]
print('quantized types:', 'as expected' if not bad else bad); sys.exit(1 if bad else 0)" "$T/q4.gguf" && ok \
  || bad "quantized tensor types"
q4=$("$BIN" eval "$T/q4.gguf" --text "$T/text.txt" --json 2>/dev/null | jget ppl)
"$LPY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'quantize q4: ppl {b:.3f} vs {a:.3f}'); sys.exit(0 if b < 1.05*a else 1)" \
  "$ppl_hf" "$q4" && ok || bad "q4 perplexity"
if [ $have_llama = 1 ]; then
  "$BIN" generate "$T/q4.gguf" -p "$prompt" -n 16 --threads 2 --json > "$T/gen4.json"
  timeout 300 "$LPY" "$SRC/tests/llamacpp_check.py" "$T/q4.gguf" --reference "$Q/reference.json" --expect "$T/gen4.json" \
    --prompt "$prompt" && ok || bad "llama.cpp check of the quantized qwen2moe GGUF"
fi
"$BIN" quantize "$Q" -o "$T/qh" --format hf --method rtn --bits 8 --threads 2 >/dev/null 2>"$T/err" && ok \
  || bad "quantize HF: $(cat "$T/err")"
grep -q '"mlp.shared_expert.down_proj"' "$T/qh/config.json" && ok || bad "quantization_config lacks the shared expert"
q8=$("$BIN" eval "$T/qh" --text "$T/text.txt" --json 2>/dev/null | jget ppl)
"$LPY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'quantize hf q8: ppl {b:.3f} vs {a:.3f}'); sys.exit(0 if abs(b/a-1) < 0.01 else 1)" \
  "$ppl_hf" "$q8" && ok || bad "q8 HF perplexity"

# ---- merge: 8 -> 6 experts; the shared expert is kept as it is
"$BIN" merge "$Q" -o "$T/m6" --experts 6 "${CAL[@]}" >/dev/null 2>"$T/err" && ok || bad "merge: $(cat "$T/err")"
ppl_m=$("$BIN" eval "$T/m6" --text "$MODEL/data/test.txt" --ctx 128 --max-windows 8 --json 2>/dev/null | jget ppl)
"$PY" "$SRC/tests/transformers_check.py" "$T/m6" --tokenizer "$MODEL/tokenizer.json" --text "$MODEL/data/test.txt" \
  --ctx 128 --windows 8 --expect-ppl "$ppl_m" --rtol 1e-4 2>/dev/null && ok || bad "transformers on the merged model"
"$LPY" - "$Q/model.safetensors" "$T/m6/model.safetensors" <<'PYEOF' && ok || bad "merge changed the shared expert"
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack_from("<Q", b)[0]; h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
names = [k for k in a if "shared_expert" in k]
same = [k for k in names if b.get(k) == a[k]]
print(f"merge: {len(same)}/{len(names)} shared-expert tensors byte-identical, experts {sum('experts.' in k and k.endswith('gate_proj.weight') for k in b)} per model")
sys.exit(0 if names and len(same) == len(names) else 1)
PYEOF
expect_err "dense MLP" "$BIN" merge "$T/q/sparse" -o "$T/ms" --experts 3 "${CAL[@]}"; no_output "$T/ms"

# ---- bad input: config keys outside the family, tensors missing / misshapen
mk() { rm -rf "$T/b"; cp -r "$Q" "$T/b"; }
edit() { "$LPY" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); exec(sys.argv[2]); json.dump(d, open(p,'w'))" "$T/b/config.json" "$1"; }
mk; edit 'd["rope_scaling"]={"type":"yarn","factor":4.0}'
expect_err "config.json: rope_scaling yarn is not supported" "$BIN" convert "$T/b" -o "$T/o.gguf"; no_output "$T/o.gguf"
mk; edit 'd["hidden_act"]="gelu"'
expect_err "hidden_act gelu is not supported for qwen2moe" "$BIN" eval "$T/b" --text "$T/text.txt"
mk; edit 'd["use_sliding_window"]=True'
expect_err "use_sliding_window = true is not supported" "$BIN" inspect "$T/b"
mk; edit 'd["shared_expert_intermediate_size"]=32'
expect_err "tensor 'model.layers.0.mlp.shared_expert.gate_proj.weight' has shape (64,64), the config implies (32,64)" \
  "$BIN" convert "$T/b" -o "$T/o.gguf"; no_output "$T/o.gguf"
expect_err "tensor model.layers.0.mlp.shared_expert.gate_proj.weight has shape \[64, 64\], expected \[32, 64\]" \
  "$BIN" eval "$T/b" --text "$T/text.txt"
mk; edit 'd["num_hidden_layers"]=3'
expect_err "b: missing tensor 'model.layers.2.input_layernorm.weight' (expected shape \[64\])" \
  "$BIN" quantize "$T/b" -o "$T/o.gguf" --method rtn; no_output "$T/o.gguf"
expect_err "b: tensor model.layers.2.input_layernorm.weight is missing (expected shape \[64\])" "$BIN" inspect "$T/b"
mk; edit 'del d["shared_expert_intermediate_size"]'
expect_err 'missing required key "shared_expert_intermediate_size"' "$BIN" generate "$T/b" -p x -n 1
mk; edit 'd["model_type"]="deepseek_v2"'
expect_err "DeepSeek-V2 multi-head latent attention (MLA) is not supported" "$BIN" inspect "$T/b"
mk; edit 'd["model_type"]="deepseek_v3"'
expect_err "DeepSeek-V3 multi-head latent attention (MLA) is not supported" "$BIN" convert "$T/b" -o "$T/o.gguf"
no_output "$T/o.gguf"
expect_err "dense MLP" "$BIN" convert "$T/q/sparse" -o "$T/o.gguf"; no_output "$T/o.gguf"

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
