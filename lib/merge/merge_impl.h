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

#endif
