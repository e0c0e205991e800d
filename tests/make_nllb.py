#!/usr/bin/env python3
"""Writes small random NLLB-MoE checkpoints with transformers itself
(NllbMoeForConditionalGeneration(config).save_pretrained, float32, seeded)
and their reference outputs, in the layout of tests/make_switch.py:

  make_nllb.py OUT_DIR

OUT_DIR/<case>/ (safetensors), OUT_DIR/<case>-bin/ (pytorch_model.bin),
OUT_DIR/<case>.ref.json {input_ids, labels, logits, loss, enc_experts,
dec_experts, greedy} where *_experts is, per sparse layer and token, the
pair [top-1, top-2] of experts that ran (-1: dropped by the capacity).

Cases:
  top2     4+4 layers, 4 experts, sparse every 2nd layer (layers 1, 3:
           transformers' (i + 1) % step == 0), 4 encoder / 2 decoder heads,
           different encoder / decoder FFN widths, moe_token_dropout 0.2 (the
           released value: expert outputs scaled by 0.8 in eval), eval
           capacity fraction 1.0 (nothing dropped)
  capacity 2+2 layers, 4 experts, every 2nd layer sparse, eval capacity
           fraction 0.3 (tokens dropped: ceil(0.3 · tokens) per expert),
           normalize_router_prob_before_dropping true, no scale_embedding

Exit 77 when torch / transformers are not importable.
"""
import json
import os
import sys

try:
    import torch
    from transformers import NllbMoeConfig, NllbMoeForConditionalGeneration
except Exception as e:  # noqa: BLE001 - any import problem means "not installed here"
    print(f"skipped: torch/transformers with NLLB-MoE not importable ({e})")
    sys.exit(77)

BASE = dict(vocab_size=64, d_model=32, encoder_ffn_dim=48, decoder_ffn_dim=40, encoder_attention_heads=4,
            decoder_attention_heads=2, num_experts=4, max_position_embeddings=64, dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0)
CASES = {
    "top2": dict(encoder_layers=4, decoder_layers=4, encoder_sparse_step=2, decoder_sparse_step=2),
    "capacity": dict(encoder_layers=2, decoder_layers=2, encoder_sparse_step=2, decoder_sparse_step=2,
                     moe_eval_capacity_token_fraction=0.3, normalize_router_prob_before_dropping=True,
                     scale_embedding=False),
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for k, (name, over) in enumerate(CASES.items()):
        torch.manual_seed(4321 + k)
        cfg = NllbMoeConfig(**BASE, **over)
        model = NllbMoeForConditionalGeneration(cfg).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "layer_norm" in pname:
                    p.copy_((1.0 if pname.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
                elif pname.endswith("shared.weight"):
                    p.copy_(torch.randn_like(p) * 0.1)
                elif pname.endswith(".bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        model.save_pretrained(os.path.join(out, name))
        model.save_pretrained(os.path.join(out, name + "-bin"), safe_serialization=False)
        g = torch.Generator().manual_seed(77 + k)
        inp = torch.randint(3, cfg.vocab_size, (1, 12), generator=g)
        inp[0, -1] = cfg.eos_token_id
        labels = torch.randint(3, cfg.vocab_size, (1, 9), generator=g)
        labels[0, -1] = cfg.eos_token_id
        routes = {}

        def hook(tag):
            def f(mod, args, res):
                top1 = res[0].argmax(-1)
                probs = res[1]
                rows = []
                for t in range(probs.shape[0]):
                    sel = [e for e in range(probs.shape[1]) if probs[t, e] > 0]
                    first = int(top1[t]) if int(top1[t]) in sel and res[0][t].sum() > 0 else -1
                    rest = [e for e in sel if e != first]
                    rows.append([first, rest[0] if rest else -1])
                routes.setdefault(tag, []).append(rows)
            return f

        for sname, stack in (("enc", model.model.encoder), ("dec", model.model.decoder)):
            for layer in stack.layers:
                if layer.is_sparse:
                    layer.ffn.router.register_forward_hook(hook(sname))
        with torch.no_grad():
            o = model(input_ids=inp, labels=labels, output_router_logits=False)
            hooks_done = dict(routes)
            routes.clear()
            gen = model.generate(inp, do_sample=False, num_beams=1, max_new_tokens=10)
        ref = dict(input_ids=inp[0].tolist(), labels=labels[0].tolist(), logits=o.logits[0].tolist(),
                   loss=float(o.loss), enc_experts=hooks_done.get("enc", []), dec_experts=hooks_done.get("dec", []),
                   greedy=gen[0, 1:].tolist())
        with open(os.path.join(out, name + ".ref.json"), "w") as f:
            json.dump(ref, f)
        with open(os.path.join(out, name + ".pairs.jsonl"), "w") as f:
            f.write(json.dumps({"input": ref["input_ids"], "target": ref["labels"]}) + "\n")
        print(name, "loss", ref["loss"], "greedy", ref["greedy"])


if __name__ == "__main__":
    main()
