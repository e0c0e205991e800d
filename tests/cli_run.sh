#!/usr/bin/env bash
# `moetool run` contract: the demo recipe runs and its gates hold (exit 0)
# with the right models made; a rerun runs nothing; changing one step reruns
# it and what follows only; --force; a failing gate exits 3 with a table; a
# failing step exits 1; an interrupted run resumes to the same result; bad
# recipes exit 2 with file:line:col and nothing run.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
SRC=${MT_SOURCE_DIR:-.}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
PY=python3
# ran STEP... / cached STEP...: what the last run's stderr says of each step
ran() { for s in "$@"; do grep -q "^moetool run: $s ([a-z]*): running" "$T/err" || { bad "step $s did not run"; return 1; }; done; }
cached() { for s in "$@"; do grep -q "^moetool run: $s ([a-z]*): cached" "$T/err" || { bad "step $s was not cached"; return 1; }; done; }

# ---- 1. the demo recipe, as shipped: gates hold
W="$T/w"
t0=$(date +%s)
"$BIN" run "$SRC/recipes/demo.yaml" --workdir "$W" >"$T/out" 2>"$T/err"; rc=$?
t1=$(date +%s)
echo "demo recipe: exit $rc in $((t1 - t0)) s"
[ $rc = 0 ] && ok || { bad "demo recipe exit $rc"; cat "$T/err"; }
ran merged q4 score && ok
for f in summary.json report.md report.html; do [ -s "$W/$f" ] && ok || bad "$f not written"; done
# the models are what the steps say: 6 experts per layer, Q4_0 experts
OUTQ=$(ls -d "$W"/steps/q4-*/model.gguf)
"$BIN" inspect "$OUTQ" --json >"$T/i.json" 2>/dev/null
$PY - "$T/i.json" "$W/summary.json" <<'EOF' && ok || bad "demo outputs or gate values wrong"
import json, sys
i = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
txt = json.dumps(i)
assert '"q4_0"' in txt, "no q4_0 tensors"
cfg = i.get("config", i.get("architecture", {}))
ne = [v for k, v in cfg.items() if k in ("n_experts", "experts", "num_local_experts")]
assert ne and ne[0] == 6, f"experts {ne}"
steps = {st["name"]: st for st in s["steps"]}
r = steps["score"]["result"]
g = {x["metric"]: x for x in s["gates"]}
assert abs(g["perplexity_ratio"]["value"] - r["ppl"] / r["ref_ppl"]) < 1e-9
assert abs(g["kl"]["value"] - r["kl_mean"]) < 1e-12 and abs(g["top1"]["value"] - r["top1_agree"]) < 1e-12
assert all(x["pass"] for x in s["gates"]) and s["exit_code"] == 0
assert steps["q4"]["command"][0] == "quantize" and "--bits" in steps["q4"]["command"]
print("demo: ppl ratio %.4f, KL %.4f, top-1 %.4f" % (g["perplexity_ratio"]["value"], r["kl_mean"], r["top1_agree"]))
EOF
grep -q "<svg" "$W/report.html" && grep -q 'class="point"' "$W/report.html" && grep -q 'class="routing"' "$W/report.html" && ok || bad "report.html lacks its plots"

# large input files' digests are remembered; they are SHA-256 as coreutils computes it
S1=$(ls "$MODEL"/*00001-of-*.safetensors)
want=$(sha256sum "$S1" | cut -d' ' -f1)
grep -q " $want\$" "$W/file-hashes" && ok || bad "file-hashes lacks the SHA-256 of $S1 ($want): $(cat "$W/file-hashes" 2>&1)"

# ---- 2. rerun: every step cached, nothing runs, same summary gates
cp "$W/summary.json" "$T/s1.json"
"$BIN" run "$SRC/recipes/demo.yaml" --workdir "$W" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 0 ] && cached merged q4 score && ! grep -q running "$T/err" && ok || { bad "rerun not cached (exit $rc)"; cat "$T/err"; }

# ---- 3. a changed step reruns itself and what follows only
sed -e "s|\.\./models/kjv-mixtral-15m|$MODEL|g" "$SRC/recipes/demo.yaml" >"$T/d.yaml"
"$BIN" run "$T/d.yaml" --workdir "$W" >"$T/out" 2>"$T/err"
cached merged q4 score && ok   # same content, other spelling of the paths: same keys
sed -e 's/      bits: 4/      bits: 8/' "$T/d.yaml" >"$T/d8.yaml"
"$BIN" run "$T/d8.yaml" --workdir "$W" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 0 ] && cached merged && ran q4 score && ok || { bad "changed step: exit $rc"; cat "$T/err"; }

# ---- 4. --force STEP reruns it and its readers
"$BIN" run "$T/d8.yaml" --workdir "$W" --force q4 >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 0 ] && cached merged && ran q4 score && ok || { bad "--force q4: exit $rc"; cat "$T/err"; }
"$BIN" run "$T/d8.yaml" --workdir "$W" --force nosuch >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "names no step" "$T/err" && ok || bad "--force nosuch: exit $rc"

# ---- 4b. a work directory holding other files is refused; they stay untouched
mkdir -p "$T/mine"; echo "my notes" >"$T/mine/report.md"
"$BIN" run "$T/d.yaml" --workdir "$T/mine" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "did not write" "$T/err" && [ "$(cat "$T/mine/report.md")" = "my notes" ] && [ ! -e "$T/mine/steps" ] \
  && ok || { bad "foreign work directory: exit $rc"; cat "$T/err"; }

# ---- 4c. a second run on a work directory in use stops at once (exit 1), touching nothing
if command -v flock >/dev/null; then
  ls -lR "$W" >"$T/before"
  flock -o "$W/.moetool-run" sleep 30 & holder=$!
  sleep 0.5
  "$BIN" run "$T/d.yaml" --workdir "$W" --force q4 >"$T/out" 2>"$T/err"; rc=$?
  kill $holder 2>/dev/null; wait $holder 2>/dev/null
  ls -lR "$W" >"$T/after"
  [ $rc = 1 ] && grep -q "another moetool run is using" "$T/err" && cmp -s "$T/before" "$T/after" \
    && ok || { bad "locked work directory: exit $rc"; cat "$T/err"; }
fi

# ---- 5. a gate that fails: exit 3, a table saying by how much; --json summary on stdout
sed -e 's/{metric: kl, max: 0.5}/{metric: kl, max: 0.0001}/' "$T/d.yaml" >"$T/fail.yaml"
"$BIN" run "$T/fail.yaml" --workdir "$W" --json >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 3 ] && ok || { bad "failing gate: exit $rc (want 3)"; cat "$T/err"; }
grep -q "^kl .*FAIL by +" "$T/err" && grep -q "a gate failed" "$T/err" && ok || { bad "no gate table"; cat "$T/err"; }
$PY -c "import json,sys; s=json.load(open(sys.argv[1])); assert s['exit_code']==3 and not [g for g in s['gates'] if g['metric']=='kl'][0]['pass']" "$T/out" && ok || bad "--json summary wrong"
cached merged q4 score && ok

# ---- 5b. gates on named texts: each reads the eval step of its text
$PY - "$T/d.yaml" "$T/texts.yaml" "$MODEL" <<'EOF'
import sys
src, dst, model = sys.argv[1:4]
y = open(src).read()
head, gates = y.split("gates:")
head = head.replace("steps:", "texts:\n  heldout: %s/data/test.txt\n  calib: %s/data/train.txt\n\nsteps:" % (model, model), 1)
head = head.replace("text: %s/data/test.txt" % model, "text: ${texts.heldout}")
head += ("  - name: score-calib\n    model: ${q4.output}\n    eval:\n      ref: ${model}\n"
         "      text: ${texts.calib}\n      ctx: 128\n      max_windows: 4\n      threads: 2\n\n")
gates = ("gates:\n  - {metric: perplexity, text: calib, max: 1000}\n  - {metric: perplexity, text: heldout, max: 1000}\n"
         "  - {metric: kl, text: calib, max: 5}\n")
open(dst, "w").write(head + gates)
EOF
"$BIN" run "$T/texts.yaml" --workdir "$W" --json >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 0 ] && cached merged q4 score && ran score-calib && ok || { bad "named texts: exit $rc"; cat "$T/err"; }
$PY - "$T/out" <<'EOF' && ok || bad "gates on named texts read the wrong step"
import json, sys
s = json.load(open(sys.argv[1]))
steps = {st["name"]: st for st in s["steps"]}
g = s["gates"]
assert [x.get("text") for x in g] == ["calib", "heldout", "calib"], g
assert [x["step"] for x in g] == ["score-calib", "score", "score-calib"], g
assert g[0]["value"] == steps["score-calib"]["result"]["ppl"] and g[1]["value"] == steps["score"]["result"]["ppl"]
assert g[0]["value"] != g[1]["value"]
assert g[2]["value"] == steps["score-calib"]["result"]["kl_mean"]
EOF
grep -q "score-calib (text calib)" "$W/report.md" && ok || bad "report.md does not name the gate's text"

# ---- 6. a failing step: exit 1 naming the step and its log
sed -e 's/      experts: 6/      layers: "0-9:6"/' "$T/d.yaml" >"$T/stepfail.yaml"
"$BIN" run "$T/stepfail.yaml" --workdir "$W" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 1 ] && grep -q "step 'merged' (merge) failed with exit 2: .*log:" "$T/err" && ok || { bad "failing step: exit $rc"; cat "$T/err"; }
! grep -q "q4 (quantize): running" "$T/err" && ok || bad "a step after a failed one ran"

# ---- 7. interrupted during a step, then rerun: completes with the same result
W2="$T/w2"
"$BIN" run "$T/d8.yaml" --workdir "$W2" >"$T/out" 2>"$T/err" &
pid=$!
for _ in $(seq 1 600); do grep -q "q4 (quantize): running" "$T/err" 2>/dev/null && break; sleep 0.1; done
sleep 0.5
kill -TERM $pid; wait $pid; rc=$?   # (INT is ignored by background jobs of a script)
[ $rc = 1 ] && grep -q "interrupted during step 'q4'" "$T/err" && ok || { bad "interrupted run: exit $rc"; cat "$T/err"; }
ls "$W2"/steps/q4-*/done.json >/dev/null 2>&1 && bad "interrupted step marked done" || ok
ls "$W2"/steps/q4-*/model.gguf >/dev/null 2>&1 && bad "interrupted step left an output" || ok
"$BIN" run "$T/d8.yaml" --workdir "$W2" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 0 ] && cached merged && ran q4 score && ok || { bad "resume: exit $rc"; cat "$T/err"; }
"$BIN" run "$T/d8.yaml" --workdir "$W" >"$T/out" 2>/dev/null
$PY - "$W/summary.json" "$W2/summary.json" <<'EOF' && ok || bad "resumed run differs from the uninterrupted one"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
# Identical, except that the outputs record their command line and source
# (config.json / moetool.provenance), whose paths name the two work
# directories: sizes may differ by those bytes.
ga = [(g["metric"], g["value"]) for g in a["gates"]]; gb = [(g["metric"], g["value"]) for g in b["gates"]]
assert [m for m, _ in ga] == [m for m, _ in gb], (ga, gb)
for (m, x), (_, y) in zip(ga, gb):
    assert (abs(x - y) * 1048576 <= 1024) if m == "size_mib" else x == y, (m, x, y)
assert [s["key"] for s in a["steps"]] == [s["key"] for s in b["steps"]]
EOF

# ---- 8. bad recipes: exit 2, file:line:col, nothing run
printf 'version: 1\nmodel: %s\nsteps:\n  - name: m\n    merge: {experts: 6, calib_tokns: 512}\n' "$MODEL" >"$T/b1.yaml"
"$BIN" run "$T/b1.yaml" --workdir "$T/wb" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b1.yaml:5:25: merge has no option 'calib_tokns'; did you mean 'calib-tokens'?" "$T/err" && [ ! -e "$T/wb" ] && ok ||
  { bad "misspelled key: exit $rc"; cat "$T/err"; }
printf 'version: 1\nmodel: %s/nope\nsteps:\n  - name: m\n    eval: {}\n' "$T" >"$T/b2.yaml"
"$BIN" run "$T/b2.yaml" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b2.yaml:2:8: model .*nope does not exist" "$T/err" && ok || { bad "missing model: exit $rc"; cat "$T/err"; }
printf 'version: 1\nmodel: %s\nsteps:\n  - name: m\n    eval: {}\n' "$SRC/README.md" >"$T/b3.yaml"
"$BIN" run "$T/b3.yaml" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b3.yaml:2:8: model .*README.md: " "$T/err" && ok || { bad "not a model: exit $rc"; cat "$T/err"; }
sed -e 's/      experts: 6/      experts: 9/' "$T/d.yaml" >"$T/b4.yaml"   # more than the model has
"$BIN" run "$T/b4.yaml" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b4.yaml:16:16: merge: experts 9 does not fit the base model (8 experts, top-2)" "$T/err" && ok || { bad "experts 9: exit $rc"; cat "$T/err"; }
printf 'version: 1\nmodel: %s\nsteps:\n  - name: e\n    eval: {ref: %s}\n' "$MODEL" "$T/small" >"$T/b5.yaml"
mkdir -p "$T/small" && $PY - "$MODEL/config.json" "$T/small/config.json" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1])); c["vocab_size"] = 32000; json.dump(c, open(sys.argv[2], "w"))
EOF2
for f in "$MODEL"/*.safetensors "$MODEL"/*.json; do [ -e "$T/small/$(basename "$f")" ] || ln -s "$f" "$T/small/"; done
"$BIN" run "$T/b5.yaml" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b5.yaml:5:17: .*small has a vocabulary of 32000 tokens, the base model .* one of 4096" "$T/err" && ok || { bad "ref of another vocabulary: exit $rc"; cat "$T/err"; }
# same vocabulary size, another tokenizer (one piece changed): refused by --dry-run
mkdir -p "$T/tok" && cp "$MODEL"/*.json "$MODEL"/tokenizer.model "$T/tok/" && for f in "$MODEL"/*.safetensors; do ln -s "$f" "$T/tok/"; done
$PY - "$T/tok/tokenizer.model" <<'EOF2'
import sys
p = sys.argv[1]; b = open(p, "rb").read(); old = "\u2581the".encode()
i = b.index(old); open(p, "wb").write(b[:i] + "\u2581thx".encode() + b[i + len(old):])
EOF2
printf 'version: 1\nmodel: %s\nsteps:\n  - name: e\n    eval: {ref: %s}\n' "$MODEL" "$T/tok" >"$T/b6.yaml"
"$BIN" run "$T/b6.yaml" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b6.yaml:5:17: .*tok has a different tokenizer: token [0-9]* is '.thx', in the base model '.the'" "$T/err" && ok || { bad "ref with another tokenizer: exit $rc"; cat "$T/err"; }
# a distill student of another shape (heads): refused by --dry-run
mkdir -p "$T/shape" && $PY - "$MODEL/config.json" "$T/shape/config.json" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1])); c["num_attention_heads"] = c["num_key_value_heads"]; json.dump(c, open(sys.argv[2], "w"))
EOF2
for f in "$MODEL"/*.safetensors "$MODEL"/*.json "$MODEL"/tokenizer.model; do [ -e "$T/shape/$(basename "$f")" ] || ln -s "$f" "$T/shape/"; done
printf 'version: 1\nmodel: %s\nsteps:\n  - name: h\n    distill: {student: %s, tokens: 4096}\n' "$MODEL" "$T/shape" >"$T/b7.yaml"
"$BIN" run "$T/b7.yaml" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "b7.yaml:5:24: distill: student .*shape (mixtral, 4 layers, hidden 256, 2/2 heads) does not have the teacher's shape" "$T/err" && ok || { bad "student of another shape: exit $rc"; cat "$T/err"; }
"$BIN" run "$T/nosuch.yaml" >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 2 ] && grep -q "nosuch.yaml: No such file" "$T/err" && ok || bad "missing recipe: exit $rc"
"$BIN" run >"$T/out" 2>"$T/err"; [ $? = 2 ] && ok || bad "run without a recipe"
"$BIN" run --help | grep -q "exit codes: 0 every gate holds" && ok || bad "run --help"
# --dry-run prints the commands and runs nothing
"$BIN" run "$T/d8.yaml" --workdir "$T/wd" --dry-run >"$T/out" 2>"$T/err"; rc=$?
[ $rc = 0 ] && grep -q "^  moetool merge .* --experts 6" "$T/out" && [ ! -e "$T/wd" ] && ok || { bad "--dry-run: exit $rc"; cat "$T/out" "$T/err"; }

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
