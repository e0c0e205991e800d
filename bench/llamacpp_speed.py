#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on a GGUF through llama-cpp-python,
the same protocol as bench/bench_runtime.c: prefill N_PREFILL tokens in one
batch, then decode N_DECODE tokens one at a time (greedy), best of REPS.
Prints one line: "prefill N tokens X tok/s, decode M tokens Y tok/s".
usage: llamacpp_speed.py MODEL.gguf [THREADS] [N_PREFILL] [N_DECODE] [REPS]"""
import os
import sys
import time

os.environ.setdefault("GGML_NO_BACKTRACE", "1")
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

path = sys.argv[1]
th, npf, nd, reps = (int(a) for a in (sys.argv[2:] + ["1", "256", "64", "3"][len(sys.argv) - 2:])[:4])
llm = llama_cpp.Llama(model_path=path, n_ctx=npf + nd + 8, n_batch=npf, n_threads=th, n_threads_batch=th,
                      logits_all=False, verbose=False)
rng = np.random.default_rng(88172645463325252 % 2**32)
ids = [int(i) for i in rng.integers(3, llm.n_vocab(), npf)]
best_p = best_d = 0.0
for _ in range(reps):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    for _ in range(nd):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        llm.eval([int(logits.argmax())])
    t2 = time.perf_counter()
    best_p = max(best_p, npf / (t1 - t0))
    best_d = max(best_d, nd / (t2 - t1) if nd else 0.0)
print(f"prefill {npf} tokens {best_p:.1f} tok/s, decode {nd} tokens {best_d:.1f} tok/s")
