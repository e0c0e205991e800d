#!/usr/bin/env bash
# eval --text of a Switch Transformers model: moetool builds T5
# span-corruption pairs from the text (windows, 15 % noise, mean span 3,
# sentinels from the top; docs/seq2seq.md). Checked against an independent
# python implementation of the same algorithm and generator (below), by
# properties of the pairs, and the loss against transformers':
#   - a random Switch (vocab 840, save_pretrained) with the unigram fixture
#     as spiece.model: with tokenizer_config.json's extra_ids 32 the
#     sentinels are <extra_id_0>, <extra_id_1>, ...; without it, the ids
#     above the tokenizer's, counting down from 839 (a vocabulary extended
#     for them, as tools/train_switch_kjv.py makes);
#   - eval --text T --save-pairs F (seeds 0 and 7, windows 64 and 20, a
#     short last window): F == the python pairs built from sentencepiece's
#     ids of T; every pair has the noise and span counts of T5's
#     random_spans_noise_mask, sentinels in order, and input + target give
#     the window back; seed 7 differs from seed 0;
#   - eval --text's nll_sum == eval --pairs F's == transformers' loss on F;
#   - --seed on a decoder-only model, a model without room for sentinels:
#     one line each.
# Skips (77) without python + torch + transformers + sentencepiece.
set -u
BIN=${MT_BIN:-build/cli/moetool}
SRC=${MT_SOURCE_DIR:-.}
PY=${MT_TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do
    if "$p" -c 'import torch, transformers, sentencepiece' >/dev/null 2>&1; then PY=$p; break; fi
  done
fi
if [ -z "$PY" ]; then echo "skipped: no python with torch, transformers and sentencepiece"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0; passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
TOK=$SRC/tests/data/tok
TXT=$SRC/models/kjv-mixtral-15m/data/test.txt

"$PY" - "$T" <<'PYEOF' 2>"$T/py.err" || { cat "$T/py.err"; echo "FAIL: writing the checkpoint"; exit 1; }
import os, sys, torch
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration
torch.manual_seed(0)
for d, v in (("sw", 840), ("swx", 840), ("full", 800)):
    cfg = SwitchTransformersConfig(vocab_size=v, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                   num_decoder_layers=2, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
                                   num_experts=4, expert_capacity=64, relative_attention_num_buckets=8,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    SwitchTransformersForConditionalGeneration(cfg).eval().save_pretrained(os.path.join(sys.argv[1], d))
PYEOF
for d in sw swx full; do cp "$TOK/unigram.model" "$T/$d/spiece.model"; done
echo '{"tokenizer_class": "T5Tokenizer", "extra_ids": 32}' >"$T/sw/tokenizer_config.json"

run() { # NAME MODEL ARGS...: eval --text, pairs saved to $T/NAME.jsonl, json to $T/NAME.json
  local name=$1 model=$2; shift 2
  "$BIN" eval "$model" --text "$TXT" --save-pairs "$T/$name.jsonl" --json --threads 1 "$@" >"$T/$name.json" 2>"$T/e" ||
    bad "eval --text $name: $(cat "$T/e")"
}
run s0 "$T/sw" --max-windows 30
run s7 "$T/sw" --max-windows 30 --seed 7
run w20 "$T/sw" --max-windows 25 --ctx 20 --seed 5
run x0 "$T/swx" --max-windows 30 --seed 2
# a text whose last window is short (233 tokens: 3 windows of 64 and one of 41)
head -c 700 "$TXT" >"$T/short.txt"
"$BIN" eval "$T/sw" --text "$T/short.txt" --save-pairs "$T/short.jsonl" --json --threads 1 >"$T/short.json" 2>"$T/e" ||
  bad "eval --text short: $(cat "$T/e")"

"$PY" - "$T" "$TOK/unigram.model" "$TXT" <<'PYEOF' 2>"$T/py.err"
import json, sys
import sentencepiece as spm
t, model, txt = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=model)
M = (1 << 64) - 1

class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M
    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

def segment(total, k, rng):  # k positive parts summing to total: k - 1 distinct cuts of 1..total-1
    a = list(range(1, total))
    for i in range(k - 1):
        j = i + rng.next() % (len(a) - i)
        a[i], a[j] = a[j], a[i]
    cuts = sorted(a[:k - 1])
    return [b - c for c, b in zip([0] + cuts, cuts + [total])]

def counts(n):  # T5 random_spans_noise_mask (numpy rounds half to even, as python's round)
    noise = min(max(round(n * 0.15), 1), n - 1)
    spans = max(round(noise / 3.0), 1)
    return noise, min(spans, noise, n - noise)

def pairs(ids, window, seed, sentinels, eos=1):
    rng, out = SplitMix64(seed), []
    wins = [ids[i:i + window] for i in range(0, len(ids), window)]
    for w in wins:
        if len(w) < 2:
            continue
        noise, spans = counts(len(w))
        nl, cl = segment(noise, spans, rng), segment(len(w) - noise, spans, rng)
        inp, tgt, i = [], [], 0
        for s in range(spans):
            inp += w[i:i + cl[s]]; i += cl[s]
            inp.append(sentinels[s]); tgt.append(sentinels[s])
            tgt += w[i:i + nl[s]]; i += nl[s]
        out.append((inp + [eos], tgt + [eos]))
    return out

text = open(txt, encoding="utf-8").read()
ids = sp.encode(text)
short = sp.encode(open(t + "/short.txt", encoding="utf-8").read())
extra = [sp.get_piece_size() + 31 - s for s in range(32)]   # <extra_id_0> = 831, ...
top = [839 - s for s in range(40)]                          # no extra_ids: 839, 838, ...
cases = {"s0": (ids[:30 * 64], 64, 0, extra), "s7": (ids[:30 * 64], 64, 7, extra),
         "w20": (ids[:25 * 20], 20, 5, extra), "x0": (ids[:30 * 64], 64, 2, top), "short": (short, 64, 0, extra)}
fails = 0
got_all = {}
for name, (toks, window, seed, sent) in cases.items():
    want = pairs(toks, window, seed, sent)
    got = [(p["input"], p["target"]) for p in map(json.loads, open(t + "/" + name + ".jsonl"))]
    got_all[name] = got
    if got != want:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
        print("FAIL: %s: moetool's pairs differ from the python implementation's (%d vs %d pairs, first at %s)"
              % (name, len(got), len(want), k))
        fails += 1
        continue
    # properties, on moetool's pairs
    wins = [toks[i:i + window] for i in range(0, len(toks), window) if len(toks[i:i + window]) >= 2]
    n_noise = n_all = 0
    for (inp, tgt), w in zip(got, wins):
        noise, spans = counts(len(w))
        ok = inp[-1] == 1 and tgt[-1] == 1 and len(tgt) - 1 - spans == noise and len(inp) - 1 - spans == len(w) - noise
        ok = ok and [x for x in inp if x in sent] == sent[:spans] and [x for x in tgt if x in sent] == sent[:spans]
        # the window back from input + target: each sentinel in the input replaced by its span
        spans_of, cur = {}, None
        for x in tgt[:-1]:
            if x in sent:
                cur = x; spans_of[x] = []
            else:
                spans_of[cur].append(x)
        back = []
        for x in inp[:-1]:
            back += spans_of[x] if x in sent else [x]
        ok = ok and back == w and all(spans_of[s] for s in sent[:spans])
        if not ok:
            print("FAIL: %s: a pair breaks the span-corruption properties: %s %s" % (name, inp, tgt))
            fails += 1
            break
        n_noise += noise; n_all += len(w)
    print("%s: %d pairs equal to the python implementation's; noise %d of %d tokens (%.1f %%)"
          % (name, len(got), n_noise, n_all, 100.0 * n_noise / n_all))
if got_all.get("s0") == got_all.get("s7"):
    print("FAIL: seeds 0 and 7 gave the same pairs"); fails += 1
sh = got_all.get("short", [])
if len(short) % 64 < 2 or len(sh) != (len(short) + 63) // 64 or len(sh[-1][0]) + len(sh[-1][1]) - 2 - 2 * counts(len(short) % 64)[1] != len(short) % 64:
    print("FAIL: the short text's last window (%d of %d tokens) is not its last pair" % (len(short) % 64, len(short)))
    fails += 1
sys.exit(1 if fails else 0)
PYEOF
[ $? = 0 ] && ok || { tail -5 "$T/py.err"; bad "pairs against the python implementation"; }

# the loss: eval --text == eval --pairs of the saved pairs == transformers
"$BIN" eval "$T/sw" --pairs "$T/s0.jsonl" --json --threads 1 >"$T/p0.json" 2>"$T/e" || bad "eval --pairs: $(cat "$T/e")"
"$PY" - "$T" <<'PYEOF' 2>"$T/py.err" && ok || { tail -3 "$T/py.err"; bad "loss of eval --text"; }
import json, sys, torch
from transformers import SwitchTransformersForConditionalGeneration
t = sys.argv[1]
a, b = json.load(open(t + "/s0.json")), json.load(open(t + "/p0.json"))
m = SwitchTransformersForConditionalGeneration.from_pretrained(t + "/sw").eval()
nll = 0.0
for p in map(json.loads, open(t + "/s0.jsonl")):
    with torch.no_grad():  # cross-entropy of the logits (out.loss adds the router losses)
        out = m(input_ids=torch.tensor([p["input"]]), labels=torch.tensor([p["target"]]))
        nll += torch.nn.functional.cross_entropy(out.logits[0].double(), torch.tensor(p["target"]),
                                                 reduction="sum").item()
print("nll_sum: eval --text %.6f, eval --pairs %.6f, transformers %.6f; span_corruption %s"
      % (a["nll_sum"], b["nll_sum"], nll, a["span_corruption"]))
assert a["nll_sum"] == b["nll_sum"] and a["target_tokens"] == b["target_tokens"]
assert abs(a["nll_sum"] - nll) <= 1e-4 * nll
PYEOF

# bad input
"$BIN" eval "$T/full" --text "$TXT" --max-windows 2 >/dev/null 2>"$T/e"; rc=$?
[ $rc = 1 ] && [ "$(wc -l <"$T/e")" = 1 ] && grep -q "sentinels" "$T/e" && ok || bad "no room for sentinels: rc $rc $(cat "$T/e")"
"$BIN" eval --text "$TXT" --seed 3 --max-windows 1 >/dev/null 2>"$T/e"; rc=$?
[ $rc = 2 ] && grep -q -- "--seed" "$T/e" && ok || bad "--seed on a decoder-only model: rc $rc $(cat "$T/e")"
"$BIN" eval "$T/sw" --pairs "$T/s0.jsonl" --ctx 20 >/dev/null 2>"$T/e"; rc=$?
[ $rc = 2 ] && ok || bad "--ctx with --pairs: rc $rc $(cat "$T/e")"
# --save-pairs follows the output policy: an existing file moetool did not
# write is refused and left as it was (replaced only with --force), an input
# is never the output, and a completed write leaves no temporary beside it
echo keep >"$T/keep.jsonl"
"$BIN" eval "$T/sw" --text "$T/short.txt" --save-pairs "$T/keep.jsonl" >/dev/null 2>"$T/e"; rc=$?
[ $rc != 0 ] && grep -q -- "--force" "$T/e" && [ "$(cat "$T/keep.jsonl")" = keep ] && ok ||
    bad "--save-pairs over an existing file: rc $rc, now $(head -c 40 "$T/keep.jsonl") $(cat "$T/e")"
"$BIN" eval "$T/sw" --text "$T/short.txt" --save-pairs "$T/keep.jsonl" --force >/dev/null 2>"$T/e" &&
    cmp -s "$T/keep.jsonl" "$T/short.jsonl" && ok || bad "--save-pairs --force: $(cat "$T/e")"
cp "$T/short.txt" "$T/in.txt"
"$BIN" eval "$T/sw" --text "$T/in.txt" --save-pairs "$T/in.txt" --force >/dev/null 2>"$T/e"; rc=$?
[ $rc != 0 ] && cmp -s "$T/in.txt" "$T/short.txt" && ok || bad "--save-pairs onto the input text: rc $rc $(cat "$T/e")"
ls "$T" | grep -q '\.tmp-' && bad "a temporary was left: $(ls "$T" | grep '\.tmp-')" || ok

echo "cli_span_corrupt: $passes passed, $fails failed"
[ $fails = 0 ]
