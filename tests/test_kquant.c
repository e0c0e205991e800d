/* test_kquant.c — the runtime's kernels for llama.cpp's read-only block types
 * (q4_1, q5_0, q5_1, q2_K..q8_K, iq4_nl, iq4_xs; kernels_kq.c) against their
 * plain C references, on random blocks (random code bytes, random small
 * scales). The decoders themselves are checked bit for bit against gguf-py
 * by tests/cli_dequant.sh.
 *
 * Tolerances per row, with A = Σ_j |w_j x_j|:
 *   x is rounded as llama.cpp's activation type holds it: q8_K (per 256:
 *   d = max/127 in magnitude, round to nearest) for the K-quants and
 *   iq4_xs, so |x_j − q_j d| ≤ |d|/2 and
 *     |y − y_ref| ≤ Σ_b (|d_b|/2) Σ_{j∈b} |w_j| + TOL_FLOAT_SUM · A,
 *   q8_0 values (per 32, d in f16) for q4_1, q5_0, q5_1, iq4_nl: 0.57 |d_b|
 *   instead of |d_b|/2 (f16 rounding of d times up to 127 codes);
 *   their SIMD rows and the plain C integer dot compute the same integers:
 *   within TOL_FLOAT_SUM · A of each other.
 * Also: threaded matvec bit-identical to single-threaded rows, matmul
 * (prefill) within the f32 bound, mt_dtype_find_nonfinite_block, and the
 * q8_K quantisation of x against its definition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

#define TOL_FLOAT_SUM 2e-5

static uint64_t g_rng = 0x243F6A8885A308D3ull;
static uint32_t rnd_u32(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 16);
}
static float rnd_unit(void) { return (float)rnd_u32() / 4294967296.0f * 2.0f - 1.0f; }

/* Types under test and the byte offsets of their f16 scales (ggml-common.h,
 * written out here independently of the library's table). */
static const struct {
    mt_dtype t;
    int n;
    int off[2];
} k_types[] = {
    {MT_DT_Q4_1, 2, {0, 2}},  {MT_DT_Q5_0, 1, {0}},     {MT_DT_Q5_1, 2, {0, 2}},  {MT_DT_Q2_K, 2, {80, 82}},
    {MT_DT_Q3_K, 1, {108}},   {MT_DT_Q4_K, 2, {0, 2}},  {MT_DT_Q5_K, 2, {0, 2}},  {MT_DT_Q6_K, 1, {208}},
    {MT_DT_Q8_K, 0, {0}},     {MT_DT_IQ4_NL, 1, {0}},   {MT_DT_IQ4_XS, 1, {0}},
    {MT_DT_IQ2_XXS, 1, {0}},  {MT_DT_IQ2_XS, 1, {0}},   {MT_DT_IQ2_S, 1, {0}},    {MT_DT_IQ3_XXS, 1, {0}},
    {MT_DT_IQ3_S, 1, {0}},    {MT_DT_IQ1_S, 1, {0}},    {MT_DT_IQ1_M, 0, {0}}, /* d: top nibbles of 4 uint16 at 48 */
};

/* iq1_m's f16 d is spread over the top nibbles of its four uint16 scales. */
static void iq1m_set_d(uint8_t *blk, uint16_t h) {
    for (int k = 0; k < 4; k++) {
        uint16_t v;
        memcpy(&v, blk + 48 + 2 * k, 2);
        v = (uint16_t)((v & 0x0fff) | ((h >> (4 * k)) & 0xf) << 12);
        memcpy(blk + 48 + 2 * k, &v, 2);
    }
}
#define N_TYPES (sizeof k_types / sizeof k_types[0])

typedef struct {
    mt_mat W;
    uint8_t *buf;
    float *wf;
} kmat;

static void make(kmat *m, size_t ti, int64_t rows, int64_t cols) {
    const mt_dtype t = k_types[ti].t;
    const mt_dtype_info *d = mt_dtype_get(t);
    uint64_t rb;
    assert_int_equal(mt_dtype_nbytes(t, (uint64_t)cols, &rb), MT_OK);
    m->buf = malloc((size_t)(rb * (uint64_t)rows));
    m->wf = malloc((size_t)(rows * cols) * sizeof(float));
    assert_non_null(m->buf);
    assert_non_null(m->wf);
    for (uint64_t i = 0; i < rb * (uint64_t)rows; i++) m->buf[i] = (uint8_t)rnd_u32();
    const int64_t nb = rows * cols / d->block_elems;
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = m->buf + (uint64_t)b * (uint64_t)d->block_bytes;
        for (int k = 0; k < k_types[ti].n; k++) {
            const uint16_t h = mt_f32_to_f16(0.001f + 0.02f * (rnd_unit() + 1.0f));
            memcpy(blk + k_types[ti].off[k], &h, 2);
        }
        if (t == MT_DT_Q8_K) {
            const float dd = 0.001f * rnd_unit();
            memcpy(blk, &dd, 4);
        }
        if (t == MT_DT_IQ1_M) iq1m_set_d(blk, mt_f32_to_f16(0.001f + 0.02f * (rnd_unit() + 1.0f)));
    }
    for (int64_t r = 0; r < rows; r++)
        assert_int_equal(mt_row_to_f32(t, m->buf + (uint64_t)r * rb, m->wf + r * cols, cols), MT_OK);
    m->W = (mt_mat){.dtype = t, .rows = rows, .cols = cols, .data = m->buf, .row_stride = rb};
}

static void fill_x(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = rnd_unit();
        if (rnd_u32() % 50 == 0) v *= 20.0f;
        x[i] = v;
    }
}

/* blk: the activation block x is rounded in (0: exact x). 32-blocks keep
 * their scale in f16: |d16 − d| ≤ d·2^-11, times 127 codes: +0.07 d. */
static double row_tol(const kmat *m, int64_t r, const float *x, int blk) {
    const int64_t n = m->W.cols;
    const float *w = m->wf + r * n;
    double a = 0.0, q = 0.0;
    for (int64_t j = 0; j < n; j++) a += fabs((double)w[j] * x[j]);
    for (int64_t b = 0; blk && b < n / blk; b++) {
        double amax = 0.0, sw = 0.0;
        for (int j = 0; j < blk; j++) {
            amax = fmax(amax, fabs((double)x[blk * b + j]));
            sw += fabs((double)w[blk * b + j]);
        }
        q += amax / 127.0 * (blk == 32 ? 0.57 : 0.5001) * sw;
    }
    return q + TOL_FLOAT_SUM * a + 1e-30;
}

/* llama.cpp's activation type for t: q8_0/q8_1 (32) or q8_K (256). */
static int act_blk(mt_dtype t) {
    return t == MT_DT_Q4_1 || t == MT_DT_Q5_0 || t == MT_DT_Q5_1 || t == MT_DT_IQ4_NL ? 32 : 256;
}

static void test_matvec(void **state) {
    mt_pool **pools = *state;
    const int64_t rows = 67, colss[] = {256, 1024, 4096};
    for (size_t ti = 0; ti < N_TYPES; ti++)
        for (size_t ci = 0; ci < 3; ci++) {
            const mt_dtype t = k_types[ti].t;
            const int64_t cols = colss[ci];
            assert_true(mt_kernel_supported(t));
            kmat m;
            make(&m, ti, rows, cols);
            float *x = malloc((size_t)cols * sizeof(float)), *yref = malloc(rows * sizeof(float)),
                  *y = malloc(rows * sizeof(float)), *yt = malloc(rows * sizeof(float));
            assert_true(x && yref && y && yt);
            fill_x(x, cols);
            mt_matvec_rows_ref(&m.W, x, yref, 0, rows);
            mt_matvec_rows(&m.W, x, y, 0, rows);
            for (int64_t r = 0; r < rows; r++) {
                /* the reference is the decoded weights dotted in double */
                double s = 0.0;
                for (int64_t j = 0; j < cols; j++) s += (double)m.wf[r * cols + j] * x[j];
                assert_true(fabs(s - yref[r]) <= 1e-6 * fabs(s) + 1e-30);
                const double tol = row_tol(&m, r, x, act_blk(t));
                if (!(fabs((double)y[r] - yref[r]) <= tol))
                    fail_msg("%s cols %lld row %lld: fast %.9g ref %.9g tol %.3g", mt_dtype_name(t), (long long)cols,
                             (long long)r, y[r], yref[r], tol);
            }
            if (mt_kq_is_q8K_type(t)) { /* SIMD rows vs the plain C integer dot */
                int8_t *xq = malloc((size_t)cols);
                float *xd = malloc((size_t)cols / 256 * sizeof(float));
                int16_t *bs = malloc((size_t)cols / 16 * sizeof(int16_t));
                assert_true(xq && xd && bs);
                mt_kq_quantize_x_q8K(x, cols, xq, xd, bs);
                for (int64_t r = 0; r < rows; r++) {
                    const float c = mt_kq_dot_q8K_c(t, m.buf + (uint64_t)r * m.W.row_stride, xq, xd, bs, cols / 256);
                    const double tol = row_tol(&m, r, x, 0);
                    if (!(fabs((double)c - y[r]) <= tol))
                        fail_msg("%s row %lld: simd %.9g plain C %.9g tol %.3g", mt_dtype_name(t), (long long)r, y[r],
                                 c, tol);
                }
                free(xq);
                free(xd);
                free(bs);
            }
            for (int k = 0; k < 3; k++) {
                memset(yt, 0xff, rows * sizeof(float));
                mt_matvec(pools[k], &m.W, x, yt);
                assert_memory_equal(yt, y, rows * sizeof(float));
            }
            /* prefill: n = 2 (matvecs) and n = 9 (f32 sgemm on decoded rows) */
            for (int n = 2; n <= 9; n += 7) {
                float *X = malloc((size_t)(n * cols) * sizeof(float)), *Y = malloc((size_t)(n * rows) * sizeof(float));
                float *scratch = malloc(mt_matmul_scratch_floats(&m.W) * sizeof(float));
                assert_true(X && Y && scratch);
                for (int i = 0; i < n; i++) memcpy(X + i * cols, x, (size_t)cols * sizeof(float));
                mt_matmul(pools[1], &m.W, X, n, Y, scratch);
                for (int i = 0; i < n; i++)
                    for (int64_t r = 0; r < rows; r++)
                        if (!(fabs((double)Y[i * rows + r] - yref[r]) <= row_tol(&m, r, x, act_blk(t))))
                            fail_msg("%s matmul n=%d row %lld: %.9g ref %.9g", mt_dtype_name(t), n, (long long)r,
                                     Y[i * rows + r], yref[r]);
                free(X);
                free(Y);
                free(scratch);
            }
            /* embedding rows */
            float *row = malloc((size_t)cols * sizeof(float));
            assert_non_null(row);
            mt_mat_row_f32(&m.W, rows / 2, row);
            assert_memory_equal(row, m.wf + rows / 2 * cols, (size_t)cols * sizeof(float));
            free(row);
            free(x);
            free(yref);
            free(y);
            free(yt);
            free(m.buf);
            free(m.wf);
        }
}

static void test_q8K_x(void **state) {
    (void)state;
    float x[512];
    int8_t q[512];
    float d[2];
    int16_t bs[32];
    fill_x(x, 512);
    x[300] = -50.0f; /* the largest magnitude is negative in block 1 */
    mt_kq_quantize_x_q8K(x, 512, q, d, bs);
    assert_true(fabsf(d[1] - 50.0f / 127.0f) < 1e-6f);
    assert_int_equal(q[300], -127);
    for (int b = 0; b < 2; b++)
        for (int s = 0; s < 16; s++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) {
                const int j = 256 * b + 16 * s + k;
                sum += q[j];
                assert_true(fabsf(x[j] - d[b] * (float)q[j]) <= fabsf(d[b]) * 0.5001f);
            }
            assert_int_equal(bs[16 * b + s], sum);
        }
    memset(x, 0, sizeof x);
    mt_kq_quantize_x_q8K(x, 256, q, d, bs);
    assert_true(d[0] == 0.0f && q[7] == 0 && bs[3] == 0);
}

static void test_nonfinite(void **state) {
    (void)state;
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        kmat m;
        make(&m, ti, 4, 512);
        const mt_dtype_info *d = mt_dtype_get(k_types[ti].t);
        const int64_t nb = 4 * 512 / d->block_elems;
        assert_int_equal(mt_dtype_find_nonfinite_block(k_types[ti].t, m.buf, nb), -1);
        for (int k = 0; k < (k_types[ti].n ? k_types[ti].n : 1); k++) {
            uint8_t *blk = m.buf + (uint64_t)(nb - 2) * (uint64_t)d->block_bytes;
            uint8_t save[4];
            memcpy(save, blk + k_types[ti].off[k], 4);
            if (k_types[ti].t == MT_DT_Q8_K) {
                const float inf = INFINITY;
                memcpy(blk, &inf, 4);
            } else if (k_types[ti].t == MT_DT_IQ1_M) {
                iq1m_set_d(blk, 0x7c00); /* +inf */
                assert_int_equal(mt_dtype_find_nonfinite_block(k_types[ti].t, m.buf, nb), nb - 2);
                iq1m_set_d(blk, 0x3c00); /* 1.0 */
                assert_int_equal(mt_dtype_find_nonfinite_block(k_types[ti].t, m.buf, nb), -1);
                continue;
            } else {
                const uint16_t nan16 = 0x7e00;
                memcpy(blk + k_types[ti].off[k], &nan16, 2);
            }
            assert_int_equal(mt_dtype_find_nonfinite_block(k_types[ti].t, m.buf, nb), nb - 2);
            memcpy(blk + k_types[ti].off[k], save, 4);
        }
        free(m.buf);
        free(m.wf);
    }
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
        cmocka_unit_test(test_matvec),
        cmocka_unit_test(test_q8K_x),
        cmocka_unit_test(test_nonfinite),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
