#!/usr/bin/env bash
# moetool quantize on encoder-decoder MoE models (Switch Transformers,
# NLLB-MoE), QMoE's setting: the experts of both stacks by RTN or GPTQ
# (calibrated on --calib-pairs) to q8_0 / q4_0 (AutoGPTQ layout) or to the
# per-row ternary grid coded with the qmoe code; everything else kept.
#   - small random checkpoints written by transformers itself
#     (save_pretrained: safetensors and pytorch_model.bin);
#   - the quantized directory loads and evaluates: q8_0 loss within 0.5 %
#     relative of the f32 loss (RTN and GPTQ), q4_0 within 5 %;
#   - independent check of the container: python dequantizes the AutoGPTQ
#     tensors itself (weight = scale * (code - zero - 1)), puts them into the
#     transformers model, and its loss equals moetool's eval of the quantized
#     directory (1e-4 relative);
#   - qmoe: inspect and quantize report < 1.0 bit per expert weight, the
#     dictionary and blobs are there, eval runs the coded experts;
#   - the .bin source gives the same output as the safetensors source;
#   - bad input: GPTQ without pairs, grids without a layout here, GGUF
#     output, --eval-only, text calibration, an already quantized model,
#     a broken pairs file: one line, nothing written.
# Needs python with torch + transformers (skip 77 without).
set -u
BIN=${MT_BIN:-build/cli/moetool}
SRC=${MT_SOURCE_DIR:-.}
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

"$PY" - "$T" <<'PYEOF' || { echo "FAIL: model generation"; exit 1; }
import json, os, sys, torch
from transformers import (SwitchTransformersConfig, SwitchTransformersForConditionalGeneration, NllbMoeConfig,
                          NllbMoeForConditionalGeneration)
out = sys.argv[1]
def init(m):
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("layer_norm.weight"): p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"): p.copy_(0.05 * torch.randn_like(p))
            elif "relative_attention_bias" in n or n == "shared.weight" or "embed_tokens" in n: p.copy_(torch.randn_like(p))
            else: p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
torch.manual_seed(7)
cfg = SwitchTransformersConfig(vocab_size=96, d_model=128, d_kv=16, num_heads=4, d_ff=256, num_layers=2,
        num_decoder_layers=2, num_sparse_encoder_layers=1, num_sparse_decoder_layers=2, num_experts=4,
        expert_capacity=64, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        dropout_rate=0.0, router_jitter_noise=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
m = SwitchTransformersForConditionalGeneration(cfg).eval()
init(m)
m.save_pretrained(os.path.join(out, "sw"))
m.save_pretrained(os.path.join(out, "sw-bin"), safe_serialization=False)
torch.manual_seed(8)
ncfg = NllbMoeConfig(vocab_size=96, d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128,
        decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4, num_experts=4,
        encoder_sparse_step=2, decoder_sparse_step=2, expert_capacity=64, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, moe_token_dropout=0.2,
        pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
n = NllbMoeForConditionalGeneration(ncfg).eval()
init(n)
n.save_pretrained(os.path.join(out, "nl"))
g = torch.Generator().manual_seed(3)
for name, k in (("calib", 48), ("test", 16)):
    with open(os.path.join(out, name + ".jsonl"), "w") as f:
        for _ in range(k):
            i = torch.randint(3, 96, (24,), generator=g).tolist() + [2]
            t = torch.randint(3, 96, (8,), generator=g).tolist() + [2]
            f.write(json.dumps({"input": i, "target": t}) + "\n")
PYEOF

S=$T/sw
loss() { "$BIN" eval "$1" --pairs "$2" --json --quiet --threads 2 >"$T/l.json" 2>"$T/l.err" && jget "$T/l.json" nll_mean; }
F32=$(loss "$S" "$T/test.jsonl") || { bad "eval of the f32 model"; cat "$T/l.err"; }
close() { # NAME GOT REF TOL
  "$PY" -c 'import sys; g,r,t=float(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]); d=abs(g-r)/r
print(f"{sys.argv[1]}: loss {g:.6f} vs f32 {r:.6f} (rel {d:.2g}, tolerance {t})"); sys.exit(not d <= t)' "$@"
}
# quantize + eval; CASE OPTIONS...
q() {
  local c=$1; shift
  if "$BIN" quantize "$S" -o "$T/q-$c" --quiet --json --threads 2 "$@" >"$T/q-$c.json" 2>"$T/q.err"; then ok
  else bad "quantize $c"; cat "$T/q.err"; return 1; fi
}
q q8rtn --type q8_0 --method rtn && { L=$(loss "$T/q-q8rtn" "$T/test.jsonl") && close q8_0-rtn "$L" "$F32" 0.005 && ok || bad "q8_0 rtn loss"; }
q q8 --bits 8 --calib-pairs "$T/calib.jsonl" && { L=$(loss "$T/q-q8" "$T/test.jsonl") && close q8_0-gptq "$L" "$F32" 0.005 && ok || bad "q8_0 gptq loss"; }
q q4 --bits 4 --calib-pairs "$T/calib.jsonl" && { L4=$(loss "$T/q-q4" "$T/test.jsonl") && close q4_0-gptq "$L4" "$F32" 0.05 && ok || bad "q4_0 gptq loss"; }
# --layerwise (QMoE's order): the first sparse layer (encoder layer 1) sees
# the original model either way, so its experts are the one-pass ones; every
# later sparse layer calibrates behind quantized layers, so its differ
q q4l --bits 4 --calib-pairs "$T/calib.jsonl" --layerwise && {
  L4L=$(loss "$T/q-q4l" "$T/test.jsonl") && close q4_0-gptq-layerwise "$L4L" "$F32" 0.05 && ok || bad "q4_0 layerwise loss"
  "$PY" - "$T/q-q4/model.safetensors" "$T/q-q4l/model.safetensors" <<'PYEOF' && ok || bad "--layerwise: first layer not as one-pass, or later layers unchanged"
import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
ks = [k for k in a if ".experts." in k and k.endswith(".qweight")]
first = [k for k in ks if k.startswith("encoder.block.1.")]
later = [k for k in ks if k.startswith("decoder.")]
assert first and later
assert all((a[k] == b[k]).all() for k in first), "first sparse layer differs"
assert all(not (a[k] == b[k]).all() for k in later), "a later layer is unchanged"
PYEOF
}
expect_err 1 "layerwise orders GPTQ" "$BIN" quantize "$S" -o "$T/b12" --bits 8 --method rtn --layerwise
q tq --bits ternary --group row --codec qmoe --calib-pairs "$T/calib.jsonl"
q tqrtn --bits ternary --group row --codec qmoe --method rtn --calib-pairs "$T/calib.jsonl"

# the AutoGPTQ tensors dequantized by python into transformers: the same loss
for c in q8 q4; do
  if "$PY" - "$S" "$T/q-$c" "$T/test.jsonl" "$BIN" <<'PYEOF'; then ok; else bad "$c: python's dequantized model vs moetool's eval"; fi
import json, subprocess, sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM
src, qd, pairs, binp = sys.argv[1:5]
m = AutoModelForSeq2SeqLM.from_pretrained(src).eval()
cfg = json.load(open(qd + "/config.json"))["quantization_config"]
assert cfg["quant_method"] == "gptq" and cfg["group_size"] == 32, cfg
b = cfg["bits"]; per = 32 // b; mask = (1 << b) - 1
st = load_file(qd + "/model.safetensors")
sd = m.state_dict()
n = 0
for k in list(st):
    if not k.endswith(".qweight"): continue
    base = k[:-8]
    qw, qz, sc, gi = st[k], st[base + ".qzeros"], st[base + ".scales"].float(), st[base + ".g_idx"]
    cols, rows = qw.shape[0] * per, qw.shape[1]
    code = torch.stack([(qw >> (b * j)) & mask for j in range(per)], 1).reshape(cols, rows)   # [i][r]
    zero = torch.stack([(qz >> (b * j)) & mask for j in range(per)], 2).reshape(qz.shape[0], rows) + 1  # [g][r]
    w = sc[gi.long()] * (code - zero[gi.long()]).float()                                       # [i][r]
    assert base + ".weight" in sd and base + ".weight" not in st
    sd[base + ".weight"].copy_(w.t())
    n += 1
assert n == 4 * 2 * 3, n   # 3 sparse layers x 4 experts x (wi, wo)
tot, cnt = 0.0, 0
with torch.no_grad():
    for line in open(pairs):
        p = json.loads(line)
        o = m(input_ids=torch.tensor([p["input"]]), labels=torch.tensor([p["target"]]), output_router_logits=False)
        tot += o.loss.item() * len(p["target"]); cnt += len(p["target"])
ref = tot / cnt
e = json.loads(subprocess.run([binp, "eval", qd, "--pairs", pairs, "--json", "--quiet"], capture_output=True,
                              check=True, text=True).stdout)["nll_mean"]
d = abs(e - ref) / ref
print(f"{qd.rsplit('/', 1)[1]}: moetool eval {e:.7f}, transformers with python-dequantized experts {ref:.7f} (rel {d:.2g})")
sys.exit(d > 1e-4)
PYEOF
done

# qmoe: < 1 bit per expert weight, reported by quantize and inspect; eval runs it
# (GPTQ: < 1.0 with its default range 1.4; RTN rounds onto QMoE's {min, 0, max}
# grid, fewer zeros: below the 2 bits of plain ternary codes)
for c in tq:1.0 tqrtn:2.0; do
  lim=${c#*:}; c=${c%:*}
  [ -f "$T/q-$c/model.safetensors" ] || continue
  b=$(jget "$T/q-$c.json" bits_per_expert_weight)
  "$BIN" inspect "$T/q-$c" --json >"$T/i.json" 2>"$T/i.err" || bad "inspect $c"
  ib=$(jget "$T/i.json" bits_per_expert_weight)
  if [ "$(jget "$T/i.json" quantization)" = qmoe ] && "$PY" -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2])
print(f"qmoe bits per expert weight: quantize {a}, inspect {b}"); sys.exit(not (0 < a < float(sys.argv[3]) and abs(a-b) < 1e-3))' "$b" "$ib" "$lim"
  then ok; else bad "$c: bits per expert weight"; fi
  "$BIN" inspect "$T/q-$c" | grep -q "experts:      qmoe code" && ok || bad "$c: inspect text"
  grep -q '"quant_method": "qmoe"' "$T/q-$c/config.json" && ok || bad "$c: quantization_config"
  if L=$(loss "$T/q-$c" "$T/test.jsonl") && "$PY" -c 'import math,sys; v=float(sys.argv[1]); print("qmoe loss", v); sys.exit(not math.isfinite(v))' "$L"
  then ok; else bad "$c: eval of the qmoe model"; cat "$T/l.err"; fi
done
# GPTQ minimises each matrix's output error on the calibration rows: its mean
# relative error is below RTN's on the same grid (RTN with --calib-pairs measures it)
if "$PY" -c 'import json,sys; g=json.load(open(sys.argv[1]))["mean_rel_output_err"]; r=json.load(open(sys.argv[2]))["mean_rel_output_err"]
print(f"ternary mean relative output error: gptq {g:.5f}, rtn {r:.5f}"); sys.exit(not 0 < g < r)' "$T/q-tq.json" "$T/q-tqrtn.json"
then ok; else bad "ternary gptq vs rtn output error"; fi

# the .bin source quantizes to the same model
if "$BIN" quantize "$S-bin" -o "$T/q-bin" --quiet --bits 8 --calib-pairs "$T/calib.jsonl" >/dev/null 2>"$T/q.err" &&
   "$PY" - "$T/q-bin/model.safetensors" "$T/q-q8/model.safetensors" <<'PYEOF'; then ok; else bad ".bin source differs"; cat "$T/q.err"; fi
import sys, torch
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
same = sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
print(f".bin and safetensors sources: {len(a)} tensors, identical: {same}")
sys.exit(not same)
PYEOF

# NLLB-MoE: the same verb (top-2 experts, biases kept)
NF=$(loss "$T/nl" "$T/test.jsonl") || bad "eval nllb"
if "$BIN" quantize "$T/nl" -o "$T/q-nl" --quiet --bits 8 --calib-pairs "$T/calib.jsonl" >/dev/null 2>"$T/q.err" &&
   L=$(loss "$T/q-nl" "$T/test.jsonl") && close nllb-q8_0 "$L" "$NF" 0.005; then ok; else bad "nllb q8_0"; cat "$T/q.err"; fi

# bad input
expect_err 1 "give --calib-pairs FILE" "$BIN" quantize "$S" -o "$T/b1" --bits 8
expect_err 1 "applies to GPTQ" "$BIN" quantize "$S" -o "$T/b11" --bits ternary --group row --codec qmoe --method rtn --ternary-range 2
expect_err 1 "--bits 8 or 4 with groups of 32" "$BIN" quantize "$S" -o "$T/b2" --bits 3 --method rtn
expect_err 1 "--group row --codec qmoe" "$BIN" quantize "$S" -o "$T/b3" --bits ternary --group 256 --method rtn
expect_err 1 "llama.cpp's GGUF has no such architecture" "$BIN" quantize "$S" -o "$T/b4.gguf" --format gguf --type q8_0 --method rtn
expect_err 1 "experts only" "$BIN" quantize "$S" -o "$T/b5" --bits 8 --attn-bits 8 --method rtn
expect_err 2 "then measure the output with eval --pairs" "$BIN" quantize "$S" --eval-only --bits 8
echo "text" >"$T/cal.txt"
expect_err 2 "calibrates on --calib-pairs FILE" "$BIN" quantize "$S" -o "$T/b6" --bits 8 --calib "$T/cal.txt"
expect_err 1 "already quantized" "$BIN" quantize "$T/q-q8" -o "$T/b7" --type q8_0 --method rtn
printf '{"input": "a text", "target": [3, 1]}\n' >"$T/text.jsonl"
expect_err 1 "text.jsonl:1: \"input\" is text" "$BIN" quantize "$S" -o "$T/b8" --bits 8 --calib-pairs "$T/text.jsonl"
printf '{"input": [3, 1], "target": [3, 999]}\n' >"$T/oov.jsonl"
expect_err 1 "oov.jsonl:1: target token 1 is 999, outside the vocabulary of 96" "$BIN" quantize "$S" -o "$T/b9" --bits 8 --calib-pairs "$T/oov.jsonl"
expect_err 2 "--calib-pairs is for encoder-decoder models" "$BIN" quantize "$SRC/models/kjv-mixtral-15m" -o "$T/b10" --calib-pairs "$T/calib.jsonl"
for o in b1 b2 b3 b4.gguf b5 b6 b7 b8 b9 b10 b11 b12; do [ -e "$T/$o" ] && bad "$o written by a refused run" || ok; done
# a damaged blob: one line naming the tensor
cp -r "$T/q-tq" "$T/dam"
"$PY" - "$T/dam/model.safetensors" <<'PYEOF'
import sys
from safetensors.torch import load_file, save_file
d = load_file(sys.argv[1])
k = "decoder.block.1.layer.2.mlp.experts.expert_2.wo.weight.qmoe"
d[k] = d[k][:60].clone()
save_file(d, sys.argv[1], metadata={"format": "pt"})
PYEOF
expect_err 1 "expert_2.wo.weight.qmoe" "$BIN" eval "$T/dam" --pairs "$T/test.jsonl" --quiet

echo "cli_seq2seq_quant: $passes passed, $fails failed"
[ "$fails" = 0 ]
