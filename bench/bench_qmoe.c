/* bench_qmoe.c — the sub-1-bit ternary code (mt_qmoe.h) against the
 * entropy bound and zstd, and its fused decode+matvec against bf16 matvec.
 *
 * Usage: bench_qmoe [model_dir (default models/kjv-mixtral-15m)] [seconds_per_case (0.3)]
 *                   [--no-big] [--matvec-only] [--threads N (2)] [--avx2]
 *
 * Part 1 (ratio, decode speed): every expert matrix of the model quantized
 * to QMoE's ternary grid by round to nearest (per row {min, 0, max},
 * thresholds at half). Bits per weight of: the order-0 entropy of the
 * symbols; our code (codes + group offsets + row scales + headers + the
 * dictionary parameters); zstd level 19 per matrix on the symbol stream as
 * one byte per symbol and as 2-bit packed bytes, without and with a
 * dictionary trained on those streams (ZDICT_trainFromBuffer, its size
 * counted once); zstd rows get the same row scales added for the all-in
 * column. Decode speed: symbols per second to an int8 array (ours,
 * mt_qmoe_decode_rows) or to the stream (ZSTD_decompress*), one thread.
 *
 * Part 2 (matvec): µs per y = W x at 1 and N threads, coded (the runtime's
 * fused kernel through mt_matvec, and the previous default, the two-stage
 * bitplane kernel _planes, for comparison) vs the same matrix in bf16
 * (mt_matvec). --avx2 adds, in the same run, the LUT kernel in AVX2
 * (_avx2, what a machine without AVX-512 runs) and the portable _bits
 * kernel (what it ran before). Every coded result (every kernel) is checked
 * against the reference kernel. Shapes: the
 * model's own 512x256 (w1) and 256x512 (w2) of layer 0 expert 0, hot in
 * cache as in decoding the 15M model; synthetic ternary 3584x1024,
 * 14336x4096 and 4096x14336 (80 % zeros), cold: enough copies are cycled
 * to exceed 256 MiB so every weight comes from DRAM as in decoding a large
 * model.
 * Each number is the best of many short windows (the machine is shared). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zdict.h>
#include <zstd.h>

#include "kernels_impl.h"
#include "moetool/mt_qmoe.h"
#include "qmoe_kernel.h"

#define COLD_BYTES (256u << 20)
#define WINDOWS 1024
static double g_secs = 0.3;
static int g_threads = 2, g_matvec_only = 0, g_avx2 = 0;

typedef struct {
    int64_t rows, cols;
    int8_t *syms; /* (rows, cols) */
    float *lo, *hi;
} tern;

static int load_experts(const char *dir, tern **out, int *n_out, mt_weights *w, mt_ckpt **ck) {
    if (mt_ckpt_open(ck, dir) != MT_OK || mt_weights_init(w, *ck) != MT_OK) {
        fprintf(stderr, "bench_qmoe: %s\n", mt_last_error());
        return -1;
    }
    const int n = w->cfg.n_layers * w->cfg.n_experts * 3;
    tern *t = calloc((size_t)n, sizeof *t);
    int k = 0;
    for (int l = 0; l < w->cfg.n_layers; l++)
        for (int e = 0; e < w->cfg.n_experts; e++)
            for (int m = 0; m < 3; m++, k++) {
                const mt_mat *M = m == 0 ? &w->layers[l].w1[e] : m == 1 ? &w->layers[l].w3[e] : &w->layers[l].w2[e];
                t[k].rows = M->rows;
                t[k].cols = M->cols;
                t[k].syms = malloc((size_t)(M->rows * M->cols));
                t[k].lo = malloc((size_t)M->rows * sizeof(float));
                t[k].hi = malloc((size_t)M->rows * sizeof(float));
                float *row = malloc((size_t)M->cols * sizeof(float));
                for (int64_t r = 0; r < M->rows; r++) {
                    mt_row_to_f32(M->dtype, (const uint8_t *)M->data + r * M->row_stride, row, M->cols);
                    mt_qmoe_ternary_rtn(row, M->cols, t[k].syms + r * M->cols, &t[k].lo[r], &t[k].hi[r]);
                }
                free(row);
            }
    *out = t;
    *n_out = n;
    return 0;
}

/* Best-of-windows seconds per call of fn(ctx): windows of g_secs/WINDOWS
 * (at least one call) for g_secs in all, at least 3. Short windows let a
 * window fall between other processes' time slices on a shared machine. */
typedef void (*work_fn)(void *ctx);
static double best_time(work_fn fn, void *ctx) {
    fn(ctx);
    double best = 1e30;
    const double start = mt_now();
    for (int w = 0; w < 3 || mt_now() - start < g_secs; w++) {
        long reps = 0;
        const double t0 = mt_now();
        double t1;
        do {
            fn(ctx);
            reps++;
            t1 = mt_now();
        } while (t1 - t0 < g_secs / WINDOWS);
        const double s = (t1 - t0) / (double)reps;
        if (s < best) best = s;
    }
    return best;
}

/* ---- part 1 ---------------------------------------------------------------------- */
typedef struct {
    int n;
    mt_mat *W;
    int8_t *buf;
} dec_ctx;
static void run_decode(void *v) {
    dec_ctx *c = v;
    for (int k = 0; k < c->n; k++) mt_qmoe_decode_rows(&c->W[k], 0, c->W[k].rows, c->buf);
}

typedef struct {
    int n;
    void **src;
    size_t *src_n, *dst_n;
    void *dst;
    ZSTD_DCtx *dctx;
    ZSTD_DDict *ddict;
} zdec_ctx;
static void run_zdecode(void *v) {
    zdec_ctx *c = v;
    for (int k = 0; k < c->n; k++) {
        size_t r = c->ddict ? ZSTD_decompress_usingDDict(c->dctx, c->dst, c->dst_n[k], c->src[k], c->src_n[k], c->ddict)
                            : ZSTD_decompressDCtx(c->dctx, c->dst, c->dst_n[k], c->src[k], c->src_n[k]);
        if (ZSTD_isError(r) || r != c->dst_n[k]) {
            fprintf(stderr, "zstd decode failed\n");
            exit(1);
        }
    }
}

/* zstd-19 of the streams; dict_cap 0: no dictionary. Prints one line. */
static void zstd_case(const char *name, int n, void **streams, size_t *sizes, uint64_t n_weights, uint64_t scale_bits,
                      size_t dict_cap) {
    void *dict = NULL;
    size_t dict_n = 0;
    if (dict_cap) {
        dict = malloc(dict_cap);
        size_t total = 0;
        for (int k = 0; k < n; k++) total += sizes[k];
        uint8_t *samples = malloc(total);
        size_t off = 0;
        for (int k = 0; k < n; k++) {
            memcpy(samples + off, streams[k], sizes[k]);
            off += sizes[k];
        }
        dict_n = ZDICT_trainFromBuffer(dict, dict_cap, samples, sizes, (unsigned)n);
        free(samples);
        if (ZDICT_isError(dict_n)) {
            printf("| %s | dictionary training failed: %s | | | |\n", name, ZDICT_getErrorName(dict_n));
            free(dict);
            return;
        }
    }
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CDict *cdict = dict ? ZSTD_createCDict(dict, dict_n, 19) : NULL;
    void **comp = malloc((size_t)n * sizeof *comp);
    size_t *comp_n = malloc((size_t)n * sizeof *comp_n), max_src = 0;
    uint64_t bytes = dict_n;
    for (int k = 0; k < n; k++) {
        const size_t cap = ZSTD_compressBound(sizes[k]);
        comp[k] = malloc(cap);
        comp_n[k] = cdict ? ZSTD_compress_usingCDict(cctx, comp[k], cap, streams[k], sizes[k], cdict)
                          : ZSTD_compressCCtx(cctx, comp[k], cap, streams[k], sizes[k], 19);
        bytes += comp_n[k];
        if (sizes[k] > max_src) max_src = sizes[k];
    }
    zdec_ctx c = {n, comp, comp_n, sizes, malloc(max_src), ZSTD_createDCtx(), dict ? ZSTD_createDDict(dict, dict_n) : NULL};
    const double s = best_time(run_zdecode, &c);
    const double bpw = 8.0 * (double)bytes / (double)n_weights;
    printf("| %s | %.4f | %.4f | %.0f |\n", name, bpw, bpw + (double)scale_bits / (double)n_weights,
           (double)n_weights / s / 1e6);
    for (int k = 0; k < n; k++) free(comp[k]);
    free(comp);
    free(comp_n);
    free(c.dst);
    ZSTD_freeDCtx(c.dctx);
    ZSTD_freeDDict(c.ddict);
    ZSTD_freeCDict(cdict);
    ZSTD_freeCCtx(cctx);
    free(dict);
}

static int part1(tern *t, int n, mt_qmoe_dict *dict_out) {
    uint64_t counts[3] = {0, 0, 0}, n_weights = 0, scale_bits = 0;
    int64_t max_el = 0;
    for (int k = 0; k < n; k++) {
        mt_qmoe_count(counts, t[k].syms, t[k].rows * t[k].cols);
        n_weights += (uint64_t)(t[k].rows * t[k].cols);
        scale_bits += 32 * (uint64_t)t[k].rows;
        if (t[k].rows * t[k].cols > max_el) max_el = t[k].rows * t[k].cols;
    }
    double H = 0.0;
    for (int s = 0; s < 3; s++) {
        const double p = (double)counts[s] / (double)n_weights;
        if (p > 0) H -= p * log2(p);
    }
    double t0 = mt_now();
    if (mt_qmoe_dict_build(dict_out, counts, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN) != MT_OK) return -1;
    const double t_dict = mt_now() - t0;
    mt_qmoe_mat *q = calloc((size_t)n, sizeof *q);
    mt_mat *W = calloc((size_t)n, sizeof *W);
    uint64_t bits = 8 * mt_qmoe_dict_bytes(), code_bits = 0;
    t0 = mt_now();
    for (int k = 0; k < n; k++) {
        if (mt_qmoe_encode(&q[k], dict_out, t[k].syms, t[k].lo, t[k].hi, t[k].rows, t[k].cols) != MT_OK) return -1;
        mt_qmoe_mat_view(&W[k], &q[k]);
        mt_qmoe_size sz;
        mt_qmoe_mat_size(&q[k], &sz);
        bits += sz.total_bits;
        code_bits += sz.code_bits;
    }
    const double t_enc = mt_now() - t0;
    if (g_matvec_only) {
        for (int k = 0; k < n; k++) mt_qmoe_mat_free(&q[k]);
        free(q);
        free(W);
        return 0;
    }
    dec_ctx dc = {n, W, malloc((size_t)max_el)};
    const double s_dec = best_time(run_decode, &dc);
    free(dc.buf);
    printf("## Expert weights of the model, RTN ternary (QMoE grid)\n\n");
    printf("%llu weights, %.2f %% zeros, %.2f %% +1, %.2f %% -1; dictionary built in %.1f ms, all experts coded in %.1f ms\n\n",
           (unsigned long long)n_weights, 100.0 * (double)counts[0] / (double)n_weights,
           100.0 * (double)counts[1] / (double)n_weights, 100.0 * (double)counts[2] / (double)n_weights, 1e3 * t_dict,
           1e3 * t_enc);
    printf("| code | bits/weight (symbols) | bits/weight all-in (+ row scales) | decode, M weights/s (1 thread) |\n");
    printf("|---|---|---|---|\n");
    printf("| order-0 entropy of the symbols (bound) | %.4f | %.4f | — |\n", H, H + (double)scale_bits / (double)n_weights);
    printf("| qmoe Tunstall 2^16 x <=32 symbols (ours) | %.4f | %.4f | %.0f |\n", (double)(bits - scale_bits) / (double)n_weights,
           (double)bits / (double)n_weights, (double)n_weights / s_dec / 1e6);
    /* symbol streams for zstd: 1 byte per symbol (0, 1, 2) and 2-bit packed */
    void **s8 = malloc((size_t)n * sizeof *s8), **s2 = malloc((size_t)n * sizeof *s2);
    size_t *n8 = malloc((size_t)n * sizeof *n8), *n2 = malloc((size_t)n * sizeof *n2);
    for (int k = 0; k < n; k++) {
        const size_t ne = (size_t)(t[k].rows * t[k].cols);
        uint8_t *a = malloc(ne), *b = calloc((ne + 3) / 4, 1);
        for (size_t i = 0; i < ne; i++) {
            const uint8_t v = t[k].syms[i] == 0 ? 0 : t[k].syms[i] > 0 ? 1 : 2;
            a[i] = v;
            b[i / 4] |= (uint8_t)(v << (2 * (i % 4)));
        }
        s8[k] = a;
        s2[k] = b;
        n8[k] = ne;
        n2[k] = (ne + 3) / 4;
    }
    zstd_case("zstd -19, 1 byte/symbol, per matrix", n, s8, n8, n_weights, scale_bits, 0);
    zstd_case("zstd -19, 1 byte/symbol, per matrix, trained 16 KiB dictionary", n, s8, n8, n_weights, scale_bits, 16384);
    zstd_case("zstd -19, 2-bit packed, per matrix", n, s2, n2, n_weights, scale_bits, 0);
    zstd_case("zstd -19, 2-bit packed, per matrix, trained 16 KiB dictionary", n, s2, n2, n_weights, scale_bits, 16384);
    printf("\n(zstd decode speed is weights/s of the symbols it restores. zstd frames here are whole\n"
           "matrices; the qmoe code restarts every %d rows so threads and single rows decode independently.)\n\n",
           MT_QMOE_GROUP_ROWS);
    for (int k = 0; k < n; k++) {
        free(s8[k]);
        free(s2[k]);
        mt_qmoe_mat_free(&q[k]);
    }
    free(s8);
    free(s2);
    free(n8);
    free(n2);
    free(q);
    free(W);
    return 0;
}

/* ---- part 2 ---------------------------------------------------------------------- */
typedef struct {
    mt_pool *pool;
    mt_mat *mats; /* copies cycled through */
    int copies;
    const float *x;
    float *y;
    int kind; /* run_prev: a KIND_ */
} mv_ctx;
static void run_matvec(void *v) {
    mv_ctx *c = v;
    for (int k = 0; k < c->copies; k++) mt_matvec(c->pool, &c->mats[k], c->x, c->y);
}

/* A kernel other than the runtime's over the pool, split as mt_matvec
 * splits: KIND_PLANES the two-stage bitplane kernel (the one-stage or
 * portable kernel where it does not apply), KIND_AVX2 the LUT kernel in
 * AVX2 (the portable one where it does not apply), KIND_BITS the portable
 * one. */
enum { KIND_RUNTIME, KIND_PLANES, KIND_AVX2, KIND_BITS };
static const char *const g_kind_name[] = {"runtime", "2-stage", "avx2", "bits"};
typedef struct {
    const mt_mat *W;
    const float *x;
    float *y;
    int kind;
} prev_task;
static void prev_rows(void *arg, int ith, int nth) {
    prev_task *t = arg;
    int64_t r0, r1;
    mt_split_range(t->W->rows, ith, nth, 16, &r0, &r1);
    if (r0 >= r1) return;
    if (t->kind == KIND_PLANES && (mt_qmoe_matvec_rows_planes(t->W, t->x, t->y, r0, r1) ||
                                   mt_qmoe_matvec_rows_avx512(t->W, t->x, t->y, r0, r1)))
        return;
    if (t->kind == KIND_AVX2 && mt_qmoe_matvec_rows_avx2(t->W, t->x, t->y, r0, r1)) return;
    mt_qmoe_matvec_rows_bits(t->W, t->x, t->y, r0, r1);
}
static void run_prev(void *v) {
    mv_ctx *c = v;
    for (int k = 0; k < c->copies; k++) {
        prev_task t = {&c->mats[k], c->x, c->y, c->kind};
        mt_pool_run(c->pool, prev_rows, &t);
    }
}

/* Largest |y - y_ref| / max |y_ref|, y from mt_matvec (kind KIND_RUNTIME)
 * or from another kernel. */
static double check_kernel(mt_pool *p, const mt_mat *W, const float *x, float *y, int kind) {
    float *yr = malloc((size_t)W->rows * sizeof(float));
    mt_qmoe_matvec_rows_ref(W, x, yr, 0, W->rows);
    if (kind != KIND_RUNTIME) {
        mv_ctx c = {p, (mt_mat *)W, 1, x, y, kind};
        run_prev(&c);
    } else {
        mt_matvec(p, W, x, y);
    }
    double e = 0.0, a = 0.0;
    for (int64_t r = 0; r < W->rows; r++) {
        const double d = fabs((double)y[r] - (double)yr[r]);
        if (!(d <= e)) e = d;
        if (fabs((double)yr[r]) > a) a = fabs((double)yr[r]);
    }
    free(yr);
    return a > 0 ? e / a : e;
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double rnd_unit(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* One case: ternary (rows, cols) coded and as bf16; cold: cycle copies. */
static void matvec_case(const char *name, const mt_qmoe_dict *d, const int8_t *syms, const float *lo, const float *hi,
                        int64_t rows, int64_t cols, int cold) {
    mt_qmoe_mat q;
    if (mt_qmoe_encode(&q, d, syms, lo, hi, rows, cols) != MT_OK) {
        fprintf(stderr, "encode: %s\n", mt_last_error());
        return;
    }
    mt_qmoe_size sz;
    mt_qmoe_mat_size(&q, &sz);
    const uint64_t code_bytes = q.n_codes * 2, bf_bytes = (uint64_t)(rows * cols) * 2;
    const int cc = cold ? (int)((COLD_BYTES + code_bytes - 1) / code_bytes) : 1;
    const int cb = cold ? (int)((COLD_BYTES + bf_bytes - 1) / bf_bytes) : 1;
    /* coded copies: own code arrays, shared offsets/scales/dictionary */
    uint16_t *cbuf = malloc((size_t)code_bytes * (size_t)cc);
    mt_mat *cm = malloc((size_t)cc * sizeof *cm);
    for (int k = 0; k < cc; k++) {
        memcpy(cbuf + (size_t)k * q.n_codes, q.codes, (size_t)code_bytes);
        mt_qmoe_mat_view(&cm[k], &q);
        cm[k].data = cbuf + (size_t)k * q.n_codes;
    }
    uint16_t *bbuf = malloc((size_t)bf_bytes * (size_t)cb);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            const int v = syms[r * cols + j];
            bbuf[r * cols + j] = mt_f32_to_bf16(v > 0 ? hi[r] : v < 0 ? lo[r] : 0.0f);
        }
    mt_mat *bm = malloc((size_t)cb * sizeof *bm);
    for (int k = 0; k < cb; k++) {
        if (k) memcpy(bbuf + (size_t)k * (size_t)(rows * cols), bbuf, (size_t)bf_bytes);
        bm[k] = (mt_mat){.dtype = MT_DT_BF16, .rows = rows, .cols = cols, .data = bbuf + (size_t)k * (size_t)(rows * cols),
                         .row_stride = (uint64_t)cols * 2};
    }
    float *x = malloc((size_t)cols * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
    for (int64_t j = 0; j < cols; j++) x[j] = (float)(2.0 * rnd_unit() - 1.0);
    /* us[threads][column]: runtime, 2-stage, [avx2, bits,] bf16 */
    const int nk = g_avx2 ? 4 : 2;
    double us[2][5];
    for (int ti = 0; ti < 2; ti++) {
        mt_pool *p;
        mt_pool_init(&p, ti ? g_threads : 1);
        for (int kind = 0; kind < nk; kind++) {
            const double err = check_kernel(p, &cm[0], x, y, kind);
            if (!(err <= 1e-5))
                fprintf(stderr, "bench_qmoe: %s: coded matvec (%s) differs from the reference by %.3g\n", name,
                        g_kind_name[kind], err);
        }
        mv_ctx a = {p, cm, cc, x, y, KIND_RUNTIME}, b = {p, bm, cb, x, y, KIND_RUNTIME};
        us[ti][0] = 1e6 * best_time(run_matvec, &a) / cc;
        for (int kind = 1; kind < nk; kind++) {
            a.kind = kind;
            us[ti][kind] = 1e6 * best_time(run_prev, &a) / cc;
        }
        us[ti][nk] = 1e6 * best_time(run_matvec, &b) / cb;
        mt_pool_free(p);
    }
    printf("| %s | %s | %.3f |", name, cold ? "cold" : "hot", (double)sz.total_bits / (double)(rows * cols));
    for (int ti = 0; ti < 2; ti++)
        for (int k = 0; k <= nk; k++) printf(" %.1f |", us[ti][k]);
    if (g_avx2)
        printf(" %.2fx / %.2fx | %.2fx / %.2fx |\n", us[0][nk] / us[0][0], us[1][nk] / us[1][0], us[0][nk] / us[0][2],
               us[1][nk] / us[1][2]);
    else
        printf(" %.2fx / %.2fx |\n", us[0][nk] / us[0][0], us[1][nk] / us[1][0]);
    fflush(stdout);
    free(x);
    free(y);
    free(cbuf);
    free(cm);
    free(bbuf);
    free(bm);
    mt_qmoe_mat_free(&q);
}

static void synthetic_case(const char *name, int64_t rows, int64_t cols, double pz, int cold) {
    int8_t *s = malloc((size_t)(rows * cols));
    float *lo = malloc((size_t)rows * sizeof(float)), *hi = malloc((size_t)rows * sizeof(float));
    uint64_t counts[3] = {0, 0, 0};
    for (int64_t i = 0; i < rows * cols; i++) {
        const double u = rnd_unit();
        s[i] = u < pz ? 0 : u < pz + (1 - pz) / 2 ? 1 : -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        lo[r] = mt_f16_to_f32(mt_f32_to_f16(-(float)(0.02 + 0.01 * rnd_unit())));
        hi[r] = mt_f16_to_f32(mt_f32_to_f16((float)(0.02 + 0.01 * rnd_unit())));
    }
    mt_qmoe_count(counts, s, rows * cols);
    mt_qmoe_dict d;
    mt_qmoe_dict_build(&d, counts, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN);
    matvec_case(name, &d, s, lo, hi, rows, cols, cold);
    mt_qmoe_dict_free(&d);
    free(s);
    free(lo);
    free(hi);
}

int main(int argc, char **argv) {
    const char *dir = "models/kjv-mixtral-15m";
    int big = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-big") == 0) big = 0;
        else if (strcmp(argv[i], "--matvec-only") == 0) g_matvec_only = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) g_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--avx2") == 0) g_avx2 = 1;
        else if (i == 1) dir = argv[i];
        else g_secs = atof(argv[i]);
    }
    tern *t;
    int n;
    mt_weights w;
    mt_ckpt *ck = NULL;
    if (load_experts(dir, &t, &n, &w, &ck) != 0) return 1;
    mt_qmoe_dict d;
    if (part1(t, n, &d) != 0) {
        fprintf(stderr, "bench_qmoe: %s\n", mt_last_error());
        return 1;
    }
    if (g_threads < 1) g_threads = 1;
    printf("## Fused coded matvec vs bf16 matvec (us per matvec; speed-up = bf16 time / coded time)\n\n");
    printf("coded: the runtime's kernel (mt_matvec); 2-stage: the previous default (_planes)%s\n\n",
           g_avx2 ? "; avx2: the LUT kernel in AVX2 (_avx2); bits: the portable kernel (_bits)" : "");
    if (g_avx2) {
        printf("| matrix | cache | coded bits/weight | coded 1 thr | 2-stage 1 thr | avx2 1 thr | bits 1 thr | bf16 1 thr | "
               "coded %d thr | 2-stage %d thr | avx2 %d thr | bits %d thr | bf16 %d thr | speed-up 1 / %d thr | "
               "avx2 speed-up 1 / %d thr |\n",
               g_threads, g_threads, g_threads, g_threads, g_threads, g_threads, g_threads);
        printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
        printf("| matrix | cache | coded bits/weight | coded 1 thr | 2-stage 1 thr | bf16 1 thr | coded %d thr | 2-stage %d thr | bf16 %d thr | speed-up 1 / %d thr |\n",
               g_threads, g_threads, g_threads, g_threads);
        printf("|---|---|---|---|---|---|---|---|---|---|\n");
    }
    /* the model's own: layer 0 expert 0 w1 (t[0]) and w2 (t[2]), the model's dictionary */
    matvec_case("model w1 512x256", &d, t[0].syms, t[0].lo, t[0].hi, t[0].rows, t[0].cols, 0);
    matvec_case("model w2 256x512", &d, t[2].syms, t[2].lo, t[2].hi, t[2].rows, t[2].cols, 0);
    synthetic_case("synthetic 3584x1024, 80 % zeros", 3584, 1024, 0.8, 0);
    synthetic_case("synthetic 3584x1024, 80 % zeros", 3584, 1024, 0.8, 1);
    if (big) synthetic_case("synthetic 14336x4096, 80 % zeros", 14336, 4096, 0.8, 1);
    if (big) synthetic_case("synthetic 4096x14336, 80 % zeros", 4096, 14336, 0.8, 1);
    printf("\n(hot: one matrix repeated, it stays in cache; cold: copies cycled past 256 MiB, weights from DRAM.)\n");
    for (int k = 0; k < n; k++) {
        free(t[k].syms);
        free(t[k].lo);
        free(t[k].hi);
    }
    free(t);
    mt_qmoe_dict_free(&d);
    mt_weights_free(&w);
    mt_ckpt_free(ck);
    return 0;
}
