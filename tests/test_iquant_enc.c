/* test_iquant_enc.c — properties of the lattice i-quant writers (iq_enc.c;
 * their bytes are checked against llama.cpp's quantizer by
 * tests/cli_iquant_lattice.sh and cli_iquant_mixes.sh, which need
 * llama-cpp-python):
 *   threads   the lattices are built on first use: 4 threads quantizing at
 *             once from a cold start write the bytes one thread writes
 *   error     random rows (a heavy-tailed mix of scales per row) read back
 *             through the decoders within a relative RMS error per type,
 *             and the importance weights lower the weighted error where
 *             they point (the weights are used)
 *   zeros     an all-zero row reads back as zeros (d = 0); rows with
 *             all-zero sub-blocks (which shift iq3_s's codes in llama.cpp,
 *             kept) read back finite */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_dtype.h"

#define COLS 1024
#define ROWS 6

static const mt_dtype g_types[] = {MT_DT_IQ3_S, MT_DT_IQ3_XXS, MT_DT_IQ2_S, MT_DT_IQ2_XS,
                                   MT_DT_IQ2_XXS, MT_DT_IQ1_M, MT_DT_IQ1_S};
/* relative RMS error bounds, about 1.2× what they measure on these rows
 * (0.167, 0.209, 0.310, 0.347, 0.403, 0.503, 0.606) */
static const double g_tol[] = {0.20, 0.25, 0.37, 0.42, 0.48, 0.60, 0.72};
#define NT (int)(sizeof g_types / sizeof g_types[0])

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
static float gauss(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static void fill(float *x, float *qw) {
    for (int r = 0; r < ROWS; r++) {
        const float s = (float)(0.01 * pow(10.0, 2 * urand()));
        for (int j = 0; j < COLS; j++) x[r * COLS + j] = s * gauss() * (urand() < 0.05 ? 4.f : 1.f);
    }
    for (int j = 0; j < COLS; j++) qw[j] = (float)(0.1 + urand() * urand() * 10);
}

static size_t row_bytes(mt_dtype t) { return (size_t)COLS / 256 * (size_t)mt_dtype_get(t)->block_bytes; }

static int quant_rows(mt_dtype t, const float *x, const float *qw, uint8_t *q) {
    for (int r = 0; r < ROWS; r++)
        if (mt_row_from_f32_w(t, x + r * COLS, q + r * row_bytes(t), COLS, qw)) return -1;
    return 0;
}

typedef struct {
    const float *x, *qw;
    uint8_t *q[NT];
    int rc;
} job;

static void *worker(void *p) {
    job *j = p;
    for (int i = 0; i < NT; i++) j->rc |= quant_rows(g_types[i], j->x, j->qw, j->q[i]);
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    float *x = malloc(sizeof(float) * ROWS * COLS), qw[COLS];
    fill(x, qw);
    job jobs[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (job){x, qw, {0}, 0};
        for (int i = 0; i < NT; i++) jobs[k].q[i] = malloc(row_bytes(g_types[i]) * ROWS);
    }
    for (int k = 0; k < 4; k++) assert_int_equal(pthread_create(&th[k], NULL, worker, &jobs[k]), 0);
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    job one = {x, qw, {0}, 0};
    for (int i = 0; i < NT; i++) one.q[i] = malloc(row_bytes(g_types[i]) * ROWS);
    worker(&one);
    assert_int_equal(one.rc, 0);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(jobs[k].rc, 0);
        for (int i = 0; i < NT; i++) {
            if (memcmp(jobs[k].q[i], one.q[i], row_bytes(g_types[i]) * ROWS))
                fail_msg("%s: thread %d wrote other bytes", mt_dtype_name(g_types[i]), k);
            free(jobs[k].q[i]);
        }
    }
    for (int i = 0; i < NT; i++) free(one.q[i]);
    free(x);
}

/* Σ w (x − y)² / Σ w x² over all rows (w NULL: 1). */
static double rel_err(const float *x, const float *y, const float *w) {
    double e = 0, s = 0;
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < COLS; j++) {
            const double wj = w ? w[j] : 1, d = x[r * COLS + j] - y[r * COLS + j];
            e += wj * d * d;
            s += wj * x[r * COLS + j] * x[r * COLS + j];
        }
    return e / s;
}

static void test_error(void **state) {
    (void)state;
    float *x = malloc(sizeof(float) * ROWS * COLS), *y = malloc(sizeof(float) * ROWS * COLS), qw[COLS], flat[COLS];
    uint8_t *q = malloc(row_bytes(MT_DT_IQ3_S) * ROWS);
    fill(x, qw);
    for (int j = 0; j < COLS; j++) flat[j] = 1;
    for (int i = 0; i < NT; i++) {
        const mt_dtype t = g_types[i];
        assert_int_equal(quant_rows(t, x, flat, q), 0);
        for (int r = 0; r < ROWS; r++)
            assert_int_equal(mt_row_to_f32(t, q + r * row_bytes(t), y + r * COLS, COLS), 0);
        const double e = sqrt(rel_err(x, y, NULL)), ew_flat = rel_err(x, y, qw);
        if (!(e < g_tol[i])) fail_msg("%s: relative RMS error %.4f above %.2f", mt_dtype_name(t), e, g_tol[i]);
        assert_int_equal(quant_rows(t, x, qw, q), 0);
        for (int r = 0; r < ROWS; r++)
            assert_int_equal(mt_row_to_f32(t, q + r * row_bytes(t), y + r * COLS, COLS), 0);
        const double ew = rel_err(x, y, qw);
        print_message("%-8s relative RMS error %.4f; weighted error %.5f with the weights, %.5f without\n",
                      mt_dtype_name(t), e, ew, ew_flat);
        if (!(ew < ew_flat))
            fail_msg("%s: the importance weights did not lower the weighted error (%.5f vs %.5f flat)", mt_dtype_name(t),
                     ew, ew_flat);
    }
    free(q);
    free(x);
    free(y);
}

static void test_zeros(void **state) {
    (void)state;
    float *x = calloc(ROWS * COLS, sizeof(float)), *y = malloc(sizeof(float) * ROWS * COLS), qw[COLS];
    uint8_t *q = malloc(row_bytes(MT_DT_IQ3_S) * ROWS);
    for (int j = 0; j < COLS; j++) qw[j] = 1;
    /* row 0 all zero; the others zero in every other 32-weight sub-block */
    for (int r = 1; r < ROWS; r++)
        for (int j = 0; j < COLS; j++) x[r * COLS + j] = (j / 32) % 2 ? gauss() : 0.f;
    for (int i = 0; i < NT; i++) {
        const mt_dtype t = g_types[i];
        assert_int_equal(quant_rows(t, x, qw, q), 0);
        for (int r = 0; r < ROWS; r++) {
            assert_int_equal(mt_row_to_f32(t, q + r * row_bytes(t), y + r * COLS, COLS), 0);
            for (int j = 0; j < COLS; j++) {
                if (!isfinite(y[r * COLS + j])) fail_msg("%s: row %d col %d not finite", mt_dtype_name(t), r, j);
                if (r == 0 && y[j] != 0.f)
                    fail_msg("%s: an all-zero row read back %g at %d", mt_dtype_name(t), y[j], j);
            }
        }
    }
    free(q);
    free(x);
    free(y);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads), /* first: the lattices are built here */
        cmocka_unit_test(test_error),
        cmocka_unit_test(test_zeros),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
