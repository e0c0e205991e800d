/* archive.c — a model inside an archive (.tar, .tar.gz/.tgz, .tar.zst/.tzst,
 * .tar.xz, .zip), read through libarchive into memory, never unpacked to
 * disk. The reading verbs (inspect, eval, generate, tokenize) take the
 * archive as MODEL; the writing verbs refuse it (ckpt.c).
 *
 * Only the files a checkpoint is made of are read: config.json, the shard
 * index, *.safetensors, pytorch_model*.bin, *.gguf, tokenizer.model, spiece.model,
 * tokenizer.json, tokenizer_config.json, generation_config.json; everything
 * else is skipped unread. They must sit in one directory of the archive (a
 * top-level folder is usual) under distinct names. Hostile archives are
 * refused by name: absolute paths or ".." components, members in several
 * directories, duplicate names, more bytes than the memory available, too
 * many entries. Links and special files are ignored. */
#define _GNU_SOURCE
#include "io_impl.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARCHIVE_MAX_ENTRIES 1000000 /* entries walked, wanted or not */
#define ARCHIVE_MAX_WANTED 65536    /* model files kept */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int mt_archive_name(const char *path) {
    static const char *const ext[] = {".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".txz", ".zip"};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
        if (ends_with(path, ext[i])) return 1;
    return 0;
}

static int wanted(const char *base) {
    static const char *const exact[] = {"config.json",           "model.safetensors.index.json",
                                        "pytorch_model.bin.index.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                                        "tokenizer.json",        "tokenizer_config.json",
                                        "generation_config.json"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        if (!strcmp(base, exact[i])) return 1;
    return ends_with(base, ".safetensors") || ends_with(base, ".gguf") ||
           (!strncmp(base, "pytorch_model", 13) && ends_with(base, ".bin"));
}

/* Splits "a/b/c" into directory "a/b" and base "c" (a leading "./" and
 * repeated slashes dropped). -1: absolute or with a ".." component. */
static int split_name(const char *name, char *dir, size_t dcap, const char **base) {
    if (name[0] == '/') return -1;
    while (name[0] == '.' && name[1] == '/') name += 2;
    for (const char *p = name; *p;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') return -1;
        if (!e) break;
        p = e + 1;
    }
    const char *sl = strrchr(name, '/');
    *base = sl ? sl + 1 : name;
    size_t dl = sl ? (size_t)(sl - name) : 0;
    if (dl >= dcap) return -1;
    memcpy(dir, name, dl);
    dir[dl] = 0;
    return 0;
}

static uint64_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    unsigned long long kb = 0, v;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) kb = v;
    if (f) fclose(f);
    if (kb) return (uint64_t)kb * 1024;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : UINT64_MAX;
}

void mt_archive_free(mt_archive *a) {
    if (!a) return;
    for (size_t i = 0; i < a->n; i++) {
        free(a->m[i].name);
        if (!a->m[i].mapped) free((void *)a->m[i].data);
    }
    free(a->m);
    if (a->map) munmap(a->map, a->map_size);
    free(a);
}

const mt_archive_member *mt_archive_get(const mt_archive *a, const char *name) {
    for (size_t i = 0; a && i < a->n; i++)
        if (!strcmp(a->m[i].name, name)) return &a->m[i];
    return NULL;
}

#define MAP_CHECK 4096 /* bytes of a mapped member compared with what libarchive reads */

/* Reads the current entry's bytes into a new buffer (*out, *outlen), after
 * the plen bytes already read into prefix. Buffers grow as bytes arrive,
 * capped by the declared size: a header may declare more than the archive
 * holds. held: bytes already kept in memory, against budget. */
static int read_member(struct archive *ar, const char *path, const char *name, int64_t declared, uint64_t held,
                       uint64_t budget, const uint8_t *prefix, size_t plen, uint8_t **out, size_t *outlen) {
    size_t cap = declared >= 0 && declared < (1 << 20) ? (size_t)declared : 1 << 20, len = plen;
    if (cap < plen) cap = plen;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory reading '%.200s'", path, name);
    if (plen) memcpy(buf, prefix, plen);
    for (;;) {
        if (len == cap) {
            if (declared >= 0 && len == (size_t)declared) { /* more than declared: not a valid entry */
                uint8_t probe;
                la_ssize_t k = archive_read_data(ar, &probe, 1);
                if (k == 0) break;
                free(buf);
                return mt_seterr(MT_ERR_FORMAT, "%s: '%.200s' is longer than its header says", path, name);
            }
            if (held + cap * 2 > budget) {
                free(buf);
                return mt_seterr(MT_ERR_NOMEM, "%s: '%.200s' does not fit in the memory available; unpack the "
                                 "archive", path, name);
            }
            size_t nc = cap ? cap * 2 : 4096;
            if (declared >= 0 && nc > (size_t)declared) nc = (size_t)declared;
            uint8_t *g = realloc(buf, nc);
            if (!g) {
                free(buf);
                return mt_seterr(MT_ERR_NOMEM, "%s: out of memory reading '%.200s'", path, name);
            }
            buf = g;
            cap = nc;
        }
        la_ssize_t k = archive_read_data(ar, buf + len, cap - len);
        if (k < 0) {
            free(buf);
            return mt_seterr(MT_ERR_FORMAT, "%s: reading '%.200s': %s", path, name, archive_error_string(ar));
        }
        if (k == 0) break;
        len += (size_t)k;
    }
    if (declared >= 0 && len != (size_t)declared) {
        free(buf);
        return mt_seterr(MT_ERR_FORMAT, "%s: '%.200s' is truncated (%zu of %lld bytes)", path, name, len,
                         (long long)declared);
    }
    *out = buf;
    *outlen = len;
    return MT_OK;
}

/* In an uncompressed tar a member's bytes lie whole in the file, right after
 * its header: map the archive once and point the member into the mapping
 * (*data), so a checkpoint of any size is read without holding a copy. The
 * offset is where libarchive's reader stands after the header; the first
 * MAP_CHECK bytes libarchive reads must equal the mapped ones, else (and for
 * sparse members, compressed or zip archives) *data stays NULL and the bytes
 * read so far are handed back in prefix/plen for the copying reader. */
static int try_map(struct archive *ar, struct archive_entry *e, mt_archive *a, const char *path, const char *name,
                   int64_t declared, const uint8_t **data, uint8_t *prefix, size_t *plen) {
    *data = NULL;
    *plen = 0;
    if (declared < 0 || archive_filter_count(ar) != 1 || archive_filter_code(ar, 0) != ARCHIVE_FILTER_NONE ||
        (archive_format(ar) & ARCHIVE_FORMAT_BASE_MASK) != ARCHIVE_FORMAT_TAR || archive_entry_sparse_count(e) > 0)
        return MT_OK;
    if (!a->map) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0) return MT_OK;
        if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0) {
            void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p != MAP_FAILED) {
                a->map = p;
                a->map_size = (size_t)sb.st_size;
            }
        }
        close(fd);
        if (!a->map) return MT_OK;
    }
    const int64_t off = archive_filter_bytes(ar, 0);
    if (off < 0 || (uint64_t)off > a->map_size || (uint64_t)declared > a->map_size - (uint64_t)off) return MT_OK;
    const size_t want = (uint64_t)declared < MAP_CHECK ? (size_t)declared : MAP_CHECK;
    while (*plen < want) {
        la_ssize_t k = archive_read_data(ar, prefix + *plen, want - *plen);
        if (k < 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: reading '%.200s': %s", path, name, archive_error_string(ar));
        if (k == 0) break;
        *plen += (size_t)k;
    }
    if (*plen != want || memcmp(prefix, (const uint8_t *)a->map + off, want)) return MT_OK;
    *data = (const uint8_t *)a->map + off;
    return MT_OK;
}

int mt_archive_read(mt_archive **out, const char *path) {
    *out = NULL;
    struct archive *ar = archive_read_new();
    mt_archive *a = calloc(1, sizeof *a);
    char dir0[1024] = "", dir[1024];
    int have_dir = 0, rc = MT_OK;
    const uint64_t budget = mem_available() / 10 * 9;
    if (!ar || !a) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    archive_read_support_filter_all(ar);
    archive_read_support_format_tar(ar);
    archive_read_support_format_gnutar(ar);
    archive_read_support_format_zip(ar);
    if (archive_read_open_filename(ar, path, 1 << 16) != ARCHIVE_OK) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: not a readable archive: %s", path, archive_error_string(ar));
        goto done;
    }
    struct archive_entry *e;
    size_t walked = 0;
    int r;
    while ((r = archive_read_next_header(ar, &e)) == ARCHIVE_OK) {
        if (++walked > ARCHIVE_MAX_ENTRIES) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: more than %d entries", path, ARCHIVE_MAX_ENTRIES);
            goto done;
        }
        const char *name = archive_entry_pathname(e);
        if (!name || archive_entry_filetype(e) != AE_IFREG) continue;
        const char *base;
        if (split_name(name, dir, sizeof dir, &base)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: member '%.200s' has an absolute path or a '..' component", path, name);
            goto done;
        }
        if (!wanted(base)) continue;
        if (!have_dir) {
            memcpy(dir0, dir, sizeof dir0);
            have_dir = 1;
        } else if (strcmp(dir, dir0)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: model files in more than one directory ('%.200s/' and '%.200s/'): one "
                           "model per archive", path, dir0, dir);
            goto done;
        }
        if (mt_archive_get(a, base)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: '%.200s' appears twice", path, name);
            goto done;
        }
        if (a->n >= ARCHIVE_MAX_WANTED) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: more than %d model files", path, ARCHIVE_MAX_WANTED);
            goto done;
        }
        /* the declared size when there is one (tar always; zip usually) */
        const int64_t declared = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
        const uint8_t *data = NULL;
        uint8_t *buf = NULL;
        size_t len = 0;
        int mapped = 0;
        uint8_t prefix[MAP_CHECK];
        size_t plen = 0;
        if ((rc = try_map(ar, e, a, path, name, declared, &data, prefix, &plen))) goto done;
        if (data) {
            mapped = 1;
            len = (size_t)declared;
        } else {
            if (declared >= 0 && ((uint64_t)declared > budget || a->held + (uint64_t)declared > budget)) {
                rc = mt_seterr(MT_ERR_NOMEM, "%s: '%.200s' makes %.1f GiB to hold in memory, more than the %.1f GiB "
                               "available; unpack the archive", path, name,
                               (double)(a->held + (uint64_t)declared) / (1 << 30), (double)budget / (1 << 30));
                goto done;
            }
            if ((rc = read_member(ar, path, name, declared, a->held, budget, prefix, plen, &buf, &len))) goto done;
            data = buf;
        }
        mt_archive_member *g = realloc(a->m, (a->n + 1) * sizeof *a->m);
        char *nm = strdup(base);
        if (!g || !nm) {
            if (g) a->m = g;
            free(nm);
            free(buf);
            rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        a->m = g;
        a->m[a->n].name = nm;
        a->m[a->n].data = data;
        a->m[a->n].size = len;
        a->m[a->n].mapped = mapped;
        a->n++;
        if (!mapped) a->held += len;
    }
    if (r != ARCHIVE_EOF) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: %s", path, archive_error_string(ar) ? archive_error_string(ar) : "broken archive");
        goto done;
    }
    if (!a->n) rc = mt_seterr(MT_ERR_NOT_FOUND, "%s: no model files (config.json, *.safetensors, *.gguf, ...) in the "
                              "archive", path);
done:
    if (ar) archive_read_free(ar);
    if (rc) {
        mt_archive_free(a);
        return rc;
    }
    *out = a;
    return MT_OK;
}
