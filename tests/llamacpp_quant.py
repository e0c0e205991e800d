#!/usr/bin/env python3
"""llama.cpp's own quantizer and perplexity, for tests/cli_kquant.sh.

  llamacpp_quant.py quantize SRC.gguf DST.gguf FTYPE [pure]
      llama_model_quantize with llama_model_quantize_default_params() and
      ftype = FTYPE (llama.h LLAMA_FTYPE_*, e.g. 15 = MOSTLY_Q4_K_M); with
      `pure`, every matrix in FTYPE's base type (no mix)
  llamacpp_quant.py ppl MODEL.gguf TEXT CTX WINDOWS
      perplexity under llama.cpp's protocol (tests/llamacpp_check.py: BOS
      first in every window of CTX tokens, second half scored) over the
      first WINDOWS windows of TEXT; prints the value alone

Exit 77 when llama_cpp is not importable.
"""
import os
import sys

os.environ.setdefault("GGML_NO_BACKTRACE", "1")
try:
    import llama_cpp
except ImportError as e:
    print(f"skipped: llama_cpp not installed ({e})")
    sys.exit(77)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    if len(argv) in (4, 5) and argv[0] == "quantize" and argv[4:] in ([], ["pure"]):
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = int(argv[3])
        p.pure = len(argv) == 5
        p.nthread = 2
        rc = llama_cpp.llama_model_quantize(argv[1].encode(), argv[2].encode(), p)
        if rc != 0:
            print(f"llama_model_quantize({argv[1]}, ftype {argv[3]}) failed: {rc}")
        return 1 if rc else 0
    if len(argv) == 5 and argv[0] == "ppl":
        from llamacpp_check import perplexity
        ctx, windows = int(argv[3]), int(argv[4])
        llm = llama_cpp.Llama(model_path=argv[1], n_ctx=ctx, n_batch=ctx, n_threads=2,
                              logits_all=True, verbose=False)
        text = open(argv[2], encoding="utf-8").read()
        # the first WINDOWS windows only: cut the tokenized text, as
        # `moetool eval --max-windows` does
        toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:ctx * windows]
        orig = llm.tokenize
        llm.tokenize = lambda *a, **k: toks
        ppl, count, n = perplexity(llm, text, ctx)
        llm.tokenize = orig
        if n != windows:
            print(f"text has {n} windows of {ctx}, wanted {windows}")
            return 1
        print(f"{ppl:.6f}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
