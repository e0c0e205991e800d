#!/usr/bin/env python3
"""check_gguf_independent.py — checks a GGUF written by `moetool convert`
against its Hugging Face source with code that shares nothing with moetool:
the GGUF is read by the `gguf` package (llama.cpp's gguf-py, GGUFReader), the
safetensors shards are parsed here with numpy, and llama.cpp's conventions
(Q/K permutation, merged experts, F32 norms and router, q8_0 rounding via
gguf.quants.quantize) are re-implemented from convert_hf_to_gguf.py.

usage: check_gguf_independent.py HF_DIR OUT.gguf [--dtype keep|bf16|f16|f32|q8_0]
Exit status 0 when every tensor and every checked key matches.
"""
import json
import os
import struct
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
import gguf.quants


def load_safetensors(path):
    """name -> (dtype string, shape, raw bytes) of one .safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], tuple(info["shape"]), blob[base + b:base + e])
    return out


def load_hf(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(idx))["weight_map"].values()))
             if os.path.exists(idx) else ["model.safetensors"])
    tensors = {}
    for fn in files:
        tensors.update(load_safetensors(os.path.join(model_dir, fn)))
    return tensors


def to_f32(dtype, shape, raw):
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(shape)
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)
    raise ValueError("unsupported source dtype " + dtype)


def permute(w, n_head):
    """llama.cpp LlamaModel.permute: rows reordered for interleaved RoPE."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    hf_dir, gguf_path = sys.argv[1], sys.argv[2]
    want = "keep"
    if "--dtype" in sys.argv:
        want = sys.argv[sys.argv.index("--dtype") + 1]
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    src = load_hf(hf_dir)
    r = GGUFReader(gguf_path)
    fails = []

    def field(key):
        f = r.fields.get(key)
        if f is None:
            fails.append("missing key " + key)
            return None
        return f.contents()

    # ---- metadata llama.cpp needs for arch "llama" (Mixtral) ----
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or H // nh
    E = cfg.get("num_local_experts", 0)
    expect = {
        "general.architecture": "llama",
        "llama.block_count": L,
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": H,
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.attention.head_count": nh,
        "llama.attention.head_count_kv": nkv,
        "llama.rope.dimension_count": hd,
        "llama.vocab_size": cfg["vocab_size"],
    }
    if E:
        expect["llama.expert_count"] = E
        expect["llama.expert_used_count"] = cfg["num_experts_per_tok"]
    for k, v in expect.items():
        got = field(k)
        if got is not None and got != v:
            fails.append(f"{k}: {got!r} != {v!r}")
    for k, v in (("llama.rope.freq_base", cfg.get("rope_theta", 10000.0)),
                 ("llama.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])):
        got = field(k)
        if got is not None and got != np.float32(v):
            fails.append(f"{k}: {got!r} != {v!r}")
    if "general.alignment" in r.fields:
        fails.append("general.alignment written although it is the default")
    if hd * nh != H and field("llama.attention.key_length") != hd:
        fails.append("llama.attention.key_length missing or wrong")

    # ---- tokenizer: pieces must be tokenizer.json's vocabulary in id order ----
    tok_json = os.path.join(hf_dir, "tokenizer.json")
    if "tokenizer.ggml.tokens" in r.fields:
        tokens = field("tokenizer.ggml.tokens")
        if field("tokenizer.ggml.model") != "llama":
            fails.append("tokenizer.ggml.model is not 'llama'")
        if len(tokens) != cfg["vocab_size"]:
            fails.append(f"{len(tokens)} tokens for vocab {cfg['vocab_size']}")
        for k in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            if len(field(k) or []) != len(tokens):
                fails.append(k + " length differs from the token list")
        if os.path.exists(tok_json):
            vocab = json.load(open(tok_json))["model"]["vocab"]
            by_id = {i: p for p, i in vocab.items()}
            bad = [i for i, p in enumerate(tokens) if by_id.get(i) != p]
            if bad:
                fails.append(f"{len(bad)} token pieces differ from tokenizer.json (first id {bad[0]})")
        for k, ck in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")):
            if cfg.get(ck) is not None and field(k) != cfg[ck]:
                fails.append(f"{k} != config {ck}")
        if field("tokenizer.ggml.add_bos_token") is not True:
            fails.append("tokenizer.ggml.add_bos_token is not true")
    else:
        fails.append("no tokenizer metadata")

    # ---- tensors ----
    gt = {t.name: t for t in r.tensors}

    def expected(name_hf, perm_heads=None):
        dt, shape, raw = src[name_hf]
        return dt, shape, raw, perm_heads

    plan = [("token_embd.weight", ["model.embed_tokens.weight"], None, "w"),
            ("output_norm.weight", ["model.norm.weight"], None, "n")]
    if "lm_head.weight" in src:
        plan.append(("output.weight", ["lm_head.weight"], None, "w"))
    for l in range(L):
        p = f"model.layers.{l}."
        plan += [(f"blk.{l}.attn_norm.weight", [p + "input_layernorm.weight"], None, "n"),
                 (f"blk.{l}.attn_q.weight", [p + "self_attn.q_proj.weight"], nh, "w"),
                 (f"blk.{l}.attn_k.weight", [p + "self_attn.k_proj.weight"], nkv, "w"),
                 (f"blk.{l}.attn_v.weight", [p + "self_attn.v_proj.weight"], None, "w"),
                 (f"blk.{l}.attn_output.weight", [p + "self_attn.o_proj.weight"], None, "w"),
                 (f"blk.{l}.ffn_norm.weight", [p + "post_attention_layernorm.weight"], None, "n")]
        if E:
            plan.append((f"blk.{l}.ffn_gate_inp.weight", [p + "block_sparse_moe.gate.weight"], None, "n"))
            for g, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                plan.append((f"blk.{l}.ffn_{g}_exps.weight",
                             [p + f"block_sparse_moe.experts.{e}.{w}.weight" for e in range(E)], None, "w"))
        else:
            for g in ("gate", "up", "down"):
                plan.append((f"blk.{l}.ffn_{g}.weight", [p + f"mlp.{g}_proj.weight"], None, "w"))

    if len(gt) != len(plan):
        fails.append(f"GGUF has {len(gt)} tensors, expected {len(plan)}")
    qtypes = {"bf16": GGMLQuantizationType.BF16, "f16": GGMLQuantizationType.F16,
              "f32": GGMLQuantizationType.F32, "q8_0": GGMLQuantizationType.Q8_0}
    checked = 0
    for gname, hf_names, perm_heads, kind in plan:
        t = gt.get(gname)
        if t is None:
            fails.append("missing tensor " + gname)
            continue
        parts = [src[n] for n in hf_names]
        f32 = np.stack([to_f32(*p) for p in parts]) if len(parts) > 1 else to_f32(*parts[0])
        if perm_heads:
            f32 = permute(f32, perm_heads)
        if list(t.shape) != list(reversed(f32.shape)):
            fails.append(f"{gname}: shape {list(t.shape)} != reversed {list(f32.shape)}")
            continue
        if kind == "n":  # norms and router: F32
            if t.tensor_type != GGMLQuantizationType.F32:
                fails.append(f"{gname}: type {t.tensor_type.name}, expected F32")
                continue
            want_bytes = f32.astype(np.float32).tobytes()
        else:
            if want == "keep":
                src_dt = parts[0][0]
                ty = {"BF16": GGMLQuantizationType.BF16, "F16": GGMLQuantizationType.F16,
                      "F32": GGMLQuantizationType.F32}[src_dt]
            else:
                ty = qtypes[want]
            if ty == GGMLQuantizationType.Q8_0 and f32.shape[-1] % 32:
                ty = GGMLQuantizationType.F16  # llama.cpp's fallback
            if t.tensor_type != ty:
                fails.append(f"{gname}: type {t.tensor_type.name}, expected {ty.name}")
                continue
            if want == "keep":
                raw = b"".join(p[2] for p in parts)
                if perm_heads:  # bit-exact: permute the raw 16-bit words
                    w16 = np.frombuffer(raw, dtype=np.uint16).reshape(f32.shape[-2], -1)
                    raw = permute(w16, perm_heads).tobytes()
                want_bytes = raw
            elif ty == GGMLQuantizationType.BF16:
                want_bytes = gguf.quants.quantize(f32, ty).tobytes()
            elif ty == GGMLQuantizationType.F16:
                want_bytes = f32.astype(np.float16).tobytes()
            elif ty == GGMLQuantizationType.F32:
                want_bytes = f32.tobytes()
            else:
                want_bytes = gguf.quants.quantize(f32, ty).tobytes()
        got = np.asarray(t.data).tobytes()
        if got != want_bytes:
            a = np.frombuffer(got, dtype=np.uint8)
            b = np.frombuffer(want_bytes, dtype=np.uint8)
            n = min(len(a), len(b))
            diff = int(np.count_nonzero(a[:n] != b[:n])) + abs(len(a) - len(b))
            fails.append(f"{gname}: {diff} of {len(b)} bytes differ")
        checked += 1

    for f in fails:
        print("FAIL:", f)
    print(f"check_gguf_independent: {checked} tensors and {len(expect) + 2} config keys checked "
          f"against {hf_dir} with gguf-py; {len(fails)} failure(s)")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
