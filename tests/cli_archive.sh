#!/usr/bin/env bash
# A model inside an archive, read in place (never unpacked to disk): the
# bundled model as .tar, .tar.gz, .tar.zst and .zip (one top-level folder)
# and a GGUF in a .tar give the directory's / the file's perplexity, tokens
# and greedy text; the writing verbs refuse an archive by name; hostile
# archives (.. paths, two model folders, duplicate names, nothing inside,
# truncated, a link named config.json) fail with one line, exit 1.
set -u
BIN=${MT_BIN:-build/cli/moetool}
MODEL=${MT_MODEL_DIR:-models/kjv-mixtral-15m}
TEXT=$MODEL/data/test.txt
if ! command -v python3 >/dev/null; then echo "skipped: python3 needed"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
ppl() { "$BIN" eval "$1" --text "$TEXT" --max-windows 4 --json --quiet 2>"$T/err" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])' 2>>"$T/err"; }

mkdir -p "$T/src/kjv"
cp "$MODEL"/*.json "$MODEL"/*.safetensors "$MODEL"/tokenizer.model "$T/src/kjv/"
python3 - "$T/src" "$T" <<'PY'
import os, sys, tarfile, zipfile
src, out = sys.argv[1], sys.argv[2]
for name, mode in (("m.tar", "w"), ("m.tar.gz", "w:gz")):
    with tarfile.open(os.path.join(out, name), mode) as t:
        t.add(os.path.join(src, "kjv"), arcname="kjv")
with zipfile.ZipFile(os.path.join(out, "m.zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for f in sorted(os.listdir(os.path.join(src, "kjv"))):
        z.write(os.path.join(src, "kjv", f), "kjv/" + f)
PY
kinds="m.tar m.tar.gz m.zip"
if command -v zstd >/dev/null; then (cd "$T/src" && tar --zstd -cf "$T/m.tar.zst" kjv) && kinds="$kinds m.tar.zst"; fi

want=$(ppl "$T/src/kjv")
want_gen=$("$BIN" generate "$T/src/kjv" -p "And God said" -n 12 2>/dev/null)
want_tok=$("$BIN" tokenize "$T/src/kjv" -p "In the beginning God" --json 2>/dev/null)
for k in $kinds; do
  got=$(ppl "$T/$k"); [ -n "$got" ] && [ "$got" = "$want" ] && ok || bad "$k: ppl '$got', directory $want: $(head -2 "$T/err")"
  [ "$("$BIN" generate "$T/$k" -p "And God said" -n 12 2>/dev/null)" = "$want_gen" ] && ok || bad "$k: greedy text differs"
  [ "$("$BIN" tokenize "$T/$k" -p "In the beginning God" --json 2>/dev/null)" = "$want_tok" ] && ok || bad "$k: tokens differ"
  "$BIN" inspect "$T/$k" --json >/dev/null 2>"$T/err" && ok || bad "$k: inspect: $(cat "$T/err")"
done

# an uncompressed tar is mapped, not copied: reading it costs about what the
# directory costs, while a compressed one holds the weights in memory (peak
# RSS of inspect over the directory's, GNU time). Also with pax and GNU long-name headers before
# the members (a folder name over 100 characters), where the data offsets
# move: the perplexity stays the directory's.
long=$(printf 'k%.0s' $(seq 1 120))
mkdir -p "$T/lsrc" && cp -r "$T/src/kjv" "$T/lsrc/$long"
(cd "$T/lsrc" && tar --format=gnu -cf "$T/gnu.tar" "$long" && tar --format=pax -cf "$T/pax.tar" "$long")
for k in gnu.tar pax.tar; do
  got=$(ppl "$T/$k"); [ -n "$got" ] && [ "$got" = "$want" ] && ok || bad "$k: ppl '$got', directory $want: $(head -2 "$T/err")"
done
if [ -x /usr/bin/time ]; then
  wsize=$(cat "$T/src/kjv"/*.safetensors | wc -c)
  rss() { /usr/bin/time -f %M "$BIN" inspect "$1" 2>&1 >/dev/null | tail -1; }
  base=$(rss "$T/src/kjv")   # the directory: what reading costs without a copy (KiB)
  for k in m.tar gnu.tar pax.tar; do
    r=$(rss "$T/$k"); [ -n "$r" ] && [ $(((r - base) * 1024)) -lt $((wsize / 4)) ] && ok \
      || bad "$k: inspect peak RSS ${r} KiB, directory ${base} KiB, weights $wsize bytes: copied, not mapped"
  done
  r=$(rss "$T/m.tar.gz"); [ -n "$r" ] && [ $(((r - base) * 1024)) -gt $((wsize / 2)) ] && ok \
    || bad "m.tar.gz: peak RSS ${r} KiB, directory ${base} KiB: the check cannot tell mapped from copied"
fi

# a GGUF in a tar
"$BIN" convert "$T/src/kjv" -o "$T/src/kjv.gguf" --quiet 2>/dev/null
(cd "$T/src" && tar cf "$T/g.tar" kjv.gguf)
a=$(ppl "$T/src/kjv.gguf"); b=$(ppl "$T/g.tar")
[ -n "$b" ] && [ "$a" = "$b" ] && ok || bad "GGUF in a tar: ppl '$b', file $a"

# the writing verbs refuse it, naming it; nothing written
for v in "convert -o $T/out.gguf" "quantize --method rtn --bits 4 -o $T/out.gguf" "merge --experts 6 --calib $TEXT -o $T/outdir"; do
  set -- $v
  verb=$1; shift
  "$BIN" $verb "$T/m.tar" "$@" >/dev/null 2>"$T/err"; rc=$?
  [ $rc = 1 ] && grep -q "m.tar: an archive is read in place.*unpack it to $verb" "$T/err" && [ ! -e "$T/out.gguf" ] && [ ! -e "$T/outdir" ] \
    && ok || bad "$verb of an archive: exit $rc, $(cat "$T/err")"
done

# hostile archives: one line, exit 1
python3 - "$T" <<'PY'
import io, os, sys, tarfile
out = sys.argv[1]
def tar(name, members, mode="w"):
    with tarfile.open(os.path.join(out, name), mode) as t:
        for arcname, data, kind in members:
            ti = tarfile.TarInfo(arcname)
            if kind == "link":
                ti.type = tarfile.SYMTYPE; ti.linkname = "/etc/passwd"
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
cfg = open(os.path.join(out, "src", "kjv", "config.json"), "rb").read()
tar("dotdot.tar", [("kjv/../../evil/config.json", cfg, "f")])
tar("abs.tar", [("/etc/config.json", cfg, "f")])
tar("two.tar", [("a/config.json", cfg, "f"), ("b/model.safetensors", b"x" * 16, "f")])
tar("dup.tar", [("kjv/config.json", cfg, "f"), ("kjv/config.json", cfg, "f")])
tar("empty.tar", [("kjv/README.md", b"hello", "f")])
tar("link.tar", [("kjv/config.json", b"", "link")])
data = open(os.path.join(out, "m.tar.gz"), "rb").read()
open(os.path.join(out, "trunc.tar.gz"), "wb").write(data[: len(data) // 2])
PY
expect1() { # pattern archive
  "$BIN" inspect "$T/$2" >/dev/null 2>"$T/err"; local rc=$?
  [ $rc = 1 ] && [ "$(wc -l <"$T/err")" = 1 ] && grep -q -- "$1" "$T/err" && ok || bad "$2: exit $rc: $(cat "$T/err")"
}
expect1 "'\.\.' component" dotdot.tar
expect1 "absolute path" abs.tar
expect1 "more than one directory" two.tar
expect1 "appears twice" dup.tar
expect1 "no model files" empty.tar
expect1 "no model files" link.tar
expect1 "trunc.tar.gz" trunc.tar.gz

echo "cli_archive: $passes passed, $fails failed"
[ $fails = 0 ]
