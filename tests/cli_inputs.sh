#!/usr/bin/env bash
# Inputs an unlucky or hostile user gives: bounded time and memory (context
# checked against the model, scratch estimated before allocating, text read
# only as far as needed, linear-time index parsing, FIFOs refused instead of
# waited on), honest errors (the real tokenizer error, tokenizer fallback,
# no tokenizer-less conversions by accident, bad GGUF keys and magic, "not a
# model"), JSON that is always valid UTF-8, terminal output without raw
# control bytes, and defaults that say what they do.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
TEXT="$MODEL/data/test.txt"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
have_py=0; command -v python3 >/dev/null && have_py=1

# expect CODE CMD... : exit code must be CODE, and a failure says it in one line
expect() {
  local want=$1; shift
  timeout 60 "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != "$want" ]; then bad "exit $got (want $want): $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  if [ "$want" != 0 ] && [ "$(grep -vc '^moetool: warning' "$T/err")" != 1 ]; then
    bad "not exactly one error line: $*"; sed 's/^/    /' "$T/err" | head -5; return 1; fi
  ok; return 0
}
# expect_msg CODE PATTERN CMD... : as expect, and stderr contains PATTERN
expect_msg() {
  local want=$1 pat=$2; shift 2
  expect "$want" "$@" || return 1
  grep -q -- "$pat" "$T/err" || { bad "stderr lacks '$pat': $*"; sed 's/^/    /' "$T/err" | head -5; return 1; }
}
mk() { rm -rf "$T/m"; mkdir -p "$T/m"; cp "$MODEL"/*.json "$MODEL"/*.safetensors "$MODEL"/tokenizer.model "$T/m/"; }
S2=model-00002-of-00002.safetensors
json_of() { "$BIN" eval "$@" --json 2>/dev/null | sed -n 's/.*"ppl":\([0-9.]*\).*/\1/p'; }

# ---- 7. bounded time and memory
expect_msg 2 "max_position_embeddings" "$BIN" eval "$MODEL" --ctx 2048 --max-windows 1
expect_msg 2 "max_position_embeddings" "$BIN" generate "$MODEL" -p "In the beginning" -n 1100
expect_msg 1 "GiB of scratch" "$BIN" eval "$MODEL" --ctx 1048576 --allow-long-context
# --max-windows reads only what those windows need: 100 MB of text in well
# under the time the whole file takes, the same perplexity as the short text,
# and an endless pipe ends
for i in $(seq 800); do cat "$TEXT"; done >"$T/big.txt"
want=$(json_of "$MODEL" --text "$TEXT" --max-windows 2)
got=$(timeout 10 "$BIN" eval "$MODEL" --text "$T/big.txt" --max-windows 2 --json 2>"$T/err" | sed -n 's/.*"ppl":\([0-9.]*\).*/\1/p')
[ -n "$want" ] && [ "$got" = "$want" ] && ok || bad "eval of 100 MB with --max-windows 2: ppl '$got', want '$want' $(head -2 "$T/err")"
endless() { while :; do cat "$TEXT" || return; done 2>/dev/null; }
# A memory cap for the endless-pipe runs, so that a build that reads the whole
# pipe fails instead of eating the machine (not under ASan, which reserves
# terabytes of shadow address space).
memcap() { grep -q __asan_init "$BIN" 2>/dev/null || ulimit -v 4000000; }
got=$( (memcap; timeout 20 "$BIN" eval "$MODEL" --text <(endless) --max-windows 2 --json 2>"$T/err") | sed -n 's/.*"ppl":\([0-9.]*\).*/\1/p')
[ "$got" = "$want" ] && ok || bad "eval of an endless pipe with --max-windows 2: ppl '$got', want '$want' $(head -2 "$T/err")"
(memcap; timeout 60 "$BIN" quantize "$MODEL" --method gptq --calib <(endless) --calib-tokens 512 \
  -o "$T/q.gguf" >/dev/null 2>"$T/err") && ok || bad "quantize --calib endless pipe: $(head -2 "$T/err")"
(memcap; timeout 60 "$BIN" merge "$MODEL" --experts 6 --method prune --calib <(endless) --calib-tokens 256 \
  --sample 64 -o "$T/mg" >/dev/null 2>"$T/err") && ok || bad "merge --calib endless pipe: $(head -2 "$T/err")"
# A model whose context (128) is shorter than the default window (256): the
# defaults fit the model (eval scores windows of 128, calibration runs in
# windows of 128); an explicit longer --ctx is still refused.
if [ $have_py = 1 ]; then
  mk; python3 - "$T/m/config.json" <<'EOF'
import json, sys; p = sys.argv[1]; c = json.load(open(p)); c["max_position_embeddings"] = 128; json.dump(c, open(p, "w"))
EOF
  got=$(timeout 60 "$BIN" eval "$T/m" --text "$TEXT" --max-windows 2 --json 2>"$T/err" | sed -n 's/.*"ctx":\([0-9]*\).*/\1/p')
  [ "$got" = 128 ] && ok || bad "eval of a 128-token model by default: ctx '$got', want 128 $(head -2 "$T/err")"
  expect_msg 2 "max_position_embeddings" "$BIN" eval "$T/m" --text "$TEXT" --ctx 256 --max-windows 1
  expect 0 "$BIN" quantize "$T/m" --method gptq --calib "$TEXT" --calib-tokens 512 -o "$T/q2.gguf"
  expect 0 "$BIN" merge "$T/m" --experts 6 --method prune --calib "$TEXT" --calib-tokens 256 --sample 64 -o "$T/mg2"
fi

# ---- 8. index.json with 150k distinct shard names: linear, not quadratic
if [ $have_py = 1 ]; then
  mk; python3 - "$T/m/model.safetensors.index.json" <<'EOF'
import json, sys
wm = {"t%d" % i: "shard-%06d.safetensors" % i for i in range(150000)}
json.dump({"metadata": {}, "weight_map": wm}, open(sys.argv[1], "w"))
EOF
  start=$(date +%s)
  expect_msg 1 "shard-000000.safetensors listed in the index does not exist" timeout 10 "$BIN" inspect "$T/m"
  echo "index of 150000 shard names: $(( $(date +%s) - start )) s"
fi

# ---- 9. FIFOs are refused by name, never waited on
mkfifo "$T/fifo-model"
expect_msg 1 "fifo-model: not a regular file (a FIFO)" timeout 10 "$BIN" inspect "$T/fifo-model"
mk; rm "$T/m/$S2"; mkfifo "$T/m/$S2"
expect_msg 1 "$S2: not a regular file (a FIFO)" timeout 10 "$BIN" inspect "$T/m"
mk; rm "$T/m/config.json"; mkfifo "$T/m/config.json"
expect_msg 1 "config.json: not a regular file (a FIFO)" timeout 10 "$BIN" inspect "$T/m"
mk; rm "$T/m/tokenizer.model" "$T/m/tokenizer_config.json"; mkfifo "$T/m/tokenizer_config.json"
expect_msg 1 "tokenizer_config.json: not a regular file (a FIFO)" timeout 10 "$BIN" generate "$T/m" -p "In" -n 1

# ---- 10. the real tokenizer error; fallback between tokenizer files
mk; rm "$T/m/tokenizer.json"; echo "not a protobuf" >"$T/m/tokenizer.model"
expect_msg 1 "tokenizer.model" "$BIN" generate "$T/m" -p "In the beginning" -n 1
expect_msg 1 "tokenizer.model" "$BIN" eval "$T/m" --text "$TEXT" --max-windows 1
mk; echo "not a protobuf" >"$T/m/tokenizer.model"          # tokenizer.json beside it is fine
expect 0 "$BIN" generate "$T/m" -p "In the beginning" -n 4 &&
  { grep -q "using .*tokenizer.json instead" "$T/err" && ok || bad "no line saying tokenizer.json is used: $(cat "$T/err")"; }
"$BIN" generate "$MODEL" -p "In the beginning" -n 4 >"$T/want" 2>/dev/null
"$BIN" generate "$T/m" -p "In the beginning" -n 4 >"$T/got" 2>/dev/null
cmp -s "$T/want" "$T/got" && ok || bad "tokenizer.json fallback generates other text"
mk; rm "$T/m/tokenizer.model" "$T/m/tokenizer.json"            # no tokenizer at all
expect_msg 1 "no-tokenizer" "$BIN" convert "$T/m" -o "$T/nt.gguf"
[ -e "$T/nt.gguf" ] && bad "convert wrote a GGUF without a tokenizer" || ok
expect 0 "$BIN" convert "$T/m" -o "$T/nt.gguf" --no-tokenizer
"$BIN" convert --help | grep -q -- "--no-tokenizer" && ok || bad "convert --help lacks --no-tokenizer"

# ---- 11. JSON is valid UTF-8; terminal output has no raw control bytes
if [ $have_py = 1 ]; then
  # sampling at a high temperature emits byte-fallback tokens that do not form UTF-8
  for seed in 1 2 3; do
    "$BIN" generate "$MODEL" -p "And" -n 64 --temp 20 --seed $seed --json >"$T/g.json" 2>"$T/err" || bad "generate --json: $(cat "$T/err")"
    python3 - "$MODEL/tokenizer.json" "$T/g.json" <<'EOF' && ok || bad "generate --json text (seed $seed)"
# The text must be the ids decoded independently (from tokenizer.json), with
# each maximal invalid UTF-8 subpart as U+FFFD as Python decodes; the file
# must parse as UTF-8 JSON.
import json, sys
d = json.loads(open(sys.argv[2], "rb").read())
tj = json.load(open(sys.argv[1]))
inv = {v: k for k, v in tj["model"]["vocab"].items()}
special = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
b = b""
for i in d["ids"]:
    if i in special: continue
    p = inv[i]
    b += bytes([int(p[3:5], 16)]) if p.startswith("<0x") and len(p) == 6 else p.replace("\u2581", " ").encode()
want = b.decode("utf-8", "replace")
if want != d["text"]: sys.exit("text %r\nwant %r" % (d["text"][:200], want[:200]))
EOF
  done
  "$BIN" convert "$MODEL" -o "$T/m.gguf" 2>/dev/null
  python3 - "$T/m.gguf" "$T/evil.gguf" <<'EOF'
# Adds an F32 tensor named with an escape sequence and invalid UTF-8 to a GGUF v3.
import struct, sys
b = open(sys.argv[1], "rb").read(); name = b"blk.0.\x1b[31mevil\xff\xfe\xc2\x9b.weight"
nt, nkv = struct.unpack_from("<QQ", b, 8); pos = 24; align = 32
def skip(t, pos):
    size = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    if t in size: return pos + size[t]
    if t == 8: return pos + 8 + struct.unpack_from("<Q", b, pos)[0]
    et, n = struct.unpack_from("<IQ", b, pos); pos += 12
    for _ in range(n): pos = skip(et, pos)
    return pos
for _ in range(nkv):
    kl = struct.unpack_from("<Q", b, pos)[0]; key = b[pos + 8:pos + 8 + kl]; pos += 8 + kl
    t = struct.unpack_from("<I", b, pos)[0]; pos += 4
    if key == b"general.alignment": align = struct.unpack_from("<I", b, pos)[0]
    pos = skip(t, pos)
for _ in range(nt):
    pos += 8 + struct.unpack_from("<Q", b, pos)[0]
    pos += 4 + 8 * struct.unpack_from("<I", b, pos)[0] + 12
data = b[(pos + align - 1) // align * align:]
off = (len(data) + align - 1) // align * align
head = b[:8] + struct.pack("<QQ", nt + 1, nkv) + b[24:pos] + struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 32, 0, off)
head += b"\0" * (-len(head) % align)
open(sys.argv[2], "wb").write(head + data + b"\0" * (off - len(data)) + struct.pack("<32f", *range(32)))
EOF
  "$BIN" inspect "$T/evil.gguf" --json >"$T/i.json" 2>"$T/err" || bad "inspect --json evil.gguf: $(cat "$T/err")"
  python3 -c 'import json, sys; d = json.loads(open(sys.argv[1], "rb").read()); assert any("evil\ufffd\ufffd\u009b" in t["name"] for t in d["tensors"])' "$T/i.json" \
    && ok || bad "inspect --json of a GGUF with a non-UTF-8 tensor name is not valid UTF-8 JSON"
  "$BIN" inspect "$T/evil.gguf" --tensors >"$T/i.txt" 2>"$T/err" || bad "inspect --tensors evil.gguf: $(cat "$T/err")"
  if LC_ALL=C grep -q $'[\x01-\x08\x0b-\x1f\x7f\x80-\xff]' <(LC_ALL=C grep evil "$T/i.txt"); then bad "inspect --tensors sends raw control or non-UTF-8 bytes"
  else grep -q 'evil\\xff\\xfe\\xc2\\x9b' "$T/i.txt" && grep -q '\\x1b\[31m' "$T/i.txt" && ok || bad "inspect --tensors does not show the escaped name: $(grep evil "$T/i.txt")"; fi
fi

# ---- 13. smaller usage checks
expect_msg 2 "512" "$BIN" eval "$MODEL" --max-windows 1 --threads 1024
expect_msg 2 "512" "$BIN" generate "$MODEL" -p "In" -n 1 --threads 1024
expect_msg 2 "512" "$BIN" quantize "$MODEL" --method rtn -o "$T/t-q.gguf" --threads 1024
expect_msg 2 "512" "$BIN" merge "$MODEL" --experts 6 --calib "$TEXT" -o "$T/t-m" --threads 1024
[ -e "$T/t-q.gguf" ] || [ -e "$T/t-m" ] && bad "--threads 1024 wrote output" || ok
expect_msg 2 "top-p" "$BIN" generate "$MODEL" -p "In" --top-p nan
expect_msg 2 "temp" "$BIN" generate "$MODEL" -p "In" --temp nan
expect_msg 2 "temp" "$BIN" generate "$MODEL" -p "In" --temp inf
for v in convert quantize merge; do
  start=$(date +%s%N)
  extra=; [ $v = merge ] && extra="--experts 6"
  expect_msg 2 "empty" "$BIN" $v "$MODEL" -o "" $extra
  [ $(( ($(date +%s%N) - start) / 1000000 )) -lt 1000 ] && ok || bad "$v -o '' took work before refusing"
done
printf 'PK\x03\x04this is a zip' >"$T/zip.gguf"
expect_msg 1 'zip.gguf: not a GGUF file: it begins with "PK\\x03\\x04"' "$BIN" inspect "$T/zip.gguf"
if [ $have_py = 1 ]; then
  for ty in bool f32; do
    python3 - "$T/bc-$ty.gguf" $ty <<'EOF'
# A GGUF whose llama.block_count is a BOOL or a FLOAT32.
import struct, sys
def s(x): x = x.encode(); return struct.pack("<Q", len(x)) + x
kv = s("general.architecture") + struct.pack("<I", 8) + s("llama")
kv += s("llama.block_count") + (struct.pack("<IB", 7, 1) if sys.argv[2] == "bool" else struct.pack("<If", 6, 4.0))
open(sys.argv[1], "wb").write(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv)
EOF
  done
  expect_msg 1 "llama.block_count is stored as BOOL" "$BIN" inspect "$T/bc-bool.gguf"
  expect_msg 1 "llama.block_count is stored as FLOAT32" "$BIN" inspect "$T/bc-f32.gguf"
fi

# ---- 18. defaults that say what they do
mk   # a model without data/test.txt of its own
expect 0 "$BIN" eval "$T/m" --max-windows 1 --json &&
  { grep -q "no --text given.*scoring .*data/test.txt" "$T/err" && ok || bad "eval without --text does not say which text: $(cat "$T/err")"; }
"$BIN" eval --help | grep -q "with a" && ok || bad "eval --help does not describe the default text"
cp "$T/q.gguf" "$T/lone.gguf" 2>/dev/null || "$BIN" convert "$MODEL" -o "$T/lone.gguf" 2>/dev/null
expect_msg 2 "$T/data/train.txt" "$BIN" quantize "$T/lone.gguf" -o "$T/lq.gguf"
mkdir -p "$T/data"; cp "$TEXT" "$T/data/train.txt"
expect 0 "$BIN" quantize "$T/m.gguf" --calib-tokens 512 -o "$T/lq.gguf" &&
  { grep -q "calibrating on $T/data/train.txt" "$T/err" && ok || bad "quantize does not say which calibration text: $(cat "$T/err")"; }
expect_msg 1 "not a model" "$BIN" inspect "$TEXT"
expect 0 "$BIN" generate "$MODEL" -p "In the beginning" -n 0 &&
  { grep -q "generated 0" "$T/err" && ok || bad "generate -n 0 prints no timing: $(cat "$T/err")"; }
for v in inspect convert eval generate quantize merge; do
  expect_msg 2 "unknown option --no-such-option" "$BIN" $v --no-such-option
done
for v in convert quantize merge; do expect_msg 2 "option --output needs a value" "$BIN" $v --output; done
expect_msg 2 "option --text needs a value" "$BIN" eval --text
expect_msg 2 "unknown option -x" "$BIN" generate -x

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
