#!/usr/bin/env bash
# PyTorch checkpoints: the bundled model's state dict written by torch.save
# (one pytorch_model.bin, two shards with pytorch_model.bin.index.json, a
# lone .bin with config.json beside it, and the same zip re-packed with
# deflate) evaluates to exactly the perplexity of the safetensors original,
# `convert --to hf` gives tensors byte-equal to the original's and
# `convert --to gguf` the same GGUF file. The legacy non-zip format and a
# pickle naming os.system are refused with one line and exit 1. Needs a
# Python with torch (Debian's python3-torch); skips (77) without it.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, numpy' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
ok() { passes=$((passes + 1)); }
TEXT=$MODEL/data/test.txt

# The state dict, read from the safetensors files with numpy only (bf16 kept
# as raw int16 bits, reinterpreted by torch), so this does not depend on the
# reader under test.
"$PY" - "$MODEL" "$T" <<'EOF' || { echo "FAIL: writing the .bin checkpoints"; exit 1; }
import collections, glob, json, os, shutil, struct, sys, zipfile
import numpy as np, torch
model, out = sys.argv[1], sys.argv[2]
types = {"BF16": (np.int16, torch.bfloat16), "F16": (np.float16, None), "F32": (np.float32, None)}
sd = collections.OrderedDict()
for f in sorted(glob.glob(os.path.join(model, "*.safetensors"))):
    raw = open(f, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    for k, v in hdr.items():
        if k == "__metadata__": continue
        b, e = v["data_offsets"]
        npt, tt = types[v["dtype"]]
        a = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=npt).reshape(v["shape"]).copy()
        t = torch.from_numpy(a)
        sd[k] = t.view(tt) if tt is not None else t
side = ["config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json"]
def mkdir(d):
    d = os.path.join(d, "kjv-mixtral-15m") if not d.endswith("lone") else d  # general.name of the GGUF
    os.makedirs(d)
    for s in side:
        if os.path.exists(os.path.join(model, s)): shutil.copy(os.path.join(model, s), d)
    return d
d = mkdir(os.path.join(out, "single"))
torch.save(sd, os.path.join(d, "pytorch_model.bin"))
d = mkdir(os.path.join(out, "sharded"))
keys = list(sd)
shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
wm = {}
for i, ks in enumerate(shards):
    name = "pytorch_model-%05d-of-00002.bin" % (i + 1)
    torch.save({k: sd[k] for k in ks}, os.path.join(d, name))
    wm.update({k: name for k in ks})
json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, open(os.path.join(d, "pytorch_model.bin.index.json"), "w"))
d = mkdir(os.path.join(out, "lone"))
torch.save(sd, os.path.join(d, "kjv-mixtral-15m.bin"))
d = mkdir(os.path.join(out, "deflated"))
src = zipfile.ZipFile(os.path.join(out, "single", "kjv-mixtral-15m", "pytorch_model.bin"))
with zipfile.ZipFile(os.path.join(d, "pytorch_model.bin"), "w", zipfile.ZIP_DEFLATED) as z:
    for i in src.infolist(): z.writestr(i.filename, src.read(i.filename))
d = mkdir(os.path.join(out, "legacy"))
torch.save(sd, os.path.join(d, "pytorch_model.bin"), _use_new_zipfile_serialization=False)
# A torch.save zip whose pickle calls os.system (never to be executed).
class Evil:
    def __reduce__(self): return (os.system, ("touch " + os.path.join(out, "pwned"),))
d = mkdir(os.path.join(out, "evil"))
torch.save({"x": Evil()}, os.path.join(d, "pytorch_model.bin"))
EOF

ppl_of() { "$BIN" eval "$1" --text "$TEXT" --ctx 128 --max-windows 8 --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
want=$(ppl_of "$MODEL") || { echo "FAIL: eval of the original"; exit 1; }
"$BIN" convert "$MODEL" -o "$T/ref.gguf" 2>/dev/null || { echo "FAIL: convert of the original to gguf"; exit 1; }
for c in single sharded lone deflated; do
  p=$T/$c/kjv-mixtral-15m; [ $c = lone ] && p=$T/lone/kjv-mixtral-15m.bin
  got=$(ppl_of "$p" 2>"$T/err") || { bad "eval $c: $(cat "$T/err")"; continue; }
  if [ "$got" = "$want" ]; then ok; else bad "eval $c: ppl $got, safetensors original $want"; fi
  rm -rf "$T/hf"
  if ! "$BIN" convert "$p" -o "$T/hf" --to hf 2>"$T/err"; then bad "convert $c --to hf: $(cat "$T/err")"; continue; fi
  if "$PY" - "$MODEL" "$T/hf" <<'EOF'; then ok; else bad "convert $c --to hf: tensors differ from the original"; fi
import glob, json, os, struct, sys
def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        raw = open(f, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        for k, v in json.loads(raw[8:8 + n]).items():
            if k == "__metadata__": continue
            b, e = v["data_offsets"]
            out[k] = (v["dtype"], v["shape"], raw[8 + n + b:8 + n + e])
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
if diff: print("differing tensors:", diff[:5], len(diff)); sys.exit(1)
print("%d tensors byte-equal" % len(a))
EOF
  rm -f "$T/m.gguf"
  if "$BIN" convert "$p" -o "$T/m.gguf" --to gguf 2>"$T/err" && cmp -s "$T/m.gguf" "$T/ref.gguf"; then ok
  else bad "convert $c --to gguf: differs from the GGUF of the original $(cat "$T/err")"; fi
done
"$BIN" inspect "$T/lone/kjv-mixtral-15m.bin" | grep -q "^format: *pytorch" && ok || bad "inspect of a lone .bin does not say pytorch"

# Refusals: one line naming the file and what was refused, exit 1, nothing run.
refuse() { # name path pattern
  "$BIN" eval "$2" --text "$TEXT" --ctx 128 --max-windows 1 >/dev/null 2>"$T/err"; rc=$?
  if [ $rc = 1 ] && grep -q "$3" "$T/err" && [ "$(wc -l <"$T/err")" = 1 ]; then ok
  else bad "$1: exit $rc, stderr: $(cat "$T/err")"; fi
}
refuse legacy "$T/legacy/kjv-mixtral-15m" "legacy (pre-1.6, non-zip) PyTorch serialization"
refuse os.system "$T/evil/kjv-mixtral-15m" "global posix.system is not allowed"
[ -e "$T/pwned" ] && bad "the malicious pickle was executed"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
