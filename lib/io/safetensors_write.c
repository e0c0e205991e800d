/* safetensors_write.c — streaming safetensors writer and the Hugging Face
 * shard layout over it (layout: see safetensors.c / mt_io.h).
 *
 * Header: {"__metadata__":{"format":"pt"},"<name>":{"dtype":..,"shape":[..],
 * "data_offsets":[b,e]},...} with tensor keys in byte order of their names,
 * compact, padded with spaces to a multiple of 8 as the safetensors library
 * pads it. Data is laid out in declaration order (the format only needs the
 * offsets to tile the data region), so callers can stream tensors in the
 * order they produce them. */
#include "writer_impl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    mt_dtype dtype;
    int n_dims;
    int64_t shape[MT_MAX_DIMS];
    uint64_t nbytes;
    uint64_t begin;      /* offset in the data region */
} st_tensor;

struct mt_st_writer {
    mt_out out;
    char *path;
    int pt_metadata;
    st_tensor *t;        /* [n_t] */
    size_t n_t, cap_t;
    uint64_t total;
    int header_done, failed;
    size_t cur;
    uint64_t cur_done;
};

/* Shared declaration checks; fills *t (name not copied). */
static int declare(const char *path, st_tensor *t, const char *name, mt_dtype dtype, int n_dims, const int64_t *shape) {
    if (!name[0]) return mt_seterr(MT_ERR_ARG, "%s: empty tensor name", path);
    if (!mt_dtype_st_name(dtype))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor '%s': storage type %s cannot be stored in safetensors", path,
                         name, mt_dtype_name(dtype));
    if (n_dims < 0 || n_dims > MT_MAX_DIMS)
        return mt_seterr(MT_ERR_ARG, "%s: tensor '%s' has %d dimensions", path, name, n_dims);
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->n_dims = n_dims;
    uint64_t numel = 1;
    for (int d = 0; d < n_dims; d++) {
        if (shape[d] < 0 || (shape[d] && numel > UINT64_MAX / (uint64_t)shape[d]))
            return mt_seterr(MT_ERR_ARG, "%s: tensor '%s' has a bad shape", path, name);
        t->shape[d] = shape[d];
        numel *= (uint64_t)shape[d];
    }
    return mt_dtype_nbytes(dtype, numel, &t->nbytes);
}

int mt_st_writer_open(mt_st_writer **out, const char *path, int pt_metadata) {
    *out = NULL;
    mt_st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    w->pt_metadata = pt_metadata;
    int rc = mt_out_open_file(&w->out, path);
    if (rc) {
        free(w->path);
        free(w);
        return rc;
    }
    *out = w;
    return MT_OK;
}

void mt_st_writer_free(mt_st_writer *w) {
    if (!w) return;
    mt_out_abort(&w->out);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->path);
    free(w);
}

int mt_st_writer_add(mt_st_writer *w, const char *name, mt_dtype dtype, int n_dims, const int64_t *shape) {
    if (w->header_done) return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s' added after data", w->path, name);
    st_tensor t;
    int rc = declare(w->path, &t, name, dtype, n_dims, shape);
    if (rc) return rc;
    if (!strcmp(name, "__metadata__")) return mt_seterr(MT_ERR_ARG, "%s: reserved tensor name '%s'", w->path, name);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return mt_seterr(MT_ERR_ARG, "%s: duplicate tensor '%s'", w->path, name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        st_tensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    if (!(t.name = strdup(name))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    t.begin = w->total;
    w->total += t.nbytes;
    w->t[w->n_t++] = t;
    return MT_OK;
}

/* Growing string for the header. */
typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_str(b, esc);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static const st_tensor *g_sort_base;
static int cmp_name_idx(const void *a, const void *b) {
    return strcmp(g_sort_base[*(const size_t *)a].name, g_sort_base[*(const size_t *)b].name);
}

static int write_header(mt_st_writer *w) {
    size_t *order = malloc((w->n_t ? w->n_t : 1) * sizeof *order);
    if (!order) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < w->n_t; i++) order[i] = i;
    g_sort_base = w->t; /* single-threaded use within one call */
    qsort(order, w->n_t, sizeof *order, cmp_name_idx);
    sbuf b = {0};
    sb_str(&b, "{");
    int first = 1;
    if (w->pt_metadata) {
        sb_str(&b, "\"__metadata__\":{\"format\":\"pt\"}");
        first = 0;
    }
    char num[64];
    for (size_t k = 0; k < w->n_t; k++) {
        const st_tensor *t = &w->t[order[k]];
        if (!first) sb_str(&b, ",");
        first = 0;
        sb_json_str(&b, t->name);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, mt_dtype_st_name(t->dtype));
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < t->n_dims; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            sb_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)t->begin,
                 (unsigned long long)(t->begin + t->nbytes));
        sb_str(&b, num);
    }
    sb_str(&b, "}");
    while (!b.oom && b.n % 8) sb_str(&b, " ");
    free(order);
    if (b.oom) {
        free(b.s);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)b.n >> (8 * i));
    int rc = mt_out_write(&w->out, len, 8);
    if (!rc) rc = mt_out_write(&w->out, b.s, b.n);
    free(b.s);
    w->header_done = 1;
    return rc;
}

int mt_st_writer_write(mt_st_writer *w, const void *data, size_t n) {
    if (w->failed) return mt_seterr(MT_ERR_INTERNAL, "%s: write after a failed write", w->path);
    int rc = MT_OK;
    if (!w->header_done && (rc = write_header(w))) goto fail;
    const uint8_t *p = data;
    while (n) {
        while (w->cur < w->n_t && w->t[w->cur].nbytes == 0) w->cur++;
        if (w->cur >= w->n_t) {
            rc = mt_seterr(MT_ERR_INTERNAL, "%s: %zu bytes written past the declared tensors", w->path, n);
            goto fail;
        }
        uint64_t room = w->t[w->cur].nbytes - w->cur_done;
        size_t k = n < room ? n : (size_t)room;
        if ((rc = mt_out_write(&w->out, p, k))) goto fail;
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == w->t[w->cur].nbytes) {
            w->cur++;
            w->cur_done = 0;
        }
    }
    return MT_OK;
fail:
    w->failed = 1;
    return rc;
}

int mt_st_writer_finish(mt_st_writer *w) {
    if (w->failed) return mt_seterr(MT_ERR_INTERNAL, "%s: finish after a failed write", w->path);
    int rc;
    if (!w->header_done && (rc = write_header(w))) return rc;
    while (w->cur < w->n_t && w->t[w->cur].nbytes == 0) w->cur++;
    if (w->cur != w->n_t)
        return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s' not completely written", w->path, w->t[w->cur].name);
    return mt_out_commit(&w->out);
}

/* ---- Hugging Face shards ------------------------------------------------ */
struct mt_hf_writer {
    char *dir;
    uint64_t shard_bytes;
    st_tensor *t;         /* [n_t]; begin reused as the shard number */
    size_t n_t, cap_t;
    uint64_t total;
    int planned, n_shards, failed;
    int shard;            /* shard being written (0-based) */
    mt_st_writer *sw;     /* its writer */
    size_t next;          /* first tensor not yet declared to a shard writer */
    size_t cur;
    uint64_t cur_done;
};

int mt_hf_writer_open(mt_hf_writer **out, const char *dir, uint64_t shard_bytes) {
    *out = NULL;
    mt_hf_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->dir = strdup(dir))) {
        free(w);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    w->shard_bytes = shard_bytes ? shard_bytes : (4ull << 30);
    *out = w;
    return MT_OK;
}

void mt_hf_writer_free(mt_hf_writer *w) {
    if (!w) return;
    mt_st_writer_free(w->sw);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->dir);
    free(w);
}

int mt_hf_writer_add(mt_hf_writer *w, const char *name, mt_dtype dtype, int n_dims, const int64_t *shape) {
    if (w->planned) return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s' added after data", w->dir, name);
    st_tensor t;
    int rc = declare(w->dir, &t, name, dtype, n_dims, shape);
    if (rc) return rc;
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return mt_seterr(MT_ERR_ARG, "%s: duplicate tensor '%s'", w->dir, name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        st_tensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    if (!(t.name = strdup(name))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    w->t[w->n_t++] = t;
    w->total += t.nbytes;
    return MT_OK;
}

static void shard_name(const mt_hf_writer *w, int k, char *buf, size_t cap) {
    if (w->n_shards == 1) snprintf(buf, cap, "model.safetensors");
    else snprintf(buf, cap, "model-%05d-of-%05d.safetensors", k + 1, w->n_shards);
}

static void plan(mt_hf_writer *w) {
    int shard = 0;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        if (in_shard > 0 && in_shard + w->t[i].nbytes > w->shard_bytes) {
            shard++;
            in_shard = 0;
        }
        w->t[i].begin = (uint64_t)shard;
        in_shard += w->t[i].nbytes;
    }
    w->n_shards = shard + 1;
    w->planned = 1;
}

/* Opens shard w->shard and declares its tensors. */
static int open_shard(mt_hf_writer *w) {
    char nm[64];
    shard_name(w, w->shard, nm, sizeof nm);
    char *p = mt_path_join(w->dir, nm);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = mt_st_writer_open(&w->sw, p, 1);
    free(p);
    while (!rc && w->next < w->n_t && w->t[w->next].begin == (uint64_t)w->shard) {
        const st_tensor *t = &w->t[w->next++];
        rc = mt_st_writer_add(w->sw, t->name, t->dtype, t->n_dims, t->shape);
    }
    return rc;
}

/* Finishes the current shard and opens the next (if any). */
static int next_shard(mt_hf_writer *w) {
    int rc = mt_st_writer_finish(w->sw);
    mt_st_writer_free(w->sw);
    w->sw = NULL;
    if (rc) return rc;
    w->shard++;
    return w->shard < w->n_shards ? open_shard(w) : MT_OK;
}

int mt_hf_writer_write(mt_hf_writer *w, const void *data, size_t n) {
    if (w->failed) return mt_seterr(MT_ERR_INTERNAL, "%s: write after a failed write", w->dir);
    int rc = MT_OK;
    if (!w->planned) {
        plan(w);
        if ((rc = open_shard(w))) goto fail;
    }
    const uint8_t *p = data;
    while (n) {
        if (w->cur >= w->n_t) {
            rc = mt_seterr(MT_ERR_INTERNAL, "%s: %zu bytes written past the declared tensors", w->dir, n);
            goto fail;
        }
        const st_tensor *t = &w->t[w->cur];
        uint64_t room = t->nbytes - w->cur_done;
        size_t k = n < room ? n : (size_t)room;
        if ((rc = mt_st_writer_write(w->sw, p, k))) goto fail;
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->nbytes) {
            w->cur++;
            w->cur_done = 0;
            /* skip empty tensors, then switch shards at a boundary */
            while (w->cur < w->n_t && w->t[w->cur].nbytes == 0) w->cur++;
            if (w->cur < w->n_t && w->t[w->cur].begin != (uint64_t)w->shard && (rc = next_shard(w))) goto fail;
        }
    }
    return MT_OK;
fail:
    w->failed = 1;
    return rc;
}

int mt_hf_writer_finish(mt_hf_writer *w) {
    if (w->failed) return mt_seterr(MT_ERR_INTERNAL, "%s: finish after a failed write", w->dir);
    int rc;
    if (!w->planned) {
        plan(w);
        if ((rc = open_shard(w))) return rc;
    }
    while (w->cur < w->n_t && w->t[w->cur].nbytes == 0) w->cur++;
    if (w->cur != w->n_t)
        return mt_seterr(MT_ERR_INTERNAL, "%s: tensor '%s' not completely written", w->dir, w->t[w->cur].name);
    /* the remaining shards (only empty tensors may be left in them) */
    while (w->sw)
        if ((rc = next_shard(w))) return rc;
    if (w->n_shards == 1) return MT_OK;

    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    int bad = !root || !meta || !map;
    if (!bad) bad |= json_object_set_new(meta, "total_size", json_integer((json_int_t)w->total));
    char nm[64];
    for (size_t i = 0; i < w->n_t && !bad; i++) {
        shard_name(w, (int)w->t[i].begin, nm, sizeof nm);
        bad |= json_object_set_new(map, w->t[i].name, json_string(nm));
    }
    if (!bad) {
        bad |= json_object_set_new(root, "metadata", meta);
        meta = NULL;
        bad |= json_object_set_new(root, "weight_map", map);
        map = NULL;
    }
    char *text = bad ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    json_decref(meta);
    json_decref(map);
    if (!text) return mt_seterr(MT_ERR_NOMEM, "%s: cannot build model.safetensors.index.json", w->dir);
    size_t tl = strlen(text);
    char *t2 = realloc(text, tl + 2);
    if (!t2) {
        free(text);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    t2[tl] = '\n';
    rc = mt_write_small_file(w->dir, "model.safetensors.index.json", t2, tl + 1);
    free(t2);
    return rc;
}
