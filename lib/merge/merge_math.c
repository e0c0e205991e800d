/* merge_math.c — the numerical parts of expert merging, in f32/f64 on
 * dequantized weights: SwiGLU expert forward, hidden-unit permutation and
 * alignment, a reference MoE block, clustering and router fitting. Matrix
 * products and the Cholesky solve go through the runtime's backend
 * (OpenBLAS / LAPACK on the CPU). */
#include "merge_impl.h"

#include "backend.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void mt_merge_expert_forward(const float *w1, const float *w3, const float *w2, int H, int F, const float *x, int n,
                             float *y, float *act) {
    mt_backend *be = mt_backend_default();
    float *g = act ? act : malloc((size_t)n * F * sizeof(float));
    float *u = malloc((size_t)n * F * sizeof(float));
    if (!g || !u) {
        /* Out of memory in a void helper: leave y zero so callers see it. */
        memset(y, 0, (size_t)n * H * sizeof(float));
        if (!act) free(g);
        free(u);
        return;
    }
    be->ops->gemm_f32(be, 0, 1, n, F, H, 1.0f, x, H, w1, H, 0.0f, g, F);
    be->ops->gemm_f32(be, 0, 1, n, F, H, 1.0f, x, H, w3, H, 0.0f, u, F);
    for (size_t i = 0; i < (size_t)n * F; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    be->ops->gemm_f32(be, 0, 1, n, H, F, 1.0f, g, F, w2, F, 0.0f, y, H);
    if (!act) free(g);
    free(u);
}

int mt_merge_permute_expert(float *w1, float *w3, float *w2, int H, int F, const int *perm) {
    float *tmp = malloc((size_t)F * H * sizeof(float));
    char *seen = calloc((size_t)F, 1);
    if (!tmp || !seen) {
        free(tmp);
        free(seen);
        return mt_seterr(MT_ERR_NOMEM, "out of memory permuting an expert");
    }
    for (int j = 0; j < F; j++) {
        if (perm[j] < 0 || perm[j] >= F || seen[perm[j]]) {
            free(tmp);
            free(seen);
            return mt_seterr(MT_ERR_ARG, "permutation of %d hidden units is not a permutation (entry %d)", F, j);
        }
        seen[perm[j]] = 1;
    }
    float *mats[2] = {w1, w3};
    for (int m = 0; m < 2; m++) {
        for (int j = 0; j < F; j++) memcpy(tmp + (size_t)j * H, mats[m] + (size_t)perm[j] * H, (size_t)H * sizeof(float));
        memcpy(mats[m], tmp, (size_t)F * H * sizeof(float));
    }
    for (int r = 0; r < H; r++) {
        float *row = w2 + (size_t)r * F;
        for (int j = 0; j < F; j++) tmp[j] = row[perm[j]];
        memcpy(row, tmp, (size_t)F * sizeof(float));
    }
    free(tmp);
    free(seen);
    return MT_OK;
}

/* Columns of A (n, F) centred and scaled to unit norm, into Z. */
static void standardize(const float *A, int n, int F, float *Z) {
    for (int j = 0; j < F; j++) {
        double s = 0, s2 = 0;
        for (int i = 0; i < n; i++) s += A[(size_t)i * F + j];
        double mu = s / n;
        for (int i = 0; i < n; i++) {
            double d = A[(size_t)i * F + j] - mu;
            s2 += d * d;
        }
        double inv = s2 > 0 ? 1.0 / sqrt(s2) : 0.0;
        for (int i = 0; i < n; i++) Z[(size_t)i * F + j] = (float)((A[(size_t)i * F + j] - mu) * inv);
    }
}

typedef struct {
    float c;
    int a, m;
} cand;

static int cand_cmp(const void *x, const void *y) {
    const cand *p = x, *q = y;
    if (p->c != q->c) return p->c > q->c ? -1 : 1;
    if (p->a != q->a) return p->a - q->a;
    return p->m - q->m;
}

/* Candidates per anchor unit for the greedy pass: the best few columns of
 * its row. Units whose candidates are all taken fall back to a scan of the
 * free columns, so the result is always a permutation. */
#define MT_ALIGN_CANDS 8

int mt_merge_align(const float *anchor_act, const float *member_act, int n, int F, int *perm) {
    mt_backend *be = mt_backend_default();
    if (n < 2 || F < 1) return mt_seterr(MT_ERR_ARG, "alignment needs at least 2 samples and 1 unit");
    int T = F < MT_ALIGN_CANDS ? F : MT_ALIGN_CANDS;
    float *Za = malloc((size_t)n * F * sizeof(float));
    float *Zm = malloc((size_t)n * F * sizeof(float));
    float *C = malloc((size_t)F * F * sizeof(float)); /* (F anchor, F member) */
    cand *cs = malloc((size_t)F * T * sizeof(cand));
    char *used = calloc((size_t)F, 1);
    int st = MT_OK;
    if (!Za || !Zm || !C || !cs || !used) {
        st = mt_seterr(MT_ERR_NOMEM, "out of memory aligning %d hidden units", F);
        goto done;
    }
    standardize(anchor_act, n, F, Za);
    standardize(member_act, n, F, Zm);
    be->ops->gemm_f32(be, 1, 0, F, F, n, 1.0f, Za, F, Zm, F, 0.0f, C, F);
    for (int a = 0; a < F; a++) {
        const float *row = C + (size_t)a * F;
        cand *top = cs + (size_t)a * T;
        int nt = 0;
        for (int m = 0; m < F; m++) {
            float v = row[m];
            if (nt < T || v > top[nt - 1].c) {
                int p = nt < T ? nt++ : T - 1;
                while (p > 0 && top[p - 1].c < v) {
                    top[p] = top[p - 1];
                    p--;
                }
                top[p] = (cand){v, a, m};
            }
        }
    }
    qsort(cs, (size_t)F * T, sizeof(cand), cand_cmp);
    for (int j = 0; j < F; j++) perm[j] = -1;
    for (size_t i = 0; i < (size_t)F * T; i++)
        if (perm[cs[i].a] < 0 && !used[cs[i].m]) {
            perm[cs[i].a] = cs[i].m;
            used[cs[i].m] = 1;
        }
    for (int a = 0; a < F; a++) {
        if (perm[a] >= 0) continue;
        int best = -1;
        for (int m = 0; m < F; m++)
            if (!used[m] && (best < 0 || C[(size_t)a * F + m] > C[(size_t)a * F + best])) best = m;
        perm[a] = best;
        used[best] = 1;
    }
    /* One pass of pairwise swaps that raise the total correlation. */
    for (int a = 0; a < F; a++)
        for (int b = a + 1; b < F; b++) {
            float cur = C[(size_t)a * F + perm[a]] + C[(size_t)b * F + perm[b]];
            float sw = C[(size_t)a * F + perm[b]] + C[(size_t)b * F + perm[a]];
            if (sw > cur + 1e-6f) {
                int t = perm[a];
                perm[a] = perm[b];
                perm[b] = t;
            }
        }
done:
    free(Za);
    free(Zm);
    free(C);
    free(cs);
    free(used);
    return st;
}

void mt_merge_moe_forward(const float *router, const float *const *w1, const float *const *w3,
                          const float *const *w2, int E, int top_k, int H, int F, const float *x, int n, float *y) {
    float *yo = malloc((size_t)H * sizeof(float));
    double *p = malloc((size_t)E * sizeof(double));
    int *tk = malloc((size_t)top_k * sizeof(int));
    if (!yo || !p || !tk) {
        memset(y, 0, (size_t)n * H * sizeof(float));
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * H;
        double mx = -DBL_MAX, s = 0;
        for (int e = 0; e < E; e++) {
            double v = 0;
            for (int j = 0; j < H; j++) v += (double)router[(size_t)e * H + j] * xi[j];
            p[e] = v;
            if (v > mx) mx = v;
        }
        for (int e = 0; e < E; e++) s += (p[e] = exp(p[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= s;
        double gs = 0;
        for (int k = 0; k < top_k; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int q = 0; q < k; q++) taken |= tk[q] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            tk[k] = best;
            gs += p[best];
        }
        float *yi = y + (size_t)i * H;
        memset(yi, 0, (size_t)H * sizeof(float));
        for (int k = 0; k < top_k; k++) {
            mt_merge_expert_forward(w1[tk[k]], w3[tk[k]], w2[tk[k]], H, F, xi, 1, yo, NULL);
            float g = (float)(p[tk[k]] / gs);
            for (int j = 0; j < H; j++) yi[j] += g * yo[j];
        }
    }
done:
    free(yo);
    free(p);
    free(tk);
}

int merge_cluster_average_linkage(const double *D, int E, int K, int *assign) {
    if (K < 1 || K > E) return mt_seterr(MT_ERR_ARG, "cannot cluster %d experts into %d groups", E, K);
    int *cl = malloc((size_t)E * sizeof(int));
    int *size = malloc((size_t)E * sizeof(int));
    if (!cl || !size) {
        free(cl);
        free(size);
        return mt_seterr(MT_ERR_NOMEM, "out of memory clustering experts");
    }
    for (int e = 0; e < E; e++) cl[e] = e, size[e] = 1;
    for (int nc = E; nc > K; nc--) {
        int ba = -1, bb = -1;
        double bd = DBL_MAX;
        for (int a = 0; a < E; a++) {
            if (!size[a]) continue;
            for (int b = a + 1; b < E; b++) {
                if (!size[b]) continue;
                double s = 0;
                for (int i = 0; i < E; i++)
                    if (cl[i] == a)
                        for (int j = 0; j < E; j++)
                            if (cl[j] == b) s += D[(size_t)i * E + j];
                s /= (double)size[a] * size[b];
                if (s < bd) bd = s, ba = a, bb = b;
            }
        }
        for (int i = 0; i < E; i++)
            if (cl[i] == bb) cl[i] = ba;
        size[ba] += size[bb];
        size[bb] = 0;
    }
    int next = 0;
    int *map = size; /* reuse: cluster id -> output index */
    for (int e = 0; e < E; e++) map[e] = -1;
    for (int e = 0; e < E; e++) {
        if (map[cl[e]] < 0) map[cl[e]] = next++;
        assign[e] = map[cl[e]];
    }
    free(cl);
    free(size);
    return MT_OK;
}

void merge_weighted_average(const float *const *w1, const float *const *w3, const float *const *w2,
                            const int *const *perms, const double *wts, int nm, int H, int F, float *o1, float *o3,
                            float *o2) {
    memset(o1, 0, (size_t)F * H * sizeof(float));
    memset(o3, 0, (size_t)F * H * sizeof(float));
    memset(o2, 0, (size_t)H * F * sizeof(float));
    for (int m = 0; m < nm; m++) {
        const int *pm = perms ? perms[m] : NULL;
        float w = (float)wts[m];
        for (int j = 0; j < F; j++) {
            int s = pm ? pm[j] : j;
            const float *a = w1[m] + (size_t)s * H, *b = w3[m] + (size_t)s * H;
            float *d1 = o1 + (size_t)j * H, *d3 = o3 + (size_t)j * H;
            for (int c = 0; c < H; c++) {
                d1[c] += w * a[c];
                d3[c] += w * b[c];
            }
        }
        for (int r = 0; r < H; r++) {
            const float *src = w2[m] + (size_t)r * F;
            float *dst = o2 + (size_t)r * F;
            for (int j = 0; j < F; j++) dst[j] += w * src[pm ? pm[j] : j];
        }
    }
}

int merge_fit_router(const float *X, const float *T, int n, int H, int K, double lambda, float *R, double *rmse) {
    mt_backend *be = mt_backend_default();
    float *G = malloc((size_t)H * H * sizeof(float));   /* X^T X (H, H) */
    float *B = malloc((size_t)H * K * sizeof(float));   /* X^T T (H, K) */
    double *Gd = malloc((size_t)H * H * sizeof(double));
    double *Bd = malloc((size_t)H * K * sizeof(double)); /* column-major (H, K) for LAPACK */
    float *P = malloc((size_t)n * K * sizeof(float));
    int st = MT_OK;
    if (!G || !B || !Gd || !Bd || !P) {
        st = mt_seterr(MT_ERR_NOMEM, "out of memory fitting the router");
        goto done;
    }
    be->ops->gemm_f32(be, 1, 0, H, H, n, 1.0f, X, H, X, H, 0.0f, G, H);
    be->ops->gemm_f32(be, 1, 0, H, K, n, 1.0f, X, H, T, K, 0.0f, B, K);
    double tr = 0;
    for (int i = 0; i < H; i++) tr += G[(size_t)i * H + i];
    double reg = lambda * (tr / H > 0 ? tr / H : 1.0);
    for (int i = 0; i < H; i++)
        for (int j = 0; j < H; j++) Gd[(size_t)j * H + i] = G[(size_t)i * H + j] + (i == j ? reg : 0.0);
    for (int i = 0; i < H; i++)
        for (int k = 0; k < K; k++) Bd[(size_t)k * H + i] = B[(size_t)i * K + k];
    /* Cholesky solve of the (regularised) normal equations. */
    int info = be->ops->posv_f64(be, 'L', H, K, Gd, H, Bd, H);
    if (info != 0) {
        st = mt_seterr(MT_ERR_INTERNAL, "router fit: normal equations not positive definite (info %d)", info);
        goto done;
    }
    for (int k = 0; k < K; k++)
        for (int i = 0; i < H; i++) R[(size_t)k * H + i] = (float)Bd[(size_t)k * H + i];
    be->ops->gemm_f32(be, 0, 1, n, K, H, 1.0f, X, H, R, H, 0.0f, P, K);
    double s = 0;
    for (size_t i = 0; i < (size_t)n * K; i++) s += ((double)P[i] - T[i]) * ((double)P[i] - T[i]);
    if (rmse) *rmse = sqrt(s / ((double)n * K));
done:
    free(G);
    free(B);
    free(Gd);
    free(Bd);
    free(P);
    return st;
}

int merge_refine_router(const float *X, const float *Q, int n, int H, int K, int steps, float lr, float *R) {
    mt_backend *be = mt_backend_default();
    float *P = malloc((size_t)n * K * sizeof(float));
    float *g = malloc((size_t)K * H * sizeof(float));
    float *m1 = calloc((size_t)K * H, sizeof(float));
    float *m2 = calloc((size_t)K * H, sizeof(float));
    int st = MT_OK;
    if (!P || !g || !m1 || !m2) {
        st = mt_seterr(MT_ERR_NOMEM, "out of memory refining the router");
        goto done;
    }
    for (int t = 1; t <= steps; t++) {
        be->ops->gemm_f32(be, 0, 1, n, K, H, 1.0f, X, H, R, H, 0.0f, P, K);
        for (int i = 0; i < n; i++) {
            float *p = P + (size_t)i * K;
            float mx = -FLT_MAX, s = 0;
            for (int k = 0; k < K; k++) mx = p[k] > mx ? p[k] : mx;
            for (int k = 0; k < K; k++) s += (p[k] = expf(p[k] - mx));
            for (int k = 0; k < K; k++) p[k] = (p[k] / s - Q[(size_t)i * K + k]) / (float)n;
        }
        /* dL/dR (K, H) = (P - Q)^T X / n */
        be->ops->gemm_f32(be, 1, 0, K, H, n, 1.0f, P, K, X, H, 0.0f, g, H);
        const float b1 = 0.9f, b2 = 0.999f;
        float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
        for (size_t i = 0; i < (size_t)K * H; i++) {
            m1[i] = b1 * m1[i] + (1 - b1) * g[i];
            m2[i] = b2 * m2[i] + (1 - b2) * g[i] * g[i];
            R[i] -= lr * (m1[i] / c1) / (sqrtf(m2[i] / c2) + 1e-8f);
        }
    }
done:
    free(P);
    free(g);
    free(m1);
    free(m2);
    return st;
}
