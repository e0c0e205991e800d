#!/usr/bin/env python3
"""Independent numpy implementation of the Hugging Face Mixtral / Mistral
forward (MixtralForCausalLM, MistralForCausalLM), in float64, reading a HF
checkpoint directory with its own safetensors parser. It shares no code with
moetool; the runtime tests compare their logits with its output.

usage: ref_mixtral.py DIR [DIR ...]
  For each DIR: reads DIR/tokens.txt (whitespace-separated ids), writes
  DIR/ref-logits.f32 (row-major [tokens, vocab] little-endian float32) and
  DIR/ref-routing.json (per layer, per token, the top-k experts in order of
  descending routing weight).
ref_mixtral.py DIR --ids 1,2,3 --out FILE   writes logits of those ids.
"""
import argparse
import glob
import json
import os
import struct

import numpy as np


def read_safetensors(path):
    out = {}
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    hdr = json.loads(buf[8:8 + n])
    base = 8 + n
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        raw = buf[base + b:base + e]
        dt = t["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, "<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, "<f2")
        elif dt == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: dtype {dt} of {name} not handled")
        out[name] = a.astype(np.float64).reshape(t["shape"])
    return out


def load(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    W = {}
    for fn in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        W.update(read_safetensors(fn))
    return cfg, W


def rmsnorm(x, w, eps):
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + eps))


def rope_cos_sin(n, head_dim, theta):
    # HF: inv_freq = 1 / theta^(arange(0, d, 2) / d); emb = cat(freqs, freqs)
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = np.outer(np.arange(n, dtype=np.float64), inv)
    emb = np.concatenate([ang, ang], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg, W, ids):
    n = len(ids)
    H = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 1e4)
    E = cfg.get("num_local_experts", 0) if cfg.get("model_type") == "mixtral" else 0
    K = cfg.get("num_experts_per_tok", 0)
    cos, sin = rope_cos_sin(n, hd, theta)
    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    routing = []
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd).transpose(1, 0, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        if E == 0:
            g = h @ W[p + "mlp.gate_proj.weight"].T
            u = h @ W[p + "mlp.up_proj.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "mlp.down_proj.weight"].T
            continue
        lg = h @ W[p + "block_sparse_moe.gate.weight"].T
        pr = np.exp(lg - lg.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        # descending weight, lower index first on ties (stable sort of -p)
        top = np.argsort(-pr, axis=-1, kind="stable")[:, :K]
        wt = np.take_along_axis(pr, top, -1)
        wt /= wt.sum(-1, keepdims=True)
        routing.append(top.tolist())
        out = np.zeros_like(x)
        for e in range(E):
            r = p + f"block_sparse_moe.experts.{e}."
            rows, slot = np.nonzero(top == e)
            if len(rows) == 0:
                continue
            hi = h[rows]
            g = hi @ W[r + "w1.weight"].T
            u = hi @ W[r + "w3.weight"].T
            y = (g / (1 + np.exp(-g)) * u) @ W[r + "w2.weight"].T
            out[rows] += wt[rows, slot][:, None] * y
        x = x + out
    x = rmsnorm(x, W["model.norm.weight"], eps)
    lm = W["lm_head.weight"] if "lm_head.weight" in W and not cfg.get("tie_word_embeddings") \
        else W["model.embed_tokens.weight"]
    return x @ lm.T, routing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--ids", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    for d in a.dirs:
        cfg, W = load(d)
        if a.ids is not None:
            ids = [int(t) for t in a.ids.split(",")]
        else:
            with open(os.path.join(d, "tokens.txt")) as f:
                ids = [int(t) for t in f.read().split()]
        logits, routing = forward(cfg, W, ids)
        out = a.out or os.path.join(d, "ref-logits.f32")
        logits.astype("<f4").tofile(out)
        if a.out is None:
            with open(os.path.join(d, "ref-routing.json"), "w") as f:
                json.dump(routing, f)


if __name__ == "__main__":
    main()
