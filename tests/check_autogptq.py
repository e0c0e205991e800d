#!/usr/bin/env python3
"""Independent check of `moetool quantize --format hf` AutoGPTQ-layout output.

The HF directory's qweight/qzeros/scales/g_idx tensors are unpacked with the
AutoGPTQ formulas (written here from AutoGPTQ's QuantLinear.pack: codes packed
along in_features, 32/bits per int32, low bits first; zero points packed along
out_features and stored minus one for checkpoint_format "gptq"; weight =
scale[g_idx[i]] * (code - zero)), and compared with the same quantization
written as GGUF, dequantized by llama.cpp's gguf-py (gguf.quants.dequantize).
Both must hold exactly the same weights. The config's quantization_config is
checked for the keys transformers/optimum read.

usage: check_autogptq.py HF_DIR OUT.gguf BITS
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
import gguf.quants

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from check_gguf_independent import load_hf  # noqa: E402


def unpack_rows(words, bits):
    """int32 (n, m) -> codes (n * 32/bits, m): element j of word w at bits j*b."""
    per = 32 // bits
    w = words.view(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, :, None]
    return ((w[:, None, :] >> shifts) & ((1 << bits) - 1)).reshape(-1, w.shape[1])


def unpack_cols(words, bits):
    """int32 (n, m) -> codes (n, m * 32/bits), packed along the second axis."""
    per = 32 // bits
    w = words.view(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits)[None, None, :]
    return ((w[:, :, None] >> shifts) & ((1 << bits) - 1)).reshape(w.shape[0], -1)


def dequant_autogptq(t, base, bits):
    def arr(suffix, dt):
        dtype, shape, raw = t[base + suffix]
        assert dtype == dt, f"{base}{suffix}: {dtype}, expected {dt}"
        return np.frombuffer(raw, dtype={"I32": np.int32, "F16": np.float16}[dt]).reshape(shape)
    qw, qz, sc, gi = arr(".qweight", "I32"), arr(".qzeros", "I32"), arr(".scales", "F16"), arr(".g_idx", "I32")
    codes = unpack_rows(qw, bits).astype(np.int64)            # (in, out)
    zeros = unpack_cols(qz, bits).astype(np.int64) + 1        # (groups, out)
    scales = sc.astype(np.float32)                            # (groups, out)
    w = scales[gi, :] * (codes - zeros[gi, :]).astype(np.float32)  # (in, out)
    return w.T                                                # (out, in) as nn.Linear.weight


def main():
    hf_dir, gguf_path, bits = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = json.load(open(hf_dir + "/config.json"))
    q = cfg["quantization_config"]
    for k, v in {"quant_method": "gptq", "bits": bits, "group_size": 32, "desc_act": False, "sym": True,
                 "checkpoint_format": "gptq"}.items():
        if q.get(k) != v:
            print(f"FAIL: quantization_config.{k} = {q.get(k)!r}, expected {v!r}")
            return 1
    t = load_hf(hf_dir)
    g = {x.name: x for x in GGUFReader(gguf_path).tensors}
    n_layers, n_exp = cfg["num_hidden_layers"], cfg["num_local_experts"]
    checked = 0
    for l in range(n_layers):
        for hf_w, gg in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
            gt = g[f"blk.{l}.{gg}.weight"]
            ref = gguf.quants.dequantize(gt.data, gt.tensor_type).reshape(n_exp, -1, gt.shape[0])
            for e in range(n_exp):
                base = f"model.layers.{l}.block_sparse_moe.experts.{e}.{hf_w}"
                if base + ".weight" in t:
                    print(f"FAIL: {base}.weight present next to the quantized tensors")
                    return 1
                w = dequant_autogptq(t, base, bits)
                if w.shape != ref[e].shape or not np.array_equal(w, ref[e]):
                    d = np.max(np.abs(w - ref[e])) if w.shape == ref[e].shape else "shape"
                    print(f"FAIL: {base}: AutoGPTQ unpack differs from the GGUF weights (max |d| {d})")
                    return 1
                checked += 1
    print(f"ok: {checked} expert matrices, {bits}-bit AutoGPTQ layout == GGUF {gt.tensor_type.name} via gguf-py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
