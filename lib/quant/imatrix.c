/* imatrix.c — llama.cpp's importance matrix: for every weight matrix and
 * every input column, the mean of x² over the calibration tokens that the
 * matrix multiplied (llama-imatrix's method); for routed experts only the
 * tokens routed to that expert, each expert its own vector. Computed in one
 * pass of the calibration windows through the unquantized model (capture
 * hooks: attention inputs for q/k/v, attention outputs for o, each expert's
 * routed rows for gate/up and silu(gate)·up of those rows for down, every
 * FFN input for a dense FFN or shared expert, the final-norm outputs for an
 * untied lm_head). Token embeddings have none (a lookup).
 *
 * File: llama.cpp's legacy imatrix format (.dat; what llama-imatrix writes
 * with --output-format dat and llama-quantize --imatrix reads, as well as
 * its newer GGUF form), little-endian:
 *   int32 n_entries
 *   n_entries × { int32 len; char name[len] (GGUF tensor name, no NUL);
 *                 int32 ncall; int32 nval; float values[nval] }
 *   [int32 last_chunk; int32 len; char dataset[len]]   (optional trailer)
 * values of a tensor stacking n experts: n vectors of its columns, expert
 * after expert; each value is mean(x²)·ncall and a reader divides by ncall
 * (f32 division, here as in llama-quantize). A matrix that saw no token
 * stores 1·ncall (llama-imatrix does the same), i.e. equal importance. */
#include "quant_impl.h"
#include "moetool/mt_write.h"

#include "moetool/mt_arch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void mt_imatrix_free(mt_imatrix *im) {
    if (!im) return;
    for (int i = 0; im->e && i < im->n; i++) {
        free(im->e[i].values);
        free(im->e[i].sum);
        free(im->e[i].count);
    }
    free(im->e);
    memset(im, 0, sizeof *im);
}

static mt_role kind_role(int k, int moe) {
    switch (k) {
    case K_Q: return MT_ROLE_WQ;
    case K_K: return MT_ROLE_WK;
    case K_V: return MT_ROLE_WV;
    case K_O: return MT_ROLE_WO;
    case K_W1: return moe ? MT_ROLE_EXP_GATE : MT_ROLE_FFN_GATE;
    case K_W3: return moe ? MT_ROLE_EXP_UP : MT_ROLE_FFN_UP;
    case K_W2: return moe ? MT_ROLE_EXP_DOWN : MT_ROLE_FFN_DOWN;
    case K_SW1: return MT_ROLE_SHEXP_GATE;
    case K_SW3: return MT_ROLE_SHEXP_UP;
    default: return MT_ROLE_SHEXP_DOWN;
    }
}

/* The entries of m's matrices, empty: one per (layer, kind) and one for an
 * untied lm_head, named as in m's GGUF. */
static int make_entries(mt_imatrix *im, const mt_model *m) {
    const mt_config *c = mt_model_config(m);
    const mt_weights *w = mt_model_weights(m);
    const mt_arch *a = mt_arch_get(c->arch);
    memset(im, 0, sizeof *im);
    im->n_layers = c->n_layers;
    im->n = c->n_layers * K_COUNT + 1;
    if (!(im->e = calloc((size_t)im->n, sizeof *im->e))) return mt_seterr(MT_ERR_NOMEM, "imatrix: out of memory");
    for (int i = 0; i < im->n; i++) {
        mt_imatrix_entry *e = &im->e[i];
        const int l = i / K_COUNT, k = i % K_COUNT, head = i == im->n - 1;
        const mt_mat *mat;
        const mt_arch_tensor *t;
        if (head) {
            mat = c->tie_embeddings ? NULL : &w->lm_head;
            t = mt_arch_tensor_of(a, MT_ROLE_LM_HEAD);
        } else {
            mt_layer_weights *L = (mt_layer_weights *)&w->layers[l];
            mat = mt_quant_layer_mat(L, k, 0);
            t = mt_arch_tensor_of(a, kind_role(k, L->n_experts > 0));
            e->n_mat = k >= K_W1 && k <= K_W2 && L->n_experts > 0 ? L->n_experts : 1;
        }
        if (!mat || !mat->data || !t || !t->gguf) continue;
        if (head) e->n_mat = 1;
        if (mt_arch_name(e->name, sizeof e->name, t, MT_FMT_GGUF, head ? -1 : l, -1) <= 0) continue;
        e->cols = mat->cols;
        const size_t nv = (size_t)e->n_mat * (size_t)e->cols;
        e->sum = calloc(nv, sizeof *e->sum);
        e->count = calloc((size_t)e->n_mat, sizeof *e->count);
        if (!e->sum || !e->count) return mt_seterr(MT_ERR_NOMEM, "imatrix: out of memory");
    }
    return MT_OK;
}

static void add_sq(mt_imatrix_entry *e, int mat, const float *x, int64_t n_rows) {
    if (!e->sum) return;
    double *s = e->sum + (size_t)mat * (size_t)e->cols;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * e->cols;
        for (int64_t j = 0; j < e->cols; j++) s[j] += (double)xr[j] * xr[j];
    }
    e->count[mat] += (uint64_t)n_rows;
}

typedef struct {
    mt_imatrix *im;
    mt_model *m;
    int rc;
} hook_ctx;

/* Σx² of silu(x W1ᵀ)·(x W3ᵀ) for the rows x into e (expert mat). */
static int add_mid(hook_ctx *hc, mt_imatrix_entry *e, int mat, const mt_mat *w1, const mt_mat *w3, const float *x,
                   int64_t n_rows, int64_t hidden) {
    if (!e->sum) return MT_OK;
    mt_calib_rows xr, y;
    mt_calib_rows_init(&xr, hidden);
    int rc = mt_calib_rows_add(&xr, x, n_rows);
    if (!rc) rc = mt_calib_mid(&xr, w1, w3, &y);
    if (!rc) {
        for (int b = 0; b < y.nblk; b++) add_sq(e, mat, y.blk[b], mt_calib_rows_in(&y, b));
        mt_calib_rows_free(&y);
    }
    mt_calib_rows_free(&xr);
    (void)hc;
    return rc;
}

static int hook(void *user, const mt_capture_event *ev) {
    hook_ctx *hc = user;
    mt_imatrix *im = hc->im;
    if (ev->kind == MT_CAP_FINAL_NORM) {
        add_sq(&im->e[im->n - 1], 0, ev->data, ev->n_rows);
        return 0;
    }
    if (ev->layer < 0 || ev->layer >= im->n_layers) return 0;
    mt_imatrix_entry *E = im->e + (size_t)ev->layer * K_COUNT;
    const mt_layer_weights *L = &mt_model_weights(hc->m)->layers[ev->layer];
    switch (ev->kind) {
    case MT_CAP_ATTN_IN:
        for (int k = K_Q; k <= K_V; k++) add_sq(&E[k], 0, ev->data, ev->n_rows);
        return 0;
    case MT_CAP_ATTN_OUT:
        add_sq(&E[K_O], 0, ev->data, ev->n_rows);
        return 0;
    case MT_CAP_FFN_IN:
        if (L->n_experts == 0) {
            add_sq(&E[K_W1], 0, ev->data, ev->n_rows);
            add_sq(&E[K_W3], 0, ev->data, ev->n_rows);
            hc->rc = add_mid(hc, &E[K_W2], 0, &L->w1[0], &L->w3[0], ev->data, ev->n_rows, ev->n_cols);
        }
        if (L->sh_w1.data) {
            add_sq(&E[K_SW1], 0, ev->data, ev->n_rows);
            add_sq(&E[K_SW3], 0, ev->data, ev->n_rows);
            if (!hc->rc) hc->rc = add_mid(hc, &E[K_SW2], 0, &L->sh_w1, &L->sh_w3, ev->data, ev->n_rows, ev->n_cols);
        }
        return hc->rc;
    case MT_CAP_EXPERT_IN:
        if (L->n_experts == 0 || ev->expert < 0 || ev->expert >= L->n_experts) return 0;
        add_sq(&E[K_W1], ev->expert, ev->data, ev->n_rows);
        add_sq(&E[K_W3], ev->expert, ev->data, ev->n_rows);
        return hc->rc = add_mid(hc, &E[K_W2], ev->expert, &L->w1[ev->expert], &L->w3[ev->expert], ev->data, ev->n_rows,
                                ev->n_cols);
    default:
        return 0;
    }
}

/* values = float(mean x²·ncall) / ncall, what a reader of the file gets;
 * 1 where a matrix saw no token. */
static int finish(mt_imatrix *im) {
    for (int i = 0; i < im->n; i++) {
        mt_imatrix_entry *e = &im->e[i];
        if (!e->sum) continue;
        e->ncall = im->chunks > 0 ? im->chunks : 1;
        const size_t nv = (size_t)e->n_mat * (size_t)e->cols;
        if (!(e->values = malloc(nv * sizeof *e->values))) return mt_seterr(MT_ERR_NOMEM, "imatrix: out of memory");
        for (size_t v = 0; v < nv; v++) {
            const uint64_t cnt = e->count[v / (size_t)e->cols];
            const float stored = cnt ? (float)(e->sum[v] / (double)cnt) * (float)e->ncall : (float)e->ncall;
            e->values[v] = stored / (float)e->ncall;
        }
    }
    return MT_OK;
}

int mt_imatrix_compute(mt_imatrix *im, mt_model *m, const int32_t *ids, size_t n_ids, int window) {
    int rc = make_entries(im, m);
    mt_ctx *ctx = NULL;
    hook_ctx hc = {im, m, MT_OK};
    if (rc) goto done;
    if ((rc = mt_ctx_init(&ctx, m, window, window))) goto done;
    mt_ctx_set_capture(ctx, hook, &hc,
                       MT_CAP_ATTN_IN | MT_CAP_ATTN_OUT | MT_CAP_FFN_IN | MT_CAP_EXPERT_IN | MT_CAP_FINAL_NORM);
    for (size_t off = 0; off + (size_t)window <= n_ids; off += (size_t)window) {
        mt_ctx_reset(ctx);
        rc = mt_ctx_forward(ctx, ids + off, window, NULL, 0);
        if (hc.rc) rc = hc.rc;
        if (rc) goto done;
        im->chunks++;
    }
    rc = finish(im);
done:
    mt_ctx_free(ctx);
    if (rc) mt_imatrix_free(im);
    return rc;
}

const float *mt_imatrix_get(const mt_imatrix *im, int layer, int kind, int expert) {
    if (!im || !im->e) return NULL;
    const mt_imatrix_entry *e = layer < 0 ? &im->e[im->n - 1] : &im->e[(size_t)layer * K_COUNT + (size_t)kind];
    if (!e->values || expert < 0 || expert >= e->n_mat) return NULL;
    return e->values + (size_t)expert * (size_t)e->cols;
}

int mt_imatrix_write(const mt_imatrix *im, const char *path, const char *dataset) {
    /* written beside path under a registered temporary name and renamed onto
     * it when complete: a failure leaves whatever path was */
    char *tmp = NULL;
    const int fd = mt_output_tmp_create(path, &tmp);
    if (fd < 0) return fd;
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        mt_output_tmp_forget(tmp);
        free(tmp);
        return mt_seterr(MT_ERR_IO, "%s: cannot create the importance matrix file", path);
    }
    int32_t n = 0;
    for (int i = 0; i < im->n; i++) n += im->e[i].values != NULL;
    int ok = fwrite(&n, 4, 1, f) == 1;
    for (int i = 0; ok && i < im->n; i++) {
        const mt_imatrix_entry *e = &im->e[i];
        if (!e->values) continue;
        const int32_t len = (int32_t)strlen(e->name), ncall = e->ncall, nval = (int32_t)(e->n_mat * e->cols);
        ok = fwrite(&len, 4, 1, f) == 1 && fwrite(e->name, 1, (size_t)len, f) == (size_t)len &&
             fwrite(&ncall, 4, 1, f) == 1 && fwrite(&nval, 4, 1, f) == 1;
        for (int32_t v = 0; ok && v < nval; v++) {
            const uint64_t cnt = e->count ? e->count[v / e->cols] : 1;
            /* stored as llama-imatrix stores it: mean·ncall */
            const float stored = e->sum && cnt ? (float)(e->sum[v] / (double)cnt) * (float)ncall
                                 : e->sum      ? (float)ncall
                                               : e->values[v] * (float)ncall;
            ok = fwrite(&stored, 4, 1, f) == 1;
        }
    }
    const int32_t last = im->chunks, dlen = dataset ? (int32_t)strlen(dataset) : 0;
    if (ok) ok = fwrite(&last, 4, 1, f) == 1 && fwrite(&dlen, 4, 1, f) == 1 && fwrite(dataset, 1, (size_t)dlen, f) == (size_t)dlen;
    if (ok) ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (fclose(f)) ok = 0;
    if (ok) ok = rename(tmp, path) == 0;
    if (!ok) unlink(tmp);
    mt_output_tmp_forget(tmp);
    free(tmp);
    return ok ? MT_OK : mt_seterr(MT_ERR_IO, "%s: cannot write the importance matrix file", path);
}

static int rd(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

/* Bytes left in f from its position, or -1 when f cannot seek. */
static long long bytes_left(FILE *f) {
    const long pos = ftell(f);
    if (pos < 0 || fseek(f, 0, SEEK_END)) return -1;
    const long end = ftell(f);
    if (end < 0 || fseek(f, pos, SEEK_SET)) return -1;
    return (long long)end - pos;
}

/* Every size in the file is checked against the bytes that remain before
 * anything is allocated, and values are held only for tensors the model
 * has (sized by the model, not by the file): a hostile header cannot make
 * the reader allocate more than the model's own importance vectors. */
int mt_imatrix_read_stream(mt_imatrix *im, const mt_model *m, FILE *f, const char *path) {
    int rc = make_entries(im, m);
    if (rc) return rc;
    char name[256];
    int32_t n;
    if (!rd(f, &n, 4) || n < 0 || n > 1 << 24) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: not a llama.cpp imatrix (.dat) file: bad entry count", path);
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t len, ncall, nval;
        if (!rd(f, &len, 4) || len <= 0 || len >= (int32_t)sizeof name || !rd(f, name, (size_t)len) ||
            !rd(f, &ncall, 4) || !rd(f, &nval, 4) || nval < 0 || nval > 1 << 30) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: entry %d is truncated or malformed", path, (int)i);
            goto done;
        }
        name[len] = 0;
        const long long left = bytes_left(f);
        if (left >= 0 && (long long)nval * 4 > left) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: entry '%s' is truncated (%d values, %lld bytes left)", path, name,
                           (int)nval, left);
            goto done;
        }
        mt_imatrix_entry *e = NULL;
        for (int j = 0; j < im->n && !e; j++)
            if (im->e[j].sum && !strcmp(im->e[j].name, name)) e = &im->e[j];
        if (!e) { /* a tensor this model does not have: skipped, as llama-quantize does */
            float skip[256];
            for (int32_t v = 0; v < nval;) {
                const int32_t k = nval - v < 256 ? nval - v : 256;
                if (!rd(f, skip, (size_t)k * sizeof *skip)) {
                    rc = mt_seterr(MT_ERR_FORMAT, "%s: entry '%s' is truncated", path, name);
                    goto done;
                }
                v += k;
            }
            continue;
        }
        if ((int64_t)nval != e->n_mat * e->cols) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: '%s' has %d values, the model's tensor needs %lld (%d × %lld columns)",
                           path, name, (int)nval, (long long)(e->n_mat * e->cols), e->n_mat, (long long)e->cols);
            goto done;
        }
        float *vals = malloc((size_t)(nval > 0 ? nval : 1) * sizeof *vals);
        if (!vals) {
            rc = mt_seterr(MT_ERR_NOMEM, "imatrix: out of memory");
            goto done;
        }
        if (!rd(f, vals, (size_t)nval * sizeof *vals)) {
            free(vals);
            rc = mt_seterr(MT_ERR_FORMAT, "%s: entry '%s' is truncated", path, name);
            goto done;
        }
        for (int32_t v = 0; v < nval; v++)
            if (!(vals[v] >= 0) || isinf(vals[v])) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: '%s' value %d is %g (importances are finite, >= 0)", path, name, (int)v,
                               (double)vals[v]);
                free(vals);
                goto done;
            }
        for (int32_t v = 0; v < nval; v++) vals[v] = ncall > 0 ? vals[v] / (float)ncall : vals[v];
        free(e->values);
        e->values = vals;
        e->ncall = ncall;
    }
    int32_t last;
    if (rd(f, &last, 4)) im->chunks = last;
    /* the sums are not in the file: entries keep only their values */
    for (int i = 0; i < im->n; i++) {
        free(im->e[i].sum);
        free(im->e[i].count);
        im->e[i].sum = NULL;
        im->e[i].count = NULL;
    }
done:
    if (rc) mt_imatrix_free(im);
    return rc;
}

int mt_imatrix_read(mt_imatrix *im, const mt_model *m, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        memset(im, 0, sizeof *im);
        return mt_seterr(MT_ERR_IO, "%s: cannot open the importance matrix file", path);
    }
    const int rc = mt_imatrix_read_stream(im, m, f, path);
    fclose(f);
    return rc;
}
