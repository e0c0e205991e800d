/* forward.c — the Mixtral forward on the CPU, as Hugging Face's
 * MixtralForCausalLM computes it in f32:
 *
 *   x = embed[tok]
 *   per layer:  h = rmsnorm(x) * w_attn
 *               q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ        (GGUF: un-permute q, k)
 *               RoPE (rotate_half: pairs i, i + head_dim/2) on q, k
 *               causal GQA attention, softmax(q·k / sqrt(head_dim))
 *               x += attn Woᵀ
 *               h = rmsnorm(x) * w_ffn
 *               p = softmax(h Wrᵀ) in f32; top-k (ties: lower expert first);
 *               gates = p_topk / sum(p_topk)
 *               x += Σ_k gate_k · W2_e(silu(W1_e h) ⊙ W3_e h)
 *   logits = rmsnorm(x) * w_out · lm_headᵀ
 *
 * Capture events (mt_runtime.h) are delivered at ATTN_IN, ATTN_OUT (attn,
 * before Wo), FFN_IN, ROUTER_LOGITS, EXPERT_IN/OUT and LAYER_OUT of every
 * layer and at FINAL_NORM (rmsnorm(x) * w_out of all rows) after the last;
 * a kind not in the mask costs one test of the mask.
 *
 * An aliased layer (router of R rows over K experts, row r -> expert
 * alias[r]) takes the softmax and top-k over the R rows as above, then maps
 * the chosen rows to experts; rows that alias one expert add their gates and
 * that expert runs once (its later top-k slots become -1, gate 0). With
 * aliased experts that are identical copies this is exactly the unaliased
 * model. Routing counts, top-k ids and capture events name experts; the
 * ROUTER_LOGITS event carries the R row logits.
 * A dense model (n_experts = 0) runs w1[0]/w3[0]/w2[0] with gate 1.
 * Prefill (n > 1) multiplies whole batches with mt_matmul; each expert gets
 * the rows routed to it gathered into one matrix, and its output is
 * scattered back with the gate weights, experts in index order as HF adds
 * them. Decode (n == 1) uses mt_matvec. Every buffer is allocated once in
 * mt_ctx_init. */
#include "runtime_impl.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- context ------------------------------------------------------------ */

/* a * b * c * sizeof(float) without overflow, or 0. */
static size_t fbytes3(size_t a, size_t b, size_t c) {
    if (a == 0 || b == 0 || c == 0) return sizeof(float);
    if (a > SIZE_MAX / b) return 0;
    size_t ab = a * b;
    if (ab > SIZE_MAX / c) return 0;
    size_t abc = ab * c;
    if (abc > SIZE_MAX / sizeof(float)) return 0;
    return abc * sizeof(float);
}

/* Rotary tables as HF computes them in f32: inv_freq[i] = 1 / theta^(2i/d),
 * angle = pos * inv_freq[i] rounded to f32, then cos/sin of that angle. */
static void rope_tables(float *cos_t, float *sin_t, int n_ctx, int head_dim, float theta) {
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)head_dim;
        float inv = 1.0f / powf(theta, expo);
        for (int p = 0; p < n_ctx; p++) {
            float ang = (float)p * inv;
            cos_t[(size_t)p * half + i] = (float)cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)sin((double)ang);
        }
    }
}

/* With `dry`, only checks that the scratch fits in memory (mt_ctx_check). */
static int ctx_init(mt_ctx **out, mt_model *m, int n_ctx, int n_batch, int dry) {
    *out = NULL;
    const mt_config *cf = &m->w.cfg;
    if (n_ctx <= 0 || n_batch <= 0)
        return mt_seterr(MT_ERR_ARG, "context: n_ctx %d and n_batch %d must be positive", n_ctx, n_batch);
    if (n_batch > n_ctx) n_batch = n_ctx;
    mt_ctx *c = calloc(1, sizeof *c);
    if (!c) return mt_seterr(MT_ERR_NOMEM, "context: out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->q_dim = cf->n_heads * cf->head_dim;
    c->kv_dim = cf->n_kv_heads * cf->head_dim;

    const size_t L = (size_t)cf->n_layers, H = (size_t)cf->hidden, B = (size_t)n_batch;
    const size_t E = (size_t)(m->routing_stride > 0 ? m->routing_stride : 1);
    size_t Rmax = E; /* router logits: aliased layers have more rows than experts */
    for (int l = 0; l < cf->n_layers; l++)
        if (m->w.layers[l].n_experts > 0 && (size_t)m->w.layers[l].n_router_rows > Rmax)
            Rmax = (size_t)m->w.layers[l].n_router_rows;
    const size_t K = (size_t)(cf->top_k > 0 ? cf->top_k : 1);
    const size_t T = (size_t)m->n_threads;
    const size_t pd = (size_t)(c->q_dim > c->kv_dim ? c->q_dim : c->kv_dim);
    const size_t half = (size_t)cf->head_dim / 2;
    size_t sz[24];
    int ns = 0;
    /* (bytes, destination) pairs, every one checked for overflow. */
    float **fdst[] = {&c->k_cache, &c->v_cache, &c->x,        &c->h,        &c->q,         &c->k,
                      &c->v,       &c->att_out, &c->proj,     &c->perm,     &c->att_scores, &c->rope_cos,
                      &c->rope_sin, &c->router, &c->router_p, &c->topk_w,   &c->ex_gate,   &c->ex_in,
                      &c->ex_g,    &c->ex_u,    &c->ex_out,   &c->mm_scratch};
    sz[ns++] = fbytes3(L, (size_t)n_ctx, (size_t)c->kv_dim);
    sz[ns++] = fbytes3(L, (size_t)n_ctx, (size_t)c->kv_dim);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, (size_t)c->q_dim, 1);
    sz[ns++] = fbytes3(B, (size_t)c->kv_dim, 1);
    sz[ns++] = fbytes3(B, (size_t)c->kv_dim, 1);
    sz[ns++] = fbytes3(B, (size_t)c->q_dim, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(T, pd, 1);
    sz[ns++] = fbytes3(T, B, (size_t)n_ctx);
    sz[ns++] = fbytes3((size_t)n_ctx, half, 1);
    sz[ns++] = fbytes3((size_t)n_ctx, half, 1);
    sz[ns++] = fbytes3(B, Rmax, 1);
    sz[ns++] = fbytes3(B, Rmax, 1);
    sz[ns++] = fbytes3(B, K, 1);
    sz[ns++] = fbytes3(B, 1, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, (size_t)cf->ffn, 1);
    sz[ns++] = fbytes3(B, (size_t)cf->ffn, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(m->matmul_scratch ? m->matmul_scratch : 1, 1, 1);
    /* The scratch is estimated before any of it is allocated: attention
     * scores grow with threads x batch x context, and a context far past
     * what the machine holds is refused with the numbers, not attempted. */
    double total = 0;
    for (int i = 0; i < ns; i++) total += (double)sz[i];
    const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < ns; i++) {
        if (sz[i] == 0 || (ram > 0 && total > ram)) {
            mt_ctx_free(c);
            return mt_seterr(MT_ERR_NOMEM,
                             "context of %d tokens (batches of %d, %d threads) needs %.1f GiB of scratch, more than "
                             "the %.1f GiB of memory here; use a shorter context or fewer threads",
                             n_ctx, n_batch, (int)T, sz[i] == 0 ? INFINITY : total / 1073741824.0, ram / 1073741824.0);
        }
        if (dry) continue;
        *fdst[i] = malloc(sz[i]);
        if (!*fdst[i]) {
            mt_ctx_free(c);
            return mt_seterr(MT_ERR_NOMEM, "context: out of memory (%zu bytes for n_ctx %d, n_batch %d)", sz[i],
                             n_ctx, n_batch);
        }
    }
    if (dry) {
        mt_ctx_free(c);
        return MT_OK;
    }
    size_t lr = fbytes3(L, B, K), rc = fbytes3(L, E, 2), er = fbytes3(B, 1, 1), tk = fbytes3(B, K, 1);
    if (!lr || !rc || !er || !tk) {
        mt_ctx_free(c);
        return mt_seterr(MT_ERR_ARG, "context: n_batch %d is too large for this model", n_batch);
    }
    /* int32 and uint64 arrays: float-sized counts work for int32; the
     * routing counts need 8 bytes each (rc counted 2 floats per entry). */
    c->last_routing = malloc(lr);
    c->routing = calloc(1, rc);
    c->ex_rows = malloc(er);
    c->topk = malloc(tk);
    if (!c->last_routing || !c->routing || !c->ex_rows || !c->topk) {
        mt_ctx_free(c);
        return mt_seterr(MT_ERR_NOMEM, "context: out of memory");
    }
    rope_tables(c->rope_cos, c->rope_sin, n_ctx, cf->head_dim, cf->rope_theta);
    *out = c;
    return MT_OK;
}

int mt_ctx_init(mt_ctx **out, mt_model *m, int n_ctx, int n_batch) { return ctx_init(out, m, n_ctx, n_batch, 0); }

int mt_ctx_check(mt_model *m, int n_ctx, int n_batch) {
    mt_ctx *c;
    return ctx_init(&c, m, n_ctx, n_batch, 1);
}

void mt_ctx_free(mt_ctx *c) {
    if (!c) return;
    free(c->k_cache);
    free(c->v_cache);
    free(c->x);
    free(c->h);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att_out);
    free(c->proj);
    free(c->perm);
    free(c->att_scores);
    free(c->rope_cos);
    free(c->rope_sin);
    free(c->router);
    free(c->router_p);
    free(c->topk);
    free(c->topk_w);
    free(c->last_routing);
    free(c->routing);
    free(c->ex_rows);
    free(c->ex_gate);
    free(c->ex_in);
    free(c->ex_g);
    free(c->ex_u);
    free(c->ex_out);
    free(c->mm_scratch);
    free(c);
}

void mt_ctx_reset(mt_ctx *c) {
    c->pos = 0;
    c->last_n = 0;
}
int mt_ctx_pos(const mt_ctx *c) { return c->pos; }

void mt_ctx_set_capture(mt_ctx *c, mt_capture_fn fn, void *user, unsigned kind_mask) {
    c->cap_fn = fn;
    c->cap_user = user;
    c->cap_mask = fn ? kind_mask : 0;
}

const uint64_t *mt_ctx_routing_counts(const mt_ctx *c) { return c->m->routing_stride > 0 ? c->routing : NULL; }

void mt_ctx_routing_reset(mt_ctx *c) {
    const mt_config *cf = &c->m->w.cfg;
    size_t E = (size_t)(c->m->routing_stride > 0 ? c->m->routing_stride : 1);
    memset(c->routing, 0, (size_t)cf->n_layers * E * sizeof(uint64_t));
}

const int32_t *mt_ctx_last_routing(const mt_ctx *c) { return c->m->w.cfg.top_k > 0 ? c->last_routing : NULL; }

/* ---- building blocks ----------------------------------------------------- */

/* out = x / sqrt(mean(x²) + eps) * w, per row; the mean in double. */
static void rmsnorm(float *out, const float *x, const float *w, int n, int dim, float eps) {
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

/* Y (n, W.rows) = X (n, W.cols) · Wᵀ: sgemm-backed for batches, matvec for one row. */
static void linear(mt_ctx *c, const mt_mat *W, const float *X, int n, float *Y) {
    if (n == 1)
        mt_matvec(c->m->pool, W, X, Y);
    else
        mt_matmul(c->m->pool, W, X, n, Y, c->mm_scratch);
}

/* GGUF stores Q/K rows permuted (llama.cpp: per head, HF row i goes to 2i
 * and row i + d/2 to 2i+1); put the projected vector back in HF order so
 * the one rotate_half RoPE path serves both formats bit for bit. */
static void unpermute(float *v, int n_heads, int d, float *tmp) {
    int half = d / 2;
    for (int h = 0; h < n_heads; h++) {
        float *p = v + (size_t)h * d;
        for (int i = 0; i < half; i++) {
            tmp[i] = p[2 * i];
            tmp[i + half] = p[2 * i + 1];
        }
        memcpy(p, tmp, (size_t)d * sizeof(float));
    }
}

/* HF rotate_half RoPE on one head vector at position pos:
 * out[i] = x[i] cos - x[i+h] sin; out[i+h] = x[i+h] cos + x[i] sin. */
static void rope(float *v, int n_heads, int d, const float *cos_p, const float *sin_p) {
    int half = d / 2;
    for (int h = 0; h < n_heads; h++) {
        float *p = v + (size_t)h * d;
        for (int i = 0; i < half; i++) {
            float a = p[i], b = p[i + half];
            p[i] = a * cos_p[i] - b * sin_p[i];
            p[i + half] = b * cos_p[i] + a * sin_p[i];
        }
    }
}

typedef struct {
    mt_ctx *c;
    int layer, n;
} attn_task;

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

/* Causal GQA attention, query heads split over the pool. A batch (n > 1)
 * uses two sgemms per head over the whole cache prefix (scores of the
 * masked upper triangle are computed and zeroed: cheaper than loops); one
 * token uses plain loops. */
static void attn_worker(void *arg, int ith, int nth) {
    const attn_task *t = arg;
    mt_ctx *c = t->c;
    const mt_config *cf = &c->m->w.cfg;
    const int d = cf->head_dim, group = cf->n_heads / cf->n_kv_heads, n = t->n;
    const int P = c->pos + n; /* keys visible to the last token */
    const float scale = 1.0f / sqrtf((float)d);
    const float *kc = c->k_cache + (size_t)t->layer * c->n_ctx * c->kv_dim;
    const float *vc = c->v_cache + (size_t)t->layer * c->n_ctx * c->kv_dim;
    MT_ASSERT(ith < c->m->n_threads); /* att_scores has one slice per pool thread */
    float *S = c->att_scores + (size_t)ith * c->n_batch * c->n_ctx; /* (n, P) */
    int64_t b, e;
    mt_split_range(cf->n_heads, ith, nth, 1, &b, &e);
    for (int hq = (int)b; hq < (int)e; hq++) {
        const int hk = hq / group;
        const float *Q = c->q + (size_t)hq * d;   /* rows of stride q_dim  */
        const float *K = kc + (size_t)hk * d;     /* rows of stride kv_dim */
        const float *Vh = vc + (size_t)hk * d;
        float *O = c->att_out + (size_t)hq * d;   /* rows of stride q_dim  */
        if (n > 1) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, P, d, scale, Q, c->q_dim, K, c->kv_dim, 0.0f, S,
                        P);
            for (int i = 0; i < n; i++) {
                float *row = S + (size_t)i * P;
                int len = c->pos + i + 1;
                softmax_row(row, len);
                for (int j = len; j < P; j++) row[j] = 0;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, P, 1.0f, S, P, Vh, c->kv_dim, 0.0f, O,
                        c->q_dim);
        } else {
            for (int j = 0; j < P; j++) S[j] = dot_f32(Q, K + (size_t)j * c->kv_dim, d) * scale;
            softmax_row(S, P);
            for (int u = 0; u < d; u++) O[u] = 0;
            for (int j = 0; j < P; j++) {
                const float *vj = Vh + (size_t)j * c->kv_dim;
                float w = S[j];
                for (int u = 0; u < d; u++) O[u] += w * vj[u];
            }
        }
    }
}

static int emit(mt_ctx *c, mt_capture_kind kind, int layer, int expert, int n_rows, int n_cols, const float *data,
                const int32_t *rows, const float *gates, const int32_t *topk) {
    if (!(c->cap_mask & (unsigned)kind)) return 0;
    mt_capture_event ev = {kind, layer, expert, n_rows, n_cols, data, rows, gates, topk};
    return c->cap_fn(c->cap_user, &ev);
}

/* silu(g) * u, in place in g. */
static void swiglu(float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

/* Router softmax in f32 and top-k with ties broken towards the lower expert
 * index (a stable selection); gates renormalised to sum 1. */
static void route(mt_ctx *c, int n, int ne, int top_k) {
    for (int i = 0; i < n; i++) {
        const float *lg = c->router + (size_t)i * ne;
        float *p = c->router_p + (size_t)i * ne;
        float mx = -FLT_MAX, sum = 0;
        for (int e = 0; e < ne; e++)
            if (lg[e] > mx) mx = lg[e];
        for (int e = 0; e < ne; e++) {
            p[e] = expf(lg[e] - mx);
            sum += p[e];
        }
        for (int e = 0; e < ne; e++) p[e] /= sum;
        int32_t *tk = c->topk + (size_t)i * top_k;
        float *tw = c->topk_w + (size_t)i * top_k;
        float wsum = 0;
        for (int k = 0; k < top_k; k++) {
            int best = -1;
            for (int e = 0; e < ne; e++) {
                int taken = 0;
                for (int q = 0; q < k; q++) taken |= tk[q] == e;
                if (taken) continue;
                if (best < 0 || p[e] > p[best]) best = e;
            }
            tk[k] = best;
            tw[k] = p[best];
            wsum += p[best];
        }
        for (int k = 0; k < top_k; k++) tw[k] /= wsum;
    }
}

/* Aliased layer: chosen router rows -> experts. A row whose expert an
 * earlier slot of the same token already holds gives its gate to that slot
 * and becomes -1 with gate 0, so each expert runs once per token. */
static void fold_alias(mt_ctx *c, int n, int top_k, const int32_t *alias) {
    for (int i = 0; i < n; i++) {
        int32_t *tk = c->topk + (size_t)i * top_k;
        float *tw = c->topk_w + (size_t)i * top_k;
        for (int k = 0; k < top_k; k++) {
            tk[k] = alias[tk[k]];
            for (int q = 0; q < k; q++)
                if (tk[q] == tk[k]) {
                    tw[q] += tw[k];
                    tw[k] = 0;
                    tk[k] = -1;
                    break;
                }
        }
    }
}

/* One expert (or the dense MLP) over the gathered rows ex_in (m, hidden);
 * adds gate * output into proj at each row. */
static int run_expert(mt_ctx *c, const mt_layer_weights *Lw, int layer, int e, int m_rows, int expert_id) {
    const mt_config *cf = &c->m->w.cfg;
    const int H = cf->hidden, F = cf->ffn;
    int st;
    if ((st = emit(c, MT_CAP_EXPERT_IN, layer, expert_id, m_rows, H, c->ex_in, c->ex_rows, c->ex_gate, NULL)))
        return st;
    linear(c, &Lw->w1[e], c->ex_in, m_rows, c->ex_g);
    linear(c, &Lw->w3[e], c->ex_in, m_rows, c->ex_u);
    swiglu(c->ex_g, c->ex_u, (size_t)m_rows * F);
    linear(c, &Lw->w2[e], c->ex_g, m_rows, c->ex_out);
    if ((st = emit(c, MT_CAP_EXPERT_OUT, layer, expert_id, m_rows, H, c->ex_out, c->ex_rows, c->ex_gate, NULL)))
        return st;
    for (int r = 0; r < m_rows; r++) {
        float *dst = c->proj + (size_t)c->ex_rows[r] * H;
        const float *src = c->ex_out + (size_t)r * H;
        float g = c->ex_gate[r];
        for (int j = 0; j < H; j++) dst[j] += g * src[j];
    }
    return 0;
}

static int ffn(mt_ctx *c, int layer, int n) {
    const mt_config *cf = &c->m->w.cfg;
    const mt_layer_weights *Lw = &c->m->w.layers[layer];
    const int H = cf->hidden;
    const int ne = Lw->n_experts;
    int st;
    memset(c->proj, 0, (size_t)n * H * sizeof(float));
    if (ne == 0) {
        for (int i = 0; i < n; i++) {
            c->ex_rows[i] = i;
            c->ex_gate[i] = 1.0f;
        }
        memcpy(c->ex_in, c->h, (size_t)n * H * sizeof(float));
        if (cf->top_k > 0) {
            int32_t *lr = c->last_routing + (size_t)layer * n * cf->top_k;
            for (size_t i = 0; i < (size_t)n * cf->top_k; i++) lr[i] = -1;
        }
        return run_expert(c, Lw, layer, 0, n, -1);
    }
    const int top_k = cf->top_k;
    if (Lw->alias) {
        linear(c, &Lw->router_full, c->h, n, c->router);
        route(c, n, Lw->n_router_rows, top_k);
        fold_alias(c, n, top_k, Lw->alias);
    } else {
        linear(c, &Lw->router, c->h, n, c->router);
        route(c, n, ne, top_k);
    }
    const int nr = Lw->alias ? Lw->n_router_rows : ne;
    if ((st = emit(c, MT_CAP_ROUTER_LOGITS, layer, -1, n, nr, c->router, NULL, NULL, c->topk))) return st;
    int32_t *lr = c->last_routing + (size_t)layer * n * top_k;
    memcpy(lr, c->topk, (size_t)n * top_k * sizeof(int32_t));
    uint64_t *counts = c->routing + (size_t)layer * c->m->routing_stride;
    for (int e = 0; e < ne; e++) {
        int mrows = 0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < top_k; k++)
                if (c->topk[(size_t)i * top_k + k] == e) {
                    c->ex_rows[mrows] = i;
                    c->ex_gate[mrows] = c->topk_w[(size_t)i * top_k + k];
                    memcpy(c->ex_in + (size_t)mrows * H, c->h + (size_t)i * H, (size_t)H * sizeof(float));
                    mrows++;
                }
        counts[e] += (uint64_t)mrows;
        if (mrows == 0) continue;
        if ((st = run_expert(c, Lw, layer, e, mrows, e))) return st;
    }
    return 0;
}

/* ---- forward --------------------------------------------------------------- */

int mt_ctx_forward(mt_ctx *c, const int32_t *tokens, int n, float *logits, int all_logits) {
    mt_model *m = c->m;
    const mt_config *cf = &m->w.cfg;
    const int H = cf->hidden, d = cf->head_dim, half = d / 2;
    int st;
    if (n <= 0 || n > c->n_batch)
        return mt_seterr(MT_ERR_ARG, "forward: %d tokens, but the context takes 1..%d per call", n, c->n_batch);
    if (c->pos + n > c->n_ctx)
        return mt_seterr(MT_ERR_ARG, "forward: %d tokens at position %d exceed the context of %d", n, c->pos, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= cf->vocab)
            return mt_seterr(MT_ERR_ARG, "forward: token id %d at %d is outside the vocabulary of %d", (int)tokens[i],
                             i, cf->vocab);

    for (int i = 0; i < n; i++) mt_mat_row_f32(&m->w.tok_embd, tokens[i], c->x + (size_t)i * H);

    for (int l = 0; l < cf->n_layers; l++) {
        const mt_layer_weights *Lw = &m->w.layers[l];
        rmsnorm(c->h, c->x, m->norm_f32 + (size_t)(2 * l) * H, n, H, cf->norm_eps);
        if ((st = emit(c, MT_CAP_ATTN_IN, l, -1, n, H, c->h, NULL, NULL, NULL))) return st;
        linear(c, &Lw->wq, c->h, n, c->q);
        linear(c, &Lw->wk, c->h, n, c->k);
        linear(c, &Lw->wv, c->h, n, c->v);
        float *kc = c->k_cache + (size_t)l * c->n_ctx * c->kv_dim;
        float *vc = c->v_cache + (size_t)l * c->n_ctx * c->kv_dim;
        for (int i = 0; i < n; i++) {
            float *qi = c->q + (size_t)i * c->q_dim, *ki = c->k + (size_t)i * c->kv_dim;
            if (cf->rope_style == MT_ROPE_INTERLEAVED) {
                unpermute(qi, cf->n_heads, d, c->perm);
                unpermute(ki, cf->n_kv_heads, d, c->perm);
            }
            int p = c->pos + i;
            rope(qi, cf->n_heads, d, c->rope_cos + (size_t)p * half, c->rope_sin + (size_t)p * half);
            rope(ki, cf->n_kv_heads, d, c->rope_cos + (size_t)p * half, c->rope_sin + (size_t)p * half);
            memcpy(kc + (size_t)p * c->kv_dim, ki, (size_t)c->kv_dim * sizeof(float));
            memcpy(vc + (size_t)p * c->kv_dim, c->v + (size_t)i * c->kv_dim, (size_t)c->kv_dim * sizeof(float));
        }
        attn_task at = {c, l, n};
        mt_pool_run(m->pool, attn_worker, &at);
        if ((st = emit(c, MT_CAP_ATTN_OUT, l, -1, n, c->q_dim, c->att_out, NULL, NULL, NULL))) return st;
        linear(c, &Lw->wo, c->att_out, n, c->proj);
        for (size_t j = 0; j < (size_t)n * H; j++) c->x[j] += c->proj[j];

        rmsnorm(c->h, c->x, m->norm_f32 + (size_t)(2 * l + 1) * H, n, H, cf->norm_eps);
        if ((st = emit(c, MT_CAP_FFN_IN, l, -1, n, H, c->h, NULL, NULL, NULL))) return st;
        if ((st = ffn(c, l, n))) return st;
        for (size_t j = 0; j < (size_t)n * H; j++) c->x[j] += c->proj[j];
        if ((st = emit(c, MT_CAP_LAYER_OUT, l, -1, n, H, c->x, NULL, NULL, NULL))) return st;
    }
    /* With FINAL_NORM asked for, every row is normed (whatever the logits)
     * and delivered before the position moves, so an abort leaves it. */
    const float *fn = m->norm_f32 + (size_t)(2 * cf->n_layers) * H;
    const int normed = (c->cap_mask & (unsigned)MT_CAP_FINAL_NORM) != 0;
    if (normed) {
        rmsnorm(c->h, c->x, fn, n, H, cf->norm_eps);
        if ((st = emit(c, MT_CAP_FINAL_NORM, cf->n_layers, -1, n, H, c->h, NULL, NULL, NULL))) return st;
    }
    c->last_n = n;
    c->pos += n;

    if (logits) {
        if (all_logits) {
            if (!normed) rmsnorm(c->h, c->x, fn, n, H, cf->norm_eps);
            linear(c, &m->w.lm_head, c->h, n, logits);
        } else {
            const float *hl = c->h + (size_t)(n - 1) * H;
            if (!normed) {
                rmsnorm(c->h, c->x + (size_t)(n - 1) * H, fn, 1, H, cf->norm_eps);
                hl = c->h;
            }
            linear(c, &m->w.lm_head, hl, 1, logits);
        }
    }
    return MT_OK;
}
