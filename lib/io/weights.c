/* weights.c — maps a checkpoint's tensors onto mt_weights, the model
 * description the runtime executes, without copying any weight.
 *
 * Which tensors, under which names (HF or GGUF) and of which shapes: the
 * family's role table (lib/io/arch), walked by mt_arch_iter. Experts in GGUF
 * are one merged 3-D tensor per role, (E, ffn, hidden) / (E, hidden, ffn),
 * or one tensor per expert in older files.
 * w1 = gate, w3 = up, w2 = down. Every shape is checked against the config,
 * every type must be one the runtime runs (is_float) with whole blocks per row.
 * An aliased layer (config moe_router_alias) has a router of R rows over K
 * experts: router_full is that (R, hidden) tensor, `alias` the row -> expert
 * map, and `router` a (K, hidden) copy of the first row aliasing each
 * expert, so that code reading one router row per expert still finds one. */
#define _GNU_SOURCE
#include "ckpt_impl.h"
#include "moetool/mt_arch.h"
#include "moetool/mt_qmoe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const mt_ckpt *ck;
    const char *path;
    int gguf;
    mt_weights *w;  /* for matrices unpacked at load (owned) */
} wctx;

static void shape_str(char *buf, size_t n, const mt_tensor *t) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int d = 0; d < t->n_dims && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* Bytes of one row of `cols` elements of type dt, or an error naming tensor. */
static int row_bytes(const wctx *w, const mt_tensor *t, int64_t cols, uint64_t *out) {
    const mt_dtype_info *di = mt_dtype_get(t->dtype);
    if (!di) return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s has an unknown storage type", w->path, t->name);
    if (!di->is_float)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s has storage type %s, which the runtime cannot run",
                         w->path, t->name, di->name);
    if (cols % di->block_elems)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: rows of %lld are not whole %s blocks of %d", w->path,
                         t->name, (long long)cols, di->name, di->block_elems);
    *out = (uint64_t)(cols / di->block_elems) * (uint64_t)di->block_bytes;
    return MT_OK;
}

/* A block type's scales must be finite: a NaN/inf d would turn every output
 * of the matrix into NaN far from its cause. Names the first such block. */
static int check_scales(const wctx *w, const mt_tensor *t, uint64_t row_bytes) {
    const mt_dtype_info *di = mt_dtype_get(t->dtype);
    if (!di || di->block_elems == 1 || di->block_bytes <= 0) return MT_OK;
    const int64_t nb = (int64_t)(t->nbytes / (uint64_t)di->block_bytes);
    const int64_t b = mt_dtype_find_nonfinite_block(t->dtype, t->data, nb);
    if (b < 0) return MT_OK;
    const uint64_t per_row = row_bytes / (uint64_t)di->block_bytes;
    return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: %s block %lld (row %llu) has a NaN or infinite scale", w->path,
                     t->name, di->name, (long long)b, (unsigned long long)(per_row ? (uint64_t)b / per_row : 0));
}

/* Finds `name` and checks it has exactly the dims d[0..nd). */
static int get_tensor(const wctx *w, const char *name, int nd, const int64_t *d, const mt_tensor **out) {
    const mt_tensor *t = mt_ckpt_find(w->ck, name);
    *out = NULL;
    if (!t) {
        char want[96];
        mt_arch_shape_str(want, sizeof want, nd, d);
        return mt_seterr(MT_ERR_NOT_FOUND, "%s: tensor %s is missing (expected shape %s)", w->path, name, want);
    }
    int ok = t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == d[i];
    if (!ok) {
        char got[96], want[96];
        mt_tensor e = {.n_dims = nd};
        for (int i = 0; i < nd; i++) e.shape[i] = d[i];
        shape_str(got, sizeof got, t);
        shape_str(want, sizeof want, &e);
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s has shape %s, expected %s", w->path, name, got, want);
    }
    *out = t;
    return MT_OK;
}

/* ---- quantized HF checkpoints ----------------------------------------------
 * AutoGPTQ / GPTQModel layout of a linear module <m> (out_features = rows,
 * in_features = cols, b bits, G groups of columns):
 *   <m>.qweight  I32 (cols·b/32, rows): 32/b codes per word along the input
 *                dimension, code j of a word in bits [j·b, (j+1)·b)
 *   <m>.qzeros   I32 (G, rows·b/32): zero points packed the same way along
 *                the output dimension, stored minus quant_zero_offset
 *   <m>.scales   F16 (G, rows)
 *   <m>.g_idx    I32 (cols), optional: group of each input column
 * weight[r][i] = scales[g][r] · (code[i][r] − zero[g][r]), g = g_idx[i]. */

static int keep_owned(const wctx *w, void *p) {
    void **o = realloc(w->w->owned, (w->w->n_owned + 1) * sizeof *o);
    if (!o) {
        free(p);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", w->path);
    }
    o[w->w->n_owned++] = p;
    w->w->owned = o;
    return MT_OK;
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* A typed tensor <base><suffix> of 1 or 2 dims, or NULL (when optional). */
static int gptq_part(const wctx *w, const char *base, const char *suffix, mt_dtype dt, int nd, const int64_t *d,
                     int optional, const mt_tensor **out) {
    char n[256];
    snprintf(n, sizeof n, "%s%s", base, suffix);
    *out = NULL;
    if (optional && !mt_ckpt_find(w->ck, n)) return MT_OK;
    const mt_tensor *t;
    int rc = get_tensor(w, n, nd, d, &t);
    if (rc) return rc;
    if (t->dtype != dt)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s has storage type %s, expected %s", w->path, n,
                         mt_dtype_name(t->dtype), mt_dtype_name(dt));
    *out = t;
    return MT_OK;
}

/* Unpacks an AutoGPTQ-layout matrix: Q4_0 / Q8_0 blocks when every group is a
 * whole number of 32-column blocks and the zero point is the symmetric one
 * (what `moetool quantize --format hf` writes), else f32. An 8-bit code 0 is
 * -128 in Q8_0, which the int8 kernels handle (|w| is their unsigned
 * operand, so 0x80 reads as 128). */
static int get_gptq(const wctx *w, const char *base, int64_t rows, int64_t cols, mt_mat *m) {
    char n[256];
    snprintf(n, sizeof n, "%s.qweight", base);
    const mt_tensor *qw = mt_ckpt_find(w->ck, n), *sc, *qz, *gi;
    if (!qw || qw->n_dims != 2 || qw->shape[1] != rows || qw->shape[0] <= 0 || (qw->shape[0] * 32) % cols)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s does not have the shape of a (%lld, %lld) matrix", w->path, n,
                         (long long)rows, (long long)cols);
    const int bits = (int)(qw->shape[0] * 32 / cols);
    if (bits != 2 && bits != 4 && bits != 8)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s holds %d-bit codes (2, 4 and 8 are supported)", w->path, n,
                         bits);
    const int per = 32 / bits;
    int rc = gptq_part(w, base, ".qweight", MT_DT_I32, 2, (const int64_t[]){cols / per, rows}, 0, &qw);
    if (rc) return rc;
    snprintf(n, sizeof n, "%s.scales", base);
    const mt_tensor *st = mt_ckpt_find(w->ck, n);
    if (!st || st->n_dims != 2 || st->shape[0] < 1 || st->shape[0] > cols)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s is missing or not (groups, %lld)", w->path, n, (long long)rows);
    const int64_t G = st->shape[0];
    if (rows % per)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s: %lld rows do not pack into 32-bit zero points", w->path, base,
                         (long long)rows);
    if ((rc = gptq_part(w, base, ".scales", MT_DT_F16, 2, (const int64_t[]){G, rows}, 0, &sc)) ||
        (rc = gptq_part(w, base, ".qzeros", MT_DT_I32, 2, (const int64_t[]){G, rows / per}, 0, &qz)) ||
        (rc = gptq_part(w, base, ".g_idx", MT_DT_I32, 1, (const int64_t[]){cols}, 1, &gi)))
        return rc;
    /* group of each column: g_idx, else consecutive groups of cols / G */
    int natural = cols % G == 0;
    const int64_t gs = natural ? cols / G : 0;
    for (int64_t i = 0; gi && i < cols; i++) {
        const int32_t g = (int32_t)rd32((const uint8_t *)gi->data + 4 * i);
        if (g < 0 || g >= G)
            return mt_seterr(MT_ERR_FORMAT, "%s: %s.g_idx[%lld] = %d is not a group (0..%lld)", w->path, base,
                             (long long)i, g, (long long)G - 1);
        if (!natural || g != i / gs) natural = 0;
    }
    if (!natural && !gi)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s: %lld groups do not divide %lld columns and there is no g_idx",
                         w->path, base, (long long)G, (long long)cols);
    const mt_gptq_view v = {bits, rows, cols, G, w->w->cfg.quant_zero_offset, qw->data, qz->data, sc->data,
                            natural ? NULL : gi->data};
    /* q4_0 / q8_0 when representable (the table's type of that AutoGPTQ width) */
    const int bt = mt_dtype_from_gptq_bits(bits);
    const mt_dtype qt = bt >= 0 && mt_gptq_is_block(&v) ? (mt_dtype)bt : MT_DT_F32;
    uint64_t rb;
    if ((rc = mt_dtype_nbytes(qt, (uint64_t)cols, &rb))) return rc;
    uint8_t *buf = malloc((size_t)(rb * (uint64_t)rows));
    if (!buf) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory unpacking %s", w->path, base);
    for (int64_t r = 0; r < rows; r++) {
        if (qt == MT_DT_F32) mt_gptq_row_to_f32(&v, r, (float *)(buf + (uint64_t)r * rb));
        else mt_gptq_row_to_blocks(&v, r, buf + (uint64_t)r * rb);
    }
    if (qt == MT_DT_F32)
        mt_log(MT_LOG_INFO, "%s: %s: %d-bit AutoGPTQ codes without a runtime block type here; unpacked to f32",
               w->path, base, bits);
    if ((rc = keep_owned(w, buf))) return rc;
    m->dtype = qt;
    m->rows = rows;
    m->cols = cols;
    m->data = buf;
    m->row_stride = rb;
    return MT_OK;
}

/* A qmoe blob `blob_name` (U8, "<weight>.qmoe") as an MT_DT_QMOE matrix of
 * (rows, cols): shape checked from its header here, the rest by the runtime
 * when it builds the dictionary (mt_model_load, mt_s2s_load). */
int mt_qmoe_blob_mat(const mt_ckpt *ck, const char *path, const char *blob_name, int64_t rows, int64_t cols,
                     mt_mat *m) {
    const mt_tensor *t = mt_ckpt_find(ck, blob_name);
    if (!t) return mt_seterr(MT_ERR_NOT_FOUND, "%s: tensor %s is missing", path, blob_name);
    if (t->dtype != MT_DT_U8 || t->n_dims != 1 || t->nbytes < MT_QMOE_HEADER_BYTES ||
        memcmp(t->data, MT_QMOE_MAGIC, 4) != 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s is not a qmoe matrix (U8 blob starting \"" MT_QMOE_MAGIC "\")",
                         path, blob_name);
    uint64_t r, c;
    memcpy(&r, (const uint8_t *)t->data + MT_QMOE_OFF_ROWS, 8);
    memcpy(&c, (const uint8_t *)t->data + MT_QMOE_OFF_COLS, 8);
    if (r != (uint64_t)rows || c != (uint64_t)cols)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s codes a (%llu, %llu) matrix, expected (%lld, %lld)", path,
                         blob_name, (unsigned long long)r, (unsigned long long)c, (long long)rows, (long long)cols);
    memset(m, 0, sizeof *m);
    m->dtype = MT_DT_QMOE;
    m->rows = rows;
    m->cols = cols;
    m->data = t->data;
    m->side.qmoe.blob_bytes = t->nbytes;
    return MT_OK;
}

/* A (rows, cols) matrix, or a vector of n as a (1, n) matrix when rows == 0. */
static int get_mat(const wctx *w, const mt_arch_tensor *role, const char *name, int64_t rows, int64_t cols,
                   mt_mat *m) {
    const mt_tensor *t;
    int64_t d[2] = {rows, cols};
    const int quant = w->gguf ? MT_QFMT_NONE : w->w->cfg.quant;
    if (quant != MT_QFMT_NONE && rows && !mt_ckpt_find(w->ck, name)) {
        const size_t len = strlen(name);
        char n[192];
        snprintf(n, sizeof n, "%s.qmoe", name);
        if (quant == MT_QFMT_QMOE && mt_ckpt_find(w->ck, n)) {
            /* the code is for expert (or dense MLP) weights only: the runtime
             * parses blobs there and nowhere else */
            if (!(role->flags & (MT_ROLE_F_EXPERT | MT_ROLE_F_DENSE)))
                return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: qmoe code is only for expert weights", w->path, n);
            return mt_qmoe_blob_mat(w->ck, w->path, n, rows, cols, m);
        }
        if (len > 7 && len < sizeof n && !strcmp(name + len - 7, ".weight")) {
            snprintf(n, sizeof n, "%.*s.qweight", (int)(len - 7), name);
            if (mt_ckpt_find(w->ck, n)) {
                n[len - 7] = 0;
                return get_gptq(w, n, rows, cols, m);
            }
        }
    }
    int rc = rows ? get_tensor(w, name, 2, d, &t) : get_tensor(w, name, 1, &d[1], &t);
    if (rc) return rc;
    uint64_t rb;
    if ((rc = row_bytes(w, t, cols, &rb))) return rc;
    uint64_t r = rows ? (uint64_t)rows : 1;
    if (t->nbytes != r * rb)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s holds %llu bytes, expected %llu", w->path, name,
                         (unsigned long long)t->nbytes, (unsigned long long)(r * rb));
    if ((rc = check_scales(w, t, rb))) return rc;
    m->dtype = t->dtype;
    m->rows = (int64_t)r;
    m->cols = cols;
    m->data = t->data;
    m->row_stride = rb;
    return MT_OK;
}

/* Expert slices of a merged (E, rows, cols) GGUF tensor. */
static int get_experts3(const wctx *w, const char *name, int E, int64_t rows, int64_t cols, mt_mat *m) {
    const mt_tensor *t;
    int64_t d[3] = {E, rows, cols};
    int rc = get_tensor(w, name, 3, d, &t);
    if (rc) return rc;
    uint64_t rb;
    if ((rc = row_bytes(w, t, cols, &rb))) return rc;
    uint64_t per = (uint64_t)rows * rb;
    if (t->nbytes != (uint64_t)E * per)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s holds %llu bytes, expected %llu", w->path, name,
                         (unsigned long long)t->nbytes, (unsigned long long)((uint64_t)E * per));
    if ((rc = check_scales(w, t, rb))) return rc;
    for (int e = 0; e < E; e++) {
        m[e].dtype = t->dtype;
        m[e].rows = rows;
        m[e].cols = cols;
        m[e].data = (const uint8_t *)t->data + (uint64_t)e * per;
        m[e].row_stride = rb;
    }
    return MT_OK;
}

/* The mt_mat(s) of a role in a layer: one, or the layer's E expert mats. */
static mt_mat *role_mats(mt_weights *w, mt_role role, int l) {
    mt_layer_weights *L = l >= 0 ? &w->layers[l] : NULL;
    switch (role) {
    case MT_ROLE_TOK_EMBD: return &w->tok_embd;
    case MT_ROLE_OUT_NORM: return &w->out_norm;
    case MT_ROLE_LM_HEAD: return &w->lm_head;
    default: break;
    }
    if (!L) return NULL;
    switch (role) {
    case MT_ROLE_ATTN_NORM: return &L->attn_norm;
    case MT_ROLE_WQ: return &L->wq;
    case MT_ROLE_WK: return &L->wk;
    case MT_ROLE_WV: return &L->wv;
    case MT_ROLE_WO: return &L->wo;
    case MT_ROLE_FFN_NORM: return &L->ffn_norm;
    case MT_ROLE_ROUTER: return &L->router_full;
    case MT_ROLE_EXP_GATE: case MT_ROLE_FFN_GATE: return L->w1;
    case MT_ROLE_EXP_UP: case MT_ROLE_FFN_UP: return L->w3;
    case MT_ROLE_EXP_DOWN: case MT_ROLE_FFN_DOWN: return L->w2;
    case MT_ROLE_BQ: return &L->bq;
    case MT_ROLE_BK: return &L->bk;
    case MT_ROLE_BV: return &L->bv;
    case MT_ROLE_SHEXP_GATE: return &L->sh_w1;
    case MT_ROLE_SHEXP_UP: return &L->sh_w3;
    case MT_ROLE_SHEXP_DOWN: return &L->sh_w2;
    case MT_ROLE_SHEXP_ROUTER: return &L->sh_gate;
    case MT_ROLE_Q_NORM: return &L->q_norm;
    case MT_ROLE_K_NORM: return &L->k_norm;
    default: return NULL;
    }
}

const mt_mat *mt_weights_mat(const mt_weights *w, mt_role role, int layer, int expert) {
    if (!w || (layer >= 0 && (!w->layers || layer >= w->cfg.n_layers))) return NULL;
    const int E = layer >= 0 ? w->layers[layer].n_experts : 0;
    const int moe_role = role == MT_ROLE_ROUTER || role == MT_ROLE_EXP_GATE || role == MT_ROLE_EXP_UP ||
                         role == MT_ROLE_EXP_DOWN || role == MT_ROLE_SHEXP_GATE || role == MT_ROLE_SHEXP_UP ||
                         role == MT_ROLE_SHEXP_DOWN || role == MT_ROLE_SHEXP_ROUTER;
    const int dense_role = role == MT_ROLE_FFN_GATE || role == MT_ROLE_FFN_UP || role == MT_ROLE_FFN_DOWN;
    if ((moe_role && E <= 0) || (dense_role && E > 0)) return NULL;
    if (role == MT_ROLE_ROUTER) return &w->layers[layer].router;
    const mt_mat *m = role_mats((mt_weights *)w, role, layer);
    if (!m || !m->data) return NULL;
    if (role == MT_ROLE_EXP_GATE || role == MT_ROLE_EXP_UP || role == MT_ROLE_EXP_DOWN) {
        if (expert < 0 || expert >= E) return NULL;
        return m + expert;
    }
    return m;
}

/* Every tensor of the family's table, located by name in the checkpoint's
 * format and checked against the shape the config implies. */
static int map_all(const wctx *x, const mt_config *c) {
    mt_arch_iter it;
    mt_arch_item a;
    int rc = mt_arch_iter_init(&it, c, 0, x->path);
    if (rc) return rc;
    const mt_format fmt = x->gguf ? MT_FMT_GGUF : MT_FMT_HF;
    while (!rc && mt_arch_iter_next(&it, &a)) {
        const mt_arch_tensor *t = a.t;
        mt_mat *m = role_mats(x->w, t->role, a.layer);
        const int64_t rows = a.n_dims == 1 ? 0 : a.shape[0], cols = a.n_dims == 1 ? a.shape[0] : a.shape[1];
        if (!(t->flags & MT_ROLE_F_EXPERT)) {
            rc = get_mat(x, a.t, x->gguf ? a.gguf : a.hf, rows, cols, m);
            continue;
        }
        char n[192];
        if (x->gguf && mt_ckpt_find(x->ck, a.gguf)) {
            rc = get_experts3(x, a.gguf, a.n_experts, rows, cols, m);
            continue;
        }
        for (int e = 0; !rc && e < a.n_experts; e++) {
            if (mt_arch_name(n, sizeof n, t, fmt, a.layer, e) < 0)
                return mt_seterr(MT_ERR_INTERNAL, "%s: tensor name of %s too long", x->path, t->label);
            rc = get_mat(x, a.t, n, rows, cols, &m[e]);
        }
    }
    return rc;
}

/* Alias maps (int32, from the config's bytes) and the anchor router rows of
 * every aliased layer, in one block; rows 64-byte aligned for the kernels. */
static int alias_init(mt_weights *w, const char *path) {
    const mt_config *c = &w->cfg;
    size_t bytes = 64;
    for (int l = 0; l < c->n_layers; l++) {
        const mt_layer_weights *L = &w->layers[l];
        if (!mt_config_router_alias(c, l) || L->n_experts <= 0) continue;
        bytes += (size_t)L->n_router_rows * sizeof(int32_t);
        bytes = (bytes + 63) & ~(size_t)63;
        bytes += (size_t)L->n_experts * L->router_full.row_stride + 64;
    }
    char *blk = calloc(1, bytes);
    if (!blk) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory for the router alias maps", path);
    w->alias_block = blk;
    char *p = (char *)(((uintptr_t)blk + 63) & ~(uintptr_t)63);
    for (int l = 0; l < c->n_layers; l++) {
        mt_layer_weights *L = &w->layers[l];
        if (!mt_config_router_alias(c, l) || L->n_experts <= 0) continue;
        const int R = L->n_router_rows, K = L->n_experts;
        int32_t *a = (int32_t *)p;
        memcpy(a, mt_config_router_alias(c, l), (size_t)R * sizeof *a);
        p += (size_t)R * sizeof(int32_t);
        p = (char *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
        const uint64_t rs = L->router_full.row_stride;
        for (int e = 0; e < K; e++) {
            int r = 0;
            while (r < R && a[r] != e) r++; /* validated: every expert has a row */
            memcpy(p + (size_t)e * rs, (const uint8_t *)L->router_full.data + (size_t)r * rs, rs);
        }
        L->alias = a;
        L->router = L->router_full;
        L->router.rows = K;
        L->router.data = p;
        p += (size_t)K * rs;
        p = (char *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
    }
    return MT_OK;
}

void mt_weights_free(mt_weights *w) {
    if (!w) return;
    free(w->layers); /* one block: layers, then every layer's expert matrices */
    free(w->alias_block);
    for (size_t i = 0; i < w->n_owned; i++) free(w->owned[i]);
    free(w->owned);
    mt_config_free(&w->cfg);
    memset(w, 0, sizeof *w);
}

/* One matrix as convert stores it in GGUF: its type (mt_io_gguf_type) and,
 * for Q/K of `heads` heads, its rows in llama.cpp's RoPE order. A copy
 * (owned) only when something changes. */
static int relayout(const wctx *x, mt_mat *m, const mt_arch_tensor *r, int n_dims, int heads) {
    int fallback = 0;
    if (!m->data) return MT_OK;
    const mt_dtype dt = mt_io_gguf_type(r, m->dtype, n_dims, m->cols, -1, &fallback);
    if (dt == m->dtype && !heads) return MT_OK;
    const int64_t hd = heads ? m->rows / heads : 0;
    if (heads && (hd <= 0 || hd % 2 || hd * heads != m->rows))
        return mt_seterr(MT_ERR_FORMAT, "%s: %s: %lld rows cannot be split into %d heads of even size", x->path,
                         r->label, (long long)m->rows, heads);
    uint64_t rb;
    int rc = mt_dtype_nbytes(dt, (uint64_t)m->cols, &rb);
    if (rc) return rc;
    uint8_t *buf = malloc((size_t)(rb * (uint64_t)m->rows));
    float *row = dt != m->dtype ? malloc((size_t)m->cols * sizeof *row) : NULL;
    if (!buf || (dt != m->dtype && !row)) {
        free(buf);
        free(row);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory for %s in GGUF layout", x->path, r->label);
    }
    for (int64_t i = 0; i < m->rows && !rc; i++) {
        const int64_t sr = heads ? mt_rope_perm_row(1, i, hd) : i;
        const uint8_t *in = (const uint8_t *)m->data + (uint64_t)sr * m->row_stride;
        if (!row) memcpy(buf + (uint64_t)i * rb, in, (size_t)rb);
        else if (!(rc = mt_row_to_f32(m->dtype, in, row, m->cols)))
            rc = mt_row_from_f32(dt, row, buf + (uint64_t)i * rb, m->cols);
    }
    free(row);
    if (rc) {
        free(buf);
        return rc;
    }
    if ((rc = keep_owned(x, buf))) return rc; /* frees buf */
    m->dtype = dt;
    m->data = buf;
    m->row_stride = rb;
    return MT_OK;
}

int mt_weights_gguf_layout(mt_weights *w, const mt_ckpt *ck) {
    if (mt_ckpt_format(ck) == MT_FMT_GGUF) return MT_OK;
    const mt_config *c = &w->cfg;
    const mt_arch *fam = mt_arch_get(c->arch);
    const wctx x = {ck, mt_ckpt_path(ck), 0, w};
    if (!fam) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported architecture %s", x.path, c->arch);
    if (mt_config_has_alias(c))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: config.json has moe_router_alias, which GGUF cannot express", x.path);
    mt_arch_iter it;
    mt_arch_item a;
    int rc = mt_arch_iter_init(&it, c, 0, x.path);
    while (!rc && mt_arch_iter_next(&it, &a)) {
        mt_mat *m = role_mats(w, a.t->role, a.layer);
        const int n = (a.t->flags & MT_ROLE_F_EXPERT) ? a.n_experts : 1;
        const int heads = mt_io_gguf_perm_heads(c, a.t);
        for (int e = 0; m && e < n && !rc; e++) rc = relayout(&x, &m[e], a.t, a.n_dims, heads);
    }
    if (rc) return rc;
    if (c->tie_embeddings) w->lm_head = w->tok_embd;
    for (int l = 0; l < c->n_layers; l++)
        if (w->layers[l].n_experts > 0) w->layers[l].router = w->layers[l].router_full;
    w->cfg.rope_style = (int)fam->gguf_rope;
    return MT_OK;
}

int mt_weights_init(mt_weights *w, const mt_ckpt *ck) {
    memset(w, 0, sizeof *w);
    if (!ck) return mt_seterr(MT_ERR_ARG, "weights: no checkpoint");
    const mt_config *c = mt_ckpt_config(ck);
    wctx x = {ck, mt_ckpt_path(ck), mt_ckpt_format(ck) == MT_FMT_GGUF, w};
    int rc = mt_config_validate(c, x.path);
    if (rc) return rc;
    if ((rc = mt_config_copy(&w->cfg, c))) return rc;

    /* One allocation: layers[n_layers], then 3 * max(1, E_l) mats per layer. */
    size_t n_mats = 0;
    for (int l = 0; l < c->n_layers; l++) {
        int E = mt_config_layer_experts(c, l);
        n_mats += 3 * (size_t)(E > 0 ? E : 1);
    }
    size_t bytes = (size_t)c->n_layers * sizeof(mt_layer_weights) + n_mats * sizeof(mt_mat);
    char *block = calloc(1, bytes);
    if (!block) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory for the model description", x.path);
    w->layers = (mt_layer_weights *)block;
    mt_mat *mats = (mt_mat *)(block + (size_t)c->n_layers * sizeof(mt_layer_weights));

    for (int l = 0; l < c->n_layers; l++) {
        mt_layer_weights *L = &w->layers[l];
        int E = mt_config_layer_experts(c, l);
        size_t k = (size_t)(E > 0 ? E : 1);
        L->n_experts = E;
        L->n_router_rows = E > 0 ? mt_config_router_rows(c, l) : 0;
        L->w1 = mats;
        L->w3 = mats + k;
        L->w2 = mats + 2 * k;
        mats += 3 * k;
    }
    rc = map_all(&x, c);
    if (!rc && c->tie_embeddings) w->lm_head = w->tok_embd;
    for (int l = 0; !rc && l < c->n_layers; l++)
        if (w->layers[l].n_experts > 0) w->layers[l].router = w->layers[l].router_full;
    if (!rc && mt_config_has_alias(c)) rc = alias_init(w, x.path);
    if (rc) mt_weights_free(w);
    return rc;
}
