/* fileutil.c — file mappings and all-or-nothing outputs for lib/io. */
#define _GNU_SOURCE
#include "io_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdint.h>
#include <unistd.h>

const char *mt_file_kind(unsigned mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return S_ISREG(mode) ? "a regular file" : "not a file";
}

int mt_map_file(mt_mapped *m, const char *path) {
    memset(m, 0, sizeof *m);
    /* O_NONBLOCK: a FIFO (or device) given as an input must be refused, not
     * waited on; symlinks are followed (the Hugging Face cache is made of them). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return mt_seterr(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mt_seterr(MT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mt_seterr(MT_ERR_IO, "%s: not a regular file (%s)", path, mt_file_kind(st.st_mode));
    }
    m->size = (size_t)st.st_size;
    if (m->size > 0) {
        m->data = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m->data == MAP_FAILED) {
            int e = errno;
            m->data = NULL;
            close(fd);
            return mt_seterr(MT_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd);
    m->path = strdup(path);
    if (!m->path) {
        mt_unmap_file(m);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    return MT_OK;
}

void mt_drop_pages(const void *p, uint64_t n) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t b = ((uintptr_t)p + (uintptr_t)n) & ~(page - 1);
    if (p && b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

void mt_unmap_file(mt_mapped *m) {
    if (!m) return;
    if (m->data) munmap(m->data, m->size);
    free(m->path);
    memset(m, 0, sizeof *m);
}

static int out_begin(mt_out *o, const char *path, int is_dir) {
    memset(o, 0, sizeof *o);
    o->is_dir = is_dir;
    o->final_path = strdup(path);
    size_t n = strlen(path) + 32;
    o->tmp_path = malloc(n);
    if (!o->final_path || !o->tmp_path) {
        mt_out_abort(o);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    /* strip trailing slashes so "out/" and "out" name the same thing */
    size_t L = strlen(o->final_path);
    while (L > 1 && o->final_path[L - 1] == '/') o->final_path[--L] = 0;
    snprintf(o->tmp_path, n, "%s.tmp-XXXXXX", o->final_path);
    return MT_OK;
}

/* Registry of temporary directories being written, so that a signal handler
 * in the program can remove them (mt_cleanup_outputs). Fixed storage: the
 * handler must not allocate. */
#define MT_PENDING_MAX 16
static char g_pending[MT_PENDING_MAX][4096];
static volatile int g_pending_used[MT_PENDING_MAX];

static void pending_add(const char *path) {
    for (int i = 0; i < MT_PENDING_MAX; i++)
        if (!g_pending_used[i] && strlen(path) < sizeof g_pending[i]) {
            strcpy(g_pending[i], path);
            g_pending_used[i] = 1;
            return;
        }
}

static void pending_del(const char *path) {
    for (int i = 0; i < MT_PENDING_MAX; i++)
        if (g_pending_used[i] && !strcmp(g_pending[i], path)) g_pending_used[i] = 0;
}

static void rm_tree(const char *path);

void mt_cleanup_outputs(void) {
    for (int i = 0; i < MT_PENDING_MAX; i++)
        if (g_pending_used[i]) {
            g_pending_used[i] = 0;
            rm_tree(g_pending[i]);
        }
}

/* Files are created unnamed (O_TMPFILE) in the destination's directory and
 * given a name only at commit, so that even a SIGKILL leaves nothing behind.
 * Filesystems without O_TMPFILE fall back to a named "<path>.tmp-XXXXXX". */
int mt_out_open_file(mt_out *o, const char *path) {
    int rc = out_begin(o, path, 0);
    if (rc) return rc;
    int fd = -1;
#ifdef O_TMPFILE
    char *dir = mt_path_dir(o->final_path);
    if (dir) {
        fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
            int e = errno;
            free(dir);
            rc = mt_seterr(MT_ERR_IO, "%s: cannot create output: %s", path, strerror(e));
            mt_out_abort(o);
            return rc;
        }
        free(dir);
        if (fd >= 0) o->unnamed = 1;
    }
#endif
    if (fd < 0) {
        fd = mkstemp(o->tmp_path);
        if (fd < 0) {
            int e = errno;
            rc = mt_seterr(MT_ERR_IO, "%s: cannot create temporary output: %s", path, strerror(e));
            free(o->tmp_path);
            o->tmp_path = NULL;
            mt_out_abort(o);
            return rc;
        }
        fchmod(fd, 0644);
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
    if (rc) return rc;
    if (!mkdtemp(o->tmp_path)) {
        int e = errno;
        rc = mt_seterr(MT_ERR_IO, "%s: cannot create temporary output directory: %s", path, strerror(e));
        free(o->tmp_path);
        o->tmp_path = NULL;
        mt_out_abort(o);
        return rc;
    }
    chmod(o->tmp_path, 0755);
    pending_add(o->tmp_path);
    return MT_OK;
}

int mt_out_write(mt_out *o, const void *buf, size_t n) {
    if (!o->f) return mt_seterr(MT_ERR_INTERNAL, "%s: write to a closed output", o->final_path);
    if (n && fwrite(buf, 1, n, o->f) != n)
        return mt_seterr(MT_ERR_IO, "%s: write failed: %s", o->final_path, strerror(errno));
    return MT_OK;
}

/* Removes a file, or a directory of plain files (all our temporaries are). */
static void rm_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *child = mt_path_join(path, e->d_name);
        if (child) {
            unlink(child);
            free(child);
        }
    }
    closedir(d);
    rmdir(path);
}

/* Links /proc/self/fd/N to tmpl ("...XXXXXX" filled with fresh letters). */
static int link_unnamed(const char *proc, char *tmpl) {
    static const char abc[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    size_t L = strlen(tmpl);
    if (L < 6) return -1;
    unsigned long long seed = (unsigned long long)getpid() * 2654435761ull ^ (unsigned long long)(uintptr_t)tmpl;
    seed ^= (unsigned long long)(mt_now() * 1e9);
    for (int attempt = 0; attempt < 100; attempt++) {
        for (size_t i = L - 6; i < L; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            tmpl[i] = abc[(seed >> 33) % 36];
        }
        if (linkat(AT_FDCWD, proc, AT_FDCWD, tmpl, AT_SYMLINK_FOLLOW) == 0) return 0;
        if (errno != EEXIST) return -1;
    }
    return -1;
}

int mt_out_commit(mt_out *o) {
    if (o->f) {
        int bad = fflush(o->f) != 0 || fsync(fileno(o->f)) != 0;
        if (!bad && o->unnamed) {
            /* Give the unnamed file its temporary name, then rename below. */
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", fileno(o->f));
            if (link_unnamed(proc, o->tmp_path) != 0) {
                int rc = mt_seterr(MT_ERR_IO, "%s: cannot name the output: %s", o->final_path, strerror(errno));
                fclose(o->f);
                o->f = NULL;
                o->unnamed = 0;
                free(o->tmp_path);
                o->tmp_path = NULL;
                mt_out_abort(o);
                return rc;
            }
            o->unnamed = 0;
        }
        bad |= fclose(o->f) != 0;
        o->f = NULL;
        if (bad) {
            int rc = mt_seterr(MT_ERR_IO, "%s: write failed: %s", o->final_path, strerror(errno));
            mt_out_abort(o);
            return rc;
        }
    }
    if (o->is_dir && o->tmp_path) pending_del(o->tmp_path);
    if (o->is_dir && mt_path_is_dir(o->final_path)) {
        /* Replace an existing output directory: move it aside first. */
        size_t n = strlen(o->final_path) + 32;
        char *old = malloc(n);
        if (!old) return mt_seterr(MT_ERR_NOMEM, "out of memory");
        snprintf(old, n, "%s.old-XXXXXX", o->final_path);
        if (!mkdtemp(old) || rmdir(old) != 0 || rename(o->final_path, old) != 0) {
            int rc = mt_seterr(MT_ERR_IO, "%s: cannot replace existing directory: %s", o->final_path, strerror(errno));
            free(old);
            mt_out_abort(o);
            return rc;
        }
        if (rename(o->tmp_path, o->final_path) != 0) {
            int rc = mt_seterr(MT_ERR_IO, "%s: cannot rename output into place: %s", o->final_path, strerror(errno));
            rename(old, o->final_path);
            free(old);
            mt_out_abort(o);
            return rc;
        }
        rm_tree(old);
        free(old);
    } else if (rename(o->tmp_path, o->final_path) != 0) {
        int rc = mt_seterr(MT_ERR_IO, "%s: cannot rename output into place: %s", o->final_path, strerror(errno));
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
    if (o->tmp_path && o->is_dir) pending_del(o->tmp_path);
    if (o->tmp_path && !o->committed && !o->unnamed) rm_tree(o->tmp_path);
    o->unnamed = 0;
    free(o->tmp_path);
    free(o->final_path);
    o->tmp_path = o->final_path = NULL;
}

int mt_write_small_file(const char *dir, const char *name, const void *buf, size_t n) {
    char *p = mt_path_join(dir, name);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    FILE *f = fopen(p, "wb");
    if (!f) {
        int rc = mt_seterr(MT_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
        free(p);
        return rc;
    }
    int bad = (n && fwrite(buf, 1, n, f) != n);
    bad |= fclose(f) != 0;
    int rc = bad ? mt_seterr(MT_ERR_IO, "%s: write failed", p) : MT_OK;
    free(p);
    return rc;
}

char *mt_path_join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (!p) return NULL;
    memcpy(p, a, la);
    size_t k = la;
    if (la && a[la - 1] != '/') p[k++] = '/';
    memcpy(p + k, b, lb + 1);
    return p;
}

char *mt_path_dir(const char *path) {
    const char *s = strrchr(path, '/');
    if (!s) return strdup(".");
    if (s == path) return strdup("/");
    return strndup(path, (size_t)(s - path));
}

int mt_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int mt_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}
