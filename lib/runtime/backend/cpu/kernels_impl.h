/* kernels_impl.h — private to the CPU backend (backend_cpu.c): a thread pool and
 * the per-storage-type kernels (matvec for decode, batched matmul for
 * prefill). Every SIMD kernel has a plain C `_ref` twin; tests compare them. */
#ifndef MT_KERNELS_IMPL_H
#define MT_KERNELS_IMPL_H

#include "moetool/mt_io.h"

/* ---- thread pool --------------------------------------------------------
 * n_threads workers including the caller. mt_pool_run runs fn(arg, ith, nth)
 * on every thread (ith = 0 on the caller) and returns when all are done.
 * Workers spin briefly before sleeping so back-to-back decode matvecs do
 * not pay a wake-up each. */
typedef struct mt_pool mt_pool;
typedef void (*mt_task_fn)(void *arg, int ith, int nth);
int mt_pool_init(mt_pool **out, int n_threads);
void mt_pool_free(mt_pool *p);
int mt_pool_size(const mt_pool *p);
void mt_pool_run(mt_pool *p, mt_task_fn fn, void *arg);

/* Splits [0, n) into nth nearly equal parts aligned to `align`; part ith. */
void mt_split_range(int64_t n, int ith, int nth, int64_t align, int64_t *begin, int64_t *end);

/* ---- kernels --------------------------------------------------------------
 * W is (rows, cols) in its stored type; x has cols floats; y has rows floats.
 * Supported types: f32, f16, bf16, q8_0, q4_0, tq2_0 (others: MT_ERR_UNSUPPORTED). */
int mt_kernel_supported(mt_dtype t);

/* y[r] = dot(W[r,:], x) for r in [r0, r1). Single-threaded. */
void mt_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
void mt_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);

/* Whole matvec split over the pool's threads. */
void mt_matvec(mt_pool *p, const mt_mat *W, const float *x, float *y);

/* Y (n, rows) = X (n, cols) · Wᵀ, threaded. Uses OpenBLAS sgemm on f32
 * (weights of other types are converted in row chunks into `scratch`,
 * which must hold mt_matmul_scratch_floats(W) floats), or matvecs when
 * n is small. */
size_t mt_matmul_scratch_floats(const mt_mat *W);
void mt_matmul(mt_pool *p, const mt_mat *W, const float *X, int n, float *Y, float *scratch);

/* TQ2_0 rows (kernels_tq.c): return 0 without touching y for other types. */
int mt_tq_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
int mt_tq_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);

/* Read-only llama.cpp block types (kernels_kq.c: q4_1, q5_0, q5_1, q2_K..q8_K,
 * iq4_nl, iq4_xs): whether t is one; whether its matvec wants x as q8_K
 * (q2_K..q6_K); x to q8_K (n a multiple of 256: codes xq, scales xd per
 * 256, sums of 16 codes bsums) as llama.cpp's quantize_row_q8_K; rows
 * (return 0 without touching y for other types; xq NULL: the reference). */
int mt_kq_supported(mt_dtype t);
int mt_kq_is_q8K_type(mt_dtype t);
void mt_kq_quantize_x_q8K(const float *x, int64_t n, int8_t *xq, float *xd, int16_t *bsums);
void mt_kq_quantize_x_q8K_ref(const float *x, int64_t n, int8_t *xq, float *xd, int16_t *bsums); /* plain C twin */
/* x (n floats) as llama.cpp's activation type for weights of type t holds
 * it: q8_K values (per 256) for K-quants and iq4_xs, q8_0 values (per 32,
 * f16 scale) for q4_1, q5_0, q5_1, iq4_nl. */
void mt_kq_round_x(mt_dtype t, const float *x, int64_t n, float *out);
int mt_kq_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
int mt_kq_matvec_rows(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const int16_t *bs,
                      float *y, int64_t r0, int64_t r1);
/* A K-quant row's dot with q8_K x in plain C (nb super-blocks). */
float mt_kq_dot_q8K_c(mt_dtype t, const uint8_t *row, const int8_t *xq, const float *xd, const int16_t *bs,
                      int64_t nb);

/* K-quants against q8_K x with integer dots (kernels_kq8.c: q2_K..q6_K):
 * whether t is one; rows [r0, r1) (SIMD) and their plain C twin, which
 * give bit-identical results; the prefill GEMM over n tokens (codes
 * xq + t·cols, scales xd + t·cols/256, sums bs + t·cols/16) into columns
 * [r0, r1) of Y (row stride ldy), the same numbers as mt_kq8_rows per
 * token; returns 0 when out of memory. */
int mt_kq8_type(mt_dtype t);
void mt_kq8_rows(const mt_mat *W, const int8_t *xq, const float *xd, const int16_t *bs, float *y, int64_t r0,
                 int64_t r1);
void mt_kq8_rows_ref(const mt_mat *W, const int8_t *xq, const float *xd, const int16_t *bs, float *y, int64_t r0,
                     int64_t r1);
int mt_kq8_gemm(const mt_mat *W, const int8_t *xq, const float *xd, const int16_t *bs, int n, float *Y,
                int64_t ldy, int64_t r0, int64_t r1);

/* Row r of W as f32 (cols floats) — embeddings lookup. */
void mt_mat_row_f32(const mt_mat *W, int64_t r, float *out);

#endif
