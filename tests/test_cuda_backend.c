/* test_cuda_backend.c — every op of the CUDA backend against the CPU
 * backend (or the double-precision reference kernels) on random inputs,
 * as ggml's test-backend-ops does, then the bundled model end to end
 * (logits of a prefill and of decode steps, cpu vs cuda). Needs a build
 * with CUDA and a device: exits 77 (skipped) otherwise, with the reason on
 * stderr. Tolerances are relative to the size of the terms summed (float
 * accumulation in a different order), named where they are used. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels_impl.h"
#include "moetool/mt_codec.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_runtime.h"
#include "qmoe_kernel.h"
#include "testutil.h"

/* Relative error allowed on sums of float products (order differs). */
#define TOL_SUM 2e-5
/* Elementwise ops computed with the same formula. */
#define TOL_ELEM 1e-6

static mt_backend *g_cu, *g_cpu;
static uint64_t g_rng = 0x51ed2701a5c3f00dull;

static float *dev_from(const float *h, size_t n) {
    float *d = g_cu->ops->buf_alloc(g_cu, n * sizeof(float));
    assert_non_null(d);
    g_cu->ops->upload(g_cu, d, h, n * sizeof(float));
    return d;
}
static float *host_from(const float *d, size_t n) {
    float *h = malloc(n * sizeof(float) + 1);
    assert_non_null(h);
    g_cu->ops->download(g_cu, h, d, n * sizeof(float));
    assert_int_equal(g_cu->ops->status(g_cu), MT_OK);
    return h;
}
static float *rand_vec(size_t n) {
    float *v = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) v[i] = tu_rand_unit(&g_rng);
    return v;
}
/* max |a - b| / (scale + max |b|) must not pass tol. */
static void close_all(const char *what, const float *a, const float *b, size_t n, double tol) {
    double mb = 0, md = 0;
    for (size_t i = 0; i < n; i++) {
        mb = fmax(mb, fabs(b[i]));
        md = fmax(md, fabs((double)a[i] - b[i]));
        if (isnan(a[i]) != isnan(b[i])) fail_msg("%s: NaN at %zu", what, i);
    }
    if (md > tol * (1.0 + mb)) fail_msg("%s: max diff %.3g (max |ref| %.3g, tol %.1g)", what, md, mb, tol);
}

/* ---- linear ------------------------------------------------------------------ */
static const mt_dtype g_types[] = {MT_DT_F32,  MT_DT_F16,  MT_DT_BF16, MT_DT_Q8_0, MT_DT_Q4_0,  MT_DT_Q2_K,
                                   MT_DT_Q3_K, MT_DT_Q4_K, MT_DT_Q5_K, MT_DT_Q6_K, MT_DT_TQ1_0, MT_DT_TQ2_0};

static void *make_weights(mt_mat *W, mt_dtype t, int64_t rows, int64_t cols) {
    const mt_dtype_info *di = mt_dtype_get(t);
    const uint64_t rb = (uint64_t)(cols / di->block_elems * di->block_bytes);
    memset(W, 0, sizeof *W);
    W->dtype = t;
    W->rows = rows;
    W->cols = cols;
    W->row_stride = rb;
    uint8_t *buf = malloc(rows * rb);
    float *row = rand_vec((size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        if (t == MT_DT_TQ1_0 || t == MT_DT_TQ2_0) { /* no f32 quantizer: random ternary codes */
            for (int64_t b = 0; b < cols / MT_QK_K; b++) {
                int8_t q[MT_QK_K];
                for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)((int)(tu_rand_u32(&g_rng) % 3) - 1);
                const uint16_t d = mt_f32_to_f16(0.01f + 0.05f * (tu_rand_unit(&g_rng) + 1.0f));
                (t == MT_DT_TQ1_0 ? mt_tq1_0_pack : mt_tq2_0_pack)(q, d, buf + r * rb + b * di->block_bytes);
            }
            continue;
        }
        for (int64_t i = 0; i < cols; i++) row[i] = tu_rand_unit(&g_rng);
        assert_int_equal(mt_row_from_f32(t, row, buf + r * rb, cols), MT_OK);
    }
    free(row);
    W->data = buf;
    return buf;
}

static void test_linear(void **state) {
    const int ns[] = {1, 3, 9, 33};
    for (size_t ti = 0; ti < sizeof g_types / sizeof g_types[0]; ti++) {
        mt_mat W;
        void *buf = make_weights(&W, g_types[ti], 200, 256);
        assert_int_equal(g_cu->ops->mat_supported(g_cu, &W), MT_OK);
        assert_int_equal(g_cu->ops->weight_prepare(g_cu, &W), MT_OK);
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            const int n = ns[k];
            float *X = rand_vec((size_t)n * 256), *want = malloc((size_t)n * 200 * sizeof(float));
            for (int i = 0; i < n; i++) mt_matvec_rows_ref(&W, X + (size_t)i * 256, want + (size_t)i * 200, 0, 200);
            float *dX = dev_from(X, (size_t)n * 256), *dY = g_cu->ops->buf_alloc(g_cu, (size_t)n * 200 * sizeof(float));
            g_cu->ops->linear(g_cu, &W, dX, n, dY);
            float *got = host_from(dY, (size_t)n * 200);
            char what[64];
            snprintf(what, sizeof what, "linear %s n=%d", mt_dtype_get(g_types[ti])->name, n);
            close_all(what, got, want, (size_t)n * 200, TOL_SUM * 16); /* 256 terms of |w x| <= 1 */
            g_cu->ops->buf_free(g_cu, dX);
            g_cu->ops->buf_free(g_cu, dY);
            free(X);
            free(want);
            free(got);
        }
        /* embeddings: get_rows is exact */
        const int32_t ids[3] = {5, 0, 199};
        float *dE = g_cu->ops->buf_alloc(g_cu, 3 * 256 * sizeof(float)), *want = malloc(3 * 256 * sizeof(float));
        g_cu->ops->get_rows(g_cu, &W, ids, 3, dE);
        g_cpu->ops->get_rows(g_cpu, &W, ids, 3, want);
        float *got = host_from(dE, 3 * 256);
        assert_memory_equal(got, want, 3 * 256 * sizeof(float));
        g_cu->ops->buf_free(g_cu, dE);
        free(want);
        free(got);
        free(buf);
    }
}

static void test_qmoe_linear(void **state) {
    const uint64_t counts[3] = {800, 100, 100};
    mt_qmoe_dict d;
    assert_int_equal(mt_qmoe_dict_build(&d, counts, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN), MT_OK);
    const int64_t rows = 75, cols = 200;
    int8_t *syms = malloc(rows * cols);
    float lo[75], hi[75];
    for (int64_t i = 0; i < rows * cols; i++) {
        const uint32_t u = tu_rand_u32(&g_rng) % 10;
        syms[i] = (int8_t)(u < 8 ? 0 : u < 9 ? 1 : -1);
    }
    for (int r = 0; r < rows; r++) {
        lo[r] = mt_f16_to_f32(mt_f32_to_f16(-0.1f - 0.4f * (tu_rand_unit(&g_rng) + 1)));
        hi[r] = mt_f16_to_f32(mt_f32_to_f16(0.1f + 0.4f * (tu_rand_unit(&g_rng) + 1)));
    }
    mt_qmoe_mat q;
    mt_mat W;
    assert_int_equal(mt_qmoe_encode(&q, &d, syms, lo, hi, rows, cols), MT_OK);
    mt_qmoe_mat_view(&W, &q);
    assert_int_equal(g_cu->ops->weight_prepare(g_cu, &W), MT_OK);
    for (int n = 1; n <= 10; n += 9) {
        float *X = rand_vec((size_t)n * cols), *want = malloc((size_t)n * rows * sizeof(float));
        for (int i = 0; i < n; i++) mt_qmoe_matvec_rows_ref(&W, X + i * cols, want + i * rows, 0, rows);
        float *dX = dev_from(X, (size_t)n * cols), *dY = g_cu->ops->buf_alloc(g_cu, (size_t)n * rows * sizeof(float));
        g_cu->ops->linear(g_cu, &W, dX, n, dY);
        float *got = host_from(dY, (size_t)n * rows);
        close_all("qmoe linear", got, want, (size_t)n * rows, TOL_SUM * 20);
        g_cu->ops->buf_free(g_cu, dX);
        g_cu->ops->buf_free(g_cu, dY);
        free(X);
        free(want);
        free(got);
    }
    mt_qmoe_mat_free(&q);
    mt_qmoe_dict_free(&d);
    free(syms);
}

/* ---- activations ------------------------------------------------------------ */
static void test_rows_ops(void **state) {
    enum { N = 5, D = 384 };
    float *x = rand_vec(N * D), *w = rand_vec(D), *u = rand_vec(N * D);
    float *dx = dev_from(x, N * D), *dw = dev_from(w, D), *du = dev_from(u, N * D);
    float *want = malloc(N * D * sizeof(float));
    /* rmsnorm, in place as QK-norm calls it */
    g_cpu->ops->rmsnorm(g_cpu, want, x, w, N, D, 1e-5f);
    g_cu->ops->rmsnorm(g_cu, dx, dx, dw, N, D, 1e-5f);
    float *got = host_from(dx, N * D);
    close_all("rmsnorm", got, want, N * D, TOL_ELEM * 10);
    free(got);
    /* swiglu, add */
    g_cu->ops->upload(g_cu, dx, x, N * D * sizeof(float));
    memcpy(want, x, N * D * sizeof(float));
    g_cpu->ops->swiglu(g_cpu, want, u, N * D);
    g_cpu->ops->add(g_cpu, want, u, N * D);
    g_cu->ops->swiglu(g_cu, dx, du, N * D);
    g_cu->ops->add(g_cu, dx, du, N * D);
    got = host_from(dx, N * D);
    close_all("swiglu + add", got, want, N * D, TOL_ELEM * 10);
    free(got);
    /* gather + scatter-add */
    const int32_t rows[3] = {4, 1, 2};
    const float gates[3] = {0.5f, -1.25f, 2.0f};
    float *g = malloc(3 * D * sizeof(float)), *acc = rand_vec(N * D);
    float *dg = g_cu->ops->buf_alloc(g_cu, 3 * D * sizeof(float)), *dacc = dev_from(acc, N * D);
    g_cpu->ops->gather_rows(g_cpu, g, x, rows, 3, D);
    g_cpu->ops->scatter_add_rows(g_cpu, acc, g, rows, gates, 3, D);
    g_cu->ops->upload(g_cu, dx, x, N * D * sizeof(float));
    g_cu->ops->gather_rows(g_cu, dg, dx, rows, 3, D);
    g_cu->ops->scatter_add_rows(g_cu, dacc, dg, rows, gates, 3, D);
    got = host_from(dacc, N * D);
    close_all("gather + scatter-add", got, acc, N * D, TOL_ELEM);
    free(got);
    g_cu->ops->buf_free(g_cu, dg);
    g_cu->ops->buf_free(g_cu, dacc);
    g_cu->ops->buf_free(g_cu, dx);
    g_cu->ops->buf_free(g_cu, dw);
    g_cu->ops->buf_free(g_cu, du);
    free(g);
    free(acc);
    free(x);
    free(w);
    free(u);
    free(want);
}

static void test_rope_attention(void **state) {
    enum { NH = 8, NKV = 2, HD = 64, CTX = 40 };
    const int q_dim = NH * HD, kv_dim = NKV * HD, half = HD / 2;
    float *cs = malloc(CTX * half * sizeof(float)), *sn = malloc(CTX * half * sizeof(float));
    mt_be_rope_tables(cs, sn, CTX, HD, 10000.0f);
    float *dcs = dev_from(cs, CTX * half), *dsn = dev_from(sn, CTX * half);
    float *kc = calloc(CTX * kv_dim, sizeof(float)), *vc = calloc(CTX * kv_dim, sizeof(float));
    float *dkc = dev_from(kc, CTX * kv_dim), *dvc = dev_from(vc, CTX * kv_dim);
    float *scratch = malloc(g_cpu->ops->attn_scratch_floats(g_cpu, 16, CTX) * sizeof(float));
    int pos = 0;
    const int steps[] = {13, 1, 1, 7, 1};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        const int n = steps[s];
        float *q = rand_vec((size_t)n * q_dim), *k = rand_vec((size_t)n * kv_dim), *v = rand_vec((size_t)n * kv_dim);
        float *dq = dev_from(q, (size_t)n * q_dim), *dk = dev_from(k, (size_t)n * kv_dim),
              *dv = dev_from(v, (size_t)n * kv_dim);
        const mt_be_rope_style style = (s & 1) ? MT_BE_ROPE_PAIRS : MT_BE_ROPE_HALF;
        mt_be_rope_args rq = {q, n, q_dim, NH, HD, pos, cs, sn, style}, rk = {k, n, kv_dim, NKV, HD, pos, cs, sn, style};
        g_cpu->ops->rope(g_cpu, &rq);
        g_cpu->ops->rope(g_cpu, &rk);
        rq.x = dq, rq.cos_t = dcs, rq.sin_t = dsn;
        rk.x = dk, rk.cos_t = dcs, rk.sin_t = dsn;
        g_cu->ops->rope(g_cu, &rq);
        g_cu->ops->rope(g_cu, &rk);
        float *gq = host_from(dq, (size_t)n * q_dim);
        close_all("rope", gq, q, (size_t)n * q_dim, TOL_ELEM * 4);
        free(gq);
        float *out = malloc((size_t)n * q_dim * sizeof(float)), *dout = g_cu->ops->buf_alloc(g_cu, (size_t)n * q_dim * 4);
        mt_be_attn_args a = {q, k, v, kc, vc, out, scratch, n, pos, CTX, 16, NH, NKV, HD};
        g_cpu->ops->attention(g_cpu, &a);
        mt_be_attn_args b = {dq, dk, dv, dkc, dvc, dout, NULL, n, pos, CTX, 16, NH, NKV, HD};
        g_cu->ops->attention(g_cu, &b);
        float *got = host_from(dout, (size_t)n * q_dim);
        char what[64];
        snprintf(what, sizeof what, "attention n=%d pos=%d", n, pos);
        close_all(what, got, out, (size_t)n * q_dim, TOL_SUM * 4);
        free(got);
        float *gkc = host_from(dkc, CTX * kv_dim);
        close_all("kv cache", gkc, kc, CTX * kv_dim, TOL_ELEM * 4);
        free(gkc);
        pos += n;
        g_cu->ops->buf_free(g_cu, dq);
        g_cu->ops->buf_free(g_cu, dk);
        g_cu->ops->buf_free(g_cu, dv);
        g_cu->ops->buf_free(g_cu, dout);
        free(q);
        free(k);
        free(v);
        free(out);
    }
    g_cu->ops->buf_free(g_cu, dcs);
    g_cu->ops->buf_free(g_cu, dsn);
    g_cu->ops->buf_free(g_cu, dkc);
    g_cu->ops->buf_free(g_cu, dvc);
    free(cs);
    free(sn);
    free(kc);
    free(vc);
    free(scratch);
}

static void test_router(void **state) {
    enum { N = 40, R = 8, K = 2 };
    const int32_t alias[R] = {0, 1, 2, 3, 3, 2, 1, 0};
    for (int variant = 0; variant < 4; variant++) {
        const int32_t *al = (variant & 2) ? alias : NULL;
        float *lg = rand_vec(N * R), p[N * R], gates[N * K];
        int32_t topk[N * K];
        mt_be_router_args a = {lg, p, topk, gates, N, R, K, al, variant & 1};
        g_cpu->ops->router_topk(g_cpu, &a);
        float *dlg = dev_from(lg, N * R), *dp = g_cu->ops->buf_alloc(g_cu, N * R * 4),
              *dgates = g_cu->ops->buf_alloc(g_cu, N * K * 4);
        int32_t *dtopk = g_cu->ops->buf_alloc(g_cu, N * K * 4), gtopk[N * K];
        mt_be_router_args b = {dlg, dp, dtopk, dgates, N, R, K, al, variant & 1};
        g_cu->ops->router_topk(g_cu, &b);
        g_cu->ops->download(g_cu, gtopk, dtopk, sizeof gtopk);
        float *gg = host_from(dgates, N * K);
        assert_memory_equal(gtopk, topk, sizeof gtopk);
        close_all("router gates", gg, gates, N * K, TOL_ELEM * 4);
        free(gg);
        free(lg);
        g_cu->ops->buf_free(g_cu, dlg);
        g_cu->ops->buf_free(g_cu, dp);
        g_cu->ops->buf_free(g_cu, dgates);
        g_cu->ops->buf_free(g_cu, dtopk);
    }
}

/* ---- linear algebra --------------------------------------------------------------- */
static void test_gemm_syrk(void **state) {
    enum { M = 17, N = 23, K = 31 };
    for (int t = 0; t < 4; t++) {
        const int ta = t & 1, tb = t >> 1;
        float *A = rand_vec(M * K), *B = rand_vec(K * N), *C = rand_vec(M * N);
        float *dA = dev_from(A, M * K), *dB = dev_from(B, K * N), *dC = dev_from(C, M * N);
        const int lda = ta ? M : K, ldb = tb ? K : N;
        g_cpu->ops->gemm_f32(g_cpu, ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 2.0f, C, N);
        g_cu->ops->gemm_f32(g_cu, ta, tb, M, N, K, 0.5f, dA, lda, dB, ldb, 2.0f, dC, N);
        float *got = host_from(dC, M * N);
        close_all("gemm_f32", got, C, M * N, TOL_SUM * 4);
        free(got);
        free(A);
        free(B);
        free(C);
        g_cu->ops->buf_free(g_cu, dA);
        g_cu->ops->buf_free(g_cu, dB);
        g_cu->ops->buf_free(g_cu, dC);
    }
    /* syrk upper triangle, then potrf of A = XᵀX + n I */
    enum { n = 12, k = 30 };
    double X[k * n], C[n * n] = {0}, G[n * n];
    for (int i = 0; i < k * n; i++) X[i] = tu_rand_unit(&g_rng);
    for (int i = 0; i < n; i++) C[i * n + i] = n;
    double *dX = g_cu->ops->buf_alloc(g_cu, sizeof X), *dC = g_cu->ops->buf_alloc(g_cu, sizeof C);
    g_cu->ops->upload(g_cu, dX, X, sizeof X);
    g_cu->ops->upload(g_cu, dC, C, sizeof C);
    g_cpu->ops->syrk_f64(g_cpu, n, k, 1.0, X, n, 1.0, C, n);
    g_cu->ops->syrk_f64(g_cu, n, k, 1.0, dX, n, 1.0, dC, n);
    g_cu->ops->download(g_cu, G, dC, sizeof G);
    for (int i = 0; i < n; i++)
        for (int j = i; j < n; j++) assert_true(fabs(G[i * n + j] - C[i * n + j]) <= 1e-12 * (1 + fabs(C[i * n + j])));
    assert_int_equal(g_cpu->ops->potrf_f64(g_cpu, 'L', n, C, n), 0);
    assert_int_equal(g_cu->ops->potrf_f64(g_cu, 'L', n, dC, n), 0);
    g_cu->ops->download(g_cu, G, dC, sizeof G);
    for (int i = 0; i < n * n; i++) assert_true(fabs(G[i] - C[i]) <= 1e-10 * (1 + fabs(C[i])));
    g_cu->ops->buf_free(g_cu, dX);
    g_cu->ops->buf_free(g_cu, dC);
    assert_int_equal(g_cu->ops->status(g_cu), MT_OK);
}

/* ---- the bundled model ------------------------------------------------------------- */
static void test_model(void **state) {
    mt_model_opts o;
    mt_model_opts_default(&o);
    mt_model *mc = NULL, *mg = NULL;
    o.n_threads = 2;
    assert_int_equal(mt_model_load(&mc, tu_model_dir(), &o), MT_OK);
    o.device = MT_DEVICE_CUDA;
    if (mt_model_load(&mg, tu_model_dir(), &o) != MT_OK) fail_msg("cuda model: %s", mt_last_error());
    const int V = mt_model_config(mc)->vocab, P = 24;
    mt_ctx *cc, *cg;
    assert_int_equal(mt_ctx_init(&cc, mc, 64, 32), MT_OK);
    assert_int_equal(mt_ctx_init(&cg, mg, 64, 32), MT_OK);
    int32_t toks[24];
    for (int i = 0; i < P; i++) toks[i] = (int32_t)(tu_rand_u32(&g_rng) % (uint32_t)V);
    float *lc = malloc((size_t)P * V * sizeof(float)), *lg = malloc((size_t)P * V * sizeof(float));
    assert_int_equal(mt_ctx_forward(cc, toks, P, lc, 1), MT_OK);
    if (mt_ctx_forward(cg, toks, P, lg, 1) != MT_OK) fail_msg("cuda forward: %s", mt_last_error());
    close_all("model prefill logits", lg, lc, (size_t)P * V, 1e-3);
    for (int s = 0; s < 4; s++) { /* decode: the CPU quantises x for q8_0/q4_0 matvecs; f32 here */
        int32_t t = toks[s];
        assert_int_equal(mt_ctx_forward(cc, &t, 1, lc, 0), MT_OK);
        assert_int_equal(mt_ctx_forward(cg, &t, 1, lg, 0), MT_OK);
        close_all("model decode logits", lg, lc, (size_t)V, 1e-3);
    }
    const int32_t *rc = mt_ctx_last_routing(cc), *rg = mt_ctx_last_routing(cg);
    if (rc && rg) assert_memory_equal(rc, rg, (size_t)mt_model_config(mc)->n_layers * mt_model_config(mc)->top_k * 4);
    free(lc);
    free(lg);
    mt_ctx_free(cc);
    mt_ctx_free(cg);
    mt_model_free(mc);
    mt_model_free(mg);
}

int main(void) {
    const int st = mt_backend_cuda_init(&g_cu, 0);
    if (st == MT_ERR_UNSUPPORTED) {
        fprintf(stderr, "test_cuda_backend: skipped: %s\n", mt_last_error());
        return 77;
    }
    if (st != MT_OK) {
        fprintf(stderr, "test_cuda_backend: %s\n", mt_last_error());
        return 1;
    }
    if (mt_backend_cpu_init(&g_cpu, 1) != MT_OK) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),         cmocka_unit_test(test_qmoe_linear), cmocka_unit_test(test_rows_ops),
        cmocka_unit_test(test_rope_attention), cmocka_unit_test(test_router),      cmocka_unit_test(test_gemm_syrk),
        cmocka_unit_test(test_model),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    mt_backend_free(g_cu);
    mt_backend_free(g_cpu);
    return rc;
}
