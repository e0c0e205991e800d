/* test_distill.c — the training engine: every backward op against central
 * finite differences of an independent f64 forward written here (RMSNorm,
 * RoPE, SwiGLU, causal GQA attention, Mixtral routing, CE + KL loss at a
 * temperature), the whole student's gradient (dense, and MoE) against
 * finite differences of its own loss, the
 * warmup + cosine schedule's end points, and one AdamW step against the
 * update written out by hand. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distill_impl.h"
#include "testutil.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static void fill(float *a, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) a[i] = tu_rand_unit(&g_rng) * scale;
}
static double *to64(const float *x, size_t n) {
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* max |a − b| / max |b| (b the finite-difference gradient). */
static double rel_err(const float *a, const double *b, size_t n) {
    double md = 0, mb = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        md = d > md ? d : md;
        mb = fabs(b[i]) > mb ? fabs(b[i]) : mb;
    }
    return md / mb;
}

/* Central differences of f (a scalar of x, f64) over every element of x. */
typedef double (*scalar_fn)(const double *x, void *ctx);
static void fd_grad(double *g, double *x, size_t n, scalar_fn f, void *ctx) {
    const double h = 1e-6;
    for (size_t i = 0; i < n; i++) {
        const double x0 = x[i];
        x[i] = x0 + h;
        const double fp = f(x, ctx);
        x[i] = x0 - h;
        const double fm = f(x, ctx);
        x[i] = x0;
        g[i] = (fp - fm) / (2 * h);
    }
}

/* ---- RMSNorm: f = Σ r·rmsnorm(x, w) ---------------------------------------- */
typedef struct { int n, dim; double eps; const double *x, *w, *r; int wrt_w; } rms_ctx;
static double rms_f(const double *v, void *p) {
    const rms_ctx *c = p;
    const double *x = c->wrt_w ? c->x : v, *w = c->wrt_w ? v : c->w;
    double f = 0;
    for (int i = 0; i < c->n; i++) {
        double ss = 0;
        for (int j = 0; j < c->dim; j++) ss += x[i * c->dim + j] * x[i * c->dim + j];
        const double rs = 1.0 / sqrt(ss / c->dim + c->eps);
        for (int j = 0; j < c->dim; j++) f += c->r[i * c->dim + j] * x[i * c->dim + j] * rs * w[j];
    }
    return f;
}

static void test_rmsnorm_backward(void **state) {
    (void)state;
    enum { n = 3, dim = 16 };
    float x[n * dim], w[dim], r[n * dim], out[n * dim], rstd[n], dx[n * dim], dw[dim] = {0};
    fill(x, n * dim, 1.0f), fill(w, dim, 1.0f), fill(r, n * dim, 1.0f);
    dt_rmsnorm_fwd(out, rstd, x, w, n, dim, 1e-5f);
    dt_rmsnorm_bwd(dx, dw, r, x, w, rstd, n, dim, 0);
    double *x64 = to64(x, n * dim), *w64 = to64(w, dim), *r64 = to64(r, n * dim), gx[n * dim], gw[dim];
    rms_ctx c = {n, dim, 1e-5, x64, w64, r64, 0};
    fd_grad(gx, x64, n * dim, rms_f, &c);
    c.wrt_w = 1;
    fd_grad(gw, w64, dim, rms_f, &c);
    double ex = rel_err(dx, gx, n * dim), ew = rel_err(dw, gw, dim);
    printf("rmsnorm: dx %.2e dw %.2e\n", ex, ew);
    assert_true(ex < 1e-4);
    assert_true(ew < 1e-4);
    free(x64), free(w64), free(r64);
}

/* ---- RoPE ------------------------------------------------------------------- */
typedef struct { int n, T, nh, d; const float *cs, *sn; const double *r; } rope_ctx;
static double rope_f(const double *x, void *p) {
    const rope_ctx *c = p;
    const int half = c->d / 2;
    double f = 0;
    for (int i = 0; i < c->n; i++)
        for (int h = 0; h < c->nh; h++)
            for (int j = 0; j < half; j++) {
                const size_t o = (size_t)i * c->nh * c->d + (size_t)h * c->d;
                const double cs = c->cs[(i % c->T) * half + j], sn = c->sn[(i % c->T) * half + j];
                const double a = x[o + j], b = x[o + j + half];
                f += c->r[o + j] * (a * cs - b * sn) + c->r[o + j + half] * (b * cs + a * sn);
            }
    return f;
}

static void test_rope_backward(void **state) {
    (void)state;
    enum { T = 5, n = 10, nh = 2, d = 8 };
    float cs[T * d / 2], sn[T * d / 2], r[n * nh * d], x[n * nh * d], xr[n * nh * d];
    mt_be_rope_tables(cs, sn, T, d, 10000.0f);
    fill(r, n * nh * d, 1.0f), fill(x, n * nh * d, 1.0f);
    /* forward against the f64 formula */
    memcpy(xr, x, sizeof x);
    dt_rope_fwd(xr, n, T, nh, d, cs, sn);
    double *x64 = to64(x, n * nh * d), *r64 = to64(r, n * nh * d), g[n * nh * d];
    rope_ctx c = {n, T, nh, d, cs, sn, r64};
    double fwd = 0;
    for (int i = 0; i < n * nh * d; i++) fwd += (double)r[i] * xr[i];
    assert_true(fabs(fwd - rope_f(x64, &c)) < 1e-4);
    fd_grad(g, x64, n * nh * d, rope_f, &c);
    dt_rope_bwd(r, n, T, nh, d, cs, sn);
    double e = rel_err(r, g, n * nh * d);
    printf("rope: dx %.2e\n", e);
    assert_true(e < 1e-5);
    free(x64), free(r64);
}

/* ---- SwiGLU ------------------------------------------------------------------ */
typedef struct { size_t n; const double *h1, *h3, *r; int wrt; } swi_ctx;
static double swi_f(const double *v, void *p) {
    const swi_ctx *c = p;
    const double *h1 = c->wrt == 0 ? v : c->h1, *h3 = c->wrt == 1 ? v : c->h3;
    double f = 0;
    for (size_t i = 0; i < c->n; i++) f += c->r[i] * h1[i] / (1 + exp(-h1[i])) * h3[i];
    return f;
}

static void test_swiglu_backward(void **state) {
    (void)state;
    enum { n = 64 };
    float h1[n], h3[n], r[n], d1[n], d3[n];
    fill(h1, n, 4.0f), fill(h3, n, 2.0f), fill(r, n, 1.0f);
    dt_swiglu_bwd(d1, d3, r, h1, h3, n);
    double *a = to64(h1, n), *b = to64(h3, n), *r64 = to64(r, n), g1[n], g3[n];
    swi_ctx c = {n, a, b, r64, 0};
    fd_grad(g1, a, n, swi_f, &c);
    c.wrt = 1;
    fd_grad(g3, b, n, swi_f, &c);
    double e1 = rel_err(d1, g1, n), e3 = rel_err(d3, g3, n);
    printf("swiglu: dh1 %.2e dh3 %.2e\n", e1, e3);
    assert_true(e1 < 1e-5 && e3 < 1e-5);
    free(a), free(b), free(r64);
}

/* ---- routing: f = Σ r·gates(z), gates = top-K of softmax(z), renormalised --- */
typedef struct { int n, E, K; const double *r; } route_ctx;
static double route_f(const double *z, void *p) {
    const route_ctx *c = p;
    double f = 0;
    for (int i = 0; i < c->n; i++) {
        const double *zi = z + (size_t)i * c->E;
        double pr[16], mx = -DBL_MAX, sum = 0;
        for (int e = 0; e < c->E; e++) mx = zi[e] > mx ? zi[e] : mx;
        for (int e = 0; e < c->E; e++) sum += pr[e] = exp(zi[e] - mx);
        for (int e = 0; e < c->E; e++) pr[e] /= sum;
        int used[16] = {0}, sel[16];
        double ks = 0;
        for (int k = 0; k < c->K; k++) {
            int b = -1;
            for (int e = 0; e < c->E; e++)
                if (!used[e] && (b < 0 || pr[e] > pr[b])) b = e;
            used[b] = 1, sel[k] = b, ks += pr[b];
        }
        for (int k = 0; k < c->K; k++) f += c->r[i * c->K + k] * pr[sel[k]] / ks;
    }
    return f;
}

static void test_route_backward(void **state) {
    (void)state;
    enum { n = 5, E = 6, K = 2 };
    float z[n * E], r[n * K], gate[n * K], dz[n * E];
    int32_t sel[n * K];
    /* logits at least 0.1 apart within a row, so the finite-difference steps never change the choice */
    for (int i = 0; i < n; i++)
        for (int e = 0; e < E; e++) z[i * E + e] = 0.3f * (float)((e * 7 + i * 3) % E) + 0.05f * tu_rand_unit(&g_rng);
    fill(r, n * K, 1.0f);
    dt_route_fwd(sel, gate, z, n, E, K);
    double *z64 = to64(z, n * E), *r64 = to64(r, n * K), g[n * E];
    route_ctx c = {n, E, K, r64};
    double fwd = 0;
    for (int i = 0; i < n * K; i++) fwd += (double)r[i] * gate[i];
    assert_true(fabs(fwd - route_f(z64, &c)) < 1e-5);
    for (int i = 0; i < n; i++) { /* the chosen experts are the most probable ones, in order */
        assert_true(z[i * E + sel[i * K]] >= z[i * E + sel[i * K + 1]]);
        for (int e = 0; e < E; e++)
            if (e != sel[i * K] && e != sel[i * K + 1]) assert_true(z[i * E + e] <= z[i * E + sel[i * K + 1]]);
    }
    fd_grad(g, z64, n * E, route_f, &c);
    dt_route_bwd(dz, r, sel, gate, n, E, K);
    double e = rel_err(dz, g, n * E);
    printf("routing: dz %.2e\n", e);
    assert_true(e < 1e-5);
    free(z64), free(r64);
}

/* ---- attention --------------------------------------------------------------- */
typedef struct { int B, T, NH, NKV, D; double *q, *k, *v; const double *r; } att_ctx;
static double att_f(const double *unused, void *p) {
    const att_ctx *c = p;
    (void)unused;
    const int QD = c->NH * c->D, KD = c->NKV * c->D, g = c->NH / c->NKV;
    double f = 0, s[64];
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->NH; h++)
            for (int i = 0; i < c->T; i++) {
                const double *qi = c->q + ((size_t)b * c->T + i) * QD + h * c->D;
                double mx = -DBL_MAX, sum = 0;
                for (int j = 0; j <= i; j++) {
                    const double *kj = c->k + ((size_t)b * c->T + j) * KD + (h / g) * c->D;
                    double d = 0;
                    for (int u = 0; u < c->D; u++) d += qi[u] * kj[u];
                    s[j] = d / sqrt((double)c->D);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int j = 0; j <= i; j++) sum += s[j] = exp(s[j] - mx);
                for (int u = 0; u < c->D; u++) {
                    double o = 0;
                    for (int j = 0; j <= i; j++) o += s[j] / sum * c->v[((size_t)b * c->T + j) * KD + (h / g) * c->D + u];
                    f += c->r[((size_t)b * c->T + i) * QD + h * c->D + u] * o;
                }
            }
    return f;
}

static void test_attention_backward(void **state) {
    (void)state;
    enum { B = 2, T = 6, NH = 4, NKV = 2, D = 4, QD = NH * D, KD = NKV * D };
    mt_backend *be = NULL;
    assert_int_equal(mt_backend_cpu_init(&be, 2), MT_OK);
    float q[B * T * QD], k[B * T * KD], v[B * T * KD], r[B * T * QD], out[B * T * QD], att[B * NH * T * T];
    float dq[B * T * QD], dk[B * T * KD], dv[B * T * KD], datt[T * T];
    fill(q, B * T * QD, 1.0f), fill(k, B * T * KD, 1.0f), fill(v, B * T * KD, 1.0f), fill(r, B * T * QD, 1.0f);
    dt_attention_fwd(be, out, att, q, k, v, B, T, NH, NKV, D);
    dt_attention_bwd(be, dq, dk, dv, datt, r, att, q, k, v, B, T, NH, NKV, D);
    att_ctx c = {B, T, NH, NKV, D, to64(q, B * T * QD), to64(k, B * T * KD), to64(v, B * T * KD), to64(r, B * T * QD)};
    double fwd = 0;
    for (int i = 0; i < B * T * QD; i++) fwd += (double)r[i] * out[i];
    assert_true(fabs(fwd - att_f(NULL, &c)) < 1e-4);
    double gq[B * T * QD], gk[B * T * KD], gv[B * T * KD];
    fd_grad(gq, c.q, B * T * QD, att_f, &c);
    fd_grad(gk, c.k, B * T * KD, att_f, &c);
    fd_grad(gv, c.v, B * T * KD, att_f, &c);
    double eq = rel_err(dq, gq, B * T * QD), ek = rel_err(dk, gk, B * T * KD), ev = rel_err(dv, gv, B * T * KD);
    printf("attention: dq %.2e dk %.2e dv %.2e\n", eq, ek, ev);
    assert_true(eq < 1e-4 && ek < 1e-4 && ev < 1e-4);
    free(c.q), free(c.k), free(c.v), free((void *)c.r);
    mt_backend_free(be);
}

/* ---- loss: (1 − α)·CE + α·τ²·KL(p_teacher,τ ‖ q_student,τ), mean over rows ---- */
typedef struct { int n, V; const int32_t *y; const double *t; double alpha, temp; } loss_ctx;
static double lse(const double *z, int V, double s) {
    double mx = -DBL_MAX, sum = 0;
    for (int j = 0; j < V; j++) mx = z[j] * s > mx ? z[j] * s : mx;
    for (int j = 0; j < V; j++) sum += exp(z[j] * s - mx);
    return mx + log(sum);
}
static double loss_f(const double *z, void *p) {
    const loss_ctx *c = p;
    double f = 0;
    for (int i = 0; i < c->n; i++) {
        const double *zi = z + (size_t)i * c->V, *ti = c->t + (size_t)i * c->V;
        double ce = lse(zi, c->V, 1) - zi[c->y[i]], kl = 0;
        const double ls = lse(zi, c->V, 1 / c->temp), lt = lse(ti, c->V, 1 / c->temp);
        for (int j = 0; j < c->V; j++) {
            const double lp = ti[j] / c->temp - lt;
            kl += exp(lp) * (lp - (zi[j] / c->temp - ls));
        }
        f += (1 - c->alpha) * ce + c->alpha * c->temp * c->temp * kl;
    }
    return f / c->n;
}

static void test_loss_backward(void **state) {
    (void)state;
    /* a minimal one-layer model only to hold the logits buffer */
    dt_config cf = {1, 8, 2, 1, 4, 8, 32, 1e-5f, 10000.0f, 0, 0};
    dt_model m;
    assert_int_equal(dt_model_init(&m, &cf, 2, 3, mt_backend_default()), MT_OK);
    const int n = 6, V = 32;
    int32_t y[6] = {1, 5, 31, 0, 7, 7};
    float z[6 * 32], t[6 * 32];
    fill(z, n * V, 3.0f), fill(t, n * V, 3.0f);
    const double temps[2] = {1.0, 2.0};
    for (int ti = 0; ti < 2; ti++) {
        memcpy(m.a.logits, z, sizeof z);
        dt_loss L = dt_loss_backward_logits(&m, y, t, 0.5f, (float)temps[ti]);
        double *z64 = to64(z, n * V), *t64 = to64(t, n * V), g[6 * 32];
        loss_ctx c = {n, V, y, t64, 0.5, temps[ti]};
        const double ref = loss_f(z64, &c);
        fd_grad(g, z64, n * V, loss_f, &c);
        double e = rel_err(m.a.logits, g, n * V);
        printf("loss T=%g: value %.8f vs %.8f, dlogits %.2e\n", temps[ti], L.loss, ref, e);
        assert_true(fabs(L.loss - ref) < 1e-6 * fabs(ref));
        assert_true(e < 1e-5);
        free(z64), free(t64);
    }
    dt_model_free(&m);
}

/* ---- top-K teacher logits (the logit cache's form) ------------------------------ */
/* K = V: the expanded rows are the teacher's logits, so the loss and its
 * gradient equal the uncached ones exactly; K < V: the KD term is the KL of
 * the teacher's top K renormalised, computed here independently in f64. */
static void test_topk_logits(void **state) {
    (void)state;
    dt_config cf = {1, 8, 2, 1, 4, 8, 32, 1e-5f, 10000.0f, 0, 0};
    dt_model m;
    assert_int_equal(dt_model_init(&m, &cf, 2, 3, mt_backend_default()), MT_OK);
    enum { n = 6, V = 32 };
    int32_t y[n] = {1, 5, 31, 0, 7, 7}, ids[n * V];
    float z[n * V], t[n * V], vals[n * V], tx[n * V], g_full[n * V];
    fill(z, n * V, 3.0f), fill(t, n * V, 3.0f);
    /* selection: descending, and the K-th is at least every value left out */
    dst_topk_select(t, n, V, 5, ids, vals);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 5; k++) {
            assert_true(vals[i * 5 + k] == t[i * V + ids[i * 5 + k]]);
            if (k) assert_true(vals[i * 5 + k] <= vals[i * 5 + k - 1]);
        }
        int above = 0;
        for (int j = 0; j < V; j++) above += t[i * V + j] > vals[i * 5 + 4];
        assert_true(above <= 4);
    }
    for (int ti = 0; ti < 2; ti++) {
        const float temp = ti ? 2.0f : 1.0f;
        memcpy(m.a.logits, z, sizeof z);
        const dt_loss full = dt_loss_backward_logits(&m, y, t, 0.5f, temp);
        memcpy(g_full, m.a.logits, sizeof g_full);
        dst_topk_select(t, n, V, V, ids, vals);
        dst_topk_expand(ids, vals, n, V, V, tx);
        memcpy(m.a.logits, z, sizeof z);
        const dt_loss cached = dt_loss_backward_logits(&m, y, tx, 0.5f, temp);
        printf("top-K = V, T=%g: loss %.9f vs %.9f\n", temp, cached.loss, full.loss);
        assert_true(cached.loss == full.loss && cached.kd == full.kd);
        assert_memory_equal(m.a.logits, g_full, sizeof g_full);
        /* K = 5: KL(p_top5 renormalised || q), f64 */
        enum { K = 5 };
        dst_topk_select(t, n, V, K, ids, vals);
        dst_topk_expand(ids, vals, n, V, K, tx);
        memcpy(m.a.logits, z, sizeof z);
        const dt_loss part = dt_loss_backward_logits(&m, y, tx, 1.0f, temp);
        double kl = 0;
        for (int i = 0; i < n; i++) {
            double zs[V], ts = -DBL_MAX, sp = 0;
            for (int j = 0; j < V; j++) zs[j] = z[i * V + j] / temp;
            const double lq = lse(zs, V, 1.0);
            for (int k = 0; k < K; k++) ts = vals[i * K + k] / temp > ts ? vals[i * K + k] / temp : ts;
            for (int k = 0; k < K; k++) sp += exp(vals[i * K + k] / temp - ts);
            for (int k = 0; k < K; k++) {
                const double lp = vals[i * K + k] / temp - ts - log(sp);
                kl += exp(lp) * (lp - (zs[ids[i * K + k]] - lq));
            }
        }
        kl /= n;
        printf("top-5, T=%g: KD %.9f vs f64 %.9f\n", temp, part.kd, kl);
        assert_true(fabs(part.kd - kl) < 1e-5 * kl);
    }
    dt_model_free(&m);
}

/* ---- whole student: gradient of its loss against finite differences --------- */
static double model_loss(dt_model *m, const int32_t *tok, const int32_t *tgt, const float *teacher) {
    dt_forward(m, tok);
    return dt_loss_backward_logits(m, tgt, teacher, 0.5f, 2.0f).loss;
}

/* Every parameter tensor: 6 entries' gradients against central differences
 * of the f32 loss (a step of 1e-2 keeps rounding noise far below the
 * tolerance). A MoE student's samples whose step changes a routing choice
 * (the loss is not differentiable there) are skipped and counted. */
static double student_gradient_check(const dt_config *cf, int B, int T, int *skipped) {
    dt_model m;
    assert_int_equal(dt_model_init(&m, cf, B, T, mt_backend_default()), MT_OK);
    fill(m.params, m.n_params, 0.5f);
    const int N = B * T, V = cf->vocab, L = cf->n_layers, K = cf->n_experts ? cf->top_k : 0;
    int32_t *tok = malloc((size_t)N * sizeof *tok), *tgt = malloc((size_t)N * sizeof *tgt);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)(tu_rand_u32(&g_rng) % V), tgt[i] = (int32_t)(tu_rand_u32(&g_rng) % V);
    float *teacher = malloc((size_t)N * V * sizeof(float));
    fill(teacher, (size_t)N * V, 3.0f);
    model_loss(&m, tok, tgt, teacher);
    const size_t ns = (size_t)L * N * K;
    int32_t *sel0 = ns ? malloc(ns * sizeof *sel0) : NULL;
    if (ns) memcpy(sel0, m.a.sel, ns * sizeof *sel0);
    dt_backward(&m, tok);
    float *g = malloc(m.n_params * sizeof(float));
    memcpy(g, m.grads, m.n_params * sizeof(float));
    double worst = 0;
    *skipped = 0;
    for (int t = 0; t < m.n_table; t++) {
        const dt_param *p = &m.table[t];
        const size_t n = (size_t)p->rows * p->cols;
        double md = 0, mg = 1e-12;
        for (int s = 0; s < 6; s++) {
            size_t i = p->offset + tu_rand_u32(&g_rng) % n;
            if (p->kind == DT_EMBD) i = p->offset + (size_t)tok[s % N] * p->cols + (size_t)s % p->cols;
            const float x0 = m.params[i], h = 1e-2f;
            m.params[i] = x0 + h;
            const double fp = model_loss(&m, tok, tgt, teacher);
            int same = !ns || !memcmp(sel0, m.a.sel, ns * sizeof *sel0);
            m.params[i] = x0 - h;
            const double fm = model_loss(&m, tok, tgt, teacher);
            same = same && (!ns || !memcmp(sel0, m.a.sel, ns * sizeof *sel0));
            m.params[i] = x0;
            if (!same) {
                (*skipped)++;
                continue;
            }
            const double fd = (fp - fm) / (2.0 * h);
            md = fabs(fd - g[i]) > md ? fabs(fd - g[i]) : md;
            mg = fabs(fd) > mg ? fabs(fd) : mg;
        }
        worst = md / mg > worst ? md / mg : worst;
    }
    free(g), free(sel0), free(teacher), free(tok), free(tgt);
    dt_model_free(&m);
    return worst;
}

static void test_model_gradient(void **state) {
    (void)state;
    dt_config cf = {2, 16, 4, 2, 4, 24, 40, 1e-5f, 10000.0f, 0, 0};
    int skipped;
    const double worst = student_gradient_check(&cf, 2, 5, &skipped);
    printf("whole student: worst relative gradient error %.2e\n", worst);
    assert_true(worst < 2e-2);
}

/* The MoE student (4 experts, top-2): router, experts and everything else. */
static void test_moe_model_gradient(void **state) {
    (void)state;
    dt_config cf = {2, 16, 4, 2, 4, 12, 40, 1e-5f, 10000.0f, 4, 2};
    int skipped;
    const double worst = student_gradient_check(&cf, 2, 5, &skipped);
    dt_model m;
    assert_int_equal(dt_model_init(&m, &cf, 2, 5, mt_backend_default()), MT_OK);
    const int n_table = m.n_table;
    dt_model_free(&m);
    printf("whole MoE student: worst relative gradient error %.2e (%d of %d samples skipped: routing changed)\n", worst,
           skipped, 6 * n_table);
    assert_true(worst < 2e-2);
    assert_true(skipped < 2 * n_table); /* most samples were checked */
}

static void test_schedule_and_adamw(void **state) {
    (void)state;
    assert_true(fabsf(dt_lr_schedule(0, 100, 10, 1e-3f, 0.1f) - 1e-4f) < 1e-9f);
    assert_true(fabsf(dt_lr_schedule(9, 100, 10, 1e-3f, 0.1f) - 1e-3f) < 1e-9f);
    assert_true(fabsf(dt_lr_schedule(10, 100, 10, 1e-3f, 0.1f) - 1e-3f) < 1e-9f);
    assert_true(fabsf(dt_lr_schedule(99, 100, 10, 1e-3f, 0.1f) - 1e-4f) < 1e-9f);
    dt_config cf = {1, 8, 2, 1, 4, 8, 16, 1e-5f, 10000.0f, 0, 0};
    dt_model m;
    assert_int_equal(dt_model_init(&m, &cf, 1, 2, mt_backend_default()), MT_OK);
    fill(m.params, m.n_params, 1.0f);
    fill(m.grads, m.n_params, 1.0f);
    float *p0 = malloc(m.n_params * sizeof(float));
    memcpy(p0, m.params, m.n_params * sizeof(float));
    dt_adamw o = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
    dt_adamw_step(&m, &o, 1);
    /* first step: m̂ = g, v̂ = g², update = lr·(sign-ish g/(|g|+eps) + wd·w) */
    for (int t = 0; t < m.n_table; t++) {
        const dt_param *p = &m.table[t];
        const double wd = p->rows > 1 ? 0.1 : 0.0;
        for (size_t j = p->offset; j < p->offset + (size_t)p->rows * p->cols; j++) {
            const double gg = m.grads[j], want = p0[j] - 1e-2 * (gg / (fabs(gg) + 1e-8) + wd * p0[j]);
            assert_true(fabs(m.params[j] - want) < 1e-6);
        }
    }
    free(p0);
    dt_model_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_backward),  cmocka_unit_test(test_rope_backward),
        cmocka_unit_test(test_swiglu_backward),   cmocka_unit_test(test_attention_backward),
        cmocka_unit_test(test_loss_backward),     cmocka_unit_test(test_model_gradient),
        cmocka_unit_test(test_route_backward),    cmocka_unit_test(test_moe_model_gradient),
        cmocka_unit_test(test_topk_logits),
        cmocka_unit_test(test_schedule_and_adamw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
