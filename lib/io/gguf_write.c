/* gguf_write.c — streaming GGUF v3 writer (layout: see gguf.c).
 *
 * Metadata is encoded into a memory buffer as it is declared (it is small:
 * the largest part is a tokenizer vocabulary); tensor infos are kept until
 * the first data byte arrives, when the whole header is written with offsets
 * computed at alignment 32 (llama.cpp's default, so no general.alignment key
 * is needed). Tensor bytes then stream through in declaration order and each
 * tensor is zero-padded to the alignment, as llama.cpp's gguf writer does. */
#include "writer_impl.h"

#include <stdlib.h>
#include <string.h>

#define GGUF_ALIGN 32
#define GGML_MAX_NAME 64 /* llama.cpp's limit on tensor names, NUL included */

typedef struct {
    char *name;
    uint32_t ggml_type;
    uint32_t n_dims;
    uint64_t ne[MT_MAX_DIMS]; /* innermost first */
    uint64_t nbytes;
    uint64_t offset;          /* relative to the data section */
} wtensor;

struct mt_gguf_writer {
    mt_out out;
    char *path;
    uint8_t *kv;              /* encoded metadata pairs */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys;              /* [n_kv] for the duplicate check */
    wtensor *t;               /* [n_t] */
    size_t n_t, cap_t;
    uint64_t data_bytes;      /* total incl. padding */
    int header_done;
    int failed;               /* a write failed: refuse further calls */
    size_t cur;               /* tensor being streamed */
    uint64_t cur_done;        /* bytes of it written */
};

static int buf_put(mt_gguf_writer *w, const void *p, size_t n) {
    if (n > SIZE_MAX - w->kv_len) return mt_seterr(MT_ERR_NOMEM, "%s: metadata too large", w->path);
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n) cap *= 2;
        uint8_t *b = realloc(w->kv, cap);
        if (!b) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory for metadata", w->path);
        w->kv = b;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return MT_OK;
}

static void le32(uint8_t *b, uint32_t v) {
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
}
static void le64(uint8_t *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
}
static int put_u32(mt_gguf_writer *w, uint32_t v) {
    uint8_t b[4];
    le32(b, v);
    return buf_put(w, b, 4);
}
static int put_u64(mt_gguf_writer *w, uint64_t v) {
    uint8_t b[8];
    le64(b, v);
    return buf_put(w, b, 8);
}
static int put_str(mt_gguf_writer *w, const char *s, size_t n) {
    int rc = put_u64(w, n);
    return rc ? rc : buf_put(w, s, n);
}

int mt_gguf_writer_open(mt_gguf_writer **out, const char *path) {
    *out = NULL;
    mt_gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    int rc = mt_out_open_file(&w->out, path);
    if (rc) {
        free(w->path);
        free(w);
        return rc;
    }
    *out = w;
    return MT_OK;
}

int mt_gguf_writer_open_measure(mt_gguf_writer **out, const char *name) {
    *out = NULL;
    mt_gguf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(name))) {
        free(w);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    w->failed = 1; /* no output: nothing may be written */
    *out = w;
    return MT_OK;
}

uint64_t mt_gguf_writer_header_bytes(const mt_gguf_writer *w) {
    uint64_t pos = 24 + w->kv_len, k = 0;
    while (k < w->n_kv && strcmp(w->keys[k], MT_GGUF_MOETOOL_KEY)) k++;
    if (k == w->n_kv) pos += 8 + strlen(MT_GGUF_MOETOOL_KEY) + 4 + 8 + 7; /* key, type, "moetool" */
    for (size_t i = 0; i < w->n_t; i++) pos += 8 + strlen(w->t[i].name) + 4 + 8ull * w->t[i].n_dims + 4 + 8;
    return (pos + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
}

void mt_gguf_writer_free(mt_gguf_writer *w) {
    if (!w) return;
    mt_out_abort(&w->out);
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->kv);
    free(w->path);
    free(w);
}

/* Common start of every kv: state checks, duplicate check, key, type. */
static int kv_begin(mt_gguf_writer *w, const char *key, mt_gguf_type type) {
    if (w->header_done) return mt_seterr(MT_ERR_INTERNAL, "%s: metadata '%s' added after tensor data", w->path, key);
    size_t kl = strlen(key);
    if (kl == 0 || kl > 65535) return mt_seterr(MT_ERR_ARG, "%s: bad metadata key length %zu", w->path, kl);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return mt_seterr(MT_ERR_ARG, "%s: duplicate metadata key '%s'", w->path, key);
    char **k = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *k);
    if (!k) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    w->keys = k;
    if (!(k[w->n_kv] = strdup(key))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    w->n_kv++;
    int rc = put_str(w, key, kl);
    return rc ? rc : put_u32(w, (uint32_t)type);
}

int mt_gguf_writer_kv_u32(mt_gguf_writer *w, const char *key, uint32_t v) {
    int rc = kv_begin(w, key, MT_GGUF_UINT32);
    return rc ? rc : put_u32(w, v);
}
int mt_gguf_writer_kv_i32(mt_gguf_writer *w, const char *key, int32_t v) {
    int rc = kv_begin(w, key, MT_GGUF_INT32);
    return rc ? rc : put_u32(w, (uint32_t)v);
}
int mt_gguf_writer_kv_u64(mt_gguf_writer *w, const char *key, uint64_t v) {
    int rc = kv_begin(w, key, MT_GGUF_UINT64);
    return rc ? rc : put_u64(w, v);
}
int mt_gguf_writer_kv_f32(mt_gguf_writer *w, const char *key, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    int rc = kv_begin(w, key, MT_GGUF_FLOAT32);
    return rc ? rc : put_u32(w, u);
}
int mt_gguf_writer_kv_bool(mt_gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    int rc = kv_begin(w, key, MT_GGUF_BOOL);
    return rc ? rc : buf_put(w, &b, 1);
}
int mt_gguf_writer_kv_str(mt_gguf_writer *w, const char *key, const char *s, size_t len) {
    int rc = kv_begin(w, key, MT_GGUF_STRING);
    return rc ? rc : put_str(w, s, len);
}

int mt_gguf_writer_kv_quantized_by(mt_gguf_writer *w, uint32_t file_type) {
    int d = mt_dtype_from_gguf_file_type(file_type);
    if (d < 0 || mt_dtype_is_plain_float((mt_dtype)d)) return MT_OK;
    return mt_gguf_writer_kv_str(w, "general.quantized_by", "moetool", 7);
}

int mt_gguf_writer_kv_raw(mt_gguf_writer *w, const char *key, mt_gguf_type type, const void *raw, size_t len) {
    int rc = kv_begin(w, key, type);
    return rc ? rc : buf_put(w, raw, len);
}

static int elem_size(mt_gguf_type t) {
    switch (t) {
    case MT_GGUF_UINT8: case MT_GGUF_INT8: case MT_GGUF_BOOL: return 1;
    case MT_GGUF_UINT16: case MT_GGUF_INT16: return 2;
    case MT_GGUF_UINT32: case MT_GGUF_INT32: case MT_GGUF_FLOAT32: return 4;
    case MT_GGUF_UINT64: case MT_GGUF_INT64: case MT_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

int mt_gguf_writer_kv_arr(mt_gguf_writer *w, const char *key, mt_gguf_type elem_type, const void *data, uint64_t n) {
    int es = elem_size(elem_type);
    if (!es) return mt_seterr(MT_ERR_ARG, "%s: array '%s' of non-numeric type %d", w->path, key, (int)elem_type);
    if (n > SIZE_MAX / (uint64_t)es) return mt_seterr(MT_ERR_ARG, "%s: array '%s' too large", w->path, key);
    int rc = kv_begin(w, key, MT_GGUF_ARRAY);
    if (!rc) rc = put_u32(w, (uint32_t)elem_type);
    if (!rc) rc = put_u64(w, n);
    /* host is little-endian (x86-64/aarch64), the GGUF byte order */
    if (!rc) rc = buf_put(w, data, (size_t)n * (size_t)es);
    return rc;
}

int mt_gguf_writer_kv_arr_str(mt_gguf_writer *w, const char *key, uint64_t n, const char *const *strs,
                              const size_t *lens) {
    int rc = kv_begin(w, key, MT_GGUF_ARRAY);
    if (!rc) rc = put_u32(w, MT_GGUF_STRING);
    if (!rc) rc = put_u64(w, n);
    for (uint64_t i = 0; i < n && !rc; i++) rc = put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]));
    return rc;
}

int mt_gguf_writer_add_tensor(mt_gguf_writer *w, const char *name, mt_dtype dtype, int n_dims, const int64_t *shape) {
    if (w->header_done) return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s' added after tensor data", w->path, name);
    size_t nl = strlen(name);
    if (nl == 0 || nl >= GGML_MAX_NAME)
        return mt_seterr(MT_ERR_ARG, "%s: tensor name '%s' must have 1..%d bytes", w->path, name, GGML_MAX_NAME - 1);
    int gt = mt_dtype_ggml_type(dtype);
    const mt_dtype_info *di = mt_dtype_get(dtype);
    if (gt < 0 || !di)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor '%s': storage type %s has no GGUF equivalent", w->path, name,
                         di ? di->name : "?");
    if (n_dims < 1 || n_dims > MT_MAX_DIMS)
        return mt_seterr(MT_ERR_ARG, "%s: tensor '%s' has %d dimensions", w->path, name, n_dims);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return mt_seterr(MT_ERR_ARG, "%s: duplicate tensor '%s'", w->path, name);
    wtensor t = {0};
    t.ggml_type = (uint32_t)gt;
    t.n_dims = (uint32_t)n_dims;
    uint64_t numel = 1;
    for (int d = 0; d < n_dims; d++) {
        int64_t s = shape[n_dims - 1 - d];
        if (s <= 0 || numel > (uint64_t)INT64_MAX / (uint64_t)s)
            return mt_seterr(MT_ERR_ARG, "%s: tensor '%s' has a bad shape", w->path, name);
        t.ne[d] = (uint64_t)s;
        numel *= (uint64_t)s;
    }
    if (t.ne[0] % (uint64_t)di->block_elems)
        return mt_seterr(MT_ERR_ARG, "%s: tensor '%s': rows of %llu are not whole %s blocks", w->path, name,
                         (unsigned long long)t.ne[0], di->name);
    int rc = mt_dtype_nbytes(dtype, numel, &t.nbytes);
    if (rc) return rc;
    uint64_t padded = (t.nbytes + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
    t.offset = w->data_bytes;
    if (padded < t.nbytes || w->data_bytes + padded < w->data_bytes)
        return mt_seterr(MT_ERR_ARG, "%s: tensor data too large", w->path);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    if (!(t.name = strdup(name))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    w->t[w->n_t++] = t;
    w->data_bytes += padded;
    return MT_OK;
}

static const uint8_t g_zeros[GGUF_ALIGN];

static int write_header(mt_gguf_writer *w) {
    int rc = MT_OK;
    uint64_t k = 0;
    while (k < w->n_kv && strcmp(w->keys[k], MT_GGUF_MOETOOL_KEY)) k++;
    if (k == w->n_kv && (rc = mt_gguf_writer_kv_str(w, MT_GGUF_MOETOOL_KEY, "moetool", 7))) return rc;
    uint8_t b[8];
    rc = mt_out_write(&w->out, "GGUF", 4);
    le32(b, 3);
    if (!rc) rc = mt_out_write(&w->out, b, 4);
    le64(b, w->n_t);
    if (!rc) rc = mt_out_write(&w->out, b, 8);
    le64(b, w->n_kv);
    if (!rc) rc = mt_out_write(&w->out, b, 8);
    if (!rc) rc = mt_out_write(&w->out, w->kv, w->kv_len);
    uint64_t pos = 24 + w->kv_len;
    for (size_t i = 0; i < w->n_t && !rc; i++) {
        const wtensor *t = &w->t[i];
        size_t nl = strlen(t->name);
        le64(b, nl);
        rc = mt_out_write(&w->out, b, 8);
        if (!rc) rc = mt_out_write(&w->out, t->name, nl);
        le32(b, t->n_dims);
        if (!rc) rc = mt_out_write(&w->out, b, 4);
        for (uint32_t d = 0; d < t->n_dims && !rc; d++) {
            le64(b, t->ne[d]);
            rc = mt_out_write(&w->out, b, 8);
        }
        le32(b, t->ggml_type);
        if (!rc) rc = mt_out_write(&w->out, b, 4);
        le64(b, t->offset);
        if (!rc) rc = mt_out_write(&w->out, b, 8);
        pos += 8 + nl + 4 + 8ull * t->n_dims + 4 + 8;
    }
    if (!rc) rc = mt_out_write(&w->out, g_zeros, (size_t)((GGUF_ALIGN - pos % GGUF_ALIGN) % GGUF_ALIGN));
    w->header_done = 1;
    return rc;
}

int mt_gguf_writer_write(mt_gguf_writer *w, const void *data, size_t n) {
    if (w->failed) return mt_seterr(MT_ERR_INTERNAL, "%s: write after a failed write", w->path);
    int rc = MT_OK;
    if (!w->header_done && (rc = write_header(w))) goto fail;
    const uint8_t *p = data;
    while (n) {
        if (w->cur >= w->n_t) {
            rc = mt_seterr(MT_ERR_INTERNAL, "%s: %zu bytes written past the declared tensors", w->path, n);
            goto fail;
        }
        wtensor *t = &w->t[w->cur];
        uint64_t room = t->nbytes - w->cur_done;
        size_t k = n < room ? n : (size_t)room;
        if ((rc = mt_out_write(&w->out, p, k))) goto fail;
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->nbytes) {
            size_t pad = (size_t)((GGUF_ALIGN - t->nbytes % GGUF_ALIGN) % GGUF_ALIGN);
            if ((rc = mt_out_write(&w->out, g_zeros, pad))) goto fail;
            w->cur++;
            w->cur_done = 0;
        }
    }
    return MT_OK;
fail:
    w->failed = 1;
    return rc;
}

int mt_gguf_writer_finish(mt_gguf_writer *w) {
    if (w->failed) return mt_seterr(MT_ERR_INTERNAL, "%s: finish after a failed write", w->path);
    int rc;
    if (!w->header_done && (rc = write_header(w))) return rc;
    if (w->cur != w->n_t)
        return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s' not completely written", w->path, w->t[w->cur].name);
    return mt_out_commit(&w->out);
}
