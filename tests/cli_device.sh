#!/usr/bin/env bash
# --device on eval and generate. A value other than cpu/cuda is a usage
# error (exit 2). --device cuda either runs (a build with CUDA on a machine
# with a device: then perplexity must equal the CPU's within 1e-4 relative
# and greedy tokens must be the same) or fails with exit 1 and one line
# naming what is missing: "not built with CUDA" when the binary has no CUDA
# runtime linked, else "no CUDA device found" (or an unsupported device) —
# never a silent run on the CPU.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

for v in eval generate; do
  "$BIN" $v "$MODEL" --device gpu >"$T/out" 2>"$T/err"; rc=$?
  [ $rc = 2 ] && grep -q "device must be cpu or cuda" "$T/err" && ok || { bad "$v --device gpu: exit $rc"; cat "$T/err"; }
  "$BIN" $v --help >"$T/out" 2>&1 && grep -q -- "--device" "$T/out" && ok || bad "$v --help lacks --device"
done

if ldd "$BIN" 2>/dev/null | grep -q libcudart; then built=1; else built=0; fi
"$BIN" eval "$MODEL" --device cuda --max-windows 2 --quiet --json >"$T/cuda.json" 2>"$T/err"; rc=$?
if [ $rc = 0 ]; then
  [ $built = 1 ] || bad "--device cuda ran in a build without CUDA"
  "$BIN" eval "$MODEL" --device cpu --max-windows 2 --quiet --json >"$T/cpu.json" 2>/dev/null || bad "cpu eval failed"
  ppl() { sed -n 's/.*"ppl":\([0-9.eE+-]*\).*/\1/p' "$1"; }
  pc=$(ppl "$T/cpu.json"); pg=$(ppl "$T/cuda.json")
  awk -v a="$pc" -v b="$pg" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d / a <= 1e-4) }' && ok \
    || bad "perplexity cpu $pc vs cuda $pg differs by more than 1e-4 relative"
  grep -q '"backend":"cuda"' "$T/cuda.json" && ok || bad "eval --device cuda does not report the cuda backend"
  for d in cpu cuda; do
    "$BIN" generate "$MODEL" --device $d -p "In the beginning" -n 16 --json 2>/dev/null | sed -n 's/.*"ids":\(\[[^]]*\]\).*/\1/p' >"$T/gen.$d"
  done
  [ -s "$T/gen.cpu" ] && cmp -s "$T/gen.cpu" "$T/gen.cuda" && ok || bad "greedy tokens differ: $(cat "$T/gen.cpu") vs $(cat "$T/gen.cuda")"
else
  [ $rc = 1 ] && ok || bad "eval --device cuda: exit $rc (want 0 or 1)"
  [ "$(wc -l <"$T/err")" = 1 ] && ok || { bad "more than one line on stderr"; cat "$T/err"; }
  if [ $built = 0 ]; then want="not built with CUDA"; else want="no CUDA device found\|compute capability"; fi
  grep -q "$want" "$T/err" && ok || { bad "stderr lacks '$want'"; cat "$T/err"; }
  "$BIN" generate "$MODEL" --device cuda -p "In the beginning" -n 4 >"$T/out" 2>"$T/err"; rc=$?
  [ $rc = 1 ] && [ ! -s "$T/out" ] && grep -q "$want" "$T/err" && ok || { bad "generate --device cuda: exit $rc"; cat "$T/err"; }
fi

echo "cli_device: $passes passed, $fails failed"
[ $fails = 0 ]
