/* test_imatrix.c — llama.cpp's importance matrix (lib/quant/imatrix.c)
 * against an independent path: GPTQ's calibration capture (calib.c, itself
 * checked against PyTorch) gives each matrix's Hessian H = Σ x xᵀ over the
 * same tokens (routed experts: their routed rows); the imatrix must be
 * diag(H) / rows for every matrix of a layer (attention q/k/v and o, each
 * expert's gate/up and down), within TOL_REL (f32 products summed in f64 on
 * both sides, in different orders). The .dat file written and read back
 * gives the same values bit for bit; wrong files are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lib/quant/quant_impl.h"
#include "testutil.h"

#define TOL_REL 1e-4
#define N_TOK 1024
#define WIN 256

static void expect_diag(const float *v, const double *H, int64_t n, uint64_t rows, const char *what) {
    assert_non_null(v);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        const double ref = H[i * n + i] / (double)rows;
        const double d = fabs((double)v[i] - ref) / (ref > 1e-12 ? ref : 1e-12);
        if (d > worst) worst = d;
    }
    printf("%-24s max rel diff %.2e\n", what, worst);
    assert_true(worst < TOL_REL);
}

static void test_imatrix_vs_hessians(void **st) {
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
    assert_int_equal(mt_calib_tokens(m, tu_model_path("data/train.txt"), N_TOK, &ids, &n), MT_OK);
    mt_imatrix im;
    assert_int_equal(mt_imatrix_compute(&im, m, ids, N_TOK, WIN), MT_OK);
    assert_int_equal(im.chunks, N_TOK / WIN);
    const int layer = 1;
    mt_calib_stats cs;
    assert_int_equal(mt_calib_layer(m, layer, ids, N_TOK, WIN, 1, 1u << 30, &cs), MT_OK);
    expect_diag(mt_imatrix_get(&im, layer, K_Q, 0), cs.h_attn, cs.hidden, cs.n_tokens, "attn_q");
    expect_diag(mt_imatrix_get(&im, layer, K_V, 0), cs.h_attn, cs.hidden, cs.n_tokens, "attn_v");
    expect_diag(mt_imatrix_get(&im, layer, K_O, 0), cs.h_attn_out, cs.q_dim, cs.n_tokens, "attn_output");
    for (int e = 0; e < cs.n_exp; e++) {
        char w[48];
        snprintf(w, sizeof w, "expert %d gate/up", e);
        expect_diag(mt_imatrix_get(&im, layer, K_W1, e), cs.h_in[e], cs.hidden, cs.count[e], w);
        expect_diag(mt_imatrix_get(&im, layer, K_W3, e), cs.h_in[e], cs.hidden, cs.count[e], w);
        snprintf(w, sizeof w, "expert %d down", e);
        expect_diag(mt_imatrix_get(&im, layer, K_W2, e), cs.h_mid[e], cs.ffn, cs.count[e], w);
    }
    assert_null(mt_imatrix_get(&im, layer, K_W1, cs.n_exp));
    assert_string_equal(im.e[layer * K_COUNT + K_W2].name, "blk.1.ffn_down_exps.weight");
    mt_calib_stats_free(&cs);

    /* the file: written, read back, the same values */
    char path[4096];
    snprintf(path, sizeof path, "%s/test_imatrix.%d.dat", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    assert_int_equal(mt_imatrix_write(&im, path, "train.txt"), MT_OK);
    mt_imatrix rd;
    assert_int_equal(mt_imatrix_read(&rd, m, path), MT_OK);
    assert_int_equal(rd.chunks, im.chunks);
    for (int i = 0; i < im.n; i++) {
        const mt_imatrix_entry *a = &im.e[i], *b = &rd.e[i];
        assert_int_equal(a->values != NULL, b->values != NULL);
        if (a->values) assert_memory_equal(a->values, b->values, (size_t)(a->n_mat * a->cols) * sizeof(float));
    }
    mt_imatrix_free(&rd);
    /* a value that is not finite, then a file cut short: refused, naming the file */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    const int32_t len = (int32_t)strlen(im.e[0].name);
    const float nan_v = NAN;
    fseek(f, 4 + 4 + len + 8, SEEK_SET);
    fwrite(&nan_v, 4, 1, f);
    fclose(f);
    assert_int_equal(mt_imatrix_read(&rd, m, path), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), "blk.0.attn_q.weight"));
    assert_int_equal(truncate(path, 100), 0);
    assert_int_equal(mt_imatrix_read(&rd, m, path), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), path));
    /* a header claiming 2^30 values, for a tensor the model has and for one
     * it lacks: refused from the bytes left, before anything is allocated */
    const char *names[2] = {"blk.0.attn_q.weight", "blk.99.attn_q.weight"};
    for (int k = 0; k < 2; k++) {
        f = fopen(path, "wb");
        assert_non_null(f);
        const int32_t hdr[1] = {1}, nl = (int32_t)strlen(names[k]), cv[2] = {1, 1 << 30};
        const float few[2] = {1, 2};
        fwrite(hdr, 4, 1, f);
        fwrite(&nl, 4, 1, f);
        fwrite(names[k], 1, (size_t)nl, f);
        fwrite(cv, 4, 2, f);
        fwrite(few, 4, 2, f);
        fclose(f);
        assert_int_equal(mt_imatrix_read(&rd, m, path), MT_ERR_FORMAT);
        assert_non_null(strstr(mt_last_error(), "bytes left"));
        assert_non_null(strstr(mt_last_error(), names[k]));
    }
    remove(path);
    mt_imatrix_free(&im);
    free(ids);
    mt_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_imatrix_vs_hessians),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
