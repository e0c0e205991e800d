#!/usr/bin/env bash
# `moetool quantize --format hf`: AutoGPTQ-layout int4/int8 directories and
# qmoe-coded directories that `moetool eval` runs directly.
# - int4: the HF directory evaluates to the same perplexity as the same
#   quantization written as GGUF, and its tensors unpacked by an independent
#   AutoGPTQ reader equal the GGUF's weights dequantized by llama.cpp's gguf-py
#   (tests/check_autogptq.py; skipped without gguf/numpy).
# - qmoe: the coded directory evaluates to the in-memory coded model's
#   perplexity (--eval-only), reports < 1 bit per expert weight, and a blob
#   with a codeword outside the dictionary is refused by name; the default
#   writes QMoE's f16 row pairs (scale type 1), --qmoe-scales u8log one
#   8-bit log code per row (type 2, checked blob by blob in Python);
#   --target-bpw B with --codec qmoe: at most B bits per expert weight as
#   eval counts the directory, a range per matrix from the candidates.
# - bad options / sources: one-line error, non-zero exit, nothing written.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect_err() { # CODE PATTERN CMD...
  local want=$1 pat=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != "$want" ]; then bad "exit $got (want $want): $*"; head -5 "$T/err"; return; fi
  if ! grep -q -- "$pat" "$T/err"; then bad "stderr lacks '$pat': $*"; head -5 "$T/err"; return; fi
  if ls -d "$T"/bad* >/dev/null 2>&1; then bad "output left behind: $*"; ls "$T"; return; fi
  ok
}
ppl() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ppl"])' "$1"; }
W=(--max-windows 12 --threads 2 --json)

# int4, AutoGPTQ layout vs GGUF Q4_0 of the same quantization.
"$BIN" quantize "$MODEL" -o "$T/q4hf" --format hf --method rtn --bits 4 --threads 2 >/dev/null 2>"$T/err" || { bad "hf int4 failed"; cat "$T/err"; }
"$BIN" quantize "$MODEL" -o "$T/q4.gguf" --method rtn --bits 4 --threads 2 >/dev/null 2>"$T/err" || { bad "gguf q4_0 failed"; cat "$T/err"; }
"$BIN" eval "$T/q4hf" "${W[@]}" >"$T/a.json" 2>"$T/err" || { bad "eval hf int4 failed"; cat "$T/err"; }
"$BIN" eval "$T/q4.gguf" "${W[@]}" >"$T/b.json" 2>"$T/err" || { bad "eval gguf q4_0 failed"; cat "$T/err"; }
# The same weights, but GGUF q4_0 runs llama.cpp's integer path (activations
# rounded to q8_0 blocks, prefill as decode) while the AutoGPTQ layout runs
# in f32: measured 4e-6 apart; RTN vs GPTQ int4 of this model differ by 1.3e-4.
a=$(ppl "$T/a.json"); b=$(ppl "$T/b.json")
python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 2e-5*b else 1)" "$a" "$b" \
  && ok || bad "hf int4 ppl $a != gguf q4_0 ppl $b"
grep -q 'experts.0.w1.weight"' "$T/q4hf/model.safetensors" && bad "bf16 expert weight left in the int4 output" || ok
if python3 -c 'import gguf, numpy' >/dev/null 2>&1; then
  python3 "$SRC/tests/check_autogptq.py" "$T/q4hf" "$T/q4.gguf" 4 && ok || bad "AutoGPTQ layout check (int4)"
else
  echo "skipped: AutoGPTQ layout check (python3 cannot import gguf and numpy)"
fi
# What loaders read: experts-only output excludes attention by both
# modules_in_block_to_quantize and a negative `dynamic` rule (GPTQModel, vLLM:
# re.match on the module name) and has no quantize_config.json (AutoGPTQ would
# read every block linear as quantized); with --attn-bits at the same width
# every block linear is quantized and quantize_config.json is written.
"$BIN" quantize "$MODEL" -o "$T/q4att" --format hf --method rtn --bits 4 --attn-bits 4 --threads 2 >/dev/null 2>"$T/err" \
  || { bad "hf int4 with --attn-bits 4 failed"; cat "$T/err"; }
python3 - "$T/q4hf" "$T/q4att" <<'PY' && ok || bad "loader metadata of the GPTQ outputs"
import json, os, re, sys
only, full = sys.argv[1], sys.argv[2]
q = json.load(open(only + "/config.json"))["quantization_config"]
(pat, val), = q["dynamic"].items()
assert pat.startswith("-:") and val == {}, q["dynamic"]
rx = pat[2:]
assert re.match(rx, "model.layers.3.self_attn.q_proj") and re.match(rx, "model.layers.0.self_attn.o_proj")
assert not re.match(rx, "model.layers.0.block_sparse_moe.experts.7.w2")
assert not any("self_attn" in m for g in q["modules_in_block_to_quantize"] for m in g)
assert not os.path.exists(only + "/quantize_config.json")
qf = json.load(open(full + "/config.json"))["quantization_config"]
assert "dynamic" not in qf and any("self_attn.q_proj" in m for g in qf["modules_in_block_to_quantize"] for m in g)
qc = json.load(open(full + "/quantize_config.json"))
assert qc["bits"] == 4 and qc["group_size"] == 32 and qc["sym"] and not qc["desc_act"], qc
assert qc["checkpoint_format"] == "gptq" and qc["model_file_base_name"] == "model", qc
PY
rm -rf "$T/q4att"
rm -rf "$T/q4hf" "$T/q4.gguf"

# int8: the same weights in two other encodings the loader must read
# exactly: codes and zero points all one lower (zero 127: no Q8_0 repack,
# unpacked to f32) and checkpoint_format gptq_v2 (zero points stored as is).
"$BIN" quantize "$MODEL" -o "$T/q8hf" --format hf --method rtn --bits 8 --threads 2 >/dev/null 2>"$T/err" || { bad "hf int8 failed"; cat "$T/err"; }
"$BIN" eval "$T/q8hf" "${W[@]}" >"$T/e8.json" 2>"$T/err" || { bad "eval hf int8 failed"; cat "$T/err"; }
for variant in shift v2; do
  rm -rf "$T/q8$variant" && cp -r "$T/q8hf" "$T/q8$variant"
  python3 - "$T/q8$variant" "$variant" <<'PY' || bad "could not rewrite the int8 directory ($variant)"
import json, struct, sys
import numpy as np
d, variant = sys.argv[1], sys.argv[2]
p = d + "/model.safetensors"
b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
for name, info in h.items():
    if name == "__metadata__":
        continue
    s, e = info["data_offsets"]
    o = 8 + n
    if variant == "shift" and (name.endswith(".qweight") or name.endswith(".qzeros")):
        w = np.frombuffer(bytes(b[o + s:o + e]), dtype=np.uint8).copy()
        assert w.min() >= 1, name
        b[o + s:o + e] = (w - 1).tobytes()      # every packed 8-bit code and zero point minus one
    if variant == "v2" and name.endswith(".qzeros"):
        w = np.frombuffer(bytes(b[o + s:o + e]), dtype=np.uint8).copy()
        b[o + s:o + e] = (w + 1).tobytes()      # gptq_v2 stores the zero point itself
open(p, "wb").write(b)
if variant == "v2":
    c = json.load(open(d + "/config.json"))
    c["quantization_config"]["checkpoint_format"] = "gptq_v2"
    json.dump(c, open(d + "/config.json", "w"), indent=2)
PY
  "$BIN" eval "$T/q8$variant" "${W[@]}" >"$T/e8$variant.json" 2>"$T/err" || { bad "eval int8 $variant failed"; cat "$T/err"; }
  a=$(ppl "$T/e8.json"); b=$(ppl "$T/e8$variant.json")
  # v2 repacks to the same Q8_0 (exact); shift runs the f32 kernel on the same weights
  python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 2e-4*b else 1)" "$a" "$b" \
    && ok || bad "int8 $variant ppl $b != $a"
  rm -rf "$T/q8$variant"
done
rm -rf "$T/q8hf"

# qmoe: coded directory == coded model in memory.
"$BIN" quantize "$MODEL" -o "$T/qm" --format hf --method rtn --bits ternary --group row --codec qmoe --qmoe-scales f16 --json --threads 2 >"$T/q.json" 2>"$T/err" || { bad "hf qmoe failed"; cat "$T/err"; }
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["bits_per_expert_weight"] < 1.0 and j["expert_type"] == "qmoe" else 1)' "$T/q.json" \
  && ok || bad "qmoe output not below 1 bit per expert weight: $(cat "$T/q.json")"
grep -q '"quant_method": "qmoe"' "$T/qm/config.json" && ok || bad "config.json lacks quant_method qmoe"
python3 - "$T/qm/config.json" "$T/qm/README.md" <<'PY' && ok || bad "qmoe output: provenance / model card"
import json, sys
m = json.load(open(sys.argv[1]))["moetool"]
assert m["verb"] == "quantize" and m["options"]["codec"] == "qmoe" and m["options"]["method"] == "rtn", m
card = open(sys.argv[2]).read()
assert "| codec | qmoe |" in card and "moetool runs this checkpoint" in card, card
PY
expect_err 1 "is quantized" "$BIN" merge "$T/qm" -o "$T/bad9" --experts 6 --calib "$MODEL/data/train.txt"
# inspect counts the coded weights as the parameters they stand for
"$BIN" inspect "$T/qm" --json >"$T/i1.json" 2>"$T/err" && "$BIN" inspect "$MODEL" --json >"$T/i0.json" 2>>"$T/err" || { bad "inspect failed"; cat "$T/err"; }
python3 -c 'import json,sys; a,b=(json.load(open(f))["params"] for f in sys.argv[1:]); sys.exit(0 if a == b else 1)' "$T/i1.json" "$T/i0.json" \
  && ok || bad "inspect of the qmoe directory counts other parameters than the original"
"$BIN" eval "$T/qm" "${W[@]}" >"$T/c.json" 2>"$T/err" || { bad "eval qmoe dir failed"; cat "$T/err"; }
"$BIN" quantize "$MODEL" --eval-only --method rtn --bits ternary --group row --codec qmoe --qmoe-scales f16 --text "$MODEL/data/test.txt" --json --threads 2 >"$T/d.json" 2>"$T/err" || { bad "eval-only qmoe failed"; cat "$T/err"; }
# --eval-only scores all of test.txt; compare on the same windows instead:
"$BIN" eval "$T/qm" --threads 2 --json >"$T/c_all.json" 2>/dev/null
c=$(ppl "$T/c_all.json"); d=$(ppl "$T/d.json")
python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 1e-4*b else 1)" "$c" "$d" \
  && ok || bad "qmoe dir ppl $c != in-memory coded ppl $d"
# qmoe with 8-bit log-coded row scales (the default, --qmoe-scales u8log):
# the directory above (--qmoe-scales f16) keeps QMoE's f16 pairs (scale type
# 1, reserved field 0, as every earlier file); u8log blobs are scale type 2
# with one byte per row,
# the levels recomputed here independently (f16(base * 2^-(255-k)/16)) are
# symmetric and what the directory runs: coded directory == in-memory model.
"$BIN" quantize "$MODEL" -o "$T/qm8" --format hf --method rtn --bits ternary --group row --codec qmoe --json --threads 2 >"$T/q8.json" 2>"$T/err" || { bad "hf qmoe u8log failed"; cat "$T/err"; }
python3 - "$T/q.json" "$T/q8.json" "$T/qm/model.safetensors" "$T/qm8/model.safetensors" "$T/qm8/config.json" <<'PY' && ok || bad "qmoe u8log blobs / bits"
import json, math, struct, sys
import numpy as np
j16, j8 = (json.load(open(f)) for f in sys.argv[1:3])
assert j8["qmoe_scales"] == "u8log" and j16["qmoe_scales"] == "f16", (j8, j16)
# 3 bytes less per row: (2 * 3 * 8 / 256 + 3 * 8 / 512) / 3 bit per expert weight on this model, plus symbol changes
assert j8["bits_per_expert_weight"] < j16["bits_per_expert_weight"] - 0.07, (j8, j16)
assert json.load(open(sys.argv[5]))["quantization_config"]["row_scales"] == "u8log"
def blobs(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    for k, v in h.items():
        if k.endswith(".qmoe"):
            s, e = v["data_offsets"]
            yield k, b[8 + n + s:8 + n + e]
tot16 = tot8 = 0
for k, x in blobs(sys.argv[3]):
    assert struct.unpack("<II", x[32:40]) == (1, 0), k
    tot16 += len(x)
cnt = 0
for k, x in blobs(sys.argv[4]):
    st, = struct.unpack("<I", x[32:36]); base, = struct.unpack("<f", x[36:40])
    rows, cols, nc = struct.unpack("<QQQ", x[8:32]); g, = struct.unpack("<H", x[6:8])
    ng = (rows + g - 1) // g
    assert st == 2 and base > 0 and math.isfinite(base), k
    assert len(x) == 40 + 4 * (ng + 1) + 2 * nc + rows, k
    codes = np.frombuffer(x[len(x) - rows:], dtype=np.uint8)
    assert codes.max() == 255, k  # the largest row level is the base
    lv = np.where(codes > 0, (np.float64(base) * np.exp2(-(255.0 - codes) / 16)).astype(np.float16), 0)
    assert lv.max() == np.float16(base), k
    tot8 += len(x); cnt += 1
assert cnt == 96, cnt
PY
"$BIN" eval "$T/qm8" --threads 2 --json >"$T/c8.json" 2>"$T/err" || { bad "eval qmoe u8log dir failed"; cat "$T/err"; }
"$BIN" quantize "$MODEL" --eval-only --method rtn --bits ternary --group row --codec qmoe --qmoe-scales u8log --text "$MODEL/data/test.txt" --json --threads 2 >"$T/d8.json" 2>"$T/err" || { bad "eval-only qmoe u8log failed"; cat "$T/err"; }
c=$(ppl "$T/c8.json"); d=$(ppl "$T/d8.json")
python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if abs(a-b) <= 1e-4*b else 1)" "$c" "$d" \
  && ok || bad "qmoe u8log dir ppl $c != in-memory coded ppl $d"
# inspect counts the u8log directory's blobs as the bytes they are
"$BIN" inspect "$T/qm8" --json >"$T/i8.json" 2>"$T/err" || { bad "inspect u8log failed"; cat "$T/err"; }
python3 -c 'import json,sys; a,b=(json.load(open(f)) for f in sys.argv[1:]); sys.exit(0 if a["params"] == b["params"] and b["dtypes_bytes"]["u8"] < a["dtypes_bytes"]["u8"] else 1)' "$T/i1.json" "$T/i8.json" \
  && ok || bad "inspect of the u8log directory: params or bytes"
rm -rf "$T/qm8"
expect_err 1 "qmoe-scales" "$BIN" quantize "$MODEL" --eval-only --method rtn --bits ternary --group row --qmoe-scales u8log
expect_err 2 "qmoe-scales" "$BIN" quantize "$MODEL" --eval-only --method rtn --bits ternary --group row --codec qmoe --qmoe-scales u4
expect_err 2 "exclude each other" "$BIN" quantize "$MODEL" --eval-only --bits ternary --group row --codec qmoe --act-order --no-act-order
# --codec qmoe --target-bpw B: a ternary range per expert matrix, chosen so
# that the experts take at most B bits per weight all-in, as eval counts the
# written directory (and as quantize reports); each range one of the
# candidates, not all the same. GPTQ on few calibration tokens (it runs every
# matrix at 7 ranges): the budget does not depend on how good the fit is.
"$BIN" quantize "$MODEL" -o "$T/qb" --format hf --method gptq --bits ternary --group row --codec qmoe --target-bpw 0.8 \
  --calib-tokens 512 --json --quiet --threads 2 >"$T/qb.json" 2>"$T/err" || { bad "qmoe --target-bpw failed"; cat "$T/err"; }
"$BIN" eval "$T/qb" --max-windows 1 --threads 2 --json >"$T/qbe.json" 2>"$T/err" || { bad "eval qmoe --target-bpw dir failed"; cat "$T/err"; }
python3 - "$T/qb.json" "$T/qbe.json" "$T/qb/config.json" <<'PY' && ok || bad "qmoe --target-bpw 0.8: budget or ranges"
import json, sys
q, e = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
b = e["size"]["bits_per_expert_weight"]
assert b <= 0.8 and abs(b - q["bits_per_expert_weight"]) < 1e-3, (b, q["bits_per_expert_weight"])
r = [x for l in q["ternary_ranges"] for k in ("w1", "w3", "w2") for x in l[k]]
assert len(r) == 4 * 3 * 8 and set(r) <= {1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8} and len(set(r)) > 1, r
assert q["target_bpw"] == 0.8 and "ternary_range" not in q, q
prov = json.dumps(json.load(open(sys.argv[3])))
assert "qmoe_target_bpw" in prov, prov
print(f"ok --target-bpw 0.8: {b:.4f} bits per expert weight (eval), ranges {sorted(set(r))}")
PY
rm -rf "$T/qb"
expect_err 1 "excludes --ternary-range" "$BIN" quantize "$MODEL" --eval-only --method gptq --bits ternary --group row --codec qmoe --target-bpw 0.85 --ternary-range 1.2
expect_err 1 "needs --method gptq" "$BIN" quantize "$MODEL" --eval-only --method rtn --bits ternary --group row --codec qmoe --target-bpw 0.85
expect_err 1 "must be in \[0.2, 2\]" "$BIN" quantize "$MODEL" --eval-only --method gptq --bits ternary --group row --codec qmoe --target-bpw 3
expect_err 1 "not --target-size" "$BIN" quantize "$MODEL" --eval-only --method gptq --bits ternary --group row --codec qmoe --target-size 1M
expect_err 2 "target-bpw" "$BIN" quantize "$MODEL" --eval-only --method gptq --bits ternary --group row --codec qmoe --target-bpw 0.1

# A codeword outside the dictionary (65535 entries: codeword 0xffff is not one).
python3 - "$T/qm/model.safetensors" <<'PY' || bad "could not corrupt the blob"
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
name = "model.layers.1.block_sparse_moe.experts.2.w2.weight.qmoe"
s, e = h[name]["data_offsets"]
o = 8 + n + s
rows = struct.unpack("<Q", b[o + 8:o + 16])[0]; g = struct.unpack("<H", b[o + 6:o + 8])[0]
codes = o + 40 + 4 * ((rows + g - 1) // g + 1)
b[codes + 10:codes + 12] = b"\xff\xff"
open(p, "wb").write(b)
PY
expect_err 1 "layer 1 expert 2 w2" "$BIN" eval "$T/qm" --max-windows 1

# Bad options and sources: nothing written.
expect_err 1 "format hf" "$BIN" quantize "$MODEL" -o "$T/bad1" --method rtn --bits ternary --group row --codec qmoe
expect_err 1 "Hugging Face" "$BIN" quantize "$MODEL" -o "$T/bad2" --format hf --method rtn --bits ternary
expect_err 1 "one width" "$BIN" quantize "$MODEL" -o "$T/bad3" --format hf --method rtn --bits 4 --attn-bits 8
expect_err 1 "embeddings" "$BIN" quantize "$MODEL" -o "$T/bad4" --format hf --method rtn --bits 4 --embed-bits 8
expect_err 2 "format" "$BIN" quantize "$MODEL" -o "$T/bad5" --format onnx
expect_err 1 "already quantized" "$BIN" quantize "$T/qm" -o "$T/bad6" --format hf --method rtn --bits 4
expect_err 1 "is quantized" "$BIN" convert "$T/qm" -o "$T/bad8.gguf"
expect_err 1 "ternary-range" "$BIN" quantize "$MODEL" -o "$T/bad10.gguf" --method rtn --bits 4 --ternary-range 1.2
expect_err 1 "exclude" "$BIN" quantize "$MODEL" -o "$T/bad11.gguf" --method rtn --bits 4 --experts-only --embed-bits 8
cp -r "$T/qm" "$T/self" && expect_err 2 "replace the input" "$BIN" quantize "$T/self" -o "$T/self" --format hf --method rtn --bits 4
[ -f "$T/self/config.json" ] && ok || bad "quantize -o INPUT removed the input"
"$BIN" convert "$MODEL" -o "$T/m.gguf" --to gguf >/dev/null 2>&1
expect_err 1 "Hugging Face source" "$BIN" quantize "$T/m.gguf" -o "$T/bad7" --format hf --method rtn --bits 4
"$BIN" quantize "$MODEL" -o "$T/q4b.gguf" --method rtn --bits 4 >/dev/null 2>&1
expect_err 1 "already quantized" "$BIN" quantize "$T/q4b.gguf" -o "$T/bad12.gguf" --method rtn --bits 8
mkdir -p "$T/cfg" && cp "$MODEL"/*.json "$MODEL"/*.safetensors "$T/cfg/" 2>/dev/null
python3 - "$T/cfg/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["quantization_config"] = {"quant_method": "awq", "bits": 4}
json.dump(c, open(sys.argv[1], "w"))
PY
expect_err 1 "awq" "$BIN" eval "$T/cfg" --max-windows 1
"$BIN" quantize --help | grep -q -- "--format gguf|hf" && ok || bad "help lacks --format"

echo "cli_quant_hf: $passes passed, $fails failed"
[ "$fails" = 0 ]
