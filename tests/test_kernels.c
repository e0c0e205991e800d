/* test_kernels.c — the runtime's kernels against their plain C references.
 *
 * Tolerances (named, per row r, with A = sum_j |w_j| |x_j|):
 *   TOL_FLOAT_SUM: f32 accumulation of up to 4096 products in 16-32 lanes
 *     has at most ~140 sequential roundings of 2^-24 each, i.e. < 1e-5 * A.
 *   Block types: the SIMD path quantises x to int8 blocks of 32 with
 *     d_b = amax_b / 127 and round-to-nearest, so |x_j - q_j d_b| <= d_b / 2
 *     (plus a few f32 roundings, under TOL_FLOAT_SUM). The integer dot
 *     products are exact, so
 *        |y_simd - y_ref| <= sum_b (d_b / 2) * sum_{j in b} |w_j| + TOL_FLOAT_SUM * A.
 * Also: threaded matvec bit-identical to single-threaded; matmul (sgemm,
 * exact x) within TOL_FLOAT_SUM of the reference; row conversion bit-exact
 * against the io library's scalar converter; strided and unaligned views;
 * unsupported input gives NaN, not a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

#define TOL_FLOAT_SUM 1e-5
#define TOL_ABS_FLOOR 1e-30 /* rows of zeros */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd_unit(void) { return (float)rnd_u32() / 4294967296.0f * 2.0f - 1.0f; } /* [-1, 1) */

/* Values with a spread of magnitudes and a few outliers, like activations. */
static void fill_x(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = rnd_unit();
        if (rnd_u32() % 50 == 0) v *= 20.0f;
        if (rnd_u32() % 70 == 0) v = 0.0f;
        x[i] = v;
    }
}

/* Owns a (rows, cols) matrix of type t; view W may start at `misalign`
 * bytes into the buffer and have `pad` extra bytes between rows. */
typedef struct {
    mt_mat W;
    uint8_t *buf;
    float *wf; /* (rows, cols) the exact f32 values the stored weights decode to */
} test_mat;

static void make_mat(test_mat *m, mt_dtype t, int64_t rows, int64_t cols, uint64_t pad, uint64_t misalign) {
    uint64_t row_bytes = 0;
    assert_int_equal(mt_dtype_nbytes(t, (uint64_t)cols, &row_bytes), MT_OK);
    const uint64_t stride = row_bytes + pad;
    m->buf = calloc(1, (size_t)(stride * (uint64_t)rows + misalign)); /* no slack: ASan sees over-reads */
    m->wf = malloc((size_t)(rows * cols + 1) * sizeof(float));
    float *tmp = malloc((size_t)(cols + 1) * sizeof(float));
    assert_non_null(m->buf);
    assert_non_null(m->wf);
    assert_non_null(tmp);
    for (int64_t r = 0; r < rows; r++) {
        const float scale = 0.05f + (float)(rnd_u32() % 100) / 50.0f; /* rows of different magnitude */
        for (int64_t c = 0; c < cols; c++) tmp[c] = rnd_unit() * scale;
        uint8_t *dst = m->buf + misalign + (uint64_t)r * stride;
        assert_int_equal(mt_row_from_f32(t, tmp, dst, cols), MT_OK);
        if (t == MT_DT_Q8_0 && r % 3 == 0) /* -128: GPTQ's error feedback can reach it; the int8 kernels must take it */
            for (int64_t b = 0; b < cols / 32; b++) dst[34 * b + 2 + b % 32] = 0x80;
        assert_int_equal(mt_row_to_f32(t, dst, m->wf + r * cols, cols), MT_OK);
        memset(dst + row_bytes, 0xA5, (size_t)pad); /* garbage between rows must be ignored */
    }
    free(tmp);
    m->W.dtype = t;
    m->W.rows = rows;
    m->W.cols = cols;
    m->W.data = m->buf + misalign;
    m->W.row_stride = stride;
}

static void free_mat(test_mat *m) {
    free(m->buf);
    free(m->wf);
}

static int is_block(mt_dtype t) { return t == MT_DT_Q8_0 || t == MT_DT_Q4_0; }

/* Allowed |y - y_ref| for row r of the SIMD/quantised-x path. */
static double row_tol(const test_mat *m, int64_t r, const float *x, int quantised_x) {
    const int64_t n = m->W.cols;
    const float *w = m->wf + r * n;
    double a = 0.0, q = 0.0;
    for (int64_t j = 0; j < n; j++) a += fabs((double)w[j] * x[j]);
    if (quantised_x) {
        for (int64_t b = 0; b < n / 32; b++) {
            double amax = 0.0, sw = 0.0;
            for (int j = 0; j < 32; j++) {
                amax = fmax(amax, fabs((double)x[32 * b + j]));
                sw += fabs((double)w[32 * b + j]);
            }
            q += amax / 127.0 / 2.0 * sw;
        }
    }
    return q + TOL_FLOAT_SUM * a + TOL_ABS_FLOOR;
}

static const mt_dtype k_types[] = {MT_DT_F32, MT_DT_F16, MT_DT_BF16, MT_DT_Q8_0, MT_DT_Q4_0};
static const char *tname(mt_dtype t) { return mt_dtype_get(t)->name; }

/* SIMD rows vs reference, and threaded matvec bit-identical to one thread. */
static void check_matvec(mt_dtype t, int64_t rows, int64_t cols, uint64_t pad, uint64_t misalign, mt_pool **pools,
                         int npools) {
    test_mat m;
    make_mat(&m, t, rows, cols, pad, misalign);
    float *x = malloc((size_t)cols * sizeof(float) + 4);
    float *yref = malloc((size_t)rows * sizeof(float));
    float *y = malloc((size_t)rows * sizeof(float));
    float *yt = malloc((size_t)rows * sizeof(float));
    assert_non_null(x);
    assert_non_null(yref);
    assert_non_null(y);
    assert_non_null(yt);
    fill_x(x, cols);
    mt_matvec_rows_ref(&m.W, x, yref, 0, rows);
    mt_matvec_rows(&m.W, x, y, 0, rows);
    double worst = 0.0; /* max error / tolerance */
    for (int64_t r = 0; r < rows; r++) {
        const double tol = row_tol(&m, r, x, is_block(t));
        const double err = fabs((double)y[r] - (double)yref[r]);
        if (!(err <= tol))
            fail_msg("%s %lldx%lld row %lld: simd %.9g ref %.9g err %.3g > tol %.3g", tname(t), (long long)rows,
                     (long long)cols, (long long)r, y[r], yref[r], err, tol);
        if (err / tol > worst) worst = err / tol;
    }
    /* Sub-ranges give the same values as the whole. */
    if (rows > 2) {
        memset(yt, 0, (size_t)rows * sizeof(float));
        mt_matvec_rows(&m.W, x, yt, 1, rows - 1);
        assert_memory_equal(yt + 1, y + 1, (size_t)(rows - 2) * sizeof(float));
        assert_true(yt[0] == 0.0f && yt[rows - 1] == 0.0f); /* untouched outside [r0, r1) */
    }
    for (int k = 0; k < npools; k++) {
        memset(yt, 0xff, (size_t)rows * sizeof(float));
        mt_matvec(pools[k], &m.W, x, yt);
        if (memcmp(yt, y, (size_t)rows * sizeof(float)) != 0)
            fail_msg("%s %lldx%lld: matvec on %d threads differs from single-threaded rows", tname(t),
                     (long long)rows, (long long)cols, mt_pool_size(pools[k]));
    }
    if (rows == 512 && (cols == 4096 || cols == 256))
        printf("# %-5s %4lldx%-4lld max err/tol %.3f\n", tname(t), (long long)rows, (long long)cols, worst);
    free(x);
    free(yref);
    free(y);
    free(yt);
    free_mat(&m);
}

typedef struct {
    mt_pool *pools[3]; /* 1, 2, 3 threads */
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    for (int i = 0; i < 3; i++)
        if (mt_pool_init(&f->pools[i], i + 1) != MT_OK) return -1;
    *state = f;
    return 0;
}
static int teardown(void **state) {
    fixture *f = *state;
    for (int i = 0; i < 3; i++) mt_pool_free(f->pools[i]);
    free(f);
    return 0;
}

static void test_matvec_all_types(void **state) {
    fixture *f = *state;
    const int64_t colss[] = {32, 64, 96, 256, 1000, 4096};
    const int64_t rowss[] = {1, 3, 17, 512};
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++)
        for (size_t ci = 0; ci < sizeof colss / sizeof colss[0]; ci++)
            for (size_t ri = 0; ri < sizeof rowss / sizeof rowss[0]; ri++) {
                const mt_dtype t = k_types[ti];
                if (is_block(t) && colss[ci] % 32) continue;
                check_matvec(t, rowss[ri], colss[ci], 0, 0, f->pools, 3);
            }
}

/* Views with gaps between rows (a matrix inside a bigger tensor) and data
 * that does not start on an aligned address. */
static void test_matvec_strided_unaligned(void **state) {
    fixture *f = *state;
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
        const mt_dtype t = k_types[ti];
        check_matvec(t, 300, 256, 256 * 4, 0, f->pools, 3); /* stride: a larger row */
        check_matvec(t, 77, 96, 6, 2, f->pools, 3);          /* odd gap, 2-byte offset */
        check_matvec(t, 512, 128, 34, 1, f->pools, 3);       /* 1-byte offset */
        if (!is_block(t)) check_matvec(t, 129, 333, 2, 3, f->pools, 3);
    }
}

/* Y = X Wᵀ vs the reference row by row: float types through sgemm (exact
 * x, TOL_FLOAT_SUM); block types (q8_0, q4_0) quantise x as decode does and
 * run the integer GEMM over tiles of tokens, whose rows must equal decode's
 * matvec of each token bit for bit (and so the reference within the
 * quantised-x bound); n < 4 goes through matvecs. */
static void check_matmul(mt_dtype t, int64_t rows, int64_t cols, int n, uint64_t pad, uint64_t misalign, mt_pool *p) {
    test_mat m;
    make_mat(&m, t, rows, cols, pad, misalign);
    float *X = malloc((size_t)n * (size_t)cols * sizeof(float));
    float *Y = malloc((size_t)n * (size_t)rows * sizeof(float));
    float *yref = malloc((size_t)rows * sizeof(float));
    const size_t ns = mt_matmul_scratch_floats(&m.W);
    float *scratch = malloc((ns ? ns : 1) * sizeof(float));
    assert_non_null(X);
    assert_non_null(Y);
    assert_non_null(yref);
    assert_non_null(scratch);
    fill_x(X, (int64_t)n * cols);
    memset(Y, 0xff, (size_t)n * (size_t)rows * sizeof(float));
    mt_matmul(p, &m.W, X, n, Y, scratch);
    for (int i = 0; i < n; i++) {
        const float *x = X + (size_t)i * (size_t)cols;
        mt_matvec_rows_ref(&m.W, x, yref, 0, rows);
        for (int64_t r = 0; r < rows; r++) {
            const double tol = row_tol(&m, r, x, is_block(t));
            const double err = fabs((double)Y[(size_t)i * (size_t)rows + (size_t)r] - (double)yref[r]);
            if (!(err <= tol))
                fail_msg("matmul %s %lldx%lld n=%d threads=%d: Y[%d,%lld] %.9g ref %.9g err %.3g > %.3g", tname(t),
                         (long long)rows, (long long)cols, n, mt_pool_size(p), i, (long long)r,
                         Y[(size_t)i * (size_t)rows + (size_t)r], yref[r], err, tol);
        }
        if (is_block(t)) { /* the per-token integer path: decode's matvec */
            mt_matvec(p, &m.W, x, yref);
            for (int64_t r = 0; r < rows; r++)
                if (memcmp(&Y[(size_t)i * (size_t)rows + (size_t)r], &yref[r], sizeof(float)) != 0)
                    fail_msg("matmul %s %lldx%lld n=%d threads=%d: Y[%d,%lld] %.9g, decode's matvec %.9g", tname(t),
                             (long long)rows, (long long)cols, n, mt_pool_size(p), i, (long long)r,
                             Y[(size_t)i * (size_t)rows + (size_t)r], yref[r]);
        }
    }
    free(X);
    free(Y);
    free(yref);
    free(scratch);
    free_mat(&m);
}

static void test_matmul(void **state) {
    fixture *f = *state;
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
        const mt_dtype t = k_types[ti];
        for (int n = 1; n <= 9; n++) check_matmul(t, 300, 96, n, 0, 0, f->pools[n % 3]);
        check_matmul(t, 300, 256, 300, 0, 0, f->pools[1]);
        check_matmul(t, 300, 256, 300, 0, 0, f->pools[0]);
        check_matmul(t, 600, 64, 37, 0, 0, f->pools[2]);   /* more rows than one scratch chunk */
        check_matmul(t, 5, 64, 20, 0, 0, f->pools[2]);     /* fewer rows than threads*16 */
        check_matmul(t, 100, 128, 12, 36, 2, f->pools[1]); /* strided, unaligned: f32 can't go to sgemm directly */
        check_matmul(t, 100, 128, 12, 128 * 4, 0, f->pools[1]); /* strided, aligned */
        check_matmul(t, 70, 320, 23, 0, 0, f->pools[1]);  /* q4_0: groups of 8 blocks and a tail */
        check_matmul(t, 45, 512, 7, 0, 1, f->pools[2]);   /* tiles of 4 and 3 tokens, unaligned */
    }
}

/* Embedding rows: bit-exact against the io library's scalar conversion,
 * on random bit patterns for f16/bf16 (subnormals included, no inf/NaN). */
static void test_mat_row_f32(void **state) {
    (void)state;
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
        const mt_dtype t = k_types[ti];
        const int64_t cols = is_block(t) ? 96 : 1003;
        test_mat m;
        make_mat(&m, t, 7, cols, 10, 1);
        if (t == MT_DT_F16 || t == MT_DT_BF16) {
            for (int64_t r = 0; r < 7; r++) {
                uint8_t *row = m.buf + 1 + (uint64_t)r * m.W.row_stride;
                for (int64_t c = 0; c < cols; c++) {
                    uint16_t h;
                    do h = (uint16_t)rnd_u32();
                    while (t == MT_DT_F16 ? ((h >> 10) & 0x1f) == 0x1f : ((h >> 7) & 0xff) == 0xff);
                    if (c < 8) h = (uint16_t)(c | (c & 1 ? 0x8000 : 0)); /* tiny subnormals, signed zero */
                    memcpy(row + 2 * c, &h, 2);
                }
            }
        }
        float *a = malloc((size_t)cols * sizeof(float)), *b = malloc((size_t)cols * sizeof(float));
        assert_non_null(a);
        assert_non_null(b);
        for (int64_t r = 0; r < 7; r++) {
            mt_mat_row_f32(&m.W, r, a);
            assert_int_equal(mt_row_to_f32(t, (const uint8_t *)m.W.data + (uint64_t)r * m.W.row_stride, b, cols), MT_OK);
            if (memcmp(a, b, (size_t)cols * sizeof(float)) != 0) fail_msg("%s row %lld differs", tname(t), (long long)r);
        }
        free(a);
        free(b);
        free_mat(&m);
    }
}

/* llama.cpp quantize_row_tq1_0_ref, transcribed (block: qs[48], qh[4], f16 d). */
static void llama_quantize_tq1_0(const float *x, uint8_t *y, int64_t k) {
    for (int64_t i = 0; i < k / 256; i++, y += 54) {
        float amax = 0.0f;
        for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax, id = d ? 1.0f / d : 0.0f;
        uint16_t h = mt_f32_to_f16(d);
        memcpy(y + 52, &h, 2);
        for (size_t j = 0; j < 32; j += 32) {
            for (size_t m = 0; m < 32; ++m) {
                uint8_t q = 0;
                for (size_t n = 0; n < 5; ++n) q = (uint8_t)(q * 3 + (int)lroundf(x[m + n * 32] * id) + 1);
                y[j + m] = (uint8_t)(((uint16_t)q * 256 + (243 - 1)) / 243);
            }
            x += 5 * 32;
        }
        for (size_t j = 32; j < 48; j += 16) {
            for (size_t m = 0; m < 16; ++m) {
                uint8_t q = 0;
                for (size_t n = 0; n < 5; ++n) q = (uint8_t)(q * 3 + (int)lroundf(x[m + n * 16] * id) + 1);
                y[j + m] = (uint8_t)(((uint16_t)q * 256 + (243 - 1)) / 243);
            }
            x += 5 * 16;
        }
        for (size_t j = 0; j < 4; ++j) {
            uint8_t q = 0;
            for (size_t m = 0; m < 4; ++m) q = (uint8_t)(q * 3 + (int)lroundf(x[j + m * 4] * id) + 1);
            q = (uint8_t)(q * 3);
            y[48 + j] = (uint8_t)(((uint16_t)q * 256 + (243 - 1)) / 243);
        }
        x += 16;
    }
}

/* llama.cpp dequantize_row_tq1_0, transcribed. */
static void llama_dequantize_tq1_0(const uint8_t *x, float *y, int64_t k) {
    static const uint8_t pow3[6] = {1, 3, 9, 27, 81, 243};
    for (int64_t i = 0; i < k / 256; i++, x += 54) {
        uint16_t h;
        memcpy(&h, x + 52, 2);
        const float d = mt_f16_to_f32(h);
        for (size_t n = 0; n < 5; ++n)
            for (size_t m = 0; m < 32; ++m) *y++ = (float)(((uint16_t)(uint8_t)(x[m] * pow3[n]) * 3 >> 8) - 1) * d;
        for (size_t n = 0; n < 5; ++n)
            for (size_t m = 0; m < 16; ++m) *y++ = (float)(((uint16_t)(uint8_t)(x[32 + m] * pow3[n]) * 3 >> 8) - 1) * d;
        for (size_t n = 0; n < 4; ++n)
            for (size_t j = 0; j < 4; ++j) *y++ = (float)(((uint16_t)(uint8_t)(x[48 + j] * pow3[n]) * 3 >> 8) - 1) * d;
    }
}

/* TQ1_0: mt_tq1_0_pack equals llama.cpp's packing of the same codes,
 * decoding equals llama.cpp's, and both matvecs equal the decoded dot. */
static void test_tq1_0(void **state) {
    (void)state;
    enum { ROWS = 21, COLS = 768 };
    const uint64_t rb = 54 * COLS / 256;
    uint8_t *data = malloc(ROWS * rb), mine[54];
    float *w = malloc(COLS * sizeof *w), *wl = malloc(COLS * sizeof *wl), *wm = malloc(COLS * sizeof *wm);
    float x[COLS], y1[ROWS], y2[ROWS];
    int8_t q[256], back[256];
    assert_true(mt_kernel_supported(MT_DT_TQ1_0));
    for (int r = 0; r < ROWS; r++) {
        for (int i = 0; i < COLS; i++) w[i] = rnd_unit() * (float)(r + 1);
        if (r == 3) memset(w, 0, 256 * sizeof *w); /* an all-zero block */
        llama_quantize_tq1_0(w, data + r * rb, COLS);
        for (int b = 0; b < COLS / 256; b++) {
            const uint8_t *blk = data + r * rb + 54 * b;
            float amax = 0.0f;
            for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(w[256 * b + j]));
            for (int j = 0; j < 256; j++) q[j] = (int8_t)lroundf(amax ? w[256 * b + j] / amax : 0.0f);
            uint16_t h;
            memcpy(&h, blk + 52, 2);
            mt_tq1_0_pack(q, h, mine);
            assert_memory_equal(mine, blk, 54);
            mt_tq1_0_unpack(blk, back);
            assert_memory_equal(back, q, 256);
        }
        assert_int_equal(mt_row_to_f32(MT_DT_TQ1_0, data + r * rb, wm, COLS), MT_OK);
        llama_dequantize_tq1_0(data + r * rb, wl, COLS);
        assert_memory_equal(wm, wl, COLS * sizeof *wm);
    }
    for (int i = 0; i < COLS; i++) x[i] = rnd_unit();
    mt_mat W = {.dtype = MT_DT_TQ1_0, .rows = ROWS, .cols = COLS, .data = data, .row_stride = rb};
    mt_matvec_rows_ref(&W, x, y1, 0, ROWS);
    mt_matvec_rows(&W, x, y2, 0, ROWS);
    for (int r = 0; r < ROWS; r++) {
        llama_dequantize_tq1_0(data + r * rb, wl, COLS);
        double dot = 0, A = 0;
        for (int i = 0; i < COLS; i++) dot += (double)wl[i] * x[i], A += fabs((double)wl[i] * x[i]);
        assert_true(fabs(y1[r] - dot) <= 1e-5 * (A + 1e-30));
        assert_true(fabs(y2[r] - dot) <= 1e-5 * (A + 1e-30));
    }
    free(data);
    free(w);
    free(wl);
    free(wm);
}

/* Inputs the kernels cannot run give NaN outputs, never a crash. */
static void test_unsupported(void **state) {
    fixture *f = *state;
    assert_true(mt_kernel_supported(MT_DT_BF16));
    assert_false(mt_kernel_supported(MT_DT_I8));
    assert_false(mt_kernel_supported(MT_DT_I64));
    uint8_t data[4096] = {0};
    float x[64] = {0}, y[8], scratch[64 * 8];
    mt_mat W = {.dtype = MT_DT_I32, .rows = 4, .cols = 16, .data = data, .row_stride = 64};
    mt_matvec(f->pools[1], &W, x, y);
    for (int i = 0; i < 4; i++) assert_true(isnan(y[i]));
    mt_mat Q = {.dtype = MT_DT_Q8_0, .rows = 4, .cols = 40, .data = data, .row_stride = 64}; /* not whole blocks */
    mt_matvec_rows(&Q, x, y, 0, 4);
    for (int i = 0; i < 4; i++) assert_true(isnan(y[i]));
    mt_mat_row_f32(&Q, 0, x);
    assert_true(isnan(x[0]));
    mt_mat B = {.dtype = MT_DT_F32, .rows = 4, .cols = 16, .data = data, .row_stride = 64};
    mt_mat_row_f32(&B, 4, x); /* row out of range */
    assert_true(isnan(x[0]));
    float X[5 * 16] = {0}, Y[5 * 4];
    mt_matmul(f->pools[1], &W, X, 5, Y, scratch);
    for (int i = 0; i < 20; i++) assert_true(isnan(Y[i]));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matvec_all_types),
        cmocka_unit_test(test_matvec_strided_unaligned),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_mat_row_f32),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_tq1_0),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
