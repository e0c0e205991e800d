/* plan.c — `quantize --target-bpw B` / `--target-size BYTES`: a storage type
 * for every tensor, chosen under the budget from measured errors.
 *
 * Units are the tensors a GGUF stores: per layer each attention projection,
 * each expert kind (gate, up, down: the experts of a layer share a stacked
 * tensor, hence a type) and the shared expert's matrices; token embeddings;
 * an untied lm_head. Candidate types per unit: q2_K, q3_K, q4_K, q5_K, q6_K,
 * q8_0 (rows that are not whole 256-blocks: q4_0, q5_0, q8_0) and, given
 * an importance matrix (quantize computes it from the calibration text, or
 * reads --imatrix), llama.cpp's i-quants of 256-weight blocks: iq1_s,
 * iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_xs — rounded by their
 * own quantizers with the matrix's importance vector, as they are written
 * (iq1_s, iq2_xxs and iq2_xs only where every matrix of the unit has one:
 * llama.cpp writes them only so; token embeddings, a lookup, have none).
 *
 * Error of unit u in type t: the diagonal of GPTQ's objective, i.e. the
 * expected squared output error per token if the inputs' columns were
 * uncorrelated,
 *     e(u, t) = Σ_matrices Σ_r Σ_j (W_rj − Ŵ_rj)² · D_j,
 * Ŵ = llama.cpp's reference quantizer of t (RTN; i-quants with the
 * importance matrix), D_j = Σ_tokens x_j² / N
 * over the calibration tokens (an expert's sum runs over the tokens routed
 * to it, so rare experts weigh less; w2's x is silu(x W1ᵀ)·(x W3ᵀ); token
 * embeddings weigh each row by its token's frequency), measured once on the
 * original model over the first ≤ 4096 calibration tokens. With
 * plan_windows > 0 (the default) each unit's errors are then scaled to the
 * KL it adds at the model's output (probe_scale below), so that units of
 * different kinds compare by what the output feels. Candidates that another
 * one beats in both bytes and error are then dropped (the greedy would
 * never take them; an i-quant and a K-quant of equal size keep the better).
 *
 * Choice: every unit starts at its smallest type; then, repeatedly, the
 * upgrade (of any unit, to any larger type of it) with the largest error
 * reduction per added byte that still fits the budget is applied, until
 * none fits. On the convex hull of each unit's (bytes, error) points this
 * greedy is optimal up to the one upgrade that did not fit (the classic
 * bound for the multiple-choice knapsack's LP relaxation). */
#include "quant_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLAN_TOKENS 4096
#define MAX_CAND 14

typedef struct {
    int layer, kind;        /* kind: K_*, or -1 embeddings, -2 lm_head        */
    mt_mat **mats;          /* [n] the matrices of the unit (experts of a kind) */
    double **d;             /* [n] column weights per matrix (NULL: rows weighted by rw) */
    int n;
    int64_t rows, cols;     /* of one matrix                                  */
    const float **qw;       /* [n] importance per column (imatrix) or NULL   */
    int ncand, cur;
    int probe;              /* candidate probe_scale measures: the smallest
                               K-quant (or legacy) type                       */
    int cand[MAX_CAND];
    uint64_t bytes[MAX_CAND];
    double err[MAX_CAND];
} unit_t;

/* A unit of n matrices (any number of experts). */
static int unit_alloc(unit_t *x, int n) {
    x->n = n;
    x->mats = calloc((size_t)n, sizeof *x->mats);
    x->d = calloc((size_t)n, sizeof *x->d);
    x->qw = calloc((size_t)n, sizeof *x->qw);
    return x->mats && x->d && x->qw ? MT_OK : mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
}

static void unit_free(unit_t *x) {
    for (int e = 0; x->d && e < x->n; e++) free(x->d[e]);
    free(x->d);
    free(x->qw);
    free(x->mats);
}

static void col_moments(const mt_calib_rows *x, double norm, double *d) {
    for (int64_t j = 0; j < x->cols; j++) d[j] = 0;
    for (int b = 0; b < x->nblk; b++) {
        const int64_t nr = mt_calib_rows_in(x, b);
        for (int64_t r = 0; r < nr; r++) {
            const float *v = x->blk[b] + r * x->cols;
            for (int64_t j = 0; j < x->cols; j++) d[j] += (double)v[j] * v[j];
        }
    }
    for (int64_t j = 0; j < x->cols; j++) d[j] /= norm;
}

/* Weighted squared error of RTN in type t on matrix w: column weights d, or
 * row weights rw when d is NULL; qw: the importance vector the type's
 * quantizer takes (i-quants), or NULL. */
static int rtn_err(const mt_mat *w, int t, const double *d, const double *rw, const float *qw, double *out) {
    const int64_t cols = w->cols;
    uint64_t rb;
    int rc = mt_dtype_nbytes((mt_dtype)t, (uint64_t)cols, &rb);
    if (rc) return rc;
    float *x = malloc((size_t)cols * sizeof *x), *y = malloc((size_t)cols * sizeof *y);
    uint8_t *q = malloc((size_t)rb);
    double e = 0;
    if (!x || !y || !q) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < w->rows; r++) {
        if ((rc = mt_row_to_f32(w->dtype, (const uint8_t *)w->data + r * w->row_stride, x, cols))) goto done;
        if ((rc = mt_row_from_f32_w((mt_dtype)t, x, q, cols, qw))) goto done;
        if ((rc = mt_row_to_f32((mt_dtype)t, q, y, cols))) goto done;
        double er = 0;
        for (int64_t j = 0; j < cols; j++) {
            const double dd = (double)x[j] - y[j];
            er += dd * dd * (d ? d[j] : 1.0);
        }
        e += d ? er : er * rw[r];
    }
    *out = e;
done:
    free(x);
    free(y);
    free(q);
    return rc;
}

/* The i-quants llama.cpp writes only with an importance matrix. */
static int iq_needs_im(int t) { return t == MT_DT_IQ1_S || t == MT_DT_IQ2_XXS || t == MT_DT_IQ2_XS; }

/* The unit's candidate types by size (i-quants when iq), cand[probe] the
 * smallest K-quant/legacy type. */
static void candidates(unit_t *u, int iq) {
    static const mt_dtype k[] = {MT_DT_Q2_K, MT_DT_Q3_K, MT_DT_Q4_K, MT_DT_Q5_K, MT_DT_Q6_K, MT_DT_Q8_0};
    static const mt_dtype leg[] = {MT_DT_Q4_0, MT_DT_Q5_0, MT_DT_Q8_0};
    static const mt_dtype iqs[] = {MT_DT_IQ1_S, MT_DT_IQ1_M, MT_DT_IQ2_XXS, MT_DT_IQ2_XS,
                                   MT_DT_IQ2_S, MT_DT_IQ3_XXS, MT_DT_IQ3_S, MT_DT_IQ4_XS};
    const int whole = u->cols % MT_QK_K == 0;
    const mt_dtype *c = whole ? k : leg;
    int all_qw = 1;
    for (int e = 0; e < u->n; e++) all_qw &= u->qw[e] != NULL;
    u->ncand = 0;
    for (int i = 0; i < (whole ? 6 : 3); i++) u->cand[u->ncand++] = c[i];
    for (int i = 0; iq && whole && i < 8; i++)
        if (!iq_needs_im(iqs[i]) || all_qw) u->cand[u->ncand++] = iqs[i];
    for (int i = 0; i < u->ncand; i++) {
        uint64_t b = 0;
        mt_dtype_nbytes((mt_dtype)u->cand[i], (uint64_t)(u->rows * u->cols), &b);
        u->bytes[i] = b * (uint64_t)u->n;
    }
    /* by bytes (insertion sort; stable, so a K-quant stays before an
     * i-quant of its size) */
    for (int i = 1; i < u->ncand; i++)
        for (int j = i; j > 0 && u->bytes[j] < u->bytes[j - 1]; j--) {
            const int t = u->cand[j];
            const uint64_t b = u->bytes[j];
            u->cand[j] = u->cand[j - 1], u->bytes[j] = u->bytes[j - 1];
            u->cand[j - 1] = t, u->bytes[j - 1] = b;
        }
    for (u->probe = 0; u->cand[u->probe] != (int)c[0]; u->probe++) {}
}

/* The errors of the unit's candidates. */
static int unit_errors(unit_t *x, const double *rw) {
    for (int i = 0; i < x->ncand; i++) {
        const mt_dtype_info *di = mt_dtype_get((mt_dtype)x->cand[i]);
        const int weighted = di && !di->blk && di->from_f32_w; /* i-quants: written with the imatrix */
        x->err[i] = 0;
        for (int e = 0; e < x->n; e++) {
            double er = 0;
            int rc = rtn_err(x->mats[e], x->cand[i], x->d[e], rw, weighted ? x->qw[e] : NULL, &er);
            if (rc) return rc;
            x->err[i] += er;
        }
    }
    return MT_OK;
}

/* Drops the candidates another beats (no more bytes, less error; equal:
 * the earlier one stays); cand[0] stays the smallest. */
static void prune(unit_t *x) {
    int n = 0;
    for (int i = 0; i < x->ncand; i++) {
        int beaten = 0;
        for (int j = 0; j < x->ncand && !beaten; j++)
            beaten = j != i && x->bytes[j] <= x->bytes[i] && x->err[j] <= x->err[i] &&
                     (x->bytes[j] < x->bytes[i] || x->err[j] < x->err[i] || j < i);
        if (beaten) continue;
        x->cand[n] = x->cand[i], x->bytes[n] = x->bytes[i], x->err[n] = x->err[i];
        n++;
    }
    x->ncand = n;
}

/* ---- end-to-end sensitivity -------------------------------------------------
 * The proxy above is each tensor's own output error; what the budget should
 * spend on is the error at the model's output. A tensor's KL at the output
 * grows, to first order, in proportion to its own squared output error
 * (both are quadratic in the weight error), with a factor that depends on
 * where the tensor sits (attn_v and ffn_down feed the residual stream
 * directly, attn_q/attn_k only through the softmax). So each unit's factor
 * is measured once: the unit alone is put in its smallest type (weights
 * rounded and decoded back, everything else as stored), the mean per-token
 * KL(original ‖ changed) of the next-token distributions over the first
 * `windows` calibration windows is taken, and every error of the unit is
 * scaled by KL / error at that type. The greedy then ranks upgrades by KL
 * saved per byte. One forward pass of those windows per unit, started at
 * the unit's own layer from the original model's residual stream there
 * (mt_ctx_forward_from: the layers before it are unchanged), so a unit
 * costs (n_layers − layer) / n_layers of a whole pass. */
typedef struct {
    mt_ctx *ctx;
    float *base; /* log-probabilities of the original model, (nwin·window, vocab) */
    float *stream; /* residual stream after each layer, (nwin, n_layers, window, hidden) */
    int n_layers, hidden, cap_win;
    float *lg;   /* (window, vocab) scratch */
    double *lp;  /* (vocab) scratch */
    int nwin, window, vocab;
    const int32_t *ids;
} probe_t;

static void log_softmax(const float *z, int n, double *out) {
    double mx = z[0], s = 0;
    for (int i = 1; i < n; i++) mx = z[i] > mx ? z[i] : mx;
    for (int i = 0; i < n; i++) s += exp((double)z[i] - mx);
    const double ls = mx + log(s);
    for (int i = 0; i < n; i++) out[i] = (double)z[i] - ls;
}

static float *probe_stream(probe_t *pr, int wi, int l) {
    return pr->stream + (((size_t)wi * pr->n_layers + l) * pr->window) * pr->hidden;
}

static int on_layer_out(void *user, const mt_capture_event *ev) {
    probe_t *pr = user;
    if (ev->kind == MT_CAP_LAYER_OUT && ev->layer >= 0 && ev->layer < pr->n_layers && ev->n_rows == pr->window)
        memcpy(probe_stream(pr, pr->cap_win, ev->layer), ev->data, (size_t)pr->window * pr->hidden * sizeof(float));
    return 0;
}

/* Mean KL(base ‖ current model) per token over the probe windows, the
 * forward started at `layer` from the base's residual stream (layers
 * before it are unchanged; 0: from the tokens); with kl NULL, records the
 * current model as the base, and its stream. */
static int probe_run(probe_t *pr, int layer, double *kl) {
    double sum = 0;
    for (int wi = 0; wi < pr->nwin; wi++) {
        mt_ctx_reset(pr->ctx);
        pr->cap_win = wi;
        if (!kl) mt_ctx_set_capture(pr->ctx, on_layer_out, pr, MT_CAP_LAYER_OUT);
        int rc = layer > 0 ? mt_ctx_forward_from(pr->ctx, layer, probe_stream(pr, wi, layer - 1), pr->window, pr->lg, 1)
                           : mt_ctx_forward(pr->ctx, pr->ids + (size_t)wi * pr->window, pr->window, pr->lg, 1);
        if (!kl) mt_ctx_set_capture(pr->ctx, NULL, NULL, 0);
        if (rc) return rc;
        for (int t = 0; t < pr->window; t++) {
            float *b = pr->base + ((size_t)wi * pr->window + t) * pr->vocab;
            log_softmax(pr->lg + (size_t)t * pr->vocab, pr->vocab, pr->lp);
            if (!kl) {
                for (int v = 0; v < pr->vocab; v++) b[v] = (float)pr->lp[v];
                continue;
            }
            double k = 0;
            for (int v = 0; v < pr->vocab; v++) k += exp((double)b[v]) * ((double)b[v] - pr->lp[v]);
            sum += k;
        }
    }
    if (kl) *kl = sum / ((double)pr->nwin * pr->window);
    return MT_OK;
}

/* Puts matrix *w in type t and back, as f32 in a new buffer (*buf); the
 * caller restores *w from its saved copy and frees *buf. */
static int round_trip(mt_mat *w, int t, float **buf) {
    const int64_t cols = w->cols;
    uint64_t rb;
    int rc = mt_dtype_nbytes((mt_dtype)t, (uint64_t)cols, &rb);
    if (rc) return rc;
    float *out = malloc((size_t)(w->rows * cols) * sizeof *out), *x = malloc((size_t)cols * sizeof *x);
    uint8_t *q = malloc((size_t)rb);
    if (!out || !x || !q) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < w->rows && !rc; r++) {
        if ((rc = mt_row_to_f32(w->dtype, (const uint8_t *)w->data + r * w->row_stride, x, cols))) break;
        if ((rc = mt_row_from_f32((mt_dtype)t, x, q, cols))) break;
        rc = mt_row_to_f32((mt_dtype)t, q, out + r * cols, cols);
    }
done:
    free(x);
    free(q);
    if (rc) {
        free(out);
        return rc;
    }
    *buf = out;
    return MT_OK;
}

static int probe_scale(unit_t *u, int nu, mt_model *m, mt_weights *w, int tied, const mt_quant_opts *o,
                       const int32_t *ids, size_t n_ids, int window, int windows) {
    const mt_config *c = mt_model_config(m);
    probe_t pr;
    memset(&pr, 0, sizeof pr);
    pr.nwin = (int)(n_ids / (size_t)window) < windows ? (int)(n_ids / (size_t)window) : windows;
    pr.window = window;
    pr.vocab = c->vocab;
    pr.ids = ids;
    pr.n_layers = c->n_layers;
    pr.hidden = c->hidden;
    if (pr.nwin < 1) return MT_OK;
    int rc = mt_ctx_init(&pr.ctx, m, window, window);
    if (rc) return rc;
    pr.base = malloc((size_t)pr.nwin * window * pr.vocab * sizeof(float));
    pr.lg = malloc((size_t)window * pr.vocab * sizeof(float));
    pr.lp = malloc((size_t)pr.vocab * sizeof(double));
    pr.stream = malloc((size_t)pr.nwin * pr.n_layers * window * pr.hidden * sizeof(float));
    if (!pr.base || !pr.lg || !pr.lp || !pr.stream) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory (%d probe windows of %d tokens)", pr.nwin, window);
        goto done;
    }
    if ((rc = probe_run(&pr, 0, NULL))) goto done;
    for (int i = 0; i < nu && !rc; i++) {
        unit_t *x = &u[i];
        if (o->progress) {
            char what[80];
            snprintf(what, sizeof what, "quantize: planning types; measuring tensor %d/%d at the output", i + 1, nu);
            o->progress(o->progress_user, what, (uint64_t)i, (uint64_t)nu);
        }
        if (!(x->err[x->probe] > 0)) continue;
        /* the unit's matrices (a tied embedding table is the lm_head too) */
        mt_mat **mats = malloc((size_t)(x->n + 1) * sizeof *mats), *saved = malloc((size_t)(x->n + 1) * sizeof *saved);
        float **bufs = calloc((size_t)(x->n + 1), sizeof *bufs);
        if (!mats || !saved || !bufs) {
            free(mats), free(saved), free(bufs);
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            break;
        }
        int n = x->n;
        for (int e = 0; e < n; e++) mats[e] = x->mats[e];
        if (x->kind == -1 && tied && w->lm_head.data == w->tok_embd.data) mats[n++] = &w->lm_head;
        int done_n = 0;
        for (int e = 0; e < n && !rc; e++) {
            if (e == x->n) { /* the tied lm_head reads the embeddings' new buffer */
                saved[e] = *mats[e];
                *mats[e] = *mats[0];
                done_n++;
                continue;
            }
            if ((rc = round_trip(mats[e], x->cand[x->probe], &bufs[e]))) break;
            saved[e] = *mats[e];
            mats[e]->dtype = MT_DT_F32;
            mats[e]->data = bufs[e];
            mats[e]->row_stride = (uint64_t)mats[e]->cols * sizeof(float);
            done_n++;
        }
        double kl = 0;
        /* a layer's tensors change nothing before it; lm_head nothing before the final norm */
        const int from = x->kind >= 0 ? x->layer : x->kind == -2 ? pr.n_layers : 0;
        if (!rc) rc = probe_run(&pr, from, &kl);
        for (int e = 0; e < done_n; e++) *mats[e] = saved[e];
        for (int e = 0; e < n; e++) free(bufs[e]);
        free(mats), free(saved), free(bufs);
        if (rc) break;
        const double f = kl / x->err[x->probe];
        for (int j = 0; j < x->ncand; j++) x->err[j] *= f;
    }
done:
    mt_ctx_free(pr.ctx);
    free(pr.base);
    free(pr.lg);
    free(pr.lp);
    free(pr.stream);
    return rc;
}

void mt_quant_plan_free(mt_quant_plan *p) {
    if (!p) return;
    free(p->type);
    memset(p, 0, sizeof *p);
}

static double mat_src_bytes(const mt_mat *w) {
    uint64_t b = 0;
    return mt_dtype_nbytes(w->dtype, (uint64_t)(w->rows * w->cols), &b) ? 0 : (double)b;
}

int mt_quant_plan_make(mt_quant_plan *p, mt_model *m, const mt_quant_opts *o, const mt_imatrix *im,
                       const int32_t *ids, size_t n_ids, int window) {
    const mt_config *c = mt_model_config(m);
    mt_weights *w = (mt_weights *)mt_model_weights(m);
    const int L = c->n_layers, tied = c->tie_embeddings || w->lm_head.data == w->tok_embd.data;
    unit_t *u = calloc((size_t)L * K_COUNT + 2, sizeof *u);
    double *tokfreq = NULL;
    mt_calib_capture cc;
    mt_calib_rows mid, fx;
    int nu = 0, rc = MT_OK;
    memset(&cc, 0, sizeof cc);
    mt_calib_rows_init(&mid, 1);
    mt_calib_rows_init(&fx, c->hidden);
    memset(p, 0, sizeof *p);
    p->n_layers = L;
    p->type = malloc((size_t)L * K_COUNT * sizeof *p->type);
    if (!u || !p->type) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (int i = 0; i < L * K_COUNT; i++) p->type[i] = -1;
    size_t n_plan = n_ids < PLAN_TOKENS ? n_ids : PLAN_TOKENS;
    n_plan = n_plan / (size_t)window * (size_t)window;
    if (n_plan == 0) {
        rc = mt_seterr(MT_ERR_ARG, "quantize: --target-bpw/--target-size need at least %d calibration tokens", window);
        goto done;
    }
    /* per layer: the units, their column weights, their errors per type */
    for (int l = 0; l < L; l++) {
        mt_layer_weights *Lw = &w->layers[l];
        const int ne = Lw->n_experts > 0 ? Lw->n_experts : 1;
        if (o->progress) {
            char what[64];
            snprintf(what, sizeof what, "quantize: planning types; layer %d/%d", l + 1, L);
            o->progress(o->progress_user, what, (uint64_t)l, (uint64_t)L + 1);
        }
        if ((rc = mt_calib_capture_layer(m, l, ids, n_plan, window, 1, UINT64_MAX, &cc))) goto done;
        const double N = (double)(cc.n_tokens ? cc.n_tokens : 1);
        for (int k = 0; k < K_COUNT; k++) {
            const int shared = k >= K_SW1, experts = k >= K_W1 && k <= K_W2;
            if (shared && !Lw->sh_w1.data) continue;
            unit_t *x = &u[nu];
            x->layer = l;
            x->kind = k;
            if ((rc = unit_alloc(x, experts ? ne : 1))) goto done;
            for (int e = 0; e < x->n; e++) {
                mt_mat *mat = mt_quant_layer_mat(Lw, k, e);
                x->mats[e] = mat;
                x->qw[e] = im ? mt_imatrix_get(im, l, k, e) : NULL;
                x->rows = mat->rows;
                x->cols = mat->cols;
                if (!(x->d[e] = malloc((size_t)mat->cols * sizeof(double)))) {
                    rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
                    goto done;
                }
                const mt_calib_rows *in = k <= K_O ? (k == K_O ? &cc.attn_out : &cc.attn)
                                          : shared ? &cc.ffn_in
                                                   : &cc.x[e];
                if (k == K_W2 || k == K_SW2) {
                    mt_calib_rows_free(&mid);
                    if ((rc = mt_calib_mid(in, shared ? &Lw->sh_w1 : &Lw->w1[e], shared ? &Lw->sh_w3 : &Lw->w3[e], &mid)))
                        goto done;
                    in = &mid;
                }
                col_moments(in, N, x->d[e]);
            }
            if (x->cols % 32) {
                rc = mt_seterr(MT_ERR_ARG, "quantize: layer %d has a matrix of %lld columns, not whole 32-blocks; "
                               "--target-bpw needs block types", l, (long long)x->cols);
                goto done;
            }
            candidates(x, im != NULL);
            if ((rc = unit_errors(x, NULL))) goto done;
            nu++;
        }
        mt_calib_capture_free(&cc);
    }
    /* token embeddings: rows weighted by token frequency; an untied lm_head
     * by its inputs, the final-norm outputs */
    if (!(tokfreq = calloc((size_t)w->tok_embd.rows, sizeof *tokfreq))) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_plan; i++)
        if (ids[i] >= 0 && ids[i] < w->tok_embd.rows) tokfreq[ids[i]] += 1.0 / (double)n_plan;
    for (int h = 0; h < (tied ? 1 : 2); h++) {
        unit_t *x = &u[nu];
        mt_mat *mat = h ? &w->lm_head : &w->tok_embd;
        x->kind = h ? -2 : -1;
        if ((rc = unit_alloc(x, 1))) goto done;
        x->mats[0] = mat;
        x->qw[0] = h && im ? mt_imatrix_get(im, -1, 0, 0) : NULL;
        x->rows = mat->rows;
        x->cols = mat->cols;
        if (x->cols % 32) {
            rc = mt_seterr(MT_ERR_ARG, "quantize: embeddings of %lld columns are not whole 32-blocks", (long long)x->cols);
            goto done;
        }
        if (h) {
            if ((rc = mt_calib_capture_final(m, ids, n_plan, window, &fx))) goto done;
            if (!(x->d[0] = malloc((size_t)mat->cols * sizeof(double)))) {
                rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
                goto done;
            }
            col_moments(&fx, (double)n_plan, x->d[0]);
        }
        candidates(x, im != NULL);
        if ((rc = unit_errors(x, tokfreq))) goto done;
        nu++;
    }
    if (o->plan_windows > 0 && (rc = probe_scale(u, nu, m, w, tied, o, ids, n_plan, window, o->plan_windows)))
        goto done;
    for (int i = 0; i < nu; i++) prune(&u[i]);
    /* budget */
    uint64_t params = 0, bytes = 0, budget;
    double src_units = 0;
    for (int i = 0; i < nu; i++) {
        params += (uint64_t)(u[i].rows * u[i].cols) * (uint64_t)u[i].n;
        bytes += u[i].bytes[0];
        for (int e = 0; e < u[i].n; e++) src_units += mat_src_bytes(u[i].mats[e]);
    }
    if (o->target_bpw > 0) {
        budget = (uint64_t)floor(o->target_bpw * (double)params / 8.0);
    } else {
        /* everything else as stored, the metadata, alignment and provenance */
        const mt_gguf *g = mt_ckpt_gguf(mt_model_ckpt(m));
        double all = 0, meta = 0;
        size_t nt = g ? mt_gguf_tensor_count(g) : 0;
        for (size_t i = 0; i < nt; i++) {
            const mt_tensor *t = mt_gguf_tensor(g, i);
            all += (double)t->nbytes;
            if (i == 0 || (double)t->file_offset < meta) meta = (double)t->file_offset;
        }
        if (!g) { /* a Hugging Face source: the GGUF convert makes of it, which the output is */
            mt_gguf_export *x = NULL;
            uint64_t tb = 0, hb = 0;
            if (!(rc = mt_quant_export_open(&x, mt_model_ckpt(m)))) rc = mt_gguf_export_sizes(x, &tb, &hb);
            nt = x ? mt_gguf_export_count(x) : 0;
            mt_gguf_export_free(x);
            if (rc) goto done;
            all = (double)tb;
            meta = (double)hb;
        }
        const double fixed = all - src_units + meta + 32.0 * (double)nt + 16384.0;
        budget = (double)o->target_bytes > fixed ? (uint64_t)((double)o->target_bytes - fixed) : 0;
    }
    if (bytes > budget) {
        if (o->target_bpw > 0)
            rc = mt_seterr(MT_ERR_ARG, "quantize: --target-bpw %g is below the smallest choice (%.3f bits per weight, "
                           "every tensor in its smallest type%s)", o->target_bpw, 8.0 * (double)bytes / (double)params,
                           im ? "" : "; --plan-iquants adds llama.cpp's i-quants");
        else
            rc = mt_seterr(MT_ERR_ARG, "quantize: --target-size %llu is below the smallest choice (about %llu bytes, "
                           "every tensor in its smallest type%s)", (unsigned long long)o->target_bytes,
                           (unsigned long long)(o->target_bytes - budget + bytes),
                           im ? "" : "; --plan-iquants adds llama.cpp's i-quants");
        goto done;
    }
    for (;;) { /* the best error reduction per byte that fits */
        int bu = -1, bj = -1;
        double best = 0;
        for (int i = 0; i < nu; i++)
            for (int j = u[i].cur + 1; j < u[i].ncand; j++) {
                const uint64_t add = u[i].bytes[j] - u[i].bytes[u[i].cur];
                const double gain = u[i].err[u[i].cur] - u[i].err[j];
                if (bytes + add > budget || !(gain > 0)) continue;
                const double r = gain / (double)add;
                if (r > best) {
                    best = r;
                    bu = i;
                    bj = j;
                }
            }
        if (bu < 0) break;
        bytes += u[bu].bytes[bj] - u[bu].bytes[u[bu].cur];
        u[bu].cur = bj;
    }
    double wt[MT_DT_COUNT] = {0};
    for (int i = 0; i < nu; i++) {
        const int t = u[i].cand[u[i].cur];
        wt[t] += (double)(u[i].rows * u[i].cols) * u[i].n;
        if (u[i].kind == -1) p->embd = t;
        else if (u[i].kind == -2) p->head = t;
        else p->type[u[i].layer * K_COUNT + u[i].kind] = t;
    }
    if (tied) p->head = -1;
    p->dominant = 0;
    for (int t = 1; t < MT_DT_COUNT; t++)
        if (wt[t] > wt[p->dominant]) p->dominant = t;
    p->params = params;
    p->bytes = bytes;
done:
    for (int i = 0; u && i < nu + 1 && i < L * K_COUNT + 2; i++)
        unit_free(&u[i]);
    free(u);
    free(tokfreq);
    mt_calib_capture_free(&cc);
    mt_calib_rows_free(&mid);
    mt_calib_rows_free(&fx);
    if (rc) mt_quant_plan_free(p);
    return rc;
}
