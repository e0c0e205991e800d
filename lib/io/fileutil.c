/* fileutil.c — read-only file mappings and path helpers for lib/io (outputs
 * are in output.c). */
#define _GNU_SOURCE
#include "io_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdint.h>
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
