#!/usr/bin/env python3
"""Writes small random Qwen2-MoE checkpoints with transformers itself
(Qwen2MoeForCausalLM(config).save_pretrained, float32, seeded) and their
reference outputs computed by transformers' own forward:

  make_qwen2moe.py OUT_DIR [--model-dir models/kjv-mixtral-15m]

For each case OUT_DIR/<case>/ holds the checkpoint, the bundled model's
tokenizer files (vocabulary 4096), tokens.txt (ids), ref-logits.f32
([tokens, vocab] little-endian f32), ref-routing.json (per layer, per token,
the top-k experts in descending weight; [-1]*k for a dense-MLP layer) and
reference.json + reference-logits.f32 in the layout tests/llamacpp_check.py
reads (the bundled model's tokenizer cases, logits of a text). The case
names are appended to OUT_DIR/cases.

Cases:
  moe      2 layers, 8 experts, top-2, every layer MoE, norm_topk_prob false
           (the Qwen1.5-MoE / Qwen2-57B settings) -- also the GGUF / llama.cpp case
  sparse   3 layers, 4 experts, top-2, decoder_sparse_step 2 (layers 0 and 2
           dense MLPs of intermediate_size), norm_topk_prob true, tied embeddings

Exit 77 when torch / transformers are not importable.
"""
import argparse
import json
import os
import shutil
import sys

try:
    import numpy as np
    import torch
    import transformers
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM
except Exception as e:  # noqa: BLE001 - any import problem means "not installed here"
    print(f"skipped: torch/transformers with Qwen2-MoE not importable ({e})")
    sys.exit(77)

CASES = {
    "moe": dict(num_hidden_layers=2, num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1,
                norm_topk_prob=False, tie_word_embeddings=False, seed=1),
    "sparse": dict(num_hidden_layers=3, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2,
                   norm_topk_prob=True, tie_word_embeddings=True, seed=2),
}


def routing_of(model, ids, cfg):
    """Top-k experts per layer and token, from the gates' logits (hooks)."""
    logits = {}
    hooks = []
    for l, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if isinstance(gate, torch.nn.Linear):
            hooks.append(gate.register_forward_hook(lambda m, i, o, l=l: logits.__setitem__(l, o.detach())))
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0].float().numpy()
    for h in hooks:
        h.remove()
    routing = []
    for l in range(cfg.num_hidden_layers):
        if l not in logits:
            routing.append([[-1] * cfg.num_experts_per_tok for _ in ids])
            continue
        p = torch.softmax(logits[l].float(), dim=-1)
        routing.append(torch.topk(p, cfg.num_experts_per_tok, dim=-1).indices.tolist())
    return out, routing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model-dir", default=os.path.join(os.path.dirname(__file__), "..", "models", "kjv-mixtral-15m"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    src_ref = json.load(open(os.path.join(a.model_dir, "reference.json")))
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    text = open(os.path.join(a.model_dir, "data", "test.txt"), encoding="utf-8").read()[:400]
    text_ids = [1] + tok.encode(text, add_special_tokens=False).ids[:63]
    os.makedirs(a.out, exist_ok=True)
    for name, c in CASES.items():
        c = dict(c)
        torch.manual_seed(c.pop("seed"))
        cfg = Qwen2MoeConfig(vocab_size=4096, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                             shared_expert_intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6,
                             bos_token_id=1, eos_token_id=2, initializer_range=0.08, **c)
        model = Qwen2MoeForCausalLM(cfg).float().eval()
        with torch.no_grad():  # biases, norms and gates away from their zero / one init
            for n, p in model.named_parameters():
                if n.endswith(".bias"):
                    p.normal_(0.0, 0.2)
                elif "norm" in n:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif "shared_expert_gate" in n:
                    p.normal_(0.0, 0.3)
        d = os.path.join(a.out, name)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
            shutil.copy(os.path.join(a.model_dir, f), d)
        gen = torch.Generator().manual_seed(7)
        ids = [1] + torch.randint(3, 4096, (23,), generator=gen).tolist()
        with open(os.path.join(d, "tokens.txt"), "w") as f:
            f.write(" ".join(map(str, ids)) + "\n")
        logits, routing = routing_of(model, ids, cfg)
        logits.astype("<f4").tofile(os.path.join(d, "ref-logits.f32"))
        json.dump(routing, open(os.path.join(d, "ref-routing.json"), "w"))
        tl, _ = routing_of(model, text_ids, cfg)
        tl.astype("<f4").tofile(os.path.join(d, "reference-logits.f32"))
        json.dump({"tokenizer_cases": src_ref.get("tokenizer_cases", []),
                   "logits_case": {"ids": text_ids, "file": "reference-logits.f32", "shape": list(tl.shape)},
                   "generator": f"transformers {transformers.__version__}, torch {torch.__version__}"},
                  open(os.path.join(d, "reference.json"), "w"))
    with open(os.path.join(a.out, "cases"), "a") as f:
        f.write("\n".join(CASES) + "\n")


if __name__ == "__main__":
    main()
