/* safetensors.c — reader of single .safetensors files.
 *
 * Byte layout (all integers little-endian):
 *   offset 0      u64 N            length of the JSON header in bytes
 *   offset 8      N bytes          UTF-8 JSON object (may be padded with spaces):
 *                   { "<tensor name>": { "dtype": "BF16",
 *                                        "shape": [d0, d1, ...],
 *                                        "data_offsets": [begin, end] },
 *                     ...,
 *                     "__metadata__": { "<key>": "<value>", ... } }   (optional)
 *   offset 8 + N  data region      tensor bytes; begin/end are relative to the
 *                                  start of this region, end exclusive, row-major
 *                                  with the shape outermost first.
 *
 * Every header field is checked before use: header length within the file,
 * dtype known, at most MT_MAX_DIMS dims, numel * element size without
 * overflow and equal to end - begin, [begin, end) inside the data region, no
 * two non-empty tensors overlapping, no duplicate names. Tensors are kept in
 * file (data offset) order for mt_safetensors_get and indexed by name in a
 * sorted array so that mt_safetensors_find is a binary search. */
#define _GNU_SOURCE
#include "ckpt_impl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct mt_safetensors {
    mt_mapped map;          /* owned mapping (open) or zeroed (parse)        */
    char *name;             /* file name used in messages                    */
    size_t file_size;       /* bytes of the whole file / buffer              */
    size_t n;               /* number of tensors                             */
    mt_tensor *tensors;     /* [n] in data-offset order                      */
    size_t *by_name;        /* [n] indices into tensors, sorted by name      */
    char *names;            /* all tensor names, NUL-separated               */
    void *owner;            /* adopted tensors (PyTorch zip): names and data */
    void (*owner_free)(void *);
};

/* A zero dimension makes the count 0 whatever the others are (a shape such as
 * [2^62, 4, 0] must not overflow on the way); a count past INT64_MAX is -1. */
int64_t mt_tensor_numel(const mt_tensor *t) {
    const int nd = t->n_dims < MT_MAX_DIMS ? t->n_dims : MT_MAX_DIMS;
    for (int i = 0; i < nd; i++)
        if (t->shape[i] == 0) return 0;
    int64_t n = 1;
    for (int i = 0; i < nd; i++) {
        if (t->shape[i] < 0 || __builtin_mul_overflow(n, t->shape[i], &n)) return -1;
    }
    return n;
}

void mt_safetensors_free(mt_safetensors *st) {
    if (!st) return;
    mt_unmap_file(&st->map);
    free(st->name);
    free(st->tensors);
    free(st->by_name);
    free(st->names);
    if (st->owner_free) st->owner_free(st->owner);
    free(st);
}

size_t mt_safetensors_count(const mt_safetensors *st) { return st ? st->n : 0; }

const mt_tensor *mt_safetensors_get(const mt_safetensors *st, size_t i) {
    return (st && i < st->n) ? &st->tensors[i] : NULL;
}

uint64_t mt_safetensors_file_size(const mt_safetensors *st) { return st ? st->file_size : 0; }

const mt_tensor *mt_safetensors_find(const mt_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    size_t lo = 0, hi = st->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const mt_tensor *t = &st->tensors[st->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* qsort has no context argument in C11: sort pairs carrying what we compare. */
typedef struct {
    uint64_t begin;
    size_t idx;
} st_order;

static int cmp_order(const void *a, const void *b) {
    const st_order *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

typedef struct {
    const char *name;
    size_t idx;
} st_named;

static int cmp_named(const void *a, const void *b) {
    const st_named *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* A JSON integer that is >= 0 (reals are rejected: shapes are integers). */
static int json_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return 0;
    json_int_t i = json_integer_value(v);
    if (i < 0) return 0;
    *out = (uint64_t)i;
    return 1;
}

/* Parses one tensor entry into t (name and data pointers filled by caller). */
static int parse_entry(mt_tensor *t, uint64_t *begin, uint64_t *end, const json_t *e,
                       const char *file, const char *tname) {
    if (!json_is_object(e))
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: header entry is not an object", file, tname);
    const json_t *jd = json_object_get(e, "dtype");
    const json_t *js = json_object_get(e, "shape");
    const json_t *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd))
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: missing or non-string \"dtype\"", file, tname);
    if (!json_is_array(js))
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: missing or non-array \"shape\"", file, tname);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: \"data_offsets\" is not [begin, end]", file, tname);
    int dt = mt_dtype_from_st_name(json_string_value(jd));
    if (dt < 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s: unsupported dtype \"%s\"", file, tname,
                         json_string_value(jd));
    t->dtype = (mt_dtype)dt;
    size_t nd = json_array_size(js);
    if (nd > MT_MAX_DIMS)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s: %zu dimensions (at most %d supported)", file,
                         tname, nd, MT_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < nd; d++) {
        uint64_t v;
        if (!json_u64(json_array_get(js, d), &v) || v > (uint64_t)INT64_MAX)
            return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: shape[%zu] is not a non-negative integer", file,
                             tname, d);
        t->shape[d] = (int64_t)v;
        if (v != 0 && numel > UINT64_MAX / v) overflow = 1;
        else numel *= v;
    }
    for (size_t d = nd; d < MT_MAX_DIMS; d++) t->shape[d] = 0;
    /* A zero dim makes the product 0 even if other dims overflowed. */
    for (size_t d = 0; d < nd; d++)
        if (t->shape[d] == 0) overflow = 0, numel = 0;
    if (overflow || numel > (uint64_t)INT64_MAX)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: element count overflows", file, tname);
    uint64_t nbytes;
    if (mt_dtype_nbytes(t->dtype, numel, &nbytes) != MT_OK)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: byte size overflows", file, tname);
    if (!json_u64(json_array_get(jo, 0), begin) || !json_u64(json_array_get(jo, 1), end))
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: data_offsets are not non-negative integers", file,
                         tname);
    if (*end < *begin)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: data_offsets end %llu before begin %llu", file, tname,
                         (unsigned long long)*end, (unsigned long long)*begin);
    if (*end - *begin != nbytes)
        return mt_seterr(MT_ERR_FORMAT,
                         "%s: tensor %s: data_offsets [%llu, %llu] hold %llu bytes but dtype %s and shape "
                         "need %llu",
                         file, tname, (unsigned long long)*begin, (unsigned long long)*end,
                         (unsigned long long)(*end - *begin), json_string_value(jd),
                         (unsigned long long)nbytes);
    t->nbytes = nbytes;
    return MT_OK;
}

int mt_safetensors_parse(mt_safetensors **out, const void *buf, size_t len, const char *name) {
    *out = NULL;
    if (!name) name = "<buffer>";
    const uint8_t *b = buf;
    if (len < 8 || !buf)
        return mt_seterr(MT_ERR_FORMAT, "%s: file too short (%zu bytes) for a safetensors header", name, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > len - 8)
        return mt_seterr(MT_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                         name, (unsigned long long)hlen, len);
    if (hlen < 2) return mt_seterr(MT_ERR_FORMAT, "%s: header length %llu is too small", name, (unsigned long long)hlen);
    const uint64_t data_start = 8 + hlen;
    const uint64_t data_len = (uint64_t)len - data_start;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)b + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return mt_seterr(MT_ERR_FORMAT, "%s: header JSON is invalid at byte %d: %s", name, 8 + jerr.position,
                         jerr.text);

    int rc = MT_OK;
    mt_safetensors *st = NULL;
    st_order *order = NULL;
    st_named *named = NULL;
    if (!json_is_object(root)) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: header JSON is not an object", name);
        goto done;
    }
    st = calloc(1, sizeof *st);
    if (!st || !(st->name = strdup(name))) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    st->file_size = len;

    /* Count tensors and the bytes of their names. */
    size_t n = 0, name_bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val) && !json_is_null(val)) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: \"__metadata__\" is not an object", name);
                goto done;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = mt_seterr(MT_ERR_FORMAT, "%s: __metadata__ value of \"%s\" is not a string", name, mk);
                    goto done;
                }
            }
            continue;
        }
        n++;
        name_bytes += strlen(key) + 1;
    }
    st->n = n;
    st->tensors = calloc(n ? n : 1, sizeof *st->tensors);
    st->by_name = calloc(n ? n : 1, sizeof *st->by_name);
    st->names = malloc(name_bytes ? name_bytes : 1);
    order = calloc(n ? n : 1, sizeof *order);
    named = calloc(n ? n : 1, sizeof *named);
    mt_tensor *tmp = calloc(n ? n : 1, sizeof *tmp);
    if (!st->tensors || !st->by_name || !st->names || !order || !named || !tmp) {
        free(tmp);
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory for %zu tensors", name, n);
        goto done;
    }

    /* Parse entries in header order into tmp. */
    size_t i = 0, np = 0;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        uint64_t begin = 0, end = 0;
        rc = parse_entry(&tmp[i], &begin, &end, val, name, key);
        if (rc) {
            free(tmp);
            goto done;
        }
        if (end > data_len) {
            rc = mt_seterr(MT_ERR_FORMAT,
                           "%s: tensor %s: data_offsets [%llu, %llu] run past the end of the data region "
                           "(%llu bytes, file offset %llu)",
                           name, key, (unsigned long long)begin, (unsigned long long)end,
                           (unsigned long long)data_len, (unsigned long long)data_start);
            free(tmp);
            goto done;
        }
        size_t kl = strlen(key) + 1;
        memcpy(st->names + np, key, kl);
        tmp[i].name = st->names + np;
        np += kl;
        tmp[i].data = b + data_start + begin;
        tmp[i].file_offset = data_start + begin;
        tmp[i].file_index = 0;
        order[i].begin = begin;
        order[i].idx = i;
        i++;
    }

    /* File order, then the overlap check on neighbours (empty tensors own no bytes). */
    qsort(order, n, sizeof *order, cmp_order);
    uint64_t prev_end = 0;
    const char *prev_name = NULL;
    for (size_t k = 0; k < n; k++) {
        const mt_tensor *t = &tmp[order[k].idx];
        st->tensors[k] = *t;
        if (t->nbytes == 0) continue;
        if (prev_name && order[k].begin < prev_end) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: tensors %s and %s overlap (data offset %llu < %llu)", name,
                           prev_name, t->name, (unsigned long long)order[k].begin,
                           (unsigned long long)prev_end);
            free(tmp);
            goto done;
        }
        prev_end = order[k].begin + t->nbytes;
        prev_name = t->name;
    }
    free(tmp);

    for (size_t k = 0; k < n; k++) {
        named[k].name = st->tensors[k].name;
        named[k].idx = k;
    }
    qsort(named, n, sizeof *named, cmp_named);
    for (size_t k = 0; k < n; k++) st->by_name[k] = named[k].idx;

done:
    json_decref(root);
    free(order);
    free(named);
    if (rc) {
        mt_safetensors_free(st);
        return rc;
    }
    *out = st;
    return MT_OK;
}

int mt_safetensors_adopt(mt_safetensors **out, const char *name, uint64_t file_size, mt_tensor *tensors, size_t n,
                         void *owner, void (*owner_free)(void *)) {
    *out = NULL;
    mt_safetensors *st = calloc(1, sizeof *st);
    st_named *named = calloc(n ? n : 1, sizeof *named);
    if (!st || !named || !(st->name = strdup(name)) || !(st->by_name = calloc(n ? n : 1, sizeof *st->by_name))) {
        free(named);
        if (st) free(st->name);
        free(st);
        free(tensors);
        if (owner_free) owner_free(owner);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
    }
    st->tensors = tensors;
    st->n = n;
    st->file_size = (size_t)file_size;
    st->owner = owner;
    st->owner_free = owner_free;
    for (size_t k = 0; k < n; k++) {
        named[k].name = tensors[k].name;
        named[k].idx = k;
    }
    qsort(named, n, sizeof *named, cmp_named);
    for (size_t k = 0; k < n; k++) {
        if (k && strcmp(named[k].name, named[k - 1].name) == 0) {
            int rc = mt_seterr(MT_ERR_FORMAT, "%s: tensor %s appears twice", name, named[k].name);
            free(named);
            mt_safetensors_free(st);
            return rc;
        }
        st->by_name[k] = named[k].idx;
    }
    free(named);
    *out = st;
    return MT_OK;
}

int mt_safetensors_open(mt_safetensors **out, const char *path) {
    *out = NULL;
    mt_mapped m;
    int rc = mt_map_file(&m, path);
    if (rc) return rc;
    mt_safetensors *st = NULL;
    rc = mt_safetensors_parse(&st, m.data, m.size, path);
    if (rc) {
        mt_unmap_file(&m);
        return rc;
    }
    st->map = m;
    *out = st;
    return MT_OK;
}
