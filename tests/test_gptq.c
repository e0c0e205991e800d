/* test_gptq.c — the GPTQ solver against independent checks:
 *   - the Cholesky factor of the damped inverse: Uᵀ U H = I (within 1e-9);
 *   - the blocked solver with lazy updates equals a column-by-column f64
 *     reference (same codes up to rare rounding ties, TOL_SAME_CODES; the
 *     same layer-output error within TOL_ERR_REL);
 *   - llama.cpp's K-quant and legacy blocks as GPTQ grids (test_block_grids);
 *   - the layer-output error ‖(W−Ŵ)X‖² of GPTQ is at most RTN's, on random
 *     layers with correlated inputs (every grid) and on real layers of the
 *     bundled model with Hessians from routed calibration tokens;
 *   - the asymmetric int grid: fitted as specified (min/max widened to 0,
 *     f16 scale, integer zero), every dequantized value on the grid, lower
 *     rounding error than the symmetric grid on skewed groups, GPTQ on it
 *     at most RTN on it, and refused for the file-type and ternary grids. */
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
#include "moetool/mt_qmoe.h"
#include "testutil.h"

#define TOL_SAME_CODES 0.99 /* fraction of equal codes, blocked vs naive */
#define TOL_ERR_REL 0.02    /* relative difference of output errors      */
#define TOL_SAME_BLOCK_CODES 0.95 /* the same for grids fitted per 256-block */

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
    int64_t ng = cols / g->group * mt_grid_nparam(g);
    float *a = malloc((size_t)(rows * ng) * sizeof *a), *b = malloc((size_t)(rows * ng) * sizeof *b);
    double *H = NULL;
    if (gptq && !naive) {
        H = malloc((size_t)(cols * cols) * sizeof *H);
        memcpy(H, H0, (size_t)(cols * cols) * sizeof *H);
    }
    mt_gptq_params p = {0.1, block, 0, 0, 0};
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
    struct { int bits, group, block, asym; } cases[] = {{4, 32, 128, 0}, {3, 64, 64, 0}, {2, 128, 32, 0},
                                                        {MT_QUANT_TERNARY, 0, 128, 0}, {8, 32, 128, 0},
                                                        {3, 64, 64, 1}, {2, 128, 32, 1}};
    int8_t *c1 = malloc((size_t)(rows * cols)), *c2 = malloc((size_t)(rows * cols));
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mt_grid g;
        assert_int_equal(mt_grid_make(&g, cases[k].bits, cases[k].group, cols, "test"), MT_OK);
        if (cases[k].asym) assert_int_equal(mt_grid_asym(&g, "test"), MT_OK);
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
    struct { int bits, group, asym; } cases[] = {{8, 32, 0}, {4, 32, 0}, {4, 128, 0}, {3, 128, 0}, {2, 128, 0},
                                                 {MT_QUANT_TERNARY, 0, 0}, {MT_QUANT_TERNARY, 256, 0}, {4, 128, 1},
                                                 {3, 128, 1}, {2, 128, 1}, {2, 0, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mt_grid g;
        assert_int_equal(mt_grid_make(&g, cases[k].bits, cases[k].group, cols, "test"), MT_OK);
        if (cases[k].asym) assert_int_equal(mt_grid_asym(&g, "test"), MT_OK);
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
    mt_gptq_params p = {0.1, 128, 1, 0, 0};
    assert_int_equal(mt_gptq_quantize(Wq, rows, cols, Hc, &g, &p, codes, a, b), MT_OK);
    double eact = mt_gptq_output_err(W, Wq, rows, cols, H), er = run(W, rows, cols, H, &g, 0, 128, 0, NULL);
    printf("act-order int3 g128: %.6g (RTN %.6g)\n", eact, er);
    assert_true(eact <= er);
    /* Ŵ holds exactly the codes' values. */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            float dq;
            mt_grid_quant(&g, &a[r * 4 + j / 128], &b[r * 4 + j / 128], (int)(j % 128), Wq[r * cols + j], &dq);
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

static double run_range(const float *W, int64_t rows, int64_t cols, const double *H0, double range, double *zeros,
                        int8_t *codes, float *Wq);

/* llama.cpp's K-quant and legacy blocks as GPTQ grids (MT_GRID_BLOCK): per
 * type, on a random layer with correlated inputs,
 *   - GPTQ's output error is below RTN's, the blocked solver matches the
 *     column-by-column reference (TOL_SAME_CODES, TOL_ERR_REL);
 *   - the packed rows decode (the table's to_f32) to exactly Ŵ, for GPTQ
 *     and for RTN;
 *   - RTN on the grid gives the values of the table's from_f32 (llama.cpp's
 *     reference quantizer) for the K-quants, and no larger error for the
 *     legacy types (which llama.cpp rounds with the unrounded scale). */
static void test_block_grids(void **st) {
    (void)st;
    const int64_t rows = 16, cols = 512;
    double *H = make_h(cols, 1500);
    float *W = make_w(rows, cols);
    const mt_dtype types[] = {MT_DT_Q2_K, MT_DT_Q3_K, MT_DT_Q4_K, MT_DT_Q5_K, MT_DT_Q6_K,
                              MT_DT_Q4_1, MT_DT_Q5_0, MT_DT_Q5_1};
    float *Wq = malloc((size_t)(rows * cols) * sizeof *Wq), *y = malloc((size_t)cols * sizeof *y);
    float *ref = malloc((size_t)(rows * cols) * sizeof *ref);
    int8_t *codes = malloc((size_t)(rows * cols)), *c2 = malloc((size_t)(rows * cols));
    uint8_t *row = malloc(4096);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        mt_grid g;
        assert_int_equal(mt_grid_make_type(&g, types[k], cols, "test"), MT_OK);
        assert_int_equal(g.kind, MT_GRID_BLOCK);
        assert_int_equal(mt_grid_dtype(&g), types[k]);
        const int64_t ng = cols / g.group * mt_grid_nparam(&g);
        float *a = malloc((size_t)(rows * ng) * sizeof *a), *b = malloc((size_t)(rows * ng) * sizeof *b);
        double e[2];
        for (int gptq = 0; gptq < 2; gptq++) {
            memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
            double *Hc = NULL;
            if (gptq) {
                Hc = malloc((size_t)(cols * cols) * sizeof *Hc);
                memcpy(Hc, H, (size_t)(cols * cols) * sizeof *Hc);
            }
            mt_gptq_params p = {0.1, 128, 0, 0, 0};
            assert_int_equal(mt_gptq_quantize(Wq, rows, cols, Hc, &g, &p, codes, a, b), MT_OK);
            free(Hc);
            e[gptq] = mt_gptq_output_err(W, Wq, rows, cols, H);
            for (int64_t r = 0; r < rows; r++) {
                mt_grid_pack_row(&g, codes + r * cols, a + r * ng, cols, row);
                assert_int_equal(mt_row_to_f32(types[k], row, y, cols), MT_OK);
                assert_memory_equal(y, Wq + r * cols, (size_t)cols * sizeof *y);
                if (!gptq) { /* the reference quantizer on the same row */
                    assert_int_equal(mt_row_from_f32(types[k], W + r * cols, row, cols), MT_OK);
                    assert_int_equal(mt_row_to_f32(types[k], row, ref + r * cols, cols), MT_OK);
                }
            }
            if (!gptq) {
                double er = 0, eq = 0;
                for (int64_t i = 0; i < rows * cols; i++) {
                    er += ((double)ref[i] - W[i]) * ((double)ref[i] - W[i]);
                    eq += ((double)Wq[i] - W[i]) * ((double)Wq[i] - W[i]);
                }
                if (mt_dtype_get(types[k])->block_elems == MT_QK_K)
                    assert_memory_equal(ref, Wq, (size_t)(rows * cols) * sizeof *Wq);
                else
                    assert_true(eq <= er);
            }
        }
        double en = run(W, rows, cols, H, &g, 1, 128, 1, c2);
        int64_t same = 0;
        for (int64_t i = 0; i < rows * cols; i++) same += codes[i] == c2[i];
        printf("%-5s: RTN %.6g  GPTQ %.6g (%.1f%%), naive GPTQ %.6g, codes equal %.4f\n", mt_dtype_name(types[k]), e[0],
               e[1], 100 * e[1] / e[0], en, (double)same / (double)(rows * cols));
        assert_true(e[1] < e[0]);
        assert_true(fabs(e[1] - en) <= TOL_ERR_REL * en);
        /* a rounding difference that moves one block's fit moves its whole
         * block of codes (256 of the 8192 here): TOL_SAME_BLOCK_CODES */
        assert_true((double)same / (double)(rows * cols) >= TOL_SAME_BLOCK_CODES);
        free(a);
        free(b);
    }
    mt_grid g;
    assert_int_equal(mt_grid_make_type(&g, MT_DT_Q4_K, 128, "test"), MT_ERR_ARG);  /* not whole 256-blocks */
    assert_int_equal(mt_grid_make_type(&g, MT_DT_Q8_K, 256, "test"), MT_ERR_ARG); /* no writer */
    assert_int_equal(mt_grid_make_type(&g, MT_DT_IQ2_XS, 256, "test"), MT_OK);    /* weighted row writer */
    assert_int_equal(g.kind, MT_GRID_ROW);
    assert_int_equal(mt_grid_make_type(&g, MT_DT_Q4_K, 256, "test"), MT_OK);
    assert_int_equal(mt_grid_asym(&g, "test"), MT_ERR_ARG);
    free(Wq);
    free(y);
    free(ref);
    free(codes);
    free(c2);
    free(row);
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
        int bits[] = {4, 3, 2, MT_QUANT_TERNARY, MT_QUANT_TERNARY, 4, 3, 2};
        int groups[] = {32, 128, 128, 0, 256, 128, 128, 128};
        int asym[] = {0, 0, 0, 0, 0, 1, 1, 1};
        for (int i = 0; i < 8; i++) {
            mt_grid g;
            assert_int_equal(mt_grid_make(&g, bits[i], groups[i], M->cols, "test"), MT_OK);
            if (asym[i]) assert_int_equal(mt_grid_asym(&g, "test"), MT_OK);
            double er = run(W, M->rows, M->cols, hs[k], &g, 0, 128, 0, NULL);
            double eg = run(W, M->rows, M->cols, hs[k], &g, 1, 128, 0, NULL);
            char nm[48];
            mt_grid_name(&g, nm, sizeof nm);
            printf("layer 1 %-12s %-20s: RTN %.6g  GPTQ %.6g  (%.1f%%)\n", names[k], nm, er, eg, 100 * eg / er);
            assert_true(eg <= er);
        }
        if (k < 2) {
            /* the qmoe default of ternary_range: still below RTN's error */
            mt_grid g;
            mt_grid_make(&g, MT_QUANT_TERNARY, MT_QUANT_GROUP_ROW, M->cols, "test");
            const size_t nw = (size_t)(M->rows * M->cols);
            int8_t *codes = malloc(nw);
            float *Wq = malloc(nw * sizeof *Wq);
            double z1, zr;
            const double er = run(W, M->rows, M->cols, hs[k], &g, 0, 128, 0, NULL);
            const double e1 = run_range(W, M->rows, M->cols, hs[k], 1.0, &z1, codes, Wq);
            const double e = run_range(W, M->rows, M->cols, hs[k], MT_QUANT_TERNARY_RANGE_QMOE, &zr, codes, Wq);
            printf("layer 1 %-12s ternary row: RTN %.6g  GPTQ %.6g (zeros %.4f)  range %.2f %.6g (%.1f%%, zeros %.4f)\n",
                   names[k], er, e1, z1, MT_QUANT_TERNARY_RANGE_QMOE, e, 100 * e / er, zr);
            assert_true(e < er);
            assert_true(zr > z1);
            free(codes);
            free(Wq);
        }
        free(W);
    }
    mt_calib_stats_free(&cs);
    free(ids);
    mt_model_free(m);
}

/* GPTQ on the per-row ternary grid with levels range·(min, max): returns
 * ‖(W−Ŵ)X‖² and the fraction of zero codes; checks that Ŵ holds exactly
 * the codes' values and that the row levels are f16(range·f16(min/max)). */
static double run_range(const float *W, int64_t rows, int64_t cols, const double *H0, double range, double *zeros,
                        int8_t *codes, float *Wq) {
    mt_grid g;
    assert_int_equal(mt_grid_make(&g, MT_QUANT_TERNARY, MT_QUANT_GROUP_ROW, cols, "test"), MT_OK);
    memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
    float *a = malloc((size_t)rows * sizeof *a), *b = malloc((size_t)rows * sizeof *b);
    double *H = malloc((size_t)(cols * cols) * sizeof *H);
    memcpy(H, H0, (size_t)(cols * cols) * sizeof *H);
    mt_gptq_params p = {0.1, 128, 0, range, 0};
    assert_int_equal(mt_gptq_quantize(Wq, rows, cols, H, &g, &p, codes, a, b), MT_OK);
    int64_t nz = 0;
    const double rr = range > 0 ? range : 1.0;
    for (int64_t r = 0; r < rows; r++) {
        float mn = 0, mx = 0;
        for (int64_t j = 0; j < cols; j++) {
            mn = W[r * cols + j] < mn ? W[r * cols + j] : mn;
            mx = W[r * cols + j] > mx ? W[r * cols + j] : mx;
        }
        const float lo = mt_f16_to_f32(mt_f32_to_f16(mn)), hi = mt_f16_to_f32(mt_f32_to_f16(mx));
        assert_true(a[r] == mt_f16_to_f32(mt_f32_to_f16((float)(rr * lo))));
        assert_true(b[r] == mt_f16_to_f32(mt_f32_to_f16((float)(rr * hi))));
        for (int64_t j = 0; j < cols; j++) {
            const int8_t c = codes[r * cols + j];
            nz += c == 0;
            assert_true(Wq[r * cols + j] == (c == 0 ? 0.0f : c > 0 ? b[r] : a[r]));
        }
    }
    *zeros = (double)nz / (double)(rows * cols);
    double e = mt_gptq_output_err(W, Wq, rows, cols, H0);
    free(a);
    free(b);
    free(H);
    return e;
}

/* ternary_range: 0 and 1 are plain GPTQ (bit-identical to each other, and
 * equal to the f64 reference up to rounding ties); wider
 * ranges give strictly more zeros; the qmoe default stays below RTN's
 * layer-output error. */
static void test_ternary_range(void **st) {
    (void)st;
    const int64_t rows = 64, cols = 512;
    double *H = make_h(cols, 1500);
    /* Gaussian rows without make_w's 5x outliers: with those, a row's max is
     * an outlier, ~94 % of the weights are already 0 at range 1, and wider
     * ranges are not below RTN (the real layers below are checked too). */
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    for (int64_t i = 0; i < rows * cols; i++) W[i] = (float)(0.05 * rnd_gauss());
    const size_t n = (size_t)(rows * cols);
    int8_t *c0 = malloc(n), *c1 = malloc(n), *cr = malloc(n);
    float *W0 = malloc(n * sizeof *W0), *W1 = malloc(n * sizeof *W1), *Wr = malloc(n * sizeof *Wr);
    mt_grid g;
    assert_int_equal(mt_grid_make(&g, MT_QUANT_TERNARY, MT_QUANT_GROUP_ROW, cols, "test"), MT_OK);
    double z0, z1;
    run(W, rows, cols, H, &g, 1, 128, 0, c0); /* ternary_range 0 */
    const double e1 = run_range(W, rows, cols, H, 1.0, &z1, c1, W1);
    run_range(W, rows, cols, H, 0.0, &z0, cr, W0);
    assert_memory_equal(c0, c1, n);
    assert_memory_equal(c0, cr, n);
    assert_true(z0 == z1);
    run(W, rows, cols, H, &g, 1, 128, 1, cr); /* f64 column-by-column reference */
    int64_t same = 0;
    for (size_t i = 0; i < n; i++) same += c1[i] == cr[i];
    assert_true((double)same / (double)n >= TOL_SAME_CODES);
    const double er = run(W, rows, cols, H, &g, 0, 128, 0, NULL);
    printf("ternary row: RTN err %.6g; range 1: zeros %.4f err %.6g\n", er, z1, e1);
    const double ranges[] = {1.2, MT_QUANT_TERNARY_RANGE_QMOE, 1.7, 2.0};
    double zprev = z1;
    for (size_t k = 0; k < sizeof ranges / sizeof ranges[0]; k++) {
        double z;
        const double e = run_range(W, rows, cols, H, ranges[k], &z, cr, Wr);
        printf("ternary row: range %.2f: zeros %.4f err %.6g (%.1f%% of RTN)\n", ranges[k], z, e, 100 * e / er);
        assert_true(z > zprev);
        zprev = z;
        if (ranges[k] == MT_QUANT_TERNARY_RANGE_QMOE) assert_true(e < er);
    }
    free(c0);
    free(c1);
    free(cr);
    free(W0);
    free(W1);
    free(Wr);
    free(H);
    free(W);
}

/* Checks an asymmetric-grid result against the grid's definition: per
 * group, b an integer zero in [0, 2^bits-1] and a > 0 an f16 value; every
 * Ŵ = a·(q − b) for an integer q in [0, 2^bits-1] with code q − 2^(bits-1).
 * fitted >= 1: (a, b) are the fit of the original group (min/max widened
 * to 0, (−1, 1) if all zero; a = f16((max − min)/(2^bits−1)), b = round(−min/a)); fitted 2
 * (RTN): also each Ŵ within a/2 of W (plus the f16 rounding of a at the
 * top of the range), and W = 0 kept exactly. */
static void check_asym(const float *W, const float *Wq, int64_t rows, int64_t cols, const mt_grid *g,
                       const int8_t *codes, const float *a, const float *b, int fitted) {
    const int maxq = (1 << g->bits) - 1;
    const int64_t ng = cols / g->group;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < ng; k++) {
            const float s = a[r * ng + k], z = b[r * ng + k];
            assert_true(s > 0 && mt_f16_to_f32(mt_f32_to_f16(s)) == s);
            assert_true(z == floorf(z) && z >= 0 && z <= (float)maxq);
            double lo = 0, hi = 0;
            for (int64_t j = k * g->group; j < (k + 1) * g->group; j++) {
                const double w = W[r * cols + j];
                lo = w < lo ? w : lo;
                hi = w > hi ? w : hi;
            }
            if (hi == lo) { /* an all-zero group: GPTQ's reference takes (−1, 1) */
                lo = -1;
                hi = 1;
            }
            if (fitted) {
                const float se = mt_f16_to_f32(mt_f32_to_f16((float)((hi - lo) / maxq)));
                assert_true(s == se);
                double ze = nearbyint(-lo / se);
                ze = ze < 0 ? 0 : ze > maxq ? maxq : ze;
                assert_true(fabs((double)z - ze) <= (fabs(-lo / se - nearbyint(-lo / se)) > 0.4999 ? 1 : 0));
            }
            for (int64_t j = k * g->group; j < (k + 1) * g->group; j++) {
                const float v = Wq[r * cols + j];
                const long q = lround((double)v / s + z);
                assert_true(q >= 0 && q <= maxq);
                assert_true(v == s * ((float)q - z));
                assert_int_equal(codes[r * cols + j], q - (1 << (g->bits - 1)));
                if (fitted == 2) assert_true(fabs((double)W[r * cols + j] - v) <= 0.5 * s + (hi - lo) / 1024 + 1e-12);
                if (fitted == 2 && W[r * cols + j] == 0.0f) assert_true(v == 0.0f);
            }
        }
}

/* RTN on a copy of W; returns Σ (W − Ŵ)² and leaves Ŵ, codes, a, b. */
static double rtn_sq(const float *W, int64_t rows, int64_t cols, const mt_grid *g, float *Wq, int8_t *codes, float *a,
                     float *b) {
    memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
    mt_gptq_params p = {0.1, 128, 0, 0, 0};
    assert_int_equal(mt_gptq_quantize(Wq, rows, cols, NULL, g, &p, codes, a, b), MT_OK);
    double e = 0;
    for (int64_t i = 0; i < rows * cols; i++) e += ((double)W[i] - Wq[i]) * ((double)W[i] - Wq[i]);
    return e;
}

/* Skewed groups (all-positive rows, rows with a large mean, a few exact
 * zeros): the asymmetric grid rounds them with less error than the
 * symmetric one at every width, and its values are on its grid. */
static void test_asym_grid(void **st) {
    (void)st;
    const int64_t rows = 48, cols = 512;
    float *W = malloc((size_t)(rows * cols) * sizeof *W), *Wq = malloc((size_t)(rows * cols) * sizeof *Wq);
    int8_t *codes = malloc((size_t)(rows * cols));
    float *a = malloc((size_t)(rows * cols) * sizeof *a), *b = malloc((size_t)(rows * cols) * sizeof *b);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) {
            const double gs = rnd_gauss();
            float v = r % 3 == 0   ? (float)(0.01 + 0.05 * fabs(gs))      /* all positive   */
                      : r % 3 == 1 ? (float)(-0.04 + 0.015 * gs)          /* mean far below 0 */
                                   : (float)(0.05 * (rnd_unit() + 1.0)); /* uniform [0, 0.1] */
            W[r * cols + j] = j % 61 == 7 ? 0.0f : v;
        }
    struct { int bits, group; } cases[] = {{2, 128}, {3, 128}, {4, 128}, {8, 64}, {3, 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mt_grid gs, ga;
        assert_int_equal(mt_grid_make(&gs, cases[k].bits, cases[k].group, cols, "test"), MT_OK);
        ga = gs;
        assert_int_equal(gs.kind, MT_GRID_INT);
        assert_int_equal(mt_grid_asym(&ga, "test"), MT_OK);
        assert_int_equal(ga.kind, MT_GRID_INT_ASYM);
        assert_int_equal(mt_grid_dtype(&ga), -1);
        assert_true(mt_grid_bits(&ga, cols) == ga.bits + (16.0 + ga.bits) / ga.group);
        const double es = rtn_sq(W, rows, cols, &gs, Wq, codes, a, b);
        const double ea = rtn_sq(W, rows, cols, &ga, Wq, codes, a, b);
        check_asym(W, Wq, rows, cols, &ga, codes, a, b, 2);
        char nm[48];
        mt_grid_name(&ga, nm, sizeof nm);
        printf("skewed groups %-16s: RTN sq. error sym %.6g  asym %.6g  (%.1f%%)\n", nm, es, ea, 100 * ea / es);
        assert_true(ea < es);
    }
    /* An all-zero group: all codes the zero point, Ŵ = 0. */
    mt_grid g;
    mt_grid_make(&g, 3, 128, 128, "test");
    mt_grid_asym(&g, "test");
    memset(W, 0, 128 * sizeof *W);
    assert_true(rtn_sq(W, 1, 128, &g, Wq, codes, a, b) == 0.0);
    check_asym(W, Wq, 1, 128, &g, codes, a, b, 2);
    free(W);
    free(Wq);
    free(codes);
    free(a);
    free(b);
}

/* GPTQ on the asymmetric grid leaves Ŵ on the grid too (random layer). */
static void test_asym_gptq_on_grid(void **st) {
    (void)st;
    const int64_t rows = 32, cols = 256;
    double *H = make_h(cols, 800), *Hc = malloc((size_t)(cols * cols) * sizeof *Hc);
    float *W = make_w(rows, cols), *Wq = malloc((size_t)(rows * cols) * sizeof *Wq);
    for (int64_t i = 0; i < rows * cols; i++) W[i] += 0.03f; /* skewed */
    int8_t *codes = malloc((size_t)(rows * cols));
    float *a = malloc((size_t)(rows * cols) * sizeof *a), *b = malloc((size_t)(rows * cols) * sizeof *b);
    for (int act = 0; act < 2; act++) {
        mt_grid g;
        mt_grid_make(&g, 3, 64, cols, "test");
        assert_int_equal(mt_grid_asym(&g, "test"), MT_OK);
        memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
        memcpy(Hc, H, (size_t)(cols * cols) * sizeof *Hc);
        mt_gptq_params p = {0.1, 128, act, 0, 0};
        assert_int_equal(mt_gptq_quantize(Wq, rows, cols, Hc, &g, &p, codes, a, b), MT_OK);
        check_asym(W, Wq, rows, cols, &g, codes, a, b, act); /* act-order: scales from the original W */
        const double eg = mt_gptq_output_err(W, Wq, rows, cols, H), er = run(W, rows, cols, H, &g, 0, 128, 0, NULL);
        printf("int3 g64 asym%s: GPTQ %.6g  RTN %.6g\n", act ? " act-order" : "", eg, er);
        assert_true(eg <= er);
    }
    free(H);
    free(Hc);
    free(W);
    free(Wq);
    free(codes);
    free(a);
    free(b);
}

/* --asym is refused for the grids with a file type and for ternary (clear
 * message naming the grid), and accepted for the int grids in memory only. */
static void test_asym_check(void **st) {
    (void)st;
    mt_grid g;
    struct { int bits, group, ok; const char *name; } cases[] = {
        {8, 32, 0, "q8_0"}, {4, 32, 0, "q4_0"}, {MT_QUANT_TERNARY, 256, 0, "tq2_0"},
        {MT_QUANT_TERNARY, 0, 0, "ternary row"}, {8, 64, 1, "int8 g64 asym"}, {4, 128, 1, "int4 g128 asym"},
        {3, 128, 1, "int3 g128 asym"}, {2, 0, 1, "int2 g512 asym"}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        assert_int_equal(mt_grid_make(&g, cases[k].bits, cases[k].group, 512, "test"), MT_OK);
        const int rc = mt_grid_asym(&g, "test");
        char nm[48];
        mt_grid_name(&g, nm, sizeof nm);
        if (cases[k].ok) {
            assert_int_equal(rc, MT_OK);
            assert_string_equal(nm, cases[k].name);
        } else {
            assert_int_equal(rc, MT_ERR_ARG);
            assert_non_null(strstr(mt_last_error(), cases[k].name));
            assert_non_null(strstr(mt_last_error(), "--asym"));
        }
    }
    mt_model *m = NULL;
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    if (mt_model_load(&m, tu_model_dir(), &mo)) {
        printf("bundled model not loadable: %s\n", mt_last_error());
        skip();
    }
    const mt_config *c = mt_model_config(m);
    mt_quant_opts o;
    mt_quant_opts_default(&o);
    o.asym = 1;
    o.bits = 3;
    assert_int_equal(mt_quant_check(&o, c, 0), MT_OK);
    assert_int_equal(mt_quant_check(&o, c, 1), MT_ERR_ARG); /* no file type */
    assert_non_null(strstr(mt_last_error(), "int3 g128 asym"));
    o.attn_bits = 8;
    assert_int_equal(mt_quant_check(&o, c, 0), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "q8_0"));
    o.attn_bits = 3;
    assert_int_equal(mt_quant_check(&o, c, 0), MT_OK);
    o.attn_bits = 0;
    o.bits = 4;
    o.group = MT_QUANT_GROUP_DEFAULT;
    assert_int_equal(mt_quant_check(&o, c, 0), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "q4_0"));
    o.group = 128;
    assert_int_equal(mt_quant_check(&o, c, 0), MT_OK);
    o.bits = MT_QUANT_TERNARY;
    o.group = MT_QUANT_GROUP_ROW;
    assert_int_equal(mt_quant_check(&o, c, 0), MT_ERR_ARG);
    mt_model_free(m);
}

/* ternary_scales = MT_QMOE_SCALES_U8LOG: every row's levels are -s, +s with
 * s = f16(range·(f16(max) − f16(min))/2) rounded to the nearest value of the
 * 8-bit log code whose base is f16 of the largest such s (recomputed here
 * from W alone), under GPTQ (range 1; act-order at range 1.4) and under RTN
 * (H NULL: plain rounding at ±s/2); Ŵ holds exactly the codes' values; GPTQ
 * stays below RTN's layer-output error on the same grid. */
static void test_ternary_scale8(void **st) {
    (void)st;
    const int64_t rows = 48, cols = 256;
    double *H0 = make_h(cols, 1200);
    const size_t n = (size_t)(rows * cols);
    float *W = malloc(n * sizeof *W), *Wq = malloc(n * sizeof *Wq), *a = malloc((size_t)rows * sizeof *a),
          *b = malloc((size_t)rows * sizeof *b), *s = malloc((size_t)rows * sizeof *s);
    double *H = malloc((size_t)(cols * cols) * sizeof *H);
    int8_t *codes = malloc(n);
    for (size_t i = 0; i < n; i++) W[i] = (float)(0.05 * rnd_gauss() + (i % 7 == 0 ? 0.01 : 0.0));
    mt_grid g;
    assert_int_equal(mt_grid_make(&g, MT_QUANT_TERNARY, MT_QUANT_GROUP_ROW, cols, "test"), MT_OK);
    double err[3];
    for (int mode = 0; mode < 3; mode++) { /* GPTQ range 1, GPTQ act-order range 1.4, RTN */
        const double range = mode == 1 ? 1.4 : 1.0;
        float smax = 0;
        for (int64_t r = 0; r < rows; r++) {
            float mn = 0, mx = 0;
            for (int64_t j = 0; j < cols; j++) {
                mn = fminf(mn, W[r * cols + j]);
                mx = fmaxf(mx, W[r * cols + j]);
            }
            const float lo = mt_f16_to_f32(mt_f32_to_f16(mn)), hi = mt_f16_to_f32(mt_f32_to_f16(mx));
            s[r] = 0.5f * (hi - lo);
            if (range != 1.0) s[r] = mt_f16_to_f32(mt_f32_to_f16((float)(range * s[r])));
            smax = fmaxf(smax, s[r]);
        }
        const float base = mt_f16_to_f32(mt_f32_to_f16(smax));
        memcpy(Wq, W, n * sizeof *Wq);
        memcpy(H, H0, (size_t)(cols * cols) * sizeof *H);
        mt_gptq_params p = {0.1, 128, mode == 1, range, MT_QMOE_SCALES_U8LOG};
        assert_int_equal(mt_gptq_quantize(Wq, rows, cols, mode < 2 ? H : NULL, &g, &p, codes, a, b), MT_OK);
        for (int64_t r = 0; r < rows; r++) {
            const int k = mt_qmoe_scale8_code(base, s[r]);
            assert_true(b[r] == mt_qmoe_scale8_value(base, k));
            assert_true(a[r] == -b[r]);
            /* nearest on the code: no other code is closer */
            for (int k2 = 1; k2 < 256; k2++)
                assert_true(fabsf(mt_qmoe_scale8_value(base, k2) - s[r]) >= fabsf(b[r] - s[r]));
            for (int64_t j = 0; j < cols; j++) {
                const int8_t c = codes[r * cols + j];
                assert_true(Wq[r * cols + j] == (c == 0 ? 0.0f : c > 0 ? b[r] : a[r]));
                if (mode == 2) {
                    const float w = W[r * cols + j];
                    assert_int_equal(c, w > 0.5f * b[r] ? 1 : w < 0.5f * a[r] ? -1 : 0);
                }
            }
        }
        err[mode] = mt_gptq_output_err(W, Wq, rows, cols, H0);
    }
    printf("ternary u8log: RTN %.6g  GPTQ %.6g  (act-order, range 1.4: %.6g)\n", err[2], err[0], err[1]);
    assert_true(err[0] < err[2]);
    free(W);
    free(Wq);
    free(a);
    free(b);
    free(s);
    free(H);
    free(H0);
    free(codes);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chol_inv),
        cmocka_unit_test(test_blocked_equals_naive),
        cmocka_unit_test(test_gptq_beats_rtn_random),
        cmocka_unit_test(test_gptq_beats_rtn_real),
        cmocka_unit_test(test_ternary_range),
        cmocka_unit_test(test_ternary_scale8),
        cmocka_unit_test(test_asym_grid),
        cmocka_unit_test(test_asym_gptq_on_grid),
        cmocka_unit_test(test_asym_check),
        cmocka_unit_test(test_block_grids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
