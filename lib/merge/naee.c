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
 * otherwise (one elimination path from E down to top_k serves every K).
 * Kept sets are byte arrays (keep[e] = 1), so E has no bound here; memory is
 * S E^2 doubles for G, less than the (E, S, H) expert outputs it is built from
 * whenever 2 E < H. The same search at every K gives the per-layer sensitivity that
 * `--budget` spreads the experts by. */
#include "merge_impl.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

struct merge_naee {
    int E, S, top_k;
    int32_t *order; /* (S, E) experts by descending probability (ties: lower index first) */
    float *p;       /* (S, E) probabilities in that order                                   */
    double *G;      /* (S, E, E) Gram matrices of the expert outputs per token              */
    double energy;  /* sum_i |y_i|^2 of the original layer output                           */
    /* the greedy elimination path (computed on first use): removed[j] is the
     * (j+1)-th expert dropped from the full set, path_err[K] the error with K kept */
    int32_t *removed;
    double *path_err;
};

int merge_naee_init(merge_naee **out, const float *Y, const float *P, int E, int S, int H, int top_k) {
    *out = NULL;
    if (E < 1 || S < 1 || H < 1 || top_k < 1 || top_k > E)
        return mt_seterr(MT_ERR_ARG, "naee: bad shape (E %d, S %d, H %d, top_k %d)", E, S, H, top_k);
    if (top_k > MT_NAEE_MAX_TOPK)
        return mt_seterr(MT_ERR_UNSUPPORTED, "naee: top_k %d; the search handles at most %d experts per token", top_k,
                         MT_NAEE_MAX_TOPK);
    merge_naee *n = calloc(1, sizeof *n);
    if (!n) return mt_seterr(MT_ERR_NOMEM, "naee: out of memory");
    n->E = E, n->S = S, n->top_k = top_k;
    n->order = malloc((size_t)S * E * sizeof(int32_t));
    n->p = malloc((size_t)S * E * sizeof(float));
    n->G = malloc((size_t)S * E * E * sizeof(double));
    if (!n->order || !n->p || !n->G) {
        merge_naee_free(n);
        return mt_seterr(MT_ERR_NOMEM, "naee: out of memory for %d x %d x %d Gram matrices (%.1f GiB)", S, E, E,
                         (double)S * E * E * sizeof(double) / (1024.0 * 1024 * 1024));
    }
    for (int i = 0; i < S; i++) {
        const float *pi = P + (size_t)i * E;
        int32_t *o = n->order + (size_t)i * E;
        for (int e = 0; e < E; e++) { /* insertion sort, stable: ties keep the lower index first */
            int j = e;
            while (j > 0 && pi[o[j - 1]] < pi[e]) {
                o[j] = o[j - 1];
                j--;
            }
            o[j] = e;
        }
        for (int r = 0; r < E; r++) n->p[(size_t)i * E + r] = pi[o[r]];
        double *g = n->G + (size_t)i * E * E;
        for (int a = 0; a < E; a++) {
            const float *ya = Y + ((size_t)a * S + i) * H;
            for (int b = a; b < E; b++) {
                const float *yb = Y + ((size_t)b * S + i) * H;
                double s = 0;
                for (int j = 0; j < H; j++) s += (double)ya[j] * yb[j];
                g[(size_t)a * E + b] = g[(size_t)b * E + a] = s;
            }
        }
        double ks = 0, en = 0;
        for (int r = 0; r < top_k; r++) ks += n->p[(size_t)i * E + r];
        for (int r = 0; r < top_k; r++)
            for (int q = 0; q < top_k; q++)
                en += n->p[(size_t)i * E + r] * n->p[(size_t)i * E + q] / (ks * ks) * g[(size_t)o[r] * E + o[q]];
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
    free(n->removed);
    free(n->path_err);
    free(n);
}

double merge_naee_energy(const merge_naee *n) { return n->energy; }

/* Token i's error term added to *err: sel[0..k) are the ranks (ascending) of
 * the experts the pruned layer routes the token to, d = original gates -
 * gates over sel, d^T G_i d. */
static void token_error_add(const merge_naee *n, int i, const int *sel, double *err) {
    const int E = n->E, k = n->top_k;
    const int32_t *o = n->order + (size_t)i * E;
    const float *p = n->p + (size_t)i * E;
    int idx[2 * MT_NAEE_MAX_TOPK];
    double c[2 * MT_NAEE_MAX_TOPK], ks = 0, ns = 0;
    int m = 0;
    for (int r = 0; r < k; r++) ks += p[r];
    for (int j = 0; j < k; j++) ns += p[sel[j]];
    for (int r = 0, j = 0; r < k || j < k;) {
        /* walk the union of ranks 0..k-1 and sel in rank order */
        const int rr = j < k && (r >= k || sel[j] < r) ? sel[j] : r;
        double d = rr < k ? p[rr] / ks : 0;
        if (j < k && sel[j] == rr) {
            d -= ns > 0 ? p[rr] / ns : 0;
            j++;
        }
        if (rr == r) r++;
        if (d != 0) idx[m] = o[rr], c[m++] = d;
    }
    const double *g = n->G + (size_t)i * E * E;
    for (int a = 0; a < m; a++) {
        double s = 0;
        for (int b = 0; b < m; b++) s += c[b] * g[(size_t)idx[a] * E + idx[b]];
        *err += c[a] * s;
    }
}

/* The ranks of the first `want` kept experts of token i; returns how many
 * were found. */
static int kept_ranks(const merge_naee *n, int i, const uint8_t *keep, int want, int *sel) {
    const int32_t *o = n->order + (size_t)i * n->E;
    int got = 0;
    for (int r = 0; r < n->E && got < want; r++)
        if (keep[o[r]]) sel[got++] = r;
    return got;
}

double merge_naee_error(const merge_naee *n, const uint8_t *keep) {
    const int k = n->top_k;
    int sel[MT_NAEE_MAX_TOPK];
    double err = 0;
    for (int i = 0; i < n->S; i++) {
        if (kept_ranks(n, i, keep, k, sel) < k) return -1; /* fewer than top_k kept: not a set */
        if (sel[k - 1] == k - 1) continue; /* its top_k all kept: output unchanged */
        token_error_add(n, i, sel, &err);
    }
    return err > 0 ? err : 0;
}

/* Greedy backward elimination from the full set down to top_k experts:
 * each step drops the expert whose removal leaves the least error (ties:
 * the lowest index). Removing expert e changes only the tokens that route
 * to e under the current set, so a step costs one pass over the tokens
 * (O(S (E + top_k^3))) instead of one error evaluation per candidate. */
static int naee_greedy_path(merge_naee *n) {
    const int E = n->E, k = n->top_k, S = n->S;
    n->removed = malloc((size_t)E * sizeof *n->removed);
    n->path_err = malloc((size_t)(E + 1) * sizeof *n->path_err);
    uint8_t *keep = malloc((size_t)E);
    double *delta = malloc((size_t)E * sizeof *delta);
    if (!n->removed || !n->path_err || !keep || !delta) {
        free(keep), free(delta);
        free(n->removed), free(n->path_err);
        n->removed = NULL, n->path_err = NULL;
        return mt_seterr(MT_ERR_NOMEM, "naee: out of memory for the greedy search");
    }
    memset(keep, 1, (size_t)E);
    n->path_err[E] = 0;
    int sel[MT_NAEE_MAX_TOPK + 1], alt[MT_NAEE_MAX_TOPK];
    for (int have = E; have > k; have--) {
        double base = 0;
        for (int e = 0; e < E; e++) delta[e] = 0;
        for (int i = 0; i < S; i++) {
            const int32_t *o = n->order + (size_t)i * E;
            kept_ranks(n, i, keep, k + 1, sel); /* have > k: k + 1 kept experts exist */
            double cur = 0;
            if (sel[k - 1] != k - 1) token_error_add(n, i, sel, &cur);
            base += cur;
            for (int j = 0; j < k; j++) { /* without sel[j], the next kept expert takes its place */
                for (int q = 0, t = 0; q <= k; q++)
                    if (q != j) alt[t++] = sel[q];
                double v = 0;
                if (alt[k - 1] != k - 1) token_error_add(n, i, alt, &v);
                delta[o[sel[j]]] += v - cur;
            }
        }
        int best = -1;
        double bv = DBL_MAX;
        for (int e = 0; e < E; e++)
            if (keep[e] && base + delta[e] < bv) bv = base + delta[e], best = e;
        keep[best] = 0;
        n->removed[E - have] = best;
        n->path_err[have - 1] = merge_naee_error(n, keep);
    }
    free(keep);
    free(delta);
    return MT_OK;
}

static double n_choose_k(int n, int k) {
    double c = 1;
    for (int i = 1; i <= k; i++) c = c * (n - k + i) / i;
    return c;
}

int merge_naee_search(merge_naee *n, int K, uint8_t *keep, double *err) {
    const int E = n->E;
    if (K < n->top_k || K > E) return mt_seterr(MT_ERR_ARG, "naee: cannot keep %d of %d experts (top_k %d)", K, E, n->top_k);
    double be = 0;
    memset(keep, 1, (size_t)E);
    if (K == E) {
        /* nothing to choose */
    } else if (n_choose_k(E, K) <= MT_NAEE_EXHAUSTIVE_MAX) {
        int *c = malloc((size_t)K * sizeof *c);
        uint8_t *m = calloc((size_t)E, 1);
        if (!c || !m) {
            free(c), free(m);
            return mt_seterr(MT_ERR_NOMEM, "naee: out of memory");
        }
        for (int i = 0; i < K; i++) c[i] = i;
        be = DBL_MAX;
        for (;;) {
            for (int i = 0; i < K; i++) m[c[i]] = 1;
            double e = merge_naee_error(n, m);
            if (e < be) be = e, memcpy(keep, m, (size_t)E);
            for (int i = 0; i < K; i++) m[c[i]] = 0;
            int i = K - 1; /* next combination in lexicographic order */
            while (i >= 0 && c[i] == E - K + i) i--;
            if (i < 0) break;
            c[i]++;
            for (int j = i + 1; j < K; j++) c[j] = c[j - 1] + 1;
        }
        free(c), free(m);
    } else {
        int st;
        if (!n->removed && (st = naee_greedy_path(n))) return st;
        for (int j = 0; j < E - K; j++) keep[n->removed[j]] = 0;
        be = n->path_err[K];
    }
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
