#!/usr/bin/env python3
"""Trains a tiny Switch Transformers model (transformers'
SwitchTransformersForConditionalGeneration) on T5 span corruption of the KJV
text bundled with models/kjv-mixtral-15m, with that model's tokenizer ids, and
writes the calibration and held-out pairs moetool reads (eval --pairs,
quantize --calib-pairs):

  train_switch_kjv.py OUT_DIR [--minutes M | --steps N] [--threads T] [--seed S] [--init DIR]

OUT_DIR gets config.json + model.safetensors (save_pretrained, float32) and
  data/calib.pairs.jsonl   256 pairs from data/train.txt (seed S+1)
  data/test.pairs.jsonl    256 pairs from data/test.txt  (seed S+2)
  data/train_log.json      steps, seconds, training and held-out losses
Training pairs are drawn from data/train.txt only.

Span corruption as T5 (Raffel et al. 2020, the "random spans" objective):
windows of 64 tokens of the text; 15 % of their tokens in spans of mean
length 3 are replaced in the input by sentinels (one id per span, counting
down from the top of the vocabulary as T5's <extra_id_0>, <extra_id_1>, ...),
and the target is each sentinel followed by the span it replaced; both end
with EOS. Vocabulary: the 4096 ids of the KJV tokenizer (BPE, <unk> 0, <s> 1,
</s> 2) + 32 sentinels; pad and decoder start 0, EOS 2.

Model: 8 experts, d_model 128, d_ff 512, d_kv 32 x 4 heads, 2 encoder + 2
decoder layers, the second layer of each stack sparse (MoE every other layer
as the released checkpoints), expert capacity 64 (>= every sequence: no drops),
lm_head tied to the embedding (as the released checkpoints). AdamW, lr 2e-3
after 50 warm-up steps, batch 16, router z- and load-balancing losses as
transformers adds them; the run stops after --minutes of wall time. --init
continues from a previous OUT_DIR (fresh optimizer state; the same held-out
and calibration pairs). --steps N stops after N steps instead of a wall
time, so a run is reproducible on any machine. Needs torch + transformers + tokenizers
(/usr/bin/python3).
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
KJV = os.path.join(HERE, "..", "models", "kjv-mixtral-15m")
N_SENT = 32
WINDOW = 64
NOISE, MEAN_SPAN = 0.15, 3.0
EOS, PAD = 2, 0


def span_corrupt(toks, rng, vocab):
    """T5's random_spans_noise_mask, then sentinel inputs and targets."""
    n = len(toks)
    n_noise = max(1, int(round(n * NOISE)))
    n_spans = max(1, int(round(n_noise / MEAN_SPAN)))
    n_clean = n - n_noise

    def seg(total, k):  # k positive parts summing to total, random
        cuts = sorted(rng.sample(range(1, total), k - 1)) if k > 1 else []
        return [b - a for a, b in zip([0] + cuts, cuts + [total])]

    noise_len, clean_len = seg(n_noise, n_spans), seg(n_clean, n_spans)
    inp, tgt, i = [], [], 0
    for s in range(n_spans):
        inp += toks[i:i + clean_len[s]]
        i += clean_len[s]
        sent = vocab - 1 - s
        inp.append(sent)
        tgt.append(sent)
        tgt += toks[i:i + noise_len[s]]
        i += noise_len[s]
    return inp + [EOS], tgt + [EOS]


def make_pairs(ids, n, rng, vocab):
    out = []
    for _ in range(n):
        p = rng.randrange(0, len(ids) - WINDOW)
        out.append(span_corrupt(ids[p:p + WINDOW], rng, vocab))
    return out


def batch(pairs):
    li, lt = max(len(a) for a, _ in pairs), max(len(b) for _, b in pairs)
    x = torch.full((len(pairs), li), PAD, dtype=torch.long)
    am = torch.zeros((len(pairs), li), dtype=torch.long)
    y = torch.full((len(pairs), lt), -100, dtype=torch.long)
    for k, (a, b) in enumerate(pairs):
        x[k, :len(a)] = torch.tensor(a)
        am[k, :len(a)] = 1
        y[k, :len(b)] = torch.tensor(b)
    return x, am, y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: --minutes decides)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--init", help="continue training this checkpoint (a previous OUT_DIR)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = Tokenizer.from_file(os.path.join(KJV, "tokenizer.json"))
    base = tok.get_vocab_size()
    vocab = base + N_SENT
    enc = lambda path: tok.encode(open(path, encoding="utf-8").read().replace("\n", " ")).ids  # noqa: E731
    train_ids = enc(os.path.join(KJV, "data", "train.txt"))
    test_ids = enc(os.path.join(KJV, "data", "test.txt"))
    cfg = SwitchTransformersConfig(vocab_size=vocab, d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2,
                                   num_decoder_layers=2, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1,
                                   num_experts=8, expert_capacity=64, relative_attention_num_buckets=32,
                                   relative_attention_max_distance=128, dropout_rate=0.0, router_jitter_noise=0.0,
                                   tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS,
                                   decoder_start_token_id=PAD)
    model = (SwitchTransformersForConditionalGeneration.from_pretrained(a.init) if a.init
             else SwitchTransformersForConditionalGeneration(cfg))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    rng = random.Random(a.seed + (1000 if a.init else 0))
    held = make_pairs(test_ids, 256, random.Random(a.seed + 2), vocab)
    calib = make_pairs(train_ids, 256, random.Random(a.seed + 1), vocab)

    def held_loss():
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for k in range(0, len(held), 64):
                x, am, y = batch(held[k:k + 64])
                o = model(input_ids=x, attention_mask=am, labels=y, output_router_logits=False)
                m = (y != -100).sum().item()
                tot += o.loss.item() * m
                n += m
        model.train()
        return tot / n

    log, t0, step, budget = [], time.time(), 0, a.minutes * 60
    warm = 50
    while (step < a.steps) if a.steps > 0 else (time.time() - t0 < budget):
        lr = 2e-3 * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        x, am, y = batch(make_pairs(train_ids, a.batch, rng, vocab))
        o = model(input_ids=x, attention_mask=am, labels=y, output_router_logits=True)
        opt.zero_grad()
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            h = held_loss()
            log.append(dict(step=step, seconds=round(time.time() - t0, 1), train_loss=round(o.loss.item(), 4),
                            held_loss=round(h, 4)))
            print(json.dumps(log[-1]), flush=True)
    h = held_loss()
    log.append(dict(step=step, seconds=round(time.time() - t0, 1), held_loss=round(h, 4), held_ppl=math.exp(h)))
    print(json.dumps(log[-1]), flush=True)
    model.eval()
    model.save_pretrained(a.out)
    d = os.path.join(a.out, "data")
    os.makedirs(d, exist_ok=True)
    for name, ps in (("calib", calib), ("test", held)):
        with open(os.path.join(d, name + ".pairs.jsonl"), "w") as f:
            for i, t in ps:
                f.write(json.dumps({"input": i, "target": t}) + "\n")
    with open(os.path.join(d, "train_log.json"), "w") as f:
        json.dump(dict(args=vars(a), log=log, config="see ../config.json"), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
