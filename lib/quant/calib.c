/* calib.c — calibration inputs for GPTQ, gathered through the runtime's
 * capture hooks one layer at a time: calibration windows run through layers
 * 0..l (the forward is stopped after layer l) and the hook keeps, as f32
 * rows, the attention input and output (o_proj's input) of every token and
 * each expert's routed input rows (capped per expert, first rows first);
 * lm_head's inputs, the final-norm outputs, come from one pass through the
 * whole model. Hessians H = Σ x xᵀ (f64) are
 * built from those rows one matrix at a time, and an expert's intermediate
 * activations silu(W1 x)·(W3 x), which w2 multiplies, are computed from its
 * rows with the layer's W1/W3 when its w2 is quantized: the rows of a layer
 * are O(tokens · hidden), and only the Hessians of the matrices being
 * quantized exist at once. */
#include "quant_impl.h"

#include "backend.h"

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
    if (!tok)
        return mt_seterr(MT_ERR_ARG, "%s: no tokenizer to read the calibration text with: %s", path,
                         mt_model_tokenizer_error(m));
    /* Only the tokens needed are read (streamed): a huge text costs nothing more. */
    size_t cnt = 0;
    int32_t *buf = NULL;
    int rc = mt_tok_encode_file(tok, path, need > 0 ? (size_t)need : 1, &buf, &cnt, NULL);
    if (rc) return rc;
    if (cnt < (size_t)need) {
        free(buf);
        return mt_seterr(MT_ERR_ARG,
                         "%s: calibration text has %zu tokens, %d needed (lower --calib-tokens or give a longer text)",
                         path, cnt, need);
    }
    *ids = buf;
    *n = cnt;
    return MT_OK;
}

/* ---- rows ------------------------------------------------------------------ */
void mt_calib_rows_init(mt_calib_rows *x, int64_t cols) {
    memset(x, 0, sizeof *x);
    x->cols = cols;
}

void mt_calib_rows_free(mt_calib_rows *x) {
    if (!x) return;
    for (int i = 0; i < x->nblk; i++) free(x->blk[i]);
    free(x->blk);
    int64_t cols = x->cols;
    mt_calib_rows_init(x, cols);
}

int mt_calib_rows_add(mt_calib_rows *x, const float *rows, int64_t m) {
    const int64_t B = MT_CALIB_BLOCK;
    while (m > 0) {
        int64_t in_last = x->n - (int64_t)(x->nblk - 1) * B;
        if (x->nblk == 0 || in_last == B) {
            if (x->nblk == x->blk_cap) {
                int nc = x->blk_cap ? 2 * x->blk_cap : 8;
                float **nb = realloc(x->blk, (size_t)nc * sizeof *nb);
                if (!nb) return mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for input rows");
                x->blk = nb;
                x->blk_cap = nc;
            }
            if (!(x->blk[x->nblk] = malloc((size_t)(B * x->cols) * sizeof(float))))
                return mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for input rows");
            x->nblk++;
            in_last = 0;
        }
        const int64_t k = m < B - in_last ? m : B - in_last;
        memcpy(x->blk[x->nblk - 1] + in_last * x->cols, rows, (size_t)(k * x->cols) * sizeof(float));
        x->n += k;
        rows += k * x->cols;
        m -= k;
    }
    return MT_OK;
}

int mt_calib_hessian(const mt_calib_rows *x, double *H) {
    const int64_t n = x->cols;
    mt_backend *be = mt_backend_default();
    double *xd = malloc((size_t)(MT_CALIB_BLOCK * n) * sizeof *xd);
    if (!xd) return mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for a Hessian");
    memset(H, 0, (size_t)(n * n) * sizeof *H);
    for (int b = 0; b < x->nblk; b++) {
        const int64_t m = mt_calib_rows_in(x, b);
        const float *X = x->blk[b];
        for (int64_t i = 0; i < m * n; i++) xd[i] = X[i];
        be->ops->syrk_f64(be, (int)n, (int)m, 1.0, xd, (int)n, 1.0, H, (int)n);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++) H[i * n + j] = H[j * n + i];
    free(xd);
    return MT_OK;
}

/* Rows r0..r0+k of w as f32 into dst (k, cols). */
static int rows_f32(const mt_mat *w, int64_t r0, int64_t k, float *dst) {
    int rc;
    for (int64_t r = 0; r < k; r++)
        if ((rc = mt_row_to_f32(w->dtype, (const uint8_t *)w->data + (r0 + r) * w->row_stride, dst + r * w->cols, w->cols)))
            return rc;
    return MT_OK;
}

/* Rows of W1/W3 converted to f32 at a time (each side). */
#define MID_CHUNK 256

int mt_calib_mid(const mt_calib_rows *x, const mt_mat *w1, const mt_mat *w3, mt_calib_rows *y) {
    const int64_t Hd = x->cols, F = w1->rows, B = MT_CALIB_BLOCK;
    mt_backend *be = mt_backend_default();
    mt_calib_rows_init(y, F);
    if (w1->cols != Hd || w3->cols != Hd || w3->rows != F)
        return mt_seterr(MT_ERR_INTERNAL, "calibration: expert shapes do not match its inputs");
    int rc = MT_OK;
    /* y gets x's block structure; every block is filled chunk of columns by chunk. */
    y->blk = calloc((size_t)(x->nblk > 0 ? x->nblk : 1), sizeof *y->blk);
    float *w13 = malloc((size_t)(2 * MID_CHUNK * Hd) * sizeof *w13);
    float *gu = malloc((size_t)(2 * B * MID_CHUNK) * sizeof *gu);
    if (!y->blk || !w13 || !gu) {
        rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for intermediate activations");
        goto done;
    }
    y->blk_cap = x->nblk > 0 ? x->nblk : 1;
    for (int b = 0; b < x->nblk; b++) {
        if (!(y->blk[b] = malloc((size_t)(B * F) * sizeof(float)))) {
            rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for intermediate activations");
            goto done;
        }
        y->nblk++;
    }
    y->n = x->n;
    for (int64_t r0 = 0; r0 < F; r0 += MID_CHUNK) {
        const int64_t k = F - r0 < MID_CHUNK ? F - r0 : MID_CHUNK;
        if ((rc = rows_f32(w1, r0, k, w13)) || (rc = rows_f32(w3, r0, k, w13 + k * Hd))) goto done;
        for (int b = 0; b < x->nblk; b++) {
            const int64_t m = mt_calib_rows_in(x, b);
            /* (m, 2k): gate pre-activations then up projections of these rows */
            be->ops->gemm_f32(be, 0, 1, (int)m, (int)(2 * k), (int)Hd, 1.0f, x->blk[b], (int)Hd, w13, (int)Hd, 0.0f,
                              gu, (int)(2 * k));
            float *yb = y->blk[b];
            for (int64_t i = 0; i < m; i++) {
                const float *g = gu + i * 2 * k, *u = g + k;
                float *yr = yb + i * F + r0;
                for (int64_t j = 0; j < k; j++) yr[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
            }
        }
    }
done:
    free(w13);
    free(gu);
    if (rc) mt_calib_rows_free(y);
    return rc;
}

/* Rows of W per step of the output error. */
#define ERR_CHUNK 128

int mt_calib_output_err(const mt_mat *w, const float *Wq, const mt_calib_rows *x, double *err, double *ref) {
    const int64_t rows = w->rows, cols = w->cols, B = MT_CALIB_BLOCK;
    mt_backend *be = mt_backend_default();
    *err = *ref = 0;
    if (x->cols != cols) return mt_seterr(MT_ERR_INTERNAL, "calibration: matrix width does not match its inputs");
    /* [D; W] for ERR_CHUNK rows, D = W − Ŵ, times each block of xᵀ. */
    float *dw = malloc((size_t)(2 * ERR_CHUNK * cols) * sizeof *dw);
    float *p = malloc((size_t)(2 * ERR_CHUNK * B) * sizeof *p);
    int rc = MT_OK;
    if (!dw || !p) {
        rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory");
        goto done;
    }
    double se = 0, sr = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += ERR_CHUNK) {
        const int64_t k = rows - r0 < ERR_CHUNK ? rows - r0 : ERR_CHUNK;
        float *D = dw, *W = dw + k * cols;
        if ((rc = rows_f32(w, r0, k, W))) goto done;
        for (int64_t i = 0; i < k * cols; i++) D[i] = W[i] - Wq[r0 * cols + i];
        for (int b = 0; b < x->nblk; b++) {
            const int64_t m = mt_calib_rows_in(x, b);
            be->ops->gemm_f32(be, 0, 1, (int)(2 * k), (int)m, (int)cols, 1.0f, dw, (int)cols, x->blk[b], (int)cols,
                              0.0f, p, (int)m);
            for (int64_t i = 0; i < k * m; i++) se += (double)p[i] * p[i];
            for (int64_t i = k * m; i < 2 * k * m; i++) sr += (double)p[i] * p[i];
        }
    }
    *err = se;
    *ref = sr;
done:
    free(dw);
    free(p);
    return rc;
}

/* ---- capture ----------------------------------------------------------------- */
void mt_calib_capture_free(mt_calib_capture *cc) {
    if (!cc) return;
    mt_calib_rows_free(&cc->attn);
    mt_calib_rows_free(&cc->attn_out);
    mt_calib_rows_free(&cc->ffn_in);
    for (int e = 0; cc->x && e < cc->n_exp; e++) mt_calib_rows_free(&cc->x[e]);
    free(cc->x);
    memset(cc, 0, sizeof *cc);
}

typedef struct {
    int layer, dense, with_attn, rc;
    int shared; /* the layer has a shared expert: keep every FFN input */
    uint64_t cap;
    mt_calib_capture *cc;
} hook_ctx;

static int add_rows(hook_ctx *hc, mt_calib_rows *x, const float *X, int64_t m, uint64_t cap) {
    if ((uint64_t)x->n >= cap) return 0;
    if ((uint64_t)m > cap - (uint64_t)x->n) m = (int64_t)(cap - (uint64_t)x->n);
    if ((hc->rc = mt_calib_rows_add(x, X, m))) return hc->rc;
    return 0;
}

static int hook(void *user, const mt_capture_event *ev) {
    hook_ctx *hc = user;
    mt_calib_capture *cc = hc->cc;
    if (ev->layer != hc->layer) return 0;
    switch (ev->kind) {
    case MT_CAP_ATTN_IN:
        cc->n_tokens += (uint64_t)ev->n_rows;
        return hc->with_attn ? add_rows(hc, &cc->attn, ev->data, ev->n_rows, UINT64_MAX) : 0;
    case MT_CAP_ATTN_OUT:
        return hc->with_attn ? add_rows(hc, &cc->attn_out, ev->data, ev->n_rows, UINT64_MAX) : 0;
    case MT_CAP_FFN_IN:
        if (hc->shared && add_rows(hc, &cc->ffn_in, ev->data, ev->n_rows, UINT64_MAX)) return hc->rc;
        return hc->dense ? add_rows(hc, &cc->x[0], ev->data, ev->n_rows, hc->cap) : 0;
    case MT_CAP_EXPERT_IN:
        if (!hc->dense && ev->expert >= 0 && ev->expert < cc->n_exp)
            return add_rows(hc, &cc->x[ev->expert], ev->data, ev->n_rows, hc->cap);
        return 0;
    case MT_CAP_LAYER_OUT:
        return CALIB_STOP;
    default:
        return 0;
    }
}

int mt_calib_capture_layer(mt_model *m, int layer, const int32_t *ids, size_t n_ids, int window, int with_attn,
                           uint64_t cap, mt_calib_capture *cc) {
    const mt_config *c = mt_model_config(m);
    const mt_layer_weights *L = &mt_model_weights(m)->layers[layer];
    const int ne = L->n_experts > 0 ? L->n_experts : 1;
    memset(cc, 0, sizeof *cc);
    cc->n_exp = ne;
    cc->hidden = c->hidden;
    cc->ffn = c->ffn;
    mt_calib_rows_init(&cc->attn, c->hidden);
    mt_calib_rows_init(&cc->attn_out, (int64_t)c->n_heads * c->head_dim);
    mt_calib_rows_init(&cc->ffn_in, c->hidden);
    hook_ctx hc = {layer, L->n_experts == 0, with_attn, MT_OK, L->sh_w1.data != NULL, cap, cc};
    mt_ctx *ctx = NULL;
    int rc = MT_OK;
    if (!(cc->x = calloc((size_t)ne, sizeof *cc->x))) {
        rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for layer %d inputs", layer);
        goto done;
    }
    for (int e = 0; e < ne; e++) mt_calib_rows_init(&cc->x[e], c->hidden);
    if ((rc = mt_ctx_init(&ctx, m, window, window))) goto done;
    mt_ctx_set_capture(ctx, hook, &hc,
                       MT_CAP_ATTN_IN | MT_CAP_FFN_IN | MT_CAP_EXPERT_IN | MT_CAP_LAYER_OUT |
                           (with_attn ? (unsigned)MT_CAP_ATTN_OUT : 0u));
    for (size_t off = 0; off + (size_t)window <= n_ids; off += (size_t)window) {
        mt_ctx_reset(ctx);
        rc = mt_ctx_forward(ctx, ids + off, window, NULL, 0);
        if (hc.rc) {
            rc = hc.rc;
            goto done;
        }
        if (rc != CALIB_STOP) {
            if (rc == MT_OK) rc = mt_seterr(MT_ERR_INTERNAL, "calibration: layer %d was not reached", layer);
            goto done;
        }
        rc = MT_OK;
    }
done:
    mt_ctx_free(ctx);
    if (rc) mt_calib_capture_free(cc);
    return rc;
}

typedef struct {
    mt_calib_rows *x;
    int rc;
} final_ctx;

static int final_hook(void *user, const mt_capture_event *ev) {
    final_ctx *fc = user;
    if (ev->kind != MT_CAP_FINAL_NORM) return 0;
    return fc->rc = mt_calib_rows_add(fc->x, ev->data, ev->n_rows);
}

int mt_calib_capture_final(mt_model *m, const int32_t *ids, size_t n_ids, int window, mt_calib_rows *x) {
    mt_calib_rows_init(x, mt_model_config(m)->hidden);
    final_ctx fc = {x, MT_OK};
    mt_ctx *ctx = NULL;
    int rc = mt_ctx_init(&ctx, m, window, window);
    if (rc) return rc;
    mt_ctx_set_capture(ctx, final_hook, &fc, MT_CAP_FINAL_NORM);
    for (size_t off = 0; off + (size_t)window <= n_ids && !rc; off += (size_t)window) {
        mt_ctx_reset(ctx);
        rc = mt_ctx_forward(ctx, ids + off, window, NULL, 0);
        if (fc.rc) rc = fc.rc;
    }
    mt_ctx_free(ctx);
    if (rc) mt_calib_rows_free(x);
    return rc;
}

/* ---- all statistics of a layer at once ----------------------------------------- */
void mt_calib_stats_free(mt_calib_stats *st) {
    if (!st) return;
    free(st->h_attn);
    free(st->h_attn_out);
    for (int e = 0; e < st->n_exp; e++) {
        if (st->h_in) free(st->h_in[e]);
        if (st->h_mid) free(st->h_mid[e]);
    }
    free(st->h_in);
    free(st->h_mid);
    free(st->count);
    memset(st, 0, sizeof *st);
}

int mt_calib_layer(mt_model *m, int layer, const int32_t *ids, size_t n_ids, int window, int with_attn,
                   uint64_t cap, mt_calib_stats *st) {
    const mt_layer_weights *L = &mt_model_weights(m)->layers[layer];
    mt_calib_capture cc;
    memset(st, 0, sizeof *st);
    int rc = mt_calib_capture_layer(m, layer, ids, n_ids, window, with_attn, cap, &cc);
    if (rc) return rc;
    const int ne = cc.n_exp;
    const int64_t Hd = cc.hidden, F = cc.ffn;
    st->n_exp = ne;
    st->hidden = Hd;
    st->ffn = F;
    st->n_tokens = cc.n_tokens;
    st->q_dim = cc.attn_out.cols;
    st->h_in = calloc((size_t)ne, sizeof *st->h_in);
    st->h_mid = calloc((size_t)ne, sizeof *st->h_mid);
    st->count = calloc((size_t)ne, sizeof *st->count);
    if (with_attn) {
        st->h_attn = malloc((size_t)(Hd * Hd) * sizeof *st->h_attn);
        st->h_attn_out = malloc((size_t)(st->q_dim * st->q_dim) * sizeof *st->h_attn_out);
    }
    if (!st->h_in || !st->h_mid || !st->count || (with_attn && (!st->h_attn || !st->h_attn_out))) {
        rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for layer %d statistics", layer);
        goto done;
    }
    if (with_attn &&
        ((rc = mt_calib_hessian(&cc.attn, st->h_attn)) || (rc = mt_calib_hessian(&cc.attn_out, st->h_attn_out))))
        goto done;
    for (int e = 0; e < ne; e++) {
        st->count[e] = (uint64_t)cc.x[e].n;
        st->h_in[e] = malloc((size_t)(Hd * Hd) * sizeof(double));
        st->h_mid[e] = malloc((size_t)(F * F) * sizeof(double));
        if (!st->h_in[e] || !st->h_mid[e]) {
            rc = mt_seterr(MT_ERR_NOMEM, "calibration: out of memory for layer %d statistics", layer);
            goto done;
        }
        mt_calib_rows y;
        if ((rc = mt_calib_hessian(&cc.x[e], st->h_in[e])) ||
            (rc = mt_calib_mid(&cc.x[e], &L->w1[e], &L->w3[e], &y)))
            goto done;
        rc = mt_calib_hessian(&y, st->h_mid[e]);
        mt_calib_rows_free(&y);
        if (rc) goto done;
    }
done:
    mt_calib_capture_free(&cc);
    if (rc) mt_calib_stats_free(st);
    return rc;
}
