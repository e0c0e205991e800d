/* seq2seq.c — the encoder-decoder runtime, as transformers computes
 * Switch Transformers (modeling_switch_transformers) and NLLB-MoE
 * (modeling_nllb_moe) in eval mode. Pre-norm blocks in both:
 *
 *   norm               Switch: T5's y = w · x / sqrt(mean(x²) + eps);
 *                      NLLB-MoE: LayerNorm (mean, variance, bias, eps 1e-5)
 *   embeddings         Switch: rows of the shared table; NLLB-MoE: rows ×
 *                      sqrt(d_model) + fairseq sinusoidal positions (position
 *                      pad_id + 1 + i of non-pad tokens, pad tokens at pad_id)
 *   attention          softmax(attn_scale · q·kᵀ + position_bias) · v;
 *                      Switch: no scale, position_bias from
 *                      relative_attention_bias of layer 0 (shared by the
 *                      stack; T5 buckets, bidirectional in the encoder,
 *                      causal in the decoder); NLLB-MoE: d_kv^-0.5, biased
 *                      projections, no position bias. Cross-attention has
 *                      none either.
 *   FFN (dense/expert) wo · relu(wi · h) (+ biases in NLLB-MoE)
 *   Switch sparse FFN  top-1: p = softmax(router · h) in f32, e = argmax p;
 *                      the expert capacity keeps the first expert_capacity
 *                      tokens of the call routed to e (token order) and drops
 *                      the rest; out = p_e · expert(h) for a kept token,
 *                      p_e · h for a dropped one (its normed input passes
 *                      through, as transformers does)
 *   NLLB-MoE sparse    top-2: e1 = argmax p, e2 = argmax of the logits
 *                      without e1; capacity C = ceil(fraction · tokens) in
 *                      eval (else expert_capacity); a token's e1 slot is its
 *                      rank among the e1 choices of the call, its e2 slot that
 *                      rank among e2 choices plus all e1 choices of e2; slots
 *                      >= C are dropped; gates p_e1, p_e2 normalised by their
 *                      sum (after the drops, or before them with
 *                      normalize_router_prob_before_dropping), out = Σ gate ·
 *                      (1 - moe_token_dropout) · expert(h); a token with no
 *                      slot left outputs 0
 *   lm head            logits = lm_head · (lm_scale · h): Switch tied
 *                      d_model^-0.5, else 1
 *
 * One sequence at a time. encode() runs the encoder, caches its output and
 * every decoder layer's cross-attention K/V; decode() appends decoder tokens
 * to a self-attention KV cache. Matrix products go through the backend's
 * `linear` and `get_rows`, T5 norms through `rmsnorm`; attention with the
 * position bias, LayerNorm, biases, the routers and the capacity are plain C
 * on host memory (the backend interface has no biased attention op yet), so
 * the model runs on backends with host_memory only. */
#include "moetool/mt_seq2seq.h"

#include "backend.h"
#include "moetool/mt_qmoe.h"

#include <stdio.h>

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* f32 host copies of a layer's vectors (NULL when the family lacks one). */
typedef struct {
    float *ln_w, *ln_b, *x_w, *x_b, *ff_w, *ff_b;
    float *q_b, *k_b, *v_b, *o_b, *xq_b, *xk_b, *xv_b, *xo_b;
    float **wi_b, **wo_b; /* [max(1, n_experts)] entries, each NULL without biases */
} layer_vecs;

struct mt_s2s_model {
    mt_ckpt *ck;
    mt_s2s_weights w;
    int w_ok;
    mt_backend *be;
    float *rel_f32[2];      /* (num_buckets, n_heads) encoder, decoder          */
    layer_vecs *lv[2];      /* [n_layers] encoder, decoder                       */
    float *fin_w[2], *fin_b[2]; /* final norms                                  */
    /* encoder output cache */
    int n_enc;
    float *enc_out;         /* (n_enc, D)                                        */
    float **xk, **xv;       /* [n_dec_layers] (n_enc, I)                        */
    /* decoder self-attention cache */
    int dec_pos, dec_cap;
    int dec_nonpad;         /* non-pad decoder tokens so far (positions)        */
    float **kc, **vc;       /* [n_dec_layers] (dec_cap, I)                      */
    /* routing of the last call: [sparse layer][token][top_k] */
    int32_t *route[2];
    int route_n[2], route_layers[2];
    /* qmoe-coded experts: the dictionary and each parsed matrix */
    mt_qmoe_dict qdict;
    mt_qmoe_mat *qmats;
    size_t n_qmats;
    mt_s2s_expert_hook hook;
    void *hook_user;
};

void mt_s2s_set_expert_hook(mt_s2s_model *m, mt_s2s_expert_hook fn, void *user) {
    m->hook = fn;
    m->hook_user = user;
}

static int prepare(mt_s2s_model *m, const mt_mat *W, const char *path);

int mt_s2s_set_expert_matrix(mt_s2s_model *m, int decoder, int layer, int expert, int wo, const float *w) {
    const mt_s2s_config *c = &m->w.cfg;
    if (!w || layer < 0 || layer >= (decoder ? c->n_dec_layers : c->n_enc_layers))
        return mt_seterr(MT_ERR_ARG, "mt_s2s_set_expert_matrix: no layer %d", layer);
    mt_s2s_layer *y = decoder ? &m->w.dec[layer] : &m->w.enc[layer];
    if (expert < 0 || expert >= y->n_experts)
        return mt_seterr(MT_ERR_ARG, "mt_s2s_set_expert_matrix: layer %d has no expert %d", layer, expert);
    mt_mat *W = wo ? &y->wo[expert] : &y->wi[expert];
    const mt_mat f = {.dtype = MT_DT_F32, .rows = W->rows, .cols = W->cols, .data = w,
                      .row_stride = (uint64_t)W->cols * sizeof(float)};
    *W = f;
    return prepare(m, W, "expert matrix");
}

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

static void free_vecs(layer_vecs *v, const mt_s2s_layer *ls, int L) {
    for (int l = 0; v && l < L; l++) {
        float *p[] = {v[l].ln_w, v[l].ln_b, v[l].x_w, v[l].x_b, v[l].ff_w, v[l].ff_b, v[l].q_b, v[l].k_b,
                      v[l].v_b, v[l].o_b, v[l].xq_b, v[l].xk_b, v[l].xv_b, v[l].xo_b};
        for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
        const int E = ls && ls[l].n_experts ? ls[l].n_experts : 1;
        for (int e = 0; e < E; e++) {
            if (v[l].wi_b) free(v[l].wi_b[e]);
            if (v[l].wo_b) free(v[l].wo_b[e]);
        }
        free(v[l].wi_b);
        free(v[l].wo_b);
    }
    free(v);
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
        free_vecs(m->lv[s], s ? m->w.dec : m->w.enc, s ? m->w.cfg.n_dec_layers : m->w.cfg.n_enc_layers);
        free(m->fin_w[s]);
        free(m->fin_b[s]);
        free(m->route[s]);
    }
    for (size_t i = 0; i < m->n_qmats; i++) mt_qmoe_mat_free(&m->qmats[i]);
    free(m->qmats);
    mt_qmoe_dict_free(&m->qdict);
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
    if (!W->data) return NULL;
    float *p = malloc((size_t)W->rows * (size_t)W->cols * sizeof *p);
    for (int64_t r = 0; p && r < W->rows; r++)
        if (mt_row_to_f32(W->dtype, (const char *)W->data + (uint64_t)r * W->row_stride, p + r * W->cols, W->cols)) {
            free(p);
            return NULL;
        }
    return p;
}

/* qmoe checkpoints: the dictionary from the `qmoe.dictionary` tensor, then
 * every coded expert parsed and checked in full against it before a kernel
 * can run on it (mt_s2s_weights_init left the raw blobs). */
static int load_qmoe(mt_s2s_model *m, const char *path) {
    const mt_s2s_config *c = &m->w.cfg;
    size_t nq = 0;
    for (int s = 0; s < 2; s++)
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++) {
            const mt_s2s_layer *y = s ? &m->w.dec[l] : &m->w.enc[l];
            for (int e = 0; e < y->n_experts; e++) nq += (y->wi[e].dtype == MT_DT_QMOE) + (y->wo[e].dtype == MT_DT_QMOE);
        }
    if (!nq) return MT_OK;
    const mt_tensor *t = mt_ckpt_find(m->ck, "qmoe.dictionary");
    if (!t || t->dtype != MT_DT_U8)
        return mt_seterr(MT_ERR_FORMAT, "%s: qmoe-coded experts but no U8 tensor qmoe.dictionary", path);
    char what[4200];
    snprintf(what, sizeof what, "%s: qmoe.dictionary", path);
    int rc = mt_qmoe_dict_deserialize(&m->qdict, t->data, (size_t)t->nbytes, what);
    if (rc) return rc;
    if (!(m->qmats = calloc(nq, sizeof *m->qmats))) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
    for (int s = 0; s < 2; s++)
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++) {
            mt_s2s_layer *y = s ? &m->w.dec[l] : &m->w.enc[l];
            for (int e = 0; e < y->n_experts; e++)
                for (int k = 0; k < 2; k++) {
                    mt_mat *W = k ? &y->wo[e] : &y->wi[e];
                    if (W->dtype != MT_DT_QMOE) continue;
                    char nm[256];
                    mt_s2s_expert_name(c, nm, sizeof nm, s, l, e, k);
                    snprintf(what, sizeof what, "%s: %s.qmoe", path, nm);
                    if ((rc = mt_qmoe_deserialize(&m->qmats[m->n_qmats], &m->qdict, W->data, (size_t)W->side.qmoe.blob_bytes,
                                                  what)))
                        return rc;
                    mt_qmoe_mat_view(W, &m->qmats[m->n_qmats++]);
                }
        }
    return MT_OK;
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
    if ((rc = load_qmoe(m, path))) goto fail;
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
    m->xk = calloc((size_t)L[1], sizeof(float *));
    m->xv = calloc((size_t)L[1], sizeof(float *));
    m->kc = calloc((size_t)L[1], sizeof(float *));
    m->vc = calloc((size_t)L[1], sizeof(float *));
    int ok = m->xk && m->xv && m->kc && m->vc;
    for (int s = 0; s < 2 && ok; s++) {
        const mt_s2s_layer *ls = s ? m->w.dec : m->w.enc;
        if (c->rel_pos) ok &= (m->rel_f32[s] = mat_f32(s ? &m->w.dec_rel : &m->w.enc_rel)) != NULL;
        ok &= (m->fin_w[s] = mat_f32(s ? &m->w.dec_norm : &m->w.enc_norm)) != NULL;
        const mt_mat *fb = s ? &m->w.dec_norm_b : &m->w.enc_norm_b;
        if (fb->data) ok &= (m->fin_b[s] = mat_f32(fb)) != NULL;
        if (!ok || !(m->lv[s] = calloc((size_t)L[s], sizeof *m->lv[s]))) {
            ok = 0;
            break;
        }
        for (int l = 0; l < L[s] && ok; l++) {
            const mt_s2s_layer *y = &ls[l];
            layer_vecs *v = &m->lv[s][l];
            const mt_mat *src[] = {&y->ln, &y->ln_b, &y->x_ln, &y->x_ln_b, &y->ff_ln, &y->ff_ln_b, &y->q_b, &y->k_b,
                                   &y->v_b, &y->o_b, &y->xq_b, &y->xk_b, &y->xv_b, &y->xo_b};
            float **dst[] = {&v->ln_w, &v->ln_b, &v->x_w, &v->x_b, &v->ff_w, &v->ff_b, &v->q_b, &v->k_b,
                             &v->v_b, &v->o_b, &v->xq_b, &v->xk_b, &v->xv_b, &v->xo_b};
            for (size_t i = 0; i < sizeof src / sizeof src[0] && ok; i++)
                if (src[i]->data) ok &= (*dst[i] = mat_f32(src[i])) != NULL;
            const int E = y->n_experts ? y->n_experts : 1;
            ok = ok && (v->wi_b = calloc((size_t)E, sizeof(float *))) && (v->wo_b = calloc((size_t)E, sizeof(float *)));
            for (int e = 0; e < E && ok; e++) {
                if (y->wi_b[e].data) ok &= (v->wi_b[e] = mat_f32(&y->wi_b[e])) != NULL;
                if (y->wo_b[e].data) ok &= (v->wo_b[e] = mat_f32(&y->wo_b[e])) != NULL;
            }
        }
    }
    if (!ok) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
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

/* out (nq, H·dk) = attention of q rows (already scaled) over nk key rows
 * (H heads of dk); bias: relative-position table (num_buckets, H) or NULL;
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

/* Y (n, W.rows) = X · Wᵀ (+ bias row). */
static void lin(mt_s2s_model *m, const mt_mat *W, const float *bias, const float *X, int n, float *Y) {
    m->be->ops->linear(m->be, W, X, n, Y);
    if (!bias) return;
    const int64_t R = W->rows;
    for (int i = 0; i < n; i++)
        for (int64_t r = 0; r < R; r++) Y[(size_t)i * R + r] += bias[r];
}

/* The family's layer norm of n rows of d_model. */
static void norm(mt_s2s_model *m, float *out, const float *x, const float *w, const float *b, int n) {
    const mt_s2s_config *c = &m->w.cfg;
    const int D = c->d_model;
    if (!c->layer_norm_bias) {
        m->be->ops->rmsnorm(m->be, out, x, w, n, D, c->eps);
        return;
    }
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * D;
        float *oi = out + (size_t)i * D;
        double mean = 0, var = 0;
        for (int d = 0; d < D; d++) mean += xi[d];
        mean /= D;
        for (int d = 0; d < D; d++) var += ((double)xi[d] - mean) * ((double)xi[d] - mean);
        var /= D;
        const float rs = (float)(1.0 / sqrt(var + (double)c->eps)), mf = (float)mean;
        for (int d = 0; d < D; d++) oi[d] = (xi[d] - mf) * rs * w[d] + (b ? b[d] : 0.0f);
    }
}

typedef struct {
    float *h, *q, *k, *v, *att, *proj, *ff, *ff2, *gath, *sc, *logits, *gate;
    int32_t *rows, *choice;
    int *count;             /* (n_experts) tokens taken per expert          */
} scratch;

static void scratch_free(scratch *s) {
    float *f[] = {s->h, s->q, s->k, s->v, s->att, s->proj, s->ff, s->ff2, s->gath, s->sc, s->logits, s->gate};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
    free(s->rows);
    free(s->choice);
    free(s->count);
}

static int scratch_init(scratch *s, const mt_s2s_config *c, int n, int n_keys) {
    memset(s, 0, sizeof *s);
    const size_t N = (size_t)n, D = (size_t)c->d_model, E = (size_t)c->n_experts;
    size_t I = 0, F = 0;
    for (int k = 0; k < 2; k++) {
        if ((size_t)c->n_heads[k] * (size_t)c->d_kv[k] > I) I = (size_t)c->n_heads[k] * (size_t)c->d_kv[k];
        if ((size_t)c->d_ff[k] > F) F = (size_t)c->d_ff[k];
    }
    s->h = malloc(N * D * sizeof(float));
    s->q = malloc(N * I * sizeof(float));
    s->k = malloc(N * I * sizeof(float));
    s->v = malloc(N * I * sizeof(float));
    s->att = malloc(N * I * sizeof(float));
    s->proj = malloc(N * D * sizeof(float));
    s->ff = malloc(N * F * sizeof(float));
    s->ff2 = malloc(N * D * sizeof(float));
    s->gath = malloc(N * D * sizeof(float));
    size_t nsc = (size_t)(n_keys > n ? n_keys : n);
    if (nsc < E) nsc = E;
    s->sc = malloc(nsc * sizeof(float));
    s->logits = malloc(N * E * sizeof(float));
    s->gate = malloc(N * 2 * sizeof(float));
    s->rows = malloc(N * sizeof(int32_t));
    s->choice = malloc(N * 2 * sizeof(int32_t));
    s->count = malloc(E * 3 * sizeof(int));
    if (!s->count || !s->h || !s->q || !s->k || !s->v || !s->att || !s->proj || !s->ff || !s->ff2 || !s->gath ||
        !s->sc || !s->logits || !s->gate || !s->rows || !s->choice) {
        scratch_free(s);
        return mt_seterr(MT_ERR_NOMEM, "out of memory for the encoder-decoder scratch (%d tokens)", n);
    }
    return MT_OK;
}

/* Top-1 routing (Switch): route[t] = expert or -1, gate[t] = max p. */
static void route_top1(const mt_s2s_config *c, const float *logits, int n, int E, scratch *s, int32_t *route) {
    memset(s->count, 0, (size_t)E * sizeof *s->count);
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * E;
        int best = 0;
        for (int e = 1; e < E; e++)
            if (lg[e] > lg[best]) best = e;
        float sum = 0;
        for (int e = 0; e < E; e++) sum += expf(lg[e] - lg[best]);
        s->gate[t] = 1.0f / sum;
        route[t] = ++s->count[best] <= c->expert_capacity ? best : -1;
    }
}

/* Top-2 routing (NLLB-MoE): route[2t], route[2t+1] = first and second
 * expert or -1 (dropped); gate[2t], gate[2t+1] their weights. */
static void route_top2(const mt_s2s_config *c, const float *logits, int n, int E, scratch *s, int32_t *route) {
    int *c1 = s->count, *r1 = s->count + E, *r2 = s->count + 2 * E;
    memset(s->count, 0, (size_t)E * 3 * sizeof *s->count);
    float *p = s->sc; /* E floats per token, one token at a time */
    const int cap = c->cap_fraction > 0 ? (int)ceil((double)c->cap_fraction * n) : c->expert_capacity;
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * E;
        int e1 = 0, e2 = -1;
        for (int e = 1; e < E; e++)
            if (lg[e] > lg[e1]) e1 = e;
        for (int e = 0; e < E; e++)
            if (e != e1 && (e2 < 0 || lg[e] > lg[e2])) e2 = e;
        s->choice[2 * t] = e1;
        s->choice[2 * t + 1] = e2;
        c1[e1]++;
    }
    for (int t = 0; t < n; t++) {
        const float *lg = logits + (size_t)t * E;
        const int e1 = s->choice[2 * t], e2 = s->choice[2 * t + 1];
        float sum = 0;
        for (int e = 0; e < E; e++) sum += (p[e] = expf(lg[e] - lg[e1]));
        for (int e = 0; e < E; e++) p[e] /= sum;
        /* slots: rank among the call's first choices; second choices after
           every first choice of that expert */
        const int keep1 = r1[e1]++ < cap, keep2 = c1[e2] + r2[e2]++ < cap;
        float g1 = p[e1], g2 = p[e2];
        if (c->norm_before_drop) {
            float d = g1 + g2;
            if (d < FLT_EPSILON) d = FLT_EPSILON;
            g1 = keep1 ? g1 / d : 0;
            g2 = keep2 ? g2 / d : 0;
        } else {
            g1 = keep1 ? g1 : 0;
            g2 = keep2 ? g2 : 0;
            float d = g1 + g2;
            if (d < FLT_EPSILON) d = FLT_EPSILON;
            g1 /= d;
            g2 /= d;
        }
        route[2 * t] = g1 > 0 ? e1 : -1;
        route[2 * t + 1] = g2 > 0 ? e2 : -1;
        s->gate[2 * t] = g1;
        s->gate[2 * t + 1] = g2;
    }
}

/* x (n, D) += FFN(norm of x); routing of a sparse layer into route. */
static int ffn(mt_s2s_model *m, int dec, const mt_s2s_layer *y, const layer_vecs *v, float *x, int n, scratch *s,
               int32_t *route) {
    mt_backend *be = m->be;
    const mt_s2s_config *c = &m->w.cfg;
    const int D = c->d_model, F = c->d_ff[dec];
    norm(m, s->h, x, v->ff_w, v->ff_b, n);
    if (!y->n_experts) {
        lin(m, &y->wi[0], v->wi_b[0], s->h, n, s->ff);
        relu(s->ff, (size_t)n * F);
        lin(m, &y->wo[0], v->wo_b[0], s->ff, n, s->proj);
        be->ops->add(be, x, s->proj, (size_t)n * D);
        return MT_OK;
    }
    const int E = y->n_experts, K = c->top_k;
    lin(m, &y->router, NULL, s->h, n, s->logits);
    if (K == 1) {
        route_top1(c, s->logits, n, E, s, route);
        /* dropped tokens pass their normed input through */
        memcpy(s->proj, s->h, (size_t)n * D * sizeof(float));
    } else {
        route_top2(c, s->logits, n, E, s, route);
        memset(s->proj, 0, (size_t)n * D * sizeof(float));
    }
    const float keep = K == 2 && c->token_dropout > 0 ? 1.0f - c->token_dropout : 1.0f;
    for (int e = 0; e < E; e++) {
        int mrows = 0;
        for (int t = 0; t < n; t++)
            for (int j = 0; j < K; j++)
                if (route[(size_t)t * K + j] == e) s->rows[mrows++] = t;
        if (!mrows) continue;
        be->ops->gather_rows(be, s->gath, s->h, s->rows, mrows, D);
        lin(m, &y->wi[e], v->wi_b[e], s->gath, mrows, s->ff);
        relu(s->ff, (size_t)mrows * F);
        if (m->hook)
            m->hook(m->hook_user, dec, (int)(y - (dec ? m->w.dec : m->w.enc)), e, s->gath, s->ff, mrows);
        lin(m, &y->wo[e], v->wo_b[e], s->ff, mrows, s->ff2);
        for (int r = 0; r < mrows; r++) {
            const int t = s->rows[r];
            float *o = s->proj + (size_t)t * D;
            const float *eo = s->ff2 + (size_t)r * D;
            if (K == 1) {
                memcpy(o, eo, (size_t)D * sizeof(float));
            } else {
                const float g = route[2 * t] == e ? s->gate[2 * t] : s->gate[2 * t + 1];
                for (int d = 0; d < D; d++) o[d] += g * (eo[d] * keep);
            }
        }
    }
    if (K == 1)
        for (int t = 0; t < n; t++) {
            float *o = s->proj + (size_t)t * D;
            for (int d = 0; d < D; d++) o[d] *= s->gate[t];
        }
    be->ops->add(be, x, s->proj, (size_t)n * D);
    return MT_OK;
}

static int n_sparse(const mt_s2s_config *c, int dec) {
    int k = 0;
    for (int l = 0; l < (dec ? c->n_dec_layers : c->n_enc_layers); l++) k += mt_s2s_layer_sparse(c, dec, l);
    return k;
}

static int set_route(mt_s2s_model *m, int s, int n) {
    const int k = n_sparse(&m->w.cfg, s);
    int32_t *r = realloc(m->route[s], (size_t)(k ? k : 1) * (size_t)n * (size_t)m->w.cfg.top_k * sizeof *r);
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

/* x (n, D) = embeddings of ids (× embed_scale) + sinusoidal positions
 * (NLLB-MoE; *nonpad counts the non-pad tokens before this call). */
static void embed(mt_s2s_model *m, const int32_t *ids, int n, float *x, int *nonpad) {
    const mt_s2s_config *c = &m->w.cfg;
    const int D = c->d_model;
    m->be->ops->get_rows(m->be, &m->w.embd, ids, n, x);
    if (c->embed_scale != 1.0f)
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] *= c->embed_scale;
    if (c->rel_pos) return;
    /* fairseq / tensor2tensor sinusoids, as NllbMoeSinusoidalPositionalEmbedding
       builds them in f32: sin of the first half, cos of the second */
    const int half = D / 2;
    const float step = (float)(log(10000.0) / (half - 1));
    for (int i = 0; i < n; i++) {
        if (ids[i] == c->pad_id) continue; /* position pad_id: a zero row */
        const int pos = c->pad_id + 1 + (*nonpad)++;
        float *xi = x + (size_t)i * D;
        for (int j = 0; j < half; j++) {
            const float a = (float)pos * expf((float)j * -step);
            xi[j] += sinf(a);
            xi[half + j] += cosf(a);
        }
    }
}

/* Attention sublayer of stack s: x += o(attend(norm(x))). kq/vq: where K
 * and V rows go (the cache, or scratch). */
static void self_attention(mt_s2s_model *m, int s, const mt_s2s_layer *y, const layer_vecs *v, float *x, int n,
                           float *kq, float *vq, int nk, int pos, scratch *sc) {
    const mt_s2s_config *c = &m->w.cfg;
    const int D = c->d_model, H = c->n_heads[s], dk = c->d_kv[s];
    norm(m, sc->h, x, v->ln_w, v->ln_b, n);
    lin(m, &y->q, v->q_b, sc->h, n, sc->q);
    if (c->attn_scale[s] != 1.0f)
        for (size_t i = 0; i < (size_t)n * H * dk; i++) sc->q[i] *= c->attn_scale[s];
    lin(m, &y->k, v->k_b, sc->h, n, kq + (size_t)pos * H * dk);
    lin(m, &y->v, v->v_b, sc->h, n, vq + (size_t)pos * H * dk);
    attend(sc->q, n, kq, vq, nk, H, dk, c->rel_pos ? m->rel_f32[s] : NULL, c, !s, s, pos, sc->att, sc->sc);
    lin(m, &y->o, v->o_b, sc->att, n, sc->proj);
    m->be->ops->add(m->be, x, sc->proj, (size_t)n * D);
}

int mt_s2s_encode(mt_s2s_model *m, const int32_t *ids, int n) {
    const mt_s2s_config *c = &m->w.cfg;
    mt_backend *be = m->be;
    if (n <= 0) return mt_seterr(MT_ERR_ARG, "the encoder input is empty");
    int rc = check_ids(m, ids, n, "input");
    if (rc) return rc;
    const int D = c->d_model, I1 = c->n_heads[1] * c->d_kv[1];
    float *x = malloc((size_t)n * D * sizeof *x);
    scratch s;
    if (!x || (rc = scratch_init(&s, c, n, n))) {
        free(x);
        return rc ? rc : mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    if ((rc = set_route(m, 0, n))) goto done;
    int nonpad = 0, sp = 0;
    embed(m, ids, n, x, &nonpad);
    for (int l = 0; l < c->n_enc_layers && !rc; l++) {
        const mt_s2s_layer *y = &m->w.enc[l];
        self_attention(m, 0, y, &m->lv[0][l], x, n, s.k, s.v, n, 0, &s);
        rc = ffn(m, 0, y, &m->lv[0][l], x, n, &s,
                 y->n_experts ? m->route[0] + (size_t)(sp++) * n * c->top_k : NULL);
    }
    if (rc) goto done;
    /* the encoder-output cache and every decoder layer's cross K/V */
    float *eo = realloc(m->enc_out, (size_t)n * D * sizeof *eo);
    if (!eo) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory for the encoder output");
        goto done;
    }
    m->enc_out = eo;
    norm(m, eo, x, m->fin_w[0], m->fin_b[0], n);
    m->n_enc = n;
    for (int l = 0; l < c->n_dec_layers; l++) {
        float *k = realloc(m->xk[l], (size_t)n * I1 * sizeof *k);
        if (k) m->xk[l] = k;
        float *v = k ? realloc(m->xv[l], (size_t)n * I1 * sizeof *v) : NULL;
        if (v) m->xv[l] = v;
        if (!k || !v) {
            m->n_enc = 0;
            rc = mt_seterr(MT_ERR_NOMEM, "out of memory for the cross-attention cache");
            goto done;
        }
        lin(m, &m->w.dec[l].xk, m->lv[1][l].xk_b, eo, n, k);
        lin(m, &m->w.dec[l].xv, m->lv[1][l].xv_b, eo, n, v);
    }
    m->dec_pos = 0;
    m->dec_nonpad = 0;
    (void)be;
done:
    scratch_free(&s);
    free(x);
    return rc;
}

static int grow_cache(mt_s2s_model *m, int need) {
    if (need <= m->dec_cap) return MT_OK;
    int cap = m->dec_cap ? m->dec_cap : 64;
    while (cap < need) cap *= 2;
    const size_t I = (size_t)m->w.cfg.n_heads[1] * m->w.cfg.d_kv[1];
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
    const int D = c->d_model, H = c->n_heads[1], dk = c->d_kv[1], pos = m->dec_pos;
    const int nk = pos + n > m->n_enc ? pos + n : m->n_enc;
    float *x = malloc((size_t)n * D * sizeof *x);
    scratch s;
    if (!x || (rc = scratch_init(&s, c, n, nk))) {
        free(x);
        return rc ? rc : mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    if ((rc = set_route(m, 1, n))) goto done;
    int sp = 0;
    embed(m, ids, n, x, &m->dec_nonpad);
    for (int l = 0; l < c->n_dec_layers && !rc; l++) {
        const mt_s2s_layer *y = &m->w.dec[l];
        const layer_vecs *v = &m->lv[1][l];
        /* causal self-attention over the cache */
        self_attention(m, 1, y, v, x, n, m->kc[l], m->vc[l], pos + n, pos, &s);
        /* cross-attention over the cached encoder K/V */
        norm(m, s.h, x, v->x_w, v->x_b, n);
        lin(m, &y->xq, v->xq_b, s.h, n, s.q);
        if (c->attn_scale[1] != 1.0f)
            for (size_t i = 0; i < (size_t)n * H * dk; i++) s.q[i] *= c->attn_scale[1];
        attend(s.q, n, m->xk[l], m->xv[l], m->n_enc, H, dk, NULL, c, 1, 0, 0, s.att, s.sc);
        lin(m, &y->xo, v->xo_b, s.att, n, s.proj);
        be->ops->add(be, x, s.proj, (size_t)n * D);
        rc = ffn(m, 1, y, v, x, n, &s, y->n_experts ? m->route[1] + (size_t)(sp++) * n * c->top_k : NULL);
    }
    if (rc) goto done;
    m->dec_pos += n;
    if (logits) {
        norm(m, s.h, x, m->fin_w[1], m->fin_b[1], n);
        if (c->lm_scale != 1.0f)
            for (size_t i = 0; i < (size_t)n * D; i++) s.h[i] *= c->lm_scale;
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
    return mt_s2s_greedy_forced(m, input, n_in, -1, max_new, stop_at_eos, out, n_out);
}

int mt_s2s_greedy_forced(mt_s2s_model *m, const int32_t *input, int n_in, int forced_bos, int max_new, int stop_at_eos,
                         int32_t *out, int *n_out) {
    const mt_s2s_config *c = &m->w.cfg;
    *n_out = 0;
    if (forced_bos >= c->vocab) return mt_seterr(MT_ERR_ARG, "forced first token %d is outside the vocabulary of %d", forced_bos, c->vocab);
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
        if (i == 0 && forced_bos >= 0) best = forced_bos; /* transformers' forced_bos_token_id */
        out[(*n_out)++] = best;
        if (stop_at_eos && best == c->eos_id) break;
        tok = best;
    }
    free(lg);
    return rc;
}

