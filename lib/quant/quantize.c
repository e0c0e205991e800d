/* quantize.c — the quantize verb's driver: options, layer-by-layer
 * calibration + GPTQ/RTN of every selected matrix (experts, optionally
 * attention), the quantized matrices swapped into the loaded model so that
 * the next layer is calibrated on the already-quantized ones (QMoE/GPTQ's
 * sequential order) and so that eval runs the result, and GGUF output.
 *
 * Memory: the quantized matrices of all layers (their storage size, f32 for
 * evaluation-only grids) plus one layer of f32 weights and Hessians.
 *
 * Codec qmoe (per-row ternary experts): each expert job also keeps its
 * symbols and f16-rounded row values; after the last layer one Tunstall
 * dictionary is built from the symbol counts of all experts, every expert
 * is coded with it and its coded matrix (MT_DT_QMOE) replaces the decoded
 * f32 one in the model, so eval runs the code. Until then the model holds
 * the decoded ternary weights, so calibration is the same with or without
 * the code. */
#define _GNU_SOURCE
#include "quant_impl.h"

#include "moetool/mt_qmoe.h"
#include "moetool/mt_write.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Raw metadata value of a GGUF key (lib/io; used to copy keys verbatim). */

void mt_quant_opts_default(mt_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->method = MT_QUANT_GPTQ;
    o->bits = 4;
    o->group = MT_QUANT_GROUP_DEFAULT;
    o->calib_tokens = 16384;
    o->calib_window = 256;
    o->damp = 0.1;
    o->block = 128;
    o->expert_cap = 4.0;
    o->min_expert_tokens = 16;
    o->sequential = 1;
}

void mt_quant_report_free(mt_quant_report *r) {
    if (!r) return;
    free(r->expert_tokens);
    r->expert_tokens = NULL;
}

/* Matrix kinds of a layer. */
enum { K_Q, K_K, K_V, K_O, K_W1, K_W3, K_W2, K_COUNT };

typedef struct {
    int used;
    mt_dtype dtype;        /* storage of data                               */
    uint8_t *data;         /* (rows, row_bytes)                              */
    uint64_t row_bytes;
    int64_t rows, cols;
    double bits;           /* storage bits per weight (nominal for f32)     */
    /* codec qmoe, until coded: symbols (rows, cols) in {-1,0,+1} and the
       f16-rounded row values lo, hi (rows) the grid used */
    int8_t *syms;
    float *lo, *hi;
    mt_qmoe_mat coded;     /* codec qmoe, after coding (dtype MT_DT_QMOE)  */
} qmat;

struct mt_quant_state {
    int n_layers, ne;      /* ne: max(1, experts) per layer                 */
    qmat *q;               /* [n_layers][K_COUNT][ne]                        */
    mt_dtype expert_dtype;
    mt_qmoe_dict dict;     /* codec qmoe: shared by every coded expert       */
};

static qmat *qm(mt_quant_state *s, int l, int k, int e) { return &s->q[((size_t)l * K_COUNT + (size_t)k) * (size_t)s->ne + (size_t)e]; }

void mt_quant_state_free(mt_quant_state *s) {
    if (!s) return;
    size_t n = (size_t)s->n_layers * K_COUNT * (size_t)s->ne;
    for (size_t i = 0; i < n; i++) {
        free(s->q[i].data);
        free(s->q[i].syms);
        free(s->q[i].lo);
        free(s->q[i].hi);
        mt_qmoe_mat_free(&s->q[i].coded);
    }
    free(s->q);
    mt_qmoe_dict_free(&s->dict);
    free(s);
}

static int q_dim(const mt_config *c) { return c->n_heads * c->head_dim; }

int mt_quant_check(const mt_quant_opts *o, const mt_config *c, int for_file) {
    mt_grid g;
    int rc;
    if (o->method != MT_QUANT_RTN && o->method != MT_QUANT_GPTQ) return mt_seterr(MT_ERR_ARG, "quantize: unknown method");
    if (o->experts_only && c->n_experts <= 0)
        return mt_seterr(MT_ERR_ARG, "quantize: the model is dense (no experts); --experts-only needs a MoE model");
    if (o->experts_only && o->attn_bits)
        return mt_seterr(MT_ERR_ARG, "quantize: --experts-only and --attn-bits exclude each other");
    if ((rc = mt_grid_make(&g, o->bits, o->group, c->hidden, "--bits/--group on expert w1/w3"))) return rc;
    if (o->codec != MT_QUANT_CODEC_NONE) {
        if (o->codec != MT_QUANT_CODEC_QMOE) return mt_seterr(MT_ERR_ARG, "quantize: unknown codec %d", (int)o->codec);
        if (g.kind != MT_GRID_TERNARY_ROW)
            return mt_seterr(MT_ERR_ARG, "quantize: --codec qmoe codes QMoE's per-row ternary grid; use --bits ternary "
                             "--group row");
        if (for_file)
            return mt_seterr(MT_ERR_ARG, "quantize: --codec qmoe has no file format yet; use --eval-only");
    }
    if (for_file && mt_grid_dtype(&g) < 0) {
        char nm[48];
        mt_grid_name(&g, nm, sizeof nm);
        return mt_seterr(MT_ERR_ARG, "quantize: %s has no GGUF type; use --eval-only to measure it (files take 8 or 4 bits "
                         "with group 32, or ternary with group 256)", nm);
    }
    if ((rc = mt_grid_make(&g, o->bits, o->group, c->ffn, "--bits/--group on expert w2"))) return rc;
    if (o->attn_bits) {
        if ((rc = mt_grid_make(&g, o->attn_bits, MT_QUANT_GROUP_DEFAULT, c->hidden, "--attn-bits on attention"))) return rc;
        if (for_file && mt_grid_dtype(&g) < 0)
            return mt_seterr(MT_ERR_ARG, "quantize: --attn-bits %d has no GGUF type; use --eval-only", o->attn_bits);
        if ((rc = mt_grid_make(&g, o->attn_bits, MT_QUANT_GROUP_DEFAULT, q_dim(c), "--attn-bits on o_proj"))) return rc;
    }
    if (o->method == MT_QUANT_GPTQ) {
        if (o->calib_window < 2 || o->calib_window > 65536)
            return mt_seterr(MT_ERR_ARG, "quantize: calibration window %d out of range", o->calib_window);
        if (o->calib_tokens < o->calib_window)
            return mt_seterr(MT_ERR_ARG, "quantize: --calib-tokens %d is less than one window of %d", o->calib_tokens,
                             o->calib_window);
        if (!(o->damp >= 0) || o->damp > 10) return mt_seterr(MT_ERR_ARG, "quantize: damping %g out of range", o->damp);
        if (o->block <= 0) return mt_seterr(MT_ERR_ARG, "quantize: block %d out of range", o->block);
        if (!(o->expert_cap > 0)) return mt_seterr(MT_ERR_ARG, "quantize: expert cap %g out of range", o->expert_cap);
    }
    return MT_OK;
}

/* ---- one matrix ----------------------------------------------------------- */
typedef struct {
    const mt_mat *src;
    qmat *out;
    mt_grid grid;
    const double *H;       /* NULL: RTN                                      */
    mt_gptq_params gp;
    int keep_syms;         /* codec qmoe: keep symbols and row values       */
    int rc;
    char err[256];
    double rel_err;        /* ‖(W−Ŵ)X‖²/‖WX‖², -1 when no H             */
} job_t;

static void run_job(job_t *j) {
    const int64_t rows = j->src->rows, cols = j->src->cols, ng = cols / j->grid.group;
    float *W = malloc((size_t)(rows * cols) * sizeof *W), *W0 = NULL;
    int8_t *codes = malloc((size_t)(rows * cols));
    float *a = malloc((size_t)(rows * ng) * sizeof *a), *b = malloc((size_t)(rows * ng) * sizeof *b);
    double *H = NULL;
    int rc = MT_OK;
    j->rel_err = -1;
    if (!W || !codes || !a || !b) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        if ((rc = mt_row_to_f32(j->src->dtype, (const uint8_t *)j->src->data + r * j->src->row_stride, W + r * cols, cols)))
            goto done;
    if (j->H) {
        H = malloc((size_t)(cols * cols) * sizeof *H);
        W0 = malloc((size_t)(rows * cols) * sizeof *W0);
        if (!H || !W0) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            goto done;
        }
        memcpy(H, j->H, (size_t)(cols * cols) * sizeof *H);
        memcpy(W0, W, (size_t)(rows * cols) * sizeof *W);
    }
    mt_grid g = j->grid;
    if (g.kind == MT_GRID_TQ2_0 && j->H) g.mse_scale = 1;
    rc = mt_gptq_quantize(W, rows, cols, H, &g, &j->gp, codes, a, b);
    if (rc) goto done;
    if (j->H) {
        double e = mt_gptq_output_err(W0, W, rows, cols, j->H);
        /* ‖WX‖² = tr(W H Wᵀ): error of an all-zero Ŵ. */
        float *Z = calloc((size_t)(rows * cols), sizeof *Z);
        if (Z) {
            double ref = mt_gptq_output_err(W0, Z, rows, cols, j->H);
            j->rel_err = ref > 0 ? e / ref : 0;
            free(Z);
        }
    }
    qmat *q = j->out;
    q->rows = rows;
    q->cols = cols;
    q->bits = mt_grid_bits(&g, cols);
    int dt = mt_grid_dtype(&g);
    if (dt >= 0) {
        q->dtype = (mt_dtype)dt;
        if ((rc = mt_dtype_nbytes(q->dtype, (uint64_t)cols, &q->row_bytes))) goto done;
        q->data = malloc((size_t)(q->row_bytes * (uint64_t)rows));
        if (!q->data) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            goto done;
        }
        for (int64_t r = 0; r < rows; r++) mt_grid_pack_row(&g, codes + r * cols, a + r * ng, cols, q->data + r * q->row_bytes);
    } else {
        q->dtype = MT_DT_F32;
        q->row_bytes = (uint64_t)cols * sizeof(float);
        q->data = (uint8_t *)W;
        W = NULL;
    }
    if (j->keep_syms) {
        /* one group per row: a = lo, b = hi, already f16-rounded (grids.c) */
        q->syms = codes;
        q->lo = a;
        q->hi = b;
        codes = NULL;
        a = b = NULL;
    }
    q->used = 1;
done:
    if (rc) snprintf(j->err, sizeof j->err, "%s", mt_last_error());
    j->rc = rc;
    free(W);
    free(W0);
    free(codes);
    free(a);
    free(b);
    free(H);
}

typedef struct {
    job_t *jobs;
    int n;
    int next;
    pthread_mutex_t mu;
} pool_t;

static void *worker(void *arg) {
    pool_t *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int i = p->next++;
        pthread_mutex_unlock(&p->mu);
        if (i >= p->n) return NULL;
        run_job(&p->jobs[i]);
    }
}

/* Runs the jobs on up to n_threads threads (GPTQ per matrix is independent). */
static int run_jobs(job_t *jobs, int n, int n_threads) {
    pool_t p = {jobs, n, 0, PTHREAD_MUTEX_INITIALIZER};
    if (n_threads > n) n_threads = n;
    if (n_threads > 64) n_threads = 64;
    pthread_t th[64];
    int started = 0;
    for (int t = 1; t < n_threads; t++)
        if (pthread_create(&th[started], NULL, worker, &p) == 0) started++;
    worker(&p);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    for (int i = 0; i < n; i++)
        if (jobs[i].rc) return mt_seterr(jobs[i].rc, "%s", jobs[i].err);
    return MT_OK;
}

static mt_mat *layer_mat(mt_layer_weights *L, int k, int e) {
    switch (k) {
    case K_Q: return &L->wq;
    case K_K: return &L->wk;
    case K_V: return &L->wv;
    case K_O: return &L->wo;
    case K_W1: return &L->w1[e];
    case K_W3: return &L->w3[e];
    default: return &L->w2[e];
    }
}

static void default_calib(const char *model_path, char *buf, size_t n) {
    struct stat sb;
    if (stat(model_path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(buf, n, "%s/data/train.txt", model_path);
        return;
    }
    const char *sl = strrchr(model_path, '/');
    if (!sl) snprintf(buf, n, "data/train.txt");
    else snprintf(buf, n, "%.*s/data/train.txt", (int)(sl - model_path), model_path);
}

static double mat_bits_stored(const mt_mat *w) {
    uint64_t b = 0;
    if (mt_dtype_nbytes(w->dtype, (uint64_t)(w->rows * w->cols), &b)) return 0;
    return (double)b * 8;
}

/* Codec qmoe: one dictionary from the symbol counts of all experts, every
 * expert coded with it and swapped into w as MT_DT_QMOE; the decoded f32
 * copies and the symbols are freed. *bits: all-in storage of the coded
 * experts including the dictionary block. */
static int code_experts(mt_quant_state *s, mt_weights *w, mt_quant_report *rep, double *bits) {
    const double t0 = mt_now();
    uint64_t counts[3] = {0, 0, 0}, code_bits = 0, total_bits = 8 * mt_qmoe_dict_bytes();
    int rc;
    for (int l = 0; l < s->n_layers; l++)
        for (int k = K_W1; k <= K_W2; k++)
            for (int e = 0; e < s->ne; e++) {
                const qmat *q = qm(s, l, k, e);
                if (q->used && q->syms && (rc = mt_qmoe_count(counts, q->syms, q->rows * q->cols))) return rc;
            }
    const uint64_t n = counts[0] + counts[1] + counts[2];
    if (!n) return mt_seterr(MT_ERR_INTERNAL, "quantize: --codec qmoe found no ternary experts to code");
    if ((rc = mt_qmoe_dict_build(&s->dict, counts, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN))) return rc;
    for (int l = 0; l < s->n_layers; l++)
        for (int k = K_W1; k <= K_W2; k++)
            for (int e = 0; e < s->ne; e++) {
                qmat *q = qm(s, l, k, e);
                if (!q->used || !q->syms) continue;
                if ((rc = mt_qmoe_encode(&q->coded, &s->dict, q->syms, q->lo, q->hi, q->rows, q->cols))) return rc;
                mt_qmoe_size sz;
                mt_qmoe_mat_size(&q->coded, &sz);
                code_bits += sz.code_bits;
                total_bits += sz.total_bits;
                mt_qmoe_mat_view(layer_mat(&w->layers[l], k, e), &q->coded);
                q->dtype = MT_DT_QMOE;
                q->row_bytes = 0;
                q->bits = (double)sz.total_bits / (double)(q->rows * q->cols);
                free(q->data);
                free(q->syms);
                free(q->lo);
                free(q->hi);
                q->data = NULL;
                q->syms = NULL;
                q->lo = q->hi = NULL;
            }
    double H = 0;
    for (int i = 0; i < 3; i++)
        if (counts[i]) H -= (double)counts[i] / (double)n * log2((double)counts[i] / (double)n);
    rep->symbol_entropy = H;
    rep->zero_frac = (double)counts[0] / (double)n;
    rep->code_bits_expert = (double)code_bits / (double)n;
    rep->code_seconds = mt_now() - t0;
    s->expert_dtype = MT_DT_QMOE;
    *bits = (double)total_bits;
    return MT_OK;
}

int mt_quant_model(mt_quant_state **out, mt_model *m, const mt_quant_opts *o, mt_quant_report *rep) {
    *out = NULL;
    memset(rep, 0, sizeof *rep);
    const mt_config *c = mt_model_config(m);
    /* The model's weight table is ours to repoint: matrices are views. */
    mt_weights *w = (mt_weights *)mt_model_weights(m);
    int rc = mt_quant_check(o, c, 0);
    if (rc) return rc;
    const double t0 = mt_now();
    mt_param_stats ps;
    mt_model_param_stats(m, &ps);
    int ne = 1;
    for (int l = 0; l < c->n_layers; l++)
        if (w->layers[l].n_experts > ne) ne = w->layers[l].n_experts;
    mt_quant_state *s = calloc(1, sizeof *s);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    job_t *jobs = NULL;
    mt_calib_stats st;
    memset(&st, 0, sizeof st);
    if (!s) return mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    s->n_layers = c->n_layers;
    s->ne = ne;
    s->q = calloc((size_t)c->n_layers * K_COUNT * (size_t)ne, sizeof *s->q);
    rep->n_layers = c->n_layers;
    rep->n_experts = c->n_experts;
    rep->expert_tokens = calloc((size_t)c->n_layers * (size_t)ne, sizeof *rep->expert_tokens);
    jobs = calloc((size_t)K_COUNT * (size_t)ne, sizeof *jobs);
    if (!s->q || !rep->expert_tokens || !jobs) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto fail;
    }
    const int gptq = o->method == MT_QUANT_GPTQ;
    if (gptq) {
        char def[4096];
        const char *cp = o->calib_path;
        if (!cp) {
            default_calib(mt_ckpt_path(mt_model_ckpt(m)), def, sizeof def);
            cp = def;
        }
        if ((rc = mt_calib_tokens(m, cp, o->calib_tokens, &ids, &n_ids))) goto fail;
        n_ids = (size_t)o->calib_tokens / (size_t)o->calib_window * (size_t)o->calib_window;
        rep->n_calib_tokens = (int)n_ids;
    }
    mt_grid ge;
    mt_grid_make(&ge, o->bits, o->group, c->hidden, "experts");
    char nm[48];
    mt_grid_name(&ge, nm, sizeof nm);
    snprintf(rep->grid_name, sizeof rep->grid_name, "%s", nm);
    rep->attn_dtype = (mt_dtype)-1;
    double qbits_new = 0, qbits_old = 0, ebits = 0, eparams = 0, rel_sum = 0;
    int rel_n = 0;
    const int nthreads = mt_model_threads(m);
    mt_gptq_params gp = {o->damp, o->block, o->act_order};
    for (int l = 0; l < c->n_layers; l++) {
        mt_layer_weights *L = &w->layers[l];
        const int lne = L->n_experts > 0 ? L->n_experts : 1;
        const int with_attn = o->attn_bits > 0;
        if (gptq) {
            const double tc = mt_now();
            uint64_t cap = (uint64_t)ceil(o->expert_cap * (double)n_ids *
                                          (L->n_experts > 0 ? (double)c->top_k / L->n_experts : 1.0));
            if ((rc = mt_calib_layer(m, l, ids, n_ids, o->calib_window, with_attn, cap, &st))) goto fail;
            rep->calib_seconds += mt_now() - tc;
            for (int e = 0; e < lne; e++) rep->expert_tokens[(size_t)l * ne + e] = st.count[e];
        }
        int nj = 0;
        for (int k = 0; k < K_COUNT; k++) {
            int is_attn = k <= K_O;
            if (is_attn && !with_attn) continue;
            for (int e = 0; e < (is_attn ? 1 : lne); e++) {
                job_t *j = &jobs[nj++];
                memset(j, 0, sizeof *j);
                j->src = layer_mat(L, k, e);
                j->out = qm(s, l, k, e);
                j->gp = gp;
                j->keep_syms = !is_attn && o->codec == MT_QUANT_CODEC_QMOE;
                if ((rc = mt_grid_make(&j->grid, is_attn ? o->attn_bits : o->bits,
                                         is_attn ? MT_QUANT_GROUP_DEFAULT : o->group, j->src->cols, "quantize")))
                    goto fail;
                if (gptq) {
                    if (is_attn) {
                        /* o_proj's input (attention output) has no capture
                         * hook: it is rounded (RTN). */
                        j->H = k == K_O ? NULL : st.h_attn;
                    } else if (st.count[e] < (uint64_t)(o->min_expert_tokens > 0 ? o->min_expert_tokens : 1)) {
                        j->H = NULL;
                        if (k == K_W1) {
                            rep->n_rtn_fallback++;
                            mt_log(MT_LOG_WARN, "quantize: layer %d expert %d got %llu calibration tokens; rounded (RTN)", l,
                                   e, (unsigned long long)st.count[e]);
                        }
                    } else {
                        j->H = k == K_W2 ? st.h_mid[e] : st.h_in[e];
                    }
                }
            }
        }
        if ((rc = run_jobs(jobs, nj, nthreads))) goto fail;
        for (int i = 0; i < nj; i++) {
            job_t *j = &jobs[i];
            const double numel = (double)(j->src->rows * j->src->cols);
            qbits_old += mat_bits_stored(j->src);
            qbits_new += j->out->bits * numel;
            if (j->rel_err >= 0) {
                rel_sum += j->rel_err;
                rel_n++;
            }
            int is_attn = j->out == qm(s, l, K_Q, 0) || j->out == qm(s, l, K_K, 0) || j->out == qm(s, l, K_V, 0) ||
                          j->out == qm(s, l, K_O, 0);
            if (!is_attn) {
                ebits += j->out->bits * numel;
                eparams += numel;
                s->expert_dtype = j->out->dtype;
            } else {
                rep->attn_dtype = j->out->dtype;
            }
            /* Swap the quantized matrix in: later layers calibrate on it. */
            mt_mat *dst = (mt_mat *)j->src;
            mt_mat nw;
            memset(&nw, 0, sizeof nw);
            nw.dtype = j->out->dtype;
            nw.rows = j->out->rows;
            nw.cols = j->out->cols;
            nw.data = j->out->data;
            nw.row_stride = j->out->row_bytes;
            *dst = nw;
        }
        mt_calib_stats_free(&st);
        if (o->progress) o->progress(o->progress_user, "quantize", (uint64_t)l + 1, (uint64_t)c->n_layers);
    }
    if (o->codec == MT_QUANT_CODEC_QMOE) {
        double coded_bits = 0;
        if ((rc = code_experts(s, w, rep, &coded_bits))) goto fail;
        qbits_new += coded_bits - ebits;
        ebits = coded_bits;
    }
    rep->expert_dtype = s->expert_dtype;
    rep->expert_params = (uint64_t)eparams;
    rep->total_params = ps.total;
    rep->bits_expert = eparams > 0 ? ebits / eparams : 0;
    rep->bits_total = ps.total ? ((double)ps.weight_bytes * 8 - qbits_old + qbits_new) / (double)ps.total : 0;
    rep->mean_rel_err = rel_n ? rel_sum / rel_n : 0;
    rep->seconds = mt_now() - t0;
    rep->peak_rss = mt_peak_rss_bytes();
    free(ids);
    free(jobs);
    *out = s;
    return MT_OK;
fail:
    mt_calib_stats_free(&st);
    free(ids);
    free(jobs);
    mt_quant_state_free(s);
    mt_quant_report_free(rep);
    return rc;
}

/* ---- GGUF output ------------------------------------------------------------ */
/* (layer, kind) of a llama.cpp tensor name; -1 when not a quantized kind. */
static int gguf_kind(const char *name, int *layer) {
    static const struct { const char *s; int k; } map[] = {
        {"attn_q", K_Q}, {"attn_k", K_K}, {"attn_v", K_V}, {"attn_output", K_O},
        {"ffn_gate_exps", K_W1}, {"ffn_up_exps", K_W3}, {"ffn_down_exps", K_W2},
        {"ffn_gate", K_W1}, {"ffn_up", K_W3}, {"ffn_down", K_W2},
    };
    char part[64];
    int l, n = 0;
    if (sscanf(name, "blk.%d.%63[^.].weight%n", &l, part, &n) != 2 || name[n]) return -1;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(part, map[i].s)) {
            *layer = l;
            return map[i].k;
        }
    return -1;
}

static uint32_t file_type(mt_dtype t) {
    switch (t) {
    case MT_DT_Q8_0: return 7;
    case MT_DT_Q4_0: return 2;
    case MT_DT_TQ2_0: return 37;
    default: return 32;
    }
}

int mt_quant_write_gguf(const mt_quant_state *s0, const mt_model *m, const char *out_path) {
    mt_quant_state *s = (mt_quant_state *)s0;
    const mt_gguf *g = mt_ckpt_gguf(mt_model_ckpt(m));
    if (!g) return mt_seterr(MT_ERR_ARG, "%s: quantized GGUF output needs a GGUF-loaded model", out_path);
    const size_t nt = mt_gguf_tensor_count(g);
    int rc;
    mt_gguf_writer *gw = NULL;
    if ((rc = mt_gguf_writer_open(&gw, out_path))) return rc;
    for (size_t k = 0; k < mt_gguf_key_count(g) && !rc; k++) {
        const char *key = mt_gguf_key_name(g, (int)k);
        if (!strcmp(key, "general.alignment")) continue;
        if (!strcmp(key, "general.file_type")) {
            rc = mt_gguf_writer_kv_u32(gw, key, file_type(s->expert_dtype));
            continue;
        }
        mt_gguf_type t;
        const void *raw;
        size_t len;
        rc = mt_gguf_kv_raw(g, (int)k, &t, &raw, &len);
        if (!rc) rc = mt_gguf_writer_kv_raw(gw, key, t, raw, len);
    }
    if (!rc && mt_gguf_find_key(g, "general.file_type") < 0)
        rc = mt_gguf_writer_kv_u32(gw, "general.file_type", file_type(s->expert_dtype));
    for (size_t i = 0; i < nt && !rc; i++) {
        const mt_tensor *t = mt_gguf_tensor(g, i);
        int l = -1, k = gguf_kind(t->name, &l);
        mt_dtype dt = t->dtype;
        if (k >= 0 && l >= 0 && l < s->n_layers && qm(s, l, k, 0)->used) {
            dt = qm(s, l, k, 0)->dtype;
            if (dt == MT_DT_F32 || dt == MT_DT_QMOE) {
                rc = mt_seterr(MT_ERR_ARG, "%s: %s was quantized on a grid without a GGUF type", out_path, t->name);
                break;
            }
        }
        rc = mt_gguf_writer_add_tensor(gw, t->name, dt, t->n_dims, t->shape);
    }
    for (size_t i = 0; i < nt && !rc; i++) {
        const mt_tensor *t = mt_gguf_tensor(g, i);
        int l = -1, k = gguf_kind(t->name, &l);
        if (k >= 0 && l >= 0 && l < s->n_layers && qm(s, l, k, 0)->used) {
            int n_e = t->n_dims == 3 ? (int)t->shape[0] : 1;
            if (n_e > s->ne) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: %s has %d experts", out_path, t->name, n_e);
                break;
            }
            for (int e = 0; e < n_e && !rc; e++) {
                const qmat *q = qm(s, l, k, e);
                if (!q->used) {
                    rc = mt_seterr(MT_ERR_INTERNAL, "%s: expert %d of %s was not quantized", out_path, e, t->name);
                    break;
                }
                rc = mt_gguf_writer_write(gw, q->data, (size_t)(q->row_bytes * (uint64_t)q->rows));
            }
        } else {
            rc = mt_gguf_writer_write(gw, t->data, (size_t)t->nbytes);
        }
    }
    if (!rc) rc = mt_gguf_writer_finish(gw);
    mt_gguf_writer_free(gw);
    return rc;
}

int mt_quantize_file(const char *in_path, const char *out_path, const mt_quant_opts *o0, int n_threads,
                     mt_quant_report *rep) {
    mt_quant_opts o = *o0;
    char calib[4096], tmp[4096];
    mt_ckpt *ck = NULL;
    mt_model *m = NULL;
    mt_quant_state *s = NULL;
    int rc, made_tmp = 0;
    memset(rep, 0, sizeof *rep);
    if ((rc = mt_ckpt_open(&ck, in_path))) return rc;
    rc = mt_quant_check(&o, mt_ckpt_config(ck), 1);
    const int is_gguf = mt_ckpt_format(ck) == MT_FMT_GGUF;
    mt_ckpt_free(ck);
    if (rc) return rc;
    if (!o.calib_path) {
        default_calib(in_path, calib, sizeof calib);
        o.calib_path = calib;
    }
    const char *src = in_path;
    if (!is_gguf) {
        /* Source in GGUF conventions (names, Q/K order, metadata) first. */
        snprintf(tmp, sizeof tmp, "%s.src-%ld.gguf", out_path, (long)getpid());
        mt_convert_opts co;
        mt_convert_opts_default(&co);
        co.to = MT_FMT_GGUF;
        if ((rc = mt_convert(in_path, tmp, &co))) return rc;
        made_tmp = 1;
        src = tmp;
    }
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = n_threads;
    rc = mt_model_load(&m, src, &mo);
    if (made_tmp) {
        /* The model keeps the temporary mapped: its name can go now, so an
         * interrupted quantize leaves no converted copy beside the output. */
        unlink(tmp);
        made_tmp = 0;
    }
    if (rc) goto done;
    if ((rc = mt_quant_model(&s, m, &o, rep))) goto done;
    rc = mt_quant_write_gguf(s, m, out_path);
    rep->peak_rss = mt_peak_rss_bytes();
done:
    mt_quant_state_free(s);
    mt_model_free(m);
    if (made_tmp) unlink(tmp);
    if (rc) mt_quant_report_free(rep);
    return rc;
}
