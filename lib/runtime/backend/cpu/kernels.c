/* kernels.c — the runtime's CPU kernels: plain C references, dispatch to
 * the SIMD paths of kernels_x86.c, threading of matvecs over the pool, and
 * batched matmul through OpenBLAS sgemm.
 *
 * Storage types handled: f32, f16, bf16, q8_0, q4_0 (llama.cpp blocks of 32:
 * f16 d then 32 int8 for q8_0 / 16 nibble bytes for q4_0, value = d*q and
 * d*(nibble-8), low nibbles are elements 0..15).
 *
 * Decode (matvec): for the block types x is quantised once per call to
 * int8 blocks of 32 with an f32 scale (d = amax/127, round to nearest even),
 * and rows are integer dot products, as llama.cpp does. The quantised x
 * lives in a per-thread buffer that grows on first use and is freed when the
 * thread exits: no allocation per call after the first. The relative error
 * this adds is bounded per row by sum_b (amax_b(x)/254) * sum_{j in b} |w_j|
 * (half a quantisation step per element), which tests/test_kernels.c checks.
 *
 * Prefill (matmul) of the K-quants q2_K..q6_K: X quantised to q8_K once,
 * then the integer GEMM of kernels_kq8.c on each thread's rows (the same
 * numbers as their decode). q8_0 / q4_0: X quantised to int8 blocks of 32
 * as decode does, then the integer GEMM of kernels_x86.c (tiles of 4
 * tokens per weight row, each block unpacked once per tile), again the
 * numbers decode computes, bit for bit. Every other type: Y = X · Wᵀ with cblas_sgemm
 * on fixed blocks of 64 rows of W (Y's columns), one single-threaded call
 * per block, the pool sharing the blocks out: OpenBLAS's result for an
 * element depends on the shape of the call it is in, so blocks that do not
 * move with the thread count keep the logits bit-identical at any thread
 * count. Non-f32 weights are converted to f32 a block at a time into the
 * thread's slot of the caller's scratch first. OpenBLAS's own threading is switched off
 * (openblas_set_num_threads(1)) so it never competes with the pool; see
 * docs/perf.md ("Kernels") for the measurement behind this choice. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "kernels_impl.h"
#include "qmoe_kernel.h"

/* kernels_x86.c: each returns 1 when handled, 0 when there is no SIMD path. */
int mt_x86_dot_rows(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const float *xs,
                    float *y, int64_t r0, int64_t r1);
int mt_x86_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n);
int mt_x86_quantize_x(const float *x, int64_t n, int8_t *xq, float *xd, float *xs);
int mt_x86_gemm_rows(const mt_mat *W, const int8_t *xq, const float *xd, const float *xs, int n, float *Y,
                     int64_t ldy, int64_t r0, int64_t r1);

/* Matvecs with fewer weights than this run on the calling thread only:
 * the pool's sync (~1-2 µs) costs more than the work saved. */
#define MT_MATVEC_MIN_PAR_WEIGHTS 32768
/* Rows per thread are split on multiples of this (cache lines of y). */
#define MT_MATVEC_ROW_ALIGN 16
/* Batches below this many rows of X use matvecs instead of sgemm. */
#define MT_MATMUL_MIN_N 4
/* Rows of W converted to f32 at a time for sgemm (all threads together). */
#define MT_MATMUL_CHUNK_ROWS 256
/* Rows of W per sgemm call (the fixed blocks of matmul_worker). */
#define MT_MATMUL_BLOCK_ROWS 64

int mt_kernel_supported(mt_dtype t) {
    if (t == MT_DT_QMOE) return 1; /* kernels_qmoe.c */
    return t == MT_DT_F32 || t == MT_DT_F16 || t == MT_DT_BF16 || t == MT_DT_Q8_0 || t == MT_DT_Q4_0 ||
           t == MT_DT_TQ1_0 || t == MT_DT_TQ2_0 || mt_kq_supported(t);
}

/* Types whose matvec quantises x first: to q8_0-like blocks of 32, or to
 * q8_K for q4_K/q6_K (kernels_kq.c; its scales in xd, its int16 sums of 16
 * codes in the room of xs). The other read-only llama.cpp types get x
 * rounded as llama.cpp's activation type would hold it (xf). */
static int is_block_type(mt_dtype t) { return t == MT_DT_Q8_0 || t == MT_DT_Q4_0 || mt_kq_is_q8K_type(t); }
static int rounds_x(mt_dtype t) { return mt_kq_supported(t) && !mt_kq_is_q8K_type(t); }

/* A matrix the kernels can run: supported type, whole blocks per row, rows
 * that do not overlap. Anything else gets NaN outputs instead of a crash
 * (the weights loader rejects such matrices with a message first). */
static int mat_ok(const mt_mat *W) {
    if (W && W->dtype == MT_DT_QMOE) return mt_qmoe_mat_ok(W);
    if (!W || !W->data || W->rows < 0 || W->cols < 0 || !mt_kernel_supported(W->dtype)) return 0;
    const mt_dtype_info *di = mt_dtype_get(W->dtype);
    if (W->cols % di->block_elems) return 0;
    if ((uint64_t)W->cols / (uint64_t)di->block_elems * (uint64_t)di->block_bytes > W->row_stride && W->rows > 1) return 0;
    return 1;
}

static void fill_nan(float *y, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) y[r] = NAN;
}

/* ---- reference ----------------------------------------------------------- */
static inline float ld_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}
static inline float ld_bf16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_bf16_to_f32(h);
}

/* Weights decoded element by element (no buffer), products summed in double. */
void mt_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (!mat_ok(W)) {
        fill_nan(y, r0, r1);
        return;
    }
    if (W->dtype == MT_DT_QMOE) {
        mt_qmoe_matvec_rows_ref(W, x, y, r0, r1);
        return;
    }
    const int64_t n = W->cols;
    if (mt_tq_matvec_rows_ref(W, x, y, r0, r1)) return; /* ternary types: kernels_tq.c */
    if (mt_kq_matvec_rows_ref(W, x, y, r0, r1)) return; /* llama.cpp's read-only types: kernels_kq.c */
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        double s = 0.0;
        switch (W->dtype) {
        case MT_DT_F32:
            for (int64_t i = 0; i < n; i++) {
                float v;
                memcpy(&v, w + 4 * i, 4);
                s += (double)v * x[i];
            }
            break;
        case MT_DT_F16:
            for (int64_t i = 0; i < n; i++) s += (double)ld_f16(w + 2 * i) * x[i];
            break;
        case MT_DT_BF16:
            for (int64_t i = 0; i < n; i++) s += (double)ld_bf16(w + 2 * i) * x[i];
            break;
        case MT_DT_Q8_0:
            for (int64_t b = 0; b < n / 32; b++) {
                const uint8_t *blk = w + 34 * b;
                const float d = ld_f16(blk);
                for (int j = 0; j < 32; j++) s += (double)(d * (float)(int8_t)blk[2 + j]) * x[32 * b + j];
            }
            break;
        case MT_DT_Q4_0:
            for (int64_t b = 0; b < n / 32; b++) {
                const uint8_t *blk = w + 18 * b;
                const float d = ld_f16(blk);
                for (int j = 0; j < 16; j++) {
                    s += (double)(d * (float)((blk[2 + j] & 0x0f) - 8)) * x[32 * b + j];
                    s += (double)(d * (float)((blk[2 + j] >> 4) - 8)) * x[32 * b + 16 + j];
                }
            }
            break;
        default:
            break;
        }
        y[r] = (float)s;
    }
}

/* ---- activation quantisation (block types) --------------------------------
 * x (n floats, n % 32 == 0) -> xq int8 (n), xd f32 scale per 32, xs sum of
 * the 32 int8 as f32 (q4_0 kernels multiply unsigned nibbles and subtract 8*xs). */
static void quantize_x_ref(const float *x, int64_t n, int8_t *xq, float *xd, float *xs) {
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        xd[b] = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            xq[32 * b + j] = (int8_t)nearbyintf(xb[j] * id);
            sum += xq[32 * b + j];
        }
        xs[b] = (float)sum;
    }
}

static void quantize_x(mt_dtype t, const float *x, int64_t n, int8_t *xq, float *xd, float *xs) {
    if (mt_kq_is_q8K_type(t))
        mt_kq_quantize_x_q8K(x, n, xq, xd, (int16_t *)(void *)xs);
    else if (!mt_x86_quantize_x(x, n, xq, xd, xs))
        quantize_x_ref(x, n, xq, xd, xs);
}

/* Per-thread buffer for quantised x: grown on demand, freed at thread exit. */
typedef struct {
    void *buf;
    size_t cap;
} xq_tls;
static pthread_key_t g_xq_key;
static pthread_once_t g_xq_once = PTHREAD_ONCE_INIT;
static int g_xq_key_ok;

static void xq_tls_free(void *v) {
    xq_tls *t = v;
    if (t) free(t->buf);
    free(t);
}
static void xq_key_init(void) { g_xq_key_ok = pthread_key_create(&g_xq_key, xq_tls_free) == 0; }

/* Room for n int8 + 2 * n/32 floats + xf_floats floats (xf) on this thread;
 * 0 when out of memory. */
static int xq_buffers(int64_t n, int8_t **xq, float **xd, float **xs, size_t xf_floats, float **xf) {
    pthread_once(&g_xq_once, xq_key_init);
    if (!g_xq_key_ok) return 0;
    xq_tls *t = pthread_getspecific(g_xq_key);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) return 0;
        if (pthread_setspecific(g_xq_key, t) != 0) {
            free(t);
            return 0;
        }
    }
    const size_t qbytes = ((size_t)n + 63) & ~(size_t)63;
    const size_t xbytes = 2 * (size_t)(n / 32) * sizeof(float);
    const size_t need = qbytes + xbytes + xf_floats * sizeof(float);
    if (need > t->cap) {
        size_t cap = need < 4096 ? 4096 : need;
        void *nb = NULL;
        if (posix_memalign(&nb, 64, cap) != 0) return 0;
        free(t->buf);
        t->buf = nb;
        t->cap = cap;
    }
    *xq = t->buf;
    *xd = (float *)(void *)((uint8_t *)t->buf + qbytes);
    *xs = *xd + n / 32;
    if (xf) *xf = (float *)(void *)((uint8_t *)t->buf + qbytes + xbytes);
    return 1;
}

/* Rows [r0, r1) with x already quantised (xq/xd NULL for float types). */
static void rows_prepared(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const float *xs,
                          float *y, int64_t r0, int64_t r1) {
    if (W->dtype == MT_DT_QMOE) {
        mt_qmoe_matvec_rows(W, x, y, r0, r1);
        return;
    }
    if (mt_tq_matvec_rows(W, x, y, r0, r1)) return;
    if (mt_kq_matvec_rows(W, x, xq, xd, (const int16_t *)(const void *)xs, y, r0, r1)) return;
    if (!mt_x86_dot_rows(W, x, xq, xd, xs, y, r0, r1)) mt_matvec_rows_ref(W, x, y, r0, r1);
}

void mt_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (!mat_ok(W)) {
        fill_nan(y, r0, r1);
        return;
    }
    int8_t *xq = NULL;
    float *xd = NULL, *xs = NULL;
    if ((is_block_type(W->dtype) || rounds_x(W->dtype)) && W->cols > 0) {
        float *xf = NULL;
        if (!xq_buffers(W->cols, &xq, &xd, &xs, rounds_x(W->dtype) ? (size_t)W->cols : 0, &xf)) {
            mt_matvec_rows_ref(W, x, y, r0, r1); /* no memory: slow but correct */
            return;
        }
        if (rounds_x(W->dtype)) {
            mt_kq_round_x(W->dtype, x, W->cols, xf);
            x = xf;
            xq = NULL;
        } else {
            quantize_x(W->dtype, x, W->cols, xq, xd, xs);
        }
    }
    rows_prepared(W, x, xq, xd, xs, y, r0, r1);
}

/* ---- threaded matvec ------------------------------------------------------ */
typedef struct {
    const mt_mat *W;
    const float *x;   /* (cols) */
    const int8_t *xq; /* (cols) or NULL */
    const float *xd;  /* (cols/32) or NULL */
    const float *xs;  /* (cols/32) or NULL */
    float *y;         /* (rows) */
} matvec_task;

static void matvec_worker(void *arg, int ith, int nth) {
    const matvec_task *t = arg;
    int64_t r0, r1;
    mt_split_range(t->W->rows, ith, nth, MT_MATVEC_ROW_ALIGN, &r0, &r1);
    if (r0 < r1) rows_prepared(t->W, t->x, t->xq, t->xd, t->xs, t->y, r0, r1);
}

void mt_matvec(mt_pool *p, const mt_mat *W, const float *x, float *y) {
    if (!mat_ok(W)) {
        if (W) fill_nan(y, 0, W->rows);
        return;
    }
    const int nth = mt_pool_size(p);
    if (nth == 1 || W->rows * W->cols < MT_MATVEC_MIN_PAR_WEIGHTS || W->rows < 2 * MT_MATVEC_ROW_ALIGN) {
        mt_matvec_rows(W, x, y, 0, W->rows);
        return;
    }
    matvec_task t = {W, x, NULL, NULL, NULL, y};
    if (is_block_type(W->dtype) || rounds_x(W->dtype)) {
        int8_t *xq;
        float *xd, *xs, *xf = NULL;
        if (!xq_buffers(W->cols, &xq, &xd, &xs, rounds_x(W->dtype) ? (size_t)W->cols : 0, &xf)) {
            mt_matvec_rows_ref(W, x, y, 0, W->rows);
            return;
        }
        if (rounds_x(W->dtype)) {
            mt_kq_round_x(W->dtype, x, W->cols, xf);
            t.x = xf;
        } else {
            quantize_x(W->dtype, x, W->cols, xq, xd, xs);
            t.xq = xq;
            t.xd = xd;
            t.xs = xs;
        }
    }
    mt_pool_run(p, matvec_worker, &t);
}

/* ---- rows to f32 ------------------------------------------------------------ */
void mt_mat_row_f32(const mt_mat *W, int64_t r, float *out) {
    if (!mat_ok(W) || r < 0 || r >= W->rows) {
        if (W && W->cols > 0) fill_nan(out, 0, W->cols);
        return;
    }
    if (W->dtype == MT_DT_QMOE) {
        mt_qmoe_row_f32(W, r, out);
        return;
    }
    const uint8_t *src = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
    if (W->dtype == MT_DT_F32) {
        memcpy(out, src, (size_t)W->cols * sizeof(float));
        return;
    }
    if (!mt_x86_row_to_f32(W->dtype, src, out, W->cols)) mt_row_to_f32(W->dtype, src, out, W->cols);
}

/* ---- matmul ----------------------------------------------------------------- */
size_t mt_matmul_scratch_floats(const mt_mat *W) {
    if (!W || W->rows <= 0 || W->cols <= 0) return 0;
    const int64_t rows = W->rows < MT_MATMUL_CHUNK_ROWS ? W->rows : MT_MATMUL_CHUNK_ROWS;
    return (size_t)rows * (size_t)W->cols;
}

typedef struct {
    const mt_mat *W;
    const float *X;  /* (n, cols) */
    int n;
    float *Y;        /* (n, rows) */
    float *scratch;  /* (chunk_rows, cols) shared out between threads */
    int64_t chunk_rows;
    int direct;      /* f32 weights usable by sgemm in place */
} matmul_task;

/* Fixed blocks of W's rows, one sgemm each, whatever the thread count:
 * OpenBLAS (0.3.21, Haswell/Zen kernels) rounds an element of C
 * differently depending on where it falls in the micro-kernel's tiles of
 * the call's N (edge tiles take other code paths), so splitting W's rows
 * by thread count would make the result depend on it. Blocks of
 * MT_MATMUL_BLOCK_ROWS starting at row 0 give every element the same call
 * shape and position at 1, 2 or 3 threads; threads take contiguous runs of
 * blocks. */
static void matmul_worker(void *arg, int ith, int nth) {
    const matmul_task *t = arg;
    const mt_mat *W = t->W;
    const int64_t cols = W->cols, rows = W->rows, B = MT_MATMUL_BLOCK_ROWS;
    /* Each thread converts one block at a time into its slot of the
     * scratch; threads beyond the scratch's slots have nothing to convert
     * into. */
    const int64_t slot = rows < B ? rows : B, slots = t->chunk_rows / slot;
    const int nth_eff = t->direct || (int64_t)nth <= slots ? nth : (int)slots;
    if (ith >= nth_eff) return;
    int64_t b0, b1;
    mt_split_range((rows + B - 1) / B, ith, nth_eff, 1, &b0, &b1);
    float *buf = t->direct ? NULL : t->scratch + (int64_t)ith * slot * cols;
    for (int64_t b = b0; b < b1; b++) {
        const int64_t c0 = b * B, c1 = c0 + B < rows ? c0 + B : rows;
        const float *w;
        int64_t ld;
        if (t->direct) {
            ld = (int64_t)(W->row_stride / sizeof(float));
            w = (const float *)W->data + c0 * ld;
        } else {
            for (int64_t r = c0; r < c1; r++) mt_mat_row_f32(W, r, buf + (r - c0) * cols);
            w = buf;
            ld = cols;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->n, (int)(c1 - c0), (int)cols, 1.0f, t->X,
                    (int)cols, w, (int)ld, 0.0f, t->Y + c0, (int)rows);
    }
}

/* K-quants: X to q8_K once (caller), then the integer GEMM of
 * kernels_kq8.c on each thread's rows: the same numbers decode computes. */
typedef struct {
    const mt_mat *W;
    const int8_t *xq;
    const float *xd;
    const int16_t *bs;
    int n;
    float *Y;
    int fail;
} kq8_task;

static void kq8_worker(void *arg, int ith, int nth) {
    kq8_task *t = arg;
    int64_t r0, r1;
    mt_split_range(t->W->rows, ith, nth, MT_MATVEC_ROW_ALIGN, &r0, &r1);
    if (r0 < r1 && !mt_kq8_gemm(t->W, t->xq, t->xd, t->bs, t->n, t->Y, t->W->rows, r0, r1))
        __atomic_store_n(&t->fail, 1, __ATOMIC_RELAXED);
}

/* 0 when out of memory (the caller falls back to sgemm). */
static int kq8_gemm(mt_pool *p, const mt_mat *W, const float *X, int n, float *Y) {
    const size_t cols = (size_t)W->cols, nb = cols / MT_QK_K;
    int8_t *xq = NULL;
    if (posix_memalign((void **)&xq, 64, (size_t)n * (cols + nb * sizeof(float) + nb * 16 * sizeof(int16_t))) != 0)
        return 0;
    float *xd = (float *)(void *)(xq + (size_t)n * cols);
    int16_t *bs = (int16_t *)(void *)(xd + (size_t)n * nb);
    for (int i = 0; i < n; i++)
        mt_kq_quantize_x_q8K(X + (size_t)i * cols, W->cols, xq + (size_t)i * cols, xd + (size_t)i * nb,
                             bs + (size_t)i * nb * 16);
    kq8_task t = {W, xq, xd, bs, n, Y, 0};
    mt_pool_run(p, kq8_worker, &t);
    free(xq);
    return !t.fail;
}

/* q8_0 / q4_0: every token's x quantised as decode quantises it (caller),
 * then each thread's rows against tiles of tokens (kernels_x86.c: each
 * weight block unpacked once per tile), which computes for every token the
 * numbers decode's matvec computes; without a SIMD path, decode's row
 * function token by token. */
typedef struct {
    const mt_mat *W;
    const float *X;
    const int8_t *xq;
    const float *xd, *xs;
    int n;
    float *Y;
} blockq_task;

static void blockq_worker(void *arg, int ith, int nth) {
    const blockq_task *t = arg;
    const mt_mat *W = t->W;
    const int64_t cols = W->cols, nb = cols / 32, rows = W->rows;
    int64_t r0, r1;
    mt_split_range(rows, ith, nth, MT_MATVEC_ROW_ALIGN, &r0, &r1);
    if (r0 >= r1 || mt_x86_gemm_rows(W, t->xq, t->xd, t->xs, t->n, t->Y, rows, r0, r1)) return;
    for (int i = 0; i < t->n; i++)
        rows_prepared(W, t->X + i * cols, t->xq + i * cols, t->xd + i * nb, t->xs + i * nb, t->Y + i * rows, r0, r1);
}

/* 0 when out of memory (the caller falls back to sgemm). */
static int blockq_gemm(mt_pool *p, const mt_mat *W, const float *X, int n, float *Y) {
    const size_t cols = (size_t)W->cols, nb = cols / 32;
    int8_t *xq = NULL;
    if (posix_memalign((void **)&xq, 64, (size_t)n * (cols + 2 * nb * sizeof(float))) != 0) return 0;
    float *xd = (float *)(void *)(xq + (size_t)n * cols), *xs = xd + (size_t)n * nb;
    for (int i = 0; i < n; i++)
        quantize_x(W->dtype, X + (size_t)i * cols, W->cols, xq + (size_t)i * cols, xd + (size_t)i * nb,
                   xs + (size_t)i * nb);
    blockq_task t = {W, X, xq, xd, xs, n, Y};
    mt_pool_run(p, blockq_worker, &t);
    free(xq);
    return 1;
}

static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;
static void blas_single_thread(void) { openblas_set_num_threads(1); }

void mt_matmul(mt_pool *p, const mt_mat *W, const float *X, int n, float *Y, float *scratch) {
    if (n <= 0) return;
    if (!mat_ok(W)) {
        if (W && W->rows > 0) fill_nan(Y, 0, (int64_t)n * W->rows);
        return;
    }
    if (W->rows == 0) return;
    if (n < MT_MATMUL_MIN_N || W->cols == 0 || W->cols > INT32_MAX || W->rows > INT32_MAX) { /* BLAS takes int sizes */
        for (int i = 0; i < n; i++) mt_matvec(p, W, X + (size_t)i * (size_t)W->cols, Y + (size_t)i * (size_t)W->rows);
        return;
    }
    if (mt_kq8_type(W->dtype) && kq8_gemm(p, W, X, n, Y)) return;
    if ((W->dtype == MT_DT_Q8_0 || W->dtype == MT_DT_Q4_0) && blockq_gemm(p, W, X, n, Y)) return;
    pthread_once(&g_blas_once, blas_single_thread);
    if (mt_kq_supported(W->dtype)) {
        /* x as llama.cpp's activation type holds it (q8_K / q8_0 values),
         * so that prefill computes what llama.cpp's integer dots compute */
        int8_t *xq;
        float *xd, *xs, *xf;
        if (!xq_buffers(W->cols, &xq, &xd, &xs, (size_t)n * (size_t)W->cols, &xf)) {
            fill_nan(Y, 0, (int64_t)n * W->rows);
            return;
        }
        for (int i = 0; i < n; i++)
            mt_kq_round_x(W->dtype, X + (size_t)i * (size_t)W->cols, W->cols, xf + (size_t)i * (size_t)W->cols);
        X = xf;
    }
    matmul_task t = {W, X, n, Y, scratch, (int64_t)(mt_matmul_scratch_floats(W) / (size_t)W->cols), 0};
    t.direct = W->dtype == MT_DT_F32 && ((uintptr_t)W->data % sizeof(float)) == 0 &&
               W->row_stride % sizeof(float) == 0 && W->row_stride / sizeof(float) <= (uint64_t)INT32_MAX;
    if (!t.direct && !scratch) {
        fill_nan(Y, 0, (int64_t)n * W->rows);
        return;
    }
    mt_pool_run(p, matmul_worker, &t);
}
