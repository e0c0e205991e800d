#!/usr/bin/env python3
"""Writes small random Switch Transformers checkpoints with transformers itself
(SwitchTransformersForConditionalGeneration(config).save_pretrained, float32,
seeded) and their reference outputs computed by transformers' own forward:

  make_switch.py OUT_DIR

For each case OUT_DIR/<case>/ holds the checkpoint as safetensors and
OUT_DIR/<case>-bin/ the same weights as pytorch_model.bin
(safe_serialization=False); OUT_DIR/<case>.ref.json holds
  input_ids, labels            the pair scored (labels: the target ids)
  logits                       [len(labels)][vocab], teacher-forced
                               (decoder_input_ids = labels shifted right)
  loss                         transformers' CrossEntropy loss of labels
                               (output_router_logits=False: no router losses)
  enc_experts, dec_experts     per sparse layer, per token, the expert that ran
                               (-1: dropped by the expert capacity)
  greedy                       model.generate(input_ids, greedy, max_new_tokens=N)
                               without the decoder start token
and OUT_DIR/<case>.pairs.jsonl the pair in moetool's eval format.

Cases:
  tied     4+4 layers, 4 experts, sparse every 2nd layer (layers 1, 3),
           expert_capacity 3 (tokens dropped in a 12-token input), tied
           embeddings (lm_head input scaled by d_model**-0.5)
  untied   3 encoder + 2 decoder layers, 8 experts, every layer sparse
           (num_sparse = num_layers), capacity 64 (never reached), untied
           lm_head

Exit 77 when torch / transformers are not importable.
"""
import json
import os
import sys

try:
    import torch
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration
except Exception as e:  # noqa: BLE001 - any import problem means "not installed here"
    print(f"skipped: torch/transformers with Switch Transformers not importable ({e})")
    sys.exit(77)

BASE = dict(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, relative_attention_num_buckets=8,
            relative_attention_max_distance=16, dropout_rate=0.0, router_jitter_noise=0.0,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
CASES = {
    "tied": dict(num_layers=4, num_decoder_layers=4, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2,
                 num_experts=4, expert_capacity=3, tie_word_embeddings=True),
    "untied": dict(num_layers=3, num_decoder_layers=2, num_sparse_encoder_layers=3, num_sparse_decoder_layers=2,
                   num_experts=8, expert_capacity=64, tie_word_embeddings=False),
}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for k, (name, over) in enumerate(CASES.items()):
        torch.manual_seed(1234 + k)
        cfg = SwitchTransformersConfig(**BASE, **over)
        model = SwitchTransformersForConditionalGeneration(cfg).eval()
        with torch.no_grad():  # weights of a visible scale, routers that vary
            for pname, p in model.named_parameters():
                if pname.endswith("layer_norm.weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                elif "relative_attention_bias" in pname or pname == "shared.weight":
                    p.copy_(torch.randn_like(p))
                else:
                    p.copy_(torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5) * 2.0)
        model.save_pretrained(os.path.join(out, name))
        model.save_pretrained(os.path.join(out, name + "-bin"), safe_serialization=False)
        g = torch.Generator().manual_seed(99 + k)
        inp = torch.randint(2, cfg.vocab_size, (1, 12), generator=g)
        inp[0, -1] = 1
        labels = torch.randint(2, cfg.vocab_size, (1, 9), generator=g)
        labels[0, -1] = 1
        with torch.no_grad():
            o = model(input_ids=inp, labels=labels, output_router_logits=True)
            o2 = model(input_ids=inp, labels=labels, output_router_logits=False)
            gen = model.generate(inp, do_sample=False, num_beams=1, max_new_tokens=10)

        def experts(router_tuple):
            res = []
            for t in router_tuple:
                if t is None or len(t) < 2 or t[1] is None or t[0].dim() < 3:
                    continue
                logits, idx = t
                res.append([int(v) for v in idx[0]])
            return res

        # expert_index of a dropped token is argmax of an all-zero mask: 0;
        # recompute the capacity mask from the logits to mark it -1
        def with_drops(router_tuple, cap):
            res = []
            for t in router_tuple:
                if t is None or t[0].dim() < 3:
                    continue
                logits = t[0][0]
                choice = logits.softmax(-1).argmax(-1)
                seen = {}
                row = []
                for c in choice.tolist():
                    seen[c] = seen.get(c, 0) + 1
                    row.append(c if seen[c] <= cap else -1)
                res.append(row)
            return res

        ref = dict(input_ids=inp[0].tolist(), labels=labels[0].tolist(), logits=o2.logits[0].tolist(),
                   loss=float(o2.loss), enc_experts=with_drops(o.encoder_router_logits, cfg.expert_capacity),
                   dec_experts=with_drops(o.decoder_router_logits, cfg.expert_capacity),
                   greedy=gen[0, 1:].tolist())
        with open(os.path.join(out, name + ".ref.json"), "w") as f:
            json.dump(ref, f)
        with open(os.path.join(out, name + ".pairs.jsonl"), "w") as f:
            f.write(json.dumps({"input": ref["input_ids"], "target": ref["labels"]}) + "\n")
        print(name, "loss", ref["loss"], "greedy", ref["greedy"])


if __name__ == "__main__":
    main()
