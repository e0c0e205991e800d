/* bench_runtime.c — prefill and decode speed of the CPU runtime: loads a
 * model, prefills 256 tokens in one batch, then decodes 64 tokens one at a
 * time (greedy), and prints tokens/s for each phase (best of 3 runs).
 * usage: bench_runtime MODEL [THREADS] [N_PREFILL] [N_DECODE] [REPS] */
#include <stdio.h>
#include <stdlib.h>

#include "moetool/mt_runtime.h"

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[a]) a = i;
    return a;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [THREADS] [N_PREFILL] [N_DECODE] [REPS]\n", argv[0]);
        return 2;
    }
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = argc > 2 ? atoi(argv[2]) : 1;
    int np = argc > 3 ? atoi(argv[3]) : 256, nd = argc > 4 ? atoi(argv[4]) : 64;
    int reps = argc > 5 ? atoi(argv[5]) : 3;
    if (reps < 1) reps = 1;
    if (np < 1 || nd < 0) return 2;
    mt_model *m;
    if (mt_model_load(&m, argv[1], &mo) < 0) {
        fprintf(stderr, "moetool bench: %s\n", mt_last_error());
        return 1;
    }
    const mt_config *cf = mt_model_config(m);
    int32_t *ids = malloc((size_t)np * sizeof *ids);
    float *logits = malloc((size_t)cf->vocab * sizeof *logits);
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < np; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        ids[i] = (int32_t)(s % (uint64_t)cf->vocab);
    }
    mt_ctx *c;
    if (mt_ctx_init(&c, m, np + nd, np) < 0) {
        fprintf(stderr, "moetool bench: %s\n", mt_last_error());
        return 1;
    }
    double best_p = 1e30, best_d = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        mt_ctx_reset(c);
        double t0 = mt_now();
        if (mt_ctx_forward(c, ids, np, logits, 0) < 0) {
            fprintf(stderr, "moetool bench: %s\n", mt_last_error());
            return 1;
        }
        double t1 = mt_now();
        for (int i = 0; i < nd; i++) {
            int32_t id = argmax(logits, cf->vocab);
            if (mt_ctx_forward(c, &id, 1, logits, 0) < 0) {
                fprintf(stderr, "moetool bench: %s\n", mt_last_error());
                return 1;
            }
        }
        double t2 = mt_now();
        if (t1 - t0 < best_p) best_p = t1 - t0;
        if (t2 - t1 < best_d) best_d = t2 - t1;
    }
    printf("model %s, %d threads: prefill %d tokens %.1f tok/s, decode %d tokens %.1f tok/s\n", argv[1],
           mt_model_threads(m), np, np / best_p, nd, nd > 0 ? nd / best_d : 0.0);
    mt_ctx_free(c);
    free(ids);
    free(logits);
    mt_model_free(m);
    return 0;
}
