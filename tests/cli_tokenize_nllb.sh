#!/usr/bin/env bash
# NLLB-MoE's tokenizer (sentencepiece BPE with fairseq's id layout and
# language codes) end to end, against transformers' NllbTokenizer (slow,
# sentencepiece-based; transformers 4.40.2, non-legacy):
#   - a random NllbMoeForConditionalGeneration (vocab 808, save_pretrained)
#     with tests/data/tok/nllb_bpe.model as sentencepiece.bpe.model and a
#     tokenizer_config.json whose added_tokens_decoder numbers the language
#     codes and <mask> in fairseq's layout, as the released NLLB files do;
#     a copy without tokenizer_config.json (moetool's default layout);
#   - tokenize -p LINE --src-lang L --json == NllbTokenizer(src_lang=L)(LINE)
#     .input_ids on a varied set (unicode, runs of whitespace, unknown
#     characters, language codes and specials in the text, test.txt lines,
#     random mixes), both directories; tokenize --decode of the ids ==
#     NllbTokenizer.decode(skip_special_tokens=True, no clean-up) on the lines
#     without unknown characters;
#   - eval --text (SOURCE<tab>TARGET) and eval --pairs with text ==
#     transformers' loss (labels = tokenizer(text_target=...)) and eval
#     --pairs with the python ids; generate -p --src-lang --tgt-lang == the
#     ids of transformers' greedy generate with forced_bos_token_id, and
#     its text == NllbTokenizer.decode of them;
#   - bad input: no --tgt-lang, an unknown code, --src-lang on a model
#     without codes, a truncated sentencepiece.bpe.model: one line, exit 1/2.
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

"$PY" - "$T" "$TOK/nllb_bpe.model" <<'PYEOF' 2>"$T/py.err" || { cat "$T/py.err"; echo "FAIL: writing the checkpoint"; exit 1; }
import json, os, shutil, sys, torch
from transformers import NllbMoeConfig, NllbMoeForConditionalGeneration
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as CODES
import sentencepiece as spm
t, model = sys.argv[1:3]
torch.manual_seed(0)
cfg = NllbMoeConfig(vocab_size=808, d_model=32, encoder_ffn_dim=48, decoder_ffn_dim=40, encoder_attention_heads=4,
                    decoder_attention_heads=2, num_experts=4, max_position_embeddings=512, dropout=0.0,
                    attention_dropout=0.0, activation_dropout=0.0, encoder_layers=2, decoder_layers=2,
                    encoder_sparse_step=2, decoder_sparse_step=2, decoder_start_token_id=2, pad_token_id=1,
                    eos_token_id=2, bos_token_id=0)
m = NllbMoeForConditionalGeneration(cfg).eval()
for d in ("nl", "nl0"):
    m.save_pretrained(os.path.join(t, d))
    shutil.copy(model, os.path.join(t, d, "sentencepiece.bpe.model"))
n = spm.SentencePieceProcessor(model_file=model).get_piece_size()
tok = lambda s, **k: dict(content=s, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True, **k)
atd = {"0": tok("<s>"), "1": tok("<pad>"), "2": tok("</s>"), "3": tok("<unk>")}
for i, c in enumerate(CODES):
    atd[str(n + 1 + i)] = tok(c)
atd[str(n + 1 + len(CODES))] = dict(tok("<mask>"), lstrip=True, normalized=True)
json.dump({"tokenizer_class": "NllbTokenizer", "added_tokens_decoder": atd, "additional_special_tokens": CODES,
           "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
           "sep_token": "</s>", "cls_token": "<s>", "legacy_behaviour": False, "src_lang": "eng_Latn",
           "tgt_lang": "fra_Latn", "clean_up_tokenization_spaces": False},
          open(os.path.join(t, "nl", "tokenizer_config.json"), "w"))
PYEOF

"$PY" - "$BIN" "$T" "$TOK" "$SRC/models/kjv-mixtral-15m/data/test.txt" <<'PYEOF' 2>"$T/py.err"
import json, os, random, subprocess, sys, torch
from transformers import NllbTokenizer, NllbMoeForConditionalGeneration
from transformers.utils import logging
logging.set_verbosity_error()
bin_, t, tokdir, test_txt = sys.argv[1:5]
tk = NllbTokenizer.from_pretrained(os.path.join(t, "nl"))
n = len(tk.sp_model)
assert tk.convert_tokens_to_ids("ace_Arab") == n + 1 and tk.convert_tokens_to_ids("<mask>") == n + 203, \
    "transformers did not take fairseq's layout from added_tokens_decoder"
cases = [c["text"] for c in json.load(open(os.path.join(tokdir, "unigram_cases.json")))]
cases += ["eng_Latn in the text", "x fra_Latn y zul_Latn", "a <mask> b", "<s> and </s> and <pad> and <unk>",
          "two unknowns \u65e5\u65e5 in a row", "\u65e5 \u65e5\u0416 \u05d0", "\u3000\u3000 ideographic  spaces \u3000",
          "tabs\t\tand\nnewlines", "deu_Latneng_Latn", "  lead and trail  "]
with open(test_txt, encoding="utf-8") as f:
    body = [l.rstrip("\n") for l in f if l.strip()]
cases += body[:120]
rng = random.Random(11)
alphabet = (list("abcdefghij ABC .,;:'!?") + ["  ", "\t", "\uff21", "\ufb01", "\u00e9", "e\u0301", "\u2460", "\u00b2",
            "\u3000", "\u00a0", "\U0001F600", "\u65e5", "\u0416", "\u200b", "\u2581", "the ", "LORD ", " eng_Latn "])
for _ in range(100):
    cases.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
cases = [c for c in cases if c and not c.startswith("-")]
langs = ["eng_Latn", "fra_Latn", "zul_Latn", "ace_Arab"]
bad = {"nl": 0, "nl0": 0, "decode": 0}
n_dec = 0
for i, text in enumerate(cases):
    lang = langs[i % len(langs)]
    tk.src_lang = lang
    want = tk(text).input_ids
    for d in ("nl", "nl0"):
        r = subprocess.run([bin_, "tokenize", os.path.join(t, d), "-p", text, "--src-lang", lang, "--json"],
                           capture_output=True, text=True)
        got = json.loads(r.stdout)["ids"] if r.returncode == 0 else None
        if got != want:
            bad[d] += 1
            if bad[d] <= 5:
                print("FAIL: %s ids of %r: %s, want %s %s" % (d, text[:50], got, want, r.stderr.strip()))
    if tk.unk_token_id in want:
        continue
    n_dec += 1
    dec = tk.decode(want, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    r = subprocess.run([bin_, "tokenize", os.path.join(t, "nl"), "--decode", ",".join(map(str, want[1:])), "--json"],
                       capture_output=True, text=True)
    got = json.loads(r.stdout)["text"] if r.returncode == 0 else None
    if got != dec:
        bad["decode"] += 1
        if bad["decode"] <= 5:
            print("FAIL: decode of %r: %r, transformers %r" % (text[:50], got, dec))
print("tokenize: %d lines; mismatches: with tokenizer_config.json %d, without %d; decode %d of %d"
      % (len(cases), bad["nl"], bad["nl0"], bad["decode"], n_dec))
fails = sum(bad.values())

# eval: text pairs vs transformers' loss, and vs the same pairs as ids
m = NllbMoeForConditionalGeneration.from_pretrained(os.path.join(t, "nl")).eval()
pairs = [(body[200 + k][:60], body[230 + k][:50]) for k in range(6)]
tk.src_lang, tk.tgt_lang = "eng_Latn", "fra_Latn"
nll, ntok = 0.0, 0
with open(os.path.join(t, "p.tsv"), "w") as ft, open(os.path.join(t, "text.jsonl"), "w") as fj, \
        open(os.path.join(t, "ids.jsonl"), "w") as fi:
    for a, b in pairs:
        enc = tk(a, text_target=b, return_tensors="pt")
        with torch.no_grad():
            out = m(input_ids=enc.input_ids, labels=enc.labels)
        k = enc.labels.shape[1]
        nll += out.loss.item() * k
        ntok += k
        ft.write(a + "\t" + b + "\n")
        fj.write(json.dumps({"input": a, "target": b}) + "\n")
        fi.write(json.dumps({"input": enc.input_ids[0].tolist(), "target": enc.labels[0].tolist()}) + "\n")
res = {}
for key, args in (("tsv", ["--text", os.path.join(t, "p.tsv")]), ("text", ["--pairs", os.path.join(t, "text.jsonl")]),
                  ("ids", ["--pairs", os.path.join(t, "ids.jsonl")])):
    r = subprocess.run([bin_, "eval", os.path.join(t, "nl"), *args, "--src-lang", "eng_Latn", "--tgt-lang", "fra_Latn",
                        "--json", "--threads", "1"], capture_output=True, text=True)
    res[key] = json.loads(r.stdout) if r.returncode == 0 else None
    if not res[key] or abs(res[key]["nll_sum"] - nll) > 1e-4 * nll or res[key]["target_tokens"] != ntok:
        print("FAIL: eval %s: %s, transformers nll_sum %.6f over %d tokens %s" % (key, res[key], nll, ntok, r.stderr))
        fails += 1
print("eval: transformers nll_sum %.6f; moetool --text %.6f, --pairs text %.6f, --pairs ids %.6f"
      % (nll, *(res[k]["nll_sum"] if res[k] else float("nan") for k in ("tsv", "text", "ids"))))

# generate: greedy with the target language forced first
src = body[260][:80]
tk.src_lang = "eng_Latn"
ids = tk(src, return_tensors="pt").input_ids
with torch.no_grad():
    g = m.generate(ids, forced_bos_token_id=tk.convert_tokens_to_ids("deu_Latn"), max_new_tokens=12, do_sample=False,
                   num_beams=1)[0].tolist()[1:]
r = subprocess.run([bin_, "generate", os.path.join(t, "nl"), "-p", src, "--src-lang", "eng_Latn", "--tgt-lang",
                    "deu_Latn", "-n", "12", "--json", "--threads", "1"], capture_output=True, text=True)
got = json.loads(r.stdout) if r.returncode == 0 else {}
want_text = tk.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=False)
if got.get("input_ids") != ids[0].tolist() or got.get("ids") != g or got.get("text") != want_text:
    print("FAIL: generate: %s; transformers input %s output %s %r %s" % (got, ids[0].tolist(), g, want_text, r.stderr))
    fails += 1
else:
    print("generate: %d ids equal to transformers' (forced deu_Latn), text %r" % (len(g), got["text"]))
sys.exit(1 if fails else 0)
PYEOF
[ $? = 0 ] && ok || { cat "$T/py.err" | tail -5; bad "against NllbTokenizer / transformers"; }

# bad input
M=$T/nl
"$BIN" generate "$M" -p "hello" --src-lang eng_Latn >/dev/null 2>"$T/e"; rc=$?
[ $rc = 1 ] && grep -q "tgt-lang" "$T/e" && ok || bad "generate without --tgt-lang: rc $rc $(cat "$T/e")"
"$BIN" tokenize "$M" -p "hello" --src-lang xxx_Latn >/dev/null 2>"$T/e"; rc=$?
[ $rc = 1 ] && grep -q "xxx_Latn" "$T/e" && ok || bad "unknown language code: rc $rc $(cat "$T/e")"
"$BIN" tokenize "$M" -p "hello" >/dev/null 2>"$T/e"; rc=$?
[ $rc = 1 ] && grep -q "language code" "$T/e" && ok || bad "no language code: rc $rc $(cat "$T/e")"
head -c 3000 "$TOK/nllb_bpe.model" >"$T/nl0/sentencepiece.bpe.model"
"$BIN" tokenize "$T/nl0" -p "hello" --src-lang eng_Latn >/dev/null 2>"$T/e"; rc=$?
[ $rc = 1 ] && [ "$(wc -l <"$T/e")" = 1 ] && grep -q "sentencepiece.bpe.model" "$T/e" && ok || bad "truncated model: rc $rc $(cat "$T/e")"

echo "cli_tokenize_nllb: $passes passed, $fails failed"
[ $fails = 0 ]
