/* backend_cuda.cu — the CUDA implementation of backend.h: buffers are
 * device memory (host_memory = 0: the runtime keeps host mirrors and copies
 * explicitly), every op is queued on one stream, cuBLAS does the large
 * GEMMs. The arithmetic of each kernel is in ../kernels_hd.h, shared with the
 * host and tested there against the CPU backend (tests/test_cuda_hd.c); the
 * kernels here are the loops around it. tests/test_cuda_backend.c compares
 * every op with the CPU backend on a device (it skips without one).
 *
 * Weights: weight_prepare uploads each matrix once, in its stored type, and
 * linear finds the copy by the mt_mat's host data pointer (a hash table).
 * qmoe matrices keep codes, group offsets and scales on the device, and
 * their dictionary (len and masks of every codeword) once per model.
 *
 * linear: fewer than MT_CU_GEMM_MIN_N rows of X run a matvec kernel (a warp
 * per output row, mt_cu_lane_dot; f32/f16/bf16, q8_0/q4_0, the K-quants
 * Q2_K–Q6_K and TQ1_0/TQ2_0); more rows convert W to f32 in a device
 * scratch (f32 weights are used in place) and call cublasSgemm without
 * TF32. qmoe runs its group walk (mt_cu_qmoe_group_dot), one thread per
 * group of 16 rows and row of X: correct, not fast.
 *
 * Errors: ops return nothing, so the first failing CUDA or cuBLAS call is
 * recorded (later ops do nothing) and `status` reports it; the runtime asks
 * after every forward. The linear algebra of quant and merge takes device
 * buffers too: gemm and syrk run in cuBLAS, potrf/potri/posv copy to the
 * host and run LAPACK there (the CPU backend's). */
extern "C" {
#include "../backend.h"
#include "moetool/mt_qmoe.h"
}
#include "../kernels_hd.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Batches of at least this many rows go through cuBLAS. */
#define MT_CU_GEMM_MIN_N 8
/* Warps per block of the matvec kernel. */
#define MT_CU_MV_WARPS 4
/* Threads of the row-wise kernels (rmsnorm, rope, attention). */
#define MT_CU_ROW_THREADS 128
/* Oldest compute capability this build runs on (CMAKE_CUDA_ARCHITECTURES). */
#define MT_CU_MIN_CC 80

typedef struct {
    const void *key; /* the mt_mat's host data pointer; NULL: free slot */
    int kind;
    void *data;       /* rows in the stored layout; qmoe: codes        */
    uint32_t *offsets; /* qmoe: group offsets                          */
    uint16_t *scales;  /* qmoe: f16 lo, hi per row                     */
    uint64_t n_codes;
    const uint8_t *len; /* qmoe: the dictionary's copy (not owned)      */
    const uint64_t *mask;
} cu_weight;

typedef struct {
    const mt_qmoe_dict *host;
    uint8_t *len;
    uint64_t *mask;
} cu_dict;

/* cuBLAS is opened when the backend starts, not linked: its libraries cost
 * every moetool process ~215 MiB of RSS and 0.3 s at load even on the CPU. */
typedef struct {
    void *lib;
    cublasStatus_t (*create)(cublasHandle_t *);
    cublasStatus_t (*destroy)(cublasHandle_t);
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
    cublasStatus_t (*set_math)(cublasHandle_t, cublasMath_t);
    cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float *,
                            const float *, int, const float *, int, const float *, float *, int);
    cublasStatus_t (*dsyrk)(cublasHandle_t, cublasFillMode_t, cublasOperation_t, int, int, const double *,
                            const double *, int, const double *, double *, int);
    const char *(*status_string)(cublasStatus_t);
} cublas_fns;

typedef struct {
    cublas_fns fn;
    int device;
    cudaDeviceProp prop;
    cudaStream_t stream;
    cublasHandle_t blas;
    cu_weight *w; /* open addressing, capacity a power of two */
    size_t w_cap, w_n;
    cu_dict dicts[8];
    int n_dicts;
    float *mm; /* W as f32 for cuBLAS */
    size_t mm_floats;
    size_t mm_need; /* max rows·cols of prepared non-f32 matrices */
    void *stage;    /* ids, rows, gates, aliases from the host */
    size_t stage_bytes;
    float *att; /* attention scores (n, n_heads, n_ctx) */
    size_t att_floats;
    int err;
    char msg[320];
} cu_impl;

static cu_impl *impl(mt_backend *be) { return (cu_impl *)be->impl; }

/* ---- errors -------------------------------------------------------------- */
static void fail(cu_impl *ci, const char *what, const char *why) {
    if (ci->err) return;
    ci->err = MT_ERR_IO;
    snprintf(ci->msg, sizeof ci->msg, "%s: %s", what, why);
}
static int ck(cu_impl *ci, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 0;
    fail(ci, what, cudaGetErrorString(e));
    return 1;
}
static int ckb(cu_impl *ci, cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    fail(ci, what, ci->fn.status_string ? ci->fn.status_string(s) : "cuBLAS error");
    return 1;
}
/* After a kernel launch. */
static void launched(cu_impl *ci, const char *what) { ck(ci, cudaGetLastError(), what); }

static int cu_status(mt_backend *be) {
    cu_impl *ci = impl(be);
    if (!ci->err) return MT_OK;
    return mt_seterr(ci->err, "cuda backend (device %d, %s): %s", ci->device, ci->prop.name, ci->msg);
}

/* Grows a device scratch to at least `bytes` (waits for queued work first:
 * growth happens on the first forwards only). */
static int grow(cu_impl *ci, void **buf, size_t *cap, size_t bytes, const char *what) {
    if (bytes <= *cap) return 0;
    if (ck(ci, cudaStreamSynchronize(ci->stream), what)) return 1;
    cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    if (ck(ci, cudaMalloc(buf, bytes), what)) return 1;
    *cap = bytes;
    return 0;
}

/* Host array -> the staging buffer at byte offset `at`; NULL on error.
 * Copies from pageable memory return once the source has been read, and
 * the stream orders them after the kernels that used the previous contents. */
static void *stage(cu_impl *ci, size_t at, const void *host, size_t bytes, size_t total) {
    if (grow(ci, &ci->stage, &ci->stage_bytes, total, "staging buffer")) return NULL;
    char *d = (char *)ci->stage + at;
    if (ck(ci, cudaMemcpyAsync(d, host, bytes, cudaMemcpyHostToDevice, ci->stream), "upload to staging")) return NULL;
    return d;
}

static unsigned blocks(size_t n, unsigned threads) { return (unsigned)((n + threads - 1) / threads); }

/* ---- buffers ----------------------------------------------------------------- */
static void *cu_buf_alloc(mt_backend *be, size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is the caller's to report */
        return NULL;
    }
    return p;
}
static void cu_buf_free(mt_backend *be, void *buf) {
    if (buf) cudaFree(buf);
}
static void cu_upload(mt_backend *be, void *buf, const void *host, size_t bytes) {
    cu_impl *ci = impl(be);
    if (ci->err || !bytes) return;
    ck(ci, cudaMemcpyAsync(buf, host, bytes, cudaMemcpyHostToDevice, ci->stream), "upload");
}
static void cu_download(mt_backend *be, void *host, const void *buf, size_t bytes) {
    cu_impl *ci = impl(be);
    if (ci->err || !bytes) return;
    if (ck(ci, cudaMemcpyAsync(host, buf, bytes, cudaMemcpyDeviceToHost, ci->stream), "download")) return;
    ck(ci, cudaStreamSynchronize(ci->stream), "download");
}
static void cu_buf_zero(mt_backend *be, void *buf, size_t bytes) {
    cu_impl *ci = impl(be);
    if (!ci->err) ck(ci, cudaMemsetAsync(buf, 0, bytes, ci->stream), "memset");
}
static void cu_synchronize(mt_backend *be) {
    cu_impl *ci = impl(be);
    if (!ci->err) ck(ci, cudaStreamSynchronize(ci->stream), "synchronize");
}

/* ---- weights --------------------------------------------------------------- */
static int kind_of(mt_dtype t) {
    switch (t) {
    case MT_DT_F32: return MT_CU_F32;
    case MT_DT_F16: return MT_CU_F16;
    case MT_DT_BF16: return MT_CU_BF16;
    case MT_DT_Q8_0: return MT_CU_Q8_0;
    case MT_DT_Q4_0: return MT_CU_Q4_0;
    case MT_DT_QMOE: return MT_CU_QMOE;
    case MT_DT_Q2_K: return MT_CU_Q2_K;
    case MT_DT_Q3_K: return MT_CU_Q3_K;
    case MT_DT_Q4_K: return MT_CU_Q4_K;
    case MT_DT_Q5_K: return MT_CU_Q5_K;
    case MT_DT_Q6_K: return MT_CU_Q6_K;
    case MT_DT_TQ1_0: return MT_CU_TQ1_0;
    case MT_DT_TQ2_0: return MT_CU_TQ2_0;
    default: return MT_CU_NONE;
    }
}

static size_t hash_ptr(const void *p, size_t cap) {
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (cap - 1);
}

static cu_weight *lookup(cu_impl *ci, const void *key) {
    if (!ci->w_cap) return NULL;
    for (size_t i = hash_ptr(key, ci->w_cap);; i = (i + 1) & (ci->w_cap - 1)) {
        if (ci->w[i].key == key) return &ci->w[i];
        if (!ci->w[i].key) return NULL;
    }
}

/* A free slot for key (the table at most half full). */
static cu_weight *insert(cu_impl *ci, const void *key) {
    if (2 * (ci->w_n + 1) > ci->w_cap) {
        size_t cap = ci->w_cap ? 2 * ci->w_cap : 256;
        cu_weight *nw = (cu_weight *)calloc(cap, sizeof *nw);
        if (!nw) return NULL;
        for (size_t i = 0; i < ci->w_cap; i++)
            if (ci->w[i].key) {
                size_t j = hash_ptr(ci->w[i].key, cap);
                while (nw[j].key) j = (j + 1) & (cap - 1);
                nw[j] = ci->w[i];
            }
        free(ci->w);
        ci->w = nw;
        ci->w_cap = cap;
    }
    size_t i = hash_ptr(key, ci->w_cap);
    while (ci->w[i].key) i = (i + 1) & (ci->w_cap - 1);
    ci->w_n++;
    return &ci->w[i];
}

static int cu_mat_supported(mt_backend *be, const mt_mat *W) {
    const int k = kind_of(W->dtype);
    if (k == MT_CU_NONE) return MT_ERR_UNSUPPORTED;
    if (k == MT_CU_QMOE) {
        if (!mt_qmoe_mat_ok(W)) return MT_ERR_FORMAT;
        return MT_OK;
    }
    if ((k == MT_CU_Q8_0 || k == MT_CU_Q4_0) && W->cols % MT_CU_QK) return MT_ERR_FORMAT;
    if (mt_cu_sb_bytes(k) && W->cols % MT_CU_QK_K) return MT_ERR_FORMAT;
    if (W->rows > 1 && (uint64_t)mt_cu_row_bytes(k, W->cols) > W->row_stride) return MT_ERR_FORMAT;
    return MT_OK;
}

/* cudaMalloc + copy with a message naming the size and the free memory. */
static int dev_copy(cu_impl *ci, void **out, const void *host, size_t bytes, const char *what) {
    *out = NULL;
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return mt_seterr(MT_ERR_NOMEM,
                         "cuda backend (device %d, %s): out of device memory for %s (%.1f MiB; %.1f of %.1f GiB free)",
                         ci->device, ci->prop.name, what, bytes / 1048576.0, fr / 1073741824.0, tot / 1073741824.0);
    }
    if (bytes && (e = cudaMemcpy(*out, host, bytes, cudaMemcpyHostToDevice)) != cudaSuccess)
        return mt_seterr(MT_ERR_IO, "cuda backend (device %d): uploading %s: %s", ci->device, what,
                         cudaGetErrorString(e));
    return MT_OK;
}

static int upload_dict(cu_impl *ci, const mt_qmoe_dict *d, cu_dict **out) {
    for (int i = 0; i < ci->n_dicts; i++)
        if (ci->dicts[i].host == d) {
            *out = &ci->dicts[i];
            return MT_OK;
        }
    if (ci->n_dicts == (int)(sizeof ci->dicts / sizeof ci->dicts[0]))
        return mt_seterr(MT_ERR_UNSUPPORTED, "cuda backend: more than %d qmoe dictionaries in one model", ci->n_dicts);
    cu_dict *cd = &ci->dicts[ci->n_dicts];
    int st;
    if ((st = dev_copy(ci, (void **)&cd->len, d->len, (size_t)d->n_entries, "qmoe dictionary")) < 0) return st;
    if ((st = dev_copy(ci, (void **)&cd->mask, d->mask, (size_t)d->n_entries * 8, "qmoe dictionary")) < 0) return st;
    cd->host = d;
    ci->n_dicts++;
    *out = cd;
    return MT_OK;
}

static int cu_weight_prepare(mt_backend *be, const mt_mat *W) {
    cu_impl *ci = impl(be);
    if (lookup(ci, W->data)) return MT_OK; /* shared (tied embeddings) or already there */
    const int k = kind_of(W->dtype);
    if (k == MT_CU_NONE) return mt_seterr(MT_ERR_UNSUPPORTED, "cuda backend: storage type without kernels");
    cu_weight *e = insert(ci, W->data);
    if (!e) return mt_seterr(MT_ERR_NOMEM, "cuda backend: out of memory (weight table)");
    e->key = W->data;
    e->kind = k;
    int st;
    if (k == MT_CU_QMOE) {
        const mt_qmoe_dict *d = W->side.qmoe.dict;
        cu_dict *cd = NULL;
        e->n_codes = W->side.qmoe.n_codes;
        if ((st = upload_dict(ci, d, &cd)) < 0) return st;
        e->len = cd->len;
        e->mask = cd->mask;
        if ((st = dev_copy(ci, &e->data, W->data, e->n_codes * 2, "qmoe codes")) < 0) return st;
        if ((st = dev_copy(ci, (void **)&e->offsets, W->side.qmoe.offsets,
                           ((size_t)mt_qmoe_n_groups(W->rows, (int)W->group) + 1) * sizeof(uint32_t), "qmoe offsets")) < 0) return st;
        return dev_copy(ci, (void **)&e->scales, W->side.qmoe.scales, (size_t)W->rows * 4, "qmoe scales");
    }
    const size_t bytes = (size_t)(W->rows - 1) * W->row_stride + (size_t)mt_cu_row_bytes(k, W->cols);
    if ((st = dev_copy(ci, &e->data, W->data, bytes, "a weight matrix")) < 0) return st;
    if (k != MT_CU_F32 && (size_t)W->rows * (size_t)W->cols > ci->mm_need) ci->mm_need = (size_t)W->rows * W->cols;
    return MT_OK;
}

/* ---- kernels ------------------------------------------------------------------ */
/* Y (n, rows) = X (n, cols) · Wᵀ: warp per output row, blockIdx.y the row of X. */
__global__ void k_matvec(int kind, const uint8_t *W, uint64_t stride, int64_t rows, int64_t cols, const float *X,
                         float *Y) {
    const int lane = threadIdx.x % MT_CU_LANES;
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x / MT_CU_LANES) + threadIdx.x / MT_CU_LANES;
    if (r >= rows) return;
    const int64_t i = blockIdx.y;
    float s = mt_cu_lane_dot(kind, W + r * stride, X + i * cols, cols, lane, MT_CU_LANES);
    for (int o = MT_CU_LANES / 2; o > 0; o /= 2) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) Y[i * rows + r] = s;
}

/* out (n, cols) = rows ids[i] of W as f32 (or all rows when ids is NULL). */
__global__ void k_rows_f32(int kind, const uint8_t *W, uint64_t stride, int64_t cols, const int32_t *ids, int n,
                           float *out) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)n * cols) return;
    const int64_t i = idx / cols, c = idx % cols;
    const int64_t r = ids ? ids[i] : i;
    out[idx] = mt_cu_elem(kind, W + r * stride, c);
}

__global__ void k_qmoe(const uint16_t *codes, const uint32_t *offsets, uint64_t n_codes, const uint8_t *len,
                       const uint64_t *mask, const uint16_t *scales, int64_t rows, int64_t cols, int64_t group_rows,
                       int64_t n_groups, const float *X, float *Y) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= n_groups) return;
    const int64_t i = blockIdx.y;
    mt_cu_qmoe_group_dot(codes, offsets, n_codes, len, mask, scales, rows, cols, group_rows, g, X + i * cols,
                         Y + i * rows);
}

/* Sum (or max) of v over the block; every thread gets the result. */
template <typename T, bool MAX> __device__ T block_reduce(T v, T *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) sh[threadIdx.x] = MAX ? fmax(sh[threadIdx.x], sh[threadIdx.x + s]) : sh[threadIdx.x] + sh[threadIdx.x + s];
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

__global__ void k_rmsnorm(float *out, const float *x, const float *w, int dim, float eps) {
    __shared__ double sh[MT_CU_ROW_THREADS];
    const float *xi = x + (size_t)blockIdx.x * dim;
    float *oi = out + (size_t)blockIdx.x * dim;
    double ss = 0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += (double)xi[j] * xi[j];
    ss = block_reduce<double, false>(ss, sh);
    const float r = mt_cu_rms_scale(ss, dim, eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) oi[j] = w[j] * (xi[j] * r);
}

/* Block (row i, head h); the head is read into shared memory first, so the
 * interleaved style can write in place. */
__global__ void k_rope(float *x, int stride, int d, int pos, const float *cos_t, const float *sin_t, int style) {
    extern __shared__ float head[];
    const int i = blockIdx.x, h = blockIdx.y, half = d / 2;
    float *p = x + (size_t)i * stride + (size_t)h * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) head[j] = p[j];
    __syncthreads();
    const float *cs = cos_t + (size_t)(pos + i) * half, *sn = sin_t + (size_t)(pos + i) * half;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        int s0, s1;
        mt_cu_rope_src(style, j, half, &s0, &s1);
        const float x0 = head[s0], x1 = head[s1];
        p[j] = x0 * cs[j] - x1 * sn[j];
        p[j + half] = x1 * cs[j] + x0 * sn[j];
    }
}

/* Block (query row i, query head hq): scores over the cache prefix into S,
 * softmax, then the weighted sum of values (as the CPU: p = e / Σe, out =
 * Σ p·v). */
__global__ void k_attention(const float *q, const float *kc, const float *vc, float *out, float *scores, int pos,
                            int n_ctx, int n_heads, int n_kv_heads, int d) {
    __shared__ float sh[MT_CU_ROW_THREADS];
    const int i = blockIdx.x, hq = blockIdx.y, hk = mt_cu_kv_head(hq, n_heads, n_kv_heads);
    const int q_dim = n_heads * d, kv_dim = n_kv_heads * d, len = pos + i + 1;
    const float *qi = q + (size_t)i * q_dim + (size_t)hq * d;
    float *S = scores + ((size_t)i * n_heads + hq) * n_ctx;
    const float scale = 1.0f / sqrtf((float)d);
    float mx = -FLT_MAX;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const float *kj = kc + (size_t)j * kv_dim + (size_t)hk * d;
        float s = 0.0f;
        for (int u = 0; u < d; u++) s += qi[u] * kj[u];
        S[j] = s * scale;
        mx = fmaxf(mx, S[j]);
    }
    mx = block_reduce<float, true>(mx, sh);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        S[j] = expf(S[j] - mx);
        sum += S[j];
    }
    sum = block_reduce<float, false>(sum, sh); /* its barriers also publish S */
    const float inv = 1.0f / sum;
    float *oi = out + (size_t)i * q_dim + (size_t)hq * d;
    for (int u = threadIdx.x; u < d; u += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < len; j++) o += (S[j] * inv) * vc[(size_t)j * kv_dim + (size_t)hk * d + u];
        oi[u] = o;
    }
}

__global__ void k_swiglu(float *g, const float *u, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

__global__ void k_add(float *x, const float *y, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

__global__ void k_router(const float *logits, float *probs, int32_t *topk, float *gates, int n, int n_rows, int top_k,
                         const int32_t *alias, int renorm) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    mt_cu_router_row(logits + (size_t)i * n_rows, n_rows, top_k, renorm, alias, probs + (size_t)i * n_rows,
                     topk + (size_t)i * top_k, gates + (size_t)i * top_k);
}

__global__ void k_gather(float *dst, const float *src, const int32_t *rows, int m, int dim) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)m * dim) return;
    const size_t r = idx / dim, j = idx % dim;
    dst[idx] = src[(size_t)rows[r] * dim + j];
}

/* Rows of one list are distinct (one expert per token once), so no two
 * threads add into the same element. */
__global__ void k_scatter_add(float *dst, const float *src, const int32_t *rows, const float *gates, int m, int dim) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)m * dim) return;
    const size_t r = idx / dim, j = idx % dim;
    dst[(size_t)rows[r] * dim + j] += gates[r] * src[idx];
}

/* ---- ops -------------------------------------------------------------------- */
static void cu_linear(mt_backend *be, const mt_mat *W, const float *X, int n, float *Y) {
    cu_impl *ci = impl(be);
    if (ci->err || n <= 0) return;
    const cu_weight *e = lookup(ci, W->data);
    if (!e) return fail(ci, "linear", "weight matrix was not prepared (weight_prepare)");
    if (e->kind == MT_CU_QMOE) {
        const int64_t ng = mt_qmoe_n_groups(W->rows, (int)W->group);
        k_qmoe<<<dim3(blocks((size_t)ng, 64), (unsigned)n), 64, 0, ci->stream>>>(
            (const uint16_t *)e->data, e->offsets, e->n_codes, e->len, e->mask, e->scales, W->rows, W->cols, W->group,
            ng, X, Y);
        return launched(ci, "qmoe matvec kernel");
    }
    if (n < MT_CU_GEMM_MIN_N) {
        const unsigned per = MT_CU_MV_WARPS;
        k_matvec<<<dim3(blocks((size_t)W->rows, per), (unsigned)n), per * MT_CU_LANES, 0, ci->stream>>>(
            e->kind, (const uint8_t *)e->data, W->row_stride, W->rows, W->cols, X, Y);
        return launched(ci, "matvec kernel");
    }
    const float *Wf = (const float *)e->data;
    int64_t ld = W->cols;
    if (e->kind == MT_CU_F32) {
        ld = (int64_t)(W->row_stride / 4);
    } else {
        const size_t need = (size_t)W->rows * (size_t)W->cols;
        if (grow(ci, (void **)&ci->mm, &ci->mm_floats, need * sizeof(float), "f32 weight scratch")) return;
        k_rows_f32<<<blocks(need, 256), 256, 0, ci->stream>>>(e->kind, (const uint8_t *)e->data, W->row_stride, W->cols,
                                                             NULL, (int)W->rows, ci->mm);
        launched(ci, "weight conversion kernel");
        Wf = ci->mm;
    }
    /* Row-major Y (n, rows) is column-major Yᵀ (rows, n) = W · Xᵀ, W read
     * as the column-major (cols, rows) matrix it is, transposed. */
    const float one = 1.0f, zero = 0.0f;
    ckb(ci,
        ci->fn.sgemm(ci->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)W->rows, n, (int)W->cols, &one, Wf, (int)ld, X,
                    (int)W->cols, &zero, Y, (int)W->rows),
        "cublasSgemm (linear)");
}

static void cu_get_rows(mt_backend *be, const mt_mat *W, const int32_t *ids, int n, float *out) {
    cu_impl *ci = impl(be);
    if (ci->err || n <= 0) return;
    const cu_weight *e = lookup(ci, W->data);
    if (!e) return fail(ci, "get_rows", "matrix was not prepared (weight_prepare)");
    if (e->kind == MT_CU_QMOE) return fail(ci, "get_rows", "rows of a qmoe matrix (embeddings are never coded)");
    const int32_t *d_ids = (const int32_t *)stage(ci, 0, ids, (size_t)n * 4, (size_t)n * 4);
    if (!d_ids) return;
    const size_t tot = (size_t)n * (size_t)W->cols;
    k_rows_f32<<<blocks(tot, 256), 256, 0, ci->stream>>>(e->kind, (const uint8_t *)e->data, W->row_stride, W->cols,
                                                        d_ids, n, out);
    launched(ci, "get_rows kernel");
}

static void cu_rmsnorm(mt_backend *be, float *out, const float *x, const float *w, int n, int dim, float eps) {
    cu_impl *ci = impl(be);
    if (ci->err || n <= 0) return;
    k_rmsnorm<<<(unsigned)n, MT_CU_ROW_THREADS, 0, ci->stream>>>(out, x, w, dim, eps);
    launched(ci, "rmsnorm kernel");
}

static void cu_rope(mt_backend *be, const mt_be_rope_args *a) {
    cu_impl *ci = impl(be);
    if (ci->err || a->n <= 0) return;
    k_rope<<<dim3((unsigned)a->n, (unsigned)a->n_heads), MT_CU_ROW_THREADS, (size_t)a->d * sizeof(float), ci->stream>>>(
        a->x, a->stride, a->d, a->pos, a->cos_t, a->sin_t, a->style == MT_BE_ROPE_PAIRS);
    launched(ci, "rope kernel");
}

/* The scores live in the backend's own scratch (it needs n_heads, which the
 * interface's size query does not pass). */
static size_t cu_attn_scratch_floats(mt_backend *be, int n_batch, int n_ctx) { return 1; }

static void cu_attention(mt_backend *be, const mt_be_attn_args *a) {
    cu_impl *ci = impl(be);
    if (ci->err || a->n <= 0) return;
    const size_t kv_dim = (size_t)a->n_kv_heads * a->d, nb = (size_t)a->n * kv_dim * sizeof(float);
    if (ck(ci, cudaMemcpyAsync(a->k_cache + (size_t)a->pos * kv_dim, a->k, nb, cudaMemcpyDeviceToDevice, ci->stream),
           "kv cache store"))
        return;
    if (ck(ci, cudaMemcpyAsync(a->v_cache + (size_t)a->pos * kv_dim, a->v, nb, cudaMemcpyDeviceToDevice, ci->stream),
           "kv cache store"))
        return;
    const size_t need = (size_t)a->n * a->n_heads * a->n_ctx * sizeof(float);
    if (grow(ci, (void **)&ci->att, &ci->att_floats, need, "attention scores")) return;
    k_attention<<<dim3((unsigned)a->n, (unsigned)a->n_heads), MT_CU_ROW_THREADS, 0, ci->stream>>>(
        a->q, a->k_cache, a->v_cache, a->out, ci->att, a->pos, a->n_ctx, a->n_heads, a->n_kv_heads, a->d);
    launched(ci, "attention kernel");
}

static void cu_swiglu(mt_backend *be, float *g, const float *u, size_t n) {
    cu_impl *ci = impl(be);
    if (ci->err || !n) return;
    k_swiglu<<<blocks(n, 256), 256, 0, ci->stream>>>(g, u, n);
    launched(ci, "swiglu kernel");
}

static void cu_add(mt_backend *be, float *x, const float *y, size_t n) {
    cu_impl *ci = impl(be);
    if (ci->err || !n) return;
    k_add<<<blocks(n, 256), 256, 0, ci->stream>>>(x, y, n);
    launched(ci, "add kernel");
}

static void cu_router_topk(mt_backend *be, const mt_be_router_args *a) {
    cu_impl *ci = impl(be);
    if (ci->err || a->n <= 0) return;
    const int32_t *alias = NULL;
    if (a->alias && !(alias = (const int32_t *)stage(ci, 0, a->alias, (size_t)a->n_rows * 4, (size_t)a->n_rows * 4)))
        return;
    k_router<<<blocks((size_t)a->n, 64), 64, 0, ci->stream>>>(a->logits, a->probs, a->topk, a->gates, a->n, a->n_rows,
                                                             a->top_k, alias, a->renorm);
    launched(ci, "router kernel");
}

static void cu_gather_rows(mt_backend *be, float *dst, const float *src, const int32_t *rows, int m, int dim) {
    cu_impl *ci = impl(be);
    if (ci->err || m <= 0) return;
    const int32_t *d_rows = (const int32_t *)stage(ci, 0, rows, (size_t)m * 4, (size_t)m * 4);
    if (!d_rows) return;
    k_gather<<<blocks((size_t)m * dim, 256), 256, 0, ci->stream>>>(dst, src, d_rows, m, dim);
    launched(ci, "gather kernel");
}

static void cu_scatter_add_rows(mt_backend *be, float *dst, const float *src, const int32_t *rows, const float *gates,
                                int m, int dim) {
    cu_impl *ci = impl(be);
    if (ci->err || m <= 0) return;
    const size_t b = (size_t)m * 4;
    const int32_t *d_rows = (const int32_t *)stage(ci, 0, rows, b, 2 * b);
    const float *d_gates = d_rows ? (const float *)stage(ci, b, gates, b, 2 * b) : NULL;
    if (!d_gates) return;
    k_scatter_add<<<blocks((size_t)m * dim, 256), 256, 0, ci->stream>>>(dst, src, d_rows, d_gates, m, dim);
    launched(ci, "scatter-add kernel");
}

/* ---- linear algebra --------------------------------------------------------------
 * Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and a
 * row-major matrix read column-major is its transpose: swap A and B. */
static void cu_gemm_f32(mt_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                        int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    cu_impl *ci = impl(be);
    if (ci->err) return;
    ckb(ci,
        ci->fn.sgemm(ci->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                    B, ldb, A, lda, &beta, C, ldc),
        "cublasSgemm");
}

/* Upper triangle of row-major C = lower triangle of column-major C; A (k, n)
 * row-major is column-major Aᵀ (n, k), and Aᵀ·A = (Aᵀ)·(Aᵀ)ᵀ. */
static void cu_syrk_f64(mt_backend *be, int n, int k, double alpha, const double *A, int lda, double beta, double *C,
                        int ldc) {
    cu_impl *ci = impl(be);
    if (ci->err) return;
    ckb(ci, ci->fn.dsyrk(ci->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, k, &alpha, A, lda, &beta, C, ldc),
        "cublasDsyrk");
}

/* LAPACK on the host: A (lda·n) and B (ldb·nrhs) copied down and back up. */
typedef enum { LA_POTRF, LA_POTRI, LA_POSV } la_op;
static int host_lapack(mt_backend *be, la_op op, char uplo, int n, int nrhs, double *A, int lda, double *B, int ldb) {
    cu_impl *ci = impl(be);
    if (ci->err) return -1;
    const size_t na = (size_t)lda * n * sizeof(double), nbb = B ? (size_t)ldb * nrhs * sizeof(double) : 0;
    double *ha = (double *)malloc(na ? na : 1), *hb = (double *)malloc(nbb ? nbb : 1);
    int info = -1;
    if (!ha || !hb) {
        fail(ci, "lapack", "out of host memory");
        goto done;
    }
    cu_download(be, ha, A, na);
    if (B) cu_download(be, hb, B, nbb);
    if (ci->err) goto done;
    {
        mt_backend *cpu = mt_backend_default();
        if (op == LA_POTRF) info = cpu->ops->potrf_f64(cpu, uplo, n, ha, lda);
        else if (op == LA_POTRI) info = cpu->ops->potri_f64(cpu, uplo, n, ha, lda);
        else info = cpu->ops->posv_f64(cpu, uplo, n, nrhs, ha, lda, hb, ldb);
    }
    cu_upload(be, A, ha, na);
    if (B) cu_upload(be, B, hb, nbb);
    cu_synchronize(be);
done:
    free(ha);
    free(hb);
    return info;
}
static int cu_potrf_f64(mt_backend *be, char uplo, int n, double *A, int lda) {
    return host_lapack(be, LA_POTRF, uplo, n, 0, A, lda, NULL, 0);
}
static int cu_potri_f64(mt_backend *be, char uplo, int n, double *A, int lda) {
    return host_lapack(be, LA_POTRI, uplo, n, 0, A, lda, NULL, 0);
}
static int cu_posv_f64(mt_backend *be, char uplo, int n, int nrhs, double *A, int lda, double *B, int ldb) {
    return host_lapack(be, LA_POSV, uplo, n, nrhs, A, lda, B, ldb);
}

static void cu_free(mt_backend *be) {
    cu_impl *ci = impl(be);
    if (ci) {
        if (ci->stream) cudaStreamSynchronize(ci->stream);
        for (size_t i = 0; i < ci->w_cap; i++)
            if (ci->w[i].key) {
                cudaFree(ci->w[i].data);
                cudaFree(ci->w[i].offsets);
                cudaFree(ci->w[i].scales);
            }
        for (int i = 0; i < ci->n_dicts; i++) {
            cudaFree(ci->dicts[i].len);
            cudaFree(ci->dicts[i].mask);
        }
        free(ci->w);
        cudaFree(ci->mm);
        cudaFree(ci->stage);
        cudaFree(ci->att);
        if (ci->blas) ci->fn.destroy(ci->blas);
        if (ci->fn.lib) dlclose(ci->fn.lib);
        if (ci->stream) cudaStreamDestroy(ci->stream);
        free(ci);
    }
    free(be);
}

static mt_backend_ops make_ops(void) {
    mt_backend_ops o;
    memset(&o, 0, sizeof o);
    o.buf_alloc = cu_buf_alloc;
    o.buf_free = cu_buf_free;
    o.upload = cu_upload;
    o.download = cu_download;
    o.buf_zero = cu_buf_zero;
    o.synchronize = cu_synchronize;
    o.mat_supported = cu_mat_supported;
    o.weight_prepare = cu_weight_prepare;
    o.linear = cu_linear;
    o.get_rows = cu_get_rows;
    o.rmsnorm = cu_rmsnorm;
    o.rope = cu_rope;
    o.attn_scratch_floats = cu_attn_scratch_floats;
    o.attention = cu_attention;
    o.swiglu = cu_swiglu;
    o.add = cu_add;
    o.router_topk = cu_router_topk;
    o.gather_rows = cu_gather_rows;
    o.scatter_add_rows = cu_scatter_add_rows;
    o.gemm_f32 = cu_gemm_f32;
    o.syrk_f64 = cu_syrk_f64;
    o.potrf_f64 = cu_potrf_f64;
    o.potri_f64 = cu_potri_f64;
    o.posv_f64 = cu_posv_f64;
    o.status = cu_status;
    o.free = cu_free;
    return o;
}
static const mt_backend_ops g_cuda_ops = make_ops();

static int load_cublas(cublas_fns *f) {
    char name[32];
    snprintf(name, sizeof name, "libcublas.so.%d", CUBLAS_VER_MAJOR);
    f->lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!f->lib) return mt_seterr(MT_ERR_UNSUPPORTED, "cuda backend: cannot load cuBLAS (%s): %s", name, dlerror());
    const char *names[] = {"cublasCreate_v2",  "cublasDestroy_v2", "cublasSetStream_v2",   "cublasSetMathMode",
                           "cublasSgemm_v2",   "cublasDsyrk_v2",   "cublasGetStatusString"};
    void **slots[] = {(void **)&f->create, (void **)&f->destroy, (void **)&f->set_stream, (void **)&f->set_math,
                      (void **)&f->sgemm,  (void **)&f->dsyrk,   (void **)&f->status_string};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!(*slots[i] = dlsym(f->lib, names[i])))
            return mt_seterr(MT_ERR_UNSUPPORTED, "cuda backend: %s lacks %s", name, names[i]);
    return MT_OK;
}

extern "C" int mt_backend_cuda_init(mt_backend **out, int device) {
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mt_seterr(MT_ERR_UNSUPPORTED, "no CUDA device found: %s", cudaGetErrorString(e));
    }
    if (count == 0) return mt_seterr(MT_ERR_UNSUPPORTED, "no CUDA device found: the driver reports 0 devices");
    if (device < 0 || device >= count)
        return mt_seterr(MT_ERR_ARG, "CUDA device %d does not exist (%d device%s found)", device, count,
                         count == 1 ? "" : "s");
    mt_backend *be = (mt_backend *)calloc(1, sizeof *be);
    cu_impl *ci = (cu_impl *)calloc(1, sizeof *ci);
    if (!be || !ci) {
        free(be);
        free(ci);
        return mt_seterr(MT_ERR_NOMEM, "cuda backend: out of memory");
    }
    be->ops = &g_cuda_ops;
    be->name = "cuda";
    be->n_threads = 1;
    be->host_memory = 0;
    be->impl = ci;
    ci->device = device;
    int st = MT_OK;
    if ((e = cudaGetDeviceProperties(&ci->prop, device)) != cudaSuccess || (e = cudaSetDevice(device)) != cudaSuccess) {
        st = mt_seterr(MT_ERR_IO, "CUDA device %d: %s", device, cudaGetErrorString(e));
        goto fail;
    }
    if (ci->prop.major * 10 + ci->prop.minor < MT_CU_MIN_CC) {
        st = mt_seterr(MT_ERR_UNSUPPORTED,
                       "CUDA device %d (%s) has compute capability %d.%d; this build needs %d.%d or newer", device,
                       ci->prop.name, ci->prop.major, ci->prop.minor, MT_CU_MIN_CC / 10, MT_CU_MIN_CC % 10);
        goto fail;
    }
    if ((e = cudaStreamCreateWithFlags(&ci->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = mt_seterr(MT_ERR_IO, "CUDA device %d (%s): creating a stream: %s", device, ci->prop.name,
                       cudaGetErrorString(e));
        goto fail;
    }
    if ((st = load_cublas(&ci->fn)) < 0) goto fail;
    {
        cublasStatus_t bs = ci->fn.create(&ci->blas);
        if (bs == CUBLAS_STATUS_SUCCESS) bs = ci->fn.set_stream(ci->blas, ci->stream);
        if (bs == CUBLAS_STATUS_SUCCESS) bs = ci->fn.set_math(ci->blas, CUBLAS_PEDANTIC_MATH); /* no TF32 */
        if (bs != CUBLAS_STATUS_SUCCESS) {
            if (ci->blas) ci->fn.destroy(ci->blas);
            ci->blas = NULL;
            st = mt_seterr(MT_ERR_IO, "CUDA device %d (%s): cuBLAS: %s", device, ci->prop.name,
                           ci->fn.status_string(bs));
            goto fail;
        }
    }
    *out = be;
    return MT_OK;
fail:
    cu_free(be);
    return st;
}
