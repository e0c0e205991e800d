#!/usr/bin/env python3
"""Compares moetool's encoder-decoder runtime (the JSON of tests/s2s_dump)
with transformers' reference outputs (<case>.ref.json of tests/make_switch.py
or tests/make_nllb.py):

  check_seq2seq.py REF.json DUMP.json [--capacity-binds]

Checks: teacher-forced logits within 1e-4 (max |difference|), the expert of
every token in every sparse layer equal (dropped tokens included), summed NLL
/ target tokens equal to transformers' loss within 1e-5 relative, greedy ids
equal to model.generate's. The one-token-per-call (KV cache) logits equal
the teacher-forced ones within 1e-4 unless --capacity-binds: then some
decoder token was dropped in the full pass (capacity counts the tokens of
one call, as in transformers), and they must differ. Prints the numbers."""
import json
import sys

ref = json.load(open(sys.argv[1]))
got = json.load(open(sys.argv[2]))
binds = "--capacity-binds" in sys.argv
fails = []
d = max(abs(a - b) for ra, rb in zip(got["logits"], ref["logits"]) for a, b in zip(ra, rb))
ds = max(abs(a - b) for ra, rb in zip(got["step_logits"], ref["logits"]) for a, b in zip(ra, rb))
if len(got["logits"]) != len(ref["logits"]) or d > 1e-4:
    fails.append(f"logits differ by {d:g} (> 1e-4)")
if got["enc_experts"] != ref["enc_experts"]:
    fails.append(f"encoder routing {got['enc_experts']} != {ref['enc_experts']}")
if got["dec_experts"] != ref["dec_experts"]:
    fails.append(f"decoder routing {got['dec_experts']} != {ref['dec_experts']}")
loss = got["nll"] / len(ref["labels"])
rel = abs(loss - ref["loss"]) / abs(ref["loss"])
if rel > 1e-5:
    fails.append(f"loss {loss} vs transformers {ref['loss']} (rel {rel:g})")
if got["greedy"] != ref["greedy"]:
    fails.append(f"greedy {got['greedy']} != transformers {ref['greedy']}")
def flat(x):
    return [v for e in x for v in (flat(e) if isinstance(e, list) else [e])]


drops = flat(ref["dec_experts"]).count(-1)
if binds:
    if drops == 0 or ds < 1e-3:
        fails.append(f"expected the capacity to bind in the decoder (drops {drops}, step difference {ds:g})")
elif ds > 1e-4:
    fails.append(f"one-token decoding differs from the full pass by {ds:g}")
print(f"max|dlogit| {d:.3g}, one-token {ds:.3g}, loss {loss:.8f} vs {ref['loss']:.8f} (rel {rel:.2g}), "
      f"dropped enc {flat(ref['enc_experts']).count(-1)} dec {drops}, greedy {got['greedy']}")
for f in fails:
    print("FAIL:", f)
sys.exit(1 if fails else 0)
