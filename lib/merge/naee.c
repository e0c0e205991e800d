/* naee.c — NAEE-style pruning ("Not All Experts are Equal", Lu et al. 2024):
 * per layer, choose the K experts to keep that minimise the reconstruction
 * error of the MoE layer's output on the calibration sample, with the router
 * rows of the kept experts sliced (softmax over the kept, top_k of them,
 * renormalised) exactly as the pruned checkpoint routes.
 *
 * For token i the layer output is a combination of at most top_k expert
 * outputs, so the error of a kept set is, per token, d^T G_i d with d the
 * difference of the two gate vectors (at most 2 top_k non-zeros) and
 * G_i (E, E) the Gram matrix of the experts' outputs on that token. G is
 * computed once (S E^2 doubles: 2 MiB for 8 experts and 4096 tokens), after
 * which a candidate set costs O(S top_k^2) — cheap enough to enumerate every
 * subset when C(E, K) <= 5000 and to run greedy backward elimination
 * otherwise. The same search at every K gives the per-layer sensitivity that
 * `--budget` spreads the experts by. */
#include "merge_impl.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

struct merge_naee {
    int E, S, top_k;
    int8_t *order;  /* (S, E) experts by descending probability (ties: lower index first) */
    float *p;       /* (S, E) probabilities in that order                                   */
    double *G;      /* (S, E, E) Gram matrices of the expert outputs per token              */
    double energy;  /* sum_i |y_i|^2 of the original layer output                           */
};

int merge_naee_init(merge_naee **out, const float *Y, const float *P, int E, int S, int H, int top_k) {
    *out = NULL;
    if (E < 1 || E > 64 || S < 1 || H < 1 || top_k < 1 || top_k > E)
        return mt_seterr(MT_ERR_ARG, "naee: bad shape (E %d, S %d, H %d, top_k %d)", E, S, H, top_k);
    merge_naee *n = calloc(1, sizeof *n);
    if (!n) return mt_seterr(MT_ERR_NOMEM, "naee: out of memory");
    n->E = E, n->S = S, n->top_k = top_k;
    n->order = malloc((size_t)S * E);
    n->p = malloc((size_t)S * E * sizeof(float));
    n->G = malloc((size_t)S * E * E * sizeof(double));
    if (!n->order || !n->p || !n->G) {
        merge_naee_free(n);
        return mt_seterr(MT_ERR_NOMEM, "naee: out of memory for %d x %d x %d Gram matrices", S, E, E);
    }
    for (int i = 0; i < S; i++) {
        const float *pi = P + (size_t)i * E;
        int8_t *o = n->order + (size_t)i * E;
        for (int e = 0; e < E; e++) { /* insertion sort, stable: ties keep the lower index first */
            int j = e;
            while (j > 0 && pi[o[j - 1]] < pi[e]) {
                o[j] = o[j - 1];
                j--;
            }
            o[j] = (int8_t)e;
        }
        for (int r = 0; r < E; r++) n->p[(size_t)i * E + r] = pi[o[r]];
        double *g = n->G + (size_t)i * E * E;
        for (int a = 0; a < E; a++) {
            const float *ya = Y + ((size_t)a * S + i) * H;
            for (int b = a; b < E; b++) {
                const float *yb = Y + ((size_t)b * S + i) * H;
                double s = 0;
                for (int j = 0; j < H; j++) s += (double)ya[j] * yb[j];
                g[a * E + b] = g[b * E + a] = s;
            }
        }
        double ks = 0, en = 0;
        for (int r = 0; r < top_k; r++) ks += n->p[(size_t)i * E + r];
        for (int r = 0; r < top_k; r++)
            for (int q = 0; q < top_k; q++)
                en += n->p[(size_t)i * E + r] * n->p[(size_t)i * E + q] / (ks * ks) * g[o[r] * E + o[q]];
        n->energy += en;
    }
    *out = n;
    return MT_OK;
}

void merge_naee_free(merge_naee *n) {
    if (!n) return;
    free(n->order);
    free(n->p);
    free(n->G);
    free(n);
}

double merge_naee_energy(const merge_naee *n) { return n->energy; }

double merge_naee_error(const merge_naee *n, uint64_t keep) {
    const int E = n->E, k = n->top_k;
    double err = 0;
    int idx[128];
    double c[128];
    for (int i = 0; i < n->S; i++) {
        const int8_t *o = n->order + (size_t)i * E;
        const float *p = n->p + (size_t)i * E;
        int r = 0;
        while (r < k && (keep >> o[r] & 1)) r++;
        if (r == k) continue; /* its top_k all kept: output unchanged */
        /* d = original gates - gates over the kept set's top_k */
        double ks = 0, ns = 0;
        int m = 0, got = 0;
        for (r = 0; r < k; r++) ks += p[r];
        for (r = 0; r < E && got < k; r++)
            if (keep >> o[r] & 1) ns += p[r], got++;
        got = 0;
        for (r = 0; r < E && (r < k || got < k); r++) {
            double d = r < k ? p[r] / ks : 0;
            if (got < k && (keep >> o[r] & 1)) {
                d -= ns > 0 ? p[r] / ns : 0;
                got++;
            }
            if (d != 0) idx[m] = o[r], c[m++] = d;
        }
        const double *g = n->G + (size_t)i * E * E;
        for (int a = 0; a < m; a++) {
            double s = 0;
            for (int b = 0; b < m; b++) s += c[b] * g[idx[a] * E + idx[b]];
            err += c[a] * s;
        }
    }
    return err > 0 ? err : 0;
}

static double n_choose_k(int n, int k) {
    double c = 1;
    for (int i = 1; i <= k; i++) c = c * (n - k + i) / i;
    return c;
}

int merge_naee_search(const merge_naee *n, int K, uint64_t *keep, double *err) {
    const int E = n->E;
    if (K < n->top_k || K > E) return mt_seterr(MT_ERR_ARG, "naee: cannot keep %d of %d experts (top_k %d)", K, E, n->top_k);
    const uint64_t all = E == 64 ? ~0ull : (1ull << E) - 1;
    uint64_t best = all;
    double be = 0;
    if (K == E) {
        /* nothing to choose */
    } else if (n_choose_k(E, K) <= MT_NAEE_EXHAUSTIVE_MAX) {
        int c[64];
        for (int i = 0; i < K; i++) c[i] = i;
        be = DBL_MAX;
        for (;;) {
            uint64_t m = 0;
            for (int i = 0; i < K; i++) m |= 1ull << c[i];
            double e = merge_naee_error(n, m);
            if (e < be) be = e, best = m;
            int i = K - 1; /* next combination in lexicographic order */
            while (i >= 0 && c[i] == E - K + i) i--;
            if (i < 0) break;
            c[i]++;
            for (int j = i + 1; j < K; j++) c[j] = c[j - 1] + 1;
        }
    } else {
        /* greedy backward elimination: drop the expert whose removal costs least */
        for (int have = E; have > K; have--) {
            double bd = DBL_MAX;
            uint64_t bm = best;
            for (int e = 0; e < E; e++) {
                if (!(best >> e & 1)) continue;
                double v = merge_naee_error(n, best & ~(1ull << e));
                if (v < bd) bd = v, bm = best & ~(1ull << e);
            }
            best = bm, be = bd;
        }
    }
    *keep = best;
    if (err) *err = be;
    return MT_OK;
}

int merge_budget_allocate(const double *cost, int stride, const int *E, int L, int top_k, int budget, int *K) {
    const int C = stride;
    int lo = 0, hi = 0;
    for (int l = 0; l < L; l++) {
        if (E[l] < top_k || E[l] >= stride)
            return mt_seterr(MT_ERR_ARG, "--budget: layer %d has %d experts", l, E[l]);
        lo += top_k, hi += E[l];
    }
    if (L < 1 || budget < lo || budget > hi)
        return mt_seterr(MT_ERR_ARG, "--budget %d: must be between %d (top_k %d per layer) and %d (all experts)", budget,
                         lo, top_k, hi);
    /* best[l][b]: least cost of layers 0..l-1 using b experts; choice[l][b]: K of layer l-1 */
    const size_t B = (size_t)budget + 1;
    double *best = malloc((size_t)(L + 1) * B * sizeof(double));
    int *choice = malloc((size_t)(L + 1) * B * sizeof(int));
    if (!best || !choice) {
        free(best);
        free(choice);
        return mt_seterr(MT_ERR_NOMEM, "--budget: out of memory");
    }
    for (size_t b = 0; b < B; b++) best[b] = b == 0 ? 0 : DBL_MAX;
    for (int l = 0; l < L; l++) {
        double *cur = best + (size_t)(l + 1) * B;
        const double *prev = best + (size_t)l * B;
        for (size_t b = 0; b < B; b++) {
            cur[b] = DBL_MAX;
            choice[(size_t)(l + 1) * B + b] = -1;
            for (int k = top_k; k <= E[l] && (size_t)k <= b; k++) {
                if (prev[b - k] == DBL_MAX) continue;
                double v = prev[b - k] + cost[(size_t)l * C + k];
                if (v < cur[b]) cur[b] = v, choice[(size_t)(l + 1) * B + b] = k;
            }
        }
    }
    size_t b = (size_t)budget;
    for (int l = L - 1; l >= 0; l--) {
        K[l] = choice[(size_t)(l + 1) * B + b];
        b -= (size_t)K[l];
    }
    free(best);
    free(choice);
    return MT_OK;
}
