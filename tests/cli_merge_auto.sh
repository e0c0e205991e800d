#!/usr/bin/env bash
# merge --method auto (the default) against separate runs: for every
# candidate it reports, `merge --method X --calib-tokens <fit tokens>` then
# `eval --skip-tokens <S> --max-windows <held-out windows> --ref MODEL` on the
# calibration text must give the same held-out perplexity and KL; the method
# auto wrote must be the argmin of those perplexities, and its safetensors
# must be byte-identical to the separate run of that method. Run on the
# bundled model and on a small random top-1 model (with --router alias, where
# only merging methods are candidates); with --heldout FILE the separate
# runs fit on every calibration token and eval scores FILE's first windows. One calibration window: reap-merge,
# with a note. Bad combinations exit 2, no output.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
if ! command -v python3 >/dev/null || ! python3 -c "import numpy" 2>/dev/null; then
  echo "skipped: python3 with numpy needed"; exit 77
fi
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval('d' + sys.argv[2]))" "$@"; }

# check_auto NAME MODEL CALIB EXPECTED_CANDIDATES AUTO_ARGS ARGS...: auto
# (with ARGS and AUTO_ARGS), then every candidate separately (with ARGS)
check_auto() {
  local name=$1 model=$2 calib=$3 want=$4 auto_args=$5
  shift 5
  local d="$T/$name"
  mkdir -p "$d"
  "$BIN" merge "$model" -o "$d/auto" --calib "$calib" "$@" $auto_args --json >"$d/auto.json" 2>"$d/err" \
    || { bad "$name: merge auto: $(cat "$d/err")"; return; }
  grep -q "<- written" "$d/err" && ok || bad "$name: no candidate table on stderr"
  local fit skip nh win chosen cands
  fit=$(jget "$d/auto.json" "['fit_tokens']"); skip=$(jget "$d/auto.json" "['auto']['heldout_skip_tokens']")
  nh=$(jget "$d/auto.json" "['auto']['heldout_windows']"); win=$(jget "$d/auto.json" "['auto']['window']")
  chosen=$(jget "$d/auto.json" "['auto']['chosen']")
  cands=$(python3 -c "import json,sys; print(' '.join(c['method'] for c in json.load(open(sys.argv[1]))['auto']['candidates']))" "$d/auto.json")
  [ "$cands" = "$want" ] && ok || bad "$name: candidates '$cands', expected '$want'"
  [ "$(jget "$d/auto.json" "['method']")" = "$chosen" ] && ok || bad "$name: method != auto.chosen"
  : >"$d/sep.txt"
  for m in $cands; do
    "$BIN" merge "$model" -o "$d/$m" --calib "$calib" "$@" --method "$m" --calib-tokens "$fit" --quiet >/dev/null \
      2>"$d/err" || { bad "$name: merge --method $m: $(cat "$d/err")"; continue; }
    "$BIN" eval "$d/$m" --text "${ETEXT:-$calib}" --ctx "$win" --skip-tokens "$skip" --max-windows "$nh" --ref "$model" \
      --json --quiet >"$d/e.json" 2>"$d/err" || { bad "$name: eval $m: $(cat "$d/err")"; continue; }
    echo "$m $(jget "$d/e.json" "['ppl']") $(jget "$d/e.json" "['kl_mean']") $(jget "$d/e.json" "['windows']")" >>"$d/sep.txt"
  done
  python3 - "$d/auto.json" "$d/sep.txt" "$nh" <<'PY' && ok || bad "$name: auto's table or choice disagrees with separate runs"
import json, sys
a = json.load(open(sys.argv[1]))
sep = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in open(sys.argv[2]) if l.strip()}
cands = a["auto"]["candidates"]
assert sorted(sep) == sorted(c["method"] for c in cands), (sep, cands)
for c in cands:
    ppl, kl, win = sep[c["method"]]
    assert int(win) == int(sys.argv[3]), (c, win)
    assert abs(ppl - c["heldout_ppl"]) <= 1e-5 * ppl, (c, ppl)
    assert abs(kl - c["heldout_kl"]) <= 1e-5 * max(kl, 1e-3), (c, kl)
best = min(cands, key=lambda c: sep[c["method"]][0])  # min keeps the first of equals, as auto does
assert a["auto"]["chosen"] == best["method"], (a["auto"]["chosen"], sep)
PY
  for f in "$d/$chosen"/*.safetensors; do
    cmp -s "$f" "$d/auto/$(basename "$f")" && ok || bad "$name: $(basename "$f") differs from --method $chosen"
  done
  python3 - "$d/auto/config.json" "$chosen" "$fit" <<'PY' && ok || bad "$name: provenance of the auto output"
import json, sys
o = json.load(open(sys.argv[1]))["moetool"]["options"]
assert o["method"] == sys.argv[2] and o["selection"] == "auto" and o["fit_tokens"] == int(sys.argv[3]), o
assert sys.argv[2] in o["heldout_ppl"], o
PY
  # only the chosen output is left beside the separate runs
  [ "$(ls -A "$d" | grep -c '^\.')" = 0 ] && ok || bad "$name: candidate directories left: $(ls -A "$d")"
}

check_auto bundled "$MODEL" "$MODEL/data/train.txt" "prune average frequency hc-smoe mc-smoe reap reap-merge naee" \
  "" --experts 6 --calib-tokens 2048 --sample 512 --threads 2

# a small random model of another shape (4 experts, top-1) with the bundled tokenizer
python3 "$SRC/tests/make_checkpoint.py" "$T/smallmodel" --custom --hidden 64 --ffn 96 --layers 2 --heads 4 --kv-heads 2 \
  --experts 4 --topk 1 --vocab 4096 --dtype bf16 >/dev/null || bad "make_checkpoint"
cp "$MODEL/tokenizer.model" "$T/smallmodel/"
check_auto small "$T/smallmodel" "$MODEL/data/train.txt" "average frequency hc-smoe mc-smoe reap-merge" \
  "--heldout-windows 2" --experts 2 --router alias --calib-tokens 1024 --sample 256 --threads 2

# --heldout FILE: the candidates are measured on FILE's first windows (eval
# --text FILE scores the same ones), every calibration window fits them
ETEXT="$MODEL/data/test.txt" check_auto heldout "$T/smallmodel" "$MODEL/data/train.txt" \
  "average frequency hc-smoe mc-smoe reap-merge" "--heldout $MODEL/data/test.txt --heldout-windows 2" \
  --experts 2 --router alias --calib-tokens 1024 --sample 256 --threads 2
[ "$(jget "$T/heldout/auto.json" "['fit_tokens']")" = 1024 ] && [ "$(jget "$T/heldout/auto.json" "['auto']['heldout_skip_tokens']")" = 0 ] \
  && ok || bad "--heldout: fit tokens or skip wrong: $(cat "$T/heldout/auto.json")"

# one calibration window: nothing to hold out, auto writes reap-merge and says so
"$BIN" merge "$MODEL" -o "$T/one" --experts 6 --calib-tokens 256 --sample 128 --threads 2 --json >"$T/one.json" 2>"$T/err" \
  || bad "auto over one window: $(cat "$T/err")"
grep -q "none can be held out" "$T/err" && [ "$(jget "$T/one.json" "['method']")" = reap-merge ] && ok \
  || bad "auto over one window: no note or not reap-merge: $(cat "$T/err")"
"$BIN" merge "$MODEL" -o "$T/onerm" --experts 6 --calib-tokens 256 --sample 128 --threads 2 --method reap-merge --quiet \
  >/dev/null 2>&1 && cmp -s "$T/one/model.safetensors" "$T/onerm/model.safetensors" && ok \
  || bad "auto over one window differs from --method reap-merge"

# bad combinations: usage errors, no output
"$BIN" merge "$MODEL" -o "$T/x" --experts 6 --method prune --heldout-windows 2 --calib-tokens 1024 >/dev/null 2>"$T/err"
[ $? = 2 ] && grep -q "auto only" "$T/err" && [ ! -e "$T/x" ] && ok || bad "--heldout-windows with an explicit method: $(cat "$T/err")"
"$BIN" merge "$MODEL" -o "$T/x" --experts 6 --method prune --heldout "$MODEL/data/test.txt" --calib-tokens 1024 >/dev/null 2>"$T/err"
[ $? = 2 ] && grep -q "auto only" "$T/err" && [ ! -e "$T/x" ] && ok || bad "--heldout with an explicit method: $(cat "$T/err")"
printf 'and\n' >"$T/short.txt"
"$BIN" merge "$MODEL" -o "$T/x" --experts 6 --heldout "$T/short.txt" --calib-tokens 1024 >/dev/null 2>"$T/err"
[ $? = 2 ] && grep -q "short.txt: .* less than one held-out window" "$T/err" && [ ! -e "$T/x" ] && ok || bad "short --heldout: $(cat "$T/err")"
"$BIN" merge "$MODEL" -o "$T/x" --experts 6 --calib-tokens 512 --heldout-windows 2 >/dev/null 2>"$T/err"
[ $? = 2 ] && grep -q "at least one must be left to fit" "$T/err" && [ ! -e "$T/x" ] && ok \
  || bad "all windows held out: $(cat "$T/err")"

echo "cli_merge_auto: $passes passed, $fails failed"
[ "$fails" = 0 ]
