#!/usr/bin/env python3
"""moetool's written K-quant / legacy blocks against llama.cpp's, per tensor.

  kquant_compare.py REF.gguf MOETOOL.gguf LLAMACPP.gguf [--ratio R] [--same]

For every tensor that MOETOOL.gguf and LLAMACPP.gguf store in the same
quantized type (ggml.h ids 3, 6, 7, 8, 10..14: q4_1, q5_0, q5_1, q8_0, q2_K..q6_K), both are
dequantized by gguf-py (an independent decoder) and compared with the f32
tensor of the same name in REF.gguf: sum of squared errors of each. Fails
when moetool's error exceeds R (default 1.02) times llama.cpp's on any
tensor, or, with --same, when the two dequantized tensors differ at all
(RTN: moetool's writer is llama.cpp's reference quantizer). Prints one line
per tensor type with the worst ratio. Exit 77 without gguf-py.
"""
import sys

try:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError as e:
    print(f"skipped: gguf not installed ({e})")
    sys.exit(77)

TYPES = {3, 6, 7, 8, 10, 11, 12, 13, 14}


def tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


def deq(t):
    return dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)


def main(argv):
    ratio, same = 1.02, False
    args = []
    i = 0
    while i < len(argv):
        if argv[i] == "--ratio":
            ratio = float(argv[i + 1]); i += 2; continue
        if argv[i] == "--same":
            same = True; i += 1; continue
        args.append(argv[i]); i += 1
    if len(args) != 3:
        print(__doc__)
        return 2
    ref, mt, ll = (tensors(p) for p in args)
    worst, count, fails, n = {}, {}, 0, 0
    for name, a in mt.items():
        b = ll.get(name)
        if b is None or int(a.tensor_type) not in TYPES or int(a.tensor_type) != int(b.tensor_type):
            continue
        x = ref[name].data.astype(np.float64).reshape(-1)
        ya, yb = deq(a), deq(b)
        ea, eb = float(((ya - x) ** 2).sum()), float(((yb - x) ** 2).sum())
        r = ea / eb if eb > 0 else (1.0 if ea == 0 else float("inf"))
        n += 1
        tn = a.tensor_type.name
        count[tn] = count.get(tn, 0) + 1
        if tn not in worst or r > worst[tn][0]:
            worst[tn] = (r, name, ea, eb)
        if r > ratio:
            print(f"FAIL {name} ({tn}): moetool sq. error {ea:.6g} > {ratio} x llama.cpp {eb:.6g}")
            fails += 1
        if same and not np.array_equal(ya, yb):
            d = np.abs(ya - yb)
            print(f"FAIL {name} ({tn}): values differ from llama.cpp's at {int((d > 0).sum())} weights, max {d.max():.3g}")
            fails += 1
    if n == 0:
        print("FAIL: no tensor of the same quantized type in both files")
        return 1
    for tn, (r, name, ea, eb) in sorted(worst.items()):
        print(f"{tn}: {count[tn]} tensors compared; worst error ratio moetool/llama.cpp {r:.5f} ({name}: {ea:.6g} vs {eb:.6g})")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
