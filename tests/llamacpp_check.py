#!/usr/bin/env python3
"""Checks a GGUF file with llama.cpp itself (through the llama-cpp-python
bindings), independently of moetool's own GGUF reader.

Checks, each printed as PASS/FAIL (or SKIP):
  load       llama.cpp opens the file (all keys, tensor names, shapes, types)
  tokenize   every tokenizer case of reference.json, tokenized by llama.cpp
             from the vocabulary stored in the GGUF (no BOS, no special
             parsing), equals the reference ids from sentencepiece
  detokenize-cases  llama.cpp turns those reference ids back into the text
  prompt     llama.cpp's tokenization of --prompt (with BOS) equals the
             expectations' prompt_ids
  logits     llama.cpp's last-layer logits for reference.json's logits_case
             against reference-logits.f32 (PyTorch, f32 from the bf16 weights):
             max |diff| <= --logits-tol and the same argmax at every position
  greedy     a greedy continuation of the expectations' prompt_ids equals the
             expectations' ids (what `moetool generate --json` printed); where
             the two first differ, llama.cpp's own logit gap between its choice
             and moetool's must be below --tie-tol (a near tie, after which the
             sequences legitimately diverge), otherwise FAIL
  detokenize llama.cpp's text for those ids equals the expectations' text
             (needs the token types: byte tokens, control tokens)
  ppl        perplexity of a text under llama.cpp's protocol (BOS first in
             every window of --ppl-ctx tokens, second half scored), compared
             with --ppl-expect within --ppl-rtol when given

Exit status: 0 all checks passed, 1 a check failed, 2 usage or input error,
77 when the llama_cpp module is not importable (the test is skipped).

Usage:
  llamacpp_check.py MODEL.gguf [--expect gen.json] [--prompt TEXT]
                    [--reference reference.json] [--logits-tol X]
                    [--ppl data/test.txt] [--ppl-ctx 256] [--ppl-expect 53.10]
"""
import argparse
import ctypes
import json
import math
import os
import sys

# On a failed GGML_ASSERT, ggml otherwise attaches gdb to print a backtrace,
# which can hang a test run; an abort (exit 134) is report enough.
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

try:
    import numpy as np
    import llama_cpp
except ImportError as e:  # the bindings are optional: skip, don't fail
    print(f"skipped: llama_cpp not installed ({e})")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL_DIR = os.environ.get(
    "MT_MODEL_DIR", os.path.join(HERE, "..", "models", "kjv-mixtral-15m"))

failures = []


def report(name, ok, detail):
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
    print(f"{status} {name}: {detail}", flush=True)
    if ok is False:
        failures.append(name)


def last_logits(llm):
    """Logits of the last evaluated token, copied out of llama.cpp (n_vocab,)."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)


def check_tokenize(llm, reference):
    cases = reference.get("tokenizer_cases", [])
    if not cases:
        report("tokenize", None, "reference has no tokenizer_cases")
        return
    bad = 0
    for i, case in enumerate(cases):
        got = llm.tokenize(case["text"].encode("utf-8"), add_bos=False, special=False)
        if got != case["ids"]:
            bad += 1
            n = next((k for k in range(min(len(got), len(case["ids"])))
                      if got[k] != case["ids"][k]), min(len(got), len(case["ids"])))
            print(f"  case {i} {case['text'][:40]!r}: first difference at {n}: "
                  f"llama.cpp {got[n:n + 6]} reference {case['ids'][n:n + 6]} "
                  f"(lengths {len(got)} vs {len(case['ids'])})")
    report("tokenize", bad == 0, f"{len(cases) - bad}/{len(cases)} cases equal the reference ids")
    # The way back: byte-fallback pieces (<0xE2>...) must turn into raw bytes,
    # which llama.cpp only does for tokens typed BYTE in the GGUF.
    bad = 0
    for i, case in enumerate(cases):
        text = llm.detokenize(case["ids"]).decode("utf-8", errors="replace")
        if text.startswith(" "):  # sentencepiece's dummy prefix, kept by llama.cpp
            text = text[1:]
        if text != case["text"]:
            bad += 1
            print(f"  case {i}: llama.cpp detokenizes to {text[:60]!r}, reference {case['text'][:60]!r}")
    report("detokenize-cases", bad == 0, f"{len(cases) - bad}/{len(cases)} reference id lists detokenize to their text")


def check_logits(llm, reference, ref_dir, tol):
    lc = reference.get("logits_case")
    if not lc:
        report("logits", None, "reference has no logits_case")
        return
    ids = lc["ids"]
    n_tok, n_vocab = lc["shape"]
    path = os.path.join(ref_dir, lc["file"])
    ref = np.fromfile(path, dtype="<f4")
    if ref.size != n_tok * n_vocab or n_vocab != llm.n_vocab() or len(ids) != n_tok:
        report("logits", False, f"{path}: {ref.size} floats, expected {n_tok}x{n_vocab} "
               f"(model vocab {llm.n_vocab()})")
        return
    ref = ref.reshape(n_tok, n_vocab).astype(np.float64)
    llm.reset()
    got = np.empty_like(ref)
    for t, tok in enumerate(ids):  # one token at a time: only last logits are kept
        llm.eval([tok])
        got[t] = last_logits(llm)
    diff = np.abs(got - ref)
    maxdiff = float(diff.max())
    ref_arg = ref.argmax(axis=1)
    agree = int((got.argmax(axis=1) == ref_arg).sum())
    if "argmax_case" in reference and list(ref_arg) != reference["argmax_case"]:
        print("  note: reference argmax_case disagrees with reference-logits.f32")
    ok = maxdiff <= tol and agree == n_tok
    report("logits", ok, f"{n_tok} tokens: maxdiff {maxdiff:.3g} (tol {tol:g}), "
           f"mean |diff| {float(diff.mean()):.3g}, argmax agrees {agree}/{n_tok}")


def check_prompt(llm, prompt, expect):
    got = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    want = expect["prompt_ids"]
    report("prompt", got == want, f"llama.cpp {got} vs expected {want}")


def check_greedy(llm, expect, tie_tol):
    prompt_ids = expect["prompt_ids"]
    want = expect["ids"]
    if not want:
        report("greedy", False, "expectations hold no generated ids")
        return
    llm.reset()
    llm.eval(prompt_ids)
    got = []
    for step in range(len(want)):
        logits = last_logits(llm)
        tok = int(logits.argmax())
        got.append(tok)
        if tok != want[step]:
            if not (0 <= want[step] < logits.size):
                report("greedy", False, f"expected id {want[step]} out of vocab")
                return
            gap = float(logits[tok] - logits[want[step]])
            detail = (f"step {step}: llama.cpp picks {tok}, moetool {want[step]}, "
                      f"llama.cpp logit gap {gap:.4g} (tie tol {tie_tol:g}); "
                      f"equal prefix {got[:-1]}")
            report("greedy", gap <= tie_tol, ("near tie, " if gap <= tie_tol else "") + detail)
            return
        llm.eval([tok])
    report("greedy", True, f"{len(got)} ids equal: {got}")
    # Detokenization uses the token types (byte tokens such as <0x0A> become
    # raw bytes, control tokens vanish): compare with moetool's text.
    if isinstance(expect.get("text"), str):
        text = llm.detokenize(got).decode("utf-8", errors="replace")
        # a leading space of the first piece is a presentation choice; the rest must match
        ok = text.lstrip(" ") == expect["text"].lstrip(" ")
        report("detokenize", ok, f"llama.cpp {text!r}" + ("" if ok else f" vs moetool {expect['text']!r}"))


def perplexity(llm, text, n_ctx):
    """llama.cpp's perplexity protocol (tools/perplexity): whole text tokenized
    with BOS, non-overlapping windows of n_ctx tokens whose first token is
    replaced by BOS, tokens of the second half scored."""
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    n_chunk = len(tokens) // n_ctx
    first = n_ctx // 2
    bos = llm.token_bos()
    nll, count = 0.0, 0
    for c in range(n_chunk):
        window = tokens[c * n_ctx:(c + 1) * n_ctx]
        window[0] = bos
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float64)  # (n_ctx-1-first, vocab)
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        target = np.asarray(tokens[c * n_ctx + first + 1:(c + 1) * n_ctx])
        nll += float((lse - logits[np.arange(len(target)), target]).sum())
        count += len(target)
    return (math.exp(nll / count) if count else float("nan")), count, n_chunk


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("--expect", help="JSON from `moetool generate -n N --json`")
    ap.add_argument("--prompt", help="prompt text the expectations were made from")
    ap.add_argument("--reference", default=os.path.join(DEFAULT_MODEL_DIR, "reference.json"))
    ap.add_argument("--logits-tol", type=float, default=None,
                    help="max |logit diff| vs reference-logits.f32; omit to skip the logits check")
    ap.add_argument("--tie-tol", type=float, default=0.05)
    ap.add_argument("--ppl", help="text file for perplexity (llama.cpp protocol)")
    ap.add_argument("--ppl-ctx", type=int, default=256)
    ap.add_argument("--ppl-expect", type=float)
    ap.add_argument("--ppl-rtol", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-f32", action="store_true",
                    help="f32 KV cache (llama.cpp's default f16 cache rounds keys/values: ~1e-2 on QK-normed heads)")
    a = ap.parse_args()

    try:
        with open(a.reference, encoding="utf-8") as f:
            reference = json.load(f)
        expect = None
        if a.expect:
            with open(a.expect, encoding="utf-8") as f:
                expect = json.load(f)
            if not isinstance(expect.get("prompt_ids"), list) or not isinstance(expect.get("ids"), list):
                raise ValueError(f"{a.expect}: needs lists 'prompt_ids' and 'ids'")
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 2

    kv = dict(type_k=0, type_v=0) if a.kv_f32 else {}  # 0 = GGML_TYPE_F32
    try:
        llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=256, n_threads=a.threads,
                              logits_all=False, verbose=False, **kv)
    except Exception as e:  # llama.cpp refuses the file: the writer is wrong
        report("load", False, f"llama.cpp cannot load {a.gguf}: {e}")
        return 1
    desc = ctypes.create_string_buffer(128)
    llama_cpp.llama_model_desc(llm.model, desc, len(desc))
    report("load", True, f"{a.gguf}: {desc.value.decode(errors='replace')}, vocab {llm.n_vocab()}, "
           f"{llama_cpp.llama_model_n_params(llm.model)} parameters")

    check_tokenize(llm, reference)
    if a.logits_tol is not None:
        check_logits(llm, reference, os.path.dirname(os.path.abspath(a.reference)), a.logits_tol)
    if expect is not None:
        if a.prompt is not None:
            check_prompt(llm, a.prompt, expect)
        check_greedy(llm, expect, a.tie_tol)
    del llm

    if a.ppl:
        with open(a.ppl, encoding="utf-8") as f:
            text = f.read()
        pl = llama_cpp.Llama(model_path=a.gguf, n_ctx=a.ppl_ctx, n_batch=a.ppl_ctx,
                             n_threads=a.threads, logits_all=True, verbose=False, **kv)
        ppl, count, n_chunk = perplexity(pl, text, a.ppl_ctx)
        if count == 0:
            report("ppl", False, f"{a.ppl}: shorter than one window of {a.ppl_ctx} tokens")
            return 1
        detail = f"{ppl:.4f} at ctx {a.ppl_ctx} ({n_chunk} windows, {count} scored tokens)"
        if a.ppl_expect is not None:
            ok = abs(ppl - a.ppl_expect) <= a.ppl_rtol * a.ppl_expect
            report("ppl", ok, f"{detail}, expected {a.ppl_expect} ± {a.ppl_rtol * 100:g}%")
        else:
            report("ppl", True, detail)

    print(f"{'FAIL' if failures else 'PASS'}: {len(failures)} failed check(s) {failures if failures else ''}".rstrip())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
