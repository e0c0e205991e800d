#!/usr/bin/env bash
# CLI contract: --help for every verb, exit codes, and bad input files that
# must give a one-line error naming the file, exit 1 (not a crash), and no
# output file left behind.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect CODE CMD... : exit code must be CODE
expect() {
  local want=$1; shift
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != "$want" ]; then bad "exit $got (want $want): $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  ok; return 0
}
# expect_err PATTERN CMD... : exit 1, one line on stderr containing PATTERN
expect_err() {
  local pat=$1; shift
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != 1 ]; then bad "exit $got (want 1): $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if ! grep -q -- "$pat" "$T/err"; then bad "stderr lacks '$pat': $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if [ "$(grep -vc '^moetool: warning' "$T/err")" -gt 1 ]; then bad "more than one error line: $*"; head -5 "$T/err"; return 1; fi
  ok; return 0
}
no_output() { # no file matching the output name (or its temporaries) may exist
  if compgen -G "$1*" >/dev/null; then bad "output left behind: $(ls -d "$1"*)"; else ok; fi
}

# ---- usage and help
expect 2 "$BIN"
expect 0 "$BIN" --help
expect 2 "$BIN" frobnicate
for v in inspect convert eval generate; do
  expect 0 "$BIN" "$v" --help
  grep -q "usage: moetool $v" "$T/out" || bad "$v --help lacks usage line"
  expect 2 "$BIN" "$v" --no-such-option
done
expect 2 "$BIN" convert "$MODEL"                       # missing -o
expect 2 "$BIN" convert "$MODEL" -o "$T/x" --dtype q3   # bad dtype
expect 2 "$BIN" eval "$MODEL" --text /dev/null --ctx abc
expect 2 "$BIN" eval "$MODEL" --text /dev/null --protocol nope
expect 2 "$BIN" generate "$MODEL"                      # missing -p

# ---- missing / unreadable inputs
expect_err "no-such-dir" "$BIN" inspect "$T/no-such-dir"
expect_err "missing.txt" "$BIN" eval "$MODEL" --text "$T/missing.txt"

# ---- a copy of the model to damage
mk() { rm -rf "$T/m"; mkdir -p "$T/m"; cp "$MODEL"/*.json "$MODEL"/*.safetensors "$MODEL"/tokenizer.model "$T/m/"; }
S1=model-00001-of-00002.safetensors
S2=model-00002-of-00002.safetensors

mk; truncate -s 100000 "$T/m/$S2"                       # truncated shard
expect_err "$S2" "$BIN" inspect "$T/m"
expect_err "$S2" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
expect_err "$S2" "$BIN" convert "$T/m" -o "$T/outdir"; no_output "$T/outdir"

mk; printf '\xff\xff\xff\x00\x00\x00\x00\x00{}' > "$T/m/$S2"   # header length past EOF
expect_err "$S2" "$BIN" inspect "$T/m"

mk; rm "$T/m/$S2"                                       # missing shard
expect_err "$S2" "$BIN" eval "$T/m" --text "$MODEL/data/test.txt"

mk; python3 - "$T/m/config.json" <<'EOF' && expect_err "hidden_size" "$BIN" inspect "$T/m"
import json, sys; p = sys.argv[1]; c = json.load(open(p)); del c["hidden_size"]; json.dump(c, open(p, "w"))
EOF

mk; python3 - "$T/m/config.json" <<'EOF' && expect_err "gpt2" "$BIN" inspect "$T/m"
import json, sys; p = sys.argv[1]; c = json.load(open(p)); c["model_type"] = "gpt2"; c["architectures"] = ["GPT2LMHeadModel"]; json.dump(c, open(p, "w"))
EOF

mk; python3 - "$T/m/$S1" <<'EOF' && expect_err "$S1" "$BIN" inspect "$T/m"
# offsets out of range: rewrite the header with one tensor's end past the data
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
k = next(k for k in h if k != "__metadata__")
h[k]["data_offsets"][1] += 1 << 40
hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
EOF

mk; python3 - "$T/m/$S1" <<'EOF' && expect_err "$S1" "$BIN" inspect "$T/m"
# dtype/shape size mismatch: claim F32 for a BF16 tensor
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
k = next(k for k in h if k != "__metadata__")
h[k]["dtype"] = "F32"
hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
EOF

# ---- GGUF: bad magic, bad version, absurd counts
printf 'GGUX\x03\x00\x00\x00' > "$T/bad1.gguf"; head -c 64 /dev/zero >> "$T/bad1.gguf"
expect_err "bad1.gguf" "$BIN" inspect "$T/bad1.gguf"
printf 'GGUF\x63\x00\x00\x00' > "$T/bad2.gguf"; head -c 64 /dev/zero >> "$T/bad2.gguf"
expect_err "bad2.gguf" "$BIN" inspect "$T/bad2.gguf"
printf 'GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\x0f\x00\x00\x00\x00\x00\x00\x00\x00' > "$T/bad3.gguf"
expect_err "bad3.gguf" "$BIN" inspect "$T/bad3.gguf"

# ---- a convert that fails half-way leaves nothing: output dir not writable
mkdir -p "$T/ro"; chmod 555 "$T/ro"
if [ "$(id -u)" != 0 ]; then
  expect_err "ro" "$BIN" convert "$MODEL" -o "$T/ro/out.gguf"; no_output "$T/ro/out.gguf"
fi

# ---- the model description refuses what the family does not describe
# (one line naming the file and what is wrong; exit 1; no output)
cfgset() { python3 -c 'import json, sys; p = sys.argv[1]; c = json.load(open(p)); c.update(json.loads(sys.argv[2])); json.dump(c, open(p, "w"))' "$T/m/config.json" "$1"; }
mk; cfgset '{"model_type": "jamba", "architectures": ["JambaForCausalLM"]}'
expect_err "config.json: unsupported architecture jamba" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
mk; cfgset '{"hidden_act": "gelu"}'
expect_err "config.json: hidden_act gelu is not supported for mixtral" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
expect_err "hidden_act gelu" "$BIN" eval "$T/m" --text "$MODEL/data/test.txt"
mk; cfgset '{"attention_bias": true}'
expect_err "config.json: attention_bias = true is not supported" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
mk; cfgset '{"rope_scaling": {"type": "yarn", "factor": 4.0}}'
expect_err "config.json: rope_scaling yarn is not supported" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
# a tensor the family needs is missing: renamed in the shard header and the index
mk; sed -i 's/model.layers.0.self_attn.q_proj.weight/model.layers.0.self_attn.x_proj.weight/' "$T/m/$S1" "$T/m/model.safetensors.index.json"
expect_err "tensor 'model.layers.0.self_attn.q_proj.weight' (expected shape \[256, 256\])" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
expect_err "tensor model.layers.0.self_attn.q_proj.weight is missing (expected shape \[256, 256\])" "$BIN" eval "$T/m" --text "$MODEL/data/test.txt"
# a tensor of the wrong shape for the config: the config claims a wider FFN
mk; cfgset '{"intermediate_size": 1024}'
expect_err "block_sparse_moe.experts.0.w1.weight' has shape (512,256), the config implies (1024,256)" "$BIN" convert "$T/m" -o "$T/out.gguf"; no_output "$T/out.gguf"
expect_err "expected \[1024, 256\]" "$BIN" eval "$T/m" --text "$MODEL/data/test.txt"

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
