/* test_qmoe_range.c — a GPTQ ternary range per expert matrix under a bit
 * budget (lib/quant/qmoe_range.c), against independent checks:
 *   - the choice: never over the budget; fewest bits (and MT_ERR_ARG) when
 *     even those do not fit; each matrix at its least error when the budget
 *     holds everything; the heavier of two equal matrices gets the bits;
 *     on random convex instances within one move of the exhaustive optimum;
 *   - the measurement: each candidate's coded size and symbol counts equal
 *     a separate GPTQ at that range coded with the same dictionary, and its
 *     layer-output error equals tr(D H Dᵀ)/tr(W H Wᵀ) computed from H;
 *     wider ranges give more zeros and fewer bits. */
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

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static double rnd_unit(void) { /* [0, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
static double rnd_gauss(void) {
    double u = rnd_unit() + 1e-12, v = rnd_unit();
    return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}

/* A probe whose bits fall and error rises with the candidate, convex. */
static void make_probe(mt_qmoe_range_probe *p, double b0, double e0) {
    double b = b0, e = e0, db = b0 * (0.05 + 0.05 * rnd_unit()), de = e0 * (0.05 + 0.2 * rnd_unit());
    for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) {
        p->bits[c] = floor(b);
        p->err[c] = e;
        b -= db;
        e += de;
        db *= 0.8; /* convex: each saved bit costs more error than the last */
        de *= 1.3;
    }
}

static double weighted(const mt_qmoe_range_probe *p, const double *w, const int *ch, int n, double *bits) {
    double e = 0, b = 0;
    for (int i = 0; i < n; i++) {
        e += w[i] * p[i].err[ch[i]];
        b += p[i].bits[ch[i]];
    }
    if (bits) *bits = b;
    return e;
}

/* One range for the layer: on random probes (bits need not fall with the
 * candidate), the choice is the first candidate whose summed bits fit the
 * budget, every matrix gets it, and no earlier candidate fits; with no
 * candidate fitting, the one with the fewest summed bits and MT_ERR_ARG. */
static void test_choose_uniform(void **st) {
    (void)st;
    enum { N = 9 };
    mt_qmoe_range_probe pr[N];
    int choice[N];
    for (int trial = 0; trial < 200; trial++) {
        double sum[MT_QMOE_RANGE_NCAND] = {0};
        for (int i = 0; i < N; i++) {
            make_probe(&pr[i], 1000 + 4000 * rnd_unit(), 0.01 + 0.05 * rnd_unit());
            if (trial % 3 == 0) /* not monotone */
                for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) pr[i].bits[c] = floor(500 + 4000 * rnd_unit());
            for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) sum[c] += pr[i].bits[c];
        }
        double lo = sum[0], hi = sum[0];
        for (int c = 1; c < MT_QMOE_RANGE_NCAND; c++) {
            lo = fmin(lo, sum[c]);
            hi = fmax(hi, sum[c]);
        }
        const double budget = lo * 0.9 + (hi * 1.05 - lo * 0.9) * rnd_unit();
        double used = -1;
        const int rc = mt_qmoe_range_choose_uniform(pr, N, budget, choice, &used);
        for (int i = 1; i < N; i++) assert_int_equal(choice[i], choice[0]);
        const int c = choice[0];
        assert_true(used == sum[c]);
        int first = -1;
        for (int k = 0; k < MT_QMOE_RANGE_NCAND && first < 0; k++)
            if (sum[k] <= budget) first = k;
        if (first >= 0) {
            assert_int_equal(rc, MT_OK);
            assert_int_equal(c, first);
            assert_true(used <= budget);
        } else {
            assert_int_equal(rc, MT_ERR_ARG);
            assert_true(sum[c] == lo);
        }
    }
}

static void test_choose(void **st) {
    (void)st;
    enum { N = 4 };
    mt_qmoe_range_probe p[N];
    double w[N];
    int ch[N];
    double used;
    /* infeasible: the fewest bits everywhere, MT_ERR_ARG */
    for (int i = 0; i < N; i++) {
        make_probe(&p[i], 1000, 1);
        w[i] = 1;
    }
    double fewest = 0, most = 0;
    for (int i = 0; i < N; i++) {
        fewest += p[i].bits[MT_QMOE_RANGE_NCAND - 1];
        most += p[i].bits[0];
    }
    assert_int_equal(mt_qmoe_range_choose(p, w, N, fewest - 1, ch, &used), MT_ERR_ARG);
    for (int i = 0; i < N; i++) assert_int_equal(ch[i], MT_QMOE_RANGE_NCAND - 1);
    assert_true(used == fewest);
    /* ample: every matrix at its least error */
    assert_int_equal(mt_qmoe_range_choose(p, w, N, most, ch, &used), MT_OK);
    for (int i = 0; i < N; i++) assert_int_equal(ch[i], 0);
    /* two equal matrices, room for one step: the heavier one takes it */
    make_probe(&p[0], 1000, 1);
    p[1] = p[0];
    w[0] = 1;
    w[1] = 10;
    const double room = p[0].bits[MT_QMOE_RANGE_NCAND - 1] * 2 + (p[0].bits[MT_QMOE_RANGE_NCAND - 2] -
                                                                   p[0].bits[MT_QMOE_RANGE_NCAND - 1]);
    assert_int_equal(mt_qmoe_range_choose(p, w, 2, room, ch, &used), MT_OK);
    assert_int_equal(ch[0], MT_QMOE_RANGE_NCAND - 1);
    assert_int_equal(ch[1], MT_QMOE_RANGE_NCAND - 2);
    /* random convex instances against the exhaustive optimum */
    for (int trial = 0; trial < 40; trial++) {
        double maxstep = 0;
        for (int i = 0; i < N; i++) {
            make_probe(&p[i], 500 + 2000 * rnd_unit(), 0.01 + rnd_unit());
            w[i] = 1 + 20 * rnd_unit();
            for (int c = 0; c + 1 < MT_QMOE_RANGE_NCAND; c++) {
                const double s = w[i] * (p[i].err[c + 1] - p[i].err[c]);
                if (s > maxstep) maxstep = s;
            }
        }
        double lo = 0, hi = 0;
        for (int i = 0; i < N; i++) {
            lo += p[i].bits[MT_QMOE_RANGE_NCAND - 1];
            hi += p[i].bits[0];
        }
        const double budget = lo + (hi - lo) * rnd_unit();
        assert_int_equal(mt_qmoe_range_choose(p, w, N, budget, ch, &used), MT_OK);
        double b;
        const double eg = weighted(p, w, ch, N, &b);
        assert_true(b <= budget);
        assert_true(fabs(b - used) < 1e-9);
        double best = HUGE_VAL;
        int c[N];
        for (int k = 0; k < 2401; k++) { /* 7^4 */
            int r = k;
            for (int i = 0; i < N; i++, r /= MT_QMOE_RANGE_NCAND) c[i] = r % MT_QMOE_RANGE_NCAND;
            double bb;
            const double e = weighted(p, w, c, N, &bb);
            if (bb <= budget && e < best) best = e;
        }
        assert_true(eg >= best - 1e-12);
        assert_true(eg <= best + maxstep + 1e-12);
    }
}

/* One layer-like matrix with a Hessian from random correlated rows. */
static void test_measure(void **st) {
    (void)st;
    const int64_t rows = 48, cols = 256, n = 600;
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    for (int64_t i = 0; i < rows * cols; i++) W[i] = (float)(0.05 * rnd_gauss());
    mt_mat src;
    memset(&src, 0, sizeof src);
    src.dtype = MT_DT_F32;
    src.rows = rows;
    src.cols = cols;
    src.data = W;
    src.row_stride = (uint64_t)cols * sizeof(float);
    mt_calib_rows x;
    mt_calib_rows_init(&x, cols);
    float *xr = malloc((size_t)cols * sizeof *xr), *z = malloc((size_t)cols * sizeof *z);
    for (int64_t s = 0; s < n; s++) {
        for (int64_t j = 0; j < cols; j++) z[j] = (float)(rnd_gauss() * (j % 11 == 0 ? 3.0 : 1.0));
        for (int64_t j = 0; j < cols; j++) xr[j] = z[j] + 0.5f * z[(j + 1) % cols];
        assert_int_equal(mt_calib_rows_add(&x, xr, 1), MT_OK);
    }
    double *H = malloc((size_t)(cols * cols) * sizeof *H), *Hc = malloc((size_t)(cols * cols) * sizeof *Hc);
    assert_int_equal(mt_calib_hessian(&x, H), MT_OK);
    mt_grid g;
    assert_int_equal(mt_grid_make(&g, MT_QUANT_TERNARY, MT_QUANT_GROUP_ROW, cols, "test"), MT_OK);
    const uint64_t prior[3] = {800, 100, 100};
    mt_qmoe_dict dict;
    assert_int_equal(mt_qmoe_dict_build(&dict, prior, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN), MT_OK);
    const mt_gptq_params gp = {0.1, 128, 1, 0, MT_QMOE_SCALES_U8LOG};
    mt_qmoe_range_probe pr;
    memset(&pr, 0, sizeof pr);
    assert_int_equal(mt_qmoe_range_measure(&src, W, H, &x, &g, &gp, &dict, &pr), MT_OK);
    float *Wq = malloc((size_t)(rows * cols) * sizeof *Wq), *zero = calloc((size_t)(rows * cols), sizeof *zero);
    float *a = malloc((size_t)rows * sizeof *a), *b = malloc((size_t)rows * sizeof *b);
    int8_t *codes = malloc((size_t)(rows * cols));
    const double ref = mt_gptq_output_err(W, zero, rows, cols, H);
    for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) {
        mt_gptq_params p = gp;
        p.ternary_range = mt_qmoe_range_cands[c];
        memcpy(Wq, W, (size_t)(rows * cols) * sizeof *Wq);
        memcpy(Hc, H, (size_t)(cols * cols) * sizeof *Hc);
        assert_int_equal(mt_gptq_quantize(Wq, rows, cols, Hc, &g, &p, codes, a, b), MT_OK);
        uint64_t cnt[3] = {0, 0, 0};
        assert_int_equal(mt_qmoe_count(cnt, codes, rows * cols), MT_OK);
        assert_memory_equal(cnt, pr.counts[c], sizeof cnt);
        mt_qmoe_mat cm;
        assert_int_equal(mt_qmoe_encode(&cm, &dict, codes, a, b, rows, cols), MT_OK);
        assert_int_equal(mt_qmoe_mat_set_scale8(&cm), MT_OK);
        mt_qmoe_size sz;
        mt_qmoe_mat_size(&cm, &sz);
        mt_qmoe_mat_free(&cm);
        assert_true(pr.bits[c] == (double)sz.total_bits);
        const double e = mt_gptq_output_err(W, Wq, rows, cols, H) / ref;
        assert_true(fabs(pr.err[c] - e) <= 1e-3 * e);
        printf("range %.1f: zeros %.4f, %.4f bits/weight, rel err %.5f\n", mt_qmoe_range_cands[c],
               (double)cnt[0] / (double)(rows * cols), pr.bits[c] / (double)(rows * cols), pr.err[c]);
        if (c) {
            assert_true(pr.counts[c][0] > pr.counts[c - 1][0]);
            assert_true(pr.bits[c] < pr.bits[c - 1]);
        }
    }
    /* RTN (no Hessian): one result for every range */
    assert_int_equal(mt_qmoe_range_measure(&src, W, NULL, NULL, &g, &gp, &dict, &pr), MT_OK);
    for (int c = 1; c < MT_QMOE_RANGE_NCAND; c++) {
        assert_true(pr.bits[c] == pr.bits[0]);
        assert_memory_equal(pr.counts[c], pr.counts[0], sizeof pr.counts[0]);
    }
    mt_qmoe_dict_free(&dict);
    mt_calib_rows_free(&x);
    free(W);
    free(Wq);
    free(zero);
    free(a);
    free(b);
    free(codes);
    free(H);
    free(Hc);
    free(xr);
    free(z);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_choose),
        cmocka_unit_test(test_choose_uniform),
        cmocka_unit_test(test_measure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
