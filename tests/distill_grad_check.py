"""Independent check of one distill training step: the student written by
tests/distill_grad_dump.c is loaded by transformers (MistralForCausalLM, or
MixtralForCausalLM for a MoE student, in float64, eager attention), the same
loss
    (1 - a) * CE(labels) + a * T^2 * KL(softmax(teacher/T) || softmax(student/T))
(mean over tokens) is computed with torch and differentiated by autograd;
moetool's loss must agree to 1e-5 relative and every gradient tensor to 1e-4
(max |g_moetool - g_torch| / max |g_torch|)."""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, MistralForCausalLM, MixtralForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--seq", type=int, required=True)
ap.add_argument("--alpha", type=float, required=True)
ap.add_argument("--temp", type=float, required=True)
a = ap.parse_args()
B, T = a.batch, a.seq
torch.set_default_dtype(torch.float64)  # the causal mask is built in the default dtype
sdir = os.path.join(a.dir, "student")
moe = AutoConfig.from_pretrained(sdir).model_type == "mixtral"
if moe:
    # transformers' Mixtral block takes the router softmax in float32
    # (F.softmax(..., dtype=torch.float)); in float64 throughout, so the check
    # is of the function and not of that rounding
    import transformers.models.mixtral.modeling_mixtral as mm
    _softmax = mm.F.softmax
    class _F:  # F with softmax kept in the input's dtype
        def __getattr__(self, k):
            return getattr(torch.nn.functional, k)
        @staticmethod
        def softmax(x, dim=None, dtype=None):
            return _softmax(x, dim=dim, dtype=x.dtype)
    mm.F = _F()
model = (MixtralForCausalLM if moe else MistralForCausalLM).from_pretrained(sdir, torch_dtype=torch.float64,
                                                                            attn_implementation="eager")
model.train(False)
V = model.config.vocab_size
tok = torch.from_numpy(np.fromfile(os.path.join(a.dir, "tokens.i32"), dtype=np.int32).astype(np.int64)).view(B, T)
tgt = torch.from_numpy(np.fromfile(os.path.join(a.dir, "targets.i32"), dtype=np.int32).astype(np.int64)).view(-1)
teacher = torch.from_numpy(np.fromfile(os.path.join(a.dir, "teacher.f32"), dtype=np.float32)).double().view(B * T, V)
loss_c, ce_c, kd_c = (float(x) for x in open(os.path.join(a.dir, "loss.txt")).read().split())

z = model(tok).logits.view(B * T, V)
ce = torch.nn.functional.cross_entropy(z, tgt)
lp = torch.log_softmax(teacher / a.temp, -1)
lq = torch.log_softmax(z / a.temp, -1)
kd = (lp.exp() * (lp - lq)).sum(-1).mean()
loss = (1 - a.alpha) * ce + a.alpha * a.temp ** 2 * kd
loss.backward()

fails = 0
rel = abs(loss.item() - loss_c) / abs(loss.item())
print(f"loss: torch {loss.item():.9f} moetool {loss_c:.9f} (ce {ce.item():.6f}/{ce_c:.6f}, kd {kd.item():.6f}/{kd_c:.6f}) rel {rel:.2e}")
if rel > 1e-5:
    print("FAIL loss"); fails += 1
grads = load_file(os.path.join(a.dir, "grads", "model.safetensors"))
named = dict(model.named_parameters())
worst = 0.0
for name, g in grads.items():
    p = named[name]
    ref = p.grad
    e = ((g.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    worst = max(worst, e)
    if e > 1e-4:
        print(f"FAIL {name}: maxdiff/max {e:.2e}"); fails += 1
missing = set(named) - set(grads)
if missing:
    print("FAIL no gradient for", sorted(missing)); fails += 1
print(f"{len(grads)} gradient tensors, worst maxdiff/max {worst:.2e}")
sys.exit(1 if fails else 0)
