/* test_kq8.c — the K-quant integer kernels (kernels_kq8.c: q2_K..q6_K
 * against q8_K activations) on random blocks:
 *  - SIMD rows (decode) bit-identical to the plain C twin;
 *  - the prefill GEMM (tiles of rows × tokens) bit-identical to the rows,
 *    token by token, for row and token counts that leave tile tails;
 *  - the plain C twin against the weights decoded to f32 by the codec
 *    (lib/io/codec/kquant.c, checked against gguf-py elsewhere) dotted in
 *    double with the same q8_K-rounded x: the integer part is exact, so
 *    only f32 rounding of the per-block scale products remains;
 *  - mt_matvec / mt_matmul through the pool, 1 to 3 threads, bit-identical
 *    to the rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd_unit(void) { return (float)rnd_u32() / 4294967296.0f * 2.0f - 1.0f; }

/* types and the offsets of their f16 fields (ggml-common.h) */
static const struct {
    mt_dtype t;
    int bytes, n, off[2];
} k_types[] = {
    {MT_DT_Q2_K, 84, 2, {80, 82}}, {MT_DT_Q3_K, 110, 1, {108}}, {MT_DT_Q4_K, 144, 2, {0, 2}},
    {MT_DT_Q5_K, 176, 2, {0, 2}},  {MT_DT_Q6_K, 210, 1, {208}},
};

static void check_type(mt_pool **pools, size_t ti, int64_t rows, int64_t cols) {
    const mt_dtype t = k_types[ti].t;
    const int64_t nb = cols / 256;
    const size_t rb = (size_t)nb * (size_t)k_types[ti].bytes;
    uint8_t *buf = malloc(rb * (size_t)rows);
    float *wf = malloc((size_t)(rows * cols) * sizeof(float));
    assert_true(buf && wf);
    for (size_t i = 0; i < rb * (size_t)rows; i++) buf[i] = (uint8_t)rnd_u32();
    for (int64_t b = 0; b < rows * nb; b++)
        for (int k = 0; k < k_types[ti].n; k++) {
            const uint16_t h = mt_f32_to_f16(0.001f + 0.02f * (rnd_unit() + 1.0f));
            memcpy(buf + (size_t)b * (size_t)k_types[ti].bytes + k_types[ti].off[k], &h, 2);
        }
    for (int64_t r = 0; r < rows; r++) assert_int_equal(mt_row_to_f32(t, buf + (size_t)r * rb, wf + r * cols, cols), MT_OK);
    const mt_mat W = {.dtype = t, .rows = rows, .cols = cols, .data = buf, .row_stride = rb};

    const int n = 11;
    float *X = malloc((size_t)(n * cols) * sizeof(float));
    int8_t *xq = malloc((size_t)(n * cols));
    float *xd = malloc((size_t)(n * nb) * sizeof(float));
    int16_t *bs = malloc((size_t)(n * nb * 16) * sizeof(int16_t));
    float *y = malloc((size_t)rows * sizeof(float)), *yr = malloc((size_t)rows * sizeof(float));
    float *Y = malloc((size_t)(n * rows) * sizeof(float)), *Yp = malloc((size_t)(n * rows) * sizeof(float));
    float *Yrows = malloc((size_t)(n * rows) * sizeof(float));
    assert_true(X && xq && xd && bs && y && yr && Y && Yp && Yrows);
    for (int64_t i = 0; i < n * cols; i++) X[i] = rnd_unit() * (rnd_u32() % 40 == 0 ? 30.0f : 1.0f);
    for (int i = 0; i < n; i++) mt_kq_quantize_x_q8K(X + i * cols, cols, xq + i * cols, xd + i * nb, bs + i * nb * 16);

    for (int i = 0; i < n; i++) {
        const int8_t *q = xq + i * cols;
        mt_kq8_rows(&W, q, xd + i * nb, bs + i * nb * 16, y, 0, rows);
        mt_kq8_rows_ref(&W, q, xd + i * nb, bs + i * nb * 16, yr, 0, rows);
        if (memcmp(y, yr, (size_t)rows * sizeof(float)) != 0)
            for (int64_t r = 0; r < rows; r++)
                if (memcmp(&y[r], &yr[r], sizeof(float)))
                    fail_msg("%s cols %lld token %d row %lld: simd %.9g plain C %.9g", mt_dtype_name(t),
                             (long long)cols, i, (long long)r, y[r], yr[r]);
        memcpy(Yrows + i * rows, y, (size_t)rows * sizeof(float));
        /* against decoded f32 weights and the same rounded x, in double */
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.0, a = 0.0;
            for (int64_t j = 0; j < cols; j++) {
                const double xv = (double)xd[i * nb + j / 256] * q[j];
                s += (double)wf[r * cols + j] * xv;
                a += fabs((double)wf[r * cols + j] * xv);
            }
            if (!(fabs(s - yr[r]) <= 2e-5 * a + 1e-30))
                fail_msg("%s cols %lld token %d row %lld: int %.9g f32 weights %.9g (sum |wx| %.3g)", mt_dtype_name(t),
                         (long long)cols, i, (long long)r, yr[r], s, a);
        }
    }
    /* GEMM: whole and in row ranges that split tiles, n from 1 to 11 */
    for (int nn = 1; nn <= n; nn += 3) {
        memset(Y, 0xff, (size_t)(n * rows) * sizeof(float));
        assert_true(mt_kq8_gemm(&W, xq, xd, bs, nn, Y, rows, 0, 5));
        assert_true(mt_kq8_gemm(&W, xq, xd, bs, nn, Y, rows, 5, rows));
        for (int i = 0; i < nn; i++)
            if (memcmp(Y + i * rows, Yrows + i * rows, (size_t)rows * sizeof(float)) != 0)
                fail_msg("%s cols %lld gemm n=%d token %d differs from the rows", mt_dtype_name(t), (long long)cols,
                         nn, i);
    }
    /* through the pool: decode and prefill, 1..3 threads */
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < n; i++) {
            mt_matvec(pools[k], &W, X + i * cols, y);
            assert_memory_equal(y, Yrows + i * rows, (size_t)rows * sizeof(float));
        }
        float *scratch = malloc(mt_matmul_scratch_floats(&W) * sizeof(float));
        assert_non_null(scratch);
        mt_matmul(pools[k], &W, X, n, Yp, scratch);
        assert_memory_equal(Yp, Yrows, (size_t)(n * rows) * sizeof(float));
        free(scratch);
    }
    free(buf), free(wf), free(X), free(xq), free(xd), free(bs), free(y), free(yr), free(Y), free(Yp), free(Yrows);
}

static void test_kq8(void **state) {
    mt_pool **pools = *state;
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
        assert_true(mt_kq8_type(k_types[ti].t));
        check_type(pools, ti, 37, 256);
        check_type(pools, ti, 70, 1024);
        check_type(pools, ti, 33, 3584);
    }
    assert_false(mt_kq8_type(MT_DT_Q8_K));
    assert_false(mt_kq8_type(MT_DT_Q4_0));
}

/* The extremes: every code at its largest, scales at their extremes, x at
 * ±127 (integer sums at their bound) still agree SIMD vs plain C. */
static void test_kq8_extremes(void **state) {
    (void)state;
    for (size_t ti = 0; ti < sizeof k_types / sizeof k_types[0]; ti++) {
        const int64_t cols = 512, nb = 2;
        const size_t rb = (size_t)nb * (size_t)k_types[ti].bytes;
        uint8_t *buf = malloc(2 * rb);
        assert_non_null(buf);
        memset(buf, 0xff, rb);
        memset(buf + rb, 0x00, rb);
        for (int64_t b = 0; b < 2 * nb; b++)
            for (int k = 0; k < k_types[ti].n; k++) {
                const uint16_t h = mt_f32_to_f16(0.5f);
                memcpy(buf + (size_t)b * (size_t)k_types[ti].bytes + k_types[ti].off[k], &h, 2);
            }
        if (k_types[ti].t == MT_DT_Q6_K) /* int8 scales at -128 */
            for (int64_t b = 0; b < 2 * nb; b++) memset(buf + (size_t)b * 210 + 192, 0x80, 16);
        const mt_mat W = {.dtype = k_types[ti].t, .rows = 2, .cols = cols, .data = buf, .row_stride = rb};
        float x[512], xd[2], y[2], yr[2];
        int8_t xq[512];
        int16_t bs[32];
        for (int j = 0; j < 512; j++) x[j] = j % 3 ? 1.0f : -1.0f;
        mt_kq_quantize_x_q8K(x, cols, xq, xd, bs);
        mt_kq8_rows(&W, xq, xd, bs, y, 0, 2);
        mt_kq8_rows_ref(&W, xq, xd, bs, yr, 0, 2);
        assert_memory_equal(y, yr, sizeof y);
        assert_true(isfinite(y[0]) && isfinite(y[1]));
        free(buf);
    }
}

/* x to q8_K: the SIMD quantiser against its plain C twin, byte for byte, on
 * blocks of random values, ties of magnitude (+a before -a and after),
 * all zeros, a single nonzero, huge and tiny values, and NaN / infinity. */
static void test_kq8_quantize_x(void **state) {
    (void)state;
    enum { NB = 12, N = NB * 256 };
    float *x = malloc(N * sizeof(float));
    int8_t q[N], qr[N];
    float d[NB], dr[NB];
    int16_t bs[16 * NB], bsr[16 * NB];
    assert_non_null(x);
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < N; i++) x[i] = rnd_unit() * (rnd_u32() % 50 == 0 ? 40.0f : 1.0f);
        float *b = x;
        b[17] = 50.0f, b[200] = -50.0f;           /* block 0: tie, + first */
        b += 256, b[3] = -60.0f, b[255] = 60.0f; /* block 1: tie, - first */
        b += 256, memset(b, 0, 256 * sizeof(float));
        b += 256, memset(b, 0, 256 * sizeof(float)), b[round * 7 % 256] = -3e-30f;
        b += 256;
        for (int i = 0; i < 256; i++) b[i] *= 1e30f;
        b += 256, b[round % 256] = NAN;
        b += 256, b[(round * 13) % 256] = -INFINITY;
        b += 256;
        for (int i = 0; i < 256; i++) b[i] = (float)(i % 5) - 2.0f; /* exact halves after scaling: ties to even */
        mt_kq_quantize_x_q8K(x, N, q, d, bs);
        mt_kq_quantize_x_q8K_ref(x, N, qr, dr, bsr);
        assert_memory_equal(q, qr, sizeof q);
        assert_memory_equal(d, dr, sizeof d);
        assert_memory_equal(bs, bsr, sizeof bs);
    }
    free(x);
}

static int setup(void **state) {
    static mt_pool *pools[3];
    for (int i = 0; i < 3; i++)
        if (mt_pool_init(&pools[i], i + 1) != MT_OK) return -1;
    *state = pools;
    return 0;
}
static int teardown(void **state) {
    mt_pool **pools = *state;
    for (int i = 0; i < 3; i++) mt_pool_free(pools[i]);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kq8),
        cmocka_unit_test(test_kq8_extremes),
        cmocka_unit_test(test_kq8_quantize_x),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
