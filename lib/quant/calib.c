/* calib.c — calibration statistics for GPTQ, gathered through the runtime's
 * capture hooks one layer at a time: calibration windows run through layers
 * 0..l (the forward is stopped after layer l), and the hook accumulates
 * H = Σ x xᵀ (f64) for the attention input, for each expert's routed input
 * rows (capped per expert), and for each expert's intermediate activation
 * silu(W1 x)·(W3 x), which w2 multiplies and which the hook computes from
 * the routed rows with the layer's W1/W3. */
#include "quant_impl.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Status a hook returns to stop the forward after the calibrated layer. */
#define CALIB_STOP 1

int mt_calib_tokens(const mt_model *m, const char *path, int need, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    const mt_tokenizer *tok = mt_model_tokenizer(m);
    if (!tok) return mt_seterr(MT_ERR_ARG, "%s: the model has no tokenizer to read calibration text with", path);
    FILE *f = fopen(path, "rb");
    if (!f) return mt_seterr(MT_ERR_IO, "%s: cannot open calibration text", path);
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = MT_OK;
    for (;;) {
        if (len + 65536 + 1 > cap) {
            cap = (len + 65536 + 1) * 2;
            char *t = realloc(text, cap);
            if (!t) {
                rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
                goto done;
            }
            text = t;
        }
        size_t got = fread(text + len, 1, 65536, f);
        len += got;
        if (got < 65536) break;
    }
    if (ferror(f)) {
        rc = mt_seterr(MT_ERR_IO, "%s: read error", path);
        goto done;
    }
    size_t cnt = 0, want = len / 2 + 16;
    int32_t *buf = malloc(want * sizeof *buf);
    if (!buf) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    rc = mt_tok_encode(tok, text, len, buf, want, &cnt);
    if (!rc && cnt > want) {
        int32_t *b2 = realloc(buf, cnt * sizeof *buf);
        if (!b2) rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        else {
            buf = b2;
            rc = mt_tok_encode(tok, text, len, buf, cnt, &cnt);
        }
    }
    if (rc) {
        free(buf);
        goto done;
    }
    if (cnt < (size_t)need) {
        free(buf);
        rc = mt_seterr(MT_ERR_ARG, "%s: calibration text has %zu tokens, %d needed (lower --calib-tokens or give a longer text)",
                       path, cnt, need);
        goto done;
    }
    *ids = buf;
    *n = cnt;
done:
    free(text);
    fclose(f);
    return rc;
}

void mt_calib_stats_free(mt_calib_stats *st) {
    if (!st) return;
    free(st->h_attn);
    for (int e = 0; e < st->n_exp; e++) {
        if (st->h_in) free(st->h_in[e]);
        if (st->h_mid) free(st->h_mid[e]);
    }
    free(st->h_in);
    free(st->h_mid);
    free(st->count);
    memset(st, 0, sizeof *st);
}

typedef struct {
    int layer, dense, with_attn;
    uint64_t cap;
    mt_calib_stats *st;
    const float *w13;   /* (n_exp, 2, ffn, hidden): W1 then W3 of each expert, f32 */
    double *xd;         /* (window, max(hidden, ffn)) f64 rows for syrk     */
    float *g, *u;       /* (window, ffn)                                    */
} hook_ctx;

static void syrk_add(double *H, const float *X, int64_t m, int64_t n, double *xd) {
    for (int64_t i = 0; i < m * n; i++) xd[i] = X[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)n, (int)m, 1.0, xd, (int)n, 1.0, H, (int)n);
}

static void add_expert(hook_ctx *hc, int e, const float *X, int64_t m) {
    mt_calib_stats *st = hc->st;
    const int64_t Hd = st->hidden, F = st->ffn;
    if (st->count[e] >= hc->cap) return;
    if ((uint64_t)m > hc->cap - st->count[e]) m = (int64_t)(hc->cap - st->count[e]);
    syrk_add(st->h_in[e], X, m, Hd, hc->xd);
    const float *w1 = hc->w13 + (size_t)e * 2 * (size_t)(F * Hd), *w3 = w1 + F * Hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)F, (int)Hd, 1.0f, X, (int)Hd, w1, (int)Hd, 0.0f,
                hc->g, (int)F);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)F, (int)Hd, 1.0f, X, (int)Hd, w3, (int)Hd, 0.0f,
                hc->u, (int)F);
    for (int64_t i = 0; i < m * F; i++) {
        float v = hc->g[i];
        hc->g[i] = v / (1.0f + expf(-v)) * hc->u[i];
    }
    syrk_add(st->h_mid[e], hc->g, m, F, hc->xd);
    st->count[e] += (uint64_t)m;
}

static int hook(void *user, const mt_capture_event *ev) {
    hook_ctx *hc = user;
    if (ev->layer != hc->layer) return 0;
    switch (ev->kind) {
    case MT_CAP_ATTN_IN:
        if (hc->with_attn) syrk_add(hc->st->h_attn, ev->data, ev->n_rows, ev->n_cols, hc->xd);
        hc->st->n_tokens += (uint64_t)ev->n_rows;
        return 0;
    case MT_CAP_FFN_IN:
        if (hc->dense) add_expert(hc, 0, ev->data, ev->n_rows);
        return 0;
    case MT_CAP_EXPERT_IN:
        if (!hc->dense && ev->expert >= 0 && ev->expert < hc->st->n_exp) add_expert(hc, ev->expert, ev->data, ev->n_rows);
        return 0;
    case MT_CAP_LAYER_OUT:
        return CALIB_STOP;
    default:
        return 0;
    }
}

static void symmetrize(double *H, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++) H[i * n + j] = H[j * n + i];
}

int mt_calib_layer(mt_model *m, int layer, const int32_t *ids, size_t n_ids, int window, int with_attn,
                   uint64_t cap, mt_calib_stats *st) {
    const mt_config *c = mt_model_config(m);
    const mt_layer_weights *L = &mt_model_weights(m)->layers[layer];
    const int ne = L->n_experts > 0 ? L->n_experts : 1;
    const int64_t Hd = c->hidden, F = c->ffn, mx = Hd > F ? Hd : F;
    memset(st, 0, sizeof *st);
    st->n_exp = ne;
    st->hidden = Hd;
    st->ffn = F;
    hook_ctx hc = {layer, L->n_experts == 0, with_attn, cap, st, NULL, NULL, NULL, NULL};
    float *w13 = NULL;
    mt_ctx *ctx = NULL;
    int rc = MT_OK;
    st->h_in = calloc((size_t)ne, sizeof *st->h_in);
    st->h_mid = calloc((size_t)ne, sizeof *st->h_mid);
    st->count = calloc((size_t)ne, sizeof *st->count);
    w13 = malloc((size_t)ne * 2 * (size_t)F * (size_t)Hd * sizeof *w13);
    hc.xd = malloc((size_t)window * (size_t)mx * sizeof *hc.xd);
    hc.g = malloc((size_t)window * (size_t)F * sizeof *hc.g);
    hc.u = malloc((size_t)window * (size_t)F * sizeof *hc.u);
    if (with_attn) st->h_attn = calloc((size_t)(Hd * Hd), sizeof *st->h_attn);
    if (!st->h_in || !st->h_mid || !st->count || !w13 || !hc.xd || !hc.g || !hc.u || (with_attn && !st->h_attn)) {
        rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for layer %d statistics", layer);
        goto done;
    }
    for (int e = 0; e < ne; e++) {
        st->h_in[e] = calloc((size_t)(Hd * Hd), sizeof(double));
        st->h_mid[e] = calloc((size_t)(F * F), sizeof(double));
        if (!st->h_in[e] || !st->h_mid[e]) {
            rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for layer %d statistics", layer);
            goto done;
        }
        float *d1 = w13 + (size_t)e * 2 * (size_t)(F * Hd), *d3 = d1 + F * Hd;
        for (int64_t r = 0; r < F; r++) {
            if ((rc = mt_row_to_f32(L->w1[e].dtype, (const uint8_t *)L->w1[e].data + r * L->w1[e].row_stride,
                                    d1 + r * Hd, Hd)) ||
                (rc = mt_row_to_f32(L->w3[e].dtype, (const uint8_t *)L->w3[e].data + r * L->w3[e].row_stride,
                                    d3 + r * Hd, Hd)))
                goto done;
        }
    }
    hc.w13 = w13;
    if ((rc = mt_ctx_init(&ctx, m, window, window))) goto done;
    mt_ctx_set_capture(ctx, hook, &hc,
                       MT_CAP_ATTN_IN | MT_CAP_FFN_IN | MT_CAP_EXPERT_IN | MT_CAP_LAYER_OUT);
    for (size_t off = 0; off + (size_t)window <= n_ids; off += (size_t)window) {
        mt_ctx_reset(ctx);
        rc = mt_ctx_forward(ctx, ids + off, window, NULL, 0);
        if (rc != CALIB_STOP) {
            if (rc == MT_OK) rc = mt_seterr(MT_ERR_INTERNAL, "calibration: layer %d was not reached", layer);
            goto done;
        }
        rc = MT_OK;
    }
    if (st->h_attn) symmetrize(st->h_attn, Hd);
    for (int e = 0; e < ne; e++) {
        symmetrize(st->h_in[e], Hd);
        symmetrize(st->h_mid[e], F);
    }
done:
    mt_ctx_free(ctx);
    free(w13);
    free(hc.xd);
    free(hc.g);
    free(hc.u);
    if (rc) mt_calib_stats_free(st);
    return rc;
}
