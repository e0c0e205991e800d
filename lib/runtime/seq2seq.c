/* seq2seq.c — the encoder-decoder runtime (Switch Transformers), as
 * transformers' modeling_switch_transformers computes it in eval mode:
 *
 *   T5 layer norm      y = w · x / sqrt(mean(x²) + eps)   (no mean, no bias)
 *   attention          softmax(q·kᵀ + position_bias) · v, no 1/sqrt(d) scale;
 *                      position_bias from relative_attention_bias of layer 0
 *                      (shared by every layer of the stack), buckets
 *                      bidirectional in the encoder, causal in the decoder;
 *                      cross-attention has none
 *   FFN (dense/expert) wo · relu(wi · h)
 *   sparse FFN         top-1 router: p = softmax(router · h) in f32, expert
 *                      e = argmax p; the expert capacity keeps the first
 *                      expert_capacity tokens of the call routed to e (in
 *                      token order) and drops the rest; out = p_e · expert(h)
 *                      for a kept token, p_e · h for a dropped one (its
 *                      normed input passes through, as transformers does)
 *   lm head            logits = lm_head · (h · d_model^-0.5 when tied)
 *
 * One sequence at a time. encode() runs the encoder, caches its output and
 * every decoder layer's cross-attention K/V; decode() appends decoder tokens
 * to a self-attention KV cache. Matrix products go through the backend's
 * `linear` and `get_rows`, norms through `rmsnorm`; attention with the
 * position bias, the router and the capacity are plain C on host memory (the
 * backend interface has no biased attention op yet), so the model runs on
 * backends with host_memory only. */
#include "moetool/mt_seq2seq.h"

#include "backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct mt_s2s_model {
    mt_ckpt *ck;
    mt_s2s_weights w;
    int w_ok;
    mt_backend *be;
    float *rel_f32[2];      /* (num_buckets, n_heads) encoder, decoder          */
    float *norms;           /* every layer-norm vector as f32                   */
    float **ln[2], **xln, **ffln[2]; /* per layer into `norms`                   */
    float *final_ln[2];
    /* encoder output cache */
    int n_enc;
    float *enc_out;         /* (n_enc, D)                                        */
    float **xk, **xv;       /* [n_dec_layers] (n_enc, I)                        */
    /* decoder self-attention cache */
    int dec_pos, dec_cap;
    float **kc, **vc;       /* [n_dec_layers] (dec_cap, I)                      */
    /* routing of the last call: [sparse layer][token] */
    int32_t *route[2];
    int route_n[2], route_layers[2];
};

const mt_s2s_config *mt_s2s_model_config(const mt_s2s_model *m) { return &m->w.cfg; }
const mt_s2s_weights *mt_s2s_model_weights(const mt_s2s_model *m) { return &m->w; }
const mt_ckpt *mt_s2s_model_ckpt(const mt_s2s_model *m) { return m->ck; }
int mt_s2s_threads(const mt_s2s_model *m) { return m->be ? m->be->n_threads : 1; }
int mt_s2s_decode_pos(const mt_s2s_model *m) { return m->dec_pos; }

const int32_t *mt_s2s_last_routing(const mt_s2s_model *m, int decoder, int *n_sparse, int *n_tok) {
    const int s = decoder ? 1 : 0;
    if (n_sparse) *n_sparse = m->route_layers[s];
    if (n_tok) *n_tok = m->route_n[s];
    return m->route[s];
}

static void free_layers(float **p, int L) {
    for (int l = 0; p && l < L; l++) free(p[l]);
    free(p);
}

void mt_s2s_free(mt_s2s_model *m) {
    if (!m) return;
    const int Ld = m->w.cfg.n_dec_layers;
    free_layers(m->xk, Ld);
    free_layers(m->xv, Ld);
    free_layers(m->kc, Ld);
    free_layers(m->vc, Ld);
    free(m->enc_out);
    for (int s = 0; s < 2; s++) {
        free(m->rel_f32[s]);
        free(m->ln[s]);
        free(m->ffln[s]);
        free(m->route[s]);
    }
    free(m->xln);
    free(m->norms);
    if (m->w_ok) mt_s2s_weights_free(&m->w);
    if (m->be) mt_backend_free(m->be);
    mt_ckpt_free(m->ck);
    free(m);
}

static int prepare(mt_s2s_model *m, const mt_mat *W, const char *path) {
    if (!W->data) return MT_OK;
    if (m->be->ops->mat_supported(m->be, W) != MT_OK || m->be->ops->weight_prepare(m->be, W) != MT_OK)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a %lld x %lld %s matrix the %s backend cannot run", path,
                         (long long)W->rows, (long long)W->cols, mt_dtype_name(W->dtype), m->be->name);
    return MT_OK;
}

static int prepare_stack(mt_s2s_model *m, const mt_s2s_layer *ls, int L, const char *path) {
    int rc = MT_OK;
    for (int l = 0; l < L && rc == MT_OK; l++) {
        const mt_s2s_layer *y = &ls[l];
        const mt_mat *mats[] = {&y->q, &y->k, &y->v, &y->o, &y->xq, &y->xk, &y->xv, &y->xo, &y->router};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0] && rc == MT_OK; i++) rc = prepare(m, mats[i], path);
        for (int e = 0; e < (y->n_experts ? y->n_experts : 1) && rc == MT_OK; e++)
            if ((rc = prepare(m, &y->wi[e], path)) == MT_OK) rc = prepare(m, &y->wo[e], path);
    }
    return rc;
}

/* A (rows, cols) matrix as f32 (host). */
static float *mat_f32(const mt_mat *W) {
    float *p = malloc((size_t)W->rows * (size_t)W->cols * sizeof *p);
    for (int64_t r = 0; p && r < W->rows; r++)
        if (mt_row_to_f32(W->dtype, (const char *)W->data + (uint64_t)r * W->row_stride, p + r * W->cols, W->cols)) {
            free(p);
            return NULL;
        }
    return p;
}

int mt_s2s_load(mt_s2s_model **out, const char *path, int n_threads) {
    *out = NULL;
    if (n_threads < 0 || n_threads > 512) return mt_seterr(MT_ERR_ARG, "model: thread count %d out of range", n_threads);
    mt_s2s_model *m = calloc(1, sizeof *m);
    if (!m) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
    int rc;
    if ((rc = mt_ckpt_open_raw(&m->ck, path))) goto fail;
    if ((rc = mt_s2s_weights_init(&m->w, m->ck))) goto fail;
    m->w_ok = 1;
    if (n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)(n > 256 ? 256 : n) : 1;
    }
    if ((rc = mt_backend_cpu_init(&m->be, n_threads))) goto fail;
    if (!m->be->host_memory) {
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: encoder-decoder models run on host-memory backends only", path);
        goto fail;
    }
    const mt_s2s_config *c = &m->w.cfg;
    if ((rc = prepare(m, &m->w.embd, path)) || (rc = prepare(m, &m->w.lm_head, path)) ||
        (rc = prepare_stack(m, m->w.enc, c->n_enc_layers, path)) ||
        (rc = prepare_stack(m, m->w.dec, c->n_dec_layers, path)))
        goto fail;
    const int L[2] = {c->n_enc_layers, c->n_dec_layers};
    const size_t D = (size_t)c->d_model;
    const size_t n_vec = (size_t)(2 * L[0] + 3 * L[1] + 2);
    m->norms = malloc(n_vec * D * sizeof(float));
    m->ln[0] = calloc((size_t)L[0], sizeof(float *));
    m->ffln[0] = calloc((size_t)L[0], sizeof(float *));
    m->ln[1] = calloc((size_t)L[1], sizeof(float *));
    m->ffln[1] = calloc((size_t)L[1], sizeof(float *));
    m->xln = calloc((size_t)L[1], sizeof(float *));
    m->xk = calloc((size_t)L[1], sizeof(float *));
    m->xv = calloc((size_t)L[1], sizeof(float *));
    m->kc = calloc((size_t)L[1], sizeof(float *));
    m->vc = calloc((size_t)L[1], sizeof(float *));
    m->rel_f32[0] = mat_f32(&m->w.enc_rel);
    m->rel_f32[1] = mat_f32(&m->w.dec_rel);
    if (!m->norms || !m->ln[0] || !m->ffln[0] || !m->ln[1] || !m->ffln[1] || !m->xln || !m->xk || !m->xv ||
        !m->kc || !m->vc || !m->rel_f32[0] || !m->rel_f32[1]) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    float *p = m->norms;
    const int32_t row0 = 0;
#define TAKE(dst, mat)                                       \
    do {                                                     \
        m->be->ops->get_rows(m->be, (mat), &row0, 1, p);     \
        (dst) = p;                                           \
        p += D;                                              \
    } while (0)
    for (int s = 0; s < 2; s++) {
        const mt_s2s_layer *ls = s ? m->w.dec : m->w.enc;
        for (int l = 0; l < L[s]; l++) {
            TAKE(m->ln[s][l], &ls[l].ln);
            TAKE(m->ffln[s][l], &ls[l].ff_ln);
            if (s) TAKE(m->xln[l], &ls[l].x_ln);
        }
    }
    TAKE(m->final_ln[0], &m->w.enc_norm);
    TAKE(m->final_ln[1], &m->w.dec_norm);
#undef TAKE
    *out = m;
    return MT_OK;
fail:
    mt_s2s_free(m);
    return rc;
}

/* ---- blocks ----------------------------------------------------------------- */

/* transformers' T5 _relative_position_bucket (rel = key - query), its
 * log-spaced buckets computed in f32 and truncated as torch does. */
static int rel_bucket(int rel, int bidirectional, int num_buckets, int max_distance) {
    int b = 0, nb = num_buckets;
    if (bidirectional) {
        nb /= 2;
        if (rel > 0) b += nb;
        rel = rel < 0 ? -rel : rel;
    } else {
        rel = rel < 0 ? -rel : 0;
    }
    const int max_exact = nb / 2;
    if (rel < max_exact) return b + rel;
    const float lg = logf((float)rel / (float)max_exact) / (float)log((double)max_distance / max_exact) *
                     (float)(nb - max_exact);
    int large = max_exact + (int)lg;
    if (large > nb - 1) large = nb - 1;
    return b + large;
}

/* out (nq, H·dk) = attention of q rows over nk key rows (H heads of dk),
 * no scale; bias: relative-position table (num_buckets, H) or NULL;
 * q_pos0 is the position of query row 0, causal masks keys past a query. */
static void attend(const float *q, int nq, const float *k, const float *v, int nk, int H, int dk, const float *bias,
                   const mt_s2s_config *c, int bidirectional, int causal, int q_pos0, float *out, float *sc) {
    const int I = H * dk;
    for (int i = 0; i < nq; i++) {
        const int qp = q_pos0 + i;
        const int kn = causal ? (qp + 1 < nk ? qp + 1 : nk) : nk;
        for (int h = 0; h < H; h++) {
            const float *qi = q + (size_t)i * I + (size_t)h * dk;
            float mx = -INFINITY;
            for (int j = 0; j < kn; j++) {
                const float *kj = k + (size_t)j * I + (size_t)h * dk;
                double s = 0;
                for (int d = 0; d < dk; d++) s += (double)qi[d] * kj[d];
                float f = (float)s;
                if (bias) f += bias[(size_t)rel_bucket(j - qp, bidirectional, c->num_buckets, c->max_distance) * H + h];
                sc[j] = f;
                if (f > mx) mx = f;
            }
            double sum = 0;
            for (int j = 0; j < kn; j++) {
                sc[j] = expf(sc[j] - mx);
                sum += sc[j];
            }
            float *o = out + (size_t)i * I + (size_t)h * dk;
            for (int d = 0; d < dk; d++) o[d] = 0;
            for (int j = 0; j < kn; j++) {
                const float pj = (float)(sc[j] / sum);
                const float *vj = v + (size_t)j * I + (size_t)h * dk;
                for (int d = 0; d < dk; d++) o[d] += pj * vj[d];
            }
        }
    }
}

static void relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(x[i] > 0)) x[i] = 0;
}

typedef struct {
    float *h, *q, *k, *v, *att, *proj, *ff, *ff2, *gath, *sc, *logits;
    int32_t *rows;
    int *count;             /* (n_experts) tokens taken per expert          */
} scratch;

static void scratch_free(scratch *s) {
    free(s->h);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->proj);
    free(s->ff);
    free(s->ff2);
    free(s->gath);
    free(s->sc);
    free(s->logits);
    free(s->rows);
    free(s->count);
}

static int scratch_init(scratch *s, const mt_s2s_config *c, int n, int n_keys) {
    memset(s, 0, sizeof *s);
    const size_t N = (size_t)n, D = (size_t)c->d_model, I = (size_t)c->n_heads * c->d_kv, F = (size_t)c->d_ff;
    const size_t E = (size_t)c->n_experts;
    s->h = malloc(N * D * sizeof(float));
    s->q = malloc(N * I * sizeof(float));
    s->k = malloc(N * I * sizeof(float));
    s->v = malloc(N * I * sizeof(float));
    s->att = malloc(N * I * sizeof(float));
    s->proj = malloc(N * D * sizeof(float));
    s->ff = malloc(N * F * sizeof(float));
    s->ff2 = malloc(N * D * sizeof(float));
    s->gath = malloc(N * D * sizeof(float));
    s->sc = malloc((size_t)(n_keys > 0 ? n_keys : 1) * sizeof(float));
    s->logits = malloc(N * (E > 0 ? E : 1) * sizeof(float));
    s->rows = malloc(N * sizeof(int32_t));
    s->count = malloc((E > 0 ? E : 1) * sizeof(int));
    if (!s->count || !s->h || !s->q || !s->k || !s->v || !s->att || !s->proj || !s->ff || !s->ff2 || !s->gath || !s->sc ||
        !s->logits || !s->rows) {
        scratch_free(s);
        return mt_seterr(MT_ERR_NOMEM, "out of memory for the encoder-decoder scratch (%d tokens)", n);
    }
    return MT_OK;
}

/* x (n, D) += FFN(layer norm of x); routing of a sparse layer into route[n]. */
static void ffn(mt_s2s_model *m, const mt_s2s_layer *y, const float *ln, float *x, int n, scratch *s,
                int32_t *route) {
    mt_backend *be = m->be;
    const mt_s2s_config *c = &m->w.cfg;
    const int D = c->d_model, F = c->d_ff;
    be->ops->rmsnorm(be, s->h, x, ln, n, D, c->eps);
    if (!y->n_experts) {
        be->ops->linear(be, &y->wi[0], s->h, n, s->ff);
        relu(s->ff, (size_t)n * F);
        be->ops->linear(be, &y->wo[0], s->ff, n, s->proj);
        be->ops->add(be, x, s->proj, (size_t)n * D);
        return;
    }
    const int E = y->n_experts;
    be->ops->linear(be, &y->router, s->h, n, s->logits);
    /* top-1 over softmax in f32, capacity in token order */
    float *pmax = s->sc; /* n floats: sc holds at least n (n_keys >= n) */
    int *count = s->count;
    memset(count, 0, (size_t)E * sizeof *count);
    for (int t = 0; t < n; t++) {
        const float *lg = s->logits + (size_t)t * E;
        int best = 0;
        float mx = lg[0];
        for (int e = 1; e < E; e++)
            if (lg[e] > mx) {
                mx = lg[e];
                best = e;
            }
        float sum = 0;
        for (int e = 0; e < E; e++) sum += expf(lg[e] - mx);
        pmax[t] = 1.0f / sum;
        const int kept = ++count[best] <= c->expert_capacity;
        route[t] = kept ? best : -1;
    }
    /* dropped tokens pass their normed input through */
    memcpy(s->proj, s->h, (size_t)n * D * sizeof(float));
    for (int e = 0; e < E; e++) {
        int mrows = 0;
        for (int t = 0; t < n; t++)
            if (route[t] == e) s->rows[mrows++] = t;
        if (!mrows) continue;
        be->ops->gather_rows(be, s->gath, s->h, s->rows, mrows, D);
        be->ops->linear(be, &y->wi[e], s->gath, mrows, s->ff);
        relu(s->ff, (size_t)mrows * F);
        be->ops->linear(be, &y->wo[e], s->ff, mrows, s->ff2);
        for (int r = 0; r < mrows; r++)
            memcpy(s->proj + (size_t)s->rows[r] * D, s->ff2 + (size_t)r * D, (size_t)D * sizeof(float));
    }
    for (int t = 0; t < n; t++) {
        float *o = s->proj + (size_t)t * D;
        for (int d = 0; d < D; d++) o[d] *= pmax[t];
    }
    be->ops->add(be, x, s->proj, (size_t)n * D);
}

static int n_sparse(const mt_s2s_config *c, int dec) {
    int k = 0;
    for (int l = 0; l < (dec ? c->n_dec_layers : c->n_enc_layers); l++) k += mt_s2s_layer_sparse(c, dec, l);
    return k;
}

static int set_route(mt_s2s_model *m, int s, int n) {
    const int k = n_sparse(&m->w.cfg, s);
    int32_t *r = realloc(m->route[s], (size_t)(k ? k : 1) * (size_t)n * sizeof *r);
    if (!r) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    m->route[s] = r;
    m->route_n[s] = n;
    m->route_layers[s] = k;
    return MT_OK;
}

static int check_ids(const mt_s2s_model *m, const int32_t *ids, int n, const char *what) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= m->w.cfg.vocab)
            return mt_seterr(MT_ERR_ARG, "%s token %d is %d, outside the vocabulary of %d", what, i, ids[i],
                             m->w.cfg.vocab);
    return MT_OK;
}

int mt_s2s_encode(mt_s2s_model *m, const int32_t *ids, int n) {
    const mt_s2s_config *c = &m->w.cfg;
    mt_backend *be = m->be;
    if (n <= 0) return mt_seterr(MT_ERR_ARG, "the encoder input is empty");
    int rc = check_ids(m, ids, n, "input");
    if (rc) return rc;
    const int D = c->d_model, H = c->n_heads, dk = c->d_kv, I = H * dk;
    float *x = malloc((size_t)n * D * sizeof *x);
    scratch s;
    if (!x || (rc = scratch_init(&s, c, n, n))) {
        free(x);
        return rc ? rc : mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    if ((rc = set_route(m, 0, n))) goto done;
    be->ops->get_rows(be, &m->w.embd, ids, n, x);
    int sp = 0;
    for (int l = 0; l < c->n_enc_layers; l++) {
        const mt_s2s_layer *y = &m->w.enc[l];
        be->ops->rmsnorm(be, s.h, x, m->ln[0][l], n, D, c->eps);
        be->ops->linear(be, &y->q, s.h, n, s.q);
        be->ops->linear(be, &y->k, s.h, n, s.k);
        be->ops->linear(be, &y->v, s.h, n, s.v);
        attend(s.q, n, s.k, s.v, n, H, dk, m->rel_f32[0], c, 1, 0, 0, s.att, s.sc);
        be->ops->linear(be, &y->o, s.att, n, s.proj);
        be->ops->add(be, x, s.proj, (size_t)n * D);
        ffn(m, y, m->ffln[0][l], x, n, &s, y->n_experts ? m->route[0] + (size_t)(sp++) * n : s.rows);
    }
    /* the encoder-output cache and every decoder layer's cross K/V */
    float *eo = realloc(m->enc_out, (size_t)n * D * sizeof *eo);
    if (!eo) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory for the encoder output");
        goto done;
    }
    m->enc_out = eo;
    be->ops->rmsnorm(be, eo, x, m->final_ln[0], n, D, c->eps);
    m->n_enc = n;
    for (int l = 0; l < c->n_dec_layers; l++) {
        float *k = realloc(m->xk[l], (size_t)n * I * sizeof *k);
        if (k) m->xk[l] = k;
        float *v = k ? realloc(m->xv[l], (size_t)n * I * sizeof *v) : NULL;
        if (v) m->xv[l] = v;
        if (!k || !v) {
            m->n_enc = 0;
            rc = mt_seterr(MT_ERR_NOMEM, "out of memory for the cross-attention cache");
            goto done;
        }
        be->ops->linear(be, &m->w.dec[l].xk, eo, n, k);
        be->ops->linear(be, &m->w.dec[l].xv, eo, n, v);
    }
    m->dec_pos = 0;
done:
    scratch_free(&s);
    free(x);
    return rc;
}

static int grow_cache(mt_s2s_model *m, int need) {
    if (need <= m->dec_cap) return MT_OK;
    int cap = m->dec_cap ? m->dec_cap : 64;
    while (cap < need) cap *= 2;
    const size_t I = (size_t)m->w.cfg.n_heads * m->w.cfg.d_kv;
    for (int l = 0; l < m->w.cfg.n_dec_layers; l++) {
        float *k = realloc(m->kc[l], (size_t)cap * I * sizeof *k);
        if (k) m->kc[l] = k;
        float *v = k ? realloc(m->vc[l], (size_t)cap * I * sizeof *v) : NULL;
        if (v) m->vc[l] = v;
        if (!k || !v) return mt_seterr(MT_ERR_NOMEM, "out of memory for the decoder cache (%d tokens)", cap);
    }
    m->dec_cap = cap;
    return MT_OK;
}

int mt_s2s_decode(mt_s2s_model *m, const int32_t *ids, int n, float *logits) {
    const mt_s2s_config *c = &m->w.cfg;
    mt_backend *be = m->be;
    if (m->n_enc <= 0) return mt_seterr(MT_ERR_ARG, "decode before encode: no encoder output");
    if (n <= 0) return MT_OK;
    int rc = check_ids(m, ids, n, "decoder");
    if (rc) return rc;
    if ((rc = grow_cache(m, m->dec_pos + n))) return rc;
    const int D = c->d_model, H = c->n_heads, dk = c->d_kv, I = H * dk, pos = m->dec_pos;
    const int nk = pos + n > m->n_enc ? pos + n : m->n_enc;
    float *x = malloc((size_t)n * D * sizeof *x);
    scratch s;
    if (!x || (rc = scratch_init(&s, c, n, nk))) {
        free(x);
        return rc ? rc : mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    if ((rc = set_route(m, 1, n))) goto done;
    be->ops->get_rows(be, &m->w.embd, ids, n, x);
    int sp = 0;
    for (int l = 0; l < c->n_dec_layers; l++) {
        const mt_s2s_layer *y = &m->w.dec[l];
        /* causal self-attention over the cache */
        be->ops->rmsnorm(be, s.h, x, m->ln[1][l], n, D, c->eps);
        be->ops->linear(be, &y->q, s.h, n, s.q);
        be->ops->linear(be, &y->k, s.h, n, m->kc[l] + (size_t)pos * I);
        be->ops->linear(be, &y->v, s.h, n, m->vc[l] + (size_t)pos * I);
        attend(s.q, n, m->kc[l], m->vc[l], pos + n, H, dk, m->rel_f32[1], c, 0, 1, pos, s.att, s.sc);
        be->ops->linear(be, &y->o, s.att, n, s.proj);
        be->ops->add(be, x, s.proj, (size_t)n * D);
        /* cross-attention over the cached encoder K/V */
        be->ops->rmsnorm(be, s.h, x, m->xln[l], n, D, c->eps);
        be->ops->linear(be, &y->xq, s.h, n, s.q);
        attend(s.q, n, m->xk[l], m->xv[l], m->n_enc, H, dk, NULL, c, 1, 0, 0, s.att, s.sc);
        be->ops->linear(be, &y->xo, s.att, n, s.proj);
        be->ops->add(be, x, s.proj, (size_t)n * D);
        ffn(m, y, m->ffln[1][l], x, n, &s, y->n_experts ? m->route[1] + (size_t)(sp++) * n : s.rows);
    }
    m->dec_pos += n;
    if (logits) {
        be->ops->rmsnorm(be, s.h, x, m->final_ln[1], n, D, c->eps);
        if (c->tie_embeddings) {
            const float sc = (float)pow((double)D, -0.5);
            for (size_t i = 0; i < (size_t)n * D; i++) s.h[i] *= sc;
        }
        be->ops->linear(be, &m->w.lm_head, s.h, n, logits);
    }
done:
    scratch_free(&s);
    free(x);
    return rc;
}

int mt_s2s_score(mt_s2s_model *m, const int32_t *input, int n_in, const int32_t *target, int n_tgt, double *nll_sum) {
    const mt_s2s_config *c = &m->w.cfg;
    *nll_sum = 0;
    if (n_tgt <= 0) return mt_seterr(MT_ERR_ARG, "the target is empty");
    int rc = check_ids(m, target, n_tgt, "target");
    if (rc || (rc = mt_s2s_encode(m, input, n_in))) return rc;
    int32_t *din = malloc((size_t)n_tgt * sizeof *din);
    float *lg = malloc((size_t)n_tgt * (size_t)c->vocab * sizeof *lg);
    if (!din || !lg) {
        free(din);
        free(lg);
        return mt_seterr(MT_ERR_NOMEM, "out of memory for %d target tokens", n_tgt);
    }
    din[0] = c->decoder_start_id;
    for (int i = 1; i < n_tgt; i++) din[i] = target[i - 1];
    rc = mt_s2s_decode(m, din, n_tgt, lg);
    for (int i = 0; rc == MT_OK && i < n_tgt; i++) {
        const float *r = lg + (size_t)i * c->vocab;
        double mx = r[0], sum = 0;
        for (int v = 1; v < c->vocab; v++)
            if (r[v] > mx) mx = r[v];
        for (int v = 0; v < c->vocab; v++) sum += exp((double)r[v] - mx);
        *nll_sum += mx + log(sum) - (double)r[target[i]];
    }
    free(din);
    free(lg);
    return rc;
}

int mt_s2s_greedy(mt_s2s_model *m, const int32_t *input, int n_in, int max_new, int stop_at_eos, int32_t *out,
                  int *n_out) {
    const mt_s2s_config *c = &m->w.cfg;
    *n_out = 0;
    int rc = mt_s2s_encode(m, input, n_in);
    if (rc) return rc;
    float *lg = malloc((size_t)c->vocab * sizeof *lg);
    if (!lg) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int32_t tok = c->decoder_start_id;
    for (int i = 0; i < max_new; i++) {
        if ((rc = mt_s2s_decode(m, &tok, 1, lg))) break;
        int best = 0;
        for (int v = 1; v < c->vocab; v++)
            if (lg[v] > lg[best]) best = v;
        out[(*n_out)++] = best;
        if (stop_at_eos && best == c->eos_id) break;
        tok = best;
    }
    free(lg);
    return rc;
}
