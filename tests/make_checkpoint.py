#!/usr/bin/env python3
"""Small random-weight Mixtral-family checkpoints in the Hugging Face layout
(config.json + safetensors, single file or sharded with an index), for the
shape tests of the runtime. Needs only numpy.

usage: make_checkpoint.py OUTDIR [--case NAME ...] [--list]
  Writes OUTDIR/NAME/ for each case (all cases by default), each with
  config.json, *.safetensors, tokens.txt (the token ids the test runs), and
  OUTDIR/cases.txt naming the cases written.
  make_checkpoint.py OUTDIR --custom --hidden H ... writes one checkpoint
  with the given shape (see --help) into OUTDIR itself.

The cases cover: storage types f32, f16, bf16; single-file and sharded;
4 and 6 experts with top-k 1, 2 and 3; GQA ratios 1, 2 and 4; head_dim not
equal to hidden / heads; rope theta 1e4 and 1e6; eps 1e-6 and 1e-5; a dense
Mistral-style model (no experts); tied input/output embeddings.
"""
import argparse
import json
import os
import struct

import numpy as np

# name: dict of shape parameters
CASES = {
    # top-1 routing, GQA ratio 1 (multi-head), f32, one file, theta 1e4, eps 1e-6
    "e4k1_f32": dict(hidden=64, ffn=96, layers=2, heads=4, kv_heads=4, head_dim=16, experts=4, topk=1,
                     vocab=96, theta=1e4, eps=1e-6, dtype="f32", shards=1, tied=False, arch="mixtral"),
    # top-3 of 6, GQA ratio 4, head_dim 24 != 64/8, bf16, sharded
    "e6k3_bf16_sharded": dict(hidden=64, ffn=80, layers=3, heads=8, kv_heads=2, head_dim=24, experts=6, topk=3,
                              vocab=112, theta=1e6, eps=1e-5, dtype="bf16", shards=3, tied=False, arch="mixtral"),
    # top-2 of 4, GQA ratio 2, f16, tied embeddings
    "e4k2_f16_tied": dict(hidden=48, ffn=64, layers=2, heads=4, kv_heads=2, head_dim=12, experts=4, topk=2,
                          vocab=80, theta=1e4, eps=1e-6, dtype="f16", shards=1, tied=True, arch="mixtral"),
    # top-2 of 6, GQA ratio 2, head_dim 12 with 6 heads (72 != hidden 48), f32 sharded
    "e6k2_f32_hd": dict(hidden=48, ffn=72, layers=2, heads=6, kv_heads=3, head_dim=12, experts=6, topk=2,
                        vocab=64, theta=1e6, eps=1e-5, dtype="f32", shards=2, tied=False, arch="mixtral"),
    # dense Mistral-style model, GQA ratio 4, bf16, sharded
    "mistral_dense": dict(hidden=64, ffn=128, layers=2, heads=4, kv_heads=1, head_dim=16, experts=0, topk=0,
                          vocab=100, theta=1e4, eps=1e-6, dtype="bf16", shards=2, tied=False, arch="mistral"),
}
N_TOKENS = 19


def to_bytes(x, dtype):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    if dtype == "bf16":  # round to nearest even, as torch does
        u = x.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return u.astype("<u2").tobytes()
    raise ValueError(dtype)


ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
ELEM = {"f32": 4, "f16": 2, "bf16": 2}


def tensor_shapes(p):
    hd, H = p["head_dim"], p["hidden"]
    s = {"model.embed_tokens.weight": (p["vocab"], H), "model.norm.weight": (H,)}
    if not p["tied"]:
        s["lm_head.weight"] = (p["vocab"], H)
    for l in range(p["layers"]):
        q = f"model.layers.{l}."
        s[q + "input_layernorm.weight"] = (H,)
        s[q + "post_attention_layernorm.weight"] = (H,)
        s[q + "self_attn.q_proj.weight"] = (p["heads"] * hd, H)
        s[q + "self_attn.k_proj.weight"] = (p["kv_heads"] * hd, H)
        s[q + "self_attn.v_proj.weight"] = (p["kv_heads"] * hd, H)
        s[q + "self_attn.o_proj.weight"] = (H, p["heads"] * hd)
        if p["experts"] == 0:
            s[q + "mlp.gate_proj.weight"] = (p["ffn"], H)
            s[q + "mlp.up_proj.weight"] = (p["ffn"], H)
            s[q + "mlp.down_proj.weight"] = (H, p["ffn"])
        else:
            s[q + "block_sparse_moe.gate.weight"] = (p["experts"], H)
            for e in range(p["experts"]):
                r = q + f"block_sparse_moe.experts.{e}."
                s[r + "w1.weight"] = (p["ffn"], H)
                s[r + "w3.weight"] = (p["ffn"], H)
                s[r + "w2.weight"] = (H, p["ffn"])
    return s


def random_tensor(rng, name, shape):
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name == "model.embed_tokens.weight":
        return rng.standard_normal(shape)
    # unit-variance activations: N(0, 1/fan_in); the router a bit sharper
    scale = 1.0 / np.sqrt(shape[-1])
    if name.endswith("block_sparse_moe.gate.weight"):
        scale *= 2.0
    return scale * rng.standard_normal(shape)


def write_checkpoint(out, p, seed):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(p)
    names = sorted(shapes)
    data = {n: to_bytes(random_tensor(rng, n, shapes[n]), p["dtype"]) for n in names}
    total = sum(len(b) for b in data.values())
    n_sh = max(1, p["shards"])
    budget = -(-total // n_sh)
    shards, cur, size = [], [], 0
    for n in names:
        if cur and size + len(data[n]) > budget and len(shards) < n_sh - 1:
            shards.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += len(data[n])
    shards.append(cur)
    wmap = {}
    for i, part in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        hdr, off = {}, 0
        for n in part:
            b = len(data[n])
            hdr[n] = {"dtype": ST_DTYPE[p["dtype"]], "shape": list(shapes[n]), "data_offsets": [off, off + b]}
            off += b
            wmap[n] = fn
        hdr["__metadata__"] = {"format": "pt"}
        h = json.dumps(hdr, separators=(",", ":")).encode()
        h += b" " * ((8 - len(h) % 8) % 8)
        with open(os.path.join(out, fn), "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for n in part:
                f.write(data[n])
    if len(shards) > 1:
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=1)
    torch_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[p["dtype"]]
    cfg = {"vocab_size": p["vocab"], "hidden_size": p["hidden"], "intermediate_size": p["ffn"],
           "num_hidden_layers": p["layers"], "num_attention_heads": p["heads"],
           "num_key_value_heads": p["kv_heads"], "head_dim": p["head_dim"], "rope_theta": p["theta"],
           "rms_norm_eps": p["eps"], "max_position_embeddings": 64, "hidden_act": "silu",
           "sliding_window": None, "tie_word_embeddings": p["tied"], "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": torch_dtype}
    if p["arch"] == "mistral":
        cfg.update({"architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    else:
        cfg.update({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                    "num_local_experts": p["experts"], "num_experts_per_tok": p["topk"]})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    ids = rng.integers(0, p["vocab"], size=N_TOKENS)
    with open(os.path.join(out, "tokens.txt"), "w") as f:
        f.write(" ".join(str(int(i)) for i in ids) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--case", action="append", default=None, help="case name (repeatable); default all")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    ap.add_argument("--custom", action="store_true", help="one checkpoint from the flags below into OUT")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=0, help="0 = hidden / heads")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--theta", type=float, default=1e6)
    ap.add_argument("--eps", type=float, default=1e-5)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="bf16")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.list:
        print("\n".join(CASES))
        return
    if a.custom:
        p = dict(hidden=a.hidden, ffn=a.ffn, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads,
                 head_dim=a.head_dim or a.hidden // a.heads, experts=a.experts,
                 topk=a.topk if a.experts else 0, vocab=a.vocab, theta=a.theta, eps=a.eps, dtype=a.dtype,
                 shards=a.shards, tied=a.tied, arch="mixtral" if a.experts else "mistral")
        write_checkpoint(a.out, p, a.seed)
        return
    names = a.case or list(CASES)
    for n in names:
        if n not in CASES:
            ap.error(f"unknown case {n}; known: {', '.join(CASES)}")
    os.makedirs(a.out, exist_ok=True)
    for n in names:
        write_checkpoint(os.path.join(a.out, n), CASES[n], seed=1000 + list(CASES).index(n))
    with open(os.path.join(a.out, "cases.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
