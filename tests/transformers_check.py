#!/usr/bin/env python3
"""Loads a Hugging Face checkpoint written by moetool with `transformers`
(MixtralForCausalLM / MistralForCausalLM) and checks it against moetool:

  transformers_check.py MODEL_DIR --tokenizer TOKENIZER_JSON --text FILE
      --ctx N --windows W --expect-ppl P [--rtol R]
      [--reference-logits REFERENCE_JSON]

- perplexity of the first W windows of FILE (GPTQ protocol: text tokenized
  without BOS, non-overlapping windows of N tokens, every token of a window
  but its first scored) must equal P (moetool eval's number) within R;
- with --reference-logits, the logits of reference.json's logits_case must
  match reference-logits.f32 (max |diff| <= 1e-3, same argmax).

Exit 0 pass, 1 fail, 77 when torch/transformers/tokenizers are missing.
"""
import argparse
import json
import math
import os
import sys

try:
    import numpy as np
    import torch
    import transformers
    from tokenizers import Tokenizer
except Exception as e:  # noqa: BLE001 - any import problem means "not installed here"
    print(f"skipped: torch/transformers/tokenizers not importable ({e})")
    sys.exit(77)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--expect-ppl", type=float, required=True)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--reference-logits")
    a = ap.parse_args()

    torch.set_num_threads(2)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    model.eval()
    print(f"load: {a.model}: {type(model).__name__}, transformers {transformers.__version__}, torch {torch.__version__}")
    fails = 0

    tok = Tokenizer.from_file(a.tokenizer)
    ids = tok.encode(open(a.text, encoding="utf-8").read(), add_special_tokens=False).ids
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(a.windows):
            win = ids[w * a.ctx:(w + 1) * a.ctx]
            if len(win) < a.ctx:
                break
            logits = model(torch.tensor([win])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            tgt = torch.tensor(win[1:])
            nll -= lp[:-1].gather(1, tgt[:, None]).sum().item()
            n += len(win) - 1
    ppl = math.exp(nll / n)
    ok = abs(ppl - a.expect_ppl) <= a.rtol * a.expect_ppl
    print(f"{'PASS' if ok else 'FAIL'} ppl: transformers {ppl:.6f} vs moetool {a.expect_ppl:.6f} "
          f"({n} tokens, rtol {a.rtol})")
    fails += not ok

    if a.reference_logits:
        ref = json.load(open(a.reference_logits))
        case = ref["logits_case"]
        r = np.fromfile(os.path.join(os.path.dirname(a.reference_logits), case["file"]), dtype="<f4")
        r = r.reshape(case["shape"])
        with torch.no_grad():
            out = model(torch.tensor([case["ids"]])).logits[0].numpy()
        d = float(np.abs(out - r).max())
        same = bool((out.argmax(-1) == r.argmax(-1)).all())
        ok = d <= 1e-3 and same
        print(f"{'PASS' if ok else 'FAIL'} logits: max |diff| {d:.3g} vs reference, argmax equal: {same}")
        fails += not ok

    print(f"{'PASS' if fails == 0 else 'FAIL'}: {fails} failed check(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
