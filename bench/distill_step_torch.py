"""The training step of `moetool distill` in PyTorch, for a throughput
comparison on the same machine: teacher forward (transformers Mixtral, f32,
no grad), student forward + backward (transformers Mistral, f32), loss
0.5 CE + 0.5 KL at T = 1, gradient clipping at 1, AdamW. Prints tokens/s
over the timed steps (teacher included), as moetool reports them.

usage: /usr/bin/python3 bench/distill_step_torch.py TEACHER_DIR STUDENT_DIR
         [--threads 2] [--batch 16] [--seq 256] [--steps 4] [--warm 1]
STUDENT_DIR: any student moetool distill wrote (only its shapes matter)."""
import argparse
import time

import torch
from transformers import MistralForCausalLM, MixtralForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("teacher")
ap.add_argument("student")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--warm", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
teacher = MixtralForCausalLM.from_pretrained(a.teacher, torch_dtype=torch.float32, attn_implementation="eager")
teacher.train(False)
student = MistralForCausalLM.from_pretrained(a.student, torch_dtype=torch.float32, attn_implementation="eager")
student.train()
V = student.config.vocab_size
opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)


def step():
    x = torch.randint(3, V, (a.batch, a.seq + 1))
    inp, tgt = x[:, :-1], x[:, 1:].reshape(-1)
    with torch.no_grad():
        t = teacher(inp).logits.view(-1, V)
    z = student(inp).logits.view(-1, V)
    ce = torch.nn.functional.cross_entropy(z, tgt)
    lp = torch.log_softmax(t, -1)
    kd = (lp.exp() * (lp - torch.log_softmax(z, -1))).sum(-1).mean()
    loss = 0.5 * ce + 0.5 * kd
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()


for _ in range(a.warm):
    step()
t0 = time.perf_counter()
for _ in range(a.steps):
    step()
dt = time.perf_counter() - t0
print(f"pytorch {torch.__version__}, {a.threads} threads: {a.steps} steps of {a.batch} x {a.seq} in {dt:.2f} s, "
      f"{a.steps * a.batch * a.seq / dt:.0f} tokens/s ({dt / a.steps:.2f} s/step)")
