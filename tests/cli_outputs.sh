#!/usr/bin/env bash
# Outputs never destroy data (docs/outputs.md): an existing path is replaced
# only when moetool wrote it (or with --force), never through a symbolic link,
# never when it is, holds or lies inside an input; signals (SIGTERM, SIGHUP,
# SIGXFSZ) leave no temporary and exit 1 with one line; SIGKILL leaves a
# temporary that the next run for the same output removes, and the earlier
# output and the input stay intact. Checked against sha256 copies taken before.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
ITEM=setup
bad() { echo "FAIL [$ITEM]: $*"; fails=$((fails + 1)); }

# Copies of the bundled model: S is only read from; M is what the checks of
# items 2 and 3 point outputs at (a wrong binary damages it, not S).
S=$T/src M=$T/model
mkdir -p "$S" "$M" && cp -r "$MODEL"/. "$S"/ && cp -r "$MODEL"/. "$M"/
sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
sums "$S" >"$T/model.sum"
model_intact() { # DIR WHAT
  sums "$1" | cmp -s - "$T/model.sum" && ok || bad "$2 changed the input model"
}

# expect_refused NEEDLE CMD... : exit 2 and exactly one stderr line naming NEEDLE
expect_refused() {
  local needle=$1; shift
  "$@" >"$T/out" 2>"$T/err"; local got=$?
  if [ "$got" != 2 ]; then bad "exit $got (want 2): $*"; sed 's/^/    /' "$T/err" | head -3; return 1; fi
  if [ "$(wc -l <"$T/err")" != 1 ] || ! grep -qF -- "$needle" "$T/err"; then
    bad "want one line naming $needle: $*"; sed 's/^/    /' "$T/err" | head -3; return 1
  fi
  ok
}
expect_ok() {
  "$@" >"$T/out" 2>"$T/err" && ok || { bad "exit $? (want 0): $*"; sed 's/^/    /' "$T/err" | head -3; }
}
no_tmp() { # no temporary anywhere under the test directory
  local left; left=$(find "$T" -name '*.tmp-*' -o -name '*.old-*' | grep -v "$T/decoy" | head -3)
  [ -z "$left" ] && ok || bad "$*: temporaries left: $left"
}
QH=(--format hf --method gptq --bits 4 --calib-tokens 256 --threads 1)
MG=(--experts 6 --calib-tokens 256 --sample 128 --threads 1)

ITEM=1
# ---- 1. an existing directory (or a symbolic link) is not emptied
mkdir -p "$T/u/sub" && echo x >"$T/u/thesis.txt"
expect_refused "$T/u" "$BIN" convert "$S" -o "$T/u" --to hf
expect_refused "$T/u" "$BIN" quantize "$S" -o "$T/u" --format hf --method rtn --bits 4
expect_refused "$T/u" "$BIN" merge "$S" -o "$T/u" "${MG[@]}"
[ -f "$T/u/thesis.txt" ] && [ -d "$T/u/sub" ] && ok || bad "an existing directory lost its files"
mkdir "$T/t" && echo keep >"$T/t/k" && ln -s "$T/t" "$T/l" && ln -s "$T/t/k" "$T/lf.gguf"
expect_refused "$T/l" "$BIN" convert "$S" -o "$T/l" --to hf
expect_refused "$T/lf.gguf" "$BIN" convert "$S" -o "$T/lf.gguf"
expect_ok "$BIN" convert "$S" -o "$T/l" --to hf --force       # replaces the link itself
expect_ok "$BIN" convert "$S" -o "$T/lf.gguf" --force
[ ! -L "$T/l" ] && [ -f "$T/l/config.json" ] && [ ! -L "$T/lf.gguf" ] && ok || bad "--force on a link did not replace the link"
[ "$(ls "$T/t")" = k ] && [ "$(cat "$T/t/k")" = keep ] && ok || bad "a link's target was touched"
# a previous moetool output is replaced without --force; anything else needs it
expect_ok "$BIN" convert "$S" -o "$T/hf" --to hf
expect_ok "$BIN" convert "$S" -o "$T/hf" --to hf
expect_ok "$BIN" convert "$S" -o "$T/a.gguf"
expect_ok "$BIN" quantize "$S" -o "$T/a.gguf" --method rtn --bits 8
echo mine >"$T/hf/notes.txt"
expect_refused "notes.txt" "$BIN" convert "$S" -o "$T/hf" --to hf
[ -f "$T/hf/notes.txt" ] && ok || bad "a file added to an output directory was removed"
echo "not a model" >"$T/f.gguf"
expect_refused "$T/f.gguf" "$BIN" convert "$S" -o "$T/f.gguf"
expect_refused "$T/hf" "$BIN" convert "$S" -o "$T/hf" --to gguf   # a directory where a file goes
expect_ok "$BIN" convert "$S" -o "$T/f.gguf" --force
head -c 4 "$T/f.gguf" | grep -q GGUF && ok || bad "--force did not replace f.gguf"
"$BIN" convert --help | grep -q -- --force && "$BIN" quantize --help | grep -q -- --force &&
  "$BIN" merge --help | grep -q -- --force && ok || bad "--force missing from a verb's --help"

ITEM=2
# ---- 2. merge refuses to write over its input
expect_refused "would replace the input" "$BIN" merge "$M" -o "$M" "${MG[@]}"
expect_refused "would replace the input" "$BIN" merge "$M" -o "$M" "${MG[@]}" --force
model_intact "$M" "merge -o MODEL"
cp "$S/data/train.txt" "$T/calib.txt"
expect_refused "$T/calib.txt" "$BIN" merge "$S" -o "$T/calib.txt" --calib "$T/calib.txt" "${MG[@]}" --force
expect_refused "$T/calib.txt" "$BIN" quantize "$S" -o "$T/calib.txt" --calib "$T/calib.txt" --method gptq --force
mkdir "$T/cd" && cp "$S/data/train.txt" "$T/cd/c.txt"
expect_refused "$T/cd/c.txt" "$BIN" merge "$S" -o "$T/cd" --calib "$T/cd/c.txt" "${MG[@]}" --force
cmp -s "$T/calib.txt" "$S/data/train.txt" && cmp -s "$T/cd/c.txt" "$S/data/train.txt" && ok || bad "calibration text changed"

ITEM=3
# ---- 3. nor into (or over) a file of the input directory, by any path
rm -rf "$M" && mkdir "$M" && cp -r "$MODEL"/. "$M"/
expect_refused "model-00001-of-00002.safetensors" "$BIN" convert "$M" -o "$M/model-00001-of-00002.safetensors" --to gguf
expect_refused "config.json" "$BIN" quantize "$M" -o "$M/config.json" --method rtn --bits 4
expect_refused "$M" "$BIN" convert "$M" -o "$M/new.gguf" --force
ln -s "$M" "$T/ml"
expect_refused "$M" "$BIN" convert "$T/ml" -o "$M/x.gguf"
expect_refused "tokenizer.model" "$BIN" convert "$M" -o "$T/ml/tokenizer.model" --to gguf --force
mkdir "$T/hold" && cp -r "$S" "$T/hold/m"
expect_refused "$T/hold" "$BIN" convert "$T/hold/m" -o "$T/hold" --to hf --force   # holds the input
mkdir "$T/st" && cp "$S"/*.json "$S"/tokenizer.model "$T/st/" && cp "$S/model-00001-of-00002.safetensors" "$T/st/one.safetensors"
expect_refused "config.json" "$BIN" convert "$T/st/one.safetensors" -o "$T/st/config.json" --to gguf --force
model_intact "$M" "writing into the input directory"

ITEM=4
# ---- 4. SIGKILL during a directory output: the next run removes what it left,
# and nothing else (decoys: a live pid, another name, a directory with a subdirectory)
mkdir -p "$T/decoy/k4.tmp-1-abcdef/sub" && touch "$T/decoy/k4.tmp-notes" "$T/decoy/k4.tmp-$$-abcdef"
k4_left() { ls -d "$T"/decoy/k4.tmp-* | grep -v -e "k4.tmp-1-abcdef$" -e "k4.tmp-notes$" -e "k4.tmp-$$-abcdef$"; }
"$BIN" convert "$S" -o "$T/decoy/k4" --to hf --shard-size 1 2>/dev/null &
p=$!
while kill -0 $p 2>/dev/null && ! k4_left >/dev/null; do sleep 0.005; done
kill -9 $p 2>/dev/null; wait $p 2>/dev/null
k4_left >/dev/null && ok || bad "test setup: convert was not killed while writing"
expect_ok "$BIN" convert "$S" -o "$T/decoy/k4" --to hf --shard-size 1
k4_left >/dev/null && bad "a killed run's temporary was not removed: $(k4_left)" || ok
[ -d "$T/decoy/k4.tmp-1-abcdef/sub" ] && [ -f "$T/decoy/k4.tmp-notes" ] && [ -f "$T/decoy/k4.tmp-$$-abcdef" ] && ok ||
  bad "the sweep removed something that was not a dead moetool's temporary"

ITEM=5
# ---- 5. named temporaries (no O_TMPFILE) are removed on SIGTERM / SIGHUP
sig_case() { # SIG OUT CMD... : signalled once its temporary exists; exit 1, one line, nothing left
  local sig=$1 out=$2; shift 2
  MOETOOL_NO_O_TMPFILE=1 "$@" >/dev/null 2>"$T/sigerr" &
  local p=$!
  while kill -0 $p 2>/dev/null && ! compgen -G "$out.tmp-*" >/dev/null; do sleep 0.005; done
  kill -"$sig" $p; wait $p; local rc=$?
  # progress lines ("layer 2/4 (50%)") of a job that ran over 2 s may precede it
  [ $rc = 1 ] && [ "$(grep -cvE '^moetool [a-z]+: .* \([0-9]+%\)' "$T/sigerr")" = 1 ] && grep -q "$sig" "$T/sigerr" && ok ||
    { bad "SIG$sig: exit $rc (want 1 and one line naming the signal): $*"; head -3 "$T/sigerr"; }
  compgen -G "$out*" >/dev/null && bad "SIG$sig left $(ls -d "$out"*)" || ok
}
sig_case TERM "$T/k5.gguf" "$BIN" convert "$S" -o "$T/k5.gguf" --dtype f16
sig_case HUP "$T/k5b" "$BIN" convert "$S" -o "$T/k5b" --to hf --shard-size 1
sig_case TERM "$T/k5c" "$BIN" quantize "$S" -o "$T/k5c" "${QH[@]}"

ITEM=6
# ---- 6. the file size limit: a message, exit 1, nothing left
for out in k6 k6.gguf; do
  (ulimit -f 512; exec "$BIN" convert "$S" -o "$T/$out" --shard-size 1) >/dev/null 2>"$T/err"; rc=$?
  [ $rc = 1 ] && grep -q "file size limit" "$T/err" && ok || { bad "ulimit -f ($out): exit $rc"; head -3 "$T/err"; }
  compgen -G "$T/$out*" >/dev/null && bad "ulimit -f left $(ls -d "$T/$out"*)" || ok
done

ITEM=kill
# ---- kill test: SIGKILL each verb at several points; the earlier output stays
# as it was, a second run succeeds, leaves no temporary and writes the same bytes
kill_case() { # NAME DELAYS CMD... (CMD writes $T/NAME)
  local name=$1 delays=$2; shift 2
  local out=$T/$name hits=0
  env ${KENV:-} "$@" >/dev/null 2>&1 || { bad "$name: first run failed"; return; }
  sums "$out" >"$T/sum-$name" 2>/dev/null || sha256sum "$out" >"$T/sum-$name"
  for d in $delays; do
    env ${KENV:-} "$@" >/dev/null 2>&1 &
    local p=$!
    if [ "$d" = poll ]; then
      while kill -0 $p 2>/dev/null && ! compgen -G "$out.tmp-*" >/dev/null; do sleep 0.002; done
    else
      sleep "$d"
    fi
    kill -9 $p 2>/dev/null; wait $p 2>/dev/null
    compgen -G "$out.tmp-*" >/dev/null && hits=$((hits + 1))
    if [ -d "$out" ]; then sums "$out"; else sha256sum "$out"; fi | cmp -s - "$T/sum-$name" && ok ||
      bad "$name: killed at $d, the earlier output changed"
    env ${KENV:-} "$@" >/dev/null 2>"$T/err" && ok || { bad "$name: run after the kill at $d failed"; head -3 "$T/err"; }
    compgen -G "$out.tmp-*" >/dev/null || compgen -G "$out.old-*" >/dev/null &&
      bad "$name: temporaries left after the run that followed the kill at $d: $(ls -d "$out".tmp-* "$out".old-* 2>/dev/null)" || ok
    if [ -d "$out" ]; then sums "$out"; else sha256sum "$out"; fi | cmp -s - "$T/sum-$name" && ok ||
      bad "$name: the run after the kill at $d wrote different bytes"
  done
  [ -n "${NOHITS:-}" ] || [ $hits -gt 0 ] && ok || bad "$name: no kill landed while a temporary existed"
}
kill_case kc "poll 0.02 0.05" "$BIN" convert "$S" -o "$T/kc" --to hf --shard-size 1
KENV=MOETOOL_NO_O_TMPFILE=1 kill_case kg.gguf "poll 0.02 0.05" "$BIN" convert "$S" -o "$T/kg.gguf" --dtype f16
NOHITS=1 kill_case kg2.gguf "0.01 0.03" "$BIN" convert "$S" -o "$T/kg2.gguf"   # O_TMPFILE: nothing visible
kill_case kq "0.2 0.5 1 poll" "$BIN" quantize "$S" -o "$T/kq" "${QH[@]}"
kill_case km "0.2 0.5 1 poll" "$BIN" merge "$S" -o "$T/km" "${MG[@]}"
model_intact "$S" "the kill test"
no_tmp "the end"

echo "cli_outputs: $passes passed, $fails failed"
[ $fails = 0 ]
