#!/usr/bin/env bash
# Encoder-decoder MoE (Switch Transformers, NLLB-MoE) against transformers
# itself:
#   - tests/make_switch.py and tests/make_nllb.py write two random
#     checkpoints each with <Class>.save_pretrained, as safetensors and as
#     pytorch_model.bin, and transformers' outputs;
#   - tests/s2s_dump + tests/check_seq2seq.py: logits within 1e-4, routing of
#     every token (capacity drops included), loss within 1e-5 relative,
#     greedy ids equal, for both file formats;
#   - moetool eval --pairs / generate --ids / inspect on the same models:
#     eval's nll_mean equals transformers' loss (1e-5 rel), generate's ids
#     equal transformers' generate;
#   - convert --to hf of the pytorch_model.bin: transformers loads the
#     safetensors output and gives the reference logits exactly; a bf16 copy
#     evaluates within 2 %;
#   - bad input: a missing tensor, a misshapen tensor, text pairs or
#     tokenize / generate -p without a tokenizer (cli_tokenize_unigram.sh
#     has one), and the verbs that run decoder-only models only (convert to
#     GGUF, merge, distill; quantize calibrates on pairs, not text:
#     cli_seq2seq_quant.sh): one line naming the file, exit 1, nothing
#     written.
# Needs python with torch + transformers (skip 77 without).
set -u
BIN=${MT_BIN:-build/cli/moetool}
SRC=${MT_SOURCE_DIR:-.}
DUMP=${MT_BUILD_DIR:-build}/tests/s2s_dump
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch + transformers"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect_err() { # CODE PATTERN CMD...: exit CODE, one error line containing PATTERN
  local code=$1 pat=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != "$code" ]; then bad "exit $got (want $code): $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if ! grep -q -- "$pat" "$T/err"; then bad "stderr lacks '$pat': $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if [ "$(wc -l < "$T/err")" -gt 1 ]; then bad "more than one error line: $*"; head -5 "$T/err"; return 1; fi
  ok; return 0
}
jget() { "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d[sys.argv[2]])' "$@"; }
ids() { "$PY" -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))[sys.argv[2]])))' "$@"; }

for g in make_switch make_nllb; do
  "$PY" "$SRC/tests/$g.py" "$T/m" >"$T/gen.out" 2>"$T/gen.err" || {
    rc=$?; [ $rc = 77 ] && { echo "skipped: $(tail -1 "$T/gen.out")"; exit 77; }
    echo "FAIL: $g.py exit $rc"; tail -5 "$T/gen.err"; exit 1; }
done

# tied, capacity: the capacity drops decoder tokens in the teacher-forced pass
for c in tied untied top2 capacity; do
  R=$T/m/$c.ref.json
  extra=; case $c in tied|capacity) extra=--capacity-binds ;; esac
  for v in $c $c-bin; do
    if "$DUMP" "$T/m/$v" "$(ids "$R" input_ids)" "$(ids "$R" labels)" >"$T/d.json" 2>"$T/d.err" &&
       "$PY" "$SRC/tests/check_seq2seq.py" "$R" "$T/d.json" $extra >"$T/chk" 2>&1; then
      ok; echo "$v: $(cat "$T/chk")"
    else
      bad "$v: runtime vs transformers"; cat "$T/d.err" "$T/chk" 2>/dev/null | head -8
    fi
  done
  # eval --pairs: loss of the target given the input
  if "$BIN" eval "$T/m/$c-bin" --pairs "$T/m/$c.pairs.jsonl" --json --quiet --threads 2 >"$T/e.json" 2>"$T/e.err" &&
     "$PY" -c 'import json,sys; e=json.load(open(sys.argv[1])); r=json.load(open(sys.argv[2]))["loss"]
g=e["nll_mean"]; rel=abs(g-r)/r; print(f"eval nll_mean {g:.8f} vs transformers {r:.8f} (rel {rel:.2g})"); sys.exit(rel > 1e-5)' \
       "$T/e.json" "$R"; then ok; cp "$T/e.json" "$T/e-$c.json"; else bad "$c: eval --pairs"; cat "$T/e.err"; fi
  # generate --ids: greedy ids of transformers' generate
  if "$BIN" generate "$T/m/$c" --ids "$(ids "$R" input_ids)" -n 10 --json --threads 2 >"$T/g.json" 2>"$T/g.err" &&
     "$PY" -c 'import json,sys; g=json.load(open(sys.argv[1]))["ids"]; r=json.load(open(sys.argv[2]))["greedy"]
print("generate", g, "transformers", r); sys.exit(g != r)' "$T/g.json" "$R"; then ok; else bad "$c: generate --ids"; cat "$T/g.err"; fi
done

# read from an archive in place (tar.gz of the pytorch_model.bin directory)
tar -C "$T/m" -czf "$T/untied-bin.tar.gz" untied-bin
if "$BIN" eval "$T/untied-bin.tar.gz" --pairs "$T/m/untied.pairs.jsonl" --json --quiet >"$T/ea.json" 2>"$T/ea.err" &&
   "$PY" -c 'import json,sys; a=json.load(open(sys.argv[1]))["nll_sum"]; b=json.load(open(sys.argv[2]))["nll_sum"]
print("archive eval nll_sum", a, "directory", b); sys.exit(a != b)' "$T/ea.json" "$T/e-untied.json"; then ok
else bad "eval of a .tar.gz"; cat "$T/ea.err"; fi

# inspect names the family, for both file formats
for v in tied:switch_transformers:1 untied-bin:switch_transformers:1 top2:nllb-moe:2 capacity-bin:nllb-moe:2; do
  IFS=: read -r d fam k <<<"$v"
  if "$BIN" inspect "$T/m/$d" --json >"$T/i.json" 2>"$T/i.err" && [ "$(jget "$T/i.json" arch)" = "$fam" ] &&
     [ "$(jget "$T/i.json" top_k)" = "$k" ] && [ "$(jget "$T/i.json" encoder_decoder)" = True ]; then ok
  else bad "inspect $d"; cat "$T/i.err"; fi
done
"$BIN" inspect "$T/m/tied" | grep -q "family:       switch_transformers" && ok || bad "inspect text names the family"

# convert .bin -> safetensors (and to bf16): transformers loads the output
# and computes the reference logits; moetool's loss on it is unchanged
for c in tied untied top2 capacity; do
  R=$T/m/$c.ref.json
  if "$BIN" convert "$T/m/$c-bin" -o "$T/conv-$c" --to hf --quiet 2>"$T/c.err" &&
     "$PY" - "$T/conv-$c" "$R" <<'PYEOF'
import json, sys, torch
from transformers import AutoModelForSeq2SeqLM
m = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1]).eval()
r = json.load(open(sys.argv[2]))
with torch.no_grad():
    o = m(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]), output_router_logits=False)
d = (o.logits[0] - torch.tensor(r["logits"])).abs().max().item()
print(f"convert .bin -> safetensors: transformers logits differ by {d:.3g}")
sys.exit(d != 0)
PYEOF
  then ok; else bad "$c: convert .bin -> hf"; cat "$T/c.err"; fi
done
if "$BIN" convert "$T/m/untied" -o "$T/conv-bf16" --to hf --dtype bf16 --quiet 2>"$T/c.err" &&
   "$BIN" eval "$T/conv-bf16" --pairs "$T/m/untied.pairs.jsonl" --json --quiet >"$T/e16.json" &&
   "$PY" -c 'import json,sys; e=json.load(open(sys.argv[1]))["nll_mean"]; r=json.load(open(sys.argv[2]))["loss"]
print(f"bf16 copy: loss {e:.6f} vs f32 {r:.6f}"); sys.exit(abs(e-r)/r > 0.02 or e == r)' "$T/e16.json" "$T/m/untied.ref.json" &&
   grep -q '"torch_dtype": "bfloat16"' "$T/conv-bf16/config.json"; then ok; else bad "convert --dtype bf16"; cat "$T/c.err"; fi

# bad input
M=$T/m/untied
cp -r "$M" "$T/miss"
"$PY" - "$T/miss/model.safetensors" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
d = load_file(sys.argv[1])
del d["decoder.block.1.layer.2.mlp.experts.expert_5.wo.weight"]
save_file(d, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_err 1 "miss: tensor decoder.block.1.layer.2.mlp.experts.expert_5.wo.weight is missing (expected shape \[32, 48\])" \
  "$BIN" eval "$T/miss" --pairs "$M.pairs.jsonl" --quiet
expect_err 1 "is missing" "$BIN" generate "$T/miss" --ids 3,4,1
expect_err 1 "is missing" "$BIN" inspect "$T/miss"
cp -r "$M" "$T/shape"
"$PY" - "$T/shape/model.safetensors" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
d = load_file(sys.argv[1])
d["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = d["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][:5].clone()
save_file(d, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_err 1 "relative_attention_bias.weight has shape \[5, 4\], expected \[8, 4\]" \
  "$BIN" eval "$T/shape" --pairs "$M.pairs.jsonl" --quiet
printf '{"input": "a text", "target": [3, 1]}\n' >"$T/text.jsonl"
expect_err 1 "text.jsonl:1: \"input\" is text" "$BIN" eval "$M" --pairs "$T/text.jsonl" --quiet
printf '{"input": [3, 1], "target": [3, 99]}\n' >"$T/oov.jsonl"
expect_err 1 "oov.jsonl:1: target token 1 is 99, outside the vocabulary of 64" "$BIN" eval "$M" --pairs "$T/oov.jsonl" --quiet
expect_err 2 "encoder-decoder model: score it with --pairs" "$BIN" eval "$M"
expect_err 1 "no tokenizer.model, spiece.model, sentencepiece.bpe.model or tokenizer.json beside the checkpoint" "$BIN" generate "$M" -p hello
expect_err 2 "encoder-decoder model: give its input with -p TEXT or --ids" "$BIN" generate "$M"
echo "some calibration text for the refusals" >"$T/cal.txt"
expect_err 1 "config.json: switch_transformers is an encoder-decoder model" "$BIN" convert "$M" -o "$T/o.gguf"
expect_err 1 "config.json: switch_transformers is an encoder-decoder model" "$BIN" convert "$M-bin" -o "$T/o2.gguf"
expect_err 1 "tensor decoder.block.1.layer.2.mlp.experts.expert_5.wo.weight is missing" "$BIN" convert "$T/miss" -o "$T/o3" --to hf
expect_err 2 "is an encoder-decoder model: it calibrates on --calib-pairs FILE" "$BIN" quantize "$M" -o "$T/q.gguf" --calib "$T/cal.txt"
expect_err 1 "config.json: switch_transformers is an encoder-decoder model" "$BIN" merge "$M" -o "$T/mg" --experts 4 --calib "$T/cal.txt"
expect_err 1 "config.json: switch_transformers is an encoder-decoder model" "$BIN" distill "$M" -o "$T/ds" --student dense --data "$T/cal.txt"
expect_err 1 "no tokenizer.model, spiece.model, sentencepiece.bpe.model or tokenizer.json beside the checkpoint" "$BIN" tokenize "$M" -p hello
expect_err 2 "is an encoder-decoder model: it calibrates on --calib-pairs FILE" "$BIN" quantize "$T/m/top2" -o "$T/q2.gguf" --calib "$T/cal.txt"
expect_err 1 "config.json: nllb-moe is an encoder-decoder model" "$BIN" convert "$T/m/top2" -o "$T/o4.gguf"
cp -r "$T/m/top2" "$T/nmiss"
"$PY" - "$T/nmiss/model.safetensors" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
d = load_file(sys.argv[1])
del d["model.encoder.layers.3.ffn.experts.expert_2.fc1.bias"]
save_file(d, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_err 1 "nmiss: tensor model.encoder.layers.3.ffn.experts.expert_2.fc1.bias is missing (expected shape \[48\])" \
  "$BIN" eval "$T/nmiss" --pairs "$T/m/top2.pairs.jsonl" --quiet
for o in o.gguf o2.gguf o3 q.gguf mg ds q2.gguf o4.gguf; do [ -e "$T/$o" ] && bad "$o written by a refused verb" || ok; done

echo "cli_seq2seq: $passes passed, $fails failed"
[ "$fails" = 0 ]
