/* test_backend.c — the ops of the backend interface (backend.h) on the CPU
 * backend, each against an independent plain implementation written here:
 * RoPE in both pair styles (the GGUF style equals un-permute + rotate_half
 * bit for bit), causal GQA attention with the KV cache (batch and one-token
 * paths against a double-precision reference, and storage of the new rows),
 * router top-k with renormalisation and alias folding, gather/scatter-add,
 * rmsnorm, swiglu, and the linear algebra (gemm, syrk, Cholesky factor,
 * inverse and solve) checked through algebraic properties. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}
static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = frand();
}

static int setup(void **state) {
    mt_backend *be = NULL;
    if (mt_backend_cpu_init(&be, 3) != MT_OK) return -1;
    *state = be;
    return 0;
}
static int teardown(void **state) {
    mt_backend_free(*state);
    return 0;
}

static void test_init_errors(void **state) {
    mt_backend *be = (mt_backend *)&be;
    assert_int_equal(mt_backend_cpu_init(&be, 0), MT_ERR_ARG);
    assert_null(be);
    mt_backend_free(NULL);
    mt_backend_free(mt_backend_default()); /* the shared one is never freed */
    assert_string_equal(mt_backend_default()->name, "cpu");
    mt_backend *b3 = *state;
    assert_int_equal(b3->n_threads, 3);
    assert_true(b3->host_memory);
}

/* GGUF rows of a head: HF element i at 2i, i + d/2 at 2i + 1. */
static void test_rope_styles(void **state) {
    mt_backend *be = *state;
    enum { N = 5, HEADS = 3, D = 16, HALF = D / 2, NCTX = 12, STRIDE = HEADS * D + 4 };
    float cos_t[NCTX * HALF], sin_t[NCTX * HALF];
    mt_be_rope_tables(cos_t, sin_t, NCTX, D, 10000.0f);
    /* the tables against double math at a few points */
    for (int p = 0; p < NCTX; p += 5)
        for (int i = 0; i < HALF; i += 3) {
            double ang = (double)(float)((float)p * (1.0f / powf(10000.0f, (float)(2 * i) / D)));
            assert_true(fabs(cos_t[p * HALF + i] - cos(ang)) < 1e-6);
            assert_true(fabs(sin_t[p * HALF + i] - sin(ang)) < 1e-6);
        }
    float hf[N * STRIDE], gg[N * STRIDE], ref[N * STRIDE];
    fill(hf, N * STRIDE);
    memcpy(gg, hf, sizeof gg);
    for (int i = 0; i < N; i++)
        for (int h = 0; h < HEADS; h++)
            for (int j = 0; j < HALF; j++) {
                gg[i * STRIDE + h * D + 2 * j] = hf[i * STRIDE + h * D + j];
                gg[i * STRIDE + h * D + 2 * j + 1] = hf[i * STRIDE + h * D + j + HALF];
            }
    memcpy(ref, hf, sizeof ref);
    const int pos = 4;
    for (int i = 0; i < N; i++) /* rotate_half written out here */
        for (int h = 0; h < HEADS; h++)
            for (int j = 0; j < HALF; j++) {
                float *p = ref + i * STRIDE + h * D;
                float c = cos_t[(pos + i) * HALF + j], s = sin_t[(pos + i) * HALF + j];
                float a = p[j], b = p[j + HALF];
                p[j] = a * c - b * s;
                p[j + HALF] = b * c + a * s;
            }
    mt_be_rope_args a = {hf, N, STRIDE, HEADS, D, pos, cos_t, sin_t, MT_BE_ROPE_HALF};
    be->ops->rope(be, &a);
    a.x = gg;
    a.style = MT_BE_ROPE_PAIRS;
    be->ops->rope(be, &a);
    assert_memory_equal(hf, ref, sizeof ref);
    assert_memory_equal(gg, ref, sizeof ref); /* also leaves the row padding alone */
}

/* Attention reference in double: cache rows 0..pos+i for query row i. */
static void attn_ref(const float *q, const float *kc, const float *vc, int n, int pos, int nh, int nkv, int d,
                     float *out) {
    const int qd = nh * d, kd = nkv * d;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < nh; h++) {
            const int hk = h / (nh / nkv), P = pos + i + 1;
            double s[64], mx = -1e300, sum = 0;
            for (int j = 0; j < P; j++) {
                double t = 0;
                for (int u = 0; u < d; u++) t += (double)q[i * qd + h * d + u] * kc[j * kd + hk * d + u];
                s[j] = t / sqrt((double)d);
                if (s[j] > mx) mx = s[j];
            }
            for (int j = 0; j < P; j++) sum += (s[j] = exp(s[j] - mx));
            for (int u = 0; u < d; u++) {
                double o = 0;
                for (int j = 0; j < P; j++) o += s[j] / sum * vc[j * kd + hk * d + u];
                out[i * qd + h * d + u] = (float)o;
            }
        }
}

static void test_attention(void **state) {
    mt_backend *be = *state;
    enum { NH = 4, NKV = 2, D = 8, NCTX = 20, NB = 8, QD = NH * D, KD = NKV * D };
    float *kc = calloc(NCTX * KD, sizeof(float)), *vc = calloc(NCTX * KD, sizeof(float));
    float *q = malloc(NCTX * QD * sizeof(float)), *k = malloc(NCTX * KD * sizeof(float));
    float *v = malloc(NCTX * KD * sizeof(float)), *out = malloc(NCTX * QD * sizeof(float));
    float *ref = malloc(NCTX * QD * sizeof(float));
    float *scr = malloc(be->ops->attn_scratch_floats(be, NB, NCTX) * sizeof(float));
    fill(q, NCTX * QD);
    fill(k, NCTX * KD);
    fill(v, NCTX * KD);
    /* a prefill of 7 rows, then 1 token, then 6 rows, then 1 token */
    const int steps[] = {7, 1, 6, 1};
    int pos = 0;
    for (int s = 0; s < 4; s++) {
        const int n = steps[s];
        mt_be_attn_args a = {q + pos * QD, k + pos * KD, v + pos * KD, kc, vc, out, scr, n, pos, NCTX, NB, NH, NKV, D};
        be->ops->attention(be, &a);
        assert_memory_equal(kc + pos * KD, k + pos * KD, (size_t)n * KD * sizeof(float));
        assert_memory_equal(vc + pos * KD, v + pos * KD, (size_t)n * KD * sizeof(float));
        attn_ref(q + pos * QD, kc, vc, n, pos, NH, NKV, D, ref);
        for (int i = 0; i < n * QD; i++) assert_true(fabsf(out[i] - ref[i]) < 1e-5f);
        pos += n;
    }
    free(kc);
    free(vc);
    free(q);
    free(k);
    free(v);
    free(out);
    free(ref);
    free(scr);
}

static void test_router(void **state) {
    mt_backend *be = *state;
    enum { N = 6, R = 6, K = 2 };
    float lg[N * R], pr[N * R], gates[N * K];
    int32_t tk[N * K];
    fill(lg, N * R);
    lg[3 * R + 1] = lg[3 * R + 4] = 2.5f; /* a tie: the lower row wins the first slot */
    mt_be_router_args a = {lg, pr, tk, gates, N, R, K, NULL, 1};
    be->ops->router_topk(be, &a);
    for (int i = 0; i < N; i++) {
        double p[R], mx = -1e30, s = 0;
        for (int e = 0; e < R; e++) mx = lg[i * R + e] > mx ? lg[i * R + e] : mx;
        for (int e = 0; e < R; e++) s += (p[e] = exp(lg[i * R + e] - mx));
        int b0 = 0, b1 = -1;
        for (int e = 1; e < R; e++)
            if (p[e] > p[b0]) b0 = e;
        for (int e = 0; e < R; e++)
            if (e != b0 && (b1 < 0 || p[e] > p[b1])) b1 = e;
        assert_int_equal(tk[i * K], b0);
        assert_int_equal(tk[i * K + 1], b1);
        assert_true(fabs(gates[i * K] - p[b0] / (p[b0] + p[b1])) < 1e-6);
        assert_true(fabs(gates[i * K] + gates[i * K + 1] - 1.0) < 1e-6);
    }
    assert_int_equal(tk[3 * K], 1);
    assert_int_equal(tk[3 * K + 1], 4);
    /* rows 0,1 -> expert 0, 2,3 -> 1, 4,5 -> 2 */
    const int32_t alias[R] = {0, 0, 1, 1, 2, 2};
    int32_t tk2[N * K];
    float g2[N * K];
    mt_be_router_args b = {lg, pr, tk2, g2, N, R, K, alias, 1};
    be->ops->router_topk(be, &b);
    for (int i = 0; i < N; i++) {
        const int e0 = alias[tk[i * K]], e1 = alias[tk[i * K + 1]];
        assert_int_equal(tk2[i * K], e0);
        if (e0 == e1) {
            assert_int_equal(tk2[i * K + 1], -1);
            assert_true(g2[i * K + 1] == 0.0f);
            assert_true(fabsf(g2[i * K] - 1.0f) < 1e-6f);
        } else {
            assert_int_equal(tk2[i * K + 1], e1);
            assert_true(g2[i * K + 1] == gates[i * K + 1]);
        }
    }
}

static void test_rows_and_elementwise(void **state) {
    mt_backend *be = *state;
    enum { N = 5, DIM = 7 };
    float src[N * DIM], dst[N * DIM], acc[N * DIM], want[N * DIM];
    fill(src, N * DIM);
    const int32_t rows[3] = {4, 0, 4};
    const float gates[3] = {0.5f, 2.0f, -1.0f};
    be->ops->gather_rows(be, dst, src, rows, 3, DIM);
    for (int r = 0; r < 3; r++) assert_memory_equal(dst + r * DIM, src + rows[r] * DIM, DIM * sizeof(float));
    fill(acc, N * DIM);
    memcpy(want, acc, sizeof want);
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < DIM; j++) want[rows[r] * DIM + j] += gates[r] * dst[r * DIM + j];
    be->ops->scatter_add_rows(be, acc, dst, rows, gates, 3, DIM);
    assert_memory_equal(acc, want, sizeof want);

    float w[DIM], o[N * DIM];
    fill(w, DIM);
    be->ops->rmsnorm(be, o, src, w, N, DIM, 1e-5f);
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int j = 0; j < DIM; j++) ss += (double)src[i * DIM + j] * src[i * DIM + j];
        for (int j = 0; j < DIM; j++)
            assert_true(fabs(o[i * DIM + j] - w[j] * src[i * DIM + j] / sqrt(ss / DIM + 1e-5)) < 1e-5);
    }
    float g[N * DIM], u[N * DIM], x[N * DIM];
    fill(g, N * DIM);
    fill(u, N * DIM);
    memcpy(x, g, sizeof x);
    be->ops->swiglu(be, g, u, N * DIM);
    for (int i = 0; i < N * DIM; i++) assert_true(fabs(g[i] - x[i] / (1 + exp(-(double)x[i])) * u[i]) < 1e-6);
    memcpy(x, u, sizeof x);
    be->ops->add(be, u, src, N * DIM);
    for (int i = 0; i < N * DIM; i++) assert_true(u[i] == x[i] + src[i]);
    /* buffers: host memory, upload/download copy, zero */
    float *buf = be->ops->buf_alloc(be, sizeof src);
    assert_non_null(buf);
    be->ops->upload(be, buf, src, sizeof src);
    be->ops->download(be, dst, buf, sizeof src);
    assert_memory_equal(dst, src, sizeof src);
    be->ops->buf_zero(be, buf, sizeof src);
    for (int i = 0; i < N * DIM; i++) assert_true(buf[i] == 0.0f);
    be->ops->synchronize(be);
    be->ops->buf_free(be, buf);
}

static void test_linear_algebra(void **state) {
    (void)state;
    mt_backend *be = mt_backend_default();
    enum { M = 5, NN = 4, KK = 6 };
    float A[KK * M], B[NN * KK], C[M * NN];
    fill(A, KK * M); /* used as Aᵀ: (K, M) stored */
    fill(B, NN * KK); /* used as Bᵀ: (N, K) stored */
    for (int i = 0; i < M * NN; i++) C[i] = 1.0f;
    be->ops->gemm_f32(be, 1, 1, M, NN, KK, 2.0f, A, M, B, KK, 0.5f, C, NN);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < NN; j++) {
            double s = 0;
            for (int k = 0; k < KK; k++) s += (double)A[k * M + i] * B[j * KK + k];
            assert_true(fabs(C[i * NN + j] - (2 * s + 0.5)) < 1e-5);
        }
    /* S = XᵀX + I is SPD; syrk fills the upper triangle */
    enum { N = 6, ROWS = 9 };
    double X[ROWS * N], S[N * N], S0[N * N];
    for (int i = 0; i < ROWS * N; i++) X[i] = frand();
    memset(S, 0, sizeof S);
    be->ops->syrk_f64(be, N, ROWS, 1.0, X, N, 0.0, S, N);
    for (int i = 0; i < N; i++)
        for (int j = i; j < N; j++) {
            double s = 0;
            for (int r = 0; r < ROWS; r++) s += X[r * N + i] * X[r * N + j];
            assert_true(fabs(S[i * N + j] - s) < 1e-12);
        }
    for (int i = 0; i < N; i++) {
        S[i * N + i] += 1.0;
        for (int j = 0; j < i; j++) S[i * N + j] = S[j * N + i];
    }
    memcpy(S0, S, sizeof S);
    /* posv: S x = b */
    double b[N], xs[N], Sf[N * N];
    for (int i = 0; i < N; i++) xs[i] = b[i] = frand();
    memcpy(Sf, S, sizeof S);
    assert_int_equal(be->ops->posv_f64(be, 'L', N, 1, Sf, N, xs, N), 0);
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int j = 0; j < N; j++) s += S0[i * N + j] * xs[j];
        assert_true(fabs(s - b[i]) < 1e-10);
    }
    /* potrf + potri: the inverse (lower triangle, column-major) */
    assert_int_equal(be->ops->potrf_f64(be, 'L', N, S, N), 0);
    assert_int_equal(be->ops->potri_f64(be, 'L', N, S, N), 0);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < N; k++) {
                const int r = i > k ? i : k, c = i > k ? k : i; /* lower, column-major: element (r, c) at c*N + r */
                s += S[c * N + r] * S0[k * N + j];
            }
            assert_true(fabs(s - (i == j)) < 1e-10);
        }
    /* not positive definite: LAPACK's info names the column */
    double bad[4] = {1, 2, 2, 1};
    assert_int_equal(be->ops->potrf_f64(be, 'L', 2, bad, 2), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rope_styles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_router, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_and_elementwise, setup, teardown),
        cmocka_unit_test(test_linear_algebra),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
