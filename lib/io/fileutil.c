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
#include <unistd.h>

int mt_map_file(mt_mapped *m, const char *path) {
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mt_seterr(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return mt_seterr(MT_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return mt_seterr(MT_ERR_IO, "%s: not a regular file", path);
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

int mt_out_open_file(mt_out *o, const char *path) {
    int rc = out_begin(o, path, 0);
    if (rc) return rc;
    int fd = mkstemp(o->tmp_path);
    if (fd < 0) {
        int e = errno;
        rc = mt_seterr(MT_ERR_IO, "%s: cannot create temporary output: %s", path, strerror(e));
        free(o->tmp_path);
        o->tmp_path = NULL;
        mt_out_abort(o);
        return rc;
    }
    fchmod(fd, 0644);
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

int mt_out_commit(mt_out *o) {
    if (o->f) {
        int bad = fflush(o->f) != 0 || fsync(fileno(o->f)) != 0;
        bad |= fclose(o->f) != 0;
        o->f = NULL;
        if (bad) {
            int rc = mt_seterr(MT_ERR_IO, "%s: write failed: %s", o->final_path, strerror(errno));
            mt_out_abort(o);
            return rc;
        }
    }
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
    if (o->tmp_path && !o->committed) rm_tree(o->tmp_path);
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
