#!/usr/bin/env python3
"""Writes small random checkpoints of the QK-norm MoE families in their exact
Hugging Face layout (tensor names, shapes, config.json keys as
transformers' Qwen3MoeConfig / OlmoeConfig write them; float32 safetensors),
for families transformers 4.40 lacks. numpy only; the reference outputs come
from tests/ref_qk_moe.py, which reads these files back independently.

  make_qk_checkpoint.py OUT_DIR [--model-dir models/kjv-mixtral-15m]

Each case OUT_DIR/<case>/ gets the checkpoint, the bundled model's tokenizer
files (vocabulary 4096) and tokens.txt; the case names are appended to
OUT_DIR/cases. Cases:
  qwen3moe         Qwen3-MoE: 2 layers, explicit head_dim 32 (hidden 64 / 4
                   heads would give 16), GQA 4/2, 8 experts top-2,
                   norm_topk_prob true -- also the GGUF / llama.cpp case
  qwen3moe-sparse  3 layers, mlp_only_layers [1] (a dense MLP of
                   intermediate_size), norm_topk_prob false, tied embeddings
  olmoe            OLMoE: 2 layers, 4 heads (no GQA, as OLMoE-1B-7B and
                   llama.cpp's olmoe), 8 experts top-2, norm_topk_prob false
                   -- also the GGUF / llama.cpp case
  olmoe-gqa        GQA 4/2 (k_norm over n_kv_heads*head_dim), 4 experts,
                   norm_topk_prob true, tied embeddings
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

BASE = dict(vocab_size=4096, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
            max_position_embeddings=1024, initializer_range=0.02, use_cache=True, rope_theta=10000.0,
            rope_scaling=None, attention_bias=False, attention_dropout=0.0, output_router_logits=False,
            bos_token_id=1, eos_token_id=2, torch_dtype="float32", transformers_version="4.51.0")

CASES = {
    "qwen3moe": dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_hidden_layers=2,
                     head_dim=32, intermediate_size=96, moe_intermediate_size=32, num_experts=8,
                     num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                     use_sliding_window=False, sliding_window=None, max_window_layers=2, rms_norm_eps=1e-6,
                     router_aux_loss_coef=0.001, tie_word_embeddings=False, seed=11),
    "qwen3moe-sparse": dict(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], num_hidden_layers=3,
                            head_dim=16, intermediate_size=96, moe_intermediate_size=32, num_experts=4,
                            num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
                            use_sliding_window=False, sliding_window=None, max_window_layers=3, rms_norm_eps=1e-6,
                            router_aux_loss_coef=0.001, tie_word_embeddings=True, seed=12),
    "olmoe": dict(model_type="olmoe", architectures=["OlmoeForCausalLM"], num_hidden_layers=2, intermediate_size=32,
                  num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None,
                  rms_norm_eps=1e-5, router_aux_loss_coef=0.01, pad_token_id=1, tie_word_embeddings=False, seed=13),
    "olmoe-gqa": dict(model_type="olmoe", architectures=["OlmoeForCausalLM"], num_hidden_layers=2,
                      intermediate_size=32, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                      norm_topk_prob=True, clip_qkv=None, rms_norm_eps=1e-5, router_aux_loss_coef=0.01,
                      pad_token_id=1, tie_word_embeddings=True, seed=14),
}


def tensors_of(cfg, rng):
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    E = cfg["num_experts"]
    qwen3 = cfg["model_type"] == "qwen3_moe"
    Fe = cfg["moe_intermediate_size"] if qwen3 else cfg["intermediate_size"]
    Fd = cfg["intermediate_size"]
    step = cfg.get("decoder_sparse_step", 1)
    dense = set(cfg.get("mlp_only_layers", []))
    t = {}
    lin = lambda o, i, s=0.15: (rng.standard_normal((o, i)) * s).astype(np.float32)  # noqa: E731
    nrm = lambda n: (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    t["model.embed_tokens.weight"] = lin(V, H, 1.0)
    for l in range(L):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = nrm(H)
        t[p + "self_attn.q_proj.weight"] = lin(nh * hd, H)
        t[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H)
        t[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        t[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        t[p + "self_attn.q_norm.weight"] = nrm(hd if qwen3 else nh * hd)
        t[p + "self_attn.k_norm.weight"] = nrm(hd if qwen3 else nkv * hd)
        t[p + "post_attention_layernorm.weight"] = nrm(H)
        if l not in dense and (l + 1) % step == 0:
            t[p + "mlp.gate.weight"] = lin(E, H, 0.5)
            for e in range(E):
                t[p + f"mlp.experts.{e}.gate_proj.weight"] = lin(Fe, H)
                t[p + f"mlp.experts.{e}.up_proj.weight"] = lin(Fe, H)
                t[p + f"mlp.experts.{e}.down_proj.weight"] = lin(H, Fe)
        else:
            t[p + "mlp.gate_proj.weight"] = lin(Fd, H)
            t[p + "mlp.up_proj.weight"] = lin(Fd, H)
            t[p + "mlp.down_proj.weight"] = lin(H, Fd)
    t["model.norm.weight"] = nrm(H)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = lin(V, H, 0.3)
    return t


def write_safetensors(path, tensors):
    hdr, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        hdr[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model-dir", default=os.path.join(os.path.dirname(__file__), "..", "models", "kjv-mixtral-15m"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, c in CASES.items():
        cfg = dict(BASE)
        cfg.update(c)
        rng = np.random.default_rng(cfg.pop("seed"))
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        write_safetensors(os.path.join(d, "model.safetensors"), tensors_of(cfg, rng))
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2, sort_keys=True)
        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
            shutil.copy(os.path.join(a.model_dir, f), d)
        ids = [1] + rng.integers(3, cfg["vocab_size"], 23).tolist()
        with open(os.path.join(d, "tokens.txt"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        shutil.copy(os.path.join(a.model_dir, "reference.json"), os.path.join(d, "bundled-reference.json"))
        with open(os.path.join(a.out, "cases"), "a") as f:
            f.write(name + "\n")


if __name__ == "__main__":
    main()
