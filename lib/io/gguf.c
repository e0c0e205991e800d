/* gguf.c — GGUF reader (versions 2 and 3; llama.cpp's container).
 *
 * Byte layout (all integers little-endian):
 *   u32  magic "GGUF" (bytes 47 47 55 46)
 *   u32  version             2 or 3 (1 used u32 counts: unsupported)
 *   u64  n_tensors
 *   u64  n_kv
 *   n_kv times:   key   = u64 len + len bytes (UTF-8, no NUL)
 *                 u32   value type (mt_gguf_type)
 *                 value = scalar (1/2/4/8 bytes; bool is 1 byte)
 *                       | string (u64 len + bytes)
 *                       | array  (u32 elem type, u64 count, count elems);
 *                         an array may hold arrays one level deep, no more
 *   n_tensors times: name  = u64 len + bytes
 *                 u32   n_dims (1..4)
 *                 u64   ne[n_dims]  innermost (contiguous) dimension first
 *                 u32   ggml type id
 *                 u64   offset, relative to the data section, a multiple
 *                       of the alignment
 *   padding to a multiple of general.alignment (u32 key; default 32; a
 *   non-zero power of two), then the data section.
 *
 * The whole file is validated at open: every length against the bytes that
 * remain (so nothing reads past the mapping), counts against what the
 * remaining bytes could hold (before anything is allocated), shape products
 * for overflow, rows as whole blocks, tensor data inside the file, aligned and
 * non-overlapping, names and keys unique. Tensor types we cannot compute with
 * are refused at open with MT_ERR_UNSUPPORTED naming the tensor. Shapes are
 * reported in PyTorch order (ne reversed). */
#include "io_impl.h"
#include "writer_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_MAX_STR (64u * 1024u) /* keys and tensor names */
#define GGUF_DEFAULT_ALIGN 32

typedef struct {
    char *key;               /* NUL-terminated copy                          */
    mt_gguf_type type;
    const uint8_t *val;      /* scalar bytes, string length field, or array elements */
    uint64_t str_len;        /* MT_GGUF_STRING                               */
    mt_gguf_type elem_type;  /* MT_GGUF_ARRAY                                */
    uint64_t n;              /* MT_GGUF_ARRAY: element count                 */
    const uint8_t **strs;    /* string arrays: [n] pointers to each length field */
    const uint8_t *raw;      /* the encoded value as stored (after the type) */
    size_t raw_len;
} gguf_kv;

struct mt_gguf {
    mt_mapped map;           /* when opened from a file                      */
    char *name;              /* for messages                                 */
    const uint8_t *base;
    size_t len;
    uint32_t version;
    uint64_t alignment;
    uint64_t data_start;     /* absolute offset of the data section          */
    size_t n_kv;
    gguf_kv *kv;             /* [n_kv]                                       */
    size_t *kv_sorted;       /* [n_kv] indices sorted by key                 */
    size_t n_tensors;
    mt_tensor *tensors;      /* [n_tensors]                                  */
    size_t *t_sorted;        /* [n_tensors] indices sorted by name           */
};

/* ---- bounded cursor ---------------------------------------------------- */
typedef struct {
    const uint8_t *p;
    size_t pos, len;
    const char *name;
} cur;

static int need(cur *c, uint64_t n, const char *what) {
    if (n > c->len - c->pos)
        return mt_seterr(MT_ERR_FORMAT, "%s: truncated: %s needs %llu bytes at offset %zu, %zu left",
                         c->name, what, (unsigned long long)n, c->pos, c->len - c->pos);
    return MT_OK;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static int get_u32(cur *c, uint32_t *v, const char *what) {
    int rc = need(c, 4, what);
    if (rc) return rc;
    *v = rd32(c->p + c->pos);
    c->pos += 4;
    return MT_OK;
}
static int get_u64(cur *c, uint64_t *v, const char *what) {
    int rc = need(c, 8, what);
    if (rc) return rc;
    *v = rd64(c->p + c->pos);
    c->pos += 8;
    return MT_OK;
}
/* A string: u64 length + bytes; *s points at the bytes. */
static int get_str(cur *c, const uint8_t **s, uint64_t *n, uint64_t cap, const char *what) {
    size_t at = c->pos;
    int rc = get_u64(c, n, what);
    if (rc) return rc;
    if (cap && *n > cap)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s at offset %zu has length %llu (limit %llu)", c->name, what, at,
                         (unsigned long long)*n, (unsigned long long)cap);
    if ((rc = need(c, *n, what))) return rc;
    *s = c->p + c->pos;
    c->pos += (size_t)*n;
    return MT_OK;
}

static int scalar_size(mt_gguf_type t) {
    switch (t) {
    case MT_GGUF_UINT8: case MT_GGUF_INT8: case MT_GGUF_BOOL: return 1;
    case MT_GGUF_UINT16: case MT_GGUF_INT16: return 2;
    case MT_GGUF_UINT32: case MT_GGUF_INT32: case MT_GGUF_FLOAT32: return 4;
    case MT_GGUF_UINT64: case MT_GGUF_INT64: case MT_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Skips one value of type t (depth counts array nesting). With `kv`, the
 * array header, element start and string-array element positions are
 * recorded there. */
static int skip_value(cur *c, uint32_t t, int depth, const char *key, gguf_kv *kv) {
    int sz = scalar_size((mt_gguf_type)t);
    if (sz) {
        if (need(c, (uint64_t)sz, key))
            return mt_seterr(MT_ERR_FORMAT, "%s: truncated value of key '%s' at offset %zu", c->name, key, c->pos);
        c->pos += (size_t)sz;
        return MT_OK;
    }
    if (t == MT_GGUF_STRING) {
        const uint8_t *s;
        uint64_t n;
        size_t at = c->pos;
        if (get_str(c, &s, &n, 0, "string value"))
            return mt_seterr(MT_ERR_FORMAT, "%s: string value of key '%s' at offset %zu runs past the end of the file",
                             c->name, key, at);
        if (kv) kv->str_len = n;
        return MT_OK;
    }
    if (t != MT_GGUF_ARRAY)
        return mt_seterr(MT_ERR_FORMAT, "%s: key '%s' has unknown value type %u (offset %zu)", c->name, key, t, c->pos);
    if (depth >= 2)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: key '%s' nests arrays more than one level deep (offset %zu)",
                         c->name, key, c->pos);
    uint32_t et;
    uint64_t n;
    size_t at = c->pos;
    if (get_u32(c, &et, "array type") || get_u64(c, &n, "array count"))
        return mt_seterr(MT_ERR_FORMAT, "%s: truncated array header of key '%s' at offset %zu", c->name, key, at);
    int esz = scalar_size((mt_gguf_type)et);
    /* the smallest encoding of one element bounds the count */
    uint64_t min_elem = esz ? (uint64_t)esz : et == MT_GGUF_STRING ? 8 : et == MT_GGUF_ARRAY ? 12 : 0;
    if (!min_elem)
        return mt_seterr(MT_ERR_FORMAT, "%s: array of key '%s' has unknown element type %u (offset %zu)", c->name, key, et, at);
    if (n > (c->len - c->pos) / min_elem)
        return mt_seterr(MT_ERR_FORMAT, "%s: array of key '%s' claims %llu elements, more than the %zu bytes left can hold",
                         c->name, key, (unsigned long long)n, c->len - c->pos);
    if (kv) {
        kv->elem_type = (mt_gguf_type)et;
        kv->n = n;
        kv->val = c->p + c->pos;
    }
    if (esz) {
        c->pos += (size_t)(n * (uint64_t)esz);
        return MT_OK;
    }
    if (kv && et == MT_GGUF_STRING && n) {
        kv->strs = malloc((size_t)n * sizeof *kv->strs);
        if (!kv->strs) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory for array '%s'", c->name, key);
    }
    for (uint64_t i = 0; i < n; i++) {
        if (kv && kv->strs) kv->strs[i] = c->p + c->pos;
        int rc = skip_value(c, et, depth + 1, key, NULL);
        if (rc) return rc;
    }
    return MT_OK;
}

/* ---- sorting for duplicate checks and lookup --------------------------- */
static const char *g_sort_keys_kv(const void *base, size_t i) { return ((const gguf_kv *)base)[i].key; }
static const char *g_sort_keys_t(const void *base, size_t i) { return ((const mt_tensor *)base)[i].name; }

typedef struct {
    const void *base;
    const char *(*name)(const void *, size_t);
} sort_ctx;

/* Merge sort of indices by name (qsort has no context argument in C11). */
static void sort_idx(size_t *idx, size_t *tmp, size_t n, const sort_ctx *s) {
    if (n < 2) return;
    size_t h = n / 2;
    sort_idx(idx, tmp, h, s);
    sort_idx(idx + h, tmp, n - h, s);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = strcmp(s->name(s->base, idx[i]), s->name(s->base, idx[j])) <= 0 ? idx[i++] : idx[j++];
    while (i < h) tmp[k++] = idx[i++];
    while (j < n) tmp[k++] = idx[j++];
    memcpy(idx, tmp, n * sizeof *idx);
}

static size_t *sorted_index(size_t n, const sort_ctx *s) {
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    size_t *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!idx || !tmp) {
        free(idx);
        free(tmp);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) idx[i] = i;
    sort_idx(idx, tmp, n, s);
    free(tmp);
    return idx;
}

static long bsearch_idx(const size_t *idx, size_t n, const sort_ctx *s, const char *name) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->name(s->base, idx[mid]), name);
        if (c == 0) return (long)idx[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

static char *dup_name(const uint8_t *s, uint64_t n) {
    char *p = malloc((size_t)n + 1);
    if (!p) return NULL;
    memcpy(p, s, (size_t)n);
    p[n] = 0;
    return p;
}

/* ---- parse --------------------------------------------------------------- */
void mt_gguf_free(mt_gguf *g) {
    if (!g) return;
    if (g->kv) {
        for (size_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].strs);
        }
    }
    free(g->kv);
    free(g->kv_sorted);
    if (g->tensors)
        for (size_t i = 0; i < g->n_tensors; i++) free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->t_sorted);
    free(g->name);
    mt_unmap_file(&g->map);
    free(g);
}

static int cmp_offset(const void *a, const void *b) {
    const mt_tensor *x = *(const mt_tensor *const *)a, *y = *(const mt_tensor *const *)b;
    return x->file_offset < y->file_offset ? -1 : x->file_offset > y->file_offset;
}

static int parse_into(mt_gguf *g) {
    cur c = {g->base, 0, g->len, g->name};
    const char *nm = g->name;
    uint32_t version;
    if (g->len < 4 || memcmp(g->base, "GGUF", 4) != 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: not a GGUF file (bad magic)", nm);
    c.pos = 4;
    int rc = get_u32(&c, &version, "version");
    if (rc) return rc;
    if (version == 1)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: GGUF version 1 is not supported (only 2 and 3)", nm);
    if (version != 2 && version != 3) {
        if ((version & 0xffff) == 0)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: GGUF version %u looks big-endian; only little-endian GGUF v2/v3 is supported",
                             nm, version);
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (only 2 and 3)", nm, version);
    }
    g->version = version;
    uint64_t n_tensors, n_kv;
    if ((rc = get_u64(&c, &n_tensors, "tensor count")) || (rc = get_u64(&c, &n_kv, "metadata count"))) return rc;
    /* smallest kv: u64 len + 1 byte key + u32 type + 1 byte value = 14;
     * smallest tensor info: 8 + 1 + 4 + 8 + 4 + 8 = 33 */
    size_t left = c.len - c.pos;
    if (n_kv > left / 14)
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata count %llu is more than the %zu bytes left can hold", nm,
                         (unsigned long long)n_kv, left);
    if (n_tensors > left / 33)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor count %llu is more than the %zu bytes left can hold", nm,
                         (unsigned long long)n_tensors, left);
    g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);

    /* metadata */
    g->alignment = GGUF_DEFAULT_ALIGN;
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        const uint8_t *ks;
        uint64_t kn;
        size_t at = c.pos;
        if ((rc = get_str(&c, &ks, &kn, GGUF_MAX_STR, "metadata key"))) return rc;
        if (kn == 0) return mt_seterr(MT_ERR_FORMAT, "%s: empty metadata key at offset %zu", nm, at);
        if (memchr(ks, 0, (size_t)kn))
            return mt_seterr(MT_ERR_FORMAT, "%s: metadata key at offset %zu contains a NUL byte", nm, at);
        if (!(kv->key = dup_name(ks, kn))) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
        g->n_kv = (size_t)i + 1;
        uint32_t t;
        if ((rc = get_u32(&c, &t, "value type"))) return rc;
        kv->type = (mt_gguf_type)t;
        kv->val = kv->raw = c.p + c.pos;
        size_t vstart = c.pos;
        if ((rc = skip_value(&c, t, 0, kv->key, kv))) return rc;
        kv->raw_len = c.pos - vstart;
        if (!strcmp(kv->key, "general.alignment")) {
            uint64_t a;
            if (t == MT_GGUF_UINT32) a = rd32(kv->val);
            else if (t == MT_GGUF_UINT64) a = rd64(kv->val);
            else
                return mt_seterr(MT_ERR_FORMAT, "%s: general.alignment has value type %u, expected u32", nm, t);
            if (a == 0 || (a & (a - 1)) || a > (1u << 30))
                return mt_seterr(MT_ERR_FORMAT, "%s: general.alignment %llu is not a power of two up to 2^30", nm,
                                 (unsigned long long)a);
            g->alignment = a;
        }
    }
    sort_ctx skv = {g->kv, g_sort_keys_kv};
    if (!(g->kv_sorted = sorted_index(g->n_kv, &skv))) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
    for (size_t i = 1; i < g->n_kv; i++)
        if (!strcmp(g->kv[g->kv_sorted[i]].key, g->kv[g->kv_sorted[i - 1]].key))
            return mt_seterr(MT_ERR_FORMAT, "%s: duplicate metadata key '%s'", nm, g->kv[g->kv_sorted[i]].key);

    /* tensor infos (offsets relative until the data start is known) */
    for (uint64_t i = 0; i < n_tensors; i++) {
        mt_tensor *t = &g->tensors[i];
        const uint8_t *s;
        uint64_t sn;
        size_t at = c.pos;
        if ((rc = get_str(&c, &s, &sn, GGUF_MAX_STR, "tensor name"))) return rc;
        if (sn == 0) return mt_seterr(MT_ERR_FORMAT, "%s: empty tensor name at offset %zu", nm, at);
        if (memchr(s, 0, (size_t)sn))
            return mt_seterr(MT_ERR_FORMAT, "%s: tensor name at offset %zu contains a NUL byte", nm, at);
        if (!(t->name = dup_name(s, sn))) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
        g->n_tensors = (size_t)i + 1;
        uint32_t nd;
        if ((rc = get_u32(&c, &nd, "n_dims"))) return rc;
        if (nd < 1 || nd > MT_MAX_DIMS)
            return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s' has %u dimensions (1..%d allowed)", nm, t->name, nd, MT_MAX_DIMS);
        t->n_dims = (int)nd;
        uint64_t ne[MT_MAX_DIMS], numel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            if ((rc = get_u64(&c, &ne[d], "tensor dimension"))) return rc;
            if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX)
                return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s' has dimension %u of size %llu", nm, t->name, d,
                                 (unsigned long long)ne[d]);
            if (numel > (uint64_t)INT64_MAX / ne[d])
                return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s' element count overflows", nm, t->name);
            numel *= ne[d];
            t->shape[nd - 1 - d] = (int64_t)ne[d];
        }
        uint32_t ty;
        uint64_t off;
        if ((rc = get_u32(&c, &ty, "tensor type")) || (rc = get_u64(&c, &off, "tensor offset"))) return rc;
        int dt = mt_dtype_from_ggml_type(ty);
        if (dt < 0)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor '%s' has ggml type %u (%s), which moetool cannot read", nm,
                             t->name, ty, mt_ggml_type_name(ty));
        t->dtype = (mt_dtype)dt;
        const mt_dtype_info *di = mt_dtype_get(t->dtype);
        if (ne[0] % (uint64_t)di->block_elems)
            return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s': row of %llu elements is not a whole number of %s blocks (%d)",
                             nm, t->name, (unsigned long long)ne[0], di->name, di->block_elems);
        if (mt_dtype_nbytes(t->dtype, numel, &t->nbytes) != MT_OK)
            return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s' size overflows", nm, t->name);
        if (off % g->alignment)
            return mt_seterr(MT_ERR_FORMAT, "%s: tensor '%s' offset %llu is not a multiple of the alignment %llu", nm,
                             t->name, (unsigned long long)off, (unsigned long long)g->alignment);
        t->file_offset = off; /* relative for now */
        t->file_index = 0;
    }
    sort_ctx st = {g->tensors, g_sort_keys_t};
    if (!(g->t_sorted = sorted_index(g->n_tensors, &st))) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
    for (size_t i = 1; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[g->t_sorted[i]].name, g->tensors[g->t_sorted[i - 1]].name))
            return mt_seterr(MT_ERR_FORMAT, "%s: duplicate tensor name '%s'", nm, g->tensors[g->t_sorted[i]].name);

    /* data section */
    uint64_t ds = (uint64_t)c.pos;
    uint64_t pad = (g->alignment - ds % g->alignment) % g->alignment;
    ds += pad;
    g->data_start = ds;
    if (g->n_tensors && ds > g->len)
        return mt_seterr(MT_ERR_FORMAT, "%s: truncated: data section would start at %llu, file has %zu bytes", nm,
                         (unsigned long long)ds, g->len);
    uint64_t data_len = g->n_tensors ? g->len - ds : 0;
    for (size_t i = 0; i < g->n_tensors; i++) {
        mt_tensor *t = &g->tensors[i];
        if (t->file_offset > data_len || t->nbytes > data_len - t->file_offset)
            return mt_seterr(MT_ERR_FORMAT,
                             "%s: tensor '%s' data [%llu, +%llu) runs past the end of the file (data section is %llu bytes)",
                             nm, t->name, (unsigned long long)t->file_offset, (unsigned long long)t->nbytes,
                             (unsigned long long)data_len);
        t->file_offset += ds;
        t->data = g->base + t->file_offset;
    }
    if (g->n_tensors > 1) {
        const mt_tensor **by = malloc(g->n_tensors * sizeof *by);
        if (!by) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
        for (size_t i = 0; i < g->n_tensors; i++) by[i] = &g->tensors[i];
        qsort(by, g->n_tensors, sizeof *by, cmp_offset);
        for (size_t i = 1; i < g->n_tensors; i++) {
            if (by[i - 1]->file_offset + by[i - 1]->nbytes > by[i]->file_offset) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap (offsets %llu and %llu)", nm,
                               by[i - 1]->name, by[i]->name, (unsigned long long)(by[i - 1]->file_offset - ds),
                               (unsigned long long)(by[i]->file_offset - ds));
                free(by);
                return rc;
            }
        }
        free(by);
    }
    return MT_OK;
}

int mt_gguf_parse(mt_gguf **out, const void *buf, size_t len, const char *name_for_errors) {
    *out = NULL;
    const char *nm = name_for_errors ? name_for_errors : "<gguf>";
    mt_gguf *g = calloc(1, sizeof *g);
    if (!g) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
    g->name = strdup(nm);
    if (!g->name) {
        free(g);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", nm);
    }
    g->base = buf;
    g->len = buf ? len : 0;
    int rc = parse_into(g);
    if (rc) {
        mt_gguf_free(g);
        return rc;
    }
    *out = g;
    return MT_OK;
}

int mt_gguf_open(mt_gguf **out, const char *path) {
    *out = NULL;
    mt_mapped m;
    int rc = mt_map_file(&m, path);
    if (rc) return rc;
    mt_gguf *g;
    rc = mt_gguf_parse(&g, m.data, m.size, path);
    if (rc) {
        mt_unmap_file(&m);
        return rc;
    }
    g->map = m;
    *out = g;
    return MT_OK;
}

/* ---- getters ------------------------------------------------------------- */
size_t mt_gguf_tensor_count(const mt_gguf *g) { return g ? g->n_tensors : 0; }

const mt_tensor *mt_gguf_tensor(const mt_gguf *g, size_t i) {
    return g && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const mt_tensor *mt_gguf_find_tensor(const mt_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    sort_ctx s = {g->tensors, g_sort_keys_t};
    long i = bsearch_idx(g->t_sorted, g->n_tensors, &s, name);
    return i < 0 ? NULL : &g->tensors[i];
}

int mt_gguf_find_key(const mt_gguf *g, const char *key) {
    if (!g || !key) return -1;
    sort_ctx s = {g->kv, g_sort_keys_kv};
    long i = bsearch_idx(g->kv_sorted, g->n_kv, &s, key);
    return i < 0 || i > 0x7fffffff ? -1 : (int)i;
}

size_t mt_gguf_key_count(const mt_gguf *g) { return g ? g->n_kv : 0; }

const char *mt_gguf_key_name(const mt_gguf *g, int k) {
    return g && k >= 0 && (size_t)k < g->n_kv ? g->kv[k].key : NULL;
}

mt_gguf_type mt_gguf_key_type(const mt_gguf *g, int k) {
    return g && k >= 0 && (size_t)k < g->n_kv ? g->kv[k].type : (mt_gguf_type)-1;
}

static int lookup(const mt_gguf *g, const char *key, const gguf_kv **kv) {
    int k = mt_gguf_find_key(g, key);
    if (k < 0) return mt_seterr(MT_ERR_NOT_FOUND, "%s: no metadata key '%s'", g ? g->name : "<gguf>", key ? key : "");
    *kv = &g->kv[k];
    return MT_OK;
}

/* Reads a numeric scalar of type t at p as double and, exactly, as i64. */
static int scalar_num(mt_gguf_type t, const uint8_t *p, double *d, int64_t *i, int *i_ok) {
    uint32_t u32;
    uint64_t u64;
    float f;
    double f64;
    *i_ok = 1;
    switch (t) {
    case MT_GGUF_UINT8: *i = p[0]; break;
    case MT_GGUF_BOOL: *i = p[0] != 0; break;
    case MT_GGUF_INT8: *i = (int8_t)p[0]; break;
    case MT_GGUF_UINT16: *i = (uint16_t)(p[0] | p[1] << 8); break;
    case MT_GGUF_INT16: *i = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
    case MT_GGUF_UINT32: *i = rd32(p); break;
    case MT_GGUF_INT32: *i = (int32_t)rd32(p); break;
    case MT_GGUF_INT64: *i = (int64_t)rd64(p); break;
    case MT_GGUF_UINT64:
        u64 = rd64(p);
        *d = (double)u64;
        if (u64 > (uint64_t)INT64_MAX) *i_ok = 0;
        else *i = (int64_t)u64;
        return MT_OK;
    case MT_GGUF_FLOAT32:
        u32 = rd32(p);
        memcpy(&f, &u32, 4);
        *d = f;
        goto from_float;
    case MT_GGUF_FLOAT64:
        u64 = rd64(p);
        memcpy(&f64, &u64, 8);
        *d = f64;
        goto from_float;
    default: return MT_ERR_FORMAT;
    }
    *d = (double)*i;
    return MT_OK;
from_float:
    if (isfinite(*d) && *d == floor(*d) && fabs(*d) < 9.2e18) *i = (int64_t)*d;
    else *i_ok = 0;
    return MT_OK;
}

int mt_gguf_get_i64(const mt_gguf *g, const char *key, int64_t *out) {
    const gguf_kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    double d;
    int ok;
    if (scalar_num(kv->type, kv->val, &d, out, &ok) != MT_OK)
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not a number (type %d)", g->name, key, (int)kv->type);
    if (!ok) return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not an integer in range", g->name, key);
    return MT_OK;
}

int mt_gguf_get_f64(const mt_gguf *g, const char *key, double *out) {
    const gguf_kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    int64_t i;
    int ok;
    if (scalar_num(kv->type, kv->val, out, &i, &ok) != MT_OK)
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not a number (type %d)", g->name, key, (int)kv->type);
    return MT_OK;
}

int mt_gguf_get_str(const mt_gguf *g, const char *key, const char **s, uint64_t *len) {
    const gguf_kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != MT_GGUF_STRING)
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not a string (type %d)", g->name, key, (int)kv->type);
    *s = (const char *)kv->val + 8;
    *len = kv->str_len;
    return MT_OK;
}

int mt_gguf_get_arr(const mt_gguf *g, const char *key, mt_gguf_type *elem_type, uint64_t *n) {
    const gguf_kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != MT_GGUF_ARRAY)
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not an array (type %d)", g->name, key, (int)kv->type);
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    return MT_OK;
}

int mt_gguf_arr_str(const mt_gguf *g, const char *key, uint64_t i, const char **s, uint64_t *len) {
    const gguf_kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != MT_GGUF_ARRAY || kv->elem_type != MT_GGUF_STRING)
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not a string array", g->name, key);
    if (i >= kv->n)
        return mt_seterr(MT_ERR_ARG, "%s: index %llu past the %llu strings of '%s'", g->name, (unsigned long long)i,
                         (unsigned long long)kv->n, key);
    *len = rd64(kv->strs[i]);
    *s = (const char *)kv->strs[i] + 8;
    return MT_OK;
}

int mt_gguf_arr_data(const mt_gguf *g, const char *key, const void **data) {
    const gguf_kv *kv;
    int rc = lookup(g, key, &kv);
    if (rc) return rc;
    if (kv->type != MT_GGUF_ARRAY || !scalar_size(kv->elem_type))
        return mt_seterr(MT_ERR_FORMAT, "%s: metadata key '%s' is not a numeric array", g->name, key);
    *data = kv->val;
    return MT_OK;
}

int mt_gguf_kv_raw(const mt_gguf *g, int k, mt_gguf_type *type, const void **raw, size_t *len) {
    if (!g || k < 0 || (size_t)k >= g->n_kv) return mt_seterr(MT_ERR_ARG, "metadata index %d out of range", k);
    *type = g->kv[k].type;
    *raw = g->kv[k].raw;
    *len = g->kv[k].raw_len;
    return MT_OK;
}
