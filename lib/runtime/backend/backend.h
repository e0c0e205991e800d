/* backend.h — the compute interface the runtime, quant and merge are written
 * against: a table of function pointers (as ggml-backend splits ggml-cpu and
 * ggml-cuda), one implementation per device. backend/cpu/ is the only one
 * today (thread pool, OpenBLAS, SIMD kernels); a device backend is one more
 * folder that fills the same table, and nothing above it changes.
 *
 * Memory. Activations, caches and tables live in buffers from buf_alloc.
 * `host_memory` says whether such a buffer is ordinary host memory (CPU): the
 * runtime then reads it in place (routing decisions, capture events) and
 * upload/download between a buffer and itself are no-ops. A device backend
 * sets it to 0 and the runtime keeps host mirrors and copies explicitly.
 * Weights (mt_mat) stay where the loader mapped them; weight_prepare is
 * called once per matrix before the first forward: the CPU sizes its
 * conversion scratch there, a device backend would upload the matrix and
 * look its copy up by the mt_mat's data pointer in linear.
 *
 * Shapes are row-major; "(n, dim)" is n rows of dim floats. Every op runs in
 * order on the backend's stream; synchronize waits for all of them (the CPU
 * runs them synchronously). Numerics of every CPU op are those the runtime
 * had before the interface existed: the golden tests hold them bit for bit.
 *
 * Linear algebra for quant and merge (gemm, syrk, Cholesky) is part of the
 * same table, with BLAS/LAPACK semantics (gemm row-major; potrf/potri/posv
 * column-major as LAPACK defines them), so GPTQ and expert merging run on
 * whichever backend they are given. mt_backend_default() is the one they use
 * when no model hands them one. */
#ifndef MT_BACKEND_H
#define MT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "moetool/mt_io.h"

typedef struct mt_backend mt_backend;

/* RoPE pairing of a head vector of d = 2·half elements as stored.
 * MT_BE_ROPE_HALF: Hugging Face rotate_half, pairs (i, i + half).
 * MT_BE_ROPE_PAIRS: GGUF's permuted Q/K rows, pairs (2i, 2i + 1); the op
 * writes the result in rotate_half order (pair i to i and i + half), so the
 * cache and attention see one order whatever the file stored. */
typedef enum { MT_BE_ROPE_HALF = 0, MT_BE_ROPE_PAIRS = 1 } mt_be_rope_style;

typedef struct {
    float *x;           /* (n, stride): n_heads head vectors of d at the start of each row */
    int n, stride, n_heads, d;
    int pos;            /* position of row 0; row i is at pos + i */
    const float *cos_t; /* (n_ctx, d/2) from mt_be_rope_tables */
    const float *sin_t;
    mt_be_rope_style style;
} mt_be_rope_args;

/* Causal GQA attention over a KV cache of one layer: the n new rows of k, v
 * are stored at positions pos..pos+n-1, then every query row i attends to
 * positions 0..pos+i: out = softmax(q·kᵀ / sqrt(d)) · v per head, query head
 * h reading KV head h / (n_heads / n_kv_heads). */
typedef struct {
    const float *q;     /* (n, n_heads·d)                      */
    const float *k;     /* (n, n_kv_heads·d) new keys, roped   */
    const float *v;     /* (n, n_kv_heads·d) new values        */
    float *k_cache;     /* (n_ctx, n_kv_heads·d) of the layer  */
    float *v_cache;     /* (n_ctx, n_kv_heads·d)               */
    float *out;         /* (n, n_heads·d)                      */
    float *scratch;     /* attn_scratch_floats(n_batch, n_ctx) */
    int n, pos, n_ctx, n_batch;
    int n_heads, n_kv_heads, d;
} mt_be_attn_args;

/* Router: probabilities p = softmax(logits) per row in f32, the top_k rows
 * of p (ties to the lower index), gates = p_topk / Σ p_topk (renorm) or
 * p_topk. With alias
 * (router row -> expert), chosen rows become experts; a later slot whose
 * expert an earlier slot holds gives its gate to that slot and becomes -1
 * with gate 0, so each expert runs once per token. */
typedef struct {
    const float *logits; /* (n, n_rows)             */
    float *probs;        /* (n, n_rows) scratch     */
    int32_t *topk;       /* (n, top_k) expert ids   */
    float *gates;        /* (n, top_k)              */
    int n, n_rows, top_k;
    const int32_t *alias; /* (n_rows) or NULL; host memory */
    int renorm;          /* 1: gates / Σ gates; 0: gates = p_topk as they are */
} mt_be_router_args;

typedef struct mt_backend_ops {
    /* ---- buffers ---- */
    void *(*buf_alloc)(mt_backend *be, size_t bytes); /* NULL when out of memory */
    void (*buf_free)(mt_backend *be, void *buf);      /* accepts NULL            */
    void (*upload)(mt_backend *be, void *buf, const void *host, size_t bytes);
    void (*download)(mt_backend *be, void *host, const void *buf, size_t bytes);
    void (*buf_zero)(mt_backend *be, void *buf, size_t bytes);
    void (*synchronize)(mt_backend *be);

    /* ---- weights ---- */
    /* MT_OK when linear/get_rows can run W; MT_ERR_UNSUPPORTED for a
     * storage type without kernels, MT_ERR_FORMAT for a malformed matrix
     * (no message set: the caller names the file and tensor). */
    int (*mat_supported)(mt_backend *be, const mt_mat *W);
    int (*weight_prepare)(mt_backend *be, const mt_mat *W);
    /* Y (n, W.rows) = X (n, W.cols) · Wᵀ, W of any supported storage type. */
    void (*linear)(mt_backend *be, const mt_mat *W, const float *X, int n, float *Y);
    /* out (n, W.cols) = rows ids[0..n) of W as f32; ids in host memory. */
    void (*get_rows)(mt_backend *be, const mt_mat *W, const int32_t *ids, int n, float *out);

    /* ---- activations ---- */
    /* out = x / sqrt(mean(x²) + eps) · w per row (n, dim); mean in double. */
    void (*rmsnorm)(mt_backend *be, float *out, const float *x, const float *w, int n, int dim, float eps);
    void (*rope)(mt_backend *be, const mt_be_rope_args *a);
    size_t (*attn_scratch_floats)(mt_backend *be, int n_batch, int n_ctx);
    void (*attention)(mt_backend *be, const mt_be_attn_args *a);
    void (*swiglu)(mt_backend *be, float *g, const float *u, size_t n); /* g = silu(g) · u */
    void (*add)(mt_backend *be, float *x, const float *y, size_t n);    /* x += y          */
    void (*router_topk)(mt_backend *be, const mt_be_router_args *a);
    /* dst row r = src row rows[r], r < m; rows in host memory. */
    void (*gather_rows)(mt_backend *be, float *dst, const float *src, const int32_t *rows, int m, int dim);
    /* dst row rows[r] += gates[r] · src row r, r < m in order; rows and
     * gates in host memory. */
    void (*scatter_add_rows)(mt_backend *be, float *dst, const float *src, const int32_t *rows, const float *gates,
                             int m, int dim);

    /* ---- linear algebra (quant, merge) ---- */
    /* C (M, N) = alpha · op(A) · op(B) + beta · C, row-major; op = ᵀ when trans_*. */
    void (*gemm_f32)(mt_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                     int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* Upper triangle of C (n, n) = alpha · Aᵀ A + beta · C, A (k, n), row-major, f64. */
    void (*syrk_f64)(mt_backend *be, int n, int k, double alpha, const double *A, int lda, double beta, double *C,
                     int ldc);
    /* LAPACK potrf / potri / posv (f64) on column-major A (n, n), triangle
     * uplo ('L' or 'U'); return LAPACK's info (0 = success). */
    int (*potrf_f64)(mt_backend *be, char uplo, int n, double *A, int lda);
    int (*potri_f64)(mt_backend *be, char uplo, int n, double *A, int lda);
    int (*posv_f64)(mt_backend *be, char uplo, int n, int nrhs, double *A, int lda, double *B, int ldb);

    /* MT_OK, or the first failure of a device op with its message set (ops
     * return nothing; a device backend records the first error and skips
     * the ops after it). NULL: the backend's ops cannot fail (CPU). */
    int (*status)(mt_backend *be);

    void (*free)(mt_backend *be);
} mt_backend_ops;

struct mt_backend {
    const mt_backend_ops *ops;
    const char *name;  /* "cpu" */
    int n_threads;     /* workers of the device's host side, >= 1 */
    int host_memory;   /* buffers are plain host memory (see above) */
    void *impl;        /* the implementation's state */
};

/* The CPU backend with a pool of n_threads (>= 1) workers, the caller
 * included. Freed with mt_backend_free. */
int mt_backend_cpu_init(mt_backend **out, int n_threads);
void mt_backend_free(mt_backend *be);

/* The CUDA backend on device `device` (backend/cuda/). MT_ERR_UNSUPPORTED
 * with a one-line reason when the build has no CUDA ("not built with
 * CUDA"), when there is no device ("no CUDA device found: <driver's
 * reason>") or when its compute capability is too old. */
int mt_backend_cuda_init(mt_backend **out, int device);

/* Linear algebra outside a model's forward (quant, merge): the CPU backend
 * without a pool (BLAS threads itself); static, mt_backend_free ignores it. */
mt_backend *mt_backend_default(void);

/* cos/sin tables of RoPE as Hugging Face computes them in f32, (n_ctx, d/2)
 * each, into host memory: inv_freq[i] = 1 / theta^(2i/d), angle = pos ·
 * inv_freq[i] rounded to f32, then cos/sin of it. */
void mt_be_rope_tables(float *cos_t, float *sin_t, int n_ctx, int d, float theta);

#endif
