/* backend_cpu.c — the CPU implementation of backend.h: buffers are malloc'd
 * host memory, linear dispatches to the per-storage-type kernels of
 * kernels.c (SIMD matvec for one row, OpenBLAS sgemm over the pool for
 * batches), attention uses two sgemms per head for a batch and plain loops
 * for one token, and the linear algebra of quant and merge is OpenBLAS /
 * LAPACK. The pool is owned here; every op returns when its work is done. */
#include "../backend.h"
#include "../kernels_hd.h"
#include "kernels_impl.h"
#include "qmoe_kernel.h"

#include <cblas.h>
#include <pthread.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK (Fortran ABI, shipped inside OpenBLAS). */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotri_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda, double *b, const int *ldb,
            int *info);

typedef struct {
    mt_pool *pool;         /* NULL: everything on the calling thread     */
    float *mm_scratch;     /* weight rows converted to f32 for sgemm     */
    size_t mm_floats;      /* max mt_matmul_scratch_floats of prepared W */
} cpu_impl;

static cpu_impl *impl(mt_backend *be) { return be->impl; }

/* ---- buffers --------------------------------------------------------------- */
static void *cpu_buf_alloc(mt_backend *be, size_t bytes) { return malloc(bytes ? bytes : 1); }
static void cpu_buf_free(mt_backend *be, void *buf) { free(buf); }
static void cpu_upload(mt_backend *be, void *buf, const void *host, size_t bytes) {
    if (buf != host) memcpy(buf, host, bytes);
}
static void cpu_download(mt_backend *be, void *host, const void *buf, size_t bytes) {
    if (buf != host) memcpy(host, buf, bytes);
}
static void cpu_buf_zero(mt_backend *be, void *buf, size_t bytes) { memset(buf, 0, bytes); }
static void cpu_synchronize(mt_backend *be) {}

/* ---- weights ----------------------------------------------------------------- */
static int cpu_mat_supported(mt_backend *be, const mt_mat *W) {
    if (!mt_kernel_supported(W->dtype)) return MT_ERR_UNSUPPORTED;
    if (W->dtype == MT_DT_QMOE && !mt_qmoe_mat_ok(W)) return MT_ERR_FORMAT;
    return MT_OK;
}

static int cpu_weight_prepare(mt_backend *be, const mt_mat *W) {
    cpu_impl *ci = impl(be);
    const size_t need = mt_matmul_scratch_floats(W);
    if (need <= ci->mm_floats) return MT_OK;
    float *s = realloc(ci->mm_scratch, need * sizeof(float));
    if (!s) return mt_seterr(MT_ERR_NOMEM, "cpu backend: out of memory (%zu bytes of matmul scratch)", need * 4);
    ci->mm_scratch = s;
    ci->mm_floats = need;
    return MT_OK;
}

static void cpu_linear(mt_backend *be, const mt_mat *W, const float *X, int n, float *Y) {
    cpu_impl *ci = impl(be);
    if (n == 1)
        mt_matvec(ci->pool, W, X, Y);
    else
        mt_matmul(ci->pool, W, X, n, Y, mt_matmul_scratch_floats(W) <= ci->mm_floats ? ci->mm_scratch : NULL);
}

static void cpu_get_rows(mt_backend *be, const mt_mat *W, const int32_t *ids, int n, float *out) {
    for (int i = 0; i < n; i++) mt_mat_row_f32(W, ids[i], out + (size_t)i * (size_t)W->cols);
}

/* ---- activations ----------------------------------------------------------- */
static void cpu_rmsnorm(mt_backend *be, float *out, const float *x, const float *w, int n, int dim, float eps) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)xi[j] * xi[j];
        float var = (float)(ss / dim);
        float r = 1.0f / sqrtf(var + eps);
        for (int j = 0; j < dim; j++) oi[j] = w[j] * (xi[j] * r);
    }
}

/* out[i] = a cos - b sin, out[i+half] = b cos + a sin with (a, b) the pair
 * of the style: (x[i], x[i+half]) in place, or (x[2i], x[2i+1]) read from a
 * copy of the head. The products are the same in both, so a GGUF model
 * matches its HF twin bit for bit. */
#define ROPE_STACK_D 1024
static void cpu_rope(mt_backend *be, const mt_be_rope_args *a) {
    const int d = a->d, half = d / 2;
    float stack[ROPE_STACK_D], *tmp = stack;
    if (a->style == MT_BE_ROPE_PAIRS && d > ROPE_STACK_D && !(tmp = malloc((size_t)d * sizeof *tmp))) {
        for (int i = 0; i < a->n; i++)
            for (int j = 0; j < a->n_heads * d; j++) a->x[(size_t)i * a->stride + j] = NAN;
        return;
    }
    for (int i = 0; i < a->n; i++) {
        const float *cs = a->cos_t + (size_t)(a->pos + i) * half, *sn = a->sin_t + (size_t)(a->pos + i) * half;
        for (int h = 0; h < a->n_heads; h++) {
            float *p = a->x + (size_t)i * a->stride + (size_t)h * d;
            if (a->style == MT_BE_ROPE_PAIRS) {
                memcpy(tmp, p, (size_t)d * sizeof *tmp);
                for (int j = 0; j < half; j++) {
                    float x0 = tmp[2 * j], x1 = tmp[2 * j + 1];
                    p[j] = x0 * cs[j] - x1 * sn[j];
                    p[j + half] = x1 * cs[j] + x0 * sn[j];
                }
            } else {
                for (int j = 0; j < half; j++) {
                    float x0 = p[j], x1 = p[j + half];
                    p[j] = x0 * cs[j] - x1 * sn[j];
                    p[j + half] = x1 * cs[j] + x0 * sn[j];
                }
            }
        }
    }
    if (tmp != stack) free(tmp);
}

/* q·k with 8 independent partial sums, so the compiler vectorises it
 * without reassociating a single sum. */
static float dot_f32(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int u = 0;
    for (; u + 8 <= n; u += 8)
        for (int t = 0; t < 8; t++) acc[t] += a[u + t] * b[u + t];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; u < n; u++) s += a[u] * b[u];
    return s;
}

/* Softmax of row[0..len) in place (f32, max subtracted). */
static void softmax_row(float *row, int len) {
    float mx = -FLT_MAX, sum = 0;
    for (int j = 0; j < len; j++)
        if (row[j] > mx) mx = row[j];
    for (int j = 0; j < len; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < len; j++) row[j] *= inv;
}

static size_t cpu_attn_scratch_floats(mt_backend *be, int n_batch, int n_ctx) {
    return (size_t)be->n_threads * (size_t)n_batch * (size_t)n_ctx;
}

/* Query heads split over the pool. A batch (n > 1) uses two sgemms per head
 * over the whole cache prefix (scores of the masked upper triangle are
 * computed and zeroed: cheaper than loops); one token uses plain loops. */
static void attn_worker(void *arg, int ith, int nth) {
    const mt_be_attn_args *a = arg;
    const int d = a->d, group = a->n_heads / a->n_kv_heads, n = a->n;
    const int q_dim = a->n_heads * d, kv_dim = a->n_kv_heads * d;
    const int P = a->pos + n; /* keys visible to the last token */
    const float scale = 1.0f / sqrtf((float)d);
    float *S = a->scratch + (size_t)ith * a->n_batch * a->n_ctx; /* (n, P) */
    int64_t b, e;
    mt_split_range(a->n_heads, ith, nth, 1, &b, &e);
    for (int hq = (int)b; hq < (int)e; hq++) {
        const int hk = hq / group;
        const float *Q = a->q + (size_t)hq * d;          /* rows of stride q_dim  */
        const float *K = a->k_cache + (size_t)hk * d;    /* rows of stride kv_dim */
        const float *Vh = a->v_cache + (size_t)hk * d;
        float *O = a->out + (size_t)hq * d;              /* rows of stride q_dim  */
        if (n > 1) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, P, d, scale, Q, q_dim, K, kv_dim, 0.0f, S, P);
            for (int i = 0; i < n; i++) {
                float *row = S + (size_t)i * P;
                int len = a->pos + i + 1;
                softmax_row(row, len);
                for (int j = len; j < P; j++) row[j] = 0;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, P, 1.0f, S, P, Vh, kv_dim, 0.0f, O, q_dim);
        } else {
            for (int j = 0; j < P; j++) S[j] = dot_f32(Q, K + (size_t)j * kv_dim, d) * scale;
            softmax_row(S, P);
            for (int u = 0; u < d; u++) O[u] = 0;
            for (int j = 0; j < P; j++) {
                const float *vj = Vh + (size_t)j * kv_dim;
                float w = S[j];
                for (int u = 0; u < d; u++) O[u] += w * vj[u];
            }
        }
    }
}

static void cpu_attention(mt_backend *be, const mt_be_attn_args *a) {
    const size_t kv_dim = (size_t)a->n_kv_heads * a->d;
    memcpy(a->k_cache + (size_t)a->pos * kv_dim, a->k, (size_t)a->n * kv_dim * sizeof(float));
    memcpy(a->v_cache + (size_t)a->pos * kv_dim, a->v, (size_t)a->n * kv_dim * sizeof(float));
    MT_ASSERT(mt_pool_size(impl(be)->pool) <= be->n_threads); /* one scratch slice per pool thread */
    mt_pool_run(impl(be)->pool, attn_worker, (void *)a);
}

static void cpu_swiglu(mt_backend *be, float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

static void cpu_add(mt_backend *be, float *x, const float *y, size_t n) {
    for (size_t j = 0; j < n; j++) x[j] += y[j];
}

/* The same row code as the CUDA kernel (kernels_hd.h). */
static void cpu_router_topk(mt_backend *be, const mt_be_router_args *a) {
    for (int i = 0; i < a->n; i++)
        mt_cu_router_row(a->logits + (size_t)i * a->n_rows, a->n_rows, a->top_k, a->renorm, a->alias,
                         a->probs + (size_t)i * a->n_rows, a->topk + (size_t)i * a->top_k,
                         a->gates + (size_t)i * a->top_k);
}

static void cpu_gather_rows(mt_backend *be, float *dst, const float *src, const int32_t *rows, int m, int dim) {
    for (int r = 0; r < m; r++)
        memcpy(dst + (size_t)r * dim, src + (size_t)rows[r] * dim, (size_t)dim * sizeof(float));
}

static void cpu_scatter_add_rows(mt_backend *be, float *dst, const float *src, const int32_t *rows,
                                 const float *gates, int m, int dim) {
    for (int r = 0; r < m; r++) {
        float *d = dst + (size_t)rows[r] * dim;
        const float *s = src + (size_t)r * dim;
        const float g = gates[r];
        for (int j = 0; j < dim; j++) d[j] += g * s[j];
    }
}

/* ---- linear algebra ------------------------------------------------------- */
/* With a pool (a model's or the trainer's backend), C's rows are split over
 * it, each thread one single-threaded sgemm on its rows (column blocks when
 * M is too small to share); without one (mt_backend_default: quant, merge)
 * one call, threaded by BLAS itself as before. Every element of C is the
 * same K-long dot product either way, but OpenBLAS's rounding of it depends
 * on the call's shape (kernels.c, matmul), so results can differ in the
 * last bits between thread counts here; the forward does not use this
 * (its matmuls run on fixed blocks). */
typedef struct {
    int ta, tb, M, N, K;
    float alpha, beta;
    const float *A, *B;
    float *C;
    int lda, ldb, ldc;
} gemm_task;

static void gemm_worker(void *arg, int ith, int nth) {
    const gemm_task *t = arg;
    int64_t b, e;
    if (t->M >= 4 * nth) {
        mt_split_range(t->M, ith, nth, 1, &b, &e);
        if (b >= e) return;
        const float *A = t->ta ? t->A + b : t->A + b * (int64_t)t->lda;
        cblas_sgemm(CblasRowMajor, t->ta ? CblasTrans : CblasNoTrans, t->tb ? CblasTrans : CblasNoTrans, (int)(e - b),
                    t->N, t->K, t->alpha, A, t->lda, t->B, t->ldb, t->beta, t->C + b * (int64_t)t->ldc, t->ldc);
    } else {
        mt_split_range(t->N, ith, nth, 16, &b, &e);
        if (b >= e) return;
        const float *B = t->tb ? t->B + b * (int64_t)t->ldb : t->B + b;
        cblas_sgemm(CblasRowMajor, t->ta ? CblasTrans : CblasNoTrans, t->tb ? CblasTrans : CblasNoTrans, t->M,
                    (int)(e - b), t->K, t->alpha, t->A, t->lda, B, t->ldb, t->beta, t->C + b, t->ldc);
    }
}

static pthread_once_t g_gemm_blas_once = PTHREAD_ONCE_INIT;
static void gemm_blas_single_thread(void) { openblas_set_num_threads(1); }

static void cpu_gemm_f32(mt_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    mt_pool *p = impl(be)->pool;
    if (p && mt_pool_size(p) > 1 && (int64_t)M * N * K >= (1 << 16)) {
        pthread_once(&g_gemm_blas_once, gemm_blas_single_thread);
        gemm_task t = {trans_a, trans_b, M, N, K, alpha, beta, A, B, C, lda, ldb, ldc};
        mt_pool_run(p, gemm_worker, &t);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

static void cpu_syrk_f64(mt_backend *be, int n, int k, double alpha, const double *A, int lda, double beta, double *C,
                         int ldc) {
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, k, alpha, A, lda, beta, C, ldc);
}

static int cpu_potrf_f64(mt_backend *be, char uplo, int n, double *A, int lda) {
    int info = 0;
    dpotrf_(&uplo, &n, A, &lda, &info);
    return info;
}

static int cpu_potri_f64(mt_backend *be, char uplo, int n, double *A, int lda) {
    int info = 0;
    dpotri_(&uplo, &n, A, &lda, &info);
    return info;
}

static int cpu_posv_f64(mt_backend *be, char uplo, int n, int nrhs, double *A, int lda, double *B, int ldb) {
    int info = 0;
    dposv_(&uplo, &n, &nrhs, A, &lda, B, &ldb, &info);
    return info;
}

static cpu_impl g_default_impl;
static mt_backend g_default;

static void cpu_free(mt_backend *be) {
    if (be == &g_default) return;
    cpu_impl *ci = impl(be);
    if (ci) {
        mt_pool_free(ci->pool);
        free(ci->mm_scratch);
        free(ci);
    }
    free(be);
}

static const mt_backend_ops cpu_ops = {
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .buf_zero = cpu_buf_zero,
    .synchronize = cpu_synchronize,
    .mat_supported = cpu_mat_supported,
    .weight_prepare = cpu_weight_prepare,
    .linear = cpu_linear,
    .get_rows = cpu_get_rows,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .attn_scratch_floats = cpu_attn_scratch_floats,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .router_topk = cpu_router_topk,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .gemm_f32 = cpu_gemm_f32,
    .syrk_f64 = cpu_syrk_f64,
    .potrf_f64 = cpu_potrf_f64,
    .potri_f64 = cpu_potri_f64,
    .posv_f64 = cpu_posv_f64,
    .free = cpu_free,
};

int mt_backend_cpu_init(mt_backend **out, int n_threads) {
    *out = NULL;
    mt_backend *be = calloc(1, sizeof *be);
    cpu_impl *ci = calloc(1, sizeof *ci);
    if (!be || !ci) {
        free(be);
        free(ci);
        return mt_seterr(MT_ERR_NOMEM, "cpu backend: out of memory");
    }
    be->ops = &cpu_ops;
    be->name = "cpu";
    be->host_memory = 1;
    be->impl = ci;
    int st = mt_pool_init(&ci->pool, n_threads);
    if (st < 0) {
        cpu_free(be);
        return st;
    }
    be->n_threads = mt_pool_size(ci->pool);
    *out = be;
    return MT_OK;
}

/* No pool and no scratch: nothing to allocate, nothing to free. */
static mt_backend g_default = {&cpu_ops, "cpu", 1, 1, &g_default_impl};

mt_backend *mt_backend_default(void) { return &g_default; }
