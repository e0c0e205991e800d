/* merge_impl.h — private pieces of lib/merge shared by merge.c (pipeline and
 * output) and merge_math.c (expert math, alignment, clustering, router fit). */
#ifndef MT_MERGE_IMPL_H
#define MT_MERGE_IMPL_H

#include "moetool/mt_merge.h"

/* Average-linkage agglomerative clustering of E items with distances
 * D (E, E) down to K clusters; assign[e] in [0, K), clusters numbered in
 * order of their first member. */
int merge_cluster_average_linkage(const double *D, int E, int K, int *assign);

/* out = sum_m wts[m] * member_m with member m's hidden units reordered by
 * perms[m] (NULL = identity); wts sum to 1. Members are (F, H) w1/w3 and
 * (H, F) w2 in f32. */
void merge_weighted_average(const float *const *w1, const float *const *w3, const float *const *w2,
                            const int *const *perms, const double *wts, int nm, int H, int F, float *o1, float *o3,
                            float *o2);

/* Least-squares router: R (K, H) minimising |X R^T - T|^2 + lambda |R|^2
 * with X (n, H), T (n, K) (targets centred per row by the caller).
 * Returns the RMS residual in *rmse. */
int merge_fit_router(const float *X, const float *T, int n, int H, int K, double lambda, float *R, double *rmse);

/* Softmax regression refinement: a few Adam steps on R (K, H) minimising
 * the cross-entropy between softmax(X R^T) and target distributions Q
 * (n, K). */
int merge_refine_router(const float *X, const float *Q, int n, int H, int K, int steps, float lr, float *R);

/* NAEE-style search over kept experts (naee.c). Y (E, S, H): the experts'
 * outputs on S sample tokens; P (S, E): routing probabilities (softmax of the
 * router logits). The layer output of a token is its top_k experts' outputs
 * weighted by their renormalised probabilities; with only the experts in a
 * kept set (keep[e] = 1, an array of E bytes), the kept rows' probabilities
 * are renormalised and their top_k taken, as the pruned checkpoint routes.
 * Any E; top_k at most MT_NAEE_MAX_TOPK (merge_naee_init refuses more). */
#define MT_NAEE_MAX_TOPK 64
#define MT_NAEE_EXHAUSTIVE_MAX 5000 /* enumerate every subset up to this many */
typedef struct merge_naee merge_naee;
int merge_naee_init(merge_naee **out, const float *Y, const float *P, int E, int S, int H, int top_k);
void merge_naee_free(merge_naee *n);
/* Summed squared error of the layer output over the sample with `keep`
 * (-1 when fewer than top_k experts are kept). */
double merge_naee_error(const merge_naee *n, const uint8_t *keep);
/* Summed squared norm of the original layer output over the sample. */
double merge_naee_energy(const merge_naee *n);
/* The K experts to keep (top_k <= K <= E) with the least error: every subset
 * when C(E, K) <= MT_NAEE_EXHAUSTIVE_MAX (ties go to the lexicographically
 * first set), else the K left on the greedy backward-elimination path
 * (computed once per merge_naee and reused for every K). keep: E bytes. */
int merge_naee_search(merge_naee *n, int K, uint8_t *keep, double *err);

/* Spreads `budget` experts over L layers: K[l] in [top_k, E[l]], sum K = budget,
 * minimising sum_l cost[l * stride + K[l]] (stride > max E[l]; exact dynamic
 * programme over layers x experts used). */
int merge_budget_allocate(const double *cost, int stride, const int *E, int L, int top_k, int budget, int *K);

#endif
