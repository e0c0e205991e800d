#!/usr/bin/env bash
# report.html of `moetool run` in a real headless browser (Debian's
# chromium, installed by tools/install-deps.sh --all; skipped when absent):
# the page renders, and its plots are in the rendered DOM (the
# size-vs-perplexity points and the routing heat map cells), and a
# screenshot is produced.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$CHROME" ] || { echo "skip: no chromium"; exit 77; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

cat >"$T/r.yaml" <<YAML
version: 1
model: $MODEL
steps:
  - name: base
    eval: {ref: '\${model}', text: $MODEL/data/test.txt, ctx: 128, max_windows: 2, threads: 2}
gates:
  - {metric: perplexity_ratio, max: 1.001}
YAML
"$BIN" run "$T/r.yaml" --workdir "$T/w" >"$T/out" 2>"$T/err" && ok || { bad "run failed"; cat "$T/err"; }
HTML="$T/w/report.html"
FLAGS="--headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=$T/profile"
timeout 120 "$CHROME" $FLAGS --dump-dom "file://$HTML" >"$T/dom.html" 2>"$T/chrome.err" || { bad "chromium could not load the report"; tail -5 "$T/chrome.err"; }
grep -q '<svg id="size-ppl"' "$T/dom.html" && ok || bad "rendered DOM lacks the size/perplexity plot"
[ "$(grep -o 'class="point"' "$T/dom.html" | wc -l)" -ge 2 ] && ok || bad "plot lacks the model and base points"
[ "$(grep -o '<rect ' "$T/dom.html" | wc -l)" -ge 32 ] && ok || bad "routing heat map lacks its 4x8 cells"
grep -q 'id="gates"' "$T/dom.html" && ok || bad "gates table missing"
timeout 120 "$CHROME" $FLAGS --window-size=900,1200 --screenshot="$T/shot.png" "file://$HTML" >/dev/null 2>&1
[ -s "$T/shot.png" ] && ok || bad "no screenshot"

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
