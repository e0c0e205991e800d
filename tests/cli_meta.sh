#!/usr/bin/env bash
# GGUF metadata as llama.cpp's converter writes it, read back with gguf-py
# (an independent reader): chat_template kept HF -> GGUF -> HF,
# general.type/basename/size_label/quantized_by, and
# llama.attention.key_length/value_length = head_dim of config.json.
# size_label is recomputed from the tensors with gguf-py's own size_label.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
if ! python3 -c "import gguf" 2>/dev/null; then echo "skipped: python gguf package not importable"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# a copy of the model whose tokenizer_config.json has a chat template
# (newlines, quotes, a non-ASCII character)
mkdir "$T/chatmodel"
cp -r "$MODEL"/. "$T/chatmodel/"
python3 - "$T/chatmodel/tokenizer_config.json" "$T/template.txt" <<'PY'
import json, os, sys
p = sys.argv[1]
d = json.load(open(p)) if os.path.exists(p) else {}
d["chat_template"] = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m[\"content\"] }}</s>\n"
                      "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}\u00e9\u2014")
json.dump(d, open(p, "w"))
open(sys.argv[2], "w", encoding="utf-8").write(d["chat_template"])
PY

"$BIN" convert "$T/chatmodel" -o "$T/bf16.gguf" 2>"$T/err" || bad "convert hf -> gguf: $(cat "$T/err")"
"$BIN" convert "$T/chatmodel" -o "$T/q8.gguf" --dtype q8_0 2>"$T/err" || bad "convert hf -> gguf q8_0: $(cat "$T/err")"
"$BIN" convert "$T/bf16.gguf" -o "$T/back" 2>"$T/err" || bad "convert gguf -> hf: $(cat "$T/err")"

# check FILE QUANTIZED: prints one "ok ..." / "bad ..." line per check
check() {
  python3 - "$1" "$2" "$T/chatmodel/config.json" "$T/template.txt" <<'PY'
import json, sys, gguf
path, quantized, cfg_path, tmpl_path = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
r = gguf.GGUFReader(path)
def val(k):
    f = r.fields.get(k)
    return None if f is None else f.contents()
def check(what, got, want):
    print(("ok " if got == want else "bad ") + f"{path}: {what} = {got!r}, expected {want!r}")
cfg = json.load(open(cfg_path))
head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
check("llama.attention.key_length", val("llama.attention.key_length"), head_dim)
check("llama.attention.value_length", val("llama.attention.value_length"), head_dim)
check("general.type", val("general.type"), "model")
check("general.basename", val("general.basename"), "chatmodel")
check("general.quantized_by", val("general.quantized_by"), "moetool" if quantized else None)
check("tokenizer.chat_template", val("tokenizer.chat_template"), open(tmpl_path, encoding="utf-8").read())
# GGUFWriter.get_total_parameter_count over the tensors as stored; the
# reader's shapes are in ggml order (experts last)
total = shared = expert = expert_sum = n_exp = 0
for t in r.tensors:
    n, shape = int(t.n_elements), [int(x) for x in t.shape]
    if "_exps." in t.name and len(shape) >= 3:
        ne = shape[1 if ".bias" in t.name else 2]
        expert += n // ne; expert_sum += ne; n_exp += 1
    else:
        shared += n
    total += n
want = gguf.size_label(total, shared, expert, expert_sum // n_exp if n_exp else 0)
check("general.size_label", val("general.size_label"), want)
PY
}
for f in bf16:0 q8:1; do
  out=$(check "$T/${f%%:*}.gguf" "${f#*:}" 2>&1)
  while IFS= read -r line; do
    case $line in ok\ *) ok ;; *) bad "$line" ;; esac
  done <<<"$out"
done

# GGUF -> HF: the template back in tokenizer_config.json, byte for byte
python3 - "$T/back/tokenizer_config.json" "$T/template.txt" <<'PY' && ok || bad "chat_template not kept GGUF -> HF"
import json, sys
got = json.load(open(sys.argv[1])).get("chat_template")
sys.exit(0 if got == open(sys.argv[2], encoding="utf-8").read() else 1)
PY

# quantize of a GGUF marks its output
if "$BIN" quantize "$T/bf16.gguf" -o "$T/quant.gguf" --method rtn --bits 8 --group 32 >/dev/null 2>"$T/err"; then
  python3 -c "import gguf, sys; f = gguf.GGUFReader(sys.argv[1]).fields.get('general.quantized_by'); sys.exit(0 if f is not None and f.contents() == 'moetool' else 1)" \
    "$T/quant.gguf" && ok || bad "quantize output lacks general.quantized_by"
  # what quantize did: moetool.provenance, a JSON string
  python3 - "$T/quant.gguf" "$T/bf16.gguf" <<'PY' && ok || bad "quantize output's moetool.provenance"
import gguf, json, sys
p = json.loads(gguf.GGUFReader(sys.argv[1]).fields["moetool.provenance"].contents())
assert p["verb"] == "quantize" and p["source"] == sys.argv[2], p
assert p["options"]["method"] == "rtn" and p["options"]["experts"] == "q8_0", p
assert p["command"].startswith("moetool quantize ") and "--bits 8" in p["command"], p
PY
else
  bad "quantize: $(cat "$T/err")"
fi

# GGUF -> HF keeps each tensor's type where safetensors holds it (bf16 stays
# bf16) and writes a block-quantized tensor as f32 with exactly the values
# gguf-py's own dequantizer gives; norms take the weights' float type.
if "$BIN" quantize "$MODEL" -o "$T/q4.gguf" --method rtn --bits 4 --quiet >/dev/null 2>"$T/err" &&
   "$BIN" convert "$T/q4.gguf" -o "$T/q4hf" --quiet >/dev/null 2>>"$T/err"; then
  python3 - "$T/q4.gguf" "$T/q4hf" <<'PY' && ok || bad "GGUF -> HF types/values"
import gguf, json, os, struct, sys
import numpy as np
from gguf.quants import dequantize
r = gguf.GGUFReader(sys.argv[1])
g = {t.name: t for t in r.tensors}
st = {}
for f in sorted(os.listdir(sys.argv[2])):
    if f.endswith(".safetensors"):
        b = open(os.path.join(sys.argv[2], f), "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k != "__metadata__":
                a, e = v["data_offsets"]
                st[k] = (v["dtype"], v["shape"], b[8 + n + a:8 + n + e])
def arr(dt, shape, raw):
    if dt == "F32": return np.frombuffer(raw, "<f4").reshape(shape)
    if dt == "BF16": return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    raise SystemExit("unexpected dtype " + dt)
errs = []
def want_types(hf, gg):
    t = g[gg]
    dt, shape, raw = st[hf]
    return t, dt, shape, raw
# attention: bf16 in the GGUF, bf16 in HF, same bits
t, dt, shape, raw = want_types("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight")
if t.tensor_type != gguf.GGMLQuantizationType.BF16 or dt != "BF16" or bytes(t.data.tobytes()) != raw:
    errs.append("attn_v: %s -> %s, bytes equal %s" % (t.tensor_type.name, dt, bytes(t.data.tobytes()) == raw))
# an expert: Q4_0 in the GGUF, F32 in HF equal to gguf-py's dequantization
t = g["blk.1.ffn_down_exps.weight"]
deq = dequantize(t.data, t.tensor_type)
dt, shape, raw = st["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
if t.tensor_type != gguf.GGMLQuantizationType.Q4_0 or dt != "F32" or not np.array_equal(arr(dt, shape, raw), deq[3]):
    errs.append("expert 3 w2 of layer 1: %s -> %s, values differ" % (t.tensor_type.name, dt))
# a norm: F32 in the GGUF (convention), bf16 (the weights' float type) in HF
dt, shape, raw = st["model.layers.0.input_layernorm.weight"]
if dt != "BF16":
    errs.append("input_layernorm: %s, want BF16" % dt)
if errs:
    print("\n".join(errs)); sys.exit(1)
PY
else
  bad "quantize/convert q4: $(cat "$T/err")"
fi

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
