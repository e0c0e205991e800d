#!/usr/bin/env python3
"""llama.cpp's own quantizer and perplexity, for tests/cli_kquant.sh.

  llamacpp_quant.py quantize SRC.gguf DST.gguf FTYPE [pure] [imatrix=FILE.dat] [embd=T] [out=T]
      llama_model_quantize with llama_model_quantize_default_params() and
      ftype = FTYPE (llama.h LLAMA_FTYPE_*, e.g. 15 = MOSTLY_Q4_K_M); with
      `pure`, every matrix in FTYPE's base type (no mix); with imatrix=,
      the importance matrix of a llama-imatrix legacy .dat file, each value
      divided by its entry's ncall in f32 as llama-quantize's reader does,
      passed as llama_model_quantize_params.imatrix; embd= / out= set
      token_embedding_type / output_tensor_type to ggml type T (e.g. 8 =
      Q8_0), as llama-quantize's --token-embedding-type / --output-tensor-type
  llamacpp_quant.py same A.gguf B.gguf
      every tensor of B in A with the same type and bytes; prints the count
      of identical tensors and, for those that differ, the fraction of
      their blocks that are equal; exit 1 if any differs
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


def same(path_a, path_b):
    import numpy as np
    from gguf import GGUFReader
    from gguf.constants import GGML_QUANT_SIZES
    a = {t.name: t for t in GGUFReader(path_a).tensors}
    b = {t.name: t for t in GGUFReader(path_b).tensors}
    bad = []
    for n, t in b.items():
        u = a.get(n)
        if u is None or u.tensor_type != t.tensor_type:
            bad.append((n, t.tensor_type.name, u.tensor_type.name if u is not None else None))
            continue
        x = np.asarray(u.data).view(np.uint8).reshape(-1)
        y = np.asarray(t.data).view(np.uint8).reshape(-1)
        if x.size != y.size:
            bad.append((n, t.tensor_type.name, "size %d vs %d" % (x.size, y.size)))
        elif not np.array_equal(x, y):
            bs = GGML_QUANT_SIZES[t.tensor_type][1]
            eq = (x.reshape(-1, bs) == y.reshape(-1, bs)).all(axis=1).mean()
            bad.append((n, t.tensor_type.name, "%.4f of blocks equal" % eq))
    print(f"{len(b) - len(bad)}/{len(b)} tensors identical" + (f"; differ: {bad[:4]}" if bad else ""))
    return 1 if bad else 0


def main(argv):
    opt = lambda key: [a[len(key):] for a in argv[4:] if a.startswith(key)]
    imat, embd, outt = opt("imatrix="), opt("embd="), opt("out=")
    rest = [a for a in argv[4:] if not a.startswith(("imatrix=", "embd=", "out="))]
    if len(argv) >= 4 and argv[0] == "quantize" and rest in ([], ["pure"]) and len(imat) <= 1:
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = int(argv[3])
        p.pure = rest == ["pure"]
        p.nthread = 2
        if embd:
            p.token_embedding_type = int(embd[0])
        if outt:
            p.output_tensor_type = int(outt[0])
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
    if len(argv) == 3 and argv[0] == "same":
        return same(argv[1], argv[2])
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
