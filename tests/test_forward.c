/* test_forward.c — the runtime's forward on the bundled kjv-mixtral-15m
 * against reference.json / reference-logits.f32 written by an independent
 * PyTorch implementation of HF Mixtral: all logits of logits_case within
 * 1e-3 with the same argmax, per-layer top-2 routing equal to routing_case
 * (in order: descending weight), prefill == token-by-token decode through
 * the KV cache, capture-hook properties, generation and argument errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_runtime.h"
#include "testutil.h"

enum { N_CASE = 15 };

static mt_model *g_model;
static int32_t g_ids[N_CASE];
static int32_t g_argmax[N_CASE];
static int32_t g_routing[64][N_CASE][2]; /* [layer][token][k] */
static float *g_ref;                      /* (N_CASE, vocab) */

static int setup(void **state) {
    (void)state;
    mt_model_opts o;
    mt_model_opts_default(&o);
    o.n_threads = 2;
    if (mt_model_load(&g_model, tu_model_dir(), &o) < 0) {
        fprintf(stderr, "load %s: %s\n", tu_model_dir(), mt_last_error());
        return -1;
    }
    size_t len;
    char *txt = tu_read_file(tu_model_path("reference.json"), &len);
    if (!txt) return -1;
    json_error_t err;
    json_t *j = json_loadb(txt, len, 0, &err);
    free(txt);
    if (!j) return -1;
    json_t *lc = json_object_get(j, "logits_case");
    json_t *ids = json_object_get(lc, "ids"), *am = json_object_get(j, "argmax_case");
    json_t *rc = json_object_get(j, "routing_case");
    if (json_array_size(ids) != N_CASE || json_array_size(am) != N_CASE || json_array_size(rc) > 64) return -1;
    for (int i = 0; i < N_CASE; i++) {
        g_ids[i] = (int32_t)json_integer_value(json_array_get(ids, i));
        g_argmax[i] = (int32_t)json_integer_value(json_array_get(am, i));
    }
    for (size_t l = 0; l < json_array_size(rc); l++)
        for (int i = 0; i < N_CASE; i++)
            for (int k = 0; k < 2; k++)
                g_routing[l][i][k] =
                    (int32_t)json_integer_value(json_array_get(json_array_get(json_array_get(rc, l), i), k));
    json_decref(j);
    char *raw = tu_read_file(tu_model_path("reference-logits.f32"), &len);
    int V = mt_model_config(g_model)->vocab;
    if (!raw || len != (size_t)N_CASE * V * 4) return -1;
    g_ref = malloc(len);
    memcpy(g_ref, raw, len);
    free(raw);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mt_model_free(g_model);
    free(g_ref);
    return 0;
}

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[a]) a = i;
    return a;
}

static void test_reference_logits(void **state) {
    (void)state;
    const mt_config *cf = mt_model_config(g_model);
    const int V = cf->vocab;
    assert_int_equal(cf->n_experts, 8);
    assert_int_equal(cf->top_k, 2);
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 64, 32), MT_OK); /* n_batch > n */
    float *lg = malloc((size_t)N_CASE * V * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg, 1), MT_OK);
    assert_int_equal(mt_ctx_pos(c), N_CASE);
    double md = 0;
    for (size_t i = 0; i < (size_t)N_CASE * V; i++) {
        double d = fabs((double)lg[i] - g_ref[i]);
        if (d > md) md = d;
    }
    printf("reference logits: maxdiff %.3g over [%d, %d]\n", md, N_CASE, V);
    assert_true(md <= 1e-3);
    for (int i = 0; i < N_CASE; i++) {
        assert_int_equal(argmax(lg + (size_t)i * V, V), g_argmax[i]);
        assert_int_equal(argmax(g_ref + (size_t)i * V, V), g_argmax[i]);
    }
    /* Routing: the reference lists each token's experts by descending weight. */
    const int32_t *r = mt_ctx_last_routing(c);
    assert_non_null(r);
    for (int l = 0; l < cf->n_layers; l++)
        for (int i = 0; i < N_CASE; i++)
            for (int k = 0; k < 2; k++)
                assert_int_equal(r[((size_t)l * N_CASE + i) * 2 + k], g_routing[l][i][k]);
    /* Counts: every token goes to top_k experts in every layer. */
    const uint64_t *cnt = mt_ctx_routing_counts(c);
    for (int l = 0; l < cf->n_layers; l++) {
        uint64_t s = 0;
        for (int e = 0; e < 8; e++) s += cnt[l * 8 + e];
        assert_int_equal(s, (uint64_t)N_CASE * 2);
    }
    mt_ctx_routing_reset(c);
    assert_int_equal(mt_ctx_routing_counts(c)[0], 0);

    /* The last-token-only form equals the last row. */
    float *last = malloc((size_t)V * sizeof *last);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_pos(c), 0);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, last, 0), MT_OK);
    /* (matvec instead of a matmul row for lm_head: rounding only) */
    for (int v = 0; v < V; v++) assert_true(fabs((double)last[v] - lg[(size_t)(N_CASE - 1) * V + v]) <= 1e-5);
    free(last);
    free(lg);
    mt_ctx_free(c);
}

/* Acceptance 3: one batch vs token by token (and a split prefill). */
static void test_prefill_vs_decode(void **state) {
    (void)state;
    const int V = mt_model_config(g_model)->vocab;
    mt_ctx *a, *b;
    assert_int_equal(mt_ctx_init(&a, g_model, 32, N_CASE), MT_OK);
    assert_int_equal(mt_ctx_init(&b, g_model, 32, 8), MT_OK);
    float *batch = malloc((size_t)N_CASE * V * sizeof *batch), *one = malloc((size_t)V * sizeof *one);
    assert_int_equal(mt_ctx_forward(a, g_ids, N_CASE, batch, 1), MT_OK);
    double md = 0, md_last = 0;
    for (int i = 0; i < N_CASE; i++) {
        assert_int_equal(mt_ctx_forward(b, &g_ids[i], 1, one, 0), MT_OK);
        for (int v = 0; v < V; v++) {
            double d = fabs((double)one[v] - batch[(size_t)i * V + v]);
            if (d > md) md = d;
            if (i == N_CASE - 1 && d > md_last) md_last = d;
        }
    }
    printf("prefill vs decode: last token maxdiff %.3g, all tokens %.3g\n", md_last, md);
    assert_true(md_last <= 1e-4);
    assert_true(md <= 1e-4);
    /* 7 tokens prefilled, then 8 more as a second batch. */
    mt_ctx_reset(b);
    assert_int_equal(mt_ctx_forward(b, g_ids, 7, NULL, 0), MT_OK);
    assert_int_equal(mt_ctx_forward(b, g_ids + 7, 8, one, 0), MT_OK);
    md = 0;
    for (int v = 0; v < V; v++) md = fmax(md, fabs((double)one[v] - batch[(size_t)(N_CASE - 1) * V + v]));
    printf("split prefill 7+8: last token maxdiff %.3g\n", md);
    assert_true(md <= 1e-4);
    free(batch);
    free(one);
    mt_ctx_free(a);
    mt_ctx_free(b);
}

/* ---- capture hooks -------------------------------------------------------- */
typedef struct {
    int n_events[64];
    int n;                 /* tokens of the forward */
    int hidden, n_experts, top_k;
    float ffn_in[N_CASE * 256];
    int32_t topk[N_CASE * 2];
    int expert_rows;       /* rows seen by EXPERT_IN in the current layer */
    double gate_sum[N_CASE];
    int bad;
    int abort_at;          /* event number that returns an error; -1 never */
    int count;
} cap_state;

static int on_capture(void *user, const mt_capture_event *ev) {
    cap_state *s = user;
    s->count++;
    if (s->abort_at >= 0 && s->count == s->abort_at) return MT_ERR_INTERNAL;
    int kind_bit = 0;
    while ((1 << kind_bit) != (int)ev->kind) kind_bit++;
    s->n_events[kind_bit]++;
    switch (ev->kind) {
    case MT_CAP_ATTN_IN:
    case MT_CAP_LAYER_OUT:
        if (ev->n_rows != s->n || ev->n_cols != s->hidden || ev->expert != -1) s->bad++;
        break;
    case MT_CAP_FFN_IN:
        if (ev->n_rows != s->n || ev->n_cols != s->hidden) s->bad++;
        memcpy(s->ffn_in, ev->data, (size_t)s->n * s->hidden * sizeof(float));
        for (int i = 0; i < s->n; i++) s->gate_sum[i] = 0;
        break;
    case MT_CAP_ROUTER_LOGITS:
        if (ev->n_rows != s->n || ev->n_cols != s->n_experts || !ev->topk) s->bad++;
        memcpy(s->topk, ev->topk, (size_t)s->n * s->top_k * sizeof(int32_t));
        /* the chosen experts have the largest logits, in descending order */
        for (int i = 0; i < s->n; i++) {
            const float *lg = ev->data + (size_t)i * s->n_experts;
            const int32_t *tk = ev->topk + (size_t)i * s->top_k;
            if (lg[tk[0]] < lg[tk[1]]) s->bad++;
            for (int e = 0; e < s->n_experts; e++)
                if (e != tk[0] && e != tk[1] && lg[e] > lg[tk[1]]) s->bad++;
        }
        break;
    case MT_CAP_EXPERT_IN:
        for (int r = 0; r < ev->n_rows; r++) {
            int row = ev->rows[r];
            if (row < 0 || row >= s->n) {
                s->bad++;
                continue;
            }
            if (memcmp(ev->data + (size_t)r * s->hidden, s->ffn_in + (size_t)row * s->hidden,
                       (size_t)s->hidden * sizeof(float)))
                s->bad++;
            const int32_t *tk = s->topk + (size_t)row * s->top_k;
            if (tk[0] != ev->expert && tk[1] != ev->expert) s->bad++;
            s->gate_sum[row] += ev->gates[r];
        }
        break;
    case MT_CAP_EXPERT_OUT:
        if (ev->n_cols != s->hidden || !ev->rows || !ev->gates) s->bad++;
        break;
    default:
        break;
    }
    return 0;
}

static void test_capture(void **state) {
    (void)state;
    const mt_config *cf = mt_model_config(g_model);
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 32, N_CASE), MT_OK);
    cap_state *s = calloc(1, sizeof *s);
    s->n = N_CASE;
    s->hidden = cf->hidden;
    s->n_experts = cf->n_experts;
    s->top_k = cf->top_k;
    s->abort_at = -1;
    unsigned all = MT_CAP_ATTN_IN | MT_CAP_FFN_IN | MT_CAP_ROUTER_LOGITS | MT_CAP_EXPERT_IN | MT_CAP_EXPERT_OUT |
                   MT_CAP_LAYER_OUT;
    mt_ctx_set_capture(c, on_capture, s, all);
    float *lg = malloc((size_t)cf->vocab * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg, 0), MT_OK);
    assert_int_equal(s->bad, 0);
    assert_int_equal(s->n_events[0], cf->n_layers); /* ATTN_IN */
    assert_int_equal(s->n_events[1], cf->n_layers); /* FFN_IN */
    assert_int_equal(s->n_events[2], cf->n_layers); /* ROUTER_LOGITS */
    assert_int_equal(s->n_events[5], cf->n_layers); /* LAYER_OUT */
    assert_true(s->n_events[3] >= cf->n_layers && s->n_events[3] == s->n_events[4]);
    for (int i = 0; i < N_CASE; i++) assert_true(fabs(s->gate_sum[i] - 1.0) < 1e-5); /* last layer */
    /* capturing does not change the result */
    float *lg2 = malloc((size_t)cf->vocab * sizeof *lg2);
    mt_ctx_set_capture(c, NULL, NULL, 0);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg2, 0), MT_OK);
    assert_memory_equal(lg, lg2, (size_t)cf->vocab * sizeof(float));
    /* only the asked kinds are delivered */
    memset(s->n_events, 0, sizeof s->n_events);
    mt_ctx_set_capture(c, on_capture, s, MT_CAP_LAYER_OUT);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, NULL, 0), MT_OK);
    assert_int_equal(s->n_events[5], cf->n_layers);
    assert_int_equal(s->n_events[0] + s->n_events[1] + s->n_events[2] + s->n_events[3] + s->n_events[4], 0);
    /* a non-zero return aborts the forward with that status, position unchanged */
    s->abort_at = s->count + 2;
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, NULL, 0), MT_ERR_INTERNAL);
    assert_int_equal(mt_ctx_pos(c), 0);
    free(lg);
    free(lg2);
    free(s);
    mt_ctx_free(c);
}

/* ---- attention-output and final-norm taps -----------------------------------
 * Checked against the model's own weights in f64: the layer's FFN input is
 * rmsnorm(x_prev + attn_out·Woᵀ)·w_ffn with x_prev the previous layer's
 * output (the embeddings for layer 0), so o_proj of the captured rows is
 * the attention block's contribution; FINAL_NORM is rmsnorm(last layer
 * output)·w_out and lm_head of it gives the logits. Token-by-token decode
 * delivers the same rows as the batch. */
enum { TAP_LAYERS = 16 };
typedef struct {
    int n, layers, hidden, q_dim;
    int row0;                        /* batch row of the first captured row */
    float *attn_out[TAP_LAYERS];     /* (N_CASE, q_dim) */
    float *ffn_in[TAP_LAYERS];       /* (N_CASE, hidden) */
    float *layer_out[TAP_LAYERS];    /* (N_CASE, hidden) */
    float *final_norm;               /* (N_CASE, hidden) */
    int n_attn_out, n_final, bad, abort_final;
} tap_state;

static int on_tap(void *user, const mt_capture_event *ev) {
    tap_state *s = user;
    const int l = ev->layer;
    const size_t r0 = (size_t)s->row0;
    switch (ev->kind) {
    case MT_CAP_ATTN_OUT:
        s->n_attn_out++;
        if (l < 0 || l >= s->layers || ev->n_rows != s->n || ev->n_cols != s->q_dim || ev->expert != -1) {
            s->bad++;
            return 0;
        }
        memcpy(s->attn_out[l] + r0 * s->q_dim, ev->data, (size_t)ev->n_rows * s->q_dim * sizeof(float));
        break;
    case MT_CAP_FFN_IN:
        memcpy(s->ffn_in[l] + r0 * s->hidden, ev->data, (size_t)ev->n_rows * s->hidden * sizeof(float));
        break;
    case MT_CAP_LAYER_OUT:
        memcpy(s->layer_out[l] + r0 * s->hidden, ev->data, (size_t)ev->n_rows * s->hidden * sizeof(float));
        break;
    case MT_CAP_FINAL_NORM:
        s->n_final++;
        if (l != s->layers || ev->n_rows != s->n || ev->n_cols != s->hidden || ev->expert != -1) {
            s->bad++;
            return 0;
        }
        if (s->abort_final) return MT_ERR_INTERNAL;
        memcpy(s->final_norm + r0 * s->hidden, ev->data, (size_t)ev->n_rows * s->hidden * sizeof(float));
        break;
    default:
        break;
    }
    return 0;
}

static float *mat_f32(const mt_mat *w) {
    float *o = malloc((size_t)(w->rows * w->cols) * sizeof *o);
    assert_non_null(o);
    for (int64_t r = 0; r < w->rows; r++)
        assert_int_equal(mt_row_to_f32(w->dtype, (const uint8_t *)w->data + r * w->row_stride, o + r * w->cols, w->cols),
                         MT_OK);
    return o;
}

/* f64 rmsnorm of one row. */
static void rms_ref(double *out, const double *x, const float *w, int dim, double eps) {
    double ss = 0;
    for (int j = 0; j < dim; j++) ss += x[j] * x[j];
    double r = 1.0 / sqrt(ss / dim + eps);
    for (int j = 0; j < dim; j++) out[j] = w[j] * x[j] * r;
}

static void test_capture_taps(void **state) {
    (void)state;
    const mt_config *cf = mt_model_config(g_model);
    const mt_weights *W = mt_model_weights(g_model);
    const int H = cf->hidden, QD = cf->n_heads * cf->head_dim, V = cf->vocab, L = cf->n_layers;
    assert_true(L <= TAP_LAYERS);
    tap_state *s = calloc(1, sizeof *s);
    s->n = N_CASE;
    s->layers = L;
    s->hidden = H;
    s->q_dim = QD;
    for (int l = 0; l < L; l++) {
        s->attn_out[l] = calloc((size_t)N_CASE * QD, sizeof(float));
        s->ffn_in[l] = calloc((size_t)N_CASE * H, sizeof(float));
        s->layer_out[l] = calloc((size_t)N_CASE * H, sizeof(float));
    }
    s->final_norm = calloc((size_t)N_CASE * H, sizeof(float));
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 32, N_CASE), MT_OK);
    const unsigned mask = MT_CAP_ATTN_OUT | MT_CAP_FFN_IN | MT_CAP_LAYER_OUT | MT_CAP_FINAL_NORM;
    mt_ctx_set_capture(c, on_tap, s, mask);
    float *lg = malloc((size_t)N_CASE * V * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg, 1), MT_OK);
    assert_int_equal(s->bad, 0);
    assert_int_equal(s->n_attn_out, L);
    assert_int_equal(s->n_final, 1);

    /* o_proj(attn_out) closes the residual: FFN_IN from it within f32 noise. */
    double *x = malloc((size_t)H * sizeof *x), *y = malloc((size_t)H * sizeof *y);
    float *row = malloc((size_t)H * sizeof *row);
    double md_ffn = 0, md_final = 0, md_logit = 0;
    for (int l = 0; l < L; l++) {
        const mt_layer_weights *Lw = &W->layers[l];
        float *wo = mat_f32(&Lw->wo), *wn = mat_f32(&Lw->ffn_norm);
        for (int i = 0; i < N_CASE; i++) {
            if (l == 0) {
                assert_int_equal(mt_row_to_f32(W->tok_embd.dtype,
                                               (const uint8_t *)W->tok_embd.data + (size_t)g_ids[i] * W->tok_embd.row_stride,
                                               row, H),
                                 MT_OK);
            } else {
                memcpy(row, s->layer_out[l - 1] + (size_t)i * H, (size_t)H * sizeof(float));
            }
            const float *a = s->attn_out[l] + (size_t)i * QD;
            for (int j = 0; j < H; j++) {
                double acc = row[j];
                for (int u = 0; u < QD; u++) acc += (double)wo[(size_t)j * QD + u] * a[u];
                x[j] = acc;
            }
            rms_ref(y, x, wn, H, cf->norm_eps);
            for (int j = 0; j < H; j++) md_ffn = fmax(md_ffn, fabs(y[j] - s->ffn_in[l][(size_t)i * H + j]));
        }
        free(wo);
        free(wn);
    }
    /* FINAL_NORM = rmsnorm(last layer output)·w_out; lm_head of it = logits. */
    float *wn = mat_f32(&W->out_norm), *head = mat_f32(&W->lm_head);
    for (int i = 0; i < N_CASE; i++) {
        for (int j = 0; j < H; j++) x[j] = s->layer_out[L - 1][(size_t)i * H + j];
        rms_ref(y, x, wn, H, cf->norm_eps);
        const float *f = s->final_norm + (size_t)i * H;
        for (int j = 0; j < H; j++) md_final = fmax(md_final, fabs(y[j] - f[j]));
        for (int v = 0; v < V; v++) {
            double acc = 0;
            for (int j = 0; j < H; j++) acc += (double)head[(size_t)v * H + j] * f[j];
            md_logit = fmax(md_logit, fabs(acc - lg[(size_t)i * V + v]));
        }
    }
    printf("taps: ffn_in from attn_out maxdiff %.3g, final norm %.3g, logits from it %.3g\n", md_ffn, md_final,
           md_logit);
    assert_true(md_ffn <= 1e-4);
    assert_true(md_final <= 1e-5);
    assert_true(md_logit <= 1e-4);

    /* Without logits FINAL_NORM still delivers every row, the same rows. */
    float *fn_batch = malloc((size_t)N_CASE * H * sizeof *fn_batch);
    float *ao_batch = malloc((size_t)N_CASE * QD * sizeof *ao_batch);
    memcpy(fn_batch, s->final_norm, (size_t)N_CASE * H * sizeof(float));
    memcpy(ao_batch, s->attn_out[L - 1], (size_t)N_CASE * QD * sizeof(float));
    memset(s->final_norm, 0, (size_t)N_CASE * H * sizeof(float));
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, NULL, 0), MT_OK);
    assert_memory_equal(s->final_norm, fn_batch, (size_t)N_CASE * H * sizeof(float));

    /* Token by token (matvec path, last-token logits): the same rows, and
     * the logits are lm_head of the captured row. */
    s->n = 1;
    mt_ctx_reset(c);
    double md_tok = 0, md_tok_logit = 0;
    for (int i = 0; i < N_CASE; i++) {
        s->row0 = i;
        assert_int_equal(mt_ctx_forward(c, g_ids + i, 1, lg, 0), MT_OK);
        const float *f = s->final_norm + (size_t)i * H;
        for (int v = 0; v < V; v++) {
            double acc = 0;
            for (int j = 0; j < H; j++) acc += (double)head[(size_t)v * H + j] * f[j];
            md_tok_logit = fmax(md_tok_logit, fabs(acc - lg[v]));
        }
    }
    for (size_t k = 0; k < (size_t)N_CASE * H; k++) md_tok = fmax(md_tok, fabs((double)s->final_norm[k] - fn_batch[k]));
    for (size_t k = 0; k < (size_t)N_CASE * QD; k++)
        md_tok = fmax(md_tok, fabs((double)s->attn_out[L - 1][k] - ao_batch[k]));
    printf("taps: decode vs batch maxdiff %.3g, decode logits %.3g\n", md_tok, md_tok_logit);
    assert_int_equal(s->bad, 0);
    assert_true(md_tok <= 1e-4);
    assert_true(md_tok_logit <= 1e-4);

    /* Capturing the final norm does not change the last-token logits. */
    float *l1 = malloc((size_t)V * sizeof *l1), *l2 = malloc((size_t)V * sizeof *l2);
    s->n = N_CASE;
    s->row0 = 0;
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, l1, 0), MT_OK);
    mt_ctx_set_capture(c, NULL, NULL, 0);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, l2, 0), MT_OK);
    assert_memory_equal(l1, l2, (size_t)V * sizeof(float));
    /* An abort at FINAL_NORM leaves the position where it was. */
    mt_ctx_set_capture(c, on_tap, s, MT_CAP_FINAL_NORM);
    s->abort_final = 1;
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, l1, 0), MT_ERR_INTERNAL);
    assert_int_equal(mt_ctx_pos(c), 0);

    free(l1);
    free(l2);
    free(fn_batch);
    free(ao_batch);
    free(wn);
    free(head);
    free(x);
    free(y);
    free(row);
    free(lg);
    for (int l = 0; l < L; l++) {
        free(s->attn_out[l]);
        free(s->ffn_in[l]);
        free(s->layer_out[l]);
    }
    free(s->final_norm);
    free(s);
    mt_ctx_free(c);
}

/* ---- forward from a layer ----------------------------------------------------
 * mt_ctx_forward_from(l, stream entering l) gives mt_ctx_forward's logits
 * bit for bit for every l (the stream captured by LAYER_OUT of l − 1;
 * l = n_layers: only the final norm and lm_head), at position 0 and after
 * a prefix in the cache; a stream changed in one row changes the logits. */
typedef struct {
    int hidden, n;
    float *out[TAP_LAYERS];
} from_state;

static int on_layer_out(void *user, const mt_capture_event *ev) {
    from_state *s = user;
    if (ev->kind == MT_CAP_LAYER_OUT && ev->layer < TAP_LAYERS)
        memcpy(s->out[ev->layer], ev->data, (size_t)ev->n_rows * (size_t)s->hidden * sizeof(float));
    return 0;
}

static void test_forward_from(void **state) {
    (void)state;
    const mt_config *cf = mt_model_config(g_model);
    assert_true(cf->n_layers <= TAP_LAYERS);
    const int n = N_CASE, V = cf->vocab, H = cf->hidden, P = 3; /* P tokens already in the cache */
    from_state s = {H, n, {0}};
    for (int l = 0; l < cf->n_layers; l++) s.out[l] = malloc((size_t)n * H * sizeof(float));
    float *want = malloc((size_t)n * V * sizeof(float)), *got = malloc((size_t)n * V * sizeof(float));
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 64, n), MT_OK);
    for (int pre = 0; pre < 2; pre++) {
        mt_ctx_reset(c);
        if (pre) assert_int_equal(mt_ctx_forward(c, g_ids, P, NULL, 0), MT_OK);
        mt_ctx_set_capture(c, on_layer_out, &s, MT_CAP_LAYER_OUT);
        assert_int_equal(mt_ctx_forward(c, g_ids, n, want, 1), MT_OK);
        mt_ctx_set_capture(c, NULL, NULL, 0);
        for (int l = 1; l <= cf->n_layers; l++) {
            mt_ctx_reset(c);
            if (pre) assert_int_equal(mt_ctx_forward(c, g_ids, P, NULL, 0), MT_OK);
            assert_int_equal(mt_ctx_forward_from(c, l, s.out[l - 1], n, got, 1), MT_OK);
            assert_int_equal(mt_ctx_pos(c), n + (pre ? P : 0));
            if (memcmp(got, want, (size_t)n * V * sizeof(float)))
                fail_msg("forward from layer %d (prefix %d): logits differ", l, pre ? P : 0);
        }
    }
    /* a changed stream changes the result */
    mt_ctx_reset(c);
    s.out[0][5] += 1.0f;
    assert_int_equal(mt_ctx_forward_from(c, 1, s.out[0], n, got, 1), MT_OK);
    assert_true(memcmp(got, want, (size_t)n * V * sizeof(float)) != 0);
    /* bad layer */
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward_from(c, cf->n_layers + 1, s.out[0], n, got, 1), MT_ERR_ARG);
    assert_int_equal(mt_ctx_forward_from(c, -1, s.out[0], n, got, 1), MT_ERR_ARG);
    mt_ctx_free(c);
    for (int l = 0; l < cf->n_layers; l++) free(s.out[l]);
    free(want);
    free(got);
}

static void test_errors(void **state) {
    (void)state;
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 0, 1), MT_ERR_ARG);
    assert_int_equal(mt_ctx_init(&c, g_model, 8, 4), MT_OK);
    int32_t bad = mt_model_config(g_model)->vocab;
    assert_int_equal(mt_ctx_forward(c, &bad, 1, NULL, 0), MT_ERR_ARG);
    bad = -1;
    assert_int_equal(mt_ctx_forward(c, &bad, 1, NULL, 0), MT_ERR_ARG);
    assert_int_equal(mt_ctx_forward(c, g_ids, 5, NULL, 0), MT_ERR_ARG); /* n > n_batch */
    assert_int_equal(mt_ctx_forward(c, g_ids, 4, NULL, 0), MT_OK);
    assert_int_equal(mt_ctx_forward(c, g_ids, 4, NULL, 0), MT_OK);
    assert_int_equal(mt_ctx_forward(c, g_ids, 1, NULL, 0), MT_ERR_ARG); /* cache full */
    assert_true(strstr(mt_last_error(), "context") != NULL);
    assert_int_equal(mt_ctx_pos(c), 8);
    mt_ctx_free(c);
    mt_ctx_free(NULL);
    mt_model *none = (mt_model *)1;
    assert_true(mt_model_load(&none, "/nonexistent/model", NULL) < 0);
    assert_null(none);
}

/* ---- generation ------------------------------------------------------------- */
static void test_generate(void **state) {
    (void)state;
    const int V = mt_model_config(g_model)->vocab;
    mt_sample_opts so;
    mt_sample_opts_default(&so);
    so.n_predict = 10;
    so.stop_at_eos = 0;
    int32_t out[16], n = 0;
    int n_out = 0;
    mt_gen_timing tm;
    const int np = 5;
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, out, &n_out, &tm), MT_OK);
    assert_int_equal(n_out, 10);
    assert_int_equal(tm.n_prompt, np);
    assert_int_equal(tm.n_gen, 10);
    printf("generate: prefill %.4f s, decode %.4f s for %d tokens\n", tm.prefill_s, tm.decode_s, tm.n_gen);
    /* first token: the independent reference's argmax after the prompt */
    assert_int_equal(out[0], g_argmax[np - 1]);
    /* greedy: every generated token is the argmax of a full forward */
    int32_t seq[32];
    memcpy(seq, g_ids, np * sizeof(int32_t));
    memcpy(seq + np, out, (size_t)n_out * sizeof(int32_t));
    n = np + n_out - 1;
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 32, 32), MT_OK);
    float *lg = malloc((size_t)n * V * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, seq, n, lg, 1), MT_OK);
    for (int i = 0; i < n_out; i++) assert_int_equal(argmax(lg + (size_t)(np - 1 + i) * V, V), out[i]);
    free(lg);
    mt_ctx_free(c);

    /* sampling: a seed reproduces its output; a tiny nucleus is greedy */
    int32_t s1[16], s2[16], s3[16];
    int n1, n2, n3;
    so.temp = 1.0f;
    so.seed = 42;
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, s1, &n1, NULL), MT_OK);
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, s2, &n2, NULL), MT_OK);
    assert_int_equal(n1, n2);
    assert_memory_equal(s1, s2, (size_t)n1 * sizeof(int32_t));
    so.top_p = 1e-6f;
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, s3, &n3, NULL), MT_OK);
    assert_int_equal(n3, 10);
    assert_memory_equal(s3, out, 10 * sizeof(int32_t));

    /* errors: empty prompt, prompt longer than the model's context */
    mt_sample_opts_default(&so);
    assert_int_equal(mt_generate(g_model, g_ids, 0, &so, NULL, NULL, out, &n_out, NULL), MT_ERR_ARG);
    int maxp = mt_model_config(g_model)->max_pos;
    int32_t *big = calloc((size_t)maxp + 1, sizeof *big);
    assert_int_equal(mt_generate(g_model, big, maxp + 1, &so, NULL, NULL, out, &n_out, NULL), MT_ERR_ARG);
    free(big);
}

static void test_param_stats(void **state) {
    (void)state;
    const mt_config *c = mt_model_config(g_model);
    mt_param_stats ps;
    mt_model_param_stats(g_model, &ps);
    uint64_t H = c->hidden, kvd = (uint64_t)c->n_kv_heads * c->head_dim, qd = (uint64_t)c->n_heads * c->head_dim;
    uint64_t expert = 3ull * c->ffn * H;
    uint64_t per_layer = 2 * H + qd * H * 2 + kvd * H * 2 + (uint64_t)c->n_experts * H;
    uint64_t base = 2ull * c->vocab * H + H + c->n_layers * per_layer;
    uint64_t experts = (uint64_t)c->n_layers * c->n_experts * expert;
    printf("params: total %llu, experts %llu, active %llu, %llu bytes\n", (unsigned long long)ps.total,
           (unsigned long long)ps.experts, (unsigned long long)ps.active, (unsigned long long)ps.weight_bytes);
    assert_int_equal(ps.experts, experts);
    assert_int_equal(ps.total, base + experts);
    assert_int_equal(ps.active, base + (uint64_t)c->n_layers * c->top_k * expert);
    assert_int_equal(ps.weight_bytes, 2 * ps.total); /* bf16 */
    assert_int_equal(ps.expert_bytes, 2 * ps.experts);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_logits), cmocka_unit_test(test_prefill_vs_decode),
        cmocka_unit_test(test_capture),          cmocka_unit_test(test_capture_taps),
        cmocka_unit_test(test_errors),           cmocka_unit_test(test_forward_from),
        cmocka_unit_test(test_generate),         cmocka_unit_test(test_param_stats),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
