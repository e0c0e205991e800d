#!/usr/bin/env python3
"""Compares two `moetool distill --json` runs: per-step losses (relative)
and every tensor of their model.safetensors (f32); numpy when installed,
plain Python otherwise.

usage: distill_mpi_compare.py A.json A_DIR B.json B_DIR LOSS_TOL WEIGHT_TOL [FAR_TOL FAR_FRAC]
Prints the worst relative difference of the steps' loss, CE and KD (below
1e-3: absolute), the
worst weight difference max|a - b| (absolute: training moves a weight by
about lr per step) and how many weights differ by more than FAR_TOL
(default 1e-5). Exit 1 when the loss or weight difference is above its
tolerance, more than FAR_FRAC (default 1e-4) of the weights are that far
apart, or the runs differ in steps, tensors or shapes."""
import json
import struct
import sys
from array import array

try:
    import numpy as np
except ImportError:
    np = None


def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        v = array("f")
        v.frombytes(data[a:b])
        if sys.byteorder != "little":
            v.byteswap()
        out[name] = (t["shape"], v)
    return out


def diff(va, vb, far_tol):
    """(max |a - b|, count of |a - b| > far_tol, max |a|)"""
    if np is not None:
        x, y = np.frombuffer(va, dtype=np.float32), np.frombuffer(vb, dtype=np.float32)
        d = np.abs(x.astype(np.float64) - y)
        return float(d.max(initial=0.0)), int((d > far_tol).sum()), float(np.abs(x).max(initial=0.0))
    d = [abs(x - y) for x, y in zip(va, vb)]
    return max(d, default=0.0), sum(1 for x in d if x > far_tol), max(map(abs, va), default=0.0)


def main():
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    aj, ad, bj, bd = sys.argv[1:5]
    ltol, wtol = float(sys.argv[5]), float(sys.argv[6])
    far_tol = float(sys.argv[7]) if len(sys.argv) > 7 else 1e-5
    far_frac = float(sys.argv[8]) if len(sys.argv) > 8 else 1e-4
    la, lb = json.load(open(aj))["log"], json.load(open(bj))["log"]
    if [s["step"] for s in la] != [s["step"] for s in lb]:
        sys.exit("FAIL: the runs have different steps")
    worst_l = 0.0
    for sa, sb in zip(la, lb):
        for k in ("loss", "ce", "kd"):
            worst_l = max(worst_l, abs(sa[k] - sb[k]) / max(abs(sa[k]), 1e-3))  # KD can be ~0
    ta, tb = tensors(ad + "/model.safetensors"), tensors(bd + "/model.safetensors")
    if sorted(ta) != sorted(tb):
        sys.exit("FAIL: the outputs hold different tensors")
    worst_w, where, scale, n_far, n_all = 0.0, "-", 0.0, 0, 0
    for name in sorted(ta):
        (sa, va), (sb, vb) = ta[name], tb[name]
        if sa != sb:
            sys.exit(f"FAIL: {name} has shape {sa} vs {sb}")
        d, far, mx = diff(va, vb, far_tol)
        n_far, n_all, scale = n_far + far, n_all + len(va), max(scale, mx)
        if d > worst_w:
            worst_w, where = d, name
    print(f"steps {len(la)}: worst loss/CE/KD relative difference {worst_l:.3g} (tolerance {ltol:g}); "
          f"worst weight difference {worst_w:.3g} in {where} (tolerance {wtol:g}; max |w| {scale:.3g}); "
          f"{n_far} of {n_all} weights differ by more than {far_tol:g} (allowed: {far_frac:g} of them)")
    sys.exit(0 if worst_l <= ltol and worst_w <= wtol and n_far <= far_frac * n_all else 1)


main()
