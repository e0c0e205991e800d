/* io_impl.h — private helpers of lib/io: read-only file mappings, output
 * files that appear only when complete, paths. */
#ifndef MT_IO_IMPL_H
#define MT_IO_IMPL_H

#include "moetool/mt_common.h"
#include "moetool/mt_arch.h"
#include "moetool/mt_io.h"

#include <stdio.h>

/* A read-only mapping of a whole file (size 0 files map to data == NULL). */
typedef struct {
    void *data;
    size_t size;
    char *path;
} mt_mapped;

int mt_map_file(mt_mapped *m, const char *path);
/* "a FIFO", "a directory", ... for a stat st_mode (error messages). */
const char *mt_file_kind(unsigned mode);
/* Drops the whole pages inside [p, p + n) of a read-only file mapping from
 * this process's resident set (they are re-read from the file if touched
 * again). Streaming writers call it on input they are done with, so peak
 * RSS stays at a few tensors however large the checkpoint. */
void mt_drop_pages(const void *p, uint64_t n);
void mt_unmap_file(mt_mapped *m);

/* An output that appears only when complete (output.c, docs/outputs.md): a
 * file is written unnamed (O_TMPFILE) or as a registered
 * "<path>.tmp-<pid>-XXXXXX", a directory as such a registered temporary
 * directory (files go inside tmp_path); mt_out_commit puts it at <path> under
 * the output policy (replacing only a moetool output of the same kind or a
 * path mt_output_check approved); mt_out_abort (also safe after commit)
 * removes the temporary. */
typedef struct {
    char *final_path;
    char *tmp_path;
    FILE *f;          /* file outputs only */
    int is_dir;
    int committed;
    int unnamed;      /* file created with O_TMPFILE: no name until commit */
                      /* tmp_path: the temporary's name (NULL while unnamed) */
} mt_out;

int mt_out_open_file(mt_out *o, const char *path);
int mt_out_open_dir(mt_out *o, const char *path);
/* Writes exactly n bytes or fails with a message naming the final path. */
int mt_out_write(mt_out *o, const void *buf, size_t n);
int mt_out_commit(mt_out *o);
void mt_out_abort(mt_out *o);

/* Writes a whole small file (config.json, ...) at dir/name; a file inside a
 * registered temporary directory is registered too. */
int mt_write_small_file(const char *dir, const char *name, const void *buf, size_t n);

/* malloc'd "a/b"; NULL on allocation failure. */
char *mt_path_join(const char *a, const char *b);
/* malloc'd directory part of a path ("." when none). */
char *mt_path_dir(const char *path);
int mt_path_is_dir(const char *path);
int mt_path_exists(const char *path);

/* ---- archives (archive.c) ----------------------------------------------
 * The model files of an archive (names without the archive's directory):
 * in an uncompressed tar, views into the archive mapped read-only (nothing
 * copied); otherwise read into memory. mt_archive_name: whether a path names
 * an archive by its extension (.tar, .tar.gz, .tgz, .tar.zst, .tzst,
 * .tar.xz, .txz, .zip). */
typedef struct {
    char *name;
    const uint8_t *data;
    size_t size;
    int mapped; /* data points into the archive's mapping (not owned) */
} mt_archive_member;
typedef struct {
    size_t n;
    mt_archive_member *m;
    void *map;        /* the whole archive mapped, or NULL */
    size_t map_size;
    uint64_t held;    /* bytes copied into memory (members not mapped) */
} mt_archive;
int mt_archive_name(const char *path);
int mt_archive_read(mt_archive **out, const char *path);
const mt_archive_member *mt_archive_get(const mt_archive *a, const char *name);
void mt_archive_free(mt_archive *a);

/* convert's choices for a Hugging Face tensor going to GGUF (convert.c),
 * shared with the in-memory GGUF layout of a loaded model (weights.c). */
mt_dtype mt_io_gguf_type(const mt_arch_tensor *r, mt_dtype src, int n_dims, int64_t cols, int want,
                         int *fallback);
int mt_io_gguf_perm_heads(const mt_config *c, const mt_arch_tensor *r);

#endif
