#!/usr/bin/env python3
"""llama.cpp's own quantizer and perplexity, for tests/cli_kquant.sh.

  llamacpp_quant.py quantize SRC.gguf DST.gguf FTYPE [pure] [imatrix=FILE.dat]
      llama_model_quantize with llama_model_quantize_default_params() and
      ftype = FTYPE (llama.h LLAMA_FTYPE_*, e.g. 15 = MOSTLY_Q4_K_M); with
      `pure`, every matrix in FTYPE's base type (no mix); with imatrix=,
      the importance matrix of a llama-imatrix legacy .dat file, each value
      divided by its entry's ncall in f32 as llama-quantize's reader does,
      passed as llama_model_quantize_params.imatrix
  llamacpp_quant.py ppl MODEL.gguf TEXT CTX WINDOWS
      perplexity under llama.cpp's protocol (tests/llamacpp_check.py: BOS
      first in every window of CTX tokens, second half scored) over the
      first WINDOWS windows of TEXT; prints the value alone

Exit 77 when llama_cpp is not importable.
"""
import ctypes
import os
import sys

os.environ.setdefault("GGML_NO_BACKTRACE", "1")
try:
    import llama_cpp
except ImportError as e:
    print(f"skipped: llama_cpp not installed ({e})")
    sys.exit(77)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def read_imatrix(path):
    """[(name, float32 values / ncall)] of a llama-imatrix legacy .dat."""
    import struct
    import numpy as np
    out = []
    with open(path, "rb") as f:
        (n,) = struct.unpack("<i", f.read(4))
        for _ in range(n):
            (ln,) = struct.unpack("<i", f.read(4))
            name = f.read(ln).decode()
            ncall, nval = struct.unpack("<ii", f.read(8))
            v = np.frombuffer(f.read(4 * nval), dtype="<f4").astype(np.float32)
            if ncall > 0:
                v = v / np.float32(ncall)
            out.append((name, np.ascontiguousarray(v, dtype=np.float32)))
    return out


def main(argv):
    imat = [a[len("imatrix="):] for a in argv[4:] if a.startswith("imatrix=")]
    rest = [a for a in argv[4:] if not a.startswith("imatrix=")]
    if len(argv) >= 4 and argv[0] == "quantize" and rest in ([], ["pure"]) and len(imat) <= 1:
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = int(argv[3])
        p.pure = rest == ["pure"]
        p.nthread = 2
        if imat:
            entries = read_imatrix(imat[0])
            arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
            keep = []
            for i, (name, vals) in enumerate(entries):
                buf = (ctypes.c_float * len(vals)).from_buffer_copy(vals.tobytes())
                keep.append(buf)
                arr[i].name = name.encode()
                arr[i].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
                arr[i].size = len(vals)
            arr[len(entries)].name = None
            p.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
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
