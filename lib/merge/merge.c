/* merge.c — `moetool merge`: calibration through the runtime's capture
 * hooks, per-layer grouping / alignment / averaging / router reduction, and
 * the streamed HF Mixtral output.
 *
 * Memory: the calibration pass keeps, for every layer, routing counts and
 * gate sums (E numbers) and a fixed-size sample of FFN inputs (S, H). The
 * merge then works one layer at a time: that layer's experts in f32
 * (3 E F H floats), their outputs on the sample (E, S, H) and one pair of
 * activation matrices (S, F) for alignment. The output is streamed by the HF
 * writer; nothing else of the model is copied (weights stay memory-mapped). */
#define _GNU_SOURCE
#include "merge_impl.h"

#include "backend.h"

#include "moetool/mt_arch.h"
#include "moetool/mt_runtime.h"
#include "moetool/mt_write.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static const char *const g_methods[MT_MERGE_METHOD_COUNT] = {"prune",   "average", "frequency", "hc-smoe",
                                                              "mc-smoe", "reap",    "reap-merge", "naee", "auto"};
static const char *const g_routers[MT_MERGE_ROUTER_COUNT] = {"anchor", "average", "fit", "alias"};

const char *mt_merge_method_name(int m) { return m >= 0 && m < MT_MERGE_METHOD_COUNT ? g_methods[m] : "?"; }
const char *mt_merge_router_name(int r) { return r >= 0 && r < MT_MERGE_ROUTER_COUNT ? g_routers[r] : "?"; }
int mt_merge_method_from_name(const char *s) {
    for (int i = 0; s && i < MT_MERGE_METHOD_COUNT; i++)
        if (!strcmp(s, g_methods[i])) return i;
    return -1;
}
int mt_merge_router_from_name(const char *s) {
    for (int i = 0; s && i < MT_MERGE_ROUTER_COUNT; i++)
        if (!strcmp(s, g_routers[i])) return i;
    return -1;
}

void mt_merge_opts_default(mt_merge_opts *o) {
    memset(o, 0, sizeof *o);
    o->method = MT_MERGE_AUTO; /* no one method is best on every model (docs/merge.md) */
    o->router = MT_MERGE_ROUTER_FIT;
    o->calib_tokens = 16384;
    o->window = 0; /* MT_MERGE_WINDOW, or the model's context when shorter */
    o->sample_tokens = 4096;
    o->router_steps = 0;
}

void mt_merge_opts_free(mt_merge_opts *o) {
    if (!o) return;
    free(o->layer_experts);
    o->layer_experts = NULL, o->n_layer_experts = 0;
}

int mt_merge_parse_layers(mt_merge_opts *o, const char *spec, int n_layers) {
    const char *p = spec;
    if (!spec || !*spec) return mt_seterr(MT_ERR_ARG, "--layers: empty specification");
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a, k;
        if (end == p || a < 0) goto bad;
        p = end;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1 || b < a) goto bad;
            p = end;
        }
        if (*p != ':') goto bad;
        k = strtol(p + 1, &end, 10);
        if (end == p + 1 || k < 1 || k > (1 << 16)) goto bad;
        p = end;
        if (b >= MT_MAX_LAYERS || (n_layers > 0 && b >= n_layers))
            return mt_seterr(MT_ERR_ARG, "--layers '%s': layer %ld past the model's %d layers", spec, b, n_layers);
        if (b >= o->n_layer_experts) {
            int *g = realloc(o->layer_experts, (size_t)(b + 1) * sizeof *g);
            if (!g) return mt_seterr(MT_ERR_NOMEM, "--layers: out of memory");
            memset(g + o->n_layer_experts, 0, (size_t)(b + 1 - o->n_layer_experts) * sizeof *g);
            o->layer_experts = g, o->n_layer_experts = (int)b + 1;
        }
        for (long l = a; l <= b; l++) o->layer_experts[l] = (int)k;
        if (*p == ',') {
            if (!*++p) goto bad;
        } else if (*p) {
            goto bad;
        }
    }
    return MT_OK;
bad:
    return mt_seterr(MT_ERR_ARG, "--layers '%s': expected LAYER[-LAYER]:K[,...] (e.g. 0-1:6,2-3:4)", spec);
}

/* ---- calibration ------------------------------------------------------------ */

typedef struct {
    int L, E, H, top_k, S;
    uint64_t stride;        /* keep every stride-th token of a layer's stream     */
    uint64_t *count;        /* (L, E) routed slots                                */
    double *gate_sum;       /* (L, E) renormalised gates summed                   */
    float *sample;          /* (L, S, H) FFN inputs                               */
    int *n_sample;          /* [L]                                                */
    uint64_t *seen;         /* [L] tokens seen                                    */
} calib;

static int calib_hook(void *user, const mt_capture_event *ev) {
    calib *c = user;
    const int l = ev->layer;
    if (l < 0 || l >= c->L) return 0;
    if (ev->kind == MT_CAP_FFN_IN) {
        for (int i = 0; i < ev->n_rows; i++) {
            uint64_t t = c->seen[l]++;
            if (t % c->stride == 0 && c->n_sample[l] < c->S) {
                memcpy(c->sample + ((size_t)l * c->S + c->n_sample[l]) * c->H, ev->data + (size_t)i * ev->n_cols,
                       (size_t)c->H * sizeof(float));
                c->n_sample[l]++;
            }
        }
    } else if (ev->kind == MT_CAP_ROUTER_LOGITS && ev->topk && ev->n_cols == c->E) {
        for (int i = 0; i < ev->n_rows; i++) {
            const float *lg = ev->data + (size_t)i * ev->n_cols;
            const int32_t *tk = ev->topk + (size_t)i * c->top_k;
            double mx = -DBL_MAX, s = 0, ks = 0;
            for (int e = 0; e < c->E; e++) mx = lg[e] > mx ? lg[e] : mx;
            for (int e = 0; e < c->E; e++) s += exp(lg[e] - mx);
            for (int k = 0; k < c->top_k; k++) ks += exp(lg[tk[k]] - mx) / s;
            for (int k = 0; k < c->top_k; k++) {
                int e = tk[k];
                if (e < 0 || e >= c->E) continue;
                c->count[(size_t)l * c->E + e]++;
                c->gate_sum[(size_t)l * c->E + e] += exp(lg[e] - mx) / s / ks;
            }
        }
    }
    return 0;
}

/* Windows auto holds out of n_win (a quarter, at least 1, unless given).
 * A single window cannot be split: 0, and auto falls back to reap-merge. */
static int heldout_count(const mt_merge_opts *o, size_t n_win) {
    if (o->method != MT_MERGE_AUTO) return 0;
    if (o->heldout_windows > 0) return o->heldout_windows;
    if (n_win < 2) return 0;
    return n_win / 4 > 1 ? (int)(n_win / 4) : 1;
}

/* Runs the calibration windows through the model with the capture hook.
 * The stream is BOS (when the tokenizer has one) then the text; windows of
 * W tokens. With auto, the last heldout_count windows are not run: they are
 * returned in *held for measuring the candidates (R->heldout_*). */
static int run_calibration(mt_model *m, const mt_merge_opts *o, calib *c, mt_merge_report *R, int32_t **held) {
    const mt_tokenizer *tok = mt_model_tokenizer(m);
    if (!tok)
        return mt_seterr(MT_ERR_NOT_FOUND, "%s: no tokenizer to encode the calibration text with: %s",
                         mt_ckpt_path(mt_model_ckpt(m)), mt_model_tokenizer_error(m));
    const int max_pos = mt_model_config(m)->max_pos;
    const int W = o->window ? o->window : max_pos > 0 && max_pos < MT_MERGE_WINDOW ? max_pos : MT_MERGE_WINDOW;
    if (max_pos > 0 && W > max_pos && !o->allow_long_context)
        return mt_seterr(MT_ERR_ARG, "calibration windows of %d tokens are longer than the model's context of %d "
                         "(max_position_embeddings); --allow-long-context to calibrate anyway", W, max_pos);
    size_t n_ids = 0;
    int32_t *ids = NULL, *text_ids = NULL;
    mt_ctx *ctx = NULL;
    /* Only the tokens needed are read (streamed), BOS first when there is one. */
    int st = mt_tok_encode_file(tok, o->calib_path, (size_t)o->calib_tokens, &text_ids, &n_ids, NULL);
    if (st) return st;
    int bos = mt_tok_bos(tok);
    size_t off = bos >= 0 ? 1 : 0;
    ids = malloc((n_ids + 1) * sizeof *ids);
    if (!ids) {
        st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory encoding", o->calib_path);
        goto done;
    }
    if (bos >= 0) ids[0] = bos;
    if (n_ids) memcpy(ids + off, text_ids, n_ids * sizeof *ids);
    n_ids += off;
    if (n_ids < (size_t)o->calib_tokens) {
        st = mt_seterr(MT_ERR_ARG, "%s: calibration text has %zu tokens, --calib-tokens asks for %d", o->calib_path,
                       n_ids, o->calib_tokens);
        goto done;
    }
    const size_t n_win = (size_t)o->calib_tokens / W;
    if (n_win == 0) {
        st = mt_seterr(MT_ERR_ARG, "--calib-tokens %d is less than one window of %d tokens", o->calib_tokens, W);
        goto done;
    }
    size_t n_held = o->heldout_path ? 0 : (size_t)heldout_count(o, n_win);
    if (o->heldout_path) { /* held-out windows from their own text: the first ones, no BOS */
        const size_t want = (size_t)(o->heldout_windows > 0 ? o->heldout_windows : MT_MERGE_HELDOUT_FILE_WINDOWS);
        int32_t *h_ids = NULL;
        size_t n_h = 0;
        if ((st = mt_tok_encode_file(tok, o->heldout_path, want * W, &h_ids, &n_h, NULL))) goto done;
        n_held = n_h / W < want ? n_h / W : want;
        if (n_held == 0) {
            free(h_ids);
            st = mt_seterr(MT_ERR_ARG, "%s: %zu tokens, less than one held-out window of %d", o->heldout_path, n_h, W);
            goto done;
        }
        *held = h_ids; /* its first n_held * W tokens are the windows */
    }
    const size_t n_fit = n_win - (o->heldout_path ? 0 : n_held);
    if (!o->heldout_path && n_held >= n_win) {
        st = mt_seterr(MT_ERR_ARG, "--method auto: --calib-tokens %d gives %zu calibration windows of %d tokens and %zu "
                       "are held out; at least one must be left to fit (more --calib-tokens, or fewer "
                       "--heldout-windows)", o->calib_tokens, n_win, W, n_held);
        goto done;
    }
    /* The sample stride: an explicit method over the fit tokens alone takes
     * the same sample (auto's output equals that run's). */
    const uint64_t fit_tokens = n_held && !o->heldout_path ? (uint64_t)n_fit * W : (uint64_t)o->calib_tokens;
    c->stride = fit_tokens / (uint64_t)o->sample_tokens;
    if (c->stride < 1) c->stride = 1;
    if (n_held && !o->heldout_path) {
        if (!(*held = malloc(n_held * W * sizeof **held))) {
            st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory for the held-out windows", o->calib_path);
            goto done;
        }
        memcpy(*held, ids + n_fit * W, n_held * W * sizeof **held);
    }
    if ((st = mt_ctx_init(&ctx, m, W, W))) goto done;
    mt_ctx_set_capture(ctx, calib_hook, c, MT_CAP_FFN_IN | MT_CAP_ROUTER_LOGITS);
    for (size_t w = 0; w < n_fit; w++) {
        mt_ctx_reset(ctx);
        if ((st = mt_ctx_forward(ctx, ids + w * W, W, NULL, 0))) goto done;
        if (o->progress) o->progress(o->progress_user, "merge: calibration window", w + 1, n_fit);
    }
    R->calib_tokens = (uint64_t)n_win * W;
    R->fit_tokens = (uint64_t)n_fit * W;
    R->window = W;
    R->heldout_windows = (int)n_held;
    R->heldout_skip = n_held && !o->heldout_path ? (uint64_t)n_fit * W - off : 0;
done:
    mt_ctx_free(ctx);
    free(text_ids);
    free(ids);
    return st;
}

/* ---- one layer ------------------------------------------------------------- */

static int mat_to_f32(const mt_mat *M, float *dst, const char *what) {
    if (mt_mat_has_side(M))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: stored as %s with side data; convert to bf16 before merging", what,
                         mt_dtype_get(M->dtype)->name);
    for (int64_t r = 0; r < M->rows; r++) {
        int st = mt_row_to_f32(M->dtype, (const char *)M->data + (uint64_t)r * M->row_stride, dst + r * M->cols,
                               M->cols);
        if (st) return st;
    }
    return MT_OK;
}

typedef struct {
    int E, K, H, F, S, top_k;
    float *W1, *W3, *W2;  /* (E, F, H), (E, F, H), (E, H, F)           */
    float *R;             /* (E, H) router                              */
    float *Y;             /* (E, S, H) expert outputs on the sample      */
    float *P;             /* (S, E) routing probabilities               */
    float *A, *B;         /* (S, F) activations for alignment            */
    float *O1, *O3, *O2;  /* (K, F, H), (K, F, H), (K, H, F) outputs    */
    float *RK;            /* (K, H) output router                        */
    float *T;             /* (S, K) router targets                       */
    int *perm;            /* (E, F)                                     */
    const float *sample_x; /* (S, H) this layer's FFN inputs             */
    /* per-expert scratch, [E] each */
    int *order, *assign;
    double *score, *freq, *ascore;
    const float **pw1, **pw3, **pw2;
    const int **ppm;
} layer_buf;

/* The report's arrays, in one block: layer_k, recon_err [L]; group, freq,
 * gate_mean [L][E]; sensitivity [L][E + 1]. */
static int report_alloc(mt_merge_report *r, int L, int E) {
    const size_t n = (size_t)L, e = (size_t)E;
    const size_t bytes = n * sizeof(int) + n * sizeof(double) + 5 * n * sizeof(void *) + n * e * sizeof(int) +
                         2 * n * e * sizeof(double) + n * (e + 1) * sizeof(double) + 64;
    char *p = calloc(1, bytes);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "merge: out of memory for the report");
    r->mem = p;
    /* doubles first (8-byte aligned), then pointers, then ints */
    double *d = (double *)p;
    r->recon_err = d, d += n;
    double *fr = d, *gm = fr + n * e, *se = gm + n * e;
    char *q = (char *)(se + n * (e + 1));
    r->freq = (double **)q, q += n * sizeof(void *);
    r->gate_mean = (double **)q, q += n * sizeof(void *);
    r->sensitivity = (double **)q, q += n * sizeof(void *);
    r->group = (int **)q, q += n * sizeof(void *);
    q += n * sizeof(void *); /* spare slot keeps the int area aligned */
    int *ip = (int *)q;
    r->layer_k = ip, ip += n;
    for (size_t l = 0; l < n; l++) {
        r->freq[l] = fr + l * e;
        r->gate_mean[l] = gm + l * e;
        r->sensitivity[l] = se + l * (e + 1);
        r->group[l] = ip + l * e;
    }
    return MT_OK;
}

void mt_merge_report_free(mt_merge_report *r) {
    if (!r) return;
    free(r->mem);
    memset(r, 0, sizeof *r);
}

static void sort_by(const double *v, int n, int *idx) {
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = 1; i < n; i++) {
        int x = idx[i], j = i;
        while (j > 0 && v[idx[j - 1]] < v[x]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = x;
    }
}

/* REAP saliency per expert: mean over the sample tokens routed to it of
 * (renormalised gate) x |expert output|. */
static void reap_saliency(const layer_buf *b, double *score) {
    const int E = b->E, S = b->S, H = b->H;
    for (int e = 0; e < E; e++) {
        double s = 0;
        int n = 0;
        for (int i = 0; i < S; i++) {
            const float *p = b->P + (size_t)i * E;
            int rank = 0;
            double ks = 0;
            for (int f = 0; f < E; f++) rank += p[f] > p[e] || (p[f] == p[e] && f < e);
            if (rank >= b->top_k) continue;
            for (int f = 0; f < E; f++) {
                int rf = 0;
                for (int g = 0; g < E; g++) rf += p[g] > p[f] || (p[g] == p[f] && g < f);
                if (rf < b->top_k) ks += p[f];
            }
            const float *y = b->Y + ((size_t)e * S + i) * H;
            double nrm = 0;
            for (int j = 0; j < H; j++) nrm += (double)y[j] * y[j];
            s += p[e] / ks * sqrt(nrm);
            n++;
        }
        score[e] = n ? s / n : 0;
    }
}

/* Groups per method: assign[e] in [0, K) or -1 (pruned); anchor_score[e]
 * picks each group's anchor (its highest-scoring member). */
static int make_groups(const mt_merge_opts *o, layer_buf *b, const double *freq, int *assign, double *anchor_score,
                       double *recon_err) {
    const int E = b->E, K = b->K, S = b->S, H = b->H;
    int *order = b->order;
    double *score = b->score;
    memcpy(anchor_score, freq, (size_t)E * sizeof(double));
    switch (o->method) {
    case MT_MERGE_NAEE: {
        /* the kept set whose sliced-router output best reconstructs the layer's */
        merge_naee *nz = NULL;
        uint8_t *keep = malloc((size_t)E);
        double err = 0;
        int st = keep ? merge_naee_init(&nz, b->Y, b->P, E, S, H, b->top_k) : mt_seterr(MT_ERR_NOMEM, "naee: out of memory");
        if (!st) st = merge_naee_search(nz, K, keep, &err);
        if (!st) {
            double en = merge_naee_energy(nz);
            *recon_err = en > 0 ? err / en : 0;
            for (int e = 0, k = 0; e < E; e++) assign[e] = keep[e] ? k++ : -1;
        }
        merge_naee_free(nz);
        free(keep);
        return st;
    }
    case MT_MERGE_REAP_MERGE:
        /* REAP's K most salient experts are the anchors; every other expert
         * joins the anchor whose outputs on the same tokens are closest. */
        reap_saliency(b, score);
        memcpy(anchor_score, score, (size_t)E * sizeof(double));
        sort_by(score, E, order);
        for (int k = 0; k < K; k++) assign[order[k]] = k;
        for (int i = K; i < E; i++) {
            int e = order[i], best = 0;
            double bd = DBL_MAX;
            for (int k = 0; k < K; k++) {
                const float *ye = b->Y + (size_t)e * S * H, *ya = b->Y + (size_t)order[k] * S * H;
                double d = 0;
                for (size_t q = 0; q < (size_t)S * H; q++) d += ((double)ye[q] - ya[q]) * ((double)ye[q] - ya[q]);
                if (d < bd) bd = d, best = k;
            }
            assign[e] = best;
        }
        return MT_OK;
    case MT_MERGE_PRUNE:
    case MT_MERGE_REAP:
        if (o->method == MT_MERGE_PRUNE) {
            memcpy(score, freq, (size_t)E * sizeof(double));
        } else {
            reap_saliency(b, score);
        }
        sort_by(score, E, order);
        for (int e = 0; e < E; e++) assign[e] = -1;
        for (int k = 0; k < K; k++) assign[order[k]] = k;
        return MT_OK;
    case MT_MERGE_AVERAGE:
    case MT_MERGE_FREQUENCY:
        /* The K most used stay; the i-th least used goes into the i-th most used. */
        sort_by(freq, E, order);
        for (int k = 0; k < K; k++) assign[order[k]] = k;
        for (int i = 0; i < E - K; i++) assign[order[E - 1 - i]] = i % K;
        return MT_OK;
    case MT_MERGE_MC_SMOE: {
        /* Dominant experts by frequency; each other expert joins the dominant
         * one whose router logits over the sample correlate best with its own. */
        sort_by(freq, E, order);
        for (int k = 0; k < K; k++) assign[order[k]] = k;
        for (int i = K; i < E; i++) {
            int e = order[i], best = 0;
            double bc = -DBL_MAX;
            for (int k = 0; k < K; k++) {
                int d = order[k];
                double sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
                for (int t = 0; t < S; t++) {
                    double x = log(b->P[(size_t)t * E + e] + 1e-30), y = log(b->P[(size_t)t * E + d] + 1e-30);
                    sa += x, sb += y, sab += x * y, saa += x * x, sbb += y * y;
                }
                double cov = sab - sa * sb / S, va = saa - sa * sa / S, vb = sbb - sb * sb / S;
                double cc = cov / sqrt(va * vb + 1e-30);
                if (cc > bc) bc = cc, best = k;
            }
            assign[e] = best;
        }
        return MT_OK;
    }
    case MT_MERGE_HC_SMOE: {
        /* Average linkage on the experts' mean outputs over the shared sample. */
        double *mu = calloc((size_t)E * H, sizeof(double));
        double *D = malloc((size_t)E * E * sizeof(double));
        int st = MT_OK;
        if (!mu || !D) {
            st = mt_seterr(MT_ERR_NOMEM, "out of memory clustering experts");
        } else {
            for (int e = 0; e < E; e++)
                for (int i = 0; i < S; i++)
                    for (int j = 0; j < H; j++) mu[(size_t)e * H + j] += b->Y[((size_t)e * S + i) * H + j] / S;
            for (int a = 0; a < E; a++)
                for (int c = 0; c < E; c++) {
                    double s = 0;
                    for (int j = 0; j < H; j++) {
                        double d = mu[(size_t)a * H + j] - mu[(size_t)c * H + j];
                        s += d * d;
                    }
                    D[(size_t)a * E + c] = sqrt(s);
                }
            st = merge_cluster_average_linkage(D, E, K, assign);
        }
        free(mu);
        free(D);
        return st;
    }
    default: return mt_seterr(MT_ERR_ARG, "merge method %d unknown", o->method);
    }
}

/* Builds O1/O3/O2 and RK for one layer from the groups. */
static int merge_layer(const mt_merge_opts *o, layer_buf *b, const double *freq, const double *anchor_score,
                       const int *assign, double *fit_rmse) {
    const int E = b->E, K = b->K, H = b->H, F = b->F, S = b->S;
    const size_t FH = (size_t)F * H;
    int st = MT_OK;
    const int align = o->method == MT_MERGE_FREQUENCY || o->method == MT_MERGE_HC_SMOE ||
                      o->method == MT_MERGE_MC_SMOE || o->method == MT_MERGE_REAP_MERGE;
    int *mem = b->order;
    double *wts = b->score;
    const float **w1 = b->pw1, **w3 = b->pw3, **w2 = b->pw2;
    const int **pm = b->ppm;
    for (int k = 0; k < K; k++) {
        int nm = 0, anchor = -1;
        double wsum = 0;
        for (int e = 0; e < E; e++)
            if (assign[e] == k) {
                mem[nm++] = e;
                if (anchor < 0 || anchor_score[e] > anchor_score[anchor]) anchor = e;
            }
        if (nm == 0) return mt_seterr(MT_ERR_INTERNAL, "merge: output expert %d has no members", k);
        if (align && nm > 1) mt_merge_expert_forward(b->W1 + anchor * FH, b->W3 + anchor * FH, b->W2 + anchor * FH,
                                                     H, F, b->sample_x, S, b->Y, b->A);
        for (int i = 0; i < nm; i++) {
            int e = mem[i];
            w1[i] = b->W1 + e * FH;
            w3[i] = b->W3 + e * FH;
            w2[i] = b->W2 + e * FH;
            wts[i] = o->method == MT_MERGE_AVERAGE ? 1.0 : freq[e] + 1e-9;
            wsum += wts[i];
            int *p = b->perm + (size_t)e * F;
            for (int j = 0; j < F; j++) p[j] = j;
            if (align && nm > 1 && e != anchor) {
                mt_merge_expert_forward(w1[i], w3[i], w2[i], H, F, b->sample_x, S, b->Y, b->B);
                if ((st = mt_merge_align(b->A, b->B, S, F, p))) return st;
            }
            pm[i] = p;
        }
        for (int i = 0; i < nm; i++) wts[i] /= wsum;
        merge_weighted_average(w1, w3, w2, pm, wts, nm, H, F, b->O1 + k * FH, b->O3 + k * FH, b->O2 + k * FH);
        /* Router rows that need no fitting. */
        float *rk = b->RK + (size_t)k * H;
        if (o->router == MT_MERGE_ROUTER_AVERAGE && nm > 1) {
            double fs = 0;
            for (int i = 0; i < nm; i++) fs += freq[mem[i]] + 1e-9;
            for (int j = 0; j < H; j++) {
                double s = 0;
                for (int i = 0; i < nm; i++) s += (freq[mem[i]] + 1e-9) / fs * b->R[(size_t)mem[i] * H + j];
                rk[j] = (float)s;
            }
        } else {
            memcpy(rk, b->R + (size_t)anchor * H, (size_t)H * sizeof(float));
        }
    }
    int any_pruned = 0, any_merged = 0;
    for (int e = 0; e < E; e++) any_pruned |= assign[e] < 0;
    for (int k = 0; k < K; k++) {
        int n = 0;
        for (int e = 0; e < E; e++) n += assign[e] == k;
        any_merged |= n > 1;
    }
    if (o->router == MT_MERGE_ROUTER_FIT && any_merged && !any_pruned) {
        /* Targets: log of each group's summed routing probability, centred per
         * token (softmax ignores a per-token constant). */
        for (int i = 0; i < S; i++) {
            float *t = b->T + (size_t)i * K;
            double mean = 0;
            for (int k = 0; k < K; k++) t[k] = 0;
            for (int e = 0; e < E; e++) t[assign[e]] += b->P[(size_t)i * E + e];
            if (o->router_steps > 0) continue;
            for (int k = 0; k < K; k++) mean += (t[k] = logf(t[k] > 1e-30f ? t[k] : 1e-30f));
            mean /= K;
            for (int k = 0; k < K; k++) t[k] -= (float)mean;
        }
        if (o->router_steps > 0) {
            /* start from the anchor rows, fit the summed probabilities */
            st = merge_refine_router(b->sample_x, b->T, S, H, K, o->router_steps, 1e-3f, b->RK);
        } else {
            st = merge_fit_router(b->sample_x, b->T, S, H, K, 1e-4, b->RK, fit_rmse);
        }
        if (st) return st;
    }
    return MT_OK;
}

/* Dequantizes layer l's router and experts into b (E, H, F, S, sample_x set
 * by the caller) and computes the routing probabilities P and the expert
 * outputs Y on the sample. */
static int load_layer(layer_buf *b, const mt_layer_weights *Lw, int l) {
    mt_backend *be = mt_backend_default();
    const int E = b->E, H = b->H, F = b->F;
    const size_t FH = (size_t)F * H;
    char what[96];
    int st;
    snprintf(what, sizeof what, "layer %d router", l);
    if ((st = mat_to_f32(&Lw->router, b->R, what))) return st;
    for (int e = 0; e < E; e++) {
        snprintf(what, sizeof what, "layer %d expert %d", l, e);
        if ((st = mat_to_f32(&Lw->w1[e], b->W1 + e * FH, what)) || (st = mat_to_f32(&Lw->w3[e], b->W3 + e * FH, what)) ||
            (st = mat_to_f32(&Lw->w2[e], b->W2 + e * FH, what)))
            return st;
    }
    be->ops->gemm_f32(be, 0, 1, b->S, E, H, 1.0f, b->sample_x, H, b->R, H, 0.0f, b->P, E);
    for (int i = 0; i < b->S; i++) {
        float *p = b->P + (size_t)i * E, mx = -FLT_MAX, s = 0;
        for (int e = 0; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        for (int e = 0; e < E; e++) s += (p[e] = expf(p[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= s;
    }
    for (int e = 0; e < E; e++)
        mt_merge_expert_forward(b->W1 + e * FH, b->W3 + e * FH, b->W2 + e * FH, H, F, b->sample_x, b->S,
                                b->Y + (size_t)e * b->S * H, b->A);
    return MT_OK;
}

/* ---- output ----------------------------------------------------------------- */

static mt_dtype out_type(mt_dtype t);
static int write_rows(mt_hf_writer *w, mt_dtype t, const float *src, int64_t rows, int64_t cols, void *buf);

/* The routed part of a MoE layer: the router and the routed experts. A
 * shared expert (and its gate) is not routed: merge keeps it as it is. */
static int is_routed(const mt_arch_tensor *t) {
    return t && (t->role == MT_ROLE_ROUTER || (t->flags & MT_ROLE_F_EXPERT));
}

/* Router and expert tensors are rewritten; everything else is copied. */
static int is_moe_tensor(const mt_config *c, const char *name, mt_format fmt) {
    return is_routed(mt_arch_parse(mt_arch_get(c->arch), name, fmt, NULL, NULL));
}

/* The tensors merge keeps as they are, in output (HF) form. An HF source
 * gives its own tensors (every one but the router and the experts), copied
 * byte for byte; a GGUF source gives the family's other roles under their HF
 * names, rows converted back: Q/K rows un-permuted, types safetensors cannot
 * hold (q8_0, ...) widened to bf16. */
typedef struct {
    char name[160];
    const mt_tensor *src;
    mt_dtype dtype;
    int n_dims;
    int64_t shape[MT_MAX_DIMS];
    int perm_heads;   /* > 0: GGUF Q/K rows to un-permute */
} keep_t;

static int keep_list(const mt_ckpt *ck, const mt_config *cf, keep_t **out, size_t *n_out) {
    const mt_format fmt = mt_ckpt_format(ck);
    keep_t *k = calloc(mt_ckpt_count(ck) + 1, sizeof *k);
    size_t n = 0;
    if (!k) return mt_seterr(MT_ERR_NOMEM, "merge: out of memory");
    *out = k;
    if (fmt != MT_FMT_GGUF) {
        for (size_t i = 0; i < mt_ckpt_count(ck); i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            if (is_moe_tensor(cf, t->name, fmt)) continue;
            if (strlen(t->name) >= sizeof k[n].name)
                return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor name too long: %.60s...", mt_ckpt_path(ck), t->name);
            snprintf(k[n].name, sizeof k[n].name, "%s", t->name);
            k[n].src = t;
            k[n].dtype = t->dtype;
            k[n].n_dims = t->n_dims;
            memcpy(k[n].shape, t->shape, sizeof k[n].shape);
            n++;
        }
        *n_out = n;
        return MT_OK;
    }
    mt_arch_iter it;
    mt_arch_item a;
    int st = mt_arch_iter_init(&it, cf, 0, mt_ckpt_path(ck));
    while (!st && mt_arch_iter_next(&it, &a)) {
        if (is_routed(a.t)) continue;
        const mt_tensor *t = mt_ckpt_find(ck, a.gguf);
        if (!t) return mt_seterr(MT_ERR_NOT_FOUND, "%s: tensor %s is missing", mt_ckpt_path(ck), a.gguf);
        keep_t *e = &k[n++];
        snprintf(e->name, sizeof e->name, "%s", a.hf);
        e->src = t;
        e->dtype = out_type(t->dtype);
        e->n_dims = a.n_dims;
        memcpy(e->shape, a.shape, sizeof a.shape);
        if (cf->rope_style == MT_ROPE_INTERLEAVED && (a.t->flags & MT_ROLE_F_ROPE))
            e->perm_heads = a.t->role == MT_ROLE_WQ ? cf->n_heads : cf->n_kv_heads;
    }
    *n_out = n;
    return st;
}

/* Streams a kept tensor: its bytes, or converted rows. */
static int write_keep(mt_hf_writer *hw, const keep_t *e, const mt_config *cf, float *row, void *buf) {
    const mt_tensor *t = e->src;
    if (!e->perm_heads && e->dtype == t->dtype) return mt_hf_writer_write(hw, t->data, t->nbytes);
    const int64_t cols = e->n_dims == 1 ? e->shape[0] : e->shape[1], rows = e->n_dims == 1 ? 1 : e->shape[0];
    uint64_t ib;
    int st = mt_dtype_nbytes(t->dtype, (uint64_t)cols, &ib);
    if (st) return st;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t sr = e->perm_heads ? mt_rope_perm_row(0, r, cf->head_dim) : r;
        if ((st = mt_row_to_f32(t->dtype, (const uint8_t *)t->data + (uint64_t)sr * ib, row, cols))) return st;
        if ((st = write_rows(hw, e->dtype, row, 1, cols, buf))) return st;
    }
    return MT_OK;
}

static mt_dtype out_type(mt_dtype t) {
    return mt_dtype_is_plain_float(t) ? t : MT_DT_BF16;
}

/* Converts rows of f32 to `t` and streams them. */
static int write_rows(mt_hf_writer *w, mt_dtype t, const float *src, int64_t rows, int64_t cols, void *buf) {
    uint64_t rb;
    int st = mt_dtype_nbytes(t, (uint64_t)cols, &rb);
    if (st) return st;
    for (int64_t r = 0; r < rows; r++) {
        if ((st = mt_row_from_f32(t, src + r * cols, buf, cols))) return st;
        if ((st = mt_hf_writer_write(w, buf, rb))) return st;
    }
    return MT_OK;
}

/* What the merge did, for config.json and README.md (lib/io/provenance.c). */
static mt_prov *merge_provenance(const char *model_path, const mt_merge_opts *o, const mt_merge_report *R, int L,
                                 int uniform, int Kmax) {
    mt_prov *p = mt_prov_new("merge", model_path);
    if (!p) return NULL;
    mt_prov_tag(p, "moe");
    mt_prov_tag(p, "merge");
    mt_prov_str(p, "method", mt_merge_method_name(R->method));
    mt_prov_str(p, "router", mt_merge_router_name(o->router));
    char buf[64 * 8], *q = buf;
    size_t left = sizeof buf;
    for (int l = 0; l < L && left > 16; l++) {
        int k = snprintf(q, left, "%s%d", l ? "," : "", R->layer_k[l]);
        if (k < 0 || (size_t)k >= left) break;
        q += k, left -= (size_t)k;
    }
    mt_prov_str(p, "experts_per_layer", buf);
    if (o->budget > 0) mt_prov_int(p, "budget", o->budget);
    mt_prov_str(p, "calibration_text", o->calib_path);
    mt_prov_int(p, "calibration_tokens", o->calib_tokens);
    mt_prov_int(p, "sample_tokens", o->sample_tokens);
    if (o->router_steps) mt_prov_int(p, "router_steps", o->router_steps);
    if (o->method == MT_MERGE_AUTO && R->n_candidates == 0) {
        mt_prov_str(p, "selection", "auto: one calibration window, none to hold out; reap-merge");
        mt_prov_note(p, "`--method auto` had one calibration window and could not hold any out to measure the "
                        "candidates: it wrote reap-merge. Give more --calib-tokens to choose.");
    } else if (o->method == MT_MERGE_AUTO) {
        /* how the method was chosen: every candidate's held-out perplexity */
        char cand[MT_MERGE_METHOD_COUNT * 48], *cq = cand;
        size_t cl = sizeof cand;
        cand[0] = 0;
        for (int i = 0; i < R->n_candidates && cl > 48; i++) {
            int k = snprintf(cq, cl, "%s%s %.4f", i ? ", " : "", mt_merge_method_name(R->candidates[i].method),
                             R->candidates[i].ppl);
            if (k < 0 || (size_t)k >= cl) break;
            cq += k, cl -= (size_t)k;
        }
        mt_prov_str(p, "selection", "auto");
        mt_prov_int(p, "fit_tokens", (long long)R->fit_tokens);
        mt_prov_int(p, "heldout_windows", R->heldout_windows);
        mt_prov_num(p, "heldout_base_ppl", R->base_ppl);
        mt_prov_str(p, "heldout_ppl", cand);
        char note[256];
        if (o->heldout_path) {
            const char *b = strrchr(o->heldout_path, '/');
            mt_prov_str(p, "heldout_text", b ? b + 1 : o->heldout_path);
            snprintf(note, sizeof note, "Method chosen by `--method auto`: each candidate was fitted on the first %llu "
                     "calibration tokens and the one with the lowest perplexity on the first %d windows of %d tokens "
                     "of %.60s (held out) was written.", (unsigned long long)R->fit_tokens, R->heldout_windows,
                     R->window, b ? b + 1 : o->heldout_path);
        } else {
            snprintf(note, sizeof note, "Method chosen by `--method auto`: each candidate was fitted on the first %llu "
                     "calibration tokens and the one with the lowest perplexity on the last %d windows of %d tokens "
                     "(held out) was written.", (unsigned long long)R->fit_tokens, R->heldout_windows, R->window);
        }
        mt_prov_note(p, note);
    }
    mt_prov_command(p, o->command);
    if (o->router == MT_MERGE_ROUTER_ALIAS)
        mt_prov_note(p, "The router keeps every original row, each mapped to its merged expert (config key "
                        "`moe_router_alias`): only moetool runs this checkpoint; transformers and llama.cpp would "
                        "misroute it.");
    else if (!uniform) {
        char note[400];
        snprintf(note, sizeof note,
                 "Layers keep different numbers of experts (at most %d; config key `moe_layer_experts`): moetool runs "
                 "this checkpoint, transformers and llama.cpp cannot load it.", Kmax);
        mt_prov_note(p, note);
    } else {
        mt_prov_note(p, "A plain Mixtral checkpoint: transformers loads it (`AutoModelForCausalLM`), and `moetool "
                        "convert DIR -o model.gguf` gives llama.cpp a GGUF.");
    }
    return p;
}

/* ---- writing one merged model ------------------------------------------------ */

/* What every output of one mt_merge call shares: the loaded source, the
 * calibration statistics, one layer's buffers and the kept tensors. */
typedef struct {
    mt_model *m;
    const mt_config *cf;
    const mt_weights *w;
    const mt_arch *fam;
    int L, H, F;
    const calib *c;
    layer_buf *b;
    const keep_t *keep;
    size_t n_keep;
    float *keep_row;
    void *keep_buf, *rowbuf;
} merge_run;

/* The merged tensors (o->method, R->layer_k) and the tokenizer into dir;
 * R's per-layer groups, frequencies and parameter counts are filled. */
static int write_weights(const merge_run *s, const mt_merge_opts *o, mt_merge_report *R, const char *dir) {
    const mt_config *cf = s->cf;
    const mt_weights *w = s->w;
    const calib *c = s->c;
    layer_buf *b = s->b;
    const int L = s->L, H = s->H, F = s->F;
    const size_t FH = (size_t)F * H;
    mt_hf_writer *hw = NULL;
    int st;
    R->expert_params_in = R->expert_params_out = 0;
    R->router_fit_rmse = 0;
    for (int l = 0; l < L; l++) R->recon_err[l] = -1;
    /* Declare every tensor first (the writer fixes its layout). */
    if ((st = mt_hf_writer_open(&hw, dir, 0))) goto done;
    for (size_t i = 0; i < s->n_keep; i++)
        if ((st = mt_hf_writer_add(hw, s->keep[i].name, s->keep[i].dtype, s->keep[i].n_dims, s->keep[i].shape)))
            goto done;
    const mt_dtype et = out_type(w->layers[0].w1[0].dtype), rt = out_type(w->layers[0].router.dtype);
    for (int l = 0; l < L; l++) {
        char name[128];
        int K = R->layer_k[l];
        /* alias: the layer keeps all of its E router rows */
        const int64_t rows = o->router == MT_MERGE_ROUTER_ALIAS ? w->layers[l].n_experts : K;
        mt_arch_name(name, sizeof name, mt_arch_tensor_of(s->fam, MT_ROLE_ROUTER), MT_FMT_HF, l, -1);
        if ((st = mt_hf_writer_add(hw, name, rt, 2, (const int64_t[]){rows, H}))) goto done;
        for (int k = 0; k < K; k++) {
            /* declared w1, w2, w3 (HF name order), written in that order below */
            static const mt_role wr[3] = {MT_ROLE_EXP_GATE, MT_ROLE_EXP_DOWN, MT_ROLE_EXP_UP};
            for (int q = 0; q < 3; q++) {
                const mt_arch_tensor *rt_ = mt_arch_tensor_of(s->fam, wr[q]);
                mt_arch_name(name, sizeof name, rt_, MT_FMT_HF, l, k);
                int64_t shape[2];
                mt_arch_shape(rt_, cf, l, shape);
                if ((st = mt_hf_writer_add(hw, name, et, 2, shape))) goto done;
            }
        }
    }
    for (size_t i = 0; i < s->n_keep; i++)
        if ((st = write_keep(hw, &s->keep[i], cf, s->keep_row, s->keep_buf))) goto done;

    /* Layer by layer. */
    double rmse_sum = 0;
    int rmse_n = 0;
    for (int l = 0; l < L; l++) {
        const mt_layer_weights *Lw = &w->layers[l];
        const int E = Lw->n_experts, K = R->layer_k[l];
        b->E = E, b->K = K, b->H = H, b->F = F, b->top_k = cf->top_k;
        b->S = c->n_sample[l];
        b->sample_x = c->sample + (size_t)l * c->S * H;
        if ((st = load_layer(b, Lw, l))) goto done;
        double *freq = b->freq;
        uint64_t tot = 0;
        for (int e = 0; e < E; e++) tot += c->count[(size_t)l * c->E + e];
        for (int e = 0; e < E; e++) {
            freq[e] = tot ? (double)c->count[(size_t)l * c->E + e] / tot : 1.0 / E;
            R->freq[l][e] = freq[e];
            uint64_t ce = c->count[(size_t)l * c->E + e];
            R->gate_mean[l][e] = ce ? c->gate_sum[(size_t)l * c->E + e] / (double)ce : 0.0;
        }
        int *assign = b->assign;
        double *ascore = b->ascore;
        memcpy(ascore, freq, (size_t)E * sizeof *ascore);
        if (K == E) {
            for (int e = 0; e < E; e++) assign[e] = e;
        } else if ((st = make_groups(o, b, freq, assign, ascore, &R->recon_err[l]))) {
            goto done;
        }
        for (int e = 0; e < E; e++) R->group[l][e] = assign[e];
        double rmse = -1;
        if ((st = merge_layer(o, b, freq, ascore, assign, &rmse))) goto done;
        if (rmse >= 0) rmse_sum += rmse, rmse_n++;
        if (o->router == MT_MERGE_ROUTER_ALIAS) {
            /* the original rows (f32 holds bf16/f16 exactly), each routed to its group */
            if ((st = write_rows(hw, rt, b->R, E, H, s->rowbuf))) goto done;
        } else if ((st = write_rows(hw, rt, b->RK, K, H, s->rowbuf))) {
            goto done;
        }
        for (int k = 0; k < K; k++)
            if ((st = write_rows(hw, et, b->O1 + k * FH, F, H, s->rowbuf)) ||
                (st = write_rows(hw, et, b->O2 + k * FH, H, F, s->rowbuf)) ||
                (st = write_rows(hw, et, b->O3 + k * FH, F, H, s->rowbuf)))
                goto done;
        R->expert_params_in += (uint64_t)E * 3 * FH;
        R->expert_params_out += (uint64_t)K * 3 * FH;
        if (o->progress) o->progress(o->progress_user, "merge: layer", (uint64_t)l + 1, (uint64_t)L);
    }
    R->router_fit_rmse = rmse_n ? rmse_sum / rmse_n : 0;
    if ((st = mt_hf_writer_finish(hw))) goto done;
    st = mt_copy_tokenizer(mt_model_ckpt(s->m), dir);
done:
    mt_hf_writer_free(hw);
    return st;
}

/* config.json (the source's scalars, per-layer arrays rebuilt, provenance)
 * and README.md into dir; written again after auto has chosen. */
static int write_meta(const merge_run *s, const char *model_path, const char *out_path, const mt_merge_opts *o,
                      const mt_merge_report *R, const char *dir) {
    const int L = s->L;
    mt_config oc = *s->cf;
    char *cfg_text = NULL;
    mt_prov *prov = NULL;
    int st = MT_OK, uniform = 1, Kmax = 0;
    oc.layer_experts = NULL;
    oc.router_rows = NULL;
    oc.router_alias = NULL;
    for (int l = 0; l < L; l++) Kmax = R->layer_k[l] > Kmax ? R->layer_k[l] : Kmax;
    for (int l = 1; l < L; l++) uniform &= R->layer_k[l] == R->layer_k[0];
    oc.n_experts = Kmax;
    if (o->router == MT_MERGE_ROUTER_ALIAS)
        for (int l = 0; l < L && !st; l++) {
            const int E = s->w->layers[l].n_experts;
            if (R->layer_k[l] == E) continue; /* unchanged layer: one row per expert */
            int32_t *a = malloc((size_t)E * sizeof *a);
            if (!a) {
                st = mt_seterr(MT_ERR_NOMEM, "merge: out of memory");
                break;
            }
            for (int e = 0; e < E; e++) a[e] = R->group[l][e];
            st = mt_config_set_router_alias(&oc, l, E, a);
            free(a);
        }
    if (!uniform)
        for (int l = 0; l < L && !st; l++) st = mt_config_set_layer_experts(&oc, l, R->layer_k[l] == Kmax ? 0 : R->layer_k[l]);
    if (st) goto done;
    const char *tdt = mt_dtype_config_torch_name(out_type(s->w->layers[0].w1[0].dtype), "bfloat16");
    if ((st = mt_config_to_hf_json(&cfg_text, &oc, tdt))) goto done;
    if (!(prov = merge_provenance(model_path, o, R, L, uniform, Kmax))) {
        st = mt_seterr(MT_ERR_NOMEM, "merge: out of memory");
        goto done;
    }
    if ((st = mt_prov_config(prov, &cfg_text))) goto done;
    if ((st = mt_write_text_file(dir, "config.json", cfg_text, strlen(cfg_text)))) goto done;
    st = mt_prov_write_card(prov, dir, strrchr(out_path, '/') ? strrchr(out_path, '/') + 1 : out_path);
done:
    mt_prov_free(prov);
    free(cfg_text);
    mt_config_free(&oc);
    return st;
}

int mt_merge_auto_candidates(const mt_merge_opts *o, int *out) {
    static const int order[] = {MT_MERGE_PRUNE, MT_MERGE_AVERAGE, MT_MERGE_FREQUENCY, MT_MERGE_HC_SMOE,
                                MT_MERGE_MC_SMOE, MT_MERGE_REAP, MT_MERGE_REAP_MERGE, MT_MERGE_NAEE};
    int n = 0;
    for (size_t i = 0; i < sizeof order / sizeof *order; i++) {
        const int m = order[i];
        const int prunes = m == MT_MERGE_PRUNE || m == MT_MERGE_REAP || m == MT_MERGE_NAEE;
        if (o && o->router == MT_MERGE_ROUTER_ALIAS && prunes) continue; /* a pruned row has no target */
        out[n++] = m;
    }
    return n;
}

/* Writes every candidate into its own directory beside the output (the
 * statistics pass is shared), measures each on the held-out windows against
 * the source, keeps the lowest perplexity (the first on a tie) in *od and
 * removes the others. */
static int merge_auto(const merge_run *s, const char *model_path, const char *out_path, const mt_merge_opts *o,
                      mt_merge_report *R, const int32_t *held, mt_outdir **od) {
    const int L = s->L;
    int cand[MT_MERGE_METHOD_COUNT], Emax = 0;
    for (int l = 0; l < L; l++) Emax = s->w->layers[l].n_experts > Emax ? s->w->layers[l].n_experts : Emax;
    /* the report's per-layer rows hold this many experts (report_alloc) */
    const int E = Emax > s->c->E ? Emax : s->c->E;
    const int nc = mt_merge_auto_candidates(o, cand);
    int st = MT_OK, best = -1;
    mt_outdir *best_od = *od, *cur = NULL;
    /* the best candidate's report arrays (the next candidates overwrite R's) */
    int *bgroup = malloc((size_t)L * E * sizeof *bgroup);
    double *brecon = malloc((size_t)L * sizeof *brecon), brmse = 0;
    uint64_t bpin = 0, bpout = 0;
    if (!bgroup || !brecon) {
        st = mt_seterr(MT_ERR_NOMEM, "merge: out of memory");
        goto done;
    }
    *od = NULL;
    R->n_candidates = 0;
    for (int i = 0; i < nc && !st; i++) {
        const double t0 = mt_now();
        mt_merge_opts oc = *o;
        oc.method = cand[i];
        R->method = cand[i];
        mt_outdir *dir = NULL;
        /* the first candidate goes into the output's own directory */
        if (i == 0) {
            dir = best_od;
            best_od = NULL;
        } else if ((st = mt_outdir_open(&dir, out_path))) {
            break;
        }
        cur = dir;
        mt_model *cm = NULL;
        mt_model_opts mo;
        mt_model_opts_default(&mo);
        mo.n_threads = o->n_threads;
        mt_eval_opts eo;
        mt_eval_opts_default(&eo);
        eo.ctx = eo.n_batch = R->window;
        eo.protocol = MT_PPL_GPTQ;
        eo.max_windows = R->heldout_windows;
        mt_eval_result er;
        memset(&er, 0, sizeof er);
        if (o->progress) o->progress(o->progress_user, "merge: auto candidate", (uint64_t)i + 1, (uint64_t)nc);
        if ((st = write_weights(s, &oc, R, mt_outdir_path(dir))) ||
            (st = write_meta(s, model_path, out_path, &oc, R, mt_outdir_path(dir))) ||
            (st = mt_model_load(&cm, mt_outdir_path(dir), &mo)) ||
            (st = mt_eval_ppl(cm, s->m, held, (size_t)R->heldout_windows * R->window, &eo, &er))) {
            mt_model_free(cm);
            mt_eval_result_free(&er);
            break;
        }
        mt_model_free(cm);
        R->candidates[i].method = cand[i];
        R->candidates[i].ppl = er.ppl;
        R->candidates[i].kl = er.kl_mean;
        R->candidates[i].seconds = mt_now() - t0;
        R->base_ppl = er.ref_ppl;
        R->n_candidates = i + 1;
        mt_eval_result_free(&er);
        if (best < 0 || R->candidates[i].ppl < R->candidates[best].ppl) {
            best = i;
            mt_outdir_free(best_od); /* removes the previous best */
            best_od = cur;
            for (int l = 0; l < L; l++) {
                memcpy(bgroup + (size_t)l * E, R->group[l], (size_t)E * sizeof *bgroup);
                brecon[l] = R->recon_err[l];
            }
            brmse = R->router_fit_rmse;
            bpin = R->expert_params_in, bpout = R->expert_params_out;
        } else {
            mt_outdir_free(cur);
        }
        cur = NULL;
    }
    if (st) goto done;
    if (best < 0) {
        st = mt_seterr(MT_ERR_INTERNAL, "merge: no candidate method for --method auto");
        goto done;
    }
    R->method = cand[best];
    for (int l = 0; l < L; l++) {
        memcpy(R->group[l], bgroup + (size_t)l * E, (size_t)E * sizeof *bgroup);
        R->recon_err[l] = brecon[l];
    }
    R->router_fit_rmse = brmse;
    R->expert_params_in = bpin, R->expert_params_out = bpout;
    /* config.json and README.md again, now saying how the method was chosen */
    st = write_meta(s, model_path, out_path, o, R, mt_outdir_path(best_od));
done:
    mt_outdir_free(cur);
    if (st) {
        mt_outdir_free(best_od);
        best_od = NULL;
    }
    *od = best_od;
    free(bgroup);
    free(brecon);
    return st;
}

int mt_merge(const char *model_path, const char *out_path, const mt_merge_opts *o, mt_merge_report *rep) {
    double t0 = mt_now();
    mt_model *m = NULL;
    mt_outdir *od = NULL;
    calib c = {0};
    layer_buf b = {0};
    void *rowbuf = NULL, *keep_buf = NULL;
    keep_t *keep = NULL;
    size_t n_keep = 0;
    float *keep_row = NULL;
    int32_t *held = NULL;
    const mt_arch *fam = NULL;
    mt_merge_report r0;
    mt_merge_report *R = rep ? rep : &r0;
    int st;
    memset(R, 0, sizeof *R);
    if (!o || !model_path || !out_path) return mt_seterr(MT_ERR_ARG, "merge: missing model, output or options");
    if (o->method < 0 || o->method >= MT_MERGE_METHOD_COUNT) return mt_seterr(MT_ERR_ARG, "merge: unknown method %d", o->method);
    if (o->router < 0 || o->router >= MT_MERGE_ROUTER_COUNT) return mt_seterr(MT_ERR_ARG, "merge: unknown router %d", o->router);
    if (o->router == MT_MERGE_ROUTER_ALIAS &&
        (o->method == MT_MERGE_PRUNE || o->method == MT_MERGE_REAP || o->method == MT_MERGE_NAEE))
        return mt_seterr(MT_ERR_ARG, "--router alias: method %s prunes experts and a pruned expert's router row has no "
                                     "merged expert to alias; use a merging method (average, frequency, hc-smoe, "
                                     "mc-smoe, reap-merge)", mt_merge_method_name(o->method));
    if (!o->calib_path) return mt_seterr(MT_ERR_ARG, "merge: --calib FILE is required");
    if ((o->window && o->window < 2) || o->calib_tokens < 1 || o->sample_tokens < 16 || o->router_steps < 0)
        return mt_seterr(MT_ERR_ARG, "merge: --calib-tokens, window or sample size out of range");
    if (o->heldout_windows < 0 || (o->heldout_windows && o->method != MT_MERGE_AUTO))
        return mt_seterr(MT_ERR_ARG, "--heldout-windows %d: held-out windows are for --method auto only",
                         o->heldout_windows);
    if (o->heldout_path && o->method != MT_MERGE_AUTO)
        return mt_seterr(MT_ERR_ARG, "--heldout %s: a held-out text is for --method auto only", o->heldout_path);

    const char *calib_in[] = {o->calib_path, o->heldout_path};
    if ((st = mt_output_check(out_path, MT_OUTPUT_HF_DIR, o->force, model_path, calib_in, o->heldout_path ? 2 : 1)))
        return st;

    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = o->n_threads;
    if ((st = mt_model_load(&m, model_path, &mo))) return st;
    if (mt_ckpt_is_archive(mt_model_ckpt(m))) {
        mt_model_free(m);
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: an archive is read in place by inspect, eval, generate and tokenize; unpack it to %s it", model_path, "merge");
    }
    const mt_config *cf = mt_model_config(m);
    const mt_weights *w = mt_model_weights(m);
    const mt_ckpt *ck = mt_model_ckpt(m);
    const int L = cf->n_layers, H = cf->hidden, F = cf->ffn;
    if (cf->n_experts == 0) {
        st = mt_seterr(MT_ERR_UNSUPPORTED, "%s: dense model (no experts to merge)", model_path);
        goto done;
    }
    if ((st = mt_arch_of(&fam, cf, model_path))) goto done;
    if (cf->quant != MT_QFMT_NONE) {
        st = mt_seterr(MT_ERR_UNSUPPORTED, "%s: the checkpoint is quantized (quantization_config); merge reads "
                                           "unquantized weights (merge the original, then quantize)", model_path);
        goto done;
    }
    if (mt_config_has_alias(cf)) {
        /* its experts are already merged behind aliased router rows; the
         * statistics below count router rows as experts */
        st = mt_seterr(MT_ERR_UNSUPPORTED, "%s: checkpoint already routes through moe_router_alias; merge reads "
                                           "models with one router row per expert", model_path);
        goto done;
    }
    for (int l = 0; l < L; l++)
        if (w->layers[l].n_experts == 0) {
            st = mt_seterr(MT_ERR_UNSUPPORTED, "%s: layer %d is a dense MLP (decoder_sparse_step / mlp_only_layers); "
                                               "merge reads models whose every layer has experts", model_path, l);
            goto done;
        }
    int Emax = cf->n_experts, reduced = 0, Etot = 0;
    for (int l = 0; l < L; l++) Emax = w->layers[l].n_experts > Emax ? w->layers[l].n_experts : Emax;
    if ((st = report_alloc(R, L, Emax))) goto done;
    int has_layers = 0;
    for (int l = 0; l < o->n_layer_experts; l++) has_layers |= o->layer_experts[l] > 0;
    if (o->budget < 0 || (o->budget > 0 && (o->experts || has_layers))) {
        st = mt_seterr(MT_ERR_ARG, "--budget %d: give either --budget or --experts/--layers", o->budget);
        goto done;
    }
    for (int l = 0; l < L; l++) {
        const int from_spec = l < o->n_layer_experts && o->layer_experts[l] > 0, E = w->layers[l].n_experts;
        const int K = o->budget ? E : from_spec ? o->layer_experts[l] : o->experts ? o->experts : E;
        Etot += E;
        if (o->budget) {
            /* counts come from the sensitivity pass below */
        } else if (K > E || (K == E && o->experts && !from_spec)) {
            st = mt_seterr(MT_ERR_ARG, "%s %d: layer %d has %d experts; K must be less", from_spec ? "--layers" : "--experts", K, l, E);
            goto done;
        }
        if (K < cf->top_k) {
            st = mt_seterr(MT_ERR_ARG, "--experts %d for layer %d is less than the %d experts each token uses", K, l,
                           cf->top_k);
            goto done;
        }
        R->layer_k[l] = K;
        if (E > Emax) Emax = E;
        reduced |= K < E;
    }
    if (o->budget && (o->budget < L * cf->top_k || o->budget >= Etot)) {
        st = mt_seterr(MT_ERR_ARG, "--budget %d: must be at least %d (top_k %d per layer) and less than the %d experts "
                                   "of the model", o->budget, L * cf->top_k, cf->top_k, Etot);
        goto done;
    }
    if (!reduced && !o->budget) {
        st = mt_seterr(MT_ERR_ARG, "merge: every layer keeps its %d experts; nothing to merge", cf->n_experts);
        goto done;
    }
    for (int l = L; l < o->n_layer_experts; l++)
        if (o->layer_experts[l]) {
            st = mt_seterr(MT_ERR_ARG, "--layers: layer %d past the model's %d layers", l, L);
            goto done;
        }
    /* quantized sources (llama.cpp's K-quants, ...) are dequantized to f32:
     * named in the report so the CLI says so */
    R->source_dtype = -1;
    for (int l = 0; l < L; l++) {
        const mt_layer_weights *Lw = &w->layers[l];
        for (int e = -1; e < Lw->n_experts; e++)
            for (int q = 0; q < (e < 0 ? 1 : 3); q++) {
                const mt_dtype t = e < 0 ? Lw->router.dtype : (q == 0 ? Lw->w1 : q == 1 ? Lw->w3 : Lw->w2)[e].dtype;
                if (mt_dtype_is_plain_float(t)) continue;
                if (R->source_dtype < 0) R->source_dtype = (int)t;
                else if (R->source_dtype != (int)t) R->source_mixed = 1;
            }
    }
    R->n_layers = L;
    R->experts_in = cf->n_experts;
    R->top_k = cf->top_k;
    for (int l = 0; l < L; l++) R->recon_err[l] = -1;

    /* Calibration. */
    c.L = L, c.E = cf->n_experts, c.H = H, c.top_k = cf->top_k, c.S = o->sample_tokens;
    c.count = calloc((size_t)L * c.E, sizeof *c.count);
    c.gate_sum = calloc((size_t)L * c.E, sizeof *c.gate_sum);
    c.sample = malloc((size_t)L * c.S * H * sizeof(float));
    c.n_sample = calloc((size_t)L, sizeof(int));
    c.seen = calloc((size_t)L, sizeof(uint64_t));
    if (!c.count || !c.gate_sum || !c.sample || !c.n_sample || !c.seen) {
        st = mt_seterr(MT_ERR_NOMEM, "out of memory for calibration statistics");
        goto done;
    }
    /* The output directory first, so that a bad path fails before the work. */
    if ((st = mt_outdir_open(&od, out_path))) goto done;
    if ((st = run_calibration(m, o, &c, R, &held))) goto done;

    /* One layer's buffers. */
    const size_t FH = (size_t)F * H;
    const int S = o->sample_tokens;
    b.W1 = malloc((size_t)Emax * FH * sizeof(float));
    b.W3 = malloc((size_t)Emax * FH * sizeof(float));
    b.W2 = malloc((size_t)Emax * FH * sizeof(float));
    b.R = malloc((size_t)Emax * H * sizeof(float));
    b.Y = malloc((size_t)Emax * S * H * sizeof(float));
    b.P = malloc((size_t)S * Emax * sizeof(float));
    b.A = malloc((size_t)S * F * sizeof(float));
    b.B = malloc((size_t)S * F * sizeof(float));
    b.O1 = malloc((size_t)Emax * FH * sizeof(float));
    b.O3 = malloc((size_t)Emax * FH * sizeof(float));
    b.O2 = malloc((size_t)Emax * FH * sizeof(float));
    b.RK = malloc((size_t)Emax * H * sizeof(float));
    b.T = malloc((size_t)S * Emax * sizeof(float));
    b.perm = malloc((size_t)Emax * F * sizeof(int));
    b.order = malloc((size_t)Emax * sizeof(int));
    b.assign = malloc((size_t)Emax * sizeof(int));
    b.score = malloc((size_t)Emax * sizeof(double));
    b.freq = malloc((size_t)Emax * sizeof(double));
    b.ascore = malloc((size_t)Emax * sizeof(double));
    b.pw1 = malloc((size_t)Emax * sizeof(float *));
    b.pw3 = malloc((size_t)Emax * sizeof(float *));
    b.pw2 = malloc((size_t)Emax * sizeof(float *));
    b.ppm = malloc((size_t)Emax * sizeof(int *));
    rowbuf = malloc((size_t)(F > H ? F : H) * 4 + 64);
    if (!b.W1 || !b.W3 || !b.W2 || !b.R || !b.Y || !b.P || !b.A || !b.B || !b.O1 || !b.O3 || !b.O2 || !b.RK ||
        !b.T || !b.perm || !rowbuf || !b.order || !b.assign || !b.score || !b.freq || !b.ascore || !b.pw1 || !b.pw3 ||
        !b.pw2 || !b.ppm) {
        st = mt_seterr(MT_ERR_NOMEM, "out of memory for one layer's merge buffers");
        goto done;
    }
    for (int l = 0; l < L; l++)
        if (c.n_sample[l] < 16) {
            st = mt_seterr(MT_ERR_ARG, "%s: only %d calibration samples for layer %d", o->calib_path, c.n_sample[l], l);
            goto done;
        }
    if (o->budget) {
        /* Sensitivity: relative layer-output error of the best kept set at
         * every K (NAEE search), then the counts with the least summed error. */
        const int C = Emax + 1;
        int *El = malloc((size_t)L * sizeof *El);
        double *cost = calloc((size_t)L * C, sizeof(double));
        if (!cost || !El) {
            free(El);
            free(cost);
            st = mt_seterr(MT_ERR_NOMEM, "out of memory for the budget");
            goto done;
        }
        uint8_t *mask = malloc((size_t)Emax);
        if (!mask) st = mt_seterr(MT_ERR_NOMEM, "out of memory for the budget");
        for (int l = 0; l < L && !st; l++) {
            merge_naee *nz = NULL;
            El[l] = w->layers[l].n_experts;
            b.E = El[l], b.K = El[l], b.H = H, b.F = F, b.top_k = cf->top_k;
            b.S = c.n_sample[l];
            b.sample_x = c.sample + (size_t)l * c.S * H;
            if (!(st = load_layer(&b, &w->layers[l], l)) && !(st = merge_naee_init(&nz, b.Y, b.P, b.E, b.S, H, b.top_k))) {
                const double en = merge_naee_energy(nz);
                for (int k = b.top_k; k <= b.E && !st; k++) {
                    double err = 0;
                    st = merge_naee_search(nz, k, mask, &err);
                    cost[(size_t)l * C + k] = R->sensitivity[l][k] = en > 0 ? err / en : 0;
                }
            }
            merge_naee_free(nz);
            if (o->progress) o->progress(o->progress_user, "merge: sensitivity layer", (uint64_t)l + 1, (uint64_t)L);
        }
        if (!st) st = merge_budget_allocate(cost, C, El, L, cf->top_k, o->budget, R->layer_k);
        free(mask);
        free(cost);
        free(El);
        if (st) goto done;
    }

    if ((st = keep_list(ck, cf, &keep, &n_keep))) goto done;
    if (n_keep) {
        int64_t maxc = 1;
        for (size_t i = 0; i < n_keep; i++) maxc = keep[i].shape[keep[i].n_dims - 1] > maxc ? keep[i].shape[keep[i].n_dims - 1] : maxc;
        if (!(keep_row = malloc((size_t)maxc * sizeof *keep_row)) || !(keep_buf = malloc((size_t)maxc * 4))) {
            st = mt_seterr(MT_ERR_NOMEM, "merge: out of memory");
            goto done;
        }
    }
    merge_run run = {m, cf, w, fam, L, H, F, &c, &b, keep, n_keep, keep_row, keep_buf, rowbuf};
    if (o->method != MT_MERGE_AUTO || R->heldout_windows == 0) {
        /* an explicit method, or auto over one calibration window (nothing
         * to hold out): reap-merge, as before auto existed, and said so */
        mt_merge_opts om = *o;
        if (om.method == MT_MERGE_AUTO) om.method = MT_MERGE_REAP_MERGE;
        R->method = om.method;
        if ((st = write_weights(&run, &om, R, mt_outdir_path(od)))) goto done;
        if ((st = write_meta(&run, model_path, out_path, o, R, mt_outdir_path(od)))) goto done;
    } else if ((st = merge_auto(&run, model_path, out_path, o, R, held, &od))) {
        goto done;
    }
    st = mt_outdir_commit(od); /* frees od whatever the outcome */
    od = NULL;
    if (st) goto done;
    R->seconds = mt_now() - t0;
done:
    mt_outdir_free(od);
    free(held);
    free(rowbuf);
    free(keep);
    free(keep_row);
    free(keep_buf);
    free(c.count);
    free(c.gate_sum);
    free(c.sample);
    free(c.n_sample);
    free(c.seen);
    free(b.W1);
    free(b.W3);
    free(b.W2);
    free(b.R);
    free(b.Y);
    free(b.P);
    free(b.A);
    free(b.B);
    free(b.O1);
    free(b.O3);
    free(b.O2);
    free(b.RK);
    free(b.T);
    free(b.perm);
    free(b.order);
    free(b.assign);
    free(b.score);
    free(b.freq);
    free(b.ascore);
    free(b.pw1);
    free(b.pw3);
    free(b.pw2);
    free(b.ppm);
    if (!rep) mt_merge_report_free(&r0);
    mt_model_free(m);
    return st;
}
