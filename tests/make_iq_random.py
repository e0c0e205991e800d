#!/usr/bin/env python3
"""Writes a GGUF whose expert tensors are random *valid* blocks of the
lattice i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ1_S, IQ1_M, one type per
tensor in turn) and whose other tensors are copied from SRC (an f32 GGUF of
the bundled model). llama.cpp's quantizer refuses these types without an
importance matrix, which llama-cpp-python cannot pass, so this file is how
tests/cli_kquant.sh runs them end to end in both moetool and llama.cpp: the
model is nonsense, but both must compute the same nonsense.
usage: make_iq_random.py SRC.gguf DST.gguf"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

TYPES = [(T.IQ2_XXS, 66), (T.IQ2_XS, 74), (T.IQ2_S, 82), (T.IQ3_XXS, 98), (T.IQ1_S, 50), (T.IQ1_M, 56)]


def random_blocks(rng, qt, nbytes, n_blocks, d):
    b = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint16).astype(np.uint8)
    h = np.full(n_blocks, d, dtype=np.float16).view(np.uint16)
    if qt == T.IQ1_M:  # d's nibbles: the top nibbles of the four uint16 scales at 48
        sc = b[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
        for k in range(4):
            sc[:, k] |= ((h >> np.uint16(4 * k)) & np.uint16(0xF)) << np.uint16(12)
        b[:, 48:56] = sc.view(np.uint8)
    else:
        b[:, 0:2] = h.view(np.uint8).reshape(-1, 2)
    return b


def main(src, dst):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    rng = np.random.default_rng(5)
    k = 0
    for t in r.tensors:
        if "_exps" in t.name:
            qt, nb = TYPES[k % len(TYPES)]
            k += 1
            E, rows, cols = t.data.shape
            d = 0.0015 if qt in (T.IQ1_S, T.IQ1_M) else 0.0008
            raw = random_blocks(rng, qt, nb, E * rows * cols // 256, d).reshape(E, rows, cols // 256 * nb)
            w.add_tensor(t.name, raw, raw_dtype=qt)
        else:
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
