/* student.c — the students: the dense one made from a Mixtral-format
 * teacher (embeddings, attention, norms and lm_head copied as f32; one
 * SwiGLU FFN of width W per layer built from the experts: concat of the
 * most-routed experts with w2 scaled by their mean gate, frequency-weighted
 * averages, or random), and the MoE one read whole from a smaller Mixtral
 * (a merge output) to heal; teacher logits by the runtime's forward; and the
 * writer of a student as Hugging Face weights through the arch table's
 * names. */
#include "distill_impl.h"

#include "moetool/mt_arch.h"
#include "moetool/mt_write.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t dst_rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_normal(uint64_t *s) {
    const double u1 = ((dst_rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    const double u2 = (dst_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

void dst_engine_config(dt_config *out, const mt_config *t, int width) {
    memset(out, 0, sizeof *out);
    out->n_layers = t->n_layers, out->hidden = t->hidden, out->n_heads = t->n_heads;
    out->n_kv_heads = t->n_kv_heads, out->head_dim = t->head_dim, out->ffn = width, out->vocab = t->vocab;
    out->norm_eps = t->norm_eps, out->rope_theta = t->rope_theta;
}

int dst_moe_config(dt_config *out, mt_config *sc_out, const mt_model *student, const char *path) {
    const mt_config *c = mt_model_config(student);
    const mt_weights *w = mt_model_weights(student);
    if (c->n_experts <= 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: the student is dense (no experts); --student takes 'dense' or a MoE to heal",
                         path);
    if (strcmp(c->arch, "mixtral") || !mt_config_renorm_topk(c))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a %s student; healing trains Mixtral-layout MoEs (softmax router, "
                         "renormalised top-k, SwiGLU experts)", path, c->arch);
    if (c->quant != MT_QFMT_NONE || mt_config_has_alias(c))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a quantized or alias-routed student; healing trains unquantized "
                         "experts with one router row each (merge --router fit, anchor or average)", path);
    for (int l = 0; l < c->n_layers; l++)
        if (w->layers[l].n_experts != c->n_experts)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: layer %d has %d experts, layer 0 %d; healing trains one expert "
                             "count for every layer", path, l, w->layers[l].n_experts, c->n_experts);
    if (c->top_k < 1 || c->top_k > c->n_experts)
        return mt_seterr(MT_ERR_FORMAT, "%s: top_k %d with %d experts", path, c->top_k, c->n_experts);
    dst_engine_config(out, c, c->ffn);
    out->n_experts = c->n_experts, out->top_k = c->top_k;
    memset(sc_out, 0, sizeof *sc_out);
    int st = mt_config_copy(sc_out, c);
    if (st) return st;
    sc_out->tie_embeddings = 0; /* the engine trains embeddings and lm_head apart: both are written */
    sc_out->quant = MT_QFMT_NONE, sc_out->quant_zero_offset = 0;
    return MT_OK;
}

int dst_student_config(mt_config *out, const mt_config *t, int width) {
    memset(out, 0, sizeof *out);
    int st = mt_config_copy(out, t);
    if (st) return st;
    mt_config_free(out); /* per-layer arrays: the student has none */
    out->layer_experts = NULL, out->router_rows = NULL, out->router_alias = NULL;
    snprintf(out->arch, sizeof out->arch, "mistral");
    out->ffn = width;
    out->n_experts = 0, out->top_k = 0;
    out->tie_embeddings = 0;
    out->rope_style = MT_ROPE_HALF;
    out->quant = MT_QFMT_NONE, out->quant_zero_offset = 0;
    return MT_OK;
}

/* Rows of W as f32 into dst (rows, cols); Q/K rows of a GGUF teacher back
 * to HF's rotate_half order when hd > 0. */
static int mat_f32(float *dst, const mt_mat *W, int64_t rows, int64_t cols, int hd, const char *what, int layer) {
    if (W->rows != rows || W->cols != cols)
        return mt_seterr(MT_ERR_FORMAT, "teacher %s of layer %d is [%lld, %lld], expected [%lld, %lld]", what, layer,
                         (long long)W->rows, (long long)W->cols, (long long)rows, (long long)cols);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t src = hd > 0 ? mt_rope_perm_row(0, r, hd) : r;
        int st = mt_row_to_f32(W->dtype, (const char *)W->data + src * W->row_stride, dst + r * cols, cols);
        if (st) return mt_seterr(st, "teacher %s of layer %d: storage type %s cannot be read as numbers", what, layer,
                                 mt_dtype_name(W->dtype));
    }
    return MT_OK;
}

typedef struct {
    int L, E, top_k;
    uint64_t *count;  /* [L][E] tokens routed to each expert      */
    double *gate_sum; /* [L][E] renormalised gates of those tokens */
} route_stats;

static int route_hook(void *user, const mt_capture_event *ev) {
    route_stats *c = user;
    const int l = ev->layer;
    if (ev->kind != MT_CAP_ROUTER_LOGITS || !ev->topk || l < 0 || l >= c->L || ev->n_cols > c->E) return 0;
    for (int i = 0; i < ev->n_rows; i++) {
        const float *lg = ev->data + (size_t)i * ev->n_cols;
        const int32_t *tk = ev->topk + (size_t)i * c->top_k;
        double mx = -DBL_MAX, s = 0, ks = 0;
        for (int e = 0; e < ev->n_cols; e++) mx = lg[e] > mx ? lg[e] : mx;
        for (int e = 0; e < ev->n_cols; e++) s += exp(lg[e] - mx);
        for (int k = 0; k < c->top_k; k++)
            if (tk[k] >= 0) ks += exp(lg[tk[k]] - mx) / s;
        for (int k = 0; k < c->top_k; k++) {
            const int e = tk[k];
            if (e < 0 || e >= ev->n_cols) continue;
            c->count[(size_t)l * c->E + e]++;
            c->gate_sum[(size_t)l * c->E + e] += exp(lg[e] - mx) / s / ks;
        }
    }
    return 0;
}

static int count_routing(mt_model *t, route_stats *rs, const int32_t *ids, size_t n_ids, int init_tokens, int seq) {
    mt_ctx *ctx = NULL;
    int st = mt_ctx_init(&ctx, t, seq, seq);
    if (st) return st;
    mt_ctx_set_capture(ctx, route_hook, rs, MT_CAP_ROUTER_LOGITS);
    for (size_t off = 0; off + (size_t)seq <= n_ids && off < (size_t)init_tokens && !st; off += (size_t)seq) {
        mt_ctx_reset(ctx);
        st = mt_ctx_forward(ctx, ids + off, seq, NULL, 0);
    }
    mt_ctx_free(ctx);
    return st;
}

/* Experts of layer l by routing count, most used first (ties: lower index). */
static void order_experts(int *order, const uint64_t *count, int E) {
    for (int e = 0; e < E; e++) order[e] = e;
    for (int i = 1; i < E; i++)
        for (int j = i; j > 0 && count[order[j]] > count[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
}

/* The parts a student takes from its source unchanged: embeddings, final
 * norm, lm_head, and per layer the attention and both norms (hd: the head
 * size when Q/K rows are stored interleaved for RoPE, else 0). */
static int copy_shared(dt_model *m, const mt_weights *w, int hd) {
    const dt_config *c = &m->c;
    const int H = c->hidden, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim, V = c->vocab;
    int st;
    if ((st = mat_f32(m->p.embd, &w->tok_embd, V, H, 0, "token embedding", -1)) ||
        (st = mat_f32(m->p.out_norm, &w->out_norm, 1, H, 0, "final norm", -1)) ||
        (st = mat_f32(m->p.lm_head, &w->lm_head, V, H, 0, "lm_head", -1)))
        return st;
    for (int l = 0; l < c->n_layers; l++) {
        const mt_layer_weights *Lw = &w->layers[l];
        dt_layer *p = &m->p.layers[l];
        if ((st = mat_f32(p->attn_norm, &Lw->attn_norm, 1, H, 0, "attention norm", l)) ||
            (st = mat_f32(p->wq, &Lw->wq, QD, H, hd, "q_proj", l)) ||
            (st = mat_f32(p->wk, &Lw->wk, KD, H, hd, "k_proj", l)) ||
            (st = mat_f32(p->wv, &Lw->wv, KD, H, 0, "v_proj", l)) ||
            (st = mat_f32(p->wo, &Lw->wo, H, QD, 0, "o_proj", l)) ||
            (st = mat_f32(p->ffn_norm, &Lw->ffn_norm, 1, H, 0, "FFN norm", l)))
            return st;
    }
    return MT_OK;
}

int dst_student_from_teacher(dt_model *m, mt_model *teacher, int init, const int32_t *ids, size_t n_ids,
                             int init_tokens, int seq, uint64_t *rng) {
    const mt_config *tc = mt_model_config(teacher);
    const mt_weights *w = mt_model_weights(teacher);
    const dt_config *c = &m->c;
    const int L = c->n_layers, H = c->hidden, F = tc->ffn, W = c->ffn;
    const int hd = tc->rope_style == MT_ROPE_INTERLEAVED ? c->head_dim : 0;
    route_stats rs = {L, 0, tc->top_k, NULL, NULL};
    float *e1 = NULL, *e3 = NULL, *e2 = NULL;
    int *order = NULL, st;
    uint64_t *gtot = NULL; /* [E] routed slots per group (G <= E groups) */
    if ((st = copy_shared(m, w, hd))) return st;
    for (int l = 0; l < L; l++) rs.E = w->layers[l].n_experts > rs.E ? w->layers[l].n_experts : rs.E;
    if (init == MT_DISTILL_INIT_RANDOM) {
        const double s12 = 0.02, s2 = 0.02 / sqrt(2.0 * L);
        for (int l = 0; l < L; l++) {
            dt_layer *p = &m->p.layers[l];
            for (size_t i = 0; i < (size_t)W * H; i++) p->w1[i] = (float)(s12 * rng_normal(rng));
            for (size_t i = 0; i < (size_t)W * H; i++) p->w3[i] = (float)(s12 * rng_normal(rng));
            for (size_t i = 0; i < (size_t)W * H; i++) p->w2[i] = (float)(s2 * rng_normal(rng));
        }
        return MT_OK;
    }
    rs.count = calloc((size_t)L * rs.E, sizeof *rs.count);
    rs.gate_sum = calloc((size_t)L * rs.E, sizeof *rs.gate_sum);
    e1 = malloc((size_t)F * H * sizeof(float));
    e3 = malloc((size_t)F * H * sizeof(float));
    e2 = malloc((size_t)F * H * sizeof(float));
    order = malloc((size_t)rs.E * sizeof *order);
    gtot = malloc((size_t)(rs.E ? rs.E : 1) * sizeof *gtot);
    if (!rs.count || !rs.gate_sum || !e1 || !e3 || !e2 || !order || !gtot) {
        st = mt_seterr(MT_ERR_NOMEM, "distill: out of memory for the student's initialisation");
        goto done;
    }
    if ((st = count_routing(teacher, &rs, ids, n_ids, init_tokens, seq))) goto done;
    for (int l = 0; l < L; l++) {
        const mt_layer_weights *Lw = &w->layers[l];
        dt_layer *p = &m->p.layers[l];
        const int E = Lw->n_experts;
        const uint64_t *cnt = rs.count + (size_t)l * rs.E;
        const double *gs = rs.gate_sum + (size_t)l * rs.E;
        order_experts(order, cnt, E);
        const int G = (W + F - 1) / F; /* concat: experts taken; average: groups */
        if (G > E) {
            st = mt_seterr(MT_ERR_ARG, "--width %d needs %d experts of width %d; layer %d has %d", W, G, F, l, E);
            goto done;
        }
        if (init == MT_DISTILL_INIT_AVERAGE && W % F) {
            st = mt_seterr(MT_ERR_ARG, "--init average: --width %d is not a multiple of the expert width %d", W, F);
            goto done;
        }
        memset(p->w1, 0, (size_t)W * H * sizeof(float));
        memset(p->w3, 0, (size_t)W * H * sizeof(float));
        memset(p->w2, 0, (size_t)W * H * sizeof(float));
        memset(gtot, 0, (size_t)G * sizeof *gtot);
        if (init == MT_DISTILL_INIT_AVERAGE)
            for (int k = 0; k < E; k++) gtot[k % G] += cnt[order[k]];
        const int n_use = init == MT_DISTILL_INIT_CONCAT ? G : E;
        for (int k = 0; k < n_use; k++) {
            const int e = order[k], g = k % G;
            const int rows = init == MT_DISTILL_INIT_CONCAT ? (W - k * F < F ? W - k * F : F) : F;
            double s13 = 1.0, s2;
            if (init == MT_DISTILL_INIT_CONCAT) {
                s2 = cnt[e] ? gs[e] / (double)cnt[e] : 1.0 / (tc->top_k > 0 ? tc->top_k : 1);
            } else {
                /* frequency-weighted mean within the group; groups share the output */
                const double fw = gtot[g] ? (double)cnt[e] / (double)gtot[g] : 0;
                s13 = fw, s2 = fw / G;
                if (!gtot[g]) continue;
            }
            if ((st = mat_f32(e1, &Lw->w1[e], F, H, 0, "expert w1", l)) ||
                (st = mat_f32(e3, &Lw->w3[e], F, H, 0, "expert w3", l)) ||
                (st = mat_f32(e2, &Lw->w2[e], H, F, 0, "expert w2", l)))
                goto done;
            for (size_t i = 0; i < (size_t)rows * H; i++) {
                p->w1[(size_t)g * F * H + i] += (float)(s13 * e1[i]);
                p->w3[(size_t)g * F * H + i] += (float)(s13 * e3[i]);
            }
            for (int r = 0; r < H; r++)
                for (int j = 0; j < rows; j++) p->w2[(size_t)r * W + (size_t)g * F + j] += (float)(s2 * e2[(size_t)r * F + j]);
        }
    }
done:
    free(rs.count);
    free(rs.gate_sum);
    free(e1);
    free(e3);
    free(e2);
    free(order);
    free(gtot);
    return st;
}

int dst_student_from_moe(dt_model *m, const mt_model *student) {
    const mt_config *sc = mt_model_config(student);
    const mt_weights *w = mt_model_weights(student);
    const dt_config *c = &m->c;
    const int L = c->n_layers, H = c->hidden, F = c->ffn, E = c->n_experts;
    const int hd = sc->rope_style == MT_ROPE_INTERLEAVED ? c->head_dim : 0;
    int st;
    if ((st = copy_shared(m, w, hd))) return st;
    for (int l = 0; l < L; l++) {
        const mt_layer_weights *Lw = &w->layers[l];
        dt_layer *p = &m->p.layers[l];
        if ((st = mat_f32(p->router, &Lw->router, E, H, 0, "router", l))) return st;
        for (int e = 0; e < E; e++)
            if ((st = mat_f32(p->ew1 + (size_t)e * F * H, &Lw->w1[e], F, H, 0, "expert w1", l)) ||
                (st = mat_f32(p->ew3 + (size_t)e * F * H, &Lw->w3[e], F, H, 0, "expert w3", l)) ||
                (st = mat_f32(p->ew2 + (size_t)e * H * F, &Lw->w2[e], H, F, 0, "expert w2", l)))
                return st;
    }
    return MT_OK;
}

int dst_teacher_logits(mt_ctx *ctx, const int32_t *tokens, int B, int T, int V, float *out) {
    for (int b = 0; b < B; b++) {
        mt_ctx_reset(ctx);
        int st = mt_ctx_forward(ctx, tokens + (size_t)b * T, T, out + (size_t)b * T * V, 1);
        if (st) return st;
    }
    return MT_OK;
}

static int param_of(const dt_model *m, mt_role role, int layer, int expert) {
    dt_kind k;
    switch (role) {
    case MT_ROLE_TOK_EMBD: k = DT_EMBD; break;
    case MT_ROLE_OUT_NORM: k = DT_OUT_NORM; break;
    case MT_ROLE_LM_HEAD: k = DT_LM_HEAD; break;
    case MT_ROLE_ATTN_NORM: k = DT_ATTN_NORM; break;
    case MT_ROLE_WQ: k = DT_WQ; break;
    case MT_ROLE_WK: k = DT_WK; break;
    case MT_ROLE_WV: k = DT_WV; break;
    case MT_ROLE_WO: k = DT_WO; break;
    case MT_ROLE_FFN_NORM: k = DT_FFN_NORM; break;
    case MT_ROLE_FFN_GATE: k = DT_W1; break;
    case MT_ROLE_FFN_UP: k = DT_W3; break;
    case MT_ROLE_FFN_DOWN: k = DT_W2; break;
    case MT_ROLE_ROUTER: k = DT_ROUTER; break;
    case MT_ROLE_EXP_GATE: k = DT_EW1; break;
    case MT_ROLE_EXP_UP: k = DT_EW3; break;
    case MT_ROLE_EXP_DOWN: k = DT_EW2; break;
    default: return -1;
    }
    return dt_param_find(m, k, layer, expert);
}

int dst_write_hf(const dt_model *m, const float *values, const mt_config *sc, const mt_ckpt *teacher_ck,
                 const char *dir, int with_config) {
    mt_hf_writer *hw = NULL;
    char *cfg_text = NULL;
    int *idx = malloc((size_t)m->n_table * sizeof *idx), n = 0, st;
    if (!idx) return mt_seterr(MT_ERR_NOMEM, "distill: out of memory");
    mt_arch_iter it;
    mt_arch_item item;
    if ((st = mt_arch_iter_init(&it, sc, MT_ITER_PER_EXPERT, dir)) || (st = mt_hf_writer_open(&hw, dir, 0))) goto done;
    while (mt_arch_iter_next(&it, &item)) {
        const int i = param_of(m, item.t->role, item.layer, item.expert);
        const int64_t numel = item.n_dims == 1 ? item.shape[0] : item.shape[0] * item.shape[1];
        if (i < 0 || n >= m->n_table ||
            numel != (int64_t)m->table[i].rows * m->table[i].cols) {
            st = mt_seterr(MT_ERR_INTERNAL, "distill: no student tensor for %s", item.hf);
            goto done;
        }
        idx[n++] = i;
        if ((st = mt_hf_writer_add(hw, item.hf, MT_DT_F32, item.n_dims, item.shape))) goto done;
    }
    for (int j = 0; j < n; j++) {
        const dt_param *p = &m->table[idx[j]];
        if ((st = mt_hf_writer_write(hw, values + p->offset, (size_t)p->rows * p->cols * sizeof(float)))) goto done;
    }
    if ((st = mt_hf_writer_finish(hw))) goto done;
    if (with_config) {
        if ((st = mt_config_to_hf_json(&cfg_text, sc, "float32"))) goto done;
        if ((st = mt_write_text_file(dir, "config.json", cfg_text, strlen(cfg_text)))) goto done;
        if ((st = mt_copy_tokenizer(teacher_ck, dir))) goto done;
    }
done:
    mt_hf_writer_free(hw);
    free(cfg_text);
    free(idx);
    return st;
}
