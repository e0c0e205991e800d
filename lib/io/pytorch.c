/* pytorch.c — reader of PyTorch checkpoints written by torch.save (>= 1.6):
 * pytorch_model.bin and the shards of pytorch_model.bin.index.json.
 *
 * Byte layout: a zip archive (read through libarchive, central directory
 * first) whose members all sit under one record name <r> (the file stem for
 * torch < 2, "archive" after):
 *   <r>/data.pkl       pickle (protocol 2) of the state dict, see pickle.c
 *   <r>/data/<key>     raw bytes of storage <key>: numel * element size,
 *                      little-endian, stored (not deflated) and 64-byte
 *                      aligned by torch's writer
 *   <r>/byteorder      "little" (torch >= 1.10; absent means little)
 *   <r>/version, <r>/.data/..., <r>/.format_version ...   ignored
 * A tensor is (storage key, element offset, shape, strides) in the pickle;
 * its bytes are storage + offset * element size, and strides must be
 * contiguous row-major.
 *
 * Storage bytes are never copied when they can be mapped: libarchive reads
 * the archive from our mapping (archive_read_open_memory), so a stored
 * member's single data block is a pointer into the mapping; we accept it
 * only when it lies inside the mapping and covers the whole member.
 * Anything else (deflate, ...) is decompressed once into shared anonymous
 * memory, bounded by the member's declared size and by a total expansion
 * limit (zip bombs). Member names with absolute paths or ".." components are
 * refused even though nothing is written. The zip CRC is not checked (as
 * with safetensors, which has none): checking it would read every byte at
 * open time.
 *
 * The legacy (pre-1.6) format, a bare pickle stream, is refused by name. */
#define _GNU_SOURCE
#include "ckpt_impl.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PT_MAX_ENTRIES (1u << 20)
#define PT_MAX_PICKLE (1ull << 30)     /* bytes of data.pkl */
#define PT_MAX_EXPANSION 1100ull       /* deflate's ratio is at most 1032:1 */

typedef struct {
    char *name;
    uint64_t size;
    const uint8_t *stored;   /* member bytes inside the input, or NULL */
    uint8_t *owned;          /* decompressed copy (shared anonymous mapping) */
    int needed;              /* referenced by a tensor                        */
    int dtype;               /* first referencing tensor's storage, -1 none   */
    uint64_t numel;
} pt_entry;

typedef struct {
    mt_mapped map;           /* the file, when opened by path                */
    mt_pickle_dict *dict;    /* tensor names live here                       */
    pt_entry *e;
    size_t n;
} pt_owner;

static void owner_free(void *p) {
    pt_owner *o = p;
    if (!o) return;
    for (size_t i = 0; i < o->n; i++) {
        free(o->e[i].name);
        if (o->e[i].owned) munmap(o->e[i].owned, o->e[i].size);
    }
    free(o->e);
    mt_pickle_free(o->dict);
    mt_unmap_file(&o->map);
    free(o);
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const pt_entry *)a)->name, ((const pt_entry *)b)->name);
}

static pt_entry *find_entry(pt_owner *o, const char *name) {
    pt_entry key = {.name = (char *)name};
    if (!o->n) return NULL;
    return bsearch(&key, o->e, o->n, sizeof *o->e, cmp_entry);
}

static int name_is_safe(const char *s) {
    if (!s[0] || s[0] == '/' || s[0] == '\\') return 0;
    for (const char *p = s; *p;) {
        const char *q = p;
        while (*q && *q != '/' && *q != '\\') q++;
        if (q - p == 2 && p[0] == '.' && p[1] == '.') return 0;
        p = *q ? q + 1 : q;
    }
    return 1;
}

static struct archive *open_archive(const void *buf, size_t len, const char *name, int *rc) {
    struct archive *a = archive_read_new();
    if (!a) {
        *rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
        return NULL;
    }
    archive_read_support_format_zip_seekable(a);
    archive_read_set_options(a, "zip:ignorecrc32");
    if (archive_read_open_memory(a, buf, len) != ARCHIVE_OK) {
        *rc = mt_seterr(MT_ERR_FORMAT, "%s: not a readable zip archive: %s", name,
                        archive_error_string(a) ? archive_error_string(a) : "unknown error");
        archive_read_free(a);
        return NULL;
    }
    *rc = MT_OK;
    return a;
}

static int archive_fail(struct archive *a, const char *name, const char *what) {
    return mt_seterr(MT_ERR_FORMAT, "%s: %s: %s", name, what,
                     archive_error_string(a) ? archive_error_string(a) : "damaged zip archive");
}

/* 1 with *ae set, 0 after the last member, or an error status. */
static int next_member(struct archive *a, const char *name, struct archive_entry **ae) {
    int r = archive_read_next_header(a, ae);
    if (r == ARCHIVE_EOF) return 0;
    if (r != ARCHIVE_OK) return archive_fail(a, name, "cannot read zip member header");
    return 1;
}

/* Pass 1: every member's name, size and, when stored, its bytes in place. */
static int list_entries(pt_owner *o, const void *buf, size_t len, const char *name) {
    int rc;
    struct archive *a = open_archive(buf, len, name, &rc);
    if (!a) return rc;
    size_t cap = 0;
    struct archive_entry *ae;
    const uint8_t *lo = buf, *hi = lo + len;
    int more;
    while ((more = next_member(a, name, &ae)) > 0) {
        const char *en = archive_entry_pathname(ae);
        if (!en) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member %zu has no name", name, o->n);
            goto done;
        }
        if (!name_is_safe(en)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member \"%.200s\" has an absolute or \"..\" path (refused)", name, en);
            goto done;
        }
        if (archive_entry_filetype(ae) == AE_IFDIR) continue;
        if (archive_entry_filetype(ae) != AE_IFREG) {
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: zip member %.200s is not a regular file", name, en);
            goto done;
        }
        if (archive_entry_is_encrypted(ae)) {
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: zip member %.200s is encrypted", name, en);
            goto done;
        }
        if (!archive_entry_size_is_set(ae) || archive_entry_size(ae) < 0) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member %.200s has no size", name, en);
            goto done;
        }
        if (o->n == PT_MAX_ENTRIES) {
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: more than %u zip members", name, PT_MAX_ENTRIES);
            goto done;
        }
        if (o->n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            pt_entry *ne = realloc(o->e, nc * sizeof *ne);
            if (!ne) {
                rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
                goto done;
            }
            o->e = ne;
            cap = nc;
        }
        pt_entry *e = &o->e[o->n];
        memset(e, 0, sizeof *e);
        e->dtype = -1;
        e->size = (uint64_t)archive_entry_size(ae);
        if (!(e->name = strdup(en))) {
            rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
            goto done;
        }
        o->n++;
        const void *blk;
        size_t bsz = 0;
        la_int64_t boff = 0;
        if (e->size == 0) {
            e->stored = lo;
        } else {
            int r = archive_read_data_block(a, &blk, &bsz, &boff);
            if (r < ARCHIVE_WARN) {
                rc = archive_fail(a, name, e->name);
                goto done;
            }
            const uint8_t *p = blk;
            if (r == ARCHIVE_OK && boff == 0 && bsz == e->size && p >= lo && p <= hi && e->size <= (uint64_t)(hi - p))
                e->stored = p;
        }
    }
    if (more < 0) {
        rc = more;
        goto done;
    }
    if (o->n) qsort(o->e, o->n, sizeof *o->e, cmp_entry);
    for (size_t i = 1; i < o->n; i++) {
        if (strcmp(o->e[i].name, o->e[i - 1].name) == 0) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member %.200s appears twice", name, o->e[i].name);
            goto done;
        }
    }
    rc = MT_OK;
done:
    archive_read_free(a);
    return rc;
}

/* Pass 2: decompresses the needed members that are not stored in place. */
static int inflate_needed(pt_owner *o, const void *buf, size_t len, const char *name) {
    uint64_t total = 0;
    int any = 0;
    for (size_t i = 0; i < o->n; i++) {
        if (!o->e[i].needed || o->e[i].stored) continue;
        any = 1;
        total += o->e[i].size;
        if (total > PT_MAX_EXPANSION * (uint64_t)len + (1u << 20))
            return mt_seterr(MT_ERR_FORMAT,
                             "%s: compressed members would expand to more than %llu times the archive size (refused as a zip bomb)",
                             name, PT_MAX_EXPANSION);
    }
    if (!any) return MT_OK;
    int rc;
    struct archive *a = open_archive(buf, len, name, &rc);
    if (!a) return rc;
    struct archive_entry *ae;
    int more;
    while ((more = next_member(a, name, &ae)) > 0) {
        const char *en = archive_entry_pathname(ae);
        pt_entry *e = en ? find_entry(o, en) : NULL;
        if (!e || !e->needed || e->stored || e->owned) continue;
        /* Shared anonymous memory: dropping its pages (mt_drop_pages) keeps
         * the contents, as for a file mapping. */
        void *m = mmap(NULL, e->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            rc = mt_seterr(MT_ERR_NOMEM, "%s: cannot allocate %llu bytes for zip member %s", name,
                           (unsigned long long)e->size, e->name);
            goto done;
        }
        e->owned = m;
        uint64_t got = 0;
        for (;;) {
            la_ssize_t k = archive_read_data(a, e->owned + got, (size_t)(e->size - got));
            if (k < 0) {
                rc = archive_fail(a, name, e->name);
                goto done;
            }
            if (k == 0) break;
            got += (uint64_t)k;
            if (got == e->size) {
                char extra;
                if (archive_read_data(a, &extra, 1) != 0) {
                    rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member %s holds more than its declared %llu bytes", name,
                                   e->name, (unsigned long long)e->size);
                    goto done;
                }
                break;
            }
        }
        if (got != e->size) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member %s holds %llu bytes, %llu declared", name, e->name,
                           (unsigned long long)got, (unsigned long long)e->size);
            goto done;
        }
        mprotect(e->owned, e->size, PROT_READ);
    }
    if (more < 0) {
        rc = more;
        goto done;
    }
    for (size_t i = 0; i < o->n; i++) {
        if (o->e[i].needed && !o->e[i].stored && !o->e[i].owned) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: zip member %s could not be read", name, o->e[i].name);
            goto done;
        }
    }
    rc = MT_OK;
done:
    archive_read_free(a);
    return rc;
}

static const uint8_t *entry_bytes(const pt_entry *e) { return e->stored ? e->stored : e->owned; }

/* The record name: the one <r> with an <r>/data.pkl member. */
static int find_record(pt_owner *o, const char *name, pt_entry **pkl, size_t *prefix_len) {
    *pkl = NULL;
    for (size_t i = 0; i < o->n; i++) {
        const char *s = o->e[i].name, *slash = strchr(s, '/');
        if (!slash || slash == s || strcmp(slash + 1, "data.pkl") != 0) continue;
        if (*pkl)
            return mt_seterr(MT_ERR_FORMAT, "%s: two pickles (%s and %s) in one archive", name, (*pkl)->name, s);
        *pkl = &o->e[i];
        *prefix_len = (size_t)(slash - s);
    }
    if (!*pkl) {
        if (find_entry(o, "constants.pkl") || (o->n && strstr(o->e[0].name, "/constants.pkl")))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a TorchScript archive, not a torch.save'd state dict", name);
        return mt_seterr(MT_ERR_FORMAT, "%s: no <name>/data.pkl member: not a torch.save archive", name);
    }
    return MT_OK;
}

static int check_byteorder(pt_owner *o, const char *name, const char *rec, size_t rl) {
    char path[512];
    snprintf(path, sizeof path, "%.*s/byteorder", (int)rl, rec);
    pt_entry *e = find_entry(o, path);
    if (!e) return MT_OK;
    if (!e->stored) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s is compressed", name, path);
    if (e->size == 6 && memcmp(e->stored, "little", 6) == 0) return MT_OK;
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s is not \"little\" (big-endian checkpoints are not supported)", name, path);
}

/* Parses buf; takes `map` (NULL: the caller keeps buf alive) also on error. */
static int parse_owned(mt_safetensors **out, const void *buf, size_t len, const char *name, mt_mapped *map) {
    *out = NULL;
    if (!name) name = "<buffer>";
    const uint8_t *b = buf;
    pt_owner *o = calloc(1, sizeof *o);
    if (!o) {
        if (map) mt_unmap_file(map);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    if (map) o->map = *map;
    mt_tensor *ts = NULL;
    int rc;
    if (len >= 4 && memcmp(b, "\x80\x02\x8a\x0a", 4) == 0) { /* PROTO 2, LONG1 of the legacy magic number */
        rc = mt_seterr(MT_ERR_UNSUPPORTED,
                       "%s: legacy (pre-1.6, non-zip) PyTorch serialization is not supported; re-save it with "
                       "torch.save from torch >= 1.6, or convert it to safetensors",
                       name);
        goto fail;
    }
    if (len < 4 || memcmp(b, "PK\003\004", 4) != 0) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: not a zip archive (no PK\\3\\4 at byte 0)", name);
        goto fail;
    }
    if ((rc = list_entries(o, buf, len, name))) goto fail;
    pt_entry *pkl;
    size_t rl = 0;
    if ((rc = find_record(o, name, &pkl, &rl))) goto fail;
    const char *rec = pkl->name;
    if (rl > 256) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: record name of %zu bytes is too long", name, rl);
        goto fail;
    }
    if ((rc = check_byteorder(o, name, rec, rl))) goto fail;
    if (pkl->size > PT_MAX_PICKLE) {
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s is %llu bytes (at most %llu)", name, pkl->name,
                       (unsigned long long)pkl->size, PT_MAX_PICKLE);
        goto fail;
    }
    pkl->needed = 1;
    if ((rc = inflate_needed(o, buf, len, name))) goto fail;
    char what[600];
    snprintf(what, sizeof what, "%s: %s", name, pkl->name);
    if ((rc = mt_pickle_load_state_dict(&o->dict, entry_bytes(pkl), pkl->size, what))) goto fail;

    size_t n = mt_pickle_count(o->dict);
    /* Each tensor's storage member: present, the size its numel says, one dtype. */
    pt_entry **se = calloc(n ? n : 1, sizeof *se);
    if (!se) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        const mt_pickle_tensor *pt = mt_pickle_get(o->dict, i);
        char path[600];
        snprintf(path, sizeof path, "%.*s/data/%s", (int)rl, rec, pt->storage);
        pt_entry *e = find_entry(o, path);
        uint64_t need_bytes;
        if (!e) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: storage %s of tensor %s is missing from the archive", name, path, pt->name);
        } else if (mt_dtype_nbytes(pt->dtype, pt->storage_numel, &need_bytes) != MT_OK || need_bytes != e->size) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: storage %s holds %llu bytes but %llu %s elements (tensor %s) need %llu", name,
                           path, (unsigned long long)e->size, (unsigned long long)pt->storage_numel,
                           mt_dtype_get(pt->dtype)->name, pt->name, (unsigned long long)need_bytes);
        } else if (e->dtype >= 0 && (e->dtype != (int)pt->dtype || e->numel != pt->storage_numel)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: storage %s is used with two types or sizes (tensor %s)", name, path, pt->name);
        } else {
            e->dtype = (int)pt->dtype;
            e->numel = pt->storage_numel;
            e->needed = 1;
            se[i] = e;
        }
    }
    if (!rc) rc = inflate_needed(o, buf, len, name);
    if (!rc && !(ts = calloc(n ? n : 1, sizeof *ts))) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc; i++) {
        const mt_pickle_tensor *pt = mt_pickle_get(o->dict, i);
        mt_tensor *t = &ts[i];
        uint64_t numel = 1, off_bytes = 0;
        for (int d = 0; d < pt->n_dims; d++) numel *= (uint64_t)pt->shape[d];
        /* the unpickler checked offset + numel <= storage numel */
        mt_dtype_nbytes(pt->dtype, pt->offset, &off_bytes);
        if (mt_dtype_nbytes(pt->dtype, numel, &t->nbytes) != MT_OK) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: tensor %s: byte size overflows", name, pt->name);
            break;
        }
        t->name = pt->name;
        t->dtype = pt->dtype;
        t->n_dims = pt->n_dims;
        memcpy(t->shape, pt->shape, sizeof t->shape);
        t->data = entry_bytes(se[i]) + off_bytes;
        t->file_index = 0;
        t->file_offset = se[i]->stored ? (uint64_t)(se[i]->stored - b) + off_bytes : 0;
    }
    free(se);
    if (rc) goto fail;
    return mt_safetensors_adopt(out, name, len, ts, n, o, owner_free);

fail:
    free(ts);
    owner_free(o);
    return rc;
}

int mt_pytorch_parse(mt_safetensors **out, const void *buf, size_t len, const char *name) {
    return parse_owned(out, buf, len, name, NULL);
}

int mt_pytorch_open(mt_safetensors **out, const char *path) {
    *out = NULL;
    mt_mapped m;
    int rc = mt_map_file(&m, path);
    if (rc) return rc;
    return parse_owned(out, m.data, m.size, path, &m);
}
