/* convert.c — checkpoint conversion between Hugging Face directories and
 * GGUF, and retyping within either format.
 *
 * Everything streams: a plan (one entry per output tensor: name, type,
 * shape, where its rows come from) is built and checked against the config
 * first, then each output tensor is produced row by row from the mapped
 * input, through one f32 row buffer and one output chunk buffer allocated
 * once. A merged 3-D expert tensor is therefore written expert by expert and
 * the model is never held in memory.
 *
 * HF -> GGUF follows llama.cpp's convert_hf_to_gguf.py for arch "llama":
 * tensor names (token_embd, blk.N.attn_q, blk.N.ffn_gate_exps, ...), merged
 * experts with ne = [hidden, ffn, E] (gate/up) and [ffn, hidden, E] (down),
 * Q/K rows permuted for interleaved RoPE, 1-D norms and the router in F32,
 * q8_0 rows that are not whole blocks falling back to f16. GGUF -> HF undoes
 * all of it. Outputs appear under their final name only when complete. */
#define _GNU_SOURCE
#include "moetool/mt_arch.h"
#include "moetool/mt_seq2seq.h"
#include "moetool/mt_tokenizer.h"
#include "writer_impl.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Role of a tensor name in the checkpoint's format, or NULL. */
static const mt_arch_tensor *role_of(const mt_config *c, const char *name, mt_format fmt) {
    return mt_arch_parse(mt_arch_get(c->arch), name, fmt == MT_FMT_SAFETENSORS ? MT_FMT_HF : fmt, NULL, NULL);
}

/* Kept in F32 in GGUF whatever the requested type (norms, router)? */
static int f32_in_gguf(const mt_config *c, const mt_tensor *t, mt_format fmt) {
    const mt_arch_tensor *r = role_of(c, t->name, fmt);
    return t->n_dims < 2 || (r && (r->flags & MT_ROLE_F_F32_GGUF));
}

/* ---- the plan ----------------------------------------------------------- */
enum { PERM_NONE = 0, PERM_TO_GGUF = 1, PERM_TO_HF = 2 };

typedef struct {
    char name[160];              /* output name                              */
    mt_dtype dtype;              /* output type                              */
    int n_dims;
    int64_t shape[MT_MAX_DIMS];  /* output shape, PyTorch order              */
    uint64_t nbytes;
    const mt_tensor *src;        /* single source (copy, or slice of 3-D)    */
    int slice;                   /* >= 0: expert taken from a merged source  */
    int stack;                   /* > 0: experts stacked from per-expert HF sources */
    const mt_arch_tensor *role; /* NULL: copied by name (same format)  */
    int layer;
    int perm, perm_heads;        /* Q/K row permutation                      */
    int warn_fallback;           /* q8_0 request fell back to f16            */
} plan_t;

typedef struct {
    const mt_ckpt *ck;
    const mt_config *cfg;
    const char *in_path, *out_path;
    const mt_convert_opts *o;
    plan_t *p;                   /* [n] */
    size_t n, cap;
    /* streaming buffers */
    float *row;                  /* [max_cols] */
    uint8_t *chunk;              /* [chunk_cap] */
    size_t chunk_cap, chunk_len;
    uint64_t done, total;
    /* the output: one of two writers */
    mt_gguf_writer *gw;
    mt_hf_writer *hw;
} conv;

static plan_t *plan_add(conv *cv) {
    if (cv->n == cv->cap) {
        size_t cap = cv->cap ? 2 * cv->cap : 256;
        plan_t *np = realloc(cv->p, cap * sizeof *np);
        if (!np) return NULL;
        cv->p = np;
        cv->cap = cap;
    }
    plan_t *e = &cv->p[cv->n++];
    memset(e, 0, sizeof *e);
    e->slice = -1;
    return e;
}

static int64_t shape_cols(const plan_t *e) { return e->n_dims ? e->shape[e->n_dims - 1] : 1; }

static int is_block(mt_dtype t) { return mt_dtype_get(t) && mt_dtype_get(t)->block_elems > 1; }

/* Type of a weight matrix (2-D or merged 3-D) given the request `want`. */
static mt_dtype weight_type(mt_dtype src, int want, int64_t cols, int to_gguf, int *fallback) {
    mt_dtype t = want >= 0 ? (mt_dtype)want : src;
    if (to_gguf && mt_dtype_ggml_type(t) < 0) t = MT_DT_F32;
    if (!to_gguf && !mt_dtype_st_name(t)) t = MT_DT_F32;
    if (is_block(t) && cols % mt_dtype_get(t)->block_elems) {
        *fallback = 1;
        t = MT_DT_F16;
    }
    return t;
}

/* The type convert stores a Hugging Face tensor of role r in GGUF: F32 for
 * vectors and what llama.cpp keeps in F32 (norms, router), else the request
 * (or the source's type) as weight_type chooses. Shared with the in-memory
 * GGUF layout of a loaded model (mt_weights_gguf_layout). */
mt_dtype mt_io_gguf_type(const mt_arch_tensor *r, mt_dtype src, int n_dims, int64_t cols, int want,
                         int *fallback) {
    if (n_dims == 1 || (r && (r->flags & MT_ROLE_F_F32_GGUF) && !(r->flags & MT_ROLE_F_EXPERT))) return MT_DT_F32;
    return weight_type(src, want, cols, 1, fallback);
}

/* Heads of the Q/K rows convert permutes for GGUF's RoPE (llama.cpp's
 * permute of q_proj/k_proj), or 0 when role r keeps its row order. */
int mt_io_gguf_perm_heads(const mt_config *c, const mt_arch_tensor *r) {
    if (!r || c->rope_style != MT_ROPE_HALF || !(r->flags & MT_ROLE_F_ROPE)) return 0;
    return r->role == MT_ROLE_WQ ? c->n_heads : c->n_kv_heads;
}

static int check_shape(const conv *cv, const mt_tensor *t, int n_dims, const int64_t *shape) {
    int ok = t->n_dims == n_dims;
    for (int d = 0; ok && d < n_dims; d++) ok = t->shape[d] == shape[d];
    if (ok) return MT_OK;
    char a[96] = "", b[96] = "";
    size_t k = 0;
    for (int d = 0; d < t->n_dims && k < sizeof a; d++)
        k += (size_t)snprintf(a + k, sizeof a - k, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    k = 0;
    for (int d = 0; d < n_dims && k < sizeof b; d++)
        k += (size_t)snprintf(b + k, sizeof b - k, "%s%lld", d ? "," : "", (long long)shape[d]);
    return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s' has shape (%s), the config implies (%s)", cv->in_path, t->name, a, b);
}

static const mt_tensor *need_tensor(const conv *cv, const char *name, int nd, const int64_t *shape, int *rc) {
    const mt_tensor *t = mt_ckpt_find(cv->ck, name);
    if (!t) {
        char want[96];
        mt_arch_shape_str(want, sizeof want, nd, shape);
        *rc = mt_seterr(MT_ERR_NOT_FOUND, "%s: missing tensor '%s' (expected shape %s)", cv->in_path, name, want);
    }
    return t;
}

/* Prefixes the current error message with the file and tensor. */
static int rewrap(int rc, const char *path, const char *tensor) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mt_last_error());
    return mt_seterr(rc, "%s: tensor '%s': %s", path, tensor, msg);
}

static int finish_entry(conv *cv, plan_t *e) {
    uint64_t numel = 1;
    for (int d = 0; d < e->n_dims; d++) numel *= (uint64_t)e->shape[d];
    int rc = mt_dtype_nbytes(e->dtype, numel, &e->nbytes);
    if (rc) return rewrap(rc, cv->in_path, e->name);
    cv->total += e->nbytes;
    return MT_OK;
}

/* An optional role (lm_head) is converted when the source has it; it may be
 * absent only when the config ties it to the embeddings. */
static int skip_optional(const conv *cv, const mt_arch_item *it, const char *src_name) {
    return (it->t->flags & MT_ROLE_F_OPTIONAL) && cv->cfg->tie_embeddings && !mt_ckpt_find(cv->ck, src_name);
}

/* HF (or single safetensors) -> GGUF, by the family's role table. */
static int plan_hf_to_gguf(conv *cv) {
    const mt_config *c = cv->cfg;
    int want = cv->o->dtype, rc = MT_OK;
    char nm[160];
    mt_arch_iter it;
    mt_arch_item a;
    if ((rc = mt_arch_iter_init(&it, c, MT_ITER_OPTIONAL, cv->in_path))) return rc;
    while (mt_arch_iter_next(&it, &a)) {
        const mt_arch_tensor *r = a.t;
        if (skip_optional(cv, &a, a.hf)) continue;
        plan_t *e = plan_add(cv);
        if (!e) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        e->role = r;
        e->layer = a.layer;
        snprintf(e->name, sizeof e->name, "%s", a.gguf);
        const int nd = a.n_dims;
        const int64_t *shp = a.shape;
        if (r->flags & MT_ROLE_F_EXPERT) {
            const int E = a.n_experts;
            const mt_tensor *first = NULL;
            for (int x = 0; x < E; x++) {
                mt_arch_name(nm, sizeof nm, r, MT_FMT_HF, a.layer, x);
                const mt_tensor *t = need_tensor(cv, nm, nd, shp, &rc);
                if (!t) return rc;
                if ((rc = check_shape(cv, t, nd, shp))) return rc;
                if (!first) first = t;
                else if (t->dtype != first->dtype && want < 0)
                    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: experts of layer %d have different types (%s)", cv->in_path,
                                     a.layer, t->name);
            }
            e->stack = E;
            e->src = first;
            e->n_dims = 3;
            e->shape[0] = E;
            e->shape[1] = shp[0];
            e->shape[2] = shp[1];
            e->dtype = mt_io_gguf_type(r, first->dtype, 2, shp[1], want, &e->warn_fallback);
        } else {
            const mt_tensor *t = need_tensor(cv, a.hf, nd, shp, &rc);
            if (!t) return rc;
            if ((rc = check_shape(cv, t, nd, shp))) return rc;
            e->src = t;
            e->n_dims = nd;
            memcpy(e->shape, shp, sizeof a.shape);
            e->dtype = mt_io_gguf_type(r, t->dtype, nd, nd == 1 ? shp[0] : shp[1], want, &e->warn_fallback);
            if ((e->perm_heads = mt_io_gguf_perm_heads(c, r))) e->perm = PERM_TO_GGUF;
        }
        if ((rc = finish_entry(cv, e))) return rc;
    }
    return MT_OK;
}

/* The float type of an HF output of a GGUF for the tensors GGUF keeps in
 * F32 (norms, router): the request, else the dominant plain float type (by
 * bytes) of the other 2-D+ weights, else f32 — so HF -> GGUF -> HF gives
 * the original types back. */
static mt_dtype hf_target_type(const conv *cv) {
    if (cv->o->dtype >= 0) return (mt_dtype)cv->o->dtype;
    uint64_t bytes[MT_DT_COUNT] = {0};
    for (size_t i = 0; i < mt_ckpt_count(cv->ck); i++) {
        const mt_tensor *t = mt_ckpt_get(cv->ck, i);
        if (t->n_dims >= 2 && (unsigned)t->dtype < MT_DT_COUNT && !f32_in_gguf(cv->cfg, t, MT_FMT_GGUF))
            bytes[t->dtype] += t->nbytes;
    }
    int best = -1;
    for (int d = 0; d < MT_DT_COUNT; d++)
        if (bytes[d] && mt_dtype_is_plain_float((mt_dtype)d) && (best < 0 || bytes[d] > bytes[best])) best = d;
    return best >= 0 ? (mt_dtype)best : MT_DT_F32;
}

/* The HF type of one GGUF tensor without --dtype: its own type when
 * safetensors holds it, f32 for a block-quantized one (its exact values;
 * --dtype bf16 gives a smaller, rounded copy), `tt` for what GGUF keeps in
 * F32 by convention. */
static mt_dtype hf_type_of(const conv *cv, const mt_tensor *t, const mt_arch_tensor *r, mt_dtype tt) {
    if (cv->o->dtype >= 0) return (mt_dtype)cv->o->dtype;
    if (t->n_dims < 2 || (r->flags & MT_ROLE_F_F32_GGUF)) return tt;
    if (mt_dtype_is_plain_float(t->dtype)) return t->dtype;
    return MT_DT_F32;
}

/* GGUF -> HF, by the family's role table. */
static int plan_gguf_to_hf(conv *cv) {
    const mt_config *c = cv->cfg;
    mt_dtype tt = hf_target_type(cv);
    int rc = MT_OK;
    mt_arch_iter it;
    mt_arch_item a;
    if ((rc = mt_arch_iter_init(&it, c, MT_ITER_OPTIONAL, cv->in_path))) return rc;
    while (mt_arch_iter_next(&it, &a)) {
        const mt_arch_tensor *r = a.t;
        if (skip_optional(cv, &a, a.gguf)) continue;
        const int nd = a.n_dims;
        const int64_t *shp = a.shape;
        if (r->flags & MT_ROLE_F_EXPERT) {
            const int E = a.n_experts;
            const int64_t s3[3] = {E, shp[0], shp[1]};
            const mt_tensor *t = need_tensor(cv, a.gguf, 3, s3, &rc);
            if (!t) return rc;
            if ((rc = check_shape(cv, t, 3, s3))) return rc;
            for (int x = 0; x < E; x++) {
                plan_t *e = plan_add(cv);
                if (!e) return mt_seterr(MT_ERR_NOMEM, "out of memory");
                e->role = r;
                e->layer = a.layer;
                mt_arch_name(e->name, sizeof e->name, r, MT_FMT_HF, a.layer, x);
                e->src = t;
                e->slice = x;
                e->n_dims = 2;
                memcpy(e->shape, shp, sizeof a.shape);
                e->dtype = hf_type_of(cv, t, r, tt);
                if ((rc = finish_entry(cv, e))) return rc;
            }
            continue;
        }
        const mt_tensor *t = need_tensor(cv, a.gguf, nd, shp, &rc);
        if (!t) return rc;
        if ((rc = check_shape(cv, t, nd, shp))) return rc;
        plan_t *e = plan_add(cv);
        if (!e) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        e->role = r;
        e->layer = a.layer;
        snprintf(e->name, sizeof e->name, "%s", a.hf);
        e->src = t;
        e->n_dims = nd;
        memcpy(e->shape, shp, sizeof a.shape);
        e->dtype = hf_type_of(cv, t, r, tt);
        if (c->rope_style == MT_ROPE_INTERLEAVED && (r->flags & MT_ROLE_F_ROPE)) {
            e->perm = PERM_TO_HF;
            e->perm_heads = r->role == MT_ROLE_WQ ? c->n_heads : c->n_kv_heads;
        }
        if ((rc = finish_entry(cv, e))) return rc;
    }
    return MT_OK;
}

/* Same format: every tensor, retyped. GGUF keeps norms, the router and
 * non-float tensors as they are; HF retypes every float tensor. */
static int plan_same(conv *cv, int to_gguf) {
    int want = cv->o->dtype, rc;
    for (size_t i = 0; i < mt_ckpt_count(cv->ck); i++) {
        const mt_tensor *t = mt_ckpt_get(cv->ck, i);
        plan_t *e = plan_add(cv);
        if (!e) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        if (strlen(t->name) >= sizeof e->name)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor name too long: %.60s...", cv->in_path, t->name);
        snprintf(e->name, sizeof e->name, "%s", t->name);
        e->src = t;
        e->n_dims = t->n_dims;
        memcpy(e->shape, t->shape, sizeof e->shape);
        const mt_dtype_info *di = mt_dtype_get(t->dtype);
        int retype = di && di->is_float && want >= 0;
        if (to_gguf && f32_in_gguf(cv->cfg, t, mt_ckpt_format(cv->ck))) retype = 0;
        e->dtype = retype ? weight_type(t->dtype, want, shape_cols(e), to_gguf, &e->warn_fallback) : t->dtype;
        if ((rc = finish_entry(cv, e))) return rc;
    }
    return MT_OK;
}

/* ---- streaming ---------------------------------------------------------- */
static int out_flush(conv *cv) {
    if (!cv->chunk_len) return MT_OK;
    int rc = cv->gw ? mt_gguf_writer_write(cv->gw, cv->chunk, cv->chunk_len)
                    : mt_hf_writer_write(cv->hw, cv->chunk, cv->chunk_len);
    cv->chunk_len = 0;
    return rc;
}

static int64_t perm_row(int perm, int64_t r, int64_t hd) {
    return perm == PERM_NONE ? r : mt_rope_perm_row(perm == PERM_TO_GGUF, r, hd);
}

static int stream_entry(conv *cv, const plan_t *e) {
    int64_t cols = shape_cols(e);
    uint64_t numel = 1;
    for (int d = 0; d < e->n_dims; d++) numel *= (uint64_t)e->shape[d];
    if (numel == 0) return MT_OK;
    int64_t rows = (int64_t)(numel / (uint64_t)cols);
    uint64_t out_row_bytes, in_row_bytes;
    int rc = mt_dtype_nbytes(e->dtype, (uint64_t)cols, &out_row_bytes);
    if (!rc) rc = mt_dtype_nbytes(e->src->dtype, (uint64_t)cols, &in_row_bytes);
    if (rc) return rewrap(rc, cv->in_path, e->name);
    int64_t per = e->stack ? rows / e->stack : rows;     /* rows per expert */
    int64_t hd = e->perm ? (e->shape[0] / e->perm_heads) : 0;
    if (e->perm && (hd <= 0 || hd % 2 || hd * e->perm_heads != e->shape[0]))
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s': %lld rows cannot be split into %d heads of even size",
                         cv->in_path, e->name, (long long)e->shape[0], e->perm_heads);
    const mt_tensor *src = e->src;
    char nm[160];
    for (int64_t r = 0; r < rows; r++) {
        int64_t sr;
        if (e->stack) {
            if (r % per == 0) {
                if (r > 0) mt_drop_pages(src->data, src->nbytes); /* previous expert done */
                mt_arch_name(nm, sizeof nm, e->role, MT_FMT_HF, e->layer, (int)(r / per));
                if (!(src = need_tensor(cv, nm, 2, e->shape + 1, &rc))) return rc;
                if ((rc = mt_dtype_nbytes(src->dtype, (uint64_t)cols, &in_row_bytes))) return rc;
            }
            sr = r % per;
        } else if (e->slice >= 0) {
            sr = (int64_t)e->slice * rows + r;
        } else {
            sr = perm_row(e->perm, r, hd);
        }
        const uint8_t *in = (const uint8_t *)src->data + (uint64_t)sr * in_row_bytes;
        if (cv->chunk_len + out_row_bytes > cv->chunk_cap && (rc = out_flush(cv))) return rc;
        uint8_t *dst = cv->chunk + cv->chunk_len;
        if (src->dtype == e->dtype) {
            memcpy(dst, in, (size_t)out_row_bytes);
        } else {
            const mt_dtype_info *sd = mt_dtype_get(src->dtype);
            if (sd && sd->block_elems > 1 && mt_dtype_find_nonfinite_block(src->dtype, in, cols / sd->block_elems) >= 0)
                return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s': row %lld has a %s block with a NaN or infinite scale",
                                 cv->in_path, src->name, (long long)sr, sd->name);
            if ((rc = mt_row_to_f32(src->dtype, in, cv->row, cols)) ||
                (rc = mt_row_from_f32(e->dtype, cv->row, dst, cols)))
                return rewrap(rc, cv->in_path, src->name);
        }
        cv->chunk_len += (size_t)out_row_bytes;
    }
    /* Input rows of this entry are written: let the kernel reclaim them. */
    if (e->stack || e->slice < 0)
        mt_drop_pages(src->data, src->nbytes);
    else
        mt_drop_pages((const uint8_t *)src->data + (uint64_t)e->slice * (uint64_t)rows * in_row_bytes,
                      (uint64_t)rows * in_row_bytes);
    return MT_OK;
}

/* Tensor i's bytes from the caller (quantize's matrices), expert by expert
 * for a stacked tensor; 0 with nothing written when the hook has none. */
static int stream_replaced(conv *cv, size_t i, const mt_gguf_export_hooks *h, int *done) {
    const plan_t *e = &cv->p[i];
    *done = 0;
    if (!h || !h->tensor_data) return MT_OK;
    const int parts = e->stack ? e->stack : 1;
    for (int x = 0; x < parts; x++) {
        const void *data = NULL;
        uint64_t n = 0;
        int rc = h->tensor_data(h->user, i, e->stack ? x : -1, &data, &n);
        if (rc) return rc;
        if (!data) {
            if (x == 0) return MT_OK;
            return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s': expert %d has no data", cv->out_path, e->name, x);
        }
        if ((rc = mt_gguf_writer_write(cv->gw, data, (size_t)n))) return rc;
    }
    *done = 1;
    return MT_OK;
}

static int stream_all(conv *cv, const mt_gguf_export_hooks *h) {
    int64_t max_cols = 1;
    uint64_t max_row = 0;
    for (size_t i = 0; i < cv->n; i++) {
        int64_t c = shape_cols(&cv->p[i]);
        if (c > max_cols) max_cols = c;
        uint64_t rb;
        if (mt_dtype_nbytes(cv->p[i].dtype, (uint64_t)c, &rb) == MT_OK && rb > max_row) max_row = rb;
    }
    if ((uint64_t)max_cols > SIZE_MAX / 4 || max_row > (1ull << 40))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: rows too long", cv->in_path);
    cv->chunk_cap = (size_t)(max_row > (1u << 20) ? max_row : (1u << 20));
    cv->row = malloc((size_t)max_cols * sizeof *cv->row);
    cv->chunk = malloc(cv->chunk_cap);
    if (!cv->row || !cv->chunk) return mt_seterr(MT_ERR_NOMEM, "out of memory for conversion buffers");
    for (size_t i = 0; i < cv->n; i++) {
        int replaced, rc = stream_replaced(cv, i, h, &replaced);
        if (!rc && !replaced) rc = stream_entry(cv, &cv->p[i]);
        if (!rc) rc = out_flush(cv);
        if (rc) return rc;
        cv->done += cv->p[i].nbytes;
        if (cv->o->progress) cv->o->progress(cv->o->progress_user, "convert: bytes", cv->done, cv->total);
    }
    return MT_OK;
}

static void warn_fallbacks(const conv *cv) {
    for (size_t i = 0; i < cv->n; i++)
        if (cv->p[i].warn_fallback)
            mt_log(MT_LOG_WARN, "%s: rows of %lld are not whole %s blocks; stored as f16 (as llama.cpp does)", cv->p[i].name,
                   (long long)shape_cols(&cv->p[i]), mt_dtype_get((mt_dtype)cv->o->dtype)->name);
}

/* Warns about input tensors that no output tensor uses. */
static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
static void warn_unused(const conv *cv) {
    size_t n = mt_ckpt_count(cv->ck), m = 0;
    const char **used = malloc((n + cv->n * 1 + 1) * sizeof *used);
    if (!used) return;
    /* collect the source names: stacked entries use E names, listed via the ckpt */
    for (size_t i = 0; i < cv->n; i++)
        if (!cv->p[i].stack && m < n + cv->n) used[m++] = cv->p[i].src->name;
    qsort(used, m, sizeof *used, cmp_str);
    size_t unused = 0;
    const char *first = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *nm = mt_ckpt_get(cv->ck, i)->name;
        if (bsearch(&nm, used, m, sizeof *used, cmp_str)) continue;
        const mt_arch_tensor *role = role_of(cv->cfg, nm, mt_ckpt_format(cv->ck));
        if (role && (role->flags & MT_ROLE_F_EXPERT)) continue; /* stacked */
        if (!first) first = nm;
        unused++;
    }
    if (unused)
        mt_log(MT_LOG_WARN, "%s: %zu input tensor(s) have no place in the output and are dropped (first: %s)", cv->in_path,
               unused, first);
    free(used);
}

/* ---- GGUF metadata -------------------------------------------------------- */
static uint32_t file_type_of(const conv *cv) {
    uint64_t bytes[MT_DT_COUNT] = {0};
    for (size_t i = 0; i < cv->n; i++)
        if (cv->p[i].n_dims >= 2 && !(role_of(cv->cfg, cv->p[i].name, MT_FMT_GGUF) &&
                                      (role_of(cv->cfg, cv->p[i].name, MT_FMT_GGUF)->flags & MT_ROLE_F_F32_GGUF)))
            bytes[cv->p[i].dtype] += cv->p[i].nbytes;
    int best = MT_DT_F32;
    for (int d = 0; d < MT_DT_COUNT; d++)
        if (bytes[d] > bytes[best]) best = d;
    return mt_dtype_gguf_file_type((mt_dtype)best);
}

static int gguf_tokenizer_kvs(conv *cv, mt_gguf_writer *w) {
    mt_tokenizer *tok = NULL;
    int rc = mt_tok_load_for_ckpt(&tok, cv->ck);
    if (rc) {
        mt_log(MT_LOG_WARN, "%s: no usable tokenizer (%s); the GGUF has no tokenizer metadata", cv->in_path, mt_last_error());
        mt_clearerr();
        return MT_OK;
    }
    size_t nv = mt_tok_vocab_size(tok), V = (size_t)cv->cfg->vocab;
    if (mt_tok_kind_of(tok) == MT_TOK_UNIGRAM) {
        mt_log(MT_LOG_WARN, "%s: unigram tokenizers are not written to GGUF; no tokenizer metadata written", cv->in_path);
        mt_tok_free(tok);
        return MT_OK;
    }
    if (nv > V || nv == 0) {
        mt_log(MT_LOG_WARN, "%s: tokenizer has %zu tokens for a model vocabulary of %zu; no tokenizer metadata written",
               cv->in_path, nv, V);
        mt_tok_free(tok);
        return MT_OK;
    }
    const char **pieces = calloc(V, sizeof *pieces);
    size_t *lens = calloc(V, sizeof *lens);
    float *scores = calloc(V, sizeof *scores);
    int32_t *types = calloc(V, sizeof *types);
    char *pads = calloc(V - nv + 1, 24);
    const char **merges = NULL;
    size_t *mlens = NULL, nm = 0;
    if (!pieces || !lens || !scores || !types || !pads) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < V; i++) {
        if (i < nv) {
            pieces[i] = mt_tok_piece(tok, (int)i, &lens[i]);
            scores[i] = mt_tok_score(tok, (int)i);
            types[i] = mt_tok_type(tok, (int)i);
        } else { /* padded embedding rows, named as llama.cpp names them */
            char *p = pads + 24 * (i - nv);
            lens[i] = (size_t)snprintf(p, 24, "[PAD%zu]", i);
            pieces[i] = p;
            scores[i] = -1000.0f;
            types[i] = MT_PIECE_UNUSED;
        }
    }
    int gpt2 = mt_tok_kind_of(tok) == MT_TOK_GPT2;
    rc = mt_gguf_writer_kv_str(w, "tokenizer.ggml.model", gpt2 ? "gpt2" : "llama", gpt2 ? 4 : 5);
    if (!rc) rc = mt_gguf_writer_kv_str(w, "tokenizer.ggml.pre", "default", 7);
    if (!rc) rc = mt_gguf_writer_kv_arr_str(w, "tokenizer.ggml.tokens", V, pieces, lens);
    if (!rc && !gpt2) rc = mt_gguf_writer_kv_arr(w, "tokenizer.ggml.scores", MT_GGUF_FLOAT32, scores, V);
    if (!rc) rc = mt_gguf_writer_kv_arr(w, "tokenizer.ggml.token_type", MT_GGUF_INT32, types, V);
    if (!rc && gpt2) {
        nm = mt_tok_merge_count(tok);
        merges = calloc(nm + 1, sizeof *merges);
        mlens = calloc(nm + 1, sizeof *mlens);
        if (!merges || !mlens) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < nm && !rc; i++) merges[i] = mt_tok_merge(tok, i, &mlens[i]);
        if (!rc) rc = mt_gguf_writer_kv_arr_str(w, "tokenizer.ggml.merges", nm, merges, mlens);
    }
    int bos = mt_tok_bos(tok), eos = mt_tok_eos(tok), unk = mt_tok_unk(tok);
    if (bos < 0) bos = cv->cfg->bos_id;
    if (eos < 0) eos = cv->cfg->eos_id;
    if (!rc && bos >= 0) rc = mt_gguf_writer_kv_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (!rc && eos >= 0) rc = mt_gguf_writer_kv_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    if (!rc && unk >= 0) rc = mt_gguf_writer_kv_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)unk);
    if (!rc) rc = mt_gguf_writer_kv_bool(w, "tokenizer.ggml.add_bos_token", 1);
    if (!rc) rc = mt_gguf_writer_kv_bool(w, "tokenizer.ggml.add_eos_token", 0);
    if (!rc && !gpt2) rc = mt_gguf_writer_kv_bool(w, "tokenizer.ggml.add_space_prefix", mt_tok_add_space_prefix(tok));
done:
    free(pieces);
    free(lens);
    free(scores);
    free(types);
    free(pads);
    free(merges);
    free(mlens);
    mt_tok_free(tok);
    return rc;
}

/* Base name of a path without extension, for general.name. */
static void model_name(const char *path, char *b, size_t n) {
    size_t L = strlen(path);
    while (L > 1 && path[L - 1] == '/') L--;
    size_t s = L;
    while (s > 0 && path[s - 1] != '/') s--;
    size_t len = L - s;
    const char *dot = memchr(path + s, '.', len);
    if (dot && !mt_path_is_dir(path)) len = (size_t)(dot - (path + s));
    if (len >= n) len = n - 1;
    memcpy(b, path + s, len);
    b[len] = 0;
}

/* gguf-py's model_weight_count_rounded_notation (utility.py): the count
 * scaled to K/M/B/T with at least min_digits significant integer digits or
 * decimals. Python's round() rounds half to even, as nearbyint does. */
static void weight_count_notation(char *b, size_t n, uint64_t count, int min_digits) {
    double x = (double)count, scaled;
    const char *suffix;
    if (x > 1e12) scaled = x * 1e-12, suffix = "T";
    else if (x > 1e9) scaled = x * 1e-9, suffix = "B";
    else if (x > 1e6) scaled = x * 1e-6, suffix = "M";
    else scaled = x * 1e-3, suffix = "K";
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", nearbyint(scaled));
    const char *d = digits;
    while (*d == '0') d++;
    int fix = min_digits - (int)strlen(d);
    snprintf(b, n, "%.*f%s", fix > 0 ? fix : 0, scaled, suffix);
}

/* general.size_label as llama.cpp's converter computes it from the tensors it
 * writes (GGUFWriter.get_total_parameter_count + gguf.size_label): for MoE,
 * "<experts>x<shared + one expert's params>", else the total. */
static void size_label_of(const conv *cv, char *b, size_t n) {
    uint64_t total = 0, shared = 0, expert = 0, expert_sum = 0, n_exp_tensors = 0;
    for (size_t i = 0; i < cv->n; i++) {
        const int nd = cv->p[i].n_dims;
        uint64_t size = 1;
        for (int d = 0; d < nd; d++) size *= (uint64_t)cv->p[i].shape[d];
        const char *name = cv->p[i].name;
        if (strstr(name, "_exps.") && nd >= 3) {
            uint64_t ne = (uint64_t)cv->p[i].shape[strstr(name, ".bias") ? nd - 2 : nd - 3];
            if (ne) expert += size / ne;
            expert_sum += ne;
            n_exp_tensors++;
        } else {
            shared += size;
        }
        total += size;
    }
    uint64_t n_exp = n_exp_tensors ? expert_sum / n_exp_tensors : 0;
    if (n_exp > 0) {
        char pretty[32];
        weight_count_notation(pretty, sizeof pretty, shared + expert, 2);
        snprintf(b, n, "%llux%s", (unsigned long long)n_exp, pretty);
    } else {
        weight_count_notation(b, n, total, 2);
    }
}

/* chat_template of tokenizer_config.json beside an HF input, as llama.cpp's
 * converter stores it: a string as tokenizer.chat_template; a list of
 * {name, template} as tokenizer.chat_template ("default") and
 * tokenizer.chat_template.<name>. No file or no template: nothing. */
static int gguf_chat_template_kvs(conv *cv, mt_gguf_writer *w) {
    char *dir = mt_path_is_dir(cv->in_path) ? strdup(cv->in_path) : mt_path_dir(cv->in_path);
    char *p = dir ? mt_path_join(dir, "tokenizer_config.json") : NULL;
    free(dir);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = MT_OK;
    json_t *j = mt_path_exists(p) ? json_load_file(p, 0, NULL) : NULL;
    json_t *t = j ? json_object_get(j, "chat_template") : NULL;
    if (json_is_string(t)) {
        rc = mt_gguf_writer_kv_str(w, "tokenizer.chat_template", json_string_value(t), json_string_length(t));
    } else if (json_is_array(t)) {
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e) {
            json_t *nm = json_object_get(e, "name"), *tp = json_object_get(e, "template");
            if (rc || !json_is_string(nm) || !json_is_string(tp)) continue;
            char key[256];
            if (!strcmp(json_string_value(nm), "default")) snprintf(key, sizeof key, "tokenizer.chat_template");
            else if ((size_t)snprintf(key, sizeof key, "tokenizer.chat_template.%s", json_string_value(nm)) >= sizeof key)
                continue;
            rc = mt_gguf_writer_kv_str(w, key, json_string_value(tp), json_string_length(tp));
        }
    }
    json_decref(j);
    free(p);
    return rc;
}

/* general.* and the family's "<arch>.*" hyperparameters, as llama.cpp's
 * convert_hf_to_gguf.py writes them for that architecture (mt_arch.gguf_arch;
 * families with their own expert size write expert_feed_forward_length and
 * expert_shared_feed_forward_length beside feed_forward_length). */
static int gguf_family_check(const conv *cv) {
    const mt_config *c = cv->cfg;
    const mt_arch *fam = mt_arch_get(c->arch);
    if (!fam) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported architecture %s", cv->in_path, c->arch);
    const char *ga = fam->gguf_arch;
    for (int l = 0; fam->hf_sparse_layers && c->n_experts > 0 && l < c->n_layers; l++)
        if (mt_config_layer_experts(c, l) == 0)
            return mt_seterr(MT_ERR_UNSUPPORTED,
                             "%s: layer %d is a dense MLP (decoder_sparse_step / mlp_only_layers), which llama.cpp's "
                             "%s GGUF cannot hold", cv->in_path, l, ga);
    if (fam->gguf_kv_eq_heads && c->n_kv_heads != c->n_heads)
        return mt_seterr(MT_ERR_UNSUPPORTED,
                         "%s: %d key/value heads for %d query heads: llama.cpp's %s GGUF holds k_norm of the hidden "
                         "size only (no grouped-query attention)", cv->in_path, c->n_kv_heads, c->n_heads, ga);
    return MT_OK;
}

/* set_ft 0: general.file_type of the planned types and general.quantized_by
 * beside it; 1: file type `ft`, and quantized_by is left to the caller
 * (after every other key, the order of quantize's GGUF -> GGUF rewrite). */
static int gguf_family_kvs(conv *cv, mt_gguf_writer *w, int set_ft, uint32_t ft_set) {
    const mt_config *c = cv->cfg;
    const mt_arch *fam = mt_arch_get(c->arch);
    int rc = gguf_family_check(cv);
    if (rc) return rc;
    const char *ga = fam->gguf_arch;
    char name[256], size_label[64], key[96];
#define AK(suffix) (snprintf(key, sizeof key, "%s.%s", ga, suffix), key)
    model_name(cv->in_path, name, sizeof name);
    size_label_of(cv, size_label, sizeof size_label);
    const uint32_t ft = set_ft ? ft_set : file_type_of(cv);
    rc = mt_gguf_writer_kv_str(w, "general.architecture", ga, strlen(ga));
    if (!rc) rc = mt_gguf_writer_kv_str(w, "general.type", "model", 5);
    if (!rc) rc = mt_gguf_writer_kv_str(w, "general.name", name, strlen(name));
    if (!rc) rc = mt_gguf_writer_kv_str(w, "general.basename", name, strlen(name));
    if (!rc) rc = mt_gguf_writer_kv_str(w, "general.size_label", size_label, strlen(size_label));
    if (!rc && !set_ft) rc = mt_gguf_writer_kv_quantized_by(w, ft);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, "general.file_type", ft);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, "general.quantization_version", 2);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("vocab_size"), (uint32_t)c->vocab);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("context_length"), (uint32_t)c->max_pos);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("embedding_length"), (uint32_t)c->hidden);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("block_count"), (uint32_t)c->n_layers);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("feed_forward_length"),
                                        (uint32_t)(fam->hf_key_expert_ffn ? mt_config_dense_ffn(c) : c->ffn));
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("rope.dimension_count"), (uint32_t)c->head_dim);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("attention.head_count"), (uint32_t)c->n_heads);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    if (!rc) rc = mt_gguf_writer_kv_f32(w, AK("rope.freq_base"), c->rope_theta);
    if (!rc) rc = mt_gguf_writer_kv_f32(w, AK("attention.layer_norm_rms_epsilon"), c->norm_eps);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("attention.key_length"), (uint32_t)c->head_dim);
    if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("attention.value_length"), (uint32_t)c->head_dim);
    if (!rc && c->n_experts > 0) {
        rc = mt_gguf_writer_kv_u32(w, AK("expert_count"), (uint32_t)c->n_experts);
        if (!rc) rc = mt_gguf_writer_kv_u32(w, AK("expert_used_count"), (uint32_t)c->top_k);
        if (!rc && fam->hf_key_expert_ffn)
            rc = mt_gguf_writer_kv_u32(w, AK("expert_feed_forward_length"), (uint32_t)c->ffn);
        if (!rc && fam->n_shared_experts > 0)
            rc = mt_gguf_writer_kv_u32(w, AK("expert_shared_feed_forward_length"), (uint32_t)c->ffn_shared);
        /* a checkpoint overriding the family's top-k normalisation says so
         * (llama.cpp's own key; its qwen2moe graph never renormalises) */
        if (!rc && mt_config_renorm_topk(c) != fam->renorm_topk) {
            const uint8_t v = (uint8_t)mt_config_renorm_topk(c);
            rc = mt_gguf_writer_kv_bool(w, AK("expert_weights_norm"), v);
        }
        int per_layer = 0;
        for (int l = 0; c->layer_experts && l < c->n_layers; l++) per_layer |= c->layer_experts[l] > 0;
        if (!rc && per_layer) {
            uint32_t *le = malloc((size_t)c->n_layers * sizeof *le);
            if (!le) return mt_seterr(MT_ERR_NOMEM, "out of memory");
            for (int l = 0; l < c->n_layers; l++) le[l] = (uint32_t)mt_config_layer_experts(c, l);
            rc = mt_gguf_writer_kv_arr(w, "moetool.layer_experts", MT_GGUF_UINT32, le, (uint64_t)c->n_layers);
            free(le);
        }
    }
#undef AK
    if (!rc) rc = gguf_tokenizer_kvs(cv, w);
    if (!rc) rc = gguf_chat_template_kvs(cv, w);
    return rc;
}

/* GGUF -> GGUF: every key as it was, but the file type and the alignment. */
static int gguf_copy_kvs(conv *cv) {
    const mt_gguf *g = mt_ckpt_gguf(cv->ck);
    if (!g) return mt_seterr(MT_ERR_INTERNAL, "%s: GGUF checkpoint without GGUF", cv->in_path);
    int rc = MT_OK;
    for (size_t k = 0; k < mt_gguf_key_count(g) && !rc; k++) {
        const char *key = mt_gguf_key_name(g, (int)k);
        if (!strcmp(key, "general.alignment") || !strcmp(key, "general.quantized_by")) continue;
        if (!strcmp(key, "general.file_type")) {
            rc = mt_gguf_writer_kv_u32(cv->gw, key, file_type_of(cv));
            if (!rc) rc = mt_gguf_writer_kv_quantized_by(cv->gw, file_type_of(cv));
            continue;
        }
        mt_gguf_type t;
        const void *raw;
        size_t len;
        rc = mt_gguf_kv_raw(g, (int)k, &t, &raw, &len);
        if (!rc) rc = mt_gguf_writer_kv_raw(cv->gw, key, t, raw, len);
    }
    return rc;
}

/* ---- HF side files -------------------------------------------------------- */
static int copy_file(const char *src_dir, const char *name, const char *dst_dir) {
    char *src = mt_path_join(src_dir, name);
    if (!src) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = MT_OK;
    if (mt_path_exists(src)) {
        mt_mapped m;
        rc = mt_map_file(&m, src);
        if (!rc) rc = mt_write_small_file(dst_dir, name, m.data, m.size);
        mt_unmap_file(&m);
    }
    free(src);
    return rc;
}

static int write_json(const char *dir, const char *name, json_t *j) {
    char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!text) return mt_seterr(MT_ERR_NOMEM, "%s/%s: cannot build JSON", dir, name);
    size_t n = strlen(text);
    char *t2 = realloc(text, n + 2);
    if (!t2) {
        free(text);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    t2[n] = '\n';
    int rc = mt_write_small_file(dir, name, t2, n + 1);
    free(t2);
    return rc;
}

/* config.json of an HF -> HF output: the source's, with torch_dtype updated. */
static int hf_config_from_source(conv *cv, const char *src_dir, const char *dst, mt_dtype tt) {
    char *p = mt_path_join(src_dir, "config.json");
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    json_error_t err;
    json_t *j = json_load_file(p, 0, &err);
    free(p);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        char *text = NULL;
        int rc = mt_config_to_hf_json(&text, cv->cfg, mt_dtype_config_torch_name(tt, "float32"));
        if (rc) return rc;
        rc = mt_write_small_file(dst, "config.json", text, strlen(text));
        free(text);
        return rc;
    }
    json_object_set_new(j, "torch_dtype", json_string(mt_dtype_config_torch_name(tt, "float32")));
    return write_json(dst, "config.json", j);
}

static int hf_tokenizer_from_gguf(conv *cv, const char *dst) {
    mt_tokenizer *tok = NULL;
    if (mt_tok_load_for_ckpt(&tok, cv->ck) != MT_OK) {
        mt_log(MT_LOG_WARN, "%s: no tokenizer in the GGUF (%s); the output has none", cv->in_path, mt_last_error());
        mt_clearerr();
        return MT_OK;
    }
    int rc = MT_OK;
    int bos = mt_tok_bos(tok), eos = mt_tok_eos(tok), unk = mt_tok_unk(tok);
    if (mt_tok_kind_of(tok) == MT_TOK_SPM) {
        char *p = mt_path_join(dst, "tokenizer.model");
        if (!p) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        else rc = mt_tok_write_spm(tok, p);
        free(p);
        if (!rc) rc = mt_tok_write_hf_json(tok, dst);
        if (!rc) {
            json_t *j = json_object();
            size_t len;
            const char *s;
            json_object_set_new(j, "add_bos_token", json_true());
            json_object_set_new(j, "add_eos_token", json_false());
            if (bos >= 0 && (s = mt_tok_piece(tok, bos, &len))) json_object_set_new(j, "bos_token", json_stringn(s, len));
            if (eos >= 0 && (s = mt_tok_piece(tok, eos, &len))) json_object_set_new(j, "eos_token", json_stringn(s, len));
            if (unk >= 0 && (s = mt_tok_piece(tok, unk, &len))) json_object_set_new(j, "unk_token", json_stringn(s, len));
            json_object_set_new(j, "legacy", json_true());
            json_object_set_new(j, "model_max_length", json_integer(cv->cfg->max_pos));
            json_object_set_new(j, "tokenizer_class", json_string("LlamaTokenizer"));
            const mt_gguf *g = mt_ckpt_gguf(cv->ck);
            const char *tmpl;
            uint64_t tlen;
            if (g && mt_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tlen) == MT_OK)
                json_object_set_new(j, "chat_template", json_stringn(tmpl, (size_t)tlen));
            rc = write_json(dst, "tokenizer_config.json", j);
        }
    } else {
        mt_log(MT_LOG_WARN, "%s: GPT-2 style vocabularies are not written back to tokenizer.json; the output has no tokenizer",
               cv->in_path);
    }
    mt_tok_free(tok);
    return rc;
}

static int hf_generation_config(conv *cv, const char *dst) {
    json_t *j = json_object();
    json_object_set_new(j, "_from_model_config", json_true());
    if (cv->cfg->bos_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(cv->cfg->bos_id));
    if (cv->cfg->eos_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(cv->cfg->eos_id));
    return write_json(dst, "generation_config.json", j);
}

/* ---- entry points -------------------------------------------------------- */
/* An output without the tokenizer is no use for text: refuse where the
 * tokenizer cannot be read or written, naming why. */
static int check_tokenizer(conv *cv, int to_gguf) {
    mt_tokenizer *tok = NULL;
    if (mt_tok_load_for_ckpt(&tok, cv->ck) != MT_OK) {
        char *why = strdup(mt_last_error());
        int rc = mt_seterr(MT_ERR_NOT_FOUND, "%s; the output would have no tokenizer (--no-tokenizer to write it anyway)",
                           why ? why : cv->in_path);
        free(why);
        return rc;
    }
    int rc = MT_OK;
    size_t nv = mt_tok_vocab_size(tok), V = (size_t)cv->cfg->vocab;
    if (to_gguf && mt_tok_kind_of(tok) == MT_TOK_UNIGRAM)
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: unigram tokenizers are not written to GGUF; the output would have no "
                       "tokenizer (--no-tokenizer to write it anyway)", cv->in_path);
    else if (to_gguf && (nv > V || nv == 0))
        rc = mt_seterr(MT_ERR_FORMAT, "%s: tokenizer has %zu tokens for a model vocabulary of %zu; the output would have no "
                       "tokenizer (--no-tokenizer to write it anyway)", cv->in_path, nv, V);
    else if (!to_gguf && mt_ckpt_format(cv->ck) == MT_FMT_GGUF && mt_tok_kind_of(tok) != MT_TOK_SPM)
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: GPT-2 style vocabularies are not written back to tokenizer.json; the output "
                       "would have no tokenizer (--no-tokenizer to write it anyway)", cv->in_path);
    mt_tok_free(tok);
    return rc;
}

/* The checks every conversion makes, then its plan. */
static int conv_prepare(conv *cv, int to_gguf) {
    const int from_gguf = mt_ckpt_format(cv->ck) == MT_FMT_GGUF;
    const mt_config *c = cv->cfg;
    int rc;
    if (c->quant != MT_QFMT_NONE)
        return mt_seterr(MT_ERR_UNSUPPORTED,
                         "%s: the checkpoint is quantized (quantization_config %s); convert reads unquantized "
                         "weights (quantize the original to GGUF with `moetool quantize` instead)",
                         cv->in_path, c->quant == MT_QFMT_QMOE ? "qmoe" : "gptq");
    /* GGUF has no key for moetool's alias routing, and llama.cpp could not
     * run R router rows over K experts: refuse rather than drop it. */
    if (to_gguf && mt_config_has_alias(c))
        return mt_seterr(MT_ERR_UNSUPPORTED,
                         "%s: config.json has moe_router_alias (more router rows than experts), which GGUF cannot "
                         "express; convert to a Hugging Face directory instead",
                         cv->in_path);

    /* llama.cpp reads one expert count per model (and so does transformers):
     * a GGUF of per-layer counts runs in moetool only. No exact padding
     * exists: a router without a bias cannot switch a padded expert off. */
    if (to_gguf && !cv->o->moetool_only) {
        char counts[256] = "";
        size_t k = 0;
        int uniform = 1;
        for (int l = 0; l < c->n_layers; l++) {
            const int dense = c->layer_experts && c->layer_experts[l] == MT_LAYER_DENSE; /* the family's */
            uniform &= dense || mt_config_layer_experts(c, l) == c->n_experts;
            if (k < sizeof counts - 16)
                k += (size_t)snprintf(counts + k, sizeof counts - k, "%s%d", l ? "," : "", mt_config_layer_experts(c, l));
        }
        if (!uniform)
            return mt_seterr(MT_ERR_UNSUPPORTED,
                             "%s: its layers keep different numbers of experts (%s), which llama.cpp cannot load and "
                             "no padding can make exact (a router without a bias cannot switch padded experts off); "
                             "--moetool-only writes a GGUF that only moetool runs",
                             cv->in_path, counts);
    }
    if (cv->o->require_tokenizer && (rc = check_tokenizer(cv, to_gguf))) return rc;

    if (to_gguf && !from_gguf) return plan_hf_to_gguf(cv);
    if (!to_gguf && from_gguf) return plan_gguf_to_hf(cv);
    return plan_same(cv, to_gguf);
}

/* ---- a Hugging Face checkpoint as GGUF: convert's, shared with quantize ---- */
struct mt_gguf_export {
    conv cv;
    mt_convert_opts o;
};

void mt_gguf_export_free(mt_gguf_export *x) {
    if (!x) return;
    free(x->cv.p);
    free(x->cv.row);
    free(x->cv.chunk);
    free(x);
}

int mt_gguf_export_open(mt_gguf_export **out, const mt_ckpt *ck, const mt_convert_opts *o) {
    *out = NULL;
    if (mt_ckpt_format(ck) == MT_FMT_GGUF)
        return mt_seterr(MT_ERR_INTERNAL, "%s: the GGUF export of a checkpoint that is GGUF already", mt_ckpt_path(ck));
    mt_gguf_export *x = calloc(1, sizeof *x);
    if (!x) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    if (o) x->o = *o;
    else mt_convert_opts_default(&x->o);
    x->o.to = MT_FMT_GGUF;
    x->cv.ck = ck;
    x->cv.cfg = mt_ckpt_config(ck);
    x->cv.in_path = mt_ckpt_path(ck);
    x->cv.o = &x->o;
    int rc = conv_prepare(&x->cv, 1);
    if (!rc) rc = gguf_family_check(&x->cv);
    if (rc) {
        mt_gguf_export_free(x);
        return rc;
    }
    *out = x;
    return MT_OK;
}

void mt_gguf_export_warn(const mt_gguf_export *x) {
    warn_unused(&x->cv);
    warn_fallbacks(&x->cv);
}

size_t mt_gguf_export_count(const mt_gguf_export *x) { return x->cv.n; }

void mt_gguf_export_tensor_get(const mt_gguf_export *x, size_t i, mt_gguf_export_tensor *t) {
    const plan_t *e = &x->cv.p[i];
    t->name = e->name;
    t->role = e->role;
    t->layer = e->layer;
    t->n_experts = e->stack;
    t->dtype = e->dtype;
    t->n_dims = e->n_dims;
    t->shape = e->shape;
    t->nbytes = e->nbytes;
}

/* The metadata and tensor infos; the caller streams the data. */
static int export_header(mt_gguf_export *x, mt_gguf_writer *w, const mt_gguf_export_hooks *h) {
    conv *cv = &x->cv;
    const int set_ft = h && h->set_file_type;
    int rc = gguf_family_kvs(cv, w, set_ft, set_ft ? h->file_type : 0);
    /* a rewrite's key order: the writer's mark, quantized_by, then the caller's */
    if (!rc && set_ft) rc = mt_gguf_writer_kv_str(w, MT_GGUF_MOETOOL_KEY, "moetool", 7);
    if (!rc && set_ft) rc = mt_gguf_writer_kv_quantized_by(w, h->file_type);
    if (!rc && h && h->extra_kvs) rc = h->extra_kvs(h->user, w);
    for (size_t i = 0; i < cv->n && !rc; i++) {
        mt_dtype dt = cv->p[i].dtype;
        if (h && h->tensor_type) dt = h->tensor_type(h->user, i, dt);
        rc = mt_gguf_writer_add_tensor(w, cv->p[i].name, dt, cv->p[i].n_dims, cv->p[i].shape);
    }
    return rc;
}

int mt_gguf_export_sizes(mt_gguf_export *x, uint64_t *tensor_bytes, uint64_t *header_bytes) {
    mt_gguf_writer *w = NULL;
    int rc = mt_gguf_writer_open_measure(&w, x->cv.in_path);
    if (!rc) rc = export_header(x, w, NULL);
    if (!rc) *header_bytes = mt_gguf_writer_header_bytes(w);
    mt_gguf_writer_free(w);
    *tensor_bytes = 0;
    for (size_t i = 0; i < x->cv.n; i++) *tensor_bytes += x->cv.p[i].nbytes;
    return rc;
}

int mt_gguf_export_write(mt_gguf_export *x, const char *out_path, const mt_gguf_export_hooks *h) {
    conv *cv = &x->cv;
    cv->out_path = out_path;
    cv->done = 0;
    int rc = mt_gguf_writer_open(&cv->gw, out_path);
    if (!rc) rc = export_header(x, cv->gw, h);
    if (!rc) rc = stream_all(cv, h);
    if (!rc) rc = mt_gguf_writer_finish(cv->gw);
    mt_gguf_writer_free(cv->gw); /* removes the temporary unless finished */
    cv->gw = NULL;
    return rc;
}

void mt_convert_opts_default(mt_convert_opts *o) {
    memset(o, 0, sizeof *o);
    o->to = MT_FMT_GGUF;
    o->dtype = -1;
}

int mt_convert(const char *in_path, const char *out_path, const mt_convert_opts *opts) {
    mt_convert_opts defaults;
    if (!opts) {
        mt_convert_opts_default(&defaults);
        opts = &defaults;
    }
    if (!in_path || !out_path) return mt_seterr(MT_ERR_ARG, "convert: input and output paths are required");
    int to_gguf = opts->to == MT_FMT_GGUF;
    if (opts->to != MT_FMT_GGUF && opts->to != MT_FMT_HF)
        return mt_seterr(MT_ERR_ARG, "%s: convert writes a Hugging Face directory or a GGUF file", out_path);
    if (opts->dtype >= 0) {
        mt_dtype d = (mt_dtype)opts->dtype;
        /* GGUF: what we quantize from f32; safetensors: the plain float types */
        const mt_dtype_info *di = mt_dtype_get(d);
        int ok = di && di->from_f32 && (to_gguf ? di->ggml_type >= 0 : mt_dtype_is_plain_float(d));
        if (!ok)
            return mt_seterr(MT_ERR_ARG, "%s: convert cannot write %s%s (f32, f16, bf16%s)", out_path,
                             di ? di->name : "that type", to_gguf ? " to GGUF" : " to safetensors",
                             to_gguf ? ", q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, iq4_xs, iq4_nl" : "");
    }
    /* encoder-decoder models (Switch Transformers): HF to HF only */
    if (!to_gguf && mt_s2s_detect(in_path)) return mt_s2s_convert_hf(in_path, out_path, opts);
    int rc = mt_output_check(out_path, to_gguf ? MT_OUTPUT_GGUF : MT_OUTPUT_HF_DIR, opts->force, in_path, NULL, 0);
    if (rc) return rc;
    conv cv = {0};
    cv.in_path = in_path;
    cv.out_path = out_path;
    cv.o = opts;
    mt_ckpt *ck = NULL;
    mt_out dir_out = {0};
    int have_dir = 0;
    char *src_dir = NULL;
    if ((rc = mt_ckpt_open(&ck, in_path))) return rc;
    if (mt_ckpt_is_archive(ck)) {
        mt_ckpt_free(ck);
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: an archive is read in place by inspect, eval, generate and tokenize; unpack it to %s it", in_path, "convert");
    }
    cv.ck = ck;
    cv.cfg = mt_ckpt_config(ck);
    int from_gguf = mt_ckpt_format(ck) == MT_FMT_GGUF;
    if (to_gguf && !from_gguf) { /* the export quantize shares */
        mt_gguf_export *x = NULL;
        rc = mt_gguf_export_open(&x, ck, opts);
        if (!rc) {
            mt_gguf_export_warn(x);
            rc = mt_gguf_export_write(x, out_path, NULL);
        }
        mt_gguf_export_free(x);
        goto done;
    }
    if ((rc = conv_prepare(&cv, to_gguf))) goto done;
    if (from_gguf != to_gguf) warn_unused(&cv);
    warn_fallbacks(&cv);

    if (to_gguf) {
        if ((rc = mt_gguf_writer_open(&cv.gw, out_path))) goto done;
        rc = gguf_copy_kvs(&cv);
        for (size_t i = 0; i < cv.n && !rc; i++)
            rc = mt_gguf_writer_add_tensor(cv.gw, cv.p[i].name, cv.p[i].dtype, cv.p[i].n_dims, cv.p[i].shape);
        if (!rc) rc = stream_all(&cv, NULL);
        if (!rc) rc = mt_gguf_writer_finish(cv.gw);
        goto done;
    }

    /* HF directory */
    if ((rc = mt_out_open_dir(&dir_out, out_path))) goto done;
    have_dir = 1;
    const char *dst = dir_out.tmp_path;
    if ((rc = mt_hf_writer_open(&cv.hw, dst, opts->shard_bytes))) goto done;
    for (size_t i = 0; i < cv.n && !rc; i++)
        rc = mt_hf_writer_add(cv.hw, cv.p[i].name, cv.p[i].dtype, cv.p[i].n_dims, cv.p[i].shape);
    if (!rc) rc = stream_all(&cv, NULL);
    if (!rc) rc = mt_hf_writer_finish(cv.hw);
    if (rc) goto done;
    src_dir = mt_path_is_dir(in_path) ? strdup(in_path) : mt_path_dir(in_path);
    if (!src_dir) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (from_gguf) {
        mt_config c2 = *cv.cfg;
        c2.rope_style = MT_ROPE_HALF;
        char *text = NULL;
        rc = mt_config_to_hf_json(&text, &c2, mt_dtype_config_torch_name(hf_target_type(&cv), "float32"));
        if (!rc) rc = mt_write_small_file(dst, "config.json", text, strlen(text));
        free(text);
        if (!rc) rc = hf_tokenizer_from_gguf(&cv, dst);
        if (!rc) rc = hf_generation_config(&cv, dst);
    } else {
        /* the dominant output type names torch_dtype */
        uint64_t bytes[MT_DT_COUNT] = {0};
        int best = MT_DT_F32;
        for (size_t i = 0; i < cv.n; i++) bytes[cv.p[i].dtype] += cv.p[i].nbytes;
        for (int d = 0; d < MT_DT_COUNT; d++)
            if (bytes[d] > bytes[best]) best = d;
        rc = hf_config_from_source(&cv, src_dir, dst, (mt_dtype)best);
        static const char *const side[] = {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json",
                                           "generation_config.json", "special_tokens_map.json"};
        for (size_t i = 0; i < sizeof side / sizeof side[0] && !rc; i++) rc = copy_file(src_dir, side[i], dst);
    }
    if (!rc) rc = mt_out_commit(&dir_out);

done:
    mt_gguf_writer_free(cv.gw); /* removes the temporary unless finished */
    mt_hf_writer_free(cv.hw);
    if (have_dir) mt_out_abort(&dir_out);
    free(src_dir);
    free(cv.p);
    free(cv.row);
    free(cv.chunk);
    mt_ckpt_free(ck);
    return rc;
}

/* ---- public helpers for other writers (quantize, merge) ------------------ */
int mt_copy_tokenizer(const mt_ckpt *src, const char *dst_dir) {
    if (mt_ckpt_format(src) == MT_FMT_GGUF) {
        conv cv;
        memset(&cv, 0, sizeof cv);
        cv.ck = src;
        cv.cfg = mt_ckpt_config(src);
        cv.in_path = mt_ckpt_path(src);
        int rc = hf_tokenizer_from_gguf(&cv, dst_dir);
        if (!rc) rc = hf_generation_config(&cv, dst_dir);
        return rc;
    }
    const char *in_path = mt_ckpt_path(src);
    char *src_dir = mt_path_is_dir(in_path) ? strdup(in_path) : mt_path_dir(in_path);
    if (!src_dir) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    static const char *const side[] = {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json",
                                       "generation_config.json", "special_tokens_map.json"};
    int rc = MT_OK;
    for (size_t i = 0; i < sizeof side / sizeof side[0] && !rc; i++) rc = copy_file(src_dir, side[i], dst_dir);
    free(src_dir);
    return rc;
}
