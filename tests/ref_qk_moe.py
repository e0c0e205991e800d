#!/usr/bin/env python3
"""Independent float64 numpy forward of the QK-norm MoE families, written
from transformers' published modeling code (modeling_qwen3_moe.py:
Qwen3MoeAttention / Qwen3MoeSparseMoeBlock; modeling_olmoe.py:
OlmoeAttention / OlmoeSparseMoeBlock), reading an HF checkpoint directory
with its own safetensors parser. It shares no code with moetool.

  ref_qk_moe.py DIR [DIR ...]
For each DIR: reads DIR/tokens.txt, writes DIR/ref-logits.f32 ([tokens,
vocab] little-endian f32) and DIR/ref-routing.json (per layer, per token, the
top-k experts in descending weight; [-1]*k for a dense-MLP layer); and, from
DIR/bundled-reference.json (the bundled model's tokenizer cases and logits
ids), DIR/reference.json + DIR/reference-logits.f32 as
tests/llamacpp_check.py reads them.

The math, per layer (x: residual stream, rms(v, w) = v / sqrt(mean(v^2) +
eps) * w):
  h = rms(x, input_layernorm)
  q, k, v = h Wq^T, h Wk^T, h Wv^T
  Qwen3-MoE: q, k = rms over each head's head_dim values (q_norm, k_norm)
  OLMoE:     q, k = rms over the whole projection (q_norm, k_norm)
  RoPE rotate_half with theta, causal GQA softmax attention, x += attn Wo^T
  h = rms(x, post_attention_layernorm)
  MoE layer: p = softmax(h Wg^T); top-k; w = p_topk (/ sum if norm_topk_prob)
             x += sum_k w_k * down(silu(gate h) * up h)
  dense layer (Qwen3-MoE mlp_only_layers / decoder_sparse_step): x += mlp(h)
  logits = rms(x, norm) lm_head^T (embed_tokens when tied)
"""
import json
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    out = {}
    buf = open(path, "rb").read()
    (n,) = struct.unpack_from("<Q", buf, 0)
    hdr = json.loads(buf[8:8 + n])
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(buf[8 + n + b:8 + n + e], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return out


def rms(v, w, eps):
    return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w


def silu(v):
    return v / (1.0 + np.exp(-v))


def forward(d, ids):
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = read_safetensors(os.path.join(d, "model.safetensors"))
    qwen3 = cfg["model_type"] == "qwen3_moe"
    assert qwen3 or cfg["model_type"] == "olmoe"
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps, theta, K = cfg["rms_norm_eps"], cfg["rope_theta"], cfg["num_experts_per_tok"]
    n = len(ids)
    x = W["model.embed_tokens.weight"][ids]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(np.arange(n, dtype=np.float64), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(t):  # (heads, n, hd)
        rot = np.concatenate([-t[..., hd // 2:], t[..., :hd // 2]], -1)
        return t * cos + rot * sin

    routing = []
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        q, k, v = (h @ W[p + f"self_attn.{m}_proj.weight"].T for m in "qkv")
        if qwen3:
            q = rms(q.reshape(n, nh, hd), W[p + "self_attn.q_norm.weight"], eps)
            k = rms(k.reshape(n, nkv, hd), W[p + "self_attn.k_norm.weight"], eps)
        else:
            q = rms(q, W[p + "self_attn.q_norm.weight"], eps).reshape(n, nh, hd)
            k = rms(k, W[p + "self_attn.k_norm.weight"], eps).reshape(n, nkv, hd)
        q, k = rope(q.transpose(1, 0, 2)), rope(k.transpose(1, 0, 2))
        v = v.reshape(n, nkv, hd).transpose(1, 0, 2)
        rep = nh // nkv
        k, v = np.repeat(k, rep, 0), np.repeat(v, rep, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = (s @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        x = x + att @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        if p + "mlp.gate.weight" in W:
            lg = h @ W[p + "mlp.gate.weight"].T
            pr = np.exp(lg - lg.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            top = np.argsort(-pr, axis=-1, kind="stable")[:, :K]
            wts = np.take_along_axis(pr, top, -1)
            if cfg.get("norm_topk_prob"):
                wts = wts / wts.sum(-1, keepdims=True)
            out = np.zeros_like(x)
            for i in range(n):
                for j in range(K):
                    e = f"{p}mlp.experts.{top[i, j]}."
                    g = silu(W[e + "gate_proj.weight"] @ h[i]) * (W[e + "up_proj.weight"] @ h[i])
                    out[i] += wts[i, j] * (W[e + "down_proj.weight"] @ g)
            routing.append(top.tolist())
        else:
            out = (silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)) @ \
                W[p + "mlp.down_proj.weight"].T
            routing.append([[-1] * K for _ in range(n)])
        x = x + out
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return rms(x, W["model.norm.weight"], eps) @ head.T, routing


def main():
    for d in sys.argv[1:]:
        ids = [int(t) for t in open(os.path.join(d, "tokens.txt")).read().split()]
        logits, routing = forward(d, ids)
        logits.astype("<f4").tofile(os.path.join(d, "ref-logits.f32"))
        json.dump(routing, open(os.path.join(d, "ref-routing.json"), "w"))
        br = os.path.join(d, "bundled-reference.json")
        if os.path.exists(br):
            b = json.load(open(br))
            tids = b["logits_case"]["ids"]
            tl, _ = forward(d, tids)
            tl.astype("<f4").tofile(os.path.join(d, "reference-logits.f32"))
            json.dump({"tokenizer_cases": b.get("tokenizer_cases", []),
                       "logits_case": {"ids": tids, "file": "reference-logits.f32", "shape": list(tl.shape)},
                       "generator": "tests/ref_qk_moe.py (float64 numpy)"}, open(os.path.join(d, "reference.json"), "w"))


if __name__ == "__main__":
    main()
