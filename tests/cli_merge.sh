#!/usr/bin/env bash
# moetool merge from the command line: 8 -> 6 on the bundled model with a
# small calibration (fast), the output loads and evaluates, converts to GGUF
# and the GGUF evaluates identically; per-layer counts (--layers, --budget)
# reach the config; --method naee prunes two per layer; --router alias
# evaluates and is refused by convert --to gguf; merge reads a GGUF too; bad
# options exit 2 (usage) or 1 (failure) with a message and leave no output.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
TEXT=$MODEL/data/test.txt
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
if ! command -v python3 >/dev/null; then echo "skipped: python3 needed to read JSON"; exit 77; fi
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d' + sys.argv[2]))" "$@"; }
FAST="--calib-tokens 2048 --sample 1024 --threads 2"

# 8 -> 6 with the default method and router
"$BIN" merge "$MODEL" -o "$T/m6" --experts 6 $FAST --json >"$T/m6.json" 2>"$T/err" || bad "merge 8->6: $(cat "$T/err")"
[ "$(jget "$T/m6.json" "['layer_experts']")" = "[6, 6, 6, 6]" ] && ok || bad "layer_experts in JSON"
[ "$(jget "$T/m6.json" "['expert_params_out'] * 8 == d['expert_params_in'] * 6")" = True ] && ok || bad "expert parameter counts"
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); sys.exit(0 if c['num_local_experts'] == 6 and 'moe_layer_experts' not in c else 1)" \
  "$T/m6/config.json" && ok || bad "config.json num_local_experts != 6"
[ -f "$T/m6/tokenizer.model" ] && ok || bad "tokenizer not copied"
"$BIN" eval "$T/m6" --text "$TEXT" --ctx 256 --max-windows 20 --ref "$MODEL" --json >"$T/e6.json" 2>"$T/err" \
  || bad "eval merged: $(cat "$T/err")"
"$BIN" eval "$MODEL" --text "$TEXT" --ctx 256 --max-windows 20 --json >"$T/e8.json" 2>"$T/err" || bad "eval original"
p6=$(jget "$T/e6.json" "['ppl']"); p8=$(jget "$T/e8.json" "['ppl']")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if b < a < 2.5 * b else 1)" "$p6" "$p8" \
  && ok || bad "merged ppl $p6 not in (original $p8, 2.5x)"
[ "$(jget "$T/e6.json" "['size']['expert_params']")" = 9437184 ] && ok || bad "eval expert_params"

# GGUF round trip evaluates identically
"$BIN" convert "$T/m6" -o "$T/m6.gguf" 2>"$T/err" || bad "convert --to gguf: $(cat "$T/err")"
"$BIN" eval "$T/m6.gguf" --text "$TEXT" --ctx 256 --max-windows 20 --json >"$T/g6.json" 2>"$T/err" || bad "eval gguf: $(cat "$T/err")"
pg=$(jget "$T/g6.json" "['ppl']")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-6 * b else 1)" "$pg" "$p6" \
  && ok || bad "gguf ppl $pg != hf ppl $p6"

# merge from a GGUF: the kept tensors come back under their HF names with the
# source's values (Q/K rows un-permuted), and the result evaluates like the
# merge of the HF original (same weights; calibration runs in float order of
# the GGUF path, so allow 1 %)
"$BIN" convert "$MODEL" -o "$T/src.gguf" 2>"$T/err" || bad "convert to gguf: $(cat "$T/err")"
"$BIN" merge "$T/src.gguf" -o "$T/mg6" --experts 6 --calib "$MODEL/data/train.txt" $FAST >"$T/out" 2>"$T/err" || bad "merge from gguf: $(cat "$T/err")"
python3 - "$MODEL" "$T/mg6" <<'PY' && ok || bad "merge from gguf: kept tensors differ from the source"
import json, struct, sys, os, glob
import numpy as np
def load(d):
    out = {}
    for f in glob.glob(os.path.join(d, "*.safetensors")):
        b = open(f, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k == "__metadata__": continue
            raw = b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]]
            if v["dtype"] == "BF16": a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif v["dtype"] == "F32": a = np.frombuffer(raw, np.float32)
            else: a = np.frombuffer(raw, np.float16).astype(np.float32)
            out[k] = a.reshape(v["shape"])
    return out
src, got = load(sys.argv[1]), load(sys.argv[2])
kept = [k for k in src if "block_sparse_moe" not in k]
assert kept and all(k in got for k in kept), "missing tensors"
assert all(np.array_equal(src[k], got[k]) for k in kept), [k for k in kept if not np.array_equal(src[k], got[k])][:3]
c = json.load(open(os.path.join(sys.argv[2], "config.json")))
assert c["num_local_experts"] == 6 and c["model_type"] == "mixtral"
PY
"$BIN" eval "$T/mg6" --text "$TEXT" --ctx 256 --max-windows 20 --json >"$T/eg6.json" 2>"$T/err" || bad "eval merged from gguf: $(cat "$T/err")"
pgm=$(jget "$T/eg6.json" "['ppl']")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 0.01 * b else 1)" "$pgm" "$p6" \
  && ok || bad "merged-from-gguf ppl $pgm vs merged-from-hf $p6"

# per-layer counts: config states them, the runtime reads them
"$BIN" merge "$MODEL" -o "$T/mix" --layers 0-1:6,2-3:4 --method reap $FAST >"$T/out" 2>"$T/err" || bad "merge --layers: $(cat "$T/err")"
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); sys.exit(0 if c['num_local_experts'] == 6 and c['moe_layer_experts'] == [6, 6, 4, 4] else 1)" \
  "$T/mix/config.json" && ok || bad "config of --layers output"
"$BIN" inspect "$T/mix" --json >"$T/mix.json" 2>"$T/err" && ok || bad "inspect --layers output: $(cat "$T/err")"
"$BIN" eval "$T/mix" --text "$TEXT" --ctx 256 --max-windows 4 --json >"$T/emix.json" 2>"$T/err" && ok || bad "eval --layers output: $(cat "$T/err")"
[ "$(jget "$T/emix.json" "['size']['expert_params']")" = $((2 * 6 * 393216 + 2 * 4 * 393216)) ] && ok || bad "per-layer expert params"
# ... and say plainly who can load them: merge, inspect and convert name it;
# the uniform merge is portable
"$BIN" merge "$MODEL" -o "$T/mix" --layers 0-1:6,2-3:4 --method reap $FAST >/dev/null 2>"$T/err"
grep -q "note: $T/mix: its layers keep different numbers of experts" "$T/err" && ok || bad "merge --layers says nothing about portability: $(cat "$T/err")"
[ "$(jget "$T/mix.json" "['layer_experts'], d['portable']")" = "([6, 6, 4, 4], False)" ] && ok || bad "inspect: layer_experts/portable"
[ "$(jget "$T/m6.json" "['layer_experts']")" = "[6, 6, 6, 6]" ] && "$BIN" inspect "$T/m6" --json | python3 -c "import json,sys; sys.exit(0 if json.load(sys.stdin)['portable'] else 1)" \
  && ok || bad "inspect: uniform merge not portable"
"$BIN" convert "$T/mix" -o "$T/mix.gguf" --quiet >/dev/null 2>"$T/err"; rc=$?
[ $rc = 1 ] && grep -q "different numbers of experts (6,6,4,4).*--moetool-only" "$T/err" && [ ! -e "$T/mix.gguf" ] && ok \
  || bad "convert --to gguf of per-layer counts: exit $rc, $(cat "$T/err")"
"$BIN" convert "$T/mix" -o "$T/mix.gguf" --moetool-only --quiet >/dev/null 2>"$T/err"
grep -q "note: $T/mix.gguf: .*llama.cpp cannot" "$T/err" && ok || bad "convert --moetool-only says nothing: $(cat "$T/err")"
"$BIN" eval "$T/mix.gguf" --text "$TEXT" --ctx 256 --max-windows 4 --json >"$T/emixg.json" 2>"$T/err" || bad "eval mix.gguf: $(cat "$T/err")"
python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['ppl']; b=json.load(open(sys.argv[2]))['ppl']; sys.exit(0 if abs(a-b) <= 1e-4*b else 1)" \
  "$T/emix.json" "$T/emixg.json" && ok || bad "per-layer GGUF ppl differs from its HF source"
# what merge did, in the output: config.json "moetool" and README.md
python3 - "$T/mix/config.json" "$T/mix/README.md" "$T/m6/README.md" <<'PY' && ok || bad "merge provenance"
import json, sys
m = json.load(open(sys.argv[1]))["moetool"]
assert m["verb"] == "merge" and m["options"]["method"] == "reap" and m["options"]["experts_per_layer"] == "6,6,4,4", m
assert m["command"].startswith("moetool merge ") and "--layers 0-1:6,2-3:4" in m["command"], m
card = open(sys.argv[2]).read()
assert card.startswith("---\n") and "| method | reap |" in card and "transformers and llama.cpp cannot" in card, card
assert "plain Mixtral checkpoint" in open(sys.argv[3]).read()
PY

# naee: two experts pruned per layer, the layer-output error reported
"$BIN" merge "$MODEL" -o "$T/naee" --experts 6 --method naee $FAST --json >"$T/naee.json" 2>"$T/err" || bad "merge --method naee: $(cat "$T/err")"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if all(g.count(-1) == 2 for g in d['groups']) and all(0 < e < 1 for e in d['recon_err']) else 1)" \
  "$T/naee.json" && ok || bad "naee groups / recon_err: $(cat "$T/naee.json")"
# --budget: per-layer counts sum to the budget, within [top_k, experts], stated in the config
"$BIN" merge "$MODEL" -o "$T/bud" --budget 20 --method naee $FAST --json >"$T/bud.json" 2>"$T/err" || bad "merge --budget: $(cat "$T/err")"
python3 -c "
import json, sys
d = json.load(open(sys.argv[1])); c = json.load(open(sys.argv[2])); k = d['layer_experts']
ok = sum(k) == 20 and all(2 <= x <= 8 for x in k) and c['num_local_experts'] == max(k)
ok = ok and (c.get('moe_layer_experts', k) == k if len(set(k)) > 1 else 'moe_layer_experts' not in c)
sys.exit(0 if ok else 1)" "$T/bud.json" "$T/bud/config.json" && ok || bad "--budget counts: $(cat "$T/bud.json")"
"$BIN" eval "$T/bud" --text "$TEXT" --ctx 256 --max-windows 4 --json >/dev/null 2>"$T/err" && ok || bad "eval --budget output: $(cat "$T/err")"

# --router alias: all 8 router rows kept, aliased to the 6 merged experts;
# moetool evaluates it, convert --to gguf refuses it (no output)
"$BIN" merge "$MODEL" -o "$T/al" --experts 6 --router alias $FAST --json >"$T/al.json" 2>"$T/err" || bad "merge --router alias: $(cat "$T/err")"
python3 -c "
import json, sys
d = json.load(open(sys.argv[1])); c = json.load(open(sys.argv[2]))
ok = c['num_local_experts'] == 6 and c['moe_router_alias'] == d['groups'] and all(sorted(set(g)) == list(range(6)) for g in d['groups'])
sys.exit(0 if ok else 1)" "$T/al.json" "$T/al/config.json" && ok || bad "alias config: $(cat "$T/al/config.json")"
"$BIN" eval "$T/al" --text "$TEXT" --ctx 256 --max-windows 20 --ref "$MODEL" --json >"$T/eal.json" 2>"$T/err" || bad "eval alias: $(cat "$T/err")"
pa=$(jget "$T/eal.json" "['ppl']")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if b < a < 2.5 * b else 1)" "$pa" "$p8" \
  && ok || bad "alias ppl $pa not in (original $p8, 2.5x)"
[ "$(jget "$T/eal.json" "['size']['expert_params']")" = 9437184 ] && ok || bad "alias expert_params"
"$BIN" convert "$T/al" -o "$T/al.gguf" >/dev/null 2>"$T/err"; rc=$?
[ "$rc" = 1 ] && grep -qi "alias" "$T/err" && ok || bad "convert alias to gguf: exit $rc, $(cat "$T/err")"
[ ! -e "$T/al.gguf" ] && ok || bad "convert alias to gguf left output"

# bad options: exit code, a message, no output
expect() { # code description args...
  local code=$1 what=$2; shift 2
  rm -rf "$T/x"
  "$BIN" merge "$@" >/dev/null 2>"$T/err"; local rc=$?
  [ "$rc" = "$code" ] && ok || bad "$what: exit $rc, expected $code"
  [ -s "$T/err" ] && ok || bad "$what: no message"
  [ ! -e "$T/x" ] && ok || bad "$what: output left behind"
  ls "$T" | grep -q '^x\.' && bad "$what: temporary left behind" || ok
}
expect 2 "K = experts" "$MODEL" -o "$T/x" --experts 8 $FAST
expect 2 "K > experts" "$MODEL" -o "$T/x" --experts 9 $FAST
expect 2 "K < top_k" "$MODEL" -o "$T/x" --experts 1 $FAST
expect 2 "bad --layers" "$MODEL" -o "$T/x" --layers 0-1:6,x $FAST
expect 2 "--layers past the layers" "$MODEL" -o "$T/x" --layers 0-9:6 $FAST
expect 2 "bad method" "$MODEL" -o "$T/x" --experts 6 --method nope $FAST
expect 2 "bad router" "$MODEL" -o "$T/x" --experts 6 --router nope $FAST
expect 2 "--router alias with pruning" "$MODEL" -o "$T/x" --experts 6 --router alias --method reap $FAST
expect 2 "no -o" "$MODEL" --experts 6 $FAST
expect 2 "no --experts" "$MODEL" -o "$T/x" $FAST
expect 2 "--budget with --experts" "$MODEL" -o "$T/x" --budget 20 --experts 6 $FAST
expect 2 "--budget below top_k per layer" "$MODEL" -o "$T/x" --budget 7 $FAST
expect 2 "--budget of every expert" "$MODEL" -o "$T/x" --budget 32 $FAST
printf 'In the beginning God created the heaven and the earth.\n' >"$T/short.txt"
expect 2 "calibration too short" "$MODEL" -o "$T/x" --experts 6 --calib "$T/short.txt" --calib-tokens 2048
expect 1 "missing model" "$T/nonexistent" -o "$T/x" --experts 6 --calib "$TEXT" $FAST
if python3 -c "import numpy" 2>/dev/null && [ -f "$SRC/tests/make_checkpoint.py" ]; then
  python3 "$SRC/tests/make_checkpoint.py" "$T/fx" --case mistral_dense >/dev/null
  expect 1 "dense model" "$T/fx/mistral_dense" -o "$T/x" --experts 2 --calib "$TEXT" $FAST
  grep -q "dense" "$T/err" && ok || bad "dense model message: $(cat "$T/err")"
fi

echo "merged 8->6 ppl (20 windows) $p6, alias router $pa, original $p8, gguf $pg"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
