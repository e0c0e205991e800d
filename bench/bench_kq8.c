/* bench_kq8.c — matvec (decode) and matmul (prefill over n tokens) speed of
 * the block types on random weights, hot in cache: the compute side of the
 * kernels (decode's memory side is bench_matvec's). Uses only mt_matvec /
 * mt_matmul, so the same file builds against an older library for an A/B.
 *
 * Usage: bench_kq8 [threads (1)] [seconds per case (0.3)] [type filter] [shape filter]
 * Prints per case: µs per call, and G weight·token products per second.
 * MT_BENCH_CALLS=N: exactly N calls per case, one window (for instruction
 * counts under callgrind: valgrind --tool=callgrind --toggle-collect=mt_matvec);
 * MT_BENCH_N=n: only that token count (1 = matvec). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels_impl.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}

/* f16 fields per block (ggml-common.h) set to small finite values */
static const struct {
    const char *name;
    mt_dtype t;
    int n, off[2];
} k_types[] = {
    {"q2_K", MT_DT_Q2_K, 2, {80, 82}}, {"q3_K", MT_DT_Q3_K, 1, {108}}, {"q4_K", MT_DT_Q4_K, 2, {0, 2}},
    {"q5_K", MT_DT_Q5_K, 2, {0, 2}},   {"q6_K", MT_DT_Q6_K, 1, {208}}, {"q4_0", MT_DT_Q4_0, 1, {0}},
    {"q8_0", MT_DT_Q8_0, 1, {0}},      {"bf16", MT_DT_BF16, -1, {0}},  {"f32", MT_DT_F32, -1, {0}},
};

int main(int argc, char **argv) {
    const int th = argc > 1 ? atoi(argv[1]) : 1;
    const double secs = argc > 2 ? atof(argv[2]) : 0.3;
    const char *tf = argc > 3 ? argv[3] : "all", *sf = argc > 4 ? argv[4] : "all";
    const int fixed = getenv("MT_BENCH_CALLS") ? atoi(getenv("MT_BENCH_CALLS")) : 0;
    mt_pool *p;
    if (mt_pool_init(&p, th) != MT_OK) return 1;
    static const int shapes[][2] = {{3584, 1024}, {1024, 3584}, {512, 256}, {256, 512}};
    static const int ns[] = {1, 16, 64, 256};
    printf("type  shape      n    us/call   Gprod/s   (%d threads)\n", th);
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
        if (strcmp(tf, "all") && strcmp(tf, k_types[ti].name)) continue;
        const mt_dtype_info *di = mt_dtype_get(k_types[ti].t);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            char shape[32];
            snprintf(shape, sizeof shape, "%dx%d", shapes[si][0], shapes[si][1]);
            if (strcmp(sf, "all") && strcmp(sf, shape)) continue;
            const int64_t rows = shapes[si][0], cols = shapes[si][1];
            const uint64_t rb = (uint64_t)(cols / di->block_elems) * (uint64_t)di->block_bytes;
            uint8_t *w = malloc(rb * (uint64_t)rows);
            for (uint64_t i = 0; i < rb * (uint64_t)rows; i++) w[i] = (uint8_t)rnd_u32();
            if (k_types[ti].n < 0) { /* float types (prefill through sgemm): finite values */
                float *row = malloc((size_t)cols * sizeof(float));
                for (int64_t r = 0; r < rows; r++) {
                    for (int64_t c = 0; c < cols; c++) row[c] = (float)((int)(rnd_u32() % 2001) - 1000) / 1e5f;
                    mt_row_from_f32(k_types[ti].t, row, w + (uint64_t)r * rb, cols);
                }
                free(row);
            }
            for (uint64_t b = 0; b < (uint64_t)rows * (uint64_t)(cols / di->block_elems); b++)
                for (int k = 0; k < k_types[ti].n; k++) { /* n < 0: none */
                    const uint16_t h = mt_f32_to_f16(0.001f + 0.0001f * (float)(rnd_u32() % 100));
                    memcpy(w + b * (uint64_t)di->block_bytes + (uint64_t)k_types[ti].off[k], &h, 2);
                }
            const mt_mat W = {.dtype = k_types[ti].t, .rows = rows, .cols = cols, .data = w, .row_stride = rb};
            float *X = malloc((size_t)(256 * cols) * sizeof(float)), *Y = malloc((size_t)(256 * rows) * sizeof(float));
            float *scratch = malloc(mt_matmul_scratch_floats(&W) * sizeof(float));
            for (int64_t i = 0; i < 256 * cols; i++) X[i] = (float)((int)(rnd_u32() % 2001) - 1000) / 1000.0f;
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                const int n = ns[ni];
                if (getenv("MT_BENCH_N") && atoi(getenv("MT_BENCH_N")) != n) continue;
                double best = 1e30;
                for (int win = 0; win < (fixed ? 1 : 5); win++) {
                    int calls = 0;
                    const double t0 = now();
                    double t1;
                    do {
                        if (n == 1)
                            mt_matvec(p, &W, X, Y);
                        else
                            mt_matmul(p, &W, X, n, Y, scratch);
                        calls++;
                        t1 = now();
                    } while (fixed ? calls < fixed : t1 - t0 < secs / 5);
                    if ((t1 - t0) / calls < best) best = (t1 - t0) / calls;
                }
                printf("%-5s %-10s %-4d %9.2f %9.2f\n", k_types[ti].name, shape, n, best * 1e6,
                       (double)rows * (double)cols * n / best * 1e-9);
                fflush(stdout);
            }
            free(w), free(X), free(Y), free(scratch);
        }
    }
    mt_pool_free(p);
    return 0;
}
