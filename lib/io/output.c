/* output.c — how moetool writes what it writes (docs/outputs.md), in one
 * place:
 *   - the policy: an output path never overlaps an input, and an existing
 *     path is replaced only when it is a previous moetool output of the same
 *     kind or the caller approved it (--force); a symbolic link is never
 *     followed to delete anything (mt_output_check, and again at commit);
 *   - the registry of temporary paths (files, directories and the files
 *     created inside them), which mt_cleanup_outputs removes from a signal
 *     handler with unlink/rmdir only;
 *   - the sweep of "OUT.tmp-<pid>-XXXXXX" left by processes that were killed;
 *   - mt_out, the all-or-nothing output file or directory.
 * Temporary names: "<final>.tmp-<pid>-<6 of [a-z0-9]>"; a replaced output is
 * moved aside as "<final>.old-<pid>-<6 of [a-z0-9]>" only where the
 * filesystem cannot exchange two directories atomically. */
#define _GNU_SOURCE
#include "writer_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MARKER_NAME ".moetool-output"
#define MARKER_HEAD "moetool-output 1 hf"
#define MARKER_MAX (1 << 20)

/* ---- registry of temporary paths ---------------------------------------
 * An array of entries that only grows by publishing a complete new array
 * (then freeing the old one) and shrinks by moving the last entry into the
 * hole before the count drops, so a signal handler that interrupts any of
 * these steps reads only complete, live entries. Entries are created before
 * the path they name exists, and dropped after it is gone or renamed. */
typedef struct {
    int is_dir;
    char path[];
} tmp_ent;

static _Atomic(tmp_ent **) g_tmp;
static atomic_size_t g_tmp_n;
static size_t g_tmp_cap;

static int tmp_add(const char *path, int is_dir) {
    size_t n = atomic_load(&g_tmp_n);
    tmp_ent **a = atomic_load(&g_tmp);
    if (n == g_tmp_cap) {
        size_t cap = g_tmp_cap ? 2 * g_tmp_cap : 64;
        tmp_ent **b = malloc(cap * sizeof *b);
        if (!b) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        if (n) memcpy(b, a, n * sizeof *b);
        atomic_store(&g_tmp, b);
        free(a);
        a = b;
        g_tmp_cap = cap;
    }
    size_t L = strlen(path);
    tmp_ent *e = malloc(sizeof *e + L + 1);
    if (!e) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    e->is_dir = is_dir;
    memcpy(e->path, path, L + 1);
    a[n] = e;
    atomic_store(&g_tmp_n, n + 1);
    return MT_OK;
}

static void tmp_drop_at(size_t i) {
    size_t n = atomic_load(&g_tmp_n);
    tmp_ent **a = atomic_load(&g_tmp);
    tmp_ent *e = a[i];
    a[i] = a[n - 1];
    atomic_store(&g_tmp_n, n - 1);
    free(e);
}

static int tmp_find(const char *path) {
    size_t n = atomic_load(&g_tmp_n);
    tmp_ent **a = atomic_load(&g_tmp);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(a[i]->path, path)) return (int)i;
    return -1;
}

static void tmp_forget(const char *path) {
    int i = tmp_find(path);
    if (i >= 0) tmp_drop_at((size_t)i);
}

/* Forgets `path` and every entry below it. */
static void tmp_forget_tree(const char *path) {
    size_t L = strlen(path);
    tmp_ent **a = atomic_load(&g_tmp);
    for (size_t i = atomic_load(&g_tmp_n); i-- > 0;) {
        a = atomic_load(&g_tmp);
        const char *p = a[i]->path;
        if (!strncmp(p, path, L) && (p[L] == 0 || p[L] == '/')) tmp_drop_at(i);
    }
}

/* 1 when path's directory is a registered temporary directory. */
static int tmp_in_tmp_dir(const char *path) {
    const char *s = strrchr(path, '/');
    if (!s) return 0;
    size_t L = (size_t)(s - path);
    size_t n = atomic_load(&g_tmp_n);
    tmp_ent **a = atomic_load(&g_tmp);
    for (size_t i = 0; i < n; i++)
        if (a[i]->is_dir && strlen(a[i]->path) == L && !strncmp(a[i]->path, path, L)) return 1;
    return 0;
}

/* Registers a file about to be created inside a temporary directory. */
static int tmp_note_child(const char *path) {
    if (!tmp_in_tmp_dir(path) || tmp_find(path) >= 0) return MT_OK;
    return tmp_add(path, 0);
}

int mt_output_tmp_add(const char *path) {
    if (!path || !*path) return mt_seterr(MT_ERR_ARG, "mt_output_tmp_add: empty path");
    return tmp_find(path) >= 0 ? MT_OK : tmp_add(path, 0);
}

void mt_output_tmp_forget(const char *path) {
    if (path) tmp_forget(path);
}

int mt_output_tmp_create(const char *path, char **tmp_out) {
    /* "<path>.tmp-<pid>-" + 6 of [a-z0-9], the pattern the output policy's
     * sweep removes after a kill (mkstemp's would hold capitals) */
    char *tmp = NULL;
    *tmp_out = NULL;
    if (asprintf(&tmp, "%s.tmp-%ld-xxxxxx", path, (long)getpid()) < 0) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    char *sfx = tmp + strlen(tmp) - 6;
    uint64_t r = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)tmp;
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        for (int i = 0; i < 6; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            sfx[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[(r >> 33) % 36];
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        int st = mt_seterr(MT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    mt_output_tmp_add(tmp);
    *tmp_out = tmp;
    return fd;
}

/* Async-signal-safe: reads the registry, calls only unlink and rmdir. */
int mt_cleanup_outputs(void) {
    tmp_ent **a = atomic_load(&g_tmp);
    size_t n = atomic_load(&g_tmp_n);
    int removed = 0;
    for (size_t i = 0; i < n; i++)
        if (!a[i]->is_dir && unlink(a[i]->path) == 0) removed++;
    for (int pass = 0; pass < 2; pass++) /* a second pass for nested ones */
        for (size_t i = n; i-- > 0;)
            if (a[i]->is_dir && rmdir(a[i]->path) == 0) removed++;
    return removed;
}

/* ---- temporary names ------------------------------------------------------ */
static void name_suffix(char *six) {
    static const char abc[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    static unsigned long long seed;
    if (!seed) seed = (unsigned long long)getpid() * 2654435761ull ^ (unsigned long long)(mt_now() * 1e9) ^ 1;
    for (int i = 0; i < 6; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        six[i] = abc[(seed >> 33) % 36];
    }
    six[6] = 0;
}

/* malloc'd "<final>.<what>-<pid>-XXXXXX" with a fresh suffix. */
static char *side_name(const char *final, const char *what) {
    size_t n = strlen(final) + strlen(what) + 40;
    char *p = malloc(n);
    if (!p) return NULL;
    char six[7];
    name_suffix(six);
    snprintf(p, n, "%s.%s-%ld-%s", final, what, (long)getpid(), six);
    return p;
}

enum { MAKE_FILE, MAKE_DIR, MAKE_LINK };

/* Creates a registered temporary beside `final`: a file (*fd set), a
 * directory, or a name for the open unnamed file `link_fd`. */
static int make_tmp(char **out, const char *final, int how, int link_fd, int *fd) {
    *out = NULL;
    for (int attempt = 0; attempt < 100; attempt++) {
        char *p = side_name(final, "tmp");
        if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        int rc = tmp_add(p, how == MAKE_DIR);
        if (rc) {
            free(p);
            return rc;
        }
        int ok;
        if (how == MAKE_FILE) {
            *fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
            ok = *fd >= 0;
        } else if (how == MAKE_DIR) {
            ok = mkdir(p, 0755) == 0;
        } else {
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", link_fd);
            ok = linkat(AT_FDCWD, proc, AT_FDCWD, p, AT_SYMLINK_FOLLOW) == 0;
        }
        if (ok) {
            *out = p;
            return MT_OK;
        }
        int e = errno;
        tmp_forget(p);
        free(p);
        if (e != EEXIST) {
            errno = e;
            return mt_seterr(MT_ERR_IO, "%s: cannot create a temporary output beside it: %s", final, strerror(e));
        }
    }
    return mt_seterr(MT_ERR_IO, "%s: cannot find a free temporary name beside it", final);
}

/* ---- removing trees without following links ------------------------------ */
static void rm_tree_at(int dfd, const char *name, int depth) {
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
    if (!S_ISDIR(st.st_mode)) {
        unlinkat(dfd, name, 0);
        return;
    }
    if (depth >= 64) return;
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    for (int pass = 0; pass < 8; pass++) {
        int seen = 0;
        struct dirent *e;
        rewinddir(d);
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            rm_tree_at(fd, e->d_name, depth + 1);
            seen++;
        }
        if (!seen) break;
    }
    closedir(d);
    unlinkat(dfd, name, AT_REMOVEDIR);
}

static void rm_tree(const char *path) { rm_tree_at(AT_FDCWD, path, 0); }

/* 1 when directory `name` in dfd holds only regular files (what moetool's
 * temporary directories hold). */
static int only_files(int dfd, const char *name) {
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return 0;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return 0;
    }
    int ok = 1;
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        struct stat st;
        ok = fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
    }
    closedir(d);
    return ok;
}

/* ---- recognising moetool's outputs --------------------------------------- */
static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* The names listed in a directory's marker, one per line after the head;
 * malloc'd text with the lines NUL-separated, or NULL when there is no valid
 * marker. */
static char *read_marker(const char *dir, size_t *len) {
    char *p = mt_path_join(dir, MARKER_NAME);
    if (!p) return NULL;
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    free(p);
    if (fd < 0) return NULL;
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && st.st_size <= MARKER_MAX &&
        (buf = malloc((size_t)st.st_size + 1))) {
        size_t n = 0;
        while (n < (size_t)st.st_size) {
            ssize_t k = read(fd, buf + n, (size_t)st.st_size - n);
            if (k <= 0) break;
            n += (size_t)k;
        }
        buf[n] = 0;
        size_t hl = strlen(MARKER_HEAD);
        if (n != (size_t)st.st_size || strncmp(buf, MARKER_HEAD "\n", hl + 1) || memchr(buf, 0, n)) {
            free(buf);
            buf = NULL;
        } else {
            for (size_t i = 0; i < n; i++)
                if (buf[i] == '\n') buf[i] = 0;
            *len = n;
        }
    }
    close(fd);
    return buf;
}

static int marker_lists(const char *m, size_t len, const char *name) {
    size_t i = strlen(MARKER_HEAD) + 1;
    while (i < len) {
        if (!strcmp(m + i, name)) return 1;
        i += strlen(m + i) + 1;
    }
    return 0;
}

/* 1 when `path` (lstat'ed into st) is a previous moetool output of `kind`;
 * else 0 with the reason in why. */
static int is_moetool_output(const char *path, const struct stat *st, mt_output_kind kind, char *why, size_t wn) {
    if (S_ISLNK(st->st_mode)) {
        snprintf(why, wn, "is a symbolic link, which moetool never writes through");
        return 0;
    }
    if (kind == MT_OUTPUT_GGUF) {
        if (!S_ISREG(st->st_mode)) {
            snprintf(why, wn, "exists and is not a file");
            return 0;
        }
        char head[4] = {0};
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        int magic = fd >= 0 && read(fd, head, 4) == 4 && !memcmp(head, "GGUF", 4);
        if (fd >= 0) close(fd);
        mt_gguf *g = NULL;
        int ok = magic && mt_gguf_open(&g, path) == MT_OK && mt_gguf_find_key(g, MT_GGUF_MOETOOL_KEY) >= 0;
        mt_gguf_free(g);
        mt_clearerr();
        if (!ok) snprintf(why, wn, "exists and is not a GGUF that moetool wrote (no %s key)", MT_GGUF_MOETOOL_KEY);
        return ok;
    }
    if (!S_ISDIR(st->st_mode)) {
        snprintf(why, wn, "exists and is not a directory");
        return 0;
    }
    size_t mlen = 0;
    char *m = read_marker(path, &mlen);
    if (!m) {
        snprintf(why, wn, "exists and is not a directory that moetool wrote (no %s in it)", MARKER_NAME);
        return 0;
    }
    DIR *d = opendir(path);
    int ok = d != NULL;
    if (!d) snprintf(why, wn, "cannot be listed: %s", strerror(errno));
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, MARKER_NAME)) continue;
        struct stat es;
        if (!marker_lists(m, mlen, e->d_name)) {
            snprintf(why, wn, "holds %s, which moetool did not write there", e->d_name);
            ok = 0;
        } else if (fstatat(dirfd(d), e->d_name, &es, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(es.st_mode)) {
            snprintf(why, wn, "holds %s, which is no longer the file moetool wrote", e->d_name);
            ok = 0;
        }
    }
    if (d) closedir(d);
    free(m);
    return ok;
}

/* Paths the caller approved for replacement (mt_output_check with force),
 * with the identity they had then. */
typedef struct approval {
    struct approval *next;
    dev_t dev;
    ino_t ino;
    char path[];
} approval;
static approval *g_approved;

static void approve(const char *path, const struct stat *st) {
    size_t L = strlen(path);
    approval *a = malloc(sizeof *a + L + 1);
    if (!a) return; /* then only a moetool output is replaced: safe */
    a->dev = st->st_dev;
    a->ino = st->st_ino;
    memcpy(a->path, path, L + 1);
    a->next = g_approved;
    g_approved = a;
}

static int approved(const char *path, const struct stat *st) {
    for (approval *a = g_approved; a; a = a->next)
        if (a->dev == st->st_dev && a->ino == st->st_ino && !strcmp(a->path, path)) return 1;
    return 0;
}

/* ---- stale temporaries ----------------------------------------------------- */
/* pid in "<base>.tmp-<pid>-XXXXXX" / "<base>.old-<pid>-XXXXXX", else 0. */
static long stale_pid(const char *name, const char *base, int *is_old) {
    size_t bl = strlen(base);
    if (strncmp(name, base, bl)) return 0;
    const char *p = name + bl;
    if (!strncmp(p, ".tmp-", 5))
        *is_old = 0;
    else if (!strncmp(p, ".old-", 5))
        *is_old = 1;
    else
        return 0;
    p += 5;
    long pid = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9' && nd < 10) pid = pid * 10 + (*p++ - '0'), nd++;
    if (!nd || pid <= 0 || pid > INT_MAX || *p++ != '-') return 0;
    for (int i = 0; i < 6; i++, p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'))) return 0;
    return *p ? 0 : pid;
}

static void sweep_stale(const char *final) {
    char *dir = mt_path_dir(final);
    if (!dir) return;
    const char *base = base_name(final);
    DIR *d = opendir(dir);
    if (!d) {
        free(dir);
        return;
    }
    int dfd = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        int is_old = 0;
        long pid = stale_pid(e->d_name, base, &is_old);
        if (!pid || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* still running (or not ours to ask) */
        struct stat st, fs;
        if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_uid != geteuid()) continue;
        if (is_old && fstatat(dfd, base, &fs, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) {
            /* killed between moving the old output aside and putting the
             * new one in place: the old one goes back */
            if (renameat(dfd, e->d_name, dfd, base) == 0)
                mt_log(MT_LOG_INFO, "%s: restored from %s, where process %ld (no longer running) had moved it",
                       final, e->d_name, pid);
            continue;
        }
        if (S_ISREG(st.st_mode)) {
            if (unlinkat(dfd, e->d_name, 0) != 0) continue;
        } else if (S_ISDIR(st.st_mode) && only_files(dfd, e->d_name)) {
            rm_tree_at(dfd, e->d_name, 0);
        } else {
            continue;
        }
        mt_log(MT_LOG_INFO, "%s%s%s: removed, a temporary left by process %ld, which no longer runs",
               strchr(final, '/') ? dir : "", strchr(final, '/') ? "/" : "", e->d_name, pid);
    }
    closedir(d);
    free(dir);
}

/* ---- the policy -------------------------------------------------------------- */
typedef struct {
    dev_t dev;
    ino_t ino;
    char *path;
} input_id;

typedef struct {
    input_id *v;
    size_t n, cap;
} input_set;

static int inputs_add(input_set *s, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return MT_OK; /* what does not exist cannot be overwritten */
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        input_id *v = realloc(s->v, cap * sizeof *v);
        if (!v) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        s->v = v;
        s->cap = cap;
    }
    if (!(s->v[s->n].path = strdup(path))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    s->v[s->n].dev = st.st_dev;
    s->v[s->n].ino = st.st_ino;
    s->n++;
    return MT_OK;
}

/* The model and what is read with it: a directory and every entry in it
 * (shards may be links into a cache), or a file and the side files beside it. */
static int inputs_add_model(input_set *s, const char *model) {
    int rc = inputs_add(s, model);
    if (rc || !model) return rc;
    if (mt_path_is_dir(model)) {
        DIR *d = opendir(model);
        struct dirent *e;
        while (d && !rc && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *p = mt_path_join(model, e->d_name);
            rc = p ? inputs_add(s, p) : mt_seterr(MT_ERR_NOMEM, "out of memory");
            free(p);
        }
        if (d) closedir(d);
        return rc;
    }
    static const char *const side[] = {"config.json",           "generation_config.json", "tokenizer.model",
                                       "tokenizer.json",        "tokenizer_config.json",  "special_tokens_map.json",
                                       "model.safetensors.index.json"};
    char *dir = mt_path_dir(model);
    if (!dir) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < sizeof side / sizeof side[0] && !rc; i++) {
        char *p = mt_path_join(dir, side[i]);
        rc = p ? inputs_add(s, p) : mt_seterr(MT_ERR_NOMEM, "out of memory");
        free(p);
    }
    free(dir);
    return rc;
}

static const input_id *inputs_match(const input_set *s, const struct stat *st) {
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].dev == st->st_dev && s->v[i].ino == st->st_ino) return &s->v[i];
    return NULL;
}

/* Walks `real` (a canonical path) and each directory above it; returns the
 * first whose identity is in s (or equals one), else NULL. */
static const input_id *ancestor_in(const char *real, const input_set *s, const struct stat *one, int *hit_one) {
    char buf[PATH_MAX];
    if (strlen(real) >= sizeof buf) return NULL;
    strcpy(buf, real);
    for (;;) {
        struct stat st;
        if (stat(buf, &st) == 0) {
            if (s) {
                const input_id *m = inputs_match(s, &st);
                if (m) return m;
            } else if (st.st_dev == one->st_dev && st.st_ino == one->st_ino) {
                *hit_one = 1;
                return NULL;
            }
        }
        char *slash = strrchr(buf, '/');
        if (!slash || !strcmp(buf, "/")) return NULL;
        if (slash == buf)
            buf[1] = 0;
        else
            *slash = 0;
    }
}

static int check_overlap(const char *out, const input_set *in) {
    struct stat ost, lst;
    int exists = stat(out, &ost) == 0;
    const input_id *m = NULL;
    if (exists && (m = inputs_match(in, &ost)))
        return mt_seterr(MT_ERR_REFUSED, "%s: the output would replace the input %s", out, m->path);
    if (lstat(out, &lst) == 0 && (m = inputs_match(in, &lst)))
        return mt_seterr(MT_ERR_REFUSED, "%s: the output would replace the input %s", out, m->path);
    /* inside an input: the directory the output goes into, and each above */
    char *parent = mt_path_dir(out);
    if (!parent) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    char real[PATH_MAX];
    if (realpath(parent, real) && (m = ancestor_in(real, in, NULL, NULL))) {
        free(parent);
        return mt_seterr(MT_ERR_REFUSED, "%s: the output would be written inside the input %s", out, m->path);
    }
    free(parent);
    /* containing an input */
    if (exists && S_ISDIR(ost.st_mode))
        for (size_t i = 0; i < in->n; i++) {
            int hit = 0;
            if (realpath(in->v[i].path, real)) ancestor_in(real, NULL, &ost, &hit);
            if (hit)
                return mt_seterr(MT_ERR_REFUSED, "%s: the output would replace a directory that holds the input %s", out,
                                 in->v[i].path);
        }
    return MT_OK;
}

/* "out/" and "out" name the same thing */
static char *strip_slashes(const char *path) {
    char *p = strdup(path);
    if (!p) return NULL;
    size_t L = strlen(p);
    while (L > 1 && p[L - 1] == '/') p[--L] = 0;
    return p;
}

int mt_output_check(const char *out_path, mt_output_kind kind, int force, const char *model_path,
                    const char *const *other_inputs, size_t n_other) {
    if (!out_path || !*out_path) return mt_seterr(MT_ERR_REFUSED, "the output path is empty");
    if (kind != MT_OUTPUT_GGUF && kind != MT_OUTPUT_HF_DIR)
        return mt_seterr(MT_ERR_ARG, "%s: unknown output kind %d", out_path, (int)kind);
    char *out = strip_slashes(out_path);
    if (!out) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    input_set in = {0};
    int rc = model_path ? inputs_add_model(&in, model_path) : MT_OK;
    for (size_t i = 0; i < n_other && !rc; i++)
        if (other_inputs[i]) rc = inputs_add(&in, other_inputs[i]);
    if (!rc) rc = check_overlap(out, &in);
    for (size_t i = 0; i < in.n; i++) free(in.v[i].path);
    free(in.v);
    if (rc) goto done;

    sweep_stale(out);

    struct stat st;
    if (lstat(out, &st) != 0) {
        if (errno != ENOENT) rc = mt_seterr(MT_ERR_IO, "%s: cannot stat: %s", out, strerror(errno));
        goto done;
    }
    char why[512];
    if (is_moetool_output(out, &st, kind, why, sizeof why)) goto done;
    if (force) {
        approve(out, &st);
        goto done;
    }
    rc = mt_seterr(MT_ERR_REFUSED, "%s: %s; give --force to replace it%s", out, why,
                   S_ISLNK(st.st_mode) ? " (the link itself, not what it points to)" : "");
done:
    free(out);
    return rc;
}

/* ---- mt_out: all-or-nothing outputs ---------------------------------------- */
static int out_begin(mt_out *o, const char *path, int is_dir) {
    memset(o, 0, sizeof *o);
    o->is_dir = is_dir;
    if (!*path) return mt_seterr(MT_ERR_ARG, "the output path is empty");
    if (!(o->final_path = strip_slashes(path))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    return MT_OK;
}

/* Files are created unnamed (O_TMPFILE) in the destination's directory and
 * given a name only at commit, so that even a SIGKILL leaves nothing behind.
 * Filesystems without O_TMPFILE (and MOETOOL_NO_O_TMPFILE=1 in the
 * environment) use a registered "<path>.tmp-<pid>-XXXXXX". */
int mt_out_open_file(mt_out *o, const char *path) {
    int rc = out_begin(o, path, 0);
    if (rc) return rc;
    int fd = -1;
#ifdef O_TMPFILE
    const char *no = getenv("MOETOOL_NO_O_TMPFILE");
    if (!no || !*no || !strcmp(no, "0")) {
        char *dir = mt_path_dir(o->final_path);
        if (!dir) {
            mt_out_abort(o);
            return mt_seterr(MT_ERR_NOMEM, "out of memory");
        }
        fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
        int e = errno;
        free(dir);
        if (fd < 0 && e != EOPNOTSUPP && e != EISDIR && e != EINVAL) {
            rc = mt_seterr(MT_ERR_IO, "%s: cannot create output: %s", path, strerror(e));
            mt_out_abort(o);
            return rc;
        }
        if (fd >= 0) o->unnamed = 1;
    }
#endif
    if (fd < 0 && (rc = make_tmp(&o->tmp_path, o->final_path, MAKE_FILE, -1, &fd))) {
        mt_out_abort(o);
        return rc;
    }
    o->f = fdopen(fd, "wb");
    if (!o->f) {
        close(fd);
        mt_out_abort(o);
        return mt_seterr(MT_ERR_IO, "%s: cannot open temporary output", path);
    }
    setvbuf(o->f, NULL, _IOFBF, 1 << 20);
    return MT_OK;
}

int mt_out_open_dir(mt_out *o, const char *path) {
    int rc = out_begin(o, path, 1);
    if (!rc) rc = make_tmp(&o->tmp_path, o->final_path, MAKE_DIR, -1, NULL);
    if (rc) mt_out_abort(o);
    return rc;
}

int mt_out_write(mt_out *o, const void *buf, size_t n) {
    if (!o->f) return mt_seterr(MT_ERR_INTERNAL, "%s: write to a closed output", o->final_path);
    if (n && fwrite(buf, 1, n, o->f) != n)
        return mt_seterr(MT_ERR_IO, "%s: write failed: %s", o->final_path, strerror(errno));
    return MT_OK;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The marker: the head line, then the name of every file in the directory,
 * sorted (so that the same output gives the same bytes). */
static int write_marker(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return mt_seterr(MT_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0, bytes = strlen(MARKER_HEAD) + 2;
    int rc = MT_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, MARKER_NAME)) continue;
        if (strchr(e->d_name, '\n')) continue; /* moetool writes no such name */
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            char **v = realloc(names, cap * sizeof *v);
            if (!v) {
                rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
                break;
            }
            names = v;
        }
        if (!(names[n] = strdup(e->d_name))) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        else bytes += strlen(names[n++]) + 1;
    }
    closedir(d);
    char *buf = rc ? NULL : malloc(bytes);
    if (!rc && !buf) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
    if (!rc) {
        qsort(names, n, sizeof *names, cmp_names);
        size_t k = (size_t)sprintf(buf, "%s\n", MARKER_HEAD);
        for (size_t i = 0; i < n; i++) k += (size_t)sprintf(buf + k, "%s\n", names[i]);
        rc = mt_write_small_file(dir, MARKER_NAME, buf, k);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    free(buf);
    return rc;
}

/* Puts the finished temporary o->tmp_path at o->final_path. */
static int put_in_place(mt_out *o) {
    const char *tmp = o->tmp_path, *fin = o->final_path;
    struct stat st;
    if (lstat(fin, &st) != 0) {
        if (errno != ENOENT) return mt_seterr(MT_ERR_IO, "%s: cannot stat: %s", fin, strerror(errno));
        int rc = tmp_note_child(fin);
        if (rc) return rc;
        if (rename(tmp, fin) != 0) {
            rc = mt_seterr(MT_ERR_IO, "%s: cannot rename output into place: %s", fin, strerror(errno));
            tmp_forget(fin);
            return rc;
        }
        tmp_forget_tree(tmp);
        return MT_OK;
    }
    char why[512];
    if (!approved(fin, &st) && !is_moetool_output(fin, &st, o->is_dir ? MT_OUTPUT_HF_DIR : MT_OUTPUT_GGUF, why, sizeof why))
        return mt_seterr(MT_ERR_REFUSED, "%s: %s; nothing was replaced", fin, why);
    if (!o->is_dir && !S_ISDIR(st.st_mode)) {
        /* atomic; replaces a file, or a symbolic link itself */
        if (rename(tmp, fin) != 0) return mt_seterr(MT_ERR_IO, "%s: cannot rename output into place: %s", fin, strerror(errno));
        tmp_forget(tmp);
        return MT_OK;
    }
    if (o->is_dir && S_ISDIR(st.st_mode) && renameat2(AT_FDCWD, tmp, AT_FDCWD, fin, RENAME_EXCHANGE) == 0) {
        /* the old output is now under the temporary name */
        tmp_forget_tree(tmp);
        rm_tree(tmp);
        return MT_OK;
    }
    /* No exchange here (or file <-> directory): move the old one aside. */
    char *aside = NULL;
    for (int attempt = 0; attempt < 100 && !aside; attempt++) {
        aside = side_name(fin, "old");
        if (!aside) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        struct stat as;
        if (lstat(aside, &as) == 0 || errno != ENOENT) {
            free(aside);
            aside = NULL;
        }
    }
    if (!aside) return mt_seterr(MT_ERR_IO, "%s: cannot find a free name to move it aside", fin);
    if (rename(fin, aside) != 0) {
        int rc = mt_seterr(MT_ERR_IO, "%s: cannot move the existing output aside: %s", fin, strerror(errno));
        free(aside);
        return rc;
    }
    if (rename(tmp, fin) != 0) {
        int rc = mt_seterr(MT_ERR_IO, "%s: cannot rename output into place: %s", fin, strerror(errno));
        rename(aside, fin);
        free(aside);
        return rc;
    }
    tmp_forget_tree(tmp);
    rm_tree(aside);
    free(aside);
    return MT_OK;
}

int mt_out_commit(mt_out *o) {
    int rc = MT_OK;
    if (o->f) {
        int bad = fflush(o->f) != 0 || fsync(fileno(o->f)) != 0;
        int e = errno;
        if (!bad && o->unnamed) {
            /* Give the unnamed file a registered temporary name first. */
            if ((rc = make_tmp(&o->tmp_path, o->final_path, MAKE_LINK, fileno(o->f), NULL))) {
                fclose(o->f);
                o->f = NULL;
                mt_out_abort(o);
                return rc;
            }
            o->unnamed = 0;
        }
        bad |= fclose(o->f) != 0;
        if (bad && !e) e = errno;
        o->f = NULL;
        if (bad) {
            rc = mt_seterr(MT_ERR_IO, "%s: write failed: %s", o->final_path, strerror(e));
            mt_out_abort(o);
            return rc;
        }
    }
    if (o->is_dir) rc = write_marker(o->tmp_path);
    if (!rc) rc = put_in_place(o);
    if (rc) {
        mt_out_abort(o);
        return rc;
    }
    o->committed = 1;
    free(o->tmp_path);
    o->tmp_path = NULL;
    free(o->final_path);
    o->final_path = NULL;
    return MT_OK;
}

void mt_out_abort(mt_out *o) {
    if (!o) return;
    if (o->f) {
        fclose(o->f);
        o->f = NULL;
    }
    if (o->tmp_path && !o->committed) {
        rm_tree(o->tmp_path);
        tmp_forget_tree(o->tmp_path);
    }
    o->unnamed = 0;
    free(o->tmp_path);
    free(o->final_path);
    o->tmp_path = o->final_path = NULL;
}

/* A small file written in one go into a directory moetool is building (a
 * registered temporary directory). */
int mt_write_small_file(const char *dir, const char *name, const void *buf, size_t n) {
    char *p = mt_path_join(dir, name);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = tmp_note_child(p);
    if (rc) {
        free(p);
        return rc;
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    FILE *f = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!f) {
        rc = mt_seterr(MT_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
        if (fd >= 0) close(fd);
        free(p);
        return rc;
    }
    int bad = (n && fwrite(buf, 1, n, f) != n);
    bad |= fclose(f) != 0;
    rc = bad ? mt_seterr(MT_ERR_IO, "%s: write failed: %s", p, strerror(errno)) : MT_OK;
    free(p);
    return rc;
}
