#!/usr/bin/env python3
"""Checks moetool's block decoders bit for bit against gguf-py's numpy
dequantizers (gguf.quants.dequantize), which are independent of moetool.

For every block type moetool reads (K-quants, legacy, iq4 and the lattice
i-quants, whose grids are tables of the format), random blocks: random
bytes for the codes, grid indices, signs and sub-block scales (so every
grid row is hit), and f16 super-block scales (d, dmin, m) drawn
from random finite halves plus extremes (±65504, the smallest subnormal,
±0, 1). Each file of blocks is decoded by the test tool dequant_raw (the
type table's to_f32) and compared as raw f32 bits with gguf-py's result.
q8_K has no gguf-py dequantizer: checked against its definition, d·q.

Exit 0 all equal, 1 a difference, 77 when gguf/numpy are missing.
Usage: dequant_check.py DEQUANT_RAW_BINARY [--blocks N]
"""
import argparse
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize
except ImportError as e:
    print(f"skipped: gguf-py not installed ({e})")
    sys.exit(77)

# moetool name, ggml type, block bytes, byte offsets of f16 scales
TYPES = [
    ("q4_0", T.Q4_0, 18, [0]),
    ("q8_0", T.Q8_0, 34, [0]),
    ("q4_1", T.Q4_1, 20, [0, 2]),
    ("q5_0", T.Q5_0, 22, [0]),
    ("q5_1", T.Q5_1, 24, [0, 2]),
    ("q2_k", T.Q2_K, 84, [80, 82]),
    ("q3_k", T.Q3_K, 110, [108]),
    ("q4_k", T.Q4_K, 144, [0, 2]),
    ("q5_k", T.Q5_K, 176, [0, 2]),
    ("q6_k", T.Q6_K, 210, [208]),
    ("iq4_nl", T.IQ4_NL, 18, [0]),
    ("iq4_xs", T.IQ4_XS, 136, [0]),
    ("tq1_0", T.TQ1_0, 54, [52]),
    ("tq2_0", T.TQ2_0, 66, [64]),
    ("iq2_xxs", T.IQ2_XXS, 66, [0]),
    ("iq2_xs", T.IQ2_XS, 74, [0]),
    ("iq2_s", T.IQ2_S, 82, [0]),
    ("iq3_xxs", T.IQ3_XXS, 98, [0]),
    ("iq3_s", T.IQ3_S, 110, [0]),
    ("iq1_s", T.IQ1_S, 50, [0]),
    ("iq1_m", T.IQ1_M, 56, None),  # d in the top nibbles of the scales
]
EXTREMES = [0x7BFF, 0xFBFF, 0x0001, 0x8001, 0x0000, 0x8000, 0x3C00, 0x0400]


def random_halves(rng, n):
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint32).astype(np.uint16)
    h[(h & 0x7C00) == 0x7C00] &= 0xBFFF  # NaN/inf -> a finite half
    k = min(n, len(EXTREMES) * 4)
    h[:k] = np.array(EXTREMES * 4, dtype=np.uint16)[:k]
    rng.shuffle(h)
    return h


def run(tool, name, blocks, tmp):
    src, dst = os.path.join(tmp, name + ".bin"), os.path.join(tmp, name + ".f32")
    blocks.tofile(src)
    subprocess.run([tool, name, src, dst], check=True)
    return np.fromfile(dst, dtype="<f4")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tool")
    ap.add_argument("--blocks", type=int, default=4096)
    a = ap.parse_args()
    rng = np.random.default_rng(1234)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, qt, nbytes, offs in TYPES:
            blocks = rng.integers(0, 256, size=(a.blocks, nbytes), dtype=np.uint16).astype(np.uint8)
            for off in offs or []:
                blocks[:, off:off + 2] = random_halves(rng, a.blocks).view(np.uint8).reshape(-1, 2)
            if offs is None:  # iq1_m: nibble k of d is the top nibble of the uint16 scale k at 48
                h = random_halves(rng, a.blocks)
                sc = blocks[:, 48:56].copy().view(np.uint16) & np.uint16(0x0FFF)
                for k in range(4):
                    sc[:, k] |= ((h >> np.uint16(4 * k)) & np.uint16(0xF)) << np.uint16(12)
                blocks[:, 48:56] = sc.view(np.uint8)
            got = run(a.tool, name, blocks, tmp)
            want = dequantize(blocks.reshape(-1), qt).astype(np.float32).reshape(-1)
            diff = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32)) if got.size == want.size else [0]
            ok = len(diff) == 0
            bad += not ok
            detail = f"{a.blocks} blocks, {want.size} weights bit-identical" if ok else \
                f"{len(diff)} of {want.size} weights differ, first at {diff[0]}: " \
                f"moetool {got[diff[0]] if got.size > diff[0] else None} gguf-py {want[diff[0]]}"
            print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        # q8_K: f32 d, int8 qs[256], int16 bsums[16]
        d = rng.standard_normal(a.blocks).astype(np.float32) * np.float32(1e3)
        qs = rng.integers(-128, 128, size=(a.blocks, 256)).astype(np.int8)
        blocks = np.concatenate([d.view(np.uint8).reshape(-1, 4), qs.view(np.uint8),
                                 np.zeros((a.blocks, 32), dtype=np.uint8)], axis=1)
        got = run(a.tool, "q8_k", blocks, tmp)
        want = (d[:, None] * qs.astype(np.float32)).reshape(-1)
        ok = np.array_equal(got.view(np.uint32), want.view(np.uint32))
        bad += not ok
        print(f"{'PASS' if ok else 'FAIL'} q8_k: {a.blocks} blocks against d*q")
    print("dequant_check:", "FAIL" if bad else "PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
