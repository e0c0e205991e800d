#!/usr/bin/env bash
# Progress of long jobs goes to stderr, never stdout: on a terminal one line
# redrawn with \r naming the layer (quantize, merge) or window and running
# perplexity (eval); not on a terminal a plain line at most every ~2 s once
# the job has run 2 s, and none for quick jobs; --quiet turns it off; --json
# stdout stays one JSON object. The terminal is a pseudo-terminal from
# script(1) (util-linux); without it those checks are skipped.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
if ! command -v python3 >/dev/null; then echo "skipped: python3 needed to read JSON"; exit 77; fi
is_json() { python3 -c "import json,sys; json.loads(open(sys.argv[1]).read())" "$1" 2>/dev/null; }
B=$(printf %q "$BIN"); M=$(printf %q "$MODEL")
# on_tty LOG CMD: runs CMD (a shell line) with stdout/stderr on a terminal,
# what the terminal showed in LOG with each \r as a line break.
on_tty() {
  local log=$1; shift
  script -qec "$*" /dev/null </dev/null 2>&1 | tr '\r' '\n' >"$log"
  return "${PIPESTATUS[0]}"
}

if command -v script >/dev/null && on_tty "$T/probe" "echo probe" && grep -q probe "$T/probe"; then
  # quantize: a line per matrix, with the layer, rate and ETA.
  on_tty "$T/q.tty" "$B quantize $M -o $T/q.gguf --method rtn --bits 4 --threads 2 --json >$T/q.json" \
    || bad "quantize on a terminal: $(head -3 "$T/q.tty")"
  grep -q "moetool quantize: matrix 96/96 (100%), layer 4/4" "$T/q.tty" && ok \
    || bad "quantize on a terminal shows no 'matrix 96/96': $(head -3 "$T/q.tty")"
  grep -q "moetool quantize: matrix [0-9]*/96 ([0-9]*%), layer 1/4.*ETA" "$T/q.tty" && ok || bad "quantize progress has no ETA: $(head -3 "$T/q.tty")"
  is_json "$T/q.json" && ok || bad "quantize --json stdout is not JSON with progress on: $(head -c 300 "$T/q.json")"
  rm -f "$T/q.gguf"
  on_tty "$T/qq.tty" "$B quantize $M -o $T/q.gguf --method rtn --bits 4 --threads 2 --json --quiet >$T/qq.json" \
    || bad "quantize --quiet failed: $(head -3 "$T/qq.tty")"
  grep -q "layer" "$T/qq.tty" && bad "quantize --quiet printed progress: $(head -3 "$T/qq.tty")" || ok
  is_json "$T/qq.json" && ok || bad "quantize --quiet --json stdout is not JSON"
  rm -f "$T/q.gguf"
  # eval: windows done/total with the running perplexity, as llama-perplexity.
  on_tty "$T/e.tty" "$B eval $M --max-windows 3 --threads 2 --json >$T/e.json" || bad "eval on a terminal: $(head -3 "$T/e.tty")"
  for w in 1 2 3; do
    grep -q "moetool eval: window $w/3 ([0-9]*%), ppl [0-9][0-9.]*" "$T/e.tty" && ok || bad "eval shows no window $w/3: $(head -3 "$T/e.tty")"
  done
  is_json "$T/e.json" && ok || bad "eval --json stdout is not JSON"
  # the last running perplexity is the one reported
  python3 - "$T/e.tty" "$T/e.json" <<'PY' && ok || bad "eval's last progress ppl differs from the result"
import json, re, sys
shown = [float(x) for x in re.findall(r"window 3/3 \(100%\), ppl ([0-9.]+)", open(sys.argv[1]).read())]
ppl = json.load(open(sys.argv[2]))["ppl"]
sys.exit(0 if shown and abs(shown[-1] - ppl) <= 1e-3 * ppl else 1)
PY
  on_tty "$T/eq.tty" "$B eval $M --max-windows 3 --threads 2 --quiet >/dev/null" || bad "eval --quiet failed"
  grep -q "window" "$T/eq.tty" && bad "eval --quiet printed progress" || ok
  on_tty "$T/c.tty" "$B convert $M -o $T/c.gguf --quiet" || bad "convert --quiet failed: $(head -3 "$T/c.tty")"
  grep -q "MiB (" "$T/c.tty" && bad "convert --quiet printed progress" || ok
else
  echo "note: no script(1) pseudo-terminal: terminal checks skipped"
fi

# Not a terminal: a job of more than ~2 s (GPTQ) prints plain lines naming
# the layer, no more than one per 2 s plus the last; --quiet none.
t0=$(date +%s.%N)
"$BIN" quantize "$MODEL" -o "$T/g.gguf" --bits 4 --calib-tokens 16384 --threads 2 --json >"$T/g.json" 2>"$T/g.err" \
  || bad "gptq quantize failed: $(head -3 "$T/g.err")"
secs=$(python3 -c "import sys; print(int(float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)")
is_json "$T/g.json" && ok || bad "gptq --json stdout is not JSON"
grep -q $'\r' "$T/g.err" && bad "progress off a terminal uses \\r" || ok
n=$(grep -c "^moetool quantize: matrix [0-9]*/96 ([0-9]*%), layer [1-4]/4" "$T/g.err")
if [ "$secs" -ge 3 ]; then
  [ "$n" -ge 1 ] && ok || bad "quantize ran ${secs} s and printed no progress line off a terminal"
  grep -q "^moetool quantize: matrix 96/96 (100%), layer 4/4.*done in" "$T/g.err" && ok || bad "no final progress line: $(cat "$T/g.err")"
fi
[ "$n" -le $((secs / 2 + 2)) ] && ok || bad "$n progress lines in ${secs} s: more than one per 2 s"
rm -f "$T/g.gguf"
"$BIN" quantize "$MODEL" -o "$T/g.gguf" --bits 4 --calib-tokens 16384 --threads 2 --quiet >/dev/null 2>"$T/gq.err" \
  || bad "gptq quantize --quiet failed"
[ -s "$T/gq.err" ] && bad "quantize --quiet wrote to stderr: $(head -2 "$T/gq.err")" || ok
# A quick job off a terminal prints nothing but its result.
"$BIN" eval "$MODEL" --max-windows 3 --threads 2 --json >"$T/e2.json" 2>"$T/e2.err" || bad "eval failed"
[ -s "$T/e2.err" ] && bad "quick eval printed on stderr: $(head -2 "$T/e2.err")" || ok
for v in quantize merge eval convert; do
  "$BIN" $v --help | grep -q -- "--quiet" && ok || bad "$v --help lacks --quiet"
done

echo "cli_progress: $passes passed, $fails failed"
[ "$fails" = 0 ]
