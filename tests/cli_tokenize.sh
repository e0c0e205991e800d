#!/usr/bin/env bash
# `moetool tokenize` against an independent tokenizer: the ids of every
# tokenizer case in the bundled model's reference.json (sentencepiece's own
# encoding) from the HF directory and from its GGUF (the GGUF's tokenizer),
# --decode giving the text back, and usage errors in one line, exit 2.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
if ! python3 -c "import json" 2>/dev/null; then echo "skipped: no python3"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

"$BIN" convert "$MODEL" -o "$T/m.gguf" --quiet >/dev/null 2>"$T/err" || { bad "convert: $(cat "$T/err")"; }
python3 - "$MODEL/reference.json" "$T/cases" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    for c in r["tokenizer_cases"]:
        f.write(json.dumps(c) + "\n")
PY
n=0
while IFS= read -r line; do
  n=$((n + 1))
  text=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["text"], end="")' "$line")
  want=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ids"])' "$line")
  for m in "$MODEL" "$T/m.gguf"; do
    got=$("$BIN" tokenize "$m" -p "$text" --no-bos --json 2>"$T/err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])' 2>>"$T/err")
    [ "$got" = "$want" ] && ok || bad "case $n on $m: ids $got, want $want $(head -2 "$T/err")"
  done
  # decode gives the text back (the BOS that tokenize adds by default included)
  ids=$("$BIN" tokenize "$MODEL" -p "$text" --json | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)["ids"])))')
  back=$("$BIN" tokenize "$MODEL" --decode "$ids" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["text"], end="")')
  [ "$back" = "$text" ] && ok || bad "case $n: --decode gave '$back', want '$text'"
done <"$T/cases"
[ "$n" -ge 3 ] && ok || bad "only $n tokenizer cases in reference.json"

# GGUF -> HF writes tokenizer.json: moetool's own reader of it (tokenizer.model
# removed) gives the same ids
"$BIN" convert "$T/m.gguf" -o "$T/back" --quiet >/dev/null 2>"$T/err" || bad "convert back: $(cat "$T/err")"
rm -f "$T/back/tokenizer.model"
while IFS= read -r line; do
  text=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["text"], end="")' "$line")
  want=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ids"])' "$line")
  got=$("$BIN" tokenize "$T/back" -p "$text" --no-bos --json 2>"$T/err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ids"])' 2>>"$T/err")
  [ "$got" = "$want" ] && ok || bad "tokenizer.json written from the GGUF: ids $got, want $want $(head -2 "$T/err")"
done <"$T/cases"

# BOS first by default; --file equals -p on the same text
first=$("$BIN" tokenize "$MODEL" -p "In the beginning" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ids"][0], d["pieces"][0])')
[ "$first" = "1 <s>" ] && ok || bad "first token '$first', want '1 <s>'"
printf 'And God said, Let there be light.' >"$T/t.txt"
a=$("$BIN" tokenize "$MODEL" --file "$T/t.txt" --json)
b=$("$BIN" tokenize "$MODEL" -p 'And God said, Let there be light.' --json)
[ "$a" = "$b" ] && ok || bad "--file and -p differ: $a / $b"

# usage errors: one line, exit 2
expect2() {
  "$BIN" tokenize "$@" >/dev/null 2>"$T/err"; local rc=$?
  [ $rc = 2 ] && [ "$(wc -l <"$T/err")" = 1 ] && ok || bad "tokenize $*: exit $rc, $(wc -l <"$T/err") lines: $(cat "$T/err")"
}
expect2 "$MODEL"
expect2 "$MODEL" -p x --decode 1
expect2 "$MODEL" --decode 4096
expect2 "$MODEL" --decode "1,x"
expect2 "$MODEL" --decode ""
expect2 "$MODEL" -p x --bogus
"$BIN" tokenize "$MODEL" --file "$T/missing.txt" >/dev/null 2>"$T/err"
[ $? = 1 ] && grep -q "missing.txt" "$T/err" && ok || bad "missing --file: $(cat "$T/err")"

echo "cli_tokenize: $passes passed, $fails failed"
[ $fails = 0 ]
