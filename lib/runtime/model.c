/* model.c — a loaded model: the checkpoint (memory-mapped), the weight
 * views the forward executes, the tokenizer found beside it (optional) and
 * the backend every op runs on (the CPU backend with its thread pool, or
 * the CUDA backend when the options ask for it).
 * Also parameter statistics. */
#include "runtime_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void mt_model_opts_default(mt_model_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_threads = 0;
}

/* Every matrix the forward multiplies with must have a kernel on the
 * backend, which also gets to prepare it (scratch sizes, device copies). */
static int check_mat(mt_backend *be, const mt_mat *w, const char *path, const char *what, int layer) {
    if (!w->data || w->rows <= 0 || w->cols <= 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s of layer %d is missing or empty", path, what, layer);
    const int st = be->ops->mat_supported(be, w);
    const char *tname = mt_dtype_get(w->dtype) ? mt_dtype_get(w->dtype)->name : "?";
    if (st == MT_ERR_UNSUPPORTED && strcmp(be->name, "cpu") != 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s of layer %d is stored as %s, which the %s backend cannot execute "
                         "yet (the cpu backend can)", path, what, layer, tname, be->name);
    if (st == MT_ERR_UNSUPPORTED)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s of layer %d is stored as %s, which the runtime cannot execute",
                         path, what, layer, tname);
    if (st && w->dtype == MT_DT_QMOE)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s of layer %d is a qmoe matrix that was not parsed", path, what, layer);
    if (st) return mt_seterr(st, "%s: %s of layer %d cannot run on the %s backend", path, what, layer, be->name);
    return be->ops->weight_prepare(be, w);
}

static int check_shape(const mt_mat *w, int64_t rows, int64_t cols, const char *path, const char *what, int layer) {
    if (w->rows != rows || w->cols != cols)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s of layer %d is (%lld, %lld), expected (%lld, %lld)", path, what, layer,
                         (long long)w->rows, (long long)w->cols, (long long)rows, (long long)cols);
    return MT_OK;
}

static int check_weights(const mt_model *m, const char *path) {
    const mt_config *c = &m->w.cfg;
    int st;
    if (c->n_layers <= 0 || c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 || c->head_dim <= 0 ||
        c->vocab <= 0 || c->ffn <= 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: config has a non-positive dimension", path);
    if (c->head_dim % 2)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: head_dim %d is odd; RoPE needs pairs", path, c->head_dim);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta) || !(c->norm_eps >= 0) || !isfinite(c->norm_eps))
        return mt_seterr(MT_ERR_FORMAT, "%s: rope theta %g or norm eps %g is not usable", path, (double)c->rope_theta,
                         (double)c->norm_eps);
    if (!m->w.layers) return mt_seterr(MT_ERR_FORMAT, "%s: no layers", path);
    if (c->n_heads % c->n_kv_heads)
        return mt_seterr(MT_ERR_FORMAT, "%s: %d attention heads are not a multiple of %d KV heads", path,
                         c->n_heads, c->n_kv_heads);
    if ((st = check_mat(m->be, &m->w.tok_embd, path, "token embedding", -1)) < 0) return st;
    if ((st = check_mat(m->be, &m->w.lm_head, path, "lm_head", -1)) < 0) return st;
    if ((st = check_mat(m->be, &m->w.out_norm, path, "final norm", -1)) < 0) return st;
    const int64_t H = c->hidden, QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    if ((st = check_shape(&m->w.tok_embd, c->vocab, H, path, "token embedding", -1)) < 0) return st;
    if ((st = check_shape(&m->w.lm_head, c->vocab, H, path, "lm_head", -1)) < 0) return st;
    if ((st = check_shape(&m->w.out_norm, 1, H, path, "final norm", -1)) < 0) return st;
    for (int l = 0; l < c->n_layers; l++) {
        const mt_layer_weights *L = &m->w.layers[l];
        if ((st = check_mat(m->be, &L->attn_norm, path, "attention norm", l)) < 0) return st;
        if ((st = check_mat(m->be, &L->ffn_norm, path, "ffn norm", l)) < 0) return st;
        if ((st = check_mat(m->be, &L->wq, path, "q_proj", l)) < 0) return st;
        if ((st = check_mat(m->be, &L->wk, path, "k_proj", l)) < 0) return st;
        if ((st = check_mat(m->be, &L->wv, path, "v_proj", l)) < 0) return st;
        if ((st = check_mat(m->be, &L->wo, path, "o_proj", l)) < 0) return st;
        if ((st = check_shape(&L->attn_norm, 1, H, path, "attention norm", l)) < 0) return st;
        if ((st = check_shape(&L->ffn_norm, 1, H, path, "ffn norm", l)) < 0) return st;
        if ((st = check_shape(&L->wq, QD, H, path, "q_proj", l)) < 0) return st;
        if ((st = check_shape(&L->wk, KD, H, path, "k_proj", l)) < 0) return st;
        if ((st = check_shape(&L->wv, KD, H, path, "v_proj", l)) < 0) return st;
        if ((st = check_shape(&L->wo, H, QD, path, "o_proj", l)) < 0) return st;
        if (L->n_experts < 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: layer %d has a negative expert count", path, l);
        if (L->n_experts > 0) {
            if ((st = check_mat(m->be, &L->router, path, "router", l)) < 0) return st;
            if ((st = check_shape(&L->router, L->n_experts, H, path, "router", l)) < 0) return st;
            if (L->alias && (st = m->be->ops->weight_prepare(m->be, &L->router_full)) < 0) return st;
            if (c->top_k <= 0 || c->top_k > L->n_experts)
                return mt_seterr(MT_ERR_FORMAT, "%s: top_k %d is not in 1..%d experts of layer %d", path, c->top_k,
                                 L->n_experts, l);
        }
        int ne = L->n_experts > 0 ? L->n_experts : 1;
        const int64_t F = L->n_experts > 0 ? c->ffn : mt_config_dense_ffn(c), FS = c->ffn_shared;
        if (!L->w1 || !L->w2 || !L->w3) return mt_seterr(MT_ERR_FORMAT, "%s: layer %d has no MLP weights", path, l);
        for (int e = 0; e < ne; e++) {
            if ((st = check_mat(m->be, &L->w1[e], path, "expert w1", l)) < 0) return st;
            if ((st = check_mat(m->be, &L->w2[e], path, "expert w2", l)) < 0) return st;
            if ((st = check_mat(m->be, &L->w3[e], path, "expert w3", l)) < 0) return st;
            if ((st = check_shape(&L->w1[e], F, H, path, "expert w1", l)) < 0) return st;
            if ((st = check_shape(&L->w3[e], F, H, path, "expert w3", l)) < 0) return st;
            if ((st = check_shape(&L->w2[e], H, F, path, "expert w2", l)) < 0) return st;
        }
        /* optional parts: biases, shared expert (the family's table says) */
        const struct {
            const mt_mat *w;
            int64_t r, c;
            const char *what;
        } opt[] = {{&L->bq, 1, QD, "q_proj bias"},          {&L->bk, 1, KD, "k_proj bias"},
                   {&L->bv, 1, KD, "v_proj bias"},          {&L->sh_w1, FS, H, "shared expert gate_proj"},
                   {&L->sh_w3, FS, H, "shared expert up_proj"}, {&L->sh_w2, H, FS, "shared expert down_proj"},
                   {&L->sh_gate, 1, H, "shared expert gate"},
                   {&L->q_norm, 1, m->qk_norm == MT_QK_NORM_HEAD ? c->head_dim : QD, "q_norm"},
                   {&L->k_norm, 1, m->qk_norm == MT_QK_NORM_HEAD ? c->head_dim : KD, "k_norm"}};
        for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
            if (!opt[i].w->data) continue;
            if ((st = check_mat(m->be, opt[i].w, path, opt[i].what, l)) < 0) return st;
            if ((st = check_shape(opt[i].w, opt[i].r, opt[i].c, path, opt[i].what, l)) < 0) return st;
        }
        if (!L->bq.data != !L->bk.data || !L->bq.data != !L->bv.data)
            return mt_seterr(MT_ERR_FORMAT, "%s: layer %d has some q/k/v biases but not all", path, l);
        if (!L->q_norm.data != !m->qk_norm || !L->k_norm.data != !m->qk_norm)
            return mt_seterr(MT_ERR_FORMAT, "%s: layer %d: q_norm / k_norm do not match the family's QK-norm", path, l);
        if (L->sh_w1.data && (!L->sh_w2.data || !L->sh_w3.data || !L->sh_gate.data))
            return mt_seterr(MT_ERR_FORMAT, "%s: layer %d has an incomplete shared expert", path, l);
    }
    return MT_OK;
}

/* Every matrix of the model, for passes over all of them, with names in
 * Hugging Face terms for messages (names may be NULL). */
typedef char mat_name[80];
static size_t all_mats(mt_weights *w, mt_mat **out, mat_name *names, size_t cap) {
    size_t n = 0;
#define PUT(M, ...)                                                     \
    do {                                                                \
        if (n < cap) {                                                  \
            out[n] = (M);                                               \
            if (names) snprintf(names[n], sizeof names[n], __VA_ARGS__); \
        }                                                               \
        n++;                                                            \
    } while (0)
    PUT(&w->tok_embd, "embed_tokens");
    if (!w->cfg.tie_embeddings) PUT(&w->lm_head, "lm_head");
    for (int l = 0; l < w->cfg.n_layers; l++) {
        mt_layer_weights *L = &w->layers[l];
        PUT(&L->wq, "layer %d q_proj", l);
        PUT(&L->wk, "layer %d k_proj", l);
        PUT(&L->wv, "layer %d v_proj", l);
        PUT(&L->wo, "layer %d o_proj", l);
        if (L->sh_w1.data) {
            PUT(&L->sh_w1, "layer %d shared expert gate_proj", l);
            PUT(&L->sh_w3, "layer %d shared expert up_proj", l);
            PUT(&L->sh_w2, "layer %d shared expert down_proj", l);
        }
        for (int e = 0; e < (L->n_experts > 0 ? L->n_experts : 1); e++) {
            PUT(&L->w1[e], "layer %d expert %d w1", l, e);
            PUT(&L->w3[e], "layer %d expert %d w3", l, e);
            PUT(&L->w2[e], "layer %d expert %d w2", l, e);
        }
    }
#undef PUT
    return n;
}

/* qmoe checkpoints: builds the dictionary from the `qmoe.dictionary` tensor
 * and parses every coded matrix (mt_weights_init left the raw blobs), each
 * checked in full before a kernel can run on it. */
static int load_qmoe(mt_model *m, const char *path) {
    size_t n = all_mats(&m->w, NULL, NULL, 0), nq = 0;
    mt_mat **mats = malloc(n * sizeof *mats);
    mat_name *names = malloc(n * sizeof *names);
    int st = MT_OK;
    if (!mats || !names) {
        st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    all_mats(&m->w, mats, names, n);
    for (size_t i = 0; i < n; i++) nq += mats[i]->dtype == MT_DT_QMOE;
    if (!nq) goto done;
    const mt_tensor *t = mt_ckpt_find(m->ck, "qmoe.dictionary");
    if (!t || t->dtype != MT_DT_U8) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: qmoe-coded weights but no U8 tensor qmoe.dictionary", path);
        goto done;
    }
    char what[4200];
    snprintf(what, sizeof what, "%s: qmoe.dictionary", path);
    if ((st = mt_qmoe_dict_deserialize(&m->qdict, t->data, (size_t)t->nbytes, what))) goto done;
    if (!(m->qmats = calloc(nq, sizeof *m->qmats))) {
        st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        mt_mat *W = mats[i];
        if (W->dtype != MT_DT_QMOE) continue;
        snprintf(what, sizeof what, "%s: %s (qmoe)", path, names[i]);
        if ((st = mt_qmoe_deserialize(&m->qmats[m->n_qmats], &m->qdict, W->data, (size_t)W->side.qmoe.blob_bytes, what)))
            goto done;
        mt_qmoe_mat_view(W, &m->qmats[m->n_qmats++]);
    }
done:
    free(mats);
    free(names);
    return st;
}

int mt_model_load(mt_model **out, const char *path, const mt_model_opts *opts) {
    mt_ckpt *ck = NULL;
    *out = NULL;
    if (opts && (opts->n_threads < 0 || opts->n_threads > MT_MAX_THREADS))
        return mt_seterr(MT_ERR_ARG, "model: thread count %d out of range", opts->n_threads);
    int st = mt_ckpt_open(&ck, path);
    return st < 0 ? st : mt_model_load_ckpt(out, ck, opts);
}

int mt_model_load_ckpt(mt_model **out, mt_ckpt *ck, const mt_model_opts *opts) {
    mt_model_opts def;
    int st;
    *out = NULL;
    if (!opts) {
        mt_model_opts_default(&def);
        opts = &def;
    }
    const char *path = mt_ckpt_path(ck);
    if (opts->n_threads < 0 || opts->n_threads > MT_MAX_THREADS) {
        mt_ckpt_free(ck);
        return mt_seterr(MT_ERR_ARG, "model: thread count %d out of range", opts->n_threads);
    }
    mt_model *m = calloc(1, sizeof *m);
    if (!m) {
        mt_ckpt_free(ck);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
    }
    m->ck = ck;
    if ((st = mt_weights_init(&m->w, m->ck)) < 0) goto fail;
    m->weights_ok = 1;
    if (opts->gguf_layout && (st = mt_weights_gguf_layout(&m->w, m->ck)) < 0) goto fail;
    if ((st = load_qmoe(m, path)) < 0) goto fail;

    /* A checkpoint without a tokenizer is still usable on token ids. */
    if (mt_tok_load_for_ckpt(&m->tok, m->ck) < 0) {
        m->tok = NULL;
        m->tok_err = strdup(mt_last_error());
        mt_clearerr();
    }

    int nt = opts->n_threads;
    if (nt == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nt = n > 0 ? (int)(n > 256 ? 256 : n) : 1;
    }
    if (opts->device == MT_DEVICE_CUDA)
        st = mt_backend_cuda_init(&m->be, opts->device_index);
    else
        st = mt_backend_cpu_init(&m->be, nt);
    if (st < 0) goto fail;
    const mt_arch *fam = mt_arch_get(m->w.cfg.arch);
    m->qk_norm = fam ? fam->qk_norm : MT_QK_NORM_NONE;
    if ((st = check_weights(m, path)) < 0) goto fail;

    const mt_config *c = &m->w.cfg;
    for (int l = 0; l < c->n_layers; l++)
        if (m->w.layers[l].n_experts > m->max_experts) m->max_experts = m->w.layers[l].n_experts;
    m->routing_stride = c->n_experts > m->max_experts ? c->n_experts : m->max_experts;

    /* Norm vectors are tiny: keep them as f32 once instead of per forward. */
    const size_t H = (size_t)c->hidden;
    m->norm_f32 = m->be->ops->buf_alloc(m->be, ((size_t)2 * c->n_layers + 1) * H * sizeof(float));
    if (!m->norm_f32) {
        st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory for norm weights", path);
        goto fail;
    }
    const int32_t row0 = 0;
    for (int l = 0; l < c->n_layers; l++) {
        m->be->ops->get_rows(m->be, &m->w.layers[l].attn_norm, &row0, 1, m->norm_f32 + (size_t)(2 * l) * H);
        m->be->ops->get_rows(m->be, &m->w.layers[l].ffn_norm, &row0, 1, m->norm_f32 + (size_t)(2 * l + 1) * H);
    }
    m->be->ops->get_rows(m->be, &m->w.out_norm, &row0, 1, m->norm_f32 + (size_t)(2 * c->n_layers) * H);
    if (m->qk_norm) { /* QK-norm weights as f32, (n_layers, qn + kn) */
        const size_t qn = (size_t)m->w.layers[0].q_norm.cols, kn = (size_t)m->w.layers[0].k_norm.cols;
        m->qkn_f32 = m->be->ops->buf_alloc(m->be, (size_t)c->n_layers * (qn + kn) * sizeof(float));
        if (!m->qkn_f32) {
            st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory for QK-norm weights", path);
            goto fail;
        }
        for (int l = 0; l < c->n_layers; l++) {
            m->be->ops->get_rows(m->be, &m->w.layers[l].q_norm, &row0, 1, m->qkn_f32 + (size_t)l * (qn + kn));
            m->be->ops->get_rows(m->be, &m->w.layers[l].k_norm, &row0, 1, m->qkn_f32 + (size_t)l * (qn + kn) + qn);
        }
    }
    if (m->w.layers[0].bq.data) { /* q/k/v biases as f32 too, (n_layers, q_dim + 2 kv_dim) */
        const size_t QD = (size_t)c->n_heads * c->head_dim, KD = (size_t)c->n_kv_heads * c->head_dim;
        m->bias_f32 = m->be->ops->buf_alloc(m->be, (size_t)c->n_layers * (QD + 2 * KD) * sizeof(float));
        if (!m->bias_f32) {
            st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory for bias vectors", path);
            goto fail;
        }
        for (int l = 0; l < c->n_layers; l++) {
            float *b = m->bias_f32 + (size_t)l * (QD + 2 * KD);
            const mt_layer_weights *L = &m->w.layers[l];
            if (!L->bq.data) {
                st = mt_seterr(MT_ERR_FORMAT, "%s: layer %d has no q/k/v biases but layer 0 has", path, l);
                goto fail;
            }
            m->be->ops->get_rows(m->be, &L->bq, &row0, 1, b);
            m->be->ops->get_rows(m->be, &L->bk, &row0, 1, b + QD);
            m->be->ops->get_rows(m->be, &L->bv, &row0, 1, b + QD + KD);
        }
    }
    if (m->be->ops->status && (st = m->be->ops->status(m->be)) < 0) goto fail;
    *out = m;
    return MT_OK;
fail:
    mt_model_free(m);
    return st;
}

void mt_model_free(mt_model *m) {
    if (!m) return;
    if (m->be) {
        m->be->ops->buf_free(m->be, m->norm_f32);
        m->be->ops->buf_free(m->be, m->bias_f32);
        m->be->ops->buf_free(m->be, m->qkn_f32);
        mt_backend_free(m->be);
    }
    if (m->tok) mt_tok_free(m->tok);
    free(m->tok_err);
    if (m->weights_ok) mt_weights_free(&m->w);
    for (size_t i = 0; i < m->n_qmats; i++) mt_qmoe_mat_free(&m->qmats[i]);
    free(m->qmats);
    mt_qmoe_dict_free(&m->qdict);
    if (m->ck) mt_ckpt_free(m->ck);
    free(m);
}

const mt_config *mt_model_config(const mt_model *m) { return &m->w.cfg; }
const mt_weights *mt_model_weights(const mt_model *m) { return &m->w; }
const mt_ckpt *mt_model_ckpt(const mt_model *m) { return m->ck; }
const mt_tokenizer *mt_model_tokenizer(const mt_model *m) { return m->tok; }
const char *mt_model_tokenizer_error(const mt_model *m) { return m && m->tok_err ? m->tok_err : ""; }
int mt_model_threads(const mt_model *m) { return m->be->n_threads; }
const char *mt_model_backend_name(const mt_model *m) { return m->be->name; }

static void add_mat(const mt_mat *w, uint64_t *params, uint64_t *bytes) {
    if (!w->data || w->rows <= 0 || w->cols <= 0) return;
    uint64_t n = (uint64_t)w->rows * (uint64_t)w->cols, b = 0;
    *params += n;
    if (w->dtype == MT_DT_QMOE && w->group >= 1) /* as serialised: header, group offsets, codewords, f16 row pairs */
        *bytes += mt_qmoe_blob_bytes(w->rows, (int)w->group, w->side.qmoe.n_codes, w->side.qmoe.scale_type);
    else if (mt_dtype_nbytes(w->dtype, n, &b) == MT_OK)
        *bytes += b;
}

void mt_model_param_stats(const mt_model *m, mt_param_stats *out) {
    memset(out, 0, sizeof *out);
    const mt_weights *w = &m->w;
    const mt_config *c = &w->cfg;
    uint64_t p = 0, b = 0;
    add_mat(&w->tok_embd, &p, &b);
    add_mat(&w->out_norm, &p, &b);
    if (w->lm_head.data != w->tok_embd.data) add_mat(&w->lm_head, &p, &b);
    double active = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const mt_layer_weights *L = &w->layers[l];
        add_mat(&L->attn_norm, &p, &b);
        add_mat(&L->wq, &p, &b);
        add_mat(&L->wk, &p, &b);
        add_mat(&L->wv, &p, &b);
        add_mat(&L->wo, &p, &b);
        add_mat(&L->ffn_norm, &p, &b);
        /* biases and the shared expert: always active, not experts */
        const mt_mat *always[] = {&L->bq,    &L->bk,    &L->bv,      &L->sh_w1,
                                  &L->sh_w3, &L->sh_w2, &L->sh_gate, &L->q_norm, &L->k_norm};
        for (size_t i = 0; i < sizeof always / sizeof always[0]; i++) add_mat(always[i], &p, &b);
        if (L->n_experts > 0) {
            add_mat(&L->router, &p, &b);
            uint64_t ep = 0, eb = 0;
            for (int e = 0; e < L->n_experts; e++) {
                add_mat(&L->w1[e], &ep, &eb);
                add_mat(&L->w2[e], &ep, &eb);
                add_mat(&L->w3[e], &ep, &eb);
            }
            out->experts += ep;
            out->expert_bytes += eb;
            active += (double)ep * (double)c->top_k / (double)L->n_experts;
        } else {
            /* The dense MLP is always active and not an expert. */
            add_mat(&L->w1[0], &p, &b);
            add_mat(&L->w2[0], &p, &b);
            add_mat(&L->w3[0], &p, &b);
        }
    }
    out->total = p + out->experts;
    out->weight_bytes = b + out->expert_bytes;
    out->active = p + (uint64_t)(active + 0.5);
}
