/* test_merge.c — expert merging: properties of the math (permuting hidden
 * units keeps an expert's function; alignment recovers a planted
 * permutation exactly; merging identical-up-to-permutation experts with
 * averaged router rows reproduces the layer; least squares recovers a planted
 * router; clustering finds planted groups; the NAEE search finds a planted
 * best kept set and its error matches a direct computation; the budget
 * allocation is optimal and within bounds), option errors with no output,
 * and on the bundled model: layers left at their expert count come out
 * bit-identical, merged layers have K experts and the output loads;
 * --router alias over planted identical experts reproduces the logits. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../lib/merge/merge_impl.h"
#include "moetool/mt_runtime.h"
#include "moetool/mt_write.h"
#include "testutil.h"

static uint64_t g_rng = 88172645463325252ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
static void fill(float *a, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) a[i] = frand() * scale;
}
static void random_perm(int *p, int n) {
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)((frand() * 0.5f + 0.5f) * (i + 1));
        if (j > i) j = i;
        int t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}
static float maxdiff(const float *a, const float *b, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

enum { H = 24, F = 64, N = 512 };

static void test_permute_keeps_function(void **state) {
    (void)state;
    float *w1 = malloc(sizeof(float) * F * H), *w3 = malloc(sizeof(float) * F * H), *w2 = malloc(sizeof(float) * H * F);
    float *x = malloc(sizeof(float) * N * H), *y0 = malloc(sizeof(float) * N * H), *y1 = malloc(sizeof(float) * N * H);
    int perm[F];
    fill(w1, F * H, 0.3f), fill(w3, F * H, 0.3f), fill(w2, H * F, 0.3f), fill(x, N * H, 1.0f);
    mt_merge_expert_forward(w1, w3, w2, H, F, x, N, y0, NULL);
    random_perm(perm, F);
    assert_int_equal(mt_merge_permute_expert(w1, w3, w2, H, F, perm), MT_OK);
    mt_merge_expert_forward(w1, w3, w2, H, F, x, N, y1, NULL);
    float d = maxdiff(y0, y1, (size_t)N * H);
    assert_true(d < 1e-5f);
    /* and the permutation did move things: w1 differs */
    int same = 1;
    for (int j = 0; j < F; j++) same &= perm[j] == j;
    assert_false(same);
    /* an invalid permutation is an error */
    perm[0] = perm[1];
    assert_int_equal(mt_merge_permute_expert(w1, w3, w2, H, F, perm), MT_ERR_ARG);
    free(w1), free(w3), free(w2), free(x), free(y0), free(y1);
}

static void test_align_recovers_planted_permutation(void **state) {
    (void)state;
    float *a1 = malloc(sizeof(float) * F * H), *a3 = malloc(sizeof(float) * F * H), *a2 = malloc(sizeof(float) * H * F);
    float *b1 = malloc(sizeof(float) * F * H), *b3 = malloc(sizeof(float) * F * H), *b2 = malloc(sizeof(float) * H * F);
    float *x = malloc(sizeof(float) * N * H), *y = malloc(sizeof(float) * N * H);
    float *aa = malloc(sizeof(float) * N * F), *ba = malloc(sizeof(float) * N * F);
    int planted[F], found[F];
    fill(a1, F * H, 0.3f), fill(a3, F * H, 0.3f), fill(a2, H * F, 0.3f), fill(x, N * H, 1.0f);
    memcpy(b1, a1, sizeof(float) * F * H), memcpy(b3, a3, sizeof(float) * F * H), memcpy(b2, a2, sizeof(float) * H * F);
    random_perm(planted, F);
    assert_int_equal(mt_merge_permute_expert(b1, b3, b2, H, F, planted), MT_OK);
    /* member unit j = anchor unit planted[j], plus small noise */
    for (int i = 0; i < F * H; i++) b1[i] += 0.01f * frand(), b3[i] += 0.01f * frand();
    mt_merge_expert_forward(a1, a3, a2, H, F, x, N, y, aa);
    mt_merge_expert_forward(b1, b3, b2, H, F, x, N, y, ba);
    assert_int_equal(mt_merge_align(aa, ba, N, F, found), MT_OK);
    for (int j = 0; j < F; j++) assert_int_equal(planted[found[j]], j);
    /* aligned back, the member's weights equal the anchor's up to the noise */
    assert_int_equal(mt_merge_permute_expert(b1, b3, b2, H, F, found), MT_OK);
    assert_true(maxdiff(a2, b2, (size_t)H * F) == 0.0f);
    assert_true(maxdiff(a1, b1, (size_t)F * H) <= 0.01f);
    free(a1), free(a3), free(a2), free(b1), free(b3), free(b2), free(x), free(y), free(aa), free(ba);
}

/* Four experts in two pairs; each pair is one function stored with its
 * hidden units in two orders, and both members have the same router row.
 * Aligning, averaging (frequency weights) and averaging the router rows
 * gives a 2-expert layer with the same output (top-1 routing). */
static void test_merge_identical_pairs_reproduces_layer(void **state) {
    (void)state;
    enum { E = 4, K = 2 };
    float *w[3][E], *m[3][K], R[E * H], RK[K * H];
    float *x = malloc(sizeof(float) * N * H), *y0 = malloc(sizeof(float) * N * H), *y1 = malloc(sizeof(float) * N * H);
    float *act[2] = {malloc(sizeof(float) * N * F), malloc(sizeof(float) * N * F)};
    float *scratch = malloc(sizeof(float) * N * H);
    for (int q = 0; q < 3; q++) {
        for (int e = 0; e < E; e++) w[q][e] = malloc(sizeof(float) * F * H);
        for (int k = 0; k < K; k++) m[q][k] = malloc(sizeof(float) * F * H);
    }
    fill(x, N * H, 1.0f);
    for (int p = 0; p < 2; p++) {
        int a = 2 * p, b = 2 * p + 1, perm[F];
        for (int q = 0; q < 3; q++) fill(w[q][a], F * H, 0.3f);
        for (int q = 0; q < 3; q++) memcpy(w[q][b], w[q][a], sizeof(float) * F * H);
        random_perm(perm, F);
        assert_int_equal(mt_merge_permute_expert(w[0][b], w[1][b], w[2][b], H, F, perm), MT_OK);
        fill(R + a * H, H, 1.0f);
        memcpy(R + b * H, R + a * H, sizeof(float) * H);
    }
    mt_merge_moe_forward(R, (const float *const *)w[0], (const float *const *)w[1], (const float *const *)w[2], E, 1,
                         H, F, x, N, y0);
    for (int p = 0; p < 2; p++) {
        int a = 2 * p, b = 2 * p + 1, pa[F], pb[F];
        for (int j = 0; j < F; j++) pa[j] = j;
        mt_merge_expert_forward(w[0][a], w[1][a], w[2][a], H, F, x, N, scratch, act[0]);
        mt_merge_expert_forward(w[0][b], w[1][b], w[2][b], H, F, x, N, scratch, act[1]);
        assert_int_equal(mt_merge_align(act[0], act[1], N, F, pb), MT_OK);
        const float *m1[2] = {w[0][a], w[0][b]}, *m3[2] = {w[1][a], w[1][b]}, *m2[2] = {w[2][a], w[2][b]};
        const int *pm[2] = {pa, pb};
        const double wts[2] = {0.3, 0.7};
        merge_weighted_average(m1, m3, m2, pm, wts, 2, H, F, m[0][p], m[1][p], m[2][p]);
        for (int j = 0; j < H; j++) RK[p * H + j] = 0.5f * (R[a * H + j] + R[b * H + j]);
    }
    mt_merge_moe_forward(RK, (const float *const *)m[0], (const float *const *)m[1], (const float *const *)m[2], K, 1,
                         H, F, x, N, y1);
    assert_true(maxdiff(y0, y1, (size_t)N * H) < 1e-4f);
    for (int q = 0; q < 3; q++) {
        for (int e = 0; e < E; e++) free(w[q][e]);
        for (int k = 0; k < K; k++) free(m[q][k]);
    }
    free(x), free(y0), free(y1), free(act[0]), free(act[1]), free(scratch);
}

static void test_router_fit_recovers_planted(void **state) {
    (void)state;
    enum { K = 5 };
    float *X = malloc(sizeof(float) * N * H), *T = malloc(sizeof(float) * N * K), Rt[K * H], Rf[K * H];
    fill(X, N * H, 1.0f);
    fill(Rt, K * H, 1.0f);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int j = 0; j < H; j++) s += (double)X[i * H + j] * Rt[k * H + j];
            T[i * K + k] = (float)s;
        }
    double rmse = -1;
    assert_int_equal(merge_fit_router(X, T, N, H, K, 1e-9, Rf, &rmse), MT_OK);
    assert_true(maxdiff(Rt, Rf, K * H) < 1e-3f);
    assert_true(rmse >= 0 && rmse < 1e-3);
    free(X), free(T);
}

static void test_cluster_planted_groups(void **state) {
    (void)state;
    /* points on a line: {0, 0.1}, {5, 5.2, 5.1}, {9} */
    const double pos[6] = {0, 5, 0.1, 9, 5.2, 5.1};
    double D[36];
    int as[6];
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 6; b++) D[a * 6 + b] = fabs(pos[a] - pos[b]);
    assert_int_equal(merge_cluster_average_linkage(D, 6, 3, as), MT_OK);
    const int want[6] = {0, 1, 0, 2, 1, 1};
    for (int i = 0; i < 6; i++) assert_int_equal(as[i], want[i]);
    assert_int_equal(merge_cluster_average_linkage(D, 6, 7, as), MT_ERR_ARG);
}

static void test_parse_layers(void **state) {
    (void)state;
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    assert_int_equal(mt_merge_parse_layers(&o, "0-1:6,2-3:4", 4), MT_OK);
    assert_int_equal(o.layer_experts[0], 6);
    assert_int_equal(o.layer_experts[1], 6);
    assert_int_equal(o.layer_experts[2], 4);
    assert_int_equal(o.layer_experts[3], 4);
    assert_int_equal(o.n_layer_experts, 4);
    /* a later spec grows the array; the layers between stay 0 */
    assert_int_equal(mt_merge_parse_layers(&o, "9:3", 0), MT_OK);
    assert_int_equal(o.n_layer_experts, 10);
    assert_int_equal(o.layer_experts[3], 4);
    assert_int_equal(o.layer_experts[5], 0);
    assert_int_equal(o.layer_experts[9], 3);
    mt_merge_opts_free(&o);
    assert_null(o.layer_experts);
    const char *bad[] = {"", "0-1", "1-0:4", "a:4", "0:4,", "0:4;1:2", "0:0", "0:-1", "0:4x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        mt_merge_opts_default(&o);
        assert_int_equal(mt_merge_parse_layers(&o, bad[i], 4), MT_ERR_ARG);
        mt_merge_opts_free(&o);
    }
    assert_int_equal(mt_merge_parse_layers(&o, "0-4:6", 4), MT_ERR_ARG);
    assert_int_equal(mt_merge_parse_layers(&o, "0-511:6", 0), MT_OK); /* MT_MAX_LAYERS bounds a spec without a model */
    assert_int_equal(mt_merge_parse_layers(&o, "512:6", 0), MT_ERR_ARG);
    mt_merge_opts_free(&o);
    assert_int_equal(mt_merge_method_from_name("hc-smoe"), MT_MERGE_HC_SMOE);
    assert_int_equal(mt_merge_method_from_name("nope"), -1);
    assert_int_equal(mt_merge_router_from_name("fit"), MT_MERGE_ROUTER_FIT);
}

/* ---- NAEE search ----------------------------------------------------------- */

/* Direct layer-output error of a kept set: per token, the top_k of the kept
 * experts by probability, renormalised, against the top_k of all. */
static double g_ref_energy; /* sum of |original output|^2, set by naee_reference */
static double naee_reference_b(const float *Y, const float *P, int E, int S, int Hd, int top_k, const uint8_t *keep) {
    double err = 0;
    g_ref_energy = 0;
    for (int i = 0; i < S; i++) {
        const float *p = P + (size_t)i * E;
        double y0[64] = {0}, y1[64] = {0}; /* Hd <= 64 */
        for (int pass = 0; pass < 2; pass++) {
            double *y = pass ? y1 : y0;
            int used[256] = {0}, sel[256]; /* E <= 256 */
            double sum = 0;
            for (int k = 0; k < top_k; k++) {
                int best = -1;
                for (int e = 0; e < E; e++)
                    if (!used[e] && (!pass || keep[e]) && (best < 0 || p[e] > p[best])) best = e;
                used[best] = 1, sel[k] = best, sum += p[best];
            }
            for (int k = 0; k < top_k; k++)
                for (int j = 0; j < Hd; j++) y[j] += p[sel[k]] / sum * Y[((size_t)sel[k] * S + i) * Hd + j];
        }
        for (int j = 0; j < Hd; j++) err += (y0[j] - y1[j]) * (y0[j] - y1[j]), g_ref_energy += y0[j] * y0[j];
    }
    return err;
}

static double naee_reference(const float *Y, const float *P, int E, int S, int Hd, int top_k, uint64_t keep) {
    uint8_t b[64];
    for (int e = 0; e < E; e++) b[e] = keep >> e & 1;
    return naee_reference_b(Y, P, E, S, Hd, top_k, b);
}

/* Probabilities from logits (S, E), in place. */
static void softmax_rows(float *P, int S, int E) {
    for (int i = 0; i < S; i++) {
        float *p = P + (size_t)i * E, mx = p[0], s = 0;
        for (int e = 1; e < E; e++) mx = fmaxf(mx, p[e]);
        for (int e = 0; e < E; e++) s += (p[e] = expf(p[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= s;
    }
}

/* The search with kept sets as bit masks (E <= 64 in these tests). */
static double naee_err64(const merge_naee *n, uint64_t m) {
    uint8_t b[64];
    for (int e = 0; e < 64; e++) b[e] = m >> e & 1;
    return merge_naee_error(n, b);
}
static int naee_search64(merge_naee *n, int E, int K, uint64_t *keep, double *err) {
    uint8_t b[64];
    const int st = merge_naee_search(n, K, b, err);
    *keep = 0;
    for (int e = 0; !st && e < E; e++) *keep |= (uint64_t)b[e] << e;
    return st;
}

static int popcount64(uint64_t m) {
    int n = 0;
    for (; m; m &= m - 1) n++;
    return n;
}

/* The search's error equals the direct computation for every kept set, and
 * the exhaustive search returns the argmin over all C(8, 5) sets. */
static void test_naee_error_matches_reference(void **state) {
    (void)state;
    enum { E = 8, S = 96, Hd = 8, TK = 2, K = 5 };
    float *Y = malloc(sizeof(float) * E * S * Hd), *P = malloc(sizeof(float) * S * E);
    fill(Y, (size_t)E * S * Hd, 1.0f);
    fill(P, (size_t)S * E, 2.0f);
    softmax_rows(P, S, E);
    merge_naee *nz = NULL;
    assert_int_equal(merge_naee_init(&nz, Y, P, E, S, Hd, TK), MT_OK);
    double best = 1e300, e0 = 0;
    uint64_t bm = 0, keep = 0;
    for (uint64_t m = 0; m < (1u << E); m++) {
        if (popcount64(m) < TK) continue;
        double ref = naee_reference(Y, P, E, S, Hd, TK, m), got = naee_err64(nz, m);
        assert_true(fabs(ref - got) <= 1e-6 * (1 + ref));
        if (popcount64(m) == K && ref < best - 1e-12) best = ref, bm = m;
    }
    /* the energy: the original output's squared norm */
    assert_true(fabs(g_ref_energy - merge_naee_energy(nz)) <= 1e-6 * g_ref_energy);
    assert_int_equal(naee_search64(nz, E, K, &keep, &e0), MT_OK);
    assert_int_equal(popcount64(keep), K);
    assert_true(fabs(e0 - best) <= 1e-9 * (1 + best));
    assert_true(keep == bm || fabs(naee_reference(Y, P, E, S, Hd, TK, keep) - best) <= 1e-9 * (1 + best));
    assert_int_equal(naee_search64(nz, E, 1, &keep, &e0), MT_ERR_ARG); /* K < top_k */
    assert_int_equal(naee_search64(nz, E, 9, &keep, &e0), MT_ERR_ARG);
    merge_naee_free(nz);
    free(Y), free(P);
}

/* Planted: with top-1 routing, experts 6 and 7 are the most used but are
 * exact duplicates of experts 4 and 2, and every token routed to them has
 * its duplicate second. Removing 6 and 7 loses nothing; any other pair of
 * removals does. Frequency pruning would remove two of 0..5 instead. */
static void test_naee_finds_planted_duplicates(void **state) {
    (void)state;
    enum { E = 8, S = 400, Hd = 12 };
    float *Y = malloc(sizeof(float) * E * S * Hd), *P = malloc(sizeof(float) * S * E);
    fill(Y, (size_t)E * S * Hd, 1.0f);
    memcpy(Y + (size_t)7 * S * Hd, Y + (size_t)2 * S * Hd, sizeof(float) * S * Hd);
    memcpy(Y + (size_t)6 * S * Hd, Y + (size_t)4 * S * Hd, sizeof(float) * S * Hd);
    int used[E] = {0};
    for (int i = 0; i < S; i++) {
        float *p = P + (size_t)i * E;
        fill(p, E, 1.0f); /* logits in [-1, 1) */
        int t = i % 4 == 0 ? 6 : i % 4 == 1 ? 7 : (int)((frand() * 0.5f + 0.5f) * 6) % 6;
        p[t] = 3.0f;
        if (t == 6) p[4] = 2.0f;
        if (t == 7) p[2] = 2.0f;
        used[t]++;
    }
    softmax_rows(P, S, E);
    assert_true(used[6] > used[0] && used[7] > used[5]);
    merge_naee *nz = NULL;
    uint64_t keep = 0;
    double err = -1;
    assert_int_equal(merge_naee_init(&nz, Y, P, E, S, Hd, 1), MT_OK);
    assert_int_equal(naee_search64(nz, E, 6, &keep, &err), MT_OK);
    assert_int_equal(keep, 0x3f);
    assert_true(err < 1e-9 * merge_naee_energy(nz));
    /* and the next best set is clearly worse */
    assert_true(naee_err64(nz, 0x3f ^ 0x01 ^ 0x40) > 0.01 * merge_naee_energy(nz));
    merge_naee_free(nz);
    free(Y), free(P);
}

/* Planted for the greedy path: 16 experts, top-2, keep 8 (C(16, 8) = 12870
 * > 5000 subsets): the odd experts are never routed (logits far below), so
 * the even ones reproduce the layer exactly. */
static void test_naee_greedy_finds_never_routed(void **state) {
    (void)state;
    enum { E = 16, S = 256, Hd = 8 };
    float *Y = malloc(sizeof(float) * E * S * Hd), *P = malloc(sizeof(float) * S * E);
    fill(Y, (size_t)E * S * Hd, 1.0f);
    for (int e = 1; e < E; e += 2) /* make the never-routed ones loud: large outputs */
        for (size_t q = 0; q < (size_t)S * Hd; q++) Y[(size_t)e * S * Hd + q] *= 10.0f;
    fill(P, (size_t)S * E, 2.0f);
    for (int i = 0; i < S; i++)
        for (int e = 1; e < E; e += 2) P[(size_t)i * E + e] -= 20.0f;
    softmax_rows(P, S, E);
    merge_naee *nz = NULL;
    uint64_t keep = 0;
    double err = -1;
    assert_int_equal(merge_naee_init(&nz, Y, P, E, S, Hd, 2), MT_OK);
    assert_true(merge_naee_energy(nz) > 0);
    assert_int_equal(naee_search64(nz, E, 8, &keep, &err), MT_OK);
    assert_int_equal(keep, 0x5555);
    assert_true(err < 1e-9 * merge_naee_energy(nz));
    /* one step further (keep 6 of the 8 routed) costs something, and equals
     * the direct computation */
    assert_int_equal(naee_search64(nz, E, 6, &keep, &err), MT_OK);
    assert_int_equal(popcount64(keep), 6);
    assert_int_equal(keep & 0xaaaa, 0);
    assert_true(err > 0 && fabs(err - naee_reference(Y, P, E, S, Hd, 2, keep)) <= 1e-6 * err);
    merge_naee_free(nz);
    free(Y), free(P);
}

/* Kept sets of any size: 128 experts (kept sets are byte arrays, no 64-bit
 * mask). The odd experts are never routed and every even one is some
 * token's first choice; greedy elimination down to 64
 * keeps exactly the even ones at zero error, and every K on the path below
 * that equals the direct computation. On a random 20-expert layer the
 * incremental path equals greedy elimination by whole-set evaluation. */
static void test_naee_128_experts(void **state) {
    (void)state;
    enum { E = 128, S = 128, Hd = 8 };
    float *Y = malloc(sizeof(float) * E * S * Hd), *P = malloc(sizeof(float) * S * E);
    fill(Y, (size_t)E * S * Hd, 1.0f);
    fill(P, (size_t)S * E, 2.0f);
    for (int i = 0; i < S; i++) {
        for (int e = 1; e < E; e += 2) P[(size_t)i * E + e] -= 30.0f;
        P[(size_t)i * E + 2 * (i % 64)] += 5.0f; /* every even expert is some token's first */
    }
    softmax_rows(P, S, E);
    merge_naee *nz = NULL;
    uint8_t keep[E];
    double err = -1;
    assert_int_equal(merge_naee_init(&nz, Y, P, E, S, Hd, 2), MT_OK);
    assert_int_equal(merge_naee_search(nz, 64, keep, &err), MT_OK);
    for (int e = 0; e < E; e++) assert_int_equal(keep[e], e % 2 == 0);
    assert_true(err < 1e-9 * merge_naee_energy(nz));
    for (int K = 40; K >= 2; K -= 19) {
        assert_int_equal(merge_naee_search(nz, K, keep, &err), MT_OK);
        int n = 0;
        for (int e = 0; e < E; e++) n += keep[e], assert_true(!keep[e] || e % 2 == 0);
        assert_int_equal(n, K);
        const double ref = naee_reference_b(Y, P, E, S, Hd, 2, keep);
        assert_true(err > 0 && fabs(err - ref) <= 1e-6 * ref);
    }
    merge_naee_free(nz);

    enum { E2 = 20, K2 = 6 };
    fill(Y, (size_t)E2 * S * Hd, 1.0f);
    fill(P, (size_t)S * E2, 2.0f);
    softmax_rows(P, S, E2);
    assert_int_equal(merge_naee_init(&nz, Y, P, E2, S, Hd, 3), MT_OK);
    uint8_t g[E2];
    memset(g, 1, sizeof g);
    for (int have = E2; have > K2; have--) { /* greedy, each candidate set evaluated whole */
        int best = -1;
        double bv = 1e300;
        for (int e = 0; e < E2; e++) {
            if (!g[e]) continue;
            g[e] = 0;
            const double v = merge_naee_error(nz, g);
            g[e] = 1;
            if (v < bv) bv = v, best = e;
        }
        g[best] = 0;
    }
    assert_int_equal(merge_naee_search(nz, K2, keep, &err), MT_OK); /* C(20, 6) = 38760: greedy */
    assert_memory_equal(keep, g, E2);
    assert_true(fabs(err - merge_naee_error(nz, g)) <= 1e-12 * (1 + err));
    merge_naee_free(nz);
    free(Y), free(P);
}

/* The budget allocation: sums to the budget, respects top_k <= K <= E, and
 * reaches the least total cost (checked by enumerating every allocation). */
static void test_budget_allocation_optimal(void **state) {
    (void)state;
    enum { L = 3, C = 65, TK = 2 };
    const int El[L] = {8, 8, 6};
    double cost[L * C];
    for (int l = 0; l < L; l++) {
        double v = 0;
        for (int k = El[l]; k >= 0; k--) { /* increasing as K falls, at different rates */
            cost[l * C + k] = v;
            v += (0.5f + 0.5f * frand()) * (l + 1);
        }
    }
    for (int budget = L * TK; budget <= 22; budget++) {
        int K[L];
        assert_int_equal(merge_budget_allocate(cost, C, El, L, TK, budget, K), MT_OK);
        double got = 0, best = 1e300;
        int sum = 0;
        for (int l = 0; l < L; l++) {
            assert_true(K[l] >= TK && K[l] <= El[l]);
            sum += K[l], got += cost[l * C + K[l]];
        }
        assert_int_equal(sum, budget);
        for (int a = TK; a <= El[0]; a++)
            for (int b = TK; b <= El[1]; b++) {
                int c = budget - a - b;
                if (c >= TK && c <= El[2]) best = fmin(best, cost[a] + cost[C + b] + cost[2 * C + c]);
            }
        assert_true(fabs(got - best) < 1e-12);
    }
    int K[L];
    assert_int_equal(merge_budget_allocate(cost, C, El, L, TK, L * TK - 1, K), MT_ERR_ARG);
    assert_int_equal(merge_budget_allocate(cost, C, El, L, TK, 23, K), MT_ERR_ARG);
}

static int have_model(void) {
    struct stat sb;
    return stat(tu_model_path("config.json"), &sb) == 0 && stat(tu_model_path("data/train.txt"), &sb) == 0;
}

static void test_option_errors_leave_no_output(void **state) {
    (void)state;
    if (!have_model()) skip();
    char *dir = tu_mkdtemp();
    char out[4096], calib[4096];
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(calib, sizeof calib, "%s/short.txt", dir);
    FILE *f = fopen(calib, "w");
    fputs("In the beginning God created the heaven and the earth.\n", f);
    fclose(f);
    struct {
        int k;
        const char *layers, *calib;
        int budget;
    } cases[] = {{8, NULL, NULL, 0}, {9, NULL, NULL, 0},  {1, NULL, NULL, 0},  {6, NULL, calib, 0},
                 {0, "0:1", NULL, 0}, {6, NULL, NULL, 20}, {0, NULL, NULL, 7}, {0, NULL, NULL, 32}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mt_merge_opts o;
        mt_merge_opts_default(&o);
        o.experts = cases[i].k;
        o.budget = cases[i].budget;
        o.calib_path = cases[i].calib ? cases[i].calib : tu_model_path("data/train.txt");
        o.calib_tokens = 512;
        o.sample_tokens = 64;
        o.n_threads = 2;
        if (cases[i].layers) assert_int_equal(mt_merge_parse_layers(&o, cases[i].layers, 4), MT_OK);
        int st = mt_merge(tu_model_dir(), out, &o, NULL);
        mt_merge_opts_free(&o);
        assert_int_equal(st, MT_ERR_ARG);
        assert_true(strlen(mt_last_error()) > 0);
        struct stat sb;
        assert_int_not_equal(stat(out, &sb), 0);
    }
    tu_rmtree(dir);
    free(dir);
}

/* Layers 0-2 keep their 8 experts (must come out bit-identical, router
 * included); layer 3 is merged to 6 with the fitted router. */
static void test_merge_bundled_model(void **state) {
    (void)state;
    if (!have_model()) skip();
    char *dir = tu_mkdtemp();
    char out[4096];
    snprintf(out, sizeof out, "%s/merged", dir);
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    o.calib_path = tu_model_path("data/train.txt");
    o.calib_tokens = 1024;
    o.sample_tokens = 512;
    o.n_threads = 2;
    assert_int_equal(mt_merge_parse_layers(&o, "0-2:8,3:6", 4), MT_OK);
    mt_merge_report r;
    int st = mt_merge(tu_model_dir(), out, &o, &r);
    mt_merge_opts_free(&o);
    if (st) fprintf(stderr, "merge: %s\n", mt_last_error());
    assert_int_equal(st, MT_OK);
    assert_int_equal(r.layer_k[0], 8);
    assert_int_equal(r.layer_k[3], 6);
    assert_int_equal(r.calib_tokens, 1024);
    mt_model *src = NULL, *dst = NULL;
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    assert_int_equal(mt_model_load(&src, tu_model_dir(), &mo), MT_OK);
    assert_int_equal(mt_model_load(&dst, out, &mo), MT_OK);
    const mt_config *dc = mt_model_config(dst);
    assert_int_equal(dc->n_experts, 8);
    assert_int_equal(mt_config_layer_experts(dc, 0), 8);
    assert_int_equal(mt_config_layer_experts(dc, 3), 6);
    const mt_weights *ws = mt_model_weights(src), *wd = mt_model_weights(dst);
    for (int l = 0; l < 3; l++) {
        const mt_layer_weights *a = &ws->layers[l], *b = &wd->layers[l];
        assert_int_equal(b->n_experts, 8);
        assert_memory_equal(a->router.data, b->router.data, (size_t)a->router.rows * a->router.row_stride);
        for (int e = 0; e < 8; e++) {
            assert_memory_equal(a->w1[e].data, b->w1[e].data, (size_t)a->w1[e].rows * a->w1[e].row_stride);
            assert_memory_equal(a->w2[e].data, b->w2[e].data, (size_t)a->w2[e].rows * a->w2[e].row_stride);
            assert_memory_equal(a->w3[e].data, b->w3[e].data, (size_t)a->w3[e].rows * a->w3[e].row_stride);
        }
    }
    assert_int_equal(wd->layers[3].n_experts, 6);
    assert_int_equal(wd->layers[3].router.rows, 6);
    /* attention weights are copied unchanged */
    assert_memory_equal(ws->layers[3].wq.data, wd->layers[3].wq.data,
                        (size_t)ws->layers[3].wq.rows * ws->layers[3].wq.row_stride);
    /* the merged model still predicts: perplexity on a slice of test.txt
     * stays within 2x of the original's */
    size_t len;
    char *txt = tu_read_file(tu_model_path("data/test.txt"), &len);
    assert_non_null(txt);
    int32_t *ids = malloc((len + 16) * sizeof *ids);
    size_t n = 0;
    assert_int_equal(mt_tok_encode(mt_model_tokenizer(src), txt, len, ids, len + 16, &n), MT_OK);
    mt_eval_opts eo;
    mt_eval_opts_default(&eo);
    eo.max_windows = 8;
    mt_eval_result ra, rb;
    assert_int_equal(mt_eval_ppl(src, NULL, ids, n, &eo, &ra), MT_OK);
    assert_int_equal(mt_eval_ppl(dst, NULL, ids, n, &eo, &rb), MT_OK);
    assert_true(rb.ppl > ra.ppl * 0.9 && rb.ppl < ra.ppl * 2.0);
    mt_eval_result_free(&ra);
    mt_eval_result_free(&rb);
    free(txt);
    free(ids);
    mt_model_free(src);
    mt_model_free(dst);
    tu_rmtree(dir);
    free(dir);
    mt_merge_report_free(&r);
}

/* --budget 20 on the bundled model (4 layers x 8 experts, top-2): the
 * per-layer counts sum to 20, stay within [2, 8], reach the config, and
 * every count is the one minimising the summed sensitivities reported. */
static void test_merge_budget_bundled(void **state) {
    (void)state;
    if (!have_model()) skip();
    char *dir = tu_mkdtemp();
    char out[4096];
    snprintf(out, sizeof out, "%s/budget", dir);
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    o.calib_path = tu_model_path("data/train.txt");
    o.calib_tokens = 1024;
    o.sample_tokens = 512;
    o.n_threads = 2;
    o.budget = 20;
    o.method = MT_MERGE_NAEE;
    mt_merge_report *r = malloc(sizeof *r);
    int st = mt_merge(tu_model_dir(), out, &o, r);
    if (st) fprintf(stderr, "merge: %s\n", mt_last_error());
    assert_int_equal(st, MT_OK);
    int sum = 0;
    for (int l = 0; l < 4; l++) {
        assert_true(r->layer_k[l] >= 2 && r->layer_k[l] <= 8);
        sum += r->layer_k[l];
        /* no error with every expert kept; keeping 2 costs more than keeping 7 */
        assert_true(r->sensitivity[l][8] == 0);
        assert_true(r->sensitivity[l][2] > r->sensitivity[l][7]);
        if (r->layer_k[l] < 8) assert_true(fabs(r->recon_err[l] - r->sensitivity[l][r->layer_k[l]]) < 1e-9);
    }
    assert_int_equal(sum, 20);
    double got = 0, best = 1e300;
    for (int l = 0; l < 4; l++) got += r->sensitivity[l][r->layer_k[l]];
    for (int a = 2; a <= 8; a++)
        for (int b = 2; b <= 8; b++)
            for (int c = 2; c <= 8; c++) {
                int d = 20 - a - b - c;
                if (d >= 2 && d <= 8)
                    best = fmin(best, r->sensitivity[0][a] + r->sensitivity[1][b] + r->sensitivity[2][c] + r->sensitivity[3][d]);
            }
    assert_true(fabs(got - best) < 1e-12);
    mt_model *dst = NULL;
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    assert_int_equal(mt_model_load(&dst, out, &mo), MT_OK);
    for (int l = 0; l < 4; l++) {
        assert_int_equal(mt_config_layer_experts(mt_model_config(dst), l), r->layer_k[l]);
        assert_int_equal(mt_model_weights(dst)->layers[l].router.rows, r->layer_k[l]);
    }
    mt_model_free(dst);
    mt_merge_report_free(r);
    free(r);
    tu_rmtree(dir);
    free(dir);
}

/* ---- --router alias ------------------------------------------------------ */

/* Writes the bundled model with expert e + 4 of every layer replaced by an
 * exact copy of expert e (router rows unchanged): four pairs of identical
 * experts per layer, each pair still routed by two different rows. */
static void write_duplicated(const char *dir) {
    mt_ckpt *ck;
    assert_int_equal(mt_ckpt_open(&ck, tu_model_dir()), MT_OK);
    mt_hf_writer *w;
    assert_int_equal(mt_hf_writer_open(&w, dir, 0), MT_OK);
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < mt_ckpt_count(ck); i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            const void *data = t->data;
            int l, e, n = 0;
            char wn[4] = {0};
            if (sscanf(t->name, "model.layers.%d.block_sparse_moe.experts.%d.%2s.weight%n", &l, &e, wn, &n) == 3 &&
                e >= 4) {
                char src[160];
                snprintf(src, sizeof src, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e - 4, wn);
                const mt_tensor *s = mt_ckpt_find(ck, src);
                assert_non_null(s);
                assert_int_equal(s->nbytes, t->nbytes);
                data = s->data;
            }
            if (pass == 0)
                assert_int_equal(mt_hf_writer_add(w, t->name, t->dtype, t->n_dims, t->shape), MT_OK);
            else
                assert_int_equal(mt_hf_writer_write(w, data, t->nbytes), MT_OK);
        }
    assert_int_equal(mt_hf_writer_finish(w), MT_OK);
    mt_hf_writer_free(w);
    char *cfg = NULL;
    assert_int_equal(mt_config_to_hf_json(&cfg, mt_ckpt_config(ck), "bfloat16"), MT_OK);
    assert_int_equal(mt_write_text_file(dir, "config.json", cfg, strlen(cfg)), MT_OK);
    free(cfg);
    assert_int_equal(mt_copy_tokenizer(ck, dir), MT_OK);
    mt_ckpt_free(ck);
}

/* Merging groups of identical experts 8 -> 4 with --router alias is exact:
 * hc-smoe finds the planted pairs (zero output distance), the merged expert
 * equals both members, every original router row is kept and aliased to it,
 * so the logits equal the duplicated model's. A 4-row router could not do
 * this: the pair's two rows would have to become one. Also: alias with a
 * pruning method and an aliased input are refused. */
static void test_merge_alias_identical_exact(void **state) {
    (void)state;
    if (!have_model()) skip();
    char *dir = tu_mkdtemp();
    char dup[4096], out[4096], out2[4096];
    snprintf(dup, sizeof dup, "%s/dup", dir);
    snprintf(out, sizeof out, "%s/alias", dir);
    snprintf(out2, sizeof out2, "%s/again", dir);
    assert_int_equal(mkdir(dup, 0755), 0);
    write_duplicated(dup);

    mt_merge_opts o;
    mt_merge_opts_default(&o);
    o.calib_path = tu_model_path("data/train.txt");
    o.calib_tokens = 1024;
    o.sample_tokens = 256;
    o.n_threads = 2;
    o.experts = 4;
    o.router = MT_MERGE_ROUTER_ALIAS;
    o.method = MT_MERGE_PRUNE; /* pruned experts have no target */
    assert_int_equal(mt_merge(dup, out, &o, NULL), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "alias"));
    struct stat sb;
    assert_int_not_equal(stat(out, &sb), 0);

    o.method = MT_MERGE_HC_SMOE;
    mt_merge_report *r = malloc(sizeof *r);
    int st = mt_merge(dup, out, &o, r);
    if (st) fprintf(stderr, "merge: %s\n", mt_last_error());
    assert_int_equal(st, MT_OK);
    for (int l = 0; l < 4; l++)
        for (int e = 0; e < 4; e++) {
            assert_true(r->group[l][e] >= 0 && r->group[l][e] < 4);
            assert_int_equal(r->group[l][e], r->group[l][e + 4]);
        }

    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    mt_model *ma = NULL, *mb = NULL;
    assert_int_equal(mt_model_load(&ma, dup, &mo), MT_OK);
    assert_int_equal(mt_model_load(&mb, out, &mo), MT_OK);
    const mt_config *cb = mt_model_config(mb);
    assert_int_equal(cb->n_experts, 4);
    const mt_weights *wa = mt_model_weights(ma), *wb = mt_model_weights(mb);
    for (int l = 0; l < 4; l++) {
        assert_int_equal(mt_config_router_rows(cb, l), 8);
        for (int e = 0; e < 8; e++) assert_int_equal(cb->router_alias[l][e], r->group[l][e]);
        const mt_layer_weights *a = &wa->layers[l], *b = &wb->layers[l];
        assert_int_equal(b->n_experts, 4);
        assert_int_equal(b->n_router_rows, 8);
        /* merged experts are bit-identical to both members */
        for (int e = 0; e < 8; e++) {
            const int k = r->group[l][e];
            assert_memory_equal(a->w1[e].data, b->w1[k].data, (size_t)a->w1[e].rows * a->w1[e].row_stride);
            assert_memory_equal(a->w2[e].data, b->w2[k].data, (size_t)a->w2[e].rows * a->w2[e].row_stride);
            assert_memory_equal(a->w3[e].data, b->w3[k].data, (size_t)a->w3[e].rows * a->w3[e].row_stride);
        }
        /* every router row copied unchanged */
        assert_memory_equal(a->router_full.data, b->router_full.data, (size_t)8 * a->router_full.row_stride);
    }

    /* logits on a slice of test.txt */
    enum { NT = 128 };
    size_t len, n = 0;
    char *txt = tu_read_file(tu_model_path("data/test.txt"), &len);
    assert_non_null(txt);
    int32_t *ids = malloc((len + 16) * sizeof *ids);
    assert_int_equal(mt_tok_encode(mt_model_tokenizer(ma), txt, len, ids, len + 16, &n), MT_OK);
    assert_true(n >= NT);
    const int V = mt_model_config(ma)->vocab;
    float *la = malloc((size_t)NT * V * sizeof(float)), *lb = malloc((size_t)NT * V * sizeof(float));
    mt_ctx *ca, *cc;
    assert_int_equal(mt_ctx_init(&ca, ma, NT, NT), MT_OK);
    assert_int_equal(mt_ctx_init(&cc, mb, NT, NT), MT_OK);
    assert_int_equal(mt_ctx_forward(ca, ids, NT, la, 1), MT_OK);
    assert_int_equal(mt_ctx_forward(cc, ids, NT, lb, 1), MT_OK);
    double md = 0, mx = 0;
    for (size_t i = 0; i < (size_t)NT * V; i++) md = fmax(md, fabs((double)la[i] - lb[i])), mx = fmax(mx, fabs(la[i]));
    printf("alias merge of identical pairs 8->4: max |logit diff| = %.3g over %d tokens (max |logit| %.1f)\n", md, NT, mx);
    /* f32 rounding only: a token whose top-2 rows alias one expert runs it
     * once with the summed gate instead of twice (measured 1.05e-5 at
     * |logit| <= 14.1, under 1e-6 relative); a wrong group or row is ~1e-1 */
    assert_true(md <= 2e-6 * fmax(mx, 1.0));

    /* an aliased checkpoint is not merged again */
    o.experts = 3;
    assert_int_equal(mt_merge(out, out2, &o, NULL), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(mt_last_error(), "moe_router_alias"));
    assert_int_not_equal(stat(out2, &sb), 0);

    mt_ctx_free(ca);
    mt_ctx_free(cc);
    free(la);
    free(lb);
    free(txt);
    free(ids);
    mt_merge_report_free(r);
    free(r);
    mt_model_free(ma);
    mt_model_free(mb);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_permute_keeps_function),
        cmocka_unit_test(test_align_recovers_planted_permutation),
        cmocka_unit_test(test_merge_identical_pairs_reproduces_layer),
        cmocka_unit_test(test_router_fit_recovers_planted),
        cmocka_unit_test(test_cluster_planted_groups),
        cmocka_unit_test(test_parse_layers),
        cmocka_unit_test(test_naee_error_matches_reference),
        cmocka_unit_test(test_naee_finds_planted_duplicates),
        cmocka_unit_test(test_naee_128_experts),
        cmocka_unit_test(test_naee_greedy_finds_never_routed),
        cmocka_unit_test(test_budget_allocation_optimal),
        cmocka_unit_test(test_option_errors_leave_no_output),
        cmocka_unit_test(test_merge_bundled_model),
        cmocka_unit_test(test_merge_budget_bundled),
        cmocka_unit_test(test_merge_alias_identical_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
