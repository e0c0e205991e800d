/* test_gptq.c — the GPTQ solver against independent checks:
 *   - the Cholesky factor of the damped inverse: Uᵀ U H = I (within 1e-9);
 *   - the blocked solver with lazy updates equals a column-by-column f64
 *     reference (same codes up to rare rounding ties, TOL_SAME_CODES; the
 *     same layer-output error within TOL_ERR_REL);
 *   - the layer-output error ‖(W−Ŵ)X‖² of GPTQ is at most RTN's, on random
 *     layers with correlated inputs (every grid) and on real layers of the
 *     bundled model with Hessians from routed calibration tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/quant/quant_impl.h"
#include "testutil.h"

#define TOL_SAME_CODES 0.99 /* fraction of equal codes, blocked vs naive */
#define TOL_ERR_REL 0.02    /* relative difference of output errors      */

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static double rnd_unit(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}
static double rnd_gauss(void) {
    double u = (rnd_unit() + 1) / 2 + 1e-12, v = (rnd_unit() + 1) / 2;
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* H = Σ x xᵀ over n samples x = A z (correlated features, a few strong ones). */
static double *make_h(int64_t cols, int n) {
    double *H = calloc((size_t)(cols * cols), sizeof *H), *x = malloc((size_t)cols * sizeof *x),
           *z = malloc((size_t)cols * sizeof *z);
    for (int s = 0; s < n; s++) {
        for (int64_t i = 0; i < cols; i++) z[i] = rnd_gauss() * (i % 17 == 0 ? 4.0 : 1.0);
        for (int64_t i = 0; i < cols; i++) x[i] = z[i] + 0.6 * z[(i + 1) % cols] + 0.3 * z[(i * 7 + 3) % cols];
        for (int64_t i = 0; i < cols; i++)
            for (int64_t j = 0; j < cols; j++) H[i * cols + j] += x[i] * x[j];
    }
    free(x);
    free(z);
    return H;
}

static float *make_w(int64_t rows, int64_t cols) {
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    for (int64_t i = 0; i < rows * cols; i++) W[i] = (float)(0.05 * rnd_gauss() * (i % 97 == 0 ? 5 : 1));
    return W;
}

static void test_chol_inv(void **st) {
    (void)st;
    const int64_t n = 48;
    double *H = make_h(n, 200), *U = malloc((size_t)(n * n) * sizeof *U);
    memcpy(U, H, (size_t)(n * n) * sizeof *U);
    assert_int_equal(mt_gptq_chol_inv(U, n), MT_OK);
    double maxdiff = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            /* (Uᵀ U H)[i][j] */
            double s = 0;
            for (int64_t k = 0; k < n; k++) {
                double uu = 0;
                for (int64_t t = 0; t <= (i < k ? i : k); t++) uu += U[t * n + i] * U[t * n + k];
                s += uu * H[k * n + j];
            }
            double d = fabs(s - (i == j ? 1.0 : 0.0));
            if (d > maxdiff) maxdiff = d;
            if (j < i) assert_true(U[i * n + j] == 0.0);
        }
    printf("chol_inv: max |UᵀU H − I| = %.3g\n", maxdiff);
    assert_true(maxdiff < 1e-9);
    free(H);
    free(U);
}

/* Runs GPTQ (H != NULL) or RTN on a copy of W; returns ‖(W−Ŵ)X‖². */
static double run(const float *W, int64_t rows, int64_t cols, const double *H0, const mt_grid *g, int gptq, int block,
                  int naive, int8_t *codes_out) {
    float *Wq = malloc((size_t)(rows * cols) * sizeof *Wq);
    memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
    int8_t *codes = codes_out ? codes_out : malloc((size_t)(rows * cols));
    int64_t ng = cols / g->group;
    float *a = malloc((size_t)(rows * ng) * sizeof *a), *b = malloc((size_t)(rows * ng) * sizeof *b);
    double *H = NULL;
    if (gptq && !naive) {
        H = malloc((size_t)(cols * cols) * sizeof *H);
        memcpy(H, H0, (size_t)(cols * cols) * sizeof *H);
    }
    mt_gptq_params p = {0.1, block, 0};
    int rc = naive ? mt_gptq_quantize_naive(Wq, rows, cols, H0, g, 0.1, codes, a, b)
                   : mt_gptq_quantize(Wq, rows, cols, H, g, &p, codes, a, b);
    assert_int_equal(rc, MT_OK);
    double e = mt_gptq_output_err(W, Wq, rows, cols, H0);
    free(Wq);
    if (!codes_out) free(codes);
    free(a);
    free(b);
    free(H);
    return e;
}

static void test_blocked_equals_naive(void **st) {
    (void)st;
    const int64_t rows = 24, cols = 256;
    double *H = make_h(cols, 600);
    float *W = make_w(rows, cols);
    struct { int bits, group, block; } cases[] = {{4, 32, 128}, {3, 64, 64}, {2, 128, 32}, {MT_QUANT_TERNARY, 0, 128},
                                                  {8, 32, 128}};
    int8_t *c1 = malloc((size_t)(rows * cols)), *c2 = malloc((size_t)(rows * cols));
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mt_grid g;
        assert_int_equal(mt_grid_make(&g, cases[k].bits, cases[k].group, cols, "test"), MT_OK);
        double eb = run(W, rows, cols, H, &g, 1, cases[k].block, 0, c1);
        double en = run(W, rows, cols, H, &g, 1, cases[k].block, 1, c2);
        int64_t same = 0;
        for (int64_t i = 0; i < rows * cols; i++) same += c1[i] == c2[i];
        char nm[48];
        mt_grid_name(&g, nm, sizeof nm);
        printf("blocked vs naive, %-20s block %3d: codes equal %.4f, err %.6g vs %.6g\n", nm, cases[k].block,
               (double)same / (double)(rows * cols), eb, en);
        assert_true((double)same / (double)(rows * cols) >= TOL_SAME_CODES);
        assert_true(fabs(eb - en) <= TOL_ERR_REL * en);
    }
    free(c1);
    free(c2);
    free(H);
    free(W);
}

static void test_gptq_beats_rtn_random(void **st) {
    (void)st;
    const int64_t rows = 64, cols = 512;
    double *H = make_h(cols, 1500);
    float *W = make_w(rows, cols);
    struct { int bits, group; } cases[] = {{8, 32}, {4, 32}, {4, 128}, {3, 128}, {2, 128}, {MT_QUANT_TERNARY, 0},
                                           {MT_QUANT_TERNARY, 256}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mt_grid g;
        assert_int_equal(mt_grid_make(&g, cases[k].bits, cases[k].group, cols, "test"), MT_OK);
        double er = run(W, rows, cols, H, &g, 0, 128, 0, NULL);
        double eg = run(W, rows, cols, H, &g, 1, 128, 0, NULL);
        char nm[48];
        mt_grid_name(&g, nm, sizeof nm);
        printf("random layer %-20s: RTN %.6g  GPTQ %.6g  (%.1f%%)\n", nm, er, eg, 100 * eg / er);
        assert_true(eg <= er);
    }
    /* act-order is a valid GPTQ too. */
    mt_grid g;
    mt_grid_make(&g, 3, 128, cols, "test");
    float *Wq = malloc((size_t)(rows * cols) * sizeof *Wq);
    memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
    double *Hc = malloc((size_t)(cols * cols) * sizeof *Hc);
    memcpy(Hc, H, (size_t)(cols * cols) * sizeof *Hc);
    int8_t *codes = malloc((size_t)(rows * cols));
    float *a = malloc((size_t)(rows * 4) * sizeof *a), *b = malloc((size_t)(rows * 4) * sizeof *b);
    mt_gptq_params p = {0.1, 128, 1};
    assert_int_equal(mt_gptq_quantize(Wq, rows, cols, Hc, &g, &p, codes, a, b), MT_OK);
    double eact = mt_gptq_output_err(W, Wq, rows, cols, H), er = run(W, rows, cols, H, &g, 0, 128, 0, NULL);
    printf("act-order int3 g128: %.6g (RTN %.6g)\n", eact, er);
    assert_true(eact <= er);
    /* Ŵ holds exactly the codes' values. */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            float dq;
            mt_grid_quant(&g, a[r * 4 + j / 128], b[r * 4 + j / 128], Wq[r * cols + j], &dq);
            assert_true(dq == Wq[r * cols + j]);
        }
    free(Wq);
    free(Hc);
    free(codes);
    free(a);
    free(b);
    free(H);
    free(W);
}

/* Real layers: layer 1 of the bundled model, Hessians of expert 0's routed
 * inputs (w1) and intermediate activations (w2) from 2048 train tokens. */
static void test_gptq_beats_rtn_real(void **st) {
    (void)st;
    mt_model *m = NULL;
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    if (mt_model_load(&m, tu_model_dir(), &mo)) {
        printf("bundled model not loadable: %s\n", mt_last_error());
        skip();
    }
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(mt_calib_tokens(m, tu_model_path("data/train.txt"), 2048, &ids, &n), MT_OK);
    mt_calib_stats cs;
    assert_int_equal(mt_calib_layer(m, 1, ids, 2048, 256, 1, 100000, &cs), MT_OK);
    uint64_t tot = 0;
    for (int e = 0; e < cs.n_exp; e++) tot += cs.count[e];
    assert_int_equal(tot, 2048 * 2); /* top-2: every token feeds two experts */
    assert_int_equal(cs.n_tokens, 2048);
    const mt_layer_weights *L = &mt_model_weights(m)->layers[1];
    const mt_mat *mats[3] = {&L->w1[0], &L->w2[0], &L->wq};
    const double *hs[3] = {cs.h_in[0], cs.h_mid[0], cs.h_attn};
    const char *names[3] = {"expert 0 w1", "expert 0 w2", "q_proj"};
    for (int k = 0; k < 3; k++) {
        const mt_mat *M = mats[k];
        float *W = malloc((size_t)(M->rows * M->cols) * sizeof *W);
        for (int64_t r = 0; r < M->rows; r++)
            mt_row_to_f32(M->dtype, (const uint8_t *)M->data + r * M->row_stride, W + r * M->cols, M->cols);
        int bits[] = {4, 3, 2, MT_QUANT_TERNARY, MT_QUANT_TERNARY};
        int groups[] = {32, 128, 128, 0, 256};
        for (int i = 0; i < 5; i++) {
            mt_grid g;
            assert_int_equal(mt_grid_make(&g, bits[i], groups[i], M->cols, "test"), MT_OK);
            double er = run(W, M->rows, M->cols, hs[k], &g, 0, 128, 0, NULL);
            double eg = run(W, M->rows, M->cols, hs[k], &g, 1, 128, 0, NULL);
            char nm[48];
            mt_grid_name(&g, nm, sizeof nm);
            printf("layer 1 %-12s %-20s: RTN %.6g  GPTQ %.6g  (%.1f%%)\n", names[k], nm, er, eg, 100 * eg / er);
            assert_true(eg <= er);
        }
        free(W);
    }
    mt_calib_stats_free(&cs);
    free(ids);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chol_inv),
        cmocka_unit_test(test_blocked_equals_naive),
        cmocka_unit_test(test_gptq_beats_rtn_random),
        cmocka_unit_test(test_gptq_beats_rtn_real),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
