/* bench_matvec.c — decode matvec speed per storage type against this
 * machine's memory bandwidth, measured in the same run.
 *
 * Usage: bench_matvec [seconds_per_case (default 0.3)] [threads_max (default 2)]
 *                     [shape filter, e.g. 1024x3584] [type filter, e.g. bf16]
 *
 * Large ("cold") cases rotate through enough copies of the matrix to exceed
 * the caches (>= 256 MiB of weights), as decode streams every weight from
 * DRAM once per token; the floor is the time to read those bytes at the
 * measured read bandwidth for the same thread count. Each number is the best
 * of several short windows (the machine is shared). Small ("hot") cases
 * repeat one matrix, as the bundled 15M model's matrices stay in cache; what
 * they show is per-call overhead (x quantisation, pool sync). */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

#define COLD_BYTES (256u << 20)

static double g_secs = 0.3;

/* ---- bandwidth floor ------------------------------------------------------ */
typedef struct {
    const uint8_t *buf;
    size_t n;
    double sums[64];
} read_task;

static void read_fn(void *arg, int ith, int nth) {
    read_task *t = arg;
    int64_t b, e;
    mt_split_range((int64_t)(t->n / 64), ith, nth, 1, &b, &e);
#if defined(__AVX512F__)
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = b;
    for (; i + 4 <= e; i += 4) {
        const __m512i *p = (const __m512i *)(t->buf + 64 * i);
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + 1));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + 2));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + 3));
    }
    for (; i < e; i++) a0 = _mm512_xor_si512(a0, _mm512_load_si512((const __m512i *)(t->buf + 64 * i)));
    a0 = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    t->sums[ith] = (double)_mm_cvtsi128_si32(_mm512_castsi512_si128(a0));
#elif defined(__AVX2__)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0;
    for (int64_t i = b; i < e; i++) {
        const __m256i *p = (const __m256i *)(t->buf + 64 * i);
        a0 = _mm256_xor_si256(a0, _mm256_load_si256(p));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256(p + 1));
    }
    t->sums[ith] = (double)_mm256_extract_epi32(_mm256_xor_si256(a0, a1), 0);
#else
    uint64_t s = 0;
    for (int64_t i = b * 8; i < e * 8; i++) s ^= ((const uint64_t *)t->buf)[i];
    t->sums[ith] = (double)s;
#endif
}

/* Timings are the best of WINDOWS windows of g_secs / WINDOWS each: the
 * machine is shared, and the best window is the one least disturbed. */
#define WINDOWS 8

static double read_gbs(mt_pool *p, const uint8_t *buf, size_t n) {
    read_task t = {buf, n, {0}};
    mt_pool_run(p, read_fn, &t); /* warm-up */
    double best = 0.0;
    for (int w = 0; w < WINDOWS; w++) {
        int reps = 0;
        const double t0 = mt_now();
        double t1;
        do {
            mt_pool_run(p, read_fn, &t);
            reps++;
            t1 = mt_now();
        } while (t1 - t0 < g_secs / WINDOWS);
        const double gbs = (double)n * reps / (t1 - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    return best;
}

static double memcpy_gbs(uint8_t *dst, const uint8_t *src, size_t n) {
    memcpy(dst, src, n);
    double best = 0.0;
    for (int w = 0; w < WINDOWS; w++) {
        int reps = 0;
        const double t0 = mt_now();
        double t1;
        do {
            memcpy(dst, src, n);
            reps++;
            t1 = mt_now();
        } while (t1 - t0 < g_secs / WINDOWS);
        const double gbs = 2.0 * (double)n * reps / (t1 - t0) / 1e9; /* read + write, as usually quoted */
        if (gbs > best) best = gbs;
    }
    return best;
}

/* ---- matvec cases ------------------------------------------------------------ */
typedef struct {
    uint8_t *buf;   /* copies of the matrix, back to back */
    int copies;
    uint64_t bytes; /* of one matrix */
    mt_mat W;
} mat_set;

static int make_set(mat_set *s, mt_dtype t, int64_t rows, int64_t cols, int cold) {
    uint64_t rb;
    if (mt_dtype_nbytes(t, (uint64_t)cols, &rb) != MT_OK) return -1;
    s->bytes = rb * (uint64_t)rows;
    s->copies = cold ? (int)((COLD_BYTES + s->bytes - 1) / s->bytes) : 1;
    s->buf = aligned_alloc(64, (s->bytes * (uint64_t)s->copies + 63) & ~(uint64_t)63);
    float *row = malloc((size_t)cols * sizeof(float));
    if (!s->buf || !row) return -1;
    uint32_t seed = 12345;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            seed = seed * 1664525u + 1013904223u;
            row[c] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.1f;
        }
        mt_row_from_f32(t, row, s->buf + (uint64_t)r * rb, cols);
    }
    for (int k = 1; k < s->copies; k++) memcpy(s->buf + (uint64_t)k * s->bytes, s->buf, s->bytes);
    free(row);
    s->W = (mt_mat){.dtype = t, .rows = rows, .cols = cols, .data = s->buf, .row_stride = rb};
    return 0;
}

/* Seconds per matvec (best window), cycling through the copies. */
static double time_matvec(mt_pool *p, mat_set *s, const float *x, float *y) {
    mt_mat W = s->W;
    for (int k = 0; k < s->copies; k++) { /* warm-up pass */
        W.data = s->buf + (uint64_t)k * s->bytes;
        mt_matvec(p, &W, x, y);
    }
    double best = 1e30;
    for (int w = 0; w < WINDOWS; w++) {
        long reps = 0;
        const double t0 = mt_now();
        double t1;
        do {
            for (int k = 0; k < s->copies; k++) {
                W.data = s->buf + (uint64_t)k * s->bytes;
                mt_matvec(p, &W, x, y);
            }
            reps += s->copies;
            t1 = mt_now();
        } while (t1 - t0 < g_secs / WINDOWS);
        const double sec = (t1 - t0) / (double)reps;
        if (sec < best) best = sec;
    }
    return best;
}

int main(int argc, char **argv) {
    if (argc > 1) g_secs = atof(argv[1]);
    int max_threads = argc > 2 ? atoi(argv[2]) : 2;
    if (g_secs <= 0 || max_threads < 1 || max_threads > 64) {
        fprintf(stderr, "usage: bench_matvec [seconds_per_case] [threads_max]\n");
        return 2;
    }
    mt_pool *pools[65] = {0};
    for (int t = 1; t <= max_threads; t++)
        if (mt_pool_init(&pools[t], t) != MT_OK) {
            fprintf(stderr, "bench_matvec: %s\n", mt_last_error());
            return 1;
        }

    /* Bandwidth of this machine now. */
    const size_t bw_n = COLD_BYTES;
    uint8_t *a = aligned_alloc(64, bw_n), *b = aligned_alloc(64, bw_n);
    if (!a || !b) return 1;
    memset(a, 1, bw_n);
    memset(b, 2, bw_n);
    double rd[65] = {0};
    printf("memcpy: %.1f GB/s (read+write)\n", memcpy_gbs(b, a, bw_n));
    for (int t = 1; t <= max_threads; t++) {
        rd[t] = read_gbs(pools[t], a, bw_n);
        printf("read, %d thread%s: %.1f GB/s\n", t, t > 1 ? "s" : "", rd[t]);
    }
    free(a);
    free(b);

    struct {
        int64_t rows, cols;
        int cold;
    } shapes[] = {{3584, 1024, 1}, {1024, 3584, 1}, {128, 4096, 0}, {4096, 256, 0}, {512, 256, 0}, {256, 512, 0}, {64, 256, 0}};
    const mt_dtype types[] = {MT_DT_F32, MT_DT_F16, MT_DT_BF16, MT_DT_Q8_0, MT_DT_Q4_0};
    printf("\n%-5s %-10s %-4s %3s %10s %8s %9s\n", "type", "shape", "mode", "thr", "us/matvec", "GB/s", "vs floor");
    const char *shape_filter = argc > 3 ? argv[3] : NULL, *type_filter = argc > 4 ? argv[4] : NULL;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)shapes[si].rows, (long long)shapes[si].cols);
        if (shape_filter && strcmp(shape_filter, "all") != 0 && strcmp(shape_filter, shape) != 0) continue;
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            if (type_filter && strcmp(type_filter, mt_dtype_get(types[ti])->name) != 0) continue;
            mat_set s;
            if (make_set(&s, types[ti], shapes[si].rows, shapes[si].cols, shapes[si].cold) != 0) {
                fprintf(stderr, "bench_matvec: out of memory\n");
                return 1;
            }
            float *x = malloc((size_t)shapes[si].cols * sizeof(float));
            float *y = malloc((size_t)shapes[si].rows * sizeof(float));
            if (!x || !y) return 1;
            for (int64_t i = 0; i < shapes[si].cols; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
            for (int t = 1; t <= max_threads; t++) {
                const double sec = time_matvec(pools[t], &s, x, y);
                const double gbs = (double)s.bytes / sec / 1e9;
                if (shapes[si].cold)
                    printf("%-5s %-10s %-4s %3d %10.2f %8.1f %8.2fx\n", mt_dtype_get(types[ti])->name, shape, "cold",
                           t, sec * 1e6, gbs, rd[t] / gbs);
                else
                    printf("%-5s %-10s %-4s %3d %10.2f %8.1f %9s\n", mt_dtype_get(types[ti])->name, shape, "hot", t,
                           sec * 1e6, gbs, "-");
                fflush(stdout);
            }
            free(x);
            free(y);
            free(s.buf);
        }
    }
    for (int t = 1; t <= max_threads; t++) mt_pool_free(pools[t]);
    return 0;
}
